//! The sandbox network: an IPv4 subnet cut into /30s, one per sandbox (host end `.1`, sandbox end
//! `.2` of each), and the link name derived from a sandbox's owner key.
//!
//! Pure arithmetic: no I/O.

use std::net::Ipv4Addr;

use sha2::Digest as _;

use crate::LINK_PREFIX;

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
        Link {
            index,
            host_if: link_name(key),
            host_ip: Ipv4Addr::from(net + 1),
            sandbox_ip: Ipv4Addr::from(net + 2),
        }
    }
}

/// The host-side link name of the sandbox with owner key `key`: `airl` and 10 hex digits of its
/// hash (15 bytes, the kernel's limit).
pub fn link_name(key: &str) -> String {
    let h = hex::encode(sha2::Sha256::digest(key.as_bytes()));
    format!("{LINK_PREFIX}{}", &h[..10])
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
