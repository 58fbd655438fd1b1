//! What the notifiers talk about: the deploy ([`DeployInfo`]) and the
//! moments worth telling someone about ([`Occasion`]).
//!
//! Owns the translation from the rollout's [`Event`] stream to the four
//! moments services care about (started, succeeded, failed, rolled back)
//! and the plain-text wording every service shares. Invariant: nothing here
//! holds a secret; it is all plan data and the engine's own events.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::Event;

/// What a deploy is, for messages (built by the CLI from the plan).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeployInfo {
    /// What was asked: deploy, rollback, promote, revert, recover.
    pub action: super::Action,
    pub app: String,
    pub environment: String,
    pub release: String,
    /// The full commit id.
    pub commit: String,
    pub commit_subject: String,
    pub deployer: String,
    /// Where to read more (the CI run); filled from config or CI when unset.
    pub link: Option<String>,
    /// Subjects of the commits this deploy brings, newest first.
    pub changelog: Vec<String>,
    pub deploy_id: String,
}

impl DeployInfo {
    pub fn short_commit(&self) -> &str {
        short(&self.commit)
    }

    /// What changed, one subject a line; the commit subject when the CLI
    /// could not work out a changelog.
    pub fn changelog_lines(&self) -> Vec<String> {
        if self.changelog.is_empty() && !self.commit_subject.is_empty() {
            vec![self.commit_subject.clone()]
        } else {
            self.changelog.clone()
        }
    }
}

/// An action as the subject of "… failed".
fn doing(action: super::Action) -> &'static str {
    use super::Action;
    match action {
        Action::Deploy | Action::Canary => "deploying",
        Action::Rollback => "rolling back to",
        Action::Promote => "promoting",
        Action::Revert => "reverting the canary",
        Action::Recover => "recovering the rollout of",
    }
}

fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

/// The moments a notifier can be told about, as named in `events = [...]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Started,
    Succeeded,
    Failed,
    RolledBack,
    /// `slipway notify test`: not part of any rollout.
    Test,
}

impl Kind {
    /// The four a config may list.
    pub const CONFIGURABLE: [Kind; 4] = [
        Kind::Started,
        Kind::Succeeded,
        Kind::Failed,
        Kind::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RolledBack => "rolled-back",
            Self::Test => "test",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::CONFIGURABLE.into_iter().find(|k| k.as_str() == name)
    }
}

/// One moment, with everything a service may want to say about it.
#[derive(Debug, Clone)]
pub struct Occasion {
    pub kind: Kind,
    pub info: DeployInfo,
    /// When it happened (markers carry a timestamp).
    pub at: SystemTime,
    /// Since the rollout started; set on the outcomes.
    pub duration: Option<Duration>,
    /// The release that ran before (succeeded).
    pub previous: Option<String>,
    /// The release the hosts went back to (rolled back).
    pub restored: Option<String>,
    pub error: Option<String>,
    /// The engine's event, for the generic webhook; `None` for a test.
    pub event: Option<Event>,
}

impl Occasion {
    /// The occasion `event` is, if notifiers care about it at all.
    /// `since_start` is the time since `Started`, when known.
    pub fn from_event(
        event: &Event,
        info: &DeployInfo,
        since_start: Option<Duration>,
    ) -> Option<Self> {
        let mut occasion = Self::new(Kind::Started, info);
        occasion.event = Some(event.clone());
        match event {
            Event::Started { .. } => {}
            Event::Succeeded {
                previous, duration, ..
            } => {
                occasion.kind = Kind::Succeeded;
                occasion.duration = Some(*duration);
                occasion.previous.clone_from(previous);
            }
            Event::Failed {
                error,
                rolled_back_to,
                ..
            } => {
                occasion.kind = if rolled_back_to.is_some() {
                    Kind::RolledBack
                } else {
                    Kind::Failed
                };
                occasion.duration = since_start;
                occasion.restored.clone_from(rolled_back_to);
                occasion.error = Some(error.clone());
            }
            Event::HostPhase { .. }
            | Event::StepDone { .. }
            | Event::HostFailed { .. }
            | Event::Output { .. }
            | Event::Note { .. } => {
                return None;
            }
        }
        Some(occasion)
    }

