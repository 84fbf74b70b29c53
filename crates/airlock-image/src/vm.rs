//! Boot files for the microVM backend: per kernel a `vmlinuz` and an initramfs holding
//! `airlock-agent` as `/init`, and one ext4 disk image of the root filesystem.
//!
//! The input is a Debian root filesystem into which `linux-image-cloud-amd64` was installed (so it
//! has `/boot/vmlinuz-<ver>` and `/lib/modules/<ver>`). Debian builds virtio as modules, so each
//! initramfs carries the modules the agent needs before it can see its disks and network
//! ([`INITRAMFS_MODULES`], with their dependencies from `modules.dep`, minus what
//! `modules.builtin` says is built in, decompressed if the package ships them compressed) and
//! `lib/modules/airlock.order`, the order the agent loads them in.
//!
//! The initramfs is an uncompressed newc cpio written here (about 1.5 MiB): gzip (0.5 MiB) made no
//! measurable difference to the time the agent starts under TCG (medians 1.10 s and 0.99 s over
//! six boots each, noise about 0.15 s), and the workspace has no deflate crate.
//!
//! This module must never write into `rootfs` (images are immutable) and must never put anything
//! job-specific (least of all a secret) into the files it makes: they are shared by every job
//! that boots the image, and the kernel command line (`airlock_agent::KERNEL_CMDLINE`) is the same
//! for all of them.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Module names the agent needs (with dependencies). ext4 is built into Debian's cloud kernel; it
/// is listed so a kernel that builds it as a module (Debian's generic one) still works, and so is
/// `crc32c_generic`, which ext4 and jbd2 need but `modules.dep` does not name (a soft dependency
/// on the crypto alias `crc32c`: without it their mount fails with ENOENT). `virtio_mmio` finds
/// QEMU's and Firecracker's devices, `virtio_pci` Cloud Hypervisor's.
pub const INITRAMFS_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "crc32c_generic",
    "ext4",
    "overlay",
];

/// The version of what [`build_boot_files`] makes (the module list, the files per kernel): an
/// image whose manifest records an older one is rebuilt by `build_once`. 2: `vmlinux` per
/// kernel, `virtio_pci` and `crc32c_generic` in the initramfs.
pub const BOOT_FORMAT: u32 = 2;

mod kernel;
pub use kernel::{bzimage_version, extract_vmlinux};

/// Where the agent finds the load order inside the initramfs.
pub const ORDER_FILE: &str = "lib/modules/airlock.order";

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("no kernel in {rootfs}: expected boot/vmlinuz-<version> with lib/modules/<version>/modules.dep (install linux-image-cloud-amd64)")]
    NoKernel { rootfs: PathBuf },
    #[error("kernel {version} has no module {name} (not in modules.dep nor modules.builtin)")]
    ModuleNotFound { version: String, name: String },
    #[error("{path}:{line}: expected \"module.ko: dependency.ko ...\"")]
    BadModulesDep { path: PathBuf, line: usize },
    #[error("{tool} is not installed (install it with: apt-get install {package})")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("{tool} failed on {path}: {detail}")]
    Tool {
        tool: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
    let path = path.to_path_buf();
    move |source| VmError::Io { what, path, source }
}

/// One bootable kernel and its initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFiles {
    /// e.g. `6.1.0-57-cloud-amd64`.
    pub version: String,
    /// `out/vmlinuz-<version>`.
    pub kernel: PathBuf,
    /// `out/initramfs-<version>.cpio` (newc, uncompressed).
    pub initramfs: PathBuf,
    /// `out/vmlinux-<version>`: the ELF kernel inside the bzImage, for Firecracker (which loads
    /// no bzImage on x86_64). `None` when the payload's compression is one this host cannot undo.
    pub vmlinux: Option<PathBuf>,
    /// The modules in the initramfs, in load order (paths relative to `/lib/modules/<version>`).
    pub modules: Vec<String>,
}

/// What [`build_boot_files`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// Newest version first.
    pub kernels: Vec<KernelFiles>,
    /// `out/rootfs.ext4`: the root filesystem as a raw ext4 image (use it as a qcow2 backing file).
    pub rootfs: PathBuf,
}

