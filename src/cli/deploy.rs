//! `slipway deploy`, `slipway rollback` and `slipway build`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use super::context::{Context, Loaded, deploy_id, deployer};
use super::exit;
use crate::artifact::{self, Artifact};
use crate::config::ArtifactFormat;
use crate::notify::Sink;
use crate::pipeline::{self, Target};
use crate::plan::{self, Plan};
use crate::rollout::state::Action;
use crate::rollout::state::CanaryState;
use crate::rollout::steps::{Report, Rollout, Secrets, Upload};
use crate::rollout::{Cluster, Program, RolloutError, canary, executor, manage};
use crate::source::Commit;

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The environment to deploy to, as named in slipway.toml.
    pub environment: String,
    /// The branch, tag or commit to deploy (default: the environment's branch).
    #[arg(long = "ref", env = "SLIPWAY_REF")]
    pub git_ref: Option<String>,
    /// Print the plan (hosts, release id, steps) and change nothing.
    #[arg(long, env = "SLIPWAY_DRY_RUN", value_parser = clap::builder::FalseyValueParser::new())]
    pub dry_run: bool,
    /// Deploy this prebuilt artifact (from `slipway build`) instead of
    /// building; it is checked against the commit before anything happens.
    #[arg(long, env = "SLIPWAY_ARTIFACT")]
    pub artifact: Option<PathBuf>,
    /// Wait this long for another rollout's lock (e.g. "5m"), overriding
    /// the environment's `lock_wait`.
    #[arg(long, env = "SLIPWAY_WAIT", value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
    /// The branch being deployed, when --ref is a commit id (set by hooks).
    #[arg(long, hide = true)]
    pub branch: Option<String>,
    /// Deploy even when the release is already live, or the local branch is
    /// behind its upstream.
    #[arg(long, env = "SLIPWAY_FORCE", value_parser = clap::builder::FalseyValueParser::new())]
    pub force: bool,
    /// Print one JSON document on stdout when done (the outcome, or with
    /// --dry-run the plan and the problems found); progress stays on
    /// stderr. Fields: README, "Scripting with --json".
    #[arg(long, env = "SLIPWAY_JSON", value_parser = clap::builder::FalseyValueParser::new())]
    pub json: bool,
}

/// `deploy --json`: what happened, for scripts. Fields only ever get added.
#[derive(Debug, Default, serde::Serialize)]
pub struct Outcome {
    pub environment: String,
    pub release: String,
    /// `deployed`, `already-live`, `dry-run`, `failed`, `usage`,
    /// `rolled-back`, `attention`, `locked`.
    pub outcome: &'static str,
    pub exit_code: u8,
    pub previous: Option<String>,
    pub closed_window_s: Option<f64>,
    pub duration_s: Option<f64>,
    pub error: Option<String>,
    /// With --dry-run: the plan that would run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Program>,
    /// With --dry-run: every problem the real run would hit.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The environment to roll back.
    pub environment: String,
    /// Switch to this release id instead of the one before the current.
    #[arg(long, env = "SLIPWAY_ROLLBACK_TO")]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The branch, tag or commit to build.
    #[arg(long = "ref", env = "SLIPWAY_REF", default_value = "HEAD")]
    pub git_ref: String,
    /// Where to write the artifact and its manifest.
    #[arg(long, env = "SLIPWAY_OUT", default_value = ".")]
    pub out: PathBuf,
    /// The artifact format (default: `app.artifact` from slipway.toml).
    #[arg(long, env = "SLIPWAY_FORMAT", value_enum)]
    pub format: Option<FormatArg>,
    /// Sign the artifact with this unencrypted OpenSSH ed25519 private key
    /// (`ssh-keygen -t ed25519 -N '' -f KEY`), writing `<artifact>.sig`.
    #[arg(long, env = "SLIPWAY_SIGN_KEY", value_name = "KEY")]
    pub sign: Option<PathBuf>,
}

/// `--format` values, spelled as in slipway.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    #[value(name = "tar.gz")]
    TarGz,
    Deb,
}

impl From<FormatArg> for ArtifactFormat {
    fn from(format: FormatArg) -> Self {
        match format {
            FormatArg::TarGz => ArtifactFormat::TarGz,
            FormatArg::Deb => ArtifactFormat::Deb,
        }
    }
}

