//! `airlock-nethook`: the OCI `createRuntime` hook that gives a container sandbox its network,
//! over netlink (rtnetlink) in one process instead of a shell driving `ip` and `nsenter`.
//!
//! ```text
//! airlock-nethook HOST_IF ALIAS HOST_ADDR/30 SANDBOX_ADDR/30 GATEWAY   (OCI state JSON on stdin)
//! ```
//!
//! Runs in the runtime's namespaces once the container's exist: makes the veth pair with its inner
//! end (`eth0`) born in the container's network namespace (moving a link between namespaces costs
//! an RCU grace period, ~30 ms; creating it there does not), aliases and addresses the host end
//! with IPv6 off, then, inside (a netlink socket opened after `setns`), turns IPv6 off, addresses
//! `eth0`, raises it and `lo` and routes through the host end, and finally raises the host end.
//! Any failure exits non-zero with the step named, and the runtime refuses the container.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

#[derive(Debug)]
struct Args {
    host_if: String,
    alias: String,
    host: (Ipv4Addr, u8),
    sandbox: (Ipv4Addr, u8),
    gateway: Ipv4Addr,
}

fn cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, p) = s
        .split_once('/')
        .ok_or(format!("{s:?} is not ADDRESS/PREFIX"))?;
    let a = a.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let p: u8 = p.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if p > 32 {
        return Err(format!("{s:?}: prefix over 32"));
    }
    Ok((a, p))
}

fn parse(v: &[String]) -> Result<Args, String> {
    let [host_if, alias, host, sandbox, gateway] = v else {
        return Err(format!("expected 5 arguments, got {}", v.len()));
    };
    Ok(Args {
        host_if: host_if.clone(),
        alias: alias.clone(),
        host: cidr(host)?,
        sandbox: cidr(sandbox)?,
        gateway: gateway
            .parse()
            .map_err(|e| format!("gateway {gateway:?}: {e}"))?,
    })
}

/// The container's init pid from the OCI state document.
fn state_pid(state: &str) -> Result<i32, String> {
    let v: serde_json::Value =
        serde_json::from_str(state).map_err(|e| format!("the container state is not JSON: {e}"))?;
    v.get("pid")
        .and_then(|p| p.as_i64())
        .filter(|p| *p > 0)
        .map(|p| p as i32)
        .ok_or_else(|| "no pid in the container state".to_string())
}

fn sysctl_off(path: &str) -> Result<(), String> {
    std::fs::write(path, "1").map_err(|e| format!("writing 1 to {path}: {e}"))
}

async fn index_of(h: &Handle, name: &str) -> Result<u32, String> {
    h.link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(|e| format!("looking up {name}: {e}"))?
        .map(|l| l.header.index)
        .ok_or_else(|| format!("no link {name}"))
}

fn connect() -> Result<Handle, String> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("opening a netlink socket: {e}"))?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn run(a: Args, pid: i32) -> Result<(), String> {
    // The host's socket, opened before this thread enters the container's namespace: a netlink
    // socket stays in the namespace it was made in.
    let host = connect()?;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name("eth0".to_string())
        .setns_by_pid(pid as u32)
        .build();
    let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(a.host_if.clone())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    host.link().add(veth).execute().await.map_err(|e| {
        format!(
            "creating veth {} with eth0 in pid {pid}'s namespace: {e}",
            a.host_if
        )
    })?;
    let host_index = index_of(&host, &a.host_if).await?;
    // The alias (owner and sandbox, how orphans are found) is taken only by a change, not at
    // creation.
    host.link()
        .set(
            LinkUnspec::new_with_index(host_index)
                .alias(a.alias.clone())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| format!("naming {} {:?}: {e}", a.host_if, a.alias))?;
    sysctl_off(&format!(
        "/proc/sys/net/ipv6/conf/{}/disable_ipv6",
        a.host_if
    ))?;
    host.address()
        .add(host_index, IpAddr::V4(a.host.0), a.host.1)
        .execute()
        .await
        .map_err(|e| format!("addressing {}: {e}", a.host_if))?;

    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("opening pid {pid}'s network namespace: {e}"))?;
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("entering pid {pid}'s network namespace: {e}"))?;
    // /proc/sys/net is the namespace's of whoever opens it: the container's now.
    sysctl_off("/proc/sys/net/ipv6/conf/all/disable_ipv6")?;
    sysctl_off("/proc/sys/net/ipv6/conf/default/disable_ipv6")?;
    let inner = connect()?;
    let eth0 = index_of(&inner, "eth0").await?;
    inner
        .address()
        .add(eth0, IpAddr::V4(a.sandbox.0), a.sandbox.1)
        .execute()
        .await
        .map_err(|e| format!("addressing eth0: {e}"))?;
    for (name, index) in [("eth0", eth0), ("lo", index_of(&inner, "lo").await?)] {
        inner
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| format!("raising {name}: {e}"))?;
    }
    inner
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(a.gateway)
                .build(),
        )
        .execute()
        .await
        .map_err(|e| format!("routing through {}: {e}", a.gateway))?;
    host.link()
        .set(LinkUnspec::new_with_index(host_index).up().build())
        .execute()
        .await
        .map_err(|e| format!("raising {}: {e}", a.host_if))?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let fail = |e: String| {
        eprintln!("airlock net hook: {e}");
        std::process::ExitCode::from(1)
    };
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("usage: airlock-nethook HOST_IF ALIAS HOST_ADDR/30 SANDBOX_ADDR/30 GATEWAY");
            return fail(e);
        }
    };
    let mut state = String::new();
    if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut state) {
        return fail(format!("reading the container state: {e}"));
    }
    let pid = match state_pid(&state) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    // One thread: the setns above applies to it, and everything runs on it.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("starting: {e}")),
    };
    match rt.block_on(run(args, pid)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_and_state_are_checked() {
        let ok: Vec<String> = ["airlabc", "tag/x", "10.1.0.1/30", "10.1.0.2/30", "10.1.0.1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a = parse(&ok).unwrap();
        assert_eq!(a.host, ("10.1.0.1".parse().unwrap(), 30));
        assert_eq!(a.gateway, "10.1.0.1".parse::<Ipv4Addr>().unwrap());
        for (i, bad) in ["10.1.0.1", "10.1.0.1/33", "x/30"].iter().enumerate() {
            let mut v = ok.clone();
            v[2] = bad.to_string();
            assert!(parse(&v).is_err(), "case {i}: {bad}");
        }
        assert!(parse(&ok[..4]).unwrap_err().contains("expected 5"));
        assert_eq!(
            state_pid(r#"{"ociVersion":"1.0.2","id":"x","pid":4242}"#),
            Ok(4242)
        );
        assert!(state_pid(r#"{"id":"x"}"#).unwrap_err().contains("no pid"));
        assert!(state_pid("not json").unwrap_err().contains("not JSON"));
    }
}
