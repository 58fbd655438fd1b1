//! `local:/path` hosts: a folder on this machine stands for a host's root.
//!
//! The git server and the web server are often one machine, and a folder per
//! "host" lets the whole rollout run (and be tested) without a network.
//! Invariant: a local host only ever touches paths under its own folder,
//! because [`Transport::resolve`] places `deploy_to` inside it and every
//! script slipway runs uses resolved paths.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::{Exit, MAX_LINE_BYTES, Script, Tail, Transport, TransportError};

/// How often a running command is checked against its deadline.
const POLL: Duration = Duration::from_millis(20);

pub struct Local {
    spec: String,
    root: PathBuf,
}

impl Local {
    pub fn new(spec: &str, root: PathBuf) -> Self {
        Self {
            spec: spec.to_owned(),
            root,
        }
    }

    fn io(&self, what: &str, source: std::io::Error) -> TransportError {
        TransportError::Io {
            host: self.spec.clone(),
            what: what.to_owned(),
            source,
        }
    }

    fn timeout(&self, after: Option<Duration>) -> TransportError {
        TransportError::Timeout {
            host: self.spec.clone(),
            what: "command".to_owned(),
            after: after.unwrap_or_default(),
        }
    }
}

/// After the shell exits, how long to keep collecting output from processes
/// it left behind holding the pipe (a worker started with `&`), before
/// returning without them.
const DRAIN: Duration = Duration::from_millis(200);

fn kill_group(pid: u32) {
    // `kill` the binary, because this crate forbids `unsafe` (no libc::kill).
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

impl Transport for Local {
    fn host(&self) -> &str {
        &self.spec
    }

    fn resolve(&self, path: &str) -> String {
        self.root
            .join(path.trim_start_matches('/'))
            .to_string_lossy()
            .into_owned()
    }

    fn exec(
        &self,
        script: &Script,
        stdin: Option<&mut (dyn Read + Send)>,
        timeout: Option<Duration>,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<Exit, TransportError> {
        let mut command = Command::new("sh");
        for var in crate::source::GIT_HOOK_VARS {
            command.env_remove(var);
        }
        let mut child = command
            .arg("-c")
            // One ordered stream: stderr joins stdout inside the shell.
            .arg(format!("exec 2>&1\n{script}"))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|source| TransportError::Spawn {
                host: self.spec.clone(),
                source,
            })?;
        let child_stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout was piped");
        // The reader is detached rather than scoped: a daemon started by the
        // script may hold the pipe open long after the script has exited.
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                // A line longer than the cap arrives in pieces, so output
                // without newlines cannot grow one buffer without bound.
                line.clear();
                match (&mut reader)
                    .take(MAX_LINE_BYTES as u64)
                    .read_until(b'\n', &mut line)
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                if tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    break;
                }
            }
        });
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut tail = Tail::default();
        let mut on = |line: String| {
            tail.push(&line);
            on_line(&line);
        };
        let code = std::thread::scope(|scope| {
            if let Some((input, mut pipe)) = stdin.zip(child_stdin) {
                scope.spawn(move || {
                    // A script that exits early closes the pipe; its exit
                    // status, not this write error, is what matters.
                    let _ = std::io::copy(input, &mut pipe);
                    let _ = pipe.flush();
                });
            }
            loop {
                match rx.recv_timeout(POLL) {
                    Ok(line) => on(line),
                    Err(RecvTimeoutError::Timeout) => {}
                    // Output is closed: the script is ending. Look again
                    // soon rather than a whole poll interval later (each
                    // step's round trip on a `local:` host is this wait).
                    Err(RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                if let Some(status) = child.try_wait().map_err(|e| self.io("waiting for sh", e))? {
                    while let Ok(line) = rx.recv_timeout(DRAIN) {
                        on(line);
                    }
                    return Ok(status.code());
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    kill_group(child.id());
                    let _ = child.wait();
                    return Err(self.timeout(timeout));
                }
            }
        })?;
        Ok(Exit {
            code,
            tail: tail.text(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> (tempfile::TempDir, Local) {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = Local::new("local:test", dir.path().to_path_buf());
        (dir, local)
    }

    #[test]
    fn resolve_stays_inside_the_folder() {
        let (dir, local) = host();
        assert_eq!(
            local.resolve("/srv/shop"),
            dir.path().join("srv/shop").to_string_lossy()
        );
    }

    #[test]
    fn output_streams_in_order_and_failures_carry_the_tail() {
        let (_dir, local) = host();
        let script = Script::new().raw("echo one; echo two >&2; exit 3");
        let mut seen = Vec::new();
        let exit = local
            .exec(&script, None, None, &mut |l| seen.push(l.to_owned()))
            .expect("runs");
        assert_eq!(seen, ["one", "two"]);
        assert_eq!(exit.code, Some(3));
        let err = local.run("step", &script).unwrap_err().to_string();
        assert!(err.contains("exit status 3"), "{err}");
        assert!(err.contains("two"), "{err}");
    }

    #[test]
    fn stdin_is_fed_and_upload_is_atomic() {
        let (dir, local) = host();
        let src = dir.path().join("src.bin");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let dest = dir.path().join("dest.bin");
        let seen = std::sync::atomic::AtomicU64::new(0);
        local
            .upload(&src, dest.to_str().unwrap(), &|n| {
                seen.store(n, std::sync::atomic::Ordering::Relaxed);
            })
            .expect("upload");
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert_eq!(seen.into_inner(), data.len() as u64);
        assert!(!dir.path().join("dest.bin.part").exists());
    }

    #[test]
    fn output_without_newlines_arrives_in_capped_pieces() {
        // A command printing with no newline used to grow one line for ever.
        let (_dir, local) = host();
        let script = Script::new().raw("head -c 200000 /dev/zero | tr '\\0' x; echo; echo end");
        let mut seen = Vec::new();
        local
            .exec(&script, None, None, &mut |l| seen.push(l.len()))
            .expect("runs");
        assert_eq!(seen.iter().sum::<usize>(), 200_000 + 3, "{seen:?}");
        assert!(seen.iter().all(|&n| n <= MAX_LINE_BYTES), "{seen:?}");
        assert_eq!(seen.last(), Some(&3));
    }

    #[test]
    fn collected_output_stops_at_its_cap() {
        // What `run` returns is kept in memory (state, history read back
        // from a host), so past the cap the step fails instead.
        let (_dir, local) = host();
        let over = super::super::MAX_OUTPUT_BYTES + 1024 * 1024;
        let script = Script::from_trusted(format!("head -c {over} /dev/zero | tr '\\0' x\n"));
        let err = local.run("reading history", &script).unwrap_err();
        assert!(matches!(err, TransportError::TooMuchOutput { .. }), "{err}");
        assert!(err.to_string().contains("more than 64 MiB"), "{err}");
    }

    #[test]
    fn a_hung_command_is_killed_at_its_timeout() {
        let (_dir, local) = host();
        let started = Instant::now();
        let err = local
            .run_with(
                "hook",
                &Script::new().raw("sleep 30 & sleep 30"),
                None,
                Some(Duration::from_millis(300)),
            )
            .unwrap_err();
        assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("hook"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
