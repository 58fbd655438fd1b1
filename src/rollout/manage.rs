//! Looking after an environment between rollouts: status, release lists,
//! rollback targets, recovery of an interrupted rollout, removing a lock,
//! freezing deploys.
//!
//! Invariant: only [`recover`], [`unlock`] and [`freeze`] change hosts, and
//! each says exactly what it changed; everything else only reads.

use super::state::{Action, HistoryEntry, HostState, Journal, Outcome};
use super::{Cluster, RolloutError};

/// One host as `slipway status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    pub host: String,
    /// `Err` when the host could not be read.
    pub state: Result<HostState, String>,
}

/// Reads every host, tolerating failures: status must work on a broken
/// cluster, which is when it is needed most.
pub async fn status(cluster: &Cluster) -> Vec<HostStatus> {
    let results = cluster
        .each(|host| {
            let out = host.run("reading the deploy state", host.layout.read_state())?;
            Ok(HostState::parse(&out))
        })
        .await;
    cluster
        .hosts
        .iter()
        .zip(results)
        .map(|(h, r)| HostStatus {
            host: h.name().to_owned(),
            state: r.map_err(|e| e.to_string()),
        })
        .collect()
}

/// Reads the history of the first host (all hosts record every rollout).
///
/// # Errors
/// When the history cannot be read.
pub async fn history(cluster: &Cluster) -> Result<Vec<HistoryEntry>, RolloutError> {
    let Some(host) = cluster.hosts.first().cloned() else {
        return Ok(Vec::new());
    };
    let out = tokio::task::spawn_blocking(move || {
        host.run("reading history", host.layout.read_history())
    })
    .await
    .map_err(|_| RolloutError::from(super::Panicked))??;
    Ok(out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Reads every host's history on its own: one unreachable host must not
/// hide the others' records. `Err` holds why a host could not be read.
pub async fn histories(cluster: &Cluster) -> Vec<(String, Result<Vec<HistoryEntry>, String>)> {
    let results = cluster
        .each(|host| host.run("reading history", host.layout.read_history()))
        .await;
    cluster
        .names()
        .into_iter()
        .zip(results)
        .map(|(name, r)| {
            let entries = r.map(|out| {
                out.lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect()
            });
            (name, entries.map_err(|e| e.to_string()))
        })
        .collect()
}

/// One rollout as `slipway history` shows it, merged from the line each
/// host recorded. Serialised as-is by `--json`: field names are stable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MergedRollout {
    pub deploy_id: String,
    /// When the first host recorded it (RFC 3339, UTC).
    pub time: String,
    pub action: Action,
    pub release: String,
    pub previous: Option<String>,
    pub commit: String,
    pub subject: Option<String>,
    pub who: String,
    /// `success`, `rolled-back`, or `mixed` when hosts disagree.
    pub outcome: String,
    /// The longest any host recorded.
    pub duration_ms: Option<u64>,
    pub closed_ms: Option<u64>,
    /// Each host that recorded this rollout, with its own outcome.
    pub hosts: std::collections::BTreeMap<String, Outcome>,
}

/// Merges per-host histories into one line per rollout (keyed by deploy id
/// and action: a recovery reuses the id of the rollout it undid), newest
/// first. Hosts record the same rollout independently, so where they
/// disagree (a rolling batch rolled back, the rest kept) the outcome is
/// `mixed` and `hosts` says which host ended how.
pub fn merge_histories<'a>(
    per_host: impl IntoIterator<Item = (&'a str, &'a [HistoryEntry])>,
) -> Vec<MergedRollout> {
    let mut merged: Vec<MergedRollout> = Vec::new();
    for (host, entries) in per_host {
        for e in entries {
            let found = merged
                .iter_mut()
                .find(|m| m.deploy_id == e.deploy_id && m.action == e.action);
            match found {
                Some(m) => {
                    if instant(&e.time) < instant(&m.time) {
                        m.time.clone_from(&e.time);
                    }
                    m.duration_ms = m.duration_ms.max(e.duration_ms);
                    m.closed_ms = m.closed_ms.max(e.closed_ms);
                    if m.subject.is_none() {
                        m.subject.clone_from(&e.subject);
                    }
                    m.hosts.insert(host.to_owned(), e.outcome);
                }
                None => merged.push(MergedRollout {
                    deploy_id: e.deploy_id.clone(),
                    time: e.time.clone(),
                    action: e.action,
                    release: e.release.clone(),
                    previous: e.previous.clone(),
                    commit: e.commit.clone(),
                    subject: e.subject.clone(),
                    who: e.who.clone(),
                    outcome: String::new(),
                    duration_ms: e.duration_ms,
                    closed_ms: e.closed_ms,
                    hosts: [(host.to_owned(), e.outcome)].into(),
                }),
            }
        }
    }
    for m in &mut merged {
        let mut outcomes = m.hosts.values();
        let first = outcomes.next().copied();
        m.outcome = match first {
            Some(o) if outcomes.all(|x| *x == o) => outcome_word(o).to_owned(),
            _ => "mixed".to_owned(),
        };
    }
    // Parsed, not compared as text: RFC 3339 omits a zero fraction. The id
    // breaks ties stably.
    merged.sort_by(|a, b| (instant(&b.time), &b.deploy_id).cmp(&(instant(&a.time), &a.deploy_id)));
    merged
}

