//! Deciding whether an archive is safe to unpack, [`open`]ing one, and
//! re-serialising a checked one ([`open_for_upload`]).
//!
//! [`Checker`] sees entries in archive order, as an extractor would, and
//! refuses anything that could write outside the release directory or create
//! something other than files, directories and symlinks:
//! absolute paths, `..` components, paths through an earlier symlink (or
//! below an earlier file), duplicates, hard links, devices and fifos,
//! setuid/setgid/sticky bits, any mode but slipway's own (0644 or 0755 files,
//! 0755 directories, 0777 symlinks, so never world-writable), the names
//! slipway writes into a release itself (`.slipway.env`, `.slipway-artifact`),
//! and symlinks whose target is absolute or leaves the release directory.
//! Symlink targets are resolved the way the kernel would once everything is
//! unpacked, following the archive's other symlinks, so a chain of
//! individually harmless links cannot escape either.
//!
//! Reading an archive refuses what slipway never writes and tar readers
//! disagree on: more than one gzip member or bytes after it (flate2 reads one
//! member, GNU tar all of them), PAX extended headers (the `tar` crate and GNU
//! tar combine PAX `path`/`linkpath` with GNU long names differently), and
//! headers whose magic/version is neither ustar nor GNU (whether the ustar
//! `prefix` field counts then differs). The decompressed stream is bounded by
//! the manifest's `entry_count` and `unpacked_size` while it is read, so a
//! small file cannot make the runner inflate gigabytes.
//!
//! Invariant: checking is not enough, because a host's tar may read the
//! same bytes differently. [`open_for_upload`] therefore writes the entries
//! it checked, as it understood them, into a fresh archive through the same
//! writer [`super::pack`] uses; only that archive is uploaded. For an archive
//! slipway built, the copy is byte-identical to the original.
//!
//! The same checker runs over [`super::pack`]'s input, so slipway never
//! produces an archive it would refuse.

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::bufread::GzDecoder;

use super::digest::HashingReader;
use super::manifest::{ContentHasher, ContentSummary, Manifest};
use super::tarball::{Canonical, Tee, finish_temp, temp_file};
use super::{Artifact, ArtifactError, EntryKind, FORMAT, MANIFEST_NAME};

/// Manifests are a few hundred bytes; anything far bigger is not one.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Decompressed bytes allowed before the manifest is read: the manifest
/// itself plus its header records.
const BEFORE_MANIFEST_BYTES: u64 = MAX_MANIFEST_BYTES + 64 * 1024;

/// Longest path or symlink target accepted, like Linux's `PATH_MAX`.
const MAX_PATH_BYTES: usize = 4096;

/// The most tar stream one entry can take besides its content: its header,
/// padding, and a GNU long-name and long-link record of [`MAX_PATH_BYTES`].
const ENTRY_OVERHEAD_BYTES: u64 = 3 * 512 + 511 + 2 * (MAX_PATH_BYTES as u64 + 512);

/// End-of-archive blocks and the record padding tar writers add.
const TRAILER_BYTES: u64 = 20 * 512;

