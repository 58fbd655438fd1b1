//! The gated rollout to three `local:` hosts: the whole pipeline with real
//! git, real files and the real binary, no network.

use std::path::Path;

use crate::support::{App, LocalHosts};

/// A config for `hosts` with a deploy hook that leaves one line per run in
/// the host's shared dir, so tests can count where it ran.
fn config(hosts: &LocalHosts, extra: &str) -> String {
    format!(
        r#"[app]
name = "shop"
keep_releases = 3

[build]
steps = [{{ name = "stamp", run = "printf '%s\n' \"$SLIPWAY_RELEASE\" > version.txt" }}]
exclude = ["tests/**"]

[shared]
dirs = ["public/uploads"]

[environments.production]
branch = "production"
hosts = {hosts}
deploy_to = "{deploy_to}"
deploy_hook = "echo \"$SLIPWAY_RELEASE\" >> ../../shared/hook.log"
{extra}
"#,
        hosts = hosts.toml(),
        deploy_to = hosts.deploy_to,
    )
}

/// An app whose config points at three fresh local hosts.
fn app_with_hosts(extra: &str) -> (App, LocalHosts) {
    let app = App::new(
        "",
        &[
            ("public/index.html", "v1\n"),
            ("tests/unit.txt", "not shipped\n"),
        ],
    );
    let hosts = LocalHosts::new(&app, 3);
    app.commit(
        "Configure slipway",
        &[("slipway.toml", &config(&hosts, extra))],
    );
    (app, hosts)
}

fn hook_runs(hosts: &LocalHosts) -> usize {
    (0..3)
        .map(|i| {
            hosts
                .read(i, "shared/hook.log")
                .unwrap_or_default()
                .lines()
                .count()
        })
        .sum()
}

#[test]
fn gated_deploy_puts_every_host_on_one_release_and_runs_the_hook_once() {
    let (app, hosts) = app_with_hosts("");
    let run = app.slipway(&["deploy", "production"]).success();
    let release = (0..3).map(|i| hosts.current(i)).collect::<Vec<_>>();
    let id = release[0].clone().expect("host 1 has a current release");
    assert!(
        release.iter().all(|r| r.as_deref() == Some(id.as_str())),
        "{release:?}"
    );
    assert!(run.stdout().contains(&format!("deployed {id}")));
    assert_eq!(hook_runs(&hosts), 1, "the hook runs on exactly one host");
    assert_eq!(
        hosts.read(0, "shared/hook.log").unwrap().trim(),
        id,
        "on the first host by default"
    );
    for i in 0..3 {
        assert_eq!(
            hosts.read(i, "current/version.txt").unwrap().trim(),
            id,
            "build output shipped"
        );
        assert!(
            hosts.read(i, "current/tests/unit.txt").is_none(),
            "excluded paths are not shipped"
        );
        assert!(!hosts.is_closed(i));
        assert_eq!(hosts.history(i).len(), 1);
        assert_eq!(hosts.history(i)[0]["outcome"], "success");
        assert!(!hosts.root(i).join(".slipway/journal.json").exists());
        assert!(!hosts.root(i).join(".slipway/lock").exists());
    }
}

#[test]
fn shared_dirs_survive_releases_and_history_grows_one_line_per_deploy() {
    let (app, hosts) = app_with_hosts("");
    app.slipway(&["deploy", "production"]).success();
    let upload = hosts.root(1).join("current/public/uploads/avatar.png");
    std::fs::write(&upload, "user data").unwrap();
    app.commit("Second", &[("public/index.html", "v2\n")]);
    app.slipway(&["deploy", "production"]).success();
    assert_eq!(
        hosts
            .read(1, "current/public/uploads/avatar.png")
            .as_deref(),
        Some("user data")
    );
    assert_eq!(
        hosts.read(1, "current/public/index.html").as_deref(),
        Some("v2\n")
    );
    for i in 0..3 {
        assert_eq!(hosts.history(i).len(), 2, "one line per deploy on host {i}");
    }
    assert_eq!(hook_runs(&hosts), 2);
}

