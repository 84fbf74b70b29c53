//! Probe boots under Firecracker and Cloud Hypervisor: the kernel (an ELF vmlinux for Firecracker;
//! Cloud Hypervisor also loads a bzImage) and initramfs of a pool booted
//! in the agent's probe mode (`airlock_agent::PROBE_ARG`: load the modules, print
//! `airlock_agent::PROBE_OK`, power off) by the pool's own driver, as the VM's would be: the
//! jailer (Firecracker) or the unprivileged, namespaced VMM (Cloud Hypervisor), no network, a
//! zeroed config disk and a one-sector stand-in root disk. Both VMMs need KVM: there is no
//! emulation to fall back to.
//!
//! Everything a probe makes lives under `<root>/.probe-<driver>` (not a sandbox id, so `list`
//! never reports it) and is removed before the result is returned, whatever it is.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use airlock_agent::config::CONFIG_DISK_SIZE;
use airlock_agent::{KERNEL_CMDLINE, PROBE_ARG, PROBE_OK};
use airlock_core::VmDriver;

use super::chv::{self, ChvSpec, ChvVm};
use super::firecracker::{FirecrackerSpec, FirecrackerVm};

/// The programs a probe runs: Firecracker's (jailer, firecracker) or Cloud Hypervisor's
/// (cloud-hypervisor, setpriv, unshare).
#[derive(Debug, Clone)]
pub(super) enum Vmm<'a> {
    Firecracker {
        jailer: &'a Path,
        firecracker: &'a Path,
    },
    CloudHypervisor {
        cloud_hypervisor: &'a Path,
        setpriv: &'a Path,
        unshare: &'a Path,
    },
}

impl Vmm<'_> {
    fn driver(&self) -> VmDriver {
        match self {
            Vmm::Firecracker { .. } => VmDriver::Firecracker,
            Vmm::CloudHypervisor { .. } => VmDriver::CloudHypervisor,
        }
    }
}

/// How long the VMM's API may take to answer, and each API call.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Boots `kernel` with `initramfs` under `vmm` as `uid`: Ok once the agent's
/// probe line is on the console within `timeout`.
pub(super) async fn boot(
    vmm: Vmm<'_>,
    root: &Path,
    uid: u32,
    kernel: &Path,
    initramfs: &Path,
    timeout: Duration,
) -> Result<(), String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("this host has no /dev/kvm".into());
    }
    if vmm.driver() == VmDriver::Firecracker && !is_elf(kernel) {
        return Err(format!(
            "{} is not an ELF vmlinux (Firecracker loads no bzImage)",
            kernel.display()
        ));
    }
    let dir = root.join(format!(".probe-{}", vmm.driver().as_str()));
    let _ = std::fs::remove_dir_all(&dir);
    let r = boot_in(&vmm, &dir, uid, kernel, initramfs, timeout).await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

async fn boot_in(
    vmm: &Vmm<'_>,
    dir: &Path,
    uid: u32,
    kernel: &Path,
    initramfs: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let e = |what: &str, p: &Path, err: std::io::Error| format!("{what} {}: {err}", p.display());
    std::fs::create_dir_all(dir).map_err(|err| e("creating", dir, err))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .map_err(|err| e("chmod", dir, err))?;
    let config = dir.join("config.img");
    std::fs::write(&config, vec![0; CONFIG_DISK_SIZE]).map_err(|err| e("writing", &config, err))?;
    let rootfs = dir.join("root.img");
    std::fs::write(&rootfs, [0; 512]).map_err(|err| e("writing", &rootfs, err))?;
    std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o444))
        .map_err(|err| e("chmod", &rootfs, err))?;
    let log = dir.join("console.log");
    let started = Instant::now();
    match vmm {
        Vmm::Firecracker {
            jailer,
            firecracker,
        } => {
            let spec = FirecrackerSpec {
                id: "probe".into(),
                jailer: jailer.to_path_buf(),
                firecracker: firecracker.to_path_buf(),
                chroot_base: dir.join("jail"),
                uid,
                cpus: 1,
                memory_mib: 256,
                kernel: kernel.to_path_buf(),
                initramfs: initramfs.to_path_buf(),
                rootfs,
                disk_gib: 1,
                config_disk: config,
                tap: None,
                cgroup: None,
                boot_args: format!("{KERNEL_CMDLINE} {PROBE_ARG}"),
                log: log.clone(),
                api_timeout: API_TIMEOUT,
            };
            std::fs::create_dir(&spec.chroot_base)
                .map_err(|err| e("creating", &spec.chroot_base, err))?;
            let mut vm = FirecrackerVm::launch(&spec)
                .await
                .map_err(|err| err.to_string())?;
            let r = watch(&log, started, timeout, || vm.exited()).await;
            vm.kill().await;
            let _ = vm.cleanup();
            r
        }
        Vmm::CloudHypervisor {
            cloud_hypervisor,
            setpriv,
            unshare,
        } => {
            let spec = ChvSpec {
                id: "probe".into(),
                cloud_hypervisor: cloud_hypervisor.to_path_buf(),
                setpriv: setpriv.to_path_buf(),
                unshare: unshare.to_path_buf(),
                dir: dir.join("vmm"),
                uid,
                cpus: 1,
                memory_mib: 256,
                kernel: kernel.to_path_buf(),
                initramfs: initramfs.to_path_buf(),
                rootfs,
                disk_gib: 1,
                config_disk: config,
                tap: None,
                cgroup_procs: vec![],
                cmdline: format!("{} {PROBE_ARG}", chv::cmdline()),
                log: log.clone(),
                api_timeout: API_TIMEOUT,
                api_fd: None,
            };
            let mut vm = ChvVm::launch(&spec).await.map_err(|err| err.to_string())?;
            let r = watch(&log, started, timeout, || vm.exited()).await;
            vm.kill().await;
            let _ = vm.cleanup();
            r
        }
    }
}

/// Polls the console log for the probe line until `timeout` (counted from `started`) or until
/// the VMM exits.
async fn watch(
    log: &Path,
    started: Instant,
    timeout: Duration,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<(), String> {
    loop {
        let console = std::fs::read_to_string(log).unwrap_or_default();
        if console.contains(PROBE_OK) {
            return Ok(());
        }
        if let Some(status) = exited() {
            return Err(format!(
                "the VMM exited ({status}) before the agent answered: {}",
                last_words(&console)
            ));
        }
        if started.elapsed() >= timeout {
            let said = last_words(&console);
            return Err(format!(
                "the probe guest did not finish booting in {} s ({})",
                timeout.as_secs(),
                if said.is_empty() {
                    "its console stayed silent".to_string()
                } else {
                    format!("its console's last words: {said}")
                }
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn last_words(console: &str) -> String {
    let tail: Vec<&str> = console
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .rev()
        .take(2)
        .collect();
    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Whether `p` starts like an ELF file.
pub(crate) fn is_elf(p: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head == b"\x7fELF"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_s_last_words_skip_blank_lines() {
        assert_eq!(last_words("a\nb\n\n  c  \n\n"), "b | c");
        assert_eq!(last_words(""), "");
    }

    #[test]
    fn only_elf_files_are_kernels_for_these_vmms() {
        let t = tempfile::tempdir().unwrap();
        let (elf, bz) = (t.path().join("vmlinux"), t.path().join("bzImage"));
        std::fs::write(&elf, b"\x7fELF\x02\x01").unwrap();
        std::fs::write(&bz, b"MZ\x00\x00HdrS").unwrap();
        assert!(is_elf(&elf));
        assert!(!is_elf(&bz));
        assert!(!is_elf(&t.path().join("missing")));
    }
}
