//! `airlock doctor` as a process against ghsim: a healthy setup passes (exit 0), and each
//! problem it must name fails with its fix (exit 1): refused credentials, an unreachable
//! GitHub, a drifted clock, an invalid config, a container pool without its image.

mod common;

use std::path::Path;
use std::process::Command;

use airlock_ghsim::{Sim, SimConfig};
use common::*;
use serde_json::Value;

fn doctor(config: &Path) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["doctor", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

/// The check named `name` in `area`.
fn check<'v>(v: &'v Value, area: &str, name: &str) -> &'v Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["area"] == area && c["name"] == name)
        .unwrap_or_else(|| panic!("no check {area}/{name} in {v:#}"))
}

fn fails(v: &Value) -> Vec<String> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] == "fail")
        .map(|c| format!("{}/{}: {}", c["area"], c["name"], c["detail"]))
        .collect()
}

async fn sim(skew: i64) -> airlock_ghsim::Running {
    Sim::start(
        SimConfig {
            webhook_secret: SECRET.as_bytes().to_vec(),
            tokens: vec![TOKEN.into()],
            clock_skew_s: skew,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

fn config(dir: &Path, api: &str, pools: &str) -> std::path::PathBuf {
    write_secret(&dir.join("token"), TOKEN);
    write_secret(&dir.join("webhook-secret"), SECRET);
    let p = dir.join("airlock.toml");
    std::fs::write(
        &p,
        format!(
            "[server]\nstate_dir = \"{}\"\n\n[github]\napi_url = \"{api}\"\ntoken_file = \"token\"\n\
             webhook_secret_file = \"webhook-secret\"\n{pools}",
            dir.join("state").display()
        ),
    )
    .unwrap();
    p
}

fn process_pool() -> String {
    format!(
        "\n[[pool]]\nname = \"small\"\nscope = \"repo:octo/hello\"\nlabels = [\"self-hosted\", \"small\"]\nrunner_command = \"{}\"\n\
         \n[[pool]]\nname = \"org\"\nscope = \"org:octo\"\nlabels = [\"self-hosted\", \"org\"]\nrunner_command = \"{}\"\n",
        runner_bin().display(),
        runner_bin().display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_setup_passes_and_github_problems_fail_with_their_fix() {
    let s = sim(0).await;
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), &s.url, &process_pool());
    let (code, v) = doctor(&cfg);
    assert_eq!(code, 0, "{:?}\n{v:#}", fails(&v));
    assert_eq!(check(&v, "config", "valid")["verdict"], "ok");
    assert_eq!(
        check(&v, "github", "scope repo:octo/hello")["verdict"],
        "ok"
    );
    assert_eq!(
        check(&v, "github", "pool org runner group")["verdict"],
        "ok"
    );
    assert_eq!(check(&v, "clock", "drift")["verdict"], "ok");
    assert_eq!(check(&v, "disk", "free space")["verdict"], "ok");

    // Refused credentials.
    write_secret(&d.path().join("token"), "ghp_not-the-token");
    let (code, v) = doctor(&cfg);
    assert_eq!(code, 1);
    let c = check(&v, "github", "scope repo:octo/hello");
    assert_eq!(c["verdict"], "fail");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("credentials are refused"),
        "{c}"
    );
    assert!(
        c["fix"].as_str().unwrap().contains("replace the token"),
        "{c}"
    );

    // A runner group that does not exist.
    write_secret(&d.path().join("token"), TOKEN);
    let with_group = process_pool().replace(
        "scope = \"org:octo\"",
        "scope = \"org:octo\"\nrunner_group = \"no-such-group\"",
    );
    let cfg = config(d.path(), &s.url, &with_group);
    let (code, v) = doctor(&cfg);
    assert_eq!(code, 1);
    let c = check(&v, "github", "pool org runner group");
    assert_eq!(c["verdict"], "fail", "{c}");
    assert!(c["fix"].as_str().unwrap().contains("no-such-group"), "{c}");
    s.shutdown().await;

    // GitHub unreachable (the emulator is gone).
    let (code, v) = doctor(&cfg);
    assert_eq!(code, 1);
    let c = check(&v, "github", "scope repo:octo/hello");
    assert!(
        c["detail"].as_str().unwrap().contains("not reachable"),
        "{c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_clock_fails() {
    let s = sim(-300).await;
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), &s.url, &process_pool());
    let (code, v) = doctor(&cfg);
    assert_eq!(code, 1);
    let c = check(&v, "clock", "drift");
    assert_eq!(c["verdict"], "fail", "{c}");
    assert!(
        c["detail"].as_str().unwrap().contains("ahead of GitHub's"),
        "{c}"
    );
    assert!(c["fix"].as_str().unwrap().contains("time sync"), "{c}");
    // Everything else passes: the drift alone fails the run.
    assert_eq!(fails(&v).len(), 1, "{:?}", fails(&v));
    s.shutdown().await;
}

#[test]
fn an_invalid_config_fails_with_its_keys_and_lines() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(
        d.path(),
        "http://127.0.0.1:9",
        "\n[[pool]]\nname = \"x\"\nscope = \"repo:octo/hello\"\nlabels = []\nmax_runners = 0\n",
    );
    let (code, v) = doctor(&cfg);
    assert_eq!(code, 1);
    let c = check(&v, "config", "pool[0].max_runners");
    assert_eq!(c["verdict"], "fail", "{c}");
    assert!(c["fix"].as_str().unwrap().contains("line 13"), "{c}");
    // Host checks still run without a config.
    assert_eq!(check(&v, "host", "kernel")["verdict"], "ok");
    // A config that cannot be read at all.
    let (code, v) = doctor(&d.path().join("missing.toml"));
    assert_eq!(code, 1);
    assert!(!fails(&v).is_empty());
}

