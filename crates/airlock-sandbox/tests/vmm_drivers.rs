//! The Firecracker and Cloud Hypervisor drivers against the real binaries (`shared/vmm/`), as
//! root: spawn, configure, start, kill, and nothing left but the tap (which airlock owns). Every
//! request body the drivers sent is validated against the VMM's own API description by
//! `tests/vmm-api/validate.mjs`, which is itself shown to catch bad bodies.
//!
//! On this host no guest boots (its KVM is PVM, which cannot boot stock kernels, see
//! MACHINE.md), so these tests stop at the start call: Firecracker's `InstanceStart` and Cloud
//! Hypervisor's `vm.boot` are expected to succeed (the VMM then reports its VM running while the
//! guest never prints a line) or to fail in the documented way when no usable kernel is at hand.
//! Nothing here proves that a guest finds its disks or its network.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use airlock_agent::config::{GuestConfig, NetSpec, RunnerSpec, Secret, CONFIG_VERSION};
use airlock_net::Subnet;
use airlock_sandbox::microvm::chv::{self, ChvSpec, ChvVm};
use airlock_sandbox::microvm::firecracker::{self, FirecrackerSpec, FirecrackerVm, JailerCgroup};
use airlock_sandbox::microvm::vmm_api::{Recorded, VmmError};
use common::vmm_binary;

const SECRET: &str = "JITSECRET-vmm-9d2c41";
const FC_UID: u32 = 270_001;
const CH_UID: u32 = 270_002;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "VMM driver tests need root (CI runs as root)"
    );
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The test image's boot files (built by the microvm tests), if any target dir has them.
fn boot_files() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let roots = [
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        workspace().join("target/tmp"),
    ];
    for r in roots {
        let Ok(images) = std::fs::read_dir(r.join("airlock-test-images/test-vm")) else {
            continue;
        };
        for e in images.flatten() {
            let vm = e.path().join("vm");
            let find = |prefix: &str| {
                std::fs::read_dir(&vm).ok()?.flatten().find_map(|f| {
                    let n = f.file_name().to_string_lossy().into_owned();
                    n.starts_with(prefix).then(|| f.path())
                })
            };
            if let (Some(k), Some(i), Some(d)) =
                (find("vmlinuz-"), find("initramfs-"), find("rootfs.ext4"))
            {
                return Some((k, i, d));
            }
        }
    }
    None
}

/// The ELF `vmlinux` inside a bzImage (Firecracker loads no bzImage on x86_64), as the image
/// build extracts it; `None` when that is impossible here.
fn extract_vmlinux(bz: &Path, out: &Path) -> Option<PathBuf> {
    airlock_image::vm::extract_vmlinux(bz, out).ok().flatten()
}

/// A config disk with the JIT secret in it, written as the backend writes it, owned by `uid`.
fn config_disk(path: &Path, uid: u32, root: airlock_agent::config::RootSpec) {
    let c = GuestConfig {
        version: CONFIG_VERSION,
        hostname: "airlock-vmmtest".into(),
        root,
        net: Some(NetSpec {
            address: "10.251.0.2".parse().unwrap(),
            prefix: 30,
            gateway: "10.251.0.1".parse().unwrap(),
            dns: vec![],
        }),
        runner: RunnerSpec {
            command: "/home/runner/run".into(),
            user: "runner".into(),
            env: Default::default(),
        },
        jit: Secret::new(SECRET),
        docker: false,
    };
    std::fs::write(path, c.to_disk_bytes().unwrap()).unwrap();
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(uid)),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A tap made by root as airlock makes them (owned by the VM's uid), deleted on drop.
struct Tap(String);

impl Tap {
    fn new(what: &str, index: u32, uid: u32) -> Tap {
        let key = format!("vmmtest-{}/{what}", std::process::id());
        let link = Subnet::parse("10.251.0.0/16").unwrap().link(&key, index);
        airlock_net::create_tap(&link, &key, uid).unwrap();
        Tap(link.host_if)
    }

    fn owner(&self) -> Option<u32> {
        std::fs::read_to_string(format!("/sys/class/net/{}/owner", self.0))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = airlock_net::delete(&self.0);
    }
}

/// Removes a test's parent cgroup from every hierarchy (the jailer made it; it is ours).
struct ParentCgroup(String);

impl Drop for ParentCgroup {
    fn drop(&mut self) {
        if let Ok(d) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in d.flatten() {
                let _ = std::fs::remove_dir(e.path().join(&self.0));
            }
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&self.0));
    }
}

