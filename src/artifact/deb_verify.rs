//! Checking a prebuilt `.deb` before it is deployed (`deploy --artifact`).
//!
//! Owns [`open_deb`]: the package counterpart of [`super::open`]. A package
//! installs with dpkg, as root, wherever its entries say, so it is held to
//! the shape [`super::pack_deb`] gives every package and nothing else:
//! - `control` names the package this release must have
//!   (`<prefix>-<release id>`), so pruning later purges the right one;
//! - every data entry is a parent directory of the release directory, the
//!   package's own documentation or lintian override, or inside
//!   `<deploy_to>/releases/<release id>/`;
//! - the release tree starts with slipway's manifest, and every entry after
//!   it passes the tarball checks (`verify.rs`: no `..`, no links out, no
//!   special files) and is hashed as a tarball's entries are, so the
//!   manifest's `file_count` and `content_sha256` must match the bytes.
//!
//! The caller then compares the manifest with the commit being deployed.
//! Nothing is unpacked or installed here.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::deb::{DEB_FORMAT, DebError, package_name, release_dir};
use super::digest::HashingReader;
use super::manifest::{ContentHasher, Manifest};
use super::verify::Checker;
use super::{Artifact, ArtifactError, EntryKind, MANIFEST_NAME};

/// A manifest is a few hundred bytes; anything far larger is not one.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// `control` is a few lines.
const MAX_CONTROL_BYTES: u64 = 1 << 20;

/// What the package must be: where it installs and what it is called.
#[derive(Debug, Clone, Copy)]
pub struct DebExpect<'a> {
    pub deploy_to: &'a str,
    pub package_prefix: &'a str,
    pub release_id: &'a str,
}

/// Opens the package at `path` built for `expect`: hashes it and checks its
/// control file, its entries and its manifest (see the module docs).
///
/// # Errors
/// When the file cannot be read, is not such a package, or an entry or the
/// manifest does not match.
pub fn open_deb(path: &Path, expect: &DebExpect<'_>) -> Result<Artifact, ArtifactError> {
    let release = release_dir(expect.deploy_to, expect.release_id)?;
    let package = package_name(expect.package_prefix, expect.release_id);
    let file = File::open(path).map_err(ArtifactError::io("open", path))?;
    let mut raw = HashingReader::new(file);
    let mut found = None;
    let mut control_package = None;
    {
        let mut archive = ar::Archive::new(&mut raw);
        while let Some(member) = archive.next_entry() {
            let mut member = member.map_err(corrupt(path))?;
            let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
            match name.as_str() {
                "control.tar.gz" => {
                    // dpkg packs control before data: a package of another
                    // release is named as such before its entries are read.
                    let name = read_control_package(path, &mut member)?;
                    if name != package {
                        return Err(DebError::WrongPackage {
                            archive: path.to_owned(),
                            found: name,
                            expected: package,
                        }
                        .into());
                    }
                    control_package = Some(name);
                }
                "data.tar.gz" => {
                    let layout = Layout {
                        release: &release,
                        package: &package,
                    };
                    let mut data = tar::Archive::new(GzDecoder::new(&mut member));
                    found = Some(read_data(path, &layout, &mut data)?);
                    // Reading to the end checks the gzip trailer.
                    io::copy(&mut data.into_inner(), &mut io::sink()).map_err(corrupt(path))?;
                }
                _ => {}
            }
            io::copy(&mut member, &mut io::sink()).map_err(corrupt(path))?;
        }
    }
    io::copy(&mut raw, &mut io::sink()).map_err(ArtifactError::io("read", path))?;
    let (sha256, size) = raw.finish();

    let not_ours = |reason: String| ArtifactError::BadManifest {
        archive: path.to_owned(),
        reason,
    };
    if control_package.is_none() || found.is_none() {
        return Err(DebError::NotAPackage {
            archive: path.to_owned(),
        }
        .into());
    }
    let Some((mut manifest, content_sha256, file_count)) = found else {
        return Err(ArtifactError::MissingManifest {
            archive: path.to_owned(),
        });
    };
    if manifest.format != DEB_FORMAT {
        return Err(not_ours(format!(
            "format is `{}`, expected `{DEB_FORMAT}`",
            manifest.format
        )));
    }
    let mismatch = |field, expected: String, actual: String| ArtifactError::ManifestMismatch {
        archive: path.to_owned(),
        field,
        expected,
        actual,
    };
    if manifest.file_count != file_count {
        return Err(mismatch(
            "file_count",
            manifest.file_count.to_string(),
            file_count.to_string(),
        ));
    }
    if manifest.content_sha256 != content_sha256 {
        return Err(mismatch(
            "content_sha256",
            manifest.content_sha256.clone(),
            content_sha256,
        ));
    }
    manifest.sha256 = Some(sha256.clone());
    Ok(Artifact {
        path: path.to_owned(),
        sha256,
        size,
        manifest,
        // A package is unpacked by dpkg, not by the tarball staging script.
        tar_size: None,
    })
}

/// Where a package's entries may go.
struct Layout<'a> {
    /// `srv/shop/releases/<id>`: relative, no trailing `/`.
    release: &'a str,
    package: &'a str,
}

