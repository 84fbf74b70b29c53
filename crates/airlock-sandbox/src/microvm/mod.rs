//! The `microvm` backend: each runner in a fresh virtual machine, thrown away after its job. Root,
//! Docker and a kernel of the job's own are safe inside because the wall is the hypervisor.
//!
//! Per sandbox, under `root/<id>/` (mode 0710, group = the VM's own uid: its VMM may enter, nobody
//! else may; each file has its own mode):
//! - `disk.qcow2`: the per-job copy-on-write layer over the image's read-only `rootfs.ext4`,
//!   whose virtual size is the pool's `disk_gib` (the guest grows its ext4 to it and can never
//!   write more); deleted with the sandbox;
//! - `config.img`: the config disk (see `airlock_agent::config`): empty until `start` writes the
//!   guest's config with its JIT secret into it; the guest wipes it once read and writes the
//!   runner's exit status back into it before powering off. Mode 0600, owned by the VM's uid;
//! - `image`: the image it was made from; `launch`: what `start` needs that `create` decided
//!   (the VM's uid, address, cgroups and the VMM's argv; no secrets);
//! - `runner.log` (the serial console: the agent's and the runner's output, capped), `pid`,
//!   `exit_status`: as with every backend (see `supervise`).
//!
//! Each VM's VMM runs as its own unprivileged uid (`uid_base` + the index of its address lease),
//! so no two VMMs share a uid, in its own cgroup `/airlock/<tag>-<id>` with the pool's CPU quota
//! and its guest memory plus a fixed overhead; its tap (`airl…`, owned by that uid) gets its /30
//! from the host's shared leases, so the one `inet airlock` table keeps it off the host and off
//! every other sandbox exactly as it does containers.
//!
//! `list` reports every sandbox with any remnant (directory, tap, lease, cgroup); `destroy` kills
//! the VMM, then removes the tap, the lease, the cgroup and the files, in that order, each step
//! idempotent.

pub mod chv;
pub mod firecracker;
mod probe;
mod qemu;
mod tsc;
pub mod vmm_api;

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use airlock_agent::config::{
    GuestConfig, GuestResult, NetSpec, RootSpec, RunnerSpec, CONFIG_DISK_SIZE, CONFIG_VERSION,
};
use airlock_core::{Accel, BackendKind, VmDriver};
use airlock_net::{self as net, Leases, Subnet};
use async_trait::async_trait;

use crate::cgroup::{self, VmmLimits};
use crate::supervise::{self, status_of, LogKeep, Watch};
use crate::{check_id, Backend, BackendSpec, SandboxError, SandboxSpec, SandboxStatus, Secret};
use chv::ChvSpec;
use firecracker::FirecrackerSpec;
use vmm_api::ApiClient;

pub const DEFAULT_UID_BASE: u32 = 200_000;
/// Host memory a VMM may use beyond its guest's RAM (QEMU's own heap, TCG's translation cache).
pub const VMM_OVERHEAD_MIB: u64 = 384;
/// The user the runner runs as inside images.
const RUNNER_USER: &str = "runner";

#[derive(Debug, Clone)]
pub struct MicrovmConfig {
    /// Sandbox directories live here (`state_dir/vms`).
    pub root: PathBuf,
    /// The host's address leases (shared with every other backend) and the sandbox subnet.
    pub net: Leases,
    pub qemu: PathBuf,
    pub firecracker: PathBuf,
    pub jailer: PathBuf,
    pub cloud_hypervisor: PathBuf,
    /// The drivers to make ready (each one's programs must be installed): the pools' drivers.
    pub drivers: Vec<VmDriver>,
    /// VMMs run as `uid_base + n` (n < 65536), each its own.
    pub uid_base: u32,
    pub log_cap: u64,
    /// Name servers for guests; empty: the host's non-loopback ones.
    pub dns: Vec<Ipv4Addr>,
    /// Keeps finished sandboxes' logs; `None`: they go with the sandbox.
    pub logs: Option<LogKeep>,
    /// How long a probe boot may take: KVM's and TCG's.
    pub probe_timeouts: (Duration, Duration),
}

