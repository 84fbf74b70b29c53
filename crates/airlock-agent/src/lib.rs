//! The contract between airlock's host side and `airlock-agent`, the init (PID 1) of every microVM.
//!
//! The host writes a [`config::GuestConfig`] onto a small raw disk (the guest's second virtio-blk
//! drive); the agent reads it, wipes the disk, boots the runner and, when the runner exits, writes a
//! [`config::GuestResult`] at the start of the same disk before powering off. Only this schema lives
//! in the library, so the host can depend on it without pulling in the guest's init code (which is
//! the `airlock-agent` binary).
//!
//! This crate must never put a secret anywhere but the config disk: not on the kernel command
//! line, not in logs, not in `Debug` output.

pub mod config;

/// The kernel command line for every airlock microVM (the same for all jobs: it is readable by
/// every process in the guest, so nothing job-specific or secret ever goes here).
///
/// `console=ttyS0`: the agent's and the runner's output go to the serial port. `quiet`: the kernel's
/// own messages would cost boot time on an emulated UART. `panic=-1`: a panic reboots at once,
/// which with QEMU's `-no-reboot` ends the VM instead of hanging it. `reboot=t`: reboot by triple
/// fault, which works on a machine without a keyboard controller. `pci=off`: microvm has no PCI
/// bus. `8250.nr_uarts=1`: only ttyS0 exists. `cryptomgr.notests`: the crypto self-tests cost about
/// 0.25 s under TCG. `random.trust_cpu=on`: seed the RNG from RDRAND at once.
///
/// Under TCG use [`tcg_kernel_cmdline`] instead.
pub const KERNEL_CMDLINE: &str =
    "console=ttyS0 quiet panic=-1 reboot=t pci=off 8250.nr_uarts=1 cryptomgr.notests random.trust_cpu=on";

/// [`KERNEL_CMDLINE`] plus `tsc_early_khz=` for TCG guests. A TCG guest's TSC is the host's
/// (QEMU's `rdtsc` reads the host counter); without the rate the kernel calibrates the TSC against
/// the emulated PIT, which fails when the host is busy ("tsc: Unable to calibrate against PIT"),
/// and the boot then hangs for good. Measured on a busy 2-core host: about 10 hangs in 35 boots
/// without it, none in 90 with it.
/// `None` leaves the kernel to calibrate (the caller's timeout and retry must then cover hangs).
pub fn tcg_kernel_cmdline(host_tsc_khz: Option<u32>) -> String {
    match host_tsc_khz {
        Some(khz) => format!("{KERNEL_CMDLINE} tsc_early_khz={khz}"),
        None => KERNEL_CMDLINE.to_string(),
    }
}

/// Appended to the kernel command line for a probe boot: the agent loads its modules, prints
/// [`PROBE_OK`] and powers off, touching no disk and no network.
pub const PROBE_ARG: &str = "airlock.probe";

/// The console line a probe boot prints once the kernel, the initramfs and its modules work.
pub const PROBE_OK: &str = "airlock-agent: probe ok";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_cmdline_adds_only_the_tsc_rate() {
        assert_eq!(tcg_kernel_cmdline(None), KERNEL_CMDLINE);
        assert_eq!(
            tcg_kernel_cmdline(Some(2_300_000)),
            format!("{KERNEL_CMDLINE} tsc_early_khz=2300000")
        );
        assert!(!KERNEL_CMDLINE.contains(PROBE_ARG));
    }
}
