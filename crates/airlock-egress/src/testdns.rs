//! An authoritative name server for tests' "internets" (never the daemon's): a fixed zone of
//! names (exact, or `*.domain` for any name below it) to IPv4 addresses, NXDOMAIN for the rest,
//! over UDP and TCP on sockets the test made (in a namespace of its own, or on loopback). It
//! counts the questions it got, so a test can tell whether a sandbox's query reached it.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug)]
pub struct TestDns {
    pub addr: std::net::SocketAddr,
    questions: Arc<AtomicU64>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

type Zone = Arc<Vec<(String, Ipv4Addr)>>;

fn lookup(zone: &Zone, name: &str) -> Option<Ipv4Addr> {
    zone.iter().find_map(|(n, a)| {
        let hit = match n.strip_prefix("*.") {
            Some(d) => name
                .strip_suffix(d)
                .is_some_and(|h| h.ends_with('.') && h.len() > 1),
            None => n == name,
        };
        hit.then_some(*a)
    })
}

fn respond(zone: &Zone, q: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(q).ok()?;
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.add_queries(req.queries.iter().cloned());
    if let Some(q) = req.queries.first() {
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        match lookup(zone, &name) {
            Some(a) if q.query_type() == RecordType::A => {
                resp.add_answer(Record::from_rdata(q.name().clone(), 60, RData::A(A(a))));
            }
            Some(_) => {}
            None => resp.metadata.response_code = ResponseCode::NXDomain,
        }
    }
    resp.to_vec().ok()
}

impl TestDns {
    /// Serves `zone` on `udp` and on `tcp` (the same address, made by the caller: see
    /// `airlock_net::Outside::udp` and `listen`).
    pub fn serve(
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
        zone: &[(&str, Ipv4Addr)],
    ) -> std::io::Result<TestDns> {
        let addr = udp.local_addr()?;
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        let udp = tokio::net::UdpSocket::from_std(udp)?;
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        let zone: Zone = Arc::new(zone.iter().map(|(n, a)| (n.to_string(), *a)).collect());
        let questions = Arc::new(AtomicU64::new(0));
        let (z, n) = (zone.clone(), questions.clone());
        let u = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, src)) = udp.recv_from(&mut buf).await {
                n.fetch_add(1, Ordering::Relaxed);
                if let Some(out) = respond(&z, &buf[..len]) {
                    let _ = udp.send_to(&out, src).await;
                }
            }
        });
        let (z, n) = (zone, questions.clone());
        let t = tokio::spawn(async move {
            while let Ok((mut c, _)) = tcp.accept().await {
                let (z, n) = (z.clone(), n.clone());
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    while c.read_exact(&mut len).await.is_ok() {
                        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                        if c.read_exact(&mut q).await.is_err() {
                            return;
                        }
                        n.fetch_add(1, Ordering::Relaxed);
                        let Some(out) = respond(&z, &q) else { return };
                        let l = (out.len() as u16).to_be_bytes();
                        if c.write_all(&l).await.is_err() || c.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(TestDns {
            addr,
            questions,
            tasks: vec![u.abort_handle(), t.abort_handle()],
        })
    }

    /// Serves `zone` on loopback (`ip`, a free port).
    pub fn on_loopback(ip: Ipv4Addr, zone: &[(&str, Ipv4Addr)]) -> std::io::Result<TestDns> {
        for _ in 0..16 {
            let udp = std::net::UdpSocket::bind((ip, 0))?;
            let port = udp.local_addr()?.port();
            if let Ok(tcp) = std::net::TcpListener::bind((ip, port)) {
                return TestDns::serve(udp, tcp, zone);
            }
        }
        Err(std::io::Error::other("no port free for both UDP and TCP"))
    }

    /// Questions answered so far.
    pub fn questions(&self) -> u64 {
        self.questions.load(Ordering::Relaxed)
    }
}
