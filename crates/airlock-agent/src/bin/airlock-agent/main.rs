//! `airlock-agent`: the init (PID 1) of an airlock microVM.
//!
//! It turns a generic kernel + initramfs + root disk into one job's runner: mounts the early
//! filesystems, loads the virtio and overlay modules listed in the initramfs, reads (and wipes) the
//! config disk, mounts and grows the root, configures `eth0`, switches root, mounts `/dev/pts`,
//! `/dev/shm` and the cgroup v2 hierarchy, optionally starts dockerd (and puts the runner in the
//! `docker` group), starts the runner as its user with the JIT secret in its environment, reaps
//! every process until the runner exits, writes the outcome back to the config disk and powers off.
//!
//! It must never panic (every failure becomes a `{"error":..}` result and a power-off), never run
//! as anything but PID 1 (it would power off the host), and never put the secret on the console,
//! the command line or argv.

mod disk;
mod kmod;
mod log;
mod mounts;
mod net;
mod runner;
mod shutdown;
mod sys;
mod users;

use std::io;

use airlock_agent::config::{ConfigError, GuestResult, CONFIG_DEVICE};

use crate::log::log;

/// Why the boot could not go on. Printed once, with its sources, by [`chain`].
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("{device} did not appear within {secs} s")]
    NoDevice { device: String, secs: u64 },
    #[error("config disk")]
    Config(#[from] ConfigError),
    #[error("user {user:?} is not in /etc/passwd")]
    NoUser { user: String },
}

pub fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Fatal {
    let what = what.into();
    move |source| Fatal::Io { what, source }
}

pub fn sys_err(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Fatal {
    let what = what.into();
    move |source| Fatal::Sys { what, source }
}

/// The error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn main() {
    if nix::unistd::getpid().as_raw() != 1 {
        let _ = io::Write::write_all(
            &mut io::stderr(),
            b"airlock-agent: refusing to run: this is a microVM's init and must be PID 1\n",
        );
        std::process::exit(2);
    }
    log!("started");
    let mut config_disk = None;
    let result = match boot(&mut config_disk) {
        Ok(r) => r,
        Err(e) => {
            let msg = chain(&e);
            log!("fatal: {msg}");
            GuestResult::Error(msg)
        }
    };
    match &mut config_disk {
        Some(d) => {
            if let Err(e) = d.write_result(&result) {
                log!(
                    "could not write the result to {CONFIG_DEVICE}: {}",
                    chain(&e)
                );
            }
        }
        None if probing() => {}
        None => log!("no config disk: the result is only on this console"),
    }
    shutdown::power_off();
}

/// A probe boot (the host asking whether this kernel boots here): [`airlock_agent::PROBE_ARG`]
/// on the kernel command line.
fn probing() -> bool {
    std::fs::read_to_string("/proc/cmdline")
        .is_ok_and(|c| c.split_whitespace().any(|w| w == airlock_agent::PROBE_ARG))
}

fn boot(config_disk: &mut Option<disk::ConfigDisk>) -> Result<GuestResult, Fatal> {
    mounts::early()?;
    kmod::load_listed(kmod::ORDER_FILE)?;
    if probing() {
        // PROBE_OK carries the log prefix itself, so the host matches one fixed string.
        let line = format!("{}\n", airlock_agent::PROBE_OK);
        let _ = io::Write::write_all(&mut io::stderr(), line.as_bytes());
        return Ok(GuestResult::ExitCode(0));
    }
    let disk = config_disk.insert(disk::ConfigDisk::open(CONFIG_DEVICE)?);
    let mut config = disk.take_config()?;
    log!("config read, disk wiped");
    mounts::mount_root(&config.root)?;
    if let Some(n) = &config.net {
        net::configure(n)?;
    }
    nix::unistd::sethostname(&config.hostname).map_err(sys_err("sethostname"))?;
    mounts::switch_root()?;
    mounts::late()?;
    net::write_files(&config.hostname, config.net.as_ref())?;
    let mut account = users::lookup(&config.runner.user)?;
    if config.docker {
        runner::start_docker();
        users::join_group(&mut account, "docker");
    }
    users::allow_sudo(&account.name)?;
    let pid = runner::spawn(&config.runner, &account, &config.jit)?;
    config.jit.wipe();
    log!("runner started (pid {pid})");
    mounts::grow_at_full_speed();
    let result = runner::reap_until(pid);
    match &result {
        GuestResult::ExitCode(n) => log!("runner exited with status {n}"),
        GuestResult::Signal(s) => log!("runner killed by signal {s}"),
        GuestResult::Error(e) => log!("lost the runner: {e}"),
    }
    Ok(result)
}
