//! `slipway completions <shell>` and `slipway man`: generated from the
//! same clap definition that parses the arguments, so they never drift
//! from the real flags.

use clap::CommandFactory;

use super::Cli;
use super::exit;

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<u8> {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "slipway", &mut std::io::stdout());
    Ok(exit::OK)
}

/// Writes the man page (roff, section 1) to stdout.
pub fn man() -> anyhow::Result<u8> {
    let page = clap_mangen::Man::new(Cli::command());
    page.render(&mut std::io::stdout())?;
    Ok(exit::OK)
}
