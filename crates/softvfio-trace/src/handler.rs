//! The interface a system call handler (e.g. the VFIO engine) implements.

use crate::errno::Errno;
use crate::tracee::Tracee;
use std::ffi::OsString;
use std::path::PathBuf;

/// A handler-chosen name for one open file the handler serves (a VFIO
/// container, group or device). The supervisor maps every program
/// descriptor that refers to it, including `dup`s and inherited copies,
/// back to this id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub u64);

/// An `open`/`openat`/`openat2` the program is making.
#[derive(Clone, Debug)]
pub struct OpenRequest {
    /// The path as an absolute, lexically normalized path: a relative path
    /// is joined to the program's cwd or `dirfd`; `.`/`..`/`//` are folded;
    /// `/proc/self` becomes `/proc/<pid>` and `/proc/thread-self` becomes
    /// `/proc/<pid>/task/<tid>`. Symbolic links are not followed.
    pub path: PathBuf,
    /// The path exactly as the program passed it.
    pub raw: OsString,
    /// `dirfd` for `openat`/`openat2` (`AT_FDCWD` for `open`).
    pub dirfd: i32,
    /// Open flags (`O_RDWR | O_CLOEXEC | ...`).
    pub flags: i32,
    /// Creation mode.
    pub mode: u32,
}

impl OpenRequest {
    /// The program asked for a close-on-exec descriptor.
    pub fn cloexec(&self) -> bool {
        self.flags & libc::O_CLOEXEC != 0
    }
}

/// How to answer a claimed `open`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenReply {
    /// A descriptor for a handler object (see [`ObjectId`]).
    Object(ObjectId),
    /// A regular read-only file with these contents, positioned at offset 0
    /// (a sealed memfd in the program).
    File(Vec<u8>),
}

