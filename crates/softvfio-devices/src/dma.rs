//! The DMA path of a device model.
//!
//! A device never touches memory directly: it asks a [`DmaTarget`], which is
//! whatever sits between the device and memory. Behind the software IOMMU
//! that is an IOMMU DMA port (IOVA → pinned page, with faults); behind a
//! mediated-device pinning API it is `vfio_pin_pages`/`vfio_dma_rw`; in tests
//! it is a plain buffer ([`VecDmaTarget`]). The same register model therefore
//! works unchanged on every path.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::sync::Mutex;

/// Direction of a DMA, seen from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum DmaAccess {
    /// The device reads memory (memory → device).
    Read,
    /// The device writes memory (device → memory).
    Write,
}

impl fmt::Display for DmaAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DmaAccess::Read => "read",
            DmaAccess::Write => "write",
        })
    }
}

/// Why a DMA did not (entirely) happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmaError {
    /// The access faulted at `addr` (not mapped, no permission, outside
    /// memory...). The first `transferred` bytes were moved; nothing at or
    /// after `addr` was touched.
    #[error("DMA {access} fault at {addr:#x} after {transferred} bytes: {reason}")]
    Fault {
        /// The device address that failed.
        addr: u64,
        /// Read or write.
        access: DmaAccess,
        /// Bytes moved before the failure.
        transferred: usize,
        /// The IOMMU's or the pinning path's explanation.
        reason: String,
    },
    /// This DMA path cannot do PASID-tagged (shared virtual memory) DMA.
    #[error("PASID-tagged DMA is not supported by this DMA path (PASID {pasid:#x})")]
    PasidNotSupported {
        /// The PASID the DMA carried.
        pasid: u32,
    },
}

impl DmaError {
    /// Shorthand for [`DmaError::Fault`].
    pub fn fault(
        addr: u64,
        access: DmaAccess,
        transferred: usize,
        reason: impl Into<String>,
    ) -> Self {
        DmaError::Fault {
            addr,
            access,
            transferred,
            reason: reason.into(),
        }
    }

    /// Bytes moved before the failure (a prefix of the request).
    pub fn transferred(&self) -> usize {
        match self {
            DmaError::Fault { transferred, .. } => *transferred,
            DmaError::PasidNotSupported { .. } => 0,
        }
    }
}

/// Where a device's DMA goes.
///
/// Contract: on success the whole buffer was transferred. On error, the
/// first [`DmaError::transferred`] bytes were transferred and nothing beyond
/// them was written to memory; for a read, the bytes of `buf` past that
/// prefix are unspecified (the device decides what it sees there).
/// Implementations must never panic on any address or length.
pub trait DmaTarget: Send + Sync {
    /// Device reads `buf.len()` bytes of memory at bus address `addr`.
    fn dma_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError>;
    /// Device writes `data` to memory at bus address `addr`.
    fn dma_write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError>;
    /// PASID-tagged read: `addr` is a virtual address in the address space
    /// bound to `pasid` (shared virtual memory).
    fn dma_read_pasid(&self, pasid: u32, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let _ = (addr, buf);
        Err(DmaError::PasidNotSupported { pasid })
    }
    /// PASID-tagged write, see [`DmaTarget::dma_read_pasid`].
    fn dma_write_pasid(&self, pasid: u32, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        let _ = (addr, data);
        Err(DmaError::PasidNotSupported { pasid })
    }
}

/// A DMA target backed by a byte vector that covers bus addresses
/// `base..base + len`: for tests, demos and as the simplest possible memory.
///
/// Accesses are checked byte by byte so a transfer that runs off the end of
/// memory, or into a read-only range, moves exactly the accessible prefix and
/// reports a fault where it stopped, like a page-granular IOMMU would at a
/// finer grain.
#[derive(Debug)]
pub struct VecDmaTarget {
    base: u64,
    state: Mutex<VecState>,
}

#[derive(Debug, Default)]
struct VecState {
    mem: Vec<u8>,
    read_only: Vec<Range<u64>>,
    /// PASIDs whose tagged DMA is accepted (into the same memory).
    pasids: BTreeSet<u32>,
    /// Fail every access (an IOMMU with nothing mapped).
    fail_all: bool,
    reads: u64,
    writes: u64,
    last_pasid: Option<u32>,
}

