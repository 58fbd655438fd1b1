//! SIGINT and SIGTERM as the engine sees them: a flag it reads between
//! steps, and what it is doing now, for the person pressing Ctrl-C.
//!
//! Owns [`Interrupt`]. Invariants: raising it never stops a step in flight
//! (half a flag flip or half a rename would leave a host in a state no undo
//! knows); the executor looks at it only between steps, undoes what is not
//! yet committed and reports; while no rollout runs, the caller (the CLI)
//! decides what a signal means.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Shared between the signal handler and the executor.
#[derive(Clone, Default)]
pub struct Interrupt(Arc<Inner>);

#[derive(Default)]
struct Inner {
    count: AtomicU32,
    signal: Mutex<Option<&'static str>>,
    active: AtomicBool,
    doing: Mutex<Option<(String, Instant)>>,
}

/// What a raised signal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raised {
    /// No rollout is running: the caller may stop right away.
    Idle,
    /// The first signal during a rollout: it will stop after `step`.
    Stopping { step: String },
    /// A later one: still waiting for `step`, running for `secs`.
    Waiting { step: String, secs: u64 },
}

impl Interrupt {
    /// Records `signal` (e.g. "SIGINT") and says what happens next.
    pub fn raise(&self, signal: &'static str) -> Raised {
        let n = self.0.count.fetch_add(1, Ordering::SeqCst) + 1;
        self.0
            .signal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(signal);
        if !self.0.active.load(Ordering::SeqCst) {
            return Raised::Idle;
        }
        let (step, since) = self
            .0
            .doing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| ("the step in flight".to_owned(), Instant::now()));
        if n == 1 {
            Raised::Stopping { step }
        } else {
            Raised::Waiting {
                step,
                secs: since.elapsed().as_secs(),
            }
        }
    }

    /// The first signal received, if any.
    pub fn requested(&self) -> Option<&'static str> {
        *self.0.signal.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The executor says what it runs now.
    pub fn doing(&self, what: String) {
        *self.0.doing.lock().unwrap_or_else(PoisonError::into_inner) = Some((what, Instant::now()));
    }

    /// Marks a rollout as running until the guard is dropped.
    pub fn begin(&self) -> Active {
        self.0.active.store(true, Ordering::SeqCst);
        Active(self.clone())
    }
}

/// While alive, signals are the executor's to handle.
pub struct Active(Interrupt);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.0.active.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_outside_a_rollout_is_the_callers_and_inside_waits_for_the_step() {
        let i = Interrupt::default();
        assert_eq!(i.raise("SIGTERM"), Raised::Idle);
        let active = i.begin();
        i.doing("close on web1 web2".into());
        assert_eq!(
            i.raise("SIGINT"),
            Raised::Waiting {
                step: "close on web1 web2".into(),
                secs: 0
            }
        );
        assert_eq!(i.requested(), Some("SIGTERM"), "the first signal is kept");
        drop(active);
        assert_eq!(i.raise("SIGINT"), Raised::Idle);
        let fresh = Interrupt::default();
        let _a = fresh.begin();
        fresh.doing("switch on web1".into());
        assert_eq!(
            fresh.raise("SIGINT"),
            Raised::Stopping {
                step: "switch on web1".into()
            }
        );
    }
}
