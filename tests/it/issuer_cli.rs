//! `drawbridge ca ...` run as the real binary, and what it makes checked with OpenSSH's
//! own `ssh-keygen`, `curl` and reqwest.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::support::drawbridge::BIN;
use crate::support::process::{COMMAND_TIMEOUT, Output, run_with_timeout};
use crate::support::ssh;
use drawbridge::issuer::keys::{self, IssuerKeys};
use drawbridge::issuer::{PlanInput, krl::build_krl, plan_user_cert, sign_user_cert};
use drawbridge::policy::{Grant, HostSelector, Origin, Principal, Revoked, Via};

const HOST_NAMES: &str = r#"["bastion.example.org", "localhost", "127.0.0.1"]"#;

/// A temp folder with `drawbridge.toml` pointing `paths.ca` at `ca/`.
struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("drawbridge.toml"),
            format!("[paths]\nca = \"ca\"\n[ssh]\nhost_names = {HOST_NAMES}\n"),
        )
        .unwrap();
        Env { tmp }
    }
    fn path(&self) -> &Path {
        self.tmp.path()
    }
    fn ca(&self) -> PathBuf {
        self.path().join("ca")
    }
    fn run(&self, args: &[&str]) -> Output {
        run_with_timeout(
            Command::new(BIN)
                .arg("--config")
                .arg(self.path().join("drawbridge.toml"))
                .args(args)
                .env("DRAWBRIDGE_LOG", "warn"),
            COMMAND_TIMEOUT,
        )
    }
    fn init(&self) {
        let out = self.run(&["ca", "init"]);
        assert!(out.success(), "{}", out.text());
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o777
}

/// `ssh-keygen -L -f FILE` in UTC.
fn keygen_list(file: &Path) -> String {
    let out = run_with_timeout(
        Command::new("ssh-keygen")
            .env("TZ", "UTC")
            .arg("-L")
            .arg("-f")
            .arg(file),
        COMMAND_TIMEOUT,
    );
    assert!(out.success(), "ssh-keygen -L: {}", out.text());
    out.stdout.clone()
}

/// A new Ed25519 key from ssh-keygen; the path of its `.pub`.
fn keygen(dir: &Path, name: &str) -> PathBuf {
    ssh::keygen(&dir.join(name), "ed25519").public()
}

fn principal(name: &str, max_ttl: Option<u64>, ext: &[&str]) -> (String, Principal) {
    (
        name.into(),
        Principal {
            name: name.into(),
            hosts: HostSelector::All,
            logins: vec!["deploy".into()],
            max_ttl: max_ttl.map(Duration::from_secs),
            extensions: ext.iter().map(|s| s.to_string()).collect(),
            require_reason: false,
            record: false,
            origin: Origin::default(),
        },
    )
}

/// Signs a user certificate for a fresh key with the CA in `ca`, in-process, and writes
/// it next to the key as `<name>-cert.pub`. Returns (cert path, serial).
fn sign_user(dir: &Path, ca: &Path, name: &str, user: &str, now: SystemTime) -> (PathBuf, u64) {
    let key_pub = keygen(dir, name);
    let key = drawbridge::issuer::accept_user_key(&std::fs::read(&key_pub).unwrap()).unwrap();
    let keys = IssuerKeys::load(ca).unwrap();
    let defs: BTreeMap<String, Principal> = [
        principal(
            "web-deploy",
            Some(900),
            &["permit-pty", "permit-port-forwarding"],
        ),
        principal("dba", None, &["permit-pty"]),
    ]
    .into_iter()
    .collect();
    let held = [
        Grant {
            principal: "web-deploy".into(),
            via: Via::Group("ops".into()),
        },
        Grant {
            principal: "dba".into(),
            via: Via::User,
        },
    ];
    let groups = ["ops".to_string(), "admins".to_string()];
    let source = ["192.0.2.0/24".parse().unwrap()];
    let plan = plan_user_cert(&PlanInput {
        user,
        held: &held,
        groups: &groups,
        idp_groups: &[],
        principals: &defs,
        source: &source,
        requested_ttl: Some(Duration::from_secs(3600)),
        requested_principals: None,
        default_ttl: Duration::from_secs(300),
        max_ttl: Duration::from_secs(3600),
        reason: None,
        now,
    })
    .unwrap();
    assert_eq!(plan.ttl, Duration::from_secs(900), "capped by web-deploy");
    let signed = sign_user_cert(&keys.user_ca, &key, &plan).unwrap();
    let cert = dir.join(format!("{name}-cert.pub"));
    std::fs::write(&cert, signed.openssh_line().unwrap()).unwrap();
    (cert, signed.serial)
}

