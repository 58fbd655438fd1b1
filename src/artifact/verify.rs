//! Deciding whether an archive is safe to unpack, and [`open`]ing one.
//!
//! [`Checker`] sees entries in archive order, as an extractor would, and
//! refuses anything that could write outside the release directory or create
//! something other than files, directories and symlinks:
//! absolute paths, `..` components, paths through an earlier symlink (or
//! below an earlier file), duplicates, hard links, devices and fifos,
//! setuid/setgid/sticky bits, and symlinks whose target is absolute or leaves
//! the release directory. Symlink targets are resolved the way the kernel
//! would once everything is unpacked, following the archive's other
//! symlinks, so a chain of individually harmless links cannot escape either.
//!
//! The same checker runs over [`super::pack`]'s input, so slipway never
//! produces an archive it would refuse.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use flate2::read::GzDecoder;

use super::digest::HashingReader;
use super::manifest::{ContentHasher, Manifest};
use super::{Artifact, ArtifactError, EntryKind, FORMAT, MANIFEST_NAME};

/// Manifests are a few hundred bytes; anything far bigger is not one.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Like the kernel's limit on symlinks followed while resolving one path.
const MAX_SYMLINK_HOPS: usize = 40;

/// Why one entry was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub entry: String,
    pub reason: &'static str,
}

/// An entry that passed the checks.
pub(crate) struct Checked {
    /// Normalised: relative, `/`-separated, no `.` or empty components.
    pub path: String,
    pub kind: EntryKind,
    /// The symlink target, for symlinks.
    pub target: Option<String>,
}

/// Validates entries in archive order; see the module documentation.
#[derive(Default)]
pub(crate) struct Checker {
    kinds: HashMap<String, EntryKind>,
    /// Every directory some earlier entry was placed in.
    parents: HashSet<String>,
    symlinks: HashMap<String, String>,
}

impl Checker {
    pub(crate) fn check(
        &mut self,
        raw_path: &[u8],
        entry_type: tar::EntryType,
        mode: u32,
        link: Option<&[u8]>,
    ) -> Result<Checked, Refusal> {
        let lossy = String::from_utf8_lossy(raw_path).into_owned();
        let refuse = |reason| Refusal {
            entry: lossy.clone(),
            reason,
        };
        let path = std::str::from_utf8(raw_path).map_err(|_| refuse("is not valid UTF-8"))?;
        let components = normalise(path).map_err(refuse)?;
        let path = components.join("/");
        if path == MANIFEST_NAME {
            return Err(refuse("uses the name reserved for slipway's manifest"));
        }
        let kind = entry_kind(entry_type).map_err(refuse)?;
        if mode & 0o7000 != 0 {
            return Err(refuse("has setuid, setgid or sticky bits"));
        }
        self.check_placement(&components, kind).map_err(refuse)?;
        let target = match kind {
            EntryKind::Symlink => Some(check_target(&components, link).map_err(refuse)?),
            _ => None,
        };
        self.record(&components, kind, target.as_deref());
        Ok(Checked { path, kind, target })
    }

    /// Entries must not go through symlinks or files, nor repeat a path, nor
    /// (as a symlink) replace a directory earlier entries were put in.
    fn check_placement(&self, components: &[&str], kind: EntryKind) -> Result<(), &'static str> {
        for depth in 1..components.len() {
            match self.kinds.get(&components[..depth].join("/")) {
                Some(EntryKind::Symlink) => {
                    return Err("passes through a symlink earlier in the archive");
                }
                Some(EntryKind::File) => return Err("lies below a file earlier in the archive"),
                Some(EntryKind::Dir) | None => {}
            }
        }
        let path = components.join("/");
        if self.kinds.contains_key(&path) {
            return Err("appears more than once");
        }
        if kind != EntryKind::Dir && self.parents.contains(&path) {
            return Err("replaces a directory that earlier entries are in");
        }
        Ok(())
    }

    fn record(&mut self, components: &[&str], kind: EntryKind, target: Option<&str>) {
        for depth in 1..components.len() {
            self.parents.insert(components[..depth].join("/"));
        }
        let path = components.join("/");
        if let Some(target) = target {
            self.symlinks.insert(path.clone(), target.to_owned());
        }
        self.kinds.insert(path, kind);
    }

    /// Resolves every symlink against all the others, now that the whole
    /// archive has been seen.
    pub(crate) fn finish(self) -> Result<(), Refusal> {
        let mut links: Vec<_> = self.symlinks.iter().collect();
        links.sort();
        for (path, target) in links {
            let mut dir: Vec<&str> = path.split('/').collect();
            dir.pop();
            resolve(dir, target, &self.symlinks).map_err(|reason| Refusal {
                entry: path.clone(),
                reason,
            })?;
        }
        Ok(())
    }
}

