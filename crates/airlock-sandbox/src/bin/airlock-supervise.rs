//! `airlock-supervise`: the process every sandbox runs under (see `supervise.rs` in this crate).
//!
//! ```text
//! airlock-supervise CAP_BYTES [--nice N] [--container-pid-file FILE] -- COMMAND [ARG...]
//! ```
//!
//! Run in the sandbox's directory, it becomes a child subreaper, runs COMMAND with its stdin on
//! `/dev/null`, its stdout and stderr on a pipe and its own stdin as fd 3 (a VM's tap or API
//! socket), copies the pipe into `runner.log` up to CAP_BYTES (reading and counting the rest, so a
//! chatty job never blocks on a full pipe) and, once every process below it has ended, writes the
//! exit status to `exit_status` atomically (`exit_status.tmp`, then a rename).
//!
//! With `--container-pid-file`, COMMAND is an OCI runtime started detached (`run --detach
//! --pid-file FILE`): it exits as soon as the container runs, the container's init is reparented
//! here (the subreaper), and the status recorded is the container's, not the runtime's. So no
//! runtime process stays alive beside an idle sandbox. Statuses follow the shell's convention
//! (a signal is 128 + its number; a command that cannot be run is 127).
//!
//! With `--nice N` (1 to 19) it lowers its own CPU priority first, so that COMMAND and everything
//! it starts run at that niceness: a host whose cores the jobs saturate still runs the daemon
//! (webhooks answered, runners started, timeouts kept) promptly. An unprivileged job cannot raise
//! it back.
//!
//! Small on purpose: std and nix only, no async runtime; one reader thread with a small stack.
#![allow(unsafe_code)] // dup2 between fork and exec (pre_exec), which std cannot express.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// The descriptor the command finds the supervisor's stdin under (`supervise::HANDED_FD`).
const HANDED_FD: i32 = 3;

struct Args {
    cap: u64,
    nice: i32,
    pid_file: Option<String>,
    argv: Vec<String>,
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let cap = it
        .next()
        .ok_or("missing CAP_BYTES")?
        .parse::<u64>()
        .map_err(|e| format!("CAP_BYTES: {e}"))?;
    let mut pid_file = None;
    let mut nice = 0;
    loop {
        match it.next().as_deref() {
            Some("--") => break,
            Some("--nice") => {
                let n = it.next().ok_or("--nice needs N")?;
                nice = n
                    .parse::<i32>()
                    .ok()
                    .filter(|n| (1..=19).contains(n))
                    .ok_or_else(|| format!("--nice {n:?}: not a niceness from 1 to 19"))?;
            }
            Some("--container-pid-file") => {
                pid_file = Some(it.next().ok_or("--container-pid-file needs a FILE")?)
            }
            Some(other) => return Err(format!("unexpected argument {other:?}")),
            None => return Err("missing `-- COMMAND`".into()),
        }
    }
    let argv: Vec<String> = it.collect();
    if argv.is_empty() {
        return Err("missing COMMAND after `--`".into());
    }
    Ok(Args {
        cap,
        nice,
        pid_file,
        argv,
    })
}

