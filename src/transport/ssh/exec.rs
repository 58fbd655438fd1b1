//! Running one command on an open session without ever blocking on the host.
//!
//! Owns the non-blocking loop that feeds stdin, streams output lines, sends
//! keepalives and enforces deadlines. Invariants: the session is in
//! non-blocking mode, so no libssh2 call can hang on a frozen host; every
//! wait is bounded by the deadline and by a silence limit (nothing received,
//! not even keepalive replies); stdin is written in turns with reading
//! output, so a command that prints a lot before reading its input cannot
//! deadlock us; a write libssh2 left half-sent is always retried before
//! anything else is sent (keepalives only go out when no write is pending).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ssh2::{BlockDirections, ExtendedData, Session};

use crate::transport::MAX_LINE_BYTES;

/// Bytes read from stdin and offered to the channel at a time.
pub const CHUNK: usize = 256 * 1024;
/// The longest single wait, so deadlines and keepalives are checked often.
const TICK: Duration = Duration::from_millis(50);
/// The first wait after progress. libssh2 may already hold the bytes it
/// needs in its own buffer while the socket is empty, so a wait on the
/// socket can be for nothing: it starts tiny and doubles up to [`TICK`]
/// while nothing happens. A trivial remote command then costs a few
/// milliseconds instead of a tick per protocol step.
const FIRST_PAUSE: Duration = Duration::from_millis(1);

/// Why a command did not finish normally.
#[derive(Debug)]
pub enum Stop {
    /// The deadline passed.
    Timeout,
    /// Nothing arrived from the host for this long.
    Silent(Duration),
    /// The connection or channel failed; says while doing what.
    Failed(String, String),
}

/// Time limits for one command.
pub struct Limits {
    pub deadline: Option<Instant>,
    /// Silence (nothing received, keepalive replies included) after which
    /// the host is gone: one keepalive interval plus the connect timeout.
    pub lost_after: Duration,
}

struct Pacer<'a> {
    session: &'a Session,
    socket: &'a TcpStream,
    limits: Limits,
    heard: Instant,
    /// The next idle wait; see [`FIRST_PAUSE`].
    pause: Duration,
}

impl Pacer<'_> {
    fn silence_limit(&self) -> Duration {
        self.limits.lost_after
    }

    /// Nothing progressed: check the limits, keep the connection alive and
    /// wait (briefly) for the socket.
    fn idle(&mut self, may_keepalive: bool) -> Result<(), Stop> {
        let now = Instant::now();
        if self.limits.deadline.is_some_and(|d| now >= d) {
            return Err(Stop::Timeout);
        }
        let silent = now.duration_since(self.heard);
        if silent > self.silence_limit() {
            // The bound it passed, not the silence to the nanosecond.
            return Err(Stop::Silent(self.silence_limit()));
        }
        let directions = self.session.block_directions();
        if may_keepalive
            && !matches!(
                directions,
                BlockDirections::Outbound | BlockDirections::Both
            )
        {
            // Errors here resurface on the next channel call.
            let _ = self.session.keepalive_send();
        }
        let mut wait = self.pause;
        self.pause = (self.pause * 2).min(TICK);
        if let Some(deadline) = self.limits.deadline {
            wait = wait.min(deadline.saturating_duration_since(now));
        }
        if matches!(directions, BlockDirections::Outbound) {
            std::thread::sleep(wait.min(Duration::from_millis(1)));
            return Ok(());
        }
        match wait_readable(self.socket, wait) {
            Ok(true) => {
                self.heard = Instant::now();
                self.pause = FIRST_PAUSE;
            }
            Ok(false) => {}
            Err(e) => {
                return Err(Stop::Failed(
                    "waiting for the host".to_owned(),
                    e.to_string(),
                ));
            }
        }
        Ok(())
    }

    /// Retries a libssh2 call until it stops saying "would block".
    fn retry<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut() -> Result<T, ssh2::Error>,
    ) -> Result<T, Stop> {
        loop {
            match op() {
                Ok(v) => {
                    self.pause = FIRST_PAUSE;
                    return Ok(v);
                }
                Err(e) if e.code() == ssh2::ErrorCode::Session(-37) => self.idle(false)?,
                Err(e) => return Err(Stop::Failed(what.to_owned(), e.message().to_owned())),
            }
        }
    }
}

/// Waits up to `max` for bytes to arrive, without consuming them (libssh2
/// reads them). `Ok(true)` when some are there.
fn wait_readable(socket: &TcpStream, max: Duration) -> std::io::Result<bool> {
    let max = max.max(Duration::from_millis(1));
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(max))?;
    let mut byte = [0u8; 1];
    let peeked = socket.peek(&mut byte);
    socket.set_nonblocking(true)?;
    match peeked {
        Ok(0) => Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "the host closed the connection",
        )),
        Ok(_) => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Splits a byte stream into lines the way `BufRead::lines` does, except
