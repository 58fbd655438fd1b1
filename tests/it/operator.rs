//! The operator's day: commands run the way people run them.

use crate::support::run::{run, slipway};
use crate::support::{App, LocalHosts};

/// `slipway deploy` from a subfolder used to say "not a git repository";
/// like git, slipway now finds the repository from any folder inside it.
#[test]
fn slipway_finds_the_repository_from_a_subfolder() {
    let app = App::new("", &[("web/index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 1);
    app.commit(
        "Configure",
        &[("slipway.toml", &hosts.production_config(""))],
    );
    let sub = app.path().join("web");
    run(slipway(&sub), &["check"]).success();
    run(slipway(&sub), &["deploy", "production"]).success();
    assert!(hosts.current(0).is_some(), "deployed from web/");
}

/// A teammate's fresh clone has `origin/production` but no local
/// `production`: slipway used to fail with "Reference not found". With a
/// local `production` behind `origin/production`, it silently deployed the
/// older commit, rolling production back.
#[test]
fn a_fresh_clone_deploys_origin_production_and_a_stale_local_branch_is_refused() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 1);
    app.commit(
        "Configure",
        &[("slipway.toml", &hosts.production_config(""))],
    );
    let v2 = app.commit("v2", &[("index.html", "v2\n")]);
    let clone = app.scratch("clone");
    let status = std::process::Command::new("git")
        .args(["clone", "-q", "-b", "main"])
        .arg(app.path())
        .arg(&clone)
        .status()
        .unwrap();
    assert!(status.success());

    run(slipway(&clone), &["deploy", "production"])
        .success()
        .contains("no local branch `production`: deploying origin/production");
    let live = hosts.read(0, "current/index.html");
    assert_eq!(live.as_deref(), Some("v2\n"));

    // A local production one commit behind origin/production.
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .current_dir(&clone)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}");
    };
    git(&["branch", "--track", "production", "origin/production"]);
    git(&["branch", "-f", "production", &format!("{v2}~1")]);
    run(slipway(&clone), &["deploy", "production"])
        .failure(1)
        .contains("is behind origin/production")
        .contains("git pull --ff-only");
    assert_eq!(hosts.read(0, "current/index.html").as_deref(), Some("v2\n"));
    run(slipway(&clone), &["deploy", "production", "--force"]).success();
    assert_eq!(hosts.read(0, "current/index.html").as_deref(), Some("v1\n"));
}

/// Deploying the release that is already live used to close the cluster
/// and rerun the hook. Now it is a no-op that says so, unless --force.
#[test]
fn deploying_the_live_release_again_is_a_no_op_unless_forced() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 2);
    app.commit(
        "Configure",
        &[("slipway.toml", &hosts.production_config(""))],
    );
    app.slipway(&["deploy", "production"]).success();
    assert_eq!(hosts.history(0).len(), 1);
    app.slipway(&["deploy", "production"])
        .success()
        .contains("is already live on production; nothing to deploy")
        .lacks("switch");
    assert_eq!(hosts.history(0).len(), 1, "nothing recorded");
    app.slipway(&["deploy", "production", "--force"]).success();
    assert_eq!(hosts.history(0).len(), 2);
    assert!(
        hosts.history(0)[1]["previous"].is_null(),
        "a forced redeploy never records previous == release: {:?}",
        hosts.history(0)[1]
    );
}

/// A forced redeploy of the live release used to record previous ==
/// release, so `rollback` "rolled back" to the same release (closing the
/// site again). It goes to the release before.
#[test]
fn rollback_after_a_forced_redeploy_goes_to_the_release_before() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 2);
    app.commit(
        "Configure",
        &[("slipway.toml", &hosts.production_config(""))],
    );
    app.slipway(&["deploy", "production"]).success();
    let first = hosts.current(0).unwrap();
    app.commit("v2", &[("index.html", "v2\n")]);
    app.slipway(&["deploy", "production"]).success();
    let second = hosts.current(0).unwrap();
    app.slipway(&["deploy", "production", "--force"]).success();
    app.slipway(&["rollback", "production"])
        .success()
        .contains(&format!("rolled back to {first}"));
    assert_eq!(hosts.current(1).as_deref(), Some(first.as_str()));
    assert_ne!(first, second);
}

