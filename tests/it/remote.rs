//! A configured command that outlives its deadline is stopped on the host,
//! not just abandoned by slipway (issue 12): before, a deploy hook or health
//! command that timed out was reported "stopped" but ran on, and finished
//! after the rollback (a migration landing after the code was rolled
//! back); the same when slipway itself died mid-hook.
//!
//! Each story runs on real sshd hosts over each SSH transport. The hosts
//! are this machine's processes, so "dead on the host" is checked in
//! `/proc`: every command here sleeps for a duration no other test uses,
//! which names its processes (`sh -c '…sleep 7.123…'` and `sleep 7.123`).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slipway::rollout::Host;
use slipway::rollout::layout::Layout;
use slipway::rollout::remote::{self, Ended};
use slipway::transport::{ConnectOptions, SshChoice};

use crate::support::run::{Run, run_over_ssh, slipway_for, ssh_flags};
use crate::support::sshd::SshCluster;
use crate::support::{App, LocalHosts};

/// An app on two sshd hosts, deployed once with a quick hook, so a failing
/// second deploy has a release to roll back to.
struct Story {
    ssh: &'static str,
    app: App,
    cluster: SshCluster,
    hosts: LocalHosts,
}

impl Story {
    fn new(ssh: &'static str) -> Self {
        let cluster = SshCluster::start(2);
        let app = App::new("", &[("public/index.html", "v1\n")]);
        let hosts = LocalHosts {
            roots: cluster.roots.clone(),
            deploy_to: cluster.deploy_to.clone(),
        };
        let story = Self {
            ssh,
            app,
            cluster,
            hosts,
        };
        story.configure("true", "");
        story.slipway(&["deploy", "production"]).success();
        story
    }

    /// Commits a config whose deploy hook is `hook`, plus `extra` lines in
    /// the environment, and a new page, so the next deploy is a new release.
    fn configure(&self, hook: &str, extra: &str) {
        let config = format!(
            "[app]\nname = \"shop\"\n\n[environments.production]\nbranch = \"production\"\nhosts = {}\ndeploy_to = \"{}\"\ndeploy_hook = \"{hook}\"\n{extra}\n",
            self.cluster.hosts_toml(),
            self.cluster.deploy_to,
        );
        let page = format!("{hook}{extra}\n");
        self.app.commit(
            "Configure",
            &[("slipway.toml", &config), ("public/index.html", &page)],
        );
    }

    fn slipway(&self, args: &[&str]) -> Run {
        let mut all = args.to_vec();
        all.extend(["--ssh", self.ssh]);
        run_over_ssh(self.app.path(), &self.cluster, &all)
    }

