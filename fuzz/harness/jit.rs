//! The `jit` target's checks, shared by `fuzz_targets/jit.rs` and the replay test
//! `crates/airlock-runner/tests/fuzz_corpus.rs`, so that the replay runs exactly what fuzzing runs.
//!
//! airlock itself never decodes a JIT config: the client hands GitHub's `encoded_jit_config` on
//! as an opaque string (its JSON answer is the `github_responses` target's). The one decoder is
//! the stand-in runner's, `airlock_runner::decode_jit`. Checked, for an input:
//! - as an encoded config (invalid UTF-8 replaced): decoding never panics, and an identity it
//!   decodes has no trailing `/` on its server and survives encoding again;
//! - as `NAME\nSERVER\nTOKEN` (cut at its first two newlines): the config ghsim would make for
//!   that runner (encoded here as `encode_jit` in ghsim's `http.rs` does) decodes to exactly that
//!   name, server (less trailing `/`) and token, with or without whitespace around it.
//!
//! Nothing here prints a decoded token beyond an assertion's message about fuzzed bytes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(id) = airlock_runner::decode_jit(&text) {
        assert!(!id.server.ends_with('/'), "server {:?}", id.server);
        // What decoded, encoded again, decodes to the same identity.
        round_trip(&id.name, &id.server, &id.token);
    }

    let mut parts = text.splitn(3, '\n');
    let name = parts.next().unwrap_or_default();
    let server = parts.next().unwrap_or_default();
    let token = parts.next().unwrap_or_default();
    round_trip(name, server, token);
}

/// The config ghsim would make for this runner decodes to exactly its name, server (less any
/// trailing `/`) and token, also with the whitespace an environment variable may add around it.
fn round_trip(name: &str, server: &str, token: &str) {
    let encoded = encode(name, server, token);
    for encoded in [encoded.clone(), format!(" {encoded}\n")] {
        let id = airlock_runner::decode_jit(&encoded)
            .unwrap_or_else(|e| panic!("ghsim's encoding refused: {e}"));
        assert_eq!(id.name, name);
        assert_eq!(id.server, server.trim_end_matches('/'));
        assert!(id.token == token, "the token changed");
    }
}

/// A JIT config as ghsim makes one: base64 of a JSON map of base64 JSON files.
pub fn encode(name: &str, server: &str, token: &str) -> String {
    let b64 = |v: &Value| STANDARD.encode(v.to_string());
    let runner = json!({
        "agentId": 1, "agentName": name, "poolId": 1, "poolName": "Default",
        "serverUrl": server, "gitHubUrl": "https://github.example.invalid/octo/hello",
        "workFolder": "_work", "ephemeral": true, "useV2Flow": true
    });
    let creds = json!({
        "scheme": "OAuth",
        "data": { "clientId": "ghsim-1", "authorizationUrl": format!("{server}/_ghsim/token"),
                  "requireFipsCryptography": "False", "token": token }
    });
    let rsaparams = json!({ "d": "00", "modulus": "00", "exponent": "AQAB" });
    let files = json!({
        ".runner": b64(&runner), ".credentials": b64(&creds), ".credentials_rsaparams": b64(&rsaparams)
    });
    STANDARD.encode(files.to_string())
}
