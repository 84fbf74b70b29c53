//! airlock end to end through ghsim over real HTTP, with real runner processes.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use airlock_core::{JobStatus, RunnerState};
use airlock_ghsim::{Faults, JobSpec, SimConfig, Status};
use common::*;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_jobs_over_three_pools() {
    let pools = [
        pool("small", &["self-hosted", "linux", "small"]),
        pool("big", &["self-hosted", "linux", "big"]),
        Pool {
            scope: "org:octo",
            ..pool("org-gpu", &["self-hosted", "linux", "gpu"])
        },
    ];
    let e = env(&pools, "60s", Faults::default(), true).await;
    let mut want = Vec::new();
    for i in 0..20 {
        let (repo, labels, pool): (&str, &[&str], &str) = match i % 3 {
            0 => ("octo/hello", &["self-hosted", "small"], "small"),
            1 => ("octo/hello", &["linux", "big"], "big"),
            _ => ("octo/other", &["gpu"], "org-gpu"),
        };
        let fail = i == 7;
        let step = if fail {
            "echo failing on purpose; exit 3"
        } else {
            "echo hello from $GITHUB_JOB_ID; test -d ."
        };
        let ids = e.submit(repo, &[(&format!("job-{i}"), labels, &[step])]);
        want.push((ids[0], pool, if fail { "failure" } else { "success" }));
    }
    e.wait_all_done(T).await;
    let jobs = e.sim().jobs();
    let mut runners_seen = HashSet::new();
    for (id, pool, conclusion) in want {
        let j = jobs.iter().find(|j| j.id == id).unwrap();
        assert_eq!(j.conclusion.as_deref(), Some(conclusion), "job {}", j.name);
        let runner = j.runner_name.clone().unwrap();
        assert!(
            runner.starts_with(&format!("airlock-{pool}-")),
            "{} ran on {runner}",
            j.name
        );
        assert!(
            runners_seen.insert(runner.clone()),
            "runner {runner} ran two jobs"
        );
    }
    // Every job is known to the store as completed, with its runner.
    let stored = e.store().all_jobs().unwrap();
    assert_eq!(stored.len(), 20);
    assert!(stored
        .iter()
        .all(|j| j.status == JobStatus::Completed && j.runner_name.is_some()));
    let all = e.store().all_runners().unwrap();
    assert!(all.iter().all(|r| r.state == RunnerState::Gone));
    let m = e.metrics();
    let created: f64 = ["small", "big", "org-gpu"]
        .iter()
        .map(|p| {
            metric(
                &m,
                &format!("airlock_runners_created_total{{pool=\"{p}\"}}"),
            )
        })
        .sum();
    assert_eq!(created, 20.0, "one runner per job, no spares:\n{m}");
    e.assert_nothing_left();
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_webhooks_are_recovered_by_polling() {
    let pools = [pool("small", &["self-hosted", "small"])];
    let e = env(
        &pools,
        "1s",
        Faults {
            drop_every: 1,
            ..Default::default()
        },
        true,
    )
    .await;
    let ids = e.submit_specs(
        "octo/hello",
        (0..4)
            .map(|i| JobSpec {
                name: format!("j{i}"),
                labels: vec!["small".into()],
                steps: vec!["true".into()],
                drop_webhooks: false,
            })
            .collect(),
    );
    e.wait_all_done(T).await;
    for id in ids {
        assert_eq!(
            e.sim().job(id).unwrap().conclusion.as_deref(),
            Some("success")
        );
    }
    assert_eq!(
        e.sim().stats().webhooks_sent,
        0,
        "every webhook was dropped"
    );
    e.assert_nothing_left();
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_reordered_deliveries_change_nothing() {
    let pools = [pool("small", &["self-hosted", "small"])];
    let e = env(
        &pools,
        "60s",
        Faults {
            duplicate: true,
            reorder: true,
            ..Default::default()
        },
        true,
    )
    .await;
    for i in 0..6 {
        e.submit("octo/hello", &[(&format!("j{i}"), &["small"], &["true"])]);
    }
    e.wait_all_done(T).await;
    assert!(e
        .sim()
        .jobs()
        .iter()
        .all(|j| j.conclusion.as_deref() == Some("success")));
    let m = e.metrics();
    assert!(
        metric(
            &m,
            "airlock_webhook_deliveries_total{event=\"workflow_job\",outcome=\"duplicate\"}"
        ) >= 6.0,
        "{m}"
    );
    // Each job moved queued -> in_progress -> completed at most once in the history.
    for j in e.store().all_jobs().unwrap() {
        let moves: Vec<String> = e
            .store()
            .events(Some(&j.id.to_string()))
            .unwrap()
            .into_iter()
            .map(|e| e.to_state)
            .collect();
        let mut sorted = moves.clone();
        sorted.dedup();
        assert_eq!(moves, sorted, "job {} history {moves:?}", j.id);
        assert!(moves.len() <= 3);
    }
    e.assert_nothing_left();
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_may_take_another_matching_job() {
    // Job B is older and its webhooks are lost; A's webhook starts a runner, and GitHub (ghsim)
    // hands that runner the oldest matching job: B. airlock must still get A a runner.
    let pools = [pool("small", &["self-hosted", "small"])];
    let e = env(&pools, "1h", Faults::default(), true).await;
    // Let the start-up poll finish first: B must be known only through the runner that takes it,
    // not found by a poll racing the submission (which would start a runner for each job).
    assert!(
        wait_until(T, || metric(
            &e.metrics(),
            "airlock_polls_total{outcome=\"ok\"}"
        ) >= 1.0)
        .await
    );
    let b = e.submit_specs(
        "octo/hello",
        vec![JobSpec {
            name: "B".into(),
            labels: vec!["small".into()],
            steps: vec!["true".into()],
            drop_webhooks: true,
        }],
    )[0];
    let a = e.submit("octo/hello", &[("A", &["self-hosted", "small"], &["true"])])[0];
    e.wait_all_done(T).await;
    let (ja, jb) = (e.sim().job(a).unwrap(), e.sim().job(b).unwrap());
    assert_eq!(ja.conclusion.as_deref(), Some("success"));
    assert_eq!(jb.conclusion.as_deref(), Some("success"));
    let runners = e.store().all_runners().unwrap();
    assert_eq!(runners.len(), 2, "{runners:?}");
    assert_eq!(
        jb.runner_name.as_deref(),
        Some(runners[0].name.as_str()),
        "the first runner took B, the job it was not started for"
    );
    e.assert_nothing_left();
    e.shutdown().await;
}

/// The control loop sleeps until the next deadline, not on a tick: idle, with polls a minute
/// apart and no events, it makes no passes; a runner that never comes online is stopped at its
/// boot timeout to within a few hundred milliseconds (a one-second tick would make it up to a
/// second late, and would show as a pass a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_follow_deadlines_not_a_tick() {
    let dir = tempfile::tempdir().unwrap();
    let dud = script(dir.path(), "dud-runner", "exec sleep 300");
    let pools = [Pool {
        extra: "boot_timeout = \"2s\"",
        ..pool("small", &["self-hosted", "small"])
    }];
    let e = env_with(
        &pools,
        "60s",
        Faults::default(),
        true,
        &dud,
        Default::default(),
    )
    .await;
    let passes = || metric(&e.metrics(), "airlock_reconcile_seconds_count");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = passes();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let idle = passes() - before;
    assert!(idle <= 1.0, "{idle} passes in 4 idle seconds");

    e.submit("octo/hello", &[("stuck", &["small"], &["true"])]);
    let stopped = || {
        metric(
            &e.metrics(),
            "airlock_runners_stopped_total{pool=\"small\",reason=\"boot_timeout\"}",
        ) >= 1.0
    };
    assert!(wait_until(T, stopped).await, "{}", e.metrics());
    // Gone (stopped and torn down: a kill and a deregistration, a few ms) since `state_since`.
    let first = || {
        e.store()
            .all_runners()
            .unwrap()
            .into_iter()
            .filter(|r| r.stop_reason.as_deref() == Some("boot_timeout"))
            .min_by_key(|r| r.created_at)
    };
    assert!(
        wait_until(T, || first().is_some_and(|r| r.state == RunnerState::Gone)).await,
        "{:?}",
        first()
    );
    let first = first().unwrap();
    let late = first.state_since - first.created_at - 2000;
    assert!(
        (0..400).contains(&late),
        "stopped {late} ms after its boot timeout ran out"
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_never_comes_up_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    // Connects nowhere: never online, never takes a job.
    let dud = script(dir.path(), "dud-runner", "exec sleep 300");
    let pools = [Pool {
        extra: "boot_timeout = \"2s\"",
        ..pool("small", &["self-hosted", "small"])
    }];
    let e = env_with(
        &pools,
        "1s",
        Faults::default(),
        true,
        &dud,
        Default::default(),
    )
    .await;
    e.submit("octo/hello", &[("stuck", &["small"], &["true"])]);
    let m = || e.metrics();
    assert!(
        wait_until(T, || metric(
            &m(),
            "airlock_runners_stopped_total{pool=\"small\",reason=\"boot_timeout\"}"
        ) >= 2.0)
        .await,
        "{}",
        m()
    );
    // Each timed-out runner is replaced (in the same pass, right after its teardown).
    assert!(
        wait_until(T, || metric(
            &m(),
            "airlock_runners_created_total{pool=\"small\"}"
        ) >= 3.0)
        .await,
        "{}",
        m()
    );
    // Never more than one at a time for one queued job.
    assert!(e.store().live_runners().unwrap().len() <= 2);
    let (sim, daemon) = (e.sim.as_ref().unwrap(), e.daemon.as_ref().unwrap());
    let _ = (sim, daemon);
    let dir_state = e.state();
    let mut e = e;
    e.daemon.take().unwrap().drain(Duration::from_secs(5)).await;
    assert!(
        e.sim().runners().is_empty(),
        "registrations left: {:?}",
        e.sim().runners()
    );
    assert!(sandbox_processes(&dir_state).is_empty());
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_run_loses_nothing_and_leaks_nothing() {
    let pools = [pool("small", &["self-hosted", "small"])];
    let mut e = env(&pools, "1s", Faults::default(), true).await;
    e.submit(
        "octo/hello",
        &[
            ("slow-1", &["small"], &["sleep 2"]),
            ("slow-2", &["small"], &["sleep 2"]),
        ],
    );
    assert!(
        wait_until(T, || e
            .sim()
            .jobs()
            .iter()
            .all(|j| j.status == Status::InProgress))
        .await
    );
    // Crash: every task of the daemon stops at once; the runners keep running.
    e.daemon.take().unwrap().crash().await;
    // While airlock is down: a job is queued (its webhook fails), an orphan registration and an
    // orphan sandbox appear.
    e.submit("octo/hello", &[("while-down", &["small"], &["true"])]);
    let c = airlock_github::Client::new(
        &e.sim.as_ref().unwrap().url,
        airlock_github::Credentials::Token(TOKEN.into()),
        Default::default(),
    )
    .unwrap();
    let scope = airlock_core::Scope::parse("repo:octo/hello").unwrap();
    c.generate_jitconfig(&scope, "airlock-small-orphan", 1, &["small".into()])
        .await
        .unwrap();
    std::fs::create_dir_all(e.state().join("sandboxes/airlock-small-lost")).unwrap();

    e.start_daemon().await;
    e.wait_all_done(T).await;
    assert!(
        e.sim()
            .jobs()
            .iter()
            .all(|j| j.conclusion.as_deref() == Some("success")),
        "{:?}",
        e.sim().jobs()
    );
    assert!(
        wait_until(T, || e.sim().runners().is_empty()).await,
        "orphan registration not reaped: {:?}",
        e.sim().runners()
    );
    assert!(
        wait_until(T, || !e
            .state()
            .join("sandboxes/airlock-small-lost")
            .exists())
        .await,
        "orphan sandbox not reaped"
    );
    let m = e.metrics();
    assert!(
        metric(&m, "airlock_orphans_reaped_total{outcome=\"registration\"}") >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "airlock_orphans_reaped_total{outcome=\"sandbox\"}") >= 1.0,
        "{m}"
    );
    e.assert_nothing_left();
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_warm_pool_and_idle_timeout() {
    let pools = [Pool {
        extra: "min_idle = 1\nidle_timeout = \"1s\"",
        ..pool("warm", &["self-hosted", "warm"])
    }];
    let e = env(&pools, "1s", Faults::default(), true).await;
    // A warm runner appears with no job queued and goes idle once online.
    assert!(
        wait_until(T, || e
            .store()
            .live_runners()
            .unwrap()
            .iter()
            .any(|r| r.state == RunnerState::Idle))
        .await,
        "no idle warm runner"
    );
    let warm = e.store().live_runners().unwrap()[0].name.clone();
    let id = e.submit("octo/hello", &[("uses-warm", &["warm"], &["true"])])[0];
    assert!(wait_until(T, || e.sim().job(id).unwrap().status == Status::Completed).await);
    assert_eq!(
        e.sim().job(id).unwrap().runner_name.as_deref(),
        Some(warm.as_str()),
        "the warm runner took the job"
    );
    // And the pool is refilled; the one idle runner is kept despite idle_timeout (min_idle).
    assert!(
        wait_until(T, || e
            .store()
            .live_runners()
            .unwrap()
            .iter()
            .any(|r| r.state == RunnerState::Idle && r.name != warm))
        .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(e.store().live_runners().unwrap().len(), 1);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_failures_back_off_and_recover() {
    let pools = [pool("small", &["self-hosted", "small"])];
    let e = env(
        &pools,
        "1s",
        Faults {
            // More than a read's two retries.
            error_5xx: 4,
            ..Default::default()
        },
        true,
    )
    .await;
    e.submit("octo/hello", &[("j", &["small"], &["true"])]);
    e.wait_all_done(T).await;
    e.sim().set_faults(Faults {
        rate_limit: 1,
        rate_limit_status: 403,
        retry_after_s: 1,
        ..Default::default()
    });
    e.submit("octo/hello", &[("k", &["small"], &["true"])]);
    e.wait_all_done(T).await;
    assert!(e
        .sim()
        .jobs()
        .iter()
        .all(|j| j.conclusion.as_deref() == Some("success")));
    let m = e.metrics();
    let errors: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("airlock_reconcile_errors_total{")
                || l.starts_with("airlock_polls_total{outcome=\"error\"}")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        errors >= 1.0,
        "the injected failures must show in metrics:\n{m}"
    );
    e.assert_nothing_left();
    e.shutdown().await;
}

/// Every metric airlock registers must be updated by a realistic run; a metric nobody updates is
/// a defect. This run covers jobs, failures, rate limits, orphans and polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_updated() {
    let pools = [Pool {
        max: 1,
        extra: "jit_stock = 1",
        ..pool("small", &["self-hosted", "small"])
    }];
    let mut e = env(&pools, "1h", Faults::default(), false).await;
    std::fs::create_dir_all(e.state().join("sandboxes/airlock-small-stray")).unwrap();
    e.start_daemon().await;
    // After the start-up poll, the next GitHub call (the first runner's JIT config) fails.
    assert!(
        wait_until(T, || metric(
            &e.metrics(),
            "airlock_polls_total{outcome=\"ok\"}"
        ) >= 1.0)
        .await
    );
    e.sim().set_faults(Faults {
        error_5xx: 1,
        ..Default::default()
    });
    // One runner at most, two jobs: the second waits, queued, for the first to finish.
    e.submit(
        "octo/hello",
        &[
            ("j", &["small"], &["sleep 1"]),
            ("k", &["small"], &["sleep 1"]),
        ],
    );
    // Gauges go back to zero: sample the exposition throughout the run.
    let mut ever_positive: std::collections::BTreeSet<String> = Default::default();
    let mut families: Vec<String>;
    let done = |e: &Env| {
        e.sim().jobs().iter().all(|j| j.status == Status::Completed)
            && e.store().live_runners().unwrap().is_empty()
            && !e.state().join("sandboxes/airlock-small-stray").exists()
    };
    let end = std::time::Instant::now() + T;
    loop {
        let text = e.metrics();
        families = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect();
        for f in &families {
            let positive = text
                .lines()
                .filter(|l| !l.starts_with('#') && l.starts_with(f.as_str()))
                .any(|l| {
                    l.rsplit(' ')
                        .next()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v > 0.0)
                });
            if positive {
                ever_positive.insert(f.clone());
            }
        }
        if done(&e) || std::time::Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(done(&e), "the run did not finish");
    assert!(families.len() >= 11, "{families:?}");
    // Moves only when a pass meets an object another operation owns, a race this run does not
    // stage; `tests/executor.rs` stages it and reads the counter.
    // The egress counters move only with a pool that has a network (containers, microVMs):
    // `tests/container.rs` (`egress_is_enforced_reported_and_suggested_end_to_end`) reads them.
    // The health gauges are 1 only for a failing pool, an outdated image, a stuck job or a low
    // disk, and the clock's drift is 0 against ghsim's own clock; the circuit opens only in
    // an outage: `tests/health.rs` stages each and reads them.
    let staged_elsewhere = [
        "airlock_ops_deferred",
        "airlock_egress_blocked",
        "airlock_egress_dns_answers",
        "airlock_pool_degraded",
        "airlock_pool_image_outdated",
        "airlock_jobs_stuck",
        "airlock_clock_drift_seconds",
        "airlock_disk_low",
        "airlock_github_circuit_open",
    ];
    for f in families
        .iter()
        .filter(|f| !staged_elsewhere.contains(&f.as_str()))
    {
        assert!(
            ever_positive.contains(f),
            "metric {f} was never updated:\n{}",
            e.metrics()
        );
    }
    e.shutdown().await;
}

/// A runner that took a job airlock has not heard of (its webhooks lost, no poll yet) reaches its
/// boot timeout: airlock asks GitHub to remove the registration first, GitHub answers 422 (busy),
/// and the runner is kept and finishes its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_runner_is_never_killed_by_a_timeout() {
    let pools = [Pool {
        extra: "min_idle = 1\nboot_timeout = \"3s\"",
        ..pool("warm", &["self-hosted", "warm"])
    }];
    let e = env(&pools, "1h", Faults::default(), true).await;
    assert!(
        wait_until(T, || e.sim().runners().iter().any(|r| r.2)).await,
        "the warm runner never came online"
    );
    let id = e.submit_specs(
        "octo/hello",
        vec![JobSpec {
            name: "secret-job".into(),
            labels: vec!["warm".into()],
            steps: vec!["sleep 5".into()],
            drop_webhooks: true,
        }],
    )[0];
    assert!(wait_until(T, || e.sim().job(id).unwrap().status == Status::Completed).await);
    let job = e.sim().job(id).unwrap();
    assert_eq!(
        job.conclusion.as_deref(),
        Some("success"),
        "the busy runner was killed"
    );
    let runner = job.runner_name.unwrap();
    let history: Vec<String> = e
        .store()
        .events(Some(&runner))
        .unwrap()
        .into_iter()
        .map(|ev| format!("{}:{}", ev.to_state, ev.detail.unwrap_or_default()))
        .collect();
    assert!(
        history.iter().any(|h| h == "busy:busy at deregistration"),
        "{history:?}"
    );
    assert_eq!(
        metric(
            &e.metrics(),
            "airlock_runners_stopped_total{pool=\"warm\",reason=\"boot_timeout\"}"
        ),
        0.0
    );
    e.shutdown().await;
}

/// A burst with GitHub answering slowly: the executor runs creates concurrently (a runner's JIT
/// request overlaps others' sandbox work), yet GitHub never sees two mutating requests at once,
/// as its integration guidance asks; every job runs and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_runs_in_parallel_but_github_writes_never_overlap() {
    let mut p = pool("burst", &["self-hosted", "burst"]);
    p.max = 12;
    let e = env(
        &[p],
        "5s",
        Faults {
            latency_ms: 100,
            ..Default::default()
        },
        true,
    )
    .await;
    e.submit_n("b", 12, "burst", "true");
    e.wait_all_done(T).await;
    assert!(e
        .sim()
        .jobs()
        .iter()
        .all(|j| j.conclusion.as_deref() == Some("success")));
    let st = e.sim().stats();
    assert!(
        st.by_route.keys().any(|r| r.contains("generate-jitconfig")),
        "positive control: the burst made JIT requests: {:?}",
        st.by_route
    );
    assert_eq!(
        st.max_concurrent_writes, 1,
        "GitHub saw mutating requests in parallel"
    );
    // Paced: the test config's write_interval is 20 ms (a little slack for timer and socket).
    assert!(st.writes >= 12, "{st:?}");
    assert!(
        st.min_write_gap_ms.is_some_and(|g| g >= 15),
        "two writes {:?} ms apart",
        st.min_write_gap_ms
    );
    e.assert_nothing_left();
    e.shutdown().await;
}

/// GitHub's rate limit is a budget: reads (polls) pause once a tenth of the window is left, so
/// that creating and removing runners still have requests; a job queued then still gets its
/// runner, and GitHub never has to refuse airlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_pause_before_writes_run_out_of_rate_limit() {
    let pools = [pool("small", &["self-hosted", "small"])];
    let e = env_with(
        &pools,
        "1s",
        Faults::default(),
        true,
        &runner_bin(),
        SimConfig {
            rate_limit: 30,
            ..Default::default()
        },
    )
    .await;
    let remaining = || metric(&e.metrics(), "airlock_github_rate_remaining");
    assert!(
        wait_until(T, || remaining() > 0.0 && remaining() <= 3.0).await,
        "remaining {}",
        remaining()
    );
    let reads = || e.sim().stats().api_requests - e.sim().stats().writes;
    let before = reads();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        reads(),
        before,
        "polls read while only the writes' reserve was left"
    );
    e.submit("octo/hello", &[("late", &["small"], &["true"])]);
    e.wait_all_done(T).await;
    assert!(e
        .sim()
        .jobs()
        .iter()
        .all(|j| j.conclusion.as_deref() == Some("success")));
    let m = e.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "airlock_github_requests_total{method=\"GET\",status=\"403\""
        ) + metric_sum(
            &m,
            "airlock_github_requests_total{method=\"POST\",status=\"403\""
        ),
        0.0,
        "GitHub refused a request: {m}"
    );
    e.shutdown().await;
}

