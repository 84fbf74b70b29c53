//! End-to-end tests of `load_str`: whole config texts in, a `Config` or the full diagnostic list
//! out, with the key and line of each problem.
//!
//! They live here, not beside each section, because most cases cross sections (one bad file
//! with problems everywhere, a pool's image under `server.state_dir`) and all share the same
//! fixtures. They must never depend on the host beyond their temporary directory and `/bin/sh`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::load_str;
use crate::{Accel, Auth, BackendKind, MicrovmPool, Severity, VmDriver};
use airlock_core::egress::EgressMode;

mod disk;

fn dir_with_secrets() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (f, mode) in [("token", 0o600), ("secret", 0o600), ("open", 0o644)] {
        let p = d.path().join(f);
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    d
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:9090"
state_dir = "state"

[github]
api_url = "http://127.0.0.1:1234/"
webhook_secret_file = "secret"
poll_interval = "3s"
token_file = "token"

[[pool]]
name = "small"
scope = "repo:octo/hello"
labels = ["self-hosted", "linux"]
runner_command = "/bin/sh"
max_runners = 3

[[pool]]
name = "org-big"
scope = "org:octo"
labels = ["self-hosted", "big"]
runner_command = "/bin/sh"
boot_timeout = "90s"
"#;

#[test]
fn a_good_config_loads_with_defaults() {
    let d = dir_with_secrets();
    let (c, diags) = load_str(GOOD, d.path()).unwrap();
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.server.state_dir, d.path().join("state"));
    assert_eq!(c.github.api_url, "http://127.0.0.1:1234");
    assert_eq!(c.github.poll_interval, Duration::from_secs(3));
    assert_eq!(c.pools.len(), 2);
    assert_eq!(c.pools[0].runner_group, "Default");
    assert_eq!(c.pools[0].idle_timeout, Duration::from_secs(600));
    assert_eq!(c.pools[1].boot_timeout, Duration::from_secs(90));
    assert_eq!(c.pools[1].max_runners, 8);
    assert!(matches!(c.github.auth, Auth::Token { .. }));
}

