//! `slipway status`, `check`, `nginx`, `recover`, `lock` and `unlock`.

use std::sync::Arc;

use clap::Args;

use super::context::{Context, deploy_id, deployer};
use super::exit;
use crate::notify::{Event, Sink};
use crate::rollout::state::{Action, Freeze};
use crate::rollout::steps::{Rollout, Secrets};
use crate::rollout::{lock, manage};
use crate::source::Commit;

#[derive(Debug, Args)]
pub struct EnvArgs {
    /// The environment, as named in slipway.toml.
    pub environment: String,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also connect to every host of this environment and check it can take
    /// a deploy: reachable, host key verified, deploy_to writable, free
    /// disk, the tools slipway's scripts use.
    pub environment: Option<String>,
    /// The branch, tag or commit whose config to check [default: HEAD, or
    /// the environment's branch].
    #[arg(long = "ref", env = "SLIPWAY_REF")]
    pub git_ref: Option<String>,
}

pub async fn status(ctx: &Context, args: &EnvArgs) -> anyhow::Result<u8> {
    let loaded = ctx.load(&args.environment, None)?;
    let env = loaded.config.environment(&args.environment)?;
    let (cluster, lost) = ctx.connect_reachable(env).await;
    let mut code = exit::OK;
    ctx.out
        .result(&format!("{} ({}):", args.environment, env.deploy_to));
    let mut hosts = manage::status(&cluster).await;
    // Unreachable hosts stay in config order among the others.
    hosts.extend(lost.into_iter().map(|(host, error)| manage::HostStatus {
        host,
        state: Err(error),
    }));
    let order = env.all_hosts();
    hosts.sort_by_key(|h| order.iter().position(|s| *s == h.host));
    let mut frozen = None;
    for host in hosts {
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
                        Ok(owner) => {
                            format!("locked by {owner}{}", lease_text(owner, state.lock_age))
                        }
                        Err(raw) => format!(
                            "LOCK FILE IS NOT SLIPWAY'S ({}; `slipway unlock {}` removes it)",
                            crate::notify::message::clip(raw, 200),
                            args.environment
                        ),
                    });
                }
                if let Some(freeze) = &state.freeze {
                    frozen.get_or_insert_with(|| match freeze {
                        Ok(f) => f.to_string(),
                        Err(raw) => format!("frozen ({raw})"),
                    });
                    parts.push("FROZEN".to_owned());
                }
                if let Some(Ok(canary)) = &state.canary {
                    parts.push(format!(
                        "canary of {} in progress (since {})",
                        canary.release, canary.since
                    ));
                }
                for running in &state.running {
                    parts.push(format!("{running} still running"));
                }
                // A journal is a live rollout's while its runner still
                // renews the lease on the same deploy id; only then is it
                // "in progress" rather than interrupted.
                let live = |id: &str| match (&state.lock, state.lock_age) {
                    (Some(Ok(owner)), Some(age)) => {
                        owner.deploy_id == id
                            && owner
                                .lease_ms
                                .is_some_and(|lease| age.as_millis() < u128::from(lease))
                    }
                    _ => false,
                };
                if let Some(journal) = &state.journal {
                    parts.push(match journal {
                        Ok(j) if live(&j.deploy_id) => format!(
                            "rollout {} IN PROGRESS at {} (its runner renews the lease)",
                            j.deploy_id, j.phase
                        ),
                        Ok(j) => {
                            code = exit::ATTENTION;
                            format!(
                                "INTERRUPTED rollout {} at {} (run `slipway recover {}`)",
                                j.deploy_id, j.phase, args.environment
                            )
                        }
                        Err(_) => {
                            code = exit::ATTENTION;
                            "INTERRUPTED rollout (unreadable journal)".to_owned()
                        }
                    });
                }
                format!("  {}  {}", host.host, parts.join(", "))
            }
        };
        ctx.out.result(&line);
    }
    if let Some(freeze) = frozen {
        ctx.out.result(&format!(
            "deploys are {freeze}; `slipway unlock {}` lifts it",
            args.environment
        ));
    }
    // A deploy queued by a detached push hook logs beside the repository.
    let log = ctx
        .repo
        .join("slipway")
        .join(format!("{}.log", args.environment));
    if let Ok(text) = log_end(&log) {
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        ctx.out.result(&format!(
            "background deploy log: {} (last: {})",
            log.display(),
            last.trim()
        ));
    }
    Ok(code)
}

