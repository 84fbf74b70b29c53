//! `airlock serve --config F`: runs the daemon until SIGTERM or SIGINT, then drains. SIGHUP
//! reads the config file again and applies what can change live (pools' egress policies, for
//! sandboxes created from then on); a file that does not load changes nothing.
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
    raise_open_files_limit();
    let handle = match airlock_daemon::start(cfg).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("airlock: {}", chain(&e));
            return crate::EXIT_FAILURE;
        }
    };
    handle.set_config_path(&a.config);
    println!("airlock listening on http://{}", handle.addr);
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("airlock: cannot install signal handlers");
        return crate::EXIT_FAILURE;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            // The daemon logs each change, or each problem of a config it refuses.
            _ = hup.recv() => if let Ok(r) = handle.reload_file() {
                tracing::info!(
                    applied = r.applied.len(),
                    needs_restart = r.needs_restart.len(),
                    "config reloaded"
                );
            },
        }
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

/// A daemon with a thousand sandboxes holds a descriptor or more per sandbox (its supervisor's
/// process handle, pidfds of adopted ones, sockets): the soft limit (1024 under systemd) goes up to
/// the hard one, as Go's runtime does for its programs.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open files limit"),
                Err(e) => {
                    tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit")
                }
            }
        }
    }
}
