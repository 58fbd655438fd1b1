//! The environment lock: one rollout per environment at a time, held on a
//! lease.
//!
//! The lock is a file on every host (`.slipway/lock`), taken in host order
//! (a fixed order, so two deployers cannot deadlock holding half each). Its
//! holder renews it while it lives: a heartbeat `touch`es the file on every
//! host every sixth of the lease, if (and only if) the file still names the
//! holder's deploy id. Each host measures the lock's age from that mtime
//! with its own clock, so no runner's clock, hostname or pid namespace
//! matters.
//!
//! Invariants: either all hosts are locked by this rollout or none is; ids
//! are compared whole, never as substrings (see `layout.rs`); a lock is
//! presumed dead only when no host has seen it renewed within its lease,
//! whoever and wherever the holder was; it is removed only by its holder,
//! by the next rollout or `recover` once its lease has expired everywhere,
//! or by `slipway unlock` (which refuses a live lease unless forced).
//! While deploys are frozen (`slipway lock --message`), taking the lock is
//! refused at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::layout::{FROZEN, LOCK_HELD};
use super::state::{HostState, LockOwner, now};
use super::{Cluster, Host, RolloutError};
use crate::notify::{Event, Phase, Sink};
use crate::transport::TransportError;

/// How often a waiting rollout tries the lock again.
const RETRY: Duration = Duration::from_millis(500);

/// Renewals per lease: a lease survives five missed renewals in a row.
const RENEWALS_PER_LEASE: u32 = 6;

/// How often the holder renews a lease of `lease`.
pub fn renew_every(lease: Duration) -> Duration {
    lease / RENEWALS_PER_LEASE
}

