//! The manifest that describes an archive, and the content hash it carries.
//!
//! Two copies exist: one inside the archive (its first entry, without
//! `sha256`, since a file cannot contain its own hash) and one written beside
//! the archive with `sha256` set.
//!
//! # `content_sha256`
//!
//! The sha256 of this byte stream, built from every entry after the manifest,
//! in archive order:
//!
//! ```text
//! kind      1 byte     b'd' directory, b'f' regular file, b'l' symlink
//! mode      4 bytes    big-endian, permission bits (& 0o7777)
//! path_len  8 bytes    big-endian
//! path      path_len   UTF-8, relative, `/`-separated, no `./` or trailing `/`
//! data_len  8 bytes    big-endian
//! data      data_len   file contents, symlink target, nothing for directories
//! ```
//!
//! The length prefixes make the encoding unambiguous. Because it hashes what
//! the entries say rather than the compressed bytes, it identifies the
//! release content independently of the gzip encoder.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::EntryKind;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub app: String,
    pub commit: String,
    pub branch: String,
    pub release_id: String,
    /// Always `"tar.gz"`.
    pub format: String,
    /// Regular files plus symlinks in the archive, not counting the manifest.
    pub file_count: u64,
    /// See the module documentation.
    pub content_sha256: String,
    /// Entries after the manifest (directories, files and symlinks).
    pub entry_count: u64,
    /// Bytes of regular-file content after the manifest: what unpacking
    /// writes. The verifier refuses an archive whose entries declare more,
    /// and bounds the decompressed stream by it, so a small archive cannot
    /// unpack into an unbounded one.
    pub unpacked_size: u64,
    /// RFC 3339 UTC rendering of the source time.
    pub created: String,
    /// sha256 of the `.tar.gz` file; only in the manifest beside the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Manifest {
    /// Pretty JSON with a final newline, as written to disk.
    pub fn to_json(&self) -> String {
        let mut json = serde_json::to_string_pretty(self).expect("a manifest always serializes");
        json.push('\n');
        json
    }

    pub fn from_json(bytes: &[u8]) -> Result<Manifest, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// `unix_seconds` as RFC 3339 UTC, e.g. `2023-11-14T22:13:20Z`; `None` when
/// out of range.
pub(crate) fn rfc3339(unix_seconds: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// Builds `content_sha256` incrementally, so file contents can be streamed.
pub(crate) struct ContentHasher {
    sha: Sha256,
    file_count: u64,
    entry_count: u64,
    unpacked_size: u64,
}

impl ContentHasher {
    pub(crate) fn new() -> Self {
        ContentHasher {
            sha: Sha256::new(),
            file_count: 0,
            entry_count: 0,
            unpacked_size: 0,
        }
    }

    /// Starts an entry; exactly `data_len` bytes must follow via
    /// [`ContentHasher::data`] (or the entry's `Write` impl).
    pub(crate) fn entry(&mut self, kind: EntryKind, mode: u32, path: &str, data_len: u64) {
        let tag = match kind {
            EntryKind::Dir => b'd',
            EntryKind::File => b'f',
            EntryKind::Symlink => b'l',
        };
        if kind != EntryKind::Dir {
            self.file_count += 1;
        }
        if kind == EntryKind::File {
            self.unpacked_size = self.unpacked_size.saturating_add(data_len);
        }
        self.entry_count += 1;
        self.sha.update([tag]);
        self.sha.update((mode & 0o7777).to_be_bytes());
        self.sha.update((path.len() as u64).to_be_bytes());
        self.sha.update(path.as_bytes());
        self.sha.update(data_len.to_be_bytes());
    }

    pub(crate) fn data(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
    }

    /// Hex `content_sha256` and the `file_count` seen.
    pub(crate) fn finish(self) -> (String, u64) {
        self.finish_all().content()
    }

    /// Everything the manifest says about the entries seen.
    pub(crate) fn finish_all(self) -> ContentSummary {
        ContentSummary {
            content_sha256: hex::encode(self.sha.finalize()),
            file_count: self.file_count,
            entry_count: self.entry_count,
            unpacked_size: self.unpacked_size,
        }
    }
}

/// The manifest fields that describe the entries, as counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContentSummary {
    pub content_sha256: String,
    pub file_count: u64,
    pub entry_count: u64,
    pub unpacked_size: u64,
}

impl ContentSummary {
    fn content(self) -> (String, u64) {
        (self.content_sha256, self.file_count)
    }
}

impl std::io::Write for ContentHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.data(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            app: "shop".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            branch: "production".into(),
            release_id: "20231114-221320-0123456".into(),
            format: "tar.gz".into(),
            file_count: 3,
            content_sha256: "ab".repeat(32),
            entry_count: 4,
            unpacked_size: 1234,
            created: "2023-11-14T22:13:20Z".into(),
            sha256: None,
        }
    }

    #[test]
    fn round_trips_through_json() {
        let inner = sample();
        let json = inner.to_json();
        assert!(!json.contains("\"sha256\""), "{json}");
        assert_eq!(Manifest::from_json(json.as_bytes()).unwrap(), inner);

        let beside = Manifest {
            sha256: Some("cd".repeat(32)),
            ..sample()
        };
        let json = beside.to_json();
        assert!(json.contains("\"sha256\""), "{json}");
        assert_eq!(Manifest::from_json(json.as_bytes()).unwrap(), beside);
    }

    #[test]
    fn formats_rfc3339_utc() {
        assert_eq!(rfc3339(1_700_000_000).unwrap(), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(i64::MAX), None);
    }

    #[test]
    fn content_hash_is_unambiguous() {
        let hash = |entries: &[(&str, &[u8])]| {
            let mut h = ContentHasher::new();
            for (path, data) in entries {
                h.entry(EntryKind::File, 0o644, path, data.len() as u64);
                h.data(data);
            }
            h.finish()
        };
        assert_ne!(hash(&[("ab", b"c")]), hash(&[("a", b"bc")]));
        assert_ne!(
            hash(&[("a", b"b"), ("c", b"")]),
            hash(&[("a", b""), ("bc", b"")])
        );
        assert_eq!(hash(&[("a", b"b")]).1, 1);
    }
}
