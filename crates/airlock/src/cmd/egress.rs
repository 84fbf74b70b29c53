//! `airlock egress report --job ID` and `airlock egress suggest --pool NAME`: what a job's
//! sandbox asked for and reached, and an allowlist proposed from a pool's audit-mode history,
//! both from the running daemon's API.

use std::path::PathBuf;

use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Every destination of a job's sandbox: name, address, port, protocol, bytes, verdict.
    Report {
        #[arg(long, short)]
        config: PathBuf,
        /// The GitHub job id.
        #[arg(long)]
        job: u64,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// An allowlist for a pool, from what its audit-mode jobs reached, ready to paste.
    Suggest {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        pool: String,
        /// How far back to look (`7d`, `36h`).
        #[arg(long, default_value = "7d")]
        since: String,
        #[arg(long)]
        json: bool,
    },
}

async fn get(config: &std::path::Path, path: &str) -> Result<Value, u8> {
    let cfg = super::load_config(config)?;
    let url = format!("http://{}{path}", cfg.server.listen);
    let r = reqwest::get(&url).await.map_err(|e| {
        eprintln!("airlock: cannot reach the daemon at {url}: {e}");
        crate::EXIT_FAILURE
    })?;
    let status = r.status();
    let v: Value = r.json().await.map_err(|e| {
        eprintln!("airlock: bad answer from {url}: {e}");
        crate::EXIT_FAILURE
    })?;
    if !status.is_success() {
        eprintln!(
            "airlock: {}",
            v["error"]
                .as_str()
                .unwrap_or("the daemon refused the request")
        );
        return Err(if status.is_client_error() {
            crate::EXIT_INVALID
        } else {
            crate::EXIT_FAILURE
        });
    }
    Ok(v)
}

pub async fn run(a: Args) -> u8 {
    match a.command {
        Sub::Report { config, job, json } => {
            let v = match get(&config, &format!("/api/v1/egress/jobs/{job}")).await {
                Ok(v) => v,
                Err(code) => return code,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return 0;
            }
            let reports: Vec<&Value> = v["reports"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(v["running"].as_array().into_iter().flatten())
                .collect();
            if reports.is_empty() {
                eprintln!("airlock: no egress report for job {job} (not run here, not yet started, or pruned)");
                return crate::EXIT_FAILURE;
            }
            for r in reports {
                print!("{}", render(r));
            }
            0
        }
        Sub::Suggest {
            config,
            pool,
            since,
            json,
        } => {
            let q = format!(
                "/api/v1/egress/suggest?pool={}&since={}",
                encode(&pool),
                encode(&since)
            );
            let v = match get(&config, &q).await {
                Ok(v) => v,
                Err(code) => return code,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return 0;
            }
            let jobs = v["jobs"].as_u64().unwrap_or(0);
            if jobs == 0 {
                eprintln!(
                    "airlock: pool {pool:?} has no audit-mode job in the last {since}: set `mode = \"audit\"` in its [pool.egress] and let it run"
                );
                return crate::EXIT_FAILURE;
            }
            println!("# from {jobs} audit-mode jobs of pool {pool:?} in the last {since}");
            print!("{}", v["toml"].as_str().unwrap_or_default());
            0
        }
    }
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One sandbox's report as a table.
fn render(r: &Value) -> String {
    let mut out = format!(
        "sandbox {} (pool {}, runner {}, mode {}){}\n",
        r["sandbox_id"].as_str().unwrap_or("?"),
        r["pool"].as_str().unwrap_or("?"),
        r["runner_name"].as_str().unwrap_or("-"),
        r["mode"].as_str().unwrap_or("?"),
        if r["stored_at"].as_i64() == Some(0) {
            ", still running"
        } else {
            ""
        },
    );
    out.push_str(&format!(
        "  {:<8} {:<5} {:<36} {:<16} {:>5} {:>10} {:>10} {:>5}  why\n",
        "VERDICT", "PROTO", "NAME", "ADDRESS", "PORT", "OUT", "IN", "TIMES"
    ));
    let dests = r["report"]["destinations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if dests.is_empty() {
        out.push_str("  (nothing: no name asked, no connection made)\n");
    }
    for d in dests {
        let addr = d["addr"].as_str().map(str::to_string).unwrap_or_else(|| {
            d["answers"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(|a| a.as_str())
                .map(|a| format!("-> {a}"))
                .unwrap_or_else(|| "-".into())
        });
        out.push_str(&format!(
            "  {:<8} {:<5} {:<36} {:<16} {:>5} {:>10} {:>10} {:>5}  {}\n",
            d["verdict"].as_str().unwrap_or("?"),
            d["protocol"].as_str().unwrap_or("?"),
            d["name"].as_str().unwrap_or("-"),
            addr,
            d["port"].as_u64().unwrap_or(0),
            d["bytes_out"].as_u64().unwrap_or(0),
            d["bytes_in"].as_u64().unwrap_or(0),
            d["count"].as_u64().unwrap_or(0),
            d["reason"].as_str().unwrap_or(""),
        ));
    }
    out
}
