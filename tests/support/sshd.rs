//! Real OpenSSH servers for tests and the upload benchmark.
//!
//! Each [`Sshd`] is `/usr/sbin/sshd -D` on its own loopback address
//! (127.0.0.x, x from a counter starting at 11) and a free port, with its
//! own ed25519 host key, logging in `root` with keys listed in its own
//! authorized_keys. A [`SshCluster`] is three (or n) of them sharing one
//! client key and one known_hosts file; each runs in a private mount
//! namespace where its own folder is bind-mounted on the common
//! `deploy_to`, so one absolute path is a different directory per "host",
//! inspectable from the test through [`SshCluster::roots`] (laid out like
//! `LocalHosts`: `root/<deploy_to>`).
//!
//! Invariants: nothing here is skipped when sshd is missing (it is installed
//! with apt-get, or the test panics saying how); every server is killed on
//! drop, frozen or not; only `std` and `tempfile` are used, so the benchmark
//! can include this file with `#[path]`.

#![allow(dead_code)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";

static NEXT_IP: AtomicU32 = AtomicU32::new(11);
static INSTALL: Once = Once::new();

/// Makes sure OpenSSH's server is installed; installs it when we are root.
pub fn ensure_sshd() {
    INSTALL.call_once(|| {
        if !Path::new(SSHD).exists() {
            let installed = Command::new("sh")
                .arg("-c")
                .arg("(apt-get install -y openssh-server || (apt-get update && apt-get install -y openssh-server)) >/dev/null 2>&1")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                installed && Path::new(SSHD).exists(),
                "the SSH tests need OpenSSH's server at {SSHD}; install it with `apt-get install -y openssh-server` (as root)"
            );
        }
        // Debian's sshd refuses to start without its privilege separation dir.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
    });
}

/// The next loopback address for a server.
pub fn next_ip() -> String {
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
    format!("127.0.{}.{}", 1 + (n / 250) % 250, 11 + n % 240)
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port on the loopback address")
        .port()
}

#[track_caller]
fn sh(command: &str, args: &[&str]) {
    let out = Command::new(command)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{command} runs: {e}"));
    assert!(
        out.status.success(),
        "{command} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client key pair.
pub struct Keys {
    _dir: tempfile::TempDir,
    pub private: PathBuf,
    /// `ssh-ed25519 AAAA… comment`.
    pub public: String,
}

impl Keys {
    pub fn generate() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("slipway-key-")
            .tempdir()
            .expect("tempdir");
        let private = dir.path().join("id_ed25519");
        sh(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "slipway-test",
                "-f",
                private.to_str().expect("utf-8"),
            ],
        );
        let public = std::fs::read_to_string(private.with_extension("pub"))
            .expect("public key")
            .trim()
            .to_owned();
        Self {
            _dir: dir,
            private,
            public,
        }
    }
}

/// How an [`Sshd`] differs from the plain one: certificates, more host
/// keys, extra sshd_config lines.
#[derive(Default)]
pub struct Setup<'a> {
    /// Keys allowed in through authorized_keys.
    pub authorized: &'a [&'a str],
    /// A CA private key: the host key gets a certificate signed by it
    /// (`ssh-keygen -s -h`, principal = the address), served with
    /// `HostCertificate`.
    pub host_ca: Option<&'a Path>,
    /// A CA public key file users' certificates are trusted from (`TrustedUserCAKeys`).
    pub user_ca: Option<&'a Path>,
    /// More host key types beside ed25519 (e.g. "ecdsa", "rsa").
    pub more_host_keys: &'a [&'a str],
    /// Lines appended to sshd_config (e.g. `LogLevel VERBOSE`).
    pub extra: &'a str,
}

/// A certificate authority: an ed25519 key pair that signs host and user keys.
pub struct Ca {
    pub keys: Keys,
}

impl Ca {
    pub fn new() -> Self {
        Self {
            keys: Keys::generate(),
        }
    }

    /// The public key file.
    pub fn public_file(&self) -> PathBuf {
        self.keys.private.with_extension("pub")
    }

