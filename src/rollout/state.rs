//! What slipway records on each host, as plain serialisable data.
//!
//! Owns the formats of the lock, the journal and the history line, and the
//! parsing of [`HostState`] from `Layout::read_state` output. Invariant:
//! nothing here holds a secret; all of it may be printed.

use serde::{Deserialize, Serialize};

use crate::notify::Phase;

/// Who holds the environment lock.
///
/// `deploy_id` is the first field, so the lock file's first bytes are
/// `{"deploy_id":"<id>"`: the host scripts read the id from there and
/// compare it exactly (see `layout.rs`). `machine` and `pid` are for people
/// reading `status`; whether a lock is alive is decided by its lease alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    pub deploy_id: String,
    pub who: String,
    /// The machine slipway ran on (not the host locked).
    pub machine: String,
    pub pid: u32,
    pub since: String,
    /// How long the lock lives without a renewal, measured by each host's
    /// own clock from the lock file's mtime, which the holder `touch`es
    /// while it runs. `None` for a lock written by a slipway without
    /// leases: it is never presumed dead (only `unlock --force` removes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
}

impl std::fmt::Display for LockOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (rollout {}, pid {} on {}, since {})",
            self.who, self.deploy_id, self.pid, self.machine, self.since
        )
    }
}

/// A deploy freeze (`slipway lock <env> --message`), recorded on every host
/// as `.slipway/freeze`; every rollout is refused while it is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    pub who: String,
    /// The machine `slipway lock` ran on.
    pub machine: String,
    pub since: String,
    pub message: String,
}

impl std::fmt::Display for Freeze {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "frozen by {} since {}: \"{}\"",
            self.who, self.since, self.message
        )
    }
}

/// The rollout in flight on one host; removed when it finishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub deploy_id: String,
    pub environment: String,
    pub release: String,
    /// The release this host ran before; what a recovery returns to.
    pub previous: Option<String>,
    pub phase: Phase,
    pub hosts: Vec<String>,
    pub updated: String,
    /// Written once the rollout passed its point of no return on some
    /// host: `recover` then finishes it instead of undoing it. Absent in
    /// journals written before this field existed (read as `false`).
    #[serde(default)]
    pub committed: bool,
}

/// A canary in progress, recorded on every host of the environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryState {
    pub deploy_id: String,
    pub release: String,
    pub commit: String,
    /// What each host ran before the canary, by host name.
    pub previous: std::collections::BTreeMap<String, Option<String>>,
    /// The hosts already switched to `release`.
    pub switched: Vec<String>,
    pub since: String,
}

/// One line of `.slipway/history.jsonl`.
///
/// Fields added after the first release (`subject`, `duration_ms`,
/// `closed_ms`) default when absent, so lines older slipways wrote still
/// read; and they are left out when unknown, so an older slipway reading a
/// newer line sees only fields it knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub time: String,
    pub deploy_id: String,
    pub environment: String,
    pub action: Action,
    pub release: String,
    pub previous: Option<String>,
    pub commit: String,
    pub sha256: String,
    pub who: String,
    pub outcome: Outcome,
    /// The first line of the commit's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// From taking the lock to recording this line, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// How long the hosts were closed (503), in milliseconds; absent for
    /// strategies that never close.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_ms: Option<u64>,
}

pub use crate::notify::Action;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Success,
    RolledBack,
}

/// A host's deploy root as read before a rollout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostState {
    /// The deploy root exists.
    pub exists: bool,
    /// The release `current` points to.
    pub current: Option<String>,
    pub closed: bool,
    pub lock: Option<Result<LockOwner, String>>,
    /// The lock file as read (its first 64 KiB on one line), to remove
    /// exactly what was read and nothing written since.
    pub lock_raw: Option<String>,
    /// How long ago the lock was taken or last renewed, by the host's clock.
    pub lock_age: Option<std::time::Duration>,
    /// A deploy freeze; `Err` holds an unreadable record as it was read.
    pub freeze: Option<Result<Freeze, String>>,
    pub journal: Option<Result<Journal, String>>,
    pub pinned: Vec<String>,
    /// A canary in progress.
    pub canary: Option<Result<CanaryState, String>>,
    /// Release ids, most recently switched to first.
    pub releases: Vec<String>,
    /// Configured commands still running (see `remote.rs`).
    pub running: Vec<super::remote::Running>,
}

