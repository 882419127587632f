//! The entry point for fuzzing: [`check_untrusted_bytes`] feeds arbitrary bytes to the
//! reader, the verifier and the exports, as `drawbridge verify`, `replay` and `export` do
//! with a file someone may have tampered with. The cargo-fuzz target in `fuzz/` calls it, and
//! so does a unit test that runs it on thousands of deterministic mutations of a valid
//! recording, so CI exercises the same paths without a nightly toolchain.
//!
//! It panics when the code under test panics, and also when the reader and the verifier
//! disagree about the same bytes: that is the signal a fuzzer looks for.

use std::io;
use std::path::Path;

use super::{KeyRing, VerifyReport, export, read_bytes, verify_bytes};

/// Public key (raw 32 bytes) of the fixed key that signed the fuzz seed recording in
/// `fuzz/seeds/`, so that mutated inputs reach the signature checks under a key id the
/// ring knows rather than stopping at "unknown key id". Its private half is a test key (the
/// Ed25519 seed of 32 bytes `0x5e`) that protects nothing.
pub const SEED_PUBLIC_KEY: [u8; 32] = [
    0x81, 0x46, 0x64, 0x0f, 0x02, 0x49, 0x3a, 0xf4, 0xfb, 0xc5, 0x4f, 0xe3, 0x33, 0x88, 0xe7, 0x5d,
    0xc2, 0xc9, 0x37, 0xae, 0x0b, 0x77, 0x27, 0xcc, 0x2b, 0x2a, 0xfb, 0x1b, 0x75, 0x19, 0x9a, 0x3e,
];

/// The key ring [`check_untrusted_bytes`] verifies with: [`SEED_PUBLIC_KEY`] alone.
pub fn seed_key_ring() -> KeyRing {
    let mut ring = KeyRing::new();
    // Cannot fail: the constant has the 32 bytes `insert` checks for.
    ring.insert(&SEED_PUBLIC_KEY)
        .expect("SEED_PUBLIC_KEY is 32 bytes");
    ring
}

/// Reads, verifies and exports `bytes` as a recording; returns the verifier's report.
///
/// Panics if any of them panics, or if the reader and the verifier disagree: a file the
/// verifier accepts must load, and a file that loads must have the records and torn tail
/// the verifier counted (both walk the same frames).
pub fn check_untrusted_bytes(bytes: &[u8]) -> VerifyReport {
    let name = Path::new("<untrusted>");
    let report = verify_bytes(name, bytes, &seed_key_ring());
    match read_bytes(name, bytes) {
        Ok(recording) => {
            assert_eq!(
                recording.records.len() as u64,
                report.records,
                "reader and verifier count different records"
            );
            assert_eq!(
                recording.torn_tail, report.torn_tail,
                "reader and verifier disagree on the torn tail"
            );
            // Writing to a sink cannot fail, so an error here is a bug in the export.
            let cast = export::asciicast(&recording, &mut io::sink());
            assert!(cast.is_ok(), "asciicast export failed: {cast:?}");
            let lines = export::jsonl(&recording, &mut io::sink());
            assert!(lines.is_ok(), "jsonl export failed: {lines:?}");
        }
        Err(e) => assert!(
            !report.ok(),
            "the verifier accepts what the reader rejects: {e}"
        ),
    }
    report
}
