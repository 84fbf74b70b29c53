use super::*;

fn obs(id: u64, status: JobStatus, runner: Option<&str>) -> JobObservation {
    JobObservation {
        id,
        run_id: 7,
        repo: "octo/hello".into(),
        enterprise: None,
        name: format!("job {id}"),
        labels: Labels::new(["self-hosted", "linux"]),
        status,
        conclusion: (status == JobStatus::Completed).then(|| "success".to_string()),
        runner_name: runner.map(str::to_string),
        created_at: Some(1),
        started_at: None,
        completed_at: None,
    }
}

fn open() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(&d.path().join("airlock.db")).unwrap();
    (d, s)
}

#[test]
fn deliveries_are_deduplicated_and_out_of_order_is_harmless() {
    let (_d, s) = open();
    let q = obs(1, JobStatus::Queued, None);
    assert_eq!(
        s.ingest_delivery("g1", "workflow_job", Some("queued"), Some(&q), 10)
            .unwrap(),
        Ingest::Stored { changed: true }
    );
    assert_eq!(
        s.ingest_delivery("g1", "workflow_job", Some("queued"), Some(&q), 11)
            .unwrap(),
        Ingest::Duplicate
    );
    // completed arrives before in_progress
    let c = obs(1, JobStatus::Completed, Some("airlock-x-1"));
    s.ingest_delivery("g3", "workflow_job", Some("completed"), Some(&c), 12)
        .unwrap();
    let p = obs(1, JobStatus::InProgress, Some("airlock-x-1"));
    assert_eq!(
        s.ingest_delivery("g2", "workflow_job", Some("in_progress"), Some(&p), 13)
            .unwrap(),
        Ingest::Stored { changed: false }
    );
    let j = s.job(1).unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Completed);
    assert_eq!(j.conclusion.as_deref(), Some("success"));
    assert_eq!(j.runner_name.as_deref(), Some("airlock-x-1"));
    assert!(s.open_jobs().unwrap().is_empty());
    let moves: Vec<String> = s
        .events(Some("1"))
        .unwrap()
        .into_iter()
        .map(|e| e.to_state)
        .collect();
    assert_eq!(moves, ["queued", "completed"]);
}

#[test]
fn runner_moves_are_checked_and_compare_and_set() {
    let (_d, s) = open();
    s.insert_runner(
        "airlock-small-a",
        "small",
        "repo:octo/hello",
        "sb-a",
        BackendKind::Container,
        1,
    )
    .unwrap();
    assert_eq!(
        s.runner_transition("airlock-small-a", RunnerState::Starting, 2, None)
            .unwrap(),
        Step::Apply
    );
    assert_eq!(
        s.runner_transition("airlock-small-a", RunnerState::Starting, 3, None)
            .unwrap(),
        Step::Unchanged
    );
    let err = s
        .runner_transition("airlock-small-a", RunnerState::Gone, 4, None)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "illegal runner transition from starting to gone"
    );
    // A job naming the runner makes it busy and binds the job to it.
    s.observe_jobs(&[obs(5, JobStatus::InProgress, Some("airlock-small-a"))], 5)
        .unwrap();
    let r = s.runner("airlock-small-a").unwrap().unwrap();
    assert_eq!((r.state, r.job_id), (RunnerState::Busy, Some(5)));
    assert_eq!(
        r.backend,
        BackendKind::Container,
        "read from its sandbox row"
    );
    assert!(s
        .runner_transition("airlock-small-a", RunnerState::Idle, 6, None)
        .is_err());
    s.runner_transition("airlock-small-a", RunnerState::Stopping, 7, Some("exited"))
        .unwrap();
    s.runner_transition("airlock-small-a", RunnerState::Gone, 8, None)
        .unwrap();
    assert!(s.live_runners().unwrap().is_empty());
    assert_eq!(
        s.runner("airlock-small-a")
            .unwrap()
            .unwrap()
            .stop_reason
            .as_deref(),
        Some("exited")
    );
    assert!(matches!(
        s.runner_transition("nope", RunnerState::Idle, 9, None),
        Err(StoreError::Missing { .. })
    ));
    let history: Vec<String> = s
        .events(Some("airlock-small-a"))
        .unwrap()
        .into_iter()
        .map(|e| e.to_state)
        .collect();
    assert_eq!(
        history,
        ["creating", "starting", "busy", "stopping", "gone"]
    );
}

