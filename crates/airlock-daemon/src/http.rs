//! The HTTP side: `POST /webhook`, `GET /metrics`, `GET /healthz`, `GET /api/v1/status`,
//! `GET /api/v1/egress/jobs/{id}` (a job's egress reports), `GET /api/v1/egress/suggest?pool=
//! NAME&since=7d` (an allowlist proposed from a pool's audit-mode reports).
//! Handlers only check and parse a request into a `Command` and hand it to `dispatch`; they hold
//! no logic of their own. A webhook is verified over the raw body before anything is parsed, and
//! stored before it is answered, so a 2xx means it survives a crash.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use airlock_core::JobObservation;
use airlock_github::webhook::{self, Event, MAX_BODY};
use airlock_store::Ingest;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::metrics::DeliveryLabels;
use crate::{now_ms, Inner};

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/webhook", post(webhook_handler))
        .route(
            "/metrics",
            get(|State(i): State<Arc<Inner>>| async move { dispatch(&i, Command::Metrics).await }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/api/v1/status",
            get(|State(i): State<Arc<Inner>>| async move { dispatch(&i, Command::Status).await }),
        )
        .route(
            "/api/v1/egress/jobs/{id}",
            get(
                |State(i): State<Arc<Inner>>, Path(id): Path<String>| async move {
                    match id.parse::<u64>() {
                        Ok(job) => dispatch(&i, Command::EgressJob { job }).await,
                        Err(_) => refuse(
                            StatusCode::BAD_REQUEST,
                            &format!("{id:?} is not a job id (a number)"),
                        ),
                    }
                },
            ),
        )
        .route("/api/v1/egress/suggest", get(suggest_handler))
        .route("/api/v1/reload", post(reload_handler))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(inner)
}

/// `POST /api/v1/reload` (`airlock reload`): the daemon reads its config file again. 200 with
/// what changed; 422 with the problems of a config it refuses (the running one stays); 409 when
/// it was not started from a file. It takes no input: what it applies is the operator's file.
async fn reload_handler(State(inner): State<Arc<Inner>>) -> Response {
    match inner.reload_file() {
        Ok(r) => (StatusCode::OK, Json(json!(r))).into_response(),
        Err(e) => match &e {
            crate::ReloadError::NoFile => refuse(StatusCode::CONFLICT, &e.to_string()),
            crate::ReloadError::Invalid { problems, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "error": e.to_string(), "problems": problems })),
            )
                .into_response(),
        },
    }
}

/// Everything the HTTP side can ask of the daemon.
enum Command {
    Ingest {
        guid: String,
        event: String,
        action: Option<String>,
        job: Option<Box<JobObservation>>,
    },
    Ping {
        guid: String,
    },
    Status,
    Metrics,
    EgressJob {
        job: u64,
    },
    EgressSuggest {
        pool: String,
        since: i64,
    },
}

fn count(inner: &Inner, event: &str, outcome: &str) {
    inner
        .metrics
        .webhook_deliveries
        .get_or_create(&DeliveryLabels {
            event: event.into(),
            outcome: outcome.into(),
        })
        .inc();
}

fn refuse(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}

async fn webhook_handler(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let event = h("x-github-event").unwrap_or_default();
    let Some(secret) = &inner.webhook_secret else {
        count(&inner, &event, "refused");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "webhooks are disabled: no webhook secret is configured",
        );
    };
    if let Err(e) = webhook::verify(secret, &body, h("x-hub-signature-256").as_deref()) {
        count(&inner, &event, "bad_signature");
        tracing::warn!(error = %e, "webhook refused");
        return refuse(StatusCode::UNAUTHORIZED, &e.to_string());
    }
    if event.is_empty() {
        count(&inner, "", "malformed");
        return refuse(StatusCode::BAD_REQUEST, "missing X-GitHub-Event header");
    }
    let Some(guid) = h("x-github-delivery").filter(|g| !g.is_empty() && g.len() <= 100) else {
        count(&inner, &event, "malformed");
        return refuse(
            StatusCode::BAD_REQUEST,
            "missing or invalid X-GitHub-Delivery header",
        );
    };
    let cmd = match webhook::parse(&event, &body) {
        Ok(Event::Ping) => Command::Ping { guid },
        Ok(Event::WorkflowJob { action, job }) => Command::Ingest {
            guid,
            event,
            action: Some(action),
            job: Some(job),
        },
        Ok(Event::Other) => Command::Ingest {
            guid,
            event,
            action: None,
            job: None,
        },
        Err(e) => {
            count(&inner, &event, "malformed");
            tracing::warn!(error = %e, "webhook refused");
            return refuse(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    dispatch(&inner, cmd).await
}

#[derive(serde::Deserialize)]
struct SuggestQuery {
    pool: Option<String>,
    /// How far back: `7d`, `36h` (default 7 days).
    since: Option<String>,
}

async fn suggest_handler(
    State(inner): State<Arc<Inner>>,
    Query(q): Query<SuggestQuery>,
) -> Response {
    let Some(pool) = q.pool.filter(|p| !p.is_empty()) else {
        return refuse(StatusCode::BAD_REQUEST, "missing ?pool=NAME");
    };
    if inner.pools().cfg(&pool).is_none() {
        return refuse(StatusCode::NOT_FOUND, &format!("no pool named {pool:?}"));
    }
    let back = match q.since.as_deref().map(humantime::parse_duration) {
        None => Duration::from_secs(7 * 24 * 3600),
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!(
                    "since={:?}: {e} (write it as 7d, 36h)",
                    q.since.unwrap_or_default()
                ),
            )
        }
    };
    let since = now_ms() - back.as_millis().min(i64::MAX as u128) as i64;
    dispatch(&inner, Command::EgressSuggest { pool, since }).await
}

