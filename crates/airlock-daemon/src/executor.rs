//! The operations in flight: each runs as a task of its own, so a pass never waits for them and
//! the next pass plans while they run (a burst's creates begin as soon as its jobs are heard of,
//! not when the previous batch has ended). What keeps that safe is kept here:
//!
//! - **One owner per object.** An operation owns its objects (`runner N`, `sandbox S`,
//!   `registration I`) until it ends; a pass drops any operation on an object owned now *or*
//!   released since the pass began (the pass observed the store and the backend while that
//!   operation was changing them, so its view of the object may be half old, half new). The
//!   owner's end wakes the loop, and the next pass plans the object again from a fresh view.
//! - **Creates in flight are capacity.** A create counts as a runner of its pool from the moment
//!   it is admitted until its runner is in the store (`unrecorded`), so no pass plans a second
//!   runner for the same job. A pass reads the count *before* it reads the store: a create then
//!   counts at least once (twice only briefly, which delays, never duplicates).
//! - **Bounded, and creates never starve stops.** Creates and the other operations (stops,
//!   reaps) each have `server.max_parallel_ops` slots of their own (`Slots`); an admitted
//!   operation waits for its slot in its own task. The slots bound the host's and GitHub's work:
//!   a create gives its slot up once its sandbox has started, so its runner's last store write
//!   (queued behind everyone else's on a loaded host) does not hold the next create back.
//!
//! Nothing here touches the store, the backends or GitHub: the bookkeeping is plain data, tested
//! below; `Ticket` ties one operation's claim to the daemon and releases it even if the task
//! panics or is aborted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::Inner;

/// Which slots an operation takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Create,
    /// Stops, registration deletes, sandbox reaps.
    Other,
}

/// The operations in flight and what they own.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    owned: HashSet<String>,
    /// Objects whose operation ended since the current pass began.
    released: HashSet<String>,
    /// Per pool: creates admitted whose runner is not in the store yet.
    unrecorded: HashMap<String, u32>,
    running: usize,
    /// The operations' tasks, for a drain to wait for and a crash to abort.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What one admitted operation holds.
#[derive(Debug)]
pub(crate) struct Claim {
    keys: Vec<String>,
    /// A create's pool while its runner is not in the store.
    unrecorded: Option<String>,
}

impl InFlight {
    /// A pass begins: what ended before now is in the store and the backend for this pass to
    /// see. Returns the creates whose runners it will not see there (per pool).
    pub(crate) fn begin_pass(&mut self) -> HashMap<String, u32> {
        self.released.clear();
        self.tasks.retain(|t| !t.is_finished());
        self.unrecorded.clone()
    }

    /// Admits an operation on `keys` (a create: of `pool`, with no object yet), or says which
    /// object another operation owns or released during this pass.
    pub(crate) fn admit(
        &mut self,
        keys: Vec<String>,
        create_of: Option<&str>,
    ) -> Result<Claim, String> {
        if let Some(k) = keys
            .iter()
            .find(|k| self.owned.contains(*k) || self.released.contains(*k))
        {
            return Err(k.clone());
        }
        self.owned.extend(keys.iter().cloned());
        if let Some(pool) = create_of {
            *self.unrecorded.entry(pool.to_string()).or_default() += 1;
        }
        self.running += 1;
        Ok(Claim {
            keys,
            unrecorded: create_of.map(str::to_string),
        })
    }

    /// A create has named its runner: it owns the runner and its sandbox from now on.
    pub(crate) fn own(&mut self, claim: &mut Claim, keys: impl IntoIterator<Item = String>) {
        for k in keys {
            if self.owned.insert(k.clone()) {
                claim.keys.push(k);
            }
        }
    }

    /// A create's runner is in the store: passes count it there from now on.
    pub(crate) fn recorded(&mut self, claim: &mut Claim) {
        if let Some(pool) = claim.unrecorded.take() {
            self.uncount(&pool);
        }
    }

    /// An operation ended (or was dropped): its objects are free for the next pass.
    pub(crate) fn end(&mut self, mut claim: Claim) {
        self.recorded(&mut claim);
        for k in claim.keys {
            self.owned.remove(&k);
            self.released.insert(k);
        }
        self.running = self.running.saturating_sub(1);
    }

    fn uncount(&mut self, pool: &str) {
        if let Some(n) = self.unrecorded.get_mut(pool) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.unrecorded.remove(pool);
            }
        }
    }

    /// Operations admitted and not ended.
    pub(crate) fn running(&self) -> usize {
        self.running
    }

    pub(crate) fn push_task(&mut self, t: tokio::task::JoinHandle<()>) {
        self.tasks.push(t);
    }

    pub(crate) fn take_tasks(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        std::mem::take(&mut self.tasks)
    }
}

/// The objects an operation works on, as `InFlight` keys.
pub(crate) fn runner_key(name: &str) -> String {
    format!("runner {name}")
}
pub(crate) fn sandbox_key(id: &str) -> String {
    format!("sandbox {id}")
}
pub(crate) fn registration_key(id: u64) -> String {
    format!("registration {id}")
}

