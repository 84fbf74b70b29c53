//! The client's decoding of GitHub's answers and `parse_time`; the checks are in
//! `harness/github_responses.rs`.
#![no_main]

#[path = "../harness/github_responses.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
