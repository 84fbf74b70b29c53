//! The nftables table `inet airlock`, shared by every airlock on the host and every kind of
//! sandbox. Two parts:
//!
//! - **The base rules**, the same for every link by its name prefix (`airl*`), so a sandbox is
//!   protected from the moment its link exists: nothing from a sandbox reaches the host's own
//!   services (input) except airlock's resolver and proxy through the redirect that leads there;
//!   no sandbox to sandbox, no IPv6 (every sandbox has it off; a microVM's root could switch it
//!   back on inside), no link-local or cloud metadata, no packet whose source is not its link's
//!   (a spoofed address); nothing from outside opens a connection into a sandbox; what leaves
//!   is masqueraded. A link no policy is attached to gets the `open` chain: today everything
//!   the rules above allow. Closing private ranges there too waits for airlock's own resolver
//!   (sandboxes' name servers are the host's, and those are usually private addresses).
//! - **Policies**, one chain per distinct pool policy (`p_<hash>`, named by what it says, so
//!   two daemons or two pools with the same policy share it, and a changed policy is a new chain
//!   that leaves running sandboxes on the old one), and per link one element in each of the maps
//!   `links` (link → its policy chain) and `dns` (link → the port of its daemon's resolver and
//!   proxy, one port: the daemon tells DNS from web traffic by where it was going), and links in
//!   audit or block mode in the set `proxied`, whose web traffic (TCP 80 and 443 to anywhere but
//!   the host) is redirected to that port too. Attaching and detaching a sandbox is one
//!   nftables transaction each.
//!
//! Rewriting the base rules (every daemon does at start) flushes and refills the base chains
//! only: the maps, their elements and the policy chains of running sandboxes stay.

use std::fmt::Write as _;
use std::process::Command;

use airlock_core::egress::{Allow, EgressMode, EgressPolicy, FORBIDDEN, PRIVATE, PROXY_PORT};

use crate::{run, NetError};

/// What names the table in every `nft` command.
pub const TABLE: &str = "inet airlock";

/// The chain of links no policy is attached to.
pub const OPEN_CHAIN: &str = "open";

/// The prefix of policy chains.
pub const POLICY_PREFIX: &str = "p_";

/// Bumped whenever the rules a policy chain holds change meaning, so a new airlock never
/// shares a chain with an older one that wrote it differently.
const POLICY_RULES_VERSION: u32 = 1;

