//! Memory-mapped BARs in preload mode: `mmap` of a device file, the calls
//! that change such a mapping, and the SIGSEGV handler that performs each
//! load and store on it (docs/MMIO.md).
//!
//! A device mapping is anonymous `PROT_NONE` memory, recorded in [`MAPS`]
//! with the program's protection; every access to it faults. The library's
//! `SA_SIGINFO | SA_ONSTACK` SIGSEGV handler, installed at the first device
//! mapping, looks the fault address up; on a device mapping it fills
//! [`Registers`] from the `ucontext` (general registers, and the vector
//! registers from the FXSAVE/XSAVE area behind `uc_mcontext.fpregs`),
//! performs the instruction on the device model
//! (`softvfio::barmap::resolve_fault`), writes the registers back into the
//! `ucontext` and returns: `sigreturn` resumes after the instruction.
//! Every other fault is the program's: `sigaction`/`signal` for SIGSEGV are
//! recorded here instead of installed (the library's handler stays), and
//! the recorded action runs (handler called with the same arguments,
//! honouring `SA_SIGINFO`, `SA_RESETHAND`, `SA_NODEFER` and its mask;
//! `SIG_DFL`/`SIG_IGN`: the default action is restored and the fault
//! repeats, which kills the program as without softvfio).
//!
//! Refusals are the kernel's: an access the protection forbids is the
//! program's SIGSEGV; a page vfio-pci does not serve (memory decoding off,
//! low power) is a SIGBUS (`BUS_ADRERR`, `si_addr`) to the program's SIGBUS
//! action. An instruction the emulator cannot perform is reported on
//! stderr and the process is killed (SIGKILL), never continued with a wrong
//! value.
//!
//! # Locks and signal safety
//! - [`MAPS`] is taken by the hooks around the real `mmap`/`munmap`/
//!   `mremap`/`mprotect` (so a fault on another thread sees the table and
//!   the address space agree) and by the handler around the whole
//!   emulation (which also makes locked read-modify-writes atomic between
//!   threads). No code holds it together with the session lock.
//! - A fault on a thread that is inside the library (its "inside" flag is
//!   set: the fault is a bug of the library, or a program signal handler
//!   that interrupted the library touched a BAR) must not wait for a lock
//!   that thread may hold: the handler only *tries* [`MAPS`]; a fault that
//!   is not on a device mapping is chained as usual, and a device access in
//!   that situation is reported and the process killed (serving it could
//!   deadlock on the device model's lock). Outside the library, the
//!   faulting thread holds none of the library's locks (a fault is
//!   synchronous with the program's own instruction), so blocking is safe.
//! - After `softvfio_mmio::warm_up` (at installation) a successful
//!   emulation does not allocate; device models may allocate when they
//!   raise an interrupt (a fault from a program signal handler that
//!   interrupted `malloc` could then deadlock in `malloc`, as any
//!   non-async-signal-safe handler would).
//!
//! All `unsafe` of this feature is here, each with its `SAFETY:` comment.

use std::ffi::{c_int, c_void};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use libc::{off_t, siginfo_t, size_t};
use softvfio::barmap::{resolve_fault, BarMappings, FaultOutcome};
use softvfio_mmio::{ProgramMemory, Registers};

use crate::state::with_state;

/// The device mappings of this process.
static MAPS: Mutex<BarMappings> = Mutex::new(BarMappings::new());
/// Mappings recorded (read without the lock: calls on other ranges skip
/// the table while it is empty).
static MAPPED: AtomicUsize = AtomicUsize::new(0);
/// Device files a mapping holds open (one session reference each).
static HELD: Mutex<Vec<u64>> = Mutex::new(Vec::new());
/// The library's SIGSEGV handler is installed.
static INSTALLED: AtomicBool = AtomicBool::new(false);
static INSTALLING: Mutex<()> = Mutex::new(());

/// The program's SIGSEGV action, as its `sigaction`/`signal` set it. Fields
/// are separate atomics: the handler reads them without a lock.
struct ProgramAction {
    handler: AtomicUsize,
    flags: AtomicI32,
    mask: [AtomicU64; 16],
}

static PROGRAM: ProgramAction = ProgramAction {
    handler: AtomicUsize::new(libc::SIG_DFL),
    flags: AtomicI32::new(0),
    mask: [const { AtomicU64::new(0) }; 16],
};

const PAGE: u64 = 4096;
/// `arch_prctl` codes (asm/prctl.h).
const ARCH_GET_FS: c_int = 0x1003;
const ARCH_GET_GS: c_int = 0x1004;
const MAP_TYPE: c_int = 0x0f;
/// `FP_XSTATE_MAGIC1`: an XSAVE area follows the FXSAVE part of the frame.
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;

