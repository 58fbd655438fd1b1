//! `slipway status`, `releases`, `check`, `recover` and `unlock`.

use std::sync::Arc;

use clap::Args;

use super::context::{Context, deployer};
use super::exit;
use crate::notify::Sink;
use crate::rollout::manage;

#[derive(Debug, Args)]
pub struct EnvArgs {
    /// The environment, as named in slipway.toml.
    pub environment: String,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The branch, tag or commit whose config to check.
    #[arg(long = "ref", env = "SLIPWAY_REF", default_value = "HEAD")]
    pub git_ref: String,
}

pub async fn status(ctx: &Context, args: &EnvArgs) -> anyhow::Result<u8> {
    let loaded = ctx.load(&args.environment, None)?;
    let env = loaded.config.environment(&args.environment)?;
    let cluster = ctx.connect(env).await?;
    let mut code = exit::OK;
    ctx.out
        .result(&format!("{} ({}):", args.environment, env.deploy_to));
    for host in manage::status(&cluster).await {
        let line = match &host.state {
            Err(e) => {
                code = exit::ATTENTION;
                format!("  {}  UNREACHABLE: {e}", host.host)
            }
            Ok(state) => {
                let mut parts = vec![
                    format!("current {}", state.current.as_deref().unwrap_or("(none)")),
                    (if state.closed { "CLOSED" } else { "open" }).to_owned(),
                ];
                if let Some(lock) = &state.lock {
                    parts.push(match lock {
                        Ok(owner) => format!("locked by {owner}"),
                        Err(raw) => format!("locked ({raw})"),
                    });
                }
                if let Some(Ok(canary)) = &state.canary {
                    parts.push(format!(
                        "canary of {} in progress (since {})",
                        canary.release, canary.since
                    ));
                }
                if let Some(journal) = &state.journal {
                    code = exit::ATTENTION;
                    parts.push(match journal {
                        Ok(j) => format!(
                            "INTERRUPTED rollout {} at {} (run `slipway recover`)",
                            j.deploy_id, j.phase
                        ),
                        Err(_) => "INTERRUPTED rollout (unreadable journal)".to_owned(),
                    });
                }
                format!("  {}  {}", host.host, parts.join(", "))
            }
        };
        ctx.out.result(&line);
    }
    Ok(code)
}

#[derive(Debug, Args)]
pub struct NginxArgs {
    /// The environment, as named in slipway.toml.
    pub environment: String,
    /// The directory inside a release that nginx serves.
    #[arg(long, default_value = "public")]
    pub public: String,
    /// Seconds clients (and CDNs) are told to wait while the cluster is closed.
    #[arg(long, default_value_t = 30)]
    pub retry_after: u32,
}

/// Prints the nginx snippet for each host (paths differ for `local:` hosts).
pub async fn nginx(ctx: &Context, args: &NginxArgs) -> anyhow::Result<u8> {
    let loaded = ctx.load(&args.environment, None)?;
    let env = loaded.config.environment(&args.environment)?;
    let cluster = ctx.connect(env).await?;
    let mut seen = Vec::new();
    for host in &cluster.hosts {
        let snippet = host.layout.nginx_snippet(&args.public, args.retry_after);
        if !seen.contains(&snippet) {
            ctx.out.result(&format!("# for {}\n{snippet}", host.name()));
            seen.push(snippet);
        }
    }
    Ok(exit::OK)
}

pub async fn releases(ctx: &Context, args: &EnvArgs) -> anyhow::Result<u8> {
    let loaded = ctx.load(&args.environment, None)?;
    let env = loaded.config.environment(&args.environment)?;
    let cluster = ctx.connect(env).await?;
    let states = cluster.read_state().await?;
    for (host, state) in cluster.hosts.iter().zip(&states) {
        ctx.out.result(&format!("{}:", host.name()));
        for id in &state.releases {
            let mut marks = Vec::new();
            if state.current.as_deref() == Some(id) {
                marks.push("current");
            }
            if state.pinned.contains(id) {
                marks.push("pinned");
            }
            let marks = if marks.is_empty() {
                String::new()
            } else {
                format!("  ({})", marks.join(", "))
            };
            ctx.out.result(&format!("  {id}{marks}"));
        }
    }
    Ok(exit::OK)
}

pub fn check(ctx: &Context, args: &CheckArgs) -> anyhow::Result<u8> {
    let repo = ctx.open_repo()?;
    let commit = repo.resolve(&args.git_ref)?;
    let config = ctx.config_at(&repo, &commit)?;
    ctx.out.result(&format!(
        "{}:{} is valid: app {}, environments {}",
        commit.short,
        ctx.config_path,
        config.app.name,
        config
            .environments
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(exit::OK)
}

pub async fn recover(ctx: &Context, args: &EnvArgs) -> anyhow::Result<u8> {
    let loaded = ctx.load(&args.environment, None)?;
    let env = loaded.config.environment(&args.environment)?;
    let cluster = ctx.connect(env).await?;
    let changed =
        manage::recover(&cluster, &deployer(), Arc::clone(&ctx.out) as Arc<dyn Sink>).await?;
    if changed.is_empty() {
        ctx.out
            .result("nothing to recover: no host has an interrupted rollout");
    } else {
        ctx.out.result(&format!("recovered {}", changed.join(", ")));
    }
    Ok(exit::OK)
}

pub async fn unlock(ctx: &Context, args: &EnvArgs) -> anyhow::Result<u8> {
    let loaded = ctx.load(&args.environment, None)?;
    let env = loaded.config.environment(&args.environment)?;
    let cluster = ctx.connect(env).await?;
    let removed = manage::unlock(&cluster).await?;
    if removed.is_empty() {
        ctx.out
            .result(&format!("{} was not locked", args.environment));
    } else {
        ctx.out.result(&format!(
            "removed the lock of rollout {}",
            removed.join(", ")
        ));
    }
    Ok(exit::OK)
}
