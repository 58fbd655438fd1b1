//! Releases shipped as Debian packages (`artifact = "deb"`): the package
//! itself (dpkg-deb, lintian, reproducibility) and the gated rollout to
//! three `local:` hosts, each with its own dpkg database under its folder,
//! so the machine's package database is never touched.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{App, LocalHosts};

const DEPLOY_TO: &str = "/srv/shop";

/// Fails if the postinst finds `$DPKG_ROOT/fail-postinst`, so a test can
/// break the install on one host only; otherwise leaves a line per install.
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ -e "$DPKG_ROOT/fail-postinst" ]; then
  echo "postinst exploded on purpose" >&2
  exit 1
fi
echo "$1 $DPKG_MAINTSCRIPT_PACKAGE" >> "$DPKG_ROOT/srv/shop/shared/postinst.log"
"#;

fn config(hosts: &str, artifact: &str) -> String {
    format!(
        r#"[app]
name = "shop"
artifact = "{artifact}"
keep_releases = 2

[build]
steps = [{{ name = "stamp", run = "printf '%s\n' \"$SLIPWAY_RELEASE\" > version.txt" }}]
# Maintainer scripts go into the control archive, not the release.
exclude = ["/debian"]

[deb]
maintainer = "Shop Team <shop@example.org>"
depends = ["python3 (>= 3.9)"]
conffiles = ["config/app.ini"]
scripts = {{ postinst = "debian/postinst" }}
# The hosts' own dpkg databases are empty: python3 is not "installed".
dpkg_args = ["--force-not-root", "--force-depends"]

[environments.production]
branch = "production"
hosts = {hosts}
deploy_to = "{DEPLOY_TO}"
"#
    )
}

fn app_with_hosts(artifact: &str) -> (App, LocalHosts) {
    need_tool("dpkg-deb", "dpkg");
    let app = App::new(
        "",
        &[
            ("public/index.html", "v1\n"),
            ("config/app.ini", "answer = 42\n"),
            ("debian/postinst", POSTINST),
        ],
    );
    let mut hosts = LocalHosts::new(&app, 3);
    hosts.deploy_to = DEPLOY_TO.to_owned();
    app.commit(
        "Configure slipway",
        &[("slipway.toml", &config(&hosts.toml(), artifact))],
    );
    (app, hosts)
}

