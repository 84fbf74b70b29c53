//! The control loop: passes (observe, plan, act), the executor that runs a pass's operations
//! concurrently with one owner per object and their backoffs, and when the next pass is due. The
//! operations themselves are in `ops.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_core::{
    next_due, next_stock_due, plan, plan_stock, JobView, Op, PlanInput, RunnerState, RunnerView,
    SandboxState, StockOp,
};
use airlock_github::{ErrorClass, GitHubError};
use airlock_sandbox::{BackendKind, SandboxStatus};
use airlock_store::StoreError;
use tokio::sync::watch;
use tracing::Instrument;

use crate::metrics::{OpLabels, PoolInfoLabels, PoolLabels, PoolStateLabels};

use crate::backoff::{Backoffs, Key};
use crate::executor::Ticket;
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
                ErrorClass::Unavailable(_) => "unavailable",
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
    let mut view = crate::view::View::default();
    loop {
        let started = Instant::now();
        let span = tracing::info_span!("reconcile");
        let next = match pass(&inner, &mut view).instrument(span).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "reconcile pass failed");
                view.reset();
                // Whatever failed (the store, the backend's list) is retried soon, not in a loop.
                Next::At(Instant::now() + Backoffs::FIRST)
            }
        };
        let took = started.elapsed();
        inner.metrics.reconcile_seconds.observe(took.as_secs_f64());
        // However many events come (a burst's webhooks, its operations' ends), passes take at
        // most about half of one thread: the events of the gap are seen together by one pass.
        // A pathologically slow pass (a stalled disk) still waits at most a second more.
        let not_before = started + MIN_GAP.max(took * 2).min(took + Duration::from_secs(1));
        let until = match next {
            Next::At(t) => t.clamp(not_before, Instant::now() + RESYNC),
            Next::Idle => Instant::now() + RESYNC,
        };
        tokio::select! {
            _ = crate::stopped(&mut stop) => return,
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep_until(until.into()) => {}
        }
        tokio::select! {
            _ = crate::stopped(&mut stop) => return,
            _ = tokio::time::sleep_until(not_before.into()) => {}
        }
    }
}

/// When the loop should look again, as a pass sees it (its operations' ends and every other
/// event wake it earlier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Nothing to do before this moment (a timeout, a backoff's end) unless an event comes.
    At(Instant),
    /// Nothing is due: only events matter.
    Idle,
}

/// A pool's config as it is now (a copy: a reload may replace it meanwhile).
pub(crate) fn pool_of(inner: &Inner, name: &str) -> Option<airlock_config::PoolConfig> {
    inner.pools().cfg(name).cloned()
}

