//! `airlock image build|ls|inspect|rm|gc`: runner images under `state_dir/images`.
//!
//! Exit status: 0 done, 1 failed (a tool, the disk), 2 invalid arguments or no such image,
//! 4 integrity (a runner checksum mismatch, or an image modified since it was built), 5 refused
//! because a sandbox uses the image.
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use airlock_image::{
    BuildSpec, ImageError, ImageStore, Manifest, Progress, RunnerSource, TarballSource, VmBuild,
};

pub const EXIT_INTEGRITY: u8 = 4;
pub const EXIT_IN_USE: u8 = 5;

#[derive(clap::Args)]
pub struct Args {
    /// Use this config's state directory.
    #[arg(long, short, global = true, conflicts_with = "state_dir")]
    config: Option<PathBuf>,
    /// The state directory (default /var/lib/airlock, or the config's).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(clap::Subcommand)]
enum ImageCommand {
    /// Build an image: Debian (mmdebstrap) + packages + the `runner` user + a runner program.
    Build(Box<BuildArgs>),
    /// List images, newest first.
    Ls,
    /// Print an image's manifest (JSON) and check its content against its digest.
    Inspect {
        /// NAME (newest build) or NAME@DIGEST (a unique prefix of the digest is enough).
        reference: String,
    },
    /// Remove an image (NAME@DIGEST) or every build of a name (NAME); never one in use.
    Rm { reference: String },
    /// Remove every build that is neither the newest of its name nor in use, and what
    /// interrupted builds left.
    Gc,
}

#[derive(clap::Args)]
struct BuildArgs {
    /// Image name: 1-40 of a-z, 0-9 and '-'.
    name: String,
    /// Debian suite.
    #[arg(long, default_value = "bookworm")]
    suite: String,
    /// Extra Debian packages (repeat, or separate with commas), e.g. git,curl,build-essential;
    /// with --config, the `packages` of every pool that uses this image are added.
    #[arg(long = "package", short = 'p', value_delimiter = ',')]
    packages: Vec<String>,
    /// GitHub's runner release version, e.g. 2.321.0 (with --runner-sha256 and a tarball or URL).
    #[arg(long, requires = "runner_sha256")]
    runner_version: Option<String>,
    /// SHA-256 of the runner tarball; a mismatch aborts the build (exit 4).
    #[arg(long)]
    runner_sha256: Option<String>,
    /// The runner tarball (actions-runner-linux-x64-VERSION.tar.gz).
    #[arg(long, conflicts_with = "runner_url")]
    runner_tarball: Option<PathBuf>,
    /// Where to download the runner tarball from.
    #[arg(long)]
    runner_url: Option<String>,
    /// For the GitHub emulator: put ghsim's stand-in runner in the image instead (default when
    /// no --runner-version is given: the `airlock-runner` next to this program).
    #[arg(long, conflicts_with = "runner_version")]
    standin: Option<PathBuf>,
    /// A Debian mirror URL instead of the host's apt sources.
    #[arg(long)]
    mirror: Option<String>,
    /// Also make it bootable as a microVM: a kernel, an initramfs whose init is airlock's guest
    /// agent, a read-only ext4 disk, and sudo (implied with --config when a microvm pool uses it).
    #[arg(long)]
    vm: bool,
    /// Kernel packages for --vm (repeat, or separate with commas; several make a kernel matrix);
    /// default linux-image-cloud-amd64.
    #[arg(long = "kernel-package", value_delimiter = ',', requires = "vm")]
    kernel_packages: Vec<String>,
    /// With --vm: install docker.io, which the guest agent starts before the runner (implied by
    /// docker.io in the packages).
    #[arg(long, requires = "vm")]
    docker: bool,
    /// The guest agent for --vm (default: the `airlock-agent` next to this program).
    #[arg(long, requires = "vm")]
    agent: Option<PathBuf>,
}

/// The state directory, and the config when one was given.
fn state_dir(a: &Args) -> Result<(PathBuf, Option<airlock_config::Config>), u8> {
    if let Some(c) = &a.config {
        let c = super::load_config(c)?;
        return Ok((c.server.state_dir.clone(), Some(c)));
    }
    Ok((
        a.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/airlock")),
        None,
    ))
}

/// The packages the config's pools that use image `name` ask for.
pub fn pool_packages(cfg: &airlock_config::Config, name: &str) -> Vec<String> {
    let mut out: Vec<String> = cfg
        .pools
        .iter()
        .filter(|p| {
            p.image
                .as_deref()
                .is_some_and(|i| i.split('@').next() == Some(name))
        })
        .flat_map(|p| p.packages.iter().cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Digests of images that sandboxes (containers and VMs) were made from and still exist.
pub fn in_use(state_dir: &Path) -> HashSet<String> {
    airlock_sandbox::images_in_use(state_dir)
}

fn exit_for(e: &ImageError) -> u8 {
    match e {
        ImageError::BadName { .. }
        | ImageError::BadPackage { .. }
        | ImageError::NotFound { .. }
        | ImageError::Ambiguous { .. } => crate::EXIT_INVALID,
        ImageError::Checksum { .. } | ImageError::Modified { .. } => EXIT_INTEGRITY,
        ImageError::InUse { .. } => EXIT_IN_USE,
        _ => crate::EXIT_FAILURE,
    }
}

fn fail(e: ImageError) -> u8 {
    eprintln!("airlock image: {e}");
    exit_for(&e)
}

pub async fn run(a: Args) -> u8 {
    let (dir, cfg) = match state_dir(&a) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let store = ImageStore::new(dir.join("images"));
    match a.command {
        ImageCommand::Build(mut b) => {
            if let Some(cfg) = &cfg {
                let from_pools = pool_packages(cfg, &b.name);
                if !from_pools.is_empty() {
                    eprintln!(
                        "packages the config's pools ask for: {}",
                        from_pools.join(", ")
                    );
                }
                b.packages.extend(from_pools);
                b.packages.sort();
                b.packages.dedup();
                let vm_pool = cfg.pools.iter().any(|p| {
                    p.backend == airlock_config::BackendKind::Microvm
                        && p.image.as_deref().and_then(|i| i.split('@').next())
                            == Some(b.name.as_str())
                });
                if vm_pool && !b.vm {
                    eprintln!("a microvm pool uses {}: making it bootable (--vm)", b.name);
                    b.vm = true;
                }
            }
            build(store, *b).await
        }
        ImageCommand::Ls => match store.list() {
            Ok(list) => {
                let used = in_use(&dir);
                print_table(&list, &used);
                0
            }
            Err(e) => fail(e),
        },
        ImageCommand::Inspect { reference } => {
            let r = tokio::task::spawn_blocking(move || {
                let m = store.resolve(&reference)?;
                let ok = store.verify(&m);
                Ok::<_, ImageError>((m, ok))
            })
            .await;
            match r {
                Ok(Ok((m, verified))) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&m).unwrap_or_else(|e| e.to_string())
                    );
                    match verified {
                        Ok(()) => {
                            eprintln!("{}: content matches its digest", m.short());
                            0
                        }
                        Err(e) => fail(e),
                    }
                }
                Ok(Err(e)) => fail(e),
                Err(e) => {
                    eprintln!("airlock image: {e}");
                    crate::EXIT_FAILURE
                }
            }
        }
        ImageCommand::Rm { reference } => match store.remove(&reference, &in_use(&dir)) {
            Ok(gone) => {
                for m in gone {
                    println!("removed {}", m.short());
                }
                0
            }
            Err(e) => fail(e),
        },
        ImageCommand::Gc => match store.gc(&in_use(&dir)) {
            Ok(gone) => {
                for m in &gone {
                    println!("removed {}", m.short());
                }
                println!("{} image(s) removed", gone.len());
                0
            }
            Err(e) => fail(e),
        },
    }
}

