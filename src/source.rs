//! Reading commits with gix: resolving revisions, reading single files,
//! exporting a commit's tree and listing subjects for changelogs.
//!
//! This module owns every contact with the git object database and nothing
//! else: it never runs `git`, never uses a shell (revisions are user input and
//! only ever reach gix's parser), never checks out and never writes to the
//! repository.
//!
//! Invariants:
//! - A [`Commit`] always names a commit object: tags are peeled.
//! - [`Repo::export`] writes only below its destination. It creates every path
//!   itself with "create new" semantics, so a crafted tree (duplicate names, a
//!   symlink followed by a directory of the same name, `..` entries) can never
//!   make it write through a link or outside the destination.
//! - Inside a server hook, objects that are still in git's quarantine
//!   (`GIT_OBJECT_DIRECTORY`, `GIT_QUARANTINE_PATH`,
//!   `GIT_ALTERNATE_OBJECT_DIRECTORIES`) are readable, because a pre-receive
//!   hook must deploy a commit before git has moved it into the repository.

/// Variables git sets for hooks that would make a child `git` (a build step,
/// a deploy hook on a `local:` host) act on the server's repository instead
/// of its own. Removed from every child slipway starts.
pub const GIT_HOOK_VARS: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_QUARANTINE_PATH",
    "GIT_PUSH_OPTION_COUNT",
    "GIT_PREFIX",
];

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gix::bstr::ByteSlice;
use gix::objs::tree::EntryKind;

/// A git repository, opened once and queried many times.
pub struct Repo {
    repo: gix::ThreadSafeRepository,
    /// The path the caller gave, used in error messages.
    path: PathBuf,
    /// Holds the object directory that chains quarantine and alternate object
    /// directories together (see [`object_overlay`]); removed on drop.
    _object_overlay: Option<tempfile::TempDir>,
}

/// What slipway needs to know about a commit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Commit {
    /// Full hex object id.
    pub id: String,
    /// The first 7 hex digits of `id`.
    pub short: String,
    /// Committer time, unix seconds; release archives use it as their mtime.
    pub time: i64,
    /// The first line of the message.
    pub subject: String,
    /// `Name <email>`.
    pub author: String,
    /// `Name <email>` of who made the commit (a merge: who merged).
    pub committer: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open a git repository at {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: gix::Error,
    },
    #[error(
        "cannot use the object directories named by git's environment ({var}) for {}: {source}",
        path.display()
    )]
    ObjectDirs {
        path: PathBuf,
        var: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("`{rev}` does not name a commit in {}: {source}", path.display())]
    UnknownRev {
        rev: String,
        path: PathBuf,
        #[source]
        source: gix::Error,
    },
    #[error("cannot read commit {commit} in {}: {source}", path.display())]
    Read {
        commit: String,
        path: PathBuf,
        #[source]
        source: gix::Error,
    },
    #[error("`{file}` in commit {commit} is a {kind}, not a regular file")]
    NotAFile {
        commit: String,
        file: String,
        kind: &'static str,
    },
    #[error(
        "`{file}` in commit {commit} is {size} bytes, larger than {}, slipway's cap for a file it reads from a commit; keep the config under that size",
        crate::limits::human(*.limit)
    )]
    TooLarge {
        commit: String,
        file: String,
        size: u64,
        limit: u64,
    },
    #[error("cannot export commit {commit} into {}: {reason}", dest.display())]
    ExportDest {
        commit: String,
        dest: PathBuf,
        reason: &'static str,
    },
    #[error(
        "commit {commit} contains the path `{entry}`, which is unsafe to write; refusing to export it"
    )]
    UnsafePath { commit: String, entry: String },
    #[error("cannot write {} while exporting commit {commit}: {source}", path.display())]
    Write {
        commit: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list the history of `{to}` in {}: {source}", path.display())]
    Walk {
        to: String,
        path: PathBuf,
        #[source]
        source: gix::Error,
    },
}

