//! Getting one request to a service: timeout, retries, and errors that
//! carry no secret.
//!
//! Owns [`Request`] (what a service wants sent, as plain data), [`Policy`]
//! (timeout and retries) and [`Redactor`]. Invariants: a request is retried
//! only when trying again can help (no answer, 5xx, 429), never after a
//! 4xx; every error string leaving this module has passed through the
//! redactor, and names a URL by scheme and host only, because reqwest
//! errors and service replies may contain a webhook URL or a token.

use std::time::Duration;

use reqwest::Method;

use crate::limits::HTTP_ANSWER_BYTES;

/// One HTTP request a notifier wants made.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<serde_json::Value>,
    /// How to tell a delivered request from a refused one.
    pub check: Check,
}

impl Request {
    pub fn post(url: String, body: serde_json::Value) -> Self {
        Self {
            method: Method::POST,
            url,
            headers: Vec::new(),
            body: Some(body),
            check: Check::Status,
        }
    }

    /// A GET without a body: a lookup whose JSON answer a service needs.
    pub fn get(url: String) -> Self {
        Self {
            method: Method::GET,
            url,
            headers: Vec::new(),
            body: None,
            check: Check::Status,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn check(mut self, check: Check) -> Self {
        self.check = check;
        self
    }
}

/// What a successful answer looks like, beyond a 2xx status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Any 2xx.
    Status,
    /// Slack-style webhooks: 2xx and the body `ok`.
    BodyOk,
    /// GraphQL: 2xx and no `errors` in the JSON reply.
    GraphQl,
}

/// How hard to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// For one request, connecting included.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
}

/// The first pause between attempts; it doubles each time, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Default for Policy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            retries: 3,
        }
    }
}

impl Policy {
    pub fn attempts(&self) -> u32 {
        self.retries.saturating_add(1)
    }

    /// The pause before attempt `n + 1` (after `n` failed ones, `n ≥ 1`).
    pub fn backoff(&self, failed: u32) -> Duration {
        let factor = 2u32.saturating_pow(failed.saturating_sub(1));
        FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
    }

    /// The longest one delivery can take: every attempt timing out, plus
    /// every pause between them.
    pub fn budget(&self) -> Duration {
        let pauses: Duration = (1..self.attempts()).map(|n| self.backoff(n)).sum();
        self.timeout.saturating_mul(self.attempts()) + pauses
    }
}

/// How one delivery went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    pub attempts: u32,
    pub error: Option<String>,
    /// The body of the answer that succeeded (clipped like error bodies
    /// are not: lookups read it).
    pub answer: Option<String>,
}

/// Removes secret values from text meant for people.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Remembers `secret`; for a URL also its path and query and each long
    /// path segment, since error messages quote URLs in pieces.
    pub fn add(&mut self, secret: &str) {
        let secret = secret.trim();
        if secret.len() < 4 {
            return;
        }
        self.secrets.push(secret.to_owned());
        if let Ok(url) = reqwest::Url::parse(secret) {
            if url.path().len() > 1 {
                self.secrets.push(url.path().to_owned());
            }
            if let Some(query) = url.query() {
                self.secrets.push(query.to_owned());
            }
            for segment in url.path_segments().into_iter().flatten() {
                if segment.len() >= 6 {
                    self.secrets.push(segment.to_owned());
                }
            }
        }
        // Longest first, so a whole URL goes before its pieces.
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.secrets.dedup();
    }

    pub fn scrub(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_owned(), |text, secret| {
            text.replace(secret.as_str(), "***")
        })
    }
}

/// `https://hooks.slack.com` (or `http://127.0.0.1:8080`) for any URL: how
/// errors name a target.
pub fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        // Scheme, host and port: the path and query may hold a token.
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => "the configured URL".to_owned(),
    }
}

/// Sends `request` until it is delivered, refused, or out of attempts.
pub async fn deliver(
    client: &reqwest::Client,
    request: &Request,
    policy: Policy,
    redactor: &Redactor,
    attempts_made: &(dyn Fn(u32) + Send + Sync),
) -> Outcome {
    let mut attempt = 0;
    loop {
        attempt += 1;
        attempts_made(attempt);
        let result = send_once(client, request, policy.timeout).await;
        match result {
            Ok(answer) => {
                return Outcome {
                    ok: true,
                    attempts: attempt,
                    error: None,
                    answer: Some(answer),
                };
            }
            Err(failure) if failure.retry && attempt < policy.attempts() => {
                tracing::debug!(
                    "attempt {attempt} to {} failed: {}",
                    origin(&request.url),
                    redactor.scrub(&failure.message)
                );
                tokio::time::sleep(policy.backoff(attempt)).await;
            }
            Err(failure) => {
                let tries = if attempt == 1 {
                    String::new()
                } else {
                    format!(" (after {attempt} attempts)")
                };
                return Outcome {
                    ok: false,
                    attempts: attempt,
                    error: Some(redactor.scrub(&format!("{}{tries}", failure.message))),
                    answer: None,
                };
            }
        }
    }
}

