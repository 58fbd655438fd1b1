//! The chat, monitoring and CDN notifiers as one [`Sink`]: [`Notifiers`].
//!
//! Reads `[notify]` (see [`Notifiers::from_config`]) and delivers in the
//! background. The whole config shape:
//!
//! ```toml
//! [notify]
//! timeout = "10s"     # per request, connecting included (default 10s)
//! retries = 3         # attempts after the first (default 3); pauses 200ms, 400ms, 800ms… (≤ 5s)
//! link = "https://ci.example.com/run/42"   # optional; else the GitHub Actions run when
//!                                          # GITHUB_SERVER_URL, GITHUB_REPOSITORY, GITHUB_RUN_ID are set
//!
//! # Chat: told about started, succeeded, failed, rolled-back (or the `events` listed).
//! slack = { webhook_env = "SLACK_WEBHOOK_URL", events = ["succeeded", "failed", "rolled-back"] }
//! teams = { webhook_env = "TEAMS_WEBHOOK_URL" }            # a Workflows webhook
//! matrix = { homeserver = "https://matrix.example.org", room_id = "#deploys:example.org", token_env = "MATRIX_TOKEN" }  # an id or an alias
//!
//! # Monitoring markers: after a success, and after a failure that was rolled back.
//! newrelic = { api_key_env = "NEW_RELIC_API_KEY", entity_guid = "MXxBUE18QVBQTElDQVRJT058MTIz", region = "us" }
//! newrelic_rest = { api_key_env = "NEW_RELIC_API_KEY", application_id = 123 }   # legacy REST v2
//! graphite = { url = "http://graphite.internal", tags = ["deploy"] }
//! grafana = { url = "http://grafana.internal", token_env = "GRAFANA_TOKEN", tags = ["deploy"], dashboard_uid = "abc" }
//! datadog = { api_key_env = "DD_API_KEY", site = "datadoghq.eu", tags = ["team:shop"] }
//!
//! # CDN: purge after a success only.
//! fastly = { service_id = "SU1Z0isxPaozGVKXdv0eY", token_env = "FASTLY_API_TOKEN", surrogate_keys = ["shop"], soft = true }
//!
//! # Anything else: the event as JSON (see `webhook`).
//! webhook = { url_env = "DEPLOY_WEBHOOK_URL" }
//! ```
//!
//! Every notifier also takes `environments = ["production"]` (default: all);
//! `newrelic`, `newrelic_rest`, `datadog` and `fastly` take
//! `endpoint = "http://127.0.0.1:8080"` in place of the service's fixed host.
//! Credentials are never written in the file: `*_env` keys name the
//! environment variables that hold them.
//!
//! Invariants: [`Sink::emit`] only queues (an unbounded channel per
//! notifier), so a slow or dead service never slows the rollout; each
//! notifier delivers its messages in order, notifiers run concurrently;
//! [`Notifiers::finish`] waits at most one delivery budget (timeout ×
//! attempts + pauses) and reports what did not arrive instead of waiting;
//! every error string is scrubbed of every secret value.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::config::{Env, Keys, NotifyConfigError};
use super::deliver::{self, Policy, Redactor, Request};
use super::message::{DeployInfo, Kind, Occasion};
use super::{Event, Sink};

/// One service slipway can notify, configured.
pub trait Service: Send + Sync {
    /// Secret values this notifier holds, for scrubbing errors.
    fn secrets(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether it is told about `kind` at all.
    fn wants(&self, kind: Kind) -> bool;

    /// The request that tells it about `occasion`; `None` to skip.
    fn request(&self, occasion: &Occasion) -> Option<Request>;

    /// A request to make once before the first delivery, whose JSON answer
    /// [`Service::request_after`] needs (Matrix: resolving a room alias).
    /// Its answer is kept for the rest of the run; a failed lookup fails
    /// that delivery and is tried again for the next one.
    fn lookup(&self) -> Option<Request> {
        None
    }

    /// The request for `occasion` given the lookup's answer.
    fn request_after(
        &self,
        occasion: &Occasion,
        _looked_up: &serde_json::Value,
    ) -> Option<Request> {
        self.request(occasion)
    }
}

/// The report of one delivery: one notifier, one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub notifier: String,
    /// `started`, `succeeded`, `failed`, `rolled-back` or `test`.
    pub event: String,
    pub ok: bool,
    pub attempts: u32,
    /// Why it failed; secret values are replaced by `***`.
    pub error: Option<String>,
}

