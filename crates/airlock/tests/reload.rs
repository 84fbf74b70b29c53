//! Config reload end to end through ghsim (process backend): pools added, changed and removed
//! take effect without a restart, busy runners of a changed or removed pool finish their jobs,
//! a changed pool's idle runner is replaced by one made with the new settings, and an invalid
//! config is refused with its problems while the running one stays.

mod common;

use std::time::Duration;

use airlock_ghsim::{Faults, Status};
use common::*;

const T: Duration = Duration::from_secs(60);

/// `e`'s config with its pools replaced by `pools`.
fn with_pools(e: &Env, pools: &[Pool<'_>]) -> String {
    let header = &e.config[..e.config.find("\n[[pool]]").unwrap()];
    let text = config_text(
        &e.state(),
        "http://unused",
        "127.0.0.1:0",
        "1s",
        pools,
        &runner_bin(),
    );
    format!("{header}{}", &text[text.find("\n[[pool]]").unwrap()..])
}

fn job_state(e: &Env, name: &str) -> (Status, Option<String>) {
    let j = e
        .sim()
        .jobs()
        .into_iter()
        .find(|j| j.name == name)
        .unwrap_or_else(|| panic!("no job {name}"));
    (j.status, j.conclusion)
}

fn runner_names(e: &Env, pool: &str) -> Vec<String> {
    e.store()
        .live_runners()
        .unwrap()
        .into_iter()
        .filter(|r| r.pool == pool)
        .map(|r| r.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_added_changed_and_removed_apply_without_a_restart_and_busy_runners_finish() {
    let before = [
        Pool {
            extra: "min_idle = 1",
            ..pool("keep", &["self-hosted", "keep"])
        },
        pool("gone", &["self-hosted", "gone"]),
    ];
    let mut e = env(&before, "1s", Faults::default(), false).await;
    let cfg_path = e.dir.path().join("airlock.toml");
    std::fs::write(&cfg_path, &e.config).unwrap();
    e.start_daemon().await;
    e.daemon().set_config_path(&cfg_path);

    // A long job busy in each pool, and (min_idle) a warm runner in `keep` beside its busy one.
    e.submit(
        "octo/hello",
        &[
            ("long-keep", &["keep"], &["sleep 8"]),
            ("long-gone", &["gone"], &["sleep 8"]),
        ],
    );
    assert!(
        wait_until(T, || ["long-keep", "long-gone"].iter().all(|n| job_state(
            &e, n
        )
        .0
            == Status::InProgress))
        .await,
        "both jobs running"
    );
    let idle_in = |e: &Env, pool: &str| -> Vec<String> {
        e.store()
            .live_runners()
            .unwrap()
            .into_iter()
            .filter(|r| r.pool == pool && r.state == airlock_core::RunnerState::Idle)
            .map(|r| r.name)
            .collect()
    };
    assert!(wait_until(T, || idle_in(&e, "keep").len() == 1).await);
    let warm = idle_in(&e, "keep").remove(0);
    let busy_keep: Vec<String> = e
        .store()
        .live_runners()
        .unwrap()
        .into_iter()
        .filter(|r| r.pool == "keep" && r.job_id.is_some())
        .map(|r| r.name)
        .collect();
    assert_eq!(busy_keep.len(), 1);

    // An invalid config: refused with its problem, nothing changes.
    std::fs::write(
        &cfg_path,
        e.config
            .replace("max_runners = 8", "max_runners = \"many\""),
    )
    .unwrap();
    match e.daemon().reload_file() {
        Err(airlock_daemon::ReloadError::Invalid { problems, .. }) => assert!(
            problems.iter().any(|p| p.contains("max_runners")),
            "{problems:?}"
        ),
        other => panic!("an invalid config must be refused: {other:?}"),
    }

    // `keep` gains a label (its runners' settings change), `gone` goes, `new` comes.
    let after = [
        Pool {
            extra: "min_idle = 1",
            ..pool("keep", &["self-hosted", "keep", "v2"])
        },
        pool("new", &["self-hosted", "new"]),
    ];
    std::fs::write(&cfg_path, with_pools(&e, &after)).unwrap();
    let r = e.daemon().reload_file().expect("a valid config reloads");
    let said = r.applied.join("\n");
    assert!(said.contains("pool keep: changed labels"), "{said}");
    assert!(said.contains("pool gone: removed"), "{said}");
    assert!(said.contains("pool new: added"), "{said}");
    assert!(r.needs_restart.is_empty(), "{:?}", r.needs_restart);

    // The new pool serves at once; the removed pool's new jobs wait, unserved.
    e.submit(
        "octo/hello",
        &[
            ("fresh", &["new"], &["true"]),
            ("orphaned", &["gone"], &["true"]),
            ("v2", &["keep", "v2"], &["true"]),
        ],
    );
    assert!(
        wait_until(T, || job_state(&e, "fresh").1.as_deref() == Some("success")
            && job_state(&e, "v2").1.as_deref() == Some("success"))
        .await,
        "the added pool and the changed pool's new label serve"
    );
    // The warm runner of the old settings was replaced, the busy ones kept their jobs.
    let old = e.store().runner(&warm).unwrap().unwrap();
    assert_eq!(old.stop_reason.as_deref(), Some("reconfigured"), "{old:?}");
    assert!(
        wait_until(T, || ["long-keep", "long-gone"].iter().all(|n| job_state(
            &e, n
        )
        .1
        .as_deref()
            == Some("success")))
        .await,
        "busy runners of a changed and a removed pool finish their jobs"
    );
    for r in busy_keep {
        let rec = e.store().runner(&r).unwrap().unwrap();
        assert_ne!(rec.stop_reason.as_deref(), Some("reconfigured"), "{rec:?}");
    }
    // The removed pool ends with no runner, its job unserved; `keep` is warm again.
    assert!(wait_until(T, || runner_names(&e, "gone").is_empty()).await);
    assert!(wait_until(T, || runner_names(&e, "keep").len() == 1).await);
    assert_eq!(job_state(&e, "orphaned").0, Status::Queued);
    let v: serde_json::Value = reqwest::get(format!("http://{}/api/v1/status", e.daemon().addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["keep", "new"]);
    assert!(
        wait_until(T, || {
            let m = e.metrics();
            // Counters stay, as counters do; the gauges go.
            !m.contains("airlock_runners{pool=\"gone\"")
                && !m.contains("airlock_pool_info{pool=\"gone\"")
                && !m.contains("airlock_queued_jobs{pool=\"gone\"")
        })
        .await,
        "the removed pool's gauges go once its last runner is gone:\n{}",
        e.metrics()
    );
    e.shutdown().await;
}

/// The fingerprint is stored with each runner: a daemon killed and started again with a changed
/// pool replaces the idle runner the old config made, as a reload would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_changed_pool_settings_replaces_the_idle_runners_they_made() {
    let before = [Pool {
        extra: "min_idle = 1",
        ..pool("warm", &["self-hosted", "warm"])
    }];
    let mut e = env(&before, "1s", Faults::default(), true).await;
    assert!(wait_until(T, || runner_names(&e, "warm").len() == 1).await);
    let old = runner_names(&e, "warm").remove(0);
    e.daemon.take().unwrap().crash().await;
    let after = [Pool {
        extra: "min_idle = 1",
        ..pool("warm", &["self-hosted", "warm", "bigger"])
    }];
    e.config = with_pools(&e, &after);
    e.start_daemon().await;
    assert!(
        wait_until(T, || {
            let now = runner_names(&e, "warm");
            now.len() == 1 && now[0] != old
        })
        .await,
        "a new warm runner replaces {old}"
    );
    let rec = e.store().runner(&old).unwrap().unwrap();
    assert_eq!(rec.stop_reason.as_deref(), Some("reconfigured"), "{rec:?}");
    e.submit("octo/hello", &[("big", &["warm", "bigger"], &["true"])]);
    assert!(
        wait_until(T, || job_state(&e, "big").1.as_deref() == Some("success")).await,
        "the new label is served"
    );
    e.shutdown().await;
}
