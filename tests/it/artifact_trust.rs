//! `deploy --artifact F` against hostile archives: whatever reaches a host
//! is exactly what slipway checked. Each archive is written byte by byte
//! (`support/hostile_tar.rs`) so that slipway's reader (the `tar` crate
//! over flate2) and GNU tar on the host would read it differently; hosts
//! are `local:` folders whose scripts run through `sh` with the real GNU
//! tar, and one story runs over a real sshd.
//!
//! Every refusal here is exit 1 ("failed before changing anything") and
//! happens before any host is touched: the deploy root is never created
//! and a file outside every release keeps its content.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::hostile_tar::{Header, Seen, Tar, gzip, gzip_bomb, manifest};
use crate::support::run::Run;
use crate::support::sshd::SshCluster;
use crate::support::{App, LocalHosts};

const SECRET: &str = "hunter2-db-password";
const UNTOUCHED: &str = "untouched\n";

fn config(hosts: &str, deploy_to: &str, extra: &str) -> String {
    format!(
        r#"[app]
name = "shop"

[environments.production]
branch = "production"
hosts = {hosts}
deploy_to = "{deploy_to}"
secrets = ["DB_PASSWORD"]
{extra}
"#
    )
}

/// A shop app on one `local:` host, with a victim file beside the host's
/// deploy root that no deploy may ever write.
struct Story {
    app: App,
    hosts: LocalHosts,
}

impl Story {
    fn new(extra: &str) -> Self {
        let app = App::new("", &[("public/index.html", "v1\n")]);
        let hosts = LocalHosts::new(&app, 1);
        app.commit(
            "Configure slipway",
            &[(
                "slipway.toml",
                &config(&hosts.toml(), &hosts.deploy_to, extra),
            )],
        );
        std::fs::write(hosts.roots[0].join("victim.txt"), UNTOUCHED).unwrap();
        Self { app, hosts }
    }

