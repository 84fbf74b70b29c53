//! What `create` decides and `start` needs per driver: QEMU's copy-on-write layer and argv,
//! the Firecracker (jailer) and Cloud Hypervisor specs of a sandbox, their configuration and boot
//! over the VMM's API, and the `launch` record a sandbox keeps of it all (no secrets).

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use airlock_core::{Accel, VmDriver};
use airlock_net as net;

use super::chv::{self, ChvSpec};
use super::firecracker::{self, FirecrackerSpec};
use super::vmm_api::ApiClient;
use super::{owned_by, qemu, setup, MicrovmBackend, VMM_API_TIMEOUT};
use crate::supervise;
use crate::{SandboxError, SandboxSpec, SandboxStatus};

impl MicrovmBackend {
    /// The absolute path of `driver`'s VMM, if it was made ready.
    pub(super) fn program(&self, driver: VmDriver) -> Result<&Path, String> {
        match driver {
            VmDriver::Qemu => self.programs.qemu.as_ref().map(|p| p.0.as_path()),
            VmDriver::Firecracker => self.programs.firecracker.as_ref().map(|p| p.1.as_path()),
            VmDriver::CloudHypervisor => self
                .programs
                .cloud_hypervisor
                .as_ref()
                .map(|p| p.0.as_path()),
        }
        .ok_or_else(|| self.not_ready(driver))
    }

