//! Plain words for serde's messages about a config file.
//!
//! Owns the rewrite of the two kinds of message a user meets most: an
//! unknown key (serde lists every allowed name; we suggest the closest one,
//! by edit distance, or list the few that exist) and a value of the wrong
//! type (serde says "a sequence"/"a map"; a TOML user thinks in lists and
//! tables). Invariant: a message this module does not recognise is returned
//! unchanged, so nothing is ever lost, only reworded.

/// Names farther than this (in edits) from the misspelt key are not offered:
/// a wild guess is worse than none.
const MAX_SUGGESTION_DISTANCE: usize = 3;

/// Rewrites one serde/toml message into plain words ("field" and "variant"
/// are serde's words; the file has keys and values).
pub(crate) fn plain_message(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field ") {
        return unknown_name("key", rest).unwrap_or_else(|| message.to_owned());
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        return unknown_name("value", rest).unwrap_or_else(|| message.to_owned());
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        return format!("missing key {rest}, which is required here");
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        return invalid_type(rest).unwrap_or_else(|| message.to_owned());
    }
    message.to_owned()
}

/// `` `deploy_too`, expected one of `a`, `b` `` → "unknown key `deploy_too`;
/// did you mean `deploy_to`?".
fn unknown_name(what: &str, rest: &str) -> Option<String> {
    let (given, expected) = rest.split_once(", ")?;
    let given = given.strip_prefix('`')?.strip_suffix('`')?;
    if expected == "there are no fields" {
        return Some(format!(
            "unknown {what} `{given}`: this table takes no keys"
        ));
    }
    let expected = expected.strip_prefix("expected ")?;
    let expected = expected.strip_prefix("one of ").unwrap_or(expected);
    let names: Vec<&str> = expected
        .split(", ")
        .flat_map(|part| part.split(" or "))
        .filter_map(|name| name.strip_prefix('`')?.strip_suffix('`'))
        .collect();
    if names.is_empty() {
        return None;
    }
    Some(match closest(given, &names) {
        Some(best) => format!("unknown {what} `{given}`; did you mean `{best}`?"),
        None if names.len() <= 5 => format!(
            "unknown {what} `{given}`; allowed: {}",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => format!("unknown {what} `{given}`; see the README for the keys this table takes"),
    })
}

/// The allowed name nearest to `given`, if any is near enough. Case is
/// ignored so `Deploy_To` still finds `deploy_to`.
pub(crate) fn closest<'a>(given: &str, names: &[&'a str]) -> Option<&'a str> {
    let given = given.to_lowercase();
    names
        .iter()
        .map(|name| (strsim::damerau_levenshtein(&given, name), *name))
        .filter(|(distance, name)| {
            *distance <= MAX_SUGGESTION_DISTANCE && *distance < name.chars().count()
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name)
}

/// `string "x", expected a sequence` → `string "x", expected a list, e.g. ["a", "b"]`.
fn invalid_type(rest: &str) -> Option<String> {
    let (found, expected) = rest.rsplit_once(", expected ")?;
    Some(format!(
        "found {}, expected {}",
        plain_found(found),
        plain_expected(expected)
    ))
}

fn plain_found(found: &str) -> String {
    match found {
        "sequence" => "a list".to_owned(),
        "map" => "a table".to_owned(),
        other => other
            .strip_prefix("string ")
            .map(|s| format!("the string {s}"))
            .or_else(|| {
                other
                    .strip_prefix("integer ")
                    .map(|n| format!("the number {n}"))
            })
            .or_else(|| {
                other
                    .strip_prefix("boolean ")
                    .map(|b| format!("the boolean {b}"))
            })
            .unwrap_or_else(|| other.to_owned()),
    }
}

fn plain_expected(expected: &str) -> String {
    let plain = match expected {
        "a sequence" => "a list, e.g. [\"a\", \"b\"]",
        "a map" => "a table, e.g. { key = \"value\" }",
        "a string" | "a borrowed string" => "a string in quotes, e.g. \"text\"",
        "a boolean" => "true or false",
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, e.g. 3",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number, e.g. 3",
        "f32" | "f64" => "a number, e.g. 1.5",
        other if other.starts_with("struct ") => "a table, e.g. { key = \"value\" }",
        other => return other.to_owned(),
    };
    plain.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_key() {
        assert_eq!(
            plain_message(
                "unknown field `deploy_too`, expected one of `branch`, `hosts`, `deploy_to`, `deploy_hook`"
            ),
            "unknown key `deploy_too`; did you mean `deploy_to`?"
        );
    }

    #[test]
    fn lists_few_names_when_nothing_is_near() {
        assert_eq!(
            plain_message("unknown field `zzzzzz`, expected `stop` or `start`"),
            "unknown key `zzzzzz`; allowed: `stop`, `start`"
        );
    }

    #[test]
    fn unknown_messages_pass_through() {
        assert_eq!(plain_message("something else"), "something else");
    }
}
