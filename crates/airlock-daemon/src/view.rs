//! What a pass reads of the store, kept from one pass to the next: the open jobs and the live
//! runners, brought up to date from the rows written since the last pass (their revisions:
//! `Store::jobs_since`, `Store::runners_since`), so that a pass reads what changed rather than
//! every open job and live runner again. A full read replaces both at the first pass, after a
//! failed pass, and once every `FULL_EVERY` as a safety net.
//!
//! The loop is its one owner; it must never be filled from anything but the store's answers.

use std::cmp::Ordering;
use std::time::{Duration, Instant};

use airlock_core::{JobStatus, JobView, RunnerState};
use airlock_store::{Changed, JobRecord, RunnerRecord};

/// The longest a pass goes on revisions alone before it reads everything again.
const FULL_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(crate) struct View {
    /// The open jobs, by id.
    pub(crate) jobs: Open<JobView>,
    /// The live runners, as the store orders them: by creation, then name.
    pub(crate) runners: Open<RunnerRecord>,
    last_full: Option<Instant>,
}

/// One open set, kept sorted, so that a pass borrows it as the slice the planner takes (no copy
/// of ten thousand jobs per pass) and a change is one binary search.
#[derive(Debug)]
pub(crate) struct Open<T> {
    rows: Vec<T>,
    rev: Option<i64>,
}

impl<T> Default for Open<T> {
    fn default() -> Self {
        Open {
            rows: Vec::new(),
            rev: None,
        }
    }
}

impl<T> Open<T> {
    pub(crate) fn rows(&self) -> &[T] {
        &self.rows
    }

    /// Applies what the store read: a full read replaces the set; otherwise each row replaces,
    /// joins or (no longer `open`) leaves it.
    fn apply(
        &mut self,
        c: Changed<T>,
        order: impl Fn(&T, &T) -> Ordering,
        open: impl Fn(&T) -> bool,
    ) {
        if c.full {
            self.rows = c.rows.into_iter().filter(|r| open(r)).collect();
            self.rows.sort_by(&order);
        } else {
            for r in c.rows {
                match (self.rows.binary_search_by(|x| order(x, &r)), open(&r)) {
                    (Ok(i), true) => self.rows[i] = r,
                    (Ok(i), false) => {
                        self.rows.remove(i);
                    }
                    (Err(i), true) => self.rows.insert(i, r),
                    (Err(_), false) => {}
                }
            }
        }
        self.rev = Some(c.rev);
    }
}

impl View {
    /// The revisions to read from (`None`: read the open set whole), deciding whether this pass
    /// reads everything again.
    pub(crate) fn since(&mut self, now: Instant) -> (Option<i64>, Option<i64>) {
        if self
            .last_full
            .is_none_or(|t| now.duration_since(t) >= FULL_EVERY)
        {
            self.last_full = Some(now);
            self.jobs.rev = None;
            self.runners.rev = None;
        }
        (self.jobs.rev, self.runners.rev)
    }

    /// After a failed pass: what it applied may be half of what it read; start again whole.
    pub(crate) fn reset(&mut self) {
        self.last_full = None;
    }
}

impl Open<RunnerRecord> {
    pub(crate) fn apply_changed(&mut self, c: Changed<RunnerRecord>) {
        self.apply(
            c,
            |a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)),
            |r| r.state != RunnerState::Gone,
        );
    }
}

impl Open<JobView> {
    pub(crate) fn apply_changed(&mut self, c: Changed<JobRecord>) {
        let c = Changed {
            rows: c.rows.into_iter().map(JobRecord::into_view).collect(),
            rev: c.rev,
            full: c.full,
        };
        self.apply(
            c,
            |a, b| a.id.cmp(&b.id),
            |j| j.status != JobStatus::Completed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::Labels;
    use airlock_sandbox::BackendKind;

    fn job(id: u64, status: JobStatus) -> JobRecord {
        JobRecord {
            id,
            run_id: 1,
            repo: "octo/hello".into(),
            enterprise: None,
            name: format!("j{id}"),
            labels: Labels::new(["x"]),
            status,
            conclusion: None,
            runner_name: None,
            created_at: None,
            started_at: None,
            completed_at: None,
            first_seen_at: 0,
        }
    }

    fn runner(name: &str, created_at: i64, state: RunnerState) -> RunnerRecord {
        RunnerRecord {
            name: name.into(),
            pool: "p".into(),
            scope: "repo:octo/hello".into(),
            state,
            github_id: None,
            sandbox_id: name.into(),
            job_id: None,
            created_at,
            state_since: created_at,
            started_at: None,
            stopped_at: None,
            exit_code: None,
            stop_reason: None,
            backend: BackendKind::Process,
            config: String::new(),
        }
    }

    fn changed<T>(rows: Vec<T>, rev: i64, full: bool) -> Changed<T> {
        Changed { rows, rev, full }
    }

    #[test]
    fn changes_update_the_open_set_a_full_read_replaces_it_and_one_comes_each_minute() {
        let mut v = View::default();
        let t0 = Instant::now();
        assert_eq!(v.since(t0), (None, None), "the first pass reads whole");
        v.jobs.apply_changed(changed(
            vec![job(2, JobStatus::Queued), job(1, JobStatus::Queued)],
            5,
            true,
        ));
        v.runners.apply_changed(changed(
            vec![
                runner("b", 20, RunnerState::Idle),
                runner("a", 10, RunnerState::Busy),
            ],
            7,
            true,
        ));
        assert_eq!(v.since(t0 + Duration::from_secs(1)), (Some(5), Some(7)));
        v.jobs.apply_changed(changed(
            vec![job(1, JobStatus::Completed), job(3, JobStatus::InProgress)],
            9,
            false,
        ));
        v.runners.apply_changed(changed(
            vec![
                runner("a", 10, RunnerState::Gone),
                runner("c", 30, RunnerState::Creating),
            ],
            8,
            false,
        ));
        assert_eq!(
            v.jobs.rows().iter().map(|j| j.id).collect::<Vec<_>>(),
            [2, 3],
            "a completed job leaves, a new one joins, by id"
        );
        assert_eq!(
            v.runners
                .rows()
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["b", "c"],
            "a gone runner leaves, in creation order"
        );
        assert_eq!(v.since(t0 + Duration::from_secs(2)), (Some(9), Some(8)));
        // A full read drops what it does not list.
        v.jobs
            .apply_changed(changed(vec![job(3, JobStatus::InProgress)], 10, true));
        assert_eq!(v.jobs.rows().len(), 1);
        assert_eq!(
            v.since(t0 + FULL_EVERY + Duration::from_secs(1)),
            (None, None),
            "the safety net's full read"
        );
        v.jobs.apply_changed(changed(vec![], 10, true));
        v.runners.apply_changed(changed(vec![], 8, true));
        assert!(v.jobs.rows().is_empty() && v.runners.rows().is_empty());
        v.reset();
        assert_eq!(
            v.since(t0 + FULL_EVERY + Duration::from_secs(2)),
            (None, None)
        );
    }
}
