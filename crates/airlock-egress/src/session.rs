//! A sandbox's egress session (who it is, which link and address, the policy it was started
//! with) and its report (every destination it asked for or reached), and their file: one per
//! sandbox under the egress directory, rewritten whole (write, then rename) so a `kill -9` at
//! any moment leaves either the old or the new one.
//!
//! It must never hold anything secret: a report is for the operator and outlives the job.
//! (What a report is lives in `airlock_core::egress::report`, beside the policy.)

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use airlock_core::egress::EgressPolicy;
use airlock_net::rules::Named;
use serde::{Deserialize, Serialize};

pub use airlock_core::egress::report::{Destination, Protocol, Report, Verdict};

/// What a backend tells the resolver of a sandbox when it makes its link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The sandbox's id (the file's name).
    pub id: String,
    /// Its backend's owner key for the link (`tag/id`): which backend instance it belongs to.
    pub owner: String,
    /// The host side of its link (`airl…`), which the nftables maps are keyed by.
    pub link: String,
    /// The sandbox's address on that link: where its queries come from.
    pub addr: Ipv4Addr,
    /// Its pool, for metrics; `None` outside a daemon.
    #[serde(default)]
    pub pool: Option<String>,
    pub policy: EgressPolicy,
    /// When it was attached (ms since the epoch).
    pub since_ms: i64,
}

/// A session's file: the session, its report, and the named addresses it opened in nftables
/// (so that detaching after a restart removes them too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFile {
    pub session: Session,
    #[serde(default)]
    pub report: Report,
    #[serde(default)]
    pub opened: BTreeSet<Named>,
    /// Bytes out and back of each counted flow (`tcp 1.2.3.4:22`) as last added to the report.
    #[serde(default)]
    pub flows: std::collections::BTreeMap<String, [u64; 2]>,
}

/// Where session `id`'s file is in `dir`.
pub fn path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

/// Writes `f` to `to` whole: a temporary file beside it, then a rename.
pub fn write(to: &Path, f: &SessionFile) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = to.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(f).map_err(std::io::Error::other)?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    out.write_all(&body)?;
    out.sync_data()?;
    drop(out);
    std::fs::rename(&tmp, to)
}

/// Reads one session file; the error names the file and what is wrong with it.
pub fn read(p: &Path) -> Result<SessionFile, String> {
    let body = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_slice(&body).map_err(|e| format!("{}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_file_is_written_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = SessionFile {
            session: Session {
                id: "s1".into(),
                owner: "t/s1".into(),
                link: "airl000000001".into(),
                addr: "10.251.0.2".parse().unwrap(),
                pool: Some("small".into()),
                policy: EgressPolicy {
                    proxy: None,
                    mode: airlock_core::egress::EgressMode::Block,
                    allow: vec![airlock_core::egress::Allow::parse("*.example.com:443").unwrap()],
                },
                since_ms: 1,
            },
            report: Report {
                destinations: vec![Destination {
                    name: Some("x.example.com".into()),
                    addr: None,
                    port: 53,
                    protocol: Protocol::Dns,
                    verdict: Verdict::Allowed,
                    reason: None,
                    answers: vec![],
                    bytes_out: 0,
                    bytes_in: 0,
                    count: 1,
                    first_ms: 2,
                    last_ms: 2,
                }],
            },
            opened: [Named {
                addr: "198.18.0.7".parse().unwrap(),
                port: Some(443),
            }]
            .into(),
            flows: [("tcp 1.2.3.4:22".to_string(), [10, 20])].into(),
        };
        let p = path(dir.path(), "s1");
        write(&p, &f).unwrap();
        assert_eq!(read(&p).unwrap(), f);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&p, b"{\"session\": 1}").unwrap();
        let err = read(&p).unwrap_err();
        assert!(err.contains("s1.json"), "{err}");
    }
}