impl Repo {
    /// Opens a bare or non-bare repository; `path` may be the work tree or the
    /// git dir. Honours git's object directory variables (see module docs).
    pub fn open(path: &Path) -> Result<Repo, SourceError> {
        Self::open_with_env(path, |name| std::env::var_os(name))
    }

    /// [`Repo::open`] with the environment passed in, so tests need not mutate
    /// the process environment.
    fn open_with_env(
        path: &Path,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Repo, SourceError> {
        let open_error = |source| SourceError::Open {
            path: path.to_owned(),
            source,
        };
        // Like git, a repository is found from any folder inside it.
        let mut repo = gix::ThreadSafeRepository::discover(path).map_err(open_error)?;
        let overlay = match ObjectDirs::from_env(&env) {
            Some(dirs) => {
                let (dir, store) =
                    object_overlay(&repo, &dirs).map_err(|source| SourceError::ObjectDirs {
                        path: path.to_owned(),
                        var: OBJECT_ENV_VARS,
                        source,
                    })?;
                repo.objects = gix::parallel::OwnShared::new(store);
                Some(dir)
            }
            None => None,
        };
        Ok(Repo {
            repo,
            path: path.to_owned(),
            _object_overlay: overlay,
        })
    }

    /// Resolves a branch name (`production`, `refs/heads/x`), a full or short
    /// hex id, or `HEAD` to a commit, peeling tags.
    pub fn resolve(&self, rev: &str) -> Result<Commit, SourceError> {
        let repo = self.repo.to_thread_local();
        let commit = self.find_commit(&repo, rev)?;
        describe(&commit).map_err(|source| self.read_error(rev, source))
    }

    /// The branch `rev` names: itself when `refs/heads/<rev>` exists, the
    /// branch HEAD points at for `HEAD`, else `None` (a commit id, a tag, a
    /// detached HEAD).
    pub fn branch_of(&self, rev: &str) -> Option<String> {
        let repo = self.repo.to_thread_local();
        let name = rev.strip_prefix("refs/heads/").unwrap_or(rev);
        if rev == "HEAD" {
            let head = repo.head_name().ok()??;
            return Some(head.shorten().to_string());
        }
        repo.find_reference(format!("refs/heads/{name}").as_str())
            .ok()
            .map(|_| name.to_owned())
    }

    /// The contents of the regular file at `path` in the commit's tree, or
    /// `None` when nothing is there.
    ///
    /// Only for small files such as the config: a blob larger than
    /// [`crate::limits::CONFIG_BYTES`] is refused from its header, before
    /// any of it is inflated, since the commit is whatever was pushed.
    pub fn read_file(&self, commit_id: &str, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
        let repo = self.repo.to_thread_local();
        let commit = self.find_commit(&repo, commit_id)?;
        let read = |source| self.read_error(commit_id, source);
        let tree = commit.tree().map_err(read)?;
        let Some(entry) = tree.lookup_entry_by_path(path).map_err(read)? else {
            return Ok(None);
        };
        match entry.mode().kind() {
            EntryKind::Blob | EntryKind::BlobExecutable => {
                let size = repo.find_header(entry.object_id()).map_err(read)?.size();
                let limit = crate::limits::CONFIG_BYTES;
                if size > limit {
                    return Err(SourceError::TooLarge {
                        commit: commit_id.to_owned(),
                        file: path.to_owned(),
                        size,
                        limit,
                    });
                }
                Ok(Some(entry.object().map_err(read)?.detach().data))
            }
            kind => Err(SourceError::NotAFile {
                commit: commit_id.to_owned(),
                file: path.to_owned(),
                kind: kind_name(kind),
            }),
        }
    }

    /// Writes the commit's tree into `dest` (which must exist and be empty)
    /// without a checkout: blobs with mode 0644 or 0755, symlinks as symlinks.
    /// Submodule entries are skipped: their commits are not in this
    /// repository. Returns the number of files and symlinks written.
    pub fn export(&self, commit_id: &str, dest: &Path) -> Result<u64, SourceError> {
        let repo = self.repo.to_thread_local();
        let commit = self.find_commit(&repo, commit_id)?;
        check_export_dest(commit_id, dest)?;
        let tree = commit
            .tree()
            .map_err(|source| self.read_error(commit_id, source))?;
        let mut exporter = Exporter {
            repo: self,
            commit: commit_id,
            files: 0,
        };
        exporter.write_tree(&tree, dest, "")?;
        Ok(exporter.files)
    }

    /// Subjects of the commits reachable from `to` but not from `from`,
    /// newest first, at most `limit` of them.
    pub fn subjects_between(
        &self,
        from: Option<&str>,
        to: &str,
        limit: usize,
    ) -> Result<Vec<String>, SourceError> {
        let repo = self.repo.to_thread_local();
        let tip = self.find_commit(&repo, to)?.id;
        let hidden = match from {
            Some(from) => vec![self.find_commit(&repo, from)?.id],
            None => Vec::new(),
        };
        let walk_error = |source| SourceError::Walk {
            to: to.to_owned(),
            path: self.path.clone(),
            source,
        };
        let walk = repo
            .rev_walk([tip])
            .with_hidden(hidden)
            .sorting(gix::revision::walk::Sorting::ByCommitTime(
                gix::traverse::commit::simple::CommitTimeOrder::NewestFirst,
            ))
            .all()
            .map_err(walk_error)?;
        let mut subjects = Vec::new();
        for info in walk.take(limit) {
            let commit = info.and_then(|info| info.object()).map_err(walk_error)?;
            let message = commit.message().map_err(walk_error)?;
            subjects.push(message.summary().to_str_lossy().into_owned());
        }
        Ok(subjects)
    }

    /// Whether `ancestor` is an older commit of `of`'s history (not `of`
    /// itself): deploying it would take the environment backwards.
    ///
    /// # Errors
    /// When either cannot be found or the history cannot be walked.
    pub fn is_ancestor(&self, ancestor: &str, of: &str) -> Result<bool, SourceError> {
        let repo = self.repo.to_thread_local();
        let old = self.find_commit(&repo, ancestor)?.id;
        let tip = self.find_commit(&repo, of)?.id;
        if old == tip {
            return Ok(false);
        }
        let walk_error = |source| SourceError::Walk {
            to: of.to_owned(),
            path: self.path.clone(),
            source,
        };
        let walk = repo.rev_walk([tip]).all().map_err(walk_error)?;
        for info in walk {
            if info.map_err(walk_error)?.id == old {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn find_commit<'r>(
        &self,
        repo: &'r gix::Repository,
        rev: &str,
    ) -> Result<gix::Commit<'r>, SourceError> {
        repo.rev_parse_single(rev)
            .and_then(|id| id.object())
            .and_then(|object| object.peel_to_commit())
            .map_err(|source| SourceError::UnknownRev {
                rev: rev.to_owned(),
                path: self.path.clone(),
                source,
            })
    }

    fn read_error(&self, commit: &str, source: gix::Error) -> SourceError {
        SourceError::Read {
            commit: commit.to_owned(),
            path: self.path.clone(),
            source,
        }
    }
}

fn describe(commit: &gix::Commit<'_>) -> Result<Commit, gix::Error> {
    let author = commit.author()?;
    let committer = commit.committer()?;
    let message = commit.message()?;
    Ok(Commit {
        id: commit.id.to_hex().to_string(),
        short: commit.id.to_hex_with_len(7).to_string(),
        time: commit.time()?.seconds,
        subject: message.summary().to_str_lossy().into_owned(),
        author: format!("{} <{}>", author.name, author.email),
        committer: format!("{} <{}>", committer.name, committer.email),
    })
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Tree => "directory",
        EntryKind::Blob | EntryKind::BlobExecutable => "file",
        EntryKind::Link => "symlink",
        EntryKind::Commit => "submodule",
    }
}

fn check_export_dest(commit: &str, dest: &Path) -> Result<(), SourceError> {
    let reason = match fs::read_dir(dest).map(|mut entries| entries.next().is_none()) {
        Ok(true) => return Ok(()),
        Ok(false) => "the directory is not empty",
        Err(err) if err.kind() == io::ErrorKind::NotFound => "the directory does not exist",
        Err(err) if err.kind() == io::ErrorKind::NotADirectory => "it is not a directory",
        Err(source) => {
            return Err(SourceError::Write {
                commit: commit.to_owned(),
                path: dest.to_owned(),
                source,
            });
        }
    };
    Err(SourceError::ExportDest {
        commit: commit.to_owned(),
        dest: dest.to_owned(),
        reason,
    })
}

/// Recursive tree writer; counts what it wrote.
struct Exporter<'a> {
    repo: &'a Repo,
    commit: &'a str,
    files: u64,
}

