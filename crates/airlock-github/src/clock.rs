//! GitHub's clock as its answers state it: every response's `Date` header gives a sample of the
//! offset between GitHub's time and ours, and the client reads time through it wherever it must
//! agree with GitHub (App JWTs' `iat`/`exp`, installation tokens' expiry, `x-ratelimit-reset`).
//!
//! So a host whose clock has drifted keeps valid App JWTs (GitHub accepts an `iat` up to 60 s
//! ahead of it and an `exp` at most 10 minutes after it), honours rate-limit resets to the
//! second, and the daemon can report the drift (`airlock_clock_drift_seconds`, `doctor`).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use reqwest::header::HeaderMap;

/// A drift beyond this is reported (a warning, the status, a `doctor` failure).
pub const DRIFT_WARN_MS: i64 = 10_000;

#[derive(Debug, Default)]
pub struct Clock {
    /// GitHub's time minus ours, in ms, from the last answer that had a `Date`.
    offset_ms: AtomicI64,
    known: AtomicBool,
}

/// Our wall clock, in Unix ms.
pub(crate) fn local_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Clock {
    /// Takes the `Date` of an answer to a request sent at `sent` and answered at `received`
    /// (local Unix ms). The header has whole seconds, stamped somewhere in between: the
    /// sample is its middle second against the request's middle, good to about a second plus
    /// half the round trip, which is enough to see drift that matters.
    pub(crate) fn observe(&self, headers: &HeaderMap, sent: i64, received: i64) {
        let Some(date) = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date)
        else {
            return;
        };
        let offset = date + 500 - (sent + received) / 2;
        self.offset_ms.store(offset, Ordering::Relaxed);
        self.known.store(true, Ordering::Relaxed);
    }

    /// GitHub's time minus ours (ms), once an answer said; `None` before.
    pub fn offset_ms(&self) -> Option<i64> {
        self.known
            .load(Ordering::Relaxed)
            .then(|| self.offset_ms.load(Ordering::Relaxed))
    }

    /// GitHub's time now, as well as we know it (Unix ms).
    pub fn now_ms(&self) -> i64 {
        local_ms() + self.offset_ms().unwrap_or(0)
    }

    pub fn now_s(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

/// An HTTP date (`Tue, 15 Nov 1994 08:12:31 GMT`, RFC 9110's IMF-fixdate) as Unix ms.
pub fn parse_http_date(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc2822(s.trim())
        .ok()
        .map(|d| d.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_date(d: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::DATE, d.parse().unwrap());
        h
    }

    #[test]
    fn the_offset_is_the_dates_middle_second_against_the_requests_middle() {
        let c = Clock::default();
        assert_eq!(c.offset_ms(), None);
        // 1994-11-15T08:12:31Z
        let t = 784_887_151_000;
        c.observe(
            &with_date("Tue, 15 Nov 1994 08:12:31 GMT"),
            t - 900_000,
            t - 899_000,
        );
        assert_eq!(c.offset_ms(), Some(900_000), "GitHub is 15 minutes ahead");
        c.observe(
            &with_date("Tue, 15 Nov 1994 08:12:31 GMT"),
            t + 100,
            t + 300,
        );
        assert_eq!(c.offset_ms(), Some(300));
        // No Date, or a bad one: the last sample stays.
        c.observe(&HeaderMap::new(), 0, 0);
        c.observe(&with_date("yesterday"), 0, 0);
        assert_eq!(c.offset_ms(), Some(300));
    }

    #[test]
    fn http_dates_parse() {
        assert_eq!(
            parse_http_date("Tue, 15 Nov 1994 08:12:31 GMT"),
            Some(784_887_151_000)
        );
        assert_eq!(parse_http_date("Tue, 15 Nov 1994 08:12:31"), None);
        assert_eq!(parse_http_date(""), None);
    }
}
