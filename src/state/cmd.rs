//! `drawbridge audit verify-postgres [--replica R]` and `drawbridge audit export --replica R`:
//! the chains kept in PostgreSQL, read with the same check as a file.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tokio_postgres::{Client, NoTls};

use super::audit_sink::{read_chain, replicas};
use crate::audit::VerifyFailure;
use crate::audit::record::verify_reader;
use crate::config::Config;

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(crate) async fn connect(config: &Config) -> anyhow::Result<Client> {
    let url = config
        .state
        .postgres
        .as_deref()
        .context("no [state] postgres in the configuration (give it with --config)")?;
    let password_file = config
        .state
        .password_file
        .as_ref()
        .map(|p| config.resolve(p));
    let pgpass = std::env::var_os("PGPASSFILE").map(std::path::PathBuf::from);
    let pg = super::connect::parse(url, password_file.as_deref(), pgpass.as_deref())?;
    let shown = super::connect::shown(&pg);
    let (client, connection) = pg
        .connect(NoTls)
        .await
        .with_context(|| format!("cannot connect to {shown}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Checks each chain; prints `REPLICA: ok: N records, last hash H` per chain.
pub fn verify(config: &Config, only: Option<&str>) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = connect(config).await?;
        let names = match only {
            Some(r) => vec![r.to_string()],
            None => replicas(&client).await?,
        };
        if names.is_empty() {
            anyhow::bail!("no audit chain in the database yet");
        }
        let mut code = ExitCode::SUCCESS;
        for name in names {
            let mut text = Vec::new();
            let n = read_chain(&client, &name, |line| {
                text.extend_from_slice(line.as_bytes());
                text.push(b'\n');
                Ok(())
            })
            .await?;
            if n == 0 {
                eprintln!("{name}: no records");
                code = ExitCode::from(1);
                continue;
            }
            match verify_reader(std::io::BufReader::new(&text[..])) {
                Ok(s) => println!(
                    "{name}: ok: {} records, last hash {}",
                    s.records, s.last_hash
                ),
                Err(VerifyFailure::Record { line, what }) => {
                    eprintln!("{name}:{line}: {what}");
                    code = ExitCode::from(1);
                }
                Err(VerifyFailure::Io(e)) => {
                    eprintln!("{name}: {e}");
                    code = ExitCode::from(1);
                }
            }
        }
        Ok(code)
    })
}

/// Writes one chain as a file.
pub fn export(config: &Config, replica: &str, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = connect(config).await?;
        let mut sink: Box<dyn Write> = match out {
            Some(p) => {
                use std::os::unix::fs::OpenOptionsExt;
                Box::new(std::io::BufWriter::new(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(p)
                        .with_context(|| format!("{}", p.display()))?,
                ))
            }
            None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        };
        let n = read_chain(&client, replica, |line| {
            sink.write_all(line.as_bytes())?;
            sink.write_all(b"\n")
        })
        .await?;
        sink.flush()?;
        eprintln!("{n} records of replica {replica}");
        Ok(if n == 0 {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    })
}
