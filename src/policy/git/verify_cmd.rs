//! `drawbridge policy verify REV`: would the service put this commit in force? The same
//! checks as the service (`super::source::examine`), for a reviewer or a CI job: exit 0
//! and the signer when it would, 1 and the reason when not, 2 when the question cannot be
//! asked (no repository, no allowed signers).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use super::repo::Repo;
use super::run::checked;
use super::signers::AllowedSigners;
use super::source::examine;
use crate::config::Config;

pub fn verify(
    config: &Config,
    rev: &str,
    repo: Option<&Path>,
    allowed_signers: Option<&Path>,
    in_force: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let signers_path: PathBuf = match allowed_signers {
        Some(p) => p.to_path_buf(),
        None => match &config.policy.allowed_signers {
            Some(p) => config.resolve(p),
            None => {
                eprintln!(
                    "no allowed signers: give --allowed-signers FILE or set [policy] allowed_signers"
                );
                return Ok(ExitCode::from(2));
            }
        },
    };
    let dir = repo.unwrap_or(Path::new("."));
    let mut c = std::process::Command::new("git");
    c.arg("-C")
        .arg(dir)
        .args(["rev-parse", "--absolute-git-dir"]);
    for var in ["GIT_DIR", "GIT_WORK_TREE"] {
        c.env_remove(var);
    }
    let git_dir = match checked(
        c,
        "rev-parse --absolute-git-dir",
        None,
        Duration::from_secs(20),
        4096,
    ) {
        Ok(out) => PathBuf::from(String::from_utf8_lossy(&out).trim()),
        Err(e) => {
            eprintln!("{}: not a Git repository: {e}", dir.display());
            return Ok(ExitCode::from(2));
        }
    };
    let repo = Repo::at(&git_dir);
    let Some(commit) = repo.resolve(rev)? else {
        eprintln!("{rev}: not a commit in {}", dir.display());
        return Ok(ExitCode::from(2));
    };
    let in_force = match in_force {
        None => None,
        Some(r) => match repo.resolve(r)? {
            Some(c) => Some(c),
            None => {
                eprintln!("{r}: not a commit in {}", dir.display());
                return Ok(ExitCode::from(2));
            }
        },
    };
    let signers = AllowedSigners::load(&signers_path).map(Some);
    match examine(
        &repo,
        signers,
        &commit,
        in_force.as_deref(),
        SystemTime::now(),
    ) {
        Ok(accepted) => {
            match &accepted.signed {
                Some(s) => println!(
                    "ok: {commit} would be applied: signed by {} ({}, allowed by {}); the policy loads",
                    s.principals, s.fingerprint, s.line
                ),
                None => println!("ok: {commit} would be applied; the policy loads"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(rejected) => {
            eprintln!("refused: {commit} ({})", rejected.code);
            for e in &rejected.errors {
                eprintln!("  {e}");
            }
            Ok(ExitCode::from(1))
        }
    }
}
