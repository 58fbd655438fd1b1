//! The rolling strategy: zero downtime, host batches, health between them.
//!
//! The program: lock; inspect; stage every host (old release keeps
//! serving); the deploy hook once, in the staged release, before any host
//! switches (migrations must be backward compatible — both releases serve
//! during a rolling deploy); then per batch: stop background work, switch
//! `current` by rename, health-check, start background work. With
//! `on_failure = "rollback-batch"` each healthy batch is committed and
//! recorded at once, so a later failure undoes only its own batch; with
//! `"rollback-all"` (the default) the commit comes after the last batch and
//! a failure anywhere puts every switched host back. Invariant: no host is
//! ever closed. A rollback in a rolling (or canary) environment is the same
//! program without staging and the hook.

use super::program::{Op, Program};
use super::state::Action;
use crate::config::OnFailure;
use crate::plan::Plan;

/// The rolling program for `action` (deploy or rollback) of `plan`.
pub fn program(plan: &Plan, action: Action) -> Program {
    let all = &plan.hosts;
    let deploy = action == Action::Deploy;
    let background = plan.has_background();
    let inspect = Op::Inspect {
        refuse_canary: true,
        require: !deploy,
    };
    let mut p = Program::locked(action, "rolling", plan, &plan.release_id, inspect);
    if deploy {
        p.step(Op::Stage, all);
        p.hook(plan);
    }
    // A batch of zero hosts would never finish; at least one host per batch.
    let per = plan.batch.of(all.len()).max(1);
    let mut recorded: Vec<String> = Vec::new();
    for batch in all.chunks(per) {
        switch_and_check(&mut p, plan, batch, background);
        if plan.on_failure == OnFailure::RollbackBatch {
            p.step(Op::Commit, batch).step(Op::Record, batch);
            recorded.extend(batch.iter().cloned());
        }
    }
    let rest: Vec<String> = all
        .iter()
        .filter(|h| !recorded.contains(h))
        .cloned()
        .collect();
    p.step(Op::Commit, &rest)
        .step(Op::Record, &rest)
        .step(Op::Unlock, all);
    p
}

/// Stop, switch, check, start: one batch of a rolling rollout, a canary
/// stage, or the rest of the hosts on promote.
pub(super) fn switch_and_check(p: &mut Program, plan: &Plan, hosts: &[String], background: bool) {
    if background {
        p.step(Op::Stop, hosts);
    }
    p.step(Op::Switch, hosts);
    if plan.health.is_some() {
        p.step(Op::Health, hosts);
    }
    if background {
        p.step(Op::Start, hosts);
    }
}
