//! What an egress policy adds to a container sandbox's start: create, then start, until the job
//! has resolved a name and connected (its first line of output), for sandboxes attached with a
//! block-mode policy, interleaved with the same sandboxes under `mode = "open"` in the same run
//! (both through airlock's resolver; block mode adds its chain and, at the job's first question,
//! one nftables transaction opening the answer).
//!
//! Then the egress proxy's throughput: a download of AIRLOCK_BENCH_DOWNLOAD_MIB (default 1024)
//! over HTTP from "the internet" by a job in a block-mode sandbox (through the proxy, its
//! relay threads splicing, and again with the splicing on the runtime) against the same
//! download by a job in an open one (straight through NAT), interleaved, AIRLOCK_BENCH_DOWNLOADS
//! (default 9) each; the job times its own download, and the CPU time all CPUs spent during it
//! (and the hypervisor's steal) comes from /proc/stat.
//!
//! `sudo cargo bench -p airlock-sandbox --bench egress` (AIRLOCK_BENCH_SANDBOXES, default 30;
//! 0 measures only the downloads).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use airlock_core::egress::{Allow, EgressMode, EgressPolicy};
use airlock_egress::testdns::TestDns;
use airlock_egress::testweb::TestWeb;
use airlock_egress::{Egress, EgressConfig};
use airlock_image::Manifest;
use airlock_sandbox::container::ContainerBackend;
use airlock_sandbox::{Backend, Limits, Secret};

const SLOT: u8 = 14;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    common::require_root();
    let n = common::env_n("AIRLOCK_BENCH_SANDBOXES", 30);
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = common::Reaper(root.clone());
    let inet = common::Internet::start(SLOT);
    let dns_at = SocketAddr::from((inet.addr, 53));
    let (udp, tcp) = airlock_net::outside::in_netns(&inet.ns, move || {
        Ok((
            std::net::UdpSocket::bind(dns_at)?,
            std::net::TcpListener::bind(dns_at)?,
        ))
    })
    .unwrap();
    // A name per sandbox (block mode opens each at its first question), all on the one address.
    let names: Vec<String> = (0..n).map(|i| format!("h{i}.bench.test")).collect();
    let mut zone: Vec<(&str, Ipv4Addr)> = names.iter().map(|s| (s.as_str(), inet.addr)).collect();
    zone.push(("dl.bench.test", inet.addr));
    let (http, https) = airlock_net::outside::in_netns(&inet.ns, || {
        Ok((
            std::net::TcpListener::bind("0.0.0.0:80")?,
            std::net::TcpListener::bind("0.0.0.0:443")?,
        ))
    })
    .unwrap();
    TestWeb::serve(http, https).unwrap();
    let _dns = TestDns::serve(udp, tcp, &zone).unwrap();
    let mut ec = EgressConfig::new(t.path().join("egress"));
    ec.upstreams = vec![dns_at];
    let egress = Egress::start(ec).await.unwrap();
    let e2 = egress.clone();
    let b =
        common::backend_configured(&root, SLOT, common::Rt::Default, Duration::ZERO, move |c| {
            c.egress = Some(e2)
        })
        .await;
    let m = common::shell_image();
    let policy = |mode| EgressPolicy {
        proxy: None,
        mode,
        allow: vec![
            Allow::parse("*.bench.test:8000").unwrap(),
            Allow::parse("dl.bench.test:80").unwrap(),
        ],
    };
    let job = |name: &str| {
        format!(
            "exec python3 -c 'import socket; s=socket.create_connection((\"{name}\", {}), 5); print(\"connected\", flush=True)'",
            inet.port
        )
    };
    let (mut open, mut block) = (Vec::new(), Vec::new());
    for i in 0..if n == 0 { 0 } else { n + 2 } {
        for mode in [EgressMode::Open, EgressMode::Block] {
            let id = format!("eb{}{i}", &mode.as_str()[..1]);
            let mut s = common::spec(&id, &m, Limits::default());
            s.egress = policy(mode);
            // A name not asked before: block mode opens its answer.
            let name = &names[i % n];
            let t0 = Instant::now();
            b.create(&s).await.unwrap();
            b.start(&s, &Secret::new(job(name))).await.unwrap();
            let log = root.join(&id).join("runner.log");
            loop {
                if std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("connected")
                {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "{id}: {:?}",
                    std::fs::read_to_string(&log)
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            b.destroy(&id).await.unwrap();
            // The first two rounds warm the page cache and the runtime.
            if i >= 2 {
                match mode {
                    EgressMode::Block => block.push(ms),
                    _ => open.push(ms),
                }
            }
        }
    }
    if n > 0 {
        start_report(n, &mut open, &mut block);
    }
    download(&b, &egress, &root, &m, policy).await;
}

fn start_report(n: usize, open: &mut [f64], block: &mut [f64]) {
    let (op50, op95) = (common::pct(open, 0.5), common::pct(open, 0.95));
    let (bp50, bp95) = (common::pct(block, 0.5), common::pct(block, 0.95));
    println!(
        "container create -> start -> first connection by name, {n} sandboxes each, interleaved:"
    );
    println!("  mode = \"open\"  (baseline): p50 {op50:.1} ms  p95 {op95:.1} ms");
    println!(
        "  mode = \"block\":            p50 {bp50:.1} ms  p95 {bp95:.1} ms  ({:+.1}% at p50, {:+.1}% at p95)",
        (bp50 / op50 - 1.0) * 100.0,
        (bp95 / op95 - 1.0) * 100.0
    );
}

/// How the bytes of one download went.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    /// `mode = "open"`: straight through NAT (the baseline).
    Direct,
    /// `mode = "block"`, through the proxy, its relay threads splicing.
    Threads,
    /// The same, splicing on the async runtime (`relay_threads = 0`).
    Runtime,
}

