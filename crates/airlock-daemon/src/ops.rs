//! The planner's operations: create, stop, teardown, orphan reaping.
//!
//! Every operation is idempotent and safe to interrupt: a runner is stored in `creating` before
//! anything exists outside, teardown moves it to `stopping` before touching the sandbox or the
//! registration, and a runner found in `stopping` (after a crash) is simply torn down again.

use std::collections::HashMap;
use std::time::Instant;

use airlock_core::{Op, RunnerState, SandboxState, Scope, StopReason};
use airlock_github::GitHubError;
use airlock_sandbox::{BackendKind, SandboxStatus, Secret};
use airlock_store::{RunnerRecord, StoreError};
use rand::Rng;
use tracing::Instrument;

use crate::executor::{registration_key, runner_key, sandbox_key, Kind, Ticket};
use crate::metrics::{OutcomeLabels, PoolLabels, StopLabels};
use crate::reconcile::{back_off, OpError};
use crate::{now_ms, Inner};

/// One of the plan's operations with what it acts on, as the pass observed it: it runs as a task
/// of its own (see `executor`), after the pass that planned it may have ended.
#[derive(Debug)]
pub(crate) enum Work {
    Create {
        pool: String,
    },
    Stop {
        runner: RunnerRecord,
        reason: StopReason,
    },
    DeleteRegistration {
        scope: Scope,
        id: u64,
        name: String,
    },
    /// `kinds`: the backends that listed the sandbox this pass.
    DestroySandbox {
        id: String,
        kinds: Vec<BackendKind>,
    },
}

impl Work {
    /// `None`: nothing to do (a stop of a runner no longer live).
    pub(crate) fn new(
        op: Op,
        live: &[RunnerRecord],
        kinds: &HashMap<String, Vec<BackendKind>>,
    ) -> Option<Work> {
        Some(match op {
            Op::Create { pool } => Work::Create { pool },
            Op::Stop { runner, reason } => Work::Stop {
                runner: live.iter().find(|r| r.name == runner)?.clone(),
                reason,
            },
            Op::DeleteRegistration { scope, id, name } => {
                Work::DeleteRegistration { scope, id, name }
            }
            Op::DestroySandbox { id } => Work::DestroySandbox {
                kinds: kinds.get(&id).cloned().unwrap_or_default(),
                id,
            },
        })
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Work::Create { .. } => "create",
            Work::Stop { .. } => "stop",
            Work::DeleteRegistration { .. } => "delete_registration",
            Work::DestroySandbox { .. } => "destroy_sandbox",
        }
    }

    pub(crate) fn kind(&self) -> Kind {
        match self {
            Work::Create { .. } => Kind::Create,
            _ => Kind::Other,
        }
    }

    /// The pool a create is for.
    pub(crate) fn create_of(&self) -> Option<&str> {
        match self {
            Work::Create { pool } => Some(pool),
            _ => None,
        }
    }

    /// The objects it acts on (a create's are named once it has chosen its runner's name).
    pub(crate) fn keys(&self) -> Vec<String> {
        match self {
            Work::Create { .. } => vec![],
            Work::Stop { runner, .. } => {
                let mut k = vec![runner_key(&runner.name), sandbox_key(&runner.sandbox_id)];
                k.extend(runner.github_id.map(registration_key));
                k
            }
            Work::DeleteRegistration { id, name, .. } => {
                vec![registration_key(*id), runner_key(name)]
            }
            Work::DestroySandbox { id, .. } => vec![sandbox_key(id), runner_key(id)],
        }
    }
}

