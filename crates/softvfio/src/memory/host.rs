//! Real process memory: this process, or another one identified by pid.
//!
//! Pinning does in user space what `pin_user_pages(FOLL_LONGTERM)` does in
//! the kernel, as far as user space can:
//! - fault the pages in with the access asked for (`MADV_POPULATE_READ` or
//!   `MADV_POPULATE_WRITE`), failing with [`MemError::Fault`] when any part
//!   of the range is unmapped, `PROT_NONE`, or read-only but pinned for
//!   write; the range is checked against the VMAs first, so a bad range
//!   leaves nothing behind;
//! - keep them resident with `mlock`, with a pin count per page (a page
//!   mapped twice stays locked until its last unpin), kept as an interval
//!   map, not a node per page;
//! - find the page size backing each part of the range: hugetlbfs and
//!   `MFD_HUGETLB` memory from the VMA's page size (`PROCMAP_QUERY` on
//!   `/proc/<pid>/maps`, or `KernelPageSize` in smaps on older kernels),
//!   transparent huge pages from `PAGEMAP_SCAN`'s `PAGE_IS_HUGE`;
//! - report physically contiguous runs: one per huge page; base pages merged
//!   where `/proc/<pid>/pagemap` shows contiguous PFNs (root), else one run
//!   per base page.
//!
//! What runs inside the target process (madvise, mlock, munlock) goes through
//! [`MmSyscalls`], so that a supervisor can inject it into a stopped tracee;
//! everything else reads `/proc/<pid>` or uses `process_vm_readv`/`writev`,
//! which report a missing page as an error instead of crashing.
//!
//! One `HostMemory` should own the pins of an address space: mlock state is
//! per VMA, so two instances pinning the same pages would unlock each other's.
//!
//! # An address space, not a pid
//!
//! A pid names a process, and a process changes address space at `execve`
//! and gives its pid back at exit, to be reused by any other process. Type1
//! records the mm of a mapping (`dma->mm`), never a pid, and so does this
//! backend for another process ([`HostMemory::for_pid`]):
//! - `/proc/<pid>/mem` is opened at creation and kept: reads and writes
//!   through that descriptor reach exactly the address space the pid had
//!   then, and fail (end of file) once it is gone (exit or exec), whoever
//!   has the pid by then. Device DMA ([`UserMemory::dma_read`] and
//!   [`UserMemory::dma_write`], from any thread, at any time) goes only
//!   through it; it reaches the pinned page as a device does, whatever the
//!   program's page protections are now (`FOLL_FORCE`).
//! - what still names the pid (the system calls injected into the program,
//!   `process_vm_readv`/`writev` for the copies of an ioctl's arguments,
//!   the `/proc` reads of a pin) runs only while the program is stopped in
//!   a system call of this very address space, and never after
//!   [`HostMemory::retire`], which the owner calls at the exec or exit of
//!   the process: from then on everything fails with
//!   [`MemError::Unreachable`], and an unpin only drops the counts (the
//!   locks went with the address space).
//! - Linux keeps pinned pages alive after their mm is gone, so a device
//!   still reaches them. User space cannot; when the owner says the
//!   process is about to exit ([`HostMemory::keep_pinned_pages`], at its
//!   exit stop), what the pinned pages hold is kept (shared memory through
//!   its file, private memory copied) and device DMA reaches that from
//!   then on; at an exec, the same is taken at its start
//!   ([`HostMemory::prepare_kept_pages`]) and used from the exec on. An
//!   address space gone without either (SIGKILL) faults DMA
//!   (docs/RELIABILITY.md, "Process model").
//!
//! # The program's own mlock
//!
//! Pinning mlocks, and an unpin munlocks what no pin holds any more; pages
//! the program had locked itself before the pin (an `mlock` or
//! `mlockall`) must stay locked, as they do under Linux (FOLL_LONGTERM
//! pins do not touch VM_LOCKED). The VMAs a pin finds already locked, in
//! pages no pin of ours held, are remembered as the program's own and never
//! munlocked (when the process holds no lock beyond ours, a `VmLck`
//! comparison saves the `smaps` read).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};

use super::interval::{PinCounts, RangeList, RangeSet};
use super::{LockPolicy, MemError, PinStats, PinnedRun, UserMemory, PAGE_SIZE};
use crate::account::MmAccount;
use crate::p2p::PeerTarget;
use orphan::OrphanPages;
pub use orphan::OrphanStats;
use procfs::{cap_eff_of, check_access, ProcFiles, Vma, UNKNOWN};

/// Operations that must run inside the target process.
pub trait MmSyscalls: Send + Sync {
    /// `madvise(addr, len, advice)`; the error is an errno.
    fn madvise(&self, addr: u64, len: u64, advice: i32) -> Result<(), i32>;
    /// `mlock(addr, len)`.
    fn mlock(&self, addr: u64, len: u64) -> Result<(), i32>;
    /// `munlock(addr, len)`.
    fn munlock(&self, addr: u64, len: u64) -> Result<(), i32>;
    /// `mlock2(addr, len, MLOCK_ONFAULT)`; only called when
    /// [`MmSyscalls::any_thread`] is true.
    fn mlock_onfault(&self, addr: u64, len: u64) -> Result<(), i32> {
        let _ = (addr, len);
        Err(libc::ENOSYS)
    }
    /// The calls may run on any thread of this process, several at once
    /// (the target is this process): a large pin then faults in and locks
    /// its chunks on the pin pool's threads (`memory/host/parallel.rs`).
    /// False for calls injected into a stopped tracee, which run one at a
    /// time on its thread.
    fn any_thread(&self) -> bool {
        false
    }
    /// Each call is expensive beside a read of `/proc/<pid>/pagemap`
    /// (injected into a stopped tracee: ptrace round trips): a small pin
    /// then skips the populate when pagemap shows it would do nothing.
    fn calls_are_costly(&self) -> bool {
        false
    }
}

/// Runs the [`MmSyscalls`] in this process.
///
/// Only advice that cannot change memory contents is accepted
/// (`MADV_POPULATE_READ`, `MADV_POPULATE_WRITE`, `MADV_WILLNEED`); anything
/// else is refused with `EINVAL`, so that safe code cannot discard memory the
/// program relies on.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalSyscalls;

impl MmSyscalls for LocalSyscalls {
    fn madvise(&self, addr: u64, len: u64, advice: i32) -> Result<(), i32> {
        match advice {
            libc::MADV_POPULATE_READ | libc::MADV_POPULATE_WRITE | libc::MADV_WILLNEED => {
                ffi::madvise(addr, len, advice)
            }
            _ => Err(libc::EINVAL),
        }
    }

    fn mlock(&self, addr: u64, len: u64) -> Result<(), i32> {
        ffi::mlock(addr, len)
    }

    fn munlock(&self, addr: u64, len: u64) -> Result<(), i32> {
        ffi::munlock(addr, len)
    }

    fn mlock_onfault(&self, addr: u64, len: u64) -> Result<(), i32> {
        ffi::mlock_onfault(addr, len)
    }

    fn any_thread(&self) -> bool {
        true
    }
}

/// Size of a PMD-mapped transparent huge page on x86-64.
const THP_SIZE: u64 = 2 << 20;

/// Capability number of CAP_IPC_LOCK.
const CAP_IPC_LOCK: u32 = 14;
/// Capability number of CAP_SYS_RESOURCE.
const CAP_SYS_RESOURCE: u32 = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// This process, whatever its pid is now (it changes across fork).
    Current,
    Pid(i32),
}

impl Target {
    fn pid(self) -> i32 {
        match self {
            Target::Current => current_pid(),
            Target::Pid(p) => p,
        }
    }
}

thread_local! {
    /// This process's id as the call the calling thread serves read it:
    /// 0 outside a call ([`with_call_pid`]), [`CALL_PID_UNREAD`] in one
    /// that has not asked yet.
    static CALL_PID: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// [`CALL_PID`] in a call that has not read the id yet.
const CALL_PID_UNREAD: i32 = -1;

/// The id of the process this thread runs in, for `Target::Current`: within
/// a call ([`with_call_pid`]) read once (the first time it is needed), else
/// asked each time. Never older than the call: a process forked or cloned
/// by the program makes its calls after it was made, each of which reads
/// its own id.
fn current_pid() -> i32 {
    CALL_PID
        .try_with(|c| match c.get() {
            0 => ffi::getpid(),
            CALL_PID_UNREAD => {
                let pid = ffi::getpid();
                c.set(pid);
                pid
            }
            pid => pid,
        })
        .unwrap_or_else(|_| ffi::getpid())
}

/// Runs `f`, one call of the program (an in-process front end's VFIO call),
/// with this process's id read at most once for all of it: a MAP_DMA reads
/// its argument, pins and maps, an UNMAP_DMA reads and writes its argument,
/// each of which needs the id of the process whose memory it is
/// (`getpid`, a system call; the id changes across `fork`, so it is not
/// kept beyond the call). Nested calls (a signal handler's) read their own.
pub fn with_call_pid<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the enclosing call's id, also when `f` unwinds.
    struct Restore(i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = CALL_PID.try_with(|c| c.set(self.0));
        }
    }
    let outer = CALL_PID
        .try_with(|c| c.replace(CALL_PID_UNREAD))
        .unwrap_or(0);
    let _restore = Restore(outer);
    f()
}

/// After `fork`, in the child: a call in progress on this thread (a fork
/// from a signal handler that interrupted it) reads the child's id again.
pub fn forget_call_pid() {
    let _ = CALL_PID.try_with(|c| {
        if c.get() > 0 {
            c.set(CALL_PID_UNREAD);
        }
    });
}

/// Which runs get real PFNs.
#[derive(Debug, Clone, Copy)]
struct PfnPolicy {
    base: bool,
    huge: bool,
}

/// Counters read without the pin lock, so `stats()` works from `on_run`.
#[derive(Default)]
struct Counters {
    pinned: AtomicU64,
    /// Pinned bytes in hugetlb VMAs (never mlocked).
    hugetlb: AtomicU64,
    refs: AtomicU64,
    pin_ops: AtomicU64,
    unpin_ops: AtomicU64,
}

