//! The stand-in runner's JIT config decoding, as a library so that the fuzz target `jit` and its
//! replay test (`fuzz/`) run the very code the binary does. It must never print or log what it
//! decodes: the token is the runner's credential.

use base64::Engine;
use serde_json::Value;

/// Who the runner is, as its JIT config says. No `Debug`: it holds the runner's token.
pub struct Identity {
    pub name: String,
    pub server: String,
    pub token: String,
}

fn b64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("not base64: {e}"))
}

/// GitHub's encoding: base64 of a JSON map from file name to base64 file content.
pub fn decode_jit(encoded: &str) -> Result<Identity, String> {
    let files: serde_json::Map<String, Value> =
        serde_json::from_slice(&b64(encoded)?).map_err(|e| format!("not a JSON map: {e}"))?;
    let file = |name: &str| -> Result<Value, String> {
        let v = files
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no {name} file"))?;
        serde_json::from_slice(&b64(v)?).map_err(|e| format!("{name} is not JSON: {e}"))
    };
    let runner = file(".runner")?;
    let creds = file(".credentials")?;
    file(".credentials_rsaparams")?;
    let s = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("missing {k}"))
    };
    Ok(Identity {
        name: s(&runner, "agentName")?,
        server: s(&runner, "serverUrl")?.trim_end_matches('/').to_string(),
        token: s(creds.get("data").unwrap_or(&Value::Null), "token")?,
    })
}
