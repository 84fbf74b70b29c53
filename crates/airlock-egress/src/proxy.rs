//! The egress proxy: web traffic (TCP 80 and 443) of sandboxes in audit and block mode is
//! redirected here by nftables, on the resolver's port; what the connection was going to is its
//! original destination (conntrack's, `SO_ORIGINAL_DST`). The proxy reads what the connection is
//! for from its first bytes, never terminating TLS: the TLS ClientHello's server name (SNI,
//! read by rustls' `Acceptor`, which only parses), an HTTP request's `Host` (httparse), or an
//! HTTP `CONNECT`'s target. Then, by the sandbox's policy:
//!
//! - `block`: a name must be allowed on the port; the proxy resolves it itself and connects to
//!   the address the sandbox chose only when that is one of the name's, else to the name's
//!   first, so a forged SNI or `Host` never reaches an address of the sandbox's choosing. A
//!   connection without a name (TLS without SNI, not HTTP, an address as the name) passes only
//!   to an address an entry allows.
//! - `audit`: everything passes to where it was going, recorded `audit` when block mode would
//!   have stopped it.
//! - Every mode: never to a forbidden address (cloud metadata, link-local), a private one the
//!   policy does not allow, the host itself, or another sandbox: the proxy connects from the
//!   host, so it checks what the forward chain would have.
//!
//! Each connection is one `tcp` destination in the session's report, with the bytes each way.
//! Nothing of a request but the name goes into a report (no path, no header). Once let
//! through, a connection's bytes are moved by the kernel (`relay`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use airlock_core::egress::{EgressMode, EgressPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{now_ms, Destination, Inner, Live, Protocol, Verdict};

/// A client gets this long to send what its connection is for.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The most the proxy reads before it must know what a connection is for (a ClientHello with
/// post-quantum key shares is a few KiB; request heads rarely more).
const HEAD_MAX: usize = 64 * 1024;
/// How long connecting to the destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the first bytes of a connection say it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// TLS, with the ClientHello's server name if it has one.
    Tls(Option<String>),
    /// An HTTP request, with its `Host` (or its absolute URI's host) and the port either
    /// names; `absolute`: its target is an absolute URI (a request made to a proxy).
    Http {
        host: Option<String>,
        port: Option<u16>,
        absolute: bool,
    },
    /// An HTTP `CONNECT host:port`, whose head is `head` bytes long (answered by the proxy,
    /// never forwarded).
    Connect {
        host: String,
        port: u16,
        head: usize,
    },
    /// Neither (or malformed).
    Other,
}

/// What `buf` (a connection's first bytes) is for; `None`: more bytes are needed to tell.
pub fn sniff(buf: &[u8]) -> Option<Sniffed> {
    let first = *buf.first()?;
    if first == 0x16 {
        return sniff_tls(buf);
    }
    if first.is_ascii_uppercase() {
        return sniff_http(buf);
    }
    Some(Sniffed::Other)
}

fn sniff_tls(buf: &[u8]) -> Option<Sniffed> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd = buf;
    while !rd.is_empty() {
        match acceptor.read_tls(&mut rd) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Some(Sniffed::Tls(None)),
        }
    }
    match acceptor.accept() {
        Ok(Some(a)) => Some(Sniffed::Tls(a.client_hello().server_name().map(host_name))),
        Ok(None) if buf.len() < HEAD_MAX => None,
        // A hello rustls refuses to read: TLS, but whatever name it may carry is unknown.
        Ok(None) | Err(_) => Some(Sniffed::Tls(None)),
    }
}

fn sniff_http(buf: &[u8]) -> Option<Sniffed> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() < HEAD_MAX => None,
        Ok(httparse::Status::Partial) | Err(_) => Some(Sniffed::Other),
        Ok(httparse::Status::Complete(head)) => {
            let target = req.path.unwrap_or("");
            if req.method == Some("CONNECT") {
                return Some(match split_authority(target) {
                    Some((host, Some(port))) => Sniffed::Connect {
                        host: host_name(host),
                        port,
                        head,
                    },
                    _ => Sniffed::Other,
                });
            }
            // The absolute form (`GET http://name/ HTTP/1.1`) a client sends a proxy.
            let uri_host = target
                .strip_prefix("http://")
                .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
            let header = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::trim)
                .filter(|h| !h.is_empty());
            let authority = uri_host.or(header).and_then(split_authority);
            Some(Sniffed::Http {
                host: authority.map(|(h, _)| host_name(h)),
                port: authority.and_then(|(_, p)| p),
                absolute: uri_host.is_some(),
            })
        }
    }
}

