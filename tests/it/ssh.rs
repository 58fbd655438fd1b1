//! The gated rollout over real SSH: three OpenSSH servers on loopback
//! addresses, the real binary, strict host keys. Each test is one story a
//! user could live through, told once and run over each transport slipway
//! ships (`--ssh openssh` and `--ssh libssh2`; see the modules at the end).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::run::{Run, run, run_over_ssh, slipway_for};
use crate::support::sshd::{Keys, SshCluster};
use crate::support::{App, LocalHosts};

/// A shop app deployed to an SSH cluster; the hook leaves one line per run
/// in the host's shared dir.
struct Story {
    /// `--ssh` for every run: the transport under test.
    ssh: &'static str,
    app: App,
    cluster: SshCluster,
    hosts: LocalHosts,
}

fn config(cluster: &SshCluster, hook: &str, extra: &str) -> String {
    format!(
        r#"[app]
name = "shop"
keep_releases = 3

[shared]
dirs = ["public/uploads"]

[environments.production]
branch = "production"
hosts = {hosts}
deploy_to = "{deploy_to}"
deploy_hook = "{hook}"
{extra}
"#,
        hosts = cluster.hosts_toml(),
        deploy_to = cluster.deploy_to,
    )
}

const HOOK: &str = r#"echo \"$SLIPWAY_RELEASE\" >> ../../shared/hook.log"#;

impl Story {
    fn new(ssh: &'static str, hook: &str, extra: &str) -> Self {
        let cluster = SshCluster::start(3);
        let app = App::new("", &[("public/index.html", "v1\n")]);
        app.commit(
            "Configure slipway",
            &[("slipway.toml", &config(&cluster, hook, extra))],
        );
        let hosts = LocalHosts {
            roots: cluster.roots.clone(),
            deploy_to: cluster.deploy_to.clone(),
        };
        Self {
            ssh,
            app,
            cluster,
            hosts,
        }
    }

    /// `slipway <args>` with the cluster's known_hosts and key.
    fn slipway(&self, args: &[&str]) -> Run {
        let mut all = args.to_vec();
        all.extend(["--ssh", self.ssh]);
        run_over_ssh(self.app.path(), &self.cluster, &all)
    }

    /// `slipway <args> <auth>` with the cluster's known_hosts.
    fn slipway_with(&self, args: &[&str], auth: &[&str]) -> Run {
        let known = self.cluster.known_hosts.to_str().expect("utf-8");
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--ssh", self.ssh, "--known-hosts", known]);
        all.extend(auth);
        run(slipway_for(self.app.path(), &self.cluster), &all)
    }

    fn hook_runs(&self) -> Vec<usize> {
        (0..3)
            .map(|i| {
                self.hosts
                    .read(i, "shared/hook.log")
                    .unwrap_or_default()
                    .lines()
                    .count()
            })
            .collect()
    }

