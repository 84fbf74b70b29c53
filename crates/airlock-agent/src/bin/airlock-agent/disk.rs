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

    /// Reads the config, overwrites the whole disk with zeros and flushes it, then parses.
    pub fn take_config(&mut self) -> Result<GuestConfig, Fatal> {
        let size = self
            .file
            .seek(SeekFrom::End(0))
            .map_err(io_err(format!("size of {}", self.path)))?;
        let len = (size as usize).min(CONFIG_DISK_SIZE);
        let mut buf = vec![0u8; len];
        let read = self
            .file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.read_exact(&mut buf));
        // The host writes the document and zeros after it: wiping up to the end of the document
        // (rounded up to whole 4 KiB blocks) removes the secret without rewriting the whole disk.
        // A read that failed leaves no way to tell where the document ends: wipe it all then.
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
