//! Firecracker and Cloud Hypervisor sandboxes through the microvm backend, with the real binaries
//! (`shared/vmm/`), as root: the pool's probe, `create` (the jail or VMM directory with the
//! image's files linked in, a sparse scratch disk of `disk_gib`, the config disk, the tap, the
//! cgroup), `start` (the supervised VMM as the VM's uid in that cgroup, configured and booted over
//! its API, the JIT secret only on the config disk), adoption by a new backend instance, and
//! `destroy` leaving nothing.
//!
//! On this host no guest boots under these VMMs (its KVM is PVM, which hangs stock kernels; see
//! MACHINE.md): the probe therefore refuses the pool with its reason, and the VMs started here are
//! "Running" to their VMM while their guest never prints a line. On a host whose KVM works the
//! probe passes instead and the test checks that.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use airlock_core::{Accel, VmDriver};
use airlock_sandbox::microvm::vmm_api::ApiClient;
use airlock_sandbox::microvm::MicrovmBackend;
use airlock_sandbox::{Backend, BackendSpec, SandboxError, SandboxSpec, SandboxStatus, Secret};
use common::*;

const SECRET: &str = "JITSECRET-vmmbackend-51e0";
const DRIVERS: [VmDriver; 2] = [VmDriver::Firecracker, VmDriver::CloudHypervisor];

/// The test VM image's spec for `driver`.
fn spec_for(id: &str, driver: VmDriver) -> SandboxSpec {
    vm_spec_for(id, &vm_image(), 2, driver)
}

fn vm_of(spec: &SandboxSpec) -> &airlock_sandbox::VmImage {
    match &spec.backend {
        BackendSpec::Microvm(vm) => vm,
        _ => unreachable!(),
    }
}

fn proc_text(pid: i32, file: &str) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default())
        .replace('\0', " ")
}

/// The VMM of sandbox `dir`: the process whose executable is `exe` and whose cgroup is the
/// sandbox's (`<tag>-<id>`).
fn vmm_pid(exe: &str, cgroup: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let path = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        (path.file_name()?.to_str()? == exe && proc_text(pid, "cgroup").contains(cgroup))
            .then_some(pid)
    })
}

/// Every process's argv and environment, for the secret check.
fn every_process_text() -> String {
    let mut all = String::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
            all.push_str(&proc_text(pid, "cmdline"));
            all.push_str(&proc_text(pid, "environ"));
        }
    }
    all
}

fn tag_of(root: &Path) -> String {
    airlock_sandbox::container::tag_of(root)
}

