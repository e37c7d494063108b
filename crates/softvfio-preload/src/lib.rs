//! `libsoftvfio_preload.so`: the LD_PRELOAD front end of softvfio.
//!
//! Loaded into a dynamically linked program (`LD_PRELOAD`, or
//! `softvfio run --mode preload`), it serves the program's VFIO files inside
//! the program itself, with the same [`softvfio::frontend::Session`] as the
//! ptrace supervisor of `softvfio run`:
//!
//! - `open`, `open64`, `openat`, `openat64` and the fortified `__open_2`,
//!   `__open64_2`, `__openat_2`, `__openat64_2` of `/dev/vfio/vfio` and
//!   `/dev/vfio/<group>` open a container or a group; the program gets a
//!   real descriptor (an eventfd), so that `close`, `dup` and `poll` behave;
//! - `ioctl`, `pread`/`pread64`, `pwrite`/`pwrite64` on those descriptors
//!   go to the engine (a device fd from `VFIO_GROUP_GET_DEVICE_FD` is a new
//!   eventfd, with `O_CLOEXEC` as in the kernel);
//! - the fortified `__pread_chk` and `__pread64_chk` (what `pread` becomes
//!   under `_FORTIFY_SOURCE`, as in Debian's QEMU) are served as `pread`;
//! - `read`, `__read_chk`, `write`, `readv` and `writev` of an iommufd fault
//!   queue's descriptor (an eventfd too) are served by the engine, as 6.12's
//!   fault file answers; until the process makes a queue these hooks cost
//!   one load and pass every call on, and after it they take no lock for a
//!   descriptor that is no queue ([`streams`]; docs/IOMMUFD.md "Fault
//!   queues");
//! - `close`, `close_range`, `dup`, `dup2`, `dup3` and
//!   `fcntl(F_DUPFD[_CLOEXEC])` (and `fcntl64`) keep the descriptor table;
//!   the last close of an object releases it;
//! - `mmap`/`mmap64` of a device file map a BAR for trapped MMIO;
//!   `munmap`, `mremap`, `mprotect`, `mmap(MAP_FIXED)` over such a mapping
//!   are followed, and `sigaction`/`signal` of SIGSEGV are recorded while
//!   the library's fault handler is installed ([`mmio`], docs/MMIO.md);
//! - `open`/`fopen` of `/proc/self/status` (and `/proc/<own pid>/status`)
//!   serve a copy in which `VmLck` shows type1's locked-memory accounting
//!   instead of the mlocks that keep pinned pages resident.
//!
//! Everything else goes to the next definition (`dlsym(RTLD_NEXT)`).
//! The engine's own calls (it reads `/proc/self/maps`, the configuration
//! file...) come back through these functions; a thread-local "inside
//! softvfio" flag passes them straight on.
//!
//! User memory is this process's ([`softvfio::memory::host::HostMemory`],
//! read with `process_vm_readv`, so a bad pointer is `EFAULT`, not a
//! crash). The platform is the file named by `SOFTVFIO_CONFIG`, or the
//! reference platform. At exit, a process that opened VFIO files (or the
//! program `softvfio run` started) prints the end report of `softvfio run`
//! on stderr, unless `SOFTVFIO_QUIET` is set.
//!
//! Groups are exclusive across the processes of one `softvfio run`
//! (EBUSY, as the kernel answers), through [`claim`].
//!
//! `fork` and the exec family ([`exec`]): at the first one that happens
//! with VFIO files open, the engine leaves the process for a keeper
//! process ([`keeper`]) that every process of the program then shares, as
//! Linux shares open files; from then on this library forwards each VFIO
//! call there ([`forward`]). A program that never forks or execs with VFIO
//! files open keeps the engine in process (docs/DESIGN.md §5).
//! `posix_spawn`, `posix_spawnp`, `system`, `popen`/`pclose` and `vfork`
//! ([`spawn`]) whose child inherits a VFIO file are run by the library
//! (glibc's children exec through calls it cannot see).
//!
//! `syscall(2)` with the number of a call served here goes through that
//! call's hook, and `free`/`realloc`/`reallocarray`/`madvise` are watched
//! by the DMA sanitizer ([`memcalls`]).
//!
//! Limits: only calls through libc's exported functions (and `syscall`)
//! are seen, not libc-internal opens nor inline `syscall` instructions; a
//! descriptor closed that way stays in the table until its number is
//! reused by an open.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;

use libc::{off_t, size_t, ssize_t, FILE};

/// The library's large blocks are mappings of their own, not the
/// program's heap's (see [`real::LibraryAlloc`]).
#[global_allocator]
static ALLOC: real::LibraryAlloc = real::LibraryAlloc;

mod channel;
mod claim;
mod exec;
mod forward;
mod keeper;
mod memcalls;
mod mmio;
mod progmem;
mod real;
mod sanitize;
mod spawn;
mod state;
mod streams;

use real::Next;
use softvfio::sanitizer::StaleCause;
use state::{with_existing, with_state, OpenOutcome, TRACKED};

thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as running softvfio code: calls it makes into the
/// interposed functions pass straight through.
pub(crate) struct Inside(());

impl Inside {
    /// `None` when this thread is already inside (or is being torn down).
    pub(crate) fn enter() -> Option<Self> {
        INSIDE
            .try_with(|c| {
                if c.get() {
                    None
                } else {
                    c.set(true);
                    Some(Inside(()))
                }
            })
            .ok()
            .flatten()
    }
}

impl Inside {
    /// Marks this thread as softvfio's own for the rest of its life: the
    /// engine's pin workers (every call they make is the engine's, made
    /// while the pinning caller holds the session; memory/host/parallel.rs).
    pub(crate) fn mark_thread() {
        let _ = INSIDE.try_with(|c| c.set(true));
    }

    /// Is this thread running softvfio code (read from a signal handler:
    /// a const-initialized thread-local, no allocation)?
    pub(crate) fn is_set() -> bool {
        INSIDE.try_with(|c| c.get()).unwrap_or(true)
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let _ = INSIDE.try_with(|c| c.set(false));
    }
}

/// The program's own call, to pass on to the next definition.
struct Pass<F>(F);

impl<R, F: FnOnce() -> R> Pass<F> {
    fn call(self) -> R {
        let _out = Passing::new();
        (self.0)()
    }
}

/// Runs a hook body: inside softvfio (a call softvfio itself made) the
/// plain call runs instead; a panic in softvfio fails the call with `EIO`
/// and never unwinds into C.
fn hook<R, F: FnOnce() -> R>(failed: R, pass: F, body: impl FnOnce(Pass<F>) -> R) -> R {
    if keeper::IN_KEEPER.load(Ordering::Relaxed) {
        return pass();
    }
    let Some(inside) = Inside::enter() else {
        return pass();
    };
    let res = catch_unwind(AssertUnwindSafe(|| body(Pass(pass))));
    drop(inside);
    res.unwrap_or_else(|_| {
        real::set_errno(libc::EIO);
        failed
    })
}

