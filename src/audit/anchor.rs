//! `audit verify --checkpoints`: the hash chain, plus the signed checkpoints that anchor
//! the log's end ([`super::checkpoint`]).
//!
//! What it checks, in one streaming pass over the log:
//!
//! 1. every line of the checkpoints file parses, is signed by one of the given keys, and
//!    names a later `seq` than the line before it;
//! 2. the chain itself, as [`super::verify`];
//! 3. for every checkpoint `(seq, hash)`: record `seq` has that hash (else the log was
//!    rewritten at or before it, consistently re-chained or not), and record `seq + 1` is
//!    that checkpoint's own `audit.checkpoint` record;
//! 4. every `audit.checkpoint` record in the log is signed by a given key and signs the
//!    record just before it (a re-chained log whose checkpoint records were carried over
//!    fails here even without the checkpoints file);
//! 5. the log reaches the last checkpoint's record: if it ends before, the records in
//!    between were cut, and are named.
//!
//! Records after the last checkpoint are not anchored (at most a minute of them while the
//! service runs): the summary says how many.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::Value;
use ssh_key::PublicKey;

use super::checkpoint::{self, Checkpoint};
use super::record::{self, VerifyFailure};

/// A log whose chain and checkpoints verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorSummary {
    pub records: u64,
    pub last_hash: String,
    /// Checkpoints in the checkpoints file (all verified).
    pub checkpoints: u64,
    /// The last checkpoint of the file.
    pub last: Checkpoint,
    /// `audit.checkpoint` records in the log (all verified).
    pub in_log: u64,
}

impl AnchorSummary {
    /// Records after the last checkpoint's own record: not anchored yet.
    pub fn unanchored(&self) -> u64 {
        self.records.saturating_sub(self.last.seq.saturating_add(1))
    }
}

/// Where the first problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorFailure {
    /// The log: unreadable, or its first bad record (1-based line).
    Log(VerifyFailure),
    /// The checkpoints file: unreadable (`line` 0) or its first bad line.
    Checkpoints { line: u64, what: String },
    /// The log ends before what the checkpoints vouch for.
    Cut { what: String },
}

impl fmt::Display for AnchorFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnchorFailure::Log(e) => write!(f, "{e}"),
            AnchorFailure::Checkpoints { line: 0, what } => write!(f, "{what}"),
            AnchorFailure::Checkpoints { line, what } => write!(f, "{line}: {what}"),
            AnchorFailure::Cut { what } => write!(f, "{what}"),
        }
    }
}

/// Longest checkpoints line read (a checkpoint is a few hundred bytes).
const MAX_CHECKPOINT_LINE: usize = 16 * 1024;

