//! ghsim's world: repositories, runners, runs and jobs, and how GitHub renders them as JSON.
//! The JSON shapes follow GitHub's OpenAPI description (`@octokit/openapi`) and webhook schemas
//! (`@octokit/openapi-webhooks`); the conformance tests check them against those files.

use std::collections::BTreeMap;
use std::time::Instant;

use airlock_core::{Labels, Scope};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    InProgress,
    Completed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimRunner {
    pub id: u64,
    pub name: String,
    pub scope: Scope,
    pub labels: Vec<String>,
    pub group_id: u64,
    pub online: bool,
    pub busy: bool,
    pub job: Option<u64>,
    /// The runner's own credential (what the JIT config carries).
    pub token: String,
    pub last_seen: Instant,
    /// When its JIT config was generated.
    pub created: Instant,
    /// Whether a runner ever connected with its config. GitHub removes a JIT registration that
    /// never ran a job after a day (`SimConfig::unused_jit_ttl`); until then it is listed offline
    /// and is given no job (jobs go only to runners that ask for one).
    pub connected: bool,
}

impl SimRunner {
    /// A registration as `generate-jitconfig` makes it: offline, idle, never connected.
    pub fn registered(
        id: u64,
        name: String,
        scope: Scope,
        labels: Vec<String>,
        token: String,
    ) -> SimRunner {
        SimRunner {
            id,
            name,
            scope,
            labels,
            group_id: 1,
            online: false,
            busy: false,
            job: None,
            token,
            last_seen: Instant::now(),
            created: Instant::now(),
            connected: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SimJob {
    pub id: u64,
    pub run_id: u64,
    pub repo: String,
    pub name: String,
    pub labels: Vec<String>,
    #[serde(skip)]
    pub steps: Vec<String>,
    pub status: Status,
    pub conclusion: Option<String>,
    pub runner_id: Option<u64>,
    pub runner_name: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    /// Unix ms, for latency tables.
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub completed_ms: Option<i64>,
    /// Fault switch: never deliver this job's webhooks.
    pub drop_webhooks: bool,
    pub log: String,
}

#[derive(Debug, Clone)]
pub struct SimRun {
    pub id: u64,
    pub repo: String,
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Default)]
pub struct World {
    pub next_id: u64,
    pub repos: BTreeMap<String, u64>,
    pub runners: BTreeMap<u64, SimRunner>,
    pub runs: BTreeMap<u64, SimRun>,
    pub jobs: BTreeMap<u64, SimJob>,
}

impl World {
    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn repo_id(&mut self, full: &str) -> u64 {
        if let Some(id) = self.repos.get(full) {
            return *id;
        }
        let id = self.id();
        self.repos.insert(full.to_string(), id);
        id
    }

    pub fn run_status(&self, run: u64) -> Status {
        let jobs: Vec<&SimJob> = self.jobs.values().filter(|j| j.run_id == run).collect();
        if jobs.iter().all(|j| j.status == Status::Completed) {
            Status::Completed
        } else if jobs.iter().all(|j| j.status == Status::Queued) {
            Status::Queued
        } else {
            Status::InProgress
        }
    }

    /// The queued job a runner gets: the oldest one in its scope whose labels it has all of.
    pub fn match_job(&self, runner: &SimRunner) -> Option<u64> {
        let have = Labels::new(&runner.labels);
        self.jobs
            .values()
            .filter(|j| j.status == Status::Queued)
            .filter(|j| runner.scope.covers(&j.repo, Some(crate::ENTERPRISE)))
            .find(|j| have.serves(&Labels::new(&j.labels)))
            .map(|j| j.id)
    }
}

pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn sha(seed: u64) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(seed.to_le_bytes()))[..40].to_string()
}

