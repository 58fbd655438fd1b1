//! The command line: what the user typed, resolved into one subcommand run.
//!
//! Read top to bottom: parse arguments → set up logging → run one
//! subcommand → map its result to an exit code (the one place that does).
//! One file per subcommand. Invariant: this is the only layer that uses
//! `anyhow`; library errors stay typed below it.

mod actions;
mod ci;
mod context;
mod demo;
mod deploy;
mod docs;
mod history;
mod hook;
mod hook_env;
mod init;
mod inspect;
mod notify;
mod output;
mod pins;
mod preview;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use context::Context;

/// Exit codes scripts can rely on.
pub mod exit {
    /// The command did what was asked (or there was nothing to do).
    pub const OK: u8 = 0;
    /// It failed before changing anything (build, staging, unreachable host).
    pub const FAILED: u8 = 1;
    /// Bad usage or a bad config file; nothing was attempted.
    pub const USAGE: u8 = 2;
    /// The rollout failed and every host is back on the previous release.
    pub const ROLLED_BACK: u8 = 3;
    /// Hosts need attention: unreachable and left closed, or an interrupted
    /// rollout to `recover`.
    pub const ATTENTION: u8 = 4;
    /// Another rollout holds the environment lock.
    pub const LOCKED: u8 = 5;
}

const AFTER_HELP: &str = "\
Exit status: 0 done, 1 failed before changing anything, 2 bad usage or config,
3 rolled back to the previous release, 4 hosts need attention (see `slipway
status`), 5 the environment is locked by another rollout.

Start with `slipway demo`: a full gated rollout to three local hosts, no setup.";

