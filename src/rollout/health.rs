//! Health checks: is a host serving the new release correctly?
//!
//! Checks run while the cluster is closed, so an HTTP check sends the
//! `X-Slipway-Health` header, which the shipped nginx snippet lets through
//! the maintenance flag. Invariant: a check is retried `retries` times, one
//! second apart, each attempt bounded by `timeout`; it never waits longer.
//! A health command that outlives its timeout is stopped on the host
//! ([`super::remote::run_supervised`]) before the next attempt.

use std::time::Duration;

use super::layout::Job;
use super::remote::{self, Command};
use super::{Host, RolloutError};
use crate::config::Health;
use crate::transport::{HostSpec, TransportError};

/// The header that lets a health check through a closed cluster.
pub const BYPASS_HEADER: &str = "X-Slipway-Health";

const BETWEEN_ATTEMPTS: Duration = Duration::from_secs(1);

/// Checks one host for the rollout `deploy_id`; the release to check is
/// `dir`.
///
/// # Errors
/// When the last attempt still fails, with what it saw.
pub fn check(
    host: &Host,
    health: &Health,
    deploy_id: &str,
    dir: &str,
    env: &[(String, String)],
) -> Result<(), RolloutError> {
    let mut last = Attempt::Answer(String::new());
    for attempt in 0..=health.retries {
        if attempt > 0 {
            std::thread::sleep(BETWEEN_ATTEMPTS);
        }
        match attempt_once(host, health, deploy_id, attempt, dir, env) {
            Ok(()) => return Ok(()),
            Err(why) => last = why,
        }
    }
    let last = match last {
        // The host itself is gone: say so, not "the check failed".
        Attempt::Transport(e) => return Err(e.into()),
        Attempt::Answer(text) => text,
    };
    // Not a `TransportError::Failed`: that one reads a missing exit code as
    // "a signal", and here the exit status (or HTTP answer) is in `last`.
    Err(RolloutError::Unhealthy {
        host: host.name().to_owned(),
        attempts: health.retries.saturating_add(1),
        last,
    })
}

/// Why one attempt failed.
enum Attempt {
    /// The check ran and said no (exit status, HTTP status).
    Answer(String),
    /// The host could not be reached or did not answer in time.
    Transport(TransportError),
}

fn attempt_once(
    host: &Host,
    health: &Health,
    deploy_id: &str,
    attempt: u32,
    dir: &str,
    env: &[(String, String)],
) -> Result<(), Attempt> {
    if let Some(command) = &health.command {
        // Each attempt its own pid file (and stop marker).
        let what = format!("health-{}", attempt.saturating_add(1));
        let cmd = Command {
            label: "health command",
            job: Job {
                id: deploy_id,
                what: &what,
                timeout: Some(health.timeout),
            },
            dir,
            env,
            command,
        };
        match remote::run_supervised(host, &cmd, &mut |_| {}) {
            Ok(()) => {}
            Err(TransportError::Failed { tail, code, .. }) => {
                return Err(Attempt::Answer(format!(
                    "exit status {}: {tail}",
                    code.map_or("?".to_owned(), |c| c.to_string())
                )));
            }
            Err(e) => return Err(Attempt::Transport(e)),
        }
    }
    if let Some(url) = &health.url {
        let url = url.replace("{host}", &address(host.name()));
        get(&url, health.status, health.timeout).map_err(Attempt::Answer)?;
    }
    Ok(())
}

/// The address `{host}` stands for in a health URL.
fn address(spec: &str) -> String {
    match HostSpec::parse(spec) {
        Ok(HostSpec::Ssh { host, .. }) => host,
        _ => "127.0.0.1".to_owned(),
    }
}

fn get(url: &str, want: u16, timeout: Duration) -> Result<(), String> {
    let handle = tokio::runtime::Handle::current();
    handle.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let response = client
            .get(url)
            .header(BYPASS_HEADER, "1")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status().as_u16();
        if status == want {
            Ok(())
        } else {
            Err(format!("GET {url} answered {status}, expected {want}"))
        }
    })
}