/// With `jit_stock = 4` the pool keeps four registrations at GitHub, offline and taking no job,
/// and no runner, sandbox or capacity: the reaper leaves them alone across polls. A burst of
/// four jobs then starts runners from them (every job's runner was registered before the jobs
/// were queued: no GitHub round trip on their path), the stock refills with new ones, and a
/// drain deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jit_stock_starts_a_bursts_runners_without_github() {
    let mut p = pool("stock", &["self-hosted", "stock"]);
    p.extra = "jit_stock = 4";
    let mut e = env(
        &[p],
        "1s",
        Faults {
            latency_ms: 100,
            ..Default::default()
        },
        true,
    )
    .await;
    let stocked = |e: &Env| metric(&e.metrics(), "airlock_jit_stock{pool=\"stock\"}");
    assert!(
        wait_until(T, || stocked(&e) == 4.0).await,
        "{}",
        e.metrics()
    );
    // Three polls later the same four registrations are there, offline and idle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let regs = e.sim().runners();
    assert_eq!(regs.len(), 4, "{regs:?}");
    assert!(
        regs.iter().all(|(_, _, online, busy)| !online && !busy),
        "{regs:?}"
    );
    assert!(
        e.store().live_runners().unwrap().is_empty(),
        "stock is not runners"
    );
    assert_eq!(
        metric(
            &e.metrics(),
            "airlock_runners{pool=\"stock\",state=\"idle\"}"
        ),
        0.0
    );
    let before: HashSet<String> = regs.into_iter().map(|(_, n, _, _)| n).collect();

    let jobs: Vec<(&str, &[&str], &[&str])> = ["s1", "s2", "s3", "s4"]
        .iter()
        .map(|n| (*n, &["stock"][..], &["true"][..]))
        .collect();
    e.submit("octo/hello", &jobs);
    e.wait_all_done(T).await;
    let ran: Vec<String> = e
        .sim()
        .jobs()
        .iter()
        .map(|j| j.runner_name.clone().unwrap_or_default())
        .collect();
    assert!(
        ran.iter().all(|n| before.contains(n)),
        "every runner came from the stock: ran on {ran:?}, stocked {before:?}"
    );
    assert_eq!(
        metric(&e.metrics(), "airlock_jit_stock_used_total{pool=\"stock\"}"),
        4.0
    );
    assert!(e
        .sim()
        .jobs()
        .iter()
        .all(|j| j.conclusion.as_deref() == Some("success")));
    // Refilled with new registrations; then a drain deletes every one.
    assert!(
        wait_until(T, || stocked(&e) == 4.0).await,
        "{}",
        e.metrics()
    );
    let refilled: HashSet<String> = e
        .sim()
        .runners()
        .into_iter()
        .map(|(_, n, _, _)| n)
        .collect();
    assert!(refilled.is_disjoint(&before), "{refilled:?}");
    e.stop_daemon().await;
    e.assert_nothing_left();
    e.shutdown().await;
}

