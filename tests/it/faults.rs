//! The fault matrix: every strategy × action × step of its program × fault,
//! run in-process through the public engine (`rollout::executor`) on
//! `local:` hosts, each host's end state read from its files.
//!
//! Why it exists: the engine promises one thing per side of the point of no
//! return (`Op::Commit`) — before it, every reachable host back on what it
//! ran, open, workers running, no journal, no lock (exit 3, 1 for staging,
//! 4 when a host is lost); after it, exit 4 naming the lost host and a
//! `recover` that finishes the rollout. Those promises are only as good as
//! the steps they were checked at, so the matrix walks `program.steps`:
//! a step added to a program is faulted here without anyone listing it.
//!
//! A fault is injected by [`Faulty`], a transport wrapping the real `local:`
//! one, which recognises the step by what the engine calls it (`what`, the
//! phase name) or by a marker in the configured command: it fails the call
//! (error), replaces it with a `sleep` the transport kills at a short
//! timeout (hang), drops the host for good (connection lost), or raises the
//! runner's [`Interrupt`] during the step (SIGTERM: the runner stops).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway::config::{
    ArtifactFormat, Canary, Deb, Health, OnFailure, Share, Shared, StartStop, Strategy,
};
use slipway::notify::Silent;
use slipway::plan::{Hook, Plan};
use slipway::rollout::manage::{self, Direction};
use slipway::rollout::program::{Op, Program};
use slipway::rollout::state::{Action, HostState, Journal};
use slipway::rollout::steps::{Rollout, Secrets, Upload};
use slipway::rollout::{
    Cluster, Host, Interrupt, Layout, RolloutError, canary, compile, executor, rolling,
};
use slipway::source::Commit;
use slipway::transport::local::Local;
use slipway::transport::{Exit, Script, Transport, TransportError};

const HOSTS: [&str; 3] = ["web1", "web2", "web3"];
const DEPLOY_TO: &str = "/srv/app";
const OLD: &str = "20260101T000000Z-aaaaaaa";
const NEW: &str = "20260102T000000Z-bbbbbbb";
const HOOK_MARK: &str = "fault-hook";
const HEALTH_MARK: &str = "fault-health";
const CHECK_MARK: &str = "fault-canary-check";
/// How long a hung call runs before the transport's timeout kills it.
const HANG: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The step's script fails on the host (it never ran).
    Error,
    /// The step hangs; the transport kills it at a (short) timeout.
    Hang,
    /// The call never reaches the host, nor does any later one.
    Lost,
    /// SIGTERM reaches the runner while the step runs.
    Stop,
}

const KINDS: [Kind; 4] = [Kind::Error, Kind::Hang, Kind::Lost, Kind::Stop];

/// Whether a transport call is `op`'s, by the name the engine gives it
/// (`what`; `None` for raw `exec` calls) or the command's marker. The match
/// is exhaustive on purpose: a new step does not compile until it says how
/// it is recognised.
fn is_step(op: &Op, what: Option<&str>, script: &str) -> bool {
    let named = |name: &str| what == Some(name);
    match op {
        Op::Inspect { .. } => named("reading the deploy state"),
        Op::Stage => what.is_some_and(|w| w.starts_with("upload to ")),
        Op::StopOrphans => named("stopping commands left running"),
        Op::Stop => named("stop"),
        Op::Close => named("close"),
        Op::Switch => named("switch"),
        Op::SwitchBack => named("rollback"),
        Op::Hook { .. } => what.is_none() && script.contains(HOOK_MARK),
        Op::Health => script.contains(HEALTH_MARK),
        Op::CanaryCheck { .. } => script.contains(CHECK_MARK),
        Op::Open => named("open"),
        Op::Start => named("start"),
        Op::Record => named("recording and pruning"),
        Op::RecordBack => named("recording the rollback"),
        Op::Forget => named("clearing the journal"),
        Op::WriteCanary { .. } => named("recording the canary"),
        Op::ClearCanary => named("clearing the canary record"),
        // The lock is another piece of work (a lease); its own tests fault
        // it. Commit does no I/O: nothing to fault.
        Op::Lock { .. } | Op::Unlock | Op::Commit => false,
    }
}

/// The fault armed on one host.
struct Armed {
    op: Op,
    kind: Kind,
    interrupt: Interrupt,
    fired: AtomicBool,
    lost: AtomicBool,
}

