//! Connections that do not pass the proxy (any TCP or UDP a sandbox sends through the forward
//! chain: SSH to an allowed name, a database in an allowed range, a bare address, DNS to another
//! resolver) are counted by the table itself: `flows4` holds, per link, protocol, address and
//! port, the packets and bytes sent there, `flows4r` what came back (`rules::base_script`). The
//! daemon reads both every few seconds and when a sandbox detaches, adds what grew since the
//! last read to the session's report (the totals already reported are in its file, so a
//! restart counts nothing twice), and at detach removes the link's elements.
//!
//! The table counts before the policy decides, so the verdict is worked out here from the same
//! policy: what the chain let through, what it dropped, or in audit mode what block would drop.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use airlock_core::egress::{forbidden, private, EgressMode, EgressPolicy};
use airlock_net::rules::{Flow, Named};

use crate::{now_ms, Destination, Inner, Live, Protocol, Report, Verdict};

/// How often the flow counters are read.
pub(crate) const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A flow's key in a session file: `tcp 1.2.3.4:22`.
fn key(proto: &str, addr: Ipv4Addr, port: u16) -> String {
    format!("{proto} {addr}:{port}")
}

/// What the policy did (or, in audit mode, would do) with a flow to `addr:port`, and why when
/// it stopped it; `names` are the names the sandbox was answered `addr` for, `opened` what
/// block mode opened for it; `sandbox`: `addr` is another sandbox's.
pub(crate) fn verdict(
    policy: &EgressPolicy,
    names: &[String],
    opened: &std::collections::BTreeSet<Named>,
    addr: Ipv4Addr,
    port: u16,
    sandbox: bool,
) -> (Verdict, Option<String>) {
    let ip = IpAddr::V4(addr);
    if sandbox {
        return (Verdict::Blocked, Some("another sandbox".into()));
    }
    if forbidden(ip) {
        return (
            Verdict::Blocked,
            Some("a forbidden address (cloud metadata, link-local)".into()),
        );
    }
    if policy.proxy.is_some() {
        return (
            Verdict::Blocked,
            Some("no route but the upstream proxy".into()),
        );
    }
    if policy.allows_addr(ip, port) {
        return (Verdict::Allowed, None);
    }
    if private(ip) {
        return (
            Verdict::Blocked,
            Some("a private address the allowlist does not cover".into()),
        );
    }
    let would_block = |why: &str| match policy.mode {
        EgressMode::Open => (Verdict::Allowed, None),
        EgressMode::Audit => (Verdict::Audit, Some(why.to_string())),
        EgressMode::Block => (Verdict::Blocked, Some(why.to_string())),
    };
    if port == 53 || port == 853 {
        return would_block("DNS to another resolver");
    }
    let by_name = match policy.mode {
        EgressMode::Block => opened
            .iter()
            .any(|n| n.addr == addr && n.port.is_none_or(|p| p == port)),
        _ => names.iter().any(|n| policy.allows_name(n, port)),
    };
    if by_name {
        return (Verdict::Allowed, None);
    }
    would_block(if names.is_empty() {
        "an address no allowed name resolved to"
    } else {
        "not in the allowlist on this port"
    })
}

/// The names `report` says the sandbox was answered each address for.
fn names_by_addr(report: &Report) -> HashMap<IpAddr, Vec<String>> {
    let mut m: HashMap<IpAddr, Vec<String>> = HashMap::new();
    for d in &report.destinations {
        if d.protocol == Protocol::Dns {
            for a in &d.answers {
                if let Some(n) = &d.name {
                    let v = m.entry(*a).or_default();
                    if !v.contains(n) {
                        v.push(n.clone());
                    }
                }
            }
        }
    }
    m
}