    pub fn new(kind: Kind, info: &DeployInfo) -> Self {
        Self {
            kind,
            info: info.clone(),
            at: SystemTime::now(),
            duration: None,
            previous: None,
            restored: None,
            error: None,
            event: None,
        }
    }

    pub fn unix_secs(&self) -> u64 {
        self.at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    pub fn unix_millis(&self) -> u64 {
        self.at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// The release a marker is about: the one now live.
    pub fn live_release(&self) -> &str {
        self.restored.as_deref().unwrap_or(&self.info.release)
    }

    /// The short commit of the live release: a release id ends with it.
    pub fn live_commit(&self) -> &str {
        match &self.restored {
            Some(release) => release.rsplit('-').next().unwrap_or(release),
            None => self.info.short_commit(),
        }
    }

    /// One line saying what happened, e.g.
    /// `shop → production: 20261122T051900Z-1a2b3c4 is live`.
    pub fn headline(&self) -> String {
        use super::Action;
        let i = &self.info;
        let r = &i.release;
        let back = self.restored.as_deref().unwrap_or("the previous release");
        let what = match (self.kind, i.action) {
            (Kind::Test, _) => "test message from slipway (nothing is being deployed)".to_owned(),
            (Kind::Started, Action::Rollback) => format!("rolling back to {r}"),
            (Kind::Started, Action::Promote) => format!("promoting the canary {r} to every host"),
            (Kind::Started, Action::Revert) => format!("reverting the canary {r}"),
            (Kind::Started, Action::Recover) => format!("recovering an interrupted rollout of {r}"),
            (Kind::Started, _) => format!("deploying {r}"),
            (Kind::Succeeded, Action::Rollback) => format!("rolled back to {r}"),
            (Kind::Succeeded, Action::Promote) => {
                format!("{r} is live on every host (canary promoted)")
            }
            (Kind::Succeeded, Action::Revert) => format!(
                "canary {r} reverted; hosts back on {}",
                self.previous.as_deref().unwrap_or("the previous release")
            ),
            (Kind::Succeeded, Action::Recover) => format!("interrupted rollout of {r} recovered"),
            (Kind::Succeeded, _) => format!("{r} is live"),
            (Kind::Failed, action) => format!("{} {r} failed", doing(action)),
            (Kind::RolledBack, action) => {
                format!("{} {r} failed; rolled back to {back}", doing(action))
            }
        };
        format!("{} {} → {}: {what}", self.icon(), i.app, i.environment)
    }

    pub fn icon(&self) -> &'static str {
        match self.kind {
            Kind::Started => "🚀",
            Kind::Succeeded => "✅",
            Kind::Failed => "❌",
            Kind::RolledBack => "↩️",
            Kind::Test => "🔔",
        }
    }

    /// `1a2b3c4 "Fix the checkout"`.
    pub fn commit_line(&self) -> String {
        let i = &self.info;
        if i.commit_subject.is_empty() {
            i.short_commit().to_owned()
        } else {
            format!("{} \"{}\"", i.short_commit(), i.commit_subject)
        }
    }

    /// `42.1s`, when the rollout is over.
    pub fn took(&self) -> Option<String> {
        self.duration.map(|d| format!("{:.1}s", d.as_secs_f64()))
    }

    /// Labelled facts, in the order chat cards show them.
    pub fn facts(&self) -> Vec<(&'static str, String)> {
        let i = &self.info;
        let mut facts = vec![
            ("App", i.app.clone()),
            ("Environment", i.environment.clone()),
            ("Release", i.release.clone()),
            ("Commit", self.commit_line()),
            ("Deployer", i.deployer.clone()),
        ];
        if let Some(took) = self.took() {
            facts.push(("Duration", took));
        }
        if let Some(previous) = &self.previous {
            facts.push(("Previous", previous.clone()));
        }
        if let Some(restored) = &self.restored {
            facts.push(("Rolled back to", restored.clone()));
        }
        if let Some(error) = &self.error {
            facts.push(("Error", clip(error, 500)));
        }
        facts
    }

    /// A marker's one-line title, e.g. `shop 2026…-1a2b3c4 deployed to production by alice`.
    pub fn marker_title(&self) -> String {
        let i = &self.info;
        match self.kind {
            Kind::RolledBack => format!(
                "{} rolled back to {} on {} by {} (deploying {} failed)",
                i.app,
                self.live_release(),
                i.environment,
                i.deployer,
                i.release
            ),
            Kind::Test => format!(
                "slipway notify test for {} on {} by {}",
                i.app, i.environment, i.deployer
            ),
            _ => match i.action {
                super::Action::Rollback => format!(
                    "{} rolled back to {} on {} by {}",
                    i.app, i.release, i.environment, i.deployer
                ),
                super::Action::Revert => format!(
                    "{} canary {} reverted on {} by {}",
                    i.app, i.release, i.environment, i.deployer
                ),
                super::Action::Promote => format!(
                    "{} {} promoted to every host of {} by {}",
                    i.app, i.release, i.environment, i.deployer
                ),
                super::Action::Recover => format!(
                    "{} {} recovered on {} by {}",
                    i.app, i.release, i.environment, i.deployer
                ),
                super::Action::Deploy | super::Action::Canary => format!(
                    "{} {} deployed to {} by {}",
                    i.app, i.release, i.environment, i.deployer
                ),
            },
        }
    }

    /// A marker's details: commit, changelog, link.
    pub fn marker_text(&self) -> String {
        let mut lines = vec![
            self.marker_title(),
            format!("commit {}", self.commit_line()),
        ];
        let changes = self.info.changelog_lines();
        if self.kind == Kind::Succeeded && !changes.is_empty() {
            lines.push("changes:".to_owned());
            lines.extend(changes.iter().map(|c| format!("- {c}")));
        }
        if let Some(error) = &self.error {
            lines.push(format!("error: {}", clip(error, 300)));
        }
        if let Some(link) = &self.info.link {
            lines.push(link.clone());
        }
        lines.join("\n")
    }

    /// The whole message as plain text lines, for services without cards.
    pub fn plain(&self) -> String {
        let mut lines = vec![self.headline()];
        lines.extend(self.facts().into_iter().map(|(k, v)| format!("{k}: {v}")));
        if let Some(link) = &self.info.link {
            lines.push(link.clone());
        }
        lines.join("\n")
    }
}

/// At most `max` characters of `text`, marked when cut.
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> DeployInfo {
        DeployInfo {
            app: "shop".into(),
            environment: "production".into(),
            release: "20260101T000000Z-1a2b3c4".into(),
            commit: "1a2b3c4d5e6f".into(),
            commit_subject: "Fix the checkout".into(),
            deployer: "alice".into(),
            deploy_id: "d1".into(),
            ..DeployInfo::default()
        }
    }

    #[test]
    fn a_failure_with_a_restored_release_is_a_rollback() {
        let event = Event::Failed {
            action: crate::notify::Action::Deploy,
            deploy_id: "d1".into(),
            release: "r2".into(),
            error: "hook failed".into(),
            rolled_back_to: Some("20251231T000000Z-0aa0aa0".into()),
        };
        let o = Occasion::from_event(&event, &info(), Some(Duration::from_secs(3)))
            .expect("an occasion");
        assert_eq!(o.kind, Kind::RolledBack);
        assert_eq!(o.live_release(), "20251231T000000Z-0aa0aa0");
        assert_eq!(o.live_commit(), "0aa0aa0");
        assert!(o.plain().contains("Duration: 3.0s"), "{}", o.plain());
    }

    #[test]
    fn host_level_events_are_not_occasions() {
        let event = Event::Note {
            message: "waiting".into(),
        };
        assert!(Occasion::from_event(&event, &info(), None).is_none());
    }

    #[test]
    fn clip_cuts_on_characters() {
        assert_eq!(clip("ééé", 2), "éé…");
        assert_eq!(clip("ab", 2), "ab");
    }
}
