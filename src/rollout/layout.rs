//! The server layout under `deploy_to`, and the scripts that change it.
//!
//! ```text
//! releases/<id>/          unpacked artifact (+ .slipway.env, .slipway-artifact)
//! releases/.<id>.staging  an unpack in progress; never a release
//! current -> releases/<id>
//! shared/                 persistent data, linked into every release
//! .slipway/lock           environment lock (JSON: deploy id first, who,
//!                         machine, pid, since, lease); its mtime is the
//!                         holder's last renewal, by the host's clock
//! .slipway/freeze         present while deploys are frozen (JSON: who,
//!                         machine, since, message)
//! .slipway/journal.json   the rollout in flight on this host
//! .slipway/history.jsonl  append-only record of every rollout
//! .slipway/maintenance    present while the cluster is closed
//! .slipway/pinned         release ids that pruning keeps
//! .slipway/run/<id>.<what>.pid
//!                         the process group of a configured command while
//!                         it runs ("<pgid> <leader start time>")
//! .slipway/run/<id>.<what>.pid.stop
//!                         slipway gave up on that command: it must not run
//! ```
//!
//! Owns every script run on a host. Invariants: `current` only ever changes
//! by `rename(2)` of a fresh symlink (`mv -T`), so a reader sees the old or
//! the new release, never a missing link; a release directory appears under
//! its final name only when fully unpacked and linked; symlinks are relative,
//! so a deploy root can be moved (and `local:` hosts stay self-contained).
//!
//! Every configured command (deploy hook, health command, canary check,
//! workers and cron start/stop, `dpkg --install`) runs in its own session
//! and process group, recorded in a pid file while it runs, and, when it
//! has a deadline, under GNU `timeout` on the host too: so slipway can stop
//! the whole group when its deadline passes (`remote.rs`), a command whose
//! runner died still ends at its deadline, and `recover` can stop what a
//! dead runner left ([`Layout::stop_orphans`]); a stop leaves a marker, so
//! a command whose session reached the host late never runs on. A pid file
//! is trusted only while its group lives and its leader is the process
//! recorded (its start time), so a pid reused by an unrelated process is
//! never signalled.
//!
//! With `artifact = "deb"` ([`Dpkg`]), each release is a Debian package
//! named after it (`<prefix>-<id>`, see `artifact/deb.rs`) whose files dpkg
//! installs straight into `releases/<id>/`; the rest of the layout is the
//! same. `.slipway-artifact` is written only once `dpkg --install` (and its
//! postinst) succeeded, and a failed install is purged again, so a release
//! directory still stands for a complete release. Pruning purges a
//! release's package, then removes what is left of its directory (the env
//! file, shared links). A `local:` host gets its own dpkg database and log
//! under its folder (`--instdir`, `--admindir`, `--log`), never the machine's.

use std::time::Duration;

use crate::transport::quote::{join, quote, user_argv};
use crate::transport::{Script, Unquotable};

/// Exit status of the lock script when another rollout holds the lock.
pub const LOCK_HELD: i32 = 75;

/// Exit status of the lock script when deploys are frozen.
pub const FROZEN: i32 = 76;

/// How long a command that is being stopped gets between TERM and KILL;
/// also how far past slipway's deadline for a command the host's own
/// deadline lies.
pub const GRACE: Duration = Duration::from_secs(5);

/// One configured command run on a host, as its pid file names it:
/// `.slipway/run/<id>.<what>.pid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job<'a> {
    /// The deploy id; a package install, which staging runs, uses the
    /// release id.
    pub id: &'a str,
    /// What the command is for: `hook`, `health-1` (the attempt),
    /// `workers-start`, `dpkg`… Unique within the deploy for a command with
    /// a deadline, since a stop marker may outlive it.
    pub what: &'a str,
    /// slipway's deadline for it (the host's lies [`GRACE`] later); `None`
    /// when it has none (workers, cron, dpkg).
    pub timeout: Option<Duration>,
}

/// Paths of one host's deploy root (already resolved by the transport).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: String,
}

impl Layout {
    pub fn new(root: String) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn release(&self, id: &str) -> String {
        format!("{}/releases/{id}", self.root)
    }

    pub fn current(&self) -> String {
        format!("{}/current", self.root)
    }

    /// Where the artifact is uploaded before it is verified and unpacked.
    pub fn incoming(&self, sha256: &str) -> String {
        format!("{}/.slipway/incoming/{sha256}.tar.gz", self.root)
    }

    /// Where a Debian package is uploaded before it is verified and installed.
    pub fn incoming_deb(&self, sha256: &str) -> String {
        format!("{}/.slipway/incoming/{sha256}.deb", self.root)
    }

    fn start(&self) -> Result<Script, Unquotable> {
        Script::new().raw_with("cd", [&self.root])
    }

    /// Reads what is on the host as `key<TAB>value` lines (see
    /// `state::HostState::parse`). An absent root reads as an empty host.
    pub fn read_state(&self) -> Result<Script, Unquotable> {
        Script::new()
            .line("if [ ! -d {} ]; then exit 0; fi", [&self.root])?
            .raw_with("cd", [&self.root])
            .map(|s| s.raw(READ_STATE).raw(GROUPS).raw(RUNNING))
    }

    /// Creates the directories a deploy needs.
    pub fn prepare(&self) -> Result<Script, Unquotable> {
        Script::new()
            .cmd(["mkdir", "-p", &self.root])?
            .raw_with("cd", [&self.root])?
            .cmd(["mkdir", "-p", "releases", "shared", ".slipway/incoming"])
    }

    /// Takes the lock atomically with `link(2)`, which fails if the lock
    /// exists; the file appears already complete, and its mtime starts the
    /// lease. Exits [`FROZEN`] printing the `freeze` record while deploys
    /// are frozen, and [`LOCK_HELD`] printing the holder (`lock` and
    /// `lock_age` lines, as [`Layout::read_state`] does) when it is taken.
    /// A recovery (`frozen_too`) takes it while frozen: it repairs.
    pub fn lock(
        &self,
        deploy_id: &str,
        owner_json: &str,
        frozen_too: bool,
    ) -> Result<Script, Unquotable> {
        let tmp = format!(".slipway/lock.{deploy_id}");
        let script = self.prepare()?;
        let script = if frozen_too {
            script
        } else {
            script.raw(FREEZE_CHECK)
        };
        Ok(script
            .line("printf '%s\\n' {} > {}", [owner_json, &tmp])?
            .line(
                "if ln {} .slipway/lock 2>/dev/null; then rm -f {}; exit 0; fi; rm -f {}",
                [&tmp, &tmp, &tmp],
            )?
            .raw(LOCK_SEEN)
            .raw("exit 75"))
    }

    /// Refreshes the lease (the lock file's mtime, by the host's clock) if
    /// and only if `deploy_id` holds the lock; prints `renewed` or `lost`.
    pub fn renew(&self, deploy_id: &str) -> Result<Script, Unquotable> {
        Ok(self.start()?.raw(HELD_ID)).and_then(|s| {
            s.line(
                "if [ -n \"$held\" ] && [ \"$held\" = {} ]; then touch -c .slipway/lock; echo renewed; else echo lost; fi",
                [deploy_id],
            )
        })
    }

    /// Removes the lock if (and only if) `deploy_id` holds it: the id in
    /// the file is compared whole, never as a substring.
    pub fn unlock(&self, deploy_id: &str) -> Result<Script, Unquotable> {
        Ok(self.start()?.raw(HELD_ID)).and_then(|s| {
            s.line(
                "if [ -n \"$held\" ] && [ \"$held\" = {} ]; then rm -f .slipway/lock; fi",
                [deploy_id],
            )
        })
    }

    /// Removes `deploy_id`'s lock only if its lease has expired by this
    /// host's clock (no renewal for `lease_ms`); prints `broken` if it did.
    pub fn break_expired(&self, deploy_id: &str, lease_ms: u64) -> Result<Script, Unquotable> {
        let lease = lease_ms.to_string();
        Ok(self.start()?.raw(HELD_ID)).and_then(|s| {
            s.line(
                "if [ -n \"$held\" ] && [ \"$held\" = {} ] && m=$(LC_ALL=C stat -c %.3Y .slipway/lock 2>/dev/null) && [ $(( $(date +%s%3N) - $(printf %s \"$m\" | tr -d .) )) -ge {} ]; then rm -f .slipway/lock; echo broken; fi",
                [deploy_id, &lease],
            )
        })
    }

