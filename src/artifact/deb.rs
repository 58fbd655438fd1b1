//! Packing a release as a reproducible Debian package (`artifact = "deb"`).
//!
//! # Design
//!
//! Every release is its own package, the way kernel packages carry their
//! version in the name: release `20261122T051900Z-1a2b3c4` of `shop` becomes
//! the package `shop-release-20261122t051900z-1a2b3c4` ([`package_name`]),
//! whose files live in `<deploy_to>/releases/<id>/`. Several releases are
//! therefore installed side by side, exactly like unpacked tarballs, and the
//! rollout keeps its shape: `current` still switches by rename, rollback is
//! still a switch, and pruning purges the old packages before removing their
//! directories. The [`version`] (`20261122.051900+g1a2b3c4`) sorts by commit
//! time, so `dpkg -l` and any tool comparing versions order releases right.
//!
//! The package holds:
//! - `debian-binary` (`2.0`), then `control.tar.gz`: `control` (Package,
//!   Version, Architecture, Maintainer, Installed-Size, Depends, Section,
//!   Priority, Description), `md5sums`, `conffiles` when configured, and the
//!   configured maintainer scripts (mode 0755), then `data.tar.gz`;
//! - in `data.tar.gz`: the parent directories of the release directory, the
//!   release tree led by slipway's manifest (the same manifest and content
//!   hash as a tarball's, with `format` `"deb"`), and what Debian policy asks
//!   of every package: `/usr/share/doc/<package>/{changelog.gz,copyright}`,
//!   plus a lintian override for what is deliberate in this design:
//!   `deploy_to` where site-local data belongs but Debian's archive packages
//!   may not go (`/srv`, `/opt`, ...), and conffiles outside `/etc` (a
//!   release's conffiles live in its release directory).
//!
//! Entry names have no `./` prefix (the tar crate normalises it away; dpkg
//! accepts both), except the leading `./` directory itself.
//!
//! Invariants, as for tarballs (see the module above): the same input gives
//! the same bytes. Tar entries are sorted, built from scratch (uid/gid 0, no
//! user or group names, mtime = source time, normalised modes); gzip has
//! mtime 0 and a fixed level; ar members have mtime = source time, uid/gid 0
//! and mode 0644. The release tree passes the same safety checks as a
//! tarball's, and the package is written to a temporary file and renamed.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};
use md5::{Digest, Md5};

use super::digest::HashingWriter;
use super::manifest::{ContentHasher, Manifest, rfc3339};
use super::tarball::{
    Excludes, GZIP_LEVEL, GZIP_OS_UNKNOWN, SourceEntry, changed, check_name, check_out_dir,
    collect, data_len, finish_temp, hash_entries, header, temp_file, write_atomically,
};
use super::{Artifact, ArtifactError, EntryKind, MANIFEST_NAME, PackInput};

/// Recorded in [`Manifest::format`] for Debian packages.
pub const DEB_FORMAT: &str = "deb";

/// The maintainer scripts dpkg runs, in the order they are packed.
pub const SCRIPT_NAMES: [&str; 4] = ["postinst", "postrm", "preinst", "prerm"];

/// Maintainer scripts are small; anything bigger is a wrong path.
const MAX_SCRIPT_BYTES: u64 = 1 << 20;

/// What a Debian package needs beyond [`PackInput`].
#[derive(Debug, Clone, Copy)]
pub struct DebInput<'a> {
    /// Absolute path of the deploy root on the servers; files install into
    /// `<deploy_to>/releases/<release_id>/`.
    pub deploy_to: &'a str,
    /// The package name prefix (see [`package_name`]).
    pub package_prefix: &'a str,
    /// `Name <email>`.
    pub maintainer: &'a str,
    pub architecture: &'a str,
    /// One dependency (with alternatives and version) per entry.
    pub depends: &'a [String],
    /// Paths relative to the release directory that dpkg treats as conffiles.
    pub conffiles: &'a [String],
    /// `(name, path)`: a maintainer script ([`SCRIPT_NAMES`]) and its path
    /// relative to the built tree.
    pub scripts: &'a [(&'a str, &'a str)],
}

