//! Notifiers against stand-in services on loopback.
//!
//! The first half drives the library's `Notifiers` with the events a
//! rollout emits, so wording, request shapes, retries and redaction are
//! checked without a cluster. The second half runs the real binary against
//! three `local:` hosts with `[notify]` in the deployed commit's config.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use slipway::notify::{Delivery, DeployInfo, Event, Notifiers, Sink};

use crate::support::standin::{Recorded, Reply, StandIn};
use crate::support::{App, LocalHosts};

const RELEASE: &str = "20260102T030405Z-1a2b3c4";
const PREVIOUS: &str = "20260101T000000Z-0aa0aa0";
const SLACK_SECRET: &str = "T0AAA/B0BBB/sekritWebhookToken123";
const API_KEY: &str = "NRAK-SEKRITAPIKEY0123456789";

fn info() -> DeployInfo {
    DeployInfo {
        action: slipway::notify::Action::Deploy,
        app: "shop".into(),
        environment: "production".into(),
        release: RELEASE.into(),
        commit: "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b".into(),
        commit_subject: "Fix the checkout".into(),
        deployer: "alice".into(),
        link: Some("https://ci.example.com/run/42".into()),
        changelog: vec!["Fix the checkout".into(), "Bump deps".into()],
        deploy_id: "d42".into(),
    }
}

/// `[notify]` from TOML text, with secrets from `env` instead of the
/// process environment.
fn notifiers(toml_text: &str, env: &[(&str, &str)]) -> Notifiers {
    let table: toml::Table = toml_text.parse().expect("test TOML");
    let notify = table["notify"].as_table().expect("[notify]").clone();
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Notifiers::with_env(&notify, info(), &move |name| env.get(name).cloned())
        .expect("valid [notify]")
}

fn started() -> Event {
    Event::Started {
        action: slipway::notify::Action::Deploy,
        deploy_id: "d42".into(),
        app: "shop".into(),
        environment: "production".into(),
        release: RELEASE.into(),
        commit: info().commit,
        deployer: "alice".into(),
        hosts: vec!["web1".into(), "web2".into(), "web3".into()],
    }
}

fn succeeded() -> Event {
    Event::Succeeded {
        action: slipway::notify::Action::Deploy,
        deploy_id: "d42".into(),
        release: RELEASE.into(),
        previous: Some(PREVIOUS.into()),
        closed_window: Duration::from_millis(1200),
        duration: Duration::from_secs(42),
    }
}

fn rolled_back() -> Event {
    Event::Failed {
        action: slipway::notify::Action::Deploy,
        deploy_id: "d42".into(),
        release: RELEASE.into(),
        error: "the deploy hook `migrate` failed with exit status 7".into(),
        rolled_back_to: Some(PREVIOUS.into()),
    }
}

/// Emits a whole successful rollout, host chatter included.
fn emit_success(n: &Notifiers) {
    n.emit(&started());
    n.emit(&Event::HostPhase {
        host: "web1".into(),
        phase: slipway::notify::Phase::Stage,
        took: Duration::from_millis(300),
    });
    n.emit(&Event::Note {
        message: "waiting for the lock".into(),
    });
    n.emit(&succeeded());
}

fn one<'a>(requests: &'a [Recorded], what: &str) -> &'a Recorded {
    assert_eq!(requests.len(), 1, "{what}: {requests:#?}");
    &requests[0]
}

