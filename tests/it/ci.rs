//! `slipway ci` and the composite action, driven the way a GitHub Actions
//! runner drives them: the event payload GitHub writes, the runner's
//! variables and files, three real OpenSSH hosts, and a stand-in GitHub REST
//! API that records (and so lets us check) every request. Each test is one
//! story a workflow could live through.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use serde_yaml_ng::Value as Yaml;

use crate::support::releases::ReleaseServer;
use crate::support::run::{Run, run, run_over_ssh, slipway_for, ssh_flags};
use crate::support::sshd::SshCluster;
use crate::support::standin::{Recorded, Reply, StandIn};
use crate::support::{App, LocalHosts};

/// What `${{ github.token }}` / `SLIPWAY_GITHUB_TOKEN` holds in these runs.
const TOKEN: &str = "ghs_FakeInstallationTokenF0rTheStandIn42";
/// The value of the `secrets = ["DATABASE_URL"]` the config names.
const DATABASE_URL: &str = "postgres://shop:Hunter2-sekrit-pw@db.internal:5432/shop";
const REPOSITORY: &str = "acme/shop";
const SERVER_URL: &str = "https://github.com";
const RUN_ID: &str = "7345129876";
const ENV_URL: &str = "https://shop.example.com";
const DEPLOYMENTS: &str = "/repos/acme/shop/deployments";
const STATUSES: &str = "/repos/acme/shop/deployments/42/statuses";

fn log_url() -> String {
    format!("{SERVER_URL}/{REPOSITORY}/actions/runs/{RUN_ID}")
}

fn config(cluster: &SshCluster) -> String {
    format!(
        r#"[app]
name = "shop"
keep_releases = 3

[environments.production]
branch = "production"
hosts = {hosts}
deploy_to = "{deploy_to}"
url = "{ENV_URL}"
secrets = ["DATABASE_URL"]
"#,
        hosts = cluster.hosts_toml(),
        deploy_to = cluster.deploy_to,
    )
}

/// A stand-in GitHub REST API that creates deployment 42 and accepts its
/// two statuses, answering like GitHub; anything else is a 404.
fn github_api() -> StandIn {
    let status = |id: u64, state: &str| {
        Reply::json(
            201,
            &json!({
                "id": id,
                "url": format!("https://api.github.com{STATUSES}/{id}"),
                "state": state,
                "description": "",
                "environment": "production",
                "deployment_url": "https://api.github.com/repos/acme/shop/deployments/42",
                "repository_url": "https://api.github.com/repos/acme/shop",
                "created_at": "2026-11-20T12:00:01Z",
                "updated_at": "2026-11-20T12:00:01Z",
            }),
        )
    };
    StandIn::scripted(
        vec![
            Reply::json(
                201,
                &json!({
                    "id": 42,
                    "node_id": "MDEwOkRlcGxveW1lbnQ0Mg==",
                    "url": "https://api.github.com/repos/acme/shop/deployments/42",
                    "task": "deploy",
                    "environment": "production",
                    "original_environment": "production",
                    "production_environment": true,
                    "transient_environment": false,
                    "creator": { "login": "github-actions[bot]", "id": 41898282, "type": "Bot" },
                    "statuses_url": format!("https://api.github.com{STATUSES}"),
                    "repository_url": "https://api.github.com/repos/acme/shop",
                    "created_at": "2026-11-20T12:00:00Z",
                    "updated_at": "2026-11-20T12:00:00Z",
                }),
            ),
            status(1, "in_progress"),
            status(2, "success"),
        ],
        Reply::json(
            404,
            &json!({ "message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404" }),
        ),
    )
}

/// An address where nothing listens: connection refused.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

/// The shop app on a three-host SSH cluster, and a runner's temp dir.
struct Story {
    app: App,
    cluster: SshCluster,
    hosts: LocalHosts,
    config: String,
    home: PathBuf,
    runner: PathBuf,
}

/// One finished `slipway ci` step, with the files the runner reads back.
struct Step {
    run: Run,
    outputs: BTreeMap<String, String>,
    delimiters: Vec<String>,
    summary: String,
}

static FILES: AtomicUsize = AtomicUsize::new(0);

impl Story {
    fn new() -> Self {
        let cluster = SshCluster::start(3);
        let app = App::new("", &[("public/index.html", "v1\n")]);
        let config = config(&cluster);
        app.commit("Configure slipway", &[("slipway.toml", &config)]);
        let hosts = LocalHosts {
            roots: cluster.roots.clone(),
            deploy_to: cluster.deploy_to.clone(),
        };
        // An empty home: no ~/.ssh of the machine running the tests leaks in.
        let home = cluster.path("home");
        let runner = cluster.path("runner");
        for dir in [&home, &runner] {
            std::fs::create_dir_all(dir).expect("dir");
        }
        Self {
            app,
            cluster,
            hosts,
            config,
            home,
            runner,
        }
    }

    /// A fresh file under the runner's temp dir.
    fn file(&self, name: &str, content: &str) -> PathBuf {
        let n = FILES.fetch_add(1, Ordering::Relaxed);
        let path = self.runner.join(format!("{n}-{name}"));
        std::fs::write(&path, content).expect("runner file");
        path
    }

