//! The planner: one pure function from "what GitHub wants" (queued jobs) and "what exists"
//! (runners, their sandboxes, registrations at GitHub) to the operations that repair the
//! difference. It is level-triggered: the same input always gives the same plan, and running the
//! plan twice (a duplicated event, a replayed pass after a crash) is harmless because every
//! operation is idempotent.
//!
//! It never binds a runner to a job. A JIT runner takes *any* queued job whose labels it serves,
//! so the planner counts demand per pool and keeps that many runners available.
//!
//! Pool choice: a job is served by the pools whose scope covers its repository and whose labels
//! include all of the job's labels. When several match, the one with the fewest labels wins (the
//! least specialised machine that satisfies the job), then the one listed first in the config.

use std::collections::{HashMap, HashSet};

use crate::{JobStatus, Labels, RunnerState, Scope, Timestamp, RUNNER_PREFIX};

/// A pool as the planner sees it: the config, with durations in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    pub name: String,
    pub scope: Scope,
    pub labels: Labels,
    pub min_idle: u32,
    pub max_runners: u32,
    pub boot_timeout: i64,
    pub idle_timeout: i64,
    pub job_timeout: i64,
    /// JIT configs to keep ready (see `plan_stock`), and the age (ms) at which one is replaced.
    pub jit_stock: u32,
    pub jit_stock_refresh: i64,
    /// The fingerprint of the pool's sandbox settings (image, backend, resources, labels,
    /// egress…): a runner made with another is replaced once it is not busy. '' compares equal
    /// to anything.
    pub config: String,
}

impl PoolSpec {
    /// A fixture for tests: repo scope `octo/hello`, labels `self-hosted` + `name`.
    pub fn test(name: &str) -> PoolSpec {
        PoolSpec {
            name: name.to_string(),
            scope: Scope::Repo {
                owner: "octo".into(),
                name: "hello".into(),
            },
            labels: Labels::new(["self-hosted", name]),
            min_idle: 0,
            max_runners: 10,
            boot_timeout: 300_000,
            idle_timeout: 600_000,
            job_timeout: 6 * 3_600_000,
            jit_stock: 0,
            jit_stock_refresh: 12 * 3_600_000,
            config: String::new(),
        }
    }
    pub fn labels(mut self, l: &[&str]) -> Self {
        self.labels = Labels::new(l);
        self
    }
    pub fn max(mut self, n: u32) -> Self {
        self.max_runners = n;
        self
    }
    pub fn min_idle(mut self, n: u32) -> Self {
        self.min_idle = n;
        self
    }
}

/// A job that is not yet completed.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    pub id: u64,
    pub repo: String,
    pub enterprise: Option<String>,
    pub labels: Labels,
    pub status: JobStatus,
}

/// A runner that is not yet gone.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerView {
    pub name: String,
    pub pool: String,
    pub state: RunnerState,
    pub created_at: Timestamp,
    /// When it entered its current state.
    pub state_since: Timestamp,
    pub sandbox_id: String,
    /// The backend reports its sandbox has exited (the runner process is done).
    pub exited: bool,
    /// The runner's exit status, when it exited and the backend knows it.
    pub exit_code: Option<i32>,
    /// airlock knows which job it took (a webhook or poll named this runner on a job).
    pub job_known: bool,
    /// The fingerprint of its pool's settings when it was made ('' unknown: taken as current).
    pub config: String,
}

