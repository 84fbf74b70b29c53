//! The REST client. One request path (`send`) adds GitHub's headers, auth, the timeout, ETag
//! conditional requests for GETs and rate-limit bookkeeping, and classifies every failure.
//! Writes (POST, DELETE) are sent one at a time, as GitHub's secondary limits ask.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_core::{JobObservation, Scope};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::auth::{AppAuth, Auth};
use crate::model::*;
use crate::{Credentials, GitHubError, ACCEPT, API_VERSION, USER_AGENT};

/// Called once per HTTP exchange with the method, the path template's first segment and the
/// status (0 when no response came back). Used for metrics; must be cheap.
pub type RequestObserver = Arc<dyn Fn(&Method, u16) + Send + Sync>;

#[derive(Clone)]
pub struct ClientOptions {
    pub timeout: Duration,
    pub observer: Option<RequestObserver>,
    /// The least time between the starts of two mutating requests (they never overlap either).
    pub write_interval: Duration,
}

pub use airlock_core::DEFAULT_WRITE_INTERVAL;

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(30),
            observer: None,
            write_interval: DEFAULT_WRITE_INTERVAL,
        }
    }
}

/// GitHub's primary rate limit as its latest answer stated it (`x-ratelimit-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateBudget {
    pub limit: u64,
    pub remaining: u64,
    /// Unix seconds at which the window resets.
    pub reset: i64,
}

impl RateBudget {
    /// Requests kept for writes: reads stop when no more than this remains, so that polling never
    /// spends what creating and removing runners needs (a tenth of the limit).
    pub fn reserve(&self) -> u64 {
        (self.limit / 10).max(1)
    }
}

/// A runner's one-time configuration, as GitHub returned it. `Debug` does not print the config.
pub struct JitConfig {
    pub runner_id: u64,
    pub encoded: String,
}

impl std::fmt::Debug for JitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "JitConfig {{ runner_id: {}, encoded: <redacted> }}",
            self.runner_id
        )
    }
}

/// A runner registration as GitHub lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub id: u64,
    pub name: String,
    pub online: bool,
    pub busy: bool,
    pub labels: Vec<String>,
}

pub struct Client {
    http: reqwest::Client,
    api: String,
    auth: Auth,
    observer: Option<RequestObserver>,
    /// URL -> (ETag, body) of the last 200 answer, for conditional GETs (a 304 is free).
    etags: Mutex<HashMap<String, (String, bytes_cache::Body)>>,
    /// Held for the whole of each mutating request; holds when the last one started.
    writes: tokio::sync::Mutex<Option<Instant>>,
    write_interval: Duration,
    /// No request is sent before this instant after GitHub said we are rate limited.
    blocked_until: Mutex<Option<Instant>>,
    budget: Mutex<Option<RateBudget>>,
    /// GitHub's time as its answers' `Date` headers say (see `clock`).
    clock: crate::clock::Clock,
    breaker: crate::breaker::Breaker,
}

/// Held while a request is out; gives a half-open probe back when dropped (a cancelled request
/// must not leave the circuit waiting for a probe that never returns).
struct ProbeGuard<'a> {
    breaker: &'a crate::breaker::Breaker,
    probe: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.abandon_probe();
        }
    }
}

mod bytes_cache {
    pub type Body = std::sync::Arc<Vec<u8>>;
}

const MAX_ETAGS: usize = 10_000;

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("api", &self.api).finish()
    }
}

