//! The router without a socket: fail-closed issuance when the audit log cannot be written
//! (docs/threats.md F6), and recovery.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt;

use super::{AppState, router};
use crate::audit::{Audit, MemorySink};
use crate::config::Config;
use crate::identity::{AuthMethod, Identity};
use crate::policy::watch::PolicyStore;

const POLICY: &str = r#"
[hosts.web-1]
address = "10.0.0.1"
[principals.web]
hosts = ["web-1"]
logins = ["deploy"]
[users.alice]
principals = ["web"]
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    state: Arc<AppState>,
    sink: MemorySink,
    token: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        base_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    crate::issuer::keys::init(&config.ca_dir(), &config.ssh.host_names, SystemTime::now()).unwrap();
    std::fs::create_dir_all(config.policies_dir()).unwrap();
    std::fs::write(config.policies_dir().join("p.toml"), POLICY).unwrap();
    let policy = PolicyStore::open(&config.policies_dir()).unwrap();
    let sink = MemorySink::new();
    let audit = Audit::with_sink(Box::new(sink.clone()), "test")
        .unwrap()
        .with_timeout(Duration::from_millis(500));
    let metrics = Arc::new(super::metrics::Metrics::new());
    let state = AppState::new(Arc::new(config), policy, audit, metrics).unwrap();
    let id = Identity {
        user: "alice".into(),
        groups: vec![],
        method: AuthMethod::Password,
    };
    let (token, _) = state.auth.issue_token(&id, SystemTime::now()).unwrap();
    Fixture {
        _dir: dir,
        state,
        sink,
        token,
    }
}

fn key_line() -> String {
    let key = ssh_key::PrivateKey::random(
        &mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng),
        ssh_key::Algorithm::Ed25519,
    )
    .unwrap();
    key.public_key().to_openssh().unwrap()
}

async fn post_cert(f: &Fixture) -> (StatusCode, String) {
    let req = Request::post("/v1/certs")
        .header(header::AUTHORIZATION, format!("Bearer {}", f.token))
        .body(Body::from(key_line()))
        .unwrap();
    let resp = router(f.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn healthz(f: &Fixture) -> StatusCode {
    let req = Request::get("/healthz").body(Body::empty()).unwrap();
    router(f.state.clone()).oneshot(req).await.unwrap().status()
}

#[tokio::test]
async fn issuance_fails_closed_when_the_audit_log_fails_and_recovers() {
    let f = fixture();
    let (status, body) = post_cert(&f).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("ssh-ed25519-cert-v01@openssh.com "));
    assert_eq!(healthz(&f).await, StatusCode::OK);

    f.sink.set_failing(true);
    let started = std::time::Instant::now();
    let (status, body) = post_cert(&f).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("audit_unavailable"), "{body}");
    assert!(
        !body.contains("ssh-ed25519-cert"),
        "no certificate may leak: {body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "fail closed within 1 s"
    );
    assert_eq!(healthz(&f).await, StatusCode::SERVICE_UNAVAILABLE);

    f.sink.set_failing(false);
    let (status, body) = post_cert(&f).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(healthz(&f).await, StatusCode::OK);
    // Two certificates issued, two records: the failed one left no trace in the chain.
    let issued = f.sink.text().matches("\"cert.issued\"").count();
    assert_eq!(issued, 2, "{}", f.sink.text());
}
