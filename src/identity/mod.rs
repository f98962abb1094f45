//! Who is calling: password users (argon2id), drawbridge tokens, OIDC ID tokens.
//!
//! SKELETON: the identity work fills this in.

pub mod cmd;
