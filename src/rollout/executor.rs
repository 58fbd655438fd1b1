//! The one executor: walks a [`Program`] over a cluster.
//!
//! Owns everything around the steps: the lock (held, with its lease, from
//! the first step to the last), the start/outcome events, journaling (each
//! step writes its phase with it), the point of no return (`Commit`), undo,
//! signals, and the report of where every host ended up. Invariants:
//! - before a host's `Commit`, any failure (or SIGINT/SIGTERM between two
//!   steps) undoes, in reverse order, every step that reached an
//!   uncommitted host, then records the rollback: every reachable host ends
//!   on the release it ran before, open;
//! - after it, nothing is undone: a host that fails is dropped from the
//!   remaining steps, keeps its journal (so `recover` finishes the
//!   rollout there: the journal says committed, or another host recorded
//!   the release) and the result is exit 4 naming each host's state;
//! - an undo leaves no journal on a reachable host (with a stage, the
//!   stage's undo records the rollback; without one, the executor does),
//!   except in `recover`, whose journals stay until it completes;
//! - `Ok` means every host of the program ran every step.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::program::{Op, Program};
use super::state::{Action, CanaryState, HostState, now};
use super::steps::{self, Clock, HostResults, PerHost, Report, Rollout, StepCtx};
use super::{Cluster, RolloutError, lock};
use crate::config::Health;
use crate::notify::{Event, Phase};

/// Runs `program` on `cluster`: events, lock, steps, undo.
///
/// # Errors
/// See [`RolloutError`]; every variant says where the hosts were left.
pub async fn run(
    cluster: &Cluster,
    r: &Rollout,
    program: &Program,
) -> Result<Report, RolloutError> {
    let started = Instant::now();
    r.sink.emit(&Event::Started {
        deploy_id: r.deploy_id.clone(),
        action: r.action,
        app: r.plan.app.clone(),
        environment: r.plan.environment.clone(),
        release: program.release.clone(),
        commit: r.plan.commit.id.clone(),
        deployer: r.plan.deployer.clone(),
        hosts: program.hosts(),
    });
    let _active = r.interrupt.begin();
    let walk = Walk::new(cluster, r, program, started);
    // Recovery acts on a rollout whose runner died: it refuses a lease
    // still being renewed and waits out one that stopped (see `lock`).
    let result = if r.action == super::state::Action::Recover {
        lock::held_for_recovery(cluster, r, |_| walk.run())
            .await
            .map(|(_, report)| report)
    } else {
        lock::held(cluster, r, walk.run()).await
    };
    match &result {
        Ok(report) => r.sink.emit(&Event::Succeeded {
            deploy_id: r.deploy_id.clone(),
            action: r.action,
            release: report.release.clone(),
            previous: report.previous.clone(),
            closed_window: report.closed_window,
            duration: report.duration,
        }),
        Err(e) => r.sink.emit(&Event::Failed {
            deploy_id: r.deploy_id.clone(),
            action: r.action,
            release: program.release.clone(),
            error: e.to_string(),
            rolled_back_to: match e {
                RolloutError::RolledBack { restored_to, .. } => restored_to.clone(),
                _ => None,
            },
        }),
    }
    result
}

/// What the executor knows of one host as it goes.
#[derive(Debug, Clone, Default)]
struct Track {
    closed: bool,
    /// The release `current` points to, when slipway knows it.
    on: Option<String>,
    stopped: bool,
}

struct Walk<'a> {
    cluster: &'a Cluster,
    r: &'a Rollout,
    program: &'a Program,
    ctx: StepCtx,
    states: PerHost<HostState>,
    clock: Clock,
    /// Each step run so far and the hosts it reached (or tried to).
    done: Vec<(Op, Vec<String>)>,
    committed: BTreeSet<String>,
    /// Committed hosts that failed a later step, and why.
    lost: BTreeMap<String, String>,
    track: BTreeMap<String, Track>,
    /// Whether anything that changes what hosts serve has run.
    touched: bool,
}

