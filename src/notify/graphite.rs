//! Graphite events (graphite-web): `POST {url}/events/` with `what`,
//! `tags`, `when` and `data`, read back by `events()` in graphs.
//!
//! graphite-web has no authentication of its own; the trailing slash of
//! `/events/` matters (Django redirects the POST away without it).

use serde_json::json;

use super::Service;
use super::config::{Keys, NotifyConfigError, join};
use super::deliver::Request;
use super::events::Events;
use super::message::{Kind, Occasion};

pub const KEYS: &[&str] = &["url", "tags", "environments"];

pub struct Graphite {
    url: String,
    tags: Vec<String>,
}

impl Graphite {
    pub fn parse(keys: &Keys<'_>) -> Result<Self, NotifyConfigError> {
        let url = keys.required_url(
            "url",
            "give graphite-web's URL, like \"http://graphite.internal\"",
        )?;
        Ok(Self {
            url: join(&url, "events/"),
            tags: keys
                .strings("tags")?
                .unwrap_or_else(|| vec!["deploy".to_owned()]),
        })
    }
}

impl Service for Graphite {
    fn wants(&self, kind: Kind) -> bool {
        Events::only(&[Kind::Succeeded, Kind::RolledBack]).wants(kind)
    }

    fn request(&self, o: &Occasion) -> Option<Request> {
        Some(Request::post(self.url.clone(), body(o, &self.tags)))
    }
}

pub fn body(o: &Occasion, tags: &[String]) -> serde_json::Value {
    let mut tags = tags.to_vec();
    tags.extend([o.info.app.clone(), o.info.environment.clone()]);
    match o.kind {
        Kind::RolledBack => tags.push("rollback".to_owned()),
        Kind::Test => tags.push("test".to_owned()),
        _ => {}
    }
    json!({
        "what": o.marker_title(),
        "tags": tags,
        "when": o.unix_secs(),
        "data": o.marker_text(),
    })
}
