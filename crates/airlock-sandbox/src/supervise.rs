//! The supervisor both backends start a sandbox under: a `/bin/sh` in its own process group that
//! runs the command with its output going to `runner.log` up to a size cap, and then records the
//! exit status atomically (write, rename) in the sandbox directory. Because it is a process of its
//! own and its results live on disk, a job survives a crash of airlock, and a restarted daemon
//! reads how the runner ended.
//!
//! Past the cap the output is still read (and counted, and dropped), so a chatty job is never
//! blocked or killed by a full pipe; the log ends with a line saying how much was dropped.

use std::path::Path;

/// `$0` is the log cap in 512-byte blocks (the unit of `ulimit -f` in a POSIX shell); the
/// command follows as `$@`, with its stdin closed and the supervisor's stdin as its fd 3 (a VM's
/// tap for its VMM; /dev/null otherwise). Runs in the sandbox directory. `cat` writes what it reads at once; the
/// file-size limit stops it at the cap (SIGXFSZ ignored: the write fails, cat exits), and `wc`
/// drains and counts the rest.
const SCRIPT: &str = r#"blocks=$0
{ "$@" 3<&0 </dev/null; echo "$?" > exit_status.tmp; } 2>&1 | {
  (trap '' XFSZ; ulimit -f "$blocks" && exec cat > runner.log) 2>/dev/null
  dropped=$(wc -c)
  if [ "$dropped" -gt 0 ]; then
    printf '\n[airlock: the log reached its cap of %s bytes; %s more bytes were dropped]\n' "$((blocks * 512))" "$dropped" >> runner.log
  fi
}
mv exit_status.tmp exit_status
"#;

/// The descriptor number under which the supervised command inherits the supervisor's stdin
/// (a VM's tap for QEMU, its API socket for Cloud Hypervisor).
pub(crate) const HANDED_FD: u32 = 3;

/// A command that runs `argv` under the supervisor in `dir`, in a new process group, with a clean
/// environment plus `env`.
pub(crate) fn command(
    dir: &Path,
    log_cap: u64,
    argv: &[&std::ffi::OsStr],
    env: &[(&str, &std::ffi::OsStr)],
) -> tokio::process::Command {
    // The log is the runner's output: readable by root only. (Not by umask: the runtime inherits
    // it, and the directories it makes inside the container must stay searchable.)
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join("runner.log"));
    }
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(SCRIPT)
        .arg(log_cap.div_ceil(512).max(1).to_string())
        .args(argv)
        .current_dir(dir)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    cmd
}

/// A live process: (start time in clock ticks, state), so a reused pid is not mistaken for ours.
pub(crate) fn proc_start(pid: i32) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

pub(crate) fn read_pid(dir: &Path) -> Option<(i32, u64)> {
    let s = std::fs::read_to_string(dir.join("pid")).ok()?;
    let mut it = s.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Records the supervisor's pid and start time atomically.
pub(crate) fn write_pid(dir: &Path, pid: i32) -> std::io::Result<()> {
    let start = proc_start(pid).map(|(s, _)| s).unwrap_or(0);
    let tmp = dir.join("pid.tmp");
    std::fs::write(&tmp, format!("{pid} {start}\n"))?;
    std::fs::rename(&tmp, dir.join("pid"))
}

pub(crate) fn alive(pid: i32, start: u64) -> bool {
    matches!(proc_start(pid), Some((s, state)) if s == start && state != 'Z' && state != 'X')
}

/// What the files in a sandbox directory say about it.
pub(crate) fn status_of(dir: &Path) -> crate::SandboxStatus {
    use crate::SandboxStatus;
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

/// Every sandbox id under `root` with anything left on the host that its backend (marked by
/// `tag`) tags: its directory, a host link or address lease whose owner key is `<tag>/<id>`, or
/// a cgroup `<tag>-<id>`. How orphans of every image backend are found after a crash.
pub(crate) fn ids_on_host(
    root: &Path,
    tag: &str,
    leases: &airlock_net::Leases,
) -> std::collections::BTreeSet<String> {
    let mut ids = std::collections::BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            if let Some(id) = e.file_name().to_str() {
                if crate::check_id(id).is_ok() && e.file_type().is_ok_and(|t| t.is_dir()) {
                    ids.insert(id.to_string());
                }
            }
        }
    }
    let own = format!("{tag}/");
    let leased = leases.owners_with_prefix(&own).unwrap_or_default();
    for key in airlock_net::list()
        .into_iter()
        .map(|(_, alias)| alias)
        .chain(leased)
    {
        if let Some(id) = key.strip_prefix(&own) {
            if crate::check_id(id).is_ok() {
                ids.insert(id.to_string());
            }
        }
    }
    ids.extend(crate::cgroup::ids(tag));
    ids
}

/// A sandbox's status as a backend reports it: `Running` while this process waits on its
/// supervisor, else what its files say (`files`); a sandbox of which only remnants are left
/// (`ids` lists it, its directory is gone) has ended, and destroy will sweep the rest.
pub(crate) fn reported(
    watched: &Watch,
    id: &str,
    files: impl Fn(&str) -> crate::SandboxStatus,
    remnant: impl FnOnce() -> bool,
) -> crate::SandboxStatus {
    use crate::SandboxStatus;
    if watched.contains(id) {
        return SandboxStatus::Running;
    }
    match files(id) {
        SandboxStatus::Missing if remnant() => SandboxStatus::Exited(None),
        s => s,
    }
}