impl HostState {
    /// Parses `key<TAB>value` lines; unknown keys are ignored so an older
    /// slipway can read a newer layout.
    pub fn parse(output: &str) -> Self {
        let mut state = Self {
            running: super::remote::Running::parse(output),
            ..Self::default()
        };
        for line in output.lines() {
            let Some((key, value)) = line.split_once('\t') else {
                continue;
            };
            match key {
                "root" => state.exists = true,
                "current" => {
                    state.current = Some(
                        value
                            .trim_end_matches('/')
                            .rsplit('/')
                            .next()
                            .unwrap_or(value)
                            .to_owned(),
                    );
                }
                "closed" => state.closed = true,
                "lock" => {
                    state.lock = Some(serde_json::from_str(value).map_err(|_| value.to_owned()));
                    state.lock_raw = Some(value.to_owned());
                }
                "lock_age" => state.lock_age = parse_age(value),
                "freeze" => {
                    state.freeze = Some(serde_json::from_str(value).map_err(|_| value.to_owned()));
                }
                "journal" => {
                    state.journal = Some(serde_json::from_str(value).map_err(|_| value.to_owned()));
                }
                "canary" => {
                    state.canary = Some(serde_json::from_str(value).map_err(|_| value.to_owned()));
                }
                "pinned" if !value.trim().is_empty() => state.pinned.push(value.trim().to_owned()),
                "release" if !value.starts_with('.') => state.releases.push(value.to_owned()),
                _ => {}
            }
        }
        state
    }
}

/// An age the host printed in milliseconds; a negative one (the file is
/// newer than the host's clock says it is now) reads as zero.
pub fn parse_age(millis: &str) -> Option<std::time::Duration> {
    let millis: i64 = millis.trim().parse().ok()?;
    Some(std::time::Duration::from_millis(
        u64::try_from(millis).unwrap_or(0),
    ))
}

/// Which releases to delete so that `keep` remain, never deleting the
/// current release, the rollback target or a pinned one. `releases` is
/// newest first.
pub fn to_prune(
    releases: &[String],
    keep: usize,
    current: Option<&str>,
    previous: Option<&str>,
    pinned: &[String],
) -> Vec<String> {
    let protected =
        |id: &str| Some(id) == current || Some(id) == previous || pinned.iter().any(|p| p == id);
    // Protected releases use up the budget first, wherever they sit in the
    // list; the newest of the rest fill what is left.
    let mut budget = keep.saturating_sub(releases.iter().filter(|id| protected(id)).count());
    let mut doomed = Vec::new();
    for id in releases.iter().filter(|id| !protected(id)) {
        if budget > 0 {
            budget -= 1;
        } else {
            doomed.push(id.clone());
        }
    }
    doomed
}

/// The current UTC time, RFC 3339.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn pruning_keeps_n_and_never_the_current_previous_or_pinned() {
        let releases = ids(&["r6", "r5", "r4", "r3", "r2", "r1"]);
        assert_eq!(
            to_prune(&releases, 3, Some("r6"), Some("r5"), &[]),
            ids(&["r3", "r2", "r1"])
        );
        // An old current (after a rollback) and its target survive pruning to 1.
        assert_eq!(
            to_prune(&releases, 1, Some("r2"), Some("r1"), &ids(&["r4"])),
            ids(&["r6", "r5", "r3"])
        );
    }

    #[test]
    fn history_lines_of_older_slipways_still_read() {
        // Written before subject, duration_ms and closed_ms existed.
        let old = r#"{"time":"t","deploy_id":"d","environment":"production","action":"deploy","release":"r1","previous":null,"commit":"c","sha256":"","who":"ann","outcome":"success"}"#;
        let entry: HistoryEntry = serde_json::from_str(old).unwrap();
        assert_eq!((entry.subject, entry.duration_ms), (None, None));
        // And a line without the new fields is written as before.
        assert_eq!(
            serde_json::to_string(&HistoryEntry {
                subject: None,
                duration_ms: None,
                closed_ms: None,
                ..serde_json::from_str(old).unwrap()
            })
            .unwrap(),
            old
        );
    }

    #[test]
    fn state_parses_and_ignores_staging_dirs() {
        let state = HostState::parse(
            "root\t1\ncurrent\treleases/r2\nclosed\t1\nrelease\tr2\nrelease\t.r3.staging\nrelease\tr1\nunknown\tx\n",
        );
        assert!(state.exists && state.closed);
        assert_eq!(state.current.as_deref(), Some("r2"));
        assert_eq!(state.releases, ids(&["r2", "r1"]));
        assert_eq!(HostState::parse(""), HostState::default());
    }
}
