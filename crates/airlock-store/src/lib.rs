//! airlock's state: SQLite in WAL mode, the embedded default. The only crate that knows SQL.
//!
//! Jobs, runners, sandboxes, the webhook deliveries seen (for deduplication) and an event
//! history of every transition. Runner and sandbox moves are compare-and-set: the current state
//! is read, checked by the exhaustive transition function in `airlock-core`, and written with
//! `WHERE state = <what was read>` inside one transaction, so a concurrent or replayed move
//! cannot overwrite a newer state. This crate must never call GitHub or a sandbox backend.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use airlock_core::{
    BackendKind, JobObservation, JobStatus, Labels, RunnerState, SandboxState, Step, Timestamp,
    TransitionError,
};
use rusqlite::{params, Connection, OptionalExtension, Row};

mod batch;
mod egress;
mod rows;
mod schema;

pub use batch::BatchCall;
use batch::Cached;
pub use egress::EgressRecord;
use rows::{apply_job, event, finish_runner, runner_move, runner_row, sandbox_move, RUNNER_COLS};
use schema::MIGRATIONS;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the database {path} has schema version {found}, newer than this airlock ({supported}); upgrade airlock")]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("database error")]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("no {entity} named {id:?}")]
    Missing { entity: &'static str, id: String },
    #[error("{entity} {id:?} changed concurrently (expected {expected})")]
    Conflict {
        entity: &'static str,
        id: String,
        expected: String,
    },
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    /// A call its caller could not get an answer for (the daemon's store thread has ended).
    #[error("the store call was interrupted: {0}")]
    Interrupted(String),
    /// The call's writes were part of a batch (`Store::batch`) whose commit failed: none of
    /// them were kept.
    #[error("the store's commit failed: {0}")]
    Commit(String),
}

