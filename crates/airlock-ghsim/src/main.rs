//! `airlock-ghsim`: runs the GitHub emulator as a process (see the library's docs).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(version, about = "A GitHub emulator for airlock's tests and demo")]
struct Args {
    /// Address to serve the REST API and the runner protocol on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Where to deliver workflow_job webhooks (airlock's /webhook).
    #[arg(long)]
    webhook_url: Option<String>,
    /// File holding the webhook secret.
    #[arg(long)]
    webhook_secret_file: Option<PathBuf>,
    /// File holding a token to accept as a personal access token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Workflow files (TOML: [[workflow]] with [[workflow.job]]) to submit at start.
    #[arg(long)]
    workflow: Vec<PathBuf>,
    /// Append every REST exchange as JSON lines here.
    #[arg(long)]
    record: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let a = Args::parse();
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let mut cfg = airlock_ghsim::SimConfig {
        webhook_url: a.webhook_url,
        record: a.record,
        ..Default::default()
    };
    if let Some(p) = &a.webhook_secret_file {
        cfg.webhook_secret = read(p)?.trim().as_bytes().to_vec();
    }
    if let Some(p) = &a.token_file {
        cfg.tokens.push(read(p)?.trim().to_string());
    }
    let mut workflows = Vec::new();
    for p in &a.workflow {
        let f: airlock_ghsim::WorkflowFile = toml::from_str(&read(p)?)
            .with_context(|| format!("invalid workflow file {}", p.display()))?;
        workflows.extend(f.workflow);
    }
    let running = airlock_ghsim::Sim::start(cfg, a.listen).await?;
    // The workflows first: "listening" tells a caller the emulator is ready, runs included.
    let submitted = workflows
        .iter()
        .map(|wf| running.sim.submit(wf))
        .collect::<Result<Vec<_>, _>>()?;
    println!("ghsim listening on {}", running.url);
    for s in submitted {
        println!("submitted run {} with jobs {:?}", s.run_id, s.job_ids);
    }
    tokio::signal::ctrl_c().await?;
    running.shutdown().await;
    Ok(())
}