/// One pass: observe, plan, act; says when the next one is due. `view` holds what the last
/// pass read of the store; this one reads what changed since.
pub(crate) async fn pass(
    inner: &Arc<Inner>,
    view: &mut crate::view::View,
) -> Result<Next, OpError> {
    let pass_started = Instant::now();
    // Before the store is read: a create in flight is counted at least once (`executor`).
    let unrecorded = inner.shared().inflight.begin_pass();
    let now = now_ms();
    let (jobs_since, runners_since) = view.since(pass_started);
    let changed = inner
        .store
        .call(move |s| s.runners_since(runners_since))
        .await?;
    view.runners.apply_changed(changed);
    let live = view.runners.rows();
    let listed = inner.backend.registry.list().await?;
    let mut sandboxes: HashMap<(BackendKind, &str), SandboxStatus> = HashMap::new();
    let mut kinds: HashMap<String, Vec<BackendKind>> = HashMap::new();
    for l in &listed {
        sandboxes.insert((l.kind, l.id.as_str()), l.status);
        kinds.entry(l.id.clone()).or_default().push(l.kind);
    }
    let mut views = Vec::with_capacity(live.len());
    let mut ended = Vec::new();
    for r in live {
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
            config: r.config.clone(),
        });
    }
    // Health first, so that what it holds back holds this pass's creates: a runner that exited
    // as outdated backs off its pool now (the stop that records its exit comes later), and a
    // runner online since its pool's last failure ends the pool's trouble.
    for v in &views {
        if v.exited {
            if v.exit_code
                .and_then(airlock_core::health::outdated_exit)
                .is_some()
            {
                inner.health.runner_exited(inner, &v.pool, v.exit_code);
            }
        } else if matches!(v.state, RunnerState::Idle | RunnerState::Busy) {
            inner.health.online_since(inner, &v.pool, v.state_since);
        }
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
            Ok((s.jobs_since(jobs_since)?, s.unaccounted_exits(since)?))
        })
        .await?;
    view.jobs.apply_changed(open);
    let jobs = view.jobs.rows();
    let set = inner.pools();
    let pools = &set.specs;
    let ids: Vec<String> = kinds.keys().cloned().collect();
    let (stock_views, reserved) = {
        let s = inner.shared();
        (crate::stock::views(&s, &set), crate::stock::reserved(&s))
    };
    let input = PlanInput {
        now,
        pools,
        jobs,
        runners: &views,
        unaccounted: &unaccounted,
        registrations: &registrations,
        sandboxes: &ids,
        reserved: &reserved,
        creating: &unrecorded,
        draining,
    };
    let ops = plan(&input);
    if tracing::enabled!(tracing::Level::DEBUG)
        && ops.iter().any(|o| matches!(o, Op::Create { .. }))
    {
        // What the creates were planned from (a create beyond demand is found from this).
        let demand = airlock_core::planner::demand(jobs, pools);
        let mut seen: std::collections::BTreeMap<String, u32> = Default::default();
        for r in &views {
            *seen
                .entry(format!(
                    "{}/{}/{}/{}",
                    r.state,
                    if r.exited { "exited" } else { "up" },
                    r.exit_code.map_or("-".into(), |c| c.to_string()),
                    if r.job_known { "job" } else { "nojob" }
                ))
                .or_default() += 1;
        }
        tracing::debug!(?demand, ?unaccounted, runners = ?seen, "planning creates");
    }
    let creating: HashSet<&str> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Create { pool } => Some(pool.as_str()),
            _ => None,
        })
        .chain(unrecorded.keys().map(String::as_str))
        .collect();
    let stock_ops = plan_stock(now, pools, &stock_views, &creating, draining);
    let at = |t: i64| Instant::now() + Duration::from_millis((t - now).max(0) as u64);
    let due = [next_due(&input), next_stock_due(pools, &stock_views)]
        .into_iter()
        .flatten()
        .min()
        .map(at);

    update_gauges(inner, &set, jobs, &views);
    // Each operation runs as a task of its own (`executor`): the pass does not wait for them,
    // so the next pass plans while they run. `schedule` keeps one operation per object and puts
    // stops and reaps first; the executor drops any on an object another operation owns (or
    // released while this pass was observing). Creates and the others each have
    // `server.max_parallel_ops` slots; GitHub's writes stay serialized in the client, so a JIT
    // request overlaps other runners' sandbox work. The stock's requests run beside, on names no
    // runner has (its reserved ones).
    let ops = schedule(ops);
    let (mut started, mut owned, mut held) = (0usize, 0usize, 0usize);
    let stock_count = stock_ops.len();
    for op in stock_ops {
        start_stock_op(inner, op);
    }
    let observed = Instant::now();
    for op in ops {
        let Some(work) = crate::ops::Work::new(op, live, &kinds) else {
            continue;
        };
        if is_held(inner, &work) {
            held += 1;
            continue;
        }
        let claim = match inner.shared().inflight.admit(work.keys(), work.create_of()) {
            Ok(c) => c,
            Err(key) => {
                tracing::trace!(%key, op = work.name(), "left to the operation that owns it");
                inner
                    .metrics
                    .ops_deferred
                    .get_or_create(&crate::metrics::OpNameLabels {
                        op: work.name().into(),
                    })
                    .inc();
                owned += 1;
                continue;
            }
        };
        started += 1;
        let ticket = Ticket::new(inner.clone(), claim);
        let i = inner.clone();
        let task = tokio::spawn(async move { run_op(&i, work, ticket).await });
        inner.shared().inflight.push_task(task);
    }
    tracing::debug!(
        jobs = jobs.len(),
        runners = views.len(),
        started,
        owned,
        held,
        in_flight = inner.shared().inflight.running(),
        stock_ops = stock_count,
        observe_ms = (observed - pass_started).as_secs_f64() * 1e3,
        "pass"
    );
    // Each operation's end wakes the loop; otherwise sleep until the first timeout or the first
    // held-back operation may go.
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
pub(crate) fn back_off(inner: &Inner, pool: &str, class: &'static str, wait: Option<Duration>) {
    let key = Key::Pool {
        pool: pool.to_string(),
        class,
    };
    inner.shared().backoffs.fail(key, wait, Instant::now());
}