/// The statements (or their conditions) that every reconcile pass and every poll runs. Tables
/// grow with history until `prune_history`; none of these may read one whole.
pub(crate) mod sql {
    pub const LIVE_RUNNERS: &str = "r.state != 'gone'";
    pub const OPEN_JOBS: &str = "status != 'completed'";
    /// Ordered by revision: by id, SQLite would rather scan the table in id order than sort.
    pub const JOBS_SINCE: &str = "rev > ?1 ORDER BY rev";
    pub const RUNNERS_SINCE: &str = "r.rev > ?1 ORDER BY r.rev";
    pub const UNACCOUNTED: &str = "SELECT pool, COUNT(*) FROM runners
         WHERE took_unknown_job = 1 AND job_id IS NULL AND stopped_at > ?1 GROUP BY pool";
    pub const GONE_SINCE: &str = "SELECT github_id FROM runners
         WHERE state = 'gone' AND state_since >= ?1 AND github_id IS NOT NULL";
    pub const PRUNE_DELIVERIES: &str = "DELETE FROM deliveries WHERE received_at < ?1";
    pub const PRUNE_JOBS: &str = "DELETE FROM jobs WHERE status = 'completed' AND updated_at < ?1";
    pub const PRUNE_RUNNERS: &str = "DELETE FROM runners WHERE state = 'gone' AND state_since < ?1";
    // Never before its runner: a runner's backend is read from its sandbox row.
    pub const PRUNE_SANDBOXES: &str = "DELETE FROM sandboxes
         WHERE state = 'destroyed' AND state_since < ?1
         AND NOT EXISTS (SELECT 1 FROM runners WHERE runners.name = sandboxes.runner_name)";
    pub const PRUNE_EVENTS: &str = "DELETE FROM events WHERE at < ?1";
    pub const PRUNE_EGRESS: &str = "DELETE FROM egress WHERE stored_at < ?1";
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JobRecord {
    pub id: u64,
    pub run_id: u64,
    pub repo: String,
    pub enterprise: Option<String>,
    pub name: String,
    pub labels: Labels,
    pub status: JobStatus,
    pub conclusion: Option<String>,
    pub runner_name: Option<String>,
    pub created_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    pub first_seen_at: Timestamp,
}

impl JobRecord {
    /// What the planner needs of it.
    pub fn into_view(self) -> airlock_core::JobView {
        airlock_core::JobView {
            id: self.id,
            repo: self.repo,
            enterprise: self.enterprise,
            labels: self.labels,
            status: self.status,
        }
    }
}

/// Rows written since a reader's last read (`Store::jobs_since`, `Store::runners_since`).
#[derive(Debug, Clone, PartialEq)]
pub struct Changed<T> {
    pub rows: Vec<T>,
    /// The revision the reader has now read up to.
    pub rev: i64,
    /// `rows` is the whole open (live) set, not what changed: the reader replaces what it held.
    pub full: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunnerRecord {
    pub name: String,
    pub pool: String,
    pub scope: String,
    pub state: RunnerState,
    pub github_id: Option<u64>,
    pub sandbox_id: String,
    pub job_id: Option<u64>,
    pub created_at: Timestamp,
    pub state_since: Timestamp,
    pub started_at: Option<Timestamp>,
    pub stopped_at: Option<Timestamp>,
    pub exit_code: Option<i32>,
    pub stop_reason: Option<String>,
    /// The backend its sandbox lives in (the sandbox row's `backend`).
    pub backend: BackendKind,
    /// The fingerprint of its pool's sandbox settings when it was made ('' if unknown).
    pub config: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EventRecord {
    pub seq: i64,
    pub at: Timestamp,
    pub entity: String,
    pub id: String,
    pub from_state: Option<String>,
    pub to_state: String,
    pub detail: Option<String>,
}

/// What became of a webhook delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Ingest {
    /// Seen before (same `X-GitHub-Delivery`): nothing changed.
    Duplicate,
    /// Stored; `changed` tells whether any job or runner moved.
    Stored { changed: bool },
}

pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.map(|x| x as u64)
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found: version,
                supported,
            });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back on drop), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a webhook delivery and applies the job it carries, in one transaction: either both
    /// are stored or neither, so a crash between them cannot lose or double an event.
    pub fn ingest_delivery(
        &self,
        guid: &str,
        event: &str,
        action: Option<&str>,
        job: Option<&JobObservation>,
        now: Timestamp,
    ) -> Result<Ingest, StoreError> {
        let mut conn = self.conn();
        let tx = conn.savepoint()?;
        let inserted = tx.exec(
            "INSERT OR IGNORE INTO deliveries (guid, event, action, received_at) VALUES (?1, ?2, ?3, ?4)",
            params![guid, event, action, now],
        )?;
        if inserted == 0 {
            return Ok(Ingest::Duplicate);
        }
        let changed = match job {
            Some(j) => apply_job(&tx, j, now)?,
            None => false,
        };
        tx.commit()?;
        Ok(Ingest::Stored { changed })
    }

    /// Applies jobs seen by polling. Returns how many jobs or runners changed.
    pub fn observe_jobs(
        &self,
        jobs: &[JobObservation],
        now: Timestamp,
    ) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.savepoint()?;
        let mut n = 0;
        for j in jobs {
            if apply_job(&tx, j, now)? {
                n += 1;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    pub fn open_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.jobs_where(sql::OPEN_JOBS)
    }

    /// What a reader that last read up to revision `since` has missed: every job written after
    /// it, whatever its status (a completed one leaves the reader's open set), or, with no
    /// `since`, every open job. With the revision this brings the reader to.
    pub fn jobs_since(&self, since: Option<i64>) -> Result<Changed<JobRecord>, StoreError> {
        // The revision first: a write after this read is read again next time, never missed.
        let rev = self.rev("jobs")?;
        let rows = match since {
            None => self.open_jobs()?,
            Some(r) => self.jobs_where_rev(r)?,
        };
        Ok(Changed {
            rows,
            rev,
            full: since.is_none(),
        })
    }

    /// `jobs_since` for runners: every runner written after `since` (a gone one leaves the live
    /// set), or every live runner.
    pub fn runners_since(&self, since: Option<i64>) -> Result<Changed<RunnerRecord>, StoreError> {
        let rev = self.rev("runners")?;
        let rows = match since {
            None => self.live_runners()?,
            Some(r) => {
                let conn = self.conn();
                let mut st =
                    conn.prepare_cached(&format!("{RUNNER_COLS} WHERE {}", sql::RUNNERS_SINCE))?;
                let rows = st
                    .query_map([r], runner_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                drop(st);
                drop(conn);
                rows.into_iter()
                    .map(|(r, s)| finish_runner(r, s))
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(Changed {
            rows,
            rev,
            full: since.is_none(),
        })
    }

    fn rev(&self, table: &str) -> Result<i64, StoreError> {
        Ok(self
            .conn()
            .row("SELECT v FROM revs WHERE tbl = ?1", [table], |r| r.get(0))?)
    }

    pub fn all_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.jobs_where("1")
    }

    pub fn job(&self, id: u64) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.jobs_where(&format!("id = {}", id as i64))?.pop())
    }

    fn jobs_where(&self, cond: &str) -> Result<Vec<JobRecord>, StoreError> {
        self.jobs_query(&format!("{cond} ORDER BY id"), [])
    }

    fn jobs_where_rev(&self, since: i64) -> Result<Vec<JobRecord>, StoreError> {
        self.jobs_query(sql::JOBS_SINCE, [since])
    }

    fn jobs_query<P: rusqlite::Params>(
        &self,
        cond: &str,
        params: P,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT id, run_id, repo, enterprise, name, labels, status, conclusion, runner_name,
                    created_at, started_at, completed_at, first_seen_at FROM jobs WHERE {cond}"
        ))?;
        let rows = st.query_map(params, |r| {
            Ok((
                JobRecord {
                    id: r.get::<_, i64>(0)? as u64,
                    run_id: r.get::<_, i64>(1)? as u64,
                    repo: r.get(2)?,
                    enterprise: r.get(3)?,
                    name: r.get(4)?,
                    labels: Labels::default(),
                    status: JobStatus::Queued,
                    conclusion: r.get(7)?,
                    runner_name: r.get(8)?,
                    created_at: r.get(9)?,
                    started_at: r.get(10)?,
                    completed_at: r.get(11)?,
                    first_seen_at: r.get(12)?,
                },
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (mut job, labels, status) = row?;
            let labels: Vec<String> =
                serde_json::from_str(&labels).map_err(|e| StoreError::Corrupt {
                    table: "jobs",
                    detail: format!("labels of job {}: {e}", job.id),
                })?;
            job.labels = Labels::new(labels);
            job.status = JobStatus::parse(&status).ok_or_else(|| StoreError::Corrupt {
                table: "jobs",
                detail: format!("status {status:?}"),
            })?;
            out.push(job);
        }
        Ok(out)
    }

    /// Stores a new runner in `creating` with its sandbox, before anything exists outside: if
    /// airlock dies right after, the runner is found and torn down instead of leaked.
    pub fn insert_runner(
        &self,
        name: &str,
        pool: &str,
        scope: &str,
        sandbox_id: &str,
        backend: BackendKind,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.savepoint()?;
        tx.exec(
            "INSERT INTO runners (name, pool, scope, state, sandbox_id, created_at, state_since)
             VALUES (?1, ?2, ?3, 'creating', ?4, ?5, ?5)",
            params![name, pool, scope, sandbox_id, now],
        )?;
        tx.exec(
            "INSERT INTO sandboxes (id, runner_name, backend, state, created_at, state_since)
             VALUES (?1, ?2, ?3, 'creating', ?4, ?4)",
            params![sandbox_id, name, backend.as_str(), now],
        )?;
        event(&tx, now, "runner", name, None, "creating", Some(pool))?;
        event(
            &tx,
            now,
            "sandbox",
            sandbox_id,
            None,
            "creating",
            Some(backend.as_str()),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Moves a runner by compare-and-set. `Unchanged` when it is already there.
    pub fn runner_transition(
        &self,
        name: &str,
        to: RunnerState,
        now: Timestamp,
        detail: Option<&str>,
    ) -> Result<Step, StoreError> {
        let mut conn = self.conn();
        let tx = conn.savepoint()?;
        let step = runner_move(&tx, name, to, now, detail)?;
        if to == RunnerState::Stopping {
            if let Some(d) = detail {
                tx.exec(
                    "UPDATE runners SET stop_reason = ?2 WHERE name = ?1 AND stop_reason IS NULL",
                    params![name, d],
                )?;
            }
        }
        tx.commit()?;
        Ok(step)
    }

    /// Records the fingerprint of the pool settings a runner is made with.
    pub fn set_runner_config(&self, name: &str, config: &str) -> Result<(), StoreError> {
        self.conn().exec(
            "UPDATE runners SET config = ?2 WHERE name = ?1",
            params![name, config],
        )?;
        Ok(())
    }

    pub fn set_runner_registration(&self, name: &str, github_id: u64) -> Result<(), StoreError> {
        self.conn().exec(
            "UPDATE runners SET github_id = ?2 WHERE name = ?1",
            params![name, github_id as i64],
        )?;
        Ok(())
    }

    /// Records how a runner's process ended. `took_unknown_job`: it exited cleanly without airlock
    /// having seen it take a job, so it probably ran one whose webhook has not arrived yet.
    pub fn set_runner_exit(
        &self,
        name: &str,
        code: Option<i32>,
        took_unknown_job: bool,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.conn().exec(
            "UPDATE runners SET exit_code = ?2, took_unknown_job = ?3, stopped_at = COALESCE(stopped_at, ?4) WHERE name = ?1",
            params![name, code, took_unknown_job as i64, now],
        )?;
        Ok(())
    }

    pub fn sandbox_transition(
        &self,
        id: &str,
        to: SandboxState,
        exit_code: Option<i32>,
        now: Timestamp,
    ) -> Result<Step, StoreError> {
        let mut conn = self.conn();
        let tx = conn.savepoint()?;
        let step = sandbox_move(&tx, id, to, exit_code, now)?;
        tx.commit()?;
        Ok(step)
    }

    /// A create's end, in one transaction: its sandbox runs, the runner is starting (since
    /// `now`, which is also its `started_at`). A runner already seen online or on a job (its
    /// `in_progress` webhook, or a poll, came before its create finished) stays where it is.
    pub fn runner_started(
        &self,
        name: &str,
        sandbox_id: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.savepoint()?;
        sandbox_move(&tx, sandbox_id, SandboxState::Running, None, now)?;
        let state: Option<String> = tx
            .row("SELECT state FROM runners WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        let ahead = state
            .as_deref()
            .and_then(RunnerState::parse)
            .is_some_and(|s| matches!(s, RunnerState::Idle | RunnerState::Busy));
        if !ahead {
            runner_move(&tx, name, RunnerState::Starting, now, None)?;
        }
        tx.exec(
            "UPDATE runners SET started_at = ?2 WHERE name = ?1",
            params![name, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// SQLite's `PRAGMA integrity_check`: `ok`, or the problems it found, one per line.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("PRAGMA integrity_check")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?);
        }
        Ok(out.join("\n"))
    }

    pub fn live_runners(&self) -> Result<Vec<RunnerRecord>, StoreError> {
        self.runners_where(sql::LIVE_RUNNERS)
    }

    pub fn all_runners(&self) -> Result<Vec<RunnerRecord>, StoreError> {
        self.runners_where("1")
    }

    pub fn runner(&self, name: &str) -> Result<Option<RunnerRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!("{RUNNER_COLS} WHERE r.name = ?1"))?;
        let r = st.query_row([name], runner_row).optional()?;
        drop(st);
        drop(conn);
        r.map(|(r, s)| finish_runner(r, s)).transpose()
    }

    fn runners_where(&self, cond: &str) -> Result<Vec<RunnerRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "{RUNNER_COLS} WHERE {cond} ORDER BY r.created_at, r.name"
        ))?;
        let rows = st
            .query_map([], runner_row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(|(r, s)| finish_runner(r, s)).collect()
    }

    /// Per pool, runners that exited after taking a job airlock has not heard of, stopped after
    /// `since` (the start of the last complete poll: one that began later would have seen the job).
    pub fn unaccounted_exits(&self, since: Timestamp) -> Result<HashMap<String, u32>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(sql::UNACCOUNTED)?;
        let rows = st.query_map([since], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u32))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Registration ids of runners that became gone at or after `since`.
    pub fn gone_since(&self, since: Timestamp) -> Result<Vec<u64>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(sql::GONE_SINCE)?;
        let rows = st.query_map([since], |r| r.get::<_, i64>(0))?;
        Ok(rows
            .map(|r| r.map(|x| x as u64))
            .collect::<Result<_, _>>()?)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn().exec(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn events(&self, entity_id: Option<&str>) -> Result<Vec<EventRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT seq, at, entity, id, from_state, to_state, detail FROM events
             WHERE ?1 IS NULL OR id = ?1 ORDER BY seq",
        )?;
        let rows = st.query_map([entity_id], |r| {
            Ok(EventRecord {
                seq: r.get(0)?,
                at: r.get(1)?,
                entity: r.get(2)?,
                id: r.get(3)?,
                from_state: r.get(4)?,
                to_state: r.get(5)?,
                detail: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deliveries older than GitHub's redelivery window are no longer needed for deduplication.
    pub fn prune_deliveries(&self, before: Timestamp) -> Result<usize, StoreError> {
        Ok(self.conn().exec(sql::PRUNE_DELIVERIES, [before])?)
    }

    /// Deletes history older than `before`: completed jobs, gone runners, destroyed sandboxes,
    /// egress reports and events, in one transaction. Open jobs and live runners are never touched, whatever their
    /// age. Returns how many rows went.
    pub fn prune_history(&self, before: Timestamp) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.savepoint()?;
        let mut n = 0;
        for q in [
            sql::PRUNE_JOBS,
            sql::PRUNE_RUNNERS,
            sql::PRUNE_SANDBOXES,
            sql::PRUNE_EVENTS,
            sql::PRUNE_EGRESS,
        ] {
            n += tx.exec(q, [before])?;
        }
        tx.commit()?;
        Ok(n)
    }

    pub fn delivery_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn()
            .row("SELECT COUNT(*) FROM deliveries", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }
}

#[cfg(test)]
mod tests;
