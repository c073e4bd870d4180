//! Audit server binary.
fn main() {}