/// As root: a container pool is probed for real (a probe container under a scratch directory,
/// removed afterwards), and a pool whose image was never built fails with the command that
/// builds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_pools_are_probed_and_a_missing_image_fails() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let s = sim(0).await;
    let d = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let cfg = config(
        d.path(),
        &s.url,
        "\n[[pool]]\nname = \"box\"\nscope = \"repo:octo/hello\"\nlabels = [\"self-hosted\", \"box\"]\n\
         backend = \"container\"\nimage = \"never-built\"\n",
    );
    let (code, v) = doctor(&cfg);
    assert_eq!(code, 1);
    let c = check(&v, "backend", "container");
    assert_eq!(c["verdict"], "ok", "{c}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("runs a probe container"),
        "{c}"
    );
    let c = check(&v, "backend", "pool box image");
    assert_eq!(c["verdict"], "fail", "{c}");
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains("airlock image build never-built"),
        "{c}"
    );
    assert_eq!(fails(&v).len(), 1, "{:?}", fails(&v));
    // Nothing of the probe is left under the state directory.
    let left: Vec<_> = std::fs::read_dir(d.path().join("state"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    s.shutdown().await;
}

/// With App credentials doctor reads what the installation was granted: write on runners passes,
/// read-only fails with the permission to grant, and ghsim then refuses registrations as GitHub
/// does ("Resource not accessible by integration").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_installation_without_runner_write_fails_with_the_permission_to_grant() {
    let key = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../airlock-ghsim/tests/fixtures/test-app-key.pem");
    let public = std::fs::read(key.with_file_name("test-app-key.pub.pem")).unwrap();
    for level in ["write", "read"] {
        let s = Sim::start(
            SimConfig {
                webhook_secret: SECRET.as_bytes().to_vec(),
                app: Some(airlock_ghsim::AppConfig {
                    app_id: 12345,
                    client_id: "Iv1.ghsimtest".into(),
                    public_key_pem: public.clone(),
                    installations: vec![(678, "octo".into())],
                }),
                app_runner_permission: level.into(),
                ..Default::default()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        write_secret(
            &d.path().join("app.pem"),
            &std::fs::read_to_string(&key).unwrap(),
        );
        let cfg = config(d.path(), &s.url, &process_pool());
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "token_file = \"token\"",
            "app_id = 12345\nprivate_key_file = \"app.pem\"",
        );
        std::fs::write(&cfg, text).unwrap();
        let (code, v) = doctor(&cfg);
        let repo = check(&v, "github", "scope repo:octo/hello permissions");
        let org = check(&v, "github", "scope org:octo permissions");
        if level == "write" {
            assert_eq!(code, 0, "{:?}", fails(&v));
            assert_eq!(repo["verdict"], "ok", "{repo}");
            assert_eq!(repo["detail"], "administration: write", "{repo}");
            assert_eq!(org["verdict"], "ok", "{org}");
        } else {
            assert_eq!(code, 1, "{v:#}");
            assert_eq!(repo["verdict"], "fail", "{repo}");
            assert!(
                repo["detail"]
                    .as_str()
                    .unwrap()
                    .contains("administration: read"),
                "{repo}"
            );
            assert!(
                repo["fix"]
                    .as_str()
                    .unwrap()
                    .contains("Administration: read and write"),
                "{repo}"
            );
            assert!(
                org["fix"]
                    .as_str()
                    .unwrap()
                    .contains("Self-hosted runners: read and write"),
                "{org}"
            );
        }
        s.shutdown().await;
    }
}
