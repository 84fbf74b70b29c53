//! Attaching to a VM's tap as root, so that the VMM, which runs unprivileged, gets a descriptor
//! instead of opening `/dev/net/tun` itself (that device is often root-only, and a tap's owner
//! does not change who may open it). The descriptor is handed to the VMM as an inherited fd.
//!
//! Making a tap is here too (`make_persistent_tap`): the same device, the same `ioctl`s. They are
//! the only unsafe code in this crate.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};

use crate::NetError;

const TUNSETIFF: nix::libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: nix::libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: nix::libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: nix::libc::c_ulong = 0x4004_54ce;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// A descriptor attached to the existing tap `name` (see `links::create_tap`), as a VMM wants it:
/// no packet information header, with virtio-net headers.
pub fn open_tap(name: &str) -> Result<OwnedFd, NetError> {
    attach(
        name,
        IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        &format!("attaching to tap {name}"),
    )
}

/// `/dev/net/tun` attached (TUNSETIFF) to the tap `name` with `flags`, made if it does not exist.
fn attach(name: &str, flags: i16, what: &str) -> Result<OwnedFd, NetError> {
    let err = |detail: String| NetError::Command {
        what: what.to_string(),
        detail,
    };
    if name.is_empty() || name.len() > 15 || name.contains('\0') {
        return Err(err("not an interface name".into()));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| err(format!("opening /dev/net/tun: {e}")))?;
    let mut req = IfReq {
        name: [0; 16],
        flags,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `IfReq` lays out (16-byte
    // name, flags, padding to the kernel's 40 bytes); the descriptor is open and ours.
    let rc = unsafe { nix::libc::ioctl(f.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(err(format!(
            "TUNSETIFF: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(OwnedFd::from(f))
}

/// Makes the tap `name` (what `ip tuntap add dev NAME mode tap user UID group UID` does, without
/// the process): no packet information header, owned by `uid` and group `uid`, persistent, so it
/// outlives this descriptor until it is deleted.
pub fn make_persistent_tap(name: &str, uid: u32) -> Result<(), NetError> {
    let what = format!("creating tap {name}");
    let fd = attach(name, IFF_TAP | IFF_NO_PI, &what)?;
    for (call, request, arg) in [
        ("TUNSETOWNER", TUNSETOWNER, uid as nix::libc::c_ulong),
        ("TUNSETGROUP", TUNSETGROUP, uid as nix::libc::c_ulong),
        ("TUNSETPERSIST", TUNSETPERSIST, 1),
    ] {
        // SAFETY: these take an integer argument, not a pointer; the descriptor is attached to
        // the tap by TUNSETIFF.
        if unsafe { nix::libc::ioctl(fd.as_raw_fd(), request as _, arg) } < 0 {
            return Err(NetError::Command {
                what,
                detail: format!("{call}: {}", std::io::Error::last_os_error()),
            });
        }
    }
    Ok(())
}
