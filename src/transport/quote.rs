//! The one place remote shell commands are built.
//!
//! Every remote step is a POSIX `sh` script assembled here from argument
//! vectors, so a branch name, path or value from config can only ever be a
//! single quoted word. Invariant: the only text that reaches a shell unquoted
//! is `&'static str` written in slipway's own source; user-written commands
//! (deploy hooks, worker commands) are themselves passed as one quoted
//! argument to `sh -c`, so they cannot break the script around them.

use std::borrow::Cow;
use std::fmt;

/// Exports the release's env file, then runs `$1` as the user's command.
const LOAD_ENV_THEN_RUN: &str =
    "if [ -f ./.slipway.env ]; then set -a; . ./.slipway.env; set +a; fi; exec sh -c \"$1\"";

/// A value that cannot be given to a shell at all: POSIX shells cannot
/// represent a NUL byte in an argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{}` contains a NUL byte, which no shell command can carry", .0.escape_debug())]
pub struct Unquotable(pub String);

/// Quotes one word for POSIX `sh`.
///
/// # Errors
/// When the word contains a NUL byte.
pub fn quote(word: &str) -> Result<Cow<'_, str>, Unquotable> {
    shlex::try_quote(word).map_err(|_| Unquotable(word.to_owned()))
}

/// A shell script under construction. Lines run under `set -eu`, so the first
/// failing command fails the whole script with its status: a failing line in
/// the middle can never be reported as success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    text: String,
}

impl Default for Script {
    fn default() -> Self {
        Self::new()
    }
}

impl Script {
    pub fn new() -> Self {
        Self {
            text: String::from("set -eu\n"),
        }
    }

    /// Appends one command line from an argument vector; every argument is quoted.
    ///
    /// # Errors
    /// When an argument contains a NUL byte.
    pub fn cmd<I, S>(mut self, argv: I) -> Result<Self, Unquotable>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let line = join(argv)?;
        self.text.push_str(&line);
        self.text.push('\n');
        Ok(self)
    }

    /// Appends shell text written in slipway's source. Taking only `'static`
    /// strings keeps runtime values out of this path.
    #[must_use]
    pub fn raw(mut self, fixed: &'static str) -> Self {
        self.text.push_str(fixed);
        self.text.push('\n');
        self
    }

    /// Appends a fixed shell fragment followed by quoted arguments, e.g.
    /// `raw_with("test -L", [path])` or a redirection target.
    ///
    /// # Errors
    /// When an argument contains a NUL byte.
    pub fn raw_with<I, S>(mut self, fixed: &'static str, args: I) -> Result<Self, Unquotable>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.text.push_str(fixed);
        for arg in args {
            self.text.push(' ');
            self.text.push_str(&quote(arg.as_ref())?);
        }
        self.text.push('\n');
        Ok(self)
    }

    /// Appends one line from a fixed template whose `{}` placeholders are
    /// filled, in order, with quoted arguments:
    /// `line("if [ -e {} ]; then exit 3; fi", [path])`.
    ///
    /// # Errors
    /// When an argument contains a NUL byte.
    ///
    /// # Panics
    /// When the number of placeholders and arguments differ: a bug in slipway.
    pub fn line<const N: usize>(
        mut self,
        template: &'static str,
        args: [&str; N],
    ) -> Result<Self, Unquotable> {
        let pieces: Vec<&str> = template.split("{}").collect();
        assert_eq!(pieces.len(), N + 1, "placeholders in {template:?}");
        for (piece, arg) in pieces.iter().zip(args) {
            self.text.push_str(piece);
            self.text.push_str(&quote(arg)?);
        }
        self.text.push_str(pieces[N]);
        self.text.push('\n');
        Ok(self)
    }

    /// Appends another script's lines (without its `set -eu` header).
    #[must_use]
    pub fn then(mut self, other: &Script) -> Self {
        self.text
            .push_str(other.text.strip_prefix("set -eu\n").unwrap_or(&other.text));
        self
    }

    /// Appends a user-written shell command (from config), run by its own
    /// `sh -c` in `dir` with `env` set, so it cannot alter this script. When
    /// `dir` holds a `.slipway.env` file, its variables are exported first.
    ///
    /// # Errors
    /// When the command, dir or an env value contains a NUL byte.
    pub fn user_command(
        self,
        dir: &str,
        env: &[(String, String)],
        command: &str,
    ) -> Result<Self, Unquotable> {
        let argv = user_argv(env, command);
        // A subshell, so the `cd` does not leak into later lines.
        let line = format!("(cd {} && {})\n", quote(dir)?, join(argv)?);
        let mut this = self;
        this.text.push_str(&line);
        Ok(this)
    }

    /// Removes `paths` (`rm -rf`) whenever the script ends: success, a
    /// failed line, `exit`, or HUP/INT/TERM/PIPE (a dropped connection or a
    /// stopped command). For scratch files that must never outlive the
    /// script: what the script renamed into place is no longer under these
    /// names, so success removes nothing it made.
    ///
    /// # Errors
    /// When a path contains a NUL byte.
    pub fn remove_on_exit(mut self, paths: &[&str]) -> Result<Self, Unquotable> {
        let body = format!("rm -rf -- {}", join(paths)?);
        self.text.push_str(&format!(
            "trap {} EXIT\ntrap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 141' PIPE; trap 'exit 143' TERM\n",
            quote(&body)?
        ));
        Ok(self)
    }

    /// Wraps text assembled from other scripts' output. Only for layout
    /// code that nests scripts (an `if` around a built block); the parts
    /// must themselves come from this builder.
    pub(crate) fn from_trusted(text: String) -> Self {
        Self { text }
    }

    /// The script's text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The argument vector that runs a user-written shell command (from
