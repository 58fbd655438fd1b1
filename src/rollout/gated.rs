//! The gated rollout: consistency over availability.
//!
//! Old and new code never serve side by side. The machine, top to bottom:
//!
//! 1. **lock** the environment on every host (all or none);
//! 2. **stage** on every host while the cluster still serves the old
//!    release: upload, verify sha256, unpack beside it, link shared paths,
//!    write the env file. A failure here leaves every host untouched;
//! 3. **stop** workers and cron;
//! 4. **close**: the maintenance flag appears on every host;
//! 5. **switch** `current` on every host, by rename;
//! 6. run the **deploy hook** on exactly one host, with a timeout;
//! 7. **health**-check every host, then **open**, start workers and cron,
//!    record history, prune, unlock.
//!
//! Invariants: a failure in 3–7 puts every reachable host back on the release
//! it ran before and opens it; a host that cannot be reached stays closed, is
//! reported, and keeps its journal for `slipway recover`. Everything slow
//! happens in step 2, so the closed window (4 → 7) is only flag flips,
//! renames, the hook and the health checks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state::{Action, HistoryEntry, HostState, Journal, Outcome, now, to_prune};
use super::{Cluster, Host, RolloutError, lock};
use crate::config::{Health, Strategy};
use crate::notify::{Event, Phase, Sink};
use crate::plan::Plan;
use crate::transport::Script;

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
}

/// One gated rollout, ready to run.
///
/// A rollback is the same machine without staging or the deploy hook: the
/// release it switches to is already on every host.
pub struct Rollout {
    pub plan: Arc<Plan>,
    pub action: Action,
    /// What to upload and unpack; `None` when the release must already be
    /// on every host (rollback).
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
    pub closed_window: Duration,
    pub duration: Duration,
    /// Things that went wrong after the cluster opened on the new release
    /// (a worker that would not start): reported, but the release is live.
    pub warnings: Vec<String>,
}

/// Runs the gated rollout of `r.plan` on `cluster`.
///
/// # Errors
/// See [`RolloutError`]; every variant says where the hosts were left.
pub async fn deploy(cluster: &Cluster, r: &Rollout) -> Result<Report, RolloutError> {
    if r.plan.strategy != Strategy::Gated {
        return Err(RolloutError::UnsupportedStrategy(
            format!("{:?}", r.plan.strategy).to_lowercase(),
        ));
    }
    let started = Instant::now();
    r.sink.emit(&Event::Started {
        deploy_id: r.deploy_id.clone(),
        app: r.plan.app.clone(),
        environment: r.plan.environment.clone(),
        release: r.plan.release_id.clone(),
        commit: r.plan.commit.id.clone(),
        deployer: r.plan.deployer.clone(),
        hosts: r.plan.hosts.clone(),
    });
    let me = lock::owner(&r.deploy_id, &r.plan.deployer);
    timed_all(cluster, r, Phase::Lock, async {
        lock::acquire(
            cluster,
            &r.plan.environment,
            &me,
            r.plan.lock_wait,
            r.sink.as_ref(),
        )
        .await
    })
    .await?;
    let result = locked(cluster, r, started).await;
    for e in lock::unlock(cluster, &r.deploy_id).await {
        r.sink.emit(&Event::Note {
            message: format!("could not release the lock: {e}"),
        });
    }
    match &result {
        Ok(report) => r.sink.emit(&Event::Succeeded {
            deploy_id: r.deploy_id.clone(),
            release: report.release.clone(),
            previous: report.previous.clone(),
            closed_window: report.closed_window,
            duration: report.duration,
        }),
        Err(e) => r.sink.emit(&Event::Failed {
            deploy_id: r.deploy_id.clone(),
            release: r.plan.release_id.clone(),
            error: e.to_string(),
            rolled_back_to: match e {
                RolloutError::RolledBack { restored_to, .. } => restored_to.clone(),
                _ => None,
            },
        }),
    }
    result
}

