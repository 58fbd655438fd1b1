//! `deploy --dry-run`: the plan that would run, and a read-only look at
//! the hosts it would run on.
//!
//! Owns the preview: what is live on each host and what would replace it,
//! the commits in between, the program's steps, and every problem the real
//! run would hit before changing anything (a missing secret or notifier
//! credential, an unreachable host or unknown host key, a lock, an
//! interrupted rollout, a canary, a host without room or tools).
//! Invariant: it only reads — hosts get the read-only state and check
//! scripts, nothing is built, uploaded, locked or written anywhere.

use super::context::{Context, Loaded};
use crate::config::Environment;
use crate::plan::Plan;
use crate::rollout::{Program, manage};

/// What the dry run found, as printed.
pub struct Preview {
    pub text: String,
    pub problems: Vec<String>,
}

/// Looks at the hosts of `env` without touching them.
pub async fn preview(
    ctx: &Context,
    loaded: &Loaded,
    env: &Environment,
    plan: &Plan,
    program: &Program,
) -> Preview {
    let mut problems: Vec<String> = Vec::new();
    for name in &plan.secrets {
        if std::env::var_os(name).is_none() {
            problems.push(format!(
                "the secret `{name}` is not set in this environment (set it where slipway runs)"
            ));
        }
    }
    if let Err(e) = super::notify::start(&loaded.config, plan, "dry-run", program.action) {
        problems.push(format!("notifiers: {e:#}"));
    }
    let (cluster, lost) = ctx.connect_reachable(env).await;
    for (host, why) in &lost {
        problems.push(format!("{host}: unreachable: {why}"));
    }
    let states = manage::status(&cluster).await;
    let checks = cluster
        .each(|host| {
            let script = host.layout.check().map_err(|e| {
                crate::rollout::RolloutError::Transport(host.transport.unquotable(e))
            })?;
            Ok(host.transport.run("checking the host", &script)?)
        })
        .await;
    let mut live_lines = Vec::new();
    let mut live_release: Option<String> = None;
    for ((status, check), host) in states.iter().zip(checks).zip(&cluster.hosts) {
        let name = &status.host;
        let state = match &status.state {
            Ok(state) => state,
            Err(e) => {
                problems.push(format!("{name}: cannot read its state: {e}"));
                continue;
            }
        };
        let current = state.current.as_deref().unwrap_or("nothing");
        let serving = if state.closed { "CLOSED" } else { "open" };
        live_lines.push(format!(
            "  {name}  {current} ({serving}) -> {}",
            plan.release_id
        ));
        if live_release.is_none() {
            live_release.clone_from(&state.current);
        }
        if let Some(lock) = &state.lock {
            let holder = lock
                .as_ref()
                .map_or_else(|raw| raw.clone(), ToString::to_string);
            problems.push(format!(
                "{name}: locked by {holder} (the real run waits up to the lock wait; `--wait` waits longer)"
            ));
        }
        if let Some(journal) = &state.journal {
            let id = journal
                .as_ref()
                .map_or_else(|_| "unknown".to_owned(), |j| j.deploy_id.clone());
            problems.push(format!(
                "{name}: an interrupted rollout ({id}) is recorded; run `slipway recover {}`",
                plan.environment
            ));
        }
        if let Some(canary) = &state.canary {
            let release = canary
                .as_ref()
                .map_or_else(|raw| raw.clone(), |c| c.release.clone());
            problems.push(format!(
                "{name}: a canary of {release} is in progress; `slipway promote {env}` or `slipway rollback {env}` first",
                env = plan.environment
            ));
        }
        match check {
            Ok(output) => {
                let (host_problems, _) =
                    super::inspect::judge(host.layout.root(), &output, String::new());
                problems.extend(host_problems.into_iter().map(|p| format!("{name}: {p}")));
            }
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    if live_release.as_deref() == Some(plan.release_id.as_str()) {
        problems.push(format!(
            "{} is already live; the real run does nothing (`--force` deploys it again)",
            plan.release_id
        ));
    }
    let commits = commits_between(loaded, live_release.as_deref(), &plan.commit.id);
    let mut text = super::deploy::dry_run(plan, program);
    text.push_str("live now:\n");
    text.push_str(&live_lines.join("\n"));
    text.push('\n');
    text.push_str(&commits);
    if problems.is_empty() {
        text.push_str("no problems found; nothing was changed on any host\n");
    } else {
        text.push_str(&format!(
            "problems the real run would hit ({}); nothing was changed on any host:\n",
            problems.len()
        ));
        for p in &problems {
            text.push_str(&format!("  - {p}\n"));
        }
    }
    Preview { text, problems }
}

/// The subjects of the commits the deploy brings, newest first; the live
/// release's id ends with its short commit.
fn commits_between(loaded: &Loaded, live: Option<&str>, to: &str) -> String {
    const LIMIT: usize = 20;
    let from = live.and_then(|id| id.rsplit('-').next());
    let subjects = match loaded.repo.subjects_between(from, to, LIMIT + 1) {
        Ok(s) => s,
        Err(_) => {
            return format!(
                "commits: the live commit {} is not in this repository; cannot list what changes\n",
                from.unwrap_or("?")
            );
        }
    };
    let mut out = match from {
        Some(from) => format!("commits since {from} ({}):\n", count(&subjects, LIMIT)),
        None => format!(
            "commits (first deploy; newest {}):\n",
            count(&subjects, LIMIT)
        ),
    };
    for s in subjects.iter().take(LIMIT) {
        out.push_str(&format!("  {s}\n"));
    }
    if subjects.len() > LIMIT {
        out.push_str("  …\n");
    }
    out
}

fn count(subjects: &[String], limit: usize) -> String {
    if subjects.len() > limit {
        format!("more than {limit}")
    } else {
        subjects.len().to_string()
    }
}
