//! `drawbridge user add` run as the real binary.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::support::drawbridge::BIN;
use crate::support::process::{COMMAND_TIMEOUT, run_with_input};

use drawbridge::identity::Secret;
use drawbridge::identity::password::{UsersFile, verify_password};

fn user_add(config: &Path, args: &[&str], stdin: &[u8]) -> (i32, String) {
    let out = run_with_input(
        Command::new(BIN)
            .arg("--config")
            .arg(config)
            .args(["user", "add"])
            .args(args),
        Some(stdin),
        COMMAND_TIMEOUT,
    );
    assert!(!out.timed_out, "user add did not finish: {out:?}");
    (out.code(), out.text())
}

#[test]
fn user_add_with_password_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("drawbridge.toml");
    std::fs::write(&config, "[paths]\nusers = \"users.toml\"\n").unwrap();
    let users = dir.path().join("users.toml");

    let (code, out) = user_add(
        &config,
        &["alice", "--password-stdin"],
        b"s3cret pass\nignored\n",
    );
    assert_eq!(code, 0, "{out}");
    let mode = std::fs::metadata(&users).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(text.contains("[users.alice]"), "{text}");
    assert!(text.contains("$argon2id$v=19$m=19456,t=2,p=1$"), "{text}");
    assert!(!text.contains("s3cret"));
    let file = UsersFile::load(&users).unwrap();
    let hash = &file.users["alice"].hash;
    assert!(verify_password(&Secret::new("s3cret pass".into()), hash));

    // A second user keeps the first; re-adding changes the password.
    let (code, out) = user_add(&config, &["bob", "--password-stdin"], b"bob-pw\r\n");
    assert_eq!(code, 0, "{out}");
    let (code, out) = user_add(&config, &["alice", "--password-stdin"], b"new one");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("changed"), "{out}");
    let file = UsersFile::load(&users).unwrap();
    assert!(verify_password(
        &Secret::new("bob-pw".into()),
        &file.users["bob"].hash
    ));
    assert!(verify_password(
        &Secret::new("new one".into()),
        &file.users["alice"].hash
    ));
    assert!(!verify_password(
        &Secret::new("s3cret pass".into()),
        &file.users["alice"].hash
    ));
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn user_add_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("drawbridge.toml");
    std::fs::write(&config, "[paths]\nusers = \"users.toml\"\n").unwrap();

    let (code, out) = user_add(&config, &["alice", "--password-stdin"], b"\n");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("empty password"), "{out}");
    let (code, out) = user_add(&config, &["al ice", "--password-stdin"], b"pw\n");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not allowed"), "{out}");
    assert!(!dir.path().join("users.toml").exists());
    // The password is never an argument.
    let (code, _) = user_add(&config, &["alice", "--password", "pw"], b"");
    assert_eq!(code, 2);
}
