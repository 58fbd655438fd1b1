//! Packing a directory into a reproducible `.tar.gz` (see the invariants in
//! the module above).
//!
//! Packing is two passes over the directory: the first lists and hashes the
//! entries (the manifest, which leads the archive, needs the content hash);
//! the second writes them while hashing again. If the hashes differ,
//! something changed the directory during the pack and the archive is
//! discarded, so a manifest never describes content other than its archive's.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};
use globset::{GlobBuilder, GlobMatcher};

use super::digest::HashingWriter;
use super::manifest::{ContentHasher, ContentSummary, Manifest, rfc3339};
use super::verify::Checker;
use super::{Artifact, ArtifactError, EntryKind, FORMAT, MANIFEST_NAME, PackInput};

/// Fixed so the same input always compresses to the same bytes.
pub(super) const GZIP_LEVEL: u32 = 6;
/// gzip's "unknown" operating system, the same on every build host.
pub(super) const GZIP_OS_UNKNOWN: u8 = 255;

/// One thing found in the directory, with its normalised metadata.
pub(super) struct SourceEntry {
    /// Relative, `/`-separated.
    pub(super) rel: String,
    pub(super) abs: PathBuf,
    pub(super) kind: EntryKind,
    pub(super) mode: u32,
    /// File size; 0 for directories and symlinks.
    pub(super) size: u64,
    pub(super) target: Option<String>,
}

/// Packs `input.dir` into `out_dir/<app>-<release_id>.tar.gz` and writes
/// `out_dir/<app>-<release_id>.manifest.json` beside it.
///
/// Exclude patterns are gitignore-like globs over the path relative to
/// `input.dir`: a pattern without `/` matches a name at any depth, a leading
/// `/` anchors it to the top, a trailing `/` matches directories only, `*`
/// stays within one component and `**` crosses them; an excluded directory
/// takes its whole subtree with it. A top-level `.git` is always excluded.
pub fn pack(input: &PackInput, out_dir: &Path) -> Result<Artifact, ArtifactError> {
    check_name("app name", input.app)?;
    check_name("release id", input.release_id)?;
    let excludes = Excludes::new(input.exclude)?;
    check_out_dir(input.dir, out_dir)?;
    let created = rfc3339(input.source_time)
        .filter(|_| input.source_time >= 0)
        .ok_or(ArtifactError::BadSourceTime {
            time: input.source_time,
        })?;
    let mtime = input.source_time.unsigned_abs();

    let entries = collect(input.dir, &excludes)?;
    let summary = hash_entries(input.dir, &entries)?;
    let mut manifest = Manifest {
        app: input.app.to_owned(),
        commit: input.commit.to_owned(),
        branch: input.branch.to_owned(),
        release_id: input.release_id.to_owned(),
        format: FORMAT.to_owned(),
        file_count: summary.file_count,
        content_sha256: summary.content_sha256,
        entry_count: summary.entry_count,
        unpacked_size: summary.unpacked_size,
        created,
        sha256: None,
    };

    let stem = format!("{}-{}", input.app, input.release_id);
    let path = out_dir.join(format!("{stem}.tar.gz"));
    let (sha256, size, tar_size) = write_archive(input.dir, &path, &manifest, &entries, mtime)?;
    manifest.sha256 = Some(sha256.clone());
    let manifest_path = out_dir.join(format!("{stem}.manifest.json"));
    write_atomically(&manifest_path, manifest.to_json().as_bytes())?;
    Ok(Artifact {
        path,
        sha256,
        size,
        tar_size: Some(tar_size),
        manifest,
    })
}

