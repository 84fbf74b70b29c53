//! The `airlock` binary itself: exit statuses, check-config, the demo, and `serve` under SIGTERM
//! (drain) and SIGKILL (crash, then restart).

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use airlock_ghsim::{Faults, Status};
use common::*;

fn airlock() -> Command {
    Command::new(env!("CARGO_BIN_EXE_airlock"))
}

#[test]
fn check_config_exit_statuses_and_messages() {
    let d = tempfile::tempdir().unwrap();
    write_secret(&d.path().join("token"), "t");
    write_secret(&d.path().join("webhook-secret"), "s");
    let good = d.path().join("good.toml");
    std::fs::write(
        &good,
        "[github]\ntoken_file = \"token\"\nwebhook_secret_file = \"webhook-secret\"\n[[pool]]\nname = \"a\"\nscope = \"repo:o/r\"\nlabels = [\"x\"]\nrunner_command = \"/bin/sh\"\n",
    )
    .unwrap();
    let out = airlock()
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (1 pool)"));

    let bad = d.path().join("bad.toml");
    std::fs::write(&bad, "[github]\ntoken_file = \"token\"\npoll_interval = \"often\"\n[[pool]]\nname = \"a\"\nscope = \"repo:o/r\"\nlabels = []\nrunner_command = \"/bin/sh\"\nsize = 3\n").unwrap();
    let out = airlock()
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "line 3: github.poll_interval",
        "line 7: pool[0].labels",
        "line 9: pool[0].size: unknown key",
        "3 errors in",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    let out = airlock()
        .args(["check-config", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the config file"));
    let out = airlock().args(["serve"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing --config is a usage error"
    );
    let out = airlock().args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_demo_passes_and_leaves_nothing() {
    runner_bin();
    let d = tempfile::tempdir().unwrap();
    // The runner is found beside the airlock binary.
    let out = airlock()
        .args(["demo", "--backend", "process", "--state-dir"])
        .arg(d.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("✓ demo passed"), "{text}");
    assert!(text.contains("process backend: NOT isolated"), "{text}");
    assert!(text.contains("lost-webhook"), "{text}");
    assert!(text.contains("failure  failure ✓"), "{text}");
    assert_eq!(
        std::fs::read_dir(d.path().join("sandboxes"))
            .unwrap()
            .count(),
        0
    );
}

struct Serve {
    child: Child,
    addr: String,
}

fn serve(config: &std::path::Path) -> Serve {
    let mut child = airlock()
        .args(["serve", "--config"])
        .arg(config)
        .env("AIRLOCK_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("airlock listening on http://")
        .unwrap_or_else(|| panic!("unexpected: {line:?}"))
        .to_string();
    Serve { child, addr }
}

fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_sigkill_loses_nothing() {
    let pools = [pool("small", &["self-hosted", "small"])];
    let e = env(&pools, "1s", Faults::default(), false).await;
    let cfg_path = e.dir.path().join("airlock.toml");
    std::fs::write(&cfg_path, &e.config).unwrap();

    // 1. SIGKILL in the middle of two jobs, then restart: both finish, nothing leaks.
    let mut s = serve(&cfg_path);
    e.sim()
        .set_webhook_url(Some(format!("http://{}/webhook", s.addr)));
    e.submit(
        "octo/hello",
        &[
            ("k1", &["small"], &["sleep 2"]),
            ("k2", &["small"], &["sleep 2"]),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(30), || e
            .sim()
            .jobs()
            .iter()
            .all(|j| j.status == Status::InProgress))
        .await
    );
    signal(&s.child, "-KILL");
    let _ = s.child.wait();
    let mut s = serve(&cfg_path);
    e.sim()
        .set_webhook_url(Some(format!("http://{}/webhook", s.addr)));
    assert!(
        wait_until(Duration::from_secs(60), || e
            .sim()
            .jobs()
            .iter()
            .all(|j| j.status == Status::Completed))
        .await
    );
    assert!(
        e.sim()
            .jobs()
            .iter()
            .all(|j| j.conclusion.as_deref() == Some("success")),
        "{:?}",
        e.sim().jobs()
    );

    // `airlock status` talks to the running daemon.
    let mut cfg_listen = e.config.clone();
    cfg_listen = cfg_listen.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", s.addr),
    );
    let status_cfg = e.dir.path().join("status.toml");
    std::fs::write(&status_cfg, cfg_listen).unwrap();
    let out = airlock()
        .args(["status", "--config"])
        .arg(&status_cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("small"), "{text}");
    let out = airlock()
        .args(["status", "--json", "--config"])
        .arg(&status_cfg)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pools"][0]["name"], "small");
    assert_eq!(v["pools"][0]["backend"], "process");

    // 2. SIGTERM while a job runs: the busy runner finishes, airlock exits 0.
    e.submit("octo/hello", &[("t1", &["small"], &["sleep 2"])]);
    assert!(
        wait_until(Duration::from_secs(30), || e
            .sim()
            .jobs()
            .iter()
            .any(|j| j.name == "t1" && j.status == Status::InProgress))
        .await
    );
    signal(&s.child, "-TERM");
    let status = s.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let t1 = e.sim().jobs().into_iter().find(|j| j.name == "t1").unwrap();
    assert_eq!(
        t1.conclusion.as_deref(),
        Some("success"),
        "the drain let the busy runner finish"
    );
    assert!(e.sim().runners().is_empty(), "{:?}", e.sim().runners());
    assert!(sandbox_processes(&e.state()).is_empty());
    assert_eq!(
        std::fs::read_dir(e.state().join("sandboxes"))
            .unwrap()
            .count(),
        0
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_binary_takes_workflows_from_a_file() {
    let bin = target_dir().join("airlock-ghsim");
    assert!(bin.is_file(), "build it first: cargo build --bins");
    let d = tempfile::tempdir().unwrap();
    let wf = d.path().join("wf.toml");
    std::fs::write(
        &wf,
        "[[workflow]]\nrepo = \"octo/hello\"\nname = \"CI\"\n[[workflow.job]]\nname = \"a\"\nlabels = [\"x\"]\nsteps = [\"true\"]\n\
         [[workflow.job]]\nname = \"b\"\nlabels = [\"y\"]\n",
    )
    .unwrap();
    write_secret(&d.path().join("token"), TOKEN);
    let mut child = Command::new(&bin)
        .args(["--listen", "127.0.0.1:0", "--token-file"])
        .arg(d.path().join("token"))
        .arg("--workflow")
        .arg(&wf)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .strip_prefix("ghsim listening on ")
        .unwrap()
        .to_string();
    let c = airlock_github::Client::new(
        &url,
        airlock_github::Credentials::Token(TOKEN.into()),
        Default::default(),
    )
    .unwrap();
    let jobs = c
        .active_jobs(
            &airlock_core::Scope::parse("repo:octo/hello").unwrap(),
            "octo/hello",
        )
        .await
        .unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let _ = child.kill();
    let _ = child.wait();

    // A broken workflow file is refused with the file named.
    std::fs::write(
        &wf,
        "[[workflow]]\nrepo = \"octo/hello\"\n[[workflow.job]]\nname = \"a\"\nlabelz = []\n",
    )
    .unwrap();
    let out = Command::new(&bin)
        .args(["--listen", "127.0.0.1:0", "--workflow"])
        .arg(&wf)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid workflow file") && err.contains("labelz"),
        "{err}"
    );
}

/// The stand-in runner built by scripts/build-standin.sh runs alone in an empty root directory
/// (no libc, no shell, nothing), as it will in minimal images. Without a JIT config it says so.
#[test]
fn the_static_stand_in_runs_in_an_empty_root() {
    let bin = target_dir()
        .parent()
        .unwrap()
        .join("standin-bin/airlock-runner");
    assert!(
        bin.is_file(),
        "build it first: bash scripts/build-standin.sh"
    );
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(&bin, root.path().join("airlock-runner")).unwrap();
    let out = cmd_in(root.path())
        .arg("/airlock-runner")
        .env_clear()
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no JIT config"), "{err}");
    let out = cmd_in(root.path())
        .arg("/airlock-runner")
        .env_clear()
        .env("ACTIONS_RUNNER_INPUT_JITCONFIG", "bm90IGpzb24=")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unusable JIT config"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// `chroot ROOT` (as root) or `unshare --map-root-user chroot ROOT`, by absolute path: the
/// child's environment is cleared, so PATH cannot be used to find them.
fn cmd_in(root: &std::path::Path) -> Command {
    let find = |name: &str| {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(name))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{name} not found"))
    };
    if nix_is_root() {
        let mut c = Command::new(find("chroot"));
        c.arg(root);
        c
    } else {
        let mut c = Command::new(find("unshare"));
        c.arg("--map-root-user").arg(find("chroot")).arg(root);
        c
    }
}

/// As root (CI), `airlock demo` runs every job in a container sandbox, with ghsim in its own
/// network namespace, and checks that no container remnant is left.
#[test]
fn the_demo_runs_on_the_container_backend_as_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the container demo needs root (CI runs as root)"
    );
    runner_bin();
    let d = tempfile::tempdir().unwrap();
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("airlock-test-images");
    let out = airlock()
        .args(["demo", "--backend", "container", "--image-cache"])
        .arg(&cache)
        .arg("--state-dir")
        .arg(d.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("in container sandboxes"), "{text}");
    assert!(text.contains("reached through NAT"), "{text}");
    assert!(text.contains("✓ demo passed"), "{text}");
    assert!(
        airlock_sandbox::container::remnants(&d.path().join("containers")).is_empty(),
        "{text}"
    );
}

/// `airlock demo --backend microvm`: whole-machine jobs in QEMU VMs beside the container pools,
/// saying up front that TCG boots are slow and which accelerator the probe settled on.
#[test]
fn the_demo_runs_microvm_jobs_as_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the microVM demo needs root (CI runs as root)"
    );
    runner_bin();
    let d = tempfile::tempdir().unwrap();
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("airlock-test-images");
    let out = airlock()
        .args(["demo", "--backend", "microvm", "--image-cache"])
        .arg(&cache)
        .arg("--state-dir")
        .arg(d.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("VMs run under TCG"),
        "the warning comes first: {text}"
    );
    assert!(text.contains("microVMs    boot with "), "{text}");
    assert!(text.contains("root-in-vm"), "{text}");
    assert!(text.contains("over 4 pools"), "{text}");
    assert!(text.contains("✓ demo passed"), "{text}");
    assert!(airlock_sandbox::microvm::remnants(&d.path().join("vms")).is_empty());
}

#[test]
fn image_commands_say_what_is_wrong_with_distinct_exit_statuses() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let run = |args: &[&str]| {
        let out = airlock()
            .args(["image"])
            .args(args)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(&["ls"]);
    assert_eq!((code, out.contains("no images")), (Some(0), true));
    let (code, _, err) = run(&["build", "Bad_Name"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("invalid image name"), "{err}");
    let (code, _, err) = run(&["inspect", "nope"]);
    assert_eq!(code, Some(2), "{err}");
    // A runner tarball whose checksum does not match aborts before anything is built.
    let tarball = d.path().join("actions-runner.tar.gz");
    std::fs::write(&tarball, "not the release").unwrap();
    let zeros = "0".repeat(64);
    let (code, _, err) = run(&[
        "build",
        "gh",
        "--runner-version",
        "2.321.0",
        "--runner-sha256",
        &zeros,
        "--runner-tarball",
        tarball.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("checksum mismatch"), "{err}");
    let left: Vec<_> = std::fs::read_dir(state.join("images"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a failed build leaves nothing: {left:?}");
    let (code, _, err) = run(&["build", "gh", "--runner-sha256", &zeros]);
    assert_eq!(code, Some(2), "{err}");

    // An image a sandbox was made from is never removed.
    let hex = "ab".repeat(32);
    let dir = state.join("images/fake").join(&hex);
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    let m = airlock_image::Manifest {
        name: "fake".into(),
        digest: format!("sha256:{hex}"),
        suite: "bookworm".into(),
        built_at: "2026-01-01T00:00:00.000Z".into(),
        build_seconds: 1.0,
        size_bytes: 0,
        files: 0,
        extra_packages: vec![],
        packages: vec![],
        runner: airlock_image::RunnerInfo {
            kind: "standin".into(),
            version: "0".into(),
            sha256: zeros.clone(),
            path: "/opt/airlock/airlock-runner".into(),
        },
        vm: None,
    };
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string(&m).unwrap(),
    )
    .unwrap();
    // check-config says when a pool asks for packages its image lacks.
    write_secret(&d.path().join("token"), "t");
    write_secret(&d.path().join("webhook-secret"), "s");
    let cfg = d.path().join("airlock.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nstate_dir = \"{}\"\n[github]\ntoken_file = \"token\"\nwebhook_secret_file = \"webhook-secret\"\n\
             [[pool]]\nname = \"box\"\nscope = \"org:o\"\nlabels = [\"box\"]\nbackend = \"container\"\n\
             image = \"fake\"\npackages = [\"git\", \"curl\"]\n\
             [[pool]]\nname = \"vm\"\nscope = \"org:o\"\nlabels = [\"vm\"]\nbackend = \"microvm\"\n\
             image = \"fake\"\n",
            state.display()
        ),
    )
    .unwrap();
    let out = airlock()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("pool[0].packages: image fake@sha256:abababababab lacks git, curl"),
        "{err}"
    );
    assert!(
        err.contains("pool[1].image: image fake@sha256:abababababab is not bootable as a microVM; rebuild it: airlock image build fake --vm"),
        "{err}"
    );
    // A VM build needs its guest agent; VM-only options need --vm.
    let (code, _, err) = run(&["build", "v", "--vm", "--agent", "/nonexistent/agent"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("no guest agent at /nonexistent/agent"),
        "{err}"
    );
    let (code, _, err) = run(&["build", "v", "--docker"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--vm"), "{err}");
    let sandbox = state.join("containers/sb1");
    std::fs::create_dir_all(&sandbox).unwrap();
    std::fs::write(sandbox.join("image"), format!("fake@sha256:{hex}\n")).unwrap();
    let (code, out, _) = run(&["ls"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("fake") && out.contains("yes"), "{out}");
    let (code, _, err) = run(&["rm", "fake"]);
    assert_eq!(code, Some(5), "{err}");
    assert!(dir.join("manifest.json").exists());
    std::fs::remove_dir_all(&sandbox).unwrap();
    let (code, out, err) = run(&["rm", "fake"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("removed fake@sha256:abab"), "{out}");
    assert!(!dir.exists());
}

/// SIGHUP and `airlock reload` read the config again: a file that does not load changes nothing,
/// its problems are said (exit 2) and the daemon goes on; one that does is applied (pools) and
/// what waits for a restart (`[server]`) is said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_airlock_reload_reload_the_config_and_a_bad_one_changes_nothing() {
    let pools = [pool("small", &["self-hosted", "small"])];
    let e = env(&pools, "1s", Faults::default(), false).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let good = e.config.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    assert_ne!(good, e.config);
    let cfg_path = e.dir.path().join("airlock.toml");
    std::fs::write(&cfg_path, &good).unwrap();
    let mut child = airlock()
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .env("AIRLOCK_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let wait_for = |needle: &str| -> Vec<String> {
        let mut seen = Vec::new();
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while let Ok(l) = rx.recv_timeout(end.saturating_duration_since(std::time::Instant::now()))
        {
            let hit = l.contains(needle);
            seen.push(l);
            if hit {
                return seen;
            }
        }
        panic!("no {needle:?} in {seen:#?}");
    };
    let reload = || {
        let out = airlock()
            .args(["reload", "--config"])
            .arg(&cfg_path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    wait_for("airlock is running");

    // A file that does not load: SIGHUP logs its problem; `airlock reload` names it, exit 2; the
    // daemon's endpoint refuses it too (422 with the problems).
    let bad = good.replace("max_runners = 8", "max_runners = \"lots\"");
    assert_ne!(bad, good);
    std::fs::write(&cfg_path, &bad).unwrap();
    signal(&child, "-HUP");
    let lines = wait_for("nothing reloaded");
    assert!(
        lines.iter().any(|l| l.contains("max_runners")),
        "{lines:#?}"
    );
    let (code, _, err) = reload();
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("max_runners"), "{err}");
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/v1/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["problems"][0].as_str().unwrap().contains("max_runners"),
        "{v}"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "a bad reload stops nothing"
    );

    // A pool change is applied; a second reload finds nothing to do.
    std::fs::write(
        &cfg_path,
        good.replace("max_runners = 8", "max_runners = 3"),
    )
    .unwrap();
    let (code, out, err) = reload();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.trim(),
        "reloaded: pool small: changed max_runners",
        "{out}"
    );
    let (code, out, _) = reload();
    assert_eq!((code, out.trim()), (Some(0), "reloaded: nothing changed"));
    // `[server]` waits for a restart, and says so; SIGHUP reloads the same way.
    std::fs::write(
        &cfg_path,
        good.replace("drain_grace = \"20s\"", "drain_grace = \"30s\""),
    )
    .unwrap();
    let (code, out, _) = reload();
    assert_eq!(code, Some(0));
    assert!(
        out.contains("needs a restart (left as it was): [server]"),
        "{out}"
    );
    assert!(
        out.contains("pool small: changed max_runners"),
        "back to 8: {out}"
    );
    std::fs::write(
        &cfg_path,
        good.replace("max_runners = 8", "max_runners = 2"),
    )
    .unwrap();
    signal(&child, "-HUP");
    let lines = wait_for("config reloaded");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("pool small: changed max_runners")),
        "{lines:#?}"
    );
    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
