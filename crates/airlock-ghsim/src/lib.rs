//! `airlock-ghsim`: a GitHub emulator, so that airlock's real client code can be exercised end to
//! end over HTTP on machines that cannot reach GitHub.
//!
//! It serves the REST operations airlock uses with GitHub's paths, status codes and response
//! shapes (App JWTs verified with the App's public key, expiring installation tokens, rate-limit
//! headers, link pagination, ETags, 409 on a duplicate runner name, 422 when deleting a busy
//! runner), delivers `workflow_job` webhooks signed as GitHub signs them, and speaks a small
//! private protocol (`/_ghsim/runner/*`) with its stand-in runner, `airlock-runner`. Workflows are
//! submitted over `/_ghsim/workflows` (or from a TOML file by the binary). Fault switches
//! (`/_ghsim/faults`) drop, duplicate, delay or reorder webhooks, answer 5xx or rate limits, and
//! add latency.
//!
//! It is a test fixture with production manners: it never panics on bad input, answers every
//! request with GitHub's error shapes, and checks its own JSON against GitHub's published schemas
//! in the conformance tests. It is not a security boundary.

#![recursion_limit = "256"]

mod http;
pub mod model;
mod webhooks;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

pub use model::{SimJob, Status};

/// The enterprise slug every ghsim repository belongs to.
pub const ENTERPRISE: &str = "ghsim";

#[derive(Clone)]
pub struct AppConfig {
    pub app_id: u64,
    pub client_id: String,
    pub public_key_pem: Vec<u8>,
    /// (installation id, account login): the account is a user or org that owns repositories.
    pub installations: Vec<(u64, String)>,
}

#[derive(Clone)]
pub struct SimConfig {
    /// Where `workflow_job` webhooks go (airlock's `/webhook`); none means no webhooks.
    pub webhook_url: Option<String>,
    pub webhook_secret: Vec<u8>,
    /// Bearer tokens accepted as personal access tokens, for every scope.
    pub tokens: Vec<String>,
    pub app: Option<AppConfig>,
    pub installation_token_ttl: Duration,
    /// Primary rate limit per token per hour.
    pub rate_limit: u64,
    /// A busy runner silent this long has its job failed, as GitHub does.
    pub heartbeat_timeout: Duration,
    /// How long `/_ghsim/runner/acquire` holds a request when no job is queued.
    pub long_poll: Duration,
    /// Append every REST exchange as a JSON line here (for the OpenAPI conformance checks).
    pub record: Option<PathBuf>,
    /// A JIT registration no runner ever connected with is removed after this (GitHub: a day).
    pub unused_jit_ttl: Duration,
    /// Registrations per scope past which `generate-jitconfig` is refused (GitHub: 10,000).
    pub max_registrations: usize,
    /// Webhook deliveries in flight at once. GitHub delivers from many workers (its deliveries
    /// "can arrive out of order"); 1 (the default) delivers one after another, the conservative
    /// model the tests use.
    pub webhook_concurrency: usize,
    /// GitHub's clock minus the host's, in seconds: every REST answer's `Date`, App JWT checks,
    /// installation tokens' expiry and rate-limit resets follow the skewed clock (a host whose
    /// clock has drifted, seen from GitHub).
    pub clock_skew_s: i64,
    /// What the App's installations were granted on self-hosted runners (`administration` for
    /// a repository, `organization_self_hosted_runners` for an organization): `"write"` (the
    /// default), `"read"` (lists work, registering and removing runners get 403) or `"none"`.
    pub app_runner_permission: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            webhook_url: None,
            webhook_secret: Vec::new(),
            tokens: Vec::new(),
            app: None,
            installation_token_ttl: Duration::from_secs(3600),
            rate_limit: 5000,
            heartbeat_timeout: Duration::from_secs(15),
            long_poll: Duration::from_secs(20),
            record: None,
            unused_jit_ttl: Duration::from_secs(24 * 3600),
            max_registrations: 10_000,
            webhook_concurrency: 1,
            clock_skew_s: 0,
            app_runner_permission: "write".into(),
        }
    }
}

