//! Keys and certificates made with `ssh-keygen`, a temp folder per test, and the OpenSSH
//! client driven through a generated `ssh_config` (no agent, no `~/.ssh`, no global known
//! hosts: nothing outside the test's folder is read or written).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{COMMAND_TIMEOUT, Output, run_ok, run_with_timeout};
use super::unique;

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
    keygen_with(path, &["-t", key_type])
}

/// `ssh-keygen -N '' -f PATH ARGS` (e.g. `["-t", "rsa", "-b", "1024"]`), the key's
/// comment its file name.
pub fn keygen_with(path: &Path, args: &[&str]) -> Key {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    let _ = fs::remove_file(path);
    let _ = fs::remove_file(with_suffix(path, ".pub"));
    let comment = path
        .file_name()
        .map_or("test".into(), |n| n.to_string_lossy());
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-N", "", "-C", &comment, "-f"])
            .arg(path)
            .args(args),
    );
    Key {
        path: path.to_path_buf(),
    }
}

/// `ssh-keygen -L -f CERT` output for a certificate line (written into `dir` first).
#[track_caller]
pub fn cert_info(dir: &Path, cert_line: &str) -> String {
    let path = dir.join(unique("cert") + ".pub");
    fs::write(&path, cert_line).expect("write cert");
    let out = run_with_timeout(
        Command::new("ssh-keygen").arg("-L").arg("-f").arg(&path),
        COMMAND_TIMEOUT,
    );
    assert!(
        out.success(),
        "ssh-keygen -L refused the certificate: {out:?}"
    );
    out.stdout
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
#[track_caller]
pub fn refused(out: &Output) {
    assert!(
        !out.success() && !out.timed_out,
        "expected a refusal, got {out:?}"
    );
}
