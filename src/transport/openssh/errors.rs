//! ssh's complaints turned into slipway's errors.
//!
//! Owns the reading of `ssh`'s stderr (OpenSSH's own wording, which has been
//! stable for many releases) into the [`TransportError`] variants the
//! libssh2 transport gives, so a user sees the same message whichever
//! transport ran: which host, what was tried, what to do. Invariants: an
//! unknown host key is shown with its fingerprint and the exact line to add,
//! fetched by a probe that writes only to a scratch known_hosts in the
//! private directory and cannot log in (every authentication method off);
//! anything unrecognised is passed on in ssh's own words, never hidden.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

use super::Resolved;
use super::control::ControlDir;
use crate::transport::TransportError;

/// The connection that failed.
pub struct Failing<'a> {
    /// The host as the user wrote it (or the jump hop).
    pub label: &'a str,
    pub resolved: &'a Resolved,
    pub control: &'a ControlDir,
    pub destination: &'a [OsString],
}

/// ssh failed while connecting (or reconnecting).
pub fn classify(f: &Failing, stderr: &str) -> TransportError {
    let lines: Vec<&str> = stderr
        .lines()
        .map(|l| l.trim_end_matches('\r').trim())
        .filter(|l| !l.is_empty() && !l.starts_with("@@@"))
        .collect();
    let find = |needle: &str| lines.iter().find(|l| l.contains(needle)).copied();
    let known_hosts = f.control.known_hosts();
    if find("REMOTE HOST IDENTIFICATION HAS CHANGED").is_some()
        || find("has changed and you have requested strict checking").is_some()
    {
        let name = find("has changed and you have requested")
            .and_then(|l| between(l, "Host key for ", " has changed"))
            .unwrap_or_else(|| f.resolved.pattern());
        let fingerprint = lines
            .iter()
            .find_map(|l| l.strip_prefix("SHA256:"))
            .map(|fp| format!("SHA256:{}", fp.trim_end_matches('.')))
            .unwrap_or_else(|| "an unknown fingerprint".to_owned());
        let file = find("Offending ")
            .and_then(|l| l.split(" key in ").nth(1))
            .and_then(|rest| rest.rsplit_once(':').map(|(path, _)| PathBuf::from(path)))
            .unwrap_or(known_hosts);
        return TransportError::ChangedHostKey {
            host: f.label.to_owned(),
            name,
            fingerprint,
            known_hosts: file,
        };
    }
    if let Some(line) = find("is marked as revoked") {
        return TransportError::RevokedHostKey {
            host: f.label.to_owned(),
            detail: line.to_owned(),
            known_hosts,
        };
    }
    if let Some(line) = find("host key is known for") {
        let kind = between(line, "No ", " host key is known").unwrap_or_default();
        return unknown(f, &kind, known_hosts);
    }
    if find("Host key verification failed").is_some() {
        // Certificates (expired, wrong principal, no matching CA) and
        // other refusals: ssh's own words say which.
        return TransportError::HostKeyRefused {
            host: f.label.to_owned(),
            detail: lines.join("; "),
            known_hosts,
        };
    }
    if let Some(line) = find("Permission denied") {
        let mut tried: Vec<String> = Vec::new();
        if std::env::var_os("SSH_AUTH_SOCK").is_some_and(|s| !s.is_empty()) {
            tried.push("ssh-agent".to_owned());
        }
        tried.extend(
            f.resolved
                .identities
                .iter()
                .map(|p| p.display().to_string()),
        );
        if tried.is_empty() {
            tried.push("no agent and no key file ssh could find".to_owned());
        }
        let said = line
            .split_once(": ")
            .map_or(line, |(_, rest)| rest)
            .trim_end_matches('.');
        return TransportError::Auth {
            host: f.label.to_owned(),
            login: f.resolved.login(),
            tried: format!(
                "{} and their certificates; ssh said: {said}",
                tried.join(", ")
            ),
        };
    }
    let said = if lines.is_empty() {
        "ssh exited without saying why".to_owned()
    } else {
        lines.join("; ")
    };
    let hint = if said.contains("Connection refused")
        || said.contains("timed out")
        || said.contains("No route to host")
    {
        "; check that the host is up, sshd runs and the port is open"
    } else if said.contains("Could not resolve hostname") {
        "; check the host name, or its HostName in ssh_config"
    } else {
        ""
    };
    TransportError::Connect {
        host: f.label.to_owned(),
        reason: format!("{said}{hint}"),
    }
}

/// ssh failed while a command ran: a host key or login problem means the
/// master had to reconnect and was refused; anything else is a lost connection.
pub fn classify_running(f: &Failing, stderr: &str) -> TransportError {
    match classify(f, stderr) {
        TransportError::Connect { host, reason } => TransportError::Lost {
            host,
            what: "running a command".to_owned(),
            reason,
        },
        other => other,
    }
}

/// An unknown host key: fetch it to show the fingerprint and the line.
fn unknown(f: &Failing, kind: &str, known_hosts: PathBuf) -> TransportError {
    match probe(f) {
        Ok((line, fingerprint)) => TransportError::UnknownHostKey {
            host: f.label.to_owned(),
            fingerprint,
            line,
            known_hosts,
        },
        Err(why) => TransportError::Connect {
            host: f.label.to_owned(),
            reason: format!(
                "its {kind} host key is not known (not in {}), and it could not be fetched to show it ({why}); add the host's key to that file, or run again with --accept-new-host-keys",
                known_hosts.display()
            ),
        },
    }
}

