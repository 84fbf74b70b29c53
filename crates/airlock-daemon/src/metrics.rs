//! The one metrics registry. Names follow Prometheus conventions; where ARC has an equivalent
//! (`gha_idle_runners`, `gha_busy_runners`, `gha_assigned_jobs`), ours carry the same meaning
//! under airlock's prefix, labelled by pool.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub event: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStateLabels {
    pub pool: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolInfoLabels {
    pub pool: String,
    pub backend: String,
    /// microVM pools: `kvm`, `tcg`, `refused` or `unprobed`; other pools: `none`.
    pub accel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StopLabels {
    pub pool: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpNameLabels {
    pub op: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub webhook_deliveries: Family<DeliveryLabels, Counter>,
    pub github_requests: Family<RequestLabels, Counter>,
    pub runners: Family<PoolStateLabels, Gauge>,
    pub pool_info: Family<PoolInfoLabels, Gauge>,
    pub queued_jobs: Family<PoolLabels, Gauge>,
    pub runners_created: Family<PoolLabels, Counter>,
    pub runners_stopped: Family<StopLabels, Counter>,
    pub runner_start_seconds: Histogram,
    pub reconcile_seconds: Histogram,
    pub store_call_seconds: Histogram,
    pub store_work_seconds: Histogram,
    pub store_batch_calls: Histogram,
    pub reconcile_errors: Family<OpLabels, Counter>,
    pub ops_deferred: Family<OpNameLabels, Counter>,
    pub polls: Family<OutcomeLabels, Counter>,
    pub orphans_reaped: Family<OutcomeLabels, Counter>,
    pub jit_stock: Family<PoolLabels, Gauge>,
    pub jit_stock_used: Family<PoolLabels, Counter>,
    pub egress_blocked: Family<PoolLabels, Counter>,
    pub egress_dns_answers: Counter,
    pub github_rate_remaining: Gauge,
    pub pool_degraded: Family<PoolLabels, Gauge>,
    pub pool_image_outdated: Family<PoolLabels, Gauge>,
    pub jobs_stuck: Family<PoolLabels, Gauge>,
    pub clock_drift_seconds: Gauge,
    pub github_circuit_open: Gauge,
    pub disk_free_bytes: Gauge,
    pub disk_low: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("airlock");
        let m = Metrics {
            webhook_deliveries: Family::default(),
            github_requests: Family::default(),
            runners: Family::default(),
            pool_info: Family::default(),
            queued_jobs: Family::default(),
            runners_created: Family::default(),
            runners_stopped: Family::default(),
            runner_start_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            reconcile_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            store_call_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 18)),
            store_work_seconds: Histogram::new(exponential_buckets(0.00001, 2.0, 18)),
            store_batch_calls: Histogram::new(exponential_buckets(1.0, 2.0, 7)),
            reconcile_errors: Family::default(),
            ops_deferred: Family::default(),
            polls: Family::default(),
            orphans_reaped: Family::default(),
            jit_stock: Family::default(),
            jit_stock_used: Family::default(),
            egress_blocked: Family::default(),
            egress_dns_answers: Counter::default(),
            github_rate_remaining: Gauge::default(),
            pool_degraded: Family::default(),
            pool_image_outdated: Family::default(),
            jobs_stuck: Family::default(),
            clock_drift_seconds: Gauge::default(),
            github_circuit_open: Gauge::default(),
            disk_free_bytes: Gauge::default(),
            disk_low: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries received, by event and outcome",
            m.webhook_deliveries.clone(),
        );
        registry.register(
            "github_requests",
            "Requests sent to the GitHub API, by method and status (0: no response)",
            m.github_requests.clone(),
        );
        registry.register(
            "runners",
            "Runners by pool and state (ARC: gha_idle_runners, gha_busy_runners)",
            m.runners.clone(),
        );
        registry.register(
            "pool_info",
            "1 per pool, labelled with its backend and, for microVM pools, the accelerator its VMs boot with (tcg: emulated, several times slower)",
            m.pool_info.clone(),
        );
        registry.register(
            "queued_jobs",
            "Queued jobs each pool serves (ARC: gha_assigned_jobs)",
            m.queued_jobs.clone(),
        );
        registry.register(
            "pool_degraded",
            "1 while a pool is degraded: its creates failed several times in a row, or its image is outdated (`airlock status` says why)",
            m.pool_degraded.clone(),
        );
        registry.register(
            "pool_image_outdated",
            "1 while a pool's runners exit as outdated (GitHub's runner updating or its version deprecated): rebuild its image",
            m.pool_image_outdated.clone(),
        );
        registry.register(
            "jobs_stuck",
            "Jobs a pool serves still queued server.stuck_after after GitHub queued them",
            m.jobs_stuck.clone(),
        );
        registry.register(
            "clock_drift_seconds",
            "GitHub's clock minus this host's, from the Date of GitHub's last answer (App JWTs and rate-limit resets use GitHub's; past 10 s the host's clock needs fixing)",
            m.clock_drift_seconds.clone(),
        );
        registry.register(
            "github_circuit_open",
            "1 while GitHub keeps failing (5 transient errors in a row) and airlock sends it nothing until a cool-down of 2 s doubling to 60 s ends",
            m.github_circuit_open.clone(),
        );
        registry.register(
            "disk_free_bytes",
            "Free bytes of the state directory's filesystem",
            m.disk_free_bytes.clone(),
        );
        registry.register(
            "disk_low",
            "1 while the state directory's free space is below server.disk_low_mib: no sandbox is created and airlock prunes what it owns",
            m.disk_low.clone(),
        );
        registry.register(
            "runners_created",
            "Runners created",
            m.runners_created.clone(),
        );
        registry.register(
            "runners_stopped",
            "Runners torn down, by reason",
            m.runners_stopped.clone(),
        );
        registry.register("runner_start_seconds", "From the decision to create a runner to its process running (JIT config, sandbox, start)", m.runner_start_seconds.clone());
        registry.register(
            "reconcile_seconds",
            "Duration of one reconcile pass",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "store_call_seconds",
            "Duration of one call to the store, from the caller's view (its wait for the store's thread and for its own wake-up included)",
            m.store_call_seconds.clone(),
        );
        registry.register(
            "store_work_seconds",
            "Time the store's thread spent on one call (SQLite alone; a batch's time shared by its calls)",
            m.store_work_seconds.clone(),
        );
        registry.register(
            "store_batch_calls",
            "Calls committed together by the store's thread (group commit)",
            m.store_batch_calls.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed operations, by operation and error class",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "ops_deferred",
            "Operations a pass left to the operation that owns their object (it plans them again once that one ends)",
            m.ops_deferred.clone(),
        );
        registry.register(
            "polls",
            "Polls of GitHub for jobs and runners, by outcome",
            m.polls.clone(),
        );
        registry.register(
            "orphans_reaped",
            "Orphaned registrations and sandboxes removed",
            m.orphans_reaped.clone(),
        );
        registry.register(
            "jit_stock",
            "JIT configs ready in each pool's stock (registrations no runner uses yet)",
            m.jit_stock.clone(),
        );
        registry.register(
            "jit_stock_used",
            "Runners started from a stocked JIT config, with no GitHub request on their path",
            m.jit_stock_used.clone(),
        );
        registry.register(
            "egress_blocked",
            "Destinations sandboxes were stopped from reaching (names the resolver refused, addresses no policy opens), by pool",
            m.egress_blocked.clone(),
        );
        registry.register(
            "egress_dns_answers",
            "Questions the sandboxes' resolver answered",
            m.egress_dns_answers.clone(),
        );
        registry.register(
            "github_rate_remaining",
            "Requests left in GitHub's rate-limit window as its last answer said (reads pause when a tenth of the limit is left, kept for writes)",
            m.github_rate_remaining.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)
            .expect("writing to a String cannot fail");
        s
    }
}

/// Removes a pool's gauges (a reload removed it and its last runner is gone); its counters stay,
/// as counters do.
pub(crate) fn forget_pool(m: &Metrics, pool: &str) {
    let labels = PoolLabels { pool: pool.into() };
    for g in [
        &m.queued_jobs,
        &m.jit_stock,
        &m.pool_degraded,
        &m.pool_image_outdated,
        &m.jobs_stuck,
    ] {
        g.remove(&labels);
    }
    for state in airlock_core::RunnerState::ALL {
        m.runners.remove(&PoolStateLabels {
            pool: pool.into(),
            state: state.to_string(),
        });
    }
    for backend in airlock_core::BackendKind::ALL {
        for accel in ["none", "unprobed", "kvm", "tcg", "refused"] {
            m.pool_info.remove(&PoolInfoLabels {
                pool: pool.into(),
                backend: backend.as_str().into(),
                accel: accel.into(),
            });
        }
    }
}