async fn dispatch(inner: &Inner, cmd: Command) -> Response {
    match cmd {
        Command::Ping { guid } => {
            count(inner, "ping", "accepted");
            tracing::info!(delivery = %guid, "ping from GitHub");
            (StatusCode::OK, Json(json!({ "ok": "pong" }))).into_response()
        }
        Command::Ingest {
            guid,
            event,
            action,
            job,
        } => {
            let ignored = job.is_none();
            // Jobs for other runners (GitHub-hosted, other tools') are recorded but need no pass.
            let relevant = job.as_deref().is_some_and(|j| {
                let view = airlock_core::JobView {
                    id: j.id,
                    repo: j.repo.clone(),
                    enterprise: j.enterprise.clone(),
                    labels: j.labels.clone(),
                    status: j.status,
                };
                airlock_core::choose_pool(&view, &inner.pools().specs).is_some()
                    || j.runner_name
                        .as_deref()
                        .is_some_and(|r| r.starts_with(airlock_core::RUNNER_PREFIX))
            });
            let (g, e) = (guid.clone(), event.clone());
            // Ahead of the daemon's own calls: GitHub's sender waits for this answer, and a
            // burst's jobs are heard of one delivery at a time.
            let stored = inner
                .store
                .call_first(move |s| {
                    s.ingest_delivery(&g, &e, action.as_deref(), job.as_deref(), now_ms())
                })
                .await;
            match stored {
                Ok(Ingest::Duplicate) => {
                    count(inner, &event, "duplicate");
                    (StatusCode::OK, Json(json!({ "ok": "duplicate delivery" }))).into_response()
                }
                Ok(Ingest::Stored { changed }) => {
                    count(inner, &event, if ignored { "ignored" } else { "accepted" });
                    if changed && relevant {
                        inner.wake.notify_one();
                    }
                    (StatusCode::ACCEPTED, Json(json!({ "ok": "stored" }))).into_response()
                }
                Err(e) => {
                    count(inner, &event, "error");
                    tracing::error!(error = %e, delivery = %guid, "cannot store webhook delivery");
                    refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "cannot store the delivery; redeliver it",
                    )
                }
            }
        }
        Command::Metrics => (
            StatusCode::OK,
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            inner.metrics.encode(),
        )
            .into_response(),
        Command::EgressJob { job } => match crate::egress::for_job(inner, job).await {
            Ok(v) => Json(v).into_response(),
            Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Command::EgressSuggest { pool, since } => {
            match crate::egress::suggest(inner, pool, since).await {
                Ok(v) => Json(v).into_response(),
                Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        Command::Status => match status(inner).await {
            Ok(v) => Json(v).into_response(),
            Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
    }
}

async fn status(inner: &Inner) -> Result<serde_json::Value, airlock_store::StoreError> {
    let (runners, jobs) = inner
        .store
        .call(|s| Ok((s.live_runners()?, s.open_jobs()?)))
        .await?;
    let set = inner.pools();
    let pools = &set.specs;
    let views: Vec<_> = jobs
        .iter()
        .map(|j| airlock_core::JobView {
            id: j.id,
            repo: j.repo.clone(),
            enterprise: j.enterprise.clone(),
            labels: j.labels.clone(),
            status: j.status,
        })
        .collect();
    let demand = airlock_core::planner::demand(&views, pools);
    let pools: Vec<_> = set
        .cfgs
        .iter()
        .map(|p| {
            let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
            for r in runners.iter().filter(|r| r.pool == p.name) {
                *by_state.entry(r.state.to_string()).or_default() += 1;
            }
            let microvm = p.microvm.as_ref().map(|m| {
                let state = inner.backend.accel(&p.name);
                json!({ "driver": m.driver.as_str(), "accel_asked": m.accel.as_str(), "accel": inner.backend.accel_label(p), "warning": state.as_ref().and_then(|s| s.warning()), "disk_gib": m.disk_gib, "kernel": m.kernel })
            });
            let health = inner.health.get(&p.name);
            let health = json!({ "degraded": health.degraded(), "reason": health.reason(), "detail": health });
            json!({ "name": p.name, "scope": p.scope.to_string(), "labels": p.labels, "backend": p.backend.as_str(), "image": p.image, "disk_gib": p.disk_gib, "microvm": microvm, "queued": demand.get(&p.name).copied().unwrap_or(0), "runners": by_state, "health": health })
        })
        .collect();
    let draining = inner.shared().draining;
    let stuck = crate::health::stuck_jobs(inner).await?;
    let clock = crate::health::clock(inner);
    let github = match inner.github.circuit() {
        airlock_github::breaker::Circuit::Closed => json!({ "circuit": "closed" }),
        airlock_github::breaker::Circuit::HalfOpen => json!({ "circuit": "half_open" }),
        airlock_github::breaker::Circuit::Open { until } => json!({
            "circuit": "open",
            "retry_in_ms": until.saturating_duration_since(std::time::Instant::now()).as_millis() as u64,
        }),
    };
    let disk = json!({ "free_bytes": inner.disk.free(), "low": inner.disk.low(), "low_water_mib": inner.cfg.server.disk_low_mib, "high_water_mib": inner.cfg.server.disk_high_mib });
    Ok(
        json!({ "draining": draining, "pools": pools, "runners": runners, "jobs": jobs, "stuck": stuck, "clock": clock, "disk": disk, "github": github }),
    )
}
