//! The user address space that DMA mappings pin.
//!
//! The engine never touches user memory directly: it pins, unpins, reads and
//! writes through [`UserMemory`]. Two backends implement it:
//! - [`host`]: a real process address space (this process, or a traced one
//!   through [`host::MmSyscalls`]), with fault-in, mlock, per-page pin counts and
//!   huge-page aware runs;
//! - [`sim`]: a simulated address space of any size with no memory behind
//!   it, exact pin counts and fault injection, for TiB-scale tests.
//!
//! The address the IOMMU maps an IOVA to ("phys" in the IOMMU model) is the
//! user virtual address itself (tagged above the user range when the
//! mapping pins another address space than the container's own, see
//! `memory/spaces.rs`): device DMA reaches the page through the same backend, so a
//! page the user has since unmapped yields an error (an IOMMU fault), never
//! a crash.

use thiserror::Error;

use crate::account::MmAccount;
use std::sync::Arc;

pub mod host;
pub mod interval;
pub mod sim;
pub(crate) mod spaces;

/// The base page size of the platform we emulate (x86-64).
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// Why a memory operation failed. Maps to the errno the kernel returns from
/// `VFIO_IOMMU_MAP_DMA` for the same condition.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum MemError {
    /// Unmapped, PROT_NONE, or read-only memory pinned for write (EFAULT).
    #[error("bad address: memory missing or not accessible with the access asked for")]
    Fault,
    /// Could not keep the pages resident (mlock refused: ENOMEM/EAGAIN).
    #[error("cannot lock memory")]
    NoMem,
    /// A failure injected by a test (simulated backend).
    #[error("injected failure")]
    Injected,
    /// The backend cannot run the operation now (e.g. a traced process that
    /// is not stopped in a system call).
    #[error("address space not reachable")]
    Unreachable,
}

impl MemError {
    /// The errno type1 returns for it.
    pub fn errno(self) -> i32 {
        match self {
            MemError::Fault | MemError::Unreachable => libc::EFAULT,
            MemError::NoMem => libc::ENOMEM,
            MemError::Injected => libc::EFAULT,
        }
    }
}

/// One physically contiguous run of pinned memory, handed to the IOMMU as one
/// map call so that it can use 2M/1G entries where alignment allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedRun {
    /// User virtual address of the first byte (also the address the IOMMU maps to).
    pub vaddr: u64,
    /// Length in bytes, a multiple of [`PAGE_SIZE`].
    pub len: u64,
    /// Size of the pages backing this run (4K, 2M, 1G).
    pub page_size: u64,
    /// Real page frame number of the first page, where known (root + pagemap).
    pub pfn: Option<u64>,
}

// The accounting policy lives with the account (`account` depends on
// nothing here); backends report it.
pub use crate::account::LockPolicy;

/// Counters a backend keeps, for tests, `inspect` and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PinStats {
    /// Base pages with a pin count above zero.
    pub pinned_pages: u64,
    /// Sum of pin counts over all base pages.
    pub pin_refs: u64,
    /// Pin operations performed (one per huge page or per contiguous 4K run
    /// chunk: what the backend considers one operation).
    pub pin_ops: u64,
    /// Unpin operations performed.
    pub unpin_ops: u64,
    /// Bytes currently kept resident (mlocked) by this backend.
    pub locked_bytes: u64,
}

