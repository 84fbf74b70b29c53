//! airlock's benchmarks (`cargo bench -p airlock --bench core`). Each reports medians and a
//! baseline measured in the same run, never a single absolute number; results go into
//! docs/PERFORMANCE.md with this command. Sizes can be reduced for a quick look:
//! `AIRLOCK_BENCH_JOBS=50 cargo bench -p airlock --bench core`.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use airlock_core::{plan, JobObservation, JobStatus, JobView, Labels, PlanInput, PoolSpec};
use airlock_ghsim::{Sim, SimConfig};

const SECRET: &str = "bench-secret";
const TOKEN: &str = "ghp_bench";

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn write(p: &Path, s: &str, mode: u32) {
    std::fs::write(p, s).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn epoch_us() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e6
}

fn config(dir: &Path, api: &str, runner: &Path, poll: &str, pools: &str) -> airlock_config::Config {
    write(&dir.join("webhook-secret"), SECRET, 0o600);
    write(&dir.join("token"), TOKEN, 0o600);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n[github]\napi_url = \"{api}\"\nwebhook_secret_file = \"webhook-secret\"\n\
         token_file = \"token\"\npoll_interval = \"{poll}\"\n{pools}",
        dir.join("state").display()
    )
    .replace("RUNNER", &runner.display().to_string());
    airlock_config::load_str(&text, dir).unwrap().0
}

fn webhook_body(id: u64, labels: &[&str]) -> Vec<u8> {
    serde_json::json!({
        "action": "queued",
        "workflow_job": {"id": id, "run_id": id, "status": "queued", "conclusion": null, "name": "bench",
            "labels": labels, "runner_name": null, "created_at": "2024-01-01T00:00:00Z",
            "started_at": "2024-01-01T00:00:00Z", "completed_at": null},
        "repository": {"full_name": "octo/hello"}
    })
    .to_string()
    .into_bytes()
}

