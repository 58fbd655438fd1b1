//! A self-hosted git server: `git push` to a bare repository with slipway's
//! hooks deploys mapped branches, and the pre-receive hook guards them.

use std::time::{Duration, Instant};

use crate::support::server::{GitServer, push, push_command};
use crate::support::{App, LocalHosts};

fn config(hosts: &LocalHosts, hook: &str) -> String {
    format!(
        r#"[app]
name = "shop"

[environments.production]
branch = "production"
hosts = {hosts}
deploy_to = "{deploy_to}"
deploy_hook = "{hook}"

[environments.staging]
branch = "staging"
hosts = {hosts}
deploy_to = "/srv/staging"
"#,
        hosts = hosts.toml(),
        deploy_to = hosts.deploy_to,
    )
}

fn setup(hook: &str) -> (App, LocalHosts, GitServer) {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 3);
    app.commit(
        "Configure slipway",
        &[("slipway.toml", &config(&hosts, hook))],
    );
    let server = GitServer::new(&app);
    (app, hosts, server)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn pushing_production_deploys_and_the_pusher_reads_the_rollout() {
    let (app, hosts, server) = setup("true");
    let out = push(&app, "alice", &["origin", "production"], &[]);
    let seen = text(&out);
    assert!(out.status.success(), "{seen}");
    let release = hosts.current(0).expect("deployed");
    assert!((0..3).all(|i| hosts.current(i).as_deref() == Some(release.as_str())));
    assert!(
        seen.contains("remote:   switch"),
        "per-phase lines reach the pusher:\n{seen}"
    );
    let last = seen
        .lines()
        .rfind(|l| l.starts_with("remote:"))
        .unwrap_or_default();
    assert!(
        last.contains(&format!("production is live on {release}")),
        "last line: {last}\n{seen}"
    );
    assert_eq!(
        server.branch("production").as_deref(),
        Some(app.head().as_str())
    );
    assert_eq!(hosts.history(0)[0]["who"], "alice");
}