/// The slots operations run in: creates and the others apart, so that a burst's creates never
/// hold a stop or a reap back.
#[derive(Debug)]
pub(crate) struct Slots {
    creates: Arc<Semaphore>,
    others: Arc<Semaphore>,
}

impl Slots {
    pub(crate) fn new(per_kind: usize) -> Slots {
        Slots {
            creates: Arc::new(Semaphore::new(per_kind.max(1))),
            others: Arc::new(Semaphore::new(per_kind.max(1))),
        }
    }

    pub(crate) async fn acquire(&self, kind: Kind) -> tokio::sync::OwnedSemaphorePermit {
        let s = match kind {
            Kind::Create => &self.creates,
            Kind::Other => &self.others,
        };
        // Never closed.
        s.clone()
            .acquire_owned()
            .await
            .expect("operation slots are never closed")
    }
}

/// One operation's claim, tied to the daemon: released when dropped (the task ended, panicked or
/// was aborted), which wakes the loop to look at the objects again.
#[derive(Debug)]
pub(crate) struct Ticket {
    inner: Arc<Inner>,
    claim: Option<Claim>,
    /// The operation's slot, once it has one (`run_op`).
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Ticket {
    pub(crate) fn new(inner: Arc<Inner>, claim: Claim) -> Ticket {
        Ticket {
            inner,
            claim: Some(claim),
            slot: None,
        }
    }

    /// The operation holds a slot until `free_slot` or its end.
    pub(crate) fn hold_slot(&mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        self.slot = Some(permit);
    }

    /// The host work the slots bound is done (a create's sandbox has started): what is left, a
    /// store call, does not keep the next operation waiting. The objects stay owned until the end.
    pub(crate) fn free_slot(&mut self) {
        self.slot = None;
    }

    /// See `InFlight::own`.
    pub(crate) fn own(&mut self, keys: impl IntoIterator<Item = String>) {
        if let Some(c) = self.claim.as_mut() {
            self.inner.shared().inflight.own(c, keys);
        }
    }

    /// See `InFlight::recorded`.
    pub(crate) fn recorded(&mut self) {
        if let Some(c) = self.claim.as_mut() {
            self.inner.shared().inflight.recorded(c);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(c) = self.claim.take() {
            self.inner.shared().inflight.end(c);
            self.inner.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_object_has_one_owner_and_is_left_alone_for_the_rest_of_the_pass_it_was_released_in() {
        let mut f = InFlight::default();
        f.begin_pass();
        let stop = f
            .admit(keys(&["runner a", "sandbox a"]), None)
            .expect("first operation on a");
        assert_eq!(
            f.admit(keys(&["sandbox a"]), None).unwrap_err(),
            "sandbox a",
            "a reap of a's sandbox while a's stop runs"
        );
        let b = f.admit(keys(&["runner b"]), None).expect("b is not owned");
        f.end(stop);
        assert_eq!(
            f.admit(keys(&["runner a"]), None).unwrap_err(),
            "runner a",
            "released during this pass: this pass's view of it may be stale"
        );
        f.begin_pass();
        let again = f
            .admit(keys(&["runner a"]), None)
            .expect("a pass that began after the end plans it afresh");
        assert_eq!(f.running(), 2);
        f.end(again);
        f.end(b);
        assert_eq!(f.running(), 0);
    }

    #[test]
    fn a_create_counts_as_capacity_until_its_runner_is_stored_and_owns_it_from_its_naming() {
        let mut f = InFlight::default();
        assert!(f.begin_pass().is_empty());
        let mut c1 = f.admit(vec![], Some("p")).unwrap();
        let c2 = f.admit(vec![], Some("p")).unwrap();
        let c3 = f.admit(vec![], Some("q")).unwrap();
        assert_eq!(
            f.begin_pass(),
            HashMap::from([("p".to_string(), 2), ("q".to_string(), 1)])
        );
        f.own(&mut c1, [runner_key("p-1"), sandbox_key("p-1")]);
        assert_eq!(
            f.admit(vec![sandbox_key("p-1")], None).unwrap_err(),
            "sandbox p-1",
            "a reap of the sandbox a create is making (its runner may not be stored yet)"
        );
        f.recorded(&mut c1);
        f.recorded(&mut c1);
        assert_eq!(
            f.begin_pass(),
            HashMap::from([("p".to_string(), 1), ("q".to_string(), 1)]),
            "stored once, counted off once"
        );
        f.end(c2); // failed before it stored anything
        f.end(c3);
        f.end(c1);
        assert!(f.begin_pass().is_empty());
        assert_eq!(f.running(), 0);
        f.admit(vec![sandbox_key("p-1")], None)
            .expect("free once the create ended and a new pass began");
    }

    #[tokio::test]
    async fn creates_and_other_operations_have_slots_of_their_own() {
        let slots = Slots::new(2);
        let _c1 = slots.acquire(Kind::Create).await;
        let _c2 = slots.acquire(Kind::Create).await;
        let third = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            slots.acquire(Kind::Create),
        )
        .await;
        assert!(
            third.is_err(),
            "positive control: the creates' slots are full"
        );
        let stop = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            slots.acquire(Kind::Other),
        )
        .await;
        assert!(stop.is_ok(), "a stop waited behind creates");
    }
}
