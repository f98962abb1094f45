//! The shared integration-test harness: free loopback ports, temp dirs, keys and
//! certificates made with `ssh-keygen`, a **real OpenSSH `sshd`** as a DMZ host, and an
//! OpenSSH client driven through a generated `ssh_config`.
//!
//! Rules it keeps, so tests using it stay hermetic and never hang:
//! - every child process is killed on drop, every wait is bounded;
//! - nothing outside the test's temp dir is read or written (apart from `/run/sshd`,
//!   which `sshd` needs), no agent, no `~/.ssh`, no global known hosts;
//! - ports are picked free on 127.0.0.1 at the time of use.
//!
//! Typical use:
//!
//! ```ignore
//! let t = TestDir::new();
//! let user_ca = Ca::new(&t, "user_ca");
//! let host_ca = Ca::new(&t, "host_ca");
//! let sshd = Sshd::start(&t, "web-1", &[&user_ca.public()], &host_ca,
//!                        &[("root", &["role"])]).unwrap();
//! let alice = t.keygen("alice");
//! user_ca.sign_user(&alice.public(), "alice", &["role"], "-1m:+5m", &[]);
//! let ssh = SshClient::new(&t, &host_ca, bastion_port, "alice", &alice);
//! ssh.add_target("web-1", "root");
//! let out = ssh.run(&["web-1", "echo", "ok"]);
//! ```
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod rawssh;
pub mod rawssh_session;
pub mod wire;

/// The longest any single external command may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

// Shared by tests/common and tests/harness; a test crate may include both.
#[allow(clippy::duplicate_mod)]
#[path = "../support/ports.rs"]
mod ports;
pub use ports::free_port;

/// Waits until something accepts TCP on `addr`, up to `timeout`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// What a finished (or killed) command left behind.
#[derive(Debug)]
pub struct Output {
    /// `None` when the command was killed at the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.map(|s| s.success()).unwrap_or(false)
    }
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// Runs `cmd` with stdin closed, capturing output, killing it after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    wait_with_timeout(child, timeout)
}

/// Waits for a spawned child (stdout/stderr piped) at most `timeout`, then kills it.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Output {
    // Drain the pipes in threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let mut b = Vec::new();
            let _ = o.read_to_end(&mut b);
            s = String::from_utf8_lossy(&b).into_owned();
        }
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let mut b = Vec::new();
            let _ = e.read_to_end(&mut b);
            s = String::from_utf8_lossy(&b).into_owned();
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
        timed_out,
    }
}

/// Runs a command that must succeed; panics with its output otherwise.
pub fn run_ok(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = run_with_timeout(cmd, COMMAND_TIMEOUT);
    assert!(out.success(), "{shown} failed: {out:?}");
    out
}

/// A temp dir that lives as long as the test (removed on drop).
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

