//! Signed artifacts: `slipway build --sign KEY` and the check `deploy
//! --artifact` makes against `[artifact] trusted_keys`.
//!
//! Format (chosen so standard OpenSSH tools make keys and check signatures):
//! - the signing key is an unencrypted OpenSSH ed25519 private key, as
//!   `ssh-keygen -t ed25519 -N '' -f slipway-signing` writes it;
//! - a trusted key is its public line, `ssh-ed25519 AAAA... comment`;
//! - the signature is an SSHSIG (`ssh-keygen -Y sign`) in namespace
//!   [`NAMESPACE`] over the message `<sha256 of the artifact file, hex>\n`,
//!   written beside the artifact as `<artifact>.sig`. So
//!   `sha256sum F | cut -c1-64 | ssh-keygen -Y verify -f allowed_signers
//!   -I slipway -n slipway-artifact -s F.sig` checks one by hand.
//!
//! Invariant: the sha256 a signature is checked against is the one computed
//! in the same pass that checked the archive's entries (see `verify.rs`),
//! so what was signed is what was checked.

use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use super::Artifact;

/// The SSHSIG namespace of artifact signatures; a signature made for
/// anything else (e.g. git commits, `file`) never counts as one.
pub const NAMESPACE: &str = "slipway-artifact";

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot read the signing key {}: {source}", path.display())]
    ReadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is not an OpenSSH private key ({reason}); make one with `ssh-keygen -t ed25519 -N '' -f {}`",
        path.display(),
        path.display()
    )]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "{} is protected by a passphrase; slipway signs only with an unencrypted key (keep it in your CI's secret store)",
        path.display()
    )]
    EncryptedKey { path: PathBuf },
    #[error(
        "{} is an {algorithm} key; artifacts are signed with ed25519 keys (`ssh-keygen -t ed25519`)",
        path.display()
    )]
    NotEd25519 { path: PathBuf, algorithm: String },
    #[error("cannot sign {}: {reason}", artifact.display())]
    Sign { artifact: PathBuf, reason: String },
    #[error("cannot write the signature {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing {}: [artifact] trusted_keys is set, so artifacts must be signed, and {} cannot be read ({source}); sign it with `slipway build --sign KEY`",
        artifact.display(),
        signature.display()
    )]
    MissingSignature {
        artifact: PathBuf,
        signature: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing {}: {} is not an SSH signature ({reason})", artifact.display(), signature.display())]
    BadSignature {
        artifact: PathBuf,
        signature: PathBuf,
        reason: String,
    },
    #[error(
        "refusing {}: it is signed by {fingerprint}, which is not in [artifact] trusted_keys",
        artifact.display()
    )]
    UntrustedKey {
        artifact: PathBuf,
        fingerprint: String,
    },
    #[error(
        "refusing {}: its signature {} does not match its content (sha256 {sha256}); the file or the signature was changed after signing",
        artifact.display(),
        signature.display()
    )]
    Mismatch {
        artifact: PathBuf,
        signature: PathBuf,
        sha256: String,
    },
    #[error("the trusted key `{key}` cannot be read: {reason}")]
    BadTrustedKey { key: String, reason: String },
}

/// Who signed an artifact whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The comment of the matching trusted key line.
    pub comment: String,
}

/// Where the signature of `artifact` lives: `<artifact>.sig`.
pub fn signature_path(artifact: &Path) -> PathBuf {
    let mut name = artifact.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// A trusted key line, which must be an ed25519 public key; the reason is
/// a sentence for a config error.
pub fn parse_trusted_key(line: &str) -> Result<PublicKey, String> {
    let key = PublicKey::from_openssh(line.trim()).map_err(|e| {
        format!("expected an OpenSSH public key line like `ssh-ed25519 AAAA... name` ({e})")
    })?;
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(format!(
            "`{}` keys cannot be trusted for artifacts; use an ed25519 key (`ssh-keygen -t ed25519`)",
            key.algorithm()
        ));
    }
    Ok(key)
}

