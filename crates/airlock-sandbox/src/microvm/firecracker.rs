//! The Firecracker driver: one VM in a jailer chroot, configured over Firecracker's API socket.
//!
//! Per VM, `<chroot_base>/<exec name>/<id>/root/` (the jailer's layout, owned by the VM's uid,
//! 0700) holds everything Firecracker may see:
//! - `kernel` (an ELF `vmlinux`: Firecracker on x86_64 loads no bzImage), `initrd`, `rootfs.ext4`:
//!   hard links to the image's read-only files (which keep their owner and mode) or, when that is
//!   impossible, copies owned by the VM's uid with mode 0600;
//! - `config.img`: the config disk (see `airlock_agent::config`), a hard link to the caller's
//!   file when it can be (so the guest's result lands in the caller's file), else a copy
//!   ([`FirecrackerVm::config_disk`] says where to read the result);
//! - `scratch.ext4`: the per-job sparse writable layer, formatted on the host, `disk_gib` GiB;
//! - `run/fc.sock`: the API socket; `dev/{kvm,net/tun,urandom,userfaultfd}`: made by the jailer,
//!   owned by the VM's uid, which is how an unprivileged Firecracker opens KVM and its tap.
//!
//! Drive order (the guest's names): `rootfs.ext4` read-only as `/dev/vda`, the config disk as
//! `/dev/vdb` (the agent's `CONFIG_DEVICE`), `scratch.ext4` as `/dev/vdc`: the guest's root is
//! [`root_spec`]. None is Firecracker's "root device", so nothing is added to the kernel command
//! line, which stays `airlock_agent::KERNEL_CMDLINE`.
//!
//! The jailer runs without `--new-pid-ns`: it then execs Firecracker in place, so the process
//! spawned is the VMM itself (a supervisor's exit status and a kill reach it); with a new pid
//! namespace the jailer's own process would exit at once. Its cgroup (`<parent>/<id>`) is v1's
//! controllers on hybrid and v1 hosts, v2 on unified ones.
//!
//! This module must never put the JIT secret on an argv or into an API body: it lives only in
//! the config disk's bytes, which the caller wrote.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use airlock_agent::config::{RootSpec, CONFIG_DISK_SIZE};
use serde_json::json;

use super::vmm_api::{self, call, check_vm_id, ApiClient, Recorded, VmmError};

/// The API socket, as Firecracker sees it inside its chroot.
pub const API_SOCK: &str = "/run/fc.sock";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CPU_PERIOD_US: u64 = 100_000;

/// The guest's root under Firecracker: the image read-only, the scratch disk as its overlay.
pub fn root_spec() -> RootSpec {
    RootSpec {
        device: "/dev/vda".into(),
        writable_layer: Some("/dev/vdc".into()),
        grow: false,
    }
}

/// The cgroup the jailer makes for the VM: `<parent>/<id>` in every hierarchy it writes to.
#[derive(Debug, Clone, PartialEq)]
pub struct JailerCgroup {
    pub parent: String,
    pub cpus: f64,
    pub memory_bytes: u64,
    pub pids: u64,
}

#[derive(Debug, Clone)]
pub struct FirecrackerSpec {
    /// The jailer's id: the chroot's and the cgroup's name (`[A-Za-z0-9-]`, 1 to 64).
    pub id: String,
    pub jailer: PathBuf,
    pub firecracker: PathBuf,
    pub chroot_base: PathBuf,
    /// The VM's own unprivileged uid (and gid).
    pub uid: u32,
    pub cpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
    pub disk_gib: u64,
    /// The config disk the caller wrote (`CONFIG_DISK_SIZE` bytes, maybe holding the JIT config).
    pub config_disk: PathBuf,
    /// The VM's tap, made by root beforehand (owned by `uid`); `None`: no network.
    pub tap: Option<String>,
    pub cgroup: Option<JailerCgroup>,
    pub boot_args: String,
    /// The VMM's stdout and stderr (the serial console and Firecracker's log).
    pub log: PathBuf,
    pub api_timeout: Duration,
}

