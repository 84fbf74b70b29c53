//! A container sandbox's making, before anything runs in it: its address lease, its
//! directory and files (the JIT config's place, resolv.conf, the log), the overlay over the
//! image's user-namespace-shifted rootfs, and the OCI bundle the runtime is given.
//!
//! Nothing here starts the runner or any process of the job (a runtime asked for the first
//! time is probed by `runtime_for`, as everywhere); a failure part-way leaves only what
//! `destroy` sweeps by id.

use super::*;

impl ContainerBackend {
    /// Takes the lowest free /30 of the host's sandbox subnet (leases shared by every backend).
    pub(super) fn allocate(&self, id: &str) -> Result<net::Link, SandboxError> {
        let key = self.link_key(id);
        let index = self
            .cfg
            .net
            .acquire(&key)
            .map_err(|e| SandboxError::Setup {
                id: id.into(),
                detail: e.to_string(),
            })?;
        Ok(self.cfg.net.subnet().link(&key, index))
    }

    /// The sandbox's resolv.conf: its gateway (airlock's resolver, through the redirect) when
    /// there is one, else the configured or the host's name servers.
    pub(super) fn resolv_conf(&self, link: &net::Link) -> String {
        let mut servers = self.cfg.dns.clone();
        if self.cfg.egress.is_some() {
            servers = vec![link.host_ip];
        } else if servers.is_empty() {
            servers = host_name_servers();
        }
        let mut out = String::from("# written by airlock for this sandbox\n");
        for s in servers {
            out.push_str(&format!("nameserver {s}\n"));
        }
        out
    }

    /// What a job's environment gets beyond the image's: with an upstream proxy (and airlock's
    /// egress on), `http_proxy` and friends at the gateway, where airlock's proxy takes them.
    pub(super) fn job_env(&self, spec: &SandboxSpec, link: &net::Link) -> Vec<String> {
        match (&self.cfg.egress, &spec.egress.proxy) {
            (Some(_), Some(_)) => airlock_core::egress::UpstreamProxy::job_env(link.host_ip),
            _ => Vec::new(),
        }
    }

    pub(super) async fn create_inner(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        let id = spec.id.as_str();
        let BackendSpec::Container(c) = &spec.backend else {
            return Err(SandboxError::Setup {
                id: id.into(),
                detail: format!(
                    "a {} spec given to the container backend",
                    spec.backend.kind()
                ),
            });
        };
        let rootfs = &c.rootfs;
        if !rootfs.join("bin/sh").exists() {
            return Err(SandboxError::Setup {
                id: id.into(),
                detail: format!("{} has no /bin/sh: not a runner image", rootfs.display()),
            });
        }
        let runtime =
            self.runtime_for(c.runtime.as_deref())
                .await
                .map_err(|e| SandboxError::Setup {
                    id: id.into(),
                    detail: e.to_string(),
                })?;
        let (this, spec2, c2) = (self.clone(), spec.clone(), c.clone());
        crate::blocking(id, move || this.create_files(&spec2, &c2, &runtime)).await
    }

