//! `drawbridge session list|play|watch`.
//!
//! - `list` reads the audit log (`session.started` without `session.ended` = live;
//!   `session.refused` = refused, with its reason) and
//!   the recordings folder (recordings the log does not name are listed too, as such).
//! - `play ID` writes the recording's output to the terminal with its original timing,
//!   `--speed` times faster; pauses are cut to `--max-idle` seconds (5 by default: a
//!   session left open over lunch should not play for an hour; 0 keeps them).
//! - `watch ID` follows a live recording as it grows (polling the file every 200 ms and
//!   the log every second) until the log says the session ended.
//!
//! Exit codes: 0 success, 1 failure (no such session, unreadable files), 2 bad usage
//! (an id that is not a session id, `--speed 0`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use super::read::{Follow, Lines, for_each_line, parse_event, parse_header};
use super::sessions::{Session, sessions_in_log};
use super::text::escape_controls;
use super::{SessionId, recording_path};
use crate::cli::{SessionCommand, SessionFiles};
use crate::config::Config;

/// How often `watch` looks at the recording, and at the log.
const WATCH_POLL: Duration = Duration::from_millis(200);
const WATCH_LOG_EVERY: Duration = Duration::from_secs(1);

pub fn run(config: &Config, cmd: SessionCommand) -> anyhow::Result<ExitCode> {
    let paths = |f: &SessionFiles| {
        (
            f.log.clone().unwrap_or_else(|| config.audit_path()),
            f.recordings
                .clone()
                .unwrap_or_else(|| config.recording_dir()),
        )
    };
    match cmd {
        SessionCommand::List {
            user,
            host,
            since,
            live,
            files,
        } => {
            let (log, dir) = paths(&files);
            let since = since
                .map(|t| crate::audit::search::Filter::time(&t, SystemTime::now()))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let filter = ListFilter {
                user,
                host,
                since,
                live,
                here: config.state.replica.clone(),
            };
            // With shared state, every replica's chain (in PostgreSQL) unless a log file
            // is named.
            let sessions = if files.log.is_none() && config.state.postgres.is_some() {
                crate::state::sessions::sessions(config)?
            } else {
                let log_file =
                    std::fs::File::open(&log).with_context(|| format!("{}", log.display()))?;
                sessions_in_log(log_file).with_context(|| format!("{}", log.display()))?
            };
            let files = recordings_in(&dir);
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            match write_list(&mut out, &sessions, &files, &filter) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Play {
            id,
            speed,
            max_idle,
            markers,
            files,
        } => {
            let Some(id) = parse_id(&id) else {
                return Ok(ExitCode::from(2));
            };
            let (_, dir) = paths(&files);
            let path = recording_path(&dir, &id);
            let file = std::fs::File::open(&path)
                .with_context(|| format!("session {id}: {}", path.display()))?;
            let start = Instant::now();
            let mut sleep = |offset: Duration| {
                let until = start + offset;
                let now = Instant::now();
                if until > now {
                    std::thread::sleep(until - now);
                }
            };
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let mut err = std::io::stderr();
            let markers: Option<&mut dyn Write> = if markers { Some(&mut err) } else { None };
            match play(file, speed, max_idle, &mut out, markers, &mut sleep) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(PlayError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    Ok(ExitCode::from(1))
                }
            }
        }
        SessionCommand::Watch { id, markers, files } => {
            let Some(id) = parse_id(&id) else {
                return Ok(ExitCode::from(2));
            };
            let (log, dir) = paths(&files);
            watch(&log, &dir, &id, markers)
        }
    }
}

fn parse_id(s: &str) -> Option<SessionId> {
    match SessionId::parse(s) {
        Ok(id) => Some(id),
        Err(e) => {
            eprintln!(
                "drawbridge session: {:?}: {e}",
                escape_controls(crate::util::cut(s, 64))
            );
            None
        }
    }
}

/// `session list` filters.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub user: Option<String>,
    pub host: Option<String>,
    /// RFC 3339 with milliseconds, as records write `ts`.
    pub since: Option<String>,
    pub live: bool,
    /// This replica's name: sessions of other replicas have their recordings there.
    pub here: Option<String>,
}

