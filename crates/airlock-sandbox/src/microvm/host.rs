//! A VM's host side, made before its VMM is prepared and on the blocking pool: its directory,
//! config disk, address and uid, tap and cgroups.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use airlock_agent::config::CONFIG_DISK_SIZE;
use airlock_core::VmDriver;
use airlock_net as net;

use super::{probe, setup, MicrovmConfig, VMM_OVERHEAD_MIB};
use crate::cgroup::{self, VmmLimits};
use crate::SandboxError;

/// A VM's host side before its VMM is prepared: its directory (with the image's name and the
/// config disk), its address and uid, its tap and its cgroups. Blocking (files, the lease, the
/// tap's ioctls and netlink, cgroupfs). Returns (uid, link, cgroups, the config disk's path).
pub(super) fn prepare_host(
    cfg: &MicrovmConfig,
    vm: &crate::VmImage,
    id: &str,
    dir: &Path,
    key: &str,
    cgroup_name: &str,
    egress: (&str, &airlock_core::egress::EgressPolicy),
) -> Result<(u32, airlock_net::Link, Vec<PathBuf>, PathBuf), SandboxError> {
    for (what, p) in [
        ("disk", &vm.disk),
        ("kernel", &vm.kernel),
        ("initramfs", &vm.initramfs),
    ] {
        if !p.is_file() {
            return Err(setup(id, what, format!("{} is missing", p.display())));
        }
    }
    if vm.driver == VmDriver::Firecracker && !probe::is_elf(&vm.kernel) {
        return Err(setup(
            id,
            "kernel",
            format!(
                "{} is not an ELF vmlinux, and Firecracker loads no bzImage",
                vm.kernel.display()
            ),
        ));
    }
    std::fs::create_dir(dir).map_err(|source| SandboxError::Create {
        id: id.into(),
        path: dir.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| setup(id, "chmod", e))?;
    std::fs::write(dir.join("image"), format!("{}\n", vm.image))
        .map_err(|e| setup(id, "image", e))?;
    let index = cfg.net.acquire(key).map_err(|e| setup(id, "address", e))?;
    if index >= 65535 {
        return Err(setup(id, "uid", "more than 65535 VMs on one host"));
    }
    let uid = cfg.uid_base + index;
    let link = cfg.net.subnet().link(key, index);
    // The VMM enters its directory by group; nobody else can.
    chown(dir, 0, uid).map_err(|e| setup(id, "chown", e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))
        .map_err(|e| setup(id, "chmod", e))?;
    let config = dir.join("config.img");
    write_config_disk(&config, &vec![0; CONFIG_DISK_SIZE], uid)
        .map_err(|e| setup(id, "config disk", e))?;
    // The policy is in the host's table before the tap exists.
    if let Some(e) = &cfg.egress {
        e.attach(airlock_egress::Session {
            id: id.to_string(),
            owner: key.to_string(),
            link: link.host_if.clone(),
            addr: link.sandbox_ip,
            pool: Some(egress.0.to_string()),
            policy: egress.1.clone(),
            since_ms: airlock_egress::now_ms(),
        })
        .map_err(|e| setup(id, "egress", e))?;
    }
    net::create_tap(&link, key, uid).map_err(|e| setup(id, "tap", e))?;
    let limits = VmmLimits {
        memory_bytes: (vm.memory_mib + VMM_OVERHEAD_MIB) << 20,
        cpus: vm.cpus as f64,
        pids: 512,
    };
    let cgroups = cgroup::create(cgroup_name, limits).map_err(|e| setup(id, "cgroup", e))?;
    Ok((uid, link, cgroups, config))
}

fn chown(p: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    nix::unistd::chown(
        p,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(std::io::Error::from)
}

/// Makes `p` the VM's own: owner `uid`, mode 0600.
pub(super) fn owned_by(p: &Path, uid: u32) -> std::io::Result<()> {
    chown(p, uid, uid)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
}

/// Writes the config disk in place (the VMM has not opened it yet): mode 0600 from its creation,
/// owned by the VM's uid. Not synced: the VMM reads it through the same page cache, and a host
/// crash ends the VM it was for.
pub(super) fn write_config_disk(p: &Path, bytes: &[u8], uid: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)?;
    f.write_all(bytes)?;
    drop(f);
    owned_by(p, uid)
}
