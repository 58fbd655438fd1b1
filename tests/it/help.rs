//! The operator's first hour (issue 15, "Install and help"): `init`,
//! completions and the man page, and the small traps a new user falls
//! into: a mistyped `--identity`, and `check` changing the hosts it checks.

use crate::support::{App, LocalHosts};

/// `check` is a look, not a change: it used to `mkdir -p` deploy_to on
/// every host as a side effect. It must still say the host can take a
/// deploy (the parent is writable), and leave no trace.
#[test]
fn check_creates_nothing_on_the_hosts() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 3);
    app.commit(
        "Configure slipway",
        &[("slipway.toml", &hosts.production_config(""))],
    );
    let run = app.slipway(&["check", "production"]).success();
    assert_eq!(
        run.stdout()
            .lines()
            .filter(|l| l.contains("does not exist yet (the first deploy creates it"))
            .count(),
        3,
        "{}",
        run.text()
    );
    for i in 0..3 {
        assert!(
            !hosts.root(i).exists(),
            "check created {}",
            hosts.root(i).display()
        );
        let parent = hosts.roots[i].join("srv");
        assert!(!parent.exists(), "check created {}", parent.display());
    }
    // Once a deploy has created it, check reports it as writable.
    app.slipway(&["deploy", "production"]).success();
    app.slipway(&["check", "production"])
        .success()
        .contains("/srv/app writable");
}

/// `-i /nonexistent` was accepted silently; the user learnt of the typo
/// only from an SSH failure much later, if at all.
#[test]
fn a_missing_identity_file_is_an_error_naming_it() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 1);
    app.commit(
        "Configure slipway",
        &[("slipway.toml", &hosts.production_config(""))],
    );
    let missing = app.path().join("no-such-key");
    let missing = missing.to_str().expect("utf-8 path");
    app.slipway(&["check", "production", "--identity", missing])
        .failure(2)
        .contains(&format!("identity file {missing} does not exist"));
    app.slipway_env(&["status", "production"], &[("SLIPWAY_IDENTITY", missing)])
        .failure(2)
        .contains(missing);
}
