//! The OCI runtime spec of a container sandbox, built with `oci-spec`: every namespace, a user
//! namespace that maps root inside to an unprivileged range outside, no capabilities, no new
//! privileges, a deny-list seccomp profile, masked and read-only kernel paths, a minimal `/dev`,
//! a read-only root with writable `/home/runner`, `/tmp` and `/run`, and cgroup limits.
//!
//! One spec serves every runtime; `Variant::Gvisor` marks what runsc reads differently (see
//! `Variant`).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Arch, Capabilities, HookBuilder, HooksBuilder, LinuxBuilder, LinuxCapabilitiesBuilder,
    LinuxCpuBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccomp, LinuxSeccompAction,
    LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscallBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use crate::Limits;

/// Inside the container: uid/gid 0..RANGE map to `uid_base`..`uid_base + RANGE` on the host.
pub const ID_RANGE: u32 = 65536;
/// The runner's uid and gid inside images (see airlock-image).
pub const RUNNER_UID: u32 = 1001;
/// Where the JIT config file is mounted inside the container.
pub const JIT_PATH: &str = "/run/airlock/jit";

/// What a container sandbox's spec is made of.
#[derive(Debug)]
pub struct ContainerSpec<'a> {
    pub id: &'a str,
    pub hostname: &'a str,
    /// The overlay mount (merged directory) that becomes `/`.
    pub rootfs: &'a Path,
    /// The runner program inside the image.
    pub runner: &'a Path,
    pub uid_base: u32,
    pub limits: &'a Limits,
    /// cgroup path, e.g. `/airlock/<id>`.
    pub cgroup: String,
    /// Host files mounted read-only over the image's.
    pub jit_file: &'a Path,
    pub resolv_conf: &'a Path,
    pub hosts: &'a Path,
    /// The network hook's argv (`airlock_net::hook_args`: its program first).
    pub net_hook: Vec<String>,
    pub variant: Variant,
    /// More of the job's environment (`NAME=value`): a pool's proxy settings.
    pub env: Vec<String>,
}

/// Which kind of runtime reads the spec.
///
/// gVisor's runsc takes the same spec with one thing left out (`seccomp_for`: the `clone3` rule)
/// and the network hook wrapped where runsc runs with `/proc/sys/net` hidden. What it does with
/// the rest differs, as measured with runsc 2022-12 (Debian 12): the seccomp filter is applied by
/// gVisor's kernel to the job (with `--oci-seccomp`; the host kernel sees only the Sentry's own
/// filter); the user namespace maps the gofer and sandbox processes, so files the job writes land
/// with the same shifted owners as under runc, while inside, gVisor shows its own identity
/// mapping; `/proc`, `/sys` and `/dev` are gVisor's (it mounts no `/sys/fs/cgroup`, and its
/// `/proc` has none of the masked files); capabilities, no_new_privs, the read-only root and the
/// bind mounts hold; the network hook runs before runsc's netstack takes over the veth inside the
/// sandbox's network namespace, so the host's nftables rules see every packet as before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Variant {
    /// runc, crun, youki.
    Oci,
    /// runsc. `unshare`: set when runsc runs with `/proc/sys/net` hidden (see
    /// `container::HIDE_NET_SYSCTLS`): the network hook, which writes sysctls there, then first
    /// unhides it in a mount namespace of its own (with this `unshare` binary).
    Gvisor { unshare: Option<PathBuf> },
}

/// Syscalls a job never needs and the kernel's riskiest surfaces: mounts, namespaces (no nested
/// user namespaces: no rootless podman inside a container sandbox), modules, kexec, BPF, perf,
/// keyrings, io_uring, userfaultfd, clock and swap changes, reboot, cross-process memory access.
/// The runner has no capabilities, so most of these fail anyway; this is the second wall.
const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
    "_sysctl",
    "sysfs",
];

/// `clone` flags that create namespaces.
const NS_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

