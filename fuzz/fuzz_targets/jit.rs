//! The stand-in runner's JIT config decoding; the checks are in `harness/jit.rs`.
#![no_main]

#[path = "../harness/jit.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
