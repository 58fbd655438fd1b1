//! Settings resolved from flags and environment, and the loading every
//! subcommand shares: repository, commit, config, cluster.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};

use super::Cli;
use super::output::Console;
use crate::config::{self, Config, Environment};
use crate::rollout::Cluster;
use crate::source::{Commit, Repo};
use crate::transport::ConnectOptions;

pub struct Context {
    pub repo: PathBuf,
    pub config_path: String,
    pub connect: ConnectOptions,
    pub out: Arc<Console>,
}

/// A commit and the config it carries.
pub struct Loaded {
    pub repo: Repo,
    pub commit: Commit,
    pub config: Config,
    pub branch: String,
}

impl Context {
    pub fn new(cli: &Cli) -> Self {
        Self {
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
                command_timeout: cli.command_timeout,
                ..ConnectOptions::default()
            },
            out: Arc::new(Console::new(cli.quiet)),
        }
    }

    pub fn with_repo(&self, repo: &Path) -> Self {
        Self {
            repo: repo.to_path_buf(),
            config_path: self.config_path.clone(),
            connect: self.connect.clone(),
            out: Arc::clone(&self.out),
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
                (repo.resolve(&branch)?, branch)
            }
        };
        let config = self.config_at(&repo, &commit)?;
        config.environment(environment)?;
        Ok(Loaded {
            repo,
            commit,
            config,
            branch,
        })
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
    .unwrap_or_else(|| "unknown".to_owned())
}

/// A unique id for one rollout: time and process, safe in file names.
pub fn deploy_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("d{:x}{:x}", nanos, std::process::id())
}
