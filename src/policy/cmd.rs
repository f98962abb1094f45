//! `drawbridge policy ...`. SKELETON: the policy work implements these.

use std::process::ExitCode;

use crate::cli::PolicyCommand;
use crate::config::Config;

pub fn run(config: &Config, cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    let _ = (config, cmd);
    anyhow::bail!("not implemented yet")
}
