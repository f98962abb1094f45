//! A real OpenSSH `sshd` on 127.0.0.1 as a DMZ host (killed on drop), and the check that
//! the tests needing one can run here. sshd cannot be asked to bind port 0 and report it,
//! so its port comes from [`free_port`], the only port allocator of the tests.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::ports::free_port;
use super::process::{COMMAND_TIMEOUT, listens_within, run_with_timeout};
use super::ssh::{Ca, TestDir, keygen};

/// A real OpenSSH `sshd` on 127.0.0.1, as a DMZ host that trusts our user CA.
///
/// It runs as root (`sshd -D -e -f CONFIG`), with its own host key and a host certificate
/// from the host CA, `TrustedUserCAKeys` = the given user CA keys and
/// `AuthorizedPrincipalsFile DIR/principals/%u`. Killed on drop.
pub struct Sshd {
    child: Option<Child>,
    pub port: u16,
    /// The folder with its config, keys and principals files.
    pub dir: PathBuf,
    /// `AuthorizedPrincipalsFile` folder: one file per login, one principal a line.
    pub principals_dir: PathBuf,
    log: PathBuf,
}

impl Sshd {
    /// Starts an sshd named `name` (its host certificate's principal) on a free port.
    /// `principals`: `(login, [principal, ...])` written to the principals folder.
    pub fn start(
        t: &TestDir,
        name: &str,
        user_ca_pubs: &[&Path],
        host_ca: &Ca,
        principals: &[(&str, &[&str])],
    ) -> Result<Sshd, String> {
        let dir = t.join(format!("sshd-{name}"));
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let principals_dir = dir.join("principals");
        fs::create_dir_all(&principals_dir).map_err(|e| e.to_string())?;
        for (login, ps) in principals {
            let mut text = ps.join("\n");
            text.push('\n');
            fs::write(principals_dir.join(login), text).map_err(|e| e.to_string())?;
        }
        let host_key = keygen(&dir.join("host_ed25519"), "ed25519");
        let host_cert = host_ca.sign_host(&host_key.public(), &[name]);
        let mut cas = String::new();
        for p in user_ca_pubs {
            cas.push_str(fs::read_to_string(p).map_err(|e| e.to_string())?.trim());
            cas.push('\n');
        }
        let cas_path = dir.join("trusted_user_ca.pub");
        fs::write(&cas_path, cas).map_err(|e| e.to_string())?;
        fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd: {e}"))?;

        let sshd = which_sshd()?;
        let mut last_err = String::new();
        // A picked port can be taken before sshd binds it: try a few.
        for _ in 0..3 {
            let port = free_port();
            let config = format!(
                "ListenAddress 127.0.0.1:{port}\n\
                 HostKey {hk}\n\
                 HostCertificate {hc}\n\
                 TrustedUserCAKeys {cas}\n\
                 AuthorizedPrincipalsFile {pd}/%u\n\
                 AuthorizedKeysFile none\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PermitRootLogin prohibit-password\n\
                 PidFile none\n\
                 LogLevel VERBOSE\n\
                 LoginGraceTime 20\n\
                 MaxStartups 100\n",
                hk = host_key.path.display(),
                hc = host_cert.display(),
                cas = cas_path.display(),
                pd = principals_dir.display(),
            );
            let config_path = dir.join("sshd_config");
            fs::write(&config_path, config).map_err(|e| e.to_string())?;
            let check = run_with_timeout(
                Command::new(&sshd).arg("-t").arg("-f").arg(&config_path),
                Duration::from_secs(10),
            );
            if !check.success() {
                return Err(format!("sshd -t failed: {}", check.stderr));
            }
            let mut s = Sshd {
                child: None,
                port,
                dir: dir.clone(),
                principals_dir: principals_dir.clone(),
                log: dir.join("sshd.log"),
            };
            s.spawn()?;
            if listens_within(s.addr(), Duration::from_secs(10)) {
                return Ok(s);
            }
            last_err = format!("sshd did not listen on {port}: {}", s.log());
            s.stop();
        }
        Err(last_err)
    }

    /// Starts `sshd -D -e -f DIR/sshd_config`, its log in `DIR/sshd.log`.
    fn spawn(&mut self) -> Result<(), String> {
        let log_file = fs::File::create(&self.log).map_err(|e| e.to_string())?;
        let child = Command::new(which_sshd()?)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(self.dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start sshd: {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the sshd, adds `lines` to its config and starts it again on the same port.
    #[track_caller]
    pub fn restart_with(&mut self, lines: &str) {
        self.stop();
        let path = self.dir.join("sshd_config");
        let mut config = fs::read_to_string(&path).expect("sshd_config");
        config.push_str(lines);
        fs::write(&path, config).expect("sshd_config");
        self.spawn().expect("sshd restarts");
        let addr = self.addr();
        assert!(
            listens_within(addr, Duration::from_secs(10)),
            "sshd did not listen on {addr} again: {}",
            self.log()
        );
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// What sshd wrote so far (`-e`: its log goes to stderr, kept in a file).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Writes the principals file of `login` (read by sshd at each login).
    pub fn set_principals(&self, login: &str, principals: &[&str]) {
        let mut text = principals.join("\n");
        text.push('\n');
        fs::write(self.principals_dir.join(login), text).expect("principals file");
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which_sshd() -> Result<PathBuf, String> {
    for p in ["/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd"] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    Err("sshd not found (apt-get install -y openssh-server)".into())
}

/// Whether the real-OpenSSH tests can run here (sshd present and we are root).
pub fn have_sshd() -> bool {
    which_sshd().is_ok() && is_root()
}

fn is_root() -> bool {
    run_with_timeout(Command::new("id").arg("-u"), COMMAND_TIMEOUT)
        .stdout
        .trim()
        == "0"
}

/// Fails (or skips, when `DRAWBRIDGE_ALLOW_SKIP` is set) when sshd or root is missing:
/// a skipped security test must never look like a passed one. Whether to go on.
pub fn need_sshd() -> bool {
    if have_sshd() {
        return true;
    }
    if std::env::var_os("DRAWBRIDGE_ALLOW_SKIP").is_some() {
        eprintln!("SKIPPED: needs /usr/sbin/sshd and root (DRAWBRIDGE_ALLOW_SKIP is set)");
        return false;
    }
    panic!(
        "the bastion tests need /usr/sbin/sshd and root: run scripts/test (it installs \
         openssh-server), or set DRAWBRIDGE_ALLOW_SKIP=1 to skip them knowingly"
    );
}
