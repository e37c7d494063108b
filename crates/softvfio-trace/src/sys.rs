//! Thin, safe wrappers over the raw system calls the supervisor needs.
//!
//! Every `unsafe` block of the crate that talks to the kernel lives here, in
//! a small named function with the reason it is sound next to it. Callers
//! get `Result<_, Errno>` and never see a raw pointer.

use crate::errno::Errno;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The general-purpose registers of an x86-64 thread, as `PTRACE_GETREGS`
/// reads them (`struct user_regs_struct`).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

const _: () = assert!(std::mem::size_of::<Regs>() == std::mem::size_of::<libc::user_regs_struct>());

impl Regs {
    /// The six system call arguments in ABI order.
    pub fn args(&self) -> [u64; 6] {
        [self.rdi, self.rsi, self.rdx, self.r10, self.r8, self.r9]
    }

    /// The six system call arguments of the i386 ABI (`int $0x80`), in
    /// ABI order: `ebx`, `ecx`, `edx`, `esi`, `edi`, `ebp` (full registers:
    /// the call takes their low halves).
    pub fn args_i386(&self) -> [u64; 6] {
        [self.rbx, self.rcx, self.rdx, self.rsi, self.rdi, self.rbp]
    }

    pub fn set_args(&mut self, a: [u64; 6]) {
        self.rdi = a[0];
        self.rsi = a[1];
        self.rdx = a[2];
        self.r10 = a[3];
        self.r8 = a[4];
        self.r9 = a[5];
    }
}

/// `struct ptrace_syscall_info` (PTRACE_GET_SYSCALL_INFO), with the union
/// kept as raw words: `entry`/`seccomp` = nr, args[6]; `exit` = rval, is_error.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct SyscallInfo {
    pub op: u8,
    pub reserved: u8,
    pub flags: u16,
    pub arch: u32,
    pub instruction_pointer: u64,
    pub stack_pointer: u64,
    pub data: [u64; 8],
}

/// `PTRACE_SYSCALL_INFO_NONE`: a stop that is no system call stop.
pub const SYSCALL_INFO_NONE: u8 = 0;
pub const SYSCALL_INFO_ENTRY: u8 = 1;
pub const SYSCALL_INFO_EXIT: u8 = 2;
/// `PTRACE_SYSCALL_INFO_SECCOMP`: the tracee is at a seccomp stop.
pub const SYSCALL_INFO_SECCOMP: u8 = 3;

/// Raw `siginfo_t` storage (128 bytes), enough to save and restore one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SigInfo(pub [u32; 32]);

const _: () = assert!(std::mem::size_of::<SigInfo>() == std::mem::size_of::<libc::siginfo_t>());

impl SigInfo {
    pub fn signo(&self) -> i32 {
        self.0[0] as i32
    }
    pub fn code(&self) -> i32 {
        self.0[2] as i32
    }
    /// `si_pid` for signals sent by a process (kill, tgkill, sigqueue).
    pub fn pid(&self) -> i32 {
        self.0[4] as i32
    }
}

