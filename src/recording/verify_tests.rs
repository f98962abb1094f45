#![allow(clippy::unwrap_used)]

use super::*;
use crate::recording::{CastMeta, Recorder};

/// A recording of session `id` in `dir` and the `session.ended` line naming it.
fn recorded(dir: &Path, id: &str) -> String {
    let sid = SessionId::parse(id).unwrap();
    let mut r = Recorder::create(dir, &sid, CastMeta::default()).unwrap();
    r.output(b"uptime output\r\n").unwrap();
    let s = r.finish(Some(0)).unwrap();
    format!(
        r#"{{"event":"session.ended","session":"{id}","key_id":"alice","target":"db-1","login":"root","end":"closed","recording_size":{},"recording_sha256":"{}"}}"#,
        s.size, s.sha256
    )
}

#[test]
fn intact_recordings_match_and_edited_cut_or_removed_ones_are_named() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("sessions");
    let log = d.path().join("audit.log");
    let lines = [
        recorded(&dir, "intact"),
        recorded(&dir, "edited"),
        recorded(&dir, "cut"),
        recorded(&dir, "removed"),
        r#"{"event":"session.started","session":"live1","key_id":"bob"}"#.to_string(),
        r#"{"event":"session.ended","session":"failed","end":"recording-failed"}"#.to_string(),
    ];
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let ok = check_recordings(&log, &dir).unwrap();
    assert_eq!(ok.matched, 4);
    assert!(ok.problems.is_empty(), "{:?}", ok.problems);
    assert_eq!(ok.unfinished, ["live1"]);

    // Same length, one byte changed: "uptime" -> "uptimE".
    let edited = dir.join("edited.cast");
    let text = std::fs::read_to_string(&edited)
        .unwrap()
        .replace("uptime", "uptimE");
    std::fs::write(&edited, text).unwrap();
    let cut = dir.join("cut.cast");
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
    std::fs::remove_file(dir.join("removed.cast")).unwrap();

    let bad = check_recordings(&log, &dir).unwrap();
    assert_eq!(bad.matched, 1);
    assert_eq!(bad.problems.len(), 3, "{:?}", bad.problems);
    assert!(
        bad.problems[0].contains("cut.cast: recording cut:") && bad.problems[0].contains("line 3"),
        "{:?}",
        bad.problems
    );
    assert!(
        bad.problems[1].contains("edited.cast: recording edited: SHA-256"),
        "{:?}",
        bad.problems
    );
    assert!(
        bad.problems[2]
            .contains("removed.cast: recording removed (named by session.ended at line 4"),
        "{:?}",
        bad.problems
    );
}
