//! The git hooks' settings and secrets: a file of mode 0600 owned by the
//! git user (`<git-dir>/slipway/hook.env` by default), never the hook
//! scripts, which are world-readable and hold no values.
//!
//! Invariants: the file is read only when it is a regular file owned by the
//! user running the hook and unreadable by group and others; its lines are
//! `NAME=VALUE` (value verbatim, nothing is expanded or run); the values
//! reach slipway as environment variables of a fresh exec of itself, so clap
//! flags (`SLIPWAY_*`), secrets and notifier credentials behave exactly as
//! they do when exported by hand. Build steps never see them (see `build`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail, ensure};

use crate::config::is_variable_name;

/// Set on the re-executed process so the file is read once.
const LOADED: &str = "SLIPWAY_HOOK_ENV_LOADED";
/// Points the hooks at an env file other than the default.
pub const FILE_VAR: &str = "SLIPWAY_HOOK_ENV_FILE";
/// A hook env file larger than this is refused, not read.
const MAX_BYTES: u64 = 1 << 20;

/// Where the hooks of `git_dir` read their settings by default.
pub fn default_path(git_dir: &Path) -> PathBuf {
    git_dir.join("slipway").join("hook.env")
}

/// For `slipway hook post-receive|pre-receive`: when a hook env file exists,
/// runs slipway again with its variables added and never returns (unless
/// that fails). Returns `Ok(())` when there is nothing to load.
///
/// # Errors
/// When the file is unsafe (readable by others, not owned by this user),
/// malformed, or slipway cannot be executed again.
pub fn reexec_with_hook_env() -> anyhow::Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let is_hook = args.get(1).is_some_and(|a| a == "hook")
        && args
            .get(2)
            .is_some_and(|a| a == "post-receive" || a == "pre-receive");
    if !is_hook || std::env::var_os(LOADED).is_some() {
        return Ok(());
    }
    let path = match std::env::var_os(FILE_VAR) {
        Some(p) => PathBuf::from(p),
        None => {
            let git_dir =
                std::env::var_os("GIT_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
            let path = default_path(&git_dir);
            if !path.exists() {
                return Ok(());
            }
            path
        }
    };
    let vars = read(&path)?;
    use std::os::unix::process::CommandExt as _;
    let err =
        std::process::Command::new(std::env::current_exe().context("finding the slipway binary")?)
            .args(&args[1..])
            .envs(vars)
            .env(LOADED, "1")
            .exec();
    Err(err).context("running slipway again with the hook env file")
}

/// Reads and checks a hook env file.
///
/// # Errors
/// See [`reexec_with_hook_env`].
pub fn read(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot read the hook env file {}", path.display()))?;
    ensure!(
        meta.file_type().is_file(),
        "the hook env file {} is not a regular file; it must be a file of mode 0600",
        path.display()
    );
    let me = std::fs::metadata("/proc/self").map_or(meta.uid(), |m| m.uid());
    ensure!(
        meta.uid() == me,
        "the hook env file {} belongs to uid {}, not to the user running the hook (uid {me}); chown it to the git user",
        path.display(),
        meta.uid()
    );
    let mode = meta.permissions().mode() & 0o777;
    ensure!(
        mode & 0o077 == 0,
        "the hook env file {} has mode {mode:04o}, so other users can read its secrets; run `chmod 600 {}`",
        path.display(),
        path.display()
    );
    ensure!(
        meta.len() <= MAX_BYTES,
        "the hook env file {} is larger than {MAX_BYTES} bytes; it should hold a few settings",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the hook env file {}", path.display()))?;
    parse(&text).with_context(|| format!("in the hook env file {}", path.display()))
}

fn parse(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            bail!("line {}: not NAME=VALUE", i + 1);
        };
        ensure!(
            is_variable_name(name),
            "line {}: `{name}` is not a variable name",
            i + 1
        );
        ensure!(
            !value.contains('\0'),
            "line {}: the value contains NUL",
            i + 1
        );
        vars.insert(name.to_owned(), value.to_owned());
    }
    Ok(vars)
}

/// Adds `pairs` to the env file at `path` (creating it with mode 0600;
/// an existing file must already be private).
///
/// # Errors
/// When a pair is not `NAME=VALUE` or the file cannot be written safely.
pub fn write(path: &Path, pairs: &[String]) -> anyhow::Result<()> {
    let mut vars = if path.exists() {
        read(path)?
    } else {
        BTreeMap::new()
    };
    for pair in pairs {
        let (name, value) = pair
            .split_once('=')
            .filter(|(n, v)| is_variable_name(n) && !v.contains(['\n', '\r', '\0']))
            .with_context(|| {
                format!(
                    "--setenv {}: not NAME=VALUE on one line",
                    pair.split_once('=').map_or(pair.as_str(), |(n, _)| n)
                )
            })?;
        vars.insert(name.to_owned(), value.to_owned());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Written under a fresh private name and renamed, so the file is never
    // readable by others, not even for a moment, and never half written.
    let tmp = path.with_extension("env.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut text = String::from(
        "# slipway hook settings and secrets, NAME=VALUE per line, read by the git hooks.\n\
         # Keep this file mode 0600, owned by the git user. Values are taken verbatim.\n",
    );
    for (name, value) in &vars {
        text.push_str(&format!("{name}={value}\n"));
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_are_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slipway/hook.env");
        write(&path, &["A=1".into(), "SECRET=x y=z $(no)".into()]).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let vars = read(&path).unwrap();
        assert_eq!(vars["SECRET"], "x y=z $(no)");
        write(&path, &["A=2".into()]).unwrap();
        assert_eq!(read(&path).unwrap()["A"], "2");
        assert_eq!(read(&path).unwrap().len(), 2);
    }

    #[test]
    fn a_readable_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook.env");
        std::fs::write(&path, "A=1\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn bad_lines_are_refused() {
        assert!(parse("NOEQUALS\n").is_err());
        assert!(parse("1X=2\n").is_err());
        assert!(write(Path::new("/nonexistent/x"), &["A=b\nB=c".into()]).is_err());
        assert_eq!(parse("# c\n\nA=b\r\n").unwrap()["A"], "b");
    }
}