/// The shell's encoding of how a process ended.
fn code_of(s: WaitStatus) -> Option<i32> {
    match s {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// Copies `pipe` into `log` up to `cap` bytes, then drains and counts the rest.
fn copy_capped(mut pipe: File, mut log: File, cap: u64) {
    let mut buf = vec![0u8; 16 * 1024];
    let (mut kept, mut dropped) = (0u64, 0u64);
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let keep = (cap - kept).min(n as u64) as usize;
        if keep > 0 && log.write_all(&buf[..keep]).is_err() {
            // A full disk: the job goes on, its output is counted as dropped.
            dropped += keep as u64;
        } else {
            kept += keep as u64;
        }
        dropped += (n - keep) as u64;
    }
    if dropped > 0 {
        let _ = write!(
            log,
            "\n[airlock: the log reached its cap of {cap} bytes; {dropped} more bytes were dropped]\n"
        );
    }
}

fn write_status(code: i32) {
    if std::fs::write("exit_status.tmp", format!("{code}\n")).is_ok() {
        let _ = std::fs::rename("exit_status.tmp", "exit_status");
    }
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("airlock-supervise: {e}");
            eprintln!(
                "usage: airlock-supervise CAP_BYTES [--nice N] [--container-pid-file FILE] -- COMMAND [ARG...]"
            );
            return ExitCode::from(2);
        }
    };
    let log = match OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open("runner.log")
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("airlock-supervise: cannot open runner.log: {e}");
            write_status(127);
            return ExitCode::from(1);
        }
    };
    if args.nice > 0 {
        // SAFETY: setpriority only reads its arguments; `who` 0 is this process.
        if unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, args.nice) } != 0 {
            let _ = writeln!(
                &log,
                "airlock-supervise: cannot set niceness {}: {}",
                args.nice,
                std::io::Error::last_os_error()
            );
        }
    }
    // Everything below (a detached container's init, a daemonizing VMM) is reparented here, so
    // its end is seen and its status read.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("airlock-supervise: cannot become a subreaper: {e}");
    }
    let (read_end, write_end): (OwnedFd, OwnedFd) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(&log, "airlock-supervise: pipe: {e}");
            write_status(127);
            return ExitCode::from(1);
        }
    };
    // The supervisor's stdin, handed to the command as fd 3 (close-on-exec here, so only the
    // dup2 below passes it on).
    let handed = nix::fcntl::fcntl(0, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10)).ok();
    let mut cmd = Command::new(&args.argv[0]);
    cmd.args(&args.argv[1..]).stdin(Stdio::null());
    match (write_end.try_clone(), write_end) {
        (Ok(err), out) => {
            cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
        }
        (Err(e), _) => {
            let _ = writeln!(&log, "airlock-supervise: dup: {e}");
            write_status(127);
            return ExitCode::from(1);
        }
    }
    if let Some(fd) = handed {
        // SAFETY: dup2 is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if nix::libc::dup2(fd, HANDED_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(&log, "airlock-supervise: cannot run {}: {e}", args.argv[0]);
            write_status(127);
            return ExitCode::SUCCESS;
        }
    };
    // Only the command (and what it starts) holds the pipe's write end now.
    drop(cmd);
    let direct = Pid::from_raw(child.id() as i32);
    let reader = std::thread::Builder::new()
        .name("log".into())
        .stack_size(64 * 1024)
        .spawn({
            let pipe = File::from(read_end);
            let cap = args.cap;
            move || copy_capped(pipe, log, cap)
        });
    // Reap everything until nothing is left below us; remember how each ended.
    let mut ended: HashMap<i32, i32> = HashMap::new();
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(s) => {
                if let (Some(pid), Some(code)) = (s.pid(), code_of(s)) {
                    ended.insert(pid.as_raw(), code);
                }
            }
            Err(Errno::EINTR) => continue,
            Err(_) => break, // ECHILD: every descendant has ended.
        }
    }
    if let Ok(r) = reader {
        let _ = r.join();
    }
    let direct_code = ended.get(&direct.as_raw()).copied().unwrap_or(127);
    let code = match &args.pid_file {
        // The runtime failed: the container never ran, its status is the runtime's.
        Some(_) if direct_code != 0 => direct_code,
        Some(f) => std::fs::read_to_string(f)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .and_then(|pid| ended.get(&pid).copied())
            .unwrap_or(direct_code),
        None => direct_code,
    };
    if let Some(fd) = handed {
        let _ = nix::unistd::close(fd);
    }
    write_status(code);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, String> {
        parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments_are_checked() {
        let a = args(&["100", "--container-pid-file", "c.pid", "--", "runc", "run"]).unwrap();
        assert_eq!((a.cap, a.pid_file.as_deref()), (100, Some("c.pid")));
        assert_eq!(a.argv, ["runc", "run"]);
        let a = args(&["5", "--", "true"]).unwrap();
        assert_eq!(
            (a.cap, a.nice, a.pid_file, a.argv),
            (5, 0, None, vec!["true".to_string()])
        );
        let a = args(&["5", "--nice", "10", "--", "true"]).unwrap();
        assert_eq!(a.nice, 10);
        for (bad, why) in [
            (&[][..], "missing CAP_BYTES"),
            (&["x", "--", "true"][..], "CAP_BYTES"),
            (&["5", "true"][..], "unexpected argument"),
            (&["5"][..], "missing `-- COMMAND`"),
            (&["5", "--"][..], "missing COMMAND"),
            (&["5", "--container-pid-file"][..], "needs a FILE"),
            (&["5", "--nice"][..], "needs N"),
            (&["5", "--nice", "0", "--", "true"][..], "from 1 to 19"),
            (&["5", "--nice", "-5", "--", "true"][..], "from 1 to 19"),
            (&["5", "--nice", "20", "--", "true"][..], "from 1 to 19"),
        ] {
            let e = args(bad).err().unwrap_or_default();
            assert!(e.contains(why), "{bad:?}: {e:?} lacks {why:?}");
        }
    }
}
