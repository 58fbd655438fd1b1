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

use super::program::{Op, Program};
use super::rolling::switch_and_check;
use super::state::{Action, CanaryState, HostState};
use super::{Cluster, RolloutError};
use crate::config::Share;
use crate::plan::Plan;

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

/// The canary deploy: stage everywhere, the hook once, then stage 1 (the
/// canaries, with the canary `check`) and stage 2 (a share of the rest),
/// then the canary record on every host.
pub fn program(plan: &Plan) -> Program {
    let all = &plan.hosts;
    let background = plan.has_background();
    let (stage1, stage2) = stages(plan);
    let inspect = Op::Inspect {
        refuse_canary: true,
        require: false,
    };
    let mut p = Program::locked(Action::Deploy, "canary", plan, &plan.release_id, inspect);
    p.step(Op::Stage, all);
    p.hook(plan);
    // Stage 1: the canaries, checked by health and their own command.
    if background {
        p.step(Op::Stop, &stage1);
    }
    p.step(Op::Switch, &stage1);
    if plan.health.is_some() {
        p.step(Op::Health, &stage1);
    }
    if let Some(check) = plan.canary.as_ref().and_then(|c| c.check.clone()) {
        p.step(Op::CanaryCheck { command: check }, &stage1);
    }
    if background {
        p.step(Op::Start, &stage1);
    }
    switch_and_check(&mut p, plan, &stage2, background);
    let switched: Vec<String> = stage1.iter().chain(&stage2).cloned().collect();
    p.step(Op::Commit, all)
        .step(Op::WriteCanary { switched }, all)
        .step(Op::Unlock, all);
    p
}

/// Which hosts switch in stage 1 and stage 2. Without dedicated canaries
/// the first host is the canary, and counts towards the share.
fn stages(plan: &Plan) -> (Vec<String>, Vec<String>) {
    let canaries: Vec<String> = plan
        .canary
        .as_ref()
        .map(|c| c.hosts.clone())
        .unwrap_or_default();
    let rest: Vec<String> = plan
        .hosts
        .iter()
        .filter(|h| !canaries.contains(h))
        .cloned()
        .collect();
    let share = plan
        .canary
        .as_ref()
        .map_or(Share::Percent(34), |c| c.share)
        .of(rest.len());
    let stage1 = if canaries.is_empty() {
        rest[..1.min(rest.len())].to_vec()
    } else {
        canaries.clone()
    };
    let stage2 = rest
        .iter()
        .filter(|h| !stage1.contains(h))
        .take(share.saturating_sub(usize::from(canaries.is_empty())))
        .cloned()
        .collect();
    (stage1, stage2)
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

/// `slipway promote`: the hosts the canary did not switch switch to its
/// release (checked like a rolling batch); then every host records it and
/// the canary record goes. A failure puts the promoted hosts back; the
/// canary stays as it was.
pub fn promote_program(plan: &Plan, canary: &CanaryState) -> Program {
    let all = &plan.hosts;
    let background = plan.has_background();
    let rest: Vec<String> = all
        .iter()
        .filter(|h| !canary.switched.contains(h))
        .cloned()
        .collect();
    let inspect = Op::Inspect {
        refuse_canary: false,
        require: true,
    };
    let mut p = Program::locked(Action::Promote, "canary", plan, &canary.release, inspect);
    p.previous = Some(canary.previous.clone());
    switch_and_check(&mut p, plan, &rest, background);
    p.step(Op::Commit, all)
        .step(Op::Record, all)
        .step(Op::ClearCanary, all)
        .step(Op::Unlock, all);
    p
}

/// `slipway rollback` while a canary is in progress: the switched hosts go
/// back to what each ran before; the canary record goes.
pub fn revert_program(plan: &Plan, canary: &CanaryState) -> Program {
    let all = &plan.hosts;
    let background = plan.has_background();
    let switched: Vec<String> = all
        .iter()
        .filter(|h| canary.switched.contains(h))
        .cloned()
        .collect();
    let inspect = Op::Inspect {
        refuse_canary: false,
        require: false,
    };
    let mut p = Program::locked(Action::Revert, "revert", plan, &canary.release, inspect);
    p.previous = Some(canary.previous.clone());
    if background {
        p.step(Op::Stop, &switched);
    }
    p.step(Op::SwitchBack, &switched);
    if background {
        p.step(Op::Start, &switched);
    }
    p.step(Op::Commit, all)
        .step(Op::RecordBack, &switched)
        .step(Op::ClearCanary, all)
        .step(Op::Unlock, all);
    p
}
