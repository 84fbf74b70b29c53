//! Each pool's health as the daemon sees it, for `airlock status`, the metrics and the log:
//!
//! - **degraded**: its creates failed `DEGRADED_AFTER` times in a row (a backend whose `create`
//!   keeps failing, a missing image, a refused probe, GitHub refusing its registrations), with the
//!   last error as the reason; cleared when one of its runners comes online;
//! - **image outdated**: one of its runners exited with GitHub's "updating" or "version
//!   deprecated" code (`airlock_core::health::outdated_exit`): the pool's creates wait
//!   `OUTDATED_WAIT` between attempts (no retry storm: every new runner would do the same) until
//!   one of its runners comes online;
//! - **stuck jobs**: jobs it serves that are still queued `server.stuck_after` after GitHub
//!   queued them, each logged once as an error with the reason `wait_reason` gives.
//!
//! Other pools are never touched by one pool's health. Only the reconcile loop, the executor and
//! the poller report facts here; the planner does not read them (it plans from backoffs).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use airlock_core::health::{
    outdated_exit, wait_reason, GitHubHold, PoolFacts, WaitReason, DEGRADED_AFTER,
};
use airlock_core::{JobStatus, RunnerState};
use airlock_github::breaker::Circuit;
use serde::Serialize;

use crate::metrics::PoolLabels;
use crate::Inner;

/// How long an outdated pool waits between creates.
pub(crate) const OUTDATED_WAIT: Duration = Duration::from_secs(60);

/// What is known of one pool.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PoolHealth {
    /// Failed creates in a row.
    pub failures: u32,
    /// The last failure's class (`sandbox`, `image`, `transient`, …) and message.
    pub last_error_class: Option<String>,
    pub last_error: Option<String>,
    /// Unix ms at which it became degraded; `None`: it is not.
    pub degraded_since: Option<i64>,
    /// What its runners' exit said of the image (`None`: nothing).
    pub image_outdated: Option<String>,
    pub image_outdated_since: Option<i64>,
    /// Unix ms of the last failure or outdated exit: a runner online since then ends it all.
    pub last_failure_at: Option<i64>,
}

impl PoolHealth {
    pub fn degraded(&self) -> bool {
        self.degraded_since.is_some() || self.image_outdated.is_some()
    }

    /// Why it is degraded, in words.
    pub fn reason(&self) -> Option<String> {
        if let Some(o) = &self.image_outdated {
            return Some(format!(
                "image outdated: {o}; rebuild the pool's image (`airlock image build`)"
            ));
        }
        self.degraded_since.map(|_| {
            format!(
                "{} creates failed in a row; last ({}): {}",
                self.failures,
                self.last_error_class.as_deref().unwrap_or("?"),
                self.last_error.as_deref().unwrap_or("?")
            )
        })
    }

    fn facts(&self, backing_off: bool) -> PoolFacts {
        PoolFacts {
            failures: self.failures,
            last_error: self.last_error_class.clone().zip(self.last_error.clone()),
            backing_off,
            outdated: self.image_outdated.clone(),
        }
    }
}

/// A queued job past `server.stuck_after`.
#[derive(Debug, Clone, Serialize)]
pub struct StuckJob {
    pub job_id: u64,
    pub repo: String,
    pub name: String,
    pub pool: String,
    /// Seconds since GitHub queued it (or since airlock first heard of it).
    pub waited_s: u64,
    /// `WaitReason::code`.
    pub reason_code: &'static str,
    pub reason: String,
}

#[derive(Debug, Default)]
pub(crate) struct Health {
    pools: Mutex<HashMap<String, PoolHealth>>,
    /// Stuck jobs already logged (dropped once they are no longer stuck).
    logged: Mutex<HashSet<u64>>,
    /// Whether the clock's drift was past `DRIFT_WARN_MS` at the last look.
    drifted: std::sync::atomic::AtomicBool,
}

/// GitHub's clock against ours, as the status reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ClockDrift {
    /// GitHub's time minus ours, from the `Date` of its last answer; `None` before any.
    pub offset_ms: Option<i64>,
    /// Past `airlock_github::clock::DRIFT_WARN_MS` either way.
    pub drifted: bool,
}

/// The clock drift GitHub's answers show.
pub(crate) fn clock(inner: &Inner) -> ClockDrift {
    let offset_ms = inner.github.clock_offset_ms();
    ClockDrift {
        offset_ms,
        drifted: offset_ms.is_some_and(|o| o.abs() > airlock_github::clock::DRIFT_WARN_MS),
    }
}

