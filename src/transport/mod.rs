//! How slipway reaches a host: run a script, stream its output, send a file.
//!
//! Owns the [`Transport`] trait and the host-spec parsing that picks an
//! implementation (`local:/path` folders now; SSH drops in beside them).
//! Invariants: every command a transport runs is a [`Script`] built by
//! [`quote`], so no runtime value reaches a shell unquoted; stdout and stderr
//! arrive as one ordered stream of lines; a non-zero exit is an error that
//! names the host, the step and the tail of the output.

pub mod local;
pub mod openssh;
pub mod quote;
pub mod ssh;

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use quote::{Script, Unquotable};

/// How many trailing output lines an error keeps: enough to see the cause,
/// short enough for a chat message or a CI log.
pub const TAIL_LINES: usize = 20;

/// The longest line of output kept whole; a longer one arrives as several
/// lines of this size. A host (or a command) printing without newlines
/// would otherwise grow one line without bound.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The most output [`Transport::run_with`] collects from one script
/// (`releases`, `status`, history read back from a host). Past it the step
/// fails rather than growing without bound; a history this large holds
/// about 100 000 deploys.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024 * 1024;

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit status; `None` when the command was killed by a signal.
    pub code: Option<i32>,
    /// The last [`TAIL_LINES`] lines of output.
    pub tail: String,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("`{spec}` is not a host: {reason}")]
    BadHost { spec: String, reason: String },
    #[error("on {host}: cannot start `sh`: {source}")]
    Spawn {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("on {host}: {what}: {source}")]
    Io {
        host: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("on {host}: {what} did not finish within {}; it was stopped", humantime::format_duration(*.after))]
    Timeout {
        host: String,
        what: String,
        after: Duration,
    },
    #[error(
        "on {host}: {what} did not finish within {}, and slipway could not stop it there: {reason}. The host itself stops it at its own deadline, {} after it started; `slipway recover` stops it sooner",
        humantime::format_duration(*.after), humantime::format_duration(*.deadline)
    )]
    NotStopped {
        host: String,
        what: String,
        after: Duration,
        reason: String,
        /// When the host itself stops it.
        deadline: Duration,
    },
    #[error("on {host}: {what} failed with {}{}", status_text(*.code), tail_text(.tail))]
    Failed {
        host: String,
        what: String,
        code: Option<i32>,
        tail: String,
    },
    #[error("on {host}: {source}")]
    Unquotable {
        host: String,
        #[source]
        source: Unquotable,
    },
    #[error("cannot connect to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error(
        "cannot connect to {host}: its host key is not known (not in {}); the key it offers has the fingerprint {fingerprint}. If that is the key you expect, add this line to {}:\n{line}\nor run again with --accept-new-host-keys",
        .known_hosts.display(), .known_hosts.display()
    )]
    UnknownHostKey {
        host: String,
        fingerprint: String,
        line: String,
        known_hosts: PathBuf,
    },
    #[error(
        "refusing to connect to {host}: its host key has CHANGED. It now offers {fingerprint}, which does not match the key recorded in {}. This could be a man-in-the-middle attack, or the host was reinstalled; check with its administrator, then remove the old entry with `ssh-keygen -R '{name}' -f {}`",
        .known_hosts.display(), .known_hosts.display()
    )]
    ChangedHostKey {
        host: String,
        name: String,
        fingerprint: String,
        known_hosts: PathBuf,
    },
    #[error(
        "refusing to connect to {host}: its host key is marked @revoked in {} ({detail}). A revoked key is never accepted, --accept-new-host-keys included; the host's administrator must give it a new host key",
        .known_hosts.display()
    )]
    RevokedHostKey {
        host: String,
        detail: String,
        known_hosts: PathBuf,
    },
    #[error(
        "refusing to connect to {host}: ssh did not accept its host key (checked against {}): {detail}",
        .known_hosts.display()
    )]
    HostKeyRefused {
        host: String,
        detail: String,
        known_hosts: PathBuf,
    },
    #[error(
        "cannot connect to {host}: it offers a host certificate ({fingerprint}) and {} trusts host certificates from a @cert-authority line, but the libssh2 transport cannot verify certificates; use the OpenSSH transport (--ssh openssh, or SLIPWAY_SSH=openssh), which does. The certificate was not learnt",
        .known_hosts.display()
    )]
    HostCertificate {
        host: String,
        fingerprint: String,
        known_hosts: PathBuf,
    },
    #[error(
        "cannot log in to {host}: no key was accepted for {login} (tried: {tried}); add the deploy key to that user's authorized_keys, load it into ssh-agent, or pass --identity"
    )]
    Auth {
        host: String,
        login: String,
        tried: String,
    },
    #[error(
        "on {host}: the host stopped answering (nothing received for {}, keepalives included); it or its network may be frozen",
        humantime::format_duration(*.silent)
    )]
    Unresponsive { host: String, silent: Duration },
    #[error(
        "on {host}: {what} printed more than {}, slipway's cap for output it keeps; it was stopped there (a history this large can be trimmed: keep the last lines of <deploy_to>/.slipway/history.jsonl)",
        crate::limits::human(*.limit as u64)
    )]
    TooMuchOutput {
        host: String,
        what: String,
        limit: usize,
    },
    #[error(
        "on {host}: not tried: the host was declared lost earlier in this run (see above); check it, then run `slipway status`"
    )]
    AlreadyLost { host: String },
    #[error("on {host}: the SSH connection failed while {what}: {reason}")]
    Lost {
        host: String,
        what: String,
        reason: String,
    },
}

