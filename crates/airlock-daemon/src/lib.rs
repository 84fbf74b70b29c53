//! The airlock daemon: wiring of the store, the GitHub client, a sandbox backend, the control
//! loop, the poller and the HTTP side (webhook, API, metrics).
//!
//! The control loop is level-triggered: webhooks, runner exits, polls and the next deadline (a
//! timeout, a backoff's end; at the latest `reconcile::RESYNC`) only *wake* it; each pass reads what exists (store, backend) and what is wanted (open jobs), asks the
//! pure planner for operations and performs them. A lost, duplicated or reordered event therefore
//! changes nothing, and a pass interrupted by a crash is simply repeated after restart.

mod backends;
mod backoff;
mod disk;
pub mod doctor;
mod egress;
mod executor;
mod health;
mod http;
pub mod metrics;
mod ops;
mod poll;
mod pools;
mod reconcile;
mod reload;
mod stock;
mod view;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_config::{Auth, Config};
use airlock_core::RegistrationView;
use airlock_github::{AppCredentials, Client, ClientOptions, Credentials};
use airlock_store::Store;
use tokio::sync::{watch, Notify};

pub use metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the state directory {path}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start the store's thread")]
    StoreThread(#[source] std::io::Error),
    #[error("cannot read {what} from {path}")]
    Secret {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] airlock_store::StoreError),
    #[error(transparent)]
    GitHub(#[from] airlock_github::GitHubError),
    #[error(transparent)]
    Sandbox(#[from] airlock_sandbox::SandboxError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Mutable state shared by the loop, the poller and the HTTP side. Never held across an await.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The latest registrations GitHub listed, for orphan reaping and runner states.
    registrations: Vec<RegistrationView>,
    group_ids: HashMap<String, u64>,
    /// No creates at all before this: GitHub said it is rate-limiting us.
    rate_limited_until: Option<Instant>,
    /// Backoffs per pool and error class (creates) and per object (stops, reaps), so a pool that
    /// cannot create (a refused microVM pool, a missing image) never holds back the others.
    backoffs: backoff::Backoffs,
    /// Per pool: its JIT stock (memory only: the configs are credentials).
    stock: HashMap<String, stock::PoolStock>,
    draining: bool,
    /// Unix ms at which the last complete poll started (see the planner's `unaccounted`).
    last_poll_start: i64,
    /// The stock's requests in flight (a pass does not wait for them; a drain does).
    stock_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The plan's operations in flight and the objects they own.
    inflight: executor::InFlight,
    /// Pools whose per-pool series the metrics hold (see `reconcile::update_gauges`).
    gauged_pools: std::collections::BTreeSet<String>,
}

pub struct Inner {
    /// The config the daemon started with, but for its pools (`pools`): a reload changes only
    /// those, the rest waits for a restart. Its `pools` is empty.
    cfg: Config,
    /// The pools as the last load or reload left them (configs and the planner's specs).
    pools: std::sync::RwLock<Arc<pools::PoolSet>>,
    /// The config file a reload reads (set by `serve`; `None`: the daemon was started from a
    /// config in memory, which only `Handle::reload` can replace).
    config_path: std::sync::OnceLock<std::path::PathBuf>,
    store: Db,
    github: Client,
    backend: backends::Backends,
    pub metrics: Arc<Metrics>,
    wake: Notify,
    poll_now: Notify,
    shared: Mutex<Shared>,
    /// Where the plan's operations run (`server.max_parallel_ops` creates, as many others).
    slots: executor::Slots,
    /// Each pool's health: degraded, image outdated (see `health`).
    health: health::Health,
    /// The state directory's free space, and whether it is below the low-water mark.
    disk: disk::Disk,
    webhook_secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("state_dir", &self.cfg.server.state_dir)
            .finish()
    }
}