/// What to do with one call.
enum Verdict {
    Pass,
    Fail(TransportError),
    Hang,
}

/// The `local:` transport, with an optional fault on its host.
struct Faulty {
    inner: Local,
    armed: Option<Arc<Armed>>,
}

impl Faulty {
    fn verdict(&self, what: Option<&str>, script: &Script) -> Verdict {
        let Some(a) = &self.armed else {
            return Verdict::Pass;
        };
        let lost = || TransportError::Connect {
            host: self.inner.host().to_owned(),
            reason: "connection lost (injected)".to_owned(),
        };
        if a.lost.load(Ordering::SeqCst) {
            return Verdict::Fail(lost());
        }
        if !is_step(&a.op, what, script.as_str()) || a.fired.swap(true, Ordering::SeqCst) {
            return Verdict::Pass;
        }
        match a.kind {
            Kind::Error => Verdict::Fail(TransportError::Failed {
                host: self.inner.host().to_owned(),
                what: what.unwrap_or("command").to_owned(),
                code: Some(1),
                tail: "injected failure".to_owned(),
            }),
            Kind::Hang => Verdict::Hang,
            Kind::Lost => {
                a.lost.store(true, Ordering::SeqCst);
                Verdict::Fail(lost())
            }
            Kind::Stop => {
                a.interrupt.raise("SIGTERM");
                Verdict::Pass
            }
        }
    }
}

impl Transport for Faulty {
    fn host(&self) -> &str {
        self.inner.host()
    }

    fn resolve(&self, path: &str) -> String {
        self.inner.resolve(path)
    }

