//! `[pool.egress]`: a pool's egress mode and allowlist, parsed into `airlock_core::egress`
//! (every entry checked: names, `*.` wildcards, addresses, ranges, ports; what no policy may
//! open refused with the reason).
//!
//! Every mode is enforced by the host's rules and airlock's resolver; until the egress proxy
//! checks TLS SNI and HTTP `Host`, block mode says so where it is chosen (an allowed name's
//! addresses are open to the sandbox, whatever else they serve).

use std::collections::HashSet;

use airlock_core::egress::{self, Allow, EgressMode, EgressPolicy, NamePattern};
use toml::{Table, Value};

use super::Walker;

const KEYS: &[&str] = &["mode", "allow"];

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
        EgressMode::Block => w.warn(
            &format!("{key}.mode"),
            "block mode lets a sandbox reach only the addresses airlock's resolver answered for \
             allowed names (and the addresses and ranges listed); until the egress proxy checks \
             TLS SNI and HTTP Host, a name sharing an address with an allowed one (a CDN) is \
             reachable too",
        ),
    }
    w.unknown(e, &key, KEYS);
    EgressPolicy { mode, allow }
}
