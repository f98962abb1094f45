//! The policy folder on disk and in Git: which files make up the policy (one walk, one
//! rule), reading them, and the version that names exactly the bytes loaded.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{LoadError, LoadErrors};

/// One policy file's text and the name errors give it.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path relative to the policy folder, `/`-separated (`people.toml`, `team/ops.toml`).
    pub rel: String,
    /// How messages name the file (`policies/people.toml`).
    pub display: String,
    pub text: String,
}

/// A policy folder as loaded: its files and the version that names exactly their bytes.
#[derive(Debug, Clone)]
pub struct Folder {
    pub files: Vec<SourceFile>,
    /// See [`version_of`].
    pub version: String,
}

/// Reads the policy folder `dir` ([`read_dir_files`]) and names what was read
/// ([`version_of`]). In a Git work tree a policy file Git does not track is an error.
pub fn read_folder(dir: &Path) -> Result<Folder, LoadErrors> {
    let files = read_dir_files(dir)?;
    let version = version_of(dir, &files)?;
    Ok(Folder { files, version })
}

/// The files that make up the policy in `dir`: every `*.toml` under it, recursively,
/// except `dir/tests/` and hidden entries, as `(path relative to dir, path)`, sorted.
///
/// This one walk decides which files count, for loading and for the watcher's
/// fingerprint alike, so the two can never disagree.
pub fn policy_paths(dir: &Path) -> (Vec<(String, PathBuf)>, Vec<LoadError>) {
    let mut paths = Vec::new();
    let mut errors = Vec::new();
    walk(dir, dir, &mut paths, &mut errors);
    paths.sort();
    (paths, errors)
}

/// Reads every policy file under `dir` ([`policy_paths`]), sorted by path. File names in
/// messages are `dir.join(rel)` as the caller wrote `dir`.
pub fn read_dir_files(dir: &Path) -> Result<Vec<SourceFile>, LoadErrors> {
    let mut files = Vec::new();
    let meta = std::fs::metadata(dir);
    match meta {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(LoadErrors(vec![file_error(
                &dir.display().to_string(),
                "not a folder: give the policy folder (the one holding hosts.toml)",
            )]));
        }
        Err(e) => {
            return Err(LoadErrors(vec![file_error(
                &dir.display().to_string(),
                &format!("cannot read the policy folder: {e}"),
            )]));
        }
    }
    let (paths, mut errors) = policy_paths(dir);
    for (rel, path) in paths {
        let display = dir.join(&rel).display().to_string();
        match std::fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => files.push(SourceFile { rel, display, text }),
                Err(e) => {
                    let (line, column) =
                        offset_line_col(e.as_bytes(), e.utf8_error().valid_up_to());
                    errors.push(LoadError {
                        file: display,
                        line,
                        column,
                        message: "not UTF-8 text".into(),
                    });
                }
            },
            Err(e) => errors.push(file_error(&display, &format!("cannot read: {e}"))),
        }
    }
    if files.is_empty() && errors.is_empty() {
        errors.push(file_error(
            &dir.display().to_string(),
            "no policy files (*.toml) in this folder",
        ));
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(LoadErrors(errors))
    }
}

fn offset_line_col(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// An error about a whole file or folder (no position).
fn file_error(file: &str, message: &str) -> LoadError {
    LoadError {
        file: file.to_string(),
        line: 0,
        column: 0,
        message: message.to_string(),
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>, errors: &mut Vec<LoadError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(file_error(
                &dir.display().to_string(),
                &format!("cannot read: {e}"),
            ));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let Ok(ft) = entry.file_type() else { continue };
        let rel_path = path.strip_prefix(root).unwrap_or(&path);
        if ft.is_dir() {
            if dir == root && name == "tests" {
                continue;
            }
            walk(root, &path, out, errors);
        } else if ft.is_file() || path.is_file() {
            let rel = rel_path
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            if counts_as_policy(&rel) {
                out.push((rel, path));
            }
        }
    }
}

/// The policy version of `dir`, naming exactly the bytes in `files`:
///
/// - outside a Git work tree: `sha256:` over the files ([`content_hash`]);
/// - in a Git work tree: the commit (`HEAD`) when the files are exactly that commit's
///   policy files, else the commit, `+`, and the content hash (`<commit>+sha256:<hex>`);
///   without any commit yet, the content hash alone.
///
/// In a Git work tree every file in `files` must be tracked: an untracked or ignored
/// `*.toml` is an error naming the file, never silently part of the policy (a policy
/// that cannot be rebuilt from the repository cannot explain its decisions).
pub fn version_of(dir: &Path, files: &[SourceFile]) -> Result<String, LoadErrors> {
    let hash = content_hash(files);
    match git_state(dir, files) {
        Err(errors) => Err(LoadErrors(errors)),
        Ok(GitState::NotARepository) | Ok(GitState::NoCommit) => Ok(hash),
        Ok(GitState::Commit { commit, same }) => {
            if same {
                Ok(commit)
            } else {
                Ok(format!("{commit}+{hash}"))
            }
        }
    }
}

/// `sha256:` + hex over the sorted file paths and contents.
pub fn content_hash(files: &[SourceFile]) -> String {
    let mut sorted: Vec<&SourceFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.rel.cmp(&b.rel));
    let mut h = Sha256::new();
    for f in sorted {
        h.update((f.rel.len() as u64).to_be_bytes());
        h.update(f.rel.as_bytes());
        h.update((f.text.len() as u64).to_be_bytes());
        h.update(f.text.as_bytes());
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// A `git` command run in `dir`, ignoring any `GIT_DIR` of the caller's environment.
pub(crate) fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    // No hook of the repository runs because drawbridge looked at it.
    c.arg("-c").arg("core.fsmonitor=false");
    c.arg("-C").arg(dir);
    for var in ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_PREFIX"] {
        c.env_remove(var);
    }
    // File names are names, never patterns.
    c.env("GIT_LITERAL_PATHSPECS", "1");
    c.stdin(std::process::Stdio::null());
    c
}

