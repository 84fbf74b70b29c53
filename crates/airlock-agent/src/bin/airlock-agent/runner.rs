//! Starting the runner (and dockerd, if asked), and reaping every process as PID 1 until the
//! runner exits.
//!
//! The JIT secret goes to the runner only through its environment. This module must never put it
//! in argv or on the console, and must never return while the runner is still alive.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock_agent::config::{GuestResult, RunnerSpec, Secret};
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::log::log;
use crate::users::Account;
use crate::{io_err, Fatal};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
pub const JIT_VAR: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";

/// The runner's whole environment (nothing is inherited from the agent).
pub fn environment(spec: &RunnerSpec, account: &Account, jit: &Secret) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), PATH.to_string());
    env.insert("LANG".to_string(), "C.UTF-8".to_string());
    for (k, v) in &spec.env {
        env.insert(k.clone(), v.clone());
    }
    env.insert("HOME".to_string(), account.home.clone());
    env.insert("USER".to_string(), account.name.clone());
    env.insert("LOGNAME".to_string(), account.name.clone());
    env.insert(JIT_VAR.to_string(), jit.expose().to_string());
    env
}

fn console() -> Stdio {
    match OpenOptions::new().write(true).open("/dev/console") {
        Ok(f) => Stdio::from(f),
        Err(_) => Stdio::inherit(),
    }
}

pub fn spawn(spec: &RunnerSpec, account: &Account, jit: &Secret) -> Result<Pid, Fatal> {
    let mut env = environment(spec, account, jit);
    let mut cmd = Command::new(&spec.command);
    cmd.env_clear()
        .envs(&env)
        .current_dir(&account.home)
        .stdin(Stdio::null())
        .stdout(console())
        .stderr(console());
    crate::sys::run_as(&mut cmd, account.uid, account.gid, account.groups.clone());
    let child = cmd.spawn().map_err(io_err(format!(
        "start {} as {}",
        spec.command, account.name
    )))?;
    drop(cmd);
    if let Some(mut v) = env.remove(JIT_VAR) {
        let mut bytes = std::mem::take(&mut v).into_bytes();
        bytes.fill(0);
        std::hint::black_box(&bytes);
    }
    Ok(Pid::from_raw(child.id() as i32))
}

/// Reaps every child (orphans are ours as PID 1) until `runner` exits.
pub fn reap_until(runner: Pid) -> GuestResult {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == runner => {
                return GuestResult::ExitCode(code)
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == runner => {
                return GuestResult::Signal(sig as i32)
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return GuestResult::Error(format!("waiting for the runner: {e}")),
        }
    }
}

/// How long the runner waits for dockerd before it starts anyway (dockerd keeps starting in the
/// background; a job's first `docker` command then waits for it or fails). dockerd 20.10 with its
/// containerd answered after about 25 s under TCG here (most of it setting up the default bridge's
/// iptables rules), when idle; the margin is for a busy host.
const DOCKERD_WAIT: Duration = Duration::from_secs(120);
const DOCKER_SOCKET: &str = "/run/docker.sock";

/// Whether `reply` (the start of an HTTP response) is a success.
pub fn is_ok_reply(reply: &[u8]) -> bool {
    let line = reply.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    words.next().is_some_and(|v| v.starts_with(b"HTTP/1.")) && words.next() == Some(b"200")
}

/// Whether dockerd answers `GET /_ping` on its socket. A successful connect is not enough:
/// dockerd binds the socket seconds before it serves the API, and connections wait in the backlog.
fn docker_answers() -> bool {
    let Ok(mut s) = UnixStream::connect(DOCKER_SOCKET) else {
        return false;
    };
    let timeout = Some(Duration::from_secs(1));
    if s.set_read_timeout(timeout).is_err() || s.set_write_timeout(timeout).is_err() {
        return false;
    }
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    is_ok_reply(&buf[..n])
}

