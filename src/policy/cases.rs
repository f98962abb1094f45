//! `policy test`: expectations in `DIR/tests/*.toml`.
