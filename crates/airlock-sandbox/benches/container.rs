//! Container sandbox benchmarks, as root (`cargo bench -p airlock-sandbox --bench container`):
//! sandbox start and teardown beside a bare `crun run` (or runc, whichever the probe picks) of the
//! same rootfs with the same namespaces in the same run, host memory per idle sandbox (beyond what
//! its cgroup charges: the runner) with 50 running (AIRLOCK_BENCH_IDLE=1000 for the density
//! figure) and the backend's list with them alive, and an image build
//! beside a bare mmdebstrap. The same sandbox measurements then run under gVisor's runsc (beside a
//! bare `runsc run` of the same bundle), and the runsc/default ratios are printed. Sizes:
//! AIRLOCK_BENCH_SANDBOXES (default 100), AIRLOCK_BENCH_IDLE (default 50), AIRLOCK_BENCH_IMAGE=0
//! to skip the image build, AIRLOCK_BENCH_RUNSC=0 to skip runsc. The disk cap's cost: sandbox
//! ready times with a 10 GiB cap (a sparse ext4 on a loop device as the overlay's upper layer,
//! as every daemon's container pool has by default) and without one (a directory), interleaved,
//! AIRLOCK_BENCH_DISK (default 60) of each; AIRLOCK_BENCH_DISK_ONLY=1 runs only that.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use airlock_image::Manifest;
use airlock_sandbox::container::{ContainerBackend, DEFAULT_UID_BASE};
use airlock_sandbox::{Backend, Limits, SandboxStatus, Secret};
use common::Rt;

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

/// One runtime's medians and 95th percentiles (ms), and idle memory (MiB per sandbox).
#[derive(Debug, Clone, Copy)]
struct Measured {
    bare: (f64, f64),
    ready: (f64, f64),
    create: (f64, f64),
    teardown: (f64, f64),
    cycle: (f64, f64),
    mem_host: f64,
    mem_cgroup: f64,
}

