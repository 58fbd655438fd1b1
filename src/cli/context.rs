//! Settings resolved from flags and environment, and the loading every
//! subcommand shares: repository, commit, config, cluster.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};

use super::Cli;
use super::output::Console;
use crate::build::{Sandbox, SandboxPolicy};
use crate::config::{self, Config, Environment, Pins, Reach};
use crate::rollout::Cluster;
use crate::source::{Commit, Repo};
use crate::transport::ConnectOptions;

pub struct Context {
    pub repo: PathBuf,
    pub config_path: String,
    pub connect: ConnectOptions,
    pub out: Arc<Console>,
    /// The pin file and what it says, when there is one.
    pub pins: Option<(Pins, PathBuf)>,
    /// Run as a git server hook: without pins, the default rule applies
    /// (a branch reaches only its namesake environment) and pushed build
    /// steps must be sandboxed.
    pub on_git_server: bool,
    /// Raised by SIGINT/SIGTERM (see `mod.rs`); rollouts stop between steps.
    pub interrupt: crate::rollout::Interrupt,
}

/// An `--identity` file that is not there.
#[derive(Debug, thiserror::Error)]
#[error("identity file {} does not exist (from --identity / SLIPWAY_IDENTITY); check the path", .path.display())]
pub struct MissingIdentity {
    pub path: std::path::PathBuf,
}

/// A commit and the config it carries.
pub struct Loaded {
    pub repo: Repo,
    pub commit: Commit,
    pub config: Config,
    pub branch: String,
}

impl Context {
    /// # Errors
    /// When the pin file (`--pins`, or a hook's default one) is unreadable
    /// or invalid.
    pub fn new(cli: &Cli) -> anyhow::Result<Self> {
        let on_git_server = cli.git_server || matches!(cli.command, super::Command::Hook(_));
        let pin_file = cli.pins.clone().or_else(|| {
            on_git_server
                .then(|| cli.repo.join(config::PIN_FILE))
                .filter(|p| p.exists())
        });
        // A mistyped `-i` path used to be skipped silently, and the run
        // then failed later as "permission denied" or, worse, succeeded
        // with another key from the agent.
        if let Some(path) = cli.identities.iter().find(|p| !p.is_file()) {
            return Err(MissingIdentity { path: path.clone() }.into());
        }
        let pins = match pin_file {
            Some(path) => Some((config::load_pins(&path)?, path)),
            None => None,
        };
        Ok(Self {
            repo: cli.repo.clone(),
            config_path: cli.config.clone(),
            connect: ConnectOptions {
                ssh: cli.ssh,
                known_hosts: cli.known_hosts.clone(),
                accept_new_host_keys: cli.accept_new_host_keys,
                identity_files: cli.identities.clone(),
                ssh_config: cli.ssh_config.clone(),
                jump: cli.jump.clone(),
                connect_timeout: cli.connect_timeout,
                keepalive: cli.keepalive,
                command_timeout: cli.command_timeout,
            },
            out: Arc::new(Console::new(cli.quiet, cli.verbose)),
            pins,
            on_git_server,
            interrupt: crate::rollout::Interrupt::default(),
        })
    }

