//! Sandbox cgroups, `/airlock/<tag>-<id>` in every hierarchy (the v1 controllers' or the v2
//! root): made with limits for a VMM (containers get theirs from the OCI runtime), found by their
//! owner's tag after a crash, and removed bottom-up.
//!
//! Nothing here knows which backend a cgroup belongs to beyond the tag in its name.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

fn unified() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// `…/airlock` in every cgroup hierarchy that has one (v1 controllers, or the v2 root).
pub(crate) fn parents() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    if unified() {
        return vec![root.join("airlock")];
    }
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("airlock"))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// On a hybrid host (v1 controllers, a v2 hierarchy beside them at `unified`), the controllers
/// no v1 hierarchy took stay on v2 (`hugetlb` on kernels that have it but a systemd that does not
/// mount it): crun then refuses every container ("drop all controllers from cgroupv2"). Mounting
/// each one's v1 hierarchy moves it there, as systemd would have; a controller in use on v2
/// cannot move (the mount fails) and is reported. Returns what was mounted.
pub(crate) fn mount_v1_strays() -> Result<Vec<String>, String> {
    let root = Path::new(ROOT);
    let v2 = root.join("unified");
    if unified() || !v2.join("cgroup.controllers").exists() {
        return Ok(Vec::new());
    }
    let strays = std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
    let mut mounted = Vec::new();
    for c in strays.split_whitespace() {
        let dir = root.join(c);
        if dir.join("cgroup.procs").exists() {
            continue;
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        nix::mount::mount(
            Some("cgroup"),
            &dir,
            Some("cgroup"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some(c),
        )
        .map_err(|e| {
            let _ = std::fs::remove_dir(&dir);
            format!("mounting the v1 {c} hierarchy on {}: {e}", dir.display())
        })?;
        mounted.push(format!("{c} on {}", dir.display()));
    }
    Ok(mounted)
}

pub(crate) fn remove_tree(d: &Path) -> std::io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(d) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path())?;
            }
        }
    }
    match std::fs::remove_dir(d) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Sandbox ids with a cgroup named `<tag>-<id>` left in any hierarchy.
pub(crate) fn ids(tag: &str) -> Vec<String> {
    let prefix = format!("{tag}-");
    let mut out = Vec::new();
    for parent in parents() {
        if let Ok(d) = std::fs::read_dir(&parent) {
            for e in d.flatten() {
                if let Some(id) = e.file_name().to_str().and_then(|n| n.strip_prefix(&prefix)) {
                    if crate::check_id(id).is_ok() && e.path().is_dir() {
                        out.push(id.to_string());
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Removes the cgroup `name` from every hierarchy; succeeds if it is gone.
pub(crate) fn remove(name: &str) -> Result<(), String> {
    for parent in parents() {
        let d = parent.join(name);
        if d.is_dir() {
            remove_tree(&d).map_err(|e| format!("removing cgroup {}: {e}", d.display()))?;
        }
    }
    Ok(())
}

/// SIGKILLs every process left in the cgroup `name` (a VMM that left its supervisor's group).
pub(crate) fn kill_all(name: &str) {
    for parent in parents() {
        let procs =
            std::fs::read_to_string(parent.join(name).join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Where v1's blkio has no `blkio.weight` (no CFQ: BFQ's is `blkio.bfq.weight`, which crun does
/// not know), makes the blkio cgroup `name` before the runtime runs and writes the weight there;
/// the runtime joins the existing cgroup. `Ok(false)`: this host has no weight file at all.
pub(crate) fn set_v1_bfq_weight(name: &str, weight: u16) -> Result<bool, String> {
    let parent = Path::new(ROOT).join("blkio/airlock");
    let d = parent.join(name);
    std::fs::create_dir_all(&d).map_err(|e| format!("creating cgroup {}: {e}", d.display()))?;
    let f = d.join("blkio.bfq.weight");
    if !f.exists() {
        return Ok(false);
    }
    std::fs::write(&f, weight.to_string())
        .map_err(|e| format!("writing {weight} to {}: {e}", f.display()))?;
    Ok(true)
}

/// Limits of a VMM's cgroup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct VmmLimits {
    pub memory_bytes: u64,
    pub cpus: f64,
    pub pids: u64,
}

const PERIOD_US: u64 = 100_000;

/// Makes the cgroup `name` with `limits` and returns the directories a process joins (writing its
/// pid to each `cgroup.procs`): the memory, cpu and pids controllers' on v1, the one on v2.
pub(crate) fn create(name: &str, limits: VmmLimits) -> Result<Vec<PathBuf>, String> {
    let root = Path::new(ROOT);
    let quota = ((limits.cpus * PERIOD_US as f64) as u64).max(1000);
    let write = |dir: &Path, file: &str, value: String| -> Result<(), String> {
        std::fs::write(dir.join(file), &value)
            .map_err(|e| format!("writing {value} to {}: {e}", dir.join(file).display()))
    };
    let mkdir = |d: &Path| {
        std::fs::create_dir_all(d).map_err(|e| format!("creating cgroup {}: {e}", d.display()))
    };
    if unified() {
        // Controllers must be enabled on the way down; already enabled is fine.
        let parent = root.join("airlock");
        mkdir(&parent)?;
        for d in [root, parent.as_path()] {
            let _ = std::fs::write(d.join("cgroup.subtree_control"), "+memory +cpu +pids");
        }
        let d = parent.join(name);
        mkdir(&d)?;
        write(&d, "memory.max", limits.memory_bytes.to_string())?;
        let _ = std::fs::write(d.join("memory.swap.max"), "0");
        write(&d, "cpu.max", format!("{quota} {PERIOD_US}"))?;
        write(&d, "pids.max", limits.pids.to_string())?;
        return Ok(vec![d]);
    }
    let mut dirs = Vec::new();
    for ctrl in ["memory", "cpu", "pids"] {
        let hier = root.join(ctrl);
        if !hier.is_dir() {
            return Err(format!(
                "the {ctrl} cgroup controller is not mounted at {}",
                hier.display()
            ));
        }
        let d = hier.join("airlock").join(name);
        mkdir(&d)?;
        match ctrl {
            "memory" => {
                write(&d, "memory.limit_in_bytes", limits.memory_bytes.to_string())?;
                // Memory plus swap capped at the same figure: no escape into swap.
                if d.join("memory.memsw.limit_in_bytes").exists() {
                    write(
                        &d,
                        "memory.memsw.limit_in_bytes",
                        limits.memory_bytes.to_string(),
                    )?;
                }
            }
            "cpu" => {
                write(&d, "cpu.cfs_period_us", PERIOD_US.to_string())?;
                write(&d, "cpu.cfs_quota_us", quota.to_string())?;
            }
            _ => write(&d, "pids.max", limits.pids.to_string())?,
        }
        dirs.push(d);
    }
    Ok(dirs)
}
