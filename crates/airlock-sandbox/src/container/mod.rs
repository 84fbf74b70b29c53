//! The `container` backend: each runner in a fresh OCI container, built from an immutable image
//! through a private overlay. The runtime is the host-wide one (crun, runc or youki, chosen by a
//! probe that runs one) unless a sandbox's spec names another (`ContainerImage::runtime`, e.g.
//! gVisor's `runsc`), which is probed the same way the first time it is asked for.
//!
//! Per sandbox, under `root/<id>/` (mode 0711: searchable, not listable; each file has its own mode):
//! - `upper/`, `ovl-work/`: the overlay's private layers, `rootfs/`: the overlay mount; the image
//!   below is only ever read; with a disk cap (`disk_gib`) the two layers are in `layer/`, the
//!   mount of `layer.ext4`, a sparse filesystem of that size (see `disk`);
//! - `bundle/config.json`: the OCI spec (see `ocispec`), without secrets;
//! - `jit`: the JIT config, mode 0400, owned by the runner's uid as the host sees it, mounted
//!   read-only at `/run/airlock/jit` and read by the entry shell into the runner's environment;
//! - `image`: the image it was made from (its /30 is a lease in the host's shared lease directory,
//!   see `airlock_net::lease`);
//! - `runtime`: the runtime that made it (binary, flags, state directory, as JSON), so `destroy`
//!   uses that one whatever the host-wide default has become since;
//! - `runner.log` (capped), `pid`, `exit_status`: as with every backend (see `supervise`).
//!
//! Each runtime keeps its state in a directory of its own: the default one under `root/.runtime`,
//! others under `root/.runtime-<name>`, each described by `root/.runtime*.json` so that a later
//! backend finds and destroys what any of them left. cgroups are `/airlock/<tag>-<id>` where the
//! tag names this backend instance (a hash of `root`), so two airlocks on one host never take
//! each other's sandboxes for orphans. `list` reports every sandbox that has any of: a
//! directory, runtime state (of any runtime), a host link or a cgroup; `destroy` removes all of
//! them, in the order that lets each step succeed (processes, runtime state, mounts, link,
//! cgroups, files).
//!
//! gVisor (`runsc`): the job runs on gVisor's own kernel (the Sentry), which the host sees as the
//! sandbox and gofer processes, in the same namespaces, cgroups and id mapping as a runc sandbox.
//! The probe settles the platform (`kvm` if a probe container runs on it within
//! `ContainerConfig::kvm_probe`, else `ptrace`) and whether runsc needs `HIDE_NET_SYSCTLS`.
//! runsc's own logs stay off (no `--debug-log`); its errors go to the sandbox's `runner.log`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use airlock_core::BackendKind;
use airlock_net::{self as net, Leases, Subnet};
use async_trait::async_trait;
use sha2::Digest as _;

use crate::cgroup;
use crate::ocispec::{self, ContainerSpec, Variant, ID_RANGE, RUNNER_UID};
use crate::supervise::{self, status_of, LogKeep, Watch};
use crate::{
    check_id, Backend, BackendSpec, ContainerImage, SandboxError, SandboxSpec, SandboxStatus,
    Secret,
};

/// Runtimes tried, in order, when none is configured.
pub const RUNTIMES: &[&str] = &["crun", "runc", "youki"];
/// Where user namespaces map root by default: 0..65535 inside is 100000..165535 outside.
pub const DEFAULT_UID_BASE: u32 = 100_000;
pub const DEFAULT_SUBNET: &str = "10.213.0.0/16";
/// Appended to sandbox ids to make runsc's container ids (see `Runtime::container_id`).
pub const GVISOR_ID_SUFFIX: &str = ".airlock";
/// How long a probe container may take on gVisor's KVM platform before the probe settles on
/// ptrace: a working KVM runs it in well under a second; a `/dev/kvm` that cannot run guests
/// (as on hosts with a software virtualization module) hangs it.
pub const DEFAULT_KVM_PROBE: Duration = Duration::from_secs(5);