/// The driver's VM state as its own API reports it.
async fn vmm_state(driver: VmDriver, dir: &Path, id: &str) -> String {
    let (socket, path, field) = match driver {
        VmDriver::Firecracker => (
            std::fs::read_dir(dir.join("jail"))
                .unwrap()
                .flatten()
                .next()
                .unwrap()
                .path()
                .join(id)
                .join("root/run/fc.sock"),
            "/",
            "state",
        ),
        _ => (dir.join("vmm/run/api.sock"), "/api/v1/vm.info", "state"),
    };
    let api = ApiClient::new(socket, Duration::from_secs(5));
    let r = api.get(path).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v[field].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_and_cloud_hypervisor_pools_are_probed_and_refused_with_the_reason() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("vms");
    let _reaper = VmReaper(root.clone(), 45, &DRIVERS);
    let b = vm_backend_with(&root, 45, &DRIVERS).await;
    for driver in DRIVERS {
        let spec = spec_for("p", driver);
        let vm = vm_of(&spec);
        let name = driver.as_str();
        let tcg = b
            .accel_for(driver, &vm.kernel, &vm.initramfs, Accel::Tcg)
            .await
            .unwrap_err();
        assert!(tcg.contains(&format!("{name} needs KVM")), "{tcg}");
        let started = std::time::Instant::now();
        match b
            .accel_for(driver, &vm.kernel, &vm.initramfs, Accel::Auto)
            .await
        {
            // A KVM that boots guests: the pool gets it.
            Ok(c) => assert_eq!((c.accel, c.warning), (Accel::Kvm, None)),
            // This host: refused, saying why and what to do instead.
            Err(e) => {
                assert!(e.contains(&format!("{name} runs only on KVM")), "{e}");
                assert!(e.contains("KVM cannot boot"), "{e}");
                assert!(e.contains("did not finish booting in 5 s"), "{e}");
                assert!(e.contains("use driver = \"qemu\""), "{e}");
                eprintln!("{name} probe: refused in {:?}: {e}", started.elapsed());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the probe gave up at its timeout"
        );
        // Nothing of the probe is left, and it is never listed as a sandbox.
        assert!(!root.join(format!(".probe-{name}")).exists());
        assert!(b.list().await.unwrap().is_empty());
        assert!(vmm_pid(name, &tag_of(&root)).is_none());
    }
    // Firecracker loads no bzImage: said up front, by the probe and by create.
    let mut spec = spec_for("bz1", VmDriver::Firecracker);
    let bz = {
        let m = vm_image();
        images()
            .dir(&m)
            .join(&m.vm.as_ref().unwrap().kernels[0].kernel)
    };
    let e = b
        .accel_for(
            VmDriver::Firecracker,
            &bz,
            &vm_of(&spec).initramfs,
            Accel::Kvm,
        )
        .await
        .unwrap_err();
    assert!(e.contains("is not an ELF vmlinux"), "{e}");
    if let BackendSpec::Microvm(vm) = &mut spec.backend {
        vm.kernel = bz;
    }
    let e = b.create(&spec).await.unwrap_err();
    assert!(
        matches!(&e, SandboxError::Setup { detail, .. } if detail.contains("not an ELF vmlinux")),
        "{e}"
    );
    assert!(airlock_sandbox::microvm::remnants(&root).is_empty());
    // A state directory so deep that Cloud Hypervisor's API socket path is longer than a Unix
    // socket address holds: airlock binds it and hands it over, so the VM still starts.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let deep = t.path().join("d".repeat(90)).join("vms");
    std::fs::create_dir_all(deep.parent().unwrap()).unwrap();
    let db = vm_backend_with(&deep, 45, &DRIVERS).await;
    let id = "airlock-ch-pool-0123456789";
    let s = spec_for(id, VmDriver::CloudHypervisor);
    db.create(&s).await.unwrap();
    let sock = deep.join(id).join("vmm/run/api.sock");
    assert!(sock.as_os_str().len() > 107, "the test needs a long path");
    db.start(&s, &Secret::new(SECRET.into())).await.unwrap();
    assert_eq!(
        vmm_state(VmDriver::CloudHypervisor, &deep.join(id), id).await,
        "Running"
    );
    db.destroy(id).await.unwrap();
    assert!(airlock_sandbox::microvm::remnants(&deep).is_empty());
    // A driver the backend was not made ready for is named as such.
    let qemu_only = vm_backend(&t.path().join("q"), 45).await;
    let e = qemu_only
        .create(&spec_for("nf1", VmDriver::Firecracker))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("driver was not made ready"), "{e}");
}

