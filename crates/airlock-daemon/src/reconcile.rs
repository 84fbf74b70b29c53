//! The control loop and the executor of the planner's operations.
//!
//! Every operation is idempotent and safe to interrupt: a runner is stored in `creating` before
//! anything exists outside, teardown moves it to `stopping` before touching the sandbox or the
//! registration, and a runner found in `stopping` (after a crash) is simply torn down again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_core::{
    next_due, next_stock_due, plan, plan_stock, JobView, Op, PlanInput, RunnerState, RunnerView,
    SandboxState, Scope, StockOp, StopReason,
};
use airlock_github::{ErrorClass, GitHubError};
use airlock_sandbox::{BackendKind, SandboxStatus, Secret};
use airlock_store::{RunnerRecord, StoreError};
use rand::Rng;
use tokio::sync::watch;
use tracing::Instrument;

use crate::metrics::{
    OpLabels, OutcomeLabels, PoolInfoLabels, PoolLabels, PoolStateLabels, StopLabels,
};
use futures_util::StreamExt;

use crate::backoff::{Backoffs, Key};
use crate::{now_ms, Inner};

#[derive(Debug, thiserror::Error)]
pub(crate) enum OpError {
    #[error(transparent)]
    GitHub(#[from] GitHubError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sandbox(#[from] airlock_sandbox::SandboxError),
    #[error("pool {0:?} is not configured")]
    NoPool(String),
    /// The pool's spec could not be made: its image (class `image`) or its microVM probe
    /// (class `probe`).
    #[error("pool {pool:?}: {source}")]
    Spec {
        pool: String,
        source: crate::backends::SpecError,
    },
}

impl OpError {
    fn class(&self) -> &'static str {
        match self {
            OpError::GitHub(e) => match e.class() {
                ErrorClass::Transient => "transient",
                ErrorClass::RateLimited(_) => "rate_limited",
                ErrorClass::NotFound => "not_found",
                ErrorClass::Permanent => "permanent",
            },
            OpError::Store(_) => "store",
            OpError::Sandbox(_) => "sandbox",
            OpError::NoPool(_) => "config",
            OpError::Spec { source, .. } => match source {
                crate::backends::SpecError::Image(_) => "image",
                crate::backends::SpecError::Probe(_) => "probe",
            },
        }
    }
}

/// After a restart: runners caught mid-create never got a running sandbox worth keeping (their
/// JIT config was only in memory), so they are torn down.
pub(crate) fn recover(inner: &Inner) -> Result<(), StoreError> {
    let now = now_ms();
    let store = inner.store.sync();
    for r in store.live_runners()? {
        if r.state == RunnerState::Creating {
            tracing::warn!(runner = %r.name, "runner was being created when airlock stopped; tearing it down");
            store.runner_transition(&r.name, RunnerState::Stopping, now, Some("interrupted"))?;
        }
    }
    Ok(())
}

/// The longest the loop sleeps without an event: a safety net against a missed wake-up (an
/// event source this loop does not hear from), never the reason anything happens on time.
pub(crate) const RESYNC: Duration = Duration::from_secs(30);

/// The shortest gap between two passes, so that even a pass that keeps finding work cannot spin.
const MIN_GAP: Duration = Duration::from_millis(20);

pub(crate) async fn run(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        let started = Instant::now();
        let span = tracing::info_span!("reconcile");
        let next = match pass(&inner).instrument(span).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "reconcile pass failed");
                // Whatever failed (the store, the backend's list) is retried soon, not in a loop.
                Next::At(Instant::now() + Backoffs::FIRST)
            }
        };
        inner
            .metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
        let until = match next {
            Next::Now => started + MIN_GAP,
            Next::At(t) => t.clamp(started + MIN_GAP, Instant::now() + RESYNC),
            Next::Idle => Instant::now() + RESYNC,
        };
        tokio::select! {
            _ = crate::stopped(&mut stop) => return,
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep_until(until.into()) => {}
        }
    }
}

