//! Hostile release archives written byte by byte: 512-byte headers whose
//! every field (magic, version, prefix, type, mode, checksum) the test sets,
//! PAX and GNU long-link records, extra gzip members, and gzip bombs. The
//! `tar` crate's builder refuses most of these, which is why they are
//! written by hand.
//!
//! [`manifest`] computes a manifest the way slipway documents it
//! (`src/artifact/manifest.rs`) for the entries a *checker* sees, so an
//! archive passes every check that reads it one way while GNU tar reads it
//! another.

use std::io::Write;

use flate2::{Compress, Compression, Crc, FlushCompress};
use sha2::{Digest, Sha256};

/// One tar header, with the fields an attack varies.
#[derive(Clone)]
pub struct Header {
    pub name: Vec<u8>,
    pub mode: u32,
    pub size: u64,
    pub typeflag: u8,
    pub linkname: Vec<u8>,
    /// 6 bytes at offset 257.
    pub magic: [u8; 6],
    /// 2 bytes at offset 263.
    pub version: [u8; 2],
    /// The ustar prefix (offset 345, up to 155 bytes).
    pub prefix: Vec<u8>,
    pub devmajor: u32,
    pub devminor: u32,
}

impl Header {
    /// A POSIX ustar header (`ustar\0` `00`) for a regular file.
    pub fn new(name: &str, typeflag: u8, mode: u32) -> Self {
        Self {
            name: name.as_bytes().to_vec(),
            mode,
            size: 0,
            typeflag,
            linkname: Vec::new(),
            magic: *b"ustar\0",
            version: *b"00",
            prefix: Vec::new(),
            devmajor: 0,
            devminor: 0,
        }
    }

    /// The 512 bytes, checksum included.
    pub fn bytes(&self) -> [u8; 512] {
        let mut h = [0u8; 512];
        put(&mut h, 0, 100, &self.name);
        put(&mut h, 100, 8, format!("{:07o}\0", self.mode).as_bytes());
        put(&mut h, 108, 8, b"0000000\0");
        put(&mut h, 116, 8, b"0000000\0");
        put(&mut h, 124, 12, format!("{:011o}\0", self.size).as_bytes());
        put(&mut h, 136, 12, b"15137553400\0");
        h[156] = self.typeflag;
        put(&mut h, 157, 100, &self.linkname);
        put(&mut h, 257, 6, &self.magic);
        put(&mut h, 263, 2, &self.version);
        put(
            &mut h,
            329,
            8,
            format!("{:07o}\0", self.devmajor).as_bytes(),
        );
        put(
            &mut h,
            337,
            8,
            format!("{:07o}\0", self.devminor).as_bytes(),
        );
        put(&mut h, 345, 155, &self.prefix);
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }
}

fn put(h: &mut [u8; 512], at: usize, len: usize, value: &[u8]) {
    assert!(value.len() <= len, "field at {at} holds {len} bytes");
    h[at..at + value.len()].copy_from_slice(value);
}

/// An uncompressed tar stream under construction.
#[derive(Default)]
pub struct Tar {
    pub bytes: Vec<u8>,
}

impl Tar {
    pub fn new() -> Self {
        Self::default()
    }

    /// A header and its data, padded to 512.
    pub fn raw(&mut self, header: &Header, data: &[u8]) -> &mut Self {
        let mut header = header.clone();
        header.size = data.len() as u64;
        self.bytes.extend_from_slice(&header.bytes());
        self.bytes.extend_from_slice(data);
        self.bytes.resize(self.bytes.len().div_ceil(512) * 512, 0);
        self
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.raw(&Header::new(name, b'0', mode), data)
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(&Header::new(name, b'5', 0o755), b"")
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = Header::new(name, b'2', 0o777);
        h.linkname = target.as_bytes().to_vec();
        self.raw(&h, b"")
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = Header::new(name, b'1', 0o644);
        h.linkname = target.as_bytes().to_vec();
        self.raw(&h, b"")
    }

    pub fn fifo(&mut self, name: &str) -> &mut Self {
        self.raw(&Header::new(name, b'6', 0o644), b"")
    }

    /// A character device (`1,3` is /dev/null's numbers).
    pub fn char_device(&mut self, name: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = Header::new(name, b'3', 0o666);
        h.devmajor = major;
        h.devminor = minor;
        self.raw(&h, b"")
    }

