//! End to end on the microVM backend, as root: ghsim plays GitHub from a network namespace of
//! its own, airlock boots every job of a `microvm` pool in a fresh QEMU VM (TCG here: this host's
//! KVM cannot boot stock kernels) from an image built with `--vm`, beside a container pool of the
//! same daemon, and afterwards nothing of any sandbox is left on the host.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use airlock_ghsim::{Faults, JobSpec, Sim, SimConfig, Status};
use common::*;

fn image_store() -> airlock_image::ImageStore {
    airlock_image::ImageStore::new(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("airlock-test-images"),
    )
}

fn standin_dir() -> PathBuf {
    target_dir().parent().unwrap().join("standin-bin")
}

/// The e2e VM image: the stand-in runner, Debian's cloud kernel, the guest agent, sudo and
/// bubblewrap; built once per target directory.
fn vm_image() -> airlock_image::Manifest {
    let agent = standin_dir().join("airlock-agent");
    assert!(
        agent.is_file(),
        "{} is missing: run scripts/build-standin.sh",
        agent.display()
    );
    image_store()
        .build_once(
            &airlock_image::BuildSpec {
                name: "test-vm-standin".into(),
                suite: "bookworm".into(),
                packages: vec!["bubblewrap".into()],
                runner: airlock_image::RunnerSource::Standin(standin_dir().join("airlock-runner")),
                mirror: None,
                vm: Some(airlock_image::VmBuild {
                    agent,
                    kernel_packages: vec![],
                    docker: false,
                }),
            },
            &mut |p| {
                if let airlock_image::Progress::Step { n, of, what } = p {
                    eprintln!("e2e VM image: {n}/{of} {what}");
                }
            },
        )
        .expect("building the e2e VM image (needs mmdebstrap, the Debian mirror, mkfs.ext4)")
}

fn container_image() -> airlock_image::Manifest {
    image_store()
        .build_once(
            &airlock_image::BuildSpec {
                name: "test-standin".into(),
                suite: "bookworm".into(),
                packages: vec![],
                runner: airlock_image::RunnerSource::Standin(standin_dir().join("airlock-runner")),
                mirror: None,
                vm: None,
            },
            &mut |_| {},
        )
        .expect("building the e2e container image")
}

struct VEnv {
    env: Env,
    _net: airlock_net::Outside,
}

impl VEnv {
    fn remnants(&self) -> Vec<String> {
        let mut v = airlock_sandbox::microvm::remnants(&self.env.state().join("vms"));
        v.extend(airlock_sandbox::container::remnants(
            &self.env.state().join("containers"),
        ));
        v
    }
}

/// Kills what a failed test left: VMM processes under the state directory, then the rest is
/// reaped by a fresh backend.
impl Drop for VEnv {
    fn drop(&mut self) {
        let vms = self.env.state().join("vms");
        let containers = self.env.state().join("containers");
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use airlock_sandbox::Backend;
                if vms.exists() {
                    let cfg = airlock_sandbox::microvm::MicrovmConfig::new(vms);
                    if let Ok(b) = airlock_sandbox::microvm::MicrovmBackend::probe(cfg, None).await
                    {
                        for (id, _) in b.list().await.unwrap_or_default() {
                            let _ = b.destroy(&id).await;
                        }
                    }
                }
                if containers.exists() {
                    let cfg = airlock_sandbox::container::ContainerConfig::new(containers);
                    if let Ok(b) =
                        airlock_sandbox::container::ContainerBackend::probe(cfg, None).await
                    {
                        for (id, _) in b.list().await.unwrap_or_default() {
                            let _ = b.destroy(&id).await;
                        }
                    }
                }
            });
        })
        .join();
    }
}