/// Real process memory. See the module documentation.
pub struct HostMemory {
    target: Target,
    /// Writes into this very process are allowed: set only by the unsafe
    /// [`HostMemory::current`], whose caller took on its contract.
    own_writes: bool,
    sys: Arc<dyn MmSyscalls>,
    account: Arc<MmAccount>,
    /// Pin counts; held from mlock to count update and from count update to
    /// munlock, so that a concurrent pin and unpin cannot unlock a page that
    /// one of them still counts.
    counts: Mutex<PinCounts>,
    files: Mutex<Option<Arc<ProcFiles>>>,
    pfns: PfnPolicy,
    counters: Counters,
    /// Pinned huge pages of hugetlb VMAs (address → size). mlock leaves
    /// hugetlb VMAs unlocked (no VM_LOCKED, not in VmLck), so these pinned
    /// bytes are not locked bytes.
    hugetlb: Mutex<RangeSet>,
    /// `/proc/<pid>/mem` of the address space at creation (another process
    /// only): the one path device DMA takes (module documentation). Shared
    /// with the SVM view; closed at [`HostMemory::retire`].
    mm: Arc<RwLock<Option<File>>>,
    /// The address space is gone (exec or exit of the process); shared
    /// with the SVM view.
    retired: Arc<AtomicBool>,
    /// The pinned pages, taken over when the address space went away
    /// ([`HostMemory::keep_pinned_pages`]): device DMA still reaches them,
    /// as Linux's orphaned pinned pages.
    orphans: RwLock<Option<OrphanPages>>,
    /// `orphans` is set: device DMA goes there, never to `mm` again.
    orphaned: AtomicBool,
    /// Pages taken at the start of an exec that may still fail
    /// ([`HostMemory::prepare_kept_pages`]).
    prepared: Mutex<Option<OrphanPages>>,
    /// Pages the program locked itself (found VM_LOCKED where no pin of
    /// ours held them): never munlocked here.
    user_locked: Mutex<RangeSet>,
    /// Threads a large pin uses (`memory/host/parallel.rs`); 0: the
    /// process default ([`parallel::set_default_pin_threads`]).
    pin_threads: std::sync::atomic::AtomicUsize,
    /// This backend, when made with [`HostMemory::into_shared`].
    this: OnceLock<Weak<HostMemory>>,
    /// The program refuses mlock (its own seccomp filter): pins are
    /// counted but not locked.
    lock_refused: AtomicBool,
    /// Says which ranges are device mappings (see
    /// [`HostMemory::set_device_ranges`]).
    device_ranges: Mutex<Option<DeviceRanges>>,
    /// Device ranges "pinned" for DMA, one entry per pinned piece: what
    /// `unpin` gives back without touching the pin counts, and where
    /// device DMA into them goes (peer to peer, [`crate::p2p`]).
    device_pins: Mutex<Vec<DevicePin>>,
    /// `device_pins` is not empty: lets device DMA skip its lock when no
    /// BAR is mapped for DMA (the common case), updated under that lock.
    any_device_pins: AtomicBool,
    /// The program may hold memory locks of its own: it had locked memory
    /// when this backend was made, or it called mlock since (front ends
    /// report it). Reading VmLck costs more than pinning a 4 KiB page, so
    /// pins look for the program's locks only then.
    program_locks: AtomicBool,
}

/// The device (BAR) mappings that meet `[vaddr, vaddr + len)`, clipped to
/// it, in address order. Given by the front end that keeps the address
/// space's device mappings.
pub type DeviceRanges = Arc<dyn Fn(u64, u64) -> Vec<DeviceRange> + Send + Sync>;

/// A piece of a device (BAR) mapping, as [`DeviceRanges`] gives it.
#[derive(Debug, Clone)]
pub struct DeviceRange {
    /// First address (page aligned).
    pub start: u64,
    /// Bytes (a multiple of the page size).
    pub len: u64,
    /// The program's protection of the mapping (`PROT_*`).
    pub prot: i32,
    /// The device region it reaches, at `start`.
    pub target: PeerTarget,
}

/// A device range pinned for DMA: `[start, end)` reaches `target`.
#[derive(Debug, Clone)]
struct DevicePin {
    start: u64,
    end: u64,
    target: PeerTarget,
}

impl std::fmt::Debug for HostMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostMemory")
            .field("target", &self.target)
            .field("pfns", &self.pfns)
            .field("stats", &self.stats())
            .finish()
    }
}

impl HostMemory {
    /// The memory of this process, with the system calls run here.
    ///
    /// # Safety
    /// [`UserMemory::write`] on the result, and every write made through it
    /// (a device's DMA through the IOMMU model, the copy-out of an ioctl's
    /// answer), writes this process's memory with `process_vm_writev`,
    /// behind the compiler's back, exactly as a write through a raw
    /// pointer would. The caller must ensure, for every address that can
    /// reach it (the user addresses of DMA mappings and of ioctl arguments
    /// the ABI writes back), that such a write is allowed: the memory is
    /// not reached through a shared reference or an immutable binding (the
    /// pointer was derived from a unique borrow, or from memory Rust does
    /// not manage: an mmap, a C program's buffer), and no Rust reference
    /// to it is used while the engine may write it. A VMM's guest memory
    /// and the buffers of a program under `LD_PRELOAD` are such memory.
    #[allow(unsafe_code)] // declares the contract above; no unsafe inside
    pub unsafe fn current() -> Self {
        Self::new(Target::Current, Arc::new(LocalSyscalls), true).with_program_locks_seen()
    }

    /// The memory of process `pid`; `sys` runs madvise/mlock/munlock inside
    /// it (for this process's own pid, [`LocalSyscalls`] does). Safe: when
    /// `pid` turns out to be this process, writes fail with
    /// [`MemError::Fault`] (only [`HostMemory::current`], with its
    /// contract, writes this process's memory); reads and pins work.
    ///
    /// The address space is the one `pid` has now: device DMA keeps
    /// reaching exactly it (and fails once it is gone) whatever later runs
    /// under `pid`; see the module documentation and [`HostMemory::retire`].
    pub fn for_pid(pid: i32, sys: Arc<dyn MmSyscalls>) -> Self {
        let mut m = Self::new(Target::Pid(pid), sys, false).with_program_locks_seen();
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .inspect_err(|e| tracing::warn!("host pid {pid}: cannot open mem: {e}"))
            .ok();
        m.mm = Arc::new(RwLock::new(mem));
        m
    }

    /// The address space is gone: the process exec'd or exited (its pid
    /// may name another address space, or another process, from now on).
    /// Nothing is reached through the pid any more: pins, reads and writes
    /// fail with [`MemError::Unreachable`], unpins only update the counts.
    /// Also applies to the [`UserMemory::svm_view`]s made from it.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        // Its descriptors reach nothing any more: close them (a
        // supervisor keeps retired backends for its report, and a program
        // may start thousands of processes).
        *self.mm.write().unwrap_or_else(|p| p.into_inner()) = None;
        *self.files.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Takes over the pin bookkeeping of `from` (its pin counts, hugetlb
    /// pins, the program's own locks, counters), leaving `from` with none:
    /// the preload library's keeper (docs/DESIGN.md §5) inherits, by
    /// `fork`, a backend of the program's memory (`current()`, now the
    /// keeper's copy) and moves its pins to a backend of the program's pid,
    /// so that unpins and device DMA reach the live program. Both must
    /// describe the same pages (the keeper's copy was forked from them).
    pub fn take_pins_from(&self, from: &HostMemory) {
        *self.lock_counts() = std::mem::replace(&mut *from.lock_counts(), PinCounts::new());
        let take = |m: &Mutex<RangeSet>, n: &Mutex<RangeSet>| {
            let taken = std::mem::replace(
                &mut *m.lock().unwrap_or_else(|p| p.into_inner()),
                RangeSet::new(),
            );
            *n.lock().unwrap_or_else(|p| p.into_inner()) = taken;
        };
        take(&from.hugetlb, &self.hugetlb);
        take(&from.user_locked, &self.user_locked);
        for (a, b) in [
            (&from.counters.pinned, &self.counters.pinned),
            (&from.counters.hugetlb, &self.counters.hugetlb),
            (&from.counters.refs, &self.counters.refs),
        ] {
            b.store(a.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        }
        if from.program_locks.load(Ordering::Relaxed) {
            self.note_program_locks();
        }
    }

    /// Whether [`HostMemory::retire`] was called.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// The process is about to lose this address space (it is stopped at
    /// its exit, its memory still intact): keep what its pinned pages hold
    /// so that device DMA still reaches them after [`HostMemory::retire`],
    /// as it reaches Linux's pinned pages after their mm is gone. Shared
    /// memory stays shared (its file is kept); private memory is copied
    /// as it is now (module `orphan`). Another process only; `None` when
    /// there is nothing to keep or no way to read it.
    pub fn keep_pinned_pages(&self) -> Option<OrphanStats> {
        // Exclusive: a device write landing in the process's memory while
        // it is copied would be lost; DMA waits, then finds the kept pages
        // (the process never runs again, so they are the pages from now).
        let mm = self.mm.write().unwrap_or_else(|p| p.into_inner());
        let (pages, stats) = self.take_over(mm.as_ref()?)?;
        self.switch_to_kept(pages);
        drop(mm);
        Some(stats)
    }

    /// The process is entering `execve`, which may still fail: take what
    /// the pinned pages hold now, to be used from
    /// [`HostMemory::commit_kept_pages`] (at the exec) on. Until then
    /// device DMA keeps reaching the live memory; what a device writes to
    /// private pages between the two is lost with the old image (the
    /// window is the exec itself).
    pub fn prepare_kept_pages(&self) -> Option<OrphanStats> {
        let mm = self.mm.read().unwrap_or_else(|p| p.into_inner());
        let (pages, stats) = self.take_over(mm.as_ref()?)?;
        drop(mm);
        *self.prepared.lock().unwrap_or_else(|p| p.into_inner()) = Some(pages);
        Some(stats)
    }

    /// The exec happened: device DMA reaches the pages taken at its start
    /// ([`HostMemory::prepare_kept_pages`]), if any; false when none were.
    pub fn commit_kept_pages(&self) -> bool {
        let pages = self
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match pages {
            Some(pages) => {
                self.switch_to_kept(pages);
                true
            }
            None => false,
        }
    }

    fn take_over(&self, mm: &File) -> Option<(OrphanPages, OrphanStats)> {
        let Target::Pid(pid) = self.target else {
            return None;
        };
        if self.is_retired() {
            return None;
        }
        let pinned: Vec<(u64, u64)> = self
            .lock_counts()
            .iter()
            .map(|s| (s.start, s.end))
            .collect();
        if pinned.is_empty() {
            return None;
        }
        let (pages, stats) = OrphanPages::keep(pid, mm, &pinned);
        tracing::debug!(pid, ?stats, "pinned pages kept past the address space");
        Some((pages, stats))
    }

    fn switch_to_kept(&self, pages: OrphanPages) {
        *self.orphans.write().unwrap_or_else(|p| p.into_inner()) = Some(pages);
        self.orphaned.store(true, Ordering::Release);
    }

    /// A device access to an address space that is gone: its kept pages,
    /// or nothing.
    fn orphan_access(
        &self,
        f: impl FnOnce(&OrphanPages) -> Result<(), MemError>,
    ) -> Result<(), MemError> {
        let orphans = self.orphans.read().unwrap_or_else(|p| p.into_inner());
        orphans.as_ref().map_or(Err(MemError::Unreachable), f)
    }

    fn check_live(&self) -> Result<(), MemError> {
        if self.is_retired() {
            Err(MemError::Unreachable)
        } else {
            Ok(())
        }
    }

    fn new(target: Target, sys: Arc<dyn MmSyscalls>, own_writes: bool) -> Self {
        HostMemory {
            target,
            own_writes,
            sys,
            account: Arc::new(MmAccount::new()),
            counts: Mutex::new(PinCounts::new()),
            files: Mutex::new(None),
            pfns: PfnPolicy {
                base: true,
                huge: false,
            },
            counters: Counters::default(),
            hugetlb: Mutex::new(RangeSet::new()),
            mm: Arc::new(RwLock::new(None)),
            retired: Arc::new(AtomicBool::new(false)),
            orphans: RwLock::new(None),
            orphaned: AtomicBool::new(false),
            prepared: Mutex::new(None),
            user_locked: Mutex::new(RangeSet::new()),
            pin_threads: std::sync::atomic::AtomicUsize::new(0),
            this: OnceLock::new(),
            lock_refused: AtomicBool::new(false),
            device_ranges: Mutex::new(None),
            device_pins: Mutex::new(Vec::new()),
            any_device_pins: AtomicBool::new(false),
            program_locks: AtomicBool::new(false),
        }
    }

    /// The program locks memory itself (it calls `mlock`, `mlock2` or
    /// `mlockall`): from now on pins look for its locks so that unpins
    /// leave them (module documentation). Front ends call it when they see
    /// such a call; memory the program had locked before this backend was
    /// made is found without it.
    pub fn note_program_locks(&self) {
        self.program_locks.store(true, Ordering::Relaxed);
    }

    /// Does the program lock memory itself (it called `mlock`, `mlock2` or
    /// `mlockall`, or held locked memory when this backend was made)?
    pub fn program_locks(&self) -> bool {
        self.program_locks.load(Ordering::Relaxed)
    }

    /// Sets `program_locks` when the process holds locked memory now.
    fn with_program_locks_seen(self) -> Self {
        if procfs::vmlck_bytes(self.target.pid()).is_some_and(|b| b > 0) {
            self.note_program_locks();
        }
        self
    }

    /// The program refused a system call of pinning by policy; logged once.
    fn note_lock_refused(&self, call: &str, errno: i32) {
        if !self.lock_refused.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "{}: {call} refused (errno {errno}), by the program's own seccomp filter or an LSM: pinned pages are not locked",
                self.describe()
            );
        }
    }

