//! Rollouts: putting a release on every host of an environment.
//!
//! Owns the per-host scripts ([`layout`]), what is recorded on hosts
//! ([`state`]), the environment lock ([`lock`]) and the strategies; the gated
//! state machine lives, top to bottom, in [`gated`]. Invariants: the engine
//! knows nothing of where a rollout was triggered or who is notified (it
//! emits events); it touches hosts only through [`Transport`]; and blocking
//! transport calls run on blocking threads, at most `parallel` at a time.

pub mod canary;
pub mod executor;
pub mod gated;
pub mod health;
pub mod interrupt;
pub mod layout;
pub mod lock;
pub mod manage;
pub mod program;
pub mod remote;
pub mod rolling;
pub mod state;
pub mod steps;

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::notify::Phase;
use crate::transport::{Transport, TransportError, Unquotable};

pub use interrupt::Interrupt;
pub use layout::Layout;
pub use program::Program;
pub use state::{HostState, LockOwner};

/// Compiles `action` of `plan` with the environment's strategy: a deploy
/// is gated, rolling or canary; a rollback (`--to` too) is gated in a gated
/// environment and rolling otherwise, never a canary.
pub fn compile(plan: &crate::plan::Plan, action: state::Action) -> Program {
    use crate::config::Strategy;
    match (action, plan.strategy) {
        (state::Action::Deploy, Strategy::Gated) => gated::program(plan, action),
        (state::Action::Deploy, Strategy::Rolling) => rolling::program(plan, action),
        (state::Action::Deploy, Strategy::Canary) => canary::program(plan),
        (_, Strategy::Gated) => gated::program(plan, state::Action::Rollback),
        (_, Strategy::Rolling | Strategy::Canary) => {
            rolling::program(plan, state::Action::Rollback)
        }
    }
}

/// Opens a transport to a host spec; injected so tests and callers choose
/// how hosts are reached.
pub type Connector = dyn Fn(&str) -> Result<Box<dyn Transport>, TransportError> + Send + Sync;

/// One host of the environment, connected.
#[derive(Clone)]
pub struct Host {
    pub transport: Arc<dyn Transport>,
    pub layout: Layout,
}

impl Host {
    pub fn name(&self) -> &str {
        self.transport.host()
    }
}

/// The connected hosts of one environment, in config order.
#[derive(Clone)]
pub struct Cluster {
    pub hosts: Vec<Host>,
    pub parallel: usize,
}

impl Cluster {
    /// Connects to every host; any failure means no cluster, so nothing is
    /// touched when one host is unreachable or unverified.
    ///
    /// # Errors
    /// The first host that cannot be reached, in config order.
    pub async fn connect(
        specs: &[String],
        deploy_to: &str,
        parallel: usize,
        connect: Arc<Connector>,
    ) -> Result<Self, RolloutError> {
        let deploy_to = deploy_to.to_owned();
        let results = run_each(specs.to_vec(), parallel, move |spec: &String| {
            let transport: Arc<dyn Transport> = Arc::from(connect(spec)?);
            let layout = Layout::new(transport.resolve(&deploy_to));
            Ok(Host { transport, layout })
        })
        .await;
        let hosts = results
            .into_iter()
            .collect::<Result<Vec<_>, TransportError>>()
            .map_err(RolloutError::Unreachable)?;
        Ok(Self { hosts, parallel })
    }

    /// Connects to every host that can be reached: the cluster of those,
    /// and each host that could not be with why. For commands that only
    /// read, where one lost host must not hide the others.
    pub async fn connect_reachable(
        specs: &[String],
        deploy_to: &str,
        parallel: usize,
        connect: Arc<Connector>,
    ) -> (Self, Vec<(String, String)>) {
        let deploy_to = deploy_to.to_owned();
        let results = run_each(specs.to_vec(), parallel, move |spec: &String| {
            let transport: Arc<dyn Transport> = Arc::from(connect(spec)?);
            let layout = Layout::new(transport.resolve(&deploy_to));
            Ok::<_, TransportError>(Host { transport, layout })
        })
        .await;
        let mut hosts = Vec::new();
        let mut unreachable = Vec::new();
        for (spec, result) in specs.iter().zip(results) {
            match result {
                Ok(host) => hosts.push(host),
                Err(e) => unreachable.push((spec.clone(), e.to_string())),
            }
        }
        (Self { hosts, parallel }, unreachable)
    }

