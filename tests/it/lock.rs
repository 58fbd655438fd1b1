//! The leased environment lock and deploy freezes (issue 12, "Leased
//! lock"), with the real binary on three `local:` hosts: runners that are
//! SIGKILLed mid-rollout, a second runner in another pid namespace with the
//! same hostname, `unlock` of live, expired and corrupt locks, and
//! `slipway lock --message` refusing the CLI and a git push while chat hears
//! of it; and one real sshd host reached with libssh2, whose one session a
//! long hook holds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::run::{Run, run, run_over_ssh, slipway, slipway_for, ssh_flags};
use crate::support::server::{GitServer, push};
use crate::support::sshd::SshCluster;
use crate::support::standin::StandIn;
use crate::support::{App, LocalHosts};

/// An app on three local hosts whose deploy hook (on the first host) says
/// it started, then waits while `gate` exists: a rollout the test can hold
/// in its closed window for as long as it likes.
struct Story {
    app: App,
    hosts: LocalHosts,
    gate: PathBuf,
    started: PathBuf,
}

impl Story {
    fn new(lease: &str, extra: &str) -> Self {
        let app = App::new("", &[("public/index.html", "v1\n")]);
        let hosts = LocalHosts::new(&app, 3);
        let dir = app.scratch("hook");
        let (gate, started) = (dir.join("gate"), dir.join("started"));
        let hook = format!(
            "if [ -e '{gate}' ]; then touch '{started}'; while [ -e '{gate}' ]; do sleep 0.1; done; fi",
            gate = gate.display(),
            started = started.display()
        );
        let config = hosts.production_config(&format!(
            "lock_lease = \"{lease}\"\ndeploy_hook = \"{hook}\"\n{extra}"
        ));
        app.commit("Configure slipway", &[("slipway.toml", &config)]);
        Self {
            app,
            hosts,
            gate,
            started,
        }
    }

