//! Running the build steps of `slipway.toml` in an exported tree.
//!
//! This module owns local process execution for builds and nothing else.
//! Invariants:
//! - Steps run in order, each as `sh -c <run>` in the build directory, with
//!   stdin closed (a step that prompts fails instead of hanging a deploy),
//!   inside the [`Sandbox`] the caller chose: steps are untrusted code and
//!   see only a cleared environment (see `sandbox`).
//! - Every line a step prints, on stdout or stderr, reaches the caller's
//!   callback as it is printed (both pipes are read on their own threads so
//!   neither can fill up and stall the step); lines that are not UTF-8 are
//!   passed on lossily.
//! - The first failing step stops the build; its error names the step, its
//!   exit status and the last [`TAIL_LINES`] lines it printed.
//!
//! A step must not leave background processes holding its output open: the
//! step is considered finished when both of its pipes are closed.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;

use crate::config::BuildStep;

mod sandbox;

pub use sandbox::{Sandbox, SandboxPolicy, SandboxUnavailable};

/// How many of a failing step's last output lines its error carries.
pub const TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot start build step `{name}` (sh -c in {}): {source}", dir.display())]
    Spawn {
        name: String,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lost the output of build step `{name}`: {source}")]
    Output {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot make a private home directory for the build steps: {0}")]
    Home(#[source] io::Error),
    #[error("build step `{name}` failed with {}; last output:\n{tail}", status_text(*.status))]
    StepFailed {
        name: String,
        /// The exit code, or `None` when a signal ended the step.
        status: Option<i32>,
        /// The step's last [`TAIL_LINES`] lines of output.
        tail: String,
    },
}

fn status_text(status: Option<i32>) -> String {
    match status {
        Some(code) => format!("exit status {code}"),
        None => "no exit status (killed by a signal)".to_owned(),
    }
}

/// Runs `steps` in order in `dir` with `env` added to slipway's environment,
/// streaming every output line to `on_line(step_name, line)`.
pub fn run_steps(
    dir: &Path,
    steps: &[BuildStep],
    sandbox: &Sandbox,
    env: &[(String, String)],
    on_line: &mut dyn FnMut(&str, &str),
) -> Result<(), BuildError> {
    // Outside bwrap, HOME is a fresh directory of its own, removed after.
    let home = crate::scratch::dir("build-home").map_err(BuildError::Home)?;
    for step in steps {
        run_step(dir, step, sandbox, home.path(), env, on_line)?;
    }
    Ok(())
}

fn run_step(
    dir: &Path,
    step: &BuildStep,
    sandbox: &Sandbox,
    home: &Path,
    env: &[(String, String)],
    on_line: &mut dyn FnMut(&str, &str),
) -> Result<(), BuildError> {
    let mut command = sandbox.command(dir, home, &step.run, env);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BuildError::Spawn {
            name: step.name.clone(),
            dir: dir.to_owned(),
            source,
        })?;

    let (tx, rx) = mpsc::channel();
    let readers = [
        child.stdout.take().map(|out| spawn_reader(out, tx.clone())),
        child.stderr.take().map(|err| spawn_reader(err, tx)),
    ];

    // The callback is not Send, so lines travel to this thread; the loop
    // ends when both readers have dropped their senders (pipes closed).
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    for line in rx {
        on_line(&step.name, &line);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }

    let status = child.wait();
    let read_result = readers
        .into_iter()
        .flatten()
        .map(|reader| {
            reader
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("output reader panicked")))
        })
        .collect::<io::Result<Vec<()>>>();
    let output_error = |source| BuildError::Output {
        name: step.name.clone(),
        source,
    };
    let status: ExitStatus = status.map_err(output_error)?;
    read_result.map_err(output_error)?;

    if status.success() {
        return Ok(());
    }
    Err(BuildError::StepFailed {
        name: step.name.clone(),
        status: status.code(),
        tail: Vec::from(tail).join("\n"),
    })
}