fn status_text(code: Option<i32>) -> String {
    code.map_or_else(|| "a signal".to_owned(), |c| format!("exit status {c}"))
}

fn tail_text(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; last output:\n{}", tail.trim_end())
    }
}

/// A host slipway can run scripts on.
///
/// Methods block: transports may wrap blocking libraries (libssh2), so the
/// rollout engine calls them from blocking threads, never from async tasks.
pub trait Transport: Send + Sync {
    /// The name used in output and errors, as written in the config.
    fn host(&self) -> &str;

    /// How this host is reached, for `slipway check` (e.g. which SSH
    /// transport and why).
    fn describe(&self) -> String {
        "local folder".to_owned()
    }

    /// Maps an absolute server path (`deploy_to`) to where it lives for this
    /// transport. SSH hosts use it as is; a `local:` host resolves it inside
    /// its folder, so several local hosts never share files.
    fn resolve(&self, path: &str) -> String;

    /// Runs `script` with `sh`, feeding `stdin` if given, calling `on_line`
    /// for each line of combined stdout and stderr, and killing it after
    /// `timeout`.
    ///
    /// # Errors
    /// When the script cannot be started, times out, or the connection fails.
    /// A non-zero exit is *not* an error here; see [`Transport::run`].
    fn exec(
        &self,
        script: &Script,
        stdin: Option<&mut (dyn Read + Send)>,
        timeout: Option<Duration>,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<Exit, TransportError>;

    /// Runs a short `script` (no stdin) so that it does not wait behind a
    /// long command running on this host at the same time. The lock's lease
    /// renewal runs here while a deploy hook may run for minutes. Transports
    /// whose commands already run side by side (one process each: `local:`,
    /// OpenSSH over its multiplexed master) just [`Transport::exec`] it.
    ///
    /// # Errors
    /// As [`Transport::exec`].
    fn exec_aside(
        &self,
        script: &Script,
        timeout: Option<Duration>,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<Exit, TransportError> {
        self.exec(script, None, timeout, on_line)
    }

    /// Runs `script` as the step `what`; a non-zero exit is an error carrying
    /// the output's tail. Returns the whole output.
    ///
    /// # Errors
    /// Any [`Transport::exec`] error, or [`TransportError::Failed`].
    fn run(&self, what: &str, script: &Script) -> Result<String, TransportError> {
        self.run_with(what, script, None, None)
    }

    /// [`Transport::run`] with stdin and a timeout.
    ///
    /// # Errors
    /// Any [`Transport::exec`] error, or [`TransportError::Failed`].
    fn run_with(
        &self,
        what: &str,
        script: &Script,
        stdin: Option<&mut (dyn Read + Send)>,
        timeout: Option<Duration>,
    ) -> Result<String, TransportError> {
        let mut output = String::new();
        let mut overflow = false;
        let exit = self
            .exec(script, stdin, timeout, &mut |line| {
                // Past the cap the rest is dropped, and the step fails below.
                if output.len() + line.len() < MAX_OUTPUT_BYTES {
                    output.push_str(line);
                    output.push('\n');
                } else {
                    overflow = true;
                }
            })
            .map_err(|e| match e {
                TransportError::Timeout { host, after, .. } => TransportError::Timeout {
                    host,
                    what: what.to_owned(),
                    after,
                },
                other => other,
            })?;
        if overflow {
            Err(TransportError::TooMuchOutput {
                host: self.host().to_owned(),
                what: what.to_owned(),
                limit: MAX_OUTPUT_BYTES,
            })
        } else if exit.success() {
            Ok(output)
        } else {
            Err(TransportError::Failed {
                host: self.host().to_owned(),
                what: what.to_owned(),
                code: exit.code,
                tail: exit.tail,
            })
        }
    }

    /// Sends a local file to `remote`, atomically: it appears under its final
    /// name only when complete. `progress` receives the bytes sent so far.
    ///
    /// # Errors
    /// When the file cannot be read or the remote write fails.
    fn upload(
        &self,
        local: &Path,
        remote: &str,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), TransportError> {
        let file = std::fs::File::open(local).map_err(|source| TransportError::Io {
            host: self.host().to_owned(),
            what: format!("reading {}", local.display()),
            source,
        })?;
        let size = file
            .metadata()
            .map_err(|source| TransportError::Io {
                host: self.host().to_owned(),
                what: format!("reading {}", local.display()),
                source,
            })?
            .len();
        let script = upload_script(remote, size).map_err(|source| self.unquotable(source))?;
        let mut reader = Counting::new(file, progress);
        self.run_with(
            &format!("upload to {remote}"),
            &script,
            Some(&mut reader),
            None,
        )?;
        Ok(())
    }

    /// Wraps a quoting failure with this host's name.
    fn unquotable(&self, source: Unquotable) -> TransportError {
        TransportError::Unquotable {
            host: self.host().to_owned(),
            source,
        }
    }
}

/// What [`Transport::upload`] runs on the host: copy stdin to
/// `<remote>.part`, check it holds all `size` bytes, rename it to `remote`.
/// The partial file is removed however the script ends: a dropped
/// connection reads as end of input (the size check fails), a full disk
/// fails `cat`, a stop is a signal. So a failed upload leaves nothing.
///
/// # Errors
/// When `remote` contains a NUL byte.
pub fn upload_script(remote: &str, size: u64) -> Result<Script, Unquotable> {
    let partial = format!("{remote}.part");
    let short = format!(
        "the upload to {remote} ended before all {size} bytes arrived (the connection dropped?); nothing was kept"
    );
    Script::new()
        .remove_on_exit(&[&partial])?
        .raw_with("cat >", [&partial])?
        .line(
            "if [ \"$(wc -c < {})\" -ne {} ]; then printf '%s\\n' {} >&2; exit 1; fi",
            [&partial, &size.to_string(), &short],
        )?
        .cmd(["mv", "-f", &partial, remote])
}

/// A reader that reports how many bytes have passed through it.
pub struct Counting<'a, R> {
    inner: R,
    seen: u64,
    progress: &'a (dyn Fn(u64) + Sync),
}

impl<'a, R: Read> Counting<'a, R> {
    pub fn new(inner: R, progress: &'a (dyn Fn(u64) + Sync)) -> Self {
        Self {
            inner,
            seen: 0,
            progress,
        }
    }
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen += n as u64;
        (self.progress)(self.seen);
        Ok(n)
    }
}

