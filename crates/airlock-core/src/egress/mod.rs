//! A pool's egress policy as the config states it (`[pool.egress]`): its mode and its allowlist
//! of names (exact or `*.` wildcards), addresses and CIDRs, each optionally limited to one port,
//! and the destinations no policy may open (the cloud metadata addresses, link-local ranges).
//! Parsing and matching only: what enforces it (the host's nftables, the resolver, the proxy)
//! lives outside this crate and asks here.
//!
//! It must never widen what an entry says: a wildcard matches names below its domain, never the
//! domain itself nor anything beside it, and a name's port limit holds for every address it
//! resolves to.

pub mod report;
mod suggest;

pub use suggest::{suggest, suggestions_toml, Seen, Suggestion};

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// What a pool's sandboxes may do beyond the isolation every sandbox has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EgressMode {
    /// Anything outside (today's behaviour): only the isolation rules apply.
    #[default]
    Open,
    /// Everything is let through and recorded with whether the allowlist would have let it.
    Audit,
    /// Only what the allowlist names.
    Block,
}

impl EgressMode {
    pub fn parse(s: &str) -> Option<EgressMode> {
        Some(match s {
            "open" => EgressMode::Open,
            "audit" => EgressMode::Audit,
            "block" => EgressMode::Block,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EgressMode::Open => "open",
            EgressMode::Audit => "audit",
            EgressMode::Block => "block",
        }
    }
}

/// A name as an allowlist entry states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    /// This name only (lowercase, no trailing dot).
    Exact(String),
    /// Any name below this domain (`*.example.com`: `a.example.com`, `a.b.example.com`), never
    /// `example.com` itself.
    Below(String),
}

impl NamePattern {
    pub fn matches(&self, name: &str) -> bool {
        let name = normalize(name);
        match self {
            NamePattern::Exact(n) => name == *n,
            NamePattern::Below(d) => name
                .strip_suffix(d.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    Name {
        pattern: NamePattern,
        port: Option<u16>,
    },
    /// An address (a /32 or /128) or a range.
    Net { net: IpNet, port: Option<u16> },
}

impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, port) = match self {
            Allow::Name {
                pattern: NamePattern::Exact(n),
                port,
            } => (n.clone(), port),
            Allow::Name {
                pattern: NamePattern::Below(d),
                port,
            } => (format!("*.{d}"), port),
            Allow::Net { net, port } => {
                let bare = net.prefix_len() == net.max_prefix_len();
                let s = if bare {
                    net.addr().to_string()
                } else {
                    net.to_string()
                };
                match (port, net) {
                    (Some(_), IpNet::V6(_)) => (format!("[{s}]"), port),
                    _ => (s, port),
                }
            }
        };
        match port {
            Some(p) => write!(f, "{what}:{p}"),
            None => f.write_str(&what),
        }
    }
}

/// Why an allowlist entry was refused; the message names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?}: {reason}")]
pub struct AllowError {
    pub entry: String,
    pub reason: String,
}

/// Destinations no policy can open: the cloud metadata services and the link-local ranges they
/// live in (IMDS at 169.254.169.254 and fd00:ec2::254, link-local auto-configuration).
pub const FORBIDDEN: &[&str] = &["169.254.0.0/16", "fd00:ec2::254/128", "fe80::/10"];

/// Whether `ip` is one of the `FORBIDDEN` destinations.
pub fn forbidden(ip: IpAddr) -> bool {
    FORBIDDEN
        .iter()
        .filter_map(|n| n.parse::<IpNet>().ok())
        .any(|n| n.contains(&ip))
}

/// Whether `domain` is on the Public Suffix List (`com`, `co.uk`, but also `github.io` and
/// `githubusercontent.com`): the names below it may each have their own owner.
pub fn public_suffix(domain: &str) -> bool {
    let d = normalize(domain);
    psl::suffix_str(&d) == Some(d.as_str())
}

