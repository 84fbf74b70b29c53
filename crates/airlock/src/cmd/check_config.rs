//! `airlock check-config --config F`.
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short)]
    config: PathBuf,
}

pub fn run(a: Args) -> u8 {
    match super::load_config(&a.config) {
        Ok(c) => {
            check_images(&a.config, &c);
            println!(
                "{}: valid ({} pool{})",
                a.config.display(),
                c.pools.len(),
                if c.pools.len() == 1 { "" } else { "s" }
            );
            0
        }
        Err(code) => code,
    }
}

/// Warns about pools whose image's newest build (or pinned digest) lacks packages the pool asks
/// for, microVM pools whose image is not bootable or lacks the kernel asked for. Warnings only:
/// the daemon still runs such a pool (and reports why it creates nothing).
fn check_images(path: &std::path::Path, c: &airlock_config::Config) {
    let store = airlock_image::ImageStore::new(c.server.state_dir.join("images"));
    for (i, p) in c.pools.iter().enumerate() {
        let Some(image) = &p.image else {
            continue;
        };
        let Ok(m) = store.resolve(image) else {
            continue; // a missing image is the config check's warning
        };
        if let Some(vmcfg) = &p.microvm {
            match &m.vm {
                None => eprintln!(
                    "{}: warning: pool[{i}].image: image {} is not bootable as a microVM; rebuild it: airlock image build {} --vm --config {}",
                    path.display(),
                    m.short(),
                    m.name,
                    path.display()
                ),
                Some(vm) => {
                    if let Some(k) = vmcfg.kernel.as_deref().filter(|k| !k.contains('/')) {
                        if !vm.kernels.iter().any(|x| x.version == k) {
                            let have: Vec<&str> =
                                vm.kernels.iter().map(|x| x.version.as_str()).collect();
                            eprintln!(
                                "{}: warning: pool[{i}].microvm.kernel: image {} has no kernel {k} (it has {})",
                                path.display(),
                                m.short(),
                                have.join(", ")
                            );
                        }
                    }
                }
            }
        }
        if p.packages.is_empty() {
            continue;
        }
        let have: std::collections::HashSet<&str> =
            m.packages.iter().map(|x| x.name.as_str()).collect();
        let missing: Vec<&str> = p
            .packages
            .iter()
            .map(String::as_str)
            .filter(|x| !have.contains(x))
            .collect();
        if !missing.is_empty() {
            eprintln!(
                "{}: warning: pool[{i}].packages: image {} lacks {}; rebuild it: airlock image build {} --config {}",
                path.display(),
                m.short(),
                missing.join(", "),
                m.name,
                path.display()
            );
        }
    }
}
