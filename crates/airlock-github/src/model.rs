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

/// The client's decoding of each answer it reads, reachable from outside this crate only for the
/// fuzz target `github_responses` and its replay test (`fuzz/`): the models above stay private,
/// and what comes back is what the client hands on (ids, names, observed jobs), never a token or
/// a JIT config. Each decode is the client's own call (`serde_json::from_slice` into the model,
/// jobs observed with `Job::observe`).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// The answers the client decodes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Answer {
        RunnerList,
        Runner,
        Jit,
        RunnerGroups,
        Runs,
        Jobs,
        Job,
        Installation,
        InstallationToken,
        Repos,
        ApiMessage,
    }

    impl Answer {
        pub const ALL: [Answer; 11] = [
            Answer::RunnerList,
            Answer::Runner,
            Answer::Jit,
            Answer::RunnerGroups,
            Answer::Runs,
            Answer::Jobs,
            Answer::Job,
            Answer::Installation,
            Answer::InstallationToken,
            Answer::Repos,
            Answer::ApiMessage,
        ];
    }

    /// What a decoded answer says.
    #[derive(Debug)]
    pub enum Decoded {
        /// A runner list, a runner or a JIT answer (its config left out): id, name, status, busy,
        /// label names.
        Runners(Vec<(u64, String, String, bool, Vec<String>)>),
        /// Id, name, whether it is the default.
        RunnerGroups(Vec<(u64, String, bool)>),
        RunIds(Vec<u64>),
        /// Each job as `Job::observe` made it for the repository `octo/hello`.
        Jobs(Vec<Result<airlock_core::JobObservation, String>>),
        Installation(u64),
        /// An installation token's expiry as `parse_time` read it (the token left out).
        TokenExpiry(Option<i64>),
        Repos(Vec<String>),
        Message(String),
    }

    fn runner(r: Runner) -> (u64, String, String, bool, Vec<String>) {
        let labels = r.labels.into_iter().map(|l| l.name).collect();
        (r.id, r.name, r.status, r.busy, labels)
    }

    fn jobs(jobs: Vec<Job>) -> Decoded {
        Decoded::Jobs(
            jobs.into_iter()
                .map(|j| j.observe("octo/hello", None))
                .collect(),
        )
    }

    /// `body` decoded as `answer`; the error is serde's message.
    pub fn decode(answer: Answer, body: &[u8]) -> Result<Decoded, String> {
        fn de<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
            serde_json::from_slice(body).map_err(|e| e.to_string())
        }
        Ok(match answer {
            Answer::RunnerList => {
                let l: RunnerList = de(body)?;
                Decoded::Runners(l.runners.into_iter().map(runner).collect())
            }
            Answer::Runner => Decoded::Runners(vec![runner(de(body)?)]),
            Answer::Jit => {
                let j: JitResponse = de(body)?;
                Decoded::Runners(vec![runner(j.runner)])
            }
            Answer::RunnerGroups => {
                let g: RunnerGroups = de(body)?;
                Decoded::RunnerGroups(
                    g.runner_groups
                        .into_iter()
                        .map(|g| (g.id, g.name, g.default))
                        .collect(),
                )
            }
            Answer::Runs => {
                let r: Runs = de(body)?;
                Decoded::RunIds(r.workflow_runs.into_iter().map(|r| r.id).collect())
            }
            Answer::Jobs => jobs(de::<Jobs>(body)?.jobs),
            Answer::Job => jobs(vec![de(body)?]),
            Answer::Installation => Decoded::Installation(de::<Installation>(body)?.id),
            Answer::InstallationToken => {
                let t: InstallationToken = de(body)?;
                Decoded::TokenExpiry(crate::parse_time(&t.expires_at))
            }
            Answer::Repos => {
                let r: Vec<Repo> = de(body)?;
                Decoded::Repos(r.into_iter().map(|r| r.full_name).collect())
            }
            Answer::ApiMessage => Decoded::Message(de::<ApiMessage>(body)?.message),
        })
    }
}
