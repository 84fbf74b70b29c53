//! The sandboxes' resolver under load, beside its upstream in the same run:
//!
//! - answers per second for one cached name, from `AIRLOCK_BENCH_CLIENTS` (32) clients each
//!   asking again as soon as it has an answer, over UDP on loopback: the resolver (open mode,
//!   and block mode with the name's addresses already open) against the test upstream asked
//!   directly by the same clients (an authoritative answer from a table: a floor no forwarding
//!   resolver can beat);
//! - with root: the latency of a block-mode answer for a name asked the first time (an upstream
//!   lookup and one nftables transaction opening its address) beside the same first question in
//!   open mode (the upstream lookup alone).
//!
//! `cargo bench -p airlock-egress --bench resolver` (root for the second part).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_core::egress::{Allow, EgressMode, EgressPolicy};
use airlock_egress::testdns::TestDns;
use airlock_egress::{Egress, EgressConfig, Session, Table};
use airlock_net::rules::Attached;
use airlock_net::NetError;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

#[derive(Debug)]
struct NoTable;
impl Table for NoTable {
    fn apply(&self, _: &str, _: &str) -> Result<(), NetError> {
        Ok(())
    }
    fn attached(&self) -> Result<Attached, NetError> {
        Ok(Attached::default())
    }
}

