//! The Cloud Hypervisor driver: one VM, its VMM unprivileged, configured over its API socket.
//!
//! Cloud Hypervisor has no jailer. It runs as the VM's own uid (`setpriv --reuid=U --regid=U
//! --clear-groups --no-new-privs`, no capabilities, as QEMU does), in a private mount namespace
//! where `/dev/kvm` is bind-mounted from a device node in the VM's directory that belongs to that
//! uid: that is how an unprivileged VMM opens KVM without any change to the host's `/dev/kvm`
//! (the jailer does the same with a node in its chroot). The namespace dies with the VMM.
//!
//! The tap: Cloud Hypervisor would open `/dev/net/tun` itself for `net: [{tap: NAME}]`, which
//! an unprivileged process cannot (mode 0600 here: "Couldn't open /dev/net/tun: Permission
//! denied"), and `vm.create` discards descriptors. So root opens the tap
//! (`airlock_net::open_tap`) and hands it over with `PUT /api/v1/vm.add-net` as `SCM_RIGHTS`,
//! which cold-adds the NIC to the created VM before `vm.boot`.
//!
//! Per VM, `dir` (made here, 0710 root with the VM's group, removed whole on cleanup) holds:
//! `kvm` (the device node), `run/api.sock` (in a 0700 directory of the VM's, where the VMM can
//! create its socket), `kernel`, `initrd`, `rootfs.ext4` (hard links to the image's files, or
//! copies), `config.img` (a hard link to the caller's config disk when it can be, else a copy:
//! [`ChvVm::config_disk`]) and `scratch.ext4` (the sparse per-job ext4).
//!
//! Disks are in the order root (read-only), config, scratch: the guest's vda, vdb, vdc, as
//! under Firecracker (`firecracker::root_spec`). Cloud Hypervisor's devices are virtio-pci, so
//! the kernel command line must not say `pci=off` ([`cmdline`]) and the initramfs must load
//! `virtio_pci`. The serial console goes to the VMM's stdout (`Tty`), like QEMU's.
//!
//! This module must never put the JIT secret on an argv or into an API body.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use airlock_agent::config::CONFIG_DISK_SIZE;
use serde_json::json;

use super::vmm_api::{self, call, check_vm_id, ApiClient, Recorded, VmmError};

/// `airlock_agent::KERNEL_CMDLINE` for Cloud Hypervisor: without `pci=off`, since its virtio
/// devices sit on PCI.
pub fn cmdline() -> String {
    airlock_agent::KERNEL_CMDLINE
        .split(' ')
        .filter(|a| *a != "pci=off")
        .collect::<Vec<_>>()
        .join(" ")
}

/// Joins the cgroups given in `AIRLOCK_CGROUP_PROCS`, binds the VM's KVM node over `/dev/kvm`
/// in the new mount namespace, then becomes the unprivileged VMM (`"$@"`: setpriv ...).
/// One line: the backend's launch record keeps an argument a line.
const WRAPPER: &str = r#"node=$1; shift; for f in $AIRLOCK_CGROUP_PROCS; do echo $$ > "$f" || exit 125; done; mount --bind "$node" /dev/kvm || exit 125; exec "$@""#;

#[derive(Debug, Clone)]
pub struct ChvSpec {
    pub id: String,
    pub cloud_hypervisor: PathBuf,
    pub setpriv: PathBuf,
    pub unshare: PathBuf,
    /// The VM's directory: must not exist; made and removed by this driver.
    pub dir: PathBuf,
    pub uid: u32,
    pub cpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
    pub disk_gib: u64,
    /// The config disk the caller wrote (`CONFIG_DISK_SIZE` bytes, maybe holding the JIT config).
    pub config_disk: PathBuf,
    /// The VM's tap, made by root beforehand; root opens it and passes the descriptor.
    pub tap: Option<String>,
    /// `cgroup.procs` files the VMM joins before it drops its privileges.
    pub cgroup_procs: Vec<PathBuf>,
    pub cmdline: String,
    /// The VMM's stdout and stderr (the serial console and its log).
    pub log: PathBuf,
    pub api_timeout: Duration,
    /// The descriptor number under which the VMM inherits its API socket, bound by the caller
    /// (`--api-socket fd=N`); `None`: it binds [`socket`](Self::socket) itself, which must then
    /// fit a Unix socket address.
    pub api_fd: Option<u32>,
}

impl ChvSpec {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("run").join("api.sock")
    }
}

/// The VMM's argv (program first). No secret: paths and the uid only.
pub fn argv(spec: &ChvSpec) -> Vec<OsString> {
    let uid = spec.uid;
    let api = match spec.api_fd {
        Some(fd) => OsString::from(format!("fd={fd}")),
        None => {
            let mut a = OsString::from("path=");
            a.push(spec.socket());
            a
        }
    };
    vec![
        spec.unshare.clone().into(),
        "--mount".into(),
        "--propagation".into(),
        "private".into(),
        "--".into(),
        "/bin/sh".into(),
        "-c".into(),
        WRAPPER.into(),
        "airlock-chv".into(),
        spec.dir.join("kvm").into(),
        spec.setpriv.clone().into(),
        format!("--reuid={uid}").into(),
        format!("--regid={uid}").into(),
        "--clear-groups".into(),
        "--no-new-privs".into(),
        "--inh-caps=-all".into(),
        "--bounding-set=-all".into(),
        "--".into(),
        spec.cloud_hypervisor.clone().into(),
        "--api-socket".into(),
        api,
    ]
}

