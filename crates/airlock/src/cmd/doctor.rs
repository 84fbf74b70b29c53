//! `airlock doctor --config F [--json]`: every check of `airlock_daemon::doctor`, each problem
//! with its fix; exit 1 when anything blocks operation.
use std::io::Write;
use std::path::PathBuf;

use airlock_daemon::doctor::Verdict;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short)]
    config: PathBuf,
    /// Print the report as JSON (`checks`: area, name, verdict, detail, fix).
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> u8 {
    let quiet = a.json;
    let progress = move |what: &str| {
        if !quiet {
            eprintln!("... {what}");
        }
    };
    let report = airlock_daemon::doctor::run(&a.config, &progress).await;
    let mut out = std::io::stdout().lock();
    if a.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        for c in &report.checks {
            let mark = match c.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
            };
            let _ = writeln!(out, "{mark} {:<8} {}: {}", c.area, c.name, c.detail);
            if let Some(f) = &c.fix {
                if c.verdict != Verdict::Ok {
                    let _ = writeln!(out, "     {:<8} fix: {f}", "");
                }
            }
        }
        let count = |v| report.checks.iter().filter(|c| c.verdict == v).count();
        let _ = writeln!(
            out,
            "\n{} ok, {} warnings, {} failures: {}",
            count(Verdict::Ok),
            count(Verdict::Warn),
            count(Verdict::Fail),
            if report.blocking() {
                "airlock cannot run as configured"
            } else {
                "airlock can run"
            }
        );
    }
    if report.blocking() {
        crate::EXIT_FAILURE
    } else {
        0
    }
}