fn check(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn check_int(ret: libc::c_int) -> Result<libc::c_int, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// A ptrace request that takes no pointer (only integers in `addr`/`data`).
fn ptrace_plain(
    req: libc::c_uint,
    tid: i32,
    addr: usize,
    data: usize,
) -> Result<libc::c_long, Errno> {
    // SAFETY: the requests passed here (SEIZE, CONT, SYSCALL, LISTEN,
    // INTERRUPT) interpret addr/data as integers and never dereference them.
    let r = unsafe {
        libc::ptrace(
            req,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    check(r)
}

pub fn ptrace_seize(pid: i32, options: i32) -> Result<(), Errno> {
    ptrace_plain(libc::PTRACE_SEIZE, pid, 0, options as usize).map(drop)
}

pub fn ptrace_cont(tid: i32, sig: i32) -> Result<(), Errno> {
    ptrace_plain(libc::PTRACE_CONT, tid, 0, sig as usize).map(drop)
}

pub fn ptrace_syscall(tid: i32, sig: i32) -> Result<(), Errno> {
    ptrace_plain(libc::PTRACE_SYSCALL, tid, 0, sig as usize).map(drop)
}

pub fn ptrace_detach(tid: i32) -> Result<(), Errno> {
    ptrace_plain(libc::PTRACE_DETACH, tid, 0, 0).map(drop)
}

pub fn ptrace_interrupt(tid: i32) -> Result<(), Errno> {
    ptrace_plain(libc::PTRACE_INTERRUPT, tid, 0, 0).map(drop)
}

pub fn ptrace_listen(tid: i32) -> Result<(), Errno> {
    ptrace_plain(libc::PTRACE_LISTEN, tid, 0, 0).map(drop)
}

pub fn ptrace_getregs(tid: i32) -> Result<Regs, Errno> {
    let mut regs = Regs::default();
    // SAFETY: PTRACE_GETREGS writes one `struct user_regs_struct` to `data`;
    // `Regs` is a repr(C) struct of the same size and layout, alive and
    // exclusively borrowed for the call.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGS,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            &mut regs as *mut Regs as *mut libc::c_void,
        )
    };
    check(r)?;
    Ok(regs)
}

pub fn ptrace_setregs(tid: i32, regs: &Regs) -> Result<(), Errno> {
    // SAFETY: PTRACE_SETREGS reads one `struct user_regs_struct` from `data`;
    // `regs` points to a valid value of the same layout for the call.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_SETREGS,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            regs as *const Regs as *mut libc::c_void,
        )
    };
    check(r).map(drop)
}

pub fn ptrace_geteventmsg(tid: i32) -> Result<u64, Errno> {
    let mut msg: libc::c_ulong = 0;
    // SAFETY: PTRACE_GETEVENTMSG stores one `unsigned long` at `data`, which
    // points to a live local of that type.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETEVENTMSG,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            &mut msg as *mut libc::c_ulong as *mut libc::c_void,
        )
    };
    check(r)?;
    Ok(msg)
}

pub fn ptrace_getsiginfo(tid: i32) -> Result<SigInfo, Errno> {
    let mut si = SigInfo::default();
    // SAFETY: PTRACE_GETSIGINFO writes one 128-byte siginfo_t to `data`;
    // `SigInfo` is 128 bytes of plain integers, exclusively borrowed.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGINFO,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            &mut si as *mut SigInfo as *mut libc::c_void,
        )
    };
    check(r)?;
    Ok(si)
}

pub fn ptrace_setsiginfo(tid: i32, si: &SigInfo) -> Result<(), Errno> {
    // SAFETY: PTRACE_SETSIGINFO reads one 128-byte siginfo_t from `data`.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_SETSIGINFO,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            si as *const SigInfo as *mut libc::c_void,
        )
    };
    check(r).map(drop)
}

pub fn ptrace_get_syscall_info(tid: i32) -> Result<SyscallInfo, Errno> {
    let mut info = SyscallInfo::default();
    let size = std::mem::size_of::<SyscallInfo>();
    // SAFETY: PTRACE_GET_SYSCALL_INFO writes at most `addr` bytes (the size
    // we pass) to `data`, which points to a live `SyscallInfo` of that size.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GET_SYSCALL_INFO,
            tid,
            size as *mut libc::c_void,
            &mut info as *mut SyscallInfo as *mut libc::c_void,
        )
    };
    check(r)?;
    Ok(info)
}

/// `waitpid`, retried on EINTR. Returns (pid, status).
pub fn waitpid(pid: i32, flags: i32) -> Result<(i32, i32), Errno> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid stores the status in a live local c_int.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r >= 0 {
            return Ok((r, status));
        }
        let e = Errno::last();
        if e != Errno::EINTR {
            return Err(e);
        }
    }
}

pub fn tgkill(tgid: i32, tid: i32, sig: i32) -> Result<(), Errno> {
    // SAFETY: tgkill takes only integers.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) };
    check(r).map(drop)
}