fn v4_list(nets: &[&str]) -> String {
    nets.iter()
        .filter(|n| !n.contains(':'))
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

/// The base rules as one nftables script (idempotent: it may run again at any time).
pub fn base_script() -> String {
    let private = v4_list(PRIVATE);
    let forbidden = v4_list(FORBIDDEN);
    let t = TABLE;
    format!(
        r#"add table {t}
add map {t} links {{ type ifname : verdict; }}
add map {t} dns {{ type ifname : inet_service; }}
add set {t} services {{ type inet_service; }}
add set {t} proxied {{ type ifname; }}
add set {t} private4 {{ type ipv4_addr; flags interval; }}
add set {t} named4 {{ type ifname . ipv4_addr . inet_service; flags timeout; }}
add set {t} named4any {{ type ifname . ipv4_addr; flags timeout; }}
add set {t} flows4 {{ type ifname . inet_proto . ipv4_addr . inet_service; flags dynamic, timeout; timeout {FLOW_TIMEOUT_S}s; size {FLOW_SET_SIZE}; counter; }}
add set {t} flows4r {{ type ifname . inet_proto . ipv4_addr . inet_service; flags dynamic, timeout; timeout {FLOW_TIMEOUT_S}s; size {FLOW_SET_SIZE}; counter; }}
add element {t} private4 {{ {private} }}
add chain {t} {OPEN_CHAIN}
flush chain {t} {OPEN_CHAIN}
add rule {t} {OPEN_CHAIN} ip daddr @private4 counter drop comment "private ranges are closed unless a policy allows them"
add rule {t} {OPEN_CHAIN} accept
add chain {t} input {{ type filter hook input priority filter - 5; policy accept; }}
flush chain {t} input
add rule {t} input iifname "airl*" ct status dnat meta l4proto {{ tcp, udp }} th dport @services accept comment "airlock's resolver and proxy, reached only through the redirect"
add rule {t} input iifname "airl*" counter drop comment "sandboxes never reach the host's own services"
add chain {t} forward {{ type filter hook forward priority filter - 5; policy accept; }}
flush chain {t} forward
add rule {t} forward iifname "airl*" meta nfproto ipv4 meta l4proto {{ tcp, udp }} update @flows4 {{ iifname . meta l4proto . ip daddr . th dport }} comment "what each sandbox sends where (its report), allowed or not"
add rule {t} forward oifname "airl*" meta nfproto ipv4 meta l4proto {{ tcp, udp }} update @flows4r {{ oifname . meta l4proto . ip saddr . th sport }} comment "and what comes back"
add rule {t} forward iifname "airl*" oifname "airl*" counter drop comment "no sandbox to sandbox"
add rule {t} forward iifname "airl*" meta nfproto ipv6 counter drop comment "IPv6 is off in every sandbox: whatever is sent anyway goes nowhere"
add rule {t} forward iifname "airl*" ip daddr {{ {forbidden} }} counter drop comment "no cloud metadata, no link-local"
add rule {t} forward iifname "airl*" fib saddr . iif oif missing counter drop comment "no source address but the link's own"
add rule {t} forward oifname "airl*" ct state established,related accept
add rule {t} forward oifname "airl*" counter drop comment "nothing opens a connection into a sandbox"
add rule {t} forward iifname "airl*" ct state established,related accept
add rule {t} forward iifname "airl*" iifname vmap @links
add rule {t} forward iifname "airl*" jump {OPEN_CHAIN}
add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
flush chain {t} prerouting
add rule {t} prerouting iifname "airl*" meta l4proto {{ tcp, udp }} th dport 53 fib daddr type local redirect to : iifname map @dns comment "DNS to the sandbox's gateway goes to its daemon's resolver"
add rule {t} prerouting iifname @proxied tcp dport {{ 80, 443 }} fib daddr type != local redirect to : iifname map @dns comment "web traffic of audit and block sandboxes goes through its daemon's proxy"
add rule {t} prerouting iifname @proxied tcp dport {PROXY_PORT} fib daddr type local redirect to : iifname map @dns comment "explicit proxy requests (http_proxy) to the gateway go to its daemon's proxy"
add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
flush chain {t} postrouting
add rule {t} postrouting iifname "airl*" oifname != "airl*" masquerade
"#
    )
}

/// How long a flow's counters stay in `flows4`/`flows4r` after its last packet (the daemon
/// collects them every few seconds and at detach, when it removes them).
pub const FLOW_TIMEOUT_S: u64 = 3600;
/// The most flows the two sets hold (past it, new flows pass uncounted).
const FLOW_SET_SIZE: u32 = 262_144;

/// One flow's counters: what `link` sent to `addr:port` over `proto` (`reply`: what came
/// back from there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub link: String,
    /// `tcp` or `udp`.
    pub proto: String,
    pub addr: std::net::Ipv4Addr,
    pub port: u16,
    pub reply: bool,
    pub packets: u64,
    pub bytes: u64,
}

impl Flow {
    fn element(&self) -> (&'static str, String) {
        (
            if self.reply { "flows4r" } else { "flows4" },
            format!(
                "\"{}\" . {} . {} . {}",
                self.link, self.proto, self.addr, self.port
            ),
        )
    }
}

/// Every flow's counters (two `nft -j list set`).
pub fn flows() -> Result<Vec<Flow>, NetError> {
    let mut out = Vec::new();
    for (set, reply) in [("flows4", false), ("flows4r", true)] {
        let o = Command::new("nft")
            .args(["-j", "list", "set", "inet", "airlock", set])
            .output()
            .map_err(|e| NetError::Command {
                what: format!("listing inet airlock's {set}"),
                detail: format!("cannot run nft: {e}"),
            })?;
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            if err.contains("No such file or directory") {
                continue;
            }
            return Err(NetError::Command {
                what: format!("listing inet airlock's {set}"),
                detail: err.trim().to_string(),
            });
        }
        out.extend(
            parse_flows(&String::from_utf8_lossy(&o.stdout), reply).map_err(|detail| {
                NetError::Command {
                    what: format!("reading nft's listing of {set}"),
                    detail,
                }
            })?,
        );
    }
    Ok(out)
}

