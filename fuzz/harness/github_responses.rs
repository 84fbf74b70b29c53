//! The `github_responses` target's checks, shared by `fuzz_targets/github_responses.rs` and the
//! replay test `crates/airlock-github/tests/fuzz_corpus.rs`, so that the replay runs exactly what
//! fuzzing runs.
//!
//! An input is a response body, decoded as every answer the client reads
//! (`airlock_github::fuzzing::decode`, the client's own decoding of its private models), and,
//! as text, a timestamp for `airlock_github::parse_time`. Checked: nothing panics; what decodes
//! says what the JSON says (ids and names read independently with `serde_json::Value`); observed
//! jobs keep `webhook.rs`'s rules (normalised labels, no empty runner name); a timestamp parsed
//! lies within RFC 3339's years 0000 to 9999.
//!
//! The link (pagination) and rate-limit header parsing live in private functions of
//! `client.rs` and are not reached here.

use airlock_core::{JobStatus, Labels};
use airlock_github::fuzzing::{decode, Answer, Decoded};
use serde_json::Value;

/// 0000-01-01T00:00:00+23:59 and 9999-12-31T23:59:59.999…-23:59, in Unix ms.
const EARLIEST_MS: i64 = -62_167_219_200_000 - 86_400_000;
const LATEST_MS: i64 = 253_402_300_800_000 + 86_400_000;

pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(ms) = airlock_github::parse_time(&text) {
        assert!(
            (EARLIEST_MS..LATEST_MS).contains(&ms),
            "{text:?} is {ms} ms"
        );
    }
    for answer in Answer::ALL {
        let Ok(decoded) = decode(answer, data) else {
            continue;
        };
        observed(&decoded);
        if let Some(v) = json(data) {
            agrees(answer, &decoded, &v);
        }
    }
}

/// What the client hands on keeps the rules `webhook.rs` keeps for the same jobs.
fn observed(decoded: &Decoded) {
    if let Decoded::Jobs(jobs) = decoded {
        for job in jobs {
            match job {
                Ok(job) => {
                    assert_eq!(job.repo, "octo/hello");
                    assert_eq!(Labels::new(job.labels.iter()), job.labels);
                    assert_ne!(job.runner_name.as_deref(), Some(""));
                }
                Err(e) => assert!(e.contains("unknown status"), "{e}"),
            }
        }
    }
}

/// A record's field as JSON, or `None` when the record is not an object: serde also takes a
/// struct as an array of its fields in order (`[0]` is an installation), which GitHub never
/// sends and these checks do not follow.
fn field<'v>(record: &'v Value, key: &str) -> Option<&'v Value> {
    record.is_object().then(|| &record[key])
}

/// What decoded says what the JSON says, for every record that is an object.
fn agrees(answer: Answer, decoded: &Decoded, v: &Value) {
    let list = |key: &str| -> Option<Vec<Value>> {
        Some(field(v, key)?.as_array().cloned().unwrap_or_default())
    };
    let records =
        |key: &str, n: usize| -> Vec<Value> { list(key).unwrap_or_else(|| vec![Value::Null; n]) };
    match decoded {
        Decoded::Runners(runners) => {
            let want = match answer {
                Answer::RunnerList => records("runners", runners.len()),
                Answer::Jit => vec![field(v, "runner").cloned().unwrap_or_default()],
                _ => vec![v.clone()],
            };
            assert_eq!(runners.len(), want.len());
            for ((id, name, status, busy, labels), w) in runners.iter().zip(&want) {
                if !w.is_object() {
                    continue;
                }
                assert_eq!(Some(*id), w["id"].as_u64());
                assert_eq!(Some(name.as_str()), w["name"].as_str());
                assert_eq!(Some(status.as_str()), w["status"].as_str());
                assert_eq!(Some(*busy), w["busy"].as_bool());
                let want = w
                    .get("labels")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                assert_eq!(labels.len(), want);
            }
        }
        Decoded::RunnerGroups(groups) => {
            let want = records("runner_groups", groups.len());
            assert_eq!(groups.len(), want.len());
            for ((id, name, default), w) in groups.iter().zip(&want) {
                if !w.is_object() {
                    continue;
                }
                assert_eq!(Some(*id), w["id"].as_u64());
                assert_eq!(Some(name.as_str()), w["name"].as_str());
                let want = w.get("default").and_then(Value::as_bool);
                assert_eq!(*default, want.unwrap_or(false));
            }
        }
        Decoded::RunIds(ids) => {
            let want = records("workflow_runs", ids.len());
            assert_eq!(ids.len(), want.len());
            for (id, w) in ids.iter().zip(&want) {
                if let Some(w) = field(w, "id") {
                    assert_eq!(Some(*id), w.as_u64());
                }
            }
        }
        Decoded::Jobs(jobs) => {
            let want = match answer {
                Answer::Jobs => records("jobs", jobs.len()),
                _ => vec![v.clone()],
            };
            assert_eq!(jobs.len(), want.len());
            for (job, w) in jobs.iter().zip(&want) {
                let Ok(job) = job else { continue };
                if !w.is_object() {
                    continue;
                }
                assert_eq!(Some(job.id), w["id"].as_u64());
                assert_eq!(Some(job.run_id), w["run_id"].as_u64());
                let status = w["status"].as_str().and_then(JobStatus::from_github);
                assert_eq!(status, Some(job.status));
                let labels: Vec<&str> = w
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
                    let want = w[key].as_str().and_then(airlock_github::parse_time);
                    assert_eq!(got, want, "{key}");
                }
            }
        }
        Decoded::Installation(id) => {
            if let Some(w) = field(v, "id") {
                assert_eq!(Some(*id), w.as_u64());
            }
        }
        Decoded::TokenExpiry(at) => {
            if let Some(w) = field(v, "expires_at") {
                assert_eq!(*at, w.as_str().and_then(airlock_github::parse_time));
            }
        }
        Decoded::Repos(names) => {
            let want: Vec<Value> = v.as_array().cloned().unwrap_or_default();
            assert_eq!(names.len(), want.len());
            for (name, w) in names.iter().zip(&want) {
                if let Some(w) = field(w, "full_name") {
                    assert_eq!(Some(name.as_str()), w.as_str());
                }
            }
        }
        Decoded::Message(m) => {
            if let Some(w) = field(v, "message") {
                assert_eq!(m.as_str(), w.as_str().unwrap_or(""));
            }
        }
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
