//! One module per subcommand.
pub mod check_config;
pub mod demo;
pub mod doctor;
pub mod egress;
pub mod image;
pub mod reload;
pub mod serve;
pub mod status;

use std::path::Path;

/// Loads a config, printing every diagnostic; `Err(exit code)` when it is invalid.
pub fn load_config(path: &Path) -> Result<airlock_config::Config, u8> {
    match airlock_config::load(path) {
        Ok((c, warnings)) => {
            for w in warnings {
                eprintln!("{}: {w}", path.display());
            }
            Ok(c)
        }
        Err(e) => {
            for d in &e.diagnostics {
                eprintln!("{}: {d}", path.display());
            }
            eprintln!("airlock: {e}");
            Err(crate::EXIT_INVALID)
        }
    }
}