/// Where one jail's files are on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Jail {
    /// `<chroot_base>/<exec name>/<id>`: removed whole on cleanup.
    pub dir: PathBuf,
    /// `dir/root`, the VMM's `/`.
    pub root: PathBuf,
}

impl Jail {
    pub fn of(chroot_base: &Path, firecracker: &Path, id: &str) -> Jail {
        let exec = firecracker
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "firecracker".into());
        let dir = chroot_base.join(exec).join(id);
        Jail {
            root: dir.join("root"),
            dir,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join(API_SOCK.trim_start_matches('/'))
    }
}

/// Whether the jailer should use cgroup v2: only on a unified host (a hybrid host's v2 mount has
/// no controllers, and the jailer's v2 mode fails there with "Controller cpu is unavailable").
pub fn cgroup_v2() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// The jailer's argv (program first). No secret: ids, uids, paths and limits only.
pub fn jailer_argv(spec: &FirecrackerSpec) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        spec.jailer.clone().into(),
        "--id".into(),
        spec.id.clone().into(),
        "--exec-file".into(),
        spec.firecracker.clone().into(),
        "--uid".into(),
        spec.uid.to_string().into(),
        "--gid".into(),
        spec.uid.to_string().into(),
        "--chroot-base-dir".into(),
        spec.chroot_base.clone().into(),
    ];
    if let Some(c) = &spec.cgroup {
        let quota = ((c.cpus * CPU_PERIOD_US as f64) as u64).max(1000);
        let v2 = cgroup_v2();
        a.extend([
            "--cgroup-version".into(),
            if v2 { "2" } else { "1" }.into(),
            "--parent-cgroup".into(),
            c.parent.clone().into(),
        ]);
        let limits = if v2 {
            vec![
                format!("cpu.max={quota} {CPU_PERIOD_US}"),
                format!("memory.max={}", c.memory_bytes),
                format!("pids.max={}", c.pids),
            ]
        } else {
            vec![
                format!("cpu.cfs_period_us={CPU_PERIOD_US}"),
                format!("cpu.cfs_quota_us={quota}"),
                format!("memory.limit_in_bytes={}", c.memory_bytes),
                format!("pids.max={}", c.pids),
            ]
        };
        for l in limits {
            a.push("--cgroup".into());
            a.push(l.into());
        }
    }
    a.extend(["--".into(), "--api-sock".into(), API_SOCK.into()]);
    a
}

/// The cgroup directories the jailer made (or would make) for `id` under `parent`, in every
/// hierarchy mounted under `/sys/fs/cgroup` (and the unified root).
pub fn cgroup_dirs(parent: &str, id: &str) -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    let mut out = vec![];
    if cgroup_v2() {
        out.push(root.join(parent).join(id));
    } else if let Ok(d) = std::fs::read_dir(root) {
        for e in d.flatten() {
            out.push(e.path().join(parent).join(id));
        }
    }
    out.retain(|p| p.is_dir());
    out
}

/// A running (or configured) Firecracker VM this process spawned.
#[derive(Debug)]
pub struct FirecrackerVm {
    id: String,
    jail: Jail,
    cgroup_parent: Option<String>,
    config_disk: PathBuf,
    child: tokio::process::Child,
    api: ApiClient,
    spec: FirecrackerSpec,
}

impl FirecrackerVm {
    /// Prepares the jail, spawns the jailer, configures the VM and starts it. On any failure
    /// everything made is removed again before the error is returned.
    pub async fn launch(spec: &FirecrackerSpec) -> Result<FirecrackerVm, VmmError> {
        let mut vm = FirecrackerVm::spawn(spec).await?;
        match vm.start().await {
            Ok(()) => Ok(vm),
            Err(e) => {
                vm.kill().await;
                let _ = vm.cleanup();
                Err(e)
            }
        }
    }

