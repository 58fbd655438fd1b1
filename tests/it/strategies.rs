//! Gated, rolling and canary rollouts proven with real traffic: one real
//! nginx per `local:` host (configured by `slipway nginx`), a bounded load
//! loop recording every response and the version it served.

use std::collections::BTreeMap;

use crate::support::nginx::{Load, Nginx, Response};
use crate::support::run::{Run, run_over_ssh};
use crate::support::sshd::SshCluster;
use crate::support::{App, LocalHosts};

/// The same stories over real SSH: three sshd hosts whose deploy roots are
/// folders nginx serves directly.
pub(crate) struct SshWeb {
    pub(crate) app: App,
    pub(crate) hosts: LocalHosts,
    pub(crate) cluster: SshCluster,
}

impl SshWeb {
    pub(crate) fn new(env: &str) -> Self {
        let cluster = SshCluster::start(3);
        let app = App::new("", &[("public/version.txt", "1\n")]);
        let hosts = LocalHosts {
            roots: cluster.roots.clone(),
            deploy_to: cluster.deploy_to.clone(),
        };
        let config = config(&hosts, env).replace(&hosts.toml(), &cluster.hosts_toml());
        app.commit("Configure", &[("slipway.toml", &config)]);
        Self {
            app,
            hosts,
            cluster,
        }
    }

    pub(crate) fn slipway(&self, args: &[&str]) -> Run {
        run_over_ssh(self.app.path(), &self.cluster, args)
    }