pub async fn deploy(ctx: &Context, args: DeployArgs) -> anyhow::Result<u8> {
    if !args.json {
        return deploy_as_told(ctx, &args, &mut Outcome::default()).await;
    }
    // Results for people go to stderr; stdout carries the one document.
    ctx.out.results_to_stderr();
    let mut outcome = Outcome {
        environment: args.environment.clone(),
        ..Outcome::default()
    };
    let result = deploy_as_told(ctx, &args, &mut outcome).await;
    match &result {
        Ok(code) => {
            outcome.exit_code = *code;
            if outcome.outcome.is_empty() {
                outcome.outcome = "deployed";
            }
        }
        Err(e) => {
            let code = super::exit_code(e);
            outcome.exit_code = code;
            outcome.outcome = match code {
                exit::USAGE => "usage",
                exit::ROLLED_BACK => "rolled-back",
                exit::ATTENTION => "attention",
                exit::LOCKED => "locked",
                _ => "failed",
            };
            outcome.error = Some(format!("{e:#}"));
        }
    }
    super::output::out_line(&serde_json::to_string_pretty(&outcome)?);
    result
}

async fn deploy_as_told(
    ctx: &Context,
    args: &DeployArgs,
    outcome: &mut Outcome,
) -> anyhow::Result<u8> {
    let mut loaded = ctx.load(&args.environment, args.git_ref.as_deref())?;
    outcome.release = crate::plan::release_id(&loaded.commit);
    if let Some(branch) = &args.branch {
        loaded.branch.clone_from(branch);
    }
    if args.git_ref.is_none() && !args.force {
        ctx.refuse_if_behind_upstream(&loaded)?;
    }
    for note in ctx.working_tree_notes(&loaded) {
        ctx.out.warn(&note);
    }
    if !args.force
        && !args.dry_run
        && let Some(states) = live_states(ctx, &loaded, &args.environment).await
    {
        if let Some(reason) = already_there_in(&loaded, &args.environment, &states) {
            ctx.out
                .result(&format!("{reason} (--force deploys it again)"));
            outcome.outcome = "already-live";
            return Ok(exit::OK);
        }
        refuse_going_backwards(&loaded, &args.environment, &states)?;
    }
    let sink = Arc::clone(&ctx.out) as Arc<dyn Sink>;
    let report = execute(ctx, &loaded, args, sink, &|_| {}).await?;
    match report {
        Some(Done::Deployed(report)) => {
            outcome.previous.clone_from(&report.previous);
            outcome.closed_window_s = Some(report.closed_window.as_secs_f64());
            outcome.duration_s = Some(report.duration.as_secs_f64());
            Ok(finish(ctx, &report))
        }
        Some(Done::DryRun(program)) => {
            outcome.outcome = "dry-run";
            outcome.plan = Some(program);
            Ok(exit::OK)
        }
        None => Ok(exit::OK),
    }
}

/// What `execute` did when it did not fail.
pub enum Done {
    Deployed(Report),
    /// The dry run found no problem; this is the plan it printed.
    DryRun(Program),
}

/// A commit older than the live one (an ancestor of it) would silently
/// roll the environment back: a stale local branch, a wrong `--ref`.
/// Refused unless `--force`; `slipway rollback` is the way back.
fn refuse_going_backwards(
    loaded: &Loaded,
    environment: &str,
    states: &[crate::rollout::HostState],
) -> anyhow::Result<()> {
    let Some(live) = states.iter().find_map(|s| s.current.clone()) else {
        return Ok(());
    };
    let Some(live_commit) = live.rsplit('-').next() else {
        return Ok(());
    };
    if loaded
        .repo
        .is_ancestor(&loaded.commit.id, live_commit)
        .unwrap_or(false)
    {
        anyhow::bail!(
            "{} ({}) is older than the live release {live} on {environment}: deploying it would roll {environment} back; to go back run `slipway rollback {environment} --to <release>`, or pass --force if this is really what you want",
            loaded.commit.short,
            loaded.commit.subject
        );
    }
    Ok(())
}

/// Why there is nothing to deploy: the commit's release is already live on
/// every host, or another run is rolling it out right now. One merge fires
/// several events (a `pull_request` closed and a `push`), a re-run job
/// repeats one, and an operator may run the same deploy twice; none of them
/// must close the cluster again. `None` when the hosts cannot be read: the
/// deploy then reports that properly.
pub(super) async fn already_there(
    ctx: &Context,
    loaded: &Loaded,
    environment: &str,
) -> Option<String> {
    let states = live_states(ctx, loaded, environment).await?;
    already_there_in(loaded, environment, &states)
}

