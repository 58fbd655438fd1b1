//! Configured commands on a host, supervised: a command slipway gives up on
//! is stopped there, not just abandoned.
//!
//! Owns what happens when slipway's deadline for a command passes, and
//! reading back what the host's pid files say (`layout.rs` writes the
//! scripts). Invariants: a command that timed out is reported only once
//! its whole process group is gone from the host (TERM, then KILL after
//! [`GRACE`]), or with an error saying it could not be stopped; a command
//! whose runner dies still ends at its own deadline on the host, since the
//! host enforces it too.

use std::fmt;
use std::time::Duration;

use super::Host;
use super::layout::{GRACE, Job};
use crate::transport::TransportError;

/// How long stopping a command may take: TERM, [`GRACE`], KILL and up to
/// five seconds for the group to go, plus a connection's round trips.
const STOP_TIMEOUT: Duration = Duration::from_secs(GRACE.as_secs() + 15);

/// A configured command for [`run_supervised`].
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    /// Names the command in errors, e.g. "the deploy hook `rake db:migrate`".
    pub label: &'a str,
    /// Its pid file and deadline; a supervised command needs a deadline.
    pub job: Job<'a>,
    /// Where it runs (a release directory).
    pub dir: &'a str,
    pub env: &'a [(String, String)],
    /// The shell command as configured.
    pub command: &'a str,
}

/// Runs `cmd` on `host` in its own process group, streaming its output to
/// `on_line`. When slipway's deadline (`cmd.job.timeout`) passes, stops the
/// group on the host (TERM, then KILL after [`GRACE`]) and waits for that
/// before returning [`TransportError::Timeout`].
///
/// # Errors
/// [`TransportError::Failed`] when the command exits non-zero,
/// [`TransportError::Timeout`] when it was stopped at its deadline,
/// [`TransportError::NotStopped`] when it timed out and could not be
/// stopped, or any error reaching the host.
pub fn run_supervised(
    host: &Host,
    cmd: &Command<'_>,
    on_line: &mut dyn FnMut(&str),
) -> Result<(), TransportError> {
    let script = host
        .layout
        .user_command(&cmd.job, cmd.dir, cmd.env, cmd.command)
        .map_err(|e| host.transport.unquotable(e))?;
    match host
        .transport
        .exec(&script, None, cmd.job.timeout, &mut *on_line)
    {
        Ok(exit) if exit.success() => Ok(()),
        Ok(exit) => Err(TransportError::Failed {
            host: host.name().to_owned(),
            what: cmd.label.to_owned(),
            code: exit.code,
            tail: exit.tail,
        }),
        Err(TransportError::Timeout { after, .. }) => {
            let not_stopped = |reason: String| TransportError::NotStopped {
                host: host.name().to_owned(),
                what: cmd.label.to_owned(),
                after,
                reason,
                deadline: after + GRACE,
            };
            match stop(host, &cmd.job) {
                Ok(Some(stopped)) if stopped.how == Ended::StillRunning => {
                    Err(not_stopped(stopped.how.to_string()))
                }
                Ok(stopped) => {
                    if let Some(stopped) = stopped {
                        on_line(&format!("slipway: {stopped}"));
                    }
                    Err(TransportError::Timeout {
                        host: host.name().to_owned(),
                        what: cmd.label.to_owned(),
                        after,
                    })
                }
                Err(e) => Err(not_stopped(e.to_string())),
            }
        }
        Err(other) => Err(other),
    }
}

/// Stops `job` on `host` if it still runs. `None` when its pid file was
/// already gone (it ended by itself).
///
/// # Errors
/// When the host cannot be reached or the stop script fails.
pub fn stop(host: &Host, job: &Job<'_>) -> Result<Option<Stopped>, TransportError> {
    let script = host
        .layout
        .stop(job)
        .map_err(|e| host.transport.unquotable(e))?;
    let what = format!("stopping {}.{}", job.id, job.what);
    let output = host
        .transport
        .run_with(&what, &script, None, Some(STOP_TIMEOUT))?;
    Ok(Stopped::parse(&output).into_iter().next())
}

/// Stops every command a runner left running on `host` (see
/// [`super::layout::Layout::stop_orphans`]) and says how each ended.
///
/// # Errors
/// When the host cannot be reached or the stop script fails.
pub fn stop_orphans(host: &Host) -> Result<Vec<Stopped>, TransportError> {
    let script = host
        .layout
        .stop_orphans()
        .map_err(|e| host.transport.unquotable(e))?;
    // Every group gets its own grace period, one after another.
    let output = host.transport.run_with(
        "stopping commands left running",
        &script,
        None,
        Some(STOP_TIMEOUT * 4),
    )?;
    Ok(Stopped::parse(&output))
}

