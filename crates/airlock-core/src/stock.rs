//! The JIT stock's planning: per pool, how many ready JIT configs to keep and which to replace
//! (see `daemon/stock.rs` for what the stock is and what it rests on). Pure, like the planner.

use std::collections::{HashMap, HashSet};

use crate::{PoolSpec, Timestamp};

/// A pool's stock of JIT configs as the daemon holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StockView {
    /// Ready configs: (runner name, when GitHub made it, Unix ms).
    pub ready: Vec<(String, Timestamp)>,
    /// JIT requests for the stock in flight.
    pub pending: u32,
}

/// What keeps a pool's JIT stock at its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockOp {
    /// Ask GitHub for one more config for `pool`'s stock.
    Fill { pool: String },
    /// Delete a stocked registration: replaced for its age, beyond the target, draining, or its
    /// pool is gone.
    Drop { pool: String, name: String },
}

/// The stock's operations. Each pool keeps `jit_stock` configs (none while draining), younger
/// than `jit_stock_refresh`; it is filled one request at a time per pool, and not while the pool
/// has creates of its own this pass (demand first: the stock only uses writes a burst does not).
/// Stocked registrations are never runners: they count toward nothing the planner plans with.
pub fn plan_stock(
    now: Timestamp,
    pools: &[PoolSpec],
    stock: &HashMap<String, StockView>,
    creating: &HashSet<&str>,
    draining: bool,
) -> Vec<StockOp> {
    let mut ops = Vec::new();
    for pool in pools {
        let have = stock.get(&pool.name).cloned().unwrap_or_default();
        let target = if draining { 0 } else { pool.jit_stock as usize };
        let (mut fresh, stale): (Vec<_>, Vec<_>) = have
            .ready
            .iter()
            .partition(|(_, made)| now - made < pool.jit_stock_refresh);
        for (name, _) in stale {
            ops.push(StockOp::Drop {
                pool: pool.name.clone(),
                name: name.clone(),
            });
        }
        // Oldest first: the extra ones go, the youngest stay.
        fresh.sort_by_key(|(name, made)| (*made, name.clone()));
        let held = fresh.len() + have.pending as usize;
        if held > target {
            for (name, _) in fresh.iter().take((held - target).min(fresh.len())) {
                ops.push(StockOp::Drop {
                    pool: pool.name.clone(),
                    name: name.clone(),
                });
            }
        } else if held < target && have.pending == 0 && !creating.contains(pool.name.as_str()) {
            ops.push(StockOp::Fill {
                pool: pool.name.clone(),
            });
        }
    }
    // Stock of pools no longer configured.
    let mut gone: Vec<_> = stock
        .iter()
        .filter(|(p, _)| !pools.iter().any(|x| &x.name == *p))
        .flat_map(|(p, v)| v.ready.iter().map(move |(n, _)| (p.clone(), n.clone())))
        .collect();
    gone.sort();
    ops.extend(
        gone.into_iter()
            .map(|(pool, name)| StockOp::Drop { pool, name }),
    );
    ops
}

/// When the oldest stocked config of any pool comes due for replacement.
pub fn next_stock_due(pools: &[PoolSpec], stock: &HashMap<String, StockView>) -> Option<Timestamp> {
    pools
        .iter()
        .filter_map(|p| {
            let v = stock.get(&p.name)?;
            v.ready
                .iter()
                .map(|(_, made)| made + p.jit_stock_refresh)
                .min()
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = 1_700_000_000_000;

    #[test]
    fn the_jit_stock_is_kept_at_its_target_fresh_and_demand_first() {
        let mut pool = PoolSpec::test("small");
        pool.jit_stock = 2;
        pool.jit_stock_refresh = 60_000;
        let pools = [pool.clone()];
        let view = |ready: &[(&str, i64)], pending: u32| {
            HashMap::from([(
                "small".to_string(),
                StockView {
                    ready: ready
                        .iter()
                        .map(|(n, ago)| (n.to_string(), NOW - ago))
                        .collect(),
                    pending,
                },
            )])
        };
        let fill = || StockOp::Fill {
            pool: "small".into(),
        };
        let drop = |n: &str| StockOp::Drop {
            pool: "small".into(),
            name: n.into(),
        };
        let none = HashSet::new();
        let creating = HashSet::from(["small"]);
        let mut failures = Vec::new();
        let mut check = |what: &str, got: Vec<StockOp>, want: Vec<StockOp>| {
            if got != want {
                failures.push(format!("{what}: got {got:?}, want {want:?}"));
            }
        };
        check(
            "empty: one fill at a time",
            plan_stock(NOW, &pools, &view(&[], 0), &none, false),
            vec![fill()],
        );
        check(
            "a fill in flight: wait for it",
            plan_stock(NOW, &pools, &view(&[("a", 1)], 1), &none, false),
            vec![],
        );
        check(
            "full",
            plan_stock(NOW, &pools, &view(&[("a", 1), ("b", 2)], 0), &none, false),
            vec![],
        );
        check(
            "the pool's own creates come first",
            plan_stock(NOW, &pools, &view(&[("a", 1)], 0), &creating, false),
            vec![],
        );
        check(
            "too old: replaced",
            plan_stock(
                NOW,
                &pools,
                &view(&[("old", 60_000), ("b", 2)], 0),
                &none,
                false,
            ),
            vec![drop("old"), fill()],
        );
        check(
            "beyond the target (lowered): the oldest go",
            plan_stock(
                NOW,
                &pools,
                &view(&[("a", 3), ("b", 2), ("c", 1)], 0),
                &none,
                false,
            ),
            vec![drop("a")],
        );
        check(
            "draining: every one goes",
            plan_stock(NOW, &pools, &view(&[("a", 3), ("b", 2)], 0), &none, true),
            vec![drop("a"), drop("b")],
        );
        let mut gone = view(&[], 0);
        gone.insert(
            "removed".into(),
            StockView {
                ready: vec![("r1".into(), NOW)],
                pending: 0,
            },
        );
        check(
            "a pool no longer configured: its stock goes",
            plan_stock(NOW, &pools, &gone, &none, false),
            vec![
                fill(),
                StockOp::Drop {
                    pool: "removed".into(),
                    name: "r1".into(),
                },
            ],
        );
        let mut zero = pool.clone();
        zero.jit_stock = 0;
        check(
            "no stock asked for: nothing",
            plan_stock(NOW, &[zero], &view(&[], 0), &none, false),
            vec![],
        );
        assert!(failures.is_empty(), "{failures:#?}");
        assert_eq!(
            next_stock_due(&pools, &view(&[("a", 30_000), ("b", 10_000)], 0)),
            Some(NOW - 30_000 + 60_000)
        );
        assert_eq!(next_stock_due(&pools, &view(&[], 1)), None);
    }
}