/// Fault switches. All off by default; counters count down as they fire.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Drop every Nth webhook (0: none).
    pub drop_every: u32,
    /// Deliver every webhook twice, with the same delivery id (as a redelivery would).
    pub duplicate: bool,
    /// Swap each pair of consecutive webhooks.
    pub reorder: bool,
    /// Wait this long before each delivery.
    pub delay_ms: u64,
    /// Answer the next N REST requests with 502.
    pub error_5xx: u32,
    /// Answer the next N REST requests as rate limited (`rate_limit_status`, `retry-after`).
    pub rate_limit: u32,
    /// Answer each REST request with 502 with this chance (in thousandths), as a flaky GitHub
    /// does whatever the traffic.
    pub error_5xx_per_mille: u32,
    /// Answer each REST request as rate limited with this chance (in thousandths).
    pub rate_limit_per_mille: u32,
    pub rate_limit_status: u16,
    pub retry_after_s: u64,
    /// Added to every REST answer.
    pub latency_ms: u64,
    /// How the Actions service answers a runner's connect: `""` (it takes it), `"update"` (it
    /// tells the runner to update itself first: a run-once runner exits 4 after downloading) or
    /// `"deprecated"` (its version is refused: it exits 7 with
    /// `ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE=1`, else 1).
    pub runner_outdated: String,
    /// The next N `generate-jitconfig` requests find their name taken by an offline
    /// registration (as one whose answer was lost leaves behind) and get GitHub's 409.
    pub jit_conflict: u32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// REST requests answered (not counting `/_ghsim`), including 304s.
    pub api_requests: u64,
    pub not_modified: u64,
    pub by_route: BTreeMap<String, u64>,
    pub webhooks_sent: u64,
    pub webhooks_dropped: u64,
    pub webhooks_failed: u64,
    /// REST requests that lacked `Accept: application/vnd.github+json`,
    /// `X-GitHub-Api-Version` or a `User-Agent` (GitHub refuses requests without a user agent).
    pub missing_headers: u64,
    /// The most mutating REST requests (POST, PUT, PATCH, DELETE) ever in flight at once: GitHub
    /// asks integrations never to send them concurrently.
    pub max_concurrent_writes: u64,
    /// Mutating REST requests in flight now.
    #[serde(skip)]
    pub writes_in_flight: u64,
    /// Mutating REST requests received, and the shortest gap between the starts of two
    /// consecutive ones (ms): the pacing an integration keeps.
    pub writes: u64,
    pub min_write_gap_ms: Option<u64>,
    #[serde(skip)]
    pub last_write_start: Option<std::time::Instant>,
    /// JIT registrations removed because no runner ever connected with them in time.
    pub unused_jit_removed: u64,
    /// REST answers the fault switches turned into a 502, and into a rate limit.
    pub injected_5xx: u64,
    pub injected_rate_limits: u64,
    /// `generate-jitconfig` requests the `jit_conflict` fault answered 409.
    pub injected_conflicts: u64,
}

/// A workflow run to submit: jobs with labels and shell steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    pub repo: String,
    #[serde(default = "default_workflow_name")]
    pub name: String,
    #[serde(rename = "job")]
    pub jobs: Vec<JobSpec>,
}

fn default_workflow_name() -> String {
    "CI".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    pub labels: Vec<String>,
    #[serde(default)]
    pub steps: Vec<String>,
    /// Fault switch: this job's webhooks are never delivered (it must be found by polling).
    #[serde(default)]
    pub drop_webhooks: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    pub run_id: u64,
    pub job_ids: Vec<u64>,
}

/// A workflow file: `[[workflow]]` tables, each with `[[workflow.job]]`s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowFile {
    pub workflow: Vec<Workflow>,
}

pub struct Sim {
    cfg: SimConfig,
    world: Mutex<model::World>,
    faults: Mutex<Faults>,
    stats: Mutex<Stats>,
    base: OnceLock<String>,
    webhook_url: Mutex<Option<String>>,
    hooks: mpsc::UnboundedSender<webhooks::HookEvent>,
    job_added: Notify,
    /// installation token -> (installation id, expiry in Unix ms)
    inst_tokens: Mutex<HashMap<String, (u64, i64)>>,
    /// rate-limit key -> (window reset, Unix s; used)
    rate: Mutex<HashMap<String, (i64, u64)>>,
    record: Option<Mutex<std::fs::File>>,
}