/// Keeps the last lines of a stream for error messages.
#[derive(Debug, Default)]
pub struct Tail {
    lines: VecDeque<String>,
}

impl Tail {
    pub fn push(&mut self, line: &str) {
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line.to_owned());
    }

    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Where a host spec points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSpec {
    /// `local:/abs/path`: a folder on this machine standing for a host's root.
    Local(PathBuf),
    /// `[user@]host[:port]` or an ssh_config alias.
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
    },
}

impl HostSpec {
    /// Parses a host as written in `slipway.toml`.
    ///
    /// # Errors
    /// When the spec is empty, a `local:` path is relative, or a port is not a number.
    pub fn parse(spec: &str) -> Result<Self, TransportError> {
        let bad = |reason: &str| TransportError::BadHost {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = spec.strip_prefix("local:") {
            let path = PathBuf::from(path);
            return if path.is_absolute() {
                Ok(Self::Local(path))
            } else {
                Err(bad(
                    "a local host needs an absolute path, e.g. local:/srv/hosts/web1",
                ))
            };
        }
        let (user, rest) = match spec.split_once('@') {
            Some((u, r)) => (Some(u.to_owned()), r),
            None => (None, spec),
        };
        if let Some(bracketed) = rest.strip_prefix('[') {
            // `[::1]:22` or `[::1]`: an IPv6 address, optionally with a port.
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address opened with `[` needs a closing `]`"))?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .and_then(|p| p.parse::<u16>().ok())
                        .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
                ),
            };
            if host.is_empty() || user.as_deref() == Some("") {
                return Err(bad(
                    "expected [user@]host[:port], an ssh_config alias, or local:/path",
                ));
            }
            return Ok(Self::Ssh {
                user,
                host: host.to_owned(),
                port,
            });
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| bad("the port must be a number from 1 to 65535"))?;
                (h.to_owned(), Some(port))
            }
            _ => (rest.to_owned(), None),
        };
        if host.is_empty() || user.as_deref() == Some("") {
            return Err(bad(
                "expected [user@]host[:port], an ssh_config alias, or local:/path",
            ));
        }
        Ok(Self::Ssh { user, host, port })
    }
}

