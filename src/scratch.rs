//! slipway's temporary directories on the runner (the machine running
//! slipway): naming them, and sweeping what killed runs left.
//!
//! Every temporary directory slipway makes (build exports, the build's
//! HOME, the git object overlay, packed and re-serialised artifacts, the
//! OpenSSH control directory) is `<temp dir>/slipway-run-<pid>-<what>-<random>`,
//! held by a [`tempfile::TempDir`] guard, so every exit path that unwinds
//! (success, an error, a signal the engine turns into an orderly exit)
//! removes it.
//!
//! A run killed outright (SIGKILL, the OOM killer, a power cut) removes
//! nothing; the next run's [`sweep`] does. Invariant: a directory is swept
//! only when its pid is not a live process here AND it has not been
//! modified for [`STALE_AFTER`]. The age is there because a pid that looks
//! dead may be a live run in another pid namespace (a container) sharing
//! this temp dir: such a run is safe for its first hour, so runners that
//! share a temp dir across containers and run longer should each get a
//! `TMPDIR` of their own. Nothing whose name does not follow the pattern is
//! ever touched.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What every slipway temporary directory's name starts with.
pub const PREFIX: &str = "slipway-run-";

/// How long a dead run's directory is left before it is swept.
pub const STALE_AFTER: Duration = Duration::from_secs(60 * 60);

/// A new private temporary directory for `what` (e.g. "build") in the
/// temp dir, removed when the guard drops.
///
/// # Errors
/// When it cannot be created.
pub fn dir(what: &str) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&prefix(what))
        .rand_bytes(RANDOM_LEN)
        .tempdir()
}

/// [`dir`] under `base` instead of the temp dir, with `mode`.
///
/// # Errors
/// When it cannot be created.
pub fn dir_in(what: &str, base: &Path, mode: u32) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&prefix(what))
        .rand_bytes(RANDOM_LEN)
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .tempdir_in(base)
}

/// `slipway-run-<pid>-<what>-`: the random part follows.
fn prefix(what: &str) -> String {
    format!("{PREFIX}{}-{what}-", std::process::id())
}

/// Random characters after the prefix (tempfile's default).
const RANDOM_LEN: usize = 6;

/// How long the name of a directory [`dir`] makes for `what` is (for
/// paths that must stay short, like socket paths).
pub fn name_len(what: &str) -> usize {
    prefix(what).len() + RANDOM_LEN
}

/// Where slipway puts temporary directories: the temp dir, and `/tmp`
/// (the OpenSSH control directory falls back to it when `$TMPDIR` is too
/// long for a socket path).
pub fn bases() -> Vec<PathBuf> {
    let mut bases = vec![std::env::temp_dir()];
    let tmp = PathBuf::from("/tmp");
    if !bases.contains(&tmp) {
        bases.push(tmp);
    }
    bases
}

/// Removes, from each of `bases`, the directories of runs that are gone
/// (see the module's invariant). Returns what was removed. Failures are
/// ignored: sweeping is housekeeping, never a reason to fail a run.
pub fn sweep(bases: &[PathBuf]) -> Vec<PathBuf> {
    // Without /proc no pid can be checked; then nothing is swept.
    if !Path::new("/proc/self").exists() {
        return Vec::new();
    }
    let now = SystemTime::now();
    let mut removed = Vec::new();
    for base in bases {
        let Ok(entries) = std::fs::read_dir(base) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(run_pid) else {
                continue;
            };
            if Path::new("/proc").join(pid.to_string()).exists() {
                continue;
            }
            // symlink_metadata: a link named like ours is not followed.
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age < STALE_AFTER {
                continue;
            }
            let path = entry.path();
            let gone = if meta.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if gone.is_ok() {
                removed.push(path);
            }
        }
    }
    removed
}

/// The pid in a name `slipway-run-<pid>-…`, if it is one of ours.
fn run_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_as_long_as_name_len_says() {
        let dir = dir("ssh").unwrap();
        let name = dir.path().file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(name.len(), name_len("ssh"), "{name}");
        assert_eq!(run_pid(&name), Some(std::process::id()));
    }

    #[test]
    fn only_our_names_carry_a_pid() {
        assert_eq!(run_pid("slipway-run-123-build-abc"), Some(123));
        assert_eq!(run_pid("slipway-run--build"), None);
        assert_eq!(run_pid("slipway-run-12x-build"), None);
        assert_eq!(run_pid("slipway-sshd-abc"), None);
        assert_eq!(run_pid("other-run-1-x"), None);
    }

    #[test]
    fn a_dead_runs_old_directory_goes_and_everything_else_stays() {
        let base = tempfile::tempdir().unwrap();
        // A pid that cannot be live: above the kernel's pid_max limit.
        let dead = 4_194_305 + 7;
        let make = |name: &str, age: Duration| {
            let path = base.path().join(name);
            std::fs::create_dir_all(path.join("inside")).unwrap();
            let when = SystemTime::now() - age;
            std::fs::File::open(&path)
                .unwrap()
                .set_modified(when)
                .unwrap();
            path
        };
        let hour = Duration::from_secs(3600);
        let stale = make(&format!("slipway-run-{dead}-build-a"), 2 * hour);
        let young = make(&format!("slipway-run-{dead}-build-b"), Duration::ZERO);
        let live = make(
            &format!("slipway-run-{}-build-c", std::process::id()),
            2 * hour,
        );
        let foreign = make("slipway-sshd-d", 2 * hour);

        let removed = sweep(&[base.path().to_path_buf()]);
        assert_eq!(removed, std::slice::from_ref(&stale));
        assert!(!stale.exists());
        assert!(young.exists() && live.exists() && foreign.exists());
    }
}