type Parse = fn(&Keys<'_>) -> Result<Box<dyn Service>, NotifyConfigError>;

/// Every notifier, by its key in `[notify]`.
const SERVICES: &[(&str, &[&str], Parse)] = &[
    ("slack", super::slack::KEYS, |k| {
        Ok(Box::new(super::slack::Slack::parse(k)?))
    }),
    ("teams", super::teams::KEYS, |k| {
        Ok(Box::new(super::teams::Teams::parse(k)?))
    }),
    ("matrix", super::matrix::KEYS, |k| {
        Ok(Box::new(super::matrix::Matrix::parse(k)?))
    }),
    ("newrelic", super::newrelic::KEYS, |k| {
        Ok(Box::new(super::newrelic::NerdGraph::parse(k)?))
    }),
    ("newrelic_rest", super::newrelic::REST_KEYS, |k| {
        Ok(Box::new(super::newrelic::Rest::parse(k)?))
    }),
    ("graphite", super::graphite::KEYS, |k| {
        Ok(Box::new(super::graphite::Graphite::parse(k)?))
    }),
    ("grafana", super::grafana::KEYS, |k| {
        Ok(Box::new(super::grafana::Grafana::parse(k)?))
    }),
    ("datadog", super::datadog::KEYS, |k| {
        Ok(Box::new(super::datadog::Datadog::parse(k)?))
    }),
    ("fastly", super::fastly::KEYS, |k| {
        Ok(Box::new(super::fastly::Fastly::parse(k)?))
    }),
    ("webhook", super::webhook::KEYS, |k| {
        Ok(Box::new(super::webhook::Webhook::parse(k)?))
    }),
];

const SETTINGS: &[&str] = &["timeout", "retries", "link"];

/// The configured notifiers of one deploy, delivering in the background.
pub struct Notifiers {
    info: DeployInfo,
    policy: Policy,
    lanes: Vec<Lane>,
    started: Mutex<Option<Instant>>,
}

/// One notifier's queue and the task working through it.
struct Lane {
    name: String,
    service: Arc<dyn Service>,
    queue: mpsc::UnboundedSender<Occasion>,
    progress: Arc<Mutex<Progress>>,
    task: JoinHandle<()>,
}

/// What a lane has done and still has to do; shared so `finish` can
/// report deliveries it stopped waiting for.
#[derive(Default)]
struct Progress {
    done: Vec<Delivery>,
    /// Queued or in flight, oldest first: event name and attempts so far.
    pending: VecDeque<(Kind, u32)>,
}

impl Notifiers {
    /// Parses `[notify]` (the opaque table) for `info.environment`, with
    /// credentials from the process environment.
    ///
    /// # Errors
    /// A [`NotifyConfigError`] naming the key at fault, or the environment
    /// variable a `*_env` key names when it is not set.
    pub fn from_config(table: &toml::Table, info: DeployInfo) -> Result<Self, NotifyConfigError> {
        Self::with_env(table, info, &super::config::process_env)
    }

    /// [`Notifiers::from_config`] with variables looked up in `env`
    /// (tests, and callers that resolved them already).
    ///
    /// # Errors
    /// As [`Notifiers::from_config`].
    pub fn with_env(
        table: &toml::Table,
        mut info: DeployInfo,
        env: &Env<'_>,
    ) -> Result<Self, NotifyConfigError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| NotifyConfigError::NoRuntime)?;
        let (policy, link) = settings(table, env)?;
        if info.link.is_none() {
            info.link = link.or_else(|| github_run(env));
        }
        let mut services = Vec::new();
        for (key, value) in table {
            if SETTINGS.contains(&key.as_str()) {
                continue;
            }
            if let Some(service) = parse_service(key, value, &info.environment, env)? {
                services.push((key.clone(), service));
            }
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("slipway/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(policy.timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| NotifyConfigError::Invalid {
                key: "notify".to_owned(),
                reason: format!("cannot set up an HTTP client: {e}"),
            })?;
        let mut redactor = Redactor::default();
        for (_, service) in &services {
            for secret in service.secrets() {
                redactor.add(&secret);
            }
        }
        let redactor = Arc::new(redactor);
        let lanes = services
            .into_iter()
            .map(|(name, service)| {
                Lane::start(
                    &runtime,
                    name,
                    service,
                    client.clone(),
                    policy,
                    Arc::clone(&redactor),
                )
            })
            .collect();
        Ok(Self {
            info,
            policy,
            lanes,
            started: Mutex::new(None),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// The names of the configured notifiers, in delivery-report order.
    pub fn names(&self) -> Vec<String> {
        self.lanes.iter().map(|l| l.name.clone()).collect()
    }

    /// The deploy as the notifiers describe it (with the link resolved).
    pub fn info(&self) -> &DeployInfo {
        &self.info
    }

    /// Queues a test message for every notifier (`slipway notify test`).
    pub fn send_test(&self) {
        self.queue(&Occasion::new(Kind::Test, &self.info));
    }

    /// The longest [`Notifiers::finish`] waits.
    pub fn budget(&self) -> Duration {
        self.policy.budget() + Duration::from_secs(1)
    }

    /// Waits (bounded by the delivery budget) for deliveries in flight;
    /// returns one report per delivery attempted, notifier by notifier.
    pub async fn finish(self) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + self.budget();
        let mut reports = Vec::new();
        for lane in self.lanes {
            reports.extend(lane.finish(deadline, self.policy).await);
        }
        reports
    }

    fn queue(&self, occasion: &Occasion) {
        for lane in &self.lanes {
            if lane.service.wants(occasion.kind) {
                lane.push(occasion);
            }
        }
    }
}

impl Sink for Notifiers {
    fn emit(&self, event: &Event) {
        let since_start = {
            let mut started = self
                .started
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if matches!(event, Event::Started { .. }) {
                *started = Some(Instant::now());
            }
            started.map(|t| t.elapsed())
        };
        if let Some(occasion) = Occasion::from_event(event, &self.info, since_start) {
            self.queue(&occasion);
        }
    }
}

impl Lane {
    fn start(
        runtime: &tokio::runtime::Handle,
        name: String,
        service: Box<dyn Service>,
        client: reqwest::Client,
        policy: Policy,
        redactor: Arc<Redactor>,
    ) -> Self {
        let service: Arc<dyn Service> = Arc::from(service);
        let (queue, inbox) = mpsc::unbounded_channel();
        let progress = Arc::new(Mutex::new(Progress::default()));
        let worker = Worker {
            name: name.clone(),
            service: Arc::clone(&service),
            client,
            policy,
            redactor,
            progress: Arc::clone(&progress),
        };
        let task = runtime.spawn(worker.run(inbox));
        Self {
            name,
            service,
            queue,
            progress,
            task,
        }
    }

    fn push(&self, occasion: &Occasion) {
        lock(&self.progress).pending.push_back((occasion.kind, 0));
        if self.queue.send(occasion.clone()).is_err() {
            // The worker is gone (it panicked); finish() reports it as undelivered.
            tracing::warn!("notifier {} stopped working", self.name);
        }
    }

    /// Closes the queue and waits for the worker until `deadline`.
    async fn finish(self, deadline: tokio::time::Instant, policy: Policy) -> Vec<Delivery> {
        drop(self.queue);
        let mut task = self.task;
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
        }
        let mut progress = lock(&self.progress);
        let mut reports = std::mem::take(&mut progress.done);
        reports.extend(progress.pending.drain(..).map(|(kind, attempts)| Delivery {
            notifier: self.name.clone(),
            event: kind.as_str().to_owned(),
            ok: false,
            attempts,
            error: Some(format!(
                "not delivered: slipway stopped waiting after {:.0}s ({} attempt(s) of {:.0}s each allowed)",
                policy.budget().as_secs_f64().ceil(),
                policy.attempts(),
                policy.timeout.as_secs_f64()
            )),
        }));
        reports
    }
}

