//! The backends a daemon drives, behind the one `Backend` trait: the process backend always, the
//! container backend when a pool asks for it (probed at start-up; a failed probe stops the
//! start with the probe's reasons). A spec with a root filesystem goes to the container backend;
//! id-based operations ask each backend, and `list` is the union, so orphans of either kind are
//! found.
//!
//! It also turns a pool into a sandbox spec: for container pools it resolves the pool's image to
//! its newest build (or the pinned digest) and the user-namespace-shifted copy of its rootfs.

use std::path::PathBuf;

use airlock_config::{BackendKind, Config, PoolConfig};
use airlock_image::ImageStore;
use airlock_sandbox::container::{ContainerBackend, ContainerConfig};
use airlock_sandbox::net::Subnet;
use airlock_sandbox::process::ProcessBackend;
use airlock_sandbox::{Backend, Limits, LogKeep, SandboxError, SandboxSpec, SandboxStatus, Secret};
use async_trait::async_trait;

#[derive(Debug)]
pub struct Backends {
    process: ProcessBackend,
    container: Option<ContainerBackend>,
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
        let wants_container = cfg
            .pools
            .iter()
            .any(|p| p.backend == BackendKind::Container);
        let container = if wants_container {
            let mut c = ContainerConfig::new(dir.join("containers"));
            c.runtime = cfg.container.runtime.clone();
            c.subnet = Subnet::parse(&cfg.container.subnet).ok_or_else(|| SandboxError::Probe {
                backend: "container",
                detail: format!("bad subnet {:?}", cfg.container.subnet),
            })?;
            c.uid_base = cfg.container.uid_base;
            c.log_cap = cfg.server.job_log_max_bytes;
            c.dns = cfg.container.dns.clone();
            c.logs = Some(logs);
            Some(ContainerBackend::probe(c, Some(exits)).await?)
        } else {
            None
        };
        Ok(Backends {
            process,
            container,
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
            rootfs: None,
            image: None,
            limits: Limits::default(),
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
            spec.rootfs = Some(rootfs);
            spec.image = Some(format!("{}@{}", manifest.name, manifest.digest));
            spec.limits = Limits {
                cpus: pool.cpus,
                memory_mib: pool.memory_mib,
                pids_max: pool.pids_max,
                io_weight: pool.io_weight,
            };
        }
        Ok(spec)
    }

    fn all(&self) -> Vec<&dyn Backend> {
        let mut v: Vec<&dyn Backend> = vec![&self.process];
        if let Some(c) = &self.container {
            v.push(c);
        }
        v
    }

    fn for_spec(&self, spec: &SandboxSpec) -> Result<&dyn Backend, SandboxError> {
        match (&spec.rootfs, &self.container) {
            (None, _) => Ok(&self.process),
            (Some(_), Some(c)) => Ok(c),
            (Some(_), None) => Err(SandboxError::Setup {
                id: spec.id.clone(),
                detail: "the container backend is not running".into(),
            }),
        }
    }
}

#[async_trait]
impl Backend for Backends {
    fn kind(&self) -> &'static str {
        "mixed"
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        self.for_spec(spec)?.create(spec).await
    }

    async fn start(&self, spec: &SandboxSpec, jit: &Secret) -> Result<(), SandboxError> {
        self.for_spec(spec)?.start(spec, jit).await
    }

    async fn status(&self, id: &str) -> Result<SandboxStatus, SandboxError> {
        for b in self.all() {
            match b.status(id).await? {
                SandboxStatus::Missing => continue,
                s => return Ok(s),
            }
        }
        Ok(SandboxStatus::Missing)
    }

    async fn list(&self) -> Result<Vec<(String, SandboxStatus)>, SandboxError> {
        let mut out = Vec::new();
        for b in self.all() {
            out.extend(b.list().await?);
        }
        Ok(out)
    }

    async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        // A sandbox the container backend knows is its alone: no need for the process backend's
        // scan of every process's environment.
        if let Some(c) = &self.container {
            if c.status(id).await? != SandboxStatus::Missing {
                return c.destroy(id).await;
            }
        }
        for b in self.all() {
            b.destroy(id).await?;
        }
        Ok(())
    }
}