    fn exec(
        &self,
        script: &Script,
        stdin: Option<&mut (dyn Read + Send)>,
        timeout: Option<Duration>,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<Exit, TransportError> {
        match self.verdict(None, script) {
            Verdict::Pass => self.inner.exec(script, stdin, timeout, on_line),
            Verdict::Fail(e) => Err(e),
            Verdict::Hang => self.inner.exec(&sleep(), None, Some(HANG), on_line),
        }
    }

    fn run_with(
        &self,
        what: &str,
        script: &Script,
        stdin: Option<&mut (dyn Read + Send)>,
        timeout: Option<Duration>,
    ) -> Result<String, TransportError> {
        match self.verdict(Some(what), script) {
            Verdict::Pass => self.inner.run_with(what, script, stdin, timeout),
            Verdict::Fail(e) => Err(e),
            Verdict::Hang => self.inner.run_with(what, &sleep(), None, Some(HANG)),
        }
    }
}

fn sleep() -> Script {
    Script::new().raw("sleep 30")
}

/// A release artifact: a real tar.gz with a `version` file.
fn artifact(dir: &Path, release: &str) -> Upload {
    let src = dir.join(format!("src-{release}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("version"), release).unwrap();
    let path = dir.join(format!("{release}.tar.gz"));
    let ok = Command::new("tar")
        .arg("-czf")
        .arg(&path)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar -czf");
    let mut tar = Vec::new();
    flate2_free_gunzip(&path, &mut tar);
    Upload {
        sha256: slipway::artifact::sha256_file(&path).unwrap(),
        size: std::fs::metadata(&path).unwrap().len(),
        tar_size: tar.len() as u64,
        path,
    }
}

/// The tar stream inside `path`, via real gzip.
fn flate2_free_gunzip(path: &Path, out: &mut Vec<u8>) {
    let o = Command::new("gzip").arg("-dc").arg(path).output().unwrap();
    assert!(o.status.success(), "gzip -dc");
    *out = o.stdout;
}

fn plan(strategy: Strategy, on_failure: OnFailure, release: &str) -> Plan {
    let hosts: Vec<String> = HOSTS.iter().map(|h| (*h).to_owned()).collect();
    // Workers and cron write where they run (or that they stopped) beside
    // the releases, so a test reads which release they run in.
    let background = |file: &str| StartStop {
        start: format!("echo \"running $(basename \"$(pwd -P)\")\" > ../../{file}"),
        stop: format!("echo stopped > ../../{file}"),
    };
    Plan {
        app: "shop".into(),
        environment: "production".into(),
        branch: "main".into(),
        commit: Commit {
            id: format!("{:0<40}", release.rsplit('-').next().unwrap()),
            short: release.rsplit('-').next().unwrap().into(),
            time: 0,
            subject: "fault matrix".into(),
            author: "Ann <ann@example.com>".into(),
            committer: "Ann <ann@example.com>".into(),
        },
        release_id: release.into(),
        strategy,
        hosts: hosts.clone(),
        deploy_to: DEPLOY_TO.into(),
        artifact: ArtifactFormat::TarGz,
        deb: Deb::default(),
        hook: Some(Hook {
            command: format!("test -f version # {HOOK_MARK}"),
            host: hosts[0].clone(),
            timeout: Duration::from_secs(10),
        }),
        shared: Shared::default(),
        env: BTreeMap::new(),
        secrets: Vec::new(),
        workers: Some(background("workers")),
        cron: Some(background("cron")),
        health: Some(Health {
            url: None,
            command: Some(format!("test -f version # {HEALTH_MARK}")),
            status: 200,
            timeout: Duration::from_secs(10),
            retries: 0,
        }),
        keep_releases: 5,
        parallel: 3,
        lock_wait: Duration::ZERO,
        lock_lease: Duration::from_secs(1),
        deployer: "ann".into(),
        copy_back: Vec::new(),
        batch: Share::Hosts(1),
        on_failure,
        canary: (strategy == Strategy::Canary).then(|| Canary {
            hosts: Vec::new(),
            share: Share::Percent(34),
            check: Some(format!("test -f version # {CHECK_MARK}")),
        }),
    }
}

/// The hosts under `dir`, faulted or not.
fn cluster(dir: &Path, fault: Option<(&str, Arc<Armed>)>) -> Cluster {
    let hosts = HOSTS
        .iter()
        .map(|name| {
            let armed = fault
                .as_ref()
                .filter(|(h, _)| h == name)
                .map(|(_, a)| Arc::clone(a));
            let transport: Arc<dyn Transport> = Arc::new(Faulty {
                inner: Local::new(name, dir.join(name)),
                armed,
            });
            let layout = Layout::new(transport.resolve(DEPLOY_TO));
            Host { transport, layout }
        })
        .collect();
    Cluster { hosts, parallel: 3 }
}

static IDS: AtomicUsize = AtomicUsize::new(0);

async fn run(
    cluster: &Cluster,
    plan: &Plan,
    program: &Program,
    artifact: Option<&Upload>,
    interrupt: &Interrupt,
) -> Result<(), RolloutError> {
    let rollout = Rollout {
        plan: Arc::new(plan.clone()),
        action: program.action,
        artifact: artifact.cloned(),
        secrets: Secrets::default(),
        deploy_id: format!("d{}", IDS.fetch_add(1, Ordering::SeqCst)),
        sink: Arc::new(Silent),
        interrupt: interrupt.clone(),
    };
    executor::run(cluster, &rollout, program).await.map(drop)
}

/// One host, read from its files.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    current: Option<String>,
    closed: bool,
    workers: String,
    cron: String,
    journal: Option<Journal>,
    lock: bool,
    canary: bool,
}

fn seen(dir: &Path, host: &str) -> Seen {
    let root = dir.join(host).join(DEPLOY_TO.trim_start_matches('/'));
    let read = |p: &str| {
        std::fs::read_to_string(root.join(p))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    Seen {
        current: std::fs::read_link(root.join("current"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())),
        closed: root.join(".slipway/maintenance").exists(),
        workers: read("workers"),
        cron: read("cron"),
        journal: std::fs::read_to_string(root.join(".slipway/journal.json"))
            .ok()
            .map(|j| serde_json::from_str(&j).expect("the journal parses")),
        lock: root.join(".slipway/lock").exists(),
        canary: root.join(".slipway/canary.json").exists(),
    }
}

fn running(on: Option<&str>) -> String {
    on.map_or_else(String::new, |r| format!("running {r}"))
}

/// A host left open on `release`, its workers and cron running there, no
/// journal, no lock.
fn settled(s: &Seen, release: Option<&str>) -> Result<(), String> {
    let ok = s.current.as_deref() == release
        && !s.closed
        && s.workers == running(release)
        && s.cron == running(release)
        && s.journal.is_none()
        && !s.lock;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected open on {release:?}, workers running, no journal, no lock; found {s:?}"
        ))
    }
}