    /// A copy of `fixtures/github/<name>.json` with `edits` (JSON pointer →
    /// string) applied, where GITHUB_EVENT_PATH would point.
    fn event(&self, name: &str, edits: &[(&str, &str)]) -> PathBuf {
        let path = format!("{}/fixtures/github/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut payload: serde_json::Value = serde_json::from_str(&text).expect("fixture JSON");
        for (pointer, value) in edits {
            *payload
                .pointer_mut(pointer)
                .unwrap_or_else(|| panic!("{name} has no {pointer}")) = json!(value);
        }
        self.file("event.json", &payload.to_string())
    }

    /// The variables a runner sets for a job on `event`, GitHub's API at `api`.
    fn runner_env(&self, event_name: &str, event: &Path, api: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("CI", "true"),
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_EVENT_NAME", event_name),
            ("GITHUB_REPOSITORY", REPOSITORY),
            ("GITHUB_REPOSITORY_OWNER", "acme"),
            ("GITHUB_API_URL", api),
            ("GITHUB_SERVER_URL", SERVER_URL),
            ("GITHUB_GRAPHQL_URL", &format!("{api}/graphql")),
            ("GITHUB_RUN_ID", RUN_ID),
            ("GITHUB_RUN_NUMBER", "17"),
            ("GITHUB_RUN_ATTEMPT", "1"),
            ("GITHUB_ACTOR", "octocat"),
            ("GITHUB_WORKFLOW", "deploy"),
            ("GITHUB_JOB", "deploy"),
            ("RUNNER_OS", "Linux"),
            ("DATABASE_URL", DATABASE_URL),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        for (key, value) in [
            ("GITHUB_EVENT_PATH", event),
            ("GITHUB_WORKSPACE", self.app.path()),
            ("HOME", &self.home),
            ("RUNNER_TEMP", &self.runner),
        ] {
            env.push((key.to_owned(), value.to_str().expect("utf-8").to_owned()));
        }
        env
    }

    /// `slipway ci` as the action's deploy step runs it, with the cluster's
    /// known_hosts and key.
    fn ci(&self, event_name: &str, event: &Path, api: &str) -> Step {
        self.ci_in_job("production", event_name, event, api)
    }

    /// `slipway ci` in a job that declares `environment: <declared>` (empty:
    /// none).
    fn ci_in_job(&self, declared: &str, event_name: &str, event: &Path, api: &str) -> Step {
        let output = self.file("github_output", "");
        let summary = self.file("step_summary", "");
        let mut cmd = slipway_for(self.app.path(), &self.cluster);
        // Nothing of a real runner running these tests leaks in.
        for (key, _) in std::env::vars() {
            if key.starts_with("GITHUB_") || key.starts_with("RUNNER_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.runner_env(event_name, event, api))
            .env("GITHUB_OUTPUT", &output)
            .env("GITHUB_STEP_SUMMARY", &summary)
            .env("SLIPWAY_GITHUB_TOKEN", TOKEN)
            // The job's `environment: production`, as the action passes it.
            .env("SLIPWAY_ENVIRONMENT", declared);
        let flags = ssh_flags(&self.cluster);
        let mut args = vec!["ci"];
        args.extend(flags.iter().map(String::as_str));
        let run = run(cmd, &args);
        let written = std::fs::read_to_string(&output).expect("GITHUB_OUTPUT");
        let (outputs, delimiters) = step_outputs(&written);
        Step {
            run,
            outputs,
            delimiters,
            summary: std::fs::read_to_string(&summary).expect("GITHUB_STEP_SUMMARY"),
        }
    }

    /// The tip of `production` as a push of it.
    fn push_production(&self) -> (String, PathBuf) {
        let commit = self.app.head();
        let event = self.event("push-production", &[("/after", &commit)]);
        (commit, event)
    }

    #[track_caller]
    fn assert_all_on(&self, release: &str, content: &str) {
        for i in 0..3 {
            assert_eq!(self.hosts.current(i).as_deref(), Some(release), "host {i}");
            assert_eq!(
                self.hosts.read(i, "current/public/index.html").as_deref(),
                Some(content),
                "host {i}"
            );
            assert!(!self.hosts.is_closed(i), "host {i} is open");
        }
    }

    #[track_caller]
    fn assert_untouched(&self) {
        for i in 0..3 {
            let entries: Vec<_> = std::fs::read_dir(self.hosts.root(i))
                .map(|rd| rd.filter_map(Result::ok).map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(entries.is_empty(), "host {i} was touched: {entries:?}");
        }
    }
}

/// One entry of a runner file (`$GITHUB_OUTPUT`, `$GITHUB_ENV`): `name=value`
/// or `name<<DELIMITER` … `DELIMITER`.
struct Entry {
    name: String,
    value: String,
    delimiter: Option<String>,
}

/// Parses a runner file the way the runner does.
#[track_caller]
fn runner_file(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let eq = line.find('=');
        match line.find("<<") {
            Some(at) if eq.is_none_or(|eq| at < eq) => {
                let (name, delimiter) = (&line[..at], &line[at + 2..]);
                let mut value = Vec::new();
                loop {
                    let next = lines
                        .next()
                        .unwrap_or_else(|| panic!("`{name}` never ends with {delimiter}:\n{text}"));
                    if next == delimiter {
                        break;
                    }
                    value.push(next);
                }
                entries.push(Entry {
                    name: name.to_owned(),
                    value: value.join("\n"),
                    delimiter: Some(delimiter.to_owned()),
                });
            }
            _ => {
                let (name, value) = line
                    .split_once('=')
                    .unwrap_or_else(|| panic!("not a runner file line: {line:?}"));
                entries.push(Entry {
                    name: name.to_owned(),
                    value: value.to_owned(),
                    delimiter: None,
                });
            }
        }
    }
    entries
}

/// slipway's step outputs: every one in the delimiter form.
#[track_caller]
fn step_outputs(text: &str) -> (BTreeMap<String, String>, Vec<String>) {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "GITHUB_OUTPUT ends mid-line:\n{text}"
    );
    let mut outputs = BTreeMap::new();
    let mut delimiters = Vec::new();
    for entry in runner_file(text) {
        let delimiter = entry.delimiter.unwrap_or_else(|| {
            panic!(
                "output {} is not in the delimiter form:\n{text}",
                entry.name
            )
        });
        outputs.insert(entry.name, entry.value);
        delimiters.push(delimiter);
    }
    (outputs, delimiters)
}

fn outputs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `::add-mask::` for every secret, before any other line; none later.
#[track_caller]
fn assert_masks_first(stdout: &str, secrets: &[&str]) {
    let lines: Vec<&str> = stdout.lines().collect();
    let first_other = lines
        .iter()
        .position(|l| !l.starts_with("::add-mask::"))
        .unwrap_or(lines.len());
    for secret in secrets {
        let mask = format!("::add-mask::{secret}");
        assert!(
            lines[..first_other].contains(&mask.as_str()),
            "{mask:?} is not among the first lines:\n{stdout}"
        );
    }
    assert!(
        lines[first_other..]
            .iter()
            .all(|l| !l.contains("::add-mask::")),
        "a mask came after other output:\n{stdout}"
    );
}

/// No secret anywhere in `text` but on `::add-mask::` lines.
#[track_caller]
fn assert_no_secrets(what: &str, text: &str, secrets: &[&str]) {
    for line in text.lines() {
        if line.starts_with("::add-mask::") {
            continue;
        }
        for secret in secrets {
            assert!(
                !line.contains(secret),
                "{what} shows the secret {secret:?}:\n{text}"
            );
        }
    }
}

/// The titles of the `::group::`s, checking every group is closed before
/// the next opens and at the end.
#[track_caller]
fn groups(stdout: &str) -> Vec<String> {
    let mut titles = Vec::new();
    let mut open = false;
    for line in stdout.lines() {
        if let Some(title) = line.strip_prefix("::group::") {
            assert!(!open, "group {title} opened inside another:\n{stdout}");
            open = true;
            titles.push(title.to_owned());
        } else if line == "::endgroup::" {
            assert!(open, "::endgroup:: without a group:\n{stdout}");
            open = false;
        }
    }
    assert!(!open, "a group is never closed:\n{stdout}");
    titles
}

/// The headers GitHub's REST API asks for, each sent exactly once, and no
/// secret in the body.
#[track_caller]
fn assert_github_request(r: &Recorded, path: &str) {
    r.assert_request("POST", path);
    let auth = format!("Bearer {TOKEN}");
    assert_eq!(r.header_values("authorization"), [auth.as_str()], "{r:?}");
    assert_eq!(
        r.header_values("accept"),
        ["application/vnd.github+json"],
        "{r:?}"
    );
    assert_eq!(r.header_values("x-github-api-version"), ["2022-11-28"]);
    r.assert_header("content-type", "application/json");
    assert!(
        r.header("user-agent").is_some_and(|ua| !ua.is_empty()),
        "GitHub refuses requests without a User-Agent: {r:?}"
    );
    assert!(
        !r.raw_body.contains(TOKEN) && !r.raw_body.contains(DATABASE_URL),
        "{}",
        r.raw_body
    );
    let description = r.str("/description");
    assert!(description.chars().count() <= 140, "{description}");
}

/// The three requests of a recorded rollout, checked field by field.
#[track_caller]
fn assert_deployment_recorded(requests: &[Recorded], commit: &str, release: &str) {
    let seen: Vec<(&str, &str, Option<&str>)> = requests
        .iter()
        .map(|r| {
            (
                r.method.as_str(),
                r.path.as_str(),
                r.body.get("state").and_then(|s| s.as_str()),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("POST", DEPLOYMENTS, None),
            ("POST", STATUSES, Some("in_progress")),
            ("POST", STATUSES, Some("success")),
        ],
        "{requests:#?}"
    );
    let created = &requests[0];
    assert_github_request(created, DEPLOYMENTS);
    assert_eq!(created.str("/ref"), commit);
    assert_eq!(created.str("/task"), "deploy");
    assert_eq!(created.str("/environment"), "production");
    assert_eq!(created.json("/auto_merge"), &json!(false));
    assert_eq!(created.json("/required_contexts"), &json!([]));
    assert_eq!(created.json("/production_environment"), &json!(true));
    assert_eq!(created.str("/payload/release_id"), release);

    let log_url = log_url();
    let in_progress = &requests[1];
    assert_github_request(in_progress, STATUSES);
    assert_eq!(in_progress.str("/log_url"), log_url);

    let success = &requests[2];
    assert_github_request(success, STATUSES);
    assert_eq!(success.str("/log_url"), log_url);
    assert_eq!(success.str("/environment_url"), ENV_URL);
    success.assert_str_contains("/description", &[release]);
}

#[test]
fn a_push_to_production_deploys_to_three_hosts_and_is_recorded_as_a_github_deployment() {
    let story = Story::new();
    let api = github_api();
    let (commit, event) = story.push_production();

    let step = story.ci("push", &event, &api.url());
    let run = step.run.success();
    let release = story.hosts.current(0).expect("host 1 has a release");
    story.assert_all_on(&release, "v1\n");
    assert!(release.ends_with(&commit[..7]), "{release}");
    for i in 0..3 {
        let env_file = story
            .hosts
            .read(i, "current/.slipway.env")
            .unwrap_or_default();
        assert!(
            env_file.contains(DATABASE_URL),
            "the secret reached host {i}"
        );
    }

    assert_deployment_recorded(&api.requests(), &commit, &release);

    assert_eq!(
        step.outputs,
        outputs(&[
            ("environment", "production"),
            ("release-id", &release),
            ("commit", &commit),
            ("deployed", "true"),
        ])
    );
    let mut unique = step.delimiters.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        4,
        "every output has its own delimiter: {:?}",
        step.delimiters
    );

    let summary = &step.summary;
    for needle in ["production", &commit[..7], &release, "| host |"] {
        assert!(
            summary.contains(needle),
            "summary lacks {needle:?}:\n{summary}"
        );
    }
    for host in story.cluster.specs() {
        let row = summary
            .lines()
            .find(|l| l.starts_with(&format!("| `{host}` |")))
            .unwrap_or_else(|| panic!("no phase row for {host}:\n{summary}"));
        assert!(row.contains('s') && !row.contains('❌'), "{row}");
    }
    let header = summary
        .lines()
        .find(|l| l.starts_with("| host |"))
        .expect("phase table");
    for phase in ["stage", "switch"] {
        assert!(header.contains(phase), "{header}");
    }

    let stdout = run.stdout();
    assert_masks_first(&stdout, &[TOKEN, DATABASE_URL]);
    assert_eq!(groups(&stdout), ["build", "rollout"], "{stdout}");
    assert!(stdout.contains(&release), "{stdout}");
    assert_no_secrets("stdout", &stdout, &[TOKEN, DATABASE_URL]);
    assert_no_secrets("stderr", &run.stderr(), &[TOKEN, DATABASE_URL]);
    assert_no_secrets("the summary", summary, &[TOKEN, DATABASE_URL]);
    assert!(
        !stdout.contains("::warning") && !stdout.contains("::error"),
        "{stdout}"
    );
}

#[test]
fn a_config_error_in_the_pushed_commit_is_annotated_on_its_line_and_nothing_is_deployed() {
    let story = Story::new();
    let api = github_api();
    let broken = story
        .config
        .replace("keep_releases = 3", "keep_releases = \"three\"");
    story
        .app
        .commit("Keep three releases", &[("slipway.toml", &broken)]);
    let line = broken
        .lines()
        .position(|l| l.starts_with("keep_releases"))
        .expect("the edit")
        + 1;
    let col = "keep_releases = ".len() + 1;
    let (_, event) = story.push_production();

    let step = story.ci("push", &event, &api.url());
    let run = step.run.failure(2);
    let stdout = run.stdout();
    let prefix = format!("::error file=slipway.toml,line={line},col={col},");
    let annotation = stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no annotation starting {prefix:?}:\n{}", run.text()));
    assert!(
        annotation.contains("keep_releases") && annotation.contains("::"),
        "{annotation}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("::error")).count(),
        1,
        "one annotation:\n{stdout}"
    );
    assert!(api.requests().is_empty(), "{:#?}", api.requests());
    assert_ne!(
        step.outputs.get("deployed").map(String::as_str),
        Some("true")
    );
    assert_no_secrets("the output", &run.text(), &[TOKEN, DATABASE_URL]);
    story.assert_untouched();
}

#[test]
fn pushes_and_pull_requests_that_deploy_nothing_are_a_notice_and_exit_0() {
    let story = Story::new();
    let api = github_api();
    story.app.git(&["checkout", "-q", "-b", "master"]);
    let master = story
        .app
        .commit("Work on master", &[("public/index.html", "master\n")]);
    story.app.git(&["checkout", "-q", "production"]);

    let cases = [
        (
            "push",
            story.event("push-master", &[("/after", &master)]),
            "`master` deploys to no environment",
        ),
        ("push", story.event("push-delete", &[]), "was deleted"),
        ("push", story.event("push-tag", &[]), "is not a branch"),
        (
            "pull_request",
            story.event("pr-closed-unmerged", &[]),
            "#42 was closed without merging",
        ),
    ];
    for (name, event, why) in cases {
        let step = story.ci(name, &event, &api.url());
        let run = step.run.success();
        let stdout = run.stdout();
        let notice = stdout
            .lines()
            .find(|l| l.starts_with("::notice"))
            .unwrap_or_else(|| panic!("{why}: no ::notice:\n{}", run.text()));
        assert!(notice.contains(why), "{notice}");
        assert!(
            !stdout.contains("::error") && !stdout.contains("::warning"),
            "{stdout}"
        );
        assert_eq!(step.outputs, outputs(&[("deployed", "false")]), "{why}");
        assert!(step.summary.is_empty(), "{why}: {}", step.summary);
        assert!(api.requests().is_empty(), "{why}: {:#?}", api.requests());
    }
    story.assert_untouched();
}

#[test]
fn a_pull_request_merged_into_production_deploys_its_merge_commit() {
    let story = Story::new();
    let api = github_api();
    story.app.git(&["checkout", "-q", "-b", "checkout"]);
    story
        .app
        .commit("New checkout", &[("public/index.html", "v2\n")]);
    story.app.git(&["checkout", "-q", "production"]);
    story.app.git(&[
        "merge",
        "-q",
        "--no-ff",
        "-m",
        "Merge pull request #42 from acme/checkout",
        "checkout",
    ]);
    let merge = story.app.head();
    // The tip of production moves on; the merge commit is what ships.
    story
        .app
        .commit("Later work", &[("public/index.html", "v3\n")]);
    let event = story.event(
        "pr-merged-production",
        &[("/pull_request/merge_commit_sha", &merge)],
    );

    let step = story.ci("pull_request", &event, &api.url());
    step.run.success();
    let release = story.hosts.current(0).expect("deployed");
    assert!(release.ends_with(&merge[..7]), "{release}");
    story.assert_all_on(&release, "v2\n");
    assert_deployment_recorded(&api.requests(), &merge, &release);
    assert_eq!(step.outputs["commit"], merge);
    assert_eq!(step.outputs["deployed"], "true");
}

/// One merge fires two events: `pull_request` (closed, merged) and the
/// `push` of the merge commit. A workflow listening to both rolled the same
/// commit out twice, closing the cluster twice; the second run now sees the
/// release live, says so, and exits 0 with `deployed=false`.
#[test]
fn a_merged_pull_request_and_then_its_push_deploy_once() {
    let story = Story::new();
    let api = github_api();
    story.app.git(&["checkout", "-q", "-b", "checkout"]);
    story
        .app
        .commit("New checkout", &[("public/index.html", "v2\n")]);
    story.app.git(&["checkout", "-q", "production"]);
    story.app.git(&[
        "merge",
        "-q",
        "--no-ff",
        "-m",
        "Merge pull request #42 from acme/checkout",
        "checkout",
    ]);
    let merge = story.app.head();
    let merged = story.event(
        "pr-merged-production",
        &[("/pull_request/merge_commit_sha", &merge)],
    );
    let first = story.ci("pull_request", &merged, &api.url());
    first.run.success();
    assert_eq!(first.outputs["deployed"], "true");
    let release = story.hosts.current(0).expect("deployed");

    let (_, pushed) = story.push_production();
    let second = story.ci("push", &pushed, &api.url());
    second
        .run
        .success()
        .contains(&format!("{release} is already live on production"));
    assert_eq!(second.outputs["deployed"], "false");
    assert_eq!(second.outputs["commit"], merge);
    story.assert_all_on(&release, "v2\n");
    for i in 0..3 {
        assert_eq!(story.hosts.history(i).len(), 1, "one rollout on host {i}");
    }
    let created = api
        .requests()
        .iter()
        .filter(|r| r.path == DEPLOYMENTS)
        .count();
    assert_eq!(created, 1, "one GitHub Deployment");
}

#[test]
fn a_github_api_that_is_down_or_failing_never_fails_the_deploy() {
    let story = Story::new();

    // Nothing listens: connection refused.
    let (_, event) = story.push_production();
    let step = story.ci("push", &event, &closed_port());
    let run = step.run.success();
    let first = story.hosts.current(0).expect("deployed");
    story.assert_all_on(&first, "v1\n");
    assert_eq!(step.outputs["deployed"], "true");
    let stdout = run.stdout();
    let warning = stdout
        .lines()
        .find(|l| l.starts_with("::warning"))
        .unwrap_or_else(|| panic!("no ::warning:\n{}", run.text()));
    assert!(warning.contains("creating a deployment"), "{warning}");
    assert_no_secrets("the output", &run.text(), &[TOKEN, DATABASE_URL]);

    // GitHub answers 500: one attempt, then the rollout goes on.
    story.app.commit("Second", &[("public/index.html", "v2\n")]);
    let failing = StandIn::scripted(
        Vec::new(),
        Reply::json(500, &json!({ "message": "Server Error" })),
    );
    let (commit, event) = story.push_production();
    let step = story.ci("push", &event, &failing.url());
    let run = step.run.success();
    let second = story.hosts.current(0).expect("deployed");
    assert_ne!(first, second);
    assert!(second.ends_with(&commit[..7]));
    story.assert_all_on(&second, "v2\n");
    assert_eq!(step.outputs["deployed"], "true");
    assert_eq!(step.outputs["release-id"], second);
    let requests = failing.requests();
    assert_eq!(
        requests.len(),
        1,
        "no statuses for no deployment: {requests:#?}"
    );
    assert_github_request(&requests[0], DEPLOYMENTS);
    let stdout = run.stdout();
    let warning = stdout
        .lines()
        .find(|l| l.starts_with("::warning"))
        .unwrap_or_else(|| panic!("no ::warning:\n{}", run.text()));
    assert!(warning.contains("500"), "{warning}");
    assert!(!stdout.contains("::error"), "{stdout}");
    assert_no_secrets("the output", &run.text(), &[TOKEN, DATABASE_URL]);
}

#[test]
fn a_frozen_environment_refuses_the_ci_deploy_with_the_freeze_message() {
    // `slipway lock --message` must stop CI too, at once, saying why and how
    // to lift it; the runner's job fails with exit 5, nothing is deployed.
    let story = Story::new();
    let frozen = run_over_ssh(
        story.app.path(),
        &story.cluster,
        &[
            "lock",
            "production",
            "--message",
            "Incident 4711: hands off",
        ],
    );
    frozen.success().contains("frozen by tester");
    let api = github_api();
    let (_, event) = story.push_production();
    let step = story.ci("push", &event, &api.url());
    step.run
        .failure(5)
        .contains("Incident 4711: hands off")
        .contains("slipway unlock production");
    assert!(
        (0..3).all(|i| story.hosts.current(i).is_none()),
        "nothing deployed"
    );

    run_over_ssh(story.app.path(), &story.cluster, &["unlock", "production"])
        .success()
        .contains("lifted the freeze");
    let step = story.ci("push", &event, &github_api().url());
    step.run.success();
    let release = story.hosts.current(0).expect("deployed once unfrozen");
    story.assert_all_on(&release, "v1\n");
}

// ---------------------------------------------------------------------------
// action.yml

fn action() -> Yaml {
    let path = format!("{}/action.yml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

#[track_caller]
fn text<'a>(value: &'a Yaml, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

/// The `${{ … }}` expressions in `text`, trimmed.
fn expressions(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        let after = &rest[start + 3..];
        let end = after.find("}}").expect("an unclosed ${{");
        found.push(after[..end].trim());
        rest = &after[end + 2..];
    }
    found
}

/// `text` with every expression replaced by `resolve(expression)`.
fn substitute(text: &str, resolve: &dyn Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let end = after.find("}}").expect("an unclosed ${{");
        out.push_str(&resolve(after[..end].trim()));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[test]
fn action_yml_is_a_composite_action_whose_inputs_reach_run_steps_only_through_env() {
    let action = action();
    assert!(!text(&action["name"], "name").is_empty());
    assert!(!text(&action["description"], "description").is_empty());
    assert_eq!(text(&action["runs"]["using"], "runs.using"), "composite");

    let inputs = action["inputs"].as_mapping().expect("inputs");
    for name in [
        "environment",
        "config",
        "ssh-private-key",
        "known-hosts",
        "github-token",
        "dry-run",
        "create-deployment",
        "version",
    ] {
        let input = inputs
            .get(name)
            .unwrap_or_else(|| panic!("no input {name}"));
        assert!(
            !text(&input["description"], name).is_empty(),
            "{name} has a description"
        );
    }
    assert_eq!(
        text(
            &action["inputs"]["github-token"]["default"],
            "github-token default"
        ),
        "${{ github.token }}"
    );
    assert_eq!(
        text(&action["inputs"]["config"]["default"], "config default"),
        "slipway.toml"
    );

    for name in ["environment", "release-id", "commit", "deployed"] {
        let value = text(&action["outputs"][name]["value"], name);
        assert_eq!(
            expressions(value),
            [format!("steps.deploy.outputs.{name}").as_str()],
            "output {name}: {value}"
        );
    }

    let steps = action["runs"]["steps"].as_sequence().expect("steps");
    assert!(
        steps.iter().any(|s| s["id"].as_str() == Some("deploy")),
        "the outputs refer to a step with id deploy"
    );
    for step in steps {
        let name = step["name"].as_str().unwrap_or("a step");
        let Some(script) = step["run"].as_str() else {
            continue;
        };
        assert!(
            step["shell"].as_str().is_some_and(|s| !s.is_empty()),
            "{name} has no shell:"
        );
        for expression in expressions(script) {
            assert!(
                !expression.starts_with("inputs."),
                "{name} puts ${{{{ {expression} }}}} into its script: pass it through env:"
            );
        }
    }
}

/// What one step of the action printed (stdout and stderr, as the log shows).
struct StepLog {
    name: String,
    log: String,
    ok: bool,
}

/// How the emulated runner lays out the action.
struct Runner<'a> {
    /// `GITHUB_ACTION_PATH`: where the runner checked the action out.
    action_path: PathBuf,
    /// `SLIPWAY_BIN` set before the first step (a binary the job provides).
    bin: Option<PathBuf>,
    /// More variables for every step (`RUNNER_OS`, `GITHUB_SERVER_URL`, …).
    env: Vec<(&'a str, String)>,
    /// Stop after the step with this name.
    last_step: Option<&'a str>,
}

/// Runs the action's steps with bash the way a runner does, with `given`
/// inputs; returns the action's outputs and each step's log.
fn run_action(
    story: &Story,
    runner_env: &[(String, String)],
    given: &[(&str, &str)],
) -> (
    BTreeMap<String, String>,
    Vec<StepLog>,
    BTreeMap<String, String>,
) {
    let runner = Runner {
        action_path: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_slipway"))),
        env: Vec::new(),
        last_step: None,
    };
    let (outputs, logs, exported) = run_action_with(story, runner_env, given, &runner);
    for step in &logs {
        assert!(step.ok, "step {} failed:\n{}", step.name, step.log);
    }
    (outputs, logs, exported)
}

/// [`run_action`] as `runner` lays it out; stops at the first failed step.
/// `uses:` steps (actions/cache) are skipped: they only make a later run
/// faster, and the steps must work without them.
/// `github.action_repository` and `github.action_ref` are empty, as GitHub
/// leaves them inside composite actions (actions/runner#2473).
fn run_action_with(
    story: &Story,
    runner_env: &[(String, String)],
    given: &[(&str, &str)],
    runner: &Runner<'_>,
) -> (
    BTreeMap<String, String>,
    Vec<StepLog>,
    BTreeMap<String, String>,
) {
    let action = action();
    let inputs = action["inputs"].as_mapping().expect("inputs").clone();
    let given: BTreeMap<&str, &str> = given.iter().copied().collect();
    for name in given.keys() {
        assert!(inputs.contains_key(*name), "the action has no input {name}");
    }
    let input = |name: &str| -> String {
        if let Some(value) = given.get(name) {
            return (*value).to_owned();
        }
        let default = inputs
            .get(name)
            .unwrap_or_else(|| panic!("no input {name}"))
            .get("default")
            .and_then(Yaml::as_str)
            .unwrap_or("");
        substitute(default, &|e| match e {
            "github.token" => TOKEN.to_owned(),
            other => panic!("unsupported expression in a default: {other}"),
        })
    };
    let step_outputs: std::cell::RefCell<BTreeMap<String, BTreeMap<String, String>>> =
        std::cell::RefCell::default();
    let resolve = |e: &str| -> String {
        let mut parts = e.splitn(4, '.');
        if let (Some("steps"), Some(id), Some("outputs"), Some(key)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            return step_outputs
                .borrow()
                .get(id)
                .and_then(|o| o.get(key))
                .cloned()
                .unwrap_or_default();
        }
        match e.strip_prefix("inputs.") {
            Some(name) => input(name),
            None if e == "github.token" => TOKEN.to_owned(),
            None if e == "github.action_repository" || e == "github.action_ref" => String::new(),
            None => panic!("this runner does not know ${{{{ {e} }}}}"),
        }
    };

    let mut exported: Vec<(String, String)> = Vec::new();
    if let Some(bin) = &runner.bin {
        exported.push(("SLIPWAY_BIN".to_owned(), bin.display().to_string()));
    }
    let mut path_dirs: Vec<String> = Vec::new();
    let mut logs = Vec::new();
    let steps = action["runs"]["steps"].as_sequence().expect("steps");
    for (i, step) in steps.iter().enumerate() {
        let name = step["name"].as_str().unwrap_or("step").to_owned();
        if step.get("uses").is_some() {
            continue;
        }
        let script = text(&step["run"], "run");
        assert_eq!(text(&step["shell"], "shell"), "bash", "{name}");
        let script_path = story.file(&format!("step{i}.sh"), &substitute(script, &resolve));
        let github_env = story.file("github_env", "");
        let github_output = story.file("github_output", "");
        let github_path = story.file("github_path", "");
        let summary = story.file("step_summary", "");

        let mut cmd = Command::new("bash");
        cmd.args(["--noprofile", "--norc", "-eo", "pipefail"])
            .arg(&script_path)
            .current_dir(story.app.path())
            .env_clear();
        let system_path = std::env::var("PATH").unwrap_or_default();
        let mut path = path_dirs.clone();
        path.push(system_path);
        cmd.env("PATH", path.join(":"))
            .env("LANG", "C.UTF-8")
            .envs(runner_env.iter().cloned())
            .envs(runner.env.iter().map(|(k, v)| (*k, v)))
            .env("GITHUB_ACTION_PATH", &runner.action_path)
            .env("GITHUB_ACTION_REPOSITORY", "")
            .env("GITHUB_ENV", &github_env)
            .env("GITHUB_OUTPUT", &github_output)
            .env("GITHUB_PATH", &github_path)
            .env("GITHUB_STEP_SUMMARY", &summary)
            .envs(exported.iter().cloned());
        if let Some(env) = step["env"].as_mapping() {
            for (key, value) in env {
                let key = text(key, "env name");
                let value = match value {
                    Yaml::String(s) => substitute(s, &resolve),
                    Yaml::Bool(b) => b.to_string(),
                    Yaml::Number(n) => n.to_string(),
                    other => panic!("{name}: env {key} is {other:?}"),
                };
                cmd.env(key, value);
            }
        }
        let out = cmd.output().expect("bash runs");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ok = out.status.success();
        let last = runner.last_step == Some(name.as_str());
        logs.push(StepLog { name, log, ok });
        if !ok {
            break;
        }

        let read = |p: &Path| std::fs::read_to_string(p).expect("runner file");
        exported.extend(
            runner_file(&read(&github_env))
                .into_iter()
                .map(|e| (e.name, e.value)),
        );
        for dir in read(&github_path).lines().filter(|l| !l.is_empty()) {
            path_dirs.insert(0, dir.to_owned());
        }
        if let Some(id) = step["id"].as_str() {
            step_outputs.borrow_mut().insert(
                id.to_owned(),
                runner_file(&read(&github_output))
                    .into_iter()
                    .map(|e| (e.name, e.value))
                    .collect(),
            );
        }
        if last {
            break;
        }
    }
    let step_outputs = step_outputs.into_inner();

    let mut outputs = BTreeMap::new();
    for (name, output) in action["outputs"].as_mapping().expect("outputs") {
        let name = text(name, "output name");
        let value = substitute(text(&output["value"], name), &|e| {
            let mut parts = e.splitn(4, '.');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some("steps"), Some(id), Some("outputs"), Some(key)) => step_outputs
                    .get(id)
                    .and_then(|o| o.get(key))
                    .cloned()
                    .unwrap_or_default(),
                _ => panic!("output {name}: unsupported ${{{{ {e} }}}}"),
            }
        });
        outputs.insert(name.to_owned(), value);
    }
    (outputs, logs, exported.into_iter().collect())
}

#[test]
fn the_composite_action_run_step_by_step_deploys_with_a_pasted_crlf_key_it_never_shows() {
    let story = Story::new();
    let api = github_api();
    let (commit, event) = story.push_production();
    let runner_env = story.runner_env("push", &event, &api.url());

    let key = std::fs::read_to_string(&story.cluster.keys.private).expect("key");
    // As pasted into a secret from Windows: CRLF, no final newline.
    let pasted = key.trim_end().replace('\n', "\r\n");
    assert!(pasted.contains("\r\n") && !pasted.ends_with('\n'));
    let known_hosts = std::fs::read_to_string(&story.cluster.known_hosts).expect("known_hosts");

    let (outputs_, logs, exported) = run_action(
        &story,
        &runner_env,
        &[
            ("environment", "production"),
            ("ssh-private-key", &pasted),
            ("known-hosts", known_hosts.trim_end()),
        ],
    );

    let release = story.hosts.current(0).expect("deployed");
    story.assert_all_on(&release, "v1\n");
    assert_eq!(
        outputs_,
        outputs(&[
            ("environment", "production"),
            ("release-id", &release),
            ("commit", &commit),
            ("deployed", "true"),
        ])
    );
    assert_deployment_recorded(&api.requests(), &commit, &release);

    // The key file: normalised, private.
    let identity = PathBuf::from(
        exported
            .get("SLIPWAY_IDENTITY")
            .expect("the setup step exports SLIPWAY_IDENTITY"),
    );
    assert!(
        identity.starts_with(&story.runner),
        "{}",
        identity.display()
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| {
            let mode = std::fs::metadata(p).expect("stat").permissions().mode();
            format!("{:o}", mode & 0o777)
        };
        assert_eq!(mode(&identity), "600", "{}", identity.display());
        assert_eq!(mode(identity.parent().expect("dir")), "700");
    }
    assert_eq!(std::fs::read_to_string(&identity).expect("key file"), key);
    let known = exported.get("SLIPWAY_KNOWN_HOSTS").expect("known hosts");
    assert_eq!(
        std::fs::read_to_string(known).expect("known_hosts file"),
        known_hosts
    );

    // Never shown: not the key, not a line of it, not the other secrets.
    let key_lines: Vec<&str> = key
        .lines()
        .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
        .collect();
    assert!(!key_lines.is_empty());
    for step in &logs {
        for line in &key_lines {
            assert!(
                !step.log.contains(line),
                "step {} shows the private key:\n{}",
                step.name,
                step.log
            );
        }
        assert_no_secrets(&step.name, &step.log, &[TOKEN, DATABASE_URL]);
    }
    let deploy = logs.last().expect("the deploy step");
    assert_masks_first(&deploy.log, &[TOKEN, DATABASE_URL]);
    assert_eq!(groups(&deploy.log), ["build", "rollout"]);
}

/// The job's declared environment is the pin under GitHub Actions: its
/// protection rules and environment secrets guard it. A workflow (which the
/// pusher controls) cannot point a production deploy at a job declared for
/// staging, nor deploy from a job that declares nothing.
#[test]
fn ci_deploys_only_to_the_environment_the_job_declares() {
    let story = Story::new();
    let api = github_api();
    let (_commit, event) = story.push_production();
    for (declared, says) in [
        (
            "staging",
            "this job declares environment `staging`, but `production` deploys `production`",
        ),
        (
            "",
            "declares no environment; add `environment: production` to the job",
        ),
    ] {
        let step = story.ci_in_job(declared, "push", &event, &api.url());
        let run = step.run.failure(2);
        assert!(run.stdout().contains("::error"), "{}", run.text());
        assert!(run.text().contains(says), "{}", run.text());
        story.assert_untouched();
    }
    assert!(api.requests().is_empty(), "no Deployment was created");
}

// ---------------------------------------------------------------------------
// Getting slipway: release archives, checksums, the source build fallback

const TARGETS: [&str; 4] = [
    "x86_64-unknown-linux-musl",
    "aarch64-unknown-linux-musl",
    "x86_64-apple-darwin",
    "aarch64-apple-darwin",
];

/// The action as a runner checks it out for `uses: acme/slipway@<git_ref>`:
/// `<work>/_actions/acme/slipway/<git_ref>`, holding the repository's files
/// (copied, so a build's `target/` lands there, not in this checkout).
fn checked_out_action(story: &Story, git_ref: &str) -> PathBuf {
    let dir = story
        .cluster
        .path("work/_actions/acme/slipway")
        .join(git_ref);
    std::fs::create_dir_all(&dir).expect("action dir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for item in ["action.yml", "Cargo.toml", "Cargo.lock", "src", ".github"] {
        let status = Command::new("cp")
            .arg("-R")
            .arg(root.join(item))
            .arg(&dir)
            .status()
            .expect("cp runs");
        assert!(status.success(), "copying {item}");
    }
    dir
}

/// A runner on `os`/`arch` (as `RUNNER_OS`/`RUNNER_ARCH` name them) with
/// its own tool cache, GitHub's downloads served by `releases`.
fn runner_on<'a>(
    story: &Story,
    action_path: PathBuf,
    releases: &ReleaseServer,
    (os, arch): (&str, &str),
) -> Runner<'a> {
    let tool_cache = story.cluster.path(&format!("tool-cache-{os}-{arch}"));
    Runner {
        action_path,
        bin: None,
        env: vec![
            ("GITHUB_SERVER_URL", releases.url()),
            ("RUNNER_OS", os.to_owned()),
            ("RUNNER_ARCH", arch.to_owned()),
            ("RUNNER_TOOL_CACHE", tool_cache.display().to_string()),
        ],
        last_step: Some("Get slipway"),
    }
}

