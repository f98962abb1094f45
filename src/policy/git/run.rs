//! Running `git` with a bound on its time and on what it prints: the fetch talks to a
//! remote the service does not control, and a hung or chatty `git` must not hang or fill
//! the service.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How a bounded `git` run went wrong.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot run git: {0} (is git installed?)")]
    Spawn(std::io::Error),
    #[error("`git {what}` did not finish within {secs} s; stopped")]
    Timeout { what: String, secs: u64 },
    #[error("`git {what}` printed more than {limit} bytes; stopped")]
    TooMuch { what: String, limit: usize },
    #[error("`git {what}` failed: {stderr}")]
    Failed { what: String, stderr: String },
}

/// What a finished `git` printed, and whether it succeeded.
pub struct Output {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Most of a failing `git`'s stderr kept for a message.
const STDERR_KEPT: usize = 4096;

/// A `git` command for the repository `git_dir` (a bare clone or a `.git` folder), with
/// no hook, no prompt and none of the caller's `GIT_*` location variables.
pub fn git(git_dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-c").arg("core.hooksPath=/dev/null");
    c.arg("-c").arg("core.fsmonitor=false");
    c.arg("--git-dir").arg(git_dir);
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_PREFIX",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_NAMESPACE",
    ] {
        c.env_remove(var);
    }
    c.env("GIT_TERMINAL_PROMPT", "0");
    c.env("GIT_LITERAL_PATHSPECS", "1");
    c
}

/// Runs `cmd` with `input` on its stdin, stops it after `timeout` and when it prints more
/// than `max_stdout` bytes. A non-zero exit is not an error here (see [`checked`]).
///
/// `git` runs in a process group of its own, and stopping it kills the whole group: a
/// `fetch` runs helpers (`ssh`, `git-remote-https`, `index-pack`) that would otherwise
/// live on and hold its pipes open. What it printed is awaited until the deadline, never
/// longer (a helper that left the group cannot hold the caller).
pub fn run(
    mut cmd: Command,
    what: &str,
    input: Option<Vec<u8>>,
    timeout: Duration,
    max_stdout: usize,
) -> Result<Output, RunError> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        std::thread::spawn(move || {
            use std::io::Write;
            // A `git` that stops reading early fails on its own; nothing to add here.
            let _ = stdin.write_all(&bytes);
        });
    }
    let over = Arc::new(AtomicBool::new(false));
    let out = child
        .stdout
        .take()
        .map(|s| reader(s, max_stdout + 1, Some(over.clone())));
    let err = child.stderr.take().map(|s| reader(s, STDERR_KEPT, None));
    let deadline = Instant::now() + timeout;
    let stop = |child: &mut std::process::Child| {
        let _ = rustix::process::kill_process_group(
            rustix::process::Pid::from_child(child),
            rustix::process::Signal::KILL,
        );
        let _ = child.kill();
        let _ = child.wait();
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline && !over.load(Ordering::Relaxed) => {}
            _ => {
                stop(&mut child);
                return Err(if over.load(Ordering::Relaxed) {
                    RunError::TooMuch {
                        what: what.to_string(),
                        limit: max_stdout,
                    }
                } else {
                    RunError::Timeout {
                        what: what.to_string(),
                        secs: timeout.as_secs().max(1),
                    }
                });
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    let stdout = out.and_then(|r| r.recv_timeout(wait).ok());
    let stderr = err
        .and_then(|r| r.recv_timeout(Duration::from_millis(200)).ok())
        .unwrap_or_default();
    let Some(stdout) = stdout else {
        // Exited, but something it started still holds its output open.
        let _ = rustix::process::kill_process_group(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::KILL,
        );
        return Err(RunError::Timeout {
            what: what.to_string(),
            secs: timeout.as_secs().max(1),
        });
    };
    if stdout.len() > max_stdout {
        return Err(RunError::TooMuch {
            what: what.to_string(),
            limit: max_stdout,
        });
    }
    Ok(Output {
        success: status.success(),
        code: status.code(),
        stdout,
        // What a remote prints reaches logs and records: escaped, and bounded above.
        stderr: crate::util::escape(String::from_utf8_lossy(&stderr).trim()),
    })
}

/// [`run`], and a non-zero exit is an error carrying `git`'s stderr.
pub fn checked(
    cmd: Command,
    what: &str,
    input: Option<Vec<u8>>,
    timeout: Duration,
    max_stdout: usize,
) -> Result<Vec<u8>, RunError> {
    let o = run(cmd, what, input, timeout, max_stdout)?;
    if o.success {
        Ok(o.stdout)
    } else {
        Err(RunError::Failed {
            what: what.to_string(),
            stderr: o.stderr,
        })
    }
}

/// Reads at most `limit` bytes and sends them when the pipe closes (draining the rest
/// unread, so the child never blocks on a full pipe); `over` turns true as soon as the
/// limit is reached (the caller stops the child).
fn reader(
    mut src: impl Read + Send + 'static,
    limit: usize,
    over: Option<Arc<AtomicBool>>,
) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut src).take(limit as u64).read_to_end(&mut buf);
        if buf.len() >= limit
            && let Some(flag) = over
        {
            flag.store(true, Ordering::Relaxed);
        }
        let _ = std::io::copy(&mut src, &mut std::io::sink());
        let _ = tx.send(buf);
    });
    rx
}