/// Reads and checks the checkpoints file: each line a checkpoint signed by one of `keys`,
/// with increasing `seq`.
pub fn read_checkpoints(path: &Path, keys: &[PublicKey]) -> Result<Vec<Checkpoint>, AnchorFailure> {
    let io = |e: std::io::Error| AnchorFailure::Checkpoints {
        line: 0,
        what: e.to_string(),
    };
    let mut reader = BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut out: Vec<Checkpoint> = Vec::new();
    let mut buf = Vec::with_capacity(1024);
    let mut line: u64 = 0;
    loop {
        buf.clear();
        let n = Read::take(&mut reader, MAX_CHECKPOINT_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(io)?;
        if n == 0 {
            break;
        }
        line += 1;
        let bad = |what: String| AnchorFailure::Checkpoints { line, what };
        if buf.last() != Some(&b'\n') {
            return Err(bad(if buf.len() > MAX_CHECKPOINT_LINE {
                "line too long for a checkpoint".into()
            } else {
                "incomplete line at the end of the file (no newline)".into()
            }));
        }
        buf.pop();
        let cp: Checkpoint =
            serde_json::from_slice(&buf).map_err(|e| bad(format!("not a checkpoint: {e}")))?;
        cp.verify(keys).map_err(&bad)?;
        if let Some(prev) = out.last()
            && cp.seq <= prev.seq
        {
            return Err(bad(format!(
                "checkpoint at seq {} after one at seq {}: checkpoints only move forward (is this the checkpoints file of another log?)",
                cp.seq, prev.seq
            )));
        }
        out.push(cp);
    }
    if out.is_empty() {
        return Err(AnchorFailure::Checkpoints {
            line: 0,
            what: "holds no checkpoint (drawbridge serve writes one at every start)".into(),
        });
    }
    Ok(out)
}

/// Checks the log at `log` against the checkpoints at `checkpoints`, signed by one of
/// `keys`. See the module docs.
pub fn verify_anchored(
    log: &Path,
    checkpoints: &Path,
    keys: &[PublicKey],
) -> Result<AnchorSummary, AnchorFailure> {
    let cps = read_checkpoints(checkpoints, keys)?;
    let file = std::fs::File::open(log)
        .map_err(|e| AnchorFailure::Log(VerifyFailure::Io(e.to_string())))?;
    verify_reader_anchored(BufReader::new(file), &cps, keys)
}

/// [`verify_anchored`] over a reader and checkpoints already read.
pub fn verify_reader_anchored(
    reader: impl BufRead,
    cps: &[Checkpoint],
    keys: &[PublicKey],
) -> Result<AnchorSummary, AnchorFailure> {
    let Some(last) = cps.last().cloned() else {
        return Err(AnchorFailure::Checkpoints {
            line: 0,
            what: "holds no checkpoint".into(),
        });
    };
    let by_seq: HashMap<u64, &Checkpoint> = cps.iter().map(|c| (c.seq, c)).collect();
    let mut matched: Option<u64> = None;
    let mut in_log: u64 = 0;
    let summary = record::verify_reader_with(reader, |rec, map| {
        let replica = map.get("replica").and_then(Value::as_str).unwrap_or("");
        if let Some(cp) = by_seq.get(&rec.seq) {
            if cp.hash != rec.hash || cp.replica != replica {
                let since = match matched {
                    Some(s) => format!("after seq {s} (the last checkpoint that matched)"),
                    None => "from the start (no earlier checkpoint matched)".to_string(),
                };
                return Err(format!(
                    "seq {} is not the record the signed checkpoint of {} vouches for (hash {}, replica {}): the log was rewritten {since}, at or before seq {}",
                    rec.seq, cp.ts, cp.hash, cp.replica, rec.seq
                ));
            }
            matched = Some(rec.seq);
        }
        let event = map.get("event").and_then(Value::as_str).unwrap_or("");
        if let Some(cp) = rec.seq.checked_sub(1).and_then(|s| by_seq.get(&s)) {
            let own = map
                .get("checkpoint")
                .and_then(|v| serde_json::from_value::<Checkpoint>(v.clone()).ok());
            if event != checkpoint::EVENT || own.as_ref() != Some(*cp) {
                return Err(format!(
                    "seq {} should be the audit.checkpoint record of the signed checkpoint at seq {} ({}), but is {event:?}: the log was rewritten after seq {}",
                    rec.seq, cp.seq, cp.ts, cp.seq
                ));
            }
        }
        if event == checkpoint::EVENT {
            let cp: Checkpoint = map
                .get("checkpoint")
                .cloned()
                .ok_or_else(|| "an audit.checkpoint record without its checkpoint".to_string())
                .and_then(|v| {
                    serde_json::from_value(v)
                        .map_err(|e| format!("an audit.checkpoint record whose checkpoint is malformed: {e}"))
                })?;
            cp.verify(keys)
                .map_err(|e| format!("the audit.checkpoint record's checkpoint: {e}"))?;
            if cp.seq.saturating_add(1) != rec.seq || cp.hash != rec.prev || cp.replica != replica
            {
                return Err(format!(
                    "the audit.checkpoint record signs seq {} hash {}, not the record before it (seq {}, hash {}): the log was rewritten",
                    cp.seq,
                    cp.hash,
                    rec.seq.saturating_sub(1),
                    rec.prev
                ));
            }
            in_log += 1;
        }
        Ok(())
    })
    .map_err(AnchorFailure::Log)?;
    // Every record has seq = its line number, so the count is the last seq.
    let end = summary.records;
    let needed = last.seq.saturating_add(1);
    if end < needed {
        let first = end.saturating_add(1);
        let range = if first == needed {
            format!("record {needed} is")
        } else {
            format!("records {first}–{needed} are")
        };
        return Err(AnchorFailure::Cut {
            what: format!(
                "{range} missing after seq {end}, where the log ends: the signed checkpoint of {} vouches for seq {} (record {needed} is its own audit.checkpoint record); the end of the log was cut",
                last.ts, last.seq
            ),
        });
    }
    Ok(AnchorSummary {
        records: summary.records,
        last_hash: summary.last_hash,
        checkpoints: cps.len() as u64,
        last,
        in_log,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::audit::{Audit, CheckpointKey, Event};
    use std::sync::Arc;

    fn key(dir: &Path) -> (Arc<CheckpointKey>, PublicKey) {
        let k = CheckpointKey::load_or_create(dir).unwrap();
        let public = k.public_key().clone();
        (Arc::new(k), public)
    }

    /// The writer signs the head it appends after, however many records race with it:
    /// the checkpoint's record is always the next one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_record_follows_the_head_it_signs() {
        let dir = tempfile::tempdir().unwrap();
        let (k, public) = key(&dir.path().join("ca"));
        let log = dir.path().join("audit.log");
        let audit = Audit::open(&log, "r1").unwrap();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let a = audit.clone();
            tasks.push(tokio::spawn(async move {
                a.record_raw(Event::new("test.event").with("i", i))
                    .await
                    .unwrap();
            }));
        }
        let mut cps = Vec::new();
        for _ in 0..4 {
            cps.push(audit.checkpoint(Arc::clone(&k)).await.unwrap());
        }
        for t in tasks {
            t.await.unwrap();
        }
        let last = audit.checkpoint(Arc::clone(&k)).await.unwrap();
        cps.push(last.clone());
        drop(audit);
        let s = verify_reader_anchored(
            BufReader::new(std::fs::File::open(&log).unwrap()),
            &cps,
            std::slice::from_ref(&public),
        )
        .unwrap();
        assert_eq!(s.in_log, 5);
        assert_eq!(s.records, last.seq + 1);
        assert_eq!(s.unanchored(), 0);
    }

    /// Cutting only the final checkpoint record is named too.
    #[tokio::test]
    async fn cutting_the_last_checkpoint_record_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (k, public) = key(&dir.path().join("ca"));
        let log = dir.path().join("audit.log");
        let audit = Audit::open(&log, "r1").unwrap();
        audit.record_raw(Event::new("test.event")).await.unwrap();
        let cp = audit.checkpoint(k).await.unwrap();
        drop(audit);
        let text = std::fs::read_to_string(&log).unwrap();
        let first = text.lines().next().unwrap().to_string() + "\n";
        let e = verify_reader_anchored(first.as_bytes(), &[cp], &[public]).unwrap_err();
        assert_eq!(
            e.to_string().split(':').next().unwrap(),
            "record 2 is missing after seq 1, where the log ends"
        );
    }

    /// The minute timer's rule: a checkpoint only when something but the last
    /// checkpoint's own record was written since; each lands in the file too.
    #[tokio::test]
    async fn an_idle_log_gets_no_new_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let k = CheckpointKey::load_or_create(&dir.path().join("ca")).unwrap();
        let public = k.public_key().clone();
        let log = dir.path().join("audit.log");
        let audit = Audit::open(&log, "r1").unwrap();
        let cps = crate::audit::Checkpointer::new(audit.clone(), k, &log).unwrap();
        assert!(cps.write_if_new().await.unwrap().is_some(), "the first one");
        assert!(cps.write_if_new().await.unwrap().is_none(), "idle");
        audit.record_raw(Event::new("test.event")).await.unwrap();
        let cp = cps.write_if_new().await.unwrap().unwrap();
        assert_eq!(cp.seq, 2, "signs the test record");
        let s = verify_anchored(&log, &checkpoint::checkpoints_path(&log), &[public]).unwrap();
        assert_eq!((s.checkpoints, s.in_log, s.records), (2, 2, 3));
    }

    #[test]
    fn the_key_is_private_and_a_lone_public_half_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let (_, first) = key(&ca);
        let mode = std::fs::metadata(ca.join(checkpoint::KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (_, again) = key(&ca);
        assert_eq!(first, again, "loaded, not made again");
        std::fs::remove_file(ca.join(checkpoint::KEY_FILE)).unwrap();
        let e = CheckpointKey::load_or_create(&ca).unwrap_err().to_string();
        assert!(e.contains("is missing but"), "{e}");
    }

    #[test]
    fn a_checkpoint_signed_by_another_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (k, _) = key(&dir.path().join("a"));
        let (_, other) = key(&dir.path().join("b"));
        let cp = k
            .sign("r1", 3, record::GENESIS, "2026-01-01T00:00:00.000Z")
            .unwrap();
        let e = cp.verify(&[other]).unwrap_err();
        assert!(e.starts_with("signed by SHA256:"), "{e}");
        let mut edited = cp.clone();
        edited.seq = 2;
        let e = edited.verify(&[k.public_key().clone()]).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
    }
}
