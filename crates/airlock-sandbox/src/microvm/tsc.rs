//! The host's time-stamp counter rate, which a TCG guest must be told (`tsc_early_khz=`): a TCG
//! guest reads the host's TSC, and without the rate its kernel calibrates against the emulated
//! PIT, which fails on a busy host ("tsc: Unable to calibrate against PIT") and hangs the boot for
//! good: about 1 boot in 4 here without it, none in about 95 with it.

use std::fs;

/// The host's TSC rate in kHz, measured over about 0.2 s, if the host's TSC runs at a constant
/// rate (`constant_tsc` and `nonstop_tsc` in /proc/cpuinfo); `None` otherwise or off x86-64.
/// Measured once per process (see `cached`).
pub(crate) fn host_tsc_khz() -> Option<u32> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    if !(has("constant_tsc") && has("nonstop_tsc")) {
        return None;
    }
    // Five 40 ms samples, the median kept: a sample preempted between reading the clock and the
    // counter is off in one direction, and the median ignores it.
    let mut samples = Vec::new();
    for _ in 0..5 {
        let (t0, c0) = (std::time::Instant::now(), counter::read()?);
        std::thread::sleep(std::time::Duration::from_millis(40));
        let (c1, t1) = (counter::read()?, std::time::Instant::now());
        let secs = t1.duration_since(t0).as_secs_f64();
        samples.push((c1.wrapping_sub(c0) as f64 / secs / 1000.0).round() as u32);
    }
    samples.sort_unstable();
    samples.get(2).copied().filter(|&k| k > 100_000)
}

mod counter {
    //! Reading the time-stamp counter: `_rdtsc` is an `unsafe fn` only because it is an
    //! intrinsic; the instruction has no preconditions. Nothing else belongs here.
    #![allow(unsafe_code)]

    #[cfg(target_arch = "x86_64")]
    pub(super) fn read() -> Option<u64> {
        // SAFETY: rdtsc reads a counter; it touches no memory.
        Some(unsafe { core::arch::x86_64::_rdtsc() })
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) fn read() -> Option<u64> {
        None
    }
}

/// [`host_tsc_khz`], measured on first use and kept.
pub(crate) fn cached() -> Option<u32> {
    static KHZ: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *KHZ.get_or_init(host_tsc_khz)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_measured_rate_is_plausible_and_stable() {
        if let Some(khz) = super::host_tsc_khz() {
            assert!((100_000..10_000_000).contains(&khz), "{khz} kHz");
            let again = super::host_tsc_khz().unwrap();
            let diff = (again as i64 - khz as i64).unsigned_abs();
            assert!(diff * 100 < khz as u64, "{khz} then {again} kHz");
        }
    }
}
