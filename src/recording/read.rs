//! Reading recordings back (placeholder, filled in by the `session` commands).
