//! Rust client for the audit service.