/// GitHub removes a JIT registration no runner used after a day (ghsim: after `unused_jit_ttl`,
/// here 3 s). The stock replaces each config at `jit_stock_refresh` (1 s), so none expires at
/// GitHub, and a job started later still runs on a stocked config. Without the refresh (the
/// positive control, ghsim's own model), an unused registration does expire and its config no
/// longer connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jit_stock_is_refreshed_before_github_removes_it() {
    let mut p = pool("fresh", &["self-hosted", "fresh"]);
    p.extra = "jit_stock = 2\njit_stock_refresh = \"1s\"";
    let runner = runner_bin();
    let e = env_with(
        &[p],
        "1s",
        Faults::default(),
        true,
        &runner,
        SimConfig {
            unused_jit_ttl: Duration::from_secs(3),
            ..Default::default()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        e.sim().stats().unused_jit_removed,
        0,
        "a stocked config expired at GitHub"
    );
    assert!(
        metric(&e.metrics(), "airlock_jit_stock{pool=\"fresh\"}") >= 1.0,
        "{}",
        e.metrics()
    );
    e.submit("octo/hello", &[("late", &["fresh"], &["true"])]);
    e.wait_all_done(T).await;
    assert!(e
        .sim()
        .jobs()
        .iter()
        .all(|j| j.conclusion.as_deref() == Some("success")));
    assert!(metric(&e.metrics(), "airlock_jit_stock_used_total{pool=\"fresh\"}") >= 1.0);

    // The control: a registration made outside airlock's stock expires, and its config is refused.
    let c = airlock_github::Client::new(
        &e.sim.as_ref().unwrap().url,
        airlock_github::Credentials::Token(TOKEN.into()),
        Default::default(),
    )
    .unwrap();
    let scope = airlock_core::Scope::parse("repo:octo/hello").unwrap();
    let jit = c
        .generate_jitconfig(&scope, "someone-unused", 1, &["fresh".into()])
        .await
        .unwrap();
    assert!(
        wait_until(T, || e.sim().stats().unused_jit_removed >= 1).await,
        "ghsim never expired an unused registration"
    );
    assert!(!e
        .sim()
        .runners()
        .iter()
        .any(|(id, ..)| *id == jit.runner_id));
    e.shutdown().await;
}