/// Leaves "inside" while the program's own call is passed on (so that, for
/// example, an `open` forwarded to another preloaded library that calls
/// `open` again is seen as the program's).
pub(crate) struct Passing(bool);

impl Passing {
    pub(crate) fn new() -> Self {
        Passing(INSIDE.try_with(|c| c.replace(false)).unwrap_or(false))
    }
}

impl Drop for Passing {
    fn drop(&mut self) {
        let was = self.0;
        let _ = INSIDE.try_with(|c| c.set(was));
    }
}

/// The path argument of an open, when it is one we may serve: absolute,
/// valid UTF-8.
///
/// # Safety
/// `path` must be null or a NUL-terminated string that stays unchanged
/// while the returned reference is used (an open's path during the call).
unsafe fn path_of<'a>(path: *const c_char) -> Option<&'a str> {
    if path.is_null() {
        return None;
    }
    // SAFETY: NUL-terminated and live for 'a (this function's contract).
    let s = unsafe { CStr::from_ptr(path) };
    s.to_str().ok().filter(|p| p.starts_with('/'))
}

/// Is `path` this process's `/proc/.../status`?
fn is_own_status(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/proc/") else {
        return false;
    };
    let pid = std::process::id().to_string();
    let rest = rest
        .strip_prefix("self/")
        .or_else(|| rest.strip_prefix("thread-self/"))
        .or_else(|| rest.strip_prefix(&pid).and_then(|r| r.strip_prefix('/')));
    match rest {
        Some("status") => true,
        Some(r) => r
            .strip_prefix("task/")
            .and_then(|r| r.strip_suffix("/status"))
            .is_some_and(|tid| tid.parse::<u32>().is_ok()),
        None => false,
    }
}

/// A rewritten status file as a memfd, when a session exists.
fn status_fd(cloexec: bool) -> Option<Result<c_int, c_int>> {
    let text = match with_existing(|st| st.status_text()) {
        Some(text) => text?,
        // After the hand-off the keeper holds the accounting.
        None if forward::attached() => forward::status_text()?,
        None => return None,
    };
    Some(real::memfd_with(text.as_bytes(), cloexec))
}

/// Is `path` a file of a tmpfs (the generated sysfs tree) rather than of
/// sysfs itself?
fn is_on_tmpfs(path: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(path) else {
        return false;
    };
    // SAFETY: `c` is NUL-terminated; `st` is a live, writable statfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    r == 0 && st.f_type == libc::TMPFS_MAGIC
}

/// A platform device's sysfs `config` opened for reading: a memfd with the
/// device model's live config space (docs/HOSTVIEW.md).
fn sysfs_config_fd(path: &str, flags: c_int, cloexec: bool) -> Option<Result<c_int, c_int>> {
    if !path.starts_with("/sys/")
        || !path.ends_with("/config")
        || flags & libc::O_ACCMODE != libc::O_RDONLY
    {
        return None;
    }
    // Only the file of the generated tree (a tmpfs, laid by `softvfio
    // run`): with the library used alone, or SOFTVFIO_HOSTVIEW=0, the path
    // is the host's own device.
    if !is_on_tmpfs(path) {
        return None;
    }
    // Before the session exists the device models are at power-on, which
    // is what the mounted tree's snapshot holds: no need to start one.
    let bytes = with_existing(|st| {
        let built = st.platform();
        let view = softvfio_platform::hostview::HostView::of(built);
        let dev = built.device(view.config_device(path)?)?;
        Some(dev.config_bytes())
    })??;
    Some(real::memfd_with(&bytes, cloexec))
}

fn fail<T: From<i8>>(e: c_int) -> T {
    // A call that met the hand-off to the keeper half way (rare: another
    // thread forked or exec'd meanwhile) asks to be retried.
    real::set_errno(if e == state::HANDED_OFF {
        libc::EAGAIN
    } else {
        e
    });
    T::from(-1)
}

/// The common part of every open: serve VFIO paths and our status file;
/// else pass on, and drop a stale table entry for the number it returns.
///
/// # Safety
/// `path` as for [`path_of`], for the duration of the call.
unsafe fn do_open(path: *const c_char, flags: c_int, pass: Pass<impl FnOnce() -> c_int>) -> c_int {
    let saved = real::errno();
    let cloexec = flags & libc::O_CLOEXEC != 0;
    // SAFETY: this function's contract.
    if let Some(p) = unsafe { path_of(path) } {
        if (p.starts_with("/dev/vfio/") || p == "/dev/iommu") && forward::attached() {
            match forward::open(p, cloexec) {
                Ok(None) => {}
                Ok(Some(fd)) => {
                    real::set_errno(saved);
                    return fd;
                }
                Err(e) => return fail(e),
            }
        } else if p.starts_with("/dev/vfio/") || p == "/dev/iommu" {
            let res = match with_state(|st| st.open(p, cloexec)) {
                Err(state::HANDED_OFF) => match forward::open(p, cloexec) {
                    Ok(None) => Ok(OpenOutcome::NotOurs),
                    Ok(Some(fd)) => Ok(OpenOutcome::Fd(fd)),
                    Err(e) => Err(e),
                },
                r => r,
            };
            match res {
                Ok(OpenOutcome::NotOurs) => {}
                Ok(OpenOutcome::Fd(fd)) => {
                    real::set_errno(saved);
                    return fd;
                }
                Ok(OpenOutcome::Error(e)) | Err(e) => return fail(e),
            }
        } else if let Some(res) = sysfs_config_fd(p, flags, cloexec) {
            match res {
                Ok(fd) => {
                    real::set_errno(saved);
                    return fd;
                }
                Err(e) => return fail(e),
            }
        } else if is_own_status(p) {
            match status_fd(cloexec) {
                None => {}
                Some(Ok(fd)) => {
                    real::set_errno(saved);
                    return fd;
                }
                Some(Err(e)) => return fail(e),
            }
        }
    }
    let fd = pass.call();
    // Only a number the table holds (its bit set) can be a stale entry.
    if fd >= 0 && TRACKED.load(Ordering::Relaxed) > 0 && streams::may_be_ours(fd) {
        let e = real::errno();
        if forward::attached() {
            forward::forget(fd);
        }
        with_existing(|st| st.forget(fd));
        real::set_errno(e);
    }
    fd
}