impl TestDir {
    pub fn new() -> TestDir {
        TestDir {
            dir: tempfile::Builder::new()
                .prefix("drawbridge-test-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Writes `contents` to `rel` (creating folders), returns the full path.
    pub fn write(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(&p, contents).expect("write");
        p
    }

    /// A new Ed25519 key pair made by `ssh-keygen` at `DIR/name` (and `name.pub`).
    pub fn keygen(&self, name: &str) -> Key {
        keygen(&self.join(name), "ed25519")
    }
}

/// A key pair on disk (`path` and `path.pub`), e.g. from `ssh-keygen`.
#[derive(Debug, Clone)]
pub struct Key {
    pub path: PathBuf,
}

impl Key {
    /// The public key file.
    pub fn public(&self) -> PathBuf {
        with_suffix(&self.path, ".pub")
    }
    /// Where `ssh` looks for the certificate by itself: `path-cert.pub`.
    pub fn cert(&self) -> PathBuf {
        with_suffix(&self.path, "-cert.pub")
    }
    /// The public key line.
    pub fn public_line(&self) -> String {
        fs::read_to_string(self.public())
            .expect("public key")
            .trim()
            .to_string()
    }
}

pub fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `ssh-keygen -t TYPE -N '' -f PATH` (type: ed25519, ecdsa, rsa, ...).
pub fn keygen(path: &Path, key_type: &str) -> Key {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    let _ = fs::remove_file(path);
    let _ = fs::remove_file(with_suffix(path, ".pub"));
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", key_type, "-N", "", "-C", "test", "-f"])
            .arg(path),
    );
    Key {
        path: path.to_path_buf(),
    }
}

/// A CA key made by `ssh-keygen`, signing with `ssh-keygen -s`.
#[derive(Debug, Clone)]
pub struct Ca {
    pub key: Key,
}

impl Ca {
    pub fn new(t: &TestDir, name: &str) -> Ca {
        Ca {
            key: t.keygen(name),
        }
    }

    pub fn public(&self) -> PathBuf {
        self.key.public()
    }

    pub fn public_line(&self) -> String {
        self.key.public_line()
    }

    /// Signs a user certificate for `pubkey` (written to `<key>-cert.pub` beside it and
    /// returned). `validity` is ssh-keygen's `-V` (e.g. `-1m:+5m`); `options` are extra
    /// `-O` values (e.g. `source-address=10.0.0.0/8`, `force-command=/bin/true`).
    pub fn sign_user(
        &self,
        pubkey: &Path,
        key_id: &str,
        principals: &[&str],
        validity: &str,
        serial: u64,
        options: &[&str],
    ) -> PathBuf {
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-s"])
            .arg(&self.key.path)
            .args(["-I", key_id, "-n", &principals.join(",")])
            .args(["-V", validity, "-z", &serial.to_string()]);
        for o in options {
            cmd.args(["-O", o]);
        }
        cmd.arg(pubkey);
        run_ok(&mut cmd);
        cert_path_for(pubkey)
    }

    /// Signs a host certificate (`ssh-keygen -s CA -h -n names`), returns its path.
    pub fn sign_host(&self, pubkey: &Path, names: &[&str]) -> PathBuf {
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-s"])
                .arg(&self.key.path)
                .args(["-h", "-I", names.first().copied().unwrap_or("host")])
                .args(["-n", &names.join(","), "-V", "-5m:+1d"])
                .arg(pubkey),
        );
        cert_path_for(pubkey)
    }

    /// The `known_hosts` line that trusts this CA for every host.
    pub fn known_hosts_line(&self) -> String {
        format!("@cert-authority * {}", self.public_line())
    }
}

/// `foo.pub` → `foo-cert.pub` (what ssh-keygen writes).
pub fn cert_path_for(pubkey: &Path) -> PathBuf {
    let s = pubkey.to_string_lossy();
    let base = s.strip_suffix(".pub").unwrap_or(&s);
    PathBuf::from(format!("{base}-cert.pub"))
}

/// A real OpenSSH `sshd` on 127.0.0.1, as a DMZ host that trusts our user CA.
///
/// It runs as root (`sshd -D -e -f CONFIG`), with its own host key and a host certificate
/// from the host CA, `TrustedUserCAKeys` = the given user CA keys and
/// `AuthorizedPrincipalsFile DIR/principals/%u`. Killed on drop.
pub struct Sshd {
    child: Option<Child>,
    pub port: u16,
    pub name: String,
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
            let log = dir.join("sshd.log");
            let log_file = fs::File::create(&log).map_err(|e| e.to_string())?;
            let child = Command::new(&sshd)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .map_err(|e| format!("cannot start sshd: {e}"))?;
            let mut s = Sshd {
                child: Some(child),
                port,
                name: name.to_string(),
                dir: dir.clone(),
                principals_dir: principals_dir.clone(),
                log,
            };
            if wait_for_port(s.addr(), Duration::from_secs(10)) {
                return Ok(s);
            }
            last_err = format!("sshd did not listen on {port}: {}", s.log());
            s.stop();
        }
        Err(last_err)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// What sshd wrote so far (`-e`: its log goes to stderr, kept in a file).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Rewrites the principals file of one login.
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
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The OpenSSH client, driven through a generated `ssh_config` (`-F`): a `bastion` block
/// and one `ProxyJump bastion` block per target. `ssh -J` passes only `-F`, `-l`, `-p`
/// and `-v` on to the jump connection, hence the file.
pub struct SshClient {
    pub config: PathBuf,
    known_hosts: PathBuf,
    bastion_port: u16,
    user: String,
    identity: PathBuf,
    certificate: Option<PathBuf>,
    targets: Vec<(String, String, String)>,
    extra: Vec<String>,
}

impl SshClient {
    /// A client for `user@bastion` on 127.0.0.1:`bastion_port`, trusting hosts signed by
    /// `host_ca` only, authenticating with `key` and `key.cert()` when it exists.
    pub fn new(
        t: &TestDir,
        name: &str,
        host_ca: &Ca,
        bastion_port: u16,
        user: &str,
        key: &Key,
    ) -> SshClient {
        let known_hosts = t.write(
            format!("{name}-known_hosts"),
            format!("{}\n", host_ca.known_hosts_line()),
        );
        let cert = key.cert();
        let c = SshClient {
            config: t.join(format!("{name}-ssh_config")),
            known_hosts,
            bastion_port,
            user: user.to_string(),
            identity: key.path.clone(),
            certificate: cert.exists().then_some(cert),
            targets: Vec::new(),
            extra: Vec::new(),
        };
        c.write();
        c
    }