/// What the environment is before the faulted action, kept as a folder
/// copied for each case, with the program of that action.
struct Scenario {
    name: String,
    plan: Plan,
    program: Program,
    template: tempfile::TempDir,
    artifact: Upload,
}

async fn scenario(name: &str, strategy: Strategy, on_failure: OnFailure, action: &str) -> Scenario {
    let template = tempfile::Builder::new()
        .prefix("slipway-faults-")
        .tempdir()
        .unwrap();
    let dir = template.path();
    let old = artifact(dir, OLD);
    let new = artifact(dir, NEW);
    let (old_plan, new_plan) = (
        plan(strategy, on_failure, OLD),
        plan(strategy, on_failure, NEW),
    );
    let plain = cluster(dir, None);
    let quiet = Interrupt::default();
    // Everyone on OLD, with workers running; rolling for a canary
    // environment, whose own deploy stops at the canary.
    let full_deploy = |p: &Plan| match strategy {
        Strategy::Canary => rolling::program(p, Action::Deploy),
        _ => compile(p, Action::Deploy),
    };
    run(
        &plain,
        &old_plan,
        &full_deploy(&old_plan),
        Some(&old),
        &quiet,
    )
    .await
    .expect("setup: deploy OLD");
    let (plan, program) = match action {
        "deploy" => (new_plan.clone(), compile(&new_plan, Action::Deploy)),
        "rollback" => {
            run(
                &plain,
                &new_plan,
                &full_deploy(&new_plan),
                Some(&new),
                &quiet,
            )
            .await
            .expect("setup: deploy NEW");
            (old_plan.clone(), compile(&old_plan, Action::Rollback))
        }
        "promote" | "revert" => {
            run(
                &plain,
                &new_plan,
                &canary::program(&new_plan),
                Some(&new),
                &quiet,
            )
            .await
            .expect("setup: canary of NEW");
            let state = canary::current(&plain, "production").await.unwrap();
            let program = if action == "promote" {
                canary::promote_program(&new_plan, &state)
            } else {
                canary::revert_program(&new_plan, &state)
            };
            (new_plan.clone(), program)
        }
        "recover-finish" | "recover-undo" => {
            // A deploy of NEW that loses web3: after its commit (at record),
            // or before it (at switch).
            let at = if action == "recover-finish" {
                Op::Record
            } else {
                Op::Switch
            };
            let armed = arm(at, Kind::Lost, &quiet);
            let lossy = cluster(dir, Some(("web3", armed)));
            let e = run(
                &lossy,
                &new_plan,
                &compile(&new_plan, Action::Deploy),
                Some(&new),
                &quiet,
            )
            .await
            .expect_err("setup: web3 is lost");
            assert_eq!(e.exit_code(), 4, "setup: {e}");
            runner_died(dir);
            let program = recover_program(&plain, &new_plan)
                .await
                .expect("setup: a journal");
            (new_plan.clone(), program)
        }
        other => unreachable!("no action {other}"),
    };
    Scenario {
        name: name.to_owned(),
        plan,
        program,
        template,
        artifact: new,
    }
}

fn arm(op: Op, kind: Kind, interrupt: &Interrupt) -> Arc<Armed> {
    Arc::new(Armed {
        op,
        kind,
        interrupt: interrupt.clone(),
        fired: AtomicBool::new(false),
        lost: AtomicBool::new(false),
    })
}

/// The runner whose lock a lost host still holds is gone (in real life a
/// process that exited; here the lock names a pid that no longer runs), so
/// the next slipway may break it.
fn runner_died(dir: &Path) {
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    for host in HOSTS {
        let lock = dir
            .join(host)
            .join(DEPLOY_TO.trim_start_matches('/'))
            .join(".slipway/lock");
        if let Ok(text) = std::fs::read_to_string(&lock) {
            let mut owner: serde_json::Value = serde_json::from_str(&text).unwrap();
            owner["pid"] = dead.into();
            std::fs::write(&lock, owner.to_string()).unwrap();
            // Its lease stopped being renewed a while ago.
            let aged = Command::new("touch")
                .args(["-d", "10 seconds ago"])
                .arg(&lock)
                .status()
                .unwrap();
            assert!(aged.success(), "touch -d");
        }
    }
}

