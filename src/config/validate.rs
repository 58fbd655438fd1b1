//! Semantic checks on a [`Config`] that parsed into the right types.
//!
//! Owns: every rule serde cannot express (non-empty hosts, valid branch
//! names, one environment per branch, ...). Invariant: each rule reports an
//! [`Issue`] naming the exact key at fault with a sentence that says what to
//! do; rules never stop at the first problem, the caller picks which to show.
//! Values here end up in shell commands, ssh arguments, file paths (some of
//! them `rm -rf`'d on hosts), nginx directives and `authorized_keys`, so the
//! rules are deliberately strict: a path that is written into the release
//! must be a clean relative path that stays inside it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::error::KeyPath;
use super::locate::Locator;
use super::schema::{
    App, ArtifactTrust, Build, Canary, Config, Deb, Environment, Health, Shared, StartStop,
    Strategy,
};

/// One broken rule: which key, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    pub(crate) path: KeyPath,
    pub(crate) message: String,
}

/// Characters a POSIX shell gives meaning to. Hosts are passed to `ssh` and
/// shown in commands the user may copy, so none of them may appear.
const SHELL_META: &[char] = &[
    ';', '&', '|', '<', '>', '(', ')', '$', '`', '\\', '"', '\'', '*', '?', '{', '}', '!', '#',
    '~', '[', ']',
];

/// The longest wait a duration key may ask for. Far above any real timeout,
/// and far below what would overflow a clock deadline.
const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The most hosts worked on at once; also keeps the semaphore in range.
const MAX_PARALLEL: usize = 1024;

/// Files slipway itself keeps at the top of every release. A shared link or a
/// `copy_back` of one of these would let the old release's env file (with
/// the old secrets) or artifact marker replace the new one's.
const RESERVED_IN_RELEASE: &[&str] = &[".slipway.env", ".slipway.env.new", ".slipway-artifact"];

/// Variables slipway writes into every env file itself (`SLIPWAY_RELEASE`,
/// ...); a config value of the same name would come later and win.
const RESERVED_VARIABLE_PREFIX: &str = "SLIPWAY_";

/// Key types OpenSSH accepts in `authorized_keys`.
const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

#[derive(Default)]
struct Issues(Vec<Issue>);

impl Issues {
    fn add(&mut self, path: KeyPath, message: impl Into<String>) {
        self.0.push(Issue {
            path,
            message: message.into(),
        });
    }
}

/// All rule violations in `config`. `locator` decides which of two
/// environments sharing a branch is "the second one" (in file order).
pub(crate) fn validate(config: &Config, locator: &Locator<'_>) -> Vec<Issue> {
    let mut issues = Issues::default();
    let root = KeyPath::root();
    check_app(&config.app, &root.key("app"), &mut issues);
    check_build(&config.build, &root.key("build"), &mut issues);
    check_shared(&config.shared, &root.key("shared"), &mut issues);
    check_deb(&config.deb, &config.app.name, &root.key("deb"), &mut issues);
    check_artifact_trust(&config.artifact, &root.key("artifact"), &mut issues);
    let envs = root.key("environments");
    for (name, env) in &config.environments {
        check_environment(name, env, &config.shared, &envs.key(name), &mut issues);
    }
    check_branch_conflicts(&config.environments, &envs, locator, &mut issues);
    issues.0
}

fn check_app(app: &App, path: &KeyPath, issues: &mut Issues) {
    let name = &app.name;
    if name.is_empty() {
        issues.add(path.key("name"), "the app name must not be empty");
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        issues.add(
            path.key("name"),
            format!("`{name}` is not a valid app name; use only letters, digits, `.`, `_` and `-`"),
        );
    } else if name == "." || name == ".." {
        // The name becomes a directory name; these two would escape it.
        issues.add(
            path.key("name"),
            format!("`{name}` cannot be used as an app name"),
        );
    }
    if app.keep_releases == 0 {
        issues.add(
            path.key("keep_releases"),
            "keep_releases must be at least 1, since the live release is always kept",
        );
    }
}

