//! End-to-end tests of [`super::parse`]: line numbers and keys are asserted
//! exactly, because pointing at the right spot is the point of this module.

use std::path::Path;
use std::time::Duration;

use super::*;

/// The reference config; line numbers below refer to it (line 1 is `[app]`).
const VALID: &str = r#"[app]
name = "shop"
artifact = "tar.gz"
keep_releases = 5

[build]
steps = [{ name = "assets", run = "make assets" }]
exclude = ["tests/**"]

[shared]
dirs = ["public/uploads"]
files = [".env.local"]

[environments.production]
branch = "production"
strategy = "gated"
hosts = ["deploy@10.0.0.1", "deploy@10.0.0.2", "local:/tmp/host3"]
deploy_to = "/srv/shop"
deploy_hook = "bin/migrate"
hook_timeout = "5m"
env = { APP_ENV = "prod" }
secrets = ["DATABASE_URL"]
workers = { stop = "sudo systemctl stop shop-worker", start = "sudo systemctl start shop-worker" }
health = { url = "http://{host}/health", status = 200 }

[environments.staging]
branch = "staging"
hosts = ["deploy@10.0.1.1"]
deploy_to = "/srv/shop"

[notify]
slack = { webhook_env = "SLACK_WEBHOOK_URL" }
"#;

/// `VALID` with the first occurrence of `from` replaced by `to`.
fn edited(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "test edit `{from}` does not apply");
    VALID.replacen(from, to, 1)
}

fn parse_ok(text: &str) -> Config {
    match parse(text, Path::new("slipway.toml")) {
        Ok(config) => config,
        Err(err) => panic!("expected a valid config, got: {err}"),
    }
}

fn parse_err(text: &str) -> ConfigError {
    match parse(text, Path::new("slipway.toml")) {
        Ok(config) => panic!("expected an error, got: {config:?}"),
        Err(err) => err,
    }
}

#[track_caller]
fn assert_at(err: &ConfigError, line: usize, column: usize, key: &str) {
    assert_eq!(
        (err.line, err.column, err.key.as_str()),
        (line, column, key),
        "error was: {err}"
    );
}

#[test]
fn valid_full_config_parses() {
    let config = parse_ok(VALID);
    assert_eq!(config.app.name, "shop");
    assert_eq!(config.app.keep_releases, 5);
    assert_eq!(config.build.steps[0].run, "make assets");
    let prod = &config.environments["production"];
    assert_eq!(prod.hosts.len(), 3);
    assert_eq!(prod.hook_timeout, Duration::from_secs(300));
    assert_eq!(prod.strategy, Strategy::Gated);
    assert_eq!(prod.health.as_ref().map(|h| h.status), Some(200));
    let staging = &config.environments["staging"];
    assert_eq!(staging.parallel, 8);
    assert_eq!(staging.hook_timeout, Duration::from_secs(600));
    assert!(config.notify.contains_key("slack"));
}

#[test]
fn minimal_config_parses() {
    let config = parse_ok("[app]\nname = \"x\"\n");
    assert!(config.environments.is_empty());
    assert_eq!(config.app.artifact, ArtifactFormat::TarGz);
}

#[test]
fn unknown_key_names_the_key() {
    let err = parse_err(&edited("hosts = [", "hostz = ["));
    assert_at(&err, 17, 1, "environments.production.hostz");
    assert!(err.message.contains("hostz"), "{}", err.message);
}

#[test]
fn unknown_key_in_app() {
    let err = parse_err(&edited("name = \"shop\"", "nmae = \"shop\""));
    assert_at(&err, 2, 1, "app.nmae");
}

#[test]
fn wrong_type_names_the_key() {
    let err = parse_err(&edited("keep_releases = 5", "keep_releases = \"five\""));
    assert_at(&err, 4, 17, "app.keep_releases");
}

#[test]
fn wrong_type_inside_array_of_tables() {
    let err = parse_err(&edited(
        "{ name = \"assets\", run = \"make assets\" }",
        "{ name = \"assets\", run = 3 }",
    ));
    assert_at(&err, 7, 35, "build.steps[0].run");
}

