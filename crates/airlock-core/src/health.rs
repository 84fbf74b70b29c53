//! What a pool's health says, decided without I/O: which runner exit codes mean the image's
//! runner is outdated, when a pool counts as degraded, and why a job it serves is still waiting.
//!
//! The daemon keeps the facts (failures, exits, runners, the rate limit); these functions turn
//! them into the reasons `airlock status`, the metrics and the log give.

use crate::{RunnerState, Timestamp};

/// Consecutive failed creates (or runners that died before they came online) after which a
/// pool is degraded.
pub const DEGRADED_AFTER: u32 = 3;

/// What an exit code of GitHub's runner (`actions/runner`, `Constants.Runner.ReturnCode`)
/// means when it says the runner's version is not the one GitHub wants: 3 and 4 (it updated
/// itself and wants a restart, in a sandbox that is destroyed instead, so the next one does the
/// same) and 7 (its version is deprecated; the runner returns 7 only when
/// `ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE=1`, which airlock sets, and 1 otherwise).
pub fn outdated_exit(code: i32) -> Option<&'static str> {
    match code {
        3 => Some("the runner updated itself (exit 3, RunnerUpdating)"),
        4 => Some("the runner updated itself (exit 4, RunOnceRunnerUpdating)"),
        7 => Some("the runner's version is deprecated (exit 7, RunnerVersionDeprecated)"),
        _ => None,
    }
}

/// What GitHub's side holds back: its rate limit, or the client's open circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GitHubHold {
    #[default]
    None,
    RateLimited {
        until: Timestamp,
    },
    Unavailable {
        until: Timestamp,
        failures: u32,
    },
}

/// Why a job a pool serves has no runner yet, most telling first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// The daemon is draining: it starts no runners.
    Draining,
    /// The state directory's disk is below its low-water mark: no sandbox is created.
    DiskLow { free_mib: u64 },
    /// GitHub's rate limit says wait.
    RateLimited { until: Timestamp },
    /// GitHub keeps failing (5xx, timeouts): the client's circuit breaker sends nothing until.
    GitHubUnavailable { until: Timestamp, failures: u32 },
    /// The pool's image has an outdated runner: its runners exit without taking jobs.
    ImageOutdated { what: String },
    /// The pool's image is not built (or cannot be resolved).
    ImageMissing { error: String },
    /// The pool's creates keep failing (degraded), or the last one failed and it is backing off.
    BackendFailing { error: String, failures: u32 },
    /// Every runner the pool may have exists and is busy (or on its way).
    AtMax { max: u32, live: u32 },
    /// Runners are being created or are booting; the job waits for one to come online.
    Starting { starting: u32 },
    /// Idle runners are online but GitHub has not given them the job (another job took them,
    /// or the job's labels or runner group do not reach them).
    Unassigned { idle: u32 },
    /// Nothing holds it back: the next pass creates its runner.
    Pending,
}

impl WaitReason {
    /// A short stable name, for metrics and JSON.
    pub fn code(&self) -> &'static str {
        match self {
            WaitReason::Draining => "draining",
            WaitReason::DiskLow { .. } => "disk_low",
            WaitReason::RateLimited { .. } => "rate_limited",
            WaitReason::GitHubUnavailable { .. } => "github_unavailable",
            WaitReason::ImageOutdated { .. } => "image_outdated",
            WaitReason::ImageMissing { .. } => "image_missing",
            WaitReason::BackendFailing { .. } => "backend_failing",
            WaitReason::AtMax { .. } => "pool_at_max",
            WaitReason::Starting { .. } => "runner_starting",
            WaitReason::Unassigned { .. } => "not_assigned",
            WaitReason::Pending => "pending",
        }
    }
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitReason::Draining => write!(f, "the daemon is draining: no new runners"),
            WaitReason::DiskLow { free_mib } => write!(
                f,
                "the state directory's disk is low ({free_mib} MiB free): no new sandboxes until it is back above server.disk_low_mib"
            ),
            WaitReason::RateLimited { until } => {
                write!(f, "GitHub's rate limit: no requests until {until} (Unix ms)")
            }
            WaitReason::GitHubUnavailable { until, failures } => write!(
                f,
                "GitHub is failing ({failures} errors in a row): no requests until {until} (Unix ms)"
            ),
            WaitReason::ImageOutdated { what } => write!(
                f,
                "the pool's image is outdated: {what}; rebuild it (`airlock image build`)"
            ),
            WaitReason::ImageMissing { error } => write!(f, "the pool's image: {error}"),
            WaitReason::BackendFailing { error, failures } => write!(
                f,
                "the pool's creates are failing ({failures} in a row): {error}"
            ),
            WaitReason::AtMax { max, live } => write!(
                f,
                "the pool is at max_runners ({live} of {max} runners exist)"
            ),
            WaitReason::Starting { starting } => {
                write!(f, "{starting} runner(s) starting: waiting for one to come online")
            }
            WaitReason::Unassigned { idle } => write!(
                f,
                "{idle} idle runner(s) online, but GitHub has not assigned them the job (check its labels and the runner group)"
            ),
            WaitReason::Pending => write!(f, "no runner yet; one is due at the next pass"),
        }
    }
}

/// What a pool's health knows, as `wait_reason` reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolFacts {
    /// Failed creates in a row (reset once one of its runners comes online).
    pub failures: u32,
    /// The class and message of the last failure.
    pub last_error: Option<(String, String)>,
    /// Whether its creates are held back by a backoff now.
    pub backing_off: bool,
    /// Set when its runners exit as outdated (see `outdated_exit`).
    pub outdated: Option<String>,
}