impl MicrovmConfig {
    pub fn new(root: PathBuf) -> MicrovmConfig {
        MicrovmConfig {
            net: Leases::new(
                net::lease_dir(root.parent().unwrap_or(&root)),
                Subnet::parse(crate::container::DEFAULT_SUBNET).expect("valid default"),
            ),
            root,
            qemu: "qemu-system-x86_64".into(),
            firecracker: "firecracker".into(),
            jailer: "jailer".into(),
            cloud_hypervisor: "cloud-hypervisor".into(),
            drivers: vec![VmDriver::Qemu],
            uid_base: DEFAULT_UID_BASE,
            log_cap: crate::process::DEFAULT_LOG_CAP,
            dns: Vec::new(),
            logs: None,
            probe_timeouts: (Duration::from_secs(8), Duration::from_secs(30)),
        }
    }
}

/// What a probe boot of one kernel found: the accelerator to use, and why, when it is not the
/// one asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    /// Set when `auto` fell back to TCG: the reason, for `airlock status` and the logs.
    pub warning: Option<String>,
}

/// (driver, kernel, initramfs, accelerator asked for).
type ProbeKey = (VmDriver, PathBuf, PathBuf, Accel);

/// The programs of the drivers this backend made ready (absolute paths).
#[derive(Debug, Default)]
struct Programs {
    /// `qemu-system-x86_64`, `qemu-img`.
    qemu: Option<(PathBuf, PathBuf)>,
    /// `jailer`, `firecracker`.
    firecracker: Option<(PathBuf, PathBuf)>,
    /// `cloud-hypervisor`, `unshare`.
    cloud_hypervisor: Option<(PathBuf, PathBuf)>,
}

/// How long Firecracker's or Cloud Hypervisor's API may take to come up, and each call.
const VMM_API_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct MicrovmBackend {
    cfg: MicrovmConfig,
    programs: Programs,
    setpriv: PathBuf,
    tag: String,
    exits: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    watched: Watch,
    /// Probe results per (kernel, initramfs, accel asked for): a kernel is probed once.
    probed: Mutex<std::collections::HashMap<ProbeKey, Result<AccelChoice, String>>>,
    /// Serialises probe boots, so that concurrent creates of one kernel boot it once.
    probing: tokio::sync::Mutex<()>,
}