/// Names slipway itself writes at the top of a release; an entry there
/// could make those writes land elsewhere (e.g. the env file through a
/// symlink).
const RESERVED_NAMES: [&str; 2] = [".slipway.env", ".slipway-artifact"];

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
        if raw_path.len() > MAX_PATH_BYTES {
            return Err(refuse("has a path longer than 4096 bytes"));
        }
        let path = std::str::from_utf8(raw_path).map_err(|_| refuse("is not valid UTF-8"))?;
        let components = normalise(path).map_err(refuse)?;
        let path = components.join("/");
        if path == MANIFEST_NAME {
            return Err(refuse("uses the name reserved for slipway's manifest"));
        }
        if RESERVED_NAMES.contains(&path.as_str()) {
            return Err(refuse(
                "uses a name slipway writes into every release itself (the env file or the artifact marker)",
            ));
        }
        let kind = entry_kind(entry_type).map_err(refuse)?;
        if mode & 0o7000 != 0 {
            return Err(refuse("has setuid, setgid or sticky bits"));
        }
        let allowed: &[u32] = match kind {
            EntryKind::File => &[0o644, 0o755],
            EntryKind::Dir => &[0o755],
            EntryKind::Symlink => &[0o777],
        };
        if !allowed.contains(&mode) {
            return Err(refuse(
                "has a mode slipway never writes (files are 0644 or 0755, directories 0755, symlinks 0777)",
            ));
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
    if target.len() > MAX_PATH_BYTES {
        return Err("is a symlink with a target longer than 4096 bytes");
    }
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
/// every entry and that the manifest's counts and `content_sha256` match the
/// entries. Nothing is unpacked and nothing written.
pub fn open(path: &Path) -> Result<Artifact, ArtifactError> {
    read_checked(path, None).map(|(original, _)| original)
}

/// A checked archive and the copy of it slipway re-serialised for upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The file as given: its sha256 is what a signature covers.
    pub original: Artifact,
    /// The checked entries written again by slipway's own writer, in
    /// `out_dir`; this is what hosts receive.
    pub upload: Artifact,
}

/// [`open`], and while reading write every checked entry into a fresh
/// archive in `out_dir` (named like the original), so hosts unpack exactly
/// what was checked, whatever their tar makes of the original's bytes.
pub fn open_for_upload(path: &Path, out_dir: &Path) -> Result<Opened, ArtifactError> {
    let name = path
        .file_name()
        .map_or_else(|| "artifact.tar.gz".into(), ToOwned::to_owned);
    let dest = out_dir.join(name);
    let tmp = temp_file(out_dir)?;
    let (original, written) = read_checked(path, Some(tmp.as_file()))?;
    let (sha256, size, tar_size) = written.expect("an output was given");
    finish_temp(tmp, &dest)?;
    let mut manifest = original.manifest.clone();
    manifest.sha256 = Some(sha256.clone());
    Ok(Opened {
        upload: Artifact {
            path: dest,
            sha256,
            size,
            tar_size: Some(tar_size),
            manifest,
        },
        original,
    })
}

/// How many decompressed bytes may still be read, shared between the
/// reader that enforces it and the code that learns the bound.
struct Budget {
    read: Cell<u64>,
    limit: Cell<u64>,
    exceeded: Cell<bool>,
}

/// Fails a read that would go past the [`Budget`].
struct Bounded<'a, R> {
    inner: R,
    budget: &'a Budget,
}

impl<R: Read> Read for Bounded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (read, limit) = (self.budget.read.get(), self.budget.limit.get());
        // One byte past the limit tells "more data" from "exactly full".
        let room =
            usize::try_from(limit.saturating_sub(read).saturating_add(1)).unwrap_or(usize::MAX);
        let max = buf.len().min(room);
        let n = self.inner.read(&mut buf[..max])?;
        if read + n as u64 > limit {
            self.budget.exceeded.set(true);
            return Err(io::Error::other(
                "the archive unpacks to more than its manifest allows",
            ));
        }
        self.budget.read.set(read + n as u64);
        Ok(n)
    }
}

type Reader<'a> = Bounded<'a, GzDecoder<BufReader<HashingReader<File>>>>;

/// Reads and checks `path`; with `out`, also writes the canonical copy
/// there and returns its sha256, size and tar stream length.
fn read_checked(path: &Path, out: Option<&File>) -> Result<(Artifact, Written), ArtifactError> {
    let file = File::open(path).map_err(ArtifactError::io("open", path))?;
    let budget = Budget {
        read: Cell::new(0),
        limit: Cell::new(BEFORE_MANIFEST_BYTES),
        exceeded: Cell::new(false),
    };
    // One pass over the file: the hash reported is of the bytes checked.
    let reader = Bounded {
        inner: GzDecoder::new(BufReader::new(HashingReader::new(file))),
        budget: &budget,
    };
    let mut archive = tar::Archive::new(reader);
    let entries = read_entries(path, &mut archive, &budget, out);
    let (manifest, summary, written) = entries.map_err(|e| too_large(path, &budget, e))?;
    let mut reader = archive.into_inner();
    // The rest of the member (tar padding) and its trailer (CRC, length).
    io::copy(&mut reader, &mut io::sink())
        .map_err(corrupt(path))
        .map_err(|e| too_large(path, &budget, e))?;
    let mut buffered = reader.inner.into_inner();
    let rest = buffered
        .fill_buf()
        .map_err(ArtifactError::io("read", path))?;
    if !rest.is_empty() {
        return Err(ArtifactError::ExtraGzipData {
            archive: path.to_owned(),
        });
    }
    let (sha256, size) = buffered.into_inner().finish();
    check_manifest(path, &manifest, &summary)?;
    let mut manifest = manifest;
    manifest.sha256 = Some(sha256.clone());
    let original = Artifact {
        path: path.to_owned(),
        sha256,
        size,
        tar_size: None,
        manifest,
    };
    Ok((original, written))
}

