//! Delivers `workflow_job` webhooks as GitHub does: POST with `X-GitHub-Event`,
//! `X-GitHub-Delivery`, `X-GitHub-Hook-ID`, `X-Hub-Signature-256` and a Hookshot user agent,
//! waiting at most 10 s for an answer and never retrying on its own. The fault switches act here.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;

use crate::Sim;

pub(crate) struct HookEvent {
    pub body: Vec<u8>,
    pub drop: bool,
}

fn guid() -> String {
    let b: [u8; 16] = rand::thread_rng().gen();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

pub(crate) async fn deliver(
    sim: Arc<Sim>,
    mut rx: mpsc::UnboundedReceiver<HookEvent>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client builds");
    let mut held: Option<HookEvent> = None;
    let mut n: u64 = 0;
    let slots = Arc::new(tokio::sync::Semaphore::new(
        sim.cfg.webhook_concurrency.max(1),
    ));
    loop {
        // A held event (reordering) is released after a short wait if nothing else comes.
        let next = if held.is_some() {
            tokio::select! {
                _ = crate::stopped(&mut stop) => return,
                r = tokio::time::timeout(Duration::from_millis(300), rx.recv()) => match r {
                    Ok(ev) => ev,
                    Err(_) => { let ev = held.take(); send_one(&sim, &http, ev).await; continue; }
                },
            }
        } else {
            tokio::select! {
                _ = crate::stopped(&mut stop) => return,
                ev = rx.recv() => ev,
            }
        };
        let Some(ev) = next else { return };
        n += 1;
        let faults = sim.faults();
        if ev.drop || (faults.drop_every > 0 && n.is_multiple_of(faults.drop_every as u64)) {
            sim.stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .webhooks_dropped += 1;
            continue;
        }
        if faults.reorder {
            match held.take() {
                None => {
                    held = Some(ev);
                    continue;
                }
                Some(first) => {
                    send_one(&sim, &http, Some(ev)).await;
                    send_one(&sim, &http, Some(first)).await;
                    continue;
                }
            }
        }
        if sim.cfg.webhook_concurrency > 1 {
            // Up to `webhook_concurrency` in flight; each delivery on a task of its own.
            let permit = slots.clone().acquire_owned().await;
            let (sim, http) = (sim.clone(), http.clone());
            tokio::spawn(async move {
                send_one(&sim, &http, Some(ev)).await;
                drop(permit);
            });
        } else {
            send_one(&sim, &http, Some(ev)).await;
        }
    }
}

async fn send_one(sim: &Sim, http: &reqwest::Client, ev: Option<HookEvent>) {
    let Some(ev) = ev else { return };
    let Some(url) = sim.webhook_url() else { return };
    let url = url.as_str();
    let faults = sim.faults();
    if faults.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.delay_ms)).await;
    }
    let id = guid();
    let sig = airlock_github::webhook::sign(&sim.cfg.webhook_secret, &ev.body);
    let times = if faults.duplicate { 2 } else { 1 };
    for _ in 0..times {
        let r = http
            .post(url)
            .header("content-type", "application/json")
            .header("user-agent", "GitHub-Hookshot/ghsim")
            .header("x-github-event", "workflow_job")
            .header("x-github-delivery", &id)
            .header("x-github-hook-id", "1")
            .header("x-github-hook-installation-target-type", "repository")
            .header("x-hub-signature-256", &sig)
            .body(ev.body.clone())
            .send()
            .await;
        let mut st = sim.stats.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Ok(resp) if resp.status().is_success() => st.webhooks_sent += 1,
            Ok(resp) => {
                st.webhooks_failed += 1;
                tracing::warn!(status = %resp.status(), "webhook delivery refused");
            }
            Err(e) => {
                st.webhooks_failed += 1;
                tracing::warn!(error = %e, "webhook delivery failed");
            }
        }
    }
}