/// Writes the boot files for `rootfs` into `out` (created if missing): for every installed kernel
/// `vmlinuz-<ver>` and `initramfs-<ver>.cpio` with `agent` as `/init`, and `rootfs.ext4`.
pub fn build_boot_files(rootfs: &Path, agent: &Path, out: &Path) -> Result<BootFiles, VmError> {
    let kernels = find_kernels(rootfs)?;
    if kernels.is_empty() {
        return Err(VmError::NoKernel {
            rootfs: rootfs.to_path_buf(),
        });
    }
    fs::create_dir_all(out).map_err(io("create", out))?;
    let agent_bytes = fs::read(agent).map_err(io("read", agent))?;
    let mut built = Vec::new();
    for (version, vmlinuz) in kernels {
        let moddir = rootfs.join("lib/modules").join(&version);
        let modules = resolve_modules(&moddir, &version, INITRAMFS_MODULES)?;
        let kernel = out.join(format!("vmlinuz-{version}"));
        copy_atomic(&vmlinuz, &kernel)?;
        let initramfs = out.join(format!("initramfs-{version}.cpio"));
        write_initramfs(&initramfs, &agent_bytes, &moddir, &version, &modules)?;
        let vmlinux = extract_vmlinux(&kernel, &out.join(format!("vmlinux-{version}")))?;
        built.push(KernelFiles {
            version,
            kernel,
            initramfs,
            vmlinux,
            modules: modules.iter().map(|m| m.installed.clone()).collect(),
        });
    }
    let disk = out.join("rootfs.ext4");
    make_ext4(rootfs, &disk)?;
    Ok(BootFiles {
        kernels: built,
        rootfs: disk,
    })
}

/// `(version, vmlinuz path)` for every kernel with its modules installed, newest first.
pub fn find_kernels(rootfs: &Path) -> Result<Vec<(String, PathBuf)>, VmError> {
    let boot = rootfs.join("boot");
    let mut found = Vec::new();
    let entries = match fs::read_dir(&boot) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io("read", &boot)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("read", &boot))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(version) = name.strip_prefix("vmlinuz-") else {
            continue;
        };
        let has_modules = rootfs
            .join("lib/modules")
            .join(version)
            .join("modules.dep")
            .is_file();
        if has_modules && entry.path().is_file() {
            found.push((version.to_string(), entry.path()));
        }
    }
    found.sort_by(|a, b| version_cmp(&b.0, &a.0));
    Ok(found)
}

/// Compares kernel versions by their numeric runs (`6.1.0-10` after `6.1.0-9`), then as text.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    fn parts(s: &str) -> Vec<Result<u64, String>> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut digits = false;
        for c in s.chars() {
            if c.is_ascii_digit() != digits && !cur.is_empty() {
                out.push(take(&mut cur, digits));
            }
            digits = c.is_ascii_digit();
            cur.push(c);
        }
        if !cur.is_empty() {
            out.push(take(&mut cur, digits));
        }
        out
    }
    fn take(cur: &mut String, digits: bool) -> Result<u64, String> {
        let s = std::mem::take(cur);
        if digits {
            s.parse().map_err(|_| s)
        } else {
            Err(s)
        }
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let o = match (x, y) {
            (Ok(x), Ok(y)) => x.cmp(y),
            (Ok(_), Err(_)) => Ordering::Greater,
            (Err(_), Ok(_)) => Ordering::Less,
            (Err(x), Err(y)) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len()).then_with(|| a.cmp(b))
}

/// A module to put into the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    /// As shipped, relative to the module directory (may end in `.xz`, `.zst` or `.gz`).
    pub shipped: String,
    /// Where it goes in the initramfs, relative to the module directory: always a plain `.ko`.
    pub installed: String,
}

/// `kernel/fs/overlayfs/overlay.ko.xz` -> `overlay`; dashes and underscores are the same to
/// the kernel, so names are normalised to underscores.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let base = ["ko.xz", "ko.zst", "ko.gz", "ko"]
        .iter()
        .find_map(|ext| file.strip_suffix(&format!(".{ext}")))
        .unwrap_or(file);
    base.replace('-', "_")
}

fn plain_ko(path: &str) -> String {
    for ext in [".xz", ".zst", ".gz"] {
        if let Some(p) = path.strip_suffix(ext) {
            return p.to_string();
        }
    }
    path.to_string()
}

