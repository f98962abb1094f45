//! The service's own bare clone of the policy repository: fetched into, never checked
//! out. Policy files are read from the objects of a commit's tree, so no work tree that
//! someone could write is ever read.
//!
//! Refs the service keeps in its clone:
//! - `refs/drawbridge/fetched`: the configured `ref` as last fetched (force-updated: what
//!   the remote says, checked before use);
//! - `refs/drawbridge/applied`: the commit last put in force, so a ref moved back is
//!   recognised across restarts (and the commit stays in the clone).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::run::{RunError, checked, git, run};
use crate::policy::folder::counts_as_policy;
use crate::policy::{LoadError, LoadErrors, SourceFile};

pub const FETCHED: &str = "refs/drawbridge/fetched";
pub const APPLIED: &str = "refs/drawbridge/applied";

/// A fetch that takes longer is stopped (a remote that hangs).
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Local `git` commands on the clone.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(20);
/// At most this much policy (all files of one commit together).
const MAX_POLICY_BYTES: usize = 32 << 20;
/// At most this many entries listed in one tree.
const MAX_TREE_LISTING: usize = 8 << 20;
/// A commit object larger than this is refused.
const MAX_COMMIT: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Repo {
    git_dir: PathBuf,
}

impl Repo {
    /// The bare clone at `git_dir`, created (`git init --bare`) when missing.
    pub fn open_or_init(git_dir: &Path) -> Result<Repo, RunError> {
        if !git_dir.join("HEAD").exists() {
            if let Some(parent) = git_dir.parent() {
                std::fs::create_dir_all(parent).map_err(RunError::Spawn)?;
            }
            let mut c = std::process::Command::new("git");
            c.arg("init").arg("--bare").arg("-q").arg(git_dir);
            c.env_remove("GIT_DIR");
            checked(c, "init --bare", None, LOCAL_TIMEOUT, 64 << 10)?;
        }
        Ok(Repo::at(git_dir))
    }

    /// An existing repository (a bare clone, or a work tree's `.git`), as is.
    pub fn at(git_dir: &Path) -> Repo {
        Repo {
            git_dir: git_dir.to_path_buf(),
        }
    }

    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// Fetches `git_ref` of `url` into [`FETCHED`] (forced: whether the new commit may
    /// replace the one in force is decided after, by the caller).
    pub fn fetch(&self, url: &str, git_ref: &str) -> Result<(), RunError> {
        let src = if git_ref.starts_with("refs/") {
            git_ref.to_string()
        } else {
            format!("refs/heads/{git_ref}")
        };
        let mut c = git(&self.git_dir);
        c.args([
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--",
        ])
        .arg(url)
        .arg(format!("+{src}:{FETCHED}"));
        checked(c, "fetch", None, FETCH_TIMEOUT, 64 << 10).map(|_| ())
    }

    /// The commit `rev` names, or `None` when it names none.
    pub fn resolve(&self, rev: &str) -> Result<Option<String>, RunError> {
        let mut c = git(&self.git_dir);
        c.args(["rev-parse", "--verify", "-q", "--end-of-options"])
            .arg(format!("{rev}^{{commit}}"));
        let o = run(c, "rev-parse", None, LOCAL_TIMEOUT, 4096)?;
        let oid = String::from_utf8_lossy(&o.stdout).trim().to_string();
        Ok((o.success && is_oid(&oid)).then_some(oid))
    }

    /// The raw commit object `oid`.
    pub fn raw_commit(&self, oid: &str) -> Result<Vec<u8>, RunError> {
        let mut c = git(&self.git_dir);
        c.args(["cat-file", "commit", oid]);
        checked(c, "cat-file commit", None, LOCAL_TIMEOUT, MAX_COMMIT)
    }

    /// Whether `ancestor` is `descendant` or one of its ancestors.
    pub fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool, RunError> {
        let mut c = git(&self.git_dir);
        c.args(["merge-base", "--is-ancestor", ancestor, descendant]);
        let o = run(c, "merge-base --is-ancestor", None, LOCAL_TIMEOUT, 4096)?;
        match o.code {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(RunError::Failed {
                what: "merge-base --is-ancestor".into(),
                stderr: o.stderr,
            }),
        }
    }