#[test]
fn ca_init_makes_every_file_with_modes_and_refuses_a_second_run() {
    let env = Env::new();
    env.init();
    let ca = env.ca();
    assert_eq!(mode(&ca), 0o700);
    for private in [
        "user_ca",
        "host_ca",
        "bastion_host_key",
        "token_key",
        "tls.key",
    ] {
        assert_eq!(mode(&ca.join(private)), 0o600, "{private}");
    }
    for public in [
        "user_ca.pub",
        "trusted_user_ca_keys.pub",
        "host_ca.pub",
        "bastion_host_key.pub",
        "bastion_host_key-cert.pub",
        "token_key.pub",
        "tls.crt",
    ] {
        let m = mode(&ca.join(public));
        assert_eq!(m & 0o600, 0o600, "{public}");
        assert_eq!(m & 0o022, 0, "{public}: not writable by others");
    }
    // OpenSSH reads the keys ssh-keygen-style.
    let out = run_with_timeout(
        Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(ca.join("user_ca")),
        COMMAND_TIMEOUT,
    );
    assert!(out.success(), "{}", out.text());
    let user_pub = std::fs::read_to_string(ca.join("user_ca.pub")).unwrap();
    assert_eq!(out.stdout.split(' ').nth(1), user_pub.split(' ').nth(1));
    assert_eq!(
        std::fs::read_to_string(ca.join("trusted_user_ca_keys.pub")).unwrap(),
        user_pub
    );
    // The bastion's host certificate: a host cert for ssh.host_names by the host CA.
    let listing = keygen_list(&ca.join("bastion_host_key-cert.pub"));
    assert!(listing.contains("host certificate"), "{listing}");
    for n in ["bastion.example.org", "localhost", "127.0.0.1"] {
        assert!(
            listing.contains(&format!("\n                {n}\n")),
            "{n}: {listing}"
        );
    }
    let before = std::fs::read(ca.join("user_ca")).unwrap();

    let out = env.run(&["ca", "init"]);
    assert_eq!(out.code(), 1, "{}", out.text());
    assert!(
        out.text()
            .contains("user_ca already exists; refusing to overwrite"),
        "{}",
        out.text()
    );
    assert_eq!(std::fs::read(ca.join("user_ca")).unwrap(), before);

    // Also with --dir, and with only one file in the way: it names that file.
    let other = env.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("tls.crt"), "x").unwrap();
    let out = env.run(&["ca", "init", "--dir", other.to_str().unwrap()]);
    assert_eq!(out.code(), 1);
    assert!(
        out.text().contains("tls.crt already exists"),
        "{}",
        out.text()
    );
    assert!(!other.join("user_ca").exists(), "nothing written");
}

#[test]
fn user_cert_reads_back_with_ssh_keygen() {
    let env = Env::new();
    env.init();
    let now = SystemTime::now();
    let (cert, serial) = sign_user(env.path(), &env.ca(), "id_alice", "alice", now);
    let l = keygen_list(&cert);
    assert!(
        l.contains("Type: ssh-ed25519-cert-v01@openssh.com user certificate"),
        "{l}"
    );
    assert!(l.contains("Key ID: \"alice\""), "{l}");
    assert!(l.contains(&format!("Serial: {serial}\n")), "{l}");
    assert!(
        l.contains("Principals: \n                dba\n                web-deploy\n"),
        "{l}"
    );
    let secs = drawbridge::util::unix_secs(now);
    let at = |s: u64| {
        let t = drawbridge::util::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        t.trim_end_matches('Z').to_string()
    };
    assert!(
        l.contains(&format!(
            "Valid: from {} to {}",
            at(secs - 60),
            at(secs + 900)
        )),
        "{l}"
    );
    assert!(
        l.contains("Critical Options: \n                source-address 192.0.2.0/24\n"),
        "{l}"
    );
    for ext in ["permit-pty", "permit-port-forwarding", "groups@drawbridge"] {
        assert!(l.contains(&format!("                {ext}")), "{ext}: {l}");
    }
    // Signed by the user CA.
    let ca_fp = run_with_timeout(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(env.ca().join("user_ca.pub")),
        COMMAND_TIMEOUT,
    );
    let ca_fp = ca_fp.stdout;
    let fp = ca_fp.split(' ').nth(1).unwrap();
    assert!(l.contains(&format!("Signing CA: ED25519 {fp}")), "{l}");
}

