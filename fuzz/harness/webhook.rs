//! The `webhook` target's checks, shared by `fuzz_targets/webhook.rs` and the replay test
//! `crates/airlock-github/tests/fuzz_corpus.rs`, so that the replay runs exactly what fuzzing runs.
//!
//! An input is `EVENT\nSECRET\nHEADER\nBODY`, cut at its first three newlines (a missing part is
//! empty, a missing header absent; the body may hold newlines), so that seeds stay readable: a
//! delivery as GitHub sends it, with its event name, the secret and the signature header.
//!
//! Checked: the signature check accepts exactly the header that carries the body's HMAC (computed
//! here with `hmac`/`sha2`, not with `webhook::sign`) and classifies every other header as the
//! three errors say; `parse` never panics, for the input's event and for every event airlock
//! handles, and a `workflow_job` it accepts says what the JSON says.

use airlock_core::{JobObservation, JobStatus, Labels};
use airlock_github::webhook::{self, Event, SignatureError};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// The events `webhook::parse` reads, and one it ignores.
const EVENTS: [&str; 3] = ["workflow_job", "ping", "push"];

pub fn check(data: &[u8]) {
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let event = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let secret = parts.next().unwrap_or_default();
    let header = parts.next().map(String::from_utf8_lossy);
    let body = parts.next().unwrap_or_default();

    signatures(secret, body, header.as_deref());
    parse(&event, body);
    for event in EVENTS {
        parse(event, body);
    }
}

fn hmac(secret: &[u8], body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The 32 bytes of a `sha256=<64 hex digits>` header (either case, surrounding whitespace allowed).
fn signature_of(header: &str) -> Option<Vec<u8>> {
    let digits = header.trim().strip_prefix("sha256=")?;
    if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn signatures(secret: &[u8], body: &[u8], header: Option<&str>) {
    let mac = hmac(secret, body);
    let want = match header.map(signature_of) {
        None => Err(SignatureError::Missing),
        Some(None) => Err(SignatureError::Malformed),
        Some(Some(sig)) if sig == mac => Ok(()),
        Some(Some(_)) => Err(SignatureError::Mismatch),
    };
    assert_eq!(
        webhook::verify(secret, body, header),
        want,
        "header {header:?}"
    );

    let good = format!("sha256={}", hex(&mac));
    assert_eq!(webhook::verify(secret, body, Some(&good)), Ok(()));
    assert_eq!(webhook::sign(secret, body), good);
    assert_eq!(
        webhook::verify(secret, body, None),
        Err(SignatureError::Missing)
    );
    // One hex digit off, anywhere.
    let at = "sha256=".len() + usize::from(mac[0]) % 64;
    let mut flipped = good.clone().into_bytes();
    flipped[at] = if flipped[at] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).expect("hex is ASCII");
    assert_eq!(
        webhook::verify(secret, body, Some(&flipped)),
        Err(SignatureError::Mismatch)
    );
    // The same header over a changed body, or under a changed secret.
    if let Some(first) = body.first() {
        let mut other = body.to_vec();
        other[0] = first ^ 1;
        assert_eq!(
            webhook::verify(secret, &other, Some(&good)),
            Err(SignatureError::Mismatch)
        );
    }
    if let Some(first) = secret.first() {
        let mut other = secret.to_vec();
        other[0] = first ^ 1;
        assert_eq!(
            webhook::verify(&other, body, Some(&good)),
            Err(SignatureError::Mismatch)
        );
    }
}

fn parse(event: &str, body: &[u8]) {
    let got = webhook::parse(event, body);
    match (event, got) {
        ("ping", got) => assert_eq!(got, Ok(Event::Ping)),
        ("workflow_job", Ok(Event::WorkflowJob { action, job })) => {
            // Normalised once and for all: labels read back from the store compare equal.
            assert_eq!(Labels::new(job.labels.iter()), job.labels);
            assert_ne!(job.runner_name.as_deref(), Some(""));
            if let Some(v) = json(body) {
                agrees(&action, &job, &v);
            }
        }
        ("workflow_job", Ok(other)) => panic!("workflow_job parsed as {other:?}"),
        ("workflow_job", Err(e)) => {
            assert_eq!(e.event, "workflow_job");
            assert!(!e.detail.is_empty());
        }
        (_, got) => assert_eq!(got, Ok(Event::Other), "event {event:?}"),
    }
}

/// The job says what the JSON says. Only for objects: serde also takes a struct as an array of
/// its fields in order, which GitHub never sends and this check does not follow.
fn agrees(action: &str, job: &JobObservation, v: &Value) {
    let (j, repo) = (&v["workflow_job"], &v["repository"]);
    if !(v.is_object() && j.is_object() && repo.is_object()) {
        return;
    }
    assert_eq!(Some(action), v["action"].as_str());
    assert_eq!(Some(job.repo.as_str()), repo["full_name"].as_str());
    match v.get("enterprise") {
        Some(e @ Value::Object(_)) => assert_eq!(job.enterprise.as_deref(), e["slug"].as_str()),
        None | Some(Value::Null) => assert_eq!(job.enterprise, None),
        Some(_) => {}
    }
    assert_eq!(Some(job.id), j["id"].as_u64());
    assert_eq!(Some(job.run_id), j["run_id"].as_u64());
    assert_eq!(Some(job.name.as_str()), j["name"].as_str());
    let status = j["status"].as_str().and_then(JobStatus::from_github);
    assert_eq!(status, Some(job.status));
    assert_eq!(job.conclusion.as_deref(), j["conclusion"].as_str());
    let labels: Vec<&str> = j
        .get("labels")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(job.labels, Labels::new(&labels));
    for (got, key) in [
        (job.created_at, "created_at"),
        (job.started_at, "started_at"),
        (job.completed_at, "completed_at"),
    ] {
        let want = j.get(key).and_then(Value::as_str);
        assert_eq!(got, want.and_then(airlock_github::parse_time), "{key}");
    }
}

/// `body` as a `serde_json::Value`, to compare with what a typed parse accepted, or `None` when
/// `Value` refuses it. serde_json skips the fields a type does not name without checking their
/// strings' UTF-8 and escapes or their numbers' range, so a typed parse accepts bodies a `Value`
/// refuses; invalid UTF-8 is replaced first (a field read is valid, or the typed parse failed).
pub fn json(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body)
        .or_else(|_| serde_json::from_str(&String::from_utf8_lossy(body)))
        .ok()
}
