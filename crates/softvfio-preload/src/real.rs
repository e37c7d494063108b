//! The next definitions of the functions this library interposes (libc's,
//! or another preloaded library's), found with `dlsym(RTLD_NEXT, ...)`, and
//! the few system calls the library makes on its own behalf.

use std::ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_void, CStr};
use std::sync::atomic::{AtomicPtr, Ordering};

use libc::{off_t, size_t, ssize_t, FILE};

/// A symbol of the next object in the lookup order, resolved once.
pub struct Next {
    name: &'static CStr,
    addr: AtomicPtr<c_void>,
}

impl Next {
    pub const fn new(name: &'static CStr) -> Self {
        Self {
            name,
            addr: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The address of the next definition once resolved, else null (one
    /// load: no dlsym).
    pub(crate) fn cached(&self) -> *mut c_void {
        self.addr.load(Ordering::Acquire)
    }

    /// The address of the next definition, or null when there is none.
    pub(crate) fn get(&self) -> *mut c_void {
        let a = self.addr.load(Ordering::Acquire);
        if !a.is_null() {
            return a;
        }
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name has no
        // preconditions; it returns null when nothing defines the name.
        let a = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) };
        self.addr.store(a, Ordering::Release);
        a
    }
}

pub static OPEN: Next = Next::new(c"open");
pub static OPEN64: Next = Next::new(c"open64");
pub static OPENAT: Next = Next::new(c"openat");
pub static OPENAT64: Next = Next::new(c"openat64");
pub static OPEN_2: Next = Next::new(c"__open_2");
pub static OPEN64_2: Next = Next::new(c"__open64_2");
pub static OPENAT_2: Next = Next::new(c"__openat_2");
pub static OPENAT64_2: Next = Next::new(c"__openat64_2");
pub static FOPEN: Next = Next::new(c"fopen");
pub static FOPEN64: Next = Next::new(c"fopen64");
pub static IOCTL: Next = Next::new(c"ioctl");
pub static PREAD: Next = Next::new(c"pread");
pub static PREAD64: Next = Next::new(c"pread64");
pub static PREAD_CHK: Next = Next::new(c"__pread_chk");
pub static PREAD64_CHK: Next = Next::new(c"__pread64_chk");
pub static CLOSE_RANGE: Next = Next::new(c"close_range");
pub static PWRITE: Next = Next::new(c"pwrite");
pub static READ: Next = Next::new(c"read");
pub static READ_CHK: Next = Next::new(c"__read_chk");
pub static WRITE: Next = Next::new(c"write");
pub static READV: Next = Next::new(c"readv");
pub static WRITEV: Next = Next::new(c"writev");
pub static PWRITE64: Next = Next::new(c"pwrite64");
pub static CLOSE: Next = Next::new(c"close");
pub static DUP: Next = Next::new(c"dup");
pub static DUP2: Next = Next::new(c"dup2");
pub static DUP3: Next = Next::new(c"dup3");
pub static FCNTL: Next = Next::new(c"fcntl");
pub static FCNTL64: Next = Next::new(c"fcntl64");
pub static MLOCK: Next = Next::new(c"mlock");
pub static MLOCK2: Next = Next::new(c"mlock2");
pub static MLOCKALL: Next = Next::new(c"mlockall");
pub static LSEEK: Next = Next::new(c"lseek");
pub static LSEEK64: Next = Next::new(c"lseek64");
pub static STAT: Next = Next::new(c"stat");
pub static STAT64: Next = Next::new(c"stat64");
pub static LSTAT: Next = Next::new(c"lstat");
pub static LSTAT64: Next = Next::new(c"lstat64");
pub static FSTATAT: Next = Next::new(c"fstatat");
pub static FSTATAT64: Next = Next::new(c"fstatat64");
pub static FSTAT: Next = Next::new(c"fstat");
pub static FSTAT64: Next = Next::new(c"fstat64");
pub static STATX: Next = Next::new(c"statx");

fn enosys<T: From<i8>>() -> T {
    set_errno(libc::ENOSYS);
    T::from(-1)
}

/// Sets the calling thread's errno.
pub fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns the calling thread's errno slot,
    // valid for the thread's lifetime.
    unsafe { *libc::__errno_location() = e }
}

/// The calling thread's errno.
pub fn errno() -> c_int {
    // SAFETY: as in `set_errno`.
    unsafe { *libc::__errno_location() }
}

type OpenFn = unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int;
type OpenatFn = unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int;
// `struct stat` and `struct stat64` have one layout on LP64 Linux (x86-64,
// aarch64), so one prototype serves both names.
type StatFn = unsafe extern "C" fn(*const c_char, *mut libc::stat) -> c_int;
type FstatatFn = unsafe extern "C" fn(c_int, *const c_char, *mut libc::stat, c_int) -> c_int;
type FstatFn = unsafe extern "C" fn(c_int, *mut libc::stat) -> c_int;
type StatxFn = unsafe extern "C" fn(c_int, *const c_char, c_int, c_uint, *mut libc::statx) -> c_int;
type Open2Fn = unsafe extern "C" fn(*const c_char, c_int) -> c_int;
type Openat2Fn = unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;
type FopenFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut FILE;
type IoctlFn = unsafe extern "C" fn(c_int, c_ulong, ...) -> c_int;
type PreadFn = unsafe extern "C" fn(c_int, *mut c_void, size_t, off_t) -> ssize_t;
type PreadChkFn = unsafe extern "C" fn(c_int, *mut c_void, size_t, off_t, size_t) -> ssize_t;
type CloseRangeFn = unsafe extern "C" fn(c_uint, c_uint, c_int) -> c_int;
type PwriteFn = unsafe extern "C" fn(c_int, *const c_void, size_t, off_t) -> ssize_t;
type ReadFn = unsafe extern "C" fn(c_int, *mut c_void, size_t) -> ssize_t;
type ReadChkFn = unsafe extern "C" fn(c_int, *mut c_void, size_t, size_t) -> ssize_t;
type WriteFn = unsafe extern "C" fn(c_int, *const c_void, size_t) -> ssize_t;
type IovFn = unsafe extern "C" fn(c_int, *const libc::iovec, c_int) -> ssize_t;
type MlockFn = unsafe extern "C" fn(*const c_void, size_t) -> c_int;
type Mlock2Fn = unsafe extern "C" fn(*const c_void, size_t, c_uint) -> c_int;
type MlockallFn = unsafe extern "C" fn(c_int) -> c_int;
type LseekFn = unsafe extern "C" fn(c_int, off_t, c_int) -> off_t;
type FdFn = unsafe extern "C" fn(c_int) -> c_int;
type Dup2Fn = unsafe extern "C" fn(c_int, c_int) -> c_int;
type Dup3Fn = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
type FcntlFn = unsafe extern "C" fn(c_int, c_int, ...) -> c_int;

macro_rules! fn_of {
    ($next:expr, $ty:ty) => {{
        let p = $next.get();
        if p.is_null() {
            None
        } else {
            // SAFETY: `p` is the address of the next definition of this
            // libc function, whose C prototype `$ty` matches.
            Some(unsafe { std::mem::transmute::<*mut c_void, $ty>(p) })
        }
    }};
}

pub static SYSCALL: Next = Next::new(c"syscall");
type SyscallFn = unsafe extern "C" fn(c_long, ...) -> c_long;

/// libc's `syscall` (the next definition, past this library's own, which
/// serves the program's raw calls): the library's own raw system calls of
/// the numbers that interposer serves go here, so that they stay its own.
///
/// # Safety
/// `a` must be valid arguments of system call `nr` (unused words ignored).
pub unsafe fn raw_syscall(nr: c_long, a: [c_long; 6]) -> c_long {
    match fn_of!(SYSCALL, SyscallFn) {
        // SAFETY: the arguments of system call `nr` (this function's
        // contract).
        Some(f) => unsafe { f(nr, a[0], a[1], a[2], a[3], a[4], a[5]) },
        None => enosys(),
    }
}

/// The library's own allocator: blocks of [`LibraryAlloc::LARGE`] bytes and
/// more are anonymous mappings of their own, made, resized (`mremap`) and
/// removed with the `syscall` instruction; smaller ones are the program's
/// `malloc`'s.
///
/// Why: the library's Rust code allocates through the program's `malloc`
/// (its heap, its locks), and a large block freed there changes how that
/// `malloc` serves the program afterwards: glibc raises its mmap threshold
/// to the size of an mmapped chunk freed (up to 32 MiB), so a program's
/// later 1 MiB `malloc` would come from the heap instead of a mapping of
/// its own, as it does without the library (the sanitizer's call-frame
/// reader loads objects' unwind tables, megabytes, and frees them). With
/// its large blocks kept out, the program's allocator behaves as it would
/// without softvfio. The mappings bypass this library's `mmap`/`munmap`
/// hooks (and their sanitizer checks): they are not the program's memory.
pub struct LibraryAlloc;

impl LibraryAlloc {
    /// Blocks this large or larger are mappings of their own (glibc's own
    /// default mmap threshold is 128 KiB: below it, nothing the library
    /// frees can move the threshold).
    pub const LARGE: usize = 64 * 1024;
    const PAGE: usize = 4096;