/// Why a Debian package could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error(
        "`{name}` is not a valid Debian package name; use lowercase letters, digits, `+`, `-` and `.`, starting with a letter or digit (set [deb] package_prefix)"
    )]
    BadPackageName { name: String },
    #[error(
        "cannot install a package into deploy_to `{deploy_to}`: it must be an absolute path without `.`, `..` or empty parts"
    )]
    BadDeployTo { deploy_to: String },
    #[error("the [deb] {field} `{value}` cannot go into a control file: {reason}")]
    BadField {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(
        "the conffile `{path}` is not a regular file of the built release; fix [deb] conffiles or the build"
    )]
    MissingConffile { path: String },
    #[error(
        "refusing {}: it is the package `{found}`, but this release's package is `{expected}`; it was built from another commit (or with another [deb] package_prefix): build it again from the commit you deploy", archive.display()
    )]
    WrongPackage {
        archive: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{} has no control.tar.gz or data.tar.gz; it is not a package slipway built", archive.display())]
    NotAPackage { archive: PathBuf },
    #[error("`{name}` is not a maintainer script; use one of {}", SCRIPT_NAMES.join(", "))]
    UnknownScript { name: String },
    #[error(
        "the {name} script {} cannot be packed: {reason}; fix [deb] scripts.{name}", path.display()
    )]
    BadScript {
        name: String,
        path: PathBuf,
        reason: String,
    },
}

/// The default package prefix for `app`: its name lowercased, `_` as `-`,
/// then `-release`.
pub fn default_package_prefix(app: &str) -> String {
    format!("{}-release", app.to_ascii_lowercase().replace('_', "-"))
}

/// The package of one release: `<prefix>-<release id, lowercased>`.
pub fn package_name(prefix: &str, release_id: &str) -> String {
    format!("{prefix}-{}", release_id.to_ascii_lowercase())
}

/// Whether `name` is a valid Debian package name (policy 5.6.1).
pub fn is_package_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() >= 2
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// The package version: commit time as `YYYYMMDD.HHMMSS`, then `+g` and the
/// short commit, e.g. `20261122.051900+g1a2b3c4`. dpkg compares the digit
/// runs numerically, so versions sort by commit time; the commit only breaks
/// ties. It has no `-revision`: these are native packages.
pub fn version(source_time: i64, release_id: &str) -> Option<String> {
    let time = time::OffsetDateTime::from_unix_timestamp(source_time).ok()?;
    let stamp = time
        .format(time::macros::format_description!(
            "[year][month][day].[hour][minute][second]"
        ))
        .ok()?;
    let short: String = release_id
        .rsplit('-')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    Some(if short.is_empty() {
        stamp
    } else {
        format!("{stamp}+g{short}")
    })
}

/// lintian's limit on a package's file name (`package-has-long-file-name`),
/// which it checks with the architecture counted as its longest one.
const FILE_NAME_LIMIT: usize = 80;
const LONGEST_ARCHITECTURE: usize = "kfreebsd-amd64".len();

/// The package's file name: `<package>_<arch>.deb`. The package name holds
/// the release id, so the name is unique per release without the version
/// (which repeats the release id); a prefix too long for lintian's limit is
/// cut, the release id never is.
pub fn file_name(package: &str, release_id: &str, architecture: &str) -> String {
    let room = FILE_NAME_LIMIT - LONGEST_ARCHITECTURE - "_.deb".len();
    let mut name = package.to_owned();
    if name.len() > room {
        // Package names are ASCII (checked by `is_package_name`).
        let id_part = release_id.len() + 1;
        let prefix_room = room.saturating_sub(id_part);
        name = format!(
            "{}{}",
            &package[..prefix_room],
            &package[package.len() - id_part..]
        );
    }
    format!("{name}_{architecture}.deb")
}

