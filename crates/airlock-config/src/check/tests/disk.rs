//! `disk_gib`: the pool's disk cap, its default per backend, and `[pool.microvm] disk_gib`,
//! which may repeat the pool's but not contradict it.

use super::*;

fn pool(backend: &str, extra: &str) -> String {
    format!(
        "{GOOD}\n[[pool]]\nname = \"x\"\nscope = \"org:octo\"\nlabels = [\"x\"]\n\
         backend = \"{backend}\"\nimage = \"runner\"\n{extra}"
    )
}

#[test]
fn each_backend_gets_its_disk_cap() {
    let d = dir_with_secrets();
    std::fs::create_dir_all(d.path().join("state/images/runner")).unwrap();
    for (backend, extra, want) in [
        ("container", "", Some(crate::microvm::DEFAULT_DISK_GIB)),
        ("container", "disk_gib = 40\n", Some(40)),
        ("microvm", "", Some(crate::microvm::DEFAULT_DISK_GIB)),
        ("microvm", "disk_gib = 7\n", Some(7)),
        ("microvm", "\n[pool.microvm]\ndisk_gib = 9\n", Some(9)),
        (
            "microvm",
            "disk_gib = 9\n\n[pool.microvm]\ndisk_gib = 9\n",
            Some(9),
        ),
    ] {
        let (c, diags) = load_str(&pool(backend, extra), d.path())
            .unwrap_or_else(|e| panic!("{backend} {extra:?}: {e:?}"));
        let errors: Vec<_> = diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{backend} {extra:?}: {errors:?}");
        let p = &c.pools[2];
        assert_eq!(p.disk_gib, want, "{backend} {extra:?}");
        if let Some(m) = &p.microvm {
            assert_eq!(Some(m.disk_gib), want, "the VM's disk is the cap");
        }
    }
    // The process backend has no cap: a written one is ignored with a warning.
    let (c, diags) = load_str(
        &format!("{GOOD}\n[[pool]]\nname = \"x\"\nscope = \"org:octo\"\nlabels = [\"x\"]\ndisk_gib = 3\nrunner_command = \"/bin/sh\"\n"),
        d.path(),
    )
    .unwrap();
    assert_eq!(c.pools[2].disk_gib, None);
    assert!(
        diags.iter().any(|d| d.key == "pool[2].disk_gib"
            && d.severity == Severity::Warning
            && d.to_string().contains("ignored by the process backend")),
        "{diags:?}"
    );
}

#[test]
fn a_bad_or_contradicted_disk_cap_is_refused_with_its_key() {
    let d = dir_with_secrets();
    std::fs::create_dir_all(d.path().join("state/images/runner")).unwrap();
    for (backend, extra, key, says) in [
        (
            "container",
            "disk_gib = 0\n",
            "pool[2].disk_gib",
            "from 1 to 16384",
        ),
        (
            "container",
            "disk_gib = 20000\n",
            "pool[2].disk_gib",
            "from 1 to 16384",
        ),
        (
            "container",
            "disk_gib = \"big\"\n",
            "pool[2].disk_gib",
            "a whole number of GiB",
        ),
        (
            "microvm",
            "disk_gib = 4\n\n[pool.microvm]\ndisk_gib = 8\n",
            "pool[2].microvm.disk_gib",
            "contradicts pool[2].disk_gib = 4",
        ),
    ] {
        let diags = load_str(&pool(backend, extra), d.path()).unwrap_err();
        assert!(
            diags.iter().any(|d| d.key == key
                && d.severity == Severity::Error
                && d.to_string().contains(says)),
            "{backend} {extra:?}: no {key} error saying {says:?} in {diags:?}"
        );
    }
}