fn proc_text(pid: u32, file: &str) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default())
        .replace('\0', " ")
}

fn proc_uid(pid: u32) -> u32 {
    std::fs::metadata(format!("/proc/{pid}")).unwrap().uid()
}

fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
        || proc_text(pid, "stat").split(' ').nth(2) == Some("Z")
}

/// Every file left under `dir` (recursively), for the "nothing left" checks.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(d) = std::fs::read_dir(dir) {
        for e in d.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(files_under(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

static NPM: Mutex<bool> = Mutex::new(false);

/// Runs the validator on `requests` (tagged with their API); Ok(stdout) or Err(stdout).
fn validate(requests: &[(&str, Recorded)]) -> Result<String, String> {
    let dir = workspace().join("tests/vmm-api");
    {
        let mut installed = NPM.lock().unwrap_or_else(|p| p.into_inner());
        if !*installed && !dir.join("node_modules/ajv").is_dir() {
            let st = Command::new("npm")
                .args([
                    "ci",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    "--prefix",
                ])
                .arg(&dir)
                .status()
                .expect("npm is needed for the API conformance check");
            assert!(st.success(), "npm ci --prefix tests/vmm-api failed");
        }
        *installed = true;
    }
    let t = tempfile::NamedTempFile::new().unwrap();
    let list: Vec<serde_json::Value> = requests
        .iter()
        .map(|(api, r)| serde_json::json!({"api": api, "method": r.method, "path": r.path, "body": r.body}))
        .collect();
    std::fs::write(t.path(), serde_json::to_vec_pretty(&list).unwrap()).unwrap();
    let shared = vmm_binary("firecracker.yaml")
        .parent()
        .unwrap()
        .to_path_buf();
    let out = Command::new("node")
        .arg(dir.join("validate.mjs"))
        .arg("--strict")
        .arg("--api")
        .arg(format!(
            "firecracker={}",
            shared.join("firecracker.yaml").display()
        ))
        .arg("--api")
        .arg(format!(
            "cloud-hypervisor={},/api/v1",
            shared.join("cloud-hypervisor.yaml").display()
        ))
        .arg(t.path())
        .output()
        .expect("node is needed for the API conformance check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Ok(text),
        Some(1) => Err(text),
        _ => panic!("the validator itself failed: {text}"),
    }
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(SECRET),
        "the JIT secret is in {what}: {text}"
    );
}

fn assert_bodies_hold_no_secret(reqs: &[Recorded]) {
    for r in reqs {
        assert_no_secret(
            &format!("{} {}", r.method, r.path),
            &format!("{:?}", r.body),
        );
    }
}

/// The world outside the temp dir is readable for the VM's uid (tempdirs are 0700).
fn tempdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_in_its_jail_is_configured_started_killed_and_leaves_nothing() {
    require_root();
    let t = tempdir();
    let base = t.path().join("jail");
    std::fs::create_dir(&base).unwrap();
    let cfg = t.path().join("config.img");
    config_disk(&cfg, FC_UID, firecracker::root_spec());
    let boot = boot_files();
    // Firecracker needs an ELF vmlinux: extracted from the test image's bzImage when possible.
    let (kernel, initramfs, rootfs, expect) = match &boot {
        Some((bz, initrd, disk)) => match extract_vmlinux(bz, &t.path().join("vmlinux")) {
            Some(elf) => (elf, initrd.clone(), disk.clone(), "running"),
            None => (bz.clone(), initrd.clone(), disk.clone(), "not ELF"),
        },
        None => {
            let k = t.path().join("not-a-kernel");
            std::fs::write(&k, b"not a kernel").unwrap();
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o444)).unwrap();
            (k.clone(), k.clone(), k, "not ELF")
        }
    };
    let tap = Tap::new("fc", 1, FC_UID);
    let parent = format!("airlock-vmmtest-{}", std::process::id());
    let _parent = ParentCgroup(parent.clone());
    let id = format!("fc-{}", std::process::id());
    let spec = FirecrackerSpec {
        id: id.clone(),
        jailer: vmm_binary("jailer"),
        firecracker: vmm_binary("firecracker"),
        chroot_base: base.clone(),
        uid: FC_UID,
        cpus: 2,
        memory_mib: 256,
        kernel,
        initramfs,
        rootfs,
        disk_gib: 2,
        config_disk: cfg.clone(),
        tap: Some(tap.0.clone()),
        cgroup: Some(JailerCgroup {
            parent: parent.clone(),
            cpus: 0.5,
            memory_bytes: 768 << 20,
            pids: 64,
        }),
        boot_args: airlock_agent::KERNEL_CMDLINE.into(),
        log: t.path().join("fc.log"),
        api_timeout: Duration::from_secs(10),
    };
    let argv: Vec<String> = firecracker::jailer_argv(&spec)
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_no_secret("the jailer's argv", &argv.join(" "));

    let mut vm = FirecrackerVm::spawn(&spec).await.unwrap();
    let pid = vm.pid().unwrap();
    let jail = vm.jail().clone();
    assert_eq!(proc_uid(pid), FC_UID, "Firecracker runs as the VM's uid");
    assert!(std::fs::read_link(format!("/proc/{pid}/exe"))
        .unwrap()
        .ends_with("firecracker"));
    for f in [
        "kernel",
        "initrd",
        "rootfs.ext4",
        "config.img",
        "scratch.ext4",
    ] {
        assert!(jail.root.join(f).is_file(), "{f} in the jail");
    }
    for f in ["config.img", "scratch.ext4"] {
        let m = std::fs::metadata(jail.root.join(f)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (FC_UID, 0o600), "{f}");
    }
    let scratch = std::fs::metadata(jail.root.join("scratch.ext4")).unwrap();
    assert_eq!(scratch.len(), 2 << 30, "disk_gib");
    assert!(
        scratch.blocks() * 512 < 64 << 20,
        "the scratch disk is sparse"
    );
    assert_eq!(
        std::fs::metadata(jail.root.join("config.img"))
            .unwrap()
            .ino(),
        std::fs::metadata(&cfg).unwrap().ino(),
        "the config disk is the caller's file, so the guest's result lands there"
    );
    // The jailer's cgroup, with the limits, holding the VMM (v1 controllers on this hybrid host).
    let dirs = firecracker::cgroup_dirs(&parent, &id);
    assert!(!dirs.is_empty(), "the jailer made its cgroup");
    let mut limits = vec![];
    for d in &dirs {
        for f in [
            "cpu.cfs_quota_us",
            "cpu.max",
            "memory.limit_in_bytes",
            "memory.max",
            "pids.max",
        ] {
            if let Ok(v) = std::fs::read_to_string(d.join(f)) {
                limits.push(format!("{f}={}", v.trim()));
            }
        }
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l.trim() == pid.to_string()),
            "{}",
            d.display()
        );
    }
    let limits = limits.join(" ");
    assert!(
        limits.contains("cpu.cfs_quota_us=50000") || limits.contains("cpu.max=50000 100000"),
        "{limits}"
    );
    assert!(limits.contains(&format!("{}", 768u64 << 20)), "{limits}");
    assert!(limits.contains("pids.max=64"), "{limits}");

    let t0 = std::time::Instant::now();
    let started = vm.start().await;
    eprintln!(
        "firecracker ({expect}): start {:?} in {:?}; GET / {:?}",
        started,
        t0.elapsed(),
        vm.info().await.map(|i| i["state"].clone())
    );
    assert_no_secret("Firecracker's argv", &proc_text(pid, "cmdline"));
    assert_no_secret("Firecracker's environment", &proc_text(pid, "environ"));
    match (expect, &started) {
        // With a real ELF kernel the start succeeds; the VM is "Running" while the guest,
        // on this PVM host, never runs a line.
        ("running", Ok(())) => {
            let info = vm.info().await.unwrap();
            assert_eq!(info["state"], "Running", "{info}");
            assert_eq!(info["id"], id.as_str());
        }
        // A bzImage (or no kernel at all): Firecracker refuses the start with its fault message.
        (
            "not ELF",
            Err(VmmError::Refused {
                status,
                fault,
                path,
                ..
            }),
        ) => {
            assert_eq!((*status, path.as_str()), (400, "/actions"));
            assert!(
                fault.contains("Kernel Loader") || fault.contains("kernel"),
                "{fault}"
            );
        }
        _ => panic!("expected {expect}, got {started:?}"),
    }
    let reqs = vm.requests();
    assert_bodies_hold_no_secret(&reqs);
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        &paths[..7],
        [
            "/machine-config",
            "/boot-source",
            "/drives/rootfs",
            "/drives/config",
            "/drives/scratch",
            "/network-interfaces/eth0",
            "/actions"
        ],
        "every configuration call was accepted (the tap too: Firecracker opened it in its jail)"
    );
    let tagged: Vec<(&str, Recorded)> = reqs.into_iter().map(|r| ("firecracker", r)).collect();
    validate(&tagged).unwrap_or_else(|e| panic!("Firecracker requests off the API: {e}"));

    let t0 = std::time::Instant::now();
    vm.kill().await;
    assert!(gone(pid), "Firecracker is gone");
    vm.cleanup().unwrap();
    eprintln!("firecracker: kill and cleanup in {:?}", t0.elapsed());
    assert!(!jail.socket().exists(), "no socket");
    assert!(!jail.dir.exists(), "no jail directory");
    assert!(files_under(&base).is_empty(), "{:?}", files_under(&base));
    assert!(
        firecracker::cgroup_dirs(&parent, &id).is_empty(),
        "no cgroup"
    );
    assert!(
        cfg.is_file(),
        "the caller's config disk is the caller's to remove"
    );
    assert_eq!(tap.owner(), Some(FC_UID), "the tap is airlock's, untouched");
    // Cleanup is idempotent.
    firecracker::cleanup(&base, &spec.firecracker, &id, Some(&parent)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_hypervisor_unprivileged_gets_its_tap_by_descriptor_boots_and_leaves_nothing() {
    require_root();
    let t = tempdir();
    let cfg = t.path().join("config.img");
    config_disk(&cfg, CH_UID, firecracker::root_spec());
    let boot = boot_files();
    let (kernel, initramfs, rootfs) = boot.clone().unwrap_or_else(|| {
        let k = t.path().join("not-a-kernel");
        std::fs::write(&k, b"not a kernel").unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o444)).unwrap();
        (k.clone(), k.clone(), k)
    });
    let tap = Tap::new("ch", 2, CH_UID);
    let id = format!("ch-{}", std::process::id());
    let dir = t.path().join("vm");
    let spec = ChvSpec {
        id: id.clone(),
        cloud_hypervisor: vmm_binary("cloud-hypervisor"),
        setpriv: "/usr/bin/setpriv".into(),
        unshare: "/usr/bin/unshare".into(),
        dir: dir.clone(),
        uid: CH_UID,
        cpus: 1,
        memory_mib: 256,
        kernel,
        initramfs,
        rootfs,
        disk_gib: 2,
        config_disk: cfg.clone(),
        tap: Some(tap.0.clone()),
        cgroup_procs: vec![],
        cmdline: chv::cmdline(),
        log: t.path().join("ch.log"),
        api_timeout: Duration::from_secs(10),
        api_fd: None,
    };
    let argv: Vec<String> = chv::argv(&spec)
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_no_secret("cloud-hypervisor's argv", &argv.join(" "));

    let mut vm = ChvVm::spawn(&spec).await.unwrap();
    let pid = vm.pid().unwrap();
    assert_eq!(
        proc_uid(pid),
        CH_UID,
        "cloud-hypervisor runs as the VM's uid"
    );
    let status = proc_text(pid, "status");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap(),
        std::fs::read_link("/proc/self/ns/mnt").unwrap(),
        "its /dev/kvm bind mount is in a namespace of its own"
    );
    let host_kvm = std::fs::metadata("/dev/kvm").unwrap();
    assert_eq!(host_kvm.uid(), 0, "the host's /dev/kvm is not changed");

    let t0 = std::time::Instant::now();
    let started = vm.start().await;
    eprintln!(
        "cloud-hypervisor: start {:?} in {:?}; vm.info state {:?}",
        started,
        t0.elapsed(),
        vm.info().await.map(|i| i["state"].clone())
    );
    assert_no_secret("cloud-hypervisor's argv", &proc_text(pid, "cmdline"));
    assert_no_secret("cloud-hypervisor's environment", &proc_text(pid, "environ"));
    let log = std::fs::read_to_string(&spec.log).unwrap_or_default();
    match (&boot, &started) {
        // A real kernel: vm.boot succeeds and the VM is Running (its guest, on this PVM host,
        // never gets anywhere).
        (Some(_), Ok(())) => {
            let info = vm.info().await.unwrap();
            assert_eq!(info["state"], "Running", "{info}");
            let nets = info["config"]["net"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert_eq!(nets.len(), 1, "the NIC from vm.add-net: {info}");
            let disks = info["config"]["disks"].as_array().unwrap();
            assert_eq!(disks.len(), 3);
        }
        (None, Err(VmmError::Refused { path, fault, .. })) => {
            assert_eq!(path, "/api/v1/vm.boot", "{fault}");
        }
        _ => panic!("unexpected start result {started:?}; log: {log}"),
    }
    let reqs = vm.requests();
    assert_bodies_hold_no_secret(&reqs);
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        &paths[..3],
        ["/api/v1/vm.create", "/api/v1/vm.add-net", "/api/v1/vm.boot"]
    );
    let tagged: Vec<(&str, Recorded)> = reqs.into_iter().map(|r| ("cloud-hypervisor", r)).collect();
    validate(&tagged).unwrap_or_else(|e| panic!("cloud-hypervisor requests off the API: {e}"));

    let t0 = std::time::Instant::now();
    vm.kill().await;
    assert!(gone(pid), "cloud-hypervisor is gone");
    vm.cleanup().unwrap();
    eprintln!("cloud-hypervisor: kill and cleanup in {:?}", t0.elapsed());
    assert!(!spec.socket().exists(), "no socket");
    assert!(!dir.exists(), "no VM directory: {:?}", files_under(&dir));
    assert!(
        cfg.is_file(),
        "the caller's config disk is the caller's to remove"
    );
    assert_eq!(tap.owner(), Some(CH_UID), "the tap is airlock's, untouched");
    chv::cleanup(&id, &dir).unwrap();
}