    /// Signs the user key `private` (its `.pub`) for `principal`; writes
    /// `<private>-cert.pub` and returns its path.
    pub fn sign_user(&self, private: &Path, principal: &str) -> PathBuf {
        let public = private.with_extension("pub");
        sh(
            "ssh-keygen",
            &[
                "-q",
                "-s",
                self.keys.private.to_str().expect("utf-8"),
                "-I",
                "slipway-test-user",
                "-n",
                principal,
                "-V",
                "-5m:+1h",
                public.to_str().expect("utf-8"),
            ],
        );
        let cert = PathBuf::from(format!("{}-cert.pub", private.display()));
        assert!(cert.exists(), "ssh-keygen wrote {}", cert.display());
        cert
    }

    /// `@cert-authority <pattern> <ca public key>`.
    pub fn known_hosts_line(&self, pattern: &str) -> String {
        let mut parts = self.keys.public.split_whitespace();
        format!(
            "@cert-authority {pattern} {} {}",
            parts.next().expect("type"),
            parts.next().expect("key")
        )
    }
}

impl Default for Ca {
    fn default() -> Self {
        Self::new()
    }
}

/// One running sshd.
pub struct Sshd {
    pub ip: String,
    pub port: u16,
    /// The host key: `ssh-ed25519 AAAA…`.
    pub host_key: String,
    /// Further host keys, `type AAAA…`, in the order of [`Setup::more_host_keys`].
    pub more_host_keys: Vec<String>,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pid: u32,
}

impl Sshd {
    /// An sshd on a fresh 127.0.0.x letting in the holders of `authorized` keys.
    pub fn start(authorized: &[&str]) -> Self {
        Self::launch(
            &next_ip(),
            &Setup {
                authorized,
                ..Setup::default()
            },
            None,
        )
    }

    /// As [`Sshd::start`] on `ip`.
    pub fn start_on(ip: &str, authorized: &[&str]) -> Self {
        Self::launch(
            ip,
            &Setup {
                authorized,
                ..Setup::default()
            },
            None,
        )
    }

    /// An sshd set up as `setup` says, on `ip` (a fresh 127.0.x.y when `None`;
    /// `::1` works too).
    pub fn start_with(ip: Option<&str>, setup: &Setup) -> Self {
        Self::launch(ip.map_or_else(next_ip, str::to_owned).as_str(), setup, None)
    }

    /// As [`Sshd::start`], in a private mount namespace where `source` is
    /// bind-mounted on `target`.
    pub fn start_mounted(authorized: &[&str], source: &Path, target: &Path) -> Self {
        Self::launch(
            &next_ip(),
            &Setup {
                authorized,
                ..Setup::default()
            },
            Some((source, target)),
        )
    }

    /// As [`Sshd::start_mounted`], with a fresh tmpfs of `size` (e.g.
    /// "8m") mounted on `source` inside the namespace first: a host whose
    /// deploy root is a small disk of its own. The test reads it through
    /// [`Sshd::inside`], not through `source` (the tmpfs exists only in the
    /// server's namespace, so nothing outlives the server).
    pub fn start_on_small_disk(
        authorized: &[&str],
        source: &Path,
        target: &Path,
        size: &str,
    ) -> Self {
        Self::launch_with(
            &next_ip(),
            &Setup {
                authorized,
                ..Setup::default()
            },
            Some((source, target)),
            Some(size),
        )
    }