    /// A PAX extended header (`x`) applying to the next entry.
    pub fn pax(&mut self, records: &[(&str, &str)]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            let body = format!(" {key}={value}\n");
            // The length prefix counts itself.
            let mut len = body.len() + 1;
            while format!("{len}{body}").len() != len {
                len += 1;
            }
            data.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        self.raw(&Header::new("././@PaxHeader", b'x', 0o644), &data)
    }

    /// A GNU long-link record (`K`) applying to the next entry.
    pub fn gnu_long_link(&mut self, target: &str) -> &mut Self {
        let mut h = Header::new("././@LongLink", b'K', 0o644);
        h.magic = *b"ustar ";
        h.version = *b" \0";
        let mut data = target.as_bytes().to_vec();
        data.push(0);
        self.raw(&h, &data)
    }

    /// The two zero blocks that end an archive.
    pub fn end(&mut self) -> &mut Self {
        self.bytes.extend_from_slice(&[0u8; 1024]);
        self
    }

    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }
}

/// One gzip member holding `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

/// What a checker sees of one entry, for [`manifest`].
pub enum Seen<'a> {
    Dir(&'a str),
    File(&'a str, u32, &'a [u8]),
    Symlink(&'a str, &'a str),
}

/// The manifest JSON slipway would write for `entries` (as a checker that
/// reads the archive one way sees them), claiming `commit` of app `shop`.
pub fn manifest(commit: &str, entries: &[Seen<'_>]) -> String {
    let mut sha = Sha256::new();
    let (mut files, mut size) = (0u64, 0u64);
    for entry in entries {
        let (tag, mode, path, data): (u8, u32, &str, &[u8]) = match entry {
            Seen::Dir(p) => (b'd', 0o755, p, b""),
            Seen::File(p, m, d) => {
                files += 1;
                size += d.len() as u64;
                (b'f', *m, p, d)
            }
            Seen::Symlink(p, t) => {
                files += 1;
                (b'l', 0o777, p, t.as_bytes())
            }
        };
        sha.update([tag]);
        sha.update(mode.to_be_bytes());
        sha.update((path.len() as u64).to_be_bytes());
        sha.update(path.as_bytes());
        sha.update((data.len() as u64).to_be_bytes());
        sha.update(data);
    }
    serde_json::json!({
        "app": "shop",
        "commit": commit,
        "branch": "production",
        "release_id": "x",
        "format": "tar.gz",
        "file_count": files,
        "content_sha256": hex::encode(sha.finalize()),
        "entry_count": entries.len(),
        "unpacked_size": size,
        "created": "2026-01-01T00:00:00Z",
    })
    .to_string()
}

/// A single gzip member that inflates to `prefix` followed by `zero_mib`
/// MiB of zeros, a few MiB on disk for gigabytes inflated: one deflate
/// block of a MiB of zeros, which only refers back to zeros, is repeated.
/// CRC and length are correct, so every gzip reader unpacks all of it.
pub fn gzip_bomb(prefix: &[u8], zero_mib: u64) -> Vec<u8> {
    const MIB: usize = 1 << 20;
    let zeros = vec![0u8; MIB];
    let mut deflate = Compress::new(Compression::best(), false);
    let mut first = prefix.to_vec();
    first.extend_from_slice(&zeros);
    let head = deflate_chunk(&mut deflate, &first, FlushCompress::Sync);
    let repeat = deflate_chunk(&mut deflate, &zeros, FlushCompress::Sync);
    let tail = deflate_chunk(&mut deflate, &[], FlushCompress::Finish);

    let mut crc = Crc::new();
    crc.update(&first);
    let mut one_mib = Crc::new();
    one_mib.update(&zeros);
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    out.extend_from_slice(&head);
    for _ in 1..zero_mib {
        out.extend_from_slice(&repeat);
        crc.combine(&one_mib);
    }
    out.extend_from_slice(&tail);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&crc.amount().to_le_bytes());
    out
}

fn deflate_chunk(deflate: &mut Compress, input: &[u8], flush: FlushCompress) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 64 + 4096);
    let start_in = deflate.total_in();
    loop {
        let consumed = (deflate.total_in() - start_in) as usize;
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.capacity());
        }
        deflate
            .compress_vec(&input[consumed..], &mut out, flush)
            .expect("deflate");
        // Done once all input is in and the flush fit in the space left
        // (another call would only add another empty flush block).
        let all_in = (deflate.total_in() - start_in) as usize == input.len();
        if all_in && out.len() < out.capacity() {
            return out;
        }
    }
}
