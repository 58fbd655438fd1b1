//! Reading the opaque `[notify]` table of `slipway.toml`.
//!
//! Owns [`NotifyConfigError`] and [`Keys`], a cursor over one table that
//! names every key it complains about by its full dotted path
//! (`notify.slack.webhook_env`). Invariants: a key nobody reads is an error
//! (a typo never silently disables a notifier); a credential is only ever
//! read from an environment variable named by a `*_env` key, and an error
//! names the variable, never its value.

use std::time::Duration;

use reqwest::Url;
use thiserror::Error;

/// Why `[notify]` cannot be used. Each variant names the key at fault.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NotifyConfigError {
    /// `hint` is "did you mean `x`?" for a near miss, else the names known.
    #[error("`{key}` is not a notifier slipway knows; {hint}")]
    UnknownNotifier { key: String, hint: String },
    #[error("`{key}` is not a setting slipway knows; {hint}")]
    UnknownKey { key: String, hint: String },
    #[error("`{key}` is missing; {hint}")]
    Missing { key: String, hint: String },
    #[error("`{key}` must be {expected}")]
    WrongType { key: String, expected: String },
    #[error("`{key}` is not valid: {reason}")]
    Invalid { key: String, reason: String },
    #[error(
        "`{key}` names the environment variable {variable}, which is not set (or is empty); export it before running slipway"
    )]
    MissingVariable { key: String, variable: String },
    #[error("the environment variable {variable} (named by `{key}`) does not hold an http(s) URL")]
    BadSecretUrl { key: String, variable: String },
    #[error("notifiers need a tokio runtime to deliver from; this is a bug in slipway")]
    NoRuntime,
}

type Result<T> = std::result::Result<T, NotifyConfigError>;

/// "did you mean `webhook_env`?" when `given` is a near miss of one of
/// `names`, else "`{what}`: every name", so a typo gets one answer, not a list.
pub(crate) fn hint(given: &str, names: &[&str], what: &str) -> String {
    match crate::config::closest(given, names) {
        Some(best) => format!("did you mean `{best}`?"),
        None => format!("{what}: {}", names.join(", ")),
    }
}

/// One table being read, remembering which keys were looked at.
pub struct Keys<'a> {
    prefix: String,
    table: &'a toml::Table,
    allowed: &'static [&'static str],
    env: &'a Env<'a>,
}