/// Private and shared ranges (RFC 1918, RFC 6598 carrier-grade NAT, IPv6 unique-local): a
/// sandbox reaches none of them unless an entry allows it.
pub const PRIVATE: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

pub fn private(ip: IpAddr) -> bool {
    PRIVATE
        .iter()
        .filter_map(|n| n.parse::<IpNet>().ok())
        .any(|n| n.contains(&ip))
}

impl Allow {
    /// Parses `name`, `*.domain`, an address or a CIDR, each optionally followed by `:port`
    /// (IPv6 with a port in brackets: `[2001:db8::/32]:443`).
    pub fn parse(entry: &str) -> Result<Allow, AllowError> {
        let err = |reason: &str| AllowError {
            entry: entry.to_string(),
            reason: reason.to_string(),
        };
        let s = entry.trim();
        if s.is_empty() {
            return Err(err("empty entry"));
        }
        if s == "*" || s.starts_with("*:") {
            return Err(err(
                "a bare `*` allows everything: that is `mode = \"open\"`",
            ));
        }
        // What is left of the port, and the port.
        let (host, port) = split_port(s).map_err(|r| err(&r))?;
        if let Some(net) = parse_net(host) {
            let net = net.map_err(|r| err(&r))?;
            if net.prefix_len() == 0 {
                return Err(err("a /0 allows every address: that is `mode = \"open\"`"));
            }
            // A wider range is fine: what it shares with these stays closed when it is matched.
            if FORBIDDEN
                .iter()
                .filter_map(|n| n.parse::<IpNet>().ok())
                .any(|f| f.contains(&net))
            {
                return Err(err(
                    "lies in the cloud metadata or link-local ranges, which no policy can open",
                ));
            }
            return Ok(Allow::Net { net, port });
        }
        let (below, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        let name = normalize(name);
        check_name(&name).map_err(|r| err(&r))?;
        if below && !name.contains('.') {
            return Err(err(
                "a wildcard over a top-level domain (`*.com`) allows most of the internet; name the domain (`*.example.com`)",
            ));
        }
        Ok(Allow::Name {
            pattern: if below {
                NamePattern::Below(name)
            } else {
                NamePattern::Exact(name)
            },
            port,
        })
    }

    fn port_ok(&self, port: u16) -> bool {
        match self {
            Allow::Name { port: p, .. } | Allow::Net { port: p, .. } => p.is_none_or(|p| p == port),
        }
    }
}

/// Lowercase, without the root's trailing dot.
pub(crate) fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A DNS name as RFC 1035 (and 1123 for leading digits) allows in a hostname.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("not a host name (1 to 253 characters)".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("label {label:?} must be 1 to 63 characters"));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!(
                "label {label:?} may hold only letters, digits and '-' (a wildcard is only `*.` in front; IDNs in their xn-- form)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} may not begin or end with '-'"));
        }
    }
    if name
        .split('.')
        .next_back()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return Err("looks like an address, not a name".into());
    }
    Ok(())
}

/// Splits `host[:port]` (`[v6]:port` for IPv6).
fn split_port(s: &str) -> Result<(&str, Option<u16>), String> {
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("port {p:?} must be 1 to 65535")),
            Ok(n) => Ok(n),
        }
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "an opening '[' without its ']'".to_string())?;
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((host, Some(port(p)?))),
                None => Err(format!("{after:?} after ']': expected `:port`")),
            },
        };
    }
    match s.matches(':').count() {
        0 => Ok((s, None)),
        1 => {
            let (h, p) = s.split_once(':').expect("one colon");
            Ok((h, Some(port(p)?)))
        }
        // An IPv6 address or range without a port.
        _ => Ok((s, None)),
    }
}

/// `Some` when `host` is meant as an address or a range (it parses as one, or has a `/`).
fn parse_net(host: &str) -> Option<Result<IpNet, String>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(Ok(IpNet::from(ip)));
    }
    if !host.contains('/') {
        return None;
    }
    Some(match host.parse::<IpNet>() {
        Ok(net) if net.trunc() != net => {
            Err(format!("host bits are set: the range is {}", net.trunc()))
        }
        Ok(net) => Ok(net),
        Err(_) => Err("not an address range (`10.20.0.0/16`, `2001:db8::/32`)".into()),
    })
}

