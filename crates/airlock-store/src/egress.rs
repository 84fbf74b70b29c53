//! Egress reports: one row per sandbox, written when its egress session ends (the daemon moves
//! the resolver's finished reports here), tied to its runner and job, and pruned with the rest
//! of the history.

use airlock_core::egress::report::Report;
use airlock_core::egress::EgressMode;
use airlock_core::Timestamp;
use rusqlite::{params, Row};

use crate::batch::Cached as _;
use crate::{Store, StoreError};

/// One sandbox's report as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EgressRecord {
    pub sandbox_id: String,
    pub pool: String,
    /// The runner and job of the sandbox, as the store knew them when the report was stored.
    pub runner_name: Option<String>,
    pub job_id: Option<u64>,
    #[serde(serialize_with = "mode_str")]
    pub mode: EgressMode,
    pub started_at: Timestamp,
    pub stored_at: Timestamp,
    pub report: Report,
}

fn mode_str<S: serde::Serializer>(m: &EgressMode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.as_str())
}

const COLS: &str =
    "SELECT sandbox_id, pool, runner_name, job_id, mode, started_at, stored_at, report FROM egress";

fn record(r: &Row<'_>) -> rusqlite::Result<Result<EgressRecord, StoreError>> {
    let id: String = r.get(0)?;
    let mode: String = r.get(4)?;
    let report: String = r.get(7)?;
    let corrupt = |detail: String| StoreError::Corrupt {
        table: "egress",
        detail: format!("sandbox {id}: {detail}"),
    };
    let Some(mode) = EgressMode::parse(&mode) else {
        return Ok(Err(corrupt(format!("unknown mode {mode:?}"))));
    };
    let report: Report = match serde_json::from_str(&report) {
        Ok(r) => r,
        Err(e) => return Ok(Err(corrupt(format!("report: {e}")))),
    };
    Ok(Ok(EgressRecord {
        pool: r.get(1)?,
        runner_name: r.get(2)?,
        job_id: r.get::<_, Option<i64>>(3)?.map(|j| j as u64),
        mode,
        started_at: r.get(5)?,
        stored_at: r.get(6)?,
        report,
        sandbox_id: id,
    }))
}

impl Store {
    /// Stores (or replaces) a sandbox's report; its runner and job are looked up by sandbox id.
    pub fn put_egress(
        &self,
        sandbox_id: &str,
        pool: &str,
        mode: EgressMode,
        started_at: Timestamp,
        report: &Report,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_string(report).map_err(|e| StoreError::Corrupt {
            table: "egress",
            detail: e.to_string(),
        })?;
        self.conn().exec(
            "INSERT INTO egress (sandbox_id, pool, runner_name, job_id, mode, started_at, stored_at, report)
             VALUES (?1, ?2,
                     (SELECT name FROM runners WHERE sandbox_id = ?1),
                     (SELECT job_id FROM runners WHERE sandbox_id = ?1),
                     ?3, ?4, ?5, ?6)
             ON CONFLICT(sandbox_id) DO UPDATE SET report = excluded.report,
                 stored_at = excluded.stored_at,
                 runner_name = COALESCE(excluded.runner_name, egress.runner_name),
                 job_id = COALESCE(excluded.job_id, egress.job_id)",
            params![sandbox_id, pool, mode.as_str(), started_at, now, body],
        )?;
        Ok(())
    }

    /// The reports of the sandboxes that ran job `job_id` (one, unless the job was retried on
    /// another runner).
    pub fn egress_for_job(&self, job_id: u64) -> Result<Vec<EgressRecord>, StoreError> {
        self.egress_query(
            &format!("{COLS} WHERE job_id = ?1 ORDER BY started_at"),
            params![job_id as i64],
        )
    }

    /// A pool's reports stored at or after `since`, oldest first.
    pub fn egress_for_pool(
        &self,
        pool: &str,
        since: Timestamp,
    ) -> Result<Vec<EgressRecord>, StoreError> {
        self.egress_query(
            &format!("{COLS} WHERE pool = ?1 AND stored_at >= ?2 ORDER BY stored_at"),
            params![pool, since],
        )
    }

    /// One sandbox's report.
    pub fn egress_for_sandbox(&self, id: &str) -> Result<Option<EgressRecord>, StoreError> {
        Ok(self
            .egress_query(&format!("{COLS} WHERE sandbox_id = ?1"), params![id])?
            .pop())
    }

    fn egress_query(
        &self,
        q: &str,
        p: impl rusqlite::Params,
    ) -> Result<Vec<EgressRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(q)?;
        let rows = st.query_map(p, record)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r??);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::egress::report::{Destination, Protocol, Verdict};

    fn report(name: &str) -> Report {
        Report {
            destinations: vec![Destination {
                name: Some(name.into()),
                addr: None,
                port: 53,
                protocol: Protocol::Dns,
                verdict: Verdict::Audit,
                reason: None,
                answers: vec!["198.18.0.1".parse().unwrap()],
                bytes_out: 0,
                bytes_in: 0,
                count: 2,
                first_ms: 1,
                last_ms: 2,
            }],
        }
    }

    #[test]
    fn a_report_is_stored_with_its_job_and_pruned_with_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("a.db")).unwrap();
        s.put_egress(
            "sb-1",
            "small",
            EgressMode::Audit,
            10,
            &report("a.example"),
            100,
        )
        .unwrap();
        let got = s.egress_for_sandbox("sb-1").unwrap().unwrap();
        assert_eq!(got.report, report("a.example"));
        assert_eq!((got.job_id, got.runner_name.as_deref()), (None, None));
        assert_eq!(got.mode, EgressMode::Audit);
        // Stored again (a retried collection): replaced, not doubled.
        s.put_egress(
            "sb-1",
            "small",
            EgressMode::Audit,
            10,
            &report("b.example"),
            200,
        )
        .unwrap();
        let all = s.egress_for_pool("small", 0).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].report, report("b.example"));
        assert!(s.egress_for_pool("small", 201).unwrap().is_empty());
        assert!(s.egress_for_pool("other", 0).unwrap().is_empty());
        s.prune_history(150).unwrap();
        assert_eq!(s.egress_for_pool("small", 0).unwrap().len(), 1);
        s.prune_history(300).unwrap();
        assert!(s.egress_for_sandbox("sb-1").unwrap().is_none());
    }

    #[test]
    fn a_corrupt_row_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("a.db")).unwrap();
        s.put_egress(
            "sb-2",
            "small",
            EgressMode::Block,
            10,
            &report("a.example"),
            100,
        )
        .unwrap();
        s.conn()
            .execute(
                "UPDATE egress SET report = '{' WHERE sandbox_id = 'sb-2'",
                [],
            )
            .unwrap();
        let e = s.egress_for_sandbox("sb-2").unwrap_err().to_string();
        assert!(e.contains("egress") && e.contains("sb-2"), "{e}");
    }
}
