//! The host's links over netlink (rtnetlink) from synchronous code, instead of an `ip` process per
//! change: each call runs on a short-lived thread of its own with a one-thread runtime, so it is
//! safe from any thread (a blocking pool's, a test's, inside or outside a runtime) and costs a
//! thread, not a fork and an exec.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec};

use crate::NetError;

fn on_netlink<T: Send>(
    what: &str,
    f: impl for<'h> FnOnce(&'h Handle) -> futures_util::future::BoxFuture<'h, Result<T, String>> + Send,
) -> Result<T, NetError> {
    let fail = |detail: String| NetError::Command {
        what: what.to_string(),
        detail,
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| format!("starting a netlink thread: {e}"))?;
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection()
                    .map_err(|e| format!("opening a netlink socket: {e}"))?;
                let driver = tokio::spawn(conn);
                let r = f(&handle).await;
                driver.abort();
                r
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the netlink thread panicked".into()))
    })
    .map_err(fail)
}

async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, String> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(l) => Ok(l.map(|l| l.header.index)),
        // No such device.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -nix::libc::ENODEV => Ok(None),
        Err(e) => Err(format!("looking up {name}: {e}")),
    }
}

/// Deletes link `name` (and so its peer); `Ok` if there is none.
pub(crate) fn delete_link(name: &str) -> Result<(), NetError> {
    let n = name.to_string();
    on_netlink(&format!("deleting link {name}"), move |h| {
        Box::pin(async move {
            let Some(index) = index_of(h, &n).await? else {
                return Ok(());
            };
            match h.link().del(index).execute().await {
                Ok(()) => Ok(()),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -nix::libc::ENODEV => {
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        })
    })
}

/// Gives the existing link `name` its alias, the address `addr/prefix`, and raises it. IPv6 is
/// turned off on it first (before it is up, so it never gets a link-local address).
pub(crate) fn alias_address_up(
    name: &str,
    alias: &str,
    addr: Ipv4Addr,
    prefix: u8,
) -> Result<(), NetError> {
    let (n, a) = (name.to_string(), alias.to_string());
    on_netlink(&format!("setting up link {name}"), move |h| {
        Box::pin(async move {
            let index = index_of(h, &n)
                .await?
                .ok_or_else(|| format!("no link {n}"))?;
            h.link()
                .set(LinkUnspec::new_with_index(index).alias(a.clone()).build())
                .execute()
                .await
                .map_err(|e| format!("naming {n} {a:?}: {e}"))?;
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{n}/disable_ipv6"), "1")
                .map_err(|e| format!("turning IPv6 off on {n}: {e}"))?;
            h.address()
                .add(index, IpAddr::V4(addr), prefix)
                .execute()
                .await
                .map_err(|e| format!("addressing {n}: {e}"))?;
            h.link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(|e| format!("raising {n}: {e}"))
        })
    })
}
