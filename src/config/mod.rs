//! Reading and validating `slipway.toml`.
//!
//! Owns: turning the bytes of a config file into a [`Config`] that later
//! stages may trust. Invariant: every error carries the file, line, column and
//! dotted key path it is about, so a user can go straight to the mistake.
//! Config is read from the commit being deployed (see `source`), never from a
//! working tree, so what is deployed is what was reviewed.
//!
//! Loading happens in two passes. `toml` + `serde_path_to_error` catch syntax
//! and type errors (with the span `toml` reports); then `validate` checks
//! the rules types cannot express, and `toml_edit` (which keeps spans for
//! every key) is used to point at the key a rule is about. When several rules
//! are broken, the one written first in the file is reported.

mod error;
mod locate;
mod pins;
mod schema;
mod validate;
mod wording;

use std::path::Path;

pub use error::{ConfigError, UnknownEnvironment};
pub use pins::{
    BuildSettings, PIN_FILE, Pin, PinViolation, Pins, Reach, SandboxSetting, load_pins, parse_pins,
};
pub use schema::*;
pub use validate::is_plain_path_char;
pub(crate) use validate::is_variable_name;
pub(crate) use wording::closest;

use error::{KeyPath, Segment, line_column};
use locate::Locator;

/// Parse and validate. `file` is only used for error messages (e.g.
/// "slipway.toml" or "<commit>:slipway.toml").
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let config = deserialize(text, file)?;
    let locator = Locator::new(text);
    let first = validate::validate(&config, &locator)
        .into_iter()
        // `min_by_key` keeps the earliest of equal positions, so issues that
        // fall back to the same spot stay in rule order.
        .min_by_key(|issue| locator.offset(&issue.path));
    match first {
        Some(issue) => Err(line_column_error(
            &locator,
            file,
            &issue.path,
            issue.message,
        )),
        None => Ok(config),
    }
}

/// The error for a rule broken at `path`, placed where `path` is written.
fn line_column_error(
    locator: &Locator<'_>,
    file: &Path,
    path: &error::KeyPath,
    message: String,
) -> ConfigError {
    let (line, column) = locator.locate(path);
    ConfigError {
        file: file.to_path_buf(),
        line,
        column,
        key: path.to_string(),
        message,
    }
}

/// The 1-based line where a dotted key (`environments.production.hosts`)
/// is written in `text`, or of its nearest written ancestor.
pub fn line_of_key(text: &str, key: &str) -> usize {
    let mut path = error::KeyPath::root();
    for part in key.split('.').filter(|p| !p.is_empty()) {
        path = path.key(part);
    }
    Locator::new(text).locate(&path).0
}

/// The largest server-side settings file slipway reads (pins, allow-list).
pub const MAX_SETTINGS_FILE: u64 = crate::limits::CONFIG_BYTES;

/// Reads a small settings file through the one capped reader.
fn read_capped(path: &Path) -> Result<String, ConfigError> {
    let fail = |message: String| ConfigError {
        file: path.to_path_buf(),
        line: 1,
        column: 1,
        key: String::new(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    crate::limits::read_capped_text(
        file,
        MAX_SETTINGS_FILE,
        "this settings file",
        "a settings file this big is a mistake",
    )
    .map_err(|e| fail(e.to_string()))
}

impl Config {
    /// The environment a branch deploys to, if any.
    pub fn environment_for_branch(&self, branch: &str) -> Option<(&str, &Environment)> {
        // Validation guarantees at most one match, so the first is the one.
        self.environments
            .iter()
            .find(|(_, env)| env.branch == branch)
            .map(|(name, env)| (name.as_str(), env))
    }

    /// Look up an environment by name, error lists the names that exist.
    pub fn environment(&self, name: &str) -> Result<&Environment, UnknownEnvironment> {
        self.environments
            .get(name)
            .ok_or_else(|| UnknownEnvironment {
                name: name.to_owned(),
                known: self.environments.keys().cloned().collect(),
            })
    }
}

/// The typed pass: syntax, types, unknown keys and durations.
fn deserialize<T: serde::de::DeserializeOwned>(text: &str, file: &Path) -> Result<T, ConfigError> {
    let deserializer =
        toml::Deserializer::parse(text).map_err(|err| syntax_error(text, file, &err))?;
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = key_path(err.path());
        let inner = err.inner();
        // `toml` knows the span of the value at fault; when it does not
        // (rare), the key path still leads to the right place.
        let (line, column) = match inner.span() {
            Some(span) => line_column(text, span.start),
            None => Locator::new(text).locate(&path),
        };
        ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            key: path.to_string(),
            message: wording::plain_message(&clean_message(inner.message())),
        }
    })
}

fn key_path(path: &serde_path_to_error::Path) -> KeyPath {
    let mut out = KeyPath::root();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => out.push(Segment::Index(*index)),
            serde_path_to_error::Segment::Map { key } => out.push(Segment::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => {
                out.push(Segment::Key(variant.clone()));
            }
            // Nothing useful to name; the rest of the path still helps.
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    out
}

/// `toml` messages may end in a newline; trim so `Display` stays one line.
fn clean_message(message: &str) -> String {
    message.trim().to_owned()
}

/// A TOML syntax error. No typed key exists yet, so the key is a best guess
/// from the text: the table header above the error plus the key on its line.
fn syntax_error(text: &str, file: &Path, err: &toml::de::Error) -> ConfigError {
    let offset = err.span().map_or(0, |span| span.start);
    let (line, column) = line_column(text, offset);
    ConfigError {
        file: file.to_path_buf(),
        line,
        column,
        key: nearest_key(text, line),
        message: clean_message(err.message()),
    }
}

/// Best-effort dotted key for 1-based `line`: the last `[table]` header at or
/// before it, joined with the `key =` written on that line, if any. Only used
/// to label syntax errors, so a wrong guess costs little.
fn nearest_key(text: &str, line: usize) -> String {
    let mut table = String::new();
    let mut key = String::new();
    for (i, raw) in text.lines().take(line).enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('[') {
            table = trimmed
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
        }
        if i + 1 == line
            && let Some((lhs, _)) = trimmed.split_once('=')
            && !trimmed.starts_with('[')
        {
            key = lhs.trim().to_owned();
        }
    }
    match (table.is_empty(), key.is_empty()) {
        (_, true) => table,
        (true, false) => key,
        (false, false) => format!("{table}.{key}"),
    }
}

#[cfg(test)]
mod tests;
