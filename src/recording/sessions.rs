//! The recorded sessions an audit log names: `session.started`, `session.ended` and
//! `session.refused` records joined by session id, for `session list|watch` and `audit verify`.

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::ControlFlow;

use serde_json::Value;

use super::SessionId;
use super::read::for_each_line;

/// What `session.ended` says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ended {
    /// The log line of the record (1-based).
    pub line: u64,
    pub ts: String,
    pub end: String,
    pub exit_status: Option<u64>,
    pub exit_signal: Option<String>,
    pub duration_ms: Option<u64>,
    pub size: Option<u64>,
    pub sha256: Option<String>,
}

/// One recorded session as the log tells it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Session {
    pub id: String,
    /// `ts` of `session.started` (empty when the log holds only its end).
    pub started: String,
    pub user: String,
    pub host: String,
    pub login: String,
    pub ended: Option<Ended>,
    /// The replica whose chain names it (empty when read from a log file).
    pub replica: String,
}

impl Session {
    /// Started and not ended: live (or the service stopped without ending it).
    pub fn live(&self) -> bool {
        self.ended.is_none()
    }

    /// The state column of `session list`.
    pub fn state(&self) -> String {
        match &self.ended {
            None => "live".into(),
            Some(e) => {
                let mut s = e.end.clone();
                if let Some(code) = e.exit_status {
                    s.push_str(&format!(", exit {code}"));
                }
                if let Some(sig) = &e.exit_signal {
                    s.push_str(&format!(", signal {sig}"));
                }
                s
            }
        }
    }
}

/// Every session the log names, by id (ids that are not valid session ids are skipped:
/// they could not name a recording).
pub fn sessions_in_log(log: impl Read) -> std::io::Result<BTreeMap<String, Session>> {
    let mut out: BTreeMap<String, Session> = BTreeMap::new();
    let mut n = 0u64;
    for_each_line(log, |line| {
        n += 1;
        // Cheap test before parsing: most records are not about sessions.
        if !line.windows(9).any(|w| w == b"\"session.") {
            return ControlFlow::Continue(());
        }
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return ControlFlow::Continue(());
        };
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let event = text("event");
        if !matches!(
            event.as_str(),
            "session.started" | "session.ended" | "session.refused"
        ) {
            return ControlFlow::Continue(());
        }
        let id = text("session");
        if SessionId::parse(&id).is_err() {
            return ControlFlow::Continue(());
        }
        let s = out.entry(id.clone()).or_insert_with(|| Session {
            id,
            ..Session::default()
        });
        if s.user.is_empty() {
            s.user = text("key_id");
            s.host = text("target");
            s.login = text("login");
        }
        if event == "session.started" {
            s.started = text("ts");
        } else if event == "session.refused" {
            // Refused after its channel opened: it never ran (or was cut before the target).
            if s.started.is_empty() {
                s.started = text("ts");
            }
            s.ended = Some(Ended {
                line: n,
                ts: text("ts"),
                end: format!("refused ({})", text("reason")),
                ..Ended::default()
            });
        } else {
            s.ended = Some(Ended {
                line: n,
                ts: text("ts"),
                end: text("end"),
                exit_status: v.get("exit_status").and_then(Value::as_u64),
                exit_signal: v
                    .get("exit_signal")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                duration_ms: v.get("duration_ms").and_then(Value::as_u64),
                size: v.get("recording_size").and_then(Value::as_u64),
                sha256: v
                    .get("recording_sha256")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            });
        }
        ControlFlow::Continue(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn started_and_ended_records_are_joined_by_session() {
        let log = concat!(
            r#"{"seq":1,"event":"session.started","ts":"2026-12-01T01:00:00.000Z","session":"a1","key_id":"alice","target":"db-1","login":"root"}"#,
            "\n",
            r#"{"seq":2,"event":"forward.opened","session":"zz"}"#,
            "\n",
            r#"{"seq":3,"event":"session.started","ts":"2026-12-01T02:00:00.000Z","session":"b2","key_id":"bob","target":"web-1","login":"deploy"}"#,
            "\n",
            r#"{"seq":4,"event":"session.ended","ts":"2026-12-01T01:05:00.000Z","session":"a1","key_id":"alice","target":"db-1","login":"root","end":"closed","exit_status":0,"duration_ms":300000,"recording_size":10,"recording_sha256":"ab"}"#,
            "\n",
            r#"{"seq":5,"event":"session.started","session":"../etc","key_id":"eve"}"#,
            "\n",
            "not json \"session.started\"\n",
            r#"{"seq":6,"event":"session.refused","ts":"2026-12-01T04:00:00.000Z","session":"c3","key_id":"carol","target":"db-1","reason":"recording-unavailable"}"#,
            "\n",
        );
        let s = sessions_in_log(log.as_bytes()).unwrap();
        assert_eq!(s.keys().collect::<Vec<_>>(), ["a1", "b2", "c3"]);
        assert_eq!(s["c3"].state(), "refused (recording-unavailable)");
        assert_eq!(s["c3"].started, "2026-12-01T04:00:00.000Z");
        assert!(s["c3"].ended.as_ref().unwrap().sha256.is_none());
        let a = &s["a1"];
        assert_eq!(
            (a.user.as_str(), a.host.as_str(), a.login.as_str()),
            ("alice", "db-1", "root")
        );
        assert!(!a.live());
        assert_eq!(a.state(), "closed, exit 0");
        let e = a.ended.as_ref().unwrap();
        assert_eq!(
            (e.line, e.size, e.sha256.as_deref()),
            (4, Some(10), Some("ab"))
        );
        assert!(s["b2"].live());
        assert_eq!(s["b2"].state(), "live");
    }
}
