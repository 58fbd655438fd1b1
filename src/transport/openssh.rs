//! SSH hosts over the system OpenSSH client (`ssh`), one multiplexed master
//! connection per host.
//!
//! Owns the `ssh = "openssh"` transport: everything OpenSSH reads (ssh_config
//! with `Match`, `Include`, `ProxyJump` chains, `ProxyCommand`, certificates,
//! `IdentityAgent`, FIDO keys, `@cert-authority` and `@revoked` known_hosts
//! lines) works as it does for `ssh`, because `ssh` does it.
//!
//! Invariants:
//! - `ssh` is run with an argument vector, never through a local shell; the
//!   remote command is one `sh -c '<quoted word>'` built with [`quote`].
//! - Every `ssh` process reads slipway's own ssh_config first (written in a
//!   private 0700 directory, see [`control`]): `BatchMode yes` (it never
//!   prompts), `StrictHostKeyChecking yes` (`accept-new` with
//!   `--accept-new-host-keys`, which never accepts a changed key), the
//!   known_hosts file and identities given to slipway, and the control
//!   socket settings; then the user's own ssh_config is included. ssh_config
//!   takes the first value of each option, so nothing the user wrote can turn
//!   checking off; jump-host hops read the same file.
//! - One master connection per host and one per jump host, shared by every
//!   host behind it: the jump host's master is opened (once, under a lock)
//!   before any host behind it connects. Every master is closed
//!   (`ssh -O exit`) when the last transport using the directory is dropped;
//!   an idle master exits by itself after [`control::PERSIST`].
//! - ssh's own complaints (stderr) are turned into the same errors the
//!   libssh2 transport gives: which host, what was tried, what to do.

pub mod control;
mod errors;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::{ConnectOptions, Exit, LostMark, Script, Tail, Transport, TransportError};
use control::ControlDir;

/// Bytes copied to `ssh`'s stdin at a time: large, so uploads are not paced
/// by small pipe writes.
const CHUNK: usize = 256 * 1024;
/// ssh's own messages kept for an error (its stderr is short; this bounds a
/// misbehaving ProxyCommand).
const STDERR_LIMIT: usize = 64 * 1024;

/// One SSH host reached through `ssh`.
pub struct OpenSsh {
    spec: String,
    /// `-l user -p port -J jump -- host`: what names this host on ssh's command line.
    destination: Vec<OsString>,
    resolved: Resolved,
    control: Arc<ControlDir>,
    command_timeout: Option<Duration>,
    why: String,
    /// Set once the host is declared lost; later commands fail at once.
    lost: LostMark,
    /// Silence after which ssh drops the connection (see
    /// [`ConnectOptions::lost_after`]).
    lost_after: Duration,
}

/// What `ssh -G` says about a host, for messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub hostname: String,
    pub port: u16,
    pub user: String,
    /// ProxyJump hops, first to last; empty when direct.
    pub jump: Vec<String>,
    /// Set when a ProxyCommand carries the connection.
    pub proxy_command: Option<String>,
    /// Identity files ssh would offer that exist.
    pub identities: Vec<PathBuf>,
}

impl Resolved {
    /// `user@host:port`, as the libssh2 transport writes it.
    pub fn login(&self) -> String {
        if self.hostname.contains(':') {
            format!("{}@[{}]:{}", self.user, self.hostname, self.port)
        } else {
            format!("{}@{}:{}", self.user, self.hostname, self.port)
        }
    }

    /// How known_hosts names this host.
    pub fn pattern(&self) -> String {
        super::ssh::host_pattern(&self.hostname, self.port)
    }
}