/// Ready time (create -> the runner ran inside) and teardown of one sandbox with `cap` GiB of
/// disk, or none.
async fn ready_with_cap(
    b: &ContainerBackend,
    root: &Path,
    m: &Manifest,
    id: &str,
    cap: Option<u32>,
) -> (f64, f64) {
    let mut s = common::spec(id, m, Limits::default());
    if let airlock_sandbox::BackendSpec::Container(c) = &mut s.backend {
        c.disk_gib = cap;
    }
    let upper = if cap.is_some() {
        "layer/upper"
    } else {
        "upper"
    };
    let marker = root.join(id).join(upper).join("home/runner/ready");
    let t0 = Instant::now();
    b.create(&s).await.unwrap();
    b.start(&s, &Secret::new(": > /home/runner/ready; exit 0".into()))
        .await
        .unwrap();
    while !marker.exists() {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let ready = t0.elapsed().as_secs_f64() * 1e3;
    loop {
        if let SandboxStatus::Exited(_) = b.status(id).await.unwrap() {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let t1 = Instant::now();
    b.destroy(id).await.unwrap();
    (ready, t1.elapsed().as_secs_f64() * 1e3)
}

/// The disk cap's cost to start and teardown: capped and uncapped sandboxes interleaved.
async fn disk_cap_cost(b: &ContainerBackend, root: &Path, m: &Manifest, n: usize) {
    let (mut off, mut on, mut off_down, mut on_down) = (vec![], vec![], vec![], vec![]);
    for i in 0..3 {
        ready_with_cap(b, root, m, &format!("dwarm{i}"), Some(10)).await;
    }
    for i in 0..n {
        let (r, d) = ready_with_cap(b, root, m, &format!("doff{i}"), None).await;
        off.push(r);
        off_down.push(d);
        let (r, d) = ready_with_cap(b, root, m, &format!("don{i}"), Some(10)).await;
        on.push(r);
        on_down.push(d);
    }
    let left = airlock_sandbox::container::remnants(root);
    assert!(left.is_empty(), "{left:?}");
    let p = |v: &mut Vec<f64>| (common::pct(v, 0.5), common::pct(v, 0.95));
    let (off, on, off_down, on_down) = (p(&mut off), p(&mut on), p(&mut off_down), p(&mut on_down));
    println!("== disk cap, {n} sandboxes each, interleaved (default runtime)");
    println!(
        "ready, no cap:        p50 {:.1} ms  p95 {:.1} ms",
        off.0, off.1
    );
    println!(
        "ready, 10 GiB cap:    p50 {:.1} ms  p95 {:.1} ms  (+{:.1} ms p50, {:.2}x)",
        on.0,
        on.1,
        on.0 - off.0,
        on.0 / off.0
    );
    println!(
        "teardown, no cap:     p50 {:.1} ms  p95 {:.1} ms",
        off_down.0, off_down.1
    );
    println!(
        "teardown, 10 GiB cap: p50 {:.1} ms  p95 {:.1} ms  (+{:.1} ms p50)",
        on_down.0,
        on_down.1,
        on_down.0 - off_down.0
    );
}

/// What both runtimes' runs share.
struct Setup<'a> {
    root: &'a Path,
    t: &'a Path,
    m: &'a Manifest,
    bundle: &'a Path,
    n: usize,
    idle: usize,
}

async fn measure(b: &ContainerBackend, rt: Rt, setup: &Setup<'_>) -> Measured {
    let Setup {
        root,
        t,
        m,
        bundle,
        n,
        idle,
    } = *setup;
    let runtime = b.runtime_for(rt.name()).await.unwrap();
    let label = format!("{rt:?}").to_lowercase();
    let limits = Limits {
        memory_mib: Some(256),
        pids_max: Some(512),
        ..Default::default()
    };
    println!(
        "== {} ({}, flags {:?}), {n} sandboxes",
        runtime.name,
        runtime.path.display(),
        runtime.global_args()[2..].to_vec()
    );
    for note in &runtime.notes {
        println!("   probe: {note}");
    }
    // Warm-up: page cache, the runtime binary, the first overlay.
    for i in 0..3 {
        let (code, _) = common::run_on(
            b,
            root,
            &format!("warm{label}{i}"),
            limits.clone(),
            "exit 0",
            rt,
        )
        .await;
        assert_eq!(code, Some(0));
    }

    let (mut bare, mut ready, mut cycle, mut teardown) = (vec![], vec![], vec![], vec![]);
    let mut created = vec![];
    let bare_root = t.join(format!("bare-root-{label}"));
    let mut bare_rt = (*runtime).clone();
    bare_rt.root = bare_root.clone();
    for i in 0..n {
        // Bare runtime: create + start + run `true` + delete, one process (with the same
        // wrapper and flags airlock gives it).
        let argv = bare_rt.run_argv(bundle, &format!("bare{i}"), None);
        let t0 = Instant::now();
        let st = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        bare.push(t0.elapsed().as_secs_f64() * 1e3);

        // airlock: create (overlay, link, spec) + start, until the runner has run inside
        // (its first act writes a file into the private layer), then until it is gone.
        let id = format!("b{label}{i}");
        let s = common::spec_on(&id, m, limits.clone(), rt);
        let marker = root.join(&id).join("layer/upper/home/runner/ready");
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
    let left = airlock_sandbox::container::remnants(root);
    assert!(left.is_empty(), "{left:?}");
    let both = |v: &mut Vec<f64>| (common::pct(v, 0.5), common::pct(v, 0.95));
    let (bare, ready, create, teardown, cycle) = (
        both(&mut bare),
        both(&mut ready),
        both(&mut created),
        both(&mut teardown),
        both(&mut cycle),
    );
    let name = &runtime.name;
    println!(
        "bare `{name} run` (create+start+true+delete): p50 {:.1} ms  p95 {:.1} ms",
        bare.0, bare.1
    );
    println!(
        "airlock ready (create -> runner ran inside):        p50 {:.1} ms  p95 {:.1} ms  ({:.2}x bare p50)",
        ready.0, ready.1, ready.0 / bare.0
    );
    println!(
        "  of which create (overlay, spec, files):           p50 {:.1} ms  p95 {:.1} ms",
        create.0, create.1
    );
    println!(
        "airlock teardown (destroy):                         p50 {:.1} ms  p95 {:.1} ms",
        teardown.0, teardown.1
    );
    println!(
        "airlock full cycle (create..destroy):               p50 {:.1} ms  p95 {:.1} ms  ({:.2}x bare p50)",
        cycle.0, cycle.1, cycle.0 / bare.0
    );

    // Memory per idle sandbox.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = mem_available_kib();
    for i in 0..idle {
        let s = common::spec_on(&format!("idle{label}{i}"), m, limits.clone(), rt);
        b.create(&s).await.unwrap();
        b.start(&s, &Secret::new("exec sleep 600".into()))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = mem_available_kib();
    // What a daemon pass asks of the backend with them all alive: its list.
    let mut lists = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let l = b.list().await.unwrap();
        lists.push(t0.elapsed().as_secs_f64() * 1e3);
        assert!(l.len() >= idle);
    }
    // The first looks across the host for remnants too (links, leases, cgroups; every
    // `HOST_SCAN_EVERY`), the rest read the sandboxes' directories and the runtime's state.
    let scan_ms = lists.remove(0);
    let list_ms = common::pct(&mut lists, 0.5);
    let mut cg_total = 0f64;
    for i in 0..idle {
        let tag_dirs = std::fs::read_dir("/sys/fs/cgroup/memory/airlock")
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default();
        for d in tag_dirs {
            if d.to_string_lossy().ends_with(&format!("-idle{label}{i}")) {
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
        b.destroy(&format!("idle{label}{i}")).await.unwrap();
    }
    let mem_host = (before - after) / 1024.0 / idle as f64;
    let mem_cgroup = cg_total / (1 << 20) as f64 / idle as f64;
    println!(
        "memory with {idle} idle sandboxes: host MemAvailable -{:.1} MiB ({mem_host:.2} MiB each); their cgroups charge {mem_cgroup:.2} MiB each (the runner and its page cache); beyond the runner {:.2} MiB each",
        (before - after) / 1024.0,
        mem_host - mem_cgroup,
    );
    println!("the backend's list with {idle} sandboxes alive (a pass's view): p50 {list_ms:.1} ms; with the host-wide scan for remnants (every 10 s) {scan_ms:.1} ms");
    Measured {
        bare,
        ready,
        create,
        teardown,
        cycle,
        mem_host,
        mem_cgroup,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    common::require_root();
    let n = common::env_n("AIRLOCK_BENCH_SANDBOXES", 100);
    let idle = common::env_n("AIRLOCK_BENCH_IDLE", 50);
    let runsc = common::env_n("AIRLOCK_BENCH_RUNSC", 1) == 1;
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    // runsc is probed as a pool naming it would have it (KVM given its probe, ptrace otherwise).
    let b = if runsc {
        common::backend_with(
            &root,
            40,
            Rt::Runsc,
            airlock_sandbox::container::DEFAULT_KVM_PROBE,
        )
        .await
    } else {
        common::backend(&root, 40).await
    };
    let m = common::shell_image();
    let rootfs = common::images()
        .shifted_rootfs(&m, DEFAULT_UID_BASE)
        .unwrap();
    let bundle = t.path().join("bare");
    bare_bundle(&bundle, &rootfs);

    if std::env::var("AIRLOCK_BENCH_KEEP").is_ok() {
        let t = t.keep();
        let limits = Limits::default();
        let s = common::spec("keep", &m, limits);
        b.create(&s).await.unwrap();
        println!("kept {}", t.join("containers/keep").display());
        return;
    }
    let disk_n = common::env_n("AIRLOCK_BENCH_DISK", 60);
    if common::env_n("AIRLOCK_BENCH_DISK_ONLY", 0) == 1 {
        disk_cap_cost(&b, &root, &m, disk_n).await;
        return;
    }
    let setup = Setup {
        root: &root,
        t: t.path(),
        m: &m,
        bundle: &bundle,
        n,
        idle,
    };
    let default = measure(&b, Rt::Default, &setup).await;
    if runsc {
        let g = measure(&b, Rt::Runsc, &setup).await;
        let (d, dn) = (default, b.runtime().1.to_string());
        println!("== runsc / {dn}, same run (p50 ratio; p95 ratio)");
        for (what, x, y) in [
            ("bare run", g.bare, d.bare),
            ("airlock ready", g.ready, d.ready),
            ("  of which create", g.create, d.create),
            ("airlock teardown", g.teardown, d.teardown),
            ("airlock full cycle", g.cycle, d.cycle),
        ] {
            println!(
                "{what:<20} {:.1} ms / {:.1} ms = {:.2}x;  p95 {:.1} / {:.1} = {:.2}x",
                x.0,
                y.0,
                x.0 / y.0,
                x.1,
                y.1,
                x.1 / y.1
            );
        }
        println!(
            "{:<20} host {:.2} / {:.2} MiB = {:.2}x;  cgroup {:.2} / {:.2} MiB = {:.2}x",
            "idle memory each",
            g.mem_host,
            d.mem_host,
            g.mem_host / d.mem_host,
            g.mem_cgroup,
            d.mem_cgroup,
            g.mem_cgroup / d.mem_cgroup
        );
    }

    if disk_n > 0 {
        disk_cap_cost(&b, &root, &m, disk_n).await;
    }

    if common::env_n("AIRLOCK_BENCH_IMAGE", 1) == 1 {
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
