//! Everything airlock knows about GitHub's wire formats: the REST client (token and GitHub App
//! auth, pagination, ETags, rate limits, error classes), webhook signature verification and the
//! `workflow_job` payload. This is the only crate that knows GitHub's JSON; it hands the rest of
//! airlock domain types from `airlock-core`. It must never log a token, a JWT or a JIT config.

mod auth;
pub mod breaker;
mod client;
pub mod clock;
mod error;
mod model;
pub mod webhook;

/// The client's decoding of GitHub's answers, for the fuzz targets only (`fuzz/`).
#[doc(hidden)]
pub use model::fuzzing;

pub use auth::{AppCredentials, Credentials};
pub use client::{Client, ClientOptions, JitConfig, RateBudget, Registration, RequestObserver};
pub use error::{ErrorClass, GitHubError};

/// Sent on every request, as GitHub asks.
pub const API_VERSION: &str = "2022-11-28";
pub const ACCEPT: &str = "application/vnd.github+json";
pub const USER_AGENT: &str = concat!("airlock/", env!("CARGO_PKG_VERSION"));

/// Parses GitHub's RFC 3339 timestamps into Unix milliseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}