fn default_standin() -> Option<PathBuf> {
    beside_exe("airlock-runner")
}

/// `name` in `target/standin-bin` (where scripts/build-standin.sh puts the static builds) when
/// this program runs from `target/<profile>`, or next to this program.
pub fn beside_exe(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    // The static build first: the guest agent runs where there is no libc at all.
    [dir.join("../standin-bin").join(name), dir.join(name)]
        .into_iter()
        .find(|p| p.is_file())
}

async fn build(store: ImageStore, b: BuildArgs) -> u8 {
    let runner = match (&b.runner_version, &b.runner_sha256) {
        (Some(version), Some(sha256)) => {
            let from = match (&b.runner_tarball, &b.runner_url) {
                (Some(f), None) => TarballSource::File(f.clone()),
                (None, Some(u)) => TarballSource::Url(u.clone()),
                _ => {
                    eprintln!("airlock image build: --runner-version needs --runner-tarball FILE or --runner-url URL");
                    return crate::EXIT_INVALID;
                }
            };
            RunnerSource::ActionsRunner {
                version: version.clone(),
                sha256: sha256.to_lowercase(),
                from,
            }
        }
        (None, Some(_)) => {
            eprintln!("airlock image build: --runner-sha256 needs --runner-version");
            return crate::EXIT_INVALID;
        }
        _ => match b.standin.clone().or_else(default_standin) {
            Some(p) if p.is_file() => RunnerSource::Standin(p),
            Some(p) => {
                eprintln!("airlock image build: no stand-in runner at {}", p.display());
                return crate::EXIT_INVALID;
            }
            None => {
                eprintln!(
                    "airlock image build: no runner: give --runner-version, --runner-sha256 and \
                     --runner-tarball (GitHub's runner), or --standin PATH (the emulator's)"
                );
                return crate::EXIT_INVALID;
            }
        },
    };
    if let Some(h) = &b.runner_sha256 {
        if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
            eprintln!("airlock image build: --runner-sha256 must be 64 hex digits");
            return crate::EXIT_INVALID;
        }
    }
    let packages: Vec<String> = b.packages.into_iter().filter(|p| !p.is_empty()).collect();
    let vm = if b.vm {
        let Some(agent) = b.agent.clone().or_else(|| beside_exe("airlock-agent")) else {
            eprintln!(
                "airlock image build: --vm needs the guest agent: build it with \
                 scripts/build-standin.sh, or give --agent PATH"
            );
            return crate::EXIT_INVALID;
        };
        if !agent.is_file() {
            eprintln!("airlock image build: no guest agent at {}", agent.display());
            return crate::EXIT_INVALID;
        }
        Some(VmBuild {
            agent,
            kernel_packages: b
                .kernel_packages
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect(),
            docker: b.docker || packages.iter().any(|p| p == "docker.io"),
        })
    } else {
        None
    };
    let spec = BuildSpec {
        name: b.name,
        suite: b.suite,
        packages,
        runner,
        mirror: b.mirror,
        vm,
    };
    let started = std::time::Instant::now();
    let r = tokio::task::spawn_blocking(move || {
        let mut err = std::io::stderr();
        store.build(&spec, &mut |p| {
            let _ = match p {
                Progress::Step { n, of, what } => writeln!(
                    err,
                    "[{n}/{of}] {what} ({:.0}s)",
                    started.elapsed().as_secs_f64()
                ),
                Progress::Output(line) => writeln!(err, "      {line}"),
            };
        })
    })
    .await;
    match r {
        Ok(Ok(m)) => {
            println!(
                "built {} in {:.1}s: {} packages, {:.0} MiB, runner {} {}",
                m.short(),
                m.build_seconds,
                m.packages.len(),
                m.size_bytes as f64 / (1 << 20) as f64,
                m.runner.kind,
                m.runner.version
            );
            if let Some(vm) = &m.vm {
                let kernels: Vec<&str> = vm.kernels.iter().map(|k| k.version.as_str()).collect();
                println!(
                    "bootable as a microVM: kernel {}{}",
                    kernels.join(", "),
                    if vm.docker { ", with Docker" } else { "" }
                );
            }
            0
        }
        Ok(Err(e)) => fail(e),
        Err(e) => {
            eprintln!("airlock image build: {e}");
            crate::EXIT_FAILURE
        }
    }
}

fn print_table(list: &[Manifest], used: &HashSet<String>) {
    if list.is_empty() {
        println!("no images; build one with: airlock image build NAME");
        return;
    }
    println!(
        "{:<20} {:<19} {:<24} {:>8} {:<24} IN USE",
        "NAME", "DIGEST", "BUILT", "SIZE", "RUNNER"
    );
    for m in list {
        println!(
            "{:<20} {:<19} {:<24} {:>6}Mi {:<24} {}",
            m.name,
            &m.digest[..m.digest.len().min(19)],
            m.built_at,
            m.size_bytes >> 20,
            format!("{} {}", m.runner.kind, m.runner.version),
            if used.contains(&m.digest) { "yes" } else { "" }
        );
    }
}
