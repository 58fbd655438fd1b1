//! `slipway notify test <env>`, and the glue `deploy` uses to tell the
//! configured services about a rollout.
//!
//! Invariant: notifying never changes an exit code of `deploy`; a failed
//! delivery is a `warning:` line. Only `notify test` fails on one, since
//! checking delivery is all it is for.

use std::sync::Arc;

use super::context::{Context, deploy_id, deployer};
use super::exit;
use crate::config::Config;
use crate::notify::{Delivery, DeployInfo, Notifiers};
use crate::plan::{self, Plan};

/// Sends a test message to every notifier of `environment` and prints one
/// line per notifier; exit 1 if any failed.
pub async fn notify_test(ctx: &Context, environment: &str) -> anyhow::Result<u8> {
    let loaded = ctx.load(environment, None)?;
    let commit = &loaded.commit;
    let info = DeployInfo {
        action: crate::notify::Action::Deploy,
        app: loaded.config.app.name.clone(),
        environment: environment.to_owned(),
        release: plan::release_id(commit),
        commit: commit.id.clone(),
        commit_subject: commit.subject.clone(),
        deployer: deployer(),
        link: None,
        changelog: Vec::new(),
        deploy_id: deploy_id(),
    };
    let notifiers = Notifiers::from_config(&loaded.config.notify, info)?;
    if notifiers.is_empty() {
        ctx.out.result(&format!(
            "no notifiers configured for {environment} (see [notify] in slipway.toml)"
        ));
        return Ok(exit::OK);
    }
    notifiers.send_test();
    let reports = notifiers.finish().await;
    let width = reports.iter().map(|r| r.notifier.len()).max().unwrap_or(0);
    for report in &reports {
        let verdict = match &report.error {
            None if report.ok => "ok".to_owned(),
            error => format!("FAILED: {}", error.as_deref().unwrap_or("unknown error")),
        };
        ctx.out
            .result(&format!("{:<width$}  {verdict}", report.notifier));
    }
    Ok(if reports.iter().all(|r| r.ok) {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// What the notifiers say about deploying `plan`.
pub fn deploy_info(plan: &Plan, deploy_id: &str, action: crate::notify::Action) -> DeployInfo {
    DeployInfo {
        action,
        app: plan.app.clone(),
        environment: plan.environment.clone(),
        release: plan.release_id.clone(),
        commit: plan.commit.id.clone(),
        commit_subject: plan.commit.subject.clone(),
        deployer: plan.deployer.clone(),
        link: None,
        changelog: vec![plan.commit.subject.clone()],
        deploy_id: deploy_id.to_owned(),
    }
}

/// The notifiers of `config` for this rollout, or `None` when there are none.
///
/// # Errors
/// A bad `[notify]` or an unset credential variable, before anything is touched.
pub fn start(
    config: &Config,
    plan: &Plan,
    deploy_id: &str,
    action: crate::notify::Action,
) -> anyhow::Result<Option<Arc<Notifiers>>> {
    let notifiers = Notifiers::from_config(&config.notify, deploy_info(plan, deploy_id, action))?;
    Ok((!notifiers.is_empty()).then(|| Arc::new(notifiers)))
}

/// Waits for the last deliveries and prints a warning for each failure.
/// Call once the rollout (and with it every other handle) is dropped.
pub async fn finish(ctx: &Context, notifiers: Option<Arc<Notifiers>>) {
    let Some(notifiers) = notifiers else { return };
    match Arc::try_unwrap(notifiers) {
        Ok(notifiers) => warn(ctx, &notifiers.finish().await),
        Err(_) => ctx
            .out
            .warn("notifiers still in use when the rollout ended; some messages may be lost"),
    }
}

fn warn(ctx: &Context, reports: &[Delivery]) {
    for report in reports.iter().filter(|r| !r.ok) {
        ctx.out.warn(&format!(
            "notifier {} failed: {}: {}",
            report.notifier,
            report.event,
            report.error.as_deref().unwrap_or("unknown error")
        ));
    }
}
