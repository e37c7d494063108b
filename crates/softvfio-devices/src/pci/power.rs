//! vfio-pci's `device_feature` op (Linux 6.1): the low-power features and
//! the SR-IOV VF token. An emulated function has no SR-IOV, so the VF
//! token is ENOTTY; entering low power is recorded (the function keeps
//! working: an emulated device has no power states to lose).
//!
//! Invariant: `engaged` is true between a successful LOW_POWER_ENTRY (or
//! ENTRY_WITH_WAKEUP) and the next LOW_POWER_EXIT or device close; the
//! wakeup eventfd is held only while engaged.

use std::sync::Mutex;

use softvfio::device::{FeatureOps, FeatureRequest};
use softvfio::device_ioctl::{
    FEATURE_LOW_POWER_ENTRY, FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP, FEATURE_LOW_POWER_EXIT,
    FEATURE_PCI_VF_TOKEN,
};
use softvfio::eventfd::Eventfd;

#[derive(Default)]
struct State {
    engaged: bool,
    wakeup: Option<Eventfd>,
}

/// The power-management side of one vfio-pci device.
#[derive(Default)]
pub struct PciPower {
    state: Mutex<State>,
}

impl std::fmt::Debug for PciPower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciPower")
            .field("engaged", &self.engaged())
            .finish()
    }
}

/// `vfio_check_feature`: `Ok(false)` for a successful PROBE, `Ok(true)` when
/// the operation should run.
fn check_feature(
    ops: FeatureOps,
    argsz: u32,
    supported_set: bool,
    minsz: u32,
) -> Result<bool, i32> {
    if ops.get || (ops.set && !supported_set) {
        return Err(libc::EINVAL);
    }
    if ops.probe {
        return Ok(false);
    }
    if !ops.set {
        return Err(libc::EINVAL);
    }
    if argsz.saturating_sub(8) < minsz {
        return Err(libc::EINVAL);
    }
    Ok(true)
}

impl PciPower {
    /// Is the device in runtime low power?
    pub fn engaged(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).engaged
    }

    /// `vfio_pci_core_ioctl_feature`.
    pub fn feature(&self, req: &mut FeatureRequest) -> Result<i64, i32> {
        match req.feature {
            FEATURE_LOW_POWER_ENTRY => {
                if !check_feature(req.ops, req.argsz, true, 0)? {
                    return Ok(0);
                }
                self.enter(None)
            }
            FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP => {
                // struct vfio_device_low_power_entry_with_wakeup: fd, reserved.
                if !check_feature(req.ops, req.argsz, true, 8)? {
                    return Ok(0);
                }
                if !req.payload_readable {
                    return Err(libc::EFAULT);
                }
                let fd = match req.eventfd.take() {
                    Some(a) if !a.is_negative() => a.take()?,
                    _ => return Err(libc::EINVAL),
                };
                self.enter(Some(fd))
            }
            FEATURE_LOW_POWER_EXIT => {
                if !check_feature(req.ops, req.argsz, true, 0)? {
                    return Ok(0);
                }
                self.exit();
                Ok(0)
            }
            // Only SR-IOV physical functions have a VF token.
            FEATURE_PCI_VF_TOKEN => Err(libc::ENOTTY),
            _ => Err(libc::ENOTTY),
        }
    }

    fn enter(&self, wakeup: Option<Eventfd>) -> Result<i64, i32> {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if g.engaged {
            return Err(libc::EINVAL);
        }
        g.engaged = true;
        g.wakeup = wakeup;
        Ok(0)
    }

    /// LOW_POWER_EXIT (also the device's last close): the wakeup eventfd,
    /// if one was given, is signalled once as the device leaves low power.
    pub fn exit(&self) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        g.engaged = false;
        if let Some(w) = g.wakeup.take() {
            w.signal();
        }
    }
}