#[track_caller]
fn all_ok(deliveries: &[Delivery]) {
    assert!(deliveries.iter().all(|d| d.ok), "{deliveries:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_hears_started_and_succeeded_with_the_deploy_facts() {
    let slack = StandIn::start();
    let n = notifiers(
        "[notify]\nslack = { webhook_env = \"SLACK_URL\" }",
        &[(
            "SLACK_URL",
            &format!("{}/services/{SLACK_SECRET}", slack.url()),
        )],
    );
    emit_success(&n);
    let deliveries = n.finish().await;
    all_ok(&deliveries);
    let events: Vec<_> = deliveries.iter().map(|d| d.event.as_str()).collect();
    assert_eq!(events, ["started", "succeeded"], "host events are not chat");

    let requests = slack.requests();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        r.assert_request("POST", &format!("/services/{SLACK_SECRET}"))
            .assert_header("content-type", "application/json")
            .assert_str_contains(
                "/text",
                &[
                    "shop",
                    "production",
                    RELEASE,
                    "1a2b3c4",
                    "Fix the checkout",
                    "alice",
                ],
            );
        r.assert_str_contains("/attachments/0/fields/0/title", &["App"]);
    }
    requests[0].assert_str_contains("/text", &["deploying"]);
    requests[1].assert_str_contains(
        "/text",
        &["is live", "42.0s", "https://ci.example.com/run/42"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_markers_and_the_purge_follow_a_success() {
    let (newrelic, rest, graphite, grafana, datadog, fastly) = (
        StandIn::start(),
        StandIn::start(),
        StandIn::start(),
        StandIn::start(),
        StandIn::start(),
        StandIn::start(),
    );
    let config = format!(
        r#"[notify]
newrelic = {{ api_key_env = "NR_KEY", entity_guid = "MXxBUE18QVBQ", endpoint = "{}" }}
newrelic_rest = {{ api_key_env = "NR_KEY", application_id = 123, endpoint = "{}" }}
graphite = {{ url = "{}" }}
grafana = {{ url = "{}", token_env = "GRAFANA_TOKEN", tags = ["deploy"] }}
datadog = {{ api_key_env = "DD_KEY", endpoint = "{}" }}
fastly = {{ service_id = "SU1Z0isxPaozGVKXdv0eY", token_env = "FASTLY_TOKEN", surrogate_keys = ["shop", "assets"], soft = true, endpoint = "{}" }}
"#,
        newrelic.url(),
        rest.url(),
        graphite.url(),
        grafana.url(),
        datadog.url(),
        fastly.url()
    );
    let n = notifiers(
        &config,
        &[
            ("NR_KEY", API_KEY),
            ("GRAFANA_TOKEN", "glsa_sekrit"),
            ("DD_KEY", "dd-sekrit"),
            ("FASTLY_TOKEN", "fastly-sekrit"),
        ],
    );
    emit_success(&n);
    let deliveries = n.finish().await;
    all_ok(&deliveries);
    assert_eq!(
        deliveries.len(),
        6,
        "one marker each, none for `started`: {deliveries:#?}"
    );

    let nr = newrelic.requests();
    let nr = one(&nr, "newrelic");
    nr.assert_request("POST", "/graphql")
        .assert_header("api-key", API_KEY);
    nr.assert_str_contains(
        "/query",
        &[
            "changeTrackingCreateDeployment",
            "ChangeTrackingDeploymentInput!",
        ],
    );
    assert_eq!(nr.str("/variables/deployment/version"), RELEASE);
    assert_eq!(nr.str("/variables/deployment/entityGuid"), "MXxBUE18QVBQ");
    assert_eq!(nr.str("/variables/deployment/user"), "alice");
    assert_eq!(nr.str("/variables/deployment/deploymentType"), "BASIC");
    assert_eq!(nr.str("/variables/deployment/commit"), info().commit);
    nr.assert_str_contains(
        "/variables/deployment/changelog",
        &["Fix the checkout", "Bump deps"],
    );
    nr.assert_number("/variables/deployment/timestamp");

    let rest = rest.requests();
    let rest = one(&rest, "newrelic_rest");
    rest.assert_request("POST", "/v2/applications/123/deployments.json")
        .assert_header("x-api-key", API_KEY);
    rest.assert_str_contains("/deployment/revision", &[RELEASE]);
    assert_eq!(rest.str("/deployment/user"), "alice");

    let graphite = graphite.requests();
    let g = one(&graphite, "graphite");
    g.assert_request("POST", "/events/");
    g.assert_str_contains("/what", &["shop", RELEASE, "production"]);
    assert_eq!(
        g.assert_string_list("/tags"),
        ["deploy", "shop", "production"]
    );
    g.assert_str_contains("/data", &["1a2b3c4", "Bump deps"])
        .assert_number("/when");

    let grafana = grafana.requests();
    let gf = one(&grafana, "grafana");
    gf.assert_request("POST", "/api/annotations")
        .assert_header("authorization", "Bearer glsa_sekrit");
    gf.assert_number("/time")
        .assert_str_contains("/text", &[RELEASE, "alice"]);
    assert!(
        gf.assert_string_list("/tags")
            .contains(&"deploy".to_owned())
    );

    let datadog = datadog.requests();
    let dd = one(&datadog, "datadog");
    dd.assert_request("POST", "/api/v1/events")
        .assert_header("dd-api-key", "dd-sekrit");
    dd.assert_str_contains("/title", &[RELEASE])
        .assert_number("/date_happened");
    assert_eq!(dd.str("/alert_type"), "success");
    let tags = dd.assert_string_list("/tags");
    assert!(
        tags.contains(&"env:production".to_owned()) && tags.contains(&format!("version:{RELEASE}")),
        "{tags:?}"
    );

    let fastly = fastly.requests();
    let f = one(&fastly, "fastly");
    f.assert_request("POST", "/service/SU1Z0isxPaozGVKXdv0eY/purge")
        .assert_header("fastly-key", "fastly-sekrit")
        .assert_header("fastly-soft-purge", "1")
        .assert_header("surrogate-key", "shop assets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_marks_the_restored_release_and_does_not_purge() {
    let (newrelic, fastly, slack) = (StandIn::start(), StandIn::start(), StandIn::start());
    let config = format!(
        r#"[notify]
newrelic = {{ api_key_env = "NR_KEY", entity_guid = "MXxBUE18QVBQ", endpoint = "{}" }}
fastly = {{ service_id = "SU1Z0isxPaozGVKXdv0eY", token_env = "FASTLY_TOKEN", endpoint = "{}" }}
slack = {{ webhook_env = "SLACK_URL", events = ["failed", "rolled-back"] }}
"#,
        newrelic.url(),
        fastly.url()
    );
    let slack_url = format!("{}/services/{SLACK_SECRET}", slack.url());
    let n = notifiers(
        &config,
        &[
            ("NR_KEY", API_KEY),
            ("FASTLY_TOKEN", "fastly-sekrit"),
            ("SLACK_URL", &slack_url),
        ],
    );
    n.emit(&started());
    n.emit(&rolled_back());
    all_ok(&n.finish().await);

    let nr = newrelic.requests();
    let nr = one(&nr, "newrelic");
    assert_eq!(
        nr.str("/variables/deployment/version"),
        PREVIOUS,
        "the marker is the release now live"
    );
    nr.assert_str_contains(
        "/variables/deployment/description",
        &["rolled back", RELEASE],
    );
    assert!(
        fastly.requests().is_empty(),
        "nothing new was ever served, nothing to purge"
    );
    let slack = slack.requests();
    one(&slack, "only rolled-back was asked for")
        .assert_str_contains("/text", &["rolled back to", PREVIOUS]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_errors_then_success_delivers_exactly_once_and_matrix_keeps_its_txn_id() {
    let failing_twice = || {
        StandIn::scripted(
            vec![Reply::status(500, "oops"), Reply::status(503, "busy")],
            Reply::ok(),
        )
    };
    let (slack, matrix) = (failing_twice(), failing_twice());
    let config = format!(
        r#"[notify]
retries = 3
slack = {{ webhook_env = "SLACK_URL", events = ["succeeded"] }}
matrix = {{ homeserver = "{}", room_id = "!room:example.org", token_env = "MATRIX_TOKEN", events = ["succeeded"] }}
"#,
        matrix.url()
    );
    let slack_url = format!("{}/services/{SLACK_SECRET}", slack.url());
    let n = notifiers(
        &config,
        &[("SLACK_URL", &slack_url), ("MATRIX_TOKEN", "syt_sekrit")],
    );
    emit_success(&n);
    let deliveries = n.finish().await;
    all_ok(&deliveries);
    assert!(
        deliveries.iter().all(|d| d.attempts == 3),
        "{deliveries:#?}"
    );

    assert_eq!(slack.requests().len(), 3, "two failures and one delivery");
    let puts = matrix.requests();
    assert_eq!(puts.len(), 3);
    let txn =
        "/_matrix/client/v3/rooms/%21room%3Aexample.org/send/m.room.message/slipway-d42-succeeded";
    for put in &puts {
        put.assert_request("PUT", txn)
            .assert_header("authorization", "Bearer syt_sekrit");
        assert_eq!(put.str("/msgtype"), "m.notice");
        put.assert_str_contains("/body", &[RELEASE, "alice", "42.0s"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_not_retried_and_its_reason_is_reported() {
    let invalid = StandIn::scripted(vec![Reply::status(400, "invalid_payload")], Reply::ok());
    let no_service = StandIn::scripted(vec![Reply::status(200, "no_service")], Reply::ok());
    let config = "[notify]\nslack = { webhook_env = \"SLACK_URL\", events = [\"succeeded\"] }\nwebhook = { url_env = \"HOOK_URL\", events = [\"succeeded\"] }";
    let n = notifiers(
        config,
        &[
            (
                "SLACK_URL",
                &format!("{}/services/{SLACK_SECRET}", no_service.url()),
            ),
            (
                "HOOK_URL",
                &format!("{}/hook?token=sekritquerytoken", invalid.url()),
            ),
        ],
    );
    emit_success(&n);
    let deliveries = n.finish().await;
    assert_eq!(deliveries.len(), 2);
    for d in &deliveries {
        assert!(!d.ok && d.attempts == 1, "{d:?}");
    }
    let slack = deliveries
        .iter()
        .find(|d| d.notifier == "slack")
        .expect("slack report");
    assert!(
        slack
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("no_service"),
        "{slack:?}"
    );
    let hook = deliveries
        .iter()
        .find(|d| d.notifier == "webhook")
        .expect("webhook report");
    assert!(
        hook.error
            .as_deref()
            .unwrap_or_default()
            .contains("invalid_payload"),
        "{hook:?}"
    );
    assert_eq!(
        (invalid.requests().len(), no_service.requests().len()),
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_never_answers_costs_at_most_timeout_times_attempts() {
    let hanging = StandIn::hanging();
    let config =
        "[notify]\ntimeout = \"300ms\"\nretries = 1\nslack = { webhook_env = \"SLACK_URL\" }";
    let n = notifiers(
        config,
        &[(
            "SLACK_URL",
            &format!("{}/services/{SLACK_SECRET}", hanging.url()),
        )],
    );
    let emitting = Instant::now();
    emit_success(&n);
    assert!(
        emitting.elapsed() < Duration::from_millis(100),
        "emit only queues"
    );
    let finishing = Instant::now();
    let deliveries = n.finish().await;
    // started and succeeded queue behind each other: 2 × (300ms × 2 + 200ms),
    // but finish() stops waiting after one budget (+1s grace).
    assert!(
        finishing.elapsed() < Duration::from_millis(2500),
        "{:?}",
        finishing.elapsed()
    );
    assert_eq!(deliveries.len(), 2, "{deliveries:#?}");
    assert!(deliveries.iter().all(|d| !d.ok), "{deliveries:#?}");
    for d in &deliveries {
        let error = d.error.as_deref().unwrap_or_default();
        assert!(!error.contains("sekrit"), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_delivery_errors() {
    // A port nothing listens on: connection refused, with reqwest's own text.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let echo = StandIn::scripted(
        vec![Reply::status(401, &format!("bad key {API_KEY}"))],
        Reply::ok(),
    );
    let config = format!(
        r#"[notify]
timeout = "500ms"
retries = 1
slack = {{ webhook_env = "SLACK_URL", events = ["succeeded"] }}
newrelic = {{ api_key_env = "NR_KEY", entity_guid = "MXxBUE18QVBQ", endpoint = "{}" }}
"#,
        echo.url()
    );
    let n = notifiers(
        &config,
        &[
            (
                "SLACK_URL",
                &format!("http://127.0.0.1:{closed}/services/{SLACK_SECRET}"),
            ),
            ("NR_KEY", API_KEY),
        ],
    );
    emit_success(&n);
    let deliveries = n.finish().await;
    assert_eq!(deliveries.len(), 2, "{deliveries:#?}");
    for d in &deliveries {
        let error = d.error.clone().unwrap_or_default();
        assert!(!d.ok, "{d:?}");
        for secret in [SLACK_SECRET, "sekritWebhookToken123", API_KEY] {
            assert!(!error.contains(secret), "{secret} leaked: {error}");
        }
    }
    let slack = deliveries
        .iter()
        .find(|d| d.notifier == "slack")
        .expect("slack");
    assert!(
        slack
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("http://127.0.0.1"),
        "{slack:?}"
    );
    assert_eq!(slack.attempts, 2, "connection errors are retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_gets_the_event_and_the_deploy() {
    let hook = StandIn::start();
    let n = notifiers(
        "[notify]\nwebhook = { url_env = \"HOOK_URL\" }",
        &[("HOOK_URL", &format!("{}/deploys", hook.url()))],
    );
    emit_success(&n);
    n.emit(&rolled_back());
    all_ok(&n.finish().await);
    let requests = hook.requests();
    let kinds: Vec<_> = requests
        .iter()
        .map(|r| r.str("/outcome").to_owned())
        .collect();
    assert_eq!(kinds, ["started", "succeeded", "rolled-back"]);
    let done = &requests[1];
    assert_eq!(done.str("/event"), "succeeded");
    assert_eq!(done.json("/duration"), &serde_json::json!(42.0));
    assert_eq!(done.str("/info/commit_subject"), "Fix the checkout");
    assert_eq!(requests[2].str("/rolled_back_to"), PREVIOUS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_message_reaches_every_notifier_without_faking_a_deploy() {
    let (slack, newrelic, fastly, datadog) = (
        StandIn::start(),
        StandIn::start(),
        StandIn::start(),
        StandIn::start(),
    );
    let config = format!(
        r#"[notify]
slack = {{ webhook_env = "SLACK_URL", events = ["failed"] }}
newrelic = {{ api_key_env = "NR_KEY", entity_guid = "MXxBUE18QVBQ", endpoint = "{}" }}
fastly = {{ service_id = "SU1Z0isxPaozGVKXdv0eY", token_env = "FASTLY_TOKEN", endpoint = "{}" }}
datadog = {{ api_key_env = "DD_KEY", endpoint = "{}" }}
"#,
        newrelic.url(),
        fastly.url(),
        datadog.url()
    );
    let slack_url = format!("{}/services/{SLACK_SECRET}", slack.url());
    let n = notifiers(
        &config,
        &[
            ("SLACK_URL", &slack_url),
            ("NR_KEY", API_KEY),
            ("FASTLY_TOKEN", "f"),
            ("DD_KEY", "d"),
        ],
    );
    n.send_test();
    let deliveries = n.finish().await;
    all_ok(&deliveries);
    assert_eq!(deliveries.len(), 4);
    one(&slack.requests(), "slack").assert_str_contains("/text", &["test message"]);
    let nr = newrelic.requests();
    let nr = one(&nr, "newrelic");
    assert!(
        !nr.str("/query").contains("changeTracking"),
        "a test reads, it leaves no marker"
    );
    one(&fastly.requests(), "fastly").assert_request(
        "POST",
        "/service/SU1Z0isxPaozGVKXdv0eY/purge/slipway-notify-test",
    );
    one(&datadog.requests(), "datadog").assert_request("GET", "/api/v1/validate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_name_the_key_or_the_variable_and_never_a_value() {
    let parse = |text: &str, env: &[(&str, &str)]| {
        let table: toml::Table = text.parse().expect("TOML");
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Notifiers::with_env(&table, info(), &move |k| env.get(k).cloned())
            .err()
            .map(|e| e.to_string())
    };
    let missing = parse("slack = { webhook_env = \"SLACK_URL\" }", &[]).expect("an error");
    assert!(
        missing.contains("notify.slack.webhook_env") && missing.contains("SLACK_URL"),
        "{missing}"
    );
    let not_url = parse(
        "slack = { webhook_env = \"SLACK_URL\" }",
        &[("SLACK_URL", "sekrit-not-a-url")],
    )
    .expect("an error");
    assert!(
        not_url.contains("SLACK_URL") && !not_url.contains("sekrit"),
        "{not_url}"
    );
    let unknown = parse("slak = { webhook_env = \"X\" }", &[]).expect("an error");
    assert!(
        unknown.contains("notify.slak") && unknown.contains("slack"),
        "{unknown}"
    );
    let typo = parse("graphite = { ulr = \"http://g\" }", &[]).expect("an error");
    assert!(typo.contains("notify.graphite.ulr"), "{typo}");
    let event = parse(
        "slack = { webhook_env = \"S\", events = [\"done\"] }",
        &[("S", "http://x")],
    )
    .expect("an error");
    assert!(
        event.contains("notify.slack.events") && event.contains("`done`"),
        "{event}"
    );
    // A notifier for another environment is not even read: its variable may be unset here.
    assert_eq!(
        parse(
            "slack = { webhook_env = \"UNSET\", environments = [\"staging\"] }",
            &[]
        ),
        None
    );
}

// ---------------------------------------------------------------------
// The real binary. These assume `slipway deploy` feeds `Notifiers` built
// from the deployed commit's `[notify]` and that `slipway notify test`
// exists.
// ---------------------------------------------------------------------

fn app_with_notify(notify: &str, hook: &str) -> (App, LocalHosts) {
    let app = App::new("", &[("public/index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 3);
    let config = format!(
        r#"[app]
name = "shop"

[environments.production]
branch = "production"
hosts = {hosts}
deploy_to = "{deploy_to}"
deploy_hook = "{hook}"

{notify}
"#,
        hosts = hosts.toml(),
        deploy_to = hosts.deploy_to,
    );
    app.commit("Ship the new checkout", &[("slipway.toml", &config)]);
    (app, hosts)
}

#[test]
fn a_deploy_tells_slack_when_it_starts_and_when_it_is_live() {
    let slack = StandIn::start();
    let (app, hosts) = app_with_notify(
        "[notify]\nslack = { webhook_env = \"SLACK_WEBHOOK_URL\" }",
        "true",
    );
    let url = format!("{}/services/{SLACK_SECRET}", slack.url());
    app.slipway_env(
        &["deploy", "production"],
        &[("SLIPWAY_USER", "alice"), ("SLACK_WEBHOOK_URL", &url)],
    )
    .success()
    .lacks(SLACK_SECRET);
    let release = hosts.current(0).expect("deployed");
    let requests = slack.wait_for(2, Duration::from_secs(5));
    assert_eq!(requests.len(), 2, "{requests:#?}");
    for r in &requests {
        r.assert_request("POST", &format!("/services/{SLACK_SECRET}"))
            .assert_header("content-type", "application/json")
            .assert_str_contains(
                "/text",
                &[
                    "shop",
                    "production",
                    &release,
                    &app.head()[..7],
                    "Ship the new checkout",
                    "alice",
                ],
            );
    }
    requests[1].assert_str_contains("/text", &["is live"]);
}

#[test]
fn a_deploy_leaves_a_new_relic_marker_with_version_user_and_changelog() {
    let newrelic = StandIn::start();
    let notify = format!(
        "[notify]\nnewrelic = {{ api_key_env = \"NEW_RELIC_API_KEY\", entity_guid = \"MXxBUE18QVBQ\", endpoint = \"{}\" }}",
        newrelic.url()
    );
    let (app, hosts) = app_with_notify(&notify, "true");
    app.slipway_env(&["deploy", "production"], &[("NEW_RELIC_API_KEY", API_KEY)])
        .success()
        .lacks(API_KEY);
    let requests = newrelic.wait_for(1, Duration::from_secs(5));
    let nr = one(&requests, "newrelic");
    nr.assert_request("POST", "/graphql")
        .assert_header("api-key", API_KEY);
    assert_eq!(
        nr.str("/variables/deployment/version"),
        hosts.current(0).expect("deployed")
    );
    assert_eq!(nr.str("/variables/deployment/user"), "tester");
    nr.assert_str_contains(
        "/variables/deployment/changelog",
        &["Ship the new checkout"],
    );
}

#[test]
fn a_dead_notifier_warns_but_the_deploy_succeeds_in_bounded_time() {
    let hanging = StandIn::hanging();
    let notify = "[notify]\ntimeout = \"500ms\"\nretries = 1\nslack = { webhook_env = \"SLACK_WEBHOOK_URL\" }";
    let (app, hosts) = app_with_notify(notify, "true");
    let url = format!("{}/services/{SLACK_SECRET}", hanging.url());
    let start = Instant::now();
    let run = app
        .slipway_env(&["deploy", "production"], &[("SLACK_WEBHOOK_URL", &url)])
        .success()
        .contains("warning: notifier slack failed")
        .lacks(SLACK_SECRET)
        .lacks("sekritWebhookToken123");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}\n{}",
        start.elapsed(),
        run.text()
    );
    assert!(hosts.current(0).is_some());
}

#[test]
fn a_rolled_back_deploy_still_notifies_and_keeps_secrets_out_of_the_output() {
    let slack = StandIn::scripted(
        vec![Reply::status(500, "oops")],
        Reply::status(404, "no_service"),
    );
    let (app, _hosts) = app_with_notify(
        "[notify]\nslack = { webhook_env = \"SLACK_WEBHOOK_URL\" }",
        "exit 7",
    );
    let url = format!("{}/services/{SLACK_SECRET}", slack.url());
    app.slipway_env(&["deploy", "production"], &[("SLACK_WEBHOOK_URL", &url)])
        .contains("no_service")
        .lacks(SLACK_SECRET)
        .lacks("sekritWebhookToken123");
}

#[test]
fn notify_test_reports_each_notifier_and_fails_if_one_does() {
    let (good, bad) = (
        StandIn::start(),
        StandIn::scripted(Vec::new(), Reply::status(403, "action_prohibited")),
    );
    let notify = format!(
        "[notify]\nslack = {{ webhook_env = \"SLACK_WEBHOOK_URL\" }}\ngraphite = {{ url = \"{}\" }}",
        good.url()
    );
    let (app, _hosts) = app_with_notify(&notify, "true");
    let url = format!("{}/services/{SLACK_SECRET}", bad.url());
    app.slipway_env(
        &["notify", "test", "production"],
        &[("SLACK_WEBHOOK_URL", &url)],
    )
    .failure(1)
    .contains("graphite")
    .contains("ok")
    .contains("FAILED")
    .contains("action_prohibited")
    .lacks(SLACK_SECRET);
    good.wait_for(1, Duration::from_secs(5))
        .first()
        .expect("graphite got a test event")
        .assert_request("POST", "/events/");
}

#[test]
fn a_real_graphite_web_records_the_deploy_event() {
    let graphite = crate::support::graphite::GraphiteWeb::start();
    let (app, hosts) = app_with_notify(
        &format!(
            "[notify]\ngraphite = {{ url = \"{}\", tags = [\"deploy\"] }}\n",
            graphite.url()
        ),
        "true",
    );
    let run = app.slipway(&["deploy", "production"]).success();
    let release = hosts.current(0).expect("deployed");
    assert!(!run.text().contains("warning: notifier"), "{}", run.text());
    let events = graphite.events();
    let event = events
        .iter()
        .find(|e| {
            e["data"].as_str().is_some_and(|d| d.contains(&release))
                || e["what"].as_str().is_some_and(|w| w.contains(&release))
        })
        .unwrap_or_else(|| panic!("no event for {release} in {events:?}"));
    let tags: Vec<&str> = event["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    for tag in ["deploy", "shop", "production"] {
        assert!(tags.contains(&tag), "tag {tag} missing: {tags:?}");
    }
}

/// Matrix against a real homeserver. A room given as an alias (which the
/// config accepts) used to be sent to the endpoint for room ids and refused;
/// now the alias is resolved through the room directory and the message,
/// read back through the client API, carries HTML beside the plain body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_sends_to_a_room_alias_on_a_real_synapse_with_an_html_body() {
    use crate::support::synapse::{SERVER_NAME, Synapse};
    let synapse = tokio::task::spawn_blocking(Synapse::start)
        .await
        .expect("synapse harness");
    let bot = synapse.user("deploybot");
    let room = synapse.room_with_alias(&bot, "deploys");
    let config = format!(
        r##"[notify]
matrix = {{ homeserver = "{}", room_id = "#deploys:{SERVER_NAME}", token_env = "MATRIX_TOKEN", events = ["started", "succeeded"] }}
"##,
        synapse.url()
    );
    let n = notifiers(&config, &[("MATRIX_TOKEN", &bot.token)]);
    emit_success(&n);
    let deliveries = n.finish().await;
    all_ok(&deliveries);
    assert_eq!(deliveries.len(), 2, "{deliveries:#?}");

    let messages = synapse.messages(&bot, &room);
    let bodies: Vec<&str> = messages
        .iter()
        .filter_map(|m| m["content"]["body"].as_str())
        .collect();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(
        bodies[0].contains(&format!("{RELEASE} is live")),
        "{bodies:?}"
    );
    assert!(
        bodies[1].contains(&format!("deploying {RELEASE}")),
        "{bodies:?}"
    );
    let newest = &messages[0]["content"];
    assert_eq!(newest["msgtype"], "m.notice");
    assert_eq!(newest["format"], "org.matrix.custom.html");
    let html = newest["formatted_body"].as_str().expect("formatted_body");
    assert!(
        html.contains("<strong>Commit</strong>: 1a2b3c4 &quot;Fix the checkout&quot;")
            || html.contains("<strong>Commit</strong>: 1a2b3c4 \"Fix the checkout\""),
        "{html}"
    );
    assert!(
        html.contains(r#"<a href="https://ci.example.com/run/42">"#),
        "{html}"
    );
    assert_eq!(messages[0]["sender"], bot.id.as_str());
}

/// The alias is looked up once per run, not once per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matrix_room_alias_is_resolved_once_per_run() {
    let matrix = StandIn::scripted(
        vec![Reply::json(
            200,
            &serde_json::json!({ "room_id": "!abc:example.org", "servers": ["example.org"] }),
        )],
        Reply::json(200, &serde_json::json!({ "event_id": "$e" })),
    );
    let config = format!(
        r##"[notify]
matrix = {{ homeserver = "{}", room_id = "#deploys:example.org", token_env = "MATRIX_TOKEN", events = ["started", "succeeded"] }}
"##,
        matrix.url()
    );
    let n = notifiers(&config, &[("MATRIX_TOKEN", "syt_sekrit")]);
    emit_success(&n);
    all_ok(&n.finish().await);
    let requests = matrix.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    requests[0].assert_request(
        "GET",
        "/_matrix/client/v3/directory/room/%23deploys%3Aexample.org",
    );
    for put in &requests[1..] {
        assert!(
            put.path
                .starts_with("/_matrix/client/v3/rooms/%21abc%3Aexample.org/send/m.room.message/"),
            "{put:#?}"
        );
    }
}

/// Only `deploy` used to notify: a rollback (and promote, revert, recover)
/// told chat and monitoring nothing. A rollback now tells Slack it started
/// and where production went back to, and leaves a New Relic marker for
/// the release that is live again.
#[test]
fn a_rollback_tells_slack_and_leaves_a_marker_for_the_release_live_again() {
    let (slack, newrelic) = (StandIn::start(), StandIn::start());
    let notify = format!(
        "[notify]\nslack = {{ webhook_env = \"SLACK_WEBHOOK_URL\" }}\nnewrelic = {{ api_key_env = \"NEW_RELIC_API_KEY\", entity_guid = \"MXxBUE18QVBQ\", endpoint = \"{}\" }}",
        newrelic.url()
    );
    let (app, hosts) = app_with_notify(&notify, "true");
    let url = format!("{}/services/{SLACK_SECRET}", slack.url());
    let env = [
        ("SLIPWAY_USER", "alice"),
        ("SLACK_WEBHOOK_URL", url.as_str()),
        ("NEW_RELIC_API_KEY", API_KEY),
    ];
    app.slipway_env(&["deploy", "production"], &env).success();
    let first = hosts.current(0).expect("deployed");
    app.commit("v2", &[("public/index.html", "v2\n")]);
    app.slipway_env(&["deploy", "production"], &env).success();
    let deploys = slack.wait_for(4, Duration::from_secs(5)).len();
    let markers = newrelic.wait_for(2, Duration::from_secs(5)).len();

    app.slipway_env(&["rollback", "production"], &env)
        .success()
        .lacks(SLACK_SECRET)
        .lacks(API_KEY);
    assert_eq!(hosts.current(0).as_deref(), Some(first.as_str()));
    let said = slack.wait_for(deploys + 2, Duration::from_secs(5));
    let said = &said[deploys..];
    assert_eq!(said.len(), 2, "{said:#?}");
    said[0].assert_str_contains("/text", &["rolling back to", &first, "alice"]);
    said[1].assert_str_contains("/text", &["rolled back to", &first, "production"]);
    let marked = newrelic.wait_for(markers + 1, Duration::from_secs(5));
    let marker = marked.last().expect("a marker for the rollback");
    marker
        .assert_request("POST", "/graphql")
        .assert_header("api-key", API_KEY);
    assert_eq!(marker.str("/variables/deployment/version"), first);
}
