//! An allowlist proposed from what audit-mode jobs reached (`airlock egress suggest`): every
//! destination kept as narrow as it was seen (a name with its port, an address with its port),
//! and sibling names folded into a `*.` wildcard only where that is safe.
//!
//! Safe means: at least `fold_at` distinct names directly below one parent domain, on the same
//! port, and that parent is a domain someone registered or a name below one, never a public
//! suffix (the Public Suffix List, `psl`: `*.github.io` or `*.s3.amazonaws.com` would let in
//! every other customer of that host). It must never propose a forbidden destination.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{forbidden, normalize, Allow, NamePattern};

/// One destination audit-mode jobs reached, as their reports recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The name the job asked for (resolver, `CONNECT`, `Host`, SNI); `None`: a bare address.
    pub name: Option<String>,
    pub addr: Option<IpAddr>,
    /// The port it was reached on; `None`: only its name was seen (a question to the
    /// resolver), so no port can be proposed.
    pub port: Option<u16>,
    /// Jobs that reached it.
    pub jobs: u32,
}

/// One proposed entry and what it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggestion {
    pub allow: Allow,
    /// The names or addresses seen that it covers.
    pub covers: Vec<String>,
    pub jobs: u32,
}

/// The allowlist for what was `seen`, sorted by registered domain then entry; forbidden
/// addresses are left out (no policy could open them).
pub fn suggest(seen: &[Seen], fold_at: usize) -> Vec<Suggestion> {
    // (name, port) -> jobs; (addr, port) -> jobs.
    let mut names: BTreeMap<(String, Option<u16>), u32> = BTreeMap::new();
    let mut addrs: BTreeMap<(IpAddr, Option<u16>), u32> = BTreeMap::new();
    for s in seen {
        match (&s.name, s.addr) {
            (Some(n), _) => *names.entry((normalize(n), s.port)).or_default() += s.jobs,
            (None, Some(a)) if !forbidden(a) => *addrs.entry((a, s.port)).or_default() += s.jobs,
            (None, _) => {}
        }
    }
    // Siblings: (parent, port) -> the names directly below it.
    let mut siblings: BTreeMap<(String, Option<u16>), Vec<String>> = BTreeMap::new();
    for (name, port) in names.keys() {
        if let Some((_, parent)) = name.split_once('.') {
            if foldable(parent) {
                siblings
                    .entry((parent.to_string(), *port))
                    .or_default()
                    .push(name.clone());
            }
        }
    }
    let mut out = Vec::new();
    let mut folded = std::collections::HashSet::new();
    for ((parent, port), group) in siblings {
        if group.len() < fold_at.max(2) {
            continue;
        }
        let jobs = group.iter().map(|n| names[&(n.clone(), port)]).sum();
        for n in &group {
            folded.insert((n.clone(), port));
        }
        out.push(Suggestion {
            allow: Allow::Name {
                pattern: NamePattern::Below(parent),
                port,
            },
            covers: group,
            jobs,
        });
    }
    for ((name, port), jobs) in &names {
        if folded.contains(&(name.clone(), *port)) {
            continue;
        }
        out.push(Suggestion {
            allow: Allow::Name {
                pattern: NamePattern::Exact(name.clone()),
                port: *port,
            },
            covers: vec![name.clone()],
            jobs: *jobs,
        });
    }
    for ((addr, port), jobs) in addrs {
        out.push(Suggestion {
            allow: Allow::Net {
                net: addr.into(),
                port,
            },
            covers: vec![addr.to_string()],
            jobs,
        });
    }
    out.sort_by_key(|s| (sort_key(&s.allow), s.allow.to_string()));
    out
}

/// A `*.` below `parent` stays with one owner: `parent` is a registered domain or below one,
/// and not itself a public suffix.
fn foldable(parent: &str) -> bool {
    let Some(registered) = psl::domain_str(parent) else {
        return false;
    };
    !super::public_suffix(parent)
        && (parent == registered || parent.ends_with(&format!(".{registered}")))
}

/// Groups entries by the domain their owner registered (addresses last).
fn sort_key(a: &Allow) -> (u8, String) {
    match a {
        Allow::Name { pattern, .. } => {
            let n = match pattern {
                NamePattern::Exact(n) | NamePattern::Below(n) => n,
            };
            (0, psl::domain_str(n).unwrap_or(n).to_string())
        }
        Allow::Net { .. } => (1, String::new()),
    }
}

