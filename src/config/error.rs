//! Error types of the config module and the helpers that give them a place.
//!
//! Owns: [`ConfigError`] (one mistake, pinned to file, line, column and
//! dotted key), [`UnknownEnvironment`], the [`KeyPath`] used to name keys, and
//! the byte-offset → line/column conversion. Invariant: lines and columns are
//! 1-based and columns count characters, not bytes, so they match what an
//! editor shows.

use std::fmt;
use std::path::PathBuf;

/// One mistake in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: `{key}`: {message}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the offending key, e.g. `environments.production.hosts[1]`;
    /// empty when a syntax error could not be tied to any key.
    pub key: String,
    pub message: String,
}

/// An environment name that the config does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no environment `{name}` in slipway.toml; defined: {}", known_list(.known))]
pub struct UnknownEnvironment {
    pub name: String,
    /// The names that do exist, sorted, so the user can pick one.
    pub known: Vec<String>,
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "none".to_owned()
    } else {
        known.join(", ")
    }
}

/// One step of a [`KeyPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

/// Where a value lives in the document, e.g. `build.steps[0].run`.
///
/// Kept as segments (not a string) so the same path can both be shown to the
/// user and walked through the `toml_edit` tree to find a span.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(Vec<Segment>);

impl KeyPath {
    pub(crate) fn root() -> Self {
        Self::default()
    }

    /// A copy of `self` extended by a key.
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.to_owned()));
        next
    }

    /// A copy of `self` extended by an array index.
    pub(crate) fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Index(index));
        next
    }

    pub(crate) fn push(&mut self, segment: Segment) {
        self.0.push(segment);
    }

    pub(crate) fn segments(&self) -> &[Segment] {
        &self.0
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    write_key(f, key)?;
                }
            }
        }
        Ok(())
    }
}

/// Writes a key the way TOML would need it: bare when possible, quoted
/// otherwise, so `a.b` as one key is not mistaken for two.
fn write_key(f: &mut fmt::Formatter<'_>, key: &str) -> fmt::Result {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        f.write_str(key)
    } else {
        write!(f, "{key:?}")
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
///
/// Offsets past the end or inside a multi-byte character are clamped rather
/// than rejected: a slightly-off position is better than none.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_is_one_based_and_counts_chars() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        // `=` after a two-byte character is the 4th character of line 2.
        assert_eq!(line_column(text, text.find("= 2").unwrap_or(0)), (2, 4));
        assert_eq!(line_column(text, 10_000), (3, 1));
    }

    #[test]
    fn key_path_display() {
        let path = KeyPath::root()
            .key("build")
            .key("steps")
            .index(0)
            .key("run");
        assert_eq!(path.to_string(), "build.steps[0].run");
        assert_eq!(
            KeyPath::root().key("env").key("a b").to_string(),
            "env.\"a b\""
        );
    }

    #[test]
    fn unknown_environment_display() {
        let err = UnknownEnvironment {
            name: "prod".into(),
            known: vec!["production".into(), "staging".into()],
        };
        assert_eq!(
            err.to_string(),
            "no environment `prod` in slipway.toml; defined: production, staging"
        );
    }
}
