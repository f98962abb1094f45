//! `drawbridge audit verify`. SKELETON.

use std::process::ExitCode;

use crate::cli::AuditCommand;
use crate::config::Config;

pub fn run(config: &Config, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let _ = (config, cmd);
    anyhow::bail!("not implemented yet")
}
