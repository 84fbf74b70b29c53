//! The state directory's disk, watched: below `server.disk_low_mib` free, no new sandboxes are
//! admitted (the creates wait, and stuck jobs say why) and airlock prunes what it owns, logging
//! each action, until `server.disk_high_mib` is free or nothing of its own is left to prune:
//!
//! 1. image builds that are neither the newest of their name nor used by a sandbox (and partial
//!    builds), as `airlock image gc` does;
//! 2. the kept logs of finished sandboxes (`state_dir/logs`), oldest first.
//!
//! Sandboxes of runners that are gone are the reaper's (they are orphans, destroyed by the next
//! pass); the store is never pruned here (history goes by `history_retention`). Creates are
//! admitted again once the free space is back above the low-water mark.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::Inner;

#[derive(Debug, Default)]
pub(crate) struct Disk {
    /// Below the low-water mark: no creates.
    low: AtomicBool,
    /// Free bytes at the last look.
    free: AtomicU64,
}

impl Disk {
    pub(crate) fn low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    /// Free bytes under the state directory at the last look (0 before the first).
    pub(crate) fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }
}

/// Free bytes of the filesystem holding `dir` (its nearest existing ancestor).
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    let at = dir.ancestors().find(|a| a.exists())?;
    let s = nix::sys::statvfs::statvfs(at).ok()?;
    Some(s.blocks_available() * s.fragment_size())
}

/// Looks at the disk once: the metrics, admission, and pruning when it is low.
pub(crate) async fn check(inner: &Inner) {
    let dir = inner.cfg.server.state_dir.clone();
    let (low_mark, high_mark) = (
        inner.cfg.server.disk_low_mib << 20,
        inner.cfg.server.disk_high_mib << 20,
    );
    let Some(mut free) = free_bytes(&dir) else {
        return;
    };
    if low_mark > 0 && free < low_mark {
        if !inner.disk.low.swap(true, Ordering::Relaxed) {
            tracing::error!(
                free_mib = free >> 20,
                low_water_mib = low_mark >> 20,
                state_dir = %dir.display(),
                "disk low: no new sandboxes until it is back above the low-water mark; pruning what airlock owns"
            );
        }
        inner.metrics.disk_low.set(1);
        let (d, target) = (dir.clone(), high_mark);
        free = tokio::task::spawn_blocking(move || prune(&d, target))
            .await
            .unwrap_or(free);
    }
    inner.disk.free.store(free, Ordering::Relaxed);
    inner.metrics.disk_free_bytes.set(free as i64);
    if free >= low_mark && inner.disk.low.swap(false, Ordering::Relaxed) {
        tracing::info!(
            free_mib = free >> 20,
            "disk back above the low-water mark: sandboxes are admitted again"
        );
        inner.metrics.disk_low.set(0);
        inner.wake.notify_one();
    }
}

/// Removes what airlock owns under `dir`, in the module's order, until `target` bytes are free;
/// returns the free bytes after.
fn prune(dir: &Path, target: u64) -> u64 {
    let free = || free_bytes(dir).unwrap_or(0);
    if free() >= target {
        return free();
    }
    let images = airlock_image::ImageStore::new(dir.join("images"));
    match images.gc(&airlock_sandbox::images_in_use(dir)) {
        Ok(removed) => {
            for m in removed {
                tracing::warn!(image = %m.short(), size_mib = m.size_bytes >> 20, "disk low: removed an unused image build");
            }
        }
        Err(e) => tracing::warn!(error = %e, "disk low: cannot remove unused image builds"),
    }
    let mut logs: Vec<(std::time::SystemTime, PathBuf, u64)> = std::fs::read_dir(dir.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            m.is_file().then(|| {
                (
                    m.modified().unwrap_or(std::time::UNIX_EPOCH),
                    e.path(),
                    m.len(),
                )
            })
        })
        .collect();
    logs.sort();
    let mut removed = (0usize, 0u64);
    for (_, path, len) in logs {
        if free() >= target {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            removed.0 += 1;
            removed.1 += len;
        }
    }
    if removed.0 > 0 {
        tracing::warn!(
            logs = removed.0,
            mib = removed.1 >> 20,
            "disk low: removed the oldest kept job logs"
        );
    }
    let now = free();
    if now < target {
        tracing::error!(
            free_mib = now >> 20,
            high_water_mib = target >> 20,
            "disk low: nothing more of airlock's own to remove; free space under the state directory"
        );
    }
    now
}
