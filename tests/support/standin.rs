//! Stand-ins for the SaaS services notifiers talk to: a small HTTP/1.1
//! server on 127.0.0.1 that records every request and answers from a
//! script (`500, 500, then 200 ok`; or never answer, for timeouts).
//!
//! One thread accepts, one thread per connection; bodies are read by
//! `Content-Length` (all slipway sends). Every answer closes the
//! connection, so each request is a fresh one and a retry is visible as a
//! second request. The server stops when the value is dropped.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the stand-in answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16, String),
    /// A status and a JSON body, sent as `application/json` (as GitHub's
    /// REST API answers).
    Json(u16, String),
    /// Reads the request and never answers (until the server is dropped).
    Hang,
    /// `200` and a body that never ends (no length; bytes until the client
    /// hangs up or the server is dropped).
    Endless,
}

impl Reply {
    pub fn ok() -> Self {
        Self::Status(200, "ok".to_owned())
    }

    pub fn status(code: u16, body: &str) -> Self {
        Self::Status(code, body.to_owned())
    }

    pub fn json(code: u16, body: &serde_json::Value) -> Self {
        Self::Json(code, body.to_string())
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, percent-encoding kept.
    pub path: String,
    /// Lower-cased names; for a repeated header, its last value.
    pub headers: BTreeMap<String, String>,
    /// Every header line in order, names lower-cased, repeats kept.
    pub header_lines: Vec<(String, String)>,
    pub raw_body: String,
    /// The body as JSON; `Null` when empty or not JSON.
    pub body: serde_json::Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_lowercase()).map(String::as_str)
    }

    /// Every value sent for header `name`, in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        let name = name.to_lowercase();
        self.header_lines
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The JSON value at `pointer` (RFC 6901, e.g. `/variables/deployment/version`).
    #[track_caller]
    pub fn json(&self, pointer: &str) -> &serde_json::Value {
        self.body.pointer(pointer).unwrap_or_else(|| {
            panic!(
                "{} {} has no {pointer}: {}",
                self.method, self.path, self.raw_body
            )
        })
    }

    /// The string at `pointer`.
    #[track_caller]
    pub fn str(&self, pointer: &str) -> &str {
        self.json(pointer)
            .as_str()
            .unwrap_or_else(|| panic!("{pointer} is not a string in {}", self.raw_body))
    }

    #[track_caller]
    pub fn assert_request(&self, method: &str, path: &str) -> &Self {
        assert_eq!(
            (self.method.as_str(), self.path.as_str()),
            (method, path),
            "{self:?}"
        );
        self
    }

    #[track_caller]
    pub fn assert_header(&self, name: &str, value: &str) -> &Self {
        assert_eq!(self.header(name), Some(value), "header {name} of {self:?}");
        self
    }

    /// `pointer` is a string containing every one of `needles`.
    #[track_caller]
    pub fn assert_str_contains(&self, pointer: &str, needles: &[&str]) -> &Self {
        let text = self.str(pointer);
        for needle in needles {
            assert!(
                text.contains(needle),
                "{pointer} = {text:?} lacks {needle:?}"
            );
        }
        self
    }

    /// `pointer` is a JSON list of strings.
    #[track_caller]
    pub fn assert_string_list(&self, pointer: &str) -> Vec<String> {
        let list = self
            .json(pointer)
            .as_array()
            .unwrap_or_else(|| panic!("{pointer} is not a list in {}", self.raw_body));
        list.iter()
            .map(|v| {
                v.as_str()
                    .unwrap_or_else(|| panic!("{pointer} holds {v}, not a string"))
                    .to_owned()
            })
            .collect()
    }

    /// `pointer` is a JSON number.
    #[track_caller]
    pub fn assert_number(&self, pointer: &str) -> &Self {
        assert!(
            self.json(pointer).is_number(),
            "{pointer} is not a number in {}",
            self.raw_body
        );
        self
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    requests: Vec<Recorded>,
}

/// A running stand-in; stops on drop.
pub struct StandIn {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    fallback: Reply,
    stop: Arc<AtomicBool>,
}

impl StandIn {
    /// Answers `200 ok` to everything.
    pub fn start() -> Self {
        Self::scripted(Vec::new(), Reply::ok())
    }

    /// Answers with `script` in order, then `fallback` for ever.
    pub fn scripted(script: Vec<Reply>, fallback: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State {
            script: script.into(),
            requests: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let server = Self {
            addr,
            state: Arc::clone(&state),
            fallback: fallback.clone(),
            stop: Arc::clone(&stop),
        };
        std::thread::spawn(move || accept(listener, state, fallback, stop));
        server
    }

    /// Never answers anything.
    pub fn hanging() -> Self {
        Self::scripted(Vec::new(), Reply::Hang)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().expect("stand-in state").requests.clone()
    }

    /// The requests, once at least `n` have arrived (or `within` passed).
    pub fn wait_for(&self, n: usize, within: Duration) -> Vec<Recorded> {
        let start = Instant::now();
        loop {
            let requests = self.requests();
            if requests.len() >= n || start.elapsed() > within {
                return requests;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The reply given once the script is used up.
    pub fn fallback(&self) -> &Reply {
        &self.fallback
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn accept(listener: TcpListener, state: Arc<Mutex<State>>, fallback: Reply, stop: Arc<AtomicBool>) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let (state, fallback, stop) = (Arc::clone(&state), fallback.clone(), Arc::clone(&stop));
        std::thread::spawn(move || serve(stream, &state, &fallback, &stop));
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>, fallback: &Reply, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let Some(request) = read_request(&mut reader) else {
        return;
    };
    let reply = {
        let mut state = state.lock().expect("stand-in state");
        state.requests.push(request);
        state.script.pop_front().unwrap_or_else(|| fallback.clone())
    };
    if let Reply::Endless = reply {
        endless(stream, stop);
        return;
    }
    let (code, content_type, body) = match reply {
        Reply::Status(code, body) => (code, "text/plain", body),
        Reply::Json(code, body) => (code, "application/json; charset=utf-8", body),
        Reply::Hang => {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
        Reply::Endless => return,
    };
    let mut stream = stream;
    let head = format!(
        "HTTP/1.1 {code} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        reason(code),
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
}

/// Streams a body with no end: the answer a broken or hostile service
/// could give, to check clients stop reading at their cap.
fn endless(mut stream: TcpStream, stop: &AtomicBool) {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let chunk = vec![b' '; 64 * 1024];
    while !stop.load(Ordering::SeqCst) && stream.write_all(&chunk).is_ok() {}
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Recorded> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = BTreeMap::new();
    let mut header_lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim().to_lowercase(), value.trim().to_owned());
            header_lines.push((name.clone(), value.clone()));
            headers.insert(name, value);
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let raw_body = String::from_utf8_lossy(&body).into_owned();
    let body = serde_json::from_str(&raw_body).unwrap_or(serde_json::Value::Null);
    Some(Recorded {
        method,
        path,
        headers,
        header_lines,
        raw_body,
        body,
    })
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}
