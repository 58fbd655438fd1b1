//! Host key verification against an OpenSSH `known_hosts` file.
//!
//! Owns the strict check every connection (targets and jump hosts) passes
//! before authenticating, and the host key types offered in the handshake.
//! Invariants: a key that is not in the file is refused with its SHA256
//! fingerprint and the exact line to add, unless the user asked to learn new
//! keys, in which case that line is appended; a key that differs from the
//! recorded one is always refused; a key marked `@revoked` (for any host) is
//! always refused, learning included; a host certificate is always refused
//! (libssh2 cannot verify one against a `@cert-authority` line) and never
//! learnt; the handshake asks for the key types known_hosts holds for the
//! host, so a server with several keys or a certificate is checked against
//! the key that is recorded; there is no way to turn checking off. Hashed
//! entries are matched by libssh2.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use ssh2::{CheckResult, KnownHostFileKind, MethodType, Session};

use super::super::TransportError;
use super::config::home;

/// The known_hosts file to use: the one given, or `~/.ssh/known_hosts`.
pub fn path(explicit: Option<&Path>) -> PathBuf {
    explicit.map(Path::to_path_buf).unwrap_or_else(|| {
        home()
            .unwrap_or_else(|| PathBuf::from("/"))
            .join(".ssh/known_hosts")
    })
}

/// How a host is named in known_hosts: `host` on port 22, else `[host]:port`.
pub fn host_pattern(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Checks the key `session` was offered by `host:port`. `label` names the
/// host in errors (the spec as written).
///
/// # Errors
/// Unknown (and not learnt), changed, or unreadable.
pub fn verify(
    session: &Session,
    label: &str,
    host: &str,
    port: u16,
    file: &Path,
    accept_new: bool,
) -> Result<(), TransportError> {
    let connect = |reason: String| TransportError::Connect {
        host: label.to_owned(),
        reason,
    };
    let (blob, _) = session
        .host_key()
        .ok_or_else(|| connect("the server sent no host key".to_owned()))?;
    let entries = read(file).map_err(connect)?;
    if entries
        .iter()
        .any(|e| e.marker == Some(Marker::Revoked) && e.blob.as_deref() == Some(blob))
    {
        return Err(TransportError::RevokedHostKey {
            host: label.to_owned(),
            detail: format!("the key it offers, {}", fingerprint(blob)),
            known_hosts: file.to_path_buf(),
        });
    }
    if key_type(blob).is_some_and(|t| t.ends_with(CERT_SUFFIX)) {
        return Err(TransportError::HostCertificate {
            host: label.to_owned(),
            fingerprint: fingerprint(blob),
            known_hosts: file.to_path_buf(),
        });
    }
    let mut known = session
        .known_hosts()
        .map_err(|e| connect(format!("cannot check host keys: {e}")))?;
    // Plain lines only: libssh2 does not know the markers, and a revoked
    // or CA key must never count as the host's own key.
    for entry in entries.iter().filter(|e| e.marker.is_none()) {
        let _ = known.read_str(&entry.text, KnownHostFileKind::OpenSSH);
    }
    let result = if port == 22 {
        known.check(host, blob)
    } else {
        known.check_port(host, port, blob)
    };
    let pattern = host_pattern(host, port);
    match result {
        CheckResult::Match => Ok(()),
        CheckResult::Mismatch => Err(TransportError::ChangedHostKey {
            host: label.to_owned(),
            name: pattern,
            fingerprint: fingerprint(blob),
            known_hosts: file.to_path_buf(),
        }),
        CheckResult::NotFound => {
            let line = line(&pattern, blob)
                .ok_or_else(|| connect("the server's host key is malformed".to_owned()))?;
            if accept_new {
                append(file, &line).map_err(|e| {
                    connect(format!(
                        "cannot add its host key to {}: {e}",
                        file.display()
                    ))
                })?;
                tracing::warn!(
                    "learnt the host key of {label} ({}) and added it to {}",
                    fingerprint(blob),
                    file.display()
                );
                Ok(())
            } else {
                Err(TransportError::UnknownHostKey {
                    host: label.to_owned(),
                    fingerprint: fingerprint(blob),
                    line,
                    known_hosts: file.to_path_buf(),
                })
            }
        }
        CheckResult::Failure => Err(connect(format!(
            "cannot check its host key against {}",
            file.display()
        ))),
    }
}

/// Certificate key types end with this.
const CERT_SUFFIX: &str = "-cert-v01@openssh.com";

/// A known_hosts line's marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Revoked,
    CertAuthority,
}

/// One known_hosts line.
#[derive(Debug)]
struct Entry {
    marker: Option<Marker>,
    kind: String,
    /// The decoded key; `None` when the base64 is broken.
    blob: Option<Vec<u8>>,
    /// The line without its marker, as libssh2 reads it.
    text: String,
}

/// The lines of `file` (none when it does not exist). Comments, blank and
/// malformed lines are skipped, as OpenSSH skips them.
fn read(file: &Path) -> Result<Vec<Entry>, String> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    Ok(text.lines().filter_map(parse).collect())
}

