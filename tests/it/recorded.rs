//! Recorded sessions (issue 18): the bastion's SSH server inside the channel, its own
//! connection to the target with a per-session certificate, the relay and the recording,
//! driven with the real OpenSSH client (`ssh -J`, a stock known_hosts holding only the
//! `@cert-authority` line, `StrictHostKeyChecking yes`) and a real sshd as the target.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::dmz::{Bastion, start_with};
use crate::support::process::{COMMAND_TIMEOUT, run_ok, run_with_input, wait_until};
use crate::support::ssh::cert_info;
use crate::support::sshd::Sshd;

/// Adds `record = true` to web-1 in the policy folder `dir`.
fn record_web1(dir: &Path) {
    let p = dir.join("hosts.toml");
    let s = std::fs::read_to_string(&p).unwrap();
    assert!(s.contains("[hosts.web-1]\n"), "{s}");
    std::fs::write(
        &p,
        s.replace("[hosts.web-1]\n", "[hosts.web-1]\nrecord = true\n"),
    )
    .unwrap();
}

/// A bastion in front of web-1 (the test sshd) with web-1 recorded.
fn recorded_bastion() -> Option<Bastion> {
    let b = start_with("", &[])?;
    b.reload_policy(record_web1);
    Some(b)
}

/// Adds `record = true` to principal `name` in the policy folder `dir`.
fn record_principal(dir: &Path, name: &str) {
    let p = dir.join("principals.toml");
    let s = std::fs::read_to_string(&p).unwrap();
    let head = format!("[principals.{name}]\n");
    assert!(s.contains(&head), "{s}");
    std::fs::write(&p, s.replace(&head, &format!("{head}record = true\n"))).unwrap();
}

/// `n` bytes that do not compress and repeat nowhere (xorshift64).
fn payload(n: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(n + 8);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(n);
    data
}

fn sessions_dir(b: &Bastion) -> PathBuf {
    b.d.path().join("var/sessions")
}