/// The proposal as a `[pool.egress]` table to paste into the config, each entry with what it
/// covers as a comment.
pub fn suggestions_toml(s: &[Suggestion]) -> String {
    let mut out = String::from("[pool.egress]\nmode = \"block\"\nallow = [\n");
    for x in s {
        let covers = if x.covers.len() == 1 {
            String::new()
        } else {
            format!("{} names: {}; ", x.covers.len(), x.covers.join(", "))
        };
        let plural = if x.jobs == 1 { "" } else { "s" };
        out.push_str(&format!(
            "  {:<40} # {covers}{} job{plural}\n",
            format!("\"{}\",", x.allow),
            x.jobs
        ));
    }
    out.push_str("]\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str, port: u16, jobs: u32) -> Seen {
        Seen {
            name: Some(n.into()),
            addr: None,
            port: Some(port),
            jobs,
        }
    }

    fn entries(s: &[Suggestion]) -> Vec<String> {
        s.iter().map(|x| x.allow.to_string()).collect()
    }

    #[test]
    fn siblings_of_a_registered_domain_fold_and_the_rest_stay_exact() {
        let seen = [
            name("deb.debian.org", 443, 5),
            name("security.debian.org", 443, 3),
            name("snapshot.debian.org", 443, 1),
            name("github.com", 443, 9),
            name("api.github.com", 443, 9),
            name("GitHub.com.", 443, 1),
            name("pypi.org", 443, 2),
            name("pypi.org", 80, 1),
            Seen {
                name: None,
                addr: Some("10.20.0.5".parse().unwrap()),
                port: Some(5432),
                jobs: 2,
            },
        ];
        let s = suggest(&seen, 3);
        assert_eq!(
            entries(&s),
            [
                "*.debian.org:443",
                "api.github.com:443",
                "github.com:443",
                "pypi.org:443",
                "pypi.org:80",
                "10.20.0.5:5432",
            ]
        );
        let folded = &s[0];
        assert_eq!(folded.jobs, 9);
        assert_eq!(folded.covers.len(), 3);
        assert_eq!(s[2].jobs, 10, "one name however it was written");
        // Every proposal parses back as an entry, and allows what it was made from.
        let policy = super::super::EgressPolicy {
            proxy: None,
            mode: super::super::EgressMode::Block,
            allow: entries(&s)
                .iter()
                .map(|e| Allow::parse(e).unwrap())
                .collect(),
        };
        for x in &seen {
            let ok = match (&x.name, x.addr) {
                (Some(n), _) => policy.allows_name(n, x.port.unwrap_or(0)),
                (None, Some(a)) => policy.allows_addr(a, x.port.unwrap_or(0)),
                _ => false,
            };
            assert!(ok, "{x:?} not covered by {:?}", entries(&s));
        }
        assert!(
            !policy.allows_name("githubusercontent.com", 443),
            "a fold is below only"
        );
        assert!(
            !policy.allows_name("objects.githubusercontent.com", 80),
            "and on its port"
        );
    }

    #[test]
    fn never_over_a_public_suffix_nor_below_the_threshold_nor_to_forbidden_addresses() {
        let seen = [
            // Three different owners' sites on a public suffix (PSL's private section).
            name("alice.github.io", 443, 1),
            name("bob.github.io", 443, 1),
            name("carol.github.io", 443, 1),
            // GitHub's user content domain is on the list too (each user's content apart).
            name("objects.githubusercontent.com", 443, 1),
            name("raw.githubusercontent.com", 443, 1),
            name("media.githubusercontent.com", 443, 1),
            name("a.s3.amazonaws.com", 443, 1),
            name("b.s3.amazonaws.com", 443, 1),
            name("c.s3.amazonaws.com", 443, 1),
            // Under a registered domain but only two of them.
            name("one.example.com", 443, 1),
            name("two.example.com", 443, 1),
            // Three, but on different ports: no fold either.
            name("a.example.org", 443, 1),
            name("b.example.org", 80, 1),
            name("c.example.org", 8080, 1),
            Seen {
                name: None,
                addr: Some("169.254.169.254".parse().unwrap()),
                port: Some(80),
                jobs: 4,
            },
        ];
        let s = suggest(&seen, 3);
        let got = entries(&s);
        assert!(got.iter().all(|e| !e.starts_with('*')), "{got:?}");
        assert_eq!(got.len(), 14, "every name kept exact: {got:?}");
        assert!(!got.iter().any(|e| e.contains("169.254")), "{got:?}");
    }

    #[test]
    fn the_toml_names_each_entry_with_what_it_covers() {
        let s = suggest(
            &[
                name("a.example.com", 443, 1),
                name("b.example.com", 443, 2),
                name("c.example.com", 443, 3),
                name("deb.debian.org", 80, 1),
            ],
            3,
        );
        let text = suggestions_toml(&s);
        assert!(
            text.starts_with("[pool.egress]\nmode = \"block\"\nallow = [\n"),
            "{text}"
        );
        assert!(
            text.contains("\"*.example.com:443\",")
                && text.contains("3 names: a.example.com, b.example.com, c.example.com; 6 jobs"),
            "{text}"
        );
        assert!(text.contains("\"deb.debian.org:80\","), "{text}");
        assert!(text.contains("# 1 job\n"), "{text}");
    }
}