#[test]
fn unmapped_and_deleted_branches_deploy_nothing_with_one_line() {
    let (app, hosts, _server) = setup("true");
    let out = push(&app, "alice", &["origin", "production:master"], &[]);
    assert!(out.status.success());
    assert!(
        text(&out).contains("`master` deploys to no environment; nothing to do"),
        "{}",
        text(&out)
    );
    assert!(hosts.current(0).is_none());

    let out = push(&app, "alice", &["origin", "production:staging"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        hosts.roots[0].join("srv/staging/current").exists(),
        "staging deployed"
    );
    assert!(
        hosts.current(0).is_none(),
        "production untouched by a staging deploy"
    );
    let out = push(&app, "alice", &["origin", ":staging"], &[]);
    assert!(out.status.success());
    assert!(
        text(&out).contains("branch `staging` was deleted; nothing to deploy"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_push_with_a_broken_config_is_refused_before_it_lands() {
    let (app, hosts, server) = setup("true");
    push(&app, "alice", &["origin", "production"], &[]);
    let good = server.branch("production");
    app.commit(
        "Typo",
        &[(
            "slipway.toml",
            &config(&hosts, "true").replace("deploy_to", "deploy_too"),
        )],
    );
    let out = push(&app, "alice", &["origin", "production"], &[]);
    let seen = text(&out);
    assert!(!out.status.success(), "{seen}");
    assert!(seen.contains("slipway.toml:"), "{seen}");
    assert!(
        seen.contains("environments.production.deploy_too"),
        "{seen}"
    );
    assert_eq!(server.branch("production"), good, "the branch did not move");
}

#[test]
fn only_the_allow_list_may_push_to_protected_branches() {
    let (app, hosts, server) = setup("true");
    std::fs::write(
        server.git_dir.join("slipway-allow.toml"),
        "[branches]\nproduction = [\"alice\"]\nstaging = [\"alice\", \"carol\"]\n",
    )
    .unwrap();
    let out = push(&app, "carol", &["origin", "production"], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("carol may not push to this branch"),
        "{}",
        text(&out)
    );
    assert!(server.branch("production").is_none());
    assert!(hosts.current(0).is_none());

    let out = push(&app, "carol", &["origin", "production:staging"], &[]);
    assert!(out.status.success(), "{}", text(&out));

    let out = push(&app, "", &["origin", "production"], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("identity is unknown"), "{}", text(&out));

    let out = push(&app, "alice", &["origin", "production"], &[]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn concurrent_pushes_deploy_one_after_the_other_and_the_later_commit_wins() {
    let (app, hosts, _server) = setup("sleep 2");
    let first = app.commit("First", &[("index.html", "first\n")]);
    let a = push_command(
        &app,
        "alice",
        &["origin", &format!("{first}:refs/heads/production")],
        &[],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let lock = hosts.root(0).join(".slipway/lock");
    let started = Instant::now();
    while !lock.exists() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(lock.exists(), "the first rollout took the lock");
    let second = app.commit("Second", &[("index.html", "second\n")]);
    let b = push(
        &app,
        "bob",
        &["origin", &format!("{second}:refs/heads/production")],
        &[],
    );
    let a_out = a.wait_with_output().unwrap();
    assert!(a_out.status.success(), "{}", text(&a_out));
    assert!(b.status.success(), "{}", text(&b));
    assert!(
        text(&b).contains("waiting for the lock on production, held by alice"),
        "{}",
        text(&b)
    );
    let history = hosts.history(0);
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["commit"].as_str(), Some(first.as_str()));
    assert_eq!(history[1]["commit"].as_str(), Some(second.as_str()));
    for i in 0..3 {
        assert_eq!(
            hosts.read(i, "current/index.html").as_deref(),
            Some("second\n")
        );
    }
}

#[test]
fn detached_mode_returns_at_once_and_the_rollout_completes() {
    let (app, hosts, server) = setup("sleep 3");
    let started = Instant::now();
    let out = push(
        &app,
        "alice",
        &["origin", "production"],
        &[("SLIPWAY_DETACH", "1")],
    );
    let returned = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("in the background"), "{}", text(&out));
    assert!(
        hosts.current(0).is_none(),
        "the push returned before the switch ({returned:?})"
    );
    let log_path = server.git_dir.join("slipway/production.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log().contains("deployed ") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(log().contains("deployed "), "{}", log());
    assert!(
        (0..3).all(|i| hosts.current(i).is_some()),
        "the background rollout finished"
    );
    let status = crate::support::run::run(
        crate::support::run::slipway(app.path()),
        &[
            "--repo",
            server.git_dir.to_str().unwrap(),
            "status",
            "production",
        ],
    );
    assert!(
        status.text().contains("background deploy log:"),
        "{}",
        status.text()
    );
}

#[test]
fn push_options_skip_or_dry_run_the_deploy() {
    let (app, hosts, server) = setup("true");
    let out = push(
        &app,
        "alice",
        &["-o", "slipway.skip-deploy", "origin", "production"],
        &[],
    );
    assert!(out.status.success());
    assert!(
        text(&out).contains("skipped (push option slipway.skip-deploy)"),
        "{}",
        text(&out)
    );
    assert!(
        server.branch("production").is_some(),
        "the push itself landed"
    );
    app.commit("Next", &[("index.html", "v2\n")]);
    let out = push(
        &app,
        "alice",
        &["-o", "slipway.dry-run", "origin", "production"],
        &[],
    );
    assert!(text(&out).contains("dry run"), "{}", text(&out));
    assert!(hosts.current(0).is_none());
}

#[test]
fn hook_install_is_idempotent_and_keeps_an_existing_hook() {
    let app = App::new("[app]\nname = \"x\"\n", &[]);
    let bare = app.scratch("bare.git");
    std::process::Command::new("git")
        .args(["init", "-q", "--bare"])
        .arg(&bare)
        .status()
        .unwrap();
    let mine = bare.join("hooks/post-receive");
    std::fs::write(&mine, "#!/bin/sh\necho mine >> \"$GIT_DIR/mine.log\"\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let server = crate::support::server::GitServer {
        git_dir: bare.clone(),
    };
    server
        .reinstall(&app)
        .success()
        .contains("kept your existing post-receive hook");
    server.reinstall(&app).success().lacks("kept your existing");
    assert!(
        std::fs::read_to_string(bare.join("hooks/post-receive.user"))
            .unwrap()
            .contains("mine")
    );
    app.git(&["remote", "add", "origin", bare.to_str().unwrap()]);
    let out = push(&app, "alice", &["origin", "main"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(bare.join("mine.log").exists(), "the user's hook still runs");
    assert!(
        text(&out).contains("deploys to no environment"),
        "{}",
        text(&out)
    );
}

/// The way users really push: `git push` over SSH to a git server (a real
/// sshd), whose hooks deploy to three more sshd hosts.
#[test]
fn a_push_over_ssh_deploys_to_three_ssh_hosts_and_the_pusher_sees_it() {
    use crate::support::sshd::SshCluster;
    let cluster = SshCluster::start(3);
    let git_host = cluster.extra_server();
    let app = App::new("", &[("index.html", "v1\n")]);
    let config = format!(
        "[app]\nname = \"shop\"\n\n[environments.production]\nbranch = \"production\"\nhosts = {}\ndeploy_to = \"{}\"\ndeploy_hook = \"true\"\n",
        cluster.hosts_toml(),
        cluster.deploy_to
    );
    app.commit("Configure slipway", &[("slipway.toml", &config)]);
    let bare = app.scratch("server.git");
    app.git(&["init", "-q", "--bare", bare.to_str().unwrap()]);
    let known = cluster.known_hosts.to_str().unwrap();
    let key = cluster.keys.private.to_str().unwrap();
    app.slipway(&[
        "hook",
        "install",
        "--git-dir",
        bare.to_str().unwrap(),
        "--setenv",
        &format!("SLIPWAY_KNOWN_HOSTS={known}"),
        "--setenv",
        &format!("SLIPWAY_IDENTITY={key}"),
    ])
    .success();
    let url = format!("ssh://root@{}{}", git_host.address(), bare.display());
    app.git(&["remote", "add", "origin", &url]);
    let ssh = format!(
        "ssh -i {key} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={known}"
    );
    let out = push(
        &app,
        "alice",
        &["origin", "production"],
        &[("GIT_SSH_COMMAND", &ssh)],
    );
    let seen = text(&out);
    assert!(out.status.success(), "{seen}");
    let hosts = LocalHosts {
        roots: cluster.roots.clone(),
        deploy_to: cluster.deploy_to.clone(),
    };
    let release = hosts.current(0).expect("deployed over SSH");
    assert!((0..3).all(|i| hosts.current(i).as_deref() == Some(release.as_str())));
    assert!(seen.contains("remote:   stage"), "{seen}");
    assert!(
        seen.contains(&format!("production is live on {release}")),
        "{seen}"
    );
}

#[test]
fn a_forced_non_fast_forward_push_to_production_is_refused_when_configured() {
    let (app, _hosts, server) = setup("true");
    std::fs::write(
        server.git_dir.join("slipway-allow.toml"),
        "refuse_non_fast_forward = [\"production\"]\n",
    )
    .unwrap();
    assert!(
        push(&app, "alice", &["origin", "production"], &[])
            .status
            .success()
    );
    let landed = server.branch("production");
    app.git(&["commit", "-q", "--amend", "-m", "Rewritten history"]);
    let out = push(&app, "alice", &["--force", "origin", "production"], &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not a fast-forward"), "{}", text(&out));
    assert_eq!(
        server.branch("production"),
        landed,
        "the branch did not move"
    );
}
