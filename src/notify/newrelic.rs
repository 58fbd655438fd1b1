//! New Relic deployment markers: NerdGraph change tracking (`newrelic`)
//! and the legacy REST v2 API (`newrelic_rest`).
//!
//! NerdGraph answers 200 even when the mutation failed, with `errors` in
//! the body; that counts as a failure. Values travel as GraphQL variables,
//! never spliced into the query, so a commit subject cannot break it.
//! `slipway notify test` only reads (the entity, the application): a test
//! must not leave a fake deployment on the charts.

use reqwest::Method;
use serde_json::json;

use super::Service;
use super::config::{Keys, NotifyConfigError, join};
use super::deliver::{Check, Request};
use super::events::Events;
use super::message::{Kind, Occasion};

pub const KEYS: &[&str] = &[
    "api_key_env",
    "entity_guid",
    "region",
    "endpoint",
    "deployment_type",
    "environments",
];
pub const REST_KEYS: &[&str] = &[
    "api_key_env",
    "application_id",
    "region",
    "endpoint",
    "environments",
];

const MARKERS: [Kind; 2] = [Kind::Succeeded, Kind::RolledBack];
const DEPLOYMENT_TYPES: [&str; 6] = [
    "BASIC",
    "BLUE_GREEN",
    "CANARY",
    "ROLLING",
    "SHADOW",
    "OTHER",
];

const MUTATION: &str = "mutation($deployment: ChangeTrackingDeploymentInput!) { changeTrackingCreateDeployment(deployment: $deployment) { deploymentId entityGuid } }";
const ENTITY_QUERY: &str = "query($guid: EntityGuid!) { actor { entity(guid: $guid) { name } } }";

/// `https://api.newrelic.com` or its EU twin, unless `endpoint` says otherwise.
fn base(keys: &Keys<'_>) -> Result<reqwest::Url, NotifyConfigError> {
    if let Some(url) = keys.url("endpoint")? {
        return Ok(url);
    }
    let host = match keys.string("region")?.as_deref() {
        None | Some("us" | "US") => "https://api.newrelic.com",
        Some("eu" | "EU") => "https://api.eu.newrelic.com",
        Some(other) => {
            return Err(keys.invalid(
                "region",
                format!("`{other}` is not a region; use \"us\" or \"eu\""),
            ));
        }
    };
    reqwest::Url::parse(host).map_err(|e| keys.invalid("region", e.to_string()))
}

pub struct NerdGraph {
    url: String,
    api_key: String,
    entity_guid: String,
    deployment_type: String,
}

impl NerdGraph {
    pub fn parse(keys: &Keys<'_>) -> Result<Self, NotifyConfigError> {
        let deployment_type = keys
            .string("deployment_type")?
            .unwrap_or_else(|| "BASIC".to_owned());
        if !DEPLOYMENT_TYPES.contains(&deployment_type.as_str()) {
            return Err(keys.invalid(
                "deployment_type",
                format!(
                    "`{deployment_type}` is not one of {}",
                    DEPLOYMENT_TYPES.join(", ")
                ),
            ));
        }
        Ok(Self {
            url: join(&base(keys)?, "graphql"),
            api_key: keys.required_secret("api_key_env", "NEW_RELIC_API_KEY")?,
            entity_guid: keys.required_string(
                "entity_guid",
                "give the entity GUID of the application (New Relic UI: entity → metadata)",
            )?,
            deployment_type,
        })
    }
}

impl Service for NerdGraph {
    fn secrets(&self) -> Vec<String> {
        vec![self.api_key.clone()]
    }

    fn wants(&self, kind: Kind) -> bool {
        Events::only(&MARKERS).wants(kind)
    }

    fn request(&self, o: &Occasion) -> Option<Request> {
        let body = match o.kind {
            Kind::Test => {
                json!({ "query": ENTITY_QUERY, "variables": { "guid": self.entity_guid } })
            }
            _ => json!({ "query": MUTATION, "variables": { "deployment": self.deployment(o) } }),
        };
        Some(
            Request::post(self.url.clone(), body)
                .header("API-Key", self.api_key.clone())
                .check(Check::GraphQl),
        )
    }
}

impl NerdGraph {
    fn deployment(&self, o: &Occasion) -> serde_json::Value {
        let mut d = json!({
            "entityGuid": self.entity_guid,
            "version": o.live_release(),
            "commit": o.live_commit(),
            "user": o.info.deployer,
            "description": o.marker_title(),
            "deploymentType": self.deployment_type,
            "groupId": o.info.deploy_id,
            "timestamp": o.unix_millis(),
        });
        if o.kind == Kind::Succeeded {
            d["commit"] = json!(o.info.commit);
            d["changelog"] = json!(o.info.changelog_lines().join("\n"));
        } else {
            d["changelog"] = json!(format!("rolled back: {}", o.info.release));
        }
        if let Some(link) = &o.info.link {
            d["deepLink"] = json!(link);
        }
        d
    }
}

pub struct Rest {
    base: reqwest::Url,
    api_key: String,
    application_id: i64,
}

impl Rest {
    pub fn parse(keys: &Keys<'_>) -> Result<Self, NotifyConfigError> {
        let application_id = keys.integer("application_id")?.ok_or_else(|| {
            keys.missing("application_id", "give the APM application's numeric id")
        })?;
        if application_id <= 0 {
            return Err(keys.invalid("application_id", "an application id is a positive number"));
        }
        Ok(Self {
            base: base(keys)?,
            api_key: keys.required_secret("api_key_env", "NEW_RELIC_API_KEY")?,
            application_id,
        })
    }
}

impl Service for Rest {
    fn secrets(&self) -> Vec<String> {
        vec![self.api_key.clone()]
    }

    fn wants(&self, kind: Kind) -> bool {
        Events::only(&MARKERS).wants(kind)
    }

    fn request(&self, o: &Occasion) -> Option<Request> {
        let id = self.application_id;
        let mut request = if o.kind == Kind::Test {
            let mut r = Request::post(
                join(&self.base, &format!("v2/applications/{id}.json")),
                json!(null),
            );
            r.method = Method::GET;
            r.body = None;
            r
        } else {
            let body = json!({ "deployment": {
                "revision": format!("{} ({})", o.live_release(), o.live_commit()),
                "changelog": if o.kind == Kind::Succeeded { o.info.changelog_lines().join("\n") } else { format!("rolled back: {}", o.info.release) },
                "description": o.marker_title(),
                "user": o.info.deployer,
            }});
            Request::post(
                join(
                    &self.base,
                    &format!("v2/applications/{id}/deployments.json"),
                ),
                body,
            )
        };
        request = request.header("X-Api-Key", self.api_key.clone());
        Some(request)
    }
}
