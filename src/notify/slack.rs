//! Slack incoming webhooks, and the Slack-compatible ones (Mattermost,
//! Discord's `/slack` URLs, Rocket.Chat).
//!
//! Sends the portable subset: `text` plus one `attachments` entry with a
//! colour and fields. Slack answers 200 with the body `ok`; anything else
//! (`invalid_payload`, `no_service`, …) is a failure with the body quoted.

use serde_json::json;

use super::Service;
use super::config::{Keys, NotifyConfigError};
use super::deliver::{Check, Request};
use super::events::Events;
use super::message::{Kind, Occasion};

pub const KEYS: &[&str] = &["webhook_env", "events", "environments"];

pub struct Slack {
    webhook: String,
    events: Events,
}

impl Slack {
    pub fn parse(keys: &Keys<'_>) -> Result<Self, NotifyConfigError> {
        Ok(Self {
            webhook: keys
                .required_secret_url("webhook_env", "SLACK_WEBHOOK_URL")?
                .to_string(),
            events: Events::parse(keys, &Kind::CONFIGURABLE)?,
        })
    }
}

impl Service for Slack {
    fn secrets(&self) -> Vec<String> {
        vec![self.webhook.clone()]
    }

    fn wants(&self, kind: Kind) -> bool {
        self.events.wants(kind)
    }

    fn request(&self, o: &Occasion) -> Option<Request> {
        Some(Request::post(self.webhook.clone(), body(o)).check(Check::BodyOk))
    }
}

/// The message: a one-line `text` (what notifications show) and the facts.
pub fn body(o: &Occasion) -> serde_json::Value {
    let mut text = o.headline();
    // A freeze is about no commit; its headline already says who.
    if !matches!(o.kind, Kind::Frozen | Kind::Unfrozen) {
        text.push_str(&format!(" ({} by {}", o.commit_line(), o.info.deployer));
        if let Some(took) = o.took() {
            text.push_str(&format!(", {took}"));
        }
        text.push(')');
    }
    if let Some(link) = &o.info.link {
        text.push_str(&format!(" <{link}|details>"));
    }
    let fields: Vec<_> = o
        .facts()
        .into_iter()
        .map(|(title, value)| json!({ "title": title, "value": value, "short": title != "Error" && title != "Commit" }))
        .collect();
    json!({
        "text": text,
        "attachments": [{
            "color": colour(o.kind),
            "fallback": o.plain(),
            "fields": fields,
        }],
    })
}

fn colour(kind: Kind) -> &'static str {
    match kind {
        Kind::Succeeded => "good",
        Kind::Failed => "danger",
        Kind::RolledBack => "warning",
        Kind::Started | Kind::Test => "#439FE0",
        Kind::Frozen | Kind::Unfrozen => "#7F8C8D",
    }
}