/// The drift into its metric, and a warning when it crosses the threshold (and a note when it
/// is back under it).
fn watch_clock(inner: &Inner) {
    let c = clock(inner);
    let Some(offset) = c.offset_ms else {
        return;
    };
    inner
        .metrics
        .clock_drift_seconds
        .set(offset.div_euclid(1000));
    let was = inner
        .health
        .drifted
        .swap(c.drifted, std::sync::atomic::Ordering::Relaxed);
    if c.drifted && !was {
        tracing::warn!(
            offset_s = offset / 1000,
            "this host's clock is {} s {} GitHub's: fix its time sync (NTP); airlock signs App JWTs and reads rate-limit resets on GitHub's clock meanwhile",
            (offset / 1000).abs(),
            if offset > 0 { "behind" } else { "ahead of" }
        );
    } else if was && !c.drifted {
        tracing::info!(
            offset_ms = offset,
            "this host's clock agrees with GitHub's again"
        );
    }
}

/// The client's circuit breaker into `airlock_github_circuit_open`.
fn watch_circuit(inner: &Inner) {
    let open = !matches!(inner.github.circuit(), Circuit::Closed);
    inner.metrics.github_circuit_open.set(open as i64);
}

impl Health {
    fn with<T>(&self, pool: &str, f: impl FnOnce(&mut PoolHealth) -> T) -> T {
        let mut m = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry(pool.to_string()).or_default())
    }

    pub(crate) fn get(&self, pool: &str) -> PoolHealth {
        self.with(pool, |h| h.clone())
    }

    /// A create of `pool` failed with an error of `class` (GitHub's rate limit is the app's
    /// and not counted), or one of its runners died before it came online.
    pub(crate) fn create_failed(&self, inner: &Inner, pool: &str, class: &str, error: &str) {
        if class == "rate_limited" {
            return;
        }
        let now = crate::now_ms();
        let newly = self.with(pool, |h| {
            h.failures += 1;
            h.last_failure_at = Some(now);
            h.last_error_class = Some(class.to_string());
            h.last_error = Some(error.to_string());
            let newly = h.failures >= DEGRADED_AFTER && h.degraded_since.is_none();
            if newly {
                h.degraded_since = Some(now);
            }
            newly
        });
        if newly {
            tracing::error!(
                pool,
                class,
                error,
                failures = DEGRADED_AFTER,
                "pool degraded: its creates keep failing (other pools are unaffected)"
            );
            set(&inner.metrics.pool_degraded, pool, true);
        }
    }

    /// One of `pool`'s runners exited with `code`: if GitHub's runner says with it that it is
    /// outdated, the pool is marked so and its creates wait (`OUTDATED_WAIT`). Returns whether
    /// it did.
    pub(crate) fn runner_exited(&self, inner: &Inner, pool: &str, code: Option<i32>) -> bool {
        let Some(what) = code.and_then(outdated_exit) else {
            return false;
        };
        let now = crate::now_ms();
        let newly = self.with(pool, |h| {
            let newly = h.image_outdated.is_none();
            h.image_outdated = Some(what.to_string());
            h.image_outdated_since.get_or_insert(now);
            h.last_failure_at = Some(now);
            newly
        });
        if newly {
            tracing::error!(pool, exit = code, what, "pool's image outdated: rebuild it (`airlock image build`); its creates now wait {}s between attempts", OUTDATED_WAIT.as_secs());
        }
        set(&inner.metrics.pool_image_outdated, pool, true);
        set(&inner.metrics.pool_degraded, pool, true);
        crate::reconcile::back_off(inner, pool, "image_outdated", Some(OUTDATED_WAIT));
        true
    }

    /// One of `pool`'s runners has been online (idle or busy) since `since` (Unix ms): if that
    /// is after the pool's last failure, the pool has recovered.
    pub(crate) fn online_since(&self, inner: &Inner, pool: &str, since: i64) {
        let after = self.with(pool, |h| h.last_failure_at.is_some_and(|t| since > t));
        if after {
            self.runner_online(inner, pool);
        }
    }

    /// One of `pool`'s runners came online: whatever was wrong with the pool is over.
    pub(crate) fn runner_online(&self, inner: &Inner, pool: &str) {
        let was = self.with(pool, std::mem::take);
        if was.degraded() {
            tracing::info!(
                pool,
                was = was.reason().unwrap_or_default(),
                "pool recovered: a runner came online"
            );
        }
        set(&inner.metrics.pool_degraded, pool, false);
        set(&inner.metrics.pool_image_outdated, pool, false);
    }
}