/// GitHub delivers webhooks from many workers at once, so a job's `in_progress` can overtake the
/// create of the runner that took it (the store test `a_runner_busy_before_its_create_ends_stays_busy`
/// pins that race down). A burst from a JIT stock with ghsim delivering 8 at a time: every job
/// succeeds on a runner of its own and no operation fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_with_concurrent_webhooks_loses_nothing() {
    let mut p = pool("conc", &["self-hosted", "conc"]);
    p.max = 12;
    p.extra = "jit_stock = 12";
    let runner = runner_bin();
    let e = env_with(
        &[p],
        "2s",
        Faults::default(),
        true,
        &runner,
        SimConfig {
            webhook_concurrency: 8,
            ..Default::default()
        },
    )
    .await;
    assert!(
        wait_until(T, || metric(
            &e.metrics(),
            "airlock_jit_stock{pool=\"conc\"}"
        ) == 12.0)
        .await
    );
    e.submit_n("w", 12, "conc", "true");
    e.wait_all_done(T).await;
    let jobs = e.sim().jobs();
    assert!(
        jobs.iter()
            .all(|j| j.conclusion.as_deref() == Some("success")),
        "{jobs:?}"
    );
    let runners: HashSet<String> = jobs.iter().filter_map(|j| j.runner_name.clone()).collect();
    assert_eq!(runners.len(), 12, "each job on a runner of its own");
    let m = e.metrics();
    // Operations of one pass run while the next pass plans: an object operated on twice (a
    // second stop of a runner, a reap of a sandbox a create is making) fails a transition or a
    // backend call, and is counted here.
    assert_eq!(
        metric_sum(&m, "airlock_reconcile_errors_total"),
        0.0,
        "an operation failed: {m}"
    );
    e.shutdown().await;
}

