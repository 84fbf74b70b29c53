//! The backends a daemon runs, keyed by kind: each one probed before it is registered (the
//! daemon registers only kinds its pools use, and a failed probe stops the start with the probe's
//! reasons), then every operation is routed by kind: `create`/`start` by the spec's variant,
//! `status`/`destroy` by the kind the store recorded for the sandbox, and `list` is the union, each
//! entry with the kind that listed it, so an orphan is destroyed by the backend that owns it.
//!
//! The registry must never guess a sandbox's kind from its id or its files, and never ask one
//! backend about another's sandbox.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{Backend, BackendKind, SandboxError, SandboxSpec, SandboxStatus, Secret};

/// One sandbox as a backend listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub kind: BackendKind,
    pub id: String,
    pub status: SandboxStatus,
}

#[derive(Debug, Default)]
pub struct Registry {
    backends: BTreeMap<BackendKind, Arc<dyn Backend>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers a probed backend under its own kind (replacing one of the same kind).
    pub fn insert(&mut self, backend: Arc<dyn Backend>) {
        self.backends.insert(backend.kind(), backend);
    }

    pub fn kinds(&self) -> Vec<BackendKind> {
        self.backends.keys().copied().collect()
    }

    pub fn get(&self, kind: BackendKind) -> Result<&dyn Backend, SandboxError> {
        self.backends
            .get(&kind)
            .map(|b| b.as_ref())
            .ok_or(SandboxError::Unavailable { kind })
    }

    pub async fn create(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        self.get(spec.backend.kind())?.create(spec).await
    }

    pub async fn start(&self, spec: &SandboxSpec, jit: &Secret) -> Result<(), SandboxError> {
        self.get(spec.backend.kind())?.start(spec, jit).await
    }

    pub async fn status(&self, kind: BackendKind, id: &str) -> Result<SandboxStatus, SandboxError> {
        self.get(kind)?.status(id).await
    }

    pub async fn destroy(&self, kind: BackendKind, id: &str) -> Result<(), SandboxError> {
        self.get(kind)?.destroy(id).await
    }

    /// Every sandbox of every registered backend. One backend failing to list fails the whole
    /// list: a partial one would make its sandboxes look gone.
    pub async fn list(&self) -> Result<Vec<Listed>, SandboxError> {
        let mut out = Vec::new();
        for (kind, b) in &self.backends {
            for (id, status) in b.list().await? {
                out.push(Listed {
                    kind: *kind,
                    id,
                    status,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendSpec, ContainerImage, Limits};
    use async_trait::async_trait;
    use std::sync::Mutex;

    /// Records every call it gets; lists the ids it was told to.
    #[derive(Debug)]
    struct Fake {
        kind: BackendKind,
        calls: Arc<Mutex<Vec<String>>>,
        has: Vec<&'static str>,
    }

    #[async_trait]
    impl Backend for Fake {
        fn kind(&self) -> BackendKind {
            self.kind
        }
        async fn create(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{} create {}", self.kind, spec.id));
            Ok(())
        }
        async fn start(&self, spec: &SandboxSpec, _: &Secret) -> Result<(), SandboxError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{} start {}", self.kind, spec.id));
            Ok(())
        }
        async fn status(&self, id: &str) -> Result<SandboxStatus, SandboxError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{} status {id}", self.kind));
            Ok(SandboxStatus::Running)
        }
        async fn list(&self) -> Result<Vec<(String, SandboxStatus)>, SandboxError> {
            Ok(self
                .has
                .iter()
                .map(|i| (i.to_string(), SandboxStatus::Running))
                .collect())
        }
        async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{} destroy {id}", self.kind));
            Ok(())
        }
    }

    fn spec(id: &str, backend: BackendSpec) -> SandboxSpec {
        SandboxSpec {
            id: id.into(),
            runner_name: id.into(),
            runner_command: "/bin/true".into(),
            backend,
            pool: "test".into(),
            egress: Default::default(),
        }
    }

    #[tokio::test]
    async fn operations_go_to_the_backend_of_their_kind_only() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut r = Registry::new();
        for (kind, has) in [
            (BackendKind::Process, vec!["p1"]),
            (BackendKind::Container, vec!["c1", "c2"]),
        ] {
            r.insert(Arc::new(Fake {
                kind,
                calls: calls.clone(),
                has,
            }));
        }
        let container = BackendSpec::Container(ContainerImage {
            rootfs: "/x".into(),
            image: "i@sha256:0".into(),
            limits: Limits::default(),
            runtime: None,
            disk_gib: None,
        });
        r.create(&spec("a", container.clone())).await.unwrap();
        r.start(&spec("a", container), &Secret::new("s".into()))
            .await
            .unwrap();
        r.create(&spec("b", BackendSpec::Process)).await.unwrap();
        r.status(BackendKind::Container, "a").await.unwrap();
        r.destroy(BackendKind::Process, "b").await.unwrap();
        assert_eq!(
            *calls.lock().unwrap(),
            [
                "container create a",
                "container start a",
                "process create b",
                "container status a",
                "process destroy b"
            ]
        );
        let listed = r.list().await.unwrap();
        let got: Vec<(BackendKind, &str)> =
            listed.iter().map(|l| (l.kind, l.id.as_str())).collect();
        assert_eq!(
            got,
            [
                (BackendKind::Process, "p1"),
                (BackendKind::Container, "c1"),
                (BackendKind::Container, "c2")
            ]
        );
        assert_eq!(r.kinds(), [BackendKind::Process, BackendKind::Container]);
    }

    #[tokio::test]
    async fn a_kind_not_registered_is_a_clear_error() {
        let r = Registry::new();
        let e = r
            .destroy(BackendKind::Microvm, "x")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no microvm backend is running"), "{e}");
        assert!(r.create(&spec("x", BackendSpec::Process)).await.is_err());
    }
}