    /// QEMU's copy-on-write layer and argv (behind `setpriv`, see `qemu::unprivileged`).
    pub(super) async fn qemu_argv(
        &self,
        id: &str,
        vm: &crate::VmImage,
        uid: u32,
        config: &Path,
    ) -> Result<Vec<OsString>, SandboxError> {
        let Some((qemu, qemu_img)) = &self.programs.qemu else {
            return Err(setup(id, "driver", self.not_ready(VmDriver::Qemu)));
        };
        let disk = self.dir(id).join("disk.qcow2");
        let out = tokio::process::Command::new(qemu_img)
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&vm.disk)
            .arg(&disk)
            .arg(format!("{}G", vm.disk_gib))
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| setup(id, "qemu-img", e))?;
        if !out.status.success() {
            return Err(setup(
                id,
                "qemu-img create",
                String::from_utf8_lossy(&out.stderr).trim(),
            ));
        }
        owned_by(&disk, uid).map_err(|e| setup(id, "disk", e))?;
        let accel = match vm.accel {
            Accel::Auto => {
                self.accel_for(VmDriver::Qemu, &vm.kernel, &vm.initramfs, Accel::Auto)
                    .await
                    .map_err(|e| setup(id, "accelerator", e))?
                    .accel
            }
            a => a,
        };
        let mut argv = qemu::unprivileged(&self.setpriv, uid, accel);
        argv.push(qemu.clone().into_os_string());
        argv.extend(qemu::argv(&qemu::Vm {
            name: id,
            accel,
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            kernel: &vm.kernel,
            initramfs: &vm.initramfs,
            disk: &disk,
            config,
        }));
        Ok(argv)
    }

    /// The Firecracker VM of sandbox `id`: its jail under `<dir>/jail`, the jailer's own
    /// cgroups left out (the supervisor joins airlock's before it runs the jailer).
    pub(super) fn fc_spec(
        &self,
        id: &str,
        vm: &crate::VmImage,
        uid: u32,
    ) -> Result<FirecrackerSpec, SandboxError> {
        let Some((jailer, firecracker)) = &self.programs.firecracker else {
            return Err(setup(id, "driver", self.not_ready(VmDriver::Firecracker)));
        };
        let dir = self.dir(id);
        Ok(FirecrackerSpec {
            id: id.into(),
            jailer: jailer.clone(),
            firecracker: firecracker.clone(),
            chroot_base: dir.join("jail"),
            uid,
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            kernel: vm.kernel.clone(),
            initramfs: vm.initramfs.clone(),
            rootfs: vm.disk.clone(),
            disk_gib: vm.disk_gib.into(),
            config_disk: dir.join("config.img"),
            tap: Some(net::link_name(&self.key(id))),
            cgroup: None,
            boot_args: airlock_agent::KERNEL_CMDLINE.into(),
            log: dir.join("runner.log"),
            api_timeout: VMM_API_TIMEOUT,
        })
    }

    /// The Cloud Hypervisor VM of sandbox `id`, its files under `<dir>/vmm`.
    pub(super) fn chv_spec(
        &self,
        id: &str,
        vm: &crate::VmImage,
        uid: u32,
    ) -> Result<ChvSpec, SandboxError> {
        let Some((cloud_hypervisor, unshare)) = &self.programs.cloud_hypervisor else {
            return Err(setup(
                id,
                "driver",
                self.not_ready(VmDriver::CloudHypervisor),
            ));
        };
        let dir = self.dir(id);
        Ok(ChvSpec {
            id: id.into(),
            cloud_hypervisor: cloud_hypervisor.clone(),
            setpriv: self.setpriv.clone(),
            unshare: unshare.clone(),
            dir: dir.join("vmm"),
            uid,
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            kernel: vm.kernel.clone(),
            initramfs: vm.initramfs.clone(),
            rootfs: vm.disk.clone(),
            disk_gib: vm.disk_gib.into(),
            config_disk: dir.join("config.img"),
            tap: Some(net::link_name(&self.key(id))),
            cgroup_procs: vec![],
            cmdline: chv::cmdline(),
            log: dir.join("runner.log"),
            api_timeout: VMM_API_TIMEOUT,
            // Bound by `start` and handed over (the socket path may be longer than Cloud
            // Hypervisor could bind).
            api_fd: Some(supervise::HANDED_FD),
        })
    }

    /// Configures and boots a spawned Firecracker or Cloud Hypervisor over its API, once its
    /// socket answers. QEMU needs nothing: its argv said everything.
    pub(super) async fn boot_over_api(
        &self,
        spec: &SandboxSpec,
        vm: &crate::VmImage,
        uid: u32,
    ) -> Result<(), String> {
        let id = spec.id.as_str();
        let dir = self.dir(id);
        let exited = || {
            matches!(supervise::status_of(&dir), SandboxStatus::Exited(_))
                .then(|| format!("its console's last words: {}", log_tail(&dir)))
        };
        match vm.driver {
            VmDriver::Qemu => Ok(()),
            VmDriver::Firecracker => {
                let fc = self.fc_spec(id, vm, uid).map_err(|e| e.to_string())?;
                let jail = firecracker::Jail::of(&fc.chroot_base, &fc.firecracker, id);
                let api = ApiClient::new(jail.socket(), VMM_API_TIMEOUT);
                api.wait_ready(VMM_API_TIMEOUT, exited)
                    .await
                    .map_err(|e| e.to_string())?;
                firecracker::boot(&api, &fc)
                    .await
                    .map_err(|e| e.to_string())
            }
            VmDriver::CloudHypervisor => {
                let ch = self.chv_spec(id, vm, uid).map_err(|e| e.to_string())?;
                let api = ApiClient::new(ch.socket(), VMM_API_TIMEOUT);
                api.wait_ready(VMM_API_TIMEOUT, exited)
                    .await
                    .map_err(|e| e.to_string())?;
                chv::boot(&api, &ch).await.map_err(|e| e.to_string())
            }
        }
    }
}

/// The last lines of a sandbox's console log, for errors.
fn log_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("runner.log")).unwrap_or_default();
    let tail: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .rev()
        .take(3)
        .collect();
    if tail.is_empty() {
        return "(none)".into();
    }
    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// That `a` and `b` are one file (the VMM's view of the config disk is the backend's), so the
