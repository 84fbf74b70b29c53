//! The QEMU driver: the argv of a microVM (`-M microvm` with ACPI, so that Debian's kernels,
//! which build virtio-mmio as a module without command-line devices, find their disks and network
//! through ACPI), and the probe boot that tells whether a kernel boots with KVM or under TCG.
//!
//! Nothing job-specific goes on QEMU's command line beyond file names: the JIT secret travels on
//! the config disk only, and the kernel command line is the same for every VM.

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use airlock_agent::{KERNEL_CMDLINE, PROBE_ARG, PROBE_OK};

use super::tsc;
use airlock_core::Accel;

/// One VM's QEMU, as `create` decides it.
#[derive(Debug)]
pub(super) struct Vm<'a> {
    pub name: &'a str,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u64,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub disk: &'a Path,
    pub config: &'a Path,
}

/// The tap descriptor the VMM inherits (see `supervise`: the supervisor's stdin becomes fd 3).
pub(super) const TAP_FD: u32 = crate::supervise::HANDED_FD;

/// The kernel command line for `accel`: a TCG guest is told the host's TSC rate, or its boot
/// may hang calibrating against the emulated PIT.
pub(super) fn cmdline(accel: Accel) -> String {
    match accel {
        Accel::Kvm => KERNEL_CMDLINE.to_string(),
        Accel::Tcg | Accel::Auto => airlock_agent::tcg_kernel_cmdline(tsc::cached()),
    }
}

/// Arguments common to every boot: the machine, the accelerator, no default devices, the serial
/// console on stdout, exit instead of reboot, and QEMU's own seccomp sandbox.
fn machine(accel: Accel, cpus: u32, memory_mib: u64) -> Vec<OsString> {
    let (accel, cpu) = match accel {
        // A 64 MiB translation cache instead of QEMU's default 1 GiB: the host memory an idle
        // VM costs beyond its RAM.
        Accel::Tcg | Accel::Auto => ("tcg,tb-size=64", "max"),
        Accel::Kvm => ("kvm", "host"),
    };
    [
        "-M",
        "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=on",
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-smp",
        &cpus.max(1).to_string(),
        "-m",
        &memory_mib.to_string(),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]
    .iter()
    .map(OsString::from)
    .collect()
}

fn os(parts: &[&str]) -> String {
    parts.concat()
}

pub(super) fn argv(vm: &Vm<'_>) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["-name".into(), format!("airlock-{}", vm.name).into()];
    a.extend(machine(vm.accel, vm.cpus, vm.memory_mib));
    a.push("-kernel".into());
    a.push(vm.kernel.into());
    a.push("-initrd".into());
    a.push(vm.initramfs.into());
    a.push("-append".into());
    a.push(cmdline(vm.accel).into());
    // The root first (the guest's vda), the config disk second (vdb): ACPI lists them in order.
    // `cache=unsafe`: the guest's flushes are not passed on to the host's disk. Both disks die
    // with the VM (the host reads the config disk's result through its page cache), so nothing
    // is lost, and a job's fsyncs (dpkg makes one per file) cost no host disk sync.
    a.push("-drive".into());
    a.push(
        os(&[
            "id=root,if=none,format=qcow2,discard=unmap,cache=unsafe,file=",
            &vm.disk.to_string_lossy(),
        ])
        .into(),
    );
    a.extend(["-device".into(), "virtio-blk-device,drive=root".into()]);
    a.push("-drive".into());
    a.push(
        os(&[
            "id=cfg,if=none,format=raw,cache=unsafe,file=",
            &vm.config.to_string_lossy(),
        ])
        .into(),
    );
    a.extend(["-device".into(), "virtio-blk-device,drive=cfg".into()]);
    a.push("-netdev".into());
    // Root attached the tap and hands the descriptor over: the VMM cannot open /dev/net/tun.
    a.push(format!("tap,id=n0,vhost=off,fd={TAP_FD}").into());
    a.extend(["-device".into(), "virtio-net-device,netdev=n0".into()]);
    a
}

