//! Host networking shared by every sandbox backend, so that a container and a VM can never get
//! the same address and are kept off the host and off each other by the same rules:
//! - `subnet`: the /30 arithmetic and link names;
//! - `lease`: which /30 each sandbox holds, as files under one directory for every backend;
//! - `links`: the veth pairs of containers and the taps of VMs, named and aliased by owner;
//! - `rules`: the one nftables table;
//! - `tap`: making a VM's tap, and a descriptor of it for its unprivileged VMM;
//! - `netlink`: link changes over rtnetlink from synchronous code;
//! - `outside`: a namespace standing in for the internet (demo and tests only).
//!
//! This crate must never know what a sandbox is beyond its owner key and its link: no backend,
//! no store, no image.

pub mod lease;
pub mod links;
mod netlink;
pub mod outside;
pub mod rules;
pub mod subnet;
pub mod tap;

pub use lease::{lease_dir, Leases};
pub use links::{create_tap, delete, hook_args, list, NETHOOK};

/// A program on `PATH` (or in `/usr/sbin`, `/sbin`, where root's tools live), or `name` itself
/// when it is a path to a file.
pub fn find_in_path(name: &str) -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Where one of airlock's helper programs (`airlock-supervise`, `airlock-nethook`) is: at
/// `$AIRLOCK_<NAME>` (`AIRLOCK_NETHOOK` for `airlock-nethook`) when set, else beside this program
/// (or one directory up, for test and bench executables in `target/<profile>/deps`), else on
/// `PATH`. Looked up once per name.
pub fn helper(name: &'static str) -> std::io::Result<&'static std::path::Path> {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, OnceLock};
    static FOUND: OnceLock<Mutex<HashMap<&'static str, Option<&'static Path>>>> = OnceLock::new();
    let mut found = FOUND
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let hit = *found.entry(name).or_insert_with(|| {
        let var = format!(
            "AIRLOCK_{}",
            name.trim_start_matches("airlock-").to_uppercase()
        );
        let p: Option<PathBuf> = std::env::var_os(&var).map(PathBuf::from).or_else(|| {
            let exe = std::env::current_exe().ok();
            let dir = exe.as_deref().and_then(Path::parent);
            dir.into_iter()
                .flat_map(|d| [d.join(name), d.join("..").join(name)])
                .find(|p| p.is_file())
                .or_else(|| find_in_path(name))
        });
        // Canonical (a hook's path must be absolute), and leaked once per name.
        p.map(|p| &*Box::leak(p.canonicalize().unwrap_or(p).into_boxed_path()))
    });
    hit.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{name} is neither beside this program nor on PATH; install it with airlock \
                 (cargo build --bins builds it) or set AIRLOCK_{}",
                name.trim_start_matches("airlock-").to_uppercase()
            ),
        )
    })
}
pub use outside::Outside;
pub use rules::setup_host;
pub use subnet::{link_name, Link, Subnet};
pub use tap::open_tap;

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Host-side link names start with this; nothing else on a host should.
pub const LINK_PREFIX: &str = "airl";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{what}: {detail}")]
    Command { what: String, detail: String },
    #[error("lease directory {path}: {source}")]
    Lease {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no free address in {subnet}/{prefix}: {used} sandboxes hold them all")]
    Exhausted {
        subnet: Ipv4Addr,
        prefix: u8,
        used: usize,
    },
}

pub(crate) fn run(what: &str, cmd: &mut Command, stdin: Option<&str>) -> Result<(), NetError> {
    let err = |detail: String| NetError::Command {
        what: what.to_string(),
        detail,
    };
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run {:?}: {e}", cmd.get_program())))?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes())
            .map_err(|e| err(format!("writing to {:?}: {e}", cmd.get_program())))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("waiting for {:?}: {e}", cmd.get_program())))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}