/// Why a job served by a pool with `facts`, `max` runners at most and `runners` (the states of
/// its live runners) has no runner yet, at `now`; `disk_low_free_mib` when the disk is low.
pub fn wait_reason(
    now: Timestamp,
    draining: bool,
    disk_low_free_mib: Option<u64>,
    github: GitHubHold,
    facts: &PoolFacts,
    max: u32,
    runners: &[RunnerState],
) -> WaitReason {
    if draining {
        return WaitReason::Draining;
    }
    if let Some(free_mib) = disk_low_free_mib {
        return WaitReason::DiskLow { free_mib };
    }
    match github {
        GitHubHold::RateLimited { until } if until > now => {
            return WaitReason::RateLimited { until }
        }
        GitHubHold::Unavailable { until, failures } if until > now => {
            return WaitReason::GitHubUnavailable { until, failures }
        }
        _ => {}
    }
    if let Some(what) = &facts.outdated {
        return WaitReason::ImageOutdated { what: what.clone() };
    }
    if let Some((class, error)) = &facts.last_error {
        if class == "image" {
            return WaitReason::ImageMissing {
                error: error.clone(),
            };
        }
        if facts.backing_off || facts.failures >= DEGRADED_AFTER {
            return WaitReason::BackendFailing {
                error: error.clone(),
                failures: facts.failures,
            };
        }
    }
    let count = |f: fn(&RunnerState) -> bool| runners.iter().filter(|s| f(s)).count() as u32;
    let live = count(|s| *s != RunnerState::Gone);
    let starting = count(|s| matches!(s, RunnerState::Creating | RunnerState::Starting));
    let idle = count(|s| *s == RunnerState::Idle);
    if idle > 0 {
        return WaitReason::Unassigned { idle };
    }
    if live >= max {
        return WaitReason::AtMax { max, live };
    }
    if starting > 0 {
        return WaitReason::Starting { starting };
    }
    WaitReason::Pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunnerState::*;

    #[test]
    fn outdated_codes_are_githubs() {
        let outdated: Vec<i32> = (0..=10).filter(|c| outdated_exit(*c).is_some()).collect();
        assert_eq!(outdated, vec![3, 4, 7]);
    }

    #[test]
    fn the_most_telling_reason_wins() {
        let failing = PoolFacts {
            failures: 3,
            last_error: Some(("sandbox".into(), "mkfs.ext4 failed".into())),
            ..Default::default()
        };
        let backing_off = PoolFacts {
            failures: 1,
            last_error: Some(("transient".into(), "GitHub 502".into())),
            backing_off: true,
            ..Default::default()
        };
        let once = PoolFacts {
            failures: 1,
            last_error: Some(("transient".into(), "GitHub 502".into())),
            ..Default::default()
        };
        let image = PoolFacts {
            failures: 1,
            last_error: Some(("image".into(), "no build of runner".into())),
            ..Default::default()
        };
        let outdated = PoolFacts {
            outdated: Some("exit 7".into()),
            ..failing.clone()
        };
        let ok = PoolFacts::default();
        // (what, draining, disk low, GitHub's hold, facts, max_runners, runners, code)
        type Case<'a> = (
            &'a str,
            bool,
            Option<u64>,
            GitHubHold,
            &'a PoolFacts,
            u32,
            Vec<RunnerState>,
            &'a str,
        );
        let rl = |until| GitHubHold::RateLimited { until };
        let down = |until| GitHubHold::Unavailable { until, failures: 5 };
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("draining first", true, Some(10), rl(2000), &failing, 2, vec![], "draining"),
            ("disk low", false, Some(10), rl(2000), &failing, 2, vec![], "disk_low"),
            ("rate limit", false, None, rl(2000), &failing, 2, vec![], "rate_limited"),
            ("github down", false, None, down(2000), &failing, 2, vec![], "github_unavailable"),
            ("rate limit before down", false, None, rl(2000), &failing, 2, vec![], "rate_limited"),
            ("a past outage is none", false, None, down(999), &ok, 2, vec![], "pending"),
            ("a past rate limit is none", false, None, rl(500), &ok, 2, vec![], "pending"),
            ("outdated", false, None, GitHubHold::None, &outdated, 2, vec![], "image_outdated"),
            ("image", false, None, GitHubHold::None, &image, 2, vec![], "image_missing"),
            ("degraded", false, None, GitHubHold::None, &failing, 2, vec![Busy], "backend_failing"),
            ("backing off", false, None, GitHubHold::None, &backing_off, 2, vec![], "backend_failing"),
            ("one failure, no backoff", false, None, GitHubHold::None, &once, 2, vec![], "pending"),
            ("at max", false, None, GitHubHold::None, &ok, 2, vec![Busy, Starting], "pool_at_max"),
            ("starting", false, None, GitHubHold::None, &ok, 3, vec![Busy, Creating], "runner_starting"),
            ("idle", false, None, GitHubHold::None, &ok, 2, vec![Busy, Idle], "not_assigned"),
            ("nothing", false, None, GitHubHold::None, &ok, 2, vec![], "pending"),
            ("stopping counts as live", false, None, GitHubHold::None, &ok, 1, vec![Stopping], "pool_at_max"),
        ];
        let mut wrong = Vec::new();
        for (what, draining, disk, rl, facts, max, runners, want) in cases {
            let got = wait_reason(1000, draining, disk, rl, facts, max, &runners);
            if got.code() != want {
                wrong.push(format!("{what}: got {got:?}, want {want}"));
            }
            assert!(!got.to_string().is_empty());
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
