//! The `warden` binary: all behaviour lives in the library.

fn main() -> std::process::ExitCode {
    warden::cli::main()
}
