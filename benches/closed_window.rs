//! The gated strategy's closed window, against the time the deploy hook
//! itself takes.
//!
//! Starts three real sshd hosts on loopback, makes an app repository whose
//! deploy hook is `sleep 2`, deploys it a few times with the real binary and
//! reads the closed window slipway reports ("closed for N s"). Prints the
//! window, the hook time and their difference — the cost of closing,
//! switching, health-checking and opening three hosts. Goal: under 0.5 s.
//!
//! The deploy user is `slipwaybench`, created with `/bin/sh` as its shell:
//! a login shell that sources a heavy rc file (root's `.bashrc` on some
//! machines runs `pyenv init`, ~0.2 s) adds that cost to every remote
//! command, which measures the machine, not slipway. `SLIPWAY_BENCH_USER=root`
//! measures with root's shell instead.
//!
//! Run with `cargo bench --bench closed_window` (as root: sshd is started,
//! installed with apt-get if missing). `SLIPWAY_BENCH_ROUNDS` sets the rounds.

#[path = "../tests/support/sshd.rs"]
mod sshd;

use std::path::Path;
use std::process::Command;

const HOOK_SECONDS: f64 = 2.0;

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .status()
        .expect("git runs");
    assert!(status.success(), "git {args:?}");
}

/// A deploy user with a plain POSIX shell that owns the hosts' roots.
fn bench_user(cluster: &sshd::SshCluster) -> String {
    let user = std::env::var("SLIPWAY_BENCH_USER").unwrap_or_else(|_| "slipwaybench".to_owned());
    if user == "root" {
        return user;
    }
    let exists = Command::new("id")
        .arg(&user)
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        let status = Command::new("useradd")
            .args(["-M", "-s", "/bin/sh", &user])
            .status()
            .expect("useradd runs");
        assert!(
            status.success(),
            "cannot create the bench user {user} (run as root)"
        );
    }
    // A new account's password is locked ("!"), and sshd without PAM
    // refuses locked accounts even for keys; "*" is no password, unlocked.
    let status = Command::new("usermod")
        .args(["-p", "*", &user])
        .status()
        .expect("usermod runs");
    assert!(status.success());
    // sshd reads a user's authorized_keys as that user.
    for host in &cluster.hosts {
        use std::os::unix::fs::PermissionsExt;
        let dir = host.dir.path();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let keys = dir.join("authorized_keys");
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    for root in &cluster.roots {
        let status = Command::new("chown")
            .args(["-R", &user])
            .arg(root)
            .status()
            .expect("chown runs");
        assert!(status.success());
    }
    user
}

fn main() {
    let rounds: usize = std::env::var("SLIPWAY_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let cluster = sshd::SshCluster::start(3);
    let user = bench_user(&cluster);
    let hosts: Vec<String> = cluster
        .hosts
        .iter()
        .map(|h| format!("\"{}\"", h.spec(&user)))
        .collect();
    let host_list = format!("[{}]", hosts.join(", "));
    let app = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[app]\nname = \"bench\"\nkeep_releases = 3\n\n[environments.production]\nbranch = \"production\"\nhosts = {}\ndeploy_to = \"{}\"\ndeploy_hook = \"sleep {HOOK_SECONDS}\"\nhealth = {{ command = \"test -f index.html\", retries = 0 }}\n",
        host_list, cluster.deploy_to
    );
    std::fs::write(app.path().join("slipway.toml"), config).expect("config");
    std::fs::write(app.path().join("index.html"), "0\n").expect("index");
    git(app.path(), &["init", "-q", "-b", "production"]);
    git(app.path(), &["add", "-A"]);
    git(app.path(), &["commit", "-qm", "bench"]);
    let home = cluster.path("home");
    std::fs::create_dir_all(&home).expect("home");

    let mut windows = Vec::new();
    for round in 1..=rounds {
        std::fs::write(app.path().join("index.html"), format!("{round}\n")).expect("index");
        git(app.path(), &["commit", "-qam", &format!("round {round}")]);
        let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .current_dir(app.path())
            .env("HOME", &home)
            .env("CI", "true")
            .env_remove("SSH_AUTH_SOCK")
            .args(["deploy", "production", "--known-hosts"])
            .arg(&cluster.known_hosts)
            .arg("--identity")
            .arg(&cluster.keys.private)
            .output()
            .expect("slipway runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "deploy failed:\n{text}");
        if std::env::var_os("SLIPWAY_BENCH_VERBOSE").is_some() {
            println!("{text}");
        }
        let window: f64 = text
            .lines()
            .find_map(|l| l.split("closed for ").nth(1))
            .and_then(|rest| rest.split('s').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no closed window in:\n{text}"));
        windows.push(window);
        println!(
            "round {round}: closed {window:.3} s, overhead {:.3} s",
            window - HOOK_SECONDS
        );
    }
    windows.sort_by(f64::total_cmp);
    let median = windows[windows.len() / 2];
    println!(
        "closed window: median {median:.3} s for a {HOOK_SECONDS:.1} s hook on 3 sshd hosts as {user}; overhead (window - hook) {:.3} s (goal < 0.5 s)",
        median - HOOK_SECONDS
    );
}
