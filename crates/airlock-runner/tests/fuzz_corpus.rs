//! Replays the saved inputs of the fuzz target `jit` (`fuzz/corpus` and `fuzz/regressions`)
//! through the very checks the target runs, without libFuzzer: every crash fuzzing found stays
//! fixed. Fuzzing itself: README.md, "Fuzzing".

#[path = "../../../fuzz/harness/jit.rs"]
mod jit;
#[path = "../../../fuzz/harness/replay.rs"]
mod replay;

#[test]
fn the_jit_corpus_replays() {
    replay::replay("jit", jit::check);
}