impl OpenSsh {
    /// Resolves `spec` with `ssh -G`, opens the jump host's master if there
    /// is one, then this host's master (verifying its host key and logging in).
    ///
    /// # Errors
    /// When `ssh` cannot be run or refuses; the error names the host and what to do.
    pub fn connect(
        spec: &str,
        user: Option<&str>,
        host: &str,
        port: Option<u16>,
        options: &ConnectOptions,
        why: String,
    ) -> Result<Self, TransportError> {
        let control = ControlDir::shared(options).map_err(|reason| TransportError::Connect {
            host: spec.to_owned(),
            reason,
        })?;
        let mut destination: Vec<OsString> = Vec::new();
        if let Some(user) = user {
            destination.extend(["-l".into(), user.into()]);
        }
        if let Some(port) = port {
            destination.extend(["-p".into(), port.to_string().into()]);
        }
        if let Some(jump) = &options.jump {
            destination.extend(["-J".into(), jump.into()]);
        }
        destination.extend(["--".into(), host.into()]);
        let resolved =
            resolve(&control, &destination).map_err(|reason| TransportError::Connect {
                host: spec.to_owned(),
                reason,
            })?;
        let this = Self {
            spec: spec.to_owned(),
            destination,
            resolved,
            control,
            command_timeout: options.command_timeout,
            why,
            lost: LostMark::default(),
            lost_after: options.lost_after(),
        };
        if let Some((last, before)) = this.resolved.jump.split_last() {
            this.open_jump(last, before)?;
        }
        this.open_master()?;
        Ok(this)
    }

    /// The host's master connection: `ssh host true` with `ControlMaster auto`
    /// leaves it running for every later command.
    fn open_master(&self) -> Result<(), TransportError> {
        let out = self
            .control
            .ssh()
            .args(&self.destination)
            .arg("true")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| self.spawn_error(source))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(errors::classify(
            &errors::Failing {
                label: &self.spec,
                resolved: &self.resolved,
                control: &self.control,
                destination: &self.destination,
            },
            &stderr,
        ))
    }

    /// Makes sure the last jump hop `last` (reached through `before`) has its
    /// master before this host connects: the first host opens it, the others
    /// reuse it, so every host behind it shares one connection to it.
    /// Errors name the jump host.
    fn open_jump(&self, last: &str, before: &[String]) -> Result<(), TransportError> {
        static OPENING: Mutex<()> = Mutex::new(());
        // Held while connecting: hosts behind this jump host wait for its
        // master instead of racing to open their own connections to it.
        // Once it is up, this is one multiplexed `true` per host.
        let _opening = OPENING.lock().unwrap_or_else(PoisonError::into_inner);
        let mut destination: Vec<OsString> = Vec::new();
        if !before.is_empty() {
            destination.extend(["-J".into(), before.join(",").into()]);
        }
        destination.extend(["--".into(), jump_destination(last).into()]);
        let through = |e: TransportError| match e {
            TransportError::Connect { reason, .. } => TransportError::Connect {
                host: self.spec.clone(),
                reason: format!("through the jump host {last}: {reason}"),
            },
            other => other,
        };
        let resolved = resolve(&self.control, &destination).map_err(|reason| {
            through(TransportError::Connect {
                host: last.to_owned(),
                reason,
            })
        })?;
        let out = self
            .control
            .ssh()
            .args(&destination)
            .arg("true")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| self.spawn_error(source))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(through(errors::classify(
                &errors::Failing {
                    label: last,
                    resolved: &resolved,
                    control: &self.control,
                    destination: &destination,
                },
                &stderr,
            )));
        }
        Ok(())
    }

    /// Whether this host's master connection is still up (`ssh -O check`).
    fn master_alive(&self) -> bool {
        self.control
            .ssh()
            .args(["-O", "check"])
            .args(&self.destination)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn spawn_error(&self, source: std::io::Error) -> TransportError {
        TransportError::Connect {
            host: self.spec.clone(),
            reason: format!(
                "cannot run the OpenSSH client `ssh`: {source}; install it (apt-get install openssh-client) or choose --ssh libssh2"
            ),
        }
    }
}

