//! The store's hot calls, one after another on a real file (`cargo bench -p airlock-store`):
//! what a burst's webhooks, creates and teardowns each cost on the one connection every caller
//! shares. Size: AIRLOCK_BENCH_N (default 2,000 jobs and runners).

use std::time::Instant;

use airlock_core::{BackendKind, JobObservation, JobStatus, Labels, RunnerState};
use airlock_store::Store;

fn per_call(what: &str, n: usize, mut f: impl FnMut(usize)) {
    let t0 = Instant::now();
    for i in 0..n {
        f(i);
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("{what:<44} {us:>8.1} µs a call");
}

fn main() {
    let n: usize = std::env::var("AIRLOCK_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
    let store = Store::open(&dir.path().join("airlock.db")).unwrap();
    let labels: Labels = serde_json::from_str(r#"["self-hosted","burst"]"#).unwrap();
    let job = |i: usize, status: JobStatus| JobObservation {
        id: 1_000_000 + i as u64,
        run_id: 7,
        repo: "octo/hello".into(),
        enterprise: None,
        name: format!("j{i}"),
        labels: labels.clone(),
        status,
        conclusion: None,
        runner_name: None,
        created_at: Some(1),
        started_at: None,
        completed_at: None,
    };
    let now = 1_700_000_000_000;
    println!("== the store, {n} of each, one after another");
    per_call("webhook: a new queued job", n, |i| {
        store
            .ingest_delivery(
                &format!("q{i}"),
                "workflow_job",
                Some("queued"),
                Some(&job(i, JobStatus::Queued)),
                now,
            )
            .unwrap();
    });
    per_call("webhook: the job in progress", n, |i| {
        store
            .ingest_delivery(
                &format!("p{i}"),
                "workflow_job",
                Some("in_progress"),
                Some(&job(i, JobStatus::InProgress)),
                now,
            )
            .unwrap();
    });
    per_call("create: insert_runner", n, |i| {
        let r = format!("airlock-burst-{i}");
        store
            .insert_runner(
                &r,
                "burst",
                "repo:octo/hello",
                &r,
                BackendKind::Process,
                now,
            )
            .unwrap();
        store.set_runner_registration(&r, i as u64).unwrap();
    });
    per_call("create: runner_started", n, |i| {
        let r = format!("airlock-burst-{i}");
        store.runner_started(&r, &r, now).unwrap();
    });
    per_call("pass: live_runners + open_jobs", 50, |_| {
        store.live_runners().unwrap();
        store.open_jobs().unwrap();
    });
    per_call("stop: runner_transition to stopping", n, |i| {
        let r = format!("airlock-burst-{i}");
        store
            .runner_transition(&r, RunnerState::Stopping, now, Some("exited"))
            .unwrap();
    });
}
