//! End to end on the container backend, as root: ghsim plays GitHub from a network namespace of
//! its own (where the internet would be: sandboxes reach it through the same NAT as real
//! traffic), airlock runs every job in a fresh container from an image built with mmdebstrap,
//! and afterwards nothing of any sandbox is left on the host: no directory, runtime state, mount,
//! link, cgroup or process.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use airlock_ghsim::{JobSpec, Status};
use common::container::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_run_isolated_in_containers_and_nothing_is_left() {
    let c = container_env(1, 4, "").await;
    let port = c.env.daemon().addr.port();
    let host = c.net.host_ip;
    let reach_airlock = format!(
        "if timeout 3 bash -c 'echo > /dev/tcp/{host}/{port}' 2>/dev/null; then echo REACHED-AIRLOCK; exit 1; fi"
    );
    let writes_image = "if echo x > /usr/bin/planted 2>/dev/null; then exit 1; fi";
    c.env.submit_specs(
        "octo/hello",
        vec![
            job(
                "as-runner",
                &["test \"$(id -u)\" = 1001", "test \"$(id -un)\" = runner"],
            ),
            job(
                "plant",
                &[
                    "echo leftover > /home/runner/planted",
                    "echo leftover > /tmp/planted",
                ],
            ),
            job("fails", &["exit 3"]),
            job("oom", &["head -c 800M /dev/zero | tail > /dev/null"]),
            job("no-airlock", &[&reach_airlock]),
            job("read-only-image", &[writes_image]),
            job("reaches-github", &["true"]),
        ],
    );
    c.env.wait_all_done(Duration::from_secs(120)).await;
    // Nothing survives from one job to the next.
    c.env.submit_specs(
        "octo/hello",
        vec![job(
            "after-plant",
            &[
                "test ! -e /home/runner/planted",
                "test ! -e /tmp/planted",
                "test ! -e /usr/bin/planted",
            ],
        )],
    );
    c.env.wait_all_done(Duration::from_secs(60)).await;
    let got = conclusions(c.env.sim());
    let want: Vec<(String, Option<String>)> = [
        ("after-plant", "success"),
        ("as-runner", "success"),
        ("fails", "failure"),
        ("no-airlock", "success"),
        ("oom", "failure"),
        ("plant", "success"),
        ("reaches-github", "success"),
        ("read-only-image", "success"),
    ]
    .iter()
    .map(|(n, c)| (n.to_string(), Some(c.to_string())))
    .collect();
    assert_eq!(got, want);
    c.env.assert_nothing_left();
    let left = c.remnants_settled().await;
    assert!(left.is_empty(), "{left:?}");
    // The image was only ever read.
    image_store().verify(&image()).unwrap();
    let CEnv { env, net, .. } = c;
    env.shutdown().await;
    drop(net);
}

/// 100 jobs, then a SIGKILL-like crash of the daemon with containers running, a restart, and
/// zero of anything left on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_jobs_and_a_crash_leave_nothing() {
    let mut c = container_env(2, 8, "").await;
    let before = c.remnants();
    assert!(before.is_empty(), "{before:?}");
    let jobs: Vec<JobSpec> = (0..100)
        .map(|i| job(&format!("j{i:03}"), &["true"]))
        .collect();
    c.env.submit_specs("octo/hello", jobs);
    c.env.wait_all_done(Duration::from_secs(600)).await;
    assert!(c
        .env
        .sim()
        .jobs()
        .iter()
        .all(|j| j.conclusion.as_deref() == Some("success")));
    let after = c.remnants_settled().await;
    assert!(after.is_empty(), "after 100 jobs: {after:?}");

    // Crash with jobs in flight.
    let slow: Vec<JobSpec> = (0..6)
        .map(|i| job(&format!("slow{i}"), &["sleep 4"]))
        .collect();
    c.env.submit_specs("octo/hello", slow);
    let running = wait_until(Duration::from_secs(60), || {
        c.env
            .sim()
            .jobs()
            .iter()
            .filter(|j| j.status == Status::InProgress)
            .count()
            >= 3
    })
    .await;
    assert!(running, "jobs started");
    c.env.daemon.take().unwrap().crash().await;
    let mid = c.remnants();
    assert!(!mid.is_empty(), "sandboxes outlive a crashed daemon");
    c.env.start_daemon().await;
    let port = c.env.daemon().addr.port();
    c.env
        .sim()
        .set_webhook_url(Some(format!("http://127.0.0.1:{port}/webhook")));
    c.env.wait_all_done(Duration::from_secs(120)).await;
    assert!(c
        .env
        .sim()
        .jobs()
        .iter()
        .all(|j| j.status == Status::Completed));
    c.env.assert_nothing_left();
    let left = c.remnants_settled().await;
    assert!(left.is_empty(), "after the crash: {left:?}");
    let CEnv { env, net, .. } = c;
    env.shutdown().await;
    drop(net);
}

