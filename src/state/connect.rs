//! From `[state]` to a PostgreSQL connection configuration.
//!
//! The URL names the user, host, port and database, never the password: a URL that carries
//! one is refused (it would sit in a config file that is read by many and copied into
//! tickets, and libraries print URLs in their errors). The password comes from
//! `[state] password_file` (the password alone, a file of mode 0600), or from the file
//! named by the `PGPASSFILE` environment variable (PostgreSQL's own `.pgpass` format:
//! `host:port:database:user:password`, `*` matching anything), or the server needs none.
//! Errors never repeat the URL.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;

use super::StateError;
use crate::config::Config;

/// Waiting for a connection (TCP and the start-up exchange) at most this long.
pub const CONNECT_WAIT: Duration = Duration::from_millis(500);

/// What to connect to, and this replica's name.
#[derive(Clone)]
pub struct Target {
    pub pg: tokio_postgres::Config,
    /// `user@host:port/db`, for logs and errors (no password, ever).
    pub shown: String,
    pub replica: String,
    pub lease: Duration,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("shown", &self.shown)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// `None` without `[state] postgres`. `ssh_port` names the replica when `[state] replica`
/// is unset.
pub fn from_config(config: &Config, ssh_port: u16) -> Result<Option<Target>, StateError> {
    let Some(url) = &config.state.postgres else {
        return Ok(None);
    };
    let password_file = config
        .state
        .password_file
        .as_ref()
        .map(|p| config.resolve(p));
    let pgpass = std::env::var_os("PGPASSFILE").map(std::path::PathBuf::from);
    let pg = parse(url, password_file.as_deref(), pgpass.as_deref())?;
    let replica = match &config.state.replica {
        Some(r) => r.clone(),
        None => default_replica(ssh_port)?,
    };
    check_replica(&replica)?;
    if config.state.lease < Duration::from_secs(3) {
        return Err(StateError::Config(
            "lease must be at least 3s (a replica renews every third of it)".into(),
        ));
    }
    Ok(Some(Target {
        shown: shown(&pg),
        pg,
        replica,
        lease: config.state.lease,
    }))
}

/// `HOSTNAME:SSHPORT`: unique as long as no two replicas on one host share a port.
fn default_replica(ssh_port: u16) -> Result<String, StateError> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() || ssh_port == 0 {
        return Err(StateError::Config(
            "cannot name this replica from its host name and SSH port: set [state] replica".into(),
        ));
    }
    Ok(format!("{host}:{ssh_port}"))
}

fn check_replica(r: &str) -> Result<(), StateError> {
    let ok = !r.is_empty()
        && r.len() <= 64
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StateError::Config(
            "replica: 1 to 64 characters among letters, digits, '-', '_', '.' and ':'".into(),
        ))
    }
}

/// Parses the URL, refuses a password in it, and adds the password from the files.
pub fn parse(
    url: &str,
    password_file: Option<&Path>,
    pgpass: Option<&Path>,
) -> Result<tokio_postgres::Config, StateError> {
    if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
        return Err(StateError::Config(
            "postgres must be a URL: postgresql://user@host:port/database".into(),
        ));
    }
    // The parser's own message could quote the URL: keep it out.
    let mut pg = tokio_postgres::Config::from_str(url).map_err(|_| {
        StateError::Config(
            "postgres is not a valid URL: postgresql://user@host:port/database".into(),
        )
    })?;
    if pg.get_password().is_some() {
        return Err(StateError::Config(
            "the postgres URL carries a password: remove it from the URL and put it in \
             [state] password_file (mode 0600) or in the file named by PGPASSFILE"
                .into(),
        ));
    }
    if pg.get_user().is_none() {
        return Err(StateError::Config(
            "the postgres URL names no user: postgresql://user@host:port/database".into(),
        ));
    }
    if pg.get_hosts().is_empty() {
        return Err(StateError::Config(
            "the postgres URL names no host: postgresql://user@host:port/database".into(),
        ));
    }
    if let Some(path) = password_file {
        crate::issuer::files::check_private_mode(path)
            .map_err(|e| StateError::Config(format!("password_file: {e}")))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| StateError::Config(format!("{}: {e}", path.display())))?;
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(StateError::Config(format!("{} is empty", path.display())));
        }
        pg.password(password);
    } else if let Some(path) = pgpass {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StateError::Config(format!("PGPASSFILE {}: {e}", path.display())))?;
        if let Some(p) = pgpass_lookup(&text, &pg) {
            pg.password(p);
        }
    }
    pg.connect_timeout(CONNECT_WAIT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .tcp_user_timeout(Duration::from_secs(2))
        .application_name("drawbridge");
    Ok(pg)
}