/// Names become file names: no separators, no hidden or relative names.
pub(super) fn check_name(what: &'static str, value: &str) -> Result<(), ArtifactError> {
    if value.is_empty() || value.starts_with('.') || value.contains(['/', '\0']) {
        return Err(ArtifactError::BadName {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// An output directory inside the packed one would pack its own temp files.
pub(super) fn check_out_dir(dir: &Path, out_dir: &Path) -> Result<(), ArtifactError> {
    let dir_real = dir.canonicalize().map_err(ArtifactError::io("read", dir))?;
    let out_real = out_dir
        .canonicalize()
        .map_err(ArtifactError::io("use the output directory", out_dir))?;
    if out_real.starts_with(&dir_real) {
        return Err(ArtifactError::OutDirInside {
            out_dir: out_dir.to_owned(),
            dir: dir.to_owned(),
        });
    }
    Ok(())
}

/// Exclude rules compiled from gitignore-like patterns (see [`pack`]).
pub(super) struct Excludes {
    rules: Vec<ExcludeRule>,
}

struct ExcludeRule {
    matcher: GlobMatcher,
    /// Match the last component only (the pattern had no `/`).
    basename: bool,
    dir_only: bool,
}

impl Excludes {
    pub(super) fn new(patterns: &[String]) -> Result<Excludes, ArtifactError> {
        let rules = patterns
            .iter()
            .map(|p| ExcludeRule::new(p))
            .collect::<Result<_, _>>()?;
        Ok(Excludes { rules })
    }

    fn excludes(&self, rel: &Path, is_dir: bool) -> bool {
        if rel == Path::new(".git") {
            return true;
        }
        self.rules.iter().any(|rule| {
            (is_dir || !rule.dir_only)
                && match (rule.basename, rel.file_name()) {
                    (true, Some(name)) => rule.matcher.is_match(name),
                    _ => rule.matcher.is_match(rel),
                }
        })
    }
}

impl ExcludeRule {
    fn new(pattern: &str) -> Result<ExcludeRule, ArtifactError> {
        let bad = |reason: String| ArtifactError::BadExclude {
            pattern: pattern.to_owned(),
            reason,
        };
        if pattern.starts_with('!') {
            return Err(bad("negated patterns (`!`) are not supported".to_owned()));
        }
        let dir_only = pattern.ends_with('/');
        let anchored = pattern.starts_with('/');
        let glob = pattern.trim_start_matches('/').trim_end_matches('/');
        if glob.is_empty() {
            return Err(bad("it matches nothing; remove it".to_owned()));
        }
        let matcher = GlobBuilder::new(glob)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| bad(e.kind().to_string()))?
            .compile_matcher();
        Ok(ExcludeRule {
            matcher,
            basename: !anchored && !glob.contains('/'),
            dir_only,
        })
    }
}

/// Lists what will be packed, sorted by name at every level, and checks it
/// with the same rules [`super::open`] applies.
pub(super) fn collect(dir: &Path, excludes: &Excludes) -> Result<Vec<SourceEntry>, ArtifactError> {
    let walker = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| match e.path().strip_prefix(dir) {
            Ok(rel) => !excludes.excludes(rel, e.file_type().is_dir()),
            Err(_) => true,
        });
    let mut checker = Checker::default();
    let mut entries = Vec::new();
    for found in walker {
        let found = found.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_owned();
            ArtifactError::io("read", &path)(io::Error::from(e))
        })?;
        let entry = source_entry(dir, found.path(), found.file_type())?;
        let mode = entry.mode;
        let tar_type = match entry.kind {
            EntryKind::Dir => tar::EntryType::Directory,
            EntryKind::File => tar::EntryType::Regular,
            EntryKind::Symlink => tar::EntryType::Symlink,
        };
        checker
            .check(
                entry.rel.as_bytes(),
                tar_type,
                mode,
                entry.target.as_deref().map(str::as_bytes),
            )
            .map_err(|refusal| ArtifactError::UnsafeSource {
                dir: dir.to_owned(),
                entry: refusal.entry,
                reason: refusal.reason,
            })?;
        entries.push(entry);
    }
    checker
        .finish()
        .map_err(|refusal| ArtifactError::UnsafeSource {
            dir: dir.to_owned(),
            entry: refusal.entry,
            reason: refusal.reason,
        })?;
    Ok(entries)
}

fn source_entry(
    dir: &Path,
    abs: &Path,
    file_type: fs::FileType,
) -> Result<SourceEntry, ArtifactError> {
    let non_utf8 = || ArtifactError::NonUtf8Path {
        path: abs.to_owned(),
    };
    let rel = abs
        .strip_prefix(dir)
        .ok()
        .and_then(Path::to_str)
        .ok_or_else(non_utf8)?
        .to_owned();
    let (kind, mode, size, target) = if file_type.is_dir() {
        (EntryKind::Dir, 0o755, 0, None)
    } else if file_type.is_file() {
        let meta = fs::symlink_metadata(abs).map_err(ArtifactError::io("read", abs))?;
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        (EntryKind::File, mode, meta.len(), None)
    } else if file_type.is_symlink() {
        let target = fs::read_link(abs).map_err(ArtifactError::io("read the symlink", abs))?;
        let target = target.to_str().ok_or_else(non_utf8)?.to_owned();
        (EntryKind::Symlink, 0o777, 0, Some(target))
    } else {
        return Err(ArtifactError::UnsupportedFile {
            path: abs.to_owned(),
            kind: special_kind(file_type),
        });
    };
    Ok(SourceEntry {
        rel,
        abs: abs.to_owned(),
        kind,
        mode,
        size,
        target,
    })
}

