//! `airlock demo`: airlock's main job, end to end, with nothing to set up. It starts the GitHub
//! emulator and the daemon (SQLite in a temporary state directory) on the container backend
//! where it works (root, an OCI runtime whose probe passes, an image it builds once and reuses),
//! with ghsim in a network namespace of its own where the internet would be; otherwise on the
//! process backend, with a warning that it is not isolated. `--backend microvm` adds a pool of
//! QEMU microVMs beside the container pools and jobs that need a whole machine (root, a kernel of
//! their own, nested sandboxes). It submits
//! sample workflows — several jobs over three pools, one job that fails, one whose webhook is
//! lost — shows progress, prints a table per job and exits 0 only if every job ended as expected
//! and nothing was left behind (sandboxes, runner registrations, processes, live runners).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_ghsim::{JobSpec, Sim, SimConfig, Status, Workflow};

#[derive(clap::Args)]
pub struct Args {
    /// Keep state here (SQLite, sandboxes, secrets) instead of a temporary directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Give up if the jobs have not finished by then.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Where jobs run: `container` where its probe passes (else `process`), one of them, or
    /// `microvm`: container pools plus a pool of microVMs for jobs that need a whole machine.
    #[arg(long, value_enum, default_value_t = DemoBackend::Auto)]
    backend: DemoBackend,
    /// Runner images are built here once and reused by later demos.
    #[arg(long, default_value = "/var/cache/airlock/images")]
    image_cache: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoBackend {
    Auto,
    Container,
    Microvm,
    Process,
}

/// What the demo's pools run on.
enum Mode {
    Process,
    Container {
        outside: airlock_net::Outside,
    },
    /// Container pools and a microVM pool.
    Microvm {
        outside: airlock_net::Outside,
    },
}

impl Mode {
    fn outside(&self) -> Option<&airlock_net::Outside> {
        match self {
            Mode::Process => None,
            Mode::Container { outside } | Mode::Microvm { outside } => Some(outside),
        }
    }
}

struct Expect {
    name: &'static str,
    repo: &'static str,
    labels: &'static [&'static str],
    steps: &'static [&'static str],
    drop_webhooks: bool,
    conclusion: &'static str,
}

const JOBS: &[Expect] = &[
    Expect {
        name: "build",
        repo: "demo/app",
        labels: &["self-hosted", "linux", "small"],
        steps: &[
            "echo building",
            "mkdir -p out && echo ok > out/artifact",
            "cat out/artifact",
        ],
        drop_webhooks: false,
        conclusion: "success",
    },
    Expect {
        name: "unit-tests",
        repo: "demo/app",
        labels: &["self-hosted", "small"],
        steps: &["test \"$(expr 6 \\* 7)\" -eq 42"],
        drop_webhooks: false,
        conclusion: "success",
    },
    Expect {
        name: "lint",
        repo: "demo/app",
        labels: &["small"],
        steps: &["echo 'src/main.rs:1: trailing whitespace' >&2; exit 1"],
        drop_webhooks: false,
        conclusion: "failure",
    },
    Expect {
        name: "lost-webhook",
        repo: "demo/app",
        labels: &["self-hosted", "small"],
        steps: &["echo 'my webhooks were dropped; the poll found me'"],
        drop_webhooks: true,
        conclusion: "success",
    },
    Expect {
        name: "package",
        repo: "demo/app",
        labels: &["self-hosted", "linux", "big"],
        steps: &["uname -sm", "sleep 1"],
        drop_webhooks: false,
        conclusion: "success",
    },
    Expect {
        name: "integration",
        repo: "demo/app",
        labels: &["linux", "big"],
        steps: &["echo integration"],
        drop_webhooks: false,
        conclusion: "success",
    },
    Expect {
        name: "e2e",
        repo: "demo/web",
        labels: &["self-hosted", "web"],
        steps: &["printf 'GET / -> 200\\n'"],
        drop_webhooks: false,
        conclusion: "success",
    },
    Expect {
        name: "docs",
        repo: "demo/web",
        labels: &["web"],
        steps: &["echo docs"],
        drop_webhooks: false,
        conclusion: "success",
    },
];

/// The microVM pool's jobs: they need a machine of their own.
const VM_JOBS: &[Expect] = &[
    Expect {
        name: "root-in-vm",
        repo: "demo/app",
        labels: &["self-hosted", "linux", "machine"],
        steps: &[
            "echo kernel $(uname -r)",
            "test \"$(sudo -n id -u)\" = 0",
            "sudo -n sh -c 'echo 127.0.0.2 demo-host >> /etc/hosts' && grep -q demo-host /etc/hosts",
        ],
        drop_webhooks: false,
        conclusion: "success",
    },
    Expect {
        name: "nested-sandbox",
        repo: "demo/app",
        labels: &["self-hosted", "linux", "machine"],
        steps: &["unshare -r sh -c 'echo uid in a user namespace: $(id -u)'"],
        drop_webhooks: false,
        conclusion: "success",
    },
];

