//! Starting the real `drawbridge` binary for integration tests: a temp folder with its
//! own config (free loopback ports), policy and keys; a curl wrapper for the HTTPS API.
//! Every wait is bounded; the process is stopped on drop.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_drawbridge");

// Shared by tests/common and tests/harness; a test crate may include both.
#[allow(clippy::duplicate_mod)]
#[path = "../support/ports.rs"]
mod ports;
pub use ports::free_port;

/// Runs the binary to completion with a bounded time; returns (status code, stdout, stderr).
pub fn run(args: &[&str], cwd: &Path, stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drawbridge");
    if let Some(input) = stdin {
        let mut s = child.stdin.take().expect("stdin");
        s.write_all(input.as_bytes()).expect("write stdin");
    } else {
        drop(child.stdin.take());
    }
    let out = wait_output(child, Duration::from_secs(60));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits for a child's output, killing it past `limit`.
pub fn wait_output(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().expect("output"),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "process did not finish within {limit:?}; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// A response seen by curl.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// A running `drawbridge serve` in its own folder.
pub struct Drawbridge {
    pub dir: tempfile::TempDir,
    pub api: SocketAddr,
    pub ssh: SocketAddr,
    child: Option<Child>,
    pub log: PathBuf,
}

/// A small policy: web-1 and db-1, roles web-deploy (group ops: alice, carol) and dba
/// (user bob), a temporary grant for ivy.
pub const POLICY_HOSTS: &str = r#"
[hosts.web-1]
address = "10.20.0.11:22"
labels  = { role = "web", env = "prod" }

[hosts.db-1]
address = "10.20.0.21"
labels  = { role = "db" }
"#;

pub const POLICY_PRINCIPALS: &str = r#"
[principals.web-deploy]
hosts   = { role = "web" }
logins  = ["deploy"]
max_ttl = "15m"
extensions = ["permit-pty", "permit-port-forwarding"]

[principals.dba]
hosts  = ["db-1"]
logins = ["postgres"]
"#;

pub const POLICY_PEOPLE: &str = r#"
[groups.ops]
members    = ["alice", "carol"]
principals = ["web-deploy"]

[users.bob]
principals = ["dba"]
source     = ["192.0.2.0/24"]

[[temporary]]
user      = "ivy"
principal = "dba"
until     = "2099-12-01T00:00:00Z"
reason    = "INC-4711"
"#;

impl Drawbridge {
    /// Writes the default test policy plus `extra_config` and starts the server.
    pub fn start(extra_config: &str) -> Drawbridge {
        Self::start_with(
            &[
                ("hosts.toml", POLICY_HOSTS),
                ("principals.toml", POLICY_PRINCIPALS),
                ("people.toml", POLICY_PEOPLE),
            ],
            extra_config,
            &[],
        )
    }

    /// `policy`: files under `policies/`; `extra_config`: more drawbridge.toml (it may
    /// not repeat [api] or [ssh]); `args`: more `serve` flags.
    pub fn start_with(policy: &[(&str, &str)], extra_config: &str, args: &[&str]) -> Drawbridge {
        let mut d = Self::prepare(policy, extra_config);
        d.spawn(args);
        d
    }

    /// Writes the folder (config and policy) without starting anything; see
    /// [`Drawbridge::launch`].
    pub fn prepare(policy: &[(&str, &str)], extra_config: &str) -> Drawbridge {
        Self::prepare_with_ssh(policy, extra_config, "")
    }

    /// Like [`Drawbridge::prepare`], with more `[ssh]` keys in `ssh_extra`.
    pub fn prepare_with_ssh(
        policy: &[(&str, &str)],
        extra_config: &str,
        ssh_extra: &str,
    ) -> Drawbridge {
        let dir = tempfile::tempdir().expect("tempdir");
        let pdir = dir.path().join("policies");
        std::fs::create_dir_all(&pdir).expect("mkdir");
        for (name, text) in policy {
            std::fs::write(pdir.join(name), text).expect("write policy");
        }
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let ssh: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let config = format!(
            "[api]\nlisten = \"{api}\"\n\n[ssh]\nlisten = \"{ssh}\"\nhost_names = [\"localhost\", \"127.0.0.1\"]\n{ssh_extra}\n\n{extra_config}\n"
        );
        std::fs::write(dir.path().join("drawbridge.toml"), config).expect("write config");
        let mut d = Drawbridge {
            dir,
            api,
            ssh,
            child: None,
            log: PathBuf::new(),
        };
        d.log = d.dir.path().join("serve.log");
        d
    }

    /// Starts `serve` with `args` in a prepared folder.
    pub fn launch(&mut self, args: &[&str]) {
        assert!(self.child.is_none(), "already running");
        self.spawn(args);
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> String {
        self.path().join("drawbridge.toml").display().to_string()
    }

    pub fn audit_path(&self) -> PathBuf {
        self.path().join("var/audit.log")
    }

    pub fn cacert(&self) -> PathBuf {
        self.path().join("ca/tls.crt")
    }

    fn spawn(&mut self, args: &[&str]) {
        let log = std::fs::File::create(&self.log).expect("log");
        let log2 = log.try_clone().expect("log");
        let config = self.config();
        let mut cmd_args = vec!["--config", config.as_str(), "serve"];
        cmd_args.extend_from_slice(args);
        let child = Command::new(BIN)
            .args(&cmd_args)
            .current_dir(self.path())
            .env("DRAWBRIDGE_LOG", "info,drawbridge=debug")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("spawn serve");
        self.child = Some(child);
        self.wait_ready(args.contains(&"--bastion-only"));
    }

    fn wait_ready(&mut self, bastion_only: bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("drawbridge serve exited ({status}): {}", self.server_log());
            }
            let ready = if bastion_only {
                std::net::TcpStream::connect(self.ssh).is_ok()
            } else {
                std::net::TcpStream::connect(self.api).is_ok()
                    && std::net::TcpStream::connect(self.ssh).is_ok()
            };
            if ready {
                return;
            }
            if Instant::now() > deadline {
                panic!("drawbridge serve not ready in 30 s: {}", self.server_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a `drawbridge` command against this server's config.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        let config = self.config();
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        run(&all, self.path(), stdin)
    }

    pub fn add_user(&self, name: &str, password: &str) {
        let (code, out, err) = self.cli(
            &["user", "add", name, "--password-stdin"],
            Some(&format!("{password}\n")),
        );
        assert_eq!(code, 0, "user add: {out} {err}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.api, path)
    }

    /// curl against the API, trusting only our TLS certificate.
    pub fn curl(&self, path: &str, args: &[&str]) -> Resp {
        let headers = self.path().join(format!("h-{}", rand_suffix()));
        let body = self.path().join(format!("b-{}", rand_suffix()));
        let cacert = self.cacert();
        let mut cmd = Command::new("curl");
        cmd.args(["--silent", "--show-error", "--max-time", "20", "--cacert"])
            .arg(&cacert)
            .arg("-D")
            .arg(&headers)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code}"])
            .args(args)
            .arg(self.url(path))
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = wait_output(cmd.spawn().expect("curl"), Duration::from_secs(30));
        let status: u16 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl failed: {}", String::from_utf8_lossy(&out.stderr)));
        let resp = Resp {
            status,
            headers: std::fs::read_to_string(&headers).unwrap_or_default(),
            body: std::fs::read(&body).unwrap_or_default(),
        };
        let _ = std::fs::remove_file(headers);
        let _ = std::fs::remove_file(body);
        resp
    }

    /// The audit records, parsed.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// The audit records of one event kind.
    pub fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        self.audit()
            .into_iter()
            .filter(|r| r["event"] == kind)
            .collect()
    }

    /// Sends SIGTERM and waits (bounded) for exit; returns the exit code.
    pub fn stop(&mut self) -> i32 {
        let Some(mut child) = self.child.take() else {
            return -1;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return s.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("drawbridge did not stop within 40 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again in the same folder (after [`Drawbridge::stop`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop() first");
        self.spawn(&[]);
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `drawbridge audit verify` on this server's audit log: (exit code, stdout + stderr).
    pub fn verify_audit(&self) -> (i32, String) {
        let path = self.audit_path();
        let (code, out, err) = self.cli(&["audit", "verify", path.to_str().expect("utf-8")], None);
        (code, out + &err)
    }

    /// A rustls client configuration trusting only this server's TLS certificate, offering
    /// the given ALPN protocols.
    pub fn tls_client(&self, alpn: &[&[u8]]) -> std::sync::Arc<rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(self.cacert()).expect("tls.crt")
        {
            roots.add(cert.expect("certificate")).expect("trusted");
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        std::sync::Arc::new(cfg)
    }

    /// Sends a signal (e.g. "HUP") to the server.
    pub fn signal(&self, sig: &str) {
        if let Some(child) = self.child.as_ref() {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &child.id().to_string()])
                .status();
        }
    }
}

impl Drop for Drawbridge {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `cond` every 50 ms until it holds or `limit` passes; whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Makes an OpenSSH key with ssh-keygen; returns the private key path.
pub fn keygen(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .args(args)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// `ssh-keygen -L -f CERT` output.
pub fn cert_info(dir: &Path, cert_line: &str) -> String {
    let path = dir.join(format!("cert-{}.pub", rand_suffix()));
    std::fs::write(&path, cert_line).expect("write cert");
    let out = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("ssh-keygen -L");
    assert!(
        out.status.success(),
        "ssh-keygen -L refused the certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test OIDC identity provider: Ed25519 keys, a JWKS file in its own folder (it must
/// exist before the server starts), and tokens signed or forged on demand.
pub mod idp {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ed25519_dalek::SigningKey;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    pub const ISS: &str = "https://idp.test";

    pub fn signing_key() -> SigningKey {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("random");
        SigningKey::from_bytes(&seed)
    }

    pub fn jwks(keys: &[(&str, &SigningKey)]) -> String {
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .map(|(kid, k)| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
                    "x": URL_SAFE_NO_PAD.encode(k.verifying_key().as_bytes()),
                })
            })
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    /// An EdDSA token with `kid`, signed by `k`.
    pub fn token(k: &SigningKey, kid: &str, claims: serde_json::Value) -> String {
        let pem = k.to_pkcs8_pem(Default::default()).expect("pkcs8");
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(
            &h,
            &claims,
            &EncodingKey::from_ed_pem(pem.as_bytes()).expect("key"),
        )
        .expect("encode")
    }

    /// Claims naming `user` and `groups`, issued now, expiring `exp_in` seconds from now.
    pub fn claims(user: &str, groups: &[&str], exp_in: i64) -> serde_json::Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        serde_json::json!({
            "iss": ISS, "aud": "drawbridge", "sub": "id-123",
            "preferred_username": user, "groups": groups,
            "iat": now, "exp": now + exp_in,
        })
    }

    /// A token with an empty signature (for `alg: none`).
    pub fn unsigned(header: serde_json::Value, claims: serde_json::Value) -> String {
        let e = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.", e(header), e(claims))
    }

    /// HS256 keyed with the provider's public key (algorithm confusion).
    pub fn hmac_with_public_key(k: &SigningKey, kid: &str, claims: serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.into());
        let x = URL_SAFE_NO_PAD.encode(k.verifying_key().as_bytes());
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(x.as_bytes())).expect("encode")
    }

    /// `token` with its payload replaced by `claims` (the signature no longer matches).
    pub fn edited(token: &str, claims: serde_json::Value) -> String {
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
        parts.join(".")
    }

    /// A provider with key `k1`, its JWKS written to a folder of its own.
    pub struct Idp {
        pub key: SigningKey,
        dir: tempfile::TempDir,
    }

    impl Idp {
        pub fn new() -> Idp {
            let key = signing_key();
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("idp-jwks.json"), jwks(&[("k1", &key)]))
                .expect("write jwks");
            Idp { key, dir }
        }

        /// The `[[oidc]]` config block for this provider.
        pub fn config(&self) -> String {
            format!(
                "[[oidc]]\nissuer = \"{ISS}\"\naudience = \"drawbridge\"\njwks = \"{}\"\nuser_claim = \"preferred_username\"\ngroups_claim = \"groups\"\n",
                self.dir.path().join("idp-jwks.json").display()
            )
        }

        /// A good token for `user` in `groups`, valid for five minutes.
        pub fn good(&self, user: &str, groups: &[&str]) -> String {
            token(&self.key, "k1", claims(user, groups, 300))
        }
    }

    impl Default for Idp {
        fn default() -> Self {
            Self::new()
        }
    }
}
