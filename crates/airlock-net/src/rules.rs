//! The nftables table `inet airlock`, the same for every airlock on the host and for every kind
//! of sandbox, rewritten whole at start-up: packets from `airl*` links (container veths and VM
//! taps alike) to the host itself are dropped (input), sandbox to sandbox and sandbox to
//! link-local (cloud metadata) are dropped, IPv6 from a sandbox is dropped whatever its address
//! (every sandbox has IPv6 switched off; a microVM's root could switch it back on inside), nothing
//! from outside may open a connection into a sandbox (forward), and what leaves for elsewhere is
//! masqueraded.
//!
//! It must never name a sandbox: one rule set covers every link by its name prefix, so a sandbox
//! is protected from the moment its link exists, with no per-sandbox rule to forget.

use std::process::Command;

use crate::{run, NetError};

pub const RULES: &str = r#"table inet airlock {}
flush table inet airlock
table inet airlock {
  chain input {
    type filter hook input priority filter - 5; policy accept;
    iifname "airl*" counter drop comment "sandboxes never reach the host's own services"
  }
  chain forward {
    type filter hook forward priority filter - 5; policy accept;
    iifname "airl*" oifname "airl*" counter drop comment "no sandbox to sandbox"
    iifname "airl*" meta nfproto ipv6 counter drop comment "IPv6 is off in every sandbox: whatever is sent anyway goes nowhere"
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

/// The host's IPv4 neighbour table must hold an entry per sandbox (its address on its host
/// link), and the kernel's defaults (GC from 512 entries, none past 1,024) let only about 500
/// sandboxes talk at once ("neighbor table overflow"): the thresholds are raised to these, never
/// lowered. 16,384 is one per /30 of the default /16 sandbox subnet.
const NEIGH_THRESHOLDS: [(&str, u64); 3] = [
    ("gc_thresh1", 1024),
    ("gc_thresh2", 16_384),
    ("gc_thresh3", 32_768),
];

/// Turns on forwarding, sizes the neighbour table for many sandboxes and (re)writes the
/// `inet airlock` table.
pub fn setup_host() -> Result<(), NetError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| NetError::Command {
        what: "enabling IPv4 forwarding".into(),
        detail: e.to_string(),
    })?;
    for (knob, want) in NEIGH_THRESHOLDS {
        let path = format!("/proc/sys/net/ipv4/neigh/default/{knob}");
        let now: u64 = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if now < want {
            std::fs::write(&path, want.to_string()).map_err(|e| NetError::Command {
                what: format!("raising {path} from {now} to {want}"),
                detail: e.to_string(),
            })?;
        }
    }
    run(
        "loading the nftables table inet airlock",
        Command::new("nft").arg("-f").arg("-"),
        Some(RULES),
    )
}