/// Splits an archive path into its normal components.
fn normalise(path: &str) -> Result<Vec<&str>, &'static str> {
    if path.starts_with('/') {
        return Err("is an absolute path");
    }
    let components: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if components.contains(&"..") {
        return Err("would escape the release directory");
    }
    if components.is_empty() {
        return Err("names the release directory itself");
    }
    Ok(components)
}

fn entry_kind(entry_type: tar::EntryType) -> Result<EntryKind, &'static str> {
    use tar::EntryType as T;
    match entry_type {
        T::Regular | T::Continuous => Ok(EntryKind::File),
        T::Directory => Ok(EntryKind::Dir),
        T::Symlink => Ok(EntryKind::Symlink),
        T::Link => Err("is a hard link"),
        T::Char | T::Block | T::Fifo => Err("is a device or fifo"),
        _ => Err("has an entry type slipway does not unpack"),
    }
}

/// A symlink target that is relative and, read lexically from the link's
/// directory, stays inside the release directory.
fn check_target(components: &[&str], link: Option<&[u8]>) -> Result<String, &'static str> {
    let target = link.ok_or("is a symlink without a target")?;
    let target =
        std::str::from_utf8(target).map_err(|_| "is a symlink whose target is not valid UTF-8")?;
    if target.is_empty() {
        return Err("is a symlink with an empty target");
    }
    if target.starts_with('/') {
        return Err("is a symlink with an absolute target");
    }
    resolve(
        components[..components.len() - 1].to_vec(),
        target,
        &HashMap::new(),
    )?;
    Ok(target.to_owned())
}

/// Resolves `target` from directory `dir` like the kernel would, following
/// `links` (path → target) along the way; fails if it leaves the root.
fn resolve<'a>(
    mut dir: Vec<&'a str>,
    target: &'a str,
    links: &'a HashMap<String, String>,
) -> Result<Vec<&'a str>, &'static str> {
    const ESCAPES: &str = "is a symlink pointing outside the release directory";
    let mut pending: VecDeque<&str> = target.split('/').collect();
    let mut hops = 0;
    while let Some(component) = pending.pop_front() {
        match component {
            "" | "." => {}
            ".." => {
                dir.pop().ok_or(ESCAPES)?;
            }
            name => {
                dir.push(name);
                if let Some(next) = links.get(&dir.join("/")) {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err("is part of a symlink loop");
                    }
                    if next.starts_with('/') {
                        return Err(ESCAPES);
                    }
                    dir.pop();
                    for part in next.split('/').rev() {
                        pending.push_front(part);
                    }
                }
            }
        }
    }
    Ok(dir)
}

/// Opens an existing archive: hashes it, reads the manifest inside, checks
/// every entry and that the manifest's `file_count` and `content_sha256`
/// match the entries. Nothing is unpacked.
pub fn open(path: &Path) -> Result<Artifact, ArtifactError> {
    let file = File::open(path).map_err(ArtifactError::io("open", path))?;
    // One pass over the file: the hash reported is of the bytes checked.
    let mut raw = HashingReader::new(file);
    let (mut manifest, content_sha256, file_count) = {
        let mut archive = tar::Archive::new(GzDecoder::new(&mut raw));
        let summary = read_entries(path, &mut archive)?;
        // Reading to the end checks the gzip trailer (CRC and length).
        io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(corrupt(path))?;
        summary
    };
    io::copy(&mut raw, &mut io::sink()).map_err(ArtifactError::io("read", path))?;
    let (sha256, size) = raw.finish();

    if manifest.format != FORMAT {
        return Err(ArtifactError::BadManifest {
            archive: path.to_owned(),
            reason: format!("format is `{}`, expected `{FORMAT}`", manifest.format),
        });
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
    })
}

fn corrupt(path: &Path) -> impl Fn(io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Corrupt {
        archive: path.to_owned(),
        source,
    }
}