fn question(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// Asks once and checks the answer is an address (not a refusal the benchmark would count).
async fn check(server: SocketAddr, from: Ipv4Addr, name: &str) {
    let s = tokio::net::UdpSocket::bind((from, 0)).await.unwrap();
    s.send_to(&question(1, name), server).await.unwrap();
    let mut buf = [0u8; 1500];
    let n = s.recv(&mut buf).await.unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(
        m.answers.len(),
        1,
        "{name} from {from}: {:?}",
        m.metadata.response_code
    );
}

/// Answers per second from `clients` clients (each from its own loopback address, a sandbox's
/// stand-in) asking `name` of `server` for `secs`.
async fn rate(server: SocketAddr, clients: &[Ipv4Addr], name: &str, secs: f64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (done, name, c) = (done.clone(), name.to_string(), *c);
        tasks.push(tokio::spawn(async move {
            let s = tokio::net::UdpSocket::bind((c, 0)).await.unwrap();
            s.connect(server).await.unwrap();
            let mut buf = [0u8; 1500];
            let mut id = (i as u16).wrapping_mul(977);
            while Instant::now() < until {
                id = id.wrapping_add(1);
                s.send(&question(id, &name)).await.unwrap();
                if let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(1), s.recv(&mut buf)).await
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / secs
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn session(id: &str, addr: Ipv4Addr, mode: EgressMode) -> Session {
    Session {
        id: id.into(),
        owner: format!("bench/{id}"),
        link: format!("airlbench{}", addr.octets()[3]),
        addr,
        pool: Some("bench".into()),
        policy: EgressPolicy {
            proxy: None,
            mode,
            allow: vec![Allow::parse("*.bench.test").unwrap()],
        },
        since_ms: 0,
    }
}

async fn start(dir: &std::path::Path, upstream: SocketAddr, table: Arc<dyn Table>) -> Egress {
    let mut cfg = EgressConfig::new(dir.to_path_buf());
    cfg.upstreams = vec![upstream];
    cfg.bind = Ipv4Addr::LOCALHOST.into();
    cfg.table = table;
    Egress::start(cfg).await.unwrap()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n: usize = std::env::var("AIRLOCK_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let rounds = 5;
    let secs = 1.0;
    // Each first-asked name has an address of its own, so each block-mode answer opens one.
    let names: Vec<(String, Ipv4Addr)> = (0..200u8)
        .flat_map(|i| {
            [
                (format!("o{i}.bench.test"), Ipv4Addr::new(198, 18, 201, i)),
                (format!("b{i}.bench.test"), Ipv4Addr::new(198, 18, 202, i)),
            ]
        })
        .collect();
    let mut zone: Vec<(&str, Ipv4Addr)> = names.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    zone.push(("*.bench.test", Ipv4Addr::new(198, 18, 200, 1)));
    let up = TestDns::on_loopback(Ipv4Addr::LOCALHOST, &zone).unwrap();
    let t = tempfile::tempdir().unwrap();
    let egress = start(&t.path().join("a"), up.addr, Arc::new(NoTable)).await;
    let clients: Vec<Ipv4Addr> = (0..n)
        .map(|i| Ipv4Addr::new(127, 0, 1, 2 + i as u8))
        .collect();
    let blockers: Vec<Ipv4Addr> = (0..n)
        .map(|i| Ipv4Addr::new(127, 0, 2, 2 + i as u8))
        .collect();
    for c in &clients {
        egress
            .attach(session(
                &format!("o{}", c.octets()[3]),
                *c,
                EgressMode::Open,
            ))
            .unwrap();
    }
    for c in &blockers {
        egress
            .attach(session(
                &format!("b{}", c.octets()[3]),
                *c,
                EgressMode::Block,
            ))
            .unwrap();
    }
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, egress.port()));
    check(up.addr, clients[0], "www.bench.test.").await;
    check(server, clients[0], "www.bench.test.").await;
    check(server, blockers[0], "www.bench.test.").await;
    // Warm the cache and the opened addresses.
    rate(server, &clients, "www.bench.test.", 0.2).await;
    rate(server, &blockers, "www.bench.test.", 0.2).await;
    let (mut base, mut open, mut block) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        base.push(rate(up.addr, &clients, "www.bench.test.", secs).await);
        open.push(rate(server, &clients, "www.bench.test.", secs).await);
        block.push(rate(server, &blockers, "www.bench.test.", secs).await);
    }
    let (b, o, k) = (median(&mut base), median(&mut open), median(&mut block));
    println!("resolver answers/s, {n} clients, median of {rounds} rounds of {secs} s:");
    println!("  upstream asked directly (baseline): {b:>9.0}/s");
    println!(
        "  resolver, open mode, cached:        {o:>9.0}/s  ({:.2} of baseline)",
        o / b
    );
    println!(
        "  resolver, block mode, cached+open:  {k:>9.0}/s  ({:.2} of baseline)",
        k / b
    );

    if !nix::unistd::geteuid().is_root() {
        println!("(not root: skipping the first-answer latency with real nftables)");
        return;
    }
    airlock_net::setup_host().unwrap();
    let real = start(&t.path().join("b"), up.addr, Arc::new(airlock_egress::Nft)).await;
    let (oc, bc) = (Ipv4Addr::new(127, 0, 3, 2), Ipv4Addr::new(127, 0, 3, 3));
    real.attach(session("lo", oc, EgressMode::Open)).unwrap();
    real.attach(session("lb", bc, EgressMode::Block)).unwrap();
    let rport = real.port();
    let first = |from: Ipv4Addr, name: String| async move {
        let s = tokio::net::UdpSocket::bind((from, 0)).await.unwrap();
        let t0 = Instant::now();
        s.send_to(&question(7, &name), (Ipv4Addr::LOCALHOST, rport))
            .await
            .unwrap();
        let mut buf = [0u8; 1500];
        let n = s.recv(&mut buf).await.unwrap();
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.answers.len(), 1, "{name}: {:?}", m.metadata.response_code);
        ms
    };
    let (mut lo, mut lb) = (Vec::new(), Vec::new());
    for i in 0..200u8 {
        lo.push(first(oc, format!("o{i}.bench.test.")).await);
        lb.push(first(bc, format!("b{i}.bench.test.")).await);
    }
    println!("first answer for a new name, 200 names each (ms):");
    println!(
        "  open mode (upstream lookup):              p50 {:.2}  p95 {:.2}",
        pct(&mut lo, 0.5),
        pct(&mut lo, 0.95)
    );
    println!(
        "  block mode (lookup + nftables opening):   p50 {:.2}  p95 {:.2}",
        pct(&mut lb, 0.5),
        pct(&mut lb, 0.95)
    );
    real.detach("lo").unwrap();
    real.detach("lb").unwrap();
}
