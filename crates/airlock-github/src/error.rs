//! What the outside world answered, classified so that the control loop decides backoff from the
//! class, never from a string.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    #[error("{what}: GitHub is unavailable or failing ({detail})")]
    Transient { what: String, detail: String },
    #[error("{what}: rate limited by GitHub for {} s", secs(wait))]
    RateLimited { what: String, wait: Duration },
    /// Not sent: the circuit breaker is open after `failures` transient failures in a row.
    #[error(
        "{what}: not sent, GitHub failed {failures} times in a row (next try in {} s)",
        secs(retry_in)
    )]
    Unavailable {
        what: String,
        failures: u32,
        retry_in: Duration,
    },
    #[error("{what}: not found")]
    NotFound { what: String },
    #[error("{what}: conflict: {message}")]
    Conflict { what: String, message: String },
    #[error("{what}: refused (422): {message}")]
    Unprocessable { what: String, message: String },
    #[error("{what}: refused with status {status}: {message}")]
    Permanent {
        what: String,
        status: u16,
        message: String,
    },
    #[error("{what}: unexpected response: {detail}")]
    Decode { what: String, detail: String },
    #[error("{what}: {detail}")]
    Auth { what: String, detail: String },
}

/// How the caller should react.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry soon, with backoff.
    Transient,
    /// Wait at least this long before calling GitHub again.
    RateLimited(Duration),
    /// GitHub keeps failing and the client's circuit is open for this long.
    Unavailable(Duration),
    /// The thing is gone: for deletes, that is success.
    NotFound,
    /// Retrying will not help until something changes (credentials, config, the request).
    Permanent,
}

impl GitHubError {
    pub fn class(&self) -> ErrorClass {
        match self {
            GitHubError::Transient { .. } => ErrorClass::Transient,
            GitHubError::RateLimited { wait, .. } => ErrorClass::RateLimited(*wait),
            GitHubError::Unavailable { retry_in, .. } => ErrorClass::Unavailable(*retry_in),
            GitHubError::NotFound { .. } => ErrorClass::NotFound,
            GitHubError::Conflict { .. }
            | GitHubError::Unprocessable { .. }
            | GitHubError::Permanent { .. }
            | GitHubError::Decode { .. }
            | GitHubError::Auth { .. } => ErrorClass::Permanent,
        }
    }
}

/// Whole seconds, rounded up (a wait of 300 ms is "1 s", not "0 s").
fn secs(d: &Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}