    /// Adds `Host NAME` reached through the bastion as `login` (the name is what the
    /// bastion is asked to dial).
    pub fn add_target(&mut self, name: &str, login: &str) -> &mut Self {
        self.targets
            .push((name.to_string(), name.to_string(), login.to_string()));
        self.write();
        self
    }

    /// Adds `Host ALIAS` with `HostName hostname` through the bastion (e.g. to ask the
    /// bastion for a host that is not in the inventory).
    pub fn add_target_as(&mut self, alias: &str, hostname: &str, login: &str) -> &mut Self {
        self.targets
            .push((alias.to_string(), hostname.to_string(), login.to_string()));
        self.write();
        self
    }

    /// Extra lines for the `Host *` block (e.g. `Ciphers aes128-gcm@openssh.com`).
    pub fn option(&mut self, line: &str) -> &mut Self {
        self.extra.push(line.to_string());
        self.write();
        self
    }

    /// Uses `cert` as CertificateFile (or none).
    pub fn certificate(&mut self, cert: Option<PathBuf>) -> &mut Self {
        self.certificate = cert;
        self.write();
        self
    }

    fn write(&self) {
        let mut s = String::new();
        s.push_str(&format!(
            "Host bastion\n  HostName 127.0.0.1\n  Port {}\n  User {}\n",
            self.bastion_port, self.user
        ));
        for (alias, hostname, login) in &self.targets {
            s.push_str(&format!(
                "Host {alias}\n  HostName {hostname}\n  User {login}\n  ProxyJump bastion\n"
            ));
        }
        s.push_str("Host *\n");
        s.push_str(&format!("  IdentityFile {}\n", self.identity.display()));
        if let Some(c) = &self.certificate {
            s.push_str(&format!("  CertificateFile {}\n", c.display()));
        }
        s.push_str(&format!(
            "  IdentitiesOnly yes\n  IdentityAgent none\n  BatchMode yes\n  StrictHostKeyChecking yes\n  \
             UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  UpdateHostKeys no\n  \
             ControlMaster no\n  ControlPath none\n  ConnectTimeout 5\n  ServerAliveInterval 0\n  \
             PasswordAuthentication no\n  KbdInteractiveAuthentication no\n  AddKeysToAgent no\n  \
             ForwardAgent no\n  ForwardX11 no\n",
            self.known_hosts.display()
        ));
        for l in &self.extra {
            s.push_str(&format!("  {l}\n"));
        }
        fs::write(&self.config, s).expect("ssh_config");
    }

    /// A `Command` for `ssh -F CONFIG args...` (for callers that need stdin).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F").arg(&self.config).args(args);
        cmd
    }

    /// Runs `ssh -F CONFIG args...` with stdin closed, killed after `COMMAND_TIMEOUT`.
    pub fn run(&self, args: &[&str]) -> Output {
        run_with_timeout(&mut self.command(args), COMMAND_TIMEOUT)
    }
}