/// Every open-family hook. Only absolute paths are served (relative ones
/// are never VFIO's), so `openat`'s dirfd plays no part.
///
/// # Safety
/// `path` as for [`path_of`], for the duration of the call.
unsafe fn open_hook(path: *const c_char, flags: c_int, pass: impl FnOnce() -> c_int) -> c_int {
    // SAFETY: this function's contract.
    hook(-1, pass, |pass| unsafe { do_open(path, flags, pass) })
}

/// `struct stat` of the character device node `major:minor` as devtmpfs
/// answers it (the permission bits `hostview::node_perm`'s, root's, one
/// link).
fn node_stat(major: u32, minor: u32) -> libc::stat {
    // SAFETY: `struct stat` is plain data; all zeros is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    st.st_mode = libc::S_IFCHR | softvfio_platform::hostview::node_perm(major, minor);
    st.st_nlink = 1;
    st.st_rdev = libc::makedev(major, minor);
    st.st_blksize = 4096;
    st
}

/// `stat` of a `/dev` node the platform serves: `/dev/vfio/vfio`,
/// `/dev/iommu`, a group's `/dev/vfio/<id>`, a device cdev
/// `/dev/vfio/devices/vfioN` as sysfs `vfio-dev/vfioN/dev` says (QEMU
/// compares the two before it opens the cdev): `hostview::dev_node`'s
/// numbers. `None` for other paths.
fn cdev_stat(path: &str) -> Option<libc::stat> {
    path_node(path).map(|(major, minor)| node_stat(major, minor))
}

/// The `/dev` node `(major, minor)` the platform serves at `path` (see
/// [`cdev_stat`]).
fn path_node(path: &str) -> Option<(u32, u32)> {
    use softvfio_platform::hostview::{IOMMUFD_MINOR, MISC_MAJOR, VFIO_CONTAINER_MINOR};
    // Every other path goes on without the state lock.
    if !path.starts_with("/dev/vfio/") && path != "/dev/iommu" {
        return None;
    }
    match with_state(|st| st.node_of_path(path)) {
        Ok(node) => node.map(|(major, minor, _)| (major, minor)),
        // After the hand-off (or during it) the keeper knows.
        Err(_) if forward::attached() => match path {
            "/dev/vfio/vfio" => Some((MISC_MAJOR, VFIO_CONTAINER_MINOR)),
            "/dev/iommu" => Some((MISC_MAJOR, IOMMUFD_MINOR)),
            _ => keeper_node(path),
        },
        Err(_) => None,
    }
}

/// `struct statx` of the node `major:minor` asked with `asked`, as Linux
/// 6.12 answers for a devtmpfs node (`hostview::devtmpfs_statx_mask`); the
/// times and the mount id stay zero (there is no node to read them from).
fn node_statx(major: u32, minor: u32, asked: u32) -> libc::statx {
    use softvfio_platform::hostview::{devtmpfs_statx_mask, node_perm, DEVTMPFS_STATX_ATTRIBUTES};
    // SAFETY: `struct statx` is plain data; all zeros is a valid value.
    let mut x: libc::statx = unsafe { std::mem::zeroed() };
    x.stx_mask = devtmpfs_statx_mask(asked);
    x.stx_attributes_mask = DEVTMPFS_STATX_ATTRIBUTES;
    x.stx_blksize = 4096;
    x.stx_nlink = 1;
    x.stx_mode = (libc::S_IFCHR | node_perm(major, minor)) as u16;
    x.stx_rdev_major = major;
    x.stx_rdev_minor = minor;
    x
}

/// After the hand-off: a group's or cdev's node by path, as the keeper's
/// platform has it.
fn keeper_node(path: &str) -> Option<(u32, u32)> {
    let number = |digits: &str| -> Option<u32> {
        let ok = !digits.is_empty()
            && digits.bytes().all(|c| c.is_ascii_digit())
            && !(digits.len() > 1 && digits.starts_with('0'));
        ok.then(|| digits.parse().ok()).flatten()
    };
    if let Some(n) = path.strip_prefix("/dev/vfio/devices/vfio").and_then(number) {
        let count = forward::node(0, 0)?.1;
        return ((n as usize) < count).then_some((softvfio_platform::hostview::VFIO_CDEV_MAJOR, n));
    }
    let id = path.strip_prefix("/dev/vfio/").and_then(number)?;
    forward::node(forward::op::NODE_GROUP, u64::from(id))?.0
}

/// The `/dev` node `(major, minor)` descriptor `fd` was opened from, when
/// it is one of ours.
fn fd_node(fd: c_int) -> Option<(u32, u32)> {
    // Not one of our objects' numbers: no lock (see `streams`).
    if !streams::may_be_ours(fd) {
        return None;
    }
    let keeper =
        |fd| forward::key_of(fd).and_then(|key| forward::node(forward::op::NODE_OBJECT, key)?.0);
    if forward::attached() {
        return keeper(fd);
    }
    match with_state(|st| st.node_of(fd)) {
        Err(state::HANDED_OFF) => keeper(fd),
        r => r.ok().flatten(),
    }
}

/// The `/dev` node a stat-family call asks about, and whether it asks
/// about `dirfd` itself (the empty path of `AT_EMPTY_PATH`) rather than a
/// served absolute `path`.
///
/// # Safety
/// `path` NUL-terminated or null.
unsafe fn node_asked(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
) -> (bool, Option<(u32, u32)>) {
    // SAFETY: this function's contract.
    let fd_itself = unsafe { empty_path(path, flags) };
    let node = if fd_itself {
        fd_node(dirfd)
    } else {
        // SAFETY: as above.
        unsafe { path_of(path) }.and_then(path_node)
    };
    (fd_itself, node)
}

/// Is this the empty path of `AT_EMPTY_PATH` (the descriptor itself; a
/// NULL path too, as since Linux 6.11)?
///
/// # Safety
/// `path` NUL-terminated or null.
unsafe fn empty_path(path: *const c_char, flags: c_int) -> bool {
    // SAFETY: a non-null path is NUL-terminated (this function's contract).
    flags & libc::AT_EMPTY_PATH != 0 && (path.is_null() || unsafe { *path } == 0)
}

/// `fstatat`/`fstatat64`: a served absolute path as [`stat_hook`]; the
/// empty path of `AT_EMPTY_PATH` on a descriptor of a `/dev` node, that
/// node's stat after the real call (on the underlying file) has checked
/// the flags.
///
/// # Safety
/// As libc's `fstatat`, `pass` that call.
unsafe fn fstatat_hook(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat,
    flags: c_int,
    pass: impl FnOnce() -> c_int,
) -> c_int {
    hook(-1, pass, |pass| {
        // SAFETY: the caller's path (this function's contract).
        let (fd_itself, node) = unsafe { node_asked(dirfd, path, flags) };
        let Some((major, minor)) = node else {
            return pass.call();
        };
        if buf.is_null() {
            return fail(libc::EFAULT);
        }
        if fd_itself {
            let r = pass.call();
            if r != 0 {
                return r;
            }
        }
        // SAFETY: `buf` is the caller's writable `struct stat`.
        unsafe { buf.write(node_stat(major, minor)) };
        0
    })
}