/// A daemon with a microVM pool `vm` (labels self-hosted, linux, vm) and a container pool `box`
/// (self-hosted, linux, box), ghsim in its own namespace.
async fn vm_env(slot: u8, vm_extra: &str) -> VEnv {
    assert!(
        nix::unistd::geteuid().is_root(),
        "microVM e2e tests need root (CI runs as root)"
    );
    let vm = vm_image();
    let ct = container_image();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    write_secret(&dir.path().join("webhook-secret"), SECRET);
    write_secret(&dir.path().join("token"), TOKEN);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::symlink(image_store().root(), state.join("images")).unwrap();
    let net = airlock_net::Outside::new(
        &format!("vme2e-{}-{slot}", std::process::id()),
        format!("10.252.{slot}.1").parse().unwrap(),
        format!("10.252.{slot}.2").parse().unwrap(),
    )
    .unwrap();
    let listener = net.listen(0).unwrap();
    let sim = Sim::start_on(
        SimConfig {
            webhook_secret: SECRET.as_bytes().to_vec(),
            tokens: vec![TOKEN.into()],
            heartbeat_timeout: Duration::from_secs(10),
            long_poll: Duration::from_secs(2),
            ..SimConfig::default()
        },
        listener,
    )
    .await
    .unwrap();
    sim.sim.set_faults(Faults::default());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{}\"\ndrain_grace = \"30s\"\n\n\
         [github]\napi_url = \"{}\"\nwebhook_secret_file = \"webhook-secret\"\ntoken_file = \"token\"\n\
         poll_interval = \"5s\"\nrequest_timeout = \"5s\"\n\n\
         [container]\nsubnet = \"10.{}.0.0/16\"\n\n\
         [microvm]\nuid_base = {}\n\n\
         [[pool]]\nname = \"vm\"\nscope = \"repo:octo/hello\"\nlabels = [\"self-hosted\", \"linux\", \"vm\"]\n\
         backend = \"microvm\"\nimage = \"{}\"\nmax_runners = 2\nmemory_mib = 768\ncpus = 1\n{vm_extra}\n\n\
         [pool.microvm]\naccel = \"tcg\"\ndisk_gib = 2\n\n\
         [[pool]]\nname = \"box\"\nscope = \"repo:octo/hello\"\nlabels = [\"self-hosted\", \"linux\", \"box\"]\n\
         backend = \"container\"\nimage = \"{}\"\nmax_runners = 2\nmemory_mib = 256\n",
        state.display(),
        sim.url,
        140 + slot,
        400_000 + 1000 * slot as u32,
        vm.name,
        ct.name,
    );
    let mut env = Env {
        dir,
        sim: Some(sim),
        daemon: None,
        config,
    };
    env.start_daemon().await;
    let port = env.daemon().addr.port();
    env.sim()
        .set_webhook_url(Some(format!("http://127.0.0.1:{port}/webhook")));
    VEnv { env, _net: net }
}

fn job(name: &str, label: &str, steps: &[&str]) -> JobSpec {
    JobSpec {
        name: name.into(),
        labels: vec!["self-hosted".into(), "linux".into(), label.into()],
        steps: steps.iter().map(|s| s.to_string()).collect(),
        drop_webhooks: false,
    }
}

fn conclusions(sim: &airlock_ghsim::Sim) -> Vec<(String, Option<String>)> {
    let mut v: Vec<_> = sim
        .jobs()
        .into_iter()
        .map(|j| (j.name, j.conclusion))
        .collect();
    v.sort();
    v
}