struct Worker {
    name: String,
    service: Arc<dyn Service>,
    client: reqwest::Client,
    policy: Policy,
    redactor: Arc<Redactor>,
    progress: Arc<Mutex<Progress>>,
}

impl Worker {
    async fn run(self, mut inbox: mpsc::UnboundedReceiver<Occasion>) {
        let mut looked_up: Option<serde_json::Value> = None;
        while let Some(occasion) = inbox.recv().await {
            let request = match (self.service.lookup(), &looked_up) {
                (None, _) => self.service.request(&occasion),
                (Some(_), Some(answer)) => self.service.request_after(&occasion, answer),
                (Some(lookup), None) => match self.look_up(&lookup).await {
                    Ok(answer) => {
                        let request = self.service.request_after(&occasion, &answer);
                        looked_up = Some(answer);
                        request
                    }
                    Err(failed) => {
                        let mut progress = lock(&self.progress);
                        progress.pending.pop_front();
                        progress.done.push(Delivery {
                            notifier: self.name.clone(),
                            event: occasion.kind.as_str().to_owned(),
                            ok: false,
                            attempts: failed.attempts,
                            error: failed.error,
                        });
                        continue;
                    }
                },
            };
            let Some(request) = request else {
                lock(&self.progress).pending.pop_front();
                continue;
            };
            let progress = Arc::clone(&self.progress);
            let count = move |n: u32| {
                if let Some(front) = lock(&progress).pending.front_mut() {
                    front.1 = n;
                }
            };
            let outcome =
                deliver::deliver(&self.client, &request, self.policy, &self.redactor, &count).await;
            let mut progress = lock(&self.progress);
            progress.pending.pop_front();
            progress.done.push(Delivery {
                notifier: self.name.clone(),
                event: occasion.kind.as_str().to_owned(),
                ok: outcome.ok,
                attempts: outcome.attempts,
                error: outcome.error,
            });
        }
    }
}