pub fn kill(pid: i32, sig: i32) -> Result<(), Errno> {
    // SAFETY: kill takes only integers.
    check_int(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Queues `si` (a signal with a negative `si_code`, e.g. SI_QUEUE) to one
/// thread; used to re-deliver a signal we had to take out of the way.
pub fn rt_tgsigqueueinfo(tgid: i32, tid: i32, si: &SigInfo) -> Result<(), Errno> {
    // SAFETY: the kernel reads one siginfo_t from the pointer, which refers to
    // a live 128-byte value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            tgid,
            tid,
            si.signo(),
            si as *const SigInfo,
        )
    };
    check(r).map(drop)
}

/// Reads `buf.len()` bytes of another process's memory at `addr`.
/// A partial transfer (a page missing) is EFAULT.
pub fn process_vm_read(pid: i32, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    if buf.is_empty() {
        return Ok(());
    }
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes the exclusively borrowed `buf`; the remote
    // iovec is only interpreted in the other process's address space.
    let r = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if r < 0 {
        let e = Errno::last();
        return Err(if e == Errno::ESRCH { e } else { Errno::EFAULT });
    }
    if r as usize != buf.len() {
        return Err(Errno::EFAULT);
    }
    Ok(())
}

/// Reads another process's memory at `addr` into `buf` (at most 16 KiB) in
/// one call; the bytes read, a prefix of `buf` (the kernel stops at the
/// first page it cannot read: the remote range is split at page boundaries,
/// one iovec per page, and it never splits one).
pub fn process_vm_read_prefix(pid: i32, addr: u64, buf: &mut [u8]) -> Result<usize, Errno> {
    const MAX: usize = 5;
    const PAGE: usize = 4096;
    let mut remote = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX];
    let (mut at, mut left, mut n) = (addr as usize, buf.len().min(4 * PAGE), 0);
    while left > 0 && n < MAX {
        let len = left.min(PAGE - at % PAGE);
        remote[n] = libc::iovec {
            iov_base: at as *mut libc::c_void,
            iov_len: len,
        };
        (at, left, n) = (at.wrapping_add(len), left - len, n + 1);
    }
    if n == 0 {
        return Ok(0);
    }
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: remote[..n].iter().map(|r| r.iov_len).sum(),
    };
    // SAFETY: `local` describes a prefix of the exclusively borrowed `buf`
    // (the remote lengths add up to at most `buf.len()`); the remote iovecs
    // are only interpreted in the other process's address space.
    let r =
        unsafe { libc::process_vm_readv(pid, &local, 1, remote.as_ptr(), n as libc::c_ulong, 0) };
    if r < 0 {
        let e = Errno::last();
        return Err(if e == Errno::ESRCH { e } else { Errno::EFAULT });
    }
    Ok(r as usize)
}

/// Writes `data` into another process's memory at `addr` (all or EFAULT).
pub fn process_vm_write(pid: i32, addr: u64, data: &[u8]) -> Result<(), Errno> {
    if data.is_empty() {
        return Ok(());
    }
    let local = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: `local` describes the borrowed `data`, which the kernel only
    // reads; the remote iovec refers to the other process.
    let r = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
    if r < 0 {
        let e = Errno::last();
        return Err(if e == Errno::ESRCH { e } else { Errno::EFAULT });
    }
    if r as usize != data.len() {
        return Err(Errno::EFAULT);
    }
    Ok(())
}

