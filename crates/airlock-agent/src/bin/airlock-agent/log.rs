//! Progress lines on the console: `airlock-agent: [<ms since kernel boot>ms] <message>`.
//!
//! The host reads these from the serial console to follow and time a boot. This module must never
//! panic when the console is gone (write errors are ignored) and callers must never pass it a
//! secret: the console is captured on the host.

use std::io::Write;

use nix::time::{clock_gettime, ClockId};

/// Milliseconds since the kernel started (CLOCK_BOOTTIME), comparable across log lines and with
/// the kernel's own timestamps.
pub fn since_boot_ms() -> u64 {
    match clock_gettime(ClockId::CLOCK_BOOTTIME) {
        Ok(t) => (t.tv_sec() as u64) * 1000 + (t.tv_nsec() as u64) / 1_000_000,
        Err(_) => 0,
    }
}

pub fn line(msg: std::fmt::Arguments<'_>) {
    let text = format!("airlock-agent: [{}ms] {}\n", since_boot_ms(), msg);
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// `log!("format", args..)`: one progress line on the console.
macro_rules! log {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}
pub(crate) use log;
