//! Every SSH setup that works with `ssh` works with slipway (issue 14): one
//! test per row of the table, against real sshd servers with
//! certificates made by `ssh-keygen -s`, plus `@revoked` and
//! `@cert-authority` known_hosts lines, a two-hop ProxyJump and thirty hosts
//! behind one jump host. Each row runs on the transport `auto` picks (the
//! OpenSSH client, installed everywhere these tests run), and on libssh2
//! where libssh2 is expected to work; where it cannot, the test pins the
//! message that says so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::App;
use crate::support::run::{Run, run, slipway};
use crate::support::sshd::{Ca, Keys, Setup, Sshd};

/// An app whose production hosts are `hosts`, deployed to a folder of this
/// machine (every test sshd runs here), reached with a deployer's HOME that
/// holds nothing and no agent unless the test starts one.
struct Site {
    app: App,
    dir: tempfile::TempDir,
    known_hosts: PathBuf,
    agent: Option<Agent>,
}

impl Site {
    fn new(hosts: &[String]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("slipway-setup-")
            .tempdir()
            .expect("tempdir");
        let deploy_to = dir.path().join("srv/app");
        std::fs::create_dir_all(&deploy_to).expect("deploy_to");
        let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
        let config = format!(
            "[app]\nname = \"shop\"\n\n[environments.production]\nbranch = \"production\"\nhosts = [{}]\ndeploy_to = \"{}\"\n",
            hosts.join(", "),
            deploy_to.display()
        );
        let app = App::new(&config, &[("public/index.html", "v1\n")]);
        std::fs::create_dir_all(dir.path().join("home")).expect("home");
        Self {
            app,
            known_hosts: dir.path().join("known_hosts"),
            dir,
            agent: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn know(&self, lines: &[String]) {
        std::fs::write(&self.known_hosts, lines.join("\n") + "\n").expect("known_hosts");
    }

    /// A file in the site's folder.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("dir");
        }
        std::fs::write(&path, text).expect("write");
        path
    }

    /// `slipway <args> --ssh <ssh> --known-hosts …`.
    fn slipway(&self, ssh: &str, args: &[&str]) -> Run {
        let mut cmd = slipway(self.app.path());
        // A TMPDIR of its own, to see that slipway leaves nothing there.
        std::fs::create_dir_all(self.path("tmp")).expect("tmp");
        cmd.env("HOME", self.path("home"))
            .env("TMPDIR", self.path("tmp"))
            .env_remove("SSH_AUTH_SOCK");
        if let Some(agent) = &self.agent {
            cmd.env("SSH_AUTH_SOCK", &agent.socket);
        }
        let known = self.known_hosts.to_str().expect("utf-8");
        let mut all = args.to_vec();
        all.extend(["--ssh", ssh, "--known-hosts", known]);
        run(cmd, &all)
    }

    /// Once slipway has exited: its private directory is gone and no
    /// master connection (`ssh: <control path> [mux]`) is left running.
    #[track_caller]
    fn assert_nothing_left(&self) {
        let tmp = self.path("tmp");
        let left: Vec<_> = std::fs::read_dir(&tmp)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left in TMPDIR: {left:?}");
        let needle = tmp.to_string_lossy().into_owned();
        let running = || -> Vec<String> {
            std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.contains(&needle))
                .collect()
        };
        // `ssh -O exit` is answered just before the master exits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while !running().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let masters = running();
        assert!(masters.is_empty(), "still running: {masters:?}");
    }

    /// `slipway check production` succeeded, over the transport expected.
    #[track_caller]
    fn check_ok(&self, ssh: &str, args: &[&str]) -> Run {
        let mut all = vec!["check", "production"];
        all.extend(args);
        let run = self.slipway(ssh, &all).success();
        let client = if ssh == "libssh2" {
            "libssh2 (ssh = libssh2)"
        } else if ssh == "auto" {
            "OpenSSH client (ssh = auto, and "
        } else {
            "OpenSSH client (ssh = openssh)"
        };
        run.contains("ok: host key verified, ").contains(client)
    }
}

