//! The `drawbridge` binary: parse the command line and hand over to [`drawbridge::cli`].

fn main() -> std::process::ExitCode {
    drawbridge::cli::main()
}