/// Everything sandboxes of the backend under `root` (marked by `tag`) have left on the host, one
/// line each: directories, mounts below `root`, host links, address leases (in the lease
/// directory beside `root`) and cgroups with the tag, and processes working below `root` or in a
/// tagged cgroup. Empty when nothing is left; `airlock demo` and the tests check it.
pub(crate) fn host_remnants(root: &Path, tag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let names = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|e| {
                e.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    for n in names(root) {
        if !n.starts_with('.') {
            out.push(format!("directory {}", root.join(n).display()));
        }
    }
    let prefix = format!("{}/", root.display());
    if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
        for m in mi.lines().filter_map(|l| l.split(' ').nth(4)) {
            if m.starts_with(&prefix) {
                out.push(format!("mount {m}"));
            }
        }
    }
    for (link, alias) in airlock_net::list() {
        if alias.starts_with(&format!("{tag}/")) {
            out.push(format!("link {link} ({alias})"));
        }
    }
    let leases = airlock_net::Leases::new(
        airlock_net::lease_dir(root.parent().unwrap_or(root)),
        airlock_net::Subnet::parse(crate::container::DEFAULT_SUBNET).expect("valid default"),
    );
    for owner in leases
        .owners_with_prefix(&format!("{tag}/"))
        .unwrap_or_default()
    {
        out.push(format!("address lease of {owner}"));
    }
    for parent in crate::cgroup::parents() {
        for n in names(&parent) {
            if n.starts_with(&format!("{tag}-")) {
                out.push(format!("cgroup {}", parent.join(n).display()));
            }
        }
    }
    for pid in names(Path::new("/proc")) {
        if pid.parse::<u32>().is_err() {
            continue;
        }
        if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) {
            if cwd.starts_with(root) {
                out.push(format!("process {pid} in {}", cwd.display()));
                continue;
            }
        }
        // Processes inside a container: their cwd is in another mount namespace, their cgroup
        // carries the tag.
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if cg.contains(&format!("/airlock/{tag}-")) {
            out.push(format!("process {pid} in a sandbox cgroup"));
        }
    }
    out
}

/// Kills the supervisor's process group if it is still the one we started.
pub(crate) fn kill_group(dir: &Path) {
    if let Some((pid, start)) = read_pid(dir) {
        if alive(pid, start) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Keeps the set of supervisors this process waits on, and tells `exits` when one ends.
#[derive(Debug, Default, Clone)]
pub(crate) struct Watch {
    set: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Watch {
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }
    pub(crate) fn remove(&self, id: &str) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
    pub(crate) fn spawn(
        &self,
        id: String,
        mut child: tokio::process::Child,
        exits: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone());
        let set = self.clone();
        tokio::spawn(async move {
            let _ = child.wait().await;
            set.remove(&id);
            if let Some(tx) = exits {
                let _ = tx.send(id);
            }
        });
    }
}

/// Where finished sandboxes' logs are kept, and how many.
#[derive(Debug, Clone)]
pub struct LogKeep {
    pub dir: std::path::PathBuf,
    /// The newest this many logs are kept; older ones are deleted.
    pub keep: usize,
}

impl LogKeep {
    /// Moves a sandbox's `runner.log` to `dir/<id>.log` (mode 0600) before the sandbox directory
    /// goes, then deletes the oldest logs beyond `keep`. Best effort: a log that cannot be kept is
    /// reported and dropped, never a reason for a sandbox to stay.
    pub(crate) fn keep(&self, sandbox_dir: &Path, id: &str) {
        let src = sandbox_dir.join("runner.log");
        if !src.is_file() {
            return;
        }
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot keep job logs");
            return;
        }
        let dest = self.dir.join(format!("{id}.log"));
        if std::fs::rename(&src, &dest).is_err() {
            if let Err(e) = std::fs::copy(&src, &dest) {
                tracing::warn!(sandbox = %id, error = %e, "cannot keep the job log");
                return;
            }
        }
        self.prune();
    }

    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut logs: Vec<(std::time::SystemTime, std::path::PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if logs.len() <= self.keep {
            return;
        }
        logs.sort();
        let excess = logs.len() - self.keep;
        for (_, p) in logs.into_iter().take(excess) {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_kept_and_the_oldest_pruned() {
        let t = tempfile::tempdir().unwrap();
        let keep = LogKeep {
            dir: t.path().join("logs"),
            keep: 2,
        };
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            let sb = t.path().join(id);
            std::fs::create_dir(&sb).unwrap();
            std::fs::write(sb.join("runner.log"), format!("log {id}")).unwrap();
            let when =
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64);
            std::fs::File::options()
                .write(true)
                .open(sb.join("runner.log"))
                .unwrap()
                .set_modified(when)
                .unwrap();
            keep.keep(&sb, id);
            assert!(!sb.join("runner.log").exists());
        }
        let mut left: Vec<String> = std::fs::read_dir(&keep.dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["b.log", "c.log"]);
        assert_eq!(
            std::fs::read_to_string(keep.dir.join("c.log")).unwrap(),
            "log c"
        );
        // A sandbox without a log is fine.
        std::fs::create_dir(t.path().join("d")).unwrap();
        keep.keep(&t.path().join("d"), "d");
    }
}