impl Inner {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pools now: kept by the caller for what it is doing (a reload swaps in a new set).
    pub(crate) fn pools(&self) -> Arc<pools::PoolSet> {
        self.pools.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the pools with `new`'s (see `reload`) and says what changed.
    pub(crate) fn apply_reload(self: &Arc<Self>, new: &Config) -> Reload {
        // A pool on a backend this daemon did not start (no pool used it) waits for a restart;
        // its earlier version, if any, stays.
        let running = self.backend.registry.kinds();
        let mut new = new.clone();
        let mut waiting = Vec::new();
        let now_set = self.pools();
        new.pools = new
            .pools
            .into_iter()
            .filter_map(|p| {
                if running.contains(&p.backend) {
                    return Some(p);
                }
                waiting.push(format!(
                    "pool {} (its backend, {}, is not running: a restart starts it)",
                    p.name,
                    p.backend.as_str()
                ));
                now_set.cfg(&p.name).cloned()
            })
            .collect();
        let r = {
            let mut now = self.pools.write().unwrap_or_else(|p| p.into_inner());
            let mut r = reload::diff(&self.cfg, &now, &new);
            r.needs_restart.extend(waiting);
            *now = Arc::new(pools::PoolSet::new(&new.pools));
            r
        };
        for a in &r.applied {
            tracing::info!(change = %a, "reloaded");
        }
        if !r.needs_restart.is_empty() {
            tracing::warn!(
                changed = %r.needs_restart.join(", "),
                "the reloaded config changes what only a restart applies; left as it was"
            );
        }
        if !r.applied.is_empty() {
            // Added microVM pools are probed before they create; then a pass plans the change.
            let i = self.clone();
            tokio::spawn(async move {
                let set = i.pools();
                i.backend.probe_pools(&set.cfgs).await;
                i.wake.notify_one();
            });
            self.poll_now.notify_one();
        }
        r
    }

    /// Reads and checks the config file the daemon was started with, then `apply_reload`. An
    /// invalid config changes nothing: its problems come back, one a line.
    pub(crate) fn reload_file(self: &Arc<Self>) -> Result<Reload, ReloadError> {
        let Some(path) = self.config_path.get() else {
            return Err(ReloadError::NoFile);
        };
        match airlock_config::load(path) {
            Ok((new, warnings)) => {
                for w in warnings {
                    tracing::warn!(config = %path.display(), "{w}");
                }
                Ok(self.apply_reload(&new))
            }
            Err(e) => {
                let problems: Vec<String> = e.diagnostics.iter().map(|d| d.to_string()).collect();
                for p in &problems {
                    tracing::error!(config = %path.display(), "{p}");
                }
                tracing::error!(config = %path.display(), "the config does not load: nothing reloaded, the running one stays");
                Err(ReloadError::Invalid {
                    path: path.display().to_string(),
                    problems,
                })
            }
        }
    }

    /// A microVM pool's accelerator (`kvm`, `tcg`, `refused`) and why, once its probe ran.
    pub fn pool_accel(&self, pool: &str) -> Option<(&'static str, Option<String>)> {
        self.backend
            .accel(pool)
            .map(|a| (a.label(), a.warning().map(str::to_string)))
    }

    pub fn store(&self) -> &Store {
        self.store.sync()
    }
}

/// The store, called on a thread of its own: a SQLite call (a few ms, more on a slow disk) never
/// holds a runtime thread. The one connection is used by one thread, which takes the calls from
/// a channel; the calls waiting there when it looks are run together in one transaction (group
/// commit, `Store::batch`: each call still a savepoint of its own) and answered once it is
/// committed. So a burst's calls cost one commit per batch instead of one each, and no caller is
/// told of a write that was not kept. Webhook deliveries (`call_first`) are batched ahead of the
/// daemon's own calls: their sender waits on the answer.
#[derive(Debug, Clone)]
pub(crate) struct Db {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// (first: ahead of the others, the call).
    calls: std::sync::mpsc::Sender<(bool, StoreCall)>,
}

/// A call runs on the store's thread and returns how to answer its caller once its batch is
/// committed (or not).
type StoreCall = Box<dyn FnOnce(&Store) -> Answer + Send>;
type Answer = Box<dyn FnOnce(Result<(), airlock_store::StoreError>) + Send>;

/// The most calls one commit takes.
const BATCH_MAX: usize = 64;

impl Db {
    fn new(store: Store, metrics: Arc<Metrics>) -> Result<Db, StartError> {
        let store = Arc::new(store);
        let (calls, rx) = std::sync::mpsc::channel::<(bool, StoreCall)>();
        let (s, m) = (store.clone(), metrics.clone());
        std::thread::Builder::new()
            .name("airlock-store".into())
            .spawn(move || serve_store(&s, &m, rx))
            .map_err(StartError::StoreThread)?;
        Ok(Db {
            store,
            metrics,
            calls,
        })
    }

    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, airlock_store::StoreError>
    where
        F: FnOnce(&Store) -> Result<T, airlock_store::StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.call_as(false, f).await
    }