/// Connects once more with a scratch known_hosts that learns the key and
/// every login method off, then reads the line ssh wrote and its fingerprint.
fn probe(f: &Failing) -> Result<(String, String), String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let scratch = f.control.path().join(format!("probe-{n}-known_hosts"));
    std::fs::write(&scratch, "").map_err(|e| e.to_string())?;
    let settings = format!(
        "UserKnownHostsFile \"{}\"\nGlobalKnownHostsFile /dev/null\nStrictHostKeyChecking accept-new\nHashKnownHosts no\nControlMaster no\nPubkeyAuthentication no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nHostbasedAuthentication no\nGSSAPIAuthentication no\n",
        scratch.display()
    );
    let config = f
        .control
        .probe_config(&format!("probe-{n}_config"), &settings)?;
    let out = f
        .control
        .ssh_with(&config)
        .args(f.destination)
        .arg("true")
        .stdin(Stdio::null())
        .output();
    let learnt = std::fs::read_to_string(&scratch).unwrap_or_default();
    let fingerprint = fingerprint_of(&scratch);
    let _ = std::fs::remove_file(&scratch);
    let _ = std::fs::remove_file(&config);
    out.map_err(|e| e.to_string())?;
    let line = learnt
        .lines()
        .next()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| "the host sent no key".to_owned())?;
    let fingerprint = fingerprint.ok_or_else(|| "its key is malformed".to_owned())?;
    Ok((line.to_owned(), fingerprint))
}

/// `SHA256:…` of the first key in a known_hosts file, as `ssh-keygen -l` prints it.
fn fingerprint_of(file: &std::path::Path) -> Option<String> {
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .filter(|fp| fp.starts_with("SHA256:"))
        .map(str::to_owned)
}

/// The text between `start` and `end` in `line`.
fn between(line: &str, start: &str, end: &str) -> Option<String> {
    let from = line.find(start)? + start.len();
    let to = from + line[from..].find(end)?;
    Some(line[from..to].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::ConnectOptions;

    fn classified(stderr: &str) -> TransportError {
        let control = ControlDir::shared(&ConnectOptions {
            known_hosts: Some("/k/known_hosts".into()),
            ..ConnectOptions::default()
        })
        .unwrap();
        let resolved = Resolved {
            hostname: "10.0.0.5".into(),
            port: 2222,
            user: "deploy".into(),
            identities: vec!["/k/id_ed25519".into()],
            ..Resolved::default()
        };
        classify(
            &Failing {
                label: "web1",
                resolved: &resolved,
                control: &control,
                destination: &[],
            },
            stderr,
        )
    }

    #[test]
    fn a_changed_key_names_the_entry_and_fingerprint() {
        let e = classified(
            "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n\
             @    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n\
             The fingerprint for the ED25519 key sent by the remote host is\r\n\
             SHA256:abcDEF123.\r\n\
             Offending ED25519 key in /k/known_hosts:3\r\n\
             Host key for [10.0.0.5]:2222 has changed and you have requested strict checking.\r\n\
             Host key verification failed.\r\n",
        );
        let TransportError::ChangedHostKey {
            host,
            name,
            fingerprint,
            known_hosts,
        } = e
        else {
            panic!("{e:?}")
        };
        assert_eq!(host, "web1");
        assert_eq!(name, "[10.0.0.5]:2222");
        assert_eq!(fingerprint, "SHA256:abcDEF123");
        assert_eq!(known_hosts, PathBuf::from("/k/known_hosts"));
    }

    #[test]
    fn refusals_and_connection_failures_keep_ssh_words() {
        let e = classified(
            "The ED25519 host key for [10.0.0.5]:2222 is marked as revoked.\nHost key verification failed.\n",
        );
        assert!(matches!(e, TransportError::RevokedHostKey { .. }), "{e:?}");
        let e = classified("deploy@10.0.0.5: Permission denied (publickey).\n");
        let text = e.to_string();
        assert!(matches!(e, TransportError::Auth { .. }), "{e:?}");
        assert!(
            text.contains("deploy@10.0.0.5:2222") && text.contains("/k/id_ed25519"),
            "{text}"
        );
        let e = classified("ssh: connect to host 10.0.0.5 port 2222: Connection refused\n");
        let text = e.to_string();
        assert!(
            text.contains("Connection refused") && text.contains("sshd runs"),
            "{text}"
        );
        let e = classified(
            "Certificate invalid: name is not a listed principal\nHost key verification failed.\n",
        );
        assert!(matches!(e, TransportError::HostKeyRefused { .. }), "{e:?}");
        assert!(e.to_string().contains("not a listed principal"));
    }

    #[test]
    fn between_finds_the_host() {
        assert_eq!(
            between(
                "Host key for [127.0.0.12]:2202 has changed and you have requested strict checking.",
                "Host key for ",
                " has changed"
            )
            .as_deref(),
            Some("[127.0.0.12]:2202")
        );
        assert_eq!(
            between(
                "No ED25519 host key is known for x and you",
                "No ",
                " host key is known"
            )
            .as_deref(),
            Some("ED25519")
        );
    }
}