/// `slipway recover`, as the CLI does it: read the journals and histories,
/// compile the recover program.
async fn recover_program(cluster: &Cluster, plan: &Plan) -> Option<Program> {
    let states = cluster.read_state().await.unwrap();
    let histories = manage::histories(cluster).await;
    let hosts: Vec<(String, HostState, Vec<_>)> = cluster
        .names()
        .into_iter()
        .zip(states)
        .zip(histories)
        .map(|((n, s), (_, h))| (n, s, h.unwrap_or_default()))
        .collect();
    let rec = manage::recovery(&hosts)?;
    let mut plan = plan.clone();
    plan.release_id.clone_from(&rec.release);
    Some(manage::recover_program(&plan, &rec, &cluster.names()))
}

/// What recover brings the hosts to, and runs it: `Ok(None)` when there
/// was nothing to recover.
async fn recover(dir: &Path, plan: &Plan) -> Result<Option<Direction>, RolloutError> {
    runner_died(dir);
    let plain = cluster(dir, None);
    let Some(program) = recover_program(&plain, plan).await else {
        return Ok(None);
    };
    let direction = if program.steps.iter().any(|s| s.op == Op::Switch) {
        Direction::Finish
    } else {
        Direction::Undo
    };
    run(&plain, plan, &program, None, &Interrupt::default()).await?;
    Ok(Some(direction))
}

fn copy(template: &Path) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("slipway-fault-")
        .tempdir()
        .unwrap();
    for host in HOSTS {
        let ok = Command::new("cp")
            .arg("-a")
            .arg(template.join(host))
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "cp -a");
    }
    dir
}

