//! The trust boundary: the pushed commit is untrusted input and its build
//! steps untrusted code. What a push may reach is decided by the server
//! owner's files (pins, allow-list, hook env file), never by the push.
//!
//! Each story here is an attack that worked before pins, the build
//! sandbox and the hook env file existed.

use crate::support::git_host::{SshGitServer, as_git_user};
use crate::support::server::{GitServer, push};
use crate::support::sshd::SshCluster;
use crate::support::{App, LocalHosts};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Production on hosts 0 and 1, staging on host 2 of a three-host cluster.
struct Site {
    cluster: SshCluster,
    server: SshGitServer,
    app: App,
    server_known_hosts: std::path::PathBuf,
}

const PROD_SECRET: &str = "prod-db-canary-7f3a";
const STAGING_SECRET: &str = "staging-db-canary-19c2";
const SLACK_SECRET: &str = "slack-canary-55e1";

impl Site {
    fn config(&self, production: &str, staging: &str, build: &str) -> String {
        format!(
            "[app]\nname = \"shop\"\n{build}\n\
             [environments.production]\n{production}\n\
             [environments.staging]\n{staging}\n"
        )
    }

    fn production(&self) -> String {
        format!(
            "branch = \"production\"\nhosts = {}\ndeploy_to = \"{}\"\nsecrets = [\"PROD_DATABASE_URL\"]\n",
            hosts(&self.cluster, &[0, 1]),
            self.cluster.deploy_to
        )
    }

    fn staging(&self) -> String {
        format!(
            "branch = \"staging\"\nhosts = {}\ndeploy_to = \"{}\"\nsecrets = [\"STAGING_DATABASE_URL\"]\n",
            hosts(&self.cluster, &[2]),
            self.cluster.deploy_to
        )
    }

    /// The live release of host `i`, if any.
    fn current(&self, i: usize) -> Option<String> {
        let root = self.cluster.roots[i].join(self.cluster.deploy_to.trim_start_matches('/'));
        std::fs::read_link(root.join("current"))
            .ok()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
    }

    fn release_file(&self, i: usize, name: &str) -> String {
        let root = self.cluster.roots[i].join(self.cluster.deploy_to.trim_start_matches('/'));
        std::fs::read_to_string(root.join("current").join(name)).unwrap_or_default()
    }

    fn push(&self, args: &[&str]) -> std::process::Output {
        self.server.push(&self.app, args, &self.server_known_hosts)
    }
}

fn hosts(cluster: &SshCluster, which: &[usize]) -> String {
    let specs: Vec<String> = which
        .iter()
        .map(|&i| format!("\"{}\"", cluster.hosts[i].spec("root")))
        .collect();
    format!("[{}]", specs.join(", "))
}

/// A git server over SSH whose pusher (alice) may push only `staging`, with
/// production and staging pinned from the owner's trusted config, and the
/// deploy key, known_hosts and secrets in the hook env file.
fn site() -> Site {
    let cluster = SshCluster::start(3);
    let key = std::fs::read_to_string(&cluster.keys.private).expect("key");
    let known = std::fs::read_to_string(&cluster.known_hosts).expect("known_hosts");
    let server = SshGitServer::start("alice", &[]);
    let key_path = server.private_file("deploy_key", &key);
    let known_path = server.private_file("known_hosts", &known);
    let server_known_hosts = cluster.path("git_known_hosts");
    std::fs::write(&server_known_hosts, server.sshd.known_hosts_line() + "\n").unwrap();
    let app = App::new("", &[("index.html", "v1\n")]);
    let site = Site {
        cluster,
        server,
        app,
        server_known_hosts,
    };
    let trusted = site.config(&site.production(), &site.staging(), "");
    site.app
        .commit("Configure slipway", &[("slipway.toml", &trusted)]);

    // The owner's side: settings and secrets in the 0600 env file, the
    // allow-list, and pins written from the config the owner trusts.
    site.app
        .slipway(&[
            "hook",
            "install",
            "--git-dir",
            site.server.git_dir.to_str().unwrap(),
            "--setenv",
            &format!("SLIPWAY_IDENTITY={}", key_path.display()),
            "--setenv",
            &format!("SLIPWAY_KNOWN_HOSTS={}", known_path.display()),
            "--setenv",
            &format!("PROD_DATABASE_URL={PROD_SECRET}"),
            "--setenv",
            &format!("STAGING_DATABASE_URL={STAGING_SECRET}"),
            "--setenv",
            &format!("SLACK_WEBHOOK_URL=http://127.0.0.1:9/{SLACK_SECRET}"),
        ])
        .success();
    std::fs::write(
        site.server.git_dir.join("slipway-allow.toml"),
        "[branches]\nproduction = [\"bob\"]\nstaging = [\"alice\", \"bob\"]\n",
    )
    .unwrap();
    let trusted_file = site.cluster.path("trusted.toml");
    std::fs::write(&trusted_file, &trusted).unwrap();
    site.app
        .slipway(&[
            "pins",
            "write",
            "--from",
            trusted_file.to_str().unwrap(),
            "--out",
            site.server
                .git_dir
                .join("slipway-pins.toml")
                .to_str()
                .unwrap(),
        ])
        .success()
        .contains("pinned 2 environment(s)");
    site.server.give_to_git_user();
    site
}

