//! Faults with real processes: the real binary deploying over real sshd
//! hosts, each behind a real nginx configured by `slipway nginx`, under the
//! load loop, and the runner killed, interrupted or cut off. Each story is
//! one a deployer lives through; the load log proves what users saw.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::strategies::{SshWeb, release, version};
use crate::support::nginx::{Load, Response};
use crate::support::run::{slipway_for, ssh_flags};

/// The deploy hook touches a marker, then sleeps: the cluster is closed
/// and switched while it runs, the window the stories strike in.
const SLOW_HOOK: &str = r#"deploy_hook = "touch ../../shared/hook-started && sleep 3""#;

/// `slipway deploy production` over the cluster's SSH, as a child process
/// whose output is kept.
fn spawn_deploy(web: &SshWeb) -> Child {
    let flags = ssh_flags(&web.cluster);
    slipway_for(web.app.path(), &web.cluster)
        .args(["deploy", "production"])
        .args(&flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("slipway starts")
}

fn wait_for(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("slipway ended ({status}) before {}: {err}", path.display());
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -{name}");
}

/// Users only ever got 200s and 503s with Retry-After, and only `served`.
#[track_caller]
fn assert_only(log: &[Vec<Response>], served: u32) {
    let all: Vec<&Response> = log.iter().flatten().collect();
    assert!(all.len() > 50, "the load loop ran ({} requests)", all.len());
    let odd: Vec<_> = all
        .iter()
        .filter(|r| !(r.status == 200 || (r.status == 503 && r.retry_after)))
        .collect();
    assert!(odd.is_empty(), "only 200s and 503s: {:?}", odd.first());
    let versions: std::collections::BTreeSet<u32> = all.iter().filter_map(|r| version(r)).collect();
    assert_eq!(
        versions,
        [served].into(),
        "users were served only version {served}"
    );
}

/// Every host open on `release`, no journal, no lock.
#[track_caller]
fn assert_settled(web: &SshWeb, release: &str) {
    for i in 0..3 {
        assert_eq!(web.hosts.current(i).as_deref(), Some(release), "host {i}");
        assert!(!web.hosts.is_closed(i), "host {i} is open");
        assert!(
            web.hosts.read(i, ".slipway/journal.json").is_none(),
            "host {i} has no journal"
        );
        assert!(
            web.hosts.read(i, ".slipway/lock").is_none(),
            "host {i} has no lock"
        );
    }
}

/// A gated cluster on version 1, served by nginx under load, version 2
/// committed and ready to deploy.
fn closed_window_story() -> (SshWeb, Vec<crate::support::nginx::Nginx>, Load, String) {
    let web = SshWeb::new(SLOW_HOOK);
    web.slipway(&["deploy", "production"]).success();
    let v1 = web.hosts.current(0).expect("deployed");
    // The first deploy ran the hook too: its marker is not the story's.
    std::fs::remove_file(web.hosts.root(0).join("shared/hook-started")).expect("marker");
    let nginx = web.servers();
    let load = Load::start(
        &nginx.iter().map(|n| n.addr).collect::<Vec<_>>(),
        "/version.txt",
        200_000,
    );
    release(&web.app, 2);
    (web, nginx, load, v1)
}

/// The issue: slipway killed (SIGKILL, a lost CI runner) while the cluster
/// was closed left it closed with no way back but hand work. Now one
/// `recover` undoes it — it never committed — and opens every host on the
/// release it ran, and users never saw two versions.
#[test]
fn slipway_killed_in_the_closed_window_then_one_recover_opens_every_host_on_one_release() {
    let (web, _nginx, load, v1) = closed_window_story();
    let mut deploy = spawn_deploy(&web);
    wait_for(&web.hosts.root(0).join("shared/hook-started"), &mut deploy);
    signal(&deploy, "KILL");
    deploy.wait().expect("killed");
    assert!(web.hosts.is_closed(1), "the kill caught the cluster closed");

    web.slipway(&["recover", "production"])
        .success()
        .contains("undoing it");
    std::thread::sleep(Duration::from_millis(300));
    assert_settled(&web, &v1);
    assert_only(&load.finish(), 1);
}

/// The issue: Ctrl-C in the closed window either did nothing visible or
/// left hosts closed. Now slipway says what it does, finishes the step in
/// flight, puts every host back open on the release it ran, exits 3; a
/// second Ctrl-C says what it still waits for.
#[test]
fn sigint_in_the_closed_window_says_what_it_does_and_puts_every_host_back_open() {
    let (web, _nginx, load, v1) = closed_window_story();
    let mut deploy = spawn_deploy(&web);
    wait_for(&web.hosts.root(0).join("shared/hook-started"), &mut deploy);
    signal(&deploy, "INT");
    std::thread::sleep(Duration::from_millis(500));
    signal(&deploy, "INT");
    let out = deploy.wait_with_output().expect("slipway ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("SIGINT: finishing hook"),
        "the first SIGINT says what happens: {stderr}"
    );
    assert!(
        stderr.contains("still waiting for hook"),
        "the second says what it waits for: {stderr}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_settled(&web, &v1);
    assert_only(&load.finish(), 1);
}

/// The issue: `slipway deploy production | head -1` panicked on the closed
/// pipe half way through the rollout. Output to a reader that went away is
/// not a reason to stop: the rollout completes and slipway exits 0.
#[test]
fn a_deploy_piped_into_head_completes_and_exits_0() {
    let web = SshWeb::new("");
    web.slipway(&["deploy", "production"]).success();
    release(&web.app, 2);
    let bin = env!("CARGO_BIN_EXE_slipway");
    let flags = ssh_flags(&web.cluster);
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#""$0" "$@" | head -1; exit "${PIPESTATUS[0]}""#)
        .arg(bin)
        .args(["deploy", "production"])
        .args(&flags)
        .current_dir(web.app.path())
        .env("HOME", web.cluster.path("home"))
        .env_remove("SSH_AUTH_SOCK")
        .env("CI", "true")
        .env("SLIPWAY_USER", "tester")
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let releases: std::collections::BTreeSet<_> = (0..3).map(|i| web.hosts.current(i)).collect();
    assert_eq!(releases.len(), 1, "one release everywhere: {releases:?}");
    for i in 0..3 {
        assert_eq!(
            web.hosts.read(i, "current/public/version.txt").as_deref(),
            Some("2\n"),
            "host {i} serves version 2"
        );
        assert!(!web.hosts.is_closed(i));
    }
}

/// The issue: a host lost right after the cluster opened (its sshd gone
/// while its workers start) left the deploy claiming success or undoing
/// what already served. Now the deploy exits 4 naming that host, the
/// others serve the new release, and once the host answers again one
/// `recover` finishes it there. The harness cannot restart an sshd with
/// the same host key, so the host is cut off by freezing its sshd (SIGSTOP
/// to the listener and every connection) and brought back by thawing it.
#[test]
fn a_host_lost_right_after_open_is_named_and_recover_finishes_it() {
    let web = SshWeb::new(
        r#"workers = { start = "touch ../../shared/workers-started && sleep 2", stop = "true" }"#,
    );
    web.slipway(&["deploy", "production"]).success();
    for i in 0..3 {
        std::fs::remove_file(web.hosts.root(i).join("shared/workers-started")).expect("marker");
    }
    let nginx = web.servers();
    let load = Load::start(
        &nginx.iter().map(|n| n.addr).collect::<Vec<_>>(),
        "/version.txt",
        200_000,
    );
    release(&web.app, 2);
    let flags = ssh_flags(&web.cluster);
    let mut deploy = slipway_for(web.app.path(), &web.cluster)
        .args(["deploy", "production", "--command-timeout", "5s"])
        .args(["--connect-timeout", "3s"])
        .args(&flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("slipway starts");
    // Host 3 starts its workers: it is open on the new release already.
    wait_for(
        &web.hosts.root(2).join("shared/workers-started"),
        &mut deploy,
    );
    web.cluster.hosts[2].freeze();
    let out = deploy.wait_with_output().expect("slipway ends");
    web.cluster.hosts[2].thaw();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(4), "{text}");
    let lost = web.cluster.hosts[2].spec("root");
    assert!(text.contains(&lost), "names the lost host: {text}");
    assert!(
        web.hosts.read(2, ".slipway/journal.json").is_some(),
        "the lost host keeps its journal"
    );
    let v2 = web.hosts.current(0).expect("host 1 live");
    assert_eq!(web.hosts.current(1).as_deref(), Some(v2.as_str()));

    web.slipway(&["recover", "production"])
        .success()
        .contains("finishing it");
    std::thread::sleep(Duration::from_millis(300));
    assert_settled(&web, &v2);
    let log = load.finish();
    let all: Vec<&Response> = log.iter().flatten().collect();
    let last_old = all
        .iter()
        .filter(|r| version(r) == Some(1))
        .map(|r| r.started)
        .max();
    let first_new = all
        .iter()
        .filter(|r| version(r) == Some(2))
        .map(|r| r.started)
        .min();
    assert!(
        matches!((last_old, first_new), (Some(a), Some(b)) if a < b),
        "never two versions served at once"
    );
}
