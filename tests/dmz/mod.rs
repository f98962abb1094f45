//! The real `drawbridge` binary as the bastion in front of a real OpenSSH `sshd` (the DMZ
//! host web-1), with the OpenSSH client and the russh client (`common::wire`) on the
//! other side. Used by `threats_ssh.rs` and `faults_ssh.rs`.
//!
//! The folder is prepared with `drawbridge ca init`, so the sshd can trust the user CA
//! before `serve` starts; the policy is `common::write_dmz_policy`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use crate::common::{self, Ca, Key, Output, SshClient, Sshd, TestDir};
use crate::harness::{self, Drawbridge};
use serde_json::Value;

/// A running bastion (the binary), its DMZ host and the client side's files.
pub struct Bastion {
    /// Client-side files: user keys, certificates, ssh configs.
    pub t: TestDir,
    pub d: Drawbridge,
    pub sshd: Sshd,
    /// drawbridge's own user CA (`ca/user_ca`), as `ssh-keygen -s` uses it.
    pub user_ca: Ca,
    pub host_ca: Ca,
    /// A CA nobody trusts.
    pub other_ca: Ca,
    /// A loopback port nothing listens on: db-1's address (a host that is down).
    pub dead_port: u16,
}

/// [`start_with`] with the default `[ssh]` settings and no extra hosts.
pub fn start() -> Option<Bastion> {
    start_with("", &[])
}

/// Starts the binary with `ssh_extra` lines in `[ssh]` (e.g. `login_grace_time = "2s"`)
/// and `extra_hosts` in the inventory. `None` only when sshd/root is missing and
/// `DRAWBRIDGE_ALLOW_SKIP` is set.
pub fn start_with(ssh_extra: &str, extra_hosts: &[(&str, String)]) -> Option<Bastion> {
    if !common::need_sshd() {
        return None;
    }
    let t = TestDir::new();
    let mut d = Drawbridge::prepare_with_ssh(&[], "", ssh_extra);
    let (code, out, err) = d.cli(&["ca", "init"], None);
    assert_eq!(code, 0, "ca init: {out}{err}");
    let ca_key = |name: &str| Ca {
        key: Key {
            path: d.path().join("ca").join(name),
        },
    };
    let user_ca = ca_key("user_ca");
    let host_ca = ca_key("host_ca");
    let other_ca = Ca::new(&t, "other_ca");
    let trusted = d.path().join("ca/trusted_user_ca_keys.pub");
    let sshd = Sshd::start(
        &t,
        "web-1",
        &[&trusted],
        &host_ca,
        &[("root", &["web-admin", "short"])],
    )
    .expect("sshd");
    let dead_port = common::free_port();
    common::write_dmz_policy(
        &d.path().join("policies"),
        sshd.port,
        dead_port,
        true,
        extra_hosts,
    );
    d.launch(&[]);
    Some(Bastion {
        t,
        d,
        sshd,
        user_ca,
        host_ca,
        other_ca,
        dead_port,
    })
}

impl Bastion {
    pub fn port(&self) -> u16 {
        self.d.ssh.port()
    }

    pub fn audit_path(&self) -> PathBuf {
        self.d.audit_path()
    }

    /// A new key `name` with a certificate from our user CA (`ssh-keygen -s`).
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
    /// `web-1` (as root) and `db-1` (as postgres) reached through the bastion.
    pub fn client(&self, name: &str, key: &Key) -> SshClient {
        let mut c = SshClient::new(&self.t, name, &self.host_ca, self.port(), name, key);
        c.add_target("web-1", "root");
        c.add_target("db-1", "postgres");
        c
    }

    /// Our user CA's private key, for certificates the OpenSSH tools will not make.
    pub fn ca_key(&self) -> ssh_key::PrivateKey {
        common::wire::read_key(&self.user_ca.key.path)
    }

    pub fn records(&self) -> Vec<Value> {
        common::audit_records(&self.audit_path())
    }

    pub fn find(&self, event: &str, fields: &[(&str, &str)]) -> Vec<Value> {
        common::find_records(&self.audit_path(), event, fields)
    }

    pub fn expect_record(&self, event: &str, fields: &[(&str, &str)]) -> Value {
        common::expect_record_in(&self.audit_path(), event, fields)
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
        common::rss_kib(&self.pid().to_string())
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
    pub fn reload_policy(&self, edit: impl FnOnce(&std::path::Path)) {
        let before = self.find("policy.reloaded", &[]).len();
        edit(&self.d.path().join("policies"));
        self.d.signal("HUP");
        assert!(
            harness::wait_until(Duration::from_secs(10), || self
                .find("policy.reloaded", &[])
                .len()
                > before),
            "policy not reloaded: {}",
            self.d.server_log()
        );
    }
}

/// What the OpenSSH client prints when authentication is refused.
pub fn assert_permission_denied(out: &Output) {
    common::refused(out);
    assert!(
        out.stderr.contains("Permission denied (publickey)"),
        "{out:?}"
    );
}