/// Takes ownership of a descriptor a successful system call just returned.
fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` is a fresh descriptor returned by the kernel to this
    // process, owned by nobody else yet.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// `PIDFD_THREAD` (= O_EXCL): a pidfd for one thread (Linux 6.9+).
pub const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

pub fn pidfd_open(pid: i32, flags: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes only integers.
    let r = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) })?;
    Ok(owned(r))
}

/// Waits up to `timeout_ms` for the process behind `pidfd` to have exited
/// (the pidfd turns readable once its last thread is dead and its files
/// are closed); returns whether it did.
pub fn pidfd_wait_exit(pidfd: BorrowedFd<'_>, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `p` is one valid pollfd, alive for the call.
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if r >= 0 || Errno::last() != Errno::EINTR {
            return r > 0 && p.revents & libc::POLLIN != 0;
        }
    }
}

/// Duplicates descriptor `fd` of the process behind `pidfd` into this one.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_getfd takes only integers and returns a new descriptor.
    let r = check(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })?;
    Ok(owned(r))
}

pub fn epoll_create() -> Result<OwnedFd, Errno> {
    // SAFETY: epoll_create1 takes only flags.
    let r = check_int(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    Ok(owned(r.into()))
}

/// Watches `fd` for hang-up only (EPOLLHUP is always reported).
pub fn epoll_add(ep: BorrowedFd<'_>, fd: BorrowedFd<'_>, key: u64) -> Result<(), Errno> {
    let mut ev = libc::epoll_event {
        events: 0,
        u64: key,
    };
    // SAFETY: epoll_ctl reads one epoll_event from a live local.
    check_int(unsafe {
        libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev)
    })
    .map(drop)
}

pub fn epoll_del(ep: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: epoll_ctl ignores (but, on old kernels, requires) the event.
    check_int(unsafe {
        libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_DEL, fd.as_raw_fd(), &mut ev)
    })
    .map(drop)
}

/// Non-blocking `epoll_wait`: the keys of the ready descriptors.
pub fn epoll_poll(ep: BorrowedFd<'_>, out: &mut Vec<u64>) -> Result<(), Errno> {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
    loop {
        // SAFETY: the kernel writes at most `evs.len()` events into `evs`.
        let r = unsafe { libc::epoll_wait(ep.as_raw_fd(), evs.as_mut_ptr(), evs.len() as i32, 0) };
        if r < 0 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            return Err(e);
        }
        let n = r as usize;
        out.extend(evs[..n].iter().map(|e| e.u64));
        if n < evs.len() {
            return Ok(());
        }
        // A full batch: level-triggered, the same keys may come again; the
        // caller deduplicates. Stop after one extra round to stay bounded.
        if out.len() >= 4 * evs.len() {
            return Ok(());
        }
    }
}

pub fn shutdown_write(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: shutdown takes only integers.
    check_int(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) }).map(drop)
}

/// Writes all of `data` at offset `off` of `fd`.
pub fn pwrite_all(fd: BorrowedFd<'_>, mut data: &[u8], mut off: u64) -> Result<(), Errno> {
    while !data.is_empty() {
        // SAFETY: the kernel reads at most `data.len()` bytes from `data`.
        let r = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                off as libc::off_t,
            )
        };
        if r < 0 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(Errno::EIO);
        }
        data = &data[r as usize..];
        off += r as u64;
    }
    Ok(())
}

pub fn add_seals(fd: BorrowedFd<'_>, seals: i32) -> Result<(), Errno> {
    // SAFETY: F_ADD_SEALS takes an integer argument.
    check_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) }).map(drop)
}

/// A pipe whose both ends are close-on-exec: (read, write).
pub fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd), Errno> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the two-element array.
    check_int(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((owned(fds[0].into()), owned(fds[1].into())))
}

/// Reads whatever is available on a non-blocking descriptor (at most `buf`).
pub fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(r as usize)
}

pub fn write_byte(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let b = [0u8; 1];
    // SAFETY: the kernel reads one byte from `b`.
    let r = unsafe { libc::write(fd.as_raw_fd(), b.as_ptr().cast(), 1) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

pub fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: F_GETFL/F_SETFL take integer arguments.
    let fl = check_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    check_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) })
        .map(drop)
}

pub fn getpid() -> i32 {
    // SAFETY: getpid has no arguments and cannot fail.
    unsafe { libc::getpid() }
}

/// The result of `fork()` as seen by the parent.
pub enum Forked {
    Parent(i32),
    Child,
}

/// Forks the calling process.
///
/// # Safety
/// In a multi-threaded process the child may only call async-signal-safe
/// functions until it execs or exits: the caller must make sure the child
/// path allocates nothing and takes no locks (see `spawn::child_main`).
pub unsafe fn fork() -> Result<Forked, Errno> {
    // SAFETY: fork itself has no memory-safety preconditions; the caller
    // upholds the async-signal-safety contract for the child.
    let r = unsafe { libc::fork() };
    match r {
        r if r < 0 => Err(Errno::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// The kernel release string, e.g. "6.18.0".
pub fn kernel_release() -> Option<String> {
    // SAFETY: an all-zero utsname is a valid value (arrays of c_char).
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct we own.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    // SAFETY: the kernel NUL-terminates `release` within its array.
    let s = unsafe { CStr::from_ptr(u.release.as_ptr()) };
    Some(s.to_string_lossy().into_owned())
}

/// `NT_X86_XSTATE`: the XSAVE area regset (standard, uncompacted format).
const NT_X86_XSTATE: usize = 0x202;

/// `PTRACE_GETREGSET(NT_X86_XSTATE)` into `buf`; returns the bytes the
/// kernel filled.
pub fn ptrace_get_xstate(tid: i32, buf: &mut [u8]) -> Result<usize, Errno> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: the kernel writes at most `iov_len` bytes into `buf`, which is
    // exclusively borrowed, and updates `iov_len`, which we own.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            tid,
            NT_X86_XSTATE as *mut libc::c_void,
            &mut iov as *mut libc::iovec as *mut libc::c_void,
        )
    };
    check(r)?;
    Ok(iov.iov_len)
}

/// `PTRACE_SETREGSET(NT_X86_XSTATE)` from `data`.
pub fn ptrace_set_xstate(tid: i32, data: &[u8]) -> Result<(), Errno> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: the kernel only reads `iov_len` bytes from `data` (borrowed
    // for the call); `iov` is ours.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_SETREGSET,
            tid,
            NT_X86_XSTATE as *mut libc::c_void,
            &mut iov as *mut libc::iovec as *mut libc::c_void,
        )
    };
    check(r).map(drop)
}

/// A `SOCK_SEQPACKET` socket pair, both ends close-on-exec (for passing
/// the seccomp listener from the child).
pub fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), Errno> {
    socket_pair(libc::SOCK_SEQPACKET)
}

/// A `SOCK_STREAM` socket pair, both ends close-on-exec in this process.
pub fn stream_pair() -> Result<(OwnedFd, OwnedFd), Errno> {
    socket_pair(libc::SOCK_STREAM)
}

fn socket_pair(ty: i32) -> Result<(OwnedFd, OwnedFd), Errno> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: socketpair writes two descriptors into the two-element array.
    check_int(unsafe {
        libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
    })?;
    Ok((owned(fds[0].into()), owned(fds[1].into())))
}

/// `fstat` and `statx` (`AT_EMPTY_PATH`, `STATX_BASIC_STATS`) of the
/// kernel's shared anonymous inode (that of a new eventfd), as the raw
/// `struct stat` and `struct statx` bytes: what every file made by
/// `anon_inode_getfile` (an iommufd fault queue's among them) stats as.
pub fn anon_inode_stats() -> Result<(Vec<u8>, Vec<u8>), Errno> {
    // SAFETY: eventfd takes no pointers.
    let fd = check_int(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
    let fd = owned(fd.into());
    // SAFETY: an all-zero `stat` is a valid value of the plain-data struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one `stat` into the live local.
    check_int(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    // SAFETY: as for `stat`.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx reads the NUL-terminated empty path and writes one
    // `statx` into the live local.
    check_int(unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_BASIC_STATS,
            &mut stx,
        )
    })?;
    // SAFETY: both are plain-data structs fully initialized above (zeroed,
    // then written by the kernel); their bytes are read as bytes.
    let bytes = unsafe {
        (
            std::slice::from_raw_parts(
                (&st as *const libc::stat).cast::<u8>(),
                std::mem::size_of::<libc::stat>(),
            )
            .to_vec(),
            std::slice::from_raw_parts(
                (&stx as *const libc::statx).cast::<u8>(),
                std::mem::size_of::<libc::statx>(),
            )
            .to_vec(),
        )
    };
    Ok(bytes)
}

/// What the kernel answers for an anonymous inode (a fresh eventfd's)
/// asked as a program asked for its descriptor: `statx(fd, path, flags,
/// mask)` (or `newfstatat(fd, path, flags)` when not `statx`), with a NULL
/// `path` (`null`, valid with `AT_EMPTY_PATH` since Linux 6.11) or an
/// empty one. The bytes of the `struct statx` (or `stat`), or the errno
/// the kernel gives for these flags and mask.
pub fn anon_inode_stat_as(
    statx: bool,
    null: bool,
    flags: i32,
    mask: u32,
) -> Result<Vec<u8>, Errno> {
    // SAFETY: eventfd takes no pointers.
    let fd = check_int(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
    let fd = owned(fd.into());
    let path: *const libc::c_char = if null { std::ptr::null() } else { c"".as_ptr() };
    let size = if statx {
        std::mem::size_of::<libc::statx>()
    } else {
        std::mem::size_of::<libc::stat>()
    };
    // Room for either struct, 8-byte aligned.
    let mut buf = vec![0u64; size.div_ceil(8)];
    let at = buf.as_mut_ptr().cast::<libc::c_void>();
    let (fd, flags) = (
        libc::c_long::from(fd.as_raw_fd()),
        libc::c_long::from(flags),
    );
    // SAFETY: the kernel reads the NUL-terminated empty path (or none:
    // NULL) and writes at most one struct of `size` bytes into `buf`,
    // which is live and at least that long.
    let r = unsafe {
        if statx {
            libc::syscall(
                libc::SYS_statx,
                fd,
                path,
                flags,
                libc::c_long::from(mask),
                at,
            )
        } else {
            libc::syscall(libc::SYS_newfstatat, fd, path, at, flags)
        }
    };
    check(r)?;
    // SAFETY: `buf` holds `size` initialized bytes (zeroed, then written by
    // the kernel); they are read as bytes.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), size) };
    Ok(bytes.to_vec())
}

/// The inode number of `fd` (for a socket: the `N` of `socket:[N]`).
pub fn inode_of(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    // SAFETY: an all-zero `stat` is a valid value of the plain-data struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one `stat` into the live local.
    check_int(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st.st_ino)
}

/// Receives one message on `sock` and the descriptor it carries, if any.
/// `Ok(None)`: a message without one, or end of file.
pub fn recv_fd(sock: BorrowedFd<'_>) -> Result<Option<OwnedFd>, Errno> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid (no buffers).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    loop {
        // SAFETY: `msg` points at `iov` (one byte of `byte`) and at `cbuf`
        // with their true lengths; all three live across the call.
        let r = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        if r < 0 {
            return Err(Errno::last());
        }
        break;
    }
    // SAFETY: the kernel filled `msg_control`/`msg_controllen`; the CMSG
    // macros only walk inside that buffer.
    unsafe {
        let cm = libc::CMSG_FIRSTHDR(&msg);
        if cm.is_null()
            || (*cm).cmsg_level != libc::SOL_SOCKET
            || (*cm).cmsg_type != libc::SCM_RIGHTS
        {
            return Ok(None);
        }
        let mut fd: libc::c_int = -1;
        std::ptr::copy_nonoverlapping(
            libc::CMSG_DATA(cm),
            (&mut fd as *mut libc::c_int).cast::<u8>(),
            std::mem::size_of::<libc::c_int>(),
        );
        Ok((fd >= 0).then(|| owned(fd.into())))
    }
}

/// Waits until one of `fds` has an event in `events` (or hang-up); returns
/// each descriptor's `revents`.
pub fn poll_fds<const N: usize>(fds: [BorrowedFd<'_>; N], events: i16) -> Result<[i16; N], Errno> {
    poll_fds_for(fds, events, -1)
}

/// [`poll_fds`] without waiting: the events pending now.
pub fn poll_fds_now<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    events: i16,
) -> Result<[i16; N], Errno> {
    poll_fds_for(fds, events, 0)
}

fn poll_fds_for<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    events: i16,
    timeout_ms: i32,
) -> Result<[i16; N], Errno> {
    let mut p = fds.map(|f| libc::pollfd {
        fd: f.as_raw_fd(),
        events,
        revents: 0,
    });
    loop {
        // SAFETY: `p` is an array of N valid pollfds, alive for the call.
        let r = unsafe { libc::poll(p.as_mut_ptr(), N as libc::nfds_t, timeout_ms) };
        if r >= 0 {
            return Ok(p.map(|x| x.revents));
        }
        let e = Errno::last();
        if e != Errno::EINTR {
            return Err(e);
        }
    }
}