/// `wanted` module names and their dependencies, dependencies first, from the module directory's
/// `modules.dep`; names `modules.builtin` lists are skipped (they need no loading).
pub fn resolve_modules(
    moddir: &Path,
    version: &str,
    wanted: &[&str],
) -> Result<Vec<ModuleFile>, VmError> {
    let dep_path = moddir.join("modules.dep");
    let text = fs::read_to_string(&dep_path).map_err(io("read", &dep_path))?;
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((module, rest)) = line.split_once(':') else {
            return Err(VmError::BadModulesDep {
                path: dep_path,
                line: i + 1,
            });
        };
        let module = module.trim().to_string();
        by_name.insert(module_name(&module), module.clone());
        deps.insert(
            module,
            rest.split_whitespace().map(str::to_string).collect(),
        );
    }
    let builtin_path = moddir.join("modules.builtin");
    let builtin: HashSet<String> = match fs::read_to_string(&builtin_path) {
        Ok(t) => t.lines().map(module_name).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
        Err(e) => return Err(io("read", &builtin_path)(e)),
    };

    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    // Iterative DFS, post-order: a module is emitted after all of its dependencies.
    fn visit(
        m: &str,
        deps: &BTreeMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(m.to_string()) {
            return;
        }
        if let Some(ds) = deps.get(m) {
            // depmod lists dependencies so that the last must load first.
            for d in ds.iter().rev() {
                visit(d, deps, seen, order);
            }
        }
        order.push(m.to_string());
    }
    for name in wanted {
        let name = name.replace('-', "_");
        match by_name.get(&name) {
            Some(path) => visit(path, &deps, &mut seen, &mut order),
            None if builtin.contains(&name) => {}
            None => {
                return Err(VmError::ModuleNotFound {
                    version: version.to_string(),
                    name,
                })
            }
        }
    }
    Ok(order
        .into_iter()
        .filter(|m| !builtin.contains(&module_name(m)))
        .map(|m| ModuleFile {
            installed: plain_ko(&m),
            shipped: m,
        })
        .collect())
}

