//! `slipway init`: a commented `slipway.toml` to start from.
//!
//! Writes the file at the root of the repository's work tree (found as git
//! finds it, so it works from a subfolder) and prints the next commands.
//! Invariants: an existing file is never overwritten without `--force`; the
//! file written parses with slipway's own config parser, and so does every
//! commented-out example in it once uncommented (unit tests below).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::Args;

use super::context::Context;
use super::exit;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Replace an existing config file.
    #[arg(long, env = "SLIPWAY_INIT_FORCE", value_parser = clap::builder::FalseyValueParser::new())]
    pub force: bool,
}

pub fn init(ctx: &Context, args: &InitArgs) -> anyhow::Result<u8> {
    let top = work_tree_root(&ctx.repo)?;
    let path = top.join(&ctx.config_path);
    if path.exists() && !args.force {
        bail!(
            "{} already exists; edit it, or run `slipway init --force` to replace it",
            path.display()
        );
    }
    let name = app_name(&top);
    std::fs::write(&path, template(&name))
        .with_context(|| format!("cannot write {}", path.display()))?;
    ctx.out.result(&format!(
        "wrote {} for app {name}; set each environment's hosts and deploy_to, then:\n  \
         1. git add {cfg} && git commit -m \"Configure slipway\"   # slipway reads the committed file\n  \
         2. slipway check production    # the config is valid and every host can take a deploy\n  \
         3. slipway deploy production",
        path.display(),
        cfg = ctx.config_path,
    ));
    Ok(exit::OK)
}

/// The work tree's top folder, as `git` finds it from `repo`.
fn work_tree_root(repo: &Path) -> anyhow::Result<PathBuf> {
    let out = Command::new("git")
        .current_dir(repo)
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .context("`slipway init` needs `git` on PATH")?;
    if !out.status.success() {
        bail!(
            "{} is not inside a git work tree; run `git init` first (slipway deploys commits)",
            repo.display()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The folder's name made into a valid app name (letters, digits, `.`, `_`,
/// `-`), since it also becomes part of `deploy_to`.
fn app_name(top: &Path) -> String {
    let raw = top
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches(|c| matches!(c, '.' | '-')).to_owned();
    if cleaned.is_empty() {
        "app".to_owned()
    } else {
        cleaned
    }
}

fn template(name: &str) -> String {
    format!(include_str!("init.toml"), name = name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> crate::config::Config {
        crate::config::parse(text, Path::new("slipway.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn the_file_parses_as_written() {
        let config = parse(&template("shop"));
        assert_eq!(config.app.name, "shop");
        assert_eq!(
            config.environments.keys().collect::<Vec<_>>(),
            ["production", "staging"]
        );
    }

    /// Every `#key = …` example, uncommented, is a key slipway knows with a
    /// value it accepts: the file teaches nothing that does not work.
    #[test]
    fn every_example_parses_once_uncommented() {
        let text = template("shop");
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => rest,
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let examples = text.lines().count()
            - text
                .lines()
                .zip(uncommented.lines())
                .filter(|(a, b)| a == b)
                .count();
        assert!(examples >= 10, "{examples} examples");
        let config = parse(&uncommented);
        let prod = &config.environments["production"];
        assert_eq!(prod.deploy_hook.as_deref(), Some("bin/migrate"));
        assert!(prod.health.is_some());
        let notify = &config.notify;
        let env = |_: &str| Some("https://hooks.example.com/x".to_owned());
        for (key, allowed) in [
            ("slack", crate::notify::slack::KEYS),
            ("webhook", crate::notify::webhook::KEYS),
        ] {
            let table = notify[key].as_table().expect("a table");
            crate::notify::config::Keys::new(&format!("notify.{key}"), table, allowed, &env)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(notify.len(), 2, "every notifier example is checked");
    }

    #[test]
    fn app_names_come_from_the_folder() {
        assert_eq!(app_name(Path::new("/home/me/shop")), "shop");
        assert_eq!(app_name(Path::new("/home/me/My Shop!")), "My-Shop");
        assert_eq!(app_name(Path::new("/")), "app");
    }
}
