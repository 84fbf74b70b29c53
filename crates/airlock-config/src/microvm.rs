//! `[microvm]` (where the VMMs are and which uids they run as) and a microVM pool's
//! `[pool.microvm]` table (driver, acceleration, kernel, disk size), read key by key like every
//! other section so that every problem is reported with its key and line.
//!
//! Nothing here looks for a VMM binary or boots anything: whether a driver works on this host
//! is the backend's probe's to say, at start.

use std::path::PathBuf;

use airlock_core::{Accel, VmDriver};
use toml::{Table, Value};

use crate::check::Walker;

/// `[microvm]`: host-wide settings of the microVM backend.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MicrovmSettings {
    /// `qemu-system-x86_64` by default (looked up in PATH).
    pub qemu: PathBuf,
    pub firecracker: PathBuf,
    pub jailer: PathBuf,
    pub cloud_hypervisor: PathBuf,
    /// Each VMM runs as its own unprivileged uid (and gid) `uid_base + n`, n < 65536.
    pub uid_base: u32,
}

/// `[pool.microvm]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MicrovmPool {
    pub driver: VmDriver,
    pub accel: Accel,
    /// A kernel version the image holds (`6.1.0-28-cloud-amd64`), or a path to a `vmlinux` or
    /// `bzImage` on the host; `None`: the image's newest.
    pub kernel: Option<String>,
    /// The per-job disk's size cap: the guest's root filesystem is this big, and no bigger.
    pub disk_gib: u32,
}

pub const DEFAULT_UID_BASE: u32 = 200_000;
/// A sandbox's disk cap when its pool sets no `disk_gib` (containers and microVMs alike).
pub const DEFAULT_DISK_GIB: u32 = 10;
/// Guest RAM when a microVM pool sets no `memory_mib`.
pub const DEFAULT_MEMORY_MIB: u64 = 2048;
const SETTINGS_KEYS: &[&str] = &[
    "qemu",
    "firecracker",
    "jailer",
    "cloud_hypervisor",
    "uid_base",
];
const POOL_KEYS: &[&str] = &["driver", "accel", "kernel", "disk_gib"];

pub(crate) fn settings(w: &mut Walker<'_>, root: &mut Table) -> MicrovmSettings {
    let mut t = w.table(root, "microvm");
    let mut bin = |w: &mut Walker<'_>, key: &str, default: &str| -> PathBuf {
        // A bare name is looked up in PATH when the backend starts; a relative path is the
        // config file's.
        match w.take::<String>(&mut t, "microvm", key, "a program name or path") {
            Some(s) if s.is_empty() => {
                w.error(
                    &format!("microvm.{key}"),
                    "empty; leave it out for the default",
                );
                default.into()
            }
            Some(s) if !s.contains('/') => s.into(),
            Some(s) => {
                t.insert(key.into(), Value::String(s));
                w.path(&mut t, "microvm", key).unwrap_or_default()
            }
            None => default.into(),
        }
    };
    let qemu = bin(w, "qemu", "qemu-system-x86_64");
    let firecracker = bin(w, "firecracker", "firecracker");
    let jailer = bin(w, "jailer", "jailer");
    let cloud_hypervisor = bin(w, "cloud_hypervisor", "cloud-hypervisor");
    let uid_base = w
        .take::<u32>(&mut t, "microvm", "uid_base", "a uid")
        .unwrap_or(DEFAULT_UID_BASE);
    if !(1000..=u32::MAX - 65536).contains(&uid_base) {
        w.error(
            "microvm.uid_base",
            "must be at least 1000 (VMMs never run as a system user) and leave room for 65536 ids",
        );
    }
    w.unknown(t, "microvm", SETTINGS_KEYS);
    MicrovmSettings {
        qemu,
        firecracker,
        jailer,
        cloud_hypervisor,
        uid_base,
    }
}

/// `sec` is the pool's section (`pool[2]`); `t` its table, from which `microvm` is taken;
/// `pool_disk` the pool's own `disk_gib`, which `[pool.microvm] disk_gib` may repeat but not
/// contradict.
pub(crate) fn pool(
    w: &mut Walker<'_>,
    t: &mut Table,
    sec: &str,
    pool_disk: Option<u32>,
) -> MicrovmPool {
    let key = format!("{sec}.microvm");
    let mut m = match t.remove("microvm") {
        None => Table::new(),
        Some(Value::Table(m)) => m,
        Some(_) => {
            w.error(&key, format!("expected a table: [{key}]"));
            Table::new()
        }
    };
    let driver = match w.take::<String>(&mut m, &key, "driver", "a driver name") {
        None => VmDriver::Qemu,
        Some(s) => VmDriver::parse(&s).unwrap_or_else(|| {
            w.error(
                &format!("{key}.driver"),
                format!("{s:?} is not a driver; expected \"qemu\", \"firecracker\" or \"cloud-hypervisor\""),
            );
            VmDriver::Qemu
        }),
    };
    let accel = match w.take::<String>(&mut m, &key, "accel", "\"auto\", \"kvm\" or \"tcg\"") {
        None => Accel::Auto,
        Some(s) => Accel::parse(&s).unwrap_or_else(|| {
            w.error(
                &format!("{key}.accel"),
                format!("{s:?} is not an accelerator; expected \"auto\", \"kvm\" or \"tcg\""),
            );
            Accel::Auto
        }),
    };
    if accel == Accel::Tcg && driver != VmDriver::Qemu {
        w.error(
            &format!("{key}.accel"),
            format!(
                "{} needs KVM; only the qemu driver can emulate (tcg)",
                driver.as_str()
            ),
        );
    }
    let kernel = match w.take::<String>(&mut m, &key, "kernel", "a kernel version or a path") {
        Some(k) if k.contains('/') => {
            m.insert("kernel".into(), Value::String(k));
            let p = w.path(&mut m, &key, "kernel").unwrap_or_default();
            if !p.is_file() {
                w.error(
                    &format!("{key}.kernel"),
                    format!("{} is not a file (a vmlinux or bzImage)", p.display()),
                );
            }
            Some(p.to_string_lossy().into_owned())
        }
        Some(k) if k.is_empty() => {
            w.error(
                &format!("{key}.kernel"),
                "empty; leave it out for the image's newest kernel",
            );
            None
        }
        other => other,
    };
    let own = w.take::<u32>(&mut m, &key, "disk_gib", "a whole number of GiB");
    if own.is_some_and(|d| !(1..=16384).contains(&d)) {
        w.error(&format!("{key}.disk_gib"), "must be from 1 to 16384");
    }
    if let (Some(a), Some(b)) = (own, pool_disk) {
        if a != b {
            w.error(
                &format!("{key}.disk_gib"),
                format!("{a} contradicts {sec}.disk_gib = {b}: set one of them"),
            );
        }
    }
    let disk_gib = own.or(pool_disk).unwrap_or(DEFAULT_DISK_GIB);
    w.unknown(m, &key, POOL_KEYS);
    MicrovmPool {
        driver,
        accel,
        kernel,
        disk_gib,
    }
}