    /// Removes the lock file if it still reads exactly `content` (as
    /// [`Layout::read_state`] printed it): for `slipway unlock`, which must
    /// remove what it showed and decided on, corrupt files included, and
    /// nothing taken since. Prints `removed` if it did.
    pub fn remove_lock_if(&self, content: &str) -> Result<Script, Unquotable> {
        self.start()?.line(
            "if [ -f .slipway/lock ] && [ \"$(head -c 65536 .slipway/lock | tr -d '\\n')\" = {} ]; then rm -f .slipway/lock; echo removed; fi",
            [content],
        )
    }

    /// Freezes deploys on this host: writes the freeze record (replacing
    /// any), never through a link.
    pub fn freeze(&self, record_json: &str) -> Result<Script, Unquotable> {
        Ok(self
            .prepare()?
            .then(&write_nofollow(".slipway", "freeze", record_json)?))
    }

    /// Lifts a deploy freeze on this host.
    pub fn thaw(&self) -> Result<Script, Unquotable> {
        Script::new().line(
            "if [ -d {} ]; then rm -f {}/.slipway/freeze; fi",
            [&self.root, &self.root],
        )
    }

    /// Stage a release: verify the uploaded artifact, unpack it beside the
    /// live release, link shared paths, and write the env file from stdin.
    /// A release already unpacked from the same bytes is reused.
    pub fn stage(&self, stage: &Stage<'_>) -> Result<Script, Unquotable> {
        if let Some(dpkg) = stage.dpkg {
            return self.stage_deb(stage, dpkg);
        }
        let id = stage.release;
        let release = format!("releases/{id}");
        let staging = format!("releases/.{id}.staging");
        let incoming = format!(".slipway/incoming/{}.tar.gz", stage.sha256);
        let live = format!(
            "release {id} is live with different content; build it again or deploy another commit"
        );
        let size = stage.tar_size.to_string();
        let bigger = stage.tar_size.saturating_add(1).to_string();
        let wrong_size = format!(
            "the uploaded artifact does not unpack to the {} bytes slipway wrote; refusing to unpack it",
            stage.tar_size
        );
        let unpack_failed = format!(
            "release {id} could not be unpacked (tar says why above; \"No space left on device\" means the disk is full); what was unpacked and the upload were removed"
        );
        let odd = format!(
            "release {id} unpacked with a setuid/setgid/sticky or world-writable entry, a hard link or a special file; refusing it"
        );
        // The stream is slipway's own (its sha256 was checked above); the
        // size bound and the check after unpacking hold even if it were not:
        // tar never reads more than the bytes slipway wrote, and nothing
        // but plain files, directories and symlinks of safe modes survives.
        let mut unpack = Script::new()
            .cmd(["rm", "-rf", &staging])?
            .cmd(["mkdir", "-m", "755", &staging])?
            .line(
                "if [ \"$(gzip -dc -- {} | head -c {} | wc -c)\" -ne {} ]; then printf '%s\\n' {} >&2; exit 65; fi",
                [&incoming, &bigger, &size, &wrong_size],
            )?
            .line(
                "if ! (umask 022; gzip -dc -- {} | head -c {} | tar -xf - -C {} --no-same-owner --no-same-permissions); then printf '%s\\n' {} >&2; exit 1; fi",
                [&incoming, &size, &staging, &unpack_failed],
            )?
            .line(
                "if [ -n \"$(find {} -mindepth 1 ! -type l \\( -perm /7002 -o \\( ! -type f ! -type d \\) -o \\( -type f -links +1 \\) \\) -print | head -n 1)\" ]; then rm -rf {}; printf '%s\\n' {} >&2; exit 65; fi",
                [&staging, &staging, &odd],
            )?;
        unpack = link_shared(unpack, &staging, stage.shared_dirs, stage.shared_files)?;
        unpack = unpack
            .line(
                "if [ -e {} ]; then if [ \"$(readlink current || true)\" = {} ]; then printf '%s\\n' {} >&2; exit 1; fi; rm -rf {}; fi",
                [&release, &release, &live, &release],
            )?
            .then(&write_nofollow(&staging, ".slipway-artifact", stage.sha256)?)
            .cmd(["mv", &staging, &release])?;
        self.verified_unless_staged(stage, "artifact", &incoming, Some(&staging), &unpack)
    }

    /// [`Layout::stage`] for a Debian package: verify, `dpkg --install`
    /// (purging it again if that fails), link shared paths, mark it staged,
    /// write the env file. A package already installed from the same bytes
    /// is reused.
    fn stage_deb(&self, stage: &Stage<'_>, dpkg: &Dpkg) -> Result<Script, Unquotable> {
        let id = stage.release;
        let release = format!("releases/{id}");
        let package = dpkg.package(id);
        let incoming = format!(".slipway/incoming/{}.deb", stage.sha256);
        let live = format!(
            "release {id} is live with different content; build it again or deploy another commit"
        );
        let failed = format!(
            "dpkg could not install {package} (see its output above); it was purged again and nothing was switched"
        );
        let mut install = Script::new();
        if let Some(root) = &dpkg.root {
            // dpkg creates its database but not the log's directory.
            let admindir = format!("{root}/var/lib/dpkg");
            let logdir = format!("{root}/var/log");
            install = install.cmd(["mkdir", "-p", &admindir, &logdir])?;
        }
        install = install.line(
            "if [ -e {} ] && [ \"$(readlink current || true)\" = {} ]; then printf '%s\\n' {} >&2; exit 1; fi",
            [&release, &release, &live],
        )?;
        // A failed postinst leaves a half-configured package and a partly
        // filled release directory; purge both so no release is left that a
        // later switch could pick. The install runs supervised (its own
        // process group, recorded under the release id) so `recover` sees
        // and can stop one a dead runner left.
        let job = Job {
            id,
            what: "dpkg",
            timeout: None,
        };
        let text = format!(
            "{}{}if [ \"$s\" -ne 0 ]; then\n  if {}; then rm -rf -- {}; fi\n  printf '%s\\n' {} >&2\n  exit 1\nfi\n",
            install.as_str(),
            self.supervised(&job, None, &dpkg.argv(&["--install", &incoming]))?,
            join(dpkg.argv(&["--purge", &package]))?,
            quote(&release)?,
            quote(&failed)?,
        );
        install = Script::from_trusted(text);
        if dpkg.sudo {
            // dpkg installs as root; the release must stay the deploy user's
            // like an unpacked tarball, for the env file and shared links.
            install = install.line("sudo -n chown -R \"$(id -u):$(id -g)\" -- {}", [&release])?;
        }
        install = link_shared(install, &release, stage.shared_dirs, stage.shared_files)?;
        install = install.then(&write_nofollow(
            &release,
            ".slipway-artifact",
            stage.sha256,
        )?);
        self.verified_unless_staged(stage, "package", &incoming, None, &install)
    }