impl Client {
    pub fn new(
        api_url: &str,
        credentials: Credentials,
        opts: ClientOptions,
    ) -> Result<Client, GitHubError> {
        let http = reqwest::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout.min(Duration::from_secs(10)))
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| GitHubError::Auth {
                what: "HTTP client".into(),
                detail: e.to_string(),
            })?;
        Ok(Client {
            http,
            api: api_url.trim_end_matches('/').to_string(),
            auth: Auth::new(credentials)?,
            observer: opts.observer,
            etags: Mutex::new(HashMap::new()),
            writes: tokio::sync::Mutex::new(None),
            write_interval: opts.write_interval,
            blocked_until: Mutex::new(None),
            budget: Mutex::new(None),
            clock: crate::clock::Clock::default(),
            breaker: crate::breaker::Breaker::default(),
        })
    }

    /// GitHub's clock minus ours (ms), as its last answer's `Date` said; `None` before any.
    pub fn clock_offset_ms(&self) -> Option<i64> {
        self.clock.offset_ms()
    }

    pub fn api_url(&self) -> &str {
        &self.api
    }

    // ---- operations -------------------------------------------------------------------------

    /// `POST …/generate-jitconfig`. A name already taken is `Conflict`.
    pub async fn generate_jitconfig(
        &self,
        scope: &Scope,
        name: &str,
        runner_group_id: u64,
        labels: &[String],
    ) -> Result<JitConfig, GitHubError> {
        let what = format!("generate JIT config for {name} at {scope}");
        let body = serde_json::to_vec(&JitRequest {
            name,
            runner_group_id,
            labels,
            work_folder: None,
        })
        .expect("JIT request serialises");
        let path = format!("{}/generate-jitconfig", scope.runners_path());
        let (_, bytes) = self
            .send(Method::POST, &path, Some(scope), Some(body), &what)
            .await?;
        let r: JitResponse = decode(&bytes, &what)?;
        Ok(JitConfig {
            runner_id: r.runner.id,
            encoded: r.encoded_jit_config,
        })
    }

    /// Every registration at this scope (all pages).
    pub async fn list_runners(&self, scope: &Scope) -> Result<Vec<Registration>, GitHubError> {
        let what = format!("list runners at {scope}");
        let pages = self
            .get_pages(
                &format!("{}?per_page=100", scope.runners_path()),
                scope,
                &what,
            )
            .await?;
        let mut out = Vec::new();
        for page in pages {
            let list: RunnerList = decode(&page, &what)?;
            let _ = list.total_count;
            out.extend(list.runners.into_iter().map(registration));
        }
        Ok(out)
    }

    pub async fn get_runner(&self, scope: &Scope, id: u64) -> Result<Registration, GitHubError> {
        let what = format!("get runner {id} at {scope}");
        let (_, bytes) = self
            .send(
                Method::GET,
                &format!("{}/{id}", scope.runners_path()),
                Some(scope),
                None,
                &what,
            )
            .await?;
        Ok(registration(decode(&bytes, &what)?))
    }

    /// `DELETE …/{id}`. Already gone counts as done. A runner in the middle of a job answers
    /// `Unprocessable` (422): the caller keeps it.
    pub async fn delete_runner(&self, scope: &Scope, id: u64) -> Result<(), GitHubError> {
        let what = format!("delete runner {id} at {scope}");
        match self
            .send(
                Method::DELETE,
                &format!("{}/{id}", scope.runners_path()),
                Some(scope),
                None,
                &what,
            )
            .await
        {
            Ok(_) | Err(GitHubError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The runner group to register in. Repositories only have the default group (id 1).
    pub async fn runner_group_id(&self, scope: &Scope, name: &str) -> Result<u64, GitHubError> {
        let path = match scope {
            Scope::Repo { .. } => return Ok(1),
            Scope::Org(o) => format!("orgs/{o}/actions/runner-groups?per_page=100"),
            Scope::Enterprise(e) => format!("enterprises/{e}/actions/runner-groups?per_page=100"),
        };
        let what = format!("find runner group {name:?} at {scope}");
        for page in self.get_pages(&path, scope, &what).await? {
            let groups: RunnerGroups = decode(&page, &what)?;
            let found = groups
                .runner_groups
                .iter()
                .find(|g| g.name.eq_ignore_ascii_case(name))
                .or_else(|| {
                    (name == "Default")
                        .then(|| groups.runner_groups.iter().find(|g| g.default))
                        .flatten()
                });
            if let Some(g) = found {
                return Ok(g.id);
            }
        }
        Err(GitHubError::NotFound { what })
    }

    /// The repositories of an organization (for polling at org scope).
    pub async fn org_repos(&self, scope: &Scope, org: &str) -> Result<Vec<String>, GitHubError> {
        let what = format!("list repositories of {org}");
        let mut out = Vec::new();
        for page in self
            .get_pages(&format!("orgs/{org}/repos?per_page=100"), scope, &what)
            .await?
        {
            let repos: Vec<Repo> = decode(&page, &what)?;
            out.extend(repos.into_iter().map(|r| r.full_name));
        }
        Ok(out)
    }

    /// Jobs of the repository's queued and in-progress runs (a run in progress can still hold
    /// queued jobs). Completed jobs of those runs are included: they settle what webhooks missed.
    pub async fn active_jobs(
        &self,
        scope: &Scope,
        repo: &str,
    ) -> Result<Vec<JobObservation>, GitHubError> {
        let what = format!("poll jobs of {repo}");
        let mut run_ids = Vec::new();
        for status in ["queued", "in_progress"] {
            let path = format!("repos/{repo}/actions/runs?status={status}&per_page=100");
            for page in self.get_pages(&path, scope, &what).await? {
                let runs: Runs = decode(&page, &what)?;
                run_ids.extend(runs.workflow_runs.into_iter().map(|r| r.id));
            }
        }
        run_ids.sort_unstable();
        run_ids.dedup();
        let mut out = Vec::new();
        for run in run_ids {
            let path = format!("repos/{repo}/actions/runs/{run}/jobs?filter=latest&per_page=100");
            for page in self.get_pages(&path, scope, &what).await? {
                let jobs: Jobs = decode(&page, &what)?;
                for j in jobs.jobs {
                    out.push(
                        j.observe(repo, None)
                            .map_err(|detail| GitHubError::Decode {
                                what: what.clone(),
                                detail,
                            })?,
                    );
                }
            }
        }
        Ok(out)
    }

    /// One job, for settling a job the poll no longer lists.
    pub async fn job(
        &self,
        scope: &Scope,
        repo: &str,
        id: u64,
    ) -> Result<JobObservation, GitHubError> {
        let what = format!("get job {id} of {repo}");
        let (_, bytes) = self
            .send(
                Method::GET,
                &format!("repos/{repo}/actions/jobs/{id}"),
                Some(scope),
                None,
                &what,
            )
            .await?;
        let job: Job = decode(&bytes, &what)?;
        job.observe(repo, None)
            .map_err(|detail| GitHubError::Decode { what, detail })
    }

    // ---- the request path -------------------------------------------------------------------

    async fn get_pages(
        &self,
        first: &str,
        scope: &Scope,
        what: &str,
    ) -> Result<Vec<bytes_cache::Body>, GitHubError> {
        let mut out = Vec::new();
        let mut next = Some(first.to_string());
        let mut guard = 0;
        while let Some(path) = next.take() {
            guard += 1;
            if guard > 1000 {
                return Err(GitHubError::Decode {
                    what: what.into(),
                    detail: "more than 1000 pages".into(),
                });
            }
            let (headers, body) = self
                .send(Method::GET, &path, Some(scope), None, what)
                .await?;
            next = next_link(&headers).map(|url| {
                url.strip_prefix(&format!("{}/", self.api))
                    .unwrap_or(&url)
                    .to_string()
            });
            out.push(body);
        }
        Ok(out)
    }

    /// A request through the whole path; a GET or DELETE that fails transiently is sent again
    /// up to `breaker::RETRIES` times, after waits that double with full jitter.
    async fn send(
        &self,
        method: Method,
        path: &str,
        scope: Option<&Scope>,
        body: Option<Vec<u8>>,
        what: &str,
    ) -> Result<(HeaderMap, bytes_cache::Body), GitHubError> {
        let idempotent = method == Method::GET || method == Method::DELETE;
        let mut attempt = 0;
        loop {
            let r = self
                .send_once(method.clone(), path, scope, body.clone(), what)
                .await;
            match &r {
                Err(GitHubError::Transient { detail, .. })
                    if idempotent && attempt < crate::breaker::RETRIES =>
                {
                    attempt += 1;
                    let wait = crate::breaker::retry_wait(attempt, crate::breaker::jitter());
                    tracing::debug!(
                        what,
                        detail,
                        attempt,
                        ?wait,
                        "retrying after a transient failure"
                    );
                    tokio::time::sleep(wait).await;
                }
                _ => return r,
            }
        }
    }

    async fn send_once(
        &self,
        method: Method,
        path: &str,
        scope: Option<&Scope>,
        body: Option<Vec<u8>>,
        what: &str,
    ) -> Result<(HeaderMap, bytes_cache::Body), GitHubError> {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}/{}", self.api, path.trim_start_matches('/'))
        };
        let token = match scope {
            Some(s) => self.token_for(s).await?,
            None => self.bearer_without_scope()?,
        };
        let _write = if method == Method::GET {
            None
        } else {
            let mut last = self.writes.lock().await;
            if let Some(t) = *last {
                tokio::time::sleep_until((t + self.write_interval).into()).await;
            }
            *last = Some(Instant::now());
            Some(last)
        };
        self.check_blocked(what)?;
        if method == Method::GET {
            self.check_budget(what)?;
        }
        let _probe = self.admit(what)?;

        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("accept", ACCEPT)
            .header("x-github-api-version", API_VERSION)
            .bearer_auth(&token);
        let cached = if method == Method::GET {
            self.etags
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&url)
                .cloned()
        } else {
            None
        };
        if let Some((etag, _)) = &cached {
            req = req.header("if-none-match", etag);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let (status, headers, bytes) = self.settle(self.exchange(&method, req, what).await)?;

        if status == StatusCode::NOT_MODIFIED {
            if let Some((_, body)) = cached {
                return Ok((headers, body));
            }
            return Err(GitHubError::Decode {
                what: what.into(),
                detail: "304 without a cached copy".into(),
            });
        }
        if status.is_success() {
            let body = Arc::new(bytes);
            if method == Method::GET {
                if let Some(etag) = headers.get("etag").and_then(|v| v.to_str().ok()) {
                    let mut etags = self.etags.lock().unwrap_or_else(|p| p.into_inner());
                    if etags.len() >= MAX_ETAGS {
                        etags.clear();
                    }
                    etags.insert(url, (etag.to_string(), body.clone()));
                }
            }
            return Ok((headers, body));
        }
        Err(self.classify(status, &headers, &bytes, what))
    }

    /// One HTTP exchange: the answer's status, headers and body, or a transient error when
    /// none came back whole. Observes the status, GitHub's clock and its rate budget.
    async fn exchange(
        &self,
        method: &Method,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), GitHubError> {
        let sent = crate::clock::local_ms();
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.observe(method, 0);
                let detail = if e.is_timeout() {
                    "timed out".to_string()
                } else {
                    root_cause(&e)
                };
                return Err(GitHubError::Transient {
                    what: what.into(),
                    detail,
                });
            }
        };
        let status = resp.status();
        self.observe(method, status.as_u16());
        let headers = resp.headers().clone();
        self.clock.observe(&headers, sent, crate::clock::local_ms());
        self.record_budget(&headers);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| GitHubError::Transient {
                what: what.into(),
                detail: root_cause(&e),
            })?
            .to_vec();
        if status.is_server_error() {
            return Err(self.classify(status, &headers, &bytes, what));
        }
        Ok((status, headers, bytes))
    }

    /// Lets a request through the circuit breaker, or refuses it while the circuit is open.
    /// The guard returned gives the probe back if its future is dropped before it settles.
    fn admit(&self, what: &str) -> Result<ProbeGuard<'_>, GitHubError> {
        match self.breaker.admit(Instant::now()) {
            Ok(probe) => Ok(ProbeGuard {
                breaker: &self.breaker,
                probe,
            }),
            Err(r) => Err(GitHubError::Unavailable {
                what: what.into(),
                failures: r.failures,
                retry_in: r.retry_in,
            }),
        }
    }

    /// Tells the breaker how an exchange ended: any answer but a 5xx shows GitHub alive.
    fn settle<T>(&self, r: Result<T, GitHubError>) -> Result<T, GitHubError> {
        match &r {
            Err(GitHubError::Transient { what, detail }) => {
                if let Some(wait) = self
                    .breaker
                    .failure(Instant::now(), crate::breaker::jitter())
                {
                    tracing::warn!(
                        what,
                        detail,
                        failures = crate::breaker::OPEN_AFTER,
                        "GitHub keeps failing: the circuit is open, no request for {:.1} s",
                        wait.as_secs_f64()
                    );
                }
            }
            _ => self.breaker.success(),
        }
        r
    }

    /// The circuit breaker's state (for metrics and status).
    pub fn circuit(&self) -> crate::breaker::Circuit {
        self.breaker.circuit(Instant::now())
    }

    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        what: &str,
    ) -> GitHubError {
        let message = serde_json::from_slice::<ApiMessage>(body)
            .map(|m| m.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
        let what = what.to_string();
        if let Some(wait) = rate_limit_wait(status, headers, &message, self.clock.now_s()) {
            *self.blocked_until.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Instant::now() + wait);
            return GitHubError::RateLimited { what, wait };
        }
        match status.as_u16() {
            404 | 410 => GitHubError::NotFound { what },
            409 => GitHubError::Conflict { what, message },
            422 => GitHubError::Unprocessable { what, message },
            500..=599 => GitHubError::Transient {
                what,
                detail: format!("status {status}: {message}"),
            },
            s => GitHubError::Permanent {
                what,
                status: s,
                message,
            },
        }
    }

    /// The rate limit as GitHub last stated it.
    pub fn rate_budget(&self) -> Option<RateBudget> {
        *self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_budget(&self, headers: &HeaderMap) {
        let num = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        if let (Some(limit), Some(remaining), Some(reset)) = (
            num("x-ratelimit-limit"),
            num("x-ratelimit-remaining"),
            num("x-ratelimit-reset"),
        ) {
            *self.budget.lock().unwrap_or_else(|p| p.into_inner()) = Some(RateBudget {
                limit: limit.max(0) as u64,
                remaining: remaining.max(0) as u64,
                reset,
            });
        }
    }

    /// Reads wait for the window's reset once only the writes' reserve is left; writes go on.
    fn check_budget(&self, what: &str) -> Result<(), GitHubError> {
        let Some(b) = self.rate_budget() else {
            return Ok(());
        };
        let now = self.clock.now_s();
        if b.remaining <= b.reserve() && b.reset > now {
            return Err(GitHubError::RateLimited {
                what: format!(
                    "{what} (reads paused: {} of {} requests left this hour are kept for writes)",
                    b.remaining, b.limit
                ),
                wait: Duration::from_secs((b.reset - now) as u64),
            });
        }
        Ok(())
    }

    fn check_blocked(&self, what: &str) -> Result<(), GitHubError> {
        let mut blocked = self.blocked_until.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = *blocked {
            let now = Instant::now();
            if until > now {
                return Err(GitHubError::RateLimited {
                    what: what.into(),
                    wait: until - now,
                });
            }
            *blocked = None;
        }
        Ok(())
    }

    fn observe(&self, method: &Method, status: u16) {
        if let Some(o) = &self.observer {
            o(method, status);
        }
    }

    fn bearer_without_scope(&self) -> Result<String, GitHubError> {
        match &self.auth {
            Auth::Token(t) => Ok(t.clone()),
            Auth::App(a) => a.jwt(self.clock.now_s()),
        }
    }

    /// With App credentials: the permissions GitHub granted the installation that serves
    /// `scope` (as its installation token's answer listed them); `None` with a token, whose
    /// permissions GitHub does not list.
    pub async fn app_permissions(
        &self,
        scope: &Scope,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, GitHubError> {
        let Auth::App(app) = &self.auth else {
            return Ok(None);
        };
        self.token_for(scope).await?;
        let installation = self.installation_for(app, scope).await?;
        Ok(app
            .permissions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&installation)
            .cloned())
    }

    /// The token for calls at `scope`: the configured token, or the App installation's token
    /// (looked up and cached per scope, refreshed ten minutes before it expires).
    async fn token_for(&self, scope: &Scope) -> Result<String, GitHubError> {
        let app = match &self.auth {
            Auth::Token(t) => return Ok(t.clone()),
            Auth::App(a) => a,
        };
        let installation = self.installation_for(app, scope).await?;
        if let Some(t) = app.cached_token(installation, self.clock.now_ms()) {
            return Ok(t);
        }
        let what = format!("installation token for installation {installation}");
        let (_, bytes) = self
            .send_as_app(
                app,
                Method::POST,
                &format!("app/installations/{installation}/access_tokens"),
                &what,
            )
            .await?;
        let t: InstallationToken = decode(&bytes, &what)?;
        let expires = crate::parse_time(&t.expires_at).ok_or_else(|| GitHubError::Decode {
            what: what.clone(),
            detail: format!("expires_at {:?}", t.expires_at),
        })?;
        app.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(installation, (t.token.clone(), expires));
        app.permissions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(installation, t.permissions);
        Ok(t.token)
    }

    async fn installation_for(&self, app: &AppAuth, scope: &Scope) -> Result<u64, GitHubError> {
        if let Some(id) = app.fixed_installation {
            return Ok(id);
        }
        let path = match scope {
            Scope::Repo { owner, name } => format!("repos/{owner}/{name}/installation"),
            Scope::Org(o) => format!("orgs/{o}/installation"),
            Scope::Enterprise(e) => {
                return Err(GitHubError::Auth {
                    what: format!("credentials for enterprise:{e}"),
                    detail: "GitHub Apps cannot manage enterprise runners; use token_file with a token that has manage_runners:enterprise".into(),
                })
            }
        };
        if let Some(id) = app
            .installations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&path)
        {
            return Ok(*id);
        }
        let what = format!("find the App installation for {scope}");
        let (_, bytes) = self.send_as_app(app, Method::GET, &path, &what).await?;
        let inst: Installation = decode(&bytes, &what)?;
        app.installations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path, inst.id);
        Ok(inst.id)
    }

    /// A request as the App (a fresh JWT). A JWT refused (401) by a GitHub whose clock the
    /// refusal's `Date` shows to be far from ours was made with the wrong time: it is made
    /// again, once, with GitHub's.
    async fn send_as_app(
        &self,
        app: &AppAuth,
        method: Method,
        path: &str,
        what: &str,
    ) -> Result<(HeaderMap, bytes_cache::Body), GitHubError> {
        let before = self.clock.offset_ms().unwrap_or(0);
        let jwt = app.jwt(self.clock.now_s())?;
        match self.send_with(method.clone(), path, &jwt, what).await {
            Err(GitHubError::Permanent { status: 401, .. })
                if (self.clock.offset_ms().unwrap_or(0) - before).abs() > 30_000 =>
            {
                tracing::warn!(
                    offset_s = self.clock.offset_ms().unwrap_or(0) / 1000,
                    "GitHub refused the App's JWT and its clock is far from ours: signing again with GitHub's time (fix this host's clock: NTP)"
                );
                let jwt = app.jwt(self.clock.now_s())?;
                self.send_with(method, path, &jwt, what).await
            }
            r => r,
        }
    }

    /// A request authenticated with an explicit bearer (the App JWT); no ETags, no write lock.
    async fn send_with(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        what: &str,
    ) -> Result<(HeaderMap, bytes_cache::Body), GitHubError> {
        self.check_blocked(what)?;
        let _probe = self.admit(what)?;
        let url = format!("{}/{}", self.api, path);
        let req = self
            .http
            .request(method.clone(), &url)
            .header("accept", ACCEPT)
            .header("x-github-api-version", API_VERSION)
            .bearer_auth(bearer);
        let (status, headers, bytes) = self.settle(self.exchange(&method, req, what).await)?;
        if status.is_success() {
            return Ok((headers, Arc::new(bytes)));
        }
        Err(self.classify(status, &headers, &bytes, what))
    }
}