/// JIT config written into one is what the guest reads and its result comes back.
pub(super) fn same_file(a: &Path, b: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let (ma, mb) = (
        std::fs::metadata(a).map_err(|e| format!("{}: {e}", a.display()))?,
        std::fs::metadata(b).map_err(|e| format!("{}: {e}", b.display()))?,
    );
    if (ma.dev(), ma.ino()) == (mb.dev(), mb.ino()) {
        Ok(())
    } else {
        Err(format!(
            "{} is a copy of {}, not a link to it",
            b.display(),
            a.display()
        ))
    }
}

/// What `start` needs that `create` decided, one field a line: `driver`, `uid`,
/// `cgroup <dir>`…, `ip`, `gateway`, then `argv` with the VMM's arguments, one a line. No
/// secrets.
pub(super) fn launch_record(
    driver: VmDriver,
    cgroups: &[PathBuf],
    uid: u32,
    link: &net::Link,
    argv: &[OsString],
) -> String {
    let mut s = format!(
        "driver {}\nuid {uid}\nip {}\ngateway {}\n",
        driver.as_str(),
        link.sandbox_ip,
        link.host_ip
    );
    for c in cgroups {
        s.push_str(&format!("cgroup {}\n", c.display()));
    }
    s.push_str("argv\n");
    for a in argv {
        s.push_str(&a.to_string_lossy());
        s.push('\n');
    }
    s
}

#[derive(Debug, Default, PartialEq)]
pub(super) struct Launch {
    pub(super) driver: VmDriver,
    pub(super) uid: u32,
    pub(super) ip: Option<Ipv4Addr>,
    pub(super) gateway: Option<Ipv4Addr>,
    pub(super) cgroups: Vec<PathBuf>,
    pub(super) argv: Vec<String>,
}

pub(super) fn read_launch(text: &str) -> Option<Launch> {
    let mut l = Launch::default();
    let mut lines = text.lines();
    for line in lines.by_ref() {
        if line == "argv" {
            break;
        }
        let (k, v) = line.split_once(' ')?;
        match k {
            "driver" => l.driver = VmDriver::parse(v)?,
            "uid" => l.uid = v.parse().ok()?,
            "ip" => l.ip = v.parse().ok(),
            "gateway" => l.gateway = v.parse().ok(),
            "cgroup" => l.cgroups.push(v.into()),
            _ => return None,
        }
    }
    l.argv = lines.map(str::to_string).collect();
    (l.uid != 0 && !l.argv.is_empty()).then_some(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_net::Subnet;

    #[test]
    fn launch_records_round_trip_and_hold_no_secret() {
        let link = Subnet::parse("10.9.0.0/16").unwrap().link("t/a", 3);
        let argv: Vec<OsString> = vec!["qemu".into(), "-m".into(), "512".into()];
        let text = launch_record(
            VmDriver::Firecracker,
            &[PathBuf::from("/sys/fs/cgroup/memory/airlock/t-a")],
            200_003,
            &link,
            &argv,
        );
        let l = read_launch(&text).unwrap();
        assert_eq!(l.driver, VmDriver::Firecracker);
        assert_eq!(l.uid, 200_003);
        assert_eq!(l.ip, Some(link.sandbox_ip));
        assert_eq!(l.gateway, Some(link.host_ip));
        assert_eq!(
            l.cgroups,
            [PathBuf::from("/sys/fs/cgroup/memory/airlock/t-a")]
        );
        assert_eq!(l.argv, ["qemu", "-m", "512"]);
        assert!(
            read_launch("uid 0\nargv\nqemu\n").is_none(),
            "never as root"
        );
        assert!(read_launch("colour red\nargv\nq\n").is_none());
        assert!(read_launch("driver bochs\nuid 5\nargv\nq\n").is_none());
        let old = read_launch("uid 5\nargv\nq\n").unwrap();
        assert_eq!(
            old.driver,
            VmDriver::Qemu,
            "records from before drivers were QEMU's"
        );
    }
}