    /// A call ahead of the others queued: for a caller someone outside waits on (a webhook's
    /// sender), never for the daemon's own bookkeeping.
    pub(crate) async fn call_first<T, F>(&self, f: F) -> Result<T, airlock_store::StoreError>
    where
        F: FnOnce(&Store) -> Result<T, airlock_store::StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.call_as(true, f).await
    }

    async fn call_as<T, F>(&self, first: bool, f: F) -> Result<T, airlock_store::StoreError>
    where
        F: FnOnce(&Store) -> Result<T, airlock_store::StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let t0 = std::time::Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let call: StoreCall = Box::new(move |store| {
            // A panic is the caller's, not the thread's: it is raised again in the caller.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(store)));
            Box::new(move |kept| {
                let r = match (r, kept) {
                    (Ok(Ok(_)), Err(e)) => Ok(Err(e)),
                    (r, _) => r,
                };
                let _ = tx.send(r);
            })
        });
        let r = match self.calls.send((first, call)) {
            Err(_) => Err(airlock_store::StoreError::Interrupted(
                "the store's thread has ended".into(),
            )),
            Ok(()) => match rx.await {
                Ok(Ok(r)) => r,
                Ok(Err(panic)) => std::panic::resume_unwind(panic),
                Err(_) => Err(airlock_store::StoreError::Interrupted(
                    "the store's thread dropped the call".into(),
                )),
            },
        };
        self.metrics
            .store_call_seconds
            .observe(t0.elapsed().as_secs_f64());
        r
    }

    /// The store itself, for callers off the runtime (tests, the CLI's reads).
    pub(crate) fn sync(&self) -> &Store {
        &self.store
    }
}

/// The store's thread: ends when the last `Db` is dropped. Calls marked first (a webhook
/// delivery, whose sender waits on the answer) go in batches of their own ahead of the rest, so a
/// delivery never waits behind calls queued before it, only behind the batch already running.
fn serve_store(s: &Store, m: &Metrics, rx: std::sync::mpsc::Receiver<(bool, StoreCall)>) {
    let (mut first, mut rest) = (VecDeque::new(), VecDeque::new());
    loop {
        let mut arrived = Vec::new();
        if first.is_empty() && rest.is_empty() {
            match rx.recv() {
                Ok(call) => arrived.push(call),
                Err(_) => return,
            }
        }
        arrived.extend(rx.try_iter());
        for (urgent, c) in arrived {
            if urgent { &mut first } else { &mut rest }.push_back(c);
        }
        let queue = if first.is_empty() {
            &mut rest
        } else {
            &mut first
        };
        let mut batch: Vec<StoreCall> = queue.drain(..queue.len().min(BATCH_MAX)).collect();
        let (t0, n) = (std::time::Instant::now(), batch.len());
        let answers: Vec<(Answer, _)> = if n == 1 {
            let call = batch.pop().expect("one call");
            vec![(call(s), Ok(()))]
        } else {
            s.batch(
                batch
                    .into_iter()
                    .map(|c| c as Box<dyn FnOnce(&Store) -> Answer>)
                    .collect(),
            )
        };
        let each = t0.elapsed().as_secs_f64() / n as f64;
        m.store_batch_calls.observe(n as f64);
        for (answer, kept) in answers {
            m.store_work_seconds.observe(each);
            answer(kept);
        }
    }
}