/// One seccomp user notification (`struct seccomp_notif`).
#[derive(Clone, Copy, Debug)]
pub struct Notif {
    /// The notification's cookie (for the answer and `ID_VALID`).
    pub id: u64,
    /// The calling thread, in our pid namespace.
    pub tid: i32,
    /// The system call number.
    pub nr: i64,
    /// Its arguments.
    pub args: [u64; 6],
}

/// `SECCOMP_IOCTL_NOTIF_RECV`: waits for the next notification.
pub fn notif_recv(listener: BorrowedFd<'_>) -> Result<Notif, Errno> {
    // SAFETY: the kernel requires a zeroed `seccomp_notif`; all-zero is a
    // valid value of the plain-data struct.
    let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: NOTIF_RECV writes one `seccomp_notif` into the live local.
    check_int(unsafe {
        libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut n)
    })?;
    Ok(Notif {
        id: n.id,
        tid: n.pid as i32,
        nr: i64::from(n.data.nr),
        args: n.data.args,
    })
}

/// `SECCOMP_IOCTL_NOTIF_SEND`. `continue_call`: let the kernel run the
/// system call (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`); else the call returns
/// `ret` (a raw result: `-errno` for an error).
pub fn notif_send(
    listener: BorrowedFd<'_>,
    id: u64,
    ret: i64,
    continue_call: bool,
) -> Result<(), Errno> {
    let mut r = libc::seccomp_notif_resp {
        id,
        val: 0,
        error: 0,
        flags: 0,
    };
    if continue_call {
        r.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;
    } else if (-4095..0).contains(&ret) {
        r.error = ret as i32;
    } else {
        r.val = ret;
    }
    // SAFETY: NOTIF_SEND reads one `seccomp_notif_resp` from the live local.
    check_int(unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut r) })
        .map(drop)
}

