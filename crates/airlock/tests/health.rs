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

/// `status`, from a synchronous closure (`wait_until`): on a thread with a runtime of its own.
fn status_blocking(e: &Env) -> Value {
    let url = format!("http://{}/api/v1/status", e.daemon().addr);
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { reqwest::get(&url).await.unwrap().json().await.unwrap() })
    })
    .join()
    .unwrap()
}

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

/// Unmounts the test's small filesystem when the test ends, however it ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn fill(path: &std::path::Path, leave_mib: u64) {
    let free = {
        let s = nix::sys::statvfs::statvfs(path.parent().unwrap()).unwrap();
        s.blocks_available() * s.fragment_size()
    };
    let size = free.saturating_sub(leave_mib << 20);
    let mut f = std::fs::File::create(path).unwrap();
    use std::io::Write;
    let chunk = vec![0xa5u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if f.write_all(&chunk[..n]).is_err() {
            break; // full
        }
        left -= n as u64;
    }
    let _ = f.sync_all();
}

/// The state directory on a 320 MiB filesystem of its own. Below the low-water mark no sandbox is
/// created (the job waits, its reason `disk_low`) and airlock prunes its old job logs back to the
/// high-water mark; filled to the last byte, the store's writes fail without a crash or a lost
/// job; once space returns, the queued job runs and the database passes SQLite's integrity check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_disk_admits_nothing_prunes_and_recovers() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (a filesystem of its own)");
        return;
    }
    let pools = [pool("small", &["self-hosted", "small"])];
    let mut e = env_with(
        &pools,
        "1s",
        Faults::default(),
        false,
        &runner_bin(),
        airlock_ghsim::SimConfig::default(),
    )
    .await;
    let state = e.state();
    std::fs::create_dir_all(&state).unwrap();
    let image = e.dir.path().join("state.ext4");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(320 << 20)
        .unwrap();
    let ok = |c: &mut std::process::Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0"])
        .arg(&image));
    ok(std::process::Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(&image)
        .arg(&state));
    let _mounted = Mounted(state.clone());
    e.config = e.config.replace(
        "drain_grace = \"20s\"\n",
        "drain_grace = \"20s\"\nstuck_after = \"2s\"\ndisk_low_mib = 64\ndisk_high_mib = 128\n",
    );
    e.start_daemon().await;
    e.submit("octo/hello", &[("before", &["small"], &["true"])]);
    assert!(e.wait_jobs_completed(T).await);

    // 1. Old job logs (8 x 16 MiB) and a filler leave 40 MiB: below the low-water mark.
    let logs = state.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    for i in 0..8 {
        std::fs::write(logs.join(format!("old{i}.log")), vec![b'x'; 16 << 20]).unwrap();
    }
    fill(&state.join("filler"), 40);
    assert!(
        wait_until(T, || metric(&e.metrics(), "airlock_disk_low") == 1.0
            || std::fs::read_dir(&logs).unwrap().count() < 8)
        .await,
        "{}",
        e.metrics()
    );
    // Pruned back to the high-water mark: the oldest logs went, not all of them.
    assert!(
        wait_until(T, || metric(&e.metrics(), "airlock_disk_low") == 0.0).await,
        "{}",
        e.metrics()
    );
    let left = std::fs::read_dir(&logs).unwrap().count();
    assert!((1..8).contains(&left), "{left} of 8 logs left");
    assert!(metric(&e.metrics(), "airlock_disk_free_bytes") >= (128 << 20) as f64);

    // 2. Below the low-water mark with nothing of airlock's left to prune: a job is recorded
    // but no sandbox is made for it, and the status says why.
    for l in std::fs::read_dir(&logs).unwrap().flatten() {
        std::fs::remove_file(l.path()).unwrap();
    }
    fill(&state.join("filler2"), 24);
    assert!(wait_until(T, || metric(&e.metrics(), "airlock_disk_low") == 1.0).await);
    let created = metric(
        &e.metrics(),
        "airlock_runners_created_total{pool=\"small\"}",
    );
    e.submit("octo/hello", &[("during", &["small"], &["true"])]);
    assert!(
        wait_until(T, || {
            let v = status_blocking(&e);
            v["stuck"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|j| j["name"] == "during" && j["reason_code"] == "disk_low")
            })
        })
        .await,
        "the waiting job is stuck on the disk"
    );
    assert_eq!(
        metric(
            &e.metrics(),
            "airlock_runners_created_total{pool=\"small\"}"
        ),
        created,
        "no runner was made while the disk was low"
    );
    // Then full to the last byte: the store's writes fail, nothing crashes, and a job GitHub
    // queues meanwhile is not lost.
    fill(&state.join("filler3"), 0);
    e.submit("octo/hello", &[("full", &["small"], &["true"])]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = status(&e).await;
    assert_eq!(v["disk"]["low"], true, "{v}");

    // 3. Space returns: the job runs, and the store is intact.
    for f in ["filler", "filler2", "filler3"] {
        std::fs::remove_file(state.join(f)).unwrap();
    }
    assert!(
        wait_until(T, || ["during", "full"].iter().all(|n| e
            .sim()
            .jobs()
            .iter()
            .any(
                |j| j.name == *n && j.conclusion.as_deref() == Some("success")
            )))
        .await,
        "the jobs waiting on the disk ran once space returned"
    );
    assert!(wait_until(T, || metric(&e.metrics(), "airlock_disk_low") == 0.0).await);
    let check: String = e
        .store()
        .integrity_check()
        .unwrap_or_else(|err| panic!("integrity check: {err}"));
    assert_eq!(check, "ok");
    e.shutdown().await;
}