/// The Git index file of the work tree holding `dir` (`None` outside Git).
pub fn git_index_path(dir: &Path) -> Option<PathBuf> {
    let o = git(dir)
        .args(["rev-parse", "--path-format=absolute", "--git-path", "index"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    let path = String::from_utf8(o.stdout).ok()?.trim().to_string();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// What Git says about the policy files.
enum GitState {
    /// `dir` is not in a Git work tree (or `git` is not installed).
    NotARepository,
    /// A work tree without any commit yet.
    NoCommit,
    /// `HEAD` is `commit`; `same`: the loaded files are exactly its policy files.
    Commit { commit: String, same: bool },
}

/// Asks Git whether `dir` is a work tree, whether every loaded file is tracked, and
/// whether the loaded files are exactly those of `HEAD`. Once `dir` is known to be in a
/// work tree, a `git` command that fails is an error (the version would be a guess).
fn git_state(dir: &Path, files: &[SourceFile]) -> Result<GitState, Vec<LoadError>> {
    let inside = git(dir)
        .args(["rev-parse", "--is-inside-work-tree"])
        .output();
    match inside {
        Ok(o) if o.status.success() && o.stdout.trim_ascii() == b"true" => {}
        _ => return Ok(GitState::NotARepository),
    }
    let folder = dir.display().to_string();
    let failed = |what: &str, detail: String| {
        vec![file_error(
            &folder,
            &format!("the folder is in a Git work tree, but `git {what}` failed: {detail}"),
        )]
    };
    let run = |args: &[&str]| -> Result<std::process::Output, Vec<LoadError>> {
        let o = git(dir)
            .args(args)
            .output()
            .map_err(|e| failed(&args.join(" "), e.to_string()))?;
        if o.status.success() {
            Ok(o)
        } else {
            Err(failed(
                &args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim().to_string(),
            ))
        }
    };
    let tracked = nul_list(&run(&["ls-files", "-z", "--cached", "--", "."])?.stdout);
    let mut errors = Vec::new();
    for f in files.iter().filter(|f| !tracked.contains(&f.rel)) {
        // check-ignore takes paths, not pathspecs (and refuses the literal switch).
        let ignored = git(dir)
            .env_remove("GIT_LITERAL_PATHSPECS")
            .args(["check-ignore", "-q", "--no-index", "--", &f.rel])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let how = if ignored {
            "ignored by Git (.gitignore)"
        } else {
            "not tracked by Git"
        };
        errors.push(file_error(
            &f.display,
            &format!(
                "{how}: in a Git work tree only files Git tracks are policy (the policy \
                 version must name what was loaded); `git add` it, or move it out of the folder"
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let head = git(dir)
        .args(["rev-parse", "--verify", "-q", "HEAD^{commit}"])
        .output();
    let commit = match head {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => return Ok(GitState::NoCommit),
    };
    if commit.is_empty() {
        return Ok(GitState::NoCommit);
    }
    // The same set of policy files as the commit, and none of them differs from it
    // (staged or not).
    let committed: BTreeSet<String> =
        nul_list(&run(&["ls-tree", "-r", "-z", "--name-only", "HEAD", "--", "."])?.stdout)
            .into_iter()
            .filter(|rel| counts_as_policy(rel))
            .collect();
    let loaded: BTreeSet<String> = files.iter().map(|f| f.rel.clone()).collect();
    let mut same = committed == loaded;
    if same && !files.is_empty() {
        let mut args = vec!["diff", "--quiet", "HEAD", "--"];
        args.extend(files.iter().map(|f| f.rel.as_str()));
        let o = git(dir)
            .args(&args)
            .output()
            .map_err(|e| failed("diff --quiet HEAD", e.to_string()))?;
        same = match o.status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => {
                return Err(failed(
                    "diff --quiet HEAD",
                    String::from_utf8_lossy(&o.stderr).trim().to_string(),
                ));
            }
        };
    }
    Ok(GitState::Commit { commit, same })
}

/// Whether a path relative to the policy folder (`/`-separated) names a policy file:
/// `*.toml`, not hidden, not under the top-level `tests/`. The one rule for the walk on
/// disk, for what Git lists at `HEAD`, and for `policy diff` at a revision.
pub(crate) fn counts_as_policy(rel: &str) -> bool {
    rel.ends_with(".toml")
        && !rel.starts_with("tests/")
        && !rel.split('/').any(|c| c.starts_with('.'))
}

fn nul_list(bytes: &[u8]) -> BTreeSet<String> {
    bytes
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}
