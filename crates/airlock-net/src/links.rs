//! Host-side links of sandboxes: container veth pairs (made by the OCI hook, `airlock-nethook`)
//! and VM taps.
//! Every one is named `airl<hash of its owner key>` and carries the owner key (backend, tag,
//! sandbox id) as its alias, so `list` finds links whose sandbox is gone and each backend reaps
//! only its own.
//!
//! Nothing here decides addresses (see `lease`) or filters packets (see `rules`).

use std::path::Path;
use std::process::Command;

use crate::{run, Link, NetError, LINK_PREFIX};

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
/// owner key, the host end addressed with IPv6 off, and up. A tap left by an earlier sandbox of
/// the same key (a crash) is replaced. The guest configures its own end (`link.sandbox_ip`).
pub fn create_tap(link: &Link, alias: &str, uid: u32) -> Result<(), NetError> {
    delete(&link.host_if)?;
    let batch = format!(
        "tuntap add dev {h} mode tap user {uid} group {uid}\nlink set {h} alias {alias}\n",
        h = link.host_if
    );
    run(
        &format!("creating tap {}", link.host_if),
        Command::new("ip").args(["-batch", "-"]),
        Some(&batch),
    )?;
    let made = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", link.host_if),
        "1",
    )
    .map_err(|e| NetError::Command {
        what: format!("turning IPv6 off on {}", link.host_if),
        detail: e.to_string(),
    })
    .and_then(|_| {
        run(
            &format!("addressing tap {}", link.host_if),
            Command::new("ip").args(["-batch", "-"]),
            Some(&format!(
                "addr add {}/30 dev {h}\nlink set {h} up\n",
                link.host_ip,
                h = link.host_if
            )),
        )
    });
    if made.is_err() {
        let _ = delete(&link.host_if);
    }
    made
}
