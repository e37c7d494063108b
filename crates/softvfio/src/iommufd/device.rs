//! Devices bound to an iommufd context through their VFIO cdev
//! (`VFIO_DEVICE_BIND_IOMMUFD`), and their attachment to an IOAS or HWPT
//! (`VFIO_DEVICE_ATTACH_IOMMUFD_PT` / `DETACH`).
//!
//! # Invariants
//!
//! - a bound device is an object of the context until its cdev is closed
//!   (`IOMMU_DESTROY` on it answers EBUSY);
//! - an attached device's requester id points at its HWPT's domain in the
//!   IOMMU unit, and its reserved regions are reserved in the HWPT's IOAS
//!   under the device's id; a detached device has neither;
//! - replacing a device's HWPT never leaves it without translation: the
//!   unit is switched to the new domain before the old HWPT lets it go.

use std::sync::Arc;

use super::hwpt::{self, alloc_paging};
use super::ioas::Reserved;
use super::{Iommufd, Object, State};
use crate::error::{Result, VfioError};
use crate::iommu::{HwInfo, IommuUnit, ResvKind};
use crate::memory::UserMemory;
use crate::platform::{Device, Group, GroupKind};

/// A device bound to a context.
pub(crate) struct BoundDevice {
    pub(crate) group: Arc<Group>,
    pub(crate) device: Arc<Device>,
    /// Its IOMMU unit (None for a mediated device).
    pub(crate) unit: Option<Arc<dyn IommuUnit>>,
    pub(crate) hwpt: Option<u32>,
}

