//! Host key verification against an OpenSSH `known_hosts` file.
//!
//! Owns the strict check every connection (targets and jump hosts) passes
//! before authenticating. Invariants: a key that is not in the file is
//! refused with its SHA256 fingerprint and the exact line to add, unless the
//! user asked to learn new keys, in which case that line is appended; a key
//! that differs from the recorded one is always refused; there is no way to
//! turn checking off. Hashed entries are matched by libssh2.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use ssh2::{CheckResult, KnownHostFileKind, Session};

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
    let mut known = session
        .known_hosts()
        .map_err(|e| connect(format!("cannot check host keys: {e}")))?;
    if file.exists() {
        known
            .read_file(file, KnownHostFileKind::OpenSSH)
            .map_err(|e| connect(format!("cannot read {}: {e}", file.display())))?;
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

/// `SHA256:<base64 without padding>`, as `ssh-keygen -l` prints it.
pub fn fingerprint(blob: &[u8]) -> String {
    let digest = Sha256::digest(blob);
    let mut text = base64(&digest);
    while text.ends_with('=') {
        text.pop();
    }
    format!("SHA256:{text}")
}

/// The known_hosts line for `pattern` and a key blob: `pattern type base64`.
/// `None` when the blob does not start with its key type.
pub fn line(pattern: &str, blob: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    let kind = std::str::from_utf8(blob.get(4..4 + len)?).ok()?;
    Some(format!("{pattern} {kind} {}", base64(blob)))
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

/// Standard base64 with padding (RFC 4648).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
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