    /// Prepares the jail and spawns the jailer, waiting until Firecracker's API answers. Nothing
    /// is configured yet. On failure the jail is removed.
    pub async fn spawn(spec: &FirecrackerSpec) -> Result<FirecrackerVm, VmmError> {
        let jail = prepare(spec)?;
        let fail = |e| {
            let _ = cleanup(
                &spec.chroot_base,
                &spec.firecracker,
                &spec.id,
                spec.cgroup.as_ref().map(|c| c.parent.as_str()),
            );
            e
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(|source| VmmError::Prepare {
                id: spec.id.clone(),
                what: "opening the log",
                path: spec.log.clone(),
                source,
            })
            .map_err(fail)?;
        let err_log = log.try_clone().map_err(|source| {
            fail(VmmError::Prepare {
                id: spec.id.clone(),
                what: "opening the log",
                path: spec.log.clone(),
                source,
            })
        })?;
        let argv = jailer_argv(spec);
        let mut child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| {
                fail(VmmError::Spawn {
                    id: spec.id.clone(),
                    program: spec.jailer.clone(),
                    source,
                })
            })?;
        let api = ApiClient::new(jail.socket(), spec.api_timeout);
        if let Err(source) = api
            .wait_ready(spec.api_timeout, || vmm_api::exited(&mut child))
            .await
        {
            vmm_api::kill_child(&mut child).await;
            return Err(fail(VmmError::Api {
                id: spec.id.clone(),
                source,
            }));
        }
        Ok(FirecrackerVm {
            id: spec.id.clone(),
            config_disk: jail.root.join("config.img"),
            jail,
            cgroup_parent: spec.cgroup.as_ref().map(|c| c.parent.clone()),
            child,
            api,
            spec: spec.clone(),
        })
    }

    /// Configures the VM (machine, boot source, drives, network) and starts it.
    pub async fn start(&mut self) -> Result<(), VmmError> {
        boot(&self.api, &self.spec).await
    }

