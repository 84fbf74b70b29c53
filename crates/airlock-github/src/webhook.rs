//! Webhook deliveries: the `X-Hub-Signature-256` check (HMAC-SHA256 of the raw body, compared in
//! constant time) and the events airlock reads. Verification happens before any parsing: an
//! unsigned body is never even decoded.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use airlock_core::JobObservation;

/// GitHub's limit; larger bodies are refused before they are read in full.
pub const MAX_BODY: usize = 25 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("X-Hub-Signature-256 is not of the form sha256=<64 hex digits>")]
    Malformed,
    #[error("X-Hub-Signature-256 does not match the body")]
    Mismatch,
}

/// `sha256=<hex>` of `body` keyed by `secret`, as GitHub sends it.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_sig = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    let given = hex::decode(hex_sig).map_err(|_| SignatureError::Malformed)?;
    if given.len() != 32 {
        return Err(SignatureError::Malformed);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    let want = mac.finalize().into_bytes();
    if bool::from(want[..].ct_eq(&given[..])) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Ping,
    WorkflowJob {
        action: String,
        job: Box<JobObservation>,
    },
    /// Any other event: accepted and ignored.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {event} payload: {detail}")]
pub struct PayloadError {
    pub event: String,
    pub detail: String,
}

#[derive(serde::Deserialize)]
struct WorkflowJobPayload {
    action: String,
    workflow_job: crate::model::Job,
    repository: Repository,
    enterprise: Option<Enterprise>,
}

#[derive(serde::Deserialize)]
struct Repository {
    full_name: String,
}

#[derive(serde::Deserialize)]
struct Enterprise {
    slug: String,
}

/// Decodes an already verified delivery of event type `event` (the `X-GitHub-Event` header).
pub fn parse(event: &str, body: &[u8]) -> Result<Event, PayloadError> {
    let err = |detail: String| PayloadError {
        event: event.to_string(),
        detail,
    };
    match event {
        "ping" => Ok(Event::Ping),
        "workflow_job" => {
            let p: WorkflowJobPayload =
                serde_json::from_slice(body).map_err(|e| err(e.to_string()))?;
            let job = p
                .workflow_job
                .observe(&p.repository.full_name, p.enterprise.map(|e| e.slug))
                .map_err(err)?;
            Ok(Event::WorkflowJob {
                action: p.action,
                job: Box::new(job),
            })
        }
        _ => Ok(Event::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_test_vector() {
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let want = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign(secret, body), want);
        assert_eq!(verify(secret, body, Some(want)), Ok(()));
        assert_eq!(
            verify(secret, b"Hello, World?", Some(want)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", body, Some(want)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(secret, body, None), Err(SignatureError::Missing));
        assert_eq!(
            verify(secret, body, Some("sha1=abc")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(secret, body, Some("sha256=zz")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(secret, body, Some("sha256=abcd")),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn parses_workflow_job_and_refuses_garbage() {
        let body = br#"{"action":"queued","workflow_job":{"id":5,"run_id":9,"status":"queued","conclusion":null,
            "name":"build","labels":["self-hosted","Linux"],"runner_name":null,"created_at":"2024-01-01T00:00:00Z",
            "started_at":"2024-01-01T00:00:00Z","completed_at":null},"repository":{"full_name":"octo/hello"}}"#;
        match parse("workflow_job", body).unwrap() {
            Event::WorkflowJob { action, job } => {
                assert_eq!(action, "queued");
                assert_eq!(job.repo, "octo/hello");
                assert_eq!(
                    job.labels,
                    airlock_core::Labels::new(["self-hosted", "linux"])
                );
                assert_eq!(job.created_at, Some(1_704_067_200_000));
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(parse("push", b"not even json").unwrap(), Event::Other);
        assert_eq!(parse("ping", b"{}").unwrap(), Event::Ping);
        let e = parse("workflow_job", b"{\"action\":\"queued\"}").unwrap_err();
        assert!(e.detail.contains("workflow_job"), "{e}");
        let e = parse("workflow_job", br#"{"action":"x","workflow_job":{"id":1,"run_id":1,"status":"bogus","conclusion":null,"name":"n","runner_name":null},"repository":{"full_name":"a/b"}}"#).unwrap_err();
        assert!(e.detail.contains("bogus"), "{e}");
    }
}
