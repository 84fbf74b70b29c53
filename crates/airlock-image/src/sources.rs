//! The Debian package sources an image is built from: by default the host's own apt
//! configuration (so builds use whatever mirror or proxy the host is set up for), in the one-line
//! `deb URI SUITE COMPONENTS` form that mmdebstrap reads on standard input.

use std::path::Path;

use crate::ImageError;

/// Lines for a mirror given by the operator: the suite and its updates, main only.
pub fn for_mirror(mirror: &str, suite: &str) -> String {
    let m = mirror.trim_end_matches('/');
    format!("deb {m} {suite} main\ndeb {m} {suite}-updates main\n")
}

/// The host's `deb` sources for `suite` (and `suite-updates`, `suite-security`), from
/// `sources.list`, `sources.list.d/*.list` and deb822 `sources.list.d/*.sources`.
pub fn from_host(apt: &Path, suite: &str) -> Result<String, ImageError> {
    let mut entries: Vec<(String, String, String)> = Vec::new();
    let mut files = vec![apt.join("sources.list")];
    if let Ok(d) = std::fs::read_dir(apt.join("sources.list.d")) {
        let mut more: Vec<_> = d.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => entries.extend(deb822(&text)),
            _ if f.file_name().is_some_and(|n| n == "sources.list")
                || f.extension().is_some_and(|e| e == "list") =>
            {
                entries.extend(one_line(&text))
            }
            _ => {}
        }
    }
    let wanted = |s: &str| {
        s == suite
            || s.strip_prefix(suite)
                .is_some_and(|rest| rest.starts_with('-'))
    };
    let lines: Vec<String> = entries
        .into_iter()
        .filter(|(_, s, _)| wanted(s))
        .map(|(uri, s, comps)| format!("deb {uri} {s} {comps}"))
        .collect();
    if lines.is_empty() {
        return Err(ImageError::Sources {
            detail: format!("{} lists no `deb` source for {suite}", apt.display()),
        });
    }
    Ok(lines.join("\n") + "\n")
}

fn one_line(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("deb "))
        .filter_map(|rest| {
            let mut parts: Vec<&str> = rest.split_whitespace().collect();
            if parts.first().is_some_and(|p| p.starts_with('[')) {
                // Options such as [signed-by=...]: the keyring stays the host's.
                let end = parts.iter().position(|p| p.ends_with(']'))?;
                parts.drain(..=end);
            }
            if parts.len() < 3 {
                return None;
            }
            Some((
                parts[0].to_string(),
                parts[1].to_string(),
                parts[2..].join(" "),
            ))
        })
        .collect()
}

fn deb822(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                .map(|v| v.trim().to_string())
        };
        if !field("Types").is_some_and(|t| t.split_whitespace().any(|x| x == "deb")) {
            continue;
        }
        if field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no")) {
            continue;
        }
        let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else {
            continue;
        };
        let comps = field("Components").unwrap_or_else(|| "main".into());
        for u in uris.split_whitespace() {
            for s in suites.split_whitespace() {
                out.push((u.to_string(), s.to_string(), comps.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_line_and_deb822_sources_for_the_suite() {
        let d = tempfile::tempdir().unwrap();
        let apt = d.path();
        std::fs::create_dir_all(apt.join("sources.list.d")).unwrap();
        std::fs::write(
            apt.join("sources.list"),
            "# comment\ndeb [signed-by=/k.gpg] http://mirror.test/debian bookworm main contrib\ndeb-src http://mirror.test/debian bookworm main\ndeb http://old.test/debian bullseye main\n",
        )
        .unwrap();
        std::fs::write(
            apt.join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://mirror.test/debian\nSuites: bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://sec.test/debian-security\nSuites: bookworm-security\nComponents: main\nEnabled: no\n",
        )
        .unwrap();
        std::fs::write(
            apt.join("sources.list.d/other.list.disabled"),
            "deb http://x.test/ bookworm main\n",
        )
        .unwrap();
        let got = from_host(apt, "bookworm").unwrap();
        assert_eq!(
            got,
            "deb http://mirror.test/debian bookworm main contrib\ndeb http://mirror.test/debian bookworm-updates main\n"
        );
        let err = from_host(apt, "trixie").unwrap_err();
        assert!(
            err.to_string().contains("no `deb` source for trixie"),
            "{err}"
        );
        assert_eq!(for_mirror("http://m.test/debian/", "bookworm"), "deb http://m.test/debian bookworm main\ndeb http://m.test/debian bookworm-updates main\n");
    }
}