#[test]
fn a_failing_deploy_hook_puts_every_host_back_on_the_previous_release_and_opens() {
    let (app, hosts) = app_with_hosts("");
    app.slipway(&["deploy", "production"]).success();
    let before = hosts.current(0).unwrap();
    let broken = config(&hosts, "").replace(
        "deploy_hook = \"echo \\\"$SLIPWAY_RELEASE\\\" >> ../../shared/hook.log\"",
        "deploy_hook = \"echo migration exploded; exit 7\"",
    );
    assert_ne!(broken, config(&hosts, ""), "the hook line was replaced");
    app.commit("Break the migration", &[("slipway.toml", &broken)]);
    let run = app.slipway(&["deploy", "production"]).failure(3);
    let failed = crate::support::App::head(&app);
    assert!(run.text().contains("exit status 7"), "{}", run.text());
    assert!(run.text().contains("migration exploded"));
    assert!(run.text().contains(&format!("back on {before}")));
    assert!(
        run.text().contains(&failed[..7]),
        "the failed release is named"
    );
    for i in 0..3 {
        assert_eq!(
            hosts.current(i).as_deref(),
            Some(before.as_str()),
            "host {i}"
        );
        assert!(!hosts.is_closed(i), "host {i} is open again");
        let history = hosts.history(i);
        assert_eq!(history.last().unwrap()["outcome"], "rolled-back");
    }
}

#[test]
fn rollback_returns_every_host_to_the_previous_release_and_to_works() {
    let (app, hosts) = app_with_hosts("");
    app.slipway(&["deploy", "production"]).success();
    let first = hosts.current(0).unwrap();
    app.commit("Second", &[("public/index.html", "v2\n")]);
    app.slipway(&["deploy", "production"]).success();
    let second = hosts.current(0).unwrap();
    assert_ne!(first, second);

    app.slipway(&["rollback", "production"])
        .success()
        .contains(&format!("rolled back to {first}"));
    for i in 0..3 {
        assert_eq!(hosts.current(i).as_deref(), Some(first.as_str()));
        assert_eq!(
            hosts.read(i, "current/public/index.html").as_deref(),
            Some("v1\n")
        );
    }
    assert_eq!(
        hook_runs(&hosts),
        2,
        "a rollback does not run the deploy hook"
    );

    app.slipway(&["rollback", "production", "--to", &second])
        .success();
    assert!((0..3).all(|i| hosts.current(i).as_deref() == Some(second.as_str())));

    app.slipway(&["rollback", "production", "--to", "20000101T000000Z-0000000"])
        .failure(1)
        .contains("not there");
    assert!(
        (0..3).all(|i| hosts.current(i).as_deref() == Some(second.as_str())),
        "nothing changed"
    );
}

#[test]
fn pruning_keeps_n_releases_but_never_the_current_or_the_rollback_target() {
    let (app, hosts) = app_with_hosts("");
    let mut ids = Vec::new();
    for n in 1..=5 {
        app.commit(
            &format!("Release {n}"),
            &[("public/index.html", &format!("release {n}\n"))],
        );
        app.slipway(&["deploy", "production"]).success();
        ids.push(hosts.current(0).unwrap());
    }
    let mut newest: Vec<String> = ids[2..].to_vec();
    newest.sort();
    assert_eq!(hosts.releases(0), newest, "keep_releases = 3");

    // Roll back twice: the live release is then the oldest kept one; a new
    // deploy must keep it as its rollback target even beyond the limit.
    app.slipway(&["rollback", "production"]).success();
    app.slipway(&["rollback", "production"]).success();
    assert_eq!(hosts.current(0).as_deref(), Some(ids[2].as_str()));
    app.commit("Release 6", &[("public/index.html", "v6\n")]);
    app.slipway(&["deploy", "production"]).success();
    let kept = hosts.releases(0);
    assert!(
        kept.contains(&ids[2]),
        "the rollback target is kept: {kept:?}"
    );
    assert!(kept.contains(&hosts.current(0).unwrap()));
    assert_eq!(kept.len(), 3);
}

