//! The typed shape of `slipway.toml`.
//!
//! These structs are what the rest of slipway sees once a file has been
//! parsed *and* validated (see [`super::parse`]): hosts are never empty, a
//! branch maps to at most one environment, durations are real durations.
//! Every table refuses unknown keys so a typo is an error, not a silent no-op.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole file. Not `Eq`: the opaque `notify` table may hold floats.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub app: App,
    #[serde(default)]
    pub build: Build,
    #[serde(default)]
    pub shared: Shared,
    #[serde(default)]
    pub environments: BTreeMap<String, Environment>,
    /// Debian package settings, used when `app.artifact` is `"deb"`.
    #[serde(default)]
    pub deb: Deb,
    /// Who may sign artifacts deployed with `deploy --artifact`.
    #[serde(default)]
    pub artifact: ArtifactTrust,
    /// Notifier settings; interpreted by `notify/`, kept opaque here so the
    /// config module does not need to know every service.
    #[serde(default)]
    pub notify: toml::Table,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub name: String,
    #[serde(default)]
    pub artifact: ArtifactFormat,
    #[serde(default = "default_keep_releases")]
    pub keep_releases: usize,
}

fn default_keep_releases() -> usize {
    5
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ArtifactFormat {
    #[default]
    #[serde(rename = "tar.gz")]
    TarGz,
    #[serde(rename = "deb")]
    Deb,
}

/// `[artifact]`: signatures `deploy --artifact` requires.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactTrust {
    /// OpenSSH ed25519 public key lines (`ssh-ed25519 AAAA... name`). When
    /// set, `deploy --artifact F` requires `F.sig` signed by one of them.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
}

/// `[deb]`: how a release is packaged and installed as a Debian package.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Deb {
    /// Package names are `<prefix>-<release id>`; default `<app>-release`.
    #[serde(default)]
    pub package_prefix: Option<String>,
    /// `Name <email>`; default: the committer of the commit being packed.
    #[serde(default)]
    pub maintainer: Option<String>,
    #[serde(default)]
    pub depends: Vec<String>,
    #[serde(default = "default_architecture")]
    pub architecture: String,
    /// Paths relative to the release directory.
    #[serde(default)]
    pub conffiles: Vec<String>,
    #[serde(default)]
    pub scripts: DebScripts,
    /// Run dpkg through `sudo -n`.
    #[serde(default)]
    pub sudo: bool,
    /// Extra dpkg options, e.g. `["--admindir=/srv/dpkg"]`.
    #[serde(default)]
    pub dpkg_args: Vec<String>,
}

impl Default for Deb {
    fn default() -> Self {
        Self {
            package_prefix: None,
            maintainer: None,
            depends: Vec::new(),
            architecture: default_architecture(),
            conffiles: Vec::new(),
            scripts: DebScripts::default(),
            sudo: false,
            dpkg_args: Vec::new(),
        }
    }
}

fn default_architecture() -> String {
    "all".to_owned()
}

/// Maintainer scripts: paths in the built tree (relative to the repository).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DebScripts {
    #[serde(default)]
    pub preinst: Option<String>,
    #[serde(default)]
    pub postinst: Option<String>,
    #[serde(default)]
    pub prerm: Option<String>,
    #[serde(default)]
    pub postrm: Option<String>,
}

