//! The microVM backend for real: QEMU under TCG booting Debian's cloud kernel with airlock's
//! guest agent, a qcow2 layer per job, a tap on the shared host network, an unprivileged VMM in
//! its own cgroup, as root. Each check that something is kept out runs beside a positive control.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use std::os::unix::fs::PermissionsExt;

use airlock_core::{Accel, VmDriver};
use airlock_sandbox::microvm::AccelChoice;
use airlock_sandbox::{Backend, Limits, SandboxStatus, Secret};
use common::*;

/// The VMM's pid (the process whose argv names the sandbox), its uid, and its argv.
fn vmm_of(id: &str) -> Option<(i32, u32, String)> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        if !exe.to_string_lossy().contains("qemu-system")
            || !cmd.contains(&format!("airlock-{id} "))
        {
            return None;
        }
        let uid = std::fs::metadata(format!("/proc/{pid}")).ok()?.uid();
        Some((pid, uid, cmd))
    })
}

async fn wait_log(root: &Path, id: &str, needle: &str, secs: u64) -> bool {
    for _ in 0..secs * 20 {
        let l = std::fs::read_to_string(root.join(id).join("runner.log")).unwrap_or_default();
        if l.contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_lifecycle_root_sudo_secret_unprivileged_vmm_and_nothing_left() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("vms");
    let _reaper = VmReaper::qemu(root.clone(), 20);
    let b = vm_backend(&root, 20).await;
    let m = vm_image();
    let kernel = m.vm.as_ref().unwrap().kernels[0].version.clone();
    // The image's boot files: checksummed, read-only, and a clean filesystem.
    images().verify(&m).unwrap();
    let disk = images().dir(&m).join(&m.vm.as_ref().unwrap().disk);
    assert_eq!(std::fs::metadata(&disk).unwrap().mode() & 0o777, 0o444);
    let fsck = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let s = vm_spec("vm1", &m, 4);
    b.create(&s).await.unwrap();
    assert_eq!(b.status("vm1").await.unwrap(), SandboxStatus::Created);
    let secret = "JITSECRET-7f3a";
    let script = format!(
        "echo {secret} >/dev/null\n\
         echo kernel=$(uname -r)\n\
         echo uid=$(id -u)\n\
         echo sudo-uid=$(sudo -n id -u)\n\
         sudo -n sh -c 'echo root-write > /etc/airlock-test && cat /etc/airlock-test'\n\
         echo cmdline=$(cat /proc/cmdline)\n\
         echo configdisk=$(sudo -n head -c 1048576 /dev/vdb | tr -d '\\0' | wc -c)\n\
         df -m / | tail -1 | awk '{{print \"rootfs-mib=\" $2}}'\n\
         sleep 2\n\
         exit 7"
    );
    b.start(&s, &Secret::new(script.clone())).await.unwrap();
    // While it runs: the VMM is unprivileged, its argv holds no secret, its cgroup caps memory.
    let mut vmm = None;
    for _ in 0..200 {
        vmm = vmm_of("vm1");
        if vmm.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (pid, uid, argv) = vmm.unwrap_or_else(|| {
        panic!(
            "no VMM process; log:\n{}\nlaunch:\n{}",
            std::fs::read_to_string(root.join("vm1/runner.log")).unwrap_or_default(),
            std::fs::read_to_string(root.join("vm1/launch")).unwrap_or_default()
        )
    });
    assert!((320_000..320_000 + 65536).contains(&uid), "VMM uid {uid}");
    assert!(!argv.contains(secret), "secret in argv: {argv}");
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cg.contains("/airlock/"), "VMM not in its cgroup: {cg}");
    // Below the daemon's priority (`server.sandbox_nice`), every thread (the vCPUs too); root in
    // the guest has no way to change a host thread's niceness.
    let nice = nice_of(pid);
    assert!(
        !nice.is_empty() && nice.iter().all(|n| *n == i64::from(VM_NICE)),
        "VMM threads at the sandbox's niceness: {nice:?}"
    );
    let code = wait_exit(&b, "vm1", Duration::from_secs(120)).await;
    let log = std::fs::read_to_string(root.join("vm1/runner.log")).unwrap();
    assert_eq!(code, Some(7), "{log}");
    assert!(log.contains(&format!("kernel={kernel}")), "{log}");
    assert!(log.contains("uid=1001"), "{log}");
    assert!(log.contains("sudo-uid=0"), "{log}");
    assert!(log.contains("root-write"), "{log}");
    assert!(
        log.contains("configdisk=0"),
        "the guest wiped its config disk: {log}"
    );
    assert!(!log.contains(secret), "secret in the log: {log}");
    let cmdline = log.lines().find(|l| l.starts_with("cmdline=")).unwrap();
    assert!(!cmdline.contains(secret), "{cmdline}");
    let mib: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("rootfs-mib="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        (3500..=4096).contains(&mib),
        "root grown to disk_gib: {mib} MiB"
    );
    let disk = std::fs::read(root.join("vm1/config.img")).unwrap();
    assert!(
        !disk.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret outlived the boot on the host's config disk"
    );
    assert_eq!(
        b.list().await.unwrap(),
        vec![("vm1".to_string(), SandboxStatus::Exited(Some(7)))]
    );
    b.destroy("vm1").await.unwrap();
    b.destroy("vm1").await.unwrap();
    assert_eq!(b.status("vm1").await.unwrap(), SandboxStatus::Missing);
    let left = airlock_sandbox::microvm::remnants(&root);
    assert!(left.is_empty(), "{left:?}");
    assert!(
        t.path().join("logs").read_dir().unwrap().count() == 1,
        "the console log is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_disk_is_capped_and_the_host_disk_untouched() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("vms");
    let _reaper = VmReaper::qemu(root.clone(), 41);
    let b = vm_backend(&root, 41).await;
    let m = vm_image();
    let s = vm_spec("fill1", &m, 1);
    b.create(&s).await.unwrap();
    // dd's complaint is kept in memory: the disk it would go to is full.
    let script = "out=$(dd if=/dev/zero of=/home/runner/fill bs=1M count=2048 2>&1)\n\
                  echo dd-status=$?\n\
                  echo \"$out\"\n\
                  sync\n\
                  df -m / | tail -1\n\
                  exit 0";
    b.start(&s, &Secret::new(script.into())).await.unwrap();
    let code = wait_exit(&b, "fill1", Duration::from_secs(300)).await;
    let log = std::fs::read_to_string(root.join("fill1/runner.log")).unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("No space left on device"), "{log}");
    assert!(log.contains("dd-status=1"), "the job's write failed: {log}");
    let layer = std::fs::metadata(root.join("fill1/disk.qcow2")).unwrap();
    assert!(
        layer.len() < (1 << 30) + (64 << 20),
        "the job's layer grew past its cap: {} bytes",
        layer.len()
    );
    b.destroy("fill1").await.unwrap();
    assert!(airlock_sandbox::microvm::remnants(&root).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_network_reaches_the_internet_but_not_the_host_or_a_container() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let vroot = t.path().join("vms");
    let croot = t.path().join("containers");
    let _reaper = VmReaper::qemu(vroot.clone(), 42);
    let _creaper = Reaper(croot.clone());
    // One lease directory and subnet for both kinds, as in the daemon.
    let vb = vm_backend(&vroot, 42).await;
    let cb = backend(&croot, 42).await;
    let inet = Internet::start(22);
    let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let hport = host.local_addr().unwrap().port();
    // A container sandbox serving on its address: the VM must not reach it.
    let other = spec("ct1", &shell_image(), Limits::default());
    cb.create(&other).await.unwrap();
    cb.start(
        &other,
        &Secret::new(
            "ip -4 -o addr show eth0\nexec python3 -c '\nimport socket\ns=socket.socket()\n\
             s.bind((\"0.0.0.0\", 8080)); s.listen(8); print(\"listening\", flush=True)\n\
             while True: s.accept()[0].close()\n'"
                .into(),
        ),
    )
    .await
    .unwrap();
    assert!(
        wait_log(&croot, "ct1", "listening", 30).await,
        "the container never listened"
    );
    let ct_log = std::fs::read_to_string(croot.join("ct1/runner.log")).unwrap();
    let ct_ip = ct_log
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/30"))
        .expect("the container's address")
        .to_string();
    let m = vm_image();
    let s = vm_spec("net1", &m, 2);
    vb.create(&s).await.unwrap();
    let probe = |addr: &str, port: u16, label: &str| {
        format!(
            "python3 -c '\nimport socket,sys\ns=socket.socket(); s.settimeout(3)\n\
             try:\n s.connect((\"{addr}\", {port})); print(\"{label}-REACHED\")\n\
             except Exception as e: print(\"{label}-blocked\", e)\n'\n"
        )
    };
    let mut script = String::from("ip -4 -o addr show eth0\nip route\n");
    script += &probe(&inet.addr.to_string(), inet.port, "INTERNET");
    script += &format!(
        "python3 -c '\nimport socket\ns=socket.create_connection((\"{}\", {}), timeout=5)\n\
         s.sendall(b\"GET / HTTP/1.0\\r\\n\\r\\n\")\nd=b\"\"\nwhile True:\n c=s.recv(4096)\n if not c: break\n d+=c\n\
         print(\"HTTP:\", d.split(b\"\\r\\n\\r\\n\")[-1].decode())\n'\n",
        inet.addr, inet.port
    );
    script += &probe("10.142.0.1", hport, "GATEWAY0"); // the container's host end
    script += &probe("198.18.22.1", hport, "HOSTADDR"); // another host address
    script += &probe(&ct_ip, 8080, "SANDBOX");
    script += &probe("169.254.169.254", 80, "METADATA");
    script += "gw=$(ip route | awk '/default/ {print $3}')\n";
    script += &probe("$gw", hport, "GATEWAY").replace("\"$gw\"", "\"'$gw'\"");
    vb.start(&s, &Secret::new(script)).await.unwrap();
    let code = wait_exit(&vb, "net1", Duration::from_secs(180)).await;
    let log = std::fs::read_to_string(vroot.join("net1/runner.log")).unwrap();
    cb.destroy("ct1").await.unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("INTERNET-REACHED"), "positive control: {log}");
    assert!(log.contains("HTTP: internet-ok"), "positive control: {log}");
    assert!(!log.contains(&format!("inet {ct_ip}/30")), "{log}");
    for bad in ["GATEWAY", "GATEWAY0", "HOSTADDR", "SANDBOX", "METADATA"] {
        assert!(log.contains(&format!("{bad}-blocked")), "{bad}: {log}");
    }
    // Dropped by the firewall (a timeout), not refused by a missing listener.
    for dropped in ["GATEWAY", "GATEWAY0", "HOSTADDR", "SANDBOX"] {
        assert!(
            log.contains(&format!("{dropped}-blocked timed out")),
            "{dropped}: {log}"
        );
    }
    drop(host);
    vb.destroy("net1").await.unwrap();
    assert!(airlock_sandbox::microvm::remnants(&vroot).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_backend_adopts_a_running_vm_and_reaps_remnants() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("vms");
    let _reaper = VmReaper::qemu(root.clone(), 43);
    let m = vm_image();
    {
        let first = vm_backend(&root, 43).await;
        let s = vm_spec("keep1", &m, 2);
        first.create(&s).await.unwrap();
        first
            .start(&s, &Secret::new("sleep 4; echo survived; exit 3".into()))
            .await
            .unwrap();
        // Half-made: a sandbox whose directory is gone but whose tap, lease and cgroup are not.
        let s2 = vm_spec("half1", &m, 2);
        first.create(&s2).await.unwrap();
        std::fs::remove_dir_all(root.join("half1")).unwrap();
        // `first` is dropped here without destroying anything, as when airlock is killed.
    }
    let b = vm_backend(&root, 43).await;
    let listed = b.list().await.unwrap();
    assert!(
        listed.contains(&("keep1".to_string(), SandboxStatus::Running)),
        "{listed:?}"
    );
    assert!(
        listed.iter().any(|(id, _)| id == "half1"),
        "remnants are listed: {listed:?}"
    );
    b.destroy("half1").await.unwrap();
    let code = wait_exit(&b, "keep1", Duration::from_secs(120)).await;
    let log = std::fs::read_to_string(root.join("keep1/runner.log")).unwrap();
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains("survived"), "{log}");
    b.destroy("keep1").await.unwrap();
    let left = airlock_sandbox::microvm::remnants(&root);
    assert!(left.is_empty(), "{left:?}");
}

/// `auto` takes KVM where a probe boot works and otherwise falls back to TCG with a warning;
/// `kvm` is refused with the reason where KVM cannot boot the kernel. (This host's KVM cannot: on
/// a host where it can, the test checks that KVM is chosen instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accelerator_is_probed_by_booting_the_kernel() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("vms");
    let b = vm_backend(&root, 44).await;
    let m = vm_image();
    let dir = images().dir(&m);
    let k = &m.vm.as_ref().unwrap().kernels[0];
    let (kernel, initramfs) = (dir.join(&k.kernel), dir.join(&k.initramfs));
    let tcg = b
        .accel_for(VmDriver::Qemu, &kernel, &initramfs, Accel::Tcg)
        .await
        .unwrap();
    assert_eq!(
        tcg,
        AccelChoice {
            accel: Accel::Tcg,
            warning: None
        }
    );
    let auto = b
        .accel_for(VmDriver::Qemu, &kernel, &initramfs, Accel::Auto)
        .await
        .unwrap();
    let kvm = b
        .accel_for(VmDriver::Qemu, &kernel, &initramfs, Accel::Kvm)
        .await;
    match auto.accel {
        Accel::Kvm => {
            assert!(auto.warning.is_none());
            assert_eq!(kvm.unwrap().accel, Accel::Kvm);
        }
        Accel::Tcg => {
            let w = auto.warning.expect("a fallback says why");
            assert!(w.contains("KVM cannot boot this kernel here"), "{w}");
            let e = kvm.unwrap_err();
            assert!(e.contains("accel = \"kvm\", but KVM cannot boot"), "{e}");
            assert!(e.contains("use accel = \"auto\" or \"tcg\""), "{e}");
        }
        Accel::Auto => panic!("auto is never the answer"),
    }
    // Probed once per kernel: a second ask is answered from memory at once.
    let started = std::time::Instant::now();
    assert_eq!(
        b.accel_for(VmDriver::Qemu, &kernel, &initramfs, Accel::Auto)
            .await
            .unwrap()
            .accel,
        auto.accel
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    // A file that is not a kernel boots under nothing, and says so.
    let junk = t.path().join("not-a-kernel");
    std::fs::write(&junk, b"junk").unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = b
        .accel_for(VmDriver::Qemu, &junk, &initramfs, Accel::Tcg)
        .await
        .unwrap_err();
    assert!(e.contains("does not boot under TCG"), "{e}");
}
