//! `[server]`: the listen address, the state directory and the daemon-wide limits.
//!
//! Only what is written is checked: this must never create, open or probe `state_dir` (the
//! daemon makes it at start) nor bind the listen address, so that `check-config` runs anywhere.

use std::net::SocketAddr;
use std::time::Duration;

use toml::Table;

use super::Walker;
use crate::{ServerConfig, DEFAULT_LISTEN, DEFAULT_SANDBOX_NICE, DEFAULT_STATE_DIR};

const SERVER_KEYS: &[&str] = &[
    "listen",
    "state_dir",
    "drain_grace",
    "job_log_max_mib",
    "job_logs_keep",
    "history_retention",
    "max_parallel_ops",
    "sandbox_nice",
    "stuck_after",
    "disk_low_mib",
    "disk_high_mib",
];

pub(super) fn read(w: &mut Walker<'_>, root: &mut Table) -> ServerConfig {
    let mut t = w.table(root, "server");
    let listen = match w.take::<String>(
        &mut t,
        "server",
        "listen",
        "an address such as \"127.0.0.1:8080\"",
    ) {
        Some(s) => match s.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                w.error(
                    "server.listen",
                    format!("{s:?} is not an IP address and port such as \"127.0.0.1:8080\""),
                );
                DEFAULT_LISTEN.parse().unwrap()
            }
        },
        None => DEFAULT_LISTEN.parse().unwrap(),
    };
    let state_dir = w
        .path(&mut t, "server", "state_dir")
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
    let drain_grace = w.duration(
        &mut t,
        "server",
        "drain_grace",
        Duration::from_secs(15 * 60),
    );
    let job_log_max_mib = w
        .take::<u64>(&mut t, "server", "job_log_max_mib", "a whole number of MiB")
        .unwrap_or(16);
    if job_log_max_mib == 0 || job_log_max_mib > 1 << 20 {
        w.error(
            "server.job_log_max_mib",
            format!("{job_log_max_mib} is out of range (1 to 1048576)"),
        );
    }
    let job_logs_keep = w
        .take::<usize>(&mut t, "server", "job_logs_keep", "a whole number of logs")
        .unwrap_or(1000);
    let history_retention = w.duration(
        &mut t,
        "server",
        "history_retention",
        Duration::from_secs(14 * 24 * 3600),
    );
    let max_parallel_ops = w
        .take::<usize>(
            &mut t,
            "server",
            "max_parallel_ops",
            "a whole number of operations",
        )
        .unwrap_or(16);
    if !(1..=1024).contains(&max_parallel_ops) {
        w.error(
            "server.max_parallel_ops",
            format!("{max_parallel_ops} is out of range (1 to 1024)"),
        );
    }
    let disk_low_mib = w
        .take::<u64>(&mut t, "server", "disk_low_mib", "a whole number of MiB")
        .unwrap_or(2048);
    let disk_high_mib = w
        .take::<u64>(&mut t, "server", "disk_high_mib", "a whole number of MiB")
        .unwrap_or(disk_low_mib.saturating_mul(2));
    if disk_high_mib < disk_low_mib {
        w.error(
            "server.disk_high_mib",
            format!("{disk_high_mib} is below disk_low_mib ({disk_low_mib}): pruning stops at the high-water mark, which must be at least the low one"),
        );
    }
    let stuck_after = w.duration(&mut t, "server", "stuck_after", Duration::from_secs(600));
    if stuck_after.is_zero() {
        w.error("server.stuck_after", "must be more than 0s");
    }
    let sandbox_nice = w
        .take::<i64>(&mut t, "server", "sandbox_nice", "a niceness from 0 to 19")
        .unwrap_or(DEFAULT_SANDBOX_NICE);
    if !(0..=19).contains(&sandbox_nice) {
        w.error(
            "server.sandbox_nice",
            format!(
                "{sandbox_nice} is out of range (0 to 19; 0 runs jobs at the daemon's priority)"
            ),
        );
    }
    w.unknown(t, "server", SERVER_KEYS);
    if state_dir.to_string_lossy().contains([',', ':']) {
        w.error(
            "server.state_dir",
            "may not contain ',' or ':' (container sandboxes mount overlays below it)",
        );
    }
    ServerConfig {
        listen,
        state_dir,
        drain_grace,
        job_log_max_bytes: job_log_max_mib.clamp(1, 1 << 20) << 20,
        job_logs_keep,
        history_retention,
        max_parallel_ops: max_parallel_ops.clamp(1, 1024),
        sandbox_nice: sandbox_nice.clamp(0, 19) as i32,
        stuck_after: stuck_after.max(Duration::from_millis(1)),
        disk_low_mib,
        disk_high_mib: disk_high_mib.max(disk_low_mib),
    }
}