const VM_POOL: &str = r#"
[[pool]]
name = "machine"
scope = "repo:demo/app"
labels = ["self-hosted", "linux", "machine"]
backend = "microvm"
image = "demo-vm"
memory_mib = 1024
max_runners = 2
idle_timeout = "20s"
boot_timeout = "120s"

[pool.microvm]
accel = "auto"
disk_gib = 4
"#;

fn config_text(state: &Path, api: &str, runner: &Path, container: bool) -> String {
    // Container pools take the runner from the image's manifest.
    let r = if container {
        "backend = \"container\"\nimage = \"demo\"\nmemory_mib = 512\npids_max = 1024".to_string()
    } else {
        format!("runner_command = \"{}\"", runner.display())
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
state_dir = "{state}"
drain_grace = "20s"

[github]
api_url = "{api}"
webhook_secret_file = "webhook-secret"
token_file = "token"
poll_interval = "3s"
request_timeout = "10s"

[[pool]]
name = "small"
scope = "repo:demo/app"
labels = ["self-hosted", "linux", "small"]
{r}
max_runners = 3
idle_timeout = "20s"
boot_timeout = "60s"

[[pool]]
name = "big"
scope = "repo:demo/app"
labels = ["self-hosted", "linux", "big"]
{r}
max_runners = 2
idle_timeout = "20s"
boot_timeout = "60s"

[[pool]]
name = "web"
scope = "org:demo"
labels = ["self-hosted", "linux", "web"]
{r}
max_runners = 2
idle_timeout = "20s"
boot_timeout = "60s"
"#,
        state = state.display()
    )
}

/// Container mode when asked for or possible: root, a runtime whose probe passes, and the demo
/// image (built once into the cache with progress shown, then reused). `auto` falls back to the
/// process backend with the reason; `container` fails instead.
async fn choose_backend(a: &Args, state: &Path, runner: &Path) -> Result<Mode, String> {
    if a.backend == DemoBackend::Process {
        return Ok(Mode::Process);
    }
    if a.backend == DemoBackend::Microvm {
        return microvm_mode(a, state, runner)
            .await
            .map_err(|e| format!("the microvm backend is not available: {e}"));
    }
    match container_mode(a, state, runner).await {
        Ok(m) => Ok(m),
        Err(e) if a.backend == DemoBackend::Auto => {
            println!("  ! the container backend is not available here: {e}");
            println!(
                "  ! falling back to the process backend: jobs run on this host WITHOUT isolation"
            );
            Ok(Mode::Process)
        }
        Err(e) => Err(format!("the container backend is not available: {e}")),
    }
}

/// Container mode plus the microVM pool's image, built once with `--vm` (the guest agent is the
/// static one beside the stand-in runner); the backend's own checks (QEMU, qemu-img, setpriv)
/// run first, so a host without QEMU says so before anything is built.
async fn microvm_mode(a: &Args, state: &Path, runner: &Path) -> Result<Mode, String> {
    let Mode::Container { outside } = container_mode(a, state, runner).await? else {
        return Err("the container backend is needed too".into());
    };
    airlock_sandbox::microvm::MicrovmBackend::probe(
        airlock_sandbox::microvm::MicrovmConfig::new(state.join("vms")),
        None,
    )
    .await
    .map_err(|e| e.to_string())?;
    let agent = super::image::beside_exe("airlock-agent")
        .ok_or("the guest agent airlock-agent is not built; run scripts/build-standin.sh")?;
    let store = airlock_image::ImageStore::new(a.image_cache.clone());
    let spec = airlock_image::BuildSpec {
        name: "demo-vm".into(),
        suite: "bookworm".into(),
        packages: vec![],
        runner: airlock_image::RunnerSource::Standin(runner.to_path_buf()),
        mirror: None,
        vm: Some(airlock_image::VmBuild {
            agent,
            kernel_packages: vec![],
            docker: false,
        }),
    };
    let m = build_demo_image(store, spec).await?;
    println!(
        "  microVMs    pool \"machine\" boots image {} with kernel {} under QEMU",
        m.short(),
        m.vm.as_ref()
            .and_then(|v| v.kernels.first())
            .map(|k| k.version.as_str())
            .unwrap_or("?")
    );
    println!(
        "  ! where KVM cannot boot the kernel (the daemon probes it at start), VMs run under TCG\n    \
         emulation: each boot then takes several seconds, and the machine pool's jobs wait for it"
    );
    Ok(Mode::Microvm { outside })
}