/// A recorded time as a point in time; unreadable times sort oldest.
pub fn instant(time: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339).ok()
}

/// The word `--json` and the text output use for an outcome.
pub fn outcome_word(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "success",
        Outcome::RolledBack => "rolled-back",
    }
}

/// The release a rollback returns to: the one that ran before the current
/// release was deployed. Rolling back twice goes back twice.
pub fn rollback_target(history: &[HistoryEntry], current: Option<&str>) -> Option<HistoryEntry> {
    let current = current?;
    // The deploy that replaced something; a forced redeploy of the same
    // release (no previous, or an old line with previous == release) is
    // passed over.
    let deployed = history.iter().rev().find(|e| {
        e.release == current
            && e.action == Action::Deploy
            && e.outcome == Outcome::Success
            && e.previous.as_deref().is_some_and(|p| p != current)
    })?;
    let target = deployed.previous.as_deref()?;
    history
        .iter()
        .rev()
        .find(|e| e.release == target && e.outcome == Outcome::Success)
        .cloned()
        .or_else(|| {
            Some(HistoryEntry {
                release: target.to_owned(),
                ..deployed.clone()
            })
        })
}

/// Which way `recover` takes an interrupted rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// It passed its point of no return somewhere: the new release serves
    /// there, so the journaled hosts are brought onto it too.
    Finish,
    /// It never did: the journaled hosts go back to what they ran before.
    Undo,
}

/// An interrupted rollout, as the journals and histories of the reachable
/// hosts describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub direction: Direction,
    /// The rollout that died (the first journal's).
    pub deploy_id: String,
    pub phase: crate::notify::Phase,
    /// The release it was rolling out.
    pub release: String,
    /// The hosts with a journal, in cluster order, and what each ran before.
    pub previous: std::collections::BTreeMap<String, Option<String>>,
    pub hosts: Vec<String>,
}

/// Reads what `recover` must do from each reachable host's state and
/// history; `None` when no host has a journal.
pub fn recovery(hosts: &[(String, HostState, Vec<HistoryEntry>)]) -> Option<Recovery> {
    let journaled: Vec<(&String, Journal)> = hosts
        .iter()
        .filter_map(|(h, s, _)| s.journal.clone().and_then(Result::ok).map(|j| (h, j)))
        .collect();
    let (_, first) = journaled.first()?;
    let ids: Vec<&str> = journaled
        .iter()
        .map(|(_, j)| j.deploy_id.as_str())
        .collect();
    // Committed on a journaled host, or recorded as a success by a host that
    // finished: either way the new release serves somewhere.
    let finished_somewhere = hosts.iter().any(|(_, _, history)| {
        history.iter().any(|e| {
            ids.contains(&e.deploy_id.as_str())
                && e.outcome == Outcome::Success
                && e.action != Action::Recover
        })
    });
    let committed = journaled.iter().any(|(_, j)| j.committed);
    Some(Recovery {
        direction: if committed || finished_somewhere {
            Direction::Finish
        } else {
            Direction::Undo
        },
        deploy_id: first.deploy_id.clone(),
        phase: first.phase,
        release: first.release.clone(),
        previous: journaled
            .iter()
            .map(|(h, j)| ((*h).clone(), j.previous.clone()))
            .collect(),
        hosts: journaled.iter().map(|(h, _)| (*h).clone()).collect(),
    })
}

