//! The container backend's probe: a tiny container run the way a sandbox's is, under each
//! runtime asked for (for runsc also which platform runs here and whether it needs
//! `HIDE_NET_SYSCTLS`).

use super::*;

/// Probes the runtime at `path` (asked for as `name`) with state under `root`: what it is (gVisor's
/// runsc says so in `--version`), then a tiny container run as a sandbox would be; for runsc
/// also whether it needs `HIDE_NET_SYSCTLS`, and which platform runs here.
pub(super) async fn probe_one(
    name: &str,
    path: &Path,
    root: PathBuf,
    cfg: &ContainerConfig,
) -> Result<Runtime, String> {
    std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    let version = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(path)
            .arg("--version")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "`--version` did not answer in 10 s".to_string())?
    .map_err(|e| format!("cannot run it: {e}"))?;
    let version = String::from_utf8_lossy(&version.stdout);
    let version = version
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut rt = Runtime {
        name: name.to_string(),
        path: path.to_path_buf(),
        root,
        flavor: Flavor::Oci,
        notes: Vec::new(),
    };
    if !version.starts_with("runsc") {
        probe_runtime(&rt, cfg, Duration::from_secs(20)).await?;
        return Ok(rt);
    }
    // gVisor. ptrace first: it runs wherever runsc does, so it settles the network question.
    rt.flavor = Flavor::Gvisor {
        platform: "ptrace".into(),
        hide_net_sysctls: None,
    };
    if let Err(first) = probe_runtime(&rt, cfg, Duration::from_secs(20)).await {
        if !first.contains("root network namespace") {
            return Err(first);
        }
        let unshare = find_in_path("unshare")
            .ok_or_else(|| format!("{first}; working around it needs unshare (util-linux)"))?;
        let proc_dir = cfg.root.join(".gvisor-proc");
        std::fs::create_dir_all(&proc_dir)
            .map_err(|e| format!("creating {}: {e}", proc_dir.display()))?;
        rt.flavor = Flavor::Gvisor {
            platform: "ptrace".into(),
            hide_net_sysctls: Some((unshare, proc_dir)),
        };
        probe_runtime(&rt, cfg, Duration::from_secs(20))
            .await
            .map_err(|e| format!("{e} (and without /proc/sys/net hidden: {first})"))?;
        rt.notes.push(format!(
            "{version} takes every network namespace for the host's on this kernel \
             (net.core.rmem_default exists in each): it runs with /proc/sys/net hidden"
        ));
    }
    if cfg.kvm_probe.is_zero() || !Path::new("/dev/kvm").exists() {
        rt.notes
            .push("platform ptrace: no /dev/kvm (or the KVM probe is off)".into());
        return Ok(rt);
    }
    let mut kvm = rt.clone();
    if let Flavor::Gvisor { platform, .. } = &mut kvm.flavor {
        *platform = "kvm".into();
    }
    match probe_runtime(&kvm, cfg, cfg.kvm_probe).await {
        Ok(()) => {
            kvm.notes.push("platform kvm".into());
            Ok(kvm)
        }
        Err(e) => {
            rt.notes.push(format!(
                "platform ptrace: the kvm platform does not run here ({e})"
            ));
            Ok(rt)
        }
    }
}

/// Runs a tiny container with a sandbox's namespaces and id mapping; the host's `/usr` is its
/// root filesystem's, read-only. For gVisor also the sandbox's seccomp filter and a
/// `createRuntime` hook (as the network hook runs), which runsc must accept.
async fn probe_runtime(rt: &Runtime, cfg: &ContainerConfig, limit: Duration) -> Result<(), String> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let t = tempfile::Builder::new()
        .prefix(".probe-")
        .tempdir_in(&cfg.root)
        .map_err(|e| format!("temporary directory: {e}"))?;
    let rootfs = t.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("usr")).map_err(|e| e.to_string())?;
    for d in ["proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).map_err(|e| e.to_string())?;
    }
    for (l, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        let _ = std::os::unix::fs::symlink(target, rootfs.join(l));
    }
    let id = format!(
        "probe-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0},
                    "args": ["/bin/sh", "-c", "exit 0"], "cwd": "/",
                    "env": ["PATH=/usr/bin:/bin"], "noNewPrivileges": true},
        "root": {"path": rootfs, "readonly": true},
        "hostname": "probe",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]},
        ],
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": cfg.uid_base, "size": ID_RANGE}],
            "gidMappings": [{"containerID": 0, "hostID": cfg.uid_base, "size": ID_RANGE}],
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}, {"type": "user"}],
            "cgroupsPath": format!("/airlock/{id}"),
            "resources": {"pids": {"limit": 64}},
        }
    });
    if let Variant::Gvisor { unshare } = rt.variant() {
        spec["linux"]["seccomp"] =
            serde_json::to_value(ocispec::seccomp_for(&rt.variant())).map_err(|e| e.to_string())?;
        let hook = vec!["/bin/sh".to_string(), "-c".into(), "cat > /dev/null".into()];
        spec["hooks"] = serde_json::json!({"createRuntime": [match &unshare {
            Some(u) => serde_json::json!({"path": u, "args": ocispec::unhide_hook(u, &hook), "timeout": 20}),
            None => serde_json::json!({"path": "/bin/sh", "args": hook, "timeout": 20}),
        }]});
    }
    std::fs::write(t.path().join("config.json"), spec.to_string()).map_err(|e| e.to_string())?;
    let argv = rt.run_argv(t.path(), &id, None);
    let cid = rt.container_id(&id);
    let out = tokio::time::timeout(
        limit,
        tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await;
    if out.is_err() {
        let _ = rt
            .command()
            .args(["kill", "--all", &cid, "KILL"])
            .output()
            .await;
    }
    let _ = rt
        .command()
        .args(["delete", "--force", &cid])
        .output()
        .await;
    rt.clear_state(&id);
    cgroup::kill_all(&id);
    let _ = cgroup::remove(&id);
    match out {
        Err(_) => Err(format!(
            "a probe container did not finish in {} s",
            limit.as_secs_f32()
        )),
        Ok(Err(e)) => Err(format!("cannot run it: {e}")),
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(o)) => Err(format!(
            "a probe container failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
    }
}