/// Builds (once) or reuses a demo image, showing progress.
async fn build_demo_image(
    store: airlock_image::ImageStore,
    spec: airlock_image::BuildSpec,
) -> Result<airlock_image::Manifest, String> {
    let started = Instant::now();
    let name = spec.name.clone();
    tokio::task::spawn_blocking(move || {
        let mut printed = false;
        store.build_once(&spec, &mut |p| {
            if let airlock_image::Progress::Step { n, of, what } = p {
                if !printed {
                    println!("  image       building {name:?} (once; later demos reuse it)");
                    printed = true;
                }
                println!(
                    "              [{n}/{of}] {what} ({:.0}s)",
                    started.elapsed().as_secs_f64()
                );
            }
        })
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot build the demo image: {e}"))
}

async fn container_mode(a: &Args, state: &Path, runner: &Path) -> Result<Mode, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("it needs root (run the demo with sudo for isolated jobs)".into());
    }
    // Container sandboxes' root users are unprivileged on the host and must pass through.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| format!("cannot open up {}: {e}", state.display()))?;
    }
    let probe_root = state.join("containers");
    airlock_sandbox::container::ContainerBackend::probe(
        airlock_sandbox::container::ContainerConfig::new(probe_root),
        None,
    )
    .await
    .map_err(|e| e.to_string())?;
    let store = airlock_image::ImageStore::new(a.image_cache.clone());
    let spec = airlock_image::BuildSpec {
        name: "demo".into(),
        suite: "bookworm".into(),
        packages: vec![],
        runner: airlock_image::RunnerSource::Standin(runner.to_path_buf()),
        mirror: None,
        vm: None,
    };
    let m = build_demo_image(store.clone(), spec).await?;
    let images = state.join("images");
    if !images.exists() {
        std::os::unix::fs::symlink(store.root(), &images)
            .map_err(|e| format!("cannot link {}: {e}", images.display()))?;
    }
    println!(
        "  runner      {} in container sandboxes (image {}, {} packages)",
        m.runner.path,
        m.short(),
        m.packages.len()
    );
    // An address pair for ghsim's namespace that no sandbox subnet uses, in 198.18.0.0/15
    // (RFC 2544, for benchmarks): not a private range, so the demo sees it as sandboxes see the
    // internet, and never a real host.
    let n = std::process::id() % 250;
    let outside = airlock_net::Outside::new(
        &format!("demo-{}", std::process::id()),
        format!("198.19.{n}.1").parse().expect("an address"),
        format!("198.19.{n}.2").parse().expect("an address"),
    )
    .map_err(|e| e.to_string())?;
    Ok(Mode::Container { outside })
}

/// The stand-in runner is built with airlock and sits beside it.
pub fn locate_runner() -> Result<PathBuf, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find airlock's own path: {e}"))?;
    let dir = exe.parent().ok_or("airlock's path has no directory")?;
    for cand in [dir.join("airlock-runner"), dir.join("../airlock-runner")] {
        if cand.is_file() {
            return Ok(cand.canonicalize().unwrap_or(cand));
        }
    }
    Err(format!(
        "the stand-in runner airlock-runner is not next to {}; build it with: cargo build --release --bins",
        exe.display()
    ))
}

fn write_secret(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(value.as_bytes())
}

fn random_hex(n: usize) -> String {
    use rand::Rng;
    (0..n)
        .map(|_| format!("{:02x}", rand::thread_rng().gen::<u8>()))
        .collect()
}

/// Processes of this demo's sandboxes: marked as sandbox processes and working under `state`
/// (other airlock instances on the host are not the demo's business).
pub fn sandbox_processes(state: &Path) -> Vec<i32> {
    let needle = b"AIRLOCK_SANDBOX=";
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let marked = std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv.starts_with(needle)))
                .unwrap_or(false);
            marked
                && std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .is_ok_and(|cwd| cwd.starts_with(state))
        })
        .collect()
}

pub async fn run(a: Args) -> u8 {
    match demo(a).await {
        Ok(true) => 0,
        Ok(false) => crate::EXIT_UNEXPECTED,
        Err(e) => {
            eprintln!("airlock demo: {e}");
            crate::EXIT_FAILURE
        }
    }
}

