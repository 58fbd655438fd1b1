//! The plan of a rollout as a program: the steps that will run, in order,
//! each over a named set of hosts, each with the step that undoes it.
//!
//! Owns [`Program`], [`Step`] and [`Op`], and how a program reads
//! (`render`, shown by `--dry-run` and snapshot-tested). Strategies and
//! actions are small functions that return a `Program` (`gated.rs`,
//! `rolling.rs`, `canary.rs`, `manage.rs` for recover); one executor
//! (`executor.rs`) walks it. Invariants: a program is plain data, built
//! without I/O from settings and what was read from the hosts; what
//! `--dry-run` prints is the very value the executor walks; and every step
//! that changes what a host serves names its undo, so undo is decided here,
//! not improvised by whoever hit the failure.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::state::Action;
use crate::notify::Phase;
use crate::plan::Plan;

/// A rollout, compiled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Program {
    pub action: Action,
    /// The strategy it was compiled from (`gated`, `rolling`, `canary`) or,
    /// for actions that have their own shape, the action (`revert`, `recover`).
    pub shape: &'static str,
    pub environment: String,
    /// The release the switched hosts end on.
    pub release: String,
    /// What each host ran before, when known before the hosts are read
    /// (promote and revert: from the canary record; recover: from the
    /// journals). `None`: the `inspect` step reads it.
    pub previous: Option<BTreeMap<String, Option<String>>>,
    pub steps: Vec<Step>,
}

/// One step: an operation on a set of hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    #[serde(flatten)]
    pub op: Op,
    pub hosts: Vec<String>,
}

/// What a step does on each of its hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// Take the environment lock on every host (a lease, renewed while the
    /// rollout lives); it is given back after the last step, whatever
    /// happened.
    Lock { recovery: bool },
    /// Read each host; refuse a host with an interrupted rollout, a canary
    /// in progress (`refuse_canary`), or without the release (`require`).
    Inspect { refuse_canary: bool, require: bool },
    /// Upload, verify the sha256, unpack beside the live release, link
    /// shared paths, write the env file; journal.
    Stage,
    /// Stop every command a dead rollout left running on the host (TERM,
    /// then KILL), before anything is switched.
    StopOrphans,
    /// Stop workers and cron in the live release.
    Stop,
    /// Maintenance flag on.
    Close,
    /// `current` → the program's release (copy-back first).
    Switch,
    /// `current` → what the host ran before.
    SwitchBack,
    /// The deploy hook, on exactly one host.
    Hook {
        command: String,
        #[serde(with = "humantime_secs")]
        timeout: Duration,
    },
    /// The configured health check.
    Health,
    /// The canary's own `check` command.
    CanaryCheck { command: String },
    /// From here on these hosts keep the release: a later failure on them
    /// is reported (exit 4), never undone.
    Commit,
    /// Maintenance flag off.
    Open,
    /// Start workers and cron in the live release.
    Start,
    /// Record the release in history, prune old releases, clear the journal.
    Record,
    /// Record that these hosts went back, clear the journal.
    RecordBack,
    /// Clear the journal on hosts that never changed what they serve.
    Forget,
    /// Record the canary on every host (which hosts switched, what each ran
    /// before), clear the journal.
    WriteCanary { switched: Vec<String> },
    /// Remove the canary record.
    ClearCanary,
    /// Give the lock back.
    Unlock,
}

impl Op {
    /// The step that undoes this one on the hosts it reached, if it changed
    /// what a host serves.
    pub fn undo(&self) -> Option<Op> {
        match self {
            Self::Stop => Some(Self::Start),
            Self::Close => Some(Self::Open),
            Self::Switch => Some(Self::SwitchBack),
            Self::Start => Some(Self::Stop),
            Self::Stage => Some(Self::RecordBack),
            _ => None,
        }
    }

    /// The phase journals, events and output name this step by.
    pub fn phase(&self) -> Phase {
        match self {
            Self::Lock { .. } | Self::Unlock => Phase::Lock,
            Self::Inspect { .. } | Self::Stage => Phase::Stage,
            Self::StopOrphans | Self::Stop => Phase::Stop,
            Self::Close => Phase::Close,
            Self::Switch => Phase::Switch,
            Self::SwitchBack => Phase::Rollback,
            Self::Hook { .. } => Phase::Hook,
            Self::Health | Self::CanaryCheck { .. } => Phase::Health,
            Self::Commit | Self::Open => Phase::Open,
            Self::Start => Phase::Start,
            Self::Record
            | Self::RecordBack
            | Self::Forget
            | Self::WriteCanary { .. }
            | Self::ClearCanary => Phase::Record,
        }
    }