/// Reads `pipe` line by line on a new thread, sending each line (without its
/// line ending) to `tx`.
fn spawn_reader(
    pipe: impl Read + Send + 'static,
    tx: mpsc::Sender<String>,
) -> thread::JoinHandle<io::Result<()>> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf)? == 0 {
                return Ok(());
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']);
            // A closed receiver means the caller is gone; keep draining so
            // the step is not killed by SIGPIPE halfway through.
            let _ = tx.send(line.to_owned());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps without bwrap, as on an operator's machine that lacks it.
    fn plain() -> Sandbox {
        Sandbox::ClearedEnv {
            why: "unit test".to_owned(),
        }
    }

    fn step(name: &str, run: &str) -> BuildStep {
        BuildStep {
            name: name.to_owned(),
            run: run.to_owned(),
        }
    }

    fn run(
        dir: &Path,
        steps: &[BuildStep],
        env: &[(String, String)],
    ) -> (Result<(), BuildError>, Vec<(String, String)>) {
        let mut lines = Vec::new();
        let result = run_steps(dir, steps, &plain(), env, &mut |name, line| {
            lines.push((name.to_owned(), line.to_owned()))
        });
        (result, lines)
    }

    #[test]
    fn steps_run_in_order_in_dir_with_env() {
        let dir = tempfile::tempdir().unwrap();
        let steps = [
            step("write", "printf '%s' \"$GREETING\" > out.txt"),
            step("read", "cat out.txt; echo; pwd"),
            // Would wait forever if stdin were inherited from a terminal.
            step("stdin", "cat"),
        ];
        let env = [("GREETING".to_owned(), "hello world".to_owned())];
        let (result, lines) = run(dir.path(), &steps, &env);
        result.unwrap();
        let canonical = dir.path().canonicalize().unwrap();
        assert_eq!(
            lines,
            [
                ("read".to_owned(), "hello world".to_owned()),
                ("read".to_owned(), canonical.display().to_string()),
            ]
        );
    }

    #[test]
    fn stdout_and_stderr_are_both_streamed() {
        let dir = tempfile::tempdir().unwrap();
        let (result, lines) = run(
            dir.path(),
            &[step("both", "echo out; echo err >&2; printf 'no newline'")],
            &[],
        );
        result.unwrap();
        let mut texts: Vec<_> = lines.iter().map(|(_, l)| l.as_str()).collect();
        texts.sort();
        assert_eq!(texts, ["err", "no newline", "out"]);
    }

    #[test]
    fn lines_arrive_while_the_step_runs() {
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let mut first_line_after = None;
        run_steps(
            dir.path(),
            &[step("slow", "echo first; sleep 2; echo second")],
            &plain(),
            &[],
            &mut |_, _| {
                first_line_after.get_or_insert(started.elapsed());
            },
        )
        .unwrap();
        assert!(first_line_after.unwrap() < std::time::Duration::from_millis(1800));
    }

    #[test]
    fn failing_step_names_itself_and_stops_the_build() {
        let dir = tempfile::tempdir().unwrap();
        let steps = [
            step("deps", "true"),
            step(
                "assets",
                "for i in $(seq 1 30); do echo line $i; done; echo boom; exit 2",
            ),
            step("never", "touch ran"),
        ];
        let (result, _) = run(dir.path(), &steps, &[]);
        let err = result.unwrap_err();
        let BuildError::StepFailed { name, status, tail } = &err else {
            panic!("unexpected error {err}");
        };
        assert_eq!(name, "assets");
        assert_eq!(*status, Some(2));
        assert_eq!(tail.lines().count(), TAIL_LINES);
        assert!(tail.ends_with("boom"), "{tail}");
        assert!(!tail.contains("line 10\n"), "{tail}");
        assert!(
            err.to_string()
                .starts_with("build step `assets` failed with exit status 2; last output:\n"),
            "{err}"
        );
        assert!(!dir.path().join("ran").exists());
    }

    #[test]
    fn killed_step_has_no_status() {
        let dir = tempfile::tempdir().unwrap();
        let (result, _) = run(dir.path(), &[step("killed", "kill -9 $$")], &[]);
        let err = result.unwrap_err();
        assert!(
            matches!(err, BuildError::StepFailed { status: None, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("killed by a signal"), "{err}");
    }

    #[test]
    fn missing_dir_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let (result, _) = run(&missing, &[step("x", "true")], &[]);
        let err = result.unwrap_err();
        assert!(matches!(err, BuildError::Spawn { .. }), "{err}");
        assert!(
            err.to_string().starts_with("cannot start build step `x`"),
            "{err}"
        );
    }

    // Build steps are untrusted: under bwrap they see a cleared
    // environment, a private /proc and none of the masked paths.
    #[test]
    fn bwrap_steps_see_no_secrets_and_no_hidden_paths() {
        let dir = tempfile::tempdir().unwrap();
        let private = tempfile::tempdir().unwrap();
        let key = private.path().join("id_ed25519");
        std::fs::write(&key, "PRIVATE KEY").unwrap();
        let sandbox = Sandbox::choose(
            &[step("x", "true")],
            SandboxPolicy {
                required: true,
                hidden: vec![private.path().to_path_buf()],
                ..SandboxPolicy::default()
            },
        )
        .expect("bwrap runs on the test machine (.ci/run installs bubblewrap)");
        assert!(matches!(sandbox, Sandbox::Bwrap { .. }));
        let script = format!(
            "env | sort > env.txt; cat {} > key.txt 2>&1 || echo unreadable > key.txt; ls /proc | grep -c '^[0-9]' > procs.txt; echo ok > written.txt",
            key.display()
        );
        let mut lines = Vec::new();
        run_steps(
            dir.path(),
            &[step("probe", &script)],
            &sandbox,
            &[("SLIPWAY_APP".to_owned(), "shop".to_owned())],
            &mut |_, l| lines.push(l.to_owned()),
        )
        .unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        let names: Vec<String> = read("env.txt")
            .lines()
            .map(|l| l.split('=').next().unwrap_or_default().to_owned())
            .collect();
        for name in &names {
            assert!(
                ["PATH", "HOME", "LANG", "SLIPWAY_APP", "PWD", "SHLVL", "_"]
                    .contains(&name.as_str()),
                "unexpected variable {name} in {names:?}"
            );
        }
        assert!(!read("key.txt").contains("PRIVATE KEY"));
        let procs: usize = read("procs.txt").trim().parse().unwrap();
        assert!(
            procs <= 4,
            "the step sees only its own processes, saw {procs}"
        );
        assert_eq!(read("written.txt"), "ok\n");
    }
}
