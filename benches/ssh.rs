//! Both SSH transports against OpenSSH itself: per-command latency against
//! `ssh host true` over a ControlMaster, and upload throughput against `scp`.
//!
//! Starts a real sshd on a loopback address; for each transport (`openssh`,
//! what `auto` picks where `ssh` is installed, and `libssh2`) runs a trivial
//! command many times on one connection and sends a file of random bytes,
//! timing the references in the same run. Prints the ratios (goals: latency
//! at most 1.2× `ssh` over a ControlMaster, upload at least 0.9× `scp`).
//!
//! Run with `cargo bench --bench ssh` (as root: sshd is started, and
//! installed with apt-get if missing). `SLIPWAY_BENCH_MB` changes the upload
//! size (default 100), `SLIPWAY_BENCH_RUNS` the number of commands (default 40).

#[path = "support/random.rs"]
mod random;
#[path = "../tests/support/sshd.rs"]
mod sshd;

use random::random_file;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use slipway::transport::{ConnectOptions, Script, SshChoice, connect};

/// `ssh` with the bench's known_hosts and key, over the control socket `control`.
fn ssh(known_hosts: &Path, key: &Path, control: &Path, host: &sshd::Sshd) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-o", "BatchMode=yes"])
        .args(["-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-o")
        .arg(format!("ControlPath={}", control.display()))
        .args(["-o", "ControlMaster=auto", "-o", "ControlPersist=60"])
        .arg("-i")
        .arg(key)
        .args(["-p", &host.port.to_string()])
        .arg(format!("root@{}", host.ip))
        .stdin(Stdio::null());
    cmd
}

/// Median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() {
    let mb: usize = std::env::var("SLIPWAY_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let runs: usize = std::env::var("SLIPWAY_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let keys = sshd::Keys::generate();
    let host = sshd::Sshd::start(&[&keys.public]);
    let work = tempfile::Builder::new()
        .prefix("slipway-bench-")
        .tempdir()
        .expect("tempdir");
    let known_hosts = work.path().join("known_hosts");
    std::fs::write(&known_hosts, host.known_hosts_line() + "\n").expect("known_hosts");
    let control = work.path().join("master.sock");
    let file = work.path().join("artifact.bin");
    random_file(&file, mb << 20);
    let size = (mb as u64) << 20;
    let dest = work.path().join("dest");
    std::fs::create_dir_all(&dest).expect("dest");

    // The references: `ssh host true` over an open ControlMaster, and scp.
    let warm = ssh(&known_hosts, &keys.private, &control, &host)
        .arg("true")
        .status()
        .expect("ssh runs");
    assert!(warm.success(), "ssh reaches the host");
    let ssh_true = median(runs, || {
        let status = ssh(&known_hosts, &keys.private, &control, &host)
            .arg("true")
            .status()
            .expect("ssh runs");
        assert!(status.success());
    });
    let scp = median(3, || {
        let status = Command::new("scp")
            .arg("-q")
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .arg("-i")
            .arg(&keys.private)
            .args(["-P", &host.port.to_string()])
            .arg(&file)
            .arg(format!("root@{}:{}/scp.bin", host.ip, dest.display()))
            .status()
            .expect("scp runs");
        assert!(status.success(), "scp failed");
    });
    let _ = Command::new("ssh")
        .arg("-o")
        .arg(format!("ControlPath={}", control.display()))
        .args(["-O", "exit", "x"])
        .stderr(Stdio::null())
        .status();
    let scp_rate = mb as f64 / scp.as_secs_f64();
    println!(
        "reference: `ssh host true` over a ControlMaster {:.1} ms; scp {:.0} MB/s",
        ssh_true.as_secs_f64() * 1000.0,
        scp_rate
    );

    for (name, choice) in [
        ("openssh", SshChoice::OpenSsh),
        ("libssh2", SshChoice::Libssh2),
    ] {
        let options = ConnectOptions {
            ssh: choice,
            known_hosts: Some(known_hosts.clone()),
            identity_files: vec![keys.private.clone()],
            ..ConnectOptions::default()
        };
        let transport = connect(&host.spec("root"), &options).expect("connect");
        let noop = Script::new().raw("true");
        transport.run("warm up", &noop).expect("runs");
        let command = median(runs, || {
            transport.run("no-op", &noop).expect("runs");
        });
        let remote = dest.join(format!("{name}.bin"));
        let upload = median(3, || {
            transport
                .upload(&file, remote.to_str().expect("utf-8"), &|_| {})
                .expect("upload");
        });
        let got = std::fs::metadata(&remote).map(|m| m.len()).unwrap_or(0);
        assert_eq!(got, size, "the upload arrived whole");
        let rate = mb as f64 / upload.as_secs_f64();
        println!(
            "{name}: command {:.1} ms = {:.2}x ssh (goal <= 1.2); upload {:.0} MB/s = {:.2}x scp (goal >= 0.9)",
            command.as_secs_f64() * 1000.0,
            command.as_secs_f64() / ssh_true.as_secs_f64(),
            rate,
            rate / scp_rate
        );
    }
}
