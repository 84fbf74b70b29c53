//! The resolver sandboxes are given (their gateway, port 53, redirected here by nftables): DNS
//! over UDP and TCP on one port, answering only addresses of attached sessions, each by its
//! pool's policy. Upstream lookups (with their cache) are hickory-resolver's.
//!
//! By mode: `block` answers only names the allowlist lists (any other is NXDOMAIN) and opens the
//! addresses it answers for the sandbox's link, on the ports the name is allowed, before the
//! answer leaves; `audit` and `open` answer every name. In every mode an answer never holds a
//! forbidden address (cloud metadata, link-local) nor a private one the policy does not allow,
//! nor an IPv6 one (sandboxes have IPv6 off), and every question is in the session's report.
//!
//! It must never answer a source it has no session for, nor forward a question as it came (a
//! sandbox's query never reaches an upstream unchecked).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use airlock_core::egress::{EgressMode, EgressPolicy};
use airlock_net::rules::Named;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::{now_ms, Destination, EgressError, Inner, Protocol, Verdict, MAX_TTL};

/// A TCP client gets this long between messages before its connection is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// What a response over UDP may be at most when the question carried no EDNS size.
const UDP_PLAIN: usize = 512;

/// A resolver that asks `upstreams` (UDP, then TCP for truncated answers), caches, and never
/// reads the host's hosts file (which is the host's, not the sandboxes').
pub(crate) fn upstream(
    upstreams: &[SocketAddr],
) -> Result<hickory_resolver::TokioResolver, EgressError> {
    let servers = upstreams
        .iter()
        .map(|a| {
            let conns = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                .into_iter()
                .map(|mut c| {
                    c.port = a.port();
                    c
                })
                .collect();
            NameServerConfig::new(a.ip(), true, conns)
        })
        .collect();
    let mut opts = ResolverOpts::default();
    opts.use_hosts_file = ResolveHosts::Never;
    opts.preserve_intermediates = true;
    opts.ndots = 0;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    let mut b = hickory_resolver::Resolver::builder_with_config(
        ResolverConfig::from_name_servers(servers),
        TokioRuntimeProvider::default(),
    );
    *b.options_mut() = opts;
    b.build().map_err(|e| EgressError::Resolver(e.to_string()))
}

/// A UDP socket and a TCP listener on one port of `ip`: `prefer` when it is free on both, else
/// the first ephemeral port free on both.
pub(crate) async fn bind(
    ip: IpAddr,
    prefer: Option<u16>,
) -> Result<(UdpSocket, TcpListener), EgressError> {
    let mut last = None;
    for port in prefer.into_iter().chain(std::iter::repeat_n(0, 16)) {
        let addr = SocketAddr::new(ip, port);
        let udp = match UdpSocket::bind(addr).await {
            Ok(u) => u,
            Err(e) => {
                last = Some((addr, e));
                continue;
            }
        };
        let got = udp
            .local_addr()
            .map_err(|source| EgressError::Bind { addr, source })?;
        match TcpListener::bind(got).await {
            Ok(t) => return Ok((udp, t)),
            Err(e) => last = Some((got, e)),
        }
    }
    let (addr, source) = last.expect("tried at least once");
    Err(EgressError::Bind { addr, source })
}

pub(crate) async fn serve_udp(inner: Weak<Inner>, sock: UdpSocket) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "the resolver's UDP socket");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(i) = inner.upgrade() else { return };
        let (q, sock) = (buf[..n].to_vec(), sock.clone());
        tokio::spawn(async move {
            if let Some(out) = answer(&i, src, &q, true).await {
                let _ = sock.send_to(&out, src).await;
            }
        });
    }
}

pub(crate) async fn serve_tcp(inner: Weak<Inner>, listener: TcpListener) {
    loop {
        let (conn, src) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "the resolver's TCP listener");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(i) = inner.upgrade() else { return };
        // Redirected web traffic was going elsewhere than port 53; DNS was going to port 53
        // (or straight here, untranslated).
        let local = conn.local_addr().ok();
        match crate::proxy::original_dst(&conn) {
            Some(orig) if orig.port() != 53 && Some(SocketAddr::V4(orig)) != local => {
                tokio::spawn(crate::proxy::serve(i, conn, src, orig));
            }
            _ => {
                tokio::spawn(async move {
                    let _ = serve_conn(&i, conn, src).await;
                });
            }
        }
    }
}

async fn serve_conn(
    inner: &Arc<Inner>,
    mut conn: TcpStream,
    src: SocketAddr,
) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
        match tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut q)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let Some(out) = answer(inner, src, &q, false).await else {
            return Ok(());
        };
        let Ok(n) = u16::try_from(out.len()) else {
            return Ok(());
        };
        conn.write_all(&n.to_be_bytes()).await?;
        conn.write_all(&out).await?;
    }
}