/// One case: `kind` at step `k` on `host`. `Err` says what broke.
async fn case(s: &Scenario, k: usize, host: &str, kind: Kind) -> Result<(), String> {
    let p = &s.program;
    let step = &p.steps[k];
    let dir = copy(s.template.path());
    let dir = dir.path();
    let before: BTreeMap<&str, Seen> = HOSTS.iter().map(|h| (*h, seen(dir, h))).collect();
    let interrupt = Interrupt::default();
    let armed = arm(step.op.clone(), kind, &interrupt);
    let faulty = cluster(dir, Some((host, Arc::clone(&armed))));
    let has_stage = p.steps.iter().any(|s| s.op == Op::Stage);
    let result = run(
        &faulty,
        &s.plan,
        p,
        has_stage.then_some(&s.artifact),
        &interrupt,
    )
    .await;
    if !armed.fired.load(Ordering::SeqCst) {
        return Err(format!(
            "the fault never fired: the step was not recognised, or the rollout ended before it: {result:?}"
        ));
    }
    let after: BTreeMap<&str, Seen> = HOSTS.iter().map(|h| (*h, seen(dir, h))).collect();
    let lost = kind == Kind::Lost;
    // Hosts past their commit when the fault hit (a stop takes effect at
    // the next step, so a commit right after it counts).
    let committed_by = |upto: usize| -> Vec<String> {
        p.steps[..upto]
            .iter()
            .filter(|s| s.op == Op::Commit)
            .flat_map(|s| s.hosts.clone())
            .collect()
    };
    let next = p.steps[k + 1..]
        .iter()
        .position(|s| !matches!(s.op, Op::Lock { .. } | Op::Unlock))
        .map(|i| k + 1 + i);
    let committed = committed_by(k);
    let everyone = p.hosts();
    // Where each host is expected on the near side of the commit: a host
    // a switch (or switch back) reached goes to what the program says it
    // ran before; the others stay as they were.
    let reached = |h: &str| {
        p.steps[..=k].iter().enumerate().any(|(i, st)| {
            matches!(st.op, Op::Switch | Op::SwitchBack)
                && st.hosts.iter().any(|x| x == h)
                && (i < k || h != host || kind == Kind::Stop)
        })
    };
    let previous = |h: &str| -> Option<String> {
        match &p.previous {
            Some(map) if reached(h) => map.get(h).cloned().flatten(),
            _ => before[h].current.clone(),
        }
    };
    let pre_commit = |result: &Result<(), RolloutError>, kept: &[String]| -> Result<(), String> {
        for h in HOSTS {
            if lost && h == host {
                continue;
            }
            let want = if kept.iter().any(|x| x == h) {
                Some(p.release.clone())
            } else if p.action == Action::Revert && reached(h) {
                previous(h)
            } else {
                before[h].current.clone()
            };
            settled(&after[h], want.as_deref()).map_err(|e| format!("{h}: {e} ({result:?})"))?;
        }
        Ok(())
    };
    let code = result.as_ref().err().map_or(0, RolloutError::exit_code);
    match (kind, &result) {
        (Kind::Stop, _) => {
            // The executor looks at the signal before the next step: it
            // carries on if every host still ahead is past its commit.
            let all_committed = next
                .map(|j| {
                    p.steps[j..]
                        .iter()
                        .filter(|s| !matches!(s.op, Op::Lock { .. } | Op::Unlock))
                        .flat_map(|s| &s.hosts)
                        .all(|h| committed_by(j).contains(h))
                })
                .unwrap_or(true);
            if all_committed {
                if code != 0 {
                    return Err(format!(
                        "a stop after the commit must finish; got {result:?}"
                    ));
                }
                for h in &everyone {
                    settled(&after[h.as_str()], final_release(p, h, &before).as_deref())
                        .map_err(|e| format!("{h}: {e}"))?;
                }
            } else {
                let Err(RolloutError::RolledBack { left, .. }) = &result else {
                    return Err(format!(
                        "a stop before the commit undoes (exit 3); got {result:?}"
                    ));
                };
                if code != 3 {
                    return Err(format!("exit {code}, not 3: {result:?}"));
                }
                if p.action == Action::Recover {
                    recover(dir, &s.plan)
                        .await
                        .map_err(|e| format!("recover run again: {e}"))?;
                    for h in &everyone {
                        settled(&seen(dir, h), final_release(p, h, &before).as_deref())
                            .map_err(|e| format!("after recover ran again, {h}: {e}"))?;
                    }
                    return Ok(());
                }
                pre_commit(&result, &left.kept)?;
            }
        }
        (_, Ok(())) => return Err("a fault was swallowed: the rollout succeeded".into()),
        // A host where a recover cannot stop what the dead rollout left
        // running is left out of it, like a host lost after the commit.
        (_, Err(e)) if committed.iter().any(|h| h == host) || step.op == Op::StopOrphans => {
            let RolloutError::Incomplete { lost: named, .. } = e else {
                return Err(format!("after the commit: exit 4 (Incomplete); got {e}"));
            };
            if named != &vec![host.to_owned()] || code != 4 || !e.to_string().contains(host) {
                return Err(format!("exit 4 naming {host} alone; got exit {code}: {e}"));
            }
            // Its journal is what `recover` finishes from (the step that
            // failed was to rewrite it as committed; the others' history
            // says it passed the commit).
            if !lost && after[host].journal.is_none() {
                return Err(format!("{host} keeps its journal; {:?}", after[host]));
            }
            for h in everyone.iter().filter(|h| *h != host) {
                settled(&after[h.as_str()], final_release(p, h, &before).as_deref())
                    .map_err(|e| format!("{h}: {e}"))?;
            }
            // Finished where the release was meant to be; a host a canary
            // was never to switch goes back (its journal never committed).
            match recover(dir, &s.plan).await {
                Ok(Some(_)) => {}
                other => return Err(format!("recover runs; got {other:?}")),
            }
            for h in &everyone {
                settled(&seen(dir, h), final_release(p, h, &before).as_deref())
                    .map_err(|e| format!("after recover, {h}: {e}"))?;
            }
        }
        (_, Err(e)) => {
            let expected = match (&step.op, e) {
                (Op::Inspect { .. }, RolloutError::Transport(_)) => 1,
                (_, RolloutError::Staging { .. }) => 1,
                (_, RolloutError::RolledBack { .. }) => 3 + u8::from(lost),
                _ => return Err(format!("before the commit: a rollback; got {e}")),
            };
            if code != expected || (lost && code != 4 && !matches!(step.op, Op::Inspect { .. })) {
                return Err(format!("exit {code}, expected {expected}: {e}"));
            }
            let kept = match e {
                RolloutError::RolledBack { left, .. } => {
                    if lost {
                        let closed_on_disk = after[host].closed;
                        if left.unreachable != vec![host.to_owned()]
                            || left.left_closed.contains(&host.to_owned()) != closed_on_disk
                        {
                            return Err(format!(
                                "{host} is named unreachable (left closed: {closed_on_disk}); got {left:?}"
                            ));
                        }
                    }
                    left.kept.clone()
                }
                _ => Vec::new(),
            };
            if p.action == Action::Recover {
                // A recover that stops part way keeps the journals (its
                // hosts may not be back where they belong); run again, it
                // completes.
                recover(dir, &s.plan)
                    .await
                    .map_err(|e| format!("recover run again: {e}"))?;
                for h in &everyone {
                    settled(&seen(dir, h), final_release(p, h, &before).as_deref())
                        .map_err(|e| format!("after recover ran again, {h}: {e}"))?;
                }
                return Ok(());
            }
            pre_commit(&result, &kept)?;
            if lost {
                // The host comes back: whatever recover does, everyone ends
                // open on one release per host as the rollback meant.
                recover(dir, &s.plan)
                    .await
                    .map_err(|e| format!("recover after {host} came back: {e}"))?;
                runner_died(dir);
                for h in HOSTS {
                    let mut now = seen(dir, h);
                    if h == host && now.journal.is_none() {
                        // Nothing to recover on it: its dead runner's lock
                        // stays until the next rollout breaks it.
                        now.lock = false;
                    }
                    // A revert's journal names the release it reverts to:
                    // recover completes the revert on the host that was lost.
                    let want = if kept.iter().any(|x| x == h) {
                        Some(p.release.clone())
                    } else if p.action == Action::Revert
                        && (reached(h) || (h == host && after[host].journal.is_some()))
                    {
                        final_release(p, h, &before)
                    } else {
                        before[h].current.clone()
                    };
                    settled(&now, want.as_deref())
                        .map_err(|e| format!("after recover, {h}: {e}"))?;
                }
            }
        }
    }
    if s.plan.strategy == Strategy::Gated {
        let open: std::collections::BTreeSet<_> = HOSTS
            .iter()
            .map(|h| seen(dir, h))
            .filter(|s| !s.closed)
            .map(|s| s.current)
            .collect();
        if open.len() > 1 {
            return Err(format!("two releases serve open at the end: {open:?}"));
        }
    }
    Ok(())
}

