//! The rollout as plain data, computed before anything is touched.
//!
//! Owns [`Plan`]: which hosts, which release id, which steps. Invariant:
//! planning does no I/O and holds no secret values (only their names), so a
//! plan can be printed by `--dry-run`, snapshot-tested and written to a
//! journal. The rollout engine walks a plan; it never reads config itself.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::config::{
    ArtifactFormat, Canary, Config, Deb, Environment, Health, OnFailure, Share, Shared, StartStop,
    Strategy,
};
use crate::source::Commit;

/// Everything a rollout needs to know, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub app: String,
    pub environment: String,
    pub branch: String,
    pub commit: Commit,
    pub release_id: String,
    pub strategy: Strategy,
    pub hosts: Vec<String>,
    pub deploy_to: String,
    /// How releases are shipped: unpacked tarballs or dpkg-installed packages.
    pub artifact: ArtifactFormat,
    /// Debian package settings (no secrets); used when `artifact` is `deb`.
    pub deb: Deb,
    pub hook: Option<Hook>,
    pub shared: Shared,
    /// Non-secret variables, written to each release's env file.
    pub env: BTreeMap<String, String>,
    /// Names of secret variables, taken from the deployer's environment at run time.
    pub secrets: Vec<String>,
    pub workers: Option<StartStop>,
    pub cron: Option<StartStop>,
    pub health: Option<Health>,
    pub keep_releases: usize,
    pub parallel: usize,
    #[serde(with = "humantime_serde_compat")]
    pub lock_wait: Duration,
    /// The lock's lease (see `rollout::lock`); not part of what a plan
    /// shows.
    #[serde(skip)]
    pub lock_lease: Duration,
    pub deployer: String,
    pub copy_back: Vec<String>,
    pub batch: Share,
    pub on_failure: OnFailure,
    pub canary: Option<Canary>,
}

/// The deploy hook and where it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hook {
    pub command: String,
    pub host: String,
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
}

mod humantime_serde_compat {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// A release id: the commit's UTC time and short id, e.g.
/// `20261122T051900Z-1a2b3c4`. Derived from the commit alone, so building the
/// same commit twice gives the same id (and the same artifact bytes), and
/// ids sort by commit time.
pub fn release_id(commit: &Commit) -> String {
    let time = time::OffsetDateTime::from_unix_timestamp(commit.time)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let stamp = time
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_default();
    format!("{stamp}-{}", commit.short)
}

/// Builds the plan for deploying `commit` of `branch` to `environment`.
pub fn plan(
    config: &Config,
    environment: &str,
    env: &Environment,
    branch: &str,
    commit: &Commit,
    deployer: &str,
) -> Plan {
    let hook = env.deploy_hook.as_ref().map(|command| Hook {
        command: command.clone(),
        host: env.hosts[env.hook_host].clone(),
        timeout: env.hook_timeout,
    });
    Plan {
        app: config.app.name.clone(),
        environment: environment.to_owned(),
        branch: branch.to_owned(),
        commit: commit.clone(),
        release_id: release_id(commit),
        strategy: env.strategy,
        hosts: env.all_hosts(),
        deploy_to: env.deploy_to.clone(),
        artifact: config.app.artifact,
        deb: config.deb.clone(),
        hook,
        shared: config.shared.clone(),
        env: env.env.clone(),
        secrets: env.secrets.clone(),
        workers: env.workers.clone(),
        cron: env.cron.clone(),
        health: env.health.clone(),
        keep_releases: config.app.keep_releases,
        parallel: env.parallel,
        lock_wait: env.lock_wait,
        lock_lease: env.lock_lease,
        deployer: deployer.to_owned(),
        copy_back: env.copy_back.clone(),
        batch: env.batch,
        on_failure: env.on_failure,
        canary: env.canary.clone(),
    }
}

impl Plan {
    /// Whether workers or cron are configured: the programs stop and start
    /// them around every switch.
    pub fn has_background(&self) -> bool {
        self.workers.is_some() || self.cron.is_some()
    }

