//! The gated rollout: consistency over availability.
//!
//! Old and new code never serve side by side. The machine, top to bottom:
//!
//! 1. **lock** the environment on every host (all or none);
//! 2. **stage** on every host while the cluster still serves the old
//!    release: upload, verify sha256, unpack beside it, link shared paths,
//!    write the env file. A failure here leaves every host untouched;
//! 3. **stop** workers and cron;
//! 4. **close**: the maintenance flag appears on every host;
//! 5. **switch** `current` on every host, by rename;
//! 6. run the **deploy hook** on exactly one host, with a timeout;
//! 7. **health**-check every host, then **open**, start workers and cron,
//!    record history, prune, unlock.
//!
//! Invariants: a failure in 3–7 puts every reachable host back on the release
//! it ran before and opens it; a host that cannot be reached stays closed, is
//! reported, and keeps its journal for `slipway recover`. Everything slow
//! happens in step 2, so the closed window (4 → 7) is only flag flips,
//! renames, the hook and the health checks.

use std::sync::Arc;
use std::time::Instant;

use super::state::Action;
use super::steps::{self, Clock, PerHost, by_host};
use super::{Cluster, RolloutError, lock};
use crate::config::Strategy;
use crate::notify::{Event, Phase};

pub use super::steps::{Report, Rollout, Secrets, Upload};

/// Runs `r` on `cluster` with the environment's strategy.
///
/// # Errors
/// See [`RolloutError`]; every variant says where the hosts were left.
pub async fn deploy(cluster: &Cluster, r: &Rollout) -> Result<Report, RolloutError> {
    let started = Instant::now();
    r.sink.emit(&Event::Started {
        deploy_id: r.deploy_id.clone(),
        app: r.plan.app.clone(),
        environment: r.plan.environment.clone(),
        release: r.plan.release_id.clone(),
        commit: r.plan.commit.id.clone(),
        deployer: r.plan.deployer.clone(),
        hosts: r.plan.hosts.clone(),
    });
    let result = locked(cluster, r, started).await;
    match &result {
        Ok(report) => r.sink.emit(&Event::Succeeded {
            deploy_id: r.deploy_id.clone(),
            release: report.release.clone(),
            previous: report.previous.clone(),
            closed_window: report.closed_window,
            duration: report.duration,
        }),
        Err(e) => r.sink.emit(&Event::Failed {
            deploy_id: r.deploy_id.clone(),
            release: r.plan.release_id.clone(),
            error: e.to_string(),
            rolled_back_to: match e {
                RolloutError::RolledBack { restored_to, .. } => restored_to.clone(),
                _ => None,
            },
        }),
    }
    result
}

/// Takes the lock, runs the strategy, gives the lock back.
async fn locked(cluster: &Cluster, r: &Rollout, started: Instant) -> Result<Report, RolloutError> {
    let strategy = async {
        match r.plan.strategy {
            Strategy::Gated => gated(cluster, r, started).await,
            Strategy::Rolling => super::rolling::rolling(cluster, r, started).await,
            Strategy::Canary => super::canary::canary(cluster, r, started).await,
        }
    };
    lock::held(cluster, r, strategy).await
}

/// Reads the hosts, refuses to run over an interrupted rollout, and stages
/// (or, for a rollback, checks the release is there). Shared by every
/// strategy.
pub(super) async fn prepare(
    cluster: &Cluster,
    r: &Rollout,
) -> Result<(PerHost<Option<String>>, PerHost<super::HostState>), RolloutError> {
    let states = cluster.read_state().await?;
    steps::refuse_interrupted(cluster, &states, &r.plan.environment)?;
    if r.action == Action::Deploy {
        super::canary::refuse_canary(&states, &r.plan.environment)?;
    }
    let current: Vec<Option<String>> = states.iter().map(|s| s.current.clone()).collect();
    let previous = by_host(cluster, &current);
    match &r.artifact {
        Some(artifact) => steps::stage(cluster, r, artifact, &previous).await?,
        None => steps::require_release(cluster, &states, &r.plan.release_id)?,
    }
    Ok((previous, by_host(cluster, &states)))
}

/// Steps 2–7 with the lock held.
async fn gated(cluster: &Cluster, r: &Rollout, started: Instant) -> Result<Report, RolloutError> {
    let (previous, states) = prepare(cluster, r).await?;

    let closed_at = Instant::now();
    let mut clock = Clock {
        started,
        closed_at: Some(closed_at),
        closed_for: None,
    };
    if let Err(failure) = switch_over(cluster, r, &previous).await {
        return Err(steps::roll_back(cluster, r, &previous, failure, clock).await);
    }
    let mut warnings = Vec::new();
    if let Err((_, e)) = steps::phase(cluster, r, &previous, Phase::Open, |host| {
        host.layout.open()
    })
    .await
    {
        warnings.push(format!("opening: {e}"));
    }
    let closed_window = closed_at.elapsed();
    clock.closed_for = Some(closed_window);
    if let Err((_, e)) = steps::background(cluster, r, &previous, true).await {
        warnings.push(e);
    }
    warnings.extend(steps::record(cluster, r, &previous, &states, clock).await);

    Ok(Report {
        release: r.plan.release_id.clone(),
        previous: previous.values().next().cloned().flatten(),
        closed_window,
        duration: started.elapsed(),
        warnings,
    })
}

/// Steps 3–7a: stop, close, switch, hook, health.
async fn switch_over(
    cluster: &Cluster,
    r: &Rollout,
    previous: &Arc<std::collections::BTreeMap<String, Option<String>>>,
) -> Result<(), steps::StepFailure> {
    steps::background(cluster, r, previous, false).await?;
    steps::phase(cluster, r, previous, Phase::Close, |host| {
        host.layout.close()
    })
    .await?;
    steps::switch(cluster, r, previous).await?;
    if let (Some(hook), Action::Deploy) = (&r.plan.hook, r.action) {
        steps::run_hook(cluster, r, hook).await?;
    }
    if let Some(health) = &r.plan.health {
        steps::health_check(cluster, r, health).await?;
    }
    Ok(())
}
