//! What slipway prints must never be able to hurt a rollout.

use std::process::Stdio;

use crate::support::run::slipway;
use crate::support::{App, LocalHosts};

/// `slipway deploy production | head -1` used to panic on the broken pipe
/// (exit 101) in the middle of the rollout. Now a closed stdout and stderr
/// only lose lines: the rollout finishes and the exit code is exact.
#[test]
fn a_closed_stdout_and_stderr_never_abort_a_rollout_or_panic() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 3);
    let config = hosts.production_config("deploy_hook = \"true\"\n");
    app.commit("Configure", &[("slipway.toml", &config)]);
    let mut child = slipway(app.path())
        .args(["deploy", "production"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("slipway starts");
    // Both readers go away at once, like `head` that already has its line.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().expect("slipway ends");
    assert_eq!(status.code(), Some(0), "exit {status:?}");
    let release = hosts.current(0).expect("deployed");
    assert!((0..3).all(|i| hosts.current(i).as_deref() == Some(release.as_str())));
    assert!((0..3).all(|i| !hosts.is_closed(i)), "every host open");
}