/// The one recording of the session `id`, as its lines of JSON.
fn cast(b: &Bastion, id: &str) -> Vec<Value> {
    let p = sessions_dir(b).join(format!("{id}.cast"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Output events (`"o"`) joined.
fn output_of(events: &[Value]) -> String {
    events
        .iter()
        .skip(1)
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap_or_default().to_string())
        .collect()
}

fn markers_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .skip(1)
        .filter(|e| e[1] == "m")
        .map(|e| e[2].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The session id of the one `session.ended` record (waiting for it).
fn ended(b: &Bastion) -> Value {
    let mut found = None;
    wait_until(
        Duration::from_secs(10),
        || {
            found = b.find("session.ended", &[]).pop();
            found.is_some()
        },
        || format!("a session.ended record; log: {:#?}", b.records()),
    );
    found.unwrap()
}

#[test]
fn exec_through_a_recorded_host_records_command_output_and_exit_status() {
    let Some(b) = recorded_bastion() else { return };
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 11, &[]);
    let out = b
        .client("alice", &key)
        .run(&["web-1", "echo hello-recorded; exit 3"]);
    assert_eq!(out.code(), 3, "{out:?}");
    assert_eq!(out.stdout.trim(), "hello-recorded", "{out:?}");
    assert!(
        out.stderr.contains("this session is recorded, session"),
        "the banner: {out:?}"
    );
    let e = ended(&b);
    let id = e["session"].as_str().unwrap();
    assert_eq!(e["exit_status"], 3, "{e}");
    assert_eq!(e["target"], "web-1", "{e}");
    assert_eq!(e["login"], "root", "{e}");
    let started = b.expect_record("session.started", &[("session", id)]);
    assert_eq!(
        started["principals"],
        serde_json::json!(["web-admin"]),
        "{started}"
    );
    let events = cast(&b, id);
    assert_eq!(events[0]["version"], 2, "{:?}", events[0]);
    assert!(output_of(&events).contains("hello-recorded"), "{events:?}");
    let marks = markers_of(&events);
    assert!(
        marks
            .iter()
            .any(|m| m == "exec: echo hello-recorded; exit 3"),
        "{marks:?}"
    );
    assert!(marks.iter().any(|m| m == "exit status 3"), "{marks:?}");
    // The recording's size and hash are in session.ended.
    let bytes = std::fs::read(sessions_dir(&b).join(format!("{id}.cast"))).unwrap();
    assert_eq!(e["recording_size"], bytes.len() as u64, "{e}");
}

/// The session id a client was told in the banner.
fn banner_session(stderr: &str) -> String {
    let at = stderr
        .find("this session is recorded, session ")
        .unwrap_or_else(|| panic!("no banner: {stderr}"));
    stderr[at..]
        .trim_start_matches("this session is recorded, session ")
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// A child process killed (and reaped) when dropped.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // A child started in a group of its own (an sshd under `faketime`, which forks
            // it and waits) goes with everything it started; for any other child there is
            // no such group and this does nothing.
            let _ = rustix::process::kill_process_group(
                rustix::process::Pid::from_child(&c),
                rustix::process::Signal::KILL,
            );
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn an_interactive_pty_session_is_recorded() {
    let Some(b) = recorded_bastion() else { return };
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 12, &[]);
    let client = b.client("alice", &key);
    let out = run_with_input(
        &mut client.command(&["-tt", "web-1"]),
        Some(b"echo pty-$((40+2))\nexit 5\n"),
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.code(), 5, "{out:?}");
    assert!(out.stdout.contains("pty-42"), "{out:?}");
    let id = banner_session(&out.stderr);
    // The recording is complete once the session has ended.
    let e = b.expect_record("session.ended", &[("session", &id)]);
    assert_eq!(e["exit_status"], 5, "{e}");
    let events = cast(&b, &id);
    let output = output_of(&events);
    assert!(output.contains("pty-42"), "{output:?}");
    assert!(
        events.iter().skip(1).any(|e| e[1] == "r"),
        "the pty size is in the recording: {events:?}"
    );
    assert!(
        markers_of(&events).iter().any(|m| m == "shell"),
        "{events:?}"
    );
    // `drawbridge session play` reproduces the output.
    let (code, played, err) = b.d.cli(&["session", "play", &id, "--speed", "100"], None);
    assert_eq!(code, 0, "{err}");
    assert!(played.contains("pty-42"), "{played:?} {err}");
    // asciinema's own reader accepts the file and prints the output.
    // `asciinema cat` wants a terminal: `script` gives it one.
    let file = sessions_dir(&b).join(format!("{id}.cast"));
    let cat = run_ok(Command::new("script").args([
        "-qec",
        &format!("asciinema cat {}", file.display()),
        "/dev/null",
    ]));
    assert!(cat.stdout.contains("pty-42"), "{cat:?}");
}

#[test]
fn scp_and_sftp_through_a_recorded_host_move_identical_bytes() {
    let Some(mut b) = recorded_bastion() else {
        return;
    };
    b.dmz.sshd.restart_with("Subsystem sftp internal-sftp\n");
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 13, &[]);
    let client = b.client("alice", &key);
    let local = b.t.join("payload.bin");
    let data = payload(1 << 20);
    std::fs::write(&local, &data).unwrap();
    let remote = b.t.join("remote.bin");
    let back = b.t.join("back.bin");
    let cfg = client.config.display().to_string();
    let up = run_ok(
        Command::new("scp")
            .args(["-q", "-F", &cfg])
            .arg(&local)
            .arg(format!("web-1:{}", remote.display())),
    );
    assert!(up.success(), "{up:?}");
    assert_eq!(std::fs::read(&remote).unwrap(), data, "scp upload");
    let down = run_ok(
        Command::new("scp")
            .args(["-q", "-F", &cfg])
            .arg(format!("web-1:{}", remote.display()))
            .arg(&back),
    );
    assert!(down.success(), "{down:?}");
    assert_eq!(std::fs::read(&back).unwrap(), data, "scp download");

    let batch = b.t.write(
        "sftp-batch",
        format!(
            "put {} {}.sftp\nget {}.sftp {}.sftp\nrename {}.sftp {}.moved\nmkdir {}.d\nrm {}.moved\n",
            local.display(),
            remote.display(),
            remote.display(),
            back.display(),
            remote.display(),
            remote.display(),
            remote.display(),
            remote.display()
        ),
    );
    let sftp = run_ok(
        Command::new("sftp")
            .args(["-q", "-F", &cfg, "-b"])
            .arg(&batch)
            .arg("web-1"),
    );
    assert!(sftp.success(), "{sftp:?}");
    assert_eq!(
        std::fs::read(format!("{}.sftp", back.display())).unwrap(),
        data,
        "sftp download"
    );
    assert!(PathBuf::from(format!("{}.d", remote.display())).is_dir());
    // Three recorded sessions, each an sftp subsystem.
    wait_until(
        Duration::from_secs(10),
        || b.find("session.ended", &[]).len() == 3,
        || format!("three session.ended: {:#?}", b.find("session.ended", &[])),
    );
    let mut all = Vec::new();
    for e in b.find("session.ended", &[]) {
        let id = e["session"].as_str().unwrap();
        let marks = markers_of(&cast(&b, id));
        assert!(marks.iter().any(|m| m == "subsystem sftp"), "{marks:?}");
        all.extend(marks);
    }
    // The file operations, with paths and byte counts.
    let r = remote.display().to_string();
    let n = data.len();
    for want in [
        format!("sftp close {r}: read 0 bytes, wrote {n} bytes"),
        format!("sftp close {r}: read {n} bytes, wrote 0 bytes"),
        format!("sftp close {r}.sftp: read 0 bytes, wrote {n} bytes"),
        format!("sftp rename {r}.sftp to {r}.moved"),
        format!("sftp mkdir {r}.d"),
        format!("sftp remove {r}.moved"),
    ] {
        assert!(all.contains(&want), "{want:?} not in {all:#?}");
    }
    assert!(
        all.iter()
            .any(|m| m.starts_with(&format!("sftp open {r} "))),
        "{all:#?}"
    );
}

/// rsync through a recorded host: the remote rsync is an exec, relayed with its binary
/// protocol in both directions; the bytes arrive whole and the command is in the recording.
#[test]
fn rsync_through_a_recorded_host_moves_identical_bytes_and_records_the_command() {
    let Some(b) = recorded_bastion() else { return };
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 14, &[]);
    let client = b.client("alice", &key);
    let data = payload(3 << 20);
    let local = b.t.write("rsync-src/payload.bin", &data);
    let remote = b.t.join("rsync-remote");
    let back = b.t.join("rsync-back");
    let ssh = format!("ssh -F {}", client.config.display());
    let up = run_ok(
        Command::new("rsync")
            .args(["-a", "-e", &ssh])
            .arg(local.parent().unwrap().join(""))
            .arg(format!("web-1:{}/", remote.display())),
    );
    assert!(up.success(), "{up:?}");
    assert_eq!(
        std::fs::read(remote.join("payload.bin")).unwrap(),
        data,
        "rsync upload"
    );
    let down = run_ok(
        Command::new("rsync")
            .args(["-a", "-e", &ssh])
            .arg(format!("web-1:{}/", remote.display()))
            .arg(&back),
    );
    assert!(down.success(), "{down:?}");
    assert_eq!(
        std::fs::read(back.join("payload.bin")).unwrap(),
        data,
        "rsync download"
    );
    wait_until(
        Duration::from_secs(10),
        || b.find("session.ended", &[]).len() == 2,
        || format!("two session.ended: {:#?}", b.find("session.ended", &[])),
    );
    for e in b.find("session.ended", &[]) {
        assert_eq!(e["exit_status"], 0, "{e}");
        let marks = markers_of(&cast(&b, e["session"].as_str().unwrap()));
        assert!(
            marks.iter().any(|m| m.starts_with("exec: rsync --server")),
            "{marks:?}"
        );
    }
}

#[test]
fn the_per_session_certificate_is_the_bastions_for_two_minutes_and_this_session_only() {
    let Some(mut b) = recorded_bastion() else {
        return;
    };
    // The target keeps the certificate it accepted where the session can read it.
    b.dmz.sshd.restart_with("ExposeAuthInfo yes\n");
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 14, &[]);
    let client = b.client("alice", &key);
    let before = crate::support::wire::now();
    let out = client.run(&["web-1", "cat \"$SSH_USER_AUTH\""]);
    assert!(out.success(), "{out:?}");
    let line = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("publickey "))
        .unwrap_or_else(|| panic!("no certificate in {out:?}"))
        .to_string();
    assert!(
        line.starts_with("ssh-ed25519-cert-v01@openssh.com "),
        "{line}"
    );
    let id = banner_session(&out.stderr);
    let info = cert_info(b.t.path(), &line);
    assert!(
        info.contains("Type: ssh-ed25519-cert-v01@openssh.com user certificate"),
        "{info}"
    );
    assert!(info.contains("Key ID: \"alice\""), "{info}");
    assert!(info.contains("source-address 127.0.0.1/32"), "{info}");
    assert!(info.contains("session@drawbridge "), "{info}");
    assert!(!info.contains("permit-agent-forwarding"), "{info}");
    assert!(!info.contains("permit-X11-forwarding"), "{info}");
    let principals: Vec<&str> = info
        .split("Principals:")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .map(str::trim)
        .take_while(|l| !l.ends_with(':'))
        .collect();
    assert_eq!(principals, ["web-admin"], "{info}");
    // Valid from 60 s before it was made to 120 s after: exactly 3 minutes.
    let cert = ssh_key::Certificate::from_openssh(&line).unwrap();
    assert_eq!(
        cert.extensions()
            .get("session@drawbridge")
            .map(String::as_str),
        Some(id.as_str()),
        "{info}"
    );
    assert_eq!(cert.valid_before() - cert.valid_after(), 180, "{info}");
    let after = crate::support::wire::now();
    assert!(
        cert.valid_after() + 60 >= before - 1 && cert.valid_after() + 60 <= after + 1,
        "made during the session: {info}"
    );
    // Signed by the user CA the target trusts, and the bastion's certificate is not the
    // user's: another key.
    assert_ne!(
        cert.public_key()
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string(),
        crate::support::ssh::fingerprint(&key)
    );
}

