//! The gated strategy: consistency over availability.
//!
//! Old and new code never serve side by side. The program, top to bottom:
//!
//! 1. **lock** the environment on every host (all or none);
//! 2. **inspect** every host: refuse an interrupted rollout or a canary;
//! 3. **stage** on every host while the cluster still serves the old
//!    release: upload, verify sha256, unpack beside it, link shared paths,
//!    write the env file. A failure here leaves every host untouched;
//! 4. **stop** workers and cron;
//! 5. **close**: the maintenance flag appears on every host;
//! 6. **switch** `current` on every host, by rename;
//! 7. run the **deploy hook** on exactly one host, with a timeout;
//! 8. **health**-check every host; then the point of no return (**commit**);
//! 9. **open**, **start** workers and cron, **record** history and prune,
//!    **unlock**.
//!
//! A rollback is the same program without staging and the hook, after
//! checking the release is on every host. Invariants (kept by the
//! executor): a failure in 4–8 puts every reachable host back on the release
//! it ran before and opens it; a failure in 9 is reported per host, exit 4.
//! Everything slow happens in 3, so the closed window (5 → 9) is only flag
//! flips, renames, the hook and the health checks.

use super::program::{Op, Program};
use super::state::Action;
use crate::plan::Plan;

/// The gated program for `action` (deploy or rollback) of `plan`.
pub fn program(plan: &Plan, action: Action) -> Program {
    let all = &plan.hosts;
    let deploy = action == Action::Deploy;
    let background = plan.has_background();
    let inspect = Op::Inspect {
        refuse_canary: true,
        require: !deploy,
    };
    let mut p = Program::locked(action, "gated", plan, &plan.release_id, inspect);
    if deploy {
        p.step(Op::Stage, all);
    }
    if background {
        p.step(Op::Stop, all);
    }
    p.step(Op::Close, all).step(Op::Switch, all);
    if deploy {
        p.hook(plan);
    }
    if plan.health.is_some() {
        p.step(Op::Health, all);
    }
    p.step(Op::Commit, all).step(Op::Open, all);
    if background {
        p.step(Op::Start, all);
    }
    p.step(Op::Record, all).step(Op::Unlock, all);
    p
}
