//! Fastly purge once a deploy is live: `purge_all`, or the listed
//! surrogate keys (`POST /service/{id}/purge` with a `Surrogate-Key`
//! header). Only after success: until then the cluster was closed and
//! served nothing from the new release, and a rollback leaves the old one.
//!
//! `slipway notify test` purges one surrogate key nothing uses
//! (`slipway-notify-test`): it proves the token may purge, and evicts nothing.

use serde_json::json;

use super::Service;
use super::config::{Keys, NotifyConfigError, join};
use super::deliver::Request;
use super::events::Events;
use super::message::{Kind, Occasion};

pub const KEYS: &[&str] = &[
    "service_id",
    "token_env",
    "surrogate_keys",
    "soft",
    "endpoint",
    "environments",
];

pub struct Fastly {
    base: reqwest::Url,
    service_id: String,
    token: String,
    surrogate_keys: Vec<String>,
    soft: bool,
}

impl Fastly {
    pub fn parse(keys: &Keys<'_>) -> Result<Self, NotifyConfigError> {
        let base = match keys.url("endpoint")? {
            Some(url) => url,
            None => reqwest::Url::parse("https://api.fastly.com")
                .map_err(|e| keys.invalid("endpoint", e.to_string()))?,
        };
        let service_id = keys.required_string("service_id", "give the Fastly service id")?;
        if !service_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(keys.invalid(
                "service_id",
                format!("`{service_id}` is not a Fastly service id (letters and digits)"),
            ));
        }
        let surrogate_keys = keys.strings("surrogate_keys")?.unwrap_or_default();
        if let Some(bad) = surrogate_keys
            .iter()
            .find(|k| k.is_empty() || k.contains(char::is_whitespace))
        {
            return Err(keys.invalid(
                "surrogate_keys",
                format!("`{bad}` is not a surrogate key (no spaces)"),
            ));
        }
        Ok(Self {
            base,
            service_id,
            token: keys.required_secret("token_env", "FASTLY_API_TOKEN")?,
            surrogate_keys,
            soft: keys.bool("soft")?.unwrap_or(false),
        })
    }
}

impl Service for Fastly {
    fn secrets(&self) -> Vec<String> {
        vec![self.token.clone()]
    }

    fn wants(&self, kind: Kind) -> bool {
        Events::only(&[Kind::Succeeded]).wants(kind)
    }

    fn request(&self, o: &Occasion) -> Option<Request> {
        let id = &self.service_id;
        let mut request = match (o.kind, self.surrogate_keys.is_empty()) {
            (Kind::Test, _) => Request::post(
                join(
                    &self.base,
                    &format!("service/{id}/purge/slipway-notify-test"),
                ),
                json!({}),
            ),
            (_, true) => Request::post(
                join(&self.base, &format!("service/{id}/purge_all")),
                json!({}),
            ),
            (_, false) => {
                Request::post(join(&self.base, &format!("service/{id}/purge")), json!({}))
                    .header("Surrogate-Key", self.surrogate_keys.join(" "))
            }
        };
        request.body = None;
        request = request
            .header("Fastly-Key", self.token.clone())
            .header("Accept", "application/json");
        if self.soft {
            request = request.header("Fastly-Soft-Purge", "1");
        }
        Some(request)
    }
}
