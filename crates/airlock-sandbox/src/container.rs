//! The `container` backend: each runner in a fresh OCI container (crun, runc or youki, chosen by
//! a probe that runs one), built from an immutable image through a private overlay.
//!
//! Per sandbox, under `root/<id>/` (mode 0711: searchable, not listable; each file has its own mode):
//! - `upper/`, `ovl-work/`: the overlay's private layers, `rootfs/`: the overlay mount; the image
//!   below is only ever read;
//! - `bundle/config.json`: the OCI spec (see `ocispec`), without secrets;
//! - `jit`: the JIT config, mode 0400, owned by the runner's uid as the host sees it, mounted
//!   read-only at `/run/airlock/jit` and read by the entry shell into the runner's environment;
//! - `image`: the image it was made from (its /30 is a lease in the host's shared lease directory,
//!   see `airlock_net::lease`);
//! - `runner.log` (capped), `pid`, `exit_status`: as with every backend (see `supervise`).
//!
//! The runtime keeps its state under `root/.runtime`; cgroups are `/airlock/<tag>-<id>` where the
//! tag names this backend instance (a hash of `root`), so two airlocks on one host never take
//! each other's sandboxes for orphans. `list` reports every sandbox that has any of: a
//! directory, runtime state, a host link or a cgroup; `destroy` removes all of them, in the
//! order that lets each step succeed (processes, runtime state, mounts, link, cgroups, files).

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use airlock_core::BackendKind;
use airlock_net::{self as net, Leases, Subnet};
use async_trait::async_trait;
use sha2::Digest as _;

use crate::cgroup;
use crate::ocispec::{self, ContainerSpec, ID_RANGE, RUNNER_UID};
use crate::supervise::{self, status_of, LogKeep, Watch};
use crate::{check_id, Backend, BackendSpec, SandboxError, SandboxSpec, SandboxStatus, Secret};

/// Runtimes tried, in order, when none is configured.
pub const RUNTIMES: &[&str] = &["crun", "runc", "youki"];
/// Where user namespaces map root by default: 0..65535 inside is 100000..165535 outside.
pub const DEFAULT_UID_BASE: u32 = 100_000;
pub const DEFAULT_SUBNET: &str = "10.213.0.0/16";

#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// Sandbox directories live here (`state_dir/containers`).
    pub root: PathBuf,
    /// A runtime name looked up in PATH, or a path; `None` probes `RUNTIMES` in order.
    pub runtime: Option<String>,
    /// The host's address leases (shared with every other backend) and the sandbox subnet.
    pub net: Leases,
    pub uid_base: u32,
    pub log_cap: u64,
    /// Name servers written into each sandbox's resolv.conf; empty: the host's, minus loopback
    /// ones (which a sandbox cannot reach).
    pub dns: Vec<Ipv4Addr>,
    /// Keeps finished sandboxes' logs; `None`: they go with the sandbox.
    pub logs: Option<LogKeep>,
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
            uid_base: DEFAULT_UID_BASE,
            log_cap: crate::process::DEFAULT_LOG_CAP,
            dns: Vec::new(),
            logs: None,
        }
    }
}

#[derive(Debug)]
pub struct ContainerBackend {
    cfg: ContainerConfig,
    /// The runtime binary that passed the probe, and its name.
    runtime: PathBuf,
    runtime_name: String,
    tag: String,
    exits: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    watched: Watch,
}

fn probe_err(detail: String) -> SandboxError {
    SandboxError::Probe {
        backend: "container",
        detail,
    }
}

pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl ContainerBackend {
    /// Finds a runtime that really runs a container here (same namespaces and id mapping as a
    /// sandbox, with the host's /usr bound read-only), and sets up the host's network rules.
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
        for tool in ["ip", "nft", "nsenter"] {
            if find_in_path(tool).is_none() {
                return Err(probe_err(format!(
                    "{tool} is not installed (apt-get install iproute2 nftables util-linux)"
                )));
            }
        }
        let candidates: Vec<String> = match &cfg.runtime {
            Some(r) => vec![r.clone()],
            None => RUNTIMES.iter().map(|s| s.to_string()).collect(),
        };
        let mut failures = Vec::new();
        let mut chosen = None;
        for name in candidates {
            let Some(path) = find_in_path(&name) else {
                failures.push(format!("{name}: not installed"));
                continue;
            };
            match probe_runtime(&path, &cfg).await {
                Ok(()) => {
                    chosen = Some((path, name));
                    break;
                }
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        let Some((runtime, runtime_name)) = chosen else {
            return Err(probe_err(format!(
                "no OCI runtime runs a container here ({})",
                failures.join("; ")
            )));
        };
        for f in &failures {
            tracing::info!(runtime = %runtime_name, skipped = %f, "container runtime probe");
        }
        net::setup_host().map_err(|e| probe_err(e.to_string()))?;
        let tag = tag_of(&cfg.root);
        tracing::info!(runtime = %runtime.display(), %tag, "container backend ready");
        Ok(ContainerBackend {
            cfg,
            runtime,
            runtime_name,
            tag,
            exits,
            watched: Watch::default(),
        })
    }

    pub fn runtime(&self) -> (&Path, &str) {
        (&self.runtime, &self.runtime_name)
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join(id)
    }

    fn runtime_root(&self) -> PathBuf {
        self.cfg.root.join(".runtime")
    }

    fn cgroup_name(&self, id: &str) -> String {
        format!("{}-{id}", self.tag)
    }

    fn link_key(&self, id: &str) -> String {
        format!("{}/{id}", self.tag)
    }

    fn runtime_cmd(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.runtime);
        c.arg("--root").arg(self.runtime_root());
        c.stdin(Stdio::null());
        c
    }

    /// Takes the lowest free /30 of the host's sandbox subnet (leases shared by every backend).
    fn allocate(&self, id: &str) -> Result<net::Link, SandboxError> {
        let key = self.link_key(id);
        let index = self
            .cfg
            .net
            .acquire(&key)
            .map_err(|e| SandboxError::Setup {
                id: id.into(),
                detail: e.to_string(),
            })?;
        Ok(self.cfg.net.subnet().link(&key, index))
    }

    fn resolv_conf(&self) -> String {
        let mut servers = self.cfg.dns.clone();
        if servers.is_empty() {
            servers = host_name_servers();
        }
        let mut out = String::from("# written by airlock for this sandbox\n");
        for s in servers {
            out.push_str(&format!("nameserver {s}\n"));
        }
        out
    }

    async fn create_inner(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        let id = spec.id.as_str();
        let BackendSpec::Container(c) = &spec.backend else {
            return Err(SandboxError::Setup {
                id: id.into(),
                detail: format!(
                    "a {} spec given to the container backend",
                    spec.backend.kind()
                ),
            });
        };
        let rootfs = &c.rootfs;
        if !rootfs.join("bin/sh").exists() {
            return Err(SandboxError::Setup {
                id: id.into(),
                detail: format!("{} has no /bin/sh: not a runner image", rootfs.display()),
            });
        }
        let dir = self.dir(id);
        std::fs::create_dir(&dir).map_err(|source| SandboxError::Create {
            id: id.into(),
            path: dir.clone(),
            source,
        })?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| setup(id, "chmod", e))?;
        std::fs::write(dir.join("image"), format!("{}\n", c.image))
            .map_err(|e| setup(id, "image", e))?;
        let (upper, work, merged, bundle) = (
            dir.join("upper"),
            dir.join("ovl-work"),
            dir.join("rootfs"),
            dir.join("bundle"),
        );
        for d in [&upper, &work, &merged, &bundle] {
            std::fs::create_dir(d).map_err(|e| setup(id, "mkdir", e))?;
        }
        // The overlay's root takes the upper directory's owner and mode: root inside, 0755.
        let base = self.cfg.uid_base;
        chown(&upper, base, base).map_err(|e| setup(id, "chown upper", e))?;
        std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| setup(id, "chmod upper", e))?;
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            rootfs.display(),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .map_err(|e| SandboxError::Setup {
            id: id.into(),
            detail: format!("overlay mount on {}: {e}", merged.display()),
        })?;
        let hostname = format!("airlock-{}", &id[..id.len().min(20)]);
        std::fs::write(dir.join("resolv.conf"), self.resolv_conf())
            .map_err(|e| setup(id, "resolv.conf", e))?;
        std::fs::write(
            dir.join("hosts"),
            format!("127.0.0.1 localhost\n127.0.1.1 {hostname}\n"),
        )
        .map_err(|e| setup(id, "hosts", e))?;
        // The jit file exists from the start (empty) so the mount has a source; `start` fills it.
        let jit = dir.join("jit");
        write_owned(&jit, b"", base + RUNNER_UID).map_err(|e| setup(id, "jit", e))?;
        let link = self.allocate(id)?;
        // A link left by an earlier sandbox of this id (crash) would make the hook fail.
        net::delete(&link.host_if).map_err(|e| SandboxError::Setup {
            id: id.into(),
            detail: e.to_string(),
        })?;
        let oci = ocispec::build(&ContainerSpec {
            id,
            hostname: &hostname,
            rootfs: &merged,
            runner: &spec.runner_command,
            uid_base: base,
            limits: &c.limits,
            cgroup: format!("/airlock/{}", self.cgroup_name(id)),
            jit_file: &jit,
            resolv_conf: &dir.join("resolv.conf"),
            hosts: &dir.join("hosts"),
            net_hook: net::hook_args(&link, &self.link_key(id)),
        })
        .map_err(|e| SandboxError::Setup {
            id: id.into(),
            detail: format!("OCI spec: {e}"),
        })?;
        let config = bundle.join("config.json");
        oci.save(&config).map_err(|e| SandboxError::Setup {
            id: id.into(),
            detail: format!("writing {}: {e}", config.display()),
        })?;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| setup(id, "chmod config.json", e))?;
        Ok(())
    }

    /// The runtime's container ids with this instance's tag.
    fn runtime_ids(&self) -> Vec<String> {
        std::fs::read_dir(self.runtime_root())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| check_id(n).is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The host's IPv4 name servers that a sandbox can reach (not loopback, not unspecified).
pub(crate) fn host_name_servers() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|s| s.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .collect()
}

