//! The one rule for names: users, principals, groups, hosts, logins and labels in the
//! policy, password users (`user add`), and the user a token or an identity provider
//! names. A name any of them accepts can be named in the policy, and the other way round.

use super::spanned::{Ctx, Key};

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

pub(super) fn name_of(ctx: &mut Ctx<'_>, kind: &str, key: &Key<'_>) -> Option<String> {
    let name = key.get_ref().to_string();
    match check_name(kind, &name) {
        Ok(()) => Some(name),
        Err(e) => {
            ctx.err(key.span(), e);
            None
        }
    }
}