impl Exporter<'_> {
    fn write_tree(
        &mut self,
        tree: &gix::Tree<'_>,
        dir: &Path,
        prefix: &str,
    ) -> Result<(), SourceError> {
        let read = |source| self.repo.read_error(self.commit, source);
        for entry in tree.iter() {
            let entry = entry.map_err(read)?;
            let name = entry.filename();
            let display = format!("{prefix}{}", name.to_str_lossy());
            if !is_safe_component(name) {
                return Err(SourceError::UnsafePath {
                    commit: self.commit.to_owned(),
                    entry: display,
                });
            }
            let path = dir.join(std::ffi::OsStr::from_bytes(name));
            match entry.kind() {
                EntryKind::Tree => {
                    let subtree = entry.object().map_err(read)?.into_tree();
                    // create_dir (not create_dir_all) fails on an existing
                    // path, so a crafted tree cannot route us through a link.
                    fs::create_dir(&path).map_err(|e| self.write_error(&path, e))?;
                    self.write_tree(&subtree, &path, &format!("{display}/"))?;
                }
                kind @ (EntryKind::Blob | EntryKind::BlobExecutable) => {
                    let data = entry.object().map_err(read)?.detach().data;
                    let mode = if kind == EntryKind::BlobExecutable {
                        0o755
                    } else {
                        0o644
                    };
                    write_new_file(&path, &data, mode).map_err(|e| self.write_error(&path, e))?;
                    self.files += 1;
                }
                EntryKind::Link => {
                    let target = entry.object().map_err(read)?.detach().data;
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)
                        .map_err(|e| self.write_error(&path, e))?;
                    self.files += 1;
                }
                // A submodule's commit lives in another repository.
                EntryKind::Commit => {}
            }
        }
        Ok(())
    }

    fn write_error(&self, path: &Path, source: io::Error) -> SourceError {
        SourceError::Write {
            commit: self.commit.to_owned(),
            path: path.to_owned(),
            source,
        }
    }
}