/// A read that failed because the budget ran out says so, whatever error
/// the layers above made of it.
fn too_large(path: &Path, budget: &Budget, e: ArtifactError) -> ArtifactError {
    if budget.exceeded.get() {
        ArtifactError::TooLarge {
            archive: path.to_owned(),
            limit: budget.limit.get(),
        }
    } else {
        e
    }
}

fn check_manifest(
    path: &Path,
    manifest: &Manifest,
    summary: &ContentSummary,
) -> Result<(), ArtifactError> {
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
    if manifest.content_sha256 != summary.content_sha256 {
        return Err(mismatch(
            "content_sha256",
            manifest.content_sha256.clone(),
            summary.content_sha256.clone(),
        ));
    }
    let counts = [
        ("file_count", manifest.file_count, summary.file_count),
        ("entry_count", manifest.entry_count, summary.entry_count),
        (
            "unpacked_size",
            manifest.unpacked_size,
            summary.unpacked_size,
        ),
    ];
    for (field, expected, actual) in counts {
        if expected != actual {
            return Err(mismatch(field, expected.to_string(), actual.to_string()));
        }
    }
    Ok(())
}

fn corrupt(path: &Path) -> impl Fn(io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Corrupt {
        archive: path.to_owned(),
        source,
    }
}

/// The sha256, size and tar stream length of a re-serialised copy.
type Written = Option<(String, u64, u64)>;

