//! Microsoft Teams, through a Workflows ("Post to a channel when a webhook
//! request is received") webhook: an Adaptive Card in a `message`.
//!
//! Workflows answers 202 Accepted and posts later, so a 2xx is all that
//! can be checked.

use serde_json::json;

use super::Service;
use super::config::{Keys, NotifyConfigError};
use super::deliver::Request;
use super::events::Events;
use super::message::{Kind, Occasion};

pub const KEYS: &[&str] = &["webhook_env", "events", "environments"];

pub struct Teams {
    webhook: String,
    events: Events,
}

impl Teams {
    pub fn parse(keys: &Keys<'_>) -> Result<Self, NotifyConfigError> {
        Ok(Self {
            webhook: keys
                .required_secret_url("webhook_env", "TEAMS_WEBHOOK_URL")?
                .to_string(),
            events: Events::parse(keys, &Kind::CONFIGURABLE)?,
        })
    }
}

impl Service for Teams {
    fn secrets(&self) -> Vec<String> {
        vec![self.webhook.clone()]
    }

    fn wants(&self, kind: Kind) -> bool {
        self.events.wants(kind)
    }

    fn request(&self, o: &Occasion) -> Option<Request> {
        Some(Request::post(self.webhook.clone(), card(o)))
    }
}

pub fn card(o: &Occasion) -> serde_json::Value {
    let facts: Vec<_> = o
        .facts()
        .into_iter()
        .map(|(title, value)| json!({ "title": title, "value": value }))
        .collect();
    let mut content = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            { "type": "TextBlock", "text": o.headline(), "weight": "Bolder", "size": "Medium", "wrap": true },
            { "type": "FactSet", "facts": facts },
        ],
    });
    if let Some(link) = &o.info.link {
        content["actions"] = json!([{ "type": "Action.OpenUrl", "title": "Details", "url": link }]);
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": content,
        }],
    })
}
