//! Many idle container sandboxes on one host, as root (`cargo bench -p airlock --bench density`):
//! `airlock serve` (the real binary, its own process) keeps a pool of N idle runners
//! (`min_idle = N`, AIRLOCK_BENCH_DENSITY, default 1000), each a container sandbox whose stand-in
//! runner waits for a job. Once every one is online at ghsim, over a window of
//! AIRLOCK_BENCH_WINDOW seconds (default 60) with GitHub polled every 60 s, it reports the host
//! memory per sandbox (MemAvailable's drop divided by N) beside what the sandboxes' cgroups charge
//! (the runners themselves), the daemon's RSS and CPU, and the mean pass duration from the
//! daemon's own `airlock_reconcile_seconds`; then SIGTERM drains it and the time to tear every
//! sandbox down is printed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::BufRead;
use std::time::{Duration, Instant};

use common::vm::*;
use common::*;

fn mem_available_kib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

/// (RSS in MiB, CPU seconds used so far) of `pid`.
fn usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    (rss_kib / 1024.0, ticks / hz)
}

/// Sum of every sandbox cgroup's memory charge (v1 or v2), in MiB.
fn cgroup_charge_mib() -> f64 {
    let mut total = 0.0;
    for (dir, file) in [
        ("/sys/fs/cgroup/memory/airlock", "memory.usage_in_bytes"),
        ("/sys/fs/cgroup/airlock", "memory.current"),
    ] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                total += std::fs::read_to_string(e.path().join(file))
                    .ok()
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
    }
    total / (1 << 20) as f64
}

fn histogram(text: &str, name: &str) -> (f64, f64) {
    (
        metric(text, &format!("{name}_sum")),
        metric(text, &format!("{name}_count")),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let n: usize = std::env::var("AIRLOCK_BENCH_DENSITY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let window: u64 = std::env::var("AIRLOCK_BENCH_WINDOW")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let pools = container_pool(
        "box",
        "box",
        &format!("max_runners = {n}\nmin_idle = {n}\npids_max = 64\ncpus = 0.5"),
    );
    let v = vm_env_unstarted(9, "", &pools).await;
    // Filling the pool is not what is measured: no write pacing for it; GitHub polled each minute.
    let config = v.env.config.replace(
        "poll_interval = \"5s\"",
        "poll_interval = \"60s\"\nwrite_interval = \"0s\"",
    );
    let cfg_path = v.env.dir.path().join("airlock.toml");
    std::fs::write(&cfg_path, &config).unwrap();
    let before = mem_available_kib();
    let charged_before = cgroup_charge_mib();
    let t0 = Instant::now();
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .env("AIRLOCK_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(daemon.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("listening"),
        "airlock serve did not start: {:?}",
        daemon.wait()
    );
    let addr = line.trim().rsplit('/').next().unwrap().to_string();
    v.env
        .sim()
        .set_webhook_url(Some(format!("http://{addr}/webhook")));
    let online = || {
        v.env
            .sim()
            .runners()
            .iter()
            .filter(|(_, _, online, _)| *online)
            .count()
    };
    let mut last = Instant::now();
    while online() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(3600),
            "only {} of {n} runners came online",
            online()
        );
        if last.elapsed() > Duration::from_secs(15) {
            println!(
                "   {} of {n} runners online after {:.0} s",
                online(),
                t0.elapsed().as_secs_f64()
            );
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "== {n} idle container sandboxes: all runners online {:.1} s after start",
        t0.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let url = format!("http://{addr}/metrics");
    let metrics = || async {
        match reqwest::get(&url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    let m0 = metrics().await;
    let (rss0, cpu0) = usage(daemon.id());
    tokio::time::sleep(Duration::from_secs(window)).await;
    let (rss1, cpu1) = usage(daemon.id());
    let m1 = metrics().await;
    let after = mem_available_kib();
    let charged = cgroup_charge_mib() - charged_before;
    let host = (before - after) / 1024.0;
    let (s0, c0) = histogram(&m0, "airlock_reconcile_seconds");
    let (s1, c1) = histogram(&m1, "airlock_reconcile_seconds");
    let passes = c1 - c0;
    println!(
        "host memory: MemAvailable -{host:.0} MiB = {:.2} MiB per sandbox; their cgroups charge {:.2} MiB each (the runner, its page cache); beyond the runner {:.2} MiB each",
        host / n as f64,
        charged / n as f64,
        (host - charged) / n as f64
    );
    println!(
        "daemon: RSS {rss1:.1} MiB (at the window's start {rss0:.1}); CPU {:.2}% of a core over {window} s",
        100.0 * (cpu1 - cpu0) / window as f64
    );
    println!(
        "passes in the window: {passes:.0}, mean {:.1} ms",
        if passes > 0.0 {
            1e3 * (s1 - s0) / passes
        } else {
            f64::NAN
        }
    );
    let t1 = Instant::now();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let code = daemon.wait().unwrap().code();
    println!(
        "drain (SIGTERM): every sandbox destroyed in {:.1} s, exit {code:?}",
        t1.elapsed().as_secs_f64()
    );
    let left = v.remnants();
    assert!(left.is_empty(), "{left:?}");
}
