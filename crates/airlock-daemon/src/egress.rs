//! The daemon's side of egress: the resolver's finished reports moved into the store (then
//! forgotten by the resolver, so a crash between the two stores a report twice, never loses it),
//! its counts into metrics, and what the API answers about it (a job's report, a pool's
//! suggested allowlist).
//!
//! It must never decide what a sandbox may reach: that is the pool's policy, enforced by the
//! host's nftables and `airlock-egress`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use airlock_core::egress::report::{self, Report};
use airlock_store::{EgressRecord, StoreError};
use tokio::sync::watch;

use crate::metrics::PoolLabels;
use crate::{now_ms, Inner};

/// How often finished reports are collected.
const COLLECT_EVERY: Duration = Duration::from_secs(2);
/// Names seen below one parent domain before `suggest` folds them into a wildcard.
pub const FOLD_AT: usize = 3;

pub(crate) async fn run(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut counted = BTreeMap::new();
    loop {
        if let Err(e) = collect(&inner, &mut counted).await {
            tracing::warn!(error = %e, "cannot store finished egress reports; retrying");
        }
        tokio::select! {
            _ = crate::stopped(&mut stop) => {
                let _ = collect(&inner, &mut counted).await;
                return;
            }
            _ = tokio::time::sleep(COLLECT_EVERY) => {}
        }
    }
}

/// Stores every finished report, and adds the blocked sightings since the last call to the
/// pools' counters. Returns how many reports were stored.
pub(crate) async fn collect(
    inner: &Inner,
    counted: &mut BTreeMap<String, u64>,
) -> Result<usize, StoreError> {
    let Some(e) = inner.backend.egress.clone() else {
        return Ok(0);
    };
    for (pool, n) in e.blocked_by_pool() {
        let before = counted.insert(pool.clone(), n).unwrap_or(0);
        if n > before {
            inner
                .metrics
                .egress_blocked
                .get_or_create(&PoolLabels { pool })
                .inc_by(n - before);
        }
    }
    let answered = e.answered();
    let c = &inner.metrics.egress_dns_answers;
    c.inc_by(answered.saturating_sub(c.get()));
    let e2 = e.clone();
    let done = tokio::task::spawn_blocking(move || e2.finished())
        .await
        .unwrap_or_default();
    let mut stored = 0;
    for (s, r) in done {
        let (id, pool, mode, since) = (
            s.id.clone(),
            s.pool.clone().unwrap_or_default(),
            s.policy.mode,
            s.since_ms,
        );
        inner
            .store
            .call(move |st| st.put_egress(&id, &pool, mode, since, &r, now_ms()))
            .await?;
        if let Err(err) = e.forget(&s.id) {
            tracing::warn!(sandbox = %s.id, error = %err, "a stored egress report stays on disk");
        }
        stored += 1;
    }
    Ok(stored)
}

/// A job's reports: those stored, and the live one of a sandbox still running it.
pub(crate) async fn for_job(inner: &Inner, job: u64) -> Result<serde_json::Value, StoreError> {
    let (mut stored, runners) = inner
        .store
        .call(move |s| Ok((s.egress_for_job(job)?, s.live_runners()?)))
        .await?;
    let mut live = Vec::new();
    if let Some(e) = &inner.backend.egress {
        // Finished but not yet collected (the collector runs every `COLLECT_EVERY`).
        let all = inner.store.call(|s| s.all_runners()).await?;
        let e2 = e.clone();
        let done = tokio::task::spawn_blocking(move || e2.finished())
            .await
            .unwrap_or_default();
        for (s, report) in done {
            let Some(r) = all
                .iter()
                .find(|r| r.sandbox_id == s.id && r.job_id == Some(job))
            else {
                continue;
            };
            if stored.iter().any(|x| x.sandbox_id == s.id) {
                continue;
            }
            stored.push(EgressRecord {
                sandbox_id: s.id.clone(),
                pool: r.pool.clone(),
                runner_name: Some(r.name.clone()),
                job_id: Some(job),
                mode: s.policy.mode,
                started_at: s.since_ms,
                stored_at: now_ms(),
                report,
            });
        }
        for r in runners.iter().filter(|r| r.job_id == Some(job)) {
            if stored.iter().any(|x| x.sandbox_id == r.sandbox_id) {
                continue;
            }
            if let Some(report) = e.report(&r.sandbox_id) {
                let session = e.sessions().into_iter().find(|s| s.id == r.sandbox_id);
                live.push(EgressRecord {
                    sandbox_id: r.sandbox_id.clone(),
                    pool: r.pool.clone(),
                    runner_name: Some(r.name.clone()),
                    job_id: Some(job),
                    mode: session.map(|s| s.policy.mode).unwrap_or_default(),
                    started_at: r.created_at,
                    stored_at: 0,
                    report,
                });
            }
        }
    }
    stored.sort_by_key(|r| r.started_at);
    Ok(serde_json::json!({ "job": job, "reports": stored, "running": live }))
}

/// The allowlist proposed from a pool's audit-mode reports stored since `since`.
pub(crate) async fn suggest(
    inner: &Inner,
    pool: String,
    since: i64,
) -> Result<serde_json::Value, StoreError> {
    let p = pool.clone();
    let records = inner
        .store
        .call(move |s| s.egress_for_pool(&p, since))
        .await?;
    let audit: Vec<Report> = records
        .iter()
        .filter(|r| r.mode == airlock_core::egress::EgressMode::Audit)
        .map(|r| r.report.clone())
        .collect();
    let seen = report::seen(&audit);
    let s = airlock_core::egress::suggest(&seen, FOLD_AT);
    let entries: Vec<_> = s
        .iter()
        .map(|x| serde_json::json!({ "allow": x.allow.to_string(), "covers": x.covers, "jobs": x.jobs }))
        .collect();
    Ok(serde_json::json!({
        "pool": pool,
        "since": since,
        "jobs": audit.len(),
        "reports": records.len(),
        "entries": entries,
        "toml": airlock_core::egress::suggestions_toml(&s),
    }))
}
