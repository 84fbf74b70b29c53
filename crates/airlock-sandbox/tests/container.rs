//! The container backend for real: runc/crun, overlay, user namespaces, veth and nftables, as
//! root: the lifecycle, limits, niceness, logs, reaping after a crash and listing. What a job
//! cannot reach or do is `isolation.rs`. Each test runs under the host-wide runtime (`foo`) and
//! under gVisor's runsc (`foo_runsc`), from one body (`foo_on(Rt)`); where gVisor honestly
//! differs, the body says so and why.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use airlock_sandbox::container::ContainerBackend;
use airlock_sandbox::{Backend, BackendSpec, Limits, SandboxStatus, Secret};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sandbox_keeps_no_runtime_process() {
    an_idle_sandbox_keeps_no_runtime_process_on(Rt::Default).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sandbox_keeps_no_runtime_process_runc() {
    an_idle_sandbox_keeps_no_runtime_process_on(Rt::Runc).await
}

/// The runtime runs detached: while the job runs, the sandbox's supervisor has one child, the
/// container's init (reparented to it, the subreaper), and no crun or runc process is left; the
/// status recorded is the container's. Where crun is installed the probe picks it, hybrid
/// cgroups or not.
async fn an_idle_sandbox_keeps_no_runtime_process_on(rt: Rt) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let b = backend_on(&root, rt.slot(8), rt).await;
    let runtime = b.runtime_for(rt.name()).await.unwrap();
    match rt {
        Rt::Default if airlock_sandbox::container::find_in_path("crun").is_some() => {
            assert_eq!(runtime.name, "crun", "crun is installed: {runtime:?}")
        }
        Rt::Runc => assert_eq!(runtime.name, "runc"),
        _ => {}
    }
    let m = shell_image();
    let s = spec_on("idle1", &m, Limits::default(), rt);
    b.create(&s).await.unwrap();
    let script = "echo started; sleep 3; echo done; exit 5";
    b.start(&s, &Secret::new(script.into())).await.unwrap();
    let dir = root.join("idle1");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(dir.join("runner.log"))
        .unwrap_or_default()
        .contains("started")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the job never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let supervisor: i32 = std::fs::read_to_string(dir.join("pid"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // The job can print before the detached runtime has finished exiting (it forks, and under
    // load its last steps lag): what must hold is that it exits, leaving the container's init.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let kids = loop {
        let kids = children_of(supervisor);
        if kids.len() == 1 || std::time::Instant::now() > deadline {
            break kids;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(kids.len(), 1, "the supervisor's children: {kids:?}");
    let (init, comm) = &kids[0];
    assert!(
        !["crun", "runc", "runc:[2:INIT]"].contains(&comm.as_str()),
        "a runtime process stays beside the sandbox: {kids:?}"
    );
    let cg = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    assert!(
        cg.contains("/airlock/"),
        "the child is the container's init: {cg}"
    );
    let pid_file: i32 = std::fs::read_to_string(dir.join("container.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid_file, *init);
    assert_eq!(b.status("idle1").await.unwrap(), SandboxStatus::Running);
    // While it runs, the host end of its link (made by the netlink hook) has IPv6 off.
    let (host_if, _) = airlock_net::list()
        .into_iter()
        .find(|(_, alias)| alias.ends_with("/idle1"))
        .expect("the running sandbox's host link");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6"))
            .unwrap()
            .trim(),
        "1"
    );
    let code = wait_exit(&b, "idle1", Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(dir.join("runner.log")).unwrap();
    assert_eq!(
        code,
        Some(5),
        "the container's status, not the runtime's: {log}"
    );
    assert!(log.contains("started\ndone\n"), "{log}");
    b.destroy("idle1").await.unwrap();
    let left = leftovers(&root, &ids(&["idle1"]));
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_secret_user_namespace_and_nothing_left() {
    lifecycle_secret_user_namespace_and_nothing_left_on(Rt::Default).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_secret_user_namespace_and_nothing_left_runsc() {
    lifecycle_secret_user_namespace_and_nothing_left_on(Rt::Runsc).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_secret_user_namespace_and_nothing_left_runc() {
    lifecycle_secret_user_namespace_and_nothing_left_on(Rt::Runc).await
}

async fn lifecycle_secret_user_namespace_and_nothing_left_on(rt: Rt) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    // The one test that gives gVisor's KVM platform its probe (3 s): it runs where KVM does,
    // and this host's /dev/kvm (PVM) hangs it, so runsc must fall back to ptrace.
    let b = backend_with(&root, rt.slot(1), rt, Duration::from_secs(3)).await;
    let runtime = b.runtime_for(rt.name()).await.unwrap();
    if rt == Rt::Runsc {
        assert!(runtime.is_gvisor(), "{runtime:?}");
        assert!(
            runtime.notes.iter().any(|n| n.starts_with("platform ")),
            "the probe says which platform and why: {runtime:?}"
        );
    }
    let net = 100 + rt.slot(1);
    let m = shell_image();
    let s = spec_on("life1", &m, Limits::default(), rt);
    assert_eq!(b.status("life1").await.unwrap(), SandboxStatus::Missing);
    b.create(&s).await.unwrap();
    assert_eq!(b.status("life1").await.unwrap(), SandboxStatus::Created);
    let config = std::fs::read_to_string(root.join("life1/bundle/config.json")).unwrap();
    assert!(!config.contains("JITSECRET"));
    // `ls -l` and `stat` (coreutils' statx with AT_NO_AUTOMOUNT) fail under runsc 2022 with
    // EINVAL: the jit file is looked at with Python's os.stat (fstatat) too, on both.
    let script = "echo JITSECRET >/dev/null\n\
        id; hostname; cat /proc/self/uid_map\n\
        echo pid1=$(cat /proc/1/cmdline | tr '\\0' ' ')\n\
        grep -E '^Cap(Eff|Bnd)' /proc/self/status\n\
        grep NoNewPrivs /proc/self/status\n\
        perl -e 'print \"nnp=\", syscall(157, 39, 0, 0, 0, 0), \"\\n\"'\n\
        grep Seccomp: /proc/self/status\n\
        ls -l /run/airlock/jit\n\
        python3 -c 'import os, stat; s = os.stat(\"/run/airlock/jit\"); print(\"jit\", stat.filemode(s.st_mode), s.st_uid, s.st_gid)'\n\
        ip -4 -o addr show eth0\n\
        ip route\n\
        echo kernel=$(uname -r)\n\
        echo v6addrs=$(ip -6 -o addr show | wc -l)\n\
        cat /proc/version\n\
        echo home > /home/runner/f && echo home-writable\n\
        echo tmp > /tmp/f && echo tmp-writable\n\
        exit 7";
    b.start(&s, &Secret::new(script.into())).await.unwrap();
    let code = wait_exit(&b, "life1", Duration::from_secs(60)).await;
    let log = std::fs::read_to_string(root.join("life1/runner.log")).unwrap();
    assert_eq!(code, Some(7), "{log}");
    assert!(log.contains("uid=1001(runner) gid=1001(runner)"), "{log}");
    assert!(log.contains("airlock-life1"), "hostname: {log}");
    assert!(log.contains("CapEff:\t0000000000000000"), "{log}");
    assert!(log.contains("CapBnd:\t0000000000000000"), "{log}");
    assert!(log.contains("nnp=1"), "no_new_privs: {log}");
    assert!(log.contains("Seccomp:\t2"), "{log}");
    assert!(log.contains("jit -r-------- 1001 1001"), "jit file: {log}");
    assert!(log.contains(&format!("inet 10.{net}.0.2/30")), "{log}");
    assert!(log.contains(&format!("default via 10.{net}.0.1")), "{log}");
    assert!(
        log.contains("home-writable") && log.contains("tmp-writable"),
        "{log}"
    );
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let host_kernel = host_kernel.trim();
    match rt {
        Rt::Default | Rt::Runc => {
            assert!(log.contains("v6addrs=0\n"), "IPv6 is off inside: {log}");
            assert!(log.contains("0     100000      65536"), "uid map: {log}");
            assert!(log.contains("NoNewPrivs:\t1"), "{log}");
            assert!(
                log.contains("-r-------- 1 runner runner"),
                "jit file: {log}"
            );
            assert!(log.contains(&format!("kernel={host_kernel}")), "{log}");
        }
        Rt::Runsc => {
            // The job really runs on gVisor: its kernel is gVisor's (which calls itself 4.4.0),
            // not the host's. Its /proc is gVisor's too: the user namespace seen from inside is
            // gVisor's own (the host-side mapping shows in the owners of the job's files, below),
            // and its status files have no NoNewPrivs line (prctl says it above).
            assert!(log.contains("kernel=4.4.0\n"), "{log}");
            assert!(!log.contains(&format!("kernel={host_kernel}")), "{log}");
            assert!(
                log.contains("Linux version 4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016"),
                "gVisor's /proc/version: {log}"
            );
            assert!(log.contains("0          0 4294967295"), "uid map: {log}");
        }
    }
    // The secret reached the runner but sits only in the runner-owned file.
    let jit = std::fs::metadata(root.join("life1/jit")).unwrap();
    assert_eq!((jit.mode() & 0o777, jit.uid()), (0o400, 101_001));
    assert_eq!(
        b.list().await.unwrap(),
        vec![("life1".to_string(), SandboxStatus::Exited(Some(7)))]
    );
    // The runner's writes went to the private layer, never to the image, as uid 1001 shifted
    // by the user namespace's mapping.
    let image_root = images().shifted_rootfs(&m, 100_000).unwrap();
    assert!(!image_root.join("home/runner/f").exists());
    // The layer is on the sandbox's own capped filesystem.
    let written = std::fs::metadata(root.join("life1/layer/upper/home/runner/f")).unwrap();
    assert_eq!(written.uid(), 101_001);

    b.destroy("life1").await.unwrap();
    b.destroy("life1").await.unwrap();
    // The log outlives the sandbox, readable by root only.
    let kept = t.path().join("logs/life1.log");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), log);
    assert_eq!(std::fs::metadata(&kept).unwrap().mode() & 0o777, 0o600);
    assert_eq!(b.status("life1").await.unwrap(), SandboxStatus::Missing);
    assert!(b.list().await.unwrap().is_empty());
    let left = leftovers(&root, &ids(&["life1"]));
    assert!(left.is_empty(), "{left:?}");
    assert!(
        runtime_state(&root).is_empty(),
        "{:?}",
        runtime_state(&root)
    );
    let left = airlock_sandbox::container::remnants(&root);
    assert!(left.is_empty(), "{left:?}");
    images().verify(&m).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_kills_the_hog_not_the_host() {
    memory_limit_kills_the_hog_not_the_host_on(Rt::Default).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_kills_the_hog_not_the_host_runsc() {
    memory_limit_kills_the_hog_not_the_host_on(Rt::Runsc).await
}

async fn memory_limit_kills_the_hog_not_the_host_on(rt: Rt) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let b = backend_on(&root, rt.slot(5), rt).await;
    let limits = Limits {
        memory_mib: Some(96),
        ..Default::default()
    };
    // `tail` keeps a line without newlines in memory: 400 MiB of it.
    let script = "head -c 400M /dev/zero | tail > /dev/null; code=$?\n\
        echo hog-exit=$code\n\
        [ $code -ne 0 ] || echo HOG-SURVIVED\n\
        cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null\n\
        exit 1";
    // A neighbour runs through the hog's OOM kill untouched.
    let m = shell_image();
    let neighbour = spec_on("oom2", &m, Limits::default(), rt);
    b.create(&neighbour).await.unwrap();
    b.start(
        &neighbour,
        &Secret::new("sleep 2; echo neighbour-ok; exit 0".into()),
    )
    .await
    .unwrap();
    let (code, log) = run_on(&b, &root, "oom1", limits, script, rt).await;
    assert_eq!(
        wait_exit(&b, "oom2", Duration::from_secs(30)).await,
        Some(0),
        "the neighbour finished"
    );
    let nlog = std::fs::read_to_string(root.join("oom2/runner.log")).unwrap();
    assert!(nlog.contains("neighbour-ok"), "{nlog}");
    b.destroy("oom2").await.unwrap();
    assert!(!log.contains("HOG-SURVIVED"), "{log}");
    if rt == Rt::Runsc {
        // Under gVisor the limit holds for the sandbox as a whole (the Sentry and the job's
        // memory are one cgroup's), and gVisor 2022 has no OOM killer of its own: the host
        // kernel kills the Sentry, so the whole job ends with SIGKILL and the runner cannot
        // report. The neighbour and the host are untouched, as under runc.
        assert_eq!(code, Some(137), "the sandbox was SIGKILLed: {log}");
        assert!(!log.contains("hog-exit=0"), "{log}");
        return;
    }
    assert!(
        log.contains("hog-exit=137"),
        "killed by SIGKILL (OOM): {log}"
    );
    assert_eq!(
        code,
        Some(1),
        "the runner outlives its hog and reports: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_stops_at_pids_max() {
    fork_bomb_stops_at_pids_max_on(Rt::Default).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_stops_at_pids_max_runsc() {
    fork_bomb_stops_at_pids_max_on(Rt::Runsc).await
}

async fn fork_bomb_stops_at_pids_max_on(rt: Rt) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let b = backend_on(&root, rt.slot(6), rt).await;
    let limits = Limits {
        pids_max: Some(64),
        ..Default::default()
    };
    // Only builtins once the bomb has gone off: nothing else can fork.
    // The bomb runs in a subshell that dies when fork fails; after it, only builtins.
    let script = "(n=0; while [ $n -lt 500 ]; do sleep 30 & n=$((n+1)); done) 2>/dev/null\n\
        echo bomb-stopped\n\
        m=0; for p in /proc/[0-9]*; do m=$((m+1)); done; echo started=$m\n\
        exit 3";
    let started = std::time::Instant::now();
    let (code, log) = run_on(&b, &root, "fork1", limits, script, rt).await;
    let host_ok = std::process::Command::new("true")
        .status()
        .unwrap()
        .success();
    assert!(host_ok, "the host can still fork");
    let left = leftovers(&root, &ids(&["fork1"]));
    assert!(left.is_empty(), "{left:?}");
    if rt == Rt::Runsc {
        // Under gVisor pids_max counts the sandbox's host tasks: the Sentry's threads and, on
        // the ptrace platform, a stub process per job address space. The bomb takes the last
        // of them and the Sentry, unable to make a thread, ends the whole sandbox (runsc exits
        // with an error). The host could fork throughout (above) and nothing is left.
        assert!(!log.contains("bomb-stopped"), "{log}");
        assert!(
            matches!(code, Some(c) if c != 0 && c != 3),
            "{code:?}: {log}"
        );
        assert!(started.elapsed() < Duration::from_secs(60));
        return;
    }
    let n: usize = log
        .lines()
        .find_map(|l| l.strip_prefix("started="))
        .unwrap_or_else(|| panic!("{log}"))
        .parse()
        .unwrap();
    assert!(n > 10 && n <= 64, "at most pids_max processes: {log}");
    assert!(log.contains("bomb-stopped"), "{log}");
    assert_eq!(code, Some(3), "{log}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_is_capped_and_the_job_is_not_blocked() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let b = backend(&root, 8).await;
    let m = shell_image();
    let s = spec("log1", &m, Limits::default());
    b.create(&s).await.unwrap();
    b.start(
        &s,
        &Secret::new(
            "head -c 1000000 /dev/zero | tr '\\0' x; echo; echo finished >&2; exit 4".into(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        wait_exit(&b, "log1", Duration::from_secs(60)).await,
        Some(4)
    );
    let log = std::fs::read_to_string(root.join("log1/runner.log")).unwrap();
    assert!(log.len() < 64 * 1024 + 200, "{} bytes", log.len());
    assert!(
        log.contains("reached its cap of 65536 bytes"),
        "{}",
        &log[log.len() - 200..]
    );
    b.destroy("log1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_backend_finds_and_reaps_what_a_killed_one_left() {
    a_new_backend_finds_and_reaps_what_a_killed_one_left_on(Rt::Default).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_backend_finds_and_reaps_what_a_killed_one_left_runsc() {
    a_new_backend_finds_and_reaps_what_a_killed_one_left_on(Rt::Runsc).await
}

async fn a_new_backend_finds_and_reaps_what_a_killed_one_left_on(rt: Rt) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let m = shell_image();
    {
        let b = backend_on(&root, rt.slot(9), rt).await;
        for id in ["orph1", "orph2"] {
            let s = spec_on(id, &m, Limits::default(), rt);
            b.create(&s).await.unwrap();
            b.start(&s, &Secret::new("sleep 300".into())).await.unwrap();
        }
        // One created but never started, one half-made by hand (a directory only).
        b.create(&spec_on("orph3", &m, Limits::default(), rt))
            .await
            .unwrap();
        std::fs::create_dir(root.join("orph4")).unwrap();
        // The daemon "dies" once both run: the backend object is dropped, its sandboxes keep
        // running.
        for _ in 0..100 {
            if leftovers(&root, &ids(&["orph1", "orph2"])).links.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let all = ids(&["orph1", "orph2", "orph3", "orph4"]);
    let before = leftovers(&root, &all);
    if rt == Rt::Runsc {
        let state = runtime_state(&root);
        assert!(
            state
                .iter()
                .filter(|s| s.starts_with(".runtime-runsc/orph"))
                .count()
                >= 2,
            "runsc's own state directory: {state:?}"
        );
    }
    // Links exist only while a container does (its runtime hook makes them): two.
    assert!(
        before.processes.len() >= 2 && before.links.len() == 2,
        "{before:?}"
    );
    // The new backend has not probed runsc (as after a restart without runsc pools): it finds
    // and destroys runsc's sandboxes by what they and runsc's state directory record.
    let b = backend_on(&root, rt.slot(9), Rt::Default).await;
    let listed = b.list().await.unwrap();
    assert_eq!(
        listed.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        all,
        "{listed:?}"
    );
    assert_eq!(b.status("orph1").await.unwrap(), SandboxStatus::Running);
    for id in &all {
        b.destroy(id).await.unwrap();
    }
    let left = leftovers(&root, &all);
    assert!(left.is_empty(), "{left:?}");
    assert!(
        runtime_state(&root).is_empty(),
        "{:?}",
        runtime_state(&root)
    );
}

/// Jobs run below the daemon's CPU priority (`server.sandbox_nice`) and cannot climb back: raising
/// one's priority needs `CAP_SYS_NICE` in the host's user namespace, which no sandbox has (root in
/// the container's namespace does not count). Positive control: lowering it further works, so
/// the refusal is the kernel's rule, not a broken call. Under gVisor the job's nice value is the
/// Sentry's own bookkeeping (a raise "succeeds" inside); what the host schedules, the Sentry's
/// threads, stays at the sandbox's niceness, which is what is checked there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_at_the_sandbox_niceness_and_cannot_raise_it() {
    a_job_runs_at_the_sandbox_niceness_and_cannot_raise_it_on(Rt::Default).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_at_the_sandbox_niceness_and_cannot_raise_it_runsc() {
    a_job_runs_at_the_sandbox_niceness_and_cannot_raise_it_on(Rt::Runsc).await
}

async fn a_job_runs_at_the_sandbox_niceness_and_cannot_raise_it_on(rt: Rt) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let b = backend_configured(&root, rt.slot(13), rt, Duration::ZERO, |c| c.nice = 7).await;
    let raise =
        r#"perl -e 'use POSIX; print "raise ", (setpriority(0, 0, 0) ? "ok" : "-1 $!"), "\n"'"#;

    // On the host, after the job tried to raise it: every thread of what runs the job (crun: the
    // job itself; gVisor: its Sentry) at the configured niceness.
    let m = shell_image();
    let s = spec_on("nice1", &m, Limits::default(), rt);
    b.create(&s).await.unwrap();
    b.start(&s, &Secret::new(format!("{raise}; exec sleep 317")))
        .await
        .unwrap();
    let log = root.join("nice1").join("runner.log");
    let tried = (0..100).any(|_| {
        let done = std::fs::read_to_string(&log).is_ok_and(|l| l.contains("raise "));
        if !done {
            std::thread::sleep(Duration::from_millis(100));
        }
        done
    });
    assert!(tried, "the job ran: {:?}", std::fs::read_to_string(&log));
    std::thread::sleep(Duration::from_millis(200));
    // 317: a duration no other test sleeps for, so a concurrent test's process is never taken.
    let pid = match rt {
        Rt::Runsc => find_sandbox_process("nice1"),
        _ => find_process("sleep\u{0}317"),
    }
    .expect("the sandbox's process is found");
    let nice = nice_of(pid);
    assert!(
        !nice.is_empty() && nice.iter().all(|n| *n == 7),
        "pid {pid}'s threads at the sandbox's niceness: {nice:?} ({})",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    b.destroy("nice1").await.unwrap();

    // Inside: the job's own view, and the control (lowering it works).
    let script = format!(
        r#"set -- $(cat /proc/$$/stat); echo "start=${{19}}"
{raise}
perl -e 'use POSIX; print "lower ", (setpriority(0, 0, 12) ? "ok" : "-1 $!"), "\n"; print "now ", getpriority(0, 0), "\n"'
echo done"#
    );
    let (code, log) = run_on(&b, &root, "nice2", Limits::default(), &script, rt).await;
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("lower ok") && log.contains("now 12"),
        "lowering works: {log}"
    );
    if rt.native() {
        assert!(log.contains("start=7"), "{log}");
        assert!(
            log.contains("raise -1 Permission denied"),
            "raising is refused: {log}"
        );
    }
}

/// A pass's list reads the sandboxes' directories; the host-wide look for what a sandbox whose
/// directory is gone left behind (here an address lease) comes at the first list and then every
/// `host_scan_every`, and finds it then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remnants_are_found_by_the_periodic_host_scan() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let every = Duration::from_millis(600);
    let b = backend_configured(&root, 14, Rt::Default, Duration::ZERO, |c| {
        c.host_scan_every = every
    })
    .await;
    assert!(
        b.list().await.unwrap().is_empty(),
        "the first list scans: nothing"
    );
    let leases = airlock_net::Leases::new(
        airlock_net::lease_dir(root.parent().unwrap()),
        subnet_for(14),
    );
    let owner = format!("{}/lost1", airlock_sandbox::container::tag_of(&root));
    leases.acquire(&owner).unwrap();
    assert!(
        b.list().await.unwrap().is_empty(),
        "within the interval a list reads directories only"
    );
    tokio::time::sleep(every).await;
    assert_eq!(
        b.list().await.unwrap(),
        vec![("lost1".to_string(), SandboxStatus::Exited(None))],
        "the next scan finds the remnant, reported as ended"
    );
    b.destroy("lost1").await.unwrap();
    assert!(
        leases.owners_with_prefix(&owner).unwrap().is_empty(),
        "destroy swept it"
    );
    tokio::time::sleep(every).await;
    assert!(b.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_failed_create_leaves_nothing() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let b = backend(&root, 10).await;
    let mut s = spec("bad1", &shell_image(), Limits::default());
    if let BackendSpec::Container(c) = &mut s.backend {
        c.rootfs = t.path().join("no-such-rootfs");
    }
    let e = b.create(&s).await.unwrap_err();
    assert!(e.to_string().contains("not a runner image"), "{e}");
    s.backend = BackendSpec::Process;
    let e = b.create(&s).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("a process spec given to the container backend"),
        "{e}"
    );
    // A second create of a live sandbox's id fails and leaves the first alone.
    let good = spec("dup1", &shell_image(), Limits::default());
    b.create(&good).await.unwrap();
    assert!(b.create(&good).await.is_err());
    assert_eq!(b.status("dup1").await.unwrap(), SandboxStatus::Created);
    b.destroy("dup1").await.unwrap();
    let left = leftovers(&root, &ids(&["bad1", "dup1"]));
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_memory_pids_and_io_limits_reach_the_cgroups() {
    cpu_memory_pids_and_io_limits_reach_the_cgroups_on(Rt::Default).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_memory_pids_and_io_limits_reach_the_cgroups_runsc() {
    cpu_memory_pids_and_io_limits_reach_the_cgroups_on(Rt::Runsc).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_memory_pids_and_io_limits_reach_the_cgroups_runc() {
    cpu_memory_pids_and_io_limits_reach_the_cgroups_on(Rt::Runc).await
}

async fn cpu_memory_pids_and_io_limits_reach_the_cgroups_on(rt: Rt) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let b = backend_on(&root, rt.slot(11), rt).await;
    let limits = Limits {
        cpus: Some(0.5),
        memory_mib: Some(128),
        pids_max: Some(100),
        io_weight: Some(200),
    };
    if rt == Rt::Runsc {
        return limits_from_the_host_under_runsc(&b, &root, limits).await;
    }
    // A second of busy loop may use only half a CPU second.
    let script = "cat /proc/self/cgroup\n\
        for f in cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us memory/memory.limit_in_bytes \\
          memory/memory.memsw.limit_in_bytes pids/pids.max blkio/blkio.bfq.weight blkio/blkio.weight \\
          cpu.max memory.max memory.swap.max pids.max io.weight; do \\
          [ -r /sys/fs/cgroup/$f ] && echo \"$f=$(cat /sys/fs/cgroup/$f)\"; done\n\
        a=$(cat /sys/fs/cgroup/cpuacct/cpuacct.usage 2>/dev/null || echo 0)\n\
        timeout 2 sh -c 'while :; do :; done'\n\
        b=$(cat /sys/fs/cgroup/cpuacct/cpuacct.usage 2>/dev/null || echo 0)\n\
        echo cpu_ns=$((b - a))";
    let (code, log) = run_on(&b, &root, "lim1", limits, script, rt).await;
    assert_eq!(code, Some(0), "{log}");
    let v1 = log.contains("cpu/cpu.cfs_quota_us=");
    if v1 {
        assert!(log.contains("cpu/cpu.cfs_quota_us=50000"), "{log}");
        assert!(log.contains("cpu/cpu.cfs_period_us=100000"), "{log}");
        assert!(
            log.contains("memory/memory.limit_in_bytes=134217728"),
            "{log}"
        );
        assert!(
            log.contains("memory/memory.memsw.limit_in_bytes=134217728"),
            "no swap escape: {log}"
        );
        assert!(log.contains("pids/pids.max=100"), "{log}");
        assert!(
            log.contains("blkio/blkio.bfq.weight=200") || log.contains("blkio/blkio.weight=200"),
            "{log}"
        );
        let ns: f64 = log
            .lines()
            .find_map(|l| l.strip_prefix("cpu_ns="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(ns > 0.0, "{log}");
        assert!(
            ns / 1e9 < 1.3,
            "2 s of busy loop at 0.5 CPU used {:.2} CPU s: {log}",
            ns / 1e9
        );
    } else {
        assert!(log.contains("cpu.max=50000 100000"), "{log}");
        assert!(log.contains("memory.max=134217728"), "{log}");
        assert!(log.contains("memory.swap.max=0"), "no swap escape: {log}");
        assert!(log.contains("pids.max=100"), "{log}");
    }
}

/// gVisor's `/sys/fs/cgroup` is its own (runsc 2022 mounts none there), so the limits are read
/// where they act: the sandbox's host cgroups, which hold the Sentry, the gofer and, on ptrace,
/// the job's stub processes. blkio has no `blkio.weight` here, so runsc gets no io_weight (the
/// backend drops it, see `create_inner`).
async fn limits_from_the_host_under_runsc(
    b: &ContainerBackend,
    root: &std::path::Path,
    limits: Limits,
) {
    let m = shell_image();
    let s = spec_on("lim1", &m, limits, Rt::Runsc);
    b.create(&s).await.unwrap();
    b.start(
        &s,
        &Secret::new("timeout 2 sh -c 'while :; do :; done'; echo busy-done; exec sleep 60".into()),
    )
    .await
    .unwrap();
    let tag = airlock_sandbox::container::tag_of(root);
    let cg = |ctrl: &str, file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{ctrl}/airlock/{tag}-lim1/{file}"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    for _ in 0..200 {
        if !cg("pids", "pids.max").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Read while it runs (runsc removes its cgroups when the sandbox ends).
    let mut log = String::new();
    for _ in 0..300 {
        log = std::fs::read_to_string(root.join("lim1/runner.log")).unwrap_or_default();
        if log.contains("busy-done") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(log.contains("busy-done"), "{log}");
    assert_eq!(b.status("lim1").await.unwrap(), SandboxStatus::Running);
    if std::path::Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() {
        assert_eq!(cg("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(cg("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(cg("memory", "memory.limit_in_bytes"), "134217728");
        assert_eq!(cg("pids", "pids.max"), "100");
        // The Sentry's start-up, then 2 s of busy loop at 0.5 CPU.
        let ns: f64 = cg("cpuacct", "cpuacct.usage").parse().unwrap();
        assert!(ns > 0.5e9, "the busy loop ran: {ns}");
        assert!(
            ns / 1e9 < 1.6,
            "0.5 CPU for ~2 s used {:.2} CPU s",
            ns / 1e9
        );
    } else {
        assert_eq!(cg("", "cpu.max"), "50000 100000");
        assert_eq!(cg("", "memory.max"), "134217728");
        assert_eq!(cg("", "pids.max"), "100");
    }
    b.destroy("lim1").await.unwrap();
    let left = leftovers(root, &ids(&["lim1"]));
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_that_prefixes_another_is_not_ambiguous() {
    an_id_that_prefixes_another_is_not_ambiguous_on(Rt::Default).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_that_prefixes_another_is_not_ambiguous_runsc() {
    an_id_that_prefixes_another_is_not_ambiguous_on(Rt::Runsc).await
}

/// runsc reads a container id as a prefix when several match (`pre1` would be `pre10` too).
async fn an_id_that_prefixes_another_is_not_ambiguous_on(rt: Rt) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let b = backend_on(&root, rt.slot(12), rt).await;
    let m = shell_image();
    for id in ["pre1", "pre10"] {
        let s = spec_on(id, &m, Limits::default(), rt);
        b.create(&s).await.unwrap();
        b.start(&s, &Secret::new("exec sleep 300".into()))
            .await
            .unwrap();
    }
    for _ in 0..100 {
        if leftovers(&root, &ids(&["pre1", "pre10"])).links.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.destroy("pre1").await.unwrap();
    assert_eq!(b.status("pre10").await.unwrap(), SandboxStatus::Running);
    assert_eq!(leftovers(&root, &ids(&["pre10"])).links.len(), 1);
    b.destroy("pre10").await.unwrap();
    let left = leftovers(&root, &ids(&["pre1", "pre10"]));
    assert!(left.is_empty(), "{left:?}");
    assert!(
        runtime_state(&root).is_empty(),
        "{:?}",
        runtime_state(&root)
    );
}
