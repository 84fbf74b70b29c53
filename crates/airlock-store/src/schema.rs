//! The schema, as forward-only migrations: `PRAGMA user_version` counts those applied, and a
//! database newer than this build is refused (`StoreError::TooNew`). Never edit a migration that
//! has shipped; add one.

pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL,
        repo TEXT NOT NULL,
        enterprise TEXT,
        name TEXT NOT NULL,
        labels TEXT NOT NULL,
        status TEXT NOT NULL,
        conclusion TEXT,
        runner_name TEXT,
        created_at INTEGER,
        started_at INTEGER,
        completed_at INTEGER,
        first_seen_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX jobs_open ON jobs(status) WHERE status != 'completed';
    CREATE TABLE runners (
        name TEXT PRIMARY KEY,
        pool TEXT NOT NULL,
        scope TEXT NOT NULL,
        state TEXT NOT NULL,
        github_id INTEGER,
        sandbox_id TEXT NOT NULL,
        job_id INTEGER,
        created_at INTEGER NOT NULL,
        state_since INTEGER NOT NULL,
        started_at INTEGER,
        stopped_at INTEGER,
        exit_code INTEGER,
        stop_reason TEXT,
        took_unknown_job INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX runners_live ON runners(state) WHERE state != 'gone';
    CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,
        runner_name TEXT NOT NULL,
        backend TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        state_since INTEGER NOT NULL,
        exit_code INTEGER
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        entity TEXT NOT NULL,
        id TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        detail TEXT
    );
    CREATE TABLE deliveries (
        guid TEXT PRIMARY KEY,
        event TEXT NOT NULL,
        action TEXT,
        received_at INTEGER NOT NULL
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    "#,
    // 2: every statement a pass or a poll runs finds its rows through an index, so neither
    // grows with history (see `sql` and the test `every_pass_and_poll_statement_uses_an_index`).
    r#"
    CREATE INDEX runners_unaccounted ON runners(stopped_at)
        WHERE took_unknown_job = 1 AND job_id IS NULL;
    CREATE INDEX runners_gone ON runners(state_since) WHERE state = 'gone';
    CREATE INDEX jobs_done ON jobs(updated_at) WHERE status = 'completed';
    CREATE INDEX sandboxes_destroyed ON sandboxes(state_since) WHERE state = 'destroyed';
    CREATE INDEX events_at ON events(at);
    CREATE INDEX deliveries_received ON deliveries(received_at);
    "#,
    // 3: a revision per job and runner row, from a counter per table that every insert and
    // update moves (triggers, so that no write path can forget it): a pass reads only the rows
    // written since its last one (`Store::jobs_since`, `Store::runners_since`). Rows written
    // before this migration have revision 0 and are read by the first, full read.
    r#"
    ALTER TABLE jobs ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runners ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_rev ON jobs(rev);
    CREATE INDEX runners_rev ON runners(rev);
    CREATE TABLE revs (tbl TEXT PRIMARY KEY, v INTEGER NOT NULL);
    INSERT INTO revs (tbl, v) VALUES ('jobs', 0), ('runners', 0);
    CREATE TRIGGER jobs_rev_insert AFTER INSERT ON jobs BEGIN
        UPDATE revs SET v = v + 1 WHERE tbl = 'jobs';
        UPDATE jobs SET rev = (SELECT v FROM revs WHERE tbl = 'jobs') WHERE id = NEW.id;
    END;
    CREATE TRIGGER jobs_rev_update AFTER UPDATE ON jobs WHEN NEW.rev = OLD.rev BEGIN
        UPDATE revs SET v = v + 1 WHERE tbl = 'jobs';
        UPDATE jobs SET rev = (SELECT v FROM revs WHERE tbl = 'jobs') WHERE id = NEW.id;
    END;
    CREATE TRIGGER runners_rev_insert AFTER INSERT ON runners BEGIN
        UPDATE revs SET v = v + 1 WHERE tbl = 'runners';
        UPDATE runners SET rev = (SELECT v FROM revs WHERE tbl = 'runners') WHERE name = NEW.name;
    END;
    CREATE TRIGGER runners_rev_update AFTER UPDATE ON runners WHEN NEW.rev = OLD.rev BEGIN
        UPDATE revs SET v = v + 1 WHERE tbl = 'runners';
        UPDATE runners SET rev = (SELECT v FROM revs WHERE tbl = 'runners') WHERE name = NEW.name;
    END;
    "#,
    // 4: egress reports, one per sandbox, kept with the job's history (`Store::put_egress`).
    r#"
    CREATE TABLE egress (
        sandbox_id TEXT PRIMARY KEY,
        pool TEXT NOT NULL,
        runner_name TEXT,
        job_id INTEGER,
        mode TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        stored_at INTEGER NOT NULL,
        report TEXT NOT NULL
    );
    CREATE INDEX egress_job ON egress(job_id) WHERE job_id IS NOT NULL;
    CREATE INDEX egress_pool ON egress(pool, stored_at);
    CREATE INDEX egress_stored ON egress(stored_at);
    "#,
    // 5: the fingerprint of the pool's sandbox settings a runner was made with
    // (`Store::set_runner_config`): a reload or restart that changes them replaces its idle
    // runners. Rows from before have '' (taken as current).
    r#"
    ALTER TABLE runners ADD COLUMN config TEXT NOT NULL DEFAULT '';
    "#,
];