    /// What staging a tarball and a package share: clean up after earlier
    /// runs and arrange to clean up after this one; verify the upload's
    /// sha256; run `body` unless the release was already staged from the
    /// same bytes; write the env file from stdin; drop the upload.
    ///
    /// Cleaning up: the upload and `scratch` (the staging directory) are
    /// removed when the script ends, whether it failed, was stopped or
    /// succeeded (by then the staging directory was renamed into place),
    /// so a failure, a full disk included, leaves no bytes behind. Before
    /// anything else, what killed or failed runs left is removed: every
    /// other file in `.slipway/incoming/` (uploads and partial uploads) and
    /// every `releases/.<id>.staging` directory. Both are scratch by name
    /// (no release is ever called `.<id>.staging`), the lock keeps any
    /// other rollout from using them now, and `current`, the previous
    /// release and pinned ones are never among them.
    fn verified_unless_staged(
        &self,
        stage: &Stage<'_>,
        what: &str,
        incoming: &str,
        scratch: Option<&str>,
        body: &Script,
    ) -> Result<Script, Unquotable> {
        let release = format!("releases/{}", stage.release);
        let mismatch = format!(
            "the uploaded {what} does not match sha256 {}; it was changed or truncated on the way",
            stage.sha256
        );
        let mut scratch_paths = vec![incoming];
        scratch_paths.extend(scratch);
        let script = self
            .start()?
            .remove_on_exit(&scratch_paths)?
            .line(
                "for f in .slipway/incoming/* .slipway/incoming/.[!.]*; do if [ -e \"$f\" ] && [ \"$f\" != {} ]; then rm -rf -- \"$f\"; fi; done",
                [incoming],
            )?
            .raw("for d in releases/.*.staging; do if [ -d \"$d\" ]; then rm -rf -- \"$d\"; fi; done")
            .line(
                "if ! printf '%s  %s\\n' {} {} | sha256sum -c --status; then printf '%s\\n' {} >&2; exit 65; fi",
                [stage.sha256, incoming, &mismatch],
            )?
            .line(
                "if [ -f {}/.slipway-artifact ] && [ \"$(cat {}/.slipway-artifact)\" = {} ]; then echo 'already staged; reusing it'; else :",
                [&release, &release, stage.sha256],
            )?;
        let mut text = script.as_str().to_owned();
        text.push_str(&indent(body.as_str()));
        text.push_str("fi\n");
        // The env file holds secrets: written to a fresh name mktemp
        // creates (O_EXCL, mode 0600) inside the release, then renamed over
        // whatever `.slipway.env` is, so it is never written through a link.
        let template = format!("{release}/.slipway.env.XXXXXX");
        let env_file = format!("{release}/.slipway.env");
        Script::from_trusted(text)
            .line(
                "(umask 077; t=$(mktemp {}); if cat > \"$t\" && mv -f -T \"$t\" {}; then :; else rm -f \"$t\"; exit 1; fi)",
                [&template, &env_file],
            )?
            .cmd(["rm", "-f", incoming])
    }

    /// Points `current` at `release` (or removes it, for a host that had no
    /// release before) by renaming a new symlink over it.
    pub fn switch(&self, release: Option<&str>, deploy_id: &str) -> Result<Script, Unquotable> {
        let script = self.start()?;
        match release {
            Some(id) => {
                let target = format!("releases/{id}");
                let tmp = format!(".slipway/current.{deploy_id}");
                script
                    .line("if [ ! -d {} ]; then printf 'release %s is not on this host\\n' {} >&2; exit 1; fi", [&target, id])?
                    .cmd(["rm", "-f", &tmp])?
                    .cmd(["ln", "-s", &target, &tmp])?
                    .cmd(["mv", "-T", "-f", &tmp, "current"])?
                    .cmd(["touch", &target])
            }
            None => script.cmd(["rm", "-f", "current"]),
        }
    }

    /// Copies `paths` (content the live release wrote into its own tree)
    /// from the live release into `release`, just before the switch.
    pub fn copy_back(&self, release: &str, paths: &[String]) -> Result<Script, Unquotable> {
        let mut script = self.start()?;
        for path in paths {
            let path = path.trim_matches('/');
            let from = format!("current/{path}");
            let to = format!("releases/{release}/{path}");
            let parent = to
                .rsplit_once('/')
                .map_or_else(|| to.clone(), |(p, _)| p.to_owned());
            script = script.line(
                "if [ -e {} ] && [ \"$(readlink current)\" != {} ]; then rm -rf {} && mkdir -p {} && cp -a {} {}; fi",
                [&from, &format!("releases/{release}"), &to, &parent, &from, &to],
            )?;
        }
        Ok(script)
    }

    /// Records a canary in progress (see `canary.rs`); it survives the
    /// process so `promote` can run from elsewhere, hours later.
    pub fn write_canary(&self, json: &str) -> Result<Script, Unquotable> {
        self.start()?.line(
            "printf '%s\\n' {} > .slipway/canary.json.tmp && mv -f .slipway/canary.json.tmp .slipway/canary.json",
            [json],
        )
    }

    pub fn clear_canary(&self) -> Result<Script, Unquotable> {
        Ok(self.start()?.raw("rm -f .slipway/canary.json"))
    }

    pub fn close(&self) -> Result<Script, Unquotable> {
        Ok(self.start()?.raw("touch .slipway/maintenance"))
    }

    pub fn open(&self) -> Result<Script, Unquotable> {
        Ok(self.start()?.raw("rm -f .slipway/maintenance"))
    }

    /// Runs a configured command (deploy hook, workers, health) in `dir`,
    /// supervised: in its own process group, recorded in
    /// [`Layout::pid_file`] while it runs, bounded on the host by GNU
    /// `timeout` [`GRACE`] after `job.timeout`; exits with its status.
    pub fn user_command(
        &self,
        job: &Job<'_>,
        dir: &str,
        env: &[(String, String)],
        command: &str,
    ) -> Result<Script, Unquotable> {
        let argv = user_argv(env, command);
        let text = format!(
            "{}{}",
            self.supervised(job, Some(dir), &argv)?,
            "if [ \"$s\" -ne 0 ]; then exit \"$s\"; fi\n"
        );
        Ok(Script::from_trusted(format!("set -eu\n{text}")))
    }

    /// Runs a configured command in the live release, if there is one,
    /// supervised like [`Layout::user_command`].
    pub fn in_current(
        &self,
        job: &Job<'_>,
        env: &[(String, String)],
        command: &str,
    ) -> Result<Script, Unquotable> {
        let current = self.current();
        let inner = self.user_command(job, &current, env, command)?;
        let text = format!(
            "set -eu\nif [ -d {} ]; then\n{}fi\n",
            quote(&current)?,
            indent(inner.as_str())
        );
        Ok(Script::from_trusted(text))
    }

    /// Where the process groups of running commands are recorded.
    pub fn run_dir(&self) -> String {
        format!("{}/.slipway/run", self.root)
    }

    /// The pid file of `job` while it runs.
    pub fn pid_file(&self, job: &Job<'_>) -> String {
        format!("{}/{}.{}.pid", self.run_dir(), job.id, job.what)
    }

    /// Shell lines that run `argv` (in `dir`, else where the script is) as
    /// `job`: in its own session and process group (`setsid`), bounded on
    /// the host by GNU `timeout` when the job has one, its process group
    /// and the group leader's start time recorded in [`Layout::pid_file`]
    /// (mktemp + rename) while it runs. The lines end with the command's
    /// exit status in `$s`; the caller decides what a failure does.
    ///
    /// The host's deadline lies [`GRACE`] past slipway's own, so slipway
    /// normally stops the command itself (and says so); the host's deadline
    /// is for a runner that died or lost its connection. It sends TERM to
    /// the whole group, then KILL twice [`GRACE`] later: `timeout` also
    /// arms that KILL when it receives slipway's own TERM, which must not
    /// beat slipway's KILL (sent [`GRACE`] after its TERM) and hide it.
    fn supervised(
        &self,
        job: &Job<'_>,
        dir: Option<&str>,
        argv: &[String],
    ) -> Result<String, Unquotable> {
        let mut words: Vec<String> = vec!["setsid".into()];
        if let Some(timeout) = job.timeout {
            words.extend([
                "timeout".into(),
                "-k".into(),
                seconds(GRACE * 2),
                seconds(timeout + GRACE),
            ]);
        }
        words.extend(argv.iter().cloned());
        // In a shell without job control, an `&` job stays in the shell's
        // process group, so it is never a group leader and `setsid` makes
        // the new session in place: `$!` is the new group's id.
        let start = match dir {
            Some(dir) => format!("  (cd {} && exec {}) &\n", quote(dir)?, join(&words)?),
            None => format!("  (exec {}) &\n", join(&words)?),
        };
        let vars = Script::new().line("r={}; f={}", [&self.run_dir(), &self.pid_file(job)])?;
        Ok(format!(
            "{}{BEFORE}\n{start}{RECORD}\n",
            vars.as_str()
                .strip_prefix("set -eu\n")
                .unwrap_or(vars.as_str())
        ))
    }