/// `airlock serve` (the real binary) is SIGKILLed with containers running jobs; restarted, it
/// finishes every job and, after SIGTERM, nothing of any sandbox is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_real_daemon_mid_job_loses_and_leaks_nothing() {
    use std::io::BufRead;
    let c = container_env_with(4, 4, "", false).await;
    let cfg_path = c.env.dir.path().join("airlock.toml");
    std::fs::write(&cfg_path, &c.env.config).unwrap();
    let serve = |sim: &airlock_ghsim::Sim| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(["serve", "--config"])
            .arg(&cfg_path)
            .env("AIRLOCK_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().rsplit(':').next().unwrap().to_string();
        sim.set_webhook_url(Some(format!("http://127.0.0.1:{port}/webhook")));
        child
    };
    let mut daemon = serve(c.env.sim());
    c.env.submit_specs(
        "octo/hello",
        (0..3)
            .map(|i| job(&format!("k{i}"), &["sleep 3"]))
            .collect(),
    );
    assert!(
        wait_until(Duration::from_secs(60), || c
            .env
            .sim()
            .jobs()
            .iter()
            .all(|j| j.status == Status::InProgress))
        .await
    );
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    assert!(
        !c.remnants().is_empty(),
        "the jobs' containers outlive the daemon"
    );
    let mut daemon = serve(c.env.sim());
    assert!(
        wait_until(Duration::from_secs(90), || c
            .env
            .sim()
            .jobs()
            .iter()
            .all(|j| j.status == Status::Completed)
            && c.env.sim().runners().is_empty()
            && c.remnants().is_empty())
        .await,
        "jobs {:?}, registrations {:?}, remnants {:?}",
        c.env.sim().jobs(),
        c.env.sim().runners(),
        c.remnants()
    );
    assert!(c
        .env
        .sim()
        .jobs()
        .iter()
        .all(|j| j.conclusion.as_deref() == Some("success")));
    let st = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    let left = c.remnants();
    assert!(left.is_empty(), "{left:?}");
}