/// The `vm.create` body: CPUs, memory, payload, the three disks in order, serial on stdout.
pub fn create_body(spec: &ChvSpec) -> serde_json::Value {
    let p = |name: &str| spec.dir.join(name).to_string_lossy().into_owned();
    let n = spec.cpus.max(1);
    json!({
        "cpus": {"boot_vcpus": n, "max_vcpus": n},
        "memory": {"size": spec.memory_mib << 20},
        "payload": {"kernel": p("kernel"), "initramfs": p("initrd"), "cmdline": spec.cmdline},
        "disks": [
            {"id": "rootfs", "path": p("rootfs.ext4"), "readonly": true, "image_type": "Raw"},
            {"id": "config", "path": p("config.img"), "readonly": false, "image_type": "Raw"},
            {"id": "scratch", "path": p("scratch.ext4"), "readonly": false, "image_type": "Raw"},
        ],
        "serial": {"mode": "Tty"},
        "console": {"mode": "Off"},
    })
}

/// A Cloud Hypervisor VM this process spawned.
#[derive(Debug)]
pub struct ChvVm {
    spec: ChvSpec,
    child: tokio::process::Child,
    api: ApiClient,
}

impl ChvVm {
    /// Prepares the directory, spawns the VMM, creates, adds the NIC and boots. On any failure
    /// everything made is removed again before the error is returned.
    pub async fn launch(spec: &ChvSpec) -> Result<ChvVm, VmmError> {
        let mut vm = ChvVm::spawn(spec).await?;
        match vm.start().await {
            Ok(()) => Ok(vm),
            Err(e) => {
                vm.kill().await;
                let _ = vm.cleanup();
                Err(e)
            }
        }
    }

