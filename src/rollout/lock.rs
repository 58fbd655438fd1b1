//! The environment lock: one rollout per environment at a time.
//!
//! The lock is a file on every host, taken in host order (a fixed order, so
//! two deployers cannot deadlock holding half each). Invariants: either all
//! hosts are locked by this rollout or none is; a lock is only removed by its
//! holder, by `slipway unlock`, or when its holder is provably dead (same
//! machine, process gone).

use std::time::{Duration, Instant};

use super::layout::LOCK_HELD;
use super::state::{LockOwner, now};
use super::{Cluster, RolloutError};
use crate::notify::{Event, Sink};
use crate::transport::TransportError;

/// How often a waiting rollout tries the lock again.
const RETRY: Duration = Duration::from_millis(500);

/// Who this process is, for the lock file.
pub fn owner(deploy_id: &str, who: &str) -> LockOwner {
    LockOwner {
        deploy_id: deploy_id.to_owned(),
        who: who.to_owned(),
        machine: machine_name(),
        pid: std::process::id(),
        since: now(),
    }
}

fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// A holder on this machine whose process is gone will never unlock.
fn is_stale(holder: &LockOwner) -> bool {
    holder.machine == machine_name()
        && holder.pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{}", holder.pid)).exists()
}

/// Runs `work` with the environment locked on every host (a lock phase
/// event per host), and gives the lock back whatever `work` returned.
/// `work` is a future, so nothing in it starts before the lock is held.
///
/// # Errors
/// [`RolloutError::Locked`] when the lock is held elsewhere; else what
/// `work` returned.
pub async fn held<T>(
    cluster: &Cluster,
    r: &super::steps::Rollout,
    work: impl std::future::Future<Output = Result<T, RolloutError>>,
) -> Result<T, RolloutError> {
    let me = owner(&r.deploy_id, &r.plan.deployer);
    let started = Instant::now();
    let taken = acquire(
        cluster,
        &r.plan.environment,
        &me,
        r.plan.lock_wait,
        r.sink.as_ref(),
    )
    .await;
    for host in &cluster.hosts {
        let host = host.name().to_owned();
        r.sink.emit(&match &taken {
            Ok(()) => Event::HostPhase {
                host,
                phase: crate::notify::Phase::Lock,
                took: started.elapsed(),
            },
            Err(e) => Event::HostFailed {
                host,
                phase: crate::notify::Phase::Lock,
                error: e.to_string(),
            },
        });
    }
    taken?;
    let result = work.await;
    for e in unlock(cluster, &r.deploy_id).await {
        r.sink.emit(&Event::Note {
            message: format!("could not release the lock: {e}"),
        });
    }
    result
}

/// Locks every host, waiting up to `wait` for another rollout to finish.
///
/// # Errors
/// [`RolloutError::Locked`] when the lock is still held after `wait`; a
/// transport error when a host fails.
pub async fn acquire(
    cluster: &Cluster,
    environment: &str,
    me: &LockOwner,
    wait: Duration,
    sink: &dyn Sink,
) -> Result<(), RolloutError> {
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        match try_all(cluster, me).await? {
            None => return Ok(()),
            Some((host, holder)) => {
                if let Ok(h) = &holder
                    && is_stale(h)
                {
                    sink.emit(&Event::Note {
                        message: format!(
                            "breaking the stale lock of {h} on {host}: its process is gone"
                        ),
                    });
                    break_lock(cluster, &h.deploy_id).await?;
                    continue;
                }
                let owner = holder.map_or_else(|raw| raw, |h| h.to_string());
                if Instant::now() >= deadline {
                    return Err(RolloutError::Locked {
                        environment: environment.to_owned(),
                        host,
                        owner,
                    });
                }
                if !told {
                    sink.emit(&Event::Note {
                        message: format!("waiting for the lock on {environment}, held by {owner}"),
                    });
                    told = true;
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Tries each host in order; on the first refusal releases what was taken
/// and returns the holder.
async fn try_all(
    cluster: &Cluster,
    me: &LockOwner,
) -> Result<Option<(String, Result<LockOwner, String>)>, RolloutError> {
    let json = serde_json::to_string(me).expect("lock owner serialises");
    for (i, host) in cluster.hosts.iter().enumerate() {
        let host = host.clone();
        let (deploy_id, json) = (me.deploy_id.clone(), json.clone());
        let result = tokio::task::spawn_blocking(move || {
            let script = host
                .layout
                .lock(&deploy_id, &json)
                .map_err(|e| host.transport.unquotable(e))?;
            let mut out = String::new();
            // The holder is a short JSON line; whatever a host's lock file
            // holds beyond one line's worth is not kept.
            let exit = host.transport.exec(&script, None, None, &mut |l| {
                if out.len() < crate::transport::MAX_LINE_BYTES {
                    out.push_str(l);
                }
            })?;
            Ok::<_, TransportError>((host.name().to_owned(), exit, out))
        })
        .await
        .map_err(|_| RolloutError::from(super::Panicked))?;
        let (name, exit, out) = match result {
            Ok(r) => r,
            Err(e) => {
                release(&cluster.hosts[..i], &me.deploy_id).await;
                return Err(e.into());
            }
        };
        if exit.success() {
            continue;
        }
        release(&cluster.hosts[..i], &me.deploy_id).await;
        if exit.code == Some(LOCK_HELD) {
            let holder = serde_json::from_str(out.trim()).map_err(|_| out.trim().to_owned());
            return Ok(Some((name, holder)));
        }
        return Err(TransportError::Failed {
            host: name,
            what: "taking the lock".to_owned(),
            code: exit.code,
            tail: exit.tail,
        }
        .into());
    }
    Ok(None)
}

async fn release(hosts: &[super::Host], deploy_id: &str) {
    let partial = Cluster {
        hosts: hosts.to_vec(),
        parallel: hosts.len().max(1),
    };
    let _ = unlock(&partial, deploy_id).await;
}

/// Releases this rollout's lock on every host.
///
/// # Errors
/// The hosts where the lock could not be removed.
pub async fn unlock(cluster: &Cluster, deploy_id: &str) -> Vec<RolloutError> {
    let id = deploy_id.to_owned();
    cluster
        .each(move |host| {
            host.run("releasing the lock", host.layout.unlock(&id))
                .map(drop)
        })
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect()
}

/// Removes the lock held by `deploy_id` wherever it is.
///
/// # Errors
/// The first host where it could not be removed.
pub async fn break_lock(cluster: &Cluster, deploy_id: &str) -> Result<(), RolloutError> {
    match unlock(cluster, deploy_id).await.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
