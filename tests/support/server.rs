//! A self-hosted git server: a bare repository with slipway's hooks
//! installed, pushed to with the real `git push`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::app::App;
use super::run::{Run, run, slipway};

pub struct GitServer {
    pub git_dir: PathBuf,
}

impl GitServer {
    /// A bare repository beside `app`, hooks installed by `slipway hook
    /// install`, and `app`'s remote `origin` pointing at it.
    pub fn new(app: &App) -> Self {
        let git_dir = app.scratch("server.git");
        git(&git_dir, &["init", "-q", "--bare", "-b", "main"]);
        git(
            &git_dir,
            &["config", "receive.advertisePushOptions", "true"],
        );
        let install = run(
            slipway(app.path()),
            &["hook", "install", "--git-dir", git_dir.to_str().unwrap()],
        );
        assert!(
            install.output.status.success(),
            "hook install: {}",
            install.text()
        );
        app.git(&["remote", "add", "origin", git_dir.to_str().unwrap()]);
        Self { git_dir }
    }

    /// The commit a branch points to on the server, if it exists.
    pub fn branch(&self, name: &str) -> Option<String> {
        let out = Command::new("git")
            .current_dir(&self.git_dir)
            .args(["rev-parse", "--verify", "-q", &format!("refs/heads/{name}")])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Installs the hooks again (e.g. to check idempotence).
    pub fn reinstall(&self, app: &App) -> Run {
        run(
            slipway(app.path()),
            &[
                "hook",
                "install",
                "--git-dir",
                self.git_dir.to_str().unwrap(),
            ],
        )
    }
}

/// `git push` from `app` as `user`, with extra environment; returns what the
/// pusher saw (the `remote:` lines are on stderr).
pub fn push(app: &App, user: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = push_command(app, user, args, env);
    cmd.output().expect("git push runs")
}

/// The `git push` command, for running in the background.
pub fn push_command(app: &App, user: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(app.path()).arg("push").args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("SLIPWAY_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("SLIPWAY_USER", user).env("CI", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .current_dir(dir)
        .args(args)
        .status()
        .expect("git runs");
    assert!(status.success(), "git {args:?}");
}
