//! `vfio_ioctls::VfioOps` for [`Container`] (feature `vfio-ioctls`): the
//! DMA-mapping interface rust-vmm's VFIO crate gives a VMM
//! (cloud-hypervisor maps guest memory through it), served by the engine.
//!
//! Mappings are read-write, as `VfioContainer::vfio_dma_map` makes them.
//! Errors carry the engine's errno.

use vfio_ioctls::{VfioError as OpsError, VfioOps};
use vmm_sys_util::errno::Error as SysError;

use crate::container::Container;
use crate::iommu::Prot;

impl VfioOps for Container {
    /// # Safety
    /// As `VfioOps::vfio_dma_map` states it: until the range is unmapped,
    /// `[user_addr, user_addr + size)` may be read and written by devices at
    /// any time, so no Rust reference to it may exist. The engine reaches
    /// that memory through the container's [`UserMemory`](crate::memory::UserMemory),
    /// never through `user_addr` as a pointer.
    unsafe fn vfio_dma_map(
        &self,
        iova: u64,
        size: usize,
        user_addr: *mut u8,
    ) -> vfio_ioctls::Result<()> {
        self.map(iova, user_addr as u64, size as u64, Prot::RW)
            .map_err(|e| OpsError::IommuDmaMap(SysError::new(e.errno())))
    }

    fn vfio_dma_unmap(&self, iova: u64, size: usize) -> vfio_ioctls::Result<()> {
        let unmapped = self
            .unmap(iova, size as u64)
            .map_err(|e| OpsError::IommuDmaUnmap(SysError::new(e.errno())))?;
        // rust-vmm's container reports a partial unmap the same way.
        if unmapped != size as u64 {
            return Err(OpsError::InvalidDmaUnmapSize);
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
