//! `POST /webhook` against real HTTP: signatures, size limit, deduplication, ping, other events,
//! malformed payloads — and GitHub's own example payloads signed by GitHub's reference code.

mod common;

use std::time::Duration;

use airlock_ghsim::Faults;
use common::*;

fn sign(body: &[u8]) -> String {
    airlock_github::webhook::sign(SECRET.as_bytes(), body)
}

async fn post(
    url: &str,
    event: &str,
    guid: &str,
    sig: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    let mut r = reqwest::Client::new()
        .post(url)
        .header("x-github-event", event)
        .header("x-github-delivery", guid)
        .header("content-type", "application/json")
        .body(body);
    if let Some(s) = sig {
        r = r.header("x-hub-signature-256", s);
    }
    let resp = r.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

const JOB: &str = r#"{"action":"queued","workflow_job":{"id":4242,"run_id":1,"status":"queued","conclusion":null,
"name":"j","labels":["self-hosted","small"],"runner_name":null,"created_at":"2024-01-01T00:00:00Z",
"started_at":"2024-01-01T00:00:00Z","completed_at":null},"repository":{"full_name":"octo/elsewhere"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_endpoint_checks_before_it_stores() {
    let pools = [pool("small", &["self-hosted", "small"])];
    let e = env(&pools, "1h", Faults::default(), true).await;
    let url = format!("http://{}/webhook", e.daemon().addr);
    let store = e.store();
    let body = JOB.as_bytes().to_vec();

    // Missing, malformed and wrong signatures: 401 and nothing stored.
    assert_eq!(
        post(&url, "workflow_job", "d1", None, body.clone()).await.0,
        401
    );
    assert_eq!(
        post(&url, "workflow_job", "d1", Some("sha256=00"), body.clone())
            .await
            .0,
        401
    );
    let other_key = airlock_github::webhook::sign(b"not the secret", &body);
    assert_eq!(
        post(&url, "workflow_job", "d1", Some(&other_key), body.clone())
            .await
            .0,
        401
    );
    let mut tampered = body.clone();
    tampered[20] ^= 1;
    assert_eq!(
        post(&url, "workflow_job", "d1", Some(&sign(&body)), tampered)
            .await
            .0,
        401
    );
    assert_eq!(store.delivery_count().unwrap(), 0);
    assert!(store.all_jobs().unwrap().is_empty());

    // Good: stored, then a redelivery with the same id is a duplicate.
    let (st, text) = post(&url, "workflow_job", "d1", Some(&sign(&body)), body.clone()).await;
    assert_eq!(st, 202, "{text}");
    assert_eq!(store.job(4242).unwrap().unwrap().repo, "octo/elsewhere");
    let (st, text) = post(&url, "workflow_job", "d1", Some(&sign(&body)), body.clone()).await;
    assert_eq!((st, text.contains("duplicate")), (200, true), "{text}");
    assert_eq!(store.delivery_count().unwrap(), 1);

    // Ping, other events, malformed payloads, missing headers.
    assert_eq!(
        post(&url, "ping", "d2", Some(&sign(b"{}")), b"{}".to_vec())
            .await
            .0,
        200
    );
    let push = br#"{"ref":"refs/heads/main"}"#.to_vec();
    assert_eq!(
        post(&url, "push", "d3", Some(&sign(&push)), push).await.0,
        202
    );
    let bad = br#"{"action":"queued","workflow_job":{"id":"x"}}"#.to_vec();
    let (st, text) = post(&url, "workflow_job", "d4", Some(&sign(&bad)), bad).await;
    assert_eq!(st, 400);
    assert!(text.contains("malformed workflow_job payload"), "{text}");
    assert_eq!(
        post(&url, "", "d5", Some(&sign(&body)), body.clone())
            .await
            .0,
        400
    );
    assert_eq!(
        post(&url, "workflow_job", "", Some(&sign(&body)), body.clone())
            .await
            .0,
        400
    );

    // Over 25 MB: 413 without reading it all.
    let big = vec![b' '; 25 * 1024 * 1024 + 1];
    let sig = sign(&big);
    assert_eq!(
        post(&url, "workflow_job", "d6", Some(&sig), big).await.0,
        413
    );
    assert_eq!(
        store.delivery_count().unwrap(),
        2,
        "only the good workflow_job and the push were stored"
    );
    e.shutdown().await;
}

fn node_available() -> bool {
    std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn openapi_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/openapi")
}

/// GitHub's example `workflow_job` payloads, signed by `@octokit/webhooks-methods`, are accepted
/// and understood; the same payloads tampered with are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn githubs_example_payloads_signed_by_githubs_code() {
    assert!(
        node_available(),
        "node is required (scripts/test.sh installs the npm packages)"
    );
    let dir = openapi_dir();
    assert!(
        dir.join("node_modules/@octokit/webhooks-examples").is_dir(),
        "run: npm ci --prefix tests/openapi"
    );
    let out = std::process::Command::new("node")
        .arg(dir.join("sign-examples.mjs"))
        .arg(SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pools = [pool("small", &["self-hosted", "small"])];
    let e = env(&pools, "1h", Faults::default(), true).await;
    let url = format!("http://{}/webhook", e.daemon().addr);
    let mut n = 0;
    for (i, line) in String::from_utf8(out.stdout).unwrap().lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let body = v["body"].as_str().unwrap().as_bytes().to_vec();
        let sig = v["signature"].as_str().unwrap();
        assert_eq!(
            sig,
            sign(&body),
            "airlock's signing must agree with GitHub's reference"
        );
        let (st, text) = post(
            &url,
            "workflow_job",
            &format!("ex-{i}"),
            Some(sig),
            body.clone(),
        )
        .await;
        assert_eq!(st, 202, "example {i} ({}) refused: {text}", v["action"]);
        let mut t = body.clone();
        let k = t.len() / 2;
        t[k] = if t[k] == b'1' { b'2' } else { b'1' };
        assert_eq!(
            post(&url, "workflow_job", &format!("ex-t-{i}"), Some(sig), t)
                .await
                .0,
            401
        );
        n += 1;
    }
    assert!(n >= 4, "expected several examples, got {n}");
    assert!(!e.store().all_jobs().unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(100)).await;
    e.shutdown().await;
}

