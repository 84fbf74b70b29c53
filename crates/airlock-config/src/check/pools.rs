//! `[[pool]]`: each pool's identity (name, scope, labels), backend, image and runner, resource
//! limits and timings, and the checks across pools (unique names, distinct label sets).
//!
//! The filesystem is only looked at: this must never build, pull or unpack an image (a missing
//! one is a warning naming the command that builds it) nor run the runner command (it is only
//! checked to be an executable file). Whether a runtime or VM driver works on this host is the
//! backend's probe's to say, at start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_core::{Labels, Scope};
use toml::{Table, Value};

use super::Walker;
use crate::{BackendKind, MicrovmPool, PoolConfig};

/// The largest `memory_mib` (16 TiB).
const MAX_MEMORY_MIB: u64 = 1 << 24;

const POOL_KEYS: &[&str] = &[
    "name",
    "scope",
    "labels",
    "runner_group",
    "backend",
    "microvm",
    "runner_command",
    "image",
    "runtime",
    "packages",
    "cpus",
    "memory_mib",
    "pids_max",
    "io_weight",
    "disk_gib",
    "min_idle",
    "max_runners",
    "jit_stock",
    "jit_stock_refresh",
    "boot_timeout",
    "idle_timeout",
    "job_timeout",
    "egress",
];

/// Every pool; `state_dir` is where built images are looked for.
pub(super) fn read(w: &mut Walker<'_>, root: &mut Table, state_dir: &Path) -> Vec<PoolConfig> {
    let pools_raw = match root.remove("pool") {
        None => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => {
            w.error("pool", "expected one or more [[pool]] tables");
            Vec::new()
        }
    };
    if pools_raw.is_empty() {
        w.error("pool", "no pools: add at least one [[pool]]");
    }
    let mut pools = Vec::new();
    let mut seen = Seen::default();
    for (i, v) in pools_raw.into_iter().enumerate() {
        let sec = format!("pool[{i}]");
        let Value::Table(t) = v else {
            w.error(&sec, "expected a table");
            continue;
        };
        if let Some(p) = pool(w, t, &sec, i, state_dir, &mut seen) {
            pools.push(p);
        }
    }
    pools
}

/// The pools read so far, for the checks one pool makes against the ones before it.
#[derive(Default)]
struct Seen {
    /// Name to index, so a duplicate can name the pool it repeats.
    names: HashMap<String, usize>,
    label_sets: HashMap<Labels, String>,
}

/// Pool `i`, whose section is `sec`; `None` without a usable scope (every problem still reported).
fn pool(
    w: &mut Walker<'_>,
    mut t: Table,
    sec: &str,
    i: usize,
    state_dir: &Path,
    seen: &mut Seen,
) -> Option<PoolConfig> {
    let name = name(w, &mut t, sec, i, seen);
    let scope = scope(w, &mut t, sec);
    let labels = labels(w, &mut t, sec, &name, seen);
    let runner_group = w
        .take::<String>(&mut t, sec, "runner_group", "a string")
        .unwrap_or_else(|| "Default".into());
    let backend = backend(w, &mut t, sec);
    let pool_disk = disk_gib(w, &mut t, sec, backend);
    let microvm = microvm(w, &mut t, sec, backend, pool_disk);
    let disk_gib = match backend {
        BackendKind::Process => None,
        BackendKind::Container => Some(pool_disk.unwrap_or(crate::microvm::DEFAULT_DISK_GIB)),
        BackendKind::Microvm => microvm.as_ref().map(|m| m.disk_gib),
    };
    let image = w.take::<String>(&mut t, sec, "image", "an image name or NAME@DIGEST");
    let runtime = runtime(w, &mut t, sec, backend);
    let runner_command = runner_command(w, &mut t, sec, backend, image.as_deref(), state_dir);
    let packages = packages(w, &mut t, sec, backend);
    let Limits {
        cpus,
        memory_mib,
        pids_max,
        io_weight,
    } = limits(w, &mut t, sec, backend);
    let Sizing {
        min_idle,
        max_runners,
        jit_stock,
        jit_stock_refresh,
    } = sizing(w, &mut t, sec);
    let boot_timeout = w.duration(&mut t, sec, "boot_timeout", Duration::from_secs(300));
    let idle_timeout = w.duration(&mut t, sec, "idle_timeout", Duration::from_secs(600));
    let job_timeout = w.duration(&mut t, sec, "job_timeout", Duration::from_secs(6 * 3600));
    let egress = super::egress::read(w, &mut t, sec);
    w.unknown(t, sec, POOL_KEYS);
    Some(PoolConfig {
        name,
        scope: scope?,
        labels,
        runner_group,
        backend,
        runner_command,
        image,
        runtime,
        microvm,
        packages,
        cpus,
        memory_mib,
        pids_max,
        io_weight,
        disk_gib,
        min_idle,
        max_runners,
        jit_stock,
        jit_stock_refresh,
        boot_timeout,
        idle_timeout,
        job_timeout,
        egress,
    })
}