/// A commit older than the live one (here: `--ref` to the first commit
/// after the second is live) used to be deployed silently, rolling
/// production back. It is refused with the way back, unless --force.
#[test]
fn deploying_an_ancestor_of_the_live_commit_is_refused_unless_forced() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 2);
    app.commit(
        "Configure",
        &[("slipway.toml", &hosts.production_config(""))],
    );
    let old = app.head();
    app.commit("v2", &[("index.html", "v2\n")]);
    app.slipway(&["deploy", "production"]).success();
    let live = hosts.current(0).unwrap();
    app.slipway(&["deploy", "production", "--ref", &old])
        .failure(1)
        .contains("would roll production back")
        .contains("slipway rollback production --to");
    assert_eq!(
        hosts.current(0).as_deref(),
        Some(live.as_str()),
        "untouched"
    );
    app.slipway(&["deploy", "production", "--ref", &old, "--force"])
        .success();
    assert_ne!(hosts.current(0).as_deref(), Some(live.as_str()));
}

/// In CI jobs and containers `$USER` is often unset, and history said the
/// deployer was "unknown". git's user.name is the next best answer.
#[test]
fn the_deployer_falls_back_to_gits_user_name() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 1);
    app.commit(
        "Configure",
        &[("slipway.toml", &hosts.production_config(""))],
    );
    app.git(&["config", "user.name", "Dana Deployer"]);
    let mut cmd = slipway(app.path());
    for var in [
        "SLIPWAY_USER",
        "GL_USER",
        "REMOTE_USER",
        "GITHUB_ACTOR",
        "USER",
        "LOGNAME",
    ] {
        cmd.env_remove(var);
    }
    run(cmd, &["deploy", "production"]).success();
    assert_eq!(hosts.history(0)[0]["who"], "Dana Deployer");
}

/// Scripts read one JSON document from `deploy --json` (progress stays on
/// stderr): the plan for a dry run, the outcome for a deploy, and for a
/// refusal the outcome, exit code and error.
#[test]
fn deploy_json_is_one_document_for_scripts() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 2);
    app.commit(
        "Configure",
        &[("slipway.toml", &hosts.production_config(""))],
    );
    let doc = |run: &crate::support::Run| -> serde_json::Value {
        serde_json::from_str(&run.stdout())
            .unwrap_or_else(|e| panic!("stdout is one JSON document ({e}):\n{}", run.stdout()))
    };
    let dry = doc(&app
        .slipway(&["deploy", "production", "--dry-run", "--json"])
        .success());
    assert_eq!(dry["outcome"], "dry-run");
    let ops: Vec<&str> = dry["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops.first(), Some(&"lock"));
    assert!(
        ops.contains(&"switch") && ops.contains(&"commit"),
        "{ops:?}"
    );

    let done = doc(&app.slipway(&["deploy", "production", "--json"]).success());
    assert_eq!(done["outcome"], "deployed");
    assert_eq!(done["exit_code"], 0);
    assert_eq!(done["release"].as_str(), hosts.current(0).as_deref());
    assert!(done["duration_s"].as_f64().unwrap() > 0.0);

    let again = doc(&app.slipway(&["deploy", "production", "--json"]).success());
    assert_eq!(again["outcome"], "already-live");

    let refused = app.slipway(&["deploy", "nowhere", "--json"]).failure(2);
    let refused = doc(&refused);
    assert_eq!(refused["outcome"], "usage");
    assert_eq!(refused["exit_code"], 2);
    assert!(refused["error"].as_str().unwrap().contains("nowhere"));
}

/// An uncommitted edit to slipway.toml used to be checked as if it were
/// the committed one, and a deploy never mentioned uncommitted changes.
/// Both now say which commit they used and what the working tree holds.
#[test]
fn check_and_deploy_name_uncommitted_changes() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 1);
    app.commit(
        "Configure",
        &[("slipway.toml", &hosts.production_config(""))],
    );
    let committed = app.head();
    std::fs::write(
        app.path().join("slipway.toml"),
        hosts.production_config("keep_releases = 2"),
    )
    .unwrap();
    std::fs::write(app.path().join("index.html"), "v2, not committed\n").unwrap();
    app.slipway(&["check"])
        .success()
        .contains("differs from")
        .contains(&committed[..7]);
    app.slipway(&["deploy", "production"])
        .success()
        .contains("slipway.toml has uncommitted changes")
        .contains("uncommitted change(s)");
    let live = hosts.root(0).join("current/index.html");
    assert_eq!(
        std::fs::read_to_string(live).unwrap(),
        "v1\n",
        "the commit, not the tree"
    );
}