/// How a lock's lease stands, by the host's clock: `, lease renewed 1s ago`.
fn lease_text(owner: &crate::rollout::LockOwner, age: Option<std::time::Duration>) -> String {
    match (owner.lease_ms, age) {
        (None, _) => ", no lease (an older slipway)".to_owned(),
        (Some(lease), Some(age)) if age.as_millis() >= u128::from(lease) => format!(
            ", lease EXPIRED {}s ago (the next rollout takes it over)",
            (age.as_millis() - u128::from(lease)) / 1000
        ),
        (Some(_), Some(age)) => format!(", lease renewed {}s ago", age.as_secs()),
        (Some(_), None) => String::new(),
    }
}

/// The end of a log that only ever grows: its last 64 KiB, enough for the
/// last line, however large the file has become.
fn log_end(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    const END: u64 = 64 * 1024;
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(END)))?;
    let mut bytes = Vec::new();
    file.take(END).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
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
        let snippet = host.layout.nginx_snippet(&args.public, args.retry_after)?;
        if !seen.contains(&snippet) {
            ctx.out.result(&format!("# for {}\n{snippet}", host.name()));
            seen.push(snippet);
        }
    }
    Ok(exit::OK)
}

pub async fn check(ctx: &Context, args: &CheckArgs) -> anyhow::Result<u8> {
    if let Some(environment) = &args.environment {
        return check_hosts(ctx, environment, args.git_ref.as_deref()).await;
    }
    let repo = ctx.open_repo()?;
    let commit = repo.resolve(args.git_ref.as_deref().unwrap_or("HEAD"))?;
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
    // Config is read from commits; an edit not yet committed is not what
    // was checked, and must not look as if it were.
    let edited = std::process::Command::new("git")
        .arg("-C")
        .arg(&ctx.repo)
        .args(["status", "--porcelain=v1", "--"])
        .arg(&ctx.config_path)
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    if edited {
        ctx.out.warn(&format!(
            "the working tree's {} differs from {}'s (what was checked); commit it and run `slipway check` again to check your edit",
            ctx.config_path, commit.short
        ));
    }
    Ok(exit::OK)
}

/// Connects to each host on its own (one unreachable host must not hide
/// the state of the others) and reports what a deploy needs.
async fn check_hosts(
    ctx: &Context,
    environment: &str,
    git_ref: Option<&str>,
) -> anyhow::Result<u8> {
    let loaded = ctx.load(environment, git_ref)?;
    let env = loaded.config.environment(environment)?;
    ctx.out.result(&format!(
        "{}:{} is valid",
        loaded.commit.short, ctx.config_path
    ));
    let mut tasks = Vec::new();
    for spec in env.all_hosts() {
        let (options, deploy_to) = (ctx.connect.clone(), env.deploy_to.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            check_one(&spec, &options, &deploy_to)
        }));
    }
    let mut code = exit::OK;
    for task in tasks {
        let (ok, line) = task
            .await
            .unwrap_or_else(|_| (false, "check panicked".to_owned()));
        if !ok {
            code = exit::ATTENTION;
        }
        ctx.out.result(&line);
    }
    Ok(code)
}

fn check_one(
    spec: &str,
    options: &crate::transport::ConnectOptions,
    deploy_to: &str,
) -> (bool, String) {
    let transport = match crate::transport::connect(spec, options) {
        Ok(t) => t,
        Err(e) => return (false, format!("  {spec}  FAILED: {e}")),
    };
    let layout = crate::rollout::Layout::new(transport.resolve(deploy_to));
    let output = layout
        .check()
        .map_err(|e| transport.unquotable(e))
        .and_then(|script| transport.run("checking the host", &script));
    let output = match output {
        Ok(o) => o,
        Err(e) => return (false, format!("  {spec}  FAILED: {e}")),
    };
    let first = if spec.starts_with("local:") {
        transport.describe()
    } else {
        format!("host key verified, {}", transport.describe())
    };
    let (problems, facts) = judge(layout.root(), &output, first);
    if problems.is_empty() {
        (
            true,
            format!("  {spec}  ok: {}, tools ok", facts.join(", ")),
        )
    } else {
        (false, format!("  {spec}  FAILED: {}", problems.join("; ")))
    }
}