/// An ssh-agent on its own socket, killed on drop.
struct Agent {
    socket: PathBuf,
    child: Child,
}

impl Agent {
    fn start(dir: &Path) -> Self {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent runs");
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Self { socket, child }
    }

    /// `ssh-add key` (which adds `key-cert.pub` beside it too).
    fn add(&self, key: &Path) {
        let out = Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.socket)
            .output()
            .expect("ssh-add runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn plain(authorized: &[&str]) -> Sshd {
    Sshd::start_with(
        None,
        &Setup {
            authorized,
            ..Setup::default()
        },
    )
}

/// A server trusting user certificates from `ca` and no authorized key.
fn trusting(ca: &Ca) -> Sshd {
    let public = ca.public_file();
    Sshd::start_with(
        None,
        &Setup {
            user_ca: Some(&public),
            ..Setup::default()
        },
    )
}

fn key_str(path: &Path) -> &str {
    path.to_str().expect("utf-8")
}

// Row: user certificate, `-i key` with `key-cert.pub` beside it.
#[test]
fn a_user_certificate_beside_the_identity_file_logs_in() {
    let ca = Ca::new();
    let server = trusting(&ca);
    let user = Keys::generate();
    ca.sign_user(&user.private, "root");
    let site = Site::new(&[server.spec("root")]);
    site.know(&[server.known_hosts_line()]);
    site.check_ok("auto", &["--identity", key_str(&user.private)]);
    // libssh2 cannot offer a certificate: it says which key it tried.
    site.slipway(
        "libssh2",
        &["check", "production", "--identity", key_str(&user.private)],
    )
    .failure(4)
    .contains("no key was accepted");
}

// Row: user certificate via `CertificateFile` in ssh_config.
#[test]
fn a_user_certificate_named_by_certificate_file_logs_in() {
    let ca = Ca::new();
    let server = trusting(&ca);
    let user = Keys::generate();
    let cert = ca.sign_user(&user.private, "root");
    let elsewhere = PathBuf::from(format!("{}.elsewhere", cert.display()));
    std::fs::rename(&cert, &elsewhere).unwrap();
    let site = Site::new(&[server.spec("root")]);
    site.know(&[server.known_hosts_line()]);
    let config = site.write(
        "ssh_config",
        &format!("Host *\n  CertificateFile {}\n", elsewhere.display()),
    );
    site.check_ok(
        "auto",
        &[
            "--identity",
            key_str(&user.private),
            "--ssh-config",
            key_str(&config),
        ],
    );
}

// Row: user certificate in ssh-agent (both transports).
#[test]
fn a_user_certificate_in_the_agent_logs_in() {
    let ca = Ca::new();
    let server = trusting(&ca);
    let user = Keys::generate();
    ca.sign_user(&user.private, "root");
    let mut site = Site::new(&[server.spec("root")]);
    site.know(&[server.known_hosts_line()]);
    let agent = Agent::start(site.dir.path());
    agent.add(&user.private);
    site.agent = Some(agent);
    site.check_ok("auto", &[]);
    site.check_ok("libssh2", &[]);
}

/// A server whose ed25519 host key has a certificate signed by `ca`.
fn certified(ca: &Ca, authorized: &[&str], more: &[&str]) -> Sshd {
    Sshd::start_with(
        None,
        &Setup {
            authorized,
            host_ca: Some(&ca.keys.private),
            more_host_keys: more,
            ..Setup::default()
        },
    )
}

// Row: host certificate, known_hosts has only `@cert-authority`.
#[test]
fn a_host_certificate_is_verified_against_the_cert_authority() {
    let ca = Ca::new();
    let user = Keys::generate();
    let server = certified(&ca, &[&user.public], &[]);
    let site = Site::new(&[server.spec("root")]);
    site.know(&[ca.known_hosts_line("*")]);
    let before = std::fs::read_to_string(&site.known_hosts).unwrap();
    site.check_ok("auto", &["--identity", key_str(&user.private)]);
    // libssh2 cannot check a certificate: refused, saying so, even when
    // asked to learn new keys, and the certificate is never learnt.
    for extra in [&[][..], &["--accept-new-host-keys"][..]] {
        let mut args = vec!["check", "production", "--identity", key_str(&user.private)];
        args.extend(extra);
        site.slipway("libssh2", &args)
            .failure(4)
            .contains(&server.spec("root"))
            .contains("host certificate")
            .contains("--ssh openssh");
    }
    assert_eq!(
        std::fs::read_to_string(&site.known_hosts).unwrap(),
        before,
        "nothing was learnt"
    );
    // A certificate from another CA is refused by the OpenSSH client too.
    let stranger = Ca::new();
    site.know(&[stranger.known_hosts_line("*")]);
    site.slipway(
        "auto",
        &["check", "production", "--identity", key_str(&user.private)],
    )
    .failure(4)
    .contains(&server.spec("root"));
}

// Row: the server has a host certificate, known_hosts has its plain key.
#[test]
fn a_host_with_a_certificate_is_verified_by_its_plain_key() {
    let ca = Ca::new();
    let user = Keys::generate();
    let server = certified(&ca, &[&user.public], &[]);
    let site = Site::new(&[server.spec("root")]);
    site.know(&[server.known_hosts_line()]);
    for ssh in ["auto", "libssh2"] {
        site.check_ok(ssh, &["--identity", key_str(&user.private)]);
    }
}

// Row: a server with two host key types, known_hosts has one of them.
#[test]
fn a_host_with_two_key_types_is_verified_by_the_one_known() {
    let user = Keys::generate();
    let server = Sshd::start_with(
        None,
        &Setup {
            authorized: &[&user.public],
            more_host_keys: &["ecdsa", "rsa"],
            ..Setup::default()
        },
    );
    let site = Site::new(&[server.spec("root")]);
    let known = [
        server.known_hosts_line(),
        format!("{} {}", server.pattern(), server.more_host_keys[0]),
        format!("{} {}", server.pattern(), server.more_host_keys[1]),
    ];
    for line in &known {
        site.know(std::slice::from_ref(line));
        for ssh in ["auto", "libssh2"] {
            site.check_ok(ssh, &["--identity", key_str(&user.private)]);
        }
    }
}

// Row: `Match host …` blocks.
#[test]
fn match_blocks_in_ssh_config_are_honoured() {
    let user = Keys::generate();
    let server = plain(&[&user.public]);
    let site = Site::new(&["web-1".to_owned()]);
    site.know(&[server.known_hosts_line()]);
    let config = site.write(
        "ssh_config",
        &format!(
            "Match host web-*\n  HostName {}\n  Port {}\n  User root\n  IdentityFile {}\n",
            server.ip,
            server.port,
            user.private.display()
        ),
    );
    site.check_ok("auto", &["--ssh-config", key_str(&config)]);
}

// Row: `Include conf.d/*.conf` (both transports).
#[test]
fn included_ssh_config_files_are_honoured() {
    let user = Keys::generate();
    let server = plain(&[&user.public]);
    let site = Site::new(&["web1".to_owned()]);
    site.know(&[server.known_hosts_line()]);
    site.write(
        "ssh/conf.d/web.conf",
        &format!(
            "Host web1\n  HostName {}\n  Port {}\n  User root\n",
            server.ip, server.port
        ),
    );
    let config = site.write(
        "ssh/config",
        &format!("Include {}/conf.d/*.conf\n", site.path("ssh").display()),
    );
    for ssh in ["auto", "libssh2"] {
        site.check_ok(
            ssh,
            &[
                "--ssh-config",
                key_str(&config),
                "--identity",
                key_str(&user.private),
            ],
        );
    }
}

// Row: `IdentityAgent` in ssh_config (no SSH_AUTH_SOCK).
#[test]
fn identity_agent_in_ssh_config_is_used() {
    let user = Keys::generate();
    let server = plain(&[&user.public]);
    let site = Site::new(&[server.spec("root")]);
    site.know(&[server.known_hosts_line()]);
    let agent = Agent::start(site.dir.path());
    agent.add(&user.private);
    let config = site.write(
        "ssh_config",
        &format!("Host *\n  IdentityAgent {}\n", agent.socket.display()),
    );
    site.check_ok("auto", &["--ssh-config", key_str(&config)]);
}

// Row: `ProxyJump a,b`, two hops.
#[test]
fn a_two_hop_proxy_jump_reaches_the_host() {
    let user = Keys::generate();
    let first = plain(&[&user.public]);
    let second = plain(&[&user.public]);
    let server = plain(&[&user.public]);
    let site = Site::new(&[server.spec("root")]);
    site.know(&[
        first.known_hosts_line(),
        second.known_hosts_line(),
        server.known_hosts_line(),
    ]);
    let config = site.write(
        "ssh_config",
        &format!(
            "Host {}\n  ProxyJump {},{}\n",
            server.ip,
            first.spec("root"),
            second.spec("root")
        ),
    );
    site.check_ok(
        "auto",
        &[
            "--ssh-config",
            key_str(&config),
            "--identity",
            key_str(&user.private),
        ],
    )
    .contains(&format!("via {} then ", first.spec("root")))
    .contains(&format!("{}]:{}", second.ip, second.port));
    site.assert_nothing_left();
    // libssh2 takes one hop and says which transport takes more.
    site.slipway(
        "libssh2",
        &[
            "check",
            "production",
            "--ssh-config",
            key_str(&config),
            "--identity",
            key_str(&user.private),
        ],
    )
    .failure(4)
    .contains("--ssh openssh");
    // The traffic really goes through both hops: without the first, no way in.
    drop(first);
    site.slipway(
        "auto",
        &[
            "check",
            "production",
            "--ssh-config",
            key_str(&config),
            "--identity",
            key_str(&user.private),
        ],
    )
    .failure(4)
    .contains("through the jump host");
}

// Row: `ProxyCommand` (the host's name does not resolve; only the proxy
// command knows where it is).
#[test]
fn a_proxy_command_carries_the_connection() {
    let user = Keys::generate();
    let bastion = plain(&[&user.public]);
    let server = plain(&[&user.public]);
    let site = Site::new(&["internal-web".to_owned()]);
    site.know(&[
        bastion.known_hosts_line(),
        format!("internal-web {}", server.host_key),
    ]);
    let config = site.write(
        "ssh_config",
        &format!(
            "Host internal-web\n  User root\n  ProxyCommand ssh -F none -i {key} -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={known} -p {bport} -W {ip}:{port} root@{bip}\n",
            key = user.private.display(),
            known = site.known_hosts.display(),
            bport = bastion.port,
            bip = bastion.ip,
            ip = server.ip,
            port = server.port,
        ),
    );
    site.check_ok(
        "auto",
        &[
            "--ssh-config",
            key_str(&config),
            "--identity",
            key_str(&user.private),
        ],
    )
    .contains("via its ProxyCommand");
    // libssh2 cannot run it, and says so instead of ignoring it.
    site.slipway(
        "libssh2",
        &[
            "check",
            "production",
            "--ssh-config",
            key_str(&config),
            "--identity",
            key_str(&user.private),
        ],
    )
    .failure(4)
    .contains("ProxyCommand")
    .contains("--ssh openssh");
}

// Row: `Port`/`User` from `Host *` (both transports).
#[test]
fn port_and_user_from_host_star_are_used() {
    let user = Keys::generate();
    let server = plain(&[&user.public]);
    let site = Site::new(std::slice::from_ref(&server.ip));
    site.know(&[server.known_hosts_line()]);
    let config = site.write(
        "ssh_config",
        &format!("Host *\n  Port {}\n  User root\n", server.port),
    );
    for ssh in ["auto", "libssh2"] {
        site.check_ok(
            ssh,
            &[
                "--ssh-config",
                key_str(&config),
                "--identity",
                key_str(&user.private),
            ],
        );
    }
}

// Row: IPv6 `[::1]:port` (both transports).
#[test]
fn an_ipv6_host_is_reached() {
    let user = Keys::generate();
    let server = Sshd::start_with(
        Some("::1"),
        &Setup {
            authorized: &[&user.public],
            ..Setup::default()
        },
    );
    let site = Site::new(&[server.spec("root")]);
    site.know(&[server.known_hosts_line()]);
    for ssh in ["auto", "libssh2"] {
        site.check_ok(ssh, &["--identity", key_str(&user.private)]);
    }
}

// Row: agent only, no key file (both transports).
#[test]
fn an_agent_alone_logs_in() {
    let user = Keys::generate();
    let server = plain(&[&user.public]);
    let mut site = Site::new(&[server.spec("root")]);
    site.know(&[server.known_hosts_line()]);
    let agent = Agent::start(site.dir.path());
    agent.add(&user.private);
    site.agent = Some(agent);
    for ssh in ["auto", "libssh2"] {
        site.check_ok(ssh, &[]);
    }
}

// known_hosts as OpenSSH reads it: a key marked `@revoked` is refused, and
// `--accept-new-host-keys` never overrides it (both transports).
#[test]
fn a_revoked_host_key_is_refused_even_with_accept_new() {
    let user = Keys::generate();
    let server = plain(&[&user.public]);
    let site = Site::new(&[server.spec("root")]);
    let revoked = format!("@revoked * {}", server.host_key);
    for known in [
        vec![server.known_hosts_line(), revoked.clone()],
        vec![revoked.clone()],
    ] {
        site.know(&known);
        let before = std::fs::read_to_string(&site.known_hosts).unwrap();
        for ssh in ["auto", "libssh2"] {
            for extra in [&[][..], &["--accept-new-host-keys"][..]] {
                let mut args = vec!["check", "production", "--identity", key_str(&user.private)];
                args.extend(extra);
                site.slipway(ssh, &args)
                    .failure(4)
                    .contains(&server.spec("root"))
                    .contains("revoked");
            }
        }
        assert_eq!(
            std::fs::read_to_string(&site.known_hosts).unwrap(),
            before,
            "a revoked key is never learnt"
        );
    }
}

// Bastions at scale: thirty hosts behind one jump host use one connection
// to it (counted in the jump host's own log of logins).
#[test]
fn thirty_hosts_behind_one_jump_host_use_one_connection_to_it() {
    let user = Keys::generate();
    let jump = Sshd::start_with(
        None,
        &Setup {
            authorized: &[&user.public],
            extra: "LogLevel VERBOSE\n",
            ..Setup::default()
        },
    );
    let servers: Vec<Sshd> = (0..30).map(|_| plain(&[&user.public])).collect();
    let site = Site::new(&servers.iter().map(|s| s.spec("root")).collect::<Vec<_>>());
    let mut known: Vec<String> = servers.iter().map(Sshd::known_hosts_line).collect();
    known.push(jump.known_hosts_line());
    site.know(&known);
    let run = site
        .slipway(
            "auto",
            &[
                "check",
                "production",
                "--jump",
                &jump.spec("root"),
                "--identity",
                key_str(&user.private),
            ],
        )
        .success();
    assert_eq!(
        run.stdout().matches("ok: host key verified").count(),
        30,
        "{}",
        run.text()
    );
    let logins = jump.log().matches("Accepted publickey").count();
    assert_eq!(logins, 1, "one login on the jump host:\n{}", jump.log());
    site.assert_nothing_left();
}