/// config) by its own `sh -c`, with `env` set and, when the directory it
/// runs in holds a `.slipway.env` file, that file's variables exported
/// first: `env K=V… sh -c <load env, then run $1> slipway <command>`. Each
/// element is one word for [`join`]; the command is never parsed by the
/// script around it.
pub fn user_argv(env: &[(String, String)], command: &str) -> Vec<String> {
    let mut argv: Vec<String> = vec!["env".into()];
    argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    argv.extend([
        "sh".into(),
        "-c".into(),
        LOAD_ENV_THEN_RUN.into(),
        "slipway".into(),
        command.into(),
    ]);
    argv
}

/// Joins arguments into one quoted command line.
///
/// # Errors
/// When an argument contains a NUL byte.
pub fn join<I, S>(argv: I) -> Result<String, Unquotable>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut line = String::new();
    for (i, arg) in argv.into_iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        line.push_str(&quote(arg.as_ref())?);
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Runs a script with the real `sh` and returns its stdout, so the tests
    /// check what a shell does with the quoting, not what we hope it does.
    fn sh(script: &Script) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script.as_str())
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "script failed: {script}");
        String::from_utf8(out.stdout).expect("utf-8")
    }

    const HOSTILE: &[&str] = &[
        "$(touch pwned)",
        "`touch pwned`",
        "a b\tc\nd",
        "it's \"quoted\"",
        "; rm -rf / #",
        "-n",
        "*",
        "~root",
        "$HOME ${IFS}",
        "back\\slash",
        "ünïcödé ✓",
        "",
        "'",
        "''\"\"",
    ];

    #[test]
    fn hostile_words_survive_as_one_argument_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        for word in HOSTILE {
            let script = Script::new()
                .raw_with("cd", [dir.path().to_str().expect("utf-8")])
                .and_then(|s| s.cmd(["printf", "%s|", word]))
                .expect("quotable");
            assert_eq!(sh(&script), format!("{word}|"), "word {word:?}");
        }
        assert!(!dir.path().join("pwned").exists(), "nothing executed");
    }

    #[test]
    fn nul_bytes_are_refused_not_truncated() {
        assert!(Script::new().cmd(["echo", "a\0b"]).is_err());
        assert!(quote("x\0").is_err());
    }

    #[test]
    fn a_failing_line_fails_the_script() {
        let script = Script::new().raw("false").raw("echo reached");
        let out = Command::new("sh")
            .arg("-c")
            .arg(script.as_str())
            .output()
            .expect("sh runs");
        assert!(!out.status.success());
        assert!(out.stdout.is_empty());
    }

    #[test]
    fn templates_quote_every_placeholder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_str().expect("utf-8");
        for word in HOSTILE {
            let script = Script::new()
                .line("cd {} && printf '%s|' {}", [d, word])
                .expect("quotable");
            assert_eq!(sh(&script), format!("{word}|"), "word {word:?}");
        }
        assert!(!dir.path().join("pwned").exists());
    }

    #[test]
    fn user_commands_see_the_env_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(".slipway.env"), "SECRET='s3 cr$t'\n").unwrap();
        let d = dir.path().to_str().expect("utf-8");
        let script = Script::new()
            .user_command(d, &[], "printf '%s' \"$SECRET\"")
            .expect("quotable");
        assert_eq!(sh(&script), "s3 cr$t");
    }

    #[test]
    fn user_commands_run_in_their_own_shell_with_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_str().expect("utf-8");
        let env = vec![("GREETING".to_owned(), "hi $(touch pwned)".to_owned())];
        let script = Script::new()
            .user_command(d, &env, "printf '%s' \"$GREETING\"; exit 0")
            .expect("quotable")
            .raw("printf ' after'");
        assert_eq!(sh(&script), "hi $(touch pwned) after");
        assert!(!dir.path().join("pwned").exists());
    }
}
