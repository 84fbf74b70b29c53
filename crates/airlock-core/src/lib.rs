//! airlock's pure core: the domain types (jobs, runners, sandboxes, pools), their lifecycles and the
//! planner that turns "what GitHub wants" and "what exists" into a list of operations.
//!
//! Nothing here does I/O, reads the clock or can fail on the outside world: time comes in as an
//! argument, and every function is deterministic. That is what makes the planner testable with
//! tables of cases, and what the rest of airlock relies on when it replays a pass after a crash.

pub mod egress;
pub mod health;
pub mod labels;
pub mod planner;
pub mod state;
pub mod stock;

pub use labels::Labels;
pub use planner::{
    choose_pool, next_due, plan, JobView, Op, PlanInput, PoolSpec, RegistrationView, RunnerView,
    StopReason,
};
pub use state::{JobStatus, RunnerState, SandboxState, Step, TransitionError};
pub use stock::{next_stock_due, plan_stock, StockOp, StockView};

/// Milliseconds since the Unix epoch. The core never reads the clock; callers pass `now`.
pub type Timestamp = i64;

/// The default least time between the starts of two writes to GitHub. GitHub's secondary limits
/// allow 900 points a minute per endpoint at 5 points a write (180 writes a minute), which is
/// also about the 10,000 JIT registrations an hour integrations see in practice; its general
/// advice for many writes is a second apart (`github.write_interval = "1s"`).
pub const DEFAULT_WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(340);

/// The kind of sandbox a pool's runners live in; each kind is one backend.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Runner as a child process: NOT isolated. Development and demos only.
    Process,
    /// Runner in a fresh OCI container from the pool's image.
    Container,
    /// Runner in a fresh virtual machine booted from the pool's image.
    Microvm,
}

impl BackendKind {
    pub const ALL: [BackendKind; 3] = [
        BackendKind::Process,
        BackendKind::Container,
        BackendKind::Microvm,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            BackendKind::Process => "process",
            BackendKind::Container => "container",
            BackendKind::Microvm => "microvm",
        }
    }

    pub fn parse(s: &str) -> Option<BackendKind> {
        BackendKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The virtual machine monitor a microVM pool boots its VMs with.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum VmDriver {
    #[default]
    Qemu,
    Firecracker,
    CloudHypervisor,
}

impl VmDriver {
    pub const ALL: [VmDriver; 3] = [
        VmDriver::Qemu,
        VmDriver::Firecracker,
        VmDriver::CloudHypervisor,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            VmDriver::Qemu => "qemu",
            VmDriver::Firecracker => "firecracker",
            VmDriver::CloudHypervisor => "cloud-hypervisor",
        }
    }

    pub fn parse(s: &str) -> Option<VmDriver> {
        VmDriver::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// How a microVM's CPU is virtualised: hardware (KVM), software emulation (TCG, QEMU only), or
/// KVM where a probe boot shows it works and TCG otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(&self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    pub fn parse(s: &str) -> Option<Accel> {
        [Accel::Auto, Accel::Kvm, Accel::Tcg]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// The scope at which a pool registers its runners (and GitHub's runner endpoints live).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Scope {
    Repo { owner: String, name: String },
    Org(String),
    Enterprise(String),
}

impl Scope {
    /// Parses `repo:OWNER/NAME`, `org:NAME` or `enterprise:SLUG`.
    pub fn parse(s: &str) -> Result<Scope, String> {
        let (kind, rest) = s.split_once(':').ok_or_else(|| {
            format!("expected repo:OWNER/NAME, org:NAME or enterprise:SLUG, got {s:?}")
        })?;
        let valid = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        match kind {
            "repo" => match rest.split_once('/') {
                Some((o, n)) if valid(o) && valid(n) => Ok(Scope::Repo {
                    owner: o.to_string(),
                    name: n.to_string(),
                }),
                _ => Err(format!("expected repo:OWNER/NAME, got {s:?}")),
            },
            "org" if valid(rest) => Ok(Scope::Org(rest.to_string())),
            "enterprise" if valid(rest) => Ok(Scope::Enterprise(rest.to_string())),
            _ => Err(format!(
                "expected repo:OWNER/NAME, org:NAME or enterprise:SLUG, got {s:?}"
            )),
        }
    }

    /// The REST path prefix of this scope's runner endpoints, without a leading slash.
    pub fn runners_path(&self) -> String {
        match self {
            Scope::Repo { owner, name } => format!("repos/{owner}/{name}/actions/runners"),
            Scope::Org(o) => format!("orgs/{o}/actions/runners"),
            Scope::Enterprise(e) => format!("enterprises/{e}/actions/runners"),
        }
    }

    /// Whether a job of repository `repo` ("owner/name"), in organization `org` and enterprise
    /// `enterprise` (as a webhook or the poll reported them), may be served by this scope.
    pub fn covers(&self, repo: &str, enterprise: Option<&str>) -> bool {
        match self {
            Scope::Repo { owner, name } => repo.eq_ignore_ascii_case(&format!("{owner}/{name}")),
            Scope::Org(o) => repo
                .split_once('/')
                .is_some_and(|(owner, _)| owner.eq_ignore_ascii_case(o)),
            Scope::Enterprise(e) => enterprise.is_some_and(|x| x.eq_ignore_ascii_case(e)),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Repo { owner, name } => write!(f, "repo:{owner}/{name}"),
            Scope::Org(o) => write!(f, "org:{o}"),
            Scope::Enterprise(e) => write!(f, "enterprise:{e}"),
        }
    }
}

/// The prefix of every runner name airlock registers. Registrations with this prefix that no
/// live runner in the store owns are orphans and get deleted.
pub const RUNNER_PREFIX: &str = "airlock-";

/// `airlock-<pool>-<id>`: unique, recognisable, and tells an operator which pool made it.
pub fn runner_name(pool: &str, id: &str) -> String {
    format!("{RUNNER_PREFIX}{pool}-{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_cover() {
        let r = Scope::parse("repo:octo/hello").unwrap();
        assert_eq!(r.runners_path(), "repos/octo/hello/actions/runners");
        assert!(r.covers("Octo/Hello", None));
        assert!(!r.covers("octo/other", None));
        let o = Scope::parse("org:octo").unwrap();
        assert!(o.covers("octo/anything", None));
        assert!(!o.covers("octopus/x", None));
        let e = Scope::parse("enterprise:big").unwrap();
        assert!(e.covers("a/b", Some("big")));
        assert!(!e.covers("a/b", None));
        for bad in [
            "",
            "repo:",
            "repo:x",
            "repo:/x",
            "org:",
            "team:x",
            "org:a b",
            "repo:a/b/c",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(r.to_string(), "repo:octo/hello");
    }
}

/// What airlock learned about one job, from a webhook or from polling. GitHub's JSON is turned
/// into this by `airlock-github`; nothing past that crate sees GitHub's field names.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobObservation {
    pub id: u64,
    pub run_id: u64,
    /// `owner/name`.
    pub repo: String,
    pub enterprise: Option<String>,
    pub name: String,
    pub labels: Labels,
    pub status: JobStatus,
    pub conclusion: Option<String>,
    pub runner_name: Option<String>,
    pub created_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
}

/// Whether `id` is a safe sandbox id: it becomes directory and file names, so 1 to 64 ASCII
/// letters, digits and `-`, not starting with `-`.
pub fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !id.starts_with('-')
}