fn registration(r: Runner) -> Registration {
    Registration {
        id: r.id,
        name: r.name,
        online: r.status == "online",
        busy: r.busy,
        labels: r.labels.into_iter().map(|l| l.name).collect(),
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, GitHubError> {
    serde_json::from_slice(bytes).map_err(|e| GitHubError::Decode {
        what: what.into(),
        detail: e.to_string(),
    })
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The `rel="next"` URL of a `link` header.
pub(crate) fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

/// GitHub's rules: a 403 or 429 is a rate limit when it says so; wait `retry-after` if given,
/// else until `x-ratelimit-reset` when nothing remains, else at least a minute.
pub(crate) fn rate_limit_wait(
    status: StatusCode,
    headers: &HeaderMap,
    message: &str,
    now_s: i64,
) -> Option<Duration> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let num = |name: &str| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    if let Some(secs) = num("retry-after") {
        return Some(Duration::from_secs(secs.max(1) as u64));
    }
    if num("x-ratelimit-remaining") == Some(0) {
        if let Some(reset) = num("x-ratelimit-reset") {
            return Some(Duration::from_secs((reset - now_s).max(1) as u64));
        }
    }
    let says_rate = message.to_ascii_lowercase().contains("rate limit");
    if status == StatusCode::TOO_MANY_REQUESTS || says_rate {
        return Some(Duration::from_secs(60));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn rate_limit_rules() {
        let f = StatusCode::FORBIDDEN;
        let cases: Vec<(StatusCode, HeaderMap, &str, Option<u64>)> = vec![
            (f, h(&[("retry-after", "30")]), "", Some(30)),
            (
                StatusCode::TOO_MANY_REQUESTS,
                h(&[("retry-after", "5")]),
                "",
                Some(5),
            ),
            (
                f,
                h(&[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1120"),
                ]),
                "",
                Some(120),
            ),
            (
                f,
                h(&[]),
                "You have exceeded a secondary rate limit",
                Some(60),
            ),
            (StatusCode::TOO_MANY_REQUESTS, h(&[]), "", Some(60)),
            (
                f,
                h(&[("x-ratelimit-remaining", "10")]),
                "Resource not accessible by integration",
                None,
            ),
            (StatusCode::NOT_FOUND, h(&[("retry-after", "3")]), "", None),
        ];
        for (status, headers, msg, want) in cases {
            assert_eq!(
                rate_limit_wait(status, &headers, msg, 1000).map(|d| d.as_secs()),
                want,
                "{status} {msg}"
            );
        }
    }

    #[test]
    fn link_header_next() {
        let m = h(&[(
            "link",
            "<https://api.github.com/x?page=3>; rel=\"next\", <https://api.github.com/x?page=9>; rel=\"last\"",
        )]);
        assert_eq!(
            next_link(&m).as_deref(),
            Some("https://api.github.com/x?page=3")
        );
        let m = h(&[("link", "<https://api.github.com/x?page=1>; rel=\"prev\"")]);
        assert_eq!(next_link(&m), None);
        assert_eq!(next_link(&HeaderMap::new()), None);
    }
}
