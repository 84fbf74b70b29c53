//! The JIT stock: per pool, up to `jit_stock` runner configs GitHub has already made, so that a
//! burst's runners start without a GitHub round trip on their critical path.
//!
//! What GitHub documents (`../shared/GITHUB.md`): a JIT runner takes exactly one job; one that
//! never runs a job is removed after a day; registration fails past 10,000 runners. What airlock
//! infers from it: a registration whose runner never connected is listed `offline` and is given no
//! job (GitHub assigns jobs to runners that ask for one), so a stocked registration is harmless
//! until its sandbox starts; GitHub's exact response past 10,000 runners is not documented.
//!
//! The stock lives in memory only: the configs are credentials and never touch the disk. A crash
//! loses it, and the registrations left at GitHub are then orphans (named like runners, owned by
//! no live runner and no stock), which the reaper deletes. Stocked registrations are never runners:
//! the planner counts them as nothing that exists.

use std::collections::{HashMap, HashSet};

use airlock_core::{StockView, Timestamp};
use airlock_github::GitHubError;
use airlock_sandbox::Secret;

use crate::metrics::PoolLabels;
use crate::reconcile::OpError;
use crate::{now_ms, Inner, Shared};

/// A stocked config: its registration at GitHub and the config itself.
#[derive(Debug)]
pub(crate) struct Stocked {
    pub name: String,
    pub scope: airlock_core::Scope,
    pub github_id: u64,
    pub encoded: Secret,
    pub made: Timestamp,
    /// The fingerprint of the pool's settings it was made under (`pools`): a reload that
    /// changes them makes it stale.
    pub config: String,
}

/// One pool's stock.
#[derive(Debug, Default)]
pub(crate) struct PoolStock {
    pub ready: Vec<Stocked>,
    /// Names whose JIT request is in flight (reserved before it is sent, so a poll that lists the
    /// new registration first never takes it for an orphan).
    pub pending: HashSet<String>,
    /// Names whose registration is being deleted (out of the stock, but still reserved until the
    /// delete ends, so the orphan reaper never deletes it at the same time).
    pub deleting: HashSet<String>,
}

/// What the planner needs to see of the stock. A config made under settings its pool no longer
/// has shows as made at time 0: stale, so the planner drops it.
pub(crate) fn views(s: &Shared, set: &crate::pools::PoolSet) -> HashMap<String, StockView> {
    s.stock
        .iter()
        .map(|(pool, st)| {
            let current = set
                .specs
                .iter()
                .find(|spec| &spec.name == pool)
                .map(|spec| spec.config.as_str());
            (
                pool.clone(),
                StockView {
                    ready: st
                        .ready
                        .iter()
                        .map(|x| {
                            let made = if current == Some(x.config.as_str()) {
                                x.made
                            } else {
                                0
                            };
                            (x.name.clone(), made)
                        })
                        .collect(),
                    pending: st.pending.len() as u32,
                },
            )
        })
        .collect()
}

/// Every registration name the stock holds or is asking for.
pub(crate) fn reserved(s: &Shared) -> HashSet<String> {
    s.stock
        .values()
        .flat_map(|st| {
            st.ready
                .iter()
                .map(|x| x.name.clone())
                .chain(st.pending.iter().cloned())
                .chain(st.deleting.iter().cloned())
        })
        .collect()
}

/// Takes the oldest config of `pool` that is still fresh (younger than `refresh` ms) and made
/// under the pool's settings now (`config`), for a runner about to be created.
pub(crate) fn take(inner: &Inner, pool: &str, refresh: i64, config: &str) -> Option<Stocked> {
    let now = now_ms();
    let mut s = inner.shared();
    let st = s.stock.get_mut(pool)?;
    let i = st
        .ready
        .iter()
        .enumerate()
        .filter(|(_, x)| now - x.made < refresh && x.config == config)
        .min_by_key(|(_, x)| x.made)
        .map(|(i, _)| i)?;
    let taken = st.ready.swap_remove(i);
    let n = st.ready.len();
    drop(s);
    set_gauge(inner, pool, n);
    inner
        .metrics
        .jit_stock_used
        .get_or_create(&PoolLabels { pool: pool.into() })
        .inc();
    Some(taken)
}

/// Returns a config `take` handed out to a create that failed before using it.
pub(crate) fn put_back(inner: &Inner, pool: &str, s: Stocked) {
    let n = {
        let mut sh = inner.shared();
        let st = sh.stock.entry(pool.to_string()).or_default();
        st.ready.push(s);
        st.ready.len()
    };
    set_gauge(inner, pool, n);
}

fn set_gauge(inner: &Inner, pool: &str, n: usize) {
    inner
        .metrics
        .jit_stock
        .get_or_create(&PoolLabels { pool: pool.into() })
        .set(n as i64);
}

/// Reserves a name for one more config of `pool`'s stock, before its request is sent (so the
/// next pass already counts it as pending, and a poll that lists the new registration first never
/// takes it for an orphan).
pub(crate) fn reserve(inner: &Inner, pool: &airlock_config::PoolConfig) -> String {
    let name = crate::ops::new_runner_name(pool);
    inner
        .shared()
        .stock
        .entry(pool.name.clone())
        .or_default()
        .pending
        .insert(name.clone());
    name
}