fn page_up(len: u64) -> u64 {
    len.div_ceil(PAGE) * PAGE
}

fn lock_maps() -> MutexGuard<'static, BarMappings> {
    MAPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// This process's memory as the engine pins it, told which ranges are
/// device mappings (MAP_DMA of a BAR mapping, peer to peer). The engine
/// asks while holding the session lock; [`MAPS`] is never held while
/// waiting for that lock, so the order session → table is safe.
pub(crate) fn with_device_ranges(
    mem: softvfio::memory::host::HostMemory,
) -> softvfio::memory::host::HostMemory {
    mem.set_device_ranges(std::sync::Arc::new(|vaddr, len| {
        if MAPPED.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        lock_maps().device_ranges(vaddr, len)
    }));
    mem
}

/// The first address of `[start, end)` in a device mapping of this
/// process (`madvise`, whose walk Linux stops at a BAR: the answer, and the
/// sanitizer's model of what went).
pub(crate) fn first_device_address(start: u64, end: u64) -> Option<u64> {
    if MAPPED.load(Ordering::Acquire) == 0 || end <= start {
        return None;
    }
    lock_maps()
        .device_ranges(start, end - start)
        .first()
        .map(|r| r.start)
}

// ---- the next definitions ----------------------------------------------

static NEXT_MMAP: crate::real::Next = crate::real::Next::new(c"mmap");
static NEXT_MUNMAP: crate::real::Next = crate::real::Next::new(c"munmap");
static NEXT_MREMAP: crate::real::Next = crate::real::Next::new(c"mremap");
static NEXT_MPROTECT: crate::real::Next = crate::real::Next::new(c"mprotect");
static NEXT_SIGACTION: crate::real::Next = crate::real::Next::new(c"sigaction");
static NEXT_SIGNAL: crate::real::Next = crate::real::Next::new(c"signal");

type MmapFn = unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void;
type MunmapFn = unsafe extern "C" fn(*mut c_void, size_t) -> c_int;
type MremapFn = unsafe extern "C" fn(*mut c_void, size_t, size_t, c_int, ...) -> *mut c_void;
type MprotectFn = unsafe extern "C" fn(*mut c_void, size_t, c_int) -> c_int;
type SigactionFn =
    unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;
type SignalFn = unsafe extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;

