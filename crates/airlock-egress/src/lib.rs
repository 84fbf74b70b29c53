//! Egress enforcement on the host, where root inside a job cannot reach it: the resolver airlock
//! runs for its sandboxes, each sandbox's session (its link, address and pool policy) with the
//! nftables elements that tie its link to its policy, and the report of where it went.
//!
//! - `session`: sessions, reports and their files (one per sandbox, kept across `kill -9`);
//! - `resolver`: DNS over UDP and TCP, answering only attached sandboxes, by their policy;
//! - `proxy`: audit and block sandboxes' web traffic, by the name it is for (SNI, `Host`,
//!   `CONNECT`), on the resolver's TCP port (told apart by where a connection was going);
//! - `testdns`, `testweb` (feature `test-util`): an authoritative name server and HTTP/HTTPS
//!   servers for tests' internets.
//!
//! A backend attaches a sandbox when it makes its link (before anything of the job runs) and
//! detaches it when it destroys it; the daemon collects finished reports into its store. This
//! crate must never know what a backend or the store is: it knows session ids, links,
//! addresses and policies.
//!
//! Every session's file is written before its nftables elements and removed after them, so
//! whatever a crash leaves in the table, a session file names it, and the next start (which
//! re-points every session's DNS at the new resolver port) or the next destroy removes it.

mod flows;
pub mod proxy;
pub mod relay;
pub mod resolver;
pub mod session;
#[cfg(feature = "test-util")]
pub mod testdns;
#[cfg(feature = "test-util")]
pub mod testweb;

pub use session::{Destination, Protocol, Report, Session, Verdict};

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use airlock_net::rules::{self, Attached, Named, PolicyChain};
use airlock_net::NetError;
use session::SessionFile;

/// The side effects on the host's nftables table, behind a seam so the resolver's decisions are
/// testable without root (`Nft` is the real one).
pub trait Table: Send + Sync + std::fmt::Debug {
    /// Runs one script as one transaction.
    fn apply(&self, what: &str, script: &str) -> Result<(), NetError>;
    /// What the table holds now.
    fn attached(&self) -> Result<Attached, NetError>;
    /// Every link's flow counters (none where the table counts nothing).
    fn flows(&self) -> Result<Vec<rules::Flow>, NetError> {
        Ok(Vec::new())
    }
}

/// The host's `inet airlock` table, through `nft`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nft;

impl Table for Nft {
    fn apply(&self, what: &str, script: &str) -> Result<(), NetError> {
        rules::apply(what, script)
    }
    fn attached(&self) -> Result<Attached, NetError> {
        rules::attached()
    }
    fn flows(&self) -> Result<Vec<rules::Flow>, NetError> {
        rules::flows()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("egress directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bind the sandboxes' resolver on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "no upstream name server: /etc/resolv.conf lists none and the config gives none \
         (set `dns` in the [container] section)"
    )]
    NoUpstream,
    #[error("the resolver: {0}")]
    Resolver(String),
    #[error("session {id}: {detail}")]
    Session { id: String, detail: String },
    #[error(transparent)]
    Net(#[from] NetError),
}

/// How long an address answered for an allowed name stays open for the sandbox (block mode):
/// longer than the TTL the resolver hands out, so a client that keeps an answer for its TTL
/// still finds it open; a connection made while it was open lives on in conntrack.
pub const NAMED_TIMEOUT: Duration = Duration::from_secs(900);
/// The longest TTL the resolver hands out (a sandbox asks again at least this often).
pub const MAX_TTL: u32 = 300;
/// An address already open is opened again (its timeout renewed) only after this long.
const REOPEN_AFTER: Duration = Duration::from_secs(300);
/// How often changed reports are written to their files.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// Session files live here (`state_dir/egress`); finished ones in `done/` below it.
    pub dir: PathBuf,
    /// Upstream name servers the resolver asks; empty: the host's (`/etc/resolv.conf`, loopback
    /// ones included: the resolver runs on the host).
    pub upstreams: Vec<SocketAddr>,
    /// Where the resolver listens: every address (sandboxes reach it on their gateway through
    /// the redirect), or one address in tests.
    pub bind: IpAddr,
    pub table: Arc<dyn Table>,
    /// The most relay threads proxied connections use at once, two a connection (`relay`);
    /// connections beyond them are spliced on the runtime. 0: all on the runtime.
    pub relay_threads: usize,
}

