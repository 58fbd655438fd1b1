//! Where build steps run: inside a bubblewrap sandbox, or (only where the
//! policy allows it) directly, with a cleared environment.
//!
//! Build steps come from the pushed commit, so they are untrusted code.
//! Invariants:
//! - A step's environment is cleared: only `PATH`, `HOME` (a fresh private
//!   directory), `LANG`, `SOURCE_DATE_EPOCH` and the public `SLIPWAY_APP`,
//!   `SLIPWAY_COMMIT`, `SLIPWAY_BRANCH`, `SLIPWAY_RELEASE` reach it, in
//!   every mode. Secrets, notifier credentials, `SSH_AUTH_SOCK` and every
//!   other `SLIPWAY_*` setting never do.
//! - Under bwrap the step sees a new root: the system's program and library
//!   trees and `/etc` read-only (minus anything in them not world-readable),
//!   the owner's extra read-only paths, a private `/tmp`, `/dev`, a `/proc`
//!   of its own pid namespace (so no parent's `environ`), and the export
//!   directory, the only place it can write. The git directory, the deploy
//!   identity, the agent socket, the hook env file and the pin and allow
//!   files are not in it; any of them that lies under a visible tree is
//!   masked.
//! - Where bwrap cannot run, a git server refuses to run pushed steps unless
//!   its owner's pin file says `[build] sandbox = "none"`; an operator's own
//!   machine runs them with the cleared environment and says so once.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// What the caller (who knows where slipway runs) asks of the sandbox.
#[derive(Debug, Clone, Default)]
pub struct SandboxPolicy {
    /// On a git server: refuse to run steps without bwrap, unless
    /// `allow_unsandboxed`.
    pub required: bool,
    /// The server owner's `[build] sandbox = "none"`.
    pub allow_unsandboxed: bool,
    /// Extra read-only paths the owner exposes to builds.
    pub readonly_paths: Vec<PathBuf>,
    /// Private paths to mask wherever they would be visible: the git dir,
    /// identity files, the agent socket, settings files.
    pub hidden: Vec<PathBuf>,
    /// `[build] network` from the config (on by default).
    pub network: bool,
}

/// How steps will run, decided once per build.
#[derive(Debug, Clone)]
pub enum Sandbox {
    Bwrap {
        policy: SandboxPolicy,
    },
    /// No bwrap: a cleared environment only. `why` says what failed.
    ClearedEnv {
        why: String,
    },
    /// There are no steps to run, so nothing was probed.
    NoSteps,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "build steps from a pushed commit run only inside a bubblewrap sandbox, and bwrap cannot run here: {why}. \
     Install it (`apt-get install bubblewrap`; unprivileged user namespaces must be enabled), \
     or, accepting that pushed build steps then run as the git user, set `[build] sandbox = \"none\"` in the server's slipway-pins.toml"
)]
pub struct SandboxUnavailable {
    pub why: String,
}

