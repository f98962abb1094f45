//! A throwaway PostgreSQL cluster: `initdb` and `pg_ctl` in a temp dir (as the `postgres`
//! user when the tests run as root, as PostgreSQL refuses to run as root), on a free
//! loopback port, its Unix socket in the temp dir. The role `drawbridge` logs in with a
//! password (SCRAM) over TCP: [`Postgres::state_config`] is the `[state]` section for it.
//! Stopped on drop (`pg_ctl stop -m immediate`, bounded).
//!
//! Fails (never skips) when PostgreSQL 15 is missing: `scripts/test` installs the Debian
//! package `postgresql`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::ports::free_port;
use super::process::{Output, run_with_timeout};

const BIN: &str = "/usr/lib/postgresql/15/bin";
/// The password of the role `drawbridge` (a test secret, never a real one).
pub const PASSWORD: &str = "test-only-pg-password";

pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    data: PathBuf,
    as_postgres: bool,
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

impl Postgres {
    /// `initdb` and start; panics naming the package when PostgreSQL is not installed.
    pub fn start() -> Postgres {
        assert!(
            Path::new(BIN).join("initdb").exists(),
            "PostgreSQL 15 is missing ({BIN}/initdb): install the Debian package postgresql \
             (scripts/test does)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let as_postgres = running_as_root();
        if as_postgres {
            let out = run_with_timeout(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path()),
                Duration::from_secs(10),
            );
            assert!(out.success(), "chown: {out:?}");
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("pwfile");
        if as_postgres {
            let _ = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&pwfile)
                .status();
        }
        let data = dir.path().join("data");
        let pg = Postgres {
            port: free_port(),
            data,
            as_postgres,
            dir,
        };
        let out = pg.run(
            "initdb",
            &[
                "-D",
                pg.data.to_str().expect("utf-8"),
                "-U",
                "drawbridge",
                "--pwfile",
                pwfile.to_str().expect("utf-8"),
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            Duration::from_secs(60),
        );
        assert!(out.success(), "initdb failed: {out:?}");
        let _ = std::fs::remove_file(&pwfile);
        pg.start_again();
        pg
    }

    fn run(&self, tool: &str, args: &[&str], limit: Duration) -> Output {
        let path = format!("{BIN}/{tool}");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &path]);
            c
        } else {
            Command::new(&path)
        };
        cmd.args(args).current_dir(self.dir.path());
        run_with_timeout(&mut cmd, limit)
    }

    /// Starts the stopped cluster (again), waiting until it accepts connections.
    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        let out = self.run(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "30",
                "-D",
                self.data.to_str().expect("utf-8"),
                "-l",
                log.to_str().expect("utf-8"),
                "-o",
                &opts,
            ],
            Duration::from_secs(40),
        );
        assert!(
            out.success(),
            "pg_ctl start failed: {out:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the cluster as an outage does (`-m immediate`: every connection cut at once,
    /// nothing flushed politely), waiting until it is down.
    pub fn stop(&self) {
        let out = self.run(
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-t",
                "20",
                "-m",
                "immediate",
                "-D",
                self.data.to_str().expect("utf-8"),
            ],
            Duration::from_secs(30),
        );
        assert!(out.success(), "pg_ctl stop failed: {out:?}");
    }

    /// The server and every backend process, paused (`SIGSTOP`: connections stay open and
    /// nothing answers, as a database behind a dead network) or resumed (`SIGCONT`).
    pub fn freeze(&self, frozen: bool) {
        // No pid file: the cluster is stopped, nothing to pause or resume.
        let Ok(pid_file) = std::fs::read_to_string(self.data.join("postmaster.pid")) else {
            return;
        };
        let postmaster: u32 = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("pid");
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        let sig = if frozen { "-STOP" } else { "-CONT" };
        for pid in pids {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }

    /// `postgresql://drawbridge@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgresql://drawbridge@127.0.0.1:{}/postgres", self.port)
    }

    /// A password file (mode 0600) in `dir`, and the `[state]` section naming it.
    pub fn state_config(&self, dir: &Path, replica: &str, lease: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let pw = dir.join("pg_password");
        std::fs::write(&pw, format!("{PASSWORD}\n")).expect("password file");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        format!(
            "[state]\npostgres = \"{}\"\npassword_file = \"{}\"\nreplica = \"{replica}\"\nlease = \"{lease}\"\n",
            self.url(),
            pw.display()
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.freeze(false);
        let _ = self.run(
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-t",
                "10",
                "-m",
                "immediate",
                "-D",
                self.data.to_str().unwrap_or(""),
            ],
            Duration::from_secs(15),
        );
    }
}
