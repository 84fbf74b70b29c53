//! A container sandbox killed from outside mid-job (as the OOM killer or a crash would): airlock
//! sees its runner end, destroys what is left and removes the registration; GitHub fails the job
//! once the runner stops answering; nothing leaks; the pool is not degraded by one crash and its
//! next job runs.

mod common;

use std::time::Duration;

use airlock_ghsim::Status;
use common::container::*;
use common::*;

/// Processes whose cgroup path names `sandbox` (every process of its container).
fn processes_of(sandbox: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains(sandbox))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_killed_mid_job_fails_its_job_leaks_nothing_and_the_pool_goes_on() {
    const SLOT: u8 = 9;
    let c = container_env_with(SLOT, 2, "", true).await;
    let ids = c
        .env
        .submit_specs("octo/hello", vec![job("doomed", &["sleep 120"])]);
    let t = Duration::from_secs(60);
    assert!(
        wait_until(t, || c
            .env
            .sim()
            .job(ids[0])
            .is_some_and(|j| j.status == Status::InProgress))
        .await,
        "the job never started"
    );
    let runner = c.env.sim().job(ids[0]).unwrap().runner_name.unwrap();
    let victims = processes_of(&runner);
    assert!(!victims.is_empty(), "no process of {runner} found");
    for pid in &victims {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // GitHub fails the job once its runner is silent; airlock tears the sandbox down.
    assert!(
        wait_until(t, || c
            .env
            .sim()
            .job(ids[0])
            .is_some_and(|j| j.status == Status::Completed))
        .await,
        "the job must end: {:?}",
        c.env.sim().job(ids[0])
    );
    assert_eq!(
        c.env.sim().job(ids[0]).unwrap().conclusion.as_deref(),
        Some("failure")
    );
    assert!(
        wait_until(t, || c.env.store().live_runners().unwrap().is_empty()
            && c.env.sim().runners().is_empty())
        .await,
        "runner {:?}, registrations {:?}",
        c.env.store().live_runners().unwrap(),
        c.env.sim().runners()
    );
    let rec = c.env.store().runner(&runner).unwrap().unwrap();
    assert_eq!(rec.stop_reason.as_deref(), Some("exited"), "{rec:?}");
    let left = c.remnants_settled().await;
    assert!(left.is_empty(), "{left:?}");
    assert!(processes_of(&runner).is_empty());
    // One crash of a runner that was online does not degrade the pool; its next job runs.
    assert_eq!(
        metric(&c.env.metrics(), "airlock_pool_degraded{pool=\"box\"}"),
        0.0
    );
    let next = c
        .env
        .submit_specs("octo/hello", vec![job("next", &["true"])]);
    assert!(
        wait_until(t, || c
            .env
            .sim()
            .job(next[0])
            .is_some_and(|j| j.conclusion.as_deref() == Some("success")))
        .await,
        "{:?}",
        c.env.sim().job(next[0])
    );
    let left = c.remnants_settled().await;
    assert!(left.is_empty(), "{left:?}");
}
