//! The backends a daemon drives: a `Registry` holding the process backend always, and every other
//! kind a pool asks for, each probed at start-up (a failed probe stops the start with the probe's
//! reasons). Operations are routed by kind (see `airlock_sandbox::registry`), and every backend
//! takes its sandbox addresses from the one lease directory of `airlock_net`.
//!
//! It also turns a pool into a sandbox spec: for container pools it resolves the pool's image to
//! its newest build (or the pinned digest) and the user-namespace-shifted copy of its rootfs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use airlock_config::{BackendKind, Config, PoolConfig};
use airlock_image::ImageStore;
use airlock_net::{Leases, Subnet};
use airlock_sandbox::container::{ContainerBackend, ContainerConfig};
use airlock_sandbox::microvm::{AccelChoice, MicrovmBackend, MicrovmConfig};
use airlock_sandbox::process::ProcessBackend;
use airlock_sandbox::{
    BackendSpec, ContainerImage, Limits, LogKeep, Registry, SandboxError, SandboxSpec, VmImage,
};

#[derive(Debug)]
pub struct Backends {
    pub registry: Registry,
    /// The sandboxes' resolver and egress sessions, when a pool has a network of its own
    /// (containers, microVMs).
    pub egress: Option<airlock_egress::Egress>,
    microvm: Option<Arc<MicrovmBackend>>,
    container: Option<ContainerBackend>,
    images: ImageStore,
    uid_base: u32,
    /// What the probe said of each microVM pool's kernel (absent: not probed yet).
    accel: Mutex<HashMap<String, PoolAccel>>,
}

/// The accelerator a microVM pool's VMs boot with, as its probe settled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolAccel {
    Using(AccelChoice),
    /// The pool creates nothing: its kernel does not boot as asked (the reason).
    Refused(String),
}

impl PoolAccel {
    /// `kvm`, `tcg` or `refused`.
    pub fn label(&self) -> &'static str {
        match self {
            PoolAccel::Using(c) => c.accel.as_str(),
            PoolAccel::Refused(_) => "refused",
        }
    }

    /// What an operator should know: the fallback's or the refusal's reason.
    pub fn warning(&self) -> Option<&str> {
        match self {
            PoolAccel::Using(c) => c.warning.as_deref(),
            PoolAccel::Refused(r) => Some(r),
        }
    }
}

/// Why a pool's spec could not be made; the executor's error class.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The image is missing, has no such kernel, or is not bootable.
    #[error("{0}")]
    Image(String),
    /// The microVM probe refused the pool's kernel with the accelerator asked for.
    #[error("{0}")]
    Probe(String),
}

