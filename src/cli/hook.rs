//! `slipway hook …`: the git server side. `post-receive` deploys pushed
//! branches, `pre-receive` guards them, `install` puts both in a repository.
//!
//! Runs inside git's hook environment: the current directory is the
//! repository, pushed objects may still be in quarantine (`source` reads
//! them), and everything printed reaches the pusher as `remote:` lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;

use super::context::{Context, Loaded};
use super::deploy::{DeployArgs, deploy_loaded};
use super::exit;
use crate::config::Reach;
use crate::source::Repo;
use crate::trigger::{self, Decision, RefUpdate};

/// How long a pushed deploy waits for one already running: pushes in quick
/// succession deploy one after the other, not fail.
const PUSH_LOCK_WAIT: Duration = Duration::from_secs(60 * 60);

const POST_RECEIVE: &str = include_str!("../../hooks/post-receive");
const PRE_RECEIVE: &str = include_str!("../../hooks/pre-receive");
const MARKER: &str = "# slipway-hook";

#[derive(Debug, Subcommand)]
pub enum HookCommand {
    /// Deploy the pushed branches that map to an environment (reads git's
    /// `<old> <new> <ref>` lines on stdin).
    PostReceive(PostReceiveArgs),
    /// Refuse pushes with an invalid slipway.toml, by pushers not on the
    /// allow-list, or (if configured) that are not fast-forwards.
    PreReceive(PreReceiveArgs),
    /// Install both hooks into a bare repository (idempotent; a hook already
    /// there is kept and still runs).
    Install(InstallArgs),
}

#[derive(Debug, Args)]
pub struct PostReceiveArgs {
    /// Queue the deploy and return at once; the rollout continues in the
    /// background, logging to <git-dir>/slipway/<environment>.log.
    #[arg(long, env = "SLIPWAY_DETACH", value_parser = clap::builder::FalseyValueParser::new())]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct PreReceiveArgs {
    /// Who may push to which branch [default: <git-dir>/slipway-allow.toml].
    #[arg(long, env = "SLIPWAY_ALLOW_LIST")]
    pub allow_list: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The bare repository to install into.
    #[arg(long, env = "SLIPWAY_GIT_DIR")]
    pub git_dir: PathBuf,
    /// A setting or secret for the hooks, e.g.
    /// `SLIPWAY_KNOWN_HOSTS=/etc/slipway/known_hosts` or `DATABASE_URL=…`
    /// (repeatable): the git server's sshd passes no environment of its own
    /// to hooks. Written to the hook env file (mode 0600), never into the
    /// hook scripts.
    #[arg(long = "setenv", value_name = "NAME=VALUE")]
    pub setenv: Vec<String>,
    /// The hook env file [default: <git-dir>/slipway/hook.env]: `NAME=VALUE`
    /// lines, mode 0600, owned by the git user.
    #[arg(long, env = "SLIPWAY_HOOK_ENV_FILE")]
    pub env_file: Option<PathBuf>,
}

pub async fn hook(ctx: &Context, command: HookCommand) -> anyhow::Result<u8> {
    match command {
        HookCommand::PostReceive(args) => post_receive(ctx, &args).await,
        HookCommand::PreReceive(args) => pre_receive(ctx, &args),
        HookCommand::Install(args) => install(ctx, &args),
    }
}

fn read_updates() -> anyhow::Result<Vec<RefUpdate>> {
    let input = crate::limits::hook_stdin()?;
    Ok(trigger::parse_receive(&input)?)
}

/// `git push -o slipway.dry-run` / `-o slipway.skip-deploy`.
fn push_options() -> Vec<String> {
    let count = std::env::var("GIT_PUSH_OPTION_COUNT")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(0);
    (0..count)
        .filter_map(|i| std::env::var(format!("GIT_PUSH_OPTION_{i}")).ok())
        .collect()
}

fn config_of(
    ctx: &Context,
    repo: &Repo,
    commit: &str,
) -> anyhow::Result<Option<crate::config::Config>> {
    let commit = repo.resolve(commit)?;
    match repo.read_file(&commit.id, &ctx.config_path)? {
        None => Ok(None),
        Some(_) => Ok(Some(ctx.config_at(repo, &commit)?)),
    }
}

