//! The lifecycles of jobs, runners and sandboxes, and the one function per lifecycle that says
//! which moves are legal. The store applies every move through these functions inside its
//! compare-and-set update, so an illegal move is an error, never a silent overwrite.
//!
//! The matches below list every pair on purpose (no `_` arm): adding a state must force a decision
//! about every move into and out of it.

use std::fmt;

/// What to do with an observed change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A legal move forward: record it.
    Apply,
    /// Already there: nothing to record (a duplicated delivery, a repeated poll).
    Unchanged,
    /// Older news than what is stored: ignore it (an out-of-order delivery).
    Stale,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal {entity} transition from {from} to {to}")]
pub struct TransitionError {
    pub entity: &'static str,
    pub from: String,
    pub to: String,
}

/// A GitHub job's status, as webhooks and the REST API report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for a runner (GitHub's `queued`, and also `requested` and `pending`).
    Queued,
    /// Held by GitHub for a deployment-protection rule; needs no runner yet.
    Waiting,
    InProgress,
    Completed,
}

impl JobStatus {
    /// Maps GitHub's status strings. Unknown strings are `None`: the caller says what was wrong.
    pub fn from_github(s: &str) -> Option<JobStatus> {
        Some(match s {
            "queued" | "requested" | "pending" => JobStatus::Queued,
            "waiting" => JobStatus::Waiting,
            "in_progress" => JobStatus::InProgress,
            "completed" => JobStatus::Completed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Waiting => "waiting",
            JobStatus::InProgress => "in_progress",
            JobStatus::Completed => "completed",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::from_github(s)
    }

    /// Jobs only move forward. GitHub delivers webhooks out of order (`completed` before
    /// `in_progress`) and the poll can report an older view than a webhook already did, so a move
    /// backwards is `Stale`, not an error. `waiting` and `queued` can follow each other: a job
    /// waits for approval, then queues.
    pub fn advance(self, to: JobStatus) -> Step {
        use JobStatus::*;
        match (self, to) {
            (Queued, Queued)
            | (Waiting, Waiting)
            | (InProgress, InProgress)
            | (Completed, Completed) => Step::Unchanged,
            (Queued, Waiting) | (Waiting, Queued) => Step::Apply,
            (Queued, InProgress) | (Queued, Completed) => Step::Apply,
            (Waiting, InProgress) | (Waiting, Completed) => Step::Apply,
            (InProgress, Completed) => Step::Apply,
            (InProgress, Queued) | (InProgress, Waiting) => Step::Stale,
            (Completed, Queued) | (Completed, Waiting) | (Completed, InProgress) => Step::Stale,
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A runner airlock started: one registration, one sandbox, at most one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerState {
    /// Stored, JIT config being requested and sandbox being made.
    Creating,
    /// Sandbox started; the runner has not yet been seen online.
    Starting,
    /// Online at GitHub with no job.
    Idle,
    /// Running a job.
    Busy,
    /// Teardown under way: sandbox and registration being removed. Every step is idempotent.
    Stopping,
    /// Nothing of it is left.
    Gone,
}

impl RunnerState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerState::Creating => "creating",
            RunnerState::Starting => "starting",
            RunnerState::Idle => "idle",
            RunnerState::Busy => "busy",
            RunnerState::Stopping => "stopping",
            RunnerState::Gone => "gone",
        }
    }

    pub fn parse(s: &str) -> Option<RunnerState> {
        Some(match s {
            "creating" => RunnerState::Creating,
            "starting" => RunnerState::Starting,
            "idle" => RunnerState::Idle,
            "busy" => RunnerState::Busy,
            "stopping" => RunnerState::Stopping,
            "gone" => RunnerState::Gone,
            _ => return None,
        })
    }

    pub const ALL: [RunnerState; 6] = [
        RunnerState::Creating,
        RunnerState::Starting,
        RunnerState::Idle,
        RunnerState::Busy,
        RunnerState::Stopping,
        RunnerState::Gone,
    ];

    /// The legal moves. A runner can be seen busy before it was seen idle or even started (GitHub
    /// hands it a job the moment it connects, and the webhook can beat our own bookkeeping). An
    /// ephemeral runner never goes back from busy to idle.
    pub fn check(self, to: RunnerState) -> Result<Step, TransitionError> {
        use RunnerState::*;
        let ok = match (self, to) {
            (Creating, Creating) | (Starting, Starting) | (Idle, Idle) | (Busy, Busy) => {
                return Ok(Step::Unchanged)
            }
            (Stopping, Stopping) | (Gone, Gone) => return Ok(Step::Unchanged),
            (Creating, Starting) | (Creating, Busy) | (Creating, Stopping) => true,
            (Creating, Idle) | (Creating, Gone) => false,
            (Starting, Idle) | (Starting, Busy) | (Starting, Stopping) => true,
            (Starting, Creating) | (Starting, Gone) => false,
            (Idle, Busy) | (Idle, Stopping) => true,
            (Idle, Creating) | (Idle, Starting) | (Idle, Gone) => false,
            (Busy, Stopping) => true,
            (Busy, Creating) | (Busy, Starting) | (Busy, Idle) | (Busy, Gone) => false,
            (Stopping, Gone) => true,
            (Stopping, Creating) | (Stopping, Starting) | (Stopping, Idle) | (Stopping, Busy) => {
                false
            }
            (Gone, Creating)
            | (Gone, Starting)
            | (Gone, Idle)
            | (Gone, Busy)
            | (Gone, Stopping) => false,
        };
        if ok {
            Ok(Step::Apply)
        } else {
            Err(TransitionError {
                entity: "runner",
                from: self.to_string(),
                to: to.to_string(),
            })
        }
    }

    /// Counts towards the pool's supply of runners that can still take a queued job.
    pub fn available(self) -> bool {
        matches!(
            self,
            RunnerState::Creating | RunnerState::Starting | RunnerState::Idle
        )
    }
}

impl fmt::Display for RunnerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sandbox: the disposable environment one runner lives and dies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Creating,
    Running,
    Exited,
    Destroyed,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Exited => "exited",
            SandboxState::Destroyed => "destroyed",
        }
    }

    pub fn parse(s: &str) -> Option<SandboxState> {
        Some(match s {
            "creating" => SandboxState::Creating,
            "running" => SandboxState::Running,
            "exited" => SandboxState::Exited,
            "destroyed" => SandboxState::Destroyed,
            _ => return None,
        })
    }

    /// Destroy is legal from every state (teardown must work even if creation never finished).
    pub fn check(self, to: SandboxState) -> Result<Step, TransitionError> {
        use SandboxState::*;
        let ok = match (self, to) {
            (Creating, Creating)
            | (Running, Running)
            | (Exited, Exited)
            | (Destroyed, Destroyed) => return Ok(Step::Unchanged),
            (Creating, Running) | (Creating, Exited) | (Creating, Destroyed) => true,
            (Running, Exited) | (Running, Destroyed) => true,
            (Running, Creating) => false,
            (Exited, Destroyed) => true,
            (Exited, Creating) | (Exited, Running) => false,
            (Destroyed, Creating) | (Destroyed, Running) | (Destroyed, Exited) => false,
        };
        if ok {
            Ok(Step::Apply)
        } else {
            Err(TransitionError {
                entity: "sandbox",
                from: self.as_str().into(),
                to: to.as_str().into(),
            })
        }
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_only_move_forward() {
        use JobStatus::*;
        let cases = [
            (Queued, InProgress, Step::Apply),
            (Queued, Completed, Step::Apply),
            (InProgress, Completed, Step::Apply),
            (Completed, InProgress, Step::Stale), // completed delivered before in_progress
            (InProgress, Queued, Step::Stale),
            (Completed, Completed, Step::Unchanged), // redelivery
            (Waiting, Queued, Step::Apply),
            (Queued, Waiting, Step::Apply),
        ];
        for (from, to, want) in cases {
            assert_eq!(from.advance(to), want, "{from} -> {to}");
        }
        assert_eq!(JobStatus::from_github("requested"), Some(Queued));
        assert_eq!(JobStatus::from_github("bogus"), None);
    }

    #[test]
    fn runner_moves() {
        use RunnerState::*;
        let legal = [
            (Creating, Starting),
            (Creating, Stopping),
            (Creating, Busy),
            (Starting, Idle),
            (Starting, Busy),
            (Starting, Stopping),
            (Idle, Busy),
            (Idle, Stopping),
            (Busy, Stopping),
            (Stopping, Gone),
        ];
        for from in RunnerState::ALL {
            for to in RunnerState::ALL {
                let got = from.check(to);
                if from == to {
                    assert_eq!(got, Ok(Step::Unchanged));
                } else if legal.contains(&(from, to)) {
                    assert_eq!(got, Ok(Step::Apply), "{from} -> {to}");
                } else {
                    assert!(got.is_err(), "{from} -> {to} must be illegal");
                }
            }
        }
        assert_eq!(
            Busy.check(Idle).unwrap_err().to_string(),
            "illegal runner transition from busy to idle"
        );
        for s in RunnerState::ALL {
            assert_eq!(RunnerState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn sandbox_destroy_is_legal_from_anywhere() {
        use SandboxState::*;
        for s in [Creating, Running, Exited] {
            assert_eq!(s.check(Destroyed), Ok(Step::Apply));
        }
        assert!(Destroyed.check(Running).is_err());
        assert!(Exited.check(Running).is_err());
    }
}