#[test]
fn building_the_same_commit_twice_gives_the_same_bytes() {
    let (app, _hosts) = app_with_hosts("");
    let out = |name: &str| app.scratch(name).to_string_lossy().into_owned();
    let sha = |run: crate::support::Run| run.stdout().split_whitespace().next().unwrap().to_owned();
    let a = sha(app
        .slipway(&["build", "--ref", "production", "--out", &out("a")])
        .success());
    let b = sha(app
        .slipway(&["build", "--ref", "production", "--out", &out("b")])
        .success());
    assert_eq!(a.len(), 64);
    assert_eq!(a, b, "reproducible");
    app.commit("One file changes", &[("public/index.html", "v1!\n")]);
    let c = sha(app
        .slipway(&["build", "--ref", "production", "--out", &out("c")])
        .success());
    assert_ne!(a, c);
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let (app, hosts) = app_with_hosts("");
    let run = app
        .slipway(&["deploy", "production", "--dry-run"])
        .success()
        .contains("plan: deploy ")
        .contains("(undo: switch-back)")
        .contains("no problems found");
    assert!(!hosts.root(0).exists(), "a dry run creates nothing");
    // The plan is the program: the steps the executor will walk, with the
    // hosts each runs on (their paths filtered out).
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(r"\d{8}T\d{6}Z-[0-9a-f]{7}", "[release]");
    settings.add_filter(r"commit  [0-9a-f]{7}", "commit  [short]");
    settings.add_filter(r"local:/[^ \n]*/(web\d)", "local:[tmp]/$1");
    settings.add_filter(r"path    .*", "path    [deploy_to]");
    settings.add_filter(r" +\n", "\n");
    settings.bind(|| insta::assert_snapshot!(run.stdout()));
}

/// Every path under `root` with its size and modification time.
fn tree(root: &Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.path().symlink_metadata().ok()?;
            Some((e.path().to_path_buf(), meta.len(), meta.modified().ok()?))
        })
        .collect()
}

/// Issue: `--dry-run` contacted no host, so it could not say what is live,
/// what replaces it or which commits come with it, and it passed with a
/// missing secret the real deploy then refused.
#[test]
fn dry_run_looks_at_the_hosts_and_lists_the_problems_the_deploy_would_hit() {
    let (app, hosts) = app_with_hosts("");
    app.slipway(&["deploy", "production"]).success();
    let live = hosts.current(0).expect("deployed");
    app.commit("Make the checkout faster", &[("public/index.html", "v2\n")]);
    app.commit(
        "Needs the payment key",
        &[(
            "slipway.toml",
            &config(&hosts, "secrets = [\"IT_PAYMENT_KEY_NEVER_SET\"]"),
        )],
    );
    let before = tree(&hosts.root(0));
    app.slipway(&["deploy", "production", "--dry-run"])
        .failure(1)
        .contains(&format!("{live} (open) -> "))
        .contains("Make the checkout faster")
        .contains("Needs the payment key")
        .contains("the secret `IT_PAYMENT_KEY_NEVER_SET` is not set")
        .contains("nothing was changed on any host");
    assert_eq!(tree(&hosts.root(0)), before, "the host is as it was");
    assert_eq!(hosts.current(0).as_deref(), Some(live.as_str()));
}

