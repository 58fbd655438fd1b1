//! Datadog events (API v1): `POST https://api.{site}/api/v1/events` with
//! `DD-API-KEY`. `slipway notify test` calls `GET /api/v1/validate`, which
//! checks the key without posting anything.

use reqwest::Method;
use serde_json::json;

use super::Service;
use super::config::{Keys, NotifyConfigError, join};
use super::deliver::Request;
use super::events::Events;
use super::message::{Kind, Occasion};

pub const KEYS: &[&str] = &["api_key_env", "site", "endpoint", "tags", "environments"];

pub struct Datadog {
    base: reqwest::Url,
    api_key: String,
    tags: Vec<String>,
}

impl Datadog {
    pub fn parse(keys: &Keys<'_>) -> Result<Self, NotifyConfigError> {
        let base = match keys.url("endpoint")? {
            Some(url) => url,
            None => {
                let site = keys
                    .string("site")?
                    .unwrap_or_else(|| "datadoghq.com".to_owned());
                reqwest::Url::parse(&format!("https://api.{site}"))
                    .ok()
                    .filter(|u| u.host_str() == Some(&format!("api.{site}")))
                    .ok_or_else(|| {
                        keys.invalid(
                            "site",
                            format!("`{site}` is not a Datadog site like \"datadoghq.eu\""),
                        )
                    })?
            }
        };
        Ok(Self {
            base,
            api_key: keys.required_secret("api_key_env", "DD_API_KEY")?,
            tags: keys.strings("tags")?.unwrap_or_default(),
        })
    }
}

impl Service for Datadog {
    fn secrets(&self) -> Vec<String> {
        vec![self.api_key.clone()]
    }

    fn wants(&self, kind: Kind) -> bool {
        Events::only(&[Kind::Succeeded, Kind::RolledBack]).wants(kind)
    }

    fn request(&self, o: &Occasion) -> Option<Request> {
        let request = if o.kind == Kind::Test {
            let mut r = Request::post(join(&self.base, "api/v1/validate"), json!(null));
            r.method = Method::GET;
            r.body = None;
            r
        } else {
            Request::post(join(&self.base, "api/v1/events"), self.event(o))
        };
        Some(request.header("DD-API-KEY", self.api_key.clone()))
    }
}

impl Datadog {
    fn event(&self, o: &Occasion) -> serde_json::Value {
        let i = &o.info;
        let mut tags = self.tags.clone();
        tags.extend([
            format!("env:{}", i.environment),
            format!("service:{}", i.app),
            format!("version:{}", o.live_release()),
            format!("deployer:{}", i.deployer),
            "source:slipway".to_owned(),
        ]);
        json!({
            "title": o.marker_title(),
            "text": o.marker_text(),
            "alert_type": if o.kind == Kind::RolledBack { "warning" } else { "success" },
            "date_happened": o.unix_secs(),
            "tags": tags,
            "aggregation_key": i.deploy_id,
        })
    }
}