/// # Safety
/// As libc's `statx`.
#[no_mangle]
pub unsafe extern "C" fn statx(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mask: c_uint,
    buf: *mut libc::statx,
) -> c_int {
    let pass = || {
        // SAFETY: the program's arguments go on unchanged.
        unsafe { real::statx(dirfd, path, flags, mask, buf) }
    };
    hook(-1, pass, |pass| {
        // SAFETY: the program's path (libc's contract).
        let (fd_itself, node) = unsafe { node_asked(dirfd, path, flags) };
        let Some((major, minor)) = node else {
            return pass.call();
        };
        if buf.is_null() {
            return fail(libc::EFAULT);
        }
        // The kernel's checks of the flags and mask (EINVAL) first: the
        // descriptor's own call, or the same flags and mask on "/".
        let r = if fd_itself {
            pass.call()
        } else {
            // SAFETY: `buf` is the caller's writable `struct statx`.
            unsafe { real::statx(libc::AT_FDCWD, c"/".as_ptr(), flags, mask, buf) }
        };
        if r != 0 {
            return r;
        }
        // SAFETY: `buf` is the caller's writable `struct statx`.
        unsafe { buf.write(node_statx(major, minor, mask)) };
        0
    })
}

/// `fstat` of a descriptor opened from a `/dev` node (QEMU's `open_cdev`
/// compares its `st_rdev` with sysfs before it uses the descriptor; a
/// program may compare a container's or group's with its path's): that
/// node's stat, as [`cdev_stat`] answers for the path.
///
/// # Safety
/// `buf` a writable `struct stat` or null.
unsafe fn fstat_hook(fd: c_int, buf: *mut libc::stat, pass: impl FnOnce() -> c_int) -> c_int {
    hook(-1, pass, |pass| {
        match fd_node(fd).map(|(major, minor)| node_stat(major, minor)) {
            Some(_) if buf.is_null() => fail(libc::EFAULT),
            Some(st) => {
                // SAFETY: `buf` is the caller's writable `struct stat`.
                unsafe { buf.write(st) };
                0
            }
            None => pass.call(),
        }
    })
}

/// # Safety
/// As libc's `fstat`.
#[no_mangle]
pub unsafe extern "C" fn fstat(fd: c_int, buf: *mut libc::stat) -> c_int {
    // SAFETY: the program's arguments go on unchanged.
    unsafe { fstat_hook(fd, buf, || real::fstat(&real::FSTAT, fd, buf)) }
}

/// # Safety
/// As libc's `fstat64`.
#[no_mangle]
pub unsafe extern "C" fn fstat64(fd: c_int, buf: *mut libc::stat) -> c_int {
    // SAFETY: the program's arguments go on unchanged.
    unsafe { fstat_hook(fd, buf, || real::fstat(&real::FSTAT64, fd, buf)) }
}

/// Every stat-family hook: served cdev paths get [`cdev_stat`]'s answer.
///
/// # Safety
/// `path` as for [`path_of`]; `buf` a writable `struct stat` or null.
unsafe fn stat_hook(
    path: *const c_char,
    buf: *mut libc::stat,
    pass: impl FnOnce() -> c_int,
) -> c_int {
    hook(-1, pass, |pass| {
        // SAFETY: this function's contract.
        if let Some(st) = unsafe { path_of(path) }.and_then(cdev_stat) {
            if buf.is_null() {
                return fail(libc::EFAULT);
            }
            // SAFETY: `buf` is the caller's writable `struct stat`.
            unsafe { buf.write(st) };
            return 0;
        }
        pass.call()
    })
}

/// # Safety
/// As libc's `stat`.
#[no_mangle]
pub unsafe extern "C" fn stat(path: *const c_char, buf: *mut libc::stat) -> c_int {
    // SAFETY: the program's arguments go on unchanged.
    unsafe { stat_hook(path, buf, || real::stat(&real::STAT, path, buf)) }
}

/// # Safety
/// As libc's `stat64`.
#[no_mangle]
pub unsafe extern "C" fn stat64(path: *const c_char, buf: *mut libc::stat) -> c_int {
    // SAFETY: the program's arguments go on unchanged.
    unsafe { stat_hook(path, buf, || real::stat(&real::STAT64, path, buf)) }
}

/// # Safety
/// As libc's `lstat`.
#[no_mangle]
pub unsafe extern "C" fn lstat(path: *const c_char, buf: *mut libc::stat) -> c_int {
    // SAFETY: the program's arguments go on unchanged.
    unsafe { stat_hook(path, buf, || real::stat(&real::LSTAT, path, buf)) }
}

/// # Safety
/// As libc's `lstat64`.
#[no_mangle]
pub unsafe extern "C" fn lstat64(path: *const c_char, buf: *mut libc::stat) -> c_int {
    // SAFETY: the program's arguments go on unchanged.
    unsafe { stat_hook(path, buf, || real::stat(&real::LSTAT64, path, buf)) }
}

/// # Safety
/// As libc's `fstatat`. Only absolute paths are served.
#[no_mangle]
pub unsafe extern "C" fn fstatat(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat,
    flags: c_int,
) -> c_int {
    // SAFETY: the program's arguments go on unchanged.
    unsafe {
        fstatat_hook(dirfd, path, buf, flags, || {
            real::fstatat(&real::FSTATAT, dirfd, path, buf, flags)
        })
    }
}

/// # Safety
/// As libc's `fstatat64`.
#[no_mangle]
pub unsafe extern "C" fn fstatat64(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat,
    flags: c_int,
) -> c_int {
    // SAFETY: the program's arguments go on unchanged.
    unsafe {
        fstatat_hook(dirfd, path, buf, flags, || {
            real::fstatat(&real::FSTATAT64, dirfd, path, buf, flags)
        })
    }
}

// The variadic mode argument of open/openat is read as a plain third
// (fourth) argument: on x86-64 and aarch64 Linux, variadic integer
// arguments travel in the same registers as named ones (defining C-variadic
// functions needs an unstable Rust feature). It is only meaningful with
// O_CREAT/O_TMPFILE, and passed on unchanged.

/// # Safety
/// As libc's `open`.
#[no_mangle]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    // SAFETY: the program passed libc's arguments; they go on unchanged.
    unsafe { open_hook(path, flags, || real::open(&real::OPEN, path, flags, mode)) }
}

