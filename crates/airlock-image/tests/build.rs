//! Real image builds: mmdebstrap from the host's Debian sources, as root (CI runs as root and
//! `scripts/test.sh` installs mmdebstrap).

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use airlock_image::*;

fn target_dir() -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

fn standin() -> PathBuf {
    let t = target_dir();
    for p in [
        t.parent().unwrap().join("standin-bin/airlock-runner"),
        t.join("airlock-runner"),
    ] {
        if p.is_file() {
            return p;
        }
    }
    panic!("build the stand-in runner first: cargo build --bins (or scripts/build-standin.sh)");
}

fn require_root_and_mmdebstrap() {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    assert!(
        root,
        "image builds need root (mmdebstrap --mode=root); scripts/test.sh runs as root in CI"
    );
    assert!(
        Path::new("/usr/bin/mmdebstrap").is_file(),
        "apt-get install mmdebstrap (scripts/test.sh does)"
    );
}

fn leftovers(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn build_list_inspect_verify_remove_and_gc() {
    require_root_and_mmdebstrap();
    let d = tempfile::tempdir().unwrap();
    let store = ImageStore::new(d.path().join("images"));
    let mut steps = Vec::new();
    let mut lines = 0;
    let spec = BuildSpec {
        name: "tiny".into(),
        suite: "bookworm".into(),
        packages: vec!["ca-certificates".into()],
        runner: RunnerSource::Standin(standin()),
        mirror: None,
        vm: None,
    };
    let m = store
        .build(&spec, &mut |p| match p {
            Progress::Step { n, of, what } => steps.push(format!("{n}/{of} {what}")),
            Progress::Output(_) => lines += 1,
        })
        .unwrap();
    assert_eq!(steps.len(), 5, "{steps:?}");
    assert!(lines > 5, "mmdebstrap's progress is passed on");
    assert!(
        m.digest.starts_with("sha256:") && m.digest.len() == 71,
        "{}",
        m.digest
    );
    assert!(m.packages.iter().any(|p| p.name == "bash"));
    assert!(m
        .packages
        .iter()
        .any(|p| p.name == "ca-certificates" && !p.version.is_empty()));
    assert_eq!(m.runner.kind, "standin");
    assert!(
        m.size_bytes > 50 << 20 && m.files > 1000,
        "{} bytes, {} files",
        m.size_bytes,
        m.files
    );

    let rootfs = store.rootfs(&m);
    let runner = rootfs.join(STANDIN_PATH);
    assert!(std::fs::metadata(&runner).unwrap().permissions().mode() & 0o111 != 0);
    assert_eq!(sha256_file(&runner).unwrap(), m.runner.sha256);
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("runner:x:1001:1001:"), "{passwd}");
    let home = std::fs::metadata(rootfs.join("home/runner")).unwrap();
    assert_eq!((home.uid(), home.mode() & 0o777), (RUNNER_UID, 0o750));
    assert!(leftovers(store.root()).is_empty());

    // Listing, references, verification.
    assert_eq!(store.list().unwrap(), vec![m.clone()]);
    assert_eq!(store.resolve("tiny").unwrap(), m);
    let hex = &m.digest[7..];
    assert_eq!(store.resolve(&format!("tiny@{}", &hex[..12])).unwrap(), m);
    assert_eq!(store.resolve(&format!("tiny@{}", m.digest)).unwrap(), m);
    assert!(matches!(
        store.resolve("nope"),
        Err(ImageError::NotFound { .. })
    ));
    store.verify(&m).unwrap();
    let tamper = rootfs.join("etc/tampered");
    std::fs::write(&tamper, "x").unwrap();
    assert!(matches!(store.verify(&m), Err(ImageError::Modified { .. })));
    std::fs::remove_file(&tamper).unwrap();
    store.verify(&m).unwrap();

    // An older build of the same name (made by hand: the bootstrap takes a while).
    let old_hex = "0".repeat(64);
    let old_dir = store.root().join("tiny").join(&old_hex);
    std::fs::create_dir_all(old_dir.join("rootfs")).unwrap();
    let mut old = m.clone();
    old.digest = format!("sha256:{old_hex}");
    old.built_at = "2020-01-01T00:00:00.000Z".into();
    std::fs::write(
        old_dir.join("manifest.json"),
        serde_json::to_string(&old).unwrap(),
    )
    .unwrap();
    assert_eq!(
        store.resolve("tiny").unwrap(),
        m,
        "the name means the newest build"
    );
    assert!(matches!(
        store.resolve("tiny@"),
        Err(ImageError::Ambiguous { .. }) | Err(ImageError::NotFound { .. })
    ));

    // gc keeps the newest and anything in use.
    let in_use: HashSet<String> = [old.digest.clone()].into();
    assert!(store.gc(&in_use).unwrap().is_empty());
    let removed = store.gc(&HashSet::new()).unwrap();
    assert_eq!(removed, vec![old.clone()]);
    assert!(!old_dir.exists());

    // rm refuses a digest in use, then removes.
    let in_use: HashSet<String> = [m.digest.clone()].into();
    assert!(matches!(
        store.remove("tiny", &in_use),
        Err(ImageError::InUse { .. })
    ));
    assert!(rootfs.exists());
    let removed = store.remove(&m.short(), &HashSet::new()).unwrap();
    assert_eq!(removed, vec![m]);
    assert!(store.list().unwrap().is_empty());
    assert!(!store.root().join("tiny").exists());
    assert!(leftovers(store.root()).is_empty());
}

