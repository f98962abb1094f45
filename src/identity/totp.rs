//! TOTP (RFC 6238), the second factor of password users.
//!
//! A user enrolled with `drawbridge user add NAME --totp` (or `user totp NAME`) has a
//! 160-bit random secret in the users file (base32, mode 0600 as the password hashes).
//! Codes are the common authenticator-app kind: HMAC-SHA1, 6 digits, 30 s steps. A code is
//! accepted for the current step and one step either side (clock skew), never two; each
//! accepted step is claimed in [`UsedCodes`](super::used_codes::UsedCodes), so a code
//! works once per user.

use totp_rs::{Algorithm, Builder, Secret as TotpSecret, Totp};

/// Seconds per step.
pub const STEP_SECS: u64 = 30;
/// Digits per code.
pub const DIGITS: u8 = 6;
/// Random secret bytes (160 bits, RFC 4226's recommendation).
pub const SECRET_BYTES: usize = 20;
/// The issuer shown by authenticator apps.
pub const ISSUER: &str = "drawbridge";

/// A new random secret, base32 as stored in the users file.
pub fn new_secret() -> Result<String, String> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| format!("random: {e}"))?;
    Ok(TotpSecret::new(Box::new(bytes)).to_base32())
}

fn totp(user: &str, secret_b32: &str) -> Result<Totp, String> {
    let secret = TotpSecret::try_from_base32(secret_b32)
        .map_err(|e| format!("stored TOTP secret unreadable: {e:?}"))?;
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(DIGITS)
        .with_skew(1)
        .with_step_duration(STEP_SECS)
        .with_secret(secret)
        .with_account_name(user)
        .with_issuer(Some(ISSUER))
        .build()
        .map_err(|e| format!("TOTP: {e:?}"))
}

/// The `otpauth://totp/...` URI an authenticator app reads.
pub fn otpauth_uri(user: &str, secret_b32: &str) -> Result<String, String> {
    totp(user, secret_b32)?
        .to_url()
        .map_err(|e| format!("TOTP URI: {e:?}"))
}

/// The step a code is valid for at `now_secs` (the current one, or one either side), or
/// `None`. Anything but exactly [`DIGITS`] ASCII digits is refused before any comparison.
pub fn matching_step(user: &str, secret_b32: &str, code: &str, now_secs: u64) -> Option<u64> {
    if code.len() != usize::from(DIGITS) || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    totp(user, secret_b32).ok()?.check(code, now_secs)
}

/// The code of the step holding `at_secs` (for tests and the enrolment check).
pub fn code_at(user: &str, secret_b32: &str, at_secs: u64) -> Result<String, String> {
    Ok(totp(user, secret_b32)?.generate(at_secs).to_string())
}

/// `text` as a QR code drawn with Unicode half blocks, for a terminal.
pub fn terminal_qr(text: &str) -> Result<String, String> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| format!("QR code: {e}"))?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_their_step_and_one_either_side_only() {
        let s = new_secret().unwrap();
        let now = 1_800_000_000u64;
        let step = now / STEP_SECS;
        for (offset, ok) in [(-2i64, false), (-1, true), (0, true), (1, true), (2, false)] {
            let at = (step as i64 + offset) as u64 * STEP_SECS;
            let code = code_at("alice", &s, at).unwrap();
            let got = matching_step("alice", &s, &code, now);
            if ok {
                assert_eq!(got, Some(at / STEP_SECS), "offset {offset}");
            } else {
                // A code two steps away may collide with a nearer one by chance (1 in 10^6).
                assert_ne!(got, Some(at / STEP_SECS), "offset {offset}");
            }
        }
    }

    #[test]
    fn malformed_codes_never_match() {
        let s = new_secret().unwrap();
        for c in ["", "12345", "1234567", "12345a", " 12345", "１２３４５６"] {
            assert_eq!(matching_step("alice", &s, c, 1_800_000_000), None, "{c:?}");
        }
    }

    #[test]
    fn uri_and_qr_code() {
        let s = new_secret().unwrap();
        let uri = otpauth_uri("alice", &s).unwrap();
        assert!(uri.starts_with("otpauth://totp/drawbridge:alice?"), "{uri}");
        assert!(uri.contains(&format!("secret={s}")), "{uri}");
        let qr = terminal_qr(&uri).unwrap();
        assert!(qr.lines().count() > 10);
    }
}
