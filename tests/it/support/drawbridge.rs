//! The real `drawbridge serve` for integration tests: a temp folder with its own config
//! (both listeners on port 0: the bound addresses are read back from the lines `serve`
//! prints), policy and keys; curl for the HTTPS API; stopped on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::audit::audit_records;
use super::process::{run_with_input, run_with_timeout, wait_until};
use super::ssh::{Ca, Key, keygen};
use super::unique;

pub const BIN: &str = env!("CARGO_BIN_EXE_drawbridge");

/// The password the tests give their users.
pub const PW: &str = "correct horse battery";

/// Runs the binary in `cwd` to completion (killed after 60 s, which fails the test), with
/// `stdin` as its input; returns (status code, stdout, stderr).
#[track_caller]
pub fn run(args: &[&str], cwd: &Path, stdin: Option<&str>) -> (i32, String, String) {
    let out = run_with_input(
        Command::new(BIN).args(args).current_dir(cwd),
        stdin.map(str::as_bytes),
        Duration::from_secs(60),
    );
    assert!(
        !out.timed_out,
        "drawbridge {args:?} did not finish within 60 s; stderr: {}",
        out.stderr
    );
    (out.code(), out.stdout, out.stderr)
}

/// A new Ed25519 key `name` in the server's folder; the path of its public key.
pub fn user_key(d: &Drawbridge, name: &str) -> PathBuf {
    keygen(&d.path().join(name), "ed25519").public()
}

/// `POST /v1/certs{query}` with the public key file `key` as the body and `auth` as more
/// curl arguments (e.g. `["-u", "alice:pw"]` or `["-H", "Authorization: Bearer ..."]`).
pub fn post_key(d: &Drawbridge, auth: &[&str], key: &Path, query: &str) -> Resp {
    let data = format!("@{}", key.display());
    let mut args: Vec<&str> = auth.to_vec();
    args.extend_from_slice(&["--data-binary", &data]);
    d.curl(&format!("/v1/certs{query}"), &args)
}

/// `POST /v1/certs` with a JSON `body` and `auth` as more curl arguments.
pub fn post_json(d: &Drawbridge, auth: &[&str], body: &str) -> Resp {
    let mut args: Vec<&str> = auth.to_vec();
    args.extend_from_slice(&[
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body,
    ]);
    d.curl("/v1/certs", &args)
}

/// curl's `-u` value for `user` with the tests' password.
pub fn basic(user: &str) -> String {
    format!("{user}:{PW}")
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

/// The fixture policy as files of `policies/`.
pub const FIXTURE_POLICY: [(&str, &str); 3] = [
    ("hosts.toml", POLICY_HOSTS),
    ("principals.toml", POLICY_PRINCIPALS),
    ("people.toml", POLICY_PEOPLE),
];

impl Drawbridge {
    /// Writes the default test policy plus `extra_config` and starts the server.
    pub fn start(extra_config: &str) -> Drawbridge {
        Self::start_with(&FIXTURE_POLICY, extra_config, &[])
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
        Self::prepare_sections(policy, extra_config, "", ssh_extra)
    }

    /// The default test policy with more `[api]` keys in `api_extra` (e.g.
    /// `max_connections = 16`), started.
    pub fn start_with_api(api_extra: &str) -> Drawbridge {
        let mut d = Self::prepare_sections(&FIXTURE_POLICY, "", api_extra, "");
        d.spawn(&[]);
        d
    }

    fn prepare_sections(
        policy: &[(&str, &str)],
        extra_config: &str,
        api_extra: &str,
        ssh_extra: &str,
    ) -> Drawbridge {
        let dir = tempfile::tempdir().expect("tempdir");
        let pdir = dir.path().join("policies");
        std::fs::create_dir_all(&pdir).expect("mkdir");
        for (name, text) in policy {
            std::fs::write(pdir.join(name), text).expect("write policy");
        }
        // Port 0 for both: `serve` prints what it bound (read back by `wait_ready`).
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let (api, ssh) = (unbound, unbound);
        let config = format!(
            "[api]\nlisten = \"{api}\"\n{api_extra}\n\n[ssh]\nlisten = \"{ssh}\"\nhost_names = [\"localhost\", \"127.0.0.1\"]\n{ssh_extra}\n\n{extra_config}\n"
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

    /// Waits (30 s at most) for the lines `serve` prints once a listener is bound,
    /// `drawbridge: SSH bastion on ADDR` and `drawbridge: API on https://ADDR`, and takes
    /// the addresses from them (they change on every start).
    fn wait_ready(&mut self, bastion_only: bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("drawbridge serve exited ({status}): {}", self.server_log());
            }
            let log = self.server_log();
            let ssh = listening_on(&log, "drawbridge: SSH bastion on ");
            let api = listening_on(&log, "drawbridge: API on https://");
            if let Some(ssh) = ssh
                && (bastion_only || api.is_some())
            {
                self.ssh = ssh;
                self.api = api.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
                return;
            }
            if Instant::now() > deadline {
                panic!("drawbridge serve not ready in 30 s: {log}");
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
        let headers = self.path().join(unique("h"));
        let body = self.path().join(unique("b"));
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
            .current_dir(self.path());
        let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
        let status: u16 = out
            .stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl failed: {out:?}"));
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
        audit_records(&self.audit_path())
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
        send_signal(child.id(), "TERM");
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

    /// One of the CA keys `ca init` or `serve` made in `ca/` (`user_ca`, `host_ca`).
    pub fn ca(&self, name: &str) -> Ca {
        Ca {
            key: Key {
                path: self.path().join("ca").join(name),
            },
        }
    }

    /// Rewrites the policy (`edit` gets the policy folder), sends SIGHUP and waits for
    /// the reload to be applied; fails the test when it is not within 10 s.
    #[track_caller]
    pub fn reload_policy(&self, edit: impl FnOnce(&Path)) {
        let before = self.events("policy.reloaded").len();
        edit(&self.path().join("policies"));
        self.signal("HUP");
        wait_until(
            Duration::from_secs(10),
            || self.events("policy.reloaded").len() > before,
            || {
                format!(
                    "policy not reloaded: {:?}\n{}",
                    self.events("policy.rejected"),
                    self.server_log()
                )
            },
        );
    }

    /// Sends a signal (e.g. "HUP") to the server.
    pub fn signal(&self, sig: &str) {
        if let Some(child) = self.child.as_ref() {
            send_signal(child.id(), sig);
        }
    }
}

/// `kill -SIG PID`, bounded.
fn send_signal(pid: u32, sig: &str) {
    // A server that has exited already is the caller's to notice (stop() returns its code).
    run_with_timeout(
        Command::new("kill").args([format!("-{sig}"), pid.to_string()]),
        Duration::from_secs(10),
    );
}

impl Drop for Drawbridge {
    /// Stops the process, then checks every record it wrote against
    /// `docs/audit-events.md` (kinds, fields, and the policy version and rule of every
    /// decision): every test that runs the binary checks the audit schema too.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            return;
        }
        let problems = super::audit::schema_problems(&self.audit());
        assert!(
            problems.is_empty(),
            "the audit log does not match docs/audit-events.md:\n{}",
            problems.join("\n")
        );
    }
}

/// The address on the first complete line of `log` that starts with `prefix`.
fn listening_on(log: &str, prefix: &str) -> Option<SocketAddr> {
    let complete = &log[..log.rfind('\n')?];
    complete
        .lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
}
