//! Environment pins: what a push may reach, decided by a file the server's
//! owner controls (`slipway-pins.toml`), never by the pushed commit.
//!
//! Owns the pin file's schema, its parsing (errors name file, line and key,
//! like `slipway.toml`), and the one comparison between a pushed
//! environment and its pin. Invariants:
//! - With pins, a branch deploys only the environment pinned to it, and only
//!   when the pushed config agrees with the pin on the branch, the hosts, the
//!   deploy root and the secret names (a subset of the pinned ones).
//! - Without pins (a server whose owner wrote none yet), a push deploys at
//!   most the environment named like its branch: [`Reach::SameName`].
//! - The operator's CLI without a pin file trusts the operator: [`Reach::Operator`].
//!
//! This module does no I/O beyond reading the pin file it is given.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::KeyPath;
use super::locate::Locator;
use super::schema::{Config, Environment};
use super::validate;
use super::{ConfigError, line_column_error};

/// The file name the git hooks look for in the repository.
pub const PIN_FILE: &str = "slipway-pins.toml";

/// `slipway-pins.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    /// How pushed build steps run on this machine.
    #[serde(default)]
    pub build: BuildSettings,
    /// `[artifact] trusted_keys`: when set, the only keys whose signature
    /// makes `deploy --artifact` believe a file's commit; the deployed
    /// commit's own list is then ignored.
    #[serde(default)]
    pub artifact: super::schema::ArtifactTrust,
    /// Environment name → what it is pinned to.
    #[serde(default)]
    pub environments: BTreeMap<String, Pin>,
}

/// `[build]` in the pin file: the server owner's say over build steps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSettings {
    /// `"bwrap"` (the default): pushed build steps run only inside a
    /// bubblewrap sandbox. `"none"`: the owner accepts running them unsandboxed
    /// (with a cleared environment) where bubblewrap cannot run.
    #[serde(default)]
    pub sandbox: SandboxSetting,
    /// Extra absolute paths build steps may read (e.g. a toolchain under
    /// `/opt`); nothing else of the machine's private files is visible.
    #[serde(default)]
    pub readonly_paths: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxSetting {
    #[default]
    Bwrap,
    None,
}

/// One pinned environment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// The only branch that deploys this environment.
    pub branch: String,
    /// Every host it deploys to (canary hosts included), in any order.
    pub hosts: Vec<String>,
    pub deploy_to: String,
    /// Secret names it may receive; a pushed config may ask for fewer.
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// Who decides what a run may reach.
#[derive(Debug, Clone, Copy)]
pub enum Reach<'a> {
    /// A pin file: it alone decides.
    Pinned(&'a Pins, &'a Path),
    /// A git server without pins: a branch deploys at most the environment
    /// of the same name.
    SameName,
    /// The operator's own machine, no pin file given: the operator decides.
    Operator,
}

/// A pushed environment that its pin (or the default rule) does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PinViolation {
    /// The environment the violation is about.
    pub environment: String,
    /// The key of `slipway.toml` at fault, e.g. `environments.production.hosts`.
    pub key: String,
    pub message: String,
}

/// Reads and checks a pin file.
///
/// # Errors
/// When the file cannot be read, is not valid TOML of this shape, or pins
/// something invalid (a bad host, branch, path or secret name, or two
/// environments to one branch).
pub fn load_pins(path: &Path) -> Result<Pins, ConfigError> {
    let text = super::read_capped(path)?;
    parse_pins(&text, path)
}

