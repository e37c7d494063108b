//! The device ioctls whose checks belong to the VFIO core or to vfio-pci's
//! ioctl entry rather than to a device model: `VFIO_DEVICE_SET_IRQS`
//! (`vfio_set_irqs_validate_and_prepare`), `VFIO_DEVICE_IOEVENTFD`,
//! `VFIO_DEVICE_FEATURE` (`vfio_ioctl_device_feature`) and the PCI hot
//! reset pair. Each decodes the caller's struct, applies the kernel's checks
//! in the kernel's order, and hands the device model a typed request
//! ([`crate::device`]).
//!
//! Eventfd numbers in the arguments are resolved through the front end
//! ([`EventfdResolver`]) before the model runs; a number that does not name
//! an eventfd is carried as [`EventfdArg::Error`] and reported only where
//! the kernel would look at it.

use std::mem::offset_of;

use vfio_bindings::bindings::vfio::{
    vfio_irq_set, VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_TYPE_MASK, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK,
    VFIO_PCI_BAR5_REGION_INDEX, VFIO_PCI_NUM_IRQS,
};

use crate::device::{
    FeatureOps, FeatureRequest, IoeventfdRequest, IrqAction, IrqData, IrqSet, VfioDeviceModel,
    REGION_OFFSET_SHIFT,
};
use crate::error::{Result, VfioError};
use crate::eventfd::EventfdArg;
use crate::memory::UserMemory;

/// `VFIO_DEVICE_FEATURE` = `_IO(VFIO_TYPE, VFIO_BASE + 17)`.
pub const VFIO_DEVICE_FEATURE: u64 = (0x3b << 8) | (100 + 17);
/// `VFIO_DEVICE_IOEVENTFD` = `_IO(VFIO_TYPE, VFIO_BASE + 16)`.
pub const VFIO_DEVICE_IOEVENTFD: u64 = (0x3b << 8) | (100 + 16);
/// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` = `_IO(VFIO_TYPE, VFIO_BASE + 12)`.
pub const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: u64 = (0x3b << 8) | (100 + 12);
/// `VFIO_DEVICE_PCI_HOT_RESET` = `_IO(VFIO_TYPE, VFIO_BASE + 13)`.
pub const VFIO_DEVICE_PCI_HOT_RESET: u64 = (0x3b << 8) | (100 + 13);

/// `VFIO_DEVICE_FEATURE_*` header bits.
pub const FEATURE_MASK: u32 = 0xffff;
/// `VFIO_DEVICE_FEATURE_GET`: read the feature's payload.
pub const FEATURE_GET: u32 = 1 << 16;
/// `VFIO_DEVICE_FEATURE_SET`: write the feature's payload.
pub const FEATURE_SET: u32 = 1 << 17;
/// `VFIO_DEVICE_FEATURE_PROBE`: only ask whether GET/SET are supported.
pub const FEATURE_PROBE: u32 = 1 << 18;
/// Features the VFIO core answers itself (Linux 6.1): migration needs
/// `mig_ops`, DMA logging needs `log_ops`; an emulated device has neither.
pub const FEATURE_MIGRATION: u32 = 1;
/// Migration state transitions (needs `mig_ops`).
pub const FEATURE_MIG_DEVICE_STATE: u32 = 2;
/// Start device DMA dirty logging (needs `log_ops`).
pub const FEATURE_DMA_LOGGING_START: u32 = 6;
/// Stop device DMA dirty logging.
pub const FEATURE_DMA_LOGGING_STOP: u32 = 7;
/// Report device DMA dirty pages.
pub const FEATURE_DMA_LOGGING_REPORT: u32 = 8;
/// vfio-pci's power features and the one whose payload is an eventfd.
pub const FEATURE_PCI_VF_TOKEN: u32 = 0;
/// Enter runtime low power.
pub const FEATURE_LOW_POWER_ENTRY: u32 = 3;
/// Enter runtime low power with a wakeup eventfd.
pub const FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP: u32 = 4;
/// Leave runtime low power.
pub const FEATURE_LOW_POWER_EXIT: u32 = 5;

/// `VFIO_DEVICE_IOEVENTFD_SIZE_MASK`.
const IOEVENTFD_SIZE_MASK: u32 = 0xf;

/// Resolves a program's descriptor number to an engine-held eventfd.
pub type EventfdResolver<'a> = dyn FnMut(i32) -> EventfdArg + 'a;

/// A descriptor number from an argument: negative numbers stay numbers
/// (`-1` detaches in most requests), others go to the front end.
fn resolve(eventfds: &mut EventfdResolver<'_>, fd: i32) -> EventfdArg {
    if fd < 0 {
        EventfdArg::Negative(fd)
    } else {
        eventfds(fd)
    }
}

fn read_exact(user: &dyn UserMemory, addr: u64, len: usize) -> Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    user.read(addr, &mut v).map_err(|_| VfioError::Fault)?;
    Ok(v)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// `VFIO_DEVICE_SET_IRQS`.