/// Everything airlock's client sent to ghsim and everything ghsim answered or delivered during a
/// run conforms to GitHub's OpenAPI descriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_emulator_conform_to_githubs_openapi() {
    assert!(
        node_available(),
        "node is required (scripts/test.sh installs the npm packages)"
    );
    let dir = openapi_dir();
    assert!(
        dir.join("node_modules/@octokit/openapi").is_dir(),
        "run: npm ci --prefix tests/openapi"
    );
    let rec_dir = tempfile::tempdir().unwrap();
    let record = rec_dir.path().join("exchanges.jsonl");
    let pools = [pool("small", &["self-hosted", "small"]), airlock_pool_org()];
    let e = env_with(
        &pools,
        "1s",
        Faults::default(),
        true,
        &runner_bin(),
        airlock_ghsim::SimConfig {
            record: Some(record.clone()),
            ..Default::default()
        },
    )
    .await;
    e.submit(
        "octo/hello",
        &[("a", &["small"], &["true"]), ("b", &["small"], &["exit 1"])],
    );
    e.submit("octo/other", &[("c", &["org"], &["true"])]);
    e.wait_all_done(Duration::from_secs(60)).await;
    // Errors GitHub documents: a 404 and a 409 and a 422.
    let c = airlock_github::Client::new(
        &e.sim.as_ref().unwrap().url,
        airlock_github::Credentials::Token(TOKEN.into()),
        Default::default(),
    )
    .unwrap();
    let scope = airlock_core::Scope::parse("repo:octo/hello").unwrap();
    let _ = c.get_runner(&scope, 999_999).await;
    let jit = c
        .generate_jitconfig(&scope, "airlock-small-x", 1, &["small".into()])
        .await
        .unwrap();
    let _ = c
        .generate_jitconfig(&scope, "airlock-small-x", 1, &["small".into()])
        .await;
    c.delete_runner(&scope, jit.runner_id).await.unwrap();
    e.shutdown().await;
    let out = std::process::Command::new("node")
        .arg(dir.join("validate.mjs"))
        .arg(&record)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "nonconforming exchanges:\n{text}");
    for op in [
        "POST /repos/{owner}/{repo}/actions/runners/generate-jitconfig",
        "GET /repos/{owner}/{repo}/actions/runners",
        "DELETE /repos/{owner}/{repo}/actions/runners/{runner_id}",
        "GET /repos/{owner}/{repo}/actions/runs",
        "GET /repos/{owner}/{repo}/actions/runs/{run_id}/jobs",
        "GET /orgs/{org}/repos",
        "GET /orgs/{org}/actions/runners",
        "webhook workflow_job.queued",
        "webhook workflow_job.in_progress",
        "webhook workflow_job.completed",
    ] {
        assert!(text.contains(op), "{op} was not exercised:\n{text}");
    }
}

fn airlock_pool_org() -> Pool<'static> {
    Pool {
        scope: "org:octo",
        ..pool("org", &["self-hosted", "org"])
    }
}