/// A stand-in for the binary of `target` (the real one is 200 MB in a debug
/// build): a script that says which target it is, so a test sees which
/// archive was unpacked.
fn stand_in_binary(story: &Story, target: &str) -> PathBuf {
    let path = story.cluster.path(&format!("bin-{target}/slipway"));
    std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
    std::fs::write(&path, format!("#!/bin/sh\necho 'slipway for {target}'\n")).expect("script");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    path
}

fn download_path(tag: &str, asset: &str) -> String {
    format!("/acme/slipway/releases/download/{tag}/{asset}")
}

/// The action pinned to a release (`uses: acme/slipway@v9.9.9`) used to
/// build its download URL from `$GITHUB_ACTION_REPOSITORY`, which GitHub
/// leaves empty inside composite actions, and to fetch a `-linux` build
/// whatever the runner. Now it finds itself from `$GITHUB_ACTION_PATH`,
/// fetches the archive for the runner, checks it and deploys with it; a
/// second job on the same runner takes it from the tool cache.
#[test]
fn the_action_downloads_its_own_release_for_a_linux_x64_runner_and_deploys_with_it() {
    let story = Story::new();
    let api = github_api();
    let releases = ReleaseServer::start();
    for target in TARGETS {
        let binary = match target {
            // The one this runner runs: the real slipway, which deploys.
            "x86_64-unknown-linux-musl" => PathBuf::from(env!("CARGO_BIN_EXE_slipway")),
            other => stand_in_binary(&story, other),
        };
        releases.publish("acme/slipway", "v9.9.9", target, &binary, None);
    }
    let action_path = checked_out_action(&story, "v9.9.9");
    let (commit, event) = story.push_production();
    let runner_env = story.runner_env("push", &event, &api.url());
    let mut runner = runner_on(&story, action_path, &releases, ("Linux", "X64"));
    runner.last_step = None;
    let key = std::fs::read_to_string(&story.cluster.keys.private).expect("key");
    let known_hosts = std::fs::read_to_string(&story.cluster.known_hosts).expect("known_hosts");
    let inputs = [
        ("environment", "production"),
        ("ssh-private-key", key.as_str()),
        ("known-hosts", known_hosts.as_str()),
    ];

    let (outputs_, logs, exported) = run_action_with(&story, &runner_env, &inputs, &runner);
    for step in &logs {
        assert!(step.ok, "step {} failed:\n{}", step.name, step.log);
    }
    let asset = "slipway-x86_64-unknown-linux-musl.tar.gz";
    assert_eq!(
        releases.fetched(),
        [
            download_path("v9.9.9", &format!("{asset}.sha256")),
            download_path("v9.9.9", asset),
            download_path("v9.9.9", &format!("{asset}.sha256")),
        ]
    );
    let bin = PathBuf::from(&exported["SLIPWAY_BIN"]);
    assert!(
        bin.ends_with("slipway/v9.9.9/x86_64-unknown-linux-musl/slipway"),
        "{}",
        bin.display()
    );
    let release = story.hosts.current(0).expect("deployed");
    story.assert_all_on(&release, "v1\n");
    assert_eq!(outputs_["deployed"], "true");
    assert_eq!(outputs_["commit"], commit);

    // The next job finds it in the tool cache: only the release check.
    let (_, logs, _) = run_action_with(&story, &runner_env, &inputs, &runner);
    assert!(logs.iter().all(|s| s.ok));
    let get = logs.iter().find(|s| s.name == "Get slipway").expect("step");
    assert!(get.log.contains("slipway from the cache"), "{}", get.log);
    assert_eq!(releases.fetched().len(), 4, "{:?}", releases.fetched());
}

