//! `airlock serve --config F`: runs the daemon until SIGTERM or SIGINT, then drains.
use std::path::PathBuf;

use tokio::signal::unix::{signal, SignalKind};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short)]
    config: PathBuf,
}

pub async fn run(a: Args) -> u8 {
    let cfg = match super::load_config(&a.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let grace = cfg.server.drain_grace;
    let handle = match airlock_daemon::start(cfg).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("airlock: {}", chain(&e));
            return crate::EXIT_FAILURE;
        }
    };
    println!("airlock listening on http://{}", handle.addr);
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("airlock: cannot install signal handlers");
        return crate::EXIT_FAILURE;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(grace = %humantime::format_duration(grace), "draining: no new runners; busy runners may finish");
    let report = handle.drain(grace).await;
    if report.forced > 0 {
        tracing::warn!(
            forced = report.forced,
            "busy runners were destroyed when the grace period ended"
        );
    }
    tracing::info!("stopped");
    0
}

/// An error and its sources, each once.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
