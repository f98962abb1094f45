//! Reading and validating a policy folder.
//!
//! The TOML is parsed with spans ([`toml::de::DeTable`]) and walked by hand, so that every
//! error names its file, line and column, unknown keys are errors wherever they are, and
//! all errors of a folder are reported in one run (a syntax error stops only its file).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{
    Group, Host, HostSelector, LoadError, LoadErrors, Origin, Policy, Principal, Revoked,
    Temporary, User,
};

/// One policy file's text and the name errors give it.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path relative to the policy folder, `/`-separated (`people.toml`, `team/ops.toml`).
    pub rel: String,
    /// How messages name the file (`policies/people.toml`).
    pub display: String,
    pub text: String,
}

/// The extensions OpenSSH knows; names containing `@` are vendor extensions.
pub const OPENSSH_EXTENSIONS: &[&str] = &[
    "no-touch-required",
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
    "verify-required",
];

/// Set by drawbridge itself on every certificate; a policy may not name it.
pub const GROUPS_EXTENSION: &str = "groups@drawbridge";

/// Extensions named `...@drawbridge` (`groups@drawbridge`, `idp-groups@drawbridge`,
/// `reason@drawbridge`) are set by drawbridge itself; a policy may not name one, or a
/// role could forge what the issuer vouches for.
pub const RESERVED_EXTENSION_SUFFIX: &str = "@drawbridge";

const SECTIONS: &str = "hosts, principals, groups, users, temporary, revoked";

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
        } else if name.ends_with(".toml") && (ft.is_file() || path.is_file()) {
            let rel = rel_path
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push((rel, path));
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

/// Whether a path relative to the policy folder names a policy file by the walk's rule
/// (`*.toml`, not hidden, not under the top-level `tests/`).
fn counts_as_policy(rel: &str) -> bool {
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

/// Everything read from the files before the cross-file checks.
#[derive(Default)]
struct Raw {
    hosts: Vec<Host>,
    principals: Vec<(Principal, Vec<Origin>, Origin)>,
    groups: Vec<(Group, Vec<Origin>)>,
    users: Vec<(User, Vec<Origin>)>,
    temporary: Vec<(Temporary, Origin)>,
    revoked: Vec<Revoked>,
}

/// Parses and validates policy files (already read) into a policy; `version` is left
/// empty for the caller to fill.
pub fn parse_files(files: &[SourceFile]) -> Result<Policy, LoadErrors> {
    let mut errors = Vec::new();
    let mut raw = Raw::default();
    for f in files {
        let mut ctx = Ctx::new(&f.display, &f.text, &mut errors);
        match DeTable::parse(&f.text) {
            Ok(table) => parse_document(&mut ctx, table.get_ref(), &mut raw),
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                ctx.err(span, format!("TOML syntax: {}", e.message().trim()));
            }
        }
    }
    let policy = assemble(raw, &mut errors);
    if errors.is_empty() {
        Ok(policy)
    } else {
        sort_errors(&mut errors);
        Err(LoadErrors(errors))
    }
}

pub(crate) fn sort_errors(errors: &mut [LoadError]) {
    errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
}

pub(crate) struct Ctx<'a> {
    pub file: &'a str,
    pub text: &'a str,
    pub errors: &'a mut Vec<LoadError>,
    /// Byte offset of the start of every line, for positions in O(log n).
    line_starts: Vec<usize>,
}

type Key<'i> = Spanned<std::borrow::Cow<'i, str>>;
type Val<'i> = Spanned<DeValue<'i>>;