/// A pool whose image was never built creates nothing (no registration, no runner row, no
/// sandbox), says why in the error metric, and recovers by itself once the image exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_without_its_image_creates_nothing_until_it_is_built() {
    let mut c = container_env_with(5, 2, "", false).await;
    c.env.config = c
        .env
        .config
        .replace("image = \"test-standin\"", "image = \"never-built\"");
    c.env.start_daemon().await;
    let port = c.env.daemon().addr.port();
    c.env
        .sim()
        .set_webhook_url(Some(format!("http://127.0.0.1:{port}/webhook")));
    c.env
        .submit_specs("octo/hello", vec![job("waits", &["true"])]);
    let failed = wait_until(Duration::from_secs(20), || {
        metric(
            &c.env.metrics(),
            "airlock_reconcile_errors_total{op=\"create\",class=\"image\"}",
        ) >= 1.0
    })
    .await;
    assert!(failed, "{}", c.env.metrics());
    assert!(c.env.sim().runners().is_empty());
    assert!(c.env.store().live_runners().unwrap().is_empty());
    let left = c.remnants_settled().await;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(c.env.sim().jobs()[0].status, Status::Queued);
    // Building it (here: linking the test image under the new name) lets the job run.
    let store = image_store();
    let m = image();
    let hex = m.digest.trim_start_matches("sha256:");
    let dir = store.root().join("never-built").join(hex);
    std::fs::create_dir_all(&dir).unwrap();
    let mut renamed = m.clone();
    renamed.name = "never-built".into();
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string(&renamed).unwrap(),
    )
    .unwrap();
    std::os::unix::fs::symlink(store.rootfs(&m), dir.join("rootfs")).unwrap();
    std::os::unix::fs::symlink(
        store.shifted_rootfs(&m, 100_000).unwrap(),
        dir.join("rootfs-uid100000"),
    )
    .unwrap();
    let guard = DirGuard(store.root().join("never-built"));
    c.env.wait_all_done(Duration::from_secs(90)).await;
    assert_eq!(c.env.sim().jobs()[0].conclusion.as_deref(), Some("success"));
    let left = c.remnants_settled().await;
    assert!(left.is_empty(), "{left:?}");
    drop(guard);
    let CEnv { env, net, .. } = c;
    env.shutdown().await;
    drop(net);
}