/// A tree entry name that is a single, ordinary path component. git itself
/// never writes others, but trees can be crafted.
fn is_safe_component(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

fn write_new_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    // create_new refuses an existing path, including a dangling symlink.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(data)?;
    // Set explicitly: the umask must not decide what ends up executable.
    file.set_permissions(fs::Permissions::from_mode(mode))
}

const OBJECT_ENV_VARS: &str =
    "GIT_OBJECT_DIRECTORY, GIT_QUARANTINE_PATH, GIT_ALTERNATE_OBJECT_DIRECTORIES";

/// The object directories git's environment asks us to read from, as set for
/// hooks while a push is quarantined.
#[derive(Debug, Default)]
struct ObjectDirs {
    /// `GIT_OBJECT_DIRECTORY` and `GIT_QUARANTINE_PATH`.
    primary: Vec<PathBuf>,
    /// Entries of `GIT_ALTERNATE_OBJECT_DIRECTORIES`, each either a plain path
    /// or still C-quoted (the alternates file format understands both).
    alternates: Vec<Vec<u8>>,
}

impl ObjectDirs {
    fn from_env(env: impl Fn(&str) -> Option<OsString>) -> Option<ObjectDirs> {
        let mut dirs = ObjectDirs::default();
        for var in ["GIT_OBJECT_DIRECTORY", "GIT_QUARANTINE_PATH"] {
            if let Some(dir) = env(var).filter(|d| !d.is_empty()) {
                let dir = PathBuf::from(dir);
                if !dirs.primary.contains(&dir) {
                    dirs.primary.push(dir);
                }
            }
        }
        if let Some(list) = env("GIT_ALTERNATE_OBJECT_DIRECTORIES") {
            dirs.alternates = split_alternates(list.as_bytes());
        }
        (!dirs.primary.is_empty() || !dirs.alternates.is_empty()).then_some(dirs)
    }
}

