//! The config disk: what the host tells the guest, and what the guest reports back.
//!
//! Layout of the disk (raw, [`CONFIG_DISK_SIZE`] bytes, the guest's [`CONFIG_DEVICE`]):
//! - host to guest: a UTF-8 JSON [`GuestConfig`] at offset 0, NUL-padded to the disk size. The
//!   agent reads it once, then overwrites the whole disk with zeros and flushes it, so the
//!   runner's just-in-time secret does not outlive the boot on the host's file.
//! - guest to host: a JSON [`GuestResult`] at offset 0, NUL-padded to [`RESULT_SIZE`] bytes, written
//!   and flushed just before the guest powers off. A disk that is still all zeros means the guest
//!   never got that far (a stalled boot, a kernel panic); one that still holds the config means it
//!   never read it.
//!
//! This module does no I/O and must never print or `Debug`-format the secret: [`Secret`] redacts
//! itself, and nothing here logs.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The only schema version this agent understands.
pub const CONFIG_VERSION: u32 = 1;
/// Size of the config disk the host creates (the JSON is NUL-padded to this).
pub const CONFIG_DISK_SIZE: usize = 1 << 20;
/// Size of the result record the guest writes at offset 0 of the config disk.
pub const RESULT_SIZE: usize = 4096;
/// Where the guest finds the config disk: the second virtio-blk drive.
pub const CONFIG_DEVICE: &str = "/dev/vdb";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config disk holds no JSON document (it is all zeros)")]
    Empty,
    #[error("config disk is not UTF-8 JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("config is {len} bytes, more than the {max}-byte config disk")]
    TooLarge { len: usize, max: usize },
    #[error("config version {found} is not supported (this agent reads version {CONFIG_VERSION})")]
    Version { found: u32 },
    #[error("config field {field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("result record is not JSON (the guest may never have read its config): {0}")]
    Json(#[from] serde_json::Error),
    #[error("result record is {len} bytes, more than {RESULT_SIZE}")]
    TooLarge { len: usize },
}

/// A string that never shows itself in `Debug` output.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Overwrites the secret's bytes with zeros and empties it.
    pub fn wipe(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.fill(0);
        // Keep the zeroing from being optimised away as a dead store before the free.
        std::hint::black_box(&bytes);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes, redacted>)", self.0.len())
    }
}

/// Everything the guest needs to turn itself into one job's runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    pub version: u32,
    pub hostname: String,
    pub root: RootSpec,
    /// `None`: no network device, no networking.
    pub net: Option<NetSpec>,
    pub runner: RunnerSpec,
    /// The runner's just-in-time configuration, handed to it as `ACTIONS_RUNNER_INPUT_JITCONFIG`.
    pub jit: Secret,
    /// Start `dockerd` (`/usr/sbin` in Debian, or `/usr/bin`; if the image has it) before the runner.
    #[serde(default)]
    pub docker: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootSpec {
    /// The ext4 root filesystem's block device, e.g. `/dev/vda`.
    pub device: String,
    /// `None`: `device` itself is writable (e.g. QEMU's qcow2 overlay). `Some(dev)`: `device` is
    /// mounted read-only and an overlayfs puts its upper and work directories on the ext4 `dev`.
    #[serde(default)]
    pub writable_layer: Option<String>,
    /// Grow the writable ext4 online to its device's size before use.
    #[serde(default)]
    pub grow: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    /// The guest's address on `eth0`.
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerSpec {
    /// Absolute path of the program to run (no arguments).
    pub command: String,
    /// The user to run it as, looked up in the image's `/etc/passwd`.
    pub user: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl GuestConfig {
    /// The config disk's contents: the JSON document NUL-padded to [`CONFIG_DISK_SIZE`].
    pub fn to_disk_bytes(&self) -> Result<Vec<u8>, ConfigError> {
        self.validate()?;
        let mut bytes = serde_json::to_vec(self)?;
        if bytes.len() >= CONFIG_DISK_SIZE {
            return Err(ConfigError::TooLarge {
                len: bytes.len(),
                max: CONFIG_DISK_SIZE,
            });
        }
        bytes.resize(CONFIG_DISK_SIZE, 0);
        Ok(bytes)
    }

    /// Parses and validates the config disk's contents (anything after the first NUL is padding).
    pub fn from_disk_bytes(bytes: &[u8]) -> Result<GuestConfig, ConfigError> {
        let json = until_nul(bytes);
        if json.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(ConfigError::Empty);
        }
        let config: GuestConfig = serde_json::from_slice(json)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.version != CONFIG_VERSION {
            return Err(ConfigError::Version {
                found: self.version,
            });
        }
        let invalid = |field, problem: &str| {
            Err(ConfigError::Invalid {
                field,
                problem: problem.to_string(),
            })
        };
        let h = &self.hostname;
        if h.is_empty()
            || h.len() > 63
            || h.starts_with('-')
            || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return invalid("hostname", "expected 1-63 of a-z, A-Z, 0-9 and '-'");
        }
        if !is_device_path(&self.root.device) {
            return invalid("root.device", "expected a path under /dev/");
        }
        if let Some(layer) = &self.root.writable_layer {
            if !is_device_path(layer) || *layer == self.root.device {
                return invalid(
                    "root.writable_layer",
                    "expected null or a path under /dev/ other than root.device",
                );
            }
        }
        if let Some(net) = &self.net {
            if net.prefix == 0 || net.prefix > 32 {
                return invalid("net.prefix", "expected 1..=32");
            }
        }
        let r = &self.runner;
        if !r.command.starts_with('/') || r.command.contains('\0') {
            return invalid("runner.command", "expected an absolute path");
        }
        if !is_user_name(&r.user) {
            return invalid(
                "runner.user",
                "expected a user name: a-z or '_' first, then a-z, 0-9, '_' or '-' (at most 32)",
            );
        }
        for (k, v) in &r.env {
            let reserved = ["ACTIONS_RUNNER_INPUT_JITCONFIG", "HOME", "USER", "LOGNAME"];
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return invalid("runner.env", "names must be non-empty without '=' or NUL");
            }
            if reserved.contains(&k.as_str()) {
                return invalid(
                    "runner.env",
                    "HOME, USER, LOGNAME and the JIT variable are set by the agent",
                );
            }
        }
        if self.jit.expose().is_empty() || self.jit.expose().contains('\0') {
            return invalid("jit", "expected a non-empty string without NUL");
        }
        Ok(())
    }
}