pub fn seccomp() -> LinuxSeccomp {
    seccomp_for(&Variant::Oci)
}

/// The filter for `variant`. Under gVisor it is applied by gVisor's kernel (`--oci-seccomp`),
/// which in runsc 2022 answers every rule with `EPERM` whatever its `errnoRet`: the `clone3`
/// rule (`ENOSYS`, so that libc falls back to `clone`) would then make every `pthread_create`
/// fail, so it is left out. gVisor 2022 has no `clone3` at all (it answers `ENOSYS` itself), and
/// its namespaces would be gVisor's own, not the host's.
pub fn seccomp_for(variant: &Variant) -> LinuxSeccomp {
    let mut rules = vec![LinuxSyscallBuilder::default()
        .names(DENIED.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(EPERM)
        .build()
        .expect("static rule")];
    if *variant == Variant::Oci {
        // clone3 passes its flags in memory, out of seccomp's sight: make libc fall back to
        // clone, whose flags are checked below.
        rules.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(ENOSYS)
                .build()
                .expect("static rule"),
        );
    }
    for flag in NS_FLAGS {
        rules.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(EPERM)
                .args(vec![LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(*flag)
                    .value_two(*flag)
                    .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                    .build()
                    .expect("static arg")])
                .build()
                .expect("static rule"),
        );
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(rules)
        .build()
        .expect("static profile")
}

fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ(kind)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .expect("static mount")
}

fn bind_ro(dest: &str, source: &Path) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(
            ["rbind", "ro", "nosuid", "nodev", "noexec"]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .build()
        .expect("static mount")
}

/// A hook's argv (`hook`, whose first element is the program) run by `unshare` in a mount
/// namespace of its own where `/proc/sys/net` is visible again: runsc's (hidden, see
/// `container::HIDE_NET_SYSCTLS`) stays as it is.
pub fn unhide_hook(unshare: &Path, hook: &[String]) -> Vec<String> {
    let mut args = vec![
        unshare.to_string_lossy().into_owned(),
        "--mount".to_string(),
        "--propagation".to_string(),
        "private".to_string(),
        "/bin/sh".to_string(),
        "-c".to_string(),
        "umount /proc/sys/net && exec \"$@\"".to_string(),
        "airlock-unhide".to_string(),
    ];
    args.extend(hook.iter().cloned());
    args
}