#[test]
fn config_errors_name_the_line_and_key() {
    let (app, hosts) = app_with_hosts("");
    let good = config(&hosts, "");
    let cases = [
        (
            good.replace("keep_releases = 3", "keep_releaes = 3"),
            3,
            "app.keep_releaes",
        ),
        (
            good.replace("keep_releases = 3", "keep_releases = \"three\""),
            3,
            "app.keep_releases",
        ),
        (
            format!(
                "{good}\n[environments.preprod]\nbranch = \"production\"\nhosts = [\"local:/tmp/x\"]\ndeploy_to = \"/srv\"\n"
            ),
            good.lines().count() + 3,
            "environments.preprod.branch",
        ),
        (
            good.replace(&hosts.toml(), "[]"),
            14,
            "environments.production.hosts",
        ),
    ];
    for (text, line, key) in cases {
        app.commit("Bad config", &[("slipway.toml", &text)]);
        let run = app.slipway(&["check", "--ref", "production"]).failure(2);
        let want = format!("slipway.toml:{line}:");
        assert!(
            run.text().contains(&want),
            "want {want} for {key}:\n{}",
            run.text()
        );
        assert!(
            run.text().contains(&format!("`{key}`")),
            "want key {key}:\n{}",
            run.text()
        );
        app.slipway(&["deploy", "production"]).failure(2);
        assert!(!hosts.root(0).exists(), "a bad config deploys nothing");
    }
}

#[test]
fn hostile_names_are_data_never_code() {
    // Git allows quotes, `$`, `(`, backticks and `;` in branch names (not spaces).
    let branch = "prod'$(touch${IFS}pwned)\";`touch${IFS}pwned2`";
    let (app, hosts) = app_with_hosts("");
    let text = config(&hosts, "").replace(
        "branch = \"production\"",
        &format!("branch = \"{}\"", branch.replace('"', "\\\"")),
    );
    app.commit(
        "Hostile",
        &[
            ("slipway.toml", &text),
            ("$(touch pwned)", "a file, not a command\n"),
            ("it's \"here\".txt", "ok\n"),
        ],
    );
    app.git(&["branch", branch]);
    app.slipway(&["deploy", "production", "--ref", branch])
        .success();
    assert_eq!(
        hosts.read(2, "current/$(touch pwned)").as_deref(),
        Some("a file, not a command\n")
    );
    assert_eq!(
        hosts.read(2, "current/it's \"here\".txt").as_deref(),
        Some("ok\n")
    );
    let history = hosts.history(0);
    assert_eq!(history[0]["commit"].as_str(), Some(app.head().as_str()));
    for dir in [
        app.path(),
        &hosts.root(0),
        &hosts.root(0).join("releases"),
        Path::new("."),
    ] {
        assert!(
            !dir.join("pwned").exists() && !dir.join("pwned2").exists(),
            "{}",
            dir.display()
        );
    }
}

#[test]
fn an_artifact_entry_escaping_the_release_is_refused_before_any_host_is_touched() {
    let (app, hosts) = app_with_hosts("");
    let evil = app.scratch("evil").join("evil.tar.gz");
    write_evil_tarball(&evil, &app.head());
    app.slipway(&["deploy", "production", "--artifact", evil.to_str().unwrap()])
        .failure(1)
        .contains("escape");
    assert!(!hosts.root(0).exists());
    assert!(!hosts.roots[0].join("srv/evil").exists());
}