impl ListFilter {
    fn keeps(&self, s: &Session) -> bool {
        self.user.as_ref().is_none_or(|u| *u == s.user)
            && self.host.as_ref().is_none_or(|h| *h == s.host)
            // Records write `ts` as RFC 3339 UTC with milliseconds: text order is time order.
            && self.since.as_ref().is_none_or(|t| !s.started.is_empty() && s.started >= *t)
            && (!self.live || s.live())
    }

    fn any(&self) -> bool {
        self.user.is_some() || self.host.is_some() || self.since.is_some() || self.live
    }
}

/// The recordings in `dir`: session id → size (files that are not `ID.cast` skipped).
pub fn recordings_in(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".cast")) else {
            continue;
        };
        if SessionId::parse(id).is_err() {
            continue;
        }
        if let Ok(m) = e.metadata()
            && m.is_file()
        {
            out.insert(id.to_string(), m.len());
        }
    }
    out
}

/// The `session list` table.
pub fn write_list(
    out: &mut dyn Write,
    sessions: &BTreeMap<String, Session>,
    files: &BTreeMap<String, u64>,
    filter: &ListFilter,
) -> std::io::Result<()> {
    let mut rows: Vec<[String; 8]> = Vec::new();
    let mut replicas: Vec<String> = Vec::new();
    let mut kept: Vec<&Session> = sessions.values().filter(|s| filter.keeps(s)).collect();
    kept.sort_by(|a, b| a.started.cmp(&b.started).then(a.id.cmp(&b.id)));
    for s in kept {
        let duration = s
            .ended
            .as_ref()
            .and_then(|e| e.duration_ms)
            .map(|ms| crate::util::format_duration(Duration::from_secs(ms / 1000)))
            .unwrap_or_else(|| "-".into());
        let elsewhere = !s.replica.is_empty() && filter.here.as_deref() != Some(&s.replica);
        let recording = match files.get(&s.id) {
            Some(size) => format!("{size} bytes"),
            None if elsewhere => format!("on {}", escape_controls(&s.replica)),
            None => "missing".into(),
        };
        replicas.push(escape_controls(&s.replica));
        let started = if s.started.is_empty() {
            "?".to_string()
        } else {
            s.started.clone()
        };
        rows.push([
            s.id.clone(),
            started,
            escape_controls(&s.user),
            escape_controls(&s.host),
            escape_controls(&s.login),
            escape_controls(&s.state()),
            duration,
            recording,
        ]);
    }
    if !filter.any() {
        for (id, size) in files.iter().filter(|(id, _)| !sessions.contains_key(*id)) {
            replicas.push("?".into());
            rows.push([
                id.clone(),
                "?".into(),
                "?".into(),
                "?".into(),
                "?".into(),
                "not in the log".into(),
                "-".into(),
                format!("{size} bytes"),
            ]);
        }
    }
    // A REPLICA column when the sessions come from the replicas' chains.
    let by_replica = sessions.values().any(|s| !s.replica.is_empty());
    let header = [
        "SESSION",
        "STARTED",
        "USER",
        "HOST",
        "LOGIN",
        "STATE",
        "DURATION",
        "RECORDING",
    ];
    let mut header: Vec<&str> = header.to_vec();
    let mut rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    if by_replica {
        header.insert(1, "REPLICA");
        for (r, name) in rows.iter_mut().zip(replicas) {
            r.insert(1, name);
        }
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.push('\n');
        s
    };
    out.write_all(line(header.clone()).as_bytes())?;
    for r in &rows {
        out.write_all(line(r.iter().map(String::as_str).collect()).as_bytes())?;
    }
    Ok(())
}

/// Why a recording could not be played.
#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    #[error("cannot read the recording: {0}")]
    Read(std::io::Error),
    #[error("not an asciicast v2 recording: {0}")]
    NotCast(String),
    #[error("cannot write: {0}")]
    Output(std::io::Error),
}

