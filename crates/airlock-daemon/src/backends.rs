//! The backends a daemon drives: a `Registry` holding the process backend always, and every other
//! kind a pool asks for, each probed at start-up (a failed probe stops the start with the probe's
//! reasons). Operations are routed by kind (see `airlock_sandbox::registry`), and every backend
//! takes its sandbox addresses from the one lease directory of `airlock_net`.
//!
//! It also turns a pool into a sandbox spec: for container pools it resolves the pool's image to
//! its newest build (or the pinned digest) and the user-namespace-shifted copy of its rootfs.

use std::path::PathBuf;

use airlock_config::{BackendKind, Config, PoolConfig};
use airlock_image::ImageStore;
use airlock_net::{Leases, Subnet};
use airlock_sandbox::container::{ContainerBackend, ContainerConfig};
use airlock_sandbox::process::ProcessBackend;
use airlock_sandbox::{
    BackendSpec, ContainerImage, Limits, LogKeep, Registry, SandboxError, SandboxSpec,
};

#[derive(Debug)]
pub struct Backends {
    pub registry: Registry,
    images: ImageStore,
    uid_base: u32,
}

impl Backends {
    pub async fn start(
        cfg: &Config,
        exits: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<Backends, SandboxError> {
        let dir = &cfg.server.state_dir;
        let logs = LogKeep {
            dir: dir.join("logs"),
            keep: cfg.server.job_logs_keep,
        };
        let process = ProcessBackend::new(dir.join("sandboxes"), Some(exits.clone()))
            .with_log_cap(cfg.server.job_log_max_bytes)
            .with_logs(logs.clone());
        process.probe().await?;
        let mut registry = Registry::new();
        registry.insert(Box::new(process));
        let subnet = Subnet::parse(&cfg.container.subnet).ok_or_else(|| SandboxError::Probe {
            backend: "container",
            detail: format!("bad subnet {:?}", cfg.container.subnet),
        })?;
        let leases = Leases::new(airlock_net::lease_dir(dir), subnet);
        let wanted: std::collections::BTreeSet<BackendKind> =
            cfg.pools.iter().map(|p| p.backend).collect();
        for kind in wanted {
            match kind {
                BackendKind::Process => {}
                BackendKind::Container => {
                    let mut c = ContainerConfig::new(dir.join("containers"));
                    c.runtime = cfg.container.runtime.clone();
                    c.net = leases.clone();
                    c.uid_base = cfg.container.uid_base;
                    c.log_cap = cfg.server.job_log_max_bytes;
                    c.dns = cfg.container.dns.clone();
                    c.logs = Some(logs.clone());
                    registry.insert(Box::new(
                        ContainerBackend::probe(c, Some(exits.clone())).await?,
                    ));
                }
                BackendKind::Microvm => return Err(SandboxError::Unavailable { kind }),
            }
        }
        Ok(Backends {
            registry,
            images: ImageStore::new(dir.join("images")),
            uid_base: cfg.container.uid_base,
        })
    }

    /// The sandbox spec for a new runner of `pool`.
    pub async fn spec_for(&self, pool: &PoolConfig, name: &str) -> Result<SandboxSpec, String> {
        let mut spec = SandboxSpec {
            id: name.to_string(),
            runner_name: name.to_string(),
            runner_command: pool.runner_command.clone().unwrap_or_default(),
            backend: BackendSpec::Process,
        };
        if pool.backend == BackendKind::Container {
            let reference = pool.image.clone().unwrap_or_default();
            let images = self.images.clone();
            let base = self.uid_base;
            let (manifest, rootfs) = tokio::task::spawn_blocking(move || {
                let m = images.resolve(&reference).map_err(|e| e.to_string())?;
                let rootfs = images.shifted_rootfs(&m, base).map_err(|e| e.to_string())?;
                Ok::<_, String>((m, rootfs))
            })
            .await
            .map_err(|e| format!("image task: {e}"))??;
            if pool.runner_command.is_none() {
                spec.runner_command = PathBuf::from(&manifest.runner.path);
            }
            spec.backend = BackendSpec::Container(ContainerImage {
                rootfs,
                image: format!("{}@{}", manifest.name, manifest.digest),
                limits: Limits {
                    cpus: pool.cpus,
                    memory_mib: pool.memory_mib,
                    pids_max: pool.pids_max,
                    io_weight: pool.io_weight,
                },
            });
        }
        Ok(spec)
    }
}