    fn victim(&self) -> PathBuf {
        self.hosts.roots[0].join("victim.txt")
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.app.scratch("artifacts").join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn deploy(&self, artifact: &Path) -> Run {
        self.app.slipway_env(
            &[
                "deploy",
                "production",
                "--artifact",
                artifact.to_str().unwrap(),
            ],
            &[("DB_PASSWORD", SECRET)],
        )
    }

    /// `slipway build --sign key` of HEAD; the path of the built tar.gz
    /// (its signature lies beside it).
    fn build_signed(&self, key: &Path) -> PathBuf {
        let out = self.app.scratch("out");
        self.app
            .slipway(&[
                "build",
                "--out",
                out.to_str().unwrap(),
                "--sign",
                key.to_str().unwrap(),
            ])
            .success()
            .contains("signed:");
        std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
            .expect("the build wrote a tar.gz")
    }

    /// Refused before any host was touched, and nothing outside changed.
    #[track_caller]
    fn assert_refused_untouched(&self, run: Run, reason: &str) {
        run.failure(1).contains(reason).lacks(SECRET);
        assert!(
            !self.hosts.root(0).exists(),
            "no host was touched: {} exists",
            self.hosts.root(0).display()
        );
        assert_eq!(std::fs::read_to_string(self.victim()).unwrap(), UNTOUCHED);
    }
}

/// What GNU tar would unpack if it ever saw it: every entry the issue
/// lists, aimed at the victim file outside the release.
fn hostile_payload(tar: &mut Tar, victim: &Path) {
    let victim = victim.to_str().unwrap();
    tar.file("suid-root", 0o4755, b"#!/bin/sh\nid\n")
        .char_device("null-dev", 1, 3)
        .fifo("pipe")
        .hardlink("index-link", "public/index.html")
        .symlink("public-etc", "/etc")
        .symlink("escape", "../../../../victim.txt")
        .symlink(".slipway.env", victim)
        .symlink(".slipway.env.new", victim)
        .end();
}

/// The manifest entry and a plain `public/index.html`, as checkers see them.
fn honest_start(commit: &str, extra: &[Seen<'_>]) -> Tar {
    let mut seen = vec![
        Seen::Dir("public"),
        Seen::File("public/index.html", 0o644, b"v1\n"),
    ];
    seen.extend(extra.iter().map(|s| match s {
        Seen::Dir(p) => Seen::Dir(p),
        Seen::File(p, m, d) => Seen::File(p, *m, d),
        Seen::Symlink(p, t) => Seen::Symlink(p, t),
    }));
    let mut tar = Tar::new();
    tar.file(
        ".slipway-manifest.json",
        0o644,
        manifest(commit, &seen).as_bytes(),
    )
    .dir("public")
    .file("public/index.html", 0o644, b"v1\n");
    tar
}

#[test]
fn a_second_gzip_member_never_reaches_a_host() {
    // flate2's GzDecoder stops after one member; gzip (and so GNU tar)
    // reads on. The first member is a clean release without an end
    // marker, the second carries setuid, device, fifo, hard link, links out
    // and the env file through a symlink.
    let story = Story::new("");
    let mut first = honest_start(&story.app.head(), &[]);
    let mut second = Tar::new();
    hostile_payload(&mut second, &story.victim());
    let mut bytes = gzip(&first.take());
    bytes.extend(gzip(&second.take()));
    let evil = story.write("two-members.tar.gz", &bytes);

    story.assert_refused_untouched(story.deploy(&evil), "data after its first gzip member");
}

#[test]
fn a_pax_linkpath_disagreeing_with_a_gnu_long_link_is_refused() {
    // The tar crate takes the GNU `K` record (`public`), GNU tar the PAX
    // `linkpath` (`/etc`): checked as harmless, unpacked as `public-etc ->
    // /etc`. Same for the env file's temp name, pointed at the victim.
    let story = Story::new("");
    let victim = story.victim();
    let mut tar = honest_start(
        &story.app.head(),
        &[
            Seen::Symlink("public-etc", "public"),
            Seen::Symlink("index-alias", "public/index.html"),
        ],
    );
    tar.pax(&[("linkpath", "/etc")])
        .gnu_long_link("public")
        .symlink("public-etc", "public")
        .pax(&[("linkpath", victim.to_str().unwrap())])
        .gnu_long_link("public/index.html")
        .symlink("index-alias", "public/index.html")
        .end();
    let evil = story.write("pax-vs-gnu.tar.gz", &gzip(&tar.take()));

    story.assert_refused_untouched(story.deploy(&evil), "PAX extended header");
}

#[test]
fn a_ustar_prefix_with_odd_magic_is_refused() {
    // With version `xx` the tar crate ignores the prefix and sees a file
    // `index.html`; GNU tar (which compares only the magic) joins
    // `public/index.html` and overwrites the checked page.
    let story = Story::new("");
    let mut tar = honest_start(
        &story.app.head(),
        &[Seen::File("index.html", 0o644, b"defaced\n")],
    );
    let mut odd = Header::new("index.html", b'0', 0o644);
    odd.version = *b"xx";
    odd.prefix = b"public".to_vec();
    tar.raw(&odd, b"defaced\n").end();
    let evil = story.write("prefix.tar.gz", &gzip(&tar.take()));

    story.assert_refused_untouched(
        story.deploy(&evil),
        "magic/version is neither ustar nor GNU",
    );
}

/// Appends one hostile entry to an archive.
type AddEntry = fn(&mut Tar);

#[test]
fn entries_no_reader_disagrees_on_are_refused_too() {
    // The same payload in plain sight: slipway's own checks refuse each.
    let story = Story::new("");
    let cases: [(&str, AddEntry); 8] = [
        ("setuid", |t| {
            t.file("suid-root", 0o4755, b"x");
        }),
        ("device or fifo", |t| {
            t.char_device("null-dev", 1, 3);
        }),
        ("device or fifo", |t| {
            t.fifo("pipe");
        }),
        ("hard link", |t| {
            t.hardlink("h", "public/index.html");
        }),
        ("absolute target", |t| {
            t.symlink("public-etc", "/etc");
        }),
        ("outside the release", |t| {
            t.symlink("escape", "../../../../victim.txt");
        }),
        ("slipway writes into every release", |t| {
            t.symlink(".slipway.env", "public/index.html");
        }),
        ("mode slipway never writes", |t| {
            t.file("open", 0o666, b"x");
        }),
    ];
    for (i, (reason, add)) in cases.iter().enumerate() {
        let mut tar = honest_start(&story.app.head(), &[]);
        add(&mut tar);
        tar.end();
        let evil = story.write(&format!("plain-{i}.tar.gz"), &gzip(&tar.take()));
        story.assert_refused_untouched(story.deploy(&evil), reason);
    }
}

#[test]
fn a_gzip_bomb_is_stopped_by_the_manifest_bound() {
    // 2 GiB of zeros behind a header, about 2 MB on disk. The manifest says
    // the release holds 3 bytes; slipway stops at the header that declares
    // more, long before inflating it.
    let story = Story::new("");
    let mut tar = honest_start(&story.app.head(), &[Seen::File("big", 0o644, b"big")]);
    let mut big = Header::new("big", b'0', 0o644);
    big.size = 2048 << 20;
    tar.bytes.extend_from_slice(&big.bytes());
    let bomb = gzip_bomb(&tar.take(), 2049);
    assert!(
        bomb.len() < 4 << 20,
        "the bomb is small: {} bytes",
        bomb.len()
    );
    let evil = story.write("bomb.tar.gz", &bomb);

    let started = std::time::Instant::now();
    story.assert_refused_untouched(
        story.deploy(&evil),
        "unpacks to more than its manifest allows",
    );
    assert!(started.elapsed().as_secs() < 60, "{:?}", started.elapsed());
}

#[test]
fn an_unsigned_artifact_deploys_but_says_it_trusts_its_commit_claim() {
    // Without trusted_keys, a file can claim any commit; slipway deploys
    // what it checked and says plainly that the claim is taken on trust.
    let story = Story::new("");
    let mut tar = honest_start(&story.app.head(), &[]);
    tar.end();
    let claimed = story.write("claims-head.tar.gz", &gzip(&tar.take()));

    story
        .deploy(&claimed)
        .success()
        .contains("trusts the file's claim about its commit");
    assert_eq!(
        story.hosts.read(0, "current/public/index.html").as_deref(),
        Some("v1\n")
    );
    // The env file is a private regular file inside the release.
    let env = story.hosts.root(0).join("current/.slipway.env");
    let meta = std::fs::symlink_metadata(&env).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&env).unwrap().contains(SECRET));
    assert_eq!(std::fs::read_to_string(story.victim()).unwrap(), UNTOUCHED);
}