/// Starts one of the stock's operations as a task of its own: a pass never waits for the
/// stock's GitHub requests (a fill is a paced write with GitHub's latency; a pass that waited for
/// one would hold back the creates of the jobs queued meanwhile). What the next pass must see
/// happens here, before the task: a fill's name is pending, a dropped config is out of the
/// stock. A failed fill holds back the pool's fills (its own backoff, apart from its creates'),
/// a failed delete leaves the registration to the reaper. Each task wakes the loop when it ends.
fn start_stock_op(inner: &Arc<Inner>, op: StockOp) {
    let task = match op {
        StockOp::Fill { pool } => {
            let key = Key::Object(format!("stock {pool}"));
            let now = Instant::now();
            {
                let s = inner.shared();
                if s.backoffs.holds(&key, now) || s.rate_limited_until.is_some_and(|t| t > now) {
                    return;
                }
            }
            let Some(cfg) = pool_of(inner, &pool) else {
                return;
            };
            let name = crate::stock::reserve(inner, &cfg);
            let inner = inner.clone();
            tokio::spawn(async move {
                let Some(cfg) = pool_of(&inner, &pool) else {
                    return;
                };
                match crate::stock::fill(&inner, &cfg, name).await {
                    Ok(()) => inner.shared().backoffs.clear(&key),
                    Err(e) => {
                        count_error(&inner, "stock_fill", &e);
                        let wait = github_wait(&inner, &e);
                        inner.shared().backoffs.fail(key, wait, Instant::now());
                    }
                }
                inner.wake.notify_one();
            })
        }
        StockOp::Drop { pool, name } => {
            let Some(st) = crate::stock::unstock(inner, &pool, &name) else {
                return;
            };
            let inner = inner.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::stock::delete(&inner, &pool, &st, "stock").await {
                    count_error(&inner, "stock_drop", &e);
                }
                inner.wake.notify_one();
            })
        }
    };
    let mut s = inner.shared();
    s.stock_tasks.retain(|t| !t.is_finished());
    s.stock_tasks.push(task);
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
            // The circuit is open: nothing is sent before it may probe again.
            ErrorClass::Unavailable(w) => Some(w),
            // A runner name GitHub already knows (a registration a lost answer left behind, the
            // orphan reaper's to remove): the next create has a new name, so no long wait.
            ErrorClass::Permanent if matches!(g, airlock_github::GitHubError::Conflict { .. }) => {
                None
            }
            ErrorClass::Permanent => Some(Backoffs::MAX),
            _ => None,
        },
        _ => None,
    }
}

