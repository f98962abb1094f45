//! Reading recordings and the session records of the audit log back: bounded lines (a
//! hostile or damaged file cannot make a reader hold more than [`MAX_LINE`]), asciicast
//! header and events, and a reader that follows a file as it grows (`session watch`).

use std::io::Read;
use std::path::Path;

use serde_json::Value;

/// Longest line read; longer ones are skipped (and counted).
pub const MAX_LINE: usize = 4 * 1024 * 1024;

/// Splits bytes into lines of at most [`MAX_LINE`] bytes; keeps a partial last line for
/// the next bytes.
#[derive(Debug, Default)]
pub struct Lines {
    partial: Vec<u8>,
    /// The current line is over the limit: drop it up to its newline.
    skipping: bool,
    /// Lines dropped for their length.
    pub skipped: u64,
}

impl Lines {
    /// Appends `bytes`; calls `line` for each complete line (without its newline).
    pub fn feed(&mut self, mut bytes: &[u8], mut line: impl FnMut(&[u8])) {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            let (head, rest) = bytes.split_at(nl);
            if self.skipping {
                self.skipping = false;
            } else if self.partial.len() + head.len() > MAX_LINE {
                self.skipped += 1;
            } else if self.partial.is_empty() {
                line(head);
            } else {
                self.partial.extend_from_slice(head);
                line(&self.partial);
            }
            self.partial.clear();
            bytes = &rest[1..];
        }
        if self.skipping {
            return;
        }
        if self.partial.len() + bytes.len() > MAX_LINE {
            self.skipped += 1;
            self.skipping = true;
            self.partial = Vec::new();
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    /// A last line with no newline (a file read to its end).
    pub fn finish(&mut self, mut line: impl FnMut(&[u8])) {
        if !self.skipping && !self.partial.is_empty() {
            line(&self.partial);
        }
        self.partial.clear();
        self.skipping = false;
    }
}

/// Reads `reader` to its end in chunks, calling `line` for each line.
pub fn for_each_line(
    mut reader: impl Read,
    mut line: impl FnMut(&[u8]) -> std::ops::ControlFlow<()>,
) -> std::io::Result<u64> {
    let mut lines = Lines::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut stop = false;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        lines.feed(&buf[..n], |l| {
            if !stop && line(l).is_break() {
                stop = true;
            }
        });
        if stop {
            return Ok(lines.skipped);
        }
    }
    lines.finish(|l| {
        if !stop {
            let _ = line(l);
        }
    });
    Ok(lines.skipped)
}

/// An asciicast v2 header.
#[derive(Debug, Clone, PartialEq)]
pub struct CastHeader {
    pub width: u64,
    pub height: u64,
    pub timestamp: Option<u64>,
    pub title: Option<String>,
    pub command: Option<String>,
}

/// One event: seconds since the start, kind (`o`, `i`, `r`, `m`), text.
#[derive(Debug, Clone, PartialEq)]
pub struct CastEvent {
    pub time: f64,
    pub kind: String,
    pub data: String,
}

/// Parses the header line.
pub fn parse_header(line: &[u8]) -> Result<CastHeader, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("header: {e}"))?;
    if v.get("version").and_then(Value::as_u64) != Some(2) {
        return Err("header: not asciicast version 2".into());
    }
    let num = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("header: no {k}"))
    };
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    Ok(CastHeader {
        width: num("width")?,
        height: num("height")?,
        timestamp: v.get("timestamp").and_then(Value::as_u64),
        title: text("title"),
        command: text("command"),
    })
}

/// Parses an event line `[time, "kind", "text"]`.
pub fn parse_event(line: &[u8]) -> Result<CastEvent, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("event: {e}"))?;
    let (Some(time), Some(kind), Some(data)) = (
        v.get(0).and_then(Value::as_f64),
        v.get(1).and_then(Value::as_str),
        v.get(2).and_then(Value::as_str),
    ) else {
        return Err("event: not [time, kind, text]".into());
    };
    if !time.is_finite() || time < 0.0 {
        return Err("event: time is not a positive number".into());
    }
    Ok(CastEvent {
        time,
        kind: kind.to_string(),
        data: data.to_string(),
    })
}

/// Follows a recording as it grows: each call reads what was appended since the last.
#[derive(Debug)]
pub struct Follow {
    file: std::fs::File,
    lines: Lines,
    header_seen: bool,
    pub header: Option<CastHeader>,
}

impl Follow {
    pub fn open(path: &Path) -> std::io::Result<Follow> {
        Ok(Follow {
            file: std::fs::File::open(path)?,
            lines: Lines::default(),
            header_seen: false,
            header: None,
        })
    }

    /// The events appended since the last call (lines that do not parse are skipped).
    pub fn poll(&mut self) -> Result<Vec<CastEvent>, String> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        let mut err = None;
        loop {
            let n = match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.to_string()),
            };
            let header_seen = &mut self.header_seen;
            let header = &mut self.header;
            self.lines.feed(&buf[..n], |l| {
                if !*header_seen {
                    *header_seen = true;
                    match parse_header(l) {
                        Ok(h) => *header = Some(h),
                        Err(e) => err = Some(e),
                    }
                } else if let Ok(e) = parse_event(l) {
                    out.push(e);
                }
            });
            if let Some(e) = err {
                return Err(e);
            }
            if out.len() > 10_000 {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_whatever_the_chunks_and_long_ones_skipped() {
        let text = b"one\ntwo\n\nthree";
        for size in 1..text.len() {
            let mut l = Lines::default();
            let mut got = Vec::new();
            for c in text.chunks(size) {
                l.feed(c, |x| got.push(String::from_utf8_lossy(x).to_string()));
            }
            l.finish(|x| got.push(String::from_utf8_lossy(x).to_string()));
            assert_eq!(got, ["one", "two", "", "three"], "{size}");
        }
        let mut l = Lines::default();
        let mut got = Vec::new();
        let long = vec![b'x'; MAX_LINE + 10];
        l.feed(b"a\n", |x| got.push(x.len()));
        for c in long.chunks(1 << 20) {
            l.feed(c, |x| got.push(x.len()));
        }
        l.feed(b"\nb\n", |x| got.push(x.len()));
        assert_eq!(got, [1, 1]);
        assert_eq!(l.skipped, 1);
        assert!(l.partial.capacity() <= MAX_LINE + (1 << 20));
    }

    #[test]
    fn header_and_events_parse_and_garbage_is_refused() {
        let h =
            parse_header(br#"{"version":2,"width":80,"height":24,"timestamp":1,"command":"ls"}"#)
                .unwrap();
        assert_eq!(
            (h.width, h.height, h.command.as_deref()),
            (80, 24, Some("ls"))
        );
        assert!(parse_header(br#"{"version":1,"width":80,"height":24}"#).is_err());
        assert!(parse_header(b"[").is_err());
        let e = parse_event(br#"[0.5, "o", "hi"]"#).unwrap();
        assert_eq!((e.time, e.kind.as_str(), e.data.as_str()), (0.5, "o", "hi"));
        assert!(parse_event(br#"[-1, "o", "hi"]"#).is_err());
        assert!(parse_event(br#"["x", "o", "hi"]"#).is_err());
        assert!(parse_event(br#"{}"#).is_err());
    }
}
