//! `slipway demo`: the whole pipeline on this machine, with no setup.
//!
//! Makes a sample app repository with a `production` branch and three
//! `local:` hosts, deploys, deploys a second commit, rolls back, and says
//! where to look. It drives the same code as `deploy` and `rollback`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::Args;

use super::context::Context;
use super::deploy::{DeployArgs, RollbackArgs, deploy, rollback};
use super::exit;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to create the sample repository and hosts (default: a new
    /// temporary directory, kept so you can look around).
    #[arg(long, env = "SLIPWAY_DEMO_DIR")]
    pub dir: Option<PathBuf>,
}

pub async fn demo(ctx: &Context, args: DemoArgs) -> anyhow::Result<u8> {
    let dir = match args.dir {
        Some(d) => {
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
            d
        }
        None => tempfile::Builder::new()
            .prefix("slipway-demo-")
            .tempdir()?
            .keep(),
    };
    let dir = dir.canonicalize()?;
    let app = dir.join("app");
    let hosts: Vec<PathBuf> = (1..=3)
        .map(|i| dir.join("hosts").join(format!("web{i}")))
        .collect();
    ctx.out.info(&format!("slipway demo in {}", dir.display()));
    make_app(&app, &hosts)?;
    ctx.out.info(&format!(
        "its config: {}  (every key is in the README, \"Configure\")",
        app.join("slipway.toml").display()
    ));
    let ctx = ctx.with_repo(&app);
    let deploy_args = || DeployArgs {
        environment: "production".into(),
        git_ref: None,
        dry_run: false,
        artifact: None,
        wait: None,
        branch: None,
        force: false,
        json: false,
    };

    ctx.out
        .info("\n### 1. first deploy of the production branch");
    expect_ok(deploy(&ctx, deploy_args()).await?)?;

    ctx.out
        .info("\n### 2. a second commit on production, deployed");
    std::fs::write(app.join("public/index.html"), "<h1>demo, version 2</h1>\n")?;
    git(&app, &["commit", "-qam", "Say version 2"])?;
    expect_ok(deploy(&ctx, deploy_args()).await?)?;

    ctx.out.info("\n### 3. roll back to the first release");
    expect_ok(
        rollback(
            &ctx,
            RollbackArgs {
                environment: "production".into(),
                to: None,
            },
        )
        .await?,
    )?;

    ctx.out.info("\n### where to look");
    ctx.out
        .info(&format!("  the app repository:    {}", app.display()));
    ctx.out.info(&format!(
        "  its slipway.toml:      {}",
        app.join("slipway.toml").display()
    ));
    for host in &hosts {
        ctx.out.info(&format!("  a host's deploy root:  {}/srv/demo  (current, releases/, shared/, .slipway/history.jsonl)", host.display()));
    }
    ctx.out.info(&format!(
        "  try: slipway --repo {} status production   |   slipway --repo {} releases production",
        app.display(),
        app.display()
    ));
    Ok(exit::OK)
}

fn expect_ok(code: u8) -> anyhow::Result<()> {
    if code == exit::OK {
        Ok(())
    } else {
        bail!("the demo step exited with {code}")
    }
}

fn make_app(app: &Path, hosts: &[PathBuf]) -> anyhow::Result<()> {
    if app.exists() {
        bail!(
            "{} already exists; give --dir an empty directory",
            app.display()
        );
    }
    std::fs::create_dir_all(app.join("public"))?;
    std::fs::create_dir_all(app.join("bin"))?;
    let host_list = hosts
        .iter()
        .map(|h| format!("\"local:{}\"", h.display()))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        app.join("slipway.toml"),
        format!(include_str!("demo.toml"), hosts = host_list),
    )?;
    std::fs::write(app.join("public/index.html"), "<h1>demo, version 1</h1>\n")?;
    std::fs::write(
        app.join("README.md"),
        "A sample app deployed by `slipway demo`.\n",
    )?;
    std::fs::write(
        app.join("bin/migrate"),
        "#!/bin/sh\n# Runs once per deploy, on one host only.\nset -eu\necho \"migrating for $SLIPWAY_RELEASE\"\necho \"$SLIPWAY_RELEASE\" >> ../../shared/migrations.log\n",
    )?;
    set_executable(&app.join("bin/migrate"))?;
    git(app, &["init", "-q", "-b", "main"])?;
    git(app, &["add", "-A"])?;
    git(app, &["commit", "-qm", "Demo app"])?;
    git(app, &["checkout", "-q", "-b", "production"])?;
    Ok(())
}

fn set_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=slipway demo",
            "-c",
            "user.email=demo@slipway.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .status()
        .context("the demo needs `git` on PATH")?;
    if !status.success() {
        bail!("git {} failed in {}", args.join(" "), dir.display());
    }
    Ok(())
}
