//! Pinning one large range on several threads (issue 18).
//!
//! Linux's type1 and iommufd pin a mapping on the calling thread, and
//! faulting in and locking a large one is most of a VM's start. Here a pin
//! of at least [`PARALLEL_MIN_BYTES`] whose system calls may run on any
//! thread of this process ([`MmSyscalls::any_thread`]: an embedding VMM or
//! the preload mode; not the trace mode, whose calls are injected into one
//! stopped thread) is cut into chunks of
//! [`CHUNK_BYTES`], aligned to the largest page size of the range so that
//! no huge page is cut:
//!
//! 1. `mlock2(MLOCK_ONFAULT)` of the range, on the calling thread:
//!    `VM_LOCKED` is set while the pages do not exist yet, so the fault that
//!    brings a page in also locks it, on the faulting thread (a plain
//!    `mlock` of present pages locks them one by one under the mmap write
//!    lock: one thread at a time). One call for the range, as the
//!    one-thread path makes: a lock per chunk would split the VMA before
//!    its pages exist, and pieces faulted in apart get anon_vmas of their
//!    own and never merge again;
//! 2. `MADV_POPULATE_WRITE` (or `_READ`) of each chunk on the pool: the
//!    faults, the zeroing and the locking, under the mmap read lock, in
//!    parallel;
//! 3. `mlock` of each chunk on the pool: turns `VM_LOCKONFAULT` into the
//!    plain `VM_LOCKED` that the one-thread path leaves, so the address
//!    space ends exactly as after it (VMAs, flags, `VmLck`): the flag
//!    changes are serialised by the mmap write lock (the VMA splits while
//!    neighbouring pieces differ and merges back), the walks over the
//!    present pages that follow run under the read lock, in parallel;
//! 4. the page sizes and PFNs of each chunk (`PAGEMAP_SCAN`, `pagemap`),
//!    on the pool.
//!
//! Step 1 runs only when no pin of this backend and no lock of the program
//! is in the range (pages already locked would otherwise keep the
//! `VM_LOCKONFAULT` flag after a failure); without it, step 3 locks the
//! present pages as the one-thread path does.
//!
//! # Invariants
//!
//! - The caller holds the pin counts from the first lock to the count
//!   update, as the one-thread path does, so a concurrent unpin cannot
//!   unlock a page this pin is about to count; the workers never take it.
//! - All or nothing: when a chunk fails, everything this call locked that
//!   no pin holds is unlocked again (the program's own locks stay) and
//!   nothing is counted; the errno is the one-thread path's: EFAULT when a
//!   chunk could not be faulted in, else ENOMEM (a refused lock). A chunk
//!   that a policy refuses (seccomp, an LSM) sends the whole pin back to the
//!   one-thread path, which knows how to pin without locking.
//! - Accounting is not done here: the engine charges the whole call once,
//!   before pinning (type1/map.rs).
//! - Pools: one per thread count per process, made at its first use and
//!   kept for the life of the process; a forked child makes its own (the
//!   parent's threads do not exist in it).
//! - Every worker runs the hook set with [`set_pin_worker_start`] before
//!   its first chunk. The preload library marks its workers as its own
//!   there: the workers' `ioctl(PAGEMAP_SCAN)` and `pread(pagemap)` enter
//!   its interposed functions, which look the descriptor up under the
//!   session lock that the pinning caller holds while it waits for them (a
//!   deadlock, the reason preload once pinned on one thread only).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

use super::procfs::{ProcFiles, Vma};
use super::{ffi, refused_by_policy, retry_eintr, HostMemory, Layout, PinCounts, THP_SIZE};
use crate::memory::MemError;

/// A pin of fewer bytes stays on the calling thread: below it the fixed
/// cost of handing chunks to the pool (a few µs per chunk, the extra VMA
/// splits and merges of per-chunk locks) is no longer small beside the
/// pin (4K memory faults in at ~0.3 ms per MiB on the reference machine;
/// docs/PERFORMANCE.md, "Pinning in parallel").
pub const PARALLEL_MIN_BYTES: u64 = 16 << 20;

/// The largest piece one worker pins at a time: several per thread, so
/// that a thread slowed by another process's load does not hold back the
/// whole pin.
pub const CHUNK_BYTES: u64 = 8 << 20;