fn special_kind(file_type: fs::FileType) -> &'static str {
    if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

/// First pass: the content hash and file count the manifest will carry.
pub(super) fn hash_entries(
    dir: &Path,
    entries: &[SourceEntry],
) -> Result<ContentSummary, ArtifactError> {
    let mut content = ContentHasher::new();
    for entry in entries {
        content.entry(entry.kind, entry.mode, &entry.rel, data_len(entry));
        match (&entry.kind, &entry.target) {
            (EntryKind::File, _) => {
                let file = File::open(&entry.abs).map_err(ArtifactError::io("read", &entry.abs))?;
                let copied = io::copy(&mut file.take(entry.size + 1), &mut content)
                    .map_err(ArtifactError::io("read", &entry.abs))?;
                if copied != entry.size {
                    return Err(changed(dir, &entry.abs));
                }
            }
            (EntryKind::Symlink, Some(target)) => content.data(target.as_bytes()),
            _ => {}
        }
    }
    Ok(content.finish_all())
}

pub(super) fn data_len(entry: &SourceEntry) -> u64 {
    match &entry.target {
        Some(target) => target.len() as u64,
        None => entry.size,
    }
}

pub(super) fn changed(dir: &Path, path: &Path) -> ArtifactError {
    ArtifactError::ChangedWhilePacking {
        dir: dir.to_owned(),
        path: path.to_owned(),
    }
}

/// Second pass: writes manifest and entries to a temp file in the output
/// directory, re-checks the content hash, then renames it into place.
/// Returns the archive's sha256, size and tar stream length.
fn write_archive(
    dir: &Path,
    path: &Path,
    manifest: &Manifest,
    entries: &[SourceEntry],
    mtime: u64,
) -> Result<(String, u64, u64), ArtifactError> {
    let out_dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_file(out_dir)?;
    let mut writer = Canonical::new(tmp.as_file(), manifest, mtime)
        .map_err(ArtifactError::io("write", tmp.path()))?;
    let mut content = ContentHasher::new();
    for entry in entries {
        append_entry(dir, &mut writer, entry, &mut content)?;
    }
    if content.finish().0 != manifest.content_sha256 {
        return Err(changed(dir, dir));
    }
    let written = writer
        .finish()
        .map_err(ArtifactError::io("write", tmp.path()))?;
    finish_temp(tmp, path)?;
    Ok(written)
}

fn append_entry<W: Write>(
    dir: &Path,
    writer: &mut Canonical<W>,
    entry: &SourceEntry,
    content: &mut ContentHasher,
) -> Result<(), ArtifactError> {
    content.entry(entry.kind, entry.mode, &entry.rel, data_len(entry));
    let pack_err = ArtifactError::io("pack", &entry.abs);
    match (&entry.kind, &entry.target) {
        (EntryKind::Symlink, Some(target)) => {
            content.data(target.as_bytes());
            writer.symlink(&entry.rel, target).map_err(pack_err)
        }
        (EntryKind::File, _) => {
            let file = File::open(&entry.abs).map_err(ArtifactError::io("read", &entry.abs))?;
            // `take` keeps a file that grew from overrunning its header's
            // size; one that shrank shows up as a short count.
            let mut reader = Tee {
                inner: file.take(entry.size),
                content,
                count: 0,
            };
            writer
                .file(&entry.rel, entry.mode, entry.size, &mut reader)
                .map_err(pack_err)?;
            if reader.count != entry.size {
                return Err(changed(dir, &entry.abs));
            }
            Ok(())
        }
        _ => writer.dir(&entry.rel).map_err(pack_err),
    }
}

/// The one writer of slipway's archive format: the manifest first, then
/// entries with headers built from scratch (see [`header`]), gzip with
/// fixed settings. Both [`pack`] and the re-serialisation of a checked
/// archive (`verify.rs`) write through it, so what a host unpacks is always
/// a stream in this shape.
pub(super) struct Canonical<W: Write> {
    tar: tar::Builder<Counting<flate2::write::GzEncoder<HashingWriter<BufWriter<W>>>>>,
    mtime: u64,
}

