//! The runner's account: its passwd entry and supplementary groups from the image's files, and the
//! passwordless sudo rule.
//!
//! This module must never create or change accounts; the image owns them. It reads `/etc/passwd`
//! and `/etc/group` directly (no NSS: the agent is static and the guest has no services).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::log::log;
use crate::{io_err, Fatal};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    /// Every group the user is in: the primary first, then those naming it in /etc/group.
    pub groups: Vec<u32>,
}

/// The `user`'s entry in passwd-format `text` (`name:pw:uid:gid:gecos:home:shell`).
pub fn parse_passwd(text: &str, user: &str) -> Option<(u32, u32, String)> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || f[0] != user {
            return None;
        }
        Some((f[2].parse().ok()?, f[3].parse().ok()?, f[5].to_string()))
    })
}

/// The gids of the groups in group-format `text` (`name:pw:gid:member,member`) listing `user`.
pub fn parse_groups(text: &str, user: &str, primary: u32) -> Vec<u32> {
    let mut out = vec![primary];
    for l in text.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || !f[3].split(',').any(|m| m.trim() == user) {
            continue;
        }
        if let Ok(gid) = f[2].parse() {
            if !out.contains(&gid) {
                out.push(gid);
            }
        }
    }
    out
}

pub fn lookup(user: &str) -> Result<Account, Fatal> {
    let passwd = fs::read_to_string("/etc/passwd").map_err(io_err("read /etc/passwd"))?;
    let (uid, gid, home) = parse_passwd(&passwd, user).ok_or_else(|| Fatal::NoUser {
        user: user.to_string(),
    })?;
    let group = fs::read_to_string("/etc/group").unwrap_or_default();
    Ok(Account {
        name: user.to_string(),
        uid,
        gid,
        home,
        groups: parse_groups(&group, user, gid),
    })
}

/// The gid of `group` in group-format `text`.
pub fn parse_gid(text: &str, group: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 3 || f[0] != group {
            return None;
        }
        f[2].parse().ok()
    })
}

/// Adds the image's `group` to the groups the runner's processes get (not to `/etc/group`: the
/// image owns its accounts). Used for `docker`: `docker.io` creates the group when it is
/// installed, and the image build adds the runner user afterwards, in no group but its own.
pub fn join_group(account: &mut Account, group: &str) {
    let text = fs::read_to_string("/etc/group").unwrap_or_default();
    match parse_gid(&text, group) {
        Some(gid) if account.groups.contains(&gid) => {}
        Some(gid) => {
            account.groups.push(gid);
            log!("{} gets group {group} ({gid})", account.name);
        }
        None => log!(
            "no group {group} in /etc/group; {} stays out of it",
            account.name
        ),
    }
}

pub fn sudo_rule(user: &str) -> String {
    format!("{user} ALL=(ALL) NOPASSWD:ALL\n")
}

/// Writes `/etc/sudoers.d/airlock-runner` (0440) if the image has sudo's drop-in directory.
pub fn allow_sudo(user: &str) -> Result<(), Fatal> {
    let dir = Path::new("/etc/sudoers.d");
    if !dir.is_dir() {
        return Ok(());
    }
    let path = dir.join("airlock-runner");
    let _ = fs::remove_file(&path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o440)
        .open(&path)
        .map_err(io_err(format!("create {}", path.display())))?;
    f.write_all(sudo_rule(user).as_bytes())
        .and_then(|()| f.set_permissions(fs::Permissions::from_mode(0o440)))
        .map_err(io_err(format!("write {}", path.display())))?;
    log!("sudo allowed for {user}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        runnerx:x:1002:1002::/home/runnerx:/bin/sh\n\
        runner:x:1001:1001:Runner,,,:/home/runner:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:runner\ndocker:x:999:alice,runner\n\
        runner:x:1001:\nusers:x:100:runnerx\nbroken\n";

    #[test]
    fn finds_the_exact_user() {
        assert_eq!(
            parse_passwd(PASSWD, "runner"),
            Some((1001, 1001, "/home/runner".to_string()))
        );
        assert_eq!(parse_passwd(PASSWD, "runne"), None);
        assert_eq!(parse_passwd("runner:x:abc:1::/h:/bin/sh\n", "runner"), None);
    }

    #[test]
    fn groups_start_with_the_primary_and_skip_prefix_matches() {
        assert_eq!(parse_groups(GROUP, "runner", 1001), vec![1001, 27, 999]);
        assert_eq!(parse_groups(GROUP, "nobody", 65534), vec![65534]);
    }

    #[test]
    fn gid_of_the_exact_group() {
        assert_eq!(parse_gid(GROUP, "docker"), Some(999));
        assert_eq!(parse_gid(GROUP, "docke"), None);
        assert_eq!(parse_gid("docker:x:abc:\n", "docker"), None);
    }

    #[test]
    fn sudo_rule_names_the_user() {
        assert_eq!(sudo_rule("runner"), "runner ALL=(ALL) NOPASSWD:ALL\n");
    }
}
