//! [`LiveRecording`]: a [`Recorder`] shared by a session's relay tasks, with the timer that
//! writes its output to the file within about a second, and a signal when it fails (so an
//! idle session is cut too, not only the next write).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;

use super::{Recorder, RecordingError, RecordingSummary};

/// How often the timer looks at the recorder ([`Recorder::tick`] writes only when the last
/// write is a second old).
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug)]
struct State {
    recorder: Option<Recorder>,
    path: std::path::PathBuf,
}

/// A recording in progress; cheap to clone. Every method fails once the recording has
/// failed; [`LiveRecording::failed`] says so as soon as it happens.
#[derive(Debug, Clone)]
pub struct LiveRecording {
    state: Arc<Mutex<State>>,
    failure: watch::Sender<Option<String>>,
}

impl LiveRecording {
    /// Takes over `recorder` and starts its timer (on the current tokio runtime). The
    /// timer stops when the recording is finished or every handle is dropped.
    pub fn start(recorder: Recorder) -> LiveRecording {
        let path = recorder.path().to_path_buf();
        let live = LiveRecording {
            state: Arc::new(Mutex::new(State {
                recorder: Some(recorder),
                path,
            })),
            failure: watch::channel(None).0,
        };
        let weak: Weak<Mutex<State>> = Arc::downgrade(&live.state);
        let failure = live.failure.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(state) = weak.upgrade() else { return };
                let result = match state.lock() {
                    Ok(mut s) => match s.recorder.as_mut() {
                        Some(r) => r.tick(),
                        None => return,
                    },
                    Err(_) => return,
                };
                if let Err(e) = result {
                    failure.send_replace(Some(e.to_string()));
                    return;
                }
            }
        });
        live
    }

    /// Resolves (to the error text) once the recording has failed: cut the session then.
    pub fn failed(&self) -> watch::Receiver<Option<String>> {
        self.failure.subscribe()
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Recorder) -> Result<T, RecordingError>,
    ) -> Result<T, RecordingError> {
        let mut s = self.state.lock().map_err(|_| RecordingError::Failed {
            path: std::path::PathBuf::new(),
            what: "a writer panicked".into(),
        })?;
        let path = s.path.clone();
        let Some(r) = s.recorder.as_mut() else {
            return Err(RecordingError::Failed {
                path,
                what: "already finished".into(),
            });
        };
        let result = f(r);
        if let Err(e) = &result {
            self.failure.send_replace(Some(e.to_string()));
        }
        result
    }

    pub fn output(&self, bytes: &[u8]) -> Result<(), RecordingError> {
        self.with(|r| r.output(bytes))
    }

    pub fn input(&self, bytes: &[u8]) -> Result<(), RecordingError> {
        self.with(|r| r.input(bytes))
    }

    pub fn resize(&self, cols: u32, rows: u32) -> Result<(), RecordingError> {
        self.with(|r| r.resize(cols, rows))
    }

    pub fn marker(&self, label: &str) -> Result<(), RecordingError> {
        self.with(|r| r.marker(label))
    }

    /// Ends the recording (see [`Recorder::finish`]; its `fsync` runs off the runtime's
    /// threads). A second call fails.
    pub async fn finish(&self, exit: Option<i32>) -> Result<RecordingSummary, RecordingError> {
        let (recorder, path) = {
            let mut s = self.state.lock().map_err(|_| RecordingError::Failed {
                path: std::path::PathBuf::new(),
                what: "a writer panicked".into(),
            })?;
            (s.recorder.take(), s.path.clone())
        };
        let Some(r) = recorder else {
            return Err(RecordingError::Failed {
                path,
                what: "already finished".into(),
            });
        };
        let joined = tokio::task::spawn_blocking(move || r.finish(exit)).await;
        let result = joined.unwrap_or_else(|e| {
            Err(RecordingError::Failed {
                path,
                what: format!("finishing: {e}"),
            })
        });
        if let Err(e) = &result {
            self.failure.send_replace(Some(e.to_string()));
        }
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::recording::{CastMeta, SessionId};

    fn recorder(dir: &std::path::Path, id: &str) -> Recorder {
        Recorder::create(dir, &SessionId::parse(id).unwrap(), CastMeta::default()).unwrap()
    }

    #[tokio::test]
    async fn output_reaches_the_file_by_the_timer_and_finish_ends_it() {
        let d = tempfile::tempdir().unwrap();
        let live = LiveRecording::start(recorder(d.path(), "a"));
        live.output(b"quiet after this").unwrap();
        let path = d.path().join("a.cast");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while !std::fs::read_to_string(&path)
            .unwrap()
            .contains("quiet after this")
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not written within 3 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let s = live.finish(Some(0)).await.unwrap();
        assert!(s.size > 0);
        assert!(live.output(b"late").is_err());
        assert!(live.finish(None).await.is_err());
    }

    #[tokio::test]
    async fn a_failure_is_signalled_even_when_the_session_is_idle() {
        let d = tempfile::tempdir().unwrap();
        let mut r = recorder(d.path(), "b");
        r.break_for_test();
        let live = LiveRecording::start(r);
        let mut failed = live.failed();
        live.output(b"to a full disk").unwrap();
        // No more calls: the timer's write fails and says so.
        tokio::time::timeout(Duration::from_secs(3), failed.wait_for(Option::is_some))
            .await
            .expect("no failure signalled within 3 s")
            .unwrap();
        assert!(live.output(b"more").is_err());
    }
}
