//! The supervisor every backend starts a sandbox under: `airlock-supervise` (this crate's small
//! binary, `src/bin/airlock-supervise.rs`), in its own process group and in the sandbox
//! directory. It runs the command with its output going to `runner.log` up to a size cap, is the
//! subreaper of everything below it, and records the exit status atomically (write, rename) in
//! the sandbox directory. Because it is a process of its own and its results live on disk, a job
//! survives a crash of airlock, and a restarted daemon reads how the runner ended.
//!
//! Past the cap the output is still read (and counted, and dropped), so a chatty job is never
//! blocked or killed by a full pipe; the log ends with a line saying how much was dropped.
//!
//! An OCI runtime runs detached under it (`run --detach --pid-file`): the runtime exits once the
//! container runs, the container's init is reparented to the supervisor, and the status recorded
//! is the container's. An idle container sandbox costs the host its supervisor (a few hundred KiB)
//! instead of a foreground runtime process.

use std::path::Path;

/// The descriptor number under which the supervised command inherits the supervisor's stdin
/// (a VM's tap for QEMU, its API socket for Cloud Hypervisor).
pub(crate) const HANDED_FD: u32 = 3;

/// The supervisor's file name.
pub const PROGRAM: &str = "airlock-supervise";

/// Where `airlock-supervise` is (see `airlock_net::helper`: `$AIRLOCK_SUPERVISE`, beside this
/// program, or on `PATH`).
pub fn program() -> std::io::Result<&'static Path> {
    airlock_net::helper(PROGRAM)
}

