//! The executor's rules, with the real control loop, store and GitHub client (ghsim over HTTP)
//! driving a scripted backend in place of the process backend (`airlock_daemon::Seams`): its
//! operations can be held at a gate, made to fail, and it records every call, so the tests see
//! what the daemon did to each sandbox and in which order, which no real backend can show.
//!
//! - a stop that falls due while its runner is still being created waits for the create;
//! - creates that hang never hold back a reap (their slots are their own);
//! - a start that fails tears down what the create made (sandbox and registration) and backs
//!   off the pool, after which the next create succeeds.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_ghsim::Faults;
use airlock_sandbox::{Backend, BackendKind, SandboxError, SandboxSpec, SandboxStatus, Secret};
use common::{env, metric, pool, wait_until};

/// What the scripted backend holds and saw.
#[derive(Debug, Default)]
struct World {
    sandboxes: BTreeMap<String, SandboxStatus>,
    /// The operations in flight on each sandbox.
    acting: HashMap<String, Vec<&'static str>>,
    /// An operation that began while another was in flight on the same sandbox.
    overlaps: Vec<String>,
    /// Every call's beginning and end, in order: (when, "begin create ID"), (when, "end create ID").
    calls: Vec<(Instant, String)>,
    /// Starts still to fail.
    fail_starts: u32,
}

/// A backend whose sandboxes exist only in memory.
#[derive(Debug)]
struct Scripted {
    world: Mutex<World>,
    /// Creates wait while it is shut.
    creates_open: tokio::sync::watch::Sender<bool>,
}

impl Scripted {
    fn new() -> Arc<Scripted> {
        Arc::new(Scripted {
            world: Mutex::default(),
            creates_open: tokio::sync::watch::channel(true).0,
        })
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shut_creates(&self) {
        self.creates_open.send_replace(false);
    }

    fn open_creates(&self) {
        self.creates_open.send_replace(true);
    }

    fn begin(self: &Arc<Self>, op: &'static str, id: &str) -> Acting {
        let mut w = self.world();
        let now = w.acting.entry(id.to_string()).or_default();
        if !now.is_empty() {
            let msg = format!("{op} of {id} began while {now:?} of it ran");
            now.push(op);
            w.overlaps.push(msg);
        } else {
            now.push(op);
        }
        w.calls.push((Instant::now(), format!("begin {op} {id}")));
        Acting {
            backend: self.clone(),
            op,
            id: id.to_string(),
        }
    }

    /// The calls that name `id`, without the id ("begin create", "end create", …).
    fn calls_of(&self, id: &str) -> Vec<String> {
        self.world()
            .calls
            .iter()
            .filter_map(|(_, c)| c.strip_suffix(&format!(" {id}")).map(str::to_string))
            .collect()
    }

    fn when(&self, call: &str) -> Option<Instant> {
        self.world()
            .calls
            .iter()
            .find(|(_, c)| c == call)
            .map(|(t, _)| *t)
    }

    /// Ids of the sandboxes a create began for, in order.
    fn created(&self) -> Vec<String> {
        self.world()
            .calls
            .iter()
            .filter_map(|(_, c)| c.strip_prefix("begin create ").map(str::to_string))
            .collect()
    }

    fn count(&self, call_prefix: &str) -> usize {
        self.world()
            .calls
            .iter()
            .filter(|(_, c)| c.starts_with(call_prefix))
            .count()
    }
}

/// One operation in flight on one sandbox; its end is recorded when dropped (also on an error
/// return or when the daemon's task is aborted).
struct Acting {
    backend: Arc<Scripted>,
    op: &'static str,
    id: String,
}

impl Drop for Acting {
    fn drop(&mut self) {
        let mut w = self.backend.world();
        if let Some(v) = w.acting.get_mut(&self.id) {
            if let Some(i) = v.iter().position(|o| *o == self.op) {
                v.remove(i);
            }
            if v.is_empty() {
                w.acting.remove(&self.id);
            }
        }
        w.calls
            .push((Instant::now(), format!("end {} {}", self.op, self.id)));
    }
}

/// The daemon holds an `Arc<dyn Backend>`; the test keeps its own `Arc<Scripted>` to look in.
#[derive(Debug)]
struct Handle(Arc<Scripted>);

#[async_trait::async_trait]
impl Backend for Handle {
    fn kind(&self) -> BackendKind {
        BackendKind::Process
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        let _a = self.0.begin("create", &spec.id);
        let mut open = self.0.creates_open.subscribe();
        let _ = open.wait_for(|o| *o).await;
        self.0
            .world()
            .sandboxes
            .insert(spec.id.clone(), SandboxStatus::Created);
        Ok(())
    }