#[test]
fn sign_host_prints_a_host_certificate() {
    let env = Env::new();
    env.init();
    let key = keygen(env.path(), "ssh_host_ed25519_key");
    let out = env.run(&[
        "ca",
        "sign-host",
        "--name",
        "web-1",
        "--principal",
        "10.20.0.11",
        "--principal",
        "web-1.dmz.example.org",
        "--validity",
        "4w",
        key.to_str().unwrap(),
    ]);
    assert!(out.success(), "{}", out.text());
    let line = out.stdout.clone();
    assert!(
        line.starts_with("ssh-ed25519-cert-v01@openssh.com "),
        "{line}"
    );
    let cert = env.path().join("printed-cert.pub");
    std::fs::write(&cert, &line).unwrap();
    let l = keygen_list(&cert);
    assert!(l.contains("host certificate"), "{l}");
    assert!(l.contains("Key ID: \"web-1\""), "{l}");
    assert!(
        l.contains(
            "Principals: \n                web-1\n                10.20.0.11\n                web-1.dmz.example.org\n"
        ),
        "{l}"
    );
    // Signed by the host CA, which `@cert-authority` lines name.
    let host_ca = std::fs::read_to_string(env.ca().join("host_ca.pub")).unwrap();
    let known = drawbridge::issuer::known_hosts_line(&env.ca()).unwrap();
    let host_ca_key: Vec<&str> = host_ca.split(' ').take(2).collect();
    assert_eq!(known.split(' ').nth(2), Some(host_ca_key[0]));
    assert_eq!(
        known.split(' ').nth(3).map(str::trim_end),
        Some(host_ca_key[1])
    );
    assert!(known.starts_with("@cert-authority * ssh-ed25519 "));
    assert!(known.contains(host_ca.split(' ').nth(1).unwrap()));

    // --out writes the file.
    let out_file = env.path().join("ssh_host_ed25519_key-cert.pub");
    let out = env.run(&[
        "ca",
        "sign-host",
        "--name",
        "web-2",
        "--out",
        out_file.to_str().unwrap(),
        key.to_str().unwrap(),
    ]);
    assert!(out.success(), "{}", out.text());
    assert!(out.stdout.is_empty());
    let l = keygen_list(&out_file);
    assert!(l.contains("Principals: \n                web-2\n"), "{l}");

    // A certificate instead of a key is refused.
    let out = env.run(&[
        "ca",
        "sign-host",
        "--name",
        "web-3",
        out_file.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), 1);
    assert!(out.text().contains("is a certificate"), "{}", out.text());
}

