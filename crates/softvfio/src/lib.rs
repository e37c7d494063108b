//! softvfio: the Linux VFIO type1 IOMMU backend, in user space.
//!
//! Layers (see `docs/DESIGN.md` §2; a VMM embedding the engine:
//! `crates/softvfio-platform/examples/embed.rs`):
//! - [`uapi`]: the byte-exact ioctl ABI of `linux/vfio.h`, returning errno;
//! - [`container`]: the engine's public face, a container with the type1
//!   backend; [`type1`] holds its state machine (groups, domains, DMA
//!   mappings in [`dma`], the valid IOVA list in [`iova`], accounting in
//!   [`account`], dirty tracking in [`dirty`]) and states its invariants;
//! - [`memory`]: the user address space the mappings pin;
//! - [`iommu`]: the IOMMU hardware the mappings are written to;
//! - [`device`]: device models as their VFIO device fd shows them;
//! - [`external`]: the pinning API of mediated devices (`vfio_pin_pages`,
//!   `vfio_dma_rw`, the unmap notifier) and its compact pin tracking.

#![deny(unsafe_code)]

pub mod account;
pub mod barmap;
pub mod container;
pub mod device;
pub mod device_ioctl;
pub mod dirty;
pub mod dma;
pub mod error;
pub mod eventfd;
pub mod external;
pub mod frontend;
pub mod iommu;
pub mod iommufd;
pub mod iova;
pub mod memory;
pub mod p2p;
pub mod pasid;
pub mod platform;
pub mod sanitizer;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod type1;
pub mod uapi;
// Implements the trait's `unsafe fn vfio_dma_map` (no unsafe operation).
#[cfg(feature = "vfio-ioctls")]
#[allow(unsafe_code)]
mod vfio_ops;

pub use container::{Container, ContainerConfig};
pub use error::{Result, VfioError};
