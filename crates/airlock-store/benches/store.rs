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
    // What a pass reads once the daemon holds the open set: the rows written since the last
    // pass (here 16 job updates and 16 runner moves between two passes, as in a busy burst).
    let (mut jrev, mut rrev) = (
        store.jobs_since(None).unwrap().rev,
        store.runners_since(None).unwrap().rev,
    );
    let mut read = std::time::Duration::ZERO;
    let passes = 50;
    for p in 0..passes {
        for k in 0..16 {
            let i = (p * 16 + k) % n;
            store
                .ingest_delivery(
                    &format!("again{p}-{k}"),
                    "workflow_job",
                    Some("in_progress"),
                    Some(&job(i, JobStatus::InProgress)),
                    now + 1 + p as i64,
                )
                .unwrap();
            store
                .set_runner_registration(&format!("airlock-burst-{i}"), (n + p * 16 + k) as u64)
                .unwrap();
        }
        let t0 = Instant::now();
        let j = store.jobs_since(Some(jrev)).unwrap();
        let r = store.runners_since(Some(rrev)).unwrap();
        read += t0.elapsed();
        assert!(!r.rows.is_empty(), "the runners' moves are read");
        (jrev, rrev) = (j.rev, r.rev);
    }
    println!(
        "{:<44} {:>8.1} µs a call",
        "pass: jobs_since + runners_since (16 + 16)",
        read.as_secs_f64() * 1e6 / passes as f64
    );
    per_call("stop: runner_transition to stopping", n, |i| {
        let r = format!("airlock-burst-{i}");
        store
            .runner_transition(&r, RunnerState::Stopping, now, Some("exited"))
            .unwrap();
    });
}
