//! The config disk: read the job's config once, wipe it, and later write the result record.
//!
//! The disk stays open from the initramfs to power-off (the descriptor survives the root switch).
//! This module must never leave the config (which holds the JIT secret) on the disk after
//! [`ConfigDisk::take_config`] returns, whether or not the config parsed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

use airlock_agent::config::{GuestConfig, GuestResult, CONFIG_DISK_SIZE};

use crate::{io_err, Fatal};

pub struct ConfigDisk {
    path: String,
    file: File,
}

impl ConfigDisk {
    /// Waits up to 10 s for the device, then opens it read-write.
    pub fn open(path: &str) -> Result<ConfigDisk, Fatal> {
        crate::mounts::wait_for(path, 10)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(format!("open {path}")))?;
        Ok(ConfigDisk {
            path: path.to_string(),
            file,
        })
    }

    /// Reads the config, overwrites it on the disk with zeros and flushes that, then parses.
    pub fn take_config(&mut self) -> Result<GuestConfig, Fatal> {
        let size = self
            .file
            .seek(SeekFrom::End(0))
            .map_err(io_err(format!("size of {}", self.path)))?;
        let len = (size as usize).min(CONFIG_DISK_SIZE);
        let mut buf = vec![0u8; len];
        // The document is JSON (no NUL) followed by zeros to the end of the disk: it is read in
        // 4 KiB blocks up to the first block with a NUL in it, not the whole MiB.
        let read = self.file.seek(SeekFrom::Start(0)).and_then(|_| {
            let mut at = 0;
            while at < len {
                let end = (at + 4096).min(len);
                self.file.read_exact(&mut buf[at..end])?;
                let ends_here = buf[at..end].contains(&0);
                at = end;
                if ends_here {
                    break;
                }
            }
            Ok(())
        });
        // Wiping up to the end of the document (rounded up to whole 4 KiB blocks) removes the
        // secret without rewriting the whole disk. A read that failed leaves no way to tell where
        // the document ends: wipe it all then.
        let used = buf.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let wiped = self.wipe(match read {
            Ok(()) => (used as u64).div_ceil(4096) * 4096,
            Err(_) => size,
        });
        let parsed = read
            .map_err(io_err(format!("read {}", self.path)))
            .and(wiped)
            .and_then(|()| GuestConfig::from_disk_bytes(&buf).map_err(Fatal::from));
        buf.fill(0);
        std::hint::black_box(&buf);
        parsed
    }

    fn wipe(&mut self, size: u64) -> Result<(), Fatal> {
        let zeros = vec![0u8; 64 << 10];
        let mut left = size;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io_err(format!("wipe {}", self.path)))?;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.file
                .write_all(&zeros[..n])
                .map_err(io_err(format!("wipe {}", self.path)))?;
            left -= n as u64;
        }
        self.file
            .sync_all()
            .map_err(io_err(format!("flush {}", self.path)))
    }

    pub fn write_result(&mut self, result: &GuestResult) -> Result<(), Fatal> {
        let record = result.to_record();
        self.file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.write_all(&record))
            .and_then(|()| self.file.sync_all())
            .map_err(io_err(format!("write result to {}", self.path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JIT: &str = "JITSECRET-disk-test";

    fn config(env_bytes: usize) -> GuestConfig {
        let text = format!(
            r#"{{"version":1,"hostname":"airlock-t","root":{{"device":"/dev/vda","writable_layer":null,"grow":true}},
            "net":null,"runner":{{"command":"/r","user":"runner","env":{{"BIG":"{}"}}}},"jit":"{JIT}"}}"#,
            "x".repeat(env_bytes)
        );
        GuestConfig::from_disk_bytes(text.as_bytes()).unwrap()
    }

    fn disk_with(c: &GuestConfig) -> (tempfile::NamedTempFile, ConfigDisk) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), c.to_disk_bytes().unwrap()).unwrap();
        let d = ConfigDisk::open(f.path().to_str().unwrap()).unwrap();
        (f, d)
    }

    #[test]
    fn the_config_is_read_and_wiped_whatever_its_length() {
        // One block, and a document that spans several 4 KiB blocks (and ends inside one).
        for env_bytes in [10, 9000, 8192 - 200] {
            let c = config(env_bytes);
            let (f, mut d) = disk_with(&c);
            assert_eq!(d.take_config().unwrap(), c, "{env_bytes}");
            let after = std::fs::read(f.path()).unwrap();
            assert_eq!(after.len(), CONFIG_DISK_SIZE);
            assert!(after.iter().all(|&b| b == 0), "wiped ({env_bytes})");
        }
    }

    #[test]
    fn an_empty_or_bad_disk_is_an_error_and_still_wiped() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut junk = b"{not json".to_vec();
        junk.resize(CONFIG_DISK_SIZE, 0);
        std::fs::write(f.path(), &junk).unwrap();
        let mut d = ConfigDisk::open(f.path().to_str().unwrap()).unwrap();
        assert!(d.take_config().is_err());
        assert!(std::fs::read(f.path()).unwrap().iter().all(|&b| b == 0));
        std::fs::write(f.path(), vec![0; CONFIG_DISK_SIZE]).unwrap();
        let mut d = ConfigDisk::open(f.path().to_str().unwrap()).unwrap();
        assert!(d.take_config().is_err(), "empty");
    }

    #[test]
    fn the_result_lands_at_the_start() {
        let (f, mut d) = disk_with(&config(1));
        d.take_config().unwrap();
        d.write_result(&GuestResult::ExitCode(7)).unwrap();
        let bytes = std::fs::read(f.path()).unwrap();
        assert_eq!(
            GuestResult::from_record(&bytes[..airlock_agent::config::RESULT_SIZE]).unwrap(),
            Some(GuestResult::ExitCode(7))
        );
    }
}
