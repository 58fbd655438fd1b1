//! Where an SSH host really is: `~/.ssh/config` (or `--ssh-config`) applied
//! to a host spec.
//!
//! Owns the resolution of Host aliases, HostName, User, Port, IdentityFile and
//! ProxyJump. Invariants: what the user wrote in the spec wins over the file
//! (as with `ssh`), the file's first match wins per option, and a file that
//! is named but cannot be read or parsed is an error, never silently skipped.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ssh2_config::{ParseRule, SshConfig};

/// A host as resolved, ready to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The name or address to connect to (and to look up in known_hosts).
    pub host: String,
    pub port: u16,
    pub user: String,
    /// IdentityFile entries from ssh_config, in order.
    pub identity_files: Vec<PathBuf>,
    /// ProxyJump from ssh_config (one hop), unless it is `none`.
    pub proxy_jump: Option<String>,
}

impl Target {
    /// `user@host:port`, for messages.
    pub fn login(&self) -> String {
        if self.host.contains(':') {
            format!("{}@[{}]:{}", self.user, self.host, self.port)
        } else {
            format!("{}@{}:{}", self.user, self.host, self.port)
        }
    }
}

/// The user's home directory, from `$HOME`.
pub fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// Reads `explicit`, or `~/.ssh/config` when it exists.
///
/// # Errors
/// When the file cannot be read or parsed; the message names the file.
pub fn load(explicit: Option<&Path>) -> Result<Option<SshConfig>, String> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => match home().map(|h| h.join(".ssh/config")) {
            Some(path) if path.exists() => path,
            _ => return Ok(None),
        },
    };
    let file = File::open(&path)
        .map_err(|e| format!("cannot read the ssh_config file {}: {e}", path.display()))?;
    SshConfig::default()
        .parse(
            &mut BufReader::new(file),
            ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
        )
        .map(Some)
        .map_err(|e| format!("cannot parse the ssh_config file {}: {e}", path.display()))
}

/// Applies `config` to a host as written (`[user@]host[:port]` or an alias).
///
/// # Errors
/// When no user is known, or ProxyJump lists several hops.
pub fn resolve(
    config: Option<&SshConfig>,
    user: Option<&str>,
    host: &str,
    port: Option<u16>,
) -> Result<Target, String> {
    let params = config.map(|c| c.query(host));
    let params = params.as_ref();
    let hostname = params
        .and_then(|p| p.host_name.as_deref())
        .map_or_else(|| host.to_owned(), |h| h.replace("%h", host));
    let user = user
        .map(str::to_owned)
        .or_else(|| params.and_then(|p| p.user.clone()))
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .or_else(|| std::env::var("LOGNAME").ok().filter(|u| !u.is_empty()))
        .ok_or_else(|| {
            "no user to log in as: write it in the host spec (deploy@host), set User in ssh_config, or set $USER".to_owned()
        })?;
    // Never ignored silently: without its proxy the host name may not even resolve.
    if params.is_some_and(|p| {
        p.unsupported_fields
            .keys()
            .chain(p.ignored_fields.keys())
            .any(|k| k.eq_ignore_ascii_case("proxycommand"))
    }) {
        return Err(format!(
            "ssh_config gives {host} a ProxyCommand, which the libssh2 transport cannot run; use the OpenSSH transport (--ssh openssh), which does"
        ));
    }
    let proxy_jump = match params.and_then(|p| p.proxy_jump.as_deref()) {
        None | Some([]) => None,
        Some([one]) if one.eq_ignore_ascii_case("none") => None,
        Some([one]) => Some(one.clone()),
        Some(many) => {
            return Err(format!(
                "ProxyJump {} has several hops; the libssh2 transport supports one jump host, the OpenSSH transport (--ssh openssh) any number",
                many.join(",")
            ));
        }
    };
    Ok(Target {
        host: hostname,
        port: port.or_else(|| params.and_then(|p| p.port)).unwrap_or(22),
        user,
        identity_files: params
            .and_then(|p| p.identity_file.clone())
            .unwrap_or_default(),
        proxy_jump,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> SshConfig {
        SshConfig::default()
            .home_dir("/home/me")
            .parse(&mut text.as_bytes(), ParseRule::ALLOW_UNKNOWN_FIELDS)
            .expect("parses")
    }

    #[test]
    fn aliases_resolve_and_the_spec_wins() {
        let config = parse(
            "Host web1\n  HostName 10.0.0.5\n  User deploy\n  Port 2222\n  IdentityFile ~/.ssh/deploy\n  ProxyJump bastion\n\nHost *\n  User nobody\n",
        );
        let t = resolve(Some(&config), None, "web1", None).unwrap();
        assert_eq!(t.host, "10.0.0.5");
        assert_eq!(t.user, "deploy");
        assert_eq!(t.port, 2222);
        assert_eq!(t.identity_files, [PathBuf::from("/home/me/.ssh/deploy")]);
        assert_eq!(t.proxy_jump.as_deref(), Some("bastion"));
        let t = resolve(Some(&config), Some("root"), "web1", Some(22)).unwrap();
        assert_eq!((t.user.as_str(), t.port), ("root", 22));
        let other = resolve(Some(&config), None, "db", None).unwrap();
        assert_eq!((other.host.as_str(), other.user.as_str()), ("db", "nobody"));
        assert_eq!(other.proxy_jump, None);
    }

    #[test]
    fn proxy_jump_none_and_chains() {
        let config = parse("Host a\n  ProxyJump none\nHost b\n  ProxyJump j1,j2\n");
        assert_eq!(
            resolve(Some(&config), Some("u"), "a", None)
                .unwrap()
                .proxy_jump,
            None
        );
        let err = resolve(Some(&config), Some("u"), "b", None).unwrap_err();
        assert!(err.contains("one jump host"), "{err}");
        assert!(err.contains("--ssh openssh"), "{err}");
    }

    #[test]
    fn a_proxy_command_is_refused_not_ignored() {
        let config = SshConfig::default()
            .parse(
                &mut "Host internal\n  ProxyCommand nc %h %p\n".as_bytes(),
                ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
            )
            .expect("parses");
        let err = resolve(Some(&config), Some("u"), "internal", None).unwrap_err();
        assert!(
            err.contains("ProxyCommand") && err.contains("--ssh openssh"),
            "{err}"
        );
        assert!(resolve(Some(&config), Some("u"), "other", None).is_ok());
    }
}