    /// Stops `job` if it still runs: TERM to its process group, KILL
    /// [`GRACE`] later if anything is left, waiting until the group is gone
    /// (or KILL could not end it). Prints one `stopped` line (see
    /// [`Layout::stop_orphans`]); nothing when the job's pid file is gone
    /// (it ended by itself).
    pub fn stop(&self, job: &Job<'_>) -> Result<Script, Unquotable> {
        Ok(Script::new()
            .line("g={}", [&tenths(GRACE)])?
            .raw(GROUPS)
            .line("r={}; f={}", [&self.run_dir(), &self.pid_file(job)])?
            .raw(STOP_ONE))
    }

    /// Stops every command recorded under `.slipway/run` (left running by
    /// a runner that died), as [`Layout::stop`] does one, printing one
    /// `stopped<TAB><id>.<what><TAB><pgid><TAB>gone|term|kill|alive` line
    /// per pid file (see `remote::Stopped`), and removes the pid files.
    /// Only for a rollout known to be dead: it stops a live one's commands
    /// just the same.
    pub fn stop_orphans(&self) -> Result<Script, Unquotable> {
        Ok(Script::new()
            .line("if [ ! -d {} ]; then exit 0; fi", [&self.run_dir()])?
            .raw_with("cd", [&self.run_dir()])?
            .line("g={}", [&tenths(GRACE)])?
            .raw(GROUPS)
            .raw(STOP_ALL))
    }

    /// Lists the commands still running on the host, one
    /// `running<TAB><id>.<what><TAB><pgid>` line each (see
    /// `remote::Running`).
    /// [`Layout::read_state`] includes these lines.
    pub fn running(&self) -> Result<Script, Unquotable> {
        Script::new()
            .line("if [ ! -d {} ]; then exit 0; fi", [&self.root])?
            .raw_with("cd", [&self.root])
            .map(|s| s.raw(GROUPS).raw(RUNNING))
    }

    /// Reports what a deploy needs of this host as `key<TAB>value` lines:
    /// the login user, whether `deploy_to` is writable, free space, and the
    /// tools the scripts use. Never fails: a missing piece is a line.
    /// Read-only: a `deploy_to` that does not exist yet is not created;
    /// its nearest existing parent must be writable instead, since the
    /// first deploy creates it there.
    pub fn check(&self) -> Result<Script, Unquotable> {
        Ok(Script::from_trusted(format!(
            "d={}\n{CHECK}",
            crate::transport::quote::quote(&self.root)?
        )))
    }

    /// Records the phase of the rollout in flight.
    pub fn write_journal(&self, json: &str) -> Result<Script, Unquotable> {
        self.start()?.line(
            "printf '%s\\n' {} > .slipway/journal.json.tmp && mv -f .slipway/journal.json.tmp .slipway/journal.json",
            [json],
        )
    }

    pub fn clear_journal(&self) -> Result<Script, Unquotable> {
        Ok(self.start()?.raw("rm -f .slipway/journal.json"))
    }

    /// Appends one line to the history.
    pub fn record(&self, json: &str) -> Result<Script, Unquotable> {
        self.prepare()?
            .line("printf '%s\\n' {} >> .slipway/history.jsonl", [json])
    }

    pub fn read_history(&self) -> Result<Script, Unquotable> {
        Script::new().line(
            "if [ -f {}/.slipway/history.jsonl ]; then cat {}/.slipway/history.jsonl; fi",
            [&self.root, &self.root],
        )
    }

    /// Deletes the named releases.
    pub fn prune(&self, releases: &[String]) -> Result<Script, Unquotable> {
        let mut argv = vec!["rm".to_owned(), "-rf".to_owned(), "--".to_owned()];
        argv.extend(releases.iter().map(|id| format!("releases/{id}")));
        self.start()?.cmd(argv)
    }

    /// Purges the named releases' packages, then deletes what is left of
    /// their directories. Purging a package that is not installed (a
    /// release from before `artifact = "deb"`) only makes dpkg warn.
    pub fn prune_packages(&self, releases: &[String], dpkg: &Dpkg) -> Result<Script, Unquotable> {
        let mut script = self.start()?;
        for id in releases {
            script = script.cmd(dpkg.argv(&["--purge", &dpkg.package(id)]))?;
        }
        let mut argv = vec!["rm".to_owned(), "-rf".to_owned(), "--".to_owned()];
        argv.extend(releases.iter().map(|id| format!("releases/{id}")));
        script.cmd(argv)
    }
}

impl Layout {
    /// An nginx `server {}` fragment for this host: serves
    /// `current/<public>`, answers 503 with `Retry-After` while the
    /// maintenance flag exists, and lets health checks (which send
    /// `X-Slipway-Health`) through so a closed cluster can be checked.
    /// nginx resolves the `current` symlink on every request (no
    /// `open_file_cache`), so a switch takes effect at once.
    ///
    /// # Errors
    /// When a path would not be read back by nginx as the same path (see
    /// [`NginxUnsafe`]).
    pub fn nginx_snippet(&self, public: &str, retry_after: u32) -> Result<String, NginxUnsafe> {
        let public = public.trim_matches('/');
        if public.split('/').any(|part| part == "..") {
            return Err(NginxUnsafe(public.to_owned()));
        }
        let flag = format!("{}/.slipway/maintenance", self.root);
        let root = if public.is_empty() {
            self.current()
        } else {
            format!("{}/{public}", self.current())
        };
        // Paths are written bare into directives; anything but plain
        // characters (`;`, braces, quotes, `$`, `#`, whitespace) would be
        // nginx syntax, so it is refused rather than escaped.
        for path in [&root, &flag] {
            if !path.chars().all(crate::config::is_plain_path_char) {
                return Err(NginxUnsafe(path.clone()));
            }
        }
        Ok(format!(
            r#"# slipway: serve {root}; 503 + Retry-After while closed for a deploy.
root {root};
set $slipway_closed "";
if (-f {flag}) {{ set $slipway_closed "1"; }}
if ($http_x_slipway_health) {{ set $slipway_closed ""; }}
if ($slipway_closed) {{ return 503; }}
error_page 503 @slipway_closed;
location @slipway_closed {{
    add_header Retry-After {retry_after} always;
    add_header Cache-Control "no-store" always;
    default_type text/plain;
    return 503 "Down for a deploy; back in a moment.
";
}}
"#,
            flag = flag,
        ))
    }
}

/// A path that cannot be written into an nginx snippet as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` cannot go into an nginx snippet: nginx paths here may use only letters, digits and `/ . _ - + @ , :` (and no `..`); move the deploy root or the public directory to such a path"
)]
pub struct NginxUnsafe(pub String);

/// What [`Layout::stage`] needs.
pub struct Stage<'a> {
    pub release: &'a str,
    pub sha256: &'a str,
    /// Length of the tar stream inside the uploaded `.tar.gz` (as slipway
    /// wrote it); unpacking reads no more. Unused for a package.
    pub tar_size: u64,
    pub shared_dirs: &'a [String],
    pub shared_files: &'a [String],
    /// Install with dpkg instead of unpacking a tarball.
    pub dpkg: Option<&'a Dpkg>,
}

/// How one host installs and purges release packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dpkg {
    /// Package names are `<prefix>-<release id, lowercased>`.
    pub prefix: String,
    /// Run dpkg through `sudo -n` (never prompting).
    pub sudo: bool,
    /// The host's root when it is not the machine's (`local:` hosts); dpkg
    /// then installs, keeps its database and logs under it.
    pub root: Option<String>,
    /// Configured options, after the ones derived from `root`, so they win.
    pub args: Vec<String>,
}

impl Dpkg {
    /// Settings for a host whose root `transport.resolve("/")` is `host_root`.
    pub fn new(prefix: String, sudo: bool, args: Vec<String>, host_root: &str) -> Self {
        let trimmed = host_root.trim_end_matches('/');
        Self {
            prefix,
            sudo,
            root: (!trimmed.is_empty()).then(|| trimmed.to_owned()),
            args,
        }
    }

    pub fn package(&self, release: &str) -> String {
        crate::artifact::package_name(&self.prefix, release)
    }