/// The first line `vmm --version` prints (QEMU takes `-version`, and answers to both).
async fn version_of(vmm: &Path) -> Result<String, SandboxError> {
    let out = tokio::process::Command::new(vmm)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| probe_err(format!("cannot run {}: {e}", vmm.display())))?;
    if !out.status.success() {
        return Err(probe_err(format!(
            "{} --version failed: {}",
            vmm.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string())
}

fn probe_err(detail: String) -> SandboxError {
    SandboxError::Probe {
        backend: "microvm",
        detail,
    }
}

fn setup(id: &str, what: &str, e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Setup {
        id: id.into(),
        detail: format!("{what}: {e}"),
    }
}

impl MicrovmBackend {
    /// Checks what every VM needs on this host (root, the VMM and its tools, the network), and
    /// sets up the host's network rules. Whether a kernel boots, and with which accelerator, is
    /// probed per kernel by `accel_for`.
    pub async fn probe(
        cfg: MicrovmConfig,
        exits: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) -> Result<MicrovmBackend, SandboxError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(probe_err(
                "needs root (taps, cgroups, an unprivileged uid per VMM); run airlock as root"
                    .into(),
            ));
        }
        let find = |name: &Path, package: &str| {
            crate::container::find_in_path(&name.to_string_lossy())
                .and_then(|p| std::fs::canonicalize(p).ok())
                .ok_or_else(|| {
                    probe_err(format!("{} is not installed ({package})", name.display()))
                })
        };
        let setpriv = find(Path::new("setpriv"), "apt-get install util-linux")?;
        for tool in ["ip", "nft"] {
            find(Path::new(tool), "apt-get install iproute2 nftables")?;
        }
        let mut programs = Programs::default();
        let mut versions = Vec::new();
        let mut drivers = cfg.drivers.clone();
        drivers.sort_by_key(|d| d.as_str());
        drivers.dedup();
        for driver in drivers {
            let vmm = match driver {
                VmDriver::Qemu => {
                    let qemu = find(&cfg.qemu, "apt-get install qemu-system-x86")?;
                    let img = find(Path::new("qemu-img"), "apt-get install qemu-utils")?;
                    programs.qemu = Some((qemu.clone(), img));
                    qemu
                }
                VmDriver::Firecracker => {
                    let see =
                        "set [microvm] firecracker and jailer to Firecracker's release binaries";
                    let fc = find(&cfg.firecracker, see)?;
                    let jailer = find(&cfg.jailer, see)?;
                    find(Path::new("mkfs.ext4"), "apt-get install e2fsprogs")?;
                    programs.firecracker = Some((jailer, fc.clone()));
                    fc
                }
                VmDriver::CloudHypervisor => {
                    let see = "set [microvm] cloud_hypervisor to Cloud Hypervisor's release binary";
                    let ch = find(&cfg.cloud_hypervisor, see)?;
                    let unshare = find(Path::new("unshare"), "apt-get install util-linux")?;
                    find(Path::new("mkfs.ext4"), "apt-get install e2fsprogs")?;
                    programs.cloud_hypervisor = Some((ch.clone(), unshare));
                    ch
                }
            };
            versions.push(format!("{}: {}", driver.as_str(), version_of(&vmm).await?));
        }
        std::fs::create_dir_all(&cfg.root)
            .and_then(|_| {
                std::fs::set_permissions(&cfg.root, std::fs::Permissions::from_mode(0o711))
            })
            .map_err(|e| probe_err(format!("cannot create {}: {e}", cfg.root.display())))?;
        net::setup_host().map_err(|e| probe_err(e.to_string()))?;
        let tag = crate::container::tag_of(&cfg.root);
        tracing::info!(vmms = %versions.join("; "), %tag, "microvm backend ready");
        Ok(MicrovmBackend {
            cfg,
            programs,
            setpriv,
            tag,
            exits,
            watched: Watch::default(),
            probed: Mutex::new(Default::default()),
            probing: tokio::sync::Mutex::new(()),
        })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join(id)
    }

    fn key(&self, id: &str) -> String {
        format!("{}/{id}", self.tag)
    }

    fn cgroup_name(&self, id: &str) -> String {
        format!("{}-{id}", self.tag)
    }

    /// The accelerator `kernel` really boots with here under `driver`, probing it (once per
    /// driver and kernel) by booting it with its initramfs in the agent's probe mode: `kvm` must
    /// boot or the pool is refused with the reason; `auto` takes KVM when it boots and, with
    /// QEMU, falls back to TCG with a warning; `tcg` must boot under emulation. Firecracker and
    /// Cloud Hypervisor run only on KVM: their `auto` is `kvm`.
    pub async fn accel_for(
        &self,
        driver: VmDriver,
        kernel: &Path,
        initramfs: &Path,
        asked: Accel,
    ) -> Result<AccelChoice, String> {
        let key = (driver, kernel.to_path_buf(), initramfs.to_path_buf(), asked);
        if let Some(r) = self
            .probed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return r.clone();
        }
        let _one = self.probing.lock().await;
        if let Some(r) = self
            .probed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return r.clone();
        }
        let r = match driver {
            VmDriver::Qemu => self.probe_qemu(kernel, initramfs, asked).await,
            _ => self.probe_kvm_only(driver, kernel, initramfs, asked).await,
        };
        match &r {
            Ok(AccelChoice {
                accel,
                warning: Some(w),
            }) => {
                tracing::warn!(driver = driver.as_str(), kernel = %kernel.display(), accel = accel.as_str(), "{w}")
            }
            Ok(c) => {
                tracing::info!(driver = driver.as_str(), kernel = %kernel.display(), accel = c.accel.as_str(), "kernel boots")
            }
            Err(e) => tracing::error!(driver = driver.as_str(), kernel = %kernel.display(), "{e}"),
        }
        self.probed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, r.clone());
        r
    }

    /// The uid probe boots run as: the last of the range, never a sandbox's.
    fn probe_uid(&self) -> u32 {
        self.cfg.uid_base + 65535
    }

    async fn probe_kvm_only(
        &self,
        driver: VmDriver,
        kernel: &Path,
        initramfs: &Path,
        asked: Accel,
    ) -> Result<AccelChoice, String> {
        let name = driver.as_str();
        if asked == Accel::Tcg {
            return Err(format!(
                "{name} needs KVM; only the qemu driver can emulate (accel = \"tcg\")"
            ));
        }
        let vmm = match (driver, &self.programs) {
            (
                VmDriver::Firecracker,
                Programs {
                    firecracker: Some((jailer, firecracker)),
                    ..
                },
            ) => probe::Vmm::Firecracker {
                jailer,
                firecracker,
            },
            (
                VmDriver::CloudHypervisor,
                Programs {
                    cloud_hypervisor: Some((cloud_hypervisor, unshare)),
                    ..
                },
            ) => probe::Vmm::CloudHypervisor {
                cloud_hypervisor,
                setpriv: &self.setpriv,
                unshare,
            },
            _ => return Err(self.not_ready(driver)),
        };
        let (kvm_timeout, _) = self.cfg.probe_timeouts;
        probe::boot(
            vmm,
            &self.cfg.root,
            self.probe_uid(),
            kernel,
            initramfs,
            kvm_timeout,
        )
        .await
        .map(|()| AccelChoice {
            accel: Accel::Kvm,
            warning: None,
        })
        .map_err(|e| {
            format!(
                "{name} runs only on KVM, and KVM cannot boot {} here: {e}; use driver = \"qemu\", which falls back to TCG",
                kernel.display()
            )
        })
    }

    fn not_ready(&self, driver: VmDriver) -> String {
        format!(
            "the {} driver was not made ready when the microvm backend started (no pool used it then)",
            driver.as_str()
        )
    }

    async fn probe_qemu(
        &self,
        kernel: &Path,
        initramfs: &Path,
        asked: Accel,
    ) -> Result<AccelChoice, String> {
        let Some((qemu, _)) = &self.programs.qemu else {
            return Err(self.not_ready(VmDriver::Qemu));
        };
        let (kvm_timeout, tcg_timeout) = self.cfg.probe_timeouts;
        let uid = self.probe_uid();
        let boot = |accel, timeout| {
            qemu::probe_boot(qemu, &self.setpriv, uid, kernel, initramfs, accel, timeout)
        };
        let r = match asked {
            Accel::Kvm => boot(Accel::Kvm, kvm_timeout)
                .await
                .map(|_| AccelChoice {
                    accel: Accel::Kvm,
                    warning: None,
                })
                .map_err(|e| {
                    format!(
                        "accel = \"kvm\", but KVM cannot boot {} here: {e}; use accel = \"auto\" or \"tcg\"",
                        kernel.display()
                    )
                }),
            Accel::Tcg => boot(Accel::Tcg, tcg_timeout)
                .await
                .map(|_| AccelChoice {
                    accel: Accel::Tcg,
                    warning: None,
                })
                .map_err(|e| format!("{} does not boot under TCG: {e}", kernel.display())),
            Accel::Auto => match boot(Accel::Kvm, kvm_timeout).await {
                Ok(()) => Ok(AccelChoice {
                    accel: Accel::Kvm,
                    warning: None,
                }),
                Err(kvm) => match boot(Accel::Tcg, tcg_timeout).await {
                    Ok(()) => Ok(AccelChoice {
                        accel: Accel::Tcg,
                        warning: Some(format!(
                            "KVM cannot boot this kernel here ({kvm}); VMs run under TCG emulation, several times slower"
                        )),
                    }),
                    Err(tcg) => Err(format!(
                        "{} boots neither with KVM ({kvm}) nor under TCG ({tcg})",
                        kernel.display()
                    )),
                },
            },
        };
        r
    }

    fn resolv(&self) -> Vec<Ipv4Addr> {
        if !self.cfg.dns.is_empty() {
            return self.cfg.dns.clone();
        }
        crate::container::host_name_servers()
    }

    async fn create_inner(
        &self,
        spec: &SandboxSpec,
        vm: &crate::VmImage,
    ) -> Result<(), SandboxError> {
        let id = spec.id.as_str();
        let dir = self.dir(id);
        for (what, p) in [
            ("disk", &vm.disk),
            ("kernel", &vm.kernel),
            ("initramfs", &vm.initramfs),
        ] {
            if !p.is_file() {
                return Err(setup(id, what, format!("{} is missing", p.display())));
            }
        }
        self.program(vm.driver)
            .map_err(|e| setup(id, "driver", e))?;
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
        std::fs::create_dir(&dir).map_err(|source| SandboxError::Create {
            id: id.into(),
            path: dir.clone(),
            source,
        })?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| setup(id, "chmod", e))?;
        std::fs::write(dir.join("image"), format!("{}\n", vm.image))
            .map_err(|e| setup(id, "image", e))?;
        let key = self.key(id);
        let index = self
            .cfg
            .net
            .acquire(&key)
            .map_err(|e| setup(id, "address", e))?;
        if index >= 65535 {
            return Err(setup(id, "uid", "more than 65535 VMs on one host"));
        }
        let uid = self.cfg.uid_base + index;
        let link = self.cfg.net.subnet().link(&key, index);
        // The VMM enters its directory by group; nobody else can.
        chown(&dir, 0, uid).map_err(|e| setup(id, "chown", e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o710))
            .map_err(|e| setup(id, "chmod", e))?;
        let config = dir.join("config.img");
        write_config_disk(&config, &vec![0; CONFIG_DISK_SIZE], uid)
            .map_err(|e| setup(id, "config disk", e))?;
        net::create_tap(&link, &key, uid).map_err(|e| setup(id, "tap", e))?;
        let limits = VmmLimits {
            memory_bytes: (vm.memory_mib + VMM_OVERHEAD_MIB) << 20,
            cpus: vm.cpus as f64,
            pids: 512,
        };
        let cgroups =
            cgroup::create(&self.cgroup_name(id), limits).map_err(|e| setup(id, "cgroup", e))?;
        let argv = match vm.driver {
            VmDriver::Qemu => self.qemu_argv(id, vm, uid, &config).await?,
            VmDriver::Firecracker => {
                let fc = self.fc_spec(id, vm, uid)?;
                let jail = firecracker::prepare(&fc).map_err(|e| setup(id, "jail", e))?;
                same_file(&config, &jail.root.join("config.img"))
                    .map_err(|e| setup(id, "jail", e))?;
                firecracker::jailer_argv(&fc)
            }
            VmDriver::CloudHypervisor => {
                let ch = self.chv_spec(id, vm, uid)?;
                chv::prepare(&ch).map_err(|e| setup(id, "VMM directory", e))?;
                same_file(&config, &ch.dir.join("config.img"))
                    .map_err(|e| setup(id, "VMM directory", e))?;
                chv::argv(&ch)
            }
        };
        if let Some(a) = argv.iter().find(|a| a.to_string_lossy().contains('\n')) {
            // The launch record keeps one argument a line.
            return Err(setup(
                id,
                "launch",
                format!("a VMM argument holds a line break: {a:?}"),
            ));
        }
        std::fs::write(
            dir.join("launch"),
            launch_record(vm.driver, &cgroups, uid, &link, &argv),
        )
        .map_err(|e| setup(id, "launch", e))?;
        Ok(())
    }

    /// The absolute path of `driver`'s VMM, if it was made ready.
    fn program(&self, driver: VmDriver) -> Result<&Path, String> {
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
    async fn qemu_argv(
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
    fn fc_spec(
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
    fn chv_spec(&self, id: &str, vm: &crate::VmImage, uid: u32) -> Result<ChvSpec, SandboxError> {
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
        })
    }

    /// Configures and boots a spawned Firecracker or Cloud Hypervisor over its API, once its
    /// socket answers. QEMU needs nothing: its argv said everything.
    async fn boot_over_api(
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
fn same_file(a: &Path, b: &Path) -> Result<(), String> {
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
fn launch_record(
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
struct Launch {
    driver: VmDriver,
    uid: u32,
    ip: Option<Ipv4Addr>,
    gateway: Option<Ipv4Addr>,
    cgroups: Vec<PathBuf>,
    argv: Vec<String>,
}

fn read_launch(text: &str) -> Option<Launch> {
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

fn chown(p: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    nix::unistd::chown(
        p,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(std::io::Error::from)
}

/// Makes `p` the VM's own: owner `uid`, mode 0600.
fn owned_by(p: &Path, uid: u32) -> std::io::Result<()> {
    chown(p, uid, uid)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
}

/// Writes the config disk in place (the VMM has not opened it yet): mode 0600 from its creation,
/// owned by the VM's uid. Not synced: the VMM reads it through the same page cache, and a host
/// crash ends the VM it was for.
fn write_config_disk(p: &Path, bytes: &[u8], uid: u32) -> std::io::Result<()> {
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

/// The runner's exit as the guest reported it on its config disk; `None` when it never got that
/// far (a stalled boot, a kernel panic, a kill) or reported an error.
fn guest_exit(dir: &Path) -> Option<i32> {
    use std::io::Read;
    let mut head = vec![0; airlock_agent::config::RESULT_SIZE];
    let mut f = std::fs::File::open(dir.join("config.img")).ok()?;
    f.read_exact(&mut head).ok()?;
    match GuestResult::from_record(&head) {
        Ok(Some(GuestResult::ExitCode(c))) => Some(c),
        Ok(Some(GuestResult::Signal(s))) => Some(128 + s),
        _ => None,
    }
}

/// The sandbox's status from its files, with the runner's own exit code once the VMM is gone.
fn vm_status(dir: &Path) -> SandboxStatus {
    match status_of(dir) {
        SandboxStatus::Exited(_) => SandboxStatus::Exited(guest_exit(dir)),
        s => s,
    }
}

#[async_trait]
impl Backend for MicrovmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Microvm
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        check_id(&spec.id)?;
        let BackendSpec::Microvm(vm) = &spec.backend else {
            return Err(SandboxError::Setup {
                id: spec.id.clone(),
                detail: format!(
                    "a {} spec given to the microvm backend",
                    spec.backend.kind()
                ),
            });
        };
        if self.dir(&spec.id).exists() {
            return Err(SandboxError::Create {
                id: spec.id.clone(),
                path: self.dir(&spec.id),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        let r = self.create_inner(spec, vm).await;
        if r.is_err() {
            let _ = self.destroy(&spec.id).await;
        }
        r
    }

    async fn start(&self, spec: &SandboxSpec, jit: &Secret) -> Result<(), SandboxError> {
        check_id(&spec.id)?;
        let BackendSpec::Microvm(vm) = &spec.backend else {
            return Err(SandboxError::Missing {
                id: spec.id.clone(),
            });
        };
        let dir = self.dir(&spec.id);
        let launch = std::fs::read_to_string(dir.join("launch"))
            .ok()
            .and_then(|t| read_launch(&t))
            .ok_or_else(|| SandboxError::Missing {
                id: spec.id.clone(),
            })?;
        let program = self
            .program(launch.driver)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| launch.driver.as_str().into());
        let start_err = |e: String| SandboxError::Start {
            id: spec.id.clone(),
            command: program.clone(),
            source: std::io::Error::other(e),
        };
        if launch.driver != vm.driver {
            return Err(start_err(format!(
                "created for the {} driver, started with {}",
                launch.driver.as_str(),
                vm.driver.as_str()
            )));
        }
        let guest = GuestConfig {
            version: CONFIG_VERSION,
            hostname: format!("airlock-{}", &spec.id[..spec.id.len().min(20)]),
            // QEMU's vda is the job's own qcow2 layer, grown to disk_gib; Firecracker and Cloud
            // Hypervisor get the image read-only with a scratch disk as its overlay.
            root: match vm.driver {
                VmDriver::Qemu => RootSpec {
                    device: "/dev/vda".into(),
                    writable_layer: None,
                    grow: true,
                },
                _ => firecracker::root_spec(),
            },
            net: match (launch.ip, launch.gateway) {
                (Some(address), Some(gateway)) => Some(NetSpec {
                    address,
                    prefix: 30,
                    gateway,
                    dns: self.resolv(),
                }),
                _ => None,
            },
            runner: RunnerSpec {
                command: spec.runner_command.to_string_lossy().into_owned(),
                user: RUNNER_USER.into(),
                env: Default::default(),
            },
            jit: airlock_agent::config::Secret::new(jit.expose()),
            docker: vm.docker,
        };
        let bytes = guest
            .to_disk_bytes()
            .map_err(|e| start_err(e.to_string()))?;
        write_config_disk(&dir.join("config.img"), &bytes, launch.uid)
            .map_err(|e| start_err(format!("writing the config disk: {e}")))?;
        drop(bytes);
        // The supervisor's shell joins the VMM's cgroups, then becomes the unprivileged VMM.
        let joins: Vec<String> = launch
            .cgroups
            .iter()
            .map(|c| c.join("cgroup.procs").to_string_lossy().into_owned())
            .collect();
        let mut argv: Vec<OsString> = vec![
            "/bin/sh".into(),
            "-c".into(),
            r#"for f in $AIRLOCK_CGROUP_PROCS; do echo $$ > "$f" || exit 125; done; exec "$@""#
                .into(),
            "airlock-vmm".into(),
        ];
        argv.extend(launch.argv.iter().map(OsString::from));
        let refs: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
        let procs = joins.join(" ");
        let mut cmd = supervise::command(
            &dir,
            self.cfg.log_cap,
            &refs,
            &[("AIRLOCK_CGROUP_PROCS", std::ffi::OsStr::new(&procs))],
        );
        if launch.driver == VmDriver::Qemu {
            // QEMU takes its tap as fd 3; the others open it (Firecracker, in its jail) or are
            // handed it over their API (Cloud Hypervisor).
            let tap = net::open_tap(&net::link_name(&self.key(&spec.id)))
                .map_err(|e| start_err(e.to_string()))?;
            cmd.stdin(Stdio::from(tap));
        }
        let child = cmd
            .spawn()
            .map_err(|e| start_err(format!("spawning the VMM: {e}")))?;
        let pid = child.id().unwrap_or(0) as i32;
        supervise::write_pid(&dir, pid).map_err(|e| start_err(e.to_string()))?;
        self.watched
            .spawn(spec.id.clone(), child, self.exits.clone());
        if let Err(e) = self.boot_over_api(spec, vm, launch.uid).await {
            // Nothing runs half-configured: the VMM goes, the caller destroys the rest.
            supervise::kill_group(&dir);
            return Err(start_err(format!(
                "configuring and booting the VM over {}'s API: {e}",
                launch.driver.as_str()
            )));
        }
        Ok(())
    }

    async fn status(&self, id: &str) -> Result<SandboxStatus, SandboxError> {
        check_id(id)?;
        Ok(supervise::reported(
            &self.watched,
            id,
            |id| vm_status(&self.dir(id)),
            || self.list_ids().iter().any(|x| x == id),
        ))
    }

    async fn list(&self) -> Result<Vec<(String, SandboxStatus)>, SandboxError> {
        Ok(self
            .list_ids()
            .into_iter()
            .map(|id| {
                let st =
                    supervise::reported(&self.watched, &id, |id| vm_status(&self.dir(id)), || true);
                (id, st)
            })
            .collect())
    }

    async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        check_id(id)?;
        let dir = self.dir(id);
        self.watched.remove(id);
        let fail = |detail: String| SandboxError::Destroy {
            id: id.into(),
            detail,
        };
        // 1. The VMM and its supervisor (one process group), then any process left in its cgroup.
        supervise::kill_group(&dir);
        let name = self.cgroup_name(id);
        // 2. The tap, then its lease.
        let key = self.key(id);
        net::delete(&net::link_name(&key)).map_err(|e| fail(e.to_string()))?;
        self.cfg
            .net
            .release(&key)
            .map_err(|e| fail(e.to_string()))?;
        // 3. The cgroup (empty once the VMM is gone; retried while it finishes dying).
        let mut last = Ok(());
        for _ in 0..100 {
            cgroup::kill_all(&name);
            last = cgroup::remove(&name);
            if last.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        last.map_err(fail)?;
        // 4. Files, the log kept first.
        if let Some(l) = &self.cfg.logs {
            l.keep(&dir, id);
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(fail(format!("removing {}: {e}", dir.display()))),
        }
    }
}

impl MicrovmBackend {
    /// Every sandbox id with anything left on the host: directory, tap, lease, cgroup.
    fn list_ids(&self) -> Vec<String> {
        supervise::ids_on_host(&self.cfg.root, &self.tag, &self.cfg.net)
            .into_iter()
            .collect()
    }

    /// Sandboxes' image references (`NAME@sha256:…`), for keeping images in use.
    pub fn images_in_use(root: &Path) -> std::collections::HashSet<String> {
        crate::container::ContainerBackend::images_in_use(root)
    }
}

/// Everything microVM sandboxes under `root` have left on the host, one line each (directories,
/// taps, address leases, cgroups, VMM processes; see `supervise::host_remnants`). Empty when
/// nothing is left.
pub fn remnants(root: &Path) -> Vec<String> {
    supervise::host_remnants(root, &crate::container::tag_of(root))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_guest_exit_comes_from_its_config_disk() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("pid"), "999999999 1\n").unwrap();
        std::fs::write(d.join("exit_status"), "0\n").unwrap();
        let mut disk = GuestResult::ExitCode(3).to_record();
        disk.resize(CONFIG_DISK_SIZE, 0);
        std::fs::write(d.join("config.img"), &disk).unwrap();
        assert_eq!(
            vm_status(d),
            SandboxStatus::Exited(Some(3)),
            "the runner's code, not QEMU's 0"
        );
        std::fs::write(d.join("config.img"), vec![0; CONFIG_DISK_SIZE]).unwrap();
        assert_eq!(
            vm_status(d),
            SandboxStatus::Exited(None),
            "never reported: unknown"
        );
        let mut err = GuestResult::Error("no root".into()).to_record();
        err.resize(CONFIG_DISK_SIZE, 0);
        std::fs::write(d.join("config.img"), &err).unwrap();
        assert_eq!(vm_status(d), SandboxStatus::Exited(None));
    }
}
