//! `airlock`: the CLI. Thin: each subcommand parses its arguments and calls into the libraries.
//!
//! Exit status: 0 success, 1 runtime failure, 2 invalid config or arguments, 3 the demo's jobs did
//! not end as expected or something was left behind, 4 an image failed an integrity check (runner
//! checksum, modified content), 5 an image is in use.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "airlock",
    version,
    about = "Self-hosted GitHub Actions runners: one fresh, disposable sandbox per job"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
pub struct Global {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (SIGTERM or Ctrl-C drains: no new runners, busy ones get a grace period).
    Serve(cmd::serve::Args),
    /// Check a config file and report every problem at once (exit 0 valid, 2 invalid).
    CheckConfig(cmd::check_config::Args),
    /// Run airlock end to end against the built-in GitHub emulator: no config, root or network.
    Demo(cmd::demo::Args),
    /// Show pools, runners and open jobs of a running daemon.
    Status(cmd::status::Args),
    /// Check this host, the config and GitHub for what airlock needs; each problem with its fix
    /// (exit 1 when anything blocks operation).
    Doctor(cmd::doctor::Args),
    /// Build, list, inspect and remove runner images (container sandboxes start from them).
    Image(Box<cmd::image::Args>),
    /// Where jobs went: a job's egress report, or an allowlist proposed from audit mode.
    Egress(cmd::egress::Args),
    /// Have the running daemon read its config again (as SIGHUP does): pools added, changed or
    /// removed without a restart; an invalid config is refused (exit 2) and the running one stays.
    Reload(cmd::reload::Args),
}

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_INVALID: u8 = 2;
pub const EXIT_UNEXPECTED: u8 = 3;

fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Demo(_) => "warn,airlock_sandbox=error",
        // The report is the output; the probes' own info lines would only interleave with it.
        Command::Doctor(_) => "warn",
        _ => "info",
    };
    init_logging(cli.global.log_format, default_log);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("airlock: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let code = rt.block_on(async {
        match cli.command {
            Command::Serve(a) => cmd::serve::run(a).await,
            Command::CheckConfig(a) => cmd::check_config::run(a),
            Command::Demo(a) => cmd::demo::run(a).await,
            Command::Status(a) => cmd::status::run(a).await,
            Command::Doctor(a) => cmd::doctor::run(a).await,
            Command::Image(a) => cmd::image::run(*a).await,
            Command::Egress(a) => cmd::egress::run(a).await,
            Command::Reload(a) => cmd::reload::run(a).await,
        }
    });
    ExitCode::from(code)
}
