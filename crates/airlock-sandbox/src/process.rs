//! The `process` backend: the runner runs as a child process in its own working directory under
//! `state_dir/sandboxes/<id>`, which is deleted afterwards.
//!
//! **It is not isolated.** The job runs as airlock's user, sees the host's files, processes and
//! network, and can leave processes behind that escape its process group. It exists for
//! development and the demo; every start logs a warning saying so. Use the container or microVM
//! backends for anything else.
//!
//! The runner is started through `airlock-supervise` (see `supervise.rs`) in a new process group;
//! it is a child subreaper and records the exit status in the sandbox directory once every
//! process below it has ended. Because the status lives on disk, a
//! job survives a crash of airlock: the restarted daemon reads how the runner ended. Every process
//! of the sandbox carries `AIRLOCK_SANDBOX=<id>` in its environment, so destroy finds and kills
//! those that left the process group too (unless the supervisor recorded its end: then none is
//! left).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use std::ffi::OsStr;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::supervise::{self, status_of, LogKeep, Watch};
use crate::{check_id, Backend, BackendKind, SandboxError, SandboxSpec, SandboxStatus, Secret};

pub const MARKER_ENV: &str = "AIRLOCK_SANDBOX";
const JIT_ENV: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";

/// Default cap on a sandbox's `runner.log`.
pub const DEFAULT_LOG_CAP: u64 = 16 * 1024 * 1024;

#[derive(Debug)]
pub struct ProcessBackend {
    root: PathBuf,
    /// Supervisors this process started and is still waiting on: known to be running without
    /// looking at the disk or /proc (which `list` would otherwise do for every sandbox, every pass).
    watched: Watch,
    log_cap: u64,
    nice: i32,
    logs: Option<LogKeep>,
}

impl ProcessBackend {
    /// `root` holds one directory per sandbox. `exits` is told the id of each sandbox whose
    /// runner ends while this process watches it.
    pub fn new(
        root: PathBuf,
        exits: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) -> ProcessBackend {
        ProcessBackend {
            root,
            watched: Watch::new(exits),
            log_cap: DEFAULT_LOG_CAP,
            nice: 0,
            logs: None,
        }
    }

    /// Runs every sandbox at niceness `n` (0: the daemon's own; see `airlock-supervise`).
    pub fn with_nice(mut self, n: i32) -> ProcessBackend {
        self.nice = n;
        self
    }

    /// Keeps finished sandboxes' logs (see `LogKeep`); without it they go with the sandbox.
    pub fn with_logs(mut self, logs: LogKeep) -> ProcessBackend {
        self.logs = Some(logs);
        self
    }

    /// Caps each sandbox's `runner.log` at `bytes`.
    pub fn with_log_cap(mut self, bytes: u64) -> ProcessBackend {
        self.log_cap = bytes;
        self
    }

    /// Proves the backend works here by running a trivial process through the same supervisor.
    pub async fn probe(&self) -> Result<(), SandboxError> {
        std::fs::create_dir_all(&self.root).map_err(|e| SandboxError::Probe {
            backend: "process",
            detail: format!("cannot create {}: {e}", self.root.display()),
        })?;
        let out = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg("exit 7")
            .output()
            .await
            .map_err(|e| SandboxError::Probe {
                backend: "process",
                detail: format!("cannot run /bin/sh: {e}"),
            })?;
        if out.status.code() != Some(7) {
            return Err(SandboxError::Probe {
                backend: "process",
                detail: format!("/bin/sh exited {:?}", out.status),
            });
        }
        Ok(())
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }
}

