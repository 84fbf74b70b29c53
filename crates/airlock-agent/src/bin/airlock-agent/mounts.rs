//! Filesystems: the initramfs's early mounts, the root (plain or overlay), growing it, and the
//! switch to it.
//!
//! The layout after [`switch_root`]: `/` is the job's root; with an overlay, its lower (read-only)
//! and writable ext4s stay visible at `/run/airlock/lower` and `/run/airlock/rw`. This module must
//! never write to the read-only base device nor mount anything from the config disk.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Instant;

use airlock_agent::config::RootSpec;
use nix::mount::{mount, MsFlags};

use crate::log::log;
use crate::{io_err, sys_err, Fatal};

const NEWROOT: &str = "/newroot";
const LOWER: &str = "/run/airlock/lower";
const RW: &str = "/run/airlock/rw";

fn mount_fs(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Fatal> {
    fs::create_dir_all(target).map_err(io_err(format!("mkdir {target}")))?;
    mount(Some(src), target, Some(fstype), flags, data)
        .map_err(sys_err(format!("mount {fstype} {src} on {target}")))
}

/// /proc, /sys, /dev (devtmpfs) and /run (tmpfs) in the initramfs.
pub fn early() -> Result<(), Fatal> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_fs("proc", "/proc", "proc", nodev, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nodev, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    Ok(())
}

/// Waits for a block device node to appear (devtmpfs creates it when the driver probes it).
pub fn wait_for(path: &str, secs: u64) -> Result<(), Fatal> {
    let start = Instant::now();
    while !Path::new(path).exists() {
        if start.elapsed().as_secs() >= secs {
            return Err(Fatal::NoDevice {
                device: path.to_string(),
                secs,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

// `noinit_itable`: the disk is disposable, so the kernel need not zero inode tables behind the job
// (which would also fill the host's sparse overlay with zeros after a grow).
const EXT4_OPTS: &str = "noinit_itable";

/// Mounts the job's root at /newroot: the writable device directly, or an overlay.
pub fn mount_root(root: &RootSpec) -> Result<(), Fatal> {
    wait_for(&root.device, 10)?;
    let rw_device = match &root.writable_layer {
        None => {
            mount_fs(
                &root.device,
                NEWROOT,
                "ext4",
                MsFlags::MS_NOATIME,
                Some(EXT4_OPTS),
            )?;
            if root.grow {
                grow(&root.device, NEWROOT)?;
            }
            root.device.as_str()
        }
        Some(layer) => {
            wait_for(layer, 10)?;
            mount_fs(
                &root.device,
                LOWER,
                "ext4",
                MsFlags::MS_RDONLY,
                Some("noload"),
            )?;
            mount_fs(layer, RW, "ext4", MsFlags::MS_NOATIME, Some(EXT4_OPTS))?;
            if root.grow {
                grow(layer, RW)?;
            }
            for d in ["upper", "work"] {
                let p = format!("{RW}/{d}");
                fs::create_dir_all(&p).map_err(io_err(format!("mkdir {p}")))?;
            }
            let opts = format!("lowerdir={LOWER},upperdir={RW}/upper,workdir={RW}/work");
            mount_fs("overlay", NEWROOT, "overlay", MsFlags::empty(), Some(&opts))?;
            layer.as_str()
        }
    };
    log!("root mounted ({} writable)", rw_device);
    Ok(())
}

/// The grow running in the background, joined before the filesystems are quiesced.
static GROWING: std::sync::Mutex<Option<std::thread::JoinHandle<()>>> = std::sync::Mutex::new(None);

/// Grows the ext4 mounted at `mountpoint` online to the size of `device`, in the background: the
/// kernel resizes a mounted ext4 while it is in use, so the runner starts at once instead of
/// after ~0.1 s per GiB under TCG. The filesystem has the image's headroom until the grow is done
/// (a fraction of a second); [`quiesce`] waits for it.
fn grow(device: &str, mountpoint: &str) -> Result<(), Fatal> {
    let start = Instant::now();
    let bytes = File::open(device)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .map_err(io_err(format!("size of {device}")))?;
    let vfs =
        nix::sys::statvfs::statvfs(mountpoint).map_err(sys_err(format!("statvfs {mountpoint}")))?;
    let block = vfs.block_size().max(1);
    let now = vfs.blocks();
    let want = bytes / block;
    if want <= now {
        log!("root already fills {device}");
        return Ok(());
    }
    // Opened now: the descriptor stays valid when the mount moves to `/`.
    let dir = File::open(mountpoint).map_err(io_err(format!("open {mountpoint}")))?;
    let device = device.to_string();
    let handle = std::thread::spawn(move || {
        // On a one-vCPU guest (and under TCG) the resize would take its share of the CPU from
        // the runner's start: until then it runs only when the boot's critical path waits, and
        // `grow_at_full_speed` puts it back once the runner is up (a busy job must not starve
        // it: the job needs the space).
        GROW_TID.store(crate::sys::gettid(), Ordering::SeqCst);
        if let Err(e) = crate::sys::set_idle(0, true) {
            log!("grow at normal priority: SCHED_IDLE refused ({e})");
        }
        // The runner may have come up before this thread ran: then it is not held back at all.
        if RUNNER_UP.load(Ordering::SeqCst) {
            let _ = crate::sys::set_idle(0, false);
        }
        grow_now(&dir, &device, want, now, block, start);
        GROW_TID.store(0, Ordering::SeqCst);
    });
    *GROWING.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    Ok(())
}

/// The growing thread's id while it runs (0: none), and whether the runner is up.
static GROW_TID: AtomicI32 = AtomicI32::new(0);
static RUNNER_UP: AtomicBool = AtomicBool::new(false);

/// Puts a background grow still running back to normal priority (see [`grow`]).
pub fn grow_at_full_speed() {
    RUNNER_UP.store(true, Ordering::SeqCst);
    let tid = GROW_TID.load(Ordering::SeqCst);
    if tid != 0 {
        if let Err(e) = crate::sys::set_idle(tid, false) {
            log!("could not raise the grow's priority: {e}");
        }
    }
}

fn grow_now(dir: &File, device: &str, want: u64, now: u64, block: u64, start: Instant) {
    match crate::sys::ext4_resize(dir, want) {
        Ok(()) => log!(
            "grew {device} from {} to {} MiB in {} ms",
            (now * block) >> 20,
            (want * block) >> 20,
            start.elapsed().as_millis()
        ),
        Err(e) => log!("could not grow {device} to {want} blocks: {e}"),
    }
}

/// Moves the early mounts under /newroot and makes it `/` (what util-linux's switch_root does,
/// without freeing the initramfs: it is a few MiB).
pub fn switch_root() -> Result<(), Fatal> {
    for m in ["/proc", "/sys", "/dev", "/run"] {
        let target = format!("{NEWROOT}{m}");
        fs::create_dir_all(&target).map_err(io_err(format!("mkdir {target}")))?;
        mount(
            Some(m),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(sys_err(format!("move {m} to {target}")))?;
    }
    nix::unistd::chdir(NEWROOT).map_err(sys_err("chdir /newroot"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys_err("move /newroot to /"))?;
    nix::unistd::chroot(".").map_err(sys_err("chroot"))?;
    nix::unistd::chdir("/").map_err(sys_err("chdir /"))?;
    log!("switched root");
    Ok(())
}

/// What a Linux system has beyond the early mounts and a job expects (terminals, POSIX shared
/// memory, cgroups for a container engine), mounted in the job's root after [`switch_root`].
///
/// `/dev/pts` (`ptmxmode=0666`, so the runner user can open `/dev/ptmx`) and `/dev/shm` are
/// required; the cgroup v2 hierarchy (dockerd and runc need it; never the v1 controllers, which
/// the unified hierarchy replaces) and `/dev/mqueue` are logged when the kernel lacks them, because
/// most jobs run without them.
pub fn late() -> Result<(), Fatal> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("gid=5,mode=0620,ptmxmode=0666"),
    )?;
    mount_fs(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    for (src, target, fstype, data) in [
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", Some("nsdelegate")),
        ("mqueue", "/dev/mqueue", "mqueue", None),
    ] {
        if let Err(e) = mount_fs(src, target, fstype, nodev, data) {
            log!("{}", crate::chain(&e));
        }
    }
    Ok(())
}

/// Best effort before power-off: flush, then make the filesystems read-only.
pub fn quiesce() {
    let growing = GROWING.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(h) = growing {
        let _ = h.join();
    }
    nix::unistd::sync();
    for m in ["/", RW] {
        if Path::new(m).exists() {
            let _ = mount(
                None::<&str>,
                m,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
        }
    }
    nix::unistd::sync();
}
