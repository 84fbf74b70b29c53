//! A config reload (`SIGHUP` to `airlock serve`, or `Handle::reload`): what can change while
//! sandboxes run is applied, the rest is named as needing a restart and left as it was.
//!
//! Applied today: each pool's egress policy (`[pool.egress]`). A new policy reaches sandboxes
//! created from then on; running ones keep the policy they were attached with (their nftables
//! chain is named by what it enforces, and their session file holds their policy), so a reload
//! never changes what a job already running may reach.

use std::collections::HashMap;
use std::sync::RwLock;

use airlock_config::Config;
use airlock_core::egress::EgressPolicy;

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reload {
    /// Changes applied, in words (`pool box: egress policy`).
    pub applied: Vec<String>,
    /// Changes left for a restart to apply (`server`, `pool box`, `pool new (added)`).
    pub needs_restart: Vec<String>,
}

/// The pools' egress policies as the last load or reload left them.
#[derive(Debug, Default)]
pub(crate) struct Policies(RwLock<HashMap<String, EgressPolicy>>);

impl Policies {
    pub(crate) fn new(cfg: &Config) -> Policies {
        Policies(RwLock::new(
            cfg.pools
                .iter()
                .map(|p| (p.name.clone(), p.egress.clone()))
                .collect(),
        ))
    }

    pub(crate) fn get(&self, pool: &str) -> Option<EgressPolicy> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(pool)
            .cloned()
    }
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Compares `new` with `old` (the config the daemon started with) and applies to `policies`
/// what may change live.
pub(crate) fn reload(old: &Config, new: &Config, policies: &Policies) -> Reload {
    let mut r = Reload::default();
    for (name, a, b) in [
        ("server", json(&old.server), json(&new.server)),
        ("github", json(&old.github), json(&new.github)),
        ("container", json(&old.container), json(&new.container)),
        ("microvm", json(&old.microvm), json(&new.microvm)),
    ] {
        if a != b {
            r.needs_restart.push(format!("[{name}]"));
        }
    }
    let mut now = policies.0.write().unwrap_or_else(|p| p.into_inner());
    for p in &new.pools {
        let Some(was) = old.pools.iter().find(|o| o.name == p.name) else {
            r.needs_restart.push(format!("pool {} (added)", p.name));
            continue;
        };
        // Everything of the pool but its policy must be as it was.
        let strip = |c: &airlock_config::PoolConfig| {
            let mut c = c.clone();
            c.egress = EgressPolicy::default();
            json(&c)
        };
        if strip(was) != strip(p) {
            r.needs_restart.push(format!("pool {}", p.name));
        }
        if now.get(&p.name) != Some(&p.egress) {
            now.insert(p.name.clone(), p.egress.clone());
            r.applied.push(format!("pool {}: egress policy", p.name));
        }
    }
    for o in &old.pools {
        if !new.pools.iter().any(|p| p.name == o.name) {
            r.needs_restart.push(format!("pool {} (removed)", o.name));
        }
    }
    r
}