/// # Safety
/// As libc's `open64`.
#[no_mangle]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    // SAFETY: the program passed libc's arguments; they go on unchanged.
    unsafe { open_hook(path, flags, || real::open(&real::OPEN64, path, flags, mode)) }
}

/// # Safety
/// As libc's `openat`.
#[no_mangle]
pub unsafe extern "C" fn openat(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    // SAFETY: the program passed libc's arguments; they go on unchanged.
    unsafe {
        open_hook(path, flags, || {
            real::openat(&real::OPENAT, dirfd, path, flags, mode)
        })
    }
}

/// # Safety
/// As libc's `openat64`.
#[no_mangle]
pub unsafe extern "C" fn openat64(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    // SAFETY: the program passed libc's arguments; they go on unchanged.
    unsafe {
        open_hook(path, flags, || {
            real::openat(&real::OPENAT64, dirfd, path, flags, mode)
        })
    }
}

/// # Safety
/// As glibc's `__open_2` (fortified `open` without a mode).
#[no_mangle]
pub unsafe extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: the program passed libc's arguments; they go on unchanged.
    unsafe { open_hook(path, flags, || real::open_2(&real::OPEN_2, path, flags)) }
}

/// # Safety
/// As glibc's `__open64_2`.
#[no_mangle]
pub unsafe extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: the program passed libc's arguments; they go on unchanged.
    unsafe { open_hook(path, flags, || real::open_2(&real::OPEN64_2, path, flags)) }
}

/// # Safety
/// As glibc's `__openat_2`.
#[no_mangle]
pub unsafe extern "C" fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: the program passed libc's arguments; they go on unchanged.
    unsafe {
        open_hook(path, flags, || {
            real::openat_2(&real::OPENAT_2, dirfd, path, flags)
        })
    }
}

/// # Safety
/// As glibc's `__openat64_2`.
#[no_mangle]
pub unsafe extern "C" fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: the program passed libc's arguments; they go on unchanged.
    unsafe {
        open_hook(path, flags, || {
            real::openat_2(&real::OPENAT64_2, dirfd, path, flags)
        })
    }
}

/// `fopen` of our status file: libc's own `fopen` opens with an internal
/// call this library cannot see, so it is served here.
///
/// # Safety
/// `path` and `mode` as libc's `fopen` takes them.
unsafe fn fopen_hook(next: &'static Next, path: *const c_char, mode: *const c_char) -> *mut FILE {
    // SAFETY: the caller's arguments, unchanged (this function's contract).
    let pass = || unsafe { real::fopen(next, path, mode) };
    hook(std::ptr::null_mut(), pass, |pass| {
        // SAFETY: `path` is fopen's NUL-terminated path (contract).
        let Some(p) = (unsafe { path_of(path) }) else {
            return pass.call();
        };
        // SAFETY: fopen's mode is a NUL-terminated string (or null).
        let m = (!mode.is_null()).then(|| unsafe { CStr::from_ptr(mode) }.to_bytes());
        // fopen's "e" flag asks for O_CLOEXEC.
        let cloexec = m.is_some_and(|m| m.contains(&b'e'));
        let served = if is_own_status(p) {
            status_fd(cloexec)
        } else if m.is_some_and(|m| m.starts_with(b"r") && !m.contains(&b'+')) {
            sysfs_config_fd(p, libc::O_RDONLY, cloexec)
        } else {
            None
        };
        match served {
            None => pass.call(),
            Some(Ok(fd)) => {
                // SAFETY: `mode` is fopen's NUL-terminated mode (contract).
                let f = unsafe { real::fdopen(fd, mode) };
                if f.is_null() {
                    let e = real::errno();
                    real::close_own(fd);
                    real::set_errno(e);
                }
                f
            }
            Some(Err(e)) => {
                real::set_errno(e);
                std::ptr::null_mut()
            }
        }
    })
}

/// # Safety
/// As libc's `fopen`.
#[no_mangle]
pub unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut FILE {
    // SAFETY: the program passed libc's arguments; they go on unchanged.
    unsafe { fopen_hook(&real::FOPEN, path, mode) }
}

/// # Safety
/// As libc's `fopen64`.
#[no_mangle]
pub unsafe extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut FILE {
    // SAFETY: the program passed libc's arguments; they go on unchanged.
    unsafe { fopen_hook(&real::FOPEN64, path, mode) }
}

/// The object behind `fd` when it is one of ours (cheap when we have none).
fn ours(fd: c_int) -> Option<u64> {
    if TRACKED.load(Ordering::Relaxed) == 0 {
        return None;
    }
    // A number never ours is answered without the table's lock (a long
    // engine call or the fork window holds it): crate::streams.
    if !streams::may_be_ours(fd) {
        return None;
    }
    if forward::attached() {
        return forward::key_of(fd);
    }
    // The engine may leave while this thread waits for the state lock.
    with_existing(|st| st.key_of(fd))
        .flatten()
        .or_else(|| forward::key_of(fd).filter(|_| forward::attached()))
}

/// # Safety
/// As libc's `ioctl`; the third argument is read as an unsigned long (an
/// integer or a pointer, as every VFIO ioctl takes).
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: c_ulong) -> c_int {
    // SAFETY: the program's arguments, passed on unchanged.
    let pass = || unsafe { real::ioctl(fd, request, arg) };
    hook(-1, pass, |pass| {
        let Some(key) = ours(fd) else {
            return pass.call();
        };
        // glibc's ioctl is no cancellation point; the engine's work and the
        // keeper's messages have some.
        real::without_cancel(|| vfio_ioctl(key, request, arg))
    })
}

/// A VFIO `ioctl` of the program on object `key` (the `ioctl` hook's).
fn vfio_ioctl(key: u64, request: c_ulong, arg: c_ulong) -> c_int {
    let saved = real::errno();
    // The request is an unsigned int in the kernel.
    let request = u64::from(request as u32);
    // c_ulong is u64 here, u32 on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let arg = u64::from(arg);
    let res = if forward::attached() {
        Ok(forward::ioctl(key, request, arg))
    } else {
        match with_state(|st| st.ioctl(key, request, arg)) {
            Err(state::HANDED_OFF) => Ok(forward::ioctl(key, request, arg)),
            r => r,
        }
    };
    match res {
        Ok(Ok(v)) => {
            real::set_errno(saved);
            c_int::try_from(v).unwrap_or(c_int::MAX)
        }
        Ok(Err(e)) | Err(e) => fail(e),
    }
}

