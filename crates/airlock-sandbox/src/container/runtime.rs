//! The OCI runtimes a container backend drives: how each is called (runc, crun and youki the
//! same way; gVisor's runsc with its platform and network flags), its state directory, and the
//! description of it each sandbox keeps.

use super::*;

/// How a runtime is driven.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flavor {
    /// runc, crun, youki: the common OCI command line.
    Oci,
    /// gVisor's runsc.
    Gvisor {
        /// `kvm` or `ptrace`, as the probe settled it.
        platform: String,
        /// `unshare`'s path when runsc must run with `/proc/sys/net` hidden (`HIDE_NET_SYSCTLS`),
        /// and the directory for the whole procfs beside it.
        hide_net_sysctls: Option<(PathBuf, PathBuf)>,
    },
}

/// An OCI runtime that passed the probe, with its own state directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Runtime {
    /// As asked for (`runsc`, `/usr/bin/runc`), for messages.
    pub name: String,
    pub path: PathBuf,
    /// Its state directory (`--root`).
    pub root: PathBuf,
    pub flavor: Flavor,
    /// What the probe found worth saying (a fallback and its reason).
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Runtime {
    pub fn is_gvisor(&self) -> bool {
        matches!(self.flavor, Flavor::Gvisor { .. })
    }

    /// The flags before every subcommand.
    pub fn global_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--root".into(), self.root.clone().into()];
        if let Flavor::Gvisor { platform, .. } = &self.flavor {
            a.push(format!("--platform={platform}").into());
            // gVisor's own network stack, inside the sandbox's network namespace, on the veth
            // the hook made there (never `host`: that would hand the job the host kernel's).
            a.push("--network=sandbox".into());
            // The spec's seccomp filter, applied by gVisor's kernel (runsc ignores it otherwise).
            a.push("--oci-seccomp".into());
        }
        a
    }

    /// The runtime with its global flags, for `kill`, `delete` and the like.
    pub fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.path);
        c.args(self.global_args());
        c.stdin(Stdio::null());
        c
    }

    /// The runtime's name for sandbox `id`'s container. runsc takes a container id that is the
    /// prefix of others' for ambiguous (`delete b1` with `b10` alive fails): under runsc every
    /// container id ends in `GVISOR_ID_SUFFIX`, which no sandbox id contains.
    pub fn container_id(&self, id: &str) -> String {
        match self.flavor {
            Flavor::Oci => id.to_string(),
            Flavor::Gvisor { .. } => format!("{id}{GVISOR_ID_SUFFIX}"),
        }
    }

    /// The argv that runs sandbox `id`'s container from `bundle` (`run`), wrapped as this runtime
    /// needs: to its end, or detached (`--detach --pid-file`) when `detach` names the pid file and
    /// the runtime can (runc, crun, youki; runsc runs in the foreground: its own sandbox and gofer
    /// processes stay anyway, and its exit status is the container's only then).
    pub fn run_argv(&self, bundle: &Path, id: &str, detach: Option<&Path>) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        if let Flavor::Gvisor {
            hide_net_sysctls: Some((unshare, proc_dir)),
            ..
        } = &self.flavor
        {
            v.extend(
                [
                    unshare.as_os_str(),
                    OsStr::new("--mount"),
                    OsStr::new("--propagation"),
                    OsStr::new("private"),
                    OsStr::new("/bin/sh"),
                    OsStr::new("-c"),
                    OsStr::new(HIDE_NET_SYSCTLS),
                    OsStr::new("airlock-gvisor"),
                    proc_dir.as_os_str(),
                ]
                .map(OsString::from),
            );
        }
        v.push(self.path.clone().into());
        v.extend(self.global_args());
        v.push("run".into());
        if let (Some(pid_file), Flavor::Oci) = (detach, &self.flavor) {
            v.extend(["--detach".into(), "--pid-file".into(), pid_file.into()]);
        }
        v.extend([
            "--bundle".into(),
            bundle.into(),
            self.container_id(id).into(),
        ]);
        v
    }

    /// What `ocispec` needs to know of this runtime.
    pub fn variant(&self) -> Variant {
        match &self.flavor {
            Flavor::Oci => Variant::Oci,
            Flavor::Gvisor {
                hide_net_sysctls, ..
            } => Variant::Gvisor {
                unshare: hide_net_sysctls.as_ref().map(|(u, _)| u.clone()),
            },
        }
    }

    /// Container ids with state in this runtime's directory.
    pub fn state_ids(&self) -> Vec<String> {
        state_ids(&self.root)
    }

    pub(super) fn has_state(&self, id: &str) -> bool {
        self.state_ids().iter().any(|i| i == id)
    }

    /// Removes what `delete` leaves of a deleted container: runsc keeps a lock file per container
    /// (`<id>_sandbox:<id>.lock`) that nothing uses once its state file is gone.
    pub(super) fn clear_state(&self, id: &str) {
        let prefix = format!("{}_sandbox:", self.container_id(id));
        if let Ok(d) = std::fs::read_dir(&self.root) {
            for e in d.flatten() {
                let n = e.file_name();
                let n = n.to_string_lossy();
                if n.starts_with(&prefix) && n.ends_with(".lock") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// The description beside the state directory (`.runtime-runsc` → `.runtime-runsc.json`).
    pub(super) fn sidecar(root: &Path) -> PathBuf {
        let mut s = root.as_os_str().to_owned();
        s.push(".json");
        PathBuf::from(s)
    }

    pub(super) fn save(&self) -> std::io::Result<()> {
        let p = Runtime::sidecar(&self.root);
        let tmp = p.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("serialisable"))?;
        std::fs::rename(&tmp, &p)
    }

    pub(super) fn load(path: &Path) -> Option<Runtime> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

/// Sandbox ids in a runtime state directory: runc, crun and youki keep a directory per
/// container, runsc a `<id>.airlock_sandbox:<id>.airlock.state` file (and `.lock`).
pub(super) fn state_ids(root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .map(|n| match n.split_once("_sandbox:") {
                    Some((cid, _)) => cid
                        .strip_suffix(GVISOR_ID_SUFFIX)
                        .unwrap_or(cid)
                        .to_string(),
                    None => n,
                })
                .filter(|n| check_id(n).is_ok())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids.dedup();
    ids
}

/// The runtime state directories under `root`: `.runtime` and `.runtime-*`.
pub(super) fn state_roots(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    (n == ".runtime" || n.starts_with(".runtime-"))
                        && e.file_type().is_ok_and(|t| t.is_dir())
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
