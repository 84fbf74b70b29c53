//! `airlock-runner`: the stand-in for GitHub's `actions/runner` that ghsim's tests and the demo
//! run inside sandboxes. It behaves as a JIT runner does: it reads its one-time config from
//! `ACTIONS_RUNNER_INPUT_JITCONFIG` (or `--jitconfig`, like `run.sh`), connects, takes exactly one
//! queued job whose labels it satisfies — any such job, as GitHub hands them out — runs the job's
//! steps as real shell commands in its working directory, reports the conclusion and exits 0.
//!
//! It has no dependencies beyond libc (and builds as a static musl binary) so that it can be
//! copied as it is into container and VM images. It never prints its credentials, and its steps
//! never see the JIT config in their environment.
//!
//! Exit codes follow the runner's listener: 0 job done, 1 terminated (registration removed or
//! unusable config), 2 retryable failure talking to the server.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use airlock_runner::{decode_jit, Identity};
use serde_json::{json, Value};

const ENV: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";
const LOG_CAP: usize = 64 * 1024;

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
}

enum Outcome {
    Ok(Option<Value>),
    Gone,
    Failed(String),
}

fn call(agent: &ureq::Agent, id: &Identity, path: &str, body: Value) -> Outcome {
    let url = format!("{}/_ghsim/runner/{path}", id.server);
    match agent
        .post(&url)
        .set("authorization", &format!("Bearer {}", id.token))
        .send_json(body)
    {
        Ok(r) if r.status() == 204 => Outcome::Ok(None),
        Ok(r) => match r.into_json::<Value>() {
            Ok(v) => Outcome::Ok(Some(v)),
            Err(e) => Outcome::Failed(format!("bad answer from {path}: {e}")),
        },
        Err(ureq::Error::Status(401 | 404 | 410, _)) => Outcome::Gone,
        Err(e) => Outcome::Failed(format!("{path}: {e}")),
    }
}

/// The service refused the session as GitHub's does an outdated runner: exits with the code
/// `actions/runner` returns (4: a run-once runner that updated itself; 7, or 1 unless
/// `ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE=1`: a deprecated version).
fn refused(v: &Value) -> ! {
    match v.get("refusal").and_then(Value::as_str) {
        Some("update") => {
            let version = v.get("version").and_then(Value::as_str).unwrap_or("?");
            println!("Runner update in progress, do not shutdown runner.");
            println!("Downloading {version} runner");
            println!(
                "Runner will exit shortly for update, should be back online within 10 seconds."
            );
            std::process::exit(4);
        }
        _ => {
            let msg = v
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("deprecated");
            eprintln!("An error occurred: {msg}");
            let seven = std::env::var("ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE")
                .is_ok_and(|v| v == "1");
            std::process::exit(if seven { 7 } else { 1 });
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let from_arg = args
        .iter()
        .position(|a| a == "--jitconfig")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let encoded = match std::env::var(ENV).ok().or(from_arg) {
        Some(e) => e,
        None => {
            eprintln!("airlock-runner: no JIT config: set {ENV} (or pass --jitconfig)");
            std::process::exit(1);
        }
    };
    let id = match decode_jit(&encoded) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("airlock-runner: unusable JIT config: {e}");
            std::process::exit(1);
        }
    };
    drop(encoded);
    println!("√ Connected to GitHub as {}", id.name);
    let agent = agent();

    let mut failures = 0;
    loop {
        match call(&agent, &id, "connect", json!({})) {
            Outcome::Ok(Some(v)) if v.get("ok") == Some(&Value::Bool(false)) => refused(&v),
            Outcome::Ok(_) => break,
            Outcome::Gone => {
                eprintln!("airlock-runner: registration {} no longer exists", id.name);
                std::process::exit(1);
            }
            Outcome::Failed(e) => {
                failures += 1;
                eprintln!("airlock-runner: connect failed ({e}), retrying");
                if failures > 30 {
                    std::process::exit(2);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    println!("Listening for Jobs");

    // Like the real listener, give up (retryable exit) when the server stays unreachable.
    let mut failures = 0;
    let job = loop {
        match call(&agent, &id, "acquire", json!({})) {
            Outcome::Ok(Some(job)) => break job,
            Outcome::Ok(None) => failures = 0,
            Outcome::Gone => {
                println!("Runner registration removed; exiting");
                std::process::exit(1);
            }
            Outcome::Failed(e) => {
                failures += 1;
                eprintln!("airlock-runner: {e}; retrying");
                if failures >= 60 {
                    eprintln!(
                        "airlock-runner: the server has been unreachable for a minute; giving up"
                    );
                    std::process::exit(2);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    let job_id = job.get("job_id").and_then(Value::as_u64).unwrap_or(0);
    let job_name = job
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    println!("Running job: {job_name} ({job_id})");

    let done = Arc::new(AtomicBool::new(false));
    let beat = {
        let done = done.clone();
        let agent = agent.clone();
        let id = Identity {
            name: id.name.clone(),
            server: id.server.clone(),
            token: id.token.clone(),
        };
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let _ = call(&agent, &id, "heartbeat", json!({ "job_id": job_id }));
                for _ in 0..10 {
                    if done.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
    };

    let steps: Vec<String> = job
        .get("steps")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let work = std::env::current_dir()
        .unwrap_or_else(|_| "/".into())
        .join("_work");
    let _ = std::fs::create_dir_all(&work);
    let mut log = String::new();
    let mut conclusion = "success";
    for (i, step) in steps.iter().enumerate() {
        println!("##[group]Run step {}: {step}", i + 1);
        match run_step(step, &work, job_id, &mut log) {
            Ok(0) => {}
            Ok(code) => {
                println!("##[error]Process completed with exit code {code}.");
                conclusion = "failure";
                break;
            }
            Err(e) => {
                println!("##[error]{e}");
                conclusion = "failure";
                break;
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = beat.join();

    let body = json!({ "job_id": job_id, "conclusion": conclusion, "log": log });
    for attempt in 0..20 {
        match call(&agent, &id, "complete", body.clone()) {
            Outcome::Ok(_) => {
                println!("Job {job_name} completed with result: {conclusion}");
                std::process::exit(0);
            }
            Outcome::Gone => {
                eprintln!("airlock-runner: the server no longer knows this runner");
                std::process::exit(1);
            }
            Outcome::Failed(e) => {
                eprintln!(
                    "airlock-runner: reporting the result failed ({e}), attempt {}",
                    attempt + 1
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    std::process::exit(2);
}

/// Runs one step with `sh -e -c`, streaming its output to ours and into the job log (capped).
fn run_step(
    step: &str,
    work: &std::path::Path,
    job_id: u64,
    log: &mut String,
) -> Result<i32, String> {
    let mut child = Command::new("/bin/sh")
        .arg("-e")
        .arg("-c")
        .arg(step)
        .current_dir(work)
        .env_remove(ENV)
        .env("CI", "true")
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_JOB_ID", job_id.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start /bin/sh: {e}"))?;
    let mut err = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        println!("{line}");
        if log.len() < LOG_CAP {
            log.push_str(&line);
            log.push('\n');
        }
    }
    let stderr = err_thread.join().unwrap_or_default();
    if !stderr.is_empty() {
        eprint!("{stderr}");
        if log.len() < LOG_CAP {
            log.push_str(&stderr);
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the step: {e}"))?;
    Ok(status.code().unwrap_or(128 + 9))
}