fn name(w: &mut Walker<'_>, t: &mut Table, sec: &str, i: usize, seen: &mut Seen) -> String {
    let name = w
        .take::<String>(t, sec, "name", "a string")
        .unwrap_or_default();
    if name.is_empty() {
        w.error(&format!("{sec}.name"), "every pool needs a name");
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || name.len() > 40
    {
        w.error(
            &format!("{sec}.name"),
            format!("{name:?}: use 1-40 of a-z, 0-9 and '-' (it becomes part of runner names)"),
        );
    } else if let Some(j) = seen.names.insert(name.clone(), i) {
        w.error(
            &format!("{sec}.name"),
            format!("{name:?} is already the name of pool[{j}]"),
        );
    }
    name
}

fn scope(w: &mut Walker<'_>, t: &mut Table, sec: &str) -> Option<Scope> {
    match w.take::<String>(t, sec, "scope", "a string such as \"repo:OWNER/NAME\"") {
        Some(s) => match Scope::parse(&s) {
            Ok(s) => Some(s),
            Err(e) => {
                w.error(&format!("{sec}.scope"), e);
                None
            }
        },
        None => {
            w.error(
                &format!("{sec}.scope"),
                "missing: set repo:OWNER/NAME, org:NAME or enterprise:SLUG",
            );
            None
        }
    }
}

/// `name` is the pool's, for the warning a later pool with the same label set gets.
fn labels(
    w: &mut Walker<'_>,
    t: &mut Table,
    sec: &str,
    name: &str,
    seen: &mut Seen,
) -> Vec<String> {
    let labels = w
        .take::<Vec<String>>(t, sec, "labels", "a list of strings")
        .unwrap_or_default();
    if labels.iter().all(|l| l.trim().is_empty()) {
        w.error(
            &format!("{sec}.labels"),
            "empty: a pool without labels can never match a job",
        );
    } else if labels.len() > 100 {
        w.error(
            &format!("{sec}.labels"),
            "GitHub allows at most 100 labels per runner",
        );
    } else {
        let set = Labels::new(&labels);
        if let Some(other) = seen.label_sets.insert(set.clone(), name.to_string()) {
            w.warn(
                &format!("{sec}.labels"),
                format!("pool {other:?} serves the identical label set {set}; the one listed first gets every job"),
            );
        }
    }
    labels
}

fn backend(w: &mut Walker<'_>, t: &mut Table, sec: &str) -> BackendKind {
    match w.take::<String>(t, sec, "backend", "a string").as_deref() {
        None | Some("process") => BackendKind::Process,
        Some("container") => BackendKind::Container,
        Some("microvm") => BackendKind::Microvm,
        Some(other) => {
            w.error(
                &format!("{sec}.backend"),
                format!("{other:?} is not a backend; expected \"container\", \"microvm\" or \"process\""),
            );
            BackendKind::Process
        }
    }
}

/// `[pool.microvm]`, read for a microVM pool and refused on any other.
/// The pool's disk cap as written (`None`: not written, or wrong); checked, and warned about
/// where nothing enforces it.
fn disk_gib(w: &mut Walker<'_>, t: &mut Table, sec: &str, backend: BackendKind) -> Option<u32> {
    let d = w.take::<u32>(t, sec, "disk_gib", "a whole number of GiB")?;
    if !(1..=16384).contains(&d) {
        w.error(&format!("{sec}.disk_gib"), "must be from 1 to 16384");
        return None;
    }
    if backend == BackendKind::Process {
        w.warn(
            &format!("{sec}.disk_gib"),
            "ignored by the process backend: its jobs write to the host's own filesystem",
        );
    }
    Some(d)
}

fn microvm(
    w: &mut Walker<'_>,
    t: &mut Table,
    sec: &str,
    backend: BackendKind,
    pool_disk: Option<u32>,
) -> Option<MicrovmPool> {
    if backend == BackendKind::Microvm {
        Some(crate::microvm::pool(w, t, sec, pool_disk))
    } else {
        if t.contains_key("microvm") {
            t.remove("microvm");
            w.error(
                &format!("{sec}.microvm"),
                format!("only for backend = \"microvm\" (this pool's is \"{backend}\")"),
            );
        }
        None
    }
}

/// A container pool's own OCI runtime; `None` for the host-wide one (or after an error).
fn runtime(w: &mut Walker<'_>, t: &mut Table, sec: &str, backend: BackendKind) -> Option<String> {
    // Which names run is the container backend's probe to say (at start, with its reason).
    let runtime = w.take::<String>(t, sec, "runtime", "an OCI runtime name or path");
    if let Some(r) = &runtime {
        if backend != BackendKind::Container {
            w.error(
                &format!("{sec}.runtime"),
                format!("only for backend = \"container\" (this pool's is \"{backend}\")"),
            );
        } else if r.trim().is_empty() {
            w.error(
                &format!("{sec}.runtime"),
                "empty; leave it out for the host-wide [container] runtime, or name one such as \"runsc\"",
            );
        }
    }
    runtime.filter(|r| backend == BackendKind::Container && !r.trim().is_empty())
}

/// The runner program: a host path for the process backend, a path inside the image otherwise
/// (whose image is checked here too, since only those backends need one).
fn runner_command(
    w: &mut Walker<'_>,
    t: &mut Table,
    sec: &str,
    backend: BackendKind,
    image: Option<&str>,
    state_dir: &Path,
) -> Option<PathBuf> {
    match backend {
        BackendKind::Process => {
            let c = w
                .path(t, sec, "runner_command")
                .unwrap_or_else(|| PathBuf::from("/opt/actions-runner/run.sh"));
            check_executable(w, &format!("{sec}.runner_command"), &c);
            if image.is_some() {
                w.warn(
                    &format!("{sec}.image"),
                    "ignored: the process backend runs on the host, not in an image",
                );
            }
            Some(c)
        }
        BackendKind::Container | BackendKind::Microvm => {
            let c = w
                .take::<String>(t, sec, "runner_command", "a path inside the image")
                .map(PathBuf::from);
            if c.as_ref().is_some_and(|c| !c.is_absolute()) {
                w.error(
                    &format!("{sec}.runner_command"),
                    "must be an absolute path inside the image",
                );
            }
            match image {
                None => w.error(
                    &format!("{sec}.image"),
                    format!("a {backend} pool needs an image: build one with `airlock image build NAME` and set image = \"NAME\""),
                ),
                Some(i) => {
                    let name = i.split('@').next().unwrap_or_default();
                    if !state_dir.join("images").join(name).is_dir() {
                        w.warn(
                            &format!("{sec}.image"),
                            format!("no image {name:?} has been built yet; run: airlock image build {name}"),
                        );
                    }
                }
            }
            c
        }
    }
}

fn packages(w: &mut Walker<'_>, t: &mut Table, sec: &str, backend: BackendKind) -> Vec<String> {
    let packages = w
        .take::<Vec<String>>(t, sec, "packages", "a list of Debian package names")
        .unwrap_or_default();
    for p in &packages {
        let ok = p.len() >= 2
            && p.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.')
            })
            && p.starts_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            w.error(
                &format!("{sec}.packages"),
                format!("{p:?} is not a Debian package name"),
            );
        }
    }
    if backend == BackendKind::Process && !packages.is_empty() {
        w.warn(
            &format!("{sec}.packages"),
            "ignored: the process backend runs on the host, not in an image",
        );
    }
    packages
}

