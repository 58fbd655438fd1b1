//! The steps a rollout program is made of, each run on a set of hosts:
//! inspect, stage, the phases (stop, close, switch, switch back, open,
//! start), the deploy hook, health checks, record, record back, forget,
//! the canary record.
//!
//! Owns how one step runs on a set of hosts: in parallel (bounded), with a
//! phase event per host, journaling the phase on each host in the same
//! script as the step itself (one round trip), and reporting each host's
//! result on its own. Invariants: per-host data is keyed by host name, so a
//! step runs on any subset of the cluster; and no step here decides *when*
//! it runs or what happens after it fails — that is the program's
//! (`program.rs`) and the executor's (`executor.rs`) job.

use std::collections::{BTreeMap, BTreeSet};
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

/// Each host a step ran on, in cluster order, with what went wrong there.
pub type HostResults = Vec<(String, Result<(), String>)>;

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

/// One rollout, ready to run: the settings, who runs it, what it ships.
pub struct Rollout {
    pub plan: Arc<Plan>,
    pub action: Action,
    /// What to upload and unpack; `None` when the release must already be
    /// on every host (rollback, promote, revert, recover).
    pub artifact: Option<Upload>,
    pub secrets: Secrets,
    pub deploy_id: String,
    pub sink: Arc<dyn Sink>,
    /// Raised by SIGINT/SIGTERM; the executor stops between steps.
    pub interrupt: super::Interrupt,
}

/// What a successful rollout did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub release: String,
    pub previous: Option<String>,
    /// How long hosts were closed; zero for programs that never close.
    pub closed_window: Duration,
    pub duration: Duration,
}

/// What every step needs besides its hosts.
#[derive(Clone)]
pub struct StepCtx {
    pub plan: Arc<Plan>,
    pub action: Action,
    pub deploy_id: String,
    pub sink: Arc<dyn Sink>,
    /// What each host ran before this rollout.
    pub previous: PerHost<Option<String>>,
    /// Hosts past the program's point of no return: their journal says so.
    pub committed: Arc<BTreeSet<String>>,
}

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

