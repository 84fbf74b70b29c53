//! Config loading and validation; the checks are in `harness/config.rs`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

#[path = "../harness/config.rs"]
mod harness;

/// The files configs name, made once per process in a directory every run shares.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join("airlock-fuzz-config");
        harness::prepare(&d);
        d
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(dir(), data));
