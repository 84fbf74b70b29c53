//! `airlock doctor`: what the config, this host and GitHub say about running airlock here, each
//! problem with its fix. Read-only as far as a running daemon is concerned: the backends' probes
//! (the same probe containers and boots `serve` runs at start) run under a scratch directory of
//! their own, without the egress resolver, and are removed afterwards; GitHub is only read.
//!
//! A check `fail`s when it blocks operation (`airlock serve` would refuse to start, or a pool
//! could never run a job), `warn`s when airlock works but worse than it could (TCG instead of
//! KVM, a low disk, no webhook secret), and is `ok` otherwise.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use airlock_config::{BackendKind, Config, Severity};
use airlock_core::Scope;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `config`, `host`, `backend`, `disk`, `github` or `clock`.
    pub area: &'static str,
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about it (absent when there is nothing to do).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether anything blocks operation.
    pub fn blocking(&self) -> bool {
        self.checks.iter().any(|c| c.verdict == Verdict::Fail)
    }

    fn add(
        &mut self,
        area: &'static str,
        name: impl Into<String>,
        verdict: Verdict,
        detail: impl Into<String>,
        fix: Option<String>,
    ) {
        self.checks.push(Check {
            area,
            name: name.into(),
            verdict,
            detail: detail.into(),
            fix,
        });
    }

    fn ok(&mut self, area: &'static str, name: impl Into<String>, detail: impl Into<String>) {
        self.add(area, name, Verdict::Ok, detail, None);
    }
}

/// Free space under the state directory below which a check fails / warns.
const DISK_FAIL_BYTES: u64 = 1 << 30;
const DISK_WARN_BYTES: u64 = 5 << 30;

/// Runs every check for the config at `path`; `progress` hears of the slow steps (probes,
/// GitHub) before they run.
pub async fn run(path: &Path, progress: &(dyn Fn(&str) + Sync)) -> Report {
    let mut r = Report::default();
    let cfg = config(&mut r, path);
    let kinds: BTreeSet<BackendKind> = cfg
        .as_ref()
        .map(|c| c.pools.iter().map(|p| p.backend).collect())
        .unwrap_or_default();
    host(&mut r, cfg.as_ref(), &kinds);
    if let Some(cfg) = &cfg {
        disk(&mut r, cfg);
        backends(&mut r, cfg, &kinds, progress).await;
        progress("asking GitHub (reachability, credentials, permissions, clock)");
        github(&mut r, cfg).await;
    }
    r
}

fn config(r: &mut Report, path: &Path) -> Option<Config> {
    let fix = |d: &airlock_config::Diagnostic| {
        Some(match d.line {
            Some(l) => format!("edit {} line {l}: {}", path.display(), d.key),
            None => format!("edit {}: {}", path.display(), d.key),
        })
    };
    match airlock_config::load(path) {
        Ok((cfg, diags)) => {
            for d in &diags {
                r.add(
                    "config",
                    d.key.clone(),
                    Verdict::Warn,
                    d.message.clone(),
                    fix(d),
                );
            }
            r.ok(
                "config",
                "valid",
                format!("{} ({} pools)", path.display(), cfg.pools.len()),
            );
            Some(cfg)
        }
        Err(e) => {
            for d in &e.diagnostics {
                let v = match d.severity {
                    Severity::Error => Verdict::Fail,
                    Severity::Warning => Verdict::Warn,
                };
                r.add("config", d.key.clone(), v, d.message.clone(), fix(d));
            }
            None
        }
    }
}

