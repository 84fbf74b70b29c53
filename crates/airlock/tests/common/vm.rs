//! The microVM end-to-end harness: bootable test images built once per target directory, and
//! a daemon whose pools are the caller's, with ghsim in a network namespace of its own (where
//! the internet would be) and everything a test leaves reaped when it ends.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_ghsim::{Faults, JobSpec, Sim, SimConfig};

use super::*;

pub fn image_store() -> airlock_image::ImageStore {
    airlock_image::ImageStore::new(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("airlock-test-images"),
    )
}

fn standin_dir() -> PathBuf {
    target_dir().parent().unwrap().join("standin-bin")
}

/// An image named `name` with the stand-in runner and `packages`, bootable as a microVM (with
/// Docker when `docker`) or not; built once per target directory.
pub fn image(name: &str, packages: &[&str], vm: Option<bool>) -> airlock_image::Manifest {
    image_with_kernels(name, packages, vm, &[])
}

/// [`image`] with the kernel packages `kernels` (empty: the default one).
pub fn image_with_kernels(
    name: &str,
    packages: &[&str],
    vm: Option<bool>,
    kernels: &[&str],
) -> airlock_image::Manifest {
    let vm = vm.map(|docker| {
        let agent = standin_dir().join("airlock-agent");
        assert!(
            agent.is_file(),
            "{} is missing: run scripts/build-standin.sh",
            agent.display()
        );
        airlock_image::VmBuild {
            agent,
            kernel_packages: kernels.iter().map(|k| k.to_string()).collect(),
            docker,
        }
    });
    let started = std::time::Instant::now();
    let m = image_store()
        .build_once(
            &airlock_image::BuildSpec {
                name: name.into(),
                suite: "bookworm".into(),
                packages: packages.iter().map(|p| p.to_string()).collect(),
                runner: airlock_image::RunnerSource::Standin(standin_dir().join("airlock-runner")),
                mirror: None,
                vm,
            },
            &mut |p| {
                if let airlock_image::Progress::Step { n, of, what } = p {
                    eprintln!("image {name}: {n}/{of} {what}");
                }
            },
        )
        .expect("building a test image (needs mmdebstrap, the Debian mirror, mkfs.ext4)");
    eprintln!(
        "image {name} ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    m
}

/// The microVM test image: the stand-in, Debian's cloud kernel, the agent, sudo, bubblewrap.
pub fn vm_image() -> airlock_image::Manifest {
    image("test-vm-standin", &["bubblewrap"], Some(false))
}

/// The container test image (the one the container e2e tests use).
pub fn container_image() -> airlock_image::Manifest {
    image("test-standin", &[], None)
}

/// A microVM pool `name` serving jobs labelled self-hosted, linux, `label` on `image`; `extra`
/// goes into its `[[pool]]` table, `microvm` into its `[pool.microvm]`.
pub fn vm_pool(name: &str, label: &str, image: &str, extra: &str, microvm: &str) -> String {
    format!(
        "\n[[pool]]\nname = \"{name}\"\nscope = \"repo:octo/hello\"\nlabels = [\"self-hosted\", \"linux\", \"{label}\"]\n\
         backend = \"microvm\"\nimage = \"{image}\"\n{extra}\n\n[pool.microvm]\naccel = \"tcg\"\n{microvm}\n"
    )
}

/// A container pool `name` serving jobs labelled self-hosted, linux, `label`.
pub fn container_pool(name: &str, label: &str, extra: &str) -> String {
    format!(
        "\n[[pool]]\nname = \"{name}\"\nscope = \"repo:octo/hello\"\nlabels = [\"self-hosted\", \"linux\", \"{label}\"]\n\
         backend = \"container\"\nimage = \"{}\"\nmemory_mib = 256\n{extra}\n",
        container_image().name
    )
}

pub struct VEnv {
    pub env: Env,
    _net: airlock_net::Outside,
}

impl VEnv {
    /// Drains the daemon (SIGTERM's path): idle runners are removed, busy ones finish.
    pub async fn drain(&mut self) {
        if let Some(d) = self.env.daemon.take() {
            d.drain(Duration::from_secs(30)).await;
        }
    }

    pub fn remnants(&self) -> Vec<String> {
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

/// A daemon with `pools` (TOML `[[pool]]` tables, see `vm_pool` and `container_pool`), its
/// sandboxes on subnet 10.(220+slot).0.0/16 and VMM uids from 400000 + 1000 × slot, ghsim in its
/// own namespace at 198.18.`slot`.10.
pub async fn vm_env(slot: u8, pools: &str) -> VEnv {
    vm_env_with(slot, "", pools).await
}

/// [`vm_env`] with `microvm` (TOML keys) added to the `[microvm]` section.
pub async fn vm_env_with(slot: u8, microvm: &str, pools: &str) -> VEnv {
    let mut v = vm_env_unstarted(slot, microvm, pools).await;
    v.env.start_daemon().await;
    let port = v.env.daemon().addr.port();
    v.env
        .sim()
        .set_webhook_url(Some(format!("http://127.0.0.1:{port}/webhook")));
    v
}

/// [`vm_env_with`] with the daemon not started (its config in `env.config`).
pub async fn vm_env_unstarted(slot: u8, microvm: &str, pools: &str) -> VEnv {
    assert!(
        nix::unistd::geteuid().is_root(),
        "microVM e2e tests need root (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    write_secret(&dir.path().join("webhook-secret"), SECRET);
    write_secret(&dir.path().join("token"), TOKEN);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::symlink(image_store().root(), state.join("images")).unwrap();
    let net = airlock_net::Outside::new(
        &format!("vme2e-{}-{slot}", std::process::id()),
        format!("198.18.{slot}.9").parse().unwrap(),
        format!("198.18.{slot}.10").parse().unwrap(),
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
         [microvm]\nuid_base = {}\n{microvm}\n{pools}",
        state.display(),
        sim.url,
        220 + slot,
        400_000 + 1000 * slot as u32,
    );
    let env = Env {
        dir,
        sim: Some(sim),
        daemon: None,
        config,
    };
    VEnv { env, _net: net }
}

pub fn job(name: &str, label: &str, steps: &[&str]) -> JobSpec {
    JobSpec {
        name: name.into(),
        labels: vec!["self-hosted".into(), "linux".into(), label.into()],
        steps: steps.iter().map(|s| s.to_string()).collect(),
        drop_webhooks: false,
    }
}

pub fn conclusions(sim: &airlock_ghsim::Sim) -> Vec<(String, Option<String>)> {
    let mut v: Vec<_> = sim
        .jobs()
        .into_iter()
        .map(|j| (j.name, j.conclusion))
        .collect();
    v.sort();
    v
}

/// The logs of finished sandboxes, concatenated (they are kept in `state/logs`).
pub fn kept_logs(state: &Path) -> String {
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

/// The console logs of the VMs still there (`state/vms/*/runner.log`), each headed by its id,
/// for failure messages.
pub fn live_vm_logs(state: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(state.join("vms"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let log = std::fs::read_to_string(e.path().join("runner.log")).unwrap_or_default();
        out.push_str(&format!("--- {}\n{log}\n", e.file_name().to_string_lossy()));
    }
    out
}

/// `shared/vmm/NAME` beside the checkout (or in `AIRLOCK_VMM_DIR`): Firecracker's and Cloud
/// Hypervisor's release binaries.
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

/// Pids of QEMU processes whose working directory is below `vms`.
pub fn vmm_pids(vms: &Path) -> Vec<i32> {
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
