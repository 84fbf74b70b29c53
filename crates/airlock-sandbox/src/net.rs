//! Container sandbox networking: one veth pair per sandbox with a /30 of its own, outbound NAT,
//! and one nftables table that keeps sandboxes away from the host's own services and from each
//! other.
//!
//! The pair is made by an OCI `createRuntime` hook once the container's namespaces exist, with
//! its inner end born inside: the network namespace belongs to the container's user namespace
//! (so sysfs mounts there) and dies with it, taking the pair with it. The host end
//! (`airl<hash>`) carries the owner's tag and the sandbox id as its alias, so `list` finds links
//! whose sandbox is gone.
//!
//! The table `inet airlock` is the same for every airlock on the host and rewritten whole at
//! start-up: packets from `airl*` links to the host itself are dropped (input), sandbox to
//! sandbox and sandbox to link-local (cloud metadata) are dropped, nothing from outside may open
//! a connection into a sandbox (forward), and what leaves for elsewhere is masqueraded.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use sha2::Digest as _;

/// Host-side link names start with this; nothing else on a host should.
pub const LINK_PREFIX: &str = "airl";

const RULES: &str = r#"table inet airlock {}
flush table inet airlock
table inet airlock {
  chain input {
    type filter hook input priority filter - 5; policy accept;
    iifname "airl*" counter drop comment "sandboxes never reach the host's own services"
  }
  chain forward {
    type filter hook forward priority filter - 5; policy accept;
    iifname "airl*" oifname "airl*" counter drop comment "no sandbox to sandbox"
    iifname "airl*" ip daddr 169.254.0.0/16 counter drop comment "no cloud metadata"
    oifname "airl*" ct state established,related accept
    oifname "airl*" counter drop comment "nothing opens a connection into a sandbox"
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    iifname "airl*" oifname != "airl*" masquerade
  }
}
"#;

/// Runs in the runtime's namespaces once the container's exist (`createRuntime`): makes the
/// veth pair with its inner end born in the container's network namespace (moving a link
/// between namespaces costs an RCU grace period, ~30 ms here; creating it there costs ~3 ms),
/// addresses the host end with IPv6 off, then, inside, turns IPv6 off (the host end's
/// link-local address is no business of the sandbox's), addresses eth0 and routes through the
/// host end, and finally raises the host end. The container's pid comes from the state JSON on
/// stdin, parsed with shell builtins: four processes in all (sh, ip, nsenter becoming sh
/// becoming ip, ip). Arguments: host link, its alias, host address/30, sandbox address/30,
/// gateway.
const HOOK: &str = r#"IFS= read -r state
pid=${state#*\"pid\":}
pid=${pid# }
pid=${pid%%[!0-9]*}
[ -n "$pid" ] || { echo "airlock net hook: no pid in the container state" >&2; exit 1; }
ip -batch - <<LINKS || exit 1
link add $1 type veth peer name eth0 netns $pid
link set $1 alias $2
addr add $3 dev $1
LINKS
echo 1 > /proc/sys/net/ipv6/conf/"$1"/disable_ipv6 || exit 1
nsenter --net=/proc/"$pid"/ns/net /bin/sh -c '
echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 || exit 1
echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6 || exit 1
exec ip -batch - <<INNER
addr add $1 dev eth0
link set eth0 up
link set lo up
route add default via $2
INNER
' airlock-net-inner "$4" "$5" || exit 1
exec ip link set "$1" up
"#;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{what}: {detail}")]
    Command { what: String, detail: String },
    #[error("no free address in {subnet}/{prefix}: {used} sandboxes hold them all")]
    Exhausted {
        subnet: Ipv4Addr,
        prefix: u8,
        used: usize,
    },
}

/// A sandbox's link: index `n` in the subnet is the /30 at `subnet + 4n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub sandbox_ip: Ipv4Addr,
}

#[derive(Debug, Clone, Copy)]
pub struct Subnet {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Option<Subnet> {
        let (a, p) = s.split_once('/')?;
        let base: Ipv4Addr = a.parse().ok()?;
        let prefix: u8 = p.parse().ok()?;
        if !(8..=28).contains(&prefix) || u32::from(base) & !(u32::MAX << (32 - prefix)) != 0 {
            return None;
        }
        Some(Subnet { base, prefix })
    }

