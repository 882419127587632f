//! Arbitrary bytes as a recording file: the reader, the verifier and the exports must never
//! panic, and must agree with each other (`drawbridge::recording::fuzz`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    drawbridge::recording::fuzz::check_untrusted_bytes(data);
});