fn check_build(build: &Build, path: &KeyPath, issues: &mut Issues) {
    let steps = path.key("steps");
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, step) in build.steps.iter().enumerate() {
        let here = steps.index(i);
        if step.name.trim().is_empty() {
            issues.add(here.key("name"), "a build step needs a name");
        } else if let Some(first) = seen.get(step.name.as_str()) {
            issues.add(
                here.key("name"),
                format!(
                    "build step name `{}` is already used by build.steps[{first}]; give each step its own name",
                    step.name
                ),
            );
        } else {
            seen.insert(&step.name, i);
        }
        if step.run.trim().is_empty() {
            issues.add(here.key("run"), "a build step needs a command to run");
        }
    }
    for (i, pattern) in build.exclude.iter().enumerate() {
        if let Err(err) = globset::Glob::new(pattern) {
            issues.add(
                path.key("exclude").index(i),
                format!("`{pattern}` is not a valid glob: {}", err.kind()),
            );
        }
    }
}

/// Shared paths become `rm -rf` + `ln -s` targets inside each release and
/// `mkdir -p` targets under `shared/`, so each must be a plain path inside
/// the release, written once, and no entry may sit inside another (a file
/// under a shared dir would be linked through that dir's link).
fn check_shared(shared: &Shared, path: &KeyPath, issues: &mut Issues) {
    let mut seen: Vec<(String, &str)> = Vec::new();
    for (list, entries) in [("dirs", &shared.dirs), ("files", &shared.files)] {
        let list_path = path.key(list);
        for (i, entry) in entries.iter().enumerate() {
            let here = list_path.index(i);
            if let Some(problem) = relative_path_problem(entry, "the shared directory") {
                issues.add(here, problem);
            } else if let Some(problem) = reserved_in_release(entry) {
                issues.add(here, problem);
            } else if let Some((first, other)) = seen.iter().find(|(_, e)| overlaps(e, entry)) {
                let message = if *other == entry.as_str() {
                    format!("`{entry}` is already listed as shared.{first}; list it once")
                } else {
                    format!(
                        "`{entry}` overlaps shared.{first} (`{other}`): one would be linked inside the other; keep only the outer one"
                    )
                };
                issues.add(here, message);
            } else {
                seen.push((format!("{list}[{i}]"), entry));
            }
        }
    }
}

/// Whether one of two clean relative paths is the other or lies inside it.
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |outer: &str, inner: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    inside(a, b) || inside(b, a)
}

fn reserved_in_release(entry: &str) -> Option<String> {
    let first = entry.split('/').next().unwrap_or_default();
    RESERVED_IN_RELEASE.contains(&first).then(|| {
        format!("`{entry}` is a file slipway writes into every release itself; pick another path")
    })
}

/// `[deb]` values end up in control files (line-based) and dpkg command
/// lines, so they are held to Debian's own syntax.
fn check_deb(deb: &Deb, app: &str, path: &KeyPath, issues: &mut Issues) {
    let prefix = deb
        .package_prefix
        .clone()
        .unwrap_or_else(|| crate::artifact::default_package_prefix(app));
    if !crate::artifact::is_package_name(&prefix) {
        issues.add(
            path.key("package_prefix"),
            format!(
                "`{prefix}` cannot start a Debian package name; use lowercase letters, digits, `+`, `-` and `.`, starting with a letter or digit"
            ),
        );
    }
    if let Some(m) = &deb.maintainer
        && (m.chars().any(char::is_control) || !m.contains('<') || !m.trim_end().ends_with('>'))
    {
        issues.add(
            path.key("maintainer"),
            format!("`{m:?}` is not a maintainer; write `Name <email>` on one line"),
        );
    }
    if deb.architecture.is_empty()
        || !deb
            .architecture
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        issues.add(
            path.key("architecture"),
            format!(
                "`{}` is not a Debian architecture; use e.g. `all` or `amd64`",
                deb.architecture
            ),
        );
    }
    for (i, dep) in deb.depends.iter().enumerate() {
        if dep.trim().is_empty() || dep.contains(',') || dep.chars().any(char::is_control) {
            issues.add(
                path.key("depends").index(i),
                format!("`{dep:?}` must be one dependency on one line; list each separately, without `,`"),
            );
        }
    }
    let inside = |p: &str| {
        format!(
            "`{p:?}` must be a path inside the release: relative, without `.`, `..`, empty parts or control characters"
        )
    };
    for (i, file) in deb.conffiles.iter().enumerate() {
        if relative_path_problem(file, "the release").is_some() {
            issues.add(path.key("conffiles").index(i), inside(file));
        }
    }
    for (name, script) in deb.scripts.list() {
        if relative_path_problem(script, "the repository").is_some() {
            issues.add(path.key("scripts").key(name), inside(script));
        }
    }
    for (i, arg) in deb.dpkg_args.iter().enumerate() {
        if !arg.starts_with("--") || arg.chars().any(char::is_control) {
            issues.add(
                path.key("dpkg_args").index(i),
                format!("`{arg:?}` must be a long dpkg option such as `--admindir=/path`"),
            );
        }
    }
}

