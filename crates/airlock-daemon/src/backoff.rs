//! Backoff per pool and error class, and per object.
//!
//! A failed create holds back its pool's creates, with a wait that doubles per failure of the same
//! class (a sandbox error and a GitHub 5xx have counters of their own), so one failing pool or
//! backend never slows another. Each step is shortened by up to a quarter at random, so that
//! pools (and hosts) that failed together do not retry in lockstep. A failed stop, teardown or reap holds back only the object it
//! acted on. The control loop sleeps until the earliest end (`next_end`), not on a fixed tick.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a backoff holds back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// `pool`'s creates, after a failure of `class` (`OpError::class`).
    Pool { pool: String, class: &'static str },
    /// One runner, registration or sandbox (the executor's object key).
    Object(String),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    until: Instant,
    /// The wait after the next failure.
    next: Duration,
}

#[derive(Debug, Default)]
pub(crate) struct Backoffs {
    map: HashMap<Key, Entry>,
}

impl Backoffs {
    pub(crate) const FIRST: Duration = Duration::from_secs(1);
    pub(crate) const MAX: Duration = Duration::from_secs(60);

    /// Records a failure of `key` at `now`: held for `wait` when the error says how long (GitHub's
    /// rate limit, a permanent refusal), else for the key's next step (1 s, doubling to 60 s)
    /// less up to a quarter of it (jitter).
    pub(crate) fn fail(&mut self, key: Key, wait: Option<Duration>, now: Instant) -> Duration {
        self.fail_with(key, wait, now, rand::random::<f64>())
    }

    /// `fail` with the jitter given: 0 takes the whole step, 1 three quarters of it.
    fn fail_with(
        &mut self,
        key: Key,
        wait: Option<Duration>,
        now: Instant,
        jitter: f64,
    ) -> Duration {
        self.prune(now);
        let next = self.map.get(&key).map_or(Self::FIRST, |e| e.next);
        let held = wait.unwrap_or_else(|| next.mul_f64(1.0 - 0.25 * jitter.clamp(0.0, 1.0)));
        self.map.insert(
            key,
            Entry {
                until: now + held,
                next: (next * 2).min(Self::MAX),
            },
        );
        held
    }

    /// Whether `key` is held back at `now`.
    pub(crate) fn holds(&self, key: &Key, now: Instant) -> bool {
        self.map.get(key).is_some_and(|e| e.until > now)
    }

    /// Whether any class holds back `pool`'s creates at `now`.
    pub(crate) fn holds_pool(&self, pool: &str, now: Instant) -> bool {
        self.map
            .iter()
            .any(|(k, e)| matches!(k, Key::Pool { pool: p, .. } if p == pool) && e.until > now)
    }

    /// A success: the object's (or every class of the pool's) backoff starts over.
    pub(crate) fn clear(&mut self, key: &Key) {
        self.map.remove(key);
    }

    pub(crate) fn clear_pool(&mut self, pool: &str) {
        self.map
            .retain(|k, _| !matches!(k, Key::Pool { pool: p, .. } if p == pool));
    }

    /// The earliest moment after `now` at which something held back may go again.
    pub(crate) fn next_end(&self, now: Instant) -> Option<Instant> {
        self.map
            .values()
            .map(|e| e.until)
            .filter(|&u| u > now)
            .min()
    }

    /// Forgets entries that ended long ago (objects that are gone keep no memory).
    fn prune(&mut self, now: Instant) {
        self.map.retain(|_, e| e.until + Self::MAX * 2 > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(p: &str, class: &'static str) -> Key {
        Key::Pool {
            pool: p.into(),
            class,
        }
    }

    #[test]
    fn waits_double_per_class_and_pool_and_reset_on_success() {
        let t0 = Instant::now();
        let mut b = Backoffs::default();
        let s = Duration::from_secs;
        assert_eq!(b.fail_with(pool("a", "sandbox"), None, t0, 0.0), s(1));
        assert_eq!(b.fail_with(pool("a", "sandbox"), None, t0, 0.0), s(2));
        assert_eq!(b.fail_with(pool("a", "sandbox"), None, t0, 0.0), s(4));
        // Another class of the same pool counts on its own; another pool is untouched.
        assert_eq!(b.fail_with(pool("a", "transient"), None, t0, 0.0), s(1));
        assert!(b.holds_pool("a", t0 + s(3)));
        assert!(!b.holds_pool("a", t0 + s(4)));
        assert!(!b.holds_pool("b", t0));
        // A wait the error names (rate limit, permanent refusal) wins over the step.
        assert_eq!(
            b.fail_with(pool("b", "permanent"), Some(s(60)), t0, 0.0),
            s(60)
        );
        assert_eq!(b.next_end(t0), Some(t0 + s(1)));
        assert_eq!(b.next_end(t0 + s(1)), Some(t0 + s(4)));
        b.clear_pool("a");
        assert!(!b.holds_pool("a", t0));
        assert_eq!(b.fail_with(pool("a", "sandbox"), None, t0, 0.0), s(1));
        // Steps stop at the maximum.
        let k = Key::Object("runner x".into());
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            last = b.fail_with(k.clone(), None, t0, 0.0);
        }
        assert_eq!(last, Backoffs::MAX);
        assert!(b.holds(&k, t0 + s(59)));
        b.clear(&k);
        assert!(!b.holds(&k, t0));
    }

    #[test]
    fn jitter_takes_up_to_a_quarter_off_a_step_never_off_a_named_wait() {
        let t0 = Instant::now();
        let mut b = Backoffs::default();
        let k = Key::Object("x".into());
        assert_eq!(
            b.fail_with(k.clone(), None, t0, 1.0),
            Duration::from_millis(750)
        );
        assert_eq!(
            b.fail_with(k.clone(), None, t0, 0.5),
            Duration::from_millis(1750)
        );
        let s = Duration::from_secs(5);
        assert_eq!(b.fail_with(k.clone(), Some(s), t0, 1.0), s);
        let waits: std::collections::BTreeSet<_> = (0..20)
            .map(|i| b.fail(Key::Object(format!("k{i}")), None, t0))
            .collect();
        assert!(waits.len() > 1, "random jitter: {waits:?}");
        assert!(waits
            .iter()
            .all(|w| (Duration::from_millis(750)..=Backoffs::FIRST).contains(w)));
    }

    #[test]
    fn long_ended_entries_are_forgotten() {
        let t0 = Instant::now();
        let mut b = Backoffs::default();
        b.fail_with(Key::Object("sandbox gone".into()), None, t0, 0.0);
        b.fail_with(
            Key::Object("other".into()),
            None,
            t0 + Duration::from_secs(200),
            0.0,
        );
        assert_eq!(b.map.len(), 1);
        assert_eq!(
            b.fail_with(
                Key::Object("sandbox gone".into()),
                None,
                t0 + Duration::from_secs(200),
                0.0,
            ),
            Backoffs::FIRST,
            "a forgotten object starts over"
        );
    }
}
