//! `slipway ci`: deploy from a GitHub Actions run.
//!
//! Reads the event GitHub gives the job, maps its branch to an environment,
//! records the rollout as a GitHub Deployment, and speaks the runner's
//! language: masks first, a log group per stage, annotations for errors,
//! step outputs and a job summary. A GitHub API failure is a warning; it
//! never fails a deploy.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use super::actions::Actions;
use super::context::{Context, Loaded};
use super::deploy::{DeployArgs, execute};
use super::exit;
use crate::config::{Config, ConfigError};
use crate::notify::github::{Deployments, NewDeployment, NewStatus, description};
use crate::notify::{Event, Fanout, Recorder, Sink};
use crate::rollout::steps::Report;
use crate::trigger::github::{EventTrigger, from_event};

#[derive(Debug, Args)]
pub struct CiArgs {
    /// The environment the job declares (`environment:` in the workflow,
    /// whose protection rules and secrets are the pin): slipway deploys only
    /// there, and refuses an event whose branch maps anywhere else.
    #[arg(long, env = "SLIPWAY_ENVIRONMENT")]
    pub environment: Option<String>,
    /// Record the rollout as a GitHub Deployment (turn off when the
    /// workflow's own `environment:` already creates one).
    #[arg(long, env = "SLIPWAY_CREATE_DEPLOYMENT", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::FalseyValueParser::new())]
    pub create_deployment: bool,
    /// Print the plan and change nothing.
    #[arg(long, env = "SLIPWAY_DRY_RUN", value_parser = clap::builder::FalseyValueParser::new())]
    pub dry_run: bool,
}