impl<W: Write> Canonical<W> {
    pub(super) fn new(out: W, manifest: &Manifest, mtime: u64) -> io::Result<Self> {
        let hashing = HashingWriter::new(BufWriter::new(out));
        let gz = GzBuilder::new()
            .mtime(0)
            .operating_system(GZIP_OS_UNKNOWN)
            .write(hashing, Compression::new(GZIP_LEVEL));
        let mut tar = tar::Builder::new(Counting {
            inner: gz,
            count: 0,
        });
        let json = manifest.to_json();
        let mut header = header(EntryKind::File, 0o644, json.len() as u64, mtime);
        tar.append_data(&mut header, MANIFEST_NAME, json.as_bytes())?;
        Ok(Canonical { tar, mtime })
    }

    pub(super) fn dir(&mut self, path: &str) -> io::Result<()> {
        let mut header = header(EntryKind::Dir, 0o755, 0, self.mtime);
        self.tar.append_data(&mut header, path, io::empty())
    }

    pub(super) fn file(
        &mut self,
        path: &str,
        mode: u32,
        size: u64,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        let mut header = header(EntryKind::File, mode, size, self.mtime);
        self.tar.append_data(&mut header, path, data)
    }

    pub(super) fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let mut header = header(EntryKind::Symlink, 0o777, 0, self.mtime);
        self.tar.append_link(&mut header, path, target)
    }

    /// Ends the archive; returns its sha256, its size and the length of
    /// the tar stream inside the gzip member.
    pub(super) fn finish(self) -> io::Result<(String, u64, u64)> {
        let counting = self.tar.into_inner()?;
        let hashing = counting.inner.finish()?;
        let (buffered, sha256, size) = hashing.finish();
        buffered.into_inner().map_err(|e| e.into_error())?;
        Ok((sha256, size, counting.count))
    }
}

/// Counts the bytes of the tar stream before compression.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A header with every field set from our normalised values, nothing from the
/// filesystem. The path and checksum are filled in by the tar builder.
pub(super) fn header(kind: EntryKind, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(match kind {
        EntryKind::Dir => tar::EntryType::Directory,
        EntryKind::File => tar::EntryType::Regular,
        EntryKind::Symlink => tar::EntryType::Symlink,
    });
    header.set_mode(mode);
    header.set_size(if kind == EntryKind::File { size } else { 0 });
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    // Empty names cannot fail to fit; ignore the impossible error.
    let _ = header.set_username("");
    let _ = header.set_groupname("");
    header
}

