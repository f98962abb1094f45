//! Real local accounts on this machine, for tests that log in to a real sshd as more
//! than one login (`useradd`, removed again on drop).

use std::cell::RefCell;
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::{COMMAND_TIMEOUT, run_with_timeout, wait_until};
use super::unique;

/// A local account made for one test, removed on drop. Its password field is `*` (no
/// password, not locked), so sshd lets it log in with a certificate.
pub struct OsUser {
    pub name: String,
}

impl OsUser {
    /// A new account with a name no other test uses. `useradd` fails while another
    /// process holds the password file's lock (tests run in parallel): it is retried
    /// for 10 s, then the test fails with its last error.
    #[track_caller]
    pub fn create() -> OsUser {
        // Login names: at most 32 characters, no leading digit; `unique` gives `t-PID-N`.
        let name = unique("t");
        let _ = run_with_timeout(Command::new("userdel").arg(&name), COMMAND_TIMEOUT);
        let last = RefCell::new(String::new());
        wait_until(
            Duration::from_secs(10),
            || {
                let out = run_with_timeout(
                    Command::new("useradd")
                        .args(["-M", "-d", "/nonexistent", "-s", "/bin/sh", "-p", "*"])
                        .arg(&name),
                    COMMAND_TIMEOUT,
                );
                *last.borrow_mut() = out.text();
                out.success()
            },
            || format!("useradd {name}: {}", last.borrow()),
        );
        OsUser { name }
    }
}

impl Drop for OsUser {
    fn drop(&mut self) {
        // Retried while the password file is locked; exit code 6: the account is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let out = run_with_timeout(Command::new("userdel").arg(&self.name), COMMAND_TIMEOUT);
            if out.success() || out.code() == 6 {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
