//! The program's calls that reach the kernel past libc's interposed
//! wrappers, and the memory calls the other hooks do not cover:
//!
//! - `syscall(2)`: libc's variadic `syscall` function with a number this
//!   library serves through a named hook (memory calls, the descriptor
//!   table's calls, opens, ioctl, pread/pwrite, and read/write/readv/writev
//!   of a descriptor that may be a fault queue) goes to that hook, which
//!   passes the call on through libc's wrapper of the same system call (the
//!   same kernel call, answer and errno), with the thread's cancellation
//!   disabled meanwhile (glibc's `syscall` is no cancellation point; the
//!   wrappers are). Every other number is made as
//!   glibc's `syscall` makes it, with the `syscall` instruction on x86-64
//!   (`fcntl` too: the library's own raw `fcntl`s would have to leave this
//!   path first; a raw `F_DUPFD` of a VFIO descriptor stays unseen,
//!   docs/RELIABILITY.md).
//! - `madvise`: advice that makes memory behind a live DMA mapping go away
//!   (`MADV_DONTNEED`, `MADV_DONTNEED_LOCKED`, `MADV_REMOVE` of shared
//!   writable memory) is a stale mapping for the DMA sanitizer. `MADV_FREE` is not: Linux never discards a lazily
//!   freed page that holds extra references (a DMA pin), so program and
//!   device keep sharing it (docs/SANITIZER.md).
//! - `free`, `realloc`, `reallocarray`: glibc serves a large block
//!   (`M_MMAP_THRESHOLD` and up) with a mapping of its own and unmaps it in
//!   `free` (or remaps it in `realloc`) with a system call the PLT never
//!   sees. When the sanitizer watches, the block's chunk header says whether
//!   it is such a mapping (glibc's `IS_MMAPPED` bit) and which pages it
//!   spans; they are checked as a `munmap` (`free`) or `mremap`
//!   (`realloc`) would be.
//! - `dlclose`: passes on, then counts an unload for the sanitizer's
//!   call-site caches ([`crate::sanitize::UNLOADS`]).
//!
//! Invariants:
//! - With the sanitizer off, `free`/`realloc`/`reallocarray`/`madvise` cost
//!   one atomic load before the next definition runs; with it on and no
//!   VFIO file, two; with VFIO files, a heap block's header read more.
//!   `syscall` with an unserved number costs a comparison; `read`,
//!   `write`, `readv`, `writev` of a descriptor that is no fault queue one
//!   load more (two once a queue was made: crate::streams).
//! - A chunk header is read only when the next `free` is glibc's (a
//!   program with another allocator keeps its own layout) and only for a
//!   pointer the program hands to `free`/`realloc` (its header lies in the
//!   16 bytes before it, in the same mapping, as glibc reads it itself).
//! - Calls softvfio makes itself (inside a hook, the keeper, pin workers)
//!   pass straight on. The library's own raw system calls use
//!   [`crate::real::raw_syscall`], never this `syscall`.
//! - A thread that resolves the next `free` and is called back into `free`
//!   by the loader leaks that block rather than recurse.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_void};
use std::sync::atomic::{AtomicU8, Ordering};

use libc::size_t;
use softvfio::sanitizer::StaleCause;

use crate::real::{self, Next};
use crate::sanitize;

// ---- syscall(2) ---------------------------------------------------------------

/// The system call numbers served through a named hook.
fn served(nr: c_long) -> bool {
    matches!(
        nr,
        libc::SYS_munmap
            | libc::SYS_mremap
            | libc::SYS_mmap
            | libc::SYS_mprotect
            | libc::SYS_madvise
            | libc::SYS_close
            | libc::SYS_close_range
            | libc::SYS_dup
            | libc::SYS_dup2
            | libc::SYS_dup3
            | libc::SYS_open
            | libc::SYS_openat
            | libc::SYS_ioctl
            | libc::SYS_pread64
            | libc::SYS_pwrite64
            | libc::SYS_read
            | libc::SYS_write
            | libc::SYS_readv
            | libc::SYS_writev
    )
}