fn rw_hook(
    fd: c_int,
    buf: u64,
    len: size_t,
    off: off_t,
    write: bool,
    pass: impl FnOnce() -> ssize_t,
) -> ssize_t {
    hook(-1, pass, |pass| {
        let Some(key) = ours(fd) else {
            return pass.call();
        };
        if off < 0 {
            return fail(libc::EINVAL);
        }
        let saved = real::errno();
        if forward::attached() {
            return match forward::rw(key, buf, len as u64, off as u64, write) {
                Ok(n) => {
                    real::set_errno(saved);
                    n as ssize_t
                }
                Err(e) => fail(e),
            };
        }
        let res = match with_state(|st| {
            if write {
                st.pwrite(key, buf, len as u64, off as u64)
            } else {
                st.pread(key, buf, len as u64, off as u64)
            }
        }) {
            Err(state::HANDED_OFF) => Ok(forward::rw(key, buf, len as u64, off as u64, write)),
            r => r,
        };
        match res {
            Ok(Ok(n)) => {
                real::set_errno(saved);
                n as ssize_t
            }
            Ok(Err(e)) | Err(e) => fail(e),
        }
    })
}

/// `read(2)`/`write(2)` on a descriptor: the engine serves them on the
/// objects that have them (a fault queue, whose eventfd would block or
/// count); every other call goes on. Until this process made a fault queue
/// the hook costs one load ([`streams::SERVED_STREAMS`]); after, a
/// descriptor that is no queue costs one more and takes no lock (the
/// table's lock is asked only for a number in the lock-free set:
/// [`streams`]).
fn stream_hook(
    fd: c_int,
    buf: u64,
    len: size_t,
    write: bool,
    pass: impl FnOnce() -> ssize_t,
) -> ssize_t {
    if !streams::may_be_served(fd) {
        return pass();
    }
    // Taken before `ours`: its lock may set errno (a contended futex), and
    // a call that goes on must leave the program's errno as it was.
    let saved = real::errno();
    hook(-1, pass, |pass| {
        let Some(key) = ours(fd) else {
            real::set_errno(saved);
            return pass.call();
        };
        match stream_segment(key, buf, len as u64, write) {
            None => {
                real::set_errno(saved);
                pass.call()
            }
            Some(Ok(n)) => {
                real::set_errno(saved);
                n as ssize_t
            }
            Some(Err(e)) => fail(e),
        }
    })
}

/// One served `read`/`write` segment on our object `key`: `None` when the
/// engine does not serve the object.
fn stream_segment(key: u64, buf: u64, len: u64, write: bool) -> Option<Result<i64, c_int>> {
    if forward::attached() {
        return forward::stream_rw(key, buf, len, write);
    }
    match with_state(|st| st.stream_rw(key, buf, len, write)) {
        Err(state::HANDED_OFF) => forward::stream_rw(key, buf, len, write),
        Err(e) => Some(Err(e)),
        Ok(r) => r,
    }
}

/// `readv`/`writev` on a descriptor: on a served object segment by segment,
/// as the kernel loops for a file with only `read`/`write` methods (empty
/// segments skipped, a short or failed one ends the call, an error only
/// when nothing was done); every other call goes on.
fn stream_vectored_hook(
    fd: c_int,
    iov: u64,
    cnt: c_int,
    write: bool,
    pass: impl FnOnce() -> ssize_t,
) -> ssize_t {
    if !streams::may_be_served(fd) {
        return pass();
    }
    // As in `stream_hook`: the program's errno for a call that goes on.
    let errno_before = real::errno();
    hook(-1, pass, |pass| {
        let Some(key) = ours(fd) else {
            real::set_errno(errno_before);
            return pass.call();
        };
        // A zero-length call changes nothing: it asks whether the object
        // is served.
        if stream_segment(key, 0, 0, write).is_none() {
            real::set_errno(errno_before);
            return pass.call();
        }
        if !(0..=libc::UIO_MAXIOV).contains(&cnt) {
            return fail(libc::EINVAL);
        }
        let mut raw = vec![0u8; cnt as usize * 16];
        if mmio::read_own(iov, &mut raw).is_err() {
            return fail(libc::EFAULT);
        }
        let saved = real::errno();
        let mut done: i64 = 0;
        for seg in raw.chunks_exact(16) {
            let base = u64::from_ne_bytes(seg[0..8].try_into().unwrap_or([0; 8]));
            let len = u64::from_ne_bytes(seg[8..16].try_into().unwrap_or([0; 8]));
            if len == 0 {
                continue;
            }
            match stream_segment(key, base, len, write) {
                Some(Ok(n)) => {
                    done += n;
                    if (n as u64) < len {
                        break;
                    }
                }
                Some(Err(e)) if done == 0 => return fail(e),
                _ => break,
            }
        }
        real::set_errno(saved);
        done as ssize_t
    })
}

/// # Safety
/// As libc's `readv`.
#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t {
    stream_vectored_hook(fd, iov as u64, cnt, false, || {
        // SAFETY: the program's arguments, passed on unchanged.
        unsafe { real::iov_call(&real::READV, fd, iov, cnt) }
    })
}

/// # Safety
/// As libc's `writev`.
#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t {
    stream_vectored_hook(fd, iov as u64, cnt, true, || {
        // SAFETY: the program's arguments, passed on unchanged.
        unsafe { real::iov_call(&real::WRITEV, fd, iov, cnt) }
    })
}

/// # Safety
/// As libc's `read`.
#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    stream_hook(fd, buf as u64, n, false, || {
        // SAFETY: the program's buffer and length, passed on unchanged.
        unsafe { real::read(fd, buf, n) }
    })
}

/// glibc's fortified `read`: a read larger than the buffer goes to the
/// next definition, which aborts the program as it would without softvfio.
///
/// # Safety
/// As glibc's `__read_chk`: `buf` valid for writes of `buflen` bytes.
#[no_mangle]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
) -> ssize_t {
    // SAFETY: the program's arguments, passed on unchanged.
    let pass = || unsafe { real::read_chk(fd, buf, n, buflen) };
    if n > buflen {
        return pass();
    }
    stream_hook(fd, buf as u64, n, false, pass)
}

/// # Safety
/// As libc's `write`.
#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    stream_hook(fd, buf as u64, n, true, || {
        // SAFETY: the program's buffer and length, passed on unchanged.
        unsafe { real::write(fd, buf, n) }
    })
}

