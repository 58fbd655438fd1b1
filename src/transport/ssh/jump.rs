//! Jump hosts (ProxyJump): one connection to the bastion, a tunnel per target.
//!
//! Owns the process-wide cache of bastion connections and the pump threads
//! that carry each target's SSH stream over a `direct-tcpip` channel.
//! libssh2 needs a real socket for every session, so each tunnel is bridged
//! to a loopback TCP pair (`127.0.0.1`, peer address checked): the target
//! session talks to one end, a pump thread moves bytes between the other end
//! and the channel. Invariants: all hosts of a process that name the same
//! bastion share one verified, authenticated connection to it (the cache
//! holds it weakly, so it closes when the last tunnel goes); channels are
//! opened one at a time (libssh2 keeps channel-open state per session); the
//! bastion session is non-blocking, so pump threads never hold its lock
//! while waiting.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use ssh2::{Channel, Session};

use super::super::TransportError;

/// A verified, authenticated connection to a jump host.
pub struct Bastion {
    pub label: String,
    session: Session,
    /// Keeps the socket open as long as the session lives.
    _socket: TcpStream,
    /// Held while a channel is being opened.
    opening: Mutex<()>,
}

type Cache = Mutex<HashMap<String, Weak<Bastion>>>;

static CACHE: OnceLock<Cache> = OnceLock::new();

/// The bastion for `key`, connecting with `open` if no live one is cached.
/// Connecting happens under the cache lock, so parallel hosts wait for the
/// first one's connection instead of opening their own.
///
/// # Errors
/// Whatever `open` returns.
pub fn shared(
    key: &str,
    open: impl FnOnce() -> Result<(Session, TcpStream, String), TransportError>,
) -> Result<Arc<Bastion>, TransportError> {
    let mut cache = CACHE
        .get_or_init(Cache::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(live) = cache.get(key).and_then(Weak::upgrade) {
        return Ok(live);
    }
    let (session, socket, label) = open()?;
    session.set_blocking(false);
    let bastion = Arc::new(Bastion {
        label,
        session,
        _socket: socket,
        opening: Mutex::new(()),
    });
    cache.retain(|_, b| b.strong_count() > 0);
    cache.insert(key.to_owned(), Arc::downgrade(&bastion));
    Ok(bastion)
}

fn would_block(e: &ssh2::Error) -> bool {
    e.code() == ssh2::ErrorCode::Session(-37)
}

impl Bastion {
    /// A socket whose bytes reach `host:port` as seen from the bastion.
    /// `target` names the target in errors.
    ///
    /// # Errors
    /// When the bastion cannot open the channel in `timeout`, or no local
    /// socket pair can be made.
    pub fn tunnel(
        self: &Arc<Self>,
        target: &str,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpStream, TransportError> {
        let fail = |reason: String| TransportError::Connect {
            host: target.to_owned(),
            reason,
        };
        let deadline = Instant::now() + timeout;
        let channel = {
            let _one_at_a_time = self.opening.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                match self.session.channel_direct_tcpip(host, port, None) {
                    Ok(channel) => break channel,
                    Err(e) if would_block(&e) && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) if would_block(&e) => {
                        return Err(fail(format!(
                            "the jump host {} did not open a connection to {host}:{port} within {}",
                            self.label,
                            humantime::format_duration(timeout)
                        )));
                    }
                    Err(e) => {
                        return Err(fail(format!(
                            "the jump host {} cannot reach {host}:{port}: {}",
                            self.label,
                            e.message()
                        )));
                    }
                }
            }
        };
        let local =
            |e: std::io::Error| fail(format!("cannot make a local socket for the tunnel: {e}"));
        let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(local)?;
        let ours = TcpStream::connect(listener.local_addr().map_err(local)?).map_err(local)?;
        let (theirs, peer) = listener.accept().map_err(local)?;
        if peer != ours.local_addr().map_err(local)? {
            return Err(fail(
                "another process connected to the tunnel's local socket first".to_owned(),
            ));
        }
        theirs.set_nonblocking(true).map_err(local)?;
        let _ = theirs.set_nodelay(true);
        let _ = ours.set_nodelay(true);
        let bastion = Arc::clone(self);
        std::thread::Builder::new()
            .name(format!("slipway-jump-{host}:{port}"))
            .spawn(move || bastion.pump(channel, theirs))
            .map_err(local)?;
        Ok(ours)
    }

    /// Moves bytes both ways until either side closes.
    fn pump(&self, mut channel: Channel, mut local: TcpStream) {
        let mut down = vec![0u8; 64 * 1024];
        let mut up = vec![0u8; 64 * 1024];
        let (mut up_len, mut up_off) = (0usize, 0usize);
        let mut local_eof = false;
        let mut idle = 0u32;
        loop {
            let mut progressed = false;
            match channel.read(&mut down) {
                Ok(0) if channel.eof() => break,
                Ok(0) => {}
                Ok(n) => {
                    if write_all(&mut local, &down[..n]).is_err() {
                        break;
                    }
                    progressed = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
            if up_off == up_len && !local_eof {
                match local.read(&mut up) {
                    Ok(0) => local_eof = true,
                    Ok(n) => {
                        (up_len, up_off) = (n, 0);
                        progressed = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => local_eof = true,
                }
            }
            if up_off < up_len {
                match channel.write(&up[up_off..up_len]) {
                    Ok(n) => {
                        up_off += n;
                        progressed = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            if local_eof && up_off == up_len {
                break;
            }
            if progressed {
                idle = 0;
            } else {
                idle = idle.saturating_add(1);
                std::thread::sleep(if idle < 20 {
                    Duration::from_micros(50)
                } else {
                    Duration::from_millis(1)
                });
            }
        }
        // Finish closing (bounded), so no half-sent packet is left to block
        // the other tunnels on this session.
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Err(e) = channel.close() {
            if !would_block(&e) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = local.shutdown(Shutdown::Both);
    }
}

/// `write_all` on a non-blocking socket.
fn write_all(socket: &mut TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match socket.write(data) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
