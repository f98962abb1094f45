//! The `ca/` key files and certificate signing: the only code that opens a CA private key.
//!
//! SKELETON: the issuer work fills this in.

pub mod cmd;
