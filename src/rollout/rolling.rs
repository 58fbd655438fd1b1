//! The rolling strategy: zero downtime, host batches, health between them.
//!
//! Top to bottom: lock; stage every host (old release keeps serving); run
//! the deploy hook once, in the staged release, before any host switches
//! (migrations must be backward compatible — both releases serve during a
//! rolling deploy); then per batch: stop background work, copy back, switch
//! `current` by rename, health-check, start background work. Invariants:
//! no host is ever closed; a failed batch is rolled back, and with
//! `on_failure = "rollback-all"` (the default) so is every host already
//! switched, leaving the whole cluster on one version.

use std::time::Instant;

use super::gated::prepare;
use super::state::Action;
use super::steps::{self, Report, Rollout};
use super::{Cluster, RolloutError};
use crate::config::OnFailure;

pub(super) async fn rolling(
    cluster: &Cluster,
    r: &Rollout,
    started: Instant,
) -> Result<Report, RolloutError> {
    let (previous, states) = prepare(cluster, r).await?;
    if let (Some(hook), Action::Deploy) = (&r.plan.hook, r.action)
        && let Err(failure) = steps::run_hook(cluster, r, hook).await
    {
        return Err(
            steps::roll_back(cluster, r, &previous, failure, steps::Clock::open(started)).await,
        );
    }
    let names = cluster.names();
    // A batch of zero hosts would never finish; at least one host per batch.
    let per = r.plan.batch.of(names.len()).max(1);
    let mut switched: Vec<String> = Vec::new();
    let mut warnings = Vec::new();
    for batch in names.chunks(per) {
        let hosts = cluster.subset(batch);
        switched.extend(batch.iter().cloned());
        if let Err(failure) = one_batch(&hosts, r, &previous).await {
            let undo = match r.plan.on_failure {
                OnFailure::RollbackAll => cluster.subset(&switched),
                OnFailure::RollbackBatch => hosts,
            };
            let kept: Vec<String> = switched
                .iter()
                .filter(|h| !batch.contains(h) && r.plan.on_failure == OnFailure::RollbackBatch)
                .cloned()
                .collect();
            let untouched: Vec<String> = names
                .iter()
                .filter(|h| !switched.contains(h))
                .cloned()
                .collect();
            // Hosts that keep the new release record it; the rest forget the
            // staged rollout; then the failed ones go back.
            steps::record(
                &cluster.subset(&kept),
                r,
                &previous,
                &states,
                steps::Clock::open(started),
            )
            .await;
            clear_journals(&cluster.subset(&untouched)).await;
            return Err(steps::roll_back(
                &undo,
                r,
                &previous,
                failure,
                steps::Clock::open(started),
            )
            .await);
        }
    }
    warnings
        .extend(steps::record(cluster, r, &previous, &states, steps::Clock::open(started)).await);
    Ok(Report {
        release: r.plan.release_id.clone(),
        previous: previous.values().next().cloned().flatten(),
        closed_window: std::time::Duration::ZERO,
        duration: started.elapsed(),
        warnings,
    })
}

async fn one_batch(
    hosts: &Cluster,
    r: &Rollout,
    previous: &steps::PerHost<Option<String>>,
) -> Result<(), steps::StepFailure> {
    steps::background(hosts, r, previous, false).await?;
    steps::switch(hosts, r, previous).await?;
    if let Some(health) = &r.plan.health {
        steps::health_check(hosts, r, health).await?;
    }
    steps::background(hosts, r, previous, true).await
}

/// Forgets a staged rollout on hosts it never switched.
pub(super) async fn clear_journals(cluster: &Cluster) {
    let _ = cluster
        .each(|host| host.run("clearing the journal", host.layout.clear_journal()))
        .await;
}