/// Splits git's `:`-separated alternates list. Like git, an entry starting
/// with `"` is C-quoted and may contain `:`; it is kept quoted.
fn split_alternates(list: &[u8]) -> Vec<Vec<u8>> {
    let mut entries = Vec::new();
    let mut rest = list;
    while !rest.is_empty() {
        let end = if rest[0] == b'"' {
            closing_quote(rest).map_or(rest.len(), |close| close + 1)
        } else {
            rest.iter().position(|&b| b == b':').unwrap_or(rest.len())
        };
        let (entry, tail) = rest.split_at(end);
        if !entry.is_empty() {
            entries.push(entry.to_vec());
        }
        rest = tail.strip_prefix(b":").unwrap_or(tail);
    }
    entries
}

/// Index of the `"` closing the quoted string that starts at `s[0]`.
fn closing_quote(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// gix reads objects from one directory plus the alternates listed in its
/// `info/alternates`, and ignores git's object environment variables. So we
/// make an empty object directory whose alternates are the quarantine, the
/// alternates from the environment and the repository's own objects, and
/// point the repository at it. The repository itself is never written to.
fn object_overlay(
    repo: &gix::ThreadSafeRepository,
    dirs: &ObjectDirs,
) -> io::Result<(tempfile::TempDir, gix::odb::Store)> {
    let cwd = std::env::current_dir()?;
    let mut list = Vec::new();
    let own = repo.objects_dir().to_owned();
    for dir in dirs.primary.iter().chain([&own]) {
        list.extend_from_slice(&quote_path(cwd.join(dir).as_os_str().as_bytes()));
        list.push(b'\n');
    }
    for entry in &dirs.alternates {
        if entry.starts_with(b"\"") {
            list.extend_from_slice(entry);
        } else {
            let path = cwd.join(std::ffi::OsStr::from_bytes(entry));
            list.extend_from_slice(&quote_path(path.as_os_str().as_bytes()));
        }
        list.push(b'\n');
    }
    let overlay = crate::scratch::dir("objects")?;
    fs::create_dir(overlay.path().join("info"))?;
    fs::write(overlay.path().join("info").join("alternates"), list)?;
    let object_hash = repo.to_thread_local().object_hash();
    let store = gix::odb::Store::at_opts(
        overlay.path().to_owned(),
        object_hash,
        &mut std::iter::empty(),
        gix::odb::store::init::Options::default(),
    )?;
    Ok((overlay, store))
}

/// C-quotes a path for an alternates file when it needs it (a newline, or a
/// leading quote), as git does.
fn quote_path(path: &[u8]) -> Vec<u8> {
    if !path.contains(&b'\n') && !path.starts_with(b"\"") {
        return path.to_vec();
    }
    let mut out = vec![b'"'];
    for &b in path {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            _ => out.push(b),
        }
    }
    out.push(b'"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "Ada")
            .env("GIT_AUTHOR_EMAIL", "ada@example.com")
            .env("GIT_COMMITTER_NAME", "Ada")
            .env("GIT_COMMITTER_EMAIL", "ada@example.com")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }

    fn commit_all(dir: &Path, message: &str, date: &str) -> String {
        git(dir, &["add", "-A"]);
        Command::new("git")
            .args(["commit", "-q", "-m", message])
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "Ada")
            .env("GIT_AUTHOR_EMAIL", "ada@example.com")
            .env("GIT_COMMITTER_NAME", "Ada")
            .env("GIT_COMMITTER_EMAIL", "ada@example.com")
            .env("GIT_AUTHOR_DATE", date)
            .env("GIT_COMMITTER_DATE", date)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .expect("git commit runs");
        git(dir, &["rev-parse", "HEAD"])
    }

    /// A repo on branch `main` with two commits and a `production` branch at
    /// the first one.
    fn sample_repo() -> (tempfile::TempDir, String, String) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        git(dir, &["init", "-q", "-b", "main"]);
        fs::write(dir.join("README"), "hello\n").unwrap();
        fs::create_dir(dir.join("bin")).unwrap();
        fs::write(dir.join("bin/run"), "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(dir.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("bin/run", dir.join("run")).unwrap();
        let first = commit_all(dir, "First commit\n\nbody", "1700000000 +0000");
        git(dir, &["branch", "production"]);
        fs::write(dir.join("README"), "hello again\n").unwrap();
        let second = commit_all(dir, "Second commit", "1700000100 +0200");
        (tmp, first, second)
    }

    #[test]
    fn resolves_branches_head_and_short_ids() {
        let (tmp, first, second) = sample_repo();
        let repo = Repo::open(tmp.path()).unwrap();

        let head = repo.resolve("HEAD").unwrap();
        assert_eq!(head.id, second);
        assert_eq!(head.short, &second[..7]);
        assert_eq!(head.time, 1_700_000_100);
        assert_eq!(head.subject, "Second commit");
        assert_eq!(head.author, "Ada <ada@example.com>");

        let prod = repo.resolve("production").unwrap();
        assert_eq!(prod.id, first);
        assert_eq!(prod.subject, "First commit");
        assert_eq!(repo.resolve("refs/heads/production").unwrap().id, first);
        assert_eq!(repo.resolve(&first[..8]).unwrap().id, first);
        assert_eq!(repo.resolve(&first).unwrap().id, first);
    }

    #[test]
    fn peels_annotated_tags() {
        let (tmp, first, _) = sample_repo();
        git(tmp.path(), &["tag", "-a", "-m", "v1", "v1", &first]);
        let repo = Repo::open(tmp.path()).unwrap();
        assert_eq!(repo.resolve("v1").unwrap().id, first);
    }

    #[test]
    fn unknown_rev_names_the_rev_and_repo() {
        let (tmp, _, _) = sample_repo();
        let repo = Repo::open(tmp.path()).unwrap();
        let err = repo.resolve("prodution").unwrap_err().to_string();
        assert!(
            err.starts_with("`prodution` does not name a commit in "),
            "{err}"
        );
        assert!(err.contains(&tmp.path().display().to_string()), "{err}");
    }

    #[test]
    fn open_reports_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Repo::open(tmp.path()).err().unwrap().to_string();
        assert!(err.starts_with("cannot open a git repository at "), "{err}");
    }

    #[test]
    fn opens_bare_repos_and_git_dirs() {
        let (tmp, _, second) = sample_repo();
        let bare = tmp.path().join("bare.git");
        git(
            tmp.path(),
            &["clone", "-q", "--bare", ".", bare.to_str().unwrap()],
        );
        assert_eq!(
            Repo::open(&bare).unwrap().resolve("main").unwrap().id,
            second
        );
        let git_dir = tmp.path().join(".git");
        assert_eq!(
            Repo::open(&git_dir).unwrap().resolve("HEAD").unwrap().id,
            second
        );
    }

    #[test]
    fn read_file_present_absent_and_not_a_file() {
        let (tmp, first, second) = sample_repo();
        let repo = Repo::open(tmp.path()).unwrap();
        assert_eq!(
            repo.read_file(&first, "README").unwrap().unwrap(),
            b"hello\n"
        );
        assert_eq!(
            repo.read_file(&second, "README").unwrap().unwrap(),
            b"hello again\n"
        );
        assert_eq!(
            repo.read_file(&second, "bin/run").unwrap().unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(repo.read_file(&second, "slipway.toml").unwrap(), None);
        assert_eq!(repo.read_file(&second, "bin/nope").unwrap(), None);
        let err = repo.read_file(&second, "bin").unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
    }

    #[test]
    fn export_keeps_modes_and_symlinks() {
        let (tmp, _, second) = sample_repo();
        let repo = Repo::open(tmp.path()).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let written = repo.export(&second, dest.path()).unwrap();
        assert_eq!(written, 3);

        let mode = |p: &str| {
            fs::metadata(dest.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("README"), 0o644);
        assert_eq!(mode("bin/run"), 0o755);
        assert_eq!(
            fs::read_link(dest.path().join("run")).unwrap(),
            Path::new("bin/run")
        );
        assert_eq!(
            fs::read_to_string(dest.path().join("README")).unwrap(),
            "hello again\n"
        );
        assert!(!dest.path().join(".git").exists());
    }

    #[test]
    fn export_skips_submodules() {
        let (tmp, _, _) = sample_repo();
        let dir = tmp.path();
        // A gitlink entry, as `git submodule add` would record.
        let head = git(dir, &["rev-parse", "HEAD"]);
        git(
            dir,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,{head},vendor/lib"),
            ],
        );
        git(dir, &["commit", "-q", "-m", "add submodule"]);
        let repo = Repo::open(dir).unwrap();
        let dest = tempfile::tempdir().unwrap();
        assert_eq!(repo.export("HEAD", dest.path()).unwrap(), 3);
        assert!(dest.path().join("vendor").is_dir());
        assert!(!dest.path().join("vendor/lib").exists());
    }

    #[test]
    fn export_refuses_non_empty_dest() {
        let (tmp, _, second) = sample_repo();
        let repo = Repo::open(tmp.path()).unwrap();
        let dest = tempfile::tempdir().unwrap();
        fs::write(dest.path().join("x"), "").unwrap();
        let err = repo.export(&second, dest.path()).unwrap_err().to_string();
        assert!(err.contains("is not empty"), "{err}");
        let err = repo
            .export(&second, &dest.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn subjects_between_lists_new_commits_newest_first() {
        let (tmp, first, second) = sample_repo();
        let dir = tmp.path();
        fs::write(dir.join("c"), "3").unwrap();
        let third = commit_all(dir, "Third commit", "1700000200 +0000");
        let repo = Repo::open(dir).unwrap();
        assert_eq!(
            repo.subjects_between(Some(&first), &third, 10).unwrap(),
            ["Third commit", "Second commit"]
        );
        assert_eq!(
            repo.subjects_between(None, "main", 10).unwrap(),
            ["Third commit", "Second commit", "First commit"]
        );
        assert_eq!(
            repo.subjects_between(None, "main", 1).unwrap(),
            ["Third commit"]
        );
        assert!(
            repo.subjects_between(Some(&second), &second, 10)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn reads_objects_from_a_quarantine_directory() {
        // `pushed` holds a commit the server repo has not got yet, as if it
        // were still in the quarantine of a pre-receive hook.
        let (pushed, _, second) = sample_repo();
        let server = tempfile::tempdir().unwrap();
        git(server.path(), &["init", "-q", "--bare"]);
        assert!(Repo::open(server.path()).unwrap().resolve(&second).is_err());

        let quarantine = pushed.path().join(".git/objects").into_os_string();
        let env = |name: &str| (name == "GIT_OBJECT_DIRECTORY").then(|| quarantine.clone());
        let repo = Repo::open_with_env(server.path(), env).unwrap();
        assert_eq!(repo.resolve(&second).unwrap().subject, "Second commit");
        assert_eq!(
            repo.read_file(&second, "README").unwrap().unwrap(),
            b"hello again\n"
        );

        let alternates = OsString::from(format!("/nonexistent:{}", quarantine.to_str().unwrap()));
        let env =
            |name: &str| (name == "GIT_ALTERNATE_OBJECT_DIRECTORIES").then(|| alternates.clone());
        let repo = Repo::open_with_env(server.path(), env).unwrap();
        assert_eq!(repo.resolve(&second).unwrap().id, second);
    }

    #[test]
    fn splits_alternates_like_git() {
        assert_eq!(
            split_alternates(br#"/a:"/b:c":/d"#),
            [b"/a".to_vec(), br#""/b:c""#.to_vec(), b"/d".to_vec()]
        );
        assert!(split_alternates(b"").is_empty());
    }
}