/// that a line longer than [`MAX_LINE_BYTES`] is cut into pieces of that
/// size, so a host sending no newline cannot grow the buffer without bound.
#[derive(Default)]
struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    fn push(&mut self, bytes: &[u8], on_line: &mut dyn FnMut(&str)) {
        self.partial.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = self.partial[start..].iter().position(|&b| b == b'\n') {
            let line = &self.partial[start..start + pos];
            if line.is_empty() {
                emit(line, on_line);
            }
            for piece in line.chunks(MAX_LINE_BYTES) {
                emit(piece, on_line);
            }
            start += pos + 1;
        }
        while self.partial.len() - start >= MAX_LINE_BYTES {
            emit(&self.partial[start..start + MAX_LINE_BYTES], on_line);
            start += MAX_LINE_BYTES;
        }
        self.partial.drain(..start);
    }

    fn finish(&mut self, on_line: &mut dyn FnMut(&str)) {
        if !self.partial.is_empty() {
            emit(&std::mem::take(&mut self.partial), on_line);
        }
    }
}

fn emit(line: &[u8], on_line: &mut dyn FnMut(&str)) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    on_line(&String::from_utf8_lossy(line));
}

/// stdin on its way to the channel.
struct Feed<'a> {
    reader: &'a mut (dyn Read + Send),
    buf: Vec<u8>,
    off: usize,
    done: bool,
}

/// Runs `command` and returns its exit code (`None` for a signal).
///
/// # Errors
/// [`Stop`] when a limit was reached or the connection failed; the session
/// should then be discarded.
pub fn run(
    session: &Session,
    socket: &TcpStream,
    command: &str,
    stdin: Option<&mut (dyn Read + Send)>,
    limits: Limits,
    on_line: &mut dyn FnMut(&str),
) -> Result<Option<i32>, Stop> {
    let mut pacer = Pacer {
        session,
        socket,
        limits,
        heard: Instant::now(),
        pause: FIRST_PAUSE,
    };
    let mut channel = pacer.retry("opening a channel", || session.channel_session())?;
    pacer.retry("merging stderr", || {
        channel.handle_extended_data(ExtendedData::Merge)
    })?;
    pacer.retry("starting the command", || channel.exec(command))?;

    let mut feed = stdin.map(|reader| Feed {
        reader,
        buf: Vec::with_capacity(CHUNK),
        off: 0,
        done: false,
    });
    let mut eof_sent = false;
    let mut lines = Lines::default();
    let mut out = vec![0u8; 64 * 1024];
    loop {
        let mut progressed = false;
        if let Some(f) = feed.as_mut() {
            let mut budget = 4 * CHUNK;
            let mut closed = false;
            while budget > 0 {
                if f.off == f.buf.len() {
                    if f.done {
                        break;
                    }
                    f.buf.resize(CHUNK, 0);
                    let n = read_some(f.reader, &mut f.buf).map_err(|e| {
                        Stop::Failed("reading the input to send".to_owned(), e.to_string())
                    })?;
                    f.buf.truncate(n);
                    f.off = 0;
                    if n == 0 {
                        f.done = true;
                        break;
                    }
                }
                match channel.write(&f.buf[f.off..]) {
                    Ok(0) => break,
                    Ok(n) => {
                        f.off += n;
                        budget = budget.saturating_sub(n);
                        progressed = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // The command closed its input (it exited early); its
                    // exit status, not this, is what matters.
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if closed || (f.done && f.off == f.buf.len()) {
                feed = None;
            }
        }
        if feed.is_none() && !eof_sent {
            match channel.send_eof() {
                Ok(()) => {
                    eof_sent = true;
                    progressed = true;
                }
                Err(e) if e.code() == ssh2::ErrorCode::Session(-37) => {}
                Err(_) => eof_sent = true,
            }
        }
        loop {
            match channel.read(&mut out) {
                Ok(0) => break,
                Ok(n) => {
                    pacer.heard = Instant::now();
                    lines.push(&out[..n], on_line);
                    progressed = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(Stop::Failed("reading output".to_owned(), e.to_string())),
            }
        }
        if channel.eof() {
            break;
        }
        if progressed {
            pacer.pause = FIRST_PAUSE;
        } else {
            pacer.idle(feed.is_none() && eof_sent)?;
        }
    }
    lines.finish(on_line);
    pacer.retry("closing the channel", || channel.close())?;
    pacer.retry("closing the channel", || channel.wait_close())?;
    let signal = channel.exit_signal().ok().and_then(|s| s.exit_signal);
    if signal.is_some() {
        return Ok(None);
    }
    let code = pacer.retry("reading the exit status", || channel.exit_status())?;
    Ok(Some(code))
}

/// One read, retried when interrupted (a file gives a full chunk).
fn read_some(reader: &mut (dyn Read + Send), buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_like_bufread() {
        let mut seen = Vec::new();
        let mut lines = Lines::default();
        let mut on = |l: &str| seen.push(l.to_owned());
        lines.push(b"one\r\ntw", &mut on);
        lines.push(b"o\n\nthree", &mut on);
        lines.finish(&mut on);
        assert_eq!(seen, ["one", "two", "", "three"]);
    }

    #[test]
    fn a_line_without_end_is_cut_at_the_cap() {
        let mut seen = Vec::new();
        let mut lines = Lines::default();
        let mut on = |l: &str| seen.push(l.len());
        let block = vec![b'x'; 1000];
        for _ in 0..(3 * MAX_LINE_BYTES / 1000) {
            lines.push(&block, &mut on);
        }
        assert!(lines.partial.len() < MAX_LINE_BYTES);
        lines.push(b"\n", &mut on);
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen.iter().all(|&n| n <= MAX_LINE_BYTES));
        assert_eq!(seen.iter().sum::<usize>(), 3 * MAX_LINE_BYTES / 1000 * 1000);
    }
}