impl Backends {
    pub async fn start(
        cfg: &Config,
        exits: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<Backends, SandboxError> {
        Self::build(cfg, Some(exits), &cfg.server.state_dir, true).await
    }

    /// What `start` probes, made under `scratch` instead of the state directory and without the
    /// egress resolver (which would take over a running daemon's), for `airlock doctor`: the
    /// same programs found, the same probe containers and boots, none of a daemon's files
    /// touched. Images are still the state directory's.
    pub(crate) async fn probe_in(
        cfg: &Config,
        scratch: &std::path::Path,
    ) -> Result<Backends, SandboxError> {
        Self::build(cfg, None, scratch, false).await
    }

    async fn build(
        cfg: &Config,
        exits: Option<tokio::sync::mpsc::UnboundedSender<String>>,
        dir: &std::path::Path,
        with_egress: bool,
    ) -> Result<Backends, SandboxError> {
        let logs = LogKeep::new(dir.join("logs"), cfg.server.job_logs_keep);
        let process = ProcessBackend::new(dir.join("sandboxes"), exits.clone())
            .with_log_cap(cfg.server.job_log_max_bytes)
            .with_nice(cfg.server.sandbox_nice)
            .with_logs(logs.clone());
        process.probe().await?;
        let mut registry = Registry::new();
        registry.insert(Arc::new(process));
        let mut microvm = None;
        let mut container = None;
        let subnet = Subnet::parse(&cfg.container.subnet).ok_or_else(|| SandboxError::Probe {
            backend: "container",
            detail: format!("bad subnet {:?}", cfg.container.subnet),
        })?;
        let leases = Leases::new(airlock_net::lease_dir(dir), subnet);
        let wanted: std::collections::BTreeSet<BackendKind> =
            cfg.pools.iter().map(|p| p.backend).collect();
        let egress = if with_egress && wanted.iter().any(|k| *k != BackendKind::Process) {
            Some(start_egress(cfg).await?)
        } else {
            None
        };
        for kind in wanted {
            match kind {
                BackendKind::Process => {}
                BackendKind::Container => {
                    let mut c = ContainerConfig::new(dir.join("containers"));
                    c.runtime = cfg.container.runtime.clone();
                    // Each runtime a container pool names is probed now, so `serve` fails at
                    // once with its reason (an unknown name, a runtime that cannot run here).
                    c.runtimes = cfg
                        .pools
                        .iter()
                        .filter(|p| p.backend == BackendKind::Container)
                        .filter_map(|p| p.runtime.clone())
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    c.net = leases.clone();
                    c.uid_base = cfg.container.uid_base;
                    c.log_cap = cfg.server.job_log_max_bytes;
                    c.nice = cfg.server.sandbox_nice;
                    c.dns = cfg.container.dns.clone();
                    c.egress = egress.clone();
                    c.logs = Some(logs.clone());
                    let b = ContainerBackend::probe(c, exits.clone()).await?;
                    container = Some(b.clone());
                    registry.insert(Arc::new(b));
                }
                BackendKind::Microvm => {
                    let mut c = MicrovmConfig::new(dir.join("vms"));
                    c.net = leases.clone();
                    c.qemu = cfg.microvm.qemu.clone();
                    c.firecracker = cfg.microvm.firecracker.clone();
                    c.jailer = cfg.microvm.jailer.clone();
                    c.cloud_hypervisor = cfg.microvm.cloud_hypervisor.clone();
                    // Each driver a pool names is made ready now (its programs found), so
                    // `serve` names a missing one at once; QEMU when no pool names any.
                    let mut drivers: Vec<_> = cfg
                        .pools
                        .iter()
                        .filter(|p| p.backend == BackendKind::Microvm)
                        .filter_map(|p| p.microvm.as_ref().map(|m| m.driver))
                        .collect();
                    if drivers.is_empty() {
                        drivers.push(airlock_core::VmDriver::Qemu);
                    }
                    c.drivers = drivers;
                    c.uid_base = cfg.microvm.uid_base;
                    c.log_cap = cfg.server.job_log_max_bytes;
                    c.nice = cfg.server.sandbox_nice;
                    c.dns = cfg.container.dns.clone();
                    c.egress = egress.clone();
                    c.logs = Some(logs.clone());
                    let m = Arc::new(MicrovmBackend::probe(c, exits.clone()).await?);
                    registry.insert(m.clone());
                    microvm = Some(m);
                }
            }
        }
        Ok(Backends {
            registry,
            egress,
            microvm,
            container,
            images: ImageStore::new(cfg.server.state_dir.join("images")),
            uid_base: cfg.container.uid_base,
            accel: Mutex::new(HashMap::new()),
        })
    }

    /// The container backend, when a pool uses it.
    pub(crate) fn container(&self) -> Option<&ContainerBackend> {
        self.container.as_ref()
    }

    /// The `accel` label of a pool for metrics and status: `none` for pools that are not
    /// microVMs, `unprobed` before the first probe.
    pub fn accel_label(&self, pool: &PoolConfig) -> &'static str {
        if pool.backend != BackendKind::Microvm {
            return "none";
        }
        self.accel(&pool.name).map_or("unprobed", |a| a.label())
    }

    /// Probes the kernel of every microVM pool whose image exists (in the background at start,
    /// so that `status` and the logs say early which accelerator each pool gets, and a pool whose
    /// kernel cannot boot as asked is named at once).
    pub async fn probe_pools(&self, pools: &[PoolConfig]) {
        for p in pools.iter().filter(|p| p.backend == BackendKind::Microvm) {
            if let Err(e) = self.vm_image(p).await {
                tracing::info!(pool = %p.name, "not probing the pool's kernel yet: {e}");
            }
        }
    }