impl<'a> Walk<'a> {
    fn new(cluster: &'a Cluster, r: &'a Rollout, program: &'a Program, started: Instant) -> Self {
        let previous: BTreeMap<String, Option<String>> =
            program.previous.clone().unwrap_or_default();
        let track = program
            .hosts()
            .into_iter()
            .map(|h| {
                let on = previous.get(&h).cloned().flatten();
                (
                    h,
                    Track {
                        on,
                        ..Track::default()
                    },
                )
            })
            .collect();
        Self {
            cluster,
            r,
            program,
            ctx: StepCtx {
                plan: Arc::clone(&r.plan),
                action: r.action,
                deploy_id: r.deploy_id.clone(),
                sink: Arc::clone(&r.sink),
                previous: Arc::new(previous),
                committed: Arc::new(BTreeSet::new()),
            },
            states: Arc::new(BTreeMap::new()),
            clock: Clock::open(started),
            done: Vec::new(),
            committed: BTreeSet::new(),
            lost: BTreeMap::new(),
            track,
            touched: false,
        }
    }

    async fn run(mut self) -> Result<Report, RolloutError> {
        for (i, step) in self.program.steps.iter().enumerate() {
            if matches!(step.op, Op::Lock { .. } | Op::Unlock) {
                continue;
            }
            let hosts: Vec<String> = step
                .hosts
                .iter()
                .filter(|h| !self.lost.contains_key(*h))
                .cloned()
                .collect();
            // Only the hosts still ahead count: past their commit (a recover
            // that finishes commits first) a signal waits for the end.
            if let Some(signal) = self.r.interrupt.requested()
                && self.program.steps[i..]
                    .iter()
                    .filter(|s| !matches!(s.op, Op::Lock { .. } | Op::Unlock))
                    .flat_map(|s| &s.hosts)
                    .any(|h| !self.committed.contains(h) && !self.lost.contains_key(h))
            {
                let cause = format!(
                    "interrupted by {signal}; stopped before `{}` on {}",
                    step.op.phase(),
                    hosts.join(", ")
                );
                return Err(self.undo(step.op.phase(), cause, Vec::new()).await);
            }
            self.r
                .interrupt
                .doing(format!("{} on {}", step.op.phase(), hosts.join(", ")));
            let sub = self.cluster.subset(&hosts);
            let results = match &step.op {
                Op::Inspect {
                    refuse_canary,
                    require,
                } => {
                    self.inspect(&sub, *refuse_canary, *require).await?;
                    continue;
                }
                Op::Commit => {
                    self.committed.extend(hosts);
                    // Journals say "committed" only when going forward
                    // means the new release: a revert or an undoing recover
                    // that stops past its commit must still be taken back,
                    // not forward, by the next recover.
                    if self.program.steps.iter().any(|s| s.op == Op::Switch) {
                        self.ctx.committed = Arc::new(self.committed.clone());
                    }
                    continue;
                }
                op => {
                    let began = Instant::now();
                    let results = self.op(op, &sub).await;
                    self.step_done(op, &results, began, false);
                    results
                }
            };
            self.done.push((step.op.clone(), hosts.clone()));
            if step.op.touches_service() {
                self.touched = true;
            }
            self.note(&step.op, &results);
            let failed: Vec<(String, String)> = results
                .into_iter()
                .filter_map(|(h, r)| r.err().map(|e| (h, e)))
                .collect();
            let mut early = Vec::new();
            for (host, error) in failed {
                // A host where what a dead rollout left running cannot be
                // stopped is not touched by this recover at all: it is left
                // out (exit 4, recover again), never undone around.
                if self.committed.contains(&host) || step.op == Op::StopOrphans {
                    self.lost
                        .insert(host, format!("failed at {}: {error}", step.op.phase()));
                } else {
                    early.push((host, error));
                }
            }
            if !early.is_empty() {
                let cause = early
                    .iter()
                    .map(|(_, e)| e.as_str())
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(self.undo(step.op.phase(), cause, early).await);
            }
        }
        let closed_window = self.clock.closed_for.unwrap_or_default();
        if !self.lost.is_empty() {
            return Err(RolloutError::Incomplete {
                environment: self.r.plan.environment.clone(),
                release: self.program.release.clone(),
                hosts: self.describe(),
                lost: self.lost.keys().cloned().collect(),
            });
        }
        Ok(Report {
            release: self.program.release.clone(),
            previous: self.ctx.previous.values().next().cloned().flatten(),
            closed_window,
            duration: self.clock.started.elapsed(),
        })
    }

