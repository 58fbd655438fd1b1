//! The canary strategy: a few hosts first, the rest on `slipway promote`.
//!
//! `deploy`: lock; stage every host (canaries and the rest); run the deploy
//! hook once in the staged release; **stage 1** switches the canary hosts
//! (e.g. an internal-only host not behind the load balancer) and checks
//! them (health, then the optional `check` command); **stage 2** switches a
//! share of the other hosts and checks them; then it records the canary on
//! every host (`.slipway/canary.json`) and stops. `promote` switches the
//! rest; `rollback` returns the switched hosts to what they ran before.
//!
//! Invariants: the canary record survives the process, so promote or
//! rollback can run from another machine, hours later; while it exists no
//! other deploy starts; a failed stage puts every switched host back.

use std::sync::Arc;
use std::time::Instant;

use super::gated::prepare;
use super::state::{Action, CanaryState, HostState, now};
use super::steps::{self, PerHost, Report, Rollout, by_host};
use super::{Cluster, RolloutError, lock};
use crate::config::Share;
use crate::notify::{Event, Phase};

/// A deploy must not start over a canary: the hosts would end up on three
/// releases, and the canary's record of what to roll back to would lie.
///
/// # Errors
/// [`RolloutError::CanaryInProgress`].
pub fn refuse_canary(states: &[HostState], environment: &str) -> Result<(), RolloutError> {
    match states.iter().find_map(|s| s.canary.clone()) {
        Some(canary) => Err(RolloutError::CanaryInProgress {
            environment: environment.to_owned(),
            release: canary.map_or_else(|raw| raw, |c| c.release),
        }),
        None => Ok(()),
    }
}

pub(super) async fn canary(
    cluster: &Cluster,
    r: &Rollout,
    started: Instant,
) -> Result<Report, RolloutError> {
    let (previous, _states) = prepare(cluster, r).await?;
    if let (Some(hook), Action::Deploy) = (&r.plan.hook, r.action)
        && let Err(failure) = steps::run_hook(cluster, r, hook).await
    {
        return Err(
            steps::roll_back(cluster, r, &previous, failure, steps::Clock::open(started)).await,
        );
    }
    let settings = r.plan.canary.clone();
    let canaries: Vec<String> = settings
        .as_ref()
        .map(|c| c.hosts.clone())
        .unwrap_or_default();
    let rest: Vec<String> = cluster
        .names()
        .into_iter()
        .filter(|h| !canaries.contains(h))
        .collect();
    let share = settings
        .as_ref()
        .map_or(Share::Percent(34), |c| c.share)
        .of(rest.len());
    let stage1 = if canaries.is_empty() {
        rest[..1.min(rest.len())].to_vec()
    } else {
        canaries.clone()
    };
    // Without dedicated canaries the first host is the canary, and counts
    // towards the share.
    let stage2: Vec<String> = rest
        .iter()
        .filter(|h| !stage1.contains(h))
        .take(share.saturating_sub(usize::from(canaries.is_empty())))
        .cloned()
        .collect();
    let mut switched = Vec::new();
    for (n, hosts) in [(1, &stage1), (2, &stage2)] {
        if hosts.is_empty() {
            continue;
        }
        switched.extend(hosts.iter().cloned());
        r.sink.emit(&Event::Note {
            message: format!("canary stage {n}: {}", hosts.join(", ")),
        });
        if let Err(failure) = check_stage(&cluster.subset(hosts), r, &previous, n == 1).await {
            let untouched: Vec<String> = cluster
                .names()
                .into_iter()
                .filter(|h| !switched.contains(h))
                .collect();
            super::rolling::clear_journals(&cluster.subset(&untouched)).await;
            return Err(steps::roll_back(
                &cluster.subset(&switched),
                r,
                &previous,
                failure,
                steps::Clock::open(started),
            )
            .await);
        }
    }
    let record = CanaryState {
        deploy_id: r.deploy_id.clone(),
        release: r.plan.release_id.clone(),
        commit: r.plan.commit.id.clone(),
        previous: previous.as_ref().clone(),
        switched: switched.clone(),
        since: now(),
    };
    write_record(cluster, &record).await?;
    r.sink.emit(&Event::Note {
        message: format!(
            "canary: {} of {} hosts on {}; `slipway promote {}` completes it, `slipway rollback {}` reverts it",
            switched.len(),
            cluster.hosts.len(),
            r.plan.release_id,
            r.plan.environment,
            r.plan.environment
        ),
    });
    Ok(Report {
        release: r.plan.release_id.clone(),
        previous: previous.values().next().cloned().flatten(),
        closed_window: std::time::Duration::ZERO,
        duration: started.elapsed(),
        warnings: Vec::new(),
    })
}

