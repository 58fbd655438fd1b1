//! Bounded input and validated config (issue 11): what others control (a
//! pushed commit, git's hook stdin, the event file, a service's answer)
//! costs slipway megabytes at most, and config values that would reach a
//! path outside the release are refused before anything runs.
//!
//! The big-input stories run the real binary under GNU time (peak RSS)
//! with its address space capped, so a regression fails the test with an
//! out-of-memory error rather than exhausting the machine running it.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support::run::slipway;
use crate::support::standin::{Reply, StandIn};
use crate::support::{App, LocalHosts};

/// The address-space cap each measured run gets (KiB for `ulimit -v`).
const ADDRESS_SPACE_KIB: u64 = 4 * 1024 * 1024;

/// Memory a run may use beyond the biggest cap it reads (32 MiB, the event
/// file) and the binary itself. Before the caps, these stories took 2 to 3
/// GiB (see the report in README's "Limits").
const PEAK_BUDGET_KIB: u64 = 192 * 1024;

/// Writes a run's stdin, from its own thread.
type Feed = Box<dyn FnOnce(&mut dyn Write) + Send>;

static RUNS: AtomicUsize = AtomicUsize::new(0);

/// A finished measured run.
struct Measured {
    output: Output,
    peak_kib: u64,
}

impl Measured {
    fn text(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }

    /// Fails unless slipway stopped by itself with an error containing
    /// every needle, within the memory budget.
    #[track_caller]
    fn refused_with(&self, needles: &[&str]) {
        let text = self.text();
        assert_eq!(self.output.status.code(), Some(1), "exit status:\n{text}");
        for needle in needles {
            assert!(text.contains(needle), "output lacks {needle:?}:\n{text}");
        }
        assert!(
            self.peak_kib < PEAK_BUDGET_KIB,
            "peak RSS {} KiB is over the {PEAK_BUDGET_KIB} KiB budget:\n{text}",
            self.peak_kib
        );
    }
}

/// Runs `slipway args` in `dir` as the harness would (same cleared
/// environment), plus `env`, under `ulimit -v` and `/usr/bin/time`; `feed`
/// writes its stdin from another thread (a broken pipe ends it).
fn measured(dir: &Path, args: &[&str], env: &[(&str, &str)], feed: Option<Feed>) -> Measured {
    let program = slipway(dir).get_program().to_owned();
    measured_program(dir, &program, args, env, feed)
}