impl Inner {
    /// Adds what `flows` (every link's) counted for `live` since the last read to its report.
    pub(crate) fn collect_flows(&self, live: &Live, flows: &[Flow]) {
        let link = &live.session.link;
        // Both directions of each flow.
        let mut now: HashMap<(String, Ipv4Addr, u16), [u64; 2]> = HashMap::new();
        for f in flows.iter().filter(|f| &f.link == link) {
            now.entry((f.proto.clone(), f.addr, f.port)).or_default()[usize::from(f.reply)] +=
                f.bytes;
        }
        if now.is_empty() {
            return;
        }
        let sandboxes: Vec<Ipv4Addr> = now
            .keys()
            .map(|(_, a, _)| *a)
            .filter(|a| self.live(*a).is_some())
            .collect();
        let mut seen = Vec::new();
        {
            let mut file = crate::lock(&live.file);
            let names = names_by_addr(&file.report);
            let t = now_ms();
            for ((proto, addr, port), [out, inn]) in now {
                let k = key(&proto, addr, port);
                let before = file.flows.get(&k).copied();
                let [o0, i0] = before.unwrap_or_default();
                // A counter below what was reported: the element timed out and came back.
                let (d_out, d_in) = if out < o0 || inn < i0 {
                    (out, inn)
                } else {
                    (out - o0, inn - i0)
                };
                if before.is_some() && d_out == 0 && d_in == 0 {
                    continue;
                }
                file.flows.insert(k, [out, inn]);
                let ns = names.get(&IpAddr::V4(addr)).cloned().unwrap_or_default();
                let (verdict, reason) = verdict(
                    &live.session.policy,
                    &ns,
                    &file.opened,
                    addr,
                    port,
                    sandboxes.contains(&addr),
                );
                seen.push(Destination {
                    name: ns.first().cloned(),
                    addr: Some(IpAddr::V4(addr)),
                    port,
                    protocol: if proto == "udp" {
                        Protocol::Udp
                    } else {
                        Protocol::Tcp
                    },
                    verdict,
                    reason,
                    answers: Vec::new(),
                    bytes_out: d_out,
                    bytes_in: d_in,
                    count: u64::from(before.is_none()),
                    first_ms: t,
                    last_ms: t,
                });
            }
        }
        for d in seen {
            self.record(live, d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::egress::Allow;

    fn policy(mode: EgressMode, entries: &[&str]) -> EgressPolicy {
        EgressPolicy {
            mode,
            allow: entries.iter().map(|e| Allow::parse(e).unwrap()).collect(),
            proxy: None,
        }
    }

    #[test]
    fn a_counted_flow_gets_the_verdict_its_chain_gave_it() {
        let gh = Ipv4Addr::new(140, 82, 121, 4);
        let lan = Ipv4Addr::new(10, 20, 0, 5);
        let names = vec!["github.com".to_string()];
        let none = std::collections::BTreeSet::new();
        let opened: std::collections::BTreeSet<Named> = [Named {
            addr: gh,
            port: Some(22),
        }]
        .into();
        let block = policy(EgressMode::Block, &["github.com:22", "10.20.0.0/16:5432"]);
        let v = |p: &EgressPolicy, n: &[String], o: &std::collections::BTreeSet<Named>, a, port| {
            verdict(p, n, o, a, port, false).0
        };
        assert_eq!(v(&block, &names, &opened, gh, 22), Verdict::Allowed);
        assert_eq!(v(&block, &names, &opened, gh, 23), Verdict::Blocked);
        assert_eq!(
            v(&block, &[], &none, gh, 22),
            Verdict::Blocked,
            "never opened"
        );
        assert_eq!(v(&block, &[], &none, lan, 5432), Verdict::Allowed);
        assert_eq!(v(&block, &[], &none, lan, 22), Verdict::Blocked);
        assert_eq!(v(&block, &names, &opened, gh, 53), Verdict::Blocked);
        let audit = policy(EgressMode::Audit, &["github.com:22"]);
        assert_eq!(v(&audit, &names, &none, gh, 22), Verdict::Allowed);
        assert_eq!(v(&audit, &names, &none, gh, 23), Verdict::Audit);
        assert_eq!(v(&audit, &[], &none, gh, 22), Verdict::Audit);
        assert_eq!(
            v(&audit, &[], &none, Ipv4Addr::new(169, 254, 169, 254), 80),
            Verdict::Blocked
        );
        assert_eq!(v(&audit, &[], &none, lan, 80), Verdict::Blocked, "private");
        let open = policy(EgressMode::Open, &[]);
        assert_eq!(v(&open, &[], &none, gh, 9999), Verdict::Allowed);
        let mut up = block.clone();
        up.proxy = Some(airlock_core::egress::UpstreamProxy::parse("http://squid:3128").unwrap());
        assert_eq!(v(&up, &names, &opened, gh, 22), Verdict::Blocked);
        assert_eq!(
            verdict(&open, &[], &none, Ipv4Addr::new(10, 200, 0, 6), 8080, true),
            (Verdict::Blocked, Some("another sandbox".into()))
        );
    }
}
