//! A stand-in for GitHub's release downloads: a real HTTP server (Python's
//! `http.server`) on loopback serving `<owner>/<repo>/releases/download/
//! <tag>/<asset>` from a temp dir, with its access log kept so a test can
//! see which archives were fetched.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ReleaseServer {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl ReleaseServer {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("slipway-releases-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("www")).expect("www");
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let log = std::fs::File::create(dir.path().join("access.log")).expect("log");
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(dir.path().join("www"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("python3 -m http.server starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "http.server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child, dir }
    }

    /// What `GITHUB_SERVER_URL` is for the action.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Publishes `binary` as release `tag` of `repo` for `target`: the
    /// archive `slipway-<target>.tar.gz` (the binary as `slipway`, packed
    /// with GNU tar) and its checksum file, as the release workflow does.
    /// `checksum` overrides the checksum written (to fake a bad one).
    pub fn publish(
        &self,
        repo: &str,
        tag: &str,
        target: &str,
        binary: &Path,
        checksum: Option<&str>,
    ) {
        let dir = self.release_dir(repo, tag);
        std::fs::create_dir_all(&dir).expect("release dir");
        let stage = self.dir.path().join(format!("stage-{target}"));
        std::fs::create_dir_all(&stage).expect("stage");
        std::fs::copy(binary, stage.join("slipway")).expect("copy binary");
        let asset = format!("slipway-{target}.tar.gz");
        let status = Command::new("tar")
            .arg("-czf")
            .arg(dir.join(&asset))
            .arg("-C")
            .arg(&stage)
            .arg("slipway")
            .status()
            .expect("tar runs");
        assert!(status.success(), "tar");
        let sum = match checksum {
            Some(sum) => sum.to_owned(),
            None => {
                let out = Command::new("sha256sum")
                    .arg(dir.join(&asset))
                    .output()
                    .expect("sha256sum runs");
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .next()
                    .expect("a hash")
                    .to_owned()
            }
        };
        std::fs::write(
            dir.join(format!("{asset}.sha256")),
            format!("{sum}  {asset}\n"),
        )
        .expect("checksum file");
    }

    fn release_dir(&self, repo: &str, tag: &str) -> PathBuf {
        self.dir
            .path()
            .join("www")
            .join(repo)
            .join("releases/download")
            .join(tag)
    }

    /// The paths requested so far with GET, in order.
    pub fn fetched(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| l.split("\"GET ").nth(1))
            .filter_map(|rest| rest.split(' ').next())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for ReleaseServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
