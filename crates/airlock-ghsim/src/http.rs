//! ghsim's HTTP side: one handler that routes by path segments, so that auth, rate limits,
//! faults, ETags and the exchange record apply to every REST route in one place.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_core::Scope;
use axum::body::{to_bytes, Body};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::Rng;
use serde_json::{json, Value};
use sha2::Digest;

use crate::model::{self, SimRunner, Status, World};
use crate::{now_ms, Sim};

/// REST API versions GitHub accepts in `X-GitHub-Api-Version`.
const SUPPORTED_VERSIONS: &[&str] = &["2022-11-28", "2026-03-10"];

pub(crate) fn router(sim: Arc<Sim>) -> Router {
    Router::new().fallback(move |req: Request<Body>| {
        let sim = sim.clone();
        async move { handle(sim, req).await }
    })
}

struct Reply {
    status: StatusCode,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            body: Some(body),
            headers: vec![],
        }
    }
    fn empty(status: u16) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            body: None,
            headers: vec![],
        }
    }
    fn error(status: u16, message: &str) -> Reply {
        Reply::json(
            status,
            json!({ "message": message, "documentation_url": "https://docs.github.com/rest", "status": status.to_string() }),
        )
    }
    fn not_found() -> Reply {
        Reply::error(404, "Not Found")
    }
    fn header(mut self, k: &'static str, v: String) -> Reply {
        self.headers.push((k, v));
        self
    }
}

enum Principal {
    Token(String),
    Installation(u64),
    App,
}

fn random_token(prefix: &str) -> String {
    let b: [u8; 18] = rand::thread_rng().gen();
    format!("{prefix}_{}", hex::encode(b))
}