/// `read`, `write`, `readv`, `writev`: served only on a descriptor that may
/// be a fault queue (crate::streams); the others go to the kernel as
/// glibc's `syscall` makes them, without the hooks' work.
fn stream_call(nr: c_long) -> bool {
    matches!(
        nr,
        libc::SYS_read | libc::SYS_write | libc::SYS_readv | libc::SYS_writev
    )
}

/// libc's `syscall`. Variadic in C: the six argument words are read as
/// glibc's own wrapper reads them (on x86-64 and aarch64 variadic integer
/// arguments travel in the same registers and stack slots as named ones;
/// words the caller did not pass are junk nobody uses).
///
/// # Safety
/// As libc's `syscall`: the arguments must be valid for system call `nr`.
#[no_mangle]
pub unsafe extern "C" fn syscall(
    nr: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    let a = [a1, a2, a3, a4, a5, a6];
    if !served(nr) || (stream_call(nr) && !crate::streams::may_be_served(a1 as c_int)) {
        // SAFETY: the program's call, passed on unchanged.
        return unsafe { pass_on(nr, a) };
    }
    // glibc's `syscall` is no cancellation point; the wrappers the hooks
    // call (close, openat, pread, ...) are.
    // SAFETY: the program's arguments for system call `nr` (this
    // function's contract) are the arguments of libc's wrapper of it.
    real::without_cancel(|| unsafe { serve(nr, a) })
}

/// A system call this library does not serve, as glibc's `syscall` makes
/// it: the `syscall` instruction itself on x86-64 (glibc's own function
/// is the same six register moves and the errno convention, and calling
/// it would add an indirect call, which the kernel's branch-predictor
/// flushes on system call entry make mispredicted: ~8 ns of a 165 ns
/// `getppid`, docs/PERFORMANCE-HISTORY.md), glibc's function elsewhere.
///
/// # Safety
/// `a` must be valid arguments of system call `nr`.
#[cfg(target_arch = "x86_64")]
unsafe fn pass_on(nr: c_long, a: [c_long; 6]) -> c_long {
    // SAFETY: the program's system call with its arguments (this
    // function's contract); the call may read and write the program's
    // memory, as it asked.
    let ret = unsafe { real::kernel_call(nr, a) };
    // -4095..-1 is an errno, as glibc reads it.
    if (-4095..0).contains(&ret) {
        real::set_errno(-ret as c_int);
        -1
    } else {
        ret
    }
}

/// See the x86-64 version: glibc's `syscall`.
///
/// # Safety
/// `a` must be valid arguments of system call `nr`.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn pass_on(nr: c_long, a: [c_long; 6]) -> c_long {
    // SAFETY: this function's contract.
    unsafe { real::raw_syscall(nr, a) }
}