    /// Starts `slipway deploy production` and SIGKILLs it as soon as the
    /// hook has started on the first host.
    fn deploy_killed_mid_hook(&self) -> Instant {
        let flags = ssh_flags(&self.cluster);
        let mut child = slipway_for(self.app.path(), &self.cluster)
            .args(["deploy", "production", "--ssh", self.ssh])
            .args(&flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("slipway starts");
        let started = self.hosts.root(0).join("shared/hook-started");
        let since = Instant::now();
        while !started.exists() {
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "the hook never started"
            );
            assert!(
                child.try_wait().expect("wait").is_none(),
                "slipway ended before its hook started"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().expect("SIGKILL slipway");
        child.wait().expect("reaped");
        Instant::now()
    }

    /// Host `i` as the library reaches it, over this story's transport.
    fn host(&self, i: usize) -> Host {
        let options = ConnectOptions {
            ssh: if self.ssh == "openssh" {
                SshChoice::OpenSsh
            } else {
                SshChoice::Libssh2
            },
            known_hosts: Some(self.cluster.known_hosts.clone()),
            identity_files: vec![self.cluster.keys.private.clone()],
            ssh_config: Some(self.cluster.path("empty_ssh_config")),
            ..ConnectOptions::default()
        };
        std::fs::write(self.cluster.path("empty_ssh_config"), "").expect("ssh_config");
        let transport: Arc<dyn slipway::transport::Transport> = Arc::from(
            slipway::transport::connect(&self.cluster.hosts[i].spec("root"), &options)
                .expect("connects"),
        );
        let layout = Layout::new(transport.resolve(&self.cluster.deploy_to));
        Host { transport, layout }
    }

    /// The pid files left under host `i`'s `.slipway/run`.
    fn pid_files(&self, i: usize) -> Vec<String> {
        std::fs::read_dir(self.hosts.root(i).join(".slipway/run"))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A sleep duration no other test uses: `secs` and a unique fraction.
fn unique_sleep(secs: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    format!("{secs}.{nanos:09}")
}

/// Live processes whose command line mentions `token`, with it.
fn processes(token: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|e| e.file_name().to_string_lossy() != me)
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline
                .contains(token)
                .then(|| format!("{}: {cmdline}", e.file_name().to_string_lossy()))
        })
        .collect()
}

/// Waits until `at`.
fn sleep_until(at: Instant) {
    if let Some(left) = at.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
}

/// Asserts that by `by` no process mentions `token` any more.
#[track_caller]
fn assert_gone_by(token: &str, by: Instant) {
    loop {
        let left = processes(token);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < by, "still running on the host: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn a_hook_past_its_timeout_is_dead_on_the_host_and_the_deploy_rolls_back(ssh: &'static str) {
    let story = Story::new(ssh);
    let first = story.hosts.current(0).expect("deployed");
    let sleep = unique_sleep(6);
    story.configure(
        &format!("touch ../../shared/hook-started; sleep {sleep}; touch ../../shared/migrated"),
        "hook_timeout = \"2s\"",
    );

    let run = story.slipway(&["deploy", "production"]).failure(3);
    let returned = Instant::now();
    // Reported only once the hook's whole process group is gone.
    assert!(
        processes(&sleep).is_empty(),
        "the hook still runs after slipway reported it:\n{:?}\n{}",
        processes(&sleep),
        run.text()
    );
    let run = run.contains("did not finish within 2s; it was stopped");
    assert!(story.pid_files(0).is_empty(), "{:?}", story.pid_files(0));
    for i in 0..2 {
        assert_eq!(story.hosts.current(i).as_deref(), Some(first.as_str()));
        assert!(!story.hosts.is_closed(i), "host {i}:\n{}", run.text());
    }
    // Past when the hook would have finished (it started before slipway
    // returned), its migration never landed.
    sleep_until(returned + Duration::from_secs(7));
    assert!(
        story.hosts.read(0, "shared/migrated").is_none(),
        "{}",
        run.text()
    );
}

fn a_health_command_past_its_timeout_is_dead_on_every_host(ssh: &'static str) {
    let story = Story::new(ssh);
    let first = story.hosts.current(0).expect("deployed");
    let sleep = unique_sleep(6);
    story.configure(
        "true",
        &format!(
            "health = {{ command = \"sleep {sleep}; touch ../../shared/checked\", timeout = \"2s\", retries = 0 }}"
        ),
    );

    let run = story.slipway(&["deploy", "production"]).failure(3);
    let returned = Instant::now();
    assert!(
        processes(&sleep).is_empty(),
        "a health command still runs after slipway reported it:\n{:?}\n{}",
        processes(&sleep),
        run.text()
    );
    for i in 0..2 {
        assert_eq!(story.hosts.current(i).as_deref(), Some(first.as_str()));
        assert!(!story.hosts.is_closed(i), "host {i}:\n{}", run.text());
        assert!(story.pid_files(i).is_empty(), "{:?}", story.pid_files(i));
    }
    sleep_until(returned + Duration::from_secs(7));
    for i in 0..2 {
        assert!(story.hosts.read(i, "shared/checked").is_none(), "host {i}");
    }
}

fn a_hook_whose_runner_died_ends_at_its_own_deadline_on_the_host(ssh: &'static str) {
    // Nobody is left to stop it: the host's own deadline (slipway's 1s
    // plus a 5s grace) must.
    let story = Story::new(ssh);
    let sleep = unique_sleep(10);
    story.configure(
        &format!("touch ../../shared/hook-started; sleep {sleep}; touch ../../shared/migrated"),
        "hook_timeout = \"1s\"",
    );

    let killed = story.deploy_killed_mid_hook();
    assert!(
        !processes(&sleep).is_empty(),
        "the hook runs on after slipway died"
    );
    assert_gone_by(&sleep, killed + Duration::from_secs(9));
    // Its wrapper, which outlived the connection, removes its pid file
    // once the hook has gone.
    let gone = Instant::now();
    while !story.pid_files(0).is_empty() {
        assert!(
            gone.elapsed() < Duration::from_secs(3),
            "{:?}",
            story.pid_files(0)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sleep_until(killed + Duration::from_secs(11));
    assert!(story.hosts.read(0, "shared/migrated").is_none());
}

fn stop_orphans_stops_a_hook_left_running_by_a_dead_runner(ssh: &'static str) {
    // What `recover` does before undoing: the hook a dead runner left is
    // listed as running, then stopped, and its pid file goes.
    let story = Story::new(ssh);
    let sleep = unique_sleep(40);
    story.configure(
        &format!("touch ../../shared/hook-started; sleep {sleep}; touch ../../shared/migrated"),
        "hook_timeout = \"60s\"",
    );

    story.deploy_killed_mid_hook();
    let host = story.host(0);
    let running = remote::running(&host).expect("lists");
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0].job.what, "hook", "{running:?}");
    assert!(!processes(&sleep).is_empty());
    // `status` shows it too.
    story
        .slipway(&["status", "production"])
        .contains(&format!("{} still running", running[0]));

    let stopped = remote::stop_orphans(&host).expect("stops");
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    assert_eq!(stopped[0].job, running[0].job);
    assert_eq!(stopped[0].pgid, running[0].pgid);
    assert_eq!(stopped[0].how, Ended::Term, "{}", stopped[0]);
    assert!(processes(&sleep).is_empty(), "{:?}", processes(&sleep));
    assert!(story.pid_files(0).is_empty(), "{:?}", story.pid_files(0));
    assert!(remote::running(&host).expect("lists").is_empty());
    assert!(remote::stop_orphans(&host).expect("stops").is_empty());
}

stories_over_each_transport!(
    a_hook_past_its_timeout_is_dead_on_the_host_and_the_deploy_rolls_back,
    a_health_command_past_its_timeout_is_dead_on_every_host,
    a_hook_whose_runner_died_ends_at_its_own_deadline_on_the_host,
    stop_orphans_stops_a_hook_left_running_by_a_dead_runner,
);
