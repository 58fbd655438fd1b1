//! Nothing left behind, and no time wasted on a host already lost: a full
//! disk stays as it was before the failed deploy, and a frozen host is
//! declared lost once, within the connect timeout plus one keepalive.
//! Over real sshd (each host its own mount namespace).

use crate::support::App;
use crate::support::run::{Run, run_over_ssh};
use crate::support::sshd::SshCluster;

fn config(cluster: &SshCluster) -> String {
    format!(
        r#"[app]
name = "shop"

[environments.production]
branch = "production"
hosts = {hosts}
deploy_to = "{deploy_to}"
"#,
        hosts = cluster.hosts_toml(),
        deploy_to = cluster.deploy_to,
    )
}

/// What the host with the small disk holds: its used KiB and every path
/// under its deploy root.
fn disk(cluster: &SshCluster, i: usize) -> (String, String) {
    let root = &cluster.deploy_to;
    let used = cluster.hosts[i].inside(&format!("df -Pk '{root}' | awk 'NR==2 {{print $3}}'"));
    let tree = cluster.hosts[i].inside(&format!("cd '{root}' && find . | sort"));
    (used.trim().to_owned(), tree)
}

#[test]
fn a_disk_that_fills_during_unpack_is_left_as_it_was_and_the_next_deploy_with_room_succeeds() {
    // Host 3's deploy root is an 8 MiB disk. A release that packs small but
    // unpacks to 24 MiB fills it half way through unpacking; before, the
    // upload and the half-unpacked release stayed, so the disk stayed full
    // and every later deploy failed on it too.
    let cluster = SshCluster::start_with_small_disk(3, Some((2, "8m")));
    let app = App::new(&config(&cluster), &[("public/index.html", "v1\n")]);
    let deploy = |app: &App| -> Run { run_over_ssh(app.path(), &cluster, &["deploy", "production"]) };
    deploy(&app).success();
    let before = disk(&cluster, 2);

    let big = "0".repeat(24 * 1024 * 1024);
    app.commit("A big asset", &[("public/big.bin", &big)]);
    let small_disk = cluster.hosts[2].spec("root");
    let run = deploy(&app)
        .failure(1)
        .contains(&small_disk)
        .contains("No space left on device");
    assert_eq!(disk(&cluster, 2), before, "left behind:\n{}", run.text());

    app.git(&["rm", "-q", "public/big.bin"]);
    app.commit("Drop the big asset", &[("public/index.html", "v3\n")]);
    deploy(&app).success();
    let index = cluster.hosts[2].inside(&format!(
        "cat '{}/current/public/index.html'",
        cluster.deploy_to
    ));
    assert_eq!(index, "v3\n");
}
