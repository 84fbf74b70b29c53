//! Egress policy with real traffic from inside a container sandbox (runc or crun, and gVisor)
//! and a microVM: "the internet" is a network
//! namespace with HTTP servers on several addresses and a name server for the test's names,
//! reached through the same NAT as real traffic; airlock's resolver (`airlock-egress`) runs on
//! the host with the real nftables table, its proxy taking the web traffic of audit and block
//! sandboxes. In open, audit and block mode a job tries an allowed name (on a port of its own,
//! over HTTP and over HTTPS), a denied name, an allowed name on a port it is not allowed, a
//! bare address, a name that resolves to the metadata address, a private range, DNS straight to
//! an outside resolver, the resolver's own port and a web port on the host, and what only the
//! proxy can tell apart: a denied name in the SNI or `Host` on an allowed name's address, an
//! allowed name in a forged SNI or `Host` on an address of the job's choosing, TLS without SNI;
//! each outcome is asserted (and where a connection really went) and found in the job's report.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use airlock_core::egress::{Allow, EgressMode, EgressPolicy};
use airlock_egress::testdns::TestDns;
use airlock_egress::testweb::{TestProxy, TestWeb};
use airlock_egress::{Egress, EgressConfig, Protocol, Report, Verdict};
use airlock_sandbox::{Backend, Limits, Secret};
use common::*;

const SLOT: u8 = 13;
/// The microVM's and gVisor's matrices (each its own internet and subnet: the tests may run
/// at once).
const VM_SLOT: u8 = 49;
const GVISOR_SLOT: u8 = 50;

/// Makes a socket inside network namespace `ns`.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> T {
    airlock_net::outside::in_netns(ns, f).unwrap()
}

fn sh(c: &str) {
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(c)
        .status()
        .unwrap();
    assert!(st.success(), "{c}");
}

/// The internet's addresses: the server's own (`.2`, what `allowed.test` resolves to) and more
/// routed to it: the wildcard's name's, a denied name's, and one only ever reached bare. Each
/// name has an address of its own: block mode opens addresses, so names sharing one would
/// share what is open (until the proxy checks SNI and Host).
struct Net {
    slot: u8,
    inet: Internet,
    bare: Ipv4Addr,
    denied: Ipv4Addr,
    /// The operator's proxy an upstream pool goes through.
    proxy: TestProxy,
    _dns: TestDns,
    dns: SocketAddr,
}

impl Net {
    fn start(slot: u8) -> Net {
        let inet = Internet::start(slot);
        let [denied, bare, cdn]: [Ipv4Addr; 3] =
            [129, 130, 131].map(|n| format!("198.18.{slot}.{n}").parse().unwrap());
        let _ = std::process::Command::new("ip")
            .args(["route", "del", &format!("198.18.{slot}.128/25")])
            .stderr(std::process::Stdio::null())
            .status();
        sh(&format!(
            "ip -n {ns} addr add {denied}/32 dev lo && ip -n {ns} addr add {bare}/32 dev lo && \
             ip -n {ns} addr add {cdn}/32 dev lo && \
             ip route add 198.18.{slot}.128/25 via {gw}",
            ns = inet.ns,
            gw = inet.addr
        ));
        // A listener on another port, answering and closing: "reached" there can only mean
        // the firewall let it through.
        let other = in_ns(&inet.ns, || std::net::TcpListener::bind("0.0.0.0:8001"));
        std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            for mut c in other.incoming().flatten() {
                let mut buf = [0u8; 256];
                let _ = c.read(&mut buf);
                let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nother-port");
            }
        });
        // HTTP and HTTPS on every address of the internet.
        let (http, https) = in_ns(&inet.ns, || {
            Ok((
                std::net::TcpListener::bind("0.0.0.0:80")?,
                std::net::TcpListener::bind("0.0.0.0:443")?,
            ))
        });
        TestWeb::serve(http, https).unwrap();
        let a = inet.addr;
        let squid = in_ns(&inet.ns, move || std::net::TcpListener::bind((a, 3128)));
        let proxy =
            TestProxy::serve(squid, &[("allowed.test", a), ("denied.test", denied)]).unwrap();
        let dns_addr = SocketAddr::from((a, 53));
        let (udp, tcp) = in_ns(&inet.ns, move || {
            Ok((
                std::net::UdpSocket::bind(dns_addr)?,
                std::net::TcpListener::bind(dns_addr)?,
            ))
        });
        let dns = TestDns::serve(
            udp,
            tcp,
            &[
                ("allowed.test", a),
                ("www.cdn.test", cdn),
                ("denied.test", denied),
                ("meta.test", Ipv4Addr::new(169, 254, 169, 254)),
                ("lan.test", Ipv4Addr::new(10, 77, 0, 1)),
            ],
        )
        .unwrap();
        Net {
            slot,
            inet,
            bare,
            denied,
            proxy,
            _dns: dns,
            dns: dns_addr,
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["route", "del", &format!("198.18.{}.128/25", self.slot)])
            .status();
    }
}

