//! `doctor`'s GitHub checks: reachability and credentials per pool scope, what a refusal needs,
//! an App installation's permissions, runner groups, and the clock's drift from GitHub's.

use std::collections::BTreeSet;
use std::time::Duration;

use airlock_config::Config;
use airlock_core::Scope;

use super::{Report, Verdict};

/// What a pool's scope needs of the credentials, in GitHub's words.
fn needs(scope: &Scope, app: bool) -> &'static str {
    match (scope, app) {
        (Scope::Repo { .. }, true) => "the App's repository permission Administration: read and write (and Actions: read)",
        (Scope::Org(_), true) => "the App's organization permission Self-hosted runners: read and write (and Actions: read on the repositories)",
        (Scope::Repo { .. }, false) => "a fine-grained token with Administration: read and write on the repository, or a classic token with the repo scope",
        (Scope::Org(_), false) => "a fine-grained token with the organization's Self-hosted runners: read and write, or a classic token with admin:org",
        (Scope::Enterprise(_), _) => "a classic token with manage_runners:enterprise (Apps cannot manage enterprise runners)",
    }
}

pub(super) async fn github(r: &mut Report, cfg: &Config) {
    let client = match crate::github_client(cfg, None) {
        Ok(c) => c,
        Err(e) => {
            r.add(
                "github",
                "credentials",
                Verdict::Fail,
                format!(
                    "{e}: {}",
                    std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                ),
                Some(
                    "check [github] token_file or private_key_file (readable by root, mode 0600)"
                        .into(),
                ),
            );
            return;
        }
    };
    let app = matches!(cfg.github.auth, airlock_config::Auth::App { .. });
    let scopes: BTreeSet<String> = cfg.pools.iter().map(|p| p.scope.to_string()).collect();
    let mut reached = false;
    for s in &scopes {
        let Ok(scope) = Scope::parse(s) else { continue };
        let name = format!("scope {s}");
        let t0 = std::time::Instant::now();
        let listed = tokio::time::timeout(
            // The client sends a read up to three times.
            cfg.github.request_timeout * 3 + Duration::from_secs(5),
            client.list_runners(&scope),
        )
        .await
        .unwrap_or_else(|_| {
            Err(airlock_github::GitHubError::Transient {
                what: "listing runners".into(),
                detail: "timed out".into(),
            })
        });
        match listed {
            Ok(list) => {
                reached = true;
                r.ok(
                    "github",
                    name.clone(),
                    format!(
                        "credentials accepted; {} runner registration(s) listed in {} ms (registering runners needs write access, which doctor does not try)",
                        list.len(),
                        t0.elapsed().as_millis()
                    ),
                );
            }
            Err(e) => {
                use airlock_github::GitHubError as E;
                let (what, fix) = match &e {
                    E::Transient { .. } | E::Unavailable { .. } => (
                        format!("GitHub is not reachable at {}: {e}", cfg.github.api_url),
                        "check github.api_url, DNS, the proxy and the firewall".to_string(),
                    ),
                    E::Permanent { status: 401, .. } | E::Auth { .. } => (
                        format!("the credentials are refused: {e}"),
                        "replace the token or the App key; an App's issuer is its client ID or App ID".to_string(),
                    ),
                    E::Permanent { status: 403, .. } => {
                        reached = true;
                        (format!("not allowed: {e}"), format!("grant {}", needs(&scope, app)))
                    }
                    E::NotFound { .. } => {
                        reached = true;
                        (
                            format!("{s} is not found, or the credentials cannot see it: {e}"),
                            format!("check the pool's scope; grant {}", needs(&scope, app)),
                        )
                    }
                    E::RateLimited { wait, .. } => {
                        reached = true;
                        (
                            format!("rate limited for {} s: {e}", wait.as_secs()),
                            "wait, or lower polling (github.poll_interval)".to_string(),
                        )
                    }
                    _ => (e.to_string(), format!("grant {}", needs(&scope, app))),
                };
                r.add("github", name.clone(), Verdict::Fail, what, Some(fix));
                continue;
            }
        }
        // An App's installation lists what it was granted: check what the scope needs.
        if let Ok(Some(perms)) = client.app_permissions(&scope).await {
            let (key, want) = match scope {
                Scope::Repo { .. } => ("administration", "write"),
                _ => ("organization_self_hosted_runners", "write"),
            };
            let got = perms.get(key).map(String::as_str).unwrap_or("none");
            if got == want {
                r.ok(
                    "github",
                    format!("{name} permissions"),
                    format!("{key}: {got}"),
                );
            } else {
                r.add(
                    "github",
                    format!("{name} permissions"),
                    Verdict::Fail,
                    format!("the App's installation has {key}: {got}; airlock registers runners, which needs {key}: {want}"),
                    Some(format!("grant {}", needs(&scope, true))),
                );
            }
        }
        // Org and enterprise pools register into a runner group that must exist.
        for p in cfg.pools.iter().filter(|p| &p.scope.to_string() == s) {
            if matches!(scope, Scope::Repo { .. }) {
                continue;
            }
            match client.runner_group_id(&scope, &p.runner_group).await {
                Ok(id) => r.ok(
                    "github",
                    format!("pool {} runner group", p.name),
                    format!("{} (id {id})", p.runner_group),
                ),
                Err(e) => r.add(
                    "github",
                    format!("pool {} runner group", p.name),
                    Verdict::Fail,
                    e.to_string(),
                    Some(format!(
                        "create the runner group {:?} in {s}, or set the pool's runner_group",
                        p.runner_group
                    )),
                ),
            }
        }
    }
    // The clock, from the Date of GitHub's answers above.
    match client.clock_offset_ms() {
        Some(off) if off.abs() > airlock_github::clock::DRIFT_WARN_MS => r.add(
            "clock",
            "drift",
            Verdict::Fail,
            format!(
                "this host's clock is {} s {} GitHub's",
                off.abs() / 1000,
                if off > 0 { "behind" } else { "ahead of" }
            ),
            Some("fix the host's time sync (systemd-timesyncd, chrony or ntpd); airlock copes meanwhile, tokens and logs do not".into()),
        ),
        Some(off) => r.ok("clock", "drift", format!("{off} ms from GitHub's (within 10 s)")),
        None if reached => r.add(
            "clock",
            "drift",
            Verdict::Warn,
            "GitHub's answers had no Date header: the drift is unknown",
            None,
        ),
        None => {}
    }
}