/// The next definition of `name` as a function of type `F`.
///
/// # Safety
/// `F` must be the C prototype of the libc function `next` names.
unsafe fn next_fn<F: Copy>(next: &crate::real::Next) -> Option<F> {
    let p = next.get();
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` is the address of that function (dlsym) and `F` its
    // prototype (this function's contract); function pointers and data
    // pointers have the same size here.
    Some(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
}

fn enosys_ptr() -> *mut c_void {
    crate::real::set_errno(libc::ENOSYS);
    libc::MAP_FAILED
}

fn real_mmap(addr: u64, len: u64, prot: c_int, flags: c_int, fd: c_int, off: off_t) -> *mut c_void {
    // SAFETY: MmapFn is mmap's prototype.
    match unsafe { next_fn::<MmapFn>(&NEXT_MMAP) } {
        // SAFETY: mmap takes any addresses and lengths and fails cleanly on
        // bad ones; a mapping it makes creates no Rust reference.
        Some(f) => unsafe { f(addr as *mut c_void, len as size_t, prot, flags, fd, off) },
        None => enosys_ptr(),
    }
}

fn real_munmap(addr: u64, len: u64) -> c_int {
    // SAFETY: MunmapFn is munmap's prototype.
    match unsafe { next_fn::<MunmapFn>(&NEXT_MUNMAP) } {
        // SAFETY: the program's own munmap, with its arguments: whatever it
        // unmaps is the program's to unmap; the library holds no reference
        // into program mappings.
        Some(f) => unsafe { f(addr as *mut c_void, len as size_t) },
        None => -1,
    }
}

fn real_mremap(old: u64, old_len: u64, new_len: u64, flags: c_int, new: u64) -> *mut c_void {
    // SAFETY: MremapFn is mremap's prototype.
    match unsafe { next_fn::<MremapFn>(&NEXT_MREMAP) } {
        // SAFETY: the program's mremap with its arguments (as for munmap).
        Some(f) => unsafe {
            f(
                old as *mut c_void,
                old_len as size_t,
                new_len as size_t,
                flags,
                new as *mut c_void,
            )
        },
        None => enosys_ptr(),
    }
}

fn real_mprotect(addr: u64, len: u64, prot: c_int) -> c_int {
    // SAFETY: MprotectFn is mprotect's prototype.
    match unsafe { next_fn::<MprotectFn>(&NEXT_MPROTECT) } {
        // SAFETY: the program's mprotect, or PROT_NONE on our own device
        // mappings (never memory this library uses).
        Some(f) => unsafe { f(addr as *mut c_void, len as size_t, prot) },
        None => -1,
    }
}

/// # Safety
/// `act` and `old` null or valid `struct sigaction`s.
unsafe fn real_sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    // SAFETY: SigactionFn is sigaction's prototype.
    match unsafe { next_fn::<SigactionFn>(&NEXT_SIGACTION) } {
        // SAFETY: pointers as this function's contract says.
        Some(f) => unsafe { f(sig, act, old) },
        None => -1,
    }
}

// ---- the recorded program action ---------------------------------------

fn record(act: &libc::sigaction) {
    PROGRAM.handler.store(act.sa_sigaction, Ordering::Release);
    PROGRAM.flags.store(act.sa_flags, Ordering::Release);
    // SAFETY: sigset_t is 128 bytes of plain integers; read as 16 u64s.
    let words: [u64; 16] = unsafe { std::mem::transmute_copy(&act.sa_mask) };
    for (slot, w) in PROGRAM.mask.iter().zip(words) {
        slot.store(w, Ordering::Release);
    }
}

fn recorded() -> libc::sigaction {
    // SAFETY: an all-zero sigaction is valid (SIG_DFL, no flags, empty mask).
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = PROGRAM.handler.load(Ordering::Acquire);
    act.sa_flags = PROGRAM.flags.load(Ordering::Acquire);
    let mut words = [0u64; 16];
    for (w, slot) in words.iter_mut().zip(PROGRAM.mask.iter()) {
        *w = slot.load(Ordering::Acquire);
    }
    // SAFETY: 16 u64s are the 128 bytes of a sigset_t.
    act.sa_mask = unsafe { std::mem::transmute_copy(&words) };
    act
}

/// Installs the library's SIGSEGV handler (once), recording the program's
/// current action first.
fn install() {
    if INSTALLED.load(Ordering::Acquire) {
        return;
    }
    let _g = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if INSTALLED.load(Ordering::Acquire) {
        return;
    }
    softvfio_mmio::warm_up();
    // SAFETY: zeroed sigactions are valid; both are live locals.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a query into a live local.
    if unsafe { real_sigaction(libc::SIGSEGV, std::ptr::null(), &mut old) } == 0 {
        record(&old);
    }
    // SAFETY: as above.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigsegv as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    // SAFETY: installs our handler, an extern "C" fn with the SA_SIGINFO
    // prototype that stays loaded (this library is never unloaded).
    if unsafe { real_sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()) } == 0 {
        INSTALLED.store(true, Ordering::Release);
    }
}

// ---- hooks -----------------------------------------------------------

/// Releases the session references of device files no longer mapped.
fn release_unmapped() {
    let gone: Vec<u64> = {
        let maps = lock_maps();
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        let (gone, kept): (Vec<u64>, Vec<u64>) = held.iter().partition(|k| !maps.holds(**k));
        *held = kept;
        gone
    };
    for key in gone {
        if crate::forward::attached() {
            crate::forward::unhold(key);
        } else {
            let _ = with_state(|st| st.unhold(key));
        }
    }
}

/// After the hand-off to the keeper: every BAR mapping reaches the keeper's
/// device model (the program's copy is stale from now on).
pub(crate) fn to_keeper() {
    let mut maps = lock_maps();
    if maps.is_empty() {
        return;
    }
    let old: Vec<softvfio::barmap::BarMapping> = maps.iter().cloned().collect();
    let mut proxies: Vec<(u64, std::sync::Arc<dyn softvfio::device::VfioDeviceModel>)> = Vec::new();
    let mut new = BarMappings::new();
    for mut m in old {
        let file = m.target.file;
        let proxy = match proxies.iter().find(|(f, _)| *f == file) {
            Some((_, p)) => p.clone(),
            None => {
                let p: std::sync::Arc<dyn softvfio::device::VfioDeviceModel> =
                    std::sync::Arc::new(crate::forward::KeeperModel {
                        file,
                        name: m.target.model.name().to_string(),
                    });
                proxies.push((file, p.clone()));
                p
            }
        };
        m.target.model = proxy;
        new.insert(m.start, m.len, m.target, m.prot);
    }
    *maps = new;
}

fn fail_ptr(e: c_int) -> *mut c_void {
    let e = if e == crate::state::HANDED_OFF {
        libc::EAGAIN
    } else {
        e
    };
    crate::real::set_errno(e);
    libc::MAP_FAILED
}

/// `mmap` of our device file `key`.
fn map_device(key: u64, addr: u64, len: u64, prot: c_int, flags: c_int, off: off_t) -> *mut c_void {
    if len == 0 || off < 0 || !(off as u64).is_multiple_of(PAGE) {
        return fail_ptr(libc::EINVAL);
    }
    let shared = matches!(flags & MAP_TYPE, libc::MAP_SHARED | 3);
    let target = if crate::forward::attached() {
        match crate::forward::mmap(key, off as u64, len, shared) {
            Ok(t) => t,
            Err(e) => return fail_ptr(e),
        }
    } else {
        match with_state(|st| st.mmap(key, off as u64, len, shared)) {
            Ok(Ok(t)) => t,
            Ok(Err(e)) | Err(e) => return fail_ptr(e),
        }
    };
    install();
    let anon = (flags & !MAP_TYPE & !libc::MAP_POPULATE & !libc::MAP_LOCKED)
        | libc::MAP_PRIVATE
        | libc::MAP_ANONYMOUS
        | libc::MAP_NORESERVE;
    let r = {
        let mut maps = lock_maps();
        let r = real_mmap(addr, len, libc::PROT_NONE, anon, -1, 0);
        if r != libc::MAP_FAILED {
            maps.insert(r as u64, page_up(len), target, prot);
            MAPPED.store(maps.iter().count(), Ordering::Release);
        }
        r
    };
    if r != libc::MAP_FAILED {
        let e = crate::real::errno();
        let new = {
            let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
            let new = !held.contains(&key);
            if new {
                held.push(key);
            }
            new
        };
        if new && crate::forward::attached() {
            crate::forward::hold(key);
        } else if new {
            let _ = with_state(|st| st.hold(key));
        }
        release_unmapped();
        crate::real::set_errno(e);
    }
    r
}

/// Runs `call` (a real memory call) with the table locked, then `update`
/// with its result, then releases unmapped files.
fn changing<R>(call: impl FnOnce() -> R, update: impl FnOnce(&mut BarMappings, &R)) -> R {
    let r = {
        let mut maps = lock_maps();
        let r = call();
        let e = crate::real::errno();
        update(&mut maps, &r);
        MAPPED.store(maps.iter().count(), Ordering::Release);
        crate::real::set_errno(e);
        r
    };
    let e = crate::real::errno();
    release_unmapped();
    crate::real::set_errno(e);
    r
}

fn mmap_hook(addr: u64, len: u64, prot: c_int, flags: c_int, fd: c_int, off: off_t) -> *mut c_void {
    let pass = || real_mmap(addr, len, prot, flags, fd, off);
    crate::hook(libc::MAP_FAILED, pass, |pass| {
        let r = mmap_body(pass, addr, len, prot, flags, fd, off);
        crate::sanitize_after_mmap(addr, len, flags, r);
        r
    })
}

fn mmap_body<F: FnOnce() -> *mut c_void>(
    pass: crate::Pass<F>,
    addr: u64,
    len: u64,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    {
        if flags & libc::MAP_ANONYMOUS == 0 {
            if let Some(key) = crate::ours(fd) {
                return map_device(key, addr, len, prot, flags, off);
            }
        }
        let fixed = flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) != 0;
        if !fixed || MAPPED.load(Ordering::Acquire) == 0 {
            return pass.call();
        }
        changing(
            || pass.call(),
            |maps, r| {
                if *r != libc::MAP_FAILED {
                    maps.unmap(*r as u64, page_up(len));
                }
            },
        )
    }
}

/// # Safety
/// As libc's `mmap`.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    mmap_hook(addr as u64, len as u64, prot, flags, fd, off)
}

/// # Safety
/// As libc's `mmap64` (the same function on 64-bit Linux).
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    mmap_hook(addr as u64, len as u64, prot, flags, fd, off)
}

/// # Safety
/// As libc's `munmap`.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: size_t) -> c_int {
    let (addr, len) = (addr as u64, len as u64);
    let pass = || real_munmap(addr, len);
    crate::hook(-1, pass, |pass| {
        let r = (move || {
            if MAPPED.load(Ordering::Acquire) == 0 {
                return pass.call();
            }
            changing(
                || pass.call(),
                |maps, r| {
                    if *r == 0 {
                        maps.unmap(addr, page_up(len));
                    }
                },
            )
        })();
        crate::sanitize_after_munmap(addr, len, r);
        r
    })
}

/// `mremap`; the fifth argument (`new_address`, only with `MREMAP_FIXED`)
/// is read as a plain argument, as variadic integer arguments travel in
/// the same registers as named ones on x86-64.
///
/// # Safety
/// As libc's `mremap`.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: size_t,
    new_len: size_t,
    flags: c_int,
    new: *mut c_void,
) -> *mut c_void {
    let (old, old_len, new_len, new) = (old as u64, old_len as u64, new_len as u64, new as u64);
    let pass = || real_mremap(old, old_len, new_len, flags, new);
    crate::hook(libc::MAP_FAILED, pass, |pass| {
        let r = (move || {
            if MAPPED.load(Ordering::Acquire) == 0 {
                return pass.call();
            }
            let ours = lock_maps().overlaps(old, page_up(old_len).max(PAGE));
            // vfio-pci mappings cannot grow (VM_DONTEXPAND | VM_PFNMAP).
            if ours && page_up(new_len) > page_up(old_len) {
                return fail_ptr(libc::EFAULT);
            }
            changing(
                || pass.call(),
                |maps, r| {
                    if *r != libc::MAP_FAILED {
                        if ours {
                            maps.remap(old, page_up(old_len), *r as u64, page_up(new_len));
                        } else {
                            maps.unmap(*r as u64, page_up(new_len));
                        }
                    }
                },
            )
        })();
        crate::sanitize_after_mremap(old, old_len, new_len, r);
        r
    })
}

/// # Safety
/// As libc's `mprotect`.
#[no_mangle]
pub unsafe extern "C" fn mprotect(addr: *mut c_void, len: size_t, prot: c_int) -> c_int {
    let (addr, len) = (addr as u64, len as u64);
    let pass = || real_mprotect(addr, len, prot);
    crate::hook(-1, pass, |pass| {
        if MAPPED.load(Ordering::Acquire) == 0 || !lock_maps().overlaps(addr, page_up(len)) {
            return pass.call();
        }
        changing(
            || pass.call(),
            |maps, r| {
                if *r != 0 {
                    return;
                }
                let end = addr + page_up(len);
                let pieces: Vec<(u64, u64)> = maps
                    .iter()
                    .filter(|m| m.start < end && m.start + m.len > addr)
                    .map(|m| (m.start.max(addr), (m.start + m.len).min(end)))
                    .collect();
                // The device pages stay inaccessible: every access faults.
                for (s, e) in pieces {
                    real_mprotect(s, e - s, libc::PROT_NONE);
                }
                maps.protect(addr, page_up(len), prot);
            },
        )
    })
}

/// # Safety
/// As libc's `sigaction`.
#[no_mangle]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    // SAFETY: the program's arguments, passed on unchanged.
    let pass = || unsafe { real_sigaction(sig, act, old) };
    crate::hook(-1, pass, |pass| {
        if sig != libc::SIGSEGV || !INSTALLED.load(Ordering::Acquire) {
            return pass.call();
        }
        // The library's handler stays; the program's action is recorded.
        let before = recorded();
        if !act.is_null() {
            // SAFETY: a non-null `act` points to the program's sigaction.
            record(unsafe { &*act });
        }
        if !old.is_null() {
            // SAFETY: a non-null `old` points to a writable sigaction.
            unsafe { old.write(before) };
        }
        0
    })
}

/// # Safety
/// As libc's `signal`.
#[no_mangle]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    let pass = || {
        // SAFETY: SignalFn is signal's prototype.
        match unsafe { next_fn::<SignalFn>(&NEXT_SIGNAL) } {
            // SAFETY: the program's arguments, passed on unchanged.
            Some(f) => unsafe { f(sig, handler) },
            None => libc::SIG_ERR,
        }
    };
    crate::hook(libc::SIG_ERR, pass, |pass| {
        if sig != libc::SIGSEGV || !INSTALLED.load(Ordering::Acquire) {
            return pass.call();
        }
        let before = recorded().sa_sigaction;
        // glibc's signal(): BSD semantics, restarting, the signal blocked.
        // SAFETY: a zeroed sigaction is valid.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = handler;
        act.sa_flags = libc::SA_RESTART;
        // SAFETY: `act.sa_mask` is a live sigset_t.
        unsafe {
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaddset(&mut act.sa_mask, sig);
        }
        record(&act);
        before
    })
}

// ---- the handler -------------------------------------------------------

/// This process's memory, read and written with `process_vm_readv/writev`
/// so that an inaccessible address is an error, not a fault in the handler.
struct OwnMemory;

fn own_vm(addr: u64, buf: *mut c_void, len: usize, write: bool) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let local = libc::iovec {
        iov_base: buf,
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut c_void,
        iov_len: len,
    };
    // SAFETY: `local` is a buffer of ours of `len` bytes (the caller's
    // slice); the remote side is checked by the kernel, which fails with
    // EFAULT instead of faulting.
    let r = unsafe {
        if write {
            libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0)
        } else {
            libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0)
        }
    };
    if r == len as isize {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(libc::EFAULT))
    }
}

/// Reads `data.len()` bytes at `addr` of this process's memory; EFAULT (an
/// error) where it is not readable.
pub(crate) fn read_own(addr: u64, data: &mut [u8]) -> std::io::Result<()> {
    own_vm(addr, data.as_mut_ptr().cast(), data.len(), false)
}

/// Writes `data` at `addr` of this process's memory; EFAULT (an error)
/// where it is not writable.
pub(crate) fn write_own(addr: u64, data: &[u8]) -> std::io::Result<()> {
    own_vm(addr, data.as_ptr() as *mut c_void, data.len(), true)
}

impl ProgramMemory for OwnMemory {
    fn read(&mut self, addr: u64, data: &mut [u8]) -> std::io::Result<()> {
        own_vm(addr, data.as_mut_ptr().cast(), data.len(), false)
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> std::io::Result<()> {
        own_vm(addr, data.as_ptr() as *mut c_void, data.len(), true)
    }
}

/// The fault's instruction bytes: up to 15 at `rip`, fewer at the end of
/// the code's mapping.
fn read_code(rip: u64, code: &mut [u8; 15]) -> usize {
    let first = (PAGE - (rip % PAGE)).min(15) as usize;
    // SAFETY: the page holding RIP is mapped and executable: the CPU just
    // fetched the faulting instruction from it, and executable pages are
    // readable on x86-64 (no execute-only mappings without protection
    // keys, which this library does not support); `first` bytes stay
    // within that page.
    unsafe { std::ptr::copy_nonoverlapping(rip as *const u8, code.as_mut_ptr(), first) };
    if first < 15
        && OwnMemory
            .read(rip + first as u64, &mut code[first..])
            .is_ok()
    {
        return 15;
    }
    first
}

/// Does the instruction use an FS or GS segment override?
fn segment_prefix(code: &[u8]) -> bool {
    code.iter()
        .take_while(|b| {
            matches!(
                b,
                0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x40
                    ..=0x4f
            )
        })
        .any(|b| matches!(b, 0x64 | 0x65))
}

fn arch_prctl_get(code: c_int) -> u64 {
    let mut v: u64 = 0;
    // SAFETY: ARCH_GET_FS/GS write one u64 to the address given, a live local.
    unsafe { libc::syscall(libc::SYS_arch_prctl, code, &mut v as *mut u64) };
    v
}

/// `gregs` indexes of the general registers in encoding order.
const GREGS: [usize; 16] = [
    libc::REG_RAX as usize,
    libc::REG_RCX as usize,
    libc::REG_RDX as usize,
    libc::REG_RBX as usize,
    libc::REG_RSP as usize,
    libc::REG_RBP as usize,
    libc::REG_RSI as usize,
    libc::REG_RDI as usize,
    libc::REG_R8 as usize,
    libc::REG_R9 as usize,
    libc::REG_R10 as usize,
    libc::REG_R11 as usize,
    libc::REG_R12 as usize,
    libc::REG_R13 as usize,
    libc::REG_R14 as usize,
    libc::REG_R15 as usize,
];

/// The FP state of the signal frame as bytes: the FXSAVE part, and the
/// XSAVE area when the kernel put one there (`FP_XSTATE_MAGIC1`).
///
/// # Safety
/// `uc` is the ucontext the kernel passed to the running SIGSEGV handler.
unsafe fn fp_area<'a>(uc: *mut libc::ucontext_t) -> Option<&'a mut [u8]> {
    // SAFETY: the kernel's ucontext (contract).
    let fp = unsafe { (*uc).uc_mcontext.fpregs } as *mut u8;
    if fp.is_null() {
        return None;
    }
    // SAFETY: the FXSAVE part is 512 bytes; the software-reserved words at
    // 464 say whether an XSAVE area of `xstate_size` bytes follows.
    let (magic, size) = unsafe {
        (
            (fp.add(464) as *const u32).read_unaligned(),
            (fp.add(464 + 16) as *const u32).read_unaligned(),
        )
    };
    let len = if magic == FP_XSTATE_MAGIC1 && size as usize >= 512 {
        size as usize
    } else {
        512
    };
    // SAFETY: the kernel laid out `len` bytes of FP state in the frame,
    // which nothing else references while the handler runs.
    Some(unsafe { std::slice::from_raw_parts_mut(fp, len) })
}

/// What the handler does with a fault.
enum Action {
    /// Performed; return.
    Done,
    /// The program's fault: its SIGSEGV action, with this siginfo (code,
    /// address) when it differs from the kernel's.
    Chain(Option<(c_int, u64)>),
    /// A SIGBUS for this address to the program's SIGBUS action.
    Bus(u64),
    /// Stop the program.
    Fatal,
}

/// A report on stderr without allocating.
struct Report {
    buf: [u8; 1024],
    len: usize,
}

impl std::fmt::Write for Report {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

fn fatal(what: &dyn std::fmt::Display) {
    let mut r = Report {
        buf: [0; 1024],
        len: 0,
    };
    let _ = writeln!(r, "softvfio: {what}; stopping the program (SIGKILL)");
    // SAFETY: writes our own buffer to stderr.
    unsafe { libc::write(2, r.buf.as_ptr().cast(), r.len) };
}

/// The handler proper (see the module documentation).
///
/// # Safety
/// `info` and `ctx` are what the kernel passed to the SIGSEGV handler.
unsafe fn handle(info: *mut siginfo_t, ctx: *mut c_void) -> Action {
    // SAFETY: the kernel's siginfo (contract).
    let (code, address) = unsafe { ((*info).si_code, (*info).si_addr() as u64) };
    if code <= 0 || MAPPED.load(Ordering::Acquire) == 0 {
        return Action::Chain(None);
    }
    let inside = crate::Inside::is_set();
    let maps = if inside {
        match MAPS.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Action::Chain(None),
        }
    } else {
        lock_maps()
    };
    if maps.lookup(address).is_none() {
        return Action::Chain(None);
    }
    if inside {
        fatal(&format_args!(
            "a load or store on a device mapping at {address:#x} from code that interrupted softvfio itself cannot be served"
        ));
        return Action::Fatal;
    }
    let uc = ctx as *mut libc::ucontext_t;
    let mut regs = Registers::default();
    // SAFETY: the kernel's ucontext (contract); gregs are plain integers.
    let gregs = unsafe { &mut (*uc).uc_mcontext.gregs };
    for (i, g) in GREGS.iter().enumerate() {
        regs.gpr[i] = gregs[*g] as u64;
    }
    regs.rip = gregs[libc::REG_RIP as usize] as u64;
    regs.rflags = gregs[libc::REG_EFL as usize] as u64;
    let mut code_bytes = [0u8; 15];
    let n = read_code(regs.rip, &mut code_bytes);
    let code_bytes = &code_bytes[..n];
    if segment_prefix(code_bytes) {
        regs.fs_base = arch_prctl_get(ARCH_GET_FS);
        regs.gs_base = arch_prctl_get(ARCH_GET_GS);
    }
    // SAFETY: the kernel's ucontext (contract).
    let fp = unsafe { fp_area(uc) };
    if let Some(area) = fp.as_deref() {
        softvfio_mmio::xsave::load(area, &mut regs);
    }
    let outcome = resolve_fault(&maps, code_bytes, address, &mut regs, &mut OwnMemory);
    drop(maps);
    match outcome {
        FaultOutcome::Done { vector_written } => {
            for (i, g) in GREGS.iter().enumerate() {
                gregs[*g] = regs.gpr[i] as i64;
            }
            gregs[libc::REG_RIP as usize] = regs.rip as i64;
            gregs[libc::REG_EFL as usize] = regs.rflags as i64;
            if vector_written {
                match fp {
                    Some(area) => softvfio_mmio::xsave::store(&regs, area),
                    None => {
                        fatal(&format_args!(
                            "no FP state in the signal frame to write an MMIO load at {address:#x} into"
                        ));
                        return Action::Fatal;
                    }
                }
            }
            Action::Done
        }
        FaultOutcome::NotOurs => Action::Chain(None),
        FaultOutcome::Signal {
            signo: libc::SIGBUS,
            address,
            ..
        } => Action::Bus(address),
        FaultOutcome::Signal {
            code: c,
            address: a,
            ..
        } => Action::Chain((a != address).then_some((c, a))),
        FaultOutcome::Fatal(e) => {
            fatal(&e);
            Action::Fatal
        }
    }
}

/// Runs action `act` for signal `sig` as the kernel would have: the
/// handler with its mask, or the default action.
///
/// # Safety
/// `info` and `ctx` are valid for the handler (the kernel's, or a
/// siginfo built here).
unsafe fn run_action(sig: c_int, act: &libc::sigaction, info: *mut siginfo_t, ctx: *mut c_void) {
    match act.sa_sigaction {
        libc::SIG_IGN if sig == libc::SIGSEGV && !kernel_sent(info) => {}
        libc::SIG_DFL | libc::SIG_IGN => {
            // SAFETY: a zeroed sigaction is SIG_DFL.
            let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: installs the default action (a local, valid).
            unsafe { real_sigaction(sig, &dfl, std::ptr::null_mut()) };
            if sig == libc::SIGSEGV && kernel_sent(info) {
                // Returning repeats the faulting instruction: the default
                // action then kills, as without softvfio.
                return;
            }
            // SAFETY: plain signal-mask and signal system calls.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, sig);
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    libc::syscall(libc::SYS_gettid),
                    sig,
                );
            }
        }
        h => {
            if act.sa_flags & libc::SA_RESETHAND != 0 {
                if sig == libc::SIGSEGV {
                    // SAFETY: a zeroed sigaction is SIG_DFL.
                    record(&unsafe { std::mem::zeroed() });
                } else {
                    // SAFETY: as in the SIG_DFL case.
                    let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
                    // SAFETY: installs the default action.
                    unsafe { real_sigaction(sig, &dfl, std::ptr::null_mut()) };
                }
            }
            // SAFETY: plain signal-mask system calls on local sets.
            unsafe {
                libc::pthread_sigmask(libc::SIG_BLOCK, &act.sa_mask, std::ptr::null_mut());
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, sig);
                let how = if act.sa_flags & libc::SA_NODEFER != 0 {
                    libc::SIG_UNBLOCK
                } else {
                    libc::SIG_BLOCK
                };
                libc::pthread_sigmask(how, &set, std::ptr::null_mut());
            }
            if act.sa_flags & libc::SA_SIGINFO != 0 {
                type Full = unsafe extern "C" fn(c_int, *mut siginfo_t, *mut c_void);
                // SAFETY: the program installed `h` with SA_SIGINFO, so it
                // has the three-argument prototype.
                let f: Full = unsafe { std::mem::transmute::<usize, Full>(h) };
                // SAFETY: the program's handler, with the arguments the
                // kernel would give it.
                unsafe { f(sig, info, ctx) };
            } else {
                type Plain = unsafe extern "C" fn(c_int);
                // SAFETY: without SA_SIGINFO the handler takes the signal
                // number only.
                let f: Plain = unsafe { std::mem::transmute::<usize, Plain>(h) };
                // SAFETY: the program's handler.
                unsafe { f(sig) };
            }
        }
    }
}

/// Was the signal raised by the kernel (a fault), not sent by a process?
fn kernel_sent(info: *mut siginfo_t) -> bool {
    // SAFETY: a valid siginfo (callers' contract).
    !info.is_null() && unsafe { (*info).si_code } > 0
}

/// A fault siginfo: signal, code, address.
fn fault_info(signo: c_int, code: c_int, address: u64) -> siginfo_t {
    // SAFETY: an all-zero siginfo is valid plain data.
    let mut si: siginfo_t = unsafe { std::mem::zeroed() };
    let p = &mut si as *mut siginfo_t as *mut u8;
    // SAFETY: si_signo at 0, si_errno at 4, si_code at 8, si_addr at 16 of
    // the 128-byte siginfo (x86-64 Linux layout).
    unsafe {
        (p as *mut c_int).write(signo);
        (p.add(8) as *mut c_int).write(code);
        (p.add(16) as *mut u64).write_unaligned(address);
    }
    si
}

/// Device accesses served by the handler, and the nanoseconds spent in it
/// for them (`SOFTVFIO_MMIO_STATS=1` prints them at exit).
static TRAPS: AtomicU64 = AtomicU64::new(0);
static TRAP_NS: AtomicU64 = AtomicU64::new(0);

/// `CLOCK_MONOTONIC` in nanoseconds (the vDSO: no system call, safe in a
/// signal handler).
fn now_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

/// (accesses served, nanoseconds in the handler for them).
pub(crate) fn trap_stats() -> (u64, u64) {
    (
        TRAPS.load(Ordering::Relaxed),
        TRAP_NS.load(Ordering::Relaxed),
    )
}

extern "C" fn on_sigsegv(sig: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
    let saved = crate::real::errno();
    let start = now_ns();
    // SAFETY: the kernel's arguments to this SA_SIGINFO handler.
    let action = unsafe { handle(info, ctx) };
    match action {
        Action::Done => {
            TRAPS.fetch_add(1, Ordering::Relaxed);
            TRAP_NS.fetch_add(now_ns().wrapping_sub(start), Ordering::Relaxed);
        }
        Action::Chain(replace) => {
            let act = recorded();
            match replace {
                // SAFETY: the kernel's arguments.
                None => unsafe { run_action(sig, &act, info, ctx) },
                Some((code, address)) => {
                    let mut si = fault_info(libc::SIGSEGV, code, address);
                    // SAFETY: a valid local siginfo and the kernel's ctx.
                    unsafe { run_action(sig, &act, &mut si, ctx) };
                }
            }
        }
        Action::Bus(address) => {
            // SAFETY: zeroed sigaction, filled by the query.
            let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: a query into a live local.
            unsafe { real_sigaction(libc::SIGBUS, std::ptr::null(), &mut act) };
            let mut si = fault_info(libc::SIGBUS, softvfio::barmap::BUS_ADRERR, address);
            // SAFETY: a valid local siginfo and the kernel's ctx; a SIGBUS
            // default action is forced as the kernel forces it.
            unsafe {
                if act.sa_sigaction == libc::SIG_IGN {
                    act.sa_sigaction = libc::SIG_DFL;
                }
                run_action(libc::SIGBUS, &act, &mut si, ctx);
            }
        }
        Action::Fatal => {
            // SAFETY: kills this process.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
    crate::real::set_errno(saved);
}