    /// What this run may reach: the pins, the git server's default rule,
    /// or (the operator's own machine, no pins) whatever the operator asks.
    pub fn reach(&self) -> Reach<'_> {
        match &self.pins {
            Some((pins, file)) => Reach::Pinned(pins, file),
            None if self.on_git_server => Reach::SameName,
            None => Reach::Operator,
        }
    }

    pub fn with_repo(&self, repo: &Path) -> Self {
        Self {
            repo: repo.to_path_buf(),
            config_path: self.config_path.clone(),
            connect: self.connect.clone(),
            out: Arc::clone(&self.out),
            pins: self.pins.clone(),
            on_git_server: self.on_git_server,
            interrupt: self.interrupt.clone(),
        }
    }

    pub fn open_repo(&self) -> anyhow::Result<Repo> {
        Ok(Repo::open(&self.repo)?)
    }

    /// Reads and validates the config file of `commit`.
    pub fn config_at(&self, repo: &Repo, commit: &Commit) -> anyhow::Result<Config> {
        let Some(bytes) = repo.read_file(&commit.id, &self.config_path)? else {
            bail!(
                "commit {} has no {}; add one at the repository root (see README)",
                commit.short,
                self.config_path
            );
        };
        let text = String::from_utf8(bytes)
            .with_context(|| format!("{} in {} is not UTF-8", self.config_path, commit.short))?;
        let label = PathBuf::from(format!("{}:{}", commit.short, self.config_path));
        Ok(config::parse(&text, &label)?)
    }

    /// Where build steps of `config` run: bwrap with the private paths this
    /// run knows of masked; on a git server, refused without bwrap unless
    /// the pin file allows it. Says once when steps run unsandboxed.
    pub fn sandbox(&self, config: &Config) -> anyhow::Result<Sandbox> {
        let build = self
            .pins
            .as_ref()
            .map(|(p, _)| p.build.clone())
            .unwrap_or_default();
        let mut hidden: Vec<PathBuf> = vec![self.repo.clone()];
        hidden.extend(self.connect.identity_files.iter().cloned());
        hidden.extend(self.connect.ssh_config.iter().cloned());
        hidden.extend(self.connect.known_hosts.iter().cloned());
        hidden.extend(self.pins.iter().map(|(_, file)| file.clone()));
        for var in [
            "SSH_AUTH_SOCK",
            "SLIPWAY_ALLOW_LIST",
            super::hook_env::FILE_VAR,
        ] {
            hidden.extend(std::env::var_os(var).map(PathBuf::from));
        }
        if let Some(home) = std::env::var_os("HOME") {
            hidden.push(PathBuf::from(home).join(".ssh"));
        }
        let policy = SandboxPolicy {
            required: self.on_git_server,
            allow_unsandboxed: build.sandbox == config::SandboxSetting::None,
            readonly_paths: build.readonly_paths.iter().map(PathBuf::from).collect(),
            hidden,
            network: config.build.network,
        };
        let sandbox = Sandbox::choose(&config.build.steps, policy)?;
        if let Some(warning) = sandbox.warning() {
            self.out.warn(&warning);
        }
        Ok(sandbox)
    }

    /// `file:line: ` of a dotted key in `commit`'s config, for messages
    /// about a pushed config; empty when it cannot be placed.
    pub fn place_of(&self, repo: &Repo, commit: &Commit, key: &str) -> String {
        let Ok(Some(bytes)) = repo.read_file(&commit.id, &self.config_path) else {
            return String::new();
        };
        let text = String::from_utf8_lossy(&bytes);
        let line = config::line_of_key(&text, key);
        format!("{}:{}:{line}: ", commit.short, self.config_path)
    }

    /// Finds what to deploy to `environment`: `git_ref` if given, else the
    /// tip of the branch the environment deploys (learnt from HEAD's config).
    pub fn load(&self, environment: &str, git_ref: Option<&str>) -> anyhow::Result<Loaded> {
        let repo = self.open_repo()?;
        let (commit, branch) = match git_ref {
            Some(r) => {
                let commit = repo.resolve(r)?;
                let branch = r.strip_prefix("refs/heads/").unwrap_or(r).to_owned();
                (commit, branch)
            }
            None if self.pins.is_some() => {
                // Pinned: the pin names the branch, never HEAD's config.
                let branch = self.reach().pinned_branch(environment).map(str::to_owned);
                let Some(branch) = branch else {
                    bail!(
                        "{} does not pin environment `{environment}`; nothing deploys there until it is pinned",
                        self.pins
                            .as_ref()
                            .map(|(_, f)| f.display().to_string())
                            .unwrap_or_default()
                    );
                };
                (self.branch_tip(&repo, &branch)?, branch)
            }
            None => {
                // On a git server HEAD often names a branch nobody pushed;
                // then the environment's branch is the default mapping, the
                // branch of the same name.
                let from_head = repo
                    .resolve("HEAD")
                    .ok()
                    .and_then(|head| self.config_at(&repo, &head).ok());
                let branch = match from_head {
                    Some(config) => config.environment(environment)?.branch.clone(),
                    None => environment.to_owned(),
                };
                (self.branch_tip(&repo, &branch)?, branch)
            }
        };
        let config = self.config_at(&repo, &commit)?;
        let env = config.environment(environment)?;
        // `--ref HEAD` or a commit id names no branch: the release is the
        // environment's branch's (packages and history say so, not "HEAD").
        let branch = match git_ref {
            Some("HEAD") => None,
            _ => repo.branch_of(&branch),
        }
        .unwrap_or_else(|| env.branch.clone());
        if self.pins.is_some() {
            // The branch an environment deploys is the pinned one, whichever
            // ref the operator named.
            let pinned = self
                .reach()
                .pinned_branch(environment)
                .unwrap_or(&branch)
                .to_owned();
            self.reach().check(environment, env, &pinned)?;
        }
        Ok(Loaded {
            repo,
            commit,
            config,
            branch,
        })
    }

    /// The tip of `branch`: the local branch, or, in a clone that has only
    /// the remote's (a teammate's fresh clone), `origin/<branch>`, saying so.
    fn branch_tip(&self, repo: &Repo, branch: &str) -> anyhow::Result<Commit> {
        if let Ok(commit) = repo.resolve(&format!("refs/heads/{branch}")) {
            return Ok(commit);
        }
        if let Ok(commit) = repo.resolve(&format!("refs/remotes/origin/{branch}")) {
            self.out.info(&format!(
                "no local branch `{branch}`: deploying origin/{branch} ({})",
                commit.short
            ));
            return Ok(commit);
        }
        bail!(
            "there is no branch `{branch}` here, nor `origin/{branch}`; run `git fetch origin {branch}`, or name a commit with --ref"
        )
    }

    /// Refuses to deploy a local branch that is behind (or has diverged
    /// from) its upstream: that would put an older commit live, a rollback
    /// nobody asked for.
    pub fn refuse_if_behind_upstream(&self, loaded: &Loaded) -> anyhow::Result<()> {
        let local = format!("refs/heads/{}", loaded.branch);
        if loaded.repo.resolve(&local).map(|c| c.id).ok().as_deref() != Some(&loaded.commit.id) {
            return Ok(());
        }
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .arg("-C")
                .arg(&self.repo)
                .args(args)
                .output()
        };
        let upstream = git(&["for-each-ref", "--format=%(upstream)", &local])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        if upstream.is_empty() {
            return Ok(());
        }
        let Ok(theirs) = loaded.repo.resolve(&upstream) else {
            return Ok(());
        };
        if theirs.id == loaded.commit.id {
            return Ok(());
        }
        let contains = git(&["merge-base", "--is-ancestor", &theirs.id, &loaded.commit.id])
            .is_ok_and(|o| o.status.success());
        if contains {
            return Ok(());
        }
        let short = upstream.strip_prefix("refs/remotes/").unwrap_or(&upstream);
        bail!(
            "your local `{branch}` ({}) is behind {short} ({}): deploying it would put an older commit live. \
             Run `git pull --ff-only` (or `git merge --ff-only {short}`) first, or pass --force to deploy the local commit anyway",
            loaded.commit.short,
            theirs.short,
            branch = loaded.branch,
        )
    }

    /// What the working tree holds that the deployed commit does not, in
    /// one line each: slipway deploys commits, so an uncommitted edit (of
    /// the config above all) is named before anything happens, never
    /// silently left out. Empty for a bare repository or without `git`.
    pub fn working_tree_notes(&self, loaded: &Loaded) -> Vec<String> {
        let Ok(out) = std::process::Command::new("git")
            .arg("-C")
            .arg(&self.repo)
            .args(["status", "--porcelain=v1", "-z", "--untracked-files=normal"])
            .output()
        else {
            return Vec::new();
        };
        if !out.status.success() {
            return Vec::new();
        }
        let entries: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .filter(|e| e.len() > 3)
            .map(|e| String::from_utf8_lossy(&e[3..]).into_owned())
            .collect();
        if entries.is_empty() {
            return Vec::new();
        }
        let mut notes = Vec::new();
        if entries.contains(&self.config_path) {
            notes.push(format!(
                "{} has uncommitted changes (or is not committed): slipway uses the one in {}; commit it to use your edit",
                self.config_path, loaded.commit.short
            ));
        }
        notes.push(format!(
            "the working tree has {} uncommitted change(s) (e.g. {}); deploying commit {} as committed",
            entries.len(),
            entries.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
            loaded.commit.short
        ));
        notes
    }

    /// Connects to every host of `env`; nothing is touched if one fails.
    pub async fn connect(&self, env: &Environment) -> anyhow::Result<Cluster> {
        let options = self.connect.clone();
        Ok(Cluster::connect(
            &env.all_hosts(),
            &env.deploy_to,
            env.parallel,
            Arc::new(move |spec: &str| crate::transport::connect(spec, &options)),
        )
        .await?)
    }

    /// Connects to the hosts of `env` that can be reached; returns the
    /// others with why (for `status`, `releases`, `history`).
    pub async fn connect_reachable(&self, env: &Environment) -> (Cluster, Vec<(String, String)>) {
        let options = self.connect.clone();
        Cluster::connect_reachable(
            &env.all_hosts(),
            &env.deploy_to,
            env.parallel,
            Arc::new(move |spec: &str| crate::transport::connect(spec, &options)),
        )
        .await
    }
}

/// Who is deploying, as recorded in history and shown in chat.
pub fn deployer() -> String {
    [
        "SLIPWAY_USER",
        "GL_USER",
        "REMOTE_USER",
        "GITHUB_ACTOR",
        "USER",
        "LOGNAME",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    // CI jobs and containers often have no $USER: git's user.name, then the
    // account's name, say who it was better than "unknown".
    .or_else(git_user_name)
    .or_else(account_name)
    .unwrap_or_else(|| "unknown".to_owned())
}

fn git_user_name() -> Option<String> {
    let mut git = std::process::Command::new("git");
    if let Some(repo) = std::env::var_os("SLIPWAY_REPO") {
        git.arg("-C").arg(repo);
    }
    let out = git.args(["config", "user.name"]).output().ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !name.is_empty()).then_some(name)
}

/// The name /etc/passwd gives this process's user.
fn account_name() -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_owned())
    })
}

/// A unique id for one rollout: time and process, safe in file names.
pub fn deploy_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("d{:x}{:x}", nanos, std::process::id())
}
