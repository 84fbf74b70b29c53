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
