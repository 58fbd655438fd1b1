//! SSH hosts (`[user@]host[:port]` or an ssh_config alias), over libssh2.
//!
//! Owns connecting (ssh_config, TCP, jump host), verifying (known_hosts),
//! logging in (agent, key files) and running scripts on one session per host.
//! Invariants: a connection is only used after its host key matched
//! known_hosts and a key was accepted, and checking cannot be turned off;
//! every script runs as `sh -c '<one quoted word>'`, so the remote login
//! shell, whatever it is, sees only a quoted string; no call waits on a
//! host without a bound (connect timeout while connecting, then a
//! non-blocking session with deadlines and keepalives); a session that hit a
//! limit or failed is discarded and the next command reconnects.
//!
//! Submodules: [`config`] (ssh_config), [`known_hosts`], [`auth`], [`jump`]
//! (bastion and tunnels), [`exec`] (the non-blocking command loop).

mod auth;
mod config;
mod exec;
mod jump;
mod known_hosts;

use std::io::Read;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ssh2::Session;
use ssh2_config::SshConfig;

use super::{ConnectOptions, Exit, HostSpec, LostMark, Script, Tail, Transport, TransportError};
use config::Target;
pub use config::home;
use exec::{Limits, Stop};
pub use known_hosts::{host_pattern, path as known_hosts_path};

/// One SSH host, connected.
pub struct Ssh {
    spec: String,
    route: Route,
    /// The session; `None` after a failure, until the next command reconnects.
    conn: Mutex<Option<Conn>>,
    /// Why this transport was chosen, for `slipway check`.
    why: String,
    /// Set once the host is declared lost; later commands fail at once
    /// instead of reconnecting.
    lost: LostMark,
}

/// An authenticated session in non-blocking mode, and a handle on its socket
/// for waiting (libssh2 owns the reading).
struct Conn {
    session: Session,
    socket: TcpStream,
}

/// Everything needed to (re)connect to a host.
struct Route {
    target: Target,
    via: Option<Arc<jump::Bastion>>,
    options: ConnectOptions,
    identities: Vec<PathBuf>,
    known_hosts: PathBuf,
}

impl Ssh {
    /// Resolves `spec` (already parsed into `user`, `host`, `port`) through
    /// ssh_config, connects (through the jump host if any), verifies the host
    /// key and logs in.
    ///
    /// # Errors
    /// When any of that fails; the error names the host and what to do.
    pub fn connect(
        spec: &str,
        user: Option<&str>,
        host: &str,
        port: Option<u16>,
        options: &ConnectOptions,
        why: String,
    ) -> Result<Self, TransportError> {
        let fail = |reason: String| TransportError::Connect {
            host: spec.to_owned(),
            reason,
        };
        let config = config::load(options.ssh_config.as_deref()).map_err(fail)?;
        let target = config::resolve(config.as_ref(), user, host, port).map_err(fail)?;
        let known_hosts = known_hosts::path(options.known_hosts.as_deref());
        let via = match options.jump.as_deref().or(target.proxy_jump.as_deref()) {
            Some(jump) => Some(bastion(spec, jump, config.as_ref(), options, &known_hosts)?),
            None => None,
        };
        let route = Route {
            identities: auth::candidates(&options.identity_files, &target.identity_files),
            target,
            via,
            options: options.clone(),
            known_hosts,
        };
        let conn = route.open(spec)?;
        Ok(Self {
            spec: spec.to_owned(),
            route,
            conn: Mutex::new(Some(conn)),
            why,
            lost: LostMark::default(),
        })
    }
}

/// The shared connection to the jump host `jump`.
fn bastion(
    spec: &str,
    jump: &str,
    config: Option<&SshConfig>,
    options: &ConnectOptions,
    known_hosts: &std::path::Path,
) -> Result<Arc<jump::Bastion>, TransportError> {
    let fail = |reason: String| TransportError::Connect {
        host: spec.to_owned(),
        reason: format!("through the jump host {jump}: {reason}"),
    };
    let HostSpec::Ssh { user, host, port } =
        HostSpec::parse(jump).map_err(|e| fail(e.to_string()))?
    else {
        return Err(fail(
            "a jump host must be an SSH host, not local:".to_owned(),
        ));
    };
    let target = config::resolve(config, user.as_deref(), &host, port).map_err(fail)?;
    let identities = auth::candidates(&options.identity_files, &target.identity_files);
    let key = format!(
        "{}\n{}\n{:?}\n{}",
        target.login(),
        known_hosts.display(),
        identities,
        options.accept_new_host_keys
    );
    jump::shared(&key, || {
        let socket = dial(jump, &target, options.connect_timeout)?;
        let handle = socket.try_clone().map_err(|e| TransportError::Connect {
            host: jump.to_owned(),
            reason: format!("cannot use the socket: {e}"),
        })?;
        let session = handshake(jump, &target, handle, options, known_hosts, &identities)?;
        Ok((session, socket, jump.to_owned()))
    })
    .map_err(|e| match e {
        // Host key and login errors name the jump host and say what to do;
        // a plain connection failure is told from the target's side.
        TransportError::Connect { reason, .. } => fail(reason),
        other => other,
    })
}

