//! The operator's first hour (issue 15, "Install and help"): `init`,
//! completions and the man page, and the small traps a new user falls
//! into: a mistyped `--identity`, and `check` changing the hosts it checks.

use crate::support::{App, LocalHosts};

/// `check` is a look, not a change: it used to `mkdir -p` deploy_to on
/// every host as a side effect. It must still say the host can take a
/// deploy (the parent is writable), and leave no trace.
#[test]
fn check_creates_nothing_on_the_hosts() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 3);
    app.commit(
        "Configure slipway",
        &[("slipway.toml", &hosts.production_config(""))],
    );
    let run = app.slipway(&["check", "production"]).success();
    assert_eq!(
        run.stdout()
            .lines()
            .filter(|l| l.contains("does not exist yet (the first deploy creates it"))
            .count(),
        3,
        "{}",
        run.text()
    );
    for i in 0..3 {
        assert!(
            !hosts.root(i).exists(),
            "check created {}",
            hosts.root(i).display()
        );
        let parent = hosts.roots[i].join("srv");
        assert!(!parent.exists(), "check created {}", parent.display());
    }
    // Once a deploy has created it, check reports it as writable.
    app.slipway(&["deploy", "production"]).success();
    app.slipway(&["check", "production"])
        .success()
        .contains("/srv/app writable");
}

/// `-i /nonexistent` was accepted silently; the user learnt of the typo
/// only from an SSH failure much later, if at all.
#[test]
fn a_missing_identity_file_is_an_error_naming_it() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 1);
    app.commit(
        "Configure slipway",
        &[("slipway.toml", &hosts.production_config(""))],
    );
    let missing = app.path().join("no-such-key");
    let missing = missing.to_str().expect("utf-8 path");
    app.slipway(&["check", "production", "--identity", missing])
        .failure(2)
        .contains(&format!("identity file {missing} does not exist"));
    app.slipway_env(&["status", "production"], &[("SLIPWAY_IDENTITY", missing)])
        .failure(2)
        .contains(missing);
}

/// A new user's first minutes: `init` writes a config that slipway itself
/// accepts, the user fills in hosts, and the very next commands it
/// suggests work, up to a deploy to three hosts.
#[test]
fn init_then_check_then_deploy_to_three_hosts() {
    let app = App::new("", &[("index.html", "v1\n")]);
    std::fs::remove_file(app.path().join("slipway.toml")).expect("no config yet");
    std::fs::create_dir_all(app.path().join("sub")).expect("subfolder");
    let sub = app.path().join("sub");

    // Run from a subfolder, as git would: the file lands at the top.
    let run = crate::support::run::run(crate::support::run::slipway(&sub), &["init"]).success();
    let config_path = app.path().join("slipway.toml");
    let written = std::fs::read_to_string(&config_path).expect("init wrote slipway.toml");
    let folder = app
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("folder name");
    assert!(
        written.contains(&format!("name = \"{folder}\"")),
        "{written}"
    );
    // It says the next three commands, in the order that works.
    let stdout = run.stdout();
    let next: Vec<&str> = stdout
        .lines()
        .filter_map(|l| {
            l.trim_start()
                .get(3..)
                .filter(|_| l.trim_start().starts_with(['1', '2', '3']))
        })
        .collect();
    assert_eq!(next.len(), 3, "{stdout}");
    assert!(
        next[0].starts_with("git add slipway.toml && git commit"),
        "{stdout}"
    );
    assert!(next[1].starts_with("slipway check production"), "{stdout}");
    assert!(next[2].starts_with("slipway deploy production"), "{stdout}");

    // Never overwrites: the user's edits are safe from a second `init`.
    std::fs::write(&config_path, format!("{written}\n# mine\n")).expect("edit");
    app.slipway(&["init"])
        .failure(1)
        .contains("already exists")
        .contains("--force");
    assert!(
        std::fs::read_to_string(&config_path)
            .unwrap()
            .ends_with("# mine\n")
    );
    app.slipway(&["init", "--force"]).success();
    assert_eq!(std::fs::read_to_string(&config_path).unwrap(), written);

    // The user puts in real hosts, commits, checks and deploys.
    let hosts = LocalHosts::new(&app, 3);
    let edited = written.replacen(
        "hosts = [\"deploy@web1.example.com\", \"deploy@web2.example.com\"]",
        &format!("hosts = {}", hosts.toml()),
        1,
    );
    assert_ne!(
        edited, written,
        "the production hosts line is where the test expects"
    );
    let edited = edited.replacen(
        &format!("deploy_to = \"/srv/{folder}\""),
        "deploy_to = \"/srv/app\"",
        1,
    );
    // The three commands it suggested, as it suggested them.
    app.commit("Configure slipway", &[("slipway.toml", &edited)]);
    app.slipway(&["check", "production"])
        .success()
        .contains("is valid");
    app.slipway(&["deploy", "production"]).success();
    let live: Vec<Option<String>> = (0..3).map(|i| hosts.current(i)).collect();
    assert!(
        live[0].is_some() && live.iter().all(|r| r == &live[0]),
        "{live:?}"
    );
}

