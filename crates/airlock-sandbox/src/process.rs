//! The `process` backend: the runner runs as a child process in its own working directory under
//! `state_dir/sandboxes/<id>`, which is deleted afterwards.
//!
//! **It is not isolated.** The job runs as airlock's user, sees the host's files, processes and
//! network, and can leave processes behind that escape its process group. It exists for
//! development and the demo; every start logs a warning saying so. Use the container or microVM
//! backends for anything else.
//!
//! The runner is started through a small `/bin/sh` supervisor in a new process group, which
//! records the runner's exit status in the sandbox directory. Because the status lives on disk, a
//! job survives a crash of airlock: the restarted daemon reads how the runner ended. Every process
//! of the sandbox carries `AIRLOCK_SANDBOX=<id>` in its environment, so destroy finds and kills
//! those that left the process group too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::{check_id, Backend, SandboxError, SandboxSpec, SandboxStatus, Secret};

pub const MARKER_ENV: &str = "AIRLOCK_SANDBOX";
const JIT_ENV: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";

/// Runs the runner, then records its exit status atomically (rename), so a reader never sees a
/// half-written file.
const SUPERVISOR: &str = r#"cd work || exit 1
"$0" >> ../runner.log 2>&1
code=$?
echo "$code" > ../exit_status.tmp && mv ../exit_status.tmp ../exit_status
"#;

#[derive(Debug)]
pub struct ProcessBackend {
    root: PathBuf,
    exits: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// Supervisors this process started and is still waiting on: known to be running without
    /// looking at the disk or /proc (which `list` would otherwise do for every sandbox, every pass).
    watched: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
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
            exits,
            watched: Default::default(),
        }
    }

    fn is_watched(&self, id: &str) -> bool {
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
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

/// A live process: (pid, start time in clock ticks), so a reused pid is not mistaken for ours.
fn proc_start(pid: i32) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

fn read_pid(dir: &Path) -> Option<(i32, u64)> {
    let s = std::fs::read_to_string(dir.join("pid")).ok()?;
    let mut it = s.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn alive(pid: i32, start: u64) -> bool {
    matches!(proc_start(pid), Some((s, state)) if s == start && state != 'Z' && state != 'X')
}

fn status_of(dir: &Path) -> SandboxStatus {
    if !dir.exists() {
        return SandboxStatus::Missing;
    }
    if let Ok(s) = std::fs::read_to_string(dir.join("exit_status")) {
        return SandboxStatus::Exited(s.trim().parse().ok());
    }
    match read_pid(dir) {
        None => SandboxStatus::Created,
        Some((pid, start)) if alive(pid, start) => SandboxStatus::Running,
        Some(_) => SandboxStatus::Exited(None),
    }
}

/// Pids of processes whose environment carries this sandbox's marker.
fn marked_processes(id: &str) -> Vec<i32> {
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
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        check_id(&spec.id)?;
        let dir = self.dir(&spec.id);
        let err = |source| SandboxError::Create {
            id: spec.id.clone(),
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(dir.join("work/tmp")).map_err(err)?;
        set_private(&dir).map_err(err)?;
        Ok(())
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
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(SUPERVISOR)
            .arg(&spec.runner_command)
            .current_dir(&dir)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .env("HOME", &work)
            .env("TMPDIR", work.join("tmp"))
            .env("LANG", "C.UTF-8")
            .env("RUNNER_ALLOW_RUNASROOT", "1")
            .env(MARKER_ENV, &spec.id)
            .env(JIT_ENV, jit.expose())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|source| SandboxError::Start {
            id: spec.id.clone(),
            command: spec.runner_command.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or(0) as i32;
        let start = proc_start(pid).map(|(s, _)| s).unwrap_or(0);
        let pidfile = dir.join("pid");
        let tmp = dir.join("pid.tmp");
        std::fs::write(&tmp, format!("{pid} {start}\n"))
            .and_then(|_| std::fs::rename(&tmp, &pidfile))
            .map_err(|source| SandboxError::Start {
                id: spec.id.clone(),
                command: spec.runner_command.clone(),
                source,
            })?;
        let exits = self.exits.clone();
        let id = spec.id.clone();
        let watched = self.watched.clone();
        watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone());
        tokio::spawn(async move {
            let _ = child.wait().await;
            watched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            if let Some(tx) = exits {
                let _ = tx.send(id);
            }
        });
        Ok(())
    }

    async fn status(&self, id: &str) -> Result<SandboxStatus, SandboxError> {
        check_id(id)?;
        if self.is_watched(id) {
            return Ok(SandboxStatus::Running);
        }
        Ok(status_of(&self.dir(id)))
    }

    async fn list(&self) -> Result<Vec<(String, SandboxStatus)>, SandboxError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => {
                return Err(SandboxError::List {
                    path: self.root.clone(),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            if let Some(id) = e.file_name().to_str() {
                if check_id(id).is_ok() && e.file_type().is_ok_and(|t| t.is_dir()) {
                    let st = if self.is_watched(id) {
                        SandboxStatus::Running
                    } else {
                        status_of(&e.path())
                    };
                    out.push((id.to_string(), st));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        check_id(id)?;
        let dir = self.dir(id);
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some((pid, start)) = read_pid(&dir) {
            if alive(pid, start) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
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
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SandboxError::Destroy {
                id: id.into(),
                detail: format!("removing {}: {e}", dir.display()),
            }),
        }
    }
}

fn set_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, cmd: &Path) -> SandboxSpec {
        SandboxSpec {
            id: id.into(),
            runner_name: format!("airlock-t-{id}"),
            runner_command: cmd.to_path_buf(),
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