    /// One nginx per host: the snippet `slipway nginx` prints (the same
    /// path on every SSH host) pointed at the folder behind each host's
    /// deploy root.
    pub(crate) fn servers(&self) -> Vec<Nginx> {
        let out = self
            .slipway(&["nginx", "production", "--retry-after", "7"])
            .success()
            .stdout();
        let snippet: String = out
            .lines()
            .filter(|l| !l.starts_with("# for "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(snippet.contains(&self.hosts.deploy_to), "{out}");
        (0..3)
            .map(|i| {
                Nginx::start(
                    &snippet.replace(&self.hosts.deploy_to, self.hosts.root(i).to_str().unwrap()),
                )
            })
            .collect()
    }
}

fn config(hosts: &LocalHosts, env: &str) -> String {
    format!(
        r#"[app]
name = "web"
keep_releases = 20

[environments.production]
branch = "production"
hosts = {hosts}
deploy_to = "{deploy_to}"
health = {{ command = "test -s public/version.txt", retries = 0 }}
{env}
"#,
        hosts = hosts.toml(),
        deploy_to = hosts.deploy_to,
    )
}

/// An app at version 1 with `env` lines in its production environment.
fn setup(n: usize, env: &str) -> (App, LocalHosts) {
    let app = App::new("", &[("public/version.txt", "1\n")]);
    let hosts = LocalHosts::new(&app, n);
    app.commit("Configure", &[("slipway.toml", &config(&hosts, env))]);
    (app, hosts)
}

pub(crate) fn release(app: &App, version: u32) {
    app.commit(
        &format!("Version {version}"),
        &[("public/version.txt", &format!("{version}\n"))],
    );
}

/// One nginx per host, configured with what `slipway nginx` prints.
fn servers(app: &App, hosts: &LocalHosts) -> Vec<Nginx> {
    let out = app
        .slipway(&["nginx", "production", "--retry-after", "7"])
        .success()
        .stdout();
    let mut snippets: BTreeMap<String, String> = BTreeMap::new();
    let mut current = None;
    for line in out.lines() {
        if let Some(host) = line.strip_prefix("# for ") {
            current = Some(host.to_owned());
        } else if let Some(host) = &current {
            snippets
                .entry(host.clone())
                .or_default()
                .push_str(&format!("{line}\n"));
        }
    }
    assert_eq!(
        snippets.len(),
        hosts.roots.len(),
        "one snippet per local host:\n{out}"
    );
    hosts
        .roots
        .iter()
        .map(|root| Nginx::start(&snippets[&format!("local:{}", root.display())]))
        .collect()
}

pub(crate) fn version(r: &Response) -> Option<u32> {
    (r.status == 200).then(|| r.body.parse().ok()).flatten()
}

/// What every rolling story checks: no failed request, and no host ever
/// serving an older version than it already served.
#[track_caller]
fn assert_rolling(log: &[Vec<Response>], last: u32) {
    let total: usize = log.iter().map(Vec::len).sum();
    assert!(total > 300, "the load loop ran ({total} requests)");
    for (i, responses) in log.iter().enumerate() {
        let failed: Vec<_> = responses.iter().filter(|r| r.status != 200).collect();
        assert!(
            failed.is_empty(),
            "host {i}: {} of {} requests failed: {:?}",
            failed.len(),
            responses.len(),
            failed.first()
        );
        let versions: Vec<u32> = responses.iter().filter_map(version).collect();
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "host {i} went back to an old version: {versions:?}"
        );
        assert_eq!(
            versions.last(),
            Some(&last),
            "host {i} ends on the last release"
        );
    }
}

/// What every gated story checks: only 200s and 503s with Retry-After, the
/// cluster seen closed, and never two versions served at once.
#[track_caller]
fn assert_gated(log: &[Vec<Response>], run: &Run) {
    let all: Vec<&Response> = log.iter().flatten().collect();
    let odd: Vec<_> = all
        .iter()
        .filter(|r| !(r.status == 200 || (r.status == 503 && r.retry_after)))
        .collect();
    assert!(
        odd.is_empty(),
        "only 200s and 503s with Retry-After: {:?}",
        odd.first()
    );
    assert!(
        all.iter().any(|r| r.status == 503),
        "the cluster was seen closed"
    );
    let last_old = all
        .iter()
        .filter(|r| version(r) == Some(1))
        .map(|r| r.started)
        .max()
        .expect("v1 served");
    let first_new = all
        .iter()
        .filter(|r| version(r) == Some(2))
        .map(|r| r.started)
        .min()
        .expect("v2 served");
    assert!(
        last_old < first_new,
        "old and new were served at the same time"
    );
    let window = run
        .text()
        .lines()
        .find(|l| l.contains("closed for"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        window.contains('s'),
        "the closed window is printed: {window}"
    );
}

#[test]
fn over_ssh_rolling_deploys_under_load_fail_no_request() {
    let web = SshWeb::new("strategy = \"rolling\"\nbatch = 1");
    web.slipway(&["deploy", "production"]).success();
    let nginx = web.servers();
    let load = Load::start(
        &nginx.iter().map(|n| n.addr).collect::<Vec<_>>(),
        "/version.txt",
        200_000,
    );
    for v in 2..=4 {
        release(&web.app, v);
        web.slipway(&["deploy", "production"])
            .success()
            .contains("never closed");
    }
    assert_rolling(&load.finish(), 4);
}

#[test]
fn over_ssh_a_gated_deploy_under_load_never_mixes_versions() {
    let web = SshWeb::new("deploy_hook = \"sleep 1\"");
    web.slipway(&["deploy", "production"]).success();
    let nginx = web.servers();
    let load = Load::start(
        &nginx.iter().map(|n| n.addr).collect::<Vec<_>>(),
        "/version.txt",
        200_000,
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    release(&web.app, 2);
    let run = web.slipway(&["deploy", "production"]).success();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_gated(&load.finish(), &run);
}

#[test]
fn rolling_deploys_under_load_fail_no_request_and_never_go_back() {
    let (app, hosts) = setup(3, "strategy = \"rolling\"\nbatch = 1");
    app.slipway(&["deploy", "production"]).success();
    let nginx = servers(&app, &hosts);
    let addrs: Vec<_> = nginx.iter().map(|n| n.addr).collect();
    let load = Load::start(&addrs, "/version.txt", 200_000);
    for v in 2..=11 {
        release(&app, v);
        app.slipway(&["deploy", "production"])
            .success()
            .lacks("closed for");
    }
    assert_rolling(&load.finish(), 11);
}

#[test]
fn gated_deploy_under_load_answers_only_503_with_retry_after_and_never_mixes_versions() {
    let (app, hosts) = setup(3, "deploy_hook = \"sleep 1\"");
    app.slipway(&["deploy", "production"]).success();
    let nginx = servers(&app, &hosts);
    let addrs: Vec<_> = nginx.iter().map(|n| n.addr).collect();
    let load = Load::start(&addrs, "/version.txt", 200_000);
    std::thread::sleep(std::time::Duration::from_millis(200));
    release(&app, 2);
    let run = app
        .slipway(&["deploy", "production"])
        .success()
        .contains("closed for");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_gated(&load.finish(), &run);
}

#[test]
fn canary_switches_the_canary_first_then_promote_or_rollback() {
    let (app, all) = setup(4, "");
    // Host 1 is the internal canary; hosts 2–4 are behind the load balancer.
    let canary_host = format!("local:{}", all.roots[0].display());
    let canary = |share: &str| {
        format!(
            "strategy = \"canary\"\ncanary = {{ hosts = [\"{canary_host}\"], share = \"{share}\", check = \"grep -q . public/version.txt\" }}"
        )
    };
    app.slipway(&["deploy", "production"]).success();
    let nginx = servers(&app, &all);
    let served = || {
        nginx
            .iter()
            .map(|n| version(&n.get("/version.txt")))
            .collect::<Vec<_>>()
    };

    app.commit(
        "Canary v2",
        &[
            ("public/version.txt", "2\n"),
            ("slipway.toml", &config(&all, &canary("0%"))),
        ],
    );
    app.slipway(&["deploy", "production"])
        .success()
        .contains("slipway promote production");
    assert_eq!(
        served(),
        [Some(2), Some(1), Some(1), Some(1)],
        "after stage 1 only the canary serves v2"
    );
    app.slipway(&["status", "production"])
        .success()
        .contains("canary of");
    release(&app, 3);
    app.slipway(&["deploy", "production"])
        .failure(1)
        .contains("canary");
    app.slipway(&["promote", "production"]).success();
    assert_eq!(served(), [Some(2); 4], "promote brings every host over");

    app.commit(
        "Canary v4",
        &[
            ("public/version.txt", "4\n"),
            ("slipway.toml", &config(&all, &canary("33%"))),
        ],
    );
    app.slipway(&["deploy", "production"]).success();
    assert_eq!(
        served(),
        [Some(4), Some(4), Some(2), Some(2)],
        "stage 2 switched a third of the rest"
    );
    app.slipway(&["rollback", "production"])
        .success()
        .contains("reverted");
    assert_eq!(served(), [Some(2); 4], "rollback restores every host");
    app.slipway(&["status", "production"])
        .success()
        .lacks("canary of");
}

#[test]
fn copy_back_carries_content_written_into_the_live_release() {
    let (app, hosts) = setup(2, "copy_back = [\"public/generated\"]");
    app.slipway(&["deploy", "production"]).success();
    let generated = hosts.root(0).join("current/public/generated");
    std::fs::create_dir_all(&generated).unwrap();
    std::fs::write(generated.join("report.html"), "made by the live release").unwrap();
    release(&app, 2);
    app.slipway(&["deploy", "production"]).success();
    assert_eq!(
        hosts.read(0, "current/public/version.txt").as_deref(),
        Some("2\n")
    );
    assert_eq!(
        hosts
            .read(0, "current/public/generated/report.html")
            .as_deref(),
        Some("made by the live release")
    );
    assert!(
        hosts
            .read(1, "current/public/generated/report.html")
            .is_none(),
        "only where it existed"
    );
}
