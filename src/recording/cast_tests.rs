#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::*;

fn meta() -> CastMeta {
    CastMeta {
        width: 80,
        height: 24,
        title: "alice@db-1 as root".into(),
        env: vec![("TERM".into(), "xterm-256color".into())],
        command: None,
        input: false,
    }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The events (after the header) as (kind, text).
fn events(path: &Path) -> Vec<(String, String)> {
    lines(path)
        .into_iter()
        .skip(1)
        .map(|e| {
            (
                e[1].as_str().unwrap().to_string(),
                e[2].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn output_text(path: &Path) -> String {
    events(path)
        .into_iter()
        .filter(|(k, _)| k == "o")
        .map(|(_, t)| t)
        .collect()
}

#[test]
fn header_modes_and_events_are_asciicast_v2() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("var/sessions");
    let id = SessionId::parse("abc").unwrap();
    let mut m = meta();
    m.command = Some("uptime\n".into());
    let mut r = Recorder::create(&dir, &id, m).unwrap();
    assert_eq!(r.path(), dir.join("abc.cast"));
    r.output(b"hello\r\n").unwrap();
    r.resize(120, 40).unwrap();
    r.marker("open /etc/passwd\x1b[2J").unwrap();
    let s = r.finish(Some(3)).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&s.path), 0o600);
    let all = lines(&s.path);
    assert_eq!(all[0]["version"], 2);
    assert_eq!(all[0]["width"], 80);
    assert_eq!(all[0]["height"], 24);
    assert_eq!(all[0]["env"]["TERM"], "xterm-256color");
    assert_eq!(all[0]["command"], "uptime\n");
    assert!(all[0]["timestamp"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(
        events(&s.path),
        [
            ("m".to_string(), "exec: uptime\\u{a}".to_string()),
            ("o".into(), "hello\r\n".into()),
            ("r".into(), "120x40".into()),
            ("m".into(), "open /etc/passwd\\u{1b}[2J".into()),
            ("m".into(), "exit status 3".into()),
        ]
    );
    // Times never go backwards.
    let times: Vec<f64> = all[1..].iter().map(|e| e[0].as_f64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // The summary is the file as it is.
    let bytes = std::fs::read(&s.path).unwrap();
    assert_eq!(s.size, bytes.len() as u64);
    assert_eq!(s.sha256, hex::encode(Sha256::digest(&bytes)));
}

#[test]
fn an_existing_recording_or_a_link_is_never_written_over() {
    let d = tempfile::tempdir().unwrap();
    let id = SessionId::parse("same").unwrap();
    Recorder::create(d.path(), &id, meta()).unwrap();
    let e = Recorder::create(d.path(), &id, meta()).unwrap_err();
    assert!(matches!(e, RecordingError::Create { .. }), "{e}");
    let victim = d.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    std::os::unix::fs::symlink(&victim, d.path().join("link.cast")).unwrap();
    let e = Recorder::create(d.path(), &SessionId::parse("link").unwrap(), meta()).unwrap_err();
    assert!(matches!(e, RecordingError::Create { .. }), "{e}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    // A file where the folder should be.
    let e = Recorder::create(&victim, &id, meta()).unwrap_err();
    assert!(matches!(e, RecordingError::Dir { .. }), "{e}");
}

#[test]
fn keystrokes_only_when_input_recording_is_on() {
    let d = tempfile::tempdir().unwrap();
    let mut r = Recorder::create(d.path(), &SessionId::parse("off").unwrap(), meta()).unwrap();
    r.input(b"secret\r").unwrap();
    r.output(b"$ ").unwrap();
    let off = r.finish(None).unwrap();
    assert_eq!(events(&off.path), [("o".to_string(), "$ ".to_string())]);
    let mut m = meta();
    m.input = true;
    let mut r = Recorder::create(d.path(), &SessionId::parse("on").unwrap(), m).unwrap();
    r.input(b"ls\r").unwrap();
    let on = r.finish(None).unwrap();
    assert_eq!(events(&on.path), [("i".to_string(), "ls\r".to_string())]);
}

#[test]
fn utf8_split_across_writes_is_kept_and_invalid_bytes_replaced() {
    let d = tempfile::tempdir().unwrap();
    let mut r = Recorder::create(d.path(), &SessionId::parse("u").unwrap(), meta()).unwrap();
    let text = "grüße € 🦀";
    for b in text.as_bytes() {
        r.output(&[*b]).unwrap();
    }
    r.output(b" \xff\xfe end \xe2\x82").unwrap();
    let s = r.finish(None).unwrap();
    assert_eq!(
        output_text(&s.path),
        format!("{text} \u{fffd}\u{fffd} end \u{fffd}")
    );
}

#[test]
fn bulk_output_costs_at_most_1_3_times_its_size_on_disk() {
    let d = tempfile::tempdir().unwrap();
    let mut r = Recorder::create(d.path(), &SessionId::parse("bulk").unwrap(), meta()).unwrap();
    // What `ls -l` or a log file looks like: text lines with CR LF (as a pty sends them).
    let line = "-rw-r--r-- 1 deploy deploy  48213 Nov 30 12:01 access.log.2026-11-30\r\n";
    let chunk = line.repeat(4096 / line.len() + 1);
    let mut total = 0usize;
    while total < 8 * 1024 * 1024 {
        r.output(chunk.as_bytes()).unwrap();
        total += chunk.len();
    }
    let s = r.finish(None).unwrap();
    let ratio = s.size as f64 / total as f64;
    eprintln!(
        "recording overhead on disk: {ratio:.3}× ({} bytes for {total})",
        s.size
    );
    assert!(
        ratio <= 1.3,
        "recording {} bytes for {total} bytes of output: {ratio:.3}×",
        s.size
    );
    assert_eq!(output_text(&s.path).len(), total);
}

#[test]
fn writes_close_together_are_one_event_and_writes_apart_keep_their_timing() {
    let d = tempfile::tempdir().unwrap();
    let mut r = Recorder::create(d.path(), &SessionId::parse("c").unwrap(), meta()).unwrap();
    for _ in 0..100 {
        r.output(b"x").unwrap();
    }
    std::thread::sleep(COALESCE * 3);
    r.output(b"y").unwrap();
    let s = r.finish(None).unwrap();
    let ev = lines(&s.path);
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert_eq!(ev[1][2], "x".repeat(100));
    assert_eq!(ev[2][2], "y");
    assert!(ev[2][0].as_f64().unwrap() - ev[1][0].as_f64().unwrap() >= COALESCE.as_secs_f64());
}

#[test]
fn output_reaches_the_file_within_about_a_second() {
    let d = tempfile::tempdir().unwrap();
    let mut r = Recorder::create(d.path(), &SessionId::parse("t").unwrap(), meta()).unwrap();
    r.output(b"first").unwrap();
    assert_eq!(output_text(r.path()), "", "kept in memory at first");
    // Nothing written for a second: the timer's tick writes it.
    std::thread::sleep(FLUSH_EVERY + Duration::from_millis(50));
    r.tick().unwrap();
    assert_eq!(output_text(r.path()), "first");
    // Or the next call after a second does.
    std::thread::sleep(FLUSH_EVERY + Duration::from_millis(50));
    r.output(b" second").unwrap();
    std::thread::sleep(COALESCE * 2);
    r.output(b" third").unwrap();
    assert_eq!(output_text(r.path()), "first second");
    r.finish(None).unwrap();
}

#[test]
fn an_idle_recorder_holds_little_memory_after_bulk_output() {
    let d = tempfile::tempdir().unwrap();
    let mut r = Recorder::create(d.path(), &SessionId::parse("m").unwrap(), meta()).unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..64 {
        r.output(&chunk).unwrap();
    }
    r.flush().unwrap();
    assert!(
        r.buffered_capacity() <= 8 * 1024,
        "{}",
        r.buffered_capacity()
    );
    eprintln!(
        "idle recorder after 4 MiB of output: {} bytes inline + {} bytes of buffers",
        std::mem::size_of::<Recorder>(),
        r.buffered_capacity()
    );
    r.finish(None).unwrap();
}

#[test]
fn a_failed_write_fails_every_call_after_it() {
    let d = tempfile::tempdir().unwrap();
    let mut r = Recorder::create(d.path(), &SessionId::parse("full").unwrap(), meta()).unwrap();
    // What a full disk does to a write.
    r.file = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    r.output(b"lost").unwrap();
    let e = r.flush().unwrap_err();
    assert!(matches!(e, RecordingError::Write { .. }), "{e}");
    assert!(matches!(
        r.output(b"more"),
        Err(RecordingError::Failed { .. })
    ));
    assert!(matches!(r.marker("m"), Err(RecordingError::Failed { .. })));
    assert!(matches!(
        r.finish(Some(0)),
        Err(RecordingError::Failed { .. })
    ));
}

/// Throughput of the recorder itself (not a pass/fail goal: the relay's goal is measured
/// end to end by the benchmark). Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn recorder_throughput() {
    let d = tempfile::tempdir().unwrap();
    let mut r = Recorder::create(d.path(), &SessionId::parse("speed").unwrap(), meta()).unwrap();
    let line = "-rw-r--r-- 1 deploy deploy  48213 Nov 30 12:01 access.log.2026-11-30\r\n";
    let chunk = line.repeat(32 * 1024 / line.len());
    let total = 64 * 1024 * 1024;
    let t0 = std::time::Instant::now();
    let mut n = 0;
    while n < total {
        r.output(chunk.as_bytes()).unwrap();
        n += chunk.len();
    }
    let s = r.finish(None).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "recorder: {} MiB of terminal output in {secs:.2} s = {:.0} MiB/s ({} bytes on disk)",
        n >> 20,
        (n as f64 / (1 << 20) as f64) / secs,
        s.size
    );
}

#[test]
fn one_huge_write_is_cut_into_bounded_events() {
    let d = tempfile::tempdir().unwrap();
    let mut r = Recorder::create(d.path(), &SessionId::parse("huge").unwrap(), meta()).unwrap();
    let text = "é".repeat(1024 * 1024); // 2 MiB, characters across every cut
    r.output(text.as_bytes()).unwrap();
    let s = r.finish(None).unwrap();
    let ev = events(&s.path);
    assert!(ev.len() >= 2 * 1024 * 1024 / MAX_EVENT_TEXT, "{}", ev.len());
    assert!(ev.iter().all(|(_, t)| t.len() <= MAX_EVENT_TEXT + 4));
    assert_eq!(output_text(&s.path), text);
}
