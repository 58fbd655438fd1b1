//! A git server as sites run one: a real sshd whose pushers log in as a
//! system account with `git-shell` as its login shell, a bare repository
//! owned by that account with slipway's hooks, and the hooks' settings in
//! a 0600 env file. The hooks (and so the build steps) run as that account,
//! never as root.
//!
//! The account, `slipway-it-git`, is created once per machine with
//! `useradd` (the tests run as root, as CI does); nothing is skipped when it
//! cannot be: the test fails saying why.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

use super::app::App;
use super::sshd::{Keys, Sshd};

pub const GIT_USER: &str = "slipway-it-git";
static ACCOUNT: Once = Once::new();

/// Creates the git account (login shell git-shell) if it does not exist.
pub fn ensure_git_user() {
    ACCOUNT.call_once(|| {
        let exists = Command::new("id")
            .arg(GIT_USER)
            .output()
            .is_ok_and(|o| o.status.success());
        if !exists {
            let shell = ["/usr/bin/git-shell", "/usr/local/bin/git-shell"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .expect("git-shell is installed with git");
            let out = Command::new("useradd")
                .args(["--system", "--no-create-home", "--shell", shell, GIT_USER])
                .output()
                .expect("useradd runs (the tests run as root)");
            assert!(
                out.status.success(),
                "useradd {GIT_USER}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // A new system account is "locked" (`!` password), which sshd
        // without PAM refuses even for keys; `*` means "no password".
        let out = Command::new("usermod")
            .args(["-p", "*", GIT_USER])
            .output()
            .expect("usermod runs");
        assert!(
            out.status.success(),
            "usermod: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Runs `sh -c script` as the git account.
pub fn as_git_user(script: &str) -> Output {
    Command::new("setpriv")
        .args(["--reuid", GIT_USER, "--regid", GIT_USER, "--init-groups"])
        .args(["sh", "-c", script])
        .output()
        .expect("setpriv runs")
}

/// A git server over SSH. Its files live in a folder owned by the account.
pub struct SshGitServer {
    pub sshd: Sshd,
    pub dir: tempfile::TempDir,
    pub git_dir: PathBuf,
    /// The pusher's key (the pusher is named in authorized_keys).
    pub pusher: Keys,
}

impl SshGitServer {
    /// A bare repository with the hooks installed by `slipway hook
    /// install --setenv …` for each of `settings`; `pusher_name` is who the
    /// server says pushes (SLIPWAY_USER set by sshd from authorized_keys).
    pub fn start(pusher_name: &str, settings: &[(&str, &str)]) -> Self {
        ensure_git_user();
        let pusher = Keys::generate();
        let line = format!(
            "environment=\"SLIPWAY_USER={pusher_name}\" {}",
            pusher.public
        );
        let sshd = Sshd::start(&[&line]);
        // sshd reads authorized_keys as the user logging in.
        chmod(sshd.dir.path(), "755");
        chmod(&sshd.dir.path().join("authorized_keys"), "644");
        let dir = tempfile::Builder::new()
            .prefix("slipway-gitsrv-")
            .tempdir()
            .expect("tempdir");
        let git_dir = dir.path().join("app.git");
        let status = Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(&git_dir)
            .status()
            .expect("git init");
        assert!(status.success());
        let mut args: Vec<String> = vec![
            "hook".into(),
            "install".into(),
            "--git-dir".into(),
            git_dir.display().to_string(),
        ];
        for (k, v) in settings {
            args.push("--setenv".into());
            args.push(format!("{k}={v}"));
        }
        let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(&args)
            .output()
            .expect("slipway runs");
        assert!(
            out.status.success(),
            "hook install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server = Self {
            sshd,
            dir,
            git_dir,
            pusher,
        };
        server.give_to_git_user();
        server
    }

    /// Makes everything in the server's folder the account's (after the
    /// owner wrote settings there as root).
    pub fn give_to_git_user(&self) {
        let out = Command::new("chown")
            .args(["-R", &format!("{GIT_USER}:{GIT_USER}")])
            .arg(self.dir.path())
            .output()
            .expect("chown");
        assert!(out.status.success());
        chmod(self.dir.path(), "755");
    }

    /// A file in the server's folder, readable only by the account (e.g. the
    /// deploy key the hooks use).
    pub fn private_file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        chmod(&path, "600");
        self.give_to_git_user();
        path
    }

    /// `git push` from `app` over SSH as the pusher.
    pub fn push(&self, app: &App, args: &[&str], known_hosts: &Path) -> Output {
        let url = format!(
            "ssh://{GIT_USER}@{}{}",
            self.sshd.address(),
            self.git_dir.display()
        );
        let _ = Command::new("git")
            .current_dir(app.path())
            .args(["remote", "remove", "gitsrv"])
            .output();
        app.git(&["remote", "add", "gitsrv", &url]);
        let ssh = format!(
            "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
            self.pusher.private.display(),
            known_hosts.display()
        );
        let mut cmd = Command::new("git");
        cmd.current_dir(app.path())
            .arg("push")
            .arg("gitsrv")
            .args(args)
            .env("GIT_SSH_COMMAND", ssh);
        for (key, _) in std::env::vars() {
            if key.starts_with("SLIPWAY_") {
                cmd.env_remove(key);
            }
        }
        cmd.output().expect("git push runs")
    }

    /// The commit a branch points to on the server.
    pub fn branch(&self, name: &str) -> Option<String> {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(&self.git_dir)
            .args(["rev-parse", "--verify", "-q", &format!("refs/heads/{name}")])
            .output()
            .expect("git");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

fn chmod(path: &Path, mode: &str) {
    let status = Command::new("chmod")
        .arg(mode)
        .arg(path)
        .status()
        .expect("chmod");
    assert!(status.success());
}