/// Deploy a git commit to a cluster of servers: build once, stage
/// everywhere, switch all hosts together, roll back in one command.
#[derive(Debug, Parser)]
#[command(name = "slipway", version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Cli {
    /// The git repository to deploy from (a work tree or a bare repository).
    #[arg(long, global = true, env = "SLIPWAY_REPO", default_value = ".")]
    pub repo: PathBuf,

    /// Path of the config file inside the commit.
    #[arg(
        long,
        global = true,
        env = "SLIPWAY_CONFIG",
        default_value = "slipway.toml"
    )]
    pub config: String,

    /// known_hosts file for verifying SSH host keys [default: ~/.ssh/known_hosts].
    #[arg(long, global = true, env = "SLIPWAY_KNOWN_HOSTS")]
    pub known_hosts: Option<PathBuf>,

    /// Learn the host keys of SSH hosts not yet in known_hosts. A changed
    /// key is still refused; nothing ever turns checking off.
    #[arg(long, global = true, env = "SLIPWAY_ACCEPT_NEW_HOST_KEYS", value_parser = clap::builder::FalseyValueParser::new())]
    pub accept_new_host_keys: bool,

    /// SSH identity file, tried after ssh-agent (repeatable).
    #[arg(
        long = "identity",
        short = 'i',
        global = true,
        env = "SLIPWAY_IDENTITY",
        value_delimiter = ','
    )]
    pub identities: Vec<PathBuf>,

    /// ssh_config file for Host aliases, HostName, User, Port, IdentityFile
    /// and ProxyJump [default: ~/.ssh/config].
    #[arg(long, global = true, env = "SLIPWAY_SSH_CONFIG")]
    pub ssh_config: Option<PathBuf>,

    /// Which SSH client reaches SSH hosts: `openssh` (the system `ssh`, so
    /// everything ssh_config and known_hosts can say works as for `ssh`),
    /// `libssh2` (built in), or `auto`: openssh when `ssh` is installed.
    #[arg(long, global = true, env = "SLIPWAY_SSH", default_value = "auto")]
    pub ssh: crate::transport::SshChoice,

    /// Reach every host through this jump host ([user@]host[:port] or alias).
    #[arg(long, global = true, env = "SLIPWAY_JUMP")]
    pub jump: Option<String>,

    /// How long to wait for an SSH connection (e.g. "10s").
    #[arg(long, global = true, env = "SLIPWAY_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: std::time::Duration,

    /// How often an idle SSH connection asks the host whether it is still
    /// there (e.g. "5s"). A host that answers nothing for this plus
    /// --connect-timeout is declared lost, once, and not tried again in
    /// this run.
    #[arg(long, global = true, env = "SLIPWAY_KEEPALIVE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub keepalive: std::time::Duration,

    /// Upper bound for any one remote command, except the deploy hook,
    /// which has its own `hook_timeout` (e.g. "10m").
    #[arg(long, global = true, env = "SLIPWAY_COMMAND_TIMEOUT", value_parser = humantime::parse_duration)]
    pub command_timeout: Option<std::time::Duration>,

    /// The environment pins to obey (see README, "Security model"): which
    /// branch deploys each environment, its hosts, deploy_to and secret
    /// names. The git hooks read <git-dir>/slipway-pins.toml by default.
    #[arg(long, global = true, env = "SLIPWAY_PINS")]
    pub pins: Option<PathBuf>,

    /// Run with a git server's rules (set by the hooks for the deploys they
    /// start): without pins a branch reaches only its namesake environment,
    /// and pushed build steps must be sandboxed.
    #[arg(long, global = true, hide = true, env = "SLIPWAY_GIT_SERVER", value_parser = clap::builder::FalseyValueParser::new())]
    pub git_server: bool,

    /// Print every host's line for every step, not only one line per step
    /// and the hosts that failed.
    #[arg(long, short, global = true, env = "SLIPWAY_VERBOSE", value_parser = clap::builder::FalseyValueParser::new())]
    pub verbose: bool,

    /// Print less: only results and errors.
    #[arg(long, short, global = true, env = "SLIPWAY_QUIET", value_parser = clap::builder::FalseyValueParser::new())]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a commit and roll it out to an environment.
    ///
    /// The config is read from the commit being deployed. Without --ref,
    /// the tip of the environment's branch is deployed.
    Deploy(deploy::DeployArgs),
    /// Switch every host back to the release that ran before this one.
    Rollback(deploy::RollbackArgs),
    /// Finish a canary: switch the remaining hosts to the canary's release.
    Promote(inspect::EnvArgs),
    /// Show, per host, the live release, open/closed, and any lock or
    /// interrupted rollout.
    Status(inspect::EnvArgs),
    /// List the releases on each host, newest first, marking the live one,
    /// the rollback target and failed ones; identical hosts listed once.
    Releases(history::ListArgs),
    /// Show every rollout of an environment, newest first: who, when,
    /// commit, release, outcome, duration and closed window.
    History(history::ListArgs),
    /// Run a command in the live release on every host (or `--host`);
    /// exit 1 naming the hosts where it failed.
    Exec(history::ExecArgs),
    /// Build the artifact of a commit without deploying it; prints its path
    /// and sha256.
    Build(deploy::BuildArgs),
    /// Validate the config file of a commit; with an environment, also check
    /// every host can take a deploy.
    Check(inspect::CheckArgs),
    /// Print the nginx snippet that serves the live release and answers 503
    /// with Retry-After while the cluster is closed.
    Nginx(inspect::NginxArgs),
    /// Undo a rollout that was interrupted (slipway killed, host lost):
    /// every host it touched goes back to its previous release and opens.
    Recover(inspect::EnvArgs),
    /// Remove an environment's lock left by a rollout that is gone.
    Unlock(inspect::EnvArgs),
    /// Deploy from a GitHub Actions run: reads the event, maps the branch,
    /// records a GitHub Deployment, writes step outputs and a summary.
    Ci(ci::CiArgs),
    /// Git server hooks: deploy on push, guard deploying branches.
    #[command(subcommand)]
    Hook(hook::HookCommand),
    /// Pin environments (branch, hosts, deploy_to, secret names) in a file
    /// pushers cannot write; the git hooks and `--pins` obey it.
    #[command(subcommand)]
    Pins(pins::PinsCommand),
    /// Run a full gated rollout to three local hosts, with no setup.
    Demo(demo::DemoArgs),
    /// Check the chat, monitoring and CDN notifiers of `[notify]`.
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Write a commented slipway.toml for this repository to start from.
    Init(init::InitArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        #[arg(env = "SLIPWAY_SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print slipway's man page (roff), e.g. `slipway man | man -l -`.
    Man,
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send a test message to every notifier of an environment; exit 1 if one fails.
    Test {
        /// The environment whose notifiers to test.
        environment: String,
    },
}

