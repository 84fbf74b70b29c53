//! GitHub's JSON, as far as airlock reads it. Unknown fields are ignored (GitHub adds fields);
//! missing required ones are a decode error that names the field.

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
pub(crate) struct RunnerList {
    pub total_count: u64,
    pub runners: Vec<Runner>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Runner {
    pub id: u64,
    pub name: String,
    pub status: String,
    pub busy: bool,
    #[serde(default)]
    pub labels: Vec<RunnerLabel>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RunnerLabel {
    pub name: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct JitRequest<'a> {
    pub name: &'a str,
    pub runner_group_id: u64,
    pub labels: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_folder: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct JitResponse {
    pub runner: Runner,
    pub encoded_jit_config: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RunnerGroups {
    pub runner_groups: Vec<RunnerGroup>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RunnerGroup {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Runs {
    pub workflow_runs: Vec<Run>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Run {
    pub id: u64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Jobs {
    pub jobs: Vec<Job>,
}

/// A job, shared by the REST API and the `workflow_job` webhook.
#[derive(Debug, Deserialize)]
pub(crate) struct Job {
    pub id: u64,
    pub run_id: u64,
    pub status: String,
    pub conclusion: Option<String>,
    pub name: String,
    #[serde(default)]
    pub labels: Vec<String>,
    pub runner_name: Option<String>,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Installation {
    pub id: u64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InstallationToken {
    pub token: String,
    pub expires_at: String,
    /// What the installation may do (`administration: write`, …).
    #[serde(default)]
    pub permissions: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Repo {
    pub full_name: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ApiMessage {
    #[serde(default)]
    pub message: String,
}

impl Job {
    pub fn observe(
        self,
        repo: &str,
        enterprise: Option<String>,
    ) -> Result<airlock_core::JobObservation, String> {
        let status = airlock_core::JobStatus::from_github(&self.status)
            .ok_or_else(|| format!("job {} has unknown status {:?}", self.id, self.status))?;
        Ok(airlock_core::JobObservation {
            id: self.id,
            run_id: self.run_id,
            repo: repo.to_string(),
            enterprise,
            name: self.name,
            labels: airlock_core::Labels::new(&self.labels),
            status,
            conclusion: self.conclusion,
            runner_name: self.runner_name.filter(|n| !n.is_empty()),
            created_at: self.created_at.as_deref().and_then(crate::parse_time),
            started_at: self.started_at.as_deref().and_then(crate::parse_time),
            completed_at: self.completed_at.as_deref().and_then(crate::parse_time),
        })
    }
}