impl DebScripts {
    /// `(name, path)` of each configured script.
    pub fn list(&self) -> Vec<(&'static str, &str)> {
        [
            ("preinst", &self.preinst),
            ("postinst", &self.postinst),
            ("prerm", &self.prerm),
            ("postrm", &self.postrm),
        ]
        .into_iter()
        .filter_map(|(name, path)| path.as_deref().map(|p| (name, p)))
        .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    #[serde(default)]
    pub steps: Vec<BuildStep>,
    /// Glob patterns (gitignore-like, matched against the path relative to
    /// the repository root) left out of the artifact.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Whether build steps may use the network (they run in a sandbox
    /// either way); `false` gives them none at all.
    #[serde(default = "default_network")]
    pub network: bool,
}

impl Default for Build {
    fn default() -> Self {
        Self {
            steps: Vec::new(),
            exclude: Vec::new(),
            network: default_network(),
        }
    }
}

fn default_network() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuildStep {
    pub name: String,
    pub run: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Shared {
    /// Directories under `shared/` symlinked into every release.
    #[serde(default)]
    pub dirs: Vec<String>,
    /// Files under `shared/` symlinked into every release.
    #[serde(default)]
    pub files: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Gated,
    Rolling,
    Canary,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    pub branch: String,
    #[serde(default)]
    pub strategy: Strategy,
    /// `user@host[:port]`, an ssh_config alias, or `local:/abs/path`.
    pub hosts: Vec<String>,
    pub deploy_to: String,
    /// Shell command run once per deploy, in the new release, on one host.
    #[serde(default)]
    pub deploy_hook: Option<String>,
    /// Index into `hosts` (0-based) of the host that runs the deploy hook.
    #[serde(default)]
    pub hook_host: usize,
    #[serde(default = "default_hook_timeout", with = "duration")]
    pub hook_timeout: Duration,
    /// How long to wait for another rollout's lock before giving up.
    #[serde(default = "default_lock_wait", with = "duration")]
    pub lock_wait: Duration,
    /// How long the lock outlives its holder: the runner renews it every
    /// sixth of this while it runs; a lock not renewed for this long is
    /// stale and the next rollout (or `recover`) takes it over. Short, so a
    /// crashed runner costs seconds, not minutes.
    #[serde(default = "default_lock_lease", with = "duration")]
    pub lock_lease: Duration,
    /// How many hosts are worked on at once.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of variables taken from the deployer's environment and written
    /// to the hosts' env file; their values are never printed.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub workers: Option<StartStop>,
    #[serde(default)]
    pub cron: Option<StartStop>,
    #[serde(default)]
    pub health: Option<Health>,
    /// SSH public keys allowed to log in as the deploy user.
    #[serde(default)]
    pub users: Vec<String>,
    /// Where the environment is reachable; shown in GitHub deployments and
    /// chat messages.
    #[serde(default)]
    pub url: Option<String>,
    /// Paths inside the release tree (content the live release wrote) copied
    /// from the live release into the new one just before the switch.
    #[serde(default)]
    pub copy_back: Vec<String>,
    /// Rolling strategy: how many hosts switch at a time (`2`, or `"34%"`).
    #[serde(default)]
    pub batch: Share,
    /// Rolling strategy: on a failed batch, roll back every host already
    /// switched (`"rollback-all"`, one version everywhere) or only that batch.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Canary strategy settings.
    #[serde(default)]
    pub canary: Option<Canary>,
}

impl Environment {
    /// Every host the environment deploys to: canaries first, then `hosts`.
    pub fn all_hosts(&self) -> Vec<String> {
        let mut all: Vec<String> = self.canary.iter().flat_map(|c| c.hosts.clone()).collect();
        all.extend(
            self.hosts
                .iter()
                .filter(|h| !all.contains(h))
                .cloned()
                .collect::<Vec<_>>(),
        );
        all
    }
}

/// A count of hosts, or a share of them (`"34%"`, rounded up, at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Share {
    Hosts(usize),
    Percent(u8),
}

impl Default for Share {
    fn default() -> Self {
        Self::Hosts(1)
    }
}

impl Share {
    /// How many of `n` hosts this is (rounded up; `0` and `"0%"` are none).
    pub fn of(self, n: usize) -> usize {
        let k = match self {
            Self::Hosts(k) => k,
            Self::Percent(p) => (n * usize::from(p)).div_ceil(100),
        };
        k.min(n)
    }
}

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(i64),
            Text(String),
        }
        let bad = || {
            serde::de::Error::custom(
                "expected a number of hosts (e.g. 2) or a share (e.g. \"34%\")",
            )
        };
        // serde's own error here ("did not match any variant of untagged
        // enum") means nothing to a user; say what is accepted instead.
        match Raw::deserialize(d).map_err(|_: D::Error| bad())? {
            Raw::Count(n) if n >= 0 => Ok(Self::Hosts(usize::try_from(n).map_err(|_| bad())?)),
            Raw::Text(t) => {
                let p: u8 = t
                    .strip_suffix('%')
                    .and_then(|p| p.trim().parse().ok())
                    .ok_or_else(bad)?;
                if p <= 100 {
                    Ok(Self::Percent(p))
                } else {
                    Err(bad())
                }
            }
            Raw::Count(_) => Err(bad()),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    #[default]
    RollbackAll,
    RollbackBatch,
}

/// The canary strategy: first `hosts` (e.g. an internal-only host not behind
/// the load balancer), then `share` of the environment's hosts; then
/// `slipway promote` completes it or `slipway rollback` reverts it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default = "default_canary_share")]
    pub share: Share,
    /// A command run on each canary host in the new release after its
    /// health check; exit 0 means the canary is good.
    #[serde(default)]
    pub check: Option<String>,
}

fn default_canary_share() -> Share {
    Share::Percent(34)
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(600)
}

fn default_lock_wait() -> Duration {
    Duration::from_secs(0)
}

pub fn default_lock_lease() -> Duration {
    Duration::from_secs(30)
}

fn default_parallel() -> usize {
    8
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StartStop {
    pub stop: String,
    pub start: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// HTTP URL; `{host}` is replaced by the host's address.
    #[serde(default)]
    pub url: Option<String>,
    /// Shell command run on each host in the new release; exit 0 is healthy.
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default = "default_health_timeout", with = "duration")]
    pub timeout: Duration,
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_status() -> u16 {
    200
}

fn default_health_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_retries() -> u32 {
    3
}

/// Durations are written the way people say them: `"30s"`, `"10m"`, `"1h 30m"`.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({e}); write e.g. \"30s\", \"10m\" or \"1h 30m\""
            ))
        })
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}
