//! Build artifacts: reproducible release archives and their manifests.
//!
//! This module owns the `.tar.gz` a release is shipped as: [`pack`] turns a
//! built directory into one, [`open`] checks one before anything unpacks it.
//! With `artifact = "deb"`, [`pack_deb`] makes a Debian package of the same
//! tree instead (see `deb.rs` for its design); the invariants below hold for
//! it too.
//!
//! Invariants:
//! - Reproducible: the same directory content, source time and names give a
//!   byte-identical archive, whatever the files' on-disk order, mtimes,
//!   owners or umask. Entries are sorted by name, every header is built from
//!   scratch (uid/gid 0, no user or group names, mtime = source time, modes
//!   normalised to 0755/0644 for files, 0755 for dirs, 0777 for symlinks),
//!   and gzip gets mtime 0, no file name and a fixed level.
//! - Self-describing: the first entry is [`MANIFEST_NAME`], whose
//!   `content_sha256` covers every other entry (see `manifest.rs`); that hash
//!   does not depend on the gzip encoder, so it survives a recompression.
//! - Safe to unpack: an archive is only handed out by [`open`] after every
//!   entry passed the checks in `verify.rs` (no absolute paths, no `..`, nothing
//!   written through a symlink, no links out of the release directory, no
//!   hard links or special files). [`pack`] applies the same checks to its
//!   input, so it never produces an archive [`open`] would refuse.
//! - Atomic: archives and manifests are written to a temporary file in the
//!   output directory and renamed, so a crash never leaves a half-written file
//!   under a final name.

use std::path::PathBuf;

mod deb;
mod deb_verify;
mod digest;
mod manifest;
mod sign;
mod tarball;
mod verify;

pub use deb::{
    DEB_FORMAT, DebError, DebInput, SCRIPT_NAMES, default_package_prefix, is_package_name,
    pack_deb, package_name,
};
pub use deb_verify::{DebExpect, open_deb};
pub use digest::sha256_file;
pub use manifest::Manifest;
pub use sign::{
    NAMESPACE as SIGNATURE_NAMESPACE, SignError, Signer, parse_trusted_key, sign, signature_path,
    verify as verify_signature,
};
pub use tarball::pack;
pub use verify::{Opened, open, open_for_upload};

/// The name of the manifest, the first entry of every archive.
pub const MANIFEST_NAME: &str = ".slipway-manifest.json";

/// The only archive format slipway writes; recorded in [`Manifest::format`].
pub const FORMAT: &str = "tar.gz";

/// A release archive on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub path: PathBuf,
    /// Hex sha256 of the `.tar.gz` file.
    pub sha256: String,
    /// Size of the `.tar.gz` file in bytes.
    pub size: u64,
    /// Length of the decompressed tar stream, for an archive slipway wrote
    /// (packed, or re-serialised by [`open_for_upload`]); the host unpacks
    /// no more than this. `None` for a `.deb` or an archive only checked.
    pub tar_size: Option<u64>,
    /// The manifest, with `sha256` always set to [`Artifact::sha256`].
    pub manifest: Manifest,
}

/// What [`pack`] packs and how it labels it.
#[derive(Debug, Clone, Copy)]
pub struct PackInput<'a> {
    /// The built tree.
    pub dir: &'a std::path::Path,
    /// Glob patterns left out (gitignore-like; see [`pack`]).
    pub exclude: &'a [String],
    /// Unix seconds used as every entry's mtime, normally the commit time.
    pub source_time: i64,
    pub app: &'a str,
    pub commit: &'a str,
    pub branch: &'a str,
    pub release_id: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot pack {}: its name is not valid UTF-8; rename or exclude it", path.display())]
    NonUtf8Path { path: PathBuf },
    #[error("cannot pack {}: it is a {kind}; only files, directories and symlinks can be packed, so exclude it", path.display())]
    UnsupportedFile { path: PathBuf, kind: &'static str },
    #[error("cannot pack {}: `{entry}` {reason}; fix or exclude it", dir.display())]
    UnsafeSource {
        dir: PathBuf,
        entry: String,
        reason: &'static str,
    },
    #[error("cannot pack {}: {} changed while it was being packed; make sure nothing writes there during a pack", dir.display(), path.display())]
    ChangedWhilePacking { dir: PathBuf, path: PathBuf },
    #[error("the exclude pattern `{pattern}` is invalid: {reason}")]
    BadExclude { pattern: String, reason: String },
    #[error(
        "cannot name an artifact after {what} `{value}`: it must be non-empty, not start with `.`, and contain no `/`"
    )]
    BadName { what: &'static str, value: String },
    #[error(
        "the source time {time} cannot be an archive timestamp; it must be a unix time between 1970 and 9999"
    )]
    BadSourceTime { time: i64 },
    #[error("the output directory {} is inside the directory being packed, {}; choose one outside it", out_dir.display(), dir.display())]
    OutDirInside { out_dir: PathBuf, dir: PathBuf },
    #[error("refusing artifact {}: entry `{entry}` {reason}", archive.display())]
    UnsafeEntry {
        archive: PathBuf,
        entry: String,
        reason: &'static str,
    },
    #[error("{} has no {MANIFEST_NAME} as its first entry; it was not made by slipway or is damaged", archive.display())]
    MissingManifest { archive: PathBuf },
    #[error("the manifest in {} is invalid: {reason}", archive.display())]
    BadManifest { archive: PathBuf, reason: String },
    #[error("refusing artifact {}: its manifest says {field} is {expected}, but its entries give {actual}", archive.display())]
    ManifestMismatch {
        archive: PathBuf,
        field: &'static str,
        expected: String,
        actual: String,
    },
    #[error(
        "refusing artifact {}: it has data after its first gzip member (a second member or trailing bytes); slipway writes exactly one, and a host's tar would unpack the rest unchecked",
        archive.display()
    )]
    ExtraGzipData { archive: PathBuf },
    #[error(
        "refusing artifact {}: it unpacks to more than its manifest allows ({limit} bytes); it is damaged or a decompression bomb",
        archive.display()
    )]
    TooLarge { archive: PathBuf, limit: u64 },
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error("cannot read {} as a tar.gz archive; it is damaged or not an artifact: {source}", archive.display())]
    Corrupt {
        archive: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ArtifactError {
    fn io(action: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| ArtifactError::Io {
            action,
            path,
            source,
        }
    }
}

/// The kinds of entries an archive may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Dir,
    File,
    Symlink,
}