/// runsc of 2022 (Debian 12's) refuses `--network=sandbox` whenever it can see
/// `/proc/sys/net/core/rmem_default` after joining the container's network namespace, taking that
/// as "this is the host's namespace". Since that sysctl exists in every network namespace (Linux
/// 6.x kernels), it refuses every namespace. The probe finds out; where it does, runsc runs in a
/// private mount namespace with `/proc/sys/net` covered by an empty read-only tmpfs, beside a
/// second, whole procfs (`$1`, so that the kernel still lets the gofer mount a procfs in its user
/// namespace: a covered procfs alone does not count as fully visible). The namespace it checks is
/// always the fresh one its spec asks for (a network namespace without a path), never the
/// host's, which is what the check was for. Arguments: the directory for that procfs, then the
/// runtime's argv.
pub const HIDE_NET_SYSCTLS: &str = "mount -t proc proc \"$1\" && \
     mount -t tmpfs -o ro,nosuid,nodev,noexec,size=4k airlock-hide /proc/sys/net && \
     shift && exec \"$@\"";

#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// Sandbox directories live here (`state_dir/containers`).
    pub root: PathBuf,
    /// A runtime name looked up in PATH, or a path; `None` probes `RUNTIMES` in order.
    pub runtime: Option<String>,
    /// Further runtimes (names or paths) probed at start, each of which must pass: those the
    /// pools name. Others are probed when a spec first asks for them.
    pub runtimes: Vec<String>,
    /// How long gVisor's KVM platform gets in the probe; zero: ptrace without trying KVM.
    pub kvm_probe: Duration,
    /// The host's address leases (shared with every other backend) and the sandbox subnet.
    pub net: Leases,
    pub uid_base: u32,
    pub log_cap: u64,
    /// Every sandbox's niceness (0: the daemon's own; see `airlock-supervise`).
    pub nice: i32,
    /// Name servers written into each sandbox's resolv.conf when there is no `egress`; empty:
    /// the host's, minus loopback ones (which a sandbox cannot reach).
    pub dns: Vec<Ipv4Addr>,
    /// The resolver and egress sessions: each sandbox is attached with its pool's policy when its
    /// link is made, and its resolv.conf names its gateway. `None` (tests of the backend alone):
    /// links get the `open` chain (private ranges closed) and resolv.conf names `dns`.
    pub egress: Option<airlock_egress::Egress>,
    /// Keeps finished sandboxes' logs; `None`: they go with the sandbox.
    pub logs: Option<LogKeep>,
    /// How often `list` looks across the host for remnants (`HOST_SCAN_EVERY`).
    pub host_scan_every: Duration,
}

impl ContainerConfig {
    pub fn new(root: PathBuf) -> ContainerConfig {
        ContainerConfig {
            net: Leases::new(
                net::lease_dir(root.parent().unwrap_or(&root)),
                Subnet::parse(DEFAULT_SUBNET).expect("valid default"),
            ),
            root,
            runtime: None,
            runtimes: Vec::new(),
            kvm_probe: DEFAULT_KVM_PROBE,
            uid_base: DEFAULT_UID_BASE,
            log_cap: crate::process::DEFAULT_LOG_CAP,
            nice: 0,
            dns: Vec::new(),
            egress: None,
            logs: None,
            host_scan_every: HOST_SCAN_EVERY,
        }
    }
}

mod create;
mod disk;
mod probe;
mod runtime;

pub(crate) use create::host_name_servers;
use create::write_owned;

use probe::probe_one;
use runtime::{state_ids, state_roots};
pub use runtime::{Flavor, Runtime};

/// The container backend: one `Arc`, so its blocking work (mounts, files, links, cgroups) runs on
/// tokio's blocking pool with a handle of its own.
#[derive(Debug, Clone)]
pub struct ContainerBackend(Arc<Container>);

impl std::ops::Deref for ContainerBackend {
    type Target = Container;
    fn deref(&self) -> &Container {
        &self.0
    }
}

