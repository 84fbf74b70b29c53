//! Runner images: root filesystems that sandboxes start from.
//!
//! `build` makes one from Debian packages with mmdebstrap (base packages plus the pool's extras),
//! adds an unprivileged `runner` user (uid 1001) and a runner program — GitHub's `actions-runner`
//! release, verified against its SHA-256 before anything else is done, or ghsim's stand-in for the
//! emulator — and writes a manifest (packages with versions, runner, build time, size, content
//! digest). The result lands under `images/NAME/<digest>/` by one atomic rename: a build that fails
//! or is interrupted leaves only a `.building-*` directory, which the next build removes.
//!
//! Images are immutable once landed: nothing here writes into a landed image, the digest covers
//! every path, mode, owner and byte, and `verify` recomputes it. This crate must never touch the
//! store or a sandbox; which digests are in use is the caller's to say.

mod digest;
mod sources;
pub mod vm;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

pub use digest::tree_digest;

/// The unprivileged user the runner runs as inside images.
pub const RUNNER_UID: u32 = 1001;
/// Where the stand-in runner is installed in emulator images.
pub const STANDIN_PATH: &str = "opt/airlock/airlock-runner";
/// Where GitHub's runner is unpacked.
pub const ACTIONS_RUNNER_DIR: &str = "home/runner/actions-runner";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image name {name:?}: use 1-40 of a-z, 0-9 and '-'")]
    BadName { name: String },
    #[error("invalid package name {name:?}")]
    BadPackage { name: String },
    #[error("{tool} is not installed (install it with: apt-get install {package})")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("{tool} failed: {detail}")]
    Tool { tool: &'static str, detail: String },
    #[error("checksum mismatch for {what}: expected sha256 {expected}, got {actual}")]
    Checksum {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot download {url}: {detail}")]
    Download { url: String, detail: String },
    #[error("no Debian package sources: {detail}; pass a mirror URL")]
    Sources { detail: String },
    #[error("no image matches {reference:?}")]
    NotFound { reference: String },
    #[error("{reference:?} matches several images; use NAME@DIGEST")]
    Ambiguous { reference: String },
    #[error("image {reference} is in use by a sandbox")]
    InUse { reference: String },
    #[error("corrupt manifest {path}: {detail}")]
    Manifest { path: PathBuf, detail: String },
    #[error("image {reference} was modified: its content digest is now {actual}")]
    Modified { reference: String, actual: String },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { what, path, source }
}

/// Which runner program goes into the image.
#[derive(Debug, Clone)]
pub enum RunnerSource {
    /// ghsim's stand-in (`airlock-runner`), for images used with the emulator.
    Standin(PathBuf),
    /// GitHub's `actions-runner-linux-x64-<version>.tar.gz`, checked against `sha256`.
    ActionsRunner {
        version: String,
        sha256: String,
        from: TarballSource,
    },
}

#[derive(Debug, Clone)]
pub enum TarballSource {
    File(PathBuf),
    Url(String),
}

#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub name: String,
    /// Debian suite, e.g. `bookworm`.
    pub suite: String,
    /// Extra packages (the pool's: `git`, `curl`, `build-essential`, …).
    pub packages: Vec<String>,
    pub runner: RunnerSource,
    /// A Debian mirror to use instead of the host's apt sources.
    pub mirror: Option<String>,
    /// Also make it bootable by the microVM backend.
    pub vm: Option<VmBuild>,
}

/// What makes an image bootable: kernels (Debian packages installed into it), the guest agent
/// that becomes each initramfs's `/init`, and whether jobs get a Docker engine.
#[derive(Debug, Clone)]
pub struct VmBuild {
    /// `airlock-agent`, a static binary.
    pub agent: PathBuf,
    /// Kernel packages to install; several give a host a kernel matrix (each gets its own
    /// initramfs). Empty: [`DEFAULT_KERNEL_PACKAGE`].
    pub kernel_packages: Vec<String>,
    /// Install `docker.io`, which the agent starts before the runner.
    pub docker: bool,
}

/// The kernel a VM image gets unless told otherwise: Debian's cloud kernel (virtio as modules).
pub const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
/// What every VM image also needs: `sudo` (the runner may become root inside its VM).
pub const VM_PACKAGES: &[&str] = &["sudo"];

