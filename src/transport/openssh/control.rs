//! slipway's private ssh_config and the control sockets of its master
//! connections.
//!
//! Owns one temporary directory per set of connect options (mode 0700, so no
//! other user can reach a master through its socket), the ssh_config written
//! in it, and the closing of every master when the last transport using it
//! is dropped. Invariants: slipway's settings come before the user's
//! ssh_config (ssh takes the first value of an option), so `BatchMode`,
//! `StrictHostKeyChecking` and the known_hosts file slipway was given cannot
//! be overridden; every value is quoted for ssh_config and `%` is escaped, so
//! a path is only ever a path.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use crate::transport::ConnectOptions;

/// How long an idle master stays up: it outlives the gaps between a
/// rollout's steps, and a master left by a killed slipway goes away by
/// itself. A master that went away is reopened by the next command.
pub const PERSIST: &str = "10m";

/// The live directories, by the options they were written for.
type Shared = Vec<(String, Weak<ControlDir>)>;

/// The directory, its ssh_config and its control sockets.
pub struct ControlDir {
    dir: tempfile::TempDir,
    config: PathBuf,
    /// The known_hosts file named in messages.
    known_hosts: PathBuf,
}

impl ControlDir {
    /// The directory for `options`, shared by every transport opened with
    /// the same options in this process (so jump hosts are shared too).
    ///
    /// # Errors
    /// When the directory or its config cannot be written, or a path cannot
    /// be written in ssh_config.
    pub fn shared(options: &ConnectOptions) -> Result<Arc<Self>, String> {
        static DIRS: OnceLock<Mutex<Shared>> = OnceLock::new();
        let key = format!("{options:?}");
        let mut dirs = DIRS
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        dirs.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(dir) = dirs
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, weak)| weak.upgrade())
        {
            return Ok(dir);
        }
        let dir = Arc::new(Self::create(options)?);
        dirs.push((key, Arc::downgrade(&dir)));
        Ok(dir)
    }

    fn create(options: &ConnectOptions) -> Result<Self, String> {
        // A control socket path must fit in sun_path (107 bytes and a
        // NUL): `<base>/<dir>/<%C, 40 hex>`, and ssh first binds it with a
        // 17-byte temporary suffix. A $TMPDIR too long for that falls
        // back to /tmp.
        let base = std::env::temp_dir();
        let socket = |base: &Path| {
            base.as_os_str().len() + 1 + crate::scratch::name_len("ssh") + 1 + 40 + 17
        };
        let base = if socket(&base) > 107 {
            PathBuf::from("/tmp")
        } else {
            base
        };
        // 0700 from the start: whoever reaches a control socket can use
        // the master's login.
        let dir = crate::scratch::dir_in("ssh", &base, 0o700).map_err(|e| {
            format!(
                "cannot create a private directory in {}: {e}",
                base.display()
            )
        })?;
        let config = dir.path().join("ssh_config");
        let text = config_text(options, dir.path())?;
        std::fs::write(&config, text)
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let known_hosts = crate::transport::ssh::known_hosts_path(options.known_hosts.as_deref());
        Ok(Self {
            dir,
            config,
            known_hosts,
        })
    }

    /// The directory holding the config and sockets.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The known_hosts file slipway was given (or `~/.ssh/known_hosts`).
    pub fn known_hosts(&self) -> PathBuf {
        self.known_hosts.clone()
    }

    /// `ssh -F <slipway's config>`, ready for more arguments.
    pub fn ssh(&self) -> Command {
        self.ssh_with(&self.config)
    }

    /// `ssh -F <config>`.
    pub fn ssh_with(&self, config: &Path) -> Command {
        let program = super::find_ssh().unwrap_or_else(|| PathBuf::from("ssh"));
        let mut cmd = Command::new(program);
        cmd.arg("-F").arg(config);
        cmd
    }

    /// Writes `name` in the directory: `settings`, then slipway's config
    /// (so `settings` win). Used by the unknown-key probe.
    pub fn probe_config(&self, name: &str, settings: &str) -> Result<PathBuf, String> {
        let text = std::fs::read_to_string(&self.config)
            .map_err(|e| format!("cannot read {}: {e}", self.config.display()))?;
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{settings}{text}"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }
}

