//! The `audit` command-line tool: tail, query and record audit entries, and check the server's
//! health. See `audit --help`.

#![forbid(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