fn check_artifact_trust(trust: &ArtifactTrust, path: &KeyPath, issues: &mut Issues) {
    for (i, key) in trust.trusted_keys.iter().enumerate() {
        if let Err(reason) = crate::artifact::parse_trusted_key(key) {
            issues.add(path.key("trusted_keys").index(i), reason);
        }
    }
}

/// Why `entry` is not a clean path relative to `base` (e.g. "the shared
/// directory"). Clean means one spelling per place: no leading or trailing
/// `/`, no empty, `.` or `..` parts, so two entries naming the same place
/// compare equal and none can leave `base`.
fn relative_path_problem(entry: &str, base: &str) -> Option<String> {
    if entry.trim().is_empty() {
        Some(format!(
            "the path must not be empty; name a path inside {base}"
        ))
    } else if entry.chars().any(char::is_control) {
        Some(format!("`{entry:?}` contains a control character"))
    } else if entry.starts_with('/') {
        Some(format!(
            "`{entry}` must be relative to {base}; remove the leading `/`"
        ))
    } else if has_parent_component(entry) {
        Some(format!(
            "`{entry}` must stay inside {base}; remove the `..`"
        ))
    } else if entry.split('/').any(|part| part.is_empty() || part == ".") {
        Some(format!(
            "`{entry}` has an empty or `.` part; write the plain path, e.g. `public/uploads`"
        ))
    } else {
        None
    }
}

fn has_parent_component(path: &str) -> bool {
    path.split('/').any(|part| part == "..")
}

fn check_environment(
    name: &str,
    env: &Environment,
    shared: &Shared,
    path: &KeyPath,
    issues: &mut Issues,
) {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
    {
        issues.add(
            path.clone(),
            format!(
                "`{name}` is not a valid environment name; use only lowercase letters, digits, `_` and `-`"
            ),
        );
    }
    if let Err(reason) = check_branch_name(&env.branch) {
        issues.add(
            path.key("branch"),
            format!("`{}` is not a valid git branch name: {reason}", env.branch),
        );
    }
    check_hosts(env, path, issues);
    if let Some(problem) = deploy_to_problem(&env.deploy_to) {
        issues.add(path.key("deploy_to"), problem);
    }
    if env.parallel == 0 {
        issues.add(
            path.key("parallel"),
            "parallel must be at least 1, or no host would ever be deployed",
        );
    } else if env.parallel > MAX_PARALLEL {
        issues.add(
            path.key("parallel"),
            format!("parallel must be at most {MAX_PARALLEL}"),
        );
    }
    for (key, wait) in [
        ("hook_timeout", env.hook_timeout),
        ("lock_wait", env.lock_wait),
    ] {
        check_wait(wait, &path.key(key), issues);
    }
    if !(MIN_LOCK_LEASE..=MAX_LOCK_LEASE).contains(&env.lock_lease) {
        issues.add(
            path.key("lock_lease"),
            format!(
                "lock_lease must be between {} and {}: the runner renews it every sixth of it, and a crashed runner holds the environment that long",
                humantime::format_duration(MIN_LOCK_LEASE),
                humantime::format_duration(MAX_LOCK_LEASE)
            ),
        );
    }
    if let Some(url) = &env.url
        && !is_http_url(url)
    {
        issues.add(
            path.key("url"),
            format!("`{url}` must be an `http://` or `https://` URL on one line"),
        );
    }
    check_copy_back(env, shared, &path.key("copy_back"), issues);
    if let Some(canary) = &env.canary {
        check_canary(env, canary, &path.key("canary"), issues);
    }
    check_commands(env, path, issues);
    check_variables(env, path, issues);
    if let Some(health) = &env.health {
        check_health(health, &path.key("health"), issues);
    }
    for (i, key) in env.users.iter().enumerate() {
        if let Err(reason) = check_ssh_public_key(key) {
            issues.add(path.key("users").index(i), reason);
        }
    }
}

/// The shortest lease: renewed every sixth of it, over SSH.
const MIN_LOCK_LEASE: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest: a crashed runner blocks the environment this long.
const MAX_LOCK_LEASE: std::time::Duration = std::time::Duration::from_secs(600);