/// Runs slipway as a process.
pub fn main() -> ExitCode {
    if let Err(e) = hook_env::reexec_with_hook_env() {
        output::err_line(&format!("slipway: {e:#}"));
        return ExitCode::from(exit::USAGE);
    }
    let cli = Cli::parse();
    init_logging();
    // What runs killed outright left in the temp dir (see scratch.rs).
    for gone in crate::scratch::sweep(&crate::scratch::bases()) {
        tracing::debug!("removed {}, left by a run that is gone", gone.display());
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            output::err_line(&format!("error: cannot start the async runtime: {e}"));
            return ExitCode::from(exit::FAILED);
        }
    };
    let ctx = match Context::new(&cli) {
        Ok(ctx) => ctx,
        Err(e) => {
            output::err_line(&format!("error: {e:#}"));
            return ExitCode::from(exit_code(&e));
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            result = run(&ctx, cli.command) => result,
            signal = signals(ctx.interrupt.clone()) => Err(anyhow::anyhow!(
                "interrupted by {signal} while no rollout was running; no host was changed by this command"
            )),
        }
    });
    // A build step or a transfer still running on a blocking thread must
    // not hold the exit up for long once the answer is known.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = exit_code(&e);
            ctx.out.error(&format!("{e:#}"));
            ExitCode::from(code)
        }
    }
}

/// SIGINT and SIGTERM: during a rollout they are the executor's (it stops
/// after the step in flight and undoes; a second signal says what it is
/// waiting for); otherwise the first one ends the command. Resolves only in
/// the second case, with the signal's name.
async fn signals(interrupt: crate::rollout::Interrupt) -> &'static str {
    use crate::rollout::interrupt::Raised;
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers the default actions stay; nothing to wait for.
        return std::future::pending().await;
    };
    loop {
        let name = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        match interrupt.raise(name) {
            Raised::Idle => return name,
            Raised::Stopping { step } => output::err_line(&format!(
                "slipway: {name}: finishing {step}, then putting every host not yet committed back on the release it ran before (signal again to see what it waits for)"
            )),
            Raised::Waiting { step, secs } => output::err_line(&format!(
                "slipway: still waiting for {step} ({secs}s so far); it exits once every host is open on one release"
            )),
        }
    }
}

async fn run(ctx: &Context, command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Deploy(args) => deploy::deploy(ctx, args).await,
        Command::Rollback(args) => deploy::rollback(ctx, args).await,
        Command::Promote(args) => deploy::promote(ctx, &args).await,
        Command::Build(args) => deploy::build(ctx, &args),
        Command::Status(args) => inspect::status(ctx, &args).await,
        Command::Releases(args) => history::releases(ctx, &args).await,
        Command::History(args) => history::history(ctx, &args).await,
        Command::Exec(args) => history::exec(ctx, &args).await,
        Command::Check(args) => inspect::check(ctx, &args).await,
        Command::Nginx(args) => inspect::nginx(ctx, &args).await,
        Command::Recover(args) => inspect::recover(ctx, &args).await,
        Command::Unlock(args) => inspect::unlock(ctx, &args).await,
        Command::Ci(args) => ci::ci(ctx, &args).await,
        Command::Hook(command) => hook::hook(ctx, command).await,
        Command::Pins(command) => pins::pins(ctx, command),
        Command::Demo(args) => demo::demo(ctx, args).await,
        Command::Notify(NotifyCommand::Test { environment }) => {
            notify::notify_test(ctx, &environment).await
        }
        Command::Init(args) => init::init(ctx, &args),
        Command::Completions { shell } => docs::completions(shell),
        Command::Man => docs::man(),
    }
}

/// The one place errors become exit codes.
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(rollout) = e.downcast_ref::<crate::rollout::RolloutError>() {
        return rollout.exit_code();
    }
    if e.downcast_ref::<crate::config::ConfigError>().is_some()
        || e.downcast_ref::<crate::notify::NotifyConfigError>()
            .is_some()
        || e.downcast_ref::<crate::config::UnknownEnvironment>()
            .is_some()
        || e.downcast_ref::<crate::config::PinViolation>().is_some()
        || e.downcast_ref::<context::MissingIdentity>().is_some()
    {
        return exit::USAGE;
    }
    exit::FAILED
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && output::colour_allowed())
        .with_target(false)
        .try_init();
}
