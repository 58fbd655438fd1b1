//! A real graphite-web (Debian's package) on loopback, with its own
//! database in a temp dir, so a test can post events through slipway and
//! read them back through graphite-web's own events API.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MANAGE: &str = "/usr/bin/graphite-manage";

pub struct GraphiteWeb {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

/// Installs graphite-web if missing; fails loudly rather than skipping.
fn ensure_installed() {
    if Path::new(MANAGE).exists() {
        return;
    }
    let _ = Command::new("sh")
        .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends graphite-web"])
        .status();
    assert!(
        Path::new(MANAGE).exists(),
        "graphite-web is not installed and could not be: apt-get install graphite-web"
    );
}

impl GraphiteWeb {
    pub fn start() -> Self {
        ensure_installed();
        let dir = tempfile::Builder::new()
            .prefix("slipway-graphite-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path().display();
        std::fs::create_dir_all(dir.path().join("log")).expect("log dir");
        // Debian's settings, but a database and logs of this test's own.
        std::fs::write(
            dir.path().join("slipway_test_settings.py"),
            format!(
                "from graphite.settings import *  # noqa\n\
                 DATABASES = {{'default': {{'NAME': '{d}/graphite.db', 'ENGINE': 'django.db.backends.sqlite3'}}}}\n\
                 SECRET_KEY = 'slipway-test'\nALLOWED_HOSTS = ['*']\nLOG_DIR = '{d}/log'\n"
            ),
        )
        .expect("settings");
        let manage = |args: &[&str]| {
            let mut cmd = Command::new("/usr/bin/python3");
            cmd.arg(MANAGE)
                .args(args)
                .arg("--settings=slipway_test_settings")
                .env("PYTHONPATH", dir.path());
            cmd
        };
        let migrate = manage(&["migrate", "--run-syncdb"])
            .output()
            .expect("graphite-manage runs");
        assert!(
            migrate.status.success(),
            "graphite-manage migrate: {}",
            String::from_utf8_lossy(&migrate.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let child = manage(&["runserver", &format!("127.0.0.1:{port}"), "--noreload"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("graphite-web starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "graphite-web did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every event of the last hour, through graphite-web's events API.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let response = super::nginx::get(
            format!("127.0.0.1:{}", self.port).parse().expect("addr"),
            "/events/get_data?from=-1h",
            &[],
        );
        assert_eq!(response.status, 200, "events API: {}", response.body);
        serde_json::from_str(&response.body).expect("events are JSON")
    }
}

impl Drop for GraphiteWeb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