impl Worker {
    /// Makes `lookup` (with retries) and reads its answer as JSON.
    async fn look_up(&self, lookup: &Request) -> Result<serde_json::Value, deliver::Outcome> {
        let outcome =
            deliver::deliver(&self.client, lookup, self.policy, &self.redactor, &|_| {}).await;
        if !outcome.ok {
            return Err(outcome);
        }
        match serde_json::from_str(outcome.answer.as_deref().unwrap_or_default()) {
            Ok(json) => Ok(json),
            Err(e) => Err(deliver::Outcome {
                ok: false,
                error: Some(format!(
                    "GET {} answered something that is not JSON: {e}",
                    deliver::origin(&lookup.url)
                )),
                ..outcome
            }),
        }
    }
}

fn lock(progress: &Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `timeout`, `retries` and `link`.
fn settings(
    table: &toml::Table,
    env: &Env<'_>,
) -> Result<(Policy, Option<String>), NotifyConfigError> {
    let mut top = toml::Table::new();
    for key in SETTINGS {
        if let Some(value) = table.get(*key) {
            top.insert((*key).to_owned(), value.clone());
        }
    }
    let keys = Keys::new("notify", &top, SETTINGS, env)?;
    let mut policy = Policy::default();
    if let Some(timeout) = keys.duration("timeout")? {
        if timeout.is_zero() || timeout > Duration::from_secs(300) {
            return Err(keys.invalid("timeout", "use between 1ms and 5m"));
        }
        policy.timeout = timeout;
    }
    if let Some(retries) = keys.integer("retries")? {
        policy.retries = u32::try_from(retries)
            .ok()
            .filter(|r| *r <= 10)
            .ok_or_else(|| keys.invalid("retries", format!("{retries} is not between 0 and 10")))?;
    }
    let link = keys.url("link")?.map(|u| u.to_string());
    Ok((policy, link))
}

/// `notify.<key>`, unless it is for other environments.
fn parse_service(
    key: &str,
    value: &toml::Value,
    environment: &str,
    env: &Env<'_>,
) -> Result<Option<Box<dyn Service>>, NotifyConfigError> {
    let Some((_, allowed, parse)) = SERVICES.iter().find(|(name, _, _)| *name == key) else {
        let mut known: Vec<&str> = SERVICES.iter().map(|(name, _, _)| *name).collect();
        known.extend(SETTINGS);
        return Err(NotifyConfigError::UnknownNotifier {
            key: format!("notify.{key}"),
            hint: super::config::hint(key, &known, "use one of"),
        });
    };
    let keys = Keys::notifier(key, value, allowed, env)?;
    if let Some(environments) = keys.strings("environments")?
        && !environments.iter().any(|e| e == environment)
    {
        return Ok(None);
    }
    parse(&keys).map(Some)
}

/// The GitHub Actions run slipway runs in, if any.
fn github_run(env: &Env<'_>) -> Option<String> {
    let var = |k| env(k).filter(|v: &String| !v.is_empty());
    Some(format!(
        "{}/{}/actions/runs/{}",
        var("GITHUB_SERVER_URL")?.trim_end_matches('/'),
        var("GITHUB_REPOSITORY")?,
        var("GITHUB_RUN_ID")?
    ))
}
