//! Feeds every saved input of a fuzz target (`fuzz/corpus/TARGET` and `fuzz/regressions/TARGET`)
//! through that target's checks, without libFuzzer: the replay tests of the main workspace
//! include this file, and the target's harness module, with `#[path]`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Runs `check` on each input; fails naming every input that panicked, or when there is none.
pub fn replay(target: &str, check: impl Fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let inputs = |dir: &str| -> Vec<PathBuf> {
        match std::fs::read_dir(fuzz.join(dir).join(target)) {
            Ok(entries) => entries
                .map(|e| e.expect("read a corpus entry").path())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("cannot list fuzz/{dir}/{target}: {e}"),
        }
    };
    let mut inputs: Vec<PathBuf> = [inputs("corpus"), inputs("regressions")].concat();
    inputs.sort();
    assert!(
        !inputs.is_empty(),
        "fuzz/corpus/{target} and fuzz/regressions/{target} are empty: is the corpus missing?"
    );
    let mut failed = Vec::new();
    for path in &inputs {
        let data = match std::fs::read(path) {
            Ok(data) => data,
            // A fuzzer running meanwhile replaces inputs with smaller ones.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("cannot read {}: {e}", path.display()),
        };
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs of {target} failed:\n{}",
        failed.len(),
        inputs.len(),
        failed.join("\n")
    );
}
