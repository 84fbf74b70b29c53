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

use airlock_config::{BackendKind, Config, Severity};
use serde::Serialize;

mod github;
mod host;

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

/// Runs every check for the config at `path`; `progress` hears of the slow steps (probes,
/// GitHub) before they run.
pub async fn run(path: &Path, progress: &(dyn Fn(&str) + Sync)) -> Report {
    let mut r = Report::default();
    let cfg = config(&mut r, path);
    let kinds: BTreeSet<BackendKind> = cfg
        .as_ref()
        .map(|c| c.pools.iter().map(|p| p.backend).collect())
        .unwrap_or_default();
    host::host(&mut r, cfg.as_ref(), &kinds);
    if let Some(cfg) = &cfg {
        disk(&mut r, cfg);
        backends(&mut r, cfg, &kinds, progress).await;
        progress("asking GitHub (reachability, credentials, permissions, clock)");
        github::github(&mut r, cfg).await;
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
    // Below the low-water mark the daemon admits no sandbox; below the high one it prunes.
    let (fail, warn) = (
        cfg.server.disk_low_mib << 20,
        cfg.server.disk_high_mib << 20,
    );
    if free < fail {
        r.add("disk", "free space", Verdict::Fail, detail, fix);
    } else if free < warn {
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