fn check_hosts(env: &Environment, path: &KeyPath, issues: &mut Issues) {
    let hosts = path.key("hosts");
    if env.hosts.is_empty() {
        issues.add(hosts, "an environment needs at least one host");
        return;
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, host) in env.hosts.iter().enumerate() {
        if let Err(reason) = check_host(host) {
            issues.add(
                hosts.index(i),
                format!("`{host}` is not a valid host: {reason}"),
            );
        } else if let Some(first) = seen.get(host.as_str()) {
            issues.add(
                hosts.index(i),
                format!("`{host}` is already listed as hosts[{first}]; list each host once"),
            );
        } else {
            seen.insert(host, i);
        }
    }
    if env.hook_host >= env.hosts.len() {
        issues.add(
            path.key("hook_host"),
            format!(
                "hook_host is {} but there {} only {} host{} (counting from 0); pick an index below {}",
                env.hook_host,
                if env.hosts.len() == 1 { "is" } else { "are" },
                env.hosts.len(),
                if env.hosts.len() == 1 { "" } else { "s" },
                env.hosts.len(),
            ),
        );
    }
}

/// A host is `local:/abs/path`, or `[user@]host[:port]` / an ssh_config alias
/// (with `[v6addr]` allowed for IPv6 literals).
pub(crate) fn check_host(host: &str) -> Result<(), String> {
    if let Some(dir) = host.strip_prefix("local:") {
        return check_local_host(dir);
    }
    if host.is_empty() {
        return Err("it is empty".to_owned());
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace".to_owned());
    }
    if host.starts_with('-') {
        // ssh would read it as an option.
        return Err("it must not start with `-`".to_owned());
    }
    let (user, rest) = match host.split_once('@') {
        Some((user, rest)) => (Some(user), rest),
        None => (None, host),
    };
    if user.is_some_and(str::is_empty) {
        return Err("the user before `@` is empty".to_owned());
    }
    if rest.contains('@') {
        return Err("it contains more than one `@`".to_owned());
    }
    let (name, port) = split_port(rest)?;
    if name.is_empty() {
        return Err("the host name is empty".to_owned());
    }
    if user
        .into_iter()
        .chain([name])
        .any(|part| part.contains(SHELL_META))
    {
        return Err("it contains shell metacharacters".to_owned());
    }
    if name.starts_with('-') {
        return Err("the host name must not start with `-`".to_owned());
    }
    match port {
        Some(port) => check_port(port),
        None => Ok(()),
    }
}

/// Splits `host[:port]` / `[v6]:port` into host and optional port text.
fn split_port(rest: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((addr, after)) = bracketed.split_once(']') else {
            return Err("`[` is not closed by `]`".to_owned());
        };
        if addr.is_empty()
            || !addr
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(format!("`[{addr}]` is not an IPv6 address"));
        }
        return match after {
            "" => Ok((addr, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((addr, Some(port))),
                None => Err(format!("unexpected `{after}` after `]`")),
            },
        };
    }
    match rest.split_once(':') {
        None => Ok((rest, None)),
        Some((name, port)) if !port.contains(':') => Ok((name, Some(port))),
        Some(_) => Err("an IPv6 address must be written in brackets, e.g. `[::1]:22`".to_owned()),
    }
}

fn check_port(port: &str) -> Result<(), String> {
    match port.parse::<u16>() {
        Ok(n) if n >= 1 => Ok(()),
        _ => Err(format!("port `{port}` is not a number from 1 to 65535")),
    }
}

fn check_local_host(dir: &str) -> Result<(), String> {
    if !dir.starts_with('/') {
        return Err("the path after `local:` must be absolute".to_owned());
    }
    if has_parent_component(dir) {
        return Err("the path after `local:` must not contain `..`".to_owned());
    }
    if dir.chars().any(char::is_control) {
        return Err("the path after `local:` contains a control character".to_owned());
    }
    Ok(())
}