    fn large(layout: std::alloc::Layout) -> bool {
        cfg!(target_arch = "x86_64") && layout.size() >= Self::LARGE && layout.align() <= Self::PAGE
    }

    fn mapped_len(size: usize) -> usize {
        size.div_ceil(Self::PAGE) * Self::PAGE
    }

    /// A mapping of this allocator's resized with `mremap`
    /// (`MREMAP_MAYMOVE`): the kernel moves the page table entries, so
    /// no byte is copied and no page the block never touched is made
    /// resident; a block that shrinks (or stays within its pages) keeps
    /// its address. Null when the kernel refuses; the block is then as it
    /// was (mremap changes nothing when it fails).
    ///
    /// # Safety
    /// `ptr` must be the start of a mapping made by [`LibraryAlloc`] for a
    /// block of `old_size` bytes, not used after this call unless it
    /// answers null.
    unsafe fn remap(ptr: *mut u8, old_size: usize, new_size: usize) -> *mut u8 {
        let (old_len, new_len) = (Self::mapped_len(old_size), Self::mapped_len(new_size));
        if old_len == new_len {
            return ptr;
        }
        let may_move = c_long::from(libc::MREMAP_MAYMOVE);
        let args = [
            ptr as c_long,
            old_len as c_long,
            new_len as c_long,
            may_move,
            0,
            0,
        ];
        // SAFETY: mremap of the whole mapping the allocator made for this
        // block (this function's contract); its bytes move with it.
        let r = unsafe { kernel_call(libc::SYS_mremap, args) };
        if (-4095..0).contains(&r) {
            std::ptr::null_mut()
        } else {
            r as *mut u8
        }
    }
}

/// A system call with the `syscall` instruction: no libc function, no
/// lazy symbol lookup (which may allocate), so the allocator may use it;
/// also how the program's raw `syscall()` of a number the library does
/// not serve is made. Returns the kernel's answer (-4095..-1: an errno).
///
/// # Safety
/// `a` must be valid arguments of system call `nr`.
#[cfg(target_arch = "x86_64")]
pub unsafe fn kernel_call(nr: c_long, a: [c_long; 6]) -> c_long {
    let ret: c_long;
    // SAFETY: system call `nr` with valid arguments (this function's
    // contract); the instruction clobbers rcx and r11 only and uses no
    // user stack. Memory is not declared untouched: the call may read and
    // write the process's.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn kernel_call(_nr: c_long, _a: [c_long; 6]) -> c_long {
    // Never reached: `LibraryAlloc::large` is false off x86-64.
    -(libc::ENOSYS as c_long)
}

// SAFETY: every block is either the program's `malloc`'s (`System`, with
// the layout it was asked for) or a fresh private anonymous mapping of at
// least `size` bytes, page-aligned (so any alignment up to a page holds);
// a block is freed by the same kind that made it, told apart by its
// layout's size and alignment, which Rust passes back unchanged.
unsafe impl std::alloc::GlobalAlloc for LibraryAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        #[cfg(test)]
        alloc_count::note();
        if !Self::large(layout) {
            // SAFETY: the caller's layout (this trait's contract).
            return unsafe { std::alloc::System.alloc(layout) };
        }
        let len = Self::mapped_len(layout.size()) as c_long;
        let prot = c_long::from(libc::PROT_READ | libc::PROT_WRITE);
        let flags = c_long::from(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS);
        // SAFETY: mmap of a new anonymous mapping: no existing memory is
        // touched.
        let r = unsafe { kernel_call(libc::SYS_mmap, [0, len, prot, flags, -1, 0]) };
        if (-4095..0).contains(&r) {
            std::ptr::null_mut()
        } else {
            r as *mut u8
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        #[cfg(test)]
        alloc_count::note();
        if !Self::large(layout) {
            // SAFETY: the caller's layout (this trait's contract).
            return unsafe { std::alloc::System.alloc_zeroed(layout) };
        }
        // SAFETY: as `alloc`; a fresh anonymous mapping reads as zeros.
        unsafe { self.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        if !Self::large(layout) {
            // Made by `System.alloc` (above): freed by `System` too, so
            // that the `free` found is the `malloc` found's partner (the
            // first in the lookup order: a program's own allocator, or one
            // preloaded before this library, would be skipped by the next
            // `free`). It passes through this library's `free` hook, whose
            // checks read the block's header and find a heap block.
            // SAFETY: a block `System.alloc` made for `layout` (this
            // trait's contract).
            unsafe { std::alloc::System.dealloc(ptr, layout) };
            return;
        }
        let len = Self::mapped_len(layout.size()) as c_long;
        // SAFETY: `ptr` is the start of the mapping `alloc` made for this
        // layout, `len` its length; nothing uses it after this call.
        unsafe { kernel_call(libc::SYS_munmap, [ptr as c_long, len, 0, 0, 0, 0]) };
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        #[cfg(test)]
        alloc_count::note();
        let Ok(new) = std::alloc::Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        match (Self::large(layout), Self::large(new)) {
            // SAFETY: a block of `System`'s with this layout, resized
            // within `System` (this trait's contract).
            (false, false) => unsafe { std::alloc::System.realloc(ptr, layout, new_size) },
            // SAFETY: a mapping `alloc` made for `layout` (this trait's
            // contract: `ptr` is this allocator's block of `layout`).
            (true, true) => unsafe { Self::remap(ptr, layout.size(), new_size) },
            // Across kinds: a new block, the bytes copied, the old freed.
            _ => {
                // SAFETY: `new` has a non-zero size (large, or resized
                // from a large block to a size the caller asked for,
                // non-zero by this trait's contract).
                let to = unsafe { self.alloc(new) };
                if !to.is_null() {
                    // SAFETY: both blocks are live and distinct, each at
                    // least the smaller of the two sizes long.
                    unsafe { std::ptr::copy_nonoverlapping(ptr, to, layout.size().min(new_size)) };
                    // SAFETY: `ptr` was allocated by this allocator with
                    // `layout`.
                    unsafe { self.dealloc(ptr, layout) };
                }
                to
            }
        }
    }
}

/// For unit tests: is each page of `[p, p + len)` mapped (`Some`), and
/// which are resident? `None`: some page is not mapped (mincore's
/// ENOMEM).
#[cfg(test)]
pub(crate) fn resident(p: *const u8, len: usize) -> Option<Vec<bool>> {
    let mut vec = vec![0u8; len.div_ceil(4096)];
    // SAFETY: mincore only reads the page tables of the range and writes
    // one byte per page into `vec`, which has that many.
    let r = unsafe { libc::mincore(p as *mut c_void, len, vec.as_mut_ptr()) };
    (r == 0).then(|| vec.iter().map(|b| b & 1 == 1).collect())
}

/// Unit tests count the allocations each thread makes (tests of code that
/// must not allocate per call).
#[cfg(test)]
mod alloc_count {
    use std::cell::Cell;

    thread_local! {
        // Const-initialised and without a destructor: usable from the
        // allocator itself, at any point of a thread's life.
        static MADE: Cell<u64> = const { Cell::new(0) };
    }

    pub(super) fn note() {
        let _ = MADE.try_with(|n| n.set(n.get() + 1));
    }

    pub(super) fn on_this_thread() -> u64 {
        MADE.try_with(Cell::get).unwrap_or(0)
    }
}

/// Allocations (and reallocations) this thread has made so far through
/// the library's allocator.
#[cfg(test)]
pub fn allocations_on_this_thread() -> u64 {
    alloc_count::on_this_thread()
}

/// Is the loaded object that holds address `addr` glibc's `libc.so`
/// (dladdr; its file name's last component)? Allocates nothing: asked
/// from `free`.
pub fn is_in_libc(addr: *mut c_void) -> bool {
    // SAFETY: dladdr only reads the loader's tables and fills `info`, a
    // live local; a name it returns is a NUL-terminated string of the
    // loader's that lives while the object stays loaded (read at once).
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(addr, &mut info) == 0 || info.dli_fname.is_null() {
            return false;
        }
        let name = CStr::from_ptr(info.dli_fname).to_bytes();
        let base = name.rsplit(|&b| b == b'/').next().unwrap_or(name);
        base.starts_with(b"libc.so")
    }
}

/// The next `open`-family function (`next`), called with the mode argument
/// (read by the caller from its variadic slot; ignored without
/// O_CREAT/O_TMPFILE).
///
/// # Safety
/// The arguments must be valid for the libc function `next` names: `path`
/// (and `mode`) NUL-terminated strings, as its caller passed them.
pub unsafe fn open(next: &Next, path: *const c_char, flags: c_int, mode: libc::c_uint) -> c_int {
    match fn_of!(next, OpenFn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(path, flags, mode) },
        None => enosys(),
    }
}

/// The next `openat`-family function.
///
/// # Safety
/// The arguments must be valid for the libc function `next` names: `path`
/// (and `mode`) NUL-terminated strings, as its caller passed them.
pub unsafe fn openat(
    next: &Next,
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: libc::c_uint,
) -> c_int {
    match fn_of!(next, OpenatFn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(dirfd, path, flags, mode) },
        None => enosys(),
    }
}

