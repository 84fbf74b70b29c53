//! MicroVM sandbox benchmarks, as root (`cargo bench -p airlock-sandbox --bench microvm`), with
//! QEMU under TCG on hosts whose KVM cannot boot the kernel (as the development machines):
//! - boot to runner started through the backend (create + start until the agent's "runner
//!   started" console line), beside a bare `qemu-system-x86_64` boot of the same kernel and
//!   initramfs to its init (the agent's probe mode, which loads the same modules and prints its
//!   line) in the same run, alternating which goes first, as a ratio; and where the guest's time
//!   goes (the agent's timestamps per phase);
//! - the per-job disk (qcow2 layer) create on its own, and teardown (destroy of an exited VM);
//! - host memory per idle VM beyond its guest RAM (the VMM's resident set minus the resident part
//!   of its guest-RAM mapping).
//!
//! - Firecracker and Cloud Hypervisor host side: create, start until the VMM accepted the boot,
//!   destroy (their guests do not boot where KVM is PVM; AIRLOCK_BENCH_VMMS=0 skips this).
//!
//! Sizes: AIRLOCK_BENCH_BOOTS (default 20), AIRLOCK_BENCH_IDLE_VMS (default 4);
//! AIRLOCK_BENCH_SHOW_LOG=1 prints the last boot's agent lines.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock_sandbox::{Backend, SandboxStatus, Secret};

/// A bare QEMU boot of `kernel` + `initramfs` to the agent's probe line: (wall ms, the guest's
/// time at the agent's "started" and "loaded" lines); None on a stall.
fn bare_boot(
    kernel: &std::path::Path,
    initramfs: &std::path::Path,
    cmdline: &str,
) -> Option<(f64, [Option<f64>; 2])> {
    let t0 = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=on",
            "-accel",
            "tcg,tb-size=64",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            "512",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
        ])
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!("{cmdline} {}", airlock_agent::PROBE_ARG))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains(airlock_agent::PROBE_OK) {
                let _ = tx.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let got = rx.recv_timeout(Duration::from_secs(60)).ok();
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let _ = child.wait();
    let console = reader.join().unwrap_or_default();
    let p = phases(&console);
    got.map(|_| (ms, [p[0], p[1]]))
}

/// The agent's progress lines a boot is timed by (a prefix of its message), in boot order.
const PHASES: &[&str] = &[
    "started",
    "loaded",
    "config read",
    "root mounted",
    "eth0",
    "switched root",
    "sudo allowed",
    "runner started",
];

/// Each phase's guest time (`[NNNms]`, ms since the kernel started) in one console log.
fn phases(log: &str) -> Vec<Option<f64>> {
    PHASES
        .iter()
        .map(|p| {
            log.lines().find_map(|l| {
                let rest = l.split("airlock-agent: [").nth(1)?;
                let (ms, msg) = rest.split_once("ms] ")?;
                msg.starts_with(p).then(|| ms.parse().ok())?
            })
        })
        .collect()
}

/// (VmRSS, resident KiB of the guest-RAM mapping) of a QEMU process with `mib` of guest RAM.
fn vmm_memory_kib(pid: i32, mib: u64) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0.0);
    // The guest's RAM is one anonymous mapping of exactly its size.
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let want = mib * 1024;
    let mut guest = 0.0;
    let mut in_ram = false;
    for l in smaps.lines() {
        if let Some((range, _)) = l.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    in_ram = (b - a) / 1024 == want;
                    continue;
                }
            }
        }
        if in_ram {
            if let Some(v) = l.strip_prefix("Rss:") {
                guest += v
                    .trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<f64>()
                    .unwrap_or(0.0);
            }
        }
    }
    (rss, guest)
}

