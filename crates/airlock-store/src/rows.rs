//! Rows and moves: how a runner row is read, and the checked compare-and-set moves (runner,
//! sandbox, job) every transaction of the store is made of, each with its event.

use super::*;

/// A runner's sandbox row is inserted with it and outlives it (see `prune_history`), so the join
/// always finds one.
pub(super) const RUNNER_COLS: &str =
    "SELECT r.name, r.pool, r.scope, r.state, r.github_id, r.sandbox_id, r.job_id, r.created_at,
    r.state_since, r.started_at, r.stopped_at, r.exit_code, r.stop_reason, s.backend, r.config
    FROM runners r LEFT JOIN sandboxes s ON s.id = r.sandbox_id";

pub(super) fn runner_row(
    r: &Row<'_>,
) -> rusqlite::Result<(RunnerRecord, (String, Option<String>))> {
    Ok((
        RunnerRecord {
            name: r.get(0)?,
            pool: r.get(1)?,
            scope: r.get(2)?,
            state: RunnerState::Gone,
            github_id: opt_u64(r.get(4)?),
            sandbox_id: r.get(5)?,
            job_id: opt_u64(r.get(6)?),
            created_at: r.get(7)?,
            state_since: r.get(8)?,
            started_at: r.get(9)?,
            stopped_at: r.get(10)?,
            exit_code: r.get(11)?,
            stop_reason: r.get(12)?,
            backend: BackendKind::Process,
            config: r.get(14)?,
        },
        (r.get(3)?, r.get(13)?),
    ))
}

pub(super) fn finish_runner(
    mut r: RunnerRecord,
    (state, backend): (String, Option<String>),
) -> Result<RunnerRecord, StoreError> {
    r.state = RunnerState::parse(&state).ok_or_else(|| StoreError::Corrupt {
        table: "runners",
        detail: format!("state {state:?} of {}", r.name),
    })?;
    r.backend = backend
        .as_deref()
        .and_then(BackendKind::parse)
        .ok_or_else(|| StoreError::Corrupt {
            table: "sandboxes",
            detail: format!("backend {backend:?} of runner {}'s sandbox", r.name),
        })?;
    Ok(r)
}

pub(super) fn event(
    tx: &Connection,
    at: Timestamp,
    entity: &str,
    id: &str,
    from: Option<&str>,
    to: &str,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO events (at, entity, id, from_state, to_state, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![at, entity, id, from, to, detail],
    )?;
    Ok(())
}

/// Moves sandbox `id` to `to` within `tx` (checked against its lifecycle), with an event.
pub(super) fn sandbox_move(
    tx: &Connection,
    id: &str,
    to: SandboxState,
    exit_code: Option<i32>,
    now: Timestamp,
) -> Result<Step, StoreError> {
    let from: Option<String> = tx
        .row("SELECT state FROM sandboxes WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    let from = from.ok_or_else(|| StoreError::Missing {
        entity: "sandbox",
        id: id.into(),
    })?;
    let cur = SandboxState::parse(&from).ok_or_else(|| StoreError::Corrupt {
        table: "sandboxes",
        detail: format!("state {from:?}"),
    })?;
    let step = cur.check(to)?;
    if step == Step::Apply {
        let n = tx.exec(
            "UPDATE sandboxes SET state = ?2, state_since = ?3, exit_code = COALESCE(?4, exit_code)
             WHERE id = ?1 AND state = ?5",
            params![id, to.as_str(), now, exit_code, from],
        )?;
        if n != 1 {
            return Err(StoreError::Conflict {
                entity: "sandbox",
                id: id.into(),
                expected: from,
            });
        }
        event(
            tx,
            now,
            "sandbox",
            id,
            Some(&from),
            to.as_str(),
            exit_code.map(|c| format!("exit {c}")).as_deref(),
        )?;
    }
    Ok(step)
}

