//! The container end-to-end harness (as root): ghsim in a network namespace of its own, airlock
//! on the container backend with an image built once per target directory, and everything a
//! sandbox could leave on the host (`CEnv::remnants`).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use airlock_ghsim::{Faults, JobSpec, Sim, SimConfig};

use super::*;

/// The stand-in runner to put in the image: the static build, or the glibc one (Debian images
/// share the host's glibc).
pub fn standin() -> PathBuf {
    let static_bin = target_dir()
        .parent()
        .unwrap()
        .join("standin-bin/airlock-runner");
    if static_bin.is_file() {
        static_bin
    } else {
        runner_bin()
    }
}

pub fn image_store() -> airlock_image::ImageStore {
    airlock_image::ImageStore::new(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("airlock-test-images"),
    )
}

/// The e2e image (minbase + the stand-in), built once per target directory.
pub fn image() -> airlock_image::Manifest {
    image_store()
        .build_once(
            &airlock_image::BuildSpec {
                name: "test-standin".into(),
                suite: "bookworm".into(),
                packages: vec![],
                runner: airlock_image::RunnerSource::Standin(standin()),
                mirror: None,
                vm: None,
            },
            &mut |p| {
                if let airlock_image::Progress::Step { n, of, what } = p {
                    eprintln!("e2e image: {n}/{of} {what}");
                }
            },
        )
        .expect("building the e2e image (needs mmdebstrap and the Debian mirror)")
}

pub struct CEnv {
    pub env: Env,
    pub net: airlock_net::Outside,
    pub _reaper: Reaper,
}

/// Destroys the containers a test left when it ends, also when it fails part-way.
pub struct Reaper(pub PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let root = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use airlock_sandbox::Backend;
                if !root.exists() {
                    return;
                }
                let cfg = airlock_sandbox::container::ContainerConfig::new(root);
                if let Ok(b) = airlock_sandbox::container::ContainerBackend::probe(cfg, None).await
                {
                    for (id, _) in b.list().await.unwrap_or_default() {
                        let _ = b.destroy(&id).await;
                    }
                }
            });
        })
        .join();
    }
}

impl CEnv {
    pub fn containers(&self) -> PathBuf {
        self.env.state().join("containers")
    }
    /// Everything of any sandbox left on the host: the backend's remnants, and the egress side
    /// (session files, finished reports not yet stored, and every nftables element of a link of
    /// any sandbox this daemon ever made, found by the link names of the store's runners).
    pub fn remnants(&self) -> Vec<String> {
        let mut out = airlock_sandbox::container::remnants(&self.containers());
        out.extend(self.egress_remnants());
        out
    }

    pub fn egress_remnants(&self) -> Vec<String> {
        let mut out = Vec::new();
        let dir = self.env.state().join("egress");
        for d in [dir.clone(), dir.join("done")] {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().extension().is_some_and(|x| x == "json") {
                    out.push(format!("egress file {}", e.path().display()));
                }
            }
        }
        let Some(daemon) = &self.env.daemon else {
            return out;
        };
        let tag = airlock_sandbox::container::tag_of(&self.containers());
        let links: Vec<String> = daemon
            .inner
            .store()
            .all_runners()
            .unwrap()
            .iter()
            .map(|r| airlock_net::link_name(&format!("{tag}/{}", r.sandbox_id)))
            .collect();
        let table = airlock_net::rules::attached().unwrap();
        for l in &links {
            if table.links.iter().any(|(x, _)| x == l) {
                out.push(format!("nft links element {l}"));
            }
            if table.dns.iter().any(|(x, _)| x == l) {
                out.push(format!("nft dns element {l}"));
            }
            if table.named.contains(l) {
                out.push(format!("nft named element {l}"));
            }
            if table.proxied.contains(l) {
                out.push(format!("nft proxied element {l}"));
            }
            if table.flows.contains(l) {
                out.push(format!("nft flow counters of {l}"));
            }
        }
        out
    }

    /// `remnants`, allowing the daemon a few seconds to store the last finished reports.
    pub async fn remnants_settled(&self) -> Vec<String> {
        let mut left = self.remnants();
        for _ in 0..50 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = self.remnants();
        }
        left
    }
}

pub async fn container_env(slot: u8, max: u32, extra: &str) -> CEnv {
    container_env_with(slot, max, extra, true).await
}

pub async fn container_env_with(slot: u8, max: u32, extra: &str, start: bool) -> CEnv {
    assert!(
        nix::unistd::geteuid().is_root(),
        "container e2e tests need root (CI runs as root)"
    );
    let m = image();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    write_secret(&dir.path().join("webhook-secret"), SECRET);
    write_secret(&dir.path().join("token"), TOKEN);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::symlink(image_store().root(), state.join("images")).unwrap();
    let net = airlock_net::Outside::new(
        &format!("e2e-{}-{slot}", std::process::id()),
        format!("198.18.{slot}.5").parse().unwrap(),
        format!("198.18.{slot}.6").parse().unwrap(),
    )
    .unwrap();
    let listener = net.listen(0).unwrap();
    let sim = Sim::start_on(
        SimConfig {
            webhook_secret: SECRET.as_bytes().to_vec(),
            tokens: vec![TOKEN.into()],
            heartbeat_timeout: Duration::from_secs(5),
            long_poll: Duration::from_secs(2),
            ..SimConfig::default()
        },
        listener,
    )
    .await
    .unwrap();
    sim.sim.set_faults(Faults::default());
    let config = format!(
        "[server]\nlisten = \"0.0.0.0:0\"\nstate_dir = \"{}\"\ndrain_grace = \"20s\"\n\n\
         [github]\napi_url = \"{}\"\nwebhook_secret_file = \"webhook-secret\"\ntoken_file = \"token\"\n\
         poll_interval = \"5s\"\nrequest_timeout = \"5s\"\n\n\
         [container]\nsubnet = \"10.{}.0.0/16\"\n\n\
         [[pool]]\nname = \"box\"\nscope = \"repo:octo/hello\"\nlabels = [\"self-hosted\", \"linux\", \"box\"]\n\
         backend = \"container\"\nimage = \"{}\"\nmax_runners = {max}\nmemory_mib = 256\npids_max = 512\ncpus = 1\n{extra}\n",
        state.display(),
        sim.url,
        200 + slot,
        m.name,
    );
    let mut env = Env {
        dir,
        sim: Some(sim),
        daemon: None,
        config,
    };
    if start {
        env.start_daemon().await;
        // Webhooks go to the daemon on the host's loopback (ghsim's client is in the host's
        // namespace).
        let port = env.daemon().addr.port();
        env.sim()
            .set_webhook_url(Some(format!("http://127.0.0.1:{port}/webhook")));
    }
    let reaper = Reaper(env.state().join("containers"));
    CEnv {
        env,
        net,
        _reaper: reaper,
    }
}

pub fn job(name: &str, steps: &[&str]) -> JobSpec {
    JobSpec {
        name: name.into(),
        labels: vec!["self-hosted".into(), "linux".into(), "box".into()],
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
