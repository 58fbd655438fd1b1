//! Running the real `slipway` binary and asserting on what it did.

use std::path::Path;
use std::process::{Command, Output};

/// A finished `slipway` run.
pub struct Run {
    pub args: Vec<String>,
    pub output: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Everything the user saw.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }

    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    #[track_caller]
    pub fn success(self) -> Self {
        assert!(
            self.output.status.success(),
            "slipway {} failed ({:?}):\n{}",
            self.args.join(" "),
            self.code(),
            self.text()
        );
        self
    }

    #[track_caller]
    pub fn failure(self, code: i32) -> Self {
        assert_eq!(
            self.code(),
            Some(code),
            "slipway {} should exit {code}:\n{}",
            self.args.join(" "),
            self.text()
        );
        self
    }

    #[track_caller]
    pub fn contains(self, needle: &str) -> Self {
        assert!(
            self.text().contains(needle),
            "output lacks {needle:?}:\n{}",
            self.text()
        );
        self
    }

    #[track_caller]
    pub fn lacks(self, needle: &str) -> Self {
        assert!(
            !self.text().contains(needle),
            "output has {needle:?}:\n{}",
            self.text()
        );
        self
    }
}

/// A `slipway` command in `repo`, with an environment cleared of anything
/// from the developer's shell that could change its behaviour.
pub fn slipway(repo: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_slipway"));
    cmd.current_dir(repo)
        .env_remove("SLIPWAY_LOG")
        .env_remove("GITHUB_ACTIONS")
        .env("CI", "true")
        .env("SLIPWAY_USER", "tester");
    for (key, _) in std::env::vars() {
        if key.starts_with("SLIPWAY_") && key != "SLIPWAY_USER" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs `cmd` with `args` and returns the result.
pub fn run(mut cmd: Command, args: &[&str]) -> Run {
    let output = cmd.args(args).output().expect("slipway runs");
    Run {
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        output,
    }
}

/// A `slipway` command in `repo` that reaches `cluster` the way a deployer
/// with nothing but the cluster's known_hosts and key would: an empty HOME
/// (no `~/.ssh` of the machine running the tests leaks in) and no agent.
/// Add [`ssh_flags`] to its arguments.
pub fn slipway_for(repo: &Path, cluster: &super::sshd::SshCluster) -> Command {
    let home = cluster.path("home");
    std::fs::create_dir_all(&home).expect("home");
    let mut cmd = slipway(repo);
    cmd.env("HOME", &home).env_remove("SSH_AUTH_SOCK");
    cmd
}

/// `--known-hosts` and `--identity` for `cluster`.
pub fn ssh_flags(cluster: &super::sshd::SshCluster) -> [String; 4] {
    let path = |p: &Path| p.to_str().expect("utf-8").to_owned();
    [
        "--known-hosts".to_owned(),
        path(&cluster.known_hosts),
        "--identity".to_owned(),
        path(&cluster.keys.private),
    ]
}

/// Runs `slipway <args>` in `repo` against `cluster`.
pub fn run_over_ssh(repo: &Path, cluster: &super::sshd::SshCluster, args: &[&str]) -> Run {
    let flags = ssh_flags(cluster);
    let mut all = args.to_vec();
    all.extend(flags.iter().map(String::as_str));
    run(slipway_for(repo, cluster), &all)
}