/// Steps 2–7, with the lock held.
async fn locked(cluster: &Cluster, r: &Rollout, started: Instant) -> Result<Report, RolloutError> {
    let states = cluster.read_state().await?;
    refuse_interrupted(cluster, &states, &r.plan.environment)?;
    let previous: Arc<Vec<Option<String>>> =
        Arc::new(states.iter().map(|s| s.current.clone()).collect());

    match &r.artifact {
        Some(artifact) => stage(cluster, r, artifact, &previous).await?,
        None => require_release(cluster, &states, &r.plan.release_id)?,
    }

    let closed_at = Instant::now();
    if let Err((phase, cause)) = switch_over(cluster, r, &previous).await {
        return Err(roll_back(cluster, r, &previous, phase, cause).await);
    }
    let warnings = open(cluster, r, &previous, &states).await;
    let closed_window = closed_at.elapsed();

    Ok(Report {
        release: r.plan.release_id.clone(),
        previous: previous.first().cloned().flatten(),
        closed_window,
        duration: started.elapsed(),
        warnings,
    })
}

/// A journal left behind means a rollout died half way; starting another
/// on top would lose track of what the hosts ran before it.
fn refuse_interrupted(
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

/// Step 2: everything slow, while the old release keeps serving.
async fn stage(
    cluster: &Cluster,
    r: &Rollout,
    artifact: &Upload,
    previous: &Arc<Vec<Option<String>>>,
) -> Result<(), RolloutError> {
    let env_file = Arc::new(env_file(&r.plan, &r.secrets, &r.deploy_id));
    let plan = Arc::clone(&r.plan);
    let artifact = artifact.clone();
    let sink = Arc::clone(&r.sink);
    let deploy_id = r.deploy_id.clone();
    let previous = Arc::clone(previous);
    let results = each_timed(cluster, &r.sink, Phase::Stage, move |i, host| {
        let remote = host.layout.incoming(&artifact.sha256);
        let name = host.name().to_owned();
        let total = artifact.size;
        let progress = |sent: u64| sink.progress(&name, sent, total);
        host.transport.upload(&artifact.path, &remote, &progress)?;
        let script = host.layout.stage(&super::layout::Stage {
            release: &plan.release_id,
            sha256: &artifact.sha256,
            shared_dirs: &plan.shared.dirs,
            shared_files: &plan.shared.files,
        });
        let journal = journal(&plan, &deploy_id, previous[i].clone(), Phase::Stage);
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

/// Instead of staging (rollback): the release must be on every host.
fn require_release(
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

/// Steps 3–7 up to the health checks. Returns the failing phase and cause.
async fn switch_over(
    cluster: &Cluster,
    r: &Rollout,
    previous: &Arc<Vec<Option<String>>>,
) -> Result<(), (Phase, String)> {
    let plan = Arc::clone(&r.plan);
    let id = r.deploy_id.clone();
    let env = Arc::new(hook_env(&r.plan, &r.deploy_id));

    if plan.workers.is_some() || plan.cron.is_some() {
        let (plan, env) = (Arc::clone(&plan), Arc::clone(&env));
        phase_all(cluster, r, previous, Phase::Stop, move |_, host| {
            let mut script = Script::new();
            for cmd in [&plan.workers, &plan.cron].into_iter().flatten() {
                script = script.then(
                    &host
                        .layout
                        .in_current(&env, &cmd.stop)
                        .map_err(|e| host.unquotable(e))?,
                );
            }
            Ok(script)
        })
        .await?;
    }

    phase_all(cluster, r, previous, Phase::Close, |_, host| {
        host.layout.close().map_err(|e| host.unquotable(e))
    })
    .await?;

    let release = plan.release_id.clone();
    phase_all(cluster, r, previous, Phase::Switch, move |_, host| {
        host.layout
            .switch(Some(&release), &id)
            .map_err(|e| host.unquotable(e))
    })
    .await?;

    if let (Some(hook), Action::Deploy) = (&plan.hook, r.action) {
        run_hook(cluster, r, hook, &env).await?;
    }

    if let Some(health) = &plan.health {
        health_check(cluster, r, health, &env).await?;
    }
    Ok(())
}

/// Step 6: the deploy hook on exactly one host.
async fn run_hook(
    cluster: &Cluster,
    r: &Rollout,
    hook: &crate::plan::Hook,
    env: &Arc<Vec<(String, String)>>,
) -> Result<(), (Phase, String)> {
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
    let (env, sink, command, timeout) = (
        Arc::clone(env),
        Arc::clone(&r.sink),
        hook.command.clone(),
        hook.timeout,
    );
    let release = r.plan.release_id.clone();
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        let dir = host.layout.release(&release);
        let script = host
            .layout
            .user_command(&dir, &env, &command)
            .map_err(|e| host.unquotable(e))?;
        let name = host.name().to_owned();
        let exit = host
            .transport
            .exec(&script, None, Some(timeout), &mut |line| {
                sink.emit(&Event::Output {
                    host: name.clone(),
                    line: line.to_owned(),
                });
            });
        let exit = exit.map_err(|e| match e {
            crate::transport::TransportError::Timeout { host, after, .. } => {
                crate::transport::TransportError::Timeout {
                    host,
                    what: format!("the deploy hook `{command}`"),
                    after,
                }
            }
            other => other,
        })?;
        if exit.success() {
            Ok(())
        } else {
            Err(RolloutError::from(
                crate::transport::TransportError::Failed {
                    host: name,
                    what: format!("the deploy hook `{command}`"),
                    code: exit.code,
                    tail: exit.tail,
                },
            ))
        }
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

/// Step 7a: every host healthy on the new release, checked while closed.
async fn health_check(
    cluster: &Cluster,
    r: &Rollout,
    health: &Health,
    env: &Arc<Vec<(String, String)>>,
) -> Result<(), (Phase, String)> {
    let (health, env, release) = (health.clone(), Arc::clone(env), r.plan.release_id.clone());
    let results = each_timed(cluster, &r.sink, Phase::Health, move |_, host| {
        super::health::check(host, &health, &host.layout.release(&release), &env)
    })
    .await;
    first_failure(cluster, Phase::Health, &results)
}

/// Step 7b: open, start background work, record, prune.
async fn open(
    cluster: &Cluster,
    r: &Rollout,
    previous: &Arc<Vec<Option<String>>>,
    states: &[HostState],
) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Err((_, e)) = phase_all(cluster, r, previous, Phase::Open, |_, host| {
        host.layout.open().map_err(|e| host.unquotable(e))
    })
    .await
    {
        warnings.push(format!("opening: {e}"));
    }
    let plan = Arc::clone(&r.plan);
    if plan.workers.is_some() || plan.cron.is_some() {
        let env = Arc::new(hook_env(&plan, &r.deploy_id));
        let plan = Arc::clone(&plan);
        let results = each_timed(cluster, &r.sink, Phase::Start, move |_, host| {
            for cmd in [&plan.workers, &plan.cron].into_iter().flatten() {
                host.run(
                    "starting background work",
                    host.layout.in_current(&env, &cmd.start),
                )?;
            }
            Ok(())
        })
        .await;
        warnings.extend(
            results
                .into_iter()
                .filter_map(Result::err)
                .map(|e| e.to_string()),
        );
    }
    let entries = history(r, previous, r.action, Outcome::Success);
    let plan = Arc::clone(&r.plan);
    let states = Arc::new(states.to_vec());
    let previous = Arc::clone(previous);
    let results = each_timed(cluster, &r.sink, Phase::Record, move |i, host| {
        let mut releases = vec![plan.release_id.clone()];
        releases.extend(
            states[i]
                .releases
                .iter()
                .filter(|id| **id != plan.release_id)
                .cloned(),
        );
        let doomed = to_prune(
            &releases,
            plan.keep_releases,
            Some(&plan.release_id),
            previous[i].as_deref(),
            &states[i].pinned,
        );
        let mut script = host
            .layout
            .record(&entries[i])
            .map_err(|e| host.unquotable(e))?;
        if !doomed.is_empty() {
            script = script.then(&host.layout.prune(&doomed).map_err(|e| host.unquotable(e))?);
        }
        script = script.then(
            &host
                .layout
                .clear_journal()
                .map_err(|e| host.unquotable(e))?,
        );
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

/// Puts every reachable host back on its previous release and opens it.
/// Returns the error that describes where everything ended up.
async fn roll_back(
    cluster: &Cluster,
    r: &Rollout,
    previous: &Arc<Vec<Option<String>>>,
    phase: Phase,
    cause: String,
) -> RolloutError {
    let entries = history(r, previous, r.action, Outcome::RolledBack);
    let (prev, id) = (Arc::clone(previous), r.deploy_id.clone());
    let results = each_timed(cluster, &r.sink, Phase::Rollback, move |i, host| {
        let script = host
            .layout
            .switch(prev[i].as_deref(), &id)
            .and_then(|s| Ok(s.then(&host.layout.open()?)))
            .and_then(|s| Ok(s.then(&host.layout.record(&entries[i])?)))
            .and_then(|s| Ok(s.then(&host.layout.clear_journal()?)))
            .map_err(|e| host.unquotable(e))?;
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
    if r.plan.workers.is_some() || r.plan.cron.is_some() {
        let (plan, env) = (
            Arc::clone(&r.plan),
            Arc::new(hook_env(&r.plan, &r.deploy_id)),
        );
        let _ = each_timed(cluster, &r.sink, Phase::Start, move |_, host| {
            for cmd in [&plan.workers, &plan.cron].into_iter().flatten() {
                host.run(
                    "starting background work",
                    host.layout.in_current(&env, &cmd.start),
                )?;
            }
            Ok(())
        })
        .await;
    }
    RolloutError::RolledBack {
        release: r.plan.release_id.clone(),
        phase,
        cause,
        restored_to: previous.first().cloned().flatten(),
        unreachable,
    }
}

/// Runs one phase's script on every host, journaling the phase with it.
async fn phase_all<F>(
    cluster: &Cluster,
    r: &Rollout,
    previous: &Arc<Vec<Option<String>>>,
    phase: Phase,
    script: F,
) -> Result<(), (Phase, String)>
where
    F: Fn(usize, &Host) -> Result<Script, RolloutError> + Send + Sync + 'static,
{
    let (plan, id, prev) = (
        Arc::clone(&r.plan),
        r.deploy_id.clone(),
        Arc::clone(previous),
    );
    let results = each_timed(cluster, &r.sink, phase, move |i, host| {
        let journal = journal(&plan, &id, prev[i].clone(), phase);
        let script = join(
            host,
            Ok(script(i, host)?),
            host.layout.write_journal(&journal),
        )?;
        host.transport.run(phase.as_str(), &script)?;
        Ok(())
    })
    .await;
    first_failure(cluster, phase, &results)
}

fn first_failure<T>(
    cluster: &Cluster,
    phase: Phase,
    results: &[Result<T, RolloutError>],
) -> Result<(), (Phase, String)> {
    let errors: Vec<String> = results
        .iter()
        .zip(&cluster.hosts)
        .filter_map(|(res, _)| res.as_ref().err().map(ToString::to_string))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err((phase, errors.join("\n")))
    }
}

/// Runs `f` on every host and emits a phase event per host.
async fn each_timed<T, F>(
    cluster: &Cluster,
    sink: &Arc<dyn Sink>,
    phase: Phase,
    f: F,
) -> Vec<Result<T, RolloutError>>
where
    T: Send + 'static,
    F: Fn(usize, &Host) -> Result<T, RolloutError> + Send + Sync + 'static,
{
    let index: Arc<Vec<String>> =
        Arc::new(cluster.hosts.iter().map(|h| h.name().to_owned()).collect());
    let sink = Arc::clone(sink);
    cluster
        .each(move |host| {
            let i = index.iter().position(|n| n == host.name()).unwrap_or(0);
            let started = Instant::now();
            let result = f(i, host);
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

/// Times a cluster-wide step that is not per host (the lock).
async fn timed_all<T>(
    cluster: &Cluster,
    r: &Rollout,
    phase: Phase,
    fut: impl std::future::Future<Output = Result<T, RolloutError>>,
) -> Result<T, RolloutError> {
    let started = Instant::now();
    let result = fut.await;
    for host in &cluster.hosts {
        match &result {
            Ok(_) => r.sink.emit(&Event::HostPhase {
                host: host.name().to_owned(),
                phase,
                took: started.elapsed(),
            }),
            Err(e) => r.sink.emit(&Event::HostFailed {
                host: host.name().to_owned(),
                phase,
                error: e.to_string(),
            }),
        }
    }
    result
}

fn join(
    host: &Host,
    a: Result<Script, crate::transport::Unquotable>,
    b: Result<Script, crate::transport::Unquotable>,
) -> Result<Script, RolloutError> {
    let (a, b) = (
        a.map_err(|e| host.unquotable(e))?,
        b.map_err(|e| host.unquotable(e))?,
    );
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

fn history(
    r: &Rollout,
    previous: &[Option<String>],
    action: Action,
    outcome: Outcome,
) -> Arc<Vec<String>> {
    Arc::new(
        previous
            .iter()
            .map(|prev| {
                serde_json::to_string(&HistoryEntry {
                    time: now(),
                    deploy_id: r.deploy_id.clone(),
                    environment: r.plan.environment.clone(),
                    action,
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
                })
                .expect("history serialises")
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