    /// This backend behind an `Arc` that [`UserMemory::shared`] hands out,
    /// so that mappings made by this address space through a container
    /// that another one opened pin and reach this one.
    pub fn into_shared(self) -> Arc<Self> {
        let this = Arc::new(self);
        let _ = this.this.set(Arc::downgrade(&this));
        this
    }

    /// Tells this address space which of its ranges are device mappings
    /// (memory-mapped BARs, which the front end maps inaccessible and
    /// records): `MAP_DMA` of such a range maps it without pinning or
    /// accounting (peer to peer; docs/MMIO.md).
    pub fn set_device_ranges(&self, ranges: DeviceRanges) {
        *self.device_ranges.lock().unwrap_or_else(|e| e.into_inner()) = Some(ranges);
    }

    /// Where device DMA of `len` bytes at `vaddr` goes when it meets a
    /// device range pinned for DMA: the peer and the offset into it
    /// (`None`: ordinary memory). An access that is only partly in one
    /// device range is a fault (IOMMU pages never straddle one).
    fn device_dma(&self, vaddr: u64, len: usize) -> Option<Result<(PeerTarget, u64), MemError>> {
        if !self.any_device_pins.load(Ordering::Acquire) {
            return None;
        }
        let pins = self.device_pins.lock().unwrap_or_else(|e| e.into_inner());
        let end = vaddr.saturating_add(len as u64);
        if let Some(p) = pins.iter().find(|p| p.start <= vaddr && vaddr < p.end) {
            if end > p.end {
                return Some(Err(MemError::Fault));
            }
            return Some(Ok((p.target.clone(), vaddr - p.start)));
        }
        pins.iter()
            .any(|p| vaddr < p.end && p.start < end)
            .then_some(Err(MemError::Fault))
    }

    /// Gives back the device pins in `[vaddr, end)` (one pin per piece);
    /// returns the parts of the range no device pin held, in order (for
    /// the memory pin counts).
    fn unpin_device(&self, vaddr: u64, end: u64) -> Vec<(u64, u64)> {
        let mut pins = self.device_pins.lock().unwrap_or_else(|e| e.into_inner());
        let mut memory = Vec::new();
        let mut at = vaddr;
        while at < end {
            let Some(i) = pins.iter().position(|p| p.start <= at && at < p.end) else {
                let next = pins
                    .iter()
                    .filter(|p| p.start > at && p.start < end)
                    .map(|p| p.start)
                    .min()
                    .unwrap_or(end);
                memory.push((at, next));
                at = next;
                continue;
            };
            let p = pins.swap_remove(i);
            let cut = p.end.min(end);
            if p.start < at {
                pins.push(DevicePin {
                    end: at,
                    ..p.clone()
                });
            }
            if cut < p.end {
                let mut right = p.clone();
                right.target.offset += cut - p.start;
                right.start = cut;
                pins.push(right);
            }
            at = cut;
        }
        self.any_device_pins
            .store(!pins.is_empty(), Ordering::Release);
        memory
    }

    /// The device ranges meeting `[vaddr, vaddr + len)`, as the front end
    /// says.
    fn device_pieces(&self, vaddr: u64, len: u64) -> Vec<DeviceRange> {
        let ranges = self
            .device_ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match ranges {
            Some(f) if len > 0 => f(vaddr, len),
            _ => Vec::new(),
        }
    }

