//! `[github]`: the API URL, the pacing of calls, the webhook secret and the credentials (a token,
//! or a GitHub App).
//!
//! Secret files are checked for existence and mode only: this must never read a secret's
//! contents, nor contact GitHub (`check-config` works offline; whether a token is valid is for
//! the daemon's first call to find out).

use std::path::PathBuf;
use std::time::Duration;

use toml::Table;

use super::Walker;
use crate::{Auth, GitHubConfig, DEFAULT_API_URL};

const GITHUB_KEYS: &[&str] = &[
    "api_url",
    "webhook_secret_file",
    "poll_interval",
    "request_timeout",
    "write_interval",
    "token_file",
    "app_id",
    "client_id",
    "private_key_file",
    "installation_id",
];

/// `None` when the credentials are unusable; the reason has been reported.
pub(super) fn read(w: &mut Walker<'_>, root: &mut Table) -> Option<GitHubConfig> {
    let mut t = w.table(root, "github");
    let api_url = w
        .take::<String>(&mut t, "github", "api_url", "a URL")
        .unwrap_or_else(|| DEFAULT_API_URL.to_string());
    if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
        w.error(
            "github.api_url",
            format!("{api_url:?} must start with https:// (or http:// for a local emulator)"),
        );
    }
    let api_url = api_url.trim_end_matches('/').to_string();
    let webhook_secret_file = w.path(&mut t, "github", "webhook_secret_file");
    let poll_interval = w.duration(&mut t, "github", "poll_interval", Duration::from_secs(60));
    let request_timeout = w.duration(&mut t, "github", "request_timeout", Duration::from_secs(30));
    // Zero: writes one after another with no pause (a GHES without rate limits).
    let write_interval = w.duration_from(
        &mut t,
        "github",
        "write_interval",
        airlock_core::DEFAULT_WRITE_INTERVAL,
        true,
    );
    if write_interval > Duration::from_secs(60) {
        w.error(
            "github.write_interval",
            "must be at most 60s (every create and deregistration waits for it)",
        );
    }
    let credentials = Credentials {
        token_file: w.path(&mut t, "github", "token_file"),
        app_id: w.take::<u64>(&mut t, "github", "app_id", "a number"),
        client_id: w.take::<String>(
            &mut t,
            "github",
            "client_id",
            "a string such as \"Iv1.abc\"",
        ),
        private_key_file: w.path(&mut t, "github", "private_key_file"),
        installation_id: w.take::<u64>(&mut t, "github", "installation_id", "a number"),
    };
    w.unknown(t, "github", GITHUB_KEYS);

    let auth = auth(w, credentials);
    match &webhook_secret_file {
        Some(p) => w.secret_file("github.webhook_secret_file", p),
        None => w.warn(
            "github.webhook_secret_file",
            "not set: every webhook will be refused and queued jobs are found only by polling",
        ),
    }
    Some(GitHubConfig {
        api_url,
        webhook_secret_file,
        poll_interval,
        request_timeout,
        write_interval,
        auth: auth?,
    })
}

/// The credential keys as written, before they are checked to make one kind of credential.
struct Credentials {
    token_file: Option<PathBuf>,
    app_id: Option<u64>,
    client_id: Option<String>,
    private_key_file: Option<PathBuf>,
    installation_id: Option<u64>,
}

/// Exactly one kind of credential, its files checked; `None` after reporting why not.
fn auth(w: &mut Walker<'_>, c: Credentials) -> Option<Auth> {
    if c.app_id.is_some() && c.client_id.is_some() {
        w.error("github.client_id", "set app_id or client_id, not both");
    }
    let issuer = c.client_id.or(c.app_id.map(|i| i.to_string()));
    match (c.token_file, issuer, c.private_key_file) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            w.error(
                "github.token_file",
                "set token_file or a GitHub App (app_id/client_id + private_key_file), not both",
            );
            None
        }
        (Some(token_file), None, None) => {
            w.secret_file("github.token_file", &token_file);
            Some(Auth::Token { token_file })
        }
        (None, Some(issuer), Some(private_key_file)) => {
            w.secret_file("github.private_key_file", &private_key_file);
            Some(Auth::App {
                issuer,
                private_key_file,
                installation_id: c.installation_id,
            })
        }
        (None, Some(_), None) => {
            w.error(
                "github.private_key_file",
                "a GitHub App needs private_key_file",
            );
            None
        }
        (None, None, Some(_)) => {
            w.error(
                "github.app_id",
                "private_key_file is set but neither app_id nor client_id is",
            );
            None
        }
        (None, None, None) => {
            w.error(
                "github",
                "no credentials: set token_file, or app_id (or client_id) and private_key_file",
            );
            None
        }
    }
}