/// Which SSH client carries SSH hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SshChoice {
    /// The OpenSSH client when `ssh` is on `PATH`, else libssh2.
    #[default]
    Auto,
    /// The system OpenSSH client (`ssh`), with multiplexed master connections.
    OpenSsh,
    /// The built-in libssh2 client.
    Libssh2,
}

/// A value of `--ssh` that is none of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an SSH transport: use auto, openssh or libssh2")]
pub struct UnknownSshChoice(pub String);

impl std::str::FromStr for SshChoice {
    type Err = UnknownSshChoice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "openssh" => Ok(Self::OpenSsh),
            "libssh2" => Ok(Self::Libssh2),
            other => Err(UnknownSshChoice(other.to_owned())),
        }
    }
}

impl SshChoice {
    /// Whether to use the OpenSSH client, and why (shown by `slipway check`).
    pub fn pick(self) -> (bool, String) {
        match self {
            Self::OpenSsh => (true, "ssh = openssh".to_owned()),
            Self::Libssh2 => (false, "ssh = libssh2".to_owned()),
            Self::Auto => match openssh::find_ssh() {
                Some(path) => (
                    true,
                    format!("ssh = auto, and {} is installed", path.display()),
                ),
                None => (false, "ssh = auto, and no `ssh` is on PATH".to_owned()),
            },
        }
    }
}

/// How SSH hosts are reached and verified. Local hosts ignore it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Which SSH client to use.
    pub ssh: SshChoice,
    /// known_hosts file to verify host keys against (default `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// Learn the keys of hosts not yet in known_hosts (never accepts a changed key).
    pub accept_new_host_keys: bool,
    /// Identity files tried after the agent (default: `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`).
    pub identity_files: Vec<PathBuf>,
    /// ssh_config file (default `~/.ssh/config`, if it exists).
    pub ssh_config: Option<PathBuf>,
    /// Jump host for every host, as `[user@]host[:port]` or an ssh_config alias.
    pub jump: Option<String>,
    pub connect_timeout: Duration,
    /// Keepalive interval: how long a connection stays silent before
    /// asking the host. See [`ConnectOptions::lost_after`].
    pub keepalive: Duration,
    /// Upper bound for any one remote command (hooks have their own timeout).
    pub command_timeout: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            ssh: SshChoice::Auto,
            known_hosts: None,
            accept_new_host_keys: false,
            identity_files: Vec::new(),
            ssh_config: None,
            jump: None,
            connect_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(5),
            command_timeout: None,
        }
    }
}

impl ConnectOptions {
    /// How long a host may send nothing at all (keepalive replies
    /// included) before it is declared lost: one keepalive interval to
    /// ask, then the connect timeout to answer. Both transports use this
    /// one bound (OpenSSH through `ServerAliveInterval` and
    /// `ServerAliveCountMax`, libssh2 through its exec loop), and a host
    /// declared lost is not tried again in the same run.
    pub fn lost_after(&self) -> Duration {
        self.keepalive.max(Duration::from_secs(1))
            + self.connect_timeout.max(Duration::from_secs(1))
    }
}

/// Remembers, for one transport (one host, one run), that the host was
/// declared lost, so later steps fail at once instead of each waiting out
/// another connect timeout on a host that is not answering.
#[derive(Debug, Default)]
pub(crate) struct LostMark(std::sync::Mutex<Option<String>>);

impl LostMark {
    /// Records `error` when it means the host is gone (it stopped
    /// answering, the connection failed, or it could not be reached
    /// again); a command that failed or timed out on a host that still
    /// answers is not.
    pub(crate) fn note(&self, error: TransportError) -> TransportError {
        let lost = matches!(
            error,
            TransportError::Unresponsive { .. }
                | TransportError::Lost { .. }
                | TransportError::Connect { .. }
        );
        if lost {
            let mut mark = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            mark.get_or_insert_with(|| error.to_string());
        }
        error
    }