    /// Prepares the directory and spawns the VMM, waiting until its API answers.
    pub async fn spawn(spec: &ChvSpec) -> Result<ChvVm, VmmError> {
        prepare(spec)?;
        let fail = |e| {
            let _ = cleanup(&spec.id, &spec.dir);
            e
        };
        let open_log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&spec.log)
                .map_err(|source| VmmError::Prepare {
                    id: spec.id.clone(),
                    what: "opening the log",
                    path: spec.log.clone(),
                    source,
                })
        };
        let (out, err) = match (open_log(), open_log()) {
            (Ok(o), Ok(e)) => (o, e),
            (Err(e), _) | (_, Err(e)) => return Err(fail(e)),
        };
        let procs: Vec<String> = spec
            .cgroup_procs
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let argv = argv(spec);
        let mut child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env("AIRLOCK_CGROUP_PROCS", procs.join(" "))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| {
                fail(VmmError::Spawn {
                    id: spec.id.clone(),
                    program: spec.unshare.clone(),
                    source,
                })
            })?;
        let api = ApiClient::new(spec.socket(), spec.api_timeout);
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
        Ok(ChvVm {
            spec: spec.clone(),
            child,
            api,
        })
    }

    /// `vm.create`, `vm.add-net` with the tap's descriptor, `vm.boot`.
    pub async fn start(&mut self) -> Result<(), VmmError> {
        boot(&self.api, &self.spec).await
    }

    /// `GET /api/v1/vm.info`: the VM's config and `state` (Created, Running, Shutdown, Paused).
    pub async fn info(&self) -> Result<serde_json::Value, VmmError> {
        let r = call(
            &self.api,
            &self.spec.id,
            "GET",
            "/api/v1/vm.info",
            None,
            &[],
        )
        .await?;
        serde_json::from_str(&r.body).map_err(|e| VmmError::Tool {
            id: self.spec.id.clone(),
            what: "vm.info answered with something other than JSON",
            detail: e.to_string(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn config_disk(&self) -> PathBuf {
        self.spec.dir.join("config.img")
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.api.requests()
    }

    /// How the VMM ended, once it has (`None` while it runs).
    pub fn exited(&mut self) -> Option<String> {
        vmm_api::exited(&mut self.child)
    }

    pub async fn kill(&mut self) {
        vmm_api::kill_child(&mut self.child).await;
    }

    /// Removes the VM's directory with its socket, device node and disks (after `kill`).
    pub fn cleanup(&self) -> Result<(), VmmError> {
        cleanup(&self.spec.id, &self.spec.dir)
    }
}

/// Creates the VM in a spawned Cloud Hypervisor (`vm.create`), hands it the tap root opened
/// (`vm.add-net` with the descriptor) and boots it (`vm.boot`).
pub async fn boot(api: &ApiClient, spec: &ChvSpec) -> Result<(), VmmError> {
    let id = spec.id.as_str();
    let body = create_body(spec);
    call(api, id, "PUT", "/api/v1/vm.create", Some(&body), &[]).await?;
    if let Some(tap) = &spec.tap {
        let fd = airlock_net::open_tap(tap).map_err(|e| VmmError::Tool {
            id: id.into(),
            what: "opening the tap",
            detail: e.to_string(),
        })?;
        let net = json!({"id": "net0"});
        call(
            api,
            id,
            "PUT",
            "/api/v1/vm.add-net",
            Some(&net),
            &[fd.as_fd()],
        )
        .await?;
        // Our copy closes here; the VMM holds its own.
    }
    call(api, id, "PUT", "/api/v1/vm.boot", None, &[]).await?;
    Ok(())
}

/// Makes the VM's directory and files (see the module docs). A leftover directory is refused.
pub fn prepare(spec: &ChvSpec) -> Result<(), VmmError> {
    check_vm_id(&spec.id)?;
    let id = spec.id.as_str();
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
    let dir = &spec.dir;
    std::fs::create_dir(dir).map_err(|e| prep("creating", dir, e))?;
    let made = (|| {
        let chown = |p: &Path, uid: u32, gid: u32| {
            nix::unistd::chown(
                p,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| prep("chown", p, e.into()))
        };
        let chmod = |p: &Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .map_err(|e| prep("chmod", p, e))
        };
        chown(dir, 0, spec.uid)?;
        chmod(dir, 0o710)?;
        let run = dir.join("run");
        std::fs::create_dir(&run).map_err(|e| prep("creating", &run, e))?;
        chown(&run, spec.uid, spec.uid)?;
        chmod(&run, 0o700)?;
        let kvm = dir.join("kvm");
        nix::sys::stat::mknod(
            &kvm,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(10, 232),
        )
        .map_err(|e| prep("mknod", &kvm, e.into()))?;
        chown(&kvm, spec.uid, spec.uid)?;
        for (src, name) in [
            (&spec.kernel, "kernel"),
            (&spec.initramfs, "initrd"),
            (&spec.rootfs, "rootfs.ext4"),
        ] {
            vmm_api::link_or_copy(id, src, &dir.join(name), spec.uid)?;
        }
        let config = dir.join("config.img");
        if std::fs::hard_link(&spec.config_disk, &config).is_err() {
            std::fs::copy(&spec.config_disk, &config)
                .map_err(|e| prep("copying the config disk", &spec.config_disk, e))?;
        }
        vmm_api::own(&config, spec.uid).map_err(|e| prep("chown", &config, e))?;
        vmm_api::make_scratch_disk(id, &dir.join("scratch.ext4"), spec.disk_gib, spec.uid)
    })();
    if let Err(e) = made {
        let _ = vmm_api::remove_tree(id, dir);
        return Err(e);
    }
    Ok(())
}

/// Removes the VM's directory (socket, device node, disks). Idempotent. The tap is its owner's.
pub fn cleanup(id: &str, dir: &Path) -> Result<(), VmmError> {
    vmm_api::remove_tree(id, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ChvSpec {
        ChvSpec {
            id: "ch-1".into(),
            cloud_hypervisor: "/opt/cloud-hypervisor".into(),
            setpriv: "/usr/bin/setpriv".into(),
            unshare: "/usr/bin/unshare".into(),
            dir: "/vms/ch-1/vmm".into(),
            uid: 200_002,
            cpus: 2,
            memory_mib: 512,
            kernel: "/img/vmlinuz".into(),
            initramfs: "/img/initrd".into(),
            rootfs: "/img/rootfs.ext4".into(),
            disk_gib: 4,
            config_disk: "/vms/ch-1/config.img".into(),
            tap: Some("airl0456".into()),
            cgroup_procs: vec![],
            cmdline: cmdline(),
            log: "/vms/ch-1/runner.log".into(),
            api_timeout: Duration::from_secs(5),
            api_fd: None,
        }
    }

    #[test]
    fn the_vmm_drops_to_its_uid_after_binding_kvm() {
        let a: Vec<String> = argv(&spec())
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let at = |x: &str| a.iter().position(|y| y == x).unwrap();
        assert!(at("/vms/ch-1/vmm/kvm") < at("/usr/bin/setpriv"));
        assert!(at("--reuid=200002") < at("/opt/cloud-hypervisor"));
        assert_eq!(a.last().unwrap(), "path=/vms/ch-1/vmm/run/api.sock");
        let handed = ChvSpec {
            api_fd: Some(3),
            ..spec()
        };
        let last = argv(&handed).last().unwrap().to_string_lossy().into_owned();
        assert_eq!(last, "fd=3", "a socket bound by the caller is inherited");
    }

    #[test]
    fn disks_are_root_config_scratch_and_pci_stays_on() {
        let b = create_body(&spec());
        let ids: Vec<&str> = b["disks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["rootfs", "config", "scratch"]);
        assert_eq!(b["disks"][0]["readonly"], json!(true));
        assert_eq!(b["memory"]["size"], json!(512u64 << 20));
        let c = cmdline();
        assert!(!c.contains("pci=off") && c.contains("console=ttyS0"), "{c}");
        assert!(b.get("net").is_none(), "the NIC comes by vm.add-net");
    }
}
