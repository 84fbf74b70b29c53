//! What the client does when GitHub fails: idempotent requests retried a few times with
//! exponential backoff and full jitter, and a circuit breaker that stops calling a GitHub that
//! keeps failing, so an outage costs a few requests a minute instead of a hot loop.
//!
//! The breaker counts transient failures in a row (5xx, timeouts, connection errors; any other
//! answer, a 404 or a rate limit included, shows GitHub alive and resets the count). At
//! [`OPEN_AFTER`] it opens: every request fails at once, without a connection, until a cool-down
//! (2 s doubling to 60 s per reopening, with jitter) ends. Then one request, the probe, goes
//! through (half-open) while the others still fail fast; the probe's success closes the circuit,
//! its failure reopens it for twice as long.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Transient failures in a row that open the circuit.
pub const OPEN_AFTER: u32 = 5;
const FIRST_COOL_DOWN: Duration = Duration::from_secs(2);
const MAX_COOL_DOWN: Duration = Duration::from_secs(60);

/// Retries of a GET or DELETE after a transient failure (so at most three sends).
pub(crate) const RETRIES: u32 = 2;
const RETRY_BASE: Duration = Duration::from_millis(200);

/// The circuit as the daemon's metrics and status show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    /// Failing fast until this instant (then one probe goes through).
    Open {
        until: Instant,
    },
    /// The probe is out.
    HalfOpen,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    /// Consecutive openings without a success between them (the cool-down doubles with each).
    openings: u32,
    open_until: Option<Instant>,
    probing: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Breaker {
    state: Mutex<State>,
}

/// Why a request was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub failures: u32,
    pub retry_in: Duration,
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request may go now. `Ok(true)` when it is the half-open probe, whose outcome
    /// must be reported (`success` or `failure`) for the circuit to move on.
    pub(crate) fn admit(&self, now: Instant) -> Result<bool, Refused> {
        let mut s = self.lock();
        let Some(until) = s.open_until else {
            return Ok(false);
        };
        if now < until {
            return Err(Refused {
                failures: s.failures,
                retry_in: until - now,
            });
        }
        if s.probing {
            return Err(Refused {
                failures: s.failures,
                retry_in: Duration::from_secs(1),
            });
        }
        s.probing = true;
        Ok(true)
    }

    /// GitHub answered (with anything but a 5xx).
    pub(crate) fn success(&self) {
        let mut s = self.lock();
        if s.open_until.is_some() {
            tracing::info!("GitHub answers again: the circuit is closed");
        }
        *s = State::default();
    }

    /// A transient failure; returns the cool-down when it opened (or reopened) the circuit.
    pub(crate) fn failure(&self, now: Instant, jitter: f64) -> Option<Duration> {
        let mut s = self.lock();
        s.failures = s.failures.saturating_add(1);
        let reopen = s.probing;
        s.probing = false;
        if !reopen && (s.failures < OPEN_AFTER || s.open_until.is_some_and(|u| u > now)) {
            return None;
        }
        let step = FIRST_COOL_DOWN
            .saturating_mul(1u32 << s.openings.min(10))
            .min(MAX_COOL_DOWN);
        s.openings = s.openings.saturating_add(1);
        // Between 3/4 and all of the step, so that many hosts do not come back at once.
        let wait = step.mul_f64(0.75 + 0.25 * jitter.clamp(0.0, 1.0));
        s.open_until = Some(now + wait);
        Some(wait)
    }

    /// A probe that ended without telling (a rate limit the caller waits out, a dropped
    /// future): the next request may probe again.
    pub(crate) fn abandon_probe(&self) {
        self.lock().probing = false;
    }

    pub(crate) fn circuit(&self, now: Instant) -> Circuit {
        let s = self.lock();
        match s.open_until {
            None => Circuit::Closed,
            Some(until) if until > now => Circuit::Open { until },
            Some(_) if s.probing => Circuit::HalfOpen,
            Some(until) => Circuit::Open { until },
        }
    }
}

/// The wait before retry `attempt` (1-based): full jitter over 200 ms doubling per attempt.
pub(crate) fn retry_wait(attempt: u32, jitter: f64) -> Duration {
    RETRY_BASE
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(8))
        .mul_f64(jitter.clamp(0.0, 1.0))
}