#[test]
fn a_target_with_an_unknown_host_key_or_another_names_certificate_is_refused() {
    let Some(b) = start_with("", &[]) else { return };
    // web-x: an sshd whose host certificate comes from a CA nobody trusts.
    let trusted = b.d.path().join("ca/trusted_user_ca_keys.pub");
    let rogue = Sshd::start(
        &b.t,
        "web-x",
        &[&trusted],
        &b.other_ca,
        &[("root", &["web-admin"])],
    )
    .expect("sshd");
    let web1 = format!("127.0.0.1:{}", b.sshd.port);
    b.reload_policy(|dir| {
        crate::support::dmz::write_dmz_policy(
            dir,
            b.sshd.port,
            b.dead_port,
            true,
            &[
                ("web-x", format!("127.0.0.1:{}", rogue.port)),
                // web-9 answers with web-1's certificate (another name).
                ("web-9", web1.clone()),
            ],
        );
        record_principal(dir, "web-admin");
    });
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 15, &[]);
    let mut client = b.client("alice", &key);
    client.add_target("web-x", "root");
    client.add_target("web-9", "root");
    for host in ["web-x", "web-9"] {
        let out = client.run(&[host, "echo", "reached"]);
        assert!(!out.success(), "{host}: {out:?}");
        assert!(!out.stdout.contains("reached"), "{host}: {out:?}");
        assert!(
            out.stderr.contains("host key is not trusted"),
            "{host}: {out:?}"
        );
        let r = b.expect_record(
            "session.refused",
            &[("target", host), ("reason", "target-host-key")],
        );
        let detail = r["detail"].as_str().unwrap_or_default().to_string();
        match host {
            "web-x" => assert!(detail.contains("not by the host CA"), "{r}"),
            _ => assert!(detail.contains("not for web-9"), "{r}"),
        }
    }
    assert!(
        !rogue.log().contains("Accepted"),
        "nothing logged in to the rogue target: {}",
        rogue.log()
    );
}

/// Mounts a tmpfs of 64 KiB on `dir` and fills it; unmounted on drop.
struct FullDisk(PathBuf);

impl FullDisk {
    fn mount(dir: &Path) -> FullDisk {
        std::fs::create_dir_all(dir).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
                .arg(dir),
        );
        let guard = FullDisk(dir.to_path_buf());
        let mut f = std::fs::File::create(dir.join("fill")).unwrap();
        let block = [0u8; 4096];
        while f.write_all(&block).is_ok() {}
        guard
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_recording_disk_refuses_the_recorded_session_and_not_an_unrecorded_one() {
    let Some(b) = start_with("", &[]) else { return };
    // Sessions through web-admin are recorded; through short (dave) they are not.
    b.reload_policy(|dir| record_principal(dir, "web-admin"));
    let _full = FullDisk::mount(&sessions_dir(&b));
    let alice = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 16, &[]);
    let out = b.client("alice", &alice).run(&["web-1", "echo", "reached"]);
    assert!(!out.success(), "{out:?}");
    assert!(!out.stdout.contains("reached"), "{out:?}");
    assert!(out.stderr.contains("cannot write the recording"), "{out:?}");
    let r = b.expect_record("session.refused", &[("reason", "recording-unavailable")]);
    assert_eq!(r["rule"], "recording.dir", "{r}");
    // Audit first: started, then refused, then ended without a recording.
    assert_eq!(
        b.find("session.started", &[]).len(),
        1,
        "{:#?}",
        b.records()
    );
    let e = ended(&b);
    assert_eq!(e["end"], "recording-failed", "{e}");
    assert!(e.get("recording_sha256").is_none(), "{e}");
    assert_eq!(e["bytes_client_to_target"], 0, "{e}");
    // dave's session is not recorded and goes through.
    let dave = b.user("dave", "dave", &["short"], "-1m:+1m", 17, &[]);
    let out = b.client("dave", &dave).run(&["web-1", "echo", "reached"]);
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "reached");
    assert!(!out.stderr.contains("this session is recorded"), "{out:?}");
}

