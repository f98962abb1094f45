//! The spanned-TOML walker: the policy (and `policy test` cases) are parsed with spans
//! ([`toml::de::DeTable`]) and walked by hand, so that every error names its file, line
//! and column, unknown keys are errors wherever they are, and every error of a run is
//! collected ([`Ctx`]) rather than stopping at the first.

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::SystemTime;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::values::{datetime_to_system, parse_time};
use super::{LoadError, Origin};

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

pub(crate) type Key<'i> = Spanned<std::borrow::Cow<'i, str>>;
pub(crate) type Val<'i> = Spanned<DeValue<'i>>;

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

pub(super) fn get<'v, 'i>(t: &'v DeTable<'i>, key: &str) -> Option<&'v Val<'i>> {
    t.iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v)
}

/// `[SECTION.NAME]` tables: calls `each` with the name key and the body.
pub(super) fn named_sections<'i>(
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
pub(super) fn array_sections<'i>(
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