/// Removes a directory when dropped.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Egress through the whole daemon: a block-mode pool and an audit-mode pool, names served by a
/// name server in the internet's namespace (the resolver's upstream, `container.dns`). Jobs in
/// block mode reach an allowed name and GitHub (listed by address) but neither a denied name
/// nor a bare address; the same job in audit mode reaches everything. Then the job's report
/// through the API and `airlock egress report`, the blocked count in metrics, and
/// `airlock egress suggest` from the audit pool's history; and nothing left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn egress_is_enforced_reported_and_suggested_end_to_end() {
    use std::net::{Ipv4Addr, SocketAddr};
    const SLOT: u8 = 6;
    let named: Ipv4Addr = format!("198.18.{SLOT}.200").parse().unwrap();
    let bare: Ipv4Addr = format!("198.18.{SLOT}.201").parse().unwrap();
    let gh: Ipv4Addr = format!("198.18.{SLOT}.6").parse().unwrap();
    let extra = format!(
        "\n[pool.egress]\nmode = \"block\"\nallow = [\"allowed.test\", \"{gh}\"]\n\n\
         [[pool]]\nname = \"aud\"\nscope = \"repo:octo/hello\"\nlabels = [\"self-hosted\", \"linux\", \"aud\"]\n\
         backend = \"container\"\nimage = \"test-standin\"\nmax_runners = 2\nmemory_mib = 256\n\n\
         [pool.egress]\nmode = \"audit\"\nallow = [\"allowed.test\", \"{gh}\"]\n"
    );
    let mut c = container_env_with(SLOT, 2, &extra, false).await;
    c.env.config = c
        .env
        .config
        .replace("[container]\n", &format!("[container]\ndns = [\"{gh}\"]\n"));
    // The internet: a name server, and a listener on two more addresses routed into it.
    let ns = c.net.ns.clone();
    let run = |c: &str| {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(c)
            .status()
            .unwrap();
        assert!(st.success(), "{c}");
    };
    run(&format!(
        "ip -n {ns} addr add {named}/32 dev lo && ip -n {ns} addr add {bare}/32 dev lo && \
         ip route replace {named}/32 via {gh} && ip route replace {bare}/32 via {gh}",
        ns = c.net.ns
    ));
    let dns_at = SocketAddr::from((gh, 53));
    let (udp, tcp, web) = airlock_net::outside::in_netns(&ns, move || {
        Ok((
            std::net::UdpSocket::bind(dns_at)?,
            std::net::TcpListener::bind(dns_at)?,
            std::net::TcpListener::bind("0.0.0.0:8000")?,
        ))
    })
    .unwrap();
    std::thread::spawn(move || {
        for s in web.incoming().flatten() {
            drop(s);
        }
    });
    let _dns = airlock_egress::testdns::TestDns::serve(
        udp,
        tcp,
        &[("allowed.test", named), ("denied.test", named)],
    )
    .unwrap();
    c.env.start_daemon().await;
    let port = c.env.daemon().addr.port();
    c.env
        .sim()
        .set_webhook_url(Some(format!("http://127.0.0.1:{port}/webhook")));

    let tcp_to = |host: &str| format!("timeout 3 bash -c 'exec 3<>/dev/tcp/{host}/8000'");
    let steps = |pool: &str| -> Vec<String> {
        let blocked = pool == "box";
        let not = |b: bool| if b { "! " } else { "" };
        vec![
            "getent hosts allowed.test".into(),
            tcp_to("allowed.test"),
            format!("{}getent hosts denied.test", not(blocked)),
            format!("{}{}", not(blocked), tcp_to(&bare.to_string())),
        ]
    };
    let spec = |name: &str, pool: &str| JobSpec {
        name: name.into(),
        labels: vec!["self-hosted".into(), "linux".into(), pool.into()],
        steps: steps(pool),
        drop_webhooks: false,
    };
    let ids = c.env.submit_specs(
        "octo/hello",
        vec![spec("in-block", "box"), spec("in-audit", "aud")],
    );
    c.env.wait_all_done(Duration::from_secs(120)).await;
    assert_eq!(
        conclusions(c.env.sim()),
        [
            ("in-audit".to_string(), Some("success".to_string())),
            ("in-block".to_string(), Some("success".to_string()))
        ],
        "every step's expectation held (see the runner logs)"
    );
    // Reports reach the store within a collection period.
    let api = |path: String| {
        let url = format!("http://127.0.0.1:{port}{path}");
        async move {
            reqwest::get(&url)
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let mut report = serde_json::Value::Null;
    for _ in 0..50 {
        report = api(format!("/api/v1/egress/jobs/{}", ids[0])).await;
        if report["reports"].as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dests = report["reports"][0]["report"]["destinations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let verdict = |name: &str| {
        dests
            .iter()
            .find(|d| d["name"] == name)
            .map(|d| d["verdict"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(
        verdict("allowed.test").as_deref(),
        Some("allowed"),
        "{report:#}"
    );
    assert_eq!(
        verdict("denied.test").as_deref(),
        Some("blocked"),
        "{report:#}"
    );
    assert_eq!(report["reports"][0]["mode"], "block");
    assert_eq!(report["reports"][0]["pool"], "box");
    assert!(
        metric(
            &c.env.metrics(),
            "airlock_egress_blocked_total{pool=\"box\"}"
        ) >= 1.0,
        "{}",
        c.env.metrics()
    );
    assert!(metric(&c.env.metrics(), "airlock_egress_dns_answers_total") >= 4.0);
    // The CLI, against the running daemon.
    let cfg_path = c.env.dir.path().join("airlock.toml");
    let cfg_text = c.env.config.replace(
        "listen = \"0.0.0.0:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&cfg_path, cfg_text).unwrap();
    let cli = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(args)
            .arg("--config")
            .arg(&cfg_path)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, out, err) = cli(&["egress", "report", "--job", &ids[0].to_string()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.lines().any(|l| l.contains("blocked")
            && l.contains("denied.test")
            && l.contains("not in the allowlist")),
        "{out}"
    );
    let (code, _, err) = cli(&["egress", "report", "--job", "999999"]);
    assert_eq!(code, Some(1), "{err}");
    // Suggest waits for the audit job's report too.
    let mut out = String::new();
    for _ in 0..50 {
        let (code, o, _) = cli(&["egress", "suggest", "--pool", "aud"]);
        if code == Some(0) {
            out = o;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        // A name only asked has no port; one connected to (counted by the table) has its.
        out.contains("\"denied.test\"") && out.contains("\"allowed.test:8000\""),
        "{out}"
    );
    assert!(out.contains("mode = \"block\""), "{out}");
    let (code, _, err) = cli(&["egress", "suggest", "--pool", "nope"]);
    assert_eq!(code, Some(2), "{err}");
    c.env.assert_nothing_left();
    let left = c.remnants_settled().await;
    assert!(left.is_empty(), "{left:?}");
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ip route del {named}/32; ip route del {bare}/32"))
        .status();
    let CEnv { env, net, .. } = c;
    env.shutdown().await;
    drop(net);
}

/// A reload changes a pool's egress policy for the sandboxes created after it; a job already
/// running keeps the policy it started with (its runner finishes; only runners not busy are
/// remade with the new settings).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reloaded_egress_policy_applies_to_new_sandboxes_only() {
    use std::net::{Ipv4Addr, SocketAddr};
    const SLOT: u8 = 7;
    let named: Ipv4Addr = format!("198.18.{SLOT}.200").parse().unwrap();
    let gh: Ipv4Addr = format!("198.18.{SLOT}.6").parse().unwrap();
    let extra =
        format!("\n[pool.egress]\nmode = \"block\"\nallow = [\"allowed.test\", \"{gh}\"]\n");
    let mut c = container_env_with(SLOT, 2, &extra, false).await;
    c.env.config = c
        .env
        .config
        .replace("[container]\n", &format!("[container]\ndns = [\"{gh}\"]\n"));
    let dns_at = SocketAddr::from((gh, 53));
    let (udp, tcp) = airlock_net::outside::in_netns(&c.net.ns, move || {
        Ok((
            std::net::UdpSocket::bind(dns_at)?,
            std::net::TcpListener::bind(dns_at)?,
        ))
    })
    .unwrap();
    let _dns = airlock_egress::testdns::TestDns::serve(
        udp,
        tcp,
        &[("allowed.test", named), ("denied.test", named)],
    )
    .unwrap();
    c.env.start_daemon().await;
    // The first job asks, waits past the reload, and asks again: still its own policy.
    let first = c.env.submit_specs(
        "octo/hello",
        vec![job(
            "before",
            &[
                "getent hosts allowed.test",
                "sleep 12",
                "getent hosts allowed.test",
                "! getent hosts denied.test",
            ],
        )],
    );
    let t0 = std::time::Instant::now();
    while c
        .env
        .sim()
        .job(first[0])
        .and_then(|j| j.started_at)
        .is_none()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the first job never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let changed = c
        .env
        .config
        .replace(
            &format!("allow = [\"allowed.test\", \"{gh}\"]"),
            &format!("allow = [\"denied.test\", \"{gh}\"]"),
        )
        .replace("max_runners = 2", "max_runners = 3");
    assert_ne!(changed, c.env.config);
    let (cfg, _) = airlock_config::load_str(&changed, c.env.dir.path()).unwrap();
    let r = c.env.daemon().reload(&cfg);
    assert_eq!(
        r.applied,
        ["pool box: changed egress, max_runners (runners not busy are replaced; busy ones finish first)"],
        "{r:?}"
    );
    assert!(r.needs_restart.is_empty(), "{r:?}");
    // Reloading the same again changes nothing more.
    assert!(c.env.daemon().reload(&cfg).applied.is_empty());
    c.env.submit_specs(
        "octo/hello",
        vec![job(
            "after",
            &["! getent hosts allowed.test", "getent hosts denied.test"],
        )],
    );
    c.env.wait_all_done(Duration::from_secs(120)).await;
    assert_eq!(
        conclusions(c.env.sim()),
        [
            ("after".to_string(), Some("success".to_string())),
            ("before".to_string(), Some("success".to_string()))
        ],
        "each job saw its own policy (see the runner logs)"
    );
    let left = c.remnants_settled().await;
    assert!(left.is_empty(), "{left:?}");
}