/// Where `h` ends when `p` completes: the release if a switch names it,
/// what the program says it ran before if a switch back does, else as it
/// was.
fn final_release(p: &Program, h: &str, before: &BTreeMap<&str, Seen>) -> Option<String> {
    let names = |op: &Op| {
        p.steps
            .iter()
            .any(|s| &s.op == op && s.hosts.iter().any(|x| x == h))
    };
    if names(&Op::Switch) {
        Some(p.release.clone())
    } else if names(&Op::SwitchBack) {
        p.previous
            .as_ref()
            .and_then(|m| m.get(h).cloned().flatten())
    } else {
        before[h].current.clone()
    }
}

/// Every step × host-of-step (its last host) × fault of one scenario, a few
/// at a time; all failures reported together.
async fn matrix(name: &str, strategy: Strategy, on_failure: OnFailure, action: &str) {
    let started = Instant::now();
    let s = Arc::new(scenario(name, strategy, on_failure, action).await);
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut cases = Vec::new();
    for (k, step) in s.program.steps.iter().enumerate() {
        if !faultable(&step.op) {
            continue;
        }
        let host = step.hosts.last().unwrap().clone();
        for kind in KINDS {
            cases.push((k, host.clone(), kind));
        }
    }
    assert!(!cases.is_empty(), "{name}: nothing to fault");
    let n = cases.len();
    let limit = Arc::new(tokio::sync::Semaphore::new(6));
    let mut tasks = Vec::new();
    for (k, host, kind) in cases {
        let (s, failures, limit) = (Arc::clone(&s), Arc::clone(&failures), Arc::clone(&limit));
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            let op = &s.program.steps[k].op;
            let what = format!("{} / step {} `{op:?}` on {host} / {kind:?}", s.name, k + 1);
            match (
                case(&s, k, &host, kind).await,
                known(&s.name, op, &host, kind),
            ) {
                (Ok(()), None) | (Err(_), Some(_)) => {}
                (Err(why), None) => failures.lock().unwrap().push(format!("{what}: {why}")),
                (Ok(()), Some(bug)) => failures.lock().unwrap().push(format!(
                    "{what}: passes now; take it out of `known` ({bug})"
                )),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    eprintln!(
        "{name}: {n} cases in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {n} cases broke an invariant:\n{}\nthe program:\n{}",
        failures.len(),
        failures.join("\n"),
        s.program.render()
    );
}

/// Cases that break an invariant today, each with the bug: the matrix
/// fails when one of them starts passing, so the list only shrinks.
fn known(scenario: &str, op: &Op, host: &str, kind: Kind) -> Option<&'static str> {
    match (scenario, op, kind) {
        // Promote records (clearing the journal) before it removes the
        // canary record; when the removal fails on a host, exit 4 says
        // `recover`, which finds no journal, and the stale canary record
        // refuses every later deploy until `promote` is run again.
        (
            "canary promote" | "canary revert",
            Op::ClearCanary,
            Kind::Error | Kind::Hang | Kind::Lost,
        ) => Some(
            "a failed canary-record removal after promote: no journal, so `recover` does nothing",
        ),
        // A batch rolled back while one of its hosts was lost: that host's
        // journal is uncommitted, but the earlier batches recorded success,
        // so `recover` finishes the rollout on it alone (the later batches
        // stay on the old release).
        (
            "rolling (rollback-batch) deploy",
            Op::Stop | Op::Switch | Op::Health | Op::Start,
            Kind::Lost,
        )
        | ("rolling (rollback-batch) rollback", Op::Switch | Op::Health | Op::Start, Kind::Lost)
            if host != "web1" =>
        {
            Some("recover finishes a rolled-back batch on the lost host only")
        }
        // The host was closed before this recover began (the rollout it
        // recovers closed it); the executor only counts closes it saw, so
        // losing it again says "never closed".
        ("Gated recover-undo", Op::Close, Kind::Lost) => {
            Some("a host closed by the dead rollout and lost again is called never closed")
        }
        _ => None,
    }
}

/// Lock and unlock are another piece of work's (the lease) and fault-tested
/// there; commit does no I/O.
fn faultable(op: &Op) -> bool {
    !matches!(op, Op::Lock { .. } | Op::Unlock | Op::Commit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gated_deploy_and_rollback_keep_their_promises_at_every_step() {
    matrix(
        "gated deploy",
        Strategy::Gated,
        OnFailure::RollbackAll,
        "deploy",
    )
    .await;
    matrix(
        "gated rollback",
        Strategy::Gated,
        OnFailure::RollbackAll,
        "rollback",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_rollback_all_keeps_its_promises_at_every_step() {
    matrix(
        "rolling (rollback-all) deploy",
        Strategy::Rolling,
        OnFailure::RollbackAll,
        "deploy",
    )
    .await;
    matrix(
        "rolling (rollback-all) rollback",
        Strategy::Rolling,
        OnFailure::RollbackAll,
        "rollback",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_rollback_batch_keeps_its_promises_at_every_step() {
    matrix(
        "rolling (rollback-batch) deploy",
        Strategy::Rolling,
        OnFailure::RollbackBatch,
        "deploy",
    )
    .await;
    matrix(
        "rolling (rollback-batch) rollback",
        Strategy::Rolling,
        OnFailure::RollbackBatch,
        "rollback",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_deploy_promote_revert_and_rollback_keep_their_promises_at_every_step() {
    for action in ["deploy", "promote", "revert", "rollback"] {
        matrix(
            &format!("canary {action}"),
            Strategy::Canary,
            OnFailure::RollbackAll,
            action,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recover_keeps_its_promises_at_every_step() {
    for strategy in [Strategy::Gated, Strategy::Rolling] {
        for action in ["recover-finish", "recover-undo"] {
            matrix(
                &format!("{strategy:?} {action}"),
                strategy,
                OnFailure::RollbackAll,
                action,
            )
            .await;
        }
    }
}

/// The issue: `rollback` in a canary environment with no canary in
/// progress went through the canary strategy and left hosts behind. It is
/// the rolling program, and every host ends on the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_in_a_canary_environment_without_a_canary_is_rolling_and_complete() {
    let s = scenario(
        "canary rollback",
        Strategy::Canary,
        OnFailure::RollbackAll,
        "rollback",
    )
    .await;
    assert_eq!(s.program.shape, "rolling");
    let dir = copy(s.template.path());
    run(
        &cluster(dir.path(), None),
        &s.plan,
        &s.program,
        None,
        &Interrupt::default(),
    )
    .await
    .expect("exit 0");
    for h in HOSTS {
        settled(&seen(dir.path(), h), Some(OLD)).unwrap();
    }
}