#[test]
fn missing_required_key() {
    let err = parse_err(&edited(
        "deploy_to = \"/srv/shop\"\ndeploy_hook",
        "deploy_hook",
    ));
    assert_eq!(err.key, "environments.production");
    assert!(err.message.contains("deploy_to"), "{}", err.message);
}

#[test]
fn bad_duration_names_the_key() {
    let err = parse_err(&edited(
        "hook_timeout = \"5m\"",
        "hook_timeout = \"5 parsecs\"",
    ));
    assert_at(&err, 20, 16, "environments.production.hook_timeout");
    assert!(err.message.contains("not a duration"), "{}", err.message);
}

#[test]
fn bad_duration_in_inline_table() {
    let err = parse_err(&edited(
        "status = 200 }",
        "status = 200, timeout = \"soon\" }",
    ));
    assert_eq!(err.key, "environments.production.health.timeout");
    assert_eq!(err.line, 24);
}

#[test]
fn duplicate_branch_is_reported_at_the_later_one() {
    let err = parse_err(&edited("branch = \"staging\"", "branch = \"production\""));
    assert_at(&err, 27, 1, "environments.staging.branch");
    assert!(err.message.contains("`production`"), "{}", err.message);
}

#[test]
fn duplicate_branch_uses_file_order_not_name_order() {
    // `alpha` sorts before `production` but is written after it.
    let text = format!(
        "{VALID}\n[environments.alpha]\nbranch = \"production\"\nhosts = [\"a\"]\ndeploy_to = \"/srv/a\"\n"
    );
    let err = parse_err(&text);
    assert_at(&err, 35, 1, "environments.alpha.branch");
    assert!(
        err.message.contains("environment `production`"),
        "{}",
        err.message
    );
}

#[test]
fn empty_hosts() {
    let err = parse_err(&edited("hosts = [\"deploy@10.0.1.1\"]", "hosts = []"));
    assert_at(&err, 28, 1, "environments.staging.hosts");
    assert_eq!(err.message, "an environment needs at least one host");
}

#[test]
fn bad_host_points_at_the_element() {
    let err = parse_err(&edited("\"deploy@10.0.0.2\"", "\"deploy@10.0.0.2:99999\""));
    assert_at(&err, 17, 29, "environments.production.hosts[1]");
    assert!(err.message.contains("port"), "{}", err.message);
}

#[test]
fn duplicate_host() {
    let err = parse_err(&edited("\"local:/tmp/host3\"", "\"deploy@10.0.0.1\""));
    assert_at(&err, 17, 48, "environments.production.hosts[2]");
}

#[test]
fn hook_host_out_of_range() {
    let err = parse_err(&edited(
        "deploy_to = \"/srv/shop\"\n\n",
        "deploy_to = \"/srv/shop\"\nhook_host = 1\n\n",
    ));
    assert_at(&err, 30, 1, "environments.staging.hook_host");
}

#[test]
fn env_and_secret_with_the_same_name() {
    let err = parse_err(&edited("[\"DATABASE_URL\"]", "[\"APP_ENV\"]"));
    assert_at(&err, 22, 12, "environments.production.secrets[0]");
}

#[test]
fn bad_env_key() {
    let err = parse_err(&edited("APP_ENV = ", "\"APP-ENV\" = "));
    assert_at(&err, 21, 9, "environments.production.env.APP-ENV");
}

#[test]
fn empty_build_run() {
    let err = parse_err(&edited("run = \"make assets\"", "run = \" \""));
    assert_at(&err, 7, 29, "build.steps[0].run");
}

#[test]
fn bad_glob() {
    let err = parse_err(&edited("\"tests/**\"", "\"tests/[\""));
    assert_at(&err, 8, 12, "build.exclude[0]");
}

#[test]
fn shared_path_escaping() {
    let err = parse_err(&edited("\"public/uploads\"", "\"../uploads\""));
    assert_at(&err, 11, 9, "shared.dirs[0]");
}

#[test]
fn health_needs_url_or_command() {
    let err = parse_err(&edited("url = \"http://{host}/health\", ", ""));
    assert_at(&err, 24, 1, "environments.production.health");
}

#[test]
fn health_url_scheme() {
    let err = parse_err(&edited("http://{host}", "ftp://{host}"));
    assert_at(&err, 24, 12, "environments.production.health.url");
}

