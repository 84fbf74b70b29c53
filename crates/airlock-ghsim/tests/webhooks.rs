//! ghsim's webhook delivery: one after another by default, several at once with
//! `webhook_concurrency` (as GitHub's many workers deliver).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use airlock_ghsim::{JobSpec, Sim, SimConfig, Workflow};

/// A webhook receiver that takes 100 ms per delivery; returns its URL, the most deliveries it
/// ever had in flight, and how many it received.
async fn slow_receiver() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let now = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let (n, m, s) = (now.clone(), max.clone(), seen.clone());
    let app = axum::Router::new().route(
        "/webhook",
        axum::routing::post(move || {
            let (n, m, s) = (n.clone(), m.clone(), s.clone());
            async move {
                let in_flight = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(in_flight, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                s.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", l.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (url, max, seen)
}

async fn max_in_flight(concurrency: usize) -> usize {
    let (url, max, seen) = slow_receiver().await;
    let sim = Sim::start(
        SimConfig {
            webhook_url: Some(url),
            webhook_secret: b"s".to_vec(),
            webhook_concurrency: concurrency,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    sim.sim
        .submit(&Workflow {
            repo: "octo/hello".into(),
            name: "CI".into(),
            jobs: (0..8)
                .map(|i| JobSpec {
                    name: format!("j{i}"),
                    labels: vec!["self-hosted".into()],
                    steps: vec!["true".into()],
                    drop_webhooks: false,
                })
                .collect(),
        })
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.load(Ordering::SeqCst) < 8 {
        assert!(tokio::time::Instant::now() < deadline, "deliveries missing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.shutdown().await;
    max.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_serial_by_default_and_concurrent_when_asked() {
    assert_eq!(
        max_in_flight(1).await,
        1,
        "the default delivers one at a time"
    );
    let max = max_in_flight(4).await;
    assert!(
        (2..=4).contains(&max),
        "{max} deliveries in flight with 4 allowed"
    );
}
