#![allow(clippy::unwrap_used)]

use super::*;

const CAST: &str = concat!(
    r#"{"version":2,"width":80,"height":24,"timestamp":1}"#,
    "\n",
    r#"[0.5, "o", "hello "]"#,
    "\n",
    r#"[0.7, "m", "exec: ls\u001b"]"#,
    "\n",
    r#"[1.0, "r", "100x30"]"#,
    "\n",
    r#"[1.5, "o", "world"]"#,
    "\n",
    r#"[601.5, "o", "!"]"#,
    "\n",
    "garbage line\n",
);

fn played(speed: f64, max_idle: f64, markers: bool) -> (String, String, Vec<f64>) {
    let mut out = Vec::new();
    let mut marks = Vec::new();
    let mut waits = Vec::new();
    let m: Option<&mut dyn Write> = if markers { Some(&mut marks) } else { None };
    play(CAST.as_bytes(), speed, max_idle, &mut out, m, &mut |d| {
        waits.push((d.as_secs_f64() * 1000.0).round() / 1000.0)
    })
    .unwrap();
    (
        String::from_utf8(out).unwrap(),
        String::from_utf8(marks).unwrap(),
        waits,
    )
}

#[test]
fn play_keeps_the_timing_divided_by_speed_and_cuts_long_pauses() {
    let (out, marks, waits) = played(1.0, 5.0, false);
    assert_eq!(out, "hello world!");
    assert_eq!(marks, "");
    assert_eq!(waits, [0.5, 1.5, 6.5]);
    let (_, _, waits) = played(2.0, 0.0, false);
    assert_eq!(waits, [0.25, 0.75, 300.75]);
    let (_, marks, waits) = played(1.0, 5.0, true);
    assert_eq!(marks, "[exec: ls\\u{1b}]\n");
    assert_eq!(waits, [0.5, 0.7, 1.5, 6.5]);
}

#[test]
fn play_refuses_what_is_not_a_recording() {
    let mut out = Vec::new();
    for bad in ["", "{}\n", "[0.5, \"o\", \"x\"]\n"] {
        let e = play(bad.as_bytes(), 1.0, 0.0, &mut out, None, &mut |_| {}).unwrap_err();
        assert!(matches!(e, PlayError::NotCast(_)), "{bad:?}: {e}");
    }
}

fn session(id: &str, started: &str, user: &str, host: &str, ended: bool) -> (String, Session) {
    (
        id.into(),
        Session {
            id: id.into(),
            started: started.into(),
            user: user.into(),
            host: host.into(),
            login: "root".into(),
            ended: ended.then(|| crate::recording::sessions::Ended {
                end: "closed".into(),
                exit_status: Some(0),
                duration_ms: Some(90_000),
                ..Default::default()
            }),
            replica: String::new(),
        },
    )
}

#[test]
fn list_filters_by_user_host_time_and_liveness() {
    let sessions: BTreeMap<String, Session> = [
        session("a1", "2026-12-01T01:00:00.000Z", "alice", "db-1", true),
        session("b2", "2026-12-01T02:00:00.000Z", "bob", "db-1", false),
        session("c3", "2026-12-01T03:00:00.000Z", "alice", "web-1", false),
    ]
    .into_iter()
    .collect();
    let files: BTreeMap<String, u64> = [
        ("a1".to_string(), 10),
        ("b2".to_string(), 20),
        ("x9".to_string(), 5),
    ]
    .into_iter()
    .collect();
    let ids = |f: ListFilter| {
        let mut out = Vec::new();
        write_list(&mut out, &sessions, &files, &f).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(ListFilter::default()), ["a1", "b2", "c3", "x9"]);
    let user = |u: &str| ListFilter {
        user: Some(u.into()),
        ..Default::default()
    };
    assert_eq!(ids(user("alice")), ["a1", "c3"]);
    assert_eq!(
        ids(ListFilter {
            host: Some("db-1".into()),
            ..Default::default()
        }),
        ["a1", "b2"]
    );
    assert_eq!(
        ids(ListFilter {
            since: Some("2026-12-01T01:30:00.000Z".into()),
            ..Default::default()
        }),
        ["b2", "c3"]
    );
    assert_eq!(
        ids(ListFilter {
            live: true,
            ..Default::default()
        }),
        ["b2", "c3"]
    );
    let mut out = Vec::new();
    write_list(&mut out, &sessions, &files, &ListFilter::default()).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("closed, exit 0") && text.contains("1m 30s") && text.contains("10 bytes"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("c3") && l.contains("live") && l.ends_with("missing")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("x9") && l.contains("not in the log")),
        "{text}"
    );
}
