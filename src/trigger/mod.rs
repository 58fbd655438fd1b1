//! Triggers: what asked for a deploy, and which environment it maps to.
//!
//! Owns the parsing of git's receive-hook input and the branch →
//! environment decision. Invariants: a ref that is not a branch, a deleted
//! branch, and a branch no environment names all decide "nothing to deploy"
//! with one sentence saying why; what a push may reach is decided by the
//! [`Reach`] the caller loaded from the server owner's pin file (or the
//! default rule), never by the pushed config alone; nothing here does I/O
//! beyond parsing what it is given, so the same decision serves hooks, CI
//! events and the CLI.

pub mod github;

use crate::config::{Config, Reach};

/// One line of `pre-receive`/`post-receive` input: `<old> <new> <ref>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of the hook input is not `<old-id> <new-id> <ref>`: {text:?}")]
pub struct BadHookInput {
    pub line: usize,
    pub text: String,
}

/// An object id of all zeros means "no object": a created or deleted ref.
/// Works for SHA-1 (40) and SHA-256 (64) ids alike.
fn is_null(id: &str) -> bool {
    id.bytes().all(|b| b == b'0')
}

fn is_object_id(id: &str) -> bool {
    matches!(id.len(), 40 | 64) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses receive-hook input, one update per line.
///
/// # Errors
/// On a line that is not three fields with hex object ids.
pub fn parse_receive(input: &str) -> Result<Vec<RefUpdate>, BadHookInput> {
    input
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let mut fields = line.splitn(3, ' ');
            let (Some(old), Some(new), Some(name)) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(BadHookInput {
                    line: i + 1,
                    text: line.to_owned(),
                });
            };
            if !is_object_id(old) || !is_object_id(new) || name.is_empty() {
                return Err(BadHookInput {
                    line: i + 1,
                    text: line.to_owned(),
                });
            }
            Ok(RefUpdate {
                old: old.to_owned(),
                new: new.to_owned(),
                name: name.to_owned(),
            })
        })
        .collect()
}

impl RefUpdate {
    /// The branch name, for `refs/heads/*` refs.
    pub fn branch(&self) -> Option<&str> {
        self.name.strip_prefix("refs/heads/")
    }

    pub fn is_delete(&self) -> bool {
        is_null(&self.new)
    }

    pub fn is_create(&self) -> bool {
        is_null(&self.old)
    }
}

/// What a ref update asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Deploy {
        environment: String,
        branch: String,
        commit: String,
    },
    Skip {
        reason: String,
    },
    /// The pushed config asks for more than the pins allow: nothing is
    /// deployed, and the pusher is told which key and which pin.
    Refuse {
        reason: String,
    },
}

/// Decides what `update` deploys, given the config carried by its new
/// commit (`None` when that commit has no config file) and what the server's
/// owner lets a push reach.
pub fn decide(update: &RefUpdate, config: Option<&Config>, reach: &Reach<'_>) -> Decision {
    let skip = |reason: String| Decision::Skip { reason };
    let Some(branch) = update.branch() else {
        return skip(format!(
            "{} is not a branch; nothing to deploy",
            update.name
        ));
    };
    if update.is_delete() {
        return skip(format!("branch `{branch}` was deleted; nothing to deploy"));
    }
    let Some(config) = config else {
        return skip(format!("`{branch}` has no slipway.toml; nothing to deploy"));
    };
    match reach.environment_for_push(config, branch) {
        Ok(Some((environment, _))) => Decision::Deploy {
            environment,
            branch: branch.to_owned(),
            commit: update.new.clone(),
        },
        Ok(None) => skip(format!(
            "`{branch}` deploys to no environment; nothing to do"
        )),
        Err(violation) => Decision::Refuse {
            reason: format!("`{branch}`: {violation}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const Z: &str = "0000000000000000000000000000000000000000";

    fn config() -> Config {
        crate::config::parse(
            "[app]\nname = \"x\"\n[environments.production]\nbranch = \"production\"\nhosts = [\"local:/tmp/a\"]\ndeploy_to = \"/srv\"\n",
            std::path::Path::new("slipway.toml"),
        )
        .expect("valid")
    }

    #[test]
    fn parses_sha1_and_sha256_updates() {
        let sha256 = "a".repeat(64);
        let input = format!(
            "{Z} {A} refs/heads/production\n{A} {Z} refs/heads/staging\n{sha256} {sha256} refs/tags/v1\n"
        );
        let updates = parse_receive(&input).unwrap();
        assert_eq!(updates.len(), 3);
        assert!(updates[0].is_create() && !updates[0].is_delete());
        assert!(updates[1].is_delete());
        assert_eq!(updates[2].branch(), None);
        assert!(parse_receive("nonsense\n").is_err());
        assert!(parse_receive(&format!("{A} xyz refs/heads/a\n")).is_err());
    }

    #[test]
    fn maps_branches_to_environments() {
        let cfg = config();
        let up = |name: &str, new: &str| RefUpdate {
            old: A.into(),
            new: new.into(),
            name: name.into(),
        };
        assert_eq!(
            decide(
                &up("refs/heads/production", A),
                Some(&cfg),
                &Reach::SameName
            ),
            Decision::Deploy {
                environment: "production".into(),
                branch: "production".into(),
                commit: A.into()
            }
        );
        for (update, why) in [
            (up("refs/heads/master", A), "deploys to no environment"),
            (up("refs/heads/production", Z), "was deleted"),
            (up("refs/tags/v1", A), "not a branch"),
        ] {
            match decide(&update, Some(&cfg), &Reach::SameName) {
                Decision::Skip { reason } => assert!(reason.contains(why), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            decide(&up("refs/heads/production", A), None, &Reach::SameName),
            Decision::Skip { .. }
        ));
    }
}