/// Packs `input.dir` into `out_dir/`[`file_name`] and writes
/// `out_dir/<app>-<release_id>.manifest.json` beside it. Excludes work as for
/// [`super::pack`].
///
/// # Errors
/// When the input is unsafe or unreadable, a setting cannot go into a
/// control file, a conffile or script is missing, or writing fails.
pub fn pack_deb(
    input: &PackInput,
    deb: &DebInput,
    out_dir: &Path,
) -> Result<Artifact, ArtifactError> {
    check_name("app name", input.app)?;
    check_name("release id", input.release_id)?;
    let package = package_name(deb.package_prefix, input.release_id);
    if !is_package_name(&package) {
        return Err(DebError::BadPackageName { name: package }.into());
    }
    let release_dir = release_dir(deb.deploy_to, input.release_id)?;
    check_fields(deb)?;
    let excludes = Excludes::new(input.exclude)?;
    check_out_dir(input.dir, out_dir)?;
    let bad_time = || ArtifactError::BadSourceTime {
        time: input.source_time,
    };
    let created = rfc3339(input.source_time)
        .filter(|_| input.source_time >= 0)
        .ok_or_else(bad_time)?;
    let version = version(input.source_time, input.release_id).ok_or_else(bad_time)?;
    let mtime = input.source_time.unsigned_abs();

    let entries = collect(input.dir, &excludes)?;
    for conffile in deb.conffiles {
        let wanted = conffile.trim_matches('/');
        if !entries
            .iter()
            .any(|e| e.kind == EntryKind::File && e.rel == wanted)
        {
            return Err(DebError::MissingConffile {
                path: conffile.clone(),
            }
            .into());
        }
    }
    let scripts = read_scripts(input.dir, deb.scripts)?;
    let summary = hash_entries(input.dir, &entries)?;
    let mut manifest = Manifest {
        app: input.app.to_owned(),
        commit: input.commit.to_owned(),
        branch: input.branch.to_owned(),
        release_id: input.release_id.to_owned(),
        format: DEB_FORMAT.to_owned(),
        file_count: summary.file_count,
        content_sha256: summary.content_sha256,
        entry_count: summary.entry_count,
        unpacked_size: summary.unpacked_size,
        created,
        sha256: None,
    };

    let meta = Meta {
        input,
        deb,
        package: &package,
        version: &version,
        release_dir: &release_dir,
        mtime,
    };
    let path = out_dir.join(file_name(&package, input.release_id, deb.architecture));
    let (sha256, size) = write_package(&meta, &manifest, &entries, &scripts, &path)?;
    manifest.sha256 = Some(sha256.clone());
    let manifest_path = out_dir.join(format!("{}-{}.manifest.json", input.app, input.release_id));
    write_atomically(&manifest_path, manifest.to_json().as_bytes())?;
    Ok(Artifact {
        path,
        sha256,
        size,
        tar_size: None,
        manifest,
    })
}

/// `<deploy_to>/releases/<id>` as a relative archive path (`srv/shop/...`).
pub(crate) fn release_dir(deploy_to: &str, release_id: &str) -> Result<String, DebError> {
    let bad = || DebError::BadDeployTo {
        deploy_to: deploy_to.to_owned(),
    };
    let rest = deploy_to.strip_prefix('/').ok_or_else(bad)?;
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == ".." || p.chars().any(char::is_control))
    {
        return Err(bad());
    }
    Ok(format!("{}/releases/{release_id}", parts.join("/")))
}

/// Control fields are line-based: a newline would forge another field.
fn check_fields(deb: &DebInput) -> Result<(), DebError> {
    let bad = |field, value: &str, reason| DebError::BadField {
        field,
        value: value.to_owned(),
        reason,
    };
    let one_line = |s: &str| !s.trim().is_empty() && !s.chars().any(char::is_control);
    if !one_line(deb.maintainer) || !deb.maintainer.trim_end().ends_with('>') {
        return Err(bad(
            "maintainer",
            deb.maintainer,
            "write it on one line as `Name <email>`",
        ));
    }
    if deb.architecture.is_empty()
        || !deb
            .architecture
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(bad(
            "architecture",
            deb.architecture,
            "use a Debian architecture such as `all` or `amd64`",
        ));
    }
    for dep in deb.depends {
        if !one_line(dep) || dep.contains(',') {
            return Err(bad(
                "depends",
                dep,
                "give one dependency per list entry, on one line, without `,`",
            ));
        }
    }
    Ok(())
}