/// Asks GitHub for the config reserved as `name` for `pool`'s stock.
pub(crate) async fn fill(
    inner: &Inner,
    pool: &airlock_config::PoolConfig,
    name: String,
) -> Result<(), OpError> {
    let made = async {
        let gid = crate::ops::group_id(inner, pool).await?;
        inner
            .github
            .generate_jitconfig(&pool.scope, &name, gid, &pool.labels)
            .await
    }
    .await;
    let mut s = inner.shared();
    let st = s.stock.entry(pool.name.clone()).or_default();
    st.pending.remove(&name);
    let jit = made?;
    st.ready.push(Stocked {
        name: name.clone(),
        scope: pool.scope.clone(),
        github_id: jit.runner_id,
        encoded: Secret::new(jit.encoded),
        made: now_ms(),
        config: crate::pools::fingerprint(pool),
    });
    let n = st.ready.len();
    drop(s);
    set_gauge(inner, &pool.name, n);
    tracing::debug!(runner = %name, pool = %pool.name, stock = n, "JIT config stocked");
    Ok(())
}

/// Takes `name` out of `pool`'s stock, to delete its registration: from then on it is not in
/// the stock, so should the delete fail, the registration is an orphan the reaper deletes after
/// the next poll.
pub(crate) fn unstock(inner: &Inner, pool: &str, name: &str) -> Option<Stocked> {
    let (taken, n) = {
        let mut s = inner.shared();
        let st = s.stock.get_mut(pool)?;
        let i = st.ready.iter().position(|x| x.name == name)?;
        let taken = st.ready.swap_remove(i);
        st.deleting.insert(taken.name.clone());
        (taken, st.ready.len())
    };
    set_gauge(inner, pool, n);
    Some(taken)
}

/// The end of a delete `unstock` began: the name is no longer reserved.
fn deleted(inner: &Inner, pool: &str, name: &str) {
    let mut s = inner.shared();
    if let Some(st) = s.stock.get_mut(pool) {
        st.deleting.remove(name);
        if st.ready.is_empty() && st.pending.is_empty() && st.deleting.is_empty() {
            s.stock.remove(pool);
        }
    }
}

/// Deletes the registration of a config `unstock` took from `pool` (`why`: too old, beyond the
/// target, draining, pool gone).
pub(crate) async fn delete(
    inner: &Inner,
    pool: &str,
    st: &Stocked,
    why: &str,
) -> Result<(), OpError> {
    tracing::debug!(runner = %st.name, why, "deleting a stocked JIT registration");
    let r = inner.github.delete_runner(&st.scope, st.github_id).await;
    deleted(inner, pool, &st.name);
    match r {
        Ok(()) | Err(GitHubError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes every stocked registration (the end of a drain).
pub(crate) async fn drop_all(inner: &Inner) {
    let all: Vec<(String, String)> = {
        let s = inner.shared();
        s.stock
            .iter()
            .flat_map(|(p, st)| st.ready.iter().map(move |x| (p.clone(), x.name.clone())))
            .collect()
    };
    for (pool, name) in all {
        let Some(st) = unstock(inner, &pool, &name) else {
            continue;
        };
        if let Err(e) = delete(inner, &pool, &st, "shutdown").await {
            tracing::warn!(runner = %name, error = %e, "cannot delete a stocked JIT registration; it is reaped at the next start");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_stays_reserved_while_its_request_or_delete_is_in_flight() {
        let mut s = Shared::default();
        let st = s.stock.entry("p".into()).or_default();
        st.ready.push(Stocked {
            name: "ready".into(),
            scope: airlock_core::Scope::parse("repo:o/r").unwrap(),
            github_id: 1,
            encoded: Secret::new("x".into()),
            made: 5,
            config: "old".into(),
        });
        st.pending.insert("asking".into());
        st.deleting.insert("deleting".into());
        let mut r: Vec<String> = reserved(&s).into_iter().collect();
        r.sort();
        assert_eq!(r, ["asking", "deleting", "ready"]);
        // Only what is ready or asked for is stock the planner counts; a config made under
        // settings the pool no longer has shows as made at 0 (stale: dropped).
        let set = crate::pools::PoolSet::new(&[]);
        let v = &views(&s, &set)["p"];
        assert_eq!((v.ready.len(), v.pending), (1, 1));
        assert_eq!(v.ready[0].1, 0, "a pool not in the set: stale");
        let mut set = set;
        set.specs.push(airlock_core::PoolSpec {
            config: "old".into(),
            ..airlock_core::PoolSpec::test("p")
        });
        assert_eq!(
            views(&s, &set)["p"].ready[0].1,
            5,
            "made under the current settings"
        );
        set.specs[0].config = "new".into();
        assert_eq!(
            views(&s, &set)["p"].ready[0].1,
            0,
            "settings changed: stale"
        );
    }
}