fn query(uri: &axum::http::Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Counts one mutating request in flight until dropped (see `Stats::max_concurrent_writes`).
struct WriteInFlight(Arc<Sim>);

impl WriteInFlight {
    fn start(sim: &Arc<Sim>) -> WriteInFlight {
        let mut st = sim.stats.lock().unwrap_or_else(|p| p.into_inner());
        st.writes_in_flight += 1;
        st.max_concurrent_writes = st.max_concurrent_writes.max(st.writes_in_flight);
        let now = Instant::now();
        if let Some(last) = st.last_write_start {
            let gap = now.duration_since(last).as_millis() as u64;
            st.min_write_gap_ms = Some(st.min_write_gap_ms.map_or(gap, |g| g.min(gap)));
        }
        st.last_write_start = Some(now);
        st.writes += 1;
        WriteInFlight(sim.clone())
    }
}

impl Drop for WriteInFlight {
    fn drop(&mut self) {
        let mut st = self.0.stats.lock().unwrap_or_else(|p| p.into_inner());
        st.writes_in_flight = st.writes_in_flight.saturating_sub(1);
    }
}

async fn handle(sim: Arc<Sim>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let q = query(&parts.uri);
    let body = match to_bytes(body, 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => return into_response(Reply::error(413, "Request body too large")),
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segs.first() == Some(&"_ghsim") {
        return into_response(
            private(&sim, &parts.method, &segs[1..], &parts.headers, &body).await,
        );
    }

    // Mutating requests in flight, counted while the (added latency and the) answer take.
    let _write = (parts.method != Method::GET && parts.method != Method::HEAD)
        .then(|| WriteInFlight::start(&sim));
    let faults = sim.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let header = |k: &str| {
        parts
            .headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let version = header("x-github-api-version");
    if header("accept") != "application/vnd.github+json"
        || version.is_empty()
        || header("user-agent").is_empty()
    {
        sim.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .missing_headers += 1;
    }
    if header("user-agent").is_empty() {
        return into_response(Reply::error(403, "Request forbidden by administrative rules. Please make sure your request has a User-Agent header"));
    }
    if !version.is_empty() && !SUPPORTED_VERSIONS.contains(&version) {
        return into_response(Reply::error(
            400,
            &format!("API version {version} is not supported."),
        ));
    }
    let mut reply = if let Some(r) = take_fault(&sim) {
        r
    } else {
        match authenticate(&sim, &parts.headers) {
            Err(r) => r,
            Ok(p) => match rate_check(&sim, &p) {
                Err(r) => r,
                Ok(rate_headers) => {
                    let mut r = rest(&sim, &p, &parts.method, &segs, &q, &body);
                    r.headers.extend(rate_headers);
                    r
                }
            },
        }
    };
    // ETags on successful GETs; a matching If-None-Match gets a bodiless 304.
    if parts.method == Method::GET && reply.status == StatusCode::OK {
        if let Some(b) = &reply.body {
            let etag = format!(
                "W/\"{}\"",
                &hex::encode(sha2::Sha256::digest(b.to_string()))[..32]
            );
            let inm = parts
                .headers
                .get("if-none-match")
                .and_then(|v| v.to_str().ok());
            if inm == Some(etag.as_str()) {
                reply.status = StatusCode::NOT_MODIFIED;
                reply.body = None;
            }
            reply.headers.push(("etag", etag));
        }
    }
    {
        let mut st = sim.stats.lock().unwrap_or_else(|p| p.into_inner());
        st.api_requests += 1;
        if reply.status == StatusCode::NOT_MODIFIED {
            st.not_modified += 1;
        }
        *st.by_route
            .entry(route_name(&parts.method, &segs))
            .or_default() += 1;
    }
    // GitHub's clock, as every answer of GitHub's states it (hyper adds none when one is set).
    reply.headers.push(("date", http_date(sim.now_ms())));
    if sim.record.is_some() {
        let req_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        sim.record(&json!({
            "method": parts.method.as_str(), "path": path, "query": q,
            "request": req_json, "status": reply.status.as_u16(), "response": reply.body,
        }));
    }
    into_response(reply)
}

/// An HTTP date (RFC 9110's IMF-fixdate) of Unix ms.
fn http_date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// A stable name for the route, with ids and names replaced, for statistics.
fn route_name(method: &Method, segs: &[&str]) -> String {
    let shape: Vec<&str> = segs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let prev = if i > 0 { segs[i - 1] } else { "" };
            if s.chars().all(|c| c.is_ascii_digit())
                || matches!(prev, "repos" | "orgs" | "enterprises")
                || (i >= 2 && segs[i - 2] == "repos" && i == 2)
            {
                "*"
            } else {
                s
            }
        })
        .collect();
    format!("{method} /{}", shape.join("/"))
}

fn into_response(r: Reply) -> Response {
    let mut resp = match r.body {
        Some(b) => (r.status, axum::Json(b)).into_response(),
        None => r.status.into_response(),
    };
    for (k, v) in r.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

fn take_fault(sim: &Sim) -> Option<Reply> {
    let mut f = sim.faults.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = rand::thread_rng();
    let by_chance = |per_mille: u32, rng: &mut rand::rngs::ThreadRng| {
        per_mille > 0 && rng.gen_range(0..1000) < per_mille
    };
    let error = by_chance(f.error_5xx_per_mille, &mut rng);
    let limited = !error && by_chance(f.rate_limit_per_mille, &mut rng);
    if f.error_5xx > 0 || error {
        f.error_5xx = f.error_5xx.saturating_sub(if error { 0 } else { 1 });
        sim.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .injected_5xx += 1;
        return Some(Reply::error(502, "Server Error"));
    }
    if f.rate_limit > 0 || limited {
        f.rate_limit = f.rate_limit.saturating_sub(if limited { 0 } else { 1 });
        sim.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .injected_rate_limits += 1;
        let status = if f.rate_limit_status == 403 { 403 } else { 429 };
        return Some(
            Reply::error(status, "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.")
                .header("retry-after", f.retry_after_s.max(1).to_string()),
        );
    }
    None
}

fn authenticate(sim: &Sim, headers: &HeaderMap) -> Result<Principal, Reply> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
        .or_else(|| auth.strip_prefix("token "))
        .map(str::trim)
        .unwrap_or("");
    if token.is_empty() {
        return Err(Reply::error(401, "Requires authentication"));
    }
    if sim.cfg.tokens.iter().any(|t| t == token) {
        return Ok(Principal::Token(token.to_string()));
    }
    if let Some((inst, exp)) = sim
        .inst_tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(token)
        .copied()
    {
        if exp <= sim.now_ms() {
            return Err(Reply::error(401, "Bad credentials"));
        }
        return Ok(Principal::Installation(inst));
    }
    if let Some(app) = &sim.cfg.app {
        if token.matches('.').count() == 2 {
            return verify_jwt(app, token, sim.now_ms() / 1000).map(|_| Principal::App);
        }
    }
    Err(Reply::error(401, "Bad credentials"))
}

#[derive(serde::Deserialize)]
struct Claims {
    iat: i64,
    exp: i64,
    iss: Value,
}

/// GitHub's checks of an App JWT at `now` (its Unix seconds): the signature, an `exp` in the
/// future but at most 10 minutes ahead, an `iat` at most 60 s ahead.
fn verify_jwt(app: &crate::AppConfig, token: &str, now: i64) -> Result<(), Reply> {
    let key = DecodingKey::from_rsa_pem(&app.public_key_pem)
        .map_err(|_| Reply::error(500, "ghsim: the App public key is not an RSA PEM"))?;
    let mut v = Validation::new(Algorithm::RS256);
    v.leeway = 0;
    v.required_spec_claims = ["exp", "iat", "iss"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // Expiry against GitHub's own (possibly skewed) clock, below, not the host's.
    v.validate_exp = false;
    let data = jsonwebtoken::decode::<Claims>(token, &key, &v)
        .map_err(|e| Reply::error(401, &format!("A JSON web token could not be decoded ({e})")))?;
    let c = data.claims;
    if c.exp <= now {
        return Err(Reply::error(
            401,
            "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
        ));
    }
    if c.exp - c.iat > 600 || c.exp > now + 600 {
        return Err(Reply::error(
            401,
            "'Expiration time' claim ('exp') is too far in the future",
        ));
    }
    if c.iat > now + 60 {
        return Err(Reply::error(
            401,
            "'Issued at' claim ('iat') must be an Integer representing a time in the past",
        ));
    }
    let iss = match &c.iss {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    if iss != app.client_id && iss != app.app_id.to_string() {
        return Err(Reply::error(
            401,
            "'Issuer' claim ('iss') must be an Integer or the App's client ID",
        ));
    }
    Ok(())
}

fn rate_check(sim: &Sim, p: &Principal) -> Result<Vec<(&'static str, String)>, Reply> {
    let key = match p {
        Principal::Token(t) => format!("token:{}", &t[..t.len().min(8)]),
        Principal::Installation(i) => format!("installation:{i}"),
        Principal::App => "app".into(),
    };
    let now = sim.now_ms() / 1000;
    let limit = sim.cfg.rate_limit;
    let mut rates = sim.rate.lock().unwrap_or_else(|p| p.into_inner());
    let e = rates.entry(key).or_insert((now + 3600, 0));
    if e.0 <= now {
        *e = (now + 3600, 0);
    }
    let headers = |used: u64, reset: i64| {
        vec![
            ("x-ratelimit-limit", limit.to_string()),
            (
                "x-ratelimit-remaining",
                limit.saturating_sub(used).to_string(),
            ),
            ("x-ratelimit-used", used.to_string()),
            ("x-ratelimit-reset", reset.to_string()),
            ("x-ratelimit-resource", "core".to_string()),
        ]
    };
    if e.1 >= limit {
        let mut r = Reply::error(
            403,
            "API rate limit exceeded. Check out the documentation for more information.",
        );
        r.headers = headers(e.1, e.0);
        return Err(r);
    }
    e.1 += 1;
    Ok(headers(e.1, e.0))
}

/// The permissions an installation lists (`SimConfig::app_runner_permission` on runners).
fn permissions(sim: &Sim) -> Value {
    let mut p = serde_json::Map::new();
    p.insert("actions".into(), json!("read"));
    let level = sim.cfg.app_runner_permission.as_str();
    if level != "none" {
        for k in ["administration", "organization_self_hosted_runners"] {
            p.insert(k.into(), json!(level));
        }
    }
    Value::Object(p)
}

fn allowed(sim: &Sim, p: &Principal, scope: &Scope) -> Result<(), Reply> {
    match p {
        Principal::Token(_) => Ok(()),
        Principal::App => Err(Reply::error(
            401,
            "A JSON web token cannot be used for this endpoint; use an installation token",
        )),
        Principal::Installation(id) => {
            let account = sim
                .cfg
                .app
                .as_ref()
                .and_then(|a| a.installations.iter().find(|(i, _)| i == id))
                .map(|(_, a)| a.to_lowercase())
                .unwrap_or_default();
            let ok = match scope {
                Scope::Repo { owner, .. } => owner.to_lowercase() == account,
                Scope::Org(o) => o.to_lowercase() == account,
                Scope::Enterprise(_) => false,
            };
            if ok {
                Ok(())
            } else {
                Err(Reply::error(403, "Resource not accessible by integration"))
            }
        }
    }
}

/// Slices `items` per GitHub's `per_page`/`page` and builds the `link` header.
fn paginate(
    sim: &Sim,
    path: &str,
    q: &HashMap<String, String>,
    items: Vec<Value>,
) -> (Vec<Value>, Option<String>) {
    let per = q
        .get("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page = q
        .get("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let last = items.len().div_ceil(per).max(1);
    let slice: Vec<Value> = items.into_iter().skip((page - 1) * per).take(per).collect();
    if last <= 1 {
        return (slice, None);
    }
    let mut other: Vec<String> = q
        .iter()
        .filter(|(k, _)| *k != "page" && *k != "per_page")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    other.sort();
    let extra = if other.is_empty() {
        String::new()
    } else {
        format!("&{}", other.join("&"))
    };
    let url = |p: usize| format!("{}{path}?per_page={per}&page={p}{extra}", sim.base());
    let mut parts = Vec::new();
    if page < last {
        parts.push(format!("<{}>; rel=\"next\"", url(page + 1)));
        parts.push(format!("<{}>; rel=\"last\"", url(last)));
    }
    if page > 1 {
        parts.push(format!("<{}>; rel=\"prev\"", url(page - 1)));
        parts.push(format!("<{}>; rel=\"first\"", url(1)));
    }
    (slice, Some(parts.join(", ")))
}

fn paged(
    sim: &Sim,
    path: &str,
    q: &HashMap<String, String>,
    key: Option<&str>,
    items: Vec<Value>,
) -> Reply {
    let total = items.len();
    let (page, link) = paginate(sim, path, q, items);
    let body = match key {
        Some(k) => json!({ "total_count": total, k: page }),
        None => Value::Array(page),
    };
    let r = Reply::json(200, body);
    match link {
        Some(l) => r.header("link", l),
        None => r,
    }
}

fn installation_json(sim: &Sim, id: u64, account: &str) -> Value {
    let app = sim.cfg.app.as_ref();
    json!({
        "id": id, "app_id": app.map(|a| a.app_id).unwrap_or(0), "app_slug": "airlock",
        "target_id": id + 500, "target_type": "Organization", "single_file_name": null,
        "repository_selection": "all",
        "access_tokens_url": format!("{}/app/installations/{id}/access_tokens", sim.base()),
        "html_url": format!("https://github.example.invalid/settings/installations/{id}"),
        "repositories_url": format!("{}/installation/repositories", sim.base()),
        "events": ["workflow_job"], "account": model::user(sim.base(), account, id + 500, "Organization"),
        "permissions": permissions(sim),
        "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z",
        "suspended_by": null, "suspended_at": null
    })
}

fn rest(
    sim: &Sim,
    p: &Principal,
    method: &Method,
    segs: &[&str],
    q: &HashMap<String, String>,
    body: &[u8],
) -> Reply {
    let path = format!("/{}", segs.join("/"));
    match (method.clone(), segs) {
        (Method::GET, ["rate_limit"]) => {
            let now = sim.now_ms() / 1000;
            let core = json!({"limit": sim.cfg.rate_limit, "remaining": sim.cfg.rate_limit, "reset": now + 3600, "used": 0});
            Reply::json(
                200,
                json!({ "rate": core, "resources": { "core": core, "search": core } }),
            )
        }
        (Method::POST, ["app", "installations", id, "access_tokens"]) => {
            if !matches!(p, Principal::App) {
                return Reply::error(401, "A JSON web token is required for this endpoint");
            }
            let Some(id) = id.parse::<u64>().ok().filter(|id| {
                sim.cfg
                    .app
                    .as_ref()
                    .is_some_and(|a| a.installations.iter().any(|(i, _)| i == id))
            }) else {
                return Reply::not_found();
            };
            let token = random_token("ghs");
            let exp = sim.now_ms() + sim.cfg.installation_token_ttl.as_millis() as i64;
            sim.inst_tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(token.clone(), (id, exp));
            Reply::json(
                201,
                json!({
                    "token": token, "expires_at": model::rfc3339(exp),
                    "permissions": permissions(sim),
                    "repository_selection": "all"
                }),
            )
        }
        (Method::GET, ["repos", owner, _, "installation"])
        | (Method::GET, ["orgs", owner, "installation"]) => {
            if !matches!(p, Principal::App) {
                return Reply::error(401, "A JSON web token is required for this endpoint");
            }
            match sim.cfg.app.as_ref().and_then(|a| {
                a.installations
                    .iter()
                    .find(|(_, acct)| acct.eq_ignore_ascii_case(owner))
            }) {
                Some((id, acct)) => Reply::json(200, installation_json(sim, *id, acct)),
                None => Reply::not_found(),
            }
        }
        (m, ["repos", o, r, "actions", "runners", rest @ ..]) => {
            let scope = Scope::Repo {
                owner: o.to_string(),
                name: r.to_string(),
            };
            runners(sim, p, &scope, m, rest, q, body, &path)
        }
        (m, ["orgs", o, "actions", "runners", rest @ ..]) => {
            runners(sim, p, &Scope::Org(o.to_string()), m, rest, q, body, &path)
        }
        (m, ["enterprises", e, "actions", "runners", rest @ ..]) => runners(
            sim,
            p,
            &Scope::Enterprise(e.to_string()),
            m,
            rest,
            q,
            body,
            &path,
        ),
        (Method::GET, ["orgs", o, "actions", "runner-groups"])
        | (Method::GET, ["enterprises", o, "actions", "runner-groups"]) => {
            let scope = if segs[0] == "orgs" {
                Scope::Org(o.to_string())
            } else {
                Scope::Enterprise(o.to_string())
            };
            if let Err(r) = allowed(sim, p, &scope) {
                return r;
            }
            let group = json!({
                "id": 1, "name": "Default", "visibility": "all", "default": true,
                "runners_url": format!("{}/{}/runner-groups/1/runners", sim.base(), scope.runners_path()),
                "inherited": false, "allows_public_repositories": false, "restricted_to_workflows": false,
                "selected_workflows": [], "workflow_restrictions_read_only": false
            });
            paged(sim, &path, q, Some("runner_groups"), vec![group])
        }
        (Method::GET, ["orgs", o, "repos"]) => {
            if let Err(r) = allowed(sim, p, &Scope::Org(o.to_string())) {
                return r;
            }
            let w = sim.lock_world();
            let items: Vec<Value> = w
                .repos
                .iter()
                .filter(|(full, _)| {
                    full.split('/')
                        .next()
                        .is_some_and(|x| x.eq_ignore_ascii_case(o))
                })
                .map(|(full, id)| model::repository(sim.base(), full, *id))
                .collect();
            drop(w);
            paged(sim, &path, q, None, items)
        }
        (Method::GET, ["repos", o, r, "actions", "runs"]) => {
            let scope = Scope::Repo {
                owner: o.to_string(),
                name: r.to_string(),
            };
            if let Err(rep) = allowed(sim, p, &scope) {
                return rep;
            }
            let full = format!("{o}/{r}");
            let want = q.get("status").cloned();
            let w = sim.lock_world();
            let repo_id = w.repos.get(&full).copied().unwrap_or(0);
            let mut items: Vec<Value> = w
                .runs
                .values()
                .filter(|run| run.repo.eq_ignore_ascii_case(&full))
                .map(|run| (run, w.run_status(run.id)))
                .filter(|(_, st)| want.as_deref().is_none_or(|s| s == st.as_str()))
                .map(|(run, st)| model::run_json(sim.base(), run, st, repo_id))
                .collect();
            items.reverse(); // newest first, as GitHub lists them
            drop(w);
            paged(sim, &path, q, Some("workflow_runs"), items)
        }
        (Method::GET, ["repos", o, r, "actions", "runs", run, "jobs"]) => {
            let scope = Scope::Repo {
                owner: o.to_string(),
                name: r.to_string(),
            };
            if let Err(rep) = allowed(sim, p, &scope) {
                return rep;
            }
            let w = sim.lock_world();
            let Some(run) = run.parse::<u64>().ok().and_then(|id| w.runs.get(&id)) else {
                return Reply::not_found();
            };
            let items: Vec<Value> = w
                .jobs
                .values()
                .filter(|j| j.run_id == run.id)
                .map(|j| model::job_json(sim.base(), j, &run.name, true))
                .collect();
            drop(w);
            paged(sim, &path, q, Some("jobs"), items)
        }
        (Method::GET, ["repos", o, r, "actions", "jobs", id]) => {
            let scope = Scope::Repo {
                owner: o.to_string(),
                name: r.to_string(),
            };
            if let Err(rep) = allowed(sim, p, &scope) {
                return rep;
            }
            let w = sim.lock_world();
            let full = format!("{o}/{r}");
            match id
                .parse::<u64>()
                .ok()
                .and_then(|id| w.jobs.get(&id))
                .filter(|j| j.repo.eq_ignore_ascii_case(&full))
            {
                Some(j) => {
                    let name = w
                        .runs
                        .get(&j.run_id)
                        .map(|r| r.name.clone())
                        .unwrap_or_default();
                    Reply::json(200, model::job_json(sim.base(), j, &name, true))
                }
                None => Reply::not_found(),
            }
        }
        _ => Reply::not_found(),
    }
}

#[derive(serde::Deserialize)]
struct JitRequest {
    name: String,
    runner_group_id: u64,
    labels: Vec<String>,
    #[serde(default)]
    work_folder: Option<String>,
}

#[allow(clippy::too_many_arguments)]
fn runners(
    sim: &Sim,
    p: &Principal,
    scope: &Scope,
    method: Method,
    rest: &[&str],
    q: &HashMap<String, String>,
    body: &[u8],
    path: &str,
) -> Reply {
    if let Err(r) = allowed(sim, p, scope) {
        return r;
    }
    // An installation gets what its App was granted on runners.
    if matches!(p, Principal::Installation(_)) {
        let level = sim.cfg.app_runner_permission.as_str();
        if level == "none" || (method != Method::GET && level != "write") {
            return Reply::error(403, "Resource not accessible by integration");
        }
    }
    match (method, rest) {
        (Method::GET, []) => {
            let w = sim.lock_world();
            let name = q.get("name");
            let items: Vec<Value> = w
                .runners
                .values()
                .filter(|r| &r.scope == scope)
                .filter(|r| name.is_none_or(|n| &r.name == n))
                .map(model::runner_json)
                .collect();
            drop(w);
            paged(sim, path, q, Some("runners"), items)
        }
        (Method::POST, ["generate-jitconfig"]) => {
            let req: JitRequest = match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(e) => return Reply::error(422, &format!("Invalid request: {e}")),
            };
            if req.name.trim().is_empty() || req.labels.is_empty() || req.labels.len() > 100 {
                return Reply::error(
                    422,
                    "Validation Failed: name is required and labels must have 1 to 100 entries",
                );
            }
            if req.runner_group_id != 1 {
                return Reply::not_found();
            }
            let _ = req.work_folder;
            let mut w = sim.lock_world();
            // Fault: the name is taken, by an offline registration such as an earlier request
            // whose answer was lost leaves behind.
            let conflict = {
                let mut f = sim.faults.lock().unwrap_or_else(|p| p.into_inner());
                let c = f.jit_conflict > 0;
                f.jit_conflict = f.jit_conflict.saturating_sub(1);
                c
            };
            if conflict {
                let id = w.id();
                let stale = SimRunner::registered(
                    id,
                    req.name.clone(),
                    scope.clone(),
                    vec!["self-hosted".into()],
                    random_token("ghr"),
                );
                w.runners.insert(id, stale);
                sim.stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .injected_conflicts += 1;
            }
            // GitHub refuses registrations past 10,000 runners (the status and message are
            // inferred: GitHub documents the limit, not the response).
            if w.runners.values().filter(|r| &r.scope == scope).count() >= sim.cfg.max_registrations
            {
                return Reply::error(
                    422,
                    "Validation Failed: the maximum number of self-hosted runners has been reached",
                );
            }
            if w.runners
                .values()
                .any(|r| &r.scope == scope && r.name.eq_ignore_ascii_case(&req.name))
            {
                return Reply::error(
                    409,
                    &format!(
                        "Already exists - A runner with the name {} already exists.",
                        req.name
                    ),
                );
            }
            let id = w.id();
            let mut labels = vec![
                "self-hosted".to_string(),
                "Linux".to_string(),
                "X64".to_string(),
            ];
            for l in &req.labels {
                if !labels.iter().any(|x| x.eq_ignore_ascii_case(l)) {
                    labels.push(l.clone());
                }
            }
            let runner = SimRunner::registered(
                id,
                req.name.clone(),
                scope.clone(),
                labels,
                random_token("ghr"),
            );
            let encoded = encode_jit(sim, &runner);
            let json = model::runner_json(&runner);
            w.runners.insert(id, runner);
            Reply::json(
                201,
                json!({ "runner": json, "encoded_jit_config": encoded }),
            )
        }
        (Method::GET, [id]) => {
            let w = sim.lock_world();
            match id
                .parse::<u64>()
                .ok()
                .and_then(|id| w.runners.get(&id))
                .filter(|r| &r.scope == scope)
            {
                Some(r) => Reply::json(200, model::runner_json(r)),
                None => Reply::not_found(),
            }
        }
        (Method::DELETE, [id]) => {
            let mut w = sim.lock_world();
            let Some(id) = id
                .parse::<u64>()
                .ok()
                .filter(|id| w.runners.get(id).is_some_and(|r| &r.scope == scope))
            else {
                return Reply::not_found();
            };
            if w.runners[&id].busy {
                return Reply::error(
                    422,
                    &format!(
                        "Bad request - Runner \"{}\" is still running a job\"",
                        w.runners[&id].name
                    ),
                );
            }
            w.runners.remove(&id);
            Reply::empty(204)
        }
        _ => Reply::not_found(),
    }
}

/// GitHub's JIT encoding: base64 of a JSON map of file name to base64 file content.
fn encode_jit(sim: &Sim, r: &SimRunner) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::STANDARD.encode(v.to_string());
    let runner = json!({
        "agentId": r.id, "agentName": r.name, "poolId": r.group_id, "poolName": "Default",
        "serverUrl": sim.base(), "gitHubUrl": format!("https://github.example.invalid/{}", r.scope),
        "workFolder": "_work", "ephemeral": true, "useV2Flow": true
    });
    let creds = json!({
        "scheme": "OAuth",
        "data": { "clientId": format!("ghsim-{}", r.id), "authorizationUrl": format!("{}/_ghsim/token", sim.base()), "requireFipsCryptography": "False", "token": r.token }
    });
    let rsa: [u8; 32] = rand::thread_rng().gen();
    let rsaparams =
        json!({ "d": hex::encode(rsa), "modulus": hex::encode(rsa), "exponent": "AQAB" });
    let files = json!({ ".runner": b64(&runner), ".credentials": b64(&creds), ".credentials_rsaparams": b64(&rsaparams) });
    base64::engine::general_purpose::STANDARD.encode(files.to_string())
}

/// Marks a job completed and sends its webhook. Shared with the heartbeat watchdog.
pub(crate) fn finish_job(sim: &Sim, w: &mut World, job_id: u64, conclusion: &str, log: &str) {
    let now = now_ms();
    if let Some(j) = w.jobs.get_mut(&job_id) {
        if j.status == Status::Completed {
            return;
        }
        j.status = Status::Completed;
        j.conclusion = Some(conclusion.to_string());
        j.completed_at = Some(model::rfc3339(now));
        j.completed_ms = Some(now);
        if j.started_at.is_none() {
            j.started_at = Some(model::rfc3339(now));
        }
        j.log = log.chars().take(64 * 1024).collect();
    }
    sim.emit(w, job_id, "completed");
}

/// `/_ghsim/...`: the stand-in runner's protocol and the test-control API.
async fn private(
    sim: &Arc<Sim>,
    method: &Method,
    segs: &[&str],
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    match (method.clone(), segs) {
        (Method::POST, ["runner", action]) => runner_protocol(sim, action, headers, body).await,
        (Method::POST, ["workflows"]) => match serde_json::from_slice::<crate::Workflow>(body) {
            Ok(wf) => match sim.submit(&wf) {
                Ok(s) => Reply::json(201, json!(s)),
                Err(e) => Reply::error(422, &e.to_string()),
            },
            Err(e) => Reply::error(422, &format!("invalid workflow: {e}")),
        },
        (Method::GET, ["jobs"]) => Reply::json(200, json!(sim.jobs())),
        (Method::GET, ["runners"]) => {
            let w = sim.lock_world();
            Reply::json(
                200,
                Value::Array(w.runners.values().map(model::runner_json).collect()),
            )
        }
        (Method::GET, ["stats"]) => Reply::json(200, json!(sim.stats())),
        (Method::GET, ["faults"]) => Reply::json(200, json!(sim.faults())),
        (Method::PUT, ["faults"]) => match serde_json::from_slice::<crate::Faults>(body) {
            Ok(f) if !matches!(f.runner_outdated.as_str(), "" | "update" | "deprecated") => {
                Reply::error(
                    422,
                    &format!(
                        "invalid faults: runner_outdated {:?}: expected \"\", \"update\" or \"deprecated\"",
                        f.runner_outdated
                    ),
                )
            }
            Ok(f) => {
                sim.set_faults(f.clone());
                Reply::json(200, json!(f))
            }
            Err(e) => Reply::error(422, &format!("invalid faults: {e}")),
        },
        _ => Reply::not_found(),
    }
}

/// The runner version the `runner_outdated = "update"` fault asks runners to update to.
const OUTDATED_VERSION: &str = "2.999.0";

async fn runner_protocol(sim: &Arc<Sim>, action: &str, headers: &HeaderMap, body: &[u8]) -> Reply {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let find = |w: &World| w.runners.values().find(|r| r.token == token).map(|r| r.id);
    match action {
        "connect" | "heartbeat" => {
            let outdated = sim.faults().runner_outdated;
            if action == "connect" && !outdated.is_empty() {
                return match outdated.as_str() {
                    "update" => Reply::json(
                        200,
                        json!({ "ok": false, "refusal": "update", "version": OUTDATED_VERSION }),
                    ),
                    _ => Reply::json(
                        200,
                        json!({ "ok": false, "refusal": "deprecated", "message": "Runner version v2.300.0 is deprecated and cannot receive messages." }),
                    ),
                };
            }
            let mut w = sim.lock_world();
            let Some(id) = find(&w) else {
                return Reply::error(404, "runner not registered");
            };
            let r = w.runners.get_mut(&id).expect("found above");
            r.online = true;
            r.connected = true;
            r.last_seen = Instant::now();
            Reply::json(200, json!({ "ok": true }))
        }
        "acquire" => {
            let deadline = tokio::time::Instant::now() + sim.cfg.long_poll;
            loop {
                let notified = sim.job_added.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut w = sim.lock_world();
                    let Some(id) = find(&w) else {
                        return Reply::error(404, "runner not registered");
                    };
                    {
                        let r = w.runners.get_mut(&id).expect("found above");
                        r.online = true;
                        r.connected = true;
                        r.last_seen = Instant::now();
                        if let Some(job) = r.job {
                            return Reply::error(409, &format!("runner already holds job {job}"));
                        }
                    }
                    let runner = w.runners[&id].clone();
                    if let Some(job_id) = w.match_job(&runner) {
                        let now = now_ms();
                        let (name, steps) = {
                            let j = w.jobs.get_mut(&job_id).expect("matched");
                            j.status = Status::InProgress;
                            j.runner_id = Some(runner.id);
                            j.runner_name = Some(runner.name.clone());
                            j.started_at = Some(model::rfc3339(now));
                            j.started_ms = Some(now);
                            (j.name.clone(), j.steps.clone())
                        };
                        let r = w.runners.get_mut(&id).expect("found above");
                        r.busy = true;
                        r.job = Some(job_id);
                        sim.emit(&w, job_id, "in_progress");
                        return Reply::json(
                            200,
                            json!({ "job_id": job_id, "name": name, "steps": steps }),
                        );
                    }
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return Reply::empty(204);
                }
            }
        }
        "complete" => {
            #[derive(serde::Deserialize)]
            struct Done {
                job_id: u64,
                conclusion: String,
                #[serde(default)]
                log: String,
            }
            let done: Done = match serde_json::from_slice(body) {
                Ok(d) => d,
                Err(e) => return Reply::error(422, &format!("invalid completion: {e}")),
            };
            if !matches!(
                done.conclusion.as_str(),
                "success" | "failure" | "cancelled"
            ) {
                return Reply::error(422, "conclusion must be success, failure or cancelled");
            }
            let mut w = sim.lock_world();
            let Some(id) = find(&w) else {
                return Reply::error(404, "runner not registered");
            };
            if w.runners[&id].job != Some(done.job_id) {
                return Reply::error(409, "that job is not this runner's");
            }
            // A JIT runner is removed by GitHub once its one job is done.
            w.runners.remove(&id);
            finish_job(sim, &mut w, done.job_id, &done.conclusion, &done.log);
            Reply::json(200, json!({ "ok": true }))
        }
        _ => Reply::not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names_hide_ids() {
        assert_eq!(
            route_name(
                &Method::GET,
                &["repos", "octo", "hello", "actions", "runs", "12", "jobs"]
            ),
            "GET /repos/*/*/actions/runs/*/jobs"
        );
        assert_eq!(
            route_name(
                &Method::DELETE,
                &["orgs", "octo", "actions", "runners", "5"]
            ),
            "DELETE /orgs/*/actions/runners/*"
        );
    }
}
