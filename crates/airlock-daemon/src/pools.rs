//! The pools as the last load or reload left them. A reload swaps the whole set at once; every
//! reader takes the set it started with (`Inner::pools`) and keeps it for what it is doing, so an
//! operation never sees half of one config and half of another.
//!
//! Each pool's sandbox settings (everything but the planner's knobs: `min_idle`, `max_runners`,
//! the timeouts, the JIT stock's size and age) have a fingerprint. A runner records the one it
//! was made with (`runners.config`); the planner replaces a runner whose fingerprint is no longer
//! its pool's once it is not busy, and stocked JIT configs made under another are dropped.

use airlock_config::PoolConfig;
use airlock_core::PoolSpec;

/// The planner's knobs: they apply to a pool's runners as they are, without remaking them.
const LIVE_KEYS: [&str; 8] = [
    "min_idle",
    "max_runners",
    "jit_stock",
    "jit_stock_refresh",
    "boot_timeout",
    "idle_timeout",
    "job_timeout",
    // What an image build installs: the image reference is what a sandbox is made from.
    "packages",
];

#[derive(Debug, Clone)]
pub(crate) struct PoolSet {
    /// In config order (the planner's tie-break), each with its spec at the same index.
    pub(crate) cfgs: Vec<PoolConfig>,
    pub(crate) specs: Vec<PoolSpec>,
}

impl PoolSet {
    pub(crate) fn new(pools: &[PoolConfig]) -> PoolSet {
        PoolSet {
            cfgs: pools.to_vec(),
            specs: pools
                .iter()
                .map(|p| PoolSpec {
                    config: fingerprint(p),
                    ..p.spec()
                })
                .collect(),
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<(&PoolConfig, &PoolSpec)> {
        let i = self.cfgs.iter().position(|p| p.name == name)?;
        Some((&self.cfgs[i], &self.specs[i]))
    }

    pub(crate) fn cfg(&self, name: &str) -> Option<&PoolConfig> {
        self.get(name).map(|(c, _)| c)
    }
}

/// The pool's settings as JSON, objects' keys sorted (serde_json's map is ordered), without the
/// planner's knobs.
pub(crate) fn sandbox_settings(p: &PoolConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(p).unwrap_or(serde_json::Value::Null);
    if let Some(m) = v.as_object_mut() {
        for k in LIVE_KEYS {
            m.remove(k);
        }
    }
    v
}

/// 64-bit FNV-1a of the sandbox settings, in hex: stable across runs and builds (it is stored).
pub(crate) fn fingerprint(p: &PoolConfig) -> String {
    let text = sandbox_settings(p).to_string();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(extra: &str) -> PoolConfig {
        let text = format!(
            "[github]\ntoken_file = \"token\"\n[[pool]]\nname = \"p\"\nscope = \"repo:o/r\"\nlabels = [\"self-hosted\", \"p\"]\nbackend = \"process\"\nrunner_command = \"/bin/true\"\n{extra}"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("token"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let (cfg, _) =
            airlock_config::load_str(&text, dir.path()).unwrap_or_else(|e| panic!("{e:?}: {text}"));
        cfg.pools.into_iter().next().unwrap()
    }

    #[test]
    fn the_planners_knobs_leave_the_fingerprint_sandbox_settings_change_it() {
        let base = fingerprint(&pool(""));
        assert_eq!(base.len(), 16);
        assert_eq!(base, fingerprint(&pool("")), "stable");
        for live in ["max_runners = 3", "min_idle = 1", "idle_timeout = \"1m\""] {
            assert_eq!(fingerprint(&pool(live)), base, "{live}");
        }
        for remade in [
            "cpus = 2.0",
            "memory_mib = 512",
            "[pool.egress]\nmode = \"audit\"",
        ] {
            assert_ne!(fingerprint(&pool(remade)), base, "{remade}");
        }
        let labels = pool("");
        let mut other = labels.clone();
        other.labels.push("gpu".into());
        assert_ne!(fingerprint(&other), fingerprint(&labels));
    }
}