/// Whether bwrap works on this machine (asked once per process).
fn bwrap_works() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let out = Command::new("bwrap")
                .args(["--unshare-all", "--die-with-parent", "--ro-bind", "/", "/"])
                .args(["--proc", "/proc", "--dev", "/dev", "true"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("`bwrap` could not be started ({e})"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "`bwrap` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        })
        .clone()
}

impl Sandbox {
    /// Decides how steps run under `policy`.
    ///
    /// # Errors
    /// When the policy requires bwrap, it does not work, and the owner has
    /// not allowed running without it.
    pub fn choose(
        steps: &[crate::config::BuildStep],
        policy: SandboxPolicy,
    ) -> Result<Self, SandboxUnavailable> {
        if steps.is_empty() {
            return Ok(Self::NoSteps);
        }
        match bwrap_works() {
            Ok(()) => Ok(Self::Bwrap { policy }),
            Err(why) if policy.required && !policy.allow_unsandboxed => {
                Err(SandboxUnavailable { why })
            }
            Err(why) => Ok(Self::ClearedEnv { why }),
        }
    }

    /// A warning to print once, when steps run without bwrap.
    pub fn warning(&self) -> Option<String> {
        match self {
            Self::Bwrap { .. } | Self::NoSteps => None,
            Self::ClearedEnv { why } => Some(format!(
                "build steps run without a sandbox ({why}); they get a cleared environment but can read what this user can. Install bubblewrap to isolate them"
            )),
        }
    }

    /// The command that runs `script` in `dir` with exactly `env` (plus
    /// `PATH`, `HOME` = `home`, `LANG`).
    pub(crate) fn command(
        &self,
        dir: &Path,
        home: &Path,
        script: &str,
        env: &[(String, String)],
    ) -> Command {
        let path = std::env::var_os("PATH")
            .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
        let mut command = match self {
            Self::ClearedEnv { .. } | Self::NoSteps => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(script).current_dir(dir);
                c.env_clear().env("HOME", home);
                c
            }
            Self::Bwrap { policy } => {
                let mut c = Command::new("bwrap");
                c.args(bwrap_args(policy, dir, &path));
                c.arg("--").arg("sh").arg("-c").arg(script);
                c.env_clear().env("HOME", SANDBOX_HOME);
                c
            }
        };
        command.env("PATH", &path);
        if let Some(lang) = std::env::var_os("LANG") {
            command.env("LANG", lang);
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        command
    }
}

/// `HOME` inside the sandbox: an empty directory on the sandbox's tmpfs.
const SANDBOX_HOME: &str = "/tmp/home";

/// System trees a build may read.
const SYSTEM_TREES: &[&str] = &["/usr", "/etc", "/opt"];
/// Top-level names that are symlinks into /usr on merged-/usr systems and
/// real directories elsewhere.
const SYSTEM_LINKS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

fn bwrap_args(policy: &SandboxPolicy, dir: &Path, path: &OsString) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
        args.extend(items.iter().map(|i| i.as_ref().to_owned()));
    };
    push(&[&"--die-with-parent", &"--new-session", &"--unshare-all"]);
    if policy.network {
        push(&[&"--share-net"]);
    }
    push(&[&"--cap-drop", &"ALL"]);
    let mut visible: Vec<PathBuf> = Vec::new();
    for tree in SYSTEM_TREES {
        if Path::new(tree).is_dir() {
            push(&[&"--ro-bind", tree, tree]);
            visible.push(PathBuf::from(tree));
        }
    }
    for link in SYSTEM_LINKS {
        let p = Path::new(link);
        match std::fs::read_link(p) {
            Ok(target) => push(&[&"--symlink", &target, link]),
            Err(_) if p.is_dir() => {
                push(&[&"--ro-bind", link, link]);
                visible.push(p.to_path_buf());
            }
            Err(_) => {}
        }
    }
    // Tools on PATH outside the system trees (e.g. /usr/local/cargo/bin).
    let extra = std::env::split_paths(path)
        .filter(|p| p.is_absolute() && p.is_dir())
        .chain(policy.readonly_paths.iter().cloned())
        .filter(|p| !visible.iter().any(|v| p.starts_with(v)))
        .collect::<Vec<_>>();
    for p in extra {
        if p.exists() {
            push(&[&"--ro-bind", &p, &p]);
            visible.push(p);
        }
    }
    push(&[&"--dev", &"/dev", &"--proc", &"/proc", &"--tmpfs", &"/tmp"]);
    push(&[
        &"--tmpfs",
        &"/run",
        &"--dir",
        &"/var/tmp",
        &"--dir",
        &SANDBOX_HOME,
    ]);
    // Anything private under a visible tree is masked: the settings the
    // caller names, and files of /etc and /opt other users may not read.
    let mut masked: Vec<PathBuf> = policy
        .hidden
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .filter(|p| visible.iter().any(|v| p.starts_with(v)))
        .collect();
    masked.extend(private_entries(&visible));
    for p in masked {
        if p.is_dir() {
            push(&[&"--tmpfs", &p]);
        } else {
            push(&[&"--ro-bind", &"/dev/null", &p]);
        }
    }
    push(&[&"--bind", &dir, &dir, &"--chdir", &dir]);
    args
}

/// Entries under the visible trees (except the large, public `/usr`) that
/// other users may not read: `/etc/shadow`, `/etc/ssl/private`, host keys.
fn private_entries(visible: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in visible.iter().filter(|v| !v.starts_with("/usr")) {
        let mut walk = walkdir::WalkDir::new(root).max_depth(4).into_iter();
        while let Some(Ok(entry)) = walk.next() {
            if entry.path_is_symlink() {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let mode = meta.permissions().mode();
            let private = if meta.is_dir() {
                mode & 0o005 != 0o005
            } else {
                mode & 0o004 == 0
            };
            if private {
                out.push(entry.path().to_path_buf());
                if meta.is_dir() {
                    walk.skip_current_dir();
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SandboxPolicy {
        SandboxPolicy {
            network: false,
            ..SandboxPolicy::default()
        }
    }

    #[test]
    fn private_files_under_visible_trees_are_masked() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("key");
        std::fs::write(&secret, "k").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let public = dir.path().join("pub");
        std::fs::write(&public, "p").unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        let found = private_entries(&[dir.path().to_path_buf()]);
        assert!(found.contains(&secret), "{found:?}");
        assert!(!found.contains(&public), "{found:?}");
    }

    #[test]
    fn the_export_is_the_only_writable_bind_and_comes_last() {
        let mut p = policy();
        p.hidden = vec![PathBuf::from("/etc/hostname")];
        let args = bwrap_args(&p, Path::new("/tmp/export"), &OsString::from("/usr/bin"));
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let binds: Vec<usize> = args
            .iter()
            .enumerate()
            .filter(|(_, a)| *a == "--bind")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(binds.len(), 1, "{args:?}");
        assert_eq!(args[binds[0] + 1], "/tmp/export");
        assert!(!args.contains(&"--share-net".to_owned()));
        let hostname = args.iter().position(|a| a == "/etc/hostname");
        assert!(
            hostname.is_some(),
            "a hidden file under /etc is masked: {args:?}"
        );
    }
}
