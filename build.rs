//! Build script: compiles `proto/recording.proto` into Rust with `protox` (a pure-Rust
//! protobuf compiler, so no `protoc` binary is needed) and `prost-build`. The generated
//! module lands in `$OUT_DIR/drawbridge.recording.v2.rs` and is included by
//! `src/recording/mod.rs`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/recording.proto");
    let fds = protox::compile(["proto/recording.proto"], ["proto"])?;
    prost_build::Config::new()
        // Session data as `Bytes`: the relay's buffer is recorded without a copy.
        .bytes([".drawbridge.recording.v2.Data.data"])
        .compile_fds(fds)?;
    Ok(())
}