    /// "Pins" one device range: nothing to fault in, lock or count (type1
    /// neither pins nor accounts `VM_PFNMAP` pages). It must be mapped
    /// with the access asked for (`follow_fault_pfn` faults a read-only
    /// mapping pinned for write: EFAULT).
    fn pin_device(
        &self,
        piece: &DeviceRange,
        write: bool,
        on_run: &mut dyn FnMut(PinnedRun) -> Result<(), MemError>,
    ) -> Result<(), MemError> {
        let needed = if write {
            libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        if piece.prot & needed == 0 {
            return Err(MemError::Fault);
        }
        let end = piece.start + piece.len;
        {
            let mut pins = self.device_pins.lock().unwrap_or_else(|e| e.into_inner());
            pins.push(DevicePin {
                start: piece.start,
                end,
                target: piece.target.clone(),
            });
            self.any_device_pins.store(true, Ordering::Release);
        }
        let run = PinnedRun {
            vaddr: piece.start,
            len: piece.len,
            page_size: PAGE_SIZE,
            pfn: None,
        };
        if let Err(e) = on_run(run) {
            self.unpin_device(piece.start, end);
            return Err(e);
        }
        Ok(())
    }

    /// Pins a range that meets device ranges: each part as what it is, in
    /// address order (type1's `vfio_pin_pages_remote` stops at a PFN-map
    /// boundary and the next call continues); all or nothing.
    fn pin_mixed(
        &self,
        vaddr: u64,
        end: u64,
        pieces: &[DeviceRange],
        write: bool,
        on_run: &mut dyn FnMut(PinnedRun) -> Result<(), MemError>,
    ) -> Result<(), MemError> {
        let mut done: Vec<(u64, u64)> = Vec::new();
        let mut at = vaddr;
        let mut result = Ok(());
        for piece in pieces {
            if piece.start > at {
                result = self.pin_memory(at, piece.start - at, write, on_run);
                if result.is_err() {
                    break;
                }
                done.push((at, piece.start));
            }
            result = self.pin_device(piece, write, on_run);
            if result.is_err() {
                break;
            }
            done.push((piece.start, piece.start + piece.len));
            at = piece.start + piece.len;
        }
        if result.is_ok() && at < end {
            result = self.pin_memory(at, end - at, write, on_run);
        }
        if result.is_err() {
            for (s, e) in done {
                self.unpin(s, e - s);
            }
        }
        result
    }

    /// Shares `account` with other backends over the same address space.
    pub fn with_account(mut self, account: Arc<MmAccount>) -> Self {
        self.account = account;
        self
    }

    /// Whether to read real PFNs of base pages from pagemap (on by default;
    /// only root sees them): one bulk read per pin, and PFN-contiguous pages
    /// then form one run. Without PFNs, base pages are reported one run each.
    pub fn with_pfns(mut self, on: bool) -> Self {
        self.pfns.base = on;
        self
    }

    /// Whether to fill [`PinnedRun::pfn`] for huge pages too (off by
    /// default). A huge page is one run whatever its PFN, so this is only
    /// information, and it costs one pagemap read (~1 µs) per huge page,
    /// several times the cost of pinning already populated huge pages.
    /// [`HostMemory::pfn_of`] reads one on demand instead.
    pub fn with_huge_pfns(mut self, on: bool) -> Self {
        self.pfns.huge = on;
        self
    }

    /// The real PFN of the page at `vaddr`, when present and visible (root).
    pub fn pfn_of(&self, vaddr: u64) -> Option<u64> {
        let files = self.files().ok()?;
        files
            .pfns(vaddr - vaddr % PAGE_SIZE, 1)?
            .first()
            .copied()
            .filter(|&p| p != 0)
    }

    /// Threads a pin of at least [`parallel::PARALLEL_MIN_BYTES`] uses to
    /// fault in and lock its chunks, when the system calls may run on any
    /// thread ([`MmSyscalls::any_thread`]); 1 pins on the calling thread,
    /// 0 (the default) follows [`parallel::set_default_pin_threads`].
    pub fn with_pin_threads(self, threads: usize) -> Self {
        self.pin_threads.store(threads, Ordering::Relaxed);
        self
    }

    /// Whether the program's own locks (as far as pins found them) touch
    /// `[start, end)`.
    fn program_lock_in(&self, start: u64, end: u64) -> bool {
        let own = self.user_locked.lock().unwrap_or_else(|p| p.into_inner());
        let touches = own.ranges().any(|(a, b)| a < end && b > start);
        touches
    }

    /// The pid whose memory this is.
    pub fn pid(&self) -> i32 {
        self.target.pid()
    }

    /// Pin count of the base page holding `addr`.
    pub fn pin_count(&self, addr: u64) -> u64 {
        self.lock_counts().count_at(addr - addr % PAGE_SIZE)
    }

    /// Entries in the pin-count map (tracking cost).
    pub fn tracked_segments(&self) -> usize {
        self.lock_counts().segments()
    }

    fn lock_counts(&self) -> MutexGuard<'_, PinCounts> {
        // The counts are updated in single calls that do not panic; a
        // poisoned lock still holds consistent counts.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `/proc` files of the target, reopened when this process forked
    /// since they were opened (they would describe the parent).
    fn files(&self) -> Result<Arc<ProcFiles>, MemError> {
        self.check_live()?;
        let pid = self.target.pid();
        let mut slot = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = slot.as_ref().filter(|f| f.pid == pid) {
            return Ok(f.clone());
        }
        let maps = File::open(format!("/proc/{pid}/maps")).map_err(|e| {
            tracing::warn!("host pid {pid}: cannot open maps: {e}");
            MemError::Unreachable
        })?;
        let pagemap = File::open(format!("/proc/{pid}/pagemap"))
            .inspect_err(|e| tracing::debug!("host pid {pid}: no pagemap: {e}"))
            .ok();
        let f = Arc::new(ProcFiles {
            pid,
            maps,
            pagemap,
            query: AtomicU8::new(UNKNOWN),
            scan: AtomicU8::new(UNKNOWN),
            pfns: AtomicU8::new(UNKNOWN),
        });
        *slot = Some(f.clone());
        Ok(f)
    }

    /// Remembers the hugetlb pages of `[vaddr, end)` as pinned (whole huge
    /// pages, one range per VMA piece).
    fn note_hugetlb_pinned(&self, vmas: &[Vma], vaddr: u64, end: u64) {
        let mut huge = self.hugetlb.lock().unwrap_or_else(|p| p.into_inner());
        for v in vmas.iter().filter(|v| v.page_size > PAGE_SIZE) {
            let (a, b) = (v.start.max(vaddr), v.end.min(end));
            let first = a - a % v.page_size;
            let last = b.div_ceil(v.page_size).saturating_mul(v.page_size);
            let added = huge.insert(first, last);
            self.counters.hugetlb.fetch_add(added, Ordering::Relaxed);
        }
    }

    /// Drops the hugetlb pages of the freed ranges that no pin holds any
    /// more: a huge page is idle when a gap of the pin counts covers it.
    fn forget_idle_hugetlb(&self, counts: &PinCounts, freed: &[(u64, u64, u64)]) {
        let mut huge = self.hugetlb.lock().unwrap_or_else(|p| p.into_inner());
        if huge.is_empty() {
            return;
        }
        for &(a, b, ps) in freed {
            if ps <= PAGE_SIZE {
                continue;
            }
            let first = a - a % ps;
            let last = b.div_ceil(ps).saturating_mul(ps);
            let mut idle = Vec::new();
            counts.gaps(first, last, |x, y| {
                let lo = x.div_ceil(ps).saturating_mul(ps);
                let hi = y - y % ps;
                if lo < hi {
                    idle.push((lo, hi));
                }
            });
            for (lo, hi) in idle {
                let removed = huge.remove(lo, hi);
                self.counters.hugetlb.fetch_sub(removed, Ordering::Relaxed);
            }
        }
    }

    fn publish(&self, counts: &PinCounts) {
        self.counters
            .pinned
            .store(counts.pinned(), Ordering::Relaxed);
        self.counters.refs.store(counts.refs(), Ordering::Relaxed);
    }

    /// munlock `[start, end)`; where part of it is no longer mapped (the user
    /// unmapped pinned memory), munlock what is still there, VMA by VMA.
    fn unlock_range(&self, start: u64, end: u64) {
        let Err(errno) = self.sys.munlock(start, end - start) else {
            return;
        };
        tracing::debug!("munlock {start:#x}..{end:#x}: errno {errno}; retrying per VMA");
        let Ok(files) = self.files() else { return };
        let Ok(vmas) = files.vmas(start, end) else {
            return;
        };
        for v in vmas {
            let (a, b) = (v.start.max(start), v.end.min(end));
            if let Err(e) = self.sys.munlock(a, b - a) {
                tracing::warn!("munlock {a:#x}..{b:#x}: errno {e}");
            }
        }
    }

    /// munlock what no pin holds any more in the given `(start, end,
    /// page_size)` ranges (in address order): base pages one by one, huge
    /// pages only whole, once no pin is left anywhere in them (the unit the
    /// pin took; munlock inside a THP would split it).
    fn unlock_idle(&self, counts: &PinCounts, ranges: impl IntoIterator<Item = (u64, u64, u64)>) {
        let mut idle = RangeList::new();
        for (a, b, ps) in ranges {
            if ps <= PAGE_SIZE {
                counts.gaps(a, b, |x, y| idle.push(x, y));
                continue;
            }
            let mut hp = a - a % ps;
            let last = b.div_ceil(ps).saturating_mul(ps);
            if !counts.any_in(hp, last) {
                // The common case (a whole mapping going): one lookup, not
                // one per huge page.
                idle.push(hp, last);
                continue;
            }
            while hp < b {
                if !counts.any_in(hp, hp + ps) {
                    idle.push(hp, hp + ps);
                }
                hp += ps;
            }
        }
        if self.is_retired() || self.lock_refused.load(Ordering::Relaxed) {
            // The address space (and its locks) is gone, the pid may name
            // another one now; or the program refuses mlock, so nothing
            // was locked.
            return;
        }
        let mut own = self.user_locked.lock().unwrap_or_else(|p| p.into_inner());
        for &(a, b) in idle.ranges() {
            // The program's own locks stay; no pin of ours is left in
            // them, so they are forgotten (a later pin finds them again).
            let mut cur = a;
            for (x, y) in own.ranges().filter(|&(x, y)| y > a && x < b) {
                if x.max(a) > cur {
                    self.unlock_range(cur, x.max(a));
                }
                cur = y.min(b);
            }
            if cur < b {
                self.unlock_range(cur, b);
            }
            own.remove(a, b);
        }
    }

    /// Remembers as the program's own the locked parts of `[start, end)`
    /// that no pin of ours holds (module documentation). Free unless the
    /// program may lock memory itself ([`HostMemory::note_program_locks`]);
    /// then one `VmLck` read, and smaps only when `VmLck` exceeds the bytes
    /// we keep locked.
    fn note_user_locks(&self, files: &ProcFiles, counts: &PinCounts, start: u64, end: u64) {
        if !self.program_locks.load(Ordering::Relaxed) {
            return;
        }
        let ours = self
            .counters
            .pinned
            .load(Ordering::Relaxed)
            .saturating_sub(self.counters.hugetlb.load(Ordering::Relaxed));
        match procfs::vmlck_bytes(files.pid) {
            Some(total) if total <= ours => return,
            _ => {}
        }
        let Some(locked) = files.locked_ranges(start, end) else {
            return;
        };
        let mut own = self.user_locked.lock().unwrap_or_else(|p| p.into_inner());
        for (a, b) in locked {
            counts.gaps(a.max(start), b.min(end), |x, y| {
                own.insert(x, y);
            });
        }
    }
}

/// A failed peer-to-peer access, as the memory error the IOMMU model
/// records for the requester.
fn p2p_error(peer: &PeerTarget, e: crate::p2p::PeerFault) -> MemError {
    tracing::debug!("p2p DMA to {peer:?}: {e}");
    MemError::Fault
}

impl HostMemory {
    /// Counts the pins of a locked range whose layout was just read (the
    /// caller holds `counts` since the lock).
    fn count_pins(
        &self,
        counts: &mut PinCounts,
        layout: &Layout,
        vmas: &[Vma],
        vaddr: u64,
        end: u64,
    ) {
        let mut pinner = Pinner::new(counts);
        for run in layout.runs() {
            pinner.pin(run);
        }
        let ops = pinner.finish();
        self.counters.pin_ops.fetch_add(ops, Ordering::Relaxed);
        self.note_hugetlb_pinned(vmas, vaddr, end);
        self.publish(counts);
    }