/// Maintainer scripts, read from the built tree and sorted by name.
fn read_scripts(
    dir: &Path,
    scripts: &[(&str, &str)],
) -> Result<Vec<(String, Vec<u8>)>, ArtifactError> {
    let mut out = Vec::new();
    for (name, rel) in scripts {
        if !SCRIPT_NAMES.contains(name) {
            return Err(DebError::UnknownScript {
                name: (*name).to_owned(),
            }
            .into());
        }
        let path = dir.join(rel.trim_start_matches('/'));
        let bad = |reason: &str| DebError::BadScript {
            name: (*name).to_owned(),
            path: PathBuf::from(rel),
            reason: reason.to_owned(),
        };
        if rel.split('/').any(|c| c == "..") {
            return Err(bad("its path must stay inside the repository").into());
        }
        let meta = fs::symlink_metadata(&path).map_err(|e| bad(&e.to_string()))?;
        if !meta.is_file() {
            return Err(bad("it is not a regular file in the built tree").into());
        }
        if meta.len() > MAX_SCRIPT_BYTES {
            return Err(bad("it is larger than 1 MiB").into());
        }
        let text = fs::read(&path).map_err(ArtifactError::io("read", &path))?;
        if !text.starts_with(b"#!") {
            return Err(bad("it does not start with `#!`, so dpkg cannot run it").into());
        }
        out.push(((*name).to_owned(), text));
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

/// Names and values shared by the writers.
struct Meta<'a> {
    input: &'a PackInput<'a>,
    deb: &'a DebInput<'a>,
    package: &'a str,
    version: &'a str,
    /// Relative archive path of the release directory.
    release_dir: &'a str,
    mtime: u64,
}

/// What writing `data.tar.gz` learnt for the control archive.
struct DataSummary {
    /// `(path, md5)` of every regular file, in archive order.
    md5sums: Vec<(String, String)>,
    installed_kib: u64,
}

/// Writes data, then control, then the ar archive around them, to a temp
/// file renamed to `path`. Returns the package's sha256 and size.
fn write_package(
    meta: &Meta<'_>,
    manifest: &Manifest,
    entries: &[SourceEntry],
    scripts: &[(String, Vec<u8>)],
    path: &Path,
) -> Result<(String, u64), ArtifactError> {
    let out_dir = path.parent().unwrap_or(Path::new("."));
    let data = temp_file(out_dir)?;
    let summary = write_data(meta, manifest, entries, data.as_file())?;
    let control = control_archive(meta, &summary, scripts)
        .map_err(ArtifactError::io("write the control archive of", path))?;

    let tmp = temp_file(out_dir)?;
    let write_err = ArtifactError::io("write", tmp.path());
    let mut data_file = data
        .reopen()
        .map_err(ArtifactError::io("read", data.path()))?;
    let data_len = data_file
        .seek(io::SeekFrom::End(0))
        .and_then(|len| data_file.rewind().map(|()| len))
        .map_err(ArtifactError::io("read", data.path()))?;
    let hashing = HashingWriter::new(BufWriter::new(tmp.as_file()));
    let mut ar = ar::Builder::new(hashing);
    let member = |name: &str, size: u64| {
        let mut h = ar::Header::new(name.as_bytes().to_vec(), size);
        h.set_mtime(meta.mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(0o100_644);
        h
    };
    ar.append(&member("debian-binary", 4), &b"2.0\n"[..])
        .and_then(|()| {
            ar.append(
                &member("control.tar.gz", control.len() as u64),
                control.as_slice(),
            )
        })
        .and_then(|()| ar.append(&member("data.tar.gz", data_len), &mut data_file))
        .map_err(ArtifactError::io("write", tmp.path()))?;
    let hashing = ar
        .into_inner()
        .map_err(ArtifactError::io("write", tmp.path()))?;
    let (buffered, sha256, size) = hashing.finish();
    buffered
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?;
    finish_temp(tmp, path)?;
    Ok((sha256, size))
}

fn gzip<W: Write>(inner: W) -> flate2::write::GzEncoder<W> {
    GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNKNOWN)
        .write(inner, Compression::new(GZIP_LEVEL))
}

/// Writes `data.tar.gz`: parent directories, Debian's per-package files, the
/// manifest, then the release tree (re-hashed against the manifest).
fn write_data(
    meta: &Meta<'_>,
    manifest: &Manifest,
    entries: &[SourceEntry],
    file: &File,
) -> Result<DataSummary, ArtifactError> {
    let dir = meta.input.dir;
    let mut summary = DataSummary {
        md5sums: Vec::new(),
        installed_kib: 0,
    };
    let extras = extra_files(meta)?;
    // Every directory above the release and the extra files, sorted, so
    // parents come before children and nothing is listed twice.
    let mut dirs = std::collections::BTreeSet::new();
    for path in std::iter::once(format!("{}/", meta.release_dir))
        .chain(extras.iter().map(|(path, _)| path.clone()))
    {
        let mut parts: Vec<&str> = path.split('/').collect();
        parts.pop();
        for depth in 1..=parts.len() {
            dirs.insert(parts[..depth].join("/"));
        }
    }

    let mut tar = tar::Builder::new(gzip(BufWriter::new(file)));
    let tar_err = |e: io::Error| ArtifactError::io("write the data archive for", dir)(e);
    let mut dir_header = header(EntryKind::Dir, 0o755, 0, meta.mtime);
    tar.append_data(&mut dir_header, "./", io::empty())
        .map_err(tar_err)?;
    for d in &dirs {
        let mut h = header(EntryKind::Dir, 0o755, 0, meta.mtime);
        tar.append_data(&mut h, format!("{d}/"), io::empty())
            .map_err(tar_err)?;
        summary.installed_kib += 1;
    }
    let mut add_bytes = |tar: &mut tar::Builder<_>, path: &str, bytes: &[u8]| {
        let mut h = header(EntryKind::File, 0o644, bytes.len() as u64, meta.mtime);
        summary
            .md5sums
            .push((path.to_owned(), hex::encode(Md5::digest(bytes))));
        summary.installed_kib += (bytes.len() as u64).div_ceil(1024);
        tar.append_data(&mut h, path, bytes).map_err(tar_err)
    };
    for (path, bytes) in &extras {
        add_bytes(&mut tar, path, bytes)?;
    }
    let json = manifest.to_json();
    add_bytes(
        &mut tar,
        &format!("{}/{MANIFEST_NAME}", meta.release_dir),
        json.as_bytes(),
    )?;

    let conffiles: Vec<&str> = meta
        .deb
        .conffiles
        .iter()
        .map(|c| c.trim_matches('/'))
        .collect();
    let mut content = ContentHasher::new();
    for entry in entries {
        let path = format!("{}/{}", meta.release_dir, entry.rel);
        let mut h = header(entry.kind, entry.mode, entry.size, meta.mtime);
        content.entry(entry.kind, entry.mode, &entry.rel, data_len(entry));
        let pack_err = ArtifactError::io("pack", &entry.abs);
        match (&entry.kind, &entry.target) {
            (EntryKind::Symlink, Some(target)) => {
                content.data(target.as_bytes());
                summary.installed_kib += 1;
                tar.append_link(&mut h, path, target).map_err(pack_err)?;
            }
            (EntryKind::File, _) => {
                let file = File::open(&entry.abs).map_err(ArtifactError::io("read", &entry.abs))?;
                let mut reader = Tee {
                    inner: file.take(entry.size),
                    content: &mut content,
                    md5: Md5::new(),
                    count: 0,
                };
                tar.append_data(&mut h, &path, &mut reader)
                    .map_err(pack_err)?;
                if reader.count != entry.size {
                    return Err(changed(dir, &entry.abs));
                }
                let md5 = hex::encode(reader.md5.finalize());
                // dpkg checks conffiles itself; md5sums lists the others.
                if !conffiles.contains(&entry.rel.as_str()) {
                    summary.md5sums.push((path, md5));
                }
                summary.installed_kib += entry.size.div_ceil(1024);
            }
            _ => {
                summary.installed_kib += 1;
                tar.append_data(&mut h, format!("{path}/"), io::empty())
                    .map_err(pack_err)?;
            }
        }
    }
    if content.finish().0 != manifest.content_sha256 {
        return Err(changed(dir, dir));
    }
    let buffered = tar
        .into_inner()
        .and_then(flate2::write::GzEncoder::finish)
        .map_err(tar_err)?;
    buffered
        .into_inner()
        .map_err(|e| tar_err(e.into_error()))?
        .sync_all()
        .map_err(tar_err)?;
    Ok(summary)
}

/// Files Debian policy wants in every package, keyed by archive path:
/// changelog, copyright, and a lintian override for a site-local deploy root.
fn extra_files(meta: &Meta<'_>) -> Result<Vec<(String, Vec<u8>)>, ArtifactError> {
    let input = meta.input;
    let doc = format!("usr/share/doc/{}", meta.package);
    let date = time::OffsetDateTime::from_unix_timestamp(input.source_time)
        .ok()
        .and_then(|t| {
            Some((
                t.format(&time::format_description::well_known::Rfc2822)
                    .ok()?,
                t.year(),
            ))
        })
        .ok_or(ArtifactError::BadSourceTime {
            time: input.source_time,
        })?;
    let changelog = format!(
        "{package} ({version}) unstable; urgency=medium\n\n  * Release {id} of {app}, branch {branch},\n    commit {commit}.\n\n -- {maintainer}  {date}\n",
        package = meta.package,
        version = meta.version,
        id = input.release_id,
        app = input.app,
        commit = input.commit,
        branch = input.branch,
        maintainer = meta.deb.maintainer.trim(),
        date = date.0,
    );
    // Policy wants the changelog at maximum compression.
    let mut gz = GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNKNOWN)
        .write(Vec::new(), Compression::best());
    let changelog_gz = gz
        .write_all(changelog.as_bytes())
        .and_then(|()| gz.finish())
        .map_err(ArtifactError::io("compress the changelog for", input.dir))?;
    let copyright = format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: {app}\n\nFiles: *\nCopyright: {year} {maintainer}\nLicense: other\n Release {id} of {app}, packaged by slipway for deployment;\n see the {app} repository for its licence.\n",
        app = input.app,
        year = date.1,
        maintainer = meta.deb.maintainer.trim(),
        id = input.release_id,
    );
    let mut files = vec![
        (format!("{doc}/changelog.gz"), changelog_gz),
        (format!("{doc}/copyright"), copyright.into_bytes()),
    ];
    let mut tags: Vec<&str> = site_local_tag(meta.deb.deploy_to).into_iter().collect();
    if !meta.deb.conffiles.is_empty() {
        // A release's conffiles live in its release directory, by design.
        tags.push("non-etc-file-marked-as-conffile");
    }
    if !tags.is_empty() {
        let text: String = tags
            .iter()
            .map(|t| format!("{}: {t}\n", meta.package))
            .collect();
        files.push((
            format!("usr/share/lintian/overrides/{}", meta.package),
            text.into_bytes(),
        ));
    }
    files.sort();
    Ok(files)
}