fn host(r: &mut Report, cfg: Option<&Config>, kinds: &BTreeSet<BackendKind>) {
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

fn disk(r: &mut Report, cfg: &Config) {
    let dir = &cfg.server.state_dir;
    // The state directory may not exist yet: its nearest existing ancestor is where it will be.
    let Some(at) = dir.ancestors().find(|a| a.exists()) else {
        return;
    };
    let Ok(s) = nix::sys::statvfs::statvfs(at) else {
        return;
    };
    let free = s.blocks_available() * s.fragment_size();
    let total = s.blocks() * s.fragment_size();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let detail = format!(
        "{:.1} GiB free of {:.1} GiB under {}",
        gib(free),
        gib(total),
        at.display()
    );
    let fix = Some(format!(
        "free space under {} (airlock image gc removes unused image builds), or move server.state_dir",
        at.display()
    ));
    if free < DISK_FAIL_BYTES {
        r.add("disk", "free space", Verdict::Fail, detail, fix);
    } else if free < DISK_WARN_BYTES {
        r.add("disk", "free space", Verdict::Warn, detail, fix);
    } else {
        r.ok("disk", "free space", detail);
    }
    // What the pools' disk caps add up to when every runner fills its disk.
    let caps: u64 = cfg
        .pools
        .iter()
        .filter_map(|p| p.disk_gib.map(|d| u64::from(d) * u64::from(p.max_runners)))
        .sum();
    if caps > 0 {
        let detail = format!(
            "the pools' disk caps add up to {caps} GiB (disk_gib x max_runners), {:.1} GiB are free",
            gib(free)
        );
        if caps << 30 > free {
            r.add(
                "disk",
                "disk caps",
                Verdict::Warn,
                detail,
                Some("lower disk_gib or max_runners, or add disk: jobs filling their disks together would fill the host's first".into()),
            );
        } else {
            r.ok("disk", "disk caps", detail);
        }
    }
}

async fn backends(
    r: &mut Report,
    cfg: &Config,
    kinds: &BTreeSet<BackendKind>,
    progress: &(dyn Fn(&str) + Sync),
) {
    if kinds.iter().all(|k| *k == BackendKind::Process) {
        r.ok(
            "backend",
            "process",
            "process pools only: nothing to probe (jobs are NOT isolated)",
        );
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        return; // said under host/root: the probes need root
    }
    let _ = std::fs::create_dir_all(&cfg.server.state_dir);
    let scratch = match tempfile::Builder::new()
        .prefix(".doctor-")
        .tempdir_in(&cfg.server.state_dir)
    {
        Ok(t) => t,
        Err(e) => {
            r.add(
                "backend",
                "scratch directory",
                Verdict::Fail,
                format!(
                    "cannot make a directory under {}: {e}",
                    cfg.server.state_dir.display()
                ),
                Some("make server.state_dir writable by root".into()),
            );
            return;
        }
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o711));
    }
    progress("probing the backends (a probe container, VMM programs; as `serve` does at start)");
    let b = match crate::backends::Backends::probe_in(cfg, scratch.path()).await {
        Ok(b) => b,
        Err(e) => {
            r.add(
                "backend",
                "probe",
                Verdict::Fail,
                e.to_string(),
                Some(
                    "`airlock serve` refuses to start with this; the detail names what is missing"
                        .into(),
                ),
            );
            return;
        }
    };
    if let Some(c) = b.container() {
        let (path, name) = c.runtime();
        r.ok(
            "backend",
            "container",
            format!(
                "OCI runtime {name} ({}) runs a probe container",
                path.display()
            ),
        );
        for p in cfg
            .pools
            .iter()
            .filter(|p| p.backend == BackendKind::Container)
        {
            if let Some(rt) = &p.runtime {
                r.ok(
                    "backend",
                    format!("pool {} runtime", p.name),
                    format!("{rt} runs a probe container"),
                );
            }
        }
    }
    for p in &cfg.pools {
        match p.backend {
            BackendKind::Process => {}
            BackendKind::Container => {
                let store = airlock_image::ImageStore::new(cfg.server.state_dir.join("images"));
                let reference = p.image.clone().unwrap_or_default();
                match store.resolve(&reference) {
                    Ok(m) => r.ok("backend", format!("pool {} image", p.name), m.short()),
                    Err(e) => r.add(
                        "backend",
                        format!("pool {} image", p.name),
                        Verdict::Fail,
                        e.to_string(),
                        Some(format!(
                            "airlock image build {reference} --config <this config>"
                        )),
                    ),
                }
            }
            BackendKind::Microvm => {
                progress(&format!(
                    "booting pool {}'s kernel (the accelerator probe)",
                    p.name
                ));
                match b.vm_image(p).await {
                    Ok(_) => match b.accel(&p.name) {
                        Some(crate::backends::PoolAccel::Using(c)) => r.add(
                            "backend",
                            format!("pool {} VMs", p.name),
                            if c.warning.is_some() { Verdict::Warn } else { Verdict::Ok },
                            format!("boots with {}{}", c.accel.as_str(), c.warning.as_deref().map(|w| format!(": {w}")).unwrap_or_default()),
                            c.warning.as_ref().map(|_| "give the host KVM (see host/kvm)".to_string()),
                        ),
                        Some(crate::backends::PoolAccel::Refused(why)) => r.add(
                            "backend",
                            format!("pool {} VMs", p.name),
                            Verdict::Fail,
                            why,
                            Some("set [pool.microvm] accel = \"auto\" or give the host KVM".into()),
                        ),
                        None => r.ok("backend", format!("pool {} VMs", p.name), "image and kernel found"),
                    },
                    Err(e) => r.add(
                        "backend",
                        format!("pool {} VMs", p.name),
                        Verdict::Fail,
                        e.to_string(),
                        Some("build the pool's image with `airlock image build NAME --vm --config <this config>`".into()),
                    ),
                }
            }
        }
    }
    drop(b);
    // The probes' leftovers go with the scratch directory (their sandboxes are already gone).
    let _ = tokio::task::spawn_blocking(move || drop(scratch)).await;
}