/// How the guest's run ended, written back onto the config disk.
///
/// Serialised externally tagged: `{"exit_code":3}`, `{"signal":9}`, `{"error":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum GuestResult {
    /// The runner exited with this status.
    ExitCode(i32),
    /// The runner was killed by this signal.
    Signal(i32),
    /// The agent failed before or while running the runner.
    Error(String),
}

impl GuestResult {
    /// The record as written to the disk: JSON NUL-padded to [`RESULT_SIZE`] bytes. An error
    /// message too long to fit is cut (at a character boundary) rather than lost.
    pub fn to_record(&self) -> Vec<u8> {
        let encode = |r: &GuestResult| serde_json::to_vec(r).unwrap_or_default();
        let mut bytes = encode(self);
        if bytes.len() >= RESULT_SIZE {
            if let GuestResult::Error(msg) = self {
                let mut cut = msg.clone();
                while encode(&GuestResult::Error(cut.clone())).len() >= RESULT_SIZE {
                    let keep = cut.len() * 3 / 4;
                    let mut at = keep;
                    while !cut.is_char_boundary(at) {
                        at -= 1;
                    }
                    cut.truncate(at);
                }
                bytes = encode(&GuestResult::Error(cut));
            }
        }
        bytes.resize(RESULT_SIZE, 0);
        bytes
    }