/// When the loop should look again, as a pass sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// It acted: look again at once, at what its operations changed.
    Now,
    /// Nothing to do before this moment (a timeout, a backoff's end) unless an event comes.
    At(Instant),
    /// Nothing is due: only events matter.
    Idle,
}

fn pool_of<'a>(inner: &'a Inner, name: &str) -> Option<&'a airlock_config::PoolConfig> {
    inner.cfg.pools.iter().find(|p| p.name == name)
}

/// One pass: observe, plan, act; says when the next one is due.
pub(crate) async fn pass(inner: &Inner) -> Result<Next, OpError> {
    let now = now_ms();
    let live = inner.store.call(|s| s.live_runners()).await?;
    let listed = inner.backend.registry.list().await?;
    let mut sandboxes: HashMap<(BackendKind, &str), SandboxStatus> = HashMap::new();
    let mut kinds: HashMap<String, Vec<BackendKind>> = HashMap::new();
    for l in &listed {
        sandboxes.insert((l.kind, l.id.as_str()), l.status);
        kinds.entry(l.id.clone()).or_default().push(l.kind);
    }
    let mut views = Vec::with_capacity(live.len());
    let mut ended = Vec::new();
    for r in &live {
        // A runner's sandbox is looked for only in the backend the store recorded for it.
        let status = sandboxes
            .get(&(r.backend, r.sandbox_id.as_str()))
            .copied()
            .unwrap_or(SandboxStatus::Missing);
        let expected_running = matches!(
            r.state,
            RunnerState::Starting | RunnerState::Idle | RunnerState::Busy
        );
        let exited =
            expected_running && matches!(status, SandboxStatus::Exited(_) | SandboxStatus::Missing);
        if let (true, SandboxStatus::Exited(code)) = (exited, status) {
            ended.push((r.sandbox_id.clone(), code));
        }
        views.push(RunnerView {
            name: r.name.clone(),
            pool: r.pool.clone(),
            state: r.state,
            created_at: r.created_at,
            state_since: r.state_since,
            sandbox_id: r.sandbox_id.clone(),
            exited,
            exit_code: match status {
                SandboxStatus::Exited(c) if exited => c,
                _ => None,
            },
            job_known: r.job_id.is_some(),
        });
    }
    let (registrations, draining, since) = {
        let s = inner.shared();
        (s.registrations.clone(), s.draining, s.last_poll_start)
    };
    // One blocking call for the rest of what the pass reads and records.
    let (open, unaccounted) = inner
        .store
        .call(move |s| {
            for (id, code) in ended {
                let _ = s.sandbox_transition(&id, SandboxState::Exited, code, now);
            }
            Ok((s.open_jobs()?, s.unaccounted_exits(since)?))
        })
        .await?;
    let jobs: Vec<JobView> = open
        .into_iter()
        .map(|j| JobView {
            id: j.id,
            repo: j.repo,
            enterprise: j.enterprise,
            labels: j.labels,
            status: j.status,
        })
        .collect();
    let pools = &inner.specs;
    let ids: Vec<String> = kinds.keys().cloned().collect();
    let (stock_views, reserved) = {
        let s = inner.shared();
        (crate::stock::views(&s), crate::stock::reserved(&s))
    };
    let input = PlanInput {
        now,
        pools,
        jobs: &jobs,
        runners: &views,
        unaccounted: &unaccounted,
        registrations: &registrations,
        sandboxes: &ids,
        reserved: &reserved,
        draining,
    };
    let ops = plan(&input);
    let creating: HashSet<&str> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Create { pool } => Some(pool.as_str()),
            _ => None,
        })
        .collect();
    let stock_ops = plan_stock(now, pools, &stock_views, &creating, draining);
    let at = |t: i64| Instant::now() + Duration::from_millis((t - now).max(0) as u64);
    let due = [next_due(&input), next_stock_due(pools, &stock_views)]
        .into_iter()
        .flatten()
        .min()
        .map(at);

    update_gauges(inner, pools, &jobs, &views);
    if !ops.is_empty() {
        tracing::debug!(ops = ops.len(), "executing plan");
    }
    // The plan's operations run concurrently, at most `server.max_parallel_ops` at once, and
    // never two on one object (a runner, a registration, a sandbox): the plan names each object
    // once, and a pass ends only when all of its operations have, so no two passes overlap.
    // GitHub's writes stay serialized in the client; a JIT request overlaps other runners'
    // sandbox work.
    let mut seen = std::collections::HashSet::new();
    let mut ops: Vec<Op> = ops
        .into_iter()
        .filter(|op| match op_object(op) {
            Some(key) => seen.insert(key),
            None => true,
        })
        .collect();
    // Stops and reaps take the first slots: a burst of creates never holds them back; the
    // stock's requests come last, after the pass's demand.
    ops.sort_by_key(|op| matches!(op, Op::Create { .. }));
    let work = ops
        .into_iter()
        .map(Work::Op)
        .chain(stock_ops.into_iter().map(Work::Stock));
    let limit = inner.cfg.server.max_parallel_ops.max(1);
    let acted = std::sync::atomic::AtomicBool::new(false);
    futures_util::stream::iter(work)
        .for_each_concurrent(limit, |w| async {
            let ran = match w {
                Work::Op(op) => run_op(inner, &live, &kinds, op).await,
                Work::Stock(op) => run_stock_op(inner, op).await,
            };
            if ran {
                acted.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .await;
    if acted.into_inner() {
        return Ok(Next::Now);
    }
    // Nothing acted: sleep until the first timeout or the first held-back operation may go.
    let s = inner.shared();
    let now = Instant::now();
    let next = [due, s.backoffs.next_end(now), s.rate_limited_until]
        .into_iter()
        .flatten()
        .filter(|&t| t > now)
        .min();
    Ok(next.map_or(Next::Idle, Next::At))
}

/// Holds back `pool`'s creates after one of them failed with an error of `class` (or its runner
/// died before it came online): for `wait`, or for the next step of that class's wait, doubling
/// per failure from 1 s to 60 s. The pool's first runner to come online resets it.
fn back_off(inner: &Inner, pool: &str, class: &'static str, wait: Option<Duration>) {
    let key = Key::Pool {
        pool: pool.to_string(),
        class,
    };
    inner.shared().backoffs.fail(key, wait, Instant::now());
}

/// A pass's unit of work: one of the plan's operations or of the stock's.
enum Work {
    Op(Op),
    Stock(StockOp),
}

/// Runs one of the stock's operations; a failed fill holds back the pool's fills (its own
/// backoff, apart from its creates'), a failed delete leaves the registration to the reaper.
async fn run_stock_op(inner: &Inner, op: StockOp) -> bool {
    match op {
        StockOp::Fill { pool } => {
            let key = Key::Object(format!("stock {pool}"));
            let now = Instant::now();
            {
                let s = inner.shared();
                if s.backoffs.holds(&key, now) || s.rate_limited_until.is_some_and(|t| t > now) {
                    return false;
                }
            }
            let Some(cfg) = pool_of(inner, &pool) else {
                return false;
            };
            match crate::stock::fill(inner, cfg).await {
                Ok(()) => inner.shared().backoffs.clear(&key),
                Err(e) => {
                    count_error(inner, "stock_fill", &e);
                    let wait = github_wait(inner, &e);
                    inner.shared().backoffs.fail(key, wait, Instant::now());
                }
            }
        }
        StockOp::Drop { pool, name } => {
            if let Err(e) = crate::stock::drop_one(inner, &pool, &name, "stock").await {
                count_error(inner, "stock_drop", &e);
            }
        }
    }
    true
}

fn count_error(inner: &Inner, op: &str, e: &OpError) {
    inner
        .metrics
        .reconcile_errors
        .get_or_create(&OpLabels {
            op: op.into(),
            class: e.class().into(),
        })
        .inc();
    tracing::warn!(op, error = %e, "operation failed; will retry");
}

/// How long GitHub said to wait, if the error says: its rate limit (which then holds every
/// create) or a permanent refusal (the longest backoff).
fn github_wait(inner: &Inner, e: &OpError) -> Option<Duration> {
    match e {
        OpError::GitHub(g) => match g.class() {
            ErrorClass::RateLimited(w) => {
                inner.shared().rate_limited_until = Some(Instant::now() + w);
                Some(w)
            }
            ErrorClass::Permanent => Some(Backoffs::MAX),
            _ => None,
        },
        _ => None,
    }
}

/// The object an operation acts on, for the one-operation-per-object rule (`None`: a create,
/// whose runner does not exist yet).
fn op_object(op: &Op) -> Option<String> {
    match op {
        Op::Create { .. } => None,
        Op::Stop { runner, .. } => Some(format!("runner {runner}")),
        Op::DeleteRegistration { id, .. } => Some(format!("registration {id}")),
        Op::DestroySandbox { id } => Some(format!("sandbox {id}")),
    }
}

/// Runs one operation of a pass unless it is held back: a create by its pool's backoff (or
/// GitHub's rate limit), any other by its object's. A failure is counted, logged and backs off
/// its pool (a create) or its object. Returns whether it ran.
async fn run_op(
    inner: &Inner,
    live: &[RunnerRecord],
    kinds: &HashMap<String, Vec<BackendKind>>,
    op: Op,
) -> bool {
    let name = match &op {
        Op::Create { .. } => "create",
        Op::Stop { .. } => "stop",
        Op::DeleteRegistration { .. } => "delete_registration",
        Op::DestroySandbox { .. } => "destroy_sandbox",
    };
    let created_pool = match &op {
        Op::Create { pool } => Some(pool.clone()),
        _ => None,
    };
    let object = op_object(&op).map(Key::Object);
    {
        let s = inner.shared();
        let now = Instant::now();
        let held = match (&created_pool, &object) {
            (Some(pool), _) => {
                s.rate_limited_until.is_some_and(|t| t > now) || s.backoffs.holds_pool(pool, now)
            }
            (None, Some(key)) => s.backoffs.holds(key, now),
            (None, None) => false,
        };
        if held {
            return false;
        }
    }
    let Err(e) = execute(inner, live, kinds, op).await else {
        if let Some(key) = &object {
            inner.shared().backoffs.clear(key);
        }
        return true;
    };
    let class = e.class();
    count_error(inner, name, &e);
    // GitHub's rate limit is the app's, not the pool's: every create waits for it.
    let wait = github_wait(inner, &e);
    match (created_pool, object) {
        (Some(pool), _) => back_off(inner, &pool, class, wait),
        (None, Some(key)) => {
            inner.shared().backoffs.fail(key, wait, Instant::now());
        }
        (None, None) => {}
    }
    true
}

fn update_gauges(
    inner: &Inner,
    pools: &[airlock_core::PoolSpec],
    jobs: &[JobView],
    runners: &[RunnerView],
) {
    let demand = airlock_core::planner::demand(jobs, pools);
    for p in &inner.cfg.pools {
        let accel = inner.backend.accel_label(p);
        for a in ["none", "unprobed", "kvm", "tcg", "refused"] {
            let labels = PoolInfoLabels {
                pool: p.name.clone(),
                backend: p.backend.as_str().into(),
                accel: a.into(),
            };
            if a == accel {
                inner.metrics.pool_info.get_or_create(&labels).set(1);
            } else {
                inner.metrics.pool_info.remove(&labels);
            }
        }
    }
    for p in pools {
        inner
            .metrics
            .queued_jobs
            .get_or_create(&PoolLabels {
                pool: p.name.clone(),
            })
            .set(demand.get(&p.name).copied().unwrap_or(0) as i64);
        for state in RunnerState::ALL {
            if state == RunnerState::Gone {
                continue;
            }
            let n = runners
                .iter()
                .filter(|r| r.pool == p.name && r.state == state)
                .count();
            inner
                .metrics
                .runners
                .get_or_create(&PoolStateLabels {
                    pool: p.name.clone(),
                    state: state.to_string(),
                })
                .set(n as i64);
        }
    }
}

/// `kinds`: which backends listed each sandbox id this pass.
async fn execute(
    inner: &Inner,
    live: &[RunnerRecord],
    kinds: &HashMap<String, Vec<BackendKind>>,
    op: Op,
) -> Result<(), OpError> {
    match op {
        Op::Create { pool } => create(inner, &pool).await,
        Op::Stop { runner, reason } => {
            let Some(r) = live.iter().find(|r| r.name == runner) else {
                return Ok(());
            };
            stop(inner, r, reason).await
        }
        Op::DeleteRegistration { scope, id, name } => {
            tracing::info!(runner = %name, id, %scope, "deleting orphaned runner registration");
            let r = inner.github.delete_runner(&scope, id).await;
            inner.shared().registrations.retain(|x| x.id != id);
            match r {
                Ok(()) => {
                    inner
                        .metrics
                        .orphans_reaped
                        .get_or_create(&OutcomeLabels {
                            outcome: "registration".into(),
                        })
                        .inc();
                    Ok(())
                }
                // Busy after all: it is running a job; leave it.
                Err(GitHubError::Unprocessable { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Op::DestroySandbox { id } => {
            for kind in kinds.get(&id).into_iter().flatten() {
                tracing::info!(sandbox = %id, backend = %kind, "destroying orphaned sandbox");
                inner.backend.registry.destroy(*kind, &id).await?;
            }
            inner
                .metrics
                .orphans_reaped
                .get_or_create(&OutcomeLabels {
                    outcome: "sandbox".into(),
                })
                .inc();
            Ok(())
        }
    }
}

pub(crate) async fn group_id(
    inner: &Inner,
    pool: &airlock_config::PoolConfig,
) -> Result<u64, GitHubError> {
    if let Some(id) = inner.shared().group_ids.get(&pool.name) {
        return Ok(*id);
    }
    let id = inner
        .github
        .runner_group_id(&pool.scope, &pool.runner_group)
        .await?;
    inner.shared().group_ids.insert(pool.name.clone(), id);
    Ok(id)
}

async fn create(inner: &Inner, pool_name: &str) -> Result<(), OpError> {
    let started = Instant::now();
    let pool = pool_of(inner, pool_name).ok_or_else(|| OpError::NoPool(pool_name.into()))?;
    // A stocked config, when the pool has one: no GitHub request on this runner's path.
    let stocked = crate::stock::take(inner, &pool.name, pool.jit_stock_refresh.as_millis() as i64);
    let name = stocked
        .as_ref()
        .map_or_else(|| new_runner_name(pool), |s| s.name.clone());
    let span = tracing::info_span!("runner", runner = %name, pool = %pool.name);
    async {
        let gid = match &stocked {
            Some(_) => 0,
            None => group_id(inner, pool).await?,
        };
        // Before anything is recorded: a pool whose image is missing creates nothing.
        let recorded: Result<_, OpError> = async {
            let spec = inner
                .backend
                .spec_for(pool, &name)
                .await
                .map_err(|source| OpError::Spec {
                    pool: pool.name.clone(),
                    source,
                })?;
            let now = now_ms();
            let (n, p, scope, backend) = (
                name.clone(),
                pool.name.clone(),
                pool.scope.to_string(),
                pool.backend,
            );
            let registered = stocked.as_ref().map(|s| s.github_id);
            inner
                .store
                .call(move |s| {
                    s.insert_runner(&n, &p, &scope, &n, backend, now)?;
                    match registered {
                        Some(id) => s.set_runner_registration(&n, id),
                        None => Ok(()),
                    }
                })
                .await?;
            Ok(spec)
        }
        .await;
        let spec = match recorded {
            Ok(spec) => spec,
            Err(e) => {
                // Nothing was made for it: a stocked config goes back to its stock.
                if let Some(s) = stocked {
                    crate::stock::put_back(inner, &pool.name, s);
                }
                return Err(e);
            }
        };
        let made: Result<(), OpError> = async {
            let encoded = match stocked {
                // Recorded with the runner.
                Some(s) => s.encoded,
                None => {
                    let jit = inner
                        .github
                        .generate_jitconfig(&pool.scope, &name, gid, &pool.labels)
                        .await?;
                    let (n, id) = (name.clone(), jit.runner_id);
                    inner
                        .store
                        .call(move |s| s.set_runner_registration(&n, id))
                        .await?;
                    Secret::new(jit.encoded)
                }
            };
            inner.backend.registry.create(&spec).await?;
            inner.backend.registry.start(&spec, &encoded).await?;
            Ok(())
        }
        .await;
        let now = now_ms();
        match made {
            Ok(()) => {
                let n = name.clone();
                inner
                    .store
                    .call(move |s| s.runner_started(&n, &n, now))
                    .await?;
                inner
                    .metrics
                    .runners_created
                    .get_or_create(&PoolLabels {
                        pool: pool.name.clone(),
                    })
                    .inc();
                inner
                    .metrics
                    .runner_start_seconds
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!("runner started");
                Ok(())
            }
            Err(e) => {
                // Nothing half-made survives: tear down whatever exists (registration, sandbox).
                let reason = format!("create failed: {e}");
                let n = name.clone();
                let r = inner
                    .store
                    .call(move |s| {
                        s.runner_transition(&n, RunnerState::Stopping, now, Some(&reason))?;
                        s.runner(&n)
                    })
                    .await?;
                if let Some(r) = r {
                    let _ = teardown(inner, &r, true).await;
                }
                Err(e)
            }
        }
    }
    .instrument(span)
    .await
}

/// A fresh runner name for `pool`.
pub(crate) fn new_runner_name(pool: &airlock_config::PoolConfig) -> String {
    airlock_core::runner_name(&pool.name, &hex_id())
}

fn hex_id() -> String {
    let b: [u8; 5] = rand::thread_rng().gen();
    hex::encode(b)
}

mod hex {
    pub fn encode(b: [u8; 5]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}

fn scope_of(r: &RunnerRecord) -> Option<Scope> {
    Scope::parse(&r.scope).ok()
}

async fn stop(inner: &Inner, r: &RunnerRecord, reason: StopReason) -> Result<(), OpError> {
    let span = tracing::info_span!("runner", runner = %r.name, pool = %r.pool);
    async {
        let now = now_ms();
        let mut deregistered = false;
        if reason.deregister_first() && r.state != RunnerState::Stopping {
            if let (Some(id), Some(scope)) = (r.github_id, scope_of(r)) {
                match inner.github.delete_runner(&scope, id).await {
                    Ok(()) => deregistered = true,
                    Err(GitHubError::Unprocessable { .. }) => {
                        // GitHub says it is running a job: it is busy, not idle. Keep it.
                        tracing::info!(
                            reason = reason.as_str(),
                            "runner is busy with a job; not stopping it"
                        );
                        let n = r.name.clone();
                        inner
                            .store
                            .call(move |s| {
                                s.runner_transition(
                                    &n,
                                    RunnerState::Busy,
                                    now,
                                    Some("busy at deregistration"),
                                )
                            })
                            .await?;
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let mut took_unknown_job = false;
        if reason == StopReason::Exited {
            let code = match inner
                .backend
                .registry
                .status(r.backend, &r.sandbox_id)
                .await?
            {
                SandboxStatus::Exited(c) => c,
                _ => None,
            };
            took_unknown_job = code == Some(0) && r.job_id.is_none();
            let n = r.name.clone();
            inner
                .store
                .call(move |s| s.set_runner_exit(&n, code, took_unknown_job, now))
                .await?;
            tracing::info!(exit = ?code, "runner exited");
            if r.state == RunnerState::Starting && code != Some(0) {
                // Its sandbox died before the runner came online (a guest that cannot mount its
                // root, a runner that cannot start): replacing it at once would only repeat that.
                tracing::warn!(
                    exit = ?code,
                    "runner exited before it came online; backing off the pool (its log is kept in state_dir/logs)"
                );
                back_off(inner, &r.pool, "runner_exit", None);
            }
            if took_unknown_job {
                // It ran a job airlock has not heard of: learn which one now rather than at the
                // next scheduled poll, so the job it was started for does not wait on a guess.
                inner.poll_now.notify_one();
            }
        }
        let n = r.name.clone();
        inner
            .store
            .call(move |s| s.runner_transition(&n, RunnerState::Stopping, now, Some(reason.as_str())))
            .await?;
        inner
            .metrics
            .runners_stopped
            .get_or_create(&StopLabels {
                pool: r.pool.clone(),
                reason: reason.as_str().into(),
            })
            .inc();
        // A runner that ran a job was removed by GitHub with it: don't spend a request on it.
        let ran_job = reason == StopReason::Exited
            && (r.job_id.is_some() || r.state == RunnerState::Busy || took_unknown_job);
        teardown(inner, r, !deregistered && !ran_job).await
    }
    .instrument(span)
    .await
}

/// The finalizer: destroy the sandbox, remove the registration, mark the runner gone. Each step
/// is idempotent; a failure leaves the runner in `stopping` and the next pass resumes.
async fn teardown(inner: &Inner, r: &RunnerRecord, deregister: bool) -> Result<(), OpError> {
    inner
        .backend
        .registry
        .destroy(r.backend, &r.sandbox_id)
        .await?;
    let now = now_ms();
    let id = r.sandbox_id.clone();
    match inner
        .store
        .call(move |s| s.sandbox_transition(&id, SandboxState::Destroyed, None, now))
        .await
    {
        Ok(_) | Err(StoreError::Missing { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    if deregister {
        if let (Some(id), Some(scope)) = (r.github_id, scope_of(r)) {
            match inner.github.delete_runner(&scope, id).await {
                Ok(()) => {}
                // Still running a job at GitHub though its sandbox is gone: GitHub will fail the
                // job and drop the registration itself; the orphan reaper removes it otherwise.
                Err(GitHubError::Unprocessable { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let n = r.name.clone();
    inner
        .store
        .call(move |s| s.runner_transition(&n, RunnerState::Gone, now_ms(), None))
        .await?;
    // The last poll's list may still show its registration; it is not an orphan until a poll
    // made after this moment lists it again.
    if let Some(id) = r.github_id {
        inner.shared().registrations.retain(|x| x.id != id);
    }
    tracing::info!("runner gone");
    Ok(())
}

/// End of a drain: whatever is still alive is destroyed (busy runners past the grace period).
pub(crate) async fn force_stop_all(inner: &Inner) -> usize {
    let mut forced = 0;
    let live = inner.store.call(|s| s.live_runners()).await;
    for r in live.unwrap_or_default() {
        if r.state == RunnerState::Busy {
            forced += 1;
            tracing::warn!(runner = %r.name, "grace period over; destroying a busy runner");
        }
        let now = now_ms();
        let n = r.name.clone();
        let _ = inner
            .store
            .call(move |s| s.runner_transition(&n, RunnerState::Stopping, now, Some("drain")))
            .await;
        if let Err(e) = teardown(inner, &r, true).await {
            tracing::error!(runner = %r.name, error = %e, "teardown failed during drain; it will be reaped at next start");
        }
    }
    crate::stock::drop_all(inner).await;
    forced
}