/// Makes sure `tool` is there, installing `package` if it is not; a test
/// never skips for want of a tool.
fn need_tool(tool: &str, package: &str) {
    let found = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if found(tool) {
        return;
    }
    let sudo = if Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
    {
        ""
    } else {
        "sudo "
    };
    let _ = Command::new("sh")
        .args([
            "-c",
            &format!(
                "{sudo}apt-get update -qq && DEBIAN_FRONTEND=noninteractive {sudo}apt-get install -y -qq --no-install-recommends {package}"
            ),
        ])
        .status();
    assert!(
        found(tool),
        "`{tool}` is missing and installing the `{package}` package failed; install it (apt-get install {package})"
    );
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("command runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The one `.deb` in `dir`.
fn the_deb(dir: &Path) -> PathBuf {
    let debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("out dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    debs[0].clone()
}

/// The packages installed in the dpkg database at `admindir`, sorted.
fn installed(admindir: &Path) -> Vec<String> {
    let (ok, text) = run(Command::new("dpkg-query")
        .arg(format!("--admindir={}", admindir.display()))
        .args(["-W", "-f", "${Package} ${Status}\n"]));
    assert!(ok, "dpkg-query in {}: {text}", admindir.display());
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.ends_with(" install ok installed"))
        .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
        .collect();
    lines.sort();
    lines
}

fn package(release: &str) -> String {
    format!("shop-release-{}", release.to_ascii_lowercase())
}

/// Neither the machine's package database nor its dpkg log knows any
/// release package: every install went to a host's own root.
fn machine_untouched() {
    let (_, text) = run(Command::new("dpkg-query").args(["-W", "shop-release-*"]));
    assert!(
        !text.lines().any(|l| l.starts_with("shop-release-")),
        "the machine's dpkg database lists a release package:\n{text}"
    );
    let log = std::fs::read_to_string("/var/log/dpkg.log").unwrap_or_default();
    assert!(
        !log.contains("shop-release-"),
        "the machine's dpkg log mentions a release package"
    );
}

#[test]
fn the_package_passes_dpkg_deb_and_lintian_and_builds_to_the_same_bytes() {
    need_tool("lintian", "lintian");
    let (app, _hosts) = app_with_hosts("tar.gz");
    let (a, b) = (app.scratch("out-a"), app.scratch("out-b"));
    for out in [&a, &b] {
        app.slipway(&["build", "--format", "deb", "--out", out.to_str().unwrap()])
            .success();
    }
    let (deb_a, deb_b) = (the_deb(&a), the_deb(&b));
    assert_eq!(
        std::fs::read(&deb_a).unwrap(),
        std::fs::read(&deb_b).unwrap(),
        "building twice gives the same bytes"
    );

    let (ok, info) = run(Command::new("dpkg-deb").arg("--info").arg(&deb_a));
    assert!(ok, "{info}");
    for field in [
        "Package: shop-release-",
        "Version: ",
        "Architecture: all",
        "Maintainer: Shop Team <shop@example.org>",
        "Depends: python3 (>= 3.9)",
        "Installed-Size: ",
        " postinst",
        " conffiles",
        " md5sums",
    ] {
        assert!(info.contains(field), "no {field:?} in:\n{info}");
    }
    let (ok, contents) = run(Command::new("dpkg-deb").arg("--contents").arg(&deb_a));
    assert!(ok, "{contents}");
    let release_line = contents
        .lines()
        .find(|l| l.ends_with("/version.txt"))
        .unwrap_or_else(|| panic!("no version.txt in:\n{contents}"));
    assert!(release_line.starts_with("-rw-r--r-- 0/0"), "{release_line}");
    assert!(
        release_line.contains(" srv/shop/releases/")
            || release_line.contains(" ./srv/shop/releases/"),
        "{release_line}"
    );
    assert!(contents.contains("config/app.ini"));

    let (_, lint) = run(Command::new("lintian").arg("--no-cfg").arg(&deb_a));
    let errors: Vec<&str> = lint.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{lint}");
    eprintln!("lintian says:\n{lint}");
}

#[test]
fn a_gated_rollout_of_packages_installs_rolls_back_and_purges() {
    let (app, hosts) = app_with_hosts("deb");
    app.slipway(&["deploy", "production"]).success();
    let first = hosts.current(0).expect("a release");
    app.commit("Second", &[("public/index.html", "v2\n")]);
    app.slipway(&["deploy", "production"]).success();
    let second = hosts.current(0).expect("a release");
    assert_ne!(first, second);
    for i in 0..3 {
        assert_eq!(
            hosts.current(i).as_deref(),
            Some(second.as_str()),
            "host {i}"
        );
        assert_eq!(
            hosts.read(i, "current/public/index.html").as_deref(),
            Some("v2\n")
        );
        assert_eq!(hosts.read(i, "current/version.txt").unwrap().trim(), second);
        // `installed` is sorted by name; two commits in the same second
        // order by hash, not by time.
        let mut both = vec![package(&first), package(&second)];
        both.sort();
        assert_eq!(installed(&hosts.roots[i].join("var/lib/dpkg")), both);
        let log = hosts.read(i, "shared/postinst.log").unwrap_or_default();
        assert!(
            log.contains(&format!("configure {}", package(&second))),
            "the postinst ran on host {i}: {log}"
        );
        assert!(!hosts.is_closed(i));
        assert!(
            !hosts
                .root(i)
                .join(".slipway/incoming")
                .read_dir()
                .unwrap()
                .any(|_| true)
        );
    }

    app.slipway(&["rollback", "production"])
        .success()
        .contains(&format!("rolled back to {first}"));
    for i in 0..3 {
        assert_eq!(
            hosts.current(i).as_deref(),
            Some(first.as_str()),
            "host {i}"
        );
        assert_eq!(
            hosts.read(i, "current/public/index.html").as_deref(),
            Some("v1\n")
        );
    }

    // Two more releases with keep_releases = 2: the ones neither kept nor
    // live nor the rollback target are purged from dpkg and removed.
    let mut ids = vec![first.clone(), second.clone()];
    for n in 3..=4 {
        app.commit(
            &format!("Release {n}"),
            &[("public/index.html", &format!("v{n}\n"))],
        );
        app.slipway(&["deploy", "production"]).success();
        ids.push(hosts.current(0).unwrap());
    }
    for i in 0..3 {
        let releases = hosts.releases(i);
        let mut expected: Vec<String> = releases.iter().map(|r| package(r)).collect();
        expected.sort();
        assert_eq!(
            installed(&hosts.roots[i].join("var/lib/dpkg")),
            expected,
            "one package per release dir on host {i}"
        );
        assert!(releases.contains(&ids[3]) && releases.contains(&ids[2]));
        assert!(
            releases.len() < ids.len(),
            "something was pruned on host {i}: {releases:?}"
        );
        let pruned: Vec<&String> = ids.iter().filter(|id| !releases.contains(id)).collect();
        for id in pruned {
            assert!(
                !installed(&hosts.roots[i].join("var/lib/dpkg")).contains(&package(id)),
                "{id} was purged"
            );
        }
    }
    machine_untouched();
}

#[test]
fn a_failing_postinst_on_one_host_fails_staging_and_never_closes() {
    let (app, hosts) = app_with_hosts("deb");
    app.slipway(&["deploy", "production"]).success();
    let before = hosts.current(0).expect("a release");
    std::fs::write(hosts.roots[1].join("fail-postinst"), "").unwrap();
    app.commit("Second", &[("public/index.html", "v2\n")]);
    let run = app.slipway(&["deploy", "production"]).failure(1);
    let text = run.text();
    assert!(text.contains("postinst exploded on purpose"), "{text}");
    assert!(text.contains("nothing was switched"), "{text}");
    let failed = hosts.roots[1]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(text.contains(&failed), "the failing host is named: {text}");
    for i in 0..3 {
        assert_eq!(
            hosts.current(i).as_deref(),
            Some(before.as_str()),
            "host {i}"
        );
        assert!(!hosts.is_closed(i), "host {i} never closed");
        let history = hosts.history(i);
        assert_eq!(history.len(), 1, "no rollout was recorded on host {i}");
        assert_eq!(history[0]["outcome"], "success");
        assert!(!hosts.root(i).join(".slipway/journal.json").exists());
        assert!(!hosts.root(i).join(".slipway/lock").exists());
    }
    // The failed package was purged again: no half release to switch to.
    assert_eq!(
        installed(&hosts.roots[1].join("var/lib/dpkg")),
        [package(&before)]
    );
    assert_eq!(hosts.releases(1), std::slice::from_ref(&before));
    machine_untouched();
}

/// The same rollout to three real sshd hosts. Each host's dpkg database is
/// an admindir inside its deploy root (the harness gives every sshd its own
/// folder behind the shared `deploy_to`), so the machine's package database
/// is never touched. (The package's /usr/share/doc files do land on the
/// machine, which the three "hosts" share outside `deploy_to`; the test
/// removes them.)
#[test]
fn over_ssh_packages_install_into_each_hosts_own_dpkg_database_and_roll_back() {
    use crate::support::run::run_over_ssh;
    use crate::support::sshd::SshCluster;
    need_tool("dpkg-deb", "dpkg");
    let cluster = SshCluster::start(3);
    let deploy_to = cluster.deploy_to.clone();
    let app = App::new(
        "",
        &[
            ("public/index.html", "v1\n"),
            ("config/app.ini", "answer = 42\n"),
            ("debian/postinst", "#!/bin/sh\nexit 0\n"),
        ],
    );
    let text = config(&cluster.hosts_toml(), "deb")
        .replace(&format!("deploy_to = \"{DEPLOY_TO}\""), &format!("deploy_to = \"{deploy_to}\""))
        .replace(
            "dpkg_args = [\"--force-not-root\", \"--force-depends\"]",
            &format!("dpkg_args = [\"--admindir={deploy_to}/.dpkg\", \"--log={deploy_to}/.dpkg.log\", \"--force-depends\"]"),
        );
    assert!(text.contains(".dpkg\""), "the dpkg options were replaced");
    app.commit("Configure slipway", &[("slipway.toml", &text)]);
    let hosts = LocalHosts {
        roots: cluster.roots.clone(),
        deploy_to: deploy_to.clone(),
    };
    for i in 0..3 {
        let admin = hosts.root(i).join(".dpkg");
        for dir in ["info", "updates", "triggers"] {
            std::fs::create_dir_all(admin.join(dir)).unwrap();
        }
        std::fs::write(admin.join("status"), "").unwrap();
    }
    let deploy = |args: &[&str]| run_over_ssh(app.path(), &cluster, args);
    let listed = |i: usize| installed(&hosts.root(i).join(".dpkg"));
    deploy(&["deploy", "production"]).success();
    let first = hosts.current(0).expect("a release");
    app.commit("Second", &[("public/index.html", "v2\n")]);
    deploy(&["deploy", "production"]).success();
    let second = hosts.current(0).expect("a release");
    let mut both = vec![package(&first), package(&second)];
    both.sort();
    for i in 0..3 {
        assert_eq!(
            hosts.current(i).as_deref(),
            Some(second.as_str()),
            "host {i}"
        );
        assert_eq!(
            hosts.read(i, "current/public/index.html").as_deref(),
            Some("v2\n")
        );
        assert_eq!(
            listed(i),
            both,
            "host {i}'s own dpkg database lists both releases"
        );
    }
    deploy(&["rollback", "production"]).success();
    assert!((0..3).all(|i| hosts.current(i).as_deref() == Some(first.as_str())));
    let machine = std::fs::read_to_string("/var/lib/dpkg/status").unwrap_or_default();
    assert!(
        !machine.contains("shop-release-"),
        "the machine's dpkg database was touched"
    );
    for id in [&first, &second] {
        let _ = std::fs::remove_dir_all(format!("/usr/share/doc/{}", package(id)));
    }
}

/// A `.deb` built with no `[deb]` settings at all is what most users ship:
/// it used to name `root@localhost` as maintainer (3 lintian errors), to
/// carry the release id twice in a file name longer than lintian allows,
/// and to describe itself as "branch HEAD".
#[test]
fn a_default_package_is_lintian_clean_and_names_its_committer_and_branch() {
    need_tool("lintian", "lintian");
    let app = App::new(
        r#"[app]
name = "storefront"
artifact = "deb"

[environments.production]
branch = "production"
hosts = ["local:/nowhere"]
deploy_to = "/srv/storefront"
"#,
        &[("public/index.html", "v1\n")],
    );
    // A detached HEAD, as CI checks out a commit: the package still names
    // the environment's branch.
    app.git(&["checkout", "-q", "--detach"]);
    let out = app.scratch("out");
    app.slipway(&["build", "--out", out.to_str().unwrap()])
        .success();
    let deb = the_deb(&out);
    let file_name = deb.file_name().unwrap().to_str().unwrap().to_owned();
    let release = hosts_release_of(&file_name);
    assert_eq!(
        file_name,
        format!("storefront-release-{release}_all.deb"),
        "the release id appears once"
    );

    let (ok, info) = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(ok, "{info}");
    assert!(
        info.contains("Maintainer: Test <test@example.invalid>"),
        "the committer maintains the package:\n{info}"
    );
    assert!(info.contains("of branch production."), "{info}");
    assert!(!info.contains("HEAD"), "{info}");

    let (_, lint) = run(Command::new("lintian").arg("--no-cfg").arg(&deb));
    let complaints: Vec<&str> = lint
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(complaints.is_empty(), "lintian:\n{lint}");
}

/// The release id in a default package's file name, lowercased.
fn hosts_release_of(file_name: &str) -> String {
    file_name
        .trim_start_matches("storefront-release-")
        .trim_end_matches("_all.deb")
        .to_owned()
}

/// `deploy --artifact` with a package built earlier (say by CI) deploys
/// that very package, after checking it is the build of the commit being
/// deployed, exactly as with a tarball; one from another commit is refused
/// before any host is touched.
#[test]
fn a_prebuilt_package_deploys_with_artifact_and_a_stale_one_is_refused() {
    let (app, hosts) = app_with_hosts("deb");
    let old = app.scratch("old");
    app.slipway(&["build", "--out", old.to_str().unwrap()])
        .success();
    let stale = the_deb(&old);
    app.commit("Second", &[("public/index.html", "v2\n")]);

    app.slipway(&[
        "deploy",
        "production",
        "--artifact",
        stale.to_str().unwrap(),
    ])
    .failure(1)
    .contains("build it again from the commit you deploy");
    for i in 0..3 {
        assert_eq!(hosts.current(i), None, "nothing deployed on host {i}");
    }

    let out = app.scratch("new");
    app.slipway(&["build", "--out", out.to_str().unwrap()])
        .success();
    let deb = the_deb(&out);
    app.slipway(&["deploy", "production", "--artifact", deb.to_str().unwrap()])
        .success();
    let release = hosts.current(0).expect("a release");
    for i in 0..3 {
        assert_eq!(hosts.current(i).as_deref(), Some(release.as_str()));
        assert_eq!(
            hosts.read(i, "current/public/index.html").as_deref(),
            Some("v2\n")
        );
        assert_eq!(
            installed(&hosts.roots[i].join("var/lib/dpkg")),
            [package(&release)]
        );
    }
    machine_untouched();
}

/// dpkg installs a package as root wherever its entries say. A prebuilt
/// `.deb` that also drops a file outside its release directory (here a
/// cron job), with the release tree and manifest left intact, is refused
/// before any host is touched.
#[test]
fn a_prebuilt_package_that_installs_outside_its_release_is_refused() {
    let (app, hosts) = app_with_hosts("deb");
    let out = app.scratch("out");
    app.slipway(&["build", "--out", out.to_str().unwrap()])
        .success();
    let deb = the_deb(&out);
    let tree = app.scratch("tree");
    let (ok, text) = run(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&tree));
    assert!(ok, "{text}");
    std::fs::create_dir_all(tree.join("etc/cron.d")).unwrap();
    std::fs::write(
        tree.join("etc/cron.d/backdoor"),
        "* * * * * root sh -c id\n",
    )
    .unwrap();
    let evil = app.scratch("evil").join(deb.file_name().unwrap());
    let (ok, text) = run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "-b"])
        .arg(&tree)
        .arg(&evil));
    assert!(ok, "{text}");

    app.slipway(&["deploy", "production", "--artifact", evil.to_str().unwrap()])
        .failure(1)
        .contains("`./etc/`")
        .contains("installs outside the release directory");
    for i in 0..3 {
        assert_eq!(hosts.current(i), None, "nothing deployed on host {i}");
        assert!(
            !hosts.root(i).join("etc/cron.d/backdoor").exists(),
            "host {i}"
        );
    }
}
