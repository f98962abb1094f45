//! The OpenSSH `allowed_signers` file: who may sign the policy commits.
//!
//! One signer per line, as `ssh-keygen -Y verify` reads it:
//! `PRINCIPALS [OPTIONS] KEYTYPE BASE64 [COMMENT]`. PRINCIPALS is a comma-separated list of
//! patterns (`*`, `?`, `!` to negate) matched against the committer's e-mail address.
//! OPTIONS understood: `namespaces="..."` (patterns; the line applies only when `git`
//! matches), `valid-after="..."` and `valid-before="..."` (`YYYYMMDD[HHMM[SS]]Z`, UTC: a
//! time without the `Z` would depend on the host's time zone and is refused),
//! `no-touch-required` and `verify-required` (a security key's user presence and
//! verification flags, as `ssh-keygen -Y verify` reads them). Any other
//! option (`cert-authority` among them) makes the whole file an error: a line that
//! says more than we check must never be read as if it said less.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use ssh_key::PublicKey;

/// The namespace Git signs commits in.
pub const GIT_NAMESPACE: &str = "git";

/// At most this many bytes are read from an allowed_signers file.
const MAX_FILE: u64 = 1 << 20;

/// One line of the file.
#[derive(Debug, Clone)]
pub struct Signer {
    /// `file:line`, for messages.
    pub at: String,
    pub principals: Vec<String>,
    pub namespaces: Option<Vec<String>>,
    /// Seconds since the epoch, UTC.
    pub valid_after: Option<u64>,
    pub valid_before: Option<u64>,
    /// `no-touch-required`: a security key's signature made without a touch counts.
    pub no_touch_required: bool,
    /// `verify-required`: a security key's signature must carry user verification (PIN).
    pub verify_required: bool,
    pub key: PublicKey,
}

/// Every line of an allowed_signers file.
#[derive(Debug, Clone)]
pub struct AllowedSigners {
    pub signers: Vec<Signer>,
}

/// Why a key is not allowed, in words for the audit and the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAllowed {
    /// No line holds this key.
    UnknownKey,
    /// Lines hold the key, but none for this committer, namespace or time: why each one
    /// does not apply.
    NoLineApplies(Vec<String>),
}