/// System call `nr` through this library's hook of libc's wrapper of it.
///
/// # Safety
/// `a` must be valid arguments of system call `nr`.
unsafe fn serve(nr: c_long, a: [c_long; 6]) -> c_long {
    let [a1, a2, a3, a4, a5, a6] = a;
    let p = |v: c_long| v as *mut c_void;
    // SAFETY: each arm calls the hook of the libc wrapper of the same
    // system call, with the program's arguments (this function's
    // contract); integer arguments narrowed as the kernel reads them
    // (`int` fds, flags and advice).
    unsafe {
        match nr {
            libc::SYS_munmap => c_long::from(crate::mmio::munmap(p(a1), a2 as size_t)),
            libc::SYS_mremap => {
                crate::mmio::mremap(p(a1), a2 as size_t, a3 as size_t, a4 as c_int, p(a5)) as c_long
            }
            libc::SYS_mmap => crate::mmio::mmap(
                p(a1),
                a2 as size_t,
                a3 as c_int,
                a4 as c_int,
                a5 as c_int,
                a6 as libc::off_t,
            ) as c_long,
            libc::SYS_mprotect => {
                c_long::from(crate::mmio::mprotect(p(a1), a2 as size_t, a3 as c_int))
            }
            libc::SYS_madvise => c_long::from(madvise(p(a1), a2 as size_t, a3 as c_int)),
            libc::SYS_close => c_long::from(crate::close(a1 as c_int)),
            libc::SYS_close_range => {
                c_long::from(crate::close_range(a1 as c_uint, a2 as c_uint, a3 as c_int))
            }
            libc::SYS_dup => c_long::from(crate::dup(a1 as c_int)),
            libc::SYS_dup2 => c_long::from(crate::dup2(a1 as c_int, a2 as c_int)),
            libc::SYS_dup3 => c_long::from(crate::dup3(a1 as c_int, a2 as c_int, a3 as c_int)),
            libc::SYS_open => {
                c_long::from(crate::open(a1 as *const c_char, a2 as c_int, a3 as c_uint))
            }
            libc::SYS_openat => c_long::from(crate::openat(
                a1 as c_int,
                a2 as *const c_char,
                a3 as c_int,
                a4 as c_uint,
            )),
            libc::SYS_ioctl => {
                c_long::from(crate::ioctl(a1 as c_int, a2 as c_ulong, a3 as c_ulong))
            }
            libc::SYS_pread64 => {
                crate::pread64(a1 as c_int, p(a2), a3 as size_t, a4 as libc::off_t) as c_long
            }
            libc::SYS_pwrite64 => crate::pwrite64(
                a1 as c_int,
                a2 as *const c_void,
                a3 as size_t,
                a4 as libc::off_t,
            ) as c_long,
            libc::SYS_read => crate::read(a1 as c_int, p(a2), a3 as size_t) as c_long,
            libc::SYS_write => {
                crate::write(a1 as c_int, a2 as *const c_void, a3 as size_t) as c_long
            }
            libc::SYS_readv => {
                crate::readv(a1 as c_int, a2 as *const libc::iovec, a3 as c_int) as c_long
            }
            libc::SYS_writev => {
                crate::writev(a1 as c_int, a2 as *const libc::iovec, a3 as c_int) as c_long
            }
            _ => pass_on(nr, a),
        }
    }
}

// ---- madvise ------------------------------------------------------------------

static NEXT_MADVISE: Next = Next::new(c"madvise");
type MadviseFn = unsafe extern "C" fn(*mut c_void, size_t, c_int) -> c_int;

fn real_madvise(addr: *mut c_void, len: size_t, advice: c_int) -> c_int {
    let f = NEXT_MADVISE.get();
    if f.is_null() {
        real::set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: `f` is the next `madvise` (dlsym), whose prototype MadviseFn
    // is; the kernel checks the range, and the advice concerns the
    // program's own memory (none of it is a Rust reference here).
    unsafe { std::mem::transmute::<*mut c_void, MadviseFn>(f)(addr, len, advice) }
}

/// The stale-mapping cause of `advice` (`None`: advice that leaves the
/// program's pages in place).
fn madvise_cause(advice: c_int) -> Option<StaleCause> {
    match advice {
        libc::MADV_DONTNEED | MADV_DONTNEED_LOCKED => Some(StaleCause::MadvDontneed),
        // Of shared writable memory only (checked after the call).
        libc::MADV_REMOVE => Some(StaleCause::MadvRemove),
        _ => None,
    }
}

/// `madvise` as Linux answers it over a BAR, which softvfio emulates with
/// anonymous memory: Linux 6.1's `MADV_DONTNEED`, `MADV_DONTNEED_LOCKED`
/// and `MADV_FREE` stop at a `VM_PFNMAP` mapping with EINVAL, after the
/// mappings before it went (tests-oracle/kernel-6.1-dma-bugs-madvise.txt:
/// `madv-dontneed-locked-bar`, EINVAL, the page after the BAR kept; here
/// the call would pass over the emulation's memory, and
/// `MADV_DONTNEED_LOCKED`, which ignores the pin's mlock, would zap the
/// page after it). Other advice, and a range without a BAR, pass on as
/// they are (one atomic load while no BAR is mapped).
fn madvise_up_to_a_bar(addr: *mut c_void, len: size_t, advice: c_int) -> c_int {
    let stops = matches!(
        advice,
        libc::MADV_DONTNEED | MADV_DONTNEED_LOCKED | libc::MADV_FREE
    );
    // The range Linux walks (nothing when it refuses up front: its answer).
    let walked = || softvfio_platform::sanitize::madvise_range(addr as u64, len as u64);
    let bar = match stops.then(walked).flatten() {
        Some((start, end)) => crate::mmio::first_device_address(start, end).map(|b| (start, b)),
        None => None,
    };
    let Some((start, bar)) = bar else {
        return real_madvise(addr, len, advice);
    };
    if bar > start {
        let r = real_madvise(start as *mut c_void, (bar - start) as size_t, advice);
        // An error of the walk before the BAR is its answer; a hole there
        // (ENOMEM) is answered only at the end, and the BAR comes first.
        if r != 0 && real::errno() != libc::ENOMEM {
            return r;
        }
    }
    real::set_errno(libc::EINVAL);
    -1
}

/// Linux 5.18's `MADV_DONTNEED_LOCKED` (not in every libc crate).
const MADV_DONTNEED_LOCKED: c_int = 24;

/// # Safety
/// As libc's `madvise`.
#[no_mangle]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: size_t, advice: c_int) -> c_int {
    let pass = || madvise_up_to_a_bar(addr, len, advice);
    if !sanitize::ON.load(Ordering::Relaxed) {
        return pass();
    }
    let Some(cause) = madvise_cause(advice) else {
        return pass();
    };
    crate::hook(-1, pass, |pass| {
        let r = pass.call();
        crate::sanitize_after_madvise(addr as u64, len as u64, cause, r);
        r
    })
}

