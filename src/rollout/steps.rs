//! The steps every strategy is made of: stage, a phase on some hosts, the
//! deploy hook, health checks, open-and-record, roll back.
//!
//! Owns how one step runs on a set of hosts: in parallel (bounded), with a
//! phase event per host, journaling the phase on each host in the same
//! script as the step itself (one round trip). Invariants: per-host data is
//! keyed by host name, so a step can run on any subset of the cluster (a
//! rolling batch, the canaries); and no step here decides *when* it runs —
//! that is the strategy's job (`gated.rs`, `rolling.rs`, `canary.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::layout::Stage;
use super::state::{Action, HistoryEntry, HostState, Journal, Outcome, now, to_prune};
use super::{Cluster, Host, RolloutError};
use crate::config::Health;
use crate::notify::{Event, Phase, Sink};
use crate::plan::Plan;
use crate::transport::{Script, Unquotable};

/// Per-host values, by host name (as written in the config).
pub type PerHost<T> = Arc<BTreeMap<String, T>>;

/// Secret values, resolved from the deployer's environment. Debug output
/// never shows a value.
#[derive(Clone, Default)]
pub struct Secrets(pub Vec<(String, String)>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| format!("{k}=***")))
            .finish()
    }
}

/// The artifact as the engine needs it: bytes on disk and their hash.
#[derive(Debug, Clone)]
pub struct Upload {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// Length of the tar stream inside a `.tar.gz` slipway wrote; hosts
    /// unpack no more. 0 for a package.
    pub tar_size: u64,
}

/// One rollout, ready to run.
///
/// A rollback is the same machine without staging or the deploy hook: the
/// release it switches to is already on every host.
pub struct Rollout {
    pub plan: Arc<Plan>,
    pub action: Action,
    /// What to upload and unpack; `None` when the release must already be
    /// on every host (rollback, promote).
    pub artifact: Option<Upload>,
    pub secrets: Secrets,
    pub deploy_id: String,
    pub sink: Arc<dyn Sink>,
}

/// What a successful rollout did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub release: String,
    pub previous: Option<String>,
    /// How long hosts were closed; zero for strategies that never close
    /// (rolling, canary).
    pub closed_window: Duration,
    pub duration: Duration,
    /// Things that went wrong after hosts were live on the new release (a
    /// worker that would not start): reported, but the release is live.
    pub warnings: Vec<String>,
}

/// A failed step: the phase and what went wrong (per host, joined).
pub type StepFailure = (Phase, String);

/// The states read at the start, by host.
pub fn by_host<T: Clone>(cluster: &Cluster, values: &[T]) -> PerHost<T> {
    Arc::new(
        cluster
            .hosts
            .iter()
            .zip(values)
            .map(|(h, v)| (h.name().to_owned(), v.clone()))
            .collect(),
    )
}

/// A journal left behind means a rollout died half way; starting another
/// on top would lose track of what the hosts ran before it.
///
/// # Errors
/// [`RolloutError::Interrupted`] naming the first such host.
pub fn refuse_interrupted(
    cluster: &Cluster,
    states: &[HostState],
    environment: &str,
) -> Result<(), RolloutError> {
    for (host, state) in cluster.hosts.iter().zip(states) {
        if let Some(journal) = &state.journal {
            let (deploy_id, phase) = match journal {
                Ok(j) => (j.deploy_id.clone(), j.phase),
                Err(_) => ("unknown".to_owned(), Phase::Stage),
            };
            return Err(RolloutError::Interrupted {
                environment: environment.to_owned(),
                host: host.name().to_owned(),
                deploy_id,
                phase,
            });
        }
    }
    Ok(())
}

/// Instead of staging (rollback, promote): the release must be on every host.
///
/// # Errors
/// [`RolloutError::NoRollbackTarget`] naming the first host without it.
pub fn require_release(
    cluster: &Cluster,
    states: &[HostState],
    release: &str,
) -> Result<(), RolloutError> {
    for (host, state) in cluster.hosts.iter().zip(states) {
        if !state.releases.iter().any(|r| r == release) {
            return Err(RolloutError::NoRollbackTarget {
                host: host.name().to_owned(),
                reason: format!("release {release} is not there (pruned, or never deployed)"),
            });
        }
    }
    Ok(())
}

