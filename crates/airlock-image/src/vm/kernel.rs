//! What is inside a kernel file: the release a bzImage names in its setup header, and the ELF
//! `vmlinux` its payload decompresses to (Firecracker loads no bzImage on x86_64).
//!
//! This module must never write anywhere but the output path it is given (and its `.tmp`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{io, VmError};

/// The kernel release a bzImage says it is (`6.1.0-57-cloud-amd64`): the first word of the
/// string its setup header points at (`kernel_version`, boot protocol 2.00+). `None` for files
/// that are not bzImages or do not say.
pub fn bzimage_version(bz: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(bz).ok()?;
    let mut head = [0u8; 0x210];
    f.read_exact(&mut head).ok()?;
    if &head[0x202..0x206] != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes([head[0x20e], head[0x20f]]) as u64;
    if ptr == 0 {
        return None;
    }
    f.seek(SeekFrom::Start(0x200 + ptr)).ok()?;
    let mut text = [0u8; 256];
    let n = f.read(&mut text).ok()?;
    let end = text[..n].iter().position(|b| *b == 0).unwrap_or(n);
    let version = std::str::from_utf8(&text[..end])
        .ok()?
        .split_whitespace()
        .next()?;
    version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._+-~".contains(c))
        .then(|| version.to_string())
}

/// The decompressor for a bzImage payload, by its magic: `(tool, package)`.
fn decompressor(payload: &[u8]) -> Option<(&'static str, &'static str)> {
    match payload.get(..4)? {
        [0x02, 0x21, 0x4c, 0x18] => Some(("lz4", "lz4")),
        [0x28, 0xb5, 0x2f, 0xfd] => Some(("zstd", "zstd")),
        [0xfd, b'7', b'z', b'X'] => Some(("xz", "xz-utils")),
        [0x1f, 0x8b, ..] => Some(("gzip", "gzip")),
        _ => None,
    }
}

/// Writes the ELF `vmlinux` inside the bzImage `bz` to `out` (mode 0444): the payload its setup
/// header points at (`payload_offset`, `payload_length`), decompressed by the matching tool.
/// `Ok(None)` when `bz` is no bzImage or its payload is compressed in a way no tool here undoes;
/// an error when the tool for it is missing or its output is no ELF file.
pub fn extract_vmlinux(bz: &Path, out: &Path) -> Result<Option<PathBuf>, VmError> {
    let d = fs::read(bz).map_err(io("read", bz))?;
    if d.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        return Ok(None);
    }
    let setup = match d.get(0x1f1) {
        Some(0) | None => 4,
        Some(n) => *n as usize,
    };
    let word = |at: usize| {
        d.get(at..at + 4)
            .map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")) as usize)
    };
    let base = (setup + 1) * 512;
    let (Some(off), Some(len)) = (word(0x248), word(0x24c)) else {
        return Ok(None);
    };
    let Some(payload) = d.get(base + off..base + off + len) else {
        return Ok(None);
    };
    let Some((tool, package)) = decompressor(payload) else {
        return Ok(None);
    };
    let tmp = out.with_extension("tmp");
    let file = fs::File::create(&tmp).map_err(io("create", &tmp))?;
    let mut child = match Command::new(tool)
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(file)
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = fs::remove_file(&tmp);
            return Err(VmError::MissingTool { tool, package });
        }
        Err(e) => return Err(io("run", Path::new(tool))(e)),
    };
    let mut stdin = child.stdin.take().expect("piped");
    // Trailing bytes after the compressed stream make some tools complain; the ELF check decides.
    let fed = std::thread::scope(|s| {
        let w = s.spawn(move || stdin.write_all(payload));
        let o = child.wait_with_output();
        let _ = w.join();
        o
    })
    .map_err(io("run", Path::new(tool)))?;
    let mut head = [0u8; 4];
    let elf = fs::File::open(&tmp)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && &head == b"\x7fELF";
    if !elf {
        let _ = fs::remove_file(&tmp);
        return Err(VmError::Tool {
            tool,
            path: bz.to_path_buf(),
            detail: format!(
                "the kernel's payload did not decompress to an ELF file ({})",
                String::from_utf8_lossy(&fed.stderr).trim()
            ),
        });
    }
    fs::rename(&tmp, out).map_err(io("rename", out))?;
    Ok(Some(out.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, data: &[u8]) {
        fs::write(path, data).unwrap();
    }

    /// A bzImage-shaped file: a setup header pointing at `payload`.
    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; 1024 + 0x100];
        d[0x1f1] = 1; // one setup sector after the boot sector: the payload base is 1024
        d[0x202..0x206].copy_from_slice(b"HdrS");
        d[0x248..0x24c].copy_from_slice(&0x100u32.to_le_bytes());
        d[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        d.extend_from_slice(payload);
        d.extend_from_slice(&[0u8; 64]); // what follows the payload in a real bzImage
        d
    }

    #[test]
    fn a_bzimage_names_its_release() {
        let dir = tempfile::tempdir().unwrap();
        let bz = dir.path().join("vmlinuz");
        let mut d = fake_bzimage(b"payload");
        // kernel_version points 0x200 before the string, which here starts at 0x300.
        d[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        d[0x300..0x300 + 44].copy_from_slice(b"6.1.0-57-cloud-amd64 (debian-kernel@lists) \0");
        write(&bz, &d);
        assert_eq!(
            bzimage_version(&bz).as_deref(),
            Some("6.1.0-57-cloud-amd64")
        );
        d[0x20e..0x210].copy_from_slice(&0u16.to_le_bytes());
        write(&bz, &d);
        assert_eq!(bzimage_version(&bz), None, "no version pointer");
        write(&bz, b"\x7fELF not a bzImage");
        assert_eq!(bzimage_version(&bz), None);
        assert_eq!(bzimage_version(&dir.path().join("missing")), None);
    }

    #[test]
    fn the_elf_kernel_comes_out_of_a_bzimage() {
        let dir = tempfile::tempdir().unwrap();
        let elf = b"\x7fELF\x02\x01 a kernel".repeat(50);
        let gz = Command::new("sh")
            .arg("-c")
            .arg("gzip -c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(&elf)?;
                c.wait_with_output()
            })
            .unwrap()
            .stdout;
        let bz = dir.path().join("vmlinuz");
        write(&bz, &fake_bzimage(&gz));
        let out = dir.path().join("vmlinux");
        assert_eq!(extract_vmlinux(&bz, &out).unwrap(), Some(out.clone()));
        assert_eq!(fs::read(&out).unwrap(), elf);

        // Not a bzImage, or a payload nothing here decompresses: no vmlinux, no error.
        write(&bz, b"kernel 6.1");
        assert_eq!(extract_vmlinux(&bz, &dir.path().join("a")).unwrap(), None);
        write(&bz, &fake_bzimage(b"BZh91AY&SY not supported"));
        assert_eq!(extract_vmlinux(&bz, &dir.path().join("b")).unwrap(), None);
        // gzip that is not a kernel: an error naming the tool, nothing left behind.
        let junk = Command::new("sh")
            .arg("-c")
            .arg("echo not an elf | gzip -c")
            .output()
            .unwrap()
            .stdout;
        write(&bz, &fake_bzimage(&junk));
        let err = extract_vmlinux(&bz, &dir.path().join("c")).unwrap_err();
        assert!(err.to_string().contains("gzip failed"), "{err}");
        assert!(!dir.path().join("c").exists() && !dir.path().join("c.tmp").exists());
    }
}