#[test]
fn bad_branch_name() {
    let err = parse_err(&edited("branch = \"staging\"", "branch = \"stag ing\""));
    assert_at(&err, 27, 1, "environments.staging.branch");
}

#[test]
fn bad_environment_name() {
    let err = parse_err(&edited("[environments.staging]", "[environments.Staging]"));
    assert_at(&err, 26, 15, "environments.Staging");
}

#[test]
fn deploy_to_must_be_absolute() {
    let err = parse_err(&edited(
        "deploy_to = \"/srv/shop\"",
        "deploy_to = \"srv/shop\"",
    ));
    assert_at(&err, 18, 1, "environments.production.deploy_to");
}

#[test]
fn bad_user_key() {
    let err = parse_err(&edited(
        "deploy_to = \"/srv/shop\"\n\n",
        "deploy_to = \"/srv/shop\"\nusers = [\"ssh-ed25519 AAAA\\nssh-rsa AAAA\"]\n\n",
    ));
    assert_at(&err, 30, 10, "environments.staging.users[0]");
}

#[test]
fn first_problem_in_the_file_is_reported() {
    let text = edited("keep_releases = 5", "keep_releases = 0").replacen(
        "hosts = [\"deploy@10.0.1.1\"]",
        "hosts = []",
        1,
    );
    let err = parse_err(&text);
    assert_at(&err, 4, 1, "app.keep_releases");
}

#[test]
fn syntax_error_has_position_and_nearest_key() {
    let err = parse_err(&edited(
        "deploy_to = \"/srv/shop\"",
        "deploy_to = \"/srv/shop",
    ));
    assert_eq!(err.line, 18);
    assert_eq!(err.key, "environments.production.deploy_to");
}

#[test]
fn display_format() {
    let err = parse_err(&edited("hosts = [\"deploy@10.0.1.1\"]", "hosts = []"));
    assert_eq!(
        err.to_string(),
        "slipway.toml:28:1: `environments.staging.hosts`: an environment needs at least one host"
    );
}

#[test]
fn environment_for_branch_finds_the_mapping() {
    let config = parse_ok(VALID);
    let (name, env) = config
        .environment_for_branch("staging")
        .expect("staging is mapped");
    assert_eq!(name, "staging");
    assert_eq!(env.hosts, ["deploy@10.0.1.1"]);
    assert!(config.environment_for_branch("main").is_none());
}

#[test]
fn environment_lookup_lists_known_names() {
    let config = parse_ok(VALID);
    assert!(config.environment("production").is_ok());
    let err = config.environment("prod").expect_err("prod is not defined");
    assert_eq!(err.known, ["production", "staging"]);
    assert_eq!(
        err.to_string(),
        "no environment `prod` in slipway.toml; defined: production, staging"
    );
}

// --- Values that reach paths, scripts and nginx on the hosts (issue 11). ---
// Each rule below guards a value that was taken as written before: the
// tests name the attack and check the error points at the key.

/// `VALID` with `extra` added to the production environment (after its
/// `deploy_to`, so on line 19).
fn with_production(extra: &str) -> String {
    edited(
        "deploy_to = \"/srv/shop\"\ndeploy_hook",
        &format!("deploy_to = \"/srv/shop\"\n{extra}\ndeploy_hook"),
    )
}