/// The recover program: take over the dead rollout's lock once its lease
/// expired, stop what it left running, close every journaled host before
/// switching any (old and new never serve side by side), switch them all
/// (forward to its release, or back), open, restart workers and cron,
/// record, unlock. Finishing commits first (a failure then is reported,
/// never undone back into mixed versions); undoing commits once the hosts
/// are back (a failure before that reopens the hosts it closed).
pub fn recover_program(plan: &crate::plan::Plan, rec: &Recovery, all: &[String]) -> super::Program {
    use super::program::{Op, Program};
    let j = &rec.hosts;
    let background = plan.has_background();
    let mut p = Program::new(Action::Recover, "recover", &plan.environment, &rec.release);
    p.previous = Some(rec.previous.clone());
    p.step(Op::Lock { recovery: true }, all)
        .step(Op::StopOrphans, j);
    if rec.direction == Direction::Finish {
        p.step(Op::Commit, j);
    }
    p.step(Op::Close, j);
    match rec.direction {
        Direction::Finish => p.step(Op::Switch, j),
        // Once back, they stay back: what follows is reported, not undone.
        Direction::Undo => p.step(Op::SwitchBack, j).step(Op::Commit, j),
    };
    p.step(Op::Open, j);
    if background {
        p.step(Op::Start, j);
    }
    match rec.direction {
        Direction::Finish => p.step(Op::Record, j),
        Direction::Undo => p.step(Op::RecordBack, j),
    };
    p.step(Op::Unlock, all);
    p
}

/// What `slipway unlock` did.
#[derive(Debug, Default)]
pub struct Unlocked {
    /// The freeze it lifted, as it read.
    pub thawed: Option<String>,
    /// Each lock it removed, described for the user.
    pub removed: Vec<String>,
    /// A live lease it left alone (not forced): why, and what to do.
    pub live: Option<RolloutError>,
}

/// Lifts a deploy freeze and removes the environment's lock: a lock whose
/// lease has expired, a lock file that is not slipway's (naming host and
/// file), and a live lease only when `force`. Ids are compared whole: only
/// the lock file that names the id read here is removed.
///
/// # Errors
/// When a host cannot be read or changed.
pub async fn unlock(
    cluster: &Cluster,
    environment: &str,
    force: bool,
) -> Result<Unlocked, RolloutError> {
    let states = cluster.read_state().await?;
    let mut done = Unlocked::default();
    if let Some(freeze) = states.iter().find_map(|s| s.freeze.clone()) {
        let results = cluster
            .each(|host| host.run("lifting the freeze", host.layout.thaw()).map(drop))
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        done.thawed = Some(match freeze {
            Ok(f) => f.to_string(),
            Err(raw) => format!("frozen ({raw})"),
        });
    }
    let mut decided: Vec<(String, bool)> = Vec::new();
    for (host, state) in cluster.hosts.iter().zip(&states) {
        let (Some(lock), Some(raw)) = (&state.lock, &state.lock_raw) else {
            continue;
        };
        if let Ok(owner) = lock {
            // Decided once per holder, on what every host says of its lease.
            let remove = match decided.iter().find(|(id, _)| *id == owner.deploy_id) {
                Some((_, remove)) => *remove,
                None => {
                    let lease = super::lock::survey_states(cluster, &states, owner);
                    let remove = force || lease.expired();
                    if !remove {
                        done.live = Some(RolloutError::Locked {
                            environment: environment.to_owned(),
                            host: host.name().to_owned(),
                            owner: owner.to_string(),
                            why: format!(
                                "{}; `slipway unlock --force {environment}` removes it anyway, and two rollouts may then run at once",
                                lease.why_live(environment)
                            ),
                        });
                    } else {
                        done.removed.push(if lease.expired() {
                            format!("the expired lock of {owner}")
                        } else {
                            format!("the lock of {owner}, whose lease was still live (--force)")
                        });
                    }
                    decided.push((owner.deploy_id.clone(), remove));
                    remove
                }
            };
            if remove {
                host.run("removing the lock", host.layout.remove_lock_if(raw))?;
            }
            continue;
        }
        // Not slipway's: removed as it was read, whatever it says.
        let removed = host.run("removing the lock", host.layout.remove_lock_if(raw))?;
        if removed.trim() == "removed" {
            done.removed.push(format!(
                "the lock file {}/.slipway/lock on {}, which was not a slipway lock (it read: {})",
                host.layout.root(),
                host.name(),
                crate::notify::message::clip(raw, 200)
            ));
        }
    }
    Ok(done)
}