/// `ssh -G <destination>`: the options ssh would use, without connecting.
fn resolve(control: &ControlDir, destination: &[OsString]) -> Result<Resolved, String> {
    let out = control
        .ssh()
        .arg("-G")
        .args(destination)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!("cannot run the OpenSSH client `ssh`: {e}; install it (apt-get install openssh-client) or choose --ssh libssh2")
        })?;
    if !out.status.success() {
        return Err(format!(
            "ssh cannot read its configuration: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_g(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_g(text: &str) -> Resolved {
    let mut r = Resolved {
        port: 22,
        ..Resolved::default()
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        match key {
            "hostname" => r.hostname = value.to_owned(),
            "port" => r.port = value.parse().unwrap_or(22),
            "user" => r.user = value.to_owned(),
            "proxyjump" if value != "none" => {
                r.jump = value.split(',').map(str::to_owned).collect();
            }
            "proxycommand" if value != "none" => r.proxy_command = Some(value.to_owned()),
            "identityfile" => {
                let path = expand_home(value);
                if path.exists() && !r.identities.contains(&path) {
                    r.identities.push(path);
                }
            }
            _ => {}
        }
    }
    r
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), super::ssh::home()) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path),
    }
}

/// One ProxyJump hop as a destination: `ssh://` form, so a `:port` is a port.
fn jump_destination(hop: &str) -> String {
    if hop.starts_with("ssh://") {
        hop.to_owned()
    } else {
        format!("ssh://{hop}")
    }
}

impl Transport for OpenSsh {
    fn host(&self) -> &str {
        &self.spec
    }

    fn resolve(&self, path: &str) -> String {
        path.to_owned()
    }

    fn describe(&self) -> String {
        let mut text = format!("OpenSSH client ({})", self.why);
        if !self.resolved.jump.is_empty() {
            text.push_str(&format!(", via {}", self.resolved.jump.join(" then ")));
        } else if self.resolved.proxy_command.is_some() {
            text.push_str(", via its ProxyCommand");
        }
        text
    }

    fn exec(
        &self,
        script: &Script,
        stdin: Option<&mut (dyn Read + Send)>,
        timeout: Option<Duration>,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<Exit, TransportError> {
        self.lost.check(&self.spec)?;
        self.exec_once(script, stdin, timeout, on_line)
            .map_err(|e| self.lost.note(e))
    }
}

impl OpenSsh {
    /// One `ssh` command over the master (which ssh reopens if it went).
    fn exec_once(
        &self,
        script: &Script,
        stdin: Option<&mut (dyn Read + Send)>,
        timeout: Option<Duration>,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<Exit, TransportError> {
        let command = super::remote_command(script).map_err(|e| self.unquotable(e))?;
        let limit = timeout.or(self.command_timeout);
        let deadline = limit.map(|t| Instant::now() + t);
        let mut child = self
            .control
            .ssh()
            .args(&self.destination)
            .arg(command)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error(source))?;
        let mut tail = Tail::default();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        // The readers are detached, not scoped: ssh hands its pipes to the
        // master connection, so killing it at a deadline does not close
        // them; they close when the remote command ends, which a timeout
        // must not wait for (it is for commands that do not end).
        let complaints = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.take(STDERR_LIMIT as u64).read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        });
        let (lines, received) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut reader = BufReader::with_capacity(CHUNK, stdout);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                if lines
                    .send(String::from_utf8_lossy(text).into_owned())
                    .is_err()
                {
                    break;
                }
                line.clear();
            }
        });
        let outcome = std::thread::scope(|scope| {
            let child_stdin = child.stdin.take();
            let feeding = match (stdin, child_stdin) {
                (Some(reader), Some(pipe)) => Some(scope.spawn(move || feed(reader, pipe))),
                _ => None,
            };
            let finished = pump(&received, deadline, &mut |line: &str| {
                tail.push(line);
                on_line(line);
            });
            if !finished {
                // Past the deadline: stop the local client, which closes the
                // session's channel; the master stays up for other commands.
                let _ = child.kill();
            }
            let status = child.wait();
            let fed = feeding.map(|f| f.join().unwrap_or(Ok(())));
            (finished, status, fed)
        });
        let (finished, status, fed) = outcome;
        if !finished {
            return Err(TransportError::Timeout {
                host: self.spec.clone(),
                what: "command".to_owned(),
                after: limit.unwrap_or_default(),
            });
        }
        let complaints = complaints.join().unwrap_or_default();
        let status = status.map_err(|source| TransportError::Io {
            host: self.spec.clone(),
            what: "waiting for ssh".to_owned(),
            source,
        })?;
        self.finish(status, fed, &complaints, tail)
    }
}

