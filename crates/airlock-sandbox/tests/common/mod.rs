//! Shared by the container and microVM tests: cached test images, backends, and counts of
//! everything a sandbox can leave on the host.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_image::{BuildSpec, ImageStore, Manifest, Progress, RunnerSource};
use airlock_net::{Leases, Subnet};
use airlock_sandbox::container::{ContainerBackend, ContainerConfig, DEFAULT_UID_BASE};
use airlock_sandbox::microvm::{MicrovmBackend, MicrovmConfig};
use airlock_sandbox::{
    Backend, BackendSpec, ContainerImage, Limits, SandboxSpec, SandboxStatus, Secret, VmImage,
};

/// The test image's runner: it runs its "JIT config" as a shell script, so a test can run any
/// commands as the runner user inside a real sandbox.
const SHELL_RUNNER: &str = "#!/bin/sh\nprintf '%s\\n' \"$ACTIONS_RUNNER_INPUT_JITCONFIG\" > /tmp/job.sh\nexec /bin/sh /tmp/job.sh\n";

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "container tests need root (CI runs as root)"
    );
}

/// One image store for every test process of this run, built once under a file lock.
pub fn images() -> ImageStore {
    ImageStore::new(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("airlock-test-images"))
}

/// The shell-runner test image (mmdebstrap minbase + python3-minimal, iproute2, kmod, procps),
/// built on first use and reused by later tests and runs.
pub fn shell_image() -> Manifest {
    let store = images();
    let d = tempfile::tempdir().unwrap();
    let runner = d.path().join("runner");
    std::fs::write(&runner, SHELL_RUNNER).unwrap();
    std::fs::set_permissions(&runner, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = BuildSpec {
        name: "test-shell".into(),
        suite: "bookworm".into(),
        packages: ["python3-minimal", "iproute2", "kmod", "procps"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        runner: RunnerSource::Standin(runner),
        mirror: None,
        vm: None,
    };
    store
        .build_once(&spec, &mut |p| {
            if let Progress::Step { n, of, what } = p {
                eprintln!("test image: {n}/{of} {what}");
            }
        })
        .expect("building the test image (needs mmdebstrap and the Debian mirror)")
}

/// The microVM test image: the shell-runner image's packages, bootable (Debian's cloud kernel,
/// the guest agent from `target/standin-bin`, sudo), built on first use like `shell_image`.
pub fn vm_image() -> Manifest {
    let store = images();
    let d = tempfile::tempdir().unwrap();
    let runner = d.path().join("runner");
    std::fs::write(&runner, SHELL_RUNNER).unwrap();
    std::fs::set_permissions(&runner, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/standin-bin/airlock-agent");
    assert!(
        agent.is_file(),
        "{} is missing: run scripts/build-standin.sh",
        agent.display()
    );
    let spec = BuildSpec {
        name: "test-vm".into(),
        suite: "bookworm".into(),
        packages: ["python3-minimal", "iproute2", "procps"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        runner: RunnerSource::Standin(runner),
        mirror: None,
        vm: Some(airlock_image::VmBuild {
            agent,
            kernel_packages: vec![],
            docker: false,
        }),
    };
    store
        .build_once(&spec, &mut |p| {
            if let Progress::Step { n, of, what } = p {
                eprintln!("test VM image: {n}/{of} {what}");
            }
        })
        .expect("building the test VM image (needs mmdebstrap, the Debian mirror, mkfs.ext4)")
}

/// A microVM backend whose VMs share the container tests' address slot `slot` (and lease
/// directory, beside `root`), so a VM and a container of one test can be checked against each
/// other.
pub async fn vm_backend(root: &Path, slot: u8) -> MicrovmBackend {
    vm_backend_with(root, slot, &[airlock_core::VmDriver::Qemu]).await
}

/// `shared/vmm` beside the checkout (or `AIRLOCK_VMM_DIR`): Firecracker's and Cloud
/// Hypervisor's release binaries. They are not optional.
#[allow(dead_code)]
pub fn vmm_binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("AIRLOCK_VMM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vmm"));
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing (set AIRLOCK_VMM_DIR)",
        p.display()
    );
    std::fs::canonicalize(p).unwrap()
}

/// The niceness every test VMM runs at.
pub const VM_NICE: i32 = 3;

/// [`vm_backend`] with `drivers` made ready (Firecracker and Cloud Hypervisor from
/// [`vmm_binary`]).
pub async fn vm_backend_with(
    root: &Path,
    slot: u8,
    drivers: &[airlock_core::VmDriver],
) -> MicrovmBackend {
    vm_backend_configured(root, slot, drivers, |_| {}).await
}

/// `vm_backend_with`, its config adjusted by `adjust` before the probe.
pub async fn vm_backend_configured(
    root: &Path,
    slot: u8,
    drivers: &[airlock_core::VmDriver],
    adjust: impl FnOnce(&mut MicrovmConfig),
) -> MicrovmBackend {
    std::fs::set_permissions(
        root.parent().unwrap(),
        std::fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    let mut cfg = MicrovmConfig::new(root.to_path_buf());
    cfg.net = Leases::new(cfg.net.dir().to_path_buf(), subnet_for(slot));
    cfg.log_cap = 256 * 1024;
    // A distinct uid range per test process.
    cfg.uid_base = 300_000 + 1000 * slot as u32;
    // A KVM that works boots the probe in about a second; one that hangs is given up on soon.
    cfg.probe_timeouts = (Duration::from_secs(5), Duration::from_secs(30));
    cfg.drivers = drivers.to_vec();
    // Below the test's own priority, as `server.sandbox_nice` puts them (the lifecycle test
    // checks every VMM thread's niceness).
    cfg.nice = VM_NICE;
    if drivers.iter().any(|d| *d != airlock_core::VmDriver::Qemu) {
        cfg.firecracker = vmm_binary("firecracker");
        cfg.jailer = vmm_binary("jailer");
        cfg.cloud_hypervisor = vmm_binary("cloud-hypervisor");
    }
    cfg.logs = Some(airlock_sandbox::LogKeep::new(
        root.parent().unwrap().join("logs"),
        100,
    ));
    adjust(&mut cfg);
    MicrovmBackend::probe(cfg, None)
        .await
        .expect("microvm probe")
}

/// A QEMU/TCG VM of the test image with `disk_gib` of disk.
pub fn vm_spec(id: &str, m: &Manifest, disk_gib: u32) -> SandboxSpec {
    let store = images();
    let vm = m.vm.as_ref().expect("a VM image");
    let dir = store.dir(m);
    SandboxSpec {
        id: id.into(),
        runner_name: format!("airlock-test-{id}"),
        runner_command: PathBuf::from("/").join(airlock_image::STANDIN_PATH),
        backend: BackendSpec::Microvm(VmImage {
            image: m.short(),
            disk: dir.join(&vm.disk),
            kernel: dir.join(&vm.kernels[0].kernel),
            initramfs: dir.join(&vm.kernels[0].initramfs),
            driver: airlock_core::VmDriver::Qemu,
            accel: airlock_core::Accel::Tcg,
            cpus: 1,
            memory_mib: 512,
            disk_gib,
            docker: false,
        }),
        pool: "test".into(),
        egress: Default::default(),
    }
}

/// A VM of the test image under `driver` (KVM; 256 MiB): Firecracker gets the ELF vmlinux the
/// image build extracted.
#[allow(dead_code)]
pub fn vm_spec_for(
    id: &str,
    m: &Manifest,
    disk_gib: u32,
    driver: airlock_core::VmDriver,
) -> SandboxSpec {
    let mut spec = vm_spec(id, m, disk_gib);
    let BackendSpec::Microvm(vm) = &mut spec.backend else {
        unreachable!()
    };
    vm.driver = driver;
    vm.accel = airlock_core::Accel::Kvm;
    vm.memory_mib = 256;
    if driver == airlock_core::VmDriver::Firecracker {
        let k = &m.vm.as_ref().expect("a VM image").kernels[0];
        let v = k
            .vmlinux
            .as_ref()
            .expect("the image build extracts a vmlinux");
        vm.kernel = images().dir(m).join(v);
    }
    spec
}

/// A distinct /16 per test, so parallel tests never share addresses: 10.(100+slot). Slots in
/// use: containers 1–12 (under runsc 21–32), microVMs 20 and 41–44, Firecracker and Cloud
/// Hypervisor sandboxes 45–48, benchmarks 30 and 40. (`airlock`'s own tests use 10.200–10.239.)
pub fn subnet_for(slot: u8) -> Subnet {
    Subnet::parse(&format!("10.{}.0.0/16", 100 + slot)).unwrap()
}

pub async fn backend(root: &Path, slot: u8) -> ContainerBackend {
    // tempfile makes 0700 directories; the container's root must pass through them.
    std::fs::set_permissions(
        root.parent().unwrap(),
        std::fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    let mut cfg = ContainerConfig::new(root.to_path_buf());
    cfg.net = Leases::new(cfg.net.dir().to_path_buf(), subnet_for(slot));
    cfg.log_cap = 64 * 1024;
    cfg.logs = Some(airlock_sandbox::LogKeep::new(
        root.parent().unwrap().join("logs"),
        100,
    ));
    ContainerBackend::probe(cfg, None).await.expect("probe")
}

pub fn spec(id: &str, m: &Manifest, limits: Limits) -> SandboxSpec {
    let rootfs = images().shifted_rootfs(m, DEFAULT_UID_BASE).unwrap();
    SandboxSpec {
        id: id.into(),
        runner_name: format!("airlock-test-{id}"),
        runner_command: PathBuf::from("/").join(airlock_image::STANDIN_PATH),
        backend: BackendSpec::Container(ContainerImage {
            rootfs,
            image: m.short(),
            limits,
            runtime: None,
            // Every test sandbox has its disk cap, as every daemon's does by default.
            disk_gib: Some(4),
        }),
        pool: "test".into(),
        egress: Default::default(),
    }
}

/// Which runtime a test's sandboxes run under: the host-wide one the probe picks (crun where it
/// is installed: the probe gives it the v1 hugetlb hierarchy it needs on a hybrid host), runc, or
/// gVisor's runsc, the last two named in each spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rt {
    Default,
    Runc,
    Runsc,
}

impl Rt {
    /// What specs say (`ContainerImage::runtime`).
    pub fn name(self) -> Option<&'static str> {
        match self {
            Rt::Default => None,
            Rt::Runc => Some("runc"),
            Rt::Runsc => Some("runsc"),
        }
    }

    /// A runtime on the host's kernel (crun, runc), as opposed to gVisor's.
    pub fn native(self) -> bool {
        self != Rt::Runsc
    }

    /// The address slot of a test: runsc's twin of a test takes `slot + 20`, runc's `slot + 50`,
    /// so all can run at once.
    pub fn slot(self, slot: u8) -> u8 {
        match self {
            Rt::Default => slot,
            Rt::Runsc => slot + 20,
            Rt::Runc => slot + 50,
        }
    }
}

/// `backend`, with runsc probed at start when `rt` asks for it (on ptrace: the KVM platform's
/// probe, which hangs on this kind of host until its time-out, is the lifecycle test's to run).
pub async fn backend_on(root: &Path, slot: u8, rt: Rt) -> ContainerBackend {
    backend_with(root, slot, rt, Duration::ZERO).await
}

/// `backend_on`, giving gVisor's KVM platform `kvm_probe` in the probe.
pub async fn backend_with(root: &Path, slot: u8, rt: Rt, kvm_probe: Duration) -> ContainerBackend {
    backend_configured(root, slot, rt, kvm_probe, |_| {}).await
}

/// `backend_with`, with `adjust` applied to its config last.
pub async fn backend_configured(
    root: &Path,
    slot: u8,
    rt: Rt,
    kvm_probe: Duration,
    adjust: impl FnOnce(&mut ContainerConfig),
) -> ContainerBackend {
    std::fs::set_permissions(
        root.parent().unwrap(),
        std::fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    let mut cfg = ContainerConfig::new(root.to_path_buf());
    cfg.net = Leases::new(cfg.net.dir().to_path_buf(), subnet_for(slot));
    cfg.log_cap = 64 * 1024;
    cfg.logs = Some(airlock_sandbox::LogKeep::new(
        root.parent().unwrap().join("logs"),
        100,
    ));
    cfg.runtimes = rt.name().into_iter().map(str::to_string).collect();
    cfg.kvm_probe = kvm_probe;
    adjust(&mut cfg);
    ContainerBackend::probe(cfg, None).await.expect("probe")
}

/// `spec`, run by `rt`.
pub fn spec_on(id: &str, m: &Manifest, limits: Limits, rt: Rt) -> SandboxSpec {
    let mut s = spec(id, m, limits);
    if let BackendSpec::Container(c) = &mut s.backend {
        c.runtime = rt.name().map(str::to_string);
    }
    s
}

/// `run`, in a sandbox run by `rt`.
pub async fn run_on(
    b: &ContainerBackend,
    root: &Path,
    id: &str,
    limits: Limits,
    script: &str,
    rt: Rt,
) -> (Option<i32>, String) {
    let m = shell_image();
    let s = spec_on(id, &m, limits, rt);
    b.create(&s).await.unwrap();
    b.start(&s, &Secret::new(script.into())).await.unwrap();
    let code = wait_exit(b, id, Duration::from_secs(60)).await;
    let log = std::fs::read_to_string(root.join(id).join("runner.log")).unwrap_or_default();
    b.destroy(id).await.unwrap();
    (code, log)
}

/// What every runtime's state directory under `root` holds (`.runtime`, `.runtime-runsc`, …),
/// as `dir/name`; `leftovers` looks only at the default runtime's.
pub fn runtime_state(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for d in names(root, |n| n == ".runtime" || n.starts_with(".runtime-")) {
        if root.join(&d).is_dir() {
            for n in names(&root.join(&d), |_| true) {
                out.push(format!("{d}/{n}"));
            }
        }
    }
    out
}

pub async fn wait_exit(b: &dyn Backend, id: &str, timeout: Duration) -> Option<i32> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match b.status(id).await.unwrap() {
            SandboxStatus::Exited(code) => return code,
            s if tokio::time::Instant::now() > deadline => panic!("{id} still {s:?}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Runs `script` as the runner user in a fresh sandbox; returns (exit code, log). The sandbox
/// is destroyed afterwards.
pub async fn run(
    b: &ContainerBackend,
    root: &Path,
    id: &str,
    limits: Limits,
    script: &str,
) -> (Option<i32>, String) {
    let m = shell_image();
    let s = spec(id, &m, limits);
    b.create(&s).await.unwrap();
    b.start(&s, &Secret::new(script.into())).await.unwrap();
    let code = wait_exit(b, id, Duration::from_secs(60)).await;
    let log = std::fs::read_to_string(root.join(id).join("runner.log")).unwrap_or_default();
    b.destroy(id).await.unwrap();
    (code, log)
}

/// Everything of this backend's on the host, by kind: sandbox directories, runtime state,
/// overlay mounts, links, cgroups, processes, network namespaces.
#[derive(Debug, Default, PartialEq)]
pub struct Leftovers {
    pub dirs: Vec<String>,
    pub runtime: Vec<String>,
    pub mounts: Vec<String>,
    pub links: Vec<String>,
    pub cgroups: Vec<String>,
    /// Loop devices backed by a file below the root (disk caps).
    pub loops: Vec<String>,
    pub processes: Vec<i32>,
    pub netns: usize,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        *self == Leftovers::default()
    }
}

fn names(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| keep(n))
                .collect()
        })
        .unwrap_or_default()
}