/// A crash (every task of the daemon stops at once) in the middle of a burst, with a JIT stock:
/// after the restart every job runs exactly once to success on a runner of its own, whatever the
/// crash left at GitHub is reaped and a new stock made, and a drain leaves nothing at GitHub or
/// on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_mid_burst_loses_and_leaks_nothing() {
    let mut p = pool("burst", &["self-hosted", "burst"]);
    p.max = 10;
    p.extra = "jit_stock = 3";
    let mut e = env(
        &[p],
        "1s",
        Faults {
            latency_ms: 50,
            ..Default::default()
        },
        true,
    )
    .await;
    let stock = |e: &Env| metric(&e.metrics(), "airlock_jit_stock{pool=\"burst\"}");
    assert!(wait_until(T, || stock(&e) == 3.0).await);
    e.submit_n("c", 20, "burst", "sleep 1");
    // Mid-burst: some jobs running, others still queued.
    assert!(
        wait_until(T, || e
            .sim()
            .jobs()
            .iter()
            .filter(|j| j.status == Status::InProgress)
            .count()
            >= 3)
        .await
    );
    e.daemon.take().unwrap().crash().await;
    assert!(
        e.sim().jobs().iter().any(|j| j.status == Status::Queued),
        "the crash came mid-burst"
    );
    e.start_daemon().await;
    e.wait_all_done(T).await;
    let jobs = e.sim().jobs();
    assert!(
        jobs.iter()
            .all(|j| j.conclusion.as_deref() == Some("success")),
        "{jobs:?}"
    );
    // Each runner ran at most one job, and each job one runner.
    let mut by_runner = std::collections::HashMap::new();
    for j in &jobs {
        *by_runner.entry(j.runner_name.clone().unwrap()).or_insert(0) += 1;
    }
    assert!(by_runner.values().all(|n| *n == 1), "{by_runner:?}");
    // Whatever registrations the crash left (stock held only in memory, runners mid-create) are
    // reaped: GitHub ends up holding exactly the new stock.
    assert!(
        wait_until(T, || stock(&e) == 3.0 && e.sim().runners().len() == 3).await,
        "{:?}",
        e.sim().runners()
    );
    e.stop_daemon().await;
    e.assert_nothing_left();
    e.shutdown().await;
}

