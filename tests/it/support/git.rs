//! Git for policy folders kept in a repository: commands run through the bounded runner,
//! with a fixed identity and no signing, whatever the machine's Git configuration says.

use std::path::Path;
use std::process::Command;

use super::drawbridge::FIXTURE_POLICY;
use super::process::{COMMAND_TIMEOUT, run_with_timeout};

/// `git ARGS` in `dir`; fails the test when it fails or does not finish in time.
#[track_caller]
pub fn git(dir: &Path, args: &[&str]) -> String {
    let o = run_with_timeout(
        Command::new("git")
            .current_dir(dir)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE"),
        COMMAND_TIMEOUT,
    );
    assert!(o.success(), "git {args:?}: {o:?}");
    o.stdout
}

/// The commit `HEAD` names in the repository at `dir`.
#[track_caller]
pub fn head(dir: &Path) -> String {
    git(dir, &["rev-parse", "HEAD"]).trim().to_string()
}

/// A Git repository at `root` whose `policies/` holds the fixture policy, committed, with
/// a `.gitignore` that ignores `policies/local-*.toml` (and everything the service
/// writes); the commit.
#[track_caller]
pub fn policy_repo(root: &Path) -> String {
    let p = root.join("policies");
    std::fs::create_dir_all(&p).expect("mkdir policies");
    for (name, text) in FIXTURE_POLICY {
        std::fs::write(p.join(name), text).expect("write policy");
    }
    std::fs::write(
        root.join(".gitignore"),
        "policies/local-*.toml\nca/\nvar/\n*.log\ndrawbridge.toml\n",
    )
    .expect("write .gitignore");
    git(root, &["init", "-q"]);
    git(root, &["add", ".gitignore", "policies"]);
    git(root, &["commit", "-q", "-m", "policy"]);
    head(root)
}