/// Each runner gets its own archive: Linux on ARM64, macOS on Apple silicon
/// and on Intel (macOS has `shasum`, not `sha256sum`; the step uses
/// whichever the runner has).
#[test]
fn the_action_picks_the_archive_for_linux_arm64_and_macos_runners() {
    let story = Story::new();
    let api = github_api();
    let releases = ReleaseServer::start();
    for target in TARGETS {
        let binary = stand_in_binary(&story, target);
        releases.publish("acme/slipway", "v9.9.9", target, &binary, None);
    }
    let action_path = checked_out_action(&story, "v9.9.9");
    let (_, event) = story.push_production();
    let runner_env = story.runner_env("push", &event, &api.url());
    for (os, arch, target) in [
        ("Linux", "ARM64", "aarch64-unknown-linux-musl"),
        ("macOS", "ARM64", "aarch64-apple-darwin"),
        ("macOS", "X64", "x86_64-apple-darwin"),
    ] {
        let runner = runner_on(&story, action_path.clone(), &releases, (os, arch));
        let before = releases.fetched().len();
        let (_, logs, exported) = run_action_with(
            &story,
            &runner_env,
            &[("environment", "production")],
            &runner,
        );
        for step in &logs {
            assert!(step.ok, "{os}/{arch}: {} failed:\n{}", step.name, step.log);
        }
        let asset = format!("slipway-{target}.tar.gz");
        assert_eq!(
            releases.fetched()[before..],
            [
                download_path("v9.9.9", &format!("{asset}.sha256")),
                download_path("v9.9.9", &asset),
                download_path("v9.9.9", &format!("{asset}.sha256")),
            ],
            "{os}/{arch}"
        );
        let bin = &exported["SLIPWAY_BIN"];
        assert!(bin.ends_with(&format!("{target}/slipway")), "{bin}");
        let said = Command::new(bin).output().expect("runs");
        assert_eq!(
            String::from_utf8_lossy(&said.stdout).trim(),
            format!("slipway for {target}"),
            "{os}/{arch}"
        );
    }
}