    /// The hosts named in `names`, in cluster order.
    pub fn subset(&self, names: &[String]) -> Self {
        Self {
            hosts: self
                .hosts
                .iter()
                .filter(|h| names.iter().any(|n| n == h.name()))
                .cloned()
                .collect(),
            parallel: self.parallel,
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.name().to_owned()).collect()
    }

    /// Runs `f` on every host, at most `parallel` at once, on blocking
    /// threads; results come back in host order.
    pub async fn each<T, F>(&self, f: F) -> Vec<Result<T, RolloutError>>
    where
        T: Send + 'static,
        F: Fn(&Host) -> Result<T, RolloutError> + Send + Sync + 'static,
    {
        run_each(self.hosts.clone(), self.parallel, move |h: &Host| f(h)).await
    }

    /// Reads every host's state.
    ///
    /// # Errors
    /// The first host whose state cannot be read.
    pub async fn read_state(&self) -> Result<Vec<HostState>, RolloutError> {
        self.each(|host| {
            let script = host.layout.read_state().map_err(|e| host.unquotable(e))?;
            let out = host.transport.run("reading the deploy state", &script)?;
            Ok(HostState::parse(&out))
        })
        .await
        .into_iter()
        .collect()
    }
}

impl Host {
    fn unquotable(&self, source: Unquotable) -> RolloutError {
        RolloutError::Transport(self.transport.unquotable(source))
    }

    /// Runs one layout script as step `what`.
    ///
    /// # Errors
    /// When the script cannot be built or fails on the host.
    pub fn run(
        &self,
        what: &str,
        script: Result<crate::transport::Script, Unquotable>,
    ) -> Result<String, RolloutError> {
        let script = script.map_err(|e| self.unquotable(e))?;
        Ok(self.transport.run(what, &script)?)
    }
}

async fn run_each<I, T, E, F>(items: Vec<I>, parallel: usize, f: F) -> Vec<Result<T, E>>
where
    I: Send + 'static,
    T: Send + 'static,
    E: Send + 'static + From<Panicked>,
    F: Fn(&I) -> Result<T, E> + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let limit = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = Vec::with_capacity(items.len());
    for item in items {
        let f = Arc::clone(&f);
        let limit = Arc::clone(&limit);
        tasks.push(tokio::spawn(async move {
            let _permit = limit
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            tokio::task::spawn_blocking(move || f(&item)).await
        }));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(match task.await {
            Ok(Ok(result)) => result,
            _ => Err(E::from(Panicked)),
        });
    }
    results
}

/// A host task panicked: a bug in slipway, reported rather than propagated.
#[derive(Debug)]
pub struct Panicked;

impl From<Panicked> for TransportError {
    fn from(_: Panicked) -> Self {
        TransportError::Connect {
            host: "?".to_owned(),
            reason: "slipway's worker thread panicked (a bug; please report it)".to_owned(),
        }
    }
}

impl From<Panicked> for RolloutError {
    fn from(p: Panicked) -> Self {
        Self::Transport(p.into())
    }
}

/// Why a rollout did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The cause is part of the message, not a `#[source]`, so `{:#}`
    /// does not print it twice.
    #[error("{0}\nnothing was changed on any host")]
    Unreachable(TransportError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{environment} is locked by {owner} on {host}: {why}")]
    Locked {
        environment: String,
        host: String,
        owner: String,
        /// Why the lock is taken to be alive, and what to do.
        why: String,
    },
    #[error(
        "deploys to {environment} are {freeze} (seen on {host}); nothing was changed. Run `slipway unlock {environment}` to lift the freeze"
    )]
    Frozen {
        environment: String,
        host: String,
        /// Who froze it, when and why.
        freeze: String,
    },
    #[error(
        "the lock file {path} on {host} is not a slipway lock (it reads: {content}), so nothing can tell whether a rollout holds {environment}; if none does, run `slipway unlock {environment}` to remove it"
    )]
    CorruptLock {
        environment: String,
        host: String,
        path: String,
        content: String,
    },
    #[error(
        "an interrupted rollout ({deploy_id}, phase {phase}) is recorded on {host}; run `slipway recover {environment}` to finish undoing it"
    )]
    Interrupted {
        environment: String,
        host: String,
        deploy_id: String,
        phase: Phase,
    },
    #[error("staging failed on {}; nothing was switched and the cluster was never closed:\n{}", .failed.join(", "), .errors.join("\n"))]
    Staging {
        failed: Vec<String>,
        errors: Vec<String>,
    },
    #[error("release {release} failed at {phase}: {cause}\n{}", rolled_back_text(.restored_to.as_deref(), .left))]
    RolledBack {
        release: String,
        phase: Phase,
        cause: String,
        restored_to: Option<String>,
        /// The hosts the undo did not bring back (boxed: errors stay small).
        left: Box<LeftBehind>,
    },
    #[error(
        "{release} is live, but not on every host; each host as slipway last saw it:\n  {}\nrun `slipway recover {environment}` once {} reachable: it finishes this rollout there", .hosts.join("\n  "), were(.lost)
    )]
    Incomplete {
        environment: String,
        release: String,
        /// One line per host: its state.
        hosts: Vec<String>,
        /// The hosts that failed after the point of no return.
        lost: Vec<String>,
    },
    #[error(
        "the secret `{0}` is not set in this environment; set it where slipway runs (it is never read from the repository)"
    )]
    MissingSecret(String),
    #[error("no release to roll back to on {host}: {reason}")]
    NoRollbackTarget { host: String, reason: String },
    #[error(
        "a canary of {release} is in progress on {environment}; run `slipway promote {environment}` or `slipway rollback {environment}` first"
    )]
    CanaryInProgress {
        environment: String,
        release: String,
    },
    #[error("no canary is in progress on {0}; nothing to promote")]
    NoCanary(String),
    #[error("on {host}: the health check failed {}; last: {last}", attempts_text(*.attempts))]
    Unhealthy {
        host: String,
        attempts: u32,
        last: String,
    },
}