/// `__open_2`/`__open64_2`; falls back on `open` where libc has no such name.
///
/// # Safety
/// The arguments must be valid for the libc function `next` names: `path`
/// (and `mode`) NUL-terminated strings, as its caller passed them.
pub unsafe fn open_2(next: &Next, path: *const c_char, flags: c_int) -> c_int {
    match fn_of!(next, Open2Fn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(path, flags) },
        // SAFETY: the same arguments, under this function's contract.
        None => unsafe { open(&OPEN, path, flags, 0) },
    }
}

/// `__openat_2`/`__openat64_2`; falls back on `openat`.
///
/// # Safety
/// The arguments must be valid for the libc function `next` names: `path`
/// (and `mode`) NUL-terminated strings, as its caller passed them.
pub unsafe fn openat_2(next: &Next, dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    match fn_of!(next, Openat2Fn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(dirfd, path, flags) },
        // SAFETY: the same arguments, under this function's contract.
        None => unsafe { openat(&OPENAT, dirfd, path, flags, 0) },
    }
}

/// The next `fopen`/`fopen64`.
///
/// # Safety
/// The arguments must be valid for the libc function `next` names: `path`
/// (and `mode`) NUL-terminated strings, as its caller passed them.
pub unsafe fn fopen(next: &Next, path: *const c_char, mode: *const c_char) -> *mut FILE {
    match fn_of!(next, FopenFn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(path, mode) },
        None => {
            set_errno(libc::ENOSYS);
            std::ptr::null_mut()
        }
    }
}

/// The next `ioctl`.
///
/// # Safety
/// `arg` must be what `request` expects: when the request takes a pointer,
/// one valid for the reads and writes the driver behind `fd` makes.
pub unsafe fn ioctl(fd: c_int, request: c_ulong, arg: c_ulong) -> c_int {
    match fn_of!(IOCTL, IoctlFn) {
        // SAFETY: forwards the caller's arguments unchanged; the third
        // argument travels as the unsigned long it was read as.
        Some(f) => unsafe { f(fd, request, arg) },
        None => enosys(),
    }
}

extern "C" {
    /// glibc's `backtrace(3)` (execinfo.h): unwinds with the DWARF call
    /// frame information, frame pointers or not.
    fn backtrace(buffer: *mut *mut c_void, size: c_int) -> c_int;
    /// POSIX `pthread_setcancelstate` (not in the libc crate for glibc).
    fn pthread_setcancelstate(state: c_int, old: *mut c_int) -> c_int;
}

/// glibc's `PTHREAD_CANCEL_DISABLE` (pthread.h).
const PTHREAD_CANCEL_DISABLE: c_int = 1;

/// `f` with the calling thread's cancellation disabled: the cancellation
/// points of the library's own work (libc's wrappers of a raw `syscall()`'s
/// call, the keeper's `sendmsg`/`recvmsg`/`poll`, file reads, the engine's
/// waits) are then none, as the program's call (a raw `syscall()`, an
/// `ioctl`, a `munmap`, a `free`) has none. The thread's state is put back
/// after; a deferred cancel still pending then acts at the program's next
/// cancellation point, as it would without the library. Not handled: an
/// asynchronous cancel that arrived meanwhile acts inside the restoring
/// `pthread_setcancelstate`, an unwind through the caller's Rust frames
/// (docs/RELIABILITY.md, "Known limits of cancellation"); POSIX allows no
/// call of these with asynchronous cancellation enabled.
pub fn without_cancel<T>(f: impl FnOnce() -> T) -> T {
    /// Puts the thread's cancel state back when dropped: after `f`
    /// returns, and also when it panics (the hooks catch panics and go on
    /// serving; a thread left with cancellation disabled could never be
    /// cancelled).
    struct Restore(c_int);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: puts back the state read when this guard was made;
            // the previous state's slot is not wanted.
            unsafe { pthread_setcancelstate(self.0, std::ptr::null_mut()) };
        }
    }
    let mut old: c_int = 0;
    // SAFETY: sets the calling thread's cancel state; `old` is a live
    // local the call writes the previous state into.
    let set = unsafe { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &mut old) } == 0;
    let _restore = set.then_some(Restore(old));
    f()
}

/// The return addresses of the calling thread's frames, innermost first
/// (at most `out.len()`); the count written.
pub fn backtrace_into(out: &mut [u64]) -> usize {
    let mut buf = [std::ptr::null_mut::<c_void>(); 32];
    let want = buf.len().min(out.len());
    // SAFETY: `buf` has room for `want` pointers; backtrace writes at most
    // that many and returns how many it wrote.
    let n = unsafe { backtrace(buf.as_mut_ptr(), want as c_int) };
    let n = usize::try_from(n).unwrap_or(0).min(want);
    for (o, p) in out.iter_mut().zip(&buf[..n]) {
        *o = *p as u64;
    }
    n
}

/// The addresses of the code of the loaded object that holds `addr`: from
/// the lowest to the end of the highest of its executable `PT_LOAD`
/// segments, as its program headers place them (however the kernel split
/// or merged their mappings). `None` when no loaded object holds `addr`
/// in an executable segment.
pub fn object_code_range(addr: u64) -> Option<std::ops::Range<u64>> {
    struct Search {
        addr: u64,
        found: Option<std::ops::Range<u64>>,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: glibc passes a valid `dl_phdr_info` for the duration of
        // the call, and `data` is the `Search` that `object_code_range`
        // passed, alive and not otherwise borrowed during the iteration.
        let (info, search) = unsafe { (&*info, &mut *data.cast::<Search>()) };
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        // SAFETY: `dlpi_phdr` points to the object's `dlpi_phnum` program
        // headers, mapped while the object is loaded (the loader's lock is
        // held during the iteration).
        let headers =
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        let mut code: Option<std::ops::Range<u64>> = None;
        for h in headers {
            if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_X == 0 {
                continue;
            }
            let start = info.dlpi_addr.wrapping_add(h.p_vaddr);
            let end = start.wrapping_add(h.p_memsz);
            code = Some(match code {
                Some(r) => r.start.min(start)..r.end.max(end),
                None => start..end,
            });
        }
        match code {
            Some(r) if r.contains(&search.addr) => {
                search.found = Some(r);
                1
            }
            _ => 0,
        }
    }
    let mut search = Search { addr, found: None };
    // SAFETY: `each` matches the callback's prototype and only reads what
    // glibc hands it; `search` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut search).cast()) };
    search.found
}

/// The calling thread's own stack, for the sanitizer's call-frame walk
/// (`crate::sanitize::capture`): where the walk starts and a reader of
/// the words above it.
///
/// Bounds: a thread's stack as `pthread_getattr_np` gives it, except the
/// main thread's, which is the `[stack]` mapping itself (glibc's answer
/// reaches down to `RLIMIT_STACK` below it, over unmapped memory a program
/// may map a stack of its own in); read again when the stack pointer lies
/// below it (the stack grew). A stack pointer outside the thread's stack
/// (a fiber's) is bounded by the mapping that holds it, read from
/// `/proc/self/maps` at each capture (rare: a stack of the program's own
/// making); on the signal stack, no view (glibc's backtrace follows the
/// signal frame).
#[cfg(target_arch = "x86_64")]
pub mod own_stack {
    use std::cell::Cell;

    thread_local! {
        /// `[low, high)` of this thread's stack, looked up on first use
        /// (`(0, 0)`: not yet; `(1, 1)`: unknown).
        static BOUNDS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }

    fn lookup() -> (u64, u64) {
        let (low, high) = thread_stack();
        // glibc's main-thread answer ends inside `[stack]` (at the page
        // after `__libc_stack_end`; a fork child's first thread may be
        // another thread's copy: its stack is a thread stack, whose answer
        // is exact).
        if is_main_thread() {
            if let Some(r) = stack_mapping().filter(|&(lo, hi)| lo < high && high <= hi) {
                return r;
            }
        }
        (low, high)
    }