/// Reads `Layout::check` output: what would stop a deploy on this host
/// (problems), and what is fine (facts, after `first`).
pub(super) fn judge(root: &str, output: &str, first: String) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut facts = vec![first];
    // The script prints `missing` before `writable`, so the writable line
    // can say which directory it was judged on.
    let mut missing: Option<String> = None;
    for line in output.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["user", user] => facts.push(format!("user {user}")),
            ["missing", parent] => missing = Some((*parent).to_owned()),
            ["writable", "yes"] => facts.push(match &missing {
                Some(parent) => format!(
                    "{} does not exist yet (the first deploy creates it; {parent} writable)",
                    root
                ),
                None => format!("{} writable", root),
            }),
            ["writable", _] => problems.push(match &missing {
                Some(parent) => format!(
                    "{} does not exist and {parent} is not writable to create it",
                    root
                ),
                None => format!("{} is not writable", root),
            }),
            ["free_kib", kib] => match kib.parse::<u64>() {
                Ok(kib) if kib < 100 * 1024 => {
                    problems.push(format!("only {} MiB free", kib / 1024))
                }
                Ok(kib) => facts.push(format!("{:.1} GiB free", kib as f64 / 1024.0 / 1024.0)),
                Err(_) => problems.push("free disk space unknown (no df?)".to_owned()),
            },
            ["tool", tool, "no"] => problems.push(format!("`{tool}` is missing")),
            _ => {}
        }
    }
    (problems, facts)
}

