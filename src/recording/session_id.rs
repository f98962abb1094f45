//! The id of a recorded session: random, URL-safe, at most 32 characters. It names the
//! recording file (`ID.cast`), so one parsed from the command line must never be able to
//! name another path.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The longest id accepted (generated ids are 22 characters).
pub const MAX_LEN: usize = 32;

/// A session id: 1 to 32 of `A-Z a-z 0-9 - _`, not starting with `-` (so it is never
/// read as an option, a path, `.` or `..`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

/// Why a string is not a session id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionIdError {
    #[error("a session id is not empty")]
    Empty,
    #[error("a session id has at most {MAX_LEN} characters")]
    TooLong,
    #[error("a session id has only letters, digits, '-' and '_' (and does not start with '-')")]
    BadCharacter,
    #[error("no randomness available: {0}")]
    Random(String),
}

impl SessionId {
    /// A fresh id: 128 random bits, base64url without padding (22 characters).
    pub fn random() -> Result<SessionId, SessionIdError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| SessionIdError::Random(e.to_string()))?;
        let mut s = URL_SAFE_NO_PAD.encode(bytes);
        // A leading '-' would read as an option on the command line.
        if s.starts_with('-') {
            s.replace_range(0..1, "A");
        }
        Ok(SessionId(s))
    }

    /// Checks a session id from outside (the command line, a record, a file name).
    pub fn parse(s: &str) -> Result<SessionId, SessionIdError> {
        if s.is_empty() {
            return Err(SessionIdError::Empty);
        }
        if s.len() > MAX_LEN {
            return Err(SessionIdError::TooLong);
        }
        if s.starts_with('-')
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(SessionIdError::BadCharacter);
        }
        Ok(SessionId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SessionId {
    type Err = SessionIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_url_safe_distinct_and_parse() {
        let a = SessionId::random().unwrap();
        let b = SessionId::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 22);
        assert_eq!(SessionId::parse(a.as_str()).unwrap(), a);
    }

    #[test]
    fn ids_that_could_name_another_path_are_refused() {
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "../x",
            "a.cast",
            "-rf",
            "a b",
            "é",
            "a\0",
            &"a".repeat(33),
        ] {
            assert!(SessionId::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "Zx_9-", &"a".repeat(32)] {
            assert!(SessionId::parse(good).is_ok(), "{good:?} refused");
        }
    }
}