    /// Reports the runs of a counted pin, without the count lock so that
    /// `on_run` may use this backend; a refused run unpins the whole range.
    fn report_runs(
        &self,
        layout: &Layout,
        vaddr: u64,
        len: u64,
        on_run: &mut dyn FnMut(PinnedRun) -> Result<(), MemError>,
    ) -> Result<(), MemError> {
        for run in layout.runs() {
            if let Err(e) = on_run(run) {
                self.unpin_memory(vaddr, vaddr + len);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// `vaddr + len` for a page-aligned, non-empty range that does not wrap.
fn range_end(vaddr: u64, len: u64) -> Option<u64> {
    if len == 0 || !vaddr.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
        return None;
    }
    vaddr.checked_add(len)
}

/// An errno that a policy (a seccomp filter returning an error, an LSM)
/// gives, never the call itself for a valid range: mlock's EPERM needs a
/// zero RLIMIT_MEMLOCK without CAP_IPC_LOCK, which type1's accounting
/// refuses before any pin.
fn refused_by_policy(errno: i32) -> bool {
    matches!(errno, libc::EPERM | libc::EACCES | libc::ENOSYS)
}

/// Retries a call interrupted by a signal.
fn retry_eintr(mut f: impl FnMut() -> Result<(), i32>) -> Result<(), i32> {
    loop {
        match f() {
            Err(libc::EINTR) => continue,
            r => return r,
        }
    }
}

impl HostMemory {
    /// Pins ordinary memory (no device range in it).
    fn pin_memory(
        &self,
        vaddr: u64,
        len: u64,
        write: bool,
        on_run: &mut dyn FnMut(PinnedRun) -> Result<(), MemError>,
    ) -> Result<(), MemError> {
        let end = range_end(vaddr, len).ok_or(MemError::Fault)?;
        let files = self.files()?;

        // Check the whole range before touching it, so that a bad range (a
        // hole, PROT_NONE, read-only for write) leaves nothing behind.
        let vmas = files.vmas(vaddr, end)?;
        check_access(&vmas, vaddr, end, write)?;

        if let Some(pool) = self.parallel_pool(len) {
            let layout = {
                let mut counts = self.lock_counts();
                self.note_user_locks(&files, &counts, vaddr, end);
                if self.lock_refused.load(Ordering::Relaxed) {
                    None
                } else {
                    self.lock_in_parallel(&pool, &files, &vmas, &counts, vaddr, end, write)?
                        .inspect(|layout| self.count_pins(&mut counts, layout, &vmas, vaddr, end))
                }
            };
            // None: refused by policy; the one-thread path below copes.
            if let Some(layout) = layout {
                return self.report_runs(&layout, vaddr, len, on_run);
            }
        }

        // Fault in with the access asked for (breaks COW for write), unless
        // the call is injected and pagemap shows it would change nothing
        // (a small pin of memory in use: one ptrace round trip less).
        let advice = if write {
            libc::MADV_POPULATE_WRITE
        } else {
            libc::MADV_POPULATE_READ
        };
        let populated = self.sys.calls_are_costly() && files.populated(vaddr, end, write);
        match retry_eintr(|| match populated {
            true => Ok(()),
            false => self.sys.madvise(vaddr, len, advice),
        }) {
            Ok(()) => {}
            Err(errno) if refused_by_policy(errno) => {
                // The program's own seccomp filter (or an LSM) refuses
                // madvise: the range was checked above, and DMA faults the
                // pages in as it reaches them.
                self.note_lock_refused("madvise", errno);
            }
            Err(errno) => {
                tracing::debug!("populate {vaddr:#x}+{len:#x}: errno {errno}");
                return Err(MemError::Fault);
            }
        }

        let layout = {
            let mut counts = self.lock_counts();
            self.note_user_locks(&files, &counts, vaddr, end);
            // One mlock for the whole range (idempotent on pages that other
            // pins already hold; a no-op on hugetlb pages, which are never
            // swapped); on failure unlock only what no pin holds.
            let locked = if self.lock_refused.load(Ordering::Relaxed) {
                Ok(())
            } else {
                retry_eintr(|| self.sys.mlock(vaddr, len))
            };
            let locked = match locked {
                Err(errno) if refused_by_policy(errno) => {
                    // Linux's pins never mlock, so a program may forbid
                    // mlock to itself (seccomp) and still map: the pages
                    // then stay pinned in our counts but not locked
                    // (docs/RELIABILITY.md, "Process model").
                    self.note_lock_refused("mlock", errno);
                    Ok(())
                }
                r => r,
            };
            if let Err(errno) = locked {
                tracing::debug!("mlock {vaddr:#x}+{len:#x}: errno {errno}");
                let pieces = vmas
                    .iter()
                    .map(|v| (v.start.max(vaddr), v.end.min(end), v.page_size));
                self.unlock_idle(&counts, pieces);
                return Err(MemError::NoMem);
            }
            // Read page sizes and PFNs after mlock: the pages are present,
            // and mlock may have split huge pages at the range edges.
            let layout = Layout::read(&files, &vmas, vaddr, end, self.pfns);
            self.count_pins(&mut counts, &layout, &vmas, vaddr, end);
            layout
        };
        self.report_runs(&layout, vaddr, len, on_run)
    }

    /// Drops one pin of the ordinary memory `[vaddr, end)`.
    fn unpin_memory(&self, vaddr: u64, end: u64) {
        let mut counts = self.lock_counts();
        let mut freed = Vec::new();
        let ops = counts.unpin_runs(
            vaddr,
            end,
            PAGE_SIZE,
            |a, b, ps| freed.push((a, b, ps)),
            |a, b| tracing::warn!("unpin of {a:#x}..{b:#x}, which is not pinned; ignored"),
        );
        self.forget_idle_hugetlb(&counts, &freed);
        self.unlock_idle(&counts, freed);
        self.counters.unpin_ops.fetch_add(ops, Ordering::Relaxed);
        self.publish(&counts);
    }
}

impl UserMemory for HostMemory {
    fn pin(
        &self,
        vaddr: u64,
        len: u64,
        write: bool,
        on_run: &mut dyn FnMut(PinnedRun) -> Result<(), MemError>,
    ) -> Result<(), MemError> {
        let end = range_end(vaddr, len).ok_or(MemError::Fault)?;
        self.check_live()?;
        let pieces = self.device_pieces(vaddr, len);
        if !pieces.is_empty() {
            return self.pin_mixed(vaddr, end, &pieces, write, on_run);
        }
        self.pin_memory(vaddr, len, write, on_run)
    }

    fn is_device_range(&self, vaddr: u64, len: u64) -> bool {
        !self.device_pieces(vaddr, len).is_empty()
    }

    fn device_bytes(&self, vaddr: u64, len: u64) -> u64 {
        self.device_pieces(vaddr, len).iter().map(|p| p.len).sum()
    }

    fn unpin(&self, vaddr: u64, len: u64) {
        let Some(end) = range_end(vaddr, len) else {
            tracing::warn!("unpin of a bad range {vaddr:#x}+{len:#x}; ignored");
            return;
        };
        for (a, b) in self.unpin_device(vaddr, end) {
            self.unpin_memory(a, b);
        }
    }
    fn svm_view(&self) -> Option<Arc<dyn UserMemory>> {
        // A second instance over the same address space: it never pins, so
        // it cannot disturb this one's mlock state. Shares the account.
        let mut view = HostMemory::new(self.target, self.sys.clone(), self.own_writes)
            .with_account(self.account.clone());
        view.mm = self.mm.clone();
        view.retired = self.retired.clone();
        Some(Arc::new(view))
    }

    fn shared(&self) -> Option<Arc<dyn UserMemory>> {
        let this: Arc<dyn UserMemory> = self.this.get()?.upgrade()?;
        Some(this)
    }

    fn dma_read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        match self.device_dma(vaddr, buf.len()) {
            None => {}
            Some(Ok((peer, skip))) => {
                return crate::p2p::peer_read(&peer, skip, buf).map_err(|e| p2p_error(&peer, e));
            }
            Some(Err(e)) => return Err(e),
        }
        if matches!(self.target, Target::Current) {
            return self.read(vaddr, buf);
        }
        if self.orphaned.load(Ordering::Acquire) {
            return self.orphan_access(|o| o.read(vaddr, buf));
        }
        let mm = self.mm.read().unwrap_or_else(|p| p.into_inner());
        let Some(mm) = mm.as_ref() else {
            return Err(MemError::Unreachable);
        };
        let mut done = 0;
        while done < buf.len() {
            let addr = vaddr.checked_add(done as u64).ok_or(MemError::Fault)?;
            // End of file: the address space is gone; EIO: no page there.
            let n = mm.read_at(&mut buf[done..], addr).map_err(mm_error)?;
            if n == 0 {
                return Err(MemError::Unreachable);
            }
            done += n;
        }
        Ok(())
    }

    fn dma_write(&self, vaddr: u64, data: &[u8]) -> Result<(), MemError> {
        match self.device_dma(vaddr, data.len()) {
            None => {}
            Some(Ok((peer, skip))) => {
                return crate::p2p::peer_write(&peer, skip, data).map_err(|e| p2p_error(&peer, e));
            }
            Some(Err(e)) => return Err(e),
        }
        if matches!(self.target, Target::Current) {
            return self.write(vaddr, data);
        }
        if self.orphaned.load(Ordering::Acquire) {
            return self.orphan_access(|o| o.write(vaddr, data));
        }
        let mm = self.mm.read().unwrap_or_else(|p| p.into_inner());
        let Some(mm) = mm.as_ref() else {
            return Err(MemError::Unreachable);
        };
        // `mm` is only opened for another process (`for_pid`); one that
        // turned out to be this process stays read-only, as in `write`.
        if !self.own_writes && self.target.pid() == ffi::getpid() {
            return Err(MemError::Fault);
        }
        let mut done = 0;
        while done < data.len() {
            let addr = vaddr.checked_add(done as u64).ok_or(MemError::Fault)?;
            let n = mm.write_at(&data[done..], addr).map_err(mm_error)?;
            if n == 0 {
                return Err(MemError::Unreachable);
            }
            done += n;
        }
        Ok(())
    }

    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.check_live()?;
        let pid = self.target.pid();
        let mut done = 0;
        while done < buf.len() {
            let addr = vaddr.checked_add(done as u64).ok_or(MemError::Fault)?;
            let n = ffi::process_vm_read(pid, addr, &mut buf[done..]).map_err(vm_error)?;
            if n == 0 {
                return Err(MemError::Fault);
            }
            done += n;
        }
        Ok(())
    }

    fn write(&self, vaddr: u64, data: &[u8]) -> Result<(), MemError> {
        self.check_live()?;
        // Is the target this process? (`Current` is, by definition: no
        // second `getpid` system call per write for it.)
        let (pid, is_self) = match self.target {
            Target::Current => (current_pid(), true),
            Target::Pid(p) => (p, p == ffi::getpid()),
        };
        if !self.own_writes && is_self {
            return Err(MemError::Fault);
        }
        let mut done = 0;
        while done < data.len() {
            let addr = vaddr.checked_add(done as u64).ok_or(MemError::Fault)?;
            // SAFETY: another process, or this one with `own_writes`, which
            // only `HostMemory::current` sets: its caller guarantees that
            // the addresses written are not Rust-owned or referenced.
            #[allow(unsafe_code)]
            let n = unsafe { ffi::process_vm_write(pid, addr, &data[done..]) }.map_err(vm_error)?;
            if n == 0 {
                return Err(MemError::Fault);
            }
            done += n;
        }
        Ok(())
    }

    fn cap_sys_resource(&self) -> bool {
        let cap = match self.target {
            Target::Current => ffi::capget_effective(0),
            Target::Pid(pid) => cap_eff_of(pid),
        };
        cap.is_ok_and(|mask| mask & (1 << CAP_SYS_RESOURCE) != 0)
    }

    fn lock_policy(&self) -> LockPolicy {
        let cap = match self.target {
            Target::Current => ffi::capget_effective(0),
            Target::Pid(pid) => cap_eff_of(pid),
        };
        let cap_ipc_lock = match cap {
            Ok(mask) => mask & (1 << CAP_IPC_LOCK) != 0,
            Err(e) => {
                tracing::warn!("capabilities of pid {}: {e}", self.target.pid());
                false
            }
        };
        let pid = match self.target {
            Target::Current => 0,
            Target::Pid(p) => p,
        };
        let limit_pages = match ffi::memlock_limit(pid) {
            Ok(None) => u64::MAX,
            Ok(Some(bytes)) => bytes / PAGE_SIZE,
            Err(errno) => {
                // Fail closed: an unknown limit admits nothing.
                tracing::warn!("RLIMIT_MEMLOCK of pid {pid}: errno {errno}");
                0
            }
        };
        LockPolicy {
            cap_ipc_lock,
            limit_pages,
        }
    }

    fn account(&self) -> &Arc<MmAccount> {
        &self.account
    }

    fn stats(&self) -> PinStats {
        let pinned = self.counters.pinned.load(Ordering::Relaxed);
        PinStats {
            pinned_pages: pinned / PAGE_SIZE,
            pin_refs: self.counters.refs.load(Ordering::Relaxed) / PAGE_SIZE,
            pin_ops: self.counters.pin_ops.load(Ordering::Relaxed),
            unpin_ops: self.counters.unpin_ops.load(Ordering::Relaxed),
            locked_bytes: pinned.saturating_sub(self.counters.hugetlb.load(Ordering::Relaxed)),
        }
    }

    fn describe(&self) -> String {
        match self.target {
            Target::Current => format!("host pid {} (self)", ffi::getpid()),
            Target::Pid(p) => format!("host pid {p}"),
        }
    }
}

/// Takes the pins of one call, run by run: one count update (one pin
/// operation) per huge page, and one per stretch of touching base-page runs,
/// the same steps [`PinCounts::unpin_runs`] takes back.
struct Pinner<'a> {
    counts: &'a mut PinCounts,
    ops: u64,
    /// The stretch of same-size pages not yet counted: (start, end, size).
    /// Consecutive runs are counted with one update; a huge page is still
    /// one pin operation, a stretch of base pages one in all.
    chunk: Option<(u64, u64, u64)>,
}

impl<'a> Pinner<'a> {
    fn new(counts: &'a mut PinCounts) -> Self {
        Pinner {
            counts,
            ops: 0,
            chunk: None,
        }
    }