pub(crate) fn deploy_to_problem(dir: &str) -> Option<String> {
    if dir.trim() != dir || dir.chars().any(char::is_control) {
        // Almost always a stray space or newline from a multi-line string;
        // it would silently create a differently-named directory.
        Some(format!(
            "`{dir:?}` has leading/trailing whitespace or control characters; remove them"
        ))
    } else if !dir.starts_with('/') {
        Some(format!("`{dir}` must be an absolute path, e.g. `/srv/app`"))
    } else if has_parent_component(dir) {
        Some(format!(
            "`{dir}` must not contain `..`; write the path it resolves to"
        ))
    } else {
        // The path is written into nginx config (`slipway nginx`), where
        // `;`, braces, quotes, `$` and spaces are syntax, and into hosts'
        // scripts; plain characters mean the same everywhere.
        dir.chars().find(|&c| !is_plain_path_char(c)).map(|c| {
            format!(
                "`{dir}` contains `{c}`; a deploy path may use only letters, digits and `/ . _ - + @ , :`"
            )
        })
    }
}

/// Characters a path may hold that mean nothing to a shell or to nginx.
pub fn is_plain_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@' | ',' | ':')
}

/// Durations become deadlines (`now + wait`); bound them well below overflow.
fn check_wait(wait: Duration, path: &KeyPath, issues: &mut Issues) {
    if wait > MAX_WAIT {
        issues.add(
            path.clone(),
            format!(
                "{} is longer than slipway waits for anything ({}); pick a shorter time",
                humantime::format_duration(wait),
                humantime::format_duration(MAX_WAIT)
            ),
        );
    }
}

fn is_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && !url.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// `copy_back` paths are `rm -rf`'d in the new release and copied from the
/// live one, so each must be a clean path inside the release. One inside a
/// shared path would delete the shared data itself (the release holds a link
/// there, and `rm -rf` of a path beneath a link goes through it).
fn check_copy_back(env: &Environment, shared: &Shared, path: &KeyPath, issues: &mut Issues) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, entry) in env.copy_back.iter().enumerate() {
        let here = path.index(i);
        if let Some(problem) = relative_path_problem(entry, "the release") {
            issues.add(here, problem);
        } else if let Some(problem) = reserved_in_release(entry) {
            issues.add(here, problem);
        } else if let Some((list, j, other)) = shared
            .dirs
            .iter()
            .enumerate()
            .map(|(j, d)| ("dirs", j, d))
            .chain(
                shared
                    .files
                    .iter()
                    .enumerate()
                    .map(|(j, f)| ("files", j, f)),
            )
            .find(|(_, _, other)| overlaps(other, entry))
        {
            issues.add(
                here,
                format!(
                    "`{entry}` overlaps shared.{list}[{j}] (`{other}`), which every release links to the same place; shared content needs no copying back"
                ),
            );
        } else if let Some(first) = seen.get(entry.as_str()) {
            issues.add(
                here,
                format!("`{entry}` is already listed as copy_back[{first}]; list it once"),
            );
        } else {
            seen.insert(entry, i);
        }
    }
}

/// Canary hosts are hosts of the environment picked to go first; a name
/// not in `hosts` would be a host nothing else validated (it reaches `ssh`)
/// and that a gated or rolling deploy of the same environment never updates.
fn check_canary(env: &Environment, canary: &Canary, path: &KeyPath, issues: &mut Issues) {
    if env.strategy != Strategy::Canary {
        issues.add(
            path.clone(),
            "canary settings apply only with strategy = \"canary\"; set it or remove them",
        );
    }
    let hosts = path.key("hosts");
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, host) in canary.hosts.iter().enumerate() {
        if !env.hosts.contains(host) {
            issues.add(
                hosts.index(i),
                format!("`{host}` is not one of this environment's hosts; a canary host must also be listed in `hosts`"),
            );
        } else if let Some(first) = seen.get(host.as_str()) {
            issues.add(
                hosts.index(i),
                format!("`{host}` is already listed as canary.hosts[{first}]; list each host once"),
            );
        } else {
            seen.insert(host, i);
        }
    }
    if !env.hosts.is_empty() && env.hosts.iter().all(|h| canary.hosts.contains(h)) {
        issues.add(
            hosts,
            "every host is a canary host, so nothing would be left for `slipway promote`; leave at least one host out",
        );
    }
    if canary.check.as_deref().is_some_and(|c| c.trim().is_empty()) {
        issues.add(
            path.key("check"),
            "the canary check is empty; remove it or give a command",
        );
    }
}

