//! airlock's real GitHub client against ghsim over HTTP: auth, pagination, ETags, rate limits,
//! error classes, and the operations airlock uses.

use std::time::Duration;

use airlock_core::{JobStatus, Scope};
use airlock_ghsim::{AppConfig, Faults, JobSpec, Sim, SimConfig, Workflow};
use airlock_github::{AppCredentials, Client, ClientOptions, Credentials, ErrorClass, GitHubError};

const TOKEN: &str = "ghp_testtoken";

fn repo() -> Scope {
    Scope::parse("repo:octo/hello").unwrap()
}

async fn sim(cfg: SimConfig) -> airlock_ghsim::Running {
    Sim::start(
        SimConfig {
            tokens: vec![TOKEN.into()],
            ..cfg
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

fn client(url: &str) -> Client {
    Client::new(
        url,
        Credentials::Token(TOKEN.into()),
        ClientOptions {
            timeout: Duration::from_secs(5),
            observer: None,
            write_interval: Duration::ZERO,
        },
    )
    .unwrap()
}

fn labels(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn runner_registration_lifecycle() {
    let s = sim(SimConfig::default()).await;
    let c = client(&s.url);
    let jit = c
        .generate_jitconfig(&repo(), "airlock-small-1", 1, &labels(&["small"]))
        .await
        .unwrap();
    assert!(!jit.encoded.is_empty());
    assert!(
        !format!("{jit:?}").contains(&jit.encoded),
        "Debug must not print the JIT config"
    );
    let dup = c
        .generate_jitconfig(&repo(), "airlock-small-1", 1, &labels(&["small"]))
        .await
        .unwrap_err();
    assert!(matches!(dup, GitHubError::Conflict { .. }), "{dup}");
    let bad = c
        .generate_jitconfig(&repo(), "x", 1, &[])
        .await
        .unwrap_err();
    assert!(matches!(bad, GitHubError::Unprocessable { .. }), "{bad}");

    let list = c.list_runners(&repo()).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "airlock-small-1");
    assert!(!list[0].online && !list[0].busy);
    assert!(list[0].labels.iter().any(|l| l == "small"));
    let got = c.get_runner(&repo(), jit.runner_id).await.unwrap();
    assert_eq!(got.id, jit.runner_id);

    c.delete_runner(&repo(), jit.runner_id).await.unwrap();
    c.delete_runner(&repo(), jit.runner_id).await.unwrap(); // already gone is fine
    assert_eq!(
        s.sim.stats().missing_headers,
        0,
        "every request carries Accept, X-GitHub-Api-Version and User-Agent"
    );
    // ghsim enforces what GitHub enforces.
    let raw = reqwest::Client::builder().build().unwrap();
    let url = format!("{}/repos/octo/hello/actions/runners", s.url);
    let r = raw
        .get(&url)
        .bearer_auth(TOKEN)
        .header("user-agent", "t")
        .header("x-github-api-version", "1999-01-01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = raw.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "no User-Agent");
    let e = c.get_runner(&repo(), jit.runner_id).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::NotFound);
    // Other scopes see their own runners only.
    assert!(c
        .list_runners(&Scope::parse("org:octo").unwrap())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        c.runner_group_id(&Scope::parse("org:octo").unwrap(), "Default")
            .await
            .unwrap(),
        1
    );
    assert_eq!(c.runner_group_id(&repo(), "Default").await.unwrap(), 1);
    let e = c
        .runner_group_id(&Scope::parse("org:octo").unwrap(), "gpu-boxes")
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::NotFound);
    s.shutdown().await;
}

#[tokio::test]
async fn pagination_and_etags() {
    let s = sim(SimConfig::default()).await;
    let c = client(&s.url);
    for i in 0..250 {
        c.generate_jitconfig(&repo(), &format!("airlock-p-{i}"), 1, &labels(&["p"]))
            .await
            .unwrap();
    }
    let before = s.sim.stats();
    let list = c.list_runners(&repo()).await.unwrap();
    assert_eq!(list.len(), 250);
    let after = s.sim.stats();
    assert_eq!(
        after.api_requests - before.api_requests,
        3,
        "250 runners at 100 a page"
    );
    let again = c.list_runners(&repo()).await.unwrap();
    assert_eq!(again, list);
    assert_eq!(
        s.sim.stats().not_modified - after.not_modified,
        3,
        "unchanged pages answer 304"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn polling_finds_queued_jobs() {
    let s = sim(SimConfig::default()).await;
    let c = client(&s.url);
    let sub = s
        .sim
        .submit(&Workflow {
            repo: "octo/hello".into(),
            name: "CI".into(),
            jobs: vec![
                JobSpec {
                    name: "a".into(),
                    labels: labels(&["self-hosted", "small"]),
                    steps: vec![],
                    drop_webhooks: false,
                },
                JobSpec {
                    name: "b".into(),
                    labels: labels(&["big"]),
                    steps: vec![],
                    drop_webhooks: false,
                },
            ],
        })
        .unwrap();
    s.sim
        .submit(&Workflow {
            repo: "octo/other".into(),
            name: "CI".into(),
            jobs: vec![JobSpec {
                name: "c".into(),
                labels: labels(&["x"]),
                steps: vec![],
                drop_webhooks: false,
            }],
        })
        .unwrap();
    let jobs = c.active_jobs(&repo(), "octo/hello").await.unwrap();
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), sub.job_ids);
    assert!(jobs
        .iter()
        .all(|j| j.status == JobStatus::Queued && j.repo == "octo/hello"));
    assert_eq!(
        jobs[0].labels,
        airlock_core::Labels::new(["self-hosted", "small"])
    );
    let one = c.job(&repo(), "octo/hello", sub.job_ids[1]).await.unwrap();
    assert_eq!(one.name, "b");
    let repos = c
        .org_repos(&Scope::parse("org:octo").unwrap(), "octo")
        .await
        .unwrap();
    assert_eq!(repos, ["octo/hello", "octo/other"]);
    s.shutdown().await;
}

#[tokio::test]
async fn errors_are_classified_and_rate_limits_respected() {
    let s = sim(SimConfig::default()).await;
    let c = client(&s.url);
    // A read that meets a 502 is sent again (twice at most); a write is not (the daemon's
    // create decides, with a new runner name).
    s.sim.set_faults(Faults {
        error_5xx: 1,
        ..Default::default()
    });
    let before = s.sim.stats().api_requests;
    c.list_runners(&repo()).await.unwrap();
    assert_eq!(s.sim.stats().api_requests - before, 2, "one retry");
    s.sim.set_faults(Faults {
        error_5xx: 3,
        ..Default::default()
    });
    let before = s.sim.stats().api_requests;
    assert_eq!(
        c.list_runners(&repo()).await.unwrap_err().class(),
        ErrorClass::Transient
    );
    assert_eq!(
        s.sim.stats().api_requests - before,
        3,
        "two retries, no more"
    );
    s.sim.set_faults(Faults {
        error_5xx: 1,
        ..Default::default()
    });
    let before = s.sim.stats().api_requests;
    let e = c
        .generate_jitconfig(&repo(), "w-1", 1, &labels(&["x"]))
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert_eq!(
        s.sim.stats().api_requests - before,
        1,
        "writes are not retried"
    );
    c.list_runners(&repo()).await.unwrap();

    s.sim.set_faults(Faults {
        rate_limit: 1,
        rate_limit_status: 429,
        retry_after_s: 2,
        ..Default::default()
    });
    let e = c.list_runners(&repo()).await.unwrap_err();
    assert_eq!(
        e.class(),
        ErrorClass::RateLimited(Duration::from_secs(2)),
        "{e}"
    );
    // Until retry-after has passed, the client does not call GitHub at all.
    let sent = s.sim.stats().api_requests;
    assert!(matches!(
        c.list_runners(&repo()).await.unwrap_err().class(),
        ErrorClass::RateLimited(_)
    ));
    assert_eq!(s.sim.stats().api_requests, sent);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    c.list_runners(&repo()).await.unwrap();

    s.sim.set_faults(Faults {
        rate_limit: 1,
        rate_limit_status: 403,
        retry_after_s: 1,
        ..Default::default()
    });
    assert!(matches!(
        c.list_runners(&repo()).await.unwrap_err().class(),
        ErrorClass::RateLimited(_)
    ));

    let bad = Client::new(
        &s.url,
        Credentials::Token("wrong".into()),
        ClientOptions::default(),
    )
    .unwrap();
    let e = bad.list_runners(&repo()).await.unwrap_err();
    assert!(
        matches!(e, GitHubError::Permanent { status: 401, .. }),
        "{e}"
    );

    let nowhere = Client::new(
        "http://127.0.0.1:9",
        Credentials::Token(TOKEN.into()),
        ClientOptions {
            timeout: Duration::from_secs(2),
            observer: None,
            write_interval: Duration::ZERO,
        },
    )
    .unwrap();
    assert_eq!(
        nowhere.list_runners(&repo()).await.unwrap_err().class(),
        ErrorClass::Transient
    );
    s.shutdown().await;
}

/// GitHub down: five transient failures in a row open the circuit (requests then fail at once
/// without reaching GitHub), a probe after the cool-down finds it still down and the circuit
/// reopens for longer; once GitHub answers, the next probe closes it. Timeouts count as 5xx do.
#[tokio::test]
async fn a_failing_github_opens_the_circuit_and_a_probe_closes_it() {
    use airlock_github::breaker::Circuit;
    let s = sim(SimConfig::default()).await;
    let c = Client::new(
        &s.url,
        Credentials::Token(TOKEN.into()),
        ClientOptions {
            timeout: Duration::from_millis(400),
            observer: None,
            write_interval: Duration::ZERO,
        },
    )
    .unwrap();
    // Timeouts: an answer slower than the client's timeout.
    s.sim.set_faults(Faults {
        latency_ms: 700,
        ..Default::default()
    });
    let e = c.list_runners(&repo()).await.unwrap_err();
    assert!(
        matches!(&e, GitHubError::Transient { detail, .. } if detail == "timed out"),
        "{e}"
    );
    assert_eq!(
        c.circuit(),
        Circuit::Closed,
        "three failures do not open it"
    );
    s.sim.set_faults(Faults {
        error_5xx: 1000,
        ..Default::default()
    });
    let e = c.list_runners(&repo()).await.unwrap_err();
    assert!(
        matches!(e, GitHubError::Unavailable { failures: 5, .. }),
        "{e}"
    );
    let Circuit::Open { until } = c.circuit() else {
        panic!("open after five: {:?}", c.circuit());
    };
    let cool = until.saturating_duration_since(std::time::Instant::now());
    assert!(
        cool > Duration::from_millis(1000) && cool <= Duration::from_secs(2),
        "{cool:?}"
    );
    // Open: nothing reaches GitHub.
    let sent = s.sim.stats().api_requests;
    for _ in 0..20 {
        let e = c.get_runner(&repo(), 1).await.unwrap_err();
        assert!(matches!(e.class(), ErrorClass::Unavailable(_)), "{e}");
    }
    assert_eq!(s.sim.stats().api_requests, sent, "fail fast while open");
    // The probe fails: open again, for about twice as long.
    tokio::time::sleep(cool + Duration::from_millis(50)).await;
    let e = c.list_runners(&repo()).await.unwrap_err();
    assert!(matches!(e.class(), ErrorClass::Unavailable(_)), "{e}");
    assert_eq!(s.sim.stats().api_requests, sent + 1, "one probe");
    let Circuit::Open { until } = c.circuit() else {
        panic!("reopened: {:?}", c.circuit());
    };
    let cool = until.saturating_duration_since(std::time::Instant::now());
    assert!(
        cool > Duration::from_millis(2900) && cool <= Duration::from_secs(4),
        "{cool:?}"
    );
    // GitHub is back: the next probe closes the circuit and requests flow.
    s.sim.set_faults(Faults::default());
    tokio::time::sleep(cool + Duration::from_millis(50)).await;
    c.list_runners(&repo()).await.unwrap();
    assert_eq!(c.circuit(), Circuit::Closed);
    c.get_runner(&repo(), 999).await.unwrap_err();
    assert_eq!(c.circuit(), Circuit::Closed, "a 404 is an answer");
    s.shutdown().await;
}

#[tokio::test]
async fn primary_rate_limit_exhaustion_waits_until_reset() {
    let s = sim(SimConfig {
        rate_limit: 3,
        ..Default::default()
    })
    .await;
    let c = client(&s.url);
    for _ in 0..3 {
        c.get_runner(&repo(), 999).await.unwrap_err();
    }
    let e = c.list_runners(&repo()).await.unwrap_err();
    match e.class() {
        ErrorClass::RateLimited(wait) => assert!(wait > Duration::from_secs(3000), "{wait:?}"),
        other => panic!("{other:?}: {e}"),
    }
    s.shutdown().await;
}

fn app_sim_config() -> SimConfig {
    SimConfig {
        app: Some(AppConfig {
            app_id: 12345,
            client_id: "Iv1.ghsimtest".into(),
            public_key_pem: include_bytes!("fixtures/test-app-key.pub.pem").to_vec(),
            installations: vec![(678, "octo".into()), (679, "acme".into())],
        }),
        installation_token_ttl: Duration::from_secs(3600),
        ..Default::default()
    }
}

fn app_client(url: &str, issuer: &str, installation_id: Option<u64>) -> Client {
    Client::new(
        url,
        Credentials::App(AppCredentials {
            issuer: issuer.into(),
            private_key_pem: include_bytes!("fixtures/test-app-key.pem").to_vec(),
            installation_id,
        }),
        ClientOptions::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn github_app_auth_with_installation_lookup_and_token_cache() {
    let s = sim(app_sim_config()).await;
    for issuer in ["Iv1.ghsimtest", "12345"] {
        let c = app_client(&s.url, issuer, None);
        c.generate_jitconfig(&repo(), &format!("airlock-a-{issuer}"), 1, &labels(&["a"]))
            .await
            .unwrap();
        for _ in 0..5 {
            c.list_runners(&repo()).await.unwrap();
            c.list_runners(&Scope::parse("org:octo").unwrap())
                .await
                .unwrap();
        }
    }
    let st = s.sim.stats();
    // Per client: one installation lookup per scope and one token for the installation.
    assert_eq!(
        st.by_route.get("POST /app/installations/*/access_tokens"),
        Some(&2),
        "{:?}",
        st.by_route
    );
    assert_eq!(
        st.by_route.get("GET /repos/*/*/installation"),
        Some(&2),
        "{:?}",
        st.by_route
    );
    assert_eq!(
        st.by_route.get("GET /orgs/*/installation"),
        Some(&2),
        "{:?}",
        st.by_route
    );

    // An installation only reaches its own account.
    let c = app_client(&s.url, "Iv1.ghsimtest", Some(679));
    let e = c.list_runners(&repo()).await.unwrap_err();
    assert!(
        matches!(e, GitHubError::Permanent { status: 403, .. }),
        "{e}"
    );
    // A wrong issuer is refused.
    let c = app_client(&s.url, "Iv1.someoneelse", None);
    let e = c.list_runners(&repo()).await.unwrap_err();
    assert!(
        matches!(e, GitHubError::Permanent { status: 401, .. }),
        "{e}"
    );
    // Apps cannot manage enterprise runners.
    let c = app_client(&s.url, "12345", None);
    let e = c
        .list_runners(&Scope::parse("enterprise:ghsim").unwrap())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("manage_runners:enterprise"), "{e}");
    s.shutdown().await;
}

#[tokio::test]
async fn installation_tokens_are_refreshed_before_expiry() {
    // Tokens that live 11 minutes are within the 10-minute refresh margin after a minute; with
    // a 5-minute lifetime every call must fetch a new one rather than use one about to expire.
    let s = sim(SimConfig {
        installation_token_ttl: Duration::from_secs(300),
        ..app_sim_config()
    })
    .await;
    let c = app_client(&s.url, "12345", Some(678));
    for _ in 0..3 {
        c.list_runners(&repo()).await.unwrap();
    }
    assert_eq!(
        s.sim
            .stats()
            .by_route
            .get("POST /app/installations/*/access_tokens"),
        Some(&3)
    );
    s.shutdown().await;
}

/// A host whose clock is 15 minutes off either way: the client measures GitHub's clock from the
/// `Date` of its answers and signs App JWTs with it, so they stay valid. The positive control:
/// the same JWT made with the host's own time is refused by GitHub's checks.
#[tokio::test]
async fn a_drifted_clock_is_measured_and_app_jwts_stay_valid() {
    for skew in [900i64, -900] {
        let s = sim(SimConfig {
            clock_skew_s: skew,
            ..app_sim_config()
        })
        .await;
        let c = app_client(&s.url, "12345", None);
        c.list_runners(&repo())
            .await
            .unwrap_or_else(|e| panic!("skew {skew}: {e}"));
        let offset = c.clock_offset_ms().expect("measured");
        assert!(
            (offset - skew * 1000).abs() < 3000,
            "skew {skew} s measured as {offset} ms"
        );
        // Positive control: a JWT on the host's clock, sent as is.
        let now = chrono::Utc::now().timestamp();
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &serde_json::json!({ "iat": now - 60, "exp": now + 480, "iss": "12345" }),
            &jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("fixtures/test-app-key.pem"))
                .unwrap(),
        )
        .unwrap();
        let r = reqwest::Client::new()
            .get(format!("{}/repos/octo/hello/installation", s.url))
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .header("user-agent", "clock-test")
            .bearer_auth(jwt)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            401,
            "skew {skew}: the host's own time is refused"
        );
        s.shutdown().await;
    }
}