#[test]
fn sandboxes_and_unaccounted_exits() {
    let (_d, s) = open();
    s.insert_runner(
        "airlock-p-a",
        "p",
        "repo:o/r",
        "sb-a",
        BackendKind::Process,
        1,
    )
    .unwrap();
    s.sandbox_transition("sb-a", SandboxState::Running, None, 2)
        .unwrap();
    s.sandbox_transition("sb-a", SandboxState::Exited, Some(0), 3)
        .unwrap();
    assert!(s
        .sandbox_transition("sb-a", SandboxState::Running, None, 4)
        .is_err());
    s.sandbox_transition("sb-a", SandboxState::Destroyed, None, 5)
        .unwrap();
    s.set_runner_exit("airlock-p-a", Some(0), true, 100)
        .unwrap();
    assert_eq!(s.unaccounted_exits(50).unwrap().get("p"), Some(&1));
    assert!(s.unaccounted_exits(100).unwrap().is_empty());
    // Once the webhook names the runner, the exit is accounted for.
    s.observe_jobs(&[obs(9, JobStatus::Completed, Some("airlock-p-a"))], 101)
        .unwrap();
    assert!(s.unaccounted_exits(50).unwrap().is_empty());
}

#[test]
fn everything_survives_reopening() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("airlock.db");
    {
        let s = Store::open(&path).unwrap();
        s.ingest_delivery(
            "g",
            "workflow_job",
            Some("queued"),
            Some(&obs(3, JobStatus::Queued, None)),
            1,
        )
        .unwrap();
        s.insert_runner(
            "airlock-p-b",
            "p",
            "repo:o/r",
            "sb-b",
            BackendKind::Process,
            1,
        )
        .unwrap();
        s.set_meta("k", "v").unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.open_jobs().unwrap().len(), 1);
    assert_eq!(s.live_runners().unwrap()[0].state, RunnerState::Creating);
    assert_eq!(s.meta("k").unwrap().as_deref(), Some("v"));
    assert_eq!(
        s.ingest_delivery("g", "workflow_job", None, None, 2)
            .unwrap(),
        Ingest::Duplicate
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("airlock.db");
    {
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    let err = Store::open(&path).unwrap_err();
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[test]
fn old_history_is_pruned_and_open_work_never_is() {
    let (_d, s) = open();
    // An old finished runner with its sandbox and job, and an old runner that is still live.
    s.insert_runner(
        "airlock-p-old",
        "p",
        "repo:o/r",
        "sb-old",
        BackendKind::Process,
        1,
    )
    .unwrap();
    s.sandbox_transition("sb-old", SandboxState::Destroyed, None, 2)
        .unwrap();
    s.runner_transition("airlock-p-old", RunnerState::Stopping, 3, Some("test"))
        .unwrap();
    s.runner_transition("airlock-p-old", RunnerState::Gone, 3, None)
        .unwrap();
    s.insert_runner(
        "airlock-p-live",
        "p",
        "repo:o/r",
        "sb-live",
        BackendKind::Process,
        1,
    )
    .unwrap();
    // A runner gone recently whose sandbox was destroyed long ago: the sandbox row must stay,
    // since the runner's backend is read from it.
    s.insert_runner(
        "airlock-p-recent",
        "p",
        "repo:o/r",
        "sb-recent",
        BackendKind::Microvm,
        1,
    )
    .unwrap();
    s.sandbox_transition("sb-recent", SandboxState::Destroyed, None, 2)
        .unwrap();
    s.runner_transition("airlock-p-recent", RunnerState::Stopping, 900, Some("test"))
        .unwrap();
    s.runner_transition("airlock-p-recent", RunnerState::Gone, 900, None)
        .unwrap();
    s.observe_jobs(&[obs(1, JobStatus::Completed, None)], 4)
        .unwrap();
    s.observe_jobs(&[obs(2, JobStatus::Queued, None)], 4)
        .unwrap();
    // Something recent.
    s.observe_jobs(&[obs(3, JobStatus::Completed, None)], 1_000)
        .unwrap();
    let events_before = s.events(None).unwrap().len();
    assert!(events_before > 0);
    let n = s.prune_history(500).unwrap();
    assert!(n >= 3, "{n}");
    assert!(s.job(1).unwrap().is_none(), "old completed job pruned");
    assert!(
        s.job(2).unwrap().is_some(),
        "an open job is kept, however old"
    );
    assert!(s.job(3).unwrap().is_some(), "a recent job is kept");
    assert!(
        s.runner("airlock-p-live").unwrap().is_some(),
        "a live runner is kept"
    );
    assert!(
        s.runner("airlock-p-old").unwrap().is_none(),
        "an old gone runner is pruned"
    );
    let recent = s
        .runner("airlock-p-recent")
        .unwrap()
        .expect("recent runner kept");
    assert_eq!(recent.backend, BackendKind::Microvm);
    assert!(s.events(None).unwrap().iter().all(|e| e.at >= 500));
}

/// Every statement a reconcile pass and a poll run finds its rows through an index (or reads
/// only a partial index of live rows): with a long history, a pass costs what is live, not what
/// has been. Checked on SQLite's own query plans, with history in the tables so the planner has
/// statistics to choose from.
#[test]
fn every_pass_and_poll_statement_uses_an_index() {
    let (_d, s) = open();
    for i in 0..200 {
        let mut o = obs(i, JobStatus::Completed, None);
        o.run_id = i;
        s.observe_jobs(&[o], 1000 + i as i64).unwrap();
    }
    let conn = s.conn();
    conn.execute_batch("ANALYZE").unwrap();
    let statements = [
        format!(
            "{RUNNER_COLS} WHERE {} ORDER BY r.created_at, r.name",
            sql::LIVE_RUNNERS
        ),
        format!("SELECT id FROM jobs WHERE {} ORDER BY id", sql::OPEN_JOBS),
        format!("{RUNNER_COLS} WHERE {}", sql::RUNNERS_SINCE),
        format!("SELECT id FROM jobs WHERE {}", sql::JOBS_SINCE),
        sql::UNACCOUNTED.to_string(),
        sql::GONE_SINCE.to_string(),
        sql::PRUNE_DELIVERIES.to_string(),
        sql::PRUNE_JOBS.to_string(),
        sql::PRUNE_RUNNERS.to_string(),
        sql::PRUNE_SANDBOXES.to_string(),
        sql::PRUNE_EVENTS.to_string(),
        sql::PRUNE_EGRESS.to_string(),
    ];
    let mut whole = Vec::new();
    for q in &statements {
        let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {q}")).unwrap();
        let n = st.parameter_count();
        let details: Vec<String> = st
            .query_map(
                rusqlite::params_from_iter(std::iter::repeat_n(0i64, n)),
                |r| r.get::<_, String>(3),
            )
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for d in details {
            // A scan is fine only over one of the partial indexes of live rows.
            let bounded = ["runners_live", "jobs_open"].iter().any(|i| d.contains(i));
            if d.starts_with("SCAN") && !bounded {
                whole.push(format!(
                    "{d}  <-  {}",
                    q.split_whitespace().collect::<Vec<_>>().join(" ")
                ));
            }
        }
    }
    assert!(
        whole.is_empty(),
        "statements that read a table whole:\n{}",
        whole.join("\n")
    );
}

/// A runner that GitHub saw take a job before its create finished (the `in_progress` webhook
/// overtook the create: GitHub delivers concurrently) stays busy when the create ends; it is never
/// sent back to `starting`, and its create does not fail (which would tear a busy runner down).
#[test]
fn a_runner_busy_before_its_create_ends_stays_busy() {
    let (_d, s) = open();
    s.insert_runner(
        "airlock-p-1",
        "p",
        "repo:octo/hello",
        "airlock-p-1",
        BackendKind::Process,
        10,
    )
    .unwrap();
    s.runner_transition("airlock-p-1", RunnerState::Busy, 20, Some("job seen"))
        .unwrap();
    s.runner_started("airlock-p-1", "airlock-p-1", 30).unwrap();
    let r = s.runner("airlock-p-1").unwrap().unwrap();
    assert_eq!((r.state, r.started_at), (RunnerState::Busy, Some(30)));
    // The usual path: creating → starting.
    s.insert_runner(
        "airlock-p-2",
        "p",
        "repo:octo/hello",
        "airlock-p-2",
        BackendKind::Process,
        10,
    )
    .unwrap();
    s.runner_started("airlock-p-2", "airlock-p-2", 30).unwrap();
    assert_eq!(
        s.runner("airlock-p-2").unwrap().unwrap().state,
        RunnerState::Starting
    );
}

/// Group commit: the calls of a batch commit together, one that fails leaves the others
/// committed (each store call is a savepoint of the batch's transaction), and the batch's
/// writes are durable: a second connection sees every one of them.
#[test]
fn a_batch_commits_its_calls_together_and_a_failing_one_does_not_undo_the_others() {
    let (d, s) = open();
    type Call<'a> = Box<dyn FnOnce(&Store) -> Result<(), StoreError> + 'a>;
    let insert = |name: &'static str| -> Call<'static> {
        Box::new(move |s: &Store| {
            s.insert_runner(
                name,
                "small",
                "repo:octo/hello",
                name,
                BackendKind::Process,
                1,
            )
        })
    };
    let calls: Vec<Call<'_>> = vec![
        insert("airlock-small-a"),
        // Illegal (creating to gone): refused, with nothing written.
        Box::new(|s: &Store| {
            s.runner_transition("airlock-small-a", RunnerState::Gone, 2, None)
                .map(|_| ())
        }),
        Box::new(|s: &Store| {
            s.ingest_delivery(
                "g1",
                "workflow_job",
                Some("queued"),
                Some(&obs(9, JobStatus::Queued, None)),
                3,
            )
            .map(|_| ())
        }),
        insert("airlock-small-c"),
    ];
    let out = s.batch(calls);
    assert_eq!(out.len(), 4);
    assert!(
        matches!(out[1].0, Err(StoreError::Transition(_))),
        "positive control: {:?}",
        out[1]
    );
    for i in [0, 2, 3] {
        assert!(out[i].0.is_ok(), "call {i}: {:?}", out[i]);
    }
    assert!(out.iter().all(|(_, kept)| kept.is_ok()), "{out:?}");
    // Nothing is left open: the next call commits on its own.
    s.runner_transition("airlock-small-a", RunnerState::Starting, 4, None)
        .unwrap();
    let other = Store::open(&d.path().join("airlock.db")).unwrap();
    let mut names: Vec<String> = other
        .live_runners()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    names.sort();
    assert_eq!(names, ["airlock-small-a", "airlock-small-c"]);
    assert_eq!(
        other.runner("airlock-small-a").unwrap().unwrap().state,
        RunnerState::Starting
    );
    assert!(other.job(9).unwrap().is_some());
}

/// A reader that keeps the open jobs and live runners from `jobs_since`/`runners_since` holds
/// exactly what full reads return, after every step of a long mix of writes (webhooks in and
/// out of order, polls, runner moves, pruning), and a step that writes nothing brings no rows.
#[test]
fn a_revision_reader_holds_what_full_reads_return() {
    use std::collections::BTreeMap;
    let (_d, s) = open();
    // Rows from before the reader's first read.
    s.observe_jobs(&[obs(1, JobStatus::Queued, None)], 1)
        .unwrap();
    s.insert_runner("r0", "p", "repo:octo/hello", "r0", BackendKind::Process, 1)
        .unwrap();
    #[derive(Default)]
    struct Reader {
        jobs: BTreeMap<u64, JobRecord>,
        runners: BTreeMap<String, RunnerRecord>,
        jrev: Option<i64>,
        rrev: Option<i64>,
    }
    impl Reader {
        fn read(&mut self, s: &Store, step: &str) -> (usize, usize) {
            let j = s.jobs_since(self.jrev).unwrap();
            let r = s.runners_since(self.rrev).unwrap();
            assert_eq!(j.full, self.jrev.is_none(), "{step}");
            if j.full {
                self.jobs.clear();
            }
            if r.full {
                self.runners.clear();
            }
            let seen = (j.rows.len(), r.rows.len());
            for row in j.rows {
                if row.status == JobStatus::Completed {
                    self.jobs.remove(&row.id);
                } else {
                    self.jobs.insert(row.id, row);
                }
            }
            for row in r.rows {
                if row.state == RunnerState::Gone {
                    self.runners.remove(&row.name);
                } else {
                    self.runners.insert(row.name.clone(), row);
                }
            }
            (self.jrev, self.rrev) = (Some(j.rev), Some(r.rev));
            assert_eq!(
                self.jobs.values().cloned().collect::<Vec<_>>(),
                s.open_jobs().unwrap(),
                "open jobs after {step}"
            );
            let mut live = s.live_runners().unwrap();
            live.sort_by(|a, b| a.name.cmp(&b.name));
            assert_eq!(
                self.runners.values().cloned().collect::<Vec<_>>(),
                live,
                "live runners after {step}"
            );
            seen
        }
    }
    let mut reader = Reader::default();
    let mut read = |s: &Store, step: &str| reader.read(s, step);
    assert_eq!(read(&s, "the first read"), (1, 1));
    assert_eq!(read(&s, "nothing"), (0, 0), "nothing written, nothing read");
    let mut t = 10;
    for i in 0..40u64 {
        t += 1;
        let id = 100 + i;
        let name = format!("r{}", i + 1);
        s.ingest_delivery(
            &format!("q{i}"),
            "workflow_job",
            Some("queued"),
            Some(&obs(id, JobStatus::Queued, None)),
            t,
        )
        .unwrap();
        s.insert_runner(
            &name,
            "p",
            "repo:octo/hello",
            &name,
            BackendKind::Process,
            t,
        )
        .unwrap();
        read(&s, &format!("job {id} queued, runner {name} created"));
        s.runner_started(&name, &name, t).unwrap();
        if i % 3 == 0 {
            // Its in_progress webhook lost, completed first: the job goes straight out.
            s.ingest_delivery(
                &format!("c{i}"),
                "workflow_job",
                Some("completed"),
                Some(&obs(id, JobStatus::Completed, Some(&name))),
                t,
            )
            .unwrap();
        } else {
            s.observe_jobs(&[obs(id, JobStatus::InProgress, Some(&name))], t)
                .unwrap();
        }
        read(&s, &format!("job {id} taken by {name}"));
        if i % 2 == 0 {
            s.runner_transition(&name, RunnerState::Stopping, t, Some("exited"))
                .unwrap();
            s.sandbox_transition(&name, SandboxState::Destroyed, None, t)
                .unwrap();
            s.runner_transition(&name, RunnerState::Gone, t, None)
                .unwrap();
            s.observe_jobs(&[obs(id, JobStatus::Completed, Some(&name))], t)
                .unwrap();
        }
        // A duplicate delivery changes nothing and is read as nothing new for jobs.
        let since = s.jobs_since(None).unwrap().rev;
        s.ingest_delivery(
            &format!("q{i}"),
            "workflow_job",
            Some("queued"),
            Some(&obs(id, JobStatus::Queued, None)),
            t,
        )
        .unwrap();
        assert_eq!(
            s.jobs_since(Some(since)).unwrap().rows.len(),
            0,
            "a duplicate is no write"
        );
        read(&s, &format!("round {i}"));
    }
    s.prune_history(t + 1).unwrap();
    read(&s, "pruning");
    assert!(
        !reader.jobs.is_empty() && !reader.runners.is_empty(),
        "the mix leaves open work to compare"
    );
}