#[test]
fn the_validator_catches_bad_bodies() {
    use serde_json::json;
    let r = |method: &str, path: &str, body: Option<serde_json::Value>| Recorded {
        method: method.into(),
        path: path.into(),
        body,
    };
    let bad = [
        (
            "firecracker",
            r(
                "PUT",
                "/machine-config",
                Some(json!({"vcpu_count": "two", "mem_size_mib": 256})),
            ),
            "vcpu_count must be integer",
        ),
        (
            "firecracker",
            r(
                "PUT",
                "/drives/rootfs",
                Some(json!({"drive_id": "rootfs", "path_on_host": "/r"})),
            ),
            "required property 'is_root_device'",
        ),
        (
            "firecracker",
            r("PUT", "/actions", Some(json!({"action_type": "Boot"}))),
            "allowed values",
        ),
        (
            "firecracker",
            r(
                "PUT",
                "/boot-source",
                Some(json!({"kernel_image_path": "/k", "jit": "x"})),
            ),
            "additional properties (jit)",
        ),
        ("firecracker", r("PUT", "/actions", None), "requires a body"),
        (
            "cloud-hypervisor",
            r(
                "PUT",
                "/api/v1/vm.create",
                Some(json!({"cpus": {"boot_vcpus": 1, "max_vcpus": 1}})),
            ),
            "required property 'payload'",
        ),
        (
            "cloud-hypervisor",
            r(
                "PUT",
                "/api/v1/vm.create",
                Some(json!({"payload": {}, "disks": [{"path": 3}]})),
            ),
            "path must be string",
        ),
        (
            "cloud-hypervisor",
            r("PUT", "/api/v1/vm.boot", Some(json!({"now": true}))),
            "takes no body",
        ),
        (
            "cloud-hypervisor",
            r("PUT", "/api/v1/vm.launch", None),
            "no such path",
        ),
    ];
    // One run for all: each violation line starts with its request's index.
    let all: Vec<(&str, Recorded)> = bad.iter().map(|(a, r, _)| (*a, r.clone())).collect();
    let out = validate(&all).expect_err("bad bodies must be refused");
    let mut missed = vec![];
    for (i, (_, req, expect)) in bad.iter().enumerate() {
        let prefix = format!("#{i} ");
        if !out
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains(expect))
        {
            missed.push(format!("{} {}: expected {expect:?}", req.method, req.path));
        }
    }
    assert!(missed.is_empty(), "{missed:#?}\n{out}");
    // The positive control: well-formed bodies of both APIs pass.
    let good = [
        (
            "firecracker",
            r(
                "PUT",
                "/machine-config",
                Some(json!({"vcpu_count": 2, "mem_size_mib": 256, "smt": false})),
            ),
        ),
        ("firecracker", r("GET", "/", None)),
        (
            "cloud-hypervisor",
            r(
                "PUT",
                "/api/v1/vm.create",
                Some(json!({"payload": {"kernel": "/k"}})),
            ),
        ),
        ("cloud-hypervisor", r("PUT", "/api/v1/vm.boot", None)),
    ];
    validate(&good).unwrap();
}