pub fn set_irqs(
    model: &dyn VfioDeviceModel,
    arg: u64,
    user: &dyn UserMemory,
    eventfds: &mut EventfdResolver<'_>,
) -> Result<i64> {
    if !model.vfio_pci_irqs() {
        // A device whose driver has no SET_IRQS (e.g. a mediated device
        // that implements only info ioctls) does not know the request.
        return Err(VfioError::NoTty);
    }
    let minsz = offset_of!(vfio_irq_set, count) + 4;
    let hdr = read_exact(user, arg, minsz)?;
    let argsz = u32_at(&hdr, offset_of!(vfio_irq_set, argsz));
    let flags = u32_at(&hdr, offset_of!(vfio_irq_set, flags));
    let index = u32_at(&hdr, offset_of!(vfio_irq_set, index));
    let start = u32_at(&hdr, offset_of!(vfio_irq_set, start));
    let count = u32_at(&hdr, offset_of!(vfio_irq_set, count));
    // vfio_pci_get_irq_count: what GET_IRQ_INFO reports, 0 where it fails.
    let max = model.irq_info(index).map_or(0, |i| i.count);
    // vfio_set_irqs_validate_and_prepare, in its order.
    if (argsz as usize) < minsz
        || index >= VFIO_PCI_NUM_IRQS
        || count >= u32::MAX - start
        || flags & !(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK) != 0
    {
        return Err(VfioError::Invalid("set_irqs header"));
    }
    if start >= max || start + count > max {
        return Err(VfioError::Invalid("set_irqs start/count"));
    }
    let elem = match flags & VFIO_IRQ_SET_DATA_TYPE_MASK {
        VFIO_IRQ_SET_DATA_NONE => 0usize,
        VFIO_IRQ_SET_DATA_BOOL => 1,
        VFIO_IRQ_SET_DATA_EVENTFD => 4,
        _ => return Err(VfioError::Invalid("set_irqs data type")),
    };
    let data_size = count as usize * elem;
    if elem != 0 && (argsz as usize - minsz) < data_size {
        return Err(VfioError::Invalid("set_irqs argsz"));
    }
    let raw = if data_size > 0 {
        read_exact(user, arg + minsz as u64, data_size)?
    } else {
        Vec::new()
    };
    let data = match elem {
        0 => IrqData::None,
        1 => IrqData::Bool(raw.iter().map(|&b| b != 0).collect()),
        _ => IrqData::Eventfds(
            raw.chunks_exact(4)
                .map(|c| resolve(eventfds, i32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
    };
    let action = match flags & VFIO_IRQ_SET_ACTION_TYPE_MASK {
        VFIO_IRQ_SET_ACTION_MASK => IrqAction::Mask,
        VFIO_IRQ_SET_ACTION_UNMASK => IrqAction::Unmask,
        VFIO_IRQ_SET_ACTION_TRIGGER => IrqAction::Trigger,
        _ => IrqAction::Unknown,
    };
    model
        .set_irqs(IrqSet {
            index,
            start,
            count,
            action,
            data,
        })
        .map(|()| 0)
        .map_err(VfioError::Errno)
}

/// `struct vfio_device_ioeventfd`: argsz, flags, offset, data, fd.
const IOEVENTFD_MINSZ: usize = 4 + 4 + 8 + 8 + 4;

/// `VFIO_DEVICE_IOEVENTFD`.
pub fn ioeventfd(
    model: &std::sync::Arc<dyn VfioDeviceModel>,
    arg: u64,
    user: &dyn UserMemory,
    eventfds: &mut EventfdResolver<'_>,
) -> Result<i64> {
    if !model.vfio_pci_irqs() {
        return Err(VfioError::NoTty);
    }
    let b = read_exact(user, arg, IOEVENTFD_MINSZ)?;
    let argsz = u32_at(&b, 0);
    let flags = u32_at(&b, 4);
    let offset = u64_at(&b, 8);
    let data = u64_at(&b, 16);
    let fd = u32_at(&b, 24) as i32;
    if (argsz as usize) < IOEVENTFD_MINSZ || flags & !IOEVENTFD_SIZE_MASK != 0 {
        return Err(VfioError::Invalid("ioeventfd header"));
    }
    let size = flags & IOEVENTFD_SIZE_MASK;
    if size.count_ones() != 1 || fd < -1 {
        return Err(VfioError::Invalid("ioeventfd size/fd"));
    }
    let region = offset >> REGION_OFFSET_SHIFT;
    // Only BARs take ioeventfds; the model checks the range.
    if region > u64::from(VFIO_PCI_BAR5_REGION_INDEX) {
        return Err(VfioError::Invalid("ioeventfd region"));
    }
    let fd = resolve(eventfds, fd);
    model
        .ioeventfd(IoeventfdRequest {
            region: region as u32,
            offset: offset & ((1u64 << REGION_OFFSET_SHIFT) - 1),
            data,
            size,
            fd,
            device: std::sync::Arc::downgrade(model),
        })
        .map(|()| 0)
        .map_err(VfioError::Errno)
}

/// `struct vfio_device_feature`: argsz, flags, then the payload.
const FEATURE_MINSZ: usize = 8;
/// The largest payload copied in: the features an emulated PCI device
/// offers take at most 8 bytes; a bigger argsz is not read past this.
const FEATURE_PAYLOAD_MAX: usize = 4096;

/// `VFIO_DEVICE_FEATURE` (`vfio_ioctl_device_feature`).
pub fn device_feature(
    model: &dyn VfioDeviceModel,
    arg: u64,
    user: &dyn UserMemory,
    eventfds: &mut EventfdResolver<'_>,
) -> Result<i64> {
    let hdr = read_exact(user, arg, FEATURE_MINSZ)?;
    let argsz = u32_at(&hdr, 0);
    let flags = u32_at(&hdr, 4);
    if (argsz as usize) < FEATURE_MINSZ {
        return Err(VfioError::Invalid("feature argsz"));
    }
    if flags & !(FEATURE_MASK | FEATURE_SET | FEATURE_GET | FEATURE_PROBE) != 0 {
        return Err(VfioError::Invalid("feature flags"));
    }
    if flags & FEATURE_PROBE == 0 && flags & FEATURE_SET != 0 && flags & FEATURE_GET != 0 {
        return Err(VfioError::Invalid("feature get and set"));
    }
    let feature = flags & FEATURE_MASK;
    match feature {
        FEATURE_MIGRATION
        | FEATURE_MIG_DEVICE_STATE
        | FEATURE_DMA_LOGGING_START
        | FEATURE_DMA_LOGGING_STOP
        | FEATURE_DMA_LOGGING_REPORT => return Err(VfioError::NoTty),
        _ => {}
    }
    let payload_len = (argsz as usize - FEATURE_MINSZ).min(FEATURE_PAYLOAD_MAX);
    let ops = FeatureOps {
        get: flags & FEATURE_GET != 0,
        set: flags & FEATURE_SET != 0,
        probe: flags & FEATURE_PROBE != 0,
    };
    // The payload is copied by the feature's handler after its own checks;
    // reading it here can only fail where the handler's copy would, so
    // defer the EFAULT: an unreadable payload is handed over as empty and
    // the model answers EFAULT when it needs the bytes.
    let data = if payload_len > 0 {
        read_exact(user, arg + FEATURE_MINSZ as u64, payload_len).ok()
    } else {
        Some(Vec::new())
    };
    let readable = data.is_some();
    let data = data.unwrap_or_default();
    let eventfd = if feature == FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP && data.len() >= 4 {
        Some(resolve(
            eventfds,
            i32::from_ne_bytes([data[0], data[1], data[2], data[3]]),
        ))
    } else {
        None
    };
    let mut req = FeatureRequest {
        feature,
        ops,
        data,
        eventfd,
        payload_readable: readable,
        argsz,
    };
    let r = model.device_feature(&mut req).map_err(VfioError::Errno)?;
    if ops.get && !ops.probe && !req.data.is_empty() {
        user.write(arg + FEATURE_MINSZ as u64, &req.data)
            .map_err(|_| VfioError::Fault)?;
    }
    Ok(r)
}

/// `struct vfio_pci_hot_reset_info` / `vfio_pci_hot_reset`: argsz, flags,
/// count.
const HOT_RESET_MINSZ: usize = 12;

/// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` and `VFIO_DEVICE_PCI_HOT_RESET`.
pub fn hot_reset(
    model: &dyn VfioDeviceModel,
    request: u64,
    arg: u64,
    user: &dyn UserMemory,
) -> Result<i64> {
    // Devices that are not PCI functions do not know these requests.
    let probe = model.hot_reset_probe();
    if probe == libc::ENOTTY {
        return Err(VfioError::NoTty);
    }
    let b = read_exact(user, arg, HOT_RESET_MINSZ)?;
    let argsz = u32_at(&b, 0);
    let flags = u32_at(&b, 4);
    if (argsz as usize) < HOT_RESET_MINSZ || (request == VFIO_DEVICE_PCI_HOT_RESET && flags != 0) {
        return Err(VfioError::Invalid("hot reset header"));
    }
    // Which devices a bus reset would reach, and the group checks of the
    // reset itself, come after the probe. The platform has no bridges or
    // hotplug slots, so the probe always fails and ends the request.
    Err(VfioError::Errno(probe))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn request_numbers() {
        assert_eq!(VFIO_DEVICE_FEATURE, 0x3b75);
        assert_eq!(VFIO_DEVICE_IOEVENTFD, 0x3b74);
        assert_eq!(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, 0x3b70);
        assert_eq!(VFIO_DEVICE_PCI_HOT_RESET, 0x3b71);
        assert_eq!(size_of::<vfio_irq_set>(), 20);
    }
}
