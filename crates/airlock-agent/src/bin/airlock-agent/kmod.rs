//! Loads the kernel modules the initramfs carries, in the order the host wrote down.
//!
//! The host resolved dependencies when it built the initramfs (`/lib/modules/airlock.order`, one
//! path relative to `/` per line, dependencies first, plain uncompressed `.ko`). This module must
//! never guess modules or search for them: a missing file is a fatal error naming it.
//!
//! Each module gets the parameters the kernel command line gives it (`virtio_mmio.device=…`,
//! which Firecracker appends for every device it adds), as `modprobe` would pass them: the kernel
//! applies `module.param=` words only to built-in code.

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

/// The module name of `path` as the kernel knows it: the file name without `.ko`, `-` as `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.strip_suffix(".ko").unwrap_or(file).replace('-', "_")
}

/// The parameters `cmdline` gives module `name` (`name.key=value` words, `-` and `_` alike in the
/// name), space-separated as `finit_module` takes them.
pub fn params_for(name: &str, cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .filter_map(|w| {
            let (module, param) = w.split_once('.')?;
            (module.replace('-', "_") == name && !param.is_empty()).then_some(param)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn load_listed(order_file: &str) -> Result<(), Fatal> {
    let start = Instant::now();
    let text = fs::read_to_string(order_file).map_err(io_err(format!("read {order_file}")))?;
    let paths = parse_order(&text);
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    for path in &paths {
        let file = File::open(path).map_err(io_err(format!("open module {path}")))?;
        let params = params_for(&module_name(path), &cmdline);
        let params = std::ffi::CString::new(params).unwrap_or_default();
        match finit_module(&file, &params, ModuleInitFlags::empty()) {
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
    fn modules_get_their_command_line_parameters() {
        let cmdline = "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 pci=off \
                       virtio_mmio.device=4K@0xd0001000:6 virtio-blk.queue_depth=4 quiet.x";
        assert_eq!(
            module_name("/lib/modules/6.1/kernel/drivers/virtio/virtio_mmio.ko"),
            "virtio_mmio"
        );
        assert_eq!(module_name("/x/virtio-blk.ko"), "virtio_blk");
        assert_eq!(
            params_for("virtio_mmio", cmdline),
            "device=4K@0xd0000000:5 device=4K@0xd0001000:6"
        );
        assert_eq!(params_for("virtio_blk", cmdline), "queue_depth=4");
        assert_eq!(params_for("ext4", cmdline), "");
        assert_eq!(
            params_for("quiet", "quiet. pci=off"),
            "",
            "no empty parameter"
        );
    }

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