/// What a pool's scope needs of the credentials, in GitHub's words.
fn needs(scope: &Scope, app: bool) -> &'static str {
    match (scope, app) {
        (Scope::Repo { .. }, true) => "the App's repository permission Administration: read and write (and Actions: read)",
        (Scope::Org(_), true) => "the App's organization permission Self-hosted runners: read and write (and Actions: read on the repositories)",
        (Scope::Repo { .. }, false) => "a fine-grained token with Administration: read and write on the repository, or a classic token with the repo scope",
        (Scope::Org(_), false) => "a fine-grained token with the organization's Self-hosted runners: read and write, or a classic token with admin:org",
        (Scope::Enterprise(_), _) => "a classic token with manage_runners:enterprise (Apps cannot manage enterprise runners)",
    }
}

async fn github(r: &mut Report, cfg: &Config) {
    let client = match crate::github_client(cfg, None) {
        Ok(c) => c,
        Err(e) => {
            r.add(
                "github",
                "credentials",
                Verdict::Fail,
                format!(
                    "{e}: {}",
                    std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                ),
                Some(
                    "check [github] token_file or private_key_file (readable by root, mode 0600)"
                        .into(),
                ),
            );
            return;
        }
    };
    let app = matches!(cfg.github.auth, airlock_config::Auth::App { .. });
    let scopes: BTreeSet<String> = cfg.pools.iter().map(|p| p.scope.to_string()).collect();
    let mut reached = false;
    for s in &scopes {
        let Ok(scope) = Scope::parse(s) else { continue };
        let name = format!("scope {s}");
        let t0 = std::time::Instant::now();
        let listed = tokio::time::timeout(
            cfg.github.request_timeout + Duration::from_secs(5),
            client.list_runners(&scope),
        )
        .await
        .unwrap_or_else(|_| {
            Err(airlock_github::GitHubError::Transient {
                what: "listing runners".into(),
                detail: "timed out".into(),
            })
        });
        match listed {
            Ok(list) => {
                reached = true;
                r.ok(
                    "github",
                    name.clone(),
                    format!(
                        "credentials accepted; {} runner registration(s) listed in {} ms (registering runners needs write access, which doctor does not try)",
                        list.len(),
                        t0.elapsed().as_millis()
                    ),
                );
            }
            Err(e) => {
                use airlock_github::GitHubError as E;
                let (what, fix) = match &e {
                    E::Transient { .. } => (
                        format!("GitHub is not reachable at {}: {e}", cfg.github.api_url),
                        "check github.api_url, DNS, the proxy and the firewall".to_string(),
                    ),
                    E::Permanent { status: 401, .. } | E::Auth { .. } => (
                        format!("the credentials are refused: {e}"),
                        "replace the token or the App key; an App's issuer is its client ID or App ID".to_string(),
                    ),
                    E::Permanent { status: 403, .. } => {
                        reached = true;
                        (format!("not allowed: {e}"), format!("grant {}", needs(&scope, app)))
                    }
                    E::NotFound { .. } => {
                        reached = true;
                        (
                            format!("{s} is not found, or the credentials cannot see it: {e}"),
                            format!("check the pool's scope; grant {}", needs(&scope, app)),
                        )
                    }
                    E::RateLimited { wait, .. } => {
                        reached = true;
                        (
                            format!("rate limited for {} s: {e}", wait.as_secs()),
                            "wait, or lower polling (github.poll_interval)".to_string(),
                        )
                    }
                    _ => (e.to_string(), format!("grant {}", needs(&scope, app))),
                };
                r.add("github", name.clone(), Verdict::Fail, what, Some(fix));
                continue;
            }
        }
        // An App's installation lists what it was granted: check what the scope needs.
        if let Ok(Some(perms)) = client.app_permissions(&scope).await {
            let (key, want) = match scope {
                Scope::Repo { .. } => ("administration", "write"),
                _ => ("organization_self_hosted_runners", "write"),
            };
            let got = perms.get(key).map(String::as_str).unwrap_or("none");
            if got == want {
                r.ok(
                    "github",
                    format!("{name} permissions"),
                    format!("{key}: {got}"),
                );
            } else {
                r.add(
                    "github",
                    format!("{name} permissions"),
                    Verdict::Fail,
                    format!("the App's installation has {key}: {got}; airlock registers runners, which needs {key}: {want}"),
                    Some(format!("grant {}", needs(&scope, true))),
                );
            }
        }
        // Org and enterprise pools register into a runner group that must exist.
        for p in cfg.pools.iter().filter(|p| &p.scope.to_string() == s) {
            if matches!(scope, Scope::Repo { .. }) {
                continue;
            }
            match client.runner_group_id(&scope, &p.runner_group).await {
                Ok(id) => r.ok(
                    "github",
                    format!("pool {} runner group", p.name),
                    format!("{} (id {id})", p.runner_group),
                ),
                Err(e) => r.add(
                    "github",
                    format!("pool {} runner group", p.name),
                    Verdict::Fail,
                    e.to_string(),
                    Some(format!(
                        "create the runner group {:?} in {s}, or set the pool's runner_group",
                        p.runner_group
                    )),
                ),
            }
        }
    }
    // The clock, from the Date of GitHub's answers above.
    match client.clock_offset_ms() {
        Some(off) if off.abs() > airlock_github::clock::DRIFT_WARN_MS => r.add(
            "clock",
            "drift",
            Verdict::Fail,
            format!(
                "this host's clock is {} s {} GitHub's",
                off.abs() / 1000,
                if off > 0 { "behind" } else { "ahead of" }
            ),
            Some("fix the host's time sync (systemd-timesyncd, chrony or ntpd); airlock copes meanwhile, tokens and logs do not".into()),
        ),
        Some(off) => r.ok("clock", "drift", format!("{off} ms from GitHub's (within 10 s)")),
        None if reached => r.add(
            "clock",
            "drift",
            Verdict::Warn,
            "GitHub's answers had no Date header: the drift is unknown",
            None,
        ),
        None => {}
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