pub async fn ci(ctx: &Context, args: &CiArgs) -> anyhow::Result<u8> {
    let actions = Actions::detect();
    let event_name = std::env::var("GITHUB_EVENT_NAME")
        .context("GITHUB_EVENT_NAME is not set; `slipway ci` runs inside GitHub Actions")?;
    let event_path = std::env::var("GITHUB_EVENT_PATH")
        .context("GITHUB_EVENT_PATH is not set; `slipway ci` runs inside GitHub Actions")?;
    let payload = read_event(&event_path)?;
    let (branch, commit) = match from_event(&event_name, &payload)? {
        EventTrigger::Skip { reason } => return Ok(skip(ctx, actions.as_ref(), &reason)),
        EventTrigger::Push { branch, commit } => (branch, commit),
    };
    let repo = ctx.open_repo()?;
    let commit = repo.resolve(&commit)?;
    let config = match ctx.config_at(&repo, &commit) {
        Ok(config) => config,
        Err(e) => {
            annotate_config_error(ctx, actions.as_ref(), &e);
            return Err(e);
        }
    };
    if let Some(actions) = &actions {
        for value in secret_values(&config) {
            actions.mask(&value);
        }
    }
    // An unset action input arrives as an empty variable.
    let declared = args.environment.as_ref().filter(|e| !e.is_empty());
    let mapped = ctx
        .reach()
        .environment_for_push(&config, &branch)
        .map_err(|violation| refuse(actions.as_ref(), &violation.to_string()))?;
    let environment = match (declared, mapped) {
        (_, None) => {
            return Ok(skip(
                ctx,
                actions.as_ref(),
                &format!("`{branch}` deploys to no environment; nothing to do"),
            ));
        }
        (Some(declared), Some((env, _))) if *declared == env => env,
        (Some(declared), Some((env, _))) => {
            return Err(refuse(
                actions.as_ref(),
                &format!(
                    "this job declares environment `{declared}`, but `{branch}` deploys `{env}`; slipway deploys only to the job's environment, whose protection rules and secrets guard it. Run `{env}` deploys in a job with `environment: {env}`"
                ),
            ));
        }
        (None, Some((env, _))) => {
            return Err(refuse(
                actions.as_ref(),
                &format!(
                    "`{branch}` deploys `{env}`, but this job declares no environment; add `environment: {env}` to the job and pass `environment: {env}` to the action (SLIPWAY_ENVIRONMENT), so GitHub's protection rules and environment secrets guard it"
                ),
            ));
        }
    };
    let env_url = config.environment(&environment)?.url.clone();
    let loaded = Loaded {
        repo,
        commit,
        config,
        branch,
    };
    if !args.dry_run
        && let Some(reason) = super::deploy::already_there(ctx, &loaded, &environment).await
    {
        if let Some(actions) = &actions {
            actions.set_output("environment", &environment);
            actions.set_output("release-id", &crate::plan::release_id(&loaded.commit));
            actions.set_output("commit", &loaded.commit.id);
        }
        return Ok(skip(ctx, actions.as_ref(), &reason));
    }
    let github = if args.create_deployment && !args.dry_run {
        deployments(ctx, actions.as_ref())
    } else {
        None
    };
    let mut tracker = Tracker::start(github, &loaded, &environment, actions.as_ref()).await;

    let recorder = Arc::new(Recorder::default());
    let sink: Arc<dyn Sink> = Arc::new(Fanout(vec![
        Arc::clone(&ctx.out) as Arc<dyn Sink>,
        Arc::clone(&recorder) as Arc<dyn Sink>,
    ]));
    let deploy_args = DeployArgs {
        environment: environment.clone(),
        git_ref: None,
        dry_run: args.dry_run,
        artifact: None,
        wait: None,
        branch: None,
        force: false,
        json: false,
    };
    let opened = std::sync::atomic::AtomicBool::new(false);
    let stage = |name: &str| {
        if let Some(a) = &actions {
            if opened.swap(true, std::sync::atomic::Ordering::Relaxed) {
                a.endgroup();
            }
            a.group(name);
        }
    };
    let result = execute(ctx, &loaded, &deploy_args, sink, &stage).await;
    if let Some(a) = &actions
        && opened.load(std::sync::atomic::Ordering::Relaxed)
    {
        a.endgroup();
    }
    let outcome = match &result {
        Ok(Some(super::deploy::Done::Deployed(report))) => Outcome::Deployed(report.clone()),
        Ok(_) => Outcome::DryRun,
        Err(e) => Outcome::Failed(format!("{e:#}")),
    };
    tracker
        .finish(&outcome, env_url.as_deref(), actions.as_ref())
        .await;
    if let Some(actions) = &actions {
        let release = crate::plan::release_id(&loaded.commit);
        actions.set_output("environment", &environment);
        actions.set_output("release-id", &release);
        actions.set_output("commit", &loaded.commit.id);
        actions.set_output(
            "deployed",
            if matches!(outcome, Outcome::Deployed(_)) {
                "true"
            } else {
                "false"
            },
        );
        actions.summary(&summary(
            &loaded,
            &environment,
            &release,
            &outcome,
            &recorder.events(),
        ));
        if let Outcome::Failed(message) = &outcome {
            actions.error(None, "slipway deploy failed", message);
        }
    }
    match result {
        Ok(Some(super::deploy::Done::Deployed(report))) => {
            ctx.out.result(&format!("deployed {}", report.release));
            Ok(exit::OK)
        }
        Ok(_) => Ok(exit::OK),
        Err(e) => Err(e),
    }
}

enum Outcome {
    Deployed(Report),
    DryRun,
    Failed(String),
}

/// The event payload, read with a cap: the path comes from the environment
/// and could name anything (a fifo fed forever, `/dev/zero`).
fn read_event(path: &str) -> anyhow::Result<String> {
    let file =
        std::fs::File::open(path).with_context(|| format!("reading the event payload {path}"))?;
    Ok(crate::limits::read_capped_text(
        file,
        crate::limits::EVENT_FILE_BYTES,
        &format!("the event payload {path}"),
        "GITHUB_EVENT_PATH must name the event file GitHub Actions wrote for this job",
    )?)
}

