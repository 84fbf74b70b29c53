//! Job start on a warm sandbox, as root (`cargo bench -p airlock --bench warm`): a microVM pool
//! and a container pool of one daemon, each with `min_idle = 1`, so a runner is online and idle
//! before each job is queued. Two figures per pool, from GitHub's own (ghsim's) timestamps, in the
//! same run, as ratios (goal: a warm VM within 2× a warm container): creation to start (the
//! waiting runner takes the job) and creation to completion (the runner received it, ran its one
//! step `true` in its sandbox and reported the result). Rounds: AIRLOCK_BENCH_WARM_JOBS
//! (default 10).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use airlock_core::RunnerState;
use airlock_ghsim::Status;
use common::vm::*;
use common::*;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let rounds: usize = std::env::var("AIRLOCK_BENCH_WARM_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let pools = vm_pool(
        "vm",
        "vm",
        &vm_image().name,
        "max_runners = 2\nmin_idle = 1\nmemory_mib = 768\ncpus = 1",
        "disk_gib = 2",
    ) + &container_pool("box", "box", "max_runners = 2\nmin_idle = 1");
    let mut v = vm_env(5, &pools).await;
    let idle_in = |v: &VEnv, pool: &str| {
        v.env
            .store()
            .live_runners()
            .unwrap()
            .iter()
            .any(|r| r.pool == pool && r.state == RunnerState::Idle)
    };
    let (mut vm, mut ct) = (vec![], vec![]);
    let (mut vm_done, mut ct_done) = (vec![], vec![]);
    for round in 0..rounds {
        assert!(
            wait_until(Duration::from_secs(180), || idle_in(&v, "vm")
                && idle_in(&v, "box"))
            .await,
            "no warm runners"
        );
        // Let both runners settle into their long poll.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let ids = v.env.submit_specs(
            "octo/hello",
            vec![
                job(&format!("vm{round}"), "vm", &["true"]),
                job(&format!("ct{round}"), "box", &["true"]),
            ],
        );
        assert!(
            wait_until(Duration::from_secs(180), || v
                .env
                .sim()
                .jobs()
                .iter()
                .filter(|j| ids.contains(&j.id))
                .all(|j| j.status == Status::Completed))
            .await
        );
        for j in v.env.sim().jobs().iter().filter(|j| ids.contains(&j.id)) {
            let wait = (j.started_ms.unwrap() - j.created_ms) as f64;
            let done = (j.completed_ms.unwrap() - j.created_ms) as f64;
            if j.name.starts_with("vm") {
                vm.push(wait);
                vm_done.push(done);
            } else {
                ct.push(wait);
                ct_done.push(done);
            }
        }
    }
    let (v50, v95) = (pct(&mut vm, 0.5), pct(&mut vm, 0.95));
    let (c50, c95) = (pct(&mut ct, 0.5), pct(&mut ct, 0.95));
    let (vd50, vd95) = (pct(&mut vm_done, 0.5), pct(&mut vm_done, 0.95));
    let (cd50, cd95) = (pct(&mut ct_done, 0.5), pct(&mut ct_done, 0.95));
    println!(
        "{rounds} rounds, one job per pool each, on runners that were idle before it was queued"
    );
    println!("warm container: job created -> started  p50 {c50:.0} ms  p95 {c95:.0} ms");
    println!(
        "warm microVM (TCG): job created -> started  p50 {v50:.0} ms  p95 {v95:.0} ms  ({:.2}x the container's p50)",
        v50 / c50
    );
    println!("warm container: job created -> completed  p50 {cd50:.0} ms  p95 {cd95:.0} ms");
    println!(
        "warm microVM (TCG): job created -> completed  p50 {vd50:.0} ms  p95 {vd95:.0} ms  ({:.2}x the container's p50)",
        vd50 / cd50
    );
    v.drain().await;
    assert!(v.remnants().is_empty(), "{:?}", v.remnants());
}
