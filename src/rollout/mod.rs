//! Rollouts: putting a release on every host of an environment.
//!
//! Owns the per-host scripts ([`layout`]), what is recorded on hosts
//! ([`state`]), the environment lock ([`lock`]) and the strategies; the gated
//! state machine lives, top to bottom, in [`gated`]. Invariants: the engine
//! knows nothing of where a rollout was triggered or who is notified (it
//! emits events); it touches hosts only through [`Transport`]; and blocking
//! transport calls run on blocking threads, at most `parallel` at a time.

pub mod canary;
pub mod gated;
pub mod health;
pub mod layout;
pub mod lock;
pub mod manage;
pub mod remote;
pub mod rolling;
pub mod state;
pub mod steps;

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::notify::Phase;
use crate::transport::{Transport, TransportError, Unquotable};

pub use layout::Layout;
pub use state::{HostState, LockOwner};

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
    #[error(
        "{environment} is locked by {owner} on {host}; wait for that rollout, or if it is dead run `slipway unlock {environment}`"
    )]
    Locked {
        environment: String,
        host: String,
        owner: String,
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
    #[error("release {release} failed at {phase}: {cause}\n{}", rolled_back_text(.restored_to.as_deref(), .unreachable))]
    RolledBack {
        release: String,
        phase: Phase,
        cause: String,
        restored_to: Option<String>,
        unreachable: Vec<String>,
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

fn rolled_back_text(to: Option<&str>, unreachable: &[String]) -> String {
    let mut text = match to {
        Some(id) => format!("every reachable host is back on {id} and open"),
        None => "every reachable host is back to having no release and open".to_owned(),
    };
    if !unreachable.is_empty() {
        text.push_str(&format!(
            "\nnot reachable, left closed: {} (run `slipway recover` once they are back)",
            unreachable.join(", ")
        ));
    }
    text
}

impl RolloutError {
    /// The process exit code for this failure; scripts rely on these.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::RolledBack { unreachable, .. } if !unreachable.is_empty() => 4,
            Self::RolledBack { .. } => 3,
            Self::Locked { .. } => 5,
            Self::Interrupted { .. } => 4,
            _ => 1,
        }
    }
}