/// Freezes deploys to the environment: the record goes on every host.
///
/// # Errors
/// The first host where it could not be written (the others keep theirs:
/// one host is enough to refuse every rollout).
pub async fn freeze(cluster: &Cluster, record: &super::state::Freeze) -> Result<(), RolloutError> {
    let json = std::sync::Arc::new(serde_json::to_string(record).expect("freeze serialises"));
    cluster
        .each(move |host| {
            host.run("freezing deploys", host.layout.freeze(&json))
                .map(drop)
        })
        .await
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        release: &str,
        previous: Option<&str>,
        action: Action,
        outcome: Outcome,
    ) -> HistoryEntry {
        HistoryEntry {
            time: String::new(),
            deploy_id: String::new(),
            environment: "production".into(),
            action,
            release: release.into(),
            previous: previous.map(Into::into),
            commit: format!("commit-{release}"),
            sha256: String::new(),
            who: String::new(),
            outcome,
            subject: None,
            duration_ms: None,
            closed_ms: None,
        }
    }

    #[test]
    fn hosts_merge_into_one_line_per_rollout_newest_first() {
        let at = |e: HistoryEntry, id: &str, time: &str| HistoryEntry {
            deploy_id: id.into(),
            time: time.into(),
            ..e
        };
        let web1 = [
            at(
                entry("a", None, Action::Deploy, Outcome::Success),
                "d1",
                "2026-01-01T00:00:01Z",
            ),
            at(
                entry("b", Some("a"), Action::Deploy, Outcome::Success),
                "d2",
                "2026-01-02T00:00:00Z",
            ),
        ];
        let web2 = [
            at(
                entry("a", None, Action::Deploy, Outcome::Success),
                "d1",
                "2026-01-01T00:00:00Z",
            ),
            at(
                entry("b", Some("a"), Action::Deploy, Outcome::RolledBack),
                "d2",
                "2026-01-02T00:00:01Z",
            ),
        ];
        let merged = merge_histories([("web1", &web1[..]), ("web2", &web2[..])]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].deploy_id, "d2");
        assert_eq!(merged[0].outcome, "mixed");
        assert_eq!(merged[0].hosts["web2"], Outcome::RolledBack);
        assert_eq!(merged[1].outcome, "success");
        assert_eq!(
            merged[1].time, "2026-01-01T00:00:00Z",
            "the earliest host's time"
        );
    }

    #[test]
    fn rollback_goes_to_what_ran_before_and_twice_goes_further() {
        let mut history = vec![
            entry("a", None, Action::Deploy, Outcome::Success),
            entry("b", Some("a"), Action::Deploy, Outcome::Success),
            entry("x", Some("b"), Action::Deploy, Outcome::RolledBack),
            entry("c", Some("b"), Action::Deploy, Outcome::Success),
        ];
        let target = rollback_target(&history, Some("c")).unwrap();
        assert_eq!(target.release, "b");
        assert_eq!(target.commit, "commit-b");
        // A forced redeploy of c (recorded by an older slipway with
        // previous == release) still rolls back to b.
        history.push(entry("c", Some("c"), Action::Deploy, Outcome::Success));
        assert_eq!(rollback_target(&history, Some("c")).unwrap().release, "b");
        history.push(entry("b", Some("c"), Action::Rollback, Outcome::Success));
        assert_eq!(rollback_target(&history, Some("b")).unwrap().release, "a");
        assert!(rollback_target(&history, Some("a")).is_none());
        assert!(rollback_target(&history, None).is_none());
    }
}