/// Writes the output events of a recording to `out` at their time (divided by `speed`,
/// each pause cut to `max_idle` seconds unless it is 0); `sleep_until(offset)` waits
/// until `offset` after the start. Markers go to `markers` when given.
pub fn play(
    reader: impl Read,
    speed: f64,
    max_idle: f64,
    out: &mut dyn Write,
    mut markers: Option<&mut dyn Write>,
    sleep_until: &mut dyn FnMut(Duration),
) -> Result<(), PlayError> {
    let mut first = true;
    let mut failure: Option<PlayError> = None;
    let mut last = 0.0f64;
    let mut at = 0.0f64;
    for_each_line(reader, |line| {
        if first {
            first = false;
            if let Err(e) = parse_header(line) {
                failure = Some(PlayError::NotCast(e));
                return ControlFlow::Break(());
            }
            return ControlFlow::Continue(());
        }
        let Ok(e) = parse_event(line) else {
            return ControlFlow::Continue(());
        };
        let mut gap = (e.time - last).max(0.0) / speed;
        if max_idle > 0.0 {
            gap = gap.min(max_idle);
        }
        last = last.max(e.time);
        at += gap;
        let written = match e.kind.as_str() {
            "o" => {
                sleep_until(Duration::from_secs_f64(at));
                out.write_all(e.data.as_bytes()).and_then(|()| out.flush())
            }
            "m" => match markers.as_mut() {
                Some(m) => {
                    sleep_until(Duration::from_secs_f64(at));
                    writeln!(m, "[{}]", escape_controls(&e.data))
                }
                None => Ok(()),
            },
            _ => Ok(()),
        };
        if let Err(err) = written {
            failure = Some(PlayError::Output(err));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })
    .map_err(PlayError::Read)?;
    if first {
        return Err(PlayError::NotCast("empty file".into()));
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Reads the lines appended to the audit log since the last call, and says whether one
/// of them ends session `id` (`session.ended`, or `session.refused` for one refused after
/// its recording began).
struct LogTail {
    file: std::fs::File,
    lines: Lines,
}

impl LogTail {
    fn ended(&mut self, id: &SessionId) -> std::io::Result<bool> {
        let needle = format!("\"session\":\"{}\"", id.as_str());
        let mut buf = vec![0u8; 64 * 1024];
        let mut ended = false;
        loop {
            let n = match self.file.read(&mut buf) {
                Ok(0) => return Ok(ended),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.lines.feed(&buf[..n], |l| {
                let text = String::from_utf8_lossy(l);
                if text.contains(&needle)
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                    && matches!(
                        v.get("event").and_then(|e| e.as_str()),
                        Some("session.ended" | "session.refused")
                    )
                    && v.get("session").and_then(|e| e.as_str()) == Some(id.as_str())
                {
                    ended = true;
                }
            });
        }
    }
}

fn watch(log: &Path, dir: &Path, id: &SessionId, markers: bool) -> anyhow::Result<ExitCode> {
    let path: PathBuf = recording_path(dir, id);
    let mut tail = LogTail {
        file: std::fs::File::open(log).with_context(|| format!("{}", log.display()))?,
        lines: Lines::default(),
    };
    let mut follow = match Follow::open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("session {id}: {}: {e}", path.display());
            return Ok(ExitCode::from(1));
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut last_log = Instant::now() - WATCH_LOG_EVERY;
    let mut ended = false;
    loop {
        if last_log.elapsed() >= WATCH_LOG_EVERY {
            last_log = Instant::now();
            ended = ended
                || tail
                    .ended(id)
                    .with_context(|| format!("{}", log.display()))?;
        }
        let events = match follow.poll() {
            Ok(ev) => ev,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return Ok(ExitCode::from(1));
            }
        };
        let read_some = !events.is_empty();
        for e in events {
            let written = match e.kind.as_str() {
                "o" => out.write_all(e.data.as_bytes()).and_then(|()| out.flush()),
                "m" if markers => writeln!(std::io::stderr(), "[{}]", escape_controls(&e.data)),
                _ => Ok(()),
            };
            match written {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Ended, and the recording read to its end (the last poll found nothing new).
        if ended && !read_some {
            return Ok(ExitCode::SUCCESS);
        }
        if !read_some {
            std::thread::sleep(WATCH_POLL);
        }
    }
}

#[cfg(test)]
#[path = "cmd_tests.rs"]
mod tests;