/// How `host` installs packages, when releases ship as `.deb`.
fn dpkg(plan: &Plan, host: &Host) -> Option<super::layout::Dpkg> {
    (plan.artifact == crate::config::ArtifactFormat::Deb).then(|| {
        let prefix = plan
            .deb
            .package_prefix
            .clone()
            .unwrap_or_else(|| crate::artifact::default_package_prefix(&plan.app));
        super::layout::Dpkg::new(
            prefix,
            plan.deb.sudo,
            plan.deb.dpkg_args.clone(),
            &host.transport.resolve("/"),
        )
    })
}

/// Everything slow, while the old release keeps serving: upload, verify,
/// unpack beside the live release, link shared paths, write the env file.
///
/// # Errors
/// [`RolloutError::Staging`] listing every host that failed; nothing that
/// serves traffic was changed on any host.
pub async fn stage(
    cluster: &Cluster,
    r: &Rollout,
    artifact: &Upload,
    previous: &PerHost<Option<String>>,
) -> Result<(), RolloutError> {
    let env_file = Arc::new(env_file(&r.plan, &r.secrets, &r.deploy_id));
    let (plan, artifact, sink) = (Arc::clone(&r.plan), artifact.clone(), Arc::clone(&r.sink));
    let (deploy_id, previous) = (r.deploy_id.clone(), Arc::clone(previous));
    let results = each_timed(cluster, &r.sink, Phase::Stage, move |host| {
        let dpkg = dpkg(&plan, host);
        let remote = match dpkg {
            Some(_) => host.layout.incoming_deb(&artifact.sha256),
            None => host.layout.incoming(&artifact.sha256),
        };
        let name = host.name().to_owned();
        let total = artifact.size;
        let progress = |sent: u64| sink.progress(&name, sent, total);
        host.transport.upload(&artifact.path, &remote, &progress)?;
        let script = host.layout.stage(&Stage {
            release: &plan.release_id,
            sha256: &artifact.sha256,
            tar_size: artifact.tar_size,
            shared_dirs: &plan.shared.dirs,
            shared_files: &plan.shared.files,
            dpkg: dpkg.as_ref(),
        });
        let journal = journal(&plan, &deploy_id, prev(&previous, host), Phase::Stage);
        let script = join(host, script, host.layout.write_journal(&journal))?;
        let mut input = std::io::Cursor::new(env_file.as_bytes().to_vec());
        host.transport
            .run_with("staging", &script, Some(&mut input), None)?;
        Ok(())
    })
    .await;
    let failed: Vec<(String, String)> = results
        .iter()
        .zip(&cluster.hosts)
        .filter_map(|(res, host)| {
            res.as_ref()
                .err()
                .map(|e| (host.name().to_owned(), e.to_string()))
        })
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    // Staged releases stay (a retry reuses them); the journals go, because
    // nothing that serves traffic was touched.
    let _ = cluster
        .each(|host| host.run("clearing the journal", host.layout.clear_journal()))
        .await;
    Err(RolloutError::Staging {
        failed: failed.iter().map(|(h, _)| h.clone()).collect(),
        errors: failed.into_iter().map(|(_, e)| e).collect(),
    })
}

/// Runs one phase's script on every host of `cluster`, journaling the phase
/// with it.
///
/// # Errors
/// The phase and every host's error.
pub async fn phase<F>(
    cluster: &Cluster,
    r: &Rollout,
    previous: &PerHost<Option<String>>,
    phase: Phase,
    script: F,
) -> Result<(), StepFailure>
where
    F: Fn(&Host) -> Result<Script, Unquotable> + Send + Sync + 'static,
{
    let (plan, id, previous) = (
        Arc::clone(&r.plan),
        r.deploy_id.clone(),
        Arc::clone(previous),
    );
    let results = each_timed(cluster, &r.sink, phase, move |host| {
        let journal = journal(&plan, &id, prev(&previous, host), phase);
        let script = join(host, script(host), host.layout.write_journal(&journal))?;
        host.transport.run(phase.as_str(), &script)?;
        Ok(())
    })
    .await;
    first_failure(phase, &results)
}