/// A VM image's boot files, relative to the image's directory, each with its SHA-256 so that
/// `verify` covers them as the digest covers the root filesystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmManifest {
    /// Newest first.
    pub kernels: Vec<VmKernel>,
    /// The root filesystem as a raw ext4 disk (`vm/rootfs.ext4`), the backing of every job's
    /// copy-on-write disk.
    pub disk: String,
    pub disk_sha256: String,
    pub agent_sha256: String,
    /// `dockerd` is in the image and the agent starts it.
    pub docker: bool,
    /// [`vm::BOOT_FORMAT`] of the build that made these files (0: before it was recorded).
    #[serde(default)]
    pub boot_format: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmKernel {
    /// e.g. `6.1.0-28-cloud-amd64`.
    pub version: String,
    pub kernel: String,
    pub kernel_sha256: String,
    pub initramfs: String,
    pub initramfs_sha256: String,
    /// The ELF kernel for Firecracker (`vm/vmlinux-<version>`), when the bzImage's payload could
    /// be decompressed at build time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmlinux: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmlinux_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerInfo {
    /// `standin` or `actions-runner`.
    pub kind: String,
    pub version: String,
    /// SHA-256 of the runner program (stand-in) or tarball (actions-runner).
    pub sha256: String,
    /// Path of the runner program inside the image.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// `sha256:<hex>` of the root filesystem's content (see `tree_digest`).
    pub digest: String,
    pub suite: String,
    pub built_at: String,
    pub build_seconds: f64,
    pub size_bytes: u64,
    pub files: u64,
    pub extra_packages: Vec<String>,
    pub packages: Vec<Package>,
    pub runner: RunnerInfo,
    /// Present when the image boots as a microVM (`image build --vm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmManifest>,
}

impl Manifest {
    /// `NAME@sha256:<first 12 hex digits>`.
    pub fn short(&self) -> String {
        format!(
            "{}@{}",
            self.name,
            &self.digest[..self.digest.len().min(19)]
        )
    }
    fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }
}

/// What a build is doing, for progress output.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Step { n: u32, of: u32, what: String },
    Output(String),
}

#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

pub fn check_name(name: &str) -> Result<(), ImageError> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ImageError::BadName {
            name: name.to_string(),
        })
    }
}

fn check_package(p: &str) -> Result<(), ImageError> {
    // Debian package names: lower case letters, digits, + - . ; at least two characters.
    let ok = p.len() >= 2
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
        && p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ImageError::BadPackage {
            name: p.to_string(),
        })
    }
}

fn which(tool: &'static str, package: &'static str) -> Result<PathBuf, ImageError> {
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(ImageError::MissingTool { tool, package })
}

