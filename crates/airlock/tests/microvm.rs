//! End to end on the microVM backend, as root: ghsim plays GitHub from a network namespace of
//! its own, airlock boots every job of a `microvm` pool in a fresh QEMU VM (TCG here: this host's
//! KVM cannot boot stock kernels) from an image built with `--vm`, beside a container pool of the
//! same daemon, and afterwards nothing of any sandbox is left on the host.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use airlock_ghsim::Status;
use common::vm::*;
use common::*;

/// The pools of most tests: microVMs (`vm`) beside containers (`box`).
fn vm_and_container_pools(vm_extra: &str) -> String {
    vm_pool(
        "vm",
        "vm",
        &vm_image().name,
        &format!("max_runners = 2\nmemory_mib = 768\ncpus = 1\n{vm_extra}"),
        "disk_gib = 2",
    ) + &container_pool("box", "box", "max_runners = 2")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_machine_jobs_run_in_vms_beside_a_container_pool() {
    let v = vm_env(1, &vm_and_container_pools("")).await;
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
    let mut v = vm_env(2, &vm_and_container_pools("boot_timeout = \"25s\"")).await;
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

/// `docker run` inside a microVM job: the job makes a one-binary root filesystem, imports it,
/// saves it to a tarball, removes it and loads it back (there is no registry, and nothing goes
/// to any outside address), then runs it without a network and on Docker's default bridge; the
/// containers' output is in the job's kept log. The runner uses Docker through the `docker`
/// group, without sudo.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_runs_inside_a_vm_job() {
    // Room for dockerd and its images.
    let docker = image("test-vm-docker", &["busybox-static"], Some(true));
    let v = vm_env(
        3,
        &vm_pool(
            "dock",
            "docker",
            &docker.name,
            "max_runners = 1\nmemory_mib = 1536\ncpus = 2",
            "disk_gib = 4",
        ),
    )
    .await;
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

/// With `min_idle`, VMs are booted ahead of demand: a job starts on a VM that was already up (its
/// runner online and idle before the job was queued), and the pool boots the next one at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_vm_is_up_before_the_job_arrives() {
    let v = vm_env(
        4,
        &vm_pool(
            "vm",
            "vm",
            &vm_image().name,
            "max_runners = 2\nmin_idle = 1\nmemory_mib = 768\ncpus = 1",
            "disk_gib = 2",
        ),
    )
    .await;
    let idle = |v: &common::vm::VEnv| -> Vec<String> {
        v.env
            .store()
            .live_runners()
            .unwrap()
            .into_iter()
            .filter(|r| r.state == airlock_core::RunnerState::Idle)
            .map(|r| r.name)
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(120), || !idle(&v).is_empty()).await,
        "no warm VM came up: {:?}",
        v.env.store().live_runners().unwrap()
    );
    let warm = idle(&v);
    v.env
        .submit_specs("octo/hello", vec![job("on-a-warm-vm", "vm", &["uname -r"])]);
    assert!(
        wait_until(Duration::from_secs(120), || v
            .env
            .sim()
            .jobs()
            .iter()
            .all(|j| j.status == Status::Completed))
        .await
    );
    let j = &v.env.sim().jobs()[0];
    assert_eq!(j.conclusion.as_deref(), Some("success"));
    let ran_on = j.runner_name.clone().unwrap();
    assert!(
        warm.contains(&ran_on),
        "the job ran on {ran_on}, not on the warm VM {warm:?}"
    );
    // The pool is warm again: a new VM, booted after the job took the old one.
    assert!(
        wait_until(Duration::from_secs(120), || idle(&v)
            .iter()
            .any(|r| !warm.contains(r)))
        .await,
        "no new warm VM: {:?}",
        v.env.store().live_runners().unwrap()
    );
    assert!(!v.remnants().is_empty(), "the warm VM exists");
    // A drain removes idle runners, warm VMs included, and leaves nothing.
    let mut v = v;
    v.drain().await;
    v.env.assert_nothing_left();
    let left = v.remnants();
    assert!(left.is_empty(), "{left:?}");
}

