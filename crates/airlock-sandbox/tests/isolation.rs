//! What a job in a container sandbox cannot do, as root on the host sees it: write into its
//! image or read the host's files, see or signal the host's processes, mount, unshare or load
//! kernel modules, switch IPv6 back on, or reach the host, other sandboxes or link-local
//! addresses over the network. Each attempt runs as the runner user inside a fresh sandbox and
//! must fail, beside a positive control that shows the same check can pass; each test runs under
//! the host-wide runtime and under gVisor's runsc (and runc where it differs), from one body.

mod common;

use std::time::Duration;

use airlock_sandbox::{Backend, Limits, SandboxStatus, Secret};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_write_into_the_image_or_read_host_files() {
    escape_write_into_the_image_or_read_host_files_on(Rt::Default).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_write_into_the_image_or_read_host_files_runsc() {
    escape_write_into_the_image_or_read_host_files_on(Rt::Runsc).await
}

async fn escape_write_into_the_image_or_read_host_files_on(rt: Rt) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let b = backend_on(&root, rt.slot(2), rt).await;
    let secret = t.path().join("host-secret");
    std::fs::write(&secret, "HOSTSECRET").unwrap();
    let script = format!(
        "for f in /etc/passwd /usr/bin/sh-new /opt/airlock/airlock-runner; do \
           (echo x > $f) 2>/dev/null && echo WROTE $f; done\n\
         cat {p} 2>/dev/null && echo READ-HOST-FILE\n\
         cat /proc/1/root{p} 2>/dev/null && echo READ-VIA-PROC\n\
         ls /proc/1/root/ >/dev/null 2>&1 || echo no-proc-root\n\
         cat /sys/kernel/notes >/dev/null 2>&1 && echo READ-SYS-KERNEL\n\
         echo 1 > /proc/sys/kernel/panic 2>/dev/null && echo WROTE-PROC-SYS\n\
         (echo x > /home/runner/w) 2>/dev/null && echo CAN-WRITE-HOME\n\
         cat /etc/hosts >/dev/null 2>&1 && echo CAN-READ-ETC\n\
         echo done",
        p = secret.display()
    );
    let (code, log) = run_on(&b, &root, "img1", Limits::default(), &script, rt).await;
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("done"), "{log}");
    for good in ["CAN-WRITE-HOME", "CAN-READ-ETC"] {
        assert!(log.contains(good), "positive control {good}: {log}");
    }
    for bad in [
        "WROTE",
        "READ-HOST-FILE",
        "READ-VIA-PROC",
        "READ-SYS-KERNEL",
        "WROTE-PROC-SYS",
    ] {
        assert!(!log.contains(bad), "{bad}: {log}");
    }
    images().verify(&shell_image()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_see_or_signal_host_processes() {
    escape_see_or_signal_host_processes_on(Rt::Default).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_see_or_signal_host_processes_runsc() {
    escape_see_or_signal_host_processes_on(Rt::Runsc).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_see_or_signal_host_processes_runc() {
    escape_see_or_signal_host_processes_on(Rt::Runc).await
}

async fn escape_see_or_signal_host_processes_on(rt: Rt) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let b = backend_on(&root, rt.slot(3), rt).await;
    let mut host = std::process::Command::new("sleep")
        .arg("3131")
        .spawn()
        .unwrap();
    let pid = host.id();
    // Another sandbox, running `sleep 3132`.
    let m = shell_image();
    let other = spec_on("proc2", &m, Limits::default(), rt);
    b.create(&other).await.unwrap();
    b.start(&other, &Secret::new("exec sleep 3132".into()))
        .await
        .unwrap();
    let mut other_pid = None;
    for _ in 0..if rt.native() { 200 } else { 1 } {
        other_pid = find_process("sleep\x003132");
        if other_pid.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other_pid = match rt {
        Rt::Default | Rt::Runc => other_pid.expect("the other sandbox's sleep runs"),
        // Under gVisor the other job's `sleep` is no host process (it lives in that sandbox's
        // gVisor kernel): the host process to aim at is the other sandbox itself, its Sentry.
        Rt::Runsc => {
            let mut pid = None;
            for _ in 0..200 {
                pid = find_sandbox_process("proc2");
                if pid.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            pid.expect("the other sandbox's runsc-sandbox runs")
        }
    };
    let script = format!(
        "sleep 3133 & for i in 1 2 3 4 5 6 7 8 9 10; do \
           ps ax | grep -q '[s]leep 3133' && {{ echo OWN-VISIBLE; break; }}; sleep 0.1; done\n\
         ps ax | grep -c '[s]leep 3131' | grep -q '^0$' || echo SAW-HOST-PROCESS\n\
         ps ax | grep -c '[s]leep 3132' | grep -q '^0$' || echo SAW-OTHER-SANDBOX\n\
         m=0; for p in /proc/[0-9]*; do m=$((m+1)); done; echo procs=$m\n\
         kill -9 {pid} 2>/dev/null && echo KILLED-HOST\n\
         kill -9 {other_pid} 2>/dev/null && echo KILLED-OTHER\n\
         {kill_init}echo still-here",
        // gVisor delivers SIGKILL to the job's own pid 1 (its entry shell) where Linux
        // protects a namespace's init: the job would only end itself, so runsc skips it.
        kill_init = if rt.native() {
            "kill -9 1 2>/dev/null; "
        } else {
            ""
        }
    );
    let (code, log) = run_on(&b, &root, "proc1", Limits::default(), &script, rt).await;
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("OWN-VISIBLE"), "positive control: {log}");
    for bad in [
        "SAW-HOST-PROCESS",
        "SAW-OTHER-SANDBOX",
        "KILLED-HOST",
        "KILLED-OTHER",
    ] {
        assert!(!log.contains(bad), "{bad}: {log}");
    }
    assert_eq!(b.status("proc2").await.unwrap(), SandboxStatus::Running);
    b.destroy("proc2").await.unwrap();
    let procs: usize = log
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(procs < 10, "sees only its own processes: {log}");
    assert!(
        procs >= 2,
        "positive control: it sees itself and its sleep: {log}"
    );
    assert!(host.try_wait().unwrap().is_none(), "the host process lives");
    host.kill().unwrap();
    host.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_mount_unshare_and_kernel_modules() {
    escape_mount_unshare_and_kernel_modules_on(Rt::Default).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_mount_unshare_and_kernel_modules_runsc() {
    escape_mount_unshare_and_kernel_modules_on(Rt::Runsc).await
}

async fn escape_mount_unshare_and_kernel_modules_on(rt: Rt) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let b = backend_on(&root, rt.slot(4), rt).await;
    let script = r#"mkdir -p /tmp/m
mount -t tmpfs none /tmp/m 2>/dev/null && echo MOUNTED
unshare -Ur true 2>/dev/null && echo UNSHARED-USERNS
unshare -r -m true 2>/dev/null && echo UNSHARED-MOUNTNS
modprobe dummy 2>/dev/null && echo LOADED-MODULE
perl -e '
my ($z, $none, $m, $t) = ("", "none", "/tmp/m", "tmpfs");
print "init_module ", syscall(175, 0, 0, $z), " $!\n";
print "finit_module ", syscall(313, 0, $z, 0), " $!\n";
print "mount ", syscall(165, $none, $m, $t, 0, 0), " $!\n";
print "unshare ", syscall(272, 0x10000000), " $!\n";
print "bpf ", syscall(321, 0, 0, 0), " $!\n";
'
echo done"#;
    let (code, log) = run_on(&b, &root, "mnt1", Limits::default(), script, rt).await;
    assert_eq!(code, Some(0), "{log}");
    for bad in ["MOUNTED", "UNSHARED", "LOADED-MODULE"] {
        assert!(!log.contains(bad), "{bad}: {log}");
    }
    for call in ["init_module", "finit_module", "mount", "unshare", "bpf"] {
        assert!(
            log.contains(&format!("{call} -1 Operation not permitted")),
            "{call} must fail with EPERM: {log}"
        );
    }
}

/// IPv6 is off in every sandbox and a job cannot switch it back on: not through `/proc/sys`,
/// not with `sysctl`, and it cannot give itself an IPv6 address. Positive control: it reads the
/// setting (the file is there and says off), so the refusals are real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_switch_ipv6_back_on() {
    escape_switch_ipv6_back_on_on(Rt::Default).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_switch_ipv6_back_on_runsc() {
    escape_switch_ipv6_back_on_on(Rt::Runsc).await
}

async fn escape_switch_ipv6_back_on_on(rt: Rt) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let b = backend_on(&root, rt.slot(15), rt).await;
    let script = r#"echo "v6=$(cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6 2>&1)"
(echo 0 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6) 2>/dev/null && echo V6-ENABLED-PROC
sysctl -qw net.ipv6.conf.all.disable_ipv6=0 2>/dev/null && echo V6-ENABLED-SYSCTL
ip -6 addr add fd42::2/64 dev eth0 2>/dev/null && echo V6-ADDRESSED
echo "after=$(cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6 2>&1)"
ip -6 -o addr show dev eth0 | grep -q . && echo V6-ADDRESS-PRESENT
echo done"#;
    let (code, log) = run_on(&b, &root, "v6a", Limits::default(), script, rt).await;
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("done"), "{log}");
    for bad in ["V6-ENABLED", "V6-ADDRESSED", "V6-ADDRESS-PRESENT"] {
        assert!(!log.contains(bad), "{bad}: {log}");
    }
    if rt.native() {
        // gVisor's netstack has no such file; on the host's kernel it is there and says off.
        assert!(log.contains("v6=1") && log.contains("after=1"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_reaches_the_internet_but_not_the_host_or_other_sandboxes() {
    network_reaches_the_internet_but_not_the_host_or_other_sandboxes_on(Rt::Default).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_reaches_the_internet_but_not_the_host_or_other_sandboxes_runsc() {
    network_reaches_the_internet_but_not_the_host_or_other_sandboxes_on(Rt::Runsc).await
}

async fn network_reaches_the_internet_but_not_the_host_or_other_sandboxes_on(rt: Rt) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let b = backend_on(&root, rt.slot(7), rt).await;
    let inet = Internet::start(rt.slot(7));
    // A host service on every address.
    let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let hport = host.local_addr().unwrap().port();
    // Another sandbox serving on its address.
    let m = shell_image();
    let other = spec_on("net2", &m, Limits::default(), rt);
    b.create(&other).await.unwrap();
    b.start(
        &other,
        &Secret::new(
            "ip -4 -o addr show eth0\nexec python3 -c '\nimport socket\ns=socket.socket()\n\
             s.bind((\"0.0.0.0\", 8080)); s.listen(8); print(\"listening\", flush=True)\n\
             while True: s.accept()[0].close()\n'"
                .into(),
        ),
    )
    .await
    .unwrap();
    let slot = rt.slot(7);
    let other_ip = format!("10.{}.0.2", 100 + slot); // the first /30 of the slot
                                                     // The other sandbox must be listening before it is probed: without the firewall the probe
                                                     // would then reach it, so "timed out" below can only be the firewall's doing.
    let mut listening = false;
    for _ in 0..200 {
        let l = std::fs::read_to_string(root.join("net2/runner.log")).unwrap_or_default();
        if l.contains("listening") {
            listening = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(listening, "the other sandbox never listened");
    let probe = |addr: &str, port: u16, label: &str| {
        format!(
            "python3 -c '\nimport socket,sys\ns=socket.socket(); s.settimeout(3)\n\
             try:\n s.connect((\"{addr}\", {port})); print(\"{label}-REACHED\")\n\
             except Exception as e: print(\"{label}-blocked\", e)\n'\n"
        )
    };
    let mut script = String::from("ip -4 -o addr show eth0\n");
    script += &probe(&inet.addr.to_string(), inet.port, "INTERNET");
    script += &probe(&format!("10.{}.0.5", 100 + slot), hport, "GATEWAY"); // our own host end
    script += &probe(&format!("198.18.{slot}.1"), hport, "HOSTADDR"); // another host address
    script += &probe("127.0.0.1", hport, "LOOPBACK"); // the sandbox's own loopback
    script += &probe(&other_ip, 8080, "SANDBOX");
    script += &probe("169.254.169.254", 80, "METADATA");
    let (code, log) = run_on(&b, &root, "net1", Limits::default(), &script, rt).await;
    let other_log = std::fs::read_to_string(root.join("net2/runner.log")).unwrap();
    b.destroy("net2").await.unwrap();
    let log = format!("{log}\n--- net2:\n{other_log}");
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("INTERNET-REACHED"), "positive control: {log}");
    assert!(
        log.contains("net2:\nlistening") || log.contains("\nlistening"),
        "the other sandbox served: {log}"
    );
    for bad in ["GATEWAY", "HOSTADDR", "LOOPBACK", "SANDBOX", "METADATA"] {
        assert!(log.contains(&format!("{bad}-blocked")), "{bad}: {log}");
    }
    // Dropped by the firewall (a timeout), not refused by a missing listener.
    for dropped in ["GATEWAY", "HOSTADDR", "SANDBOX"] {
        assert!(
            log.contains(&format!("{dropped}-blocked timed out")),
            "{dropped}: {log}"
        );
    }
    drop(host);
    let left = leftovers(&root, &ids(&["net1", "net2"]));
    assert!(left.is_empty(), "{left:?}");
}
