//! Upload throughput: slipway's SSH transport against OpenSSH's `scp`.
//!
//! Starts three real sshd on loopback addresses, makes a 200 MB file of
//! random bytes, then sends it to the three hosts in parallel, once with
//! slipway's transport (the same `upload` the rollout uses) and once with
//! three `scp` processes, timing both in the same run. Prints MB/s for each
//! and the ratio slipway/scp (the goal is at least 0.8).
//!
//! Run with `cargo bench --bench upload` (as root: sshd is started, and
//! installed with apt-get if missing). `SLIPWAY_BENCH_MB` changes the size.

#[path = "support/random.rs"]
mod random;
#[path = "../tests/support/sshd.rs"]
mod sshd;

use random::random_file;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use slipway::transport::{ConnectOptions, connect};

fn slipway_upload(
    hosts: &[sshd::Sshd],
    options: &ConnectOptions,
    file: &Path,
    dest: &Path,
) -> Duration {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (i, host) in hosts.iter().enumerate() {
            let remote = dest.join(format!("slipway-{i}.bin"));
            scope.spawn(move || {
                let transport = connect(&host.spec("root"), options).expect("connect");
                transport
                    .upload(file, remote.to_str().expect("utf-8"), &|_| {})
                    .expect("upload");
            });
        }
    });
    started.elapsed()
}

fn scp_upload(
    hosts: &[sshd::Sshd],
    known_hosts: &Path,
    key: &Path,
    file: &Path,
    dest: &Path,
) -> Duration {
    let started = Instant::now();
    let children: Vec<_> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            Command::new("scp")
                .arg("-q")
                .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
                .arg("-i")
                .arg(key)
                .args(["-P", &host.port.to_string()])
                .arg(file)
                .arg(format!("root@{}:{}/scp-{i}.bin", host.ip, dest.display()))
                .spawn()
                .expect("scp runs")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().expect("scp").success(), "scp failed");
    }
    started.elapsed()
}

fn check(dest: &Path, name: &str, size: u64) {
    let got = std::fs::metadata(dest.join(name))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(got, size, "{name} arrived whole");
}

fn main() {
    let mb: usize = std::env::var("SLIPWAY_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let keys = sshd::Keys::generate();
    let hosts: Vec<sshd::Sshd> = (0..3).map(|_| sshd::Sshd::start(&[&keys.public])).collect();
    let work = tempfile::Builder::new()
        .prefix("slipway-bench-")
        .tempdir()
        .expect("tempdir");
    let known_hosts = work.path().join("known_hosts");
    let lines: Vec<String> = hosts.iter().map(sshd::Sshd::known_hosts_line).collect();
    std::fs::write(&known_hosts, lines.join("\n") + "\n").expect("known_hosts");
    let file = work.path().join("artifact.bin");
    random_file(&file, mb << 20);
    let size = (mb as u64) << 20;
    let dest = work.path().join("dest");
    std::fs::create_dir_all(&dest).expect("dest");
    let options = ConnectOptions {
        known_hosts: Some(known_hosts.clone()),
        identity_files: vec![keys.private.clone()],
        ..ConnectOptions::default()
    };

    let total = 3.0 * mb as f64;
    let mut best_slipway = Duration::MAX;
    let mut best_scp = Duration::MAX;
    for round in 1..=2 {
        let s = slipway_upload(&hosts, &options, &file, &dest);
        for i in 0..3 {
            check(&dest, &format!("slipway-{i}.bin"), size);
        }
        let c = scp_upload(&hosts, &known_hosts, &keys.private, &file, &dest);
        for i in 0..3 {
            check(&dest, &format!("scp-{i}.bin"), size);
        }
        println!(
            "round {round}: slipway {:.2}s ({:.0} MB/s), scp {:.2}s ({:.0} MB/s)",
            s.as_secs_f64(),
            total / s.as_secs_f64(),
            c.as_secs_f64(),
            total / c.as_secs_f64()
        );
        best_slipway = best_slipway.min(s);
        best_scp = best_scp.min(c);
        for entry in std::fs::read_dir(&dest).expect("dest").flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let (s, c) = (
        total / best_slipway.as_secs_f64(),
        total / best_scp.as_secs_f64(),
    );
    println!(
        "upload of {mb} MB to 3 hosts in parallel (best of 2): slipway {s:.0} MB/s, scp {c:.0} MB/s, ratio slipway/scp {:.2}",
        s / c
    );
}
