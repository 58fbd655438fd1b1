//! Looking after an environment between rollouts: status, release lists,
//! rollback targets, recovery of an interrupted rollout, breaking a lock.
//!
//! Invariant: only [`recover`] and [`unlock`] change hosts, and each says
//! exactly what it changed; everything else only reads.

use std::sync::Arc;

use super::state::{Action, HistoryEntry, HostState, Journal, Outcome, now};
use super::{Cluster, RolloutError};
use crate::notify::{Event, Sink};

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

/// The release a rollback returns to: the one that ran before the current
/// release was deployed. Rolling back twice goes back twice.
pub fn rollback_target(history: &[HistoryEntry], current: Option<&str>) -> Option<HistoryEntry> {
    let current = current?;
    let deployed = history.iter().rev().find(|e| {
        e.release == current && e.action == Action::Deploy && e.outcome == Outcome::Success
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

/// Finishes an interrupted rollout by undoing it: every host with a
/// journal goes back to the release it ran before, opens, and forgets the
/// journal; the dead rollout's lock is removed. Returns the hosts changed.
///
/// # Errors
/// The hosts that could not be recovered (still unreachable).
pub async fn recover(
    cluster: &Cluster,
    who: &str,
    sink: Arc<dyn Sink>,
) -> Result<Vec<String>, RolloutError> {
    let states = cluster.read_state().await?;
    let journals: Arc<Vec<Option<Journal>>> = Arc::new(
        states
            .iter()
            .map(|s| s.journal.clone().and_then(Result::ok))
            .collect(),
    );
    let who = who.to_owned();
    let hosts: Arc<Vec<String>> =
        Arc::new(cluster.hosts.iter().map(|h| h.name().to_owned()).collect());
    let js = Arc::clone(&journals);
    let sink2 = Arc::clone(&sink);
    let results = cluster
        .each(move |host| {
            let i = hosts.iter().position(|n| n == host.name()).unwrap_or(0);
            let Some(journal) = &js[i] else {
                return Ok(None);
            };
            let entry = serde_json::to_string(&HistoryEntry {
                time: now(),
                deploy_id: journal.deploy_id.clone(),
                environment: journal.environment.clone(),
                action: Action::Recover,
                release: journal.previous.clone().unwrap_or_default(),
                previous: Some(journal.release.clone()),
                commit: String::new(),
                sha256: String::new(),
                who: who.clone(),
                outcome: Outcome::RolledBack,
                subject: None,
                duration_ms: None,
                closed_ms: None,
            })
            .expect("history serialises");
            let script = host
                .layout
                .switch(journal.previous.as_deref(), &journal.deploy_id)
                .and_then(|s| Ok(s.then(&host.layout.open()?)))
                .and_then(|s| Ok(s.then(&host.layout.record(&entry)?)))
                .and_then(|s| Ok(s.then(&host.layout.unlock(&journal.deploy_id)?)))
                .and_then(|s| Ok(s.then(&host.layout.clear_journal()?)));
            host.run("recovering", script)?;
            sink2.emit(&Event::Note {
                message: format!(
                    "{}: back on {} and open (undid rollout {} at phase {})",
                    host.name(),
                    journal.previous.as_deref().unwrap_or("no release"),
                    journal.deploy_id,
                    journal.phase
                ),
            });
            Ok(Some(host.name().to_owned()))
        })
        .await;
    let mut changed = Vec::new();
    for r in results {
        if let Some(name) = r? {
            changed.push(name);
        }
    }
    Ok(changed)
}

/// Removes whatever lock is on the environment's hosts. For a lock whose
/// holder died on another machine, where slipway cannot prove it is stale.
///
/// # Errors
/// When a host cannot be read or changed.
pub async fn unlock(cluster: &Cluster) -> Result<Vec<String>, RolloutError> {
    let states = cluster.read_state().await?;
    let mut removed = Vec::new();
    for state in &states {
        if let Some(Ok(owner)) = &state.lock
            && !removed.contains(&owner.deploy_id)
        {
            super::lock::break_lock(cluster, &owner.deploy_id).await?;
            removed.push(owner.deploy_id.clone());
        }
    }
    Ok(removed)
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
        history.push(entry("b", Some("c"), Action::Rollback, Outcome::Success));
        assert_eq!(rollback_target(&history, Some("b")).unwrap().release, "a");
        assert!(rollback_target(&history, Some("a")).is_none());
        assert!(rollback_target(&history, None).is_none());
    }
}