/// A number in [0, 1) from the clock's nanoseconds and a counter: good enough to spread retries
/// (not for anything secret), without a random-number crate in this one.
pub(crate) fn jitter() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64 of the two.
    let mut z = t ^ N.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_five_failures_in_a_row_and_a_success_resets_the_count() {
        let b = Breaker::default();
        let t0 = Instant::now();
        for _ in 0..OPEN_AFTER - 1 {
            assert_eq!(b.admit(t0), Ok(false));
            assert_eq!(b.failure(t0, 1.0), None);
        }
        b.success();
        for _ in 0..OPEN_AFTER - 1 {
            assert_eq!(b.failure(t0, 1.0), None);
        }
        assert_eq!(b.circuit(t0), Circuit::Closed);
        assert_eq!(b.failure(t0, 1.0), Some(FIRST_COOL_DOWN));
        let r = b.admit(t0 + Duration::from_millis(500)).unwrap_err();
        assert_eq!(r.failures, OPEN_AFTER);
        assert_eq!(r.retry_in, Duration::from_millis(1500));
        assert!(matches!(b.circuit(t0), Circuit::Open { .. }));
    }

    #[test]
    fn one_probe_when_the_cool_down_ends_its_failure_doubles_the_next() {
        let b = Breaker::default();
        let t0 = Instant::now();
        for _ in 0..OPEN_AFTER {
            b.failure(t0, 1.0);
        }
        let t1 = t0 + FIRST_COOL_DOWN;
        assert_eq!(b.admit(t1), Ok(true), "the probe");
        assert!(b.admit(t1).is_err(), "others wait for the probe");
        assert_eq!(b.circuit(t1), Circuit::HalfOpen);
        assert_eq!(b.failure(t1, 1.0), Some(FIRST_COOL_DOWN * 2));
        let t2 = t1 + FIRST_COOL_DOWN * 2;
        assert_eq!(b.admit(t2), Ok(true));
        assert_eq!(b.failure(t2, 1.0), Some(FIRST_COOL_DOWN * 4));
        // The steps stop at a minute; jitter shortens one by at most a quarter.
        let mut w = Duration::ZERO;
        for i in 0..10 {
            let t = Instant::now() + Duration::from_secs(3600 * (i + 1));
            b.admit(t).unwrap();
            w = b.failure(t, 0.0).unwrap();
        }
        assert_eq!(w, MAX_COOL_DOWN.mul_f64(0.75));
        let t = Instant::now() + Duration::from_secs(3600 * 20);
        b.admit(t).unwrap();
        assert_eq!(b.failure(t, 1.0), Some(MAX_COOL_DOWN));
        // A successful probe closes it and starts the steps over.
        let t = t + MAX_COOL_DOWN;
        assert_eq!(b.admit(t), Ok(true));
        b.success();
        assert_eq!(b.circuit(t), Circuit::Closed);
        assert_eq!(b.admit(t), Ok(false));
        for _ in 0..OPEN_AFTER {
            b.failure(t, 1.0);
        }
        assert!(matches!(b.circuit(t), Circuit::Open { until } if until == t + FIRST_COOL_DOWN));
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_request_probe() {
        let b = Breaker::default();
        let t0 = Instant::now();
        for _ in 0..OPEN_AFTER {
            b.failure(t0, 1.0);
        }
        let t1 = t0 + FIRST_COOL_DOWN;
        assert_eq!(b.admit(t1), Ok(true));
        b.abandon_probe();
        assert_eq!(b.admit(t1), Ok(true));
    }

    #[test]
    fn retry_waits_double_and_jitter_stays_in_range() {
        assert_eq!(retry_wait(1, 1.0), Duration::from_millis(200));
        assert_eq!(retry_wait(2, 1.0), Duration::from_millis(400));
        assert_eq!(retry_wait(2, 0.5), Duration::from_millis(200));
        assert_eq!(retry_wait(1, 0.0), Duration::ZERO);
        let xs: Vec<f64> = (0..1000).map(|_| jitter()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
        assert!(xs.windows(2).any(|w| w[0] != w[1]));
    }
}