    /// Starts `slipway deploy production` in the background and returns
    /// once its hook runs (every host locked, closed and switched).
    fn deploy_held_in_hook(&self) -> Child {
        std::fs::write(&self.gate, "").unwrap();
        let _ = std::fs::remove_file(&self.started);
        let child = slipway(self.app.path())
            .args(["deploy", "production"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(&self.started, Duration::from_secs(60));
        child
    }

    /// Lets a held hook finish.
    fn open_gate(&self) {
        let _ = std::fs::remove_file(&self.gate);
    }

    fn lock_file(&self, i: usize) -> Option<String> {
        self.hosts.read(i, ".slipway/lock")
    }
}

#[track_caller]
fn wait_for(path: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILL: the runner gets no chance to let go of anything.
fn kill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A lock file as slipway writes it, for rollout `id` with `lease_ms`.
fn lock_json(id: &str, lease_ms: u64) -> String {
    format!(
        r#"{{"deploy_id":"{id}","who":"mallory","machine":"elsewhere","pid":4242,"since":"2026-01-01T00:00:00Z","lease_ms":{lease_ms}}}"#
    )
}

/// The machine's hostname, as the runner would record it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn a_dead_runners_lock_is_taken_over_only_once_its_lease_expired() {
    // Before leases, a lock was stale when "same hostname, pid gone": the
    // next deploy broke it at once. Now only time without renewal counts,
    // so the next deploy is refused until the lease (5s) has run out.
    let story = Story::new("5s", "");
    story.app.slipway(&["deploy", "production"]).success();
    let good = story.hosts.current(0).unwrap();
    story.app.commit("Second", &[("public/index.html", "v2\n")]);
    let runner = story.deploy_held_in_hook();
    kill(runner);
    let killed = Instant::now();
    story.open_gate();
    story.app.commit("Third", &[("public/index.html", "v3\n")]);

    let refused = story
        .app
        .slipway(&["deploy", "production"])
        .failure(5)
        .contains("a live rollout holds it");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "refused within the lease, not after it ({:?}):\n{}",
        killed.elapsed(),
        refused.text()
    );
    assert!(story.lock_file(0).is_some(), "the lock was not broken");

    std::thread::sleep(
        Duration::from_secs(5).saturating_sub(killed.elapsed()) + Duration::from_millis(500),
    );
    story
        .app
        .slipway(&["deploy", "production"])
        .failure(4)
        .contains("breaking the lock of")
        .contains("slipway recover production");
    story.app.slipway(&["recover", "production"]).success();
    assert!((0..3).all(|i| story.hosts.current(i).as_deref() == Some(good.as_str())));
    story.app.slipway(&["deploy", "production"]).success();
}

#[test]
fn recover_refuses_a_live_rollout_and_waits_out_a_dead_ones_lease() {
    // Before: `recover` acted on a rollout still in its deploy hook, opening
    // the cluster under it. Now it refuses a lease still being renewed, and
    // for a runner that died it says how long it waits, then recovers.
    let story = Story::new("3s", "");
    story.app.slipway(&["deploy", "production"]).success();
    let good = story.hosts.current(0).unwrap();
    story.app.commit("Second", &[("public/index.html", "v2\n")]);
    let runner = story.deploy_held_in_hook();
    // Longer than the lease: only the heartbeat keeps it live.
    std::thread::sleep(Duration::from_secs(4));

    // `status` used to call the live rollout INTERRUPTED (exit 4).
    story
        .app
        .slipway(&["status", "production"])
        .success()
        .contains("IN PROGRESS")
        .lacks("INTERRUPTED");
    story
        .app
        .slipway(&["recover", "production"])
        .failure(5)
        .contains("a live rollout holds it")
        .contains("wait for it");
    assert!(
        (0..3).all(|i| story.hosts.is_closed(i)),
        "recover left the live rollout's closed window alone"
    );

    kill(runner);
    story.open_gate();
    // Past two renewal intervals (1s): the lease has visibly stopped.
    std::thread::sleep(Duration::from_millis(1500));
    let began = Instant::now();
    story
        .app
        .slipway(&["recover", "production"])
        .success()
        .contains("waiting")
        .contains("to expire")
        .contains("recovered");
    assert!(began.elapsed() >= Duration::from_millis(500), "it waited");
    for i in 0..3 {
        assert_eq!(story.hosts.current(i).as_deref(), Some(good.as_str()));
        assert!(!story.hosts.is_closed(i));
    }
    assert!(story.lock_file(0).is_none(), "recover gave its lock back");
}

#[test]
fn a_runner_in_another_pid_namespace_with_the_same_hostname_waits_for_the_live_lease() {
    // Two CI containers on one host share a hostname but not a pid
    // namespace: the old check saw the holder's pid missing from its /proc
    // and broke a live lock, and two rollouts ran at once.
    let story = Story::new("2s", "");
    story.app.slipway(&["deploy", "production"]).success();
    story.app.commit("Second", &[("public/index.html", "v2\n")]);
    let runner = story.deploy_held_in_hook();
    let held = story.lock_file(0).expect("locked");
    story.app.commit("Third", &[("public/index.html", "v3\n")]);
    std::thread::sleep(Duration::from_secs(3));

    let mut other = Command::new("unshare");
    other
        .args(["--pid", "--fork", "--mount-proc", "--uts", "sh", "-c"])
        .arg("hostname \"$1\" && shift && exec \"$@\"")
        .arg("sh")
        .arg(hostname())
        .arg(env!("CARGO_BIN_EXE_slipway"))
        .current_dir(story.app.path())
        .env("SLIPWAY_USER", "second-runner")
        .env("CI", "true");
    for (key, _) in std::env::vars() {
        if key.starts_with("SLIPWAY_") {
            other.env_remove(key);
        }
    }
    other.env("SLIPWAY_USER", "second-runner");
    let second = run(other, &["deploy", "production"]);
    second
        .failure(5)
        .contains("a live rollout holds it")
        .lacks("breaking");
    assert_eq!(story.lock_file(0).as_deref(), Some(held.as_str()));

    story.open_gate();
    let first = runner.wait_with_output().unwrap();
    assert!(first.status.success(), "the first rollout finished");
    assert!(story.lock_file(0).is_none());
}

#[test]
fn unlock_refuses_a_live_lease_unless_forced_and_breaks_an_expired_one() {
    // Before: `unlock` removed whatever lock it found, a live rollout's too.
    let story = Story::new("30s", "");
    story.app.slipway(&["deploy", "production"]).success();
    for i in 0..3 {
        std::fs::write(
            story.hosts.root(i).join(".slipway/lock"),
            lock_json("ab", 600_000),
        )
        .unwrap();
    }
    story
        .app
        .slipway(&["unlock", "production"])
        .failure(5)
        .contains("mallory")
        .contains("rollout ab")
        .contains("slipway unlock --force production");
    assert!((0..3).all(|i| story.lock_file(i).is_some()));
    story
        .app
        .slipway(&["deploy", "production", "--force"])
        .failure(5)
        .contains("locked by mallory");
    story
        .app
        .slipway_env(&["unlock", "production"], &[("SLIPWAY_UNLOCK_FORCE", "1")])
        .success()
        .contains("removed the lock of mallory (rollout ab");
    assert!((0..3).all(|i| story.lock_file(i).is_none()));

    // A lock from another machine whose lease ran out an hour ago: the
    // next deploy takes it over, whoever and wherever the holder was.
    for i in 0..3 {
        let lock = story.hosts.root(i).join(".slipway/lock");
        std::fs::write(&lock, lock_json("gone", 30_000)).unwrap();
        let touched = Command::new("touch")
            .args(["-d", "1 hour ago"])
            .arg(&lock)
            .status()
            .unwrap();
        assert!(touched.success());
    }
    story
        .app
        .slipway(&["deploy", "production", "--force"])
        .success()
        .contains("breaking the lock of mallory (rollout gone");
}

#[test]
fn a_corrupt_lock_file_is_named_by_deploy_and_removed_by_unlock() {
    // Before: a non-JSON lock blocked every deploy with its raw text as the
    // "holder", and `unlock`, which only knew JSON locks, left it there.
    let story = Story::new("30s", "");
    story.app.slipway(&["deploy", "production"]).success();
    let lock = story.hosts.root(1).join(".slipway/lock");
    std::fs::write(&lock, "garbage from a full disk\n").unwrap();
    story.app.commit("Second", &[("public/index.html", "v2\n")]);
    story
        .app
        .slipway(&["deploy", "production"])
        .failure(5)
        .contains("is not a slipway lock")
        .contains(&format!("{}", lock.display()))
        .contains("garbage from a full disk")
        .contains("slipway unlock production");
    story
        .app
        .slipway(&["unlock", "production"])
        .success()
        .contains("removed the lock file")
        .contains(&format!("{}", lock.display()));
    assert!(!lock.exists());
    story.app.slipway(&["deploy", "production"]).success();
}

/// The text of every chat message the Slack stand-in received.
fn chat(slack: &StandIn, n: usize) -> Vec<String> {
    slack
        .wait_for(n, Duration::from_secs(10))
        .iter()
        .map(|r| r.str("/text").to_owned())
        .collect()
}

#[test]
fn a_freeze_refuses_cli_and_push_deploys_with_its_message_until_unlocked() {
    // `slipway lock --message` is how a team says "not now": every deploy,
    // rollback or promote is refused at once (exit 5) with the reason and
    // who froze it; chat hears of the freeze and of its end.
    let slack = StandIn::start();
    let url = format!("{}/services/T000/B000/XXXX", slack.url());
    let story = Story::new("30s", "[notify]\nslack = { webhook_env = \"SLACK_URL\" }\n");
    let env = [("SLACK_URL", url.as_str())];
    story
        .app
        .slipway_env(&["deploy", "production"], &env)
        .success();
    let v1 = story.hosts.current(0).unwrap();
    assert_eq!(chat(&slack, 2).len(), 2, "started and succeeded");

    story
        .app
        .slipway_env(
            &[
                "lock",
                "production",
                "--message",
                "Black Friday: no deploys",
            ],
            &env,
        )
        .success()
        .contains("frozen by tester");
    let said = chat(&slack, 3);
    assert!(
        said[2].contains("frozen")
            && said[2].contains("Black Friday: no deploys")
            && said[2].contains("tester"),
        "{said:?}"
    );

    story.app.commit("Second", &[("public/index.html", "v2\n")]);
    let refused = |run: Run| {
        run.failure(5)
            .contains("Black Friday: no deploys")
            .contains("frozen by tester")
            .contains("slipway unlock production")
    };
    refused(story.app.slipway_env(&["deploy", "production"], &env));
    refused(
        story
            .app
            .slipway_env(&["rollback", "production", "--to", &v1], &env),
    );
    let server = GitServer::new(&story.app);
    let pushed = push(&story.app, "alice", &["origin", "production"], &[]);
    let seen = format!(
        "{}{}",
        String::from_utf8_lossy(&pushed.stdout),
        String::from_utf8_lossy(&pushed.stderr)
    );
    assert!(
        seen.contains("Black Friday: no deploys") && seen.contains("slipway unlock production"),
        "the pusher is told why:\n{seen}"
    );
    assert!(
        server.branch("production").is_some(),
        "the push itself landed"
    );
    assert!((0..3).all(|i| story.hosts.current(i).as_deref() == Some(v1.as_str())));
    story
        .app
        .slipway(&["status", "production"])
        .contains("FROZEN")
        .contains("Black Friday: no deploys");

    story
        .app
        .slipway_env(&["unlock", "production"], &env)
        .success()
        .contains("lifted the freeze");
    let said = chat(&slack, 4);
    assert!(
        said[3].contains("unfrozen") && said[3].contains("tester"),
        "{said:?}"
    );
    story
        .app
        .slipway_env(&["deploy", "production"], &env)
        .success();
    assert_ne!(story.hosts.current(0).as_deref(), Some(v1.as_str()));
}

#[test]
fn over_libssh2_a_hook_longer_than_the_lease_does_not_starve_its_renewal() {
    // The libssh2 client runs one command at a time per session, and the
    // deploy hook holds it for as long as it runs: renewals queued behind
    // it would let a 2s lease expire under a live rollout, and the next
    // runner would take it over. They go on a second session instead.
    let cluster = SshCluster::start(1);
    let app = App::new("", &[("public/index.html", "v1\n")]);
    let dir = cluster.path("hook");
    std::fs::create_dir_all(&dir).unwrap();
    let (gate, started) = (dir.join("gate"), dir.join("started"));
    let config = format!(
        "[app]\nname = \"shop\"\n[environments.production]\nbranch = \"production\"\nhosts = {hosts}\ndeploy_to = \"{deploy_to}\"\nlock_lease = \"2s\"\ndeploy_hook = \"touch '{started}'; while [ -e '{gate}' ]; do sleep 0.1; done\"\n",
        hosts = cluster.hosts_toml(),
        deploy_to = cluster.deploy_to,
        started = started.display(),
        gate = gate.display(),
    );
    app.commit("Configure slipway", &[("slipway.toml", &config)]);
    std::fs::write(&gate, "").unwrap();
    let flags = ssh_flags(&cluster);
    let runner = slipway_for(app.path(), &cluster)
        .args(["deploy", "production", "--ssh", "libssh2"])
        .args(&flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&started, Duration::from_secs(60));
    // Twice the lease, all of it inside the hook.
    std::thread::sleep(Duration::from_secs(4));

    app.commit("Second", &[("public/index.html", "v2\n")]);
    run_over_ssh(
        app.path(),
        &cluster,
        &["deploy", "production", "--ssh", "libssh2"],
    )
    .failure(5)
    .contains("a live rollout holds it")
    .lacks("breaking");

    std::fs::remove_file(&gate).unwrap();
    let first = runner.wait_with_output().unwrap();
    assert!(first.status.success(), "the first rollout finished");
}
