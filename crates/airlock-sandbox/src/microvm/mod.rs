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

mod accel;
pub mod chv;
pub mod firecracker;
mod host;
mod launch;
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
    GuestConfig, GuestResult, NetSpec, RootSpec, RunnerSpec, CONFIG_VERSION,
};
use airlock_core::{BackendKind, VmDriver};
use airlock_net::{self as net, Leases, Subnet};
use async_trait::async_trait;

use crate::supervise::{self, status_of, LogKeep, Watch};
use crate::{check_id, Backend, BackendSpec, SandboxError, SandboxSpec, SandboxStatus, Secret};
pub use accel::AccelChoice;
use accel::ProbeKey;
use host::{owned_by, prepare_host, write_config_disk};
use launch::{launch_record, read_launch, same_file};

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
    /// Every sandbox's niceness (0: the daemon's own; see `airlock-supervise`).
    pub nice: i32,
    /// Name servers for guests when there is no `egress`; empty: the host's non-loopback ones.
    pub dns: Vec<Ipv4Addr>,
    /// The resolver and egress sessions (as `ContainerConfig::egress`): with it, each VM is
    /// attached with its pool's policy before its tap exists, and its name server is its
    /// gateway.
    pub egress: Option<airlock_egress::Egress>,
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
            nice: 0,
            dns: Vec::new(),
            egress: None,
            logs: None,
            probe_timeouts: (Duration::from_secs(8), Duration::from_secs(30)),
        }
    }
}

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
        // Taps are made over netlink; the host's rules are loaded with `nft`.
        find(Path::new("nft"), "apt-get install nftables")?;
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
            watched: Watch::new(exits),
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

    fn resolv(&self, gateway: Ipv4Addr) -> Vec<Ipv4Addr> {
        if self.cfg.egress.is_some() {
            return vec![gateway];
        }
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
        self.program(vm.driver)
            .map_err(|e| setup(id, "driver", e))?;
        // The host side (files, the address, the tap, the cgroups), on the blocking pool.
        let (cfg, vm2, id2) = (self.cfg.clone(), vm.clone(), id.to_string());
        let (dir, key, cgroup) = (self.dir(id), self.key(id), self.cgroup_name(id));
        let (pool, policy) = (spec.pool.clone(), spec.egress.clone());
        let (uid, link, cgroups, config) = crate::blocking(id, move || {
            prepare_host(&cfg, &vm2, &id2, &dir, &key, &cgroup, (&pool, &policy))
        })
        .await?;
        let argv = match vm.driver {
            VmDriver::Qemu => self.qemu_argv(id, vm, uid, &config).await?,
            VmDriver::Firecracker => {
                let fc = self.fc_spec(id, vm, uid)?;
                let id2 = id.to_string();
                // Copies into the jail and the scratch disk's mkfs: blocking.
                crate::blocking(id, move || {
                    let jail = firecracker::prepare(&fc).map_err(|e| setup(&id2, "jail", e))?;
                    same_file(&config, &jail.root.join("config.img"))
                        .map_err(|e| setup(&id2, "jail", e))?;
                    Ok(firecracker::jailer_argv(&fc))
                })
                .await?
            }
            VmDriver::CloudHypervisor => {
                let ch = self.chv_spec(id, vm, uid)?;
                let id2 = id.to_string();
                crate::blocking(id, move || {
                    chv::prepare(&ch).map_err(|e| setup(&id2, "VMM directory", e))?;
                    same_file(&config, &ch.dir.join("config.img"))
                        .map_err(|e| setup(&id2, "VMM directory", e))?;
                    Ok(chv::argv(&ch))
                })
                .await?
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
        let record = launch_record(vm.driver, &cgroups, uid, &link, &argv);
        let (dir, id2) = (self.dir(id), id.to_string());
        crate::blocking(id, move || {
            std::fs::write(dir.join("launch"), record).map_err(|e| setup(&id2, "launch", e))
        })
        .await
    }
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
                    dns: self.resolv(gateway),
                }),
                _ => None,
            },
            runner: RunnerSpec {
                command: spec.runner_command.to_string_lossy().into_owned(),
                user: RUNNER_USER.into(),
                // With an upstream proxy (and airlock's egress on): http_proxy and friends at
                // the gateway, where airlock's proxy takes them.
                env: match (&self.cfg.egress, &spec.egress.proxy, launch.gateway) {
                    (Some(_), Some(_), Some(gw)) => {
                        airlock_core::egress::UpstreamProxy::job_env(gw)
                    }
                    _ => Vec::new(),
                }
                .into_iter()
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                })
                .chain(
                    crate::RUNNER_ENV
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string())),
                )
                .collect(),
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
            self.cfg.nice,
            None,
            &refs,
            &[("AIRLOCK_CGROUP_PROCS", std::ffi::OsStr::new(&procs))],
        )
        .map_err(|e| start_err(e.to_string()))?;
        match launch.driver {
            // QEMU takes its tap as fd 3; Firecracker opens it in its jail, Cloud Hypervisor is
            // handed it over its API.
            VmDriver::Qemu => {
                let tap = net::open_tap(&net::link_name(&self.key(&spec.id)))
                    .map_err(|e| start_err(e.to_string()))?;
                cmd.stdin(Stdio::from(tap));
            }
            // Cloud Hypervisor gets its API socket bound, as fd 3 (`--api-socket fd=3`).
            VmDriver::CloudHypervisor => {
                let sock = self.chv_spec(&spec.id, vm, launch.uid)?.socket();
                let listener = vmm_api::bind(&sock).map_err(|e| {
                    start_err(format!("binding the API socket {}: {e}", sock.display()))
                })?;
                cmd.stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)));
            }
            VmDriver::Firecracker => {}
        }
        let child = cmd
            .spawn()
            .map_err(|e| start_err(format!("spawning the VMM: {e}")))?;
        let pid = child.id().unwrap_or(0) as i32;
        supervise::write_pid(&dir, pid).map_err(|e| start_err(e.to_string()))?;
        self.watched.spawn(spec.id.clone(), child);
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
            &self.dir(id),
            vm_status,
            || self.list_ids().iter().any(|x| x == id),
        ))
    }

    async fn list(&self) -> Result<Vec<(String, SandboxStatus)>, SandboxError> {
        // Directories, taps, leases, cgroups and each sandbox's files: on the blocking pool.
        let (cfg, tag, watched) = (self.cfg.clone(), self.tag.clone(), self.watched.clone());
        crate::blocking("", move || {
            Ok(supervise::ids_on_host(&cfg.root, &tag, &cfg.net)
                .into_iter()
                .map(|id| {
                    let st =
                        supervise::reported(&watched, &id, &cfg.root.join(&id), vm_status, || true);
                    (id, st)
                })
                .collect())
        })
        .await
    }

    async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        check_id(id)?;
        let dir = self.dir(id);
        self.watched.remove(id);
        let fail = {
            let id = id.to_string();
            move |detail: String| SandboxError::Destroy {
                id: id.clone(),
                detail,
            }
        };
        // All of it on the blocking pool: signals, `ip`, the lease file, cgroupfs, files.
        let (cfg, name, key, id2) = (
            self.cfg.clone(),
            self.cgroup_name(id),
            self.key(id),
            id.to_string(),
        );
        crate::blocking(id, move || {
            // 1. The VMM and its supervisor (one process group), then any process left in its
            // cgroup.
            supervise::kill_group(&dir);
            // 2. The tap, then its lease.
            net::delete(&net::link_name(&key)).map_err(|e| fail(e.to_string()))?;
            if let Some(e) = &cfg.egress {
                e.detach(&id2).map_err(|e| fail(e.to_string()))?;
            }
            cfg.net.release(&key).map_err(|e| fail(e.to_string()))?;
            // 3. The cgroup (its processes killed while the VMM finishes dying), then 4. files.
            supervise::remove_cgroup_and_dir(&name, 100, true, &dir, cfg.logs.as_ref(), &id2)
                .map_err(fail)
        })
        .await
    }
}

impl MicrovmBackend {
    /// Every sandbox id with anything left on the host: directory, tap, lease, cgroup.
    fn list_ids(&self) -> Vec<String> {
        let mut ids = supervise::ids_on_host(&self.cfg.root, &self.tag, &self.cfg.net);
        if let Some(e) = &self.cfg.egress {
            ids.extend(e.sessions().into_iter().filter_map(|s| {
                let (tag, id) = s.owner.split_once('/')?;
                (tag == self.tag).then(|| id.to_string())
            }));
        }
        ids.into_iter().collect()
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
    use airlock_agent::config::CONFIG_DISK_SIZE;

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