impl Drop for ControlDir {
    /// Closes every master (the jump hosts' too) before the directory goes.
    fn drop(&mut self) {
        use std::os::unix::fs::FileTypeExt;
        let sockets: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
            .map(|e| e.path())
            .collect();
        let closing: Vec<_> = sockets
            .iter()
            .filter_map(|socket| {
                let program = super::find_ssh().unwrap_or_else(|| PathBuf::from("ssh"));
                Command::new(program)
                    .args(["-F", "/dev/null", "-o"])
                    .arg(format!(
                        "ControlPath={}",
                        escape_percent(&socket.to_string_lossy())
                    ))
                    .args(["-O", "exit", "slipway-master"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()
            })
            .collect();
        for mut child in closing {
            let _ = child.wait();
        }
    }
}

/// slipway's ssh_config: its settings, then the user's config.
fn config_text(options: &ConnectOptions, dir: &Path) -> Result<String, String> {
    let mut text = String::from(
        "# Written by slipway for this run; deleted when it ends.\n\
         # slipway's settings come first: ssh takes the first value of each option.\n\
         BatchMode yes\n",
    );
    let strict = if options.accept_new_host_keys {
        "accept-new"
    } else {
        "yes"
    };
    let _ = writeln!(text, "StrictHostKeyChecking {strict}");
    if let Some(known) = &options.known_hosts {
        let _ = writeln!(text, "UserKnownHostsFile {}", value(known, true)?);
    }
    for (n, identity) in options.identity_files.iter().enumerate() {
        let usable = normalised(identity, dir, n)?;
        let _ = writeln!(text, "IdentityFile {}", value(&usable, true)?);
    }
    let _ = writeln!(
        text,
        "ControlMaster auto\nControlPath {}\nControlPersist {PERSIST}",
        value(&dir.join("%C"), false)?
    );
    // A silent host is dropped after ServerAliveInterval × (CountMax + 1):
    // one interval to ask, then as many as cover the connect timeout to
    // answer, i.e. `ConnectOptions::lost_after` (rounded up to whole
    // intervals), as libssh2 does.
    let timeout = options.connect_timeout.as_secs().max(1);
    let keepalive = options.keepalive.as_secs().max(1);
    let count = timeout.div_ceil(keepalive);
    let _ = writeln!(
        text,
        "ConnectTimeout {timeout}\nServerAliveInterval {keepalive}\nServerAliveCountMax {count}\nLogLevel ERROR"
    );
    // The user's ssh_config, as `ssh` reads it: the one given, or the
    // user's and the system's (missing files are skipped by Include).
    match &options.ssh_config {
        Some(path) => {
            let path = std::path::absolute(path)
                .map_err(|e| format!("cannot find the ssh_config file {}: {e}", path.display()))?;
            if !path.is_file() {
                return Err(format!(
                    "cannot read the ssh_config file {}: it does not exist",
                    path.display()
                ));
            }
            let _ = writeln!(text, "Include {}", value(&path, false)?);
        }
        None => text.push_str("Include ~/.ssh/config\nInclude /etc/ssh/ssh_config\n"),
    }
    Ok(text)
}

/// `file`, or a copy in `dir` with CRLF turned to LF and a final newline
/// when it has neither (a key pasted through Windows or a CI secret
/// store), which OpenSSH refuses to parse. Its `.pub` and `-cert.pub`
/// companions are copied beside it so certificates keep working.
fn normalised(file: &Path, dir: &Path, n: usize) -> Result<PathBuf, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(raw) = std::fs::read(file) else {
        // Missing or unreadable: ssh says so when it tries it.
        return Ok(file.to_path_buf());
    };
    if !raw.contains(&b'\r') && raw.ends_with(b"\n") {
        return Ok(file.to_path_buf());
    }
    let fix = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes)
            .replace("\r\n", "\n")
            .replace('\r', "\n");
        format!("{}\n", text.trim_end())
    };
    let copy = dir.join(format!("identity-{n}"));
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, fix(bytes).as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(&copy, &raw)?;
    for suffix in [".pub", "-cert.pub"] {
        let mut companion = file.as_os_str().to_owned();
        companion.push(suffix);
        if let Ok(bytes) = std::fs::read(&companion) {
            write(&dir.join(format!("identity-{n}{suffix}")), &bytes)?;
        }
    }
    Ok(copy)
}

/// A path as one ssh_config value: double-quoted, `%` doubled where ssh
/// expands tokens.
fn value(path: &Path, escape_tokens: bool) -> Result<String, String> {
    let text = path.to_str().ok_or_else(|| {
        format!(
            "{} is not UTF-8, which ssh_config cannot hold",
            path.display()
        )
    })?;
    if text.contains(['"', '\n', '\r']) {
        return Err(format!(
            "{} contains a quote or a line break, which ssh_config cannot hold",
            path.display()
        ));
    }
    let text = if escape_tokens {
        escape_percent(text)
    } else {
        text.to_owned()
    };
    Ok(format!("\"{text}\""))
}

fn escape_percent(text: &str) -> String {
    text.replace('%', "%%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slipway_settings_come_before_the_users_config() {
        let options = ConnectOptions {
            known_hosts: Some("/k/known hosts".into()),
            identity_files: vec!["/k/100%key".into()],
            ..ConnectOptions::default()
        };
        let text = config_text(&options, Path::new("/tmp/slipway-ssh-x")).unwrap();
        let strict = text.find("StrictHostKeyChecking yes").unwrap();
        let include = text.find("Include ~/.ssh/config").unwrap();
        assert!(strict < include, "{text}");
        assert!(
            text.contains("UserKnownHostsFile \"/k/known hosts\""),
            "{text}"
        );
        assert!(text.contains("IdentityFile \"/k/100%%key\""), "{text}");
        assert!(
            text.contains("ControlPath \"/tmp/slipway-ssh-x/%C\""),
            "{text}"
        );
        assert!(text.contains("BatchMode yes"));
        // Declared lost after connect timeout + one keepalive: 5 s × (2 + 1).
        assert!(
            text.contains("ConnectTimeout 10\nServerAliveInterval 5\nServerAliveCountMax 2\n"),
            "{text}"
        );
        let learning = ConnectOptions {
            accept_new_host_keys: true,
            ..ConnectOptions::default()
        };
        assert!(
            config_text(&learning, Path::new("/d"))
                .unwrap()
                .contains("StrictHostKeyChecking accept-new")
        );
        assert!(value(Path::new("/a\"b"), true).is_err());
    }

    #[test]
    fn the_directory_is_private_and_shared_by_equal_options() {
        use std::os::unix::fs::PermissionsExt;
        let options = ConnectOptions {
            known_hosts: Some("/k/private-test".into()),
            ..ConnectOptions::default()
        };
        let dir = ControlDir::shared(&options).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(Arc::ptr_eq(&dir, &ControlDir::shared(&options).unwrap()));
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists(), "removed with the last transport");
    }
}