fn policy(mode: EgressMode) -> EgressPolicy {
    EgressPolicy {
        proxy: None,
        mode,
        allow: [
            "allowed.test:8000",
            "allowed.test:80",
            "allowed.test:443",
            "*.cdn.test",
        ]
        .iter()
        .map(|e| Allow::parse(e).unwrap())
        .collect(),
    }
}

/// The job: each attempt prints `NAME-REACHED <answer>` or `NAME-blocked <why>`. `http` and
/// `https` connect to `host`'s address (or `ip`) and ask for `name` (`Host`, SNI; none: no SNI).
fn script(net: &Net, resolver_port: u16, neighbour: &str, api_port: u16) -> String {
    let a = net.inet.addr;
    format!(
        r#"exec python3 - <<'EOF'
import socket, ssl, struct, threading
def connect(label, host, port, ip):
    try:
        ip = ip or socket.gethostbyname(host)
    except Exception as e:
        print(label + "-blocked resolve", e, flush=True); return None
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((ip, port)); return s
    except Exception as e:
        print(label + "-blocked", e, flush=True); return None
def http(label, host, port, ip=None, name=None):
    s = connect(label, host, port, ip)
    if s is None: return
    try:
        s.sendall(b"GET / HTTP/1.0\r\nHost: " + (name or host).encode() + b"\r\n\r\n")
        d = b""
        while True:
            k = s.recv(200)
            if not k: break
            d += k
        if not d: raise Exception("closed")
        print(label + "-REACHED", d.decode(errors="replace").split("\r\n\r\n")[-1], flush=True)
    except Exception as e:
        print(label + "-blocked", e, flush=True)
def https(label, host, ip=None, name=""):
    s = connect(label, host, 443, ip)
    if s is None: return
    try:
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE
        t = c.wrap_socket(s, server_hostname=(host if name == "" else name))
        t.sendall(b"GET / HTTP/1.0\r\n\r\n")
        d = b""
        while True:
            k = t.recv(200)
            if not k: break
            d += k
        if not d: raise Exception("closed")
        print(label + "-REACHED", d.decode(errors="replace").split("\r\n\r\n")[-1], flush=True)
    except Exception as e:
        print(label + "-blocked", e, flush=True)
def dns(label, server, port, name):
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    try:
        s.sendto(q, (server, port)); s.recv(512); print(label + "-REACHED", flush=True)
    except Exception as e:
        print(label + "-blocked", e, flush=True)
gw = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
print("NAMESERVER", gw, flush=True)
ts = []
def go(f, *a, **k):
    t = threading.Thread(target=f, args=a, kwargs=k); t.start(); ts.append(t)
go(http, "ALLOWED", "allowed.test", 8000)
go(http, "WILDCARD", "www.cdn.test", 8000)
go(http, "DENIED", "denied.test", 8000)
go(http, "BADPORT", "allowed.test", 8001)
go(http, "BARE", "{bare}", 8000)
go(http, "METADATA", "meta.test", 80)
go(http, "PRIVATE", "lan.test", 80)
go(dns, "OUTSIDEDNS", "{a}", 53, "allowed.test")
go(dns, "RESOLVERPORT", gw, {resolver_port}, "allowed.test")
go(http, "HOSTWEB", gw, 80)
go(http, "WEB80", "allowed.test", 80)
go(https, "WEB443", "allowed.test")
go(https, "SNIDENIED", "-", ip="{denied}", name="denied.test")
go(http, "HOSTDENIED", "allowed.test", 80, name="denied.test")
go(https, "SNIFORGED", "-", ip="{bare}", name="allowed.test")
go(http, "HOSTFORGED", "-", 80, ip="{bare}", name="allowed.test")
go(https, "NOSNI", "-", ip="{bare}", name=None)
go(http, "METAWEB", "-", 80, ip="169.254.169.254", name="meta.test")
go(http, "NEIGHBOUR", "-", 8080, ip="{neighbour}")
go(http, "HOSTAPI", gw, {api_port})
go(http, "HOSTADDR", "-", {api_port}, ip="198.18.{slot}.1")
go(http, "NEIGHBOURWEB", "-", 80, ip="{neighbour}", name="nb.test")
for t in ts: t.join()
EOF
"#,
        bare = net.bare,
        denied = net.denied,
        slot = net.slot,
    )
}

