//! `Walker`: the diagnostic collector every section shares, and its key-by-key readers.
//!
//! Each reader removes its key from the section's table, so that what is left at the end is
//! exactly the unknown keys, and points each problem at the key's line. A reader must never stop
//! the walk or panic on what a user wrote: a wrong type or value is a diagnostic plus a default
//! (or `None`), so that one load reports every problem. `secret_file` must never read a secret's
//! contents; opening the file is as far as it goes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::lines::LineIndex;
use crate::{Diagnostic, Severity};

/// No duration may be longer (humantime's `100y`): the daemon adds them to Unix milliseconds and
/// `Instant`s, which a duration of millions of years overflows (a pool's `job_timeout` of
/// "300000000y" became a negative number of milliseconds).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(3_155_760_000);

pub(crate) struct Walker<'a> {
    lines: LineIndex,
    base: &'a Path,
    diags: Vec<Diagnostic>,
}

impl<'a> Walker<'a> {
    /// `base` is the directory relative paths in `text` resolve against.
    pub(crate) fn new(text: &str, base: &'a Path) -> Walker<'a> {
        Walker {
            lines: LineIndex::new(text),
            base,
            diags: Vec::new(),
        }
    }

    pub(crate) fn has_error(&self) -> bool {
        self.diags.iter().any(|d| d.severity == Severity::Error)
    }

    pub(crate) fn into_diags(self) -> Vec<Diagnostic> {
        self.diags
    }

    pub(crate) fn push(&mut self, severity: Severity, key: &str, message: impl Into<String>) {
        // Point at the key's own line, or failing that at its section's header.
        let line = self.lines.line(key).or_else(|| {
            key.rsplit_once('.')
                .and_then(|(section, _)| self.lines.line(section))
        });
        self.diags.push(Diagnostic {
            severity,
            key: key.to_string(),
            line,
            message: message.into(),
        });
    }

    pub(crate) fn error(&mut self, key: &str, message: impl Into<String>) {
        self.push(Severity::Error, key, message)
    }

    pub(crate) fn warn(&mut self, key: &str, message: impl Into<String>) {
        self.push(Severity::Warning, key, message)
    }

    /// Removes and deserialises `key`; a wrong type is reported and gives `None`.
    pub(crate) fn take<T: DeserializeOwned>(
        &mut self,
        t: &mut Table,
        section: &str,
        key: &str,
        what: &str,
    ) -> Option<T> {
        let v = t.remove(key)?;
        let full = format!("{section}.{key}");
        let shown = v.to_string();
        match v.try_into::<T>() {
            Ok(x) => Some(x),
            Err(_) => {
                self.error(&full, format!("expected {what}, got {shown}"));
                None
            }
        }
    }

    pub(crate) fn duration(
        &mut self,
        t: &mut Table,
        section: &str,
        key: &str,
        default: Duration,
    ) -> Duration {
        self.duration_from(t, section, key, default, false)
    }

    /// `duration`, with zero allowed when `zero_ok` (a pause that may be off).
    pub(crate) fn duration_from(
        &mut self,
        t: &mut Table,
        section: &str,
        key: &str,
        default: Duration,
        zero_ok: bool,
    ) -> Duration {
        let Some(s) = self.take::<String>(
            t,
            section,
            key,
            "a duration such as \"90s\", \"5m\" or \"6h\"",
        ) else {
            return default;
        };
        match humantime::parse_duration(&s) {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.error(&format!("{section}.{key}"), "must be longer than zero");
                default
            }
            // The daemon counts in whole milliseconds: "1ns" would be a timeout of 0 ms.
            Ok(d) if d < Duration::from_millis(1) && !zero_ok => {
                self.error(
                    &format!("{section}.{key}"),
                    format!("{s:?} is too short: a duration must be at least 1ms"),
                );
                default
            }
            Ok(d) if d > MAX_DURATION => {
                self.error(
                    &format!("{section}.{key}"),
                    format!("{s:?} is too long: a duration may be at most 100y"),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.error(
                    &format!("{section}.{key}"),
                    format!("{s:?} is not a duration ({e}); write e.g. \"90s\", \"5m\" or \"6h\""),
                );
                default
            }
        }
    }

    pub(crate) fn path(&mut self, t: &mut Table, section: &str, key: &str) -> Option<PathBuf> {
        let p: PathBuf = self.take::<String>(t, section, key, "a file path")?.into();
        Some(if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        })
    }

    pub(crate) fn unknown(&mut self, t: Table, section: &str, known: &[&str]) {
        for k in t.keys() {
            self.error(
                &format!("{section}.{k}"),
                format!("unknown key; expected one of: {}", known.join(", ")),
            );
        }
    }

    pub(crate) fn table(&mut self, root: &mut Table, name: &str) -> Table {
        match root.remove(name) {
            None => Table::new(),
            Some(Value::Table(t)) => t,
            Some(_) => {
                self.error(name, "expected a table: [".to_string() + name + "]");
                Table::new()
            }
        }
    }

    /// A secret file must exist, be readable, and not be readable by group or others.
    pub(crate) fn secret_file(&mut self, key: &str, path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Err(e) => self.error(key, format!("cannot read {}: {e}", path.display())),
            Ok(m) if !m.is_file() => {
                self.error(key, format!("{} is not a regular file", path.display()))
            }
            Ok(m) => {
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    self.error(
                        key,
                        format!(
                            "{} is readable by other users (mode {mode:04o}); run: chmod 600 {}",
                            path.display(),
                            path.display()
                        ),
                    );
                } else if let Err(e) = std::fs::File::open(path) {
                    self.error(key, format!("cannot read {}: {e}", path.display()));
                }
            }
        }
    }
}