pub(crate) async fn execute(inner: &Inner, work: Work, ticket: &mut Ticket) -> Result<(), OpError> {
    match work {
        Work::Create { pool } => create(inner, &pool, ticket).await,
        Work::Stop { runner, reason } => stop(inner, &runner, reason).await,
        Work::DeleteRegistration { scope, id, name } => {
            tracing::info!(runner = %name, id, %scope, "deleting orphaned runner registration");
            let r = inner.github.delete_runner(&scope, id).await;
            inner.shared().registrations.retain(|x| x.id != id);
            match r {
                Ok(()) => {
                    inner
                        .metrics
                        .orphans_reaped
                        .get_or_create(&OutcomeLabels {
                            outcome: "registration".into(),
                        })
                        .inc();
                    Ok(())
                }
                // Busy after all: it is running a job; leave it.
                Err(GitHubError::Unprocessable { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Work::DestroySandbox { id, kinds } => {
            for kind in kinds {
                tracing::info!(sandbox = %id, backend = %kind, "destroying orphaned sandbox");
                inner.backend.registry.destroy(kind, &id).await?;
            }
            inner
                .metrics
                .orphans_reaped
                .get_or_create(&OutcomeLabels {
                    outcome: "sandbox".into(),
                })
                .inc();
            Ok(())
        }
    }
}

pub(crate) async fn group_id(
    inner: &Inner,
    pool: &airlock_config::PoolConfig,
) -> Result<u64, GitHubError> {
    // By scope and group, not pool: a reload may give a pool another of either.
    let key = format!("{} {}", pool.scope, pool.runner_group);
    if let Some(id) = inner.shared().group_ids.get(&key) {
        return Ok(*id);
    }
    let id = inner
        .github
        .runner_group_id(&pool.scope, &pool.runner_group)
        .await?;
    inner.shared().group_ids.insert(key, id);
    Ok(id)
}

async fn create(inner: &Inner, pool_name: &str, ticket: &mut Ticket) -> Result<(), OpError> {
    let started = Instant::now();
    // The pool as it is now: its config and its settings' fingerprint from one set, kept for
    // the whole create (a reload meanwhile changes the next runner, not this one).
    let set = inner.pools();
    let (pool, fingerprint) = set
        .get(pool_name)
        .map(|(c, s)| (c, s.config.clone()))
        .ok_or_else(|| OpError::NoPool(pool_name.into()))?;
    // A stocked config made under these settings, when the pool has one: no GitHub request on
    // this runner's path.
    let stocked = crate::stock::take(
        inner,
        &pool.name,
        pool.jit_stock_refresh.as_millis() as i64,
        &fingerprint,
    );
    let name = stocked
        .as_ref()
        .map_or_else(|| new_runner_name(pool), |s| s.name.clone());
    // The sandbox's id is the runner's name.
    ticket.own(
        [runner_key(&name), sandbox_key(&name)]
            .into_iter()
            .chain(stocked.as_ref().map(|s| registration_key(s.github_id))),
    );
    let span = tracing::info_span!("runner", runner = %name, pool = %pool.name);
    async {
        let gid = match &stocked {
            Some(_) => 0,
            None => group_id(inner, pool).await?,
        };
        // Before anything is recorded: a pool whose image is missing creates nothing.
        let recorded: Result<_, OpError> = async {
            let spec = inner
                .backend
                .spec_for(pool, &name)
                .await
                .map_err(|source| OpError::Spec {
                    pool: pool.name.clone(),
                    source,
                })?;
            let now = now_ms();
            let (n, p, scope, backend) = (
                name.clone(),
                pool.name.clone(),
                pool.scope.to_string(),
                pool.backend,
            );
            let registered = stocked.as_ref().map(|s| s.github_id);
            inner
                .store
                .call(move |s| {
                    s.insert_runner(&n, &p, &scope, &n, backend, now)?;
                    s.set_runner_config(&n, &fingerprint)?;
                    match registered {
                        Some(id) => s.set_runner_registration(&n, id),
                        None => Ok(()),
                    }
                })
                .await?;
            Ok(spec)
        }
        .await;
        if recorded.is_ok() {
            ticket.recorded();
        }
        let spec = match recorded {
            Ok(spec) => spec,
            Err(e) => {
                // Nothing was made for it: a stocked config goes back to its stock.
                if let Some(s) = stocked {
                    crate::stock::put_back(inner, &pool.name, s);
                }
                return Err(e);
            }
        };
        let made: Result<(), OpError> = async {
            let encoded = match stocked {
                // Recorded with the runner.
                Some(s) => s.encoded,
                None => {
                    let jit = inner
                        .github
                        .generate_jitconfig(&pool.scope, &name, gid, &pool.labels)
                        .await?;
                    let (n, id) = (name.clone(), jit.runner_id);
                    inner
                        .store
                        .call(move |s| s.set_runner_registration(&n, id))
                        .await?;
                    Secret::new(jit.encoded)
                }
            };
            inner.backend.registry.create(&spec).await?;
            inner.backend.registry.start(&spec, &encoded).await?;
            Ok(())
        }
        .await;
        if made.is_ok() {
            ticket.free_slot();
        }
        let now = now_ms();
        match made {
            Ok(()) => {
                let n = name.clone();
                inner
                    .store
                    .call(move |s| s.runner_started(&n, &n, now))
                    .await?;
                inner
                    .metrics
                    .runners_created
                    .get_or_create(&PoolLabels {
                        pool: pool.name.clone(),
                    })
                    .inc();
                inner
                    .metrics
                    .runner_start_seconds
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!("runner started");
                Ok(())
            }
            Err(e) => {
                // Nothing half-made survives: tear down whatever exists (registration, sandbox).
                let reason = format!("create failed: {e}");
                let n = name.clone();
                let r = inner
                    .store
                    .call(move |s| {
                        s.runner_transition(&n, RunnerState::Stopping, now, Some(&reason))?;
                        s.runner(&n)
                    })
                    .await?;
                if let Some(r) = r {
                    let _ = teardown(inner, &r, true).await;
                }
                Err(e)
            }
        }
    }
    .instrument(span)
    .await
}

/// A fresh runner name for `pool`.
pub(crate) fn new_runner_name(pool: &airlock_config::PoolConfig) -> String {
    airlock_core::runner_name(&pool.name, &hex_id())
}

fn hex_id() -> String {
    let b: [u8; 5] = rand::thread_rng().gen();
    hex::encode(b)
}

mod hex {
    pub fn encode(b: [u8; 5]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}

fn scope_of(r: &RunnerRecord) -> Option<Scope> {
    Scope::parse(&r.scope).ok()
}

async fn stop(inner: &Inner, r: &RunnerRecord, reason: StopReason) -> Result<(), OpError> {
    let span = tracing::info_span!("runner", runner = %r.name, pool = %r.pool);
    async {
        let now = now_ms();
        let mut deregistered = false;
        if reason.deregister_first() && r.state != RunnerState::Stopping {
            if let (Some(id), Some(scope)) = (r.github_id, scope_of(r)) {
                match inner.github.delete_runner(&scope, id).await {
                    Ok(()) => deregistered = true,
                    Err(GitHubError::Unprocessable { .. }) => {
                        // GitHub says it is running a job: it is busy, not idle. Keep it.
                        tracing::info!(
                            reason = reason.as_str(),
                            "runner is busy with a job; not stopping it"
                        );
                        let n = r.name.clone();
                        inner
                            .store
                            .call(move |s| {
                                s.runner_transition(
                                    &n,
                                    RunnerState::Busy,
                                    now,
                                    Some("busy at deregistration"),
                                )
                            })
                            .await?;
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let mut took_unknown_job = false;
        let mut exit = None;
        if reason == StopReason::Exited {
            let code = match inner
                .backend
                .registry
                .status(r.backend, &r.sandbox_id)
                .await?
            {
                SandboxStatus::Exited(c) => c,
                _ => None,
            };
            took_unknown_job = code == Some(0) && r.job_id.is_none();
            exit = Some(code);
            tracing::info!(exit = ?code, "runner exited");
            let outdated = inner.health.runner_exited(inner, &r.pool, code);
            if r.state == RunnerState::Starting && code != Some(0) && !outdated {
                // Its sandbox died before the runner came online (a guest that cannot mount its
                // root, a runner that cannot start): replacing it at once would only repeat that.
                tracing::warn!(
                    exit = ?code,
                    "runner exited before it came online; backing off the pool (its log is kept in state_dir/logs)"
                );
                back_off(inner, &r.pool, "runner_exit", None);
                let why = format!("the runner exited with {code:?} before it came online (its log is kept in state_dir/logs)");
                inner.health.create_failed(inner, &r.pool, "runner_exit", &why);
            }
            if took_unknown_job {
                // It ran a job airlock has not heard of: learn which one now rather than at the
                // next scheduled poll, so the job it was started for does not wait on a guess.
                inner.poll_now.notify_one();
            }
        }
        // How it ended (if it did) and the move to stopping: one call to the store.
        let n = r.name.clone();
        inner
            .store
            .call(move |s| {
                if let Some(code) = exit {
                    s.set_runner_exit(&n, code, took_unknown_job, now)?;
                }
                s.runner_transition(&n, RunnerState::Stopping, now, Some(reason.as_str()))
            })
            .await?;
        inner
            .metrics
            .runners_stopped
            .get_or_create(&StopLabels {
                pool: r.pool.clone(),
                reason: reason.as_str().into(),
            })
            .inc();
        // A runner that ran a job was removed by GitHub with it: don't spend a request on it.
        let ran_job = reason == StopReason::Exited
            && (r.job_id.is_some() || r.state == RunnerState::Busy || took_unknown_job);
        teardown(inner, r, !deregistered && !ran_job).await
    }
    .instrument(span)
    .await
}

/// The finalizer: destroy the sandbox, remove the registration, mark the runner gone. Each step
/// is idempotent; a failure leaves the runner in `stopping` and the next pass resumes.
async fn teardown(inner: &Inner, r: &RunnerRecord, deregister: bool) -> Result<(), OpError> {
    inner
        .backend
        .registry
        .destroy(r.backend, &r.sandbox_id)
        .await?;
    let now = now_ms();
    let id = r.sandbox_id.clone();
    let registered = deregister.then(|| r.github_id.zip(scope_of(r))).flatten();
    // Without a registration to delete in between, the sandbox's end and the runner's are one
    // call to the store.
    let gone_too = registered.is_none().then(|| r.name.clone());
    inner
        .store
        .call(move |s| {
            match s.sandbox_transition(&id, SandboxState::Destroyed, None, now) {
                Ok(_) | Err(StoreError::Missing { .. }) => {}
                Err(e) => return Err(e),
            }
            match gone_too {
                Some(n) => s
                    .runner_transition(&n, RunnerState::Gone, now, None)
                    .map(|_| ()),
                None => Ok(()),
            }
        })
        .await?;
    if let Some((id, scope)) = registered {
        match inner.github.delete_runner(&scope, id).await {
            Ok(()) => {}
            // Still running a job at GitHub though its sandbox is gone: GitHub will fail the
            // job and drop the registration itself; the orphan reaper removes it otherwise.
            Err(GitHubError::Unprocessable { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let n = r.name.clone();
        inner
            .store
            .call(move |s| s.runner_transition(&n, RunnerState::Gone, now_ms(), None))
            .await?;
    }
    // The last poll's list may still show its registration; it is not an orphan until a poll
    // made after this moment lists it again.
    if let Some(id) = r.github_id {
        inner.shared().registrations.retain(|x| x.id != id);
    }
    tracing::info!("runner gone");
    Ok(())
}

/// End of a drain: whatever is still alive is destroyed (busy runners past the grace period).
pub(crate) async fn force_stop_all(inner: &Inner) -> usize {
    let mut forced = 0;
    let live = inner.store.call(|s| s.live_runners()).await;
    for r in live.unwrap_or_default() {
        if r.state == RunnerState::Busy {
            forced += 1;
            tracing::warn!(runner = %r.name, "grace period over; destroying a busy runner");
        }
        let now = now_ms();
        let n = r.name.clone();
        let _ = inner
            .store
            .call(move |s| s.runner_transition(&n, RunnerState::Stopping, now, Some("drain")))
            .await;
        if let Err(e) = teardown(inner, &r, true).await {
            tracing::error!(runner = %r.name, error = %e, "teardown failed during drain; it will be reaped at next start");
        }
    }
    crate::stock::drop_all(inner).await;
    forced
}
