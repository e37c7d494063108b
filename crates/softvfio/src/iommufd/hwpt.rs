//! Hardware page tables (iommufd's `struct iommufd_hwpt_paging`): a VT-d
//! domain that mirrors an IOAS.
//!
//! # Invariants
//!
//! - a HWPT's domain is in its IOAS's `domains` under the HWPT's id, and the
//!   IOAS reserves the domain's aperture complement under the same id;
//! - an automatic HWPT (made by attaching a device to an IOAS) lives exactly
//!   as long as it has a device; a HWPT made by `IOMMU_HWPT_ALLOC` lives
//!   until `IOMMU_DESTROY`, which refuses while a device is attached;
//! - dirty tracking and nesting are refused at allocation (EOPNOTSUPP), as
//!   Linux 6.12 does on QEMU's VT-d, which has neither second-level
//!   access/dirty bits (ECAP.SLADS) nor nested translation: no HWPT of this
//!   model ever tracks dirty pages, so SET_DIRTY_TRACKING and
//!   GET_DIRTY_BITMAP answer EOPNOTSUPP for every HWPT.

use std::sync::Arc;

use super::ioas::Reserved;
use super::{Iommufd, Object, State};
use crate::error::{Result, VfioError};
use crate::iommu::{DomainOps, IommuUnit};
use crate::memory::UserMemory;

/// `IOMMU_HWPT_ALLOC_NEST_PARENT`.
pub const HWPT_ALLOC_NEST_PARENT: u32 = 1 << 0;
/// `IOMMU_HWPT_ALLOC_DIRTY_TRACKING`.
pub const HWPT_ALLOC_DIRTY_TRACKING: u32 = 1 << 1;
/// `IOMMU_HWPT_DATA_NONE`.
pub const HWPT_DATA_NONE: u32 = 0;

/// A paging HWPT.
pub(crate) struct Hwpt {
    pub(crate) ioas: u32,
    pub(crate) domain: Arc<dyn DomainOps>,
    pub(crate) unit: Arc<dyn IommuUnit>,
    pub(crate) auto: bool,
    pub(crate) devices: Vec<u32>,
}

/// Takes a HWPT that left the object table out of its IOAS: its domain's
/// mappings go (areas are unpinned with the IOAS's last domain) and so does
/// its aperture reservation.
pub(crate) fn release(st: &mut State, mem: &dyn UserMemory, id: u32, h: &Hwpt) {
    if let Ok(i) = st.ioas_mut(h.ioas) {
        i.remove_domain(mem, id);
        i.reserved.retain(|r| r.owner != id);
    }
}

/// Allocates a paging HWPT for `unit` on IOAS `ioas`: a new domain, with
/// every area of the IOAS mapped into it. All or nothing; its id.
pub(crate) fn alloc_paging(
    st: &mut State,
    mem: &Arc<dyn UserMemory>,
    ioas: u32,
    unit: &Arc<dyn IommuUnit>,
    auto: bool,
) -> Result<u32> {
    st.ioas(ioas)?;
    let id = st.next_id();
    let domain = unit
        .alloc_domain(mem.clone())
        .map_err(|_| VfioError::NoMem("cannot allocate an IOMMU domain".into()))?;
    let (start, end) = domain.aperture();
    let mut resv = Vec::new();
    if start > 0 {
        resv.push(Reserved {
            start: 0,
            last: start - 1,
            owner: id,
        });
    }
    if end < u64::MAX {
        resv.push(Reserved {
            start: end + 1,
            last: u64::MAX,
            owner: id,
        });
    }
    let i = st.ioas_mut(ioas)?;
    if resv.iter().any(|r| {
        i.first_area(r.start, r.last).is_some()
            || i.allowed.iter().any(|&(s, l)| s <= r.last && r.start <= l)
    }) {
        return Err(VfioError::Errno(libc::EADDRINUSE));
    }
    i.reserved.extend(resv);
    if let Err(e) = i.add_domain(mem.as_ref(), id, domain.clone()) {
        i.reserved.retain(|r| r.owner != id);
        return Err(e);
    }
    st.objects.insert(
        id,
        Object::Hwpt(Hwpt {
            ioas,
            domain,
            unit: unit.clone(),
            auto,
            devices: Vec::new(),
        }),
    );
    Ok(id)
}

/// `IOMMU_HWPT_FAULT_ID_VALID`: `fault_id` names a fault queue.
pub const HWPT_FAULT_ID_VALID: u32 = 1 << 2;

impl Iommufd {
    /// `IOMMU_HWPT_ALLOC` for device `dev_id` on `pt_id`, after the ABI's
    /// flag checks: ENOENT for no such device, EINVAL for a `pt_id` that is
    /// neither an IOAS nor a HWPT, or data for a paging HWPT; EOPNOTSUPP for
    /// dirty tracking or a nesting parent (the model has neither).
    pub fn hwpt_alloc(&self, dev_id: u32, pt_id: u32, flags: u32, data_type: u32) -> Result<u32> {
        let mut st = self.lock();
        let unit = match st.objects.get(&dev_id) {
            Some(Object::Device(d)) => d.unit.clone(),
            _ => return Err(VfioError::NoEntry),
        };
        match st.objects.get(&pt_id) {
            Some(Object::Ioas(_)) => {
                if data_type != HWPT_DATA_NONE {
                    return Err(VfioError::Invalid("paging HWPT takes no data"));
                }
                // iommufd_hwpt_paging_alloc: no fault queue for a paging
                // HWPT in 6.12 (only nested ones take one).
                if flags
                    & (HWPT_ALLOC_NEST_PARENT | HWPT_ALLOC_DIRTY_TRACKING | HWPT_FAULT_ID_VALID)
                    != 0
                {
                    return Err(VfioError::Errno(libc::EOPNOTSUPP));
                }
                let Some(unit) = unit else {
                    return Err(VfioError::Invalid("device has no IOMMU"));
                };
                alloc_paging(&mut st, &self.mem, pt_id, &unit, false)
            }
            // A nested HWPT needs a nesting parent, which is never made.
            Some(Object::Hwpt(_)) => Err(VfioError::Invalid("parent is not a nesting parent")),
            _ => Err(VfioError::Invalid("pt_id is no IOAS or HWPT")),
        }
    }

    /// `IOMMU_HWPT_SET_DIRTY_TRACKING` (after the flag checks) and
    /// `IOMMU_HWPT_GET_DIRTY_BITMAP`: ENOENT for no such HWPT, else
    /// EOPNOTSUPP (no HWPT tracks dirty pages, see the module header).
    pub fn hwpt_dirty(&self, hwpt: u32) -> Result<()> {
        match self.lock().objects.get(&hwpt) {
            Some(Object::Hwpt(_)) => Err(VfioError::Errno(libc::EOPNOTSUPP)),
            _ => Err(VfioError::NoEntry),
        }
    }
}