    /// Reads the record back from the first bytes of the disk. `Ok(None)`: nothing was written
    /// (the region is all zeros), so the guest never finished.
    pub fn from_record(bytes: &[u8]) -> Result<Option<GuestResult>, ResultError> {
        let head = &bytes[..bytes.len().min(RESULT_SIZE)];
        let json = until_nul(head);
        if json.is_empty() {
            return Ok(None);
        }
        if json.len() == RESULT_SIZE {
            return Err(ResultError::TooLarge { len: json.len() });
        }
        Ok(Some(serde_json::from_slice(json)?))
    }
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

fn is_device_path(p: &str) -> bool {
    p.len() > 5 && p.starts_with("/dev/") && !p.contains("..") && !p.contains('\0')
}

fn is_user_name(u: &str) -> bool {
    let mut bytes = u.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_lowercase() || b == b'_' => {}
        _ => return false,
    }
    u.len() <= 32
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"version":1,
 "hostname":"airlock-abc",
 "root":{"device":"/dev/vda","writable_layer":null,"grow":true},
 "net":{"address":"10.213.0.6","prefix":30,"gateway":"10.213.0.5","dns":["192.0.2.53"]},
 "runner":{"command":"/home/runner/airlock-runner","user":"runner","env":{"KEY":"VALUE"}},
 "jit":"s3cret-jit",
 "docker":false}"#;

    fn example() -> GuestConfig {
        GuestConfig::from_disk_bytes(EXAMPLE.as_bytes()).unwrap()
    }

    #[test]
    fn parses_the_documented_example() {
        let c = example();
        assert_eq!(c.hostname, "airlock-abc");
        assert_eq!(c.root.device, "/dev/vda");
        assert_eq!(c.root.writable_layer, None);
        assert!(c.root.grow);
        let net = c.net.as_ref().unwrap();
        assert_eq!(net.address, Ipv4Addr::new(10, 213, 0, 6));
        assert_eq!(net.prefix, 30);
        assert_eq!(net.dns, vec![Ipv4Addr::new(192, 0, 2, 53)]);
        assert_eq!(c.runner.env["KEY"], "VALUE");
        assert_eq!(c.jit.expose(), "s3cret-jit");
        assert!(!c.docker);
    }

    #[test]
    fn disk_round_trip_is_nul_padded() {
        let c = example();
        let disk = c.to_disk_bytes().unwrap();
        assert_eq!(disk.len(), CONFIG_DISK_SIZE);
        assert_eq!(*disk.last().unwrap(), 0);
        assert_eq!(GuestConfig::from_disk_bytes(&disk).unwrap(), c);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = example();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn wipe_empties_the_secret() {
        let mut s = Secret::new("abc");
        s.wipe();
        assert_eq!(s.expose(), "");
    }

    #[test]
    fn rejects_bad_configs_naming_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            (r#""version":1"#, r#""version":2"#, "version 2"),
            (r#""airlock-abc""#, r#""-bad host""#, "hostname"),
            (r#""/dev/vda""#, r#""vda""#, "root.device"),
            (
                r#""writable_layer":null"#,
                r#""writable_layer":"/dev/vda""#,
                "root.writable_layer",
            ),
            (r#""prefix":30"#, r#""prefix":33"#, "net.prefix"),
            (
                r#""/home/runner/airlock-runner""#,
                r#""airlock-runner""#,
                "runner.command",
            ),
            (r#""user":"runner""#, r#""user":"Runner x""#, "runner.user"),
            (r#""KEY":"VALUE""#, r#""HOME":"/x""#, "runner.env"),
            (r#""s3cret-jit""#, r#""""#, "jit"),
            (
                r#""docker":false"#,
                r#""docker":false,"extra":1"#,
                "unknown field",
            ),
        ];
        let mut failures = Vec::new();
        for (from, to, expect) in cases {
            assert!(EXAMPLE.contains(from), "{from}");
            let text = EXAMPLE.replace(from, to);
            match GuestConfig::from_disk_bytes(text.as_bytes()) {
                Ok(_) => failures.push(format!("{to}: accepted")),
                Err(e) if !e.to_string().contains(expect) => {
                    failures.push(format!("{to}: {e} (expected mention of {expect})"))
                }
                Err(_) => {}
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn empty_disk_is_its_own_error() {
        let zeros = vec![0u8; 4096];
        assert!(matches!(
            GuestConfig::from_disk_bytes(&zeros),
            Err(ConfigError::Empty)
        ));
    }

    #[test]
    fn results_encode_as_documented() {
        let cases = [
            (GuestResult::ExitCode(3), r#"{"exit_code":3}"#),
            (GuestResult::Signal(9), r#"{"signal":9}"#),
            (
                GuestResult::Error("no root".into()),
                r#"{"error":"no root"}"#,
            ),
        ];
        for (r, json) in cases {
            let rec = r.to_record();
            assert_eq!(rec.len(), RESULT_SIZE);
            assert_eq!(&rec[..json.len()], json.as_bytes());
            assert!(rec[json.len()..].iter().all(|&b| b == 0));
            assert_eq!(GuestResult::from_record(&rec).unwrap(), Some(r));
        }
    }

    #[test]
    fn zero_record_means_never_finished_and_config_means_never_read() {
        assert_eq!(GuestResult::from_record(&[0u8; RESULT_SIZE]).unwrap(), None);
        let disk = example().to_disk_bytes().unwrap();
        assert!(GuestResult::from_record(&disk).is_err());
    }

    #[test]
    fn long_error_is_cut_to_fit() {
        let r = GuestResult::Error("é".repeat(5000));
        let rec = r.to_record();
        assert_eq!(rec.len(), RESULT_SIZE);
        match GuestResult::from_record(&rec).unwrap() {
            Some(GuestResult::Error(m)) => assert!(!m.is_empty() && m.len() < 4096),
            other => panic!("{other:?}"),
        }
    }
}