/// `setpriv …  --`: the VMM runs as `uid` (and gid), without capabilities or `no_new_privs`
/// escapes, in no supplementary group but, with KVM, the group that may open `/dev/kvm`.
pub(super) fn unprivileged(setpriv: &Path, uid: u32, accel: Accel) -> Vec<OsString> {
    let groups = match (accel, kvm_gid()) {
        (Accel::Kvm, Some(gid)) => format!("--groups={gid}"),
        _ => "--clear-groups".to_string(),
    };
    [
        setpriv.as_os_str().to_owned(),
        format!("--reuid={uid}").into(),
        format!("--regid={uid}").into(),
        groups.into(),
        "--no-new-privs".into(),
        "--inh-caps=-all".into(),
        "--bounding-set=-all".into(),
        "--".into(),
    ]
    .into()
}

/// Whether an unprivileged VMM can open `/dev/kvm` at all: it exists, and its group (which the
/// VMM joins) or everyone may read and write it.
fn kvm_usable() -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::metadata("/dev/kvm").map_err(|e| format!("no /dev/kvm ({e})"))?;
    let mode = m.permissions().mode() & 0o777;
    if (m.gid() != 0 && mode & 0o060 == 0o060) || mode & 0o006 == 0o006 {
        Ok(())
    } else {
        Err(format!(
            "/dev/kvm is mode {mode:04o}, group {}: VMMs run unprivileged and cannot open it \
             (give it a group of its own with mode 0660, as udev does with group kvm)",
            m.gid()
        ))
    }
}

/// The group owning `/dev/kvm` (usually `kvm`), when it is not root's.
fn kvm_gid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let gid = std::fs::metadata("/dev/kvm").ok()?.gid();
    (gid != 0).then_some(gid)
}

/// Boots `kernel` with `initramfs` in the agent's probe mode (no disks, no network) as `uid`,
/// under `accel`: Ok when the agent says so and QEMU exits by itself within `timeout`.
pub(super) async fn probe_boot(
    qemu: &Path,
    setpriv: &Path,
    uid: u32,
    kernel: &Path,
    initramfs: &Path,
    accel: Accel,
    timeout: Duration,
) -> Result<(), String> {
    if accel == Accel::Kvm {
        kvm_usable()?;
    }
    let priv_drop = unprivileged(setpriv, uid, accel);
    let mut cmd = tokio::process::Command::new(&priv_drop[0]);
    cmd.args(&priv_drop[1..])
        .arg(qemu)
        .args(machine(accel, 1, 256))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!("{} {PROBE_ARG}", cmdline(accel)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!(
            "the probe guest did not finish booting in {} s",
            timeout.as_secs()
        )),
        Ok(Err(e)) => Err(format!("waiting for QEMU: {e}")),
        Ok(Ok(out)) => {
            let console = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && console.contains(PROBE_OK) {
                Ok(())
            } else {
                // QEMU's own complaint, else the console's last words.
                let err = String::from_utf8_lossy(&out.stderr);
                let said = err
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        let tail: Vec<&str> = console.lines().rev().take(2).collect();
                        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                    });
                Err(format!(
                    "QEMU exited ({}) before the agent answered: {said}",
                    out.status
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_has_the_disks_in_order_and_no_secret_slot() {
        let a = argv(&Vm {
            name: "x1",
            accel: Accel::Tcg,
            cpus: 2,
            memory_mib: 1024,
            kernel: Path::new("/img/vmlinuz"),
            initramfs: Path::new("/img/initramfs.cpio"),
            disk: Path::new("/vms/x1/disk.qcow2"),
            config: Path::new("/vms/x1/config.img"),
        });
        let s: Vec<String> = a.iter().map(|x| x.to_string_lossy().into_owned()).collect();
        let at = |needle: &str| s.iter().position(|x| x.contains(needle)).unwrap();
        assert!(
            at("disk.qcow2") < at("config.img"),
            "root is vda, config vdb"
        );
        assert_eq!(s[at("-smp") + 1], "2");
        assert_eq!(s[at("-m") + 1], "1024");
        assert_eq!(s[at("-accel") + 1], "tcg,tb-size=64");
        assert!(s[at("-append") + 1].starts_with(KERNEL_CMDLINE));
        assert!(!s[at("-append") + 1].contains(PROBE_ARG));
        assert!(s.iter().any(|x| x == "tap,id=n0,vhost=off,fd=3"));
        let kvm = machine(Accel::Kvm, 1, 256);
        assert!(kvm.iter().any(|x| x == "kvm") && kvm.iter().any(|x| x == "host"));
    }
}
