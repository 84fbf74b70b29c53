//! A sandbox's egress session (who it is, which link and address, the policy it was started
//! with) and its report (every destination it asked for or reached), and their file: one per
//! sandbox under the egress directory, rewritten whole (write, then rename) so a `kill -9` at
//! any moment leaves either the old or the new one.
//!
//! It must never hold anything secret: a report is for the operator and outlives the job.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use airlock_core::egress::EgressPolicy;
use airlock_net::rules::Named;
use serde::{Deserialize, Serialize};

/// What a backend tells the resolver of a sandbox when it makes its link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The sandbox's id (the file's name).
    pub id: String,
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

/// How a destination was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// A question to airlock's resolver: the name and what it answered.
    Dns,
    Tcp,
    Udp,
}

/// What happened to it, from best to worst (a destination seen several times keeps its worst).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The policy let it through.
    Allowed,
    /// Let through only because the pool is in audit mode: block mode would stop it.
    Audit,
    /// The policy stopped it.
    Blocked,
}

/// One destination of one sandbox, summed over every time it was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// The name asked for (resolver, `CONNECT`, `Host`, TLS SNI); `None`: a bare address.
    pub name: Option<String>,
    /// The address reached; `None` for a DNS question.
    pub addr: Option<IpAddr>,
    pub port: u16,
    pub protocol: Protocol,
    pub verdict: Verdict,
    /// Why it was blocked or would be, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a DNS question: the addresses answered (after the policy took out forbidden ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<IpAddr>,
    #[serde(default)]
    pub bytes_out: u64,
    #[serde(default)]
    pub bytes_in: u64,
    /// How many times (questions, connections).
    pub count: u64,
    pub first_ms: i64,
    pub last_ms: i64,
}

impl Destination {
    fn key(&self) -> (Option<&str>, Option<IpAddr>, u16, Protocol) {
        (self.name.as_deref(), self.addr, self.port, self.protocol)
    }
}

/// Everything one sandbox asked for or reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub destinations: Vec<Destination>,
}

impl Report {
    /// Folds one sighting into the report: a destination already there (same name, address,
    /// port, protocol) has its count, bytes and times added to, and keeps its worst verdict.
    pub fn record(&mut self, d: Destination) {
        if let Some(old) = self.destinations.iter_mut().find(|o| o.key() == d.key()) {
            old.count += d.count;
            old.bytes_out += d.bytes_out;
            old.bytes_in += d.bytes_in;
            old.first_ms = old.first_ms.min(d.first_ms);
            old.last_ms = old.last_ms.max(d.last_ms);
            if d.verdict > old.verdict {
                old.verdict = d.verdict;
                old.reason = d.reason;
            }
            for a in d.answers {
                if !old.answers.contains(&a) {
                    old.answers.push(a);
                }
            }
            return;
        }
        self.destinations.push(d);
    }

    /// How many sightings were blocked.
    pub fn blocked(&self) -> u64 {
        self.destinations
            .iter()
            .filter(|d| d.verdict == Verdict::Blocked)
            .map(|d| d.count)
            .sum()
    }
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

    fn dest(name: &str, verdict: Verdict, t: i64) -> Destination {
        Destination {
            name: Some(name.into()),
            addr: None,
            port: 53,
            protocol: Protocol::Dns,
            verdict,
            reason: (verdict != Verdict::Allowed).then(|| "not listed".into()),
            answers: vec![],
            bytes_out: 10,
            bytes_in: 20,
            count: 1,
            first_ms: t,
            last_ms: t,
        }
    }

    #[test]
    fn sightings_of_one_destination_are_summed_and_keep_the_worst_verdict() {
        let mut r = Report::default();
        r.record(dest("a.example", Verdict::Allowed, 5));
        r.record(dest("a.example", Verdict::Blocked, 3));
        r.record(dest("a.example", Verdict::Allowed, 9));
        r.record(dest("b.example", Verdict::Audit, 4));
        assert_eq!(r.destinations.len(), 2);
        let a = &r.destinations[0];
        assert_eq!((a.count, a.bytes_out, a.bytes_in), (3, 30, 60));
        assert_eq!((a.first_ms, a.last_ms), (3, 9));
        assert_eq!(a.verdict, Verdict::Blocked);
        assert_eq!(a.reason.as_deref(), Some("not listed"));
        assert_eq!(r.blocked(), 3);
    }

    #[test]
    fn a_session_file_is_written_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = SessionFile {
            session: Session {
                id: "s1".into(),
                link: "airl000000001".into(),
                addr: "10.251.0.2".parse().unwrap(),
                pool: Some("small".into()),
                policy: EgressPolicy {
                    mode: airlock_core::egress::EgressMode::Block,
                    allow: vec![airlock_core::egress::Allow::parse("*.example.com:443").unwrap()],
                },
                since_ms: 1,
            },
            report: Report {
                destinations: vec![dest("x.example.com", Verdict::Allowed, 2)],
            },
            opened: [Named {
                addr: "198.18.0.7".parse().unwrap(),
                port: Some(443),
            }]
            .into(),
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