/// The logs of finished sandboxes, concatenated (they are kept in `state/logs`).
fn kept_logs(state: &std::path::Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(state.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_machine_jobs_run_in_vms_beside_a_container_pool() {
    let v = vm_env(1, "").await;
    let kernel = vm_image().vm.unwrap().kernels[0].version.clone();
    let deb = "mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/opt/airlock-demo && \
               printf 'Package: airlock-demo\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: t <t@t>\\nDescription: t\\n' > /tmp/pkg/DEBIAN/control && \
               echo hi > /tmp/pkg/opt/airlock-demo/hi && dpkg-deb --build /tmp/pkg /tmp/airlock-demo.deb >/dev/null && \
               sudo -n dpkg -i /tmp/airlock-demo.deb && dpkg -s airlock-demo | grep -q 'Status: install ok installed' && echo DPKG-INSTALLED";
    v.env.submit_specs(
        "octo/hello",
        vec![
            job(
                "pinned-kernel",
                "vm",
                &[&format!("uname -r; test \"$(uname -r)\" = {kernel}")],
            ),
            job(
                "root",
                "vm",
                &["test \"$(id -u)\" = 1001", "test \"$(sudo -n id -u)\" = 0", deb],
            ),
            job(
                "nested-sandboxes",
                "vm",
                &[
                    "unshare -r sh -c 'echo unshare-uid=$(id -u)' | grep unshare-uid=0",
                    "bwrap --ro-bind / / --dev /dev --proc /proc --unshare-all sh -c 'echo BWRAP-OK $$'",
                ],
            ),
            job("fails-in-vm", "vm", &["exit 5"]),
            job("in-a-container", "box", &["test \"$(id -u)\" = 1001", "test ! -e /dev/vda"]),
        ],
    );
    v.env.wait_all_done(Duration::from_secs(300)).await;
    let want: Vec<(String, Option<String>)> = [
        ("fails-in-vm", "failure"),
        ("in-a-container", "success"),
        ("nested-sandboxes", "success"),
        ("pinned-kernel", "success"),
        ("root", "success"),
    ]
    .iter()
    .map(|(n, c)| (n.to_string(), Some(c.to_string())))
    .collect();
    let logs = kept_logs(&v.env.state());
    assert_eq!(conclusions(v.env.sim()), want, "{logs}");
    // The steps' output is in the jobs' console logs.
    assert!(logs.contains(&kernel), "{logs}");
    assert!(logs.contains("DPKG-INSTALLED"), "{logs}");
    assert!(logs.contains("BWRAP-OK"), "{logs}");
    assert!(logs.contains("airlock-agent"), "the agent's lines: {logs}");
    let m = v.env.metrics();
    assert_eq!(
        metric(
            &m,
            "airlock_pool_info{pool=\"vm\",backend=\"microvm\",accel=\"tcg\"}"
        ),
        1.0,
        "{m}"
    );
    v.env.assert_nothing_left();
    let left = v.remnants();
    assert!(left.is_empty(), "{left:?}");
    image_store().verify(&vm_image()).unwrap();
}

/// A boot that stalls (here: its VMM stopped with SIGSTOP the moment it appears) is killed at
/// `boot_timeout` and replaced, and the job still runs; then a crash of the daemon with a VM
/// mid-job: the restarted daemon adopts it, the job succeeds, nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_boot_is_replaced_and_a_crash_mid_job_loses_nothing() {
    let mut v = vm_env(2, "boot_timeout = \"25s\"").await;
    v.env
        .submit_specs("octo/hello", vec![job("after-stall", "vm", &["echo ran"])]);
    // Stall the first VM's boot.
    let vms = v.env.state().join("vms");
    let mut stopped = None;
    for _ in 0..400 {
        if let Some(pid) = vmm_pids(&vms).into_iter().next() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGSTOP,
            )
            .unwrap();
            stopped = Some(pid);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stopped.is_some(), "no VMM appeared");
    v.env.wait_all_done(Duration::from_secs(180)).await;
    assert_eq!(
        conclusions(v.env.sim()),
        vec![("after-stall".to_string(), Some("success".to_string()))]
    );
    let m = v.env.metrics();
    assert!(
        metric(
            &m,
            "airlock_runners_stopped_total{pool=\"vm\",reason=\"boot_timeout\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{}", stopped.unwrap())).exists(),
        "the stalled VMM was killed"
    );

    // A crash with a VM running a job: the VM outlives the daemon and is adopted.
    v.env.submit_specs(
        "octo/hello",
        vec![job("across-crash", "vm", &["sleep 10", "echo done"])],
    );
    assert!(
        wait_until(Duration::from_secs(120), || {
            v.env
                .sim()
                .jobs()
                .iter()
                .any(|j| j.name == "across-crash" && j.status == Status::InProgress)
        })
        .await
    );
    v.env.daemon.take().unwrap().crash().await;
    assert!(
        !vmm_pids(&vms).is_empty(),
        "the VM outlives a crashed daemon"
    );
    v.env.start_daemon().await;
    let port = v.env.daemon().addr.port();
    v.env
        .sim()
        .set_webhook_url(Some(format!("http://127.0.0.1:{port}/webhook")));
    v.env.wait_all_done(Duration::from_secs(120)).await;
    assert!(v
        .env
        .sim()
        .jobs()
        .iter()
        .all(|j| j.conclusion.as_deref() == Some("success")));
    v.env.assert_nothing_left();
    let left = v.remnants();
    assert!(left.is_empty(), "{left:?}");
}

