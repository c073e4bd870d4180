//! The `audit` command-line tool.
fn main() {}
