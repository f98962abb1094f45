//! A DMZ: a real OpenSSH `sshd` as the host web-1 trusting a user CA, db-1 an inventory
//! host that is down, and the policy naming them ([`Dmz`]); and the real `drawbridge`
//! binary as the bastion in front of it ([`Bastion`]), with the OpenSSH client and the
//! russh client (`wire`) on the other side.
//!
//! The bastion's folder is prepared with `drawbridge ca init`, so the sshd can trust the
//! user CA before `serve` starts.

use std::ops::Deref;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::audit::{audit_records, expect_record_in, find_records};
use super::drawbridge::Drawbridge;
use super::ports::free_port;
use super::process::{Output, rss_kib};
use super::ssh::{Ca, Key, SshClient, TestDir, refused};
use super::sshd::{Sshd, need_sshd};
use super::wire;

/// The DMZ host, the CAs and the policy folder of one test.
pub struct Dmz {
    /// Client-side files: user keys, certificates, ssh configs.
    pub t: TestDir,
    pub sshd: Sshd,
    /// The user CA the sshd and the bastion trust, as `ssh-keygen -s` uses it.
    pub user_ca: Ca,
    pub host_ca: Ca,
    /// A loopback port nothing listens on: db-1's address (a host that is down).
    pub dead_port: u16,
    pub policy_dir: PathBuf,
}

impl Dmz {
    /// Starts web-1's sshd trusting the user CA keys in `trusted` (login root for the
    /// principals web-admin and short) and writes the policy into `policy_dir`.
    pub fn start(t: TestDir, user_ca: Ca, host_ca: Ca, trusted: &Path, policy_dir: &Path) -> Dmz {
        let sshd = Sshd::start(
            &t,
            "web-1",
            &[trusted],
            &host_ca,
            &[("root", &["web-admin", "short"])],
        )
        .expect("sshd");
        let dmz = Dmz {
            t,
            sshd,
            user_ca,
            host_ca,
            dead_port: free_port(),
            policy_dir: policy_dir.to_path_buf(),
        };
        dmz.write_policy(true, &[]);
        dmz
    }

    /// Writes the policy folder ([`write_dmz_policy`]). `alice_in_ops`: whether alice is
    /// still in group ops; `extra_hosts`: more inventory entries (role web).
    pub fn write_policy(&self, alice_in_ops: bool, extra_hosts: &[(&str, String)]) {
        write_dmz_policy(
            &self.policy_dir,
            self.sshd.port,
            self.dead_port,
            alice_in_ops,
            extra_hosts,
        );
    }

    /// A new key `name` with a certificate from the user CA (`ssh-keygen -s`).
    pub fn user(
        &self,
        name: &str,
        key_id: &str,
        principals: &[&str],
        validity: &str,
        serial: u64,
        options: &[&str],
    ) -> Key {
        let key = self.t.keygen(name);
        self.user_ca
            .sign_user(&key.public(), key_id, principals, validity, serial, options);
        key
    }

    /// A key with no certificate beside it.
    pub fn plain(&self, name: &str) -> Key {
        self.t.keygen(name)
    }

    /// An OpenSSH client as `name` with `key` (and `key.cert()` if it exists), with
    /// `web-1` (as root) and `db-1` (as postgres) reached through the bastion on
    /// `bastion_port`.
    pub fn client(&self, name: &str, bastion_port: u16, key: &Key) -> SshClient {
        let mut c = SshClient::new(&self.t, name, &self.host_ca, bastion_port, name, key);
        c.add_target("web-1", "root");
        c.add_target("db-1", "postgres");
        c
    }
}

/// A running bastion (the binary) in front of its [`Dmz`] (whose fields it derefs to).
pub struct Bastion {
    pub dmz: Dmz,
    pub d: Drawbridge,
    /// A CA nobody trusts.
    pub other_ca: Ca,
}

impl Deref for Bastion {
    type Target = Dmz;
    fn deref(&self) -> &Dmz {
        &self.dmz
    }
}

/// [`start_with`] with the default `[ssh]` settings and no extra hosts.
pub fn start() -> Option<Bastion> {
    start_with("", &[])
}

/// Starts the binary with `ssh_extra` lines in `[ssh]` (e.g. `login_grace_time = "2s"`)
/// and `extra_hosts` in the inventory. `None` only when sshd/root is missing and
/// `DRAWBRIDGE_ALLOW_SKIP` is set.
pub fn start_with(ssh_extra: &str, extra_hosts: &[(&str, String)]) -> Option<Bastion> {
    start_configured(ssh_extra, "", extra_hosts)
}

/// [`start_with`] with `extra_config` (more drawbridge.toml sections, e.g. `[[oidc]]`).
pub fn start_configured(
    ssh_extra: &str,
    extra_config: &str,
    extra_hosts: &[(&str, String)],
) -> Option<Bastion> {
    start_full(ssh_extra, extra_config, extra_hosts, |_| {})
}

/// Like [`start_configured`], with `before_launch` run once the DMZ and its policy folder
/// are written, just before `serve` starts (e.g. to commit the folder).
pub fn start_prepared(extra_config: &str, before_launch: impl FnOnce(&Dmz)) -> Option<Bastion> {
    start_full("", extra_config, &[], before_launch)
}