fn parse_flows(json: &str, reply: bool) -> Result<Vec<Flow>, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for item in v
        .get("nftables")
        .and_then(|n| n.as_array())
        .ok_or("no \"nftables\" array")?
    {
        let Some(elems) = item
            .get("set")
            .and_then(|s| s.get("elem"))
            .and_then(|e| e.as_array())
        else {
            continue;
        };
        for e in elems {
            let e = e.get("elem").unwrap_or(e);
            let Some(c) = e
                .get("val")
                .and_then(|v| v.get("concat"))
                .and_then(|c| c.as_array())
            else {
                continue;
            };
            let (Some(link), Some(proto), Some(addr), Some(port)) = (
                c.first().and_then(|x| x.as_str()),
                c.get(1).and_then(|x| x.as_str()),
                c.get(2)
                    .and_then(|x| x.as_str())
                    .and_then(|a| a.parse().ok()),
                c.get(3).and_then(|x| x.as_u64()),
            ) else {
                continue;
            };
            let counter = e.get("counter");
            out.push(Flow {
                link: link.to_string(),
                proto: proto.to_string(),
                addr,
                port: port as u16,
                reply,
                packets: counter
                    .and_then(|c| c.get("packets"))
                    .and_then(|p| p.as_u64())
                    .unwrap_or(0),
                bytes: counter
                    .and_then(|c| c.get("bytes"))
                    .and_then(|p| p.as_u64())
                    .unwrap_or(0),
            });
        }
    }
    Ok(out)
}

/// Removes `flows`' elements whether or not they are still there (added, then deleted).
pub fn forget_flows_script(flows: &[Flow]) -> String {
    let t = TABLE;
    let mut s = String::new();
    for f in flows {
        let (set, e) = f.element();
        let _ = writeln!(s, "add element {t} {set} {{ {e} }}");
        let _ = writeln!(s, "delete element {t} {set} {{ {e} }}");
    }
    s
}

/// A pool policy's chain: its name and the script that makes it (idempotent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChain {
    pub name: String,
    pub script: String,
}

/// The chain that enforces `p`'s addresses and ranges (names are the resolver's and the proxy's):
/// each IPv4 entry accepted (on its port, if it names one), then private ranges closed, then
/// what the mode says of the rest. IPv6 entries have nothing to do here (IPv6 is off).
pub fn policy_chain(p: &EgressPolicy) -> PolicyChain {
    let mut rules = String::new();
    if let Some(up) = &p.proxy {
        // Everything goes through airlock's proxy to the upstream: no direct route out at all.
        let _ = writeln!(
            rules,
            "counter drop comment \"no route but the upstream proxy {up}\""
        );
    }
    for a in p.allow.iter().filter(|_| p.proxy.is_none()) {
        let Allow::Net { net, port } = a else {
            continue;
        };
        let ipnet::IpNet::V4(v4) = net else {
            continue;
        };
        let _ = write!(rules, "ip daddr {v4}");
        if let Some(port) = port {
            let _ = write!(rules, " meta l4proto {{ tcp, udp }} th dport {port}");
        }
        let _ = writeln!(rules, " accept comment \"{a}\"");
    }
    if p.proxy.is_none() {
        rules.push_str(
            "ip daddr @private4 counter drop comment \"private ranges are closed unless allowed\"\n",
        );
    }
    match p.mode {
        _ if p.proxy.is_some() => {}
        EgressMode::Open | EgressMode::Audit => rules.push_str("accept\n"),
        EgressMode::Block => {
            // Name servers other than airlock's (DNS, DNS over TLS), even on an allowed name's
            // address: a name must be asked where the policy is applied.
            rules.push_str(
                "meta l4proto { tcp, udp } th dport { 53, 853 } counter drop comment \"DNS to other resolvers\"\n",
            );
            // What the resolver answered for an allowed name, on the ports the name is allowed.
            rules.push_str(
                "meta l4proto { tcp, udp } iifname . ip daddr . th dport @named4 accept comment \"an allowed name's address, on its port\"\n",
            );
            rules.push_str(
                "iifname . ip daddr @named4any accept comment \"an allowed name's address\"\n",
            );
            rules.push_str("counter drop comment \"block mode\"\n");
        }
    }
    let digest = {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(POLICY_RULES_VERSION.to_le_bytes());
        h.update(rules.as_bytes());
        hex::encode(h.finalize())
    };
    let name = format!("{POLICY_PREFIX}{}", &digest[..16]);
    let t = TABLE;
    let mut script = format!("add chain {t} {name}\nflush chain {t} {name}\n");
    for r in rules.lines() {
        let _ = writeln!(script, "add rule {t} {name} {r}");
    }
    PolicyChain { name, script }
}