    /// The calling thread's stack as `pthread_getattr_np` gives it.
    fn thread_stack() -> (u64, u64) {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
        // SAFETY: pthread_getattr_np initializes `attr` for the calling
        // thread when it returns 0 (and only then is it used or destroyed).
        if unsafe { libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) } != 0 {
            return (1, 1);
        }
        let (mut addr, mut size) = (std::ptr::null_mut(), 0usize);
        // SAFETY: `attr` was initialized above; the out-pointers are valid.
        let r = unsafe { libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) };
        // SAFETY: `attr` was initialized by pthread_getattr_np.
        unsafe { libc::pthread_attr_destroy(attr.as_mut_ptr()) };
        if r != 0 || size == 0 {
            return (1, 1);
        }
        let low = addr as u64;
        (low, low.saturating_add(size as u64))
    }

    /// The calling thread is the process's first (its stack is `[stack]`).
    fn is_main_thread() -> bool {
        // SAFETY: gettid and getpid take no arguments and cannot fail.
        unsafe { libc::gettid() == libc::getpid() }
    }

    /// The `[stack]` line of `/proc/self/maps`.
    fn stack_mapping() -> Option<(u64, u64)> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        maps.lines()
            .find(|l| l.ends_with(" [stack]"))
            .and_then(range_of)
    }

    /// The mapping of `/proc/self/maps` that holds `addr`, when it is
    /// readable.
    fn mapping_holding(addr: u64) -> Option<(u64, u64)> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        maps.lines().find_map(|l| {
            let (lo, hi) = range_of(l)?;
            let readable = l.split_ascii_whitespace().nth(1)?.starts_with('r');
            (lo <= addr && addr < hi && readable).then_some((lo, hi))
        })
    }

    fn range_of(line: &str) -> Option<(u64, u64)> {
        let (lo, rest) = line.split_once('-')?;
        let hi = rest.split_ascii_whitespace().next()?;
        Some((
            u64::from_str_radix(lo, 16).ok()?,
            u64::from_str_radix(hi, 16).ok()?,
        ))
    }

    /// The bounds for a stack pointer `sp` outside `(low, high)`, the
    /// thread's stack as last looked up: the main thread's `[stack]` grown
    /// down to it (kept), or the mapping that holds it (a stack of the
    /// program's own making: `true`).
    #[cold]
    #[inline(never)]
    fn outside(sp: u64, low: u64, high: u64) -> Option<(u64, bool)> {
        if sp < low && is_main_thread() {
            let grown = |&(lo, hi): &(u64, u64)| hi == high && lo <= sp && sp < hi;
            if let Some((lo, hi)) = stack_mapping().filter(grown) {
                BOUNDS.with(|b| b.set((lo, hi)));
                return Some((hi, false));
            }
        }
        // A signal handler on the signal stack: glibc's backtrace follows
        // the signal frame to the interrupted one (this walk cannot read
        // the return trampoline's code to tell it).
        if on_signal_stack() {
            return None;
        }
        let (_, hi) = mapping_holding(sp)?;
        Some((hi, true))
    }

    /// The calling thread runs on its signal stack (`sigaltstack`).
    fn on_signal_stack() -> bool {
        let mut old = std::mem::MaybeUninit::<libc::stack_t>::uninit();
        // SAFETY: sigaltstack with no new stack only writes the current one
        // into `old`, valid for writes; read only when it succeeded.
        if unsafe { libc::sigaltstack(std::ptr::null(), old.as_mut_ptr()) } != 0 {
            return false;
        }
        // SAFETY: initialized by the successful call above.
        unsafe { old.assume_init() }.ss_flags & libc::SS_ONSTACK != 0
    }

    /// A view of the calling thread's stack from the point it was made
    /// (`here`) to the top of the mapping it lies in: memory that stays
    /// mapped while the thread runs on it (a thread's stack does not shrink
    /// and is unmapped only after the thread exited; a stack of the
    /// program's own making is the program's to keep mapped while it runs
    /// on it). The view cannot leave its thread (not `Send`).
    pub struct Stack {
        /// The instruction pointer at `here`.
        ip: u64,
        /// The stack pointer at `here`: the lower bound of what `read`
        /// reads (private: a safe `read` relies on it).
        sp: u64,
        /// The frame pointer register at `here` (whatever it held).
        bp: u64,
        /// The end of the mapping `sp` lies in (private, as `sp`).
        high: u64,
        /// The stack is not the thread's own (a fiber's).
        foreign: bool,
        _thread: std::marker::PhantomData<*const ()>,
    }

    impl Stack {
        /// The registers here, with the bounds of the stack the stack
        /// pointer lies in (`None`: on the signal stack, or no readable
        /// mapping holds it).
        #[inline(always)]
        pub fn here() -> Option<Stack> {
            let (ip, sp, bp): (u64, u64, u64);
            // SAFETY: reads three registers into outputs; touches neither
            // memory nor the stack nor the flags.
            unsafe {
                std::arch::asm!(
                    "lea {ip}, [rip]",
                    "mov {sp}, rsp",
                    "mov {bp}, rbp",
                    ip = out(reg) ip,
                    sp = out(reg) sp,
                    bp = out(reg) bp,
                    options(nomem, nostack, preserves_flags),
                );
            }
            let (low, high) = BOUNDS.with(|b| {
                if b.get() == (0, 0) {
                    b.set(lookup());
                }
                b.get()
            });
            let (high, foreign) = if low <= sp && sp < high {
                (high, false)
            } else {
                outside(sp, low, high)?
            };
            Some(Stack {
                ip,
                sp,
                bp,
                high,
                foreign,
                _thread: std::marker::PhantomData,
            })
        }

        /// The instruction pointer at `here`.
        pub fn ip(&self) -> u64 {
            self.ip
        }

        /// The stack pointer at `here`.
        pub fn sp(&self) -> u64 {
            self.sp
        }

        /// The frame pointer register at `here`.
        pub fn bp(&self) -> u64 {
            self.bp
        }

        /// The stack is not the thread's own: one the program made (a
        /// fiber's), bounded by the mapping it lies in.
        pub fn foreign(&self) -> bool {
            self.foreign
        }

        /// Whether the word at `addr` would end past the top of the stack
        /// (so `read` refuses it for that reason).
        pub fn past_top(&self, addr: u64) -> bool {
            addr.checked_add(8).is_none_or(|end| end > self.high)
        }

        /// The word at `addr`, when it lies between the stack pointer at
        /// `here` and the top of the stack.
        pub fn read(&self, addr: u64) -> Option<u64> {
            if addr < self.sp || addr.checked_add(8)? > self.high {
                return None;
            }
            let v: u64;
            // SAFETY: `[addr, addr + 8)` lies in `[sp, high)`, within the
            // mapping the thread's stack pointer lay in when `self` was made
            // (the `[stack]` mapping, the thread's stack, or the mapping a
            // stack of the program's own lies in), which stays mapped while
            // this thread runs on it, which it does: `self` is on it (not
            // `Send`). The load is opaque to the compiler, so a word it sees
            // as uninitialized (padding) is read as plain bytes.
            unsafe {
                std::arch::asm!(
                    "mov {v}, qword ptr [{a}]",
                    a = in(reg) addr,
                    v = out(reg) v,
                    options(nostack, readonly, preserves_flags),
                );
            }
            Some(v)
        }
    }
}

/// The next `pread`/`pread64`.
///
/// # Safety
/// `buf` must be valid for writes of `n` bytes.
pub unsafe fn pread(next: &Next, fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t {
    match fn_of!(next, PreadFn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(fd, buf, n, off) },
        None => enosys(),
    }
}

/// glibc's fortified `__pread_chk`/`__pread64_chk`: `pread` of at most
/// `buflen` bytes (the size of the buffer the compiler saw); a larger `n`
/// aborts the program in the next definition, as without softvfio.
///
/// # Safety
/// As glibc's `__pread_chk`: `buf` must be valid for writes of `buflen`
/// bytes.
pub unsafe fn pread_chk(
    next: &Next,
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    off: off_t,
    buflen: size_t,
) -> ssize_t {
    match fn_of!(next, PreadChkFn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(fd, buf, n, off, buflen) },
        // SAFETY: the caller's contract covers `buf` for `n <= buflen`
        // bytes; glibc's own check is the one this function stands for.
        None if std::ptr::eq(next, &PREAD64_CHK) => unsafe { pread(&PREAD64, fd, buf, n, off) },
        // SAFETY: as above.
        None => unsafe { pread(&PREAD, fd, buf, n, off) },
    }
}

/// `close_range`; the raw system call where libc has no such function
/// (glibc before 2.34).
pub fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    match fn_of!(CLOSE_RANGE, CloseRangeFn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(first, last, flags) },
        // SAFETY: close_range takes no pointers.
        None => unsafe {
            raw_syscall(
                libc::SYS_close_range,
                [first.into(), last.into(), flags.into(), 0, 0, 0],
            ) as c_int
        },
    }
}

/// The next `pwrite`/`pwrite64`.
///
/// # Safety
/// `buf` must be valid for reads of `n` bytes.
pub unsafe fn pwrite(next: &Next, fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t {
    match fn_of!(next, PwriteFn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(fd, buf, n, off) },
        None => enosys(),
    }
}

/// `read` (the next definition).
///
/// # Safety
/// As libc's `read`: `buf` valid for writes of `n` bytes.
pub unsafe fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    match fn_of!(READ, ReadFn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(fd, buf, n) },
        None => enosys(),
    }
}

/// glibc's fortified `__read_chk`: `read` of at most `buflen` bytes; a
/// larger `n` aborts the program in the next definition.
///
/// # Safety
/// As glibc's `__read_chk`: `buf` valid for writes of `buflen` bytes.
pub unsafe fn read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t {
    match fn_of!(READ_CHK, ReadChkFn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(fd, buf, n, buflen) },
        // SAFETY: the caller's contract covers `buf` for `n <= buflen`.
        None if n <= buflen => unsafe { read(fd, buf, n) },
        None => enosys(),
    }
}

/// `write` (the next definition).
///
/// # Safety
/// As libc's `write`: `buf` valid for reads of `n` bytes.
pub unsafe fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    match fn_of!(WRITE, WriteFn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(fd, buf, n) },
        None => enosys(),
    }
}

/// `readv` (`WRITEV`: `writev`), the next definition `next`.
///
/// # Safety
/// As libc's `readv`/`writev`: `iov` valid for `cnt` entries, each buffer
/// valid for its length.
pub unsafe fn iov_call(next: &Next, fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t {
    match fn_of!(next, IovFn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(fd, iov, cnt) },
        None => enosys(),
    }
}