async fn demo(a: Args) -> Result<bool, String> {
    let t0 = Instant::now();
    let runner = locate_runner()?;
    let tmp;
    let state: PathBuf = match &a.state_dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            d.canonicalize()
                .map_err(|e| format!("{}: {e}", d.display()))?
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("airlock-demo-")
                .tempdir()
                .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
            tmp.path().to_path_buf()
        }
    };
    let secret = random_hex(32);
    let token = format!("ghp_{}", random_hex(18));
    write_secret(&state.join("webhook-secret"), &secret)
        .map_err(|e| format!("cannot write the webhook secret: {e}"))?;
    write_secret(&state.join("token"), &token)
        .map_err(|e| format!("cannot write the token: {e}"))?;

    println!("airlock demo");
    println!("  state dir   {}", state.display());
    let mode = choose_backend(&a, &state, &runner).await?;
    let sim_cfg = SimConfig {
        webhook_secret: secret.into_bytes(),
        tokens: vec![token],
        heartbeat_timeout: Duration::from_secs(10),
        long_poll: Duration::from_secs(5),
        ..Default::default()
    };
    let sim = match &mode {
        Mode::Process => {
            println!(
                "  runner      {} (process backend: NOT isolated; fine for a demo)",
                runner.display()
            );
            Sim::start(sim_cfg, "127.0.0.1:0".parse().expect("a valid address")).await
        }
        Mode::Container { outside } | Mode::Microvm { outside } => {
            let l = outside
                .listen(0)
                .map_err(|e| format!("cannot listen in {}: {e}", outside.ns))?;
            Sim::start_on(sim_cfg, l).await
        }
    }
    .map_err(|e| e.to_string())?;
    match mode.outside() {
        None => println!("  GitHub      emulated by ghsim at {}", sim.url),
        Some(outside) => println!(
            "  GitHub      emulated by ghsim at {} (network namespace {}, reached through NAT)",
            sim.url, outside.ns
        ),
    }

    let container = mode.outside().is_some();
    let microvm = matches!(mode, Mode::Microvm { .. });
    let mut text = config_text(&state, &sim.url, &runner, container);
    if microvm {
        text.push_str(VM_POOL);
    }
    let all_jobs: Vec<&Expect> = JOBS
        .iter()
        .chain(if microvm { VM_JOBS } else { &[] })
        .collect();
    let (cfg, _) = airlock_config::load_str(&text, &state).map_err(|d| {
        let lines: Vec<String> = d.iter().map(|x| x.to_string()).collect();
        format!("the demo's own config is invalid:\n{}", lines.join("\n"))
    })?;
    let handle = airlock_daemon::start(cfg)
        .await
        .map_err(|e| super::serve::chain(&e))?;
    sim.sim.set_webhook_url(Some(format!(
        "http://127.0.0.1:{}/webhook",
        handle.addr.port()
    )));
    println!("  airlock     http://{} (metrics at /metrics)", handle.addr);
    if microvm {
        // The daemon probes the machine pool's kernel at start: say what it found.
        let probe_deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((accel, why)) = handle.inner.pool_accel("machine") {
                println!(
                    "  microVMs    boot with {accel}{}",
                    why.map(|w| format!(" ({w})")).unwrap_or_default()
                );
                break;
            }
            if Instant::now() > probe_deadline {
                println!("  microVMs    the kernel probe has not finished yet");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let mut ids = Vec::new();
    for repo in ["demo/app", "demo/web"] {
        let jobs: Vec<&Expect> = all_jobs
            .iter()
            .copied()
            .filter(|j| j.repo == repo)
            .collect();
        let wf = Workflow {
            repo: repo.into(),
            name: "CI".into(),
            jobs: jobs
                .iter()
                .map(|j| JobSpec {
                    name: j.name.into(),
                    labels: j.labels.iter().map(|s| s.to_string()).collect(),
                    steps: j.steps.iter().map(|s| s.to_string()).collect(),
                    drop_webhooks: j.drop_webhooks,
                })
                .collect(),
        };
        let sub = sim.sim.submit(&wf).map_err(|e| e.to_string())?;
        ids.extend(sub.job_ids.into_iter().zip(jobs));
    }
    println!(
        "\nsubmitted {} jobs over {} pools ({} with lost webhooks)\n",
        ids.len(),
        if microvm { 4 } else { 3 },
        all_jobs.iter().filter(|j| j.drop_webhooks).count()
    );

    let deadline = Instant::now() + a.timeout;
    let mut last = String::new();
    let finished = loop {
        let jobs = sim.sim.jobs();
        let count = |s: Status| jobs.iter().filter(|j| j.status == s).count();
        let runners = handle.inner.store().live_runners().unwrap_or_default();
        let mut by_state: Vec<(String, usize)> = Vec::new();
        for r in &runners {
            match by_state.iter_mut().find(|(s, _)| *s == r.state.as_str()) {
                Some((_, n)) => *n += 1,
                None => by_state.push((r.state.to_string(), 1)),
            }
        }
        let rs: Vec<String> = by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let line = format!(
            "jobs: {} queued · {} running · {} done    runners: {}",
            count(Status::Queued),
            count(Status::InProgress),
            count(Status::Completed),
            if rs.is_empty() {
                "none".to_string()
            } else {
                rs.join(" · ")
            }
        );
        if line != last {
            println!("  {:>5.1}s  {line}", t0.elapsed().as_secs_f64());
            last = line;
        }
        if count(Status::Completed) == jobs.len() && runners.is_empty() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let report = handle.drain(Duration::from_secs(10)).await;
    let jobs = sim.sim.jobs();
    println!();
    println!(
        "{:<14} {:<9} {:<28} {:<26} {:>8} {:>9}  {:<8} EXPECTED",
        "JOB", "REPO", "LABELS", "RUNNER", "WAIT", "DURATION", "RESULT"
    );
    let mut ok = finished;
    for (id, want) in &ids {
        let Some(j) = jobs.iter().find(|j| j.id == *id) else {
            continue;
        };
        let wait = j
            .started_ms
            .map(|s| format!("{:.2}s", (s - j.created_ms) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let dur = match (j.started_ms, j.completed_ms) {
            (Some(s), Some(c)) => format!("{:.2}s", (c - s) as f64 / 1000.0),
            _ => "-".into(),
        };
        let got = j.conclusion.as_deref().unwrap_or("-");
        let good = got == want.conclusion;
        ok &= good;
        println!(
            "{:<14} {:<9} {:<28} {:<26} {:>8} {:>9}  {:<8} {}",
            j.name,
            j.repo,
            j.labels.join(","),
            j.runner_name.as_deref().unwrap_or("-"),
            wait,
            dur,
            got,
            if good {
                format!("{} ✓", want.conclusion)
            } else {
                format!("{} ✗", want.conclusion)
            }
        );
    }

    // Nothing may be left behind.
    let mut leftovers = Vec::new();
    let regs = sim.sim.runners();
    if !regs.is_empty() {
        leftovers.push(format!(
            "{} runner registration(s) at GitHub: {:?}",
            regs.len(),
            regs.iter().map(|r| &r.1).collect::<Vec<_>>()
        ));
    }
    let sandboxes = std::fs::read_dir(state.join("sandboxes"))
        .map(|d| d.count())
        .unwrap_or(0);
    if sandboxes > 0 {
        leftovers.push(format!(
            "{sandboxes} sandbox director(ies) under {}",
            state.join("sandboxes").display()
        ));
    }
    let procs = sandbox_processes(&state);
    if !procs.is_empty() {
        leftovers.push(format!("sandbox processes still running: {procs:?}"));
    }
    if container {
        for r in airlock_sandbox::container::remnants(&state.join("containers")) {
            leftovers.push(format!("container sandbox: {r}"));
        }
    }
    if microvm {
        for r in airlock_sandbox::microvm::remnants(&state.join("vms")) {
            leftovers.push(format!("microVM sandbox: {r}"));
        }
    }
    if report.forced > 0 {
        leftovers.push(format!(
            "{} busy runner(s) had to be destroyed at shutdown",
            report.forced
        ));
    }
    let stats = sim.sim.stats();
    sim.shutdown().await;
    drop(mode);

    println!();
    println!(
        "GitHub API requests: {} ({} answered 304) for {} jobs; webhooks: {} delivered, {} dropped on purpose",
        stats.api_requests, stats.not_modified, ids.len(), stats.webhooks_sent, stats.webhooks_dropped
    );
    if !finished {
        println!(
            "✗ the jobs did not all finish within {}",
            humantime::format_duration(a.timeout)
        );
    }
    if leftovers.is_empty() {
        if microvm {
            println!(
                "✓ nothing left behind: no VMs, disks, taps, containers, overlays, links, cgroups, \
                 registrations, runner processes or live runners"
            );
        } else if container {
            println!(
                "✓ nothing left behind: no containers, overlays, links, cgroups, registrations, \
                 runner processes or live runners"
            );
        } else {
            println!(
                "✓ nothing left behind: no sandboxes, registrations, runner processes or live runners"
            );
        }
    } else {
        ok = false;
        for l in &leftovers {
            println!("✗ left behind: {l}");
        }
    }
    println!(
        "{} in {:.1}s",
        if ok {
            "✓ demo passed"
        } else {
            "✗ demo FAILED"
        },
        t0.elapsed().as_secs_f64()
    );
    Ok(ok)
}