/// GitHub down for everything but webhooks: the client's circuit opens after five failures in a
/// row, status and metrics say so and the waiting job's stuck reason names it, GitHub sees a
/// handful of probes rather than a hot loop, and once it answers again the job runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_outage_opens_the_circuit_without_a_hot_loop_and_recovers() {
    let pools = [pool("small", &["self-hosted", "small"])];
    let e = env_stuck_after_2s(&pools, &runner_bin(), Faults::default()).await;
    assert!(
        wait_until(T, || metric(
            &e.metrics(),
            "airlock_polls_total{outcome=\"ok\"}"
        ) >= 1.0)
        .await
    );
    e.sim().set_faults(Faults {
        error_5xx: 1_000_000,
        ..Default::default()
    });
    e.submit("octo/hello", &[("waits", &["small"], &["true"])]);
    assert!(
        wait_until(T, || metric(&e.metrics(), "airlock_github_circuit_open")
            == 1.0)
        .await,
        "{}",
        e.metrics()
    );
    let v = status(&e).await;
    assert_eq!(v["github"]["circuit"], "open", "{}", v["github"]);
    assert!(
        wait_until(T, || {
            let v = status_blocking(&e);
            v["stuck"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|j| j["name"] == "waits" && j["reason_code"] == "github_unavailable")
            })
        })
        .await,
        "stuck with the reason: {}",
        status(&e).await["stuck"]
    );
    // Open for 10 s: cool-downs of about 2, 4 and 8 s let a probe or three through.
    let before = e.sim().stats().injected_5xx;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = e.sim().stats().injected_5xx - before;
    assert!(
        during <= 6,
        "{during} requests in 10 s of an outage: a hot loop"
    );
    // Back: the next probe closes the circuit and the job runs.
    e.sim().set_faults(Faults::default());
    assert!(
        wait_until(T, || e.sim().jobs().iter().any(
            |j| j.name == "waits" && j.conclusion.as_deref() == Some("success")
        ))
        .await,
        "the job runs once GitHub is back"
    );
    assert!(
        wait_until(T, || metric(&e.metrics(), "airlock_github_circuit_open")
            == 0.0)
        .await
    );
    assert_eq!(status(&e).await["github"]["circuit"], "closed");
    println!(
        "a 60-minute outage at this pace costs about {} requests",
        during * 6 * 60 / 10
    );
    e.assert_nothing_left();
    e.shutdown().await;
}

/// GitHub answers 409 to a JIT request whose name a stale registration already holds (what an
/// answer lost after GitHub made the registration leaves behind): airlock gives up that name,
/// creates the runner under a new one at once (no long backoff, the pool not degraded) and the
/// orphan reaper removes the stale registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jit_name_conflict_takes_a_new_name_and_the_stale_registration_is_reaped() {
    let pools = [pool("small", &["self-hosted", "small"])];
    let e = env(
        &pools,
        "1s",
        Faults {
            jit_conflict: 1,
            ..Default::default()
        },
        true,
    )
    .await;
    let t0 = std::time::Instant::now();
    e.submit("octo/hello", &[("j", &["small"], &["true"])]);
    e.wait_all_done(T).await;
    let took = t0.elapsed();
    assert_eq!(e.sim().stats().injected_conflicts, 1);
    assert!(
        took < Duration::from_secs(20),
        "a conflict costs a create, not a minute's backoff: {took:?}"
    );
    assert_eq!(e.sim().jobs()[0].conclusion.as_deref(), Some("success"));
    assert!(
        wait_until(T, || e.sim().runners().is_empty()).await,
        "the stale registration is reaped: {:?}",
        e.sim().runners()
    );
    assert_eq!(
        metric(&e.metrics(), "airlock_pool_degraded{pool=\"small\"}"),
        0.0
    );
    assert!(
        metric(
            &e.metrics(),
            "airlock_orphans_reaped_total{outcome=\"registration\"}"
        ) >= 1.0
    );
    e.assert_nothing_left();
    e.shutdown().await;
}