    fn pin(&mut self, run: PinnedRun) {
        let end = run.vaddr + run.len;
        if run.page_size != PAGE_SIZE {
            self.ops += 1;
        }
        match &mut self.chunk {
            Some(c) if c.1 == run.vaddr && c.2 == run.page_size => c.1 = end,
            _ => {
                self.flush();
                self.chunk = Some((run.vaddr, end, run.page_size));
            }
        }
    }

    fn flush(&mut self) {
        if let Some((a, b, size)) = self.chunk.take() {
            self.counts.add(a, b, size, |_, _| {});
            if size == PAGE_SIZE {
                self.ops += 1;
            }
        }
    }

    /// Counts what is left; returns the number of pin operations.
    fn finish(mut self) -> u64 {
        self.flush();
        self.ops
    }
}

/// An error of a read or write through `/proc/<pid>/mem`.
fn mm_error(e: std::io::Error) -> MemError {
    match e.raw_os_error() {
        Some(libc::ESRCH | libc::EPERM | libc::EACCES) => MemError::Unreachable,
        _ => MemError::Fault,
    }
}

fn vm_error(errno: i32) -> MemError {
    match errno {
        libc::ESRCH | libc::EPERM => MemError::Unreachable,
        _ => MemError::Fault,
    }
}

/// End of the huge-page run that starts at `cur`: the end of its huge page,
/// or `limit` if that comes first. The one rule both the PFN reads and the
/// run iterator follow.
fn huge_run_end(cur: u64, limit: u64, page_size: u64) -> u64 {
    (cur - cur % page_size + page_size).min(limit)
}

/// A stretch of the pinned range with one page size.
#[derive(Debug)]
struct Seg {
    start: u64,
    end: u64,
    page_size: u64,
    /// Base pages: one PFN per page. Huge pages: one per run (the PFN of the
    /// run's first base page). Empty when PFNs are unknown; 0 = not present.
    pfns: Vec<u64>,
}

/// Page sizes and PFNs of a pinned range, read once per pin call.
#[derive(Debug)]
struct Layout {
    segs: Vec<Seg>,
}

impl Layout {
    fn read(files: &ProcFiles, vmas: &[Vma], start: u64, end: u64, pfns: PfnPolicy) -> Layout {
        let mut segs = Vec::new();
        for v in vmas {
            let (a, b) = (v.start.max(start), v.end.min(end));
            if a >= b {
                continue;
            }
            if v.page_size > PAGE_SIZE {
                segs.push(Seg {
                    start: a,
                    end: b,
                    page_size: v.page_size,
                    pfns: Vec::new(),
                });
                continue;
            }
            // Base-page VMA: transparent huge pages may back parts of it.
            let mut cur = a;
            for (ha, hb) in files.thp_ranges(a, b).unwrap_or_default() {
                let (ha, hb) = (ha.max(cur), hb.min(b));
                if ha >= hb {
                    continue;
                }
                if ha > cur {
                    segs.push(Seg {
                        start: cur,
                        end: ha,
                        page_size: PAGE_SIZE,
                        pfns: Vec::new(),
                    });
                }
                segs.push(Seg {
                    start: ha,
                    end: hb,
                    page_size: THP_SIZE,
                    pfns: Vec::new(),
                });
                cur = hb;
            }
            if cur < b {
                segs.push(Seg {
                    start: cur,
                    end: b,
                    page_size: PAGE_SIZE,
                    pfns: Vec::new(),
                });
            }
        }
        let mut layout = Layout { segs };
        if pfns.base || pfns.huge {
            layout.read_pfns(files, pfns);
        }
        layout
    }

    fn read_pfns(&mut self, files: &ProcFiles, policy: PfnPolicy) {
        for s in &mut self.segs {
            let wanted = if s.page_size == PAGE_SIZE {
                policy.base
            } else {
                policy.huge
            };
            if !wanted {
                continue;
            }
            let pfns = if s.page_size == PAGE_SIZE {
                files.pfns(s.start, ((s.end - s.start) / PAGE_SIZE) as usize)
            } else {
                // One entry per huge page run: its first base page.
                let mut heads = Vec::new();
                let mut cur = s.start;
                while cur < s.end {
                    match files.pfns(cur, 1) {
                        Some(p) => heads.extend(p),
                        None => break,
                    }
                    cur = huge_run_end(cur, s.end, s.page_size);
                }
                (cur >= s.end).then_some(heads)
            };
            match pfns {
                Some(p) => s.pfns = p,
                None => {
                    // Hidden or unreadable: no PFNs anywhere, runs stay
                    // consistent.
                    for s in &mut self.segs {
                        s.pfns.clear();
                    }
                    return;
                }
            }
        }
    }

    fn runs(&self) -> Runs<'_> {
        Runs {
            segs: &self.segs,
            seg: 0,
            head: 0,
            cur: self.segs.first().map_or(0, |s| s.start),
        }
    }
}

/// The runs of a [`Layout`], in address order.
struct Runs<'a> {
    segs: &'a [Seg],
    seg: usize,
    /// Index of the next huge-page run within the segment.
    head: usize,
    cur: u64,
}

impl Iterator for Runs<'_> {
    type Item = PinnedRun;

    fn next(&mut self) -> Option<PinnedRun> {
        let s = loop {
            let s = self.segs.get(self.seg)?;
            if self.cur < s.end {
                break s;
            }
            self.seg += 1;
            self.head = 0;
        };
        let cur = self.cur.max(s.start);
        // Decide at the head, from the first page, how far this run goes.
        let (end, pfn) = if s.page_size > PAGE_SIZE {
            let pfn = s.pfns.get(self.head).copied();
            self.head += 1;
            (huge_run_end(cur, s.end, s.page_size), pfn)
        } else {
            let first = ((cur - s.start) / PAGE_SIZE) as usize;
            match s.pfns.get(first..) {
                Some(rest @ [head, ..]) if *head != 0 => {
                    let n = rest
                        .iter()
                        .enumerate()
                        .take_while(|&(i, &p)| p == head + i as u64)
                        .count();
                    (cur + n as u64 * PAGE_SIZE, Some(*head))
                }
                _ => (cur + PAGE_SIZE, None),
            }
        };
        self.cur = end;
        Some(PinnedRun {
            vaddr: cur,
            len: end - cur,
            page_size: s.page_size,
            pfn: pfn.filter(|&p| p != 0),
        })
    }
}

/// The libc calls, each in a small helper: the only `unsafe` of the
/// memory backends.
#[allow(unsafe_code)]
mod ffi;
mod orphan;
/// Pinning one large range on several threads.
pub mod parallel;
/// `/proc/<pid>` parsing: VMAs, pagemap, capabilities.
mod procfs;

#[cfg(test)]
mod tests {
    use super::procfs::{parse_smaps, populate_is_noop};
    use super::*;

