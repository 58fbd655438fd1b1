//! A real Matrix homeserver (Synapse, from PyPI) on loopback, with a config,
//! keys and database of the test's own, so a test can send through slipway
//! and read the room back through the client-server API.
//!
//! Synapse lives in the virtualenv `.ci/run` creates (`.ci/tools/venv`);
//! when it is missing the harness creates it with pip rather than skipping.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const SERVER_NAME: &str = "slipway.test";

pub struct Synapse {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

/// A user logged in to the homeserver.
pub struct User {
    pub id: String,
    pub token: String,
}

fn venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/tools/venv")
}

/// Installs Synapse into the virtualenv if missing; fails loudly.
fn ensure_installed() -> PathBuf {
    let python = venv().join("bin/python");
    let has_synapse = || {
        Command::new(&python)
            .args(["-c", "import synapse"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has_synapse() {
        let _ = Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv())
            .status();
        let _ = Command::new(&python)
            .args(["-m", "pip", "install", "-q", "matrix-synapse"])
            .status();
    }
    assert!(
        has_synapse(),
        "Synapse is not installed in {} and pip could not install it; run .ci/run",
        venv().display()
    );
    python
}

impl Synapse {
    pub fn start() -> Self {
        let python = ensure_installed();
        let dir = tempfile::Builder::new()
            .prefix("slipway-synapse-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path().display();
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        // Only the client API, on loopback; no federation, no key servers,
        // rate limits out of the way of a test that sends a few messages.
        let config = format!(
            r#"server_name: "{SERVER_NAME}"
pid_file: "{d}/homeserver.pid"
listeners:
  - port: {port}
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: "{d}/homeserver.db"
media_store_path: "{d}/media"
signing_key_path: "{d}/signing.key"
registration_shared_secret: "slipway-test-registration"
macaroon_secret_key: "slipway-test-macaroon"
form_secret: "slipway-test-form"
report_stats: false
trusted_key_servers: []
suppress_key_server_warning: true
enable_metrics: false
rc_message:
  per_second: 1000
  burst_count: 1000
rc_login:
  address: {{per_second: 1000, burst_count: 1000}}
  account: {{per_second: 1000, burst_count: 1000}}
  failed_attempts: {{per_second: 1000, burst_count: 1000}}
"#
        );
        let config_path = dir.path().join("homeserver.yaml");
        std::fs::write(&config_path, config).expect("config");
        let keys = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "--generate-keys", "-c"])
            .arg(&config_path)
            .output()
            .expect("synapse runs");
        assert!(
            keys.status.success(),
            "synapse --generate-keys: {}",
            String::from_utf8_lossy(&keys.stderr)
        );
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log");
        let child = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("synapse starts");
        let mut synapse = Self { port, child, dir };
        synapse.wait_ready();
        synapse
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.call("GET", "/health", None, None).0 == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("synapse exited ({status}):\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "synapse did not answer on port {}:\n{}",
                self.port,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Registers `name` with Synapse's own `register_new_matrix_user`
    /// (the shared-secret admin API) and logs in.
    pub fn user(&self, name: &str) -> User {
        let password = format!("{name}-password");
        let out = Command::new(venv().join("bin/register_new_matrix_user"))
            .args(["-u", name, "-p", &password, "--no-admin", "-c"])
            .arg(self.dir.path().join("homeserver.yaml"))
            .arg(self.url())
            .output()
            .expect("register_new_matrix_user runs");
        assert!(
            out.status.success(),
            "register_new_matrix_user: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let login = self.ok(
            "POST",
            "/_matrix/client/v3/login",
            None,
            Some(json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": name },
                "password": password,
            })),
        );
        User {
            id: login["user_id"].as_str().expect("user_id").to_owned(),
            token: login["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
        }
    }

    /// Creates a room with the alias `#<alias>:<server>`; returns its id.
    pub fn room_with_alias(&self, owner: &User, alias: &str) -> String {
        let created = self.ok(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&owner.token),
            Some(json!({ "room_alias_name": alias, "preset": "private_chat" })),
        );
        created["room_id"].as_str().expect("room_id").to_owned()
    }

    /// The latest `m.room.message` events of `room`, newest first.
    pub fn messages(&self, reader: &User, room: &str) -> Vec<Value> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20",
            room.replace('!', "%21").replace(':', "%3A")
        );
        let answer = self.ok("GET", &path, Some(&reader.token), None);
        answer["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .cloned()
            .collect()
    }

    #[track_caller]
    fn ok(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Value {
        let (status, text) = self.call(method, path, token, body);
        assert_eq!(status, 200, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    }

    /// One request with curl: status and body.
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "-X", method])
            .args(["-w", "\n%{http_code}"])
            .arg(format!("{}{path}", self.url()));
        if let Some(token) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        if let Some(body) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(body.to_string());
        }
        let out = cmd.output().expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