fn setup(id: &str, what: &str, e: std::io::Error) -> SandboxError {
    SandboxError::Setup {
        id: id.into(),
        detail: format!("{what}: {e}"),
    }
}

fn chown(p: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    nix::unistd::chown(
        p,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(std::io::Error::from)
}

/// Writes a file readable only by `uid` (mode 0400), created with no window in which another
/// user could open it.
fn write_owned(p: &Path, data: &[u8], uid: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(p);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(p)?;
    f.write_all(data)?;
    f.sync_all()?;
    chown(p, uid, uid)
}

fn is_mounted(p: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.to_string_lossy();
    text.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}

/// Runs a tiny container with a sandbox's namespaces and id mapping; the host's `/usr` is its
/// root filesystem's, read-only.
async fn probe_runtime(runtime: &Path, cfg: &ContainerConfig) -> Result<(), String> {
    let t = tempfile::Builder::new()
        .prefix(".probe-")
        .tempdir_in(&cfg.root)
        .map_err(|e| format!("temporary directory: {e}"))?;
    let rootfs = t.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("usr")).map_err(|e| e.to_string())?;
    for d in ["proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).map_err(|e| e.to_string())?;
    }
    for (l, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        let _ = std::os::unix::fs::symlink(target, rootfs.join(l));
    }
    let id = format!("probe-{}", std::process::id());
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0},
                    "args": ["/bin/sh", "-c", "exit 0"], "cwd": "/",
                    "env": ["PATH=/usr/bin:/bin"], "noNewPrivileges": true},
        "root": {"path": rootfs, "readonly": true},
        "hostname": "probe",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]},
        ],
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": cfg.uid_base, "size": ID_RANGE}],
            "gidMappings": [{"containerID": 0, "hostID": cfg.uid_base, "size": ID_RANGE}],
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}, {"type": "user"}],
            "cgroupsPath": format!("/airlock/{id}"),
            "resources": {"pids": {"limit": 64}},
        }
    });
    std::fs::write(t.path().join("config.json"), spec.to_string()).map_err(|e| e.to_string())?;
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(runtime)
            .arg("--root")
            .arg(cfg.root.join(".runtime"))
            .args(["run", "--bundle"])
            .arg(t.path())
            .arg(&id)
            .stdin(Stdio::null())
            .output(),
    )
    .await;
    let _ = tokio::process::Command::new(runtime)
        .arg("--root")
        .arg(cfg.root.join(".runtime"))
        .args(["delete", "--force", &id])
        .output()
        .await;
    match out {
        Err(_) => Err("a probe container did not finish in 20 s".into()),
        Ok(Err(e)) => Err(format!("cannot run it: {e}")),
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(o)) => Err(format!(
            "a probe container failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
    }
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
        let root = self.runtime_root();
        let bundle = dir.join("bundle");
        let mut cmd = supervise::command(
            &dir,
            self.cfg.log_cap,
            &[
                self.runtime.as_os_str(),
                OsStr::new("--root"),
                root.as_os_str(),
                OsStr::new("run"),
                OsStr::new("--bundle"),
                bundle.as_os_str(),
                OsStr::new(&spec.id),
            ],
            &[],
        );
        let child = cmd.spawn().map_err(start_err)?;
        let pid = child.id().unwrap_or(0) as i32;
        supervise::write_pid(&dir, pid).map_err(start_err)?;
        self.watched
            .spawn(spec.id.clone(), child, self.exits.clone());
        Ok(())
    }

    async fn status(&self, id: &str) -> Result<SandboxStatus, SandboxError> {
        check_id(id)?;
        if self.watched.contains(id) {
            return Ok(SandboxStatus::Running);
        }
        let st = status_of(&self.dir(id));
        if st == SandboxStatus::Missing && self.list_ids().contains(&id.to_string()) {
            // Only remnants (a link, a cgroup, runtime state): it ended; destroy will sweep them.
            return Ok(SandboxStatus::Exited(None));
        }
        Ok(st)
    }

    async fn list(&self) -> Result<Vec<(String, SandboxStatus)>, SandboxError> {
        let mut out = Vec::new();
        for id in self.list_ids() {
            let st = if self.watched.contains(&id) {
                SandboxStatus::Running
            } else {
                match status_of(&self.dir(&id)) {
                    SandboxStatus::Missing => SandboxStatus::Exited(None),
                    s => s,
                }
            };
            out.push((id, st));
        }
        Ok(out)
    }

    async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        check_id(id)?;
        let dir = self.dir(id);
        self.watched.remove(id);
        let fail = |detail: String| SandboxError::Destroy {
            id: id.into(),
            detail,
        };
        // 1. Processes: the container's (the runtime kills them all), then the supervisor.
        if self.runtime_root().join(id).exists() {
            let _ = self
                .runtime_cmd()
                .args(["kill", "--all", id, "KILL"])
                .output()
                .await;
            let out = self
                .runtime_cmd()
                .args(["delete", "--force", id])
                .output()
                .await
                .map_err(|e| fail(format!("running {} delete: {e}", self.runtime_name)))?;
            if !out.status.success() && self.runtime_root().join(id).exists() {
                return Err(fail(format!(
                    "{} delete --force: {}",
                    self.runtime_name,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        supervise::kill_group(&dir);
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
        // 3. The host link (the peer goes with it, or went with the namespace), then its lease.
        let key = self.link_key(id);
        net::delete(&net::link_name(&key)).map_err(|e| fail(e.to_string()))?;
        self.cfg
            .net
            .release(&key)
            .map_err(|e| fail(e.to_string()))?;
        // 4. cgroups (empty once the processes are gone; retried while they finish dying).
        let mut last = Ok(());
        for _ in 0..50 {
            last = cgroup::remove(&self.cgroup_name(id));
            if last.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        last.map_err(fail)?;
        // 5. Files, the log kept first.
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

impl ContainerBackend {
    /// Every sandbox id with anything left on the host: directory, runtime state, link, cgroup.
    fn list_ids(&self) -> Vec<String> {
        let mut ids = std::collections::BTreeSet::new();
        if let Ok(entries) = std::fs::read_dir(&self.cfg.root) {
            for e in entries.flatten() {
                if let Some(id) = e.file_name().to_str() {
                    if check_id(id).is_ok() && e.file_type().is_ok_and(|t| t.is_dir()) {
                        ids.insert(id.to_string());
                    }
                }
            }
        }
        ids.extend(self.runtime_ids());
        let own = format!("{}/", self.tag);
        let leased = self.cfg.net.owners_with_prefix(&own).unwrap_or_default();
        for key in net::list()
            .into_iter()
            .map(|(_, alias)| alias)
            .chain(leased)
        {
            if let Some(id) = key.strip_prefix(&own) {
                if check_id(id).is_ok() {
                    ids.insert(id.to_string());
                }
            }
        }
        ids.extend(cgroup::ids(&self.tag));
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
    let tag = tag_of(root);
    let mut out = Vec::new();
    let names = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|e| {
                e.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    for n in names(root) {
        if !n.starts_with('.') {
            out.push(format!("directory {}", root.join(n).display()));
        }
    }
    for n in names(&root.join(".runtime")) {
        out.push(format!("runtime state {n}"));
    }
    let prefix = format!("{}/", root.display());
    if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
        for m in mi.lines().filter_map(|l| l.split(' ').nth(4)) {
            if m.starts_with(&prefix) {
                out.push(format!("mount {m}"));
            }
        }
    }
    for (link, alias) in net::list() {
        if alias.starts_with(&format!("{tag}/")) {
            out.push(format!("link {link} ({alias})"));
        }
    }
    let leases = Leases::new(
        net::lease_dir(root.parent().unwrap_or(root)),
        Subnet::parse(DEFAULT_SUBNET).expect("valid default"),
    );
    for owner in leases
        .owners_with_prefix(&format!("{tag}/"))
        .unwrap_or_default()
    {
        out.push(format!("address lease of {owner}"));
    }
    for parent in cgroup::parents() {
        for n in names(&parent) {
            if n.starts_with(&format!("{tag}-")) {
                out.push(format!("cgroup {}", parent.join(n).display()));
            }
        }
    }
    for pid in names(Path::new("/proc")) {
        if pid.parse::<u32>().is_err() {
            continue;
        }
        if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) {
            if cwd.starts_with(root) {
                out.push(format!("process {pid} in {}", cwd.display()));
                continue;
            }
        }
        // Processes inside a container: their cwd is in another mount namespace, their cgroup
        // carries the tag.
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if cg.contains(&format!("/airlock/{tag}-")) {
            out.push(format!("process {pid} in a sandbox cgroup"));
        }
    }
    out
}
