//! Grafana annotations: `POST {url}/api/annotations` with a service
//! account token. Without `dashboard_uid` the annotation is organisation
//! wide and shows on any panel that queries annotations by tag.

use serde_json::json;

use super::Service;
use super::config::{Keys, NotifyConfigError, join};
use super::deliver::Request;
use super::events::Events;
use super::message::{Kind, Occasion};

pub const KEYS: &[&str] = &["url", "token_env", "tags", "dashboard_uid", "environments"];

pub struct Grafana {
    url: String,
    token: Option<String>,
    tags: Vec<String>,
    dashboard_uid: Option<String>,
}

impl Grafana {
    pub fn parse(keys: &Keys<'_>) -> Result<Self, NotifyConfigError> {
        let url = keys.required_url(
            "url",
            "give Grafana's URL, like \"https://grafana.example.com\"",
        )?;
        Ok(Self {
            url: join(&url, "api/annotations"),
            token: keys.secret("token_env")?,
            tags: keys
                .strings("tags")?
                .unwrap_or_else(|| vec!["deploy".to_owned()]),
            dashboard_uid: keys.string("dashboard_uid")?,
        })
    }
}

impl Service for Grafana {
    fn secrets(&self) -> Vec<String> {
        self.token.iter().cloned().collect()
    }

    fn wants(&self, kind: Kind) -> bool {
        Events::only(&[Kind::Succeeded, Kind::RolledBack]).wants(kind)
    }

    fn request(&self, o: &Occasion) -> Option<Request> {
        let mut tags = self.tags.clone();
        tags.extend([
            o.info.app.clone(),
            o.info.environment.clone(),
            format!("release:{}", o.live_release()),
        ]);
        if o.kind == Kind::Test {
            tags.push("test".to_owned());
        }
        let mut body = json!({ "time": o.unix_millis(), "tags": tags, "text": o.marker_text() });
        if let Some(uid) = &self.dashboard_uid {
            body["dashboardUID"] = json!(uid);
        }
        let mut request = Request::post(self.url.clone(), body);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        Some(request)
    }
}