/// [`measured`] for any program (e.g. an installed hook script), with the
/// harness's environment for slipway.
fn measured_program(
    dir: &Path,
    program: &std::ffi::OsStr,
    args: &[&str],
    env: &[(&str, &str)],
    feed: Option<Feed>,
) -> Measured {
    let time = Path::new("/usr/bin/time");
    assert!(
        time.exists(),
        "GNU time is needed at /usr/bin/time (Debian package `time`; .ci/run installs it)"
    );
    let base = slipway(dir);
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let report =
        std::env::temp_dir().join(format!("slipway-bounds-{}-{n}.time", std::process::id()));
    let mut cmd = Command::new("sh");
    cmd.current_dir(dir)
        .arg("-c")
        .arg(r#"ulimit -v "$0"; report="$1"; shift 2; exec /usr/bin/time -f %M -o "$report" "$@""#)
        .arg(ADDRESS_SPACE_KIB.to_string())
        .arg(&report)
        .arg("--")
        .arg(program)
        .args(args);
    for (key, value) in base.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    cmd.envs(env.iter().copied())
        .stdin(if feed.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("sh runs");
    let writer = feed.map(|feed| {
        let mut stdin = child.stdin.take().expect("piped stdin");
        std::thread::spawn(move || feed(&mut stdin))
    });
    let output = child.wait_with_output().expect("slipway finishes");
    if let Some(writer) = writer {
        writer.join().expect("the stdin writer does not panic");
    }
    let peak = std::fs::read_to_string(&report).unwrap_or_default();
    let _ = std::fs::remove_file(&report);
    let peak_kib = peak
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS from GNU time ({peak:?})"));
    // Shown with `--nocapture`: the figures the README's "Limits" quotes.
    eprintln!("slipway {}: peak RSS {peak_kib} KiB", args.join(" "));
    Measured { output, peak_kib }
}

/// A valid config with a `[notify]` table of `size` bytes of settings: the
/// shape a 50 MB config took to cost 1.8 GB (every key a table entry).
fn huge_config(hosts: &LocalHosts, size: usize) -> String {
    let mut text = format!(
        "[app]\nname = \"shop\"\n\n[environments.production]\nbranch = \"production\"\nhosts = {}\ndeploy_to = \"{}\"\n\n[notify]\n",
        hosts.toml(),
        hosts.deploy_to
    );
    let mut i = 0;
    while text.len() < size {
        text.push_str(&format!("k{i} = \"v{i}\"\n"));
        i += 1;
    }
    text
}

#[test]
fn a_50_mb_config_in_a_pushed_commit_is_refused_unread() {
    // A pushed commit's slipway.toml is read by the git server's hook and by
    // every CLI run; 50 MB of it took 2.1 GB and two minutes to parse.
    let app = App::new("", &[("public/index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 1);
    app.commit(
        "A config of 50 MB",
        &[("slipway.toml", &huge_config(&hosts, 50 * 1024 * 1024))],
    );

    let run = measured(app.path(), &["check"], &[], None);

    run.refused_with(&["`slipway.toml` in commit", "larger than 1 MiB"]);
    assert!(hosts.current(0).is_none());
}

#[test]
fn a_config_just_under_the_cap_still_loads() {
    // The cap is for hostile input, not for big but real configs.
    let app = App::new("", &[("public/index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 1);
    app.commit(
        "A config of almost 1 MiB",
        &[("slipway.toml", &huge_config(&hosts, 1024 * 1024 - 64))],
    );
    app.slipway(&["check"]).success().contains("is valid");
}

/// One git ref-update line, as git writes them to a receive hook.
const UPDATE: &[u8] = b"0000000000000000000000000000000000000000 1111111111111111111111111111111111111111 refs/heads/production\n";

#[test]
fn a_gigabyte_of_hook_stdin_is_refused_at_the_cap() {
    // git feeds post-receive one line per pushed ref; 1 GB of lines took
    // 3 GB of memory before a single one was looked at.
    let app = App::new("", &[("public/index.html", "v1\n")]);
    let feed: Feed = Box::new(|stdin| {
        let block = UPDATE.repeat(8 * 1024);
        let mut sent = 0;
        while sent < 1024 * 1024 * 1024 && stdin.write_all(&block).is_ok() {
            sent += block.len();
        }
    });

    let run = measured(app.path(), &["hook", "post-receive"], &[], Some(feed));

    run.refused_with(&["hook's input", "larger than 4 MiB", "push fewer refs"]);
}

/// The same gigabyte through the hook script git really runs: the script
/// used to hold all of it in a shell variable before slipway saw a byte.
#[test]
fn a_gigabyte_through_the_installed_hook_script_is_refused_at_the_cap() {
    let app = App::new("", &[("public/index.html", "v1\n")]);
    let server = crate::support::server::GitServer::new(&app);
    let feed: Feed = Box::new(|stdin| {
        let block = UPDATE.repeat(8 * 1024);
        let mut sent = 0;
        while sent < 1024 * 1024 * 1024 && stdin.write_all(&block).is_ok() {
            sent += block.len();
        }
    });
    let hook = server.git_dir.join("hooks/post-receive");
    let run = measured_program(
        &server.git_dir,
        hook.as_os_str(),
        &[],
        &[("SLIPWAY_BIN", env!("CARGO_BIN_EXE_slipway"))],
        Some(feed),
    );
    run.refused_with(&["hook's input", "larger than 4 MiB", "push fewer refs"]);
}

#[test]
fn an_endless_event_file_is_refused_at_the_cap() {
    // GITHUB_EVENT_PATH comes from the environment; naming an endless file
    // (here /dev/zero) ran `slipway ci` out of memory.
    let app = App::new("", &[("public/index.html", "v1\n")]);
    let env = [
        ("GITHUB_EVENT_NAME", "push"),
        ("GITHUB_EVENT_PATH", "/dev/zero"),
    ];

    let run = measured(app.path(), &["ci"], &env, None);

    run.refused_with(&["the event payload /dev/zero", "larger than 32 MiB"]);
}

#[test]
fn an_endless_answer_from_a_notifier_url_is_cut_at_the_cap() {
    // A webhook URL's server (or anything answering there) sent a body that
    // never ends; slipway read it all into memory until the timeout.
    let endless = StandIn::scripted(Vec::new(), Reply::Endless);
    let app = App::new("", &[("public/index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 1);
    let config = format!(
        "[app]\nname = \"shop\"\n\n[environments.production]\nbranch = \"production\"\nhosts = {}\ndeploy_to = \"{}\"\n\n[notify]\nwebhook = {{ url_env = \"HOOK_URL\" }}\n",
        hosts.toml(),
        hosts.deploy_to
    );
    app.commit("Notify a webhook", &[("slipway.toml", &config)]);
    let url = format!("{}/hook", endless.url());

    let run = measured(
        app.path(),
        &["notify", "test", "production"],
        &[("HOOK_URL", &url)],
        None,
    );

    run.refused_with(&["larger than 1 MiB, slipway's cap for an answer"]);
    assert_eq!(endless.requests().len(), 1, "a cut answer is not retried");
}

#[test]
fn an_endless_answer_from_the_github_api_is_a_warning_and_the_deploy_goes_on() {
    // octocrab reads GitHub's whole answer; an endless one (a wrong
    // GITHUB_API_URL, a hostile proxy) is now cut at the cap, and, like any
    // GitHub API failure, never fails the deploy.
    let endless = StandIn::scripted(Vec::new(), Reply::Endless);
    let app = App::new("", &[("public/index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 1);
    let config = format!(
        "[app]\nname = \"shop\"\n\n[environments.production]\nbranch = \"production\"\nhosts = {}\ndeploy_to = \"{}\"\n",
        hosts.toml(),
        hosts.deploy_to
    );
    let commit = app.commit("Configure", &[("slipway.toml", &config)]);
    let event = app.scratch("runner").join("event.json");
    let payload = serde_json::json!({
        "ref": "refs/heads/production",
        "before": "0000000000000000000000000000000000000000",
        "after": commit,
        "deleted": false,
        "repository": { "full_name": "acme/shop" },
    });
    std::fs::write(&event, payload.to_string()).expect("event file");
    let event = event.to_str().expect("utf-8");
    let api = endless.url();
    let env = [
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_EVENT_NAME", "push"),
        ("GITHUB_EVENT_PATH", event),
        ("GITHUB_REPOSITORY", "acme/shop"),
        ("GITHUB_API_URL", &api),
        ("GITHUB_SERVER_URL", "https://github.com"),
        ("GITHUB_RUN_ID", "1"),
        ("SLIPWAY_GITHUB_TOKEN", "ghs_StandInTokenForTheEndlessApi"),
        // The job's `environment: production`, as the action passes it.
        ("SLIPWAY_ENVIRONMENT", "production"),
    ];

    let run = measured(app.path(), &["ci"], &env, None);

    let text = run.text();
    assert!(run.output.status.success(), "the deploy succeeds:\n{text}");
    assert!(
        text.lines().any(|l| l.starts_with("::warning")
            && l.contains("creating a deployment")
            && l.contains("larger than 1 MiB")),
        "a warning names the cap:\n{text}"
    );
    assert!(hosts.current(0).is_some(), "the host was deployed");
    assert!(run.peak_kib < PEAK_BUDGET_KIB, "peak {} KiB", run.peak_kib);
}

#[test]
fn copy_back_cannot_reach_a_folder_beside_the_deploy_root() {
    // `copy_back` paths are `rm -rf`'d in the new release before copying:
    // `../../../victim` from `releases/<id>/` is a folder beside the deploy
    // root, which staging deleted. The config is now refused at load, and
    // nothing on the host changes.
    let app = App::new("", &[("public/index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 1);
    let config = |extra: &str| {
        format!(
            "[app]\nname = \"shop\"\n\n[environments.production]\nbranch = \"production\"\nhosts = {}\ndeploy_to = \"{}\"\n{extra}\n",
            hosts.toml(),
            hosts.deploy_to
        )
    };
    app.commit("Configure", &[("slipway.toml", &config(""))]);
    app.slipway(&["deploy", "production"]).success();
    let first = hosts.current(0).expect("v1 is live");
    let victim = hosts
        .root(0)
        .parent()
        .expect("deploy root has a parent")
        .join("victim");
    std::fs::create_dir_all(&victim).expect("victim dir");
    std::fs::write(victim.join("precious.txt"), "keep me\n").expect("victim file");

    app.commit(
        "Copy back something",
        &[
            ("public/index.html", "v2\n"),
            ("slipway.toml", &config("copy_back = [\"../../../victim\"]")),
        ],
    );
    let run = app.slipway(&["deploy", "production"]);

    assert_eq!(
        std::fs::read_to_string(victim.join("precious.txt"))
            .ok()
            .as_deref(),
        Some("keep me\n"),
        "the victim folder survives:\n{}",
        run.text()
    );
    // Exit 2: a usage error, like any invalid config.
    run.failure(2)
        .contains("slipway.toml:8:14: `environments.production.copy_back[0]`")
        .contains("remove the `..`");
    assert_eq!(hosts.current(0).as_deref(), Some(first.as_str()));
}

#[test]
fn nginx_refuses_a_host_path_that_would_be_nginx_syntax() {
    // `slipway nginx` writes the deploy root into `root` and `if (-f …)`
    // directives; a `local:` folder with `;` in its name would end the
    // directive there and start another.
    let app = App::new("", &[("public/index.html", "v1\n")]);
    let odd = app.scratch("web;autoindex on");
    let config = format!(
        "[app]\nname = \"shop\"\n\n[environments.production]\nbranch = \"production\"\nhosts = [\"local:{}\"]\ndeploy_to = \"/srv/app\"\n",
        odd.display()
    );
    app.commit("Configure", &[("slipway.toml", &config)]);

    app.slipway(&["nginx", "production"])
        .failure(1)
        .contains("cannot go into an nginx snippet")
        .lacks("# for ");
}
