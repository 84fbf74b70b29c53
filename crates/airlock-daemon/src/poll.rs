//! The poller: every `poll_interval` (and on demand) it asks GitHub for the runner registrations
//! and the jobs of queued and in-progress runs in every pool's scope. It is how airlock finds jobs
//! whose webhooks were lost, learns that runners came online or took a job, and collects the
//! registrations the orphan reaper compares against the store. It only writes observations to the
//! store and wakes the loop; it never creates or destroys anything.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use airlock_core::{JobObservation, JobStatus, RegistrationView, RunnerState, Scope};
use airlock_github::GitHubError;
use tokio::sync::watch;
use tracing::Instrument;

use crate::metrics::OutcomeLabels;
use crate::{now_ms, Inner};

const MIN_POLL_SPACING: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) async fn run(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    if inner
        .pools()
        .cfgs
        .iter()
        .any(|p| matches!(p.scope, Scope::Enterprise(_)))
    {
        tracing::warn!("GitHub has no endpoint listing an enterprise's queued jobs: enterprise pools rely on webhooks alone");
    }
    loop {
        let began = tokio::time::Instant::now();
        let outcome = match poll_once(&inner)
            .instrument(tracing::info_span!("poll"))
            .await
        {
            Ok(()) => "ok",
            Err(e) => {
                tracing::warn!(error = %e, "poll incomplete");
                "error"
            }
        };
        inner
            .metrics
            .polls
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
        if let Some(b) = inner.github.rate_budget() {
            inner.metrics.github_rate_remaining.set(b.remaining as i64);
        }
        inner.wake.notify_one();
        tokio::select! {
            _ = crate::stopped(&mut stop) => return,
            _ = inner.poll_now.notified() => {
                // Early polls are asked for by events; never more than one a second.
                tokio::time::sleep_until(began + MIN_POLL_SPACING).await;
            }
            _ = tokio::time::sleep(inner.cfg.github.poll_interval) => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PollError {
    #[error(transparent)]
    GitHub(#[from] GitHubError),
    #[error(transparent)]
    Store(#[from] airlock_store::StoreError),
}

/// GitHub redelivers for at most three days; a delivery id older than that cannot come back.
const DELIVERY_RETENTION_MS: i64 = 4 * 24 * 3600 * 1000;

async fn poll_once(inner: &Inner) -> Result<(), PollError> {
    let started = now_ms();
    let history = started - inner.cfg.server.history_retention.as_millis() as i64;
    let pruned = inner
        .store
        .call(move |s| {
            s.prune_deliveries(started - DELIVERY_RETENTION_MS)?;
            s.prune_history(history)
        })
        .await?;
    if pruned > 0 {
        tracing::debug!(rows = pruned, "pruned old history");
    }
    let scopes: BTreeSet<Scope> = inner.pools().cfgs.iter().map(|p| p.scope.clone()).collect();
    let mut registrations = Vec::new();
    let mut first_error = None;
    for scope in &scopes {
        match inner.github.list_runners(scope).await {
            Ok(list) => {
                apply_registrations(inner, &list).await?;
                registrations.extend(list.into_iter().map(|r| RegistrationView {
                    scope: scope.clone(),
                    id: r.id,
                    name: r.name,
                    busy: r.busy,
                }));
            }
            Err(e) => {
                first_error.get_or_insert(PollError::GitHub(e));
                continue;
            }
        }
        let repos = match scope {
            Scope::Repo { owner, name } => vec![format!("{owner}/{name}")],
            Scope::Org(o) => match inner.github.org_repos(scope, o).await {
                Ok(r) => r,
                Err(e) => {
                    first_error.get_or_insert(PollError::GitHub(e));
                    continue;
                }
            },
            Scope::Enterprise(_) => vec![],
        };
        for repo in repos {
            if let Err(e) = poll_repo(inner, scope, &repo, started).await {
                first_error.get_or_insert(e);
            }
        }
    }
    // Runners torn down while this poll ran may still be listed: not orphans.
    let gone: std::collections::HashSet<u64> = inner
        .store
        .call(move |s| s.gone_since(started))
        .await?
        .into_iter()
        .collect();
    registrations.retain(|r| !gone.contains(&r.id));
    match first_error {
        None => {
            let mut s = inner.shared();
            s.registrations = registrations;
            s.last_poll_start = started;
            Ok(())
        }
        Some(e) => Err(e),
    }
}

async fn poll_repo(
    inner: &Inner,
    scope: &Scope,
    repo: &str,
    started: i64,
) -> Result<(), PollError> {
    let jobs = inner.github.active_jobs(scope, repo).await?;
    let seen: HashSet<u64> = jobs.iter().map(|j| j.id).collect();
    let open = inner
        .store
        .call(move |s| {
            s.observe_jobs(&jobs, now_ms())?;
            s.open_jobs()
        })
        .await?;
    // Open jobs the poll no longer lists belong to runs that finished: settle them one by one.
    let stale: Vec<_> = open
        .into_iter()
        .filter(|j| {
            j.repo.eq_ignore_ascii_case(repo) && j.first_seen_at < started && !seen.contains(&j.id)
        })
        .collect();
    for j in stale {
        let obs = match inner.github.job(scope, repo, j.id).await {
            Ok(o) => o,
            Err(GitHubError::NotFound { .. }) => JobObservation {
                id: j.id,
                run_id: j.run_id,
                repo: j.repo.clone(),
                enterprise: j.enterprise.clone(),
                name: j.name.clone(),
                labels: j.labels.clone(),
                status: JobStatus::Completed,
                conclusion: None,
                runner_name: None,
                created_at: j.created_at,
                started_at: j.started_at,
                completed_at: None,
            },
            Err(e) => return Err(e.into()),
        };
        inner
            .store
            .call(move |s| s.observe_jobs(&[obs], now_ms()))
            .await?;
    }
    Ok(())
}

/// Runners GitHub lists as online become idle; busy ones become busy.
async fn apply_registrations(
    inner: &Inner,
    list: &[airlock_github::Registration],
) -> Result<(), PollError> {
    let now = now_ms();
    let mut moves = Vec::new();
    for r in inner.store.call(|s| s.live_runners()).await? {
        let Some(reg) = list.iter().find(|x| Some(x.id) == r.github_id) else {
            continue;
        };
        let to = match (reg.busy, reg.online, r.state) {
            (true, _, RunnerState::Starting | RunnerState::Idle) => RunnerState::Busy,
            (false, true, RunnerState::Starting) => RunnerState::Idle,
            _ => continue,
        };
        if r.state == RunnerState::Starting {
            // The pool's runners come online again: its creates need no more holding back.
            inner.shared().backoffs.clear_pool(&r.pool);
            inner.health.runner_online(inner, &r.pool);
        }
        moves.push((r.name, to));
    }
    inner
        .store
        .call(move |s| {
            for (name, to) in moves {
                s.runner_transition(&name, to, now, Some("seen at GitHub"))?;
            }
            Ok(())
        })
        .await?;
    Ok(())
}
