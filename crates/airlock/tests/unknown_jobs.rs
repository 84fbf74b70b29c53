//! Webhooks for jobs airlock never saw queued, or that no pool serves: each is accepted (2xx,
//! stored), nothing is created for it, and a job a pool serves still runs afterwards.

mod common;

use std::time::Duration;

use airlock_ghsim::Faults;
use common::*;

const T: Duration = Duration::from_secs(60);

fn payload(action: &str, id: u64, repo: &str, labels: &[&str], runner: Option<&str>) -> Vec<u8> {
    let status = match action {
        "in_progress" => "in_progress",
        "completed" => "completed",
        "waiting" => "waiting",
        _ => "queued",
    };
    serde_json::to_vec(&serde_json::json!({
        "action": action,
        "workflow_job": {
            "id": id, "run_id": 7, "status": status,
            "conclusion": if status == "completed" { serde_json::json!("success") } else { serde_json::Value::Null },
            "name": format!("ghost-{id}"), "labels": labels,
            "runner_name": runner,
            "created_at": "2026-01-01T00:00:00Z",
            "started_at": "2026-01-01T00:00:01Z",
            "completed_at": if status == "completed" { serde_json::json!("2026-01-01T00:00:02Z") } else { serde_json::Value::Null },
        },
        "repository": { "full_name": repo },
    }))
    .unwrap()
}

async fn deliver(url: &str, guid: &str, body: Vec<u8>) -> u16 {
    reqwest::Client::new()
        .post(url)
        .header("x-github-event", "workflow_job")
        .header("x-github-delivery", guid)
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            airlock_github::webhook::sign(SECRET.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_for_unknown_or_unserved_jobs_create_nothing_and_break_nothing() {
    let pools = [pool("small", &["self-hosted", "small"])];
    let e = env(&pools, "1s", Faults::default(), true).await;
    let url = format!("http://{}/webhook", e.daemon().addr);
    let ghosts = [
        // Started and finished on a runner airlock has never heard of.
        (
            "in_progress",
            9001,
            "octo/hello",
            vec!["self-hosted", "small"],
            Some("someone-else-1"),
        ),
        (
            "completed",
            9002,
            "octo/hello",
            vec!["self-hosted", "small"],
            Some("someone-else-2"),
        ),
        // Finished before its queued arrives (reordered), then its queued.
        (
            "completed",
            9003,
            "octo/hello",
            vec!["self-hosted", "small"],
            Some("someone-else-3"),
        ),
        (
            "queued",
            9003,
            "octo/hello",
            vec!["self-hosted", "small"],
            None,
        ),
        // Labels no pool has, and a repository no pool covers.
        (
            "queued",
            9004,
            "octo/hello",
            vec!["self-hosted", "gpu"],
            None,
        ),
        (
            "queued",
            9005,
            "octo/elsewhere",
            vec!["self-hosted", "small"],
            None,
        ),
        // A runner name airlock's own shape, for a job it never saw.
        (
            "in_progress",
            9006,
            "octo/hello",
            vec!["self-hosted", "small"],
            Some("airlock-small-0000000000"),
        ),
        // An action GitHub may add later.
        (
            "waiting",
            9007,
            "octo/hello",
            vec!["self-hosted", "small"],
            None,
        ),
    ];
    for (i, (action, id, repo, labels, runner)) in ghosts.iter().enumerate() {
        let st = deliver(
            &url,
            &format!("ghost-{i}"),
            payload(action, *id, repo, labels, *runner),
        )
        .await;
        assert!((200..300).contains(&st), "{action} {id}: {st}");
    }
    // Nothing is created for any of them (passes and polls run meanwhile).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let open: Vec<_> = e
        .store()
        .open_jobs()
        .unwrap()
        .into_iter()
        .map(|j| (j.id, j.status))
        .collect();
    assert!(
        e.store().live_runners().unwrap().is_empty(),
        "runners were made; open jobs {open:?}"
    );
    assert!(e.sim().runners().is_empty(), "{:?}", e.sim().runners());
    // The reordered job stays completed: a late queued never reopens it.
    let j = e.store().job(9003).unwrap().expect("stored");
    assert_eq!(j.status, airlock_core::JobStatus::Completed, "{j:?}");
    // Jobs GitHub does not know (404 when the poll looks them up) do not stay open.
    assert!(
        wait_until(T, || {
            let open = e.store().open_jobs().unwrap();
            !open.iter().any(|j| [9001, 9006, 9007].contains(&j.id))
        })
        .await,
        "{:?}",
        e.store().open_jobs().unwrap()
    );
    let m = e.metrics();
    assert_eq!(metric_sum(&m, "airlock_reconcile_errors_total"), 0.0, "{m}");
    // A real job still runs to success.
    e.submit("octo/hello", &[("real", &["small"], &["true"])]);
    assert!(
        wait_until(T, || e.sim().jobs().iter().any(
            |j| j.name == "real" && j.conclusion.as_deref() == Some("success")
        ))
        .await
    );
    assert!(
        wait_until(T, || e.store().live_runners().unwrap().is_empty()).await,
        "one runner for the real job, and it is gone"
    );
    e.shutdown().await;
}
