//! Integration tests live in tests/tests/*.rs; this crate has no code of its own.
