//! The command line. Exit codes: 0 success, 1 failure, 2 bad usage (clap's own).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "drawbridge",
    version,
    about = "Short-lived SSH certificate authority and bastion"
)]
pub struct Cli {
    /// Configuration file; without it, the embedded default (relative to the working directory).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTPS API and the SSH bastion; creates ca/ keys on first start.
    Serve(ServeArgs),
    /// Manage the CA key files.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Manage local password users (argon2id, in the users file outside Git).
    #[command(subcommand)]
    User(UserCommand),
    /// Check, test, explain and diff policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Work with the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Recorded sessions: list them, play one back, follow a live one.
    #[command(subcommand)]
    Session(SessionCommand),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Run only the SSH bastion: it needs no CA private key.
    #[arg(long, conflicts_with = "api_only")]
    pub bastion_only: bool,
    /// Run only the HTTPS API.
    #[arg(long)]
    pub api_only: bool,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the user CA, host CA, bastion host key, token key and TLS certificate.
    Init {
        /// Key folder (default: paths.ca of the config).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Sign a host public key with the host CA and print the certificate line.
    SignHost {
        /// The host's name (its first principal).
        #[arg(long)]
        name: String,
        /// More names or addresses the host answers to (repeatable).
        #[arg(long = "principal", value_name = "NAME")]
        principals: Vec<String>,
        /// Validity, e.g. "52w" (default 52 weeks).
        #[arg(long, default_value = "52w")]
        validity: String,
        /// Key folder (default: paths.ca of the config).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Write the certificate to this file instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// The host's public key file.
        key: PathBuf,
    },
    /// Make a new user CA that signs from now on; the old one stays trusted.
    Rotate {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a password user, or change their password.
    Add {
        name: String,
        /// Read the password from standard input (first line) instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        /// Also enroll a TOTP second factor: prints its otpauth:// URI and a QR code once.
        #[arg(long)]
        totp: bool,
    },
    /// Enroll (or re-enroll) a password user's TOTP second factor: a new secret, printed
    /// once as an otpauth:// URI and a QR code; the old one stops working.
    Totp { name: String },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy folder and print every error.
    Check { dir: Option<PathBuf> },
    /// Run the cases in DIR/tests/*.toml.
    Test { dir: Option<PathBuf> },
    /// Explain the decision for USER reaching HOST as LOGIN.
    Explain {
        user: String,
        host: String,
        login: String,
        /// Groups an identity provider asserts for the user.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Evaluate at this time (RFC 3339), default now.
        #[arg(long)]
        at: Option<String>,
        /// Policy folder (default: paths.policies of the config).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Access gained and lost between two Git revisions.
    Diff {
        rev_a: String,
        rev_b: String,
        dir: Option<PathBuf>,
    },
    /// Whether the service would put the Git commit REV in force: signed by a key the
    /// allowed signers allow (namespace git), descending from --in-force, and its policy
    /// files load. Exit 0 and the signer, or 1 and the reason.
    Verify {
        rev: String,
        /// The repository (a work tree or a bare clone; default: the current folder).
        #[arg(long)]
        repo: Option<PathBuf>,
        /// OpenSSH allowed_signers file (default: policy.allowed_signers of the config).
        #[arg(long)]
        allowed_signers: Option<PathBuf>,
        /// The commit in force: REV must descend from it.
        #[arg(long)]
        in_force: Option<String>,
    },
    /// AuthorizedPrincipalsFile contents for HOST, per login.
    Principals {
        host: String,
        /// Write one file per login into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Policy folder (default: paths.policies of the config).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; exit 1 naming the first bad record. With --checkpoints, also
    /// the signed checkpoints that anchor the log's end (a cut tail, a re-chained file).
    Verify {
        file: PathBuf,
        /// Also check the signed checkpoints in FILE.checkpoints.
        #[arg(long)]
        checkpoints: bool,
        /// Read the checkpoints from PATH instead (a copy kept off the host); implies
        /// --checkpoints.
        #[arg(long, value_name = "PATH")]
        checkpoints_file: Option<PathBuf>,
        /// Public key (OpenSSH line) the checkpoints must be signed with; repeatable
        /// (default: audit_key.pub in paths.ca of the config).
        #[arg(long = "key", value_name = "FILE")]
        keys: Vec<PathBuf>,
        /// The folder of the session recordings that `session.ended` records name, each
        /// re-hashed and compared (default: recording.dir of the config).
        #[arg(long, value_name = "DIR")]
        recordings: Option<PathBuf>,
    },
    /// Check the audit chains kept in PostgreSQL (`[state] postgres`): every replica's, or
    /// one; exit 1 naming the replica and the first bad record.
    VerifyPostgres {
        /// Only this replica's chain.
        #[arg(long)]
        replica: Option<String>,
    },
    /// Write a replica's chain from PostgreSQL as an audit file (JSON lines), for
    /// `audit verify FILE`, `audit search FILE` or an archive.
    Export {
        #[arg(long)]
        replica: String,
        /// Write here instead of standard output (created 0600).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Print the records that match, as a table (or JSON lines with --json).
    Search {
        file: PathBuf,
        /// The user (`user`, or a certificate's `key_id`).
        #[arg(long)]
        user: Option<String>,
        /// The host (`host` asked for, or the inventory `target`).
        #[arg(long)]
        host: Option<String>,
        /// The event kind, or a family (`forward` matches forward.opened, ...).
        #[arg(long)]
        event: Option<String>,
        /// From this time on: RFC 3339, a date (2026-11-25) or a duration ago (7d).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Before this time (same forms as --since).
        #[arg(long, value_name = "T")]
        until: Option<String>,
        /// JSON lines (the records as logged) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Entry point for `main`.
/// `drawbridge session ...`: read the audit log (`paths.audit`) and the recordings
/// (`recording.dir`) of the config, or the files given.
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// The recorded sessions the audit log names (live ones too), and recordings in the
    /// folder the log does not name.
    List {
        /// Only this user's (the certificate's key id).
        #[arg(long)]
        user: Option<String>,
        /// Only those to this inventory host.
        #[arg(long)]
        host: Option<String>,
        /// Only those started since T: an RFC 3339 time, a date, or a duration before
        /// now (`2h`, `7d`).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Only sessions still running (started, not ended).
        #[arg(long)]
        live: bool,
        #[command(flatten)]
        files: SessionFiles,
    },
    /// Play a recording in the terminal with its original timing.
    Play {
        id: String,
        /// Faster (2 = twice as fast) or slower (0.5); above 0.
        #[arg(long, default_value = "1", value_parser = parse_speed)]
        speed: f64,
        /// Pauses longer than this many seconds (after --speed) are cut to it; 0 keeps
        /// every pause as it was.
        #[arg(long, default_value = "5", value_name = "SECONDS", value_parser = parse_max_idle)]
        max_idle: f64,
        /// Also print the markers (exec command, SFTP operations, exit status, cut) on
        /// standard error.
        #[arg(long)]
        markers: bool,
        #[command(flatten)]
        files: SessionFiles,
    },
    /// Follow a live session's recording as it grows, until the session ends.
    Watch {
        id: String,
        /// Also print the markers on standard error.
        #[arg(long)]
        markers: bool,
        #[command(flatten)]
        files: SessionFiles,
    },
}

/// Where `session` commands read.
#[derive(Debug, Clone, Args)]
pub struct SessionFiles {
    /// The audit log (default: paths.audit of the config).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// The recordings folder (default: recording.dir of the config).
    #[arg(long = "recordings", value_name = "DIR")]
    pub recordings: Option<PathBuf>,
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1000.0 => Ok(v),
        _ => Err(format!(
            "{s:?}: a number above 0 and at most 1000 (2 = twice as fast)"
        )),
    }
}

fn parse_max_idle(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?}: a number of seconds, 0 or more")),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drawbridge: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Serve(args) => crate::serve::run(config, args),
        Command::Ca(cmd) => crate::issuer::cmd::run(&config, cmd),
        Command::User(cmd) => crate::identity::cmd::run(&config, cmd),
        Command::Policy(cmd) => crate::policy::cmd::run(&config, cmd),
        Command::Audit(cmd) => crate::audit::cmd::run(&config, cmd),
        Command::Session(cmd) => crate::recording::cmd::run(&config, cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drawbridge: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The printed log (stderr, filtered by `DRAWBRIDGE_LOG`) plus the bastion's capture of
/// russh's own certificate refusals. Both filters are per layer: `DRAWBRIDGE_LOG` hiding
/// russh must not hide those refusals from the audit. `try_init` also bridges `log`
/// records (russh logs through `log`) into tracing.
fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_env("DRAWBRIDGE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,russh=warn,hyper=warn,rustls=warn"));
    let _ = tracing_subscriber::registry()
        .with(
            // What `tracing_subscriber::fmt()` built before, minus its global filter.
            tracing_subscriber::fmt::layer()
                .log_internal_errors(true)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .with(crate::bastion::capture_layer())
        .try_init();
}