/// A pool whose creates keep failing (its runner group does not exist at GitHub, so its warm
/// runner cannot be registered) backs off alone: another pool's job starts at once, as it would
/// without the broken pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_pool_does_not_delay_another_pools_creates() {
    let mut broken = pool("broken", &["self-hosted", "broken"]);
    broken.scope = "org:octo";
    broken.extra = "min_idle = 1\nrunner_group = \"no-such-group\"";
    let good = pool("good", &["self-hosted", "good"]);
    let e = env(&[broken, good], "5s", Faults::default(), true).await;
    // The broken pool fails five times before the job arrives: its backoff (1, 2, 4, 8, 16 s) is at
    // 16 s then, which a backoff shared by all pools would make the good pool wait too.
    assert!(
        wait_until(T, || {
            metric_sum(&e.metrics(), "airlock_reconcile_errors_total{op=\"create\"") >= 5.0
        })
        .await,
        "positive control: the broken pool's creates fail"
    );
    let started = std::time::Instant::now();
    e.submit("octo/hello", &[("quick", &["good"], &["true"])]);
    assert!(
        wait_until(T, || e.sim().jobs().iter().any(
            |j| j.name == "quick" && j.conclusion.as_deref() == Some("success")
        ))
        .await
    );
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(10),
        "the good pool's job waited {took:?} behind the broken pool's backoff"
    );
    e.shutdown().await;
}
