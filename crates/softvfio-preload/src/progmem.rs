//! The program's own memory as the engine pins it, movable once to another
//! process (the keeper's hand-off, docs/DESIGN.md §5).
//!
//! In process, [`ProgramMemory`] is this process's memory
//! (`HostMemory::current()`): every container the program opens pins it.
//! When the engine leaves the program, it leaves by `fork`: the keeper
//! inherits this backend, which then describes the keeper's *copy* of the
//! program's memory. After an `exec` that copy is what Linux's old pinned
//! pages are, and the backend stays as it is. After a `fork` (or an exec
//! that failed) the program lives on, so the keeper moves the backend to
//! the program's pid ([`ProgramMemory::move_to`]): pins, unpins, argument
//! copies and device DMA reach the live program from then on.
//!
//! Invariants:
//! - the backend moves at most once, before any other use in the keeper
//!   (the keeper is single-threaded and moves it before serving a call);
//! - the moved backend takes over the pin counts and the locked-memory
//!   account of the local one, so unpins of mappings made before the
//!   hand-off find their pins, and type1's accounting is unchanged.

use std::sync::{Arc, OnceLock};

use softvfio::account::MmAccount;
use softvfio::memory::host::{HostMemory, MmSyscalls};
use softvfio::memory::{LockPolicy, MemError, PinStats, PinnedRun, UserMemory};

/// See the module documentation.
pub struct ProgramMemory {
    local: HostMemory,
    moved: OnceLock<HostMemory>,
}

impl ProgramMemory {
    pub fn new(local: HostMemory) -> Self {
        Self {
            local,
            moved: OnceLock::new(),
        }
    }

    /// The backend in use.
    pub fn host(&self) -> &HostMemory {
        self.moved.get().unwrap_or(&self.local)
    }

    /// In the keeper: from now on this is the memory of process `pid`
    /// (`sys` runs its mlock/madvise). False if it had moved already.
    pub fn move_to(&self, pid: i32, sys: Arc<dyn MmSyscalls>) -> bool {
        if self.moved.get().is_some() {
            return false;
        }
        let m = HostMemory::for_pid(pid, sys)
            .with_account(self.local.account().clone())
            .with_pin_threads(1);
        m.take_pins_from(&self.local);
        self.moved.set(m).is_ok()
    }

    /// Moved to another process (see [`ProgramMemory::move_to`])?
    pub fn is_moved(&self) -> bool {
        self.moved.get().is_some()
    }
}

impl UserMemory for ProgramMemory {
    fn pin(
        &self,
        vaddr: u64,
        len: u64,
        write: bool,
        on_run: &mut dyn FnMut(PinnedRun) -> Result<(), MemError>,
    ) -> Result<(), MemError> {
        self.host().pin(vaddr, len, write, on_run)
    }

    fn is_device_range(&self, vaddr: u64, len: u64) -> bool {
        self.host().is_device_range(vaddr, len)
    }

    fn device_bytes(&self, vaddr: u64, len: u64) -> u64 {
        self.host().device_bytes(vaddr, len)
    }

    fn unpin(&self, vaddr: u64, len: u64) {
        self.host().unpin(vaddr, len)
    }

    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.host().read(vaddr, buf)
    }

    fn write(&self, vaddr: u64, data: &[u8]) -> Result<(), MemError> {
        self.host().write(vaddr, data)
    }

    fn dma_read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.host().dma_read(vaddr, buf)
    }

    fn dma_write(&self, vaddr: u64, data: &[u8]) -> Result<(), MemError> {
        self.host().dma_write(vaddr, data)
    }

    fn lock_policy(&self) -> LockPolicy {
        self.host().lock_policy()
    }

    fn cap_sys_resource(&self) -> bool {
        self.host().cap_sys_resource()
    }

    fn account(&self) -> &Arc<MmAccount> {
        self.host().account()
    }

    fn stats(&self) -> PinStats {
        self.host().stats()
    }

    fn describe(&self) -> String {
        self.host().describe()
    }

    fn svm_view(&self) -> Option<Arc<dyn UserMemory>> {
        self.host().svm_view()
    }
}