/// The methods of [`UserMemory`] named, each forwarded unchanged to the
/// memory a wrapper wraps: inside `impl UserMemory for Wrapper`,
/// `forward_user_memory!(inner: pin, unpin, ...)` makes each named method
/// call `self.inner()` (a method of the wrapper answering the wrapped
/// memory, by reference). The wrapper writes the methods it changes
/// itself, next to the invocation; a method neither named nor written
/// keeps the trait's default (which most wrappers do not want: name every
/// method they do not change).
///
/// Why a macro: the wrappers (the sanitizer's windowed view, a container's
/// routed domain memory, the preload program memory) change one or two
/// methods each and pass the rest on; written out, each repeated the
/// whole trait.
#[macro_export]
macro_rules! forward_user_memory {
    ($to:ident: $($method:ident),+ $(,)?) => {
        $($crate::forward_user_memory!(@one $to $method);)+
    };
    // Each method's signature, once.
    (@one $to:ident pin) => {
        $crate::forward_user_memory!(@fn $to pin(
            vaddr: u64,
            len: u64,
            write: bool,
            on_run: &mut dyn FnMut($crate::memory::PinnedRun) -> $crate::memory::MemResult,
        ) -> $crate::memory::MemResult);
    };
    (@one $to:ident is_device_range) => {
        $crate::forward_user_memory!(@fn $to is_device_range(vaddr: u64, len: u64) -> bool);
    };
    (@one $to:ident device_bytes) => {
        $crate::forward_user_memory!(@fn $to device_bytes(vaddr: u64, len: u64) -> u64);
    };
    (@one $to:ident unpin) => {
        $crate::forward_user_memory!(@fn $to unpin(vaddr: u64, len: u64) -> ());
    };
    (@one $to:ident read) => {
        $crate::forward_user_memory!(@fn $to read(vaddr: u64, buf: &mut [u8]) -> $crate::memory::MemResult);
    };
    (@one $to:ident write) => {
        $crate::forward_user_memory!(@fn $to write(vaddr: u64, data: &[u8]) -> $crate::memory::MemResult);
    };
    (@one $to:ident dma_read) => {
        $crate::forward_user_memory!(@fn $to dma_read(vaddr: u64, buf: &mut [u8]) -> $crate::memory::MemResult);
    };
    (@one $to:ident dma_write) => {
        $crate::forward_user_memory!(@fn $to dma_write(vaddr: u64, data: &[u8]) -> $crate::memory::MemResult);
    };
    (@one $to:ident lock_policy) => {
        $crate::forward_user_memory!(@fn $to lock_policy() -> $crate::memory::LockPolicy);
    };
    (@one $to:ident cap_sys_resource) => {
        $crate::forward_user_memory!(@fn $to cap_sys_resource() -> bool);
    };
    (@one $to:ident account) => {
        $crate::forward_user_memory!(@fn $to account() -> &::std::sync::Arc<$crate::account::MmAccount>);
    };
    (@one $to:ident stats) => {
        $crate::forward_user_memory!(@fn $to stats() -> $crate::memory::PinStats);
    };
    (@one $to:ident describe) => {
        $crate::forward_user_memory!(@fn $to describe() -> ::std::string::String);
    };
    (@one $to:ident svm_view) => {
        $crate::forward_user_memory!(@fn $to svm_view() -> $crate::memory::MemoryHandle);
    };
    (@one $to:ident shared) => {
        $crate::forward_user_memory!(@fn $to shared() -> $crate::memory::MemoryHandle);
    };
    // The forwarding itself.
    (@fn $to:ident $method:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty) => {
        fn $method(&self, $($arg: $ty),*) -> $ret {
            self.$to().$method($($arg),*)
        }
    };
}

/// What a memory access answers ([`forward_user_memory`]'s signatures).
#[doc(hidden)]
pub type MemResult = Result<(), MemError>;

/// Another handle on an address space, if any ([`forward_user_memory`]'s
/// signatures).
#[doc(hidden)]
pub type MemoryHandle = Option<Arc<dyn UserMemory>>;

/// A user address space that can be pinned for DMA.
pub trait UserMemory: Send + Sync {
    /// Pins `[vaddr, vaddr + len)` (page aligned, `len > 0`) with read access,
    /// plus write access when `write` is set, and calls `on_run` once per
    /// physically contiguous run, in address order.
    ///
    /// All or nothing: if pinning fails, or `on_run` returns an error, every
    /// page this call pinned is unpinned again before returning the error
    /// (the caller undoes what its own `on_run` calls did).
    fn pin(
        &self,
        vaddr: u64,
        len: u64,
        write: bool,
        on_run: &mut dyn FnMut(PinnedRun) -> Result<(), MemError>,
    ) -> Result<(), MemError>;

    /// Does `[vaddr, vaddr + len)` meet memory-mapped device registers (a
    /// BAR mapping of a device file)? type1 maps such parts (peer to peer)
    /// without charging them to the locked-memory account, as it does for
    /// `VM_PFNMAP` pages, and `pin` reports each as one run without
    /// locking anything; iommufd refuses the range (`pin_user_pages`
    /// refuses `VM_PFNMAP` pages).
    fn is_device_range(&self, vaddr: u64, len: u64) -> bool {
        self.device_bytes(vaddr, len) > 0
    }

    /// Bytes of `[vaddr, vaddr + len)` that are device registers (see
    /// [`UserMemory::is_device_range`]).
    fn device_bytes(&self, vaddr: u64, len: u64) -> u64 {
        let _ = (vaddr, len);
        0
    }

    /// Drops one pin of every page in `[vaddr, vaddr + len)`; the range must
    /// have been pinned by an earlier `pin` of a range that contains it.
    /// A page is unlocked when its last pin goes.
    fn unpin(&self, vaddr: u64, len: u64);

