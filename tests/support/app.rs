//! Sample app repositories (real `git`) and `local:` hosts.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::run::{Run, run, slipway};

/// A temporary app repository with a `production` branch checked out.
pub struct App {
    pub dir: tempfile::TempDir,
}

impl App {
    /// A repository whose `slipway.toml` is `config`, plus `files`.
    pub fn new(config: &str, files: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("slipway-it-")
            .tempdir()
            .expect("tempdir");
        let app = Self { dir };
        app.write("slipway.toml", config);
        for (path, content) in files {
            app.write(path, content);
        }
        app.git(&["init", "-q", "-b", "main"]);
        // Hosts and other scratch space live beside the work tree; they
        // must never be committed (and so deployed).
        std::fs::write(app.path().join(".git/info/exclude"), ".scratch/\n").expect("exclude");
        app.git(&["add", "-A"]);
        app.git(&["commit", "-qm", "First commit"]);
        app.git(&["checkout", "-q", "-b", "production"]);
        app
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A directory beside the repository, removed with it.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join(".scratch").join(name);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    pub fn write(&self, path: &str, content: &str) {
        let full = self.path().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(&full, content).expect("write");
        if path.starts_with("bin/") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }

    /// Writes files and commits them; returns the new commit id.
    pub fn commit(&self, message: &str, files: &[(&str, &str)]) -> String {
        for (path, content) in files {
            self.write(path, content);
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-qm", message]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"]).trim().to_owned()
    }

    #[track_caller]
    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .current_dir(self.path())
            .args([
                "-c",
                "user.name=Test",
                "-c",
                "user.email=test@example.invalid",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `slipway` in this repository.
    #[must_use = "assert on the run, e.g. .success()"]
    pub fn slipway(&self, args: &[&str]) -> Run {
        run(slipway(self.path()), args)
    }

    /// Runs `slipway` with extra environment variables.
    #[must_use = "assert on the run, e.g. .success()"]
    pub fn slipway_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = slipway(self.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(cmd, args)
    }
}

/// Three (or n) folders standing for hosts, each with `deploy_to` inside.
pub struct LocalHosts {
    pub roots: Vec<PathBuf>,
    pub deploy_to: String,
}

impl LocalHosts {
    pub fn new(app: &App, n: usize) -> Self {
        let roots = (1..=n).map(|i| app.scratch(&format!("web{i}"))).collect();
        Self {
            roots,
            deploy_to: "/srv/app".to_owned(),
        }
    }

    /// The hosts as a TOML array.
    pub fn toml(&self) -> String {
        let list: Vec<String> = self
            .roots
            .iter()
            .map(|r| format!("\"local:{}\"", r.display()))
            .collect();
        format!("[{}]", list.join(", "))
    }

    /// A `slipway.toml` for app `shop` whose production environment
    /// (branch `production`) deploys to these hosts, plus `extra` lines in
    /// that environment's table.
    pub fn production_config(&self, extra: &str) -> String {
        format!(
            "[app]\nname = \"shop\"\n[environments.production]\nbranch = \"production\"\nhosts = {}\ndeploy_to = \"{}\"\n{extra}",
            self.toml(),
            self.deploy_to
        )
    }

    /// The deploy root of host `i`.
    pub fn root(&self, i: usize) -> PathBuf {
        self.roots[i].join(self.deploy_to.trim_start_matches('/'))
    }

    /// The release `current` points to on host `i`.
    pub fn current(&self, i: usize) -> Option<String> {
        let link = std::fs::read_link(self.root(i).join("current")).ok()?;
        Some(link.file_name()?.to_string_lossy().into_owned())
    }

    /// Releases on host `i`, sorted.
    pub fn releases(&self, i: usize) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.root(i).join("releases"))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// History lines on host `i`, parsed.
    pub fn history(&self, i: usize) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.root(i).join(".slipway/history.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("history line is JSON"))
            .collect()
    }

    pub fn is_closed(&self, i: usize) -> bool {
        self.root(i).join(".slipway/maintenance").exists()
    }

    pub fn read(&self, i: usize, path: &str) -> Option<String> {
        std::fs::read_to_string(self.root(i).join(path)).ok()
    }
}