struct Failure {
    message: String,
    retry: bool,
}

async fn send_once(
    client: &reqwest::Client,
    request: &Request,
    timeout: Duration,
) -> Result<String, Failure> {
    let target = origin(&request.url);
    let mut builder = client
        .request(request.method.clone(), &request.url)
        .timeout(timeout);
    for (name, value) in &request.headers {
        builder = builder.header(*name, value);
    }
    if let Some(body) = &request.body {
        builder = builder.json(body);
    }
    let response = builder.send().await.map_err(|e| Failure {
        message: format!("{} {target}: {}", request.method, describe(e)),
        retry: true,
    })?;
    let status = response.status();
    let answer = capped_body(response).await.map_err(|why| Failure {
        message: format!("{} {target} answered {status} {why}", request.method),
        retry: false,
    })?;
    let body = super::message::clip(answer.trim(), 300);
    if !status.is_success() {
        let retry = status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
        return Err(Failure {
            message: format!("{} {target} answered {status}: {body}", request.method),
            retry,
        });
    }
    check_body(request.check, &body).map_err(|why| Failure {
        message: format!("{} {target} answered {status} but {why}", request.method),
        retry: false,
    })?;
    Ok(answer)
}

/// The answer's body, read chunk by chunk and never more than
/// [`HTTP_ANSWER_BYTES`] of it: a service (or whatever answers at a
/// configured URL) could send an endless body within the timeout.
async fn capped_body(mut response: reqwest::Response) -> Result<String, String> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if (body.len() + chunk.len()) as u64 > HTTP_ANSWER_BYTES {
                    return Err(format!(
                        "with a body larger than {}, slipway's cap for an answer; it stopped reading there (check the URL points at the service's API)",
                        crate::limits::human(HTTP_ANSWER_BYTES)
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            // As before the cap: a body cut short still tells the status.
            Err(_) => break,
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn check_body(check: Check, body: &str) -> Result<(), String> {
    match check {
        Check::Status => Ok(()),
        Check::BodyOk if body == "ok" => Ok(()),
        Check::BodyOk => Err(format!("not `ok`: {body}")),
        Check::GraphQl => {
            let errors = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("errors").cloned())
                .filter(|e| e.as_array().is_some_and(|a| !a.is_empty()));
            match errors {
                None => Ok(()),
                Some(errors) => Err(format!("with errors: {errors}")),
            }
        }
    }
}

/// A reqwest error as a sentence: without the URL, with its causes
/// (reqwest's own text is just "error sending request").
fn describe(error: reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer within the timeout".to_owned();
    }
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_url_is_scrubbed_whole_and_in_pieces() {
        let mut r = Redactor::default();
        r.add("https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX");
        assert_eq!(
            r.scrub("POST https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX failed"),
            "POST *** failed"
        );
        assert_eq!(
            r.scrub("path was /services/T000/B000/XXXXsecretXXXX"),
            "path was ***"
        );
        assert_eq!(r.scrub("token XXXXsecretXXXX"), "token ***");
    }

    #[test]
    fn backoff_doubles_from_200ms_and_the_budget_counts_every_attempt() {
        let p = Policy {
            timeout: Duration::from_secs(1),
            retries: 3,
        };
        assert_eq!(p.backoff(1), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(800));
        assert_eq!(p.budget(), Duration::from_millis(4000 + 200 + 400 + 800));
    }

    #[test]
    fn slack_errors_come_with_a_200_or_a_4xx_and_a_word() {
        assert!(check_body(Check::BodyOk, "ok").is_ok());
        assert_eq!(
            check_body(Check::BodyOk, "no_service"),
            Err("not `ok`: no_service".to_owned())
        );
        assert!(check_body(Check::GraphQl, r#"{"data":{}}"#).is_ok());
        assert!(check_body(Check::GraphQl, r#"{"errors":[{"message":"bad"}]}"#).is_err());
    }

    #[test]
    fn origin_keeps_scheme_and_host_only() {
        assert_eq!(
            origin("https://hooks.slack.com/services/a/b/c"),
            "https://hooks.slack.com"
        );
    }
}