/// A runner registration as GitHub lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationView {
    pub scope: Scope,
    pub id: u64,
    pub name: String,
    pub busy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The runner's process ended (normally: after its one job).
    Exited,
    /// Not online within `boot_timeout`.
    BootTimeout,
    /// No job within `idle_timeout` and not needed for `min_idle` or queued jobs.
    IdleTimeout,
    /// Its job ran past `job_timeout`.
    JobTimeout,
    /// The daemon is shutting down.
    Drain,
    /// A teardown that an earlier pass (or process) began and did not finish.
    Resume,
    /// Its pool's settings changed (a reload, or a restart with another config) and it was
    /// not busy: it is replaced by a runner made with the new ones.
    Reconfigured,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Exited => "exited",
            StopReason::BootTimeout => "boot_timeout",
            StopReason::IdleTimeout => "idle_timeout",
            StopReason::JobTimeout => "job_timeout",
            StopReason::Drain => "drain",
            StopReason::Resume => "resume",
            StopReason::Reconfigured => "reconfigured",
        }
    }

    /// Voluntary stops remove the registration *before* the sandbox: if GitHub refuses because the
    /// runner is running a job (422), the runner is kept. This is what keeps a scale-down from ever
    /// killing a busy runner, including one that took a job airlock has not heard of yet.
    pub fn deregister_first(self) -> bool {
        match self {
            StopReason::BootTimeout
            | StopReason::IdleTimeout
            | StopReason::Drain
            | StopReason::Reconfigured => true,
            StopReason::Exited | StopReason::JobTimeout | StopReason::Resume => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Create { pool: String },
    Stop { runner: String, reason: StopReason },
    DeleteRegistration { scope: Scope, id: u64, name: String },
    DestroySandbox { id: String },
}

#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub now: Timestamp,
    pub pools: &'a [PoolSpec],
    /// Jobs not yet completed.
    pub jobs: &'a [JobView],
    /// Runners not yet gone.
    pub runners: &'a [RunnerView],
    /// Per pool: runners that exited after taking a job airlock has not heard of yet. Until a
    /// poll that started after their exit has completed, each is assumed to have served one of
    /// the queued jobs (otherwise a fast job whose webhook is late would get a second runner).
    pub unaccounted: &'a HashMap<String, u32>,
    /// The latest list of registrations at GitHub, for orphan reaping. Empty until first polled.
    pub registrations: &'a [RegistrationView],
    /// Sandboxes the backend reports as existing, for orphan reaping.
    pub sandboxes: &'a [String],
    /// Registration names held for the JIT stock (ready or being requested): not orphans.
    pub reserved: &'a HashSet<String>,
    /// Per pool: creates in flight whose runner is not in `runners` yet (the executor runs
    /// operations while the next pass plans). Each counts as a runner being created.
    pub creating: &'a HashMap<String, u32>,
    pub draining: bool,
}

/// Which pool serves a job, if any (see the module doc for the rule).
pub fn choose_pool<'p>(job: &JobView, pools: &'p [PoolSpec]) -> Option<&'p PoolSpec> {
    pools
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            p.scope.covers(&job.repo, job.enterprise.as_deref()) && p.labels.serves(&job.labels)
        })
        .min_by_key(|(i, p)| (p.labels.len(), *i))
        .map(|(_, p)| p)
}

/// Queued jobs per pool name. Jobs sharing a repository and label set share a pool, so the
/// choice is made once per distinct pair (thousands of jobs usually have a handful of shapes).
pub fn demand(jobs: &[JobView], pools: &[PoolSpec]) -> HashMap<String, u32> {
    let mut by_pool: Vec<u32> = vec![0; pools.len()];
    let mut memo: HashMap<(&str, Option<&str>, &Labels), Option<usize>> = HashMap::new();
    for job in jobs.iter().filter(|j| j.status == JobStatus::Queued) {
        let key = (job.repo.as_str(), job.enterprise.as_deref(), &job.labels);
        let chosen = *memo.entry(key).or_insert_with(|| {
            choose_pool(job, pools).and_then(|p| pools.iter().position(|x| std::ptr::eq(x, p)))
        });
        if let Some(i) = chosen {
            by_pool[i] += 1;
        }
    }
    pools
        .iter()
        .zip(by_pool)
        .filter(|(_, n)| *n > 0)
        .map(|(p, n)| (p.name.clone(), n))
        .collect()
}

