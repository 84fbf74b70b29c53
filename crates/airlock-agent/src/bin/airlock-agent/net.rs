//! Networking: `lo` and `eth0` up, `eth0`'s address and the default route (rtnetlink messages
//! built here by hand; the guest has no `ip`), then `/etc/resolv.conf`, `/etc/hostname` and an
//! `/etc/hosts` line for the hostname.
//!
//! This module must never bring up any interface but `lo` and `eth0`, nor add routes other than
//! the one default route the host asked for.

use std::fs;
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::time::Instant;

use airlock_agent::config::NetSpec;

use crate::log::log;
use crate::sys::Netlink;
use crate::{io_err, Fatal};

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFF_UP: u32 = 0x1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const AF_INET: u8 = 2;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

/// One rtnetlink request: header, fixed body, attributes (each padded to 4 bytes).
fn message(kind: u16, flags: u16, seq: u32, body: &[u8], attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = vec![0u8; 16];
    m.extend_from_slice(body);
    for (t, data) in attrs {
        m.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        m.extend_from_slice(&t.to_ne_bytes());
        m.extend_from_slice(data);
        m.resize(m.len().next_multiple_of(4), 0);
    }
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&kind.to_ne_bytes());
    m[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

/// RTM_NEWLINK setting IFF_UP on `index`.
pub fn link_up(seq: u32, index: u32) -> Vec<u8> {
    let mut body = vec![0u8; 16]; // ifinfomsg: family, pad, type, index, flags, change
    body[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    body[8..12].copy_from_slice(&IFF_UP.to_ne_bytes());
    body[12..16].copy_from_slice(&IFF_UP.to_ne_bytes());
    message(RTM_NEWLINK, 0, seq, &body, &[])
}

/// RTM_NEWADDR for `addr/prefix` on `index`.
pub fn add_address(seq: u32, index: u32, addr: Ipv4Addr, prefix: u8) -> Vec<u8> {
    let mut body = vec![AF_INET, prefix, 0, RT_SCOPE_UNIVERSE]; // ifaddrmsg
    body.extend_from_slice(&index.to_ne_bytes());
    let a = addr.octets();
    message(
        RTM_NEWADDR,
        NLM_F_CREATE | NLM_F_EXCL,
        seq,
        &body,
        &[(IFA_LOCAL, &a), (IFA_ADDRESS, &a)],
    )
}

/// RTM_NEWROUTE: default route via `gateway` out of `index`.
pub fn add_default_route(seq: u32, index: u32, gateway: Ipv4Addr) -> Vec<u8> {
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    let mut body = vec![
        AF_INET,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ];
    body.extend_from_slice(&0u32.to_ne_bytes());
    message(
        RTM_NEWROUTE,
        NLM_F_CREATE | NLM_F_EXCL,
        seq,
        &body,
        &[
            (RTA_GATEWAY, &gateway.octets()),
            (RTA_OIF, &index.to_ne_bytes()),
        ],
    )
}

/// The errno in a netlink ACK (`Some(0)` for success), or `None` if `reply` is not one for `seq`.
pub fn ack_errno(reply: &[u8], seq: u32) -> Option<i32> {
    let word = |at: usize| reply.get(at..at + 4).map(|b| [b[0], b[1], b[2], b[3]]);
    let kind = u16::from_ne_bytes([*reply.get(4)?, *reply.get(5)?]);
    if kind != NLMSG_ERROR || u32::from_ne_bytes(word(8)?) != seq {
        return None;
    }
    Some(-i32::from_ne_bytes(word(16)?))
}

fn request(nl: &Netlink, what: &str, seq: u32, msg: &[u8]) -> Result<(), Fatal> {
    nl.send(msg).map_err(io_err(what.to_string()))?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = nl.recv(&mut buf).map_err(io_err(what.to_string()))?;
        match ack_errno(&buf[..n], seq) {
            Some(0) | Some(libc::EEXIST) => return Ok(()),
            Some(e) => {
                return Err(io_err(what.to_string())(std::io::Error::from_raw_os_error(
                    e,
                )))
            }
            None => continue,
        }
    }
}

fn ifindex(name: &str) -> Option<u32> {
    fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub fn configure(net: &NetSpec) -> Result<(), Fatal> {
    let nl = Netlink::open().map_err(io_err("open netlink socket"))?;
    let lo = ifindex("lo").unwrap_or(1);
    request(&nl, "bring up lo", 1, &link_up(1, lo))?;
    let start = Instant::now();
    let eth0 = loop {
        if let Some(i) = ifindex("eth0") {
            break i;
        }
        if start.elapsed().as_secs() >= 5 {
            return Err(Fatal::NoDevice {
                device: "eth0".into(),
                secs: 5,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let what = format!("add {}/{} to eth0", net.address, net.prefix);
    request(
        &nl,
        &what,
        2,
        &add_address(2, eth0, net.address, net.prefix),
    )?;
    request(&nl, "bring up eth0", 3, &link_up(3, eth0))?;
    let what = format!("add default route via {}", net.gateway);
    request(&nl, &what, 4, &add_default_route(4, eth0, net.gateway))?;
    log!("eth0 {}/{} via {}", net.address, net.prefix, net.gateway);
    Ok(())
}

/// Replaces `path` with a regular file (a symlink, e.g. to systemd-resolved's, is removed first
/// rather than followed).
fn replace_file(path: &str, text: &str) -> Result<(), Fatal> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("remove {path}"))(e)),
    }
    fs::write(path, text).map_err(io_err(format!("write {path}")))
}

pub fn resolv_conf(dns: &[Ipv4Addr]) -> String {
    dns.iter().map(|a| format!("nameserver {a}\n")).collect()
}

/// `/etc/hosts` with a `127.0.1.1 <hostname>` line (sudo warns on every call without it).
pub fn hosts_with(existing: &str, hostname: &str) -> String {
    let has = existing
        .lines()
        .any(|l| l.split_whitespace().skip(1).any(|n| n == hostname));
    if has {
        return existing.to_string();
    }
    let mut out = existing.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("127.0.1.1\t{hostname}\n"));
    out
}

/// Writes the files under the job's root (called after the root switch, so paths resolve there).
pub fn write_files(hostname: &str, net: Option<&NetSpec>) -> Result<(), Fatal> {
    fs::create_dir_all("/etc").map_err(io_err("mkdir /etc"))?;
    replace_file("/etc/hostname", &format!("{hostname}\n"))?;
    let hosts = fs::read_to_string("/etc/hosts").unwrap_or_default();
    replace_file("/etc/hosts", &hosts_with(&hosts, hostname))?;
    if let Some(n) = net {
        replace_file("/etc/resolv.conf", &resolv_conf(&n.dns))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_message_layout() {
        let m = add_address(7, 2, Ipv4Addr::new(10, 213, 0, 6), 30);
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWADDR);
        assert_eq!(
            u16::from_ne_bytes([m[6], m[7]]),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[16..20], &[AF_INET, 30, 0, 0]);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 2);
        // IFA_LOCAL attribute: len 8, type 2, the address.
        assert_eq!(u16::from_ne_bytes([m[24], m[25]]), 8);
        assert_eq!(u16::from_ne_bytes([m[26], m[27]]), IFA_LOCAL);
        assert_eq!(&m[28..32], &[10, 213, 0, 6]);
    }

    #[test]
    fn route_and_link_messages_are_aligned() {
        let r = add_default_route(1, 2, Ipv4Addr::new(10, 213, 0, 5));
        assert_eq!(r.len(), 16 + 12 + 8 + 8);
        assert_eq!(&r[28 + 4..28 + 8], &[10, 213, 0, 5]);
        let l = link_up(1, 2);
        assert_eq!(l.len(), 32);
        assert_eq!(u32::from_ne_bytes(l[24..28].try_into().unwrap()), IFF_UP);
    }

    #[test]
    fn acks_are_matched_by_sequence() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack[8..12].copy_from_slice(&5u32.to_ne_bytes());
        ack[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert_eq!(ack_errno(&ack, 5), Some(libc::EEXIST));
        assert_eq!(ack_errno(&ack, 6), None);
        assert_eq!(ack_errno(&ack[..10], 5), None);
    }

    #[test]
    fn etc_files() {
        assert_eq!(
            resolv_conf(&[Ipv4Addr::new(192, 0, 2, 53), Ipv4Addr::new(192, 0, 2, 54)]),
            "nameserver 192.0.2.53\nnameserver 192.0.2.54\n"
        );
        let h = hosts_with("127.0.0.1\tlocalhost", "airlock-abc");
        assert_eq!(h, "127.0.0.1\tlocalhost\n127.0.1.1\tairlock-abc\n");
        assert_eq!(hosts_with(&h, "airlock-abc"), h);
    }
}