/// Parses pin-file text; `file` is used in messages only.
///
/// # Errors
/// As [`load_pins`].
pub fn parse_pins(text: &str, file: &Path) -> Result<Pins, ConfigError> {
    let pins: Pins = super::deserialize(text, file)?;
    let locator = Locator::new(text);
    let mut issues: Vec<(KeyPath, String)> = Vec::new();
    let root = KeyPath::root();
    for (i, p) in pins.build.readonly_paths.iter().enumerate() {
        if !p.starts_with('/') || p.split('/').any(|c| c == "..") || p.contains(char::is_control) {
            issues.push((
                root.key("build").key("readonly_paths").index(i),
                format!("`{p}` must be an absolute path without `..`"),
            ));
        }
    }
    for (i, key) in pins.artifact.trusted_keys.iter().enumerate() {
        if let Err(why) = crate::artifact::parse_trusted_key(key) {
            issues.push((root.key("artifact").key("trusted_keys").index(i), why));
        }
    }
    let mut branches: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, pin) in &pins.environments {
        let path = root.key("environments").key(name);
        if let Err(why) = validate::check_branch_name(&pin.branch) {
            issues.push((
                path.key("branch"),
                format!("`{}` is not a branch name: {why}", pin.branch),
            ));
        }
        if let Some(other) = branches.insert(&pin.branch, name) {
            issues.push((
                path.key("branch"),
                format!(
                    "branch `{}` is already pinned to environment `{other}`; a branch deploys one environment",
                    pin.branch
                ),
            ));
        }
        if pin.hosts.is_empty() {
            issues.push((path.key("hosts"), "pin at least one host".to_owned()));
        }
        for (i, host) in pin.hosts.iter().enumerate() {
            if let Err(why) = validate::check_host(host) {
                issues.push((
                    path.key("hosts").index(i),
                    format!("`{host}` is not a valid host: {why}"),
                ));
            }
        }
        if let Some(why) = validate::deploy_to_problem(&pin.deploy_to) {
            issues.push((path.key("deploy_to"), why));
        }
        for (i, secret) in pin.secrets.iter().enumerate() {
            if !validate::is_variable_name(secret) {
                issues.push((
                    path.key("secrets").index(i),
                    format!("`{secret}` is not a variable name (letters, digits and `_`)"),
                ));
            }
        }
    }
    match issues
        .into_iter()
        .min_by_key(|(path, _)| locator.offset(path))
    {
        Some((path, message)) => Err(line_column_error(&locator, file, &path, message)),
        None => Ok(pins),
    }
}

impl Pins {
    /// The environment pinned to `branch`, if any.
    pub fn environment_for_branch(&self, branch: &str) -> Option<(&str, &Pin)> {
        self.environments
            .iter()
            .find(|(_, pin)| pin.branch == branch)
            .map(|(name, pin)| (name.as_str(), pin))
    }

    /// Writes pins for every environment of `config`, a config the owner
    /// trusts (hosts, deploy roots and secret names taken as they are).
    pub fn from_config(config: &Config) -> Self {
        let environments = config
            .environments
            .iter()
            .map(|(name, env)| {
                (
                    name.clone(),
                    Pin {
                        branch: env.branch.clone(),
                        hosts: env.all_hosts(),
                        deploy_to: env.deploy_to.clone(),
                        secrets: env.secrets.clone(),
                    },
                )
            })
            .collect();
        Self {
            build: BuildSettings::default(),
            artifact: config.artifact.clone(),
            environments,
        }
    }

    /// The pin file's text, with a header saying what it is.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).unwrap_or_default();
        format!(
            "# slipway environment pins: what a push may deploy, and where.\n\
             # Read by the git hooks and `slipway --pins`; only this server's owner\n\
             # may edit it. A pushed slipway.toml that disagrees is refused.\n\
             # Regenerate from a config you trust: slipway pins write --from FILE\n\n{body}"
        )
    }
}