/// Pids of QEMU processes whose working directory is below `vms`.
fn vmm_pids(vms: &std::path::Path) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        if exe.to_string_lossy().contains("qemu-system") && cwd.starts_with(vms) {
            out.push(pid);
        }
    }
    out
}

/// The Docker VM image: as [`vm_image`] with `docker.io` (the agent starts dockerd) and
/// `busybox-static`, whose one static binary makes a container root filesystem without a libc.
fn docker_vm_image() -> airlock_image::Manifest {
    let agent = standin_dir().join("airlock-agent");
    assert!(
        agent.is_file(),
        "{} is missing: run scripts/build-standin.sh",
        agent.display()
    );
    let started = std::time::Instant::now();
    let m = image_store()
        .build_once(
            &airlock_image::BuildSpec {
                name: "test-vm-docker".into(),
                suite: "bookworm".into(),
                packages: vec!["busybox-static".into()],
                runner: airlock_image::RunnerSource::Standin(standin_dir().join("airlock-runner")),
                mirror: None,
                vm: Some(airlock_image::VmBuild {
                    agent,
                    kernel_packages: vec![],
                    docker: true,
                }),
            },
            &mut |p| {
                if let airlock_image::Progress::Step { n, of, what } = p {
                    eprintln!("docker VM image: {n}/{of} {what}");
                }
            },
        )
        .expect("building the docker VM image (needs mmdebstrap, the Debian mirror, mkfs.ext4)");
    eprintln!(
        "docker VM image ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    m
}

/// A daemon with one microVM pool `dock` (labels self-hosted, linux, docker) on the Docker image,
/// with room for dockerd and its images, ghsim in its own namespace.
async fn docker_env(slot: u8) -> VEnv {
    assert!(
        nix::unistd::geteuid().is_root(),
        "microVM e2e tests need root (CI runs as root)"
    );
    let vm = docker_vm_image();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    write_secret(&dir.path().join("webhook-secret"), SECRET);
    write_secret(&dir.path().join("token"), TOKEN);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::symlink(image_store().root(), state.join("images")).unwrap();
    let net = airlock_net::Outside::new(
        &format!("vme2e-{}-{slot}", std::process::id()),
        format!("10.252.{slot}.1").parse().unwrap(),
        format!("10.252.{slot}.2").parse().unwrap(),
    )
    .unwrap();
    let listener = net.listen(0).unwrap();
    let sim = Sim::start_on(
        SimConfig {
            webhook_secret: SECRET.as_bytes().to_vec(),
            tokens: vec![TOKEN.into()],
            heartbeat_timeout: Duration::from_secs(10),
            long_poll: Duration::from_secs(2),
            ..SimConfig::default()
        },
        listener,
    )
    .await
    .unwrap();
    sim.sim.set_faults(Faults::default());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{}\"\ndrain_grace = \"30s\"\n\n\
         [github]\napi_url = \"{}\"\nwebhook_secret_file = \"webhook-secret\"\ntoken_file = \"token\"\n\
         poll_interval = \"5s\"\nrequest_timeout = \"5s\"\n\n\
         [container]\nsubnet = \"10.{}.0.0/16\"\n\n\
         [microvm]\nuid_base = {}\n\n\
         [[pool]]\nname = \"dock\"\nscope = \"repo:octo/hello\"\nlabels = [\"self-hosted\", \"linux\", \"docker\"]\n\
         backend = \"microvm\"\nimage = \"{}\"\nmax_runners = 1\nmemory_mib = 1536\ncpus = 2\n\n\
         [pool.microvm]\naccel = \"tcg\"\ndisk_gib = 4\n",
        state.display(),
        sim.url,
        140 + slot,
        400_000 + 1000 * slot as u32,
        vm.name,
    );
    let mut env = Env {
        dir,
        sim: Some(sim),
        daemon: None,
        config,
    };
    env.start_daemon().await;
    let port = env.daemon().addr.port();
    env.sim()
        .set_webhook_url(Some(format!("http://127.0.0.1:{port}/webhook")));
    VEnv { env, _net: net }
}