fn skip(ctx: &Context, actions: Option<&Actions>, reason: &str) -> u8 {
    match actions {
        Some(actions) => {
            actions.notice(reason);
            actions.set_output("deployed", "false");
        }
        None => ctx.out.result(&format!("slipway: {reason}")),
    }
    exit::OK
}

fn annotate_config_error(ctx: &Context, actions: Option<&Actions>, e: &anyhow::Error) {
    let Some(actions) = actions else { return };
    if let Some(config) = e.downcast_ref::<ConfigError>() {
        actions.error(
            Some((&ctx.config_path, config.line, config.column)),
            "slipway config",
            &format!("`{}`: {}", config.key, config.message),
        );
    }
}

/// Every value the config names as secret: deploy secrets and notifier
/// credentials (`*_env` keys).
fn secret_values(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config
        .environments
        .values()
        .flat_map(|e| e.secrets.clone())
        .collect();
    collect_env_keys(&config.notify, &mut names);
    names.push("SLIPWAY_GITHUB_TOKEN".to_owned());
    names
        .iter()
        .filter_map(|n| std::env::var(n).ok())
        .filter(|v| !v.is_empty())
        .collect()
}

fn collect_env_keys(table: &toml::Table, names: &mut Vec<String>) {
    for (key, value) in table {
        match value {
            toml::Value::String(name) if key.ends_with("_env") => names.push(name.clone()),
            toml::Value::Table(inner) => collect_env_keys(inner, names),
            _ => {}
        }
    }
}

fn deployments(ctx: &Context, actions: Option<&Actions>) -> Option<Deployments> {
    let token = ["SLIPWAY_GITHUB_TOKEN", "GITHUB_TOKEN"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))?;
    let repository = std::env::var("GITHUB_REPOSITORY").ok()?;
    let api =
        std::env::var("GITHUB_API_URL").unwrap_or_else(|_| "https://api.github.com".to_owned());
    match Deployments::new(&api, &repository, &token) {
        Ok(d) => Some(d),
        Err(e) => {
            warn(ctx, actions, &e.to_string());
            None
        }
    }
}

fn warn(ctx: &Context, actions: Option<&Actions>, message: &str) {
    match actions {
        Some(a) => a.warning(message),
        None => ctx.out.warn(message),
    }
}

/// The GitHub Deployment of this run, if one could be created.
struct Tracker {
    github: Option<(Deployments, u64)>,
    log_url: Option<String>,
}

impl Tracker {
    async fn start(
        github: Option<Deployments>,
        loaded: &Loaded,
        environment: &str,
        actions: Option<&Actions>,
    ) -> Self {
        let log_url = run_url();
        let Some(client) = github else {
            return Self {
                github: None,
                log_url,
            };
        };
        let release = crate::plan::release_id(&loaded.commit);
        let request = NewDeployment {
            commit: &loaded.commit.id,
            task: "deploy",
            auto_merge: false,
            required_contexts: Vec::new(),
            environment,
            production_environment: environment == "production",
            description: description(&format!("slipway: {} {release}", loaded.config.app.name)),
            payload: serde_json::json!({ "app": loaded.config.app.name, "release_id": release, "branch": loaded.branch }),
        };
        let id = match client.create(&request).await {
            Ok(id) => id,
            Err(e) => {
                warn_plain(
                    actions,
                    &format!("{e}; deploying without a GitHub deployment"),
                );
                return Self {
                    github: None,
                    log_url,
                };
            }
        };
        let status = NewStatus {
            state: "in_progress",
            log_url: log_url.as_deref(),
            environment_url: None,
            description: description("rolling out"),
        };
        if let Err(e) = client.status(id, &status).await {
            warn_plain(actions, &e.to_string());
        }
        Self {
            github: Some((client, id)),
            log_url,
        }
    }