pub fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut f = std::fs::File::open(path).map_err(io("cannot read", path))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io("cannot read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Removes a half-made build directory unless it was landed.
struct Partial {
    dir: PathBuf,
    keep: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl ImageStore {
    pub fn new(root: PathBuf) -> ImageStore {
        ImageStore { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The root filesystem of a landed image.
    pub fn rootfs(&self, m: &Manifest) -> PathBuf {
        self.dir(m).join("rootfs")
    }

    /// A landed image's directory; its manifest's relative paths (`vm/…`) are below it.
    pub fn dir(&self, m: &Manifest) -> PathBuf {
        self.root.join(&m.name).join(m.hex())
    }

    /// The image's root filesystem with every owner moved up by `base` (uid and gid), for
    /// containers whose user namespace maps 0 inside to `base` outside. Made once per image and
    /// base by copying (`cp -a`) into a temporary directory that is renamed into place, under a
    /// file lock, so concurrent callers (threads or processes) and crashes never see a
    /// half-shifted tree; removed with the image.
    pub fn shifted_rootfs(&self, m: &Manifest, base: u32) -> Result<PathBuf, ImageError> {
        let dir = self.root.join(&m.name).join(m.hex());
        let done = dir.join(format!("rootfs-uid{base}"));
        if done.is_dir() {
            return Ok(done);
        }
        // One shifter per image and base, across threads and processes; the others wait and
        // then find it done.
        let _lock = lock_exclusive(&dir.join(format!(".lock-rootfs-uid{base}")))?;
        if done.is_dir() {
            return Ok(done);
        }
        // Left by a shifter that died (the lock is ours now, so nobody is using it).
        let tmp = dir.join(format!(".rootfs-uid{base}"));
        let _ = std::fs::remove_dir_all(&tmp);
        let out = Command::new("cp")
            .arg("-a")
            .arg(self.rootfs(m))
            .arg(&tmp)
            .output()
            .map_err(io("cannot run cp for", &tmp))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(ImageError::Tool {
                tool: "cp",
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        if let Err(e) = shift_tree(&tmp, base) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &done).map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            io("cannot rename", &done)(e)
        })?;
        Ok(done)
    }

    /// Removes what interrupted builds left behind: `.building-<pid>-…` directories whose
    /// process is gone (a build still running in another process is left alone). Returns how
    /// many.
    pub fn clean_partial(&self) -> Result<usize, ImageError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => {
                return Err(ImageError::Io {
                    what: "cannot list",
                    path: self.root.clone(),
                    source: e,
                })
            }
        };
        let mut n = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(".building-") else {
                continue;
            };
            let owner = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
            let live = owner.is_some_and(|pid| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            });
            if !live {
                std::fs::remove_dir_all(e.path()).map_err(io("cannot remove", &e.path()))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The newest build of `spec.name`, building it first if there is none (or, for a VM
    /// image, if the newest was made with another agent or without `vm`). Builders of one
    /// name wait for each other (an exclusive lock on `images/.lock-NAME`), so concurrent callers
    /// — tests, `airlock demo` runs — build once and share the result.
    pub fn build_once(
        &self,
        spec: &BuildSpec,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Manifest, ImageError> {
        check_name(&spec.name)?;
        std::fs::create_dir_all(&self.root).map_err(io("cannot create", &self.root))?;
        let _lock = lock_exclusive(&self.root.join(format!(".lock-{}", spec.name)))?;
        match self.resolve(&spec.name) {
            // A build for a VM must be bootable, with the agent asked for.
            Ok(m) if !self.boots_as(&m, spec)? => self.build(spec, progress),
            Ok(m) => Ok(m),
            Err(ImageError::NotFound { .. }) => self.build(spec, progress),
            Err(e) => Err(e),
        }
    }

    /// Whether `m` boots as `spec` asks: not a VM image, or one made with the same agent by the
    /// current boot-file format.
    fn boots_as(&self, m: &Manifest, spec: &BuildSpec) -> Result<bool, ImageError> {
        Ok(match (&spec.vm, &m.vm) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(want), Some(have)) => {
                have.boot_format == vm::BOOT_FORMAT
                    && sha256_file(&want.agent)? == have.agent_sha256
            }
        })
    }

    /// Builds an image. Inputs are checked first (name, packages, runner checksum), so a bad
    /// input fails in seconds, before the long bootstrap.
    pub fn build(
        &self,
        spec: &BuildSpec,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Manifest, ImageError> {
        let started = Instant::now();
        check_name(&spec.name)?;
        for p in &spec.packages {
            check_package(p)?;
        }
        let mut include = spec.packages.clone();
        if let Some(vm) = &spec.vm {
            for p in &vm.kernel_packages {
                check_package(p)?;
            }
            which("mkfs.ext4", "e2fsprogs")?;
            let meta = std::fs::metadata(&vm.agent)
                .map_err(io("cannot read the guest agent", &vm.agent))?;
            if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                return Err(ImageError::Io {
                    what: "not an executable file:",
                    path: vm.agent.clone(),
                    source: std::io::Error::other("not executable"),
                });
            }
            if !is_static_elf(&vm.agent)? {
                return Err(ImageError::Io {
                    what: "the guest agent must be a static executable (it runs before any libc exists), not",
                    path: vm.agent.clone(),
                    source: std::io::Error::other("dynamically linked or not ELF"),
                });
            }
            if vm.kernel_packages.is_empty() {
                include.push(DEFAULT_KERNEL_PACKAGE.into());
            }
            include.extend(vm.kernel_packages.iter().cloned());
            include.extend(VM_PACKAGES.iter().map(|p| p.to_string()));
            if vm.docker {
                // docker.io brings containerd, runc, tini and iptables; kmod comes with the
                // kernel (dockerd's modprobe). Of its Recommends (mmdebstrap installs none),
                // ca-certificates lets dockerd pull over TLS and xz-utils lets it load `.tar.xz`.
                include.extend(["docker.io", "ca-certificates", "xz-utils"].map(String::from));
            }
            include.sort();
            include.dedup();
        }
        let mmdebstrap = which("mmdebstrap", "mmdebstrap")?;
        let dpkg_query = which("dpkg-query", "dpkg")?;
        let tar = which("tar", "tar")?;
        std::fs::create_dir_all(&self.root).map_err(io("cannot create", &self.root))?;
        let removed = self.clean_partial()?;
        if removed > 0 {
            progress(Progress::Output(format!(
                "removed {removed} interrupted build(s)"
            )));
        }
        let suffix: u32 = rand::random();
        let partial = Partial {
            dir: self.root.join(format!(
                ".building-{}-{}-{suffix:08x}",
                std::process::id(),
                spec.name
            )),
            keep: false,
        };
        std::fs::create_dir_all(&partial.dir).map_err(io("cannot create", &partial.dir))?;
        let rootfs = partial.dir.join("rootfs");
        let steps: u32 = if spec.vm.is_some() { 6 } else { 5 };

        progress(Progress::Step {
            n: 1,
            of: steps,
            what: "checking the runner".into(),
        });
        let (runner_file, runner_info) = match &spec.runner {
            RunnerSource::Standin(p) => {
                let meta =
                    std::fs::metadata(p).map_err(io("cannot read the stand-in runner", p))?;
                if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                    return Err(ImageError::Io {
                        what: "not an executable file:",
                        path: p.clone(),
                        source: std::io::Error::other("not executable"),
                    });
                }
                let sum = sha256_file(p)?;
                (
                    p.clone(),
                    RunnerInfo {
                        kind: "standin".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        sha256: sum,
                        path: format!("/{STANDIN_PATH}"),
                    },
                )
            }
            RunnerSource::ActionsRunner {
                version,
                sha256,
                from,
            } => {
                let file = match from {
                    TarballSource::File(p) => p.clone(),
                    TarballSource::Url(url) => {
                        let dest = partial.dir.join("actions-runner.tar.gz");
                        download(url, &dest, progress)?;
                        dest
                    }
                };
                let actual = sha256_file(&file)?;
                let expected = sha256.trim().to_ascii_lowercase();
                if actual != expected {
                    return Err(ImageError::Checksum {
                        what: file.display().to_string(),
                        expected,
                        actual,
                    });
                }
                (
                    file,
                    RunnerInfo {
                        kind: "actions-runner".into(),
                        version: version.clone(),
                        sha256: actual,
                        path: format!("/{ACTIONS_RUNNER_DIR}/run.sh"),
                    },
                )
            }
        };

        progress(Progress::Step {
            n: 2,
            of: steps,
            what: format!("bootstrapping Debian {} with mmdebstrap", spec.suite),
        });
        let sources = match &spec.mirror {
            Some(m) => sources::for_mirror(m, &spec.suite),
            None => sources::from_host(Path::new("/etc/apt"), &spec.suite)?,
        };
        let mut cmd = Command::new(&mmdebstrap);
        cmd.arg("--variant=minbase")
            .arg("--mode=root")
            .arg("--format=directory");
        if !include.is_empty() {
            cmd.arg(format!("--include={}", include.join(",")));
        }
        cmd.arg(&spec.suite).arg(&rootfs).arg("-");
        run_streaming("mmdebstrap", cmd, Some(sources.as_bytes()), progress)?;

        progress(Progress::Step {
            n: 3,
            of: steps,
            what: "adding the runner user and program".into(),
        });
        add_runner_user(&rootfs)?;
        match &spec.runner {
            RunnerSource::Standin(_) => {
                let dest = rootfs.join(STANDIN_PATH);
                let parent = dest.parent().expect("has a parent");
                std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
                std::fs::copy(&runner_file, &dest)
                    .map_err(io("cannot copy the runner to", &dest))?;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
                    .map_err(io("cannot chmod", &dest))?;
            }
            RunnerSource::ActionsRunner { .. } => {
                let dest = rootfs.join(ACTIONS_RUNNER_DIR);
                std::fs::create_dir_all(&dest).map_err(io("cannot create", &dest))?;
                let mut t = Command::new(&tar);
                t.arg("-xzf")
                    .arg(&runner_file)
                    .arg("-C")
                    .arg(&dest)
                    .arg("--no-same-owner");
                run_streaming("tar", t, None, progress)?;
                chown_tree(&dest, RUNNER_UID)?;
            }
        }

        progress(Progress::Step {
            n: 4,
            of: steps,
            what: "listing packages".into(),
        });
        let out = Command::new(&dpkg_query)
            .arg(format!(
                "--admindir={}",
                rootfs.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f=${Package}\t${Version}\n"])
            .output()
            .map_err(|e| ImageError::Tool {
                tool: "dpkg-query",
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(ImageError::Tool {
                tool: "dpkg-query",
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let mut packages: Vec<Package> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(n, v)| Package {
                name: n.into(),
                version: v.into(),
            })
            .collect();
        packages.sort_by(|a, b| a.name.cmp(&b.name));

        let vm = match &spec.vm {
            None => None,
            Some(v) => {
                progress(Progress::Step {
                    n: 5,
                    of: steps,
                    what: "making the VM boot files (kernels, initramfs with the agent, ext4 disk)"
                        .into(),
                });
                Some(vm_files(&rootfs, &partial.dir, v)?)
            }
        };

        progress(Progress::Step {
            n: steps,
            of: steps,
            what: "computing the content digest".into(),
        });
        let sum = tree_digest(&rootfs)?;
        let manifest = Manifest {
            name: spec.name.clone(),
            digest: format!("sha256:{}", image_digest(&sum.digest, vm.as_ref())),
            suite: spec.suite.clone(),
            built_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            build_seconds: started.elapsed().as_secs_f64(),
            size_bytes: sum.bytes,
            files: sum.files,
            extra_packages: spec.packages.clone(),
            packages,
            runner: runner_info,
            vm,
        };
        let mpath = partial.dir.join("manifest.json");
        let mut f = std::fs::File::create(&mpath).map_err(io("cannot write", &mpath))?;
        f.write_all(
            serde_json::to_string_pretty(&manifest)
                .expect("manifests serialise")
                .as_bytes(),
        )
        .and_then(|_| f.sync_all())
        .map_err(io("cannot write", &mpath))?;
        let _ = std::fs::remove_file(partial.dir.join("actions-runner.tar.gz"));

        // Land it: one rename. The same content built twice lands once.
        let name_dir = self.root.join(&spec.name);
        std::fs::create_dir_all(&name_dir).map_err(io("cannot create", &name_dir))?;
        let dest = name_dir.join(manifest.hex());
        if dest.exists() {
            progress(Progress::Output(format!(
                "identical to the existing {}",
                manifest.short()
            )));
            return self.load(&dest.join("manifest.json"));
        }
        let mut partial = partial;
        std::fs::rename(&partial.dir, &dest).map_err(io("cannot land the image at", &dest))?;
        partial.keep = true;
        Ok(manifest)
    }

    fn load(&self, path: &Path) -> Result<Manifest, ImageError> {
        let text = std::fs::read_to_string(path).map_err(io("cannot read", path))?;
        serde_json::from_str(&text).map_err(|e| ImageError::Manifest {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
    }

    /// Every landed image, grouped by name, newest first within a name.
    pub fn list(&self) -> Result<Vec<Manifest>, ImageError> {
        let mut out = Vec::new();
        let names = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(ImageError::Io {
                    what: "cannot list",
                    path: self.root.clone(),
                    source: e,
                })
            }
        };
        for n in names.flatten() {
            let name = n.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !n.path().is_dir() {
                continue;
            }
            for d in std::fs::read_dir(n.path())
                .map_err(io("cannot list", &n.path()))?
                .flatten()
            {
                let m = d.path().join("manifest.json");
                if m.is_file() {
                    out.push(self.load(&m)?);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(b.built_at.cmp(&a.built_at)));
        Ok(out)
    }

    /// `NAME` (the newest build), `NAME@sha256:HEX…` or `NAME@HEX…` (a digest prefix).
    pub fn resolve(&self, reference: &str) -> Result<Manifest, ImageError> {
        let all = self.list()?;
        let (name, digest) = match reference.split_once('@') {
            Some((n, d)) => (n, Some(d.strip_prefix("sha256:").unwrap_or(d))),
            None => (reference, None),
        };
        let mut hits: Vec<&Manifest> = all
            .iter()
            .filter(|m| m.name == name)
            .filter(|m| digest.is_none_or(|d| !d.is_empty() && m.hex().starts_with(d)))
            .collect();
        match (hits.len(), digest) {
            (0, _) => Err(ImageError::NotFound {
                reference: reference.into(),
            }),
            (1, _) | (_, None) => Ok(hits.remove(0).clone()),
            _ => Err(ImageError::Ambiguous {
                reference: reference.into(),
            }),
        }
    }

    /// Recomputes an image's digest, and its VM boot files' checksums; an image changed since it
    /// landed is an error.
    pub fn verify(&self, m: &Manifest) -> Result<(), ImageError> {
        let sum = tree_digest(&self.rootfs(m))?;
        let actual = format!("sha256:{}", image_digest(&sum.digest, m.vm.as_ref()));
        if actual != m.digest {
            return Err(ImageError::Modified {
                reference: m.short(),
                actual,
            });
        }
        if let Some(vm) = &m.vm {
            let dir = self.dir(m);
            let mut files = vec![(&vm.disk, &vm.disk_sha256)];
            for k in &vm.kernels {
                files.push((&k.kernel, &k.kernel_sha256));
                files.push((&k.initramfs, &k.initramfs_sha256));
                if let (Some(p), Some(sum)) = (&k.vmlinux, &k.vmlinux_sha256) {
                    files.push((p, sum));
                }
            }
            for (path, want) in files {
                let actual = sha256_file(&dir.join(path))?;
                if &actual != want {
                    return Err(ImageError::Modified {
                        reference: format!("{} ({path})", m.short()),
                        actual: format!("sha256:{actual}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Removes one image (a `NAME@DIGEST` reference) or every build of a name (`NAME`). Digests
    /// in `in_use` are never removed: the whole call fails before removing anything.
    pub fn remove(
        &self,
        reference: &str,
        in_use: &HashSet<String>,
    ) -> Result<Vec<Manifest>, ImageError> {
        let victims: Vec<Manifest> = if reference.contains('@') {
            vec![self.resolve(reference)?]
        } else {
            let v: Vec<Manifest> = self
                .list()?
                .into_iter()
                .filter(|m| m.name == reference)
                .collect();
            if v.is_empty() {
                return Err(ImageError::NotFound {
                    reference: reference.into(),
                });
            }
            v
        };
        if let Some(m) = victims.iter().find(|m| in_use.contains(&m.digest)) {
            return Err(ImageError::InUse {
                reference: m.short(),
            });
        }
        for m in &victims {
            self.delete(m)?;
        }
        Ok(victims)
    }

    /// Removes every build that is neither the newest of its name nor in use.
    pub fn gc(&self, in_use: &HashSet<String>) -> Result<Vec<Manifest>, ImageError> {
        self.clean_partial()?;
        let mut removed = Vec::new();
        let mut seen = HashSet::new();
        for m in self.list()? {
            let newest = seen.insert(m.name.clone());
            if !newest && !in_use.contains(&m.digest) {
                self.delete(&m)?;
                removed.push(m);
            }
        }
        Ok(removed)
    }

    fn delete(&self, m: &Manifest) -> Result<(), ImageError> {
        let dir = self.root.join(&m.name).join(m.hex());
        // Move aside first so a crash never leaves a half-deleted image that still looks landed.
        let trash = self.root.join(format!(
            ".building-{}-deleting-{}",
            std::process::id(),
            m.hex()
        ));
        std::fs::rename(&dir, &trash).map_err(io("cannot remove", &dir))?;
        std::fs::remove_dir_all(&trash).map_err(io("cannot remove", &trash))?;
        let name_dir = self.root.join(&m.name);
        if std::fs::read_dir(&name_dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
        {
            let _ = std::fs::remove_dir(&name_dir);
        }
        Ok(())
    }
}

/// Adds the `runner` user and group (uid/gid 1001) with a home directory only it can enter.
/// An image's digest: its root filesystem's (`tree`), and for a VM image also what boots it (the
/// agent, each kernel and initramfs), so that rebuilding with another agent or kernel lands as a
/// new image instead of being taken for the old one. The ext4 disk is left out: it is made from
/// the tree (its bytes differ between builds by UUIDs and times, not by content), and `verify`
/// checks it against its own checksum.
fn image_digest(tree: &str, vm: Option<&VmManifest>) -> String {
    let Some(vm) = vm else {
        return tree.to_string();
    };
    let mut h = sha2::Sha256::new();
    h.update(format!(
        "rootfs {tree}\nagent {}\ndocker {}\n",
        vm.agent_sha256, vm.docker
    ));
    for k in &vm.kernels {
        h.update(format!(
            "kernel {} {} {}\n",
            k.version, k.kernel_sha256, k.initramfs_sha256
        ));
        if let Some(sum) = &k.vmlinux_sha256 {
            h.update(format!("vmlinux {} {sum}\n", k.version));
        }
    }
    hex::encode(h.finalize())
}

/// Whether `p` is a 64-bit ELF executable without a program interpreter (`PT_INTERP`).
fn is_static_elf(p: &Path) -> Result<bool, ImageError> {
    let b = std::fs::read(p).map_err(io("cannot read", p))?;
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|x| u16::from_le_bytes([x[0], x[1]]) as usize)
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|x| u64::from_le_bytes(x.try_into().expect("8 bytes")) as usize)
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return Ok(false);
    }
    let (Some(phoff), Some(size), Some(n)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return Ok(false);
    };
    const PT_INTERP: u32 = 3;
    for i in 0..n {
        let Some(h) = b.get(phoff + i * size..phoff + i * size + 4) else {
            return Ok(false);
        };
        if u32::from_le_bytes(h.try_into().expect("4 bytes")) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes `partial/vm/`: per kernel its `vmlinuz` and initramfs, and the ext4 disk; returns their
/// manifest with checksums. The paths it records are relative to the image's directory.
fn vm_files(rootfs: &Path, partial: &Path, v: &VmBuild) -> Result<VmManifest, ImageError> {
    let out = partial.join("vm");
    let boot = vm::build_boot_files(rootfs, &v.agent, &out).map_err(|e| ImageError::Tool {
        tool: "boot files",
        detail: e.to_string(),
    })?;
    let rel = |p: &Path| -> String {
        p.strip_prefix(partial)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let mut kernels = Vec::new();
    for k in &boot.kernels {
        kernels.push(VmKernel {
            version: k.version.clone(),
            kernel: rel(&k.kernel),
            kernel_sha256: sha256_file(&k.kernel)?,
            initramfs: rel(&k.initramfs),
            initramfs_sha256: sha256_file(&k.initramfs)?,
            vmlinux: k.vmlinux.as_deref().map(rel),
            vmlinux_sha256: k.vmlinux.as_deref().map(sha256_file).transpose()?,
        });
    }
    // Read-only from here on: a job's writes go to its own copy-on-write layer.
    for p in std::iter::once(&boot.rootfs).chain(boot.kernels.iter().flat_map(|k| {
        [Some(&k.kernel), Some(&k.initramfs), k.vmlinux.as_ref()]
            .into_iter()
            .flatten()
    })) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o444))
            .map_err(io("cannot chmod", p))?;
    }
    Ok(VmManifest {
        kernels,
        disk: rel(&boot.rootfs),
        disk_sha256: sha256_file(&boot.rootfs)?,
        agent_sha256: sha256_file(&v.agent)?,
        docker: v.docker,
        boot_format: vm::BOOT_FORMAT,
    })
}

fn add_runner_user(rootfs: &Path) -> Result<(), ImageError> {
    let append = |file: &str, line: &str| -> Result<(), ImageError> {
        let p = rootfs.join(file);
        let text = std::fs::read_to_string(&p).map_err(io("cannot read", &p))?;
        if text.lines().any(|l| l.starts_with("runner:")) {
            return Ok(());
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .map_err(io("cannot write", &p))?;
        f.write_all(format!("{line}\n").as_bytes())
            .map_err(io("cannot write", &p))
    };
    append(
        "etc/passwd",
        &format!("runner:x:{RUNNER_UID}:{RUNNER_UID}:GitHub Actions runner:/home/runner:/bin/bash"),
    )?;
    append("etc/group", &format!("runner:x:{RUNNER_UID}:"))?;
    append("etc/shadow", "runner:!:19000:0:99999:7:::")?;
    let home = rootfs.join("home/runner");
    std::fs::create_dir_all(&home).map_err(io("cannot create", &home))?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o750))
        .map_err(io("cannot chmod", &home))?;
    chown_tree(&home, RUNNER_UID)
}

/// Waits for an exclusive lock on `path` (created if missing), held until the result drops.
/// Separate opens conflict, so it excludes threads of one process as well as other processes.
fn lock_exclusive(path: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, ImageError> {
    let file = std::fs::File::create(path).map_err(io("cannot create", path))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
        ImageError::Io {
            what: "cannot lock",
            path: path.to_path_buf(),
            source: e.into(),
        }
    })
}

/// Adds `base` to the owner and group of every path under `dir` (ids must be below 65536).
fn shift_tree(dir: &Path, base: u32) -> Result<(), ImageError> {
    rechown_tree(dir, |p, uid, gid| {
        if uid >= 65536 || gid >= 65536 {
            return Err(ImageError::Tool {
                tool: "shift",
                detail: format!("{} is owned by {uid}:{gid}, outside 0-65535", p.display()),
            });
        }
        Ok((uid + base, gid + base))
    })
}

/// Gives every path under `dir` to `uid` (and the group of the same number).
fn chown_tree(dir: &Path, uid: u32) -> Result<(), ImageError> {
    rechown_tree(dir, |_, _, _| Ok((uid, uid)))
}

/// Changes the owner of every path under `dir`, not following symlinks, to what `owner` says
/// for its current owner; each inode once (hard links), set-id bits (which chown clears) restored.
fn rechown_tree(
    dir: &Path,
    owner: impl Fn(&Path, u32, u32) -> Result<(u32, u32), ImageError>,
) -> Result<(), ImageError> {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = HashSet::new();
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).map_err(io("cannot stat", &p))?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
            continue;
        }
        let (uid, gid) = owner(&p, meta.uid(), meta.gid())?;
        nix::unistd::fchownat(
            None,
            &p,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| ImageError::Io {
            what: "cannot chown",
            path: p.clone(),
            source: e.into(),
        })?;
        if !meta.file_type().is_symlink() && meta.mode() & 0o6000 != 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io("cannot chmod", &p))?;
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p)
                .map_err(io("cannot list", &p))?
                .flatten()
            {
                stack.push(e.path());
            }
        }
    }
    Ok(())
}

/// Runs a tool, passing each output line to `progress`; on failure the last lines are the error.
fn run_streaming(
    tool: &'static str,
    mut cmd: Command,
    stdin: Option<&[u8]>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), ImageError> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| ImageError::Tool {
        tool,
        detail: format!("cannot start: {e}"),
    })?;
    if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(data).map_err(|e| ImageError::Tool {
            tool,
            detail: format!("writing its input: {e}"),
        })?;
    }
    let out = child.stdout.take().expect("piped");
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(out).read_to_string(&mut s);
        s
    });
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(child.stderr.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        progress(Progress::Output(line.clone()));
        tail.push(line);
        if tail.len() > 15 {
            tail.remove(0);
        }
    }
    let stdout = out_thread.join().unwrap_or_default();
    for line in stdout.lines() {
        progress(Progress::Output(line.to_string()));
    }
    let status = child.wait().map_err(|e| ImageError::Tool {
        tool,
        detail: e.to_string(),
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(ImageError::Tool {
            tool,
            detail: format!("{status}; last output:\n{}", tail.join("\n")),
        })
    }
}

fn download(url: &str, dest: &Path, progress: &mut dyn FnMut(Progress)) -> Result<(), ImageError> {
    let err = |detail: String| ImageError::Download {
        url: url.into(),
        detail,
    };
    let mut resp = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(600))
        .build()
        .map_err(|e| err(e.to_string()))?
        .get(url)
        .send()
        .and_then(|r| r.error_for_status())
        .map_err(|e| err(e.to_string()))?;
    let total = resp.content_length();
    let mut f = std::fs::File::create(dest).map_err(io("cannot write", dest))?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut got, mut shown) = (0u64, 0u64);
    loop {
        let n = resp.read(&mut buf).map_err(|e| err(e.to_string()))?;
        if n == 0 {
            break;
        }
        f.write_all(&buf[..n]).map_err(io("cannot write", dest))?;
        got += n as u64;
        if got - shown > 8 << 20 {
            shown = got;
            progress(Progress::Output(match total {
                Some(t) => format!("downloaded {} of {} MiB", got >> 20, t >> 20),
                None => format!("downloaded {} MiB", got >> 20),
            }));
        }
    }
    Ok(())
}