/// How a stopped command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It had ended before anything was sent (a stale pid file).
    Already,
    /// It ended on TERM within the grace period.
    Term,
    /// It was still there after the grace period and was killed.
    Kill,
    /// It survived KILL (a process slipway's user may not signal, such as
    /// root's under `sudo`, or one stuck in the kernel).
    StillRunning,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Already => "had already ended",
            Self::Term => "stopped (TERM)",
            Self::Kill => "killed (KILL, it outlived TERM by the grace period)",
            Self::StillRunning => {
                "still running after TERM and KILL (slipway's user may not signal it, e.g. a root process; stop it by hand)"
            }
        })
    }
}

/// One command a stop script dealt with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub job: JobName,
    /// Its process group id (0 when the pid file was unreadable).
    pub pgid: u32,
    pub how: Ended,
}

impl Stopped {
    /// Reads the `stopped<TAB>job<TAB>pgid<TAB>how` lines of a stop script.
    pub fn parse(output: &str) -> Vec<Self> {
        output
            .lines()
            .filter_map(|line| {
                let mut fields = line.split('\t');
                if fields.next() != Some("stopped") {
                    return None;
                }
                let job = JobName::parse(fields.next()?);
                let pgid = fields.next()?.parse().ok()?;
                let how = match fields.next()? {
                    "gone" => Ended::Already,
                    "term" => Ended::Term,
                    "kill" => Ended::Kill,
                    "alive" => Ended::StillRunning,
                    _ => return None,
                };
                Some(Self { job, pgid, how })
            })
            .collect()
    }
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (process group {}): {}",
            self.job, self.pgid, self.how
        )
    }
}

/// Which command a pid file stood for: `<id>.<what>.pid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobName {
    /// The deploy id (the release id for a package install).
    pub id: String,
    /// `hook`, `health`, `workers-start`, `dpkg`…
    pub what: String,
}

impl JobName {
    /// Splits `<id>.<what>`; ids never hold a dot.
    fn parse(name: &str) -> Self {
        let (id, what) = name.split_once('.').unwrap_or((name, "command"));
        Self {
            id: id.to_owned(),
            what: what.to_owned(),
        }
    }
}

impl fmt::Display for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {}", self.what, self.id)
    }
}

/// A command still running on a host, as [`super::layout::Layout::running`]
/// (and `read_state`) report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub job: JobName,
    pub pgid: u32,
}

impl Running {
    /// Reads the `running<TAB>job<TAB>pgid` lines among others.
    pub fn parse(output: &str) -> Vec<Self> {
        output
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("running\t")?;
                let (job, pgid) = rest.split_once('\t')?;
                Some(Self {
                    job: JobName::parse(job),
                    pgid: pgid.trim().parse().ok()?,
                })
            })
            .collect()
    }
}

impl fmt::Display for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (process group {})", self.job, self.pgid)
    }
}

/// Lists the commands still running on `host`.
///
/// # Errors
/// When the host cannot be reached.
pub fn running(host: &Host) -> Result<Vec<Running>, TransportError> {
    let script = host
        .layout
        .running()
        .map_err(|e| host.transport.unquotable(e))?;
    Ok(Running::parse(
        &host.transport.run("listing running commands", &script)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_and_running_lines_read_back() {
        let out = "noise\nstopped\td18f.hook\t4242\tkill\nstopped\tr1-abc.dpkg\t0\tgone\n";
        let stopped = Stopped::parse(out);
        assert_eq!(stopped.len(), 2);
        assert_eq!(stopped[0].job.what, "hook");
        assert_eq!(stopped[0].how, Ended::Kill);
        assert_eq!(
            stopped[1].to_string(),
            "dpkg of r1-abc (process group 0): had already ended"
        );
        let running = Running::parse("root\t1\nrunning\td18f.workers-start\t77\n");
        assert_eq!(
            running,
            [Running {
                job: JobName {
                    id: "d18f".into(),
                    what: "workers-start".into()
                },
                pgid: 77
            }]
        );
        assert_eq!(
            running[0].to_string(),
            "workers-start of d18f (process group 77)"
        );
    }
}
