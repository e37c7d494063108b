//! DMA through the software IOMMU: a [`DmaTarget`] over a
//! [`soft_iommu::DmaPort`].
//!
//! A `DmaPort` is `Send` but not `Sync` (one in-flight slot, one writer), a
//! `DmaTarget` must be both; the adapter keeps the port behind a mutex. A
//! device model issues one DMA at a time anyway (edu runs its transfer
//! under its own lock), so the mutex is never contended in practice.

use std::sync::{Arc, Mutex, MutexGuard};

use soft_iommu::{Access, DmaPort, Fault, Iommu};

use crate::dma::{DmaAccess, DmaError, DmaTarget};

/// The DMA path of one device (requester id) behind a software IOMMU unit.
#[derive(Debug)]
pub struct IommuDmaTarget {
    port: Mutex<DmaPort>,
    rid: u16,
}

impl IommuDmaTarget {
    /// DMA through `port`.
    pub fn new(port: DmaPort) -> Self {
        let rid = port.rid();
        IommuDmaTarget {
            port: Mutex::new(port),
            rid,
        }
    }

    /// A fresh port of device `rid` on `unit`.
    pub fn for_device(unit: &Arc<Iommu>, rid: u16) -> Self {
        Self::new(unit.dma_port(rid))
    }

    /// Requester id (bus << 8 | devfn) the DMA is tagged with.
    pub fn rid(&self) -> u16 {
        self.rid
    }

    fn port(&self) -> MutexGuard<'_, DmaPort> {
        // The port holds no invariant a panicking holder could break.
        self.port.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn to_dma_access(a: Access) -> DmaAccess {
    match a {
        Access::Read => DmaAccess::Read,
        Access::Write => DmaAccess::Write,
    }
}

/// A port fault names the IOVA of the request that failed; everything
/// before it was transferred.
fn fault_error(f: &Fault, start: u64, len: usize) -> DmaError {
    let transferred = usize::try_from(f.iova.saturating_sub(start)).map_or(len, |n| n.min(len));
    DmaError::fault(f.iova, to_dma_access(f.access), transferred, f.to_string())
}

impl DmaTarget for IommuDmaTarget {
    fn dma_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let len = buf.len();
        self.port()
            .read(addr, buf)
            .map_err(|f| fault_error(&f, addr, len))
    }

    fn dma_write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        self.port()
            .write(addr, data)
            .map_err(|f| fault_error(&f, addr, data.len()))
    }

    /// PASID-tagged DMA: the port translates each page with the PASID
    /// (process bond or nested through the guest PASID table) and records
    /// faults with the PASID; the bytes before a fault were transferred.
    fn dma_read_pasid(&self, pasid: u32, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let len = buf.len();
        self.port()
            .read_pasid(pasid, addr, buf)
            .map_err(|f| fault_error(&f, addr, len))
    }

    fn dma_write_pasid(&self, pasid: u32, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        self.port()
            .write_pasid(pasid, addr, data)
            .map_err(|f| fault_error(&f, addr, data.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edu::EduDevice;
    use soft_iommu::{FaultReason, IommuConfig, PhysMemory, Prot, VecMemory};
    use softvfio::device::VfioDeviceModel;

    fn w(d: &EduDevice, off: u64, v: u64) {
        assert_eq!(d.region_write(0, off, &v.to_le_bytes()), Ok(8));
    }

    fn dma(d: &EduDevice, src: u64, dst: u64, cnt: u64, to_ram: bool) {
        w(d, 0x80, src);
        w(d, 0x88, dst);
        w(d, 0x90, cnt);
        w(d, 0x98, 1 | if to_ram { 2 } else { 0 });
    }

    #[test]
    fn edu_behind_the_soft_iommu() {
        let unit = Iommu::new(IommuConfig::default());
        let mem = Arc::new(VecMemory::new(0x10_0000, 0x10_0000));
        let domain = unit.create_domain(mem.clone()).unwrap();
        domain
            .map(0x100_0000, 0x10_0000, 0x4000, Prot::READ)
            .unwrap();
        domain.map(0x200_0000, 0x18_0000, 0x4000, Prot::RW).unwrap();
        let rid = 0x18; // 00:03.0
        unit.attach_device(rid, &domain).unwrap();

        let pattern: Vec<u8> = (0..0x4000).map(|i: usize| (i * 7 + 3) as u8).collect();
        mem.write(0x10_0000, &pattern).unwrap();

        let d = EduDevice::new("0000:00:03.0");
        let target = Arc::new(IommuDmaTarget::for_device(&unit, rid));
        assert_eq!(target.rid(), rid);
        d.set_dma_target(target);
        assert_eq!(d.region_write(7, 4, &0x0107u16.to_le_bytes()), Ok(2));

        // round trip as the conformance probe does it
        dma(&d, 0x100_0000 + 100, 0x40000, 3000, false);
        dma(&d, 0x40000, 0x200_0000 + 200, 3000, true);
        let mut out = vec![0u8; 3000];
        mem.read(0x18_0000 + 200, &mut out).unwrap();
        assert_eq!(out, pattern[100..3100]);

        // write into the read-only mapping: blocked, recorded
        dma(&d, 0x40000, 0x100_0000, 64, true);
        let mut first = [0u8; 64];
        mem.read(0x10_0000, &mut first).unwrap();
        assert_eq!(first[..], pattern[..64]);
        let faults = unit.take_faults();
        assert_eq!(faults.len(), 1);
        assert_eq!(faults[0].reason, FaultReason::NoWrite);
        assert_eq!(faults[0].rid, rid);

        // a read running off the end of the mapping: prefix, then zeros
        dma(&d, 0x100_0000 + 0x4000 - 32, 0x40000, 64, false);
        let buf = d.dma_buffer();
        assert_eq!(buf[..32], pattern[0x4000 - 32..]);
        assert_eq!(buf[32..64], [0; 32]);
        assert_eq!(unit.take_faults()[0].reason, FaultReason::NotPresent);

        // PASID-tagged DMA with a PASID nothing is bound to: the fault
        // log names the PASID and memory stays untouched
        assert_eq!(
            d.region_write(0, 0xa0, &0x8000_0007u32.to_le_bytes()),
            Ok(4)
        );
        dma(&d, 0x40000, 0x200_0000, 64, true);
        let f = unit.take_faults();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].pasid, Some(7));
        assert_eq!(f[0].reason, FaultReason::PasidNotPresent);

        let s = d.stats();
        assert_eq!(s.dma_completed, 2);
        assert_eq!(s.dma_faults, 3);
        assert_eq!(s.dma_bytes_to_device, 3000 + 32);
    }
}