    /// Firecracker's view of the VM (`GET /`: its id, state and version).
    pub async fn info(&self) -> Result<serde_json::Value, VmmError> {
        let r = call(&self.api, &self.id, "GET", "/", None, &[]).await?;
        serde_json::from_str(&r.body).map_err(|e| VmmError::Tool {
            id: self.id.clone(),
            what: "GET / answered with something other than JSON",
            detail: e.to_string(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn jail(&self) -> &Jail {
        &self.jail
    }

    /// Where the guest's result record is written (the caller's own file when it was linked).
    pub fn config_disk(&self) -> &Path {
        &self.config_disk
    }

    /// Every API request sent to this VM, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.api.requests()
    }

    /// How the VMM ended, once it has (`None` while it runs).
    pub fn exited(&mut self) -> Option<String> {
        vmm_api::exited(&mut self.child)
    }

    /// SIGKILLs Firecracker and reaps it.
    pub async fn kill(&mut self) {
        vmm_api::kill_child(&mut self.child).await;
    }

    /// Removes the jail, its socket and its cgroups (after [`kill`](Self::kill)).
    pub fn cleanup(&self) -> Result<(), VmmError> {
        cleanup(
            &self.spec.chroot_base,
            &self.spec.firecracker,
            &self.id,
            self.cgroup_parent.as_deref(),
        )
    }
}

/// Makes the jail's root with the VM's files in it (see the module docs), before the jailer
/// runs: a failure leaves no process behind. A leftover jail of the same id is refused.
pub fn prepare(spec: &FirecrackerSpec) -> Result<Jail, VmmError> {
    check_vm_id(&spec.id)?;
    let id = spec.id.as_str();
    let jail = Jail::of(&spec.chroot_base, &spec.firecracker, id);
    let prep = |what, path: &Path, source| VmmError::Prepare {
        id: id.into(),
        what,
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(&spec.config_disk)
        .map_err(|e| prep("reading the config disk", &spec.config_disk, e))?
        .len();
    if size != CONFIG_DISK_SIZE as u64 {
        return Err(VmmError::Spec {
            id: id.into(),
            detail: format!(
                "config disk {} is {size} bytes, not {CONFIG_DISK_SIZE}",
                spec.config_disk.display()
            ),
        });
    }
    if jail.dir.exists() {
        return Err(prep(
            "a jail is left over at",
            &jail.dir,
            std::io::ErrorKind::AlreadyExists.into(),
        ));
    }
    std::fs::create_dir_all(&jail.root).map_err(|e| prep("creating", &jail.root, e))?;
    let made = (|| {
        std::fs::set_permissions(&jail.root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| prep("chmod", &jail.root, e))?;
        nix::unistd::chown(
            &jail.root,
            Some(nix::unistd::Uid::from_raw(spec.uid)),
            Some(nix::unistd::Gid::from_raw(spec.uid)),
        )
        .map_err(|e| prep("chown", &jail.root, e.into()))?;
        for (src, name) in [
            (&spec.kernel, "kernel"),
            (&spec.initramfs, "initrd"),
            (&spec.rootfs, "rootfs.ext4"),
        ] {
            vmm_api::link_or_copy(id, src, &jail.root.join(name), spec.uid)?;
        }
        let config = jail.root.join("config.img");
        if std::fs::hard_link(&spec.config_disk, &config).is_err() {
            std::fs::copy(&spec.config_disk, &config)
                .map_err(|e| prep("copying the config disk", &spec.config_disk, e))?;
        }
        vmm_api::own(&config, spec.uid).map_err(|e| prep("chown", &config, e))?;
        vmm_api::make_scratch_disk(id, &jail.root.join("scratch.ext4"), spec.disk_gib, spec.uid)
    })();
    if let Err(e) = made {
        let _ = vmm_api::remove_tree(id, &jail.dir);
        return Err(e);
    }
    Ok(jail)
}

/// The API bodies that configure one VM, in the order they are sent (paths as seen in the jail).
pub fn config_requests(spec: &FirecrackerSpec) -> Vec<(&'static str, String, serde_json::Value)> {
    let mut r = vec![
        (
            "PUT",
            "/machine-config".to_string(),
            json!({"vcpu_count": spec.cpus.max(1), "mem_size_mib": spec.memory_mib, "smt": false}),
        ),
        (
            "PUT",
            "/boot-source".to_string(),
            json!({"kernel_image_path": "/kernel", "initrd_path": "/initrd", "boot_args": spec.boot_args}),
        ),
    ];
    // The order of these PUTs is the guest's vda, vdb, vdc (see `root_spec`).
    for (drive, file, read_only) in [
        ("rootfs", "/rootfs.ext4", true),
        ("config", "/config.img", false),
        ("scratch", "/scratch.ext4", false),
    ] {
        r.push((
            "PUT",
            format!("/drives/{drive}"),
            json!({"drive_id": drive, "path_on_host": file, "is_root_device": false, "is_read_only": read_only}),
        ));
    }
    if let Some(tap) = &spec.tap {
        r.push((
            "PUT",
            "/network-interfaces/eth0".to_string(),
            json!({"iface_id": "eth0", "host_dev_name": tap}),
        ));
    }
    r
}

/// Sends [`config_requests`]; the first refusal is returned with Firecracker's `fault_message`.
pub async fn configure(api: &ApiClient, spec: &FirecrackerSpec) -> Result<(), VmmError> {
    for (method, path, body) in config_requests(spec) {
        call(api, &spec.id, method, &path, Some(&body), &[]).await?;
    }
    Ok(())
}

/// Configures a spawned Firecracker ([`configure`]) and starts its VM (`InstanceStart`).
pub async fn boot(api: &ApiClient, spec: &FirecrackerSpec) -> Result<(), VmmError> {
    configure(api, spec).await?;
    call(
        api,
        &spec.id,
        "PUT",
        "/actions",
        Some(&json!({"action_type": "InstanceStart"})),
        &[],
    )
    .await?;
    Ok(())
}

/// Removes everything the jailer and [`prepare`] made for `id`: any process left in its cgroups,
/// the cgroups (`<parent>/<id>`, retried while a killed VMM finishes dying), and the whole jail
/// directory with its socket. Idempotent; correct when the VM never started. The tap is not
/// touched: its owner made it and removes it.
pub fn cleanup(
    chroot_base: &Path,
    firecracker: &Path,
    id: &str,
    cgroup_parent: Option<&str>,
) -> Result<(), VmmError> {
    check_vm_id(id)?;
    if let Some(parent) = cgroup_parent {
        for dir in cgroup_dirs(parent, id) {
            let mut last = Ok(());
            for _ in 0..250 {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                last = match std::fs::remove_dir(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                };
                if last.is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            last.map_err(|e| VmmError::Cleanup {
                id: id.into(),
                path: dir.clone(),
                detail: e.to_string(),
            })?;
        }
    }
    vmm_api::remove_tree(id, &Jail::of(chroot_base, firecracker, id).dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FirecrackerSpec {
        FirecrackerSpec {
            id: "fc-1".into(),
            jailer: "/opt/jailer".into(),
            firecracker: "/opt/firecracker".into(),
            chroot_base: "/srv/jail".into(),
            uid: 200_001,
            cpus: 2,
            memory_mib: 512,
            kernel: "/img/vmlinux".into(),
            initramfs: "/img/initrd".into(),
            rootfs: "/img/rootfs.ext4".into(),
            disk_gib: 4,
            config_disk: "/vms/fc-1/config.img".into(),
            tap: Some("airl0123".into()),
            cgroup: Some(JailerCgroup {
                parent: "airlock".into(),
                cpus: 1.5,
                memory_bytes: 1 << 30,
                pids: 256,
            }),
            boot_args: airlock_agent::KERNEL_CMDLINE.into(),
            log: "/vms/fc-1/runner.log".into(),
            api_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_jailer_gets_ids_limits_and_the_socket_after_the_separator() {
        let a: Vec<String> = jailer_argv(&spec())
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let at = |x: &str| a.iter().position(|y| y == x).unwrap();
        assert_eq!(a[at("--id") + 1], "fc-1");
        assert_eq!(a[at("--uid") + 1], "200001");
        assert_eq!(a[at("--gid") + 1], "200001");
        assert_eq!(a[at("--parent-cgroup") + 1], "airlock");
        assert!(
            a.iter()
                .any(|x| x == "cpu.cfs_quota_us=150000" || x == "cpu.max=150000 100000"),
            "{a:?}"
        );
        assert_eq!(&a[at("--")..], ["--", "--api-sock", "/run/fc.sock"]);
        assert!(!a.iter().any(|x| x == "--new-pid-ns" || x == "--daemonize"));
    }

    #[test]
    fn drives_go_root_config_scratch_and_no_drive_is_the_kernels_root() {
        let r = config_requests(&spec());
        let drives: Vec<&str> = r
            .iter()
            .filter(|(_, p, _)| p.starts_with("/drives/"))
            .map(|(_, _, b)| b["drive_id"].as_str().unwrap())
            .collect();
        assert_eq!(drives, ["rootfs", "config", "scratch"]);
        assert!(r
            .iter()
            .all(|(_, _, b)| b.get("is_root_device") != Some(&json!(true))));
        let root = root_spec();
        assert_eq!(root.device, "/dev/vda");
        assert_eq!(root.writable_layer.as_deref(), Some("/dev/vdc"));
        assert_eq!(airlock_agent::config::CONFIG_DEVICE, "/dev/vdb");
    }

    #[test]
    fn the_jail_is_the_jailers_layout() {
        let j = Jail::of(
            Path::new("/srv/jail"),
            Path::new("/opt/firecracker"),
            "fc-1",
        );
        assert_eq!(j.dir, Path::new("/srv/jail/firecracker/fc-1"));
        assert_eq!(
            j.socket(),
            Path::new("/srv/jail/firecracker/fc-1/root/run/fc.sock")
        );
    }
}