/// Pids of processes whose environment carries this sandbox's marker.
pub(crate) fn marked_processes(id: &str) -> Vec<i32> {
    let needle = format!("{MARKER_ENV}={id}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

#[async_trait]
impl Backend for ProcessBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Process
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        check_id(&spec.id)?;
        let (id, dir) = (spec.id.clone(), self.dir(&spec.id));
        crate::blocking(&spec.id, move || {
            let err = |source| SandboxError::Create {
                id: id.clone(),
                path: dir.clone(),
                source,
            };
            std::fs::create_dir_all(dir.join("work/tmp")).map_err(err)?;
            set_private(&dir).map_err(err)
        })
        .await
    }

    async fn start(&self, spec: &SandboxSpec, jit: &Secret) -> Result<(), SandboxError> {
        check_id(&spec.id)?;
        let dir = self.dir(&spec.id);
        if !dir.join("work").is_dir() {
            return Err(SandboxError::Missing {
                id: spec.id.clone(),
            });
        }
        tracing::warn!(
            sandbox = %spec.id,
            runner = %spec.runner_name,
            "process backend: the job runs on the host WITHOUT isolation (development and demos only)"
        );
        let work = dir.join("work");
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        let tmp = work.join("tmp");
        let start_err = |source| SandboxError::Start {
            id: spec.id.clone(),
            command: spec.runner_command.clone(),
            source,
        };
        let mut cmd = supervise::command(
            &dir,
            self.log_cap,
            self.nice,
            None,
            &[
                OsStr::new("/bin/sh"),
                OsStr::new("-c"),
                OsStr::new("cd work && exec \"$0\""),
                spec.runner_command.as_os_str(),
            ],
            &[
                ("PATH", path.as_os_str()),
                ("HOME", work.as_os_str()),
                ("TMPDIR", tmp.as_os_str()),
                ("LANG", OsStr::new("C.UTF-8")),
                ("RUNNER_ALLOW_RUNASROOT", OsStr::new("1")),
                (MARKER_ENV, OsStr::new(&spec.id)),
                (JIT_ENV, OsStr::new(jit.expose())),
            ]
            .into_iter()
            .chain(crate::RUNNER_ENV.iter().map(|(k, v)| (*k, OsStr::new(v))))
            .collect::<Vec<_>>(),
        )
        .map_err(start_err)?;
        let child = cmd.spawn().map_err(start_err)?;
        let pid = child.id().unwrap_or(0) as i32;
        supervise::write_pid(&dir, pid).map_err(start_err)?;
        self.watched.spawn(spec.id.clone(), child);
        Ok(())
    }

    async fn status(&self, id: &str) -> Result<SandboxStatus, SandboxError> {
        check_id(id)?;
        Ok(supervise::reported(
            &self.watched,
            id,
            &self.dir(id),
            status_of,
            || false,
        ))
    }

    async fn list(&self) -> Result<Vec<(String, SandboxStatus)>, SandboxError> {
        let (root, watched) = (self.root.clone(), self.watched.clone());
        crate::blocking("", move || {
            let entries = match std::fs::read_dir(&root) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
                Err(source) => return Err(SandboxError::List { path: root, source }),
            };
            let mut out = Vec::new();
            for e in entries.flatten() {
                if let Some(id) = e.file_name().to_str() {
                    if check_id(id).is_ok() && e.file_type().is_ok_and(|t| t.is_dir()) {
                        let st = supervise::reported(&watched, id, &e.path(), status_of, || false);
                        out.push((id.to_string(), st));
                    }
                }
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(out)
        })
        .await
    }

    async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        check_id(id)?;
        let dir = self.dir(id);
        self.watched.remove(id);
        let (id, logs) = (id.to_string(), self.logs.clone());
        crate::blocking(&id.clone(), move || destroy_sync(&id, &dir, logs.as_ref())).await
    }
}