/// An archive that does not match its published checksum (a tampered or
/// truncated download) fails the step; it is never run, and the action
/// does not quietly build from source instead.
#[test]
fn a_release_archive_with_a_wrong_checksum_fails_the_step() {
    let story = Story::new();
    let api = github_api();
    let releases = ReleaseServer::start();
    let binary = stand_in_binary(&story, "x86_64-unknown-linux-musl");
    releases.publish(
        "acme/slipway",
        "v9.9.9",
        "x86_64-unknown-linux-musl",
        &binary,
        Some(&"0".repeat(64)),
    );
    let action_path = checked_out_action(&story, "v9.9.9");
    let (_, event) = story.push_production();
    let runner_env = story.runner_env("push", &event, &api.url());
    let runner = runner_on(&story, action_path.clone(), &releases, ("Linux", "X64"));

    let (_, logs, exported) = run_action_with(
        &story,
        &runner_env,
        &[("environment", "production")],
        &runner,
    );
    let last = logs.last().expect("a step ran");
    assert_eq!(last.name, "Get slipway");
    assert!(!last.ok, "{}", last.log);
    assert!(
        last.log.contains("does not match its checksum"),
        "{}",
        last.log
    );
    assert!(!exported.contains_key("SLIPWAY_BIN"));
    assert!(!action_path.join("target").exists(), "nothing was built");
    story.assert_untouched();
}

