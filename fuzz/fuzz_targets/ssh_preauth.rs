//! The pre-authentication SSH byte stream (docs/threats.md T19–T20): arbitrary bytes from a
//! client into drawbridge's bastion (russh plus our handler), over loopback TCP to the
//! real accept loop with its pre-auth caps. The bastion runs in this process, so a panic
//! in any of its tasks aborts the fuzzer (libfuzzer-sys installs an aborting panic hook)
//! and its code is coverage-guided.
//!
//! Each input is written, the write side closed, and the answer read until the server
//! closes (at most 2 s).
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use drawbridge::audit::Audit;
use drawbridge::bastion::{BastionKeysInput, BastionMetrics};
use drawbridge::config::SshConfig;
use drawbridge::policy::watch::PolicyStore;
use libfuzzer_sys::fuzz_target;
use ssh_key::PrivateKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fixture {
    _dir: tempfile::TempDir,
    _server: tokio::runtime::Runtime,
    _shutdown: tokio::sync::watch::Sender<bool>,
    client: tokio::runtime::Runtime,
    addr: SocketAddr,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let pdir = dir.path().join("policies");
        std::fs::create_dir_all(&pdir).expect("mkdir");
        for (name, text) in [
            ("hosts.toml", include_str!("../../policies/hosts.toml")),
            ("people.toml", include_str!("../../policies/people.toml")),
            (
                "principals.toml",
                include_str!("../../policies/principals.toml"),
            ),
            ("revoked.toml", include_str!("../../policies/revoked.toml")),
        ] {
            std::fs::write(pdir.join(name), text).expect("write policy");
        }
        let policy = PolicyStore::open(&pdir).expect("policy");
        let ca = PrivateKey::from_openssh(include_str!("../fixtures/user_ca")).expect("ca");
        let host_key = PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[3; 32]));
        let server = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (tx, rx) = tokio::sync::watch::channel(false);
        let audit_path = dir.path().join("audit.log");
        let addr = server.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let cfg = SshConfig {
                listen: addr,
                login_grace_time: Duration::from_secs(5),
                ..SshConfig::default()
            };
            let audit = Audit::open(&audit_path, "fuzz").expect("audit");
            let keys = BastionKeysInput {
                trusted_user_cas: vec![ca.public_key().clone()],
                host_key,
                host_cert: None,
            };
            tokio::spawn(async move {
                let r = drawbridge::bastion::run(drawbridge::bastion::BastionParts {
                    listener,
                    cfg,
                    max_cert_validity: Duration::from_secs(3_660),
                    keys,
                    policy,
                    audit,
                    metrics: BastionMetrics::new(),
                    shutdown: rx,
                    recording: None,
                })
                .await;
                panic!("the bastion stopped: {r:?}");
            });
            addr
        });
        let client = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Fixture {
            _dir: dir,
            _server: server,
            _shutdown: tx,
            client,
            addr,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    f.client.block_on(async {
        let Ok(mut s) = tokio::net::TcpStream::connect(f.addr).await else {
            panic!("the bastion does not accept connections");
        };
        let _ = s.write_all(data).await;
        let _ = s.shutdown().await;
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    });
});