fn outcome(log: &str, label: &str) -> &'static str {
    if log.contains(&format!("{label}-REACHED")) {
        "reached"
    } else if log.contains(&format!("{label}-blocked")) {
        "blocked"
    } else {
        "missing"
    }
}

/// What the job printed after `LABEL-REACHED`.
fn answer<'a>(log: &'a str, label: &str) -> &'a str {
    let tag = format!("{label}-REACHED ");
    log.lines().find_map(|l| l.strip_prefix(&tag)).unwrap_or("")
}

fn verdict(r: &Report, name: &str) -> Option<Verdict> {
    r.destinations
        .iter()
        .find(|d| d.name.as_deref() == Some(name) && d.protocol == Protocol::Dns)
        .map(|d| d.verdict)
}

/// The worst verdict of the proxied connections for `name` (`None`: bare) on `port`, with the
/// bytes each way summed.
fn tcp(r: &Report, name: Option<&str>, port: u16) -> Option<(Verdict, u64, u64)> {
    let ds: Vec<_> = r
        .destinations
        .iter()
        .filter(|d| d.protocol == Protocol::Tcp && d.name.as_deref() == name && d.port == port)
        .collect();
    Some((
        ds.iter().map(|d| d.verdict).max()?,
        ds.iter().map(|d| d.bytes_out).sum(),
        ds.iter().map(|d| d.bytes_in).sum(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mode_lets_through_what_it_should_and_reports_it() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let net = Net::start(SLOT);
    let mut ec = EgressConfig::new(t.path().join("egress"));
    ec.upstreams = vec![net.dns];
    let egress = Egress::start(ec).await.unwrap();
    let e2 = egress.clone();
    let b = backend_configured(&root, SLOT, Rt::Default, Duration::ZERO, move |c| {
        c.egress = Some(e2)
    })
    .await;
    let m = shell_image();
    matrix(&b, &root, &egress, &net, &|id| {
        spec(id, &m, Limits::default())
    })
    .await;
}

/// The same jobs under gVisor: its own network stack sends through the same link and rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gvisor_container_gets_the_same_outcomes_in_each_mode() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let net = Net::start(GVISOR_SLOT);
    let mut ec = EgressConfig::new(t.path().join("egress"));
    ec.upstreams = vec![net.dns];
    let egress = Egress::start(ec).await.unwrap();
    let e2 = egress.clone();
    let b = backend_configured(&root, GVISOR_SLOT, Rt::Runsc, Duration::ZERO, move |c| {
        c.egress = Some(e2)
    })
    .await;
    let m = shell_image();
    matrix(&b, &root, &egress, &net, &|id| {
        spec_on(id, &m, Limits::default(), Rt::Runsc)
    })
    .await;
}

/// The same jobs from a microVM, whose job has root: the outcomes are the table's and the
/// proxy's, on the host, whatever the guest does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_microvm_gets_the_same_outcomes_in_each_mode() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("vms");
    let _reaper = VmReaper::qemu(root.clone(), VM_SLOT);
    let net = Net::start(VM_SLOT);
    let mut ec = EgressConfig::new(t.path().join("egress"));
    ec.upstreams = vec![net.dns];
    let egress = Egress::start(ec).await.unwrap();
    let e2 = egress.clone();
    let b = vm_backend_configured(&root, VM_SLOT, &[airlock_core::VmDriver::Qemu], move |c| {
        c.egress = Some(e2)
    })
    .await;
    let m = vm_image();
    matrix(&b, &root, &egress, &net, &|id| vm_spec(id, &m, 2)).await;

    // Root in the guest gives itself other addresses: a packet from any but its own goes
    // nowhere, whatever its policy (the control: the same connection from its own address).
    let mut s = vm_spec("eg-spoof", &m, 2);
    s.pool = "pool-spoof".into();
    let job = format!(
        r#"me=$(ip -4 -o addr show eth0 | awk '{{print $4}}' | cut -d/ -f1)
sudo ip addr add 10.99.0.7/32 dev eth0
sudo ip addr add 198.18.{VM_SLOT}.77/32 dev eth0
exec python3 - "$me" <<'EOF'
import socket, sys
for label, src in [("OWN", sys.argv[1]), ("FOREIGN", "10.99.0.7"), ("OUTSIDE", "198.18.{VM_SLOT}.77")]:
    s = socket.socket(); s.settimeout(3)
    try:
        s.bind((src, 0)); s.connect(("{a}", 8000)); print(label + "-REACHED", flush=True)
    except Exception as e:
        print(label + "-blocked", e, flush=True)
EOF
"#,
        a = net.inet.addr
    );
    b.create(&s).await.unwrap();
    b.start(&s, &Secret::new(job)).await.unwrap();
    let code = wait_exit(&b, "eg-spoof", Duration::from_secs(90)).await;
    let log = std::fs::read_to_string(root.join("eg-spoof").join("runner.log")).unwrap_or_default();
    b.destroy("eg-spoof").await.unwrap();
    egress.forget("eg-spoof").unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("OWN-REACHED"), "the control: {log}");
    for spoofed in ["FOREIGN", "OUTSIDE"] {
        assert!(
            log.contains(&format!("{spoofed}-blocked timed out")),
            "{spoofed}: {log}"
        );
    }
    assert!(airlock_sandbox::microvm::remnants(&root).is_empty());
}