    /// The accelerator state of a microVM pool, once its kernel was probed.
    pub fn accel(&self, pool: &str) -> Option<PoolAccel> {
        self.accel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(pool)
            .cloned()
    }

    /// Resolves a microVM pool's image and kernel, and settles its accelerator by the backend's
    /// (memoized) probe boot.
    pub(crate) async fn vm_image(&self, pool: &PoolConfig) -> Result<(VmImage, String), SpecError> {
        let m = self
            .microvm
            .as_ref()
            .ok_or_else(|| SpecError::Probe("the microvm backend is not running".into()))?;
        let vmcfg = pool.microvm.clone().ok_or_else(|| {
            SpecError::Image(format!("pool {} has no [pool.microvm] settings", pool.name))
        })?;
        let reference = pool.image.clone().unwrap_or_default();
        let images = self.images.clone();
        let manifest = tokio::task::spawn_blocking(move || images.resolve(&reference))
            .await
            .map_err(|e| SpecError::Image(format!("image task: {e}")))?
            .map_err(|e| SpecError::Image(e.to_string()))?;
        let Some(vm) = &manifest.vm else {
            return Err(SpecError::Image(format!(
                "image {} is not bootable as a microVM: rebuild it with `airlock image build {} --vm`",
                manifest.short(),
                manifest.name
            )));
        };
        let dir = self.images.dir(&manifest);
        let newest = vm.kernels.first().ok_or_else(|| {
            SpecError::Image(format!("image {} holds no kernel", manifest.short()))
        })?;
        // Firecracker boots the ELF vmlinux the build took out of the bzImage; QEMU and Cloud
        // Hypervisor the bzImage.
        let elf = vmcfg.driver == airlock_core::VmDriver::Firecracker;
        let kernel_of = |k: &airlock_image::VmKernel| -> Result<PathBuf, SpecError> {
            if !elf {
                return Ok(dir.join(&k.kernel));
            }
            k.vmlinux.as_ref().map(|v| dir.join(v)).ok_or_else(|| {
                SpecError::Image(format!(
                    "image {} has no ELF vmlinux for kernel {} ({} loads no bzImage): rebuild it \
                     on a host with the kernel's decompressor (lz4, zstd, xz or gzip), or give \
                     [pool.microvm] kernel a path to a vmlinux",
                    manifest.short(),
                    k.version,
                    vmcfg.driver.as_str()
                ))
            })
        };
        let (kernel, initramfs) = match vmcfg.kernel.as_deref() {
            None => (kernel_of(newest)?, dir.join(&newest.initramfs)),
            // A kernel of the host's own boots with the image's initramfs of its release (the
            // modules must be its own), read from the bzImage; a kernel that does not say
            // (an ELF vmlinux) gets the newest.
            Some(k) if k.contains('/') => {
                let path = PathBuf::from(k);
                let initramfs = match airlock_image::vm::bzimage_version(&path) {
                    None => &newest.initramfs,
                    Some(release) => match vm.kernels.iter().find(|x| x.version == release) {
                        Some(x) => &x.initramfs,
                        None => {
                            let have: Vec<&str> =
                                vm.kernels.iter().map(|k| k.version.as_str()).collect();
                            return Err(SpecError::Image(format!(
                                "kernel {k} is release {release}, but image {} has modules only \
                                 for {}: add its package to the image (--kernel-package)",
                                manifest.short(),
                                have.join(", ")
                            )));
                        }
                    },
                };
                (path, dir.join(initramfs))
            }
            Some(version) => {
                let k = vm
                    .kernels
                    .iter()
                    .find(|k| k.version == version)
                    .ok_or_else(|| {
                        let have: Vec<&str> =
                            vm.kernels.iter().map(|k| k.version.as_str()).collect();
                        SpecError::Image(format!(
                            "image {} has no kernel {version} (it has {})",
                            manifest.short(),
                            have.join(", ")
                        ))
                    })?;
                (kernel_of(k)?, dir.join(&k.initramfs))
            }
        };
        let choice = m
            .accel_for(vmcfg.driver, &kernel, &initramfs, vmcfg.accel)
            .await;
        let state = match &choice {
            Ok(c) => PoolAccel::Using(c.clone()),
            Err(e) => PoolAccel::Refused(e.clone()),
        };
        self.accel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pool.name.clone(), state);
        let choice = choice.map_err(SpecError::Probe)?;
        Ok((
            VmImage {
                image: format!("{}@{}", manifest.name, manifest.digest),
                disk: dir.join(&vm.disk),
                kernel,
                initramfs,
                driver: vmcfg.driver,
                accel: choice.accel,
                cpus: pool.cpus.map(|c| c.max(1.0) as u32).unwrap_or(1),
                memory_mib: pool
                    .memory_mib
                    .unwrap_or(airlock_config::microvm::DEFAULT_MEMORY_MIB),
                disk_gib: vmcfg.disk_gib,
                docker: vm.docker,
            },
            manifest.runner.path.clone(),
        ))
    }

    /// The sandbox spec for a new runner of `pool`.
    pub async fn spec_for(&self, pool: &PoolConfig, name: &str) -> Result<SandboxSpec, SpecError> {
        let mut spec = SandboxSpec {
            id: name.to_string(),
            runner_name: name.to_string(),
            runner_command: pool.runner_command.clone().unwrap_or_default(),
            backend: BackendSpec::Process,
            pool: pool.name.clone(),
            egress: pool.egress.clone(),
        };
        if pool.backend == BackendKind::Microvm {
            let (vm, runner) = self.vm_image(pool).await?;
            if pool.runner_command.is_none() {
                spec.runner_command = PathBuf::from(runner);
            }
            spec.backend = BackendSpec::Microvm(vm);
        }
        if pool.backend == BackendKind::Container {
            let reference = pool.image.clone().unwrap_or_default();
            let images = self.images.clone();
            let base = self.uid_base;
            let (manifest, rootfs) = tokio::task::spawn_blocking(move || {
                let m = images.resolve(&reference).map_err(|e| e.to_string())?;
                let rootfs = images.shifted_rootfs(&m, base).map_err(|e| e.to_string())?;
                Ok::<_, String>((m, rootfs))
            })
            .await
            .map_err(|e| format!("image task: {e}"))
            .and_then(|r| r)
            .map_err(SpecError::Image)?;
            if pool.runner_command.is_none() {
                spec.runner_command = PathBuf::from(&manifest.runner.path);
            }
            spec.backend = BackendSpec::Container(ContainerImage {
                rootfs,
                image: format!("{}@{}", manifest.name, manifest.digest),
                limits: Limits {
                    cpus: pool.cpus,
                    memory_mib: pool.memory_mib,
                    pids_max: pool.pids_max,
                    io_weight: pool.io_weight,
                },
                runtime: pool.runtime.clone(),
                disk_gib: pool.disk_gib,
            });
        }
        Ok(spec)
    }
}

/// The host's table (base rules), then the resolver with the last run's sessions, then a sweep
/// of policy chains no link uses any more.
async fn start_egress(cfg: &Config) -> Result<airlock_egress::Egress, SandboxError> {
    let fail = |detail: String| SandboxError::Probe {
        backend: "egress",
        detail,
    };
    tokio::task::spawn_blocking(airlock_net::setup_host)
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(e.to_string()))?;
    let mut ec = airlock_egress::EgressConfig::new(cfg.server.state_dir.join("egress"));
    ec.upstreams = cfg
        .container
        .dns
        .iter()
        .map(|a| std::net::SocketAddr::new((*a).into(), 53))
        .collect();
    let egress = airlock_egress::Egress::start(ec)
        .await
        .map_err(|e| fail(e.to_string()))?;
    match tokio::task::spawn_blocking(airlock_net::rules::sweep).await {
        Ok(Ok(n)) if n > 0 => tracing::info!(chains = n, "removed policy chains no sandbox uses"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot sweep unused policy chains"),
        _ => {}
    }
    Ok(egress)
}
