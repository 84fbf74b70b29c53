//! Starting the runner (and dockerd, if asked), and reaping every process as PID 1 until the
//! runner exits.
//!
//! The JIT secret goes to the runner only through its environment. This module must never put it
//! in argv or on the console, and must never return while the runner is still alive.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock_agent::config::{GuestResult, RunnerSpec, Secret};
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
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

/// Starts dockerd in the background and waits up to 30 s for its socket; failures are logged only.
pub fn start_docker() {
    let dockerd = "/usr/bin/dockerd";
    if !Path::new(dockerd).exists() {
        log!("docker requested but {dockerd} is not in the image");
        return;
    }
    let mut cmd = Command::new(dockerd);
    cmd.env_clear()
        .env("PATH", PATH)
        .stdin(Stdio::null())
        .stdout(console())
        .stderr(console());
    if let Err(e) = cmd.spawn() {
        log!("could not start dockerd: {e}");
        return;
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if UnixStream::connect("/run/docker.sock").is_ok() {
            log!("dockerd ready in {} ms", start.elapsed().as_millis());
            return;
        }
        // Reap anything that already exited (dockerd itself, if it failed) while waiting.
        while let Ok(s) = waitpid(None::<Pid>, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            if s == WaitStatus::StillAlive {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    log!("dockerd did not answer on /run/docker.sock within 30 s; continuing");
}

#[cfg(test)]
mod tests {
    use super::*;

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
