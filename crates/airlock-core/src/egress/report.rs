//! A sandbox's egress report: every destination it asked airlock's resolver for or reached,
//! with what the policy did about it. Kept with the job's history in the store; what
//! `airlock egress report` prints and `airlock egress suggest` reads.
//!
//! It must never hold anything secret (no URL paths, no headers, no payload): only names,
//! addresses, ports, counts and times.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

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

/// What audit-mode jobs reached, for `suggest`, from their reports (each report one job):
/// connections by name with their ports; names only asked of the resolver without a port (the
/// port they were used on was not seen); bare addresses with their ports. What was blocked in
/// audit mode (forbidden destinations) is left out: no policy could open it.
pub fn seen(reports: &[Report]) -> Vec<super::Seen> {
    use std::collections::{BTreeMap, BTreeSet};
    /// (name, address, port) of one destination.
    type Key = (Option<String>, Option<IpAddr>, Option<u16>);
    let mut jobs: BTreeMap<Key, u32> = BTreeMap::new();
    for r in reports {
        let reached = r
            .destinations
            .iter()
            .filter(|d| d.verdict != Verdict::Blocked);
        let with_port: BTreeSet<&str> = reached
            .clone()
            .filter(|d| d.protocol != Protocol::Dns)
            .filter_map(|d| d.name.as_deref())
            .collect();
        let mut this: BTreeSet<Key> = BTreeSet::new();
        for d in reached {
            match (&d.name, d.protocol) {
                (Some(n), Protocol::Dns) if !with_port.contains(n.as_str()) => {
                    this.insert((Some(n.clone()), None, None));
                }
                (Some(_), Protocol::Dns) => {}
                (Some(n), _) => {
                    this.insert((Some(n.clone()), None, Some(d.port)));
                }
                (None, _) => {
                    this.insert((None, d.addr, Some(d.port)));
                }
            }
        }
        for k in this {
            *jobs.entry(k).or_default() += 1;
        }
    }
    jobs.into_iter()
        .map(|((name, addr, port), jobs)| super::Seen {
            name,
            addr,
            port,
            jobs,
        })
        .collect()
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
    fn what_jobs_reached_is_counted_once_per_job_and_blocked_destinations_are_left_out() {
        let tcp =
            |name: Option<&str>, addr: Option<&str>, port: u16, verdict: Verdict| Destination {
                name: name.map(Into::into),
                addr: addr.map(|a| a.parse().unwrap()),
                port,
                protocol: Protocol::Tcp,
                verdict,
                ..dest("x", verdict, 1)
            };
        let one = Report {
            destinations: vec![
                dest("pypi.org", Verdict::Audit, 1),
                tcp(Some("pypi.org"), Some("198.18.0.1"), 443, Verdict::Audit),
                dest("only-asked.example", Verdict::Audit, 1),
                dest("meta.example", Verdict::Blocked, 1),
                tcp(None, Some("198.18.0.9"), 8080, Verdict::Audit),
            ],
        };
        let two = Report {
            destinations: vec![
                dest("only-asked.example", Verdict::Allowed, 1),
                dest("only-asked.example", Verdict::Allowed, 2),
            ],
        };
        let seen = seen(&[one, two]);
        let find = |n: Option<&str>| {
            seen.iter()
                .filter(|s| s.name.as_deref() == n)
                .map(|s| (s.port, s.jobs))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            find(Some("pypi.org")),
            [(Some(443), 1)],
            "the connection's port, not the question"
        );
        assert_eq!(find(Some("only-asked.example")), [(None, 2)]);
        assert!(find(Some("meta.example")).is_empty());
        assert_eq!(find(None), [(Some(8080), 1)]);
        let s = super::super::suggest(&seen, 3);
        let entries: Vec<String> = s.iter().map(|x| x.allow.to_string()).collect();
        assert!(
            entries.contains(&"only-asked.example".to_string()),
            "{entries:?}"
        );
        assert!(entries.contains(&"pypi.org:443".to_string()), "{entries:?}");
    }
}