    /// Reads the hosts, refuses what must not be run over, and keeps what
    /// each ran before (unless the program already knows it).
    async fn inspect(
        &mut self,
        hosts: &Cluster,
        refuse_canary: bool,
        require: bool,
    ) -> Result<(), RolloutError> {
        let states = steps::inspect(
            hosts,
            &self.r.plan.environment,
            &self.program.release,
            (refuse_canary, require),
        )
        .await?;
        if self.program.previous.is_none() {
            let current: Vec<Option<String>> = states.iter().map(|s| s.current.clone()).collect();
            self.ctx.previous = steps::by_host(hosts, &current);
            for (host, on) in self.ctx.previous.iter() {
                self.track
                    .entry(host.clone())
                    .or_default()
                    .on
                    .clone_from(on);
            }
        }
        self.states = steps::by_host(hosts, &states);
        Ok(())
    }

    /// Runs one operation on `hosts`.
    async fn op(&mut self, op: &Op, hosts: &Cluster) -> HostResults {
        let ctx = &self.ctx;
        let sha256 = self
            .r
            .artifact
            .as_ref()
            .map(|a| a.sha256.clone())
            .unwrap_or_default();
        match op {
            Op::Stage => match &self.r.artifact {
                Some(artifact) => steps::stage(hosts, ctx, artifact, &self.r.secrets).await,
                None => all(hosts, Err("there is no artifact to stage".to_owned())),
            },
            Op::StopOrphans => steps::stop_orphans(hosts, ctx).await,
            Op::Stop => steps::background(hosts, ctx, false).await,
            Op::Start => steps::background(hosts, ctx, true).await,
            Op::Close => {
                let results = steps::phase(hosts, ctx, Phase::Close, |h| h.layout.close()).await;
                self.clock.closed_at.get_or_insert_with(Instant::now);
                results
            }
            Op::Open => {
                let results = steps::phase(hosts, ctx, Phase::Open, |h| h.layout.open()).await;
                if self.committed.is_empty() {
                    // An undo: the window is not the rollout's.
                } else if let Some(at) = self.clock.closed_at {
                    self.clock.closed_for.get_or_insert(at.elapsed());
                }
                results
            }
            Op::Switch => steps::switch(hosts, ctx).await,
            Op::SwitchBack => steps::switch_back(hosts, ctx).await,
            Op::Hook { command, timeout } => {
                let hook = crate::plan::Hook {
                    command: command.clone(),
                    host: hosts.names().first().cloned().unwrap_or_default(),
                    timeout: *timeout,
                };
                steps::run_hook(hosts, ctx, &hook).await
            }
            Op::Health => match &self.r.plan.health {
                Some(health) => steps::health_check(hosts, ctx, health).await,
                None => all(hosts, Ok(())),
            },
            Op::CanaryCheck { command } => {
                let health = Health {
                    url: None,
                    command: Some(command.clone()),
                    status: 200,
                    timeout: Duration::from_secs(60),
                    retries: 0,
                };
                steps::health_check(hosts, ctx, &health).await
            }
            Op::Record => steps::record(hosts, ctx, &self.states, &sha256, self.clock).await,
            Op::RecordBack => steps::record_back(hosts, ctx, &sha256, self.clock).await,
            Op::Forget => steps::forget(hosts, ctx).await,
            Op::WriteCanary { switched } => {
                let record = CanaryState {
                    deploy_id: ctx.deploy_id.clone(),
                    release: self.program.release.clone(),
                    commit: ctx.plan.commit.id.clone(),
                    previous: ctx.previous.as_ref().clone(),
                    switched: switched.clone(),
                    since: now(),
                };
                steps::write_canary(hosts, ctx, &record).await
            }
            Op::ClearCanary => steps::clear_canary(hosts, ctx).await,
            Op::Lock { .. } | Op::Unlock | Op::Inspect { .. } | Op::Commit => all(hosts, Ok(())),
        }
    }

    fn step_done(&self, op: &Op, results: &HostResults, began: Instant, undo: bool) {
        self.r.sink.emit(&Event::StepDone {
            phase: op.phase(),
            hosts: results.len(),
            failed: results.iter().filter(|(_, r)| r.is_err()).count(),
            took: began.elapsed(),
            undo,
        });
    }

    /// Keeps track of what each host now serves.
    fn note(&mut self, op: &Op, results: &HostResults) {
        for (host, result) in results {
            if result.is_err() {
                continue;
            }
            let previous = self.ctx.previous.get(host).cloned().flatten();
            let t = self.track.entry(host.clone()).or_default();
            match op {
                Op::Close => t.closed = true,
                Op::Open => t.closed = false,
                Op::Switch => t.on = Some(self.program.release.clone()),
                Op::SwitchBack => t.on = previous,
                Op::Stop => t.stopped = true,
                Op::Start => t.stopped = false,
                _ => {}
            }
        }
    }

