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

/// See the module documentation. `M`, the backend, is a [`HostMemory`]
/// but in tests of the forwarding.
pub struct ProgramMemory<M = HostMemory> {
    local: M,
    moved: OnceLock<M>,
}

impl<M> ProgramMemory<M> {
    pub fn new(local: M) -> Self {
        Self {
            local,
            moved: OnceLock::new(),
        }
    }

    /// The backend in use.
    pub fn host(&self) -> &M {
        self.moved.get().unwrap_or(&self.local)
    }

    /// Moved to another process (see [`ProgramMemory::move_to`])?
    pub fn is_moved(&self) -> bool {
        self.moved.get().is_some()
    }
}

impl ProgramMemory {
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
}

impl<M: UserMemory> UserMemory for ProgramMemory<M> {
    softvfio::forward_user_memory!(host: pin, is_device_range, device_bytes, unpin, read, write,
        dma_read, dma_write, lock_policy, cap_sys_resource, account, stats, describe, svm_view);

    /// No counted handle on the backend in use: a mapping must reach the
    /// program through this memory, which follows it when it moves (the
    /// backend before the move would keep reaching the old process).
    fn shared(&self) -> Option<Arc<dyn UserMemory>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use softvfio::testing::probe::{check_forwarded, Probe, METHODS};

    /// Every method but `shared` is the backend's in use: before a move
    /// the local one, after it the moved one (and the local one hears
    /// nothing more). `shared` answers no handle without asking.
    #[test]
    fn program_memory_passes_everything_but_shared_on_to_the_backend_in_use() {
        let forwarded: Vec<&str> = METHODS.into_iter().filter(|m| *m != "shared").collect();
        let mem = ProgramMemory::new(Probe::new());
        assert_eq!(check_forwarded(&mem, &mem.local, &forwarded), Ok(()));
        assert!(mem.shared().is_none());
        assert_eq!(mem.local.take_log(), Vec::<String>::new());
        assert!(mem.moved.set(Probe::new()).is_ok());
        assert!(mem.is_moved());
        let moved = mem.moved.get().expect("moved");
        assert_eq!(check_forwarded(&mem, moved, &forwarded), Ok(()));
        assert_eq!(mem.local.take_log(), Vec::<String>::new());
    }
}