/// Whether a policy's web traffic goes through the proxy (audit and block: it reads the names
/// connections are for).
pub fn proxies(p: &EgressPolicy) -> bool {
    p.mode != EgressMode::Open
}

/// One transaction: the policy's chain (made or refreshed), the link's elements (`proxied`
/// too when `proxied`), and the resolver's port among the services sandboxes may reach
/// through the redirect.
pub fn attach_script(link: &str, chain: &PolicyChain, dns_port: u16, proxied: bool) -> String {
    let t = TABLE;
    let mut s = format!(
        "{}add element {t} services {{ {dns_port} }}\nadd element {t} links {{ \"{link}\" : jump {} }}\nadd element {t} dns {{ \"{link}\" : {dns_port} }}\n",
        chain.script, chain.name
    );
    if proxied {
        let _ = writeln!(s, "add element {t} proxied {{ \"{link}\" }}");
    }
    s
}

/// One transaction that removes a link's elements whatever their state: each is added (a no-op
/// when present with the same value) and then deleted, so a half-attached link detaches too.
pub fn detach_script(link: &str, chain: &str, dns_port: u16) -> String {
    let t = TABLE;
    format!(
        "add element {t} links {{ \"{link}\" : jump {chain} }}\ndelete element {t} links {{ \"{link}\" }}\n\
         add element {t} dns {{ \"{link}\" : {dns_port} }}\ndelete element {t} dns {{ \"{link}\" }}\n\
         add element {t} proxied {{ \"{link}\" }}\ndelete element {t} proxied {{ \"{link}\" }}\n"
    )
}

/// An address the resolver answered for an allowed name, opened for one link (block mode): on
/// one port, or on every port when `port` is `None`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Named {
    pub addr: std::net::Ipv4Addr,
    pub port: Option<u16>,
}

impl Named {
    fn element(&self, link: &str) -> (&'static str, String) {
        match self.port {
            Some(p) => ("named4", format!("\"{link}\" . {} . {p}", self.addr)),
            None => ("named4any", format!("\"{link}\" . {}", self.addr)),
        }
    }
}

/// One transaction that opens each of `new` for `link` (never opened for it before) and keeps
/// each of `again` (opened before, maybe timed out since) open for another `timeout_s` seconds:
/// adding an element that exists leaves its old timeout, so those are added, deleted and added
/// again. Deleting in a transaction costs the kernel several times an add (16 ms against 2.7 ms
/// for one element on the development machine), so only `again` pays it.
pub fn open_named_script(link: &str, new: &[Named], again: &[Named], timeout_s: u64) -> String {
    let t = TABLE;
    let mut s = String::new();
    for n in new {
        let (set, e) = n.element(link);
        let _ = writeln!(s, "add element {t} {set} {{ {e} timeout {timeout_s}s }}");
    }
    for n in again {
        let (set, e) = n.element(link);
        let _ = writeln!(s, "add element {t} {set} {{ {e} timeout {timeout_s}s }}");
        let _ = writeln!(s, "delete element {t} {set} {{ {e} }}");
        let _ = writeln!(s, "add element {t} {set} {{ {e} timeout {timeout_s}s }}");
    }
    s
}

/// One transaction that closes each of `named` for `link` whether or not it is still there
/// (added, then deleted: an element that timed out is no error).
pub fn close_named_script(link: &str, named: &[Named]) -> String {
    let t = TABLE;
    let mut s = String::new();
    for n in named {
        let (set, e) = n.element(link);
        let _ = writeln!(s, "add element {t} {set} {{ {e} timeout 1s }}");
        let _ = writeln!(s, "delete element {t} {set} {{ {e} }}");
    }
    s
}

/// Runs one nftables script as one transaction.
pub fn apply(what: &str, script: &str) -> Result<(), NetError> {
    run(what, Command::new("nft").arg("-f").arg("-"), Some(script))
}