/// Shell commands that are present must say something; an empty one would
/// "succeed" without doing what the user meant.
fn check_commands(env: &Environment, path: &KeyPath, issues: &mut Issues) {
    if env
        .deploy_hook
        .as_deref()
        .is_some_and(|c| c.trim().is_empty())
    {
        issues.add(
            path.key("deploy_hook"),
            "deploy_hook is empty; remove it or give a command",
        );
    }
    for (field, pair) in [("workers", &env.workers), ("cron", &env.cron)] {
        if let Some(StartStop { stop, start }) = pair {
            for (which, command) in [("stop", stop), ("start", start)] {
                if command.trim().is_empty() {
                    issues.add(
                        path.key(field).key(which),
                        format!("{field}.{which} is empty; give the command that does it"),
                    );
                }
            }
        }
    }
}

fn check_variables(env: &Environment, path: &KeyPath, issues: &mut Issues) {
    for (name, value) in &env.env {
        let here = path.key("env").key(name);
        if !is_variable_name(name) {
            issues.add(here, variable_name_message(name));
        } else if let Some(problem) = reserved_variable(name) {
            issues.add(here, problem);
        } else if value.contains('\0') {
            // No shell, env file or process environment can hold a NUL.
            issues.add(
                here,
                format!("the value of `{name}` contains a NUL character, which no environment can hold; remove it"),
            );
        }
    }
    let secrets = path.key("secrets");
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, name) in env.secrets.iter().enumerate() {
        let here = secrets.index(i);
        if !is_variable_name(name) {
            issues.add(here, variable_name_message(name));
        } else if let Some(problem) = reserved_variable(name) {
            issues.add(here, problem);
        } else if env.env.contains_key(name) {
            issues.add(
                here,
                format!(
                    "`{name}` is both in `env` and in `secrets`; a variable takes its value from one place, remove it from one of them"
                ),
            );
        } else if let Some(first) = seen.get(name.as_str()) {
            issues.add(
                here,
                format!("`{name}` is already listed as secrets[{first}]; list it once"),
            );
        } else {
            seen.insert(name, i);
        }
    }
}

pub(crate) fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn reserved_variable(name: &str) -> Option<String> {
    name.starts_with(RESERVED_VARIABLE_PREFIX).then(|| {
        format!(
            "`{name}` starts with `{RESERVED_VARIABLE_PREFIX}`, which slipway reserves for the variables it sets itself; rename it"
        )
    })
}

fn variable_name_message(name: &str) -> String {
    format!(
        "`{name}` is not a valid variable name; use letters, digits and `_`, not starting with a digit"
    )
}

fn check_health(health: &Health, path: &KeyPath, issues: &mut Issues) {
    if health.url.is_none() && health.command.is_none() {
        issues.add(
            path.clone(),
            "a health check needs a `url` or a `command` to run",
        );
    }
    if let Some(url) = &health.url
        && !is_http_url(url)
    {
        issues.add(
            path.key("url"),
            format!("`{url}` must start with `http://` or `https://`"),
        );
    }
    if health
        .command
        .as_deref()
        .is_some_and(|c| c.trim().is_empty())
    {
        issues.add(path.key("command"), "the health command is empty");
    }
    check_wait(health.timeout, &path.key("timeout"), issues);
    if !(100..=599).contains(&health.status) {
        issues.add(
            path.key("status"),
            format!(
                "{} is not an HTTP status; use a number from 100 to 599",
                health.status
            ),
        );
    }
}

/// Checks `branch` the way `git check-ref-format --branch` does.
pub(crate) fn check_branch_name(branch: &str) -> Result<(), &'static str> {
    if branch.is_empty() {
        return Err("it is empty");
    }
    if branch == "@" {
        return Err("`@` alone is not allowed");
    }
    if branch.starts_with('-') {
        return Err("it must not start with `-`");
    }
    if branch.starts_with('/') || branch.ends_with('/') {
        return Err("it must not start or end with `/`");
    }
    if branch.contains("//") {
        return Err("it must not contain `//`");
    }
    if branch.contains("..") {
        return Err("it must not contain `..`");
    }
    if branch.contains("@{") {
        return Err("it must not contain `@{`");
    }
    if branch.ends_with('.') {
        return Err("it must not end with `.`");
    }
    if branch.chars().any(|c| {
        c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    }) {
        return Err("it must not contain spaces, control characters or any of ~ ^ : ? * [ \\");
    }
    for component in branch.split('/') {
        if component.starts_with('.') {
            return Err("no `/`-separated part may start with `.`");
        }
        if component.ends_with(".lock") {
            return Err("no `/`-separated part may end with `.lock`");
        }
    }
    Ok(())
}

