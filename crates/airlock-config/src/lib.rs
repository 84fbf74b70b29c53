//! airlock's configuration: the TOML file, its defaults and its validation.
//!
//! `load` reports *every* problem at once, each naming its key and line, instead of stopping at
//! the first as a plain `#[serde(deny_unknown_fields)]` parse would: an operator fixing a config
//! should see the whole list. So the file is parsed into a TOML table and walked key by key, each
//! value deserialised on its own. Secrets are referenced by file path and never read here beyond a
//! permission check; this crate must never log or return a secret's contents.

mod check;
mod lines;
pub mod microvm;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_core::{Labels, PoolSpec, Scope};

pub use airlock_core::{Accel, BackendKind, VmDriver};
pub use check::load_str;
pub use microvm::{MicrovmPool, MicrovmSettings};

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Dotted key, e.g. `github.poll_interval` or `pool[2].labels`.
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match self.line {
            Some(l) => write!(f, "{sev}: line {l}: {}: {}", self.key, self.message),
            None => write!(f, "{sev}: {}: {}", self.key, self.message),
        }
    }
}

/// A config that failed to load: every diagnostic, at least one of them an error.
#[derive(Debug, thiserror::Error)]
#[error("{} in {path}", summary(.diagnostics))]
pub struct ConfigError {
    pub path: String,
    pub diagnostics: Vec<Diagnostic>,
}

fn summary(d: &[Diagnostic]) -> String {
    let n = d.iter().filter(|d| d.severity == Severity::Error).count();
    format!("{n} error{}", if n == 1 { "" } else { "s" })
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    pub server: ServerConfig,
    pub github: GitHubConfig,
    pub container: ContainerSettings,
    pub microvm: MicrovmSettings,
    pub pools: Vec<PoolConfig>,
}

