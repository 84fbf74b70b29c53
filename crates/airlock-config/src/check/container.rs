//! `[container]`: the container backend's host-wide settings (runtime, subnet, uid range, DNS).
//!
//! This must never probe a runtime, touch the network or look at the host's resolver: whether
//! `runtime` works is the container backend's probe's to say, at start, with its reason.

use toml::Table;

use super::Walker;
use crate::ContainerSettings;

const DEFAULT_SUBNET: &str = "10.213.0.0/16";

fn valid_subnet(s: &str) -> bool {
    let Some((a, p)) = s.split_once('/') else {
        return false;
    };
    let (Ok(a), Ok(p)) = (a.parse::<std::net::Ipv4Addr>(), p.parse::<u8>()) else {
        return false;
    };
    (8..=28).contains(&p) && u32::from(a) & !(u32::MAX << (32 - p)) == 0
}

const CONTAINER_KEYS: &[&str] = &["runtime", "subnet", "uid_base", "dns"];

pub(super) fn read(w: &mut Walker<'_>, root: &mut Table) -> ContainerSettings {
    let mut t = w.table(root, "container");
    let runtime = w.take::<String>(&mut t, "container", "runtime", "a runtime name or path");
    if let Some(r) = &runtime {
        if r.is_empty() {
            w.error(
                "container.runtime",
                "empty; leave it out to probe crun, runc and youki",
            );
        }
    }
    let subnet = w
        .take::<String>(
            &mut t,
            "container",
            "subnet",
            "an IPv4 network such as \"10.213.0.0/16\"",
        )
        .unwrap_or_else(|| DEFAULT_SUBNET.to_string());
    if !valid_subnet(&subnet) {
        w.error(
            "container.subnet",
            format!("{subnet:?} is not an IPv4 network with a prefix from /8 to /28 and no host bits set"),
        );
    }
    let uid_base = w
        .take::<u32>(&mut t, "container", "uid_base", "a uid")
        .unwrap_or(100_000);
    if uid_base == 0 || uid_base > u32::MAX - 65536 {
        w.error(
            "container.uid_base",
            "must be above 0 (root inside may not be root outside) and leave room for 65536 ids",
        );
    }
    let dns_raw = w
        .take::<Vec<String>>(&mut t, "container", "dns", "a list of IPv4 addresses")
        .unwrap_or_default();
    let mut dns = Vec::new();
    for d in dns_raw {
        match d.parse::<std::net::Ipv4Addr>() {
            Ok(a) if a.is_loopback() => w.error(
                "container.dns",
                format!("{a} is a loopback address, which a sandbox cannot reach"),
            ),
            Ok(a) => dns.push(a),
            Err(_) => w.error("container.dns", format!("{d:?} is not an IPv4 address")),
        }
    }
    w.unknown(t, "container", CONTAINER_KEYS);
    ContainerSettings {
        runtime,
        subnet,
        uid_base,
        dns,
    }
}