#[test]
fn a_group_removal_cuts_a_live_recorded_session_within_a_second_and_the_cut_is_recorded() {
    let Some(b) = recorded_bastion() else { return };
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 18, &[]);
    let client = b.client("alice", &key);
    let err_path = b.t.join("held-stderr");
    let mut child = client
        .command(&["-tt", "web-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut running = Running(Some(child));
    stdin.write_all(b"echo ready-$((6*7))\n").unwrap();
    let mut id = String::new();
    wait_until(
        Duration::from_secs(10),
        || {
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            if id.is_empty() && err.contains("this session is recorded") {
                id = banner_session(&err);
            }
            !id.is_empty()
                && std::fs::read_to_string(sessions_dir(&b).join(format!("{id}.cast")))
                    .is_ok_and(|t| t.contains("ready-42"))
        },
        || "the session runs and its output is recorded".into(),
    );
    let asked = Instant::now();
    b.reload_policy(|dir| {
        b.dmz.write_policy(false, &[]);
        record_web1(dir);
    });
    let applied = Instant::now();
    eprintln!(
        "policy reload applied {:?} after it was asked for",
        applied - asked
    );
    let child = running.0.as_mut().unwrap();
    let mut gone = None;
    while applied.elapsed() < Duration::from_secs(5) {
        if child.try_wait().unwrap().is_some() {
            gone = Some(applied.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let gone = gone.unwrap_or_else(|| panic!("the session was not cut: {:#?}", b.records()));
    assert!(gone <= Duration::from_secs(1), "cut after {gone:?}");
    eprintln!("recorded session cut {gone:?} after the reload was applied");
    let e = b.expect_record("session.ended", &[("session", &id)]);
    assert_eq!(e["end"], "cut", "{e}");
    assert_eq!(e["reason"], "role-lost", "{e}");
    let marks = markers_of(&cast(&b, &id));
    assert!(marks.iter().any(|m| m.starts_with("cut: ")), "{marks:?}");
    assert!(e["recording_sha256"].is_string(), "{e}");
}

#[test]
fn ca_init_makes_the_session_ca_and_v1_ca_lists_it_after_the_user_ca() {
    let Some(b) = start_with("", &[]) else { return };
    let ca = b.d.path().join("ca");
    let private = ca.join("session_ca");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&private).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{}", private.display());
    let session = std::fs::read_to_string(ca.join("session_ca.pub")).unwrap();
    let user = std::fs::read_to_string(ca.join("user_ca.pub")).unwrap();
    let r = b.d.curl("/v1/ca", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let key = |l: &str| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let lines: Vec<String> = r.text().lines().map(key).collect();
    assert_eq!(
        lines,
        [key(user.trim()), key(session.trim())],
        "{}",
        r.text()
    );
}

/// The first bytes `ssh -W DEST web-1` gets through the recorded host (its stdin held
/// open), or "" within 10 s; and what it said on stderr.
fn first_bytes_through(client: &crate::support::ssh::SshClient, dest: &str) -> (String, String) {
    use std::io::Read;
    let err_path = std::env::temp_dir().join(format!(
        "w-{}-{}",
        std::process::id(),
        dest.replace(':', "-")
    ));
    let mut child = client
        .command(&["-W", dest, "web-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let _running = Running(Some(child));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let n = out.read(&mut buf).unwrap_or(0);
        let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
    });
    let got = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    drop(_running);
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&err_path);
    (got, err)
}

#[test]
fn a_local_forward_through_a_recorded_host_needs_port_forwarding_in_the_certificate() {
    let Some(b) = recorded_bastion() else { return };
    let dest = format!("127.0.0.1:{}", b.sshd.port);
    // ssh-keygen's default extensions include permit-port-forwarding.
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 31, &[]);
    let (got, err) = first_bytes_through(&b.client("alice", &key), &dest);
    assert!(got.starts_with("SSH-2.0-OpenSSH"), "{got:?} {err}");
    wait_until(
        Duration::from_secs(10),
        || {
            b.find("session.ended", &[]).iter().any(|e| {
                let id = e["session"].as_str().unwrap_or_default();
                markers_of(&cast(&b, id)).contains(&format!("forward {dest}"))
            })
        },
        || {
            format!(
                "the forward in a recording: {:#?}",
                b.find("session.ended", &[])
            )
        },
    );
    // Without it: refused, audited.
    let key = b.user(
        "carol",
        "carol",
        &["web-admin"],
        "-1m:+5m",
        32,
        &["clear", "permit-pty"],
    );
    let (got, err) = first_bytes_through(&b.client("carol", &key), &dest);
    assert_eq!(got, "", "{err}");
    assert!(err.contains("port forwarding is not permitted"), "{err}");
    b.expect_record(
        "ssh.session.refused",
        &[("request", "direct-tcpip"), ("key_id", "carol")],
    );
}

#[test]
fn bulk_output_and_input_through_a_recorded_session_arrive_whole() {
    let Some(b) = recorded_bastion() else { return };
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 33, &[]);
    let client = b.client("alice", &key);
    let local = b.t.join("bulk.bin");
    let data = payload(8 << 20);
    std::fs::write(&local, &data).unwrap();
    let cfg = client.config.display().to_string();
    let remote = b.t.join("bulk-remote.bin");
    let sh = |script: String| {
        run_ok(Command::new("sh").args(["-c", &script]))
            .stdout
            .trim()
            .to_string()
    };
    let want = sh(format!("sha256sum < {}", local.display()));
    // Client to target: 8 MiB into `cat > file` (the target's window paces the client).
    sh(format!(
        "ssh -F {cfg} web-1 'cat > {}' < {}",
        remote.display(),
        local.display()
    ));
    assert_eq!(sh(format!("sha256sum < {}", remote.display())), want);
    // Target to client: 8 MiB of `cat` (the client's window paces the target).
    let got = sh(format!(
        "ssh -F {cfg} web-1 'cat {}' | sha256sum",
        local.display()
    ));
    assert_eq!(got, want);
}

/// Input and its echo at once, read slowly on the client's side: the SSH server inside the
/// channel is held writing (the outer window is spent) while the client keeps sending. The
/// outer channel must still be read, or the outer session stops for good (it stalled a
/// 256 MiB download in the release benchmark).
#[test]
fn an_echo_read_slowly_while_the_client_keeps_sending_does_not_stall() {
    let Some(b) = recorded_bastion() else { return };
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 34, &[]);
    let client = b.client("alice", &key);
    let local = b.t.join("echo.bin");
    let data = payload(8 << 20);
    std::fs::write(&local, &data).unwrap();
    let want = run_ok(Command::new("sha256sum").arg(&local)).stdout;
    let want = want.split_whitespace().next().unwrap_or("").to_string();
    // The client's stdin is the file, its stdout is read here slowly (16 KiB every 10 ms),
    // its stderr goes to a file so no pipe outlives it.
    let stderr_path = b.t.join("echo.stderr");
    let mut ssh = Command::new("ssh")
        .args(["-F", &client.config.display().to_string(), "web-1", "cat"])
        .stdin(std::fs::File::open(&local).unwrap())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = ssh.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use sha2::Digest;
        use std::io::Read;
        let mut h = sha2::Sha256::new();
        let (mut buf, mut total) = (vec![0u8; 16384], 0usize);
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    h.update(&buf[..n]);
                    total += n;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        let _ = tx.send((hex::encode(h.finalize()), total));
    });
    let got = rx.recv_timeout(Duration::from_secs(60));
    let _ = ssh.kill();
    let _ = ssh.wait();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let (hash, total) = got.unwrap_or_else(|_| {
        panic!("the echo stalled: no end of output within 60 s; ssh said: {stderr}")
    });
    assert_eq!(total, data.len(), "{stderr}");
    assert_eq!(hash, want, "{stderr}");
}

#[test]
fn a_recording_disk_that_fills_during_a_session_cuts_that_session_only() {
    let Some(b) = start_with("", &[]) else { return };
    b.reload_policy(|dir| record_principal(dir, "web-admin"));
    let dir = sessions_dir(&b);
    std::fs::create_dir_all(&dir).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&dir),
    );
    let _mounted = FullDisk(dir.clone());
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 41, &[]);
    let client = b.client("alice", &key);
    // 4 MiB of output cannot fit in 256 KiB: the session is cut when a write fails; the
    // client got at most what was recorded or waiting in the recorder's buffer.
    let out = client.run(&[
        "web-1",
        "head -c 4194304 /dev/zero | tr '\\0' x; echo; echo done",
    ]);
    assert!(!out.success(), "{:?}", out.status);
    assert!(!out.stdout.contains("done"), "the session went on");
    assert!(
        out.stdout.len() < 1 << 20,
        "{} bytes reached the client",
        out.stdout.len()
    );
    let e = ended(&b);
    assert_eq!(e["end"], "recording-failed", "{e}");
    // An unrecorded session of the same host (dave's) still goes through.
    let dave = b.user("dave", "dave", &["short"], "-1m:+1m", 42, &[]);
    let out = b.client("dave", &dave).run(&["web-1", "echo", "reached"]);
    assert!(out.success(), "{out:?}");
}

