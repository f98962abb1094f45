//! `drawbridge user add NAME [--password-stdin]`: adds a password user, or changes the
//! password of an existing one, in the users file (`paths.users`).
//!
//! The password never comes from the command line: with `--password-stdin` it is the first
//! line of standard input (without its line ending); otherwise it is asked twice on the
//! terminal without echo. Empty passwords and names outside `A-Z a-z 0-9 . _ @ + -` are
//! refused. The file is rewritten atomically with mode 0600.
//!
//! `user add NAME --totp` and `user totp NAME` give the user a new TOTP secret, kept in the
//! same file, and print it once as an `otpauth://` URI and a terminal QR code (standard
//! output; nothing else is printed there). Changing a password without `--totp` keeps the
//! user's TOTP secret: a second factor is never dropped by a password change.

use std::io::BufRead;
use std::process::ExitCode;

use crate::cli::UserCommand;
use crate::config::Config;

use super::password::{UserEntry, UsersFile, hash_password};
use super::{Secret, totp};

pub fn run(config: &Config, cmd: UserCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UserCommand::Add {
            name,
            password_stdin,
            totp,
        } => add(config, &name, password_stdin, totp),
        UserCommand::Totp { name } => enroll_totp(config, &name),
    }
}

fn enroll_totp(config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    let path = config.users_path();
    let mut file = UsersFile::load(&path)?;
    let Some(entry) = file.users.get_mut(name) else {
        anyhow::bail!(
            "no password user {name} in {}; add one with `drawbridge user add {name} --totp`",
            path.display()
        );
    };
    let secret = totp::new_secret().map_err(|e| anyhow::anyhow!(e))?;
    entry.totp = Some(secret.clone());
    file.save(&path)?;
    print_enrolment(name, &secret)?;
    eprintln!(
        "enrolled a new TOTP secret for {name} in {}",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints the `otpauth://` URI and its QR code on standard output.
fn print_enrolment(name: &str, secret: &str) -> anyhow::Result<()> {
    let uri = totp::otpauth_uri(name, secret).map_err(|e| anyhow::anyhow!(e))?;
    let qr = totp::terminal_qr(&uri).map_err(|e| anyhow::anyhow!(e))?;
    println!("{uri}");
    println!("{qr}");
    eprintln!(
        "scan the QR code (or enter the URI) in an authenticator app; it is shown only now. \
         Logins then need the code: curl -u {name} -H 'Drawbridge-OTP: 123456' ..."
    );
    Ok(())
}

fn add(
    config: &Config,
    name: &str,
    password_stdin: bool,
    with_totp: bool,
) -> anyhow::Result<ExitCode> {
    // The one name rule, so that every user added can be named in the policy.
    crate::policy::check_name("user", name).map_err(|e| anyhow::anyhow!("not allowed: {e}"))?;
    let path = config.users_path();
    // Read the file first: a broken file is reported before a password is asked for.
    let mut file = UsersFile::load(&path)?;
    let password = if password_stdin {
        read_stdin_line()?
    } else {
        prompt_twice(name)?
    };
    if password.expose().is_empty() {
        anyhow::bail!("empty password refused");
    }
    let hash = hash_password(&password).map_err(|e| anyhow::anyhow!("{}", e.audit_reason()))?;
    let kept_totp = file.users.get(name).and_then(|e| e.totp.clone());
    let new_totp = if with_totp {
        Some(totp::new_secret().map_err(|e| anyhow::anyhow!(e))?)
    } else {
        None
    };
    let existed = file
        .users
        .insert(
            name.to_owned(),
            UserEntry {
                hash,
                totp: new_totp.clone().or(kept_totp),
            },
        )
        .is_some();
    file.save(&path)?;
    if let Some(secret) = &new_totp {
        print_enrolment(name, secret)?;
    }
    if existed {
        eprintln!("changed the password of {name} in {}", path.display());
    } else {
        eprintln!("added {name} to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn read_stdin_line() -> anyhow::Result<Secret<String>> {
    let mut line = Secret::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(line.expose_mut())
        .map_err(|e| anyhow::anyhow!("cannot read the password from standard input: {e}"))?;
    let trimmed = line
        .expose()
        .trim_end_matches('\n')
        .trim_end_matches('\r')
        .to_owned();
    Ok(Secret::new(trimmed))
}

fn prompt_twice(name: &str) -> anyhow::Result<Secret<String>> {
    let no_tty = |e: std::io::Error| {
        anyhow::anyhow!("cannot read a password from the terminal ({e}); use --password-stdin")
    };
    let first = Secret::new(
        rpassword::prompt_password(format!("New password for {name}: ")).map_err(no_tty)?,
    );
    let second = Secret::new(rpassword::prompt_password("Repeat the password: ").map_err(no_tty)?);
    if first != second {
        anyhow::bail!("the passwords do not match");
    }
    Ok(first)
}