/// A running daemon.
pub struct Handle {
    pub addr: SocketAddr,
    pub inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a drain left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Busy runners that did not finish within the grace period and were destroyed.
    pub forced: usize,
}

/// The GitHub client of `cfg`, its credentials read from their files.
pub(crate) fn github_client(
    cfg: &Config,
    observer: Option<airlock_github::RequestObserver>,
) -> Result<Client, StartError> {
    let credentials = match &cfg.github.auth {
        Auth::Token { token_file } => {
            Credentials::Token(read_secret("the GitHub token", token_file)?)
        }
        Auth::App {
            issuer,
            private_key_file,
            installation_id,
        } => Credentials::App(AppCredentials {
            issuer: issuer.clone(),
            private_key_pem: read_secret("the GitHub App private key", private_key_file)?
                .into_bytes(),
            installation_id: *installation_id,
        }),
    };
    Ok(Client::new(
        &cfg.github.api_url,
        credentials,
        ClientOptions {
            timeout: cfg.github.request_timeout,
            observer,
            write_interval: cfg.github.write_interval,
        },
    )?)
}

fn read_secret(what: &'static str, path: &Path) -> Result<String, StartError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| StartError::Secret {
            what,
            path: path.display().to_string(),
            source,
        })
}

/// Starts the daemon: opens the store, probes the backend, recovers from an interrupted run,
/// binds the HTTP listener and starts the loop and the poller.
pub async fn start(cfg: Config) -> Result<Handle, StartError> {
    start_inner(cfg, Vec::new()).await
}

/// What a test puts in place of the daemon's side effects (feature `test-util`, never in the
/// production binary).
#[cfg(feature = "test-util")]
#[derive(Debug, Default)]
pub struct Seams {
    /// Each replaces the daemon's own backend of its kind once the probes have run: the control
    /// loop, the store and GitHub are real, the sandboxes are whatever the test scripts.
    pub backends: Vec<Arc<dyn airlock_sandbox::Backend>>,
}

/// `start`, with some of what it drives replaced (see `Seams`).
#[cfg(feature = "test-util")]
pub async fn start_with(cfg: Config, seams: Seams) -> Result<Handle, StartError> {
    start_inner(cfg, seams.backends).await
}