/// Every host's state, or `None` when they cannot all be read (the deploy
/// then reports that properly).
async fn live_states(
    ctx: &Context,
    loaded: &Loaded,
    environment: &str,
) -> Option<Vec<crate::rollout::HostState>> {
    let env = loaded.config.environment(environment).ok()?;
    let cluster = ctx.connect(env).await.ok()?;
    cluster.read_state().await.ok()
}

fn already_there_in(
    loaded: &Loaded,
    environment: &str,
    states: &[crate::rollout::HostState],
) -> Option<String> {
    let release = crate::plan::release_id(&loaded.commit);
    // Live everywhere, with nothing interrupted or running: an interrupted
    // rollout must still block (and be recovered), never be skipped.
    if !states.is_empty()
        && states.iter().all(|s| {
            s.current.as_deref() == Some(release.as_str())
                && s.journal.is_none()
                && s.lock.is_none()
        })
    {
        return Some(format!(
            "{release} is already live on {environment}; nothing to deploy"
        ));
    }
    // A lock whose lease expired is a dead runner's: its release is not
    // being deployed, and the deploy must go on to say so.
    let live = |lock: &crate::rollout::LockOwner, age: Option<Duration>| {
        lock.lease_ms
            .is_none_or(|lease| age.is_none_or(|age| age < Duration::from_millis(lease)))
    };
    let in_progress = states.iter().find_map(|s| match (&s.lock, &s.journal) {
        (Some(Ok(lock)), Some(Ok(journal)))
            if journal.release == release && live(lock, s.lock_age) =>
        {
            Some(lock.deploy_id.clone())
        }
        _ => None,
    });
    in_progress.map(|deploy_id| {
        format!(
            "{release} is already being deployed to {environment} (deploy {deploy_id}); nothing to deploy"
        )
    })
}

/// Deploys an already loaded commit; the hooks and the demo come here too.
pub async fn deploy_loaded(
    ctx: &Context,
    loaded: &Loaded,
    args: &DeployArgs,
) -> anyhow::Result<u8> {
    let sink = Arc::clone(&ctx.out) as Arc<dyn Sink>;
    match execute(ctx, loaded, args, sink, &|_| {}).await? {
        Some(Done::Deployed(report)) => Ok(finish(ctx, &report)),
        _ => Ok(exit::OK),
    }
}

/// Builds and rolls out, or with --dry-run looks (an error when the look
/// found problems). `stage` is told when the
/// build and the rollout begin (CI groups its log by them).
pub async fn execute(
    ctx: &Context,
    loaded: &Loaded,
    args: &DeployArgs,
    sink: Arc<dyn Sink>,
    stage: &dyn Fn(&str),
) -> anyhow::Result<Option<Done>> {
    let env = loaded.config.environment(&args.environment)?;
    let mut plan = plan::plan(
        &loaded.config,
        &args.environment,
        env,
        &loaded.branch,
        &loaded.commit,
        &deployer(),
    );
    if let Some(wait) = args.wait {
        plan.lock_wait = wait;
    }
    let program = crate::rollout::compile(&plan, Action::Deploy);
    if args.dry_run {
        let preview = super::preview::preview(ctx, loaded, env, &plan, &program).await;
        ctx.out.result(preview.text.trim_end());
        anyhow::ensure!(
            preview.problems.is_empty(),
            "the dry run found {} problem(s) the real deploy would hit:\n  - {}",
            preview.problems.len(),
            preview.problems.join("\n  - ")
        );
        return Ok(Some(Done::DryRun(program)));
    }
    refuse_frozen(ctx, env, &args.environment).await?;
    let secrets = resolve_secrets(&plan)?;
    let deploy_id = deploy_id();
    let notifiers = super::notify::start(&loaded.config, &plan, &deploy_id, Action::Deploy)?;
    let sink: Arc<dyn Sink> = match &notifiers {
        Some(n) => Arc::new(crate::notify::Fanout(vec![
            sink,
            Arc::clone(n) as Arc<dyn Sink>,
        ])),
        None => sink,
    };
    stage("build");
    let workdir = crate::scratch::dir("artifact")?;
    let artifact = match &args.artifact {
        Some(path) => prebuilt(
            ctx,
            path,
            &plan,
            // The owner's pinned keys, when there are any, are the only ones.
            match &ctx.pins {
                Some((pins, _)) if !pins.artifact.trusted_keys.is_empty() => {
                    &pins.artifact.trusted_keys
                }
                _ => &loaded.config.artifact.trusted_keys,
            },
            workdir.path(),
        )?,
        None => build_for(
            ctx,
            loaded,
            (&plan.branch, &plan.release_id),
            (plan.artifact, Some(&plan.deploy_to)),
            workdir.path(),
        )?,
    };
    ctx.out.info(&format!(
        "  artifact {} ({} files, sha256 {})",
        artifact.path.display(),
        artifact.manifest.file_count,
        &artifact.sha256[..16]
    ));
    stage("rollout");
    let cluster = ctx.connect(env).await?;
    let rollout = Rollout {
        plan: Arc::new(plan),
        action: Action::Deploy,
        artifact: Some(Upload {
            path: artifact.path.clone(),
            sha256: artifact.sha256.clone(),
            size: artifact.size,
            // Every tar.gz here was written by slipway (packed, or
            // re-serialised by `prebuilt`), so its length is known.
            tar_size: artifact.tar_size.unwrap_or(0),
        }),
        secrets,
        deploy_id,
        sink,
        interrupt: ctx.interrupt.clone(),
    };
    let result = executor::run(&cluster, &rollout, &program).await;
    // The notifiers can only finish once the rollout's sink is gone.
    drop(rollout);
    super::notify::finish(ctx, notifiers).await;
    Ok(Some(Done::Deployed(result?)))
}

