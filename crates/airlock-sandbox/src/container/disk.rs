//! A container sandbox's disk cap (`ContainerImage::disk_gib`): the overlay's upper and work
//! directories live on a filesystem of their own, a sparse ext4 file of that size under the
//! sandbox's directory (`layer.ext4`), attached to a loop device and mounted at `layer/`.
//!
//! So a job that fills its root fails with "No space left on device" inside its own sandbox,
//! the host's disk loses at most `disk_gib` to it, and other sandboxes never notice. What the
//! job wrote takes host space only as it writes it (the file is sparse), and all of it goes
//! with the file at destroy.
//!
//! The loop device is attached with `LO_FLAGS_AUTOCLEAR`: it detaches itself when its last user
//! goes, which is the mount once made, or this process's descriptor before that. A crash
//! between attaching and mounting therefore leaves no attached device, and unmounting the layer
//! (at destroy, lazily) is all it takes to release one.
//!
//! The filesystem has no journal and no blocks reserved for root: it lives for one job and is
//! never mounted again, and the cap is the whole size. Formatting is `mkfs.ext4` from e2fsprogs
//! with lazy inode tables (about 10 ms for any size here, see `docs/PERFORMANCE.md`).

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The sparse file and its mount point inside a sandbox directory.
pub(super) fn image(dir: &Path) -> PathBuf {
    dir.join("layer.ext4")
}

pub(super) fn mount_point(dir: &Path) -> PathBuf {
    dir.join("layer")
}

/// Makes the capped layer of the sandbox in `dir`: the file, its filesystem, the loop device
/// and the mount; returns the directory the overlay's `upper` and `work` go in. An error says
/// which step failed; whatever was made is in `dir`, for destroy.
pub(super) fn make(dir: &Path, gib: u32) -> Result<PathBuf, String> {
    let file = image(dir);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .map_err(|e| format!("creating {}: {e}", file.display()))?;
    f.set_len(u64::from(gib) << 30)
        .map_err(|e| format!("sizing {} to {gib} GiB: {e}", file.display()))?;
    let out = std::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-O",
            "^has_journal,^resize_inode",
            "-E",
            "lazy_itable_init=1,nodiscard",
        ])
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running mkfs.ext4 (install e2fsprogs): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mkfs.ext4 {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let dev = ioctl::attach(&f)
        .map_err(|e| format!("attaching {} to a loop device: {e}", file.display()))?;
    drop(f);
    let at = mount_point(dir);
    std::fs::create_dir(&at).map_err(|e| format!("creating {}: {e}", at.display()))?;
    let mounted = nix::mount::mount(
        Some(dev.path.as_path()),
        &at,
        Some("ext4"),
        nix::mount::MsFlags::MS_NODEV,
        None::<&str>,
    );
    // The device's own descriptor goes now: from here the mount holds it, and it detaches
    // itself with the mount (or at once, if the mount failed).
    drop(dev);
    mounted.map_err(|e| format!("mounting the layer at {}: {e}", at.display()))?;
    std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("chmod {}: {e}", at.display()))?;
    Ok(at)
}

/// Unmounts the layer of the sandbox in `dir` if it is mounted (lazily, so a process still
/// leaving cannot keep it; the loop device detaches itself once the last user is gone).
pub(super) fn unmount(dir: &Path) -> Result<(), String> {
    let at = mount_point(dir);
    for _ in 0..50 {
        if !super::is_mounted(&at) {
            return Ok(());
        }
        if let Err(e) = nix::mount::umount2(&at, nix::mount::MntFlags::MNT_DETACH) {
            if super::is_mounted(&at) {
                return Err(format!("unmounting {}: {e}", at.display()));
            }
        }
    }
    Ok(())
}

/// Loop devices whose backing file is below `root` (a path starting with `root/`), as
/// `loopN (file)` lines: what a destroy must never leave.
pub(super) fn loops_below(root: &Path) -> Vec<String> {
    let prefix = format!("{}/", root.display());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(back) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let back = back.trim();
        if back.starts_with(&prefix) {
            out.push(format!("loop device {name} ({back})"));
        }
    }
    out
}

mod ioctl {
    //! Attaching a file to a free loop device: `LOOP_CTL_GET_FREE` on `/dev/loop-control`, then
    //! `LOOP_CONFIGURE` (Linux 5.8) on the device. The ioctls are this module's unsafe calls.
    #![allow(unsafe_code)]

    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::path::PathBuf;

    const LOOP_CTL_GET_FREE: u64 = 0x4C82;
    const LOOP_CONFIGURE: u64 = 0x4C0A;
    const LO_FLAGS_AUTOCLEAR: u32 = 4;
    const LO_FLAGS_DIRECT_IO: u32 = 16;

    /// `struct loop_info64` of `<linux/loop.h>`.
    #[repr(C)]
    struct LoopInfo64 {
        device: u64,
        inode: u64,
        rdevice: u64,
        offset: u64,
        sizelimit: u64,
        number: u32,
        encrypt_type: u32,
        encrypt_key_size: u32,
        flags: u32,
        file_name: [u8; 64],
        crypt_name: [u8; 64],
        encrypt_key: [u8; 32],
        init: [u64; 2],
    }

    /// `struct loop_config` of `<linux/loop.h>`.
    #[repr(C)]
    struct LoopConfig {
        fd: u32,
        block_size: u32,
        info: LoopInfo64,
        reserved: [u64; 8],
    }

    const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

    /// An attached loop device, open; dropping it closes the descriptor (and so detaches the
    /// device unless something else, a mount, holds it).
    pub(super) struct Attached {
        pub(super) path: PathBuf,
        _dev: File,
    }

    pub(super) fn attach(file: &File) -> std::io::Result<Attached> {
        let ctl = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")?;
        // Another process may take the device we were told is free before we configure it
        // (EBUSY): ask again.
        let mut last = None;
        for _ in 0..16 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
            let n = unsafe { nix::libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let dev = match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
            {
                Ok(d) => d,
                // devtmpfs may not have made the node yet.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
            loop {
                match configure(&dev, file, flags) {
                    Ok(()) => return Ok(Attached { path, _dev: dev }),
                    // Direct I/O refused by the backing filesystem: buffered then.
                    Err(e)
                        if e.raw_os_error() == Some(nix::libc::EINVAL)
                            && flags & LO_FLAGS_DIRECT_IO != 0 =>
                    {
                        flags &= !LO_FLAGS_DIRECT_IO;
                    }
                    Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                        last = Some(e);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free loop device")))
    }

    fn configure(dev: &File, file: &File, flags: u32) -> std::io::Result<()> {
        // SAFETY: an all-zero loop_config is valid (no offset, no limit, no encryption).
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = file.as_raw_fd() as u32;
        cfg.info.flags = flags;
        // SAFETY: LOOP_CONFIGURE reads one loop_config, which lives across the call.
        let r = unsafe { nix::libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE as _, &cfg) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