impl EgressConfig {
    pub fn new(dir: PathBuf) -> EgressConfig {
        EgressConfig {
            dir,
            upstreams: Vec::new(),
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            table: Arc::new(Nft),
            relay_threads: relay::MAX_THREADS,
        }
    }
}

/// The handle backends and the daemon share (cheap to clone). The resolver's tasks run while a
/// handle exists.
#[derive(Clone)]
pub struct Egress {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("dir", &self.inner.dir)
            .field("port", &self.inner.port)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    dir: PathBuf,
    port: u16,
    table: Arc<dyn Table>,
    pub(crate) resolver: hickory_resolver::TokioResolver,
    /// Sessions by sandbox address (what the resolver looks up) and by id.
    by_addr: RwLock<HashMap<Ipv4Addr, Arc<Live>>>,
    by_id: Mutex<HashMap<String, Arc<Live>>>,
    /// Blocked sightings by pool, since start.
    blocked: Mutex<BTreeMap<String, u64>>,
    pub(crate) answered: AtomicU64,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    pub(crate) relay_threads: AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self
            .tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// An attached session: what its file holds, and whether that changed since it was written.
pub(crate) struct Live {
    pub(crate) session: Session,
    chain: PolicyChain,
    pub(crate) file: Mutex<SessionFile>,
    /// When each named address was last opened (this run).
    opened_at: Mutex<HashMap<Named, Instant>>,
    dirty: AtomicBool,
    /// Set (under `file`'s lock) once detached: its file is no longer rewritten.
    detached: AtomicBool,
    /// Its proxied connections in flight, landed by its detach.
    flights: Mutex<relay::Flights>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the epoch (sessions' and reports' times).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The host's name servers, as the resolver on the host can use them (loopback included).
pub fn host_upstreams() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .filter(|a| !a.is_unspecified())
        .map(|a| SocketAddr::new(a, 53))
        .collect()
}

impl Egress {
    /// Starts the resolver (on the port of the last run when it is free, else on a new one),
    /// loads the sessions of the last run and points their links' DNS at it.
    pub async fn start(cfg: EgressConfig) -> Result<Egress, EgressError> {
        let dir_err = |path: &Path, source| EgressError::Dir {
            path: path.to_path_buf(),
            source,
        };
        for d in [cfg.dir.clone(), cfg.dir.join("done")] {
            std::fs::create_dir_all(&d).map_err(|e| dir_err(&d, e))?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| dir_err(&d, e))?;
        }
        let upstreams = if cfg.upstreams.is_empty() {
            host_upstreams()
        } else {
            cfg.upstreams.clone()
        };
        if upstreams.is_empty() {
            return Err(EgressError::NoUpstream);
        }
        let resolver = resolver::upstream(&upstreams)?;
        let port_file = cfg.dir.join("port");
        let last_port: Option<u16> = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let (udp, tcp) = resolver::bind(cfg.bind, last_port).await?;
        let port = udp.local_addr().map(|a| a.port()).unwrap_or(0);
        std::fs::write(&port_file, format!("{port}\n")).map_err(|e| dir_err(&port_file, e))?;
        let inner = Arc::new(Inner {
            dir: cfg.dir.clone(),
            port,
            table: cfg.table.clone(),
            resolver,
            by_addr: RwLock::default(),
            by_id: Mutex::default(),
            blocked: Mutex::default(),
            answered: AtomicU64::new(0),
            tasks: Mutex::default(),
            relay_threads: AtomicUsize::new(cfg.relay_threads),
        });
        let egress = Egress { inner };
        egress.reload()?;
        if let Some(old) = last_port.filter(|p| *p != port) {
            egress.retire_port(old);
        }
        let weak = Arc::downgrade(&egress.inner);
        let tasks = vec![
            tokio::spawn(resolver::serve_udp(weak.clone(), udp)).abort_handle(),
            tokio::spawn(resolver::serve_tcp(weak.clone(), tcp)).abort_handle(),
            tokio::spawn(flush_loop(weak.clone())).abort_handle(),
            tokio::spawn(flows_loop(weak)).abort_handle(),
        ];
        lock(&egress.inner.tasks).extend(tasks);
        tracing::info!(port, upstreams = ?upstreams, "the sandboxes' resolver is listening");
        Ok(egress)
    }

