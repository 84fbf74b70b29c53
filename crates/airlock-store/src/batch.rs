//! Group commit and the statement cache: how the store's calls reach SQLite cheaply.

use rusqlite::{Connection, Row};

use crate::{Store, StoreError};

/// One call of a `Store::batch`.
pub type BatchCall<'a, T> = Box<dyn FnOnce(&Store) -> T + 'a>;

/// Statements through the connection's cache: the store's few dozen statements are parsed and
/// planned once per connection, not at every call (parsing was a third of a hot call's time).
pub(crate) trait Cached {
    fn exec<P: rusqlite::Params>(&self, sql: &str, p: P) -> rusqlite::Result<usize>;
    fn row<T, P: rusqlite::Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        p: P,
        f: F,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: rusqlite::Params>(&self, sql: &str, p: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(p)
    }

    fn row<T, P: rusqlite::Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        p: P,
        f: F,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(p, f)
    }
}

impl Store {
    /// Group commit: runs `calls` one after another in one transaction, each call's own
    /// transaction a savepoint inside it (a failing call is rolled back alone), and commits once.
    /// Returns each call's output with whether its writes were kept: `Err` for every call when
    /// the commit failed. Should SQLite abandon the transaction midway (a full disk, an I/O
    /// error), the calls until then are reported failed and the rest run on their own.
    pub fn batch<T>(&self, calls: Vec<BatchCall<'_, T>>) -> Vec<(T, Result<(), StoreError>)> {
        let mut out = Vec::with_capacity(calls.len());
        if self.conn().execute_batch("BEGIN IMMEDIATE").is_err() {
            // No batch (the database is busy elsewhere): each call commits alone.
            return calls.into_iter().map(|c| (c(self), Ok(()))).collect();
        }
        let mut pending = Vec::new();
        let mut calls = calls.into_iter();
        for c in calls.by_ref() {
            pending.push(c(self));
            if self.conn().is_autocommit() {
                // SQLite rolled the whole transaction back: nothing so far was kept.
                let why = "SQLite abandoned the batch's transaction".to_string();
                out.extend(
                    pending
                        .drain(..)
                        .map(|t| (t, Err(StoreError::Commit(why.clone())))),
                );
                break;
            }
        }
        if !pending.is_empty() {
            match self.conn().execute_batch("COMMIT") {
                Ok(()) => out.extend(pending.drain(..).map(|t| (t, Ok(())))),
                Err(e) => {
                    let _ = self.conn().execute_batch("ROLLBACK");
                    let why = e.to_string();
                    out.extend(
                        pending
                            .drain(..)
                            .map(|t| (t, Err(StoreError::Commit(why.clone())))),
                    );
                }
            }
        } else if !self.conn().is_autocommit() {
            let _ = self.conn().execute_batch("COMMIT");
        }
        out.extend(calls.map(|c| (c(self), Ok(()))));
        out
    }
}