/// A sandbox's resource limits, as `PoolConfig` holds them.
struct Limits {
    cpus: Option<f64>,
    memory_mib: Option<u64>,
    pids_max: Option<i64>,
    io_weight: Option<u16>,
}

fn limits(w: &mut Walker<'_>, t: &mut Table, sec: &str, backend: BackendKind) -> Limits {
    let cpus = w.take::<f64>(t, sec, "cpus", "a number of CPUs such as 2 or 0.5");
    if cpus.is_some_and(|c| !(0.01..=1024.0).contains(&c)) {
        w.error(&format!("{sec}.cpus"), "must be between 0.01 and 1024");
    }
    if backend == BackendKind::Microvm && cpus.is_some_and(|c| c.fract() != 0.0) {
        w.error(
            &format!("{sec}.cpus"),
            "a microVM has whole virtual CPUs: write a whole number",
        );
    }
    let memory_mib = w
        .take::<u64>(t, sec, "memory_mib", "a whole number of MiB")
        .or((backend == BackendKind::Microvm).then_some(crate::microvm::DEFAULT_MEMORY_MIB));
    // At most 16 TiB: backends count the limit in bytes, which must fit an i64.
    if memory_mib.is_some_and(|m| !(16..=MAX_MEMORY_MIB).contains(&m)) {
        w.error(
            &format!("{sec}.memory_mib"),
            format!("must be from 16 to {MAX_MEMORY_MIB} (16 TiB)"),
        );
    }
    let pids_max = w.take::<i64>(t, sec, "pids_max", "a whole number");
    if pids_max.is_some_and(|p| p < 8) {
        w.error(&format!("{sec}.pids_max"), "must be at least 8");
    }
    let io_weight = w.take::<u16>(t, sec, "io_weight", "a weight from 10 to 1000");
    if io_weight.is_some_and(|x| !(10..=1000).contains(&x)) {
        w.error(&format!("{sec}.io_weight"), "must be from 10 to 1000");
    }
    if backend == BackendKind::Process
        && (cpus.is_some() || memory_mib.is_some() || pids_max.is_some() || io_weight.is_some())
    {
        w.warn(
            sec,
            "cpus, memory_mib, pids_max and io_weight are ignored by the process backend",
        );
    }
    if backend == BackendKind::Microvm && (pids_max.is_some() || io_weight.is_some()) {
        w.warn(
            sec,
            "pids_max and io_weight are ignored by microVM pools: a VM's limits are its vCPUs, memory and disk_gib",
        );
    }
    Limits {
        cpus,
        memory_mib,
        pids_max,
        io_weight,
    }
}

