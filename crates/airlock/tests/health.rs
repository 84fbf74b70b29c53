//! Pool health end to end through ghsim: a pool whose creates keep failing is degraded (status,
//! metrics) while another pool runs its jobs, and recovers once its runners come online; a runner
//! that exits as GitHub's outdated runners do marks its pool's image outdated without a retry
//! storm; jobs waiting past `server.stuck_after` are listed in the status with the reason.

mod common;

use std::time::Duration;

use airlock_ghsim::Faults;
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

async fn status(e: &Env) -> Value {
    let url = format!("http://{}/api/v1/status", e.daemon().addr);
    reqwest::get(&url).await.unwrap().json().await.unwrap()
}

fn pool_of<'v>(v: &'v Value, name: &str) -> &'v Value {
    v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no pool {name} in {v}"))
}

/// An env whose jobs count as stuck after 2 s.
async fn env_stuck_after_2s(pools: &[Pool<'_>], runner: &std::path::Path, faults: Faults) -> Env {
    let mut e = env_with(
        pools,
        "1s",
        faults,
        false,
        runner,
        airlock_ghsim::SimConfig::default(),
    )
    .await;
    e.config = e.config.replace(
        "drain_grace = \"20s\"\n",
        "drain_grace = \"20s\"\nstuck_after = \"2s\"\n",
    );
    e.start_daemon().await;
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_creates_keep_failing_is_degraded_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("broken");
    std::fs::write(&flag, "").unwrap();
    // The broken pool's runners die before they come online while the flag file exists.
    let runner = script(
        dir.path(),
        "runner.sh",
        &format!(
            "case \"$AIRLOCK_SANDBOX\" in airlock-broken-*) [ -e {} ] && {{ echo cannot start; exit 1; }};; esac\nexec {} \"$@\"",
            flag.display(),
            runner_bin().display()
        ),
    );
    let pools = [
        pool("broken", &["self-hosted", "broken"]),
        pool("good", &["self-hosted", "good"]),
    ];
    let e = env_stuck_after_2s(&pools, &runner, Faults::default()).await;
    e.submit("octo/hello", &[("waits", &["broken"], &["true"])]);
    assert!(
        wait_until(T, || metric(
            &e.metrics(),
            "airlock_pool_degraded{pool=\"broken\"}"
        ) == 1.0)
        .await,
        "the broken pool is degraded:\n{}",
        e.metrics()
    );
    let v = status(&e).await;
    let broken = pool_of(&v, "broken");
    assert_eq!(broken["health"]["degraded"], true, "{broken}");
    let reason = broken["health"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("creates failed in a row") && reason.contains("before it came online"),
        "{reason}"
    );
    // Another pool is untouched: its job runs while the broken one is degraded.
    e.submit("octo/hello", &[("quick", &["good"], &["true"])]);
    assert!(
        wait_until(T, || e.sim().jobs().iter().any(
            |j| j.name == "quick" && j.conclusion.as_deref() == Some("success")
        ))
        .await
    );
    let v = status(&e).await;
    assert_eq!(pool_of(&v, "good")["health"]["degraded"], false);
    assert_eq!(
        metric(&e.metrics(), "airlock_pool_degraded{pool=\"good\"}"),
        0.0
    );
    // The broken pool's job waits past stuck_after, and the status says why.
    assert!(
        wait_until(T, || metric(
            &e.metrics(),
            "airlock_jobs_stuck{pool=\"broken\"}"
        ) == 1.0)
        .await
    );
    let v = status(&e).await;
    let stuck = v["stuck"].as_array().unwrap();
    assert_eq!(stuck.len(), 1, "{v}");
    assert_eq!(stuck[0]["name"], "waits");
    assert_eq!(stuck[0]["pool"], "broken");
    assert_eq!(stuck[0]["reason_code"], "backend_failing", "{}", stuck[0]);

    // Fixed: the next runner comes online, the pool recovers and the job runs.
    std::fs::remove_file(&flag).unwrap();
    assert!(
        wait_until(T, || e.sim().jobs().iter().any(
            |j| j.name == "waits" && j.conclusion.as_deref() == Some("success")
        ))
        .await,
        "the broken pool's job ran once fixed"
    );
    assert!(
        wait_until(T, || metric(
            &e.metrics(),
            "airlock_pool_degraded{pool=\"broken\"}"
        ) == 0.0
            && metric(&e.metrics(), "airlock_jobs_stuck{pool=\"broken\"}")
                == 0.0)
        .await
    );
    let v = status(&e).await;
    assert_eq!(pool_of(&v, "broken")["health"]["degraded"], false, "{v}");
    assert!(v["stuck"].as_array().unwrap().is_empty(), "{v}");
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deprecated_runner_marks_its_image_outdated_without_a_retry_storm() {
    outdated_runner("deprecated", "exit 7").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_updating_runner_marks_its_image_outdated_without_a_retry_storm() {
    outdated_runner("update", "exit 4").await
}

async fn outdated_runner(fault: &str, says: &str) {
    let pools = [pool("small", &["self-hosted", "small"])];
    let e = env_stuck_after_2s(
        &pools,
        &runner_bin(),
        Faults {
            runner_outdated: fault.into(),
            ..Default::default()
        },
    )
    .await;
    e.submit("octo/hello", &[("j", &["small"], &["true"])]);
    assert!(
        wait_until(T, || metric(
            &e.metrics(),
            "airlock_pool_image_outdated{pool=\"small\"}"
        ) == 1.0)
        .await,
        "{}",
        e.metrics()
    );
    let created = metric(
        &e.metrics(),
        "airlock_runners_created_total{pool=\"small\"}",
    );
    assert_eq!(created, 1.0);
    let v = status(&e).await;
    let p = pool_of(&v, "small");
    assert_eq!(p["health"]["degraded"], true, "{p}");
    let reason = p["health"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("image outdated") && reason.contains(says),
        "{reason}"
    );
    assert_eq!(
        metric(&e.metrics(), "airlock_pool_degraded{pool=\"small\"}"),
        1.0
    );
    // No storm: the job still waits, and no second runner is made within the next seconds
    // (a runner that exits before it comes online otherwise retries after 1, 2, 4 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        metric(
            &e.metrics(),
            "airlock_runners_created_total{pool=\"small\"}"
        ),
        1.0,
        "one runner, then the pool waits"
    );
    let v = status(&e).await;
    let stuck = v["stuck"].as_array().unwrap();
    assert_eq!(stuck.len(), 1, "{v}");
    assert_eq!(stuck[0]["reason_code"], "image_outdated", "{}", stuck[0]);
    assert!(
        e.sim().jobs().iter().all(|j| j.conclusion.is_none()),
        "the job is still queued"
    );
    e.shutdown().await;
}

/// GitHub's clock two minutes behind this host's: jobs run as before, and the drift is in the
/// metrics and the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_clock_is_reported_and_jobs_still_run() {
    let pools = [pool("small", &["self-hosted", "small"])];
    let e = env_with(
        &pools,
        "1s",
        Faults::default(),
        true,
        &runner_bin(),
        airlock_ghsim::SimConfig {
            clock_skew_s: -120,
            ..Default::default()
        },
    )
    .await;
    e.submit("octo/hello", &[("j", &["small"], &["true"])]);
    assert!(e.wait_jobs_completed(T).await);
    assert!(
        wait_until(T, || {
            let d = metric(&e.metrics(), "airlock_clock_drift_seconds");
            (-123.0..=-118.0).contains(&d)
        })
        .await,
        "{}",
        e.metrics()
    );
    let v = status(&e).await;
    assert_eq!(v["clock"]["drifted"], true, "{v}");
    let off = v["clock"]["offset_ms"].as_i64().unwrap();
    assert!((-123_000..=-117_000).contains(&off), "{off}");
    e.shutdown().await;
}