/// Reads the manifest and checks and hashes every other entry, writing
/// each to `out` (when given) once it passed; returns the manifest, what
/// the entries add up to, and what was written.
fn read_entries(
    path: &Path,
    archive: &mut tar::Archive<Reader<'_>>,
    budget: &Budget,
    out: Option<&File>,
) -> Result<(Manifest, ContentSummary, Written), ArtifactError> {
    let mut entries = archive.entries().map_err(corrupt(path))?;
    let first = entries.next().transpose().map_err(corrupt(path))?;
    let (manifest, mtime) = match first {
        Some(entry) => read_manifest(path, entry)?,
        None => {
            return Err(ArtifactError::MissingManifest {
                archive: path.to_owned(),
            });
        }
    };
    // From here on the manifest bounds the stream.
    let bound = manifest
        .entry_count
        .saturating_mul(ENTRY_OVERHEAD_BYTES)
        .saturating_add(manifest.unpacked_size)
        .saturating_add(TRAILER_BYTES);
    budget.limit.set(budget.read.get().saturating_add(bound));

    let mut writer = match out {
        Some(file) => {
            let mut inner = manifest.clone();
            inner.sha256 = None;
            Some(Canonical::new(file, &inner, mtime).map_err(write_err(path))?)
        }
        None => None,
    };
    let mut checker = Checker::default();
    let mut content = ContentHasher::new();
    let (mut count, mut declared) = (0u64, 0u64);
    for entry in entries {
        let mut entry = entry.map_err(corrupt(path))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let refuse = |reason| {
            unsafe_entry(
                path,
                Refusal {
                    entry: name.clone(),
                    reason,
                },
            )
        };
        check_header(&mut entry).map_err(refuse)?;
        let mode = entry.header().mode().map_err(corrupt(path))?;
        let checked = checker
            .check(
                &entry.path_bytes(),
                entry.header().entry_type(),
                mode,
                entry.link_name_bytes().as_deref(),
            )
            .map_err(|refusal| unsafe_entry(path, refusal))?;
        count += 1;
        if count > manifest.entry_count {
            return Err(refuse("is one more entry than the manifest's entry_count"));
        }
        match (&checked.kind, &checked.target) {
            (EntryKind::Symlink, Some(target)) => {
                content.entry(checked.kind, mode, &checked.path, target.len() as u64);
                content.data(target.as_bytes());
                if let Some(w) = writer.as_mut() {
                    w.symlink(&checked.path, target).map_err(write_err(path))?;
                }
            }
            (EntryKind::File, _) => {
                let size = entry.size();
                declared = declared.saturating_add(size);
                if declared > manifest.unpacked_size {
                    return Err(ArtifactError::TooLarge {
                        archive: path.to_owned(),
                        limit: manifest.unpacked_size,
                    });
                }
                content.entry(checked.kind, mode, &checked.path, size);
                let mut tee = Tee {
                    inner: &mut entry,
                    content: &mut content,
                    count: 0,
                };
                match writer.as_mut() {
                    Some(w) => w.file(&checked.path, mode, size, &mut tee),
                    None => io::copy(&mut tee, &mut io::sink()).map(drop),
                }
                .map_err(corrupt(path))?;
                if tee.count != size {
                    return Err(corrupt(path)(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("entry `{}` is shorter than its header says", checked.path),
                    )));
                }
            }
            _ => {
                content.entry(checked.kind, mode, &checked.path, 0);
                if let Some(w) = writer.as_mut() {
                    w.dir(&checked.path).map_err(write_err(path))?;
                }
            }
        }
    }
    checker
        .finish()
        .map_err(|refusal| unsafe_entry(path, refusal))?;
    let written = match writer {
        Some(w) => Some(w.finish().map_err(write_err(path))?),
        None => None,
    };
    Ok((manifest, content.finish_all(), written))
}

/// Refuses header forms slipway never writes and tar readers read
/// differently (see the module documentation).
fn check_header<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<(), &'static str> {
    let magic = &entry.header().as_bytes()[257..265];
    if magic != b"ustar\x0000" && magic != b"ustar  \x00" {
        return Err(
            "has a tar header whose magic/version is neither ustar nor GNU; tar readers disagree on what its name is",
        );
    }
    let has_pax = entry
        .pax_extensions()
        .map_err(|_| "has a PAX extended header that cannot be read")?
        .is_some();
    if has_pax {
        return Err(
            "carries a PAX extended header, which slipway never writes and tar readers combine with GNU long names differently",
        );
    }
    Ok(())
}

fn write_err(path: &Path) -> impl Fn(io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        action: "write a checked copy of",
        path: PathBuf::from(path),
        source,
    }
}

fn unsafe_entry(path: &Path, refusal: Refusal) -> ArtifactError {
    ArtifactError::UnsafeEntry {
        archive: path.to_owned(),
        entry: refusal.entry,
        reason: refusal.reason,
    }
}

