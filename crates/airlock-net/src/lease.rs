//! Address leases: which /30 of the sandbox subnet each sandbox holds, kept as one file per lease
//! in a directory every backend of a host's airlock shares (`state_dir/net/leases`). The file is
//! named by the /30's index and holds its owner key (`<backend tag>/<sandbox id>`, the same key
//! that names and aliases its link).
//!
//! Taking a lease is `create_new` of that file, atomic across threads, backends and processes, so
//! two sandboxes can never hold one address whatever their kind. A lease outlives a crash like any
//! other remnant: backends list the ids their leases name and release them on destroy.
//!
//! Leases must never be inferred from links or sandbox directories: the file is the only record.

/// Where a host's leases live: `state_dir/net/leases`, one directory for every backend.
pub fn lease_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("net").join("leases")
}

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::{NetError, Subnet};

#[derive(Debug, Clone)]
pub struct Leases {
    dir: PathBuf,
    subnet: Subnet,
}

impl Leases {
    /// Leases of `subnet` under `dir` (made, mode 0700, by the first `acquire`).
    pub fn new(dir: PathBuf, subnet: Subnet) -> Leases {
        Leases { dir, subnet }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    fn err(&self, path: &Path, source: std::io::Error) -> NetError {
        NetError::Lease {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Every lease: (index, owner key), by index.
    pub fn held(&self) -> Result<Vec<(u32, String)>, NetError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(self.err(&self.dir, e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let Some(index) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            // A lease being written (create_new, then its owner) may read empty for an instant.
            let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
            out.push((index, owner.trim().to_string()));
        }
        out.sort();
        Ok(out)
    }

    /// Owner keys of the leases whose key starts with `prefix` (a backend's `<tag>/`).
    pub fn owners_with_prefix(&self, prefix: &str) -> Result<Vec<String>, NetError> {
        Ok(self
            .held()?
            .into_iter()
            .filter_map(|(_, o)| o.starts_with(prefix).then_some(o))
            .collect())
    }

    /// The lowest free /30 for `owner`, or the one it already holds.
    pub fn acquire(&self, owner: &str) -> Result<u32, NetError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| self.err(&self.dir, e))?;
        let held = self.held()?;
        if let Some((i, _)) = held.iter().find(|(_, o)| o == owner) {
            return Ok(*i);
        }
        let used: std::collections::HashSet<u32> = held.iter().map(|(i, _)| *i).collect();
        for index in (0..self.subnet.capacity()).filter(|i| !used.contains(i)) {
            let path = self.dir.join(index.to_string());
            let mut f = match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => f,
                // Taken since we looked (another sandbox of any backend): try the next.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(self.err(&path, e)),
            };
            if let Err(e) = f.write_all(format!("{owner}\n").as_bytes()) {
                let _ = std::fs::remove_file(&path);
                return Err(self.err(&path, e));
            }
            return Ok(index);
        }
        Err(NetError::Exhausted {
            subnet: self.subnet.base,
            prefix: self.subnet.prefix,
            used: used.len(),
        })
    }

    /// Gives back whatever `owner` holds; succeeds when it holds nothing.
    pub fn release(&self, owner: &str) -> Result<(), NetError> {
        for (index, o) in self.held()? {
            if o == owner {
                let path = self.dir.join(index.to_string());
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(self.err(&path, e))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases(prefix: &str) -> (tempfile::TempDir, Leases) {
        let t = tempfile::tempdir().unwrap();
        let l = Leases::new(t.path().join("leases"), Subnet::parse(prefix).unwrap());
        assert!(l.held().unwrap().is_empty(), "no directory yet: no leases");
        (t, l)
    }

    #[test]
    fn lowest_free_index_idempotent_and_released() {
        let (_t, l) = leases("10.1.0.0/28");
        assert_eq!(l.acquire("container/t/a").unwrap(), 0);
        assert_eq!(l.acquire("microvm/t/b").unwrap(), 1);
        assert_eq!(
            l.acquire("container/t/a").unwrap(),
            0,
            "same owner, same lease"
        );
        l.release("container/t/a").unwrap();
        l.release("container/t/a").unwrap();
        assert_eq!(l.acquire("microvm/t/c").unwrap(), 0, "freed index reused");
        assert_eq!(
            l.owners_with_prefix("microvm/").unwrap(),
            vec!["microvm/t/c".to_string(), "microvm/t/b".to_string()]
        );
    }

    #[test]
    fn exhaustion_is_an_error_naming_the_subnet() {
        let (_t, l) = leases("10.1.0.0/28"); // four /30s
        for i in 0..4 {
            l.acquire(&format!("k/{i}")).unwrap();
        }
        let e = l.acquire("k/5").unwrap_err().to_string();
        assert!(
            e.contains("10.1.0.0/28") && e.contains("4 sandboxes"),
            "{e}"
        );
    }

    #[test]
    fn concurrent_owners_never_share_an_index() {
        let (_t, l) = leases("10.1.0.0/20");
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| l.acquire(&format!("b{t}/x/{i}")).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u32> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n, "an index was handed out twice");
        assert_eq!(l.held().unwrap().len(), 200);
    }
}