    /// Nothing at all under any host's deploy root.
    #[track_caller]
    fn assert_untouched(&self) {
        for i in 0..3 {
            let entries: Vec<_> = std::fs::read_dir(self.hosts.root(i))
                .map(|rd| rd.filter_map(Result::ok).map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(entries.is_empty(), "host {i} was touched: {entries:?}");
        }
    }
}

fn fingerprint(public_key_file: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public_key_file)
        .output()
        .expect("ssh-keygen runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("a fingerprint")
        .to_owned()
}

fn a_gated_deploy_over_ssh_switches_all_three_hosts_and_runs_the_hook_once(ssh: &'static str) {
    let story = Story::new(ssh, HOOK, "");
    let run = story.slipway(&["deploy", "production"]).success();
    let id = story.hosts.current(0).expect("host 1 has a release");
    for i in 0..3 {
        assert_eq!(
            story.hosts.current(i).as_deref(),
            Some(id.as_str()),
            "host {i}"
        );
        assert_eq!(
            story.hosts.read(i, "current/public/index.html").as_deref(),
            Some("v1\n"),
            "the artifact arrived intact on host {i}"
        );
        assert!(!story.hosts.is_closed(i), "host {i} is open");
        let history = story.hosts.history(i);
        assert_eq!(history.len(), 1, "host {i}");
        assert_eq!(history[0]["outcome"], "success");
        assert!(!story.hosts.root(i).join(".slipway/lock").exists());
    }
    assert_eq!(
        story.hook_runs(),
        [1, 0, 0],
        "the hook ran on the first host only"
    );
    assert!(run.stdout().contains(&id), "{}", run.text());
    // The hosts really are separate directories behind one deploy_to.
    assert_ne!(story.hosts.root(0), story.hosts.root(1));
}

fn an_unknown_host_key_is_refused_with_its_fingerprint_until_accepted(ssh: &'static str) {
    let story = Story::new(ssh, HOOK, "");
    let unknown = &story.cluster.hosts[2];
    let line = unknown.known_hosts_line();
    let known = std::fs::read_to_string(&story.cluster.known_hosts).unwrap();
    std::fs::write(
        &story.cluster.known_hosts,
        known.replace(&format!("{line}\n"), ""),
    )
    .unwrap();

    let run = story.slipway(&["deploy", "production"]).failure(1);
    let fp = fingerprint(&unknown.dir.path().join("host_ed25519.pub"));
    assert!(fp.starts_with("SHA256:"));
    run.contains(&unknown.spec("root"))
        .contains("not known")
        .contains(&fp)
        .contains(&line)
        .contains("--accept-new-host-keys");
    story.assert_untouched();

    story
        .slipway(&["deploy", "production", "--accept-new-host-keys"])
        .success();
    // Learnt as `ssh` learns it (hashed where ssh_config says HashKnownHosts).
    let key = unknown.host_key.split_whitespace().nth(1).unwrap();
    let found = Command::new("ssh-keygen")
        .args(["-F", &format!("[{}]:{}", unknown.ip, unknown.port), "-f"])
        .arg(&story.cluster.known_hosts)
        .output()
        .expect("ssh-keygen runs");
    let found = String::from_utf8_lossy(&found.stdout);
    assert!(found.contains(key), "the key was added:\n{found}");
    assert!((0..3).all(|i| story.hosts.current(i).is_some()));
    // Now known: no flag needed.
    story.slipway(&["status", "production"]).success();
}

fn a_changed_host_key_is_refused_even_with_accept_new(ssh: &'static str) {
    let story = Story::new(ssh, HOOK, "");
    let impostor = Keys::generate();
    let host = &story.cluster.hosts[1];
    let forged = format!("[{}]:{} {}", host.ip, host.port, {
        let mut parts = impostor.public.split_whitespace();
        format!("{} {}", parts.next().unwrap(), parts.next().unwrap())
    });
    let known = std::fs::read_to_string(&story.cluster.known_hosts).unwrap();
    let before = known.replace(&host.known_hosts_line(), &forged);
    std::fs::write(&story.cluster.known_hosts, &before).unwrap();

    for extra in [&[][..], &["--accept-new-host-keys"][..]] {
        let mut args = vec!["deploy", "production"];
        args.extend(extra);
        story
            .slipway(&args)
            .failure(1)
            .contains(&host.spec("root"))
            .contains("CHANGED")
            .contains("man-in-the-middle")
            .contains(&fingerprint(&host.dir.path().join("host_ed25519.pub")));
    }
    story.assert_untouched();
    assert_eq!(
        std::fs::read_to_string(&story.cluster.known_hosts).unwrap(),
        before,
        "known_hosts is never rewritten for a changed key"
    );
}

fn a_key_the_hosts_do_not_accept_fails_naming_host_user_and_key(ssh: &'static str) {
    let story = Story::new(ssh, HOOK, "");
    let stranger = Keys::generate();
    let key = stranger.private.to_str().unwrap();
    let host = &story.cluster.hosts[0];
    story
        .slipway_with(&["deploy", "production"], &["--identity", key])
        .failure(1)
        .contains("no key was accepted for")
        .contains(&format!("root@{}:{}", host.ip, host.port))
        .contains(key)
        .lacks("PRIVATE KEY");
    story.assert_untouched();
}

fn a_host_that_is_down_stops_the_deploy_before_anything_changes(ssh: &'static str) {
    let mut story = Story::new(ssh, HOOK, "");
    story.slipway(&["deploy", "production"]).success();
    let first = story.hosts.current(0).unwrap();
    story.app.commit("Second", &[("public/index.html", "v2\n")]);
    let down = story.cluster.hosts[1].spec("root");
    story.cluster.hosts[1].stop();

    story
        .slipway(&["deploy", "production"])
        .failure(1)
        .contains(&down)
        .contains("nothing was changed");
    for i in 0..3 {
        assert_eq!(
            story.hosts.current(i).as_deref(),
            Some(first.as_str()),
            "host {i}"
        );
        assert_eq!(
            story.hosts.releases(i).len(),
            1,
            "nothing staged on host {i}"
        );
        assert_eq!(story.hosts.history(i).len(), 1);
        assert!(!story.hosts.is_closed(i));
    }
    assert_eq!(story.hook_runs(), [1, 0, 0]);
}

fn a_host_frozen_mid_deploy_fails_in_bounded_time_and_the_rest_roll_back(ssh: &'static str) {
    let hook = "touch ../../shared/hook-started; sleep 3";
    let health =
        r#"health = { command = "test -f public/index.html", timeout = "3s", retries = 1 }"#;
    let story = Story::new(ssh, hook, health);
    story.slipway(&["deploy", "production"]).success();
    let first = story.hosts.current(0).unwrap();
    std::fs::remove_file(story.hosts.root(0).join("shared/hook-started")).unwrap();
    story.app.commit("Second", &[("public/index.html", "v2\n")]);

    let started = Instant::now();
    let run = std::thread::scope(|scope| {
        let deploy = scope.spawn(|| {
            story.slipway(&[
                "deploy",
                "production",
                "--command-timeout",
                "5s",
                "--connect-timeout",
                "3s",
            ])
        });
        // Freeze host 3 while host 1 runs the hook, i.e. after the switch.
        let marker = story.hosts.root(0).join("shared/hook-started");
        while !marker.exists() && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(marker.exists(), "the hook never started");
        story.cluster.hosts[2].freeze();
        deploy.join().expect("slipway finished")
    });
    let took = started.elapsed();
    story.cluster.hosts[2].thaw();

    assert!(
        took < Duration::from_secs(60),
        "took {took:?}:\n{}",
        run.text()
    );
    let frozen = story.cluster.hosts[2].spec("root");
    let run = run.failure(4).contains(&frozen);
    for i in 0..2 {
        assert_eq!(
            story.hosts.current(i).as_deref(),
            Some(first.as_str()),
            "host {i} is back on the previous release:\n{}",
            run.text()
        );
        assert!(!story.hosts.is_closed(i), "host {i} is open");
    }
    assert!(story.hosts.is_closed(2), "the frozen host stays closed");
}

fn hosts_behind_a_jump_host_deploy_through_one_bastion(ssh: &'static str) {
    let story = Story::new(ssh, HOOK, "");
    let jump = story.cluster.extra_server();
    let ssh_config = story.cluster.path("ssh_config");
    let targets: Vec<&str> = story.cluster.hosts.iter().map(|h| h.ip.as_str()).collect();
    std::fs::write(
        &ssh_config,
        format!(
            "Host bastion\n  HostName {}\n  Port {}\n  User root\n\nHost {}\n  ProxyJump bastion\n",
            jump.ip,
            jump.port,
            targets.join(" ")
        ),
    )
    .unwrap();
    let config = ssh_config.to_str().unwrap();

    story
        .slipway(&["deploy", "production", "--ssh-config", config])
        .success();
    let id = story.hosts.current(0).unwrap();
    assert!((0..3).all(|i| story.hosts.current(i).as_deref() == Some(id.as_str())));

    // `--jump` works too, and the traffic really goes through the bastion:
    // with it gone, `status` marks every host UNREACHABLE that way (exit 4).
    story
        .slipway(&["status", "production", "--jump", &jump.spec("root")])
        .success()
        .contains(&id);
    let mut jump = jump;
    jump.stop();
    story
        .slipway(&["status", "production", "--ssh-config", config])
        .failure(4)
        .contains(&format!(
            "{}  UNREACHABLE",
            story.cluster.hosts[0].spec("root")
        ))
        .contains("through the jump host bastion");
}

fn a_key_file_with_crlf_and_no_final_newline_still_logs_in(ssh: &'static str) {
    let story = Story::new(ssh, HOOK, "");
    let key = std::fs::read_to_string(&story.cluster.keys.private).unwrap();
    let mangled = key.trim_end().replace('\n', "\r\n");
    assert!(mangled.contains("\r\n") && !mangled.ends_with('\n'));
    let path = story.cluster.path("windows_key");
    std::fs::write(&path, mangled).unwrap();
    story
        .slipway_with(
            &["status", "production"],
            &["--identity", path.to_str().unwrap()],
        )
        .success()
        .contains("open");
}

fn check_reports_every_host_and_names_the_one_that_is_down(ssh: &'static str) {
    let mut story = Story::new(ssh, HOOK, "");
    let run = story.slipway(&["check", "production"]).success();
    let ok_lines = run
        .stdout()
        .lines()
        .filter(|l| l.contains("ok: host key verified"))
        .count();
    assert_eq!(ok_lines, 3, "{}", run.text());
    assert!(
        run.text().contains("writable") && run.text().contains("GiB free"),
        "{}",
        run.text()
    );

    let down = story.cluster.hosts[2].spec("root");
    story.cluster.hosts[2].stop();
    let run = story.slipway(&["check", "production"]).failure(4);
    let stdout = run.stdout();
    let failed: Vec<&str> = stdout.lines().filter(|l| l.contains("FAILED")).collect();
    assert_eq!(failed.len(), 1, "{}", run.text());
    assert!(failed[0].contains(&down), "{}", run.text());
    assert_eq!(
        run.stdout().lines().filter(|l| l.contains("ok: ")).count(),
        2
    );
    story.assert_untouched();
}

stories_over_each_transport!(
    a_gated_deploy_over_ssh_switches_all_three_hosts_and_runs_the_hook_once,
    an_unknown_host_key_is_refused_with_its_fingerprint_until_accepted,
    a_changed_host_key_is_refused_even_with_accept_new,
    a_key_the_hosts_do_not_accept_fails_naming_host_user_and_key,
    a_host_that_is_down_stops_the_deploy_before_anything_changes,
    a_host_frozen_mid_deploy_fails_in_bounded_time_and_the_rest_roll_back,
    hosts_behind_a_jump_host_deploy_through_one_bastion,
    a_key_file_with_crlf_and_no_final_newline_still_logs_in,
    check_reports_every_host_and_names_the_one_that_is_down,
);