/// `docker run` inside a microVM job: the job makes a one-binary root filesystem, imports it,
/// saves it to a tarball, removes it and loads it back (there is no registry, and nothing goes
/// to any outside address), then runs it without a network and on Docker's default bridge; the
/// containers' output is in the job's kept log. The runner uses Docker through the `docker`
/// group, without sudo.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_runs_inside_a_vm_job() {
    let v = docker_env(3).await;
    let started = std::time::Instant::now();
    let rootfs =
        "set -e; rm -rf /tmp/tiny; mkdir -p /tmp/tiny/bin; cp /bin/busybox /tmp/tiny/bin/; \
                  ln -s busybox /tmp/tiny/bin/sh; tar -C /tmp/tiny -cf /tmp/tiny.tar .";
    v.env.submit_specs(
        "octo/hello",
        vec![job(
            "docker",
            "docker",
            &[
                "id -nG | tr ' ' '\\n' | grep -qx docker && echo IN-DOCKER-GROUP",
                "docker version --format 'server {{.Server.Version}}'",
                rootfs,
                "docker import /tmp/tiny.tar airlock-tiny:1 && docker save -o /tmp/tiny-image.tar airlock-tiny:1 \
                 && docker rmi airlock-tiny:1 && ! docker image inspect airlock-tiny:1 >/dev/null 2>&1 \
                 && docker load -i /tmp/tiny-image.tar",
                "docker run --rm --network none airlock-tiny:1 sh -c 'echo NO-NETWORK-$((6*7)); ls /sys/class/net'",
                // The default bridge: the container reaches its gateway (docker0, inside the VM).
                "docker run --rm airlock-tiny:1 sh -c 'ip -4 addr show eth0; \
                 gw=$(ip route | awk \"/^default/ {print \\$3}\"); ping -c 1 -W 5 $gw && echo BRIDGE-$((6*7))'",
            ],
        )],
    );
    v.env.wait_all_done(Duration::from_secs(200)).await;
    eprintln!(
        "docker job done in {:.1} s (submit to completion)",
        started.elapsed().as_secs_f64()
    );
    let logs = kept_logs(&v.env.state());
    // The guest's timeline (boot, dockerd start, runner), for whoever reads the test's output.
    for l in logs.lines().filter(|l| l.starts_with("airlock-agent:")) {
        eprintln!("{l}");
    }
    assert_eq!(
        conclusions(v.env.sim()),
        vec![("docker".to_string(), Some("success".to_string()))],
        "{logs}"
    );
    for marker in [
        "IN-DOCKER-GROUP",
        "Loaded image: airlock-tiny:1",
        "NO-NETWORK-42",
        "BRIDGE-42",
        "dockerd ready in",
    ] {
        assert!(
            logs.contains(marker),
            "{marker} missing from the log: {logs}"
        );
    }
    v.env.assert_nothing_left();
    let left = v.remnants();
    assert!(left.is_empty(), "{left:?}");
}