#[test]
fn write_pacing_and_the_jit_stock_are_checked() {
    let d = dir_with_secrets();
    let (c, _) = load_str(GOOD, d.path()).unwrap();
    assert_eq!(
        c.github.write_interval,
        airlock_core::DEFAULT_WRITE_INTERVAL
    );
    assert_eq!(
        (c.pools[0].jit_stock, c.pools[0].jit_stock_refresh),
        (0, Duration::from_secs(12 * 3600))
    );
    let with = |github: &str, pool: &str| {
        GOOD.replace(
            "token_file = \"token\"",
            &format!("token_file = \"token\"\n{github}"),
        )
        .replace("max_runners = 3", &format!("max_runners = 3\n{pool}"))
    };
    let (c, _) = load_str(
        &with(
            "write_interval = \"0s\"",
            "jit_stock = 5\njit_stock_refresh = \"1h\"",
        ),
        d.path(),
    )
    .unwrap();
    assert_eq!(
        c.github.write_interval,
        Duration::ZERO,
        "zero turns the pause off"
    );
    assert_eq!(
        (c.pools[0].jit_stock, c.pools[0].jit_stock_refresh),
        (5, Duration::from_secs(3600))
    );
    let mut failures = Vec::new();
    for (github, pool, key) in [
        ("write_interval = \"61s\"", "", "github.write_interval"),
        ("write_interval = \"soon\"", "", "github.write_interval"),
        ("", "jit_stock = 1001", "pool[0].jit_stock"),
        ("", "jit_stock = -1", "pool[0].jit_stock"),
        (
            "",
            "jit_stock_refresh = \"24h\"",
            "pool[0].jit_stock_refresh",
        ),
        (
            "",
            "jit_stock_refresh = \"0s\"",
            "pool[0].jit_stock_refresh",
        ),
    ] {
        match load_str(&with(github, pool), d.path()) {
            Ok(_) => failures.push(format!("{github}{pool}: accepted")),
            Err(diags) if !diags.iter().any(|d| d.key == key) => {
                failures.push(format!("{github}{pool}: no error for {key}: {diags:?}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn every_problem_is_reported_at_once_with_key_and_line() {
    let d = dir_with_secrets();
    let bad = r#"
[server]
listen = "nonsense"
colour = "blue"
max_parallel_ops = 0
sandbox_nice = -3

[github]
poll_interval = "soon"
token_file = "open"
webhook_secret_file = "missing"

[[pool]]
name = "a"
scope = "repo:octo/hello"
labels = []
runner_command = "/bin/sh"

[[pool]]
name = "b"
scope = "team:x"
labels = ["x"]
min_idle = 5
max_runners = 2
runner_command = "/nonexistent/runner"
backend = "kvm"
boot_timeout = 7
"#;
    let diags = load_str(bad, d.path()).unwrap_err();
    let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    let want = [
        ("server.listen", 3),
        ("server.colour", 4),
        ("server.max_parallel_ops", 5),
        ("server.sandbox_nice", 6),
        ("github.poll_interval", 9),
        ("github.token_file", 10),
        ("github.webhook_secret_file", 11),
        ("pool[0].labels", 16),
        ("pool[1].scope", 21),
        ("pool[1].min_idle", 23),
        ("pool[1].runner_command", 25),
        ("pool[1].backend", 26),
        ("pool[1].boot_timeout", 27),
    ];
    for (key, line) in want {
        assert!(
            diags
                .iter()
                .any(|d| d.key == key && d.line == Some(line) && d.severity == Severity::Error),
            "no error for {key} at line {line} in:\n{}",
            text.join("\n")
        );
    }
    assert!(
        text.iter()
            .any(|t| t.contains("readable by other users (mode 0644)")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t.contains("can never match")),
        "{text:?}"
    );
}

#[test]
fn microvm_pools_and_the_microvm_section() {
    let d = dir_with_secrets();
    std::fs::create_dir_all(d.path().join("state/images/vm")).unwrap();
    std::fs::write(d.path().join("bzImage"), b"kernel").unwrap();
    let good = format!(
        "{GOOD}\n[microvm]\nqemu = \"/opt/qemu/bin/qemu-system-x86_64\"\nuid_base = 300000\n\n\
         [[pool]]\nname = \"vm\"\nscope = \"org:octo\"\nlabels = [\"vm\"]\nbackend = \"microvm\"\n\
         image = \"vm\"\ncpus = 2\n\n[pool.microvm]\naccel = \"tcg\"\ndisk_gib = 4\n\n\
         [[pool]]\nname = \"fc\"\nscope = \"org:octo\"\nlabels = [\"fc\"]\nbackend = \"microvm\"\n\
         image = \"vm\"\nmemory_mib = 512\n\n[pool.microvm]\ndriver = \"firecracker\"\nkernel = \"./bzImage\"\n"
    );
    let (c, diags) = load_str(&good, d.path()).unwrap();
    assert!(diags.is_empty(), "{diags:?}");
    let vm = &c.pools[2];
    assert_eq!(vm.backend, BackendKind::Microvm);
    assert_eq!(
        vm.microvm,
        Some(MicrovmPool {
            driver: VmDriver::Qemu,
            accel: Accel::Tcg,
            kernel: None,
            disk_gib: 4
        })
    );
    assert_eq!(
        (vm.cpus, vm.memory_mib),
        (Some(2.0), Some(2048)),
        "default guest RAM"
    );
    let fc = c.pools[3].microvm.as_ref().unwrap();
    assert_eq!(
        (fc.driver, fc.accel, fc.disk_gib),
        (VmDriver::Firecracker, Accel::Auto, 10)
    );
    assert_eq!(
        fc.kernel.as_deref(),
        Some(d.path().join("./bzImage").to_str().unwrap())
    );
    assert_eq!(c.pools[3].memory_mib, Some(512));
    assert_eq!(
        c.microvm.qemu,
        PathBuf::from("/opt/qemu/bin/qemu-system-x86_64")
    );
    assert_eq!(
        c.microvm.firecracker,
        PathBuf::from("firecracker"),
        "looked up in PATH"
    );
    assert_eq!(c.microvm.uid_base, 300_000);
    assert!(c.pools[0].microvm.is_none());

    let bad = format!(
        "{GOOD}\n[microvm]\nuid_base = 5\nbochs = \"yes\"\n\n\
         [[pool]]\nname = \"vm\"\nscope = \"org:octo\"\nlabels = [\"vm\"]\nbackend = \"microvm\"\n\
         image = \"vm\"\ncpus = 1.5\n\n[pool.microvm]\ndriver = \"bochs\"\naccel = \"warp\"\n\
         kernel = \"/no/such/bzImage\"\ndisk_gib = 0\nballoon = true\n\n\
         [[pool]]\nname = \"ct\"\nscope = \"org:octo\"\nlabels = [\"ct\"]\nbackend = \"container\"\n\
         image = \"vm\"\n\n[pool.microvm]\ndriver = \"qemu\"\n\n\
         [[pool]]\nname = \"fc\"\nscope = \"org:octo\"\nlabels = [\"fc\"]\nbackend = \"microvm\"\n\
         image = \"vm\"\n\n[pool.microvm]\ndriver = \"firecracker\"\naccel = \"tcg\"\n"
    );
    let diags = load_str(&bad, d.path()).unwrap_err();
    let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    let base = GOOD.lines().count();
    for (key, line, says) in [
        ("microvm.uid_base", base + 3, "at least 1000"),
        ("microvm.bochs", base + 4, "unknown key"),
        ("pool[2].cpus", base + 12, "whole number"),
        ("pool[2].microvm.driver", base + 15, "not a driver"),
        ("pool[2].microvm.accel", base + 16, "not an accelerator"),
        ("pool[2].microvm.kernel", base + 17, "is not a file"),
        ("pool[2].microvm.disk_gib", base + 18, "from 1 to 16384"),
        ("pool[2].microvm.balloon", base + 19, "unknown key"),
        (
            "pool[3].microvm",
            base + 28,
            "only for backend = \"microvm\"",
        ),
        (
            "pool[4].microvm.accel",
            base + 40,
            "only the qemu driver can emulate",
        ),
    ] {
        assert!(
            diags.iter().any(|d| d.key == key
                && d.severity == Severity::Error
                && d.line == Some(line)
                && d.message.contains(says)),
            "no error {says:?} for {key} (line {line}) in:\n{}",
            text.join("\n")
        );
    }
}

#[test]
fn container_pools_and_the_container_section() {
    let d = dir_with_secrets();
    std::fs::create_dir_all(d.path().join("state/images/runner")).unwrap();
    let good = format!(
        "{GOOD}\n[container]\nruntime = \"runc\"\nsubnet = \"10.9.0.0/16\"\ndns = [\"9.9.9.9\"]\n\n\
         [[pool]]\nname = \"box\"\nscope = \"org:octo\"\nlabels = [\"box\"]\nbackend = \"container\"\n\
         image = \"runner\"\ncpus = 1.5\nmemory_mib = 2048\npids_max = 512\n"
    );
    let (c, diags) = load_str(&good, d.path()).unwrap();
    assert!(diags.is_empty(), "{diags:?}");
    let p = &c.pools[2];
    assert_eq!(p.backend, BackendKind::Container);
    assert_eq!(p.image.as_deref(), Some("runner"));
    assert_eq!(p.runner_command, None, "taken from the image's manifest");
    assert_eq!(
        (p.cpus, p.memory_mib, p.pids_max),
        (Some(1.5), Some(2048), Some(512))
    );
    assert_eq!(c.container.runtime.as_deref(), Some("runc"));
    assert_eq!(c.container.subnet, "10.9.0.0/16");
    assert_eq!(c.container.uid_base, 100_000);
    assert_eq!(c.server.job_log_max_bytes, 16 << 20);

    let bad = r#"
[server]
state_dir = "state,x"
job_log_max_mib = 0

[github]
token_file = "token"
webhook_secret_file = "secret"

[container]
subnet = "10.9.0.1/16"
uid_base = 0
dns = ["127.0.0.53", "nine"]
colour = "red"

[[pool]]
name = "box"
scope = "org:octo"
labels = ["box"]
backend = "container"
cpus = 0
memory_mib = 1
pids_max = 2
io_weight = 5000
runner_command = "relative/run.sh"

[[pool]]
name = "later"
scope = "org:octo"
labels = ["later"]
backend = "container"
image = "never-built"
"#;
    let diags = load_str(bad, d.path()).unwrap_err();
    let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    for (key, line) in [
        ("server.state_dir", 3),
        ("server.job_log_max_mib", 4),
        ("container.subnet", 11),
        ("container.uid_base", 12),
        ("container.dns", 13),
        ("container.colour", 14),
        ("pool[0].image", 16),
        ("pool[0].cpus", 21),
        ("pool[0].memory_mib", 22),
        ("pool[0].pids_max", 23),
        ("pool[0].io_weight", 24),
        ("pool[0].runner_command", 25),
    ] {
        assert!(
            diags.iter().any(|d| d.key == key
                && d.severity == Severity::Error
                && (d.line == Some(line) || key == "pool[0].image")),
            "no error for {key} (line {line}) in:\n{}",
            text.join("\n")
        );
    }
    assert!(
        diags.iter().any(|d| d.key == "pool[1].image"
            && d.severity == Severity::Warning
            && d.message.contains("airlock image build never-built")),
        "{text:?}"
    );
}

#[test]
fn a_container_pool_may_name_its_own_runtime() {
    let d = dir_with_secrets();
    std::fs::create_dir_all(d.path().join("state/images/runner")).unwrap();
    let pool = |name: &str, backend: &str, runtime: &str| {
        format!(
            "\n[[pool]]\nname = \"{name}\"\nscope = \"org:octo\"\nlabels = [\"{name}\"]\n\
             backend = \"{backend}\"\nimage = \"runner\"\n{runtime}"
        )
    };
    let good = format!(
        "{GOOD}{}{}{}",
        pool("gv", "container", "runtime = \"runsc\"\n"),
        pool("odd", "container", "runtime = \"/opt/no-such-runtime\"\n"),
        pool("plain", "container", ""),
    );
    let (c, diags) = load_str(&good, d.path()).unwrap();
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(c.pools[2].runtime.as_deref(), Some("runsc"));
    // Unknown names are the probe's to refuse, not the config's.
    assert_eq!(c.pools[3].runtime.as_deref(), Some("/opt/no-such-runtime"));
    assert_eq!(
        c.pools[4].runtime, None,
        "the host-wide [container] runtime"
    );
    assert_eq!(c.pools[0].runtime, None);

    let bad = format!(
        "{GOOD}{}{}{}",
        pool("empty", "container", "runtime = \"\"\n"),
        pool("vm", "microvm", "runtime = \"runsc\"\n"),
        pool("num", "container", "runtime = 3\n"),
    );
    let diags = load_str(&bad, d.path()).unwrap_err();
    let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    let line_of = |needle: &str, nth: usize| {
        bad.lines()
            .enumerate()
            .filter(|(_, l)| l.starts_with(needle))
            .nth(nth)
            .map(|(i, _)| i + 1)
    };
    for (key, line, what) in [
        ("pool[2].runtime", line_of("runtime = \"\"", 0), "empty"),
        (
            "pool[3].runtime",
            line_of("runtime = \"runsc\"", 0),
            "only for backend = \"container\" (this pool's is \"microvm\")",
        ),
        (
            "pool[4].runtime",
            line_of("runtime = 3", 0),
            "expected an OCI runtime name or path",
        ),
    ] {
        assert!(
            diags.iter().any(|d| d.key == key
                && d.severity == Severity::Error
                && d.line == line
                && d.message.contains(what)),
            "no error for {key} (line {line:?}, {what}) in:\n{}",
            text.join("\n")
        );
    }
}

#[test]
fn warnings_for_identical_label_sets_and_no_webhook_secret() {
    let d = dir_with_secrets();
    let text = r#"
[github]
token_file = "token"
[[pool]]
name = "a"
scope = "repo:o/r"
labels = ["Linux", "x64"]
runner_command = "/bin/sh"
[[pool]]
name = "b"
scope = "repo:o/r"
labels = ["x64", "linux"]
runner_command = "/bin/sh"
"#;
    let (_, diags) = load_str(text, d.path()).unwrap();
    assert_eq!(diags.len(), 2, "{diags:?}");
    assert!(diags.iter().all(|d| d.severity == Severity::Warning));
    assert!(diags
        .iter()
        .any(|d| d.key == "pool[1].labels" && d.line == Some(12)));
    assert!(diags.iter().any(|d| d.key == "github.webhook_secret_file"));
}

#[test]
fn credentials_must_be_one_kind() {
    let d = dir_with_secrets();
    let pool =
        "[[pool]]\nname=\"a\"\nscope=\"org:o\"\nlabels=[\"x\"]\nrunner_command=\"/bin/sh\"\n";
    let cases = [
        ("[github]\n", "no credentials"),
        ("[github]\ntoken_file=\"token\"\napp_id=1\n", "not both"),
        ("[github]\napp_id=1\n", "needs private_key_file"),
        (
            "[github]\napp_id=1\nclient_id=\"Iv1.x\"\nprivate_key_file=\"token\"\n",
            "not both",
        ),
    ];
    for (gh, want) in cases {
        let diags = load_str(&format!("{gh}{pool}"), d.path()).unwrap_err();
        assert!(
            diags.iter().any(|x| x.message.contains(want)),
            "{gh}: {diags:?}"
        );
    }
    let (c, _) = load_str(
        &format!("[github]\nclient_id=\"Iv1.x\"\nprivate_key_file=\"token\"\n{pool}"),
        d.path(),
    )
    .unwrap();
    assert!(matches!(c.github.auth, Auth::App { ref issuer, .. } if issuer == "Iv1.x"));
}

#[test]
fn syntax_errors_name_the_line() {
    let diags = load_str("[server]\nlisten = \n", Path::new(".")).unwrap_err();
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].line, Some(2), "{diags:?}");
}

/// Found by the `config` fuzz target (`fuzz/regressions/config/`): a `job_timeout` of millions
/// of years loaded, and became a negative number of milliseconds in the pool's spec; a
/// `memory_mib` past 16 TiB overflows the byte counts backends compute.
#[test]
fn durations_and_memory_have_a_ceiling() {
    let d = dir_with_secrets();
    let text = format!("{GOOD}job_timeout = \"300000000y\"\nmemory_mib = 17592186044416\n");
    let diags = load_str(&text, d.path()).unwrap_err();
    let errors: Vec<(&str, &str)> = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.key.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            ("pool[1].memory_mib", "must be from 16 to 16777216 (16 TiB)"),
            (
                "pool[1].job_timeout",
                "\"300000000y\" is too long: a duration may be at most 100y"
            ),
        ],
        "{diags:?}"
    );

    let text = format!("{GOOD}job_timeout = \"100y\"\nmemory_mib = 16777216\n");
    let (c, _) = load_str(&text, d.path()).unwrap();
    assert_eq!(c.pools[1].spec().job_timeout, 3_155_760_000_000);
    assert_eq!(c.pools[1].memory_mib, Some(1 << 24));
}

/// Found by the `config` fuzz target (`fuzz/regressions/config/`): a `job_timeout` of "1ns"
/// loaded as longer than zero, and became a timeout of 0 ms in the pool's spec.
#[test]
fn durations_are_at_least_a_millisecond() {
    let d = dir_with_secrets();
    let text = format!("{GOOD}job_timeout = \"999us\"\nidle_timeout = \"1ns\"\n");
    let diags = load_str(&text, d.path()).unwrap_err();
    let errors: Vec<(&str, &str)> = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.key.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            (
                "pool[1].idle_timeout",
                "\"1ns\" is too short: a duration must be at least 1ms"
            ),
            (
                "pool[1].job_timeout",
                "\"999us\" is too short: a duration must be at least 1ms"
            ),
        ],
        "{diags:?}"
    );

    let text = format!("{GOOD}job_timeout = \"1ms\"\n");
    let (c, _) = load_str(&text, d.path()).unwrap();
    assert_eq!(c.pools[1].spec().job_timeout, 1);
}

