//! The `drawbridge` binary: parse the command line and hand over to [`drawbridge::cli`].

/// Every proxied request allocates and frees buffers, headers and recording
/// events on the relay threads; glibc's allocator spent 5–6% of the gateway's
/// CPU on them (consolidating its free lists among it), mimalloc's thread-local
/// free lists far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    drawbridge::cli::main()
}
