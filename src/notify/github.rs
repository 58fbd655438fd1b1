//! GitHub Deployments: each rollout shows up as a deployment of the
//! environment, with its status and links.
//!
//! Owns the two REST calls (create a deployment, add a status), made with
//! octocrab against `$GITHUB_API_URL`, so GitHub Enterprise Server works
//! too. Invariants: the token is only ever in octocrab's auth header, never
//! in an error or a log; a failing API is reported to the caller as an
//! error to print as a warning, never a reason to fail a deploy.

use std::time::Duration;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::limits::{HTTP_ANSWER_BYTES, human};

/// The REST API version slipway speaks (octocrab sends it as
/// `X-GitHub-Api-Version`; the integration tests check it is sent once).
pub const API_VERSION: &str = "2022-11-28";

#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    #[error("GITHUB_REPOSITORY `{0}` is not `owner/name`")]
    Repository(String),
    #[error("cannot set up the GitHub API client for {url}: {reason}")]
    Client { url: String, reason: String },
    #[error("GitHub API {what} failed: {reason}")]
    Api { what: String, reason: String },
}

/// A client for one repository's deployments.
pub struct Deployments {
    client: octocrab::Octocrab,
    repository: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NewDeployment<'a> {
    #[serde(rename = "ref")]
    pub commit: &'a str,
    pub task: &'static str,
    pub auto_merge: bool,
    pub required_contexts: Vec<String>,
    pub environment: &'a str,
    pub production_environment: bool,
    pub description: String,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct NewStatus<'a> {
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment_url: Option<&'a str>,
    pub description: String,
}

#[derive(Deserialize)]
struct Created {
    id: u64,
}

impl Deployments {
    /// A client for `repository` (`owner/name`) at `api_url`.
    ///
    /// # Errors
    /// When the repository name or URL is malformed.
    pub fn new(api_url: &str, repository: &str, token: &str) -> Result<Self, GitHubError> {
        if repository.split('/').filter(|p| !p.is_empty()).count() != 2 {
            return Err(GitHubError::Repository(repository.to_owned()));
        }
        let client_err = |reason: String| GitHubError::Client {
            url: api_url.to_owned(),
            reason,
        };
        let client = octocrab::Octocrab::builder()
            .base_uri(api_url)
            .map_err(|e| client_err(e.to_string()))?
            .personal_token(token.to_owned())
            .add_header(
                http::header::ACCEPT,
                "application/vnd.github+json".to_owned(),
            )
            // No `X-GitHub-Api-Version` here: octocrab already sends
            // `API_VERSION` on every request, and a second copy of the
            // header reaches GitHub as `2022-11-28, 2022-11-28`.
            .set_connect_timeout(Some(Duration::from_secs(5)))
            .set_read_timeout(Some(Duration::from_secs(15)))
            .build()
            .map_err(|e| client_err(e.to_string()))?;
        Ok(Self {
            client,
            repository: repository.to_owned(),
        })
    }

    /// Creates a deployment; returns its id.
    ///
    /// # Errors
    /// When GitHub refuses or cannot be reached.
    pub async fn create(&self, deployment: &NewDeployment<'_>) -> Result<u64, GitHubError> {
        let route = format!("/repos/{}/deployments", self.repository);
        let created: Created = self
            .post(&route, deployment, "creating a deployment")
            .await?;
        Ok(created.id)
    }

    /// Adds a status to deployment `id`.
    ///
    /// # Errors
    /// When GitHub refuses or cannot be reached.
    pub async fn status(&self, id: u64, status: &NewStatus<'_>) -> Result<(), GitHubError> {
        let route = format!("/repos/{}/deployments/{id}/statuses", self.repository);
        let what = format!("setting the deployment status to {}", status.state);
        let _: serde_json::Value = self.post(&route, status, &what).await?;
        Ok(())
    }

    /// POSTs `body` to `route` and reads the JSON answer, at most
    /// [`HTTP_ANSWER_BYTES`] of it. octocrab's own `post` reads a body of
    /// any size (an endless answer would exhaust memory), so the answer is
    /// taken raw and read here through a length limit.
    async fn post<P: Serialize, R: DeserializeOwned>(
        &self,
        route: &str,
        body: &P,
        what: &str,
    ) -> Result<R, GitHubError> {
        let api = |reason: String| GitHubError::Api {
            what: what.to_owned(),
            reason,
        };
        let response = self
            .client
            ._post(route, Some(body))
            .await
            .map_err(|e| api_error(what, &e))?;
        let (parts, body) = response.into_parts();
        let limit = usize::try_from(HTTP_ANSWER_BYTES).unwrap_or(usize::MAX);
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => {
                return Err(api(format!(
                    "the answer ({}) is larger than {}, slipway's cap for an answer; check GITHUB_API_URL points at the GitHub API",
                    parts.status,
                    human(HTTP_ANSWER_BYTES)
                )));
            }
            Err(e) => return Err(api(chain(e.as_ref()))),
        };
        if !parts.status.is_success() {
            #[derive(Deserialize)]
            struct Refusal {
                message: Option<String>,
            }
            let message = serde_json::from_slice::<Refusal>(&bytes)
                .ok()
                .and_then(|r| r.message)
                .unwrap_or_else(|| {
                    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
                    crate::notify::message::clip(&text, 300)
                });
            return Err(api(format!("{message} ({})", parts.status)));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            api(format!(
                "the answer ({}) is not the expected JSON: {e}",
                parts.status
            ))
        })
    }
}

fn api_error(what: &str, e: &octocrab::Error) -> GitHubError {
    let reason = match e {
        octocrab::Error::GitHub { source, .. } => {
            format!("{} ({})", source.message, source.status_code)
        }
        other => chain(other),
    };
    GitHubError::Api {
        what: what.to_owned(),
        reason,
    }
}

/// An error and its causes, as one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// GitHub limits a status description to 140 characters.
pub fn description(text: &str) -> String {
    text.chars().take(140).collect()
}