fn parse(line: &str) -> Option<Entry> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut fields = line.split_whitespace();
    let mut first = fields.next()?;
    let marker = match first {
        "@revoked" => Some(Marker::Revoked),
        "@cert-authority" => Some(Marker::CertAuthority),
        other if other.starts_with('@') => return None,
        _ => None,
    };
    if marker.is_some() {
        first = fields.next()?;
    }
    let kind = fields.next()?;
    let key = fields.next()?;
    Some(Entry {
        marker,
        kind: kind.to_owned(),
        blob: STANDARD.decode(key).ok(),
        text: format!("{first} {kind} {key}"),
    })
}

/// The key type a blob starts with.
fn key_type(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4 + len)?).ok()
}

/// Asks the server for the host key types `file` records for `host:port`,
/// in OpenSSH's order, so the key it sends is one that can be checked (a
/// server with an ed25519 and an ecdsa key, or with a certificate, would
/// otherwise send whichever libssh2 prefers and look CHANGED). With nothing
/// recorded, libssh2's default order applies.
pub fn prefer_known_types(session: &Session, host: &str, port: u16, file: &Path) {
    let Ok(entries) = read(file) else { return };
    let mut kinds: Vec<&str> = Vec::new();
    for entry in entries.iter().filter(|e| e.marker.is_none()) {
        let Some(blob) = &entry.blob else { continue };
        // Does this line name the host? libssh2 matches patterns and hashed
        // names; one line at a time, so the answer is about this line.
        let Ok(mut known) = session.known_hosts() else {
            return;
        };
        let _ = known.read_str(&entry.text, KnownHostFileKind::OpenSSH);
        let found = if port == 22 {
            known.check(host, blob)
        } else {
            known.check_port(host, port, blob)
        };
        if matches!(found, CheckResult::Match) && !kinds.contains(&entry.kind.as_str()) {
            kinds.push(&entry.kind);
        }
    }
    let mut methods: Vec<&str> = Vec::new();
    for (kind, algorithms) in [
        ("ssh-ed25519", &["ssh-ed25519"][..]),
        ("ecdsa-sha2-nistp256", &["ecdsa-sha2-nistp256"][..]),
        ("ecdsa-sha2-nistp384", &["ecdsa-sha2-nistp384"][..]),
        ("ecdsa-sha2-nistp521", &["ecdsa-sha2-nistp521"][..]),
        ("ssh-rsa", &["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"][..]),
    ] {
        if kinds.contains(&kind) {
            methods.extend(algorithms);
        }
    }
    if !methods.is_empty() {
        // Types this libssh2 lacks are dropped by it; nothing to check.
        let _ = session.method_pref(MethodType::HostKey, &methods.join(","));
    }
}

/// `SHA256:<base64 without padding>`, as `ssh-keygen -l` prints it.
pub fn fingerprint(blob: &[u8]) -> String {
    let digest = Sha256::digest(blob);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// The known_hosts line for `pattern` and a key blob: `pattern type base64`.
/// `None` when the blob does not start with its key type.
pub fn line(pattern: &str, blob: &[u8]) -> Option<String> {
    let kind = key_type(blob)?;
    Some(format!("{pattern} {kind} {}", STANDARD.encode(blob)))
}

fn append(file: &Path, line: &str) -> std::io::Result<()> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    // One write, so hosts learnt in parallel never interleave their lines.
    f.write_all(format!("{line}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_read_and_kept_apart() {
        let revoked = parse("@revoked * ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== comment").unwrap();
        assert_eq!(revoked.marker, Some(Marker::Revoked));
        assert_eq!(revoked.kind, "ssh-ed25519");
        assert!(revoked.blob.is_some());
        let ca = parse("@cert-authority *.example.com ssh-ed25519 AAAA").unwrap();
        assert_eq!(ca.marker, Some(Marker::CertAuthority));
        let plain = parse("[h]:2201 ssh-ed25519 AAAA").unwrap();
        assert_eq!(plain.marker, None);
        assert_eq!(plain.text, "[h]:2201 ssh-ed25519 AAAA");
        assert!(parse("# comment").is_none());
        assert!(parse("@unknown h t k").is_none());
    }

    #[test]
    fn lines_and_fingerprints_look_like_openssh() {
        let mut blob = Vec::new();
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&32u32.to_be_bytes());
        blob.extend_from_slice(&[7u8; 32]);
        let line = line(&host_pattern("127.0.0.11", 2201), &blob).unwrap();
        assert!(
            line.starts_with("[127.0.0.11]:2201 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"),
            "{line}"
        );
        assert_eq!(host_pattern("web1", 22), "web1");
        let fp = fingerprint(&blob);
        assert!(fp.starts_with("SHA256:") && !fp.ends_with('='), "{fp}");
        assert_eq!(fp.len(), "SHA256:".len() + 43);
    }
}