async fn post_receive(ctx: &Context, args: &PostReceiveArgs) -> anyhow::Result<u8> {
    let updates = read_updates()?;
    let options = push_options();
    let repo = ctx.open_repo()?;
    let mut code = exit::OK;
    for update in &updates {
        let config = if update.is_delete() {
            None
        } else {
            config_of(ctx, &repo, &update.new)?
        };
        let decision = trigger::decide(update, config.as_ref(), &ctx.reach());
        let (environment, branch, commit) = match decision {
            Decision::Skip { reason } => {
                ctx.out.result(&format!("slipway: {reason}"));
                continue;
            }
            Decision::Refuse { reason } => {
                code = exit::USAGE;
                ctx.out
                    .result(&format!("slipway: REFUSED, nothing deployed: {reason}"));
                continue;
            }
            Decision::Deploy {
                environment,
                branch,
                commit,
            } => (environment, branch, commit),
        };
        if options.iter().any(|o| o == "slipway.skip-deploy") {
            ctx.out.result(&format!(
                "slipway: `{branch}` → {environment}: skipped (push option slipway.skip-deploy)"
            ));
            continue;
        }
        let deploy_args = DeployArgs {
            environment: environment.clone(),
            git_ref: Some(commit.clone()),
            dry_run: options.iter().any(|o| o == "slipway.dry-run"),
            artifact: None,
            wait: Some(PUSH_LOCK_WAIT),
            branch: Some(branch.clone()),
            force: false,
            json: false,
        };
        if args.detach && !deploy_args.dry_run {
            let log = detach(ctx, &deploy_args)?;
            ctx.out.result(&format!(
                "slipway: {environment}: deploying {} in the background; log: {} (see `slipway status {environment}`)",
                &commit[..12.min(commit.len())],
                log.display()
            ));
            continue;
        }
        let commit = repo.resolve(&commit)?;
        let loaded = Loaded {
            config: ctx.config_at(&repo, &commit)?,
            repo: Repo::open(&ctx.repo)?,
            commit,
            branch,
        };
        let result = deploy_loaded(ctx, &loaded, &deploy_args).await;
        match result {
            Ok(_) if deploy_args.dry_run => ctx
                .out
                .result("slipway: dry run (push option slipway.dry-run); nothing deployed"),
            Ok(_) => ctx.out.result(&format!(
                "slipway: {environment} is live on {} ({} host(s))",
                crate::plan::release_id(&loaded.commit),
                loaded.config.environment(&environment)?.hosts.len()
            )),
            Err(e) => {
                code = super::exit_code(&e);
                ctx.out
                    .result(&format!("slipway: {environment} deploy FAILED: {e:#}"));
            }
        }
    }
    Ok(code)
}

/// Starts `slipway deploy` as a background process that outlives the push.
fn detach(ctx: &Context, args: &DeployArgs) -> anyhow::Result<PathBuf> {
    use std::os::unix::process::CommandExt;
    let git_dir = std::fs::canonicalize(&ctx.repo)?;
    let log_dir = git_dir.join("slipway");
    std::fs::create_dir_all(&log_dir)?;
    let log = log_dir.join(format!("{}.log", args.environment));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--repo")
        .arg(&git_dir)
        .arg("--config")
        .arg(&ctx.config_path);
    // The background deploy keeps the git server's rules and pins.
    cmd.arg("--git-server");
    if let Some((_, pins)) = &ctx.pins {
        cmd.arg("--pins").arg(std::path::absolute(pins)?);
    }
    cmd.args(["deploy", &args.environment, "--wait", "1h"]);
    cmd.args(["--ref", args.git_ref.as_deref().unwrap_or_default()]);
    if let Some(branch) = &args.branch {
        cmd.args(["--branch", branch]);
    }
    for var in crate::source::GIT_HOOK_VARS {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .spawn()
        .context("starting the background deploy")?;
    Ok(log)
}

/// The server's allow-list: who may push to which branch.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowList {
    #[serde(default)]
    branches: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    refuse_non_fast_forward: Vec<String>,
}

fn load_allow_list(ctx: &Context, path: Option<&Path>) -> anyhow::Result<AllowList> {
    let default = ctx.repo.join("slipway-allow.toml");
    let (path, required) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (default, false),
    };
    let text = std::fs::File::open(&path).and_then(|f| {
        crate::limits::read_capped_text(
            f,
            crate::config::MAX_SETTINGS_FILE,
            "the allow-list",
            "an allow-list this big is a mistake",
        )
        .map_err(std::io::Error::other)
    });
    match text {
        Ok(text) => toml::from_str(&text)
            .with_context(|| format!("the allow-list {} is invalid", path.display())),
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(AllowList::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read the allow-list {}", path.display())),
    }
}

