//! GitHub Actions conventions: workflow commands, step outputs, the job
//! summary.
//!
//! Invariants: every value is escaped the way the runner expects, so a
//! message can never inject a command of its own; `::add-mask::` is issued
//! for secrets before anything else is printed; outputs use the multi-line
//! delimiter form with a random delimiter.

use std::io::Write as _;
use std::path::PathBuf;

/// The runner's files, present when `GITHUB_ACTIONS=true`.
pub struct Actions {
    output: Option<PathBuf>,
    summary: Option<PathBuf>,
}

impl Actions {
    pub fn detect() -> Option<Self> {
        (std::env::var("GITHUB_ACTIONS").as_deref() == Ok("true")).then(|| Self {
            output: std::env::var_os("GITHUB_OUTPUT").map(PathBuf::from),
            summary: std::env::var_os("GITHUB_STEP_SUMMARY").map(PathBuf::from),
        })
    }

    pub fn mask(&self, value: &str) {
        // The runner masks per line; mask each line of a multi-line secret.
        for line in value.lines().filter(|l| !l.trim().is_empty()) {
            super::output::out_line(&format!("::add-mask::{}", escape_data(line)));
        }
    }

    pub fn group(&self, title: &str) {
        super::output::out_line(&format!("::group::{}", escape_data(title)));
    }

    pub fn endgroup(&self) {
        super::output::out_line("::endgroup::");
    }

    pub fn notice(&self, message: &str) {
        super::output::out_line(&format!("::notice title=slipway::{}", escape_data(message)));
    }

    pub fn warning(&self, message: &str) {
        super::output::out_line(&format!(
            "::warning title=slipway::{}",
            escape_data(message)
        ));
    }

    /// An error annotation, on a file position when known.
    pub fn error(&self, at: Option<(&str, usize, usize)>, title: &str, message: &str) {
        let mut props = format!("title={}", escape_property(title));
        if let Some((file, line, col)) = at {
            props = format!(
                "file={},line={line},col={col},{props}",
                escape_property(file)
            );
        }
        super::output::out_line(&format!("::error {props}::{}", escape_data(message)));
    }

    /// Appends a step output.
    pub fn set_output(&self, name: &str, value: &str) {
        let Some(path) = &self.output else { return };
        let delimiter = format!("slipway_{:x}", rand_u64());
        let text = format!("{name}<<{delimiter}\n{value}\n{delimiter}\n");
        if let Err(e) = append(path, &text) {
            self.warning(&format!("cannot write step output {name}: {e}"));
        }
    }

    /// Appends Markdown to the job summary.
    pub fn summary(&self, markdown: &str) {
        let Some(path) = &self.summary else { return };
        if let Err(e) = append(path, markdown) {
            self.warning(&format!("cannot write the job summary: {e}"));
        }
    }
}

fn append(path: &PathBuf, text: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// A delimiter nobody can predict, so an output value cannot end it early.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Escapes a command's message.
pub fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a command's property value.
pub fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cannot_smuggle_commands() {
        assert_eq!(escape_data("a\n::error::x 100%"), "a%0A::error::x 100%25");
        assert_eq!(escape_property("f,line=1:x"), "f%2Cline=1%3Ax");
    }
}