/// The order a pass runs its plan in: one operation per object (the first the plan names), and
/// stops and reaps before creates, so that a burst of creates never holds them back.
fn schedule(ops: Vec<Op>) -> Vec<Op> {
    let mut seen = HashSet::new();
    let mut ops: Vec<Op> = ops
        .into_iter()
        .filter(|op| match op_object(op) {
            Some(key) => seen.insert(key),
            None => true,
        })
        .collect();
    ops.sort_by_key(|op| matches!(op, Op::Create { .. }));
    ops
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

/// Whether `work` is held back: a create by its pool's backoff (or GitHub's rate limit), any
/// other by its object's.
fn is_held(inner: &Inner, work: &crate::ops::Work) -> bool {
    let s = inner.shared();
    let now = Instant::now();
    match work.create_of() {
        Some(pool) => {
            inner.disk.low()
                || s.rate_limited_until.is_some_and(|t| t > now)
                || s.backoffs.holds_pool(pool, now)
        }
        None => work
            .keys()
            .first()
            .is_some_and(|k| s.backoffs.holds(&Key::Object(k.clone()), now)),
    }
}

/// Runs one operation in its slot, unless it became held back (or a drain began) while it
/// waited for one. A failure is counted, logged and backs off its pool (a create) or its object.
/// Dropping the ticket at the end releases its objects and wakes the loop.
async fn run_op(inner: &Arc<Inner>, work: crate::ops::Work, mut ticket: Ticket) {
    ticket.hold_slot(inner.slots.acquire(work.kind()).await);
    if is_held(inner, &work) || (work.create_of().is_some() && inner.shared().draining) {
        return;
    }
    let name = work.name();
    let created_pool = work.create_of().map(str::to_string);
    let object = work.keys().into_iter().next().map(Key::Object);
    let Err(e) = crate::ops::execute(inner, work, &mut ticket).await else {
        if let Some(key) = &object {
            inner.shared().backoffs.clear(key);
        }
        return;
    };
    let class = e.class();
    count_error(inner, name, &e);
    // GitHub's rate limit is the app's, not the pool's: every create waits for it.
    let wait = github_wait(inner, &e);
    match (created_pool, object) {
        (Some(pool), _) => {
            inner
                .health
                .create_failed(inner, &pool, class, &e.to_string());
            back_off(inner, &pool, class, wait)
        }
        (None, Some(key)) => {
            inner.shared().backoffs.fail(key, wait, Instant::now());
        }
        (None, None) => {}
    }
}

fn update_gauges(
    inner: &Inner,
    set: &crate::pools::PoolSet,
    jobs: &[JobView],
    runners: &[RunnerView],
) {
    let pools = &set.specs;
    let demand = airlock_core::planner::demand(jobs, pools);
    // A pool removed by a reload loses its series once its last runner is gone.
    let names: std::collections::BTreeSet<String> = pools
        .iter()
        .map(|p| p.name.clone())
        .chain(runners.iter().map(|r| r.pool.clone()))
        .collect();
    let gone: Vec<String> = {
        let mut s = inner.shared();
        let gone = s.gauged_pools.difference(&names).cloned().collect();
        s.gauged_pools = names.clone();
        gone
    };
    for pool in gone {
        crate::metrics::forget_pool(&inner.metrics, &pool);
    }
    for p in &set.cfgs {
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
    for name in &names {
        for g in [
            &inner.metrics.pool_degraded,
            &inner.metrics.pool_image_outdated,
            &inner.metrics.jobs_stuck,
        ] {
            // Present (0) from the pool's first pass on; the health watch sets them.
            let _ = g.get_or_create(&PoolLabels { pool: name.clone() });
        }
        inner
            .metrics
            .queued_jobs
            .get_or_create(&PoolLabels { pool: name.clone() })
            .set(demand.get(name).copied().unwrap_or(0) as i64);
        for state in RunnerState::ALL {
            if state == RunnerState::Gone {
                continue;
            }
            let n = runners
                .iter()
                .filter(|r| &r.pool == name && r.state == state)
                .count();
            inner
                .metrics
                .runners
                .get_or_create(&PoolStateLabels {
                    pool: name.clone(),
                    state: state.to_string(),
                })
                .set(n as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::StopReason;

    #[test]
    fn a_pass_runs_one_operation_per_object_and_stops_before_creates() {
        let create = || Op::Create { pool: "p".into() };
        let stop = |r: &str, reason| Op::Stop {
            runner: r.into(),
            reason,
        };
        let reap = |id: &str| Op::DestroySandbox { id: id.into() };
        let got = schedule(vec![
            create(),
            stop("a", StopReason::Exited),
            create(),
            stop("a", StopReason::IdleTimeout),
            reap("s1"),
            stop("b", StopReason::JobTimeout),
            reap("s1"),
            create(),
        ]);
        assert_eq!(
            got,
            vec![
                stop("a", StopReason::Exited),
                reap("s1"),
                stop("b", StopReason::JobTimeout),
                create(),
                create(),
                create(),
            ],
            "each object once (its first operation), in the plan's order, creates last and all kept"
        );
    }
}
