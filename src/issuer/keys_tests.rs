use super::*;
use std::os::unix::fs::MetadataExt;

fn names() -> Vec<String> {
    vec![
        "bastion.example.org".into(),
        "localhost".into(),
        "127.0.0.1".into(),
    ]
}

#[test]
fn init_then_load_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let created = init(&dir, &names(), SystemTime::now()).unwrap();
    // Every required file, the bastion's host certificate, the session CA and its .pub.
    assert_eq!(created.len(), REQUIRED_FILES.len() + 3);
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    let keys = IssuerKeys::load(&dir).unwrap();
    assert_eq!(keys.trusted_user_cas.len(), 1);
    assert!(keys.session_ca.is_some());
    assert_eq!(keys.ca_public_lines().unwrap().lines().count(), 2);
    let b = BastionKeys::load(&dir).unwrap();
    let cert = b.host_cert.as_ref().unwrap();
    assert_eq!(
        cert.valid_principals(),
        ["127.0.0.1", "bastion.example.org", "localhost"]
    );
    let dbg = format!("{keys:?} {b:?}");
    assert!(dbg.contains("SHA256:"), "{dbg}");
    assert!(!dbg.contains("PRIVATE"), "{dbg}");
    let (chain, _key) = load_tls(&dir).unwrap();
    assert_eq!(chain.len(), 1);
    assert!(ca_public_lines(&dir).unwrap().starts_with("ssh-ed25519 "));
    assert!(
        known_hosts_line(&dir)
            .unwrap()
            .starts_with("@cert-authority * ssh-ed25519 ")
    );
    // A second init names the first existing file and writes nothing.
    let e = init(&dir, &names(), SystemTime::now()).unwrap_err();
    assert!(e.to_string().contains("user_ca already exists"), "{e}");
}

#[test]
fn init_with_a_bad_host_name_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let e = init(&dir, &["not a name".to_string()], SystemTime::now()).unwrap_err();
    assert!(e.to_string().contains("holds white space"), "{e}");
    assert!(!dir.exists());
    let e = init(&dir, &["bästion".to_string()], SystemTime::now()).unwrap_err();
    assert!(e.to_string().contains("TLS certificate"), "{e}");
    assert!(!dir.exists());
}

#[test]
fn ensure_creates_keeps_and_refuses_partial() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    assert!(matches!(
        ensure(&dir, &names()).unwrap(),
        InitOutcome::Created(_)
    ));
    let before = std::fs::read(dir.join(BASTION_HOST_CERT)).unwrap();
    assert_eq!(
        ensure(&dir, &names()).unwrap(),
        InitOutcome::Complete {
            host_cert_renewed: None
        }
    );
    assert_eq!(std::fs::read(dir.join(BASTION_HOST_CERT)).unwrap(), before);

    // New host names: the host certificate is signed again.
    let more = vec!["bastion.example.org".into(), "jump.example.org".into()];
    match ensure(&dir, &more).unwrap() {
        InitOutcome::Complete {
            host_cert_renewed: Some(why),
        } => assert!(why.contains("differ from ssh.host_names"), "{why}"),
        other => panic!("{other:?}"),
    }
    let b = BastionKeys::load(&dir).unwrap();
    assert_eq!(
        b.host_cert.unwrap().valid_principals(),
        ["bastion.example.org", "jump.example.org"]
    );

    // Missing cert: signed again.
    std::fs::remove_file(dir.join(BASTION_HOST_CERT)).unwrap();
    assert!(matches!(
        ensure(&dir, &more).unwrap(),
        InitOutcome::Complete {
            host_cert_renewed: Some(_)
        }
    ));

    // Partial folder: an error naming what is missing.
    std::fs::remove_file(dir.join(HOST_CA)).unwrap();
    std::fs::remove_file(dir.join(TLS_KEY)).unwrap();
    let e = ensure(&dir, &more).unwrap_err().to_string();
    assert!(e.contains("missing: host_ca, tls.key"), "{e}");
}

#[test]
fn host_cert_expiring_soon_is_renewed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    // Made 340 days ago: 52 weeks minus 340 days = 24 days left.
    let then = SystemTime::now() - Duration::from_secs(340 * 24 * 3600);
    init(&dir, &names(), then).unwrap();
    match ensure(&dir, &names()).unwrap() {
        InitOutcome::Complete {
            host_cert_renewed: Some(why),
        } => assert!(why.contains("30 days"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rotate_keeps_old_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    init(&dir, &names(), SystemTime::now()).unwrap();
    let old = IssuerKeys::load(&dir).unwrap();
    let r = rotate(&dir, SystemTime::now()).unwrap();
    let new = IssuerKeys::load(&dir).unwrap();
    assert_eq!(new.trusted_user_cas.len(), 2);
    assert_eq!(r.old_fingerprint, old.user_ca.fingerprint());
    assert_eq!(r.new_fingerprint, new.user_ca.fingerprint());
    assert_ne!(r.old_fingerprint, r.new_fingerprint);
    assert_eq!(std::fs::metadata(&r.retired).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        CaKey::load(&r.retired).unwrap().fingerprint(),
        r.old_fingerprint
    );
}

#[test]
fn trusted_file_refuses_certificates_and_emptiness() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("trusted");
    let ca = CaKey::generate("ca").unwrap();
    let cert = super::super::sign::sign_host_cert(
        &ca,
        ca.public_key(),
        &["h".to_string()],
        Duration::from_secs(60),
        SystemTime::now(),
    )
    .unwrap();
    std::fs::write(&p, cert.openssh_line().unwrap()).unwrap();
    let e = load_trusted(&p).unwrap_err().to_string();
    assert!(
        e.contains("line 1: a certificate cannot be a CA key"),
        "{e}"
    );
    std::fs::write(&p, "# only a comment\n\n").unwrap();
    let e = load_trusted(&p).unwrap_err().to_string();
    assert!(e.contains("lists no user CA key"), "{e}");
    let line = public_to_openssh(ca.public_key()).unwrap();
    std::fs::write(&p, format!("# current\n{line}\n")).unwrap();
    assert_eq!(load_trusted(&p).unwrap().len(), 1);
}

#[test]
fn token_key_is_pkcs8_and_spki() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("t"), tmp.path().join("t.pub"));
    write_token_key(&a, &b).unwrap();
    let pem = std::fs::read_to_string(&a).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(
        std::fs::read_to_string(&b)
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    assert_eq!(std::fs::metadata(&a).unwrap().mode() & 0o777, 0o600);
    assert!(jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()).is_ok());
    assert!(write_token_key(&a, &b).is_err());
}