fn same_unit(a: &Arc<dyn IommuUnit>, b: &Arc<dyn IommuUnit>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// EADDRINUSE when an area or an allowed range of `ioas` lies in one of
/// the device's reserved regions (checked before any domain is made, as
/// `iopt_table_enforce_dev_resv_regions` comes first in Linux).
fn check_device_resv(st: &State, ioas: u32, group: &Group) -> Result<()> {
    let i = st.ioas(ioas)?;
    let hit = group
        .reserved_regions()
        .into_iter()
        .filter(|r| r.kind != ResvKind::DirectRelaxable)
        .any(|r| {
            i.first_area(r.start, r.end).is_some()
                || i.allowed.iter().any(|&(s, l)| s <= r.end && r.start <= l)
        });
    if hit {
        return Err(VfioError::Errno(libc::EADDRINUSE));
    }
    Ok(())
}

/// Reserves the device's regions in `ioas` (replacing what it reserved
/// there before): EADDRINUSE when an area or an allowed range is in one.
fn reserve_device(st: &mut State, ioas: u32, dev_id: u32, group: &Group) -> Result<()> {
    let regions: Vec<Reserved> = group
        .reserved_regions()
        .into_iter()
        .filter(|r| r.kind != ResvKind::DirectRelaxable)
        .map(|r| Reserved {
            start: r.start,
            last: r.end,
            owner: dev_id,
        })
        .collect();
    let i = st.ioas_mut(ioas)?;
    if regions.iter().any(|r| {
        i.first_area(r.start, r.last).is_some()
            || i.allowed.iter().any(|&(s, l)| s <= r.last && r.start <= l)
    }) {
        return Err(VfioError::Errno(libc::EADDRINUSE));
    }
    i.reserved.retain(|r| r.owner != dev_id);
    i.reserved.extend(regions);
    Ok(())
}

fn unreserve_device(st: &mut State, ioas: u32, dev_id: u32) {
    if let Ok(i) = st.ioas_mut(ioas) {
        i.reserved.retain(|r| r.owner != dev_id);
    }
}

fn hwpt_of(st: &State, id: u32) -> Option<&hwpt::Hwpt> {
    match st.objects.get(&id) {
        Some(Object::Hwpt(h)) => Some(h),
        _ => None,
    }
}

/// Lets the device go from its HWPT (it no longer translates through it),
/// dropping an automatic HWPT with its last device.
fn leave_hwpt(
    st: &mut State,
    mem: &dyn UserMemory,
    dev_id: u32,
    old: u32,
    keep_resv_in: Option<u32>,
) {
    let Some(Object::Hwpt(h)) = st.objects.get_mut(&old) else {
        return;
    };
    h.devices.retain(|d| *d != dev_id);
    let (ioas, empty_auto) = (h.ioas, h.auto && h.devices.is_empty());
    if keep_resv_in != Some(ioas) {
        unreserve_device(st, ioas, dev_id);
    }
    if empty_auto {
        if let Some(Object::Hwpt(h)) = st.objects.remove(&old) {
            hwpt::release(st, mem, old, &h);
        }
    }
}

/// Detaches a device, if attached (detach and last close).
pub(crate) fn detach_locked(st: &mut State, mem: &dyn UserMemory, dev_id: u32) {
    let Some(Object::Device(d)) = st.objects.get_mut(&dev_id) else {
        return;
    };
    let Some(old) = d.hwpt.take() else { return };
    if let (Some(unit), Some(rid)) = (&d.unit, d.device.rid) {
        unit.detach_device(rid);
    }
    leave_hwpt(st, mem, dev_id, old, None);
}

/// Points the device at HWPT `pt` (reserving its regions first), then lets
/// the old HWPT go.
fn attach_hwpt(st: &mut State, mem: &dyn UserMemory, dev_id: u32, pt: u32) -> Result<()> {
    let (group, device, unit, old) = match st.objects.get(&dev_id) {
        Some(Object::Device(d)) => (d.group.clone(), d.device.clone(), d.unit.clone(), d.hwpt),
        _ => return Err(VfioError::NoEntry),
    };
    if old == Some(pt) {
        return Ok(());
    }
    let (Some(unit), Some(rid)) = (unit, device.rid) else {
        return Err(VfioError::Invalid("device has no IOMMU"));
    };
    let Some(h) = hwpt_of(st, pt) else {
        return Err(VfioError::NoEntry);
    };
    if !same_unit(&h.unit, &unit) {
        return Err(VfioError::Invalid("HWPT of another IOMMU"));
    }
    let (ioas, domain) = (h.ioas, h.domain.clone());
    let old_ioas = old.and_then(|o| hwpt_of(st, o)).map(|h| h.ioas);
    reserve_device(st, ioas, dev_id, &group)?;
    if let Err(e) = unit.attach_device(rid, &domain) {
        if old_ioas != Some(ioas) {
            unreserve_device(st, ioas, dev_id);
        }
        return Err(e.into());
    }
    if let Some(Object::Hwpt(h)) = st.objects.get_mut(&pt) {
        h.devices.push(dev_id);
    }
    if let Some(Object::Device(d)) = st.objects.get_mut(&dev_id) {
        d.hwpt = Some(pt);
    }
    if let Some(old) = old {
        leave_hwpt(st, mem, dev_id, old, Some(ioas));
    }
    Ok(())
}

impl Iommufd {
    /// Is object `id` an emulated access (a bound mediated device)?
    pub fn is_access(&self, id: u32) -> bool {
        matches!(self.lock().objects.get(&id), Some(Object::Access(_)))
    }

    /// `VFIO_DEVICE_BIND_IOMMUFD`: the device becomes an object; its id. A
    /// device without an IOMMU (mediated) becomes an emulated access
    /// (`vfio_iommufd_emulated_bind`), which the caller hands to the device
    /// model ([`super::IommufdAccess`]).
    pub fn bind(&self, group: &Arc<Group>, device: &Arc<Device>) -> u32 {
        let mut st = self.lock();
        let id = st.next_id();
        let unit = match &group.kind {
            GroupKind::Iommu(u) => Some(u.clone()),
            GroupKind::Emulated => {
                st.objects
                    .insert(id, Object::Access(super::access::Access::new(&device.name)));
                return id;
            }
        };
        st.objects.insert(
            id,
            Object::Device(BoundDevice {
                group: group.clone(),
                device: device.clone(),
                unit,
                hwpt: None,
            }),
        );
        id
    }

    /// Last close of a bound cdev: detach and forget the device.
    pub fn unbind(&self, dev_id: u32) {
        if self.is_access(dev_id) {
            // iommufd_access_destroy: detach (the device drops its pins
            // through its unmap callback), then the object goes.
            let _ = self.access_set_ioas(dev_id, None);
            self.lock().objects.remove(&dev_id);
            return;
        }
        let mut st = self.lock();
        detach_locked(&mut st, self.mem.as_ref(), dev_id);
        st.objects.remove(&dev_id);
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: attaches (or moves) the device to
    /// HWPT `pt_id`, or to an IOAS through an automatic HWPT (an existing
    /// one of the same IOMMU when there is one); the HWPT id. ENOENT for no
    /// such object, EINVAL for one that is neither.
    pub fn attach(&self, dev_id: u32, pt_id: u32) -> Result<u32> {
        if self.is_access(dev_id) {
            // vfio_iommufd_emulated_attach_ioas: only an IOAS (a HWPT or
            // any other id is ENOENT, from iommufd_get_ioas); pt_id stays.
            return self.access_set_ioas(dev_id, Some(pt_id)).map(|()| pt_id);
        }
        let mut st = self.lock();
        let mem = self.mem.clone();
        match st.objects.get(&pt_id) {
            None => Err(VfioError::NoEntry),
            Some(Object::Device(_)) | Some(Object::Access(_)) => {
                Err(VfioError::Invalid("pt_id is a device"))
            }
            Some(Object::Fault(_)) => Err(VfioError::Invalid("pt_id is a fault queue")),
            Some(Object::Hwpt(_)) => {
                attach_hwpt(&mut st, mem.as_ref(), dev_id, pt_id).map(|()| pt_id)
            }
            Some(Object::Ioas(_)) => {
                let unit = match st.objects.get(&dev_id) {
                    Some(Object::Device(d)) => d.unit.clone(),
                    _ => return Err(VfioError::NoEntry),
                };
                let Some(unit) = unit else {
                    return Err(VfioError::Invalid("device has no IOMMU"));
                };
                let current = match st.objects.get(&dev_id) {
                    Some(Object::Device(d)) => d.hwpt,
                    _ => None,
                };
                // Already on an automatic HWPT of this IOAS: nothing to do.
                if let Some(h) = current.and_then(|c| hwpt_of(&st, c)) {
                    if h.auto && h.ioas == pt_id {
                        return current.ok_or(VfioError::NoEntry);
                    }
                }
                let group = match st.objects.get(&dev_id) {
                    Some(Object::Device(d)) => d.group.clone(),
                    _ => return Err(VfioError::NoEntry),
                };
                check_device_resv(&st, pt_id, &group)?;
                let reuse: Vec<u32> = st
                    .objects
                    .iter()
                    .filter_map(|(id, o)| match o {
                        Object::Hwpt(h)
                            if h.auto && h.ioas == pt_id && same_unit(&h.unit, &unit) =>
                        {
                            Some(*id)
                        }
                        _ => None,
                    })
                    .collect();
                for h in reuse {
                    if attach_hwpt(&mut st, mem.as_ref(), dev_id, h).is_ok() {
                        return Ok(h);
                    }
                }
                let new = alloc_paging(&mut st, &mem, pt_id, &unit, true)?;
                match attach_hwpt(&mut st, mem.as_ref(), dev_id, new) {
                    Ok(()) => Ok(new),
                    Err(e) => {
                        if let Some(Object::Hwpt(h)) = st.objects.remove(&new) {
                            hwpt::release(&mut st, mem.as_ref(), new, &h);
                        }
                        Err(e)
                    }
                }
            }
        }
    }

    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT` (a no-op when not attached).
    pub fn detach(&self, dev_id: u32) {
        if self.is_access(dev_id) {
            let _ = self.access_set_ioas(dev_id, None);
            return;
        }
        let mut st = self.lock();
        detach_locked(&mut st, self.mem.as_ref(), dev_id);
    }

    /// `IOMMU_GET_HW_INFO` of a bound device: ENOENT for no such device;
    /// `None` when its IOMMU reports nothing (type NONE).
    pub fn hw_info(&self, dev_id: u32) -> Result<Option<HwInfo>> {
        match self.lock().objects.get(&dev_id) {
            Some(Object::Device(d)) => Ok(d.unit.as_ref().and_then(|u| u.hw_info())),
            _ => Err(VfioError::NoEntry),
        }
    }
}
