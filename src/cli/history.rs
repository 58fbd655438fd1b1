//! `slipway history`, `releases` and `exec`: what happened on an
//! environment, what is on its hosts, and a command run in the live release.
//!
//! Invariants: `history` and `releases` only read, and read each host on its
//! own, so an unreachable host is shown as such (exit 4) beside the others
//! instead of hiding them. `exec` passes each word of the user's command
//! through the quoting of `transport::quote`, never as raw shell text.
//! The `--json` documents are one JSON value each; their fields are listed
//! in README.md ("Scripting with --json") and only ever gain fields.

use std::sync::Arc;

use clap::Args;
use serde::Serialize;

use super::context::Context;
use super::exit;
use crate::rollout::manage::{self, MergedRollout};
use crate::rollout::state::{Action, HistoryEntry, Outcome};

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The environment, as named in slipway.toml.
    pub environment: String,
    /// Print one JSON document instead of text (fields: see README).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The environment, as named in slipway.toml.
    pub environment: String,
    /// Run on this host only (as written in slipway.toml).
    #[arg(long)]
    pub host: Option<String>,
    /// The command and its arguments, after `--`; each word is passed as
    /// is, with no shell expansion.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// A host that could not be read, in `--json` documents.
#[derive(Debug, Serialize)]
struct Unreachable {
    host: String,
    error: String,
}

#[derive(Debug, Serialize)]
struct HistoryDoc<'a> {
    environment: &'a str,
    rollouts: &'a [MergedRollout],
    unreachable: Vec<Unreachable>,
}

pub async fn history(ctx: &Context, args: &ListArgs) -> anyhow::Result<u8> {
    let loaded = ctx.load(&args.environment, None)?;
    let env = loaded.config.environment(&args.environment)?;
    let (cluster, lost) = ctx.connect_reachable(env).await;
    let per_host = manage::histories(&cluster).await;
    let (read, mut unreachable) = split(&per_host);
    unreachable.extend(
        lost.into_iter()
            .map(|(host, error)| Unreachable { host, error }),
    );
    let merged = manage::merge_histories(read.iter().map(|(h, e)| (*h, *e)));
    let code = if unreachable.is_empty() {
        exit::OK
    } else {
        exit::ATTENTION
    };
    if args.json {
        let doc = HistoryDoc {
            environment: &args.environment,
            rollouts: &merged,
            unreachable,
        };
        ctx.out.result(&serde_json::to_string_pretty(&doc)?);
        return Ok(code);
    }
    ctx.out.result(&format!(
        "{}: {} rollout(s), newest first",
        args.environment,
        merged.len()
    ));
    for m in &merged {
        ctx.out.result(&history_line(m));
        if m.outcome == "mixed" {
            let hosts: Vec<String> = m
                .hosts
                .iter()
                .map(|(h, o)| format!("{h} {}", manage::outcome_word(*o)))
                .collect();
            ctx.out
                .result(&format!("    hosts disagree: {}", hosts.join(", ")));
        }
    }
    for u in &unreachable {
        ctx.out
            .result(&format!("  {}  UNREACHABLE: {}", u.host, u.error));
    }
    Ok(code)
}

/// `2026-11-30 01:02:03Z  deploy    success      20261130T…-abc1234  abc1234 Fix login  by ann  4.2s, closed 0.31s`
fn history_line(m: &MergedRollout) -> String {
    let action = match m.action {
        Action::Deploy => "deploy",
        Action::Rollback => "rollback",
        Action::Recover => "recover",
        Action::Canary => "canary",
        Action::Promote => "promote",
        Action::Revert => "revert",
    };
    let outcome = match m.outcome.as_str() {
        "success" => "ok",
        "rolled-back" => "FAILED, rolled back",
        other => other,
    };
    let commit: String = m.commit.chars().take(7).collect();
    let subject = m.subject.as_deref().unwrap_or("");
    let mut timing = m
        .duration_ms
        .map(|ms| format!("took {}", seconds(ms)))
        .unwrap_or_default();
    if let Some(ms) = m.closed_ms {
        timing.push_str(&format!(", closed {}", seconds(ms)));
    }
    format!(
        "  {}  {action:<8}  {release}  {commit} {subject}  by {who}  {outcome}  {timing}",
        short_time(&m.time),
        release = m.release,
        who = m.who,
    )
    .trim_end()
    .to_owned()
}

fn seconds(ms: u64) -> String {
    format!("{:.2}s", ms as f64 / 1000.0)
}

/// `2026-11-30T01:02:03.123456Z` as `2026-11-30 01:02:03Z`.
fn short_time(rfc3339: &str) -> String {
    match rfc3339.get(..19) {
        Some(head) => format!("{}Z", head.replacen('T', " ", 1)),
        None => rfc3339.to_owned(),
    }
}

