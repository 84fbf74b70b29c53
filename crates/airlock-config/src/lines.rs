//! Finds the line of a key in the raw TOML text, so diagnostics can point at it. Handles the
//! shapes airlock's config uses: `[table]`, `[[array]]`, `[array.table]` (a table of the array's
//! last element) and `key = value` lines.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub(crate) struct LineIndex {
    keys: HashMap<String, usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> LineIndex {
        let mut keys = HashMap::new();
        let mut section = String::new();
        let mut arrays: HashMap<String, usize> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let n = i + 1;
            if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
                let name = name.trim().to_string();
                let idx = arrays.entry(name.clone()).or_insert(0);
                section = format!("{name}[{idx}]");
                *idx += 1;
                keys.insert(section.clone(), n);
            } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
                // `[pool.microvm]` after `[[pool]]` is a table of the array's last element.
                let name = name.trim();
                section = match name.split_once('.') {
                    Some((array, rest)) if arrays.contains_key(array.trim()) => {
                        format!(
                            "{}[{}].{}",
                            array.trim(),
                            arrays[array.trim()] - 1,
                            rest.trim()
                        )
                    }
                    _ => name.to_string(),
                };
                keys.insert(section.clone(), n);
            } else if let Some((k, _)) = line.split_once('=') {
                let k = k.trim().trim_matches('"');
                if !k.is_empty() && !k.starts_with('#') {
                    let full = if section.is_empty() {
                        k.to_string()
                    } else {
                        format!("{section}.{k}")
                    };
                    keys.entry(full).or_insert(n);
                }
            }
        }
        LineIndex { keys }
    }

    pub(crate) fn line(&self, key: &str) -> Option<usize> {
        self.keys.get(key).copied()
    }
}
