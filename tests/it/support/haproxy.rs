//! HAProxy in TCP mode in front of several `drawbridge serve` replicas: one frontend for
//! the API, one for SSH, both round robin, each server checked with `GET /healthz` over
//! HTTPS on its API port (so a replica whose database is away, or that died, is taken out
//! of both). Free loopback ports; killed on drop.
//!
//! Fails (never skips) when haproxy is missing: `scripts/test` installs the Debian
//! package `haproxy`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::ports::free_port;
use super::process::wait_for_port;

pub struct Haproxy {
    _dir: tempfile::TempDir,
    child: Option<Child>,
    pub api: u16,
    pub ssh: u16,
}

/// The configuration for `backends` (API address, SSH address) on the ports given.
pub fn config(api: u16, ssh: u16, backends: &[(SocketAddr, SocketAddr)]) -> String {
    let mut api_servers = String::new();
    let mut ssh_servers = String::new();
    for (i, (a, s)) in backends.iter().enumerate() {
        let check = format!(
            "check port {} check-ssl verify none inter 500ms fall 3 rise 1",
            a.port()
        );
        api_servers.push_str(&format!("    server r{} {a} {check}\n", i + 1));
        ssh_servers.push_str(&format!("    server r{} {s} {check}\n", i + 1));
    }
    format!(
        "global\n    maxconn 4096\n\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 120s\n    \
         timeout server 120s\n    timeout check 3s\n    retries 2\n    option redispatch\n    \
         option httpchk\n    http-check send meth GET uri /healthz\n    \
         http-check expect status 200\n\n\
         frontend api\n    bind 127.0.0.1:{api}\n    default_backend api\n\n\
         backend api\n    balance roundrobin\n{api_servers}\n\
         frontend ssh\n    bind 127.0.0.1:{ssh}\n    default_backend ssh\n\n\
         backend ssh\n    balance roundrobin\n{ssh_servers}"
    )
}

impl Haproxy {
    pub fn start(backends: &[(SocketAddr, SocketAddr)]) -> Haproxy {
        assert!(
            Path::new("/usr/sbin/haproxy").exists(),
            "haproxy is missing: install the Debian package haproxy (scripts/test does)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let (api, ssh) = (free_port(), free_port());
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, config(api, ssh, backends)).expect("haproxy.cfg");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("log");
        let child = Command::new("/usr/sbin/haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");
        for port in [api, ssh] {
            wait_for_port(
                SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(10),
            );
        }
        Haproxy {
            _dir: dir,
            child: Some(child),
            api,
            ssh,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
