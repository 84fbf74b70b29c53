//! Sandbox backends: where a runner lives and dies. One trait, one implementation per kind of
//! isolation, chosen by an enum and probed at start-up by running something tiny.
//!
//! A backend creates, starts, observes, lists and destroys sandboxes. It must never touch the
//! store or call GitHub: it knows sandbox ids and runner programs, nothing else. Destroy is
//! idempotent and correct even when create only half-finished; list reports what really exists
//! (not what the store believes), which is how orphans are found after a crash. The runner's JIT
//! config reaches it only through the environment of the runner process — never argv, never a
//! world-readable file.

mod cgroup;
pub mod container;
pub mod microvm;
pub mod ocispec;
pub mod process;
pub mod registry;
mod supervise;

pub use airlock_core::BackendKind;
pub use registry::{Listed, Registry};
pub use supervise::LogKeep;

use std::path::PathBuf;

use async_trait::async_trait;

/// The one-time runner config. Its `Debug` never prints the value.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub id: String,
    pub runner_name: String,
    /// The runner program to start (actions/runner's `run.sh`, or ghsim's `airlock-runner`);
    /// for image-based backends, its path inside the image.
    pub runner_command: PathBuf,
    /// What only one backend needs; its variant decides which backend makes the sandbox.
    pub backend: BackendSpec,
    /// The pool it is for (egress reports and metrics).
    pub pool: String,
    /// Its pool's egress policy, enforced outside the sandbox (containers and microVMs: the
    /// process backend has no network of its own).
    pub egress: airlock_core::egress::EgressPolicy,
}

/// What every runner's environment gets from airlock, whatever its backend: GitHub's runner
/// exits with 7 (instead of 1) when its version is deprecated, so that the daemon can tell an
/// outdated image from a failing runner (`airlock_core::health::outdated_exit`).
pub const RUNNER_ENV: &[(&str, &str)] =
    &[("ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE", "1")];

/// The digests of the images the sandboxes under `state_dir` were made from (container and
/// microVM sandboxes record theirs): what an image removal or `gc` must keep.
pub fn images_in_use(state_dir: &std::path::Path) -> std::collections::HashSet<String> {
    container::ContainerBackend::images_in_use(&state_dir.join("containers"))
        .into_iter()
        .chain(microvm::MicrovmBackend::images_in_use(
            &state_dir.join("vms"),
        ))
        .filter_map(|r| r.split_once('@').map(|(_, d)| d.to_string()))
        .collect()
}

/// The per-backend part of a sandbox spec.
#[derive(Debug, Clone)]
pub enum BackendSpec {
    /// A child process on the host: nothing more to say.
    Process,
    Container(ContainerImage),
    Microvm(VmImage),
}

impl BackendSpec {
    pub fn kind(&self) -> BackendKind {
        match self {
            BackendSpec::Process => BackendKind::Process,
            BackendSpec::Container(_) => BackendKind::Container,
            BackendSpec::Microvm(_) => BackendKind::Microvm,
        }
    }
}

/// A container sandbox's image and limits.
#[derive(Debug, Clone)]
pub struct ContainerImage {
    /// The image's root filesystem, owned as the backend's user namespace expects.
    pub rootfs: PathBuf,
    /// `NAME@sha256:…` of the image, recorded so an image in use is never removed.
    pub image: String,
    pub limits: Limits,
    /// The OCI runtime (a name looked up in PATH, or a path: `runsc` for gVisor); `None`: the
    /// backend's host-wide one.
    pub runtime: Option<String>,
    /// The cap on what the job may write to its root filesystem, in GiB: the overlay's
    /// writable layer is a filesystem of this size (`container::disk`); `None`: no cap (the
    /// layer is a directory on the state directory's filesystem).
    pub disk_gib: Option<u32>,
}

/// A microVM sandbox's boot files, size and driver.
#[derive(Debug, Clone)]
pub struct VmImage {
    /// `NAME@sha256:…` of the image, recorded so an image in use is never removed.
    pub image: String,
    /// The image's read-only root filesystem disk (ext4, raw).
    pub disk: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub driver: airlock_core::VmDriver,
    /// What the pool asked for (`auto` is settled by the backend's probe of this kernel).
    pub accel: airlock_core::Accel,
    pub cpus: u32,
    pub memory_mib: u64,
    /// The per-job writable disk's size, and so the guest root filesystem's.
    pub disk_gib: u32,
    /// Start dockerd in the guest before the runner.
    pub docker: bool,
}

/// Resource limits of one sandbox (containers; the process backend has none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub cpus: Option<f64>,
    pub memory_mib: Option<u64>,
    pub pids_max: Option<i64>,
    pub io_weight: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxStatus {
    /// Made but not started.
    Created,
    Running,
    /// The runner process ended; its exit code when known (None: killed, or its supervisor was).
    Exited(Option<i32>),
    /// Nothing of it exists.
    Missing,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot create sandbox {id} at {path}")]
    Create {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the runner {command} in sandbox {id}: {source}")]
    Start {
        id: String,
        command: PathBuf,
        source: std::io::Error,
    },
    #[error("sandbox {id} does not exist")]
    Missing { id: String },
    #[error("cannot destroy sandbox {id}: {detail}")]
    Destroy { id: String, detail: String },
    #[error("cannot list sandboxes in {path}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {backend} backend failed its probe: {detail}")]
    Probe {
        backend: &'static str,
        detail: String,
    },
    #[error("no {kind} backend is running (no pool asked for one at start, or its probe failed)")]
    Unavailable { kind: BackendKind },
    #[error("invalid sandbox id {id:?}")]
    BadId { id: String },
    #[error("sandbox {id}: {detail}")]
    Setup { id: String, detail: String },
}

/// Runs a backend's synchronous work (mounts, links, file trees, cgroups) on tokio's blocking
/// pool, so that it holds neither a runtime thread nor the other operations of a daemon pass.
pub(crate) async fn blocking<T, F>(id: &str, f: F) -> Result<T, SandboxError>
where
    F: FnOnce() -> Result<T, SandboxError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(SandboxError::Setup {
            id: id.into(),
            detail: format!("interrupted: {e}"),
        }),
    }
}

#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> BackendKind;
    /// Makes the sandbox without starting anything in it.
    async fn create(&self, spec: &SandboxSpec) -> Result<(), SandboxError>;
    /// Starts the runner with its JIT config.
    async fn start(&self, spec: &SandboxSpec, jit: &Secret) -> Result<(), SandboxError>;
    async fn status(&self, id: &str) -> Result<SandboxStatus, SandboxError>;
    /// Every sandbox that exists, whatever the store thinks.
    async fn list(&self) -> Result<Vec<(String, SandboxStatus)>, SandboxError>;
    /// Removes the sandbox and everything in it; succeeds if it is already gone.
    async fn destroy(&self, id: &str) -> Result<(), SandboxError>;
}

/// Sandbox ids become directory names: keep them to a safe alphabet.
pub fn check_id(id: &str) -> Result<(), SandboxError> {
    if airlock_core::safe_id(id) {
        Ok(())
    } else {
        Err(SandboxError::BadId { id: id.to_string() })
    }
}
