//! `airlock reload --config F`: has the running daemon read its config file again (as SIGHUP
//! does) and prints what changed, or the problems of a config it refused (exit 2; the running
//! config stays). `F` is checked here first and names the daemon's address (`server.listen`).
use std::path::PathBuf;

use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short)]
    config: PathBuf,
}

pub async fn run(a: Args) -> u8 {
    // The same checks the daemon makes: an invalid file is named here, before the daemon is asked.
    let cfg = match super::load_config(&a.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let url = format!("http://{}/api/v1/reload", cfg.server.listen);
    let resp = match reqwest::Client::new().post(&url).send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("airlock: cannot reach the daemon at {url}: {e}");
            return crate::EXIT_FAILURE;
        }
    };
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or_default();
    match status.as_u16() {
        200 => {
            let list = |k: &str| -> Vec<String> {
                v[k].as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            };
            let (applied, restart) = (list("applied"), list("needs_restart"));
            if applied.is_empty() && restart.is_empty() {
                println!("reloaded: nothing changed");
            }
            for c in applied {
                println!("reloaded: {c}");
            }
            for c in restart {
                println!("needs a restart (left as it was): {c}");
            }
            0
        }
        422 => {
            for p in v["problems"].as_array().into_iter().flatten() {
                eprintln!("{}", p.as_str().unwrap_or_default());
            }
            eprintln!(
                "airlock: {}",
                v["error"]
                    .as_str()
                    .unwrap_or("the daemon refused the config")
            );
            crate::EXIT_INVALID
        }
        s => {
            eprintln!(
                "airlock: the daemon at {url} answered {s}: {}",
                v["error"].as_str().unwrap_or("")
            );
            crate::EXIT_FAILURE
        }
    }
}