/// `host[:port]` or `[v6]:port` split; `None` when malformed.
fn split_authority(a: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = a.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(p) => Some((host, Some(p.parse().ok()?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, Some(p.parse().ok()?))),
        Some(_) => None,
        None if a.is_empty() => None,
        None => Some((a, None)),
    }
}

/// A name as policies and reports write it: lowercase, no trailing dot.
fn host_name(h: &str) -> String {
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// Where one connection goes, and what the policy says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The name it was for, when it had one that is not an address.
    name: Option<String>,
    /// Where the proxy connects (`None`: blocked before an address was chosen).
    target: Option<Ipv4Addr>,
    port: u16,
    verdict: Verdict,
    reason: Option<String>,
}

/// What the proxy may never connect to for a sandbox, whatever its policy says: the host (it
/// connects from the host, where the forward chain does not apply) and other sandboxes.
pub(crate) trait Reach {
    fn host_local(&self, ip: Ipv4Addr) -> bool;
    fn sandbox(&self, ip: Ipv4Addr) -> bool;
}

/// Why the proxy may not connect to `ip:port` for a sandbox with `policy`; `None`: it may.
fn unreachable(
    policy: &EgressPolicy,
    reach: &dyn Reach,
    ip: Ipv4Addr,
    port: u16,
) -> Option<&'static str> {
    let v = IpAddr::V4(ip);
    if airlock_core::egress::forbidden(v) {
        Some("a forbidden address (cloud metadata, link-local)")
    } else if ip.is_loopback() || ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        Some("not an address a sandbox may reach")
    } else if reach.host_local(ip) {
        Some("the host itself")
    } else if reach.sandbox(ip) {
        Some("another sandbox")
    } else if !policy.allows_resolved(v, port) {
        Some("a private address the allowlist does not cover")
    } else {
        None
    }
}

/// The plan for a connection that was going to `chosen:port` (`None` for `CONNECT`, whose
/// target is only a name or an address in its request) and is for `name`; `resolved` is what
/// the proxy's resolver says of the name (`Err`: the lookup failed, in words).
///
/// With an upstream proxy (`policy.proxy`) a named connection has no address here: the upstream
/// resolves the name (it may know names this host cannot resolve); one that resolves here only
/// to addresses no sandbox may reach is still blocked.
pub(crate) fn plan(
    policy: &EgressPolicy,
    reach: &dyn Reach,
    name: Option<&str>,
    chosen: Option<Ipv4Addr>,
    port: u16,
    resolved: Result<Vec<Ipv4Addr>, String>,
) -> Plan {
    let block = policy.mode == EgressMode::Block;
    let upstream = policy.proxy.is_some();
    let blocked = |name: Option<&str>, target: Option<Ipv4Addr>, why: String| Plan {
        name: name.map(str::to_string),
        target,
        port,
        verdict: Verdict::Blocked,
        reason: Some(why),
    };
    let Some(name) = name else {
        let Some(ip) = chosen else {
            return blocked(None, None, "no destination".into());
        };
        if let Some(why) = unreachable(policy, reach, ip, port) {
            return blocked(None, Some(ip), why.into());
        }
        let listed = policy.allows_addr(IpAddr::V4(ip), port);
        let why = "no name (TLS without SNI, or not HTTP) and the address is not in the allowlist";
        return match (listed, block) {
            (true, _) => Plan {
                name: None,
                target: Some(ip),
                port,
                verdict: Verdict::Allowed,
                reason: None,
            },
            (false, true) => blocked(None, Some(ip), why.into()),
            (false, false) => Plan {
                name: None,
                target: Some(ip),
                port,
                verdict: Verdict::Audit,
                reason: Some(why.into()),
            },
        };
    };
    let listed = policy.allows_name(name, port);
    if block && !listed {
        return blocked(
            Some(name),
            chosen,
            format!("not in the allowlist on port {port}"),
        );
    }
    let (verdict, reason) = if listed {
        (Verdict::Allowed, None)
    } else {
        (
            Verdict::Audit,
            Some(format!("not in the allowlist on port {port}")),
        )
    };
    if upstream {
        let addrs = resolved.unwrap_or_default();
        if !addrs.is_empty()
            && addrs
                .iter()
                .all(|a| unreachable(policy, reach, *a, port).is_some())
        {
            return blocked(
                Some(name),
                addrs.first().copied(),
                "resolves only to addresses no sandbox may reach".into(),
            );
        }
        return Plan {
            name: Some(name.to_string()),
            target: None,
            port,
            verdict,
            reason,
        };
    }
    let target = match chosen.filter(|_| !block) {
        Some(ip) => {
            // Audit: where the sandbox was going, if a sandbox may go there at all.
            if let Some(why) = unreachable(policy, reach, ip, port) {
                return blocked(Some(name), Some(ip), why.into());
            }
            ip
        }
        None => {
            // The name's own addresses: the one the sandbox chose when it is one of them.
            let addrs = match resolved {
                Ok(a) => a,
                Err(e) => return blocked(Some(name), chosen, format!("cannot resolve: {e}")),
            };
            let ok: Vec<Ipv4Addr> = addrs
                .iter()
                .copied()
                .filter(|a| unreachable(policy, reach, *a, port).is_none())
                .collect();
            match chosen.filter(|c| ok.contains(c)).or(ok.first().copied()) {
                Some(t) => t,
                None if addrs.is_empty() => {
                    return blocked(Some(name), chosen, "resolves to no address".into())
                }
                None => {
                    return blocked(
                        Some(name),
                        addrs.first().copied(),
                        "resolves only to addresses no sandbox may reach".into(),
                    )
                }
            }
        }
    };
    Plan {
        name: Some(name.to_string()),
        target: Some(target),
        port,
        verdict,
        reason,
    }
}