impl OpenSsh {
    /// Turns ssh's exit into the command's: 255 with ssh's own complaint on
    /// stderr is ssh failing (the remote stderr is joined to stdout, so
    /// ssh's stderr carries only ssh's messages).
    ///
    /// 255 with nothing on stderr is ambiguous: the command's own status,
    /// or the master connection dropping under the session. The master
    /// does not say why to this client (a host that stopped answering its
    /// keepalives and one that closed the connection look the same here),
    /// so when the master is gone the error says both.
    fn finish(
        &self,
        status: ExitStatus,
        fed: Option<std::io::Result<()>>,
        complaints: &str,
        tail: Tail,
    ) -> Result<Exit, TransportError> {
        if status.code() == Some(255) && complaints.contains("not responding") {
            return Err(TransportError::Unresponsive {
                host: self.spec.clone(),
                silent: self.lost_after,
            });
        }
        if status.code() == Some(255) && complaints.trim().is_empty() && !self.master_alive() {
            return Err(TransportError::Lost {
                host: self.spec.clone(),
                what: "running a command".to_owned(),
                reason: format!(
                    "the connection dropped: the host stopped answering (nothing for {}, keepalives included) or closed it",
                    humantime::format_duration(self.lost_after)
                ),
            });
        }
        if status.code() == Some(255) && !complaints.trim().is_empty() {
            return Err(errors::classify_running(
                &errors::Failing {
                    label: &self.spec,
                    resolved: &self.resolved,
                    control: &self.control,
                    destination: &self.destination,
                },
                complaints,
            ));
        }
        if let Some(Err(source)) = fed
            && status.success()
        {
            return Err(TransportError::Io {
                host: self.spec.clone(),
                what: "sending input to the command".to_owned(),
                source,
            });
        }
        Ok(Exit {
            code: status.code(),
            tail: tail.text(),
        })
    }
}

/// Hands output lines to `on_line` until the stream ends (`true`) or the
/// deadline passes (`false`).
fn pump(
    received: &mpsc::Receiver<String>,
    deadline: Option<Instant>,
    on_line: &mut dyn FnMut(&str),
) -> bool {
    loop {
        let next = match deadline {
            None => received.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(deadline) => {
                received.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            }
        };
        match next {
            Ok(line) => on_line(&line),
            Err(RecvTimeoutError::Disconnected) => return true,
            Err(RecvTimeoutError::Timeout) => return false,
        }
    }
}

/// Copies `reader` into ssh's stdin, then closes it (the remote side sees EOF).
/// A pipe closed by ssh ends the copy quietly: ssh's exit says why.
fn feed(reader: &mut (dyn Read + Send), mut pipe: std::process::ChildStdin) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Err(e) = pipe.write_all(&buf[..n]) {
            return if e.kind() == std::io::ErrorKind::BrokenPipe {
                Ok(())
            } else {
                Err(e)
            };
        }
    }
}

/// Where `ssh` is on `PATH`, if anywhere.
pub fn find_ssh() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .map(|dir| dir.join("ssh"))
                .find(|candidate| is_executable(candidate))
        })
        .clone()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_g_output_is_read() {
        let r = parse_g(
            "user deploy\nhostname 10.0.0.5\nport 2222\nproxyjump a,root@b:2200\nproxycommand none\nidentityfile /nonexistent/key\n",
        );
        assert_eq!(r.hostname, "10.0.0.5");
        assert_eq!(r.port, 2222);
        assert_eq!(r.user, "deploy");
        assert_eq!(r.jump, ["a", "root@b:2200"]);
        assert_eq!(r.proxy_command, None);
        assert!(r.identities.is_empty());
        assert_eq!(r.login(), "deploy@10.0.0.5:2222");
        assert_eq!(r.pattern(), "[10.0.0.5]:2222");
    }

    #[test]
    fn jump_hops_become_uris() {
        assert_eq!(jump_destination("root@1.2.3.4:22"), "ssh://root@1.2.3.4:22");
        assert_eq!(jump_destination("ssh://b"), "ssh://b");
    }
}
