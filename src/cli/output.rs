//! What a person (or a CI log) reads while slipway works.
//!
//! In a terminal, uploads get progress bars; anywhere else (CI, a git hook's
//! `remote:` lines, a pipe) every update is one plain line. Progress and
//! phases go to stderr; results a script may read (an artifact path, a
//! release id) go to stdout.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::notify::{Event, Sink};

/// One line to stdout; a closed or broken stdout is ignored, not a panic.
pub fn out_line(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// One line to stderr, the same way.
pub fn err_line(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

pub struct Console {
    quiet: bool,
    /// Per-host lines for every step (`-v`), not only for failures.
    verbose: bool,
    /// Colour on the stream progress goes to: a terminal, and `NO_COLOR`
    /// unset or empty.
    color: bool,
    /// Under GitHub Actions everything goes to stdout, in order with the
    /// workflow commands (`::group::`) that structure the log.
    stdout: bool,
    bars: Option<MultiProgress>,
    uploads: Mutex<HashMap<String, ProgressBar>>,
    /// Set by `--json`: stdout carries only the JSON document.
    results_on_stderr: std::sync::atomic::AtomicBool,
}

impl Console {
    pub fn new(quiet: bool, verbose: bool) -> Self {
        let interactive = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let stdout = std::env::var("GITHUB_ACTIONS").as_deref() == Ok("true");
        let terminal = if stdout {
            std::io::stdout().is_terminal()
        } else {
            std::io::stderr().is_terminal()
        };
        Self {
            quiet,
            verbose,
            color: terminal && colour_allowed(),
            stdout,
            bars: interactive.then(MultiProgress::new),
            uploads: Mutex::new(HashMap::new()),
            results_on_stderr: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A progress line.
    pub fn info(&self, line: &str) {
        if !self.quiet {
            self.line(line);
        }
    }

    /// A result; always printed, on stdout (stderr under `--json`).
    pub fn result(&self, line: &str) {
        if self
            .results_on_stderr
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.line(line);
        } else {
            out_line(line);
        }
    }

    /// From now on stdout is kept for one JSON document.
    pub fn results_to_stderr(&self) {
        self.results_on_stderr
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn error(&self, message: &str) {
        self.line(&format!("{}: {message}", self.paint("error", Tone::Bad)));
    }

    pub fn warn(&self, message: &str) {
        self.line(&format!("{}: {message}", self.paint("warning", Tone::Warn)));
    }

    /// `word` in the colour of `tone`, when colour is on.
    pub fn paint(&self, word: &str, tone: Tone) -> String {
        if !self.color {
            return word.to_owned();
        }
        let colour = match tone {
            Tone::Good => anstyle::AnsiColor::Green,
            Tone::Warn => anstyle::AnsiColor::Yellow,
            Tone::Bad => anstyle::AnsiColor::Red,
        };
        let style = anstyle::Style::new().fg_color(Some(colour.into())).bold();
        format!("{}{word}{}", style.render(), style.render_reset())
    }

    fn line(&self, line: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(line);
            }
            None if self.stdout => out_line(line),
            None => err_line(line),
        }
    }
}

/// What a coloured word means.
#[derive(Debug, Clone, Copy)]
pub enum Tone {
    Good,
    Warn,
    Bad,
}

/// <https://no-color.org>: any non-empty `NO_COLOR` turns colour off.
pub fn colour_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").as_deref() != Ok("dumb")
}

impl Sink for Console {
    fn emit(&self, event: &Event) {
        match event {
            Event::Started {
                app,
                environment,
                release,
                commit,
                deployer,
                hosts,
                action,
                ..
            } => {
                let commit = if commit.is_empty() {
                    String::new()
                } else {
                    format!(" (commit {})", &commit[..commit.len().min(12)])
                };
                self.info(&format!(
                    "==> {app} → {environment}: {} {release}{commit} by {deployer} on {} host(s)",
                    crate::rollout::program::action_word(*action),
                    hosts.len()
                ));
            }
            Event::HostPhase { host, phase, took } => {
                if let Some(bar) = self.uploads.lock().expect("bars").remove(host) {
                    bar.finish_and_clear();
                }
                if self.verbose {
                    self.info(&format!(
                        "    {phase:<8} {host}  {} ({:.2}s)",
                        self.paint("ok", Tone::Good),
                        took.as_secs_f64()
                    ));
                }
            }
            Event::HostFailed { host, phase, error } => {
                self.line(&format!(
                    "    {phase:<8} {host}  {}: {error}",
                    self.paint("FAILED", Tone::Bad)
                ));
            }
            Event::StepDone {
                phase,
                hosts,
                failed,
                took,
                undo,
            } => {
                let undo = if *undo { "undo " } else { "" };
                let ok = hosts - failed;
                let count = if *failed == 0 {
                    self.paint(&format!("{ok}/{hosts}"), Tone::Good)
                } else {
                    self.paint(&format!("{ok}/{hosts} FAILED on {failed}"), Tone::Bad)
                };
                self.info(&format!(
                    "  {undo}{phase:<8} {count}  {:.2}s",
                    took.as_secs_f64()
                ));
            }
            Event::Output { host, line } => self.info(&format!("  {host} | {line}")),
            Event::Note { message } => self.info(&format!("  {message}")),
            Event::Succeeded {
                release,
                previous,
                closed_window,
                duration,
                ..
            } => {
                let closed = if closed_window.is_zero() {
                    "never closed".to_owned()
                } else {
                    format!("closed for {:.2}s", closed_window.as_secs_f64())
                };
                self.info(&format!(
                    "==> live: {release} (was {}); {closed}, total {:.1}s",
                    previous.as_deref().unwrap_or("nothing"),
                    duration.as_secs_f64()
                ));
            }
            Event::Failed { .. } => {}
        }
    }

    fn progress(&self, host: &str, sent: u64, total: u64) {
        let Some(bars) = &self.bars else { return };
        let mut uploads = self.uploads.lock().expect("bars");
        let bar = uploads.entry(host.to_owned()).or_insert_with(|| {
            let bar = bars.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template(
                    "  upload   {prefix} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(host.to_owned());
            bar
        });
        bar.set_position(sent);
    }
}
