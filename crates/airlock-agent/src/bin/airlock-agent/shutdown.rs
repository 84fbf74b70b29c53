//! The end of every boot: stop what is left, flush, power off.
//!
//! This module must never return to the caller: if the power-off call fails, PID 1 exits, the
//! kernel panics, and `panic=-1` with QEMU's `-no-reboot` ends the VM all the same.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::log::log;

/// Reaps children for up to `limit`; true once none are left.
fn reap_all(limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => return true,
            Ok(WaitStatus::StillAlive) => {
                if start.elapsed() >= limit {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

pub fn power_off() -> ! {
    // kill(-1) from PID 1 signals every other process.
    if kill(Pid::from_raw(-1), Signal::SIGTERM).is_ok() && !reap_all(Duration::from_secs(2)) {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        reap_all(Duration::from_secs(1));
    }
    crate::mounts::quiesce();
    log!("powering off");
    let err = reboot(RebootMode::RB_POWER_OFF);
    log!("power-off failed ({err:?}); exiting so the kernel panics and the VM stops");
    std::process::exit(1)
}