/// Open, audit and block, then an upstream-proxy pool, each a sandbox `make` specifies, run by
/// `b` (whose sandboxes keep their logs under `root`); every outcome and report checked, and
/// nothing of them left in the table.
async fn matrix(
    b: &dyn Backend,
    root: &std::path::Path,
    egress: &Egress,
    net: &Net,
    make: &dyn Fn(&str) -> airlock_sandbox::SandboxSpec,
) {
    let mut failures = Vec::new();
    let mut links = Vec::new();
    // Another sandbox, running beside each job and listening: never reached, straight or
    // through the proxy (which connects from the host, so it checks itself).
    let mut s = make("eg-nb");
    s.pool = "pool-nb".into();
    b.create(&s).await.unwrap();
    b.start(
        &s,
        &Secret::new(
            // It listens, and reaches itself on its own address (the positive control: what
            // the jobs cannot reach is there).
            "ip -4 -o addr show eth0\nme=$(ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)\n\
             exec python3 -c '\nimport socket,sys\ns=socket.socket()\n\
             s.bind((\"0.0.0.0\", 8080)); s.listen(8)\n\
             socket.create_connection((sys.argv[1], 8080), 3); print(\"listening\", flush=True)\n\
             while True: s.accept()[0].close()\n' \"$me\""
                .into(),
        ),
    )
    .await
    .unwrap();
    let nb_log = root.join("eg-nb").join("runner.log");
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&nb_log)
        .unwrap_or_default()
        .contains("listening")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the neighbour never listened: {:?}",
            std::fs::read_to_string(&nb_log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let nb = std::fs::read_to_string(&nb_log)
        .unwrap()
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/30").map(str::to_string))
        .expect("the neighbour's address");
    // A port on the host standing for airlock's own API (every address): never reached, on the
    // gateway or another of the host's addresses.
    let api = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let api_port = api.local_addr().unwrap().port();
    // (label, open, audit, block)
    let want: &[(&str, [&str; 3])] = &[
        ("ALLOWED", ["reached", "reached", "reached"]),
        ("WILDCARD", ["reached", "reached", "reached"]),
        ("DENIED", ["reached", "reached", "blocked"]),
        ("BADPORT", ["reached", "reached", "blocked"]),
        ("BARE", ["reached", "reached", "blocked"]),
        ("METADATA", ["blocked", "blocked", "blocked"]),
        ("PRIVATE", ["blocked", "blocked", "blocked"]),
        ("OUTSIDEDNS", ["reached", "reached", "blocked"]),
        ("RESOLVERPORT", ["blocked", "blocked", "blocked"]),
        ("HOSTWEB", ["blocked", "blocked", "blocked"]),
        ("WEB80", ["reached", "reached", "reached"]),
        ("WEB443", ["reached", "reached", "reached"]),
        ("SNIDENIED", ["reached", "reached", "blocked"]),
        ("HOSTDENIED", ["reached", "reached", "blocked"]),
        ("SNIFORGED", ["reached", "reached", "reached"]),
        ("HOSTFORGED", ["reached", "reached", "reached"]),
        ("NOSNI", ["reached", "reached", "blocked"]),
        ("METAWEB", ["blocked", "blocked", "blocked"]),
        ("NEIGHBOUR", ["blocked", "blocked", "blocked"]),
        ("NEIGHBOURWEB", ["blocked", "blocked", "blocked"]),
        ("HOSTAPI", ["blocked", "blocked", "blocked"]),
        ("HOSTADDR", ["blocked", "blocked", "blocked"]),
    ];
    for (i, mode) in [EgressMode::Open, EgressMode::Audit, EgressMode::Block]
        .into_iter()
        .enumerate()
    {
        let id = format!("eg-{}", mode.as_str());
        let mut s = make(&id);
        s.egress = policy(mode);
        s.pool = "pool-a".into();
        b.create(&s).await.unwrap();
        b.start(&s, &Secret::new(script(net, egress.port(), &nb, api_port)))
            .await
            .unwrap();
        let code = wait_exit(b, &id, Duration::from_secs(90)).await;
        let log = std::fs::read_to_string(root.join(&id).join("runner.log")).unwrap_or_default();
        b.destroy(&id).await.unwrap();
        assert_eq!(code, Some(0), "{mode:?}: {log}");
        assert!(
            log.contains("NAMESERVER 10."),
            "resolv.conf names the gateway: {log}"
        );
        for (label, outcomes) in want {
            let got = outcome(&log, label);
            if got != outcomes[i] {
                failures.push(format!("{mode:?} {label}: {got}, want {}", outcomes[i]));
            }
        }
        // Where connections really went: HTTPS end to end (the proxy never terminates TLS),
        // and in block mode a forged name reaches that name's address, never the job's choice.
        let a = net.inet.addr;
        let web = [
            ("WEB443", format!("web-ok at={a} name=allowed.test tls=yes")),
            ("WEB80", format!("web-ok at={a} name=allowed.test tls=no")),
        ];
        let forged_to = if mode == EgressMode::Block {
            a
        } else {
            net.bare
        };
        let forged = [
            (
                "SNIFORGED",
                format!("web-ok at={forged_to} name=allowed.test tls=yes"),
            ),
            (
                "HOSTFORGED",
                format!("web-ok at={forged_to} name=allowed.test tls=no"),
            ),
        ];
        for (label, want) in web.iter().chain(forged.iter()) {
            if outcome(&log, label) == "reached" && answer(&log, label) != want {
                failures.push(format!(
                    "{mode:?} {label}: answered {:?}, want {want:?}",
                    answer(&log, label)
                ));
            }
        }
        let done = egress.finished();
        let (session, report) = done
            .iter()
            .find(|(s, _)| s.id == id)
            .unwrap_or_else(|| panic!("no finished report for {id}: {done:?}"));
        assert_eq!(session.pool.as_deref(), Some("pool-a"));
        links.push(session.link.clone());
        let want_verdicts = [
            ("allowed.test", [Verdict::Allowed; 3]),
            ("www.cdn.test", [Verdict::Allowed; 3]),
            (
                "denied.test",
                [Verdict::Allowed, Verdict::Audit, Verdict::Blocked],
            ),
            ("meta.test", [Verdict::Blocked; 3]),
            ("lan.test", [Verdict::Blocked; 3]),
        ];
        for (name, v) in want_verdicts {
            if verdict(report, name) != Some(v[i]) {
                failures.push(format!(
                    "{mode:?} report {name}: {:?}, want {:?}",
                    verdict(report, name),
                    v[i]
                ));
            }
        }
        // Web connections: the proxy's (audit, block), the table's count (open).
        let (allowed, denied, bare) = (
            tcp(report, Some("allowed.test"), 443),
            tcp(report, Some("denied.test"), 443),
            tcp(report, None, 443),
        );
        let want_tcp = match mode {
            // Not proxied: counted by the table, named from the answers.
            EgressMode::Open => [Some(Verdict::Allowed); 3],
            EgressMode::Audit => [
                Some(Verdict::Allowed),
                Some(Verdict::Audit),
                Some(Verdict::Audit),
            ],
            EgressMode::Block => [
                Some(Verdict::Allowed),
                Some(Verdict::Blocked),
                Some(Verdict::Blocked),
            ],
        };
        let got_tcp = [allowed, denied, bare].map(|t| t.map(|t| t.0));
        if got_tcp != want_tcp {
            failures.push(format!(
                "{mode:?} report tcp allowed/denied/bare: {got_tcp:?}, want {want_tcp:?}: {report:#?}"
            ));
        }
        // Connections that do not pass the proxy, counted by the table: the allowed name's on
        // its own port (named from the answer), a bare address, DNS to another resolver.
        let flow = |name: Option<&str>, addr: String, port: u16, proto: Protocol| {
            report
                .destinations
                .iter()
                .find(|d| {
                    d.protocol == proto
                        && d.port == port
                        && d.addr.map(|a| a.to_string()) == Some(addr.clone())
                        && d.name.as_deref() == name
                })
                .map(|d| (d.verdict, d.bytes_out > 0, d.bytes_in > 0))
        };
        let (v_ok, v_bare) = match mode {
            EgressMode::Open => (Verdict::Allowed, Verdict::Allowed),
            EgressMode::Audit => (Verdict::Allowed, Verdict::Audit),
            EgressMode::Block => (Verdict::Allowed, Verdict::Blocked),
        };
        let block = mode == EgressMode::Block;
        for (what, got, want) in [
            (
                "allowed.test:8000",
                flow(Some("allowed.test"), a.to_string(), 8000, Protocol::Tcp),
                Some((v_ok, true, true)),
            ),
            (
                "the bare address",
                flow(None, net.bare.to_string(), 8000, Protocol::Tcp),
                Some((v_bare, true, !block)),
            ),
            (
                "DNS to the outside",
                // Named: that address was answered for allowed.test.
                flow(Some("allowed.test"), a.to_string(), 53, Protocol::Udp),
                Some((v_bare, true, !block)),
            ),
        ] {
            if got != want {
                failures.push(format!("{mode:?} flow {what}: {got:?}, want {want:?}"));
            }
        }
        // Dropped by the table (a timeout), not refused by a missing listener.
        if !log.contains("NEIGHBOUR-blocked timed out") {
            failures.push(format!("{mode:?}: the neighbour was not dropped"));
        }
        // Audit mode would let a name it does not know through: the proxy stopped it, itself.
        if mode == EgressMode::Audit {
            let to_nb = report.destinations.iter().find(|d| {
                d.protocol == Protocol::Tcp
                    && d.port == 80
                    && d.addr.map(|a| a.to_string()) == Some(nb.clone())
            });
            if to_nb.map(|d| (d.verdict, d.reason.as_deref()))
                != Some((Verdict::Blocked, Some("another sandbox")))
            {
                failures.push(format!("audit: the neighbour through the proxy: {to_nb:?}"));
            }
        }
        if let Some((_, out, inn)) = allowed {
            // A ClientHello and a request out, a certificate and an answer back.
            if out < 100 || inn < 500 {
                failures.push(format!(
                    "{mode:?} allowed.test:443 bytes {out} out, {inn} in"
                ));
            }
        }
        egress.forget(&id).unwrap();
        if !failures.is_empty() {
            failures.push(format!("--- {mode:?} log:\n{log}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A pool whose egress all goes through the operator's proxy: the job gets http_proxy and
    // https_proxy; what it asks for there, and its web traffic sent without them, reaches the
    // upstream only when the policy allows it; there is no direct route.
    let id = "eg-upstream";
    let mut s = make(id);
    s.egress = policy(EgressMode::Block);
    s.egress.proxy = Some(
        airlock_core::egress::UpstreamProxy::parse(&format!("http://{}", net.proxy.addr)).unwrap(),
    );
    s.pool = "pool-up".into();
    let job = format!(
        r#"exec python3 - <<'EOF'
import os, socket, ssl
print("PROXYENV", os.environ.get("https_proxy"), os.environ.get("http_proxy"), flush=True)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
# What an HTTP client does with https_proxy / http_proxy (the image has no urllib).
host, port = os.environ["https_proxy"].removeprefix("http://").split(":")
def body(s):
    d = b""
    while True:
        k = s.recv(200)
        if not k: break
        d += k
    return d.decode(errors="replace")
def via_connect(label, name):
    try:
        c = socket.create_connection((host, int(port)), 5)
        c.sendall(("CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n" % (name, name)).encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            k = c.recv(1)
            if not k: raise Exception("closed")
            head += k
        if b" 200 " not in head.split(b"\r\n")[0]: raise Exception(head.split(b"\r\n")[0].decode())
        t = ctx.wrap_socket(c, server_hostname=name); t.sendall(b"GET / HTTP/1.0\r\n\r\n")
        print(label + "-REACHED", body(t).split("\r\n\r\n")[-1], flush=True)
    except Exception as e:
        print(label + "-blocked", e, flush=True)
def via_get(label, name):
    try:
        h, p = os.environ["http_proxy"].removeprefix("http://").split(":")
        c = socket.create_connection((h, int(p)), 5)
        c.sendall(("GET http://%s/ HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (name, name)).encode())
        d = body(c)
        if " 200 " not in d.split("\r\n")[0]: raise Exception(d.split("\r\n")[0])
        print(label + "-REACHED", d.split("\r\n\r\n")[-1], flush=True)
    except Exception as e:
        print(label + "-blocked", e, flush=True)
via_connect("UPHTTPS", "allowed.test")
via_get("UPHTTP", "allowed.test")
via_connect("UPDENIED", "denied.test")
try:
    c = socket.create_connection(("{a}", 8000), 3); c.sendall(b"GET / HTTP/1.0\r\n\r\n")
    print("UPDIRECT-REACHED" if c.recv(100) else "UPDIRECT-blocked closed", flush=True)
except Exception as e:
    print("UPDIRECT-blocked", e, flush=True)
try:
    c = socket.create_connection(("{a}", 443), 3)
    t = ctx.wrap_socket(c, server_hostname="allowed.test"); t.sendall(b"GET / HTTP/1.0\r\n\r\n")
    d = b""
    while True:
        k = t.recv(200)
        if not k: break
        d += k
    print("UPTRANSPARENT-REACHED", d.decode().split("\r\n\r\n")[-1], flush=True)
except Exception as e:
    print("UPTRANSPARENT-blocked", e, flush=True)
EOF
"#,
        a = net.inet.addr
    );
    b.create(&s).await.unwrap();
    b.start(&s, &Secret::new(job)).await.unwrap();
    let code = wait_exit(b, id, Duration::from_secs(90)).await;
    let log = std::fs::read_to_string(root.join(id).join("runner.log")).unwrap_or_default();
    b.destroy(id).await.unwrap();
    assert_eq!(code, Some(0), "{log}");
    let gw_url = log
        .lines()
        .find_map(|l| l.strip_prefix("PROXYENV "))
        .unwrap_or_default()
        .to_string();
    assert!(
        gw_url.starts_with("http://10.") && gw_url.contains(":3128 http://10."),
        "the job's proxy is its gateway: {log}"
    );
    let a = net.inet.addr;
    for (label, want) in [
        (
            "UPHTTPS",
            Some(format!("web-ok at={a} name=allowed.test tls=yes")),
        ),
        (
            "UPHTTP",
            Some(format!("web-ok at={a} name=allowed.test tls=no")),
        ),
        ("UPDENIED", None),
        ("UPDIRECT", None),
        (
            "UPTRANSPARENT",
            Some(format!("web-ok at={a} name=allowed.test tls=yes")),
        ),
    ] {
        match &want {
            Some(w) => assert_eq!(answer(&log, label), w, "{label}: {log}"),
            None => assert_eq!(outcome(&log, label), "blocked", "{label}: {log}"),
        }
    }
    let seen = net.proxy.seen();
    assert_eq!(
        seen.iter()
            .filter(|l| l.starts_with("CONNECT allowed.test:443 "))
            .count(),
        2,
        "the explicit and the transparent HTTPS went through the upstream: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("GET http://allowed.test/ ")),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|l| l.contains("denied")), "{seen:?}");
    let done = egress.finished();
    let (session, report) = done.iter().find(|(s, _)| s.id == id).unwrap();
    links.push(session.link.clone());
    assert_eq!(
        tcp(report, Some("denied.test"), 443).map(|t| t.0),
        Some(Verdict::Blocked),
        "{report:#?}"
    );
    let (v, _, inn) = tcp(report, Some("allowed.test"), 443).unwrap();
    assert!(v == Verdict::Allowed && inn > 500, "{report:#?}");
    egress.forget(id).unwrap();

    let nb_link = egress
        .sessions()
        .into_iter()
        .find(|s| s.id == "eg-nb")
        .expect("the neighbour's session")
        .link;
    b.destroy("eg-nb").await.unwrap();
    egress.forget("eg-nb").unwrap();
    links.push(nb_link);
    // Nothing of the sandboxes is left in the table: no map element, no opened address.
    assert!(egress.sessions().is_empty());
    let now = airlock_net::rules::attached().unwrap();
    assert_eq!(links.len(), 5);
    for link in &links {
        assert!(
            !now.links.iter().any(|(l, _)| l == link),
            "{link} in links: {now:?}"
        );
        assert!(
            !now.dns.iter().any(|(l, _)| l == link),
            "{link} in dns: {now:?}"
        );
        assert!(
            !now.named.contains(link),
            "{link} in the named sets: {now:?}"
        );
        assert!(
            !now.proxied.contains(link),
            "{link} in the proxied set: {now:?}"
        );
        assert!(!now.flows.contains(link), "{link}'s flow counters: {now:?}");
    }
}

/// The address slot of the test below.
const LAND_SLOT: u8 = 16;

/// A sandbox detached while its proxied connections are open (its job still holding them, as a
/// killed microVM's vanished TCP stack would) takes them with it: both sides are closed at once
/// (nothing lingers on the host until TCP gives up), the bytes moved so far are in its final
/// report, and no relay thread is left. Once with relay threads and once with the splicing on
/// the runtime (what connections beyond the threads get). (`relay::threads()` counts the whole
/// process: exact under nextest, which runs each test in a process of its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_sandbox_ends_its_proxied_connections_and_counts_them() {
    use std::io::{Read as _, Write as _};
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let inet = Internet::start(LAND_SLOT);
    let dns_at = SocketAddr::from((inet.addr, 53));
    let (udp, dns_tcp) = in_ns(&inet.ns, move || {
        Ok((
            std::net::UdpSocket::bind(dns_at)?,
            std::net::TcpListener::bind(dns_at)?,
        ))
    });
    let _dns = TestDns::serve(udp, dns_tcp, &[("hold.test", inet.addr)]).unwrap();
    // A server that sends 3 MiB and then holds the connection, telling when it ends.
    let web = in_ns(&inet.ns, || std::net::TcpListener::bind("0.0.0.0:80"));
    let (ended_tx, ended) = std::sync::mpsc::channel::<std::time::Instant>();
    std::thread::spawn(move || {
        for c in web.incoming().flatten() {
            let ended_tx = ended_tx.clone();
            std::thread::spawn(move || {
                let mut c = c;
                let mut head = [0u8; 1024];
                let _ = c.read(&mut head);
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
                let _ = c.write_all(&vec![b'x'; 3 << 20]);
                // Nothing more: the sandbox's side ends this connection, or nothing does.
                let mut rest = [0u8; 64];
                while matches!(c.read(&mut rest), Ok(n) if n > 0) {}
                let _ = ended_tx.send(std::time::Instant::now());
            });
        }
    });
    let mut ec = EgressConfig::new(t.path().join("egress"));
    ec.upstreams = vec![dns_at];
    let egress = Egress::start(ec).await.unwrap();
    let e2 = egress.clone();
    let b = backend_configured(&root, LAND_SLOT, Rt::Default, Duration::ZERO, move |c| {
        c.egress = Some(e2)
    })
    .await;
    let m = shell_image();
    // The job reads what comes and never closes.
    let job = "exec python3 -c '\nimport socket\n\
               s=socket.create_connection((\"hold.test\", 80), 5)\n\
               s.settimeout(60)\n\
               s.sendall(b\"GET / HTTP/1.1\\r\\nHost: hold.test\\r\\n\\r\\n\")\n\
               n=0\n\
               while n < (3 << 20) + 19:\n  n += len(s.recv(1 << 20))\n\
               print(\"got\", n, flush=True)\n\
               print(\"closed\" if s.recv(64) == b\"\" else \"more\", flush=True)\n\
               import time\ntime.sleep(3600)\n'";
    for (threads, id) in [
        (airlock_egress::relay::MAX_THREADS, "eg-land-t"),
        (0, "eg-land-r"),
    ] {
        egress.set_relay_threads(threads);
        let mut s = spec(id, &m, Limits::default());
        s.egress = EgressPolicy {
            proxy: None,
            mode: EgressMode::Block,
            allow: vec![Allow::parse("hold.test:80").unwrap()],
        };
        b.create(&s).await.unwrap();
        b.start(&s, &Secret::new(job.into())).await.unwrap();
        let log = root.join(id).join("runner.log");
        let t0 = std::time::Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("got")
        {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{id}: {:?}",
                std::fs::read_to_string(&log)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The positive control: the connection is open, through the proxy.
        assert!(
            ended.try_recv().is_err(),
            "{id}: the connection ended early"
        );
        if threads > 0 {
            assert_eq!(
                airlock_egress::relay::threads(),
                2,
                "{id}: two relay threads"
            );
        } else {
            assert_eq!(airlock_egress::relay::threads(), 0, "{id}: none");
        }
        let detached = std::time::Instant::now();
        egress.detach(id).unwrap().expect("attached");
        let at = ended
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("{id}: the destination's connection outlived the sandbox"));
        assert!(at >= detached, "{id}");
        // And the job's side.
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("closed")
        {
            assert!(
                detached.elapsed() < Duration::from_secs(5),
                "{id}: the job's connection stayed open: {:?}",
                std::fs::read_to_string(&log)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        b.destroy(id).await.unwrap();
        let done = egress.finished();
        let (_, report) = done
            .iter()
            .find(|(s, _)| s.id == id)
            .unwrap_or_else(|| panic!("no finished report for {id}: {done:?}"));
        let (v, out, inn) = tcp(report, Some("hold.test"), 80).expect("the connection reported");
        assert_eq!(v, Verdict::Allowed, "{id}");
        // Exactly once: the request (35 bytes), the answer's head (19) and body.
        assert_eq!(out, 35, "{id}: the request counted");
        assert_eq!(inn, (3 << 20) + 19, "{id}: the answer counted");
        // Relay threads end with their connection.
        let t1 = std::time::Instant::now();
        while airlock_egress::relay::threads() > 0 {
            assert!(
                t1.elapsed() < Duration::from_secs(2),
                "{id}: relay threads left"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