/// An ed25519 key pair made by OpenSSH; returns the private key's path and
/// the public line.
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
    let public = std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap();
    (key, public.trim().to_owned())
}

#[test]
fn with_trusted_keys_only_an_artifact_signed_by_one_deploys() {
    // A signing key trusted in slipway.toml; the forger has a key too.
    let keys = tempfile::tempdir().unwrap();
    let (builder, builder_pub) = keygen(keys.path(), "builder");
    let (forger, _) = keygen(keys.path(), "forger");
    let story = Story::new(&format!(
        "\n[artifact]\ntrusted_keys = [\"{builder_pub}\"]\n"
    ));
    let built = story.build_signed(&builder);
    let sig = PathBuf::from(format!("{}.sig", built.display()));
    assert!(sig.exists());

    // An unsigned file claiming the commit: refused.
    let mut tar = honest_start(&story.app.head(), &[]);
    tar.end();
    let forged = story.write("forged.tar.gz", &gzip(&tar.take()));
    story.assert_refused_untouched(story.deploy(&forged), "must be signed");

    // The real signature copied beside it: it covers other bytes.
    std::fs::copy(&sig, format!("{}.sig", forged.display())).unwrap();
    story.assert_refused_untouched(story.deploy(&forged), "does not match its content");

    // Signed by a key nobody trusts.
    let forged_sig = sign_with(&forger, &forged);
    assert!(forged_sig.exists());
    story.assert_refused_untouched(story.deploy(&forged), "not in [artifact] trusted_keys");

    // The build signed by the trusted key deploys, without the warning.
    story
        .deploy(&built)
        .success()
        .contains("signature by builder")
        .lacks("trusts the file's claim");
    let staged = story.hosts.read(0, "current/.slipway-artifact").unwrap();
    let built_sha = slipway::artifact::sha256_file(&built).unwrap();
    assert_eq!(
        staged.trim(),
        built_sha,
        "hosts got the very bytes that were built"
    );
}

/// Signs `file` as `slipway build --sign` would, with OpenSSH itself:
/// an SSHSIG over the file's sha256 line in slipway's namespace.
fn sign_with(key: &Path, file: &Path) -> PathBuf {
    let sha = slipway::artifact::sha256_file(file).unwrap();
    let msg = key.with_extension("msg");
    std::fs::write(&msg, format!("{sha}\n")).unwrap();
    let status = Command::new("ssh-keygen")
        .args([
            "-q",
            "-Y",
            "sign",
            "-n",
            slipway::artifact::SIGNATURE_NAMESPACE,
            "-f",
        ])
        .arg(key)
        .arg(&msg)
        .status()
        .unwrap();
    assert!(status.success());
    let sig = PathBuf::from(format!("{}.sig", file.display()));
    std::fs::rename(format!("{}.sig", msg.display()), &sig).unwrap();
    sig
}