/// # Safety
/// As libc's `pread`.
#[no_mangle]
pub unsafe extern "C" fn pread(fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t {
    rw_hook(fd, buf as u64, n, off, false, || {
        // SAFETY: the program's buffer and length, passed on unchanged.
        unsafe { real::pread(&real::PREAD, fd, buf, n, off) }
    })
}

/// # Safety
/// As libc's `pread64`.
#[no_mangle]
pub unsafe extern "C" fn pread64(fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t {
    rw_hook(fd, buf as u64, n, off, false, || {
        // SAFETY: the program's buffer and length, passed on unchanged.
        unsafe { real::pread(&real::PREAD64, fd, buf, n, off) }
    })
}

/// glibc's fortified `pread` (`_FORTIFY_SOURCE` turns `pread` into this
/// when the buffer's size is known at compile time): a read larger than the
/// buffer goes to the next definition, which aborts the program as it would
/// without softvfio.
///
/// # Safety
/// As glibc's `__pread_chk`: `buf` valid for writes of `buflen` bytes.
unsafe fn pread_chk_hook(
    next: &'static Next,
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    off: off_t,
    buflen: size_t,
) -> ssize_t {
    // SAFETY: the program's arguments, passed on unchanged (this
    // function's contract).
    let pass = || unsafe { real::pread_chk(next, fd, buf, n, off, buflen) };
    if n > buflen {
        return pass();
    }
    rw_hook(fd, buf as u64, n, off, false, pass)
}

/// # Safety
/// As glibc's `__pread_chk`.
#[no_mangle]
pub unsafe extern "C" fn __pread_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    off: off_t,
    buflen: size_t,
) -> ssize_t {
    // SAFETY: the program's arguments (this function's contract).
    unsafe { pread_chk_hook(&real::PREAD_CHK, fd, buf, n, off, buflen) }
}

/// # Safety
/// As glibc's `__pread64_chk`.
#[no_mangle]
pub unsafe extern "C" fn __pread64_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    off: off_t,
    buflen: size_t,
) -> ssize_t {
    // SAFETY: the program's arguments (this function's contract).
    unsafe { pread_chk_hook(&real::PREAD64_CHK, fd, buf, n, off, buflen) }
}

/// # Safety
/// As libc's `pwrite`.
#[no_mangle]
pub unsafe extern "C" fn pwrite(fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t {
    rw_hook(fd, buf as u64, n, off, true, || {
        // SAFETY: the program's buffer and length, passed on unchanged.
        unsafe { real::pwrite(&real::PWRITE, fd, buf, n, off) }
    })
}

/// # Safety
/// As libc's `pwrite64`.
#[no_mangle]
pub unsafe extern "C" fn pwrite64(fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t {
    rw_hook(fd, buf as u64, n, off, true, || {
        // SAFETY: the program's buffer and length, passed on unchanged.
        unsafe { real::pwrite(&real::PWRITE64, fd, buf, n, off) }
    })
}

/// # Safety
/// As libc's `close`.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let pass = || real::close(fd);
    hook(-1, pass, |pass| {
        if forward::is_connection(fd) {
            return fail(libc::EBADF);
        }
        if ours(fd).is_some() {
            let saved = real::errno();
            if forward::attached() {
                forward::forget(fd);
            } else {
                with_existing(|st| st.forget(fd));
            }
            real::set_errno(saved);
        }
        pass.call()
    })
}

/// # Safety
/// As glibc's `close_range`. With `CLOSE_RANGE_CLOEXEC` nothing is
/// closed; with `CLOSE_RANGE_UNSHARE` the table closed is this process's
/// own (unshared) one, which is the one we keep.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let pass = || real::close_range(first, last, flags);
    hook(-1, pass, |pass| {
        let cloexec_only = flags as c_uint & libc::CLOSE_RANGE_CLOEXEC != 0;
        // After the hand-off this process's connection to the keeper is
        // ours, not the program's: a range over it (close_range(3, ~0U))
        // closes around it, so the closes of its VFIO files still reach
        // the keeper.
        let sock = forward::connection_fd()
            .and_then(|s| c_uint::try_from(s).ok())
            .filter(|s| !cloexec_only && first <= last && (first..=last).contains(s));
        let r = match sock {
            Some(s) => {
                let below = if s > first {
                    real::close_range(first, s - 1, flags)
                } else {
                    0
                };
                if below == 0 && s < last {
                    real::close_range(s + 1, last, flags)
                } else {
                    below
                }
            }
            None => pass.call(),
        };
        if r == 0 && !cloexec_only && TRACKED.load(Ordering::Relaxed) > 0 {
            let saved = real::errno();
            // Descriptor numbers are ints: a `last` beyond them (~0U, as
            // "every descriptor above") covers them all.
            let first = c_int::try_from(first).unwrap_or(c_int::MAX);
            let last = c_int::try_from(last).unwrap_or(c_int::MAX);
            if forward::attached() {
                forward::forget_range(first, last);
            } else {
                with_existing(|st| st.forget_range(first, last));
            }
            real::set_errno(saved);
        }
        r
    })
}

/// After a successful dup of `old` to `new`, the table follows.
fn after_dup(old: c_int, new: c_int) {
    if new < 0 || TRACKED.load(Ordering::Relaxed) == 0 || old == new {
        return;
    }
    // Neither number ours: the table has nothing to follow (no lock).
    if !streams::may_be_ours(old) && !streams::may_be_ours(new) {
        return;
    }
    let e = real::errno();
    if forward::attached() {
        forward::dup_of(old, new);
    } else {
        with_existing(|st| st.dup_of(old, new));
    }
    real::set_errno(e);
}

/// `lseek` on a VFIO descriptor: ESPIPE, as on Linux (its VFIO files have no
/// `llseek`); our descriptors are eventfds, which would answer 0.
fn lseek_hook(fd: c_int, pass: impl FnOnce() -> off_t) -> off_t {
    hook(-1, pass, |pass| {
        if ours(fd).is_some() {
            return fail(libc::ESPIPE);
        }
        pass.call()
    })
}

/// # Safety
/// As libc's `lseek`.
#[no_mangle]
pub unsafe extern "C" fn lseek(fd: c_int, off: off_t, whence: c_int) -> off_t {
    lseek_hook(fd, || real::lseek(&real::LSEEK, fd, off, whence))
}

/// # Safety
/// As libc's `lseek64`.
#[no_mangle]
pub unsafe extern "C" fn lseek64(fd: c_int, off: off_t, whence: c_int) -> off_t {
    lseek_hook(fd, || real::lseek(&real::LSEEK64, fd, off, whence))
}

/// The program locks memory itself: the engine's pins must leave its locks
/// (`HostMemory::note_program_locks`).
/// The program called `mlock`, `mlock2` or `mlockall` in this process
/// (kept apart from the engine's memory, which a process past the hand-off
/// no longer has).
static PROGRAM_LOCKS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn program_locks() {
    PROGRAM_LOCKS.store(true, Ordering::Relaxed);
    with_existing(|st| st.note_program_locks());
}

/// # Safety
/// As libc's `mlock`.
#[no_mangle]
pub unsafe extern "C" fn mlock(addr: *const c_void, len: size_t) -> c_int {
    let pass = || real::mlock(addr, len);
    hook(-1, pass, |pass| {
        program_locks();
        pass.call()
    })
}