#[test]
fn rotate_keeps_the_old_key_trusted_and_signs_with_the_new() {
    let env = Env::new();
    env.init();
    let ca = env.ca();
    let old_pub = std::fs::read_to_string(ca.join("user_ca.pub")).unwrap();
    let old_private = std::fs::read(ca.join("user_ca")).unwrap();

    let out = env.run(&["ca", "rotate"]);
    assert!(out.success(), "{}", out.text());
    let said = out.text();
    assert!(said.contains("delete the line"), "{said}");

    let new_pub = std::fs::read_to_string(ca.join("user_ca.pub")).unwrap();
    assert_ne!(old_pub, new_pub);
    let trusted = std::fs::read_to_string(ca.join("trusted_user_ca_keys.pub")).unwrap();
    assert_eq!(trusted, format!("{old_pub}{new_pub}"));
    assert_eq!(mode(&ca.join("user_ca")), 0o600);
    assert_eq!(mode(&ca.join("retired")), 0o700);
    let retired: Vec<_> = std::fs::read_dir(ca.join("retired"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(retired.len(), 1);
    assert!(
        retired[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("user_ca-2")
    );
    assert_eq!(mode(&retired[0]), 0o600);
    assert_eq!(std::fs::read(&retired[0]).unwrap(), old_private);

    // New certificates are signed by the new CA.
    let (cert, _) = sign_user(env.path(), &ca, "id_bob", "bob", SystemTime::now());
    let l = keygen_list(&cert);
    let fp = run_with_timeout(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(ca.join("user_ca.pub")),
        COMMAND_TIMEOUT,
    );
    let fp = fp.stdout.split(' ').nth(1).unwrap().to_string();
    assert!(l.contains(&format!("Signing CA: ED25519 {fp}")), "{l}");
    // GET /v1/ca serves both.
    let lines = drawbridge::issuer::ca_public_lines(&ca).unwrap();
    assert_eq!(lines.lines().count(), 2);
}

#[test]
fn group_readable_private_key_is_refused_with_the_chmod_message() {
    let env = Env::new();
    env.init();
    let ca = env.ca();
    for (file, load) in [
        ("user_ca", "issuer"),
        ("host_ca", "issuer"),
        ("bastion_host_key", "bastion"),
        ("tls.key", "tls"),
    ] {
        let p = ca.join(file);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = match load {
            "issuer" => IssuerKeys::load(&ca).unwrap_err().to_string(),
            "bastion" => keys::BastionKeys::load(&ca).unwrap_err().to_string(),
            _ => drawbridge::issuer::load_tls(&ca).unwrap_err().to_string(),
        };
        let shown = p.display();
        assert_eq!(
            err,
            format!("{shown} is readable by group or others (mode 0644); run: chmod 600 {shown}")
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // The command line says the same.
    std::fs::set_permissions(ca.join("user_ca"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = env.run(&["ca", "rotate"]);
    assert_eq!(out.code(), 1);
    assert!(
        out.text()
            .contains("user_ca is readable by group or others (mode 0640); run: chmod 600 "),
        "{}",
        out.text()
    );
}

#[test]
fn bastion_keys_load_without_any_ca_private_key() {
    let env = Env::new();
    env.init();
    let ca = env.ca();
    let bastion = env.path().join("bastion");
    std::fs::create_dir(&bastion).unwrap();
    for f in [
        "trusted_user_ca_keys.pub",
        "bastion_host_key",
        "bastion_host_key-cert.pub",
    ] {
        std::fs::copy(ca.join(f), bastion.join(f)).unwrap();
    }
    std::fs::set_permissions(
        bastion.join("bastion_host_key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let keys = keys::BastionKeys::load(&bastion).unwrap();
    assert_eq!(keys.trusted_user_cas.len(), 1);
    assert!(keys.host_cert.is_some());
    let dbg = format!("{keys:?}");
    assert!(
        dbg.contains("SHA256:") && !dbg.contains("PRIVATE KEY"),
        "{dbg}"
    );
}

#[test]
fn krl_is_read_by_ssh_keygen() {
    let env = Env::new();
    env.init();
    let ca = env.ca();
    let now = SystemTime::now();
    let (good, _) = sign_user(env.path(), &ca, "id_good", "alice", now);
    let (lost, lost_serial) = sign_user(env.path(), &ca, "id_lost", "bob", now);
    let (banned, _) = sign_user(env.path(), &ca, "id_banned", "mallory", now);
    let trusted = IssuerKeys::load(&ca).unwrap().trusted_user_cas;
    let query = |krl: &[u8], cert: &Path| -> bool {
        let p = env.path().join("revoked.krl");
        std::fs::write(&p, krl).unwrap();
        let out = run_with_timeout(
            Command::new("ssh-keygen")
                .arg("-Q")
                .arg("-f")
                .arg(&p)
                .arg(cert),
            COMMAND_TIMEOUT,
        );
        let t = out.text();
        assert_eq!(t.contains("REVOKED"), !out.success(), "{t}");
        t.contains("REVOKED")
    };
    let empty = build_krl(&[], &trusted, now);
    for c in [&good, &lost, &banned] {
        assert!(!query(&empty, c), "an empty list revokes nothing");
    }
    let revoked = [
        Revoked {
            serial: Some(lost_serial),
            key_id: None,
            key: None,
            reason: Some("laptop lost".into()),
            origin: Origin::default(),
        },
        Revoked {
            serial: None,
            key_id: Some("mallory".into()),
            key: None,
            reason: None,
            origin: Origin::default(),
        },
    ];
    let krl = build_krl(&revoked, &trusted, now);
    assert!(!query(&krl, &good));
    assert!(query(&krl, &lost));
    assert!(query(&krl, &banned));
}

/// `tls.crt` is a trust anchor for curl (OpenSSL) and reqwest (rustls/webpki), for
/// every name in `ssh.host_names` and for localhost / 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cert_is_a_trust_anchor_for_curl_and_reqwest() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let env = Env::new();
    env.init();
    let ca = env.ca();
    let (chain, key) = drawbridge::issuer::load_tls(&ca).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });

    let port = addr.port();
    let crt = ca.join("tls.crt");
    for host in ["localhost", "127.0.0.1", "bastion.example.org"] {
        let crt = crt.clone();
        let out = tokio::task::spawn_blocking(move || {
            run_with_timeout(
                Command::new("curl")
                    .args(["-sS", "--max-time", "10", "--cacert"])
                    .arg(&crt)
                    .arg("--resolve")
                    .arg(format!("bastion.example.org:{port}:127.0.0.1"))
                    .arg(format!("https://{host}:{port}/")),
                COMMAND_TIMEOUT,
            )
        })
        .await
        .unwrap();
        assert!(out.success(), "curl {host}: {}", out.text());
        assert_eq!(out.stdout, "ok");
    }

    let pem = std::fs::read(&crt).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .resolve("bastion.example.org", addr)
        .build()
        .unwrap();
    for host in ["localhost", "127.0.0.1", "bastion.example.org"] {
        let r = client
            .get(format!("https://{host}:{port}/"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("reqwest {host}: {e:?}"));
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    // A name not in the certificate is refused.
    let out = run_with_timeout(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&crt)
            .arg("--resolve")
            .arg(format!("other.example.org:{port}:127.0.0.1"))
            .arg(format!("https://other.example.org:{port}/")),
        COMMAND_TIMEOUT,
    );
    assert!(!out.success());
}