pub fn close(fd: c_int) -> c_int {
    match fn_of!(CLOSE, FdFn) {
        // SAFETY: forwards the caller's argument unchanged.
        Some(f) => unsafe { f(fd) },
        None => enosys(),
    }
}

/// `mlock`; it only changes residency, and the kernel checks the range.
pub fn mlock(addr: *const c_void, len: size_t) -> c_int {
    match fn_of!(MLOCK, MlockFn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(addr, len) },
        None => enosys(),
    }
}

/// `mlock2`.
pub fn mlock2(addr: *const c_void, len: size_t, flags: c_uint) -> c_int {
    match fn_of!(MLOCK2, Mlock2Fn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(addr, len, flags) },
        None => enosys(),
    }
}

/// `mlockall`.
pub fn mlockall(flags: c_int) -> c_int {
    match fn_of!(MLOCKALL, MlockallFn) {
        // SAFETY: forwards the caller's argument unchanged.
        Some(f) => unsafe { f(flags) },
        None => enosys(),
    }
}

/// `lseek` or `lseek64` (`next`); it takes no pointers.
pub fn lseek(next: &Next, fd: c_int, off: off_t, whence: c_int) -> off_t {
    match fn_of!(next, LseekFn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(fd, off, whence) },
        None => enosys(),
    }
}

pub fn dup(fd: c_int) -> c_int {
    match fn_of!(DUP, FdFn) {
        // SAFETY: forwards the caller's argument unchanged.
        Some(f) => unsafe { f(fd) },
        None => enosys(),
    }
}

pub fn dup2(old: c_int, new: c_int) -> c_int {
    match fn_of!(DUP2, Dup2Fn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(old, new) },
        None => enosys(),
    }
}

pub fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    match fn_of!(DUP3, Dup3Fn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(old, new, flags) },
        None => enosys(),
    }
}

/// The next `fcntl`/`fcntl64`.
///
/// # Safety
/// `arg` must be what `cmd` expects: when the command takes a pointer, one
/// valid for what the command reads and writes.
pub unsafe fn fcntl(next: &Next, fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    match fn_of!(next, FcntlFn) {
        // SAFETY: forwards the caller's arguments unchanged; every fcntl
        // command takes at most one argument, an int, a long or a pointer,
        // all passed in the same register as this unsigned long.
        Some(f) => unsafe { f(fd, cmd, arg) },
        // SAFETY: the same arguments, under this function's contract.
        None if std::ptr::eq(next, &FCNTL64) => unsafe { fcntl(&FCNTL, fd, cmd, arg) },
        None => enosys(),
    }
}

/// Is descriptor `fd` open? (`fcntl(F_GETFD)` as a raw system call, so that
/// it never comes back into this library.)
pub fn fd_is_open(fd: c_int) -> bool {
    // SAFETY: F_GETFD reads the descriptor flags; no memory is passed.
    unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) >= 0 }
}

/// A descriptor of the library's own for the open file behind program
/// descriptor `fd` (an eventfd handed to `VFIO_DEVICE_SET_IRQS`): the
/// kernel holds a reference to such a file, so the engine holds a
/// descriptor. Close-on-exec, numbered from 256 up where the limit allows
/// (out of the way of programs that expect their low numbers to be dense).
pub fn dup_own(fd: c_int) -> Result<std::os::fd::OwnedFd, c_int> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD_CLOEXEC takes an integer and passes no memory.
    let mut new = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_DUPFD_CLOEXEC, 256) };
    if new < 0 && errno() == libc::EINVAL {
        // SAFETY: as above.
        new = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_DUPFD_CLOEXEC, 0) };
    }
    if new < 0 {
        return Err(errno());
    }
    // SAFETY: `new` is a descriptor this call just created; nothing else
    // owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(new as c_int) })
}

/// A new descriptor standing for a VFIO object: an eventfd, so that poll
/// and select accept it and it never reads as ready.
pub fn new_object_fd(cloexec: bool) -> Result<c_int, c_int> {
    let flags = if cloexec { libc::EFD_CLOEXEC } else { 0 };
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { libc::eventfd(0, flags) };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(fd)
    }
}

/// A close-on-exec datagram socket of our own bound to the abstract
/// `AF_UNIX` address `name` (no filesystem entry; the binding lasts as
/// long as the socket). `Err(EADDRINUSE)` while another socket holds it.
pub fn bind_abstract_unix(name: &str) -> Result<c_int, c_int> {
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // Abstract namespace: a leading NUL, then the name, not NUL-terminated.
    let n = name.len().min(addr.sun_path.len() - 1);
    for (dst, src) in addr.sun_path[1..=n].iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + 1 + n) as libc::socklen_t;
    // SAFETY: socket takes only integers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: `addr` is a valid sockaddr_un whose first `len` bytes are the
    // address; it is alive for the call.
    let r = unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
    if r == 0 {
        Ok(fd)
    } else {
        let e = errno();
        close_own(fd);
        Err(e)
    }
}

/// Closes a descriptor of our own with the raw system call.
pub fn close_own(fd: c_int) {
    // SAFETY: `fd` is a descriptor this library created and nobody else
    // knows of yet.
    unsafe { raw_syscall(libc::SYS_close, [fd.into(), 0, 0, 0, 0, 0]) };
}

/// A memfd holding `data`, positioned at its start, to serve as a
/// read-only file (a rewritten `/proc/self/status`).
pub fn memfd_with(data: &[u8], cloexec: bool) -> Result<c_int, c_int> {
    let flags = if cloexec { libc::MFD_CLOEXEC } else { 0 };
    // SAFETY: the name is NUL-terminated.
    let fd = unsafe { libc::memfd_create(c"softvfio-status".as_ptr(), flags) };
    if fd < 0 {
        return Err(errno());
    }
    let mut done = 0;
    while done < data.len() {
        let rest = &data[done..];
        // SAFETY: `rest` is a live slice of `rest.len()` bytes.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            close_own(fd);
            return Err(e);
        }
        done += n as usize;
    }
    // SAFETY: lseek on our own descriptor takes no pointers.
    if unsafe { libc::lseek(fd, 0, libc::SEEK_SET) } < 0 {
        let e = errno();
        close_own(fd);
        return Err(e);
    }
    Ok(fd)
}

/// `fdopen(fd, mode)` for a served `fopen`.
///
/// # Safety
/// `mode` must be a NUL-terminated string.
pub unsafe fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE {
    // SAFETY: `mode` is NUL-terminated (this function's contract); `fd` is
    // any descriptor (fdopen fails on a bad one).
    unsafe { libc::fdopen(fd, mode) }
}

/// Registers fork handlers: `prepare` runs in the forking thread before
/// the fork, `parent` and `child` after it, on each side.
pub fn at_fork(prepare: extern "C" fn(), parent: extern "C" fn(), child: extern "C" fn()) {
    // SAFETY: plain functions with static lifetime.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

/// Registers the end report to run at exit.
pub fn at_exit(f: extern "C" fn()) {
    // SAFETY: `f` is a plain function with static lifetime.
    unsafe { libc::atexit(f) };
}

/// The next `stat`-family function of one path (`stat`, `lstat` and their
/// `64` names).
///
/// # Safety
/// As the libc function `next` names: `path` NUL-terminated, `buf` a
/// writable `struct stat`, as its caller passed them.
pub unsafe fn stat(next: &Next, path: *const c_char, buf: *mut libc::stat) -> c_int {
    match fn_of!(next, StatFn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(path, buf) },
        None => enosys(),
    }
}

/// The next `fstat`/`fstat64`.
///
/// # Safety
/// As the libc function `next` names, with the caller's arguments.
pub unsafe fn fstat(next: &Next, fd: c_int, buf: *mut libc::stat) -> c_int {
    match fn_of!(next, FstatFn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(fd, buf) },
        None => enosys(),
    }
}

/// The next `fstatat`/`fstatat64`.
///
/// # Safety
/// As the libc function `next` names, with the caller's arguments.
pub unsafe fn fstatat(
    next: &Next,
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat,
    flags: c_int,
) -> c_int {
    match fn_of!(next, FstatatFn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(dirfd, path, buf, flags) },
        None => enosys(),
    }
}

/// The next `statx`.
///
/// # Safety
/// As libc's `statx`, with the caller's arguments.
pub unsafe fn statx(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mask: c_uint,
    buf: *mut libc::statx,
) -> c_int {
    match fn_of!(&STATX, StatxFn) {
        // SAFETY: forwards the caller's arguments unchanged.
        Some(f) => unsafe { f(dirfd, path, flags, mask, buf) },
        None => enosys(),
    }
}

// ---- the keeper and its clients (crate::keeper, crate::forward) -----------

pub static FORK: Next = Next::new(c"fork");
pub static EXECVE: Next = Next::new(c"execve");
pub static EXECV: Next = Next::new(c"execv");
pub static EXECVP: Next = Next::new(c"execvp");
pub static EXECVPE: Next = Next::new(c"execvpe");
pub static FEXECVE: Next = Next::new(c"fexecve");
pub static EXECVEAT: Next = Next::new(c"execveat");