pub(super) fn runner_move(
    tx: &Connection,
    name: &str,
    to: RunnerState,
    now: Timestamp,
    detail: Option<&str>,
) -> Result<Step, StoreError> {
    let from: Option<String> = tx
        .row("SELECT state FROM runners WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?;
    let from = from.ok_or_else(|| StoreError::Missing {
        entity: "runner",
        id: name.into(),
    })?;
    let cur = RunnerState::parse(&from).ok_or_else(|| StoreError::Corrupt {
        table: "runners",
        detail: format!("state {from:?}"),
    })?;
    let step = cur.check(to)?;
    if step == Step::Apply {
        let n = tx.exec(
            "UPDATE runners SET state = ?2, state_since = ?3 WHERE name = ?1 AND state = ?4",
            params![name, to.as_str(), now, from],
        )?;
        if n != 1 {
            return Err(StoreError::Conflict {
                entity: "runner",
                id: name.into(),
                expected: from,
            });
        }
        event(tx, now, "runner", name, Some(&from), to.as_str(), detail)?;
    }
    Ok(step)
}

/// Applies one observation of a job: insert, move forward, or ignore as stale. When it names one
/// of our runners, that runner is marked as having taken this job (and busy, if it was not yet).
pub(super) fn apply_job(
    tx: &Connection,
    j: &JobObservation,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let cur: Option<String> = tx
        .row(
            "SELECT status FROM jobs WHERE id = ?1",
            [j.id as i64],
            |r| r.get(0),
        )
        .optional()?;
    let labels = serde_json::to_string(&j.labels.to_vec()).expect("a list of strings serialises");
    let mut changed = false;
    match cur {
        None => {
            tx.exec(
                "INSERT INTO jobs (id, run_id, repo, enterprise, name, labels, status, conclusion, runner_name,
                                   created_at, started_at, completed_at, first_seen_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13)",
                params![
                    j.id as i64,
                    j.run_id as i64,
                    j.repo,
                    j.enterprise,
                    j.name,
                    labels,
                    j.status.as_str(),
                    j.conclusion,
                    j.runner_name,
                    j.created_at,
                    j.started_at,
                    j.completed_at,
                    now
                ],
            )?;
            event(
                tx,
                now,
                "job",
                &j.id.to_string(),
                None,
                j.status.as_str(),
                Some(&j.repo),
            )?;
            changed = true;
        }
        Some(from) => {
            let cur = JobStatus::parse(&from).ok_or_else(|| StoreError::Corrupt {
                table: "jobs",
                detail: format!("status {from:?}"),
            })?;
            match cur.advance(j.status) {
                Step::Apply => {
                    tx.exec(
                        "UPDATE jobs SET status = ?2, conclusion = COALESCE(?3, conclusion),
                            runner_name = COALESCE(?4, runner_name), started_at = COALESCE(?5, started_at),
                            completed_at = COALESCE(?6, completed_at), updated_at = ?7 WHERE id = ?1",
                        params![j.id as i64, j.status.as_str(), j.conclusion, j.runner_name, j.started_at, j.completed_at, now],
                    )?;
                    event(
                        tx,
                        now,
                        "job",
                        &j.id.to_string(),
                        Some(&from),
                        j.status.as_str(),
                        j.runner_name.as_deref(),
                    )?;
                    changed = true;
                }
                Step::Unchanged | Step::Stale => {
                    // A stale status can still carry facts we lacked (e.g. the runner's name).
                    tx.exec(
                        "UPDATE jobs SET runner_name = COALESCE(runner_name, ?2), started_at = COALESCE(started_at, ?3)
                         WHERE id = ?1",
                        params![j.id as i64, j.runner_name, j.started_at],
                    )?;
                }
            }
        }
    }
    if let (Some(runner), JobStatus::InProgress | JobStatus::Completed) = (&j.runner_name, j.status)
    {
        let row: Option<(String, Option<i64>)> = tx
            .row(
                "SELECT state, job_id FROM runners WHERE name = ?1",
                [runner],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((state, job_id)) = row {
            if job_id.is_none() {
                tx.exec(
                    "UPDATE runners SET job_id = ?2 WHERE name = ?1",
                    params![runner, j.id as i64],
                )?;
                changed = true;
            }
            if matches!(state.as_str(), "creating" | "starting" | "idle") {
                runner_move(
                    tx,
                    runner,
                    RunnerState::Busy,
                    now,
                    Some(&format!("job {}", j.id)),
                )?;
                changed = true;
            }
        }
    }
    Ok(changed)
}