fn fake_runner_tarball(dir: &Path) -> (PathBuf, String) {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(
        src.join("run.sh"),
        "#!/bin/sh\nexec ./bin/Runner.Listener run \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        src.join("bin/Runner.Listener"),
        "#!/bin/sh\necho listener\n",
    )
    .unwrap();
    let tar = dir.join("actions-runner-linux-x64-2.330.0.tar.gz");
    let st = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let sum = sha256_file(&tar).unwrap();
    (tar, sum)
}

#[test]
fn the_runner_tarball_is_verified_before_anything_is_built() {
    let d = tempfile::tempdir().unwrap();
    let (tar, sum) = fake_runner_tarball(d.path());
    let store = ImageStore::new(d.path().join("images"));
    let wrong = "ab".repeat(32);
    let spec = BuildSpec {
        name: "gh".into(),
        suite: "bookworm".into(),
        packages: vec![],
        runner: RunnerSource::ActionsRunner {
            version: "2.330.0".into(),
            sha256: wrong.clone(),
            from: TarballSource::File(tar),
        },
        mirror: None,
        vm: None,
    };
    let t = std::time::Instant::now();
    match store.build(&spec, &mut |_| {}) {
        Err(ImageError::Checksum {
            expected, actual, ..
        }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, sum);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        t.elapsed().as_secs() < 5,
        "the checksum is checked before the bootstrap"
    );
    assert!(
        leftovers(store.root()).is_empty(),
        "{:?}",
        leftovers(store.root())
    );
    assert!(store.list().unwrap().is_empty());

    // Bad names and packages fail at once.
    let bad = BuildSpec {
        name: "Bad Name".into(),
        ..spec.clone()
    };
    assert!(matches!(
        store.build(&bad, &mut |_| {}),
        Err(ImageError::BadName { .. })
    ));
    let bad = BuildSpec {
        packages: vec!["curl; rm -rf /".into()],
        ..spec
    };
    assert!(matches!(
        store.build(&bad, &mut |_| {}),
        Err(ImageError::BadPackage { .. })
    ));
}