/// A command that runs `argv` under the supervisor in `dir`, in a new process group, with a clean
/// environment plus `env`. `container_pid_file` (relative to `dir`): `argv` starts a container
/// detached and writes its init's pid there (`--pid-file`); the container's status is recorded.
pub(crate) fn command(
    dir: &Path,
    log_cap: u64,
    nice: i32,
    container_pid_file: Option<&Path>,
    argv: &[&std::ffi::OsStr],
    env: &[(&str, &std::ffi::OsStr)],
) -> std::io::Result<tokio::process::Command> {
    let program = program()?;
    // The log is the runner's output: readable by root only. (Not by umask: the runtime inherits
    // it, and the directories it makes inside the container must stay searchable.)
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join("runner.log"))?;
    }
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(log_cap.max(1).to_string());
    if (1..=19).contains(&nice) {
        cmd.arg("--nice").arg(nice.to_string());
    }
    if let Some(f) = container_pid_file {
        cmd.arg("--container-pid-file").arg(f);
    }
    cmd.arg("--").args(argv).current_dir(dir).env_clear().env(
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
    Ok(cmd)
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

/// The sandboxes that have a directory under `root`.
pub(crate) fn dir_ids(root: &Path) -> std::collections::BTreeSet<String> {
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
    ids
}

/// Every sandbox id under `root` with anything left on the host that its backend (marked by
/// `tag`) tags: its directory, a host link or address lease whose owner key is `<tag>/<id>`, or
/// a cgroup `<tag>-<id>`. How orphans of every image backend are found after a crash.
pub(crate) fn ids_on_host(
    root: &Path,
    tag: &str,
    leases: &airlock_net::Leases,
) -> std::collections::BTreeSet<String> {
    let mut ids = dir_ids(root);
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

/// A sandbox's status as a backend reports it: `Running` while this process watches its
/// supervisor, else what its files (in `dir`) say; a supervisor still running that this process
/// does not watch (one a crashed airlock started) is adopted, so its end wakes the daemon as a
/// child's does; a sandbox of which only remnants are left (`remnant`: its directory is gone but
/// the backend lists it) has ended, and destroy will sweep the rest.
pub(crate) fn reported(
    watched: &Watch,
    id: &str,
    dir: &Path,
    files: impl Fn(&Path) -> crate::SandboxStatus,
    remnant: impl FnOnce() -> bool,
) -> crate::SandboxStatus {
    use crate::SandboxStatus;
    if watched.contains(id) {
        return SandboxStatus::Running;
    }
    match files(dir) {
        SandboxStatus::Running => {
            watched.adopt(id, dir);
            SandboxStatus::Running
        }
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

/// The end of every image backend's destroy, blocking (call it on the blocking pool): the
/// sandbox's cgroup `cgroup` removed, retried every 20 ms up to `tries` times while its processes
/// finish dying (and killed before each try when `kill`), then its directory `dir`, the log kept
/// first.
pub(crate) fn remove_cgroup_and_dir(
    cgroup: &str,
    tries: u32,
    kill: bool,
    dir: &Path,
    logs: Option<&LogKeep>,
    id: &str,
) -> Result<(), String> {
    let mut last = Ok(());
    for _ in 0..tries.max(1) {
        if kill {
            crate::cgroup::kill_all(cgroup);
        }
        last = crate::cgroup::remove(cgroup);
        if last.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    last?;
    if let Some(l) = logs {
        l.keep(dir, id);
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", dir.display())),
    }
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
    exits: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

impl Watch {
    pub(crate) fn new(exits: Option<tokio::sync::mpsc::UnboundedSender<String>>) -> Watch {
        Watch {
            set: Default::default(),
            exits,
        }
    }
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
    /// Whether `id` was newly added.
    fn insert(&self, id: &str) -> bool {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string())
    }
    fn ended(&self, id: String) {
        self.remove(&id);
        if let Some(tx) = &self.exits {
            let _ = tx.send(id);
        }
    }
    /// Waits on a supervisor this process started.
    pub(crate) fn spawn(&self, id: String, mut child: tokio::process::Child) {
        self.insert(&id);
        let w = self.clone();
        tokio::spawn(async move {
            let _ = child.wait().await;
            w.ended(id);
        });
    }
    /// Watches a running supervisor this process did not start (recorded in `dir/pid`) through a
    /// pidfd, which becomes readable when it exits. Best effort: where pidfds are missing
    /// (kernels before 5.3) the sandbox's end is still seen by the next pass that reads its files.
    #[allow(unsafe_code)]
    pub(crate) fn adopt(&self, id: &str, dir: &Path) {
        let Some((pid, start)) = read_pid(dir) else {
            return;
        };
        let Some(p) = rustix::process::Pid::from_raw(pid) else {
            return;
        };
        let Ok(fd) = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) else {
            return;
        };
        // Checked after the pidfd exists: the pid still names the supervisor we recorded.
        if !alive(pid, start) {
            return;
        }
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same descriptor until
        // the AsyncFd is dropped (register's only requirement).
        let Ok(fd) = (unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }) else {
            return;
        };
        if !self.insert(id) {
            return;
        }
        let (w, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            let _ = fd.readable().await;
            w.ended(id);
        });
    }
}

/// Where finished sandboxes' logs are kept, and how many.
#[derive(Debug, Clone)]
pub struct LogKeep {
    dir: std::path::PathBuf,
    /// The newest this many logs are kept; older ones are deleted.
    keep: usize,
    /// Logs kept since the last prune, shared by the clones: the directory is read (every log's
    /// age) only once a tenth more than `keep` may be there, not at every teardown, which with
    /// a thousand logs kept would cost a burst's teardowns a thousand `stat`s each.
    since_prune: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl LogKeep {
    /// Keeps the newest `keep` logs in `dir` (up to a tenth more between two prunes).
    pub fn new(dir: std::path::PathBuf, keep: usize) -> LogKeep {
        LogKeep {
            dir,
            keep,
            // The first log kept prunes what an earlier run left.
            since_prune: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX / 2)),
        }
    }

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
        let slack = (self.keep / 10).max(1);
        let since = self
            .since_prune
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if since + 1 >= slack {
            self.since_prune
                .store(0, std::sync::atomic::Ordering::Relaxed);
            self.prune();
        }
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
        let keep = LogKeep::new(t.path().join("logs"), 2);
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

        // Keeping 20: the directory is read every second log, never holding more than 22.
        let keep = LogKeep::new(t.path().join("logs20"), 20);
        let mut most = 0;
        for i in 0..45 {
            let sb = t.path().join(format!("s{i}"));
            std::fs::create_dir(&sb).unwrap();
            std::fs::write(sb.join("runner.log"), "x").unwrap();
            std::fs::File::options()
                .write(true)
                .open(sb.join("runner.log"))
                .unwrap()
                .set_modified(
                    std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2000 + i),
                )
                .unwrap();
            keep.keep(&sb, &format!("s{i}"));
            most = most.max(std::fs::read_dir(&keep.dir).unwrap().count());
        }
        let left = std::fs::read_dir(&keep.dir).unwrap().count();
        assert!((20..=21).contains(&left), "{left} logs left");
        assert!(most <= 22, "{most} logs at once");
        assert!(keep.dir.join("s44.log").exists(), "the newest is kept");
    }
}