/// The host's own addresses (every interface's) and this daemon's sandboxes.
struct HostReach<'a> {
    inner: &'a Inner,
    local: Vec<Ipv4Addr>,
}

impl<'a> HostReach<'a> {
    fn new(inner: &'a Inner) -> HostReach<'a> {
        let local = nix::ifaddrs::getifaddrs()
            .map(|it| {
                it.filter_map(|i| i.address?.as_sockaddr_in().map(|s| s.ip()))
                    .collect()
            })
            .unwrap_or_default();
        HostReach { inner, local }
    }
}

impl Reach for HostReach<'_> {
    fn host_local(&self, ip: Ipv4Addr) -> bool {
        self.local.contains(&ip)
    }
    fn sandbox(&self, ip: Ipv4Addr) -> bool {
        self.inner.live(ip).is_some()
    }
}

/// The destination a redirected connection was going to (conntrack's record of it).
pub(crate) fn original_dst(conn: &TcpStream) -> Option<SocketAddrV4> {
    let sin = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::OriginalDst).ok()?;
    Some(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
        u16::from_be(sin.sin_port),
    ))
}

/// Serves one redirected connection from `src` that was going to `orig`.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    mut conn: TcpStream,
    src: SocketAddr,
    orig: SocketAddrV4,
) {
    let IpAddr::V4(src_ip) = src.ip() else { return };
    let Some(live) = inner.live(src_ip) else {
        tracing::debug!(%src, "a proxied connection from no attached sandbox");
        return;
    };
    let start = now_ms();
    let mut buf = Vec::with_capacity(4096);
    let sniffed = tokio::time::timeout(HELLO_TIMEOUT, async {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(s) = sniff(&buf) {
                return s;
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return Sniffed::Other,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let Ok(sniffed) = sniffed else {
        // Said nothing in time: nothing went anywhere, nothing to report but the attempt.
        record(
            &inner,
            &live,
            plan_silent(&live.session.policy, orig),
            start,
            0,
            0,
        );
        return;
    };
    if buf.is_empty() {
        return;
    }
    let reach = HostReach::new(&inner);
    // Sent to the gateway's proxy port (a job's `http_proxy`), not redirected on its way out.
    let explicit = reach.host_local(*orig.ip());
    let (name, chosen, port, head) = match &sniffed {
        Sniffed::Http {
            host,
            port,
            absolute,
        } if explicit || *absolute => (host.clone(), None, port.unwrap_or(80), 0),
        Sniffed::Tls(n) | Sniffed::Http { host: n, .. } => {
            (n.clone(), Some(*orig.ip()), orig.port(), 0)
        }
        Sniffed::Connect { host, port, head } => (Some(host.clone()), None, *port, *head),
        Sniffed::Other => (None, Some(*orig.ip()), orig.port(), 0),
    };
    // A name that is an address is no name: the address is the destination.
    let (name, chosen) = match name.as_deref().map(str::parse::<IpAddr>) {
        Some(Ok(IpAddr::V4(a))) if chosen.is_none() => (None, Some(a)),
        Some(Ok(_)) => (None, chosen),
        _ => (name, chosen),
    };
    let policy = &live.session.policy;
    let resolved = match &name {
        Some(n)
            if policy.mode == EgressMode::Block || chosen.is_none() || policy.proxy.is_some() =>
        {
            resolve(&inner, n).await
        }
        _ => Ok(Vec::new()),
    };
    let plan = plan(policy, &reach, name.as_deref(), chosen, port, resolved);
    let connect = matches!(sniffed, Sniffed::Connect { .. });
    // A request already in a proxy's form goes to the upstream as it is; anything else is
    // tunnelled through it with a `CONNECT`.
    let as_is = matches!(sniffed, Sniffed::Http { absolute: true, .. });
    if plan.verdict == Verdict::Blocked {
        if connect || as_is {
            let _ = conn
                .write_all(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
        record(&inner, &live, plan, start, 0, 0);
        return;
    }
    let dest = match (&plan.name, plan.target) {
        (Some(n), _) if policy.proxy.is_some() => n.clone(),
        (_, Some(t)) => t.to_string(),
        (Some(n), None) => n.clone(),
        (None, None) => return,
    };
    let up = match &policy.proxy {
        Some(u) => via_upstream(u, &dest, port, !as_is).await,
        None => match plan.target {
            Some(t) => direct(t, port).await,
            None => Err((
                "no address".to_string(),
                &b"HTTP/1.1 502 Bad Gateway\r\n"[..],
            )),
        },
    };
    let up = match up {
        Ok(s) => s,
        Err((why, status)) => {
            tracing::debug!(sandbox = %live.session.id, %dest, port, error = %why, "a proxied connection failed");
            if connect || as_is {
                let _ = conn.write_all(status).await;
                let _ = conn
                    .write_all(b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            }
            let mut p = plan;
            if why.starts_with("the upstream proxy refused") {
                p.verdict = Verdict::Blocked;
                p.reason = Some(why);
            }
            record(&inner, &live, p, start, 0, 0);
            return;
        }
    };
    let _ = up.set_nodelay(true);
    if connect
        && conn
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
    {
        return;
    }
    // Seen now (a long download shows in the report while it runs); its bytes at the end.
    record(&inner, &live, plan.clone(), start, 0, 0);
    let first = buf.split_off(head.min(buf.len()));
    crate::relay::relay(
        &inner,
        &live,
        conn,
        up,
        first,
        destination(plan, start, 0, 0, 0),
    )
    .await;
}

type Failed = (String, &'static [u8]);

/// A connection to `ip:port`.
async fn direct(ip: Ipv4Addr, port: u16) -> Result<TcpStream, Failed> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((ip, port))).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err((e.to_string(), b"HTTP/1.1 502 Bad Gateway\r\n")),
        Err(_) => Err(("timed out".into(), b"HTTP/1.1 504 Gateway Timeout\r\n")),
    }
}

/// A connection to the upstream proxy, tunnelled to `dest:port` with a `CONNECT` when
/// `tunnel` (else the request the sandbox sent, already in a proxy's form, follows as it is).
async fn via_upstream(
    up: &airlock_core::egress::UpstreamProxy,
    dest: &str,
    port: u16,
    tunnel: bool,
) -> Result<TcpStream, Failed> {
    let work = async {
        let mut s = TcpStream::connect(up.authority()).await.map_err(|e| {
            (
                format!("the upstream proxy {up}: {e}"),
                &b"HTTP/1.1 502 Bad Gateway\r\n"[..],
            )
        })?;
        if !tunnel {
            return Ok(s);
        }
        let authority = if dest.contains(':') {
            format!("[{dest}]:{port}")
        } else {
            format!("{dest}:{port}")
        };
        s.write_all(
            format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| {
            (
                format!("the upstream proxy {up}: {e}"),
                &b"HTTP/1.1 502 Bad Gateway\r\n"[..],
            )
        })?;
        // Its answer's head, a byte at a time: nothing of the tunnel may be read past it.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 * 1024
                || s.read(&mut b)
                    .await
                    .map_err(|e| (e.to_string(), &b"HTTP/1.1 502 Bad Gateway\r\n"[..]))?
                    == 0
            {
                return Err((
                    format!("the upstream proxy {up} closed the connection"),
                    &b"HTTP/1.1 502 Bad Gateway\r\n"[..],
                ));
            }
            head.push(b[0]);
        }
        let status = String::from_utf8_lossy(&head);
        let line = status.lines().next().unwrap_or("").trim().to_string();
        match line.split_whitespace().nth(1) {
            Some("200") => Ok(s),
            _ => Err((
                format!("the upstream proxy refused: {line}"),
                &b"HTTP/1.1 502 Bad Gateway\r\n"[..],
            )),
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err((
            format!("the upstream proxy {up}: timed out"),
            b"HTTP/1.1 504 Gateway Timeout\r\n",
        )),
    }
}

/// A connection that never said what it was for.
fn plan_silent(policy: &EgressPolicy, orig: SocketAddrV4) -> Plan {
    let (verdict, reason) = match policy.mode {
        EgressMode::Block => (Verdict::Blocked, "sent nothing to tell where it was going"),
        _ => (Verdict::Audit, "sent nothing to tell where it was going"),
    };
    Plan {
        name: None,
        target: Some(*orig.ip()),
        port: orig.port(),
        verdict,
        reason: Some(reason.into()),
    }
}

async fn resolve(inner: &Inner, name: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut fq = match hickory_proto::rr::Name::from_ascii(name) {
        Ok(n) => n,
        Err(e) => return Err(format!("not a name: {e}")),
    };
    fq.set_fqdn(true);
    match inner
        .resolver
        .lookup(fq, hickory_proto::rr::RecordType::A)
        .await
    {
        Ok(l) => Ok(l
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                hickory_proto::rr::RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

fn destination(p: Plan, start: i64, out: u64, inn: u64, count: u64) -> Destination {
    Destination {
        name: p.name,
        addr: p.target.map(IpAddr::V4),
        port: p.port,
        protocol: Protocol::Tcp,
        verdict: p.verdict,
        reason: p.reason,
        answers: Vec::new(),
        bytes_out: out,
        bytes_in: inn,
        count,
        first_ms: start,
        last_ms: now_ms(),
    }
}

fn record(inner: &Inner, live: &Live, p: Plan, start: i64, out: u64, inn: u64) {
    inner.record(live, destination(p, start, out, inn, 1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::egress::Allow;

    fn policy(mode: EgressMode, entries: &[&str]) -> EgressPolicy {
        EgressPolicy {
            proxy: None,
            mode,
            allow: entries.iter().map(|e| Allow::parse(e).unwrap()).collect(),
        }
    }

    struct Fake;
    impl Reach for Fake {
        fn host_local(&self, ip: Ipv4Addr) -> bool {
            ip == Ipv4Addr::new(192, 0, 2, 1)
        }
        fn sandbox(&self, ip: Ipv4Addr) -> bool {
            ip == Ipv4Addr::new(10, 200, 0, 6)
        }
    }

    /// A real ClientHello, made by rustls' client for `sni` (none when `None`).
    fn client_hello(sni: Option<&str>) -> Vec<u8> {
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut cfg = cfg;
        cfg.enable_sni = sni.is_some();
        let name = rustls::pki_types::ServerName::try_from(sni.unwrap_or("nosni.test").to_string())
            .unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn a_client_hello_gives_its_server_name_and_a_part_asks_for_more() {
        let h = client_hello(Some("Files.Example.COM"));
        assert_eq!(
            sniff(&h),
            Some(Sniffed::Tls(Some("files.example.com".into())))
        );
        for cut in [1, 5, 40, h.len() - 1] {
            assert_eq!(sniff(&h[..cut]), None, "cut at {cut}");
        }
        assert_eq!(sniff(&client_hello(None)), Some(Sniffed::Tls(None)));
        // A record header that claims a hello and then garbage: TLS, no name.
        let mut bad = vec![0x16, 3, 1, 0, 8];
        bad.extend_from_slice(&[1, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(sniff(&bad), Some(Sniffed::Tls(None)));
    }

    #[test]
    fn http_heads_give_host_connect_or_nothing() {
        let s = |b: &[u8]| sniff(b);
        assert_eq!(
            s(b"GET /x HTTP/1.1\r\nUser-Agent: t\r\nHOST: Deb.Debian.org:80\r\n\r\n"),
            Some(Sniffed::Http {
                host: Some("deb.debian.org".into()),
                port: Some(80),
                absolute: false
            })
        );
        assert_eq!(
            s(b"GET http://pypi.org/simple HTTP/1.1\r\n\r\n"),
            Some(Sniffed::Http {
                host: Some("pypi.org".into()),
                port: None,
                absolute: true
            })
        );
        assert_eq!(
            s(b"GET / HTTP/1.0\r\n\r\n"),
            Some(Sniffed::Http {
                host: None,
                port: None,
                absolute: false
            })
        );
        assert_eq!(
            s(b"GET http://Files.Example:8080/x HTTP/1.1\r\nHost: other\r\n\r\n"),
            Some(Sniffed::Http {
                host: Some("files.example".into()),
                port: Some(8080),
                absolute: true
            }),
            "a proxy request's URI wins over its Host"
        );
        let c = b"CONNECT github.com:443 HTTP/1.1\r\nHost: github.com:443\r\n\r\n\x16\x03";
        assert_eq!(
            s(c),
            Some(Sniffed::Connect {
                host: "github.com".into(),
                port: 443,
                head: c.len() - 2
            })
        );
        assert_eq!(
            s(b"CONNECT github.com HTTP/1.1\r\n\r\n"),
            Some(Sniffed::Other)
        );
        assert_eq!(s(b"GET / HTTP/1.1\r\nHost: a"), None, "a partial head");
        assert_eq!(s(b"SSH-2.0-OpenSSH_9.2\r\n"), Some(Sniffed::Other));
        assert_eq!(s(b"\x00\x01binary"), Some(Sniffed::Other));
        assert_eq!(s(b""), None);
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(HEAD_MAX + 1, b'a');
        assert_eq!(s(&long), Some(Sniffed::Other), "a head that never ends");
    }

    #[test]
    fn authorities_split() {
        assert_eq!(split_authority("a.b:80"), Some(("a.b", Some(80))));
        assert_eq!(split_authority("a.b"), Some(("a.b", None)));
        assert_eq!(split_authority("[::1]:443"), Some(("::1", Some(443))));
        assert_eq!(split_authority("a.b:x"), None);
        assert_eq!(split_authority("::1"), None);
        assert_eq!(split_authority(""), None);
    }

    const GH: Ipv4Addr = Ipv4Addr::new(140, 82, 121, 4);
    const EVIL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

    #[test]
    fn block_connects_only_to_an_allowed_names_own_addresses() {
        let p = policy(EgressMode::Block, &["github.com:443", "10.20.0.0/16"]);
        // The sandbox's own choice, when it is the name's.
        let ok = plan(&p, &Fake, Some("github.com"), Some(GH), 443, Ok(vec![GH]));
        assert_eq!((ok.verdict, ok.target), (Verdict::Allowed, Some(GH)));
        // A forged SNI on an address of the sandbox's choosing reaches the name's instead.
        let forged = plan(&p, &Fake, Some("github.com"), Some(EVIL), 443, Ok(vec![GH]));
        assert_eq!(
            (forged.verdict, forged.target),
            (Verdict::Allowed, Some(GH))
        );
        // Not on that port; not listed at all.
        let port = plan(&p, &Fake, Some("github.com"), Some(GH), 80, Ok(vec![GH]));
        assert_eq!(port.verdict, Verdict::Blocked);
        assert_eq!(
            port.reason.as_deref(),
            Some("not in the allowlist on port 80")
        );
        let other = plan(
            &p,
            &Fake,
            Some("evil.test"),
            Some(EVIL),
            443,
            Ok(vec![EVIL]),
        );
        assert_eq!(other.verdict, Verdict::Blocked);
        // An allowed name pointing at metadata, the host or another sandbox stays out.
        for bad in [
            Ipv4Addr::new(169, 254, 169, 254),
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(10, 200, 0, 6),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(192, 168, 1, 1),
        ] {
            let r = plan(&p, &Fake, Some("github.com"), Some(bad), 443, Ok(vec![bad]));
            assert_eq!(r.verdict, Verdict::Blocked, "{bad}");
        }
        let gone = plan(&p, &Fake, Some("github.com"), Some(GH), 443, Ok(vec![]));
        assert_eq!(gone.reason.as_deref(), Some("resolves to no address"));
        let err = plan(
            &p,
            &Fake,
            Some("github.com"),
            Some(GH),
            443,
            Err("timed out".into()),
        );
        assert_eq!(err.verdict, Verdict::Blocked);
        // No name: only an allowed address.
        let lan = Ipv4Addr::new(10, 20, 3, 4);
        assert_eq!(
            plan(&p, &Fake, None, Some(lan), 443, Ok(vec![])).verdict,
            Verdict::Allowed
        );
        assert_eq!(
            plan(&p, &Fake, None, Some(GH), 443, Ok(vec![])).verdict,
            Verdict::Blocked
        );
        // CONNECT to a name: the name's address.
        let c = plan(&p, &Fake, Some("github.com"), None, 443, Ok(vec![GH]));
        assert_eq!((c.verdict, c.target), (Verdict::Allowed, Some(GH)));
    }

    #[test]
    fn through_an_upstream_names_go_as_names_and_the_allowlist_still_applies() {
        let mut p = policy(EgressMode::Block, &["github.com:443"]);
        p.proxy = Some(airlock_core::egress::UpstreamProxy::parse("http://squid:3128").unwrap());
        // Not resolvable here: the upstream resolves it.
        let ok = plan(&p, &Fake, Some("github.com"), None, 443, Ok(vec![]));
        assert_eq!((ok.verdict, ok.target), (Verdict::Allowed, None));
        let err = plan(
            &p,
            &Fake,
            Some("github.com"),
            None,
            443,
            Err("no server".into()),
        );
        assert_eq!(err.verdict, Verdict::Allowed);
        assert_eq!(
            plan(&p, &Fake, Some("evil.test"), None, 443, Ok(vec![])).verdict,
            Verdict::Blocked
        );
        let meta = Ipv4Addr::new(169, 254, 169, 254);
        let m = plan(&p, &Fake, Some("github.com"), None, 443, Ok(vec![meta]));
        assert_eq!(
            m.verdict,
            Verdict::Blocked,
            "resolving here to metadata stays out"
        );
    }

    #[test]
    fn audit_goes_where_the_sandbox_chose_and_says_what_block_would_do() {
        let p = policy(EgressMode::Audit, &["github.com"]);
        let ok = plan(&p, &Fake, Some("github.com"), Some(GH), 443, Ok(vec![]));
        assert_eq!((ok.verdict, ok.target), (Verdict::Allowed, Some(GH)));
        let other = plan(&p, &Fake, Some("evil.test"), Some(EVIL), 443, Ok(vec![]));
        assert_eq!((other.verdict, other.target), (Verdict::Audit, Some(EVIL)));
        let bare = plan(&p, &Fake, None, Some(EVIL), 443, Ok(vec![]));
        assert_eq!(bare.verdict, Verdict::Audit);
        let meta = Ipv4Addr::new(169, 254, 169, 254);
        let m = plan(&p, &Fake, Some("github.com"), Some(meta), 80, Ok(vec![]));
        assert_eq!(
            m.verdict,
            Verdict::Blocked,
            "audit never opens what is forbidden"
        );
        assert_eq!(
            plan(&p, &Fake, None, Some(meta), 80, Ok(vec![])).verdict,
            Verdict::Blocked
        );
        let host = plan(
            &p,
            &Fake,
            None,
            Some(Ipv4Addr::new(192, 0, 2, 1)),
            80,
            Ok(vec![]),
        );
        assert_eq!(host.reason.as_deref(), Some("the host itself"));
    }
}
