//! A container sandbox's disk cap (`disk_gib`) for real, as root: a job that fills its root
//! filesystem fails with "No space left on device" inside its own sandbox, the host gives it no
//! more than the cap, and a neighbour writes as before. Under the host-wide runtime and gVisor.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use airlock_sandbox::{Backend, BackendSpec, Limits, Secret};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_fills_its_disk_fails_in_its_own_sandbox() {
    a_job_that_fills_its_disk_fails_in_its_own_sandbox_on(Rt::Default).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_fills_its_disk_fails_in_its_own_sandbox_runsc() {
    a_job_that_fills_its_disk_fails_in_its_own_sandbox_on(Rt::Runsc).await
}

async fn a_job_that_fills_its_disk_fails_in_its_own_sandbox_on(rt: Rt) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("containers");
    let _reaper = Reaper(root.clone());
    let b = backend_on(&root, rt.slot(17), rt).await;
    let m = shell_image();
    let capped = |id: &str, gib: u32| {
        let mut s = spec_on(id, &m, Limits::default(), rt);
        if let BackendSpec::Container(c) = &mut s.backend {
            c.disk_gib = Some(gib);
        }
        s
    };
    // The filler writes 1.5 GiB into a 1 GiB root; once full, even a small file is refused,
    // and what it wrote stays readable (nothing in the sandbox is corrupted).
    let filler = capped("fill1", 1);
    b.create(&filler).await.unwrap();
    let layer = root.join("fill1/layer.ext4");
    let file = std::fs::metadata(&layer).unwrap();
    assert_eq!(file.len(), 1 << 30, "the cap is the file's size");
    assert_eq!(file.mode() & 0o777, 0o600);
    assert!(
        file.blocks() * 512 < 64 << 20,
        "sparse: {} bytes taken before the job",
        file.blocks() * 512
    );
    let script = "head -c 1536M /dev/zero > /home/runner/fill; echo fill-exit=$?\n\
        echo small > /home/runner/small && echo SMALL-WRITTEN\n\
        echo kept=$(wc -c < /home/runner/fill)\n\
        exit 3";
    b.start(&filler, &Secret::new(script.into())).await.unwrap();
    let code = wait_exit(&b, "fill1", Duration::from_secs(120)).await;
    let log = std::fs::read_to_string(root.join("fill1/runner.log")).unwrap();
    assert_eq!(code, Some(3), "the job ran to its end: {log}");
    assert!(log.contains("No space left on device"), "{log}");
    assert!(!log.contains("fill-exit=0"), "the write failed: {log}");
    assert!(!log.contains("SMALL-WRITTEN"), "{log}");
    let kept: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("kept="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no kept= line: {log}"));
    assert!(
        (900 << 20..1 << 30).contains(&kept),
        "the job filled its disk and nothing more: {kept} bytes"
    );
    // The host gave it what it wrote, never more than the cap.
    let taken = std::fs::metadata(&layer).unwrap().blocks() * 512;
    assert!(
        (900 << 20..=1 << 30).contains(&taken),
        "the host holds {taken} bytes for it"
    );

    // A neighbour, started while the filler's disk is full, writes as before.
    let (ncode, nlog) = {
        let n = capped("fill2", 1);
        b.create(&n).await.unwrap();
        b.start(
            &n,
            &Secret::new(
                "head -c 100M /dev/zero > /home/runner/n && echo wrote=$(wc -c < /home/runner/n)"
                    .into(),
            ),
        )
        .await
        .unwrap();
        let code = wait_exit(&b, "fill2", Duration::from_secs(60)).await;
        let log = std::fs::read_to_string(root.join("fill2/runner.log")).unwrap();
        b.destroy("fill2").await.unwrap();
        (code, log)
    };
    assert_eq!(ncode, Some(0), "{nlog}");
    assert!(nlog.contains("wrote=104857600"), "{nlog}");

    b.destroy("fill1").await.unwrap();
    b.destroy("fill1").await.unwrap();
    assert!(!layer.exists());
    let left = leftovers(&root, &ids(&["fill1", "fill2"]));
    assert!(left.is_empty(), "{left:?}");
    assert!(
        airlock_sandbox::container::remnants(&root).is_empty(),
        "{:?}",
        airlock_sandbox::container::remnants(&root)
    );
}