/// How many runners the pool keeps, and its stock of JIT configs.
struct Sizing {
    min_idle: u32,
    max_runners: u32,
    jit_stock: u32,
    jit_stock_refresh: Duration,
}

fn sizing(w: &mut Walker<'_>, t: &mut Table, sec: &str) -> Sizing {
    let min_idle = w
        .take::<u32>(t, sec, "min_idle", "a whole number ≥ 0")
        .unwrap_or(0);
    let max_runners = w
        .take::<u32>(t, sec, "max_runners", "a whole number ≥ 1")
        .unwrap_or(8);
    if max_runners == 0 {
        w.error(&format!("{sec}.max_runners"), "must be at least 1");
    }
    if min_idle > max_runners {
        w.error(
            &format!("{sec}.min_idle"),
            format!("{min_idle} is more than max_runners ({max_runners})"),
        );
    }
    let jit_stock = w
        .take::<u32>(t, sec, "jit_stock", "a whole number ≥ 0")
        .unwrap_or(0);
    if jit_stock > 1000 {
        w.error(
            &format!("{sec}.jit_stock"),
            "must be at most 1000 (GitHub refuses registrations past 10,000 runners)",
        );
    }
    let jit_stock_refresh = w.duration(t, sec, "jit_stock_refresh", Duration::from_secs(12 * 3600));
    if jit_stock_refresh >= Duration::from_secs(24 * 3600) || jit_stock_refresh.is_zero() {
        w.error(
            &format!("{sec}.jit_stock_refresh"),
            "must be more than 0s and less than 24h: GitHub removes a JIT runner that never ran a job after a day",
        );
    }
    Sizing {
        min_idle,
        max_runners,
        jit_stock,
        jit_stock_refresh,
    }
}

fn check_executable(w: &mut Walker<'_>, key: &str, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) => w.error(key, format!("cannot use {}: {e}", path.display())),
        Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => {
            w.error(key, format!("{} is not an executable file", path.display()))
        }
        Ok(_) => {}
    }
}
