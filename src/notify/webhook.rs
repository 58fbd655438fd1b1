//! The generic webhook: `POST` of a JSON document to a URL kept in an
//! environment variable, for anything slipway has no notifier for.
//!
//! The body is the engine's event as JSON (the same shape `Event`
//! serialises to: `{"event": "started" | "succeeded" | "failed", …}`) with
//! two more keys: `outcome` (`started`, `succeeded`, `failed`,
//! `rolled-back` or `test`) and `info`, the [`DeployInfo`]:
//!
//! ```json
//! { "event": "succeeded", "deploy_id": "d…", "release": "2026…-1a2b3c4",
//!   "previous": "2025…-0aa0aa0", "closed_window": 1.2, "duration": 42.0,
//!   "outcome": "succeeded",
//!   "info": { "app": "shop", "environment": "production", "release": "…",
//!             "commit": "1a2b3c4…", "commit_subject": "…", "deployer": "alice",
//!             "link": "https://…", "changelog": ["…"], "deploy_id": "d…" } }
//! ```
//!
//! Per-host events (phases, output, notes) are not sent: they are many,
//! and the outcome already says what failed. Any 2xx is success.
//!
//! [`DeployInfo`]: super::DeployInfo

use serde_json::json;

use super::Service;
use super::config::{Keys, NotifyConfigError};
use super::deliver::Request;
use super::events::Events;
use super::message::{Kind, Occasion};

pub const KEYS: &[&str] = &["url_env", "events", "environments"];

pub struct Webhook {
    url: String,
    events: Events,
}

impl Webhook {
    pub fn parse(keys: &Keys<'_>) -> Result<Self, NotifyConfigError> {
        Ok(Self {
            url: keys
                .required_secret_url("url_env", "DEPLOY_WEBHOOK_URL")?
                .to_string(),
            events: Events::parse(keys, &Kind::CONFIGURABLE)?,
        })
    }
}

impl Service for Webhook {
    fn secrets(&self) -> Vec<String> {
        vec![self.url.clone()]
    }

    fn wants(&self, kind: Kind) -> bool {
        self.events.wants(kind)
    }

    fn request(&self, o: &Occasion) -> Option<Request> {
        Some(Request::post(self.url.clone(), body(o)))
    }
}

pub fn body(o: &Occasion) -> serde_json::Value {
    let mut body = match &o.event {
        Some(event) => serde_json::to_value(event).unwrap_or_else(|_| json!({})),
        None => json!({ "event": "test", "deploy_id": o.info.deploy_id }),
    };
    body["outcome"] = json!(o.kind.as_str());
    body["info"] = serde_json::to_value(&o.info).unwrap_or_else(|_| json!({}));
    body
}