/// `SHA256:...` of a key file's public key.
pub fn fingerprint(key: &Key) -> String {
    ssh_key::PublicKey::read_openssh_file(key.public())
        .unwrap()
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string()
}

/// Asserts an ssh run was refused (not timed out).
pub fn refused(out: &Output) {
    assert!(
        !out.success() && !out.timed_out,
        "expected a refusal, got {out:?}"
    );
}

/// Waits up to 5 s for `cond`.
pub fn eventually(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Resident memory of a process (`"self"` or a pid), in KiB.
pub fn rss_kib(pid: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Writes the bastion tests' policy folder: web-1 (the test sshd, role web) and db-1 (a
/// dead loopback port, role db), principals web-admin (role web, root), web-deploy
/// (web-1, deploy), dba (db-1, postgres) and short (web-1, root, max_ttl 1m); group ops
/// (alice, carol when `alice_in_ops`, else carol) holds web-admin and web-deploy, bob holds
/// dba, dave holds short. Serial 666 and key id `stolen` are revoked. `extra_hosts`: more
/// `(name, address)` inventory entries with label role=web.
pub fn write_dmz_policy(
    dir: &Path,
    sshd_port: u16,
    dead_port: u16,
    alice_in_ops: bool,
    extra_hosts: &[(&str, String)],
) {
    let mut hosts = format!(
        "[hosts.web-1]\naddress = \"127.0.0.1:{sshd_port}\"\nlabels = {{ role = \"web\" }}\n\n\
         [hosts.db-1]\naddress = \"127.0.0.1:{dead_port}\"\nlabels = {{ role = \"db\" }}\n"
    );
    for (name, address) in extra_hosts {
        hosts.push_str(&format!(
            "\n[hosts.{name}]\naddress = \"{address}\"\nlabels = {{ role = \"web\" }}\n"
        ));
    }
    let principals = r#"[principals.web-admin]
hosts = { role = "web" }
logins = ["root"]

[principals.web-deploy]
hosts = ["web-1"]
logins = ["deploy"]

[principals.dba]
hosts = ["db-1"]
logins = ["postgres"]

[principals.short]
hosts = ["web-1"]
logins = ["root"]
max_ttl = "1m"
"#;
    let members = if alice_in_ops {
        r#"["alice", "carol"]"#
    } else {
        r#"["carol"]"#
    };
    let people = format!(
        "[groups.ops]\nmembers = {members}\nprincipals = [\"web-admin\", \"web-deploy\"]\n\n\
         [users.bob]\nprincipals = [\"dba\"]\n\n\
         [users.dave]\nprincipals = [\"short\"]\n"
    );
    let revoked = "[[revoked]]\nserial = 666\nreason = \"laptop lost\"\n\n\
                   [[revoked]]\nkey_id = \"stolen\"\nreason = \"account taken over\"\n";
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("hosts.toml"), hosts).unwrap();
    fs::write(dir.join("principals.toml"), principals).unwrap();
    fs::write(dir.join("people.toml"), people).unwrap();
    fs::write(dir.join("revoked.toml"), revoked).unwrap();
}

/// The JSON records of an audit log (unparsable lines skipped).
pub fn audit_records(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Records of `event` in the log at `path` whose fields match every `(key, value)`.
pub fn find_records(path: &Path, event: &str, fields: &[(&str, &str)]) -> Vec<serde_json::Value> {
    audit_records(path)
        .into_iter()
        .filter(|r| r["event"] == event)
        .filter(|r| {
            fields.iter().all(|(k, v)| match &r[*k] {
                serde_json::Value::String(s) => s == v,
                serde_json::Value::Number(n) => n.to_string() == *v,
                _ => false,
            })
        })
        .collect()
}

/// The first record of `event` matching `fields`, waiting up to 5 s for it (records of
/// a closing connection or forward are written after the client has gone).
pub fn expect_record_in(path: &Path, event: &str, fields: &[(&str, &str)]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut found = find_records(path, event, fields);
    while found.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        found = find_records(path, event, fields);
    }
    assert!(
        !found.is_empty(),
        "no {event} record with {fields:?}; the log has:\n{}",
        audit_records(path)
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    found[0].clone()
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