#[test]
fn github_runner_images_and_failed_builds() {
    require_root_and_mmdebstrap();
    let d = tempfile::tempdir().unwrap();
    let (tar, sum) = fake_runner_tarball(d.path());
    let store = ImageStore::new(d.path().join("images"));
    // A package that does not exist: mmdebstrap fails, nothing is left.
    let spec = BuildSpec {
        name: "gh".into(),
        suite: "bookworm".into(),
        packages: vec!["airlock-no-such-package".into()],
        runner: RunnerSource::ActionsRunner {
            version: "2.330.0".into(),
            sha256: sum.clone(),
            from: TarballSource::File(tar),
        },
        mirror: None,
        vm: None,
    };
    let err = store.build(&spec, &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Tool {
                tool: "mmdebstrap",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("airlock-no-such-package"),
        "the error shows mmdebstrap's reason: {err}"
    );
    assert!(
        leftovers(store.root()).is_empty(),
        "{:?}",
        leftovers(store.root())
    );
    assert!(store.list().unwrap().is_empty());

    // The same with a real package set builds, with GitHub's runner unpacked for the runner user.
    let spec = BuildSpec {
        packages: vec![],
        ..spec
    };
    let m = store.build(&spec, &mut |_| {}).unwrap();
    assert_eq!(
        (
            m.runner.kind.as_str(),
            m.runner.version.as_str(),
            m.runner.sha256.as_str()
        ),
        ("actions-runner", "2.330.0", sum.as_str())
    );
    let run = store.rootfs(&m).join(ACTIONS_RUNNER_DIR).join("run.sh");
    let meta = std::fs::metadata(&run).unwrap();
    assert_eq!(meta.uid(), RUNNER_UID);
    assert!(meta.mode() & 0o111 != 0);
    assert!(!store
        .root()
        .join("gh")
        .join(&m.digest[7..])
        .join("actions-runner.tar.gz")
        .exists());
}

/// Threads of one process (the daemon creating several sandboxes from a new image) and other
/// processes may all ask for the shifted copy at once: exactly one makes it, all get it whole.
#[test]
fn concurrent_callers_share_one_shifted_rootfs() {
    require_root_and_mmdebstrap();
    let d = tempfile::tempdir().unwrap();
    let store = ImageStore::new(d.path().join("images"));
    let hex = "cd".repeat(32);
    let dir = store.root().join("hand").join(&hex);
    let rootfs = dir.join("rootfs");
    for i in 0..200 {
        let sub = rootfs.join(format!("d{}", i % 10));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("f{i}")), format!("{i}")).unwrap();
    }
    std::fs::write(rootfs.join("suid"), "x").unwrap();
    std::fs::set_permissions(rootfs.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::hard_link(rootfs.join("suid"), rootfs.join("suid-link")).unwrap();
    std::os::unix::fs::symlink("d0", rootfs.join("link")).unwrap();
    let m = Manifest {
        name: "hand".into(),
        digest: format!("sha256:{hex}"),
        suite: "bookworm".into(),
        built_at: "2026-01-01T00:00:00.000Z".into(),
        build_seconds: 0.0,
        size_bytes: 0,
        files: 0,
        extra_packages: vec![],
        packages: vec![],
        runner: RunnerInfo {
            kind: "standin".into(),
            version: "0".into(),
            sha256: "0".repeat(64),
            path: "/opt/airlock/airlock-runner".into(),
        },
        vm: None,
    };
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string(&m).unwrap(),
    )
    .unwrap();
    let paths: Vec<PathBuf> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| store.shifted_rootfs(&m, 200_000).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(paths.iter().all(|p| *p == paths[0]), "{paths:?}");
    let shifted = &paths[0];
    let mut files = 0;
    let mut stack = vec![shifted.clone()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (200_000, 200_000),
            "{}",
            p.display()
        );
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            files += 1;
        }
    }
    assert_eq!(files, 200 + 3);
    let suid = std::fs::metadata(shifted.join("suid")).unwrap();
    assert_eq!(
        suid.mode() & 0o7777,
        0o4755,
        "set-id bits survive the chown"
    );
    assert_eq!(suid.nlink(), 2, "hard links are kept");
    assert!(
        leftovers(&dir).is_empty() || leftovers(&dir) == vec![".lock-rootfs-uid200000".to_string()]
    );
    // The original is untouched.
    assert_eq!(std::fs::metadata(rootfs.join("d0")).unwrap().uid(), 0);
}
