//! Real nginx servers in front of `local:` hosts, configured with the
//! snippet `slipway nginx` prints, and a bounded load generator that records
//! what each request got.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The nginx binary; installed by `.ci/run`. A test that needs it fails
/// loudly rather than skipping.
fn nginx_binary() -> PathBuf {
    for candidate in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("nginx is not installed: run `apt-get install -y nginx` (bash .ci/run does)");
}

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// One nginx serving one host's release through `snippet`.
pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(snippet: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("slipway-nginx-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        let user = if is_root() { "user root;" } else { "" };
        let conf = format!(
            "{user}\ndaemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port};\n{snippet}\n  }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).expect("write nginx.conf");
        let child = Command::new(nginx_binary())
            .args([
                "-e",
                &format!("{d}/error.log"),
                "-p",
                &d.to_string(),
                "-c",
                &format!("{d}/nginx.conf"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {addr}: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            addr,
            child,
            _dir: dir,
        }
    }

    pub fn get(&self, path: &str) -> Response {
        get(self.addr, path, &[])
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// What one request got.
#[derive(Debug, Clone)]
pub struct Response {
    /// 0 when the connection failed.
    pub status: u16,
    pub retry_after: bool,
    pub body: String,
    pub started: Instant,
    pub finished: Instant,
}

/// A plain HTTP/1.0 GET with a bounded timeout.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    let started = Instant::now();
    let failed = |started| Response {
        status: 0,
        retry_after: false,
        body: String::new(),
        started,
        finished: Instant::now(),
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return failed(started);
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return failed(started);
    }
    let mut raw = Vec::new();
    if stream.read_to_end(&mut raw).is_err() {
        return failed(started);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let retry_after = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("retry-after:"));
    Response {
        status,
        retry_after,
        body: body.trim().to_owned(),
        started,
        finished: Instant::now(),
    }
}

/// A bounded request loop against several servers: one thread per server,
/// stopping on `stop()` or after `limit` requests each.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Per server, every response in order.
    pub log: Arc<Mutex<Vec<Vec<Response>>>>,
}

impl Load {
    pub fn start(servers: &[SocketAddr], path: &str, limit: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(vec![Vec::new(); servers.len()]));
        let threads = servers
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let (stop, log, addr, path) =
                    (Arc::clone(&stop), Arc::clone(&log), *addr, path.to_owned());
                std::thread::spawn(move || {
                    for _ in 0..limit {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let response = get(addr, &path, &[]);
                        log.lock().unwrap()[i].push(response);
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Self { stop, threads, log }
    }

    /// Stops the loops and returns every server's responses.
    pub fn finish(self) -> Vec<Vec<Response>> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("load thread");
        }
        Arc::try_unwrap(self.log)
            .expect("threads joined")
            .into_inner()
            .unwrap()
    }
}