/// The table as it stands: each attached link with its chain and resolver port, and the policy
/// chains that exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    pub links: Vec<(String, String)>,
    pub dns: Vec<(String, u16)>,
    pub chains: Vec<String>,
    pub services: Vec<u16>,
    /// Links with addresses opened for them in `named4` or `named4any` (once per element).
    pub named: Vec<String>,
    /// Links whose web traffic goes through the proxy.
    pub proxied: Vec<String>,
    /// Links with counted flows in `flows4` or `flows4r` (once per element).
    pub flows: Vec<String>,
}

/// Reads the table (one `nft -j list table`); empty when there is none yet.
pub fn attached() -> Result<Attached, NetError> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "inet", "airlock"])
        .output()
        .map_err(|e| NetError::Command {
            what: "listing the nftables table inet airlock".into(),
            detail: format!("cannot run nft: {e}"),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(Attached::default());
        }
        return Err(NetError::Command {
            what: "listing the nftables table inet airlock".into(),
            detail: err.trim().to_string(),
        });
    }
    parse_attached(&String::from_utf8_lossy(&out.stdout)).map_err(|detail| NetError::Command {
        what: "reading nft's listing of inet airlock".into(),
        detail,
    })
}

fn parse_attached(json: &str) -> Result<Attached, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let items = v
        .get("nftables")
        .and_then(|n| n.as_array())
        .ok_or("no \"nftables\" array")?;
    let mut out = Attached::default();
    for item in items {
        if let Some(c) = item.get("chain") {
            if let Some(name) = c.get("name").and_then(|n| n.as_str()) {
                if name.starts_with(POLICY_PREFIX) {
                    out.chains.push(name.to_string());
                }
            }
        }
        let elems = |o: &serde_json::Value| -> Vec<serde_json::Value> {
            o.get("elem")
                .and_then(|e| e.as_array())
                .cloned()
                .unwrap_or_default()
        };
        if let Some(m) = item.get("map") {
            match m.get("name").and_then(|n| n.as_str()) {
                Some("links") => {
                    for e in elems(m) {
                        let link = e.get(0).and_then(|l| l.as_str());
                        let chain = e
                            .get(1)
                            .and_then(|v| v.get("jump"))
                            .and_then(|j| j.get("target"))
                            .and_then(|t| t.as_str());
                        if let (Some(l), Some(c)) = (link, chain) {
                            out.links.push((l.to_string(), c.to_string()));
                        }
                    }
                }
                Some("dns") => {
                    for e in elems(m) {
                        let link = e.get(0).and_then(|l| l.as_str());
                        let port = e.get(1).and_then(|p| p.as_u64());
                        if let (Some(l), Some(p)) = (link, port) {
                            out.dns.push((l.to_string(), p as u16));
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(s) = item.get("set") {
            match s.get("name").and_then(|n| n.as_str()) {
                Some("proxied") => out.proxied.extend(
                    elems(s)
                        .iter()
                        .filter_map(|l| l.as_str().map(str::to_string)),
                ),
                Some("services") => out
                    .services
                    .extend(elems(s).iter().filter_map(|p| p.as_u64()).map(|p| p as u16)),
                // Timed elements are `{"elem": {"val": {"concat": [link, …]}, "timeout": …}}`.
                Some("flows4" | "flows4r") => out.flows.extend(elems(s).iter().filter_map(|e| {
                    let v = e.get("elem").and_then(|x| x.get("val")).unwrap_or(e);
                    Some(v.get("concat")?.get(0)?.as_str()?.to_string())
                })),
                Some("named4" | "named4any") => out.named.extend(elems(s).iter().filter_map(|e| {
                    let v = e.get("elem").and_then(|x| x.get("val")).unwrap_or(e);
                    Some(v.get("concat")?.get(0)?.as_str()?.to_string())
                })),
                _ => {}
            }
        }
    }
    out.links.sort();
    out.dns.sort();
    out.chains.sort();
    out.services.sort();
    out.named.sort();
    out.proxied.sort();
    out.flows.sort();
    Ok(out)
}

/// Removes policy chains no link uses, each in a transaction of its own: another airlock may
/// attach a link to a chain between the listing and the removal, and then the kernel refuses
/// (busy) and the chain stays, as it should.
pub fn sweep() -> Result<usize, NetError> {
    let now = attached()?;
    let mut removed = 0;
    for c in &now.chains {
        if !now.links.iter().any(|(_, used)| used == c)
            && apply("", &format!("delete chain {TABLE} {c}\n")).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// One transaction that sends an attached link's DNS to another port (its daemon restarted on
/// a new one). The link must have a `dns` element.
pub fn move_dns_script(link: &str, port: u16) -> String {
    let t = TABLE;
    format!(
        "add element {t} services {{ {port} }}\ndelete element {t} dns {{ \"{link}\" }}\nadd element {t} dns {{ \"{link}\" : {port} }}\n"
    )
}

/// Removes `port` from the services sandboxes may reach, if no link is sent to it. Only the
/// daemon that owned the port calls this (for the port it had before a restart): a port another
/// daemon holds but has no sandbox on at the moment of the listing may be in use again a moment
/// later.
pub fn retire_port(port: u16) -> Result<bool, NetError> {
    let now = attached()?;
    if !now.services.contains(&port) || now.dns.iter().any(|(_, p)| *p == port) {
        return Ok(false);
    }
    apply(
        "removing an old resolver port from inet airlock's services",
        &format!("delete element {TABLE} services {{ {port} }}\n"),
    )?;
    Ok(true)
}

/// The host's IPv4 neighbour table must hold an entry per sandbox (its address on its host
/// link), and the kernel's defaults (GC from 512 entries, none past 1,024) let only about 500
/// sandboxes talk at once ("neighbor table overflow"): the thresholds are raised to these, never
/// lowered. 16,384 is one per /30 of the default /16 sandbox subnet.
const NEIGH_THRESHOLDS: [(&str, u64); 3] = [
    ("gc_thresh1", 1024),
    ("gc_thresh2", 16_384),
    ("gc_thresh3", 32_768),
];

/// Turns on forwarding, sizes the neighbour table for many sandboxes and (re)writes the base
/// rules of the `inet airlock` table.
pub fn setup_host() -> Result<(), NetError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| NetError::Command {
        what: "enabling IPv4 forwarding".into(),
        detail: e.to_string(),
    })?;
    for (knob, want) in NEIGH_THRESHOLDS {
        let path = format!("/proc/sys/net/ipv4/neigh/default/{knob}");
        let now: u64 = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if now < want {
            std::fs::write(&path, want.to_string()).map_err(|e| NetError::Command {
                what: format!("raising {path} from {now} to {want}"),
                detail: e.to_string(),
            })?;
        }
    }
    apply("loading the nftables table inet airlock", &base_script())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: EgressMode, entries: &[&str]) -> EgressPolicy {
        EgressPolicy {
            proxy: None,
            mode,
            allow: entries.iter().map(|e| Allow::parse(e).unwrap()).collect(),
        }
    }

    #[test]
    fn a_policy_chain_holds_its_ranges_then_the_private_drop_then_the_mode() {
        let p = policy(
            EgressMode::Block,
            &[
                "github.com",
                "10.20.0.0/16",
                "192.168.1.7:5432",
                "2001:db8::/32",
            ],
        );
        let c = policy_chain(&p);
        let rules: Vec<&str> = c
            .script
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("add rule {TABLE} {} ", c.name)))
            .collect();
        assert_eq!(
            rules,
            [
                "ip daddr 10.20.0.0/16 accept comment \"10.20.0.0/16\"",
                "ip daddr 192.168.1.7/32 meta l4proto { tcp, udp } th dport 5432 accept comment \"192.168.1.7:5432\"",
                "ip daddr @private4 counter drop comment \"private ranges are closed unless allowed\"",
                "meta l4proto { tcp, udp } th dport { 53, 853 } counter drop comment \"DNS to other resolvers\"",
                "meta l4proto { tcp, udp } iifname . ip daddr . th dport @named4 accept comment \"an allowed name's address, on its port\"",
                "iifname . ip daddr @named4any accept comment \"an allowed name's address\"",
                "counter drop comment \"block mode\"",
            ]
        );
        assert!(c.name.starts_with(POLICY_PREFIX) && c.name.len() == 18);
    }

    #[test]
    fn an_upstream_proxy_pool_has_no_route_out_of_its_own() {
        let mut p = policy(EgressMode::Block, &["github.com", "10.20.0.0/16"]);
        p.proxy =
            Some(airlock_core::egress::UpstreamProxy::parse("http://squid.corp:3128").unwrap());
        let c = policy_chain(&p);
        let rules: Vec<&str> = c
            .script
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("add rule {TABLE} {} ", c.name)))
            .collect();
        assert_eq!(
            rules,
            ["counter drop comment \"no route but the upstream proxy http://squid.corp:3128\""]
        );
        assert_ne!(c.name, policy_chain(&policy(EgressMode::Block, &[])).name);
    }

    #[test]
    fn chains_are_named_by_what_they_enforce() {
        let a = policy_chain(&policy(EgressMode::Open, &["10.20.0.0/16"]));
        let b = policy_chain(&policy(EgressMode::Open, &["10.20.0.0/16", "example.com"]));
        assert_eq!(a, b, "names do not change the chain");
        let c = policy_chain(&policy(EgressMode::Block, &["10.20.0.0/16"]));
        assert_ne!(a.name, c.name);
        let d = policy_chain(&policy(EgressMode::Open, &["10.21.0.0/16"]));
        assert_ne!(a.name, d.name);
        assert_eq!(
            policy_chain(&policy(EgressMode::Open, &[])).name,
            policy_chain(&policy(EgressMode::Audit, &[])).name,
            "audit lets through what open does: the proxy records it"
        );
    }

    #[test]
    fn the_base_rules_list_every_private_range_and_drop_every_forbidden_address() {
        let s = base_script();
        for n in PRIVATE.iter().chain(FORBIDDEN).filter(|n| !n.contains(':')) {
            assert!(s.contains(n), "{n} missing");
        }
        assert!(
            !s.contains("flush table"),
            "a rewrite must keep the maps' elements"
        );
    }

    #[test]
    fn flow_counters_are_read_back() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "inet", "name": "flows4", "table": "airlock",
          "type": ["ifname", "inet_proto", "ipv4_addr", "inet_service"], "flags": ["timeout"], "timeout": 3600,
          "elem": [{"elem": {"val": {"concat": ["airl0001", "tcp", "1.2.3.4", 22]}, "expires": 3599, "counter": {"packets": 3, "bytes": 180}}},
                   {"elem": {"val": {"concat": ["airl0002", "udp", "9.9.9.9", 53]}, "expires": 10}}]}}]}"#;
        let f = parse_flows(json, false).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[0],
            Flow {
                link: "airl0001".into(),
                proto: "tcp".into(),
                addr: "1.2.3.4".parse().unwrap(),
                port: 22,
                reply: false,
                packets: 3,
                bytes: 180
            }
        );
        assert_eq!((f[1].proto.as_str(), f[1].bytes), ("udp", 0));
        let s = forget_flows_script(&f[..1]);
        assert!(
            s.contains("delete element inet airlock flows4 { \"airl0001\" . tcp . 1.2.3.4 . 22 }"),
            "{s}"
        );
    }

    #[test]
    fn a_listing_is_read_back() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"map": {"family": "inet", "name": "links", "table": "airlock", "type": "ifname", "map": "verdict",
                   "elem": [["airl0001", {"jump": {"target": "p_abc"}}]]}},
          {"map": {"family": "inet", "name": "dns", "table": "airlock", "type": "ifname", "map": "inet_service",
                   "elem": [["airl0001", 5354]]}},
          {"set": {"family": "inet", "name": "services", "table": "airlock", "type": "inet_service", "elem": [5354, 6000]}},
          {"set": {"family": "inet", "name": "named4any", "table": "airlock", "flags": ["timeout"],
                   "elem": [{"elem": {"val": {"concat": ["airl0001", "1.2.3.4"]}, "timeout": 30, "expires": 29}}]}},
          {"chain": {"family": "inet", "table": "airlock", "name": "p_abc"}},
          {"chain": {"family": "inet", "table": "airlock", "name": "forward"}}]}"#;
        let a = parse_attached(json).unwrap();
        assert_eq!(a.links, [("airl0001".to_string(), "p_abc".to_string())]);
        assert_eq!(a.dns, [("airl0001".to_string(), 5354)]);
        assert_eq!(a.chains, ["p_abc"]);
        assert_eq!(a.services, [5354, 6000]);
        assert_eq!(a.named, ["airl0001"]);
        assert!(parse_attached("[]").is_err());
    }
}