fn attempts_text(attempts: u32) -> String {
    if attempts == 1 {
        "after 1 attempt".to_owned()
    } else {
        format!("after {attempts} attempts")
    }
}

fn were(hosts: &[String]) -> String {
    match hosts {
        [one] => format!("{one} is"),
        many => format!("{} are", many.join(", ")),
    }
}

/// After an undo, the hosts it could not bring back, and those that were
/// meant to keep the new release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeftBehind {
    /// Hosts the undo could not reach.
    pub unreachable: Vec<String>,
    /// Those of them that were closed when they were lost.
    pub left_closed: Vec<String>,
    /// Hosts past their point of no return, which keep the release
    /// (rolling with `on_failure = "rollback-batch"`).
    pub kept: Vec<String>,
}

fn rolled_back_text(to: Option<&str>, left: &LeftBehind) -> String {
    let LeftBehind {
        unreachable,
        left_closed,
        kept,
    } = left;
    let mut text = match to {
        Some(id) => format!("every reachable host is back on {id} and open"),
        None => "every reachable host is back to having no release and open".to_owned(),
    };
    if !kept.is_empty() {
        text.push_str(&format!(
            "\nkept on the new release (on_failure = \"rollback-batch\"): {}",
            kept.join(", ")
        ));
    }
    if !left_closed.is_empty() {
        text.push_str(&format!(
            "\nnot reachable, left closed: {}",
            left_closed.join(", ")
        ));
    }
    let open: Vec<&String> = unreachable
        .iter()
        .filter(|h| !left_closed.contains(h))
        .collect();
    if !open.is_empty() {
        text.push_str(&format!(
            "\nnot reachable, never closed (may still serve the new release): {}",
            open.iter()
                .map(|h| h.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !unreachable.is_empty() {
        text.push_str("\nrun `slipway recover` once they are back: it finishes the undo there");
    }
    text
}

impl RolloutError {
    /// The process exit code for this failure; scripts rely on these.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::RolledBack { left, .. } if !left.unreachable.is_empty() => 4,
            Self::RolledBack { .. } => 3,
            Self::Incomplete { .. } => 4,
            Self::Locked { .. } | Self::Frozen { .. } | Self::CorruptLock { .. } => 5,
            Self::Interrupted { .. } => 4,
            _ => 1,
        }
    }
}

/// The program of every strategy and action, pinned: what `--dry-run`
/// prints is what runs, so a change here is a change in behaviour and
/// shows up in review as a snapshot diff.
#[cfg(test)]
mod programs {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::manage::{Direction, Recovery, recover_program};
    use super::state::{Action, CanaryState};
    use super::{canary, compile};
    use crate::plan::Plan;
    use crate::source::Commit;

    fn plan(strategy_lines: &str) -> Plan {
        let text = format!(
            r#"[app]
name = "shop"

[environments.production]
branch = "production"
hosts = ["web1", "web2", "web3", "web4"]
deploy_to = "/srv/shop"
deploy_hook = "bin/migrate"
workers = {{ stop = "systemctl stop shop-worker", start = "systemctl start shop-worker" }}
health = {{ command = "curl -fsS localhost/health" }}
{strategy_lines}
"#
        );
        let config = crate::config::parse(&text, Path::new("slipway.toml")).expect("valid config");
        let env = config.environment("production").expect("production");
        let commit = Commit {
            id: "1a2b3c4d5e6f".into(),
            short: "1a2b3c4".into(),
            time: 1_700_000_000,
            subject: "Fix the checkout".into(),
            author: "a".into(),
            committer: "c".into(),
        };
        crate::plan::plan(&config, "production", env, "production", &commit, "alice")
    }

    fn canary_record(p: &Plan) -> CanaryState {
        CanaryState {
            deploy_id: "d1".into(),
            release: p.release_id.clone(),
            commit: p.commit.id.clone(),
            previous: p
                .hosts
                .iter()
                .map(|h| (h.clone(), Some("20231101T000000Z-0000000".to_owned())))
                .collect(),
            switched: vec!["web1".into(), "web2".into()],
            since: "2023-11-14T22:13:20Z".into(),
        }
    }

    #[test]
    fn gated_deploy_and_rollback() {
        let p = plan(r#"strategy = "gated""#);
        insta::assert_snapshot!(compile(&p, Action::Deploy).render());
        insta::assert_snapshot!(compile(&p, Action::Rollback).render());
    }

    #[test]
    fn rolling_deploy_both_failure_policies_and_rollback() {
        let all = plan("strategy = \"rolling\"\nbatch = \"50%\"");
        insta::assert_snapshot!(compile(&all, Action::Deploy).render());
        let batch =
            plan("strategy = \"rolling\"\nbatch = \"50%\"\non_failure = \"rollback-batch\"");
        insta::assert_snapshot!(compile(&batch, Action::Deploy).render());
        insta::assert_snapshot!(compile(&all, Action::Rollback).render());
    }

    #[test]
    fn canary_deploy_promote_and_revert() {
        let p = plan(
            "strategy = \"canary\"\ncanary = { hosts = [\"web1\"], share = \"34%\", check = \"bin/smoke\" }",
        );
        insta::assert_snapshot!(compile(&p, Action::Deploy).render());
        let record = canary_record(&p);
        insta::assert_snapshot!(canary::promote_program(&p, &record).render());
        insta::assert_snapshot!(canary::revert_program(&p, &record).render());
    }

    #[test]
    fn a_rollback_in_a_canary_environment_never_runs_the_canary_strategy() {
        let p = plan("strategy = \"canary\"\ncanary = { hosts = [\"web1\"] }");
        let program = compile(&p, Action::Rollback);
        assert_eq!(program.shape, "rolling");
        assert!(
            !program
                .steps
                .iter()
                .any(|s| matches!(s.op, super::program::Op::WriteCanary { .. })),
            "a rollback records no canary"
        );
        let switched: Vec<&String> = program
            .steps
            .iter()
            .filter(|s| s.op == super::program::Op::Switch)
            .flat_map(|s| &s.hosts)
            .collect();
        assert_eq!(switched.len(), 4, "every host switches: {switched:?}");
    }

    #[test]
    fn recover_finishes_or_undoes_closing_every_host_before_switching_any() {
        let p = plan(r#"strategy = "gated""#);
        let all = p.hosts.clone();
        let previous: BTreeMap<String, Option<String>> = all
            .iter()
            .map(|h| (h.clone(), Some("20231101T000000Z-0000000".to_owned())))
            .collect();
        let rec = |direction| Recovery {
            direction,
            deploy_id: "d1".into(),
            phase: crate::notify::Phase::Hook,
            release: p.release_id.clone(),
            previous: previous.clone(),
            hosts: all.clone(),
        };
        let undo = recover_program(&p, &rec(Direction::Undo), &all);
        let finish = recover_program(&p, &rec(Direction::Finish), &all);
        for program in [&undo, &finish] {
            let ops: Vec<&super::program::Op> = program.steps.iter().map(|s| &s.op).collect();
            let close = ops.iter().position(|o| **o == super::program::Op::Close);
            let switch = ops.iter().position(|o| {
                matches!(
                    o,
                    super::program::Op::Switch | super::program::Op::SwitchBack
                )
            });
            assert!(close < switch, "close comes before any switch: {ops:?}");
            assert!(ops.contains(&&super::program::Op::Start), "workers restart");
        }
        insta::assert_snapshot!(undo.render());
        insta::assert_snapshot!(finish.render());
    }
}