    async fn start(&self, spec: &SandboxSpec, _jit: &Secret) -> Result<(), SandboxError> {
        let _a = self.0.begin("start", &spec.id);
        let mut w = self.0.world();
        if w.fail_starts > 0 {
            w.fail_starts -= 1;
            return Err(SandboxError::Start {
                id: spec.id.clone(),
                command: spec.runner_command.clone(),
                source: std::io::Error::other("scripted failure"),
            });
        }
        w.sandboxes.insert(spec.id.clone(), SandboxStatus::Running);
        Ok(())
    }

    async fn status(&self, id: &str) -> Result<SandboxStatus, SandboxError> {
        let _a = self.0.begin("status", id);
        let w = self.0.world();
        Ok(w.sandboxes
            .get(id)
            .copied()
            .unwrap_or(SandboxStatus::Missing))
    }

    async fn list(&self) -> Result<Vec<(String, SandboxStatus)>, SandboxError> {
        // What a pass observes, not an operation on any one sandbox.
        Ok(self
            .0
            .world()
            .sandboxes
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect())
    }

    async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        let _a = self.0.begin("destroy", id);
        self.0.world().sandboxes.remove(id);
        Ok(())
    }
}

async fn daemon_with(
    pools: &[common::Pool<'_>],
    server: &str,
    backend: &Arc<Scripted>,
) -> common::Env {
    let mut e = env(pools, "1h", Faults::default(), false).await;
    e.config = e
        .config
        .replacen("[server]\n", &format!("[server]\n{server}"), 1);
    e.start_daemon_with(airlock_daemon::Seams {
        backends: vec![Arc::new(Handle(backend.clone()))],
    })
    .await;
    e
}

/// The guard itself: two operations on one sandbox at once are reported (the check the other
/// tests rely on can fail).
#[test]
fn the_scripted_backend_reports_two_operations_on_one_sandbox() {
    let b = Scripted::new();
    let first = b.begin("create", "s1");
    let other = b.begin("destroy", "s2");
    assert!(
        b.world().overlaps.is_empty(),
        "different sandboxes overlap freely"
    );
    let second = b.begin("destroy", "s1");
    drop((first, second, other));
    let w = b.world();
    assert_eq!(
        w.overlaps,
        ["destroy of s1 began while [\"create\"] of it ran"]
    );
    assert!(w.acting.is_empty(), "every end recorded: {:?}", w.acting);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_due_while_its_runner_is_being_created_waits_for_the_create() {
    let b = Scripted::new();
    b.shut_creates();
    let mut p = pool("p", &["airlock-own"]);
    p.max = 2;
    p.extra = "boot_timeout = \"1s\"";
    let e = daemon_with(&[p], "", &b).await;
    e.submit_n("j", 2, "airlock-own", "true");

    assert!(
        wait_until(Duration::from_secs(10), || b.world().acting.len() == 2).await,
        "two creates reach the backend: {:?}",
        b.world().calls
    );
    let first = b.created();
    // Both runners pass their boot timeout while their creates hang: every pass now plans their
    // stops, and must leave them to the creates that own the runners.
    let deferred = wait_until(Duration::from_secs(10), || {
        metric(&e.metrics(), "airlock_ops_deferred_total{op=\"stop\"}") >= 2.0
    })
    .await;
    assert!(
        deferred,
        "the stops past the boot timeout were planned and deferred:\n{}",
        e.metrics()
    );
    assert_eq!(
        b.count("begin destroy"),
        0,
        "nothing destroyed under a create"
    );
    assert_eq!(b.count("begin start"), 0);

    b.open_creates();
    let gone = wait_until(Duration::from_secs(15), || {
        first
            .iter()
            .all(|id| b.calls_of(id).iter().any(|c| c == "end destroy"))
    })
    .await;
    assert!(gone, "both stopped once created: {:?}", b.world().calls);
    let overlaps = b.world().overlaps.clone();
    assert!(overlaps.is_empty(), "one operation at a time: {overlaps:?}");
    for id in &first {
        let calls = b.calls_of(id);
        let at = |c: &str| calls.iter().position(|x| x == c);
        assert_eq!(
            calls.first().map(String::as_str),
            Some("begin create"),
            "{id}: {calls:?}"
        );
        assert!(
            at("end start") < at("begin destroy"),
            "{id} destroyed only after its start ended: {calls:?}"
        );
        let r = e.store().runner(id).unwrap().expect("runner recorded");
        assert_eq!(r.state.to_string(), "gone", "{id}");
    }
    // Its registration went with it (a boot timeout deregisters first).
    let left = wait_until(Duration::from_secs(5), || {
        e.sim()
            .runners()
            .iter()
            .all(|(_, name, _, _)| !first.contains(name))
    })
    .await;
    assert!(left, "registrations deleted: {:?}", e.sim().runners());
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_that_hang_never_hold_back_a_reap() {
    let b = Scripted::new();
    b.shut_creates();
    let mut p = pool("p", &["airlock-slots"]);
    p.max = 4;
    // One slot for creates, one for the rest.
    let e = daemon_with(&[p], "max_parallel_ops = 1\n", &b).await;
    e.submit_n("j", 3, "airlock-slots", "true");
    assert!(
        wait_until(Duration::from_secs(10), || b.count("begin create") == 1).await,
        "the one create slot is taken: {:?}",
        b.world().calls
    );

    // A sandbox no runner owns (what a crash leaves), then an event that makes the loop look.
    b.world()
        .sandboxes
        .insert("orphan-1".into(), SandboxStatus::Running);
    e.submit_n("k", 1, "airlock-slots", "true");
    let reaped = wait_until(Duration::from_secs(10), || {
        b.calls_of("orphan-1").iter().any(|c| c == "end destroy")
    })
    .await;
    assert!(reaped, "the orphan is reaped: {:?}", b.world().calls);
    assert_eq!(
        b.count("end create"),
        0,
        "while the creates still hang (so the reap did not wait for their slot)"
    );
    assert_eq!(
        b.count("begin create"),
        1,
        "creates stay within their one slot"
    );
    assert_eq!(
        metric(
            &e.metrics(),
            "airlock_orphans_reaped_total{outcome=\"sandbox\"}"
        ),
        1.0
    );

    b.open_creates();
    assert!(
        wait_until(Duration::from_secs(15), || b.count("end start") >= 4).await,
        "the four jobs' runners start once creates go on: {:?}",
        b.world().calls
    );
    assert!(b.world().overlaps.is_empty(), "{:?}", b.world().overlaps);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_tears_down_what_the_create_made_and_backs_off_the_pool() {
    let b = Scripted::new();
    b.world().fail_starts = 1;
    let mut p = pool("p", &["airlock-fail"]);
    p.max = 1;
    let e = daemon_with(&[p], "", &b).await;
    e.submit_n("j", 1, "airlock-fail", "true");

    assert!(
        wait_until(Duration::from_secs(15), || b.count("end start") == 2).await,
        "a second runner after the failed one: {:?}",
        b.world().calls
    );
    let created = b.created();
    let (failed, next) = (&created[0], &created[1]);
    let calls = b.calls_of(failed);
    assert_eq!(
        calls,
        [
            "begin create",
            "end create",
            "begin start",
            "end start",
            "begin destroy",
            "end destroy"
        ],
        "the failed runner's sandbox is destroyed and nothing else is done to it"
    );
    let r = e.store().runner(failed).unwrap().expect("recorded");
    assert_eq!(r.state.to_string(), "gone");
    assert!(
        wait_until(Duration::from_secs(5), || {
            e.sim()
                .runners()
                .iter()
                .all(|(_, name, _, _)| name != failed)
        })
        .await,
        "its JIT registration is deleted: {:?}",
        e.sim().runners()
    );
    assert_eq!(
        metric(
            &e.metrics(),
            "airlock_reconcile_errors_total{op=\"create\",class=\"sandbox\"}"
        ),
        1.0
    );
    // The pool waited out its backoff (1 s after a first failure, less up to a quarter of
    // jitter) before the next create.
    let failed_at = b.when(&format!("end start {failed}")).unwrap();
    let next_at = b.when(&format!("begin create {next}")).unwrap();
    let gap = next_at - failed_at;
    assert!(
        gap >= Duration::from_millis(700),
        "the next create waited for the pool's backoff: {gap:?}"
    );
    assert_eq!(
        b.calls_of(next).last().map(String::as_str),
        Some("end start")
    );
    assert!(b.world().overlaps.is_empty());
    e.shutdown().await;
}
