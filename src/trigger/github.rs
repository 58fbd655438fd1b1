//! GitHub Actions events: which branch and commit a workflow run deploys.
//!
//! Reads the event payload GitHub writes to `$GITHUB_EVENT_PATH`. Invariant:
//! only a push to a branch, or a pull request closed *and merged*, yields a
//! commit to deploy; everything else (tags, deletions, unmerged PRs, other
//! events) is a skip with a one-sentence reason.

use serde::Deserialize;

/// What the event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventTrigger {
    Push { branch: String, commit: String },
    Skip { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("cannot read the GitHub event payload {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the GitHub `{event}` event payload is not what GitHub sends: {source}")]
    Shape {
        event: String,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
}

#[derive(Deserialize)]
struct PullRequestEvent {
    action: String,
    pull_request: PullRequest,
}

#[derive(Deserialize)]
struct PullRequest {
    number: u64,
    #[serde(default)]
    merged: bool,
    merge_commit_sha: Option<String>,
    base: Base,
}

#[derive(Deserialize)]
struct Base {
    #[serde(rename = "ref")]
    git_ref: String,
}

/// Decides from an event's name and payload.
///
/// # Errors
/// When the payload does not have the shape GitHub gives that event.
pub fn from_event(name: &str, payload: &str) -> Result<EventTrigger, EventError> {
    let shape = |source| EventError::Shape {
        event: name.to_owned(),
        source,
    };
    let skip = |reason: String| Ok(EventTrigger::Skip { reason });
    match name {
        "push" => {
            let push: Push = serde_json::from_str(payload).map_err(shape)?;
            let Some(branch) = push.git_ref.strip_prefix("refs/heads/") else {
                return skip(format!(
                    "{} is not a branch; nothing to deploy",
                    push.git_ref
                ));
            };
            if push.deleted || push.after.bytes().all(|b| b == b'0') {
                return skip(format!("branch `{branch}` was deleted; nothing to deploy"));
            }
            Ok(EventTrigger::Push {
                branch: branch.to_owned(),
                commit: push.after,
            })
        }
        "pull_request" | "pull_request_target" => {
            let event: PullRequestEvent = serde_json::from_str(payload).map_err(shape)?;
            let pr = event.pull_request;
            if event.action != "closed" {
                return skip(format!(
                    "pull request #{} was {}, not merged; nothing to deploy",
                    pr.number, event.action
                ));
            }
            match (pr.merged, pr.merge_commit_sha) {
                (true, Some(sha)) => Ok(EventTrigger::Push {
                    branch: pr.base.git_ref,
                    commit: sha,
                }),
                _ => skip(format!(
                    "pull request #{} was closed without merging; nothing to deploy",
                    pr.number
                )),
            }
        }
        other => skip(format!(
            "the `{other}` event does not deploy; use push or pull_request"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/fixtures/github/{name}.json", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn real_payloads_decide_as_expected() {
        assert_eq!(
            from_event("push", &fixture("push-production")).unwrap(),
            EventTrigger::Push {
                branch: "production".into(),
                commit: "6113728f27ae82c7b1a177c8d03f9e96e0adf246".into()
            }
        );
        assert!(
            matches!(from_event("push", &fixture("push-master")).unwrap(), EventTrigger::Push { branch, .. } if branch == "master")
        );
        for (event, name, why) in [
            ("push", "push-delete", "was deleted"),
            ("push", "push-tag", "not a branch"),
            ("pull_request", "pr-closed-unmerged", "without merging"),
        ] {
            match from_event(event, &fixture(name)).unwrap() {
                EventTrigger::Skip { reason } => assert!(reason.contains(why), "{name}: {reason}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!(
            from_event("pull_request", &fixture("pr-merged-production")).unwrap(),
            EventTrigger::Push {
                branch: "production".into(),
                commit: "9049f1265b7d61be4a8904a9a27120d2064dab3b".into()
            }
        );
        assert!(from_event("push", "{}").is_err());
    }
}
