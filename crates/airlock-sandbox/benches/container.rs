//! Container sandbox benchmarks, as root (`cargo bench -p airlock-sandbox --bench container`):
//! sandbox start and teardown beside a bare `runc run` (or crun) of the same rootfs with the same
//! namespaces in the same run, host memory per idle sandbox with 50 running, and an image build
//! beside a bare mmdebstrap. Sizes: AIRLOCK_BENCH_SANDBOXES (default 100), AIRLOCK_BENCH_IDLE
//! (default 50), AIRLOCK_BENCH_IMAGE=0 to skip the image build.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use airlock_sandbox::container::DEFAULT_UID_BASE;
use airlock_sandbox::{Backend, Limits, SandboxStatus, Secret};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn env_n(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn mem_available_kib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

/// A bundle for the bare runtime: the same shifted rootfs read-only, the same namespaces and id
/// mapping, the runner's uid, running `/bin/sh -c true`.
fn bare_bundle(dir: &Path, rootfs: &Path) {
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 1001, "gid": 1001},
                    "args": ["/bin/sh", "-c", "true"], "cwd": "/",
                    "env": ["PATH=/usr/bin:/bin"], "noNewPrivileges": true},
        "root": {"path": rootfs, "readonly": true},
        "hostname": "bare",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
        ],
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": DEFAULT_UID_BASE, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": DEFAULT_UID_BASE, "size": 65536}],
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}, {"type": "user"}],
            "cgroupsPath": "/airlock-bench/bare",
            "resources": {"pids": {"limit": 512}, "memory": {"limit": 268435456, "swap": 268435456}},
        }
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), spec.to_string()).unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    common::require_root();
    let n = env_n("AIRLOCK_BENCH_SANDBOXES", 100);
    let idle = env_n("AIRLOCK_BENCH_IDLE", 50);
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let b = common::backend(&root, 40).await;
    let (runtime, runtime_name) = b.runtime();
    let runtime = runtime.to_path_buf();
    let runtime_name = runtime_name.to_string();
    let m = common::shell_image();
    let rootfs = common::images()
        .shifted_rootfs(&m, DEFAULT_UID_BASE)
        .unwrap();
    let bundle = t.path().join("bare");
    bare_bundle(&bundle, &rootfs);
    let limits = Limits {
        memory_mib: Some(256),
        pids_max: Some(512),
        ..Default::default()
    };
    println!(
        "runtime: {runtime_name} ({}), {n} sandboxes",
        runtime.display()
    );

    if std::env::var("AIRLOCK_BENCH_KEEP").is_ok() {
        let t = t.keep();
        let s = common::spec("keep", &m, limits.clone());
        b.create(&s).await.unwrap();
        println!("kept {}", t.join("containers/keep").display());
        return;
    }
    // Warm-up: page cache, the runtime binary, the first overlay.
    for i in 0..3 {
        let (code, _) = common::run(&b, &root, &format!("warm{i}"), limits.clone(), "exit 0").await;
        assert_eq!(code, Some(0));
    }

    let (mut bare, mut ready, mut cycle, mut teardown) = (vec![], vec![], vec![], vec![]);
    let mut created = vec![];
    for i in 0..n {
        // Bare runtime: create + start + run `true` + delete, one process.
        let t0 = Instant::now();
        let st = std::process::Command::new(&runtime)
            .arg("--root")
            .arg(t.path().join("bare-root"))
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("bare{i}"))
            .stdin(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        bare.push(t0.elapsed().as_secs_f64() * 1e3);

        // airlock: create (overlay, link, spec) + start, until the runner has run inside
        // (its first act writes a file into the private layer), then until it is gone.
        let id = format!("b{i}");
        let s = common::spec(&id, &m, limits.clone());
        let marker = root.join(&id).join("upper/home/runner/ready");
        let t0 = Instant::now();
        b.create(&s).await.unwrap();
        created.push(t0.elapsed().as_secs_f64() * 1e3);
        b.start(&s, &Secret::new(": > /home/runner/ready; exit 0".into()))
            .await
            .unwrap();
        while !marker.exists() {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        ready.push(t0.elapsed().as_secs_f64() * 1e3);
        loop {
            if let SandboxStatus::Exited(_) = b.status(&id).await.unwrap() {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let t1 = Instant::now();
        b.destroy(&id).await.unwrap();
        teardown.push(t1.elapsed().as_secs_f64() * 1e3);
        cycle.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let left = airlock_sandbox::container::remnants(&root);
    assert!(left.is_empty(), "{left:?}");
    let (bp50, bp95) = (pct(&mut bare, 0.5), pct(&mut bare, 0.95));
    let (rp50, rp95) = (pct(&mut ready, 0.5), pct(&mut ready, 0.95));
    let (cp50, cp95) = (pct(&mut cycle, 0.5), pct(&mut cycle, 0.95));
    let (tp50, tp95) = (pct(&mut teardown, 0.5), pct(&mut teardown, 0.95));
    println!(
        "bare `{runtime_name} run` (create+start+true+delete): p50 {bp50:.1} ms  p95 {bp95:.1} ms"
    );
    println!("airlock ready (create -> runner ran inside):        p50 {rp50:.1} ms  p95 {rp95:.1} ms  ({:.2}x bare p50)", rp50 / bp50);
    let (kp50, kp95) = (pct(&mut created, 0.5), pct(&mut created, 0.95));
    println!(
        "  of which create (overlay, spec, files):           p50 {kp50:.1} ms  p95 {kp95:.1} ms"
    );
    println!(
        "airlock teardown (destroy):                         p50 {tp50:.1} ms  p95 {tp95:.1} ms"
    );
    println!("airlock full cycle (create..destroy):               p50 {cp50:.1} ms  p95 {cp95:.1} ms  ({:.2}x bare p50)", cp50 / bp50);

    // Memory per idle sandbox.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = mem_available_kib();
    for i in 0..idle {
        let s = common::spec(&format!("idle{i}"), &m, limits.clone());
        b.create(&s).await.unwrap();
        b.start(&s, &Secret::new("exec sleep 600".into()))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = mem_available_kib();
    let mut cg_total = 0f64;
    for i in 0..idle {
        let tag_dirs = std::fs::read_dir("/sys/fs/cgroup/memory/airlock")
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default();
        for d in tag_dirs {
            if d.to_string_lossy().ends_with(&format!("-idle{i}")) {
                let u: f64 = std::fs::read_to_string(d.join("memory.usage_in_bytes"))
                    .unwrap_or_default()
                    .trim()
                    .parse()
                    .unwrap_or(0.0);
                cg_total += u;
            }
        }
    }
    for i in 0..idle {
        b.destroy(&format!("idle{i}")).await.unwrap();
    }
    println!(
        "memory with {idle} idle sandboxes: host MemAvailable -{:.1} MiB ({:.2} MiB each); their cgroups charge {:.2} MiB each",
        (before - after) / 1024.0,
        (before - after) / 1024.0 / idle as f64,
        cg_total / (1 << 20) as f64 / idle as f64
    );

    if env_n("AIRLOCK_BENCH_IMAGE", 1) == 1 {
        let store = airlock_image::ImageStore::new(t.path().join("images"));
        let runner = t.path().join("runner.sh");
        std::fs::write(&runner, "#!/bin/sh\nexit 0\n").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&runner, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let t0 = Instant::now();
        let st = std::process::Command::new("mmdebstrap")
            .args(["--mode=root", "--variant=minbase", "--quiet", "bookworm"])
            .arg(t.path().join("bare-rootfs"))
            .stdin(std::fs::File::open(debian_sources()).unwrap())
            .status()
            .unwrap();
        assert!(st.success());
        let bare_build = t0.elapsed().as_secs_f64();
        let im = store
            .build(
                &airlock_image::BuildSpec {
                    name: "bench".into(),
                    suite: "bookworm".into(),
                    packages: vec![],
                    runner: airlock_image::RunnerSource::Standin(runner),
                    mirror: None,
                    vm: None,
                },
                &mut |_| {},
            )
            .unwrap();
        let t1 = Instant::now();
        store.shifted_rootfs(&im, DEFAULT_UID_BASE).unwrap();
        let shift = t1.elapsed().as_secs_f64();
        println!(
            "image build (minbase + runner, manifest, digest): {:.1} s, {:.0} MiB, {} files; bare mmdebstrap minbase {bare_build:.1} s ({:.2}x); first-use uid shift {shift:.1} s",
            im.build_seconds,
            im.size_bytes as f64 / (1 << 20) as f64,
            im.files,
            im.build_seconds / bare_build
        );
    }
}

/// The host's deb822 sources, for the bare mmdebstrap (the image builder reads them itself).
fn debian_sources() -> std::path::PathBuf {
    let d = Path::new("/etc/apt/sources.list.d/debian.sources");
    if d.exists() {
        d.to_path_buf()
    } else {
        Path::new("/etc/apt/sources.list").to_path_buf()
    }
}