/// `x-ratelimit-reset` is a time on GitHub's clock: the wait is read against it, not the host's.
#[tokio::test]
async fn rate_limit_resets_are_read_on_githubs_clock() {
    for skew in [3000i64, -3000] {
        let s = sim(SimConfig {
            rate_limit: 3,
            clock_skew_s: skew,
            ..Default::default()
        })
        .await;
        let c = client(&s.url);
        for _ in 0..3 {
            c.get_runner(&repo(), 999).await.unwrap_err();
        }
        let e = c.list_runners(&repo()).await.unwrap_err();
        match e.class() {
            // The window resets an hour after its first request, on either clock; read on the
            // host's it would be 600 s or 6600 s away.
            ErrorClass::RateLimited(wait) => assert!(
                (Duration::from_secs(3500)..=Duration::from_secs(3605)).contains(&wait),
                "skew {skew}: {wait:?}"
            ),
            other => panic!("{other:?}: {e}"),
        }
        s.shutdown().await;
    }
}

/// An installation granted only read on runners lists them but may not register or remove one,
/// as GitHub answers ("Resource not accessible by integration"); the client says it is
/// permanent (no retry helps until the permission is granted).
#[tokio::test]
async fn an_installation_without_runner_write_is_refused_registrations() {
    let s = sim(SimConfig {
        app_runner_permission: "read".into(),
        ..app_sim_config()
    })
    .await;
    let c = app_client(&s.url, "12345", None);
    c.list_runners(&repo()).await.unwrap();
    let perms = c.app_permissions(&repo()).await.unwrap().unwrap();
    assert_eq!(
        perms.get("administration").map(String::as_str),
        Some("read")
    );
    let e = c
        .generate_jitconfig(&repo(), "w-1", 1, &labels(&["x"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, GitHubError::Permanent { status: 403, message, .. } if message.contains("not accessible")),
        "{e}"
    );
    s.shutdown().await;
}