/// What this root's sandboxes (`tag_ids`) left, found independently of the backend's own
/// `list` and `remnants`; network namespaces are counted through the processes holding them.
pub fn leftovers(root: &Path, tag_ids: &[String]) -> Leftovers {
    let mut l = Leftovers {
        dirs: names(root, |n| !n.starts_with('.')),
        runtime: names(&root.join(".runtime"), |_| true),
        ..Default::default()
    };
    let prefix = root.to_string_lossy().into_owned();
    if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
        l.mounts = mi
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|m| m.starts_with(&*prefix))
            .map(str::to_string)
            .collect();
    }
    // The backend tags links and cgroups with a hash of its root (see container.rs).
    let tag = airlock_sandbox::container::tag_of(root);
    for (name, alias) in airlock_net::list() {
        if tag_ids.iter().any(|id| alias == format!("{tag}/{id}")) {
            l.links.push(name);
        }
    }
    for ctrl in names(Path::new("/sys/fs/cgroup"), |_| true) {
        let parent = Path::new("/sys/fs/cgroup").join(ctrl).join("airlock");
        for n in names(&parent, |_| true) {
            if tag_ids.iter().any(|id| n == format!("{tag}-{id}")) {
                l.cgroups.push(format!("{}", parent.join(n).display()));
            }
        }
    }
    for dev in names(Path::new("/sys/block"), |n| n.starts_with("loop")) {
        let back = std::fs::read_to_string(format!("/sys/block/{dev}/loop/backing_file"));
        if back.is_ok_and(|b| b.starts_with(&*prefix)) {
            l.loops.push(dev);
        }
    }
    let mut ns = std::collections::HashSet::new();
    for pid in names(Path::new("/proc"), |n| n.parse::<i32>().is_ok()) {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let marked = env.split(|b| *b == 0).any(|kv| {
            kv.starts_with(b"AIRLOCK_SANDBOX=")
                && tag_ids
                    .iter()
                    .any(|id| kv == format!("AIRLOCK_SANDBOX={id}").as_bytes())
        });
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let ours = cwd.starts_with(root) || cgroup.contains(&format!("/airlock/{tag}-"));
        if (marked && cgroup.contains(&tag)) || ours {
            l.processes.push(pid.parse().unwrap());
            if let Ok(n) = std::fs::read_link(format!("/proc/{pid}/ns/net")) {
                ns.insert(n);
            }
        }
    }
    l.netns = ns.len();
    l
}