impl<'a> Ctx<'a> {
    pub fn new(file: &'a str, text: &'a str, errors: &'a mut Vec<LoadError>) -> Ctx<'a> {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Ctx {
            file,
            text,
            errors,
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map(|t| t.chars().count())
            .unwrap_or(offset - start)
            + 1;
        (line, column)
    }

    pub fn origin(&self, span: &Range<usize>) -> Origin {
        let (line, column) = self.line_col(span.start);
        Origin {
            file: self.file.to_string(),
            line,
            column,
        }
    }

    pub fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        let o = self.origin(&span);
        self.errors.push(LoadError {
            file: o.file,
            line: o.line,
            column: o.column,
            message: message.into(),
        });
    }

    /// A string value, or an error naming `what` and the type found.
    pub fn string(&mut self, v: &Val<'_>, what: &str) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => {
                if let Some(c) = s.chars().find(|c| c.is_control()) {
                    self.err(
                        v.span(),
                        format!("{what} must not contain control characters (found {c:?})"),
                    );
                    return None;
                }
                Some(s.to_string())
            }
            other => {
                self.err(
                    v.span(),
                    format!("{what} must be a string, not {}", type_name(other)),
                );
                None
            }
        }
    }

    /// A list of strings with their spans.
    pub fn strings(&mut self, v: &Val<'_>, what: &str) -> Option<Vec<(String, Range<usize>)>> {
        let DeValue::Array(items) = v.get_ref() else {
            self.err(
                v.span(),
                format!(
                    "{what} must be a list of strings like [\"a\", \"b\"], not {}",
                    type_name(v.get_ref())
                ),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        let mut seen = BTreeSet::new();
        for item in items.iter() {
            match self.string(item, &format!("each entry of {what}")) {
                Some(s) => {
                    if !seen.insert(s.clone()) {
                        self.err(item.span(), format!("{s:?} is listed twice in {what}"));
                        ok = false;
                    }
                    out.push((s, item.span()));
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A datetime (TOML datetime or RFC 3339 string) with a time zone.
    pub fn time(&mut self, v: &Val<'_>, what: &str) -> Option<SystemTime> {
        let parsed = match v.get_ref() {
            DeValue::Datetime(dt) => datetime_to_system(dt),
            DeValue::String(s) => parse_time(s),
            other => Err(format!("must be a date and time, not {}", type_name(other))),
        };
        match parsed {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(v.span(), format!("{what} {e}"));
                None
            }
        }
    }

    /// An error for each key of `t` not in `allowed`.
    pub fn unknown_keys(&mut self, t: &DeTable<'_>, allowed: &[&str], context: &str) -> bool {
        let mut ok = true;
        for (k, _) in t.iter() {
            if !allowed.contains(&k.get_ref().as_ref()) {
                ok = false;
                let hint = suggest(k.get_ref(), allowed.iter().copied())
                    .map(|s| format!("did you mean {s:?}? "))
                    .unwrap_or_default();
                self.err(
                    k.span(),
                    format!(
                        "unknown key {:?} in {context} ({hint}allowed: {})",
                        k.get_ref().as_ref(),
                        allowed.join(", ")
                    ),
                );
            }
        }
        ok
    }
}

pub(crate) fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

fn get<'v, 'i>(t: &'v DeTable<'i>, key: &str) -> Option<&'v Val<'i>> {
    t.iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v)
}

fn parse_document(ctx: &mut Ctx<'_>, doc: &DeTable<'_>, raw: &mut Raw) {
    for (k, v) in doc.iter() {
        match k.get_ref().as_ref() {
            "hosts" => named_sections(ctx, k, v, "hosts", |ctx, name, body| {
                if let Some(h) = parse_host(ctx, name, body) {
                    raw.hosts.push(h);
                }
            }),
            "principals" => named_sections(ctx, k, v, "principals", |ctx, name, body| {
                if let Some(p) = parse_principal(ctx, name, body) {
                    raw.principals.push(p);
                }
            }),
            "groups" => named_sections(ctx, k, v, "groups", |ctx, name, body| {
                if let Some(g) = parse_group(ctx, name, body) {
                    raw.groups.push(g);
                }
            }),
            "users" => named_sections(ctx, k, v, "users", |ctx, name, body| {
                if let Some(u) = parse_user(ctx, name, body) {
                    raw.users.push(u);
                }
            }),
            "temporary" => array_sections(ctx, v, "temporary", |ctx, span, body| {
                if let Some(t) = parse_temporary(ctx, span, body) {
                    raw.temporary.push(t);
                }
            }),
            "revoked" => array_sections(ctx, v, "revoked", |ctx, span, body| {
                if let Some(r) = parse_revoked(ctx, span, body) {
                    raw.revoked.push(r);
                }
            }),
            other => {
                let hint = suggest(other, SECTIONS.split(", "))
                    .map(|s| format!("did you mean {s:?}? "))
                    .unwrap_or_default();
                ctx.err(
                    k.span(),
                    format!("unknown section {other:?} ({hint}allowed: {SECTIONS})"),
                );
            }
        }
    }
}

/// `[SECTION.NAME]` tables: calls `each` with the name key and the body.
fn named_sections<'i>(
    ctx: &mut Ctx<'_>,
    key: &Key<'i>,
    v: &Val<'i>,
    section: &str,
    mut each: impl FnMut(&mut Ctx<'_>, &Key<'i>, &DeTable<'i>),
) {
    let DeValue::Table(t) = v.get_ref() else {
        ctx.err(
            key.span(),
            format!(
                "{section} must be a set of [{section}.NAME] tables, not {}",
                type_name(v.get_ref())
            ),
        );
        return;
    };
    for (name, body) in t.iter() {
        match body.get_ref() {
            DeValue::Table(b) => each(ctx, name, b),
            other => ctx.err(
                name.span(),
                format!(
                    "{section}.{} must be a table ([{section}.{}]), not {}",
                    name.get_ref(),
                    name.get_ref(),
                    type_name(other)
                ),
            ),
        }
    }
}

/// `[[SECTION]]` arrays of tables: calls `each` with the header span and the body.
fn array_sections<'i>(
    ctx: &mut Ctx<'_>,
    v: &Val<'i>,
    section: &str,
    mut each: impl FnMut(&mut Ctx<'_>, Range<usize>, &DeTable<'i>),
) {
    let DeValue::Array(items) = v.get_ref() else {
        ctx.err(
            v.span(),
            format!(
                "{section} must be written as [[{section}]] tables, not {}",
                type_name(v.get_ref())
            ),
        );
        return;
    };
    for item in items.iter() {
        match item.get_ref() {
            DeValue::Table(b) => each(ctx, item.span(), b),
            other => ctx.err(
                item.span(),
                format!(
                    "each {section} entry must be a [[{section}]] table, not {}",
                    type_name(other)
                ),
            ),
        }
    }
}

/// Which names are allowed where. Names go into certificates, AuthorizedPrincipalsFile
/// lines and file names, audit records and messages: keep them to a plain charset.
pub fn check_name(kind: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{kind} name must not be empty"));
    }
    if s.len() > 128 {
        return Err(format!("{kind} name is longer than 128 bytes"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+')))
    {
        return Err(format!(
            "invalid character {c:?} in {kind} name {:?} (allowed: letters, digits, '.', '_', '-', '@', '+')",
            s
        ));
    }
    if s.starts_with('-') {
        return Err(format!("{kind} name {s:?} must not start with '-'"));
    }
    if s == "." || s == ".." {
        return Err(format!("{kind} name {s:?} is not allowed"));
    }
    Ok(())
}

fn name_of(ctx: &mut Ctx<'_>, kind: &str, key: &Key<'_>) -> Option<String> {
    let name = key.get_ref().to_string();
    match check_name(kind, &name) {
        Ok(()) => Some(name),
        Err(e) => {
            ctx.err(key.span(), e);
            None
        }
    }
}

fn parse_host(ctx: &mut Ctx<'_>, key: &Key<'_>, body: &DeTable<'_>) -> Option<Host> {
    let name = match super::ip_like::ip_like_host_name(key.get_ref()) {
        Some(ip) => {
            ctx.err(
                key.span(),
                format!(
                    "host name {:?} parses as the IP address {ip}; a host named like an address would shadow the inventory's addresses: name it (e.g. \"web-1\") and put the address in address = \"...\"",
                    key.get_ref().as_ref()
                ),
            );
            None
        }
        None => name_of(ctx, "host", key),
    };
    let context = format!("[hosts.{}]", key.get_ref());
    // An unknown key is reported but does not hide the entry from the
    // cross-file checks (duplicates, references).
    ctx.unknown_keys(body, &["address", "labels"], &context);
    let mut ok = true;
    let mut address = None;
    if let Some(v) = get(body, "address") {
        if let Some(s) = ctx.string(v, "address") {
            match parse_address(&s) {
                Ok(a) => address = Some(a),
                Err(e) => ctx.err(v.span(), e),
            }
        }
    } else {
        ctx.err(
            key.span(),
            format!("{context} needs address = \"host\" or \"host:port\" (port 22 by default)"),
        );
    }
    let mut labels = BTreeMap::new();
    if let Some(v) = get(body, "labels") {
        match parse_labels(ctx, v, "labels") {
            Some(l) => labels = l,
            None => ok = false,
        }
    }
    let (address, port) = address?;
    if !ok {
        return None;
    }
    Some(Host {
        name: name?,
        address,
        port,
        labels,
        origin: ctx.origin(&key.span()),
    })
}

fn parse_labels(ctx: &mut Ctx<'_>, v: &Val<'_>, what: &str) -> Option<BTreeMap<String, String>> {
    let t = match v.get_ref() {
        DeValue::Table(t) => t,
        other => {
            ctx.err(
                v.span(),
                format!(
                    "{what} must be a table like {{ role = \"web\" }}, not {}",
                    type_name(other)
                ),
            );
            return None;
        }
    };
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (k, lv) in t.iter() {
        if let Err(e) = check_name("label", k.get_ref()) {
            ctx.err(k.span(), e);
            ok = false;
        }
        match ctx.string(lv, &format!("label {}", k.get_ref())) {
            Some(s) => {
                out.insert(k.get_ref().to_string(), s);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// Parses an inventory address: `host`, `host:port`, `[v6]:port`, `[v6]` or a bare IPv6
/// address. Returns the host (IPv6 without brackets) and the port (22 by default).
///
/// The address must be written in one canonical form, so that the bastion's exact
/// comparison (THREATS row 16) is well defined: IP addresses as `Display` prints them,
/// host names in lower case without a trailing dot and never in a numeric form.
pub fn parse_address(s: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err(format!(
                "address {s:?}: missing ']' (write \"[2001:db8::1]:22\")"
            ));
        };
        let port = if after.is_empty() {
            22
        } else if let Some(p) = after.strip_prefix(':') {
            parse_port(s, p)?
        } else {
            return Err(format!("address {s:?}: expected ':port' after ']'"));
        };
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(format!("address {s:?}: {inner:?} is not an IPv6 address"));
        }
        (inner, port)
    } else if s.matches(':').count() > 1 {
        if s.parse::<Ipv6Addr>().is_err() {
            return Err(format!(
                "address {s:?} does not parse (write \"host\", \"host:port\" or \"[2001:db8::1]:22\")"
            ));
        }
        (s, 22)
    } else if let Some((h, p)) = s.split_once(':') {
        (h, parse_port(s, p)?)
    } else {
        (s, 22)
    };
    check_host_part(s, host)?;
    Ok((host.to_string(), port))
}

fn parse_port(s: &str, p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 && n.to_string() == p => Ok(n),
        _ => Err(format!(
            "address {s:?}: port {p:?} must be a number from 1 to 65535"
        )),
    }
}

fn check_host_part(s: &str, host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err(format!("address {s:?}: the host part is empty"));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        let canonical = ip.to_string();
        if canonical != host {
            return Err(format!(
                "address {s:?}: write the IP address as {canonical}"
            ));
        }
        return check_ip(s, ip);
    }
    if host.ends_with('.') {
        return Err(format!(
            "address {s:?}: remove the trailing dot ({:?})",
            host.trim_end_matches('.')
        ));
    }
    if host.len() > 253 {
        return Err(format!(
            "address {s:?}: host name longer than 253 characters"
        ));
    }
    for label in host.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid {
            return Err(format!(
                "address {s:?} is neither an IP address nor a host name (letters, digits and '-' between dots)"
            ));
        }
    }
    if host.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "address {s:?}: write host names in lower case ({:?})",
            host.to_ascii_lowercase()
        ));
    }
    let last = host.rsplit('.').next().unwrap_or(host);
    if !last.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!(
            "address {s:?} looks like a numeric address but is not a dotted-quad IPv4 or an IPv6 address (write e.g. 10.0.0.1)"
        ));
    }
    Ok(())
}

