//! `drawbridge audit verify FILE`: prints `ok: N records, last hash H` and exits 0, or
//! `FILE:LINE: what is wrong` (the first bad record) and exits 1.

use std::process::ExitCode;

use crate::cli::AuditCommand;
use crate::config::Config;

use super::{VerifyFailure, verify};

pub fn run(config: &Config, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let _ = config;
    match cmd {
        AuditCommand::Verify { file } => match verify(&file) {
            Ok(summary) => {
                println!(
                    "ok: {} records, last hash {}",
                    summary.records, summary.last_hash
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(VerifyFailure::Record { line, what }) => {
                eprintln!("{}:{line}: {what}", file.display());
                Ok(ExitCode::from(1))
            }
            Err(VerifyFailure::Io(e)) => {
                eprintln!("{}: {e}", file.display());
                Ok(ExitCode::from(1))
            }
        },
    }
}
