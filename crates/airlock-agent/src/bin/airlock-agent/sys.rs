//! The agent's only `unsafe` code: the few kernel interfaces that neither std nor nix (with the
//! features this crate can use) wraps safely.
//!
//! - `EXT4_IOC_RESIZE_FS`, to grow the root filesystem online, and `sched_setscheduler`, to do it
//!   at idle priority;
//! - a netlink route socket (nix's socket wrappers need a crate that is not in the lockfile);
//! - dropping to the runner's credentials between fork and exec (`pre_exec`), because std's
//!   `Command::uid` clears supplementary groups and `Command::groups` is unstable.
//!
//! Each wrapper is a thin, safe function over one call. This module must never grow logic: the
//! message formats, policies and retries live in the safe modules that call it.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::unistd::{Gid, Uid};

nix::ioctl_write_ptr!(ext4_ioc_resize_fs, b'f', 16, u64);

/// Grows the ext4 filesystem that `dir` (an open directory on it) belongs to, to `blocks` blocks.
pub fn ext4_resize(dir: &std::fs::File, blocks: u64) -> nix::Result<()> {
    // SAFETY: the ioctl reads one u64 from the pointer, which lives across the call.
    unsafe { ext4_ioc_resize_fs(dir.as_raw_fd(), &blocks) }.map(drop)
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Puts thread `tid` (0: the calling one) in `SCHED_IDLE` (it runs only when nothing else wants
/// the CPU) or back in `SCHED_OTHER`.
pub fn set_idle(tid: i32, idle: bool) -> io::Result<()> {
    // SAFETY: sched_param is plain integers (musl's has more fields than glibc's), for which
    // all-zero is valid; both policies take priority 0.
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    // The raw system call: musl's sched_setscheduler() is a stub that returns ENOSYS (POSIX
    // means the process, Linux's call the thread).
    // SAFETY: the call reads the parameter during the call only; a wrong tid is an error.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            tid,
            policy,
            &param as *const libc::sched_param,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A bound `NETLINK_ROUTE` socket.
pub struct Netlink(OwnedFd);

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain syscall; the result is checked before it is owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all-zero is "the kernel, any groups".
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl of the length passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink(fd))
    }

    pub fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: msg is a valid buffer of the length passed.
        let n = unsafe { libc::send(self.0.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is a valid writable buffer of the length passed.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Makes `cmd`'s child take these credentials (groups, then gid, then uid) just before exec.
pub fn run_as(cmd: &mut Command, uid: u32, gid: u32, groups: Vec<u32>) {
    let groups: Vec<Gid> = groups.into_iter().map(Gid::from_raw).collect();
    let closure = move || -> io::Result<()> {
        // Only async-signal-safe work here: three syscalls on data prepared before the fork.
        nix::unistd::setgroups(&groups)?;
        nix::unistd::setgid(Gid::from_raw(gid))?;
        nix::unistd::setuid(Uid::from_raw(uid))?;
        Ok(())
    };
    // SAFETY: the closure allocates nothing and only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(closure);
    }
}
