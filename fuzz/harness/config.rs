//! The `config` target's checks, shared by `fuzz_targets/config.rs` and the replay test
//! `crates/airlock-config/tests/fuzz_corpus.rs`, so that the replay runs exactly what fuzzing runs.
//!
//! An input is config text (invalid UTF-8 replaced), loaded with `airlock_config::load_str`
//! against a directory `prepare` filled with the files configs name: secrets (`token`, `secret`,
//! `webhook-secret`, `app.pem`, mode 0600), one readable by others (`open`) and an executable
//! `runner`. Checked: `load_str` never panics; a failure has at least one error and every
//! diagnostic a key and, when it has one, a line of the text; a config that loads keeps the
//! promises of the README's table (names, labels, sizes, durations in range) and what the
//! daemon's arithmetic needs (durations of at most 100 years, memory countable in bytes).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use airlock_config::{Diagnostic, Severity};

/// Writes the files the seeds' configs name into `dir` (idempotent: fuzzing processes share it).
pub fn prepare(dir: &Path) {
    std::fs::create_dir_all(dir).expect("create the config directory");
    let files = [
        ("token", 0o600),
        ("secret", 0o600),
        ("webhook-secret", 0o600),
        ("app.pem", 0o600),
        ("open", 0o644),
        ("runner", 0o755),
    ];
    for (name, mode) in files {
        let p = dir.join(name);
        std::fs::write(&p, "x").expect("write a config fixture");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .expect("chmod a config fixture");
    }
}

pub fn check(dir: &Path, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // A syntax error at the very end may point at the empty line after the last newline.
    let lines = text.split('\n').count();
    let diagnostic = |d: &Diagnostic| {
        assert!(!d.key.is_empty(), "a diagnostic without a key: {d:?}");
        assert!(
            !d.message.is_empty(),
            "a diagnostic without a message: {d:?}"
        );
        if let Some(l) = d.line {
            assert!((1..=lines).contains(&l), "line {l} of {lines}: {d:?}");
        }
    };
    match airlock_config::load_str(&text, dir) {
        Err(diags) => {
            assert!(
                diags.iter().any(|d| d.severity == Severity::Error),
                "a failed load without an error: {diags:?}"
            );
            diags.iter().for_each(diagnostic);
        }
        Ok((config, warnings)) => {
            for w in &warnings {
                assert_eq!(w.severity, Severity::Warning, "{w:?}");
                diagnostic(w);
            }
            loaded(&config);
        }
    }
}

/// Longer than zero, and short enough to add to today's Unix milliseconds (the config's 100y).
fn positive(d: Duration, what: &str) {
    assert!(!d.is_zero(), "{what} is zero");
    assert!(d <= Duration::from_secs(3_155_760_000), "{what} is {d:?}");
}

/// What a loaded config promises (README, "Configuration reference").
fn loaded(c: &airlock_config::Config) {
    let s = &c.server;
    positive(s.drain_grace, "server.drain_grace");
    positive(s.history_retention, "server.history_retention");
    positive(s.stuck_after, "server.stuck_after");
    assert!((1..=1024).contains(&s.max_parallel_ops));
    assert!((0..=19).contains(&s.sandbox_nice));
    assert!((1 << 20..=1 << 40).contains(&s.job_log_max_bytes));
    let g = &c.github;
    assert!(g.api_url.starts_with("https://") || g.api_url.starts_with("http://"));
    positive(g.poll_interval, "github.poll_interval");
    positive(g.request_timeout, "github.request_timeout");
    assert!(g.write_interval <= Duration::from_secs(60));
    assert!(c.container.uid_base > 0 && c.container.uid_base.checked_add(65536).is_some());
    assert!(c.microvm.uid_base >= 1000 && c.microvm.uid_base.checked_add(65536).is_some());
    let mut names = std::collections::HashSet::new();
    for p in &c.pools {
        assert!(names.insert(p.name.as_str()), "pool {:?} twice", p.name);
        assert!(
            (1..=40).contains(&p.name.len())
                && p.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "pool name {:?}",
            p.name
        );
        assert!((1..=100).contains(&p.labels.len()), "{:?}", p.labels);
        assert!(p.max_runners >= 1 && p.min_idle <= p.max_runners);
        assert!(p.jit_stock <= 1000);
        assert!(p.jit_stock_refresh < Duration::from_secs(24 * 3600));
        positive(p.boot_timeout, "boot_timeout");
        positive(p.idle_timeout, "idle_timeout");
        positive(p.job_timeout, "job_timeout");
        if let Some(mib) = p.memory_mib {
            // Backends count it in bytes, as an i64 (OCI) or a u64.
            let bytes = mib.checked_mul(1 << 20).filter(|b| *b <= i64::MAX as u64);
            assert!(mib >= 16 && bytes.is_some(), "memory_mib {mib}");
        }
        if let Some(cpus) = p.cpus {
            assert!((0.01..=1024.0).contains(&cpus), "cpus {cpus}");
        }
        if let Some(gib) = p.disk_gib {
            assert!((1..=16384).contains(&gib), "disk_gib {gib}");
        }
        let spec = p.spec();
        assert_eq!(spec.name, p.name);
        for (ms, what) in [
            (spec.jit_stock_refresh, "jit_stock_refresh"),
            (spec.boot_timeout, "boot_timeout"),
            (spec.idle_timeout, "idle_timeout"),
            (spec.job_timeout, "job_timeout"),
        ] {
            assert!(ms > 0, "pool {:?}: {what} is {ms} ms", p.name);
        }
    }
}