    /// How many /30s it holds.
    pub fn capacity(&self) -> u32 {
        1 << (32 - self.prefix - 2)
    }

    /// `key` names the sandbox uniquely on the host (the backend's tag and the sandbox id).
    pub fn link(&self, key: &str, index: u32) -> Link {
        let net = u32::from(self.base) + 4 * index;
        let h = hex::encode(sha2::Sha256::digest(key.as_bytes()));
        Link {
            index,
            host_if: format!("{LINK_PREFIX}{}", &h[..10]),
            host_ip: Ipv4Addr::from(net + 1),
            sandbox_ip: Ipv4Addr::from(net + 2),
        }
    }
}

fn run(what: &str, cmd: &mut Command, stdin: Option<&str>) -> Result<(), NetError> {
    let err = |detail: String| NetError::Command {
        what: what.to_string(),
        detail,
    };
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run {:?}: {e}", cmd.get_program())))?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes())
            .map_err(|e| err(format!("writing to {:?}: {e}", cmd.get_program())))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("waiting for {:?}: {e}", cmd.get_program())))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// Turns on forwarding and (re)writes the `inet airlock` table.
pub fn setup_host() -> Result<(), NetError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| NetError::Command {
        what: "enabling IPv4 forwarding".into(),
        detail: e.to_string(),
    })?;
    run(
        "loading the nftables table inet airlock",
        Command::new("nft").arg("-f").arg("-"),
        Some(RULES),
    )
}

/// Deletes a host link (and so its peer); succeeds if it is gone.
pub fn delete(host_if: &str) -> Result<(), NetError> {
    if !Path::new("/sys/class/net").join(host_if).exists() {
        return Ok(());
    }
    match run(
        &format!("deleting link {host_if}"),
        Command::new("ip").args(["link", "del", host_if]),
        None,
    ) {
        Err(_) if !Path::new("/sys/class/net").join(host_if).exists() => Ok(()),
        r => r,
    }
}

/// The hook's argv (see `HOOK`). `alias` names the owner and sandbox, for `list`.
pub fn hook_args(link: &Link, alias: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        HOOK.into(),
        "airlock-net".into(),
        link.host_if.clone(),
        alias.into(),
        format!("{}/30", link.host_ip),
        format!("{}/30", link.sandbox_ip),
        link.host_ip.to_string(),
    ]
}

/// Host links of sandboxes: (link name, its alias, which holds the owner's tag and the sandbox id).
pub fn list() -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return vec![];
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(LINK_PREFIX) {
            let alias = std::fs::read_to_string(e.path().join("ifalias"))
                .unwrap_or_default()
                .trim()
                .to_string();
            out.push((name, alias));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_and_links() {
        let s = Subnet::parse("10.213.0.0/16").unwrap();
        assert_eq!(s.capacity(), 16384);
        let l = s.link("abc", 3);
        assert_eq!(l.host_ip, Ipv4Addr::new(10, 213, 0, 13));
        assert_eq!(l.sandbox_ip, Ipv4Addr::new(10, 213, 0, 14));
        assert!(l.host_if.len() <= 15);
        assert_ne!(l.host_if, s.link("abd", 3).host_if);
        assert!(Subnet::parse("10.213.0.1/16").is_none(), "host bits set");
        assert!(
            Subnet::parse("10.213.0.0/30").is_none(),
            "room for no /30 pair"
        );
        assert!(Subnet::parse("10.213.0.0").is_none());
        assert!(Subnet::parse("banana/16").is_none());
    }
}

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

    /// A TCP listener on `inner_ip:port` inside the namespace (a socket stays in the namespace it
    /// was made in; it is made on a thread that joined it).
    pub fn listen(&self, port: u16) -> std::io::Result<std::net::TcpListener> {
        let path = format!("/run/netns/{}", self.ns);
        let addr = std::net::SocketAddr::from((self.inner_ip, port));
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path)?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            std::net::TcpListener::bind(addr)
        })
        .join()
        .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
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