impl Reach<'_> {
    /// Which environment a push to `branch` may deploy, given the pushed
    /// config (`Ok(None)`: nothing, with no complaint).
    ///
    /// # Errors
    /// When the pushed config maps `branch` somewhere the pins (or the
    /// default rule) do not allow: the message names the key and the pin.
    pub fn environment_for_push<'c>(
        &self,
        config: &'c Config,
        branch: &str,
    ) -> Result<Option<(String, &'c Environment)>, PinViolation> {
        match self {
            Self::Operator => Ok(config
                .environment_for_branch(branch)
                .map(|(n, e)| (n.to_owned(), e))),
            Self::SameName => match config.environment_for_branch(branch) {
                None => Ok(None),
                Some((name, env)) if name == branch => Ok(Some((name.to_owned(), env))),
                Some((name, _)) => Err(PinViolation {
                    environment: name.to_owned(),
                    key: format!("environments.{name}.branch"),
                    message: format!(
                        "slipway.toml maps branch `{branch}` to environment `{name}`, which needs a pin: \
                         this server has no {PIN_FILE}, so a branch deploys only the environment of its own name. \
                         The server's owner can pin it: `slipway pins write --from <trusted slipway.toml> --out <git-dir>/{PIN_FILE}`"
                    ),
                }),
            },
            Self::Pinned(pins, file) => {
                let pinned = pins.environment_for_branch(branch);
                let mapped = config.environment_for_branch(branch);
                // The pushed config sends this branch somewhere its pin does
                // not: that mapping is what is wrong.
                if let Some((name, _)) = mapped
                    && pinned.is_none_or(|(p, _)| p != name)
                {
                    return Err(match pins.environments.get(name) {
                        Some(pin) => PinViolation {
                            environment: name.to_owned(),
                            key: format!("environments.{name}.branch"),
                            message: format!(
                                "`environments.{name}.branch` is `{branch}`, but {} pins `{name}` to branch `{}`; a push to `{branch}` deploys nothing there",
                                file.display(),
                                pin.branch
                            ),
                        },
                        None => PinViolation {
                            environment: name.to_owned(),
                            key: format!("environments.{name}"),
                            message: format!(
                                "slipway.toml maps branch `{branch}` to environment `{name}`, which {} does not pin; it deploys nothing until the server's owner pins it",
                                file.display()
                            ),
                        },
                    });
                }
                let Some((name, _)) = pinned else {
                    return Ok(None);
                };
                match config.environments.get(name) {
                    None => Err(PinViolation {
                        environment: name.to_owned(),
                        key: format!("environments.{name}"),
                        message: format!(
                            "{} pins environment `{name}` to branch `{branch}`, but the pushed slipway.toml has no `[environments.{name}]`",
                            file.display()
                        ),
                    }),
                    Some(env) => {
                        self.check(name, env, branch)?;
                        Ok(Some((name.to_owned(), env)))
                    }
                }
            }
        }
    }

    /// Checks that deploying `env` (named `name`) from `branch` stays
    /// within what is pinned.
    ///
    /// # Errors
    /// The first key that disagrees with the pin, naming the pinned value.
    pub fn check(&self, name: &str, env: &Environment, branch: &str) -> Result<(), PinViolation> {
        let violation = |key: &str, message: String| PinViolation {
            environment: name.to_owned(),
            key: format!("environments.{name}.{key}"),
            message,
        };
        match self {
            Self::Operator => Ok(()),
            Self::SameName if name == branch => Ok(()),
            Self::SameName => Err(violation(
                "branch",
                format!(
                    "environment `{name}` cannot be deployed from branch `{branch}` on a server without pins; \
                     push to `{name}` or have the server's owner pin it in {PIN_FILE}"
                ),
            )),
            Self::Pinned(pins, file) => {
                let file = file.display();
                let Some(pin) = pins.environments.get(name) else {
                    return Err(violation(
                        "",
                        format!(
                            "{file} does not pin environment `{name}`; nothing deploys there until the server's owner pins it"
                        ),
                    ));
                };
                if pin.branch != branch || env.branch != pin.branch {
                    return Err(violation(
                        "branch",
                        format!(
                            "{file} pins `{name}` to branch `{}`; `{branch}` cannot deploy it",
                            pin.branch
                        ),
                    ));
                }
                let want: BTreeSet<&str> = pin.hosts.iter().map(String::as_str).collect();
                let have: BTreeSet<String> = env.all_hosts().into_iter().collect();
                let have: BTreeSet<&str> = have.iter().map(String::as_str).collect();
                if want != have {
                    return Err(violation(
                        "hosts",
                        format!(
                            "`environments.{name}.hosts` is [{}], but {file} pins `{name}` to hosts [{}]",
                            list(&have),
                            list(&want)
                        ),
                    ));
                }
                if env.deploy_to != pin.deploy_to {
                    return Err(violation(
                        "deploy_to",
                        format!(
                            "`environments.{name}.deploy_to` is `{}`, but {file} pins `{name}` to `{}`",
                            env.deploy_to, pin.deploy_to
                        ),
                    ));
                }
                let extra: BTreeSet<&str> = env
                    .secrets
                    .iter()
                    .map(String::as_str)
                    .filter(|s| !pin.secrets.iter().any(|p| p == s))
                    .collect();
                if !extra.is_empty() {
                    return Err(violation(
                        "secrets",
                        format!(
                            "`environments.{name}.secrets` asks for [{}], which {file} does not pin for `{name}` (pinned: [{}])",
                            list(&extra),
                            list(&pin.secrets.iter().map(String::as_str).collect())
                        ),
                    ));
                }
                Ok(())
            }
        }
    }

    /// The branch that deploys `environment`, if the pins say.
    pub fn pinned_branch(&self, environment: &str) -> Option<&str> {
        match self {
            Self::Pinned(pins, _) => pins
                .environments
                .get(environment)
                .map(|p| p.branch.as_str()),
            Self::SameName | Self::Operator => None,
        }
    }

    /// The environment pinned to `branch`, if the pins say.
    pub fn pinned_branch_environment(&self, branch: &str) -> Option<&str> {
        match self {
            Self::Pinned(pins, _) => pins.environment_for_branch(branch).map(|(name, _)| name),
            Self::SameName | Self::Operator => None,
        }
    }

    /// The pin file, when there is one.
    pub fn file(&self) -> Option<PathBuf> {
        match self {
            Self::Pinned(_, file) => Some(file.to_path_buf()),
            Self::SameName | Self::Operator => None,
        }
    }
}