/// Found by the `config` fuzz target (`fuzz/regressions/config/`): toml reports a control
/// character in a comment with an empty message, which left `check-config` saying nothing.
#[test]
fn a_syntax_error_always_says_what_is_wrong() {
    for (text, line, message) in [
        ("#\0", 1, "unexpected character '\\0'"),
        ("a = 1\n# x\u{7f}\n", 2, "unexpected character '\\u{7f}'"),
        ("a = 1\n= 2\n", 2, ""),
    ] {
        let diags = load_str(text, Path::new(".")).unwrap_err();
        assert_eq!(diags.len(), 1, "{text:?}: {diags:?}");
        assert_eq!(diags[0].line, Some(line), "{text:?}: {diags:?}");
        assert!(!diags[0].message.is_empty(), "{text:?}: {diags:?}");
        assert!(diags[0].message.starts_with(message), "{text:?}: {diags:?}");
    }
}

#[test]
fn a_pools_egress_section_is_checked_entry_by_entry() {
    let d = dir_with_secrets();
    // Open with no list: the default, as when the section is absent.
    let good = GOOD.replace(
        "max_runners = 3\n",
        "max_runners = 3\n\n[pool.egress]\nmode = \"open\"\n",
    );
    let (c, diags) = load_str(&good, d.path()).unwrap();
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(c.pools[0].egress, Default::default());
    assert_eq!(c.pools[1].egress, Default::default());

    // A list under open is kept (for audit later) and said to do nothing.
    let listed = GOOD.replace(
        "max_runners = 3\n",
        "max_runners = 3\n\n[pool.egress]\nallow = [\"github.com\", \"*.githubusercontent.com\", \"pypi.org:443\", \"10.20.0.0/16\", \"github.com\"]\n",
    );
    let (c, diags) = load_str(&listed, d.path()).unwrap();
    let allow: Vec<String> = c.pools[0]
        .egress
        .allow
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(
        allow,
        [
            "github.com",
            "*.githubusercontent.com",
            "pypi.org:443",
            "10.20.0.0/16"
        ]
    );
    let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    assert!(
        diags
            .iter()
            .any(|d| d.key == "pool[0].egress.allow[4]" && d.message.contains("listed twice")),
        "{text:?}"
    );
    assert!(
        diags
            .iter()
            .any(|d| d.key == "pool[0].egress.allow" && d.message.contains("no effect")),
        "{text:?}"
    );
    assert!(
        diags.iter().any(|d| d.key == "pool[0].egress.allow[1]"
            && d.severity == Severity::Warning
            && d.message
                .contains("\"githubusercontent.com\" is a public suffix")),
        "a wildcard over a public suffix is kept, with a warning: {text:?}"
    );

    // Every bad entry and key at once, with its index.
    let bad = GOOD.replace(
        "max_runners = 3\n",
        "max_runners = 3\n\n[pool.egress]\nmode = \"block\"\nallow = [\"*.com\", \"169.254.169.254\", \"ok.example\", \"10.0.0.1/8\", \"x.example:0\"]\ncolour = 1\n",
    )
    .replace(
        "boot_timeout = \"90s\"\n",
        "boot_timeout = \"90s\"\negress = { mode = \"deny\" }\n",
    );
    let diags = load_str(&bad, d.path()).unwrap_err();
    let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    let want = [
        ("pool[0].egress.allow[0]", "top-level domain"),
        ("pool[0].egress.allow[1]", "cloud metadata"),
        (
            "pool[0].egress.allow[3]",
            "host bits are set: the range is 10.0.0.0/8",
        ),
        ("pool[0].egress.allow[4]", "1 to 65535"),
        (
            "pool[0].egress.colour",
            "unknown key; expected one of: mode, allow",
        ),
        ("pool[1].egress.mode", "\"deny\" is not a mode"),
    ];
    let mut missing = Vec::new();
    for (key, msg) in want {
        if !diags
            .iter()
            .any(|d| d.key == key && d.message.contains(msg) && d.severity == Severity::Error)
        {
            missing.push(format!("{key}: {msg}"));
        }
    }
    assert!(
        missing.is_empty(),
        "missing {missing:?} in:\n{}",
        text.join("\n")
    );
    assert!(
        !diags.iter().any(|d| d.key == "pool[0].egress.allow[2]"),
        "a good entry beside bad ones is not blamed: {text:?}"
    );
    // An upstream proxy: an http URL, with audit or block.
    let up = GOOD.replace(
        "max_runners = 3\n",
        "max_runners = 3\n\n[pool.egress]\nmode = \"block\"\nallow = [\"github.com\"]\nproxy = \"http://squid.corp:3128\"\n",
    );
    let (c, diags) = load_str(&up, d.path()).unwrap();
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(
        c.pools[0]
            .egress
            .proxy
            .as_ref()
            .map(|p| p.to_string())
            .as_deref(),
        Some("http://squid.corp:3128")
    );
    for (text, want) in [
        (up.replace("\"block\"", "\"open\""), "needs mode"),
        (
            up.replace("http://squid.corp:3128", "https://squid.corp"),
            "not supported",
        ),
        (
            up.replace("http://squid.corp:3128", "http://u:p@squid.corp:3128"),
            "credentials",
        ),
    ] {
        let err = match load_str(&text, d.path()) {
            Err(e) => format!("{e:?}"),
            Ok((_, diags)) => format!("{diags:?}"),
        };
        assert!(
            err.contains("pool[0].egress.proxy") && err.contains(want),
            "{want}: {err}"
        );
    }
    // Audit and block are accepted as they are; block with nothing allowed is warned of.
    let audit = GOOD.replace(
        "max_runners = 3\n",
        "max_runners = 3\n\n[pool.egress]\nmode = \"audit\"\nallow = [\"github.com\"]\n",
    );
    let (c, diags) = load_str(&audit, d.path()).unwrap();
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(c.pools[0].egress.mode, EgressMode::Audit);
    let block = audit.replace("\"audit\"", "\"block\"");
    let (c, diags) = load_str(&block, d.path()).unwrap();
    assert_eq!(c.pools[0].egress.mode, EgressMode::Block);
    assert!(diags.is_empty(), "{diags:?}");
    let empty = block.replace("allow = [\"github.com\"]\n", "");
    let (_, diags) = load_str(&empty, d.path()).unwrap();
    assert!(
        diags.iter().any(|d| d.key == "pool[0].egress.mode"
            && d.severity == Severity::Warning
            && d.message.contains("cannot reach GitHub")),
        "{diags:?}"
    );
}

/// What `airlock_core::egress::suggest` proposes pastes into a pool as it is: real TOML, every
/// entry accepted.
#[test]
fn a_suggested_allowlist_pastes_into_a_pool() {
    use airlock_core::egress::{suggest, suggestions_toml, Seen};
    let d = dir_with_secrets();
    let seen: Vec<Seen> = ["deb", "security", "snapshot"]
        .iter()
        .map(|n| Seen {
            name: Some(format!("{n}.debian.org")),
            addr: None,
            port: Some(443),
            jobs: 1,
        })
        .chain([Seen {
            name: None,
            addr: Some("10.20.0.5".parse().unwrap()),
            port: Some(5432),
            jobs: 1,
        }])
        .collect();
    let table = suggestions_toml(&suggest(&seen, 3));
    let text = GOOD.replace("max_runners = 3\n", &format!("max_runners = 3\n\n{table}"));
    let (c, diags) = load_str(&text, d.path()).unwrap();
    assert!(diags.is_empty(), "pastes without a warning: {diags:?}");
    let allow: Vec<String> = c.pools[0]
        .egress
        .allow
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(allow, ["*.debian.org:443", "10.20.0.5:5432"]);
}
