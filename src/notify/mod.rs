//! The event stream every rollout emits, and the sinks that consume it.
//!
//! Owns [`Event`] and the [`Sink`] trait. The rollout engine emits events and
//! knows nothing of who listens; the terminal printer, CI annotations and the
//! chat/monitoring notifiers are all sinks. Invariants: events carry no
//! secret values (the engine never holds them in printable form), and a sink
//! cannot fail a rollout: `emit` returns nothing.

pub mod config;
pub mod datadog;
pub mod deliver;
pub mod events;
pub mod fastly;
pub mod grafana;
pub mod graphite;
pub mod matrix;
pub mod message;
pub mod newrelic;
pub mod notifiers;
pub mod slack;
pub mod teams;
pub mod webhook;

pub use config::NotifyConfigError;
pub use message::DeployInfo;
pub use notifiers::{Delivery, Notifiers, Service};

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

pub mod github;

/// The steps of a rollout as they appear in output, history and journals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Lock,
    Stage,
    Stop,
    Close,
    Switch,
    Hook,
    Health,
    Open,
    Start,
    Record,
    Prune,
    Rollback,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lock => "lock",
            Self::Stage => "stage",
            Self::Stop => "stop",
            Self::Close => "close",
            Self::Switch => "switch",
            Self::Hook => "hook",
            Self::Health => "health",
            Self::Open => "open",
            Self::Start => "start",
            Self::Record => "record",
            Self::Prune => "prune",
            Self::Rollback => "rollback",
            Self::Done => "done",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What a rollout was asked to do; recorded in history, named in events
/// and messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    #[default]
    Deploy,
    Rollback,
    Recover,
    Canary,
    Promote,
    /// A canary's switched hosts sent back (`rollback` during a canary).
    Revert,
}

/// One thing that happened during a rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Started {
        deploy_id: String,
        action: Action,
        app: String,
        environment: String,
        release: String,
        commit: String,
        deployer: String,
        hosts: Vec<String>,
    },
    /// A phase finished on one host.
    HostPhase {
        host: String,
        phase: Phase,
        #[serde(with = "secs")]
        took: Duration,
    },
    /// A phase failed on one host.
    HostFailed {
        host: String,
        phase: Phase,
        error: String,
    },
    /// A step of the program finished on all its hosts: how many there
    /// were, how many failed, how long the slowest took. `undo` when it
    /// was run to undo a failed rollout.
    StepDone {
        phase: Phase,
        hosts: usize,
        failed: usize,
        #[serde(with = "secs")]
        took: Duration,
        undo: bool,
    },
    /// A line of output from a command the user configured (hook, workers).
    Output { host: String, line: String },
    /// Progress note that is not tied to one host ("waiting for the lock").
    Note { message: String },
    Succeeded {
        deploy_id: String,
        action: Action,
        release: String,
        previous: Option<String>,
        #[serde(with = "secs")]
        closed_window: Duration,
        #[serde(with = "secs")]
        duration: Duration,
    },
    Failed {
        deploy_id: String,
        action: Action,
        release: String,
        error: String,
        /// Where the hosts ended up, when the failure was rolled back.
        rolled_back_to: Option<String>,
    },
}

mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Something that listens to a rollout.
pub trait Sink: Send + Sync {
    fn emit(&self, event: &Event);

    /// Upload progress; frequent, so kept out of the event stream.
    fn progress(&self, _host: &str, _sent: u64, _total: u64) {}
}

/// Listens to nothing; for callers that only want the result.
pub struct Silent;

impl Sink for Silent {
    fn emit(&self, _: &Event) {}
}

/// Keeps every event; tests and summaries read it afterwards.
#[derive(Default)]
pub struct Recorder {
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("recorder lock").clone()
    }
}

impl Sink for Recorder {
    fn emit(&self, event: &Event) {
        self.events
            .lock()
            .expect("recorder lock")
            .push(event.clone());
    }
}

/// Sends each event to several sinks.
pub struct Fanout(pub Vec<std::sync::Arc<dyn Sink>>);

impl Sink for Fanout {
    fn emit(&self, event: &Event) {
        for sink in &self.0 {
            sink.emit(event);
        }
    }
}