    /// Points [`APPLIED`] at `oid`.
    pub fn set_applied(&self, oid: &str) -> Result<(), RunError> {
        let mut c = git(&self.git_dir);
        c.args(["update-ref", APPLIED, oid]);
        checked(c, "update-ref", None, LOCAL_TIMEOUT, 4096).map(|_| ())
    }

    /// The policy files of the tree `tree` (every `*.toml` the folder rule counts),
    /// sorted by path; `label` prefixes their names in messages (`<commit>:people.toml`).
    pub fn read_tree(&self, tree: &str, label: &str) -> Result<Vec<SourceFile>, LoadErrors> {
        let err = |message: String| LoadErrors(vec![whole(label, message)]);
        let mut c = git(&self.git_dir);
        c.args(["ls-tree", "-r", "-z", "--full-tree", tree]);
        let listing = checked(c, "ls-tree", None, LOCAL_TIMEOUT, MAX_TREE_LISTING)
            .map_err(|e| err(e.to_string()))?;
        let mut wanted = Vec::new();
        let mut errors = Vec::new();
        for entry in listing.split(|&b| b == 0).filter(|e| !e.is_empty()) {
            let entry = String::from_utf8_lossy(entry);
            let Some((meta, path)) = entry.split_once('\t') else {
                return Err(err(format!("`git ls-tree` printed {entry:?}")));
            };
            if !counts_as_policy(path) {
                continue;
            }
            let mut parts = meta.split(' ');
            let (mode, oid) = (parts.next().unwrap_or(""), parts.nth(1).unwrap_or(""));
            match mode {
                "100644" | "100755" if is_oid(oid) => {
                    wanted.push((path.to_string(), oid.to_string()))
                }
                "120000" => errors.push(whole(
                    &format!("{label}:{path}"),
                    "a symbolic link: policy files in Git must be regular files".into(),
                )),
                _ => {}
            }
        }
        if !errors.is_empty() {
            return Err(LoadErrors(errors));
        }
        if wanted.is_empty() {
            return Err(err("no policy files (*.toml) in the commit".into()));
        }
        let input: String = wanted.iter().map(|(_, oid)| format!("{oid}\n")).collect();
        let mut c = git(&self.git_dir);
        c.args(["cat-file", "--batch"]);
        let out = checked(
            c,
            "cat-file --batch",
            Some(input.into_bytes()),
            LOCAL_TIMEOUT,
            MAX_POLICY_BYTES + wanted.len() * 64,
        )
        .map_err(|e| err(e.to_string()))?;
        let mut rest = out.as_slice();
        let mut files = Vec::new();
        for (path, oid) in wanted {
            let display = format!("{label}:{path}");
            let nl = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or_else(|| err("`git cat-file --batch` ended early".into()))?;
            let header = String::from_utf8_lossy(&rest[..nl]).to_string();
            let mut h = header.split(' ');
            let (got, kind, size) = (
                h.next(),
                h.next(),
                h.next().and_then(|s| s.parse::<usize>().ok()),
            );
            let (Some(got), Some("blob"), Some(size)) = (got, kind, size) else {
                return Err(err(format!("`git cat-file --batch` printed {header:?}")));
            };
            if got != oid || rest.len() < nl + 1 + size + 1 {
                return Err(err(format!("`git cat-file --batch` printed {header:?}")));
            }
            let bytes = &rest[nl + 1..nl + 1 + size];
            rest = &rest[nl + 1 + size + 1..];
            match std::str::from_utf8(bytes) {
                Ok(text) => files.push(SourceFile {
                    rel: path,
                    display,
                    text: text.to_string(),
                }),
                Err(_) => errors.push(whole(&display, "not UTF-8 text".into())),
            }
        }
        if errors.is_empty() {
            files.sort_by(|a, b| a.rel.cmp(&b.rel));
            Ok(files)
        } else {
            Err(LoadErrors(errors))
        }
    }
}

fn whole(file: &str, message: String) -> LoadError {
    LoadError {
        file: file.to_string(),
        line: 0,
        column: 0,
        message,
    }
}

/// A SHA-1 object name in hex.
pub fn is_oid(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}