async fn start_inner(
    cfg: Config,
    replace: Vec<Arc<dyn airlock_sandbox::Backend>>,
) -> Result<Handle, StartError> {
    let dir = cfg.server.state_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| StartError::StateDir {
        path: dir.display().to_string(),
        source,
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        // Searchable but not listable: container sandboxes' root users (unprivileged on the
        // host) must pass through to their rootfs; every file here has its own mode.
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711));
    }
    let store = Store::open(&dir.join("airlock.db"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["airlock.db", "airlock.db-wal", "airlock.db-shm"] {
            let _ = std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600));
        }
    }
    let metrics = Arc::new(Metrics::default());

    let m = metrics.clone();
    let observer: airlock_github::RequestObserver = Arc::new(move |method, status| {
        m.github_requests
            .get_or_create(&metrics::RequestLabels {
                method: method.to_string(),
                status: status.to_string(),
            })
            .inc();
    });
    let github = github_client(&cfg, Some(observer))?;
    let webhook_secret = match &cfg.github.webhook_secret_file {
        Some(p) => Some(read_secret("the webhook secret", p)?.into_bytes()),
        None => None,
    };

    let (exit_tx, mut exit_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut backend = backends::Backends::start(&cfg, exit_tx).await?;
    for b in replace {
        backend.registry.insert(b);
    }

    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: cfg.server.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: cfg.server.listen,
        source,
    })?;

    let mut cfg = cfg;
    let pools = pools::PoolSet::new(&std::mem::take(&mut cfg.pools));
    let inner = Arc::new(Inner {
        pools: std::sync::RwLock::new(Arc::new(pools)),
        config_path: std::sync::OnceLock::new(),
        slots: executor::Slots::new(cfg.server.max_parallel_ops),
        cfg,
        store: Db::new(store, metrics.clone())?,
        github,
        backend,
        metrics,
        wake: Notify::new(),
        poll_now: Notify::new(),
        shared: Mutex::new(Shared::default()),
        health: health::Health::default(),
        disk: disk::Disk::default(),
        webhook_secret,
    });
    if inner.webhook_secret.is_none() {
        tracing::warn!("no webhook secret configured: every webhook is refused; jobs are found by polling only");
    }
    reconcile::recover(&inner)?;

    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let app = http::router(inner.clone());
    let mut srv_stop = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                stopped(&mut srv_stop).await;
            })
            .await;
    }));
    let i = inner.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(_id) = exit_rx.recv().await {
            i.wake.notify_one();
        }
    }));
    let i = inner.clone();
    tasks.push(tokio::spawn(async move {
        i.backend.probe_pools(&i.pools().cfgs).await;
        i.wake.notify_one();
    }));
    tasks.push(tokio::spawn(reconcile::run(inner.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(egress::run(inner.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(health::watch(inner.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(poll::run(inner.clone(), stop_rx)));
    tracing::info!(%addr, state_dir = %inner.cfg.server.state_dir.display(), "airlock is running");
    Ok(Handle {
        addr,
        inner,
        stop,
        tasks,
    })
}

pub use reload::Reload;

/// Why a reload from the config file changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this daemon was not started from a config file")]
    NoFile,
    #[error("{path} does not load ({} problems): nothing reloaded", problems.len())]
    Invalid { path: String, problems: Vec<String> },
}

impl Handle {
    /// Replaces the pools with `new`'s: added ones are served, removed ones drained (busy
    /// runners finish), changed ones' runners replaced once not busy; what only a restart
    /// applies (`[server]`, `[github]`, `[container]`, `[microvm]`) is named and left.
    pub fn reload(&self, new: &Config) -> Reload {
        self.inner.apply_reload(new)
    }

    /// The file `reload_file` (SIGHUP, `airlock reload`) reads.
    pub fn set_config_path(&self, path: &Path) {
        let _ = self.inner.config_path.set(path.to_path_buf());
    }

    /// Reads the config file again and reloads it, or refuses it with its problems.
    pub fn reload_file(&self) -> Result<Reload, ReloadError> {
        self.inner.reload_file()
    }

    /// Graceful shutdown: stop creating runners, remove idle ones, give busy ones `grace` to
    /// finish their jobs, destroy what is left, then stop.
    pub async fn drain(self, grace: Duration) -> DrainReport {
        self.inner.shared().draining = true;
        self.inner.wake.notify_one();
        let deadline = Instant::now() + grace;
        loop {
            let live = self
                .inner
                .store
                .call(|s| s.live_runners())
                .await
                .unwrap_or_default();
            if live.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The loop first (it starts nothing more), then the operations it started, so that
        // nothing is being made while what is left is destroyed.
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let running = self.inner.shared().inflight.take_tasks();
        for t in running {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        let forced = ops::force_stop_all(&self.inner).await;
        // Then the stock's requests still in flight, so that what they made is deleted below.
        let stocking = std::mem::take(&mut self.inner.shared().stock_tasks);
        for t in stocking {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        stock::drop_all(&self.inner).await;
        DrainReport { forced }
    }

    /// Stops every task at once without any cleanup, as a crash would (sandboxes keep running).
    pub async fn crash(self) {
        let (stocking, running) = {
            let mut s = self.inner.shared();
            (std::mem::take(&mut s.stock_tasks), s.inflight.take_tasks())
        };
        for t in self.tasks.iter().chain(&stocking).chain(&running) {
            t.abort();
        }
        for t in stocking.into_iter().chain(running) {
            let _ = t.await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Asks for an immediate poll (tests and the demo).
    pub fn poll_now(&self) {
        self.inner.poll_now.notify_one();
    }
}

/// Resolves once `rx` has seen `true` (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