    /// The port the resolver listens on (UDP and TCP).
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The sessions of the last run, made live again: each link's DNS sent to this run's port,
    /// and a session whose elements never reached the table (a crash between its file and its
    /// transaction) attached now.
    fn reload(&self) -> Result<(), EgressError> {
        let inner = &self.inner;
        let table = inner.table.attached()?;
        let entries = std::fs::read_dir(&inner.dir).map_err(|source| EgressError::Dir {
            path: inner.dir.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let f = match session::read(&p) {
                Ok(f) => f,
                Err(detail) => {
                    // Unreadable: set aside, never deleted (an operator may want to look), and
                    // never guessed at.
                    tracing::error!(%detail, "a session file cannot be read; moved aside");
                    let _ = std::fs::rename(&p, p.with_extension("json.bad"));
                    continue;
                }
            };
            let s = f.session.clone();
            let script = match table.dns.iter().find(|(l, _)| *l == s.link) {
                Some((_, p)) if *p == inner.port => None,
                Some(_) if table.links.iter().any(|(l, _)| *l == s.link) => {
                    Some(rules::move_dns_script(&s.link, inner.port))
                }
                _ => Some(rules::attach_script(
                    &s.link,
                    &rules::policy_chain(&s.policy),
                    inner.port,
                    rules::proxies(&s.policy),
                )),
            };
            if let Some(script) = script {
                inner
                    .table
                    .apply(&format!("re-attaching sandbox {}'s link", s.id), &script)?;
            }
            self.insert(f);
        }
        Ok(())
    }

    fn insert(&self, f: SessionFile) -> Arc<Live> {
        let s = f.session.clone();
        let live = Arc::new(Live {
            chain: rules::policy_chain(&s.policy),
            session: s.clone(),
            file: Mutex::new(f),
            opened_at: Mutex::default(),
            dirty: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            flights: Mutex::default(),
        });
        self.inner
            .by_addr
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.addr, live.clone());
        lock(&self.inner.by_id).insert(s.id.clone(), live.clone());
        live
    }

    fn retire_port(&self, port: u16) {
        let r = self.inner.table.attached().and_then(|now| {
            if now.services.contains(&port) && !now.dns.iter().any(|(_, p)| *p == port) {
                self.inner.table.apply(
                    "removing the last run's resolver port",
                    &format!("delete element {} services {{ {port} }}\n", rules::TABLE),
                )
            } else {
                Ok(())
            }
        });
        if let Err(e) = r {
            tracing::warn!(port, error = %e, "the last run's resolver port stays in the table");
        }
    }

    /// Attaches a sandbox: its file first, then one transaction that ties its link to its
    /// policy's chain and its DNS to this resolver. Synchronous (a backend's blocking work).
    /// Attaching an id again replaces its session.
    pub fn attach(&self, s: Session) -> Result<(), EgressError> {
        let err = |detail: String| EgressError::Session {
            id: s.id.clone(),
            detail,
        };
        if !airlock_core::safe_id(&s.id) {
            return Err(err("not a safe sandbox id".into()));
        }
        if lock(&self.inner.by_id).contains_key(&s.id) {
            self.detach(&s.id)?;
        }
        let f = SessionFile {
            session: s.clone(),
            report: Report::default(),
            opened: Default::default(),
            flows: Default::default(),
        };
        let p = session::path(&self.inner.dir, &s.id);
        session::write(&p, &f).map_err(|e| err(format!("writing {}: {e}", p.display())))?;
        let chain = rules::policy_chain(&s.policy);
        if let Err(e) = self.inner.table.apply(
            &format!("attaching sandbox {}'s link {}", s.id, s.link),
            &rules::attach_script(&s.link, &chain, self.inner.port, rules::proxies(&s.policy)),
        ) {
            let _ = std::fs::remove_file(&p);
            return Err(e.into());
        }
        self.insert(f);
        Ok(())
    }

