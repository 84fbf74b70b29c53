//! The resolver over real UDP and TCP sockets on loopback, asking a real (test) upstream, with
//! the nftables side recorded instead of applied (the table is tested against real nft in
//! airlock-net and in the sandbox suites).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use airlock_core::egress::{Allow, EgressMode, EgressPolicy};
use airlock_egress::testdns::TestDns;
use airlock_egress::{Egress, EgressConfig, Protocol, Session, Table, Verdict};
use airlock_net::rules::Attached;
use airlock_net::NetError;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

#[derive(Debug, Default)]
struct Recorder {
    scripts: Mutex<Vec<String>>,
    listing: Mutex<Attached>,
}

impl Table for Recorder {
    /// Records the script, and keeps the `dns` map of the listing as nft would (what a restart
    /// reads back before it retires its old port).
    fn apply(&self, _what: &str, script: &str) -> Result<(), NetError> {
        self.scripts.lock().unwrap().push(script.to_string());
        let mut l = self.listing.lock().unwrap();
        for line in script.lines() {
            let inner = |p: &str| line.strip_prefix(p).and_then(|r| r.strip_suffix(" }"));
            if let Some(e) = inner("add element inet airlock dns { ") {
                let (link, port) = e.split_once(" : ").unwrap();
                let link = link.trim_matches('"').to_string();
                if !l.dns.iter().any(|(k, _)| *k == link) {
                    l.dns.push((link, port.parse().unwrap()));
                }
            } else if let Some(e) = inner("delete element inet airlock dns { ") {
                let link = e.trim_matches('"');
                l.dns.retain(|(k, _)| k != link);
            }
        }
        Ok(())
    }
    fn attached(&self) -> Result<Attached, NetError> {
        Ok(self.listing.lock().unwrap().clone())
    }
}

impl Recorder {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.scripts.lock().unwrap())
    }
}

fn policy(mode: EgressMode, allow: &[&str]) -> EgressPolicy {
    EgressPolicy {
        proxy: None,
        mode,
        allow: allow.iter().map(|e| Allow::parse(e).unwrap()).collect(),
    }
}

const ZONE: &[(&str, Ipv4Addr)] = &[
    ("allowed.test", Ipv4Addr::new(198, 18, 0, 10)),
    ("denied.test", Ipv4Addr::new(198, 18, 0, 11)),
    ("meta.cdn.test", Ipv4Addr::new(169, 254, 169, 254)),
    ("inside.cdn.test", Ipv4Addr::new(10, 1, 2, 3)),
    ("lan.cdn.test", Ipv4Addr::new(192, 168, 1, 1)),
    ("*.cdn.test", Ipv4Addr::new(198, 18, 0, 12)),
];

struct World {
    _upstream: TestDns,
    table: Arc<Recorder>,
    egress: Egress,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let upstream = TestDns::on_loopback(Ipv4Addr::LOCALHOST, ZONE).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let table = Arc::new(Recorder::default());
    let egress = start(dir.path(), upstream.addr, table.clone()).await;
    World {
        _upstream: upstream,
        table,
        egress,
        _dir: dir,
    }
}

async fn start(dir: &std::path::Path, upstream: SocketAddr, table: Arc<Recorder>) -> Egress {
    let mut cfg = EgressConfig::new(dir.join("egress"));
    cfg.upstreams = vec![upstream];
    cfg.bind = Ipv4Addr::LOCALHOST.into();
    cfg.table = table;
    Egress::start(cfg).await.unwrap()
}

fn session(id: &str, addr: Ipv4Addr, p: EgressPolicy) -> Session {
    Session {
        id: id.into(),
        owner: format!("t/{id}"),
        link: format!("airl{id}"),
        addr,
        pool: Some("small".into()),
        policy: p,
        since_ms: 0,
    }
}

fn question(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

/// Asks over UDP from `from` (a loopback address standing in for a sandbox's).
async fn ask(e: &Egress, from: Ipv4Addr, name: &str, t: RecordType) -> Message {
    let s = tokio::net::UdpSocket::bind((from, 0)).await.unwrap();
    s.send_to(&question(name, t), (Ipv4Addr::LOCALHOST, e.port()))
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.recv(&mut buf))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, 0x4242);
    m
}

