//! `airlock status --config F`: asks the running daemon for its pools, runners and open jobs.
use std::path::PathBuf;

use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short)]
    config: PathBuf,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> u8 {
    let cfg = match super::load_config(&a.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let url = format!("http://{}/api/v1/status", cfg.server.listen);
    let v: Value = match reqwest::get(&url).await.and_then(|r| r.error_for_status()) {
        Ok(r) => match r.json().await {
            Ok(v) => v,
            Err(e) => {
                eprintln!("airlock: bad answer from {url}: {e}");
                return crate::EXIT_FAILURE;
            }
        },
        Err(e) => {
            eprintln!("airlock: cannot reach the daemon at {url}: {e}");
            return crate::EXIT_FAILURE;
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return 0;
    }
    println!("{:<20} {:<22} {:>7}  runners", "POOL", "BACKEND", "QUEUED");
    for p in v["pools"].as_array().into_iter().flatten() {
        let runners = p["runners"].as_object().map(|m| {
            m.iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        });
        let mut backend = match (p["backend"].as_str(), p["image"].as_str()) {
            (Some(b), Some(i)) => format!("{b} ({i})"),
            (Some(b), None) => b.to_string(),
            _ => "?".to_string(),
        };
        if let Some(accel) = p["microvm"]["accel"].as_str() {
            backend = format!(
                "{backend} {}/{accel}",
                p["microvm"]["driver"].as_str().unwrap_or("?")
            );
        }
        println!(
            "{:<20} {:<22} {:>7}  {}",
            p["name"].as_str().unwrap_or("?"),
            backend,
            p["queued"],
            runners
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "none".into())
        );
        if let Some(w) = p["microvm"]["warning"].as_str() {
            println!("  warning: {w}");
        }
        if let Some(r) = p["health"]["reason"].as_str() {
            println!("  DEGRADED: {r}");
        }
    }
    if v["disk"]["low"] == true {
        println!(
            "DISK LOW: {} MiB free under the state directory (low-water mark {} MiB): no new sandboxes; airlock is pruning what it owns",
            v["disk"]["free_bytes"].as_u64().unwrap_or(0) >> 20,
            v["disk"]["low_water_mib"]
        );
    }
    if v["github"]["circuit"] != "closed" && !v["github"]["circuit"].is_null() {
        println!(
            "GITHUB FAILING: {} transient errors in a row; airlock sends GitHub nothing for {:.1} s, then tries once",
            airlock_github::breaker::OPEN_AFTER,
            v["github"]["retry_in_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
        );
    }
    if v["clock"]["drifted"] == true {
        let off = v["clock"]["offset_ms"].as_i64().unwrap_or(0);
        println!(
            "CLOCK: this host's clock is {} s {} GitHub's: fix its time sync (NTP)",
            off.abs() / 1000,
            if off > 0 { "behind" } else { "ahead of" }
        );
    }
    let stuck = v["stuck"].as_array().cloned().unwrap_or_default();
    if !stuck.is_empty() {
        println!();
        for s in &stuck {
            println!(
                "STUCK job {} ({} in {}, pool {}) queued {}s: {}",
                s["job_id"],
                s["name"].as_str().unwrap_or("?"),
                s["repo"].as_str().unwrap_or("?"),
                s["pool"].as_str().unwrap_or("?"),
                s["waited_s"],
                s["reason"].as_str().unwrap_or("?")
            );
        }
    }
    println!();
    for r in v["runners"].as_array().into_iter().flatten() {
        println!(
            "runner {:<40} {:<9} job {}",
            r["name"].as_str().unwrap_or("?"),
            r["state"].as_str().unwrap_or("?"),
            r["job_id"]
        );
    }
    0
}