/// Reads the manifest and checks and hashes every other entry; returns the
/// manifest, the content hash and the file count.
fn read_entries<R: Read>(
    path: &Path,
    archive: &mut tar::Archive<R>,
) -> Result<(Manifest, String, u64), ArtifactError> {
    let mut entries = archive.entries().map_err(corrupt(path))?;
    let first = entries.next().transpose().map_err(corrupt(path))?;
    let manifest = match first {
        Some(entry) => read_manifest(path, entry)?,
        None => {
            return Err(ArtifactError::MissingManifest {
                archive: path.to_owned(),
            });
        }
    };

    let mut checker = Checker::default();
    let mut content = ContentHasher::new();
    for entry in entries {
        let mut entry = entry.map_err(corrupt(path))?;
        let mode = entry.header().mode().map_err(corrupt(path))?;
        let checked = checker
            .check(
                &entry.path_bytes(),
                entry.header().entry_type(),
                mode,
                entry.link_name_bytes().as_deref(),
            )
            .map_err(|refusal| unsafe_entry(path, refusal))?;
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
        .map_err(|refusal| unsafe_entry(path, refusal))?;
    let (content_sha256, file_count) = content.finish();
    Ok((manifest, content_sha256, file_count))
}

fn unsafe_entry(path: &Path, refusal: Refusal) -> ArtifactError {
    ArtifactError::UnsafeEntry {
        archive: path.to_owned(),
        entry: refusal.entry,
        reason: refusal.reason,
    }
}

fn read_manifest<R: Read>(
    path: &Path,
    mut entry: tar::Entry<'_, R>,
) -> Result<Manifest, ArtifactError> {
    let is_manifest = entry.header().entry_type() == tar::EntryType::Regular
        && normalise(&String::from_utf8_lossy(&entry.path_bytes())).ok()
            == Some(vec![MANIFEST_NAME]);
    if !is_manifest {
        return Err(ArtifactError::MissingManifest {
            archive: path.to_owned(),
        });
    }
    let bad = |reason: String| ArtifactError::BadManifest {
        archive: path.to_owned(),
        reason,
    };
    if entry.size() > MAX_MANIFEST_BYTES {
        return Err(bad(format!(
            "it is {} bytes, far larger than any manifest",
            entry.size()
        )));
    }
    let mut json = Vec::new();
    entry.read_to_end(&mut json).map_err(corrupt(path))?;
    Manifest::from_json(&json).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tar::EntryType as T;

    fn check_all(entries: &[(&str, T, Option<&str>)]) -> Result<(), Refusal> {
        let mut checker = Checker::default();
        for (path, kind, link) in entries {
            let mode = if *kind == T::Directory { 0o755 } else { 0o644 };
            checker.check(path.as_bytes(), *kind, mode, link.map(str::as_bytes))?;
        }
        checker.finish()
    }

    fn reason(entries: &[(&str, T, Option<&str>)]) -> &'static str {
        check_all(entries).unwrap_err().reason
    }

    #[test]
    fn accepts_ordinary_trees() {
        check_all(&[
            ("app", T::Directory, None),
            ("app/main.py", T::Regular, None),
            ("./app/lib/", T::Directory, None),
            ("current", T::Symlink, Some("app")),
            ("app/lib/up", T::Symlink, Some("../main.py")),
            ("app/self", T::Symlink, Some(".")),
            ("app/root", T::Symlink, Some("..")),
        ])
        .unwrap();
    }

    #[test]
    fn refuses_paths_that_leave_the_root() {
        assert_eq!(
            reason(&[("../evil", T::Regular, None)]),
            "would escape the release directory"
        );
        assert_eq!(
            reason(&[("a/../../evil", T::Regular, None)]),
            "would escape the release directory"
        );
        assert_eq!(
            reason(&[("/etc/passwd", T::Regular, None)]),
            "is an absolute path"
        );
        assert_eq!(
            reason(&[(".", T::Directory, None)]),
            "names the release directory itself"
        );
    }

    #[test]
    fn refuses_writes_through_symlinks() {
        assert_eq!(
            reason(&[
                ("dir", T::Symlink, Some("sub")),
                ("dir/file", T::Regular, None)
            ]),
            "passes through a symlink earlier in the archive"
        );
        assert_eq!(
            reason(&[("a/file", T::Regular, None), ("a", T::Symlink, Some("b"))]),
            "replaces a directory that earlier entries are in"
        );
        assert_eq!(
            reason(&[("x", T::Regular, None), ("x", T::Symlink, Some("y"))]),
            "appears more than once"
        );
    }

    #[test]
    fn refuses_escaping_symlinks() {
        assert_eq!(
            reason(&[("l", T::Symlink, Some("/etc"))]),
            "is a symlink with an absolute target"
        );
        assert_eq!(
            reason(&[("a/l", T::Symlink, Some("../../x"))]),
            "is a symlink pointing outside the release directory"
        );
        // Each link is harmless alone; together `l` resolves to `../`.
        assert_eq!(
            reason(&[
                ("d1/d2/up", T::Symlink, Some("../..")),
                ("l", T::Symlink, Some("d1/d2/up/..")),
            ]),
            "is a symlink pointing outside the release directory"
        );
        assert_eq!(
            reason(&[("a", T::Symlink, Some("b")), ("b", T::Symlink, Some("a"))]),
            "is part of a symlink loop"
        );
    }

    #[test]
    fn refuses_special_entries() {
        assert_eq!(reason(&[("h", T::Link, Some("x"))]), "is a hard link");
        assert_eq!(reason(&[("f", T::Fifo, None)]), "is a device or fifo");
        assert_eq!(reason(&[("c", T::Char, None)]), "is a device or fifo");
        let mut checker = Checker::default();
        let err = checker.check(b"s", T::Regular, 0o4755, None).err().unwrap();
        assert_eq!(err.reason, "has setuid, setgid or sticky bits");
        let err = checker
            .check(b"\xff", T::Regular, 0o644, None)
            .err()
            .unwrap();
        assert_eq!(err.reason, "is not valid UTF-8");
    }

    /// Writes a tar.gz whose headers hold exactly the bytes given, bypassing
    /// the tar crate's own path checks, like a hostile archive would.
    fn raw_archive(
        entries: &[(&str, T, &[u8], Option<&str>)],
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evil.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::default(),
        );
        let mut builder = tar::Builder::new(gz);
        for (name, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_entry_type(*kind);
            header.set_mode(if *kind == T::Directory { 0o755 } else { 0o644 });
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();
        (dir, path)
    }

    const MANIFEST: &[u8] =
        br#"{"app":"shop","commit":"c","branch":"b","release_id":"r","format":"tar.gz",
        "file_count":1,"content_sha256":"00","created":"2023-11-14T22:13:20Z"}"#;

    fn open_err(entries: &[(&str, T, &[u8], Option<&str>)]) -> String {
        let (_dir, path) = raw_archive(entries);
        open(&path).unwrap_err().to_string()
    }

    #[test]
    fn open_refuses_dot_dot_entries() {
        let (_dir, path) = raw_archive(&[
            (MANIFEST_NAME, T::Regular, MANIFEST, None),
            ("../evil", T::Regular, b"x", None),
        ]);
        let err = open(&path).unwrap_err();
        assert!(matches!(err, ArtifactError::UnsafeEntry { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "refusing artifact {}: entry `../evil` would escape the release directory",
                path.display()
            )
        );
    }

    #[test]
    fn open_refuses_absolute_paths() {
        let err = open_err(&[
            (MANIFEST_NAME, T::Regular, MANIFEST, None),
            ("/etc/cron.d/x", T::Regular, b"x", None),
        ]);
        assert!(
            err.ends_with("entry `/etc/cron.d/x` is an absolute path"),
            "{err}"
        );
    }

    #[test]
    fn open_refuses_writing_through_a_symlink() {
        let err = open_err(&[
            (MANIFEST_NAME, T::Regular, MANIFEST, None),
            ("conf", T::Symlink, b"", Some("etc")),
            ("conf/app.ini", T::Regular, b"x", None),
        ]);
        assert!(
            err.ends_with("entry `conf/app.ini` passes through a symlink earlier in the archive"),
            "{err}"
        );
        let err = open_err(&[
            (MANIFEST_NAME, T::Regular, MANIFEST, None),
            ("up", T::Symlink, b"", Some("../..")),
        ]);
        assert!(
            err.ends_with("entry `up` is a symlink pointing outside the release directory"),
            "{err}"
        );
        let err = open_err(&[
            (MANIFEST_NAME, T::Regular, MANIFEST, None),
            ("h", T::Link, b"", Some("x")),
        ]);
        assert!(err.ends_with("entry `h` is a hard link"), "{err}");
    }

    #[test]
    fn open_needs_the_manifest_first_and_matching() {
        let err = open_err(&[
            ("a", T::Regular, b"x", None),
            (MANIFEST_NAME, T::Regular, MANIFEST, None),
        ]);
        assert!(
            err.contains("has no .slipway-manifest.json as its first entry"),
            "{err}"
        );
        let err = open_err(&[(MANIFEST_NAME, T::Regular, b"{", None)]);
        assert!(
            err.contains("the manifest in") && err.contains("is invalid"),
            "{err}"
        );
        let err = open_err(&[
            (MANIFEST_NAME, T::Regular, MANIFEST, None),
            ("a", T::Regular, b"x", None),
        ]);
        assert!(
            err.contains("its manifest says content_sha256 is 00, but its entries give"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let not_gz = dir.path().join("x.tar.gz");
        std::fs::write(&not_gz, "plain text").unwrap();
        assert!(matches!(open(&not_gz), Err(ArtifactError::Corrupt { .. })));
    }
}