/// The file `init` writes, as a user reads it (app name filtered: it is
/// the temporary folder's).
#[test]
fn init_writes_this_file() {
    let app = App::new("", &[("index.html", "v1\n")]);
    std::fs::remove_file(app.path().join("slipway.toml")).expect("no config yet");
    app.slipway(&["init"]).success();
    let written = std::fs::read_to_string(app.path().join("slipway.toml")).expect("written");
    let folder = app.path().file_name().unwrap().to_str().unwrap().to_owned();
    insta::assert_snapshot!("init_slipway_toml", written.replace(&folder, "[APP]"));
}

/// `slipway --help` is the first screen a new user reads.
#[test]
fn top_level_help() {
    let app = App::new("", &[]);
    // clap wraps to the terminal, or to $COLUMNS: pin it.
    let run = app
        .slipway_env(&["--help"], &[("COLUMNS", "100")])
        .success();
    insta::with_settings!({filters => vec![(r"\d+\.\d+\.\d+", "[VERSION]")]}, {
        insta::assert_snapshot!("slipway_help", run.stdout());
    });
}

/// Completions come from the same definition as the parser, so they name
/// every subcommand (a typo'd hand-written script would not).
#[test]
fn bash_completions_name_the_subcommands() {
    let app = App::new("", &[]);
    let script = app.slipway(&["completions", "bash"]).success().stdout();
    assert!(script.contains("complete -F _slipway"), "{script}");
    for sub in [
        "deploy",
        "rollback",
        "check",
        "init",
        "releases",
        "completions",
    ] {
        assert!(script.contains(sub), "no {sub} in the bash completions");
    }
    assert!(script.contains("--identity"), "flags are completed too");
    let zsh = app.slipway(&["completions", "zsh"]).success().stdout();
    assert!(zsh.starts_with("#compdef slipway"), "{zsh}");
}

/// The man page is real roff: groff renders it without complaint and the
/// rendered page has the sections a man page has.
#[test]
fn man_page_renders_with_groff() {
    let app = App::new("", &[]);
    let page = app.slipway(&["man"]).success().stdout();
    assert!(page.contains(".TH slipway 1"), "{page}");
    let mut groff = std::process::Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("groff is installed (.ci/run installs groff-base)");
    use std::io::Write as _;
    groff
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let checked = groff.wait_with_output().unwrap();
    assert!(checked.status.success());
    assert_eq!(
        String::from_utf8_lossy(&checked.stderr),
        "",
        "groff warnings"
    );

    let rendered = std::process::Command::new("groff")
        .args(["-man", "-Tutf8", "-P-cbou"])
        .stdin(std::fs::File::open(write_page(&app, &page)).unwrap())
        .output()
        .expect("groff runs");
    let text = String::from_utf8_lossy(&rendered.stdout);
    for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SUBCOMMANDS"] {
        assert!(text.contains(section), "no {section} in:\n{text}");
    }
    assert!(text.contains("slipway-deploy"), "{text}");
}

fn write_page(app: &App, page: &str) -> std::path::PathBuf {
    let path = app.scratch("man").join("slipway.1");
    std::fs::write(&path, page).expect("write page");
    path
}

/// The demo used to hide its config and used a health form the README did
/// not show: it must say where its slipway.toml is, and every key in that
/// file must be one the README documents.
#[test]
fn the_demo_shows_its_config_and_uses_only_documented_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["demo", "--dir"])
        .arg(dir.path())
        .env("CI", "true")
        .output()
        .expect("demo runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let config = dir
        .path()
        .canonicalize()
        .expect("canonical")
        .join("app/slipway.toml");
    assert!(
        text.contains(&config.display().to_string()),
        "the demo does not say where its config is:\n{text}"
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let demo = std::fs::read_to_string(&config).expect("demo config");
    for key in keys_of(&demo) {
        assert!(
            readme.contains(&format!("{key} = ")),
            "the demo uses `{key}`, which README.md never shows"
        );
    }
}

/// Every `key = ` in a TOML text (top-level and inside inline tables),
/// comments left out.
fn keys_of(text: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(at) = rest.find(" = ") {
            let before = &rest[..at];
            let key: String = before
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
                .chars()
                .rev()
                .collect();
            if !key.is_empty() && !before.ends_with('"') {
                keys.push(key);
            }
            rest = &rest[at + 3..];
        }
    }
    assert!(keys.len() > 10, "{keys:?}");
    keys
}