async fn post_webhook(http: &reqwest::Client, url: &str, guid: &str, body: Vec<u8>) -> u16 {
    http.post(url)
        .header("x-github-event", "workflow_job")
        .header("x-github-delivery", guid)
        .header(
            "x-hub-signature-256",
            airlock_github::webhook::sign(SECRET.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Webhook received -> runner process started, against a bare spawn of the same program.
async fn control_plane_overhead(n: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let stamps = dir.path().join("stamps");
    std::fs::create_dir_all(&stamps).unwrap();
    // The "runner" records when it started, then waits to be destroyed. bash's EPOCHREALTIME
    // costs no extra process.
    let runner = dir.path().join("stamp-runner");
    write(
        &runner,
        &format!(
            "#!/bin/bash\necho \"$EPOCHREALTIME\" > {}/\"$AIRLOCK_SANDBOX\"\nexec sleep 600\n",
            stamps.display()
        ),
        0o755,
    );
    let sim = Sim::start(
        SimConfig {
            tokens: vec![TOKEN.into()],
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let pools = "[[pool]]\nname = \"b\"\nscope = \"repo:octo/hello\"\nlabels = [\"bench\"]\nrunner_command = \"RUNNER\"\nmax_runners = 1000\nboot_timeout = \"1h\"\n";
    let h = airlock_daemon::start(config(dir.path(), &sim.url, &runner, "1h", pools))
        .await
        .unwrap();
    let url = format!("http://{}/webhook", h.addr);
    let http = reqwest::Client::new();
    let read_stamp = |p: &Path| -> Option<f64> {
        std::fs::read_to_string(p)
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .map(|s| s * 1e6)
    };

    let mut airlock = Vec::new();
    for i in 0..n {
        let before: std::collections::HashSet<_> = std::fs::read_dir(&stamps)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        let t0 = epoch_us();
        assert_eq!(
            post_webhook(
                &http,
                &url,
                &format!("g{i}"),
                webhook_body(i as u64 + 1, &["bench"])
            )
            .await,
            202
        );
        let stamp = loop {
            let new = std::fs::read_dir(&stamps)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| !before.contains(p));
            if let Some(s) = new.and_then(|p| read_stamp(&p)) {
                break s;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        airlock.push((stamp - t0) / 1000.0);
    }
    h.drain(Duration::from_secs(1)).await;
    sim.shutdown().await;

    let mut bare = Vec::new();
    for i in 0..n {
        let p = stamps.join(format!("bare-{i}"));
        let t0 = epoch_us();
        let mut child = std::process::Command::new(&runner)
            .env("AIRLOCK_SANDBOX", format!("bare-{i}"))
            .spawn()
            .unwrap();
        let stamp = loop {
            if let Some(s) = read_stamp(&p) {
                break s;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        let _ = child.kill();
        let _ = child.wait();
        bare.push((stamp - t0) / 1000.0);
    }
    let (a50, a95, b50, b95) = (
        pct(&mut airlock, 0.5),
        pct(&mut airlock, 0.95),
        pct(&mut bare, 0.5),
        pct(&mut bare, 0.95),
    );
    format!(
        "| webhook → runner process started, {n} jobs (process backend) | p50 {a50:.2} ms, p95 {a95:.2} ms | bare spawn of the same program: p50 {b50:.2} ms, p95 {b95:.2} ms | {:.1}× (airlock adds {:.2} ms at p50) |",
        a50 / b50,
        a50 - b50
    )
}

/// Verified and stored deliveries per second, against a do-nothing endpoint of the same server.
async fn webhook_ingest(n: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(
        SimConfig {
            tokens: vec![TOKEN.into()],
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    // Labels no pool serves: deliveries are stored, no runner is made.
    let pools = "[[pool]]\nname = \"b\"\nscope = \"repo:octo/hello\"\nlabels = [\"bench\"]\nrunner_command = \"/bin/true\"\n";
    let h = airlock_daemon::start(config(
        dir.path(),
        &sim.url,
        Path::new("/bin/true"),
        "1h",
        pools,
    ))
    .await
    .unwrap();
    let url = format!("http://{}/webhook", h.addr);
    let health = format!("http://{}/healthz", h.addr);
    let http = reqwest::Client::new();
    let bodies: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                format!("d{i}"),
                webhook_body(1_000_000 + i as u64, &["other"]),
            )
        })
        .collect();
    const C: usize = 8;
    let mut rates = Vec::new();
    let mut base = Vec::new();
    for round in 0..3 {
        let chunk: Vec<_> = bodies
            .iter()
            .skip(round * n / 3)
            .take(n / 3)
            .cloned()
            .collect();
        let t = Instant::now();
        let mut tasks = Vec::new();
        for part in chunk.chunks(chunk.len().div_ceil(C)) {
            let (http, url, part) = (http.clone(), url.clone(), part.to_vec());
            tasks.push(tokio::spawn(async move {
                for (g, b) in part {
                    assert_eq!(post_webhook(&http, &url, &g, b).await, 202);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        rates.push(chunk.len() as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..C {
            let (http, health) = (http.clone(), health.clone());
            let k = chunk.len() / C;
            tasks.push(tokio::spawn(async move {
                for _ in 0..k {
                    http.get(&health).send().await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        base.push(chunk.len() as f64 / t.elapsed().as_secs_f64());
    }
    assert_eq!(
        h.inner.store().delivery_count().unwrap(),
        (n / 3 * 3) as u64
    );
    h.drain(Duration::from_secs(1)).await;
    sim.shutdown().await;
    let (r, b) = (pct(&mut rates, 0.5), pct(&mut base, 0.5));
    format!("| webhook ingest, verified and stored (8 concurrent clients, {n} deliveries) | {r:.0}/s | do-nothing endpoint: {b:.0}/s | {:.2} of baseline |", r / b)
}

/// One planner pass over 10,000 queued jobs, 50 pools, 500 runners, against reading those jobs.
fn planner(reps: usize) -> String {
    let pools: Vec<PoolSpec> = (0..50)
        .map(|i| PoolSpec::test(&format!("p{i}")).max(1000))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store = airlock_store::Store::open(&dir.path().join("a.db")).unwrap();
    let obs: Vec<JobObservation> = (0..10_000u64)
        .map(|i| JobObservation {
            id: i + 1,
            run_id: i / 10 + 1,
            repo: "octo/hello".into(),
            enterprise: None,
            name: format!("j{i}"),
            labels: Labels::new(["self-hosted", &format!("p{}", i % 50)]),
            status: JobStatus::Queued,
            conclusion: None,
            runner_name: None,
            created_at: None,
            started_at: None,
            completed_at: None,
        })
        .collect();
    store.observe_jobs(&obs, 1).unwrap();
    let now = 1_700_000_000_000;
    let runners: Vec<airlock_core::RunnerView> = (0..500)
        .map(|i| airlock_core::RunnerView {
            name: format!("airlock-p{}-{i}", i % 50),
            pool: format!("p{}", i % 50),
            state: airlock_core::RunnerState::Idle,
            created_at: now - 1000,
            state_since: now - 1000,
            sandbox_id: format!("airlock-p{}-{i}", i % 50),
            exited: false,
            exit_code: None,
            job_known: false,
            config: String::new(),
        })
        .collect();
    let mut read = Vec::new();
    let mut passes = Vec::new();
    let mut n_ops = 0;
    for _ in 0..reps {
        let t = Instant::now();
        let jobs: Vec<JobView> = store
            .open_jobs()
            .unwrap()
            .into_iter()
            .map(airlock_store::JobRecord::into_view)
            .collect();
        read.push(t.elapsed().as_secs_f64() * 1000.0);
        let unaccounted = HashMap::new();
        let t = Instant::now();
        let ops = plan(&PlanInput {
            now,
            pools: &pools,
            jobs: &jobs,
            runners: &runners,
            unaccounted: &unaccounted,
            registrations: &[],
            sandboxes: &[],
            reserved: &Default::default(),
            creating: &Default::default(),
            draining: false,
        });
        passes.push(t.elapsed().as_secs_f64() * 1000.0);
        n_ops = ops.len();
    }
    let (p, r) = (pct(&mut passes, 0.5), pct(&mut read, 0.5));
    format!("| planner pass, 10,000 queued jobs, 50 pools, 500 runners ({n_ops} ops) | p50 {p:.2} ms | reading those jobs from SQLite: p50 {r:.2} ms | {:.2} of baseline |", p / r)
}

/// GitHub requests per job in steady state: jobs arriving continuously, polling every 2 s.
async fn requests_per_job(n: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let runner = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("airlock-runner");
    assert!(
        runner.is_file(),
        "build the stand-in runner first: cargo build --release --bins"
    );
    let sim = Sim::start(
        SimConfig {
            tokens: vec![TOKEN.into()],
            webhook_secret: SECRET.as_bytes().to_vec(),
            long_poll: Duration::from_secs(2),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let pools = "[[pool]]\nname = \"s\"\nscope = \"repo:octo/hello\"\nlabels = [\"self-hosted\", \"steady\"]\nrunner_command = \"RUNNER\"\nmax_runners = 4\n";
    let h = airlock_daemon::start(config(dir.path(), &sim.url, &runner, "2s", pools))
        .await
        .unwrap();
    sim.sim
        .set_webhook_url(Some(format!("http://{}/webhook", h.addr)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sim.sim.stats();
    let t = Instant::now();
    for i in 0..n {
        sim.sim
            .submit(&airlock_ghsim::Workflow {
                repo: "octo/hello".into(),
                name: "CI".into(),
                jobs: vec![airlock_ghsim::JobSpec {
                    name: format!("s{i}"),
                    labels: vec!["steady".into()],
                    steps: vec!["true".into()],
                    drop_webhooks: false,
                }],
            })
            .unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    while !sim
        .sim
        .jobs()
        .iter()
        .all(|j| j.status == airlock_ghsim::Status::Completed)
        || !h.inner.store().live_runners().unwrap().is_empty()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let after = sim.sim.stats();
    let total = (after.api_requests - before.api_requests) as f64;
    let not_modified = (after.not_modified - before.not_modified) as f64;
    let jit = *after
        .by_route
        .get("POST /repos/*/*/actions/runners/generate-jitconfig")
        .unwrap_or(&0) as f64;
    let deletes = after
        .by_route
        .iter()
        .filter(|(k, _)| k.starts_with("DELETE"))
        .map(|(_, v)| *v)
        .sum::<u64>() as f64;
    h.drain(Duration::from_secs(1)).await;
    sim.shutdown().await;
    format!(
        "| GitHub requests per job, {n} jobs arriving every 250 ms ({secs:.0} s), poll every 2 s | {:.2} requests/job ({:.2} counted against the rate limit; {:.2} JIT, {:.2} DELETE) | 1 JIT per runner is the floor | 304s: {:.0} of {:.0} |",
        total / n as f64,
        (total - not_modified) / n as f64,
        jit / n as f64,
        deletes / n as f64,
        not_modified,
        total
    )
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: only run when benching.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let jobs: usize = std::env::var("AIRLOCK_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("| benchmark | result | baseline in the same run | ratio |");
    println!("|---|---|---|---|");
    println!("{}", rt.block_on(control_plane_overhead(jobs)));
    println!("{}", rt.block_on(webhook_ingest(jobs * 15)));
    println!("{}", planner(21));
    println!("{}", rt.block_on(requests_per_job(jobs / 4)));
}