/// `[container]`: how the container backend runs sandboxes (used when a pool says so).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ContainerSettings {
    /// `crun`, `runc`, `youki` or a path; `None`: the first of them whose probe passes.
    pub runtime: Option<String>,
    /// Each sandbox gets a /30 of this IPv4 network.
    pub subnet: String,
    /// Root in a sandbox is this uid (and gid) on the host; 65536 ids from here are used.
    pub uid_base: u32,
    /// Name servers for sandboxes; empty: the host's non-loopback ones.
    pub dns: Vec<std::net::Ipv4Addr>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerConfig {
    /// Webhook, API and metrics.
    pub listen: SocketAddr,
    /// SQLite database, runner logs, sandboxes' files.
    pub state_dir: PathBuf,
    /// On SIGTERM, how long busy runners get to finish their jobs.
    #[serde(with = "humantime_serde_shim")]
    pub drain_grace: Duration,
    /// Each sandbox's runner log is cut at this many bytes (the rest is counted and dropped).
    pub job_log_max_bytes: u64,
    /// How many finished sandboxes' logs are kept under `state_dir/logs` (newest first).
    pub job_logs_keep: usize,
    /// Completed jobs, gone runners, destroyed sandboxes and events older than this are deleted.
    #[serde(with = "humantime_serde_shim")]
    pub history_retention: Duration,
    /// How many creates run at once (and as many stops and reaps beside them).
    pub max_parallel_ops: usize,
    /// Every sandbox's niceness: jobs that saturate the host's cores never starve the daemon.
    pub sandbox_nice: i32,
    /// A job a pool serves still queued this long after GitHub queued it is stuck: an error in
    /// the log with the reason, `airlock_jobs_stuck`, and a line in `airlock status`.
    #[serde(with = "humantime_serde_shim")]
    pub stuck_after: Duration,
    /// Below this many MiB free under the state directory no sandbox is created and airlock
    /// prunes what it owns (0: never); it prunes until `disk_high_mib` are free.
    pub disk_low_mib: u64,
    pub disk_high_mib: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GitHubConfig {
    pub api_url: String,
    pub webhook_secret_file: Option<PathBuf>,
    #[serde(with = "humantime_serde_shim")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde_shim")]
    pub request_timeout: Duration,
    /// The least time between the starts of two writes to GitHub (they never overlap either).
    #[serde(with = "humantime_serde_shim")]
    pub write_interval: Duration,
    pub auth: Auth,
}

#[derive(Debug, Clone, serde::Serialize)]
pub enum Auth {
    Token {
        token_file: PathBuf,
    },
    App {
        /// The JWT issuer: the App's client ID (recommended by GitHub) or its numeric App ID.
        issuer: String,
        private_key_file: PathBuf,
        installation_id: Option<u64>,
    },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolConfig {
    pub name: String,
    pub scope: Scope,
    pub labels: Vec<String>,
    pub runner_group: String,
    pub backend: BackendKind,
    /// The runner program: for the process backend a host path (actions/runner's `run.sh`, or
    /// ghsim's stand-in `airlock-runner`); for containers a path inside the image, `None` taking
    /// the one the image's manifest names.
    pub runner_command: Option<PathBuf>,
    /// The image (`NAME` for its newest build, or `NAME@DIGEST`): container and microVM pools.
    pub image: Option<String>,
    /// The OCI runtime of a container pool's sandboxes (`runsc` for gVisor, or any runtime name
    /// or path); `None`: the host-wide `[container] runtime`.
    pub runtime: Option<String>,
    /// `[pool.microvm]`: microVM pools only.
    pub microvm: Option<MicrovmPool>,
    /// Debian packages the pool's jobs need in its image; `airlock image build NAME --config F`
    /// installs those of every pool using NAME, and `check-config` says when a build lacks some.
    pub packages: Vec<String>,
    pub cpus: Option<f64>,
    pub memory_mib: Option<u64>,
    pub pids_max: Option<i64>,
    pub io_weight: Option<u16>,
    /// The cap on what one sandbox may write, in GiB (container and microVM pools; `None` for
    /// the process backend, which has no cap). Default `microvm::DEFAULT_DISK_GIB`.
    pub disk_gib: Option<u32>,
    pub min_idle: u32,
    pub max_runners: u32,
    /// JIT configs kept ready for this pool (registrations at GitHub that no runner uses yet), so
    /// a burst's runners start without a GitHub round trip.
    pub jit_stock: u32,
    /// A stocked config older than this is replaced (GitHub removes an unused one after a day).
    #[serde(with = "humantime_serde_shim")]
    pub jit_stock_refresh: Duration,
    #[serde(with = "humantime_serde_shim")]
    pub boot_timeout: Duration,
    #[serde(with = "humantime_serde_shim")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde_shim")]
    pub job_timeout: Duration,
    /// `[pool.egress]`: what the pool's sandboxes may reach beyond the isolation all have.
    pub egress: airlock_core::egress::EgressPolicy,
}

impl PoolConfig {
    pub fn spec(&self) -> PoolSpec {
        PoolSpec {
            name: self.name.clone(),
            scope: self.scope.clone(),
            labels: Labels::new(&self.labels),
            min_idle: self.min_idle,
            max_runners: self.max_runners,
            jit_stock: self.jit_stock,
            jit_stock_refresh: self.jit_stock_refresh.as_millis() as i64,
            boot_timeout: self.boot_timeout.as_millis() as i64,
            idle_timeout: self.idle_timeout.as_millis() as i64,
            job_timeout: self.job_timeout.as_millis() as i64,
            // The daemon's (it fingerprints the settings its sandboxes are made from).
            config: String::new(),
        }
    }
}

mod humantime_serde_shim {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/airlock";
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// Sandboxes run at this niceness unless `server.sandbox_nice` says otherwise: under full load a
/// nice-0 daemon thread gets about nine times the CPU of each job process.
pub const DEFAULT_SANDBOX_NICE: i64 = 10;

/// Loads and validates a config file. Warnings come back with the config; any error fails.
pub fn load(path: &Path) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.display().to_string(),
        diagnostics: vec![Diagnostic {
            severity: Severity::Error,
            key: "(file)".into(),
            line: None,
            message: format!("cannot read the config file: {e}"),
        }],
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    load_str(&text, base).map_err(|diagnostics| ConfigError {
        path: path.display().to_string(),
        diagnostics,
    })
}
