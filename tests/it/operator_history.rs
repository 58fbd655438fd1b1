//! The operator's day, after the deploy: what happened (`history`), what
//! is on the hosts (`releases`), and a command run on every host (`exec`).

use crate::support::{App, LocalHosts};

/// A config for `hosts` whose deploy hook is `hook`.
fn config(hosts: &LocalHosts, hook: &str) -> String {
    hosts.production_config(&format!("deploy_hook = {hook:?}\n"))
}

/// Replaces the ids of this run (releases, commits, host folders) with
/// stable names, longest first so a short id never eats part of a long one.
fn stable(text: &str, names: &[(String, &str)]) -> String {
    let mut text = text.to_owned();
    for (value, name) in names {
        text = text.replace(value.as_str(), name);
    }
    text
}

/// The names of `hosts`' folders: `local:/tmp/…/web2` reads `web2`.
fn host_names(hosts: &LocalHosts) -> Vec<(String, &'static str)> {
    let short = ["web1", "web2", "web3"];
    hosts
        .roots
        .iter()
        .zip(short)
        .map(|(root, name)| (format!("local:{}", root.display()), name))
        .collect()
}

/// A snapshot of text people (or scripts) read, with what changes from
/// run to run (times, deploy ids, durations) filtered out.
fn snapshot(name: &str, text: &str) {
    insta::with_settings!({filters => vec![
        (r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?Z", "[time]"),
        (r"\b\d+\.\d\ds\b", "[secs]"),
        (r#""(duration_ms|closed_ms)": \d+"#, "\"$1\": [ms]"),
        (r#""deploy_id": "d[0-9a-f]+""#, "\"deploy_id\": \"[id]\""),
    ]}, {
        insta::assert_snapshot!(name, text);
    });
}

/// Deploys v1, v2 and v3, rolls back to v2, then deploys v4 whose hook
/// fails. Returns the app, hosts, and names for each release and commit.
fn a_day_of_rollouts() -> (App, LocalHosts, Vec<(String, &'static str)>) {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 3);
    let mut names = Vec::new();
    for (n, version) in ["v1", "v2", "v3"].into_iter().enumerate() {
        let commit = app.commit(
            &format!("Ship {version}"),
            &[
                ("index.html", &format!("{version}\n")),
                ("slipway.toml", &config(&hosts, "true")),
            ],
        );
        app.slipway(&["deploy", "production"]).success();
        let release = hosts.current(0).unwrap();
        names.push((release, ["[v1]", "[v2]", "[v3]"][n]));
        names.push((commit[..7].to_owned(), ["[c1]", "[c2]", "[c3]"][n]));
        names.push((commit, ["[c1]", "[c2]", "[c3]"][n]));
    }
    app.slipway(&["rollback", "production"]).success();
    let commit = app.commit(
        "Break the migration",
        &[(
            "slipway.toml",
            &config(&hosts, "echo migration exploded; exit 7"),
        )],
    );
    app.slipway(&["deploy", "production"]).failure(3);
    let v4 = hosts
        .releases(0)
        .into_iter()
        .find(|r| r.ends_with(&commit[..7]))
        .unwrap();
    names.push((v4, "[v4]"));
    names.push((commit[..7].to_owned(), "[c4]"));
    names.push((commit, "[c4]"));
    names.extend(host_names(&hosts));
    names.sort_by_key(|(value, _)| std::cmp::Reverse(value.len()));
    (app, hosts, names)
}

/// There was no `history` command: after a deploy, a rollback and a failed
/// deploy, the operator could not see who did what, when, or how it ended.
/// Every host records every rollout; `history` shows each rollout once.
#[test]
fn history_shows_each_rollout_once_newest_first_with_outcome_and_timing() {
    let (app, _hosts, names) = a_day_of_rollouts();
    let run = app.slipway(&["history", "production"]).success();
    let text = stable(&run.stdout(), &names);
    snapshot("history_text", &text);
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(lines.len(), 5, "one line per rollout, not per host: {text}");
    assert!(lines[0].contains("deploy") && lines[0].contains("FAILED, rolled back"));
    assert!(lines[0].contains("Break the migration"), "commit subject");
    assert!(lines[1].contains("rollback") && lines[1].contains("[v2]"));
    assert!(lines[4].contains("[v1]") && lines[4].contains("by tester"));
    assert!(lines[4].contains(", closed "), "gated rollouts close");

    let json = app
        .slipway(&["history", "production", "--json"])
        .success()
        .stdout();
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rollouts = doc["rollouts"].as_array().unwrap();
    assert_eq!(rollouts.len(), 5);
    assert_eq!(rollouts[0]["outcome"], "rolled-back");
    assert_eq!(rollouts[0]["hosts"].as_object().unwrap().len(), 3);
    assert!(rollouts[0]["duration_ms"].as_u64().is_some());
    assert_eq!(doc["unreachable"], serde_json::json!([]));
    snapshot("history_json", &stable(&json, &names));
}

/// `releases` said "newest first" but listed directories in the order they
/// were last touched, repeated the same block for every host, and marked
/// neither the rollback target nor the release whose deploy failed.
#[test]
fn releases_are_newest_first_once_for_identical_hosts_with_their_marks() {
    let (app, _hosts, names) = a_day_of_rollouts();
    let run = app.slipway(&["releases", "production"]).success();
    let text = stable(&run.stdout(), &names);
    snapshot("releases_text", &text);
    assert!(text.starts_with("web1, web2, web3:\n"), "{text}");
    let order: Vec<&str> = ["[v4]", "[v3]", "[v2]", "[v1]"]
        .into_iter()
        .filter(|v| text.contains(*v))
        .collect();
    assert_eq!(order.len(), 4);
    let at = |v: &str| text.find(v).unwrap();
    assert!(at("[v4]") < at("[v3]") && at("[v3]") < at("[v2]") && at("[v2]") < at("[v1]"));
    assert!(text.contains("[v4]  (FAILED)"));
    assert!(text.contains("[v2]  (live)"));
    assert!(text.contains("[v1]  (rollback target)"));

    let json = app
        .slipway(&["releases", "production", "--json"])
        .success()
        .stdout();
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["groups"].as_array().unwrap().len(), 1);
    snapshot("releases_json", &stable(&json, &names));
}

/// There was no way to run a command in the live release everywhere. One
/// host failing must be named and fail the run; the command's words reach
/// the host quoted, never pasted into a shell line.
#[test]
fn exec_runs_in_the_live_release_on_every_host_and_names_the_one_that_failed() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 3);
    app.commit("Configure", &[("slipway.toml", &config(&hosts, "true"))]);
    app.slipway(&["deploy", "production"]).success();
    let release = hosts.current(0).unwrap();
    std::fs::write(hosts.root(1).join("current/broken"), "").unwrap();

    let script = r#"if [ -e broken ]; then echo broken here >&2; exit 9; fi; echo "in $(basename "$(pwd -P)")"; printf '%s\n' "$1""#;
    let run = app
        .slipway(&[
            "exec",
            "production",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            "a b; $(touch pwned)",
        ])
        .failure(1);
    let mut names = host_names(&hosts);
    names.push((release, "[v1]"));
    let text = stable(&run.stdout(), &names);
    assert!(text.contains("web1: in [v1]\n"), "{text}");
    assert!(text.contains("web3: in [v1]\n"));
    assert!(text.contains("web2: broken here\n"));
    assert!(
        text.contains("web1: a b; $(touch pwned)\n"),
        "passed as one word"
    );
    assert!(
        text.contains("failed on 1 of 3 host(s): web2 (exit 9)"),
        "{text}"
    );
    for i in 0..3 {
        assert!(!hosts.root(i).join("current/pwned").exists());
    }

    // One host only: the healthy one succeeds alone.
    let web3 = format!("local:{}", hosts.roots[2].display());
    let run = app
        .slipway(&[
            "exec",
            "production",
            "--host",
            &web3,
            "--",
            "cat",
            "index.html",
        ])
        .success();
    assert_eq!(stable(&run.stdout(), &host_names(&hosts)), "web3: v1\n");
}

/// `releases` and `history` failed outright when one host could not be
/// reached, hiding what the others knew; `status` too. Now every reachable
/// host is shown, the lost one is marked UNREACHABLE, and the exit is 4.
#[test]
fn an_unreachable_host_is_marked_and_the_others_still_shown() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 2);
    app.commit("Configure", &[("slipway.toml", &config(&hosts, "true"))]);
    app.slipway(&["deploy", "production"]).success();
    // A third host joins the config, on a port where nothing listens.
    let with_lost = config(&hosts, "true").replace(
        &hosts.toml(),
        &hosts.toml().replace(']', ", \"127.0.0.1:1\"]"),
    );
    assert_ne!(with_lost, config(&hosts, "true"));
    app.commit("Add a host", &[("slipway.toml", &with_lost)]);

    let names = host_names(&hosts);
    for command in ["history", "releases", "status"] {
        let run = app
            .slipway(&[command, "production", "--connect-timeout", "5s"])
            .failure(4);
        let text = stable(&run.stdout(), &names);
        assert!(
            text.contains("127.0.0.1:1") && text.contains("UNREACHABLE"),
            "{command}: {text}"
        );
        assert!(
            text.contains("web1") || command == "history",
            "{command}: {text}"
        );
        if command == "history" {
            assert!(text.contains("Configure  by tester  ok"), "{text}");
        }
    }
    let json = app
        .slipway(&[
            "releases",
            "production",
            "--json",
            "--connect-timeout",
            "5s",
        ])
        .failure(4)
        .stdout();
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["unreachable"][0]["host"], "127.0.0.1:1");
    assert_eq!(doc["groups"][0]["hosts"].as_array().unwrap().len(), 2);
}