/// The lintian tag a deploy root under a site-local directory triggers:
/// right for a site's own releases, wrong only for Debian's archive.
fn site_local_tag(deploy_to: &str) -> Option<&'static str> {
    let path = deploy_to.trim_end_matches('/');
    [
        ("/srv", "dir-or-file-in-srv"),
        ("/opt", "dir-or-file-in-opt"),
        ("/home", "dir-or-file-in-home"),
        ("/var/www", "dir-or-file-in-var-www"),
        ("/mnt", "dir-or-file-in-mnt"),
    ]
    .into_iter()
    .find(|(dir, _)| path == *dir || path.starts_with(&format!("{dir}/")))
    .map(|(_, tag)| tag)
}

/// `control.tar.gz`, in memory: it is small.
fn control_archive(
    meta: &Meta<'_>,
    summary: &DataSummary,
    scripts: &[(String, Vec<u8>)],
) -> io::Result<Vec<u8>> {
    let input = meta.input;
    let mut control = String::new();
    let _ = writeln!(control, "Package: {}", meta.package);
    let _ = writeln!(control, "Version: {}", meta.version);
    let _ = writeln!(control, "Architecture: {}", meta.deb.architecture);
    let _ = writeln!(control, "Maintainer: {}", meta.deb.maintainer.trim());
    let _ = writeln!(control, "Installed-Size: {}", summary.installed_kib);
    if !meta.deb.depends.is_empty() {
        let depends: Vec<&str> = meta.deb.depends.iter().map(|d| d.trim()).collect();
        let _ = writeln!(control, "Depends: {}", depends.join(", "));
    }
    let _ = writeln!(control, "Section: misc");
    let _ = writeln!(control, "Priority: optional");
    let _ = writeln!(
        control,
        "Description: release {} of {}",
        input.release_id, input.app
    );
    let _ = writeln!(
        control,
        " Commit {} of branch {}.\n Built and packaged by slipway; installs into\n /{}/.",
        input.commit, input.branch, meta.release_dir
    );

    let mut md5sums = String::new();
    for (path, md5) in &summary.md5sums {
        let _ = writeln!(md5sums, "{md5}  {path}");
    }
    let mut files: Vec<(String, u32, Vec<u8>)> = vec![
        ("control".into(), 0o644, control.into_bytes()),
        ("md5sums".into(), 0o644, md5sums.into_bytes()),
    ];
    if !meta.deb.conffiles.is_empty() {
        let mut list = String::new();
        for conffile in meta.deb.conffiles {
            let _ = writeln!(list, "/{}/{}", meta.release_dir, conffile.trim_matches('/'));
        }
        files.push(("conffiles".into(), 0o644, list.into_bytes()));
    }
    for (name, text) in scripts {
        files.push((name.clone(), 0o755, text.clone()));
    }
    files.sort();

    let mut tar = tar::Builder::new(gzip(Vec::new()));
    let mut h = header(EntryKind::Dir, 0o755, 0, meta.mtime);
    tar.append_data(&mut h, "./", io::empty())?;
    for (name, mode, bytes) in &files {
        let mut h = header(EntryKind::File, *mode, bytes.len() as u64, meta.mtime);
        tar.append_data(&mut h, name, bytes.as_slice())?;
    }
    tar.into_inner()?.finish()
}

