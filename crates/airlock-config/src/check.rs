//! The walker behind `load`: every key read on its own, every problem collected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_core::{Labels, Scope};
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::lines::LineIndex;
use crate::*;

pub(crate) struct Walker<'a> {
    lines: LineIndex,
    base: &'a Path,
    diags: Vec<Diagnostic>,
}

impl Walker<'_> {
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
    fn secret_file(&mut self, key: &str, path: &Path) {
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

const DEFAULT_SUBNET: &str = "10.213.0.0/16";

fn valid_subnet(s: &str) -> bool {
    let Some((a, p)) = s.split_once('/') else {
        return false;
    };
    let (Ok(a), Ok(p)) = (a.parse::<std::net::Ipv4Addr>(), p.parse::<u8>()) else {
        return false;
    };
    (8..=28).contains(&p) && u32::from(a) & !(u32::MAX << (32 - p)) == 0
}

const SERVER_KEYS: &[&str] = &[
    "listen",
    "state_dir",
    "drain_grace",
    "job_log_max_mib",
    "job_logs_keep",
    "history_retention",
    "max_parallel_ops",
    "sandbox_nice",
];
const CONTAINER_KEYS: &[&str] = &["runtime", "subnet", "uid_base", "dns"];
const GITHUB_KEYS: &[&str] = &[
    "api_url",
    "webhook_secret_file",
    "poll_interval",
    "request_timeout",
    "write_interval",
    "token_file",
    "app_id",
    "client_id",
    "private_key_file",
    "installation_id",
];
const POOL_KEYS: &[&str] = &[
    "name",
    "scope",
    "labels",
    "runner_group",
    "backend",
    "microvm",
    "runner_command",
    "image",
    "runtime",
    "packages",
    "cpus",
    "memory_mib",
    "pids_max",
    "io_weight",
    "min_idle",
    "max_runners",
    "jit_stock",
    "jit_stock_refresh",
    "boot_timeout",
    "idle_timeout",
    "job_timeout",
];

/// Parses and validates config text; relative paths resolve against `base`.
pub fn load_str(text: &str, base: &Path) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut w = Walker {
        lines: LineIndex::new(text),
        base,
        diags: Vec::new(),
    };
    let mut root: Table = match text.parse::<Table>() {
        Ok(t) => t,
        Err(e) => {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            return Err(vec![Diagnostic {
                severity: Severity::Error,
                key: "(syntax)".into(),
                line,
                message: e.message().to_string(),
            }]);
        }
    };

    // [server]
    let mut t = w.table(&mut root, "server");
    let listen = match w.take::<String>(
        &mut t,
        "server",
        "listen",
        "an address such as \"127.0.0.1:8080\"",
    ) {
        Some(s) => match s.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                w.error(
                    "server.listen",
                    format!("{s:?} is not an IP address and port such as \"127.0.0.1:8080\""),
                );
                DEFAULT_LISTEN.parse().unwrap()
            }
        },
        None => DEFAULT_LISTEN.parse().unwrap(),
    };
    let state_dir = w
        .path(&mut t, "server", "state_dir")
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
    let drain_grace = w.duration(
        &mut t,
        "server",
        "drain_grace",
        Duration::from_secs(15 * 60),
    );
    let job_log_max_mib = w
        .take::<u64>(&mut t, "server", "job_log_max_mib", "a whole number of MiB")
        .unwrap_or(16);
    if job_log_max_mib == 0 || job_log_max_mib > 1 << 20 {
        w.error(
            "server.job_log_max_mib",
            format!("{job_log_max_mib} is out of range (1 to 1048576)"),
        );
    }
    let job_logs_keep = w
        .take::<usize>(&mut t, "server", "job_logs_keep", "a whole number of logs")
        .unwrap_or(1000);
    let history_retention = w.duration(
        &mut t,
        "server",
        "history_retention",
        Duration::from_secs(14 * 24 * 3600),
    );
    let max_parallel_ops = w
        .take::<usize>(
            &mut t,
            "server",
            "max_parallel_ops",
            "a whole number of operations",
        )
        .unwrap_or(16);
    if !(1..=1024).contains(&max_parallel_ops) {
        w.error(
            "server.max_parallel_ops",
            format!("{max_parallel_ops} is out of range (1 to 1024)"),
        );
    }
    let sandbox_nice = w
        .take::<i64>(&mut t, "server", "sandbox_nice", "a niceness from 0 to 19")
        .unwrap_or(DEFAULT_SANDBOX_NICE);
    if !(0..=19).contains(&sandbox_nice) {
        w.error(
            "server.sandbox_nice",
            format!(
                "{sandbox_nice} is out of range (0 to 19; 0 runs jobs at the daemon's priority)"
            ),
        );
    }
    w.unknown(t, "server", SERVER_KEYS);
    if state_dir.to_string_lossy().contains([',', ':']) {
        w.error(
            "server.state_dir",
            "may not contain ',' or ':' (container sandboxes mount overlays below it)",
        );
    }
    let server = ServerConfig {
        listen,
        state_dir,
        drain_grace,
        job_log_max_bytes: job_log_max_mib.clamp(1, 1 << 20) << 20,
        job_logs_keep,
        history_retention,
        max_parallel_ops: max_parallel_ops.clamp(1, 1024),
        sandbox_nice: sandbox_nice.clamp(0, 19) as i32,
    };

    // [container]
    let mut t = w.table(&mut root, "container");
    let runtime = w.take::<String>(&mut t, "container", "runtime", "a runtime name or path");
    if let Some(r) = &runtime {
        if r.is_empty() {
            w.error(
                "container.runtime",
                "empty; leave it out to probe crun, runc and youki",
            );
        }
    }
    let subnet = w
        .take::<String>(
            &mut t,
            "container",
            "subnet",
            "an IPv4 network such as \"10.213.0.0/16\"",
        )
        .unwrap_or_else(|| DEFAULT_SUBNET.to_string());
    if !valid_subnet(&subnet) {
        w.error(
            "container.subnet",
            format!("{subnet:?} is not an IPv4 network with a prefix from /8 to /28 and no host bits set"),
        );
    }
    let uid_base = w
        .take::<u32>(&mut t, "container", "uid_base", "a uid")
        .unwrap_or(100_000);
    if uid_base == 0 || uid_base > u32::MAX - 65536 {
        w.error(
            "container.uid_base",
            "must be above 0 (root inside may not be root outside) and leave room for 65536 ids",
        );
    }
    let dns_raw = w
        .take::<Vec<String>>(&mut t, "container", "dns", "a list of IPv4 addresses")
        .unwrap_or_default();
    let mut dns = Vec::new();
    for d in dns_raw {
        match d.parse::<std::net::Ipv4Addr>() {
            Ok(a) if a.is_loopback() => w.error(
                "container.dns",
                format!("{a} is a loopback address, which a sandbox cannot reach"),
            ),
            Ok(a) => dns.push(a),
            Err(_) => w.error("container.dns", format!("{d:?} is not an IPv4 address")),
        }
    }
    w.unknown(t, "container", CONTAINER_KEYS);
    let container = ContainerSettings {
        runtime,
        subnet,
        uid_base,
        dns,
    };

    let microvm = crate::microvm::settings(&mut w, &mut root);

    // [github]
    let mut t = w.table(&mut root, "github");
    let api_url = w
        .take::<String>(&mut t, "github", "api_url", "a URL")
        .unwrap_or_else(|| DEFAULT_API_URL.to_string());
    if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
        w.error(
            "github.api_url",
            format!("{api_url:?} must start with https:// (or http:// for a local emulator)"),
        );
    }
    let api_url = api_url.trim_end_matches('/').to_string();
    let webhook_secret_file = w.path(&mut t, "github", "webhook_secret_file");
    let poll_interval = w.duration(&mut t, "github", "poll_interval", Duration::from_secs(60));
    let request_timeout = w.duration(&mut t, "github", "request_timeout", Duration::from_secs(30));
    // Zero: writes one after another with no pause (a GHES without rate limits).
    let write_interval = w.duration_from(
        &mut t,
        "github",
        "write_interval",
        airlock_core::DEFAULT_WRITE_INTERVAL,
        true,
    );
    if write_interval > Duration::from_secs(60) {
        w.error(
            "github.write_interval",
            "must be at most 60s (every create and deregistration waits for it)",
        );
    }
    let token_file = w.path(&mut t, "github", "token_file");
    let app_id = w.take::<u64>(&mut t, "github", "app_id", "a number");
    let client_id = w.take::<String>(
        &mut t,
        "github",
        "client_id",
        "a string such as \"Iv1.abc\"",
    );
    let private_key_file = w.path(&mut t, "github", "private_key_file");
    let installation_id = w.take::<u64>(&mut t, "github", "installation_id", "a number");
    w.unknown(t, "github", GITHUB_KEYS);

    if app_id.is_some() && client_id.is_some() {
        w.error("github.client_id", "set app_id or client_id, not both");
    }
    let issuer = client_id.or(app_id.map(|i| i.to_string()));
    let auth = match (token_file, issuer, private_key_file) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            w.error(
                "github.token_file",
                "set token_file or a GitHub App (app_id/client_id + private_key_file), not both",
            );
            None
        }
        (Some(token_file), None, None) => {
            w.secret_file("github.token_file", &token_file);
            Some(Auth::Token { token_file })
        }
        (None, Some(issuer), Some(private_key_file)) => {
            w.secret_file("github.private_key_file", &private_key_file);
            Some(Auth::App {
                issuer,
                private_key_file,
                installation_id,
            })
        }
        (None, Some(_), None) => {
            w.error(
                "github.private_key_file",
                "a GitHub App needs private_key_file",
            );
            None
        }
        (None, None, Some(_)) => {
            w.error(
                "github.app_id",
                "private_key_file is set but neither app_id nor client_id is",
            );
            None
        }
        (None, None, None) => {
            w.error(
                "github",
                "no credentials: set token_file, or app_id (or client_id) and private_key_file",
            );
            None
        }
    };
    match &webhook_secret_file {
        Some(p) => w.secret_file("github.webhook_secret_file", p),
        None => w.warn(
            "github.webhook_secret_file",
            "not set: every webhook will be refused and queued jobs are found only by polling",
        ),
    }

    // [[pool]]
    let pools_raw = match root.remove("pool") {
        None => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => {
            w.error("pool", "expected one or more [[pool]] tables");
            Vec::new()
        }
    };
    if pools_raw.is_empty() {
        w.error("pool", "no pools: add at least one [[pool]]");
    }
    let mut pools = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut label_sets: HashMap<Labels, String> = HashMap::new();
    for (i, v) in pools_raw.into_iter().enumerate() {
        let sec = format!("pool[{i}]");
        let Value::Table(mut t) = v else {
            w.error(&sec, "expected a table");
            continue;
        };
        let name = w
            .take::<String>(&mut t, &sec, "name", "a string")
            .unwrap_or_default();
        if name.is_empty() {
            w.error(&format!("{sec}.name"), "every pool needs a name");
        } else if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            || name.len() > 40
        {
            w.error(
                &format!("{sec}.name"),
                format!("{name:?}: use 1-40 of a-z, 0-9 and '-' (it becomes part of runner names)"),
            );
        } else if let Some(j) = names.insert(name.clone(), i) {
            w.error(
                &format!("{sec}.name"),
                format!("{name:?} is already the name of pool[{j}]"),
            );
        }
        let scope = match w.take::<String>(
            &mut t,
            &sec,
            "scope",
            "a string such as \"repo:OWNER/NAME\"",
        ) {
            Some(s) => match Scope::parse(&s) {
                Ok(s) => Some(s),
                Err(e) => {
                    w.error(&format!("{sec}.scope"), e);
                    None
                }
            },
            None => {
                w.error(
                    &format!("{sec}.scope"),
                    "missing: set repo:OWNER/NAME, org:NAME or enterprise:SLUG",
                );
                None
            }
        };
        let labels = w
            .take::<Vec<String>>(&mut t, &sec, "labels", "a list of strings")
            .unwrap_or_default();
        if labels.iter().all(|l| l.trim().is_empty()) {
            w.error(
                &format!("{sec}.labels"),
                "empty: a pool without labels can never match a job",
            );
        } else if labels.len() > 100 {
            w.error(
                &format!("{sec}.labels"),
                "GitHub allows at most 100 labels per runner",
            );
        } else {
            let set = Labels::new(&labels);
            if let Some(other) = label_sets.insert(set.clone(), name.clone()) {
                w.warn(
                    &format!("{sec}.labels"),
                    format!("pool {other:?} serves the identical label set {set}; the one listed first gets every job"),
                );
            }
        }
        let runner_group = w
            .take::<String>(&mut t, &sec, "runner_group", "a string")
            .unwrap_or_else(|| "Default".into());
        let backend = match w
            .take::<String>(&mut t, &sec, "backend", "a string")
            .as_deref()
        {
            None | Some("process") => BackendKind::Process,
            Some("container") => BackendKind::Container,
            Some("microvm") => BackendKind::Microvm,
            Some(other) => {
                w.error(
                    &format!("{sec}.backend"),
                    format!("{other:?} is not a backend; expected \"container\", \"microvm\" or \"process\""),
                );
                BackendKind::Process
            }
        };
        let microvm = if backend == BackendKind::Microvm {
            Some(crate::microvm::pool(&mut w, &mut t, &sec))
        } else {
            if t.contains_key("microvm") {
                t.remove("microvm");
                w.error(
                    &format!("{sec}.microvm"),
                    format!("only for backend = \"microvm\" (this pool's is \"{backend}\")"),
                );
            }
            None
        };
        let image = w.take::<String>(&mut t, &sec, "image", "an image name or NAME@DIGEST");
        // Which names run is the container backend's probe to say (at start, with its reason).
        let runtime = w.take::<String>(&mut t, &sec, "runtime", "an OCI runtime name or path");
        if let Some(r) = &runtime {
            if backend != BackendKind::Container {
                w.error(
                    &format!("{sec}.runtime"),
                    format!("only for backend = \"container\" (this pool's is \"{backend}\")"),
                );
            } else if r.trim().is_empty() {
                w.error(
                    &format!("{sec}.runtime"),
                    "empty; leave it out for the host-wide [container] runtime, or name one such as \"runsc\"",
                );
            }
        }
        let runtime = runtime.filter(|r| backend == BackendKind::Container && !r.trim().is_empty());
        let runner_command = match backend {
            BackendKind::Process => {
                let c = w
                    .path(&mut t, &sec, "runner_command")
                    .unwrap_or_else(|| PathBuf::from("/opt/actions-runner/run.sh"));
                check_executable(&mut w, &format!("{sec}.runner_command"), &c);
                if image.is_some() {
                    w.warn(
                        &format!("{sec}.image"),
                        "ignored: the process backend runs on the host, not in an image",
                    );
                }
                Some(c)
            }
            BackendKind::Container | BackendKind::Microvm => {
                let c = w
                    .take::<String>(&mut t, &sec, "runner_command", "a path inside the image")
                    .map(PathBuf::from);
                if c.as_ref().is_some_and(|c| !c.is_absolute()) {
                    w.error(
                        &format!("{sec}.runner_command"),
                        "must be an absolute path inside the image",
                    );
                }
                match &image {
                    None => w.error(
                        &format!("{sec}.image"),
                        format!("a {backend} pool needs an image: build one with `airlock image build NAME` and set image = \"NAME\""),
                    ),
                    Some(i) => {
                        let name = i.split('@').next().unwrap_or_default();
                        if !server.state_dir.join("images").join(name).is_dir() {
                            w.warn(
                                &format!("{sec}.image"),
                                format!("no image {name:?} has been built yet; run: airlock image build {name}"),
                            );
                        }
                    }
                }
                c
            }
        };
        let packages = w
            .take::<Vec<String>>(&mut t, &sec, "packages", "a list of Debian package names")
            .unwrap_or_default();
        for p in &packages {
            let ok = p.len() >= 2
                && p.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.')
                })
                && p.starts_with(|c: char| c.is_ascii_alphanumeric());
            if !ok {
                w.error(
                    &format!("{sec}.packages"),
                    format!("{p:?} is not a Debian package name"),
                );
            }
        }
        if backend == BackendKind::Process && !packages.is_empty() {
            w.warn(
                &format!("{sec}.packages"),
                "ignored: the process backend runs on the host, not in an image",
            );
        }
        let cpus = w.take::<f64>(&mut t, &sec, "cpus", "a number of CPUs such as 2 or 0.5");
        if cpus.is_some_and(|c| !(0.01..=1024.0).contains(&c)) {
            w.error(&format!("{sec}.cpus"), "must be between 0.01 and 1024");
        }
        if backend == BackendKind::Microvm && cpus.is_some_and(|c| c.fract() != 0.0) {
            w.error(
                &format!("{sec}.cpus"),
                "a microVM has whole virtual CPUs: write a whole number",
            );
        }
        let memory_mib = w
            .take::<u64>(&mut t, &sec, "memory_mib", "a whole number of MiB")
            .or((backend == BackendKind::Microvm).then_some(crate::microvm::DEFAULT_MEMORY_MIB));
        if memory_mib.is_some_and(|m| m < 16) {
            w.error(&format!("{sec}.memory_mib"), "must be at least 16");
        }
        let pids_max = w.take::<i64>(&mut t, &sec, "pids_max", "a whole number");
        if pids_max.is_some_and(|p| p < 8) {
            w.error(&format!("{sec}.pids_max"), "must be at least 8");
        }
        let io_weight = w.take::<u16>(&mut t, &sec, "io_weight", "a weight from 10 to 1000");
        if io_weight.is_some_and(|x| !(10..=1000).contains(&x)) {
            w.error(&format!("{sec}.io_weight"), "must be from 10 to 1000");
        }
        if backend == BackendKind::Process
            && (cpus.is_some() || memory_mib.is_some() || pids_max.is_some() || io_weight.is_some())
        {
            w.warn(
                &sec,
                "cpus, memory_mib, pids_max and io_weight are ignored by the process backend",
            );
        }
        if backend == BackendKind::Microvm && (pids_max.is_some() || io_weight.is_some()) {
            w.warn(
                &sec,
                "pids_max and io_weight are ignored by microVM pools: a VM's limits are its vCPUs, memory and disk_gib",
            );
        }
        let min_idle = w
            .take::<u32>(&mut t, &sec, "min_idle", "a whole number ≥ 0")
            .unwrap_or(0);
        let max_runners = w
            .take::<u32>(&mut t, &sec, "max_runners", "a whole number ≥ 1")
            .unwrap_or(8);
        if max_runners == 0 {
            w.error(&format!("{sec}.max_runners"), "must be at least 1");
        }
        if min_idle > max_runners {
            w.error(
                &format!("{sec}.min_idle"),
                format!("{min_idle} is more than max_runners ({max_runners})"),
            );
        }
        let jit_stock = w
            .take::<u32>(&mut t, &sec, "jit_stock", "a whole number ≥ 0")
            .unwrap_or(0);
        if jit_stock > 1000 {
            w.error(
                &format!("{sec}.jit_stock"),
                "must be at most 1000 (GitHub refuses registrations past 10,000 runners)",
            );
        }
        let jit_stock_refresh = w.duration(
            &mut t,
            &sec,
            "jit_stock_refresh",
            Duration::from_secs(12 * 3600),
        );
        if jit_stock_refresh >= Duration::from_secs(24 * 3600) || jit_stock_refresh.is_zero() {
            w.error(
                &format!("{sec}.jit_stock_refresh"),
                "must be more than 0s and less than 24h: GitHub removes a JIT runner that never ran a job after a day",
            );
        }
        let boot_timeout = w.duration(&mut t, &sec, "boot_timeout", Duration::from_secs(300));
        let idle_timeout = w.duration(&mut t, &sec, "idle_timeout", Duration::from_secs(600));
        let job_timeout = w.duration(&mut t, &sec, "job_timeout", Duration::from_secs(6 * 3600));
        w.unknown(t, &sec, POOL_KEYS);
        if let Some(scope) = scope {
            pools.push(PoolConfig {
                name,
                scope,
                labels,
                runner_group,
                backend,
                runner_command,
                image,
                runtime,
                microvm,
                packages,
                cpus,
                memory_mib,
                pids_max,
                io_weight,
                min_idle,
                max_runners,
                jit_stock,
                jit_stock_refresh,
                boot_timeout,
                idle_timeout,
                job_timeout,
            });
        }
    }
    for k in root.keys() {
        w.error(
            k,
            "unknown top-level key; expected [server], [github], [container], [microvm] or [[pool]]",
        );
    }

    let has_error = w.diags.iter().any(|d| d.severity == Severity::Error);
    match (auth, has_error) {
        (Some(auth), false) => Ok((
            Config {
                server,
                container,
                microvm,
                github: GitHubConfig {
                    api_url,
                    webhook_secret_file,
                    poll_interval,
                    request_timeout,
                    write_interval,
                    auth,
                },
                pools,
            },
            w.diags,
        )),
        _ => Err(w.diags),
    }
}