/// Before pins, a commit pushed to `staging` could say "production deploys
/// from staging", or point staging at production's hosts with production's
/// secrets, and post-receive deployed it there. Now pre-receive refuses it,
/// naming the key and the pinned value, and nothing moves.
#[test]
fn a_staging_pusher_cannot_reach_production_through_the_pushed_config() {
    let site = site();
    let out = site.push(&["production:staging"]);
    assert!(out.status.success(), "{}", text(&out));
    let staging_release = site.current(2).expect("a matching push deploys staging");
    assert!(site.current(0).is_none() && site.current(1).is_none());

    let attacks = [
        (
            "Deploy production from staging",
            site.config(
                &site.production().replace("branch = \"production\"", "branch = \"staging\""),
                &site.staging().replace("branch = \"staging\"", "branch = \"review\""),
                "",
            ),
            "pins `production` to branch `production`",
        ),
        (
            "Staging on production's hosts, with production's secret",
            site.config(
                &site.production(),
                &format!(
                    "branch = \"staging\"\nhosts = {}\ndeploy_to = \"{}\"\nsecrets = [\"PROD_DATABASE_URL\"]\ndeploy_hook = \"cat .slipway.env\"\n",
                    hosts(&site.cluster, &[0, 1]),
                    site.cluster.deploy_to
                ),
                "",
            ),
            "`environments.staging.hosts` is [",
        ),
        (
            "Staging asks for production's secret",
            site.config(
                &site.production(),
                &site.staging().replace("STAGING_DATABASE_URL", "PROD_DATABASE_URL"),
                "",
            ),
            "asks for [PROD_DATABASE_URL]",
        ),
    ];
    for (subject, config, says) in attacks {
        let before = site.server.branch("staging");
        site.app.commit(subject, &[("slipway.toml", &config)]);
        let out = site.push(&["production:staging"]);
        let seen = text(&out);
        assert!(!out.status.success(), "{subject}: pushed:\n{seen}");
        assert!(seen.contains(says), "{subject}: {says:?} missing:\n{seen}");
        assert!(
            seen.contains("slipway.toml:"),
            "names file and line:\n{seen}"
        );
        assert_eq!(
            site.server.branch("staging"),
            before,
            "{subject}: branch moved"
        );
        assert!(site.current(0).is_none() && site.current(1).is_none());
        assert_eq!(site.current(2).as_deref(), Some(staging_release.as_str()));
        assert!(!seen.contains(PROD_SECRET), "{seen}");
        site.app.git(&["reset", "-q", "--hard", "HEAD~1"]);
    }

    // A branch no pin names (main) that the pushed config maps to
    // production is refused too; alice cannot push production itself.
    let config = site.config(
        &site
            .production()
            .replace("branch = \"production\"", "branch = \"main\""),
        &site.staging(),
        "",
    );
    site.app
        .commit("Deploy production from main", &[("slipway.toml", &config)]);
    let out = site.push(&["production:main"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("pins `production` to branch `production`"),
        "{}",
        text(&out)
    );
    let out = site.push(&["production:production"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("alice may not push to this branch"),
        "{}",
        text(&out)
    );
    assert!(site.current(0).is_none() && site.current(1).is_none());
}

/// Build steps are untrusted code. Before the sandbox they ran as the git
/// user with the hook's whole environment: the deploy key, the agent, the
/// secrets, and write access to the allow-list, the hooks and the refs.
#[test]
fn a_build_step_sees_no_key_agent_or_secret_and_cannot_touch_the_server() {
    let site = site();
    let git_dir = site.server.git_dir.display().to_string();
    // A real agent, run by the git user, holding the deploy key; its socket
    // is given to the hooks like any other setting.
    let agent_sock = site.server.dir.path().join("agent.sock");
    let started = as_git_user(&format!(
        "ssh-agent -a {sock} > {dir}/agent.env && . {dir}/agent.env >/dev/null && ssh-add {dir}/deploy_key 2>/dev/null",
        sock = agent_sock.display(),
        dir = site.server.dir.path().display()
    ));
    assert!(started.status.success(), "{}", text(&started));
    let env_file = site.server.git_dir.join("slipway/hook.env");
    let mut env = std::fs::read_to_string(&env_file).unwrap();
    env.push_str(&format!("SSH_AUTH_SOCK={}\n", agent_sock.display()));
    std::fs::write(&env_file, env).unwrap();
    site.server.give_to_git_user();

    let allow_before =
        std::fs::read_to_string(site.server.git_dir.join("slipway-allow.toml")).unwrap();
    let hook_before =
        std::fs::read_to_string(site.server.git_dir.join("hooks/post-receive")).unwrap();
    let production_before = site.server.branch("production");
    let probe = format!(
        "mkdir -p probe; \
         env > probe/env.txt; \
         cat /proc/[0-9]*/environ > probe/proc-environ.txt 2>/dev/null; \
         cat {dir}/deploy_key > probe/key.txt 2>&1; \
         cat {git}/slipway/hook.env > probe/hook-env.txt 2>&1; \
         SSH_AUTH_SOCK={sock} ssh-add -l > probe/agent.txt 2>&1; echo \"agent exit $?\" >> probe/agent.txt; \
         echo 'alice = [\"production\"]' >> {git}/slipway-allow.toml 2> probe/allow.txt; \
         echo 'curl evil' >> {git}/hooks/post-receive 2> probe/hooks.txt; \
         git --git-dir={git} update-ref refs/heads/production refs/heads/staging > probe/ref.txt 2>&1; \
         ls {git} > probe/ls-git.txt 2>&1; \
         echo done > probe/done.txt",
        dir = site.server.dir.path().display(),
        git = git_dir,
        sock = agent_sock.display(),
    );
    let build = format!(
        "[build]\nsteps = [{{ name = \"probe\", run = {} }}]\n",
        toml_string(&probe)
    );
    let config = site.config(&site.production(), &site.staging(), &build);
    site.app
        .commit("Probe the build sandbox", &[("slipway.toml", &config)]);
    let out = site.push(&["production:staging"]);
    let seen = text(&out);
    assert!(out.status.success(), "{seen}");
    assert!(site.current(2).is_some(), "staging deployed:\n{seen}");

    let file = |name: &str| site.release_file(2, &format!("probe/{name}"));
    assert_eq!(file("done.txt"), "done\n", "the probe ran to its end");
    for name in [
        "env.txt",
        "proc-environ.txt",
        "key.txt",
        "hook-env.txt",
        "ls-git.txt",
    ] {
        let content = file(name);
        for secret in [
            PROD_SECRET,
            STAGING_SECRET,
            SLACK_SECRET,
            "PRIVATE KEY",
            "SLIPWAY_IDENTITY",
        ] {
            assert!(
                !content.contains(secret),
                "{name} leaks {secret}:\n{content}"
            );
        }
    }
    let env_names: Vec<&str> = Box::leak(file("env.txt").into_boxed_str())
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    assert!(
        env_names.iter().all(|k| [
            "PATH",
            "HOME",
            "LANG",
            "PWD",
            "SHLVL",
            "_",
            "SOURCE_DATE_EPOCH",
            "SLIPWAY_APP",
            "SLIPWAY_COMMIT",
            "SLIPWAY_BRANCH",
            "SLIPWAY_RELEASE"
        ]
        .contains(k)),
        "only public variables reach a build step: {env_names:?}"
    );
    assert!(
        file("agent.txt").contains("agent exit 2"),
        "no agent: {}",
        file("agent.txt")
    );
    // Nothing of the server changed.
    assert_eq!(
        std::fs::read_to_string(site.server.git_dir.join("slipway-allow.toml")).unwrap(),
        allow_before
    );
    assert_eq!(
        std::fs::read_to_string(site.server.git_dir.join("hooks/post-receive")).unwrap(),
        hook_before
    );
    assert_eq!(site.server.branch("production"), production_before);
    let _ = as_git_user(&format!(
        "SSH_AUTH_SOCK={} ssh-agent -k",
        agent_sock.display()
    ));
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `hook install --setenv SECRET=…` used to write the value into hook
/// scripts of mode 755. Now the scripts hold no value, the env file is
/// 0600, and the secret still reaches the deploy.
#[test]
fn hook_secrets_live_in_a_private_env_file_not_in_the_hook_scripts() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 1);
    let config = hosts.production_config("secrets = [\"DATABASE_URL\"]\n");
    app.commit("Configure", &[("slipway.toml", &config)]);
    let server = GitServer::new(&app);
    app.slipway(&[
        "hook",
        "install",
        "--git-dir",
        server.git_dir.to_str().unwrap(),
        "--setenv",
        "DATABASE_URL=postgres://u:hunter2@db/shop",
    ])
    .success();
    for hook in ["post-receive", "pre-receive"] {
        let script = std::fs::read_to_string(server.git_dir.join("hooks").join(hook)).unwrap();
        assert!(
            !script.contains("hunter2"),
            "{hook} holds the secret:\n{script}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let env_file = server.git_dir.join("slipway/hook.env");
    let mode = std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let out = push(&app, "alice", &["origin", "production"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("hunter2"));
    let release = hosts.current(0).expect("deployed");
    let env = std::fs::read_to_string(
        hosts.roots[0]
            .join(hosts.deploy_to.trim_start_matches('/'))
            .join("releases")
            .join(&release)
            .join(".slipway.env"),
    )
    .unwrap();
    assert!(
        env.contains("hunter2"),
        "the secret reached the host: {env}"
    );

    // A file others can read is refused, loudly, and nothing deploys.
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    app.commit("Again", &[("index.html", "v2\n")]);
    let out = push(&app, "alice", &["origin", "production"], &[]);
    assert!(text(&out).contains("chmod 600"), "{}", text(&out));
    assert_eq!(hosts.current(0), Some(release));
}

/// A server whose owner wrote no pins is not open: a branch deploys at most
/// the environment of its own name, whatever the pushed config maps.
#[test]
fn without_pins_a_branch_deploys_only_its_namesake_environment() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 1);
    let config = format!(
        "[app]\nname = \"shop\"\n[environments.production]\nbranch = \"main\"\nhosts = {}\ndeploy_to = \"{}\"\n",
        hosts.toml(),
        hosts.deploy_to
    );
    app.commit("Production from main", &[("slipway.toml", &config)]);
    let _server = GitServer::new(&app);
    let out = push(&app, "alice", &["origin", "production:main"], &[]);
    let seen = text(&out);
    assert!(seen.contains("needs a pin"), "{seen}");
    assert!(seen.contains("REFUSED, nothing deployed"), "{seen}");
    assert!(hosts.current(0).is_none(), "production untouched");
}

/// The operator's CLI obeys the same pins when given `--pins`: the branch
/// comes from the pin (not HEAD's config), and a config that disagrees is
/// refused before anything is built or touched.
#[test]
fn the_cli_with_pins_takes_the_branch_from_the_pin_and_refuses_a_mismatch() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 2);
    let config = |hosts_toml: &str, branch: &str| {
        format!(
            "[app]\nname = \"shop\"\n[environments.production]\nbranch = \"{branch}\"\nhosts = {hosts_toml}\ndeploy_to = \"{}\"\n",
            hosts.deploy_to
        )
    };
    app.commit(
        "Configure",
        &[("slipway.toml", &config(&hosts.toml(), "production"))],
    );
    let trusted = app.scratch("trusted.toml");
    let trusted = trusted.join("slipway.toml");
    std::fs::write(&trusted, config(&hosts.toml(), "production")).unwrap();
    let pins = app.scratch("pins").join("pins.toml");
    app.slipway(&[
        "pins",
        "write",
        "--from",
        trusted.to_str().unwrap(),
        "--out",
        pins.to_str().unwrap(),
    ])
    .success();

    // HEAD (on another branch) maps production to itself: ignored, the pin
    // says production deploys from `production`.
    app.git(&["checkout", "-q", "-b", "feature"]);
    app.commit(
        "Feature",
        &[
            ("slipway.toml", &config(&hosts.toml(), "feature")),
            ("index.html", "feature\n"),
        ],
    );
    app.slipway(&["--pins", pins.to_str().unwrap(), "deploy", "production"])
        .success();
    let release = hosts.current(0).expect("deployed");
    let live = std::fs::read_to_string(
        hosts.roots[0]
            .join(hosts.deploy_to.trim_start_matches('/'))
            .join("current/index.html"),
    )
    .unwrap();
    assert_eq!(
        live, "v1\n",
        "the pinned branch's commit went out, not HEAD"
    );

    app.git(&["checkout", "-q", "production"]);
    let one = format!("[\"local:{}\"]", hosts.roots[0].display());
    app.commit(
        "Drop a host",
        &[("slipway.toml", &config(&one, "production"))],
    );
    app.slipway(&["--pins", pins.to_str().unwrap(), "deploy", "production"])
        .failure(2)
        .contains("pins `production` to hosts [");
    assert_eq!(hosts.current(0), Some(release));
}