/// A running emulator. Dropping it does not stop it; call `shutdown`.
pub struct Running {
    pub addr: SocketAddr,
    pub url: String,
    pub sim: Arc<Sim>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the record file {path}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid workflow: {0}")]
    Workflow(String),
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Sim {
    /// GitHub's time (Unix ms): the host's, skewed by `SimConfig::clock_skew_s`.
    pub fn now_ms(&self) -> i64 {
        now_ms() + self.cfg.clock_skew_s * 1000
    }

    /// Binds `listen` (port 0 picks one) and serves until `shutdown`.
    pub async fn start(cfg: SimConfig, listen: SocketAddr) -> Result<Running, SimError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: listen,
                source,
            })?;
        Sim::serve(cfg, listener, listen)
    }

    /// Serves on a listener bound elsewhere, e.g. in another network namespace, where the
    /// internet would be for sandboxes (its address becomes the API base URL).
    pub async fn start_on(
        cfg: SimConfig,
        listener: std::net::TcpListener,
    ) -> Result<Running, SimError> {
        let listen = listener.local_addr().map_err(|source| SimError::Bind {
            addr: ([0, 0, 0, 0], 0).into(),
            source,
        })?;
        let bind = |source| SimError::Bind {
            addr: listen,
            source,
        };
        listener.set_nonblocking(true).map_err(bind)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(bind)?;
        Sim::serve(cfg, listener, listen)
    }

    fn serve(
        cfg: SimConfig,
        listener: tokio::net::TcpListener,
        listen: SocketAddr,
    ) -> Result<Running, SimError> {
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: listen,
            source,
        })?;
        let record = match &cfg.record {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| SimError::Record {
                        path: p.clone(),
                        source,
                    })?,
            )),
            None => None,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let sim = Arc::new(Sim {
            cfg: cfg.clone(),
            world: Mutex::new(model::World::default()),
            faults: Mutex::new(Faults::default()),
            stats: Mutex::new(Stats::default()),
            base: OnceLock::new(),
            webhook_url: Mutex::new(cfg.webhook_url.clone()),
            hooks: tx,
            job_added: Notify::new(),
            inst_tokens: Mutex::new(HashMap::new()),
            rate: Mutex::new(HashMap::new()),
            record,
        });
        let url = format!("http://{addr}");
        let _ = sim.base.set(url.clone());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let app = http::router(sim.clone());
        let mut srv_stop = stop_rx.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    stopped(&mut srv_stop).await;
                })
                .await;
        });
        let hooks = tokio::spawn(webhooks::deliver(sim.clone(), rx, stop_rx.clone()));
        let watchdog = tokio::spawn(watchdog(sim.clone(), stop_rx));
        Ok(Running {
            addr,
            url,
            sim,
            stop,
            tasks: vec![server, hooks, watchdog],
        })
    }

    pub fn base(&self) -> &str {
        self.base
            .get()
            .map(String::as_str)
            .unwrap_or("http://127.0.0.1")
    }

    fn lock_world(&self) -> std::sync::MutexGuard<'_, model::World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a run with its jobs, all queued, and sends their `queued` webhooks.
    pub fn submit(&self, wf: &Workflow) -> Result<Submitted, SimError> {
        if airlock_core::Scope::parse(&format!("repo:{}", wf.repo)).is_err() {
            return Err(SimError::Workflow(format!(
                "repo {:?} is not OWNER/NAME",
                wf.repo
            )));
        }
        if wf.jobs.is_empty() {
            return Err(SimError::Workflow(
                "a workflow needs at least one job".into(),
            ));
        }
        if let Some(j) = wf.jobs.iter().find(|j| j.labels.is_empty()) {
            return Err(SimError::Workflow(format!(
                "job {:?} has no labels",
                j.name
            )));
        }
        let now = now_ms();
        let mut w = self.lock_world();
        w.repo_id(&wf.repo);
        let run_id = w.id();
        w.runs.insert(
            run_id,
            model::SimRun {
                id: run_id,
                repo: wf.repo.clone(),
                name: wf.name.clone(),
                created_at: model::rfc3339(now),
            },
        );
        let mut ids = Vec::new();
        for spec in &wf.jobs {
            let id = w.id();
            let job = SimJob {
                id,
                run_id,
                repo: wf.repo.clone(),
                name: spec.name.clone(),
                labels: spec.labels.clone(),
                steps: spec.steps.clone(),
                status: Status::Queued,
                conclusion: None,
                runner_id: None,
                runner_name: None,
                created_at: model::rfc3339(now),
                started_at: None,
                completed_at: None,
                created_ms: now,
                started_ms: None,
                completed_ms: None,
                drop_webhooks: spec.drop_webhooks,
                log: String::new(),
            };
            w.jobs.insert(id, job);
            ids.push(id);
        }
        for id in &ids {
            self.emit(&w, *id, "queued");
        }
        drop(w);
        self.job_added.notify_waiters();
        Ok(Submitted {
            run_id,
            job_ids: ids,
        })
    }

    /// Where webhooks go from now on (None: nowhere).
    pub fn set_webhook_url(&self, url: Option<String>) {
        *self.webhook_url.lock().unwrap_or_else(|p| p.into_inner()) = url;
    }

    pub fn webhook_url(&self) -> Option<String> {
        self.webhook_url
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn jobs(&self) -> Vec<SimJob> {
        self.lock_world().jobs.values().cloned().collect()
    }

    pub fn job(&self, id: u64) -> Option<SimJob> {
        self.lock_world().jobs.get(&id).cloned()
    }

    /// Runner registrations: (id, name, online, busy).
    pub fn runners(&self) -> Vec<(u64, String, bool, bool)> {
        self.lock_world()
            .runners
            .values()
            .map(|r| (r.id, r.name.clone(), r.online, r.busy))
            .collect()
    }

    pub fn set_faults(&self, f: Faults) {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = f;
    }

    pub fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Appends one line to the exchange record, if recording.
    fn record(&self, line: &serde_json::Value) {
        if let Some(rec) = &self.record {
            use std::io::Write;
            let mut f = rec.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(f, "{line}");
        }
    }

    /// Queues the webhook for one job's current state.
    fn emit(&self, w: &model::World, job_id: u64, action: &'static str) {
        if self.webhook_url().is_none() {
            return;
        }
        let Some(job) = w.jobs.get(&job_id) else {
            return;
        };
        let wf_name = w
            .runs
            .get(&job.run_id)
            .map(|r| r.name.clone())
            .unwrap_or_default();
        let repo_id = w.repos.get(&job.repo).copied().unwrap_or(1);
        let base = self.base();
        let owner = job.repo.split('/').next().unwrap_or_default();
        let mut payload = serde_json::json!({
            "action": action,
            "workflow_job": model::job_json(base, job, &wf_name, true),
            "repository": model::repository(base, &job.repo, repo_id),
            "sender": model::user(base, "octocat", 1, "User"),
            "enterprise": {
                "id": 1, "slug": ENTERPRISE, "name": "ghsim", "node_id": "E_kgDO1",
                "avatar_url": "https://avatars.example.invalid/b/1", "description": null, "website_url": null,
                "html_url": "https://github.example.invalid/enterprises/ghsim",
                "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"
            }
        });
        if let Some(app) = &self.cfg.app {
            if let Some((id, _)) = app
                .installations
                .iter()
                .find(|(_, acct)| acct.eq_ignore_ascii_case(owner))
            {
                payload["installation"] = serde_json::json!({ "id": id, "node_id": format!("MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9u{id}") });
            }
        }
        self.record(&serde_json::json!({ "webhook": "workflow_job", "action": action, "payload": &payload }));
        let body = serde_json::to_vec(&payload).expect("JSON values serialise");
        let _ = self.hooks.send(webhooks::HookEvent {
            body,
            drop: job.drop_webhooks,
        });
    }
}

