//! Finding where a [`KeyPath`] is written in the source text.
//!
//! Owns: walking a span-preserving `toml_edit` parse of the file along a key
//! path. Invariant: [`Locator::locate`] always answers; when the exact key is
//! absent (e.g. the value came from a default) it points at the nearest
//! ancestor that is written, and at 1:1 when none is.

use std::ops::Range;

use toml_edit::Document;

use super::error::{KeyPath, Segment, line_column};

pub(crate) struct Locator<'a> {
    text: &'a str,
    /// `None` only if `toml_edit` rejects a file `toml` accepted; then every
    /// position falls back to 1:1 instead of failing the load.
    doc: Option<Document<&'a str>>,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self {
            text,
            doc: Document::parse(text).ok(),
        }
    }

    /// Byte offset where `path` (or its nearest written ancestor) starts.
    pub(crate) fn offset(&self, path: &KeyPath) -> usize {
        self.span(path).map_or(0, |span| span.start)
    }

    /// 1-based line and column of `path` (or its nearest written ancestor).
    pub(crate) fn locate(&self, path: &KeyPath) -> (usize, usize) {
        line_column(self.text, self.offset(path))
    }

    fn span(&self, path: &KeyPath) -> Option<Range<usize>> {
        let mut item = self.doc.as_ref()?.as_item();
        let mut best = None;
        for segment in path.segments() {
            let found = match segment {
                // Point at the key itself rather than its value: for a table
                // header or a multi-line array the key is where the reader
                // looks, and for a one-line value it is the same line anyway.
                Segment::Key(key) => item
                    .as_table_like()
                    .and_then(|table| table.get_key_value(key))
                    .map(|(key, value)| (key.span().or_else(|| value.span()), value)),
                Segment::Index(index) => item.get(*index).map(|value| (value.span(), value)),
            };
            // A missing step means the value came from a default; the
            // deepest ancestor found so far is the best answer.
            let Some((span, next)) = found else { break };
            if span.is_some() {
                best = span;
            }
            item = next;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
[app]
name = \"shop\"

[[build.steps]]
name = \"a\"
run = \"x\"

[environments.production]
hosts = [
  \"one\",
  \"two\",
]
health = { url = \"http://x\" }
";

    #[test]
    fn finds_keys_indexes_and_inline_tables() {
        let loc = Locator::new(TEXT);
        let env = KeyPath::root().key("environments").key("production");
        assert_eq!(loc.locate(&KeyPath::root().key("app").key("name")), (2, 1));
        assert_eq!(
            loc.locate(
                &KeyPath::root()
                    .key("build")
                    .key("steps")
                    .index(0)
                    .key("run")
            ),
            (6, 1)
        );
        assert_eq!(loc.locate(&env.key("hosts")), (9, 1));
        assert_eq!(loc.locate(&env.key("hosts").index(1)), (11, 3));
        assert_eq!(loc.locate(&env.key("health").key("url")), (13, 12));
    }

    #[test]
    fn missing_key_falls_back_to_nearest_ancestor() {
        let loc = Locator::new(TEXT);
        let env = KeyPath::root().key("environments").key("production");
        assert_eq!(loc.locate(&env.key("deploy_to")), (8, 15));
        assert_eq!(loc.locate(&KeyPath::root().key("nope")), (1, 1));
    }
}