    /// Detaches a sandbox: one transaction that removes its link's elements and the addresses
    /// it opened, then its file moves to `done/` with the final report, which is returned.
    /// `None`: no such session (never attached, or detached already).
    pub fn detach(&self, id: &str) -> Result<Option<Report>, EgressError> {
        let Some(live) = lock(&self.inner.by_id).get(id).cloned() else {
            return Ok(None);
        };
        let s = &live.session;
        // Its questions go unanswered from here on.
        let unlisted = {
            let mut by_addr = self
                .inner
                .by_addr
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let ours = by_addr.get(&s.addr).is_some_and(|l| Arc::ptr_eq(l, &live));
            ours && by_addr.remove(&s.addr).is_some()
        };
        // Its last counted bytes into the report, then its counters out of the table.
        let flows: Vec<rules::Flow> = match self.inner.table.flows() {
            Ok(f) => f.into_iter().filter(|f| f.link == s.link).collect(),
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "cannot read the flow counters");
                Vec::new()
            }
        };
        self.inner.collect_flows(&live, &flows);
        let opened: Vec<Named> = lock(&live.file).opened.iter().copied().collect();
        let script = format!(
            "{}{}{}",
            rules::detach_script(&s.link, &live.chain.name, self.inner.port),
            rules::close_named_script(&s.link, &opened),
            rules::forget_flows_script(&flows)
        );
        if let Err(e) = self.inner.table.apply(
            &format!("detaching sandbox {id}'s link {}", s.link),
            &script,
        ) {
            if unlisted {
                self.inner
                    .by_addr
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(s.addr, live.clone());
            }
            return Err(e.into());
        }
        // Its proxied connections end with it, counted in its report.
        relay::land_all(&self.inner, &live);
        let f = {
            let f = lock(&live.file);
            live.detached.store(true, Ordering::Release);
            f.clone()
        };
        lock(&self.inner.by_id).remove(id);
        let err = |detail: String| EgressError::Session {
            id: id.to_string(),
            detail,
        };
        let done = session::path(&self.inner.dir.join("done"), id);
        session::write(&done, &f).map_err(|e| err(format!("writing {}: {e}", done.display())))?;
        let p = session::path(&self.inner.dir, id);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(format!("removing {}: {e}", p.display()))),
        }
        Ok(Some(f.report))
    }

    /// Changes [`EgressConfig::relay_threads`] for connections from now on.
    pub fn set_relay_threads(&self, n: usize) {
        self.inner.relay_threads.store(n, Ordering::Relaxed);
    }

    /// A running sandbox's report so far.
    pub fn report(&self, id: &str) -> Option<Report> {
        let live = lock(&self.inner.by_id).get(id).cloned()?;
        let r = lock(&live.file).report.clone();
        Some(r)
    }

    /// The attached sessions.
    pub fn sessions(&self) -> Vec<Session> {
        let mut v: Vec<Session> = lock(&self.inner.by_id)
            .values()
            .map(|l| l.session.clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Detached sessions whose reports the daemon has not yet stored (`forget` once stored).
    pub fn finished(&self) -> Vec<(Session, Report)> {
        let done = self.inner.dir.join("done");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&done).into_iter().flatten().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                match session::read(&p) {
                    Ok(f) => out.push((f.session, f.report)),
                    Err(detail) => tracing::warn!(%detail, "a finished report cannot be read"),
                }
            }
        }
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        out
    }

    /// Removes a finished report's file (the daemon has it).
    pub fn forget(&self, id: &str) -> std::io::Result<()> {
        if !airlock_core::safe_id(id) {
            return Err(std::io::Error::other(format!(
                "{id:?} is not a safe sandbox id"
            )));
        }
        match std::fs::remove_file(session::path(&self.inner.dir.join("done"), id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Blocked sightings by pool since start (sessions without a pool under `""`).
    pub fn blocked_by_pool(&self) -> BTreeMap<String, u64> {
        lock(&self.inner.blocked).clone()
    }

    /// DNS questions answered since start.
    pub fn answered(&self) -> u64 {
        self.inner.answered.load(Ordering::Relaxed)
    }

    /// Writes every changed report to its file now (the flush loop does it each second).
    pub fn flush(&self) {
        flush(&self.inner);
    }
}

impl Inner {
    pub(crate) fn live(&self, addr: Ipv4Addr) -> Option<Arc<Live>> {
        self.by_addr
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .cloned()
    }

    /// Records one sighting in a session's report (and the pool's blocked count).
    pub(crate) fn record(&self, live: &Live, d: Destination) {
        if d.verdict == Verdict::Blocked {
            let pool = live.session.pool.clone().unwrap_or_default();
            *lock(&self.blocked).entry(pool).or_default() += d.count;
        }
        lock(&live.file).report.record(d);
        live.dirty.store(true, Ordering::Release);
    }

    /// Opens `named` for a block-mode session's link, skipping what it opened less than
    /// `REOPEN_AFTER` ago. Runs the transaction on the blocking pool and returns once it is in
    /// the kernel, so the answer that follows can be used at once.
    pub(crate) async fn open(&self, live: &Arc<Live>, named: Vec<Named>) -> Result<(), NetError> {
        let now = Instant::now();
        let fresh: Vec<Named> = {
            let at = lock(&live.opened_at);
            named
                .into_iter()
                .filter(|n| {
                    at.get(n)
                        .is_none_or(|t| now.duration_since(*t) > REOPEN_AFTER)
                })
                .collect()
        };
        if fresh.is_empty() {
            return Ok(());
        }
        let (again, new): (Vec<Named>, Vec<Named>) = {
            // In the file before the table, as everything else.
            let mut f = lock(&live.file);
            let split = fresh.iter().partition(|n| f.opened.contains(n));
            f.opened.extend(fresh.iter().copied());
            live.dirty.store(true, Ordering::Release);
            split
        };
        let table = self.table.clone();
        let script =
            rules::open_named_script(&live.session.link, &new, &again, NAMED_TIMEOUT.as_secs());
        let what = format!("opening addresses for sandbox {}", live.session.id);
        tokio::task::spawn_blocking(move || table.apply(&what, &script))
            .await
            .map_err(|e| NetError::Command {
                what: "opening named addresses".into(),
                detail: e.to_string(),
            })??;
        let mut at = lock(&live.opened_at);
        for n in fresh {
            at.insert(n, now);
        }
        Ok(())
    }
}

fn flush(inner: &Inner) {
    let lives: Vec<Arc<Live>> = lock(&inner.by_id).values().cloned().collect();
    for l in lives {
        if l.dirty.swap(false, Ordering::AcqRel) {
            let f = lock(&l.file);
            // A session detached meanwhile has no file to rewrite.
            if l.detached.load(Ordering::Acquire) {
                continue;
            }
            let p = session::path(&inner.dir, &l.session.id);
            if let Err(e) = session::write(&p, &f) {
                l.dirty.store(true, Ordering::Release);
                tracing::warn!(session = %l.session.id, error = %e, "cannot write a report");
            }
        }
    }
}

/// Reads the flow counters every `flows::COLLECT_EVERY` into the sessions' reports.
async fn flows_loop(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(flows::COLLECT_EVERY).await;
        let Some(i) = inner.upgrade() else { return };
        let _ = tokio::task::spawn_blocking(move || {
            let lives: Vec<Arc<Live>> = lock(&i.by_id).values().cloned().collect();
            if lives.is_empty() {
                return;
            }
            match i.table.flows() {
                Ok(f) => {
                    for l in lives {
                        if !l.detached.load(Ordering::Acquire) {
                            i.collect_flows(&l, &f);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the flow counters"),
            }
        })
        .await;
    }
}

async fn flush_loop(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(FLUSH_EVERY).await;
        let Some(i) = inner.upgrade() else { return };
        let _ = tokio::task::spawn_blocking(move || flush(&i)).await;
    }
}