    /// An error when the host was declared lost earlier in this run.
    pub(crate) fn check(&self, host: &str) -> Result<(), TransportError> {
        let mark = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match mark.as_ref() {
            Some(_) => Err(TransportError::AlreadyLost {
                host: host.to_owned(),
            }),
            None => Ok(()),
        }
    }
}

/// Opens a transport for one host.
///
/// # Errors
/// When the spec is invalid or the host cannot be reached.
pub fn connect(spec: &str, options: &ConnectOptions) -> Result<Box<dyn Transport>, TransportError> {
    match HostSpec::parse(spec)? {
        HostSpec::Local(root) => Ok(Box::new(local::Local::new(spec, root))),
        HostSpec::Ssh { user, host, port } => match options.ssh.pick() {
            (true, why) => Ok(Box::new(openssh::OpenSsh::connect(
                spec,
                user.as_deref(),
                &host,
                port,
                options,
                why,
            )?)),
            (false, why) => Ok(Box::new(ssh::Ssh::connect(
                spec,
                user.as_deref(),
                &host,
                port,
                options,
                why,
            )?)),
        },
    }
}

/// What an SSH transport asks the remote login shell to run: `script` with
/// stderr joined to stdout (one ordered stream), as a single quoted `sh -c`
/// word, so it means the same whatever the login shell is.
///
/// # Errors
/// When the script cannot be quoted (it holds a NUL).
pub(crate) fn remote_command(script: &Script) -> Result<String, Unquotable> {
    let body = format!("exec 2>&1\n{script}");
    Ok(format!("sh -c {}", quote::quote(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_specs_parse() {
        assert_eq!(
            HostSpec::parse("local:/srv/web1").unwrap(),
            HostSpec::Local("/srv/web1".into())
        );
        assert_eq!(
            HostSpec::parse("deploy@127.0.0.11:2201").unwrap(),
            HostSpec::Ssh {
                user: Some("deploy".into()),
                host: "127.0.0.11".into(),
                port: Some(2201)
            }
        );
        assert_eq!(
            HostSpec::parse("web1").unwrap(),
            HostSpec::Ssh {
                user: None,
                host: "web1".into(),
                port: None
            }
        );
        assert!(HostSpec::parse("local:relative").is_err());
        assert!(HostSpec::parse("deploy@web:notaport").is_err());
        assert!(HostSpec::parse("@web").is_err());
        assert_eq!(
            HostSpec::parse("deploy@[::1]:2201").unwrap(),
            HostSpec::Ssh {
                user: Some("deploy".into()),
                host: "::1".into(),
                port: Some(2201)
            }
        );
        assert_eq!(
            HostSpec::parse("[fe80::1]").unwrap(),
            HostSpec::Ssh {
                user: None,
                host: "fe80::1".into(),
                port: None
            }
        );
        assert!(HostSpec::parse("[::1").is_err());
        assert!(HostSpec::parse("[::1]:x").is_err());
    }

    /// Runs the upload script with `sh`, feeding it `sent` as the
    /// connection would; returns its exit code.
    fn upload_with(remote: &Path, size: u64, sent: &[u8]) -> i32 {
        use std::io::Write as _;
        let script = upload_script(remote.to_str().unwrap(), size).unwrap();
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script.as_str())
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(sent).unwrap();
        child.wait().unwrap().code().unwrap_or(-1)
    }

    #[test]
    fn an_upload_cut_off_half_way_leaves_no_file() {
        // A dropped connection is, for the remote shell, input that ends
        // early: the partial file must go, and nothing may appear under the
        // final name.
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("abc.tar.gz");
        let data = vec![7u8; 100_000];
        assert_eq!(upload_with(&remote, data.len() as u64, &data[..40_000]), 1);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");

        assert_eq!(upload_with(&remote, data.len() as u64, &data), 0);
        assert_eq!(std::fs::read(&remote).unwrap(), data);
        assert!(!dir.path().join("abc.tar.gz.part").exists());
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let mut tail = Tail::default();
        for i in 0..50 {
            tail.push(&i.to_string());
        }
        let text = tail.text();
        assert!(text.starts_with("30\n"));
        assert!(text.ends_with("\n49"));
    }
}