/// A stand-in for "the internet": a network namespace with an HTTP server, reached from the host
/// (and so from sandboxes, through NAT) at `addr`.
pub struct Internet {
    pub ns: String,
    pub addr: std::net::Ipv4Addr,
    pub port: u16,
    server: std::process::Child,
    host_if: String,
}

impl Internet {
    pub fn start(slot: u8) -> Internet {
        let ns = format!("alt-inet-{}-{slot}", std::process::id());
        let host_if = format!("alti{}x{slot}", std::process::id() % 100000);
        let host_ip = format!("198.18.{slot}.1");
        let addr: std::net::Ipv4Addr = format!("198.18.{slot}.2").parse().unwrap();
        let sh = |c: &str| {
            let st = std::process::Command::new("sh")
                .arg("-c")
                .arg(c)
                .status()
                .unwrap();
            assert!(st.success(), "{c}");
        };
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(std::process::Stdio::null())
            .status();
        sh(&format!(
            "ip netns add {ns} && ip link add {host_if} type veth peer name eth0 netns {ns} && \
             ip addr add {host_ip}/30 dev {host_if} && ip link set {host_if} up && \
             ip -n {ns} addr add {addr}/30 dev eth0 && ip -n {ns} link set eth0 up && \
             ip -n {ns} link set lo up && ip -n {ns} route add default via {host_ip}"
        ));
        let port = 8000;
        let server = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c"])
            .arg(
                "import http.server,sys\n\
                 class H(http.server.BaseHTTPRequestHandler):\n\
                 \x20def do_GET(s):\n\
                 \x20 s.send_response(200); s.end_headers(); s.wfile.write(b'internet-ok')\n\
                 \x20def log_message(s,*a): pass\n\
                 http.server.HTTPServer(('0.0.0.0', 8000), H).serve_forever()",
            )
            .spawn()
            .unwrap();
        // Wait until it answers from the host.
        for _ in 0..100 {
            if std::net::TcpStream::connect_timeout(
                &(addr, port).into(),
                Duration::from_millis(100),
            )
            .is_ok()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Internet {
            ns,
            addr,
            port,
            server,
            host_if,
        }
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
    }
}

/// Destroys whatever a test's backend left under `root` when the test ends, also when it fails
/// part-way, so one failure never leaves containers running into the next tests.
pub struct Reaper(pub PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let root = self.0.clone();
        reap_on_a_thread(root.clone(), async move { backend(&root, 99).await });
    }
}

