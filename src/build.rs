//! Running the build steps of `slipway.toml` in an exported tree.
//!
//! This module owns local process execution for builds and nothing else.
//! Invariants:
//! - Steps run in order, each as `sh -c <run>` in the build directory, with
//!   stdin closed (a step that prompts fails instead of hanging a deploy).
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
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;

use crate::config::BuildStep;

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
    env: &[(String, String)],
    on_line: &mut dyn FnMut(&str, &str),
) -> Result<(), BuildError> {
    for step in steps {
        run_step(dir, step, env, on_line)?;
    }
    Ok(())
}

fn run_step(
    dir: &Path,
    step: &BuildStep,
    env: &[(String, String)],
    on_line: &mut dyn FnMut(&str, &str),
) -> Result<(), BuildError> {
    let mut command = Command::new("sh");
    for var in crate::source::GIT_HOOK_VARS {
        command.env_remove(var);
    }
    let mut child = command
        .arg("-c")
        .arg(&step.run)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
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
        let result = run_steps(dir, steps, env, &mut |name, line| {
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
}
