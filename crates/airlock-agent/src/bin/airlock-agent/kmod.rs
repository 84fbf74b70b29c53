//! Loads the kernel modules the initramfs carries, in the order the host wrote down.
//!
//! The host resolved dependencies when it built the initramfs (`/lib/modules/airlock.order`, one
//! path relative to `/` per line, dependencies first, plain uncompressed `.ko`). This module must
//! never guess modules or search for them: a missing file is a fatal error naming it.

use std::fs::{self, File};
use std::time::Instant;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

use crate::log::log;
use crate::{io_err, sys_err, Fatal};

pub const ORDER_FILE: &str = "/lib/modules/airlock.order";

/// The module paths listed in an order file (blank lines and `#` comments skipped).
pub fn parse_order(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| format!("/{}", l.trim_start_matches('/')))
        .collect()
}

pub fn load_listed(order_file: &str) -> Result<(), Fatal> {
    let start = Instant::now();
    let text = fs::read_to_string(order_file).map_err(io_err(format!("read {order_file}")))?;
    let paths = parse_order(&text);
    for path in &paths {
        let file = File::open(path).map_err(io_err(format!("open module {path}")))?;
        match finit_module(&file, c"", ModuleInitFlags::empty()) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(sys_err(format!("load module {path}"))(e)),
        }
    }
    log!(
        "loaded {} modules in {} ms",
        paths.len(),
        start.elapsed().as_millis()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_file_lines_become_absolute_paths() {
        let text = "lib/modules/6.1/kernel/a.ko\n\n# comment\n /lib/modules/6.1/kernel/b.ko \n";
        assert_eq!(
            parse_order(text),
            vec![
                "/lib/modules/6.1/kernel/a.ko",
                "/lib/modules/6.1/kernel/b.ko"
            ]
        );
    }
}
