//! Webhook signature check and payload parsing; the checks are in `harness/webhook.rs`.
#![no_main]

#[path = "../harness/webhook.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
