//! The `inet airlock` scripts against the real nftables, in a network namespace of the test's
//! own (the host's table is never touched): the base rules load and load again, attach and
//! detach are single transactions that leave nothing behind, a policy chain in use is never
//! swept, and a rewrite of the base rules keeps every attached link.

use std::process::{Command, Stdio};

use airlock_core::egress::{Allow, EgressMode, EgressPolicy};
use airlock_net::rules;

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("airlock-rules-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name}");
        Ns(name)
    }

    fn nft(&self, script: &str) -> Result<(), String> {
        use std::io::Write;
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = c.wait_with_output().unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn list(&self) -> String {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.0, "nft", "list", "table", "inet", "airlock",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn policy(mode: EgressMode, entries: &[&str]) -> EgressPolicy {
    EgressPolicy {
        proxy: None,
        mode,
        allow: entries.iter().map(|e| Allow::parse(e).unwrap()).collect(),
    }
}

#[test]
fn attach_detach_and_rewrite_against_real_nftables() {
    let ns = Ns::new("cycle");
    ns.nft(&rules::base_script()).expect("base rules load");
    ns.nft(&rules::base_script()).expect("and load again");
    let block = rules::policy_chain(&policy(
        EgressMode::Block,
        &["10.20.0.0/16", "192.168.1.7:5432", "example.com"],
    ));
    let open = rules::policy_chain(&policy(EgressMode::Open, &[]));
    ns.nft(&rules::attach_script("airl000000001", &block, 5354, true))
        .expect("attach");
    ns.nft(&rules::attach_script("airl000000002", &open, 5354, false))
        .expect("a second link, another policy");
    // Attaching the same link again (a retry) is a no-op, not an error.
    ns.nft(&rules::attach_script("airl000000001", &block, 5354, true))
        .expect("re-attach");
    let t = ns.list();
    assert!(
        t.contains(&format!("\"airl000000001\" : jump {}", block.name)),
        "{t}"
    );
    assert!(
        t.contains("192.168.1.7 meta l4proto { tcp, udp } th dport 5432 accept"),
        "{t}"
    );
    // Only the block-mode link's web traffic goes to the proxy.
    let proxied = t
        .lines()
        .skip_while(|l| !l.contains("set proxied"))
        .take(5)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        proxied.contains("\"airl000000001\"") && !proxied.contains("airl000000002"),
        "{proxied}"
    );
    assert!(
        t.contains("iifname @proxied tcp dport { 80, 443 } fib daddr type != local redirect to :"),
        "{t}"
    );
    // The daemon's start rewrites the base rules: attached links stay attached.
    ns.nft(&rules::base_script()).unwrap();
    let t = ns.list();
    assert!(t.contains("\"airl000000002\" : 5354"), "{t}");
    assert_eq!(t.matches("ip daddr 10.20.0.0/16 accept").count(), 1, "{t}");

    // A chain in use cannot be removed (what `sweep` relies on).
    assert!(ns
        .nft(&format!("delete chain inet airlock {}\n", block.name))
        .unwrap_err()
        .contains("busy"));
    ns.nft(&rules::detach_script("airl000000001", &block.name, 5354))
        .expect("detach");
    ns.nft(&rules::detach_script("airl000000001", &block.name, 5354))
        .expect("detaching twice is a no-op");
    ns.nft(&rules::detach_script("airl000000002", &open.name, 5354))
        .unwrap();
    let t = ns.list();
    assert!(
        !t.contains("airl000000001") && !t.contains("airl000000002"),
        "{t}"
    );
    ns.nft(&format!("delete chain inet airlock {}\n", block.name))
        .expect("an unused chain can go");
}