/// Stops (or starts) workers and cron in the live release of every host.
///
/// # Errors
/// The phase and every host's error.
pub async fn background(
    cluster: &Cluster,
    r: &Rollout,
    previous: &PerHost<Option<String>>,
    start: bool,
) -> Result<(), StepFailure> {
    let plan = Arc::clone(&r.plan);
    if plan.workers.is_none() && plan.cron.is_none() {
        return Ok(());
    }
    let env = Arc::new(hook_env(&plan, &r.deploy_id));
    let which = if start { Phase::Start } else { Phase::Stop };
    let id = r.deploy_id.clone();
    phase(cluster, r, previous, which, move |host| {
        let mut script = Script::new();
        let jobs = [
            (&plan.workers, ["workers-stop", "workers-start"]),
            (&plan.cron, ["cron-stop", "cron-start"]),
        ];
        for (cmd, [stop, begin]) in jobs {
            let Some(cmd) = cmd else { continue };
            let (command, what) = if start {
                (&cmd.start, begin)
            } else {
                (&cmd.stop, stop)
            };
            let job = super::layout::Job {
                id: &id,
                what,
                timeout: None,
            };
            script = script.then(&host.layout.in_current(&job, &env, command)?);
        }
        Ok(script)
    })
    .await
}

/// Switches `current` on every host of `cluster` to the plan's release.
///
/// # Errors
/// The phase and every host's error.
pub async fn switch(
    cluster: &Cluster,
    r: &Rollout,
    previous: &PerHost<Option<String>>,
) -> Result<(), StepFailure> {
    let (release, id, copy_back) = (
        r.plan.release_id.clone(),
        r.deploy_id.clone(),
        r.plan.copy_back.clone(),
    );
    phase(cluster, r, previous, Phase::Switch, move |host| {
        let script = host.layout.copy_back(&release, &copy_back)?;
        Ok(script.then(&host.layout.switch(Some(&release), &id)?))
    })
    .await
}

/// The deploy hook on exactly one host, in `dir` (the new release).
///
/// # Errors
/// The hook phase and what the hook printed last.
pub async fn run_hook(
    cluster: &Cluster,
    r: &Rollout,
    hook: &crate::plan::Hook,
) -> Result<(), StepFailure> {
    let host = cluster
        .hosts
        .iter()
        .find(|h| h.name() == hook.host)
        .cloned()
        .ok_or_else(|| {
            (
                Phase::Hook,
                format!("the hook host {} is not in the cluster", hook.host),
            )
        })?;
    let env = hook_env(&r.plan, &r.deploy_id);
    let (sink, command, timeout) = (Arc::clone(&r.sink), hook.command.clone(), hook.timeout);
    let release = r.plan.release_id.clone();
    let started = Instant::now();
    let deploy_id = r.deploy_id.clone();
    let result = tokio::task::spawn_blocking(move || {
        let dir = host.layout.release(&release);
        let name = host.name().to_owned();
        let label = format!("the deploy hook `{command}`");
        let cmd = super::remote::Command {
            label: &label,
            job: super::layout::Job {
                id: &deploy_id,
                what: "hook",
                timeout: Some(timeout),
            },
            dir: &dir,
            env: &env,
            command: &command,
        };
        super::remote::run_supervised(&host, &cmd, &mut |line| {
            sink.emit(&Event::Output {
                host: name.clone(),
                line: line.to_owned(),
            });
        })
    })
    .await
    .unwrap_or_else(|_| Err(super::Panicked.into()));
    match result {
        Ok(()) => {
            r.sink.emit(&Event::HostPhase {
                host: hook.host.clone(),
                phase: Phase::Hook,
                took: started.elapsed(),
            });
            Ok(())
        }
        Err(e) => {
            r.sink.emit(&Event::HostFailed {
                host: hook.host.clone(),
                phase: Phase::Hook,
                error: e.to_string(),
            });
            Err((Phase::Hook, e.to_string()))
        }
    }
}

/// Every host of `cluster` healthy on the plan's release.
///
/// # Errors
/// The health phase and every failing host's last answer.
pub async fn health_check(
    cluster: &Cluster,
    r: &Rollout,
    health: &Health,
) -> Result<(), StepFailure> {
    let (health, env, release, id) = (
        health.clone(),
        Arc::new(hook_env(&r.plan, &r.deploy_id)),
        r.plan.release_id.clone(),
        r.deploy_id.clone(),
    );
    let results = each_timed(cluster, &r.sink, Phase::Health, move |host| {
        super::health::check(host, &health, &id, &host.layout.release(&release), &env)
    })
    .await;
    first_failure(Phase::Health, &results)
}