// ---- dlclose: objects unloaded ----------------------------------------------

static NEXT_DLCLOSE: Next = Next::new(c"dlclose");
type DlcloseFn = unsafe extern "C" fn(*mut c_void) -> c_int;

/// # Safety
/// As libc's `dlclose`.
///
/// The call passes on unchanged (`dlclose` does not depend on its caller,
/// unlike `dlopen`, whose search path is its caller's object's: that one is
/// not interposed). Afterwards the count of unloads goes up: the
/// sanitizer's call-site caches are read again before the next capture
/// (an object loaded later at the unloaded one's addresses is then named
/// as itself).
#[no_mangle]
pub unsafe extern "C" fn dlclose(handle: *mut c_void) -> c_int {
    let f = NEXT_DLCLOSE.get();
    if f.is_null() {
        real::set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: `f` is the next `dlclose` (dlsym), whose prototype DlcloseFn
    // is; the handle is the program's, passed on as it gave it.
    let r = unsafe { std::mem::transmute::<*mut c_void, DlcloseFn>(f)(handle) };
    sanitize::UNLOADS.fetch_add(1, Ordering::Release);
    r
}

// ---- free, realloc: glibc's mmapped chunks ---------------------------------

static NEXT_FREE: Next = Next::new(c"free");
static NEXT_REALLOC: Next = Next::new(c"realloc");
static NEXT_REALLOCARRAY: Next = Next::new(c"reallocarray");
type FreeFn = unsafe extern "C" fn(*mut c_void);
type ReallocFn = unsafe extern "C" fn(*mut c_void, size_t) -> *mut c_void;
type ReallocarrayFn = unsafe extern "C" fn(*mut c_void, size_t, size_t) -> *mut c_void;

thread_local! {
    /// This thread is resolving the next `free` (a `free` the loader makes
    /// meanwhile must not resolve it again).
    static RESOLVING: Cell<bool> = const { Cell::new(false) };
}

/// The next definition `next`, resolved with the loader's own frees on
/// this thread kept out (`None`: being resolved on this thread, or none).
fn resolve(next: &Next) -> Option<*mut c_void> {
    if RESOLVING.try_with(|r| r.get()).unwrap_or(false) {
        return None;
    }
    let _ = RESOLVING.try_with(|r| r.set(true));
    let p = next.get();
    let _ = RESOLVING.try_with(|r| r.set(false));
    (!p.is_null()).then_some(p)
}

fn real_free(p: *mut c_void) {
    let f = NEXT_FREE.cached();
    if !f.is_null() {
        // SAFETY: the next `free` (dlsym; FreeFn is its prototype), with the
        // program's pointer.
        return unsafe { std::mem::transmute::<*mut c_void, FreeFn>(f)(p) };
    }
    if let Some(f) = resolve(&NEXT_FREE) {
        // SAFETY: the next `free` (dlsym; FreeFn is its prototype), with the
        // program's pointer.
        unsafe { std::mem::transmute::<*mut c_void, FreeFn>(f)(p) }
    }
    // Else the loader freed while `free` was being resolved: leaked.
}

fn real_realloc(p: *mut c_void, size: size_t) -> *mut c_void {
    let f = NEXT_REALLOC.cached();
    let f = if f.is_null() {
        resolve(&NEXT_REALLOC)
    } else {
        Some(f)
    };
    match f {
        // SAFETY: the next `realloc` (dlsym; ReallocFn is its prototype),
        // with the program's arguments.
        Some(f) => unsafe { std::mem::transmute::<*mut c_void, ReallocFn>(f)(p, size) },
        None => {
            real::set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

/// Is the next `free` glibc's (so that its chunk headers are glibc's)?
/// Asked once, with the sanitizer watching.
fn glibc_heap() -> bool {
    // 0: not asked yet, 1: glibc's, 2: another allocator's, 3: being asked
    // (a free meanwhile, by the loader, is left alone).
    static KNOWN: AtomicU8 = AtomicU8::new(0);
    match KNOWN.compare_exchange(0, 3, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => {}
        Err(known) => return known == 1,
    }
    let glibc = resolve(&NEXT_FREE).is_some_and(real::is_in_libc);
    KNOWN.store(if glibc { 1 } else { 2 }, Ordering::Relaxed);
    glibc
}

/// glibc's chunk header: the size word before a block holds the chunk's
/// size with flag bits 0-2; bit 1 (`IS_MMAPPED`) marks a chunk that is a
/// mapping of its own, whose `prev_size` word (before the size word) is
/// the chunk's offset into that mapping (alignment padding). glibc's
/// `munmap_chunk` unmaps `[chunk - prev_size, + prev_size + size)`.
const IS_MMAPPED: usize = 0x2;
const SIZE_FLAGS: usize = 0x7;

/// The mapping `[start, start + len)` glibc made for the block at `mem`
/// (`None`: a block of the heap or of an arena, or not glibc's).
///
/// # Safety
/// `mem` must be a live block of the next `malloc` (a pointer the program
/// passes to `free`/`realloc`, as their contract requires).
unsafe fn mmapped_block(mem: *mut c_void) -> Option<(u64, u64)> {
    if !glibc_heap() {
        return None;
    }
    let words = mem.cast::<usize>();
    // SAFETY: glibc's size word of a live block, just before it, in the
    // same mapping as the block (this function's contract): the word
    // glibc's free reads first itself.
    let size = unsafe { words.sub(1).read() };
    if size & IS_MMAPPED == 0 {
        return None;
    }
    // SAFETY: an mmapped chunk's header: its `prev_size` word precedes the
    // size word in the same page (glibc aligns the block within the
    // mapping it made), as glibc's munmap_chunk reads it.
    let prev_size = unsafe { words.sub(2).read() };
    let chunk = (mem as u64).checked_sub(16)?;
    let start = chunk.checked_sub(prev_size as u64)?;
    let len = (prev_size as u64).checked_add((size & !SIZE_FLAGS) as u64)?;
    // glibc's own check (mremap_chunk, munmap_chunk): whole pages.
    let page = 4096;
    (start.is_multiple_of(page) && len.is_multiple_of(page) && len > 0).then_some((start, len))
}

/// Is the sanitizer watching the program's frees (one atomic load when
/// it is off)?
fn watching_heap(p: *mut c_void) -> bool {
    sanitize::ON.load(Ordering::Relaxed) && !p.is_null() && crate::watching()
}

/// # Safety
/// As libc's `free`.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if !watching_heap(p) {
        return real_free(p);
    }
    // A block of the heap or an arena (nearly every one) needs nothing
    // more than its header read.
    // SAFETY: `p` is a live block (free's contract).
    let Some((start, len)) = (unsafe { mmapped_block(p) }) else {
        return real_free(p);
    };
    let pass = || real_free(p);
    crate::hook((), pass, |pass| {
        let saved = real::errno();
        pass.call();
        sanitize::going_away(start, len, StaleCause::Munmap);
        real::set_errno(saved);
    })
}

/// # Safety
/// As libc's `realloc`.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: size_t) -> *mut c_void {
    if !watching_heap(p) {
        return real_realloc(p, size);
    }
    // SAFETY: the program's arguments (realloc's contract).
    unsafe { realloc_watched(p, size) }
}

/// `realloc` of a block, watched: glibc remaps a mmapped block
/// (`mremap_chunk`: `mremap` with `MREMAP_MAYMOVE` of its whole pages),
/// and frees it for a size of 0.
///
/// # Safety
/// As libc's `realloc`, `p` not null.
unsafe fn realloc_watched(p: *mut c_void, size: size_t) -> *mut c_void {
    // SAFETY: `p` is a live block (realloc's contract).
    let Some((start, len)) = (unsafe { mmapped_block(p) }) else {
        return real_realloc(p, size);
    };
    let pass = || real_realloc(p, size);
    crate::hook(std::ptr::null_mut(), pass, |pass| {
        let r = pass.call();
        let saved = real::errno();
        let lost = if size == 0 {
            // glibc frees the block and answers null.
            Some((start, len, StaleCause::Munmap))
        } else if r.is_null() {
            None
        } else if r != p {
            Some((start, len, StaleCause::Mremap))
        } else {
            // In place: what is past the new size went.
            // SAFETY: `r` is the live block realloc answered.
            match unsafe { mmapped_block(r) } {
                Some((s, n)) if s == start && n < len => {
                    Some((start + n, len - n, StaleCause::Mremap))
                }
                _ => None,
            }
        };
        if let Some((a, n, cause)) = lost {
            sanitize::going_away(a, n, cause);
        }
        real::set_errno(saved);
        r
    })
}

/// # Safety
/// As glibc's `reallocarray` (which calls glibc's `realloc` inside libc,
/// past this library's).
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: size_t, size: size_t) -> *mut c_void {
    if !watching_heap(p) {
        return match resolve(&NEXT_REALLOCARRAY) {
            // SAFETY: the next `reallocarray` (dlsym; ReallocarrayFn is its
            // prototype), with the program's arguments.
            Some(f) => unsafe { std::mem::transmute::<*mut c_void, ReallocarrayFn>(f)(p, n, size) },
            None => {
                real::set_errno(libc::ENOMEM);
                std::ptr::null_mut()
            }
        };
    }
    // glibc's reallocarray: ENOMEM on overflow, else realloc.
    let Some(bytes) = n.checked_mul(size) else {
        real::set_errno(libc::ENOMEM);
        return std::ptr::null_mut();
    };
    // SAFETY: the program's arguments (reallocarray's contract).
    unsafe { realloc_watched(p, bytes) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;
    /// Past glibc's largest dynamic mmap threshold (32 MiB on 64-bit):
    /// always a mapping of its own, whatever earlier frees did.
    const HUGE: usize = 40 << 20;

    /// Is every page of `[start, start + len)` mapped?
    fn mapped(start: u64, len: u64) -> bool {
        crate::real::resident(start as *const u8, len as usize).is_some()
    }

    /// A block from `alloc` (a fresh large allocation each call) that glibc
    /// mmapped, its chunk's `IS_MMAPPED` bit confirmed: glibc serves a
    /// request past its mmap threshold from an arena's top when the top
    /// is that large already (earlier frees left it untrimmed), and such
    /// a block is no mapping of its own (checked too). It is kept while
    /// the next comes from the smaller top; at most 64 MiB (glibc's trim
    /// threshold's ceiling) is served so, so the third request is mapped.
    fn mmapped(alloc: impl Fn() -> *mut c_void) -> *mut c_void {
        let mut from_arena = Vec::new();
        for _ in 0..3 {
            // Opaque to the optimizer: a word before what `malloc` returned
            // is outside the allocation as the compiler sees it.
            let p = std::hint::black_box(alloc());
            assert!(!p.is_null());
            // SAFETY: the size word of a live block of glibc's malloc,
            // just before it (as glibc's free reads it).
            let size = unsafe { p.cast::<usize>().sub(1).read() };
            if size & IS_MMAPPED != 0 {
                from_arena.into_iter().for_each(release);
                return p;
            }
            // SAFETY: a live block of the program's malloc.
            assert_eq!(unsafe { mmapped_block(p) }, None);
            from_arena.push(p);
        }
        panic!("three {HUGE}-byte blocks from an arena's top");
    }

    /// A block aligned to `align`, from posix_memalign (`None`: refused).
    fn aligned(align: usize, size: usize) -> Option<*mut c_void> {
        let mut p = std::ptr::null_mut();
        // SAFETY: posix_memalign writes the block's address into `p`.
        (unsafe { libc::posix_memalign(&mut p, align, size) } == 0).then_some(p)
    }

    fn release(p: *mut c_void) {
        // SAFETY: a live block of the program's malloc, freed once.
        unsafe { libc::free(p) }
    }

    /// A heap block (main arena or another thread's) is no mapping of its
    /// own; a large `malloc` is, starting 16 bytes (its header) before the
    /// block, as long as glibc's chunk of it rounded up to whole pages
    /// (request plus the 8-byte size word, in 16-byte steps, plus the
    /// size word of the mapping's end).
    #[test]
    fn heap_blocks_are_none_and_a_large_malloc_is_its_mapping() {
        for size in [1usize, 100, 4000, 100_000] {
            // SAFETY: malloc has no preconditions.
            let p = unsafe { libc::malloc(size) };
            // SAFETY: a live block of the program's malloc.
            assert_eq!(unsafe { mmapped_block(p) }, None, "{size}");
            release(p);
        }
        let other = std::thread::spawn(|| {
            // SAFETY: malloc has no preconditions.
            let p = unsafe { libc::malloc(200) };
            // SAFETY: a live block of this thread's arena.
            let r = unsafe { mmapped_block(p) };
            release(p);
            r
        });
        assert_eq!(other.join().unwrap(), None);
        // SAFETY: malloc has no preconditions.
        let p = mmapped(|| unsafe { libc::malloc(HUGE) });
        // SAFETY: a live block of the program's malloc.
        let (start, len) = unsafe { mmapped_block(p) }.expect("an mmapped chunk");
        assert_eq!(start, p as u64 - 16);
        let chunk = (HUGE as u64 + 8).div_ceil(16) * 16;
        assert_eq!(len, (chunk + 8).div_ceil(PAGE) * PAGE);
        assert!(mapped(start, len));
        release(p);
    }

    /// A block with a larger alignment than malloc's lies inside its
    /// mapping at an offset (the chunk's `prev_size`): the mapping found
    /// starts at the page glibc mapped, not at the block's header.
    #[test]
    fn an_aligned_block_is_found_at_its_chunk_offset() {
        for align in [32usize, PAGE as usize, 64 << 10, 1 << 21] {
            let p = mmapped(|| aligned(align, HUGE).expect("posix_memalign"));
            assert_eq!(p as usize % align, 0);
            // SAFETY: a live block of the program's malloc.
            let (start, len) = unsafe { mmapped_block(p) }.expect("an mmapped chunk");
            assert_eq!(start % PAGE, 0, "{align}");
            assert_eq!(len % PAGE, 0, "{align}");
            assert!(p as u64 + HUGE as u64 <= start + len, "{align}");
            assert!(mapped(start, len), "{align}");
            if align == PAGE as usize {
                // Its header is 16 bytes before a page boundary: the
                // mapping starts a page before the block.
                assert_eq!(start, p as u64 - PAGE);
            }
            // glibc pads every alignment past its own 16 bytes: the
            // block never sits right after the mapping's first header.
            assert!(start + 16 < p as u64, "{align}");
            release(p);
        }
        // memalign: the same chunks.
        // SAFETY: memalign has no preconditions beyond a power-of-two
        // alignment.
        let p = mmapped(|| unsafe { libc::memalign(PAGE as usize, HUGE) });
        // SAFETY: a live block of the program's malloc.
        let (start, _) = unsafe { mmapped_block(p) }.expect("an mmapped chunk");
        assert_eq!(start, p as u64 - PAGE);
        release(p);
    }
}
