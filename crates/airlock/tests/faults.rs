//! The fault-injection suite, as root on the container backend: 200 jobs through ghsim with its
//! fault switches on (webhooks dropped, duplicated and reordered; 5xx answers, rate limits and
//! latency on the REST API) while the real daemon (`airlock serve`) is SIGKILLed at random
//! moments five times. At the end every job completed exactly once, with success, and nothing is
//! left: no sandbox directory, runtime state, mount, loop device, link, address lease, cgroup,
//! process, nftables element, egress file or runner registration; the store passes SQLite's
//! integrity check. It prints its figures; `AIRLOCK_FAULT_SEED=N` replays a run's kill times.

mod common;

use std::io::BufRead;
use std::time::{Duration, Instant};

use airlock_ghsim::{Faults, Status};
use common::container::*;
use common::*;
use rand::{Rng, SeedableRng};

/// The jobs and kills of a run (`AIRLOCK_FAULT_JOBS`, `AIRLOCK_FAULT_KILLS` for a shorter one
/// while debugging; CI runs the defaults).
fn size() -> (usize, usize) {
    let n = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    (
        n("AIRLOCK_FAULT_JOBS", 200).div_ceil(20) * 20,
        n("AIRLOCK_FAULT_KILLS", 5),
    )
}

/// Starts `airlock serve`; its log (level `AIRLOCK_FAULT_LOG`, default warn) goes to `log`,
/// which every instance appends to and a failure prints the end of.
fn serve(
    cfg: &std::path::Path,
    log: &std::path::Path,
    sim: &airlock_ghsim::Sim,
) -> (std::process::Child, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["serve", "--config"])
        .arg(cfg)
        .env(
            "AIRLOCK_LOG",
            std::env::var("AIRLOCK_FAULT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().rsplit(':').next().unwrap().to_string();
    sim.set_webhook_url(Some(format!("http://127.0.0.1:{port}/webhook")));
    (child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_jobs_through_faults_and_five_kills_complete_once_and_leave_nothing() {
    let seed: u64 = std::env::var("AIRLOCK_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("fault suite: seed {seed} (AIRLOCK_FAULT_SEED={seed} replays the kill times)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (jobs_n, kills_n) = size();

    let mut c = container_env_with(3, 10, "", false).await;
    // Polls every 2 s find what dropped webhooks lose.
    c.env.config = c
        .env
        .config
        .replace("poll_interval = \"5s\"", "poll_interval = \"2s\"");
    let cfg_path = c.env.dir.path().join("airlock.toml");
    std::fs::write(&cfg_path, &c.env.config).unwrap();
    let started = Instant::now();
    // One webhook in five lost, every one delivered twice and swapped with its neighbour; one
    // REST answer in twenty a 502 and one in fifty a rate limit (retry-after 1 s); 10 ms each.
    let base = Faults {
        drop_every: 5,
        duplicate: true,
        reorder: true,
        latency_ms: 10,
        error_5xx_per_mille: 50,
        rate_limit_per_mille: 20,
        retry_after_s: 1,
        rate_limit_status: 429,
        ..Default::default()
    };
    c.env.sim().set_faults(base.clone());
    let log = c.env.dir.path().join("daemon.log");
    let (mut daemon, mut port) = serve(&cfg_path, &log, c.env.sim());

    // Jobs arrive in batches while the faults and kills go on.
    let sim = c.env.sim.as_ref().unwrap().sim.clone();
    let submit = {
        let sim = sim.clone();
        tokio::spawn(async move {
            for b in 0..jobs_n / 20 {
                let specs = (0..20)
                    .map(|i| job(&format!("f{:03}", b * 20 + i), &["true"]))
                    .collect();
                sim.submit(&airlock_ghsim::Workflow {
                    repo: "octo/hello".into(),
                    name: format!("batch {b}"),
                    jobs: specs,
                })
                .unwrap();
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
        })
    };
    // Rate limits alternate between GitHub's two forms: 429, and 403 with retry-after.
    let arming = {
        let sim = sim.clone();
        tokio::spawn(async move {
            for tick in 0u64.. {
                let mut f = sim.faults();
                f.rate_limit_status = if tick % 2 == 0 { 429 } else { 403 };
                sim.set_faults(f);
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };
    let mut kills = 0;
    while kills < kills_n {
        let wait = Duration::from_millis(rng.gen_range(2500..7000));
        tokio::time::sleep(wait).await;
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        kills += 1;
        (daemon, port) = serve(&cfg_path, &log, c.env.sim());
    }
    submit.await.unwrap();

    let done = |c: &CEnv| {
        let jobs = c.env.sim().jobs();
        jobs.len() == jobs_n
            && jobs.iter().all(|j| j.status == Status::Completed)
            && c.env.sim().runners().is_empty()
    };
    let mut last = Instant::now();
    let ok = wait_until(Duration::from_secs(300), || {
        if last.elapsed() > Duration::from_secs(10) {
            last = Instant::now();
            let jobs = c.env.sim().jobs();
            eprintln!(
                "fault suite: {} of {} jobs completed, {} registrations, {:.0} s",
                jobs.iter()
                    .filter(|j| j.status == Status::Completed)
                    .count(),
                jobs.len(),
                c.env.sim().runners().len(),
                started.elapsed().as_secs_f64()
            );
        }
        done(&c)
    })
    .await;
    arming.abort();
    let _ = arming.await;
    c.env.sim().set_faults(Faults::default());
    let jobs = c.env.sim().jobs();
    let not_ok: Vec<_> = jobs
        .iter()
        .filter(|j| j.conclusion.as_deref() != Some("success"))
        .map(|j| format!("{} {:?} {:?}", j.name, j.status, j.conclusion))
        .collect();
    if !ok {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<_> = text.lines().rev().take(60).collect();
        eprintln!("the daemons' log, last lines:");
        for l in tail.into_iter().rev() {
            eprintln!("  {l}");
        }
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/api/v1/status")).await {
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            eprintln!(
                "the daemon's status: jobs {}\nrunners {}\nstuck {}\npools {}",
                v["jobs"], v["runners"], v["stuck"], v["pools"]
            );
        }
    }
    assert!(
        ok,
        "seed {seed}: {} of {jobs_n} jobs, not done: {not_ok:?}; registrations {:?}",
        jobs.len(),
        c.env.sim().runners()
    );
    assert!(not_ok.is_empty(), "seed {seed}: {not_ok:?}");
    // Exactly once: one job per name, each run by one runner.
    let names: std::collections::BTreeSet<_> = jobs.iter().map(|j| j.name.clone()).collect();
    assert_eq!(names.len(), jobs_n);
    assert!(jobs.iter().all(|j| j.runner_name.is_some()));

    // Drained and stopped: nothing left anywhere.
    let st = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(daemon.wait().unwrap().code(), Some(0), "seed {seed}");
    let left = c.remnants();
    let procs = sandbox_processes(&c.env.state());
    let stats = c.env.sim().stats();
    let store = airlock_store::Store::open(&c.env.state().join("airlock.db")).unwrap();
    let integrity = store.integrity_check().unwrap();
    println!(
        "fault suite: {jobs_n} jobs completed once each in {:.0} s; {kills} SIGKILLs; faults: {} webhooks dropped, every one duplicated and reordered, {} 5xx answers, {} rate limits, 10 ms latency; {} REST requests; leaks: {} remnants, {} processes, {} registrations; integrity {integrity}",
        started.elapsed().as_secs_f64(),
        stats.webhooks_dropped,
        stats.injected_5xx,
        stats.injected_rate_limits,
        stats.api_requests,
        left.len(),
        procs.len(),
        c.env.sim().runners().len(),
    );
    assert!(left.is_empty(), "seed {seed}: {left:?}");
    assert!(procs.is_empty(), "seed {seed}: {procs:?}");
    assert_eq!(integrity, "ok");
    assert!(stats.webhooks_dropped > 0 && stats.injected_5xx > 0 && stats.injected_rate_limits > 0);
}