/// After the release is live on `cluster`: record history, prune, clear
/// the journal. Returns warnings, never fails. `clock` says how long the
/// rollout took and how long hosts were closed, for the history line.
pub async fn record(
    cluster: &Cluster,
    r: &Rollout,
    previous: &PerHost<Option<String>>,
    states: &PerHost<HostState>,
    clock: Clock,
) -> Vec<String> {
    let mut warnings = Vec::new();
    let entries = history(r, previous, Outcome::Success, clock);
    let (plan, states, previous) = (
        Arc::clone(&r.plan),
        Arc::clone(states),
        Arc::clone(previous),
    );
    let results = each_timed(cluster, &r.sink, Phase::Record, move |host| {
        let state = states.get(host.name()).cloned().unwrap_or_default();
        let mut releases = vec![plan.release_id.clone()];
        releases.extend(
            state
                .releases
                .iter()
                .filter(|id| **id != plan.release_id)
                .cloned(),
        );
        let doomed = to_prune(
            &releases,
            plan.keep_releases,
            Some(&plan.release_id),
            prev(&previous, host).as_deref(),
            &state.pinned,
        );
        let mut script = host
            .layout
            .record(&entries[host.name()])
            .map_err(|e| host.transport.unquotable(e))?;
        let extra = |s: Result<Script, Unquotable>| s.map_err(|e| host.transport.unquotable(e));
        if !doomed.is_empty() {
            let prune = match dpkg(&plan, host) {
                Some(dpkg) => host.layout.prune_packages(&doomed, &dpkg),
                None => host.layout.prune(&doomed),
            };
            script = script.then(&extra(prune)?);
        }
        script = script.then(&extra(host.layout.clear_journal())?);
        host.transport.run("recording and pruning", &script)?;
        Ok(())
    })
    .await;
    warnings.extend(
        results
            .into_iter()
            .filter_map(Result::err)
            .map(|e| e.to_string()),
    );
    warnings
}

/// Puts every reachable host of `cluster` back on its previous release,
/// opens it, records the failure and restarts background work. Returns the
/// error that says where everything ended up.
pub async fn roll_back(
    cluster: &Cluster,
    r: &Rollout,
    previous: &PerHost<Option<String>>,
    (phase, cause): StepFailure,
    clock: Clock,
) -> RolloutError {
    let entries = history(r, previous, Outcome::RolledBack, clock);
    let (prev_map, id) = (Arc::clone(previous), r.deploy_id.clone());
    let results = each_timed(cluster, &r.sink, Phase::Rollback, move |host| {
        let script = host
            .layout
            .switch(prev(&prev_map, host).as_deref(), &id)
            .and_then(|s| Ok(s.then(&host.layout.open()?)))
            .and_then(|s| Ok(s.then(&host.layout.record(&entries[host.name()])?)))
            .and_then(|s| Ok(s.then(&host.layout.clear_journal()?)))
            .map_err(|e| host.transport.unquotable(e))?;
        host.transport.run("rolling back", &script)?;
        Ok(())
    })
    .await;
    let unreachable: Vec<String> = results
        .iter()
        .zip(&cluster.hosts)
        .filter(|(res, _)| res.is_err())
        .map(|(_, h)| h.name().to_owned())
        .collect();
    let _ = background(cluster, r, previous, true).await;
    RolloutError::RolledBack {
        release: r.plan.release_id.clone(),
        phase,
        cause,
        restored_to: previous.values().next().cloned().flatten(),
        unreachable,
    }
}

/// The release `host` ran before this rollout.
pub fn prev(previous: &PerHost<Option<String>>, host: &Host) -> Option<String> {
    previous.get(host.name()).cloned().flatten()
}

/// Runs `f` on every host and emits a phase event per host.
pub async fn each_timed<T, F>(
    cluster: &Cluster,
    sink: &Arc<dyn Sink>,
    phase: Phase,
    f: F,
) -> Vec<Result<T, RolloutError>>
where
    T: Send + 'static,
    F: Fn(&Host) -> Result<T, RolloutError> + Send + Sync + 'static,
{
    let sink = Arc::clone(sink);
    cluster
        .each(move |host| {
            let started = Instant::now();
            let result = f(host);
            match &result {
                Ok(_) => sink.emit(&Event::HostPhase {
                    host: host.name().to_owned(),
                    phase,
                    took: started.elapsed(),
                }),
                Err(e) => sink.emit(&Event::HostFailed {
                    host: host.name().to_owned(),
                    phase,
                    error: e.to_string(),
                }),
            }
            result
        })
        .await
}