fn check_executable(w: &mut Walker<'_>, key: &str, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) => w.error(key, format!("cannot use {}: {e}", path.display())),
        Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => {
            w.error(key, format!("{} is not an executable file", path.display()))
        }
        Ok(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir_with_secrets() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (f, mode) in [("token", 0o600), ("secret", 0o600), ("open", 0o644)] {
            let p = d.path().join(f);
            std::fs::write(&p, "x").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        d
    }

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:9090"
state_dir = "state"

[github]
api_url = "http://127.0.0.1:1234/"
webhook_secret_file = "secret"
poll_interval = "3s"
token_file = "token"

[[pool]]
name = "small"
scope = "repo:octo/hello"
labels = ["self-hosted", "linux"]
runner_command = "/bin/sh"
max_runners = 3

[[pool]]
name = "org-big"
scope = "org:octo"
labels = ["self-hosted", "big"]
runner_command = "/bin/sh"
boot_timeout = "90s"
"#;

    #[test]
    fn a_good_config_loads_with_defaults() {
        let d = dir_with_secrets();
        let (c, diags) = load_str(GOOD, d.path()).unwrap();
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.server.state_dir, d.path().join("state"));
        assert_eq!(c.github.api_url, "http://127.0.0.1:1234");
        assert_eq!(c.github.poll_interval, Duration::from_secs(3));
        assert_eq!(c.pools.len(), 2);
        assert_eq!(c.pools[0].runner_group, "Default");
        assert_eq!(c.pools[0].idle_timeout, Duration::from_secs(600));
        assert_eq!(c.pools[1].boot_timeout, Duration::from_secs(90));
        assert_eq!(c.pools[1].max_runners, 8);
        assert!(matches!(c.github.auth, Auth::Token { .. }));
    }

    #[test]
    fn write_pacing_and_the_jit_stock_are_checked() {
        let d = dir_with_secrets();
        let (c, _) = load_str(GOOD, d.path()).unwrap();
        assert_eq!(
            c.github.write_interval,
            airlock_core::DEFAULT_WRITE_INTERVAL
        );
        assert_eq!(
            (c.pools[0].jit_stock, c.pools[0].jit_stock_refresh),
            (0, Duration::from_secs(12 * 3600))
        );
        let with = |github: &str, pool: &str| {
            GOOD.replace(
                "token_file = \"token\"",
                &format!("token_file = \"token\"\n{github}"),
            )
            .replace("max_runners = 3", &format!("max_runners = 3\n{pool}"))
        };
        let (c, _) = load_str(
            &with(
                "write_interval = \"0s\"",
                "jit_stock = 5\njit_stock_refresh = \"1h\"",
            ),
            d.path(),
        )
        .unwrap();
        assert_eq!(
            c.github.write_interval,
            Duration::ZERO,
            "zero turns the pause off"
        );
        assert_eq!(
            (c.pools[0].jit_stock, c.pools[0].jit_stock_refresh),
            (5, Duration::from_secs(3600))
        );
        let mut failures = Vec::new();
        for (github, pool, key) in [
            ("write_interval = \"61s\"", "", "github.write_interval"),
            ("write_interval = \"soon\"", "", "github.write_interval"),
            ("", "jit_stock = 1001", "pool[0].jit_stock"),
            ("", "jit_stock = -1", "pool[0].jit_stock"),
            (
                "",
                "jit_stock_refresh = \"24h\"",
                "pool[0].jit_stock_refresh",
            ),
            (
                "",
                "jit_stock_refresh = \"0s\"",
                "pool[0].jit_stock_refresh",
            ),
        ] {
            match load_str(&with(github, pool), d.path()) {
                Ok(_) => failures.push(format!("{github}{pool}: accepted")),
                Err(diags) if !diags.iter().any(|d| d.key == key) => {
                    failures.push(format!("{github}{pool}: no error for {key}: {diags:?}"))
                }
                Err(_) => {}
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn every_problem_is_reported_at_once_with_key_and_line() {
        let d = dir_with_secrets();
        let bad = r#"
[server]
listen = "nonsense"
colour = "blue"
max_parallel_ops = 0
sandbox_nice = -3

[github]
poll_interval = "soon"
token_file = "open"
webhook_secret_file = "missing"

[[pool]]
name = "a"
scope = "repo:octo/hello"
labels = []
runner_command = "/bin/sh"

[[pool]]
name = "b"
scope = "team:x"
labels = ["x"]
min_idle = 5
max_runners = 2
runner_command = "/nonexistent/runner"
backend = "kvm"
boot_timeout = 7
"#;
        let diags = load_str(bad, d.path()).unwrap_err();
        let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        let want = [
            ("server.listen", 3),
            ("server.colour", 4),
            ("server.max_parallel_ops", 5),
            ("server.sandbox_nice", 6),
            ("github.poll_interval", 9),
            ("github.token_file", 10),
            ("github.webhook_secret_file", 11),
            ("pool[0].labels", 16),
            ("pool[1].scope", 21),
            ("pool[1].min_idle", 23),
            ("pool[1].runner_command", 25),
            ("pool[1].backend", 26),
            ("pool[1].boot_timeout", 27),
        ];
        for (key, line) in want {
            assert!(
                diags
                    .iter()
                    .any(|d| d.key == key && d.line == Some(line) && d.severity == Severity::Error),
                "no error for {key} at line {line} in:\n{}",
                text.join("\n")
            );
        }
        assert!(
            text.iter()
                .any(|t| t.contains("readable by other users (mode 0644)")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("can never match")),
            "{text:?}"
        );
    }

    #[test]
    fn microvm_pools_and_the_microvm_section() {
        let d = dir_with_secrets();
        std::fs::create_dir_all(d.path().join("state/images/vm")).unwrap();
        std::fs::write(d.path().join("bzImage"), b"kernel").unwrap();
        let good = format!(
            "{GOOD}\n[microvm]\nqemu = \"/opt/qemu/bin/qemu-system-x86_64\"\nuid_base = 300000\n\n\
             [[pool]]\nname = \"vm\"\nscope = \"org:octo\"\nlabels = [\"vm\"]\nbackend = \"microvm\"\n\
             image = \"vm\"\ncpus = 2\n\n[pool.microvm]\naccel = \"tcg\"\ndisk_gib = 4\n\n\
             [[pool]]\nname = \"fc\"\nscope = \"org:octo\"\nlabels = [\"fc\"]\nbackend = \"microvm\"\n\
             image = \"vm\"\nmemory_mib = 512\n\n[pool.microvm]\ndriver = \"firecracker\"\nkernel = \"./bzImage\"\n"
        );
        let (c, diags) = load_str(&good, d.path()).unwrap();
        assert!(diags.is_empty(), "{diags:?}");
        let vm = &c.pools[2];
        assert_eq!(vm.backend, BackendKind::Microvm);
        assert_eq!(
            vm.microvm,
            Some(MicrovmPool {
                driver: VmDriver::Qemu,
                accel: Accel::Tcg,
                kernel: None,
                disk_gib: 4
            })
        );
        assert_eq!(
            (vm.cpus, vm.memory_mib),
            (Some(2.0), Some(2048)),
            "default guest RAM"
        );
        let fc = c.pools[3].microvm.as_ref().unwrap();
        assert_eq!(
            (fc.driver, fc.accel, fc.disk_gib),
            (VmDriver::Firecracker, Accel::Auto, 10)
        );
        assert_eq!(
            fc.kernel.as_deref(),
            Some(d.path().join("./bzImage").to_str().unwrap())
        );
        assert_eq!(c.pools[3].memory_mib, Some(512));
        assert_eq!(
            c.microvm.qemu,
            PathBuf::from("/opt/qemu/bin/qemu-system-x86_64")
        );
        assert_eq!(
            c.microvm.firecracker,
            PathBuf::from("firecracker"),
            "looked up in PATH"
        );
        assert_eq!(c.microvm.uid_base, 300_000);
        assert!(c.pools[0].microvm.is_none());

        let bad = format!(
            "{GOOD}\n[microvm]\nuid_base = 5\nbochs = \"yes\"\n\n\
             [[pool]]\nname = \"vm\"\nscope = \"org:octo\"\nlabels = [\"vm\"]\nbackend = \"microvm\"\n\
             image = \"vm\"\ncpus = 1.5\n\n[pool.microvm]\ndriver = \"bochs\"\naccel = \"warp\"\n\
             kernel = \"/no/such/bzImage\"\ndisk_gib = 0\nballoon = true\n\n\
             [[pool]]\nname = \"ct\"\nscope = \"org:octo\"\nlabels = [\"ct\"]\nbackend = \"container\"\n\
             image = \"vm\"\n\n[pool.microvm]\ndriver = \"qemu\"\n\n\
             [[pool]]\nname = \"fc\"\nscope = \"org:octo\"\nlabels = [\"fc\"]\nbackend = \"microvm\"\n\
             image = \"vm\"\n\n[pool.microvm]\ndriver = \"firecracker\"\naccel = \"tcg\"\n"
        );
        let diags = load_str(&bad, d.path()).unwrap_err();
        let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        let base = GOOD.lines().count();
        for (key, line, says) in [
            ("microvm.uid_base", base + 3, "at least 1000"),
            ("microvm.bochs", base + 4, "unknown key"),
            ("pool[2].cpus", base + 12, "whole number"),
            ("pool[2].microvm.driver", base + 15, "not a driver"),
            ("pool[2].microvm.accel", base + 16, "not an accelerator"),
            ("pool[2].microvm.kernel", base + 17, "is not a file"),
            ("pool[2].microvm.disk_gib", base + 18, "from 1 to 16384"),
            ("pool[2].microvm.balloon", base + 19, "unknown key"),
            (
                "pool[3].microvm",
                base + 28,
                "only for backend = \"microvm\"",
            ),
            (
                "pool[4].microvm.accel",
                base + 40,
                "only the qemu driver can emulate",
            ),
        ] {
            assert!(
                diags.iter().any(|d| d.key == key
                    && d.severity == Severity::Error
                    && d.line == Some(line)
                    && d.message.contains(says)),
                "no error {says:?} for {key} (line {line}) in:\n{}",
                text.join("\n")
            );
        }
    }

    #[test]
    fn container_pools_and_the_container_section() {
        let d = dir_with_secrets();
        std::fs::create_dir_all(d.path().join("state/images/runner")).unwrap();
        let good = format!(
            "{GOOD}\n[container]\nruntime = \"runc\"\nsubnet = \"10.9.0.0/16\"\ndns = [\"9.9.9.9\"]\n\n\
             [[pool]]\nname = \"box\"\nscope = \"org:octo\"\nlabels = [\"box\"]\nbackend = \"container\"\n\
             image = \"runner\"\ncpus = 1.5\nmemory_mib = 2048\npids_max = 512\n"
        );
        let (c, diags) = load_str(&good, d.path()).unwrap();
        assert!(diags.is_empty(), "{diags:?}");
        let p = &c.pools[2];
        assert_eq!(p.backend, BackendKind::Container);
        assert_eq!(p.image.as_deref(), Some("runner"));
        assert_eq!(p.runner_command, None, "taken from the image's manifest");
        assert_eq!(
            (p.cpus, p.memory_mib, p.pids_max),
            (Some(1.5), Some(2048), Some(512))
        );
        assert_eq!(c.container.runtime.as_deref(), Some("runc"));
        assert_eq!(c.container.subnet, "10.9.0.0/16");
        assert_eq!(c.container.uid_base, 100_000);
        assert_eq!(c.server.job_log_max_bytes, 16 << 20);

        let bad = r#"
[server]
state_dir = "state,x"
job_log_max_mib = 0

[github]
token_file = "token"
webhook_secret_file = "secret"

[container]
subnet = "10.9.0.1/16"
uid_base = 0
dns = ["127.0.0.53", "nine"]
colour = "red"

[[pool]]
name = "box"
scope = "org:octo"
labels = ["box"]
backend = "container"
cpus = 0
memory_mib = 1
pids_max = 2
io_weight = 5000
runner_command = "relative/run.sh"

[[pool]]
name = "later"
scope = "org:octo"
labels = ["later"]
backend = "container"
image = "never-built"
"#;
        let diags = load_str(bad, d.path()).unwrap_err();
        let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        for (key, line) in [
            ("server.state_dir", 3),
            ("server.job_log_max_mib", 4),
            ("container.subnet", 11),
            ("container.uid_base", 12),
            ("container.dns", 13),
            ("container.colour", 14),
            ("pool[0].image", 16),
            ("pool[0].cpus", 21),
            ("pool[0].memory_mib", 22),
            ("pool[0].pids_max", 23),
            ("pool[0].io_weight", 24),
            ("pool[0].runner_command", 25),
        ] {
            assert!(
                diags.iter().any(|d| d.key == key
                    && d.severity == Severity::Error
                    && (d.line == Some(line) || key == "pool[0].image")),
                "no error for {key} (line {line}) in:\n{}",
                text.join("\n")
            );
        }
        assert!(
            diags.iter().any(|d| d.key == "pool[1].image"
                && d.severity == Severity::Warning
                && d.message.contains("airlock image build never-built")),
            "{text:?}"
        );
    }

    #[test]
    fn a_container_pool_may_name_its_own_runtime() {
        let d = dir_with_secrets();
        std::fs::create_dir_all(d.path().join("state/images/runner")).unwrap();
        let pool = |name: &str, backend: &str, runtime: &str| {
            format!(
                "\n[[pool]]\nname = \"{name}\"\nscope = \"org:octo\"\nlabels = [\"{name}\"]\n\
                 backend = \"{backend}\"\nimage = \"runner\"\n{runtime}"
            )
        };
        let good = format!(
            "{GOOD}{}{}{}",
            pool("gv", "container", "runtime = \"runsc\"\n"),
            pool("odd", "container", "runtime = \"/opt/no-such-runtime\"\n"),
            pool("plain", "container", ""),
        );
        let (c, diags) = load_str(&good, d.path()).unwrap();
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(c.pools[2].runtime.as_deref(), Some("runsc"));
        // Unknown names are the probe's to refuse, not the config's.
        assert_eq!(c.pools[3].runtime.as_deref(), Some("/opt/no-such-runtime"));
        assert_eq!(
            c.pools[4].runtime, None,
            "the host-wide [container] runtime"
        );
        assert_eq!(c.pools[0].runtime, None);

        let bad = format!(
            "{GOOD}{}{}{}",
            pool("empty", "container", "runtime = \"\"\n"),
            pool("vm", "microvm", "runtime = \"runsc\"\n"),
            pool("num", "container", "runtime = 3\n"),
        );
        let diags = load_str(&bad, d.path()).unwrap_err();
        let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        let line_of = |needle: &str, nth: usize| {
            bad.lines()
                .enumerate()
                .filter(|(_, l)| l.starts_with(needle))
                .nth(nth)
                .map(|(i, _)| i + 1)
        };
        for (key, line, what) in [
            ("pool[2].runtime", line_of("runtime = \"\"", 0), "empty"),
            (
                "pool[3].runtime",
                line_of("runtime = \"runsc\"", 0),
                "only for backend = \"container\" (this pool's is \"microvm\")",
            ),
            (
                "pool[4].runtime",
                line_of("runtime = 3", 0),
                "expected an OCI runtime name or path",
            ),
        ] {
            assert!(
                diags.iter().any(|d| d.key == key
                    && d.severity == Severity::Error
                    && d.line == line
                    && d.message.contains(what)),
                "no error for {key} (line {line:?}, {what}) in:\n{}",
                text.join("\n")
            );
        }
    }

    #[test]
    fn warnings_for_identical_label_sets_and_no_webhook_secret() {
        let d = dir_with_secrets();
        let text = r#"
[github]
token_file = "token"
[[pool]]
name = "a"
scope = "repo:o/r"
labels = ["Linux", "x64"]
runner_command = "/bin/sh"
[[pool]]
name = "b"
scope = "repo:o/r"
labels = ["x64", "linux"]
runner_command = "/bin/sh"
"#;
        let (_, diags) = load_str(text, d.path()).unwrap();
        assert_eq!(diags.len(), 2, "{diags:?}");
        assert!(diags.iter().all(|d| d.severity == Severity::Warning));
        assert!(diags
            .iter()
            .any(|d| d.key == "pool[1].labels" && d.line == Some(12)));
        assert!(diags.iter().any(|d| d.key == "github.webhook_secret_file"));
    }

    #[test]
    fn credentials_must_be_one_kind() {
        let d = dir_with_secrets();
        let pool =
            "[[pool]]\nname=\"a\"\nscope=\"org:o\"\nlabels=[\"x\"]\nrunner_command=\"/bin/sh\"\n";
        let cases = [
            ("[github]\n", "no credentials"),
            ("[github]\ntoken_file=\"token\"\napp_id=1\n", "not both"),
            ("[github]\napp_id=1\n", "needs private_key_file"),
            (
                "[github]\napp_id=1\nclient_id=\"Iv1.x\"\nprivate_key_file=\"token\"\n",
                "not both",
            ),
        ];
        for (gh, want) in cases {
            let diags = load_str(&format!("{gh}{pool}"), d.path()).unwrap_err();
            assert!(
                diags.iter().any(|x| x.message.contains(want)),
                "{gh}: {diags:?}"
            );
        }
        let (c, _) = load_str(
            &format!("[github]\nclient_id=\"Iv1.x\"\nprivate_key_file=\"token\"\n{pool}"),
            d.path(),
        )
        .unwrap();
        assert!(matches!(c.github.auth, Auth::App { ref issuer, .. } if issuer == "Iv1.x"));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let diags = load_str("[server]\nlisten = \n", Path::new(".")).unwrap_err();
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].line, Some(2), "{diags:?}");
    }
}