/// Who this process is, for the lock file.
pub fn owner(deploy_id: &str, who: &str, lease: Duration) -> LockOwner {
    LockOwner {
        deploy_id: deploy_id.to_owned(),
        who: who.to_owned(),
        machine: machine_name(),
        pid: std::process::id(),
        since: now(),
        lease_ms: Some(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// For people reading `status`; never used to decide anything.
pub fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Runs `work` with the environment locked on every host (a lock phase
/// event per host), renewing the lease while it runs, and gives the lock
/// back whatever `work` returned. `work` is a future, so nothing in it
/// starts before the lock is held.
///
/// # Errors
/// [`RolloutError::Locked`] when a live lease holds the lock (after
/// `lock_wait`), [`RolloutError::Frozen`] while deploys are frozen,
/// [`RolloutError::CorruptLock`] for a lock file that is not slipway's;
/// else what `work` returned.
pub async fn held<T>(
    cluster: &Cluster,
    r: &super::steps::Rollout,
    work: impl std::future::Future<Output = Result<T, RolloutError>>,
) -> Result<T, RolloutError> {
    let me = owner(&r.deploy_id, &r.plan.deployer, r.plan.lock_lease);
    let started = Instant::now();
    let taken = acquire(
        cluster,
        &r.plan.environment,
        &me,
        r.plan.lock_wait,
        r.sink.as_ref(),
    )
    .await;
    lock_events(cluster, r.sink.as_ref(), taken.as_ref().err(), started);
    taken?;
    holding(cluster, r, &me, work).await
}

/// [`held`] for `slipway recover`, which acts on a rollout whose runner
/// died: it refuses at once when the lock's lease is still being renewed
/// (a live rollout holds it); when it has stopped being renewed, it says
/// so, waits for the lease to expire, checks it was not renewed meanwhile,
/// and takes the lock over (a freeze does not stop it: recovery repairs,
/// it does not deploy). `work` gets the dead holder's deploy id (`None`
/// when the environment was not locked), which is also returned.
///
/// # Errors
/// [`RolloutError::Locked`] when a live rollout holds the lock (or renewed
/// it while recover waited); else as [`held`].
pub async fn held_for_recovery<T, F, Fut>(
    cluster: &Cluster,
    r: &super::steps::Rollout,
    work: F,
) -> Result<(Option<String>, T), RolloutError>
where
    F: FnOnce(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<T, RolloutError>>,
{
    let me = owner(&r.deploy_id, &r.plan.deployer, r.plan.lock_lease);
    let started = Instant::now();
    let taken = match wait_out(cluster, &r.plan.environment, r.sink.as_ref()).await {
        Ok(dead) => take(
            cluster,
            &r.plan.environment,
            &me,
            Duration::ZERO,
            r.sink.as_ref(),
            true,
        )
        .await
        .map(|()| dead),
        Err(e) => Err(e),
    };
    lock_events(cluster, r.sink.as_ref(), taken.as_ref().err(), started);
    let dead = taken?.map(|holder| holder.deploy_id);
    let result = holding(cluster, r, &me, work(dead.clone())).await?;
    Ok((dead, result))
}

/// Refuses at once while deploys to the environment are frozen: for the
/// CLI to call before a build, so a frozen environment costs no build.
/// (Taking the lock checks again on every host, race-free.)
///
/// # Errors
/// [`RolloutError::Frozen`] naming the first frozen host; a transport
/// error when a host cannot be read.
pub async fn refuse_frozen(cluster: &Cluster, environment: &str) -> Result<(), RolloutError> {
    let states = cluster.read_state().await?;
    for (host, state) in cluster.hosts.iter().zip(&states) {
        if let Some(freeze) = &state.freeze {
            return Err(RolloutError::Frozen {
                environment: environment.to_owned(),
                host: host.name().to_owned(),
                freeze: match freeze {
                    Ok(f) => f.to_string(),
                    Err(raw) => format!("frozen ({raw})"),
                },
            });
        }
    }
    Ok(())
}

/// A lock phase event per host, for the lock taken or not.
fn lock_events(
    cluster: &Cluster,
    sink: &dyn Sink,
    failed: Option<&RolloutError>,
    started: Instant,
) {
    for host in &cluster.hosts {
        let host = host.name().to_owned();
        sink.emit(&match failed {
            None => Event::HostPhase {
                host,
                phase: Phase::Lock,
                took: started.elapsed(),
            },
            Some(e) => Event::HostFailed {
                host,
                phase: Phase::Lock,
                error: e.to_string(),
            },
        });
    }
}

/// Runs `work` with the lock held by `me`, renewing it, then releases it.
async fn holding<T>(
    cluster: &Cluster,
    r: &super::steps::Rollout,
    me: &LockOwner,
    work: impl std::future::Future<Output = Result<T, RolloutError>>,
) -> Result<T, RolloutError> {
    let heartbeat = Heartbeat::start(cluster, me, r.plan.lock_lease, Arc::clone(&r.sink));
    let result = work.await;
    drop(heartbeat);
    for e in unlock(cluster, &me.deploy_id).await {
        r.sink.emit(&Event::Note {
            message: format!("could not release the lock: {e}"),
        });
    }
    result
}

/// The renewal of one lock: a task per host that refreshes the lease every
/// [`renew_every`], stopped when dropped.
///
/// A host's renewal runs on its own task and blocking thread, so a host
/// that is slow to answer delays only its own renewals; and it goes
/// through [`crate::transport::Transport::exec_aside`], because the
/// libssh2 transport holds its one session for as long as a command runs:
/// a deploy hook running for minutes on a host would otherwise hold up that
/// host's renewals for as long. Should a renewal still be late on one host,
/// the lease stays live: a lock counts as dead only when no host has seen
/// it renewed within the lease (see [`acquire`]).
struct Heartbeat {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Heartbeat {
    fn start(cluster: &Cluster, me: &LockOwner, lease: Duration, sink: Arc<dyn Sink>) -> Self {
        let every = renew_every(lease);
        let tasks = cluster
            .hosts
            .iter()
            .map(|host| {
                let (host, id, sink) = (host.clone(), me.deploy_id.clone(), Arc::clone(&sink));
                tokio::spawn(async move {
                    let mut told = false;
                    loop {
                        tokio::time::sleep(every).await;
                        let (h, id) = (host.clone(), id.clone());
                        let renewed =
                            tokio::task::spawn_blocking(move || renew(&h, &id, lease)).await;
                        let problem = match renewed {
                            Ok(Ok(true)) => None,
                            Ok(Ok(false)) => Some(
                                "the lock is no longer this rollout's (removed with `slipway unlock --force`?); another rollout may start"
                                    .to_owned(),
                            ),
                            Ok(Err(e)) => Some(format!("could not renew the lock: {e}")),
                            Err(_) => Some("renewing the lock panicked".to_owned()),
                        };
                        match problem {
                            Some(problem) if !told => {
                                told = true;
                                sink.emit(&Event::Note {
                                    message: format!("{}: {problem}", host.name()),
                                });
                            }
                            Some(_) => {}
                            None => told = false,
                        }
                    }
                })
            })
            .collect();
        Self { tasks }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Refreshes the lease on `host`; `false` when the lock is not `deploy_id`'s
/// any more. A renewal that hangs is cut off after a lease: it is no use
/// later.
fn renew(host: &Host, deploy_id: &str, lease: Duration) -> Result<bool, TransportError> {
    let script = host
        .layout
        .renew(deploy_id)
        .map_err(|e| host.transport.unquotable(e))?;
    let mut out = String::new();
    let exit = host.transport.exec_aside(&script, Some(lease), &mut |l| {
        if out.len() < 64 {
            out.push_str(l);
        }
    })?;
    if !exit.success() {
        return Err(TransportError::Failed {
            host: host.name().to_owned(),
            what: "renewing the lock".to_owned(),
            code: exit.code,
            tail: exit.tail,
        });
    }
    Ok(out.trim() == "renewed")
}

/// Locks every host, waiting up to `wait` for a live rollout to finish, and
/// breaking a lock whose lease expired on every host that holds it.
///
/// # Errors
/// [`RolloutError::Locked`] when the lock is still held after `wait`;
/// [`RolloutError::Frozen`] at once while deploys are frozen;
/// [`RolloutError::CorruptLock`] at once for a lock file that is not
/// slipway's; a transport error when a host fails.
pub async fn acquire(
    cluster: &Cluster,
    environment: &str,
    me: &LockOwner,
    wait: Duration,
    sink: &dyn Sink,
) -> Result<(), RolloutError> {
    take(cluster, environment, me, wait, sink, false).await
}

/// [`acquire`]; `frozen_too` takes the lock while deploys are frozen (for
/// a recovery, which repairs rather than deploys).
async fn take(
    cluster: &Cluster,
    environment: &str,
    me: &LockOwner,
    wait: Duration,
    sink: &dyn Sink,
    frozen_too: bool,
) -> Result<(), RolloutError> {
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        let (host, seen) = match try_all(cluster, me, frozen_too).await? {
            Attempt::Taken => return Ok(()),
            Attempt::Frozen { host, freeze } => {
                // No waiting: a freeze is lifted by a person, not by time.
                return Err(RolloutError::Frozen {
                    environment: environment.to_owned(),
                    host,
                    freeze,
                });
            }
            Attempt::Held { host, seen } => (host, seen),
        };
        let holder = match seen.lock {
            // Released between the link and the read: try again.
            None => continue,
            Some(Err(raw)) => return Err(corrupt(cluster, environment, &host, &raw)),
            Some(Ok(holder)) => holder,
        };
        let lease = survey(cluster, &holder).await?;
        if lease.expired() {
            sink.emit(&Event::Note {
                message: format!(
                    "breaking the lock of {holder}: no host has seen its lease renewed for {} (it expires after {})",
                    secs(lease.youngest.unwrap_or_default()),
                    secs(lease.length.unwrap_or_default())
                ),
            });
            if break_expired(cluster, &holder).await? > 0 {
                continue;
            }
            // Nothing broke (renewed meanwhile, or a file slipway did not
            // write): no retrying at once, the wait below applies.
        }
        if Instant::now() >= deadline {
            return Err(RolloutError::Locked {
                environment: environment.to_owned(),
                host,
                owner: holder.to_string(),
                why: lease.why_live(environment),
            });
        }
        if !told {
            sink.emit(&Event::Note {
                message: format!("waiting for the lock on {environment}, held by {holder}"),
            });
            told = true;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// What `recover` must wait out before it takes the lock: `None` when the
/// environment is not locked, else the dead holder, once its lease expired.
async fn wait_out(
    cluster: &Cluster,
    environment: &str,
    sink: &dyn Sink,
) -> Result<Option<LockOwner>, RolloutError> {
    let states = cluster.read_state().await?;
    let Some((host, found)) = first_lock(cluster, &states) else {
        return Ok(None);
    };
    let holder = match found {
        Err(raw) => return Err(corrupt(cluster, environment, &host, &raw)),
        Ok(holder) => holder,
    };
    let lease = survey_states(cluster, &states, &holder);
    let refuse = |lease: &Lease| RolloutError::Locked {
        environment: environment.to_owned(),
        host: host.clone(),
        owner: holder.to_string(),
        why: lease.why_live(environment),
    };
    let (Some(length), Some(mut youngest)) = (lease.length, lease.youngest) else {
        return Err(refuse(&lease));
    };
    let mut lease = lease;
    // Renewed lately: alive, or died a moment ago (recover run right after
    // a crash). Watch it for two renewal intervals, room for one late
    // renewal: renewed meanwhile is a live rollout, refused; not renewed,
    // its runner is gone and the lease is waited out below.
    let watch_for = 2 * renew_every(length);
    if youngest < watch_for {
        let watch = watch_for - youngest + Duration::from_millis(200);
        sink.emit(&Event::Note {
            message: format!(
                "the lease of {} ({}) was renewed {} ago; watching it for {} to see whether its runner is alive",
                holder.deploy_id,
                holder.who,
                secs(youngest),
                secs(watch)
            ),
        });
        tokio::time::sleep(watch).await;
        let again = survey(cluster, &holder).await?;
        if again.hosts.is_empty() {
            // It finished and let go: it was alive.
            return Ok(None);
        }
        match again.youngest {
            Some(y) if y >= watch_for => youngest = y,
            _ => return Err(refuse(&again)),
        }
        lease = again;
    }
    if !lease.expired() {
        // A little past the lease, so every host's clock has passed it.
        let left = length.saturating_sub(youngest) + renew_every(length).min(RETRY);
        sink.emit(&Event::Note {
            message: format!(
                "waiting {} for the lease of {} ({}) to expire",
                secs(left),
                holder.deploy_id,
                holder.who
            ),
        });
        tokio::time::sleep(left).await;
        let again = survey(cluster, &holder).await?;
        if again.hosts.is_empty() {
            // It finished and let go while we waited: it was not dead.
            return Ok(None);
        }
        if !again.expired() {
            return Err(refuse(&again));
        }
    }
    break_expired(cluster, &holder).await?;
    Ok(Some(holder))
}

/// The first host (in order) with a lock file, and what it holds.
fn first_lock(
    cluster: &Cluster,
    states: &[HostState],
) -> Option<(String, Result<LockOwner, String>)> {
    cluster
        .hosts
        .iter()
        .zip(states)
        .find_map(|(h, s)| s.lock.clone().map(|l| (h.name().to_owned(), l)))
}

/// One holder's lease as every host sees it.
pub(super) struct Lease {
    /// The lease the holder declared; `None` for a slipway without leases.
    length: Option<Duration>,
    /// The shortest time since a renewal on any host holding it.
    youngest: Option<Duration>,
    /// The hosts whose lock file names the holder.
    hosts: Vec<String>,
}

impl Lease {
    /// Dead: the holder declared a lease and no host has seen it renewed
    /// within it.
    pub(super) fn expired(&self) -> bool {
        match (self.length, self.youngest) {
            (Some(length), Some(youngest)) => youngest >= length,
            _ => false,
        }
    }

    pub(super) fn why_live(&self, environment: &str) -> String {
        match (self.length, self.youngest) {
            (None, _) => format!(
                "it was taken by a slipway without leases, so whether that rollout is alive cannot be told; if it is gone, run `slipway unlock --force {environment}`"
            ),
            (Some(_), _) if self.expired() => format!(
                "its lease expired, but its lock file is not in the form slipway writes, so it was left alone; `slipway unlock {environment}` removes it"
            ),
            (Some(length), youngest) => format!(
                "a live rollout holds it (its lease of {} was renewed {} ago); wait for it to finish",
                secs(length),
                youngest.map_or_else(|| "just".to_owned(), secs)
            ),
        }
    }
}

/// Reads every host's lock and measures `holder`'s lease there.
async fn survey(cluster: &Cluster, holder: &LockOwner) -> Result<Lease, RolloutError> {
    let states = cluster.read_state().await?;
    Ok(survey_states(cluster, &states, holder))
}

pub(super) fn survey_states(cluster: &Cluster, states: &[HostState], holder: &LockOwner) -> Lease {
    let mut lease = Lease {
        length: holder.lease_ms.map(Duration::from_millis),
        youngest: None,
        hosts: Vec::new(),
    };
    for (host, state) in cluster.hosts.iter().zip(states) {
        if let Some(Ok(found)) = &state.lock
            && found.deploy_id == holder.deploy_id
        {
            lease.hosts.push(host.name().to_owned());
            // A lock whose age a host cannot tell counts as just renewed.
            let age = state.lock_age.unwrap_or_default();
            lease.youngest = Some(lease.youngest.map_or(age, |y| y.min(age)));
        }
    }
    lease
}

/// Removes `holder`'s lock on every host where its lease has expired by
/// that host's clock (each host checks again, so a renewal since the
/// survey keeps it). Returns on how many hosts it was removed.
async fn break_expired(cluster: &Cluster, holder: &LockOwner) -> Result<usize, RolloutError> {
    let Some(lease_ms) = holder.lease_ms else {
        return Ok(0);
    };
    let id = holder.deploy_id.clone();
    let broken = cluster
        .each(move |host| {
            host.run(
                "breaking an expired lock",
                host.layout.break_expired(&id, lease_ms),
            )
            .map(|out| out.trim() == "broken")
        })
        .await
        .into_iter()
        .collect::<Result<Vec<bool>, _>>()?;
    Ok(broken.into_iter().filter(|b| *b).count())
}

pub(super) fn corrupt(cluster: &Cluster, environment: &str, host: &str, raw: &str) -> RolloutError {
    let root = cluster
        .hosts
        .iter()
        .find(|h| h.name() == host)
        .map_or_else(String::new, |h| h.layout.root().to_owned());
    RolloutError::CorruptLock {
        environment: environment.to_owned(),
        host: host.to_owned(),
        path: format!("{root}/.slipway/lock"),
        content: crate::notify::message::clip(raw, 200),
    }
}

/// `3s`, `1.5s`: durations in messages, to the tenth of a second.
fn secs(d: Duration) -> String {
    let tenths = d.as_millis().div_ceil(100);
    if tenths.is_multiple_of(10) {
        format!("{}s", tenths / 10)
    } else {
        format!("{}.{}s", tenths / 10, tenths % 10)
    }
}

/// How taking the lock on every host went.
enum Attempt {
    Taken,
    /// A host refused: deploys are frozen.
    Frozen {
        host: String,
        freeze: String,
    },
    /// A host's lock is held; what that host showed of it.
    Held {
        host: String,
        seen: Box<HostState>,
    },
}

/// Tries each host in order; on the first refusal releases what was taken
/// and says why.
async fn try_all(
    cluster: &Cluster,
    me: &LockOwner,
    frozen_too: bool,
) -> Result<Attempt, RolloutError> {
    let json = serde_json::to_string(me).expect("lock owner serialises");
    for (i, host) in cluster.hosts.iter().enumerate() {
        let host = host.clone();
        let (deploy_id, json) = (me.deploy_id.clone(), json.clone());
        let result = tokio::task::spawn_blocking(move || {
            let script = host
                .layout
                .lock(&deploy_id, &json, frozen_too)
                .map_err(|e| host.transport.unquotable(e))?;
            let mut out = String::new();
            // The holder is one line of at most 64 KiB, plus its age.
            let exit = host.transport.exec(&script, None, None, &mut |l| {
                if out.len() < 2 * crate::transport::MAX_LINE_BYTES {
                    out.push_str(l);
                    out.push('\n');
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
        let seen = HostState::parse(&out);
        match exit.code {
            Some(LOCK_HELD) => {
                return Ok(Attempt::Held {
                    host: name,
                    seen: Box::new(seen),
                });
            }
            Some(FROZEN) => {
                let freeze = match seen.freeze {
                    Some(Ok(f)) => f.to_string(),
                    Some(Err(raw)) => format!("frozen ({raw})"),
                    None => "frozen".to_owned(),
                };
                return Ok(Attempt::Frozen { host: name, freeze });
            }
            _ => {}
        }
        return Err(TransportError::Failed {
            host: name,
            what: "taking the lock".to_owned(),
            code: exit.code,
            tail: exit.tail,
        }
        .into());
    }
    Ok(Attempt::Taken)
}

async fn release(hosts: &[Host], deploy_id: &str) {
    let partial = Cluster {
        hosts: hosts.to_vec(),
        parallel: hosts.len().max(1),
    };
    let _ = unlock(&partial, deploy_id).await;
}

/// Releases this rollout's lock on every host: removes the lock file where
/// it names exactly `deploy_id`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_renewed_six_times_over() {
        assert_eq!(renew_every(Duration::from_secs(30)), Duration::from_secs(5));
        assert_eq!(secs(Duration::from_millis(1500)), "1.5s");
        assert_eq!(secs(Duration::from_secs(30)), "30s");
    }

    #[test]
    fn a_lease_is_dead_only_when_every_host_saw_it_expire() {
        let lease = |youngest: u64| Lease {
            length: Some(Duration::from_secs(3)),
            youngest: Some(Duration::from_millis(youngest)),
            hosts: vec!["a".into()],
        };
        assert!(!lease(2999).expired());
        assert!(lease(3000).expired());
        // A holder without a lease is never presumed dead.
        let old = Lease {
            length: None,
            youngest: Some(Duration::from_secs(3600)),
            hosts: vec!["a".into()],
        };
        assert!(!old.expired());
    }
}