/// A frozen environment refuses before anything is built. Hosts that
/// cannot be reached here are left to the rollout to report.
pub(super) async fn refuse_frozen(
    ctx: &Context,
    env: &crate::config::Environment,
    environment: &str,
) -> Result<(), RolloutError> {
    match ctx.connect(env).await {
        Ok(cluster) => crate::rollout::lock::refuse_frozen(&cluster, environment).await,
        Err(_) => Ok(()),
    }
}

/// What `--dry-run` prints: the commit and release, then the program the
/// executor would walk, step by step.
pub(super) fn dry_run(plan: &Plan, program: &Program) -> String {
    format!(
        "commit  {} {} ({})\nrelease {}\npath    {}\n{}",
        plan.commit.short,
        plan.commit.subject,
        plan.branch,
        plan.release_id,
        plan.deploy_to,
        program.render()
    )
}

/// Runs a program that needs no build (rollback, revert, promote,
/// recover), telling the config's notifiers about it like a deploy.
pub(super) async fn run_program(
    ctx: &Context,
    config: &crate::config::Config,
    cluster: &Cluster,
    mut rollout: Rollout,
    program: &Program,
) -> anyhow::Result<Report> {
    // A freeze refuses before anything starts (or is announced); recovery
    // repairs and is never frozen out.
    if rollout.action != Action::Recover {
        crate::rollout::lock::refuse_frozen(cluster, &rollout.plan.environment).await?;
    }
    let notifiers =
        super::notify::start(config, &rollout.plan, &rollout.deploy_id, rollout.action)?;
    if let Some(n) = &notifiers {
        rollout.sink = Arc::new(crate::notify::Fanout(vec![
            Arc::clone(&rollout.sink),
            Arc::clone(n) as Arc<dyn Sink>,
        ]));
    }
    let result = executor::run(cluster, &rollout, program).await;
    drop(rollout);
    super::notify::finish(ctx, notifiers).await;
    Ok(result?)
}

fn finish(ctx: &Context, report: &Report) -> u8 {
    ctx.out.result(&format!("deployed {}", report.release));
    exit::OK
}