/// Downloads through the proxy (block mode) against the same with no proxy (open mode),
/// interleaved, with what each cost the machine's CPUs.
async fn download(
    b: &ContainerBackend,
    egress: &Egress,
    root: &Path,
    m: &Manifest,
    policy: impl Fn(EgressMode) -> EgressPolicy,
) {
    let rounds = common::env_n("AIRLOCK_BENCH_DOWNLOADS", 9);
    let mib = common::env_n("AIRLOCK_BENCH_DOWNLOAD_MIB", 1024) as u64;
    let bytes = mib << 20;
    let download = format!(
        r#"exec python3 - <<'EOF'
import socket, time
s = socket.create_connection(("dl.bench.test", 80), 10)
t = time.monotonic()
s.sendall(b"GET /bytes/{bytes} HTTP/1.0\r\nHost: dl.bench.test\r\n\r\n")
buf = bytearray(1 << 20); n = 0
while True:
    k = s.recv_into(buf)
    if not k: break
    n += k
print("downloaded", n, time.monotonic() - t, flush=True)
EOF
"#
    );
    let ways = [Way::Direct, Way::Threads, Way::Runtime];
    // Per way: MiB/s, CPU seconds per GiB (all CPUs), steal share.
    let mut got: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); 3];
    for i in 0..rounds {
        for (w, way) in ways.iter().enumerate() {
            let mode = match way {
                Way::Direct => EgressMode::Open,
                _ => EgressMode::Block,
            };
            egress.set_relay_threads(match way {
                Way::Runtime => 0,
                _ => airlock_egress::relay::MAX_THREADS,
            });
            let id = format!("ed{w}{i}");
            let mut s = common::spec(&id, m, Limits::default());
            s.egress = policy(mode);
            b.create(&s).await.unwrap();
            let cpu0 = Cpu::now();
            b.start(&s, &Secret::new(download.clone())).await.unwrap();
            let code = common::wait_exit(b, &id, Duration::from_secs(600)).await;
            let cpu = Cpu::now().since(&cpu0);
            let log =
                std::fs::read_to_string(root.join(&id).join("runner.log")).unwrap_or_default();
            let report = egress.report(&id);
            b.destroy(&id).await.unwrap();
            assert_eq!(code, Some(0), "{id}: {log}");
            let line = log
                .lines()
                .find_map(|l| l.strip_prefix("downloaded "))
                .unwrap_or_else(|| panic!("{id}: {log}"));
            let (n, secs) = line.split_once(' ').unwrap();
            // The body and the head of the answer.
            assert!(n.parse::<u64>().unwrap() > bytes, "{id}: {line}");
            if mode == EgressMode::Block {
                // It went through the proxy, which counted it.
                let r = report.unwrap();
                let d = r
                    .destinations
                    .iter()
                    .find(|d| d.protocol == airlock_egress::Protocol::Tcp)
                    .unwrap_or_else(|| panic!("no proxied connection in {r:?}"));
                assert!(d.bytes_in > bytes, "{d:?}");
            }
            let g = &mut got[w];
            g.0.push(mib as f64 / secs.parse::<f64>().unwrap());
            g.1.push(cpu.busy / mib as f64 * 1024.0);
            g.2.push(cpu.steal_share());
        }
    }
    assert_eq!(
        airlock_egress::relay::threads(),
        0,
        "relay threads left running"
    );
    let med: Vec<(f64, f64, f64)> = got
        .iter_mut()
        .map(|g| {
            (
                common::pct(&mut g.0, 0.5),
                common::pct(&mut g.1, 0.5),
                common::pct(&mut g.2, 0.5),
            )
        })
        .collect();
    println!("download of {mib} MiB over HTTP by a job, {rounds} each, interleaved (medians):");
    let names = [
        "mode = \"open\"  (no proxy, baseline)    ",
        "mode = \"block\" (proxy, relay threads)  ",
        "mode = \"block\" (proxy, on the runtime) ",
    ];
    for (w, (rate, cpu, steal)) in med.iter().enumerate() {
        let ratio = match w {
            0 => String::new(),
            _ => format!("  ratio {:.2}", rate / med[0].0),
        };
        println!(
            "  {}{rate:5.0} MiB/s{ratio}  CPU {cpu:.2} s/GiB  steal {:.0}%",
            names[w],
            steal * 100.0
        );
    }
}

/// The machine's CPU time so far (`/proc/stat`, all CPUs), in seconds.
struct Cpu {
    busy: f64,
    steal: f64,
    all: f64,
}

impl Cpu {
    fn now() -> Cpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let f: Vec<f64> = stat
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse::<f64>().unwrap() / 100.0)
            .collect();
        // user nice system idle iowait irq softirq steal
        Cpu {
            busy: f[0] + f[1] + f[2] + f[5] + f[6],
            steal: f[7],
            all: f[..8].iter().sum(),
        }
    }

    fn since(&self, then: &Cpu) -> Cpu {
        Cpu {
            busy: self.busy - then.busy,
            steal: self.steal - then.steal,
            all: self.all - then.all,
        }
    }

    /// The share of the time the hypervisor gave these CPUs to someone else.
    fn steal_share(&self) -> f64 {
        if self.all > 0.0 {
            self.steal / self.all
        } else {
            0.0
        }
    }
}