    #[test]
    fn a_call_reads_the_process_id_once_and_only_for_itself() {
        let me = std::process::id() as i32;
        let kept = || CALL_PID.with(|c| c.get());
        // Outside a call: asked each time, nothing kept.
        assert_eq!(current_pid(), me);
        assert_eq!(kept(), 0);
        let inner = with_call_pid(|| {
            // Not read before it is needed, then kept for the call.
            assert_eq!(kept(), CALL_PID_UNREAD);
            assert_eq!(Target::Current.pid(), me);
            assert_eq!(kept(), me);
            // A nested call (a signal handler's) reads its own; the outer
            // call's comes back after it.
            with_call_pid(|| {
                assert_eq!(kept(), CALL_PID_UNREAD);
                assert_eq!(current_pid(), me);
            });
            assert_eq!(kept(), me);
            // A fork's child forgets what the parent's call read.
            forget_call_pid();
            assert_eq!(kept(), CALL_PID_UNREAD);
            assert_eq!(current_pid(), me);
            kept()
        });
        assert_eq!(inner, me);
        assert_eq!(kept(), 0);
        // Unwinding out of a call leaves no id behind either.
        let unwound = std::panic::catch_unwind(|| {
            with_call_pid(|| {
                assert_eq!(current_pid(), me);
                panic!("unwinds");
            })
        });
        assert!(unwound.is_err());
        assert_eq!(kept(), 0);
        // Outside a call, forgetting changes nothing.
        forget_call_pid();
        assert_eq!(kept(), 0);
    }