/// The password of the first `.pgpass` line matching the connection, as libpq does.
fn pgpass_lookup(text: &str, pg: &tokio_postgres::Config) -> Option<String> {
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_string(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = pg.get_user().unwrap_or_default().to_string();
    let db = pg.get_dbname().map(str::to_string).unwrap_or(user.clone());
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        let [h, p, d, u, pw] = fields.as_slice() else {
            continue;
        };
        let fits = |pat: &String, v: &str| pat == "*" || pat == v;
        if fits(h, &host) && fits(p, &port) && fits(d, &db) && fits(u, &user) {
            return Some(pw.clone());
        }
    }
    None
}

/// Splits on unescaped `:`; `\:` and `\\` stand for themselves.
fn split_pgpass(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(last)) = (chars.next(), out.last_mut()) {
                    last.push(n);
                }
            }
            ':' if out.len() < 5 => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

/// `user@host:port/db` without a password.
pub fn shown(pg: &tokio_postgres::Config) -> String {
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => String::new(),
    };
    format!(
        "{}@{}:{}/{}",
        pg.get_user().unwrap_or_default(),
        host,
        pg.get_ports().first().copied().unwrap_or(5432),
        pg.get_dbname().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_password_in_the_url_is_refused_without_repeating_it() {
        for url in [
            "postgresql://drawbridge:hunter2@db.example.org/drawbridge",
            "postgresql://drawbridge@db.example.org/drawbridge?password=hunter2",
        ] {
            let e = parse(url, None, None).unwrap_err().to_string();
            assert!(e.contains("carries a password"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn urls_without_user_or_of_another_form_are_refused() {
        assert!(parse("postgresql://db.example.org/x", None, None).is_err());
        assert!(parse("host=db user=x", None, None).is_err());
        let pg = parse("postgresql://u@db.example.org:6543/x", None, None).unwrap();
        assert_eq!(shown(&pg), "u@db.example.org:6543/x");
        assert!(pg.get_password().is_none());
    }

    #[test]
    fn the_state_section_names_the_replica_and_bounds_the_lease() {
        let cfg = |text: &str| crate::config::Config::parse(text).unwrap();
        assert!(from_config(&cfg(""), 2222).unwrap().is_none());
        let base = "[state]\npostgres = \"postgresql://u@db/x\"\n";
        let t = from_config(&cfg(&format!("{base}replica = \"a-1\"\n")), 0)
            .unwrap()
            .unwrap();
        assert_eq!(t.replica, "a-1");
        assert_eq!(t.lease, Duration::from_secs(15));
        // No name and no SSH port to make one from: refused, naming the key.
        let e = from_config(&cfg(base), 0).unwrap_err().to_string();
        assert!(e.contains("[state] replica"), "{e}");
        let e = from_config(&cfg(&format!("{base}replica = \"a b\"\n")), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("replica:"), "{e}");
        let e = from_config(&cfg(&format!("{base}replica = \"a\"\nlease = \"1s\"\n")), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 3s"), "{e}");
        assert!(crate::config::Config::parse("[state]\npostgress = \"x\"\n").is_err());
    }

    #[test]
    fn the_password_comes_from_the_file_or_pgpass() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = parse("postgresql://u@h/d", Some(&f), None).unwrap_err();
        assert!(e.to_string().contains("password_file"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let pg = parse("postgresql://u@h/d", Some(&f), None).unwrap();
        assert_eq!(pg.get_password(), Some(&b"s3cret"[..]));

        let pass = dir.path().join("pgpass");
        std::fs::write(&pass, "# c\nother:*:*:*:no\nh:5432:d:u:a\\:b\n").unwrap();
        let pg = parse("postgresql://u@h/d", None, Some(&pass)).unwrap();
        assert_eq!(pg.get_password(), Some(&b"a:b"[..]));
        let pg = parse("postgresql://v@h/d", None, Some(&pass)).unwrap();
        assert!(pg.get_password().is_none());
    }
}
