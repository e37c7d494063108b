//! The type1 ioctls on a `/dev/iommu` file (iommufd's `vfio_compat.c`, the
//! `iommufd_compat_type1` and `iommufd_compat_type1v2` modes): they act on
//! the IOAS `IOMMU_VFIO_IOAS` selected, and answer ENODEV without one.
//!
//! Where they differ from type1 (`crate::type1`): no `dma_entry_limit`
//! (`DMA_AVAIL` reports `u32::MAX`); a map without READ or WRITE is accepted;
//! an unmap must cover whole areas (ENOENT, not EINVAL) unless the mode is
//! type1, which cuts areas at the ends of the range first; `GET_INFO`
//! reports the IOAS's ranges and page sizes. Locked pages are charged per
//! area as iommufd does (see `ioas`).

use super::{CompatType, Iommufd};
use crate::error::{Result, VfioError};
use crate::iommu::Prot;
use crate::memory::{UserMemory, PAGE_SIZE};
use crate::uapi::{
    Wire, VFIO_CHECK_EXTENSION, VFIO_GET_API_VERSION, VFIO_IOMMU_GET_INFO, VFIO_IOMMU_MAP_DMA,
    VFIO_IOMMU_UNMAP_DMA, VFIO_SET_IOMMU,
};

const TYPE1_IOMMU: u64 = 1;
const TYPE1V2_IOMMU: u64 = 3;
const DMA_CC_IOMMU: u64 = 4;
const UNMAP_ALL: u64 = 9;
const MAP_READ: u32 = 1;
const MAP_WRITE: u32 = 2;
const UNMAP_FLAG_ALL: u32 = 2;
const INFO_PGSIZES: u32 = 1;
const INFO_CAPS: u32 = 2;
const CAP_IOVA_RANGE: u16 = 1;
const CAP_DMA_AVAIL: u16 = 3;

impl Iommufd {
    /// The compatibility IOAS: ENODEV when none is selected.
    fn compat_ioas(&self) -> Result<u32> {
        self.lock().vfio_ioas.ok_or(VfioError::NoDevice)
    }

    /// `VFIO_SET_IOMMU` on `/dev/iommu`.
    pub fn compat_set_iommu(&self, kind: u64) -> Result<()> {
        let t = match kind {
            TYPE1_IOMMU => CompatType::Type1,
            TYPE1V2_IOMMU => CompatType::Type1v2,
            _ => return Err(VfioError::Invalid("only type1 and type1v2")),
        };
        let ioas = self.compat_ioas()?;
        if t == CompatType::Type1 {
            // Type1 may bisect mappings: no large pages (Linux's reason).
            self.huge_pages(ioas, Some(0))?;
        }
        self.lock().compat = Some(t);
        Ok(())
    }

    /// Splits the areas of `ioas` that hold both `at - 1` and `at`.
    fn cut(&self, ioas: u32, at: u64) -> Result<()> {
        if at == 0 {
            return Ok(());
        }
        let key = self.history_key(ioas);
        let mut st = self.lock();
        let (i, history) = st.ioas_and_history(ioas)?;
        let Some(a) = i.first_area(at - 1, at - 1).cloned() else {
            return Ok(());
        };
        if a.last < at {
            return Ok(());
        }
        if !at.is_multiple_of(PAGE_SIZE) {
            return Err(VfioError::Invalid("cut not page aligned"));
        }
        let head_len = at - a.iova;
        let mut head = a.clone();
        head.last = at - 1;
        let mut tail = a.clone();
        tail.iova = at;
        tail.uptr = a.uptr + head_len;
        // Both pieces keep sharing the area's pages (and its pins' counts).
        head.access_pins = a.access_pins.range(..at).map(|(k, v)| (*k, *v)).collect();
        tail.access_pins = a.access_pins.range(at..).map(|(k, v)| (*k, *v)).collect();
        // The head keeps the area's history; the tail starts its own with
        // the map that made its memory.
        tail.history = match history {
            Some(h) => {
                h.record_area_split(a.history, key, a.iova, at, tail.uptr, tail.len(), a.prot)
            }
            None => crate::sanitizer::HistorySlot::NONE,
        };
        i.areas.insert(head.iova, head);
        i.areas.insert(tail.iova, tail);
        Ok(())
    }
}