    async fn finish(
        &mut self,
        outcome: &Outcome,
        env_url: Option<&str>,
        actions: Option<&Actions>,
    ) {
        let Some((client, id)) = &self.github else {
            return;
        };
        let (state, text) = match outcome {
            Outcome::Deployed(r) => ("success", format!("live: {}", r.release)),
            Outcome::DryRun => ("inactive", "dry run".to_owned()),
            Outcome::Failed(m) => ("failure", m.lines().next().unwrap_or("failed").to_owned()),
        };
        let status = NewStatus {
            state,
            log_url: self.log_url.as_deref(),
            environment_url: env_url,
            description: description(&text),
        };
        if let Err(e) = client.status(*id, &status).await {
            warn_plain(actions, &e.to_string());
        }
    }
}

fn warn_plain(actions: Option<&Actions>, message: &str) {
    match actions {
        Some(a) => a.warning(message),
        None => super::output::err_line(&format!("warning: {message}")),
    }
}

/// `$GITHUB_SERVER_URL/$GITHUB_REPOSITORY/actions/runs/$GITHUB_RUN_ID`.
fn run_url() -> Option<String> {
    let server = std::env::var("GITHUB_SERVER_URL").ok()?;
    let repo = std::env::var("GITHUB_REPOSITORY").ok()?;
    let run = std::env::var("GITHUB_RUN_ID").ok()?;
    Some(format!("{server}/{repo}/actions/runs/{run}"))
}

/// The job summary: what shipped, where, and how long each phase took.
fn summary(
    loaded: &Loaded,
    environment: &str,
    release: &str,
    outcome: &Outcome,
    events: &[Event],
) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let verdict = match outcome {
        Outcome::Deployed(r) => format!(
            "✅ live on every host (closed for {:.2}s, total {:.1}s)",
            r.closed_window.as_secs_f64(),
            r.duration.as_secs_f64()
        ),
        Outcome::DryRun => "dry run: nothing changed".to_owned(),
        Outcome::Failed(m) => format!("❌ failed: {}", m.lines().next().unwrap_or_default()),
    };
    let _ = writeln!(
        md,
        "### slipway: {} → {environment}\n",
        loaded.config.app.name
    );
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| environment | `{environment}` |");
    let _ = writeln!(
        md,
        "| commit | `{}` {} |",
        loaded.commit.short,
        loaded.commit.subject.replace('|', "\\|")
    );
    let _ = writeln!(md, "| release | `{release}` |");
    let _ = writeln!(md, "| outcome | {verdict} |\n");
    let mut phases: Vec<crate::notify::Phase> = Vec::new();
    let mut hosts: Vec<String> = Vec::new();
    for event in events {
        if let Event::HostPhase { host, phase, .. } | Event::HostFailed { host, phase, .. } = event
        {
            if !phases.contains(phase) {
                phases.push(*phase);
            }
            if !hosts.contains(host) {
                hosts.push(host.clone());
            }
        }
    }
    if hosts.is_empty() {
        return md;
    }
    let _ = writeln!(
        md,
        "| host | {} |",
        phases
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(md, "|---|{}", "---|".repeat(phases.len()));
    for host in &hosts {
        let cells: Vec<String> = phases
            .iter()
            .map(|phase| {
                events
                    .iter()
                    .find_map(|e| match e {
                        Event::HostPhase {
                            host: h,
                            phase: p,
                            took,
                        } if h == host && p == phase => Some(format!("{:.2}s", took.as_secs_f64())),
                        Event::HostFailed {
                            host: h, phase: p, ..
                        } if h == host && p == phase => Some("❌".to_owned()),
                        _ => None,
                    })
                    .unwrap_or_default()
            })
            .collect();
        let _ = writeln!(md, "| `{host}` | {} |", cells.join(" | "));
    }
    md
}

/// A deploy slipway will not run: one `::error` line, exit 2.
fn refuse(actions: Option<&Actions>, why: &str) -> anyhow::Error {
    if let Some(a) = actions {
        a.error(None, "slipway refused to deploy", why);
    }
    anyhow::Error::new(crate::config::PinViolation {
        environment: String::new(),
        key: String::new(),
        message: why.to_owned(),
    })
}