/// Checks one `authorized_keys`-style line: `<type> <base64> [comment]`.
/// The line is written into `authorized_keys`, so a newline in it would
/// smuggle in a second key; control characters are refused outright.
fn check_ssh_public_key(line: &str) -> Result<(), String> {
    const EXPECTED: &str =
        "expected an OpenSSH public key line like `ssh-ed25519 AAAA... user@host`";
    if line.chars().any(char::is_control) {
        return Err("an SSH key must be a single line without control characters".to_owned());
    }
    let mut parts = line.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Err(EXPECTED.to_owned());
    };
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(format!(
            "`{kind}` is not an SSH key type ({}); {EXPECTED}",
            SSH_KEY_TYPES.join(", ")
        ));
    }
    if !is_base64(blob) {
        return Err(format!(
            "the key data after `{kind}` is not base64; {EXPECTED}"
        ));
    }
    Ok(())
}

fn is_base64(text: &str) -> bool {
    let data = text.trim_end_matches('=');
    let padding = text.len() - data.len();
    !data.is_empty()
        && padding <= 2
        && text.len().is_multiple_of(4)
        && data
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
}

/// A branch deploys to at most one environment. The environment whose
/// `branch` key comes later in the file is the one reported, naming the
/// earlier one, so the message reads in the order the user wrote things.
fn check_branch_conflicts(
    environments: &BTreeMap<String, Environment>,
    envs_path: &KeyPath,
    locator: &Locator<'_>,
    issues: &mut Issues,
) {
    let mut by_branch: BTreeMap<&str, Vec<(usize, &str)>> = BTreeMap::new();
    for (name, env) in environments {
        let offset = locator.offset(&envs_path.key(name).key("branch"));
        by_branch
            .entry(env.branch.as_str())
            .or_default()
            .push((offset, name));
    }
    for (branch, mut users) in by_branch {
        users.sort();
        let Some(&(_, first)) = users.first() else {
            continue;
        };
        for &(_, name) in &users[1..] {
            issues.add(
                envs_path.key(name).key("branch"),
                format!(
                    "branch `{branch}` already deploys to environment `{first}`; a branch can deploy to only one environment"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "deploy@10.0.0.1",
            "web1",
            "deploy@web1.example.com:2222",
            "[::1]",
            "deploy@[fe80::1]:22",
            "local:/tmp/host3",
        ] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-oProxyCommand=x",
            "deploy@-x",
            "a b",
            "web;rm",
            "web:0",
            "web:70000",
            "web:",
            "@web",
            "a@b@c",
            "::1",
            "local:tmp",
            "local:/srv/../etc",
            "$(reboot)",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn branch_names() {
        for ok in ["main", "release/1.2", "feature-x", "a.b", "@x"] {
            assert_eq!(check_branch_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "@", "-x", "/x", "x/", "a//b", "a..b", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[",
            "a\\b", "x.lock", "x/.y", "x.", "a@{1}", "a\tb",
        ] {
            assert!(check_branch_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ssh_keys() {
        let good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHdUMzSsQ2zRr1W7r/mN5xBwIxnD1fQk5uX2mLw+Ab7c alice@laptop";
        assert_eq!(check_ssh_public_key(good), Ok(()));
        assert_eq!(
            check_ssh_public_key("ecdsa-sha2-nistp256 AAAAE2VjZHNh"),
            Ok(())
        );
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-foo AAAA",
            "ssh-ed25519 not*base64",
            "ssh-ed25519 AAA",
            "ssh-ed25519 AAAA\nssh-rsa BBBB",
        ] {
            assert!(check_ssh_public_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn variable_names() {
        assert!(is_variable_name("APP_ENV"));
        assert!(is_variable_name("_x1"));
        assert!(!is_variable_name("1X"));
        assert!(!is_variable_name("A-B"));
        assert!(!is_variable_name(""));
    }

    #[test]
    fn shared_paths() {
        let base = "the shared directory";
        assert_eq!(relative_path_problem("public/uploads", base), None);
        assert_eq!(relative_path_problem(".env.local", base), None);
        for bad in [
            "",
            " ",
            "/etc",
            "a/../../b",
            "..",
            ".",
            "./x",
            "x/.",
            "a//b",
            "x/",
            "a\0b",
        ] {
            assert!(relative_path_problem(bad, base).is_some(), "{bad:?}");
        }
    }
}