/// `slipway recover`: finishes or undoes an interrupted rollout on the
/// reachable hosts, with one program (see `manage::recover_program`), and
/// says which it did. Exit 4 while a host is still unreachable.
pub async fn recover(ctx: &Context, args: &EnvArgs) -> anyhow::Result<u8> {
    let loaded = ctx.load(&args.environment, None)?;
    let env = loaded.config.environment(&args.environment)?;
    let (cluster, lost) = ctx.connect_reachable(env).await;
    let states = cluster.read_state().await?;
    let histories = manage::histories(&cluster).await;
    let hosts: Vec<_> = cluster
        .names()
        .into_iter()
        .zip(states)
        .zip(histories)
        .map(|((name, state), (_, history))| (name, state, history.unwrap_or_default()))
        .collect();
    for (host, why) in &lost {
        ctx.out
            .warn(&format!("{host}: UNREACHABLE ({why}); not recovered"));
    }
    let Some(rec) = manage::recovery(&hosts) else {
        ctx.out
            .result("nothing to recover: no reachable host has an interrupted rollout");
        return Ok(if lost.is_empty() {
            exit::OK
        } else {
            exit::ATTENTION
        });
    };
    let how = match rec.direction {
        manage::Direction::Finish => format!(
            "finishing it: {} already serves on other hosts",
            rec.release
        ),
        manage::Direction::Undo => "undoing it: it never passed its point of no return".to_owned(),
    };
    ctx.out.info(&format!(
        "rollout {} of {} stopped at {} on {}; {how}",
        rec.deploy_id,
        rec.release,
        rec.phase,
        rec.hosts.join(", ")
    ));
    let commit = Commit {
        id: String::new(),
        short: rec
            .release
            .rsplit('-')
            .next()
            .unwrap_or_default()
            .to_owned(),
        time: 0,
        subject: format!("recover {}", rec.deploy_id),
        author: String::new(),
        committer: String::new(),
    };
    let mut plan = crate::plan::plan(
        &loaded.config,
        &args.environment,
        env,
        &loaded.branch,
        &commit,
        &deployer(),
    );
    plan.release_id.clone_from(&rec.release);
    let program = manage::recover_program(&plan, &rec, &cluster.names());
    let rollout = Rollout {
        plan: Arc::new(plan),
        action: Action::Recover,
        artifact: None,
        secrets: Secrets::default(),
        deploy_id: deploy_id(),
        sink: Arc::clone(&ctx.out) as Arc<dyn Sink>,
        interrupt: ctx.interrupt.clone(),
    };
    super::deploy::run_program(ctx, &loaded.config, &cluster, rollout, &program).await?;
    let end = match rec.direction {
        manage::Direction::Finish => format!(
            "finished: {} on {}, open",
            rec.hosts.join(", "),
            rec.release
        ),
        manage::Direction::Undo => format!(
            "undone: {} back on {}, open",
            rec.hosts.join(", "),
            rec.previous
                .values()
                .next()
                .cloned()
                .flatten()
                .unwrap_or_else(|| "no release".to_owned())
        ),
    };
    ctx.out
        .result(&format!("recovered rollout {}: {end}", rec.deploy_id));
    if lost.is_empty() {
        Ok(exit::OK)
    } else {
        ctx.out.warn(&format!(
            "run `slipway recover {}` again once {} reachable",
            args.environment,
            lost.iter()
                .map(|(h, _)| h.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(exit::ATTENTION)
    }
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// The environment to freeze, as named in slipway.toml.
    pub environment: String,
    /// Why deploys are frozen; shown to everyone whose deploy is refused,
    /// and sent to chat.
    #[arg(long, short, env = "SLIPWAY_LOCK_MESSAGE")]
    pub message: String,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// The environment, as named in slipway.toml.
    pub environment: String,
    /// Also remove the lock of a rollout whose lease is still being
    /// renewed (a live rollout: two may then run at once).
    #[arg(long, env = "SLIPWAY_UNLOCK_FORCE", value_parser = clap::builder::FalseyValueParser::new())]
    pub force: bool,
}

/// `slipway lock <env> --message`: a freeze record on every host, and a
/// word to chat.
pub async fn lock(ctx: &Context, args: &LockArgs) -> anyhow::Result<u8> {
    let loaded = ctx.load(&args.environment, None)?;
    let env = loaded.config.environment(&args.environment)?;
    anyhow::ensure!(
        !args.message.trim().is_empty(),
        "say why deploys are frozen: --message \"…\" is shown to everyone whose deploy is refused"
    );
    let cluster = ctx.connect(env).await?;
    let record = Freeze {
        who: deployer(),
        machine: lock::machine_name(),
        since: crate::rollout::state::now(),
        message: args.message.trim().to_owned(),
    };
    manage::freeze(&cluster, &record).await?;
    ctx.out.result(&format!(
        "deploys to {} are {record}; `slipway unlock {}` lifts it",
        args.environment, args.environment
    ));
    super::notify::announce(
        ctx,
        &loaded.config,
        &args.environment,
        &Event::Frozen {
            environment: args.environment.clone(),
            who: record.who,
            message: record.message,
        },
    )
    .await?;
    Ok(exit::OK)
}

pub async fn unlock(ctx: &Context, args: &UnlockArgs) -> anyhow::Result<u8> {
    let loaded = ctx.load(&args.environment, None)?;
    let env = loaded.config.environment(&args.environment)?;
    let cluster = ctx.connect(env).await?;
    let done = manage::unlock(&cluster, &args.environment, args.force).await?;
    if let Some(was) = &done.thawed {
        ctx.out.result(&format!(
            "lifted the freeze on {} (it was {was})",
            args.environment
        ));
        super::notify::announce(
            ctx,
            &loaded.config,
            &args.environment,
            &Event::Unfrozen {
                environment: args.environment.clone(),
                who: deployer(),
                was: was.clone(),
            },
        )
        .await?;
    }
    for removed in &done.removed {
        ctx.out.result(&format!("removed {removed}"));
    }
    if let Some(live) = done.live {
        return Err(live.into());
    }
    if done.thawed.is_none() && done.removed.is_empty() {
        ctx.out
            .result(&format!("{} was not locked", args.environment));
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_end_of_a_big_log_is_read() {
        // A detached deploy's log only grows; `status` wants its last line.
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("production.log");
        let mut text = "x".repeat(4 * 1024 * 1024);
        text.push_str("\ndeployed 20261130-abc1234\n");
        std::fs::write(&log, &text).unwrap();
        let end = log_end(&log).unwrap();
        assert!(end.len() <= 64 * 1024);
        assert!(end.ends_with("deployed 20261130-abc1234\n"));
    }
}
