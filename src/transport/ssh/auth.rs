//! Logging in: ssh-agent first, then private key files.
//!
//! Owns the order keys are tried in and the message when none works.
//! Invariants: key files are read by slipway and normalised (CRLF to LF, a
//! trailing newline added) before libssh2 sees them, so a key copied through
//! Windows or a CI secret store still works; no key material or passphrase is
//! ever put in an error or a log; the failure names the host, the user and
//! every source tried.

use std::path::{Path, PathBuf};

use ssh2::Session;

use super::super::TransportError;
use super::config::home;

/// The key files to try, in order: given ones, ssh_config's, then the
/// default `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa` that exist.
pub fn candidates(given: &[PathBuf], from_config: &[PathBuf]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    let defaults = home()
        .map(|h| {
            ["id_ed25519", "id_ecdsa", "id_rsa"]
                .iter()
                .map(|n| h.join(".ssh").join(n))
                .filter(|p| p.exists())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for file in given.iter().chain(from_config).chain(&defaults) {
        if !files.contains(file) {
            files.push(file.clone());
        }
    }
    files
}

/// Authenticates `user` on `session`. `label` names the host in errors.
///
/// # Errors
/// [`TransportError::Auth`] when no agent identity and no key file was accepted.
pub fn authenticate(
    session: &Session,
    label: &str,
    login: &str,
    user: &str,
    files: &[PathBuf],
) -> Result<(), TransportError> {
    let mut tried: Vec<String> = Vec::new();
    if std::env::var_os("SSH_AUTH_SOCK").is_some_and(|s| !s.is_empty()) {
        tried.push(match with_agent(session, user) {
            Ok(true) => return Ok(()),
            Ok(false) => "ssh-agent".to_owned(),
            Err(reason) => format!("ssh-agent ({reason})"),
        });
    }
    for file in files {
        match with_file(session, user, file) {
            Ok(true) => return Ok(()),
            Ok(false) => tried.push(file.display().to_string()),
            Err(reason) => tried.push(format!("{} ({reason})", file.display())),
        }
    }
    if tried.is_empty() {
        tried.push(
            "no agent and no key file; none of ~/.ssh/id_ed25519, id_ecdsa, id_rsa exists"
                .to_owned(),
        );
    }
    Err(TransportError::Auth {
        host: label.to_owned(),
        login: login.to_owned(),
        tried: tried.join(", "),
    })
}

fn with_agent(session: &Session, user: &str) -> Result<bool, String> {
    let mut agent = session.agent().map_err(|e| e.message().to_owned())?;
    agent
        .connect()
        .map_err(|e| format!("cannot reach it: {}", e.message()))?;
    agent
        .list_identities()
        .map_err(|e| format!("cannot list its keys: {}", e.message()))?;
    let identities = agent.identities().map_err(|e| e.message().to_owned())?;
    let accepted = identities
        .iter()
        .any(|id| agent.userauth(user, id).is_ok() && session.authenticated());
    let _ = agent.disconnect();
    if identities.is_empty() {
        return Err("it holds no keys".to_owned());
    }
    Ok(accepted)
}

fn with_file(session: &Session, user: &str, file: &Path) -> Result<bool, String> {
    let raw = std::fs::read(file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "missing".to_owned(),
        _ => format!("unreadable: {e}"),
    })?;
    let private = normalise(&raw).ok_or_else(|| "not a text key file".to_owned())?;
    if private.contains("ENCRYPTED") || is_encrypted_openssh(&private) {
        return Err("protected by a passphrase; load it into ssh-agent instead".to_owned());
    }
    let mut public_path = file.as_os_str().to_owned();
    public_path.push(".pub");
    let public = std::fs::read(&public_path).ok().and_then(|p| normalise(&p));
    match session.userauth_pubkey_memory(user, public.as_deref(), &private, None) {
        Ok(()) => Ok(session.authenticated()),
        // A wrong key or one the server refuses is an ordinary "no".
        Err(e) if matches!(e.code(), ssh2::ErrorCode::Session(-18 | -19)) => Ok(false),
        Err(e) => Err(e.message().to_owned()),
    }
}

/// CRLF to LF and a trailing newline: what libssh2's PEM parser needs.
fn normalise(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut text = text.replace("\r\n", "\n").replace('\r', "\n");
    let trimmed = text.trim_end().len();
    text.truncate(trimmed);
    text.push('\n');
    Some(text)
}

/// An OpenSSH-format key whose cipher is not "none" needs a passphrase.
fn is_encrypted_openssh(key: &str) -> bool {
    if !key.contains("BEGIN OPENSSH PRIVATE KEY") {
        return false;
    }
    // The body starts `openssh-key-v1\0` + string cipher; "none" is base64
    // `b3BlbnNzaC1rZXktdjEAAAAABG5vbmU`.
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    !body.starts_with("b3BlbnNzaC1rZXktdjEAAAAABG5vbmU")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_is_normalised() {
        assert_eq!(normalise(b"a\r\nb").unwrap(), "a\nb\n");
        assert_eq!(normalise(b"a\nb\n\n").unwrap(), "a\nb\n");
        assert!(normalise(&[0xff, 0xfe]).is_none());
    }

    #[test]
    fn encrypted_openssh_keys_are_recognised() {
        let plain = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n";
        let locked = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHI\n-----END OPENSSH PRIVATE KEY-----\n";
        assert!(!is_encrypted_openssh(plain));
        assert!(is_encrypted_openssh(locked));
    }
}
