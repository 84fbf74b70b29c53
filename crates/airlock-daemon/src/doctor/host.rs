//! `doctor`'s host checks: the kernel features, tools, cgroups and devices the pools' backends
//! need.

use std::collections::BTreeSet;
use std::path::Path;

use airlock_config::{BackendKind, Config};

use super::{Report, Verdict};

pub(super) fn host(r: &mut Report, cfg: Option<&Config>, kinds: &BTreeSet<BackendKind>) {
    let isolated = kinds.iter().any(|k| *k != BackendKind::Process);
    let containers = kinds.contains(&BackendKind::Container);
    let vms = kinds.contains(&BackendKind::Microvm);
    let need = |wanted: bool| if wanted { Verdict::Fail } else { Verdict::Warn };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    r.ok("host", "kernel", format!("Linux {}", release.trim()));

    if nix::unistd::geteuid().is_root() {
        r.ok("host", "root", "running as root");
    } else if isolated {
        r.add(
            "host",
            "root",
            Verdict::Fail,
            "not root: container and microVM sandboxes need namespaces, mounts, links and nftables",
            Some("run airlock as root (the systemd unit's User=root), or use only process pools for development".into()),
        );
    }

    let userns: u64 = read_num("/proc/sys/user/max_user_namespaces").unwrap_or(0);
    if userns > 0 {
        r.ok(
            "host",
            "user namespaces",
            format!("user.max_user_namespaces = {userns}"),
        );
    } else {
        r.add(
            "host",
            "user namespaces",
            need(containers),
            "user namespaces are off: a container's root could not be mapped to an unprivileged host user",
            Some("sysctl -w user.max_user_namespaces=15000 (and in /etc/sysctl.d/ to keep it)".into()),
        );
    }

    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let has_fs = |name: &str| {
        filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some(name))
    };
    for (fs, module, why) in [
        (
            "overlay",
            "overlay",
            "container sandboxes are an overlay over their image",
        ),
        ("ext4", "ext4", "container disk caps are ext4 filesystems"),
    ] {
        if has_fs(fs) || module_exists(module) {
            r.ok("host", fs.to_string(), format!("{fs} is available"));
        } else {
            r.add(
                "host",
                fs.to_string(),
                need(containers),
                format!("no {fs} filesystem in this kernel: {why}"),
                Some(format!("modprobe {module}")),
            );
        }
    }
    if Path::new("/dev/loop-control").exists() {
        r.ok(
            "host",
            "loop devices",
            "/dev/loop-control exists (disk caps)",
        );
    } else {
        r.add(
            "host",
            "loop devices",
            need(containers),
            "no /dev/loop-control: container disk caps (disk_gib) need loop devices",
            Some("modprobe loop".into()),
        );
    }
    for (tool, package, wanted) in [
        ("nft", "nftables", isolated),
        ("mkfs.ext4", "e2fsprogs", containers || vms),
    ] {
        match airlock_sandbox::container::find_in_path(tool) {
            Some(p) => r.ok("host", tool.to_string(), format!("{}", p.display())),
            None => r.add(
                "host",
                tool.to_string(),
                need(wanted),
                format!("{tool} is not installed"),
                Some(format!("apt-get install {package}")),
            ),
        }
    }
    if isolated && nix::unistd::geteuid().is_root() {
        match std::process::Command::new("nft")
            .args(["list", "tables"])
            .output()
        {
            Ok(o) if o.status.success() => r.ok("host", "nftables", "nft can read the ruleset"),
            Ok(o) => r.add(
                "host",
                "nftables",
                Verdict::Fail,
                format!(
                    "nft list tables: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Some(
                    "modprobe nf_tables; airlock's sandboxes are isolated by one nftables table"
                        .into(),
                ),
            ),
            Err(_) => {} // not installed: said above
        }
    }
    cgroups(r, cfg, containers);
    if vms {
        if Path::new("/dev/net/tun").exists() {
            r.ok("host", "tun", "/dev/net/tun exists (VM taps)");
        } else {
            r.add(
                "host",
                "tun",
                Verdict::Fail,
                "no /dev/net/tun: microVMs' taps cannot be made",
                Some("modprobe tun".into()),
            );
        }
        let kvm = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let wants_kvm = cfg.is_some_and(|c| {
            c.pools.iter().filter_map(|p| p.microvm.as_ref()).any(|m| {
                m.accel == airlock_core::Accel::Kvm || m.driver != airlock_core::VmDriver::Qemu
            })
        });
        if kvm {
            r.ok(
                "host",
                "kvm",
                "/dev/kvm opens (the probe boot says whether a kernel boots on it)",
            );
        } else {
            r.add(
                "host",
                "kvm",
                if wants_kvm { Verdict::Fail } else { Verdict::Warn },
                "no usable /dev/kvm: QEMU VMs run emulated (TCG, several times slower); Firecracker and Cloud Hypervisor cannot run",
                Some("enable virtualization (VT-x/AMD-V, nested virtualization on a VM host) and modprobe kvm_intel or kvm_amd".into()),
            );
        }
    }
}

/// The cgroup layout and the controllers sandbox limits need.
fn cgroups(r: &mut Report, cfg: Option<&Config>, containers: bool) {
    let root = Path::new("/sys/fs/cgroup");
    let (layout, controllers): (&str, BTreeSet<String>) =
        if root.join("cgroup.controllers").exists() {
            let c = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            (
                "v2 (unified)",
                c.split_whitespace().map(str::to_string).collect(),
            )
        } else {
            let v1: BTreeSet<String> = std::fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().join("tasks").exists())
                .flat_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .split(',')
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect();
            let hybrid = root.join("unified/cgroup.controllers").exists();
            (
                if hybrid {
                    "v1 with v2 beside it (hybrid)"
                } else {
                    "v1"
                },
                v1,
            )
        };
    if controllers.is_empty() {
        r.add(
            "host",
            "cgroups",
            if containers {
                Verdict::Fail
            } else {
                Verdict::Warn
            },
            "no cgroup controllers found under /sys/fs/cgroup",
            Some("mount cgroup2 at /sys/fs/cgroup (systemd does at boot)".into()),
        );
        return;
    }
    r.ok(
        "host",
        "cgroups",
        format!(
            "{layout}: {}",
            controllers.iter().cloned().collect::<Vec<_>>().join(" ")
        ),
    );
    let io_weight = cfg.is_some_and(|c| c.pools.iter().any(|p| p.io_weight.is_some()));
    for (ctrl, also, wanted, what) in [
        ("memory", "memory", containers, "memory_mib"),
        ("pids", "pids", containers, "pids_max"),
        ("cpu", "cpu", containers, "cpus"),
        ("io", "blkio", io_weight, "io_weight"),
    ] {
        if !controllers.contains(ctrl) && !controllers.contains(also) {
            r.add(
                "host",
                format!("cgroup {ctrl}"),
                if wanted { Verdict::Fail } else { Verdict::Warn },
                format!("the {ctrl} controller is missing: a pool's {what} cannot be enforced"),
                Some(format!("enable the {ctrl} controller (kernel command line cgroup_enable={ctrl}, or systemd's Delegate)")),
            );
        }
    }
}

fn read_num(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether the running kernel has `name` as a loadable module.
fn module_exists(name: &str) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dep = Path::new("/lib/modules")
        .join(release.trim())
        .join("modules.dep");
    std::fs::read_to_string(dep)
        .map(|d| {
            d.lines().any(|l| {
                l.split(':')
                    .next()
                    .and_then(|m| m.rsplit('/').next())
                    .is_some_and(|f| f.starts_with(&format!("{name}.ko")))
            })
        })
        .unwrap_or(false)
}