    #[test]
    fn smaps_parse() {
        let text = "\
7f0000000000-7f0000200000 rw-s 00000000 00:10 123   /anon_hugepage (deleted)
Size:               2048 kB
KernelPageSize:     2048 kB
MMUPageSize:        2048 kB
VmFlags: rd wr sh mr mw me ms de ht sd
7f0000200000-7f0000201000 r--p 00000000 00:00 0
Size:                  4 kB
KernelPageSize:        4 kB
7f0000201000-7f0000202000 ---p 00000000 00:00 0
KernelPageSize:        4 kB
";
        let v = parse_smaps(text);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].page_size, 2 << 20);
        assert!(v[0].read && v[0].write);
        assert_eq!((v[1].start, v[1].end), (0x7f0000200000, 0x7f0000201000));
        assert!(v[1].read && !v[1].write);
        assert!(!v[2].read && !v[2].write);
    }

    /// A device whose region 0 answers p2p reads with its offset and
    /// logs p2p writes (offset, bytes); offset 0x100 is not decoded.
    #[derive(Default)]
    struct Peer {
        writes: Mutex<Vec<(u64, Vec<u8>)>>,
    }

    impl crate::device::VfioDeviceModel for Peer {
        fn name(&self) -> &str {
            "peer"
        }
        fn flags(&self) -> u32 {
            2
        }
        fn num_regions(&self) -> u32 {
            9
        }
        fn num_irqs(&self) -> u32 {
            0
        }
        fn region_info(&self, _i: u32) -> Option<crate::device::RegionInfo> {
            None
        }
        fn irq_info(&self, _i: u32) -> Option<crate::device::IrqInfo> {
            None
        }
        fn region_read(&self, _i: u32, _o: u64, _b: &mut [u8]) -> Result<usize, i32> {
            Err(libc::EINVAL)
        }
        fn region_write(&self, _i: u32, _o: u64, _d: &[u8]) -> Result<usize, i32> {
            Err(libc::EINVAL)
        }
        fn reset(&self) -> Result<(), i32> {
            Err(libc::EINVAL)
        }
        fn peer_read(
            &self,
            _i: u32,
            offset: u64,
            data: &mut [u8],
        ) -> Result<(), crate::p2p::PeerAccessError> {
            if offset == 0x100 {
                return Err(crate::p2p::PeerAccessError::Refused);
            }
            let n = data.len();
            data.copy_from_slice(&offset.to_le_bytes()[..n]);
            Ok(())
        }
        fn peer_write(
            &self,
            _i: u32,
            offset: u64,
            data: &[u8],
        ) -> Result<(), crate::p2p::PeerAccessError> {
            self.writes.lock().unwrap().push((offset, data.to_vec()));
            Ok(())
        }
    }

    /// The front end's answer for one BAR mapping of `peer` at `bar`
    /// (1 MiB, region offset 0, protection `prot`).
    fn bar_ranges(
        bar: u64,
        peer: &Arc<Peer>,
        prot: i32,
    ) -> impl Fn(u64, u64) -> Vec<DeviceRange> + Send + Sync + 'static {
        let model: Arc<dyn crate::device::VfioDeviceModel> = peer.clone();
        let weak = Arc::downgrade(&model);
        // The test keeps `peer` alive; the closure holds only a weak one.
        drop(model);
        move |v: u64, l: u64| {
            let (s, e) = (v.max(bar), (v + l).min(bar + 0x10_0000));
            if s >= e {
                return Vec::new();
            }
            vec![DeviceRange {
                start: s,
                len: e - s,
                prot,
                target: PeerTarget {
                    model: weak.clone(),
                    region: 0,
                    offset: s - bar,
                },
            }]
        }
    }

    /// A device range (a BAR mapping, which the front end says is one) is
    /// "pinned" as one run without touching memory, locking or counting,
    /// and given back by `unpin`, also in parts; anything else still goes
    /// through the page tables (an unmapped range: EFAULT).
    #[test]
    fn device_ranges_pin_without_memory() {
        let mem = HostMemory::for_pid(std::process::id() as i32, Arc::new(LocalSyscalls));
        // Far above anything mapped in this process.
        let bar = 0x7e00_0000_0000u64;
        let peer = Arc::new(Peer::default());
        let mut runs = Vec::new();
        let mut collect = |r: PinnedRun| {
            runs.push(r);
            Ok(())
        };
        assert_eq!(
            mem.pin(bar, 0x4000, true, &mut collect),
            Err(MemError::Fault)
        );
        mem.set_device_ranges(Arc::new(bar_ranges(
            bar,
            &peer,
            libc::PROT_READ | libc::PROT_WRITE,
        )));
        assert!(mem.is_device_range(bar, 0x10_0000));
        assert_eq!(mem.device_bytes(bar, 0x10_1000), 0x10_0000);
        assert_eq!(mem.device_bytes(bar - 0x1000, 0x1000), 0);
        mem.pin(bar, 0x4000, true, &mut collect).unwrap();
        mem.pin(bar, 0x4000, false, &mut collect).unwrap();
        assert_eq!(
            runs,
            vec![
                PinnedRun {
                    vaddr: bar,
                    len: 0x4000,
                    page_size: PAGE_SIZE,
                    pfn: None
                };
                2
            ]
        );
        let stats = mem.stats();
        assert_eq!((stats.pinned_pages, stats.locked_bytes), (0, 0));
        // One pin whole, the other in parts (a partial UNMAP_DMA).
        mem.unpin(bar, 0x4000);
        assert!(mem.unpin_device(bar + 0x1000, bar + 0x2000).is_empty());
        mem.unpin(bar, 0x1000);
        mem.unpin(bar + 0x2000, 0x2000);
        assert!(mem.device_pins.lock().unwrap().is_empty());
        assert_eq!(
            mem.unpin_device(bar, bar + 0x1000),
            vec![(bar, bar + 0x1000)]
        );
        // Past the device range: the page tables decide (nothing mapped
        // there), and nothing of the device part stays pinned.
        assert_eq!(
            mem.pin(bar + 0xff000, 0x2000, true, &mut |_| Ok(())),
            Err(MemError::Fault)
        );
        assert!(mem.device_pins.lock().unwrap().is_empty());
    }

    /// A read-only BAR mapping pins for reading only (type1's
    /// `follow_fault_pfn` with a write fault: EFAULT).
    #[test]
    fn read_only_device_range_pins_only_for_reading() {
        let mem = HostMemory::for_pid(std::process::id() as i32, Arc::new(LocalSyscalls));
        let bar = 0x7e00_0000_0000u64;
        let peer = Arc::new(Peer::default());
        mem.set_device_ranges(Arc::new(bar_ranges(bar, &peer, libc::PROT_READ)));
        assert_eq!(
            mem.pin(bar, 0x1000, true, &mut |_| Ok(())),
            Err(MemError::Fault)
        );
        assert!(mem.device_pins.lock().unwrap().is_empty());
        mem.pin(bar, 0x1000, false, &mut |_| Ok(())).unwrap();
        mem.unpin(bar, 0x1000);
        assert!(mem.device_pins.lock().unwrap().is_empty());
    }

    /// Device DMA into a pinned device range reaches the peer's
    /// registers, split into naturally aligned accesses of at most 8
    /// bytes; a register the peer does not decode, an access running out
    /// of the range, a peer that is gone and an unpinned range fail.
    #[test]
    fn device_dma_reaches_the_peer() {
        let mem = HostMemory::for_pid(std::process::id() as i32, Arc::new(LocalSyscalls));
        let bar = 0x7e00_0000_0000u64;
        let peer = Arc::new(Peer::default());
        mem.set_device_ranges(Arc::new(bar_ranges(
            bar,
            &peer,
            libc::PROT_READ | libc::PROT_WRITE,
        )));
        mem.pin(bar + 0x1000, 0x2000, true, &mut |_| Ok(()))
            .unwrap();
        mem.dma_write(bar + 0x1004, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
            .unwrap();
        assert_eq!(
            *peer.writes.lock().unwrap(),
            vec![
                (0x1004, vec![1, 2, 3, 4]),
                (0x1008, vec![5, 6, 7, 8, 9, 10, 11, 12])
            ]
        );
        let mut buf = [0u8; 12];
        mem.dma_read(bar + 0x1ffc, &mut buf).unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(&0x1ffcu32.to_le_bytes());
        want.extend_from_slice(&0x2000u64.to_le_bytes());
        assert_eq!(buf.to_vec(), want);
        // Offset 0x100 of the peer is in the first page: not pinned.
        assert_eq!(mem.dma_read(bar + 0x100, &mut buf), Err(MemError::Fault));
        // Crossing the end of the pinned range.
        assert_eq!(mem.dma_read(bar + 0x2ffc, &mut buf), Err(MemError::Fault));
        mem.unpin(bar + 0x1000, 0x2000);
        // Pinned again, at a region offset the peer does not decode.
        mem.pin(bar, 0x1000, true, &mut |_| Ok(())).unwrap();
        assert_eq!(
            mem.dma_read(bar + 0x100, &mut buf[..4]),
            Err(MemError::Fault)
        );
        // The peer is gone (its last reference dropped).
        drop(peer);
        assert_eq!(mem.dma_write(bar + 0x8, &[0; 4]), Err(MemError::Fault));
        mem.unpin(bar, 0x1000);
        assert!(!mem.any_device_pins.load(Ordering::Relaxed));
    }

    /// A range half memory, half device registers pins each part as what
    /// it is (memory locked and counted, the device part not), and
    /// `unpin` gives each back; a failure in the second part leaves
    /// nothing of the first.
    #[test]
    fn mixed_range_pins_each_part() {
        let mem = HostMemory::for_pid(std::process::id() as i32, Arc::new(LocalSyscalls));
        let peer = Arc::new(Peer::default());
        let buf = vec![0u8; 0x5000];
        let memory = (buf.as_ptr() as u64).div_ceil(0x1000) * 0x1000;
        // The "BAR" right after two pages of memory.
        let bar = memory + 0x2000;
        mem.set_device_ranges(Arc::new(bar_ranges(
            bar,
            &peer,
            libc::PROT_READ | libc::PROT_WRITE,
        )));
        let mut runs = Vec::new();
        mem.pin(memory, 0x3000, false, &mut |r| {
            runs.push((r.vaddr, r.len, r.pfn.is_none()));
            Ok(())
        })
        .unwrap();
        assert_eq!(mem.device_bytes(memory, 0x3000), 0x1000);
        assert_eq!(runs.last(), Some(&(bar, 0x1000, true)));
        assert_eq!(runs.iter().map(|r| r.1).sum::<u64>(), 0x3000);
        assert_eq!(mem.stats().pinned_pages, 2);
        mem.unpin(memory, 0x3000);
        assert_eq!(mem.stats().pinned_pages, 0);
        assert!(mem.device_pins.lock().unwrap().is_empty());
        // on_run refusing the device run: the memory part is given back.
        let r = mem.pin(memory, 0x3000, false, &mut |r| {
            if r.pfn.is_none() && r.vaddr == bar {
                Err(MemError::Injected)
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err(MemError::Injected));
        assert_eq!(mem.stats().pinned_pages, 0);
        assert!(mem.device_pins.lock().unwrap().is_empty());
        drop(buf);
    }

    #[test]
    fn locked_vmas_parse() {
        let text = "\
7f0000000000-7f0000002000 rw-p 00000000 00:00 0
Locked:                8 kB
VmFlags: rd wr mr mw me lo ac
7f0000002000-7f0000003000 rw-p 00000000 00:00 0
Locked:                0 kB
VmFlags: rd wr mr mw me ac
7f0000003000-7f0000004000 r--p 00000000 00:10 9   /lib/x.so
VmFlags: rd mr mw me lo
";
        assert_eq!(
            procfs::parse_locked(text),
            vec![
                (0x7f0000000000, 0x7f0000002000),
                (0x7f0000003000, 0x7f0000004000)
            ]
        );
        assert_eq!(procfs::parse_locked("VmFlags: lo\n"), vec![]);
    }

    /// `capget` of another process reads what its status file prints.
    #[test]
    fn cap_eff_of_another_process_is_its_status_cap_eff() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
        let want = u64::from_str_radix(line["CapEff:".len()..].trim(), 16).unwrap();
        let got = procfs::cap_eff_of(pid);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(got, Ok(want));
        // Gone: an error, never a made-up mask.
        assert!(procfs::cap_eff_of(pid).is_err());
    }

    #[test]
    fn populate_is_noop_needs_present_and_exclusive_for_write() {
        let present = 1u64 << 63;
        let exclusive = 1u64 << 56;
        assert!(!populate_is_noop(0, false));
        assert!(!populate_is_noop(exclusive, true));
        assert!(populate_is_noop(present | 1234, false));
        assert!(!populate_is_noop(present | 1234, true));
        assert!(populate_is_noop(present | exclusive, true));
    }

    /// What the pagemap check sees of this process's own fresh memory: not
    /// present, then the zero page after a read (enough for a read pin, not
    /// for a write pin), then a private page after a write.
    #[test]
    fn populated_check_follows_the_page_state() {
        let m = HostMemory::for_pid(ffi::getpid(), Arc::new(LocalSyscalls));
        let files = m.files().unwrap();
        // calloc of 64 MiB, above glibc's largest mmap threshold (32 MiB):
        // a fresh anonymous mapping whatever other tests freed, untouched.
        let mut buf = vec![0u8; 64 << 20];
        let a = (buf.as_ptr() as u64 + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        let off = (a - buf.as_ptr() as u64) as usize;
        if files.pagemap.is_none() {
            return;
        }
        assert!(!files.populated(a, a + PAGE_SIZE, false));
        assert!(!files.populated(a, a + PAGE_SIZE, true));
        std::hint::black_box(buf[off]);
        assert!(files.populated(a, a + PAGE_SIZE, false));
        assert!(!files.populated(a, a + PAGE_SIZE, true));
        buf[off] = 1;
        std::hint::black_box(&buf);
        assert!(files.populated(a, a + PAGE_SIZE, true));
        // A page 3 MiB on was never touched (not even by a transparent
        // huge page around the first one): a range ending there is not.
        let far = a + (3 << 20);
        assert!(!files.populated(far - PAGE_SIZE, far + PAGE_SIZE, false));
        // Too large to check: the populate runs.
        let big = procfs::POPULATED_CHECK_PAGES + 1;
        buf[off..off + (big * PAGE_SIZE) as usize].fill(1);
        std::hint::black_box(&buf);
        assert!(!files.populated(a, a + big * PAGE_SIZE, true));
        assert!(files.populated(a, a + (big - 1) * PAGE_SIZE, true));
    }

    #[test]
    fn access_check() {
        let v = |start, end, read, write| Vma {
            start,
            end,
            read,
            write,
            page_size: PAGE_SIZE,
        };
        let vmas = [v(0, 0x2000, true, true), v(0x2000, 0x3000, true, false)];
        assert_eq!(check_access(&vmas, 0, 0x3000, false), Ok(()));
        assert_eq!(check_access(&vmas, 0, 0x3000, true), Err(MemError::Fault));
        assert_eq!(check_access(&vmas, 0x1000, 0x2000, true), Ok(()));
        assert_eq!(check_access(&vmas, 0, 0x4000, false), Err(MemError::Fault));
        let holes = [v(0, 0x1000, true, true), v(0x2000, 0x3000, true, true)];
        assert_eq!(check_access(&holes, 0, 0x3000, false), Err(MemError::Fault));
        assert_eq!(check_access(&[], 0, 0x1000, false), Err(MemError::Fault));
    }

    fn seg(start: u64, end: u64, page_size: u64, pfns: Vec<u64>) -> Seg {
        Seg {
            start,
            end,
            page_size,
            pfns,
        }
    }

    #[test]
    fn runs_follow_pfns_and_huge_pages() {
        const M2: u64 = 2 << 20;
        let l = Layout {
            segs: vec![
                seg(0x1000, 0x6000, PAGE_SIZE, vec![10, 11, 12, 20, 0]),
                seg(M2 / 2, 3 * M2, M2, vec![100, 200, 300]),
                seg(3 * M2, 3 * M2 + 0x2000, PAGE_SIZE, vec![]),
            ],
        };
        let runs: Vec<(u64, u64, u64, Option<u64>)> = l
            .runs()
            .map(|r| (r.vaddr, r.len, r.page_size, r.pfn))
            .collect();
        assert_eq!(
            runs,
            vec![
                (0x1000, 0x3000, PAGE_SIZE, Some(10)),
                (0x4000, 0x1000, PAGE_SIZE, Some(20)),
                (0x5000, 0x1000, PAGE_SIZE, None),
                (M2 / 2, M2 / 2, M2, Some(100)),
                (M2, M2, M2, Some(200)),
                (2 * M2, M2, M2, Some(300)),
                (3 * M2, 0x1000, PAGE_SIZE, None),
                (3 * M2 + 0x1000, 0x1000, PAGE_SIZE, None),
            ]
        );
    }

    /// The safe constructor cannot write this process's memory (that is
    /// what makes `current` unsafe; tests/memory_host.rs writes through
    /// `current`); reading it works.
    #[test]
    fn for_own_pid_reads_but_refuses_writes() {
        let buf = [7u8; 64];
        let addr = buf.as_ptr() as u64;
        let m = HostMemory::for_pid(ffi::getpid(), Arc::new(LocalSyscalls));
        let mut out = [0u8; 8];
        assert_eq!(m.read(addr, &mut out), Ok(()));
        assert_eq!(out, [7u8; 8]);
        assert_eq!(m.write(addr, &[1u8; 8]), Err(MemError::Fault));
        let view = m.svm_view().expect("host memory has an SVM view");
        assert_eq!(view.write(addr, &[1u8; 8]), Err(MemError::Fault));
        assert_eq!(buf[..8], [7u8; 8]);
    }

    #[test]
    fn vma_lookup_agrees_with_smaps() {
        // Reads /proc only: the safe constructor does.
        let m = HostMemory::for_pid(ffi::getpid(), Arc::new(LocalSyscalls));
        let files = m.files().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        buf[0] = 1;
        let a = buf.as_ptr() as u64 & !(PAGE_SIZE - 1);
        let by_query = files.vmas(a, a + PAGE_SIZE).unwrap();
        let by_smaps = files.vmas_by_smaps(a, a + PAGE_SIZE).unwrap();
        // Other test threads change the address space meanwhile, and smaps
        // is read in several chunks, so a VMA may show up twice: compare the
        // VMA that covers the page, which does not change.
        let covering = |vs: &[Vma]| vs.iter().copied().find(|v| v.start <= a && v.end > a);
        for v in [covering(&by_query), covering(&by_smaps)] {
            let v = v.expect("a VMA covers the buffer");
            assert!(v.read && v.write);
            assert_eq!(v.page_size, PAGE_SIZE);
        }
    }

    #[test]
    fn local_syscalls_refuse_destructive_advice() {
        assert_eq!(
            LocalSyscalls.madvise(0, 4096, libc::MADV_DONTNEED),
            Err(libc::EINVAL)
        );
    }
}
