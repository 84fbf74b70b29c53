//! `Outside`: a network namespace playing "the internet" for the demo and the tests.
//!
//! Never used by the daemon: production sandboxes reach the real network through NAT.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use sha2::Digest as _;

use crate::{delete, run, NetError};

/// A network namespace standing in for the internet, linked to the host by a veth pair
/// (`host_ip/30` on the host, `inner_ip/30` inside). Sandboxes reach it through the same NAT path
/// as real traffic, never through the host's loopback. Used by `airlock demo` and the tests to
/// put the GitHub emulator where GitHub would be. Removed on drop.
#[derive(Debug)]
pub struct Outside {
    pub ns: String,
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub inner_ip: Ipv4Addr,
}

impl Outside {
    /// `name` must be unique on the host (it names the namespace and, shortened, the link).
    pub fn new(name: &str, host_ip: Ipv4Addr, inner_ip: Ipv4Addr) -> Result<Outside, NetError> {
        let ns = format!("airlock-outside-{name}");
        let h = hex::encode(sha2::Sha256::digest(name.as_bytes()));
        let host_if = format!("airo{}", &h[..10]);
        let o = Outside {
            ns,
            host_if,
            host_ip,
            inner_ip,
        };
        o.remove();
        run(
            &format!("creating network namespace {}", o.ns),
            Command::new("ip").args(["netns", "add", &o.ns]),
            None,
        )?;
        let host = format!(
            "link add {h} type veth peer name eth0 netns {ns}\naddr add {hip}/30 dev {h}\nlink set {h} up\n",
            h = o.host_if,
            ns = o.ns,
            hip = o.host_ip
        );
        let inner = format!(
            "addr add {iip}/30 dev eth0\nlink set eth0 up\nlink set lo up\nroute add default via {hip}\n",
            iip = o.inner_ip,
            hip = o.host_ip
        );
        let r = run(
            "linking it to the host",
            Command::new("ip").args(["-batch", "-"]),
            Some(&host),
        )
        .and_then(|_| {
            run(
                "addressing it",
                Command::new("ip").args(["-n", &o.ns, "-batch", "-"]),
                Some(&inner),
            )
        });
        match r {
            Ok(()) => Ok(o),
            Err(e) => {
                o.remove();
                Err(e)
            }
        }
    }

    /// A TCP listener on `inner_ip:port` inside the namespace.
    pub fn listen(&self, port: u16) -> std::io::Result<std::net::TcpListener> {
        let addr = std::net::SocketAddr::from((self.inner_ip, port));
        in_netns(&self.ns, move || std::net::TcpListener::bind(addr))
    }

    /// A UDP socket on `inner_ip:port` inside the namespace.
    pub fn udp(&self, port: u16) -> std::io::Result<std::net::UdpSocket> {
        let addr = std::net::SocketAddr::from((self.inner_ip, port));
        in_netns(&self.ns, move || std::net::UdpSocket::bind(addr))
    }

    fn remove(&self) {
        let _ = delete(&self.host_if);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Runs `f` on a thread that joined network namespace `ns` (`/run/netns/NS`): a socket it makes
/// stays in that namespace wherever it is used from.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path)?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}