async fn lifecycle(driver: VmDriver, slot: u8) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("vms");
    let _reaper = VmReaper(root.clone(), slot, &DRIVERS);
    let b = vm_backend_with(&root, slot, &DRIVERS).await;
    // As long as the daemon's runner names get: the jail's socket path is then longer than a
    // Unix socket address holds, and the backend must still reach it.
    let id = format!("airlock-{}-pool-0123456789", driver.as_str());
    let spec = spec_for(&id, driver);
    let dir = root.join(&id);
    let cgroup = format!("{}-{id}", tag_of(&root));

    b.create(&spec).await.unwrap();
    assert_eq!(b.status(&id).await.unwrap(), SandboxStatus::Created);
    let launch = std::fs::read_to_string(dir.join("launch")).unwrap();
    assert!(
        launch.starts_with(&format!("driver {}\n", driver.as_str())),
        "{launch}"
    );
    let uid: u32 = launch
        .lines()
        .find_map(|l| l.strip_prefix("uid "))
        .unwrap()
        .parse()
        .unwrap();
    // The VM's files: linked from the image, a sparse scratch disk, the config disk its own.
    let files = match driver {
        VmDriver::Firecracker => std::fs::read_dir(dir.join("jail"))
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path()
            .join(&id)
            .join("root"),
        _ => dir.join("vmm"),
    };
    for f in [
        "kernel",
        "initrd",
        "rootfs.ext4",
        "config.img",
        "scratch.ext4",
    ] {
        assert!(files.join(f).is_file(), "{f} in {}", files.display());
    }
    let scratch = std::fs::metadata(files.join("scratch.ext4")).unwrap();
    assert_eq!(scratch.len(), 2 << 30, "the scratch disk is disk_gib");
    assert!(scratch.blocks() * 512 < 64 << 20, "and sparse");
    assert_eq!((scratch.uid(), scratch.mode() & 0o777), (uid, 0o600));
    let config = std::fs::metadata(dir.join("config.img")).unwrap();
    assert_eq!(
        std::fs::metadata(files.join("config.img")).unwrap().ino(),
        config.ino(),
        "the VMM's config disk is the backend's file"
    );
    let tap = std::fs::read_to_string(format!(
        "/sys/class/net/{}/owner",
        airlock_net::link_name(&format!("{}/{id}", tag_of(&root)))
    ))
    .unwrap();
    assert_eq!(tap.trim(), uid.to_string(), "the tap is the VM's uid's");

    b.start(&spec, &Secret::new(SECRET.into())).await.unwrap();
    assert_eq!(b.status(&id).await.unwrap(), SandboxStatus::Running);
    let exe = match driver {
        VmDriver::Firecracker => "firecracker",
        _ => "cloud-hypervisor",
    };
    let pid = vmm_pid(exe, &cgroup).expect("the VMM runs in the sandbox's cgroup");
    let owner = std::fs::metadata(format!("/proc/{pid}")).unwrap().uid();
    assert_eq!(owner, uid, "the VMM runs as the VM's own uid");
    assert_ne!(owner, 0);
    let status = proc_text(pid, "status");
    let caps = status
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap();
    assert_eq!(caps, "0000000000000000", "no capabilities: {status}");
    // Started: configured and booted over the API. (On this host the guest stays silent.)
    assert_eq!(vmm_state(driver, &dir, &id).await, "Running");
    // The secret: on the config disk (0600, the VM's), nowhere else.
    assert_eq!((config.uid(), config.mode() & 0o777), (uid, 0o600));
    let disk = std::fs::read(dir.join("config.img")).unwrap();
    assert!(
        disk.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "positive control: the config disk carries the JIT config"
    );
    let everything = every_process_text();
    assert!(
        everything.contains(exe),
        "positive control: the VMM's argv is readable"
    );
    assert!(
        !everything.contains(SECRET),
        "the secret is in an argv or environment"
    );
    let log = std::fs::read_to_string(dir.join("runner.log")).unwrap_or_default();
    assert!(!log.contains(SECRET), "{log}");
    assert!(!launch.contains(SECRET));

    // A restarted daemon's backend adopts it.
    let again = vm_backend_with(&root, slot, &DRIVERS).await;
    assert_eq!(
        again.list().await.unwrap(),
        vec![(id.clone(), SandboxStatus::Running)]
    );
    let t0 = std::time::Instant::now();
    again.destroy(&id).await.unwrap();
    eprintln!("{}: destroy in {:?}", driver.as_str(), t0.elapsed());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || proc_text(pid, "stat").split(' ').nth(2) == Some("Z"),
        "the VMM is gone"
    );
    assert!(!dir.exists());
    let left = airlock_sandbox::microvm::remnants(&root);
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(again.status(&id).await.unwrap(), SandboxStatus::Missing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firecracker_sandbox_runs_jailed_unprivileged_is_adopted_and_leaves_nothing() {
    lifecycle(VmDriver::Firecracker, 46).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_hypervisor_sandbox_runs_unprivileged_is_adopted_and_leaves_nothing() {
    lifecycle(VmDriver::CloudHypervisor, 47).await;
}

/// A VM whose boot fails over the API (here: Firecracker handed a kernel it cannot load) is not
/// left half-configured: `start` fails naming the call, and the VMM is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_the_vmm_refuses_to_boot_fails_its_start_and_is_cleaned_up() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("vms");
    let _reaper = VmReaper(root.clone(), 48, &DRIVERS);
    let b: MicrovmBackend = vm_backend_with(&root, 48, &DRIVERS).await;
    let mut spec = spec_for("bad1", VmDriver::Firecracker);
    // An ELF file that is no kernel passes the backend's check; Firecracker's loader refuses it.
    let fake = t.path().join("vmlinux");
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(4096, 0);
    std::fs::write(&fake, elf).unwrap();
    std::fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    if let BackendSpec::Microvm(vm) = &mut spec.backend {
        vm.kernel = fake;
    }
    b.create(&spec).await.unwrap();
    let e = b
        .start(&spec, &Secret::new(SECRET.into()))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("over firecracker's API"), "{text}");
    assert!(
        text.contains("/actions") || text.contains("/boot-source"),
        "{text}"
    );
    assert!(!text.contains(SECRET));
    let mut st = b.status("bad1").await.unwrap();
    for _ in 0..100 {
        if matches!(st, SandboxStatus::Exited(_)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        st = b.status("bad1").await.unwrap();
    }
    assert!(matches!(st, SandboxStatus::Exited(_)), "{st:?}");
    b.destroy("bad1").await.unwrap();
    let left = airlock_sandbox::microvm::remnants(&root);
    assert!(left.is_empty(), "{left:?}");
}