    /// Runs `sh -c <script>` in the server's mount namespace (what the
    /// host's own processes see) and returns its stdout.
    pub fn inside(&self, script: &str) -> String {
        let out = Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-m", "sh", "-c", script])
            .output()
            .expect("nsenter runs (util-linux)");
        assert!(
            out.status.success(),
            "`{script}` inside the host failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn launch(ip: &str, setup: &Setup, mount: Option<(&Path, &Path)>) -> Self {
        Self::launch_with(ip, setup, mount, None)
    }

    fn launch_with(
        ip: &str,
        setup: &Setup,
        mount: Option<(&Path, &Path)>,
        tmpfs: Option<&str>,
    ) -> Self {
        let authorized = setup.authorized;
        ensure_sshd();
        let dir = tempfile::Builder::new()
            .prefix("slipway-sshd-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let host_key = d.join("host_ed25519");
        sh(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "",
                "-f",
                host_key.to_str().expect("utf-8"),
            ],
        );
        let host_pub = std::fs::read_to_string(host_key.with_extension("pub")).expect("host key");
        let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        let mut extra = String::new();
        let mut more_host_keys = Vec::new();
        for kind in setup.more_host_keys {
            let file = d.join(format!("host_{kind}"));
            sh(
                "ssh-keygen",
                &[
                    "-q",
                    "-t",
                    kind,
                    "-N",
                    "",
                    "-C",
                    "",
                    "-f",
                    file.to_str().expect("utf-8"),
                ],
            );
            let public = std::fs::read_to_string(file.with_extension("pub")).expect("host key");
            more_host_keys.push(
                public
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            extra.push_str(&format!("HostKey {}\n", file.display()));
        }
        if let Some(ca) = setup.host_ca {
            sh(
                "ssh-keygen",
                &[
                    "-q",
                    "-s",
                    ca.to_str().expect("utf-8"),
                    "-h",
                    "-I",
                    "slipway-test-host",
                    "-n",
                    ip,
                    "-V",
                    "-5m:+1h",
                    host_key.with_extension("pub").to_str().expect("utf-8"),
                ],
            );
            extra.push_str(&format!(
                "HostCertificate {}\n",
                d.join("host_ed25519-cert.pub").display()
            ));
        }
        if let Some(ca) = setup.user_ca {
            extra.push_str(&format!("TrustedUserCAKeys {}\n", ca.display()));
        }
        extra.push_str(setup.extra);
        std::fs::write(d.join("authorized_keys"), authorized.join("\n") + "\n")
            .expect("authorized_keys");
        let port = free_port(ip);
        let listen = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {listen}\n\
                 HostKey {key}\n\
                 AuthorizedKeysFile {d}/authorized_keys\n\
                 PidFile {d}/sshd.pid\n\
                 StrictModes no\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 PermitRootLogin yes\n\
                 PermitUserEnvironment SLIPWAY_USER,REMOTE_USER\n\
                 AllowTcpForwarding yes\n\
                 MaxStartups 100\n\
                 MaxSessions 100\n\
                 Subsystem sftp internal-sftp\n\
                 {extra}\n\
                 LogLevel ERROR\n",
                key = host_key.display(),
                d = d.display(),
            ),
        )
        .expect("sshd_config");
        let log = std::fs::File::create(d.join("sshd.log")).expect("log");
        let mut cmd = match mount {
            None => {
                let mut cmd = Command::new(SSHD);
                cmd.args(["-D", "-e", "-f"]).arg(&config);
                cmd
            }
            Some((source, target)) => {
                let mut cmd = Command::new("unshare");
                cmd.args(["-m", "--propagation", "private", "sh", "-c"])
                    .arg("mkdir -p \"$1\" \"$2\" && if [ -n \"$5\" ]; then mount -t tmpfs -o size=\"$5\" slipway-test \"$1\"; fi && mount --bind \"$1\" \"$2\" && exec \"$3\" -D -e -f \"$4\"")
                    .arg("sh")
                    .arg(source)
                    .arg(target)
                    .arg(SSHD)
                    .arg(&config)
                    .arg(tmpfs.unwrap_or(""));
                cmd
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start sshd (is util-linux's unshare installed?)");
        let pid = child.id();
        let mut sshd = Self {
            ip: ip.to_owned(),
            port,
            host_key: host_pub.join(" "),
            more_host_keys,
            dir,
            child: Some(child),
            pid,
        };
        sshd.wait_ready();
        sshd
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect((self.ip.as_str(), self.port)).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("sshd exited ({status}) before listening:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on {}:{} within 15s:\n{}",
                self.ip,
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.bracketed(), self.port)
    }

    /// The address, in brackets when it is IPv6.
    fn bracketed(&self) -> String {
        if self.ip.contains(':') {
            format!("[{}]", self.ip)
        } else {
            self.ip.clone()
        }
    }

    /// `user@127.0.0.x:port` (`user@[::1]:port`).
    pub fn spec(&self, user: &str) -> String {
        format!("{user}@{}:{}", self.bracketed(), self.port)
    }

    /// How known_hosts names this host: `[127.0.0.x]:port`.
    pub fn pattern(&self) -> String {
        format!("[{}]:{}", self.ip, self.port)
    }

    /// `[127.0.0.x]:port ssh-ed25519 AAAA…`.
    pub fn known_hosts_line(&self) -> String {
        format!("{} {}", self.pattern(), self.host_key)
    }

    /// The listener and every process under it (connections, their shells).
    fn tree(&self) -> Vec<u32> {
        let mut parents: Vec<(u32, u32)> = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`; comm may hold spaces and parens.
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                parents.push((pid, ppid));
            }
        }
        let mut tree = vec![self.pid];
        let mut i = 0;
        while i < tree.len() {
            let parent = tree[i];
            tree.extend(
                parents
                    .iter()
                    .filter(|(_, pp)| *pp == parent)
                    .map(|(p, _)| *p),
            );
            i += 1;
        }
        tree
    }

    fn signal(&self, signal: &str, pids: &[u32]) {
        if pids.is_empty() {
            return;
        }
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .args(pids.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status();
    }

    /// SIGSTOP to the listener and every connection: the host freezes,
    /// its TCP stays open (the kernel still answers).
    pub fn freeze(&self) {
        // The listener first, so it forks no new connection meanwhile.
        self.signal("STOP", &[self.pid]);
        let tree = self.tree();
        self.signal("STOP", &tree);
    }

    pub fn thaw(&self) {
        self.signal("CONT", &self.tree());
    }

    /// Stops accepting: kills the listener and its connections.
    pub fn stop(&mut self) {
        self.kill();
    }

    pub fn kill(&mut self) {
        let tree = self.tree();
        // SIGKILL works on stopped processes too.
        self.signal("KILL", &tree);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Several sshd "hosts" sharing one client key, one known_hosts and one
/// `deploy_to` (a different directory on each, by mount namespace).
pub struct SshCluster {
    pub keys: Keys,
    pub hosts: Vec<Sshd>,
    /// Per host, the folder that stands for its `/`: the deploy root of host
    /// i is `roots[i]/<deploy_to without its leading slash>`.
    pub roots: Vec<PathBuf>,
    pub deploy_to: String,
    pub known_hosts: PathBuf,
    pub dir: tempfile::TempDir,
}

impl SshCluster {
    pub fn start(n: usize) -> Self {
        Self::start_with_small_disk(n, None)
    }

    /// As [`SshCluster::start`]; with `Some((i, size))`, host i's deploy
    /// root is a tmpfs of `size` (see [`Sshd::start_on_small_disk`]).
    pub fn start_with_small_disk(n: usize, small: Option<(usize, &str)>) -> Self {
        ensure_sshd();
        let keys = Keys::generate();
        let dir = tempfile::Builder::new()
            .prefix("slipway-cluster-")
            .tempdir()
            .expect("tempdir");
        // The common path: under the cluster's own temp dir, so parallel
        // tests never share it and nothing is left behind.
        let target = dir.path().join("srv/app");
        let deploy_to = target.to_str().expect("utf-8").to_owned();
        let mut roots = Vec::new();
        let mut hosts = Vec::new();
        for i in 0..n {
            let root = dir.path().join(format!("host{}", i + 1));
            let source = root.join(deploy_to.trim_start_matches('/'));
            std::fs::create_dir_all(&source).expect("host root");
            hosts.push(match small {
                Some((j, size)) if j == i => {
                    Sshd::start_on_small_disk(&[&keys.public], &source, &target, size)
                }
                _ => Sshd::start_mounted(&[&keys.public], &source, &target),
            });
            roots.push(root);
        }
        let known_hosts = dir.path().join("known_hosts");
        let lines: Vec<String> = hosts.iter().map(Sshd::known_hosts_line).collect();
        std::fs::write(&known_hosts, lines.join("\n") + "\n").expect("known_hosts");
        Self {
            keys,
            hosts,
            roots,
            deploy_to,
            known_hosts,
            dir,
        }
    }

    /// `["root@127.0.0.x:port", …]` as a TOML array.
    pub fn hosts_toml(&self) -> String {
        let specs: Vec<String> = self
            .hosts
            .iter()
            .map(|h| format!("\"{}\"", h.spec("root")))
            .collect();
        format!("[{}]", specs.join(", "))
    }

    pub fn specs(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.spec("root")).collect()
    }

    /// Another server letting the cluster's key in, e.g. a jump host; its
    /// key is added to the known_hosts file.
    pub fn extra_server(&self) -> Sshd {
        let sshd = Sshd::start(&[&self.keys.public]);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.known_hosts)
            .expect("known_hosts");
        writeln!(f, "{}", sshd.known_hosts_line()).expect("write known_hosts");
        sshd
    }

    /// A file under the cluster's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