/// A module's bytes as a plain `.ko`, decompressing with the matching tool if needed.
fn module_bytes(path: &Path) -> Result<Vec<u8>, VmError> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some(("xz", "xz-utils"))
    } else if name.ends_with(".zst") {
        Some(("zstd", "zstd"))
    } else if name.ends_with(".gz") {
        Some(("gzip", "gzip"))
    } else {
        None
    };
    let Some((tool, package)) = tool else {
        return fs::read(path).map_err(io("read", path));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VmError::MissingTool { tool, package },
            _ => io("run decompressor on", path)(e),
        })?;
    if !out.status.success() {
        return Err(VmError::Tool {
            tool,
            path: path.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// A newc ("070701") cpio archive writer; entries are owned by root with mtime 0, so the same
/// inputs give the same bytes.
struct Cpio<W: Write> {
    w: W,
    ino: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl<W: Write> Cpio<W> {
    fn new(w: W) -> Cpio<W> {
        Cpio {
            w,
            ino: 0,
            dirs: BTreeSet::new(),
        }
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> std::io::Result<()> {
        self.ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let namesize = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            namesize,
            0
        );
        self.w.write_all(header.as_bytes())?;
        self.w.write_all(name.as_bytes())?;
        self.w.write_all(&[0])?;
        self.pad(110 + namesize)?;
        self.w.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> std::io::Result<()> {
        let n = (4 - len % 4) % 4;
        self.w.write_all(&[0u8; 3][..n])
    }

    /// A directory and any parents not yet written.
    fn dir(&mut self, path: &str) -> std::io::Result<()> {
        let mut cur = String::new();
        for part in path.split('/') {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(part);
            if self.dirs.insert(cur.clone()) {
                let c = cur.clone();
                self.entry(&c, S_IFDIR | 0o755, (0, 0), &[])?;
            }
        }
        Ok(())
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.entry(path, S_IFREG | mode, (0, 0), data)
    }

    fn finish(mut self) -> std::io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.w.flush()?;
        Ok(self.w)
    }
}

fn write_initramfs(
    path: &Path,
    agent: &[u8],
    moddir: &Path,
    version: &str,
    modules: &[ModuleFile],
) -> Result<(), VmError> {
    let tmp = path.with_extension("cpio.tmp");
    let file = fs::File::create(&tmp).map_err(io("create", &tmp))?;
    let mut cpio = Cpio::new(BufWriter::new(file));
    let w = |r: std::io::Result<()>| r.map_err(io("write", &tmp));
    // The kernel opens /dev/console for init's stdio before init runs, so the node must exist in
    // the archive (devtmpfs is only mounted by the agent).
    w(cpio.dir("dev"))?;
    w(cpio.entry("dev/console", S_IFCHR | 0o600, (5, 1), &[]))?;
    for d in ["proc", "sys", "run", "newroot", "lib/modules"] {
        w(cpio.dir(d))?;
    }
    let mut order = String::new();
    for m in modules {
        let bytes = module_bytes(&moddir.join(&m.shipped))?;
        let inside = format!("lib/modules/{version}/{}", m.installed);
        w(cpio.file(&inside, 0o644, &bytes))?;
        order.push_str(&inside);
        order.push('\n');
    }
    w(cpio.file(ORDER_FILE, 0o644, order.as_bytes()))?;
    w(cpio.file("init", 0o755, agent))?;
    let file = cpio.finish().map_err(io("write", &tmp))?;
    file.into_inner()
        .map_err(|e| io("write", &tmp)(e.into_error()))?
        .sync_all()
        .map_err(io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename", path))
}

fn copy_atomic(from: &Path, to: &Path) -> Result<(), VmError> {
    let tmp = to.with_extension("tmp");
    fs::copy(from, &tmp).map_err(io("copy", from))?;
    fs::rename(&tmp, to).map_err(io("rename", to))
}

/// Bytes and entries under `dir`, counting allocated blocks (not following symlinks).
fn tree_usage(dir: &Path) -> Result<(u64, u64), VmError> {
    let mut bytes = 0;
    let mut entries = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(io("read", &d))? {
            let e = e.map_err(io("read", &d))?;
            let md = e.metadata().map_err(io("stat", &e.path()))?;
            entries += 1;
            bytes += (md.blocks() * 512).max(md.len().min(4096));
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok((bytes, entries))
}

/// Image size for a tree: its blocks plus a tenth, inode tables and 64 MiB (journal, metadata),
/// rounded up to 4 MiB. Jobs get their space from growing the overlay, not from this headroom.
fn ext4_size(bytes: u64, inodes: u64) -> u64 {
    let raw = bytes + bytes / 10 + inodes * 256 + (64 << 20);
    raw.div_ceil(4 << 20) * (4 << 20)
}

/// `mkfs.ext4 -d`: an ext4 image holding `rootfs`, owners and modes as in the tree.
fn make_ext4(rootfs: &Path, disk: &Path) -> Result<(), VmError> {
    let (bytes, entries) = tree_usage(rootfs)?;
    // Enough inodes for the tree and as many again; a grown filesystem keeps this ratio.
    let inodes = (entries * 2 + 4096).max(ext4_size(bytes, 0) / 16384);
    let size = ext4_size(bytes, inodes);
    let tmp = disk.with_extension("ext4.tmp");
    let _ = fs::remove_file(&tmp);
    let f = fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.set_len(size).map_err(io("size", &tmp))?;
    drop(f);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "airlock-root", "-m", "0", "-N"])
        .arg(inodes.to_string())
        .arg("-d")
        .arg(rootfs)
        .arg(&tmp)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VmError::MissingTool {
                tool: "mkfs.ext4",
                package: "e2fsprogs",
            },
            _ => io("run mkfs.ext4 for", &tmp)(e),
        })?;
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(VmError::Tool {
            tool: "mkfs.ext4",
            path: rootfs.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    fs::rename(&tmp, disk).map_err(io("rename", disk))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, rdev major, rdev minor, data) for every entry of a newc archive.
    fn read_cpio(bytes: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let hex = |b: &[u8]| u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let h = &bytes[at..at + 110];
            assert_eq!(&h[..6], b"070701");
            let field = |i: usize| hex(&h[6 + i * 8..14 + i * 8]);
            let (mode, size, maj, min, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name_end = at + 110 + namesize as usize - 1;
            let name = String::from_utf8(bytes[at + 110..name_end].to_vec()).unwrap();
            let data_at = (name_end + 1).next_multiple_of(4);
            let data = bytes[data_at..data_at + size as usize].to_vec();
            at = (data_at + size as usize).next_multiple_of(4);
            if name == "TRAILER!!!" {
                assert_eq!(at, bytes.len());
                return out;
            }
            out.push((name, mode, maj, min, data));
        }
    }

    fn write(path: &Path, data: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }

    /// A rootfs with two kernels; the newer ships overlay gzip-compressed.
    fn fake_rootfs(root: &Path) {
        for v in ["6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64"] {
            write(
                &root.join(format!("boot/vmlinuz-{v}")),
                format!("kernel {v}").as_bytes(),
            );
            let md = root.join("lib/modules").join(v);
            let overlay = if v.contains("-10-") {
                "overlay.ko.gz"
            } else {
                "overlay.ko"
            };
            let dep = format!(
                "kernel/drivers/virtio/virtio_ring.ko:\n\
                 kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
                 kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
                 kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
                 kernel/net/core/failover.ko:\n\
                 kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
                 kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
                 kernel/fs/overlayfs/{overlay}:\n\
                 kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko\n"
            );
            write(&md.join("modules.dep"), dep.as_bytes());
            write(
                &md.join("modules.builtin"),
                b"kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\nkernel/drivers/virtio/virtio_pci.ko\nkernel/crypto/crc32c_generic.ko\n",
            );
            for line in dep.lines() {
                let m = line.split(':').next().unwrap();
                write(&md.join(m), format!("module {m}").as_bytes());
            }
            if v.contains("-10-") {
                let plain = md.join("kernel/fs/overlayfs/overlay.ko");
                write(&plain, b"overlay module bytes");
                let st = Command::new("gzip").arg("-f").arg(&plain).status().unwrap();
                assert!(st.success());
            }
        }
        write(&root.join("home/runner/.profile"), b"# profile\n");
        write(&root.join("etc/hostname"), b"image\n");
    }

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec![
            "6.1.0-9-cloud-amd64",
            "6.1.0-10-cloud-amd64",
            "5.10.0-28-cloud-amd64",
        ];
        v.sort_by(|a, b| version_cmp(b, a));
        assert_eq!(
            v,
            [
                "6.1.0-10-cloud-amd64",
                "6.1.0-9-cloud-amd64",
                "5.10.0-28-cloud-amd64"
            ]
        );
    }

    #[test]
    fn modules_resolve_dependencies_first_and_skip_builtins() {
        let dir = tempfile::tempdir().unwrap();
        fake_rootfs(dir.path());
        let md = dir.path().join("lib/modules/6.1.0-9-cloud-amd64");
        let got: Vec<String> = resolve_modules(&md, "v", INITRAMFS_MODULES)
            .unwrap()
            .into_iter()
            .map(|m| m.installed.rsplit('/').next().unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            [
                "virtio_ring.ko",
                "virtio.ko",
                "virtio_mmio.ko",
                "virtio_blk.ko",
                "failover.ko",
                "net_failover.ko",
                "virtio_net.ko",
                "overlay.ko"
            ]
        );
        let err = resolve_modules(&md, "v", &["vsock"]).unwrap_err();
        assert!(err.to_string().contains("no module vsock"), "{err}");
    }

    #[test]
    fn builds_boot_files_for_every_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let (rootfs, out) = (dir.path().join("rootfs"), dir.path().join("out"));
        fake_rootfs(&rootfs);
        let agent = dir.path().join("agent");
        write(&agent, b"\x7fELF agent");

        let files = build_boot_files(&rootfs, &agent, &out).unwrap();
        let versions: Vec<&str> = files.kernels.iter().map(|k| k.version.as_str()).collect();
        assert_eq!(versions, ["6.1.0-10-cloud-amd64", "6.1.0-9-cloud-amd64"]);

        let newest = &files.kernels[0];
        assert_eq!(
            fs::read(&newest.kernel).unwrap(),
            b"kernel 6.1.0-10-cloud-amd64"
        );
        let entries = read_cpio(&fs::read(&newest.initramfs).unwrap());
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.0 == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        let console = get("dev/console");
        assert_eq!((console.1, console.2, console.3), (S_IFCHR | 0o600, 5, 1));
        assert_eq!(get("init").1, S_IFREG | 0o755);
        assert_eq!(get("init").4, b"\x7fELF agent");
        for d in ["proc", "sys", "run", "newroot"] {
            assert_eq!(get(d).1, S_IFDIR | 0o755);
        }
        let order = String::from_utf8(get(ORDER_FILE).4.clone()).unwrap();
        let order: Vec<&str> = order.lines().collect();
        assert_eq!(order.len(), 8);
        assert_eq!(
            order[0],
            "lib/modules/6.1.0-10-cloud-amd64/kernel/drivers/virtio/virtio_ring.ko"
        );
        // Shipped gzip-compressed, stored plain.
        assert_eq!(
            order[7],
            "lib/modules/6.1.0-10-cloud-amd64/kernel/fs/overlayfs/overlay.ko"
        );
        assert_eq!(get(order[7]).4, b"overlay module bytes");
        for path in &order {
            get(path);
        }
        // Parents come before children, as the kernel's unpacker needs.
        let pos = |n: &str| entries.iter().position(|e| e.0 == n).unwrap();
        assert!(pos("lib/modules/6.1.0-10-cloud-amd64/kernel") < pos(order[0]));

        let md = fs::metadata(&files.rootfs).unwrap();
        assert!(md.len() >= 64 << 20 && (md.len() >> 22) << 22 == md.len());
        let magic = {
            let b = fs::read(&files.rootfs).unwrap();
            u16::from_le_bytes([b[1024 + 56], b[1024 + 57]])
        };
        assert_eq!(magic, 0xEF53, "ext4 superblock magic");
    }

    #[test]
    fn no_kernel_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            build_boot_files(dir.path(), &dir.path().join("a"), &dir.path().join("o")).unwrap_err();
        assert!(matches!(err, VmError::NoKernel { .. }), "{err}");
        assert!(err.to_string().contains("linux-image-cloud-amd64"));
    }
}