/// Signs `artifact` with the OpenSSH ed25519 private key at `key` and
/// writes `<artifact>.sig`; returns its path.
pub fn sign(artifact: &Artifact, key: &Path) -> Result<PathBuf, SignError> {
    let text = std::fs::read_to_string(key).map_err(|source| SignError::ReadKey {
        path: key.to_owned(),
        source,
    })?;
    let private = PrivateKey::from_openssh(&text).map_err(|e| SignError::BadKey {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    if private.is_encrypted() {
        return Err(SignError::EncryptedKey {
            path: key.to_owned(),
        });
    }
    if private.algorithm() != Algorithm::Ed25519 {
        return Err(SignError::NotEd25519 {
            path: key.to_owned(),
            algorithm: private.algorithm().to_string(),
        });
    }
    let failed = |e: ssh_key::Error| SignError::Sign {
        artifact: artifact.path.clone(),
        reason: e.to_string(),
    };
    let signature = private
        .sign(NAMESPACE, HashAlg::Sha512, &message(&artifact.sha256))
        .map_err(failed)?;
    let pem = signature.to_pem(LineEnding::LF).map_err(failed)?;
    let path = signature_path(&artifact.path);
    super::tarball::write_atomically(&path, pem.as_bytes()).map_err(|e| SignError::Write {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(path)
}

/// Checks `<artifact>.sig` against `sha256` (of the artifact's bytes) and
/// the trusted key lines.
pub fn verify(artifact: &Path, sha256: &str, trusted: &[String]) -> Result<Signer, SignError> {
    let signature = signature_path(artifact);
    let pem =
        std::fs::read_to_string(&signature).map_err(|source| SignError::MissingSignature {
            artifact: artifact.to_owned(),
            signature: signature.clone(),
            source,
        })?;
    let sig = SshSig::from_pem(pem.as_bytes()).map_err(|e| SignError::BadSignature {
        artifact: artifact.to_owned(),
        signature: signature.clone(),
        reason: e.to_string(),
    })?;
    let mut signer_key = None;
    for line in trusted {
        let key = parse_trusted_key(line).map_err(|reason| SignError::BadTrustedKey {
            key: line.clone(),
            reason,
        })?;
        if key.key_data() == sig.public_key() {
            signer_key = Some(key);
            break;
        }
    }
    let Some(key) = signer_key else {
        return Err(SignError::UntrustedKey {
            artifact: artifact.to_owned(),
            fingerprint: sig.public_key().fingerprint(HashAlg::Sha256).to_string(),
        });
    };
    key.verify(NAMESPACE, &message(sha256), &sig)
        .map_err(|_| SignError::Mismatch {
            artifact: artifact.to_owned(),
            signature: signature.clone(),
            sha256: sha256.to_owned(),
        })?;
    Ok(Signer {
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        comment: key.comment().to_owned(),
    })
}

/// What is signed: the artifact's hex sha256 and a newline, the first
/// field of `sha256sum`'s output.
fn message(sha256: &str) -> Vec<u8> {
    format!("{sha256}\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed ed25519 key made with `ssh-keygen -t ed25519 -N ''`.
    fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
        let key = dir.join(name);
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen runs");
        assert!(status.success());
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        (key, public.trim().to_owned())
    }

    fn artifact(dir: &Path, bytes: &[u8]) -> Artifact {
        let path = dir.join("shop-r1.tar.gz");
        std::fs::write(&path, bytes).unwrap();
        let sha256 = crate::artifact::sha256_file(&path).unwrap();
        Artifact {
            path,
            sha256,
            size: bytes.len() as u64,
            tar_size: None,
            manifest: crate::artifact::Manifest {
                app: "shop".into(),
                commit: "c".into(),
                branch: "b".into(),
                release_id: "r1".into(),
                format: "tar.gz".into(),
                file_count: 0,
                content_sha256: String::new(),
                entry_count: 0,
                unpacked_size: 0,
                created: String::new(),
                sha256: None,
            },
        }
    }

    #[test]
    fn a_signature_checks_out_only_for_its_bytes_and_trusted_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = keypair(dir.path(), "builder");
        let (_, other) = keypair(dir.path(), "stranger");
        let art = artifact(dir.path(), b"release bytes");
        let sig = sign(&art, &key).unwrap();
        assert_eq!(sig, dir.path().join("shop-r1.tar.gz.sig"));

        let signer = verify(&art.path, &art.sha256, &[other.clone(), public.clone()]).unwrap();
        assert_eq!(signer.comment, "builder");
        assert!(signer.fingerprint.starts_with("SHA256:"));

        let err = verify(&art.path, &art.sha256, &[other]).unwrap_err();
        assert!(matches!(err, SignError::UntrustedKey { .. }), "{err}");
        let err = verify(&art.path, &"0".repeat(64), std::slice::from_ref(&public)).unwrap_err();
        assert!(matches!(err, SignError::Mismatch { .. }), "{err}");
        std::fs::remove_file(&sig).unwrap();
        let err = verify(&art.path, &art.sha256, &[public]).unwrap_err();
        assert!(matches!(err, SignError::MissingSignature { .. }), "{err}");
    }

    #[test]
    fn openssh_checks_slipway_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = keypair(dir.path(), "builder");
        let art = artifact(dir.path(), b"release bytes");
        let sig = sign(&art, &key).unwrap();
        let allowed = dir.path().join("allowed_signers");
        std::fs::write(&allowed, format!("slipway {public}\n")).unwrap();
        let mut child = std::process::Command::new("ssh-keygen")
            .args(["-Y", "verify", "-n", NAMESPACE, "-I", "slipway", "-f"])
            .arg(&allowed)
            .arg("-s")
            .arg(&sig)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            child.stdin.as_mut().unwrap(),
            format!("{}\n", art.sha256).as_bytes(),
        )
        .unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn only_ed25519_keys_are_trusted() {
        assert!(parse_trusted_key("ssh-ed25519 AAAA").is_err());
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("rsa");
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(status.success());
        let rsa = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let rsa = rsa.as_str();
        let err = parse_trusted_key(rsa).unwrap_err();
        assert!(err.contains("use an ed25519 key"), "{err}");
    }
}