#[test]
fn copy_back_cannot_leave_the_release() {
    // `../../victim` made staging `rm -rf` a folder outside the release.
    let err = parse_err(&with_production("copy_back = [\"../../victim\"]"));
    assert_at(&err, 19, 14, "environments.production.copy_back[0]");
    assert!(err.message.contains("`..`"), "{}", err.message);
    assert!(err.to_string().starts_with("slipway.toml:19:14: "), "{err}");
    for bad in [
        "",
        ".",
        "/etc",
        "a/../../b",
        "./x",
        "x/",
        "a//b",
        "..",
        ".slipway.env",
    ] {
        let err = parse_err(&with_production(&format!("copy_back = [{bad:?}]")));
        assert_eq!(
            err.key, "environments.production.copy_back[0]",
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn copy_back_inside_a_shared_dir_is_refused() {
    // `rm -rf releases/<new>/public/uploads/x` goes through the shared
    // link and deletes the shared data itself.
    let err = parse_err(&with_production("copy_back = [\"public/uploads/cache\"]"));
    assert_at(&err, 19, 14, "environments.production.copy_back[0]");
    assert!(err.message.contains("shared.dirs[0]"), "{}", err.message);
    let err = parse_err(&with_production("copy_back = [\"public\"]"));
    assert_at(&err, 19, 14, "environments.production.copy_back[0]");
}

#[test]
fn copy_back_listed_twice() {
    let err = parse_err(&with_production(
        "copy_back = [\"public/gen\", \"public/gen\"]",
    ));
    assert_at(&err, 19, 28, "environments.production.copy_back[1]");
    assert!(err.message.contains("copy_back[0]"), "{}", err.message);
    parse_ok(&with_production(
        "copy_back = [\"public/gen\", \"tmp/cache\"]",
    ));
}

#[test]
fn canary_hosts_must_be_hosts_of_the_environment() {
    // A canary host outside `hosts` was never validated and reached ssh.
    let canary = |hosts: &str| {
        edited(
            "strategy = \"gated\"",
            &format!("strategy = \"canary\"\ncanary = {{ hosts = [{hosts}] }}"),
        )
    };
    let err = parse_err(&canary("\"-oProxyCommand=touch /tmp/x\""));
    assert_at(&err, 17, 21, "environments.production.canary.hosts[0]");
    assert!(err.message.contains("`hosts`"), "{}", err.message);
    let err = parse_err(&canary("\"deploy@10.0.0.9\""));
    assert_at(&err, 17, 21, "environments.production.canary.hosts[0]");
    let err = parse_err(&canary("\"deploy@10.0.0.1\", \"deploy@10.0.0.1\""));
    assert_at(&err, 17, 40, "environments.production.canary.hosts[1]");
    let err = parse_err(&canary(
        "\"deploy@10.0.0.1\", \"deploy@10.0.0.2\", \"local:/tmp/host3\"",
    ));
    assert_at(&err, 17, 12, "environments.production.canary.hosts");
    assert!(err.message.contains("promote"), "{}", err.message);
    let config = parse_ok(&canary("\"deploy@10.0.0.2\""));
    assert_eq!(
        config.environments["production"].all_hosts()[0],
        "deploy@10.0.0.2"
    );
}

#[test]
fn canary_settings_need_the_canary_strategy() {
    let err = parse_err(&with_production(
        "canary = { hosts = [\"deploy@10.0.0.1\"] }",
    ));
    assert_at(&err, 19, 1, "environments.production.canary");
    assert!(err.message.contains("strategy"), "{}", err.message);
}

#[test]
fn shared_paths_are_plain_paths_inside_shared() {
    // `shared.dirs = ["."]` linked the whole release away; the others
    // escaped `shared/` or named one place twice.
    for bad in [
        "\".\"",
        "\"..\"",
        "\"/srv\"",
        "\"\"",
        "\"public/./x\"",
        "\"public/\"",
    ] {
        let err = parse_err(&edited(
            "dirs = [\"public/uploads\"]",
            &format!("dirs = [{bad}]"),
        ));
        assert_at(&err, 11, 9, "shared.dirs[0]");
    }
    let err = parse_err(&edited(".env.local", ".slipway.env"));
    assert_at(&err, 12, 10, "shared.files[0]");
    assert!(err.message.contains("slipway writes"), "{}", err.message);
}

#[test]
fn shared_paths_listed_twice_or_nested() {
    let err = parse_err(&edited(
        "dirs = [\"public/uploads\"]",
        "dirs = [\"public/uploads\", \"public/uploads\"]",
    ));
    assert_at(&err, 11, 27, "shared.dirs[1]");
    assert!(err.message.contains("list it once"), "{}", err.message);
    let err = parse_err(&edited(
        "files = [\".env.local\"]",
        "files = [\"public/uploads/index.html\"]",
    ));
    assert_at(&err, 12, 10, "shared.files[0]");
    assert!(err.message.contains("shared.dirs[0]"), "{}", err.message);
    let err = parse_err(&edited(
        "dirs = [\"public/uploads\"]",
        "dirs = [\"public/uploads\", \"public\"]",
    ));
    assert_at(&err, 11, 27, "shared.dirs[1]");
    // A common prefix is not nesting.
    parse_ok(&edited(
        "dirs = [\"public/uploads\"]",
        "dirs = [\"public/uploads\", \"public/uploads2\"]",
    ));
}

#[test]
fn env_value_with_nul_is_refused() {
    // A NUL was silently written to the env file as an empty value.
    let err = parse_err(&edited("APP_ENV = \"prod\"", "APP_ENV = \"pr\\u0000od\""));
    assert_at(&err, 21, 9, "environments.production.env.APP_ENV");
    assert!(err.message.contains("NUL"), "{}", err.message);
}

#[test]
fn env_and_secret_names_cannot_take_slipways_own() {
    // Written after slipway's own lines, they would override them.
    let err = parse_err(&edited("APP_ENV = \"prod\"", "SLIPWAY_RELEASE = \"x\""));
    assert_at(&err, 21, 9, "environments.production.env.SLIPWAY_RELEASE");
    let err = parse_err(&edited("[\"DATABASE_URL\"]", "[\"SLIPWAY_DEPLOY_ID\"]"));
    assert_at(&err, 22, 12, "environments.production.secrets[0]");
    assert!(err.message.contains("reserves"), "{}", err.message);
}

#[test]
fn deploy_to_cannot_carry_nginx_syntax() {
    // `slipway nginx` writes deploy_to into `root` and `if (-f ...)`
    // directives; these would end or add directives.
    for bad in [
        "/srv/shop; autoindex on",
        "/srv/shop{",
        "/srv/}shop",
        "/srv/$host",
        "/srv/\\\"shop",
        "/srv/'shop'",
        "/srv/my shop",
        "/srv/shop#x",
        "/srv/a\\nb",
    ] {
        let err = parse_err(&edited(
            "deploy_to = \"/srv/shop\"",
            &format!("deploy_to = \"{bad}\""),
        ));
        assert_at(&err, 18, 1, "environments.production.deploy_to");
    }
    let err = parse_err(&edited(
        "deploy_to = \"/srv/shop\"",
        "deploy_to = \"/srv/shop;\"",
    ));
    assert!(err.message.contains("`;`"), "{}", err.message);
    parse_ok(&edited(
        "deploy_to = \"/srv/shop\"",
        "deploy_to = \"/srv/shop-2.0_a+b@c,d:e\"",
    ));
}

#[test]
fn waits_parallel_and_url_are_bounded() {
    // A huge duration overflowed `now + timeout` (a panic); a huge
    // `parallel` overflowed the semaphore.
    let err = parse_err(&edited(
        "hook_timeout = \"5m\"",
        "hook_timeout = \"100000000y\"",
    ));
    assert_at(&err, 20, 1, "environments.production.hook_timeout");
    let err = parse_err(&with_production("lock_wait = \"8days\""));
    assert_at(&err, 19, 1, "environments.production.lock_wait");
    // A lease renewed every sixth of it: under a second is renewal spam,
    // an hour is an hour of a crashed runner holding the environment.
    for lease in ["500ms", "1h"] {
        let err = parse_err(&with_production(&format!("lock_lease = \"{lease}\"")));
        assert_at(&err, 19, 1, "environments.production.lock_lease");
    }
    let err = parse_err(&edited(
        "status = 200 }",
        "status = 200, timeout = \"30days\" }",
    ));
    assert_at(&err, 24, 56, "environments.production.health.timeout");
    let err = parse_err(&with_production("parallel = 9000000000000000000"));
    assert_at(&err, 19, 1, "environments.production.parallel");
    let err = parse_err(&with_production("url = \"javascript:alert(1)\""));
    assert_at(&err, 19, 1, "environments.production.url");
    parse_ok(&with_production(
        "url = \"https://shop.example.com\"\nparallel = 64",
    ));
}

#[test]
fn artifact_trusted_keys_must_be_ed25519_public_keys() {
    // A key from `ssh-keygen -t ed25519`, accepted as is.
    let good =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGIq6yrvpG0PTL3NBsJjuJpTH9wavwAGSoYnV8ZZnpg7 ci";
    let text = format!("{VALID}\n[artifact]\ntrusted_keys = [\"{good}\"]\n");
    assert_eq!(parse_ok(&text).artifact.trusted_keys, [good]);

    let text = format!("{VALID}\n[artifact]\ntrusted_keys = [\"{good}\", \"ssh-ed25519 AAAA\"]\n");
    let err = parse_err(&text);
    let line = text.lines().count();
    assert_eq!(
        (err.line, err.key.as_str()),
        (line, "artifact.trusted_keys[1]"),
        "{err}"
    );
    assert!(err.message.contains("OpenSSH public key"), "{err}");
}

/// Issue 15: a misspelt key used to get serde's list of every allowed name;
/// the user wants the one they meant, still pinned to file, line and key.
#[test]
fn misspelt_key_suggests_the_right_one() {
    let err = parse_err(&edited(
        "deploy_to = \"/srv/shop\"",
        "deploy_too = \"/srv/shop\"",
    ));
    assert_at(&err, 18, 1, "environments.production.deploy_too");
    assert_eq!(
        err.message,
        "unknown key `deploy_too`; did you mean `deploy_to`?"
    );
    assert!(err.to_string().starts_with("slipway.toml:18:1: "), "{err}");
}

/// A typo in a short top-level key is still caught (`nmae` → `name`).
#[test]
fn transposed_letters_suggest_the_key() {
    let err = parse_err(&edited("name = \"shop\"", "nmae = \"shop\""));
    assert_eq!(err.message, "unknown key `nmae`; did you mean `name`?");
}

/// A key that resembles nothing gets no wild guess and no list of twenty.
#[test]
fn unrelated_key_gets_no_guess() {
    let err = parse_err(&edited("hosts = [", "colour_scheme = ["));
    assert!(!err.message.contains("did you mean"), "{}", err.message);
    assert!(!err.message.contains("deploy_hook"), "{}", err.message);
    assert!(err.message.contains("`colour_scheme`"), "{}", err.message);
}

/// "expected a sequence" is serde's word; TOML users write lists.
#[test]
fn wrong_type_for_a_list_says_list() {
    let err = parse_err(&edited(
        "secrets = [\"DATABASE_URL\"]",
        "secrets = \"DATABASE_URL\"",
    ));
    assert_eq!(err.key, "environments.production.secrets");
    assert_eq!(
        err.message,
        "found the string \"DATABASE_URL\", expected a list, e.g. [\"a\", \"b\"]"
    );
}

/// Numbers and tables get plain words too.
#[test]
fn wrong_type_for_a_number_says_whole_number() {
    let err = parse_err(&edited("keep_releases = 5", "keep_releases = \"five\""));
    assert_eq!(
        err.message,
        "found the string \"five\", expected a whole number, e.g. 3"
    );
}

/// A required key left out is a "key", not serde's "field".
#[test]
fn missing_key_says_key() {
    let err = parse_err(&edited(
        "deploy_to = \"/srv/shop\"\ndeploy_hook",
        "deploy_hook",
    ));
    assert_eq!(
        err.message,
        "missing key `deploy_to`, which is required here"
    );
}

/// A misspelt value of a fixed set gets the same help as a misspelt key.
#[test]
fn misspelt_strategy_suggests_the_value() {
    let err = parse_err(&edited("strategy = \"gated\"", "strategy = \"gatd\""));
    assert_eq!(err.key, "environments.production.strategy");
    assert_eq!(err.message, "unknown value `gatd`; did you mean `gated`?");
}

/// `batch = true` used to say "data did not match any variant of untagged
/// enum Raw"; it must say what `batch` takes.
#[test]
fn wrong_batch_type_says_what_batch_takes() {
    let err = parse_err(&edited(
        "strategy = \"gated\"",
        "strategy = \"rolling\"\nbatch = true",
    ));
    assert_eq!(err.key, "environments.production.batch");
    assert_eq!(err.line, 17, "the line after `strategy`");
    assert!(!err.message.contains("untagged"), "{}", err.message);
    assert!(err.message.contains("\"34%\""), "{}", err.message);
}