/// A refused start through `launch`: Firecracker's `fault_message` comes back in the error, and
/// `launch` has already removed everything (with a bzImage, which Firecracker on x86_64 refuses;
/// any file stands in when the test image is not built).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_firecracker_start_surfaces_its_fault_and_leaves_nothing() {
    require_root();
    let t = tempdir();
    let base = t.path().join("jail");
    std::fs::create_dir(&base).unwrap();
    let cfg = t.path().join("config.img");
    config_disk(&cfg, FC_UID + 10, firecracker::root_spec());
    let (kernel, initramfs, rootfs) = boot_files().unwrap_or_else(|| {
        let k = t.path().join("not-a-kernel");
        std::fs::write(&k, b"not a kernel").unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o444)).unwrap();
        (k.clone(), k.clone(), k)
    });
    let parent = format!("airlock-vmmtest-{}-refused", std::process::id());
    let _parent = ParentCgroup(parent.clone());
    let id = format!("fc-{}-refused", std::process::id());
    let spec = FirecrackerSpec {
        id: id.clone(),
        jailer: vmm_binary("jailer"),
        firecracker: vmm_binary("firecracker"),
        chroot_base: base.clone(),
        uid: FC_UID + 10,
        cpus: 1,
        memory_mib: 128,
        kernel,
        initramfs,
        rootfs,
        disk_gib: 1,
        config_disk: cfg.clone(),
        tap: None,
        cgroup: Some(JailerCgroup {
            parent: parent.clone(),
            cpus: 1.0,
            memory_bytes: 512 << 20,
            pids: 64,
        }),
        boot_args: airlock_agent::KERNEL_CMDLINE.into(),
        log: t.path().join("fc.log"),
        api_timeout: Duration::from_secs(10),
    };
    let err = FirecrackerVm::launch(&spec).await.unwrap_err();
    eprintln!("firecracker with a bzImage: {err}");
    match &err {
        VmmError::Refused {
            status,
            path,
            fault,
            ..
        } => {
            assert_eq!((*status, path.as_str()), (400, "/actions"));
            assert!(fault.contains("Kernel Loader"), "{fault}");
            assert!(
                err.to_string().contains(fault.as_str()),
                "the message carries the fault"
            );
        }
        e => panic!("expected a refused InstanceStart, got {e:?}"),
    }
    assert!(files_under(&base).is_empty(), "{:?}", files_under(&base));
    assert!(
        firecracker::cgroup_dirs(&parent, &id).is_empty(),
        "no cgroup"
    );
    let log = std::fs::read_to_string(&spec.log).unwrap_or_default();
    assert_no_secret("Firecracker's log", &log);
}
