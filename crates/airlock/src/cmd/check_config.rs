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

/// Warns about container pools whose image's newest build (or pinned digest) lacks packages the
/// pool asks for. Warnings only: the daemon still runs such a pool.
fn check_images(path: &std::path::Path, c: &airlock_config::Config) {
    let store = airlock_image::ImageStore::new(c.server.state_dir.join("images"));
    for (i, p) in c.pools.iter().enumerate() {
        let (Some(image), false) = (&p.image, p.packages.is_empty()) else {
            continue;
        };
        let Ok(m) = store.resolve(image) else {
            continue; // a missing image is the config check's warning
        };
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