fn list(items: &BTreeSet<&str>) -> String {
    items.iter().copied().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINS: &str = "\
[environments.production]
branch = \"production\"
hosts = [\"deploy@web1\", \"deploy@web2\"]
deploy_to = \"/srv/shop\"
secrets = [\"DATABASE_URL\"]

[environments.staging]
branch = \"staging\"
hosts = [\"deploy@stage1\"]
deploy_to = \"/srv/shop\"
";

    fn config(extra: &str) -> Config {
        let text = format!(
            "[app]\nname = \"shop\"\n\
             [environments.production]\nbranch = \"production\"\nhosts = [\"deploy@web2\", \"deploy@web1\"]\ndeploy_to = \"/srv/shop\"\nsecrets = [\"DATABASE_URL\"]\n\
             {extra}"
        );
        crate::config::parse(&text, Path::new("slipway.toml")).expect("valid config")
    }

    fn pins() -> Pins {
        parse_pins(PINS, Path::new("pins.toml")).expect("valid pins")
    }

    #[test]
    fn a_matching_push_deploys_its_pinned_environment() {
        let pins = pins();
        let reach = Reach::Pinned(&pins, Path::new("pins.toml"));
        let cfg = config("");
        let (name, _) = reach
            .environment_for_push(&cfg, "production")
            .unwrap()
            .unwrap();
        assert_eq!(name, "production");
        assert_eq!(reach.environment_for_push(&cfg, "main").unwrap(), None);
    }

    // Regression: a commit pushed to `staging` that maps staging to
    // production reached production.
    #[test]
    fn a_pushed_mapping_to_another_pinned_environment_is_refused() {
        let pins = pins();
        let reach = Reach::Pinned(&pins, Path::new("pins.toml"));
        let text = "[app]\nname = \"shop\"\n[environments.production]\nbranch = \"staging\"\nhosts = [\"deploy@web1\", \"deploy@web2\"]\ndeploy_to = \"/srv/shop\"\n";
        let cfg = crate::config::parse(text, Path::new("slipway.toml")).unwrap();
        let err = reach.environment_for_push(&cfg, "staging").unwrap_err();
        assert_eq!(err.key, "environments.production.branch");
        assert!(
            err.message
                .contains("pins `production` to branch `production`"),
            "{err}"
        );
    }

    #[test]
    fn hosts_deploy_to_and_secrets_must_agree_with_the_pin() {
        let pins = pins();
        let reach = Reach::Pinned(&pins, Path::new("pins.toml"));
        let stage = |body: &str| {
            let text = format!(
                "[app]\nname = \"shop\"\n[environments.staging]\nbranch = \"staging\"\n{body}"
            );
            crate::config::parse(&text, Path::new("slipway.toml")).unwrap()
        };
        let cases = [
            (
                "hosts = [\"deploy@web1\"]\ndeploy_to = \"/srv/shop\"\n",
                "environments.staging.hosts",
                "pins `staging` to hosts [deploy@stage1]",
            ),
            (
                "hosts = [\"deploy@stage1\"]\ndeploy_to = \"/srv/other\"\n",
                "environments.staging.deploy_to",
                "pins `staging` to `/srv/shop`",
            ),
            (
                "hosts = [\"deploy@stage1\"]\ndeploy_to = \"/srv/shop\"\nsecrets = [\"PROD_DATABASE_URL\"]\n",
                "environments.staging.secrets",
                "asks for [PROD_DATABASE_URL]",
            ),
        ];
        for (body, key, says) in cases {
            let err = reach
                .environment_for_push(&stage(body), "staging")
                .unwrap_err();
            assert_eq!(err.key, key);
            assert!(err.message.contains(says), "{err}");
        }
        let fewer = stage("hosts = [\"deploy@stage1\"]\ndeploy_to = \"/srv/shop\"\nsecrets = []\n");
        assert!(reach.environment_for_push(&fewer, "staging").is_ok());
    }

    #[test]
    fn without_pins_a_branch_reaches_only_its_namesake() {
        let text = "[app]\nname = \"shop\"\n[environments.production]\nbranch = \"main\"\nhosts = [\"deploy@web1\"]\ndeploy_to = \"/srv/shop\"\n";
        let cfg = crate::config::parse(text, Path::new("slipway.toml")).unwrap();
        let err = Reach::SameName
            .environment_for_push(&cfg, "main")
            .unwrap_err();
        assert!(err.message.contains("needs a pin"), "{err}");
        let ok = config("");
        assert_eq!(
            Reach::SameName
                .environment_for_push(&ok, "production")
                .unwrap()
                .map(|(n, _)| n),
            Some("production".to_owned())
        );
    }

    #[test]
    fn pin_file_errors_name_line_and_key() {
        let bad = "[environments.production]\nbranch = \"production\"\nhosts = [\"deploy@web1\", \"bad host\"]\ndeploy_to = \"/srv\"\n";
        let err = parse_pins(bad, Path::new("pins.toml")).unwrap_err();
        assert_eq!(
            (err.line, err.key.as_str()),
            (3, "environments.production.hosts[1]")
        );
        let dup = format!(
            "{PINS}[environments.other]\nbranch = \"staging\"\nhosts = [\"a\"]\ndeploy_to = \"/srv\"\n"
        );
        let err = parse_pins(&dup, Path::new("pins.toml")).unwrap_err();
        assert!(err.message.contains("already pinned"), "{err}");
        let typo = "[environments.production]\nbranch = \"production\"\nhost = []\n";
        assert!(parse_pins(typo, Path::new("pins.toml")).is_err());
    }

    #[test]
    fn pins_written_from_a_config_read_back_the_same() {
        let cfg = config("");
        let pins = Pins::from_config(&cfg);
        let back = parse_pins(&pins.to_toml(), Path::new("pins.toml")).unwrap();
        assert_eq!(back, pins);
        let reach = Reach::Pinned(&back, Path::new("pins.toml"));
        assert!(reach.environment_for_push(&cfg, "production").is_ok());
    }
}
