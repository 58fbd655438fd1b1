//! Size caps on what slipway reads from outside, and the one reader that
//! enforces them.
//!
//! Owns: the caps (config file, hook stdin, GitHub event file, HTTP answers)
//! and [`read_capped`]. Invariant: input that someone else controls (a pushed
//! commit, git's hook stdin, a file named by the environment, a remote
//! service's answer) is never read into memory without a cap, and going past
//! a cap is an error that names the cap and what to do, never a silent
//! truncation. The caps are generous for real use (README, "Limits"): they
//! exist so that a hostile or broken input costs megabytes, not gigabytes.

use std::io::{self, Read};

/// `slipway.toml` as read from a commit. Real configs are a few KiB.
pub const CONFIG_BYTES: u64 = 1024 * 1024;

/// git's `<old> <new> <ref>` lines on a receive hook's stdin: about 100 bytes
/// per ref, so this is tens of thousands of refs in one push.
pub const HOOK_STDIN_BYTES: u64 = 4 * 1024 * 1024;

/// The GitHub event payload `slipway ci` reads (`GITHUB_EVENT_PATH`). A push
/// event lists at most 2048 commits; even those fit many times over.
pub const EVENT_FILE_BYTES: u64 = 32 * 1024 * 1024;

/// The body of one answer from a notifier's or GitHub's HTTP API. slipway
/// only looks at a word or a small JSON object in it.
pub const HTTP_ANSWER_BYTES: u64 = 1024 * 1024;

/// An input that went past its cap, or could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{what} is larger than {}, slipway's cap for it; {advice}", human(*.limit))]
    TooLarge {
        what: String,
        limit: u64,
        advice: &'static str,
    },
    #[error("cannot read {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// Reads all of `reader`, but never more than `limit` bytes into memory:
/// past that, stops reading and returns [`ReadError::TooLarge`] naming
/// `what` and saying `advice`.
///
/// # Errors
/// When the input is larger than `limit`, or reading fails.
pub fn read_capped(
    reader: impl Read,
    limit: u64,
    what: &str,
    advice: &'static str,
) -> Result<Vec<u8>, ReadError> {
    let mut data = Vec::new();
    // One byte more than the cap tells "exactly at the cap" from "over it".
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|source| ReadError::Io {
            what: what.to_owned(),
            source,
        })?;
    if data.len() as u64 > limit {
        return Err(too_large(what, limit, advice));
    }
    Ok(data)
}

/// [`read_capped`] for text: invalid UTF-8 is an error too.
///
/// # Errors
/// As [`read_capped`], or when the input is not UTF-8.
pub fn read_capped_text(
    reader: impl Read,
    limit: u64,
    what: &str,
    advice: &'static str,
) -> Result<String, ReadError> {
    String::from_utf8(read_capped(reader, limit, what, advice)?).map_err(|e| ReadError::Io {
        what: what.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidData, e.utf8_error()),
    })
}

/// git's ref updates on a receive hook's stdin, capped at
/// [`HOOK_STDIN_BYTES`].
///
/// # Errors
/// When stdin is larger than the cap, unreadable or not UTF-8.
pub fn hook_stdin() -> Result<String, ReadError> {
    read_capped_text(
        io::stdin().lock(),
        HOOK_STDIN_BYTES,
        "the hook's input (git's ref updates on stdin)",
        "push fewer refs at once",
    )
}

/// The error for an input already known (e.g. from a header) to be too large.
pub fn too_large(what: &str, limit: u64, advice: &'static str) -> ReadError {
    ReadError::TooLarge {
        what: what.to_owned(),
        limit,
        advice,
    }
}

/// `1 MiB`, `32 MiB`, `512 KiB`, `100 bytes`: how caps are written to users.
pub fn human(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_up_to_the_cap_and_refuses_one_byte_more() {
        let ok = read_capped(&b"abcd"[..], 4, "the input", "send less").unwrap();
        assert_eq!(ok, b"abcd");
        let err = read_capped(&b"abcde"[..], 4, "the input", "send less").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the input is larger than 4 bytes, slipway's cap for it; send less"
        );
    }

    #[test]
    fn an_endless_input_stops_at_the_cap() {
        let err = read_capped(io::repeat(0), 1024 * 1024, "the stream", "stop it").unwrap_err();
        assert!(matches!(err, ReadError::TooLarge { limit, .. } if limit == 1024 * 1024));
    }

    #[test]
    fn caps_are_written_in_binary_units() {
        assert_eq!(human(CONFIG_BYTES), "1 MiB");
        assert_eq!(human(EVENT_FILE_BYTES), "32 MiB");
        assert_eq!(human(512 * 1024), "512 KiB");
        assert_eq!(human(100), "100 bytes");
    }
}
