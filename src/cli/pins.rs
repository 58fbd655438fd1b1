//! `slipway pins write`: the server owner's one command to pin environments
//! from a config they trust.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::context::Context;
use super::exit;
use crate::config::{self, PIN_FILE, Pins};

#[derive(Debug, Subcommand)]
pub enum PinsCommand {
    /// Pin every environment of a trusted slipway.toml (branch, hosts,
    /// deploy_to, secret names) into the pin file the hooks and `--pins`
    /// read. Build settings already in the pin file are kept.
    Write(WriteArgs),
}

#[derive(Debug, Args)]
pub struct WriteArgs {
    /// A slipway.toml you trust, on disk.
    #[arg(long, env = "SLIPWAY_PINS_FROM", conflicts_with = "git_ref")]
    pub from: Option<PathBuf>,
    /// Or: read slipway.toml from this reviewed commit or branch of --repo.
    #[arg(long = "ref", env = "SLIPWAY_PINS_REF")]
    pub git_ref: Option<String>,
    /// Where to write [default: <repo>/slipway-pins.toml, where the git hooks look].
    #[arg(long, env = "SLIPWAY_PINS_OUT")]
    pub out: Option<PathBuf>,
}

pub fn pins(ctx: &Context, command: PinsCommand) -> anyhow::Result<u8> {
    let PinsCommand::Write(args) = command;
    let config = match (&args.from, &args.git_ref) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            config::parse(&text, path)?
        }
        (None, Some(r)) => {
            let repo = ctx.open_repo()?;
            let commit = repo.resolve(r)?;
            ctx.config_at(&repo, &commit)?
        }
        (None, None) => anyhow::bail!(
            "say which config to trust: --from <slipway.toml> or --ref <reviewed commit>"
        ),
    };
    let out = args.out.unwrap_or_else(|| ctx.repo.join(PIN_FILE));
    let mut pins = Pins::from_config(&config);
    if out.exists() {
        let old = config::load_pins(&out)?;
        pins.build = old.build;
        if pins.artifact.trusted_keys.is_empty() {
            pins.artifact = old.artifact;
        }
    }
    let tmp = out.with_extension("toml.tmp");
    std::fs::write(&tmp, pins.to_toml())
        .and_then(|()| std::fs::rename(&tmp, &out))
        .with_context(|| format!("cannot write {}", out.display()))?;
    for (name, pin) in &pins.environments {
        ctx.out.info(&format!(
            "  {name}: branch `{}`, {} host(s), {}, secrets [{}]",
            pin.branch,
            pin.hosts.len(),
            pin.deploy_to,
            pin.secrets.join(", ")
        ));
    }
    ctx.out.result(&format!(
        "pinned {} environment(s) in {}; pushes that disagree are now refused",
        pins.environments.len(),
        out.display()
    ));
    Ok(exit::OK)
}