/// [`Reaper`] for microVM sandboxes: a backend with `drivers`, on address slot `slot`.
pub struct VmReaper(pub PathBuf, pub u8, pub &'static [airlock_core::VmDriver]);

impl VmReaper {
    /// For QEMU VMs.
    pub fn qemu(root: PathBuf, slot: u8) -> VmReaper {
        VmReaper(root, slot, &[airlock_core::VmDriver::Qemu])
    }
}

impl Drop for VmReaper {
    fn drop(&mut self) {
        let (root, slot, drivers) = (self.0.clone(), self.1, self.2);
        reap_on_a_thread(root.clone(), async move {
            vm_backend_with(&root, slot, drivers).await
        });
    }
}

/// Destroys every sandbox the backend `make` yields lists, on a runtime of its own (a test's
/// runtime may be gone or blocked when its guard drops).
fn reap_on_a_thread<B, F>(root: PathBuf, make: F)
where
    B: Backend,
    F: std::future::Future<Output = B> + Send + 'static,
{
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if !root.exists() {
                return;
            }
            let b = make.await;
            for (id, _) in b.list().await.unwrap_or_default() {
                let _ = b.destroy(&id).await;
            }
        });
    })
    .join();
}

/// The `p` quantile (0..=1) of `v` (benchmarks).
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A size from the environment (benchmarks), or `default`.
pub fn env_n(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The nice values of a host process's threads, from `/proc/PID/task/*/stat` (field 19).
pub fn nice_of(pid: i32) -> Vec<i64> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        out.push(
            stat[stat.rfind(')').unwrap() + 2..]
                .split(' ')
                .nth(16)
                .unwrap()
                .parse()
                .unwrap(),
        );
    }
    out
}

/// The host pid of gVisor's sandbox process (the Sentry, `runsc-sandbox … boot … ID`) of `id`.
pub fn find_sandbox_process(id: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        let cid = format!("\0{id}{}\0", airlock_sandbox::container::GVISOR_ID_SUFFIX);
        (cmd.starts_with("runsc-sandbox\0") && cmd.ends_with(&cid)).then_some(pid)
    })
}

/// The host pid of a process whose command line (NUL-separated) contains `needle`.
pub fn find_process(needle: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmd)
            .contains(needle)
            .then_some(pid)
    })
}

pub fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Processes whose parent is `ppid`, with their command names.
pub fn children_of(ppid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let comm = stat[stat.find('(').unwrap() + 1..stat.rfind(')').unwrap()].to_string();
        let parent: i32 = stat[stat.rfind(')').unwrap() + 2..]
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        if parent == ppid {
            out.push((pid, comm));
        }
    }
    out
}