fn start_full(
    ssh_extra: &str,
    extra_config: &str,
    extra_hosts: &[(&str, String)],
    before_launch: impl FnOnce(&Dmz),
) -> Option<Bastion> {
    if !need_sshd() {
        return None;
    }
    let t = TestDir::new();
    let mut d = Drawbridge::prepare_with_ssh(&[], extra_config, ssh_extra);
    let (code, out, err) = d.cli(&["ca", "init"], None);
    assert_eq!(code, 0, "ca init: {out}{err}");
    let (user_ca, host_ca) = (d.ca("user_ca"), d.ca("host_ca"));
    let other_ca = Ca::new(&t, "other_ca");
    let trusted = d.path().join("ca/trusted_user_ca_keys.pub");
    let dmz = Dmz::start(t, user_ca, host_ca, &trusted, &d.path().join("policies"));
    if !extra_hosts.is_empty() {
        dmz.write_policy(true, extra_hosts);
    }
    before_launch(&dmz);
    d.launch(&[]);
    Some(Bastion { dmz, d, other_ca })
}

impl Bastion {
    pub fn port(&self) -> u16 {
        self.d.ssh.port()
    }

    pub fn audit_path(&self) -> PathBuf {
        self.d.audit_path()
    }

    /// An OpenSSH client as `name` with `key` (and `key.cert()` if it exists), with
    /// `web-1` (as root) and `db-1` (as postgres) reached through this bastion.
    pub fn client(&self, name: &str, key: &Key) -> SshClient {
        self.dmz.client(name, self.port(), key)
    }

    /// Our user CA's private key, for certificates the OpenSSH tools will not make.
    pub fn ca_key(&self) -> ssh_key::PrivateKey {
        wire::read_key(&self.user_ca.key.path)
    }

    pub fn records(&self) -> Vec<Value> {
        audit_records(&self.audit_path())
    }

    pub fn find(&self, event: &str, fields: &[(&str, &str)]) -> Vec<Value> {
        find_records(&self.audit_path(), event, fields)
    }

    pub fn expect_record(&self, event: &str, fields: &[(&str, &str)]) -> Value {
        expect_record_in(&self.audit_path(), event, fields)
    }

    /// An `ssh.auth.failed` record for the key `fp` with `reason`, waiting for it.
    pub fn auth_failed(&self, reason: &str, fp: &str) -> Value {
        self.expect_record(
            "ssh.auth.failed",
            &[("reason", reason), ("key_fingerprint", fp)],
        )
    }

    /// A value from `/metrics`: the sample named `series` exactly (e.g.
    /// `drawbridge_bastion_refusals_total{reason="expired"}`); 0 when absent.
    pub fn metric(&self, series: &str) -> u64 {
        let r = self.d.curl("/metrics", &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
            .lines()
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.trim().parse::<f64>().ok())?
            })
            .map(|v| v as u64)
            .unwrap_or(0)
    }

    /// Refusals counted under `reason` (`bastion_refusals` in `/metrics`).
    pub fn refusals(&self, reason: &str) -> u64 {
        self.metric(&format!(
            "drawbridge_bastion_refusals_total{{reason=\"{reason}\"}}"
        ))
    }

    pub fn pid(&self) -> u32 {
        self.d.pid().expect("drawbridge runs")
    }

    /// Resident memory of the drawbridge process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(&self.pid().to_string())
    }

    /// The process is still running and has not panicked.
    pub fn assert_healthy(&mut self) {
        assert!(
            self.d.running(),
            "drawbridge exited: {}",
            self.d.server_log()
        );
        let log = self.d.server_log();
        assert!(!log.contains("panicked"), "drawbridge panicked: {log}");
    }

    /// A certificate login through the bastion to web-1 still works (the bastion keeps
    /// serving after whatever the test did).
    pub fn assert_still_serving(&mut self) {
        self.assert_healthy();
        let key = self.user("still", "alice", &["web-admin"], "-1m:+5m", 77, &[]);
        let out = self.client("still", &key).run(&["web-1", "echo", "ok"]);
        assert!(out.success(), "the bastion stopped serving: {out:?}");
        assert_eq!(out.stdout.trim(), "ok");
    }

    /// Rewrites the policy, sends SIGHUP and waits for it to be applied.
    #[track_caller]
    pub fn reload_policy(&self, edit: impl FnOnce(&Path)) {
        self.d.reload_policy(edit);
    }
}

/// What the OpenSSH client prints when authentication is refused.
#[track_caller]
pub fn assert_permission_denied(out: &Output) {
    refused(out);
    assert!(
        out.stderr.contains("Permission denied (publickey)"),
        "{out:?}"
    );
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
    std::fs::create_dir_all(dir).expect("write policy");
    std::fs::write(dir.join("hosts.toml"), hosts).expect("write policy");
    std::fs::write(dir.join("principals.toml"), principals).expect("write policy");
    std::fs::write(dir.join("people.toml"), people).expect("write policy");
    std::fs::write(dir.join("revoked.toml"), revoked).expect("write policy");
}