    /// Whether, once this step ran, hosts may serve something else than
    /// before (a failure after it is rolled back, not just forgotten).
    pub fn touches_service(&self) -> bool {
        matches!(
            self,
            Self::Stop | Self::Close | Self::Switch | Self::SwitchBack | Self::Hook { .. }
        )
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Lock { .. } => "lock",
            Self::Inspect { .. } => "inspect",
            Self::Stage => "stage",
            Self::StopOrphans => "stop-orphans",
            Self::Stop => "stop",
            Self::Close => "close",
            Self::Switch => "switch",
            Self::SwitchBack => "switch-back",
            Self::Hook { .. } => "hook",
            Self::Health => "health",
            Self::CanaryCheck { .. } => "canary-check",
            Self::Commit => "commit",
            Self::Open => "open",
            Self::Start => "start",
            Self::Record => "record",
            Self::RecordBack => "record-back",
            Self::Forget => "forget",
            Self::WriteCanary { .. } => "write-canary",
            Self::ClearCanary => "clear-canary",
            Self::Unlock => "unlock",
        }
    }

    fn says(&self, release: &str) -> String {
        match self {
            Self::Lock { recovery: false } => {
                "take the environment lock (a lease, renewed while this runs)".into()
            }
            Self::Lock { recovery: true } => {
                "take over the lock of a dead rollout once its lease expired (refuse a live one)"
                    .into()
            }
            Self::Inspect {
                refuse_canary,
                require,
            } => {
                let mut s = "read each host; refuse an interrupted rollout".to_owned();
                if *refuse_canary {
                    s.push_str(" or a canary in progress");
                }
                if *require {
                    s.push_str(&format!("; {release} must be there"));
                }
                s
            }
            Self::Stage => format!(
                "upload, check sha256, unpack {release} beside the live release, link shared paths, write the env file"
            ),
            Self::StopOrphans => {
                "stop commands a dead rollout left running (TERM, then KILL)".into()
            }
            Self::Stop => "stop workers and cron".into(),
            Self::Close => "maintenance flag on".into(),
            Self::Switch => format!("current -> {release}"),
            Self::SwitchBack => "current -> the release it ran before".into(),
            Self::Hook { command, timeout } => format!(
                "deploy hook `{command}` in {release} (timeout {}, then TERM, KILL)",
                humantime::format_duration(*timeout)
            ),
            Self::Health => "health check".into(),
            Self::CanaryCheck { command } => format!("canary check `{command}`"),
            Self::Commit => {
                "point of no return: later failures are reported (exit 4), not undone".into()
            }
            Self::Open => "maintenance flag off".into(),
            Self::Start => "start workers and cron".into(),
            Self::Record => "record history, prune old releases, clear the journal".into(),
            Self::RecordBack => "record the rollback, clear the journal".into(),
            Self::Forget => "clear the journal".into(),
            Self::WriteCanary { switched } => {
                format!(
                    "record the canary ({} switched), clear the journal",
                    switched.join(" ")
                )
            }
            Self::ClearCanary => "remove the canary record".into(),
            Self::Unlock => "give the lock back".into(),
        }
    }
}

mod humantime_secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

impl Program {
    /// Starts a program; `step` adds to it.
    pub fn new(action: Action, shape: &'static str, environment: &str, release: &str) -> Self {
        Self {
            action,
            shape,
            environment: environment.to_owned(),
            release: release.to_owned(),
            previous: None,
            steps: Vec::new(),
        }
    }

    /// Starts a program over every host of `plan` that takes the lock and
    /// reads the hosts (`inspect`, an [`Op::Inspect`]) before anything else.
    pub fn locked(
        action: Action,
        shape: &'static str,
        plan: &Plan,
        release: &str,
        inspect: Op,
    ) -> Self {
        let mut p = Self::new(action, shape, &plan.environment, release);
        p.step(Op::Lock { recovery: false }, &plan.hosts)
            .step(inspect, &plan.hosts);
        p
    }

    /// Adds the deploy hook of `plan`, on its one host, if it has one.
    pub fn hook(&mut self, plan: &Plan) -> &mut Self {
        if let Some(hook) = &plan.hook {
            self.step(
                Op::Hook {
                    command: hook.command.clone(),
                    timeout: hook.timeout,
                },
                std::slice::from_ref(&hook.host),
            );
        }
        self
    }

    /// Adds `op` over `hosts`; a step over no host is left out.
    pub fn step(&mut self, op: Op, hosts: &[String]) -> &mut Self {
        if !hosts.is_empty() {
            self.steps.push(Step {
                op,
                hosts: hosts.to_vec(),
            });
        }
        self
    }

    /// The program as `--dry-run` prints it: one numbered line per step,
    /// its hosts, and its undo.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let everyone = self.hosts();
        let mut out = format!(
            "plan: {} {} on {} ({})\nhosts: {}\n",
            action_word(self.action),
            self.release,
            self.environment,
            self.shape,
            everyone.join(" ")
        );
        let width = self
            .steps
            .iter()
            .map(|s| s.op.name().len())
            .max()
            .unwrap_or(0);
        let sets: Vec<String> = self
            .steps
            .iter()
            .map(|s| {
                if s.hosts == everyone {
                    "all hosts".to_owned()
                } else {
                    s.hosts.join(" ")
                }
            })
            .collect();
        let set_width = sets.iter().map(String::len).max().unwrap_or(0);
        for (i, (step, set)) in self.steps.iter().zip(&sets).enumerate() {
            let _ = write!(
                out,
                "{:>3}. {:<width$}  {:<set_width$}  {}",
                i + 1,
                step.op.name(),
                set,
                step.op.says(&self.release)
            );
            if let Some(undo) = step.op.undo() {
                let _ = write!(out, "  (undo: {})", undo.name());
            }
            out.push('\n');
        }
        out
    }

    /// Every host a step names, in the order they first appear.
    pub fn hosts(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for step in &self.steps {
            for h in &step.hosts {
                if !all.contains(h) {
                    all.push(h.clone());
                }
            }
        }
        all
    }
}

/// How an action reads in a plan's title and in messages.
pub fn action_word(action: Action) -> &'static str {
    match action {
        Action::Deploy => "deploy",
        Action::Rollback => "roll back to",
        Action::Recover => "recover",
        Action::Canary => "canary",
        Action::Promote => "promote",
        Action::Revert => "revert the canary of",
    }
}