pub fn user(base: &str, login: &str, id: u64, kind: &str) -> Value {
    let u = format!("{base}/users/{login}");
    json!({
        "login": login, "id": id, "node_id": format!("MDQ6VXNlcj{id}"),
        "avatar_url": format!("https://avatars.example.invalid/u/{id}"), "gravatar_id": "",
        "url": u, "html_url": format!("https://github.example.invalid/{login}"),
        "followers_url": format!("{u}/followers"), "following_url": format!("{u}/following{{/other_user}}"),
        "gists_url": format!("{u}/gists{{/gist_id}}"), "starred_url": format!("{u}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{u}/subscriptions"), "organizations_url": format!("{u}/orgs"),
        "repos_url": format!("{u}/repos"), "events_url": format!("{u}/events{{/privacy}}"),
        "received_events_url": format!("{u}/received_events"), "type": kind, "site_admin": false,
        "user_view_type": "public"
    })
}

/// A repository object with every field GitHub's `repository` webhook schema requires (a
/// superset of the REST `minimal-repository`).
pub fn repository(base: &str, full: &str, id: u64) -> Value {
    let (owner, name) = full.split_once('/').unwrap_or((full, full));
    let u = format!("{base}/repos/{full}");
    let html = format!("https://github.example.invalid/{full}");
    let t = "2024-01-01T00:00:00Z";
    json!({
        "id": id, "node_id": format!("R_kgDO{id}"), "name": name, "full_name": full,
        "private": true, "owner": user(base, owner, id + 1_000_000, "Organization"),
        "html_url": html, "description": null, "fork": false, "url": u,
        "archive_url": format!("{u}/{{archive_format}}{{/ref}}"), "assignees_url": format!("{u}/assignees{{/user}}"),
        "blobs_url": format!("{u}/git/blobs{{/sha}}"), "branches_url": format!("{u}/branches{{/branch}}"),
        "collaborators_url": format!("{u}/collaborators{{/collaborator}}"), "comments_url": format!("{u}/comments{{/number}}"),
        "commits_url": format!("{u}/commits{{/sha}}"), "compare_url": format!("{u}/compare/{{base}}...{{head}}"),
        "contents_url": format!("{u}/contents/{{+path}}"), "contributors_url": format!("{u}/contributors"),
        "deployments_url": format!("{u}/deployments"), "downloads_url": format!("{u}/downloads"),
        "events_url": format!("{u}/events"), "forks_url": format!("{u}/forks"),
        "git_commits_url": format!("{u}/git/commits{{/sha}}"), "git_refs_url": format!("{u}/git/refs{{/sha}}"),
        "git_tags_url": format!("{u}/git/tags{{/sha}}"), "hooks_url": format!("{u}/hooks"),
        "issue_comment_url": format!("{u}/issues/comments{{/number}}"), "issue_events_url": format!("{u}/issues/events{{/number}}"),
        "issues_url": format!("{u}/issues{{/number}}"), "keys_url": format!("{u}/keys{{/key_id}}"),
        "labels_url": format!("{u}/labels{{/name}}"), "languages_url": format!("{u}/languages"),
        "merges_url": format!("{u}/merges"), "milestones_url": format!("{u}/milestones{{/number}}"),
        "notifications_url": format!("{u}/notifications{{?since,all,participating}}"),
        "pulls_url": format!("{u}/pulls{{/number}}"), "releases_url": format!("{u}/releases{{/id}}"),
        "stargazers_url": format!("{u}/stargazers"), "statuses_url": format!("{u}/statuses/{{sha}}"),
        "subscribers_url": format!("{u}/subscribers"), "subscription_url": format!("{u}/subscription"),
        "tags_url": format!("{u}/tags"), "teams_url": format!("{u}/teams"), "trees_url": format!("{u}/git/trees{{/sha}}"),
        "clone_url": format!("{html}.git"), "git_url": format!("git://github.example.invalid/{full}.git"),
        "ssh_url": format!("git@github.example.invalid:{full}.git"), "svn_url": html, "mirror_url": null,
        "homepage": null, "language": null, "default_branch": "main", "forks": 0, "forks_count": 0,
        "has_downloads": true, "has_issues": true, "has_projects": true, "has_wiki": true, "has_pages": false,
        "has_discussions": false, "archived": false, "disabled": false, "open_issues": 0, "open_issues_count": 0,
        "license": null, "pushed_at": t, "size": 1, "stargazers_count": 0, "watchers": 0, "watchers_count": 0,
        "created_at": t, "updated_at": t, "visibility": "private", "topics": [], "is_template": false,
        "web_commit_signoff_required": false, "allow_forking": true
    })
}