/// Fails the jobs of busy runners that stopped heartbeating, and marks silent idle runners
/// offline, as GitHub does ("lost communication with the server").
async fn watchdog(sim: Arc<Sim>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let timeout = sim.cfg.heartbeat_timeout;
        let idle_timeout = timeout + sim.cfg.long_poll;
        let mut w = sim.lock_world();
        let mut lost = Vec::new();
        let ttl = sim.cfg.unused_jit_ttl;
        let before = w.runners.len();
        w.runners
            .retain(|_, r| r.connected || r.created.elapsed() <= ttl);
        let expired = (before - w.runners.len()) as u64;
        if expired > 0 {
            sim.stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unused_jit_removed += expired;
        }
        for r in w.runners.values_mut() {
            let silent = r.last_seen.elapsed();
            if r.busy && silent > timeout {
                lost.push((r.id, r.job));
            } else if r.online && !r.busy && silent > idle_timeout {
                r.online = false;
            }
        }
        for (runner, job) in lost {
            w.runners.remove(&runner);
            if let Some(id) = job {
                http::finish_job(
                    &sim,
                    &mut w,
                    id,
                    "failure",
                    "The runner lost communication with the server.",
                );
            }
        }
    }
}

/// Resolves once `rx` has seen `true` (or its sender is gone).
pub(crate) async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