    /// Reads user memory (device DMA, copy_from_user). Never crashes: a
    /// missing page is `Err(MemError::Fault)`.
    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError>;

    /// Writes user memory (device DMA, copy_to_user).
    fn write(&self, vaddr: u64, data: &[u8]) -> Result<(), MemError>;

    /// Reads pinned memory for a device (DMA through the IOMMU, a mediated
    /// device's `dma_rw`), from any thread at any time. A backend whose
    /// address space can go away under it (another process's) reaches
    /// exactly the address space it pinned, or fails; it never reaches
    /// whatever later holds the same name (a recycled pid, a new image).
    /// By default [`UserMemory::read`].
    fn dma_read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.read(vaddr, buf)
    }

    /// Writes pinned memory for a device; see [`UserMemory::dma_read`].
    /// By default [`UserMemory::write`].
    fn dma_write(&self, vaddr: u64, data: &[u8]) -> Result<(), MemError> {
        self.write(vaddr, data)
    }

    /// CAP_IPC_LOCK and RLIMIT_MEMLOCK of the caller, read now.
    fn lock_policy(&self) -> LockPolicy;

    /// Does the caller hold CAP_SYS_RESOURCE in its effective set (iommufd's
    /// `RLIMIT_MODE` may be set only then)? By default what
    /// [`UserMemory::lock_policy`] says of CAP_IPC_LOCK: a backend that
    /// models privilege as one switch answers both the same.
    fn cap_sys_resource(&self) -> bool {
        self.lock_policy().cap_ipc_lock
    }

    /// The locked-memory account of this address space (the kernel's
    /// `mm->locked_vm`), shared by every container that maps from it.
    fn account(&self) -> &Arc<MmAccount>;

    /// Pin counters.
    fn stats(&self) -> PinStats;

    /// Short name for reports ("host pid 1234", "sim").
    fn describe(&self) -> String;

    /// Another handle on the same address space for shared virtual memory
    /// (`VFIO_DEVICE_BIND_TASK`): only `read`/`write` are used through it
    /// (DMA faults pages in on demand; nothing is pinned). `None` when the
    /// backend cannot be shared (bind then fails with ENODEV).
    fn svm_view(&self) -> Option<Arc<dyn UserMemory>> {
        None
    }

    /// A counted handle on this very backend, when it keeps one (see
    /// [`host::HostMemory::into_shared`]): a mapping made through a
    /// container by another address space than the container's own (a
    /// forked child, the new image after exec) keeps it, to pin, unpin and
    /// reach that space. `None`: mappings pin the container's memory.
    fn shared(&self) -> Option<Arc<dyn UserMemory>> {
        None
    }
}

#[cfg(test)]
mod forward_tests {
    use super::*;
    use crate::testing::probe::{check_forwarded, Probe, METHODS};

    /// Forwards everything.
    struct Wrapper(Probe);

    impl Wrapper {
        fn inner(&self) -> &Probe {
            &self.0
        }
    }

    impl UserMemory for Wrapper {
        crate::forward_user_memory!(inner: pin, is_device_range, device_bytes, unpin, read, write,
            dma_read, dma_write, lock_policy, cap_sys_resource, account, stats, describe,
            svm_view, shared);
    }

    /// A wrapper that forgot names: keeps the trait's defaults.
    struct Forgetful(Probe);

    impl Forgetful {
        fn inner(&self) -> &Probe {
            &self.0
        }
    }

    impl UserMemory for Forgetful {
        crate::forward_user_memory!(inner: pin, unpin, read, write, lock_policy, account, stats,
            describe);
    }

    /// Each method the macro forwards reaches the same method of the
    /// wrapped memory, with the same arguments, and answers its answer.
    #[test]
    fn each_forwarded_method_reaches_the_same_method() {
        let w = Wrapper(Probe::new());
        assert_eq!(check_forwarded(&w, &w.0, &METHODS), Ok(()));
    }

    /// The check catches a method left to the trait's default.
    #[test]
    fn a_method_not_named_is_caught() {
        let w = Forgetful(Probe::new());
        assert_eq!(
            check_forwarded(&w, &w.0, &["pin", "unpin", "describe"]),
            Ok(())
        );
        for m in [
            "is_device_range",
            "device_bytes",
            "cap_sys_resource",
            "dma_read",
            "shared",
        ] {
            assert!(check_forwarded(&w, &w.0, &[m]).is_err(), "{m}");
        }
    }
}