/// Reads every host of `cluster`, and refuses what must not be run over:
/// a journal (a rollout died half way; starting another on top would lose
/// track of what the hosts ran before it), a canary in progress (the hosts
/// would end up on three releases) when `refuse_canary`, and a host
/// without `release` when `require` is set (rollback, promote).
///
/// # Errors
/// [`RolloutError::Interrupted`], [`RolloutError::CanaryInProgress`] or
/// [`RolloutError::NoRollbackTarget`], naming the first such host; a
/// transport error when a host cannot be read.
pub async fn inspect(
    cluster: &Cluster,
    environment: &str,
    release: &str,
    (refuse_canary, require): (bool, bool),
) -> Result<Vec<HostState>, RolloutError> {
    let states = cluster.read_state().await?;
    for (host, state) in cluster.hosts.iter().zip(&states) {
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
    if refuse_canary {
        super::canary::refuse_canary(&states, environment)?;
    }
    if require {
        for (host, state) in cluster.hosts.iter().zip(&states) {
            if !state.releases.iter().any(|r| r == release) {
                return Err(RolloutError::NoRollbackTarget {
                    host: host.name().to_owned(),
                    reason: format!("release {release} is not there (pruned, or never deployed)"),
                });
            }
        }
    }
    Ok(states)
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
/// Nothing that serves traffic changes.
pub async fn stage(
    cluster: &Cluster,
    ctx: &StepCtx,
    artifact: &Upload,
    secrets: &Secrets,
) -> HostResults {
    let env_file = Arc::new(env_file(&ctx.plan, secrets, &ctx.deploy_id));
    let (c, artifact) = (ctx.clone(), artifact.clone());
    let results = each_timed(cluster, &ctx.sink, Phase::Stage, move |host| {
        let dpkg = dpkg(&c.plan, host);
        let remote = match dpkg {
            Some(_) => host.layout.incoming_deb(&artifact.sha256),
            None => host.layout.incoming(&artifact.sha256),
        };
        let name = host.name().to_owned();
        let total = artifact.size;
        let progress = |sent: u64| c.sink.progress(&name, sent, total);
        host.transport.upload(&artifact.path, &remote, &progress)?;
        let script = host.layout.stage(&Stage {
            release: &c.plan.release_id,
            sha256: &artifact.sha256,
            tar_size: artifact.tar_size,
            shared_dirs: &c.plan.shared.dirs,
            shared_files: &c.plan.shared.files,
            dpkg: dpkg.as_ref(),
        });
        let script = join(
            host,
            script,
            host.layout.write_journal(&journal(&c, host, Phase::Stage)),
        )?;
        let mut input = std::io::Cursor::new(env_file.as_bytes().to_vec());
        host.transport
            .run_with("staging", &script, Some(&mut input), None)?;
        Ok(())
    })
    .await;
    named(cluster, results)
}

/// Runs one phase's script on every host of `cluster`, journaling the phase
/// with it.
pub async fn phase<F>(cluster: &Cluster, ctx: &StepCtx, phase: Phase, script: F) -> HostResults
where
    F: Fn(&Host) -> Result<Script, Unquotable> + Send + Sync + 'static,
{
    let c = ctx.clone();
    let results = each_timed(cluster, &ctx.sink, phase, move |host| {
        let script = join(
            host,
            script(host),
            host.layout.write_journal(&journal(&c, host, phase)),
        )?;
        host.transport.run(phase.as_str(), &script)?;
        Ok(())
    })
    .await;
    named(cluster, results)
}

/// Stops (or starts) workers and cron in the live release of every host.
pub async fn background(cluster: &Cluster, ctx: &StepCtx, start: bool) -> HostResults {
    let plan = Arc::clone(&ctx.plan);
    let env = Arc::new(hook_env(&plan, &ctx.deploy_id));
    let which = if start { Phase::Start } else { Phase::Stop };
    let id = ctx.deploy_id.clone();
    phase(cluster, ctx, which, move |host| {
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
pub async fn switch(cluster: &Cluster, ctx: &StepCtx) -> HostResults {
    let (release, id, copy_back) = (
        ctx.plan.release_id.clone(),
        ctx.deploy_id.clone(),
        ctx.plan.copy_back.clone(),
    );
    phase(cluster, ctx, Phase::Switch, move |host| {
        let script = host.layout.copy_back(&release, &copy_back)?;
        Ok(script.then(&host.layout.switch(Some(&release), &id)?))
    })
    .await
}

/// Switches `current` on every host of `cluster` back to what it ran
/// before this rollout (no release at all, for a first deploy).
pub async fn switch_back(cluster: &Cluster, ctx: &StepCtx) -> HostResults {
    let (previous, id) = (Arc::clone(&ctx.previous), ctx.deploy_id.clone());
    phase(cluster, ctx, Phase::Rollback, move |host| {
        host.layout.switch(prev(&previous, host).as_deref(), &id)
    })
    .await
}

/// The deploy hook on exactly one host, in the new release, with its
/// output streamed as events.
pub async fn run_hook(cluster: &Cluster, ctx: &StepCtx, hook: &crate::plan::Hook) -> HostResults {
    let one = cluster.subset(std::slice::from_ref(&hook.host));
    if one.hosts.is_empty() {
        return vec![(
            hook.host.clone(),
            Err(format!("the hook host {} is not in the cluster", hook.host)),
        )];
    }
    let env = Arc::new(hook_env(&ctx.plan, &ctx.deploy_id));
    let (sink, command, timeout) = (Arc::clone(&ctx.sink), hook.command.clone(), hook.timeout);
    let release = ctx.plan.release_id.clone();
    let deploy_id = ctx.deploy_id.clone();
    let results = each_timed(&one, &ctx.sink, Phase::Hook, move |host| {
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
        super::remote::run_supervised(host, &cmd, &mut |line| {
            sink.emit(&Event::Output {
                host: name.clone(),
                line: line.to_owned(),
            });
        })?;
        Ok(())
    })
    .await;
    named(&one, results)
}

/// Every host of `cluster` healthy on the plan's release.
pub async fn health_check(cluster: &Cluster, ctx: &StepCtx, health: &Health) -> HostResults {
    let (health, env, release, id) = (
        health.clone(),
        Arc::new(hook_env(&ctx.plan, &ctx.deploy_id)),
        ctx.plan.release_id.clone(),
        ctx.deploy_id.clone(),
    );
    let results = each_timed(cluster, &ctx.sink, Phase::Health, move |host| {
        super::health::check(host, &health, &id, &host.layout.release(&release), &env)
    })
    .await;
    named(cluster, results)
}

/// Once the release is live on `cluster`: record history, prune, clear
/// the journal. `clock` says how long the rollout took and how long hosts
/// were closed, for the history line.
pub async fn record(
    cluster: &Cluster,
    ctx: &StepCtx,
    states: &PerHost<HostState>,
    artifact_sha256: &str,
    clock: Clock,
) -> HostResults {
    let entries = history(ctx, artifact_sha256, Outcome::Success, clock);
    let (c, states) = (ctx.clone(), Arc::clone(states));
    let results = each_timed(cluster, &ctx.sink, Phase::Record, move |host| {
        let state = states.get(host.name()).cloned().unwrap_or_default();
        let plan = &c.plan;
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
            prev(&c.previous, host).as_deref(),
            &state.pinned,
        );
        let extra = |s: Result<Script, Unquotable>| s.map_err(|e| host.transport.unquotable(e));
        let mut script = extra(host.layout.record(&entries[host.name()]))?;
        if !doomed.is_empty() {
            let prune = match dpkg(plan, host) {
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
    named(cluster, results)
}

/// After an undo: records on each host that this rollout went back, and
/// clears its journal.
pub async fn record_back(
    cluster: &Cluster,
    ctx: &StepCtx,
    artifact_sha256: &str,
    clock: Clock,
) -> HostResults {
    let entries = history(ctx, artifact_sha256, Outcome::RolledBack, clock);
    let results = each_timed(cluster, &ctx.sink, Phase::Record, move |host| {
        let script = host
            .layout
            .record(&entries[host.name()])
            .and_then(|s| Ok(s.then(&host.layout.clear_journal()?)))
            .map_err(|e| host.transport.unquotable(e))?;
        host.transport.run("recording the rollback", &script)?;
        Ok(())
    })
    .await;
    named(cluster, results)
}

/// Forgets a rollout on hosts where it never changed what they serve.
pub async fn forget(cluster: &Cluster, ctx: &StepCtx) -> HostResults {
    simple(cluster, ctx, "clearing the journal", |host| {
        host.layout.clear_journal()
    })
    .await
}

/// Records the canary on every host of `cluster`, clearing the journal.
pub async fn write_canary(
    cluster: &Cluster,
    ctx: &StepCtx,
    record: &super::state::CanaryState,
) -> HostResults {
    let json = serde_json::to_string(record).expect("canary record serialises");
    let results = simple(cluster, ctx, "recording the canary", move |host| {
        Ok(host
            .layout
            .write_canary(&json)?
            .then(&host.layout.clear_journal()?))
    })
    .await;
    let env = &ctx.plan.environment;
    ctx.sink.emit(&Event::Note {
        message: format!(
            "canary: {} of {} hosts on {}; `slipway promote {env}` completes it, `slipway rollback {env}` reverts it",
            record.switched.len(),
            ctx.plan.hosts.len(),
            record.release,
        ),
    });
    results
}

/// Stops whatever a dead rollout left running on each host (a hook past
/// its runner), saying what was stopped; a host where something could not
/// be stopped fails the step, so nothing is switched under a live hook.
pub async fn stop_orphans(cluster: &Cluster, ctx: &StepCtx) -> HostResults {
    let sink = Arc::clone(&ctx.sink);
    let results = each_timed(cluster, &ctx.sink, Phase::Stop, move |host| {
        let stopped = super::remote::stop_orphans(host)?;
        for s in &stopped {
            sink.emit(&Event::Note {
                message: format!("{}: {s}", host.name()),
            });
        }
        if let Some(alive) = stopped
            .iter()
            .find(|s| s.how == super::remote::Ended::StillRunning)
        {
            return Err(RolloutError::Transport(
                crate::transport::TransportError::Failed {
                    host: host.name().to_owned(),
                    what: format!("stopping what a dead rollout left running ({alive})"),
                    code: None,
                    tail: String::new(),
                },
            ));
        }
        Ok(())
    })
    .await;
    named(cluster, results)
}

/// Removes the canary record.
pub async fn clear_canary(cluster: &Cluster, ctx: &StepCtx) -> HostResults {
    simple(cluster, ctx, "clearing the canary record", |host| {
        host.layout.clear_canary()
    })
    .await
}

async fn simple<F>(cluster: &Cluster, ctx: &StepCtx, what: &'static str, script: F) -> HostResults
where
    F: Fn(&Host) -> Result<Script, Unquotable> + Send + Sync + 'static,
{
    let results = each_timed(cluster, &ctx.sink, Phase::Record, move |host| {
        let script = script(host).map_err(|e| host.transport.unquotable(e))?;
        host.transport.run(what, &script)?;
        Ok(())
    })
    .await;
    named(cluster, results)
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

fn named(cluster: &Cluster, results: Vec<Result<(), RolloutError>>) -> HostResults {
    cluster
        .names()
        .into_iter()
        .zip(results)
        .map(|(name, r)| (name, r.map_err(|e| e.to_string())))
        .collect()
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

fn journal(ctx: &StepCtx, host: &Host, phase: Phase) -> String {
    serde_json::to_string(&Journal {
        deploy_id: ctx.deploy_id.clone(),
        environment: ctx.plan.environment.clone(),
        release: ctx.plan.release_id.clone(),
        previous: prev(&ctx.previous, host),
        phase,
        hosts: ctx.plan.hosts.clone(),
        updated: now(),
        committed: ctx.committed.contains(host.name()),
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
fn history(ctx: &StepCtx, sha256: &str, outcome: Outcome, clock: Clock) -> PerHost<String> {
    let (duration_ms, closed_ms) = (millis(clock.started.elapsed()), clock.closed_ms());
    Arc::new(
        ctx.previous
            .iter()
            .map(|(host, prev)| {
                let line = serde_json::to_string(&HistoryEntry {
                    time: now(),
                    deploy_id: ctx.deploy_id.clone(),
                    environment: ctx.plan.environment.clone(),
                    action: ctx.action,
                    release: ctx.plan.release_id.clone(),
                    // A forced redeploy of the live release did not replace
                    // anything: recording it as its own previous would make
                    // `rollback` "roll back" to the same release.
                    previous: prev.clone().filter(|p| *p != ctx.plan.release_id),
                    commit: ctx.plan.commit.id.clone(),
                    sha256: sha256.to_owned(),
                    who: ctx.plan.deployer.clone(),
                    outcome,
                    subject: Some(ctx.plan.commit.subject.clone()),
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
