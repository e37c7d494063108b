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

use softvfio::memory::host::{HostMemory, MmSyscalls};
use softvfio::memory::UserMemory;

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
    softvfio::forward_user_memory!(host: pin, is_device_range, device_bytes, unpin, read, write,
        dma_read, dma_write, lock_policy, cap_sys_resource, account, stats, describe, svm_view);

    /// No counted handle on the backend in use: a mapping must reach the
    /// program through this memory, which follows it when it moves (the
    /// backend before the move would keep reaching the old process).
    fn shared(&self) -> Option<Arc<dyn UserMemory>> {
        None
    }
}