/// A pool's policy: its mode, its allowlist, and the operator's proxy all its egress goes
/// through, if it has one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EgressPolicy {
    pub mode: EgressMode,
    pub allow: Vec<Allow>,
    pub proxy: Option<UpstreamProxy>,
}

/// Where jobs of a pool with an upstream proxy send their explicit proxy requests: this port of
/// their gateway (`http_proxy=http://GATEWAY:3128`), redirected to airlock's proxy.
pub const PROXY_PORT: u16 = 3128;

/// An operator's HTTP proxy (squid, …): `http://host:port`, no credentials.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamProxy {
    pub host: String,
    pub port: u16,
}

impl UpstreamProxy {
    /// `http://host[:port]` (port 80 when left out); anything else is refused with the reason.
    pub fn parse(s: &str) -> Result<UpstreamProxy, String> {
        let rest = s.strip_prefix("http://").ok_or(
            "expected http://host:port (an HTTP proxy; https:// and others are not supported)",
        )?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('@') {
            return Err("credentials in the proxy's URL are not supported".into());
        }
        if authority.contains(['/', '?', '#']) {
            return Err("expected http://host:port with no path".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, _)) if !h.ends_with(']') && h.contains(':') => {
                return Err("an IPv6 address must be in brackets: http://[addr]:port".into())
            }
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{p:?} is not a port"))?,
            ),
            None => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("no host".into());
        }
        if host.parse::<IpAddr>().is_err() {
            check_name(&normalize(host)).map_err(|e| format!("{host:?}: {e}"))?;
        }
        Ok(UpstreamProxy {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// `host:port` as a connection or a `CONNECT` names it.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The environment a job of such a pool gets, for its gateway `gw`: `http_proxy` and
    /// `https_proxy` (both spellings) at airlock's proxy, and `no_proxy` for the sandbox itself.
    pub fn job_env(gw: std::net::Ipv4Addr) -> Vec<String> {
        let url = format!("http://{gw}:{PROXY_PORT}");
        let mut v = Vec::new();
        for k in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"] {
            v.push(format!("{k}={url}"));
        }
        for k in ["no_proxy", "NO_PROXY"] {
            v.push(format!("{k}=localhost,127.0.0.1,::1"));
        }
        v
    }
}

impl fmt::Display for UpstreamProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority())
    }
}

/// As the config writes it: `{"mode": "block", "allow": ["github.com", …]}`.
impl serde::Serialize for EgressPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("EgressPolicy", 3)?;
        st.serialize_field("mode", self.mode.as_str())?;
        let allow: Vec<String> = self.allow.iter().map(Allow::to_string).collect();
        st.serialize_field("allow", &allow)?;
        match &self.proxy {
            Some(p) => st.serialize_field("proxy", &p.to_string())?,
            None => st.skip_field("proxy")?,
        }
        st.end()
    }
}

/// Read back as `Serialize` writes it (sessions persisted across a daemon restart), every entry
/// checked again as the config checks it.
impl<'de> serde::Deserialize<'de> for EgressPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        #[derive(serde::Deserialize)]
        struct Raw {
            mode: String,
            #[serde(default)]
            allow: Vec<String>,
            #[serde(default)]
            proxy: Option<String>,
        }
        let raw = Raw::deserialize(d)?;
        let mode = EgressMode::parse(&raw.mode)
            .ok_or_else(|| D::Error::custom(format!("unknown egress mode {:?}", raw.mode)))?;
        let allow = raw
            .allow
            .iter()
            .map(|e| Allow::parse(e).map_err(D::Error::custom))
            .collect::<Result<_, _>>()?;
        let proxy = raw
            .proxy
            .map(|p| UpstreamProxy::parse(&p).map_err(D::Error::custom))
            .transpose()?;
        Ok(EgressPolicy { mode, allow, proxy })
    }
}

