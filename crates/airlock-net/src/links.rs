//! Host-side links of sandboxes: container veth pairs (made by the OCI hook, `airlock-nethook`)
//! and VM taps.
//! Every one is named `airl<hash of its owner key>` and carries the owner key (backend, tag,
//! sandbox id) as its alias, so `list` finds links whose sandbox is gone and each backend reaps
//! only its own.
//!
//! Nothing here decides addresses (see `lease`) or filters packets (see `rules`).

use crate::{Link, NetError, LINK_PREFIX};
use std::path::Path;

/// Deletes a host link (and so its peer); succeeds if it is gone. Over netlink: no process.
pub fn delete(host_if: &str) -> Result<(), NetError> {
    if !Path::new("/sys/class/net").join(host_if).exists() {
        return Ok(());
    }
    crate::netlink::delete_link(host_if)
}

/// The network hook's argv (`airlock-nethook`, which see). `alias` names the owner and sandbox,
/// for `list`.
pub fn hook_args(link: &Link, alias: &str) -> Result<Vec<String>, NetError> {
    let program = crate::helper(NETHOOK).map_err(|e| NetError::Command {
        what: "finding the network hook".into(),
        detail: e.to_string(),
    })?;
    Ok(vec![
        program.to_string_lossy().into_owned(),
        link.host_if.clone(),
        alias.into(),
        format!("{}/30", link.host_ip),
        format!("{}/30", link.sandbox_ip),
        link.host_ip.to_string(),
    ])
}

/// The network hook's file name.
pub const NETHOOK: &str = "airlock-nethook";

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

/// Makes a VM's tap on the host: owned by `uid` (the unprivileged VMM opens it), aliased with its
/// owner key, the host end addressed with IPv6 off, and up, with `ioctl`s and netlink (no
/// process). A tap left by an earlier sandbox of the same key (a crash) is replaced. The guest
/// configures its own end (`link.sandbox_ip`).
pub fn create_tap(link: &Link, alias: &str, uid: u32) -> Result<(), NetError> {
    delete(&link.host_if)?;
    crate::tap::make_persistent_tap(&link.host_if, uid)?;
    let made = crate::netlink::alias_address_up(&link.host_if, alias, link.host_ip, 30);
    if made.is_err() {
        let _ = delete(&link.host_if);
    }
    made
}