/// A VFIO type1 ioctl on `/dev/iommu` (ENOTTY for any other request).
pub fn ioctl(ctx: &Iommufd, request: u64, arg: u64, user: &dyn UserMemory) -> Result<i64> {
    match request {
        VFIO_GET_API_VERSION => Ok(0),
        VFIO_CHECK_EXTENSION => match arg {
            TYPE1_IOMMU | TYPE1V2_IOMMU | UNMAP_ALL => Ok(1),
            DMA_CC_IOMMU => {
                let ioas = ctx.compat_ioas()?;
                let st = ctx.lock();
                let i = st.ioas(ioas)?;
                Ok(i64::from(
                    !i.domains.is_empty()
                        && i.domains.iter().all(|(_, d)| d.enforce_cache_coherency()),
                ))
            }
            _ => Ok(0),
        },
        VFIO_SET_IOMMU => ctx.compat_set_iommu(arg).map(|()| 0),
        VFIO_IOMMU_MAP_DMA => {
            let w = Wire::read(user, arg, 32)?;
            let flags = w.u32_at(4);
            if w.u32_at(0) < 32 || flags & !(MAP_READ | MAP_WRITE) != 0 {
                return Err(VfioError::Invalid("bad argsz or flags"));
            }
            let prot = Prot {
                read: flags & MAP_READ != 0,
                write: flags & MAP_WRITE != 0,
            };
            let ioas = ctx.compat_ioas()?;
            let (vaddr, iova, size) = (w.u64_at(8), w.u64_at(16), w.u64_at(24));
            ctx.map(ioas, vaddr, size, Some(iova), prot).map(|_| 0)
        }
        VFIO_IOMMU_UNMAP_DMA => {
            let mut w = Wire::read(user, arg, 24)?;
            let flags = w.u32_at(4);
            if w.u32_at(0) < 24 || flags & !UNMAP_FLAG_ALL != 0 {
                return Err(VfioError::Invalid("bad argsz or flags"));
            }
            let ioas = ctx.compat_ioas()?;
            let (iova, size) = (w.u64_at(8), w.u64_at(16));
            let n = if flags & UNMAP_FLAG_ALL != 0 {
                if iova != 0 || size != 0 {
                    return Err(VfioError::Invalid("unmap-all takes no range"));
                }
                ctx.unmap_all(ioas)?
            } else {
                if ctx.lock().compat == Some(CompatType::Type1) && size > 0 {
                    let end = iova
                        .checked_add(size)
                        .ok_or(VfioError::Errno(libc::EOVERFLOW))?;
                    ctx.cut(ioas, end)?;
                    ctx.cut(ioas, iova)?;
                }
                ctx.unmap(ioas, iova, size)?
            };
            w.put_u64(16, n);
            w.write_back(user, arg, 24)?;
            Ok(0)
        }
        VFIO_IOMMU_GET_INFO => get_info(ctx, arg, user).map(|()| 0),
        _ => Err(VfioError::NoTty),
    }
}

/// `VFIO_IOMMU_GET_INFO`: page sizes and two capabilities, DMA_AVAIL then
/// IOVA_RANGE, each 8-byte aligned; as many as fit in `argsz` are written,
/// and `argsz` comes back as the size that holds them all.
fn get_info(ctx: &Iommufd, arg: u64, user: &dyn UserMemory) -> Result<()> {
    const INFO: usize = 24;
    let head = Wire::read(user, arg, 16)?;
    let argsz = head.u32_at(0) as usize;
    if argsz < 16 {
        return Err(VfioError::Invalid("argsz too small"));
    }
    let ioas = ctx.compat_ioas()?;
    let (ranges, pgsizes) = {
        let st = ctx.lock();
        let i = st.ioas(ioas)?;
        let pg = i
            .domains
            .iter()
            .fold(u64::MAX, |acc, (_, d)| acc & d.pgsize_bitmap())
            & !(PAGE_SIZE - 1);
        (i.iova_ranges(), pg)
    };
    let mut dma = Vec::with_capacity(12);
    dma.extend_from_slice(&CAP_DMA_AVAIL.to_ne_bytes());
    dma.extend_from_slice(&1u16.to_ne_bytes());
    dma.extend_from_slice(&0u32.to_ne_bytes());
    dma.extend_from_slice(&u32::MAX.to_ne_bytes());
    let mut iova = Vec::with_capacity(16 + 16 * ranges.len());
    iova.extend_from_slice(&CAP_IOVA_RANGE.to_ne_bytes());
    iova.extend_from_slice(&1u16.to_ne_bytes());
    iova.extend_from_slice(&0u32.to_ne_bytes());
    iova.extend_from_slice(&(ranges.len() as u32).to_ne_bytes());
    iova.extend_from_slice(&0u32.to_ne_bytes());
    for (s, l) in &ranges {
        iova.extend_from_slice(&s.to_ne_bytes());
        iova.extend_from_slice(&l.to_ne_bytes());
    }
    let mut total = INFO;
    let mut last_cap: Option<usize> = None;
    for cap in [dma, iova] {
        let avail = argsz.saturating_sub(total);
        if argsz > total && avail >= cap.len() {
            user.write(arg + total as u64, &cap)
                .map_err(|_| VfioError::Fault)?;
        }
        if let Some(prev) = last_cap {
            if argsz >= total {
                user.write(arg + prev as u64 + 4, &(total as u32).to_ne_bytes())
                    .map_err(|_| VfioError::Fault)?;
            }
        }
        last_cap = Some(total);
        total += cap.len().next_multiple_of(8);
    }
    let mut w = Wire(vec![0u8; INFO]);
    w.put_u32(0, total as u32);
    w.put_u32(4, INFO_PGSIZES | INFO_CAPS);
    w.put_u64(8, pgsizes);
    w.put_u32(16, if argsz >= total { INFO as u32 } else { 0 });
    w.write_back(user, arg, argsz.min(INFO))
}