pub fn runner_json(r: &SimRunner) -> Value {
    let labels: Vec<Value> = r
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let builtin = matches!(l.to_lowercase().as_str(), "self-hosted" | "linux" | "x64" | "arm64");
            json!({"id": r.id * 1000 + i as u64, "name": l, "type": if builtin { "read-only" } else { "custom" }})
        })
        .collect();
    json!({
        "id": r.id, "name": r.name, "os": "linux",
        "status": if r.online { "online" } else { "offline" },
        "busy": r.busy, "ephemeral": true, "runner_group_id": r.group_id, "labels": labels
    })
}

pub fn job_json(base: &str, j: &SimJob, workflow_name: &str, with_steps: bool) -> Value {
    let u = format!("{base}/repos/{}", j.repo);
    let mut v = json!({
        "id": j.id, "run_id": j.run_id, "run_url": format!("{u}/actions/runs/{}", j.run_id),
        "run_attempt": 1, "node_id": format!("CR_kwDO{}", j.id), "head_sha": sha(j.run_id),
        "url": format!("{u}/actions/jobs/{}", j.id),
        "html_url": format!("https://github.example.invalid/{}/actions/runs/{}/job/{}", j.repo, j.run_id, j.id),
        "status": j.status.as_str(), "conclusion": j.conclusion,
        "created_at": j.created_at,
        // GitHub reports a queued job's started_at as its creation time.
        "started_at": j.started_at.clone().unwrap_or_else(|| j.created_at.clone()),
        "completed_at": j.completed_at, "name": j.name,
        "check_run_url": format!("{u}/check-runs/{}", j.id), "labels": j.labels,
        "runner_id": j.runner_id, "runner_name": j.runner_name,
        "runner_group_id": j.runner_id.map(|_| 1), "runner_group_name": j.runner_id.map(|_| "Default"),
        "workflow_name": workflow_name, "head_branch": "main"
    });
    if with_steps {
        let steps: Vec<Value> = if j.status == Status::Queued {
            vec![]
        } else {
            j.steps
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    json!({
                        "name": s, "number": i + 1,
                        "status": if j.status == Status::Completed { "completed" } else { "in_progress" },
                        "conclusion": if j.status == Status::Completed { j.conclusion.clone() } else { None },
                        "started_at": j.started_at, "completed_at": j.completed_at
                    })
                })
                .collect()
        };
        v["steps"] = json!(steps);
    }
    v
}

pub fn run_json(base: &str, run: &SimRun, status: Status, repo_id: u64) -> Value {
    let u = format!("{base}/repos/{}", run.repo);
    let ru = format!("{u}/actions/runs/{}", run.id);
    let repo = repository(base, &run.repo, repo_id);
    let conclusion = if status == Status::Completed {
        Some("success")
    } else {
        None
    };
    json!({
        "id": run.id, "name": run.name, "node_id": format!("WFR_kwLO{}", run.id), "head_branch": "main",
        "head_sha": sha(run.id), "path": ".github/workflows/ci.yml", "display_title": run.name,
        "run_number": run.id, "run_attempt": 1, "event": "push", "status": status.as_str(), "conclusion": conclusion,
        "workflow_id": 1, "url": ru.clone(),
        "html_url": format!("https://github.example.invalid/{}/actions/runs/{}", run.repo, run.id),
        "pull_requests": [], "created_at": run.created_at, "updated_at": run.created_at,
        "jobs_url": format!("{ru}/jobs"), "logs_url": format!("{ru}/logs"),
        "check_suite_url": format!("{u}/check-suites/{}", run.id), "artifacts_url": format!("{ru}/artifacts"),
        "cancel_url": format!("{ru}/cancel"), "rerun_url": format!("{ru}/rerun"),
        "workflow_url": format!("{u}/actions/workflows/1"),
        "head_commit": {
            "id": sha(run.id), "tree_id": sha(run.id + 1), "message": run.name, "timestamp": run.created_at,
            "author": {"name": "octo", "email": "octo@example.invalid"},
            "committer": {"name": "octo", "email": "octo@example.invalid"}
        },
        "repository": repo.clone(), "head_repository": repo
    })
}