async fn check_stage(
    hosts: &Cluster,
    r: &Rollout,
    previous: &PerHost<Option<String>>,
    canaries: bool,
) -> Result<(), steps::StepFailure> {
    steps::background(hosts, r, previous, false).await?;
    steps::switch(hosts, r, previous).await?;
    if let Some(health) = &r.plan.health {
        steps::health_check(hosts, r, health).await?;
    }
    if canaries && let Some(check) = r.plan.canary.as_ref().and_then(|c| c.check.clone()) {
        let health = crate::config::Health {
            url: None,
            command: Some(check),
            status: 200,
            timeout: std::time::Duration::from_secs(60),
            retries: 0,
        };
        steps::health_check(hosts, r, &health).await?;
    }
    steps::background(hosts, r, previous, true).await
}

async fn write_record(cluster: &Cluster, record: &CanaryState) -> Result<(), RolloutError> {
    let json = serde_json::to_string(record).expect("canary record serialises");
    cluster
        .each(move |host| {
            let script = host
                .layout
                .write_canary(&json)
                .and_then(|s| Ok(s.then(&host.layout.clear_journal()?)));
            host.run("recording the canary", script).map(drop)
        })
        .await
        .into_iter()
        .collect()
}

/// The canary in progress, as recorded on the hosts.
///
/// # Errors
/// When a host cannot be read; [`RolloutError::NoCanary`] when none is recorded.
pub async fn current(cluster: &Cluster, environment: &str) -> Result<CanaryState, RolloutError> {
    let states = cluster.read_state().await?;
    states
        .into_iter()
        .find_map(|s| s.canary.and_then(Result::ok))
        .ok_or_else(|| RolloutError::NoCanary(environment.to_owned()))
}

/// Finishes a canary: the remaining hosts switch to its release (gated by
/// health checks), everything is recorded and the canary record removed.
///
/// # Errors
/// As a rolling batch: a failure puts the promoted hosts back.
pub async fn promote(
    cluster: &Cluster,
    r: &Rollout,
    canary: &CanaryState,
) -> Result<Report, RolloutError> {
    let started = Instant::now();
    lock::held(cluster, r, promote_locked(cluster, r, canary, started)).await
}

async fn promote_locked(
    cluster: &Cluster,
    r: &Rollout,
    canary: &CanaryState,
    started: Instant,
) -> Result<Report, RolloutError> {
    let states = cluster.read_state().await?;
    steps::require_release(cluster, &states, &canary.release)?;
    let previous: PerHost<Option<String>> = Arc::new(canary.previous.clone());
    let rest: Vec<String> = cluster
        .names()
        .into_iter()
        .filter(|h| !canary.switched.contains(h))
        .collect();
    let hosts = cluster.subset(&rest);
    let outcome = async {
        steps::background(&hosts, r, &previous, false).await?;
        steps::switch(&hosts, r, &previous).await?;
        if let Some(health) = &r.plan.health {
            steps::health_check(&hosts, r, health).await?;
        }
        steps::background(&hosts, r, &previous, true).await
    }
    .await;
    if let Err(failure) = outcome {
        return Err(
            steps::roll_back(&hosts, r, &previous, failure, steps::Clock::open(started)).await,
        );
    }
    let warnings = steps::record(
        cluster,
        r,
        &previous,
        &by_host(cluster, &states),
        steps::Clock::open(started),
    )
    .await;
    clear_record(cluster).await?;
    Ok(Report {
        release: canary.release.clone(),
        previous: previous.values().next().cloned().flatten(),
        closed_window: std::time::Duration::ZERO,
        duration: started.elapsed(),
        warnings,
    })
}

/// Reverts a canary: every switched host goes back to what it ran before.
///
/// # Errors
/// When a host cannot be switched back (it is reported, the rest are done).
pub async fn revert(
    cluster: &Cluster,
    r: &Rollout,
    canary: &CanaryState,
) -> Result<Report, RolloutError> {
    lock::held(cluster, r, revert_locked(cluster, r, canary)).await
}

async fn revert_locked(
    cluster: &Cluster,
    r: &Rollout,
    canary: &CanaryState,
) -> Result<Report, RolloutError> {
    let started = Instant::now();
    let previous: PerHost<Option<String>> = Arc::new(canary.previous.clone());
    let switched = cluster.subset(&canary.switched);
    let error = steps::roll_back(
        &switched,
        r,
        &previous,
        (Phase::Rollback, "canary reverted".to_owned()),
        steps::Clock::open(started),
    )
    .await;
    clear_record(cluster).await?;
    match error {
        RolloutError::RolledBack { unreachable, .. } if unreachable.is_empty() => Ok(Report {
            release: previous
                .values()
                .next()
                .cloned()
                .flatten()
                .unwrap_or_default(),
            previous: Some(canary.release.clone()),
            closed_window: std::time::Duration::ZERO,
            duration: started.elapsed(),
            warnings: Vec::new(),
        }),
        other => Err(other),
    }
}

async fn clear_record(cluster: &Cluster) -> Result<(), RolloutError> {
    cluster
        .each(|host| {
            host.run("clearing the canary record", host.layout.clear_canary())
                .map(drop)
        })
        .await
        .into_iter()
        .collect()
}
