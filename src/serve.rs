//! `drawbridge serve`: wires policy, keys, identity, audit, the API and the bastion.

use std::process::ExitCode;

use crate::cli::ServeArgs;
use crate::config::Config;

pub fn run(config: Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let _ = (config, args);
    anyhow::bail!("not implemented yet")
}