impl Route {
    fn open(&self, label: &str) -> Result<Conn, TransportError> {
        let socket = match &self.via {
            Some(bastion) => bastion.tunnel(
                label,
                &self.target.host,
                self.target.port,
                self.options.connect_timeout,
            )?,
            None => dial(label, &self.target, self.options.connect_timeout)?,
        };
        let handle = socket.try_clone().map_err(|e| TransportError::Connect {
            host: label.to_owned(),
            reason: format!("cannot use the socket: {e}"),
        })?;
        let session = handshake(
            label,
            &self.target,
            handle,
            &self.options,
            &self.known_hosts,
            &self.identities,
        )?;
        session.set_blocking(false);
        Ok(Conn { session, socket })
    }
}

/// TCP to the first address of `target` that answers within `timeout`.
fn dial(label: &str, target: &Target, timeout: Duration) -> Result<TcpStream, TransportError> {
    let fail = |reason: String| TransportError::Connect {
        host: label.to_owned(),
        reason,
    };
    let addresses: Vec<_> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| fail(format!("cannot resolve the host name {}: {e}", target.host)))?
        .collect();
    let mut last = None;
    for address in &addresses {
        match TcpStream::connect_timeout(address, timeout) {
            Ok(socket) => {
                let _ = socket.set_nodelay(true);
                return Ok(socket);
            }
            Err(e) => last = Some(format!("{address}: {e}")),
        }
    }
    Err(fail(format!(
        "no SSH server answered on port {} ({}); check that the host is up, sshd runs and the port is open",
        target.port,
        last.unwrap_or_else(|| "the name has no addresses".to_owned())
    )))
}

/// SSH handshake, host key check and login on a connected socket, all
/// bounded by the connect timeout.
fn handshake(
    label: &str,
    target: &Target,
    socket: TcpStream,
    options: &ConnectOptions,
    known_hosts: &std::path::Path,
    identities: &[PathBuf],
) -> Result<Session, TransportError> {
    let fail = |reason: String| TransportError::Connect {
        host: label.to_owned(),
        reason,
    };
    let mut session = Session::new()
        .map_err(|e| fail(format!("cannot start an SSH session: {}", e.message())))?;
    session.set_tcp_stream(socket);
    // AES-GCM first: hardware-accelerated on current CPUs, and artifacts are
    // large. Every cipher offered is one OpenSSH enables by default; names
    // this libssh2 lacks are dropped by it, so the result is not checked.
    for direction in [ssh2::MethodType::CryptCs, ssh2::MethodType::CryptSc] {
        let _ = session.method_pref(direction, CIPHERS);
    }
    known_hosts::prefer_known_types(&session, &target.host, target.port, known_hosts);
    session.set_blocking(true);
    session.set_timeout(millis(options.connect_timeout));
    session.handshake().map_err(|e| {
        fail(format!(
            "the SSH handshake with {}:{} failed within {}: {} (is an SSH server answering there?)",
            target.host,
            target.port,
            humantime::format_duration(options.connect_timeout),
            e.message()
        ))
    })?;
    known_hosts::verify(
        &session,
        label,
        &target.host,
        target.port,
        known_hosts,
        options.accept_new_host_keys,
    )?;
    auth::authenticate(&session, label, &target.login(), &target.user, identities)?;
    let keepalive = u32::try_from(options.keepalive.as_secs().max(1)).unwrap_or(u32::MAX);
    session.set_keepalive(true, keepalive);
    session.set_timeout(0);
    Ok(session)
}

/// Cipher preference, best first.
const CIPHERS: &str = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr";

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis().max(1)).unwrap_or(u32::MAX)
}

impl Transport for Ssh {
    fn host(&self) -> &str {
        &self.spec
    }

    fn resolve(&self, path: &str) -> String {
        path.to_owned()
    }

    fn describe(&self) -> String {
        match &self.route.via {
            Some(bastion) => format!("libssh2 ({}), via {}", self.why, bastion.label),
            None => format!("libssh2 ({})", self.why),
        }
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

impl Ssh {
    /// One command on the session, reconnecting first if the last one
    /// failed.
    fn exec_once(
        &self,
        script: &Script,
        stdin: Option<&mut (dyn Read + Send)>,
        timeout: Option<Duration>,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<Exit, TransportError> {
        let command = super::remote_command(script).map_err(|e| self.unquotable(e))?;
        let limit = timeout.or(self.route.options.command_timeout);
        let limits = Limits {
            deadline: limit.map(|t| Instant::now() + t),
            lost_after: self.route.options.lost_after(),
        };
        let mut guard = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let conn = match guard.take() {
            Some(conn) => guard.insert(conn),
            None => guard.insert(self.route.open(&self.spec)?),
        };
        let mut tail = Tail::default();
        let mut on = |line: &str| {
            tail.push(line);
            on_line(line);
        };
        match exec::run(
            &conn.session,
            &conn.socket,
            &command,
            stdin,
            limits,
            &mut on,
        ) {
            Ok(code) => Ok(Exit {
                code,
                tail: tail.text(),
            }),
            Err(stop) => {
                // The session is in an unknown state: drop it (closing the
                // socket first so nothing waits on it); the next command
                // reconnects.
                if let Some(conn) = guard.take() {
                    let _ = conn.socket.shutdown(Shutdown::Both);
                }
                let host = self.spec.clone();
                Err(match stop {
                    Stop::Timeout => TransportError::Timeout {
                        host,
                        what: "command".to_owned(),
                        after: limit.unwrap_or_default(),
                    },
                    Stop::Silent(silent) => TransportError::Unresponsive { host, silent },
                    Stop::Failed(what, reason) => TransportError::Lost { host, what, reason },
                })
            }
        }
    }
}