pub fn plan(input: &PlanInput<'_>) -> Vec<Op> {
    let mut ops = Vec::new();
    let demand = demand(input.jobs, input.pools);
    let mut by_pool: HashMap<&str, Vec<&RunnerView>> = HashMap::new();
    for r in input.runners {
        by_pool.entry(r.pool.as_str()).or_default().push(r);
    }

    for pool in input.pools {
        let runners = by_pool.remove(pool.name.as_str()).unwrap_or_default();
        let queued = demand.get(&pool.name).copied().unwrap_or(0);
        // A runner that is busy, or exiting cleanly, without airlock knowing its job took one of
        // the jobs that still look queued (their webhooks are on the way): count each as serving
        // one, like the earlier unaccounted exits, or it would get a spare runner.
        let exiting = runners
            .iter()
            .filter(|r| !r.job_known)
            .filter(|r| {
                r.state == RunnerState::Busy
                    || (r.exited
                        && r.exit_code == Some(0)
                        && matches!(r.state, RunnerState::Starting | RunnerState::Idle))
            })
            .count() as u32;
        let offset = input.unaccounted.get(&pool.name).copied().unwrap_or(0) + exiting;
        let wanted = if input.draining {
            0
        } else {
            queued.saturating_sub(offset) + pool.min_idle
        };

        let mut available: Vec<&RunnerView> = Vec::new();
        for r in &runners {
            let age = input.now - r.created_at;
            let in_state = input.now - r.state_since;
            let stop = if r.state == RunnerState::Stopping {
                Some(StopReason::Resume)
            } else if r.exited {
                Some(StopReason::Exited)
            } else if r.state == RunnerState::Busy && in_state > pool.job_timeout {
                Some(StopReason::JobTimeout)
            } else if r.state != RunnerState::Busy
                && !r.config.is_empty()
                && !pool.config.is_empty()
                && r.config != pool.config
            {
                // Made with settings the pool no longer has; a busy one finishes its job first.
                Some(StopReason::Reconfigured)
            } else if matches!(r.state, RunnerState::Creating | RunnerState::Starting)
                && age > pool.boot_timeout
            {
                Some(StopReason::BootTimeout)
            } else {
                None
            };
            match stop {
                Some(reason) => ops.push(Op::Stop {
                    runner: r.name.clone(),
                    reason,
                }),
                None if r.state.available() => available.push(r),
                None => {}
            }
        }

        let in_flight = input.creating.get(&pool.name).copied().unwrap_or(0);
        let have = available.len() as u32 + in_flight;
        if have > wanted {
            // Stop the runners idle the longest first; never one that is starting (it will be
            // idle soon and is cheaper to keep than to remake) and never a busy one.
            let mut idle: Vec<&&RunnerView> = available
                .iter()
                .filter(|r| r.state == RunnerState::Idle || input.draining)
                .filter(|r| input.draining || input.now - r.state_since >= pool.idle_timeout)
                .collect();
            idle.sort_by_key(|r| (r.state_since, r.name.clone()));
            let reason = if input.draining {
                StopReason::Drain
            } else {
                StopReason::IdleTimeout
            };
            for r in idle.into_iter().take((have - wanted) as usize) {
                ops.push(Op::Stop {
                    runner: r.name.clone(),
                    reason,
                });
            }
        } else if wanted > have {
            let live = runners.len() as u32 + in_flight;
            let room = pool.max_runners.saturating_sub(live);
            for _ in 0..(wanted - have).min(room) {
                ops.push(Op::Create {
                    pool: pool.name.clone(),
                });
            }
        }
    }

    // Runners of pools no longer in the config: drain them like a shutdown would.
    let mut leftover: Vec<_> = by_pool.into_values().flatten().collect();
    leftover.sort_by(|a, b| a.name.cmp(&b.name));
    for r in leftover {
        let reason = match (r.state, r.exited) {
            (RunnerState::Stopping, _) => StopReason::Resume,
            (_, true) => StopReason::Exited,
            (RunnerState::Busy, false) => continue,
            _ => StopReason::Drain,
        };
        ops.push(Op::Stop {
            runner: r.name.clone(),
            reason,
        });
    }

    let live: HashSet<&str> = input.runners.iter().map(|r| r.name.as_str()).collect();
    for reg in input.registrations {
        if reg.name.starts_with(RUNNER_PREFIX)
            && !live.contains(reg.name.as_str())
            && !input.reserved.contains(&reg.name)
            && !reg.busy
        {
            ops.push(Op::DeleteRegistration {
                scope: reg.scope.clone(),
                id: reg.id,
                name: reg.name.clone(),
            });
        }
    }
    let owned: HashSet<&str> = input
        .runners
        .iter()
        .map(|r| r.sandbox_id.as_str())
        .collect();
    for id in input.sandboxes {
        if !owned.contains(id.as_str()) {
            ops.push(Op::DestroySandbox { id: id.clone() });
        }
    }
    ops
}