/// Over real SSH the command crosses a second shell (the server's), where
/// an unquoted word would be expanded; `exec` quotes each word, and
/// `history` reads every host through the same transport.
#[test]
fn exec_and_history_over_ssh_keep_each_word_intact() {
    use crate::support::run::run_over_ssh;
    use crate::support::sshd::SshCluster;
    let cluster = SshCluster::start(3);
    let app = App::new("", &[("index.html", "v1\n")]);
    let config = format!(
        "[app]\nname = \"shop\"\n[environments.production]\nbranch = \"production\"\nhosts = {}\ndeploy_to = \"{}\"\n",
        cluster.hosts_toml(),
        cluster.deploy_to
    );
    app.commit("Configure over SSH", &[("slipway.toml", &config)]);
    run_over_ssh(app.path(), &cluster, &["deploy", "production"]).success();

    let word = "it's $HOME; `id` \"quoted\"";
    // The SSH flags go before `--`: everything after it is the command.
    let flags = crate::support::run::ssh_flags(&cluster);
    let mut args = vec!["exec", "production"];
    args.extend(flags.iter().map(String::as_str));
    args.extend(["--", "printf", "%s|%s\\n", word, "index.html"]);
    let run = crate::support::run::run(
        crate::support::run::slipway_for(app.path(), &cluster),
        &args,
    )
    .success();
    assert_eq!(
        run.stdout().lines().count(),
        3,
        "one line per host: {}",
        run.text()
    );
    for line in run.stdout().lines() {
        assert!(line.ends_with(&format!(": {word}|index.html")), "{line}");
    }

    let json = run_over_ssh(app.path(), &cluster, &["history", "production", "--json"])
        .success()
        .stdout();
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["rollouts"].as_array().unwrap().len(), 1);
    assert_eq!(doc["rollouts"][0]["subject"], "Configure over SSH");
    assert_eq!(doc["rollouts"][0]["hosts"].as_object().unwrap().len(), 3);
}