/// Secret values from the deployer's environment; all must be set before
/// anything starts, so a rollout never stops half way for want of one.
pub fn resolve_secrets(plan: &Plan) -> Result<Secrets, RolloutError> {
    plan.secrets
        .iter()
        .map(|name| {
            std::env::var(name)
                .map(|value| (name.clone(), value))
                .map_err(|_| RolloutError::MissingSecret(name.clone()))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Secrets)
}

fn build_for(
    ctx: &Context,
    loaded: &Loaded,
    (branch, release_id): (&str, &str),
    (format, deploy_to): (ArtifactFormat, Option<&str>),
    out: &std::path::Path,
) -> anyhow::Result<Artifact> {
    let sandbox = ctx.sandbox(&loaded.config)?;
    let target = Target {
        config: &loaded.config,
        commit: &loaded.commit,
        branch,
        release_id,
        format,
        deploy_to,
        sandbox: &sandbox,
    };
    let out_console = Arc::clone(&ctx.out);
    let artifact = pipeline::build(&loaded.repo, &target, out, &mut |step, line| {
        out_console.info(&format!("  build {step} | {line}"));
    })?;
    Ok(artifact)
}

/// A prebuilt artifact must be the build of the commit being deployed,
/// signed by a trusted key when `[artifact] trusted_keys` is set. For a
/// tarball, what is returned, and uploaded, is slipway's own
/// re-serialisation of the entries it checked (see
/// `artifact::open_for_upload`), written into `workdir`; a package goes up
/// as checked (`artifact::open_deb`).
fn prebuilt(
    ctx: &Context,
    path: &std::path::Path,
    plan: &Plan,
    trusted_keys: &[String],
    workdir: &std::path::Path,
) -> anyhow::Result<Artifact> {
    let (original, upload) = match plan.artifact {
        ArtifactFormat::TarGz => {
            let opened = artifact::open_for_upload(path, workdir)?;
            (opened.original, Some(opened.upload))
        }
        ArtifactFormat::Deb => {
            let prefix = plan
                .deb
                .package_prefix
                .clone()
                .unwrap_or_else(|| artifact::default_package_prefix(&plan.app));
            let deb = artifact::open_deb(
                path,
                &artifact::DebExpect {
                    deploy_to: &plan.deploy_to,
                    package_prefix: &prefix,
                    release_id: &plan.release_id,
                },
            )?;
            (deb, None)
        }
    };
    let original = &original;
    if trusted_keys.is_empty() {
        ctx.out.warn(&format!(
            "{} is not signature-checked ([artifact] trusted_keys is empty): slipway trusts the file's claim about its commit ({} of {}); set [artifact] trusted_keys and sign builds with `slipway build --sign KEY`",
            path.display(),
            original.manifest.commit,
            original.manifest.app
        ));
    } else {
        let signer = artifact::verify_signature(path, &original.sha256, trusted_keys)?;
        ctx.out.info(&format!(
            "  signature by {} ({}) verified",
            signer.comment, signer.fingerprint
        ));
    }
    anyhow::ensure!(
        original.manifest.commit == plan.commit.id && original.manifest.app == plan.app,
        "{} was built from {} of {}, not {} of {}; build it again from the commit you deploy",
        path.display(),
        original.manifest.commit,
        original.manifest.app,
        plan.commit.id,
        plan.app
    );
    Ok(upload.unwrap_or_else(|| original.clone()))
}

pub async fn rollback(ctx: &Context, args: RollbackArgs) -> anyhow::Result<u8> {
    let loaded = ctx.load(&args.environment, None)?;
    let env = loaded.config.environment(&args.environment)?;
    let cluster = ctx.connect(env).await?;
    if args.to.is_none()
        && let Ok(in_progress) = canary::current(&cluster, &args.environment).await
    {
        let rollout = canary_rollout(
            ctx,
            &loaded,
            &args.environment,
            &in_progress,
            Action::Revert,
        )?;
        let program = canary::revert_program(&rollout.plan, &in_progress);
        let report = run_program(ctx, &loaded.config, &cluster, rollout, &program).await?;
        ctx.out.result(&format!(
            "canary of {} reverted; hosts back on {}",
            in_progress.release,
            report.previous.as_deref().unwrap_or("no release")
        ));
        return Ok(exit::OK);
    }
    let states = cluster.read_state().await?;
    let current = states.first().and_then(|s| s.current.clone());
    let history = manage::history(&cluster).await?;
    let (release, commit_id) = match &args.to {
        Some(id) => {
            let commit = history
                .iter()
                .rev()
                .find(|e| &e.release == id)
                .map(|e| e.commit.clone());
            (id.clone(), commit.unwrap_or_default())
        }
        None => {
            let target = manage::rollback_target(&history, current.as_deref()).with_context(|| {
                format!(
                    "no earlier release to roll back to from {} (use --to with an id from `slipway releases {}`)",
                    current.as_deref().unwrap_or("nothing"),
                    args.environment
                )
            })?;
            (target.release, target.commit)
        }
    };
    let short = release.rsplit('-').next().unwrap_or_default().to_owned();
    let commit = Commit {
        id: commit_id,
        short,
        time: 0,
        subject: format!("rollback to {release}"),
        author: String::new(),
        committer: String::new(),
    };
    let mut plan = plan::plan(
        &loaded.config,
        &args.environment,
        env,
        &loaded.branch,
        &commit,
        &deployer(),
    );
    plan.release_id = release;
    let program = crate::rollout::compile(&plan, Action::Rollback);
    let rollout = Rollout {
        plan: Arc::new(plan),
        action: Action::Rollback,
        artifact: None,
        secrets: Secrets::default(),
        deploy_id: deploy_id(),
        sink: Arc::clone(&ctx.out) as Arc<dyn Sink>,
        interrupt: ctx.interrupt.clone(),
    };
    let report = run_program(ctx, &loaded.config, &cluster, rollout, &program).await?;
    ctx.out
        .result(&format!("rolled back to {}", report.release));
    Ok(exit::OK)
}

/// A rollout that switches hosts to (or away from) a canary's release.
fn canary_rollout(
    ctx: &Context,
    loaded: &Loaded,
    environment: &str,
    in_progress: &CanaryState,
    action: Action,
) -> anyhow::Result<Rollout> {
    let env = loaded.config.environment(environment)?;
    let commit = Commit {
        id: in_progress.commit.clone(),
        short: in_progress
            .release
            .rsplit('-')
            .next()
            .unwrap_or_default()
            .to_owned(),
        time: 0,
        subject: format!("canary {}", in_progress.release),
        author: String::new(),
        committer: String::new(),
    };
    let mut plan = plan::plan(
        &loaded.config,
        environment,
        env,
        &loaded.branch,
        &commit,
        &deployer(),
    );
    plan.release_id.clone_from(&in_progress.release);
    Ok(Rollout {
        plan: Arc::new(plan),
        action,
        artifact: None,
        secrets: Secrets::default(),
        deploy_id: deploy_id(),
        sink: Arc::clone(&ctx.out) as Arc<dyn Sink>,
        interrupt: ctx.interrupt.clone(),
    })
}

/// `slipway promote`: finish a canary.
pub async fn promote(ctx: &Context, args: &super::inspect::EnvArgs) -> anyhow::Result<u8> {
    let loaded = ctx.load(&args.environment, None)?;
    let env = loaded.config.environment(&args.environment)?;
    let cluster = ctx.connect(env).await?;
    let in_progress = canary::current(&cluster, &args.environment).await?;
    let rollout = canary_rollout(
        ctx,
        &loaded,
        &args.environment,
        &in_progress,
        Action::Promote,
    )?;
    let program = canary::promote_program(&rollout.plan, &in_progress);
    let report = run_program(ctx, &loaded.config, &cluster, rollout, &program).await?;
    ctx.out
        .result(&format!("promoted {} to every host", report.release));
    Ok(exit::OK)
}

pub fn build(ctx: &Context, args: &BuildArgs) -> anyhow::Result<u8> {
    let repo = ctx.open_repo()?;
    let commit = repo.resolve(&args.git_ref)?;
    let config = ctx.config_at(&repo, &commit)?;
    // The branch the package describes and the build sees: the one the ref
    // names (HEAD: the checked-out branch); for a commit id, the branch of
    // the only environment, else the ref as given.
    let branch = repo.branch_of(&args.git_ref).unwrap_or_else(|| {
        let mut envs = config.environments.values();
        match (envs.next(), envs.next()) {
            (Some(only), None) => only.branch.clone(),
            _ => args.git_ref.clone(),
        }
    });
    let release_id = plan::release_id(&commit);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let loaded = Loaded {
        repo,
        commit,
        config,
        branch: branch.clone(),
    };
    let format = args
        .format
        .map_or(loaded.config.app.artifact, ArtifactFormat::from);
    // A package installs under deploy_to: the environment this branch
    // deploys to, or the one path every environment shares.
    let deploy_to = match loaded.config.environment_for_branch(&branch) {
        Some((_, env)) => Some(env.deploy_to.clone()),
        None => {
            let mut paths = loaded.config.environments.values().map(|e| &e.deploy_to);
            let first = paths.next().cloned();
            first.filter(|f| paths.all(|p| p == f))
        }
    };
    let artifact = build_for(
        ctx,
        &loaded,
        (&branch, &release_id),
        (format, deploy_to.as_deref()),
        &args.out,
    )?;
    if let Some(key) = &args.sign {
        let signature = artifact::sign(&artifact, key)?;
        ctx.out.info(&format!("  signed: {}", signature.display()));
    }
    ctx.out
        .result(&format!("{}  {}", artifact.sha256, artifact.path.display()));
    Ok(exit::OK)
}