/// Starts dockerd in the background and waits (up to [`DOCKERD_WAIT`]) for its socket, so that a
/// job's first step finds Docker ready. Failures are logged only: jobs that do not use Docker
/// still run.
pub fn start_docker() {
    // Debian's docker.io installs /usr/sbin/dockerd; Docker's own packages /usr/bin/dockerd.
    let Some(dockerd) = ["/usr/sbin/dockerd", "/usr/bin/dockerd"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
    else {
        log!("docker requested but the image has no dockerd (/usr/sbin or /usr/bin)");
        return;
    };
    // dockerd and iptables load their modules (bridge, br_netfilter, veth, nf_tables, xt_*)
    // through the kernel's helper: say so if the image cannot answer it.
    if let Ok(helper) = std::fs::read_to_string("/proc/sys/kernel/modprobe") {
        let helper = helper.trim();
        if !helper.is_empty() && !Path::new(helper).exists() {
            log!(
                "{helper}, the kernel's module loader, is not in the image: modules will not load"
            );
        }
    }
    let start = Instant::now();
    let mut cmd = Command::new(dockerd);
    // Warnings and errors only: at its default level dockerd (and the containerd it starts) write
    // some hundred lines per boot and per container to the console, which is the job's log.
    cmd.arg("--log-level=warn")
        .env_clear()
        .env("PATH", PATH)
        .stdin(Stdio::null())
        .stdout(console())
        .stderr(console());
    let child = match cmd.spawn() {
        Ok(c) => Pid::from_raw(c.id() as i32),
        Err(e) => {
            log!("could not start dockerd: {e}");
            return;
        }
    };
    log!("dockerd started (pid {child}), waiting for it to answer on {DOCKER_SOCKET}");
    while start.elapsed() < DOCKERD_WAIT {
        if docker_answers() {
            log!("dockerd ready in {} ms", start.elapsed().as_millis());
            return;
        }
        // Reap what exited while waiting (we are PID 1), and stop waiting if dockerd did.
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                    log!(
                        "dockerd exited with status {code} after {} ms",
                        start.elapsed().as_millis()
                    );
                    return;
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                    log!(
                        "dockerd killed by signal {sig} after {} ms",
                        start.elapsed().as_millis()
                    );
                    return;
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    log!(
        "dockerd did not answer on {DOCKER_SOCKET} within {} s; starting the runner anyway",
        DOCKERD_WAIT.as_secs()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_reply_means_docker_is_ready() {
        assert!(is_ok_reply(b"HTTP/1.0 200 OK\r\nApi-Version: 1.41\r\n"));
        assert!(is_ok_reply(b"HTTP/1.1 200 OK\r\n"));
        assert!(!is_ok_reply(b"HTTP/1.1 500 Internal Server Error\r\n"));
        assert!(!is_ok_reply(b"HTTP/1.1 2000 OK\r\n"));
        assert!(!is_ok_reply(b""));
        assert!(!is_ok_reply(b"200 HTTP/1.1"));
    }

    #[test]
    fn environment_is_complete_and_agent_values_win() {
        let mut spec = RunnerSpec {
            command: "/home/runner/run.sh".into(),
            user: "runner".into(),
            env: BTreeMap::new(),
        };
        spec.env.insert("KEY".into(), "VALUE".into());
        spec.env.insert("LANG".into(), "de_DE.UTF-8".into());
        let account = Account {
            name: "runner".into(),
            uid: 1001,
            gid: 1001,
            home: "/home/runner".into(),
            groups: vec![1001],
        };
        let env = environment(&spec, &account, &Secret::new("jit"));
        assert_eq!(env["PATH"], PATH);
        assert_eq!(env["HOME"], "/home/runner");
        assert_eq!(env["USER"], "runner");
        assert_eq!(env["LOGNAME"], "runner");
        assert_eq!(env["KEY"], "VALUE");
        assert_eq!(env["LANG"], "de_DE.UTF-8", "the job may choose its locale");
        assert_eq!(env[JIT_VAR], "jit");
        assert_eq!(env.len(), 7);
    }
}