fn qemu_pid_of(id: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        (exe.to_string_lossy().contains("qemu-system") && cmd.contains(&format!("airlock-{id} ")))
            .then_some(pid)
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    common::require_root();
    let boots = common::env_n("AIRLOCK_BENCH_BOOTS", 20);
    let idle = common::env_n("AIRLOCK_BENCH_IDLE_VMS", 4);
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("vms");
    let b = common::vm_backend(&root, 30).await;
    let m = common::vm_image();
    let store = common::images();
    let dir = store.dir(&m);
    let vm = m.vm.as_ref().unwrap();
    let (kernel, initramfs) = (
        dir.join(&vm.kernels[0].kernel),
        dir.join(&vm.kernels[0].initramfs),
    );
    let cmdline = {
        // The same command line the backend gives a TCG guest (with the host's TSC rate).
        let s = common::vm_spec("probe", &m, 2);
        b.create(&s).await.unwrap();
        let launch = std::fs::read_to_string(root.join("probe/launch")).unwrap();
        b.destroy("probe").await.unwrap();
        let lines: Vec<&str> = launch.lines().collect();
        let at = lines.iter().position(|l| *l == "-append").unwrap();
        lines[at + 1].to_string()
    };
    println!(
        "kernel {} under TCG, {boots} boots each",
        vm.kernels[0].version
    );

    // Warm-up: the page cache, QEMU's binary.
    bare_boot(&kernel, &initramfs, &cmdline);

    let (mut bare, mut ready, mut created, mut teardown) = (vec![], vec![], vec![], vec![]);
    let mut stalls = (0, 0);
    let mut guest: Vec<Vec<f64>> = vec![vec![]; PHASES.len()];
    let (mut bare_started, mut bare_loaded) = (vec![], vec![]);
    // The two kinds of boot alternate which goes first, so that neither always follows the
    // other (the host's caches and clocks after a boot are not those before one).
    let mut bare_once = |bare: &mut Vec<f64>, stalls: &mut (usize, usize)| match bare_boot(
        &kernel, &initramfs, &cmdline,
    ) {
        Some((ms, [started, loaded])) => {
            bare.push(ms);
            bare_started.extend(started);
            bare_loaded.extend(loaded);
        }
        None => stalls.0 += 1,
    };
    for i in 0..boots {
        if i % 2 == 0 {
            bare_once(&mut bare, &mut stalls);
        }
        let id = format!("boot{i}");
        let s = common::vm_spec(&id, &m, 2);
        let log = root.join(&id).join("runner.log");
        let t0 = Instant::now();
        b.create(&s).await.unwrap();
        created.push(t0.elapsed().as_secs_f64() * 1e3);
        b.start(&s, &Secret::new("exit 0".into())).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut up = false;
        while Instant::now() < deadline {
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("runner started")
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if up {
            ready.push(t0.elapsed().as_secs_f64() * 1e3);
            let console = std::fs::read_to_string(&log).unwrap_or_default();
            if i + 1 == boots && std::env::var_os("AIRLOCK_BENCH_SHOW_LOG").is_some() {
                for l in console.lines().filter(|l| l.contains("airlock-agent: [")) {
                    println!("    last boot: {l}");
                }
            }
            let p = phases(&console);
            for (i, t) in p.into_iter().enumerate() {
                if let Some(t) = t {
                    guest[i].push(t);
                }
            }
        } else {
            stalls.1 += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let SandboxStatus::Exited(_) = b.status(&id).await.unwrap() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t1 = Instant::now();
        b.destroy(&id).await.unwrap();
        teardown.push(t1.elapsed().as_secs_f64() * 1e3);
        if i % 2 == 1 {
            bare_once(&mut bare, &mut stalls);
        }
    }
    let left = airlock_sandbox::microvm::remnants(&root);
    assert!(left.is_empty(), "{left:?}");
    let (bp50, bp95) = (common::pct(&mut bare, 0.5), common::pct(&mut bare, 0.95));
    let (rp50, rp95) = (common::pct(&mut ready, 0.5), common::pct(&mut ready, 0.95));
    let (kp50, kp95) = (
        common::pct(&mut created, 0.5),
        common::pct(&mut created, 0.95),
    );
    let (tp50, tp95) = (
        common::pct(&mut teardown, 0.5),
        common::pct(&mut teardown, 0.95),
    );
    println!(
        "bare qemu boot to init (kernel + initramfs, agent probe line): p50 {bp50:.0} ms  p95 {bp95:.0} ms  ({} boots, {} stalled)",
        bare.len(),
        stalls.0
    );
    println!(
        "airlock create + start -> runner started:                     p50 {rp50:.0} ms  p95 {rp95:.0} ms  ({:.2}x bare p50; {} boots, {} stalled)",
        rp50 / bp50,
        ready.len(),
        stalls.1
    );
    println!(
        "  of which create (qcow2 layer, config disk, tap, cgroup; probe cached): p50 {kp50:.1} ms  p95 {kp95:.1} ms"
    );
    println!("teardown (destroy of an exited VM):                           p50 {tp50:.1} ms  p95 {tp95:.1} ms");
    // Where the guest's time goes: the median guest uptime at each of the agent's lines.
    if !bare_loaded.is_empty() && !bare_started.is_empty() {
        println!(
            "  bare boot: guest at \"started\" p50 {:.0} ms, at \"loaded\" p50 {:.0} ms since the kernel started",
            common::pct(&mut bare_started, 0.5),
            common::pct(&mut bare_loaded, 0.5)
        );
    }
    let mut last = 0.0;
    for (name, times) in PHASES.iter().zip(guest.iter_mut()) {
        if times.is_empty() {
            continue;
        }
        let t = common::pct(times, 0.5);
        println!(
            "  guest at \"{name}\": p50 {t:.0} ms since the kernel started (+{:.0} ms)",
            t - last
        );
        last = t;
    }

    // The qcow2 layer alone.
    let mut layer = vec![];
    for i in 0..boots {
        let p = t.path().join(format!("layer{i}.qcow2"));
        let t0 = Instant::now();
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(dir.join(&vm.disk))
            .arg(&p)
            .arg("10G")
            .status()
            .unwrap();
        assert!(st.success());
        layer.push(t0.elapsed().as_secs_f64() * 1e3);
        std::fs::remove_file(&p).unwrap();
    }
    let (lp50, lp95) = (common::pct(&mut layer, 0.5), common::pct(&mut layer, 0.95));
    println!("qcow2 layer create (qemu-img, 10 GiB virtual):                p50 {lp50:.1} ms  p95 {lp95:.1} ms");

    // Memory of idle VMs (runner waiting), beyond their guest RAM.
    let mut ids = vec![];
    for i in 0..idle {
        let id = format!("idle{i}");
        let s = common::vm_spec(&id, &m, 2);
        b.create(&s).await.unwrap();
        b.start(&s, &Secret::new("echo idle-ready; exec sleep 600".into()))
            .await
            .unwrap();
        ids.push(id);
    }
    for id in &ids {
        let log = root.join(id).join("runner.log");
        for _ in 0..1200 {
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("idle-ready")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut rss, mut guest) = (0.0, 0.0);
    for id in &ids {
        let pid = qemu_pid_of(id).expect("an idle VM's QEMU");
        let (r, g) = vmm_memory_kib(pid, 512);
        rss += r;
        guest += g;
    }
    for id in &ids {
        b.destroy(id).await.unwrap();
    }
    let n = ids.len() as f64;
    println!(
        "{idle} idle VMs (512 MiB guest RAM each): VMM resident {:.1} MiB each, of which guest RAM touched {:.1} MiB; beyond guest RAM {:.1} MiB each",
        rss / 1024.0 / n,
        guest / 1024.0 / n,
        (rss - guest) / 1024.0 / n
    );
    assert!(airlock_sandbox::microvm::remnants(&root).is_empty());

    if common::env_n("AIRLOCK_BENCH_VMMS", 1) > 0 {
        vmm_host_side(t.path(), &m, boots.min(10)).await;
    }
}

/// Firecracker and Cloud Hypervisor, host side only (their guests do not boot on a host whose
/// KVM is PVM): `create` (jail or VMM directory with links, config disk, sparse ext4 scratch
/// disk, tap, cgroup), `start` until the VMM's API has accepted the boot (supervisor, jailer or
/// namespace, API socket, configuration calls), and `destroy` of the running VM.
async fn vmm_host_side(base: &std::path::Path, m: &airlock_image::Manifest, rounds: usize) {
    use airlock_core::VmDriver;
    let root = base.join("vmm-vms");
    let drivers = [VmDriver::Firecracker, VmDriver::CloudHypervisor];
    let b = common::vm_backend_with(&root, 30, &drivers).await;
    for driver in drivers {
        let (mut create, mut start, mut destroy) = (vec![], vec![], vec![]);
        for i in 0..rounds {
            let id = format!("{}{i}", &driver.as_str()[..2]);
            let s = common::vm_spec_for(&id, m, 2, driver);
            let t0 = Instant::now();
            b.create(&s).await.unwrap();
            create.push(t0.elapsed().as_secs_f64() * 1e3);
            let t1 = Instant::now();
            b.start(&s, &Secret::new("exit 0".into())).await.unwrap();
            start.push(t1.elapsed().as_secs_f64() * 1e3);
            let t2 = Instant::now();
            b.destroy(&id).await.unwrap();
            destroy.push(t2.elapsed().as_secs_f64() * 1e3);
        }
        let p = |v: &mut Vec<f64>| (common::pct(v, 0.5), common::pct(v, 0.95));
        let ((c50, c95), (s50, s95), (d50, d95)) = (p(&mut create), p(&mut start), p(&mut destroy));
        println!(
            "{} (host side, {rounds} VMs): create p50 {c50:.1} ms p95 {c95:.1} ms; start until the VMM accepted the boot p50 {s50:.1} ms p95 {s95:.1} ms; destroy of the running VM p50 {d50:.1} ms p95 {d95:.1} ms",
            driver.as_str()
        );
    }
    assert!(airlock_sandbox::microvm::remnants(&root).is_empty());
}
