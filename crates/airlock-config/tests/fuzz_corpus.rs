//! Replays the saved inputs of the fuzz target `config` (`fuzz/corpus` and `fuzz/regressions`)
//! through the very checks the target runs, without libFuzzer: every crash fuzzing found stays
//! fixed. Fuzzing itself: README.md, "Fuzzing".

#[path = "../../../fuzz/harness/config.rs"]
mod config;
#[path = "../../../fuzz/harness/replay.rs"]
mod replay;

#[test]
fn the_config_corpus_replays() {
    let dir = tempfile::tempdir().unwrap();
    config::prepare(dir.path());
    replay::replay("config", |data| config::check(dir.path(), data));
}