/// # Safety
/// As libc's `mlock2`.
#[no_mangle]
pub unsafe extern "C" fn mlock2(addr: *const c_void, len: size_t, flags: c_uint) -> c_int {
    let pass = || real::mlock2(addr, len, flags);
    hook(-1, pass, |pass| {
        program_locks();
        pass.call()
    })
}

/// # Safety
/// As libc's `mlockall`.
#[no_mangle]
pub unsafe extern "C" fn mlockall(flags: c_int) -> c_int {
    let pass = || real::mlockall(flags);
    hook(-1, pass, |pass| {
        program_locks();
        pass.call()
    })
}

/// # Safety
/// As libc's `dup`.
#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    let pass = || real::dup(fd);
    hook(-1, pass, |pass| {
        let new = pass.call();
        after_dup(fd, new);
        new
    })
}

/// # Safety
/// As libc's `dup2`.
#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    let pass = || real::dup2(old, new);
    hook(-1, pass, |pass| {
        if forward::is_connection(old) {
            return fail(libc::EBADF);
        }
        if let Err(e) = forward::vacate(new) {
            return fail(e);
        }
        let r = pass.call();
        after_dup(old, r);
        r
    })
}

/// # Safety
/// As libc's `dup3`.
#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    let pass = || real::dup3(old, new, flags);
    hook(-1, pass, |pass| {
        if forward::is_connection(old) {
            return fail(libc::EBADF);
        }
        if let Err(e) = forward::vacate(new) {
            return fail(e);
        }
        let r = pass.call();
        after_dup(old, r);
        r
    })
}

///
/// # Safety
/// `arg` as `fcntl` takes it for `cmd`.
unsafe fn fcntl_hook(next: &'static Next, fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: the caller's arguments, unchanged (this function's contract).
    let pass = || unsafe { real::fcntl(next, fd, cmd, arg) };
    hook(-1, pass, |pass| {
        let r = pass.call();
        if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
            after_dup(fd, r);
        }
        r
    })
}

/// # Safety
/// As libc's `fcntl`; the third argument is read as an unsigned long and
/// passed on unchanged.
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: the program passed libc's arguments; they go on unchanged.
    unsafe { fcntl_hook(&real::FCNTL, fd, cmd, arg) }
}

/// # Safety
/// As glibc's `fcntl64`.
#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: the program passed libc's arguments; they go on unchanged.
    unsafe { fcntl_hook(&real::FCNTL64, fd, cmd, arg) }
}

// ---- stale mappings (the DMA sanitizer) ------------------------------------

/// Is the sanitizer watching this process's memory calls? (One atomic load
/// when it is off.) After the hand-off also with no VFIO file open, while
/// the keeper says its memory may be mapped for DMA.
pub(crate) fn watching() -> bool {
    sanitize::ON.load(Ordering::Relaxed)
        && (TRACKED.load(Ordering::Relaxed) > 0 || forward::may_own_mappings())
}

/// After the program's `munmap(addr, len)` returned `res` (memory mapped
/// for DMA that the program no longer sees is a stale mapping). Called by
/// the memory-call hooks (mmio.rs), inside the hook.
pub(crate) fn sanitize_after_munmap(addr: u64, len: u64, res: c_int) {
    if res == 0 && watching() {
        let saved = real::errno();
        sanitize::going_away(addr, len, StaleCause::Munmap);
        real::set_errno(saved);
    }
}

/// After the program's `mremap` returned `res`: what it no longer sees at
/// the old address (all of it when the mapping moved, the tail when it
/// shrank).
pub(crate) fn sanitize_after_mremap(old: u64, old_size: u64, new_size: u64, res: *mut c_void) {
    if res == libc::MAP_FAILED || !watching() {
        return;
    }
    let saved = real::errno();
    let lost = if res as u64 != old {
        Some((old, old_size))
    } else if new_size < old_size {
        Some((old + new_size, old_size - new_size))
    } else {
        None
    };
    if let Some((a, n)) = lost {
        sanitize::going_away(a, n, StaleCause::Mremap);
    }
    real::set_errno(saved);
}

/// After the program's `mmap` returned `res`: `MAP_FIXED` over memory
/// still mapped for DMA.
pub(crate) fn sanitize_after_mmap(addr: u64, len: u64, flags: c_int, res: *mut c_void) {
    if flags & libc::MAP_FIXED == 0 || res == libc::MAP_FAILED || !watching() {
        return;
    }
    let saved = real::errno();
    sanitize::going_away(addr, len, StaleCause::MmapFixed);
    real::set_errno(saved);
}

/// After the program's `madvise(addr, len, advice)` (advice of `cause`)
/// returned `res`. On Linux the advice answers 0 on memory mapped for DMA
/// and the program goes on with other pages than the device's; under
/// softvfio the pin's mlock makes it EINVAL. Either way the program meant
/// the memory to go: reported unless the call failed for another reason
/// (an unaligned address is EINVAL on Linux too; other errors).
pub(crate) fn sanitize_after_madvise(addr: u64, len: u64, cause: StaleCause, res: c_int) {
    if !watching() {
        return;
    }
    let saved = real::errno();
    // glibc's madvise is no cancellation point; reading the maps (open,
    // read) would be one.
    real::without_cancel(|| {
        // EINVAL: the pin's mlock refused what Linux does (module docs),
        // unless the program locks memory itself, when Linux refuses it too.
        let own_locks = PROGRAM_LOCKS.load(Ordering::Relaxed)
            || with_existing(|st| st.program_locks()).unwrap_or(false);
        let errno = if res == 0 { 0 } else { saved };
        let bar = |start, end| mmio::first_device_address(start, end);
        let taken = softvfio_platform::sanitize::madvise_taken(
            None, cause, addr, len, errno, own_locks, &bar,
        );
        for (a, n) in taken {
            sanitize::going_away(a, n, cause);
        }
    });
    real::set_errno(saved);
}

/// At load: the program `softvfio run --mode preload` started reports at
/// exit even if it opens nothing (as `softvfio run` does).
/// `SOFTVFIO_PRELOAD_TOP` holds the pid of `softvfio run`: the process it
/// started (and the programs that process execs) have it as parent; their
/// children do not.
extern "C" fn at_load() {
    let _ = catch_unwind(|| {
        exec::note_started_with();
        state::install_fork_handlers();
        spawn::resolve();
        let inside = Inside::enter();
        forward::attach_after_exec();
        drop(inside);
        let Some(mark) = std::env::var_os("SOFTVFIO_PRELOAD_TOP") else {
            return;
        };
        if mark.to_str() == Some(std::os::unix::process::parent_id().to_string().as_str()) {
            state::register_report();
        }
    });
}

#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;