/// The pusher, as the git server identified them.
fn pusher() -> Option<String> {
    ["GL_USER", "SLIPWAY_USER", "REMOTE_USER"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

fn pre_receive(ctx: &Context, args: &PreReceiveArgs) -> anyhow::Result<u8> {
    let updates = read_updates()?;
    let allow = load_allow_list(ctx, args.allow_list.as_deref())?;
    let repo = ctx.open_repo()?;
    let who = pusher();
    let mut refused = Vec::new();
    for update in &updates {
        let Some(branch) = update.branch() else {
            continue;
        };
        if let Err(why) = check_update(ctx, &repo, &allow, who.as_deref(), update, branch) {
            refused.push(format!("{branch}: {why:#}"));
        }
    }
    if refused.is_empty() {
        return Ok(exit::OK);
    }
    for line in &refused {
        ctx.out.result(&format!("slipway: push refused: {line}"));
    }
    bail!("push refused by slipway's pre-receive hook")
}

fn check_update(
    ctx: &Context,
    repo: &Repo,
    allow: &AllowList,
    who: Option<&str>,
    update: &RefUpdate,
    branch: &str,
) -> anyhow::Result<()> {
    if let Some(allowed) = allow.branches.get(branch) {
        match who {
            None => bail!(
                "this branch is protected and the pusher's identity is unknown (GL_USER, SLIPWAY_USER or REMOTE_USER must be set by the git server)"
            ),
            Some(user) if !allowed.iter().any(|a| a == user) => {
                bail!("{user} may not push to this branch")
            }
            Some(_) => {}
        }
    }
    if update.is_delete() {
        return Ok(());
    }
    let reach = ctx.reach();
    let pinned = reach.pinned_branch_environment(branch);
    let deploying = allow.branches.contains_key(branch)
        || pinned.is_some()
        || (!update.is_create() && maps(ctx, repo, &update.old, branch))
        || ["production", "staging"].contains(&branch);
    let commit = repo.resolve(&update.new)?;
    if repo.read_file(&commit.id, &ctx.config_path)?.is_some() {
        match ctx.config_at(repo, &commit) {
            Ok(config) => match reach.environment_for_push(&config, branch) {
                Ok(_) => {}
                // A config that disagrees with a pin is refused; without pins
                // a mapping that needs one deploys nothing, and is only said.
                Err(violation) if matches!(reach, Reach::Pinned(..)) => {
                    let place = ctx.place_of(repo, &commit, &violation.key);
                    bail!("{place}{violation}");
                }
                Err(violation) => ctx.out.warn(&format!("slipway: `{branch}`: {violation}")),
            },
            Err(e) if deploying => return Err(e),
            Err(e) if e.downcast_ref::<crate::config::ConfigError>().is_some() => return Err(e),
            Err(_) => {}
        }
    } else if let Some(environment) = pinned {
        bail!(
            "this branch deploys the pinned environment `{environment}`, but the pushed commit has no {}",
            ctx.config_path
        );
    }
    if allow.refuse_non_fast_forward.iter().any(|b| b == branch)
        && !update.is_create()
        && !is_ancestor(&update.old, &update.new)?
    {
        bail!("not a fast-forward; this branch only moves forward (merge or rebase onto it)");
    }
    Ok(())
}

fn maps(ctx: &Context, repo: &Repo, commit: &str, branch: &str) -> bool {
    matches!(config_of(ctx, repo, commit), Ok(Some(c)) if c.environment_for_branch(branch).is_some())
}

/// `git merge-base --is-ancestor`, without a shell; inherits the
/// quarantine environment so pushed objects are visible.
fn is_ancestor(old: &str, new: &str) -> anyhow::Result<bool> {
    let status = Command::new("git")
        .args(["merge-base", "--is-ancestor", old, new])
        .status()
        .context("running git merge-base")?;
    Ok(status.success())
}

fn install(ctx: &Context, args: &InstallArgs) -> anyhow::Result<u8> {
    let hooks = args.git_dir.join("hooks");
    anyhow::ensure!(
        args.git_dir.join("objects").is_dir(),
        "{} is not a git repository (no objects/ directory)",
        args.git_dir.display()
    );
    std::fs::create_dir_all(&hooks)?;
    let exe = std::env::current_exe().context("finding the slipway binary")?;
    let mut bin_line = format!(
        "SLIPWAY_BIN=\"${{SLIPWAY_BIN:-{}}}\"",
        exe.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('$', "\\$")
            .replace('`', "\\`")
    );
    let env_file = match &args.env_file {
        Some(path) => {
            let path = std::path::absolute(path)?;
            // Only the file's place is in the script, never a value.
            bin_line.push_str(&format!(
                "\nexport {}={}",
                super::hook_env::FILE_VAR,
                crate::transport::quote::quote(&path.to_string_lossy())?
            ));
            path
        }
        None => super::hook_env::default_path(&args.git_dir),
    };
    if !args.setenv.is_empty() {
        super::hook_env::write(&env_file, &args.setenv)?;
        ctx.out.info(&format!(
            "wrote {} setting(s) to {} (mode 0600)",
            args.setenv.len(),
            env_file.display()
        ));
    }
    for (name, text) in [("post-receive", POST_RECEIVE), ("pre-receive", PRE_RECEIVE)] {
        let path = hooks.join(name);
        if let Ok(existing) = std::fs::read_to_string(&path)
            && !existing.contains(MARKER)
        {
            let user = hooks.join(format!("{name}.user"));
            anyhow::ensure!(
                !user.exists(),
                "{} and {} both exist; merge them by hand",
                path.display(),
                user.display()
            );
            std::fs::rename(&path, &user)?;
            ctx.out.info(&format!(
                "kept your existing {name} hook as {}",
                user.display()
            ));
        }
        let script = text.replace("SLIPWAY_BIN=\"${SLIPWAY_BIN:-slipway}\"", &bin_line);
        // Written beside the hook and renamed over it; removed (by its
        // guard) if anything fails first, so no stray file is left.
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.slipway"))
            .tempfile_in(&hooks)?;
        std::io::Write::write_all(&mut tmp, script.as_bytes())?;
        set_executable(tmp.path())?;
        tmp.persist(&path)?;
    }
    ctx.out.result(&format!(
        "installed slipway's pre-receive and post-receive hooks in {}",
        hooks.display()
    ));
    Ok(exit::OK)
}

fn set_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}