impl EgressPolicy {
    /// Whether any entry names `name`, on whatever port: what the resolver asks before it
    /// answers (it cannot know the port the answer will be used with).
    pub fn names(&self, name: &str) -> bool {
        self.allow.iter().any(|a| match a {
            Allow::Name { pattern, .. } => pattern.matches(name),
            Allow::Net { .. } => false,
        })
    }

    /// The ports `name` is allowed on: `None` inside when an entry allows every port.
    pub fn name_ports(&self, name: &str) -> Vec<Option<u16>> {
        let mut out: Vec<Option<u16>> = self
            .allow
            .iter()
            .filter_map(|a| match a {
                Allow::Name { pattern, port } if pattern.matches(name) => Some(*port),
                _ => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether the allowlist lets a connection to `name` on `port` through (before the name is
    /// resolved; every address it resolves to is still checked with `allows_resolved`).
    pub fn allows_name(&self, name: &str, port: u16) -> bool {
        self.allow.iter().any(|a| match a {
            Allow::Name { pattern, .. } => pattern.matches(name) && a.port_ok(port),
            Allow::Net { .. } => false,
        })
    }

    /// Whether a connection to the bare address `ip` on `port` is allowed: an address or range
    /// entry covers it. Forbidden destinations never are.
    pub fn allows_addr(&self, ip: IpAddr, port: u16) -> bool {
        !forbidden(ip)
            && self.allow.iter().any(|a| match a {
                Allow::Net { net, .. } => net.contains(&ip) && a.port_ok(port),
                Allow::Name { .. } => false,
            })
    }

    /// Whether the resolver may hand a sandbox `ip` at all (on some port): never a forbidden
    /// address, and a private one only inside a range an entry allows.
    pub fn may_resolve_to(&self, ip: IpAddr) -> bool {
        !forbidden(ip)
            && (!private(ip)
                || self
                    .allow
                    .iter()
                    .any(|a| matches!(a, Allow::Net { net, .. } if net.contains(&ip))))
    }

    /// Whether an address an allowed name resolved to may be reached: never a forbidden one, and
    /// a private one only when an entry allows that range (a public name pointing into the
    /// host's network stays out of it).
    pub fn allows_resolved(&self, ip: IpAddr, port: u16) -> bool {
        !forbidden(ip) && (!private(ip) || self.allows_addr(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(entries: &[&str]) -> EgressPolicy {
        EgressPolicy {
            proxy: None,
            mode: EgressMode::Block,
            allow: entries.iter().map(|e| Allow::parse(e).unwrap()).collect(),
        }
    }

    #[test]
    fn a_policy_reads_back_what_it_writes_and_refuses_a_bad_entry() {
        let pol = p(&["github.com", "*.example.com:443", "10.20.0.0/16"]);
        let json = serde_json::to_string(&pol).unwrap();
        let back: EgressPolicy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, pol);
        let bad =
            serde_json::from_str::<EgressPolicy>(r#"{"mode":"block","allow":["169.254.169.254"]}"#);
        assert!(bad.unwrap_err().to_string().contains("metadata"));
        let bad = serde_json::from_str::<EgressPolicy>(r#"{"mode":"deny"}"#);
        assert!(bad.unwrap_err().to_string().contains("deny"));
    }

    #[test]
    fn a_name_may_resolve_to_public_addresses_and_to_allowed_private_ranges_only() {
        let pol = p(&["example.com", "*.cdn.example:443", "10.20.0.0/16:5432"]);
        assert!(pol.may_resolve_to("198.18.0.1".parse().unwrap()));
        assert!(
            pol.may_resolve_to("10.20.3.4".parse().unwrap()),
            "the range is allowed (on a port)"
        );
        assert!(!pol.may_resolve_to("10.21.3.4".parse().unwrap()));
        assert!(!pol.may_resolve_to("169.254.169.254".parse().unwrap()));
        assert!(!pol.may_resolve_to("fd00:ec2::254".parse().unwrap()));
        assert!(
            pol.names("example.com") && pol.names("a.cdn.example") && !pol.names("cdn.example")
        );
        assert_eq!(pol.name_ports("a.cdn.example"), [Some(443)]);
        assert_eq!(pol.name_ports("example.com"), [None]);
        assert!(pol.name_ports("other.example").is_empty());
    }

    #[test]
    fn entries_parse_and_print_back_as_written() {
        for e in [
            "github.com",
            "*.githubusercontent.com",
            "pypi.org:443",
            "10.20.0.0/16",
            "10.20.0.7",
            "10.20.0.0/16:5432",
            "2001:db8::/32",
            "[2001:db8::/32]:443",
            "2001:db8::1",
            "deb.debian.org:80",
            "xn--bcher-kva.example",
        ] {
            assert_eq!(Allow::parse(e).unwrap().to_string(), e, "{e}");
        }
        assert_eq!(
            Allow::parse("GitHub.COM.").unwrap().to_string(),
            "github.com",
            "names are case-insensitive, the root's dot dropped"
        );
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        let cases = [
            ("", "empty entry"),
            ("*", "that is `mode = \"open\"`"),
            ("*.com", "top-level domain"),
            ("foo*.example.com", "only letters, digits"),
            ("a.*.example.com", "only letters, digits"),
            ("-a.example.com", "may not begin or end"),
            ("example.com:0", "1 to 65535"),
            ("example.com:70000", "1 to 65535"),
            ("example.com:https", "1 to 65535"),
            (
                "10.20.0.1/16",
                "host bits are set: the range is 10.20.0.0/16",
            ),
            ("10.20.0.0/33", "not an address range"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.0.0/24", "cloud metadata"),
            ("fd00:ec2::254", "cloud metadata"),
            ("0.0.0.0/0", "/0 allows every address"),
            ("[2001:db8::/32", "without its ']'"),
            ("[2001:db8::/32]443", "expected `:port`"),
            ("1.2.3", "looks like an address"),
            (&"a".repeat(64), "1 to 63 characters"),
        ];
        let mut wrong = Vec::new();
        for (entry, want) in cases {
            match Allow::parse(entry) {
                Ok(a) => wrong.push(format!("{entry:?} accepted as {a}")),
                Err(e) if !e.to_string().contains(want) => {
                    wrong.push(format!("{entry:?}: {e} (wanted {want:?})"))
                }
                Err(e) => assert!(e.to_string().starts_with(&format!("{entry:?}")), "{e}"),
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn a_wildcard_matches_below_its_domain_only() {
        let w = p(&["*.githubusercontent.com"]);
        assert!(w.allows_name("objects.githubusercontent.com", 443));
        assert!(w.allows_name("a.b.githubusercontent.com", 80));
        assert!(w.allows_name("Objects.GitHubUserContent.com.", 443));
        assert!(
            !w.allows_name("githubusercontent.com", 443),
            "not the domain itself"
        );
        assert!(
            !w.allows_name("evilgithubusercontent.com", 443),
            "not a name ending the same"
        );
        assert!(!w.allows_name("githubusercontent.com.evil.io", 443));
        let e = p(&["github.com"]);
        assert!(e.allows_name("github.com", 22));
        assert!(
            !e.allows_name("api.github.com", 443),
            "an exact name is that name only"
        );
    }

    #[test]
    fn ports_limit_names_and_ranges() {
        let pol = p(&["pypi.org:443", "10.20.0.0/16:5432", "10.30.0.1"]);
        assert!(pol.allows_name("pypi.org", 443));
        assert!(!pol.allows_name("pypi.org", 80));
        assert!(pol.allows_addr("10.20.3.4".parse().unwrap(), 5432));
        assert!(!pol.allows_addr("10.20.3.4".parse().unwrap(), 22));
        assert!(!pol.allows_addr("10.21.0.1".parse().unwrap(), 5432));
        assert!(pol.allows_addr("10.30.0.1".parse().unwrap(), 22));
        assert!(!pol.allows_addr("10.30.0.2".parse().unwrap(), 22));
        assert!(
            !pol.allows_name("10.30.0.1", 22),
            "an address entry is no name"
        );
        let wide = p(&["169.0.0.0/8"]);
        assert!(wide.allows_addr("169.1.2.3".parse().unwrap(), 443));
        assert!(
            !wide.allows_addr("169.254.169.254".parse().unwrap(), 80),
            "a range around the metadata service leaves it closed"
        );
    }

    #[test]
    fn resolved_addresses_never_open_what_stays_forbidden() {
        let pol = p(&["example.com", "10.20.0.0/16"]);
        let ok = |s: &str| pol.allows_resolved(s.parse().unwrap(), 443);
        assert!(ok("93.184.215.14"), "a public address of an allowed name");
        assert!(
            !ok("169.254.169.254"),
            "a name pointing at the metadata service"
        );
        assert!(!ok("fd00:ec2::254"));
        assert!(!ok("fe80::1"));
        assert!(!ok("192.168.1.1"), "a private range not allowed");
        assert!(!ok("100.64.0.1"), "carrier-grade NAT space is private too");
        assert!(ok("10.20.1.1"), "a private range the policy allows");
        assert!(!ok("10.21.1.1"));
        assert!(ok("2001:4860:4860::8888"));
        assert!(!ok("fd12::1"), "IPv6 unique-local");
    }

    #[test]
    fn public_suffixes_are_known() {
        for d in [
            "com",
            "co.uk",
            "github.io",
            "githubusercontent.com",
            "S3.amazonaws.com.",
        ] {
            assert!(public_suffix(d), "{d}");
        }
        for d in [
            "example.com",
            "debian.org",
            "objects.githubusercontent.com",
            "pypi.org",
        ] {
            assert!(!public_suffix(d), "{d}");
        }
    }

    #[test]
    fn an_upstream_proxy_is_an_http_url_without_credentials() {
        let p = UpstreamProxy::parse("http://Squid.Internal:3128/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("squid.internal", 3128));
        assert_eq!(p.to_string(), "http://squid.internal:3128");
        assert_eq!(UpstreamProxy::parse("http://10.0.0.5").unwrap().port, 80);
        assert_eq!(
            UpstreamProxy::parse("http://[fd00::5]:8080")
                .unwrap()
                .authority(),
            "[fd00::5]:8080"
        );
        for (bad, why) in [
            ("https://p:3128", "not supported"),
            ("squid:3128", "expected http://"),
            ("http://u:pw@p:3128", "credentials"),
            ("http://p:3128/x", "no path"),
            ("http://p:0", "not a port"),
            ("http://p:x", "not a port"),
            ("http://:3128", "no host"),
            ("http://fd00::5", "brackets"),
        ] {
            let e = UpstreamProxy::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let env = UpstreamProxy::job_env(std::net::Ipv4Addr::new(10, 0, 0, 1));
        assert!(env.contains(&"https_proxy=http://10.0.0.1:3128".to_string()));
        assert!(env.iter().any(|e| e.starts_with("no_proxy=")));
        // It travels with the policy (sessions are files).
        let pol = EgressPolicy {
            mode: EgressMode::Block,
            allow: vec![],
            proxy: Some(p),
        };
        let back: EgressPolicy =
            serde_json::from_str(&serde_json::to_string(&pol).unwrap()).unwrap();
        assert_eq!(back, pol);
    }

    #[test]
    fn modes_parse_and_default_to_open() {
        for m in [EgressMode::Open, EgressMode::Audit, EgressMode::Block] {
            assert_eq!(EgressMode::parse(m.as_str()), Some(m));
        }
        assert_eq!(EgressMode::parse("deny"), None);
        assert_eq!(EgressPolicy::default().mode, EgressMode::Open);
    }
}
