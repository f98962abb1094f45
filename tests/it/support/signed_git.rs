//! Policy repositories whose commits are signed the way operators sign them: real `git
//! commit -S` with `gpg.format = ssh` and keys made by `ssh-keygen`, and an OpenSSH
//! allowed_signers file naming who may sign.

use std::path::{Path, PathBuf};

use super::git::{git, head};
use super::ssh::{Key, TestDir};

/// The committer of every commit made here ([`super::git::git`] sets it).
pub const COMMITTER: &str = "t@t";

/// Two signing keys, `alice` (in the allowed signers) and `mallory` (not), and the
/// allowed_signers file.
pub struct Signers {
    pub alice: Key,
    pub mallory: Key,
    pub allowed: PathBuf,
}

impl Signers {
    /// New keys under `t`; the allowed_signers file lets alice sign commits by
    /// [`COMMITTER`] in the namespace git.
    pub fn new(t: &TestDir) -> Signers {
        let alice = t.keygen("alice-signing");
        let mallory = t.keygen("mallory-signing");
        let allowed = t.write(
            "allowed_signers",
            format!(
                "# who may sign policy commits\n{COMMITTER} namespaces=\"git\" {}\n",
                alice.public_line()
            ),
        );
        Signers {
            alice,
            mallory,
            allowed,
        }
    }
}

/// Makes `dir` a repository on branch main (when it is not one yet).
pub fn init(dir: &Path) {
    if !dir.join(".git").exists() {
        git(dir, &["init", "-q", "-b", "main"]);
    }
}

/// Commits everything in `dir` signed with `key`; the commit.
#[track_caller]
pub fn commit_signed(dir: &Path, key: &Key, message: &str) -> String {
    let signing_key = format!("user.signingkey={}", key.path.display());
    git(dir, &["add", "-A"]);
    git(
        dir,
        &[
            "-c",
            "gpg.format=ssh",
            "-c",
            &signing_key,
            "commit",
            "-q",
            "--allow-empty",
            "-S",
            "-m",
            message,
        ],
    );
    head(dir)
}

/// Commits everything in `dir` without a signature; the commit.
#[track_caller]
pub fn commit_unsigned(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    head(dir)
}

/// Moves main back to `commit` (what a force-push does to the remote).
#[track_caller]
pub fn force_main_to(dir: &Path, commit: &str) {
    git(dir, &["reset", "-q", "--hard", commit]);
}
