//! Where DMA lands after translation.

use std::sync::RwLock;

use thiserror::Error;

/// A physical access that the memory behind the IOMMU refused. Device DMA
/// turns it into a recorded fault (`FaultReason::MemoryError`).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("memory error at physical address {phys:#x}")]
pub struct MemFault {
    /// First address of the refused access.
    pub phys: u64,
}

/// The memory that translated DMA reaches. In softvfio the "physical"
/// address is the user virtual address of a pinned page, reached with
/// `process_vm_readv`-style calls, so errors are ordinary results.
pub trait PhysMemory: Send + Sync {
    /// Reads `buf.len()` bytes at `phys`.
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), MemFault>;
    /// Writes `data` at `phys`.
    fn write(&self, phys: u64, data: &[u8]) -> Result<(), MemFault>;
}

/// A small memory backed by a byte vector at `base..base + len`, for tests
/// and examples. Accesses outside it fail.
#[derive(Debug)]
pub struct VecMemory {
    base: u64,
    bytes: RwLock<Vec<u8>>,
}

impl VecMemory {
    /// Zeroed memory of `len` bytes starting at physical address `base`.
    pub fn new(base: u64, len: usize) -> Self {
        VecMemory {
            base,
            bytes: RwLock::new(vec![0; len]),
        }
    }

    fn range(
        &self,
        phys: u64,
        len: usize,
        total: usize,
    ) -> Result<std::ops::Range<usize>, MemFault> {
        let fault = MemFault { phys };
        let start =
            usize::try_from(phys.checked_sub(self.base).ok_or(fault)?).map_err(|_| fault)?;
        let end = start.checked_add(len).ok_or(fault)?;
        if end > total {
            return Err(fault);
        }
        Ok(start..end)
    }
}

impl PhysMemory for VecMemory {
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        let bytes = self.bytes.read().unwrap_or_else(|e| e.into_inner());
        let range = self.range(phys, buf.len(), bytes.len())?;
        buf.copy_from_slice(bytes.get(range).ok_or(MemFault { phys })?);
        Ok(())
    }

    fn write(&self, phys: u64, data: &[u8]) -> Result<(), MemFault> {
        let mut bytes = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        let total = bytes.len();
        let range = self.range(phys, data.len(), total)?;
        bytes
            .get_mut(range)
            .ok_or(MemFault { phys })?
            .copy_from_slice(data);
        Ok(())
    }
}

/// Memory that reads zeros and discards writes (benchmarks, translation-only tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullMemory;

impl PhysMemory for NullMemory {
    fn read(&self, _phys: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        buf.fill(0);
        Ok(())
    }

    fn write(&self, _phys: u64, _data: &[u8]) -> Result<(), MemFault> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_memory_bounds() {
        let mem = VecMemory::new(0x1000, 0x2000);
        mem.write(0x1ffe, &[1, 2, 3, 4]).unwrap();
        let mut buf = [0u8; 4];
        mem.read(0x1ffe, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3, 4]);
        assert_eq!(mem.read(0xfff, &mut buf), Err(MemFault { phys: 0xfff }));
        assert_eq!(mem.write(0x2ffe, &buf), Err(MemFault { phys: 0x2ffe }));
        assert_eq!(
            mem.read(u64::MAX, &mut buf),
            Err(MemFault { phys: u64::MAX })
        );
    }
}
