//! Replays the saved inputs of the fuzz targets `webhook` and `github_responses` (`fuzz/corpus`
//! and `fuzz/regressions`) through the very checks the targets run, without libFuzzer: every
//! crash fuzzing found stays fixed. Fuzzing itself: README.md, "Fuzzing".

#[path = "../../../fuzz/harness/github_responses.rs"]
mod github_responses;
#[path = "../../../fuzz/harness/replay.rs"]
mod replay;
#[path = "../../../fuzz/harness/webhook.rs"]
mod webhook;

#[test]
fn the_webhook_corpus_replays() {
    replay::replay("webhook", webhook::check);
}

#[test]
fn the_github_responses_corpus_replays() {
    replay::replay("github_responses", github_responses::check);
}
