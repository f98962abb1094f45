//! `drawbridge ca ...`. SKELETON.

use std::process::ExitCode;

use crate::cli::CaCommand;
use crate::config::Config;

pub fn run(config: &Config, cmd: CaCommand) -> anyhow::Result<ExitCode> {
    let _ = (config, cmd);
    anyhow::bail!("not implemented yet")
}