/// Kills what is left of sandbox `id` and removes its directory, on the blocking pool: the scan
/// of /proc for escaped processes reads every process's environment.
fn destroy_sync(id: &str, dir: &Path, logs: Option<&LogKeep>) -> Result<(), SandboxError> {
    // A recorded exit status means every process below the supervisor (a subreaper) has ended:
    // there is nothing to kill and no need to read every process's environment, which is the
    // common case (a runner that ran its one job) and, with a thousand processes on the host,
    // what a burst's teardowns would otherwise spend most of their time on.
    let ended = dir.join("exit_status").exists();
    if !ended {
        supervise::kill_group(dir);
        // Processes that left the group (setsid, daemonised) still carry the marker.
        for attempt in 0..50 {
            let left = marked_processes(id);
            if left.is_empty() {
                break;
            }
            for pid in &left {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            if attempt == 49 {
                return Err(SandboxError::Destroy {
                    id: id.into(),
                    detail: format!("processes {left:?} survive SIGKILL"),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(l) = logs {
        l.keep(dir, id);
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SandboxError::Destroy {
            id: id.into(),
            detail: format!("removing {}: {e}", dir.display()),
        }),
    }
}

fn set_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackendSpec;

    fn spec(id: &str, cmd: &Path) -> SandboxSpec {
        SandboxSpec {
            id: id.into(),
            runner_name: format!("airlock-t-{id}"),
            runner_command: cmd.to_path_buf(),
            backend: BackendSpec::Process,
            pool: "test".into(),
            egress: Default::default(),
        }
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn lifecycle_exit_status_and_secret_only_in_env() {
        let t = tempfile::tempdir().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let b = ProcessBackend::new(t.path().join("sb"), Some(tx));
        b.probe().await.unwrap();
        let cmd = script(
            t.path(),
            "runner",
            "echo \"args=$*\"; echo \"jit=$ACTIONS_RUNNER_INPUT_JITCONFIG\"; pwd; exit 3",
        );
        let s = spec("a1", &cmd);
        assert_eq!(b.status("a1").await.unwrap(), SandboxStatus::Missing);
        b.create(&s).await.unwrap();
        assert_eq!(b.status("a1").await.unwrap(), SandboxStatus::Created);
        b.start(&s, &Secret::new("s3cret".into())).await.unwrap();
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .as_deref(),
            Some("a1")
        );
        // The exit-status file lands just after the child is reaped.
        let mut st = b.status("a1").await.unwrap();
        for _ in 0..100 {
            if st != SandboxStatus::Running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            st = b.status("a1").await.unwrap();
        }
        assert_eq!(st, SandboxStatus::Exited(Some(3)));
        let log = std::fs::read_to_string(t.path().join("sb/a1/runner.log")).unwrap();
        assert!(
            log.contains("args=\n"),
            "the secret must not be in argv: {log}"
        );
        assert!(log.contains("jit=s3cret"));
        assert!(log.contains("/sb/a1/work"));
        assert_eq!(
            b.list().await.unwrap(),
            vec![("a1".to_string(), SandboxStatus::Exited(Some(3)))]
        );
        b.destroy("a1").await.unwrap();
        b.destroy("a1").await.unwrap();
        assert_eq!(b.status("a1").await.unwrap(), SandboxStatus::Missing);
        assert!(b.list().await.unwrap().is_empty());
        assert!(format!("{:?}", Secret::new("s3cret".into())).contains("redacted"));
    }

    /// The runner (and what it starts) runs at the backend's niceness, so that jobs saturating
    /// the host's cores leave the daemon its share; 0 leaves the daemon's own.
    #[tokio::test]
    async fn sandboxes_run_at_the_configured_niceness() {
        let t = tempfile::tempdir().unwrap();
        let cmd = script(
            t.path(),
            "runner",
            "set -- $(cat /proc/$$/stat); echo \"nice=${19}\"",
        );
        for (nice, want) in [(0, "nice=0"), (7, "nice=7")] {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let b =
                ProcessBackend::new(t.path().join(format!("sb{nice}")), Some(tx)).with_nice(nice);
            let s = spec("n1", &cmd);
            b.create(&s).await.unwrap();
            b.start(&s, &Secret::new("x".into())).await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap();
            let log =
                std::fs::read_to_string(t.path().join(format!("sb{nice}/n1/runner.log"))).unwrap();
            assert!(log.contains(want), "nice {nice}: {log:?}");
            b.destroy("n1").await.unwrap();
        }
    }

    /// A backend started after a crash finds the sandbox a first one started still running,
    /// adopts its supervisor (a pidfd) and hears of its end like a child's, not only at the next
    /// look at its files.
    #[tokio::test]
    async fn a_new_backend_adopts_a_running_supervisor_and_hears_its_end() {
        let t = tempfile::tempdir().unwrap();
        let first = ProcessBackend::new(t.path().join("sb"), None);
        let cmd = script(t.path(), "runner", "read _ < go.fifo; exit 4");
        let s = spec("ad1", &cmd);
        first.create(&s).await.unwrap();
        nix::unistd::mkfifo(
            &t.path().join("sb/ad1/work/go.fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        first.start(&s, &Secret::new("x".into())).await.unwrap();
        drop(first);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let second = ProcessBackend::new(t.path().join("sb"), Some(tx));
        assert_eq!(
            second.list().await.unwrap(),
            vec![("ad1".to_string(), SandboxStatus::Running)]
        );
        assert!(rx.try_recv().is_err(), "nothing has ended yet");
        std::fs::write(t.path().join("sb/ad1/work/go.fifo"), "go\n").unwrap();
        let heard = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(heard.unwrap().as_deref(), Some("ad1"));
        let mut st = second.status("ad1").await.unwrap();
        for _ in 0..100 {
            if st != SandboxStatus::Running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            st = second.status("ad1").await.unwrap();
        }
        assert_eq!(st, SandboxStatus::Exited(Some(4)));
        second.destroy("ad1").await.unwrap();
    }

    #[tokio::test]
    async fn destroy_kills_escaped_processes_and_half_made_sandboxes() {
        let t = tempfile::tempdir().unwrap();
        let b = ProcessBackend::new(t.path().join("sb"), None);
        // The runner starts a process in a new session (out of the group) and keeps running.
        let cmd = script(t.path(), "runner", "setsid sleep 300 & sleep 300");
        let s = spec("b2", &cmd);
        b.create(&s).await.unwrap();
        b.start(&s, &Secret::new("x".into())).await.unwrap();
        let mut seen = 0;
        for _ in 0..100 {
            seen = marked_processes("b2").len();
            if seen >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            seen >= 3,
            "supervisor, runner and both sleeps should be marked, saw {seen}"
        );
        assert_eq!(b.status("b2").await.unwrap(), SandboxStatus::Running);
        b.destroy("b2").await.unwrap();
        assert!(marked_processes("b2").is_empty());
        assert_eq!(b.status("b2").await.unwrap(), SandboxStatus::Missing);

        // Created but never started, and a directory with no files at all.
        b.create(&spec("c3", &cmd)).await.unwrap();
        b.destroy("c3").await.unwrap();
        std::fs::create_dir_all(t.path().join("sb/d4")).unwrap();
        assert_eq!(
            b.list().await.unwrap(),
            vec![("d4".to_string(), SandboxStatus::Created)]
        );
        b.destroy("d4").await.unwrap();
        assert!(b.list().await.unwrap().is_empty());
        assert!(matches!(
            b.destroy("../etc").await,
            Err(SandboxError::BadId { .. })
        ));
    }
}
