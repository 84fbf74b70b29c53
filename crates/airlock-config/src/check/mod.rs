//! The walker behind `load`: every key read on its own, every problem collected.
//!
//! `load_str` parses the text once, then hands the table to one reader per section, each in its
//! own module (`[microvm]` and `[pool.microvm]` live in `crate::microvm`), all sharing one
//! `Walker` that collects the diagnostics. It must never stop at the first problem (only a syntax
//! error ends it early, as it leaves nothing to walk), and never return a `Config` while any
//! error stands.

mod container;
mod egress;
mod github;
mod pools;
mod server;
#[cfg(test)]
mod tests;
mod walker;

use std::path::Path;

use toml::Table;

use crate::{Config, Diagnostic, Severity};

pub(crate) use walker::Walker;

/// Parses and validates config text; relative paths resolve against `base`.
pub fn load_str(text: &str, base: &Path) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut w = Walker::new(text, base);
    let mut root = parse(text)?;
    // Diagnostics come out in this order, section by section, and `check-config` prints them so.
    let server = server::read(&mut w, &mut root);
    let container = container::read(&mut w, &mut root);
    let microvm = crate::microvm::settings(&mut w, &mut root);
    let github = github::read(&mut w, &mut root);
    let pools = pools::read(&mut w, &mut root, &server.state_dir);
    for k in root.keys() {
        w.error(
            k,
            "unknown top-level key; expected [server], [github], [container], [microvm] or [[pool]]",
        );
    }
    match (github, w.has_error()) {
        (Some(github), false) => Ok((
            Config {
                server,
                container,
                microvm,
                github,
                pools,
            },
            w.into_diags(),
        )),
        _ => Err(w.into_diags()),
    }
}

/// A syntax error is the one problem reported alone: without a table there is nothing to walk.
fn parse(text: &str) -> Result<Table, Vec<Diagnostic>> {
    text.parse::<Table>().map_err(|e| {
        // The offset where the parser stopped, on a character boundary of the text.
        let at = e.span().map(|s| {
            let mut at = s.start.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            at
        });
        // The line holding that offset (an offset at a line's start is on that line).
        let line = at.map(|at| text[..at].matches('\n').count() + 1);
        // toml says nothing for some errors (a control character in a comment): name it.
        let message = match (e.message(), at.and_then(|at| text[at..].chars().next())) {
            ("", Some(c)) => format!("unexpected character {c:?}"),
            ("", None) => "unexpected end of the file".to_string(),
            (m, _) => m.to_string(),
        };
        vec![Diagnostic {
            severity: Severity::Error,
            key: "(syntax)".into(),
            line,
            message,
        }]
    })
}