impl AllowedSigners {
    /// Reads and parses `path`; every bad line is reported (`file:line: message`).
    pub fn load(path: &Path) -> Result<AllowedSigners, Vec<String>> {
        use std::io::Read;
        let name = path.display().to_string();
        let file = std::fs::File::open(path)
            .map_err(|e| vec![format!("{name}: cannot read the allowed signers: {e}")])?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| vec![format!("{name}: cannot read the allowed signers: {e}")])?;
        if bytes.len() as u64 > MAX_FILE {
            return Err(vec![format!("{name}: larger than {MAX_FILE} bytes")]);
        }
        let text = String::from_utf8(bytes).map_err(|_| vec![format!("{name}: not UTF-8")])?;
        Self::parse(&name, &text)
    }

    /// Parses the file's text; `name` names it in messages.
    pub fn parse(name: &str, text: &str) -> Result<AllowedSigners, Vec<String>> {
        let mut signers = Vec::new();
        let mut errors = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{name}:{}", i + 1);
            match parse_line(&at, line) {
                Ok(s) => signers.push(s),
                Err(e) => errors.push(format!("{at}: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(AllowedSigners { signers })
        } else {
            Err(errors)
        }
    }

    /// The line that lets `key` sign a commit by `committer_email` at `now`, or why none
    /// does.
    pub fn allow(
        &self,
        key: &ssh_key::public::KeyData,
        committer_email: &str,
        now: SystemTime,
    ) -> Result<&Signer, NotAllowed> {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut why = Vec::new();
        for s in self.signers.iter().filter(|s| s.key.key_data() == key) {
            if !pattern_list_matches(&s.principals, committer_email) {
                why.push(format!(
                    "{}: the key is allowed for {}, not for the committer \"{}\"",
                    s.at,
                    s.principals.join(","),
                    crate::util::shown(committer_email)
                ));
            } else if s
                .namespaces
                .as_ref()
                .is_some_and(|ns| !pattern_list_matches(ns, GIT_NAMESPACE))
            {
                why.push(format!(
                    "{}: the key is not allowed to sign in the namespace \"git\"",
                    s.at
                ));
            } else if s.valid_after.is_some_and(|t| now < t) {
                why.push(format!("{}: the key is not valid yet (valid-after)", s.at));
            } else if s.valid_before.is_some_and(|t| now >= t) {
                why.push(format!(
                    "{}: the key is no longer valid (valid-before)",
                    s.at
                ));
            } else {
                return Ok(s);
            }
        }
        if why.is_empty() {
            Err(NotAllowed::UnknownKey)
        } else {
            Err(NotAllowed::NoLineApplies(why))
        }
    }
}

fn parse_line(at: &str, line: &str) -> Result<Signer, String> {
    let mut tokens = tokens(line)?;
    if tokens.len() < 3 {
        return Err("expected PRINCIPALS [OPTIONS] KEYTYPE KEY".into());
    }
    let principals: Vec<String> = tokens.remove(0).split(',').map(str::to_string).collect();
    if principals.iter().any(String::is_empty) {
        return Err("an empty principal".into());
    }
    let (mut namespaces, mut valid_after, mut valid_before) = (None, None, None);
    let (mut no_touch_required, mut verify_required) = (false, false);
    if !is_key_type(&tokens[0]) {
        let options = tokens.remove(0);
        for opt in split_options(&options)? {
            let (name, value) = match opt.split_once('=') {
                Some((n, v)) => (n.to_ascii_lowercase(), Some(unquote(v)?)),
                None => (opt.to_ascii_lowercase(), None),
            };
            match (name.as_str(), value) {
                ("namespaces", Some(v)) => {
                    namespaces = Some(v.split(',').map(str::to_string).collect());
                }
                ("valid-after", Some(v)) => valid_after = Some(parse_time(&v)?),
                ("valid-before", Some(v)) => valid_before = Some(parse_time(&v)?),
                ("no-touch-required", None) => no_touch_required = true,
                ("verify-required", None) => verify_required = true,
                ("cert-authority", _) => {
                    return Err("the option cert-authority is not supported: list each \
                                signer's own key"
                        .into());
                }
                (other, _) => {
                    return Err(format!(
                        "the option {other:?} is not understood (understood: namespaces, \
                         valid-after, valid-before, no-touch-required, verify-required); the \
                         line is refused rather than read without it"
                    ));
                }
            }
        }
    }
    if tokens.len() < 2 || !is_key_type(&tokens[0]) {
        return Err(
            "expected a key type (ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa, ...) \
                    and a key after the principals and options"
                .into(),
        );
    }
    let key = PublicKey::from_openssh(&format!("{} {}", tokens[0], tokens[1]))
        .map_err(|e| format!("the key does not parse: {e}"))?;
    Ok(Signer {
        at: at.to_string(),
        principals,
        namespaces,
        valid_after,
        valid_before,
        no_touch_required,
        verify_required,
        key,
    })
}

fn is_key_type(t: &str) -> bool {
    t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-")
}

/// Splits on unquoted whitespace (quotes kept in the token).
fn tokens(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if quoted {
        return Err("an unterminated quote".into());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// Splits the options on unquoted commas.
fn split_options(options: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in options.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    if out.iter().any(String::is_empty) {
        return Err("an empty option".into());
    }
    Ok(out)
}

fn unquote(v: &str) -> Result<String, String> {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) if !inner.contains('"') => Ok(inner.to_string()),
        _ => Err(format!("the value {v:?} must be in double quotes")),
    }
}

/// `YYYYMMDD[HHMM[SS]]Z` as seconds since the epoch.
fn parse_time(v: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "the time {v:?} is not YYYYMMDD[HHMM[SS]]Z (UTC, with the Z: a time without it \
             would depend on this host's time zone)"
        )
    };
    let digits = v.strip_suffix('Z').ok_or_else(bad)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| digits.get(r).and_then(|s| s.parse::<u64>().ok());
    let year = num(0..4).ok_or_else(bad)?;
    let month = num(4..6).ok_or_else(bad)?;
    let day = num(6..8).ok_or_else(bad)?;
    let hour = num(8..10).unwrap_or(0);
    let minute = num(10..12).unwrap_or(0);
    let second = num(12..14).unwrap_or(0);
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(bad());
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian; year >= 1970).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// OpenSSH's pattern-list rule: a negated pattern (`!p`) that matches refuses; otherwise
/// any positive pattern that matches accepts.
fn pattern_list_matches(patterns: &[String], s: &str) -> bool {
    let mut matched = false;
    for p in patterns {
        if let Some(neg) = p.strip_prefix('!') {
            if glob(neg.as_bytes(), s.as_bytes()) {
                return false;
            }
        } else if glob(p.as_bytes(), s.as_bytes()) {
            matched = true;
        }
    }
    matched
}

/// `*` and `?` wildcards, case-sensitive.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn lines_with_options_parse() {
        let text = format!(
            "# a comment\n\nalice@example.org,bob@* namespaces=\"git,file\",valid-after=\"20260101Z\",valid-before=\"202701010000Z\" {KEY} alice\n"
        );
        let a = AllowedSigners::parse("f", &text).unwrap();
        let s = &a.signers[0];
        assert_eq!(s.principals, ["alice@example.org", "bob@*"]);
        assert_eq!(s.namespaces.as_deref().unwrap(), ["git", "file"]);
        assert_eq!(s.valid_after, Some(1_767_225_600));
        assert_eq!(s.valid_before, Some(1_798_761_600));
    }

    #[test]
    fn unknown_options_and_local_times_are_refused_by_line() {
        for (line, want) in [
            (
                format!("a cert-authority {KEY}"),
                "cert-authority is not supported",
            ),
            (format!("a no-touch {KEY}"), "not understood"),
            (format!("a valid-before=\"20270101\" {KEY}"), "with the Z"),
            (format!("a namespaces=git {KEY}"), "double quotes"),
            ("a ssh-ed25519 AAAA".to_string(), "does not parse"),
        ] {
            let e = AllowedSigners::parse("f", &format!("\n{line}\n")).unwrap_err();
            assert!(
                e[0].starts_with("f:2: ") && e[0].contains(want),
                "{line}: {e:?}"
            );
        }
    }

    #[test]
    fn patterns_match_like_openssh() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(pattern_list_matches(
            &l(&["*@example.org"]),
            "a@example.org"
        ));
        assert!(!pattern_list_matches(
            &l(&["*@example.org", "!eve@*"]),
            "eve@example.org"
        ));
        assert!(pattern_list_matches(&l(&["a?c"]), "abc"));
        assert!(!pattern_list_matches(&l(&["a?c"]), "abbc"));
        assert!(!pattern_list_matches(&l(&["!x"]), "y"));
    }
}
