//! `drawbridge user add`. SKELETON.

use std::process::ExitCode;

use crate::cli::UserCommand;
use crate::config::Config;

pub fn run(config: &Config, cmd: UserCommand) -> anyhow::Result<ExitCode> {
    let _ = (config, cmd);
    anyhow::bail!("not implemented yet")
}
