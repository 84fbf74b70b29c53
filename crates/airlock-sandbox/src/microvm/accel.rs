//! Which accelerator a kernel boots with under a driver, found by booting it (memoized per
//! driver, kernel and accelerator asked for): QEMU with KVM or under TCG (`qemu::probe_boot`),
//! Firecracker and Cloud Hypervisor with KVM only (`probe::boot`).

use std::path::{Path, PathBuf};

use airlock_core::{Accel, VmDriver};

use super::{probe, qemu, MicrovmBackend, Programs};

/// What a probe boot of one kernel found: the accelerator to use, and why, when it is not the
/// one asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    /// Set when `auto` fell back to TCG: the reason, for `airlock status` and the logs.
    pub warning: Option<String>,
}

/// (driver, kernel, initramfs, accelerator asked for).
pub(super) type ProbeKey = (VmDriver, PathBuf, PathBuf, Accel);

impl MicrovmBackend {
    /// The accelerator `kernel` really boots with here under `driver`, probing it (once per
    /// driver and kernel) by booting it with its initramfs in the agent's probe mode: `kvm` must
    /// boot or the pool is refused with the reason; `auto` takes KVM when it boots and, with
    /// QEMU, falls back to TCG with a warning; `tcg` must boot under emulation. Firecracker and
    /// Cloud Hypervisor run only on KVM: their `auto` is `kvm`.
    pub async fn accel_for(
        &self,
        driver: VmDriver,
        kernel: &Path,
        initramfs: &Path,
        asked: Accel,
    ) -> Result<AccelChoice, String> {
        let key = (driver, kernel.to_path_buf(), initramfs.to_path_buf(), asked);
        if let Some(r) = self
            .probed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return r.clone();
        }
        let _one = self.probing.lock().await;
        if let Some(r) = self
            .probed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return r.clone();
        }
        let r = match driver {
            VmDriver::Qemu => self.probe_qemu(kernel, initramfs, asked).await,
            _ => self.probe_kvm_only(driver, kernel, initramfs, asked).await,
        };
        match &r {
            Ok(AccelChoice {
                accel,
                warning: Some(w),
            }) => {
                tracing::warn!(driver = driver.as_str(), kernel = %kernel.display(), accel = accel.as_str(), "{w}")
            }
            Ok(c) => {
                tracing::info!(driver = driver.as_str(), kernel = %kernel.display(), accel = c.accel.as_str(), "kernel boots")
            }
            Err(e) => tracing::error!(driver = driver.as_str(), kernel = %kernel.display(), "{e}"),
        }
        self.probed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, r.clone());
        r
    }

    /// The uid probe boots run as: the last of the range, never a sandbox's.
    pub(super) fn probe_uid(&self) -> u32 {
        self.cfg.uid_base + 65535
    }

    pub(super) async fn probe_kvm_only(
        &self,
        driver: VmDriver,
        kernel: &Path,
        initramfs: &Path,
        asked: Accel,
    ) -> Result<AccelChoice, String> {
        let name = driver.as_str();
        if asked == Accel::Tcg {
            return Err(format!(
                "{name} needs KVM; only the qemu driver can emulate (accel = \"tcg\")"
            ));
        }
        let vmm = match (driver, &self.programs) {
            (
                VmDriver::Firecracker,
                Programs {
                    firecracker: Some((jailer, firecracker)),
                    ..
                },
            ) => probe::Vmm::Firecracker {
                jailer,
                firecracker,
            },
            (
                VmDriver::CloudHypervisor,
                Programs {
                    cloud_hypervisor: Some((cloud_hypervisor, unshare)),
                    ..
                },
            ) => probe::Vmm::CloudHypervisor {
                cloud_hypervisor,
                setpriv: &self.setpriv,
                unshare,
            },
            _ => return Err(self.not_ready(driver)),
        };
        let (kvm_timeout, _) = self.cfg.probe_timeouts;
        probe::boot(
            vmm,
            &self.cfg.root,
            self.probe_uid(),
            kernel,
            initramfs,
            kvm_timeout,
        )
        .await
        .map(|()| AccelChoice {
            accel: Accel::Kvm,
            warning: None,
        })
        .map_err(|e| {
            format!(
                "{name} runs only on KVM, and KVM cannot boot {} here: {e}; use driver = \"qemu\", which falls back to TCG",
                kernel.display()
            )
        })
    }

    pub(super) fn not_ready(&self, driver: VmDriver) -> String {
        format!(
            "the {} driver was not made ready when the microvm backend started (no pool used it then)",
            driver.as_str()
        )
    }

    pub(super) async fn probe_qemu(
        &self,
        kernel: &Path,
        initramfs: &Path,
        asked: Accel,
    ) -> Result<AccelChoice, String> {
        let Some((qemu, _)) = &self.programs.qemu else {
            return Err(self.not_ready(VmDriver::Qemu));
        };
        let (kvm_timeout, tcg_timeout) = self.cfg.probe_timeouts;
        let uid = self.probe_uid();
        let boot = |accel, timeout| {
            qemu::probe_boot(qemu, &self.setpriv, uid, kernel, initramfs, accel, timeout)
        };
        let r = match asked {
            Accel::Kvm => boot(Accel::Kvm, kvm_timeout)
                .await
                .map(|_| AccelChoice {
                    accel: Accel::Kvm,
                    warning: None,
                })
                .map_err(|e| {
                    format!(
                        "accel = \"kvm\", but KVM cannot boot {} here: {e}; use accel = \"auto\" or \"tcg\"",
                        kernel.display()
                    )
                }),
            Accel::Tcg => boot(Accel::Tcg, tcg_timeout)
                .await
                .map(|_| AccelChoice {
                    accel: Accel::Tcg,
                    warning: None,
                })
                .map_err(|e| format!("{} does not boot under TCG: {e}", kernel.display())),
            Accel::Auto => match boot(Accel::Kvm, kvm_timeout).await {
                Ok(()) => Ok(AccelChoice {
                    accel: Accel::Kvm,
                    warning: None,
                }),
                Err(kvm) => match boot(Accel::Tcg, tcg_timeout).await {
                    Ok(()) => Ok(AccelChoice {
                        accel: Accel::Tcg,
                        warning: Some(format!(
                            "KVM cannot boot this kernel here ({kvm}); VMs run under TCG emulation, several times slower"
                        )),
                    }),
                    Err(tcg) => Err(format!(
                        "{} boots neither with KVM ({kvm}) nor under TCG ({tcg})",
                        kernel.display()
                    )),
                },
            },
        };
        r
    }
}
