//! `drawbridge audit verify FILE [--checkpoints]`: prints `ok: N records, last hash H`
//! (and what the checkpoints anchor) and exits 0, or `FILE:LINE: what is wrong` (the first
//! bad record, or what is missing) and exits 1. Then every recording a `session.ended`
//! record names is re-hashed (in `--recordings DIR` or `recording.dir`); one edited, cut
//! or removed is named and the exit is 1.
//!
//! `drawbridge audit search FILE [filters] [--json]`: the matching records, as a table or
//! JSON lines; a count on standard error.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use ssh_key::{HashAlg, PublicKey};

use crate::cli::AuditCommand;
use crate::config::Config;

use super::anchor::{AnchorFailure, verify_anchored};
use super::checkpoint::{KEY_PUB, checkpoints_path};
use super::search::{Filter, Format, search};
use super::{VerifyFailure, verify};

pub fn run(config: &Config, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::VerifyPostgres { replica } => {
            crate::state::cmd::verify(config, replica.as_deref())
        }
        AuditCommand::Export { replica, out } => {
            crate::state::cmd::export(config, &replica, out.as_deref())
        }
        AuditCommand::Verify {
            file,
            checkpoints,
            checkpoints_file,
            keys,
            recordings,
        } => {
            let dir = crate::recording::verify::recordings_dir(recordings, config);
            let code = if checkpoints || checkpoints_file.is_some() {
                let cp_path = checkpoints_file.unwrap_or_else(|| checkpoints_path(&file));
                let key_paths = if keys.is_empty() {
                    vec![config.ca_dir().join(KEY_PUB)]
                } else {
                    keys
                };
                verify_with_checkpoints(&file, &cp_path, &key_paths)?
            } else {
                verify_chain(&file)
            };
            if code != ExitCode::SUCCESS {
                return Ok(code);
            }
            Ok(verify_recordings(&file, &dir))
        }
        AuditCommand::Search {
            file,
            user,
            host,
            event,
            since,
            until,
            json,
        } => {
            let now = SystemTime::now();
            let time = |t: Option<String>| -> anyhow::Result<Option<String>> {
                t.map(|t| Filter::time(&t, now).map_err(anyhow::Error::msg))
                    .transpose()
            };
            let filter = Filter {
                user,
                host,
                event,
                since: time(since)?,
                until: time(until)?,
            };
            let f = std::fs::File::open(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let format = if json { Format::Json } else { Format::Table };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
            let stats = match search(
                BufReader::with_capacity(1 << 20, f),
                &filter,
                format,
                &mut out,
            ) {
                Ok(s) => s,
                // A closed pipe (`| head`) is the reader's choice, not a failure.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => anyhow::bail!("{}: {e}", file.display()),
            };
            eprintln!(
                "{} of {} records matched{}",
                stats.matched,
                stats.lines - stats.skipped,
                if stats.skipped > 0 {
                    format!(
                        "; {} lines are not records (run `drawbridge audit verify {}`)",
                        stats.skipped,
                        file.display()
                    )
                } else {
                    String::new()
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn verify_chain(file: &Path) -> ExitCode {
    match verify(file) {
        Ok(summary) => {
            println!(
                "ok: {} records, last hash {}",
                summary.records, summary.last_hash
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            report_log_failure(file, &e);
            ExitCode::from(1)
        }
    }
}

/// Re-hashes the recordings the log's `session.ended` records name (nothing is printed
/// for a log without recorded sessions).
fn verify_recordings(file: &Path, dir: &Path) -> ExitCode {
    match crate::recording::verify::check_recordings(file, dir) {
        Ok(c) => {
            for p in &c.problems {
                eprintln!("{p}");
            }
            if c.matched + c.problems.len() + c.unfinished.len() > 0 {
                println!(
                    "recordings in {}: {} re-hashed and intact, {} edited, cut or removed; {} not ended (live, or the service stopped first: nothing to compare)",
                    dir.display(),
                    c.matched,
                    c.problems.len(),
                    c.unfinished.len()
                );
            }
            if c.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::from(1)
        }
    }
}

fn report_log_failure(file: &Path, e: &VerifyFailure) {
    match e {
        VerifyFailure::Record { line, what } => eprintln!("{}:{line}: {what}", file.display()),
        VerifyFailure::Io(e) => eprintln!("{}: {e}", file.display()),
    }
}

fn load_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<PublicKey>> {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| {
                anyhow::anyhow!("{}: {e} (give the checkpoint key with --key)", p.display())
            })?;
            PublicKey::from_openssh(text.trim())
                .map_err(|e| anyhow::anyhow!("{}: not an OpenSSH public key: {e}", p.display()))
        })
        .collect()
}

fn verify_with_checkpoints(
    file: &Path,
    cp_path: &Path,
    key_paths: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    // The log first: a mistyped path should be named as such, not as a missing key.
    std::fs::metadata(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let keys = load_keys(key_paths)?;
    match verify_anchored(file, cp_path, &keys) {
        Ok(s) => {
            let fingerprints: Vec<String> = keys
                .iter()
                .map(|k| k.fingerprint(HashAlg::Sha256).to_string())
                .collect();
            println!(
                "ok: {} records, last hash {}; {} signed checkpoints (key {}), the last at seq {} ({}); {} checkpoint records in the log",
                s.records,
                s.last_hash,
                s.checkpoints,
                fingerprints.join(", "),
                s.last.seq,
                s.last.ts,
                s.in_log
            );
            if s.unanchored() > 0 {
                println!(
                    "note: records {}–{} come after the last checkpoint and are not anchored yet",
                    s.last.seq + 2,
                    s.records
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(AnchorFailure::Log(e)) => {
            report_log_failure(file, &e);
            Ok(ExitCode::from(1))
        }
        Err(e @ AnchorFailure::Checkpoints { .. }) => {
            eprintln!("{}:{e}", cp_path.display());
            Ok(ExitCode::from(1))
        }
        Err(AnchorFailure::Cut { what }) => {
            eprintln!("{}: {what}", file.display());
            Ok(ExitCode::from(1))
        }
    }
}
