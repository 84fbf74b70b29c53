//! A config reload (`SIGHUP` to `airlock serve`, `airlock reload`, `POST /api/v1/reload`, or
//! `Handle::reload`): the pools are replaced as a whole, the rest of the config is named as
//! needing a restart and left as it was. An invalid config is refused before anything changes.
//!
//! What a pool's change does (see `pools` for the fingerprint):
//! - added: served from the next pass (a microVM pool's accelerator is probed first);
//! - removed: no new runners; its idle and starting runners are stopped, busy ones finish their
//!   jobs and go (the planner drains runners of pools it does not know), its JIT stock is
//!   deleted;
//! - planner knobs changed (`max_runners`, `min_idle`, timeouts, the stock's size): they apply
//!   to its runners as they are;
//! - sandbox settings changed (image, backend, resources, labels, scope, egress…): new runners
//!   are made with the new ones, runners not busy are replaced, busy ones finish under what they
//!   started with (a job never sees its sandbox's policy change), stocked JIT configs are dropped.

use airlock_config::{Config, PoolConfig};

use crate::pools::{fingerprint, sandbox_settings, PoolSet};

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reload {
    /// Changes applied, in words (`pool box: changed image, egress`).
    pub applied: Vec<String>,
    /// Changes left for a restart to apply (`[server]`).
    pub needs_restart: Vec<String>,
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// The top-level keys whose values differ between two pools' settings.
fn changed_keys(a: &PoolConfig, b: &PoolConfig) -> Vec<String> {
    let (a, b) = (json(a), json(b));
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return vec!["(settings)".into()];
    };
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Compares `new` with the running config (`old`'s sections, `pools` for the pools) and says
/// what a reload does; the caller swaps in `PoolSet::new(&new.pools)`.
pub(crate) fn diff(old: &Config, pools: &PoolSet, new: &Config) -> Reload {
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
    for p in &new.pools {
        let Some(was) = pools.cfg(&p.name) else {
            r.applied.push(format!("pool {}: added", p.name));
            continue;
        };
        let keys = changed_keys(was, p);
        if keys.is_empty() {
            continue;
        }
        let remade = sandbox_settings(was) != sandbox_settings(p);
        debug_assert_eq!(remade, fingerprint(was) != fingerprint(p));
        r.applied.push(format!(
            "pool {}: changed {}{}",
            p.name,
            keys.join(", "),
            if remade {
                " (runners not busy are replaced; busy ones finish first)"
            } else {
                ""
            }
        ));
    }
    for o in &pools.cfgs {
        if !new.pools.iter().any(|p| p.name == o.name) {
            r.applied.push(format!(
                "pool {}: removed (idle runners stop, busy ones finish their jobs)",
                o.name
            ));
        }
    }
    r
}
