//! The content digest of a root filesystem: SHA-256 over a sorted walk of the tree, covering each
//! entry's relative path, type, permission bits, owner, and its bytes (files) or target
//! (symlinks). Timestamps are left out so that the same content gives the same digest.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::ImageError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeSum {
    pub digest: String,
    pub bytes: u64,
    pub files: u64,
}

pub fn tree_digest(root: &Path) -> Result<TreeSum, ImageError> {
    let mut h = Sha256::new();
    let mut sum = TreeSum {
        digest: String::new(),
        bytes: 0,
        files: 0,
    };
    walk(root, root, &mut h, &mut sum)?;
    sum.digest = hex::encode(h.finalize());
    Ok(sum)
}

fn walk(root: &Path, dir: &Path, h: &mut Sha256, sum: &mut TreeSum) -> Result<(), ImageError> {
    let err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ImageError::Io {
            what: "cannot read",
            path: p,
            source,
        }
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(err(dir))?
        .collect::<Result<_, _>>()
        .map_err(err(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path).map_err(err(&path))?;
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_file() {
            'f'
        } else {
            'o'
        };
        h.update(
            format!(
                "{kind} {} {:o} {}:{} ",
                rel.display(),
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid()
            )
            .as_bytes(),
        );
        match kind {
            'f' => {
                sum.files += 1;
                sum.bytes += meta.len();
                let mut f = std::fs::File::open(&path).map_err(err(&path))?;
                let mut fh = Sha256::new();
                std::io::copy(&mut f, &mut fh).map_err(err(&path))?;
                h.update(fh.finalize());
            }
            'l' => {
                let t = std::fs::read_link(&path).map_err(err(&path))?;
                h.update(t.as_os_str().as_encoded_bytes());
            }
            'o' => h.update(meta.rdev().to_le_bytes()),
            _ => {}
        }
        h.update(b"\n");
        if kind == 'd' {
            walk(root, &path, h, sum)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_covers_content_modes_and_links_but_not_times() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/b/f"), "hello").unwrap();
        std::os::unix::fs::symlink("b/f", r.join("a/l")).unwrap();
        let first = tree_digest(r).unwrap();
        assert_eq!((first.files, first.bytes), (1, 5));
        // Touching times changes nothing.
        std::fs::write(r.join("a/b/f"), "hello").unwrap();
        assert_eq!(tree_digest(r).unwrap(), first);
        // Content, mode, link target and new files all change it.
        std::fs::write(r.join("a/b/f"), "hellO").unwrap();
        let content = tree_digest(r).unwrap();
        assert_ne!(content.digest, first.digest);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(r.join("a/b/f"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let mode = tree_digest(r).unwrap();
        assert_ne!(mode.digest, content.digest);
        std::fs::remove_file(r.join("a/l")).unwrap();
        std::os::unix::fs::symlink("b", r.join("a/l")).unwrap();
        assert_ne!(tree_digest(r).unwrap().digest, mode.digest);
    }
}
