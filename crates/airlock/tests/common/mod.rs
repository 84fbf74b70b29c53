//! The end-to-end harness: a real ghsim and a real airlock daemon talking HTTP over loopback,
//! with the process backend running the real stand-in runner binary.
#![allow(dead_code)]

pub mod container;
pub mod vm;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_ghsim::{Faults, JobSpec, Running, Sim, SimConfig, Status, Workflow};

pub const SECRET: &str = "e2e-webhook-secret";
pub const TOKEN: &str = "ghp_e2etoken";

/// The workspace's target directory (where cargo put this test's binaries).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// ghsim's stand-in runner, built (with the helpers every sandbox needs: the supervisor and the
/// network hook) if a narrower `cargo test -p` or `cargo bench -p` did not build them, in the
/// profile this program was built in.
pub fn runner_bin() -> PathBuf {
    let dir = target_dir();
    let p = dir.join("airlock-runner");
    let helpers = ["airlock-runner", "airlock-supervise", "airlock-nethook"];
    if !helpers.iter().all(|h| dir.join(h).is_file()) {
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "-p",
            "airlock-runner",
            "-p",
            "airlock-sandbox",
            "-p",
            "airlock-net",
            "--bins",
        ]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("cargo runs");
        assert!(
            st.success(),
            "building airlock-runner and the sandbox helpers failed"
        );
    }
    p
}

pub fn write_secret(p: &Path, v: &str) {
    std::fs::write(p, v).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

pub struct Pool<'a> {
    pub name: &'a str,
    pub scope: &'a str,
    pub labels: &'a [&'a str],
    pub max: u32,
    pub extra: &'a str,
}

pub fn pool<'a>(name: &'a str, labels: &'a [&'a str]) -> Pool<'a> {
    Pool {
        name,
        scope: "repo:octo/hello",
        labels,
        max: 8,
        extra: "",
    }
}