    /// Undoes, newest first, every step that reached an uncommitted host,
    /// then says where everything ended up. `failed`: the hosts of the
    /// failing step and why, when it was a step (not a signal).
    async fn undo(
        &mut self,
        phase: Phase,
        cause: String,
        failed: Vec<(String, String)>,
    ) -> RolloutError {
        let touched = self.touched;
        let mut unreachable: BTreeSet<String> = BTreeSet::new();
        let done = std::mem::take(&mut self.done);
        for (op, hosts) in done.iter().rev() {
            let Some(undo) = op.undo() else { continue };
            // A rollout that never changed what hosts serve is forgotten,
            // not recorded as rolled back.
            let undo = match undo {
                Op::RecordBack if !touched => Op::Forget,
                other => other,
            };
            let hosts: Vec<String> = hosts
                .iter()
                .filter(|h| !self.committed.contains(*h) && !unreachable.contains(*h))
                .cloned()
                .collect();
            if hosts.is_empty() {
                continue;
            }
            self.r
                .interrupt
                .doing(format!("undo: {} on {}", undo.phase(), hosts.join(", ")));
            let began = Instant::now();
            let results = self.op(&undo, &self.cluster.subset(&hosts)).await;
            self.step_done(&undo, &results, began, true);
            self.note(&undo, &results);
            for (host, result) in results {
                if result.is_err() {
                    unreachable.insert(host);
                }
            }
        }
        // Without a stage (rollback, promote, revert) no undo step clears
        // the journals the steps wrote: a clean rollback must not leave one
        // behind, or the next rollout is refused as interrupted. A recover
        // keeps them: its hosts may not be back yet, and it can run again.
        let staged = done.iter().any(|(op, _)| *op == Op::Stage);
        if !staged && self.program.action != Action::Recover {
            let mut hosts: Vec<String> = Vec::new();
            for (_, step_hosts) in &done {
                for h in step_hosts {
                    if !self.committed.contains(h) && !unreachable.contains(h) && !hosts.contains(h)
                    {
                        hosts.push(h.clone());
                    }
                }
            }
            if !hosts.is_empty() {
                let finish = if touched { Op::RecordBack } else { Op::Forget };
                let results = self.op(&finish, &self.cluster.subset(&hosts)).await;
                for (host, result) in results {
                    if result.is_err() {
                        unreachable.insert(host);
                    }
                }
            }
        }
        // A host lost on the way is reported as such (exit 4): it may keep
        // a journal and the lock, which only `recover` clears.
        if !touched && phase == Phase::Stage && !failed.is_empty() && unreachable.is_empty() {
            return RolloutError::Staging {
                failed: failed.iter().map(|(h, _)| h.clone()).collect(),
                errors: failed.into_iter().map(|(_, e)| e).collect(),
            };
        }
        let left_closed = unreachable
            .iter()
            .filter(|h| self.track.get(*h).is_some_and(|t| t.closed))
            .cloned()
            .collect();
        RolloutError::RolledBack {
            release: self.program.release.clone(),
            phase,
            cause,
            restored_to: self.ctx.previous.values().next().cloned().flatten(),
            left: Box::new(super::LeftBehind {
                unreachable: unreachable.into_iter().collect(),
                left_closed,
                kept: self.committed.iter().cloned().collect(),
            }),
        }
    }

    /// One line per host: where it is, as far as slipway knows.
    fn describe(&self) -> Vec<String> {
        // Hosts a step other than the lock's names; the others were never
        // part of what this program changes.
        let involved: BTreeSet<&String> = self
            .program
            .steps
            .iter()
            .filter(|s| !matches!(s.op, Op::Lock { .. } | Op::Unlock))
            .flat_map(|s| &s.hosts)
            .collect();
        self.track
            .iter()
            .filter(|(host, _)| involved.contains(host))
            .map(|(host, t)| {
                let on = t.on.as_deref().unwrap_or("no release");
                let serving = if t.closed { "closed" } else { "open" };
                let workers = if t.stopped { ", workers stopped" } else { "" };
                match self.lost.get(host) {
                    Some(why) => format!("{host}: {why}; last known: {serving} on {on}{workers}"),
                    None => format!("{host}: {serving} on {on}{workers}"),
                }
            })
            .collect()
    }
}

fn all(hosts: &Cluster, result: Result<(), String>) -> HostResults {
    hosts
        .names()
        .into_iter()
        .map(|h| (h, result.clone()))
        .collect()
}