/// Serves the intercepted system calls.
///
/// Every method runs on a supervisor thread, one call at a time, while the
/// calling program thread is stopped in the system call (at a ptrace stop,
/// on the tracer thread) or waits in it (a call served by seccomp user
/// notification, on the notification thread: see
/// [`crate::Command::user_notification`]); [`Tracee`] reads and writes its
/// memory and, at a ptrace stop, injects system calls into it. Hence
/// `Send`. Results: `Ok(n)` is returned to
/// the program as is, `Err(e)` as `-1` with `errno = e`.
pub trait Handler: Send {
    /// An `open`/`openat`/`openat2`. `None`: not ours, the real system call
    /// runs. `Some(Err(e))`: the open fails with `e`.
    fn open(&mut self, t: &mut Tracee<'_>, req: &OpenRequest) -> Option<Result<OpenReply, Errno>>;

    /// `stat`, `lstat`, `newfstatat` or `statx` of `path` (absolute and
    /// normalized as for `open`): `Some((major, minor))` when the handler
    /// serves the path as a character device node (`/dev/vfio/vfio`, a
    /// group, `/dev/iommu`, a VFIO device cdev),
    /// whose stat then answers that device number; `None` lets the kernel
    /// answer.
    fn stat_chardev(&mut self, path: &std::path::Path) -> Option<(u32, u32)> {
        let _ = path;
        None
    }

    /// `fstat` (and `AT_EMPTY_PATH` stats) of a descriptor of `obj`:
    /// `Some((major, minor))` when the object is a character device node the
    /// handler serves (the container, a group, an iommufd, an opened VFIO
    /// cdev); `None` lets the kernel answer.
    fn stat_object(&mut self, obj: ObjectId) -> Option<(u32, u32)> {
        let _ = obj;
        None
    }

    /// The permission bits of the character device node `major:minor` the
    /// handler serves (its path's and its descriptors' `st_mode` is
    /// `S_IFCHR` with these): devtmpfs's 0600 unless the handler says.
    fn chardev_perm(&mut self, major: u32, minor: u32) -> u32 {
        let _ = (major, minor);
        0o600
    }

    /// `fstat` (and `AT_EMPTY_PATH` stats) of a descriptor of `obj`: true
    /// when the object stands for a file of the kernel's anonymous inode
    /// (an iommufd fault queue), whose stat then answers that inode's (the
    /// stat of an eventfd made by the supervisor).
    fn stat_object_anon(&mut self, obj: ObjectId) -> bool {
        let _ = obj;
        false
    }

    /// `ioctl(fd, request, arg)` on a descriptor of `obj`, for VFIO requests
    /// (`_IO(';', n)`; the kernel's `unsigned int` request, zero-extended).
    /// Other ioctls on our descriptors reach the underlying socket (e.g.
    /// `FIOCLEX`).
    fn ioctl(
        &mut self,
        t: &mut Tracee<'_>,
        obj: ObjectId,
        request: u64,
        arg: u64,
    ) -> Result<i64, Errno> {
        let _ = (t, obj, request, arg);
        Err(Errno::ENOTTY)
    }

    /// Whether a descriptor of `obj` takes VFIO ioctls made through the
    /// i386 ABI (`int $0x80`) of a 64-bit process: Linux hands those to the
    /// file's `compat_ioctl`, which VFIO's container, group and device
    /// files have (`compat_ptr_ioctl`: the same ioctl, the argument a
    /// 32-bit pointer) and iommufd's files have not (ENOTTY). True: served
    /// by [`Handler::ioctl`] as the x86-64 call; false: ENOTTY.
    fn compat_ioctl(&mut self, obj: ObjectId) -> bool {
        let _ = obj;
        true
    }

    /// `pread64` (and each segment of `preadv`/`preadv2`): read up to `len`
    /// bytes at `offset` into program memory at `buf`.
    fn pread(
        &mut self,
        t: &mut Tracee<'_>,
        obj: ObjectId,
        buf: u64,
        len: u64,
        offset: u64,
    ) -> Result<i64, Errno> {
        let _ = (t, obj, buf, len, offset);
        Err(Errno::EINVAL)
    }

    /// `read(2)` (`write`: `write(2)`; and each segment of `readv`/`writev`)
    /// of `len` bytes at program address `buf` on a descriptor of `obj`, in
    /// a process given [`Tracee::serve_reads_and_writes`]. `None`: the call
    /// reaches the descriptor's socket.
    fn stream_rw(
        &mut self,
        t: &mut Tracee<'_>,
        obj: ObjectId,
        buf: u64,
        len: u64,
        write: bool,
    ) -> Option<Result<i64, Errno>> {
        let _ = (t, obj, buf, len, write);
        None
    }

    /// `pwrite64` (and each segment of `pwritev`/`pwritev2`).
    fn pwrite(
        &mut self,
        t: &mut Tracee<'_>,
        obj: ObjectId,
        buf: u64,
        len: u64,
        offset: u64,
    ) -> Result<i64, Errno> {
        let _ = (t, obj, buf, len, offset);
        Err(Errno::EINVAL)
    }

    /// `mmap`, `munmap`, `mremap`, `mprotect` or `madvise` (the advice of
    /// [`crate::filter::MADVISE_WATCHED`], with the sanitizer's memory
    /// calls) (`nr`, with its six
    /// arguments): a handler that maps regions of its objects (the device
    /// file's BARs) serves an `mmap` of one of its descriptors, and follows
    /// the calls that change a range it mapped (by injecting the call and
    /// looking at the result, e.g. with [`Tracee::inject_syscall`]; the DMA
    /// sanitizer watches memory mapped for DMA going away the same way).
    /// `None`: the kernel runs the call.
    fn memory_call(
        &mut self,
        t: &mut Tracee<'_>,
        nr: i64,
        args: [u64; 6],
    ) -> Option<Result<i64, Errno>> {
        let _ = (t, nr, args);
        None
    }

    /// Is `address` in one of the handler's device mappings in process
    /// `pid`? Asked at each SIGSEGV the kernel raises; true leads to
    /// [`Handler::mmio_fault`].
    fn is_mmio_address(&self, pid: i32, address: u64) -> bool {
        let _ = (pid, address);
        false
    }

    /// Performs the instruction (bytes `code`, registers `regs`) that
    /// faulted on `address` of a device mapping of process `pid`; see
    /// [`crate::mmio`].
    fn mmio_fault(
        &mut self,
        pid: i32,
        address: u64,
        code: &[u8],
        regs: &mut softvfio_mmio::Registers,
        memory: &mut crate::mmio::TracedMemory,
    ) -> crate::mmio::FaultReply {
        let _ = (pid, address, code, regs, memory);
        crate::mmio::FaultReply::NotOurs
    }

    /// The last descriptor of `obj` is gone. `Some(t)`: a thread of the
    /// program is stopped (normally the one whose `close` dropped the last
    /// reference, stopped at that `close`'s exit, so injection works), or
    /// waits in a call served by user notification (a `dup2` or
    /// `close_range` dropped it; injection fails there);
    /// `None`: noticed while no thread is stopped (the process exited).
    /// Always called before the program makes any further intercepted call.
    fn release(&mut self, t: Option<&mut Tracee<'_>>, obj: ObjectId) {
        let _ = (t, obj);
    }

    /// `objs` lost their last descriptors together while no thread is
    /// stopped (a process exited) and are about to be released, each by
    /// [`Handler::release`]. One release can change what another object
    /// holds (the last group leaving a container unmaps it), so a handler
    /// that reports what was left open looks at all of them here first.
    fn releasing_together(&mut self, objs: &[ObjectId]) {
        let _ = objs;
    }

    /// Every process of the program is gone: the releases that follow (with
    /// no thread stopped) are of what the program left open at its end,
    /// not of what one of several processes dropped when it died.
    fn program_ended(&mut self) {}

    /// A thread of process `pid` is about to lock memory itself (`mlock`,
    /// `mlock2`, `mlockall`; the call then runs as usual).
    fn locks_memory(&mut self, pid: i32) {
        let _ = pid;
    }

    /// The program was started as process `pid` (called once per run,
    /// before it runs its first instruction of the new program).
    fn spawned(&mut self, pid: i32) {
        let _ = pid;
    }

    /// Process `pid` forked (or cloned without sharing its thread group)
    /// into `child`.
    fn forked(&mut self, pid: i32, child: i32) {
        let _ = (pid, child);
    }

    /// A thread of process `pid` is entering `execve` while VFIO files can
    /// outlive it (the process keeps one across the exec, or another
    /// process holds one): the old image's memory is still there. The
    /// exec may still fail; [`Handler::exec`] follows if it does not.
    fn exec_starting(&mut self, pid: i32) {
        let _ = pid;
    }

    /// Process `pid` called `execve` successfully: its address space is new.
    fn exec(&mut self, pid: i32) {
        let _ = pid;
    }

    /// Process `pid` is about to exit: its last thread is stopped at its
    /// exit, its memory is still there, and another process of the program
    /// holds one of the handler's objects (what this process mapped may
    /// outlive it). [`Handler::exited`] follows.
    fn exiting(&mut self, pid: i32) {
        let _ = pid;
    }

    /// Process `pid` ended with `status` (its last thread's `waitpid`
    /// status: an exit code or the signal that killed it).
    /// [`Handler::exited`] follows.
    fn ended(&mut self, pid: i32, status: i32) {
        let _ = (pid, status);
    }

    /// Process `pid` is gone (all its threads exited).
    fn exited(&mut self, pid: i32) {
        let _ = pid;
    }
}

/// A handler that claims nothing: the program runs as if not traced.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough;

impl Handler for PassThrough {
    fn open(
        &mut self,
        _t: &mut Tracee<'_>,
        _req: &OpenRequest,
    ) -> Option<Result<OpenReply, Errno>> {
        None
    }
}