/// A tar.gz with a valid-looking manifest and a `../` entry, written byte
/// by byte (the `tar` crate refuses to build such a path).
fn write_evil_tarball(path: &Path, commit: &str) {
    let manifest = format!(
        r#"{{"app":"shop","commit":"{commit}","branch":"production","release_id":"x","format":"tar.gz","file_count":1,"content_sha256":"00","entry_count":1,"unpacked_size":5,"created":"2026-01-01T00:00:00Z"}}"#
    );
    let mut tar = Vec::new();
    for (name, data) in [
        (".slipway-manifest.json", manifest.as_bytes()),
        ("../evil", b"pwned".as_slice()),
    ] {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..107].copy_from_slice(b"0000644");
        header[108..115].copy_from_slice(b"0000000");
        header[116..123].copy_from_slice(b"0000000");
        header[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        header[136..147].copy_from_slice(b"00000000000");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        tar.extend_from_slice(&header);
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.resize(tar.len() + 1024, 0);
    let file = std::fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap();
}

#[test]
fn a_second_rollout_waits_for_the_lock_or_says_who_holds_it() {
    let (app, hosts) = app_with_hosts("");
    app.slipway(&["deploy", "production"]).success();
    let lock = hosts.root(1).join(".slipway/lock");
    std::fs::write(
        &lock,
        r#"{"deploy_id":"d1","who":"alice","machine":"elsewhere","pid":1,"since":"2026-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    app.commit("Second", &[("public/index.html", "v2\n")]);
    app.slipway(&["deploy", "production"])
        .failure(5)
        .contains("locked by alice");
    assert!(
        !hosts.root(0).join(".slipway/lock").exists(),
        "the lock on host 1 was given back"
    );
    app.slipway(&["unlock", "production"])
        .success()
        .contains("d1");
    app.slipway(&["deploy", "production"]).success();
}

#[test]
fn an_interrupted_rollout_blocks_new_ones_until_recovered() {
    let (app, hosts) = app_with_hosts("");
    app.slipway(&["deploy", "production"]).success();
    let good = hosts.current(0).unwrap();
    app.commit("Second", &[("public/index.html", "v2\n")]);
    app.slipway(&["deploy", "production"]).success();
    let bad = hosts.current(0).unwrap();
    // What a rollout killed after switching host 3 leaves behind.
    let journal = format!(
        r#"{{"deploy_id":"dead","environment":"production","release":"{bad}","previous":"{good}","phase":"switch","hosts":[],"updated":"2026-01-01T00:00:00Z"}}"#
    );
    std::fs::write(hosts.root(2).join(".slipway/journal.json"), journal).unwrap();
    std::fs::write(hosts.root(2).join(".slipway/maintenance"), "").unwrap();
    app.slipway(&["status", "production"])
        .failure(4)
        .contains("INTERRUPTED")
        .contains("CLOSED");
    app.slipway(&["deploy", "production"])
        .failure(4)
        .contains("slipway recover production");
    app.slipway(&["recover", "production"]).success();
    assert_eq!(hosts.current(2).as_deref(), Some(good.as_str()));
    assert!(!hosts.is_closed(2));
    app.slipway(&["status", "production"])
        .success()
        .lacks("INTERRUPTED");
}

/// README's first command must stay true: the demo deploys, deploys a
/// second commit and rolls back, all hosts ending on the first release.
#[test]
fn the_demo_runs_a_full_gated_rollout_with_no_setup() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["demo", "--dir"])
        .arg(dir.path())
        .env("CI", "true")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let hosts = LocalHosts {
        roots: (1..=3)
            .map(|i| dir.path().join(format!("hosts/web{i}")))
            .collect(),
        deploy_to: "/srv/demo".into(),
    };
    let first = hosts.history(0)[0]["release"].as_str().unwrap().to_owned();
    assert!(
        (0..3).all(|i| hosts.current(i).as_deref() == Some(first.as_str())),
        "{text}"
    );
    assert!(
        (0..3).all(|i| hosts.history(i).len() == 3),
        "deploy, deploy, rollback"
    );
    assert!(text.contains(&format!("rolled back to {first}")), "{text}");
}

/// Regression: a health command that exits 1 was reported as "failed with
/// a signal" (the final error dropped the exit code), in the CLI and in chat.
#[test]
fn a_failing_health_command_is_reported_with_its_exit_status_not_a_signal() {
    let (app, hosts) = app_with_hosts("");
    app.slipway(&["deploy", "production"]).success();
    let before = hosts.current(0).unwrap();
    let sick = config(
        &hosts,
        r#"health = { command = "echo database unreachable; exit 1", retries = 0 }"#,
    );
    app.commit("Add a health check", &[("slipway.toml", &sick)]);
    let run = app.slipway(&["deploy", "production"]).failure(3);
    let text = run.text();
    assert!(text.contains("exit status 1"), "{text}");
    assert!(text.contains("database unreachable"), "{text}");
    assert!(!text.contains("signal"), "{text}");
    assert_eq!(hosts.current(0).as_deref(), Some(before.as_str()));
}