fn addrs(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

const SANDBOX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

#[tokio::test]
async fn block_mode_answers_only_listed_names_and_opens_their_addresses_first() {
    let w = world().await;
    let p = policy(
        EgressMode::Block,
        &["allowed.test", "*.cdn.test:443", "10.1.0.0/16"],
    );
    w.egress.attach(session("s1", SANDBOX, p)).unwrap();
    let attach = w.table.take();
    assert_eq!(attach.len(), 1);
    assert!(
        attach[0].contains(&format!(
            "add element inet airlock dns {{ \"airls1\" : {} }}",
            w.egress.port()
        )),
        "{}",
        attach[0]
    );

    let m = ask(&w.egress, SANDBOX, "allowed.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addrs(&m), [Ipv4Addr::new(198, 18, 0, 10)]);
    assert!(m.answers.iter().all(|r| r.ttl <= airlock_egress::MAX_TTL));
    let opened = w.table.take();
    assert_eq!(opened.len(), 1, "one transaction before the answer");
    assert!(
        opened[0].contains("named4any { \"airls1\" . 198.18.0.10 timeout 900s }"),
        "{}",
        opened[0]
    );

    // Asked again: still open, no transaction.
    ask(&w.egress, SANDBOX, "allowed.test.", RecordType::A).await;
    assert!(w.table.take().is_empty());

    let m = ask(&w.egress, SANDBOX, "x.cdn.test.", RecordType::A).await;
    assert_eq!(addrs(&m), [Ipv4Addr::new(198, 18, 0, 12)]);
    let opened = w.table.take();
    assert!(
        opened[0].contains("named4 { \"airls1\" . 198.18.0.12 . 443 timeout 900s }"),
        "{}",
        opened[0]
    );

    let m = ask(&w.egress, SANDBOX, "denied.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.answers.is_empty());
    // A listed name that points at the metadata service, or into a private range not allowed,
    // gets no address; one inside an allowed range does.
    let m = ask(&w.egress, SANDBOX, "meta.cdn.test.", RecordType::A).await;
    assert_eq!(
        (m.metadata.response_code, addrs(&m)),
        (ResponseCode::NoError, vec![])
    );
    let m = ask(&w.egress, SANDBOX, "lan.cdn.test.", RecordType::A).await;
    assert!(addrs(&m).is_empty());
    let m = ask(&w.egress, SANDBOX, "inside.cdn.test.", RecordType::A).await;
    assert_eq!(addrs(&m), [Ipv4Addr::new(10, 1, 2, 3)]);
    // No IPv6 in a sandbox.
    let m = ask(&w.egress, SANDBOX, "allowed.test.", RecordType::AAAA).await;
    assert_eq!(
        (m.metadata.response_code, m.answers.len()),
        (ResponseCode::NoError, 0)
    );
    assert!(w
        .table
        .take()
        .iter()
        .all(|s| !s.contains("169.254") && !s.contains("192.168")));

    let r = w.egress.report("s1").unwrap();
    let get = |n: &str| {
        r.destinations
            .iter()
            .find(|d| d.name.as_deref() == Some(n))
            .unwrap_or_else(|| panic!("{n} not in {r:#?}"))
    };
    assert_eq!(get("allowed.test").verdict, Verdict::Allowed);
    assert_eq!(get("allowed.test").count, 3, "two A and one AAAA question");
    assert_eq!(get("allowed.test").protocol, Protocol::Dns);
    assert_eq!(get("denied.test").verdict, Verdict::Blocked);
    assert_eq!(
        get("denied.test").reason.as_deref(),
        Some("not in the allowlist")
    );
    assert_eq!(get("meta.cdn.test").verdict, Verdict::Blocked);
    assert!(get("meta.cdn.test")
        .reason
        .as_deref()
        .unwrap()
        .contains("169.254.169.254"));
    assert_eq!(get("lan.cdn.test").verdict, Verdict::Blocked);
    assert_eq!(get("inside.cdn.test").verdict, Verdict::Allowed);
    assert_eq!(w.egress.blocked_by_pool().get("small"), Some(&3));

    // Detached: the link's elements and every address it opened go in one transaction, the
    // report is kept for the daemon, and the address gets no more answers.
    let report = w.egress.detach("s1").unwrap().unwrap();
    assert_eq!(report, r);
    let detach = w.table.take();
    assert_eq!(detach.len(), 1);
    for want in [
        "delete element inet airlock links { \"airls1\" }",
        "delete element inet airlock dns { \"airls1\" }",
        "delete element inet airlock named4any { \"airls1\" . 198.18.0.10 }",
        "delete element inet airlock named4 { \"airls1\" . 198.18.0.12 . 443 }",
        "delete element inet airlock named4 { \"airls1\" . 10.1.2.3 . 443 }",
    ] {
        assert!(
            detach[0].contains(want),
            "{want} missing from {}",
            detach[0]
        );
    }
    assert_eq!(w.egress.detach("s1").unwrap(), None, "detach is idempotent");
    let m = ask(&w.egress, SANDBOX, "allowed.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let done = w.egress.finished();
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].0.id.as_str(), &done[0].1), ("s1", &report));
    w.egress.forget("s1").unwrap();
    assert!(w.egress.finished().is_empty());
}

#[tokio::test]
async fn audit_mode_answers_everything_and_records_what_block_would_stop() {
    let w = world().await;
    let p = policy(EgressMode::Audit, &["allowed.test"]);
    w.egress.attach(session("s2", SANDBOX, p)).unwrap();
    w.table.take();
    let m = ask(&w.egress, SANDBOX, "denied.test.", RecordType::A).await;
    assert_eq!(addrs(&m), [Ipv4Addr::new(198, 18, 0, 11)]);
    let m = ask(&w.egress, SANDBOX, "allowed.test.", RecordType::A).await;
    assert_eq!(addrs(&m), [Ipv4Addr::new(198, 18, 0, 10)]);
    let m = ask(&w.egress, SANDBOX, "nowhere.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // Even in audit mode the metadata address is never handed out.
    let m = ask(&w.egress, SANDBOX, "meta.cdn.test.", RecordType::A).await;
    assert!(addrs(&m).is_empty());
    assert!(
        w.table.take().is_empty(),
        "audit mode opens nothing: everything is open"
    );
    let r = w.egress.report("s2").unwrap();
    let v = |n: &str| {
        r.destinations
            .iter()
            .find(|d| d.name.as_deref() == Some(n))
            .map(|d| d.verdict)
    };
    assert_eq!(v("denied.test"), Some(Verdict::Audit));
    assert_eq!(v("allowed.test"), Some(Verdict::Allowed));
    assert_eq!(v("nowhere.test"), Some(Verdict::Audit));
    assert_eq!(v("meta.cdn.test"), Some(Verdict::Blocked));
    let d = r
        .destinations
        .iter()
        .find(|d| d.name.as_deref() == Some("denied.test"))
        .unwrap();
    assert_eq!(
        d.answers,
        [std::net::IpAddr::from(Ipv4Addr::new(198, 18, 0, 11))]
    );
}

#[tokio::test]
async fn strangers_are_refused_and_tcp_is_answered_too() {
    let w = world().await;
    w.egress
        .attach(session("s3", SANDBOX, policy(EgressMode::Open, &[])))
        .unwrap();
    let m = ask(
        &w.egress,
        Ipv4Addr::new(127, 0, 0, 3),
        "allowed.test.",
        RecordType::A,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(m.answers.is_empty());

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((SANDBOX, 0))).unwrap();
    let mut c = sock
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, w.egress.port())))
        .await
        .unwrap();
    for name in ["denied.test.", "a.cdn.test."] {
        let q = question(name, RecordType::A);
        c.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        c.write_all(&q).await.unwrap();
        let mut len = [0u8; 2];
        c.read_exact(&mut len).await.unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        c.read_exact(&mut buf).await.unwrap();
        let m = Message::from_vec(&buf).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(addrs(&m).len(), 1, "{name}");
    }
    // Garbage gets FORMERR (a header's worth) or nothing, never a crash.
    let s = tokio::net::UdpSocket::bind((SANDBOX, 0)).await.unwrap();
    s.send_to(&[0x12, 0x34, 0xff], (Ipv4Addr::LOCALHOST, w.egress.port()))
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (0x1234, ResponseCode::FormErr)
    );
    let m = ask(&w.egress, SANDBOX, "allowed.test.", RecordType::A).await;
    assert_eq!(addrs(&m).len(), 1, "still answering");
}