/// The name as reports and policies write it: lowercase ASCII (IDNA), no trailing dot.
fn plain(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// The wire response to the wire question `q` from `src`; `None`: nothing to send (not a DNS
/// question at all).
pub(crate) async fn answer(
    inner: &Arc<Inner>,
    src: SocketAddr,
    q: &[u8],
    udp: bool,
) -> Option<Vec<u8>> {
    let req = match Message::from_vec(q) {
        Ok(m) => m,
        Err(_) => {
            // A header's worth gets FORMERR, anything shorter nothing.
            let id = u16::from_be_bytes([*q.first()?, *q.get(1)?]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
    };
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut resp = respond(inner, src, &req).await;
    inner.answered.fetch_add(1, Ordering::Relaxed);
    if req.edns.is_some() {
        let mut e = hickory_proto::op::Edns::new();
        e.set_max_payload(1232);
        resp.set_edns(e);
    }
    let out = resp.to_vec().ok()?;
    let max = if req.edns.is_some() {
        usize::from(req.max_payload()).min(1232)
    } else {
        UDP_PLAIN
    };
    if udp && out.len() > max {
        return resp.truncate().to_vec().ok();
    }
    Some(out)
}

async fn respond(inner: &Arc<Inner>, src: SocketAddr, req: &Message) -> Message {
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_queries(req.queries.iter().cloned());
    let live = match src.ip() {
        IpAddr::V4(a) => inner.live(a),
        IpAddr::V6(a) => a.to_ipv4_mapped().and_then(|a| inner.live(a)),
    };
    let Some(live) = live else {
        resp.metadata.response_code = ResponseCode::Refused;
        return resp;
    };
    if req.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return resp;
    }
    let [q] = req.queries.as_slice() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp;
    };
    let name = plain(q.name());
    let policy = &live.session.policy;
    let listed = policy.names(&name);
    let now = now_ms();
    let sighting = |verdict: Verdict, reason: Option<String>, answers: Vec<IpAddr>| Destination {
        name: Some(name.clone()),
        addr: None,
        port: 53,
        protocol: Protocol::Dns,
        verdict,
        reason,
        answers,
        bytes_out: 0,
        bytes_in: 0,
        count: 1,
        first_ms: now,
        last_ms: now,
    };
    let verdict = match (policy.mode, listed) {
        (EgressMode::Block, false) => {
            inner.record(
                &live,
                sighting(
                    Verdict::Blocked,
                    Some("not in the allowlist".into()),
                    vec![],
                ),
            );
            resp.metadata.response_code = ResponseCode::NXDomain;
            return resp;
        }
        (EgressMode::Audit, false) => Verdict::Audit,
        _ => Verdict::Allowed,
    };
    let reason = (verdict == Verdict::Audit).then(|| "not in the allowlist".to_string());
    let mut fq = q.name().clone();
    fq.set_fqdn(true);
    let lookup = inner.resolver.lookup(fq, q.query_type()).await;
    match lookup {
        Ok(l) => {
            let (records, kept, refused) = filter(policy, l.answers());
            if policy.mode == EgressMode::Block && !kept.is_empty() {
                let named = named(policy, &name, &kept);
                if let Err(e) = inner.open(&live, named).await {
                    tracing::error!(sandbox = %live.session.id, error = %e, "cannot open an allowed name's addresses");
                    resp.metadata.response_code = ResponseCode::ServFail;
                    return resp;
                }
            }
            let answers: Vec<IpAddr> = kept.iter().map(|a| IpAddr::V4(*a)).collect();
            let d = if kept.is_empty() && !refused.is_empty() {
                sighting(
                    Verdict::Blocked,
                    Some(format!(
                        "resolves only to addresses no sandbox may reach ({})",
                        refused
                            .iter()
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                    vec![],
                )
            } else {
                sighting(verdict, reason, answers)
            };
            inner.record(&live, d);
            resp.add_answers(records);
        }
        Err(e) if e.is_nx_domain() => {
            inner.record(&live, sighting(verdict, reason, vec![]));
            resp.metadata.response_code = ResponseCode::NXDomain;
        }
        Err(e) if e.is_no_records_found() => {
            inner.record(&live, sighting(verdict, reason, vec![]));
        }
        Err(e) => {
            tracing::warn!(name = %name, error = %e, "an upstream lookup failed");
            inner.record(&live, sighting(verdict, reason, vec![]));
            resp.metadata.response_code = ResponseCode::ServFail;
        }
    }
    resp
}

/// The records a sandbox may be given, the IPv4 addresses among them, and the addresses taken
/// out (forbidden, or private and not allowed). IPv6 addresses are left out silently: a sandbox
/// has no IPv6. TTLs are capped at `MAX_TTL`, so the sandbox asks again before what block mode
/// opened for it times out.
fn filter(
    policy: &EgressPolicy,
    records: &[hickory_proto::rr::Record],
) -> (Vec<hickory_proto::rr::Record>, Vec<Ipv4Addr>, Vec<IpAddr>) {
    let (mut out, mut kept, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    for r in records {
        match &r.data {
            RData::A(a) => {
                if policy.may_resolve_to(IpAddr::V4(a.0)) {
                    kept.push(a.0);
                } else {
                    refused.push(IpAddr::V4(a.0));
                    continue;
                }
            }
            RData::AAAA(_) => continue,
            _ if r.record_type() == RecordType::OPT => continue,
            _ => {}
        }
        let mut r = r.clone();
        r.ttl = r.ttl.min(MAX_TTL);
        out.push(r);
    }
    (out, kept, refused)
}

/// What block mode opens for `name`'s addresses: each on every port the policy allows the name.
fn named(policy: &EgressPolicy, name: &str, addrs: &[Ipv4Addr]) -> Vec<Named> {
    let ports = policy.name_ports(name);
    let mut out = Vec::new();
    for a in addrs {
        // An entry without a port opens every port: the ported entries add nothing.
        if ports.contains(&None) {
            out.push(Named {
                addr: *a,
                port: None,
            });
        } else {
            out.extend(ports.iter().map(|p| Named { addr: *a, port: *p }));
        }
    }
    out.sort();
    out.dedup();
    out
}
