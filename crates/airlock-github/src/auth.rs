//! Credentials: a token, or a GitHub App (a short-lived RS256 JWT exchanged for installation
//! tokens, which are cached and refreshed well before they expire). Nothing here implements
//! `Debug` in a way that could print a secret.

use std::collections::HashMap;
use std::sync::Mutex;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::GitHubError;

pub enum Credentials {
    /// A personal access token or any bearer token (classic: `repo` / `admin:org`;
    /// enterprise runners need `manage_runners:enterprise`).
    Token(String),
    App(AppCredentials),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
            Credentials::App(a) => write!(
                f,
                "App(issuer={}, installation={:?})",
                a.issuer, a.installation_id
            ),
        }
    }
}

pub struct AppCredentials {
    /// The App's client ID (GitHub's recommendation) or numeric App ID.
    pub issuer: String,
    /// The App's private key, PEM.
    pub private_key_pem: Vec<u8>,
    /// Use this installation for every scope instead of looking one up per scope.
    pub installation_id: Option<u64>,
}

/// Refresh an installation token when less than this is left (they live one hour).
pub(crate) const REFRESH_MARGIN_MS: i64 = 10 * 60 * 1000;
/// GitHub refuses JWTs that live longer than 10 minutes; stay under with margin for drift.
pub(crate) const JWT_LIFETIME_S: i64 = 9 * 60;
/// Backdate `iat` against clock drift, as GitHub recommends.
pub(crate) const JWT_BACKDATE_S: i64 = 60;

pub(crate) enum Auth {
    Token(String),
    App(Box<AppAuth>),
}

pub(crate) struct AppAuth {
    pub issuer: String,
    pub key: EncodingKey,
    pub fixed_installation: Option<u64>,
    /// Installation id per scope key ("repos/o/r" or "orgs/o").
    pub installations: Mutex<HashMap<String, u64>>,
    /// Token and its expiry (Unix ms) per installation.
    pub tokens: Mutex<HashMap<u64, (String, i64)>>,
    /// What each installation's last token was granted.
    pub permissions: Mutex<HashMap<u64, std::collections::BTreeMap<String, String>>>,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iat: i64,
    exp: i64,
    iss: &'a str,
}

impl Auth {
    pub(crate) fn new(c: Credentials) -> Result<Auth, GitHubError> {
        Ok(match c {
            Credentials::Token(t) => Auth::Token(t.trim().to_string()),
            Credentials::App(a) => Auth::App(Box::new(AppAuth {
                key: EncodingKey::from_rsa_pem(&a.private_key_pem).map_err(|e| {
                    GitHubError::Auth {
                        what: "GitHub App private key".into(),
                        detail: format!("not an RSA private key in PEM form ({e})"),
                    }
                })?,
                issuer: a.issuer,
                fixed_installation: a.installation_id,
                installations: Mutex::new(HashMap::new()),
                tokens: Mutex::new(HashMap::new()),
                permissions: Mutex::new(HashMap::new()),
            })),
        })
    }
}

impl AppAuth {
    /// A fresh App JWT: `iat` = now − 60 s, `exp` = iat + 9 min.
    pub(crate) fn jwt(&self, now_s: i64) -> Result<String, GitHubError> {
        let iat = now_s - JWT_BACKDATE_S;
        let claims = Claims {
            iat,
            exp: iat + JWT_LIFETIME_S,
            iss: &self.issuer,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key).map_err(|e| {
            GitHubError::Auth {
                what: "GitHub App JWT".into(),
                detail: e.to_string(),
            }
        })
    }

    pub(crate) fn cached_token(&self, installation: u64, now_ms: i64) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(&installation)
            .filter(|(_, exp)| exp - now_ms > REFRESH_MARGIN_MS)
            .map(|(t, _)| t.clone())
    }
}