type ForkFn = unsafe extern "C" fn() -> libc::pid_t;
type ExecveFn =
    unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;
type ExecvFn = unsafe extern "C" fn(*const c_char, *const *const c_char) -> c_int;
type FexecveFn = unsafe extern "C" fn(c_int, *const *const c_char, *const *const c_char) -> c_int;
type ExecveatFn = unsafe extern "C" fn(
    c_int,
    *const c_char,
    *const *const c_char,
    *const *const c_char,
    c_int,
) -> c_int;

/// libc's `fork` (its atfork handlers run, malloc stays usable in the child).
pub fn fork() -> libc::pid_t {
    match fn_of!(FORK, ForkFn) {
        // SAFETY: fork takes no arguments; the caller deals with the child.
        Some(f) => unsafe { f() },
        None => enosys(),
    }
}

/// The next `execve`/`execvpe` (`next`).
///
/// # Safety
/// As `execve`: NUL-terminated path, NULL-terminated arrays of
/// NUL-terminated strings.
pub unsafe fn execve(
    next: &Next,
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    match fn_of!(next, ExecveFn) {
        // SAFETY: the caller's arguments (this function's contract).
        Some(f) => unsafe { f(path, argv, envp) },
        None => enosys(),
    }
}

/// The next `execv`/`execvp` (`next`).
///
/// # Safety
/// As `execv`.
pub unsafe fn execv(next: &Next, path: *const c_char, argv: *const *const c_char) -> c_int {
    match fn_of!(next, ExecvFn) {
        // SAFETY: the caller's arguments (this function's contract).
        Some(f) => unsafe { f(path, argv) },
        None => enosys(),
    }
}

/// The next `fexecve`.
///
/// # Safety
/// As `fexecve`.
pub unsafe fn fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    match fn_of!(FEXECVE, FexecveFn) {
        // SAFETY: the caller's arguments (this function's contract).
        Some(f) => unsafe { f(fd, argv, envp) },
        None => enosys(),
    }
}

/// The next `execveat`.
///
/// # Safety
/// As `execveat`.
pub unsafe fn execveat(
    dirfd: c_int,
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    flags: c_int,
) -> c_int {
    match fn_of!(EXECVEAT, ExecveatFn) {
        // SAFETY: the caller's arguments (this function's contract).
        Some(f) => unsafe { f(dirfd, path, argv, envp, flags) },
        None => enosys(),
    }
}

/// libc's `environ`, the environment `execv`/`execvp` pass on.
pub fn environ() -> *const *const c_char {
    extern "C" {
        static environ: *const *const c_char;
    }
    // SAFETY: reads the pointer value of libc's global (not what it points to).
    unsafe { environ }
}

/// Sets (or with `None` removes) an environment variable of this process.
pub fn set_env(name: &CStr, value: Option<&CStr>) {
    // SAFETY: NUL-terminated strings; setenv copies them. The library calls
    // it only while serving a fork/exec hook of the program's thread.
    unsafe {
        match value {
            Some(v) => libc::setenv(name.as_ptr(), v.as_ptr(), 1),
            None => libc::unsetenv(name.as_ptr()),
        };
    }
}

/// Ends this process now, without atexit handlers (the keeper, and the
/// keeper's intermediate process).
pub fn exit_now(code: c_int) -> ! {
    // SAFETY: exit_group takes an integer and does not return.
    unsafe { libc::syscall(libc::SYS_exit_group, code) };
    unreachable!("exit_group returned")
}

/// A close-on-exec `SOCK_SEQPACKET` socket pair.
pub fn seqpacket_pair() -> Result<(c_int, c_int), c_int> {
    let mut sv = [0 as c_int; 2];
    // SAFETY: socketpair writes two descriptors into `sv`.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok((sv[0], sv[1]))
    }
}

fn abstract_addr(name: &str) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let n = name.len().min(addr.sun_path.len() - 1);
    for (dst, src) in addr.sun_path[1..=n].iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + 1 + n) as libc::socklen_t;
    (addr, len)
}

/// A listening close-on-exec `SOCK_SEQPACKET` socket at the abstract
/// address `name`.
pub fn listen_abstract(name: &str) -> Result<c_int, c_int> {
    let (addr, len) = abstract_addr(name);
    // SAFETY: socket takes only integers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes, alive for the
    // calls.
    let ok = unsafe {
        libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) == 0
            && libc::listen(fd, 64) == 0
    };
    if ok {
        Ok(fd)
    } else {
        let e = errno();
        close_own(fd);
        Err(e)
    }
}

/// A close-on-exec `SOCK_SEQPACKET` connection to the abstract address
/// `name`.
pub fn connect_abstract(name: &str) -> Result<c_int, c_int> {
    let (addr, len) = abstract_addr(name);
    // SAFETY: socket takes only integers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno());
    }
    loop {
        // SAFETY: as in `listen_abstract`.
        let r = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
        if r == 0 {
            return Ok(fd);
        }
        let e = errno();
        if e != libc::EINTR {
            close_own(fd);
            return Err(e);
        }
    }
}

/// Accepts a connection (close-on-exec).
pub fn accept(fd: c_int) -> Result<c_int, c_int> {
    // SAFETY: null address arguments are allowed.
    let r = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// The pid of the process at the other end of a connection.
pub fn peer_pid(fd: c_int) -> Option<i32> {
    peer_cred(fd).map(|c| c.pid)
}

/// Whether the process at the other end of a connection runs as this
/// process's effective user: the keeper's abstract socket name is visible
/// to every process of the network namespace (`/proc/net/unix`), so a
/// connection from anyone else is refused before it can name a call.
pub fn peer_is_same_user(fd: c_int) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    peer_cred(fd).is_some_and(|c| c.uid == me)
}

/// A random 64-bit value from the kernel (for tokens another process must
/// not guess); `None` if the kernel gave fewer bytes.
pub fn random_u64() -> Option<u64> {
    let mut v = 0u64;
    // SAFETY: `v` is live and 8 bytes long; getrandom writes at most 8.
    let r = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, 0) };
    (r == 8).then_some(v)
}

fn peer_cred(fd: c_int) -> Option<libc::ucred> {
    // SAFETY: ucred is plain data.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live and sized for SO_PEERCRED.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred)
}

/// Sends one record (`data`), with descriptor `pass` attached if given.
pub fn send_record(fd: c_int, data: &[u8], pass: Option<c_int>) -> Result<(), c_int> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut c_void,
        iov_len: data.len(),
    };
    let mut cmsg = [0u64; 4];
    // SAFETY: msghdr is plain data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(pfd) = pass {
        // SAFETY: CMSG_SPACE is a size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<c_int>() as u32) } as usize;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer (32 bytes, aligned) holds one cmsghdr
        // with one int, as `space` says; the macros stay inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<c_int>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<c_int>(), pfd);
        }
    }
    loop {
        // SAFETY: `msg` points at live buffers for the call.
        let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(());
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// Receives one record into `buf`: its length (0 at end of stream) and the
/// descriptor attached, if any (installed close-on-exec when `cloexec`).
pub fn recv_record(
    fd: c_int,
    buf: &mut [u8],
    cloexec: bool,
) -> Result<(usize, Option<c_int>), c_int> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg = [0u64; 4];
    // SAFETY: msghdr is plain data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg);
    let flags = if cloexec { libc::MSG_CMSG_CLOEXEC } else { 0 };
    let n = loop {
        // SAFETY: `msg` points at live buffers for the call.
        let r = unsafe { libc::recvmsg(fd, &mut msg, flags) };
        if r >= 0 {
            break r as usize;
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    };
    let mut got = None;
    if msg.msg_controllen > 0 {
        // SAFETY: the kernel filled the control buffer; the macros walk it
        // within `msg_controllen`.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            if !c.is_null()
                && (*c).cmsg_level == libc::SOL_SOCKET
                && (*c).cmsg_type == libc::SCM_RIGHTS
            {
                got = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<c_int>()));
            }
        }
    }
    Ok((n, got))
}

/// `poll` on `fds` (events in/out as given), retried on EINTR.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: c_int) -> Result<usize, c_int> {
    loop {
        // SAFETY: `fds` is a live array of pollfd of the given length.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// A pidfd of process `pid`.
pub fn pidfd_open(pid: i32) -> Result<c_int, c_int> {
    // SAFETY: pidfd_open takes integers.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as c_int)
    }
}

/// A descriptor of ours for descriptor `fd` of the process behind `pidfd`.
pub fn pidfd_getfd(pidfd: c_int, fd: c_int) -> Result<std::os::fd::OwnedFd, c_int> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_getfd takes integers.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) };
    if r < 0 {
        return Err(errno());
    }
    // SAFETY: a new descriptor the call just made (close-on-exec), owned by
    // nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(r as c_int) })
}

/// Waits for child `pid` (retried on EINTR).
pub fn wait_child(pid: libc::pid_t) {
    let mut st = 0;
    // SAFETY: `st` is a live int.
    while unsafe { libc::waitpid(pid, &mut st, 0) } < 0 && errno() == libc::EINTR {}
}