impl VecDmaTarget {
    /// Zeroed memory of `len` bytes at bus address `base`.
    pub fn new(base: u64, len: usize) -> Self {
        VecDmaTarget {
            base,
            state: Mutex::new(VecState {
                mem: vec![0; len],
                ..VecState::default()
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, VecState> {
        // A panic elsewhere while holding the lock leaves plain bytes behind:
        // still usable, so ignore poisoning instead of propagating a panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Device writes into `range` fault (like a read-only IOMMU mapping).
    pub fn add_read_only(&self, range: Range<u64>) {
        self.state().read_only.push(range);
    }

    /// Accept PASID-tagged DMA for `pasid`, into this same memory.
    pub fn allow_pasid(&self, pasid: u32) {
        self.state().pasids.insert(pasid);
    }

    /// Make every access fault (or stop doing so).
    pub fn set_fail_all(&self, fail: bool) {
        self.state().fail_all = fail;
    }

    /// Host-side read of memory (no fault rules); `None` outside memory.
    pub fn read_bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let st = self.state();
        let start = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let end = start.checked_add(len)?;
        st.mem.get(start..end).map(<[u8]>::to_vec)
    }

    /// Host-side write of memory (no fault rules); false outside memory.
    pub fn write_bytes(&self, addr: u64, data: &[u8]) -> bool {
        let mut st = self.state();
        let Some(start) = addr
            .checked_sub(self.base)
            .and_then(|o| usize::try_from(o).ok())
        else {
            return false;
        };
        let Some(end) = start.checked_add(data.len()) else {
            return false;
        };
        match st.mem.get_mut(start..end) {
            Some(dst) => {
                dst.copy_from_slice(data);
                true
            }
            None => false,
        }
    }

    /// (device reads, device writes) that reached this target, including
    /// faulting ones.
    pub fn access_counts(&self) -> (u64, u64) {
        let st = self.state();
        (st.reads, st.writes)
    }

    /// The PASID of the last PASID-tagged access, if any.
    pub fn last_pasid(&self) -> Option<u32> {
        self.state().last_pasid
    }

    /// Length of the accessible prefix of `addr..addr+len`, and the reason
    /// the next byte is not accessible.
    fn accessible(
        &self,
        st: &VecState,
        addr: u64,
        len: usize,
        access: DmaAccess,
    ) -> (usize, &'static str) {
        if st.fail_all {
            return (0, "target fails all accesses");
        }
        let mem_end = self.base.saturating_add(st.mem.len() as u64);
        let mut ok = 0usize;
        while ok < len {
            let a = match addr.checked_add(ok as u64) {
                Some(a) => a,
                None => return (ok, "address wraps"),
            };
            if a < self.base || a >= mem_end {
                return (ok, "outside memory");
            }
            if access == DmaAccess::Write && st.read_only.iter().any(|r| r.contains(&a)) {
                return (ok, "write to read-only memory");
            }
            ok += 1;
        }
        (ok, "")
    }

    fn do_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let mut st = self.state();
        st.reads += 1;
        let (ok, why) = self.accessible(&st, addr, buf.len(), DmaAccess::Read);
        // `accessible` proved addr..addr+ok lies inside memory.
        let start = addr.wrapping_sub(self.base) as usize;
        if ok > 0 {
            if let (Some(src), Some(dst)) = (st.mem.get(start..start + ok), buf.get_mut(..ok)) {
                dst.copy_from_slice(src);
            }
        }
        if ok == buf.len() {
            Ok(())
        } else {
            Err(DmaError::fault(
                addr.wrapping_add(ok as u64),
                DmaAccess::Read,
                ok,
                why,
            ))
        }
    }

    fn do_write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        let mut st = self.state();
        st.writes += 1;
        let (ok, why) = self.accessible(&st, addr, data.len(), DmaAccess::Write);
        let start = (addr.wrapping_sub(self.base)) as usize;
        if ok > 0 {
            if let (Some(dst), Some(src)) = (st.mem.get_mut(start..start + ok), data.get(..ok)) {
                dst.copy_from_slice(src);
            }
        }
        if ok == data.len() {
            Ok(())
        } else {
            Err(DmaError::fault(
                addr.wrapping_add(ok as u64),
                DmaAccess::Write,
                ok,
                why,
            ))
        }
    }

    fn check_pasid(&self, pasid: u32, addr: u64, access: DmaAccess) -> Result<(), DmaError> {
        let mut st = self.state();
        st.last_pasid = Some(pasid);
        if st.pasids.contains(&pasid) {
            Ok(())
        } else {
            Err(DmaError::fault(
                addr,
                access,
                0,
                format!("PASID {pasid:#x} not bound"),
            ))
        }
    }
}

impl DmaTarget for VecDmaTarget {
    fn dma_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.do_read(addr, buf)
    }

    fn dma_write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        self.do_write(addr, data)
    }

    fn dma_read_pasid(&self, pasid: u32, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.check_pasid(pasid, addr, DmaAccess::Read)?;
        self.do_read(addr, buf)
    }

    fn dma_write_pasid(&self, pasid: u32, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        self.check_pasid(pasid, addr, DmaAccess::Write)?;
        self.do_write(addr, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_target_partial_fault_reports_prefix() {
        let t = VecDmaTarget::new(0x1000, 16);
        let mut buf = [0xaa; 8];
        let e = t.dma_read(0x100c, &mut buf).unwrap_err();
        assert_eq!(e.transferred(), 4);
        assert!(matches!(
            e,
            DmaError::Fault {
                addr: 0x1010,
                access: DmaAccess::Read,
                ..
            }
        ));

        t.add_read_only(0x1004..0x1008);
        let e = t.dma_write(0x1000, &[1; 8]).unwrap_err();
        assert_eq!(e.transferred(), 4);
        assert_eq!(
            t.read_bytes(0x1000, 8).unwrap(),
            vec![1, 1, 1, 1, 0, 0, 0, 0]
        );
    }

    #[test]
    fn vec_target_extreme_addresses_do_not_panic() {
        let t = VecDmaTarget::new(0x1000, 16);
        let mut buf = [0; 4];
        assert!(t.dma_read(u64::MAX - 1, &mut buf).is_err());
        assert!(t.dma_write(u64::MAX, &[1, 2]).is_err());
        assert!(t.dma_read(0, &mut buf).is_err());
        assert!(t.read_bytes(u64::MAX, 4).is_none());
        assert!(!t.write_bytes(u64::MAX, &[1]));
    }

    #[test]
    fn default_pasid_methods_refuse() {
        struct Plain;
        impl DmaTarget for Plain {
            fn dma_read(&self, _: u64, _: &mut [u8]) -> Result<(), DmaError> {
                Ok(())
            }
            fn dma_write(&self, _: u64, _: &[u8]) -> Result<(), DmaError> {
                Ok(())
            }
        }
        let mut b = [0u8; 1];
        assert_eq!(
            Plain.dma_read_pasid(5, 0, &mut b),
            Err(DmaError::PasidNotSupported { pasid: 5 })
        );
        assert_eq!(
            Plain.dma_write_pasid(5, 0, &b),
            Err(DmaError::PasidNotSupported { pasid: 5 })
        );
    }
}