/// Feeds file bytes to the content hash and md5 as the tar builder reads.
struct Tee<'a, R> {
    inner: R,
    content: &'a mut ContentHasher,
    md5: Md5,
    count: u64,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.content.data(&buf[..n]);
        self.md5.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    const TIME: i64 = 1_700_000_000;
    const MAINTAINER: &str = "Shop Team <shop@example.org>";

    fn input<'a>(dir: &'a Path, release_id: &'a str) -> PackInput<'a> {
        PackInput {
            dir,
            exclude: &[],
            source_time: TIME,
            app: "shop",
            commit: "0123456789abcdef0123456789abcdef01234567",
            branch: "production",
            release_id,
        }
    }

    fn deb<'a>(scripts: &'a [(&'a str, &'a str)], conffiles: &'a [String]) -> DebInput<'a> {
        DebInput {
            deploy_to: "/srv/shop",
            package_prefix: "shop-release",
            maintainer: MAINTAINER,
            architecture: "all",
            depends: &[],
            conffiles,
            scripts,
        }
    }

    fn tree(dir: &Path) {
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::create_dir_all(dir.join("config")).unwrap();
        fs::write(dir.join("bin/run"), "#!/bin/sh\necho run\n").unwrap();
        fs::set_permissions(dir.join("bin/run"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(dir.join("config/app.ini"), "a = 1\n").unwrap();
        fs::write(dir.join("postinst.sh"), "#!/bin/sh\nexit 0\n").unwrap();
        symlink("bin/run", dir.join("run")).unwrap();
    }

    /// The ar members (name, mtime, uid, gid, mode, bytes).
    fn members(path: &Path) -> Vec<(String, u64, u32, u32, u32, Vec<u8>)> {
        let mut archive = ar::Archive::new(File::open(path).unwrap());
        let mut out = Vec::new();
        while let Some(entry) = archive.next_entry() {
            let mut entry = entry.unwrap();
            let h = entry.header().clone();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            out.push((
                String::from_utf8(h.identifier().to_vec()).unwrap(),
                h.mtime(),
                h.uid(),
                h.gid(),
                h.mode(),
                bytes,
            ));
        }
        out
    }

    fn tar_files(gz: &[u8]) -> Vec<(String, u32, u64, Vec<u8>)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
                assert_eq!(h.username().unwrap(), Some(""));
                let path = String::from_utf8(e.path_bytes().to_vec()).unwrap();
                let mut bytes = Vec::new();
                e.read_to_end(&mut bytes).unwrap();
                (path, h.mode().unwrap(), h.mtime().unwrap(), bytes)
            })
            .collect()
    }

    #[test]
    fn names_and_versions_sort_and_are_valid() {
        let name = package_name("shop-release", "20261122T051900Z-1a2b3c4");
        assert_eq!(name, "shop-release-20261122t051900z-1a2b3c4");
        assert!(is_package_name(&name));
        assert!(!is_package_name("Shop"));
        assert!(!is_package_name("-x"));
        assert!(!is_package_name("a_b"));
        assert_eq!(default_package_prefix("My_Shop"), "my-shop-release");
        assert_eq!(
            version(TIME, "20231114T221320Z-0a1b2c3").unwrap(),
            "20231114.221320+g0a1b2c3"
        );
        // Later commits give larger versions even when the short id is smaller.
        let output = std::process::Command::new("dpkg")
            .args([
                "--compare-versions",
                &version(TIME, "x-fffffff").unwrap(),
                "lt",
                &version(TIME + 1, "x-0000000").unwrap(),
            ])
            .status()
            .expect("dpkg is installed (apt-get install dpkg)");
        assert!(output.success());
    }

    #[test]
    fn file_names_stay_within_lintians_limit_and_keep_the_release_id() {
        let id = "20231114T221320Z-0123456";
        let long = package_name(&"a".repeat(60), id);
        let name = file_name(&long, id, "all");
        assert!(
            name.len() - 3 + LONGEST_ARCHITECTURE <= FILE_NAME_LIMIT,
            "{name}"
        );
        assert!(
            name.ends_with("-20231114t221320z-0123456_all.deb"),
            "{name}"
        );
        assert_eq!(
            file_name("web-release-x", "x", "amd64"),
            "web-release-x_amd64.deb"
        );
    }

    #[test]
    fn package_is_reproducible_with_fixed_metadata() {
        let (a, b, out_a, out_b) = (tmp(), tmp(), tmp(), tmp());
        tree(a.path());
        tree(b.path());
        std::process::Command::new("touch")
            .args(["-h", "-d", "@5"])
            .arg(b.path().join("bin/run"))
            .status()
            .unwrap();
        let scripts = [("postinst", "postinst.sh")];
        let conffiles = ["config/app.ini".to_owned()];
        let first = pack_deb(
            &input(a.path(), "20231114T221320Z-0123456"),
            &deb(&scripts, &conffiles),
            out_a.path(),
        )
        .unwrap();
        let second = pack_deb(
            &input(b.path(), "20231114T221320Z-0123456"),
            &deb(&scripts, &conffiles),
            out_b.path(),
        )
        .unwrap();
        assert_eq!(
            fs::read(&first.path).unwrap(),
            fs::read(&second.path).unwrap()
        );
        assert_eq!(first.sha256, second.sha256);
        assert_eq!(first.manifest.format, "deb");
        assert_eq!(first.manifest.file_count, 4);
        assert_eq!(
            first.path.file_name().unwrap(),
            "shop-release-20231114t221320z-0123456_all.deb"
        );

        let members = members(&first.path);
        let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(names, ["debian-binary", "control.tar.gz", "data.tar.gz"]);
        for m in &members {
            assert_eq!((m.1, m.2, m.3, m.4), (TIME as u64, 0, 0, 0o100_644));
        }
        assert_eq!(members[0].5, b"2.0\n");

        let control = tar_files(&members[1].5);
        let names: Vec<(&str, u32)> = control.iter().map(|c| (c.0.as_str(), c.1)).collect();
        assert_eq!(
            names,
            [
                ("./", 0o755),
                ("conffiles", 0o644),
                ("control", 0o644),
                ("md5sums", 0o644),
                ("postinst", 0o755)
            ]
        );
        let text = String::from_utf8(control[2].3.clone()).unwrap();
        assert!(
            text.starts_with(
                "Package: shop-release-20231114t221320z-0123456\nVersion: 20231114.221320+g0123456\nArchitecture: all\nMaintainer: Shop Team <shop@example.org>\nInstalled-Size: "
            ),
            "{text}"
        );
        assert_eq!(
            String::from_utf8(control[1].3.clone()).unwrap(),
            "/srv/shop/releases/20231114T221320Z-0123456/config/app.ini\n"
        );
        let md5sums = String::from_utf8(control[3].3.clone()).unwrap();
        assert!(md5sums.contains("  srv/shop/releases/20231114T221320Z-0123456/bin/run\n"));
        assert!(!md5sums.contains("app.ini"), "conffiles are not in md5sums");

        let data = tar_files(&members[2].5);
        assert!(data.iter().all(|d| d.2 == TIME as u64));
        let paths: Vec<&str> = data.iter().map(|d| d.0.as_str()).collect();
        let release = "srv/shop/releases/20231114T221320Z-0123456";
        assert_eq!(paths[0], "./");
        assert!(paths.contains(&"srv/shop/releases/"));
        assert!(paths.contains(&format!("{release}/{MANIFEST_NAME}").as_str()));
        assert!(paths.contains(&format!("{release}/bin/run").as_str()));
        assert!(paths.contains(&"usr/share/doc/shop-release-20231114t221320z-0123456/copyright"));
        let run = data
            .iter()
            .find(|d| d.0 == format!("{release}/bin/run"))
            .unwrap();
        assert_eq!(run.1, 0o755);
    }

    #[test]
    fn bad_settings_are_refused_with_reasons() {
        let dir = tmp();
        let out = tmp();
        tree(dir.path());
        let pack = |deb: &DebInput| {
            pack_deb(&input(dir.path(), "r1"), deb, out.path())
                .unwrap_err()
                .to_string()
        };
        let mut d = deb(&[], &[]);
        d.maintainer = "a\nPackage: evil";
        assert!(pack(&d).contains("[deb] maintainer"), "{}", pack(&d));
        let missing = ["nope.ini".to_owned()];
        assert!(pack(&deb(&[], &missing)).contains("conffile `nope.ini`"));
        let scripts = [("postinst", "config/app.ini")];
        assert!(pack(&deb(&scripts, &[])).contains("does not start with `#!`"));
        let scripts = [("install", "postinst.sh")];
        assert!(pack(&deb(&scripts, &[])).contains("not a maintainer script"));
        let mut d = deb(&[], &[]);
        d.package_prefix = "Shop";
        assert!(pack(&d).contains("not a valid Debian package name"));
        let mut d = deb(&[], &[]);
        d.deploy_to = "srv/shop";
        assert!(pack(&d).contains("absolute path"));
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
    }

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }
}