#[test]
fn inside_the_channel_only_the_connections_certificate_and_a_granted_login_get_in() {
    let Some(b) = recorded_bastion() else { return };
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 21, &[]);
    // Another certificate of alice's, just as valid, offered first to the target only.
    let other = b.user("alice-other", "alice", &["web-admin"], "-1m:+5m", 22, &[]);
    let mut client = b.client("alice", &key);
    client.add_target_as("web-1-deploy", "web-1", "deploy");
    let cfg = std::fs::read_to_string(&client.config).unwrap();
    let block = format!(
        "Host web-1\n  IdentityFile {}\n  CertificateFile {}\n",
        other.path.display(),
        other.cert().display()
    );
    std::fs::write(&client.config, format!("{block}{cfg}")).unwrap();
    let out = client.run(&["web-1", "echo", "reached"]);
    // The client falls back to the connection's own certificate, which gets in.
    assert!(out.success(), "{out:?}");
    let r = b.expect_record("session.refused", &[("reason", "other-certificate")]);
    assert_eq!(r["serial"], 21, "the outer connection's certificate: {r}");
    let started = b.expect_record("session.started", &[]);
    assert_eq!(started["serial"], 21, "{started}");

    // A login none of the certificate's principals grants on the host: refused, before
    // anything reaches the target.
    let out = client.run(&["web-1-deploy", "echo", "reached"]);
    assert!(!out.success(), "{out:?}");
    assert!(!out.stdout.contains("reached"), "{out:?}");
    let r = b.expect_record(
        "session.refused",
        &[("reason", "login-not-granted"), ("login", "deploy")],
    );
    assert_eq!(r["target"], "web-1", "{r}");
    assert_eq!(
        b.find("session.started", &[]).len(),
        1,
        "{:#?}",
        b.records()
    );
}

/// The signature inside the channel is a new one, so a security key's touch is checked
/// there again, as at the connection to the bastion (docs/threats.md T46): a certificate
/// that needs the touch gets in with it and is refused without it, before the target.
#[test]
fn inside_the_channel_a_security_key_signature_needs_the_touch() {
    use crate::support::softsk::SoftSk;
    use crate::support::wire::{AnyServer, bounded, connect, threaded_runtime};
    let Some(b) = recorded_bastion() else { return };
    let sk = SoftSk::new();
    let public = b.t.write("soft-sk.pub", sk.public_line());
    let cert = b
        .user_ca
        .sign_user(&public, "alice", &["web-admin"], "-1m:+5m", 46, &[]);
    let cert = ssh_key::Certificate::read_file(&cert).unwrap();
    let rt = threaded_runtime();
    // (outer login, inner login) with the touch outside and `inner_flags` inside.
    let attempt = |inner_flags: u8| -> (bool, bool) {
        rt.block_on(bounded(async {
            let mut outer = connect(b.d.ssh.port()).await;
            let signer = &mut sk.signer(SoftSk::USER_PRESENT);
            let ok = outer
                .authenticate_certificate_with("alice", cert.clone(), None, signer)
                .await
                .is_ok_and(|r| r.success());
            if !ok {
                return (false, false);
            }
            let channel = outer
                .channel_open_direct_tcpip("web-1", 22, "127.0.0.1", 1)
                .await
                .expect("the recorded host's channel");
            let config = std::sync::Arc::new(russh::client::Config::default());
            let mut inner = russh::client::connect_stream(config, channel.into_stream(), AnyServer)
                .await
                .expect("the SSH server inside the channel");
            let signer = &mut sk.signer(inner_flags);
            let ok = inner
                .authenticate_certificate_with("root", cert.clone(), None, signer)
                .await
                .is_ok_and(|r| r.success());
            (true, ok)
        }))
    };
    assert_eq!(
        attempt(SoftSk::USER_PRESENT),
        (true, true),
        "{}",
        b.d.server_log()
    );
    assert_eq!(
        attempt(0),
        (true, false),
        "the server inside the channel took a signature made without a touch"
    );
    let r = b.expect_record("session.refused", &[("reason", "sk-no-user-presence")]);
    assert_eq!(r["serial"], 46, "{r}");
}

#[test]
fn a_bastion_only_process_records_with_the_session_ca_and_the_recorded_host_key() {
    if !crate::support::sshd::need_sshd() {
        return;
    }
    let t = crate::support::ssh::TestDir::new();
    let mut d = crate::support::drawbridge::Drawbridge::prepare_with_ssh(&[], "", "");
    let (code, out, err) = d.cli(&["ca", "init"], None);
    assert_eq!(code, 0, "{out}{err}");
    let ca = d.path().join("ca");
    // The issuer's private keys leave the bastion host; the session CA stays.
    let offline = t.join("offline");
    std::fs::create_dir_all(&offline).unwrap();
    for f in ["user_ca", "host_ca", "token_key", "tls.key"] {
        std::fs::rename(ca.join(f), offline.join(f)).unwrap();
    }
    for f in ["user_ca.pub", "host_ca.pub"] {
        std::fs::copy(ca.join(f), offline.join(f)).unwrap();
    }
    let ca_of = |name: &str| crate::support::ssh::Ca {
        key: crate::support::ssh::Key {
            path: offline.join(name),
        },
    };
    let (user_ca, host_ca) = (ca_of("user_ca"), ca_of("host_ca"));
    // The key presented inside recorded channels, certified by the host CA for web-1.
    let inner = crate::support::ssh::keygen(&ca.join("recorded_host_key"), "ed25519");
    host_ca.sign_host(&inner.public(), &["web-1", "127.0.0.1"]);
    // The target trusts only the session CA: only a per-session certificate gets in.
    let dmz = crate::support::dmz::Dmz::start(
        t,
        user_ca,
        host_ca,
        &ca.join("session_ca.pub"),
        &d.path().join("policies"),
    );
    record_web1(&d.path().join("policies"));
    d.launch(&["--bastion-only"]);
    let key = dmz.user("alice", "alice", &["web-admin"], "-1m:+5m", 51, &[]);
    let out = dmz
        .client("alice", d.ssh.port(), &key)
        .run(&["web-1", "echo", "split-recorded"]);
    assert!(out.success(), "{out:?}\n{}", d.server_log());
    assert_eq!(out.stdout.trim(), "split-recorded");
    assert!(out.stderr.contains("this session is recorded"), "{out:?}");
    let id = banner_session(&out.stderr);
    let audit = d.audit_path();
    let e = crate::support::audit::expect_record_in(&audit, "session.ended", &[("session", &id)]);
    assert!(e["recording_sha256"].is_string(), "{e}");
}

