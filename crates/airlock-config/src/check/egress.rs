//! `[pool.egress]`: a pool's egress mode and allowlist, parsed into `airlock_core::egress`
//! (every entry checked: names, `*.` wildcards, addresses, ranges, ports; what no policy may
//! open refused with the reason).
//!
//! Every mode is enforced by the host's rules, airlock's resolver and its egress proxy; block
//! mode with nothing allowed is a warning (the runner itself could not reach GitHub).

use std::collections::HashSet;

use airlock_core::egress::{self, Allow, EgressMode, EgressPolicy, NamePattern, UpstreamProxy};
use toml::{Table, Value};

use super::Walker;

const KEYS: &[&str] = &["mode", "allow", "proxy"];

/// Pool section `sec`'s `egress` table; the default (open, nothing listed) when absent.
pub(super) fn read(w: &mut Walker<'_>, t: &mut Table, sec: &str) -> EgressPolicy {
    let Some(v) = t.remove("egress") else {
        return EgressPolicy::default();
    };
    let key = format!("{sec}.egress");
    let Value::Table(mut e) = v else {
        w.error(&key, "expected a table: [pool.egress]");
        return EgressPolicy::default();
    };
    let mode = match w.take::<String>(&mut e, &key, "mode", "a string") {
        None => EgressMode::Open,
        Some(s) => EgressMode::parse(&s).unwrap_or_else(|| {
            w.error(
                &format!("{key}.mode"),
                format!("{s:?} is not a mode; expected \"open\", \"audit\" or \"block\""),
            );
            EgressMode::Open
        }),
    };
    let entries = w
        .take::<Vec<String>>(&mut e, &key, "allow", "a list of strings")
        .unwrap_or_default();
    let mut allow = Vec::new();
    let mut seen = HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        match Allow::parse(entry) {
            Ok(a) => {
                if let Allow::Name {
                    pattern: NamePattern::Below(d),
                    ..
                } = &a
                {
                    if egress::public_suffix(d) {
                        w.warn(
                            &format!("{key}.allow[{i}]"),
                            format!(
                                "{d:?} is a public suffix (Public Suffix List): each name below it may have \
                                 its own owner, and {entry:?} lets in all of them; name the hosts you need"
                            ),
                        );
                    }
                }
                if !seen.insert(a.to_string()) {
                    w.warn(
                        &format!("{key}.allow[{i}]"),
                        format!("{entry:?} is listed twice"),
                    );
                    continue;
                }
                allow.push(a);
            }
            Err(err) => w.error(&format!("{key}.allow[{i}]"), err.to_string()),
        }
    }
    let names = allow.iter().any(|a| matches!(a, Allow::Name { .. }));
    match mode {
        EgressMode::Open if names => w.warn(
            &format!("{key}.allow"),
            "names have no effect with mode = \"open\" (audit records against them, block \
             enforces them); addresses and ranges listed open private ranges in every mode",
        ),
        EgressMode::Open | EgressMode::Audit => {}
        EgressMode::Block if allow.is_empty() && entries.is_empty() => w.warn(
            &format!("{key}.mode"),
            "block mode with nothing allowed: the job's runner cannot reach GitHub either; list \
             at least github.com and *.actions.githubusercontent.com (or run the pool in audit \
             mode and let `airlock egress suggest` propose the list)",
        ),
        EgressMode::Block => {}
    }
    let proxy = w
        .take::<String>(&mut e, &key, "proxy", "a string")
        .and_then(|p| match UpstreamProxy::parse(&p) {
            Ok(u) => Some(u),
            Err(why) => {
                w.error(&format!("{key}.proxy"), format!("{p:?}: {why}"));
                None
            }
        });
    if proxy.is_some() && mode == EgressMode::Open {
        w.error(
            &format!("{key}.proxy"),
            "an upstream proxy needs mode = \"audit\" or \"block\" (airlock's proxy applies the \
             policy before the upstream; open mode has none)",
        );
    }
    w.unknown(e, &key, KEYS);
    EgressPolicy { mode, allow, proxy }
}
