//! `drawbridge session list|play|watch` (placeholder).