/// Separates hosts read from hosts that could not be.
fn split(
    per_host: &[(String, Result<Vec<HistoryEntry>, String>)],
) -> (Vec<(&str, &[HistoryEntry])>, Vec<Unreachable>) {
    let mut read = Vec::new();
    let mut unreachable = Vec::new();
    for (host, r) in per_host {
        match r {
            Ok(entries) => read.push((host.as_str(), entries.as_slice())),
            Err(e) => unreachable.push(Unreachable {
                host: host.clone(),
                error: e.clone(),
            }),
        }
    }
    (read, unreachable)
}

/// One release on a host, with what `releases` marks it as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct ReleaseMarks {
    id: String,
    /// `current` points to it.
    live: bool,
    /// `slipway rollback` would switch to it.
    rollback_target: bool,
    /// Every deploy of it was rolled back: it never went live for good.
    failed: bool,
    pinned: bool,
}

/// Hosts whose releases and marks are identical, listed once.
#[derive(Debug, Serialize)]
struct ReleaseGroup {
    hosts: Vec<String>,
    releases: Vec<ReleaseMarks>,
}

#[derive(Debug, Serialize)]
struct ReleasesDoc<'a> {
    environment: &'a str,
    groups: Vec<ReleaseGroup>,
    unreachable: Vec<Unreachable>,
}

pub async fn releases(ctx: &Context, args: &ListArgs) -> anyhow::Result<u8> {
    let loaded = ctx.load(&args.environment, None)?;
    let env = loaded.config.environment(&args.environment)?;
    let (cluster, lost) = ctx.connect_reachable(env).await;
    let (states, histories) = tokio::join!(manage::status(&cluster), manage::histories(&cluster));
    let mut groups: Vec<ReleaseGroup> = Vec::new();
    let mut unreachable: Vec<Unreachable> = lost
        .into_iter()
        .map(|(host, error)| Unreachable { host, error })
        .collect();
    for (status, (_, history)) in states.into_iter().zip(histories) {
        let (state, history) = match (status.state, history) {
            (Ok(state), Ok(history)) => (state, history),
            (Err(error), _) | (_, Err(error)) => {
                unreachable.push(Unreachable {
                    host: status.host,
                    error,
                });
                continue;
            }
        };
        let marks = release_marks(
            &state.releases,
            state.current.as_deref(),
            &state.pinned,
            &history,
        );
        match groups.iter_mut().find(|g| g.releases == marks) {
            Some(group) => group.hosts.push(status.host),
            None => groups.push(ReleaseGroup {
                hosts: vec![status.host],
                releases: marks,
            }),
        }
    }
    let code = if unreachable.is_empty() {
        exit::OK
    } else {
        exit::ATTENTION
    };
    if args.json {
        let doc = ReleasesDoc {
            environment: &args.environment,
            groups,
            unreachable,
        };
        ctx.out.result(&serde_json::to_string_pretty(&doc)?);
        return Ok(code);
    }
    for group in &groups {
        ctx.out.result(&format!("{}:", group.hosts.join(", ")));
        for r in &group.releases {
            let mut marks = Vec::new();
            if r.live {
                marks.push("live");
            }
            if r.rollback_target {
                marks.push("rollback target");
            }
            if r.failed {
                marks.push("FAILED");
            }
            if r.pinned {
                marks.push("pinned");
            }
            let marks = if marks.is_empty() {
                String::new()
            } else {
                format!("  ({})", marks.join(", "))
            };
            ctx.out.result(&format!("  {}{marks}", r.id));
        }
    }
    for u in &unreachable {
        ctx.out
            .result(&format!("{}:  UNREACHABLE: {}", u.host, u.error));
    }
    Ok(code)
}

/// A host's releases, newest first, with their marks. Newest means first
/// deployed most recently, from the history; a release the history does
/// not know (staged by an interrupted rollout) goes by its commit's time,
/// which its id begins with (`20261130T010203Z-abc1234`). Not the order
/// the host lists directories in: a rollback touches an old release.
fn release_marks(
    releases: &[String],
    current: Option<&str>,
    pinned: &[String],
    history: &[HistoryEntry],
) -> Vec<ReleaseMarks> {
    let born = |id: &str| {
        history
            .iter()
            .filter(|e| e.release == id && matches!(e.action, Action::Deploy | Action::Canary))
            .filter_map(|e| manage::instant(&e.time))
            .min()
            .or_else(|| commit_time(id))
    };
    let mut ids: Vec<_> = releases.iter().map(|id| (born(id), id.clone())).collect();
    ids.sort_by(|a, b| b.cmp(a));
    let ids = ids.into_iter().map(|(_, id)| id);
    let target = manage::rollback_target(history, current).map(|e| e.release);
    ids.map(|id| {
        let deploys: Vec<&HistoryEntry> = history
            .iter()
            .filter(|e| e.release == id && e.action != Action::Recover)
            .collect();
        ReleaseMarks {
            live: current == Some(id.as_str()),
            rollback_target: target.as_deref() == Some(id.as_str()),
            failed: !deploys.is_empty() && deploys.iter().all(|e| e.outcome == Outcome::RolledBack),
            pinned: pinned.contains(&id),
            id,
        }
    })
    .collect()
}