/// Where `*_env` variables are looked up: the process environment, or a
/// map in tests.
pub type Env<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl<'a> Keys<'a> {
    /// Reads `table` found at `prefix`; any key outside `allowed` is refused.
    pub fn new(
        prefix: &str,
        table: &'a toml::Table,
        allowed: &'static [&'static str],
        env: &'a Env<'a>,
    ) -> Result<Self> {
        for key in table.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(NotifyConfigError::UnknownKey {
                    key: format!("{prefix}.{key}"),
                    hint: hint(key, allowed, "the settings here are"),
                });
            }
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            table,
            allowed,
            env,
        })
    }

    /// The table of a notifier: `notify.<name>` must be an inline table.
    pub fn notifier(
        name: &str,
        value: &'a toml::Value,
        allowed: &'static [&'static str],
        env: &'a Env<'a>,
    ) -> Result<Self> {
        let key = format!("notify.{name}");
        let table = value
            .as_table()
            .ok_or_else(|| NotifyConfigError::WrongType {
                key: key.clone(),
                expected: format!("a table, like `{name} = {{ … }}`"),
            })?;
        Self::new(&key, table, allowed, env)
    }

    /// The full dotted path of `name`.
    pub fn path(&self, name: &str) -> String {
        debug_assert!(self.allowed.contains(&name), "{name} read but not allowed");
        format!("{}.{name}", self.prefix)
    }

    fn wrong(&self, name: &str, expected: &str) -> NotifyConfigError {
        NotifyConfigError::WrongType {
            key: self.path(name),
            expected: expected.to_owned(),
        }
    }

    pub fn missing(&self, name: &str, hint: &str) -> NotifyConfigError {
        NotifyConfigError::Missing {
            key: self.path(name),
            hint: hint.to_owned(),
        }
    }

    pub fn invalid(&self, name: &str, reason: impl Into<String>) -> NotifyConfigError {
        NotifyConfigError::Invalid {
            key: self.path(name),
            reason: reason.into(),
        }
    }

    pub fn string(&self, name: &str) -> Result<Option<String>> {
        match self.table.get(name) {
            None => Ok(None),
            Some(toml::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(self.wrong(name, "a non-empty string")),
        }
    }

    pub fn required_string(&self, name: &str, hint: &str) -> Result<String> {
        self.string(name)?.ok_or_else(|| self.missing(name, hint))
    }

    pub fn strings(&self, name: &str) -> Result<Option<Vec<String>>> {
        let Some(value) = self.table.get(name) else {
            return Ok(None);
        };
        let expected = "a list of strings, like [\"a\", \"b\"]";
        let list = value.as_array().ok_or_else(|| self.wrong(name, expected))?;
        list.iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| self.wrong(name, expected))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>> {
        match self.table.get(name) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong(name, "true or false")),
        }
    }

    pub fn integer(&self, name: &str) -> Result<Option<i64>> {
        match self.table.get(name) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) => Ok(Some(*i)),
            Some(_) => Err(self.wrong(name, "a whole number")),
        }
    }

    pub fn duration(&self, name: &str) -> Result<Option<Duration>> {
        let Some(text) = self.string(name)? else {
            return Ok(None);
        };
        humantime::parse_duration(&text).map(Some).map_err(|e| {
            self.invalid(
                name,
                format!("`{text}` is not a duration ({e}); write e.g. \"10s\""),
            )
        })
    }

    /// An http(s) base URL written in the config (not a secret).
    pub fn url(&self, name: &str) -> Result<Option<Url>> {
        let Some(text) = self.string(name)? else {
            return Ok(None);
        };
        parse_http_url(&text)
            .map(Some)
            .ok_or_else(|| self.invalid(name, format!("`{text}` is not an http(s) URL")))
    }

    pub fn required_url(&self, name: &str, hint: &str) -> Result<Url> {
        self.url(name)?.ok_or_else(|| self.missing(name, hint))
    }

    /// The value of the environment variable named by `name` (a `*_env`
    /// key), or `None` when the key is absent.
    pub fn secret(&self, name: &str) -> Result<Option<String>> {
        let Some(variable) = self.string(name)? else {
            return Ok(None);
        };
        match (self.env)(&variable) {
            Some(value) if !value.trim().is_empty() => Ok(Some(value.trim().to_owned())),
            _ => Err(NotifyConfigError::MissingVariable {
                key: self.path(name),
                variable,
            }),
        }
    }

    pub fn required_secret(&self, name: &str, example: &str) -> Result<String> {
        self.secret(name)?.ok_or_else(|| {
            self.missing(
                name,
                &format!(
                    "name the environment variable that holds it, e.g. {name} = \"{example}\""
                ),
            )
        })
    }

    /// A secret URL (a chat webhook): read from the environment, checked
    /// to be http(s) without ever printing it.
    pub fn required_secret_url(&self, name: &str, example: &str) -> Result<Url> {
        let value = self.required_secret(name, example)?;
        parse_http_url(&value).ok_or_else(|| NotifyConfigError::BadSecretUrl {
            key: self.path(name),
            variable: self.string(name).ok().flatten().unwrap_or_default(),
        })
    }
}

fn parse_http_url(text: &str) -> Option<Url> {
    let url = Url::parse(text.trim()).ok()?;
    (matches!(url.scheme(), "http" | "https") && url.host_str().is_some()).then_some(url)
}

/// `base` with `path` appended, keeping any path prefix `base` already
/// has (a Grafana served under `/grafana`).
pub fn join(base: &Url, path: &str) -> String {
    format!(
        "{}/{}",
        base.as_str().trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().expect("test TOML")
    }

    #[test]
    fn an_unknown_key_is_named_with_its_path() {
        let t = table("webhok_env = \"X\"");
        let err = Keys::new("notify.slack", &t, &["webhook_env"], &process_env).err();
        assert_eq!(
            err.map(|e| e.to_string()),
            Some("`notify.slack.webhok_env` is not a setting slipway knows; did you mean `webhook_env`?".to_owned())
        );
        let t = table("colour = \"red\"");
        let err = Keys::new("notify.slack", &t, &["webhook_env", "events"], &process_env).err();
        assert_eq!(
            err.map(|e| e.to_string()),
            Some("`notify.slack.colour` is not a setting slipway knows; the settings here are: webhook_env, events".to_owned())
        );
    }

    #[test]
    fn a_missing_variable_names_the_variable() {
        let t = table("token_env = \"SLIPWAY_TEST_SURELY_UNSET_TOKEN\"");
        let keys = Keys::new("notify.matrix", &t, &["token_env"], &process_env).expect("keys");
        let err = keys
            .required_secret("token_env", "MATRIX_TOKEN")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "`notify.matrix.token_env` names the environment variable SLIPWAY_TEST_SURELY_UNSET_TOKEN, which is not set (or is empty); export it before running slipway"
            )
        );
    }

    #[test]
    fn join_keeps_a_path_prefix() {
        let base = Url::parse("http://grafana.internal/grafana/").expect("url");
        assert_eq!(
            join(&base, "/api/annotations"),
            "http://grafana.internal/grafana/api/annotations"
        );
    }
}