    /// `create`'s synchronous part: directories, the overlay, files, the address, the OCI spec.
    pub(super) fn create_files(
        &self,
        spec: &SandboxSpec,
        c: &ContainerImage,
        runtime: &Runtime,
    ) -> Result<(), SandboxError> {
        let id = spec.id.as_str();
        let rootfs = &c.rootfs;
        let dir = self.dir(id);
        std::fs::create_dir(&dir).map_err(|source| SandboxError::Create {
            id: id.into(),
            path: dir.clone(),
            source,
        })?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| setup(id, "chmod", e))?;
        std::fs::write(
            dir.join("runtime"),
            serde_json::to_vec_pretty(runtime).expect("serialisable"),
        )
        .map_err(|e| setup(id, "runtime", e))?;
        std::fs::write(dir.join("image"), format!("{}\n", c.image))
            .map_err(|e| setup(id, "image", e))?;
        // With a disk cap the overlay's writable layers live on a filesystem of that size.
        let layers = match c.disk_gib {
            Some(gib) => disk::make(&dir, gib).map_err(|detail| SandboxError::Setup {
                id: id.into(),
                detail,
            })?,
            None => dir.clone(),
        };
        let (upper, work, merged, bundle) = (
            layers.join("upper"),
            layers.join("ovl-work"),
            dir.join("rootfs"),
            dir.join("bundle"),
        );
        for d in [&upper, &work, &merged, &bundle] {
            std::fs::create_dir(d).map_err(|e| setup(id, "mkdir", e))?;
        }
        // The overlay's root takes the upper directory's owner and mode: root inside, 0755.
        let base = self.cfg.uid_base;
        chown(&upper, base, base).map_err(|e| setup(id, "chown upper", e))?;
        std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| setup(id, "chmod upper", e))?;
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            rootfs.display(),
            upper.display(),
            work.display()
        );
        // nodev, except under gVisor: its gofer remounts the root read-only inside the user
        // namespace, where a flag it does not repeat is locked and the remount refused; and a
        // device node in the overlay is nothing to gVisor's job (the Sentry has its own devices,
        // the gofer opens only files, directories and links, and the runner cannot mknod).
        let flags = if runtime.is_gvisor() {
            nix::mount::MsFlags::empty()
        } else {
            nix::mount::MsFlags::MS_NODEV
        };
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            flags,
            Some(opts.as_str()),
        )
        .map_err(|e| SandboxError::Setup {
            id: id.into(),
            detail: format!("overlay mount on {}: {e}", merged.display()),
        })?;
        let hostname = format!("airlock-{}", &id[..id.len().min(20)]);
        std::fs::write(
            dir.join("hosts"),
            format!("127.0.0.1 localhost\n127.0.1.1 {hostname}\n"),
        )
        .map_err(|e| setup(id, "hosts", e))?;
        // The jit file exists from the start (empty) so the mount has a source; `start` fills it.
        let jit = dir.join("jit");
        write_owned(&jit, b"", base + RUNNER_UID).map_err(|e| setup(id, "jit", e))?;
        let link = self.allocate(id)?;
        // A link left by an earlier sandbox of this id (crash) would make the hook fail.
        net::delete(&link.host_if).map_err(|e| SandboxError::Setup {
            id: id.into(),
            detail: e.to_string(),
        })?;
        std::fs::write(dir.join("resolv.conf"), self.resolv_conf(&link))
            .map_err(|e| setup(id, "resolv.conf", e))?;
        // The policy is in the host's table before the link exists (the runtime's hook makes
        // it), so no packet of the sandbox ever goes out without it.
        if let Some(e) = &self.cfg.egress {
            e.attach(airlock_egress::Session {
                id: id.to_string(),
                owner: self.link_key(id),
                link: link.host_if.clone(),
                addr: link.sandbox_ip,
                pool: Some(spec.pool.clone()),
                policy: spec.egress.clone(),
                since_ms: airlock_egress::now_ms(),
            })
            .map_err(|e| SandboxError::Setup {
                id: id.into(),
                detail: e.to_string(),
            })?;
        }
        let mut limits = c.limits.clone();
        if runtime.is_gvisor() && limits.io_weight.is_some() && !cgroup_v1_has("blkio/blkio.weight")
        {
            // runsc writes only `blkio.weight` (runc falls back to `blkio.bfq.weight`), and
            // refuses the sandbox where there is none (kernels without CFQ).
            tracing::warn!(sandbox = %id, "io_weight ignored under runsc: this host's blkio has no blkio.weight");
            limits.io_weight = None;
        } else if let (Some(w), false) = (limits.io_weight, cgroup_v1_has("blkio/blkio.weight")) {
            // crun writes only `blkio.weight` and fails without it: airlock writes BFQ's weight.
            if !cgroup::set_v1_bfq_weight(&self.cgroup_name(id), w).map_err(|detail| {
                SandboxError::Setup {
                    id: id.into(),
                    detail,
                }
            })? {
                tracing::warn!(sandbox = %id, "io_weight ignored: this host's blkio has no weight file (neither CFQ nor BFQ)");
            }
            limits.io_weight = None;
        }
        let oci = ocispec::build(&ContainerSpec {
            id,
            hostname: &hostname,
            rootfs: &merged,
            runner: &spec.runner_command,
            uid_base: base,
            limits: &limits,
            cgroup: format!("/airlock/{}", self.cgroup_name(id)),
            jit_file: &jit,
            resolv_conf: &dir.join("resolv.conf"),
            hosts: &dir.join("hosts"),
            net_hook: net::hook_args(&link, &self.link_key(id)).map_err(|e| {
                SandboxError::Setup {
                    id: id.into(),
                    detail: e.to_string(),
                }
            })?,
            variant: runtime.variant(),
            env: self.job_env(spec, &link),
        })
        .map_err(|e| SandboxError::Setup {
            id: id.into(),
            detail: format!("OCI spec: {e}"),
        })?;
        let config = bundle.join("config.json");
        oci.save(&config).map_err(|e| SandboxError::Setup {
            id: id.into(),
            detail: format!("writing {}: {e}", config.display()),
        })?;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| setup(id, "chmod config.json", e))?;
        Ok(())
    }
}

/// The host's IPv4 name servers that a sandbox can reach (not loopback, not unspecified).
pub(crate) fn host_name_servers() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|s| s.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .collect()
}

/// Whether a v1 hierarchy has `file` at its root (`blkio/blkio.weight`); true on cgroup v2,
/// where runtimes write v2 files.
pub(super) fn cgroup_v1_has(file: &str) -> bool {
    let root = Path::new("/sys/fs/cgroup");
    root.join("cgroup.controllers").exists() || root.join(file).exists()
}

pub(super) fn setup(id: &str, what: &str, e: std::io::Error) -> SandboxError {
    SandboxError::Setup {
        id: id.into(),
        detail: format!("{what}: {e}"),
    }
}

pub(super) fn chown(p: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    nix::unistd::chown(
        p,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(std::io::Error::from)
}

/// Writes a file readable only by `uid` (mode 0400), created with no window in which another
/// user could open it.
pub(super) fn write_owned(p: &Path, data: &[u8], uid: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(p);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(p)?;
    f.write_all(data)?;
    f.sync_all()?;
    chown(p, uid, uid)
}