/// The thread count for backends that do not set their own: 0 follows the
/// machine (`available_parallelism`).
static DEFAULT_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the thread count that pins use (the platform's `[engine]
/// pin_threads`); 0 follows the machine, 1 pins on the calling thread only.
pub fn set_default_pin_threads(threads: usize) {
    DEFAULT_THREADS.store(threads, Ordering::Relaxed);
}

/// The thread count pins use by default, 0 resolved to the machine's
/// parallelism.
pub fn default_pin_threads() -> usize {
    resolve(DEFAULT_THREADS.load(Ordering::Relaxed))
}

/// `threads`, with 0 meaning the machine's parallelism.
pub(super) fn resolve(threads: usize) -> usize {
    if threads != 0 {
        return threads;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Run by each pool worker when it starts (see [`set_pin_worker_start`]).
static WORKER_START: OnceLock<fn()> = OnceLock::new();

/// Sets what every pin pool worker runs when it starts, before any chunk;
/// the first call wins, and it must come before the first parallel pin (a
/// worker started earlier does not run it). The preload library marks its
/// workers there, so that their system calls pass its interposed functions
/// straight through (module invariants). Returns false when a hook was
/// already set.
pub fn set_pin_worker_start(hook: fn()) -> bool {
    WORKER_START.set(hook).is_ok()
}

/// The pools made in this process: (pid, threads, pool).
static POOLS: Mutex<Vec<(i32, usize, Arc<rayon::ThreadPool>)>> = Mutex::new(Vec::new());

/// The pool of `threads` workers of this process, made at first use;
/// `None` when threads cannot be started (the pin then stays on the
/// calling thread).
fn pool_for(threads: usize) -> Option<Arc<rayon::ThreadPool>> {
    let pid = ffi::getpid();
    let mut pools = POOLS.lock().unwrap_or_else(|p| p.into_inner());
    if pools.iter().any(|(p, _, _)| *p != pid) {
        // Made before a fork: their threads are not in this process.
        // Dropping them would ask threads that do not exist to stop; keep
        // them unreachable instead.
        let (theirs, ours): (Vec<_>, Vec<_>) = pools.drain(..).partition(|(p, _, _)| *p != pid);
        std::mem::forget(theirs);
        *pools = ours;
    }
    if let Some((_, _, pool)) = pools.iter().find(|(_, n, _)| *n == threads) {
        return Some(pool.clone());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("softvfio-pin-{i}"))
        .start_handler(|_| {
            if let Some(hook) = WORKER_START.get() {
                hook();
            }
        })
        .build()
        .inspect_err(|e| tracing::warn!("pin pool of {threads} threads: {e}; pinning on one"))
        .ok()?;
    let pool = Arc::new(pool);
    pools.push((pid, threads, pool.clone()));
    Some(pool)
}

/// Why a chunk failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkError {
    /// As the one-thread path reports it.
    Mem(MemError),
    /// A system call was refused by policy: retry on one thread.
    Refused,
}

/// `[start, end)` cut into chunks of about [`CHUNK_BYTES`] whose inner
/// boundaries are multiples of `align`.
pub(super) fn chunks(start: u64, end: u64, align: u64) -> Vec<(u64, u64)> {
    let step = CHUNK_BYTES.max(align) / align * align;
    let mut out = Vec::new();
    let mut cur = start;
    while cur < end {
        let next = (cur - cur % align).saturating_add(step).min(end);
        let next = if next <= cur { end } else { next };
        out.push((cur, next));
        cur = next;
    }
    out
}

/// The alignment chunk boundaries keep in `vmas`: their largest page size,
/// and at least a PMD (a transparent huge page).
fn alignment(vmas: &[Vma]) -> u64 {
    vmas.iter().map(|v| v.page_size).fold(THP_SIZE, u64::max)
}

impl HostMemory {
    /// The pool a pin of `len` bytes uses, when it goes parallel.
    pub(super) fn parallel_pool(&self, len: u64) -> Option<Arc<rayon::ThreadPool>> {
        if len < PARALLEL_MIN_BYTES || !self.sys.any_thread() {
            return None;
        }
        let threads = match self.pin_threads.load(Ordering::Relaxed) {
            0 => default_pin_threads(),
            n => n,
        };
        if threads <= 1 {
            return None;
        }
        pool_for(threads)
    }

    /// Locks and faults in `[vaddr, end)`, the faults chunk by chunk on
    /// `pool`, and reads its layout; the caller holds `counts` (module
    /// invariants). `Ok(None)`: a policy refused a call, nothing is left
    /// locked, the caller pins on one thread instead.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lock_in_parallel(
        &self,
        pool: &rayon::ThreadPool,
        files: &ProcFiles,
        vmas: &[Vma],
        counts: &PinCounts,
        vaddr: u64,
        end: u64,
        write: bool,
    ) -> Result<Option<Layout>, MemError> {
        let len = end - vaddr;
        let advice = if write {
            libc::MADV_POPULATE_WRITE
        } else {
            libc::MADV_POPULATE_READ
        };
        let lock_error = |errno: i32| {
            if refused_by_policy(errno) {
                ChunkError::Refused
            } else {
                tracing::debug!("mlock {vaddr:#x}..{end:#x}: errno {errno}");
                ChunkError::Mem(MemError::NoMem)
            }
        };
        let pieces = chunks(vaddr, end, alignment(vmas));
        // Step 1, for the whole range at once: per-chunk locks would split
        // the VMA before its pages (and its anon_vma) exist, and pieces
        // faulted in apart get anon_vmas of their own and never merge
        // again.
        let on_fault = !counts.any_in(vaddr, end) && !self.program_lock_in(vaddr, end);
        let mut locked = if on_fault {
            retry_eintr(|| self.sys.mlock_onfault(vaddr, len)).map_err(lock_error)
        } else {
            Ok(())
        };
        // Step 2 on the pool. A refused lock still faults the range in, so
        // that a range that also has a hole answers EFAULT, as the
        // one-thread path (which faults in first) does.
        let faults: Vec<Result<(), ChunkError>> = pool.install(|| {
            pieces
                .par_iter()
                .with_max_len(1)
                .map(|&(a, b)| self.populate_chunk(a, b, advice))
                .collect()
        });
        let mut failure = faults.into_iter().fold(None, worse);
        if failure.is_none() {
            // Step 3: the plain lock the one-thread path takes. After step 1
            // it is a flag change on a VMA already `VM_LOCKED` plus a walk
            // over the present pages, and the walk runs under the mmap read
            // lock: chunk by chunk on the pool, the walks overlap (the
            // pieces, split only while their flags differ, merge back as
            // their neighbours change: same anon_vma, same flags). Without
            // step 1 (pages locked already) one call, as the one-thread path.
            if locked.is_ok() && on_fault {
                let locks: Vec<Result<(), ChunkError>> = pool.install(|| {
                    pieces
                        .par_iter()
                        .with_max_len(1)
                        .map(|&(a, b)| retry_eintr(|| self.sys.mlock(a, b - a)).map_err(lock_error))
                        .collect()
                });
                locked = locks.into_iter().fold(None, worse).map_or(Ok(()), Err);
            } else if locked.is_ok() {
                locked = retry_eintr(|| self.sys.mlock(vaddr, len)).map_err(lock_error);
            }
            failure = locked.err();
        }
        let Some(failure) = failure else {
            // Step 4 on the pool, after the lock (which may split huge pages
            // at the edges of the range).
            let layouts: Vec<Layout> = pool.install(|| {
                pieces
                    .par_iter()
                    .with_max_len(1)
                    .map(|&(a, b)| Layout::read(files, vmas, a, b, self.pfns))
                    .collect()
            });
            let segs = layouts.into_iter().flat_map(|l| l.segs).collect();
            return Ok(Some(Layout { segs }));
        };
        // Unlock what no pin holds (and what the program did not lock).
        let pieces = vmas
            .iter()
            .map(|v| (v.start.max(vaddr), v.end.min(end), v.page_size));
        self.unlock_idle(counts, pieces);
        match failure {
            ChunkError::Refused => Ok(None),
            ChunkError::Mem(e) => Err(e),
        }
    }

    /// Step 2 of the module documentation for one chunk.
    fn populate_chunk(&self, a: u64, b: u64, advice: i32) -> Result<(), ChunkError> {
        match retry_eintr(|| self.sys.madvise(a, b - a, advice)) {
            Ok(()) => Ok(()),
            Err(errno) if refused_by_policy(errno) => Err(ChunkError::Refused),
            Err(errno) => {
                tracing::debug!("populate {a:#x}..{b:#x}: errno {errno}");
                Err(ChunkError::Mem(MemError::Fault))
            }
        }
    }
}

/// The failure a pin reports of two: a refusal by policy first (the pin
/// starts again on one thread), then EFAULT (the one-thread path faults in
/// before it locks), then the rest.
fn worse(acc: Option<ChunkError>, r: Result<(), ChunkError>) -> Option<ChunkError> {
    let Err(e) = r else { return acc };
    Some(match (acc, e) {
        (Some(ChunkError::Refused), _) | (_, ChunkError::Refused) => ChunkError::Refused,
        (Some(ChunkError::Mem(MemError::Fault)), _) => ChunkError::Mem(MemError::Fault),
        (_, e) => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::PAGE_SIZE;

    const M: u64 = 1 << 20;

    #[test]
    fn chunks_keep_the_alignment_and_cover_the_range() {
        assert_eq!(
            chunks(0x1000, 20 * M, 2 * M),
            vec![(0x1000, 8 * M), (8 * M, 16 * M), (16 * M, 20 * M)]
        );
        // 1 GiB pages: one chunk per huge page.
        let g = 1 << 30;
        assert_eq!(chunks(0, 2 * g, g), vec![(0, g), (g, 2 * g)]);
        assert_eq!(chunks(4096, 8192, 2 * M), vec![(4096, 8192)]);
        // Up to the top of the address space without wrapping.
        let top = u64::MAX - 4 * M + 1;
        let end = u64::MAX - PAGE_SIZE + 1;
        assert_eq!(chunks(top, end, 2 * M), vec![(top, end)]);
    }

    #[test]
    fn thread_counts_resolve_zero_to_the_machine() {
        assert_eq!(resolve(3), 3);
        assert!(resolve(0) >= 1);
    }
}