fn check_ip(s: &str, ip: IpAddr) -> Result<(), String> {
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_unspecified() || v4.is_multicast() || v4 == Ipv4Addr::BROADCAST {
                return Err(format!("address {s:?}: {v4} is not a host address"));
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Err(format!(
                    "address {s:?}: an IPv4-mapped IPv6 address; write the IPv4 address {v4}"
                ));
            }
            if v6.is_unspecified() || v6.is_multicast() {
                return Err(format!("address {s:?}: {v6} is not a host address"));
            }
        }
    }
    Ok(())
}

fn parse_principal(
    ctx: &mut Ctx<'_>,
    key: &Key<'_>,
    body: &DeTable<'_>,
) -> Option<(Principal, Vec<Origin>, Origin)> {
    let name = name_of(ctx, "principal", key);
    let context = format!("[principals.{}]", key.get_ref());
    // An unknown key is reported but does not hide the entry from the
    // cross-file checks (duplicates, references).
    ctx.unknown_keys(
        body,
        &["hosts", "logins", "max_ttl", "extensions", "require_reason"],
        &context,
    );
    let mut ok = true;
    let mut hosts = None;
    let mut host_origins = Vec::new();
    let mut hosts_origin = ctx.origin(&key.span());
    match get(body, "hosts") {
        None => ctx.err(
            key.span(),
            format!(
                "{context} needs hosts = \"*\", a list of host names, or a label table like {{ role = \"web\" }}"
            ),
        ),
        Some(v) => {
            hosts_origin = ctx.origin(&v.span());
            match v.get_ref() {
                DeValue::String(s) if s == "*" => hosts = Some(HostSelector::All),
                DeValue::String(s) => ctx.err(
                    v.span(),
                    format!(
                        "hosts = {s:?}: write \"*\" for every host, a list like [{s:?}], or a label table like {{ role = \"web\" }}"
                    ),
                ),
                DeValue::Array(_) => {
                    if let Some(list) = ctx.strings(v, "hosts") {
                        let mut names = Vec::new();
                        for (n, span) in list {
                            host_origins.push(ctx.origin(&span));
                            if let Err(e) = check_name("host", &n) {
                                ctx.err(span, e);
                                ok = false;
                            }
                            names.push(n);
                        }
                        if names.is_empty() {
                            ctx.err(v.span(), "hosts must not be an empty list (write \"*\" for every host)");
                            ok = false;
                        }
                        hosts = Some(HostSelector::Names(names));
                    }
                }
                DeValue::Table(t) => {
                    if t.is_empty() {
                        ctx.err(
                            v.span(),
                            "empty label selector: name at least one label, or write \"*\" for every host",
                        );
                    } else if let Some(l) = parse_labels(ctx, v, "hosts") {
                        hosts = Some(HostSelector::Labels(l));
                    }
                }
                other => ctx.err(
                    v.span(),
                    format!(
                        "hosts must be \"*\", a list of host names, or a label table, not {}",
                        type_name(other)
                    ),
                ),
            }
        }
    }
    let mut logins = None;
    match get(body, "logins") {
        None => ctx.err(
            key.span(),
            format!("{context} needs logins = [\"...\"], the local users it may log in as"),
        ),
        Some(v) => {
            if let Some(list) = ctx.strings(v, "logins") {
                if list.is_empty() {
                    ctx.err(
                        v.span(),
                        "logins must name at least one login, e.g. [\"deploy\"]",
                    );
                } else {
                    let mut out = Vec::new();
                    for (l, span) in list {
                        if let Err(e) = check_name("login", &l) {
                            ctx.err(span, e);
                            ok = false;
                        }
                        out.push(l);
                    }
                    logins = Some(out);
                }
            }
        }
    }
    let mut max_ttl = None;
    if let Some(v) = get(body, "max_ttl") {
        match ctx.string(v, "max_ttl") {
            Some(s) => match crate::util::parse_duration(&s) {
                Ok(d) if d.is_zero() => {
                    ctx.err(v.span(), "max_ttl must be above zero");
                    ok = false;
                }
                Ok(d) => max_ttl = Some(d),
                Err(e) => {
                    ctx.err(v.span(), format!("max_ttl: {e}"));
                    ok = false;
                }
            },
            None => ok = false,
        }
    }
    let mut extensions = vec!["permit-pty".to_string()];
    if let Some(v) = get(body, "extensions") {
        match ctx.strings(v, "extensions") {
            Some(list) => {
                extensions = Vec::new();
                for (e, span) in list {
                    if e.ends_with(RESERVED_EXTENSION_SUFFIX) {
                        ctx.err(
                            span,
                            format!(
                                "{e} is set by drawbridge itself (extensions named *{RESERVED_EXTENSION_SUFFIX} are reserved)"
                            ),
                        );
                        ok = false;
                    } else if !(OPENSSH_EXTENSIONS.contains(&e.as_str())
                        || (e.contains('@') && check_name("extension", &e).is_ok()))
                    {
                        ctx.err(
                            span,
                            format!(
                                "unknown extension {e:?} (OpenSSH knows: {}; vendor extensions contain '@')",
                                OPENSSH_EXTENSIONS.join(", ")
                            ),
                        );
                        ok = false;
                    }
                    extensions.push(e);
                }
            }
            None => ok = false,
        }
    }
    let mut require_reason = false;
    if let Some(v) = get(body, "require_reason") {
        match v.get_ref() {
            DeValue::Boolean(b) => require_reason = *b,
            other => {
                ctx.err(
                    v.span(),
                    format!(
                        "require_reason must be true or false, not {}",
                        type_name(other)
                    ),
                );
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    Some((
        Principal {
            name: name?,
            hosts: hosts?,
            logins: logins?,
            max_ttl,
            extensions,
            require_reason,
            origin: ctx.origin(&key.span()),
        },
        host_origins,
        hosts_origin,
    ))
}

/// A list of principal names, validated as names; returns the names and their origins.
fn principal_refs(
    ctx: &mut Ctx<'_>,
    v: &Val<'_>,
    ok: &mut bool,
) -> Option<(Vec<String>, Vec<Origin>)> {
    let list = ctx.strings(v, "principals");
    let Some(list) = list else {
        *ok = false;
        return None;
    };
    let mut names = Vec::new();
    let mut origins = Vec::new();
    for (n, span) in list {
        origins.push(ctx.origin(&span));
        names.push(n);
    }
    Some((names, origins))
}

fn parse_group(
    ctx: &mut Ctx<'_>,
    key: &Key<'_>,
    body: &DeTable<'_>,
) -> Option<(Group, Vec<Origin>)> {
    let name = name_of(ctx, "group", key);
    let context = format!("[groups.{}]", key.get_ref());
    // An unknown key is reported but does not hide the entry from the
    // cross-file checks (duplicates, references).
    ctx.unknown_keys(body, &["members", "principals"], &context);
    let mut ok = true;
    let mut members = Vec::new();
    if let Some(v) = get(body, "members") {
        match ctx.strings(v, "members") {
            Some(list) => {
                for (m, span) in list {
                    if let Err(e) = check_name("user", &m) {
                        ctx.err(span, e);
                        ok = false;
                    }
                    members.push(m);
                }
            }
            None => ok = false,
        }
    }
    let mut principals = None;
    match get(body, "principals") {
        None => ctx.err(
            key.span(),
            format!("{context} needs principals = [\"...\"], the roles its members hold"),
        ),
        Some(v) => {
            if let Some((names, origins)) = principal_refs(ctx, v, &mut ok) {
                if names.is_empty() {
                    ctx.err(v.span(), "principals must name at least one principal");
                    ok = false;
                }
                principals = Some((names, origins));
            }
        }
    }
    let (principals, origins) = principals?;
    if !ok {
        return None;
    }
    Some((
        Group {
            name: name?,
            members,
            principals,
            origin: ctx.origin(&key.span()),
        },
        origins,
    ))
}

fn parse_user(ctx: &mut Ctx<'_>, key: &Key<'_>, body: &DeTable<'_>) -> Option<(User, Vec<Origin>)> {
    let name = name_of(ctx, "user", key);
    let context = format!("[users.{}]", key.get_ref());
    // An unknown key is reported but does not hide the entry from the
    // cross-file checks (duplicates, references).
    ctx.unknown_keys(body, &["principals", "source"], &context);
    let mut ok = true;
    let mut principals = (Vec::new(), Vec::new());
    if let Some(v) = get(body, "principals")
        && let Some(p) = principal_refs(ctx, v, &mut ok)
    {
        principals = p;
    }
    let mut source = Vec::new();
    if let Some(v) = get(body, "source") {
        match ctx.strings(v, "source") {
            Some(list) => {
                for (s, span) in list {
                    match parse_source(&s) {
                        Ok(net) => source.push(net),
                        Err(e) => {
                            ctx.err(span, e);
                            ok = false;
                        }
                    }
                }
            }
            None => ok = false,
        }
    }
    if ok && get(body, "principals").is_none() && get(body, "source").is_none() {
        ctx.err(
            key.span(),
            format!("{context} needs principals, source, or both"),
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    Some((
        User {
            name: name?,
            principals: principals.0,
            source,
            origin: ctx.origin(&key.span()),
        },
        principals.1,
    ))
}

/// An address or CIDR block for `source`, in the form OpenSSH's source-address accepts.
pub fn parse_source(s: &str) -> Result<IpNet, String> {
    if s.contains('/') {
        match s.parse::<IpNet>() {
            Ok(net) if net.trunc() != net => Err(format!(
                "source {s:?} has host bits set; write the network {}",
                net.trunc()
            )),
            Ok(net) => Ok(net),
            Err(_) => Err(format!(
                "invalid CIDR {s:?} (write e.g. \"192.0.2.0/24\", \"2001:db8::/32\" or a single address)"
            )),
        }
    } else {
        match s.parse::<IpAddr>() {
            Ok(ip) => Ok(IpNet::from(ip)),
            Err(_) => Err(format!(
                "invalid address {s:?} (write e.g. \"192.0.2.7\", \"192.0.2.0/24\" or \"2001:db8::/32\")"
            )),
        }
    }
}

fn parse_temporary(
    ctx: &mut Ctx<'_>,
    span: Range<usize>,
    body: &DeTable<'_>,
) -> Option<(Temporary, Origin)> {
    // An unknown key is reported but does not hide the entry from the
    // cross-file checks (duplicates, references).
    ctx.unknown_keys(
        body,
        &["user", "principal", "until", "reason"],
        "[[temporary]]",
    );
    let mut ok = true;
    let user_v = required(ctx, body, &span, "user", "who gets the grant");
    let principal_v = required(ctx, body, &span, "principal", "the principal granted");
    let until_v = required(
        ctx,
        body,
        &span,
        "until",
        "when it ends, e.g. 2026-12-01T00:00:00Z",
    );
    let reason_v = required(ctx, body, &span, "reason", "why, e.g. an incident number");
    let user = user_v.and_then(|v| {
        let s = ctx.string(v, "user")?;
        match check_name("user", &s) {
            Ok(()) => Some(s),
            Err(e) => {
                ctx.err(v.span(), e);
                None
            }
        }
    });
    let principal = principal_v.and_then(|v| {
        let s = ctx.string(v, "principal")?;
        Some((s, ctx.origin(&v.span())))
    });
    let until = until_v.and_then(|v| ctx.time(v, "until"));
    let reason = reason_v.and_then(|v| {
        let s = ctx.string(v, "reason")?;
        if s.trim().is_empty() {
            ctx.err(v.span(), "reason must not be empty");
            return None;
        }
        Some(s)
    });
    let (principal, p_origin) = principal?;
    if user.is_none() || until.is_none() || reason.is_none() {
        ok = false;
    }
    if !ok {
        return None;
    }
    Some((
        Temporary {
            user: user?,
            principal,
            until: until?,
            reason: reason?,
            origin: ctx.origin(&span),
        },
        p_origin,
    ))
}

fn required<'v, 'i>(
    ctx: &mut Ctx<'_>,
    body: &'v DeTable<'i>,
    span: &Range<usize>,
    name: &str,
    help: &str,
) -> Option<&'v Val<'i>> {
    let v = get(body, name);
    if v.is_none() {
        ctx.err(span.clone(), format!("[[temporary]] needs {name} ({help})"));
    }
    v
}

fn parse_revoked(ctx: &mut Ctx<'_>, span: Range<usize>, body: &DeTable<'_>) -> Option<Revoked> {
    // An unknown key is reported but does not hide the entry from the
    // cross-file checks (duplicates, references).
    ctx.unknown_keys(body, &["serial", "key_id", "key", "reason"], "[[revoked]]");
    let mut ok = true;
    let mut serial = None;
    if let Some(v) = get(body, "serial") {
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix()).ok(),
            DeValue::String(s) if s.chars().all(|c| c.is_ascii_digit()) => s.parse::<u64>().ok(),
            _ => None,
        };
        match parsed {
            Some(0) => {
                ctx.err(v.span(), "serial 0 is never issued");
                ok = false;
            }
            Some(n) => serial = Some(n),
            None => {
                ctx.err(
                    v.span(),
                    "serial must be a certificate serial: an integer from 1 to 18446744073709551615 (or that number as a string)",
                );
                ok = false;
            }
        }
    }
    let mut key_id = None;
    if let Some(v) = get(body, "key_id") {
        match ctx.string(v, "key_id") {
            Some(s) if s.is_empty() => {
                ctx.err(v.span(), "key_id must not be empty");
                ok = false;
            }
            Some(s) => key_id = Some(s),
            None => ok = false,
        }
    }
    let mut key = None;
    if let Some(v) = get(body, "key") {
        match ctx.string(v, "key") {
            Some(s) => match revoked_key_fingerprint(&s) {
                Ok(f) => key = Some(f),
                Err(e) => {
                    ctx.err(v.span(), e);
                    ok = false;
                }
            },
            None => ok = false,
        }
    }
    let mut reason = None;
    if let Some(v) = get(body, "reason") {
        match ctx.string(v, "reason") {
            Some(s) => reason = Some(s),
            None => ok = false,
        }
    }
    if ok && serial.is_none() && key_id.is_none() && key.is_none() {
        ctx.err(
            span.clone(),
            "[[revoked]] needs serial, key_id or key (one or more)",
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(Revoked {
        serial,
        key_id,
        key,
        reason,
        origin: ctx.origin(&span),
    })
}

/// A revoked `key`: a public key line (`ssh-ed25519 AAAA... comment`) or its SHA-256
/// fingerprint (`SHA256:...`, as `ssh-keygen -lf KEY.pub` prints it). Returns the
/// fingerprint, the one form revocations are compared and listed in.
pub fn revoked_key_fingerprint(s: &str) -> Result<String, String> {
    let s = s.trim();
    if let Some(b64) = s.strip_prefix("SHA256:") {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64);
        return match decoded {
            // Re-encoded, so that the one canonical spelling is compared.
            Ok(bytes) if bytes.len() == 32 => Ok(format!(
                "SHA256:{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
            )),
            _ => Err(format!(
                "key {s:?} is not a SHA-256 fingerprint (SHA256: and 43 base64 characters, as ssh-keygen -lf KEY.pub prints)"
            )),
        };
    }
    match ssh_key::PublicKey::from_openssh(s) {
        Ok(k) if k.key_data().is_certificate() => {
            Err("key must be a public key or its fingerprint, not a certificate".to_string())
        }
        Ok(k) => Ok(k.fingerprint(ssh_key::HashAlg::Sha256).to_string()),
        Err(_) => Err(format!(
            "key {:?} is neither a public key line (\"ssh-ed25519 AAAA...\") nor a SHA-256 fingerprint (\"SHA256:...\")",
            s.chars().take(40).collect::<String>()
        )),
    }
}

/// Parses a time given as an RFC 3339 string with a time zone (`2026-12-01T00:00:00Z`).
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    match s.trim().parse::<toml::value::Datetime>() {
        Ok(dt) => datetime_to_system(&dt),
        Err(_) => Err(format!(
            "{s:?} is not a date and time (write RFC 3339, e.g. 2026-12-01T00:00:00Z)"
        )),
    }
}

fn datetime_to_system(dt: &toml::value::Datetime) -> Result<SystemTime, String> {
    let (Some(date), Some(time), Some(offset)) = (dt.date, dt.time, dt.offset) else {
        return Err(format!(
            "{dt} needs a date, a time and a time zone (e.g. 2026-12-01T00:00:00Z)"
        ));
    };
    let offset_minutes: i64 = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => i64::from(minutes),
    };
    let days = days_from_civil(
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
    );
    let secs = days * 86_400
        + i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        + i64::from(time.second)
        - offset_minutes * 60;
    let secs = u64::try_from(secs).map_err(|_| format!("{dt} is before 1970"))?;
    Ok(UNIX_EPOCH + Duration::new(secs, time.nanosecond.min(999_999_999)))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The closest of `options` to `word`, if close enough to be a likely typo.
pub(crate) fn suggest<'a>(word: &str, options: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    options
        .map(|o| (levenshtein(word, o), o))
        .filter(|(d, o)| *d <= 2.max(o.len() / 4) && *d < o.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| o)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// "known: a, b, c" for messages, shortened for big policies.
pub(crate) fn known_list<'a>(word: &str, names: impl Iterator<Item = &'a str> + Clone) -> String {
    let count = names.clone().count();
    if count == 0 {
        return "none are defined".to_string();
    }
    if count <= 20 {
        return format!("known: {}", names.collect::<Vec<_>>().join(", "));
    }
    let mut scored: Vec<(usize, &str)> = names.map(|n| (levenshtein(word, n), n)).collect();
    scored.sort();
    let closest: Vec<&str> = scored.iter().take(5).map(|(_, n)| *n).collect();
    format!("closest of {count} known: {}", closest.join(", "))
}

fn at(o: &Origin) -> String {
    format!("{}:{}:{}", o.file, o.line, o.column)
}

fn err_at(errors: &mut Vec<LoadError>, o: &Origin, message: String) {
    errors.push(LoadError {
        file: o.file.clone(),
        line: o.line,
        column: o.column,
        message,
    });
}

/// Merges the files' definitions, reporting duplicates and dangling references.
fn assemble(raw: Raw, errors: &mut Vec<LoadError>) -> Policy {
    let mut policy = Policy::default();
    for h in raw.hosts {
        if let Some(prev) = policy.hosts.get(&h.name) {
            let msg = format!(
                "host {:?} is already defined at {}",
                h.name,
                at(&prev.origin)
            );
            err_at(errors, &h.origin, msg);
        } else {
            policy.hosts.insert(h.name.clone(), h);
        }
    }
    let mut principal_refs = Vec::new();
    for (p, host_origins, hosts_origin) in raw.principals {
        if let Some(prev) = policy.principals.get(&p.name) {
            let msg = format!(
                "principal {:?} is already defined at {}",
                p.name,
                at(&prev.origin)
            );
            err_at(errors, &p.origin, msg);
        } else {
            principal_refs.push((p.name.clone(), host_origins, hosts_origin));
            policy.principals.insert(p.name.clone(), p);
        }
    }
    // Principal → hosts references.
    for (name, host_origins, hosts_origin) in principal_refs {
        let Some(p) = policy.principals.get(&name) else {
            continue;
        };
        match &p.hosts {
            HostSelector::All => {}
            HostSelector::Names(names) => {
                for (n, o) in names.iter().zip(host_origins.iter()) {
                    if !policy.hosts.contains_key(n) {
                        let known = known_list(n, policy.hosts.keys().map(String::as_str));
                        err_at(errors, o, format!("unknown host {n:?} ({known})"));
                    }
                }
            }
            HostSelector::Labels(sel) => {
                let any = policy
                    .hosts
                    .values()
                    .any(|h| sel.iter().all(|(k, v)| h.labels.get(k) == Some(v)));
                if !any {
                    let in_use: BTreeSet<String> = policy
                        .hosts
                        .values()
                        .flat_map(|h| h.labels.iter().map(|(k, v)| format!("{k}={v}")))
                        .collect();
                    let shown: Vec<&str> = in_use.iter().take(30).map(String::as_str).collect();
                    let more = if in_use.len() > 30 { ", ..." } else { "" };
                    err_at(
                        errors,
                        &hosts_origin,
                        format!(
                            "label selector {} matches no host (labels in use: {}{more})",
                            selector_text(sel),
                            if shown.is_empty() {
                                "none".to_string()
                            } else {
                                shown.join(", ")
                            }
                        ),
                    );
                }
            }
        }
    }
    let check_principal = |errors: &mut Vec<LoadError>, policy: &Policy, n: &str, o: &Origin| {
        if !policy.principals.contains_key(n) {
            let known = known_list(n, policy.principals.keys().map(String::as_str));
            err_at(errors, o, format!("unknown principal {n:?} ({known})"));
        }
    };
    for (g, origins) in raw.groups {
        for (n, o) in g.principals.iter().zip(origins.iter()) {
            check_principal(errors, &policy, n, o);
        }
        if let Some(prev) = policy.groups.get(&g.name) {
            let msg = format!(
                "group {:?} is already defined at {}",
                g.name,
                at(&prev.origin)
            );
            err_at(errors, &g.origin, msg);
        } else {
            policy.groups.insert(g.name.clone(), g);
        }
    }
    for (u, origins) in raw.users {
        for (n, o) in u.principals.iter().zip(origins.iter()) {
            check_principal(errors, &policy, n, o);
        }
        if let Some(prev) = policy.users.get(&u.name) {
            let msg = format!(
                "user {:?} is already defined at {}",
                u.name,
                at(&prev.origin)
            );
            err_at(errors, &u.origin, msg);
        } else {
            policy.users.insert(u.name.clone(), u);
        }
    }
    for (t, o) in raw.temporary {
        check_principal(errors, &policy, &t.principal, &o);
        policy.temporary.push(t);
    }
    policy.revoked = raw.revoked;
    policy
}

/// `{ env = "prod", role = "web" }`.
pub fn selector_text(sel: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = sel.iter().map(|(k, v)| format!("{k} = {v:?}")).collect();
    format!("{{ {} }}", parts.join(", "))
}