#[tokio::test]
async fn a_restart_keeps_sessions_and_points_their_dns_at_the_new_port() {
    let upstream = TestDns::on_loopback(Ipv4Addr::LOCALHOST, ZONE).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let table = Arc::new(Recorder::default());
    let first = start(dir.path(), upstream.addr, table.clone()).await;
    let p = policy(EgressMode::Block, &["allowed.test"]);
    first.attach(session("s4", SANDBOX, p.clone())).unwrap();
    first
        .attach(session("s5", Ipv4Addr::new(127, 0, 0, 5), p))
        .unwrap();
    ask(&first, SANDBOX, "allowed.test.", RecordType::A).await;
    ask(&first, SANDBOX, "denied.test.", RecordType::A).await;
    first.flush();
    let old = first.port();
    drop(first);
    // Whatever the table holds for s4 (attached, on the old port); s5's transaction never
    // happened (a crash between its file and the table).
    *table.listing.lock().unwrap() = Attached {
        links: vec![("airls4".into(), "p_x".into())],
        dns: vec![("airls4".into(), old)],
        chains: vec!["p_x".into()],
        services: vec![old],
        named: vec![],
        proxied: vec![],
        flows: vec![],
    };
    table.take();
    // Hold the old port so the new run cannot have it (once the first run's tasks let go).
    let mut hold = None;
    for _ in 0..100 {
        if let Ok(h) = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, old)) {
            hold = Some(h);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _hold = hold.expect("the first run's socket closes once it is dropped");
    let second = start(dir.path(), upstream.addr, table.clone()).await;
    assert_ne!(second.port(), old);
    let scripts = table.take();
    let new = second.port();
    assert!(
        scripts.iter().any(
            |s| s.contains("delete element inet airlock dns { \"airls4\" }")
                && s.contains(&format!(
                    "add element inet airlock dns {{ \"airls4\" : {new} }}"
                ))
        ),
        "{scripts:#?}"
    );
    assert!(
        scripts.iter().any(|s| s.contains(&format!(
            "add element inet airlock dns {{ \"airls5\" : {new} }}"
        )) && s.contains("add element inet airlock links { \"airls5\"")),
        "{scripts:#?}"
    );
    assert!(
        scripts
            .iter()
            .any(|s| s.contains(&format!("delete element inet airlock services {{ {old} }}"))),
        "{scripts:#?}"
    );
    // The report so far survived; questions are answered on the new port.
    let r = second.report("s4").unwrap();
    assert!(r
        .destinations
        .iter()
        .any(|d| d.name.as_deref() == Some("denied.test") && d.verdict == Verdict::Blocked));
    let m = ask(&second, SANDBOX, "allowed.test.", RecordType::A).await;
    assert_eq!(addrs(&m), [Ipv4Addr::new(198, 18, 0, 10)]);
    // Detaching after the restart closes what the first run opened.
    second.detach("s4").unwrap().unwrap();
    let s = table.take();
    assert!(
        s.iter()
            .any(|s| s
                .contains("delete element inet airlock named4any { \"airls4\" . 198.18.0.10 }")),
        "{s:#?}"
    );
    // An unreadable session file is set aside, not deleted and not fatal.
    drop(second);
    std::fs::write(dir.path().join("egress/bad.json"), b"{").unwrap();
    let third = start(dir.path(), upstream.addr, table.clone()).await;
    assert!(dir.path().join("egress/bad.json.bad").exists());
    assert_eq!(
        third
            .sessions()
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        ["s5"]
    );
}

#[tokio::test]
async fn no_upstream_is_a_clear_error() {
    // An upstream that answers nothing: lookups fail with SERVFAIL, the resolver keeps going.
    let dead = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let table = Arc::new(Recorder::default());
    let e = start(dir.path(), dead.local_addr().unwrap(), table).await;
    e.attach(session("s6", SANDBOX, policy(EgressMode::Open, &[])))
        .unwrap();
    let m = ask(&e, SANDBOX, "allowed.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let err = airlock_egress::EgressError::NoUpstream.to_string();
    assert!(err.contains("[container]"), "{err}");
    // A bad id is refused before anything is written.
    let bad = e.attach(session("../x", SANDBOX, policy(EgressMode::Open, &[])));
    assert!(bad.is_err());
}