type PoolGauge = prometheus_client::metrics::family::Family<
    PoolLabels,
    prometheus_client::metrics::gauge::Gauge,
>;

fn set(g: &PoolGauge, pool: &str, on: bool) {
    g.get_or_create(&PoolLabels { pool: pool.into() })
        .set(i64::from(on));
}

/// Every job some pool serves that is still queued `stuck_after` after it was queued, with why.
pub(crate) async fn stuck_jobs(inner: &Inner) -> Result<Vec<StuckJob>, airlock_store::StoreError> {
    let (jobs, runners) = inner
        .store
        .call(|s| Ok((s.open_jobs()?, s.live_runners()?)))
        .await?;
    let now = crate::now_ms();
    let after = inner.cfg.server.stuck_after.as_millis() as i64;
    let set = inner.pools();
    let (draining, github) = {
        let s = inner.shared();
        let at = |t: Instant| now + t.saturating_duration_since(Instant::now()).as_millis() as i64;
        let github = match (inner.github.circuit(), s.rate_limited_until) {
            (_, Some(t)) if t > Instant::now() => GitHubHold::RateLimited { until: at(t) },
            (Circuit::Open { until }, _) => GitHubHold::Unavailable {
                until: at(until),
                failures: airlock_github::breaker::OPEN_AFTER,
            },
            _ => GitHubHold::None,
        };
        (s.draining, github)
    };
    let mut out = Vec::new();
    for j in jobs.into_iter().filter(|j| j.status == JobStatus::Queued) {
        let queued_at = j.created_at.unwrap_or(j.first_seen_at);
        if now - queued_at < after {
            continue;
        }
        let view = airlock_core::JobView {
            id: j.id,
            repo: j.repo.clone(),
            enterprise: j.enterprise.clone(),
            labels: j.labels.clone(),
            status: j.status,
        };
        let Some(pool) = airlock_core::choose_pool(&view, &set.specs) else {
            continue;
        };
        let states: Vec<RunnerState> = runners
            .iter()
            .filter(|r| r.pool == pool.name)
            .map(|r| r.state)
            .collect();
        let backing_off = inner
            .shared()
            .backoffs
            .holds_pool(&pool.name, Instant::now());
        let facts = inner.health.get(&pool.name).facts(backing_off);
        let reason: WaitReason = wait_reason(
            now,
            draining,
            inner.disk.low().then(|| inner.disk.free() >> 20),
            github,
            &facts,
            pool.max_runners,
            &states,
        );
        out.push(StuckJob {
            job_id: j.id,
            repo: j.repo,
            name: j.name,
            pool: pool.name.clone(),
            waited_s: ((now - queued_at) / 1000) as u64,
            reason_code: reason.code(),
            reason: reason.to_string(),
        });
    }
    Ok(out)
}

/// Looks for stuck jobs every `stuck_after / 4` (at most every 15 s): the metric per pool, and
/// an error log line for each job the first time it is found stuck.
pub(crate) async fn watch(
    inner: std::sync::Arc<Inner>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Also the disk's watch: at least every 5 s.
    let every = (inner.cfg.server.stuck_after / 4)
        .clamp(Duration::from_millis(200), Duration::from_secs(5));
    // The disk at once: a daemon started on a full disk admits nothing from its first pass.
    crate::disk::check(&inner).await;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = crate::stopped(&mut stop) => return,
        }
        watch_clock(&inner);
        watch_circuit(&inner);
        crate::disk::check(&inner).await;
        let stuck = match stuck_jobs(&inner).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for stuck jobs");
                continue;
            }
        };
        let set = inner.pools();
        let mut per_pool: HashMap<&str, i64> =
            set.specs.iter().map(|p| (p.name.as_str(), 0)).collect();
        for s in &stuck {
            *per_pool.entry(s.pool.as_str()).or_default() += 1;
        }
        for (pool, n) in per_pool {
            inner
                .metrics
                .jobs_stuck
                .get_or_create(&PoolLabels { pool: pool.into() })
                .set(n);
        }
        let mut logged = inner
            .health
            .logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now: HashSet<u64> = stuck.iter().map(|s| s.job_id).collect();
        logged.retain(|id| now.contains(id));
        for s in &stuck {
            if logged.insert(s.job_id) {
                tracing::error!(
                    job = s.job_id,
                    repo = %s.repo,
                    name = %s.name,
                    pool = %s.pool,
                    waited_s = s.waited_s,
                    reason = s.reason_code,
                    "job stuck: {}",
                    s.reason
                );
            }
        }
    }
}