/// A git server where bubblewrap cannot run refuses to run pushed build
/// steps at all, unless its owner accepts the risk in the pin file.
#[test]
fn a_git_server_without_bwrap_refuses_build_steps_unless_the_owner_allows_it() {
    let app = App::new("", &[("index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 1);
    let config = hosts.production_config(
        "[build]\nsteps = [{ name = \"touch\", run = \"echo built > built.txt\" }]\n",
    );
    app.commit("With a build step", &[("slipway.toml", &config)]);
    let server = GitServer::new(&app);
    // A PATH with every usual tool but bwrap, given to the hooks.
    let bin = app.scratch("bin-without-bwrap");
    for dir in ["/usr/local/bin", "/usr/bin", "/bin"] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name != "bwrap" && !bin.join(&name).exists() {
                let _ = std::os::unix::fs::symlink(entry.path(), bin.join(&name));
            }
        }
    }
    app.slipway(&[
        "hook",
        "install",
        "--git-dir",
        server.git_dir.to_str().unwrap(),
        "--setenv",
        &format!("PATH={}", bin.display()),
    ])
    .success();
    let out = push(&app, "alice", &["origin", "production"], &[]);
    let seen = text(&out);
    assert!(
        seen.contains("run only inside a bubblewrap sandbox"),
        "{seen}"
    );
    assert!(hosts.current(0).is_none(), "nothing deployed");

    std::fs::write(
        server.git_dir.join("slipway-pins.toml"),
        format!(
            "[build]\nsandbox = \"none\"\n\n[environments.production]\nbranch = \"production\"\nhosts = {}\ndeploy_to = \"{}\"\n",
            hosts.toml(),
            hosts.deploy_to
        ),
    )
    .unwrap();
    app.commit("Again", &[("index.html", "v2\n")]);
    let out = push(&app, "alice", &["origin", "production"], &[]);
    let seen = text(&out);
    assert!(out.status.success(), "{seen}");
    assert!(seen.contains("build steps run without a sandbox"), "{seen}");
    assert!(hosts.current(0).is_some(), "{seen}");
}