/// Pools on Firecracker and Cloud Hypervisor where KVM cannot boot their guests (this host): each
/// pool's probe boot refuses it with the reason, which the API, `airlock status`'s source and
/// the `airlock_pool_info` metric carry; its job waits queued rather than failing, and the
/// daemon's other pools run their jobs. (Where KVM works the pools get `kvm` instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kvm_only_drivers_are_refused_with_the_reason_while_other_pools_run() {
    let kvm_pool = |name: &str, driver: &str| {
        format!(
            "\n[[pool]]\nname = \"{name}\"\nscope = \"repo:octo/hello\"\nlabels = [\"self-hosted\", \"linux\", \"{name}\"]\n\
             backend = \"microvm\"\nimage = \"{}\"\nmax_runners = 1\nmemory_mib = 256\n\n\
             [pool.microvm]\ndriver = \"{driver}\"\ndisk_gib = 2\n",
            vm_image().name
        )
    };
    let microvm = format!(
        "firecracker = \"{}\"\njailer = \"{}\"\ncloud_hypervisor = \"{}\"\n",
        vmm_binary("firecracker").display(),
        vmm_binary("jailer").display(),
        vmm_binary("cloud-hypervisor").display()
    );
    let pools = kvm_pool("fc", "firecracker")
        + &kvm_pool("ch", "cloud-hypervisor")
        + &container_pool("box", "box", "max_runners = 1");
    let v = vm_env_with(6, &microvm, &pools).await;
    v.env.submit_specs(
        "octo/hello",
        vec![
            job("on-firecracker", "fc", &["echo never"]),
            job("in-a-container", "box", &["echo CONTAINER-RAN"]),
        ],
    );
    let d = &v.env.daemon().inner;
    assert!(
        wait_until(Duration::from_secs(60), || {
            d.pool_accel("fc").is_some() && d.pool_accel("ch").is_some()
        })
        .await,
        "both pools were probed"
    );
    let kvm_here = d.pool_accel("fc").unwrap().0 == "kvm";
    for (pool, driver) in [("fc", "firecracker"), ("ch", "cloud-hypervisor")] {
        let (label, reason) = d.pool_accel(pool).unwrap();
        if kvm_here {
            assert_eq!(label, "kvm", "{reason:?}");
            continue;
        }
        assert_eq!(label, "refused");
        let reason = reason.unwrap();
        assert!(
            reason.contains(&format!("{driver} runs only on KVM")),
            "{reason}"
        );
        assert!(reason.contains("use driver = \"qemu\""), "{reason}");
        // The gauge follows at the pass the probe's end wakes.
        let series =
            format!("airlock_pool_info{{pool=\"{pool}\",backend=\"microvm\",accel=\"refused\"}}");
        assert!(
            wait_until(Duration::from_secs(10), || metric(
                &v.env.metrics(),
                &series
            ) == 1.0)
            .await,
            "{}",
            v.env.metrics()
        );
    }
    // The container job runs; the Firecracker job waits for a pool that can serve it.
    assert!(
        wait_until(Duration::from_secs(120), || {
            v.env
                .sim()
                .jobs()
                .iter()
                .any(|j| j.name == "in-a-container" && j.status == Status::Completed)
        })
        .await,
        "the container pool's job ran"
    );
    if !kvm_here {
        let fc = v
            .env
            .sim()
            .jobs()
            .into_iter()
            .find(|j| j.name == "on-firecracker")
            .unwrap();
        assert_eq!(fc.status, Status::Queued, "it waits, it is not failed");
        let api = reqwest::get(format!("http://{}/api/v1/status", v.env.daemon().addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(api.contains("runs only on KVM"), "{api}");
    }
    v.env.assert_nothing_left();
    let left = v.remnants();
    assert!(left.is_empty(), "{left:?}");
}

/// A kernel matrix: one image with Debian's cloud and generic kernels, a pool per kernel by
/// name, and one whose `kernel` is a path outside the image (booted with the image's initramfs
/// of its release). Each job's `uname -r` is its pool's kernel. A pool naming a kernel the image
/// lacks creates nothing and says why; its job waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kernel_matrix_gives_each_pool_its_kernel() {
    // The daemon's log, shown when the test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let m = image_with_kernels(
        "test-vm-matrix",
        &[],
        Some(false),
        &["linux-image-cloud-amd64", "linux-image-amd64"],
    );
    let kernels = &m.vm.as_ref().unwrap().kernels;
    let version = |cloud: bool| {
        kernels
            .iter()
            .find(|k| k.version.ends_with("-cloud-amd64") == cloud)
            .unwrap_or_else(|| panic!("{kernels:?}"))
            .clone()
    };
    let (cloud, generic) = (version(true), version(false));
    // "The host's own kernel": the generic one, copied out of the image.
    let host = tempfile::tempdir().unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let host_kernel = host.path().join("vmlinuz-mine");
    std::fs::copy(image_store().dir(&m).join(&generic.kernel), &host_kernel).unwrap();
    std::fs::set_permissions(&host_kernel, std::fs::Permissions::from_mode(0o444)).unwrap();
    let pool = |name: &str, kernel: &str| {
        vm_pool(
            name,
            name,
            &m.name,
            "max_runners = 1\nmemory_mib = 512\ncpus = 1",
            &format!("disk_gib = 2\nkernel = \"{kernel}\""),
        )
    };
    let pools = pool("cloud", &cloud.version)
        + &pool("generic", &generic.version)
        + &pool("hostk", &host_kernel.display().to_string())
        + &pool("nokernel", "6.1.0-999-nope-amd64");
    let v = vm_env(7, &pools).await;
    let uname_is = |v: &str| format!("uname -r; test \"$(uname -r)\" = {v}");
    v.env.submit_specs(
        "octo/hello",
        vec![
            job("on-cloud", "cloud", &[&uname_is(&cloud.version)]),
            job("on-generic", "generic", &[&uname_is(&generic.version)]),
            job("on-host-kernel", "hostk", &[&uname_is(&generic.version)]),
            job("never", "nokernel", &["true"]),
        ],
    );
    let sim = v.env.sim();
    let done = |name: &str| {
        sim.jobs()
            .iter()
            .any(|j| j.name == name && j.status == Status::Completed)
    };
    assert!(
        wait_until(Duration::from_secs(300), || {
            done("on-cloud") && done("on-generic") && done("on-host-kernel")
        })
        .await,
        "{:?}\nkept logs: {}\nlive VMs: {}",
        conclusions(sim),
        kept_logs(&v.env.state()),
        live_vm_logs(&v.env.state())
    );
    let logs = kept_logs(&v.env.state());
    let got = conclusions(sim);
    for name in ["on-cloud", "on-generic", "on-host-kernel"] {
        assert!(
            got.contains(&(name.to_string(), Some("success".into()))),
            "{got:?} {logs}"
        );
    }
    assert!(
        logs.contains(&cloud.version) && logs.contains(&generic.version),
        "{logs}"
    );
    let never = sim.jobs().into_iter().find(|j| j.name == "never").unwrap();
    assert_eq!(never.status, Status::Queued);
    // The runners that served the jobs finish and are torn down; "nokernel" never made one.
    assert!(
        wait_until(Duration::from_secs(60), || v
            .env
            .store()
            .live_runners()
            .unwrap()
            .is_empty())
        .await
    );
    let m = v.env.metrics();
    assert!(
        metric(
            &m,
            "airlock_reconcile_errors_total{op=\"create\",class=\"image\"}"
        ) >= 1.0,
        "{m}"
    );
    v.env.assert_nothing_left();
    let left = v.remnants();
    assert!(left.is_empty(), "{left:?}");
}
