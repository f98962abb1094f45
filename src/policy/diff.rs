//! `policy diff`: effective access gained and lost between two Git revisions.
//!
//! The policy folder is read at each revision with `git ls-tree` and `git cat-file`
//! (nothing is checked out), both are loaded, and the effective access of every user
//! either names is compared as a set of (user, host, login).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, bail};

use super::folder::{SourceFile, counts_as_policy, git};
use super::{LoadErrors, Policy};

/// The policy folder `dir` as it was at `rev`. `Ok(Err(..))` when it does not load;
/// `Ok(Ok(None))` when the folder holds no policy file at that revision.
pub fn load_at_rev(dir: &Path, rev: &str) -> anyhow::Result<Result<Option<Policy>, LoadErrors>> {
    let files = files_at_rev(dir, rev)?;
    if files.is_empty() {
        return Ok(Ok(None));
    }
    Ok(Policy::from_files(&files).map(Some))
}

fn git_text(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = git(dir)
        .args(args)
        .output()
        .with_context(|| format!("cannot run git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("git printed something that is not UTF-8")
}

/// The `*.toml` files of the folder at `rev` (outside its `tests/`), read from Git.
pub fn files_at_rev(dir: &Path, rev: &str) -> anyhow::Result<Vec<SourceFile>> {
    if rev.starts_with('-') {
        bail!("revision {rev:?} must not start with '-'");
    }
    let top = git_text(dir, &["rev-parse", "--show-toplevel"])
        .with_context(|| format!("{} is not in a Git work tree", dir.display()))?;
    let top = Path::new(top.trim_end_matches('\n'));
    let prefix = git_text(dir, &["rev-parse", "--show-prefix"])?;
    let prefix = prefix.trim_end_matches('\n').to_string();
    let commit = git_text(
        top,
        &["rev-parse", "--verify", "-q", &format!("{rev}^{{commit}}")],
    )
    .with_context(|| format!("unknown revision {rev:?}"))?;
    let commit = commit.trim().to_string();
    let mut args = vec!["ls-tree", "-r", "-z", "--full-name", "--name-only", &commit];
    if !prefix.is_empty() {
        args.push("--");
        args.push(&prefix);
    }
    let listing = git_text(top, &args)?;
    let mut files = Vec::new();
    for path in listing.split('\0').filter(|p| !p.is_empty()) {
        let Some(rel) = path.strip_prefix(prefix.as_str()) else {
            continue;
        };
        if !counts_as_policy(rel) {
            continue;
        }
        let text = git_text(top, &["cat-file", "blob", &format!("{commit}:{path}")])
            .with_context(|| format!("reading {path} at {rev}"))?;
        files.push(SourceFile {
            rel: rel.to_string(),
            display: format!("{rev}:{path}"),
            text,
        });
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(files)
}

/// One user's change of access.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserChange {
    /// (host, login, principals in the new policy).
    pub gained: Vec<(String, String, Vec<String>)>,
    /// (host, login, principals in the old policy).
    pub lost: Vec<(String, String, Vec<String>)>,
}

/// Effective access gained and lost per user, evaluated at `now`.
pub fn access_diff(a: &Policy, b: &Policy, now: SystemTime) -> BTreeMap<String, UserChange> {
    let users: BTreeSet<&str> = a.all_users().into_iter().chain(b.all_users()).collect();
    let mut out = BTreeMap::new();
    for user in users {
        let before = a.access_of(user, &[], now);
        let after = b.access_of(user, &[], now);
        let mut change = UserChange::default();
        for (k, ps) in &after {
            if !before.contains_key(k) {
                change.gained.push((k.0.into(), k.1.into(), owned(ps)));
            }
        }
        for (k, ps) in &before {
            if !after.contains_key(k) {
                change.lost.push((k.0.into(), k.1.into(), owned(ps)));
            }
        }
        if !change.gained.is_empty() || !change.lost.is_empty() {
            out.insert(user.to_string(), change);
        }
    }
    out
}

fn owned(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Revocations added and removed: (added, removed), each as readable lines.
pub fn revocation_diff(a: &Policy, b: &Policy) -> (Vec<String>, Vec<String>) {
    let line = |r: &super::Revoked| {
        let mut parts = Vec::new();
        if let Some(s) = r.serial {
            parts.push(format!("serial {s}"));
        }
        if let Some(k) = &r.key_id {
            parts.push(format!("key_id {}", crate::util::escape(k)));
        }
        if let Some(k) = &r.key {
            parts.push(format!("key {k}"));
        }
        parts.join(" ")
    };
    let sa: BTreeSet<String> = a.revoked.iter().map(line).collect();
    let sb: BTreeSet<String> = b.revoked.iter().map(line).collect();
    (
        sb.difference(&sa).cloned().collect(),
        sa.difference(&sb).cloned().collect(),
    )
}