pub fn config_text(
    state: &Path,
    api: &str,
    listen: &str,
    poll: &str,
    pools: &[Pool<'_>],
    runner: &Path,
) -> String {
    let mut s = format!(
        "[server]\nlisten = \"{listen}\"\nstate_dir = \"{}\"\ndrain_grace = \"20s\"\n\n[github]\napi_url = \"{api}\"\n\
         webhook_secret_file = \"webhook-secret\"\ntoken_file = \"token\"\npoll_interval = \"{poll}\"\nrequest_timeout = \"5s\"\nwrite_interval = \"20ms\"\n",
        state.display()
    );
    for p in pools {
        let labels: Vec<String> = p.labels.iter().map(|l| format!("\"{l}\"")).collect();
        s.push_str(&format!(
            "\n[[pool]]\nname = \"{}\"\nscope = \"{}\"\nlabels = [{}]\nrunner_command = \"{}\"\nmax_runners = {}\n{}\n",
            p.name,
            p.scope,
            labels.join(", "),
            runner.display(),
            p.max,
            p.extra
        ));
    }
    s
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub sim: Option<Running>,
    pub daemon: Option<airlock_daemon::Handle>,
    pub config: String,
}

impl Env {
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn sim(&self) -> &airlock_ghsim::Sim {
        &self.sim.as_ref().unwrap().sim
    }
    pub fn daemon(&self) -> &airlock_daemon::Handle {
        self.daemon.as_ref().unwrap()
    }
    pub fn store(&self) -> &airlock_store::Store {
        self.daemon().inner.store()
    }

    pub async fn start_daemon(&mut self) {
        self.start_daemon_with(airlock_daemon::Seams::default())
            .await
    }

    /// The daemon with some of its side effects replaced (see `airlock_daemon::Seams`).
    pub async fn start_daemon_with(&mut self, seams: airlock_daemon::Seams) {
        let (cfg, _) =
            airlock_config::load_str(&self.config, self.dir.path()).expect("test config is valid");
        let h = airlock_daemon::start_with(cfg, seams)
            .await
            .expect("daemon starts");
        self.sim()
            .set_webhook_url(Some(format!("http://{}/webhook", h.addr)));
        self.daemon = Some(h);
    }

    pub fn submit(&self, repo: &str, jobs: &[(&str, &[&str], &[&str])]) -> Vec<u64> {
        self.submit_specs(
            repo,
            jobs.iter()
                .map(|(n, l, s)| JobSpec {
                    name: n.to_string(),
                    labels: l.iter().map(|x| x.to_string()).collect(),
                    steps: s.iter().map(|x| x.to_string()).collect(),
                    drop_webhooks: false,
                })
                .collect(),
        )
    }

    /// `n` jobs named `{prefix}0`, `{prefix}1`, … needing `label`, each running `step`, in one run
    /// of `octo/hello` (as `submit` would).
    pub fn submit_n(&self, prefix: &str, n: usize, label: &str, step: &str) -> Vec<u64> {
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        let jobs: Vec<(&str, &[&str], &[&str])> = names
            .iter()
            .map(|name| {
                (
                    name.as_str(),
                    std::slice::from_ref(&label),
                    std::slice::from_ref(&step),
                )
            })
            .collect();
        self.submit("octo/hello", &jobs)
    }

    pub fn submit_specs(&self, repo: &str, jobs: Vec<JobSpec>) -> Vec<u64> {
        self.sim()
            .submit(&Workflow {
                repo: repo.into(),
                name: "CI".into(),
                jobs,
            })
            .unwrap()
            .job_ids
    }

    /// Waits until every job ghsim knows is completed (runners may still be alive).
    pub async fn wait_jobs_completed(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.sim()
                .jobs()
                .iter()
                .all(|j| j.status == Status::Completed)
        })
        .await
    }

    /// Waits until every job ghsim knows is completed and airlock has no live runner left.
    pub async fn wait_all_done(&self, timeout: Duration) {
        let ok = wait_until(timeout, || {
            self.sim()
                .jobs()
                .iter()
                .all(|j| j.status == Status::Completed)
                && self.store().live_runners().unwrap().is_empty()
                // The last `completed` webhooks may still be on their way to the store.
                && self.store().open_jobs().unwrap().is_empty()
        })
        .await;
        if !ok {
            let jobs: Vec<_> = self
                .sim()
                .jobs()
                .iter()
                .map(|j| (j.id, j.name.clone(), j.status, j.runner_name.clone()))
                .collect();
            let runners: Vec<_> = self
                .store()
                .live_runners()
                .unwrap()
                .iter()
                .map(|r| (r.name.clone(), r.state))
                .collect();
            let events: Vec<String> = self
                .store()
                .events(None)
                .unwrap()
                .into_iter()
                .map(|e| {
                    format!(
                        "{} {} {} {:?}->{} {}",
                        e.at,
                        e.entity,
                        e.id,
                        e.from_state,
                        e.to_state,
                        e.detail.unwrap_or_default()
                    )
                })
                .collect();
            panic!(
                "not done after {timeout:?}: jobs {jobs:?}, live runners {runners:?}\nhistory:\n{}",
                events.join("\n")
            );
        }
    }

    /// Nothing may be left: registrations, sandboxes, sandbox processes, live runners.
    pub fn assert_nothing_left(&self) {
        assert!(
            self.sim().runners().is_empty(),
            "registrations left: {:?}",
            self.sim().runners()
        );
        let sb: Vec<_> = std::fs::read_dir(self.state().join("sandboxes"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(sb.is_empty(), "sandboxes left: {sb:?}");
        let procs = sandbox_processes(&self.state());
        assert!(procs.is_empty(), "sandbox processes left: {procs:?}");
    }

    pub fn metrics(&self) -> String {
        self.daemon().inner.metrics.encode()
    }

    /// Drains and stops the daemon, keeping the emulator (to look at what GitHub has left).
    pub async fn stop_daemon(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.drain(Duration::from_secs(10)).await;
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(d) = self.daemon.take() {
            d.drain(Duration::from_secs(10)).await;
        }
        if let Some(s) = self.sim.take() {
            s.shutdown().await;
        }
    }
}

/// A test that fails part-way must not leave runner processes behind for the next ones.
impl Drop for Env {
    fn drop(&mut self) {
        for pid in sandbox_processes(&self.state()) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

/// Processes marked as belonging to a sandbox whose working directory is under `state`.
pub fn sandbox_processes(state: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
                return false;
            };
            env.split(|b| *b == 0)
                .any(|kv| kv.starts_with(b"AIRLOCK_SANDBOX="))
                && cwd.starts_with(state)
        })
        .collect()
}

pub async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// ghsim + airlock with these pools; the daemon is started unless `start` is false.
pub async fn env(pools: &[Pool<'_>], poll: &str, faults: Faults, start: bool) -> Env {
    env_with(
        pools,
        poll,
        faults,
        start,
        &runner_bin(),
        SimConfig::default(),
    )
    .await
}

pub async fn env_with(
    pools: &[Pool<'_>],
    poll: &str,
    faults: Faults,
    start: bool,
    runner: &Path,
    sim_cfg: SimConfig,
) -> Env {
    let dir = tempfile::tempdir().unwrap();
    write_secret(&dir.path().join("webhook-secret"), SECRET);
    write_secret(&dir.path().join("token"), TOKEN);
    let sim = Sim::start(
        SimConfig {
            webhook_secret: SECRET.as_bytes().to_vec(),
            tokens: vec![TOKEN.into()],
            heartbeat_timeout: Duration::from_secs(5),
            long_poll: Duration::from_secs(2),
            ..sim_cfg
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    sim.sim.set_faults(faults);
    let config = config_text(
        &dir.path().join("state"),
        &sim.url,
        "127.0.0.1:0",
        poll,
        pools,
        runner,
    );
    let mut e = Env {
        dir,
        sim: Some(sim),
        daemon: None,
        config,
    };
    if start {
        e.start_daemon().await;
    }
    e
}

/// The value of one sample line of a Prometheus text exposition, e.g.
/// `airlock_runners_created_total{pool="a"}`.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|rest| rest.trim().split(' ').next()?.parse().ok())
        })
        .unwrap_or(0.0)
}

/// The sum of every sample whose name and labels start with `prefix` (e.g.
/// `airlock_reconcile_errors_total{op="create"`).
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