/// The commit time a release id begins with.
fn commit_time(id: &str) -> Option<time::OffsetDateTime> {
    let stamp = id.get(..16)?;
    time::PrimitiveDateTime::parse(
        stamp,
        time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .ok()
    .map(time::PrimitiveDateTime::assume_utc)
}

pub async fn exec(ctx: &Context, args: &ExecArgs) -> anyhow::Result<u8> {
    let loaded = ctx.load(&args.environment, None)?;
    let env = loaded.config.environment(&args.environment)?;
    let mut env = env.clone();
    if let Some(host) = &args.host {
        let names = env.all_hosts();
        if !names.contains(host) {
            anyhow::bail!(
                "{} has no host `{host}`; its hosts are {}",
                args.environment,
                names.join(", ")
            );
        }
        env.hosts = vec![host.clone()];
        env.canary = None;
    }
    // A host that cannot be reached is one where the command failed; the
    // others still run it.
    let (cluster, lost) = ctx.connect_reachable(&env).await;
    let command = Arc::new(args.command.clone());
    let out = Arc::clone(&ctx.out);
    let results = cluster
        .each(move |host| {
            let script = crate::transport::Script::new()
                .line(
                    "cd {} || { echo 'no live release to run in' >&2; exit 1; }",
                    [&host.layout.current()],
                )
                .and_then(|s| s.cmd(command.iter()))
                .map_err(|e| host.transport.unquotable(e))?;
            let name = host.name().to_owned();
            let exit = host.transport.exec(&script, None, None, &mut |line| {
                out.result(&format!("{name}: {line}"));
            })?;
            Ok(exit.code)
        })
        .await;
    let mut failed: Vec<String> = lost
        .iter()
        .map(|(host, error)| {
            ctx.out.result(&format!("{host}: UNREACHABLE: {error}"));
            format!("{host} (unreachable)")
        })
        .collect();
    for (name, result) in cluster.names().into_iter().zip(results) {
        match result {
            Ok(Some(0)) => {}
            Ok(Some(code)) => failed.push(format!("{name} (exit {code})")),
            Ok(None) => failed.push(format!("{name} (killed by a signal)")),
            Err(e) => failed.push(format!("{name} ({e})")),
        }
    }
    if failed.is_empty() {
        return Ok(exit::OK);
    }
    ctx.out.result(&format!(
        "failed on {} of {} host(s): {}",
        failed.len(),
        cluster.hosts.len() + lost.len(),
        failed.join(", ")
    ));
    Ok(exit::FAILED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployed(release: &str, previous: Option<&str>, outcome: Outcome) -> HistoryEntry {
        HistoryEntry {
            time: String::new(),
            deploy_id: release.into(),
            environment: "production".into(),
            action: Action::Deploy,
            release: release.into(),
            previous: previous.map(Into::into),
            commit: String::new(),
            sha256: String::new(),
            who: String::new(),
            outcome,
            subject: None,
            duration_ms: None,
            closed_ms: None,
        }
    }

    #[test]
    fn releases_sort_newest_first_and_carry_their_marks() {
        // `ls -t` order (what the host lists) is not the order shown.
        let on_host = [
            "20260102T000000Z-b",
            "20260101T000000Z-a",
            "20260103T000000Z-c",
        ]
        .map(String::from);
        let history = [
            deployed("20260101T000000Z-a", None, Outcome::Success),
            deployed(
                "20260102T000000Z-b",
                Some("20260101T000000Z-a"),
                Outcome::Success,
            ),
            deployed(
                "20260103T000000Z-c",
                Some("20260102T000000Z-b"),
                Outcome::RolledBack,
            ),
        ];
        let marks = release_marks(&on_host, Some("20260102T000000Z-b"), &[], &history);
        let ids: Vec<&str> = marks.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "20260103T000000Z-c",
                "20260102T000000Z-b",
                "20260101T000000Z-a"
            ]
        );
        assert!(marks[0].failed && !marks[0].live);
        assert!(marks[1].live && !marks[1].failed);
        assert!(marks[2].rollback_target);
    }
}