    /// `[sudo -n] dpkg <root options> <configured options> <action...>`.
    fn argv(&self, action: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = Vec::new();
        if self.sudo {
            argv.extend(["sudo".to_owned(), "-n".to_owned()]);
        }
        argv.push("dpkg".to_owned());
        if let Some(root) = &self.root {
            argv.push(format!("--instdir={root}"));
            argv.push(format!("--admindir={root}/var/lib/dpkg"));
            argv.push(format!("--log={root}/var/log/dpkg.log"));
            // Maintainer scripts would otherwise chroot into a folder
            // without a shell; they get the root as $DPKG_ROOT instead.
            argv.push("--force-script-chrootless".to_owned());
        }
        argv.extend(self.args.iter().cloned());
        argv.extend(action.iter().map(|a| (*a).to_owned()));
        argv
    }
}

/// A duration as `timeout(1)` reads it: seconds, with milliseconds.
fn seconds(d: Duration) -> String {
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// A duration in tenths of a second, the stop scripts' polling step.
fn tenths(d: Duration) -> String {
    (d.as_millis() / 100).to_string()
}

/// Writes `content` and a newline to `dir/name` without following any link
/// there: into a fresh mktemp file in `dir`, renamed over `name`.
fn write_nofollow(dir: &str, name: &str, content: &str) -> Result<Script, Unquotable> {
    let template = format!("{dir}/{name}.XXXXXX");
    let dest = format!("{dir}/{name}");
    Script::new().line(
        "t=$(mktemp {}); printf '%s\\n' {} > \"$t\"; chmod 644 \"$t\"; mv -f -T \"$t\" {}",
        [&template, content, &dest],
    )
}

/// Links each shared dir and file into the release being staged, with a
/// relative link (`../../shared/x` from `releases/<id>/x`).
fn link_shared(
    mut script: Script,
    staging: &str,
    dirs: &[String],
    files: &[String],
) -> Result<Script, Unquotable> {
    for dir in dirs {
        let shared = format!("shared/{dir}");
        script = script.cmd(["mkdir", "-p", &shared])?;
        script = link_one(script, staging, dir)?;
    }
    for file in files {
        let shared = format!("shared/{file}");
        let missing = format!(
            "shared file {shared} does not exist on this host; create it once there (slipway never creates or copies it)"
        );
        script = script.line(
            "if [ ! -e {} ]; then printf '%s\\n' {} >&2; exit 66; fi",
            [&shared, &missing],
        )?;
        script = link_one(script, staging, file)?;
    }
    Ok(script)
}

fn link_one(script: Script, staging: &str, path: &str) -> Result<Script, Unquotable> {
    let path = path.trim_matches('/');
    let depth = path.split('/').count() + 1; // + `releases/<id>`
    let target = format!("{}shared/{path}", "../".repeat(depth));
    let link = format!("{staging}/{path}");
    let parent = match path.rsplit_once('/') {
        Some((parent, _)) => format!("{staging}/{parent}"),
        None => staging.to_owned(),
    };
    script
        .cmd(["rm", "-rf", &link])?
        .cmd(["mkdir", "-p", &parent])?
        .cmd(["ln", "-s", &target, &link])
}

fn indent(text: &str) -> String {
    text.strip_prefix("set -eu\n")
        .unwrap_or(text)
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect()
}

const CHECK: &str = r#"printf 'user\t%s\n' "$(id -un)"
p="$d"; while [ ! -d "$p" ]; do p=$(dirname "$p"); done
if [ "$p" != "$d" ]; then printf 'missing\t%s\n' "$p"; fi
if [ -w "$p" ]; then printf 'writable\tyes\n'; else printf 'writable\tno\n'; fi
printf 'free_kib\t%s\n' "$(df -Pk "$p" 2>/dev/null | awk 'NR==2 {print $4}')"
for t in sh tar gzip sha256sum readlink mv ln cp mktemp head find stat date touch sed setsid timeout; do if command -v "$t" >/dev/null 2>&1; then printf 'tool	%s	yes
' "$t"; else printf 'tool	%s	no
' "$t"; fi; done
if mv --help 2>&1 | grep -q -- '--no-target-directory'; then printf 'tool\tmv -T\tyes\n'; else printf 'tool\tmv -T\tno\n'; fi"#;

/// Prints the lock file (`lock`, its first 64 KiB on one line) and its age
/// in milliseconds by the host's own clock (`lock_age`), if there is one.
/// The age is measured where the lease is renewed, so the clocks of the
/// runners never matter.
macro_rules! lock_seen {
    () => {
        r#"if [ -f .slipway/lock ]; then printf 'lock\t%s\n' "$(head -c 65536 .slipway/lock | tr -d '\n')"; if m=$(LC_ALL=C stat -c %.3Y .slipway/lock 2>/dev/null); then printf 'lock_age\t%s\n' "$(( $(date +%s%3N) - $(printf %s "$m" | tr -d .) ))"; fi; fi"#
    };
}

const LOCK_SEEN: &str = lock_seen!();

/// Refuses (exit [`FROZEN`], printing the record) while deploys are frozen.
const FREEZE_CHECK: &str = r#"if [ -f .slipway/freeze ]; then printf 'freeze\t%s\n' "$(head -c 65536 .slipway/freeze | tr -d '\n')"; exit 76; fi"#;

/// Sets `$held` to the deploy id at the start of the lock file (see
/// `state::LockOwner`: the id is its first field), or to nothing when the
/// file is missing or not slipway's. Callers compare it whole with `=`.
const HELD_ID: &str = r#"held=$(LC_ALL=C sed -n '1s/^{"deploy_id":"\([^"\\]*\)".*$/\1/p' .slipway/lock 2>/dev/null || true)"#;

/// Prints the host's state. Release ids are slipway's own (`[0-9A-Za-z-]`),
/// so `ls` output is safe to read line by line.
const READ_STATE: &str = concat!(
    r#"printf 'root\t1\n'
if [ -L current ]; then printf 'current\t%s\n' "$(readlink current)"; fi
if [ -e .slipway/maintenance ]; then printf 'closed\t1\n'; fi
"#,
    lock_seen!(),
    r#"
if [ -f .slipway/freeze ]; then printf 'freeze\t%s\n' "$(head -c 65536 .slipway/freeze | tr -d '\n')"; fi
if [ -f .slipway/journal.json ]; then printf 'journal\t%s\n' "$(tr -d '\n' < .slipway/journal.json)"; fi
if [ -f .slipway/canary.json ]; then printf 'canary\t%s\n' "$(tr -d '\n' < .slipway/canary.json)"; fi
if [ -f .slipway/pinned ]; then while IFS= read -r p; do printf 'pinned\t%s\n' "$p"; done < .slipway/pinned; fi
if [ -d releases ]; then ls -1t releases | while IFS= read -r r; do printf 'release\t%s\n' "$r"; done; fi"#
);

/// Before a supervised command starts: a stop marker (`$f.stop`, left by
/// [`Layout::stop`] when slipway gave up on the command before its pid
/// file existed) means it must not run at all.
const BEFORE: &str = r#"mkdir -p "$r"
if [ -e "$f.stop" ]; then rm -f "$f.stop"; s=143; else"#;

/// Records the process group just started (`$!`) in the pid file `$f`,
/// through a fresh mktemp file in `$r` renamed over it; stops it at once if
/// a stop marker appeared meanwhile; waits for the command, leaves its exit
/// status in `$s` and removes the pid file and marker. The leader's start
/// time (field 22 of `/proc/<pid>/stat`, read after the command name, which
/// may hold spaces) tells it from a later process that gets the same pid.
///
/// The marker closes the race with a stop: the stop script creates the
/// marker, then looks for the pid file; this script renames the pid file
/// into place, then looks for the marker. One of the two sees the other's
/// file. Before `setsid` has run, the new process is not yet a group, so
/// it is signalled by pid.
const RECORD: &str = r#"  p=$!
  t=$(mktemp "$r/.pid.XXXXXX")
  printf '%s %s\n' "$p" "$(sed 's/.*) //' "/proc/$p/stat" | cut -d' ' -f20)" > "$t"
  mv -f -T "$t" "$f"
  if [ -e "$f.stop" ]; then kill -s TERM -- "-$p" 2>/dev/null || kill -s TERM "$p" 2>/dev/null || :; fi
  s=0; wait "$p" || s=$?
  rm -f "$f" "$f.stop"
fi"#;

/// Shell functions over recorded process groups; `$g` is the grace period
/// in tenths of a second, measured on the clock (`/proc/uptime`, in
/// hundredths), not counted in polls, which a loaded host slows down. A group "lives" while a process that is not a
/// zombie has it as its group (field 5 of `/proc/<pid>/stat`): a zombie
/// nobody reaps (an init that does not) is not running. A group is "ours"
/// when its leader is gone (the kernel hands out no pid that is a live
/// group's id) or has the recorded start time. Group ids 0 and 1 are never
/// signalled: `kill -- -0` and `-1` mean this shell's group and everyone.
const GROUPS: &str = r#"in_group() { sed -n 's/.*) [^Z] [^ ]* \([0-9]*\) .*/\1/p' /proc/[0-9]*/stat 2>/dev/null | grep -qx "$1"; }
ours() { if [ -r "/proc/$1/stat" ]; then [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f20)" = "$2" ]; fi; }
now_cs() { read -r u _ < /proc/uptime; echo $(( ${u%.*} * 100 + 1${u#*.} - 100 )); }
gone_within() { e=$(( $(now_cs) + $2 * 10 )); while in_group "$1"; do if [ "$(now_cs)" -ge "$e" ]; then return 1; fi; sleep 0.1; done; }
recorded() { pg=; st=; read -r pg st < "$1" || :; case "$pg" in ''|*[!0-9]*) pg=0 ;; esac; [ "$pg" -gt 1 ] && in_group "$pg" && ours "$pg" "$st"; }
stop_group() {
  how=gone
  if recorded "$1"; then
    kill -s TERM -- "-$pg" 2>/dev/null || :
    how=term
    if ! gone_within "$pg" "${g:-50}"; then
      kill -s KILL -- "-$pg" 2>/dev/null || :
      how=kill
      gone_within "$pg" 50 || how=alive
    fi
  fi
  rm -f "$1"
  printf 'stopped\t%s\t%s\t%s\n' "$(basename "$1" .pid)" "$pg" "$how"
}"#;

/// Stops the job whose pid file is `$f`: first leaves the stop marker, so
/// a command that has not recorded itself yet never runs on (see
/// [`RECORD`]); the marker goes once a live group was found and stopped,
/// since its wrapper has looked for it by then or never will.
const STOP_ONE: &str = r#"mkdir -p "$r"
touch "$f.stop"
if [ -f "$f" ]; then stop_group "$f"; if [ "$how" != gone ]; then rm -f "$f.stop"; fi; fi"#;

/// Stops every recorded group (run in `.slipway/run`) and removes the
/// temp files of records a dead wrapper never renamed and stale stop
/// markers.
const STOP_ALL: &str = r#"for f in *.pid; do if [ -f "$f" ]; then stop_group "$f"; fi; done
rm -f .pid.* ./*.stop"#;

/// Lists the recorded groups that still run (run in the deploy root).
const RUNNING: &str = r#"if [ -d .slipway/run ]; then for f in .slipway/run/*.pid; do if [ -f "$f" ] && recorded "$f"; then printf 'running\t%s\t%s\n' "$(basename "$f" .pid)" "$pg"; fi; done; fi"#;

#[cfg(test)]
mod tests {
    //! The staging script run for real: `sh`, GNU tar and coreutils on a
    //! temporary deploy root, as a `local:` host runs it.

    use std::io::Write as _;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::path::Path;
    use std::process::{Command, Stdio};

    use super::*;

    /// A tar.gz of `files` (path, mode, content) made with GNU tar from a
    /// real tree; returns its bytes and the length of its tar stream.
    fn targz(files: &[(&str, u32, &str)]) -> (Vec<u8>, u64) {
        let dir = tempfile::tempdir().unwrap();
        for (path, mode, content) in files {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, content).unwrap();
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        let out = Command::new("tar")
            .args(["-cf", "-", "-C"])
            .arg(dir.path())
            .arg(".")
            .output()
            .unwrap();
        assert!(out.status.success());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&out.stdout).unwrap();
        (gz.finish().unwrap(), out.stdout.len() as u64)
    }

    /// Uploads `bytes` as the incoming artifact and runs the staging script
    /// with `tar_size`; returns the exit code and stderr.
    fn stage(root: &Path, bytes: &[u8], tar_size: u64) -> (i32, String) {
        let layout = Layout::new(root.to_str().unwrap().to_owned());
        let sha256 = {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(bytes))
        };
        std::fs::create_dir_all(root.join(".slipway/incoming")).unwrap();
        std::fs::create_dir_all(root.join("releases")).unwrap();
        std::fs::write(
            root.join(format!(".slipway/incoming/{sha256}.tar.gz")),
            bytes,
        )
        .unwrap();
        let script = layout
            .stage(&Stage {
                release: "r1",
                sha256: &sha256,
                tar_size,
                shared_dirs: &[],
                shared_files: &[],
                dpkg: None,
            })
            .unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script.as_str())
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"DB_PASSWORD=hunter2\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn a_stream_longer_than_slipway_wrote_is_not_unpacked() {
        // The host-side bound: even bytes whose sha256 matched are unpacked
        // only up to the tar length slipway recorded when it wrote them.
        let root = tempfile::tempdir().unwrap();
        let (bytes, len) = targz(&[("index.html", 0o644, "v1\n")]);
        let (code, stderr) = stage(root.path(), &bytes, len - 1024);
        assert_eq!(code, 65, "{stderr}");
        assert!(stderr.contains("does not unpack to the"), "{stderr}");
        assert!(!root.path().join("releases/r1").exists());

        let (code, stderr) = stage(root.path(), &bytes, len);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(
            std::fs::read_to_string(root.path().join("releases/r1/index.html")).unwrap(),
            "v1\n"
        );
    }

    #[test]
    fn no_setuid_bits_world_writable_modes_or_special_files_survive_unpacking() {
        // GNU tar, told not to keep permissions under umask 022, already
        // drops setuid/setgid/sticky and world-write bits.
        for mode in [0o4755, 0o2755, 0o1755, 0o666, 0o777] {
            let root = tempfile::tempdir().unwrap();
            let (bytes, len) = targz(&[("index.html", 0o644, "v1\n"), ("bad", mode, "x")]);
            let (code, stderr) = stage(root.path(), &bytes, len);
            assert_eq!(code, 0, "{stderr}");
            let meta = std::fs::metadata(root.path().join("releases/r1/bad")).unwrap();
            assert_eq!(
                meta.permissions().mode() & 0o7022,
                0,
                "mode {mode:o} became {:o}",
                meta.permissions().mode()
            );
        }
        // What tar does create, the check after unpacking refuses: a fifo.
        let root = tempfile::tempdir().unwrap();
        let tree = tempfile::tempdir().unwrap();
        std::fs::write(tree.path().join("index.html"), "v1\n").unwrap();
        let made = Command::new("mkfifo")
            .arg(tree.path().join("pipe"))
            .status()
            .unwrap();
        assert!(made.success());
        let out = Command::new("tar")
            .args(["-cf", "-", "-C"])
            .arg(tree.path())
            .arg(".")
            .output()
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&out.stdout).unwrap();
        let (code, stderr) = stage(root.path(), &gz.finish().unwrap(), out.stdout.len() as u64);
        assert_eq!(code, 65, "{stderr}");
        assert!(stderr.contains("a hard link or a special file"), "{stderr}");
        assert!(!root.path().join("releases/r1").exists());
        assert!(!root.path().join("releases/.r1.staging").exists());
    }

    #[test]
    fn the_env_file_is_never_written_through_a_link() {
        // A release already staged (reused) whose env file is a symlink to
        // a file outside: the secrets replace the link, the target stays.
        let root = tempfile::tempdir().unwrap();
        let (bytes, len) = targz(&[("index.html", 0o644, "v1\n")]);
        assert_eq!(stage(root.path(), &bytes, len).0, 0);
        let victim = root.path().join("victim.txt");
        std::fs::write(&victim, "untouched\n").unwrap();
        let env = root.path().join("releases/r1/.slipway.env");
        std::fs::remove_file(&env).unwrap();
        symlink(&victim, &env).unwrap();

        let (code, stderr) = stage(root.path(), &bytes, len);
        assert_eq!(code, 0, "{stderr}");
        assert!(stderr.is_empty() || !stderr.contains("hunter2"));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
        let meta = std::fs::symlink_metadata(&env).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&env).unwrap(),
            "DB_PASSWORD=hunter2\n"
        );
    }

    /// Runs a layout script with `sh`; its exit code and output.
    fn sh(script: &Script) -> (i32, String) {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script.as_str())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[test]
    fn lock_ids_are_compared_whole_never_as_substrings() {
        // Before: `grep -qF <id>` let rollout `a` (or `b`, or `"`) release,
        // renew or break the lock of rollout `ab`.
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(root.path().to_str().unwrap().to_owned());
        let owner =
            r#"{"deploy_id":"ab","who":"ann","machine":"m","pid":1,"since":"t","lease_ms":1}"#;
        assert_eq!(sh(&layout.lock("ab", owner, false).unwrap()).0, 0);
        let lock = root.path().join(".slipway/lock");
        for other in ["a", "b", "\"", "deploy_id", "", "ab\""] {
            assert_eq!(sh(&layout.unlock(other).unwrap()).0, 0);
            assert_eq!(
                sh(&layout.renew(other).unwrap()).1.trim(),
                "lost",
                "{other}"
            );
            assert_eq!(sh(&layout.break_expired(other, 0).unwrap()).0, 0);
            assert!(lock.exists(), "`{other}` removed the lock of `ab`");
        }
        assert_eq!(sh(&layout.renew("ab").unwrap()).1.trim(), "renewed");
        // Its lease (1 ms) has expired by this host's clock: breakable.
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            sh(&layout.break_expired("ab", 60_000).unwrap()).1.trim(),
            ""
        );
        assert!(lock.exists(), "a lease of a minute is not expired");
        assert_eq!(
            sh(&layout.break_expired("ab", 1).unwrap()).1.trim(),
            "broken"
        );
        assert!(!lock.exists());
    }

    #[test]
    fn a_held_lock_shows_its_holder_and_age_and_a_freeze_refuses_first() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(root.path().to_str().unwrap().to_owned());
        let owner =
            r#"{"deploy_id":"d1","who":"ann","machine":"m","pid":1,"since":"t","lease_ms":30000}"#;
        assert_eq!(sh(&layout.lock("d1", owner, false).unwrap()).0, 0);
        let (code, out) = sh(&layout.lock("d2", owner, false).unwrap());
        assert_eq!(code, LOCK_HELD, "{out}");
        let seen = crate::rollout::HostState::parse(&out);
        assert_eq!(seen.lock.unwrap().unwrap().deploy_id, "d1");
        assert!(seen.lock_age.unwrap() < std::time::Duration::from_secs(5));

        let freeze = r#"{"who":"bob","machine":"m","since":"t","message":"sale"}"#;
        assert_eq!(sh(&layout.freeze(freeze).unwrap()).0, 0);
        let (code, out) = sh(&layout.lock("d2", owner, false).unwrap());
        assert_eq!(code, FROZEN, "{out}");
        let seen = crate::rollout::HostState::parse(&out);
        assert_eq!(seen.freeze.unwrap().unwrap().message, "sale");
        assert_eq!(sh(&layout.thaw().unwrap()).0, 0);
        assert_eq!(sh(&layout.lock("d2", owner, false).unwrap()).0, LOCK_HELD);
    }

    #[test]
    fn a_failed_staging_leaves_neither_its_upload_nor_its_staging_directory() {
        // The unpack fails half way (a stream cut short): nothing of it may
        // stay on the host's disk.
        let root = tempfile::tempdir().unwrap();
        let (bytes, len) = targz(&[("index.html", 0o644, "v1\n"), ("big", 0o644, "x")]);
        let cut = &bytes[..bytes.len() / 2];
        let (code, stderr) = stage(root.path(), cut, len);
        assert_ne!(code, 0, "{stderr}");
        assert!(!root.path().join("releases/.r1.staging").exists());
        assert!(!root.path().join("releases/r1").exists());
        let incoming: Vec<_> = std::fs::read_dir(root.path().join(".slipway/incoming"))
            .unwrap()
            .collect();
        assert!(incoming.is_empty(), "{incoming:?}");
    }

    #[test]
    fn staging_removes_what_earlier_runs_left_and_keeps_every_release() {
        // A killed run left an upload, a partial upload and a half-unpacked
        // staging directory; the live, previous and pinned releases stay.
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for dir in [
            "releases/r0",
            "releases/rp",
            "releases/rpin",
            "releases/.r9.staging/a",
        ] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        symlink("releases/r0", r.join("current")).unwrap();
        std::fs::create_dir_all(r.join(".slipway/incoming")).unwrap();
        std::fs::write(r.join(".slipway/pinned"), "rpin\n").unwrap();
        for name in ["0123.tar.gz", "4567.deb.part", ".hidden"] {
            std::fs::write(r.join(".slipway/incoming").join(name), "left").unwrap();
        }

        let (bytes, len) = targz(&[("index.html", 0o644, "v1\n")]);
        let (code, stderr) = stage(r, &bytes, len);
        assert_eq!(code, 0, "{stderr}");

        let mut releases: Vec<String> = std::fs::read_dir(r.join("releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        releases.sort();
        assert_eq!(releases, ["r0", "r1", "rp", "rpin"]);
        assert_eq!(
            std::fs::read_link(r.join("current")).unwrap(),
            Path::new("releases/r0")
        );
        let incoming: Vec<_> = std::fs::read_dir(r.join(".slipway/incoming"))
            .unwrap()
            .collect();
        assert!(incoming.is_empty(), "{incoming:?}");
    }

    #[test]
    fn staging_scripts_snapshot() {
        // What runs on every host when it stages, tarball and package: the
        // clean-up trap and the sweep of earlier runs' leftovers first.
        let layout = Layout::new("/srv/shop".into());
        let dirs = ["public/uploads".to_owned()];
        let files = ["config/app.yml".to_owned()];
        let tarball = Stage {
            release: "20260101-120000-abc1234",
            sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            tar_size: 10240,
            shared_dirs: &dirs,
            shared_files: &files,
            dpkg: None,
        };
        insta::assert_snapshot!("stage_tarball", layout.stage(&tarball).unwrap().as_str());
        let dpkg = Dpkg::new("shop".into(), true, Vec::new(), "/");
        let package = Stage {
            dpkg: Some(&dpkg),
            ..tarball
        };
        insta::assert_snapshot!("stage_deb", layout.stage(&package).unwrap().as_str());
    }

    #[test]
    fn nginx_snippet_serves_the_public_dir_of_current() {
        let snippet = Layout::new("/srv/shop".into())
            .nginx_snippet("/public/", 7)
            .unwrap();
        assert!(
            snippet.contains("root /srv/shop/current/public;\n"),
            "{snippet}"
        );
        assert!(
            snippet.contains("if (-f /srv/shop/.slipway/maintenance)"),
            "{snippet}"
        );
    }

    #[test]
    fn nginx_snippet_refuses_paths_that_would_be_nginx_syntax() {
        // A root or public dir is written bare into directives: `;` would end
        // one, `$` expand a variable, a brace open a block.
        for root in ["/srv/a;b", "/srv/$host", "/srv/a b", "/srv/{x}", "/srv/\"x"] {
            let err = Layout::new(root.into())
                .nginx_snippet("public", 7)
                .unwrap_err();
            assert!(err.0.starts_with(root), "{root}: {err}");
        }
        let layout = Layout::new("/srv/shop".into());
        for public in ["pub;lic", "../../etc", "a$b"] {
            assert!(layout.nginx_snippet(public, 7).is_err(), "{public}");
        }
    }
}

#[cfg(test)]
mod supervised {
    //! The supervised-command scripts: pinned as text (what runs on a
    //! server, for a reviewer), and run for real with `sh` on a temporary
    //! deploy root, as a `local:` host runs them.

    use std::os::unix::process::CommandExt as _;
    use std::process::Command;
    use std::time::{Duration, Instant};

    use super::*;

    const ROOT: &str = "/srv/shop";

    fn job(what: &'static str, timeout: Option<Duration>) -> Job<'static> {
        Job {
            id: "d18f2a",
            what,
            timeout,
        }
    }

    fn env() -> Vec<(String, String)> {
        vec![("SLIPWAY_RELEASE".into(), "r1".into())]
    }

    #[test]
    fn script_hook() {
        let script = Layout::new(ROOT.into())
            .user_command(
                &job("hook", Some(Duration::from_secs(600))),
                "/srv/shop/releases/r1",
                &env(),
                "bin/migrate && echo 'done'",
            )
            .unwrap();
        insta::assert_snapshot!(script.as_str());
    }

    #[test]
    fn script_workers_in_current() {
        let script = Layout::new(ROOT.into())
            .in_current(&job("workers-stop", None), &env(), "bin/workers stop")
            .unwrap();
        insta::assert_snapshot!(script.as_str());
    }

    #[test]
    fn script_stop() {
        let script = Layout::new(ROOT.into())
            .stop(&job("hook", Some(Duration::from_secs(600))))
            .unwrap();
        insta::assert_snapshot!(script.as_str());
    }

    #[test]
    fn script_stop_orphans() {
        insta::assert_snapshot!(Layout::new(ROOT.into()).stop_orphans().unwrap().as_str());
    }

    #[test]
    fn script_running() {
        insta::assert_snapshot!(Layout::new(ROOT.into()).running().unwrap().as_str());
    }

    /// Runs `script` with `sh` in the background; returns the child.
    fn spawn(script: &Script) -> std::process::Child {
        Command::new("sh")
            .arg("-c")
            .arg(script.as_str())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn sh(script: &Script) -> (i32, String) {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script.as_str())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Waits until `path` exists (at most 10 s).
    fn wait_for(path: &std::path::Path) {
        let start = Instant::now();
        while !path.exists() {
            assert!(start.elapsed() < Duration::from_secs(10), "{path:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process group recorded in a pid file, if any process is in it.
    fn live_group(pid_file: &std::path::Path) -> Option<u32> {
        let text = std::fs::read_to_string(pid_file).ok()?;
        let pgid: u32 = text.split_whitespace().next()?.parse().ok()?;
        group_alive(pgid).then_some(pgid)
    }

    /// Some process that is not a zombie has `pgid` as its group.
    fn group_alive(pgid: u32) -> bool {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                return false;
            };
            let Some((_, rest)) = stat.rsplit_once(") ") else {
                return false;
            };
            let fields: Vec<&str> = rest.split(' ').collect();
            fields[0] != "Z" && fields[2] == pgid.to_string()
        })
    }

    #[test]
    fn a_command_runs_in_its_own_group_recorded_while_it_runs() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(root.path().to_str().unwrap().to_owned());
        let release = root.path().join("releases/r1");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::write(release.join(".slipway.env"), "GREETING='hi there'\n").unwrap();
        let job = job("hook", Some(Duration::from_secs(30)));
        let script = layout
            .user_command(
                &job,
                release.to_str().unwrap(),
                &env(),
                "touch started; while [ ! -e go ]; do sleep 0.05; done; echo \"$GREETING $SLIPWAY_RELEASE\"; exit 7",
            )
            .unwrap();
        let child = spawn(&script);
        wait_for(&release.join("started"));
        let pid_file = std::path::PathBuf::from(layout.pid_file(&job));
        wait_for(&pid_file);
        let pgid = live_group(&pid_file).expect("a live group is recorded");
        assert_ne!(
            pgid,
            child.id(),
            "the command is not in the script's own group"
        );
        std::fs::write(release.join("go"), "").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(7),
            "its exit status is the script's"
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi there r1\n");
        assert!(
            !pid_file.exists(),
            "the pid file goes when the command ends"
        );
    }

    #[test]
    fn the_host_stops_a_command_at_its_own_deadline() {
        // The runner is gone: nobody but the host is left to stop it.
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(root.path().to_str().unwrap().to_owned());
        let job = job("hook", Some(Duration::from_millis(200)));
        let script = layout
            .user_command(
                &job,
                root.path().to_str().unwrap(),
                &[],
                "sleep 30 & sleep 30; touch late",
            )
            .unwrap();
        let started = Instant::now();
        let (code, out) = sh(&script);
        let took = started.elapsed();
        assert_eq!(code, 124, "GNU timeout's status:\n{out}");
        assert!(
            took >= GRACE && took < GRACE + Duration::from_secs(3),
            "stopped {took:?} after it started, not at 200ms + {GRACE:?}"
        );
        assert!(!root.path().join("late").exists());
        assert!(!std::path::Path::new(&layout.pid_file(&job)).exists());
    }

    #[test]
    fn stop_ends_the_whole_group_with_term_then_kill() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(root.path().to_str().unwrap().to_owned());
        let dir = root.path().to_str().unwrap();
        // One command that ends on TERM, one that ignores it (and a child
        // of its own, in the same group).
        let polite = job("health", Some(Duration::from_secs(60)));
        let stubborn = job("hook", Some(Duration::from_secs(60)));
        let a = spawn(
            &layout
                .user_command(&polite, dir, &[], "touch a; sleep 60")
                .unwrap(),
        );
        let b = spawn(
            &layout
                .user_command(
                    &stubborn,
                    dir,
                    &[],
                    "trap '' TERM; sleep 60 & touch b; while :; do sleep 0.1; done",
                )
                .unwrap(),
        );
        wait_for(&root.path().join("a"));
        wait_for(&root.path().join("b"));
        let a_file = std::path::PathBuf::from(layout.pid_file(&polite));
        let b_file = std::path::PathBuf::from(layout.pid_file(&stubborn));
        wait_for(&a_file);
        wait_for(&b_file);
        let (a_group, b_group) = (live_group(&a_file).unwrap(), live_group(&b_file).unwrap());

        let (code, out) = sh(&layout.stop(&polite).unwrap());
        assert_eq!(code, 0, "{out}");
        assert_eq!(out, format!("stopped\td18f2a.health\t{a_group}\tterm\n"));
        assert!(!group_alive(a_group));

        let started = Instant::now();
        let (code, out) = sh(&layout.stop_orphans().unwrap());
        assert_eq!(code, 0, "{out}");
        assert_eq!(out, format!("stopped\td18f2a.hook\t{b_group}\tkill\n"));
        assert!(
            started.elapsed() >= GRACE,
            "KILL only after the grace period"
        );
        assert!(!group_alive(b_group), "the whole group is gone");
        assert!(!b_file.exists());
        let _ = (a.wait_with_output(), b.wait_with_output());
    }

    #[test]
    fn a_command_stopped_before_it_recorded_itself_never_runs() {
        // slipway's deadline passed before the command's session started
        // on the host: the stop finds no pid file, and leaves a marker the
        // late wrapper obeys.
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(root.path().to_str().unwrap().to_owned());
        let job = job("hook", Some(Duration::from_secs(30)));
        let (code, out) = sh(&layout.stop(&job).unwrap());
        assert_eq!((code, out.as_str()), (0, ""));
        let script = layout
            .user_command(&job, root.path().to_str().unwrap(), &[], "touch ran")
            .unwrap();
        let (code, out) = sh(&script);
        assert_eq!(code, 143, "{out}");
        assert!(!root.path().join("ran").exists());
        let left: Vec<_> = std::fs::read_dir(root.path().join(".slipway/run"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_stale_pid_file_is_never_signalled() {
        // The recorded group is long gone and its pid now belongs to an
        // unrelated process (this test's `sleep`, a group leader): only the
        // pid file goes.
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(root.path().to_str().unwrap().to_owned());
        let mut bystander = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let run = root.path().join(".slipway/run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("dold.hook.pid"), format!("{} 1\n", bystander.id())).unwrap();
        std::fs::write(run.join("dbad.hook.pid"), "1 1\n").unwrap();

        let (code, out) = sh(&layout.running().unwrap());
        assert_eq!((code, out.as_str()), (0, ""));
        let (code, out) = sh(&layout.stop_orphans().unwrap());
        assert_eq!(code, 0, "{out}");
        assert_eq!(
            out,
            format!(
                "stopped\tdbad.hook\t1\tgone\nstopped\tdold.hook\t{}\tgone\n",
                bystander.id()
            )
        );
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "the bystander lives"
        );
        assert!(std::fs::read_dir(&run).unwrap().next().is_none());
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }
}