impl Layout<'_> {
    /// The directories and files outside the release a package may hold.
    fn allows_outside(&self, path: &str, kind: EntryKind) -> bool {
        let is_parent_of = |dir: &str| dir.starts_with(&format!("{path}/"));
        let doc = format!("usr/share/doc/{}", self.package);
        let lintian = format!("usr/share/lintian/overrides/{}", self.package);
        match kind {
            EntryKind::Dir => {
                is_parent_of(self.release)
                    || path == doc
                    || is_parent_of(&doc)
                    || is_parent_of(&lintian)
            }
            EntryKind::File => path == lintian || path.starts_with(&format!("{doc}/")),
            EntryKind::Symlink => false,
        }
    }
}

/// The manifest, content hash and file count of the release tree in `data`.
fn read_data<R: Read>(
    path: &Path,
    layout: &Layout<'_>,
    data: &mut tar::Archive<R>,
) -> Result<(Manifest, String, u64), ArtifactError> {
    let refuse = |entry: &str, reason| ArtifactError::UnsafeEntry {
        archive: path.to_owned(),
        entry: entry.to_owned(),
        reason,
    };
    let inside = format!("{}/", layout.release);
    let mut manifest = None;
    let mut checker = Checker::default();
    let mut content = ContentHasher::new();
    for entry in data.entries().map_err(corrupt(path))? {
        let mut entry = entry.map_err(corrupt(path))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = raw.trim_start_matches("./").trim_end_matches('/');
        let entry_type = entry.header().entry_type();
        let kind = if entry_type.is_dir() {
            EntryKind::Dir
        } else if entry_type.is_file() {
            EntryKind::File
        } else {
            EntryKind::Symlink
        };
        // `..` could climb out of any allowed directory; dpkg must never
        // be handed one.
        if name
            .split('/')
            .any(|part| part == ".." || part == "." || part.is_empty())
            && !name.is_empty()
        {
            return Err(refuse(&raw, "has a `.`, `..` or empty path component"));
        }
        if name.is_empty() || name == layout.release {
            if kind != EntryKind::Dir {
                return Err(refuse(&raw, "is not a directory"));
            }
            continue;
        }
        let Some(rel) = name.strip_prefix(&inside) else {
            if entry_type.is_symlink() || !layout.allows_outside(name, kind) {
                return Err(refuse(
                    &raw,
                    "installs outside the release directory and the package's documentation",
                ));
            }
            continue;
        };
        if manifest.is_none() {
            if rel != MANIFEST_NAME || !entry_type.is_file() {
                return Err(ArtifactError::MissingManifest {
                    archive: path.to_owned(),
                });
            }
            manifest = Some(read_manifest(path, &mut entry)?);
            continue;
        }
        let mode = entry.header().mode().map_err(corrupt(path))?;
        let checked = checker
            .check(
                rel.as_bytes(),
                entry_type,
                mode,
                entry.link_name_bytes().as_deref(),
            )
            .map_err(|refusal| refuse(&refusal.entry, refusal.reason))?;
        match (&checked.kind, &checked.target) {
            (EntryKind::Symlink, Some(target)) => {
                content.entry(checked.kind, mode, &checked.path, target.len() as u64);
                content.data(target.as_bytes());
            }
            _ => {
                content.entry(checked.kind, mode, &checked.path, entry.size());
                io::copy(&mut entry, &mut content).map_err(corrupt(path))?;
            }
        }
    }
    checker
        .finish()
        .map_err(|refusal| refuse(&refusal.entry, refusal.reason))?;
    let manifest = manifest.ok_or_else(|| ArtifactError::MissingManifest {
        archive: path.to_owned(),
    })?;
    let (content_sha256, file_count) = content.finish();
    Ok((manifest, content_sha256, file_count))
}

fn read_manifest<R: Read>(path: &Path, entry: &mut R) -> Result<Manifest, ArtifactError> {
    let mut json = Vec::new();
    entry
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(corrupt(path))?;
    let bad = |reason: String| ArtifactError::BadManifest {
        archive: path.to_owned(),
        reason,
    };
    if json.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(bad("it is far larger than any manifest".to_owned()));
    }
    Manifest::from_json(&json).map_err(|e| bad(e.to_string()))
}

/// The `Package:` field of the `control` file in `control.tar.gz`.
fn read_control_package<R: Read>(path: &Path, member: R) -> Result<String, ArtifactError> {
    let mut control = tar::Archive::new(GzDecoder::new(member));
    for entry in control.entries().map_err(corrupt(path))? {
        let entry = entry.map_err(corrupt(path))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if name.trim_start_matches("./") != "control" {
            continue;
        }
        let mut text = String::new();
        entry
            .take(MAX_CONTROL_BYTES)
            .read_to_string(&mut text)
            .map_err(corrupt(path))?;
        return Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("Package:"))
            .unwrap_or_default()
            .trim()
            .to_owned());
    }
    Ok(String::new())
}

fn corrupt(path: &Path) -> impl Fn(io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Corrupt {
        archive: PathBuf::from(path),
        source,
    }
}