#[derive(Debug)]
pub struct Container {
    cfg: ContainerConfig,
    /// The host-wide runtime: the configured one, or the first of `RUNTIMES` that passed.
    default: Arc<Runtime>,
    /// Every other runtime a spec or the config asked for, by the name asked: probed once, a
    /// failure kept with its reason.
    others: tokio::sync::Mutex<HashMap<String, Result<Arc<Runtime>, String>>>,
    tag: String,
    watched: Watch,
    /// When `list` last looked beyond the sandboxes' directories (see `HOST_SCAN_EVERY`).
    host_scanned: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often `list` looks beyond the sandboxes' directories and the runtimes' state for what a
/// sandbox whose directory is gone left on the host (links, address leases, cgroups). Such
/// remnants come only from a crash (a new backend's first list always looks) or a destroy that
/// failed part-way (its runner or orphan is destroyed again, and destroy sweeps by id), so a
/// pass need not pay for a host-wide scan each time: with 1,000 sandboxes alive it is most of
/// what a list costs.
pub const HOST_SCAN_EVERY: Duration = Duration::from_secs(10);

fn probe_err(detail: String) -> SandboxError {
    SandboxError::Probe {
        backend: "container",
        detail,
    }
}

/// A program on `PATH` (or in `/usr/sbin`, `/sbin`), as the probe looks for a runtime.
pub use airlock_net::find_in_path;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl ContainerBackend {
    /// Finds a runtime that really runs a container here (same namespaces and id mapping as a
    /// sandbox, with the host's /usr bound read-only), probes the further runtimes the config
    /// names, and sets up the host's network rules.
    pub async fn probe(
        cfg: ContainerConfig,
        exits: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) -> Result<ContainerBackend, SandboxError> {
        if !is_root() {
            return Err(probe_err(
                "needs root (namespaces, overlay mounts, veth links, nftables); \
                 run airlock as root or use the process backend"
                    .into(),
            ));
        }
        let dirty = |p: &Path| p.to_string_lossy().contains([',', ':']);
        if dirty(&cfg.root) {
            return Err(probe_err(format!(
                "the state directory {} may not contain ',' or ':' (overlay mount options)",
                cfg.root.display()
            )));
        }
        // 0711: the container's root user is not root on the host, and the runtime opens the
        // sandbox's rootfs as that user, so every directory above it must be searchable; nothing
        // in it can be listed, and its files carry their own modes.
        std::fs::create_dir_all(cfg.root.join(".runtime"))
            .and_then(|_| {
                std::fs::set_permissions(&cfg.root, std::fs::Permissions::from_mode(0o711))
            })
            .map_err(|e| probe_err(format!("cannot create {}: {e}", cfg.root.display())))?;
        for dir in cfg.root.ancestors().skip(1) {
            if let Ok(meta) = std::fs::metadata(dir) {
                if meta.permissions().mode() & 0o001 == 0 {
                    return Err(probe_err(format!(
                        "{} is not searchable by other users (mode {:o}); the container's root \
                         user must reach its rootfs below it: chmod o+x {}",
                        dir.display(),
                        meta.permissions().mode() & 0o7777,
                        dir.display()
                    )));
                }
            }
        }
        // Links are made and deleted over netlink; the host's rules are loaded with `nft`.
        if find_in_path("nft").is_none() {
            return Err(probe_err(
                "nft is not installed (apt-get install nftables)".into(),
            ));
        }
        let candidates: Vec<String> = match &cfg.runtime {
            Some(r) => vec![r.clone()],
            None => RUNTIMES.iter().map(|s| s.to_string()).collect(),
        };
        let mut failures = Vec::new();
        // crun refuses hybrid hosts whose v2 hierarchy holds a controller; give it its v1 one.
        if candidates.iter().any(|c| c.ends_with("crun")) {
            match cgroup::mount_v1_strays() {
                Ok(m) if !m.is_empty() => tracing::info!(
                    mounted = %m.join(", "),
                    "mounted the v1 cgroup hierarchies of controllers left on cgroup v2 (crun needs them on a hybrid host)"
                ),
                Ok(_) => {}
                Err(e) => failures.push(format!("crun: {e}")),
            }
        }
        let mut chosen = None;
        for name in candidates {
            let Some(path) = find_in_path(&name) else {
                failures.push(format!("{name}: not installed"));
                continue;
            };
            match probe_one(&name, &path, cfg.root.join(".runtime"), &cfg).await {
                Ok(rt) => {
                    chosen = Some(rt);
                    break;
                }
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        let Some(default) = chosen else {
            return Err(probe_err(format!(
                "no OCI runtime runs a container here ({})",
                failures.join("; ")
            )));
        };
        for f in &failures {
            tracing::info!(runtime = %default.name, skipped = %f, "container runtime probe");
        }
        default
            .save()
            .map_err(|e| probe_err(format!("cannot describe {}: {e}", default.root.display())))?;
        net::setup_host().map_err(|e| probe_err(e.to_string()))?;
        let tag = tag_of(&cfg.root);
        tracing::info!(runtime = %default.path.display(), %tag, "container backend ready");
        let extra = cfg.runtimes.clone();
        let b = ContainerBackend(Arc::new(Container {
            cfg,
            default: Arc::new(default),
            others: Default::default(),
            tag,
            watched: Watch::new(exits),
            host_scanned: std::sync::Mutex::new(None),
        }));
        let mut refused = Vec::new();
        for name in extra {
            if let Err(e) = b.runtime_for(Some(&name)).await {
                refused.push(e.to_string());
            }
        }
        if !refused.is_empty() {
            return Err(probe_err(refused.join("; ")));
        }
        Ok(b)
    }

    /// The host-wide runtime's binary and name.
    pub fn runtime(&self) -> (&Path, &str) {
        (&self.default.path, &self.default.name)
    }

    /// The runtime a spec asking for `name` gets (`None`: the host-wide one), probed the first
    /// time it is asked for. A name that resolves to the host-wide runtime's binary is that one.
    pub async fn runtime_for(&self, name: Option<&str>) -> Result<Arc<Runtime>, SandboxError> {
        let Some(name) = name else {
            return Ok(self.default.clone());
        };
        let mut others = self.others.lock().await;
        if let Some(r) = others.get(name) {
            return r.clone().map_err(probe_err);
        }
        let r = match find_in_path(name) {
            None => Err(format!("runtime {name}: not installed")),
            Some(path) if path == self.default.path => Ok(self.default.clone()),
            Some(path) => {
                let root = self.state_root_for(&path);
                match probe_one(name, &path, root, &self.cfg).await {
                    Ok(rt) => match rt.save() {
                        Ok(()) => {
                            tracing::info!(runtime = %name, flavor = ?rt.flavor, notes = ?rt.notes,
                                "container runtime ready");
                            Ok(Arc::new(rt))
                        }
                        Err(e) => Err(format!("runtime {name}: cannot describe it: {e}")),
                    },
                    Err(e) => Err(format!("runtime {name}: {e}")),
                }
            }
        };
        others.insert(name.to_string(), r.clone());
        r.map_err(probe_err)
    }

    /// `.runtime-<binary name>`, unless a runtime of another binary of that name has it already.
    fn state_root_for(&self, path: &Path) -> PathBuf {
        let base: String = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let plain = self.cfg.root.join(format!(".runtime-{base}"));
        match Runtime::load(&Runtime::sidecar(&plain)) {
            Some(r) if r.path != path => self.cfg.root.join(format!(
                ".runtime-{base}-{}",
                &hex::encode(sha2::Sha256::digest(path.to_string_lossy().as_bytes()))[..8]
            )),
            _ => plain,
        }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join(id)
    }

    /// The runtime that made sandbox `id`: as its directory records, or the one whose state
    /// directory holds it, or the host-wide one.
    fn runtime_of(&self, id: &str) -> Runtime {
        if let Some(r) = Runtime::load(&self.dir(id).join("runtime")) {
            return r;
        }
        for root in state_roots(&self.cfg.root) {
            if state_ids(&root).iter().any(|i| i == id) {
                if let Some(r) = Runtime::load(&Runtime::sidecar(&root)) {
                    return r;
                }
            }
        }
        (*self.default).clone()
    }

    fn cgroup_name(&self, id: &str) -> String {
        format!("{}-{id}", self.tag)
    }

    fn link_key(&self, id: &str) -> String {
        format!("{}/{id}", self.tag)
    }

    /// Every runtime's container ids (each runtime's state directory under `root`).
    fn runtime_ids(&self) -> Vec<String> {
        state_roots(&self.cfg.root)
            .iter()
            .flat_map(|r| state_ids(r))
            .collect()
    }
}

fn is_mounted(p: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.to_string_lossy();
    text.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}

#[async_trait]
impl Backend for ContainerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Container
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        check_id(&spec.id)?;
        // An existing sandbox of this id is never touched (nor torn down by the cleanup below).
        if self.dir(&spec.id).exists() {
            return Err(SandboxError::Create {
                id: spec.id.clone(),
                path: self.dir(&spec.id),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        let r = self.create_inner(spec).await;
        if r.is_err() {
            // Leave nothing half-made: destroy is correct for any prefix of create.
            let _ = self.destroy(&spec.id).await;
        }
        r
    }

    async fn start(&self, spec: &SandboxSpec, jit: &Secret) -> Result<(), SandboxError> {
        check_id(&spec.id)?;
        let dir = self.dir(&spec.id);
        if !dir.join("bundle/config.json").is_file() {
            return Err(SandboxError::Missing {
                id: spec.id.clone(),
            });
        }
        let start_err = |source| SandboxError::Start {
            id: spec.id.clone(),
            command: spec.runner_command.clone(),
            source,
        };
        write_owned(
            &dir.join("jit"),
            jit.expose().as_bytes(),
            self.cfg.uid_base + RUNNER_UID,
        )
        .map_err(start_err)?;
        // The runtime that made it (recorded by create), not whatever the spec says now.
        let runtime = self.runtime_of(&spec.id);
        // Detached where the runtime can: no runtime process stays beside the sandbox.
        let pid_file = (!runtime.is_gvisor()).then(|| dir.join("container.pid"));
        let argv = runtime.run_argv(&dir.join("bundle"), &spec.id, pid_file.as_deref());
        let argv: Vec<&OsStr> = argv.iter().map(OsString::as_os_str).collect();
        let mut cmd = supervise::command(
            &dir,
            self.cfg.log_cap,
            self.cfg.nice,
            pid_file.as_deref(),
            &argv,
            &[],
        )
        .map_err(start_err)?;
        let child = cmd.spawn().map_err(start_err)?;
        let pid = child.id().unwrap_or(0) as i32;
        supervise::write_pid(&dir, pid).map_err(start_err)?;
        self.watched.spawn(spec.id.clone(), child);
        Ok(())
    }

    async fn status(&self, id: &str) -> Result<SandboxStatus, SandboxError> {
        check_id(id)?;
        Ok(supervise::reported(
            &self.watched,
            id,
            &self.dir(id),
            status_of,
            || self.list_ids().iter().any(|x| x == id),
        ))
    }

    async fn list(&self) -> Result<Vec<(String, SandboxStatus)>, SandboxError> {
        // Directories, links, leases, cgroups and each sandbox's files: on the blocking pool.
        let this = self.clone();
        crate::blocking("", move || {
            Ok(this
                .list_ids()
                .into_iter()
                .map(|id| {
                    let st =
                        supervise::reported(&this.watched, &id, &this.dir(&id), status_of, || true);
                    (id, st)
                })
                .collect())
        })
        .await
    }

    async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        check_id(id)?;
        self.watched.remove(id);
        let fail = |detail: String| SandboxError::Destroy {
            id: id.into(),
            detail,
        };
        // 1. Processes: the container's (the runtime that made it kills them all), then the
        // supervisor, then any left in its cgroup (gVisor's sandbox and gofer, should runsc
        // have lost track of them).
        let runtime = self.runtime_of(id);
        let cid = runtime.container_id(id);
        if runtime.has_state(id) {
            // A container whose supervisor recorded its end has nothing left to kill (its pid
            // namespace died with its init): `delete --force` alone, one runtime call fewer.
            let ended = matches!(status_of(&self.dir(id)), SandboxStatus::Exited(Some(_)));
            if !ended {
                let _ = runtime
                    .command()
                    .args(["kill", "--all", &cid, "KILL"])
                    .output()
                    .await;
            }
            let out = runtime
                .command()
                .args(["delete", "--force", &cid])
                .output()
                .await
                .map_err(|e| fail(format!("running {} delete: {e}", runtime.name)))?;
            if !out.status.success() && runtime.has_state(id) {
                return Err(fail(format!(
                    "{} delete --force: {}",
                    runtime.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        let (this, id2) = (self.clone(), id.to_string());
        crate::blocking(id, move || this.destroy_rest(&id2, &runtime)).await
    }
}

impl ContainerBackend {
    /// `destroy` once the runtime has killed and deleted the container: the rest, synchronous
    /// (on the blocking pool), each step idempotent.
    fn destroy_rest(&self, id: &str, runtime: &Runtime) -> Result<(), SandboxError> {
        let dir = self.dir(id);
        let fail = |detail: String| SandboxError::Destroy {
            id: id.into(),
            detail,
        };
        runtime.clear_state(id);
        supervise::kill_group(&dir);
        if runtime.is_gvisor() {
            cgroup::kill_all(&self.cgroup_name(id));
        }
        // 2. The overlay (lazily: a process still leaving must not keep it).
        let merged = dir.join("rootfs");
        for _ in 0..50 {
            if !is_mounted(&merged) {
                break;
            }
            if let Err(e) = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH) {
                if is_mounted(&merged) {
                    return Err(fail(format!("unmounting {}: {e}", merged.display())));
                }
            }
        }
        // The capped layer below it, if any (its loop device detaches itself with it).
        disk::unmount(&dir).map_err(fail)?;
        // 3. The host link (the peer goes with it, or went with the namespace), then its lease.
        let key = self.link_key(id);
        net::delete(&net::link_name(&key)).map_err(|e| fail(e.to_string()))?;
        // Its egress session (its nftables elements; the report stays for the daemon).
        if let Some(e) = &self.cfg.egress {
            e.detach(id).map_err(|e| fail(e.to_string()))?;
        }
        self.cfg
            .net
            .release(&key)
            .map_err(|e| fail(e.to_string()))?;
        // 4. cgroups (empty once the processes are gone), then 5. files.
        supervise::remove_cgroup_and_dir(
            &self.cgroup_name(id),
            50,
            false,
            &dir,
            self.cfg.logs.as_ref(),
            id,
        )
        .map_err(fail)
    }
}

impl ContainerBackend {
    /// Every sandbox id with anything left on the host: directory, runtime state, link, cgroup.
    fn list_ids(&self) -> Vec<String> {
        let now = std::time::Instant::now();
        let scan = {
            let mut last = self.host_scanned.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|t| now.duration_since(t) >= self.cfg.host_scan_every);
            if due {
                *last = Some(now);
            }
            due
        };
        let mut ids = if scan {
            supervise::ids_on_host(&self.cfg.root, &self.tag, &self.cfg.net)
        } else {
            supervise::dir_ids(&self.cfg.root)
        };
        ids.extend(self.runtime_ids());
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
        let mut out = std::collections::HashSet::new();
        if let Ok(entries) = std::fs::read_dir(root) {
            for e in entries.flatten() {
                if let Ok(s) = std::fs::read_to_string(e.path().join("image")) {
                    out.insert(s.trim().to_string());
                }
            }
        }
        out
    }
}

/// The tag that marks a backend instance's links and cgroups: a hash of its root directory.
pub fn tag_of(root: &Path) -> String {
    hex::encode(sha2::Sha256::digest(root.to_string_lossy().as_bytes()))[..8].to_string()
}

/// Everything container sandboxes under `root` have left on the host, one line each: sandbox
/// directories, runtime state, mounts below `root`, host links, address leases (in the lease
/// directory beside `root`) and cgroups with this root's tag, and processes whose working
/// directory is below `root`. Empty when nothing is left; `airlock
/// demo` and the tests check it.
pub fn remnants(root: &Path) -> Vec<String> {
    let mut out = supervise::host_remnants(root, &tag_of(root));
    out.extend(disk::loops_below(root));
    for r in state_roots(root) {
        let dir = r
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for n in std::fs::read_dir(&r).into_iter().flatten().flatten() {
            out.push(format!(
                "runtime state {} ({dir})",
                n.file_name().to_string_lossy()
            ));
        }
    }
    out
}