/// Feeds file bytes to the content hash as they pass: read by the tar
/// builder when packing, copied out when an artifact is checked.
pub(super) struct Tee<'a, R> {
    pub(super) inner: R,
    pub(super) content: &'a mut ContentHasher,
    pub(super) count: u64,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.content.data(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

pub(super) fn temp_file(out_dir: &Path) -> Result<tempfile::NamedTempFile, ArtifactError> {
    tempfile::Builder::new()
        .prefix(".slipway-")
        .suffix(".tmp")
        .tempfile_in(out_dir)
        .map_err(ArtifactError::io("create a file in", out_dir))
}

/// Flushes, makes world-readable like any ordinary output, and renames.
pub(super) fn finish_temp(tmp: tempfile::NamedTempFile, path: &Path) -> Result<(), ArtifactError> {
    let file = tmp.as_file();
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .and_then(|()| file.sync_all())
        .map_err(ArtifactError::io("write", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| ArtifactError::io("write", path)(e.error))?;
    Ok(())
}

pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
    let out_dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = temp_file(out_dir)?;
    tmp.write_all(bytes)
        .map_err(ArtifactError::io("write", tmp.path()))?;
    finish_temp(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const TIME: i64 = 1_700_000_000;

    fn input<'a>(dir: &'a Path, exclude: &'a [String], release_id: &'a str) -> PackInput<'a> {
        PackInput {
            dir,
            exclude,
            source_time: TIME,
            app: "shop",
            commit: "0123456789abcdef0123456789abcdef01234567",
            branch: "production",
            release_id,
        }
    }

    fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// The same small tree, created in `order` with the given mtime.
    fn make_tree(dir: &Path, reverse: bool, mtime: i64) {
        let mut steps: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| fs::create_dir_all(dir.join("app/lib")).unwrap()),
            Box::new(|| fs::write(dir.join("README"), "hi\n").unwrap()),
            Box::new(|| {
                fs::create_dir_all(dir.join("app/lib")).unwrap();
                fs::write(dir.join("app/lib/util.py"), "x = 1\n").unwrap();
                set_mode(&dir.join("app/lib/util.py"), 0o600);
            }),
            Box::new(|| {
                fs::create_dir_all(dir.join("bin")).unwrap();
                fs::write(dir.join("bin/run"), "#!/bin/sh\n").unwrap();
                set_mode(&dir.join("bin/run"), 0o700);
            }),
            Box::new(|| symlink("bin/run", dir.join("run")).unwrap()),
            Box::new(|| {
                let deep = dir
                    .join("a".repeat(60))
                    .join("b".repeat(60))
                    .join("c".repeat(60));
                fs::create_dir_all(&deep).unwrap();
                fs::write(deep.join("long-name.txt"), "deep\n").unwrap();
            }),
        ];
        if reverse {
            steps.reverse();
        }
        for step in steps {
            step();
        }
        let times = format!("@{mtime}");
        std::process::Command::new("find")
            .arg(dir)
            .args(["-exec", "touch", "-h", "-d", &times, "{}", "+"])
            .status()
            .unwrap();
    }

    #[test]
    fn packing_is_reproducible() {
        let (a, b, out_a, out_b) = (tmp(), tmp(), tmp(), tmp());
        make_tree(a.path(), false, 1_000);
        make_tree(b.path(), true, 2_000_000);
        let first = pack(&input(a.path(), &[], "r1"), out_a.path()).unwrap();
        let second = pack(&input(b.path(), &[], "r1"), out_b.path()).unwrap();
        assert_eq!(first.sha256, second.sha256);
        assert_eq!(
            fs::read(&first.path).unwrap(),
            fs::read(&second.path).unwrap()
        );
        assert_eq!(first.manifest, second.manifest);
        assert_eq!(first.manifest.file_count, 5);
        assert_eq!(first.manifest.created, "2023-11-14T22:13:20Z");
        assert_eq!(first.path, out_a.path().join("shop-r1.tar.gz"));
        assert_eq!(first.size, fs::metadata(&first.path).unwrap().len());

        // Packing again over an existing archive gives the same bytes.
        let again = pack(&input(a.path(), &[], "r1"), out_a.path()).unwrap();
        assert_eq!(again.sha256, first.sha256);
    }

    #[test]
    fn a_one_file_change_changes_the_hashes() {
        let (dir, out) = (tmp(), tmp());
        make_tree(dir.path(), false, 1_000);
        let before = pack(&input(dir.path(), &[], "r1"), out.path()).unwrap();
        fs::write(dir.path().join("app/lib/util.py"), "x = 2\n").unwrap();
        let after = pack(&input(dir.path(), &[], "r2"), out.path()).unwrap();
        assert_ne!(before.sha256, after.sha256);
        assert_ne!(
            before.manifest.content_sha256,
            after.manifest.content_sha256
        );

        // A mode change alone counts too.
        set_mode(&dir.path().join("README"), 0o755);
        let mode_change = pack(&input(dir.path(), &[], "r2"), out.path()).unwrap();
        assert_ne!(
            mode_change.manifest.content_sha256,
            after.manifest.content_sha256
        );
    }

    #[test]
    fn archive_has_normalised_headers_and_opens_cleanly() {
        let (dir, out) = (tmp(), tmp());
        make_tree(dir.path(), false, 1_000);
        let packed = pack(&input(dir.path(), &[], "r1"), out.path()).unwrap();

        let gz = flate2::read::GzDecoder::new(File::open(&packed.path).unwrap());
        let mut archive = tar::Archive::new(gz);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            assert_eq!(h.mtime().unwrap(), TIME as u64);
            assert_eq!(h.username().unwrap(), Some(""));
            let path = entry.path().unwrap().to_str().unwrap().to_owned();
            seen.push((path, h.mode().unwrap()));
        }
        let long = format!(
            "{}/{}/{}/long-name.txt",
            "a".repeat(60),
            "b".repeat(60),
            "c".repeat(60)
        );
        let expected: Vec<(String, u32)> = [
            (MANIFEST_NAME, 0o644),
            ("README", 0o644),
            (&"a".repeat(60), 0o755),
        ]
        .iter()
        .map(|(p, m)| (p.to_string(), *m))
        .collect();
        assert_eq!(seen[..3], expected[..]);
        assert!(seen.contains(&(long, 0o644)));
        assert!(seen.contains(&("app/lib/util.py".into(), 0o644)));
        assert!(seen.contains(&("bin/run".into(), 0o755)));
        assert!(seen.contains(&("run".into(), 0o777)));

        let opened = crate::artifact::open(&packed.path).unwrap();
        assert_eq!(
            opened,
            Artifact {
                tar_size: None,
                ..packed.clone()
            }
        );
        // Re-serialising what was checked gives back the very same bytes.
        let copy_dir = tmp();
        let copy = crate::artifact::open_for_upload(&packed.path, copy_dir.path()).unwrap();
        assert_eq!(copy.upload.sha256, packed.sha256);
        assert_eq!(copy.upload.tar_size, packed.tar_size);
        assert_eq!(
            fs::read(&copy.upload.path).unwrap(),
            fs::read(&packed.path).unwrap()
        );
        let beside = fs::read(out.path().join("shop-r1.manifest.json")).unwrap();
        assert_eq!(Manifest::from_json(&beside).unwrap(), packed.manifest);
        // Only the two final files remain: no temp files left behind.
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 2);
    }

    #[test]
    fn excludes_are_honoured() {
        let (dir, out) = (tmp(), tmp());
        let d = dir.path();
        for path in [
            "keep.txt",
            "debug.log",
            "logs/today.log",
            "node_modules/x/y.js",
            "src/node_modules/z.js",
            "tmp/a",
            "src/tmp",
        ] {
            fs::create_dir_all(d.join(path).parent().unwrap()).unwrap();
            fs::write(d.join(path), "x").unwrap();
        }
        fs::create_dir_all(d.join(".git/objects")).unwrap();
        fs::write(d.join(".git/HEAD"), "ref").unwrap();
        let exclude = [
            "*.log".to_owned(),
            "/node_modules".to_owned(),
            "tmp/".to_owned(),
        ];
        let packed = pack(&input(d, &exclude, "r1"), out.path()).unwrap();

        let gz = flate2::read::GzDecoder::new(File::open(&packed.path).unwrap());
        let mut archive = tar::Archive::new(gz);
        let paths: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            paths,
            [
                MANIFEST_NAME,
                "keep.txt",
                "logs",
                "src",
                "src/node_modules",
                "src/node_modules/z.js",
                "src/tmp"
            ]
        );
        assert_eq!(packed.manifest.file_count, 3);
    }

    #[test]
    fn bad_inputs_are_refused_with_reasons() {
        let (dir, out) = (tmp(), tmp());
        let err = pack(&input(dir.path(), &["!keep".to_owned()], "r1"), out.path()).unwrap_err();
        assert!(matches!(err, ArtifactError::BadExclude { .. }), "{err}");
        let err = pack(&input(dir.path(), &["a[".to_owned()], "r1"), out.path()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the exclude pattern `a[` is invalid"),
            "{err}"
        );
        let err = pack(&input(dir.path(), &[], "../r1"), out.path()).unwrap_err();
        assert!(matches!(err, ArtifactError::BadName { .. }), "{err}");
        let err = pack(&input(dir.path(), &[], "r1"), dir.path()).unwrap_err();
        assert!(matches!(err, ArtifactError::OutDirInside { .. }), "{err}");

        symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
        let err = pack(&input(dir.path(), &[], "r1"), out.path()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("`passwd` is a symlink with an absolute target; fix or exclude it"),
            "{err}"
        );
        fs::remove_file(dir.path().join("passwd")).unwrap();
        fs::write(dir.path().join(MANIFEST_NAME), "{}").unwrap();
        let err = pack(&input(dir.path(), &[], "r1"), out.path()).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
    }

    #[test]
    fn non_utf8_names_are_refused_unless_excluded() {
        use std::os::unix::ffi::OsStrExt;
        let (dir, out) = (tmp(), tmp());
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
        fs::write(dir.path().join(name), "x").unwrap();
        let err = pack(&input(dir.path(), &[], "r1"), out.path()).unwrap_err();
        assert!(matches!(err, ArtifactError::NonUtf8Path { .. }), "{err}");
        pack(&input(dir.path(), &["caf*".to_owned()], "r1"), out.path()).unwrap();
    }

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }
}