/// The descriptor flags of `fd` (`FD_CLOEXEC`), or an errno.
pub fn fd_flags(fd: c_int) -> Result<c_int, c_int> {
    // SAFETY: F_GETFD reads the descriptor flags; no memory is passed.
    let r = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as c_int)
    }
}

/// `dup2` as a raw system call (the keeper's stdin/stdout to /dev/null).
pub fn dup2_own(old: c_int, new: c_int) {
    // SAFETY: dup3 takes integers.
    unsafe { raw_syscall(libc::SYS_dup3, [old.into(), new.into(), 0, 0, 0, 0]) };
}

/// `prctl` with integer arguments (names, death signal, ptracer).
pub fn prctl(op: c_int, arg: u64) -> c_int {
    // SAFETY: the options used here take integers or, for PR_SET_NAME, a
    // pointer the caller passes as a live NUL-terminated string.
    unsafe { libc::prctl(op, arg, 0u64, 0u64, 0u64) }
}

/// The madvise/mlock/munlock of a pin, run in this process for the keeper
/// (the calls the engine would make itself in process).
pub fn mm_call(op: u64, addr: u64, len: u64, arg: u64) -> Result<(), c_int> {
    // SAFETY: these calls change only residency and locks of the range
    // (madvise is limited to the populate/willneed advice the keeper
    // asks for); the kernel checks the range.
    let r = unsafe {
        match op {
            1 => match arg as c_int {
                libc::MADV_POPULATE_READ | libc::MADV_POPULATE_WRITE | libc::MADV_WILLNEED => {
                    raw_syscall(
                        libc::SYS_madvise,
                        [addr as c_long, len as c_long, arg as c_long, 0, 0, 0],
                    )
                }
                _ => return Err(libc::EINVAL),
            },
            2 => libc::syscall(libc::SYS_mlock, addr, len),
            3 => libc::syscall(libc::SYS_munlock, addr, len),
            4 => libc::syscall(libc::SYS_mlock2, addr, len, libc::MLOCK_ONFAULT),
            _ => return Err(libc::EINVAL),
        }
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

// ---- the spawn family (spawn.rs) -------------------------------------------

pub static POSIX_SPAWN: Next = Next::new(c"posix_spawn");
pub static POSIX_SPAWNP: Next = Next::new(c"posix_spawnp");
pub static SYSTEM: Next = Next::new(c"system");
pub static POPEN: Next = Next::new(c"popen");
pub static PCLOSE: Next = Next::new(c"pclose");
pub static VFORK: Next = Next::new(c"vfork");

type SpawnFn = unsafe extern "C" fn(
    *mut libc::pid_t,
    *const c_char,
    *const libc::posix_spawn_file_actions_t,
    *const libc::posix_spawnattr_t,
    *const *mut c_char,
    *const *mut c_char,
) -> c_int;
type SystemFn = unsafe extern "C" fn(*const c_char) -> c_int;
type PopenFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut FILE;
type PcloseFn = unsafe extern "C" fn(*mut FILE) -> c_int;

/// The next `posix_spawn`/`posix_spawnp` (`next`); an error number, as
/// they answer.
///
/// # Safety
/// As `posix_spawn`: the program's arguments.
pub unsafe fn posix_spawn(
    next: &Next,
    pid: *mut libc::pid_t,
    path: *const c_char,
    fa: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    match fn_of!(next, SpawnFn) {
        // SAFETY: the caller's arguments (this function's contract).
        Some(f) => unsafe { f(pid, path, fa, attr, argv, envp) },
        None => libc::ENOSYS,
    }
}

/// The next `system`.
///
/// # Safety
/// `line` null or a NUL-terminated string.
pub unsafe fn system(line: *const c_char) -> c_int {
    match fn_of!(SYSTEM, SystemFn) {
        // SAFETY: the caller's argument (this function's contract).
        Some(f) => unsafe { f(line) },
        None => enosys(),
    }
}

/// The next `popen`.
///
/// # Safety
/// NUL-terminated `command` and `mode`.
pub unsafe fn popen(command: *const c_char, mode: *const c_char) -> *mut FILE {
    match fn_of!(POPEN, PopenFn) {
        // SAFETY: the caller's arguments (this function's contract).
        Some(f) => unsafe { f(command, mode) },
        None => {
            set_errno(libc::ENOSYS);
            std::ptr::null_mut()
        }
    }
}

/// The next `pclose`.
///
/// # Safety
/// `f` a stream `popen` returned and not yet closed.
pub unsafe fn pclose(f: *mut FILE) -> c_int {
    match fn_of!(PCLOSE, PcloseFn) {
        // SAFETY: the caller's stream (this function's contract).
        Some(p) => unsafe { p(f) },
        None => enosys(),
    }
}

/// The path this library was loaded from (`dladdr` of one of its
/// functions), for an exec whose environment lost `LD_PRELOAD`.
pub fn own_library_path() -> Option<std::ffi::CString> {
    // SAFETY: Dl_info is plain data; dladdr fills it for an address of a
    // loaded object and returns 0 otherwise.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the address is this function's own.
    let r = unsafe { libc::dladdr(own_library_path as *const c_void, &mut info) };
    if r == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr's NUL-terminated path of the object, live while it is
    // loaded (for the process's life).
    Some(unsafe { CStr::from_ptr(info.dli_fname) }.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout};

    /// This library's own code is the whole of its executable segment,
    /// however the kernel shows it: here the test binary's text, split into
    /// three mappings by a `madvise` that changes one page's flags. The
    /// maps' single mapping (what the sanitizer took before) is then that
    /// one page, without the rest of the code.
    #[test]
    fn object_code_range_is_every_executable_mapping_of_the_object() {
        let here = object_code_range_is_every_executable_mapping_of_the_object as *const () as u64;
        let other = backtrace_into as *const () as u64;
        let whole = object_code_range(here).expect("the test binary's code");
        assert!(
            whole.contains(&here) && whole.contains(&other),
            "{whole:x?}"
        );
        assert_eq!(object_code_range(whole.end), None);
        let page = here & !4095;
        // SAFETY: advice on a page of this binary's own text that only
        // changes whether it may be backed by huge pages (its contents and
        // protection stay).
        let r = unsafe { libc::madvise(page as *mut c_void, 4096, libc::MADV_NOHUGEPAGE) };
        assert_eq!(r, 0);
        let piece = softvfio_platform::sanitize::ProcessMaps::new(None)
            .code_range(here)
            .expect("a code mapping");
        assert_eq!(piece, page..page + 4096, "the text was split");
        assert_eq!(object_code_range(here), Some(whole.clone()));
        assert_eq!(object_code_range(other), Some(whole));
    }

    /// `without_cancel` puts the thread's cancel state back also when the
    /// work panics (a hook catches the panic and the thread goes on: it
    /// must stay cancelable).
    #[test]
    fn without_cancel_restores_the_state_after_a_panic() {
        let r = std::panic::catch_unwind(|| without_cancel(|| panic!("the work panics")));
        assert!(r.is_err());
        let mut old: c_int = -1;
        // SAFETY: reads (by setting it to what it should be) the calling
        // thread's cancel state into a live local.
        assert_eq!(unsafe { pthread_setcancelstate(0, &mut old) }, 0);
        assert_eq!(old, 0, "PTHREAD_CANCEL_ENABLE after the panic");
        // And disabled inside.
        without_cancel(|| {
            let mut inside: c_int = -1;
            // SAFETY: as above; the state is put back right after.
            unsafe {
                pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &mut inside);
            }
            assert_eq!(inside, PTHREAD_CANCEL_DISABLE);
        });
    }

    const PAGE: usize = 4096;

    /// Runs `check` in a child process (one thread: no other test maps
    /// or unmaps memory meanwhile) and answers its exit status; `check`
    /// answers 0 when all its checks held, else the number of the first
    /// that failed.
    fn in_child(check: fn() -> i32) -> i32 {
        // SAFETY: the child runs `check` (allocations and memory calls
        // only: glibc's malloc is usable after fork) and leaves with _exit.
        match unsafe { libc::fork() } {
            0 => {
                let code = std::panic::catch_unwind(check).unwrap_or(100);
                // SAFETY: ends the child without running the test
                // harness's exit handlers.
                unsafe { libc::_exit(code) }
            }
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            pid => {
                let mut status = 0;
                // SAFETY: waits for the child just made.
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                assert!(libc::WIFEXITED(status), "child status {status:#x}");
                libc::WEXITSTATUS(status)
            }
        }
    }

    fn usable_size(p: *mut u8) -> usize {
        // SAFETY: `p` is a live block of the program's malloc (the
        // callers' blocks below `LibraryAlloc::LARGE`).
        unsafe { libc::malloc_usable_size(p.cast()) }
    }

    fn fill(p: *mut u8, len: usize, seed: u8) {
        for i in 0..len {
            // SAFETY: `p` is a live block of at least `len` bytes.
            unsafe { p.add(i).write(seed.wrapping_add(i as u8)) };
        }
    }

    fn holds(p: *const u8, len: usize, seed: u8) -> bool {
        // SAFETY: `p` is a live block of at least `len` bytes.
        (0..len).all(|i| unsafe { p.add(i).read() } == seed.wrapping_add(i as u8))
    }

    /// Below [`LibraryAlloc::LARGE`] a block is the program's malloc's
    /// (its allocator knows its size); from it on, up to page alignment,
    /// a fresh page-aligned mapping of its own (nothing resident until
    /// written); past page alignment, malloc's again (memalign).
    #[test]
    fn blocks_below_the_threshold_are_mallocs_and_above_it_mappings() {
        let a = LibraryAlloc;
        for (size, align) in [(1, 1), (100, 64), (LibraryAlloc::LARGE - 1, 16)] {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a non-zero layout.
            let p = unsafe { a.alloc(l) };
            assert!(!p.is_null());
            assert_eq!(p as usize % align.max(16), 0, "{size}/{align}");
            assert!(usable_size(p) >= size, "{size}/{align}");
            fill(p, size, 1);
            assert!(holds(p, size, 1));
            // SAFETY: allocated above with `l`.
            unsafe { a.dealloc(p, l) };
        }
        let sizes = [
            (LibraryAlloc::LARGE, 1),
            (LibraryAlloc::LARGE + 1, 16),
            (1 << 20, 256),
            (3 * PAGE * 20 + 5, PAGE),
        ];
        for (size, align) in sizes {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a non-zero layout.
            let p = unsafe { a.alloc(l) };
            assert!(!p.is_null());
            assert_eq!(p as usize % PAGE, 0, "{size}/{align}");
            let pages = resident(p, size).expect("a mapping");
            assert_eq!(pages.len(), size.div_ceil(PAGE));
            assert!(pages.iter().all(|r| !r), "{size}/{align}: fresh pages");
            fill(p, size, 2);
            assert!(holds(p, size, 2));
            // SAFETY: allocated above with `l`.
            unsafe { a.dealloc(p, l) };
        }
        // Alignment past a page: the program's memalign.
        let l = Layout::from_size_align(LibraryAlloc::LARGE, 2 * PAGE).unwrap();
        // SAFETY: a non-zero layout.
        let p = unsafe { a.alloc(l) };
        assert_eq!(p as usize % (2 * PAGE), 0);
        assert!(usable_size(p) >= LibraryAlloc::LARGE);
        // SAFETY: allocated above with `l`.
        unsafe { a.dealloc(p, l) };
    }

    /// Zeroed blocks read as zeros; a large one is a fresh mapping, not
    /// written (no page made resident by a memset).
    #[test]
    fn zeroed_blocks_read_zero_and_large_ones_are_not_written() {
        let a = LibraryAlloc;
        for size in [24, 5000, LibraryAlloc::LARGE - 8] {
            let l = Layout::from_size_align(size, 8).unwrap();
            // SAFETY: a non-zero layout.
            let p = unsafe { a.alloc_zeroed(l) };
            // SAFETY: a live block of `size` bytes.
            assert!(unsafe { std::slice::from_raw_parts(p, size) }
                .iter()
                .all(|b| *b == 0));
            // SAFETY: allocated above with `l`.
            unsafe { a.dealloc(p, l) };
        }
        let size = 1 << 20;
        let l = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: a non-zero layout.
        let p = unsafe { a.alloc_zeroed(l) };
        assert_eq!(p as usize % PAGE, 0);
        let pages = resident(p, size).expect("a mapping");
        assert!(pages.iter().all(|r| !r), "no page written");
        // SAFETY: a live block of `size` bytes.
        assert!(unsafe { std::slice::from_raw_parts(p, size) }
            .iter()
            .all(|b| *b == 0));
        // SAFETY: allocated above with `l`.
        unsafe { a.dealloc(p, l) };
    }

    /// Resizing across the threshold either way keeps the bytes and
    /// lands in the other kind of block.
    #[test]
    fn realloc_across_the_threshold_keeps_the_bytes_both_ways() {
        let a = LibraryAlloc;
        let small = Layout::from_size_align(1000, 32).unwrap();
        // SAFETY: a non-zero layout.
        let p = unsafe { a.alloc(small) };
        fill(p, 1000, 3);
        let big = LibraryAlloc::LARGE + PAGE;
        // SAFETY: a block of `small`, resized to a non-zero size.
        let q = unsafe { a.realloc(p, small, big) };
        assert!(!q.is_null());
        assert_eq!(q as usize % PAGE, 0, "a mapping");
        assert!(holds(q, 1000, 3));
        fill(q, big, 4);
        let large = Layout::from_size_align(big, 32).unwrap();
        // SAFETY: a block of `large`, resized to a non-zero size.
        let r = unsafe { a.realloc(q, large, 700) };
        assert!(!r.is_null());
        assert!(usable_size(r) >= 700, "malloc's block");
        assert_eq!(r as usize % 32, 0);
        assert!(holds(r, 700, 4));
        // SAFETY: a block of 700 bytes aligned to 32.
        unsafe { a.dealloc(r, Layout::from_size_align(700, 32).unwrap()) };
    }

    /// A large block resized to another large size is remapped: its
    /// bytes move with the pages (none copied: the pages it never
    /// touched stay non-resident), and one that shrinks keeps its
    /// address. (Allocating, copying and freeing writes every page of
    /// the new block and always moves.)
    #[test]
    fn large_realloc_remaps_the_block() {
        let a = LibraryAlloc;
        let size = 1 << 20;
        let l = Layout::from_size_align(size, 16).unwrap();
        // SAFETY: a non-zero layout.
        let p = unsafe { a.alloc(l) };
        fill(p, 100, 5);
        // SAFETY: a live block of `size` bytes; its last page.
        unsafe { p.add(size - 1).write(0xa5) };
        let grown = 4 << 20;
        // SAFETY: a block of `l`, resized to a non-zero size.
        let q = unsafe { a.realloc(p, l, grown) };
        assert!(!q.is_null());
        assert!(holds(q, 100, 5));
        // SAFETY: a live block of `grown` bytes.
        assert_eq!(unsafe { q.add(size - 1).read() }, 0xa5);
        let pages = resident(q, grown).expect("a mapping");
        let touched: Vec<usize> = (0..pages.len()).filter(|i| pages[*i]).collect();
        assert_eq!(touched, [0, size / PAGE - 1]);
        let l = Layout::from_size_align(grown, 16).unwrap();
        let shrunk = LibraryAlloc::LARGE + 10;
        // SAFETY: a block of `l`, resized to a non-zero size.
        let r = unsafe { a.realloc(q, l, shrunk) };
        assert_eq!(r, q, "shrunk in place");
        assert!(holds(r, 100, 5));
        // Within the same pages: the same block.
        let l = Layout::from_size_align(shrunk, 16).unwrap();
        // SAFETY: a block of `l`, resized to a non-zero size.
        let s = unsafe { a.realloc(r, l, LibraryAlloc::LARGE + 20) };
        assert_eq!(s, r);
        // SAFETY: a block of this layout.
        unsafe {
            a.dealloc(
                s,
                Layout::from_size_align(LibraryAlloc::LARGE + 20, 16).unwrap(),
            )
        };
    }

    /// Freeing gives each kind back where it came from: a large block's
    /// mapping is gone (and so are the pages a remap dropped); a small
    /// block is malloc's to hand out again (glibc's per-thread cache
    /// answers the same block for the same size at once).
    #[test]
    fn dealloc_gives_each_kind_back() {
        let code = in_child(|| {
            let a = LibraryAlloc;
            let l = Layout::from_size_align(LibraryAlloc::LARGE * 2, 16).unwrap();
            // SAFETY: a non-zero layout.
            let p = unsafe { a.alloc(l) };
            fill(p, l.size(), 6);
            // SAFETY: allocated above with `l`.
            unsafe { a.dealloc(p, l) };
            if resident(p, l.size()).is_some() || resident(p, PAGE).is_some() {
                return 1;
            }
            let big = Layout::from_size_align(8 * PAGE * 16, 16).unwrap();
            // SAFETY: a non-zero layout.
            let p = unsafe { a.alloc(big) };
            // SAFETY: a block of `big`, shrunk to a large size.
            let q = unsafe { a.realloc(p, big, LibraryAlloc::LARGE) };
            if q != p || resident(p, LibraryAlloc::LARGE).is_none() {
                return 2;
            }
            // The pages past the new size are unmapped.
            let past = LibraryAlloc::LARGE;
            // SAFETY: address arithmetic within the old block's range.
            if resident(unsafe { p.add(past) }, big.size() - past).is_some() {
                return 3;
            }
            // SAFETY: a block of this layout.
            unsafe { a.dealloc(q, Layout::from_size_align(past, 16).unwrap()) };
            if resident(q, PAGE).is_some() {
                return 4;
            }
            let small = Layout::from_size_align(200, 16).unwrap();
            // SAFETY: a non-zero layout.
            let p = unsafe { a.alloc(small) };
            // SAFETY: allocated above with `small`.
            unsafe { a.dealloc(p, small) };
            // SAFETY: a non-zero layout.
            let q = unsafe { a.alloc(small) };
            if q != p {
                return 5;
            }
            // SAFETY: allocated above with `small`.
            unsafe { a.dealloc(q, small) };
            0
        });
        assert_eq!(code, 0, "check {code} failed");
    }
}