/// The earliest moment after `input.now` at which time alone changes the plan: a runner's boot,
/// idle or job timeout running out. The control loop sleeps until then (or an earlier backoff's
/// end) unless an event wakes it first; `None`: nothing is due, only events matter.
pub fn next_due(input: &PlanInput<'_>) -> Option<Timestamp> {
    let pools: HashMap<&str, &PoolSpec> =
        input.pools.iter().map(|p| (p.name.as_str(), p)).collect();
    input
        .runners
        .iter()
        .filter(|r| !r.exited)
        .filter_map(|r| {
            let pool = pools.get(r.pool.as_str())?;
            // The planner's comparisons are strict (`>`): one millisecond past the limit.
            match r.state {
                RunnerState::Creating | RunnerState::Starting => {
                    Some(r.created_at + pool.boot_timeout + 1)
                }
                RunnerState::Idle => Some(r.state_since + pool.idle_timeout),
                RunnerState::Busy => Some(r.state_since + pool.job_timeout + 1),
                RunnerState::Stopping | RunnerState::Gone => None,
            }
        })
        .filter(|&t| t > input.now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = 1_700_000_000_000;

    fn job(id: u64, labels: &[&str]) -> JobView {
        JobView {
            id,
            repo: "octo/hello".into(),
            enterprise: None,
            labels: Labels::new(labels),
            status: JobStatus::Queued,
        }
    }

    fn runner(name: &str, pool: &str, state: RunnerState, since_secs_ago: i64) -> RunnerView {
        RunnerView {
            name: name.into(),
            pool: pool.into(),
            state,
            created_at: NOW - since_secs_ago * 1000,
            state_since: NOW - since_secs_ago * 1000,
            sandbox_id: format!("sb-{name}"),
            exited: false,
            exit_code: None,
            job_known: false,
            config: String::new(),
        }
    }

    struct Case {
        name: &'static str,
        pools: Vec<PoolSpec>,
        jobs: Vec<JobView>,
        runners: Vec<RunnerView>,
        unaccounted: Vec<(&'static str, u32)>,
        registrations: Vec<RegistrationView>,
        sandboxes: Vec<&'static str>,
        reserved: Vec<&'static str>,
        /// Creates in flight, per pool, not yet among `runners`.
        creating: Vec<(&'static str, u32)>,
        draining: bool,
        want: Vec<Op>,
    }

    impl Default for Case {
        fn default() -> Self {
            Case {
                name: "",
                pools: vec![PoolSpec::test("small")],
                jobs: vec![],
                runners: vec![],
                unaccounted: vec![],
                registrations: vec![],
                sandboxes: vec![],
                reserved: vec![],
                creating: vec![],
                draining: false,
                want: vec![],
            }
        }
    }

    fn create(pool: &str) -> Op {
        Op::Create { pool: pool.into() }
    }
    fn stop(runner: &str, reason: StopReason) -> Op {
        Op::Stop {
            runner: runner.into(),
            reason,
        }
    }

    fn run(c: Case) {
        let unaccounted: HashMap<String, u32> = c
            .unaccounted
            .iter()
            .map(|(p, n)| (p.to_string(), *n))
            .collect();
        let sandboxes: Vec<String> = c.sandboxes.iter().map(|s| s.to_string()).collect();
        let reserved: HashSet<String> = c.reserved.iter().map(|s| s.to_string()).collect();
        let creating: HashMap<String, u32> = c
            .creating
            .iter()
            .map(|(p, n)| (p.to_string(), *n))
            .collect();
        let input = PlanInput {
            now: NOW,
            pools: &c.pools,
            jobs: &c.jobs,
            runners: &c.runners,
            unaccounted: &unaccounted,
            registrations: &c.registrations,
            sandboxes: &sandboxes,
            reserved: &reserved,
            creating: &creating,
            draining: c.draining,
        };
        let got = plan(&input);
        assert_eq!(got, c.want, "case {:?}", c.name);
        // Level-triggered: planning again from the same input gives the same answer.
        assert_eq!(plan(&input), got, "case {:?} is not deterministic", c.name);
    }

    #[test]
    fn planner_table() {
        use RunnerState::*;
        let cases =
            vec![
            Case {
                name: "nothing queued, nothing to do",
                ..Default::default()
            },
            Case {
                name: "one runner per queued job",
                jobs: vec![job(1, &["self-hosted", "small"]), job(2, &["small"])],
                want: vec![create("small"), create("small")],
                ..Default::default()
            },
            Case {
                name: "capped by max_runners, counting busy runners",
                pools: vec![PoolSpec::test("small").max(3)],
                jobs: vec![job(1, &["small"]), job(2, &["small"]), job(3, &["small"])],
                runners: vec![runner("b1", "small", Busy, 10)],
                want: vec![create("small"), create("small")],
                ..Default::default()
            },
            Case {
                name: "creates in flight (not stored yet) count as runners being created",
                jobs: vec![job(1, &["small"]), job(2, &["small"]), job(3, &["small"])],
                runners: vec![runner("s1", "small", Starting, 5)],
                creating: vec![("small", 1), ("other", 5)],
                want: vec![create("small")],
                ..Default::default()
            },
            Case {
                name: "creates in flight count toward max_runners",
                pools: vec![PoolSpec::test("small").max(3)],
                jobs: (1..=5).map(|i| job(i, &["small"])).collect(),
                runners: vec![runner("b1", "small", Busy, 10)],
                creating: vec![("small", 1)],
                want: vec![create("small")],
                ..Default::default()
            },
            Case {
                name: "starting and idle runners already cover demand",
                jobs: vec![job(1, &["small"]), job(2, &["small"])],
                runners: vec![
                    runner("s1", "small", Starting, 5),
                    runner("i1", "small", Idle, 5),
                ],
                ..Default::default()
            },
            Case {
                name: "min_idle kept without jobs",
                pools: vec![PoolSpec::test("small").min_idle(2)],
                runners: vec![runner("i1", "small", Idle, 5000)],
                want: vec![create("small")],
                ..Default::default()
            },
            Case {
                name: "jobs no pool serves are ignored",
                jobs: vec![job(1, &["gpu"]), job(2, &["small", "arm64"])],
                ..Default::default()
            },
            Case {
                name: "most specific pool wins, then config order",
                pools: vec![
                    PoolSpec::test("big").labels(&["self-hosted", "linux", "big", "x64"]),
                    PoolSpec::test("small").labels(&["self-hosted", "linux", "x64"]),
                    PoolSpec::test("small2").labels(&["self-hosted", "linux", "arm"]),
                ],
                jobs: vec![
                    job(1, &["linux"]),
                    job(2, &["linux", "big"]),
                    job(3, &["self-hosted"]),
                ],
                want: vec![create("big"), create("small"), create("small")],
                ..Default::default()
            },
            Case {
                name: "a job outside the pool's scope is not its demand",
                jobs: vec![JobView {
                    repo: "octo/other".into(),
                    ..job(1, &["small"])
                }],
                ..Default::default()
            },
            Case {
                name: "in-progress and waiting jobs need no new runner",
                jobs: vec![
                    JobView {
                        status: JobStatus::InProgress,
                        ..job(1, &["small"])
                    },
                    JobView {
                        status: JobStatus::Waiting,
                        ..job(2, &["small"])
                    },
                ],
                ..Default::default()
            },
            Case {
                name: "idle past idle_timeout and not needed is stopped, oldest first",
                runners: vec![
                    runner("i1", "small", Idle, 700),
                    runner("i2", "small", Idle, 900),
                    runner("i3", "small", Idle, 800),
                ],
                jobs: vec![job(1, &["small"]), job(2, &["small"])],
                want: vec![stop("i2", StopReason::IdleTimeout)],
                ..Default::default()
            },
            Case {
                name: "idle runners needed for min_idle are kept",
                pools: vec![PoolSpec::test("small").min_idle(1)],
                runners: vec![runner("i1", "small", Idle, 5000)],
                ..Default::default()
            },
            Case {
                name: "busy runners are never stopped on scale-down",
                runners: vec![runner("b1", "small", Busy, 5000)],
                ..Default::default()
            },
            Case {
                name: "boot timeout stops and replaces within the cap",
                jobs: vec![job(1, &["small"])],
                runners: vec![runner("s1", "small", Starting, 301)],
                want: vec![stop("s1", StopReason::BootTimeout), create("small")],
                ..Default::default()
            },
            Case {
                name: "boot timeout replacement waits for room under max",
                pools: vec![PoolSpec::test("small").max(1)],
                jobs: vec![job(1, &["small"])],
                runners: vec![runner("s1", "small", Starting, 301)],
                want: vec![stop("s1", StopReason::BootTimeout)],
                ..Default::default()
            },
            Case {
                name: "a changed pool replaces its runners that are not busy; busy ones finish",
                pools: vec![PoolSpec {
                    config: "new".into(),
                    ..PoolSpec::test("small")
                }],
                jobs: vec![job(1, &["small"])],
                runners: vec![
                    RunnerView { config: "old".into(), ..runner("i1", "small", Idle, 1) },
                    RunnerView { config: "old".into(), ..runner("s1", "small", Starting, 1) },
                    RunnerView {
                        config: "old".into(),
                        job_known: true,
                        ..runner("b1", "small", Busy, 1)
                    },
                    RunnerView { config: "new".into(), ..runner("i2", "small", Idle, 700) },
                    // Made before fingerprints were kept: taken as current.
                    runner("i3", "small", Idle, 700),
                ],
                want: vec![
                    stop("i1", StopReason::Reconfigured),
                    stop("s1", StopReason::Reconfigured),
                    // One job, two current idle runners past their idle timeout: one goes.
                    stop("i2", StopReason::IdleTimeout),
                ],
                ..Default::default()
            },
            Case {
                name: "job timeout",
                runners: vec![runner("b1", "small", Busy, 6 * 3600 + 1)],
                want: vec![stop("b1", StopReason::JobTimeout)],
                ..Default::default()
            },
            Case {
                name: "exited runners are torn down, stopping ones resumed",
                runners: vec![
                    RunnerView {
                        exited: true,
                        ..runner("b1", "small", Busy, 10)
                    },
                    runner("x1", "small", Stopping, 10),
                ],
                want: vec![
                    stop("b1", StopReason::Exited),
                    stop("x1", StopReason::Resume),
                ],
                ..Default::default()
            },
            Case {
                name: "an exit that took an unknown job offsets demand",
                jobs: vec![job(1, &["small"]), job(2, &["small"])],
                unaccounted: vec![("small", 1)],
                want: vec![create("small")],
                ..Default::default()
            },
            Case {
                name: "a clean exit before the job's webhook offsets demand in the same pass",
                jobs: vec![job(1, &["small"]), job(2, &["small"])],
                runners: vec![
                    RunnerView {
                        exited: true,
                        exit_code: Some(0),
                        ..runner("s1", "small", Starting, 5)
                    },
                    RunnerView {
                        exited: true,
                        exit_code: Some(1),
                        ..runner("s2", "small", Starting, 5)
                    },
                ],
                want: vec![
                    stop("s1", StopReason::Exited),
                    stop("s2", StopReason::Exited),
                    create("small"),
                ],
                ..Default::default()
            },
            Case {
                name: "a runner seen busy before its job's webhook offsets that job",
                jobs: vec![job(1, &["small"]), job(2, &["small"])],
                runners: vec![
                    runner("b1", "small", Busy, 5),
                    RunnerView { job_known: true, ..runner("b2", "small", Busy, 5) },
                ],
                want: vec![create("small")],
                ..Default::default()
            },
            Case {
                name: "drain stops every available runner now, leaves busy ones",
                pools: vec![PoolSpec::test("small").min_idle(1)],
                jobs: vec![job(1, &["small"])],
                runners: vec![
                    runner("i1", "small", Idle, 1),
                    runner("s1", "small", Starting, 1),
                    runner("b1", "small", Busy, 1),
                ],
                draining: true,
                want: vec![stop("i1", StopReason::Drain), stop("s1", StopReason::Drain)],
                ..Default::default()
            },
            Case {
                name: "runners of a removed pool are drained",
                runners: vec![runner("o1", "old", Idle, 1), runner("o2", "old", Busy, 1)],
                want: vec![stop("o1", StopReason::Drain)],
                ..Default::default()
            },
            Case {
                name:
                    "orphan registrations and sandboxes are reaped; busy ones and others' are not",
                runners: vec![runner("airlock-small-a", "small", Idle, 1)],
                registrations: vec![
                    RegistrationView {
                        scope: PoolSpec::test("x").scope,
                        id: 1,
                        name: "airlock-small-a".into(),
                        busy: false,
                    },
                    RegistrationView {
                        scope: PoolSpec::test("x").scope,
                        id: 2,
                        name: "airlock-small-b".into(),
                        busy: false,
                    },
                    RegistrationView {
                        scope: PoolSpec::test("x").scope,
                        id: 3,
                        name: "airlock-small-c".into(),
                        busy: true,
                    },
                    RegistrationView {
                        scope: PoolSpec::test("x").scope,
                        id: 4,
                        name: "someone-elses".into(),
                        busy: false,
                    },
                ],
                sandboxes: vec!["sb-airlock-small-a", "sb-lost"],
                want: vec![
                    Op::DeleteRegistration {
                        scope: PoolSpec::test("x").scope,
                        id: 2,
                        name: "airlock-small-b".into(),
                    },
                    Op::DestroySandbox {
                        id: "sb-lost".into(),
                    },
                ],
                ..Default::default()
            },
            Case {
                name: "a registration held for the JIT stock is not an orphan",
                registrations: vec![
                    RegistrationView {
                        scope: PoolSpec::test("x").scope,
                        id: 7,
                        name: "airlock-small-stock".into(),
                        busy: false,
                    },
                    RegistrationView {
                        scope: PoolSpec::test("x").scope,
                        id: 8,
                        name: "airlock-small-lost".into(),
                        busy: false,
                    },
                ],
                reserved: vec!["airlock-small-stock"],
                want: vec![Op::DeleteRegistration {
                    scope: PoolSpec::test("x").scope,
                    id: 8,
                    name: "airlock-small-lost".into(),
                }],
                ..Default::default()
            },
        ];
        for c in cases {
            run(c);
        }
    }

    #[test]
    fn ten_thousand_jobs_plan_in_one_pass() {
        let pools: Vec<PoolSpec> = (0..50)
            .map(|i| PoolSpec::test(&format!("p{i}")).max(1000))
            .collect();
        let jobs: Vec<JobView> = (0..10_000)
            .map(|i| job(i, &[&format!("p{}", i % 50)]))
            .collect();
        let unaccounted = HashMap::new();
        let ops = plan(&PlanInput {
            now: NOW,
            pools: &pools,
            jobs: &jobs,
            runners: &[],
            unaccounted: &unaccounted,
            registrations: &[],
            sandboxes: &[],
            reserved: &HashSet::new(),
            creating: &Default::default(),
            draining: false,
        });
        assert_eq!(ops.len(), 10_000);
    }

    /// Each timeout's moment is what `next_due` says: the plan one millisecond before has no stop
    /// for it, the plan at that moment has. A pass sleeping until `next_due` misses none.
    #[test]
    fn next_due_is_the_moment_a_timeout_changes_the_plan() {
        let pool = PoolSpec::test("small");
        let unaccounted = HashMap::new();
        let reserved = HashSet::new();
        let cases = [
            (
                RunnerState::Starting,
                pool.boot_timeout,
                StopReason::BootTimeout,
            ),
            (
                RunnerState::Creating,
                pool.boot_timeout,
                StopReason::BootTimeout,
            ),
            (
                RunnerState::Idle,
                pool.idle_timeout,
                StopReason::IdleTimeout,
            ),
            (RunnerState::Busy, pool.job_timeout, StopReason::JobTimeout),
        ];
        let mut failures = Vec::new();
        for (state, limit, reason) in cases {
            // Made 10 s ago; its timeout runs out later.
            let r = runner("r1", "small", state, 10);
            let pools = [pool.clone()];
            let runners = [r.clone()];
            let creating = HashMap::new();
            let input = |now| PlanInput {
                now,
                pools: &pools,
                jobs: &[],
                runners: &runners,
                unaccounted: &unaccounted,
                registrations: &[],
                sandboxes: &[],
                reserved: &reserved,
                creating: &creating,
                draining: false,
            };
            let due = next_due(&input(NOW));
            let since = if state == RunnerState::Idle {
                r.state_since
            } else {
                r.created_at
            };
            let want = if state == RunnerState::Idle {
                since + limit
            } else {
                since + limit + 1
            };
            if due != Some(want) {
                failures.push(format!("{state:?}: next_due {due:?}, want {want}"));
                continue;
            }
            let stops = |now| plan(&input(now)).contains(&stop("r1", reason));
            if stops(want - 1) || !stops(want) {
                failures.push(format!(
                    "{state:?}: stopped 1 ms before: {}, at the moment: {}",
                    stops(want - 1),
                    stops(want)
                ));
            }
            // Past it, nothing further is due for this runner.
            if next_due(&input(want)).is_some() {
                failures.push(format!("{state:?}: still due after {want}"));
            }
        }
        // Exited and stopping runners wait on nothing; the earliest of several wins.
        let mut gone = runner("r2", "small", RunnerState::Starting, 1);
        gone.exited = true;
        let runners = [
            gone,
            runner("r3", "small", RunnerState::Stopping, 1),
            runner("r4", "small", RunnerState::Busy, 1),
            runner("r5", "small", RunnerState::Starting, 2),
        ];
        let pools = [pool.clone()];
        let due = next_due(&PlanInput {
            now: NOW,
            pools: &pools,
            jobs: &[],
            runners: &runners,
            unaccounted: &unaccounted,
            registrations: &[],
            sandboxes: &[],
            reserved: &HashSet::new(),
            creating: &Default::default(),
            draining: false,
        });
        if due != Some(NOW - 2000 + pool.boot_timeout + 1) {
            failures.push(format!("several runners: {due:?}"));
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }
}