#[test]
fn a_trusted_key_that_is_not_ed25519_is_a_config_error_naming_its_line() {
    let story = Story::new("\n[artifact]\ntrusted_keys = [\"ssh-ed25519 not-base64!\"]\n");
    story
        .app
        .slipway(&["deploy", "production", "--dry-run"])
        .failure(2)
        .contains("slipway.toml:11:")
        .contains("artifact.trusted_keys[0]");
}

#[test]
fn over_ssh_a_hostile_archive_is_refused_and_a_built_one_arrives_byte_for_byte() {
    let cluster = SshCluster::start(1);
    let app = App::new("", &[("public/index.html", "v1\n")]);
    app.commit(
        "Configure slipway",
        &[(
            "slipway.toml",
            &config(&cluster.hosts_toml(), &cluster.deploy_to, ""),
        )],
    );
    let hosts = LocalHosts {
        roots: cluster.roots.clone(),
        deploy_to: cluster.deploy_to.clone(),
    };
    let victim = hosts.roots[0].join("victim.txt");
    std::fs::write(&victim, UNTOUCHED).unwrap();
    let deploy = |path: &Path| {
        let mut cmd = crate::support::run::slipway_for(app.path(), &cluster);
        cmd.env("DB_PASSWORD", SECRET);
        let flags = crate::support::run::ssh_flags(&cluster);
        let mut args = vec!["deploy", "production", "--artifact", path.to_str().unwrap()];
        args.extend(flags.iter().map(String::as_str));
        crate::support::run::run(cmd, &args)
    };

    let mut first = honest_start(&app.head(), &[]);
    let mut second = Tar::new();
    hostile_payload(&mut second, &victim);
    let mut bytes = gzip(&first.take());
    bytes.extend(gzip(&second.take()));
    let evil = app.scratch("a").join("evil.tar.gz");
    std::fs::write(&evil, bytes).unwrap();
    deploy(&evil)
        .failure(1)
        .contains("data after its first gzip member");
    assert!(!hosts.root(0).join("releases").exists());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), UNTOUCHED);

    let out = app.scratch("out");
    app.slipway(&["build", "--out", out.to_str().unwrap()])
        .success();
    let built = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .unwrap();
    deploy(&built).success();
    let staged = hosts.read(0, "current/.slipway-artifact").unwrap();
    assert_eq!(
        staged.trim(),
        slipway::artifact::sha256_file(&built).unwrap()
    );
    assert_eq!(
        hosts.read(0, "current/public/index.html").as_deref(),
        Some("v1\n")
    );
}

/// `trusted_keys` in the deployed commit can be changed by whoever pushes
/// that config; the owner's pin file can say which keys count instead, and
/// then the commit's own list is ignored.
#[test]
fn keys_pinned_by_the_owner_override_the_commits_own_list() {
    let keys = tempfile::tempdir().unwrap();
    let (owner, owner_pub) = keygen(keys.path(), "owner");
    let (pusher, pusher_pub) = keygen(keys.path(), "pusher");
    // The pushed config trusts the pusher's key.
    let story = Story::new(&format!(
        "\n[artifact]\ntrusted_keys = [\"{pusher_pub}\"]\n"
    ));
    let trusted = story.app.scratch("trusted").join("slipway.toml");
    std::fs::write(
        &trusted,
        config(
            &story.hosts.toml(),
            &story.hosts.deploy_to,
            &format!("\n[artifact]\ntrusted_keys = [\"{owner_pub}\"]\n"),
        ),
    )
    .unwrap();
    let pins = story.app.scratch("pins").join("pins.toml");
    story
        .app
        .slipway(&[
            "pins",
            "write",
            "--from",
            trusted.to_str().unwrap(),
            "--out",
            pins.to_str().unwrap(),
        ])
        .success();
    let built = story.build_signed(&pusher);
    let deploy = |extra: &[&str]| {
        let mut args = extra.to_vec();
        args.extend([
            "deploy",
            "production",
            "--artifact",
            built.to_str().unwrap(),
        ]);
        story.app.slipway_env(&args, &[("DB_PASSWORD", SECRET)])
    };
    // With the owner's pins, the pusher's key (trusted by the commit) does
    // not count; only the owner's does.
    story.assert_refused_untouched(
        deploy(&["--pins", pins.to_str().unwrap()]),
        "not in [artifact] trusted_keys",
    );
    sign_with(&owner, &built);
    deploy(&["--pins", pins.to_str().unwrap()])
        .success()
        .contains("signature by owner");
}