fn first_failure<T>(phase: Phase, results: &[Result<T, RolloutError>]) -> Result<(), StepFailure> {
    let errors: Vec<String> = results
        .iter()
        .filter_map(|res| res.as_ref().err().map(ToString::to_string))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err((phase, errors.join("\n")))
    }
}

fn join(
    host: &Host,
    a: Result<Script, Unquotable>,
    b: Result<Script, Unquotable>,
) -> Result<Script, RolloutError> {
    let a = a.map_err(|e| host.transport.unquotable(e))?;
    let b = b.map_err(|e| host.transport.unquotable(e))?;
    Ok(a.then(&b))
}

fn journal(plan: &Plan, deploy_id: &str, previous: Option<String>, phase: Phase) -> String {
    serde_json::to_string(&Journal {
        deploy_id: deploy_id.to_owned(),
        environment: plan.environment.clone(),
        release: plan.release_id.clone(),
        previous,
        phase,
        hosts: plan.hosts.clone(),
        updated: now(),
    })
    .expect("journal serialises")
}

/// When a rollout started and, if it closed the hosts, when: the duration
/// and closed window its history line records.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub started: Instant,
    /// When the hosts were closed (gated rollouts only).
    pub closed_at: Option<Instant>,
    /// How long they stayed closed, once they are open again; until then
    /// the window is measured up to the moment history is written.
    pub closed_for: Option<Duration>,
}

impl Clock {
    /// A rollout that never closes hosts (rolling, canary, promote).
    pub fn open(started: Instant) -> Self {
        Self {
            started,
            closed_at: None,
            closed_for: None,
        }
    }

    fn closed_ms(&self) -> Option<u64> {
        self.closed_for
            .or_else(|| self.closed_at.map(|at| at.elapsed()))
            .map(millis)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One history line per host (each host records what *it* ran before).
fn history(
    r: &Rollout,
    previous: &PerHost<Option<String>>,
    outcome: Outcome,
    clock: Clock,
) -> PerHost<String> {
    let (duration_ms, closed_ms) = (millis(clock.started.elapsed()), clock.closed_ms());
    Arc::new(
        previous
            .iter()
            .map(|(host, prev)| {
                let line = serde_json::to_string(&HistoryEntry {
                    time: now(),
                    deploy_id: r.deploy_id.clone(),
                    environment: r.plan.environment.clone(),
                    action: r.action,
                    release: r.plan.release_id.clone(),
                    previous: prev.clone(),
                    commit: r.plan.commit.id.clone(),
                    sha256: r
                        .artifact
                        .as_ref()
                        .map(|a| a.sha256.clone())
                        .unwrap_or_default(),
                    who: r.plan.deployer.clone(),
                    outcome,
                    subject: Some(r.plan.commit.subject.clone()),
                    duration_ms: Some(duration_ms),
                    closed_ms,
                })
                .expect("history serialises");
                (host.clone(), line)
            })
            .collect(),
    )
}

/// Variables every configured command sees.
pub fn hook_env(plan: &Plan, deploy_id: &str) -> Vec<(String, String)> {
    vec![
        ("SLIPWAY_APP".into(), plan.app.clone()),
        ("SLIPWAY_ENVIRONMENT".into(), plan.environment.clone()),
        ("SLIPWAY_RELEASE".into(), plan.release_id.clone()),
        ("SLIPWAY_COMMIT".into(), plan.commit.id.clone()),
        ("SLIPWAY_DEPLOY_ID".into(), deploy_id.to_owned()),
    ]
}

/// The release's `.slipway.env`: config variables, secrets and slipway's
/// own, one `KEY='value'` per line, so both `sh` and dotenv readers load it.
/// It travels on stdin, never in a command line.
fn env_file(plan: &Plan, secrets: &Secrets, deploy_id: &str) -> String {
    let mut out = String::new();
    let vars = hook_env(plan, deploy_id)
        .into_iter()
        .chain(plan.env.iter().map(|(k, v)| (k.clone(), v.clone())))
        .chain(secrets.0.iter().cloned());
    for (key, value) in vars {
        let quoted = shlex::try_quote(&value).map_or_else(|_| "''".to_owned(), |q| q.into_owned());
        out.push_str(&format!("{key}={quoted}\n"));
    }
    out
}