/// The manifest and its header's mtime (the source time, which the
/// re-serialised copy keeps so a slipway-built archive comes out identical).
fn read_manifest<R: Read>(
    path: &Path,
    mut entry: tar::Entry<'_, R>,
) -> Result<(Manifest, u64), ArtifactError> {
    let is_manifest = entry.header().entry_type() == tar::EntryType::Regular
        && check_header(&mut entry).is_ok()
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
    let mtime = entry.header().mtime().map_err(corrupt(path))?;
    let mut json = Vec::new();
    entry.read_to_end(&mut json).map_err(corrupt(path))?;
    let manifest = Manifest::from_json(&json).map_err(|e| bad(e.to_string()))?;
    Ok((manifest, mtime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tar::EntryType as T;

    fn check_all(entries: &[(&str, T, Option<&str>)]) -> Result<(), Refusal> {
        let mut checker = Checker::default();
        for (path, kind, link) in entries {
            checker.check(
                path.as_bytes(),
                *kind,
                mode_of(*kind),
                link.map(str::as_bytes),
            )?;
        }
        checker.finish()
    }

    /// The modes slipway writes for each kind.
    fn mode_of(kind: T) -> u32 {
        match kind {
            T::Directory => 0o755,
            T::Symlink => 0o777,
            _ => 0o644,
        }
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
            header.set_mode(mode_of(*kind));
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();
        (dir, path)
    }

    const MANIFEST: &[u8] =
        br#"{"app":"shop","commit":"c","branch":"b","release_id":"r","format":"tar.gz",
        "file_count":1,"content_sha256":"00","entry_count":10,"unpacked_size":1,"created":"2023-11-14T22:13:20Z"}"#;

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

    /// A packed one-file release, for the tests below to damage.
    fn packed() -> (tempfile::TempDir, Artifact) {
        let (src, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(src.path().join("index.html"), "v1\n").unwrap();
        let input = crate::artifact::PackInput {
            dir: src.path(),
            exclude: &[],
            source_time: 1_700_000_000,
            app: "shop",
            commit: "c",
            branch: "b",
            release_id: "r1",
        };
        let artifact = crate::artifact::pack(&input, out.path()).unwrap();
        (out, artifact)
    }

    fn gunzip(path: &Path) -> Vec<u8> {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(File::open(path).unwrap())
            .read_to_end(&mut tar)
            .unwrap();
        tar
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, bytes).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn a_second_gzip_member_or_trailing_bytes_are_refused() {
        let (_out, artifact) = packed();
        let mut bytes = std::fs::read(&artifact.path).unwrap();
        bytes.extend(gzip(b"more"));
        std::fs::write(&artifact.path, &bytes).unwrap();
        let err = open(&artifact.path).unwrap_err();
        assert!(matches!(err, ArtifactError::ExtraGzipData { .. }), "{err}");

        let (_out, artifact) = packed();
        let mut bytes = std::fs::read(&artifact.path).unwrap();
        bytes.push(0);
        std::fs::write(&artifact.path, &bytes).unwrap();
        let err = open(&artifact.path).unwrap_err();
        assert!(matches!(err, ArtifactError::ExtraGzipData { .. }), "{err}");
    }

    #[test]
    fn inflating_past_the_manifest_bound_stops() {
        // A valid archive followed, inside the same gzip member, by 64 MiB
        // of zeros: the manifest allows a few KiB, so reading stops there.
        let (_out, artifact) = packed();
        let mut tar = gunzip(&artifact.path);
        tar.resize(tar.len() + (64 << 20), 0);
        std::fs::write(&artifact.path, gzip(&tar)).unwrap();
        let err = open(&artifact.path).unwrap_err();
        assert!(matches!(err, ArtifactError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("decompression bomb"), "{err}");
    }

    #[test]
    fn a_manifest_understating_the_content_is_refused() {
        let (_out, artifact) = packed();
        let manifest = artifact
            .manifest
            .to_json()
            .replace("\"unpacked_size\": 3", "\"unpacked_size\": 2");
        let manifest = manifest.replace(&format!(",\n  \"sha256\": \"{}\"", artifact.sha256), "");
        assert!(manifest.contains("\"unpacked_size\": 2"), "{manifest}");
        let (_dir, path) = raw_archive(&[
            (MANIFEST_NAME, T::Regular, manifest.as_bytes(), None),
            ("index.html", T::Regular, b"v1\n", None),
        ]);
        let err = open(&path).unwrap_err();
        assert!(
            matches!(err, ArtifactError::TooLarge { limit: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn the_upload_copy_is_written_beside_never_over_the_original() {
        let (_out, artifact) = packed();
        let dir = tempfile::tempdir().unwrap();
        let opened = open_for_upload(&artifact.path, dir.path()).unwrap();
        assert_eq!(opened.original.sha256, artifact.sha256);
        assert_eq!(opened.upload.path, dir.path().join("shop-r1.tar.gz"));
        assert_eq!(
            opened.upload.manifest.sha256.as_deref(),
            Some(opened.upload.sha256.as_str())
        );
        assert!(opened.upload.tar_size.unwrap() > 0);
    }
}