/// `ssh web-1 'echo up; sleep 600'` for each client, returned once every one printed
/// `up` (the session is established end to end), killed on drop.
fn hold_sessions(client: &crate::support::ssh::SshClient, n: usize) -> Vec<Running> {
    let (held, up, said) = try_hold_sessions(client, n);
    assert_eq!(up, n, "sessions established; clients said: {said}");
    held
}

/// [`hold_sessions`] without the assertion: the clients, how many got in, and what the
/// first failed ones said.
fn try_hold_sessions(
    client: &crate::support::ssh::SshClient,
    n: usize,
) -> (Vec<Running>, usize, String) {
    use std::io::BufRead;
    let mut held = Vec::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let errs = std::env::temp_dir().join(format!("held-{}", std::process::id()));
    std::fs::create_dir_all(&errs).unwrap();
    for i in 0..n {
        let mut child = client
            .command(&["web-1", "echo up; sleep 600"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(errs.join(i.to_string())).unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line.trim() == "up");
        });
        held.push(Running(Some(child)));
    }
    let mut up = 0;
    for _ in 0..n {
        if rx.recv_timeout(Duration::from_secs(150)) == Ok(true) {
            up += 1;
        }
    }
    let said: String = (0..n)
        .filter_map(|i| std::fs::read_to_string(errs.join(i.to_string())).ok())
        .map(|e| {
            e.lines()
                .filter(|l| !l.contains("this session is recorded"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|e| !e.trim().is_empty())
        .take(3)
        .collect();
    let _ = std::fs::remove_dir_all(&errs);
    (held, up, said)
}

/// Round trips of one byte through `ssh web-1 cat` (the shape of a keystroke and its
/// echo): p50 and p99 in microseconds.
fn echo_latency(client: &crate::support::ssh::SshClient, n: usize) -> (u128, u128) {
    use std::io::Read;
    let mut child = client
        .command(&["web-1", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut output = child.stdout.take().unwrap();
    let _running = Running(Some(child));
    let mut times = Vec::with_capacity(n);
    let mut b = [0u8; 1];
    for i in 0..n + 20 {
        let t = Instant::now();
        input.write_all(b"x").unwrap();
        output.read_exact(&mut b).unwrap();
        if i >= 20 {
            times.push(t.elapsed().as_micros());
        }
    }
    times.sort_unstable();
    (times[n / 2], times[(n * 99) / 100])
}

/// Seconds to `cat` `file` through `ssh web-1` to /dev/null.
fn cat_seconds(client: &crate::support::ssh::SshClient, file: &Path) -> f64 {
    let cfg = client.config.display().to_string();
    let t = Instant::now();
    run_ok(Command::new("sh").args([
        "-c",
        &format!("ssh -F {cfg} web-1 'cat {}' > /dev/null", file.display()),
    ]));
    t.elapsed().as_secs_f64()
}

/// Measurements of recorded sessions beside unrecorded ones through the same bastion and
/// target (a debug build of drawbridge unless run otherwise): keystroke-like echo, bulk
/// output, disk overhead, memory per idle session, sessions at once. Prints a table.
/// `cargo test --test it recorded::measure -- --ignored --nocapture`
#[test]
#[ignore]
fn measure_recorded_beside_unrecorded() {
    let Some(mut b) = start_with(
        "max_connections_per_user = 1000\nmax_unauthenticated = 1000\n\
         max_unauthenticated_per_source = 1000\nmax_channels_per_connection = 10\n\
         connect_timeout = \"60s\"",
        &[],
    ) else {
        return;
    };
    b.dmz
        .sshd
        .restart_with("MaxStartups 1000\nMaxSessions 10\n");
    b.reload_policy(|dir| record_principal(dir, "web-admin"));
    let alice = b.user("alice", "alice", &["web-admin"], "-1m:+30m", 61, &[]);
    let dave = b.user("dave", "dave", &["short"], "-1m:+1m", 62, &[]);
    let recorded = b.client("alice", &alice);
    let plain = b.client("dave", &dave);
    // Hundreds of handshakes at once on a shared machine take longer than the 5 s the
    // test clients allow otherwise.
    for c in [&recorded, &plain] {
        let cfg = std::fs::read_to_string(&c.config).unwrap();
        std::fs::write(
            &c.config,
            cfg.replace("ConnectTimeout 5", "ConnectTimeout 120"),
        )
        .unwrap();
    }

    let (r50, r99) = echo_latency(&recorded, 500);
    let (p50, p99) = echo_latency(&plain, 500);
    println!("echo round trip p50/p99 µs: recorded {r50}/{r99}, unrecorded {p50}/{p99}");

    // 64 MiB of base64 text (terminal-like output).
    let text = b.t.join("text.b64");
    run_ok(Command::new("sh").args([
        "-c",
        &format!(
            "head -c 50331648 /dev/urandom | base64 > {}",
            text.display()
        ),
    ]));
    let size = std::fs::metadata(&text).unwrap().len();
    let before: u64 = dir_size(&sessions_dir(&b));
    let tr = cat_seconds(&recorded, &text);
    let tp = cat_seconds(&plain, &text);
    wait_until(
        Duration::from_secs(30),
        || b.find("session.ended", &[]).len() >= 2,
        || "the cat session ended".into(),
    );
    let disk = dir_size(&sessions_dir(&b)) - before;
    let mib = size as f64 / 1048576.0;
    println!(
        "cat {mib:.0} MiB: recorded {:.1} MiB/s, unrecorded {:.1} MiB/s (ratio {:.2}); recording {:.2}× the output",
        mib / tr,
        mib / tp,
        tp / tr,
        disk as f64 / size as f64
    );
    let _ = std::fs::remove_file(&text);

    let n = 50;
    let idle = b.rss_kib();
    let held = hold_sessions(&recorded, n);
    std::thread::sleep(Duration::from_secs(2));
    let with = b.rss_kib();
    drop(held);
    std::thread::sleep(Duration::from_secs(2));
    let idle2 = b.rss_kib();
    let held = hold_sessions(&plain, n);
    std::thread::sleep(Duration::from_secs(2));
    let with2 = b.rss_kib();
    drop(held);
    println!(
        "RSS per idle session ({n} held): recorded {} KiB, unrecorded {} KiB",
        with.saturating_sub(idle) / n as u64,
        with2.saturating_sub(idle2) / n as u64
    );

    let burst = 200;
    // dave's role allows one minute: a fresh certificate for the burst.
    let dave = b.user("dave-burst", "dave", &["short"], "-1m:+1m", 63, &[]);
    let mut plain = b.client("dave-burst", &dave);
    plain.option("ConnectTimeout 120");
    let cfg = std::fs::read_to_string(&plain.config).unwrap();
    std::fs::write(
        &plain.config,
        cfg.replace("ConnectTimeout 5", "ConnectTimeout 120"),
    )
    .unwrap();
    for (name, client) in [("unrecorded", &plain), ("recorded", &recorded)] {
        let t = Instant::now();
        let (held, up, said) = try_hold_sessions(client, burst);
        println!(
            "{burst} {name} sessions at once: {up} established in {:.1} s, {} failed {said:?}",
            t.elapsed().as_secs_f64(),
            burst - up
        );
        drop(held);
        std::thread::sleep(Duration::from_secs(3));
    }
    b.assert_healthy();
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn the_target_refuses_the_per_session_certificate_from_any_other_address() {
    // The bastion is told its egress address is 127.0.0.2, but connects from 127.0.0.1:
    // the per-session certificate says 127.0.0.2/32 only, so the target's sshd refuses
    // it, as it would from the client's address or anywhere else.
    let Some(b) = start_with("egress_addresses = [\"127.0.0.2/32\"]", &[]) else {
        return;
    };
    b.reload_policy(record_web1);
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 71, &[]);
    let out = b.client("alice", &key).run(&["web-1", "echo", "reached"]);
    assert!(!out.success(), "{out:?}");
    assert!(!out.stdout.contains("reached"), "{out:?}");
    let r = b.expect_record("session.refused", &[("reason", "target-auth-failed")]);
    assert_eq!(r["target"], "web-1", "{r}");
    // sshd's own reason: the address.
    wait_until(
        Duration::from_secs(5),
        || {
            b.sshd
                .log()
                .contains("valid certificate but not from a permitted source address (127.0.0.1)")
        },
        || format!("sshd's reason: {}", b.sshd.log()),
    );
}

/// A second sshd for web-1 (same keys and files) whose clock runs `offset` ahead
/// (`faketime`), on a port of its own; killed on drop. Returns its port and log path.
fn sshd_with_clock_ahead(b: &Bastion, offset: &str) -> (Running, u16, PathBuf) {
    let have = Command::new("sh")
        .args(["-c", "command -v faketime"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(have, "faketime is missing: apt-get install faketime");
    sshd_started(b, "ahead", &["faketime", "-f", offset], |c| c)
}

#[test]
fn the_target_refuses_the_per_session_certificate_after_two_minutes() {
    let Some(b) = recorded_bastion() else { return };
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 81, &[]);
    let client = b.client("alice", &key);
    for (offset, accepted) in [("+100s", true), ("+3m", false)] {
        let (sshd, port, log) = sshd_with_clock_ahead(&b, offset);
        b.reload_policy(|dir| {
            crate::support::dmz::write_dmz_policy(dir, port, b.dead_port, true, &[]);
            record_web1(dir);
        });
        let out = client.run(&["web-1", "echo", "reached"]);
        if accepted {
            // Within its window (made now, valid 120 s): the target takes it.
            assert!(out.success(), "{offset}: {out:?}");
        } else {
            assert!(!out.success(), "{offset}: {out:?}");
            assert!(!out.stdout.contains("reached"), "{out:?}");
            b.expect_record("session.refused", &[("reason", "target-auth-failed")]);
            wait_until(
                Duration::from_secs(5),
                || {
                    std::fs::read_to_string(&log)
                        .unwrap_or_default()
                        .contains("Certificate invalid: expired")
                },
                || {
                    format!(
                        "sshd's reason: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                },
            );
        }
        // Dropped, the sshd under `faketime` is gone too (not only the wrapper).
        drop(sshd);
        wait_until(
            Duration::from_secs(5),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            || format!("the clock-ahead sshd on port {port} outlived its test"),
        );
    }
}

/// A second sshd for web-1 (same keys and files) with its config passed through `edit`,
/// on a port of its own; killed on drop. Returns it, its port and its log path.
fn sshd_variant(
    b: &Bastion,
    tag: &str,
    edit: impl Fn(String) -> String,
) -> (Running, u16, PathBuf) {
    sshd_started(b, tag, &[], edit)
}

/// A second sshd of the DMZ's on a free port, its config edited by `edit`, run through
/// `wrapper` (e.g. `faketime -f +3m`) when given; waits until it listens.
fn sshd_started(
    b: &Bastion,
    tag: &str,
    wrapper: &[&str],
    edit: impl Fn(String) -> String,
) -> (Running, u16, PathBuf) {
    let base = std::fs::read_to_string(b.sshd.dir.join("sshd_config")).unwrap();
    let port = crate::support::ports::free_port();
    let cfg = edit(base.replace(
        &format!("ListenAddress 127.0.0.1:{}", b.sshd.port),
        &format!("ListenAddress 127.0.0.1:{port}"),
    ));
    let name = format!("sshd_config_{tag}_{port}");
    let path = b.sshd.dir.join(&name);
    std::fs::write(&path, cfg).unwrap();
    let log = b.sshd.dir.join(format!("{name}.log"));
    let (program, before) = match wrapper.split_first() {
        Some((w, rest)) => (*w, [rest, &["/usr/sbin/sshd"]].concat()),
        None => ("/usr/sbin/sshd", Vec::new()),
    };
    // In a group of its own, so that dropping `Running` also ends the sshd a wrapper
    // forked (killing `faketime` alone left its sshd listening after the tests).
    let child = Command::new(program)
        .process_group(0)
        .args(&before)
        .args(["-D", "-e", "-f"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let running = Running(Some(child));
    crate::support::process::wait_for_port(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    );
    (running, port, log)
}

/// Points web-1 at `port`, recorded, with `host_key` pinned when given.
fn web1_at(dir: &Path, b: &Bastion, port: u16, host_key: Option<&str>) {
    crate::support::dmz::write_dmz_policy(dir, port, b.dead_port, true, &[]);
    record_web1(dir);
    if let Some(k) = host_key {
        let p = dir.join("hosts.toml");
        let s = std::fs::read_to_string(&p).unwrap();
        let s = s.replace(
            "[hosts.web-1]\n",
            &format!("[hosts.web-1]\nhost_key = {k:?}\n"),
        );
        std::fs::write(&p, s).unwrap();
    }
}

#[test]
fn a_target_with_a_pinned_plain_host_key_is_reached_and_another_key_is_refused() {
    let Some(b) = recorded_bastion() else { return };
    // web-1 answering with its bare host key: no host certificate at all.
    let (_sshd, port, log) = sshd_variant(&b, "bare", |c| {
        c.lines()
            .filter(|l| !l.starts_with("HostCertificate "))
            .map(|l| format!("{l}\n"))
            .collect()
    });
    let real = std::fs::read_to_string(b.sshd.dir.join("host_ed25519.pub")).unwrap();
    let real = real.trim().to_string();
    let other = b.t.keygen("not-web-1-host-key").public_line();
    let other = other.trim().to_string();
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 91, &[]);
    let client = b.client("alice", &key);

    // Its pinned key (the public key line): the session goes through, recorded.
    b.reload_policy(|dir| web1_at(dir, &b, port, Some(&real)));
    let out = client.run(&["web-1", "echo", "reached-pinned"]);
    assert!(
        out.success(),
        "{out:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(out.stdout.trim(), "reached-pinned", "{out:?}");
    assert!(out.stderr.contains("this session is recorded"), "{out:?}");

    // The same host with another key pinned (as a fingerprint): refused, audited, and
    // nothing logs in to it.
    let other_fp = run_ok(Command::new("sh").args([
        "-c",
        &format!("echo '{other}' | ssh-keygen -lf - | cut -d' ' -f2"),
    ]))
    .stdout
    .trim()
    .to_string();
    assert!(other_fp.starts_with("SHA256:"), "{other_fp}");
    let accepted_before = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("Accepted")
        .count();
    for pin in [other.as_str(), other_fp.as_str()] {
        b.reload_policy(|dir| web1_at(dir, &b, port, Some(pin)));
        let out = client.run(&["web-1", "echo", "reached"]);
        assert!(!out.success(), "{pin}: {out:?}");
        assert!(!out.stdout.contains("reached"), "{out:?}");
        assert!(out.stderr.contains("host key is not trusted"), "{out:?}");
    }
    let refused = b.find(
        "session.refused",
        &[("target", "web-1"), ("reason", "target-host-key")],
    );
    assert_eq!(refused.len(), 2, "{:#?}", b.records());
    for r in &refused {
        assert_eq!(r["rule"], "bastion.target-host-key", "{r}");
        let detail = r["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("not the pinned host_key"), "{r}");
        assert!(detail.contains(&other_fp), "{r}");
    }
    // Without a pin, a bare host key is never trusted on first use.
    b.reload_policy(|dir| web1_at(dir, &b, port, None));
    let out = client.run(&["web-1", "echo", "reached"]);
    assert!(!out.success(), "{out:?}");
    wait_until(
        Duration::from_secs(5),
        || {
            b.find("session.refused", &[("reason", "target-host-key")])
                .iter()
                .any(|r| {
                    r["detail"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("a bare host key")
                })
        },
        || format!("{:#?}", b.records()),
    );
    let accepted_after = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("Accepted")
        .count();
    assert_eq!(
        accepted_before, accepted_after,
        "a refused target was logged in to"
    );
}

#[test]
fn an_exit_signal_reaches_the_client_and_the_recording_names_it() {
    let Some(b) = recorded_bastion() else { return };
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 92, &[]);
    let out = b
        .client("alice", &key)
        .run(&["web-1", "echo before-signal; kill -TERM $$"]);
    // OpenSSH's client exits 255 when the remote command died of a signal.
    assert_eq!(out.code(), 255, "{out:?}");
    assert_eq!(out.stdout.trim(), "before-signal", "{out:?}");
    let e = ended(&b);
    assert_eq!(e["exit_signal"], "TERM", "{e}");
    assert!(e.get("exit_status").is_none_or(Value::is_null), "{e}");
    let id = e["session"].as_str().unwrap();
    let events = cast(&b, id);
    assert!(output_of(&events).contains("before-signal"), "{events:?}");
    let marks = markers_of(&events);
    assert!(marks.iter().any(|m| m == "exit-signal TERM"), "{marks:?}");
}

#[test]
fn an_environment_variable_the_target_accepts_reaches_the_command() {
    let Some(b) = recorded_bastion() else { return };
    let (_sshd, port, _log) = sshd_variant(&b, "env", |c| c + "AcceptEnv FOO\n");
    b.reload_policy(|dir| web1_at(dir, &b, port, None));
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 93, &[]);
    let client = b.client("alice", &key);
    let out = client.run(&[
        "-o",
        "SetEnv=FOO=bar-through-recorded BAR=not-accepted",
        "web-1",
        "echo \"FOO=$FOO BAR=$BAR\"",
    ]);
    assert!(out.success(), "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        "FOO=bar-through-recorded BAR=",
        "{out:?}"
    );
    assert!(out.stderr.contains("this session is recorded"), "{out:?}");
}

/// An interactive session typing `typed-marker-<n>` (then exiting), through the bastion
/// `b`; returns its recording.
fn typed_session(b: &Bastion, serial: u64) -> Vec<Value> {
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", serial, &[]);
    let client = b.client("alice", &key);
    let out = run_with_input(
        &mut client.command(&["-tt", "web-1"]),
        Some(format!("echo typed-marker-{serial}\nexit\n").as_bytes()),
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let id = banner_session(&out.stderr);
    b.expect_record("session.ended", &[("session", &id)]);
    cast(b, &id)
}

fn input_of(events: &[Value]) -> String {
    events
        .iter()
        .skip(1)
        .filter(|e| e[1] == "i")
        .map(|e| e[2].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn keystrokes_are_recorded_only_with_recording_input() {
    // The default: what the terminal showed, never what was typed.
    {
        let Some(b) = recorded_bastion() else { return };
        let events = typed_session(&b, 94);
        assert!(output_of(&events).contains("typed-marker-94"), "{events:?}");
        assert_eq!(input_of(&events), "", "keystrokes recorded: {events:?}");
        assert!(!events.iter().skip(1).any(|e| e[1] == "i"), "{events:?}");
    }
    // recording.input = true: the keystrokes too, as "i" events.
    let Some(b) = crate::support::dmz::start_configured("", "[recording]\ninput = true\n", &[])
    else {
        return;
    };
    b.reload_policy(record_web1);
    let events = typed_session(&b, 95);
    let typed = input_of(&events);
    assert!(
        typed.contains("echo typed-marker-95"),
        "{typed:?} {events:?}"
    );
}

/// Bulk output only: 32 MiB of `cat` through a recorded and an unrecorded session of the
/// same bastion and target (what the dev profile's optimised crypto and hash crates are
/// for). `cargo test --test it recorded::measure_bulk -- --ignored --nocapture`
#[test]
#[ignore]
fn measure_bulk_cat_recorded_beside_unrecorded() {
    let Some(b) = start_with("", &[]) else { return };
    b.reload_policy(|dir| record_principal(dir, "web-admin"));
    let alice = b.user("alice", "alice", &["web-admin"], "-1m:+30m", 64, &[]);
    let dave = b.user("dave", "dave", &["short"], "-1m:+1m", 65, &[]);
    let recorded = b.client("alice", &alice);
    let plain = b.client("dave", &dave);
    let text = b.t.join("bulk.b64");
    run_ok(Command::new("sh").args([
        "-c",
        &format!(
            "head -c 25165824 /dev/urandom | base64 > {}",
            text.display()
        ),
    ]));
    let mib = std::fs::metadata(&text).unwrap().len() as f64 / 1048576.0;
    for _ in 0..2 {
        let tr = cat_seconds(&recorded, &text);
        let tp = cat_seconds(&plain, &text);
        println!(
            "cat {mib:.0} MiB: recorded {:.1} MiB/s, unrecorded {:.1} MiB/s",
            mib / tr,
            mib / tp
        );
    }
}