    /// The plan as a person reads it (`deploy --dry-run`).
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "deploy {} to {} ({:?} strategy)",
            self.app, self.environment, self.strategy
        );
        let _ = writeln!(
            out,
            "  commit   {} {} ({})",
            self.commit.short, self.commit.subject, self.branch
        );
        let _ = writeln!(out, "  release  {}", self.release_id);
        let _ = writeln!(out, "  hosts    {}", self.hosts.join(", "));
        let _ = writeln!(out, "  path     {}", self.deploy_to);
        let _ = writeln!(out, "steps:");
        for (i, step) in self.steps().iter().enumerate() {
            let _ = writeln!(out, "  {}. {step}", i + 1);
        }
        out
    }

    /// The steps the rollout will take, in order.
    pub fn steps(&self) -> Vec<String> {
        match self.strategy {
            Strategy::Gated => self.gated_steps(),
            Strategy::Rolling => self.rolling_steps(),
            Strategy::Canary => self.canary_steps(),
        }
    }

    fn hook_step(&self) -> Option<String> {
        self.hook.as_ref().map(|hook| {
            format!(
                "deploy hook `{}` on {} (timeout {})",
                hook.command,
                hook.host,
                humantime::format_duration(hook.timeout)
            )
        })
    }

    /// Rolling and canary start alike: lock, stage everywhere, then the
    /// hook in the staged release before any host switches.
    fn hook_before_switching_steps(&self) -> Vec<String> {
        let mut steps = vec![
            format!("lock {} on every host", self.environment),
            "stage: upload, verify sha256, unpack, link shared, write env file (all hosts)"
                .to_owned(),
        ];
        steps.extend(
            self.hook_step()
                .map(|h| format!("{h}, before any host switches")),
        );
        steps
    }

    fn rolling_steps(&self) -> Vec<String> {
        let mut steps = self.hook_before_switching_steps();
        let per = self.batch.of(self.hosts.len()).max(1);
        for (i, batch) in self.hosts.chunks(per).enumerate() {
            steps.push(format!(
                "batch {}: switch {} to {}, then health check",
                i + 1,
                batch.join(", "),
                self.release_id
            ));
        }
        steps.push(format!(
            "record history, prune to {} releases, unlock",
            self.keep_releases
        ));
        steps
    }

    fn canary_steps(&self) -> Vec<String> {
        let canaries = self
            .canary
            .as_ref()
            .map(|c| c.hosts.clone())
            .unwrap_or_default();
        let rest: Vec<&String> = self
            .hosts
            .iter()
            .filter(|h| !canaries.contains(h))
            .collect();
        let share = self
            .canary
            .as_ref()
            .map_or(crate::config::Share::Percent(34), |c| c.share)
            .of(rest.len());
        let mut steps = self.hook_before_switching_steps();
        steps.push(format!(
            "stage 1: switch the canaries ({}) and check them",
            canaries.join(", ")
        ));
        steps.push(format!(
            "stage 2: switch {share} of {} hosts and check them",
            rest.len()
        ));
        steps.push(format!(
            "then `slipway promote {}` switches the rest, or `slipway rollback {}` reverts",
            self.environment, self.environment
        ));
        steps
    }

    fn gated_steps(&self) -> Vec<String> {
        let mut steps = vec![
            format!("lock {} on every host", self.environment),
            "stage: upload, verify sha256, unpack, link shared, write env file (all hosts, cluster open)".to_owned(),
        ];
        if self.workers.is_some() || self.cron.is_some() {
            steps.push("stop workers and cron (all hosts)".to_owned());
        }
        steps.push("close: maintenance flag on (all hosts)".to_owned());
        steps.push(format!(
            "switch `current` to {} (all hosts)",
            self.release_id
        ));
        if let Some(hook) = &self.hook {
            steps.push(format!(
                "deploy hook `{}` on {} (timeout {})",
                hook.command,
                hook.host,
                humantime::format_duration(hook.timeout)
            ));
        }
        if self.health.is_some() {
            steps.push("health check (all hosts)".to_owned());
        }
        steps.push("open: maintenance flag off (all hosts)".to_owned());
        if self.workers.is_some() || self.cron.is_some() {
            steps.push("start workers and cron (all hosts)".to_owned());
        }
        steps.push(format!(
            "record history, prune to {} releases, unlock",
            self.keep_releases
        ));
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_ids_come_from_the_commit_and_sort_by_time() {
        let commit = |time, short: &str| Commit {
            id: format!("{short}000"),
            short: short.to_owned(),
            time,
            subject: "s".into(),
            author: "a".into(),
            committer: "c".into(),
        };
        let a = release_id(&commit(1_700_000_000, "aaaaaaa"));
        let b = release_id(&commit(1_700_000_060, "0000000"));
        assert_eq!(a, "20231114T221320Z-aaaaaaa");
        assert!(a < b);
    }
}