/// A ref with no release (`uses: acme/slipway@main`) builds slipway from
/// the action's source, into the cargo target dir the cache step keeps.
/// The build is faked: a `cargo` first on PATH records its arguments and
/// puts this test binary's slipway where the build would, because a real
/// release build takes minutes.
#[test]
fn a_ref_without_a_release_builds_slipway_from_the_actions_source() {
    let story = Story::new();
    let api = github_api();
    let releases = ReleaseServer::start();
    let action_path = checked_out_action(&story, "main");
    let (_, event) = story.push_production();
    let runner_env = story.runner_env("push", &event, &api.url());
    let fake = story.cluster.path("fake-cargo");
    std::fs::create_dir_all(&fake).expect("dir");
    let calls = fake.join("calls");
    std::fs::write(
        fake.join("cargo"),
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{calls}'\nwhile [ $# -gt 0 ]; do\n  if [ \"$1\" = --target-dir ]; then dir=\"$2\"; fi\n  shift\ndone\nmkdir -p \"$dir/release\" && cp '{bin}' \"$dir/release/slipway\"\n",
            calls = calls.display(),
            bin = env!("CARGO_BIN_EXE_slipway"),
        ),
    )
    .expect("fake cargo");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(fake.join("cargo"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let mut runner = runner_on(&story, action_path.clone(), &releases, ("Linux", "X64"));
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    runner.env.push(("PATH", path));

    let (_, logs, exported) = run_action_with(
        &story,
        &runner_env,
        &[("environment", "production")],
        &runner,
    );
    for step in &logs {
        assert!(step.ok, "step {} failed:\n{}", step.name, step.log);
    }
    let choose = logs
        .iter()
        .find(|s| s.name == "Choose slipway")
        .expect("step");
    assert!(
        choose.log.contains("acme/slipway has no release main"),
        "{}",
        choose.log
    );
    let calls = std::fs::read_to_string(&calls).expect("cargo was called");
    let manifest = action_path.join("Cargo.toml");
    assert_eq!(
        calls.trim(),
        format!(
            "build --release --locked --quiet --features vendored-openssl --manifest-path {} --target-dir {}",
            manifest.display(),
            action_path.join("target").display()
        )
    );
    assert_eq!(
        PathBuf::from(&exported["SLIPWAY_BIN"]),
        action_path.join("target/release/slipway")
    );
    assert_eq!(
        releases.fetched(),
        [download_path(
            "main",
            "slipway-x86_64-unknown-linux-musl.tar.gz.sha256"
        )]
    );
}