/// `SECCOMP_IOCTL_NOTIF_ID_VALID`: is the thread still waiting in the
/// call of notification `id` (not killed or interrupted meanwhile, so its
/// tid still names it)?
pub fn notif_id_valid(listener: BorrowedFd<'_>, id: u64) -> bool {
    let mut v = id;
    // SAFETY: NOTIF_ID_VALID reads one u64 from the live local.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
            &mut v,
        ) == 0
    }
}

/// `SECCOMP_IOCTL_NOTIF_ADDFD`: installs a copy of `src` in the waiting
/// thread's descriptor table (the lowest free number, as `open` picks) and
/// returns its number there.
pub fn notif_addfd(
    listener: BorrowedFd<'_>,
    id: u64,
    src: BorrowedFd<'_>,
    cloexec: bool,
) -> Result<i32, Errno> {
    let mut a = libc::seccomp_notif_addfd {
        id,
        flags: 0,
        srcfd: src.as_raw_fd() as u32,
        newfd: 0,
        newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
    };
    // SAFETY: NOTIF_ADDFD reads one `seccomp_notif_addfd` from the live local.
    check_int(unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ADDFD,
            &mut a,
        )
    })
}

/// A close-on-exec memfd that can be sealed.
pub fn memfd_sealable() -> Result<OwnedFd, Errno> {
    let name = c"softvfio";
    // SAFETY: memfd_create reads the NUL-terminated name and takes flags.
    let r = check_int(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING | libc::MFD_CLOEXEC)
    })?;
    Ok(owned(r.into()))
}

/// `SECCOMP_IOCTL_NOTIF_SET_FLAGS` with `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`
/// (Linux 6.6): the notifying thread and the supervisor hand the CPU to
/// each other directly, as in a synchronous call, instead of waking the
/// other through the scheduler. Returns whether the kernel took it.
pub fn notif_sync_wakeup(listener: BorrowedFd<'_>) -> bool {
    const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;
    // SAFETY: NOTIF_SET_FLAGS takes its flags as the integer argument.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
            SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
        ) == 0
    }
}