pub fn build(c: &ContainerSpec<'_>) -> Result<Spec, oci_spec::OciSpecError> {
    let none = Capabilities::new();
    let caps = LinuxCapabilitiesBuilder::default()
        .bounding(none.clone())
        .effective(none.clone())
        .inheritable(none.clone())
        .permitted(none.clone())
        .ambient(none)
        .build()?;
    // As many open files as the host lets us give (a sandbox cannot raise its own limit).
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard.min(65536))
        .unwrap_or(1024);
    // The JIT config is read from a file only the runner can read, never argv or config.json.
    let entry = format!(
        "ACTIONS_RUNNER_INPUT_JITCONFIG=$(cat {JIT_PATH}) || exit 97; \
         export ACTIONS_RUNNER_INPUT_JITCONFIG; exec \"$0\""
    );
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(RUNNER_UID)
                .gid(RUNNER_UID)
                .additional_gids(Vec::<u32>::new())
                .build()?,
        )
        .args(vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            entry,
            c.runner.to_string_lossy().into_owned(),
        ])
        .env(
            vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                "HOME=/home/runner".to_string(),
                "USER=runner".to_string(),
                "LANG=C.UTF-8".to_string(),
                "TMPDIR=/tmp".to_string(),
                format!("AIRLOCK_SANDBOX={}", c.id),
            ]
            .into_iter()
            .chain(crate::RUNNER_ENV.iter().map(|(k, v)| format!("{k}={v}")))
            .chain(c.env.iter().cloned())
            .collect::<Vec<_>>(),
        )
        .cwd("/home/runner")
        .no_new_privileges(true)
        .capabilities(caps)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(nofile)
            .soft(nofile)
            .build()?])
        .build()?;

    let home = c.rootfs.join("home/runner");
    let mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
        mount("/tmp", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=1777"]),
        mount(
            "/var/tmp",
            "tmpfs",
            "tmpfs",
            &["nosuid", "nodev", "mode=1777"],
        ),
        mount("/run", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=755"]),
        // The runner's home: writable, and the writes land in the private overlay layer.
        MountBuilder::default()
            .destination("/home/runner")
            .typ("bind")
            .source(&home)
            .options(vec![
                "rbind".to_string(),
                "rw".to_string(),
                "nosuid".to_string(),
                "nodev".to_string(),
            ])
            .build()?,
        bind_ro(JIT_PATH, c.jit_file),
        bind_ro("/etc/resolv.conf", c.resolv_conf),
        bind_ro("/etc/hosts", c.hosts),
    ];

    let id_map = |base: u32| {
        LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(base)
            .size(ID_RANGE)
            .build()
    };
    let ns = |t| LinuxNamespaceBuilder::default().typ(t).build();
    let mut memory = LinuxMemoryBuilder::default();
    if let Some(mib) = c.limits.memory_mib {
        let bytes = (mib * 1024 * 1024) as i64;
        // swap = limit: memory + swap may not exceed the limit, so there is no swap escape.
        memory = memory.limit(bytes).swap(bytes);
    }
    let mut resources = LinuxResourcesBuilder::default().memory(memory.build()?);
    if let Some(pids) = c.limits.pids_max {
        resources = resources.pids(LinuxPidsBuilder::default().limit(pids).build()?);
    }
    if let Some(cpus) = c.limits.cpus {
        let period: u64 = 100_000;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .period(period)
                .quota((cpus * period as f64).round() as i64)
                .build()?,
        );
    }
    if let Some(w) = c.limits.io_weight {
        resources = resources.block_io(
            oci_spec::runtime::LinuxBlockIoBuilder::default()
                .weight(w)
                .build()?,
        );
    }
    let linux = LinuxBuilder::default()
        .uid_mappings(vec![id_map(c.uid_base)?])
        .gid_mappings(vec![id_map(c.uid_base)?])
        .namespaces(vec![
            ns(LinuxNamespaceType::Pid)?,
            ns(LinuxNamespaceType::Network)?,
            ns(LinuxNamespaceType::Ipc)?,
            ns(LinuxNamespaceType::Uts)?,
            ns(LinuxNamespaceType::Mount)?,
            ns(LinuxNamespaceType::Cgroup)?,
            ns(LinuxNamespaceType::User)?,
        ])
        .cgroups_path(c.cgroup.clone())
        .resources(resources.build()?)
        .seccomp(seccomp_for(&c.variant))
        .masked_paths(
            [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
                "/sys/kernel",
                "/sys/devices/virtual/powercap",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
        )
        .readonly_paths(
            [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
        )
        .build()?;
    let hook = match &c.variant {
        Variant::Gvisor {
            unshare: Some(unshare),
        } => HookBuilder::default()
            .path(unshare)
            .args(unhide_hook(unshare, &c.net_hook)),
        _ => HookBuilder::default()
            .path(c.net_hook.first().map_or("/bin/false", String::as_str))
            .args(c.net_hook.clone()),
    };
    let hooks = HooksBuilder::default()
        .create_runtime(vec![hook.timeout(20i64).build()?])
        .build()?;
    SpecBuilder::default()
        .version("1.0.2")
        .hostname(c.hostname)
        .process(process)
        .root(
            RootBuilder::default()
                .path(c.rootfs)
                .readonly(true)
                .build()?,
        )
        .mounts(mounts)
        .linux(linux)
        .hooks(hooks)
        .build()
}
