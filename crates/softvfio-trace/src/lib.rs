//! softvfio-trace: run an unmodified program — dynamically or **statically**
//! linked — with selected system calls served by a user-space [`Handler`].
//!
//! This is how `softvfio run -- PROGRAM` gives a program a VFIO
//! implementation on a machine without one: the program's `open`s of
//! `/dev/vfio/*`, its VFIO `ioctl`s and `pread`/`pwrite` on device fds are
//! answered by the softvfio engine; everything else runs natively.
//!
//! ```no_run
//! use softvfio_trace::{exit_code, Command, PassThrough, Supervisor};
//! let mut sup = Supervisor::new();
//! let status = sup.run(Command::new("/bin/true"), &mut PassThrough).unwrap();
//! std::process::exit(exit_code(status));
//! ```
//!
//! # Mechanism
//! `LD_PRELOAD` cannot reach a static binary (it issues `syscall`
//! instructions itself), so interception happens at the kernel boundary:
//!
//! 1. **ptrace + seccomp-BPF** ([`spawn`], [`filter`]). The supervisor
//!    forks, `PTRACE_SEIZE`s the child, and the child installs a seccomp
//!    filter before `execve`. The filter returns `SECCOMP_RET_TRACE` only
//!    for `open`/`openat`/`openat2`, `close`, the `pread`/`pwrite` family,
//!    VFIO-type ioctls and the memory calls that can concern a BAR mapping
//!    (or `SECCOMP_RET_USER_NOTIF` for some of them, below); every other
//!    system call is allowed inside the
//!    kernel at full speed (no stop, no context switch). `PTRACE_SYSCALL`
//!    alone would stop twice on *every* system call.
//! 2. **Threads and children** are followed (`PTRACE_O_TRACECLONE`,
//!    `TRACEFORK`, `TRACEVFORK`; the filter is inherited), `execve` is
//!    observed (`TRACEEXEC`, including a non-leader thread's exec), and the
//!    program dies with the supervisor (`EXITKILL`). Signals are passed on
//!    at their delivery stops; group-stops are `PTRACE_LISTEN`ed so job
//!    control works (a parent sees its stopped child); the run ends when
//!    every traced process is gone and returns the program's own status.
//!    Waiting uses `waitpid(-1, __WALL | __WNOTHREAD)`, so several
//!    supervisors can run on different threads of one process.
//! 3. **Serving a call.** At the seccomp stop the supervisor reads the
//!    registers, maps the fd to a handler object (or reads the path), calls
//!    the handler, then *skips* the call (`orig_rax = -1`) with the result
//!    in `rax`: one stop, one round trip. Calls that are not ours continue
//!    untouched.
//! 4. **Real descriptors** ([`objects`]). A claimed `open` creates, by
//!    injection, an `AF_UNIX` socket pair in the program; the supervisor
//!    takes one end (`pidfd_getfd`) and leaves the program the other: a
//!    real fd, so `dup`, `dup2`, `fcntl`, `fork`, close-on-exec and
//!    `SCM_RIGHTS` behave as for any file. Any program fd maps to its
//!    object through the socket inode (`/proc/<tid>/fd/N` →
//!    `socket:[ino]`), so duplicates map to the same object. The last close
//!    anywhere shows as `EPOLLHUP` on the supervisor's end. A `close` of one
//!    of our fds is executed at its stop and releases are delivered at its
//!    exit, before the program continues (Linux ≥ 6.7 drops the last
//!    reference synchronously in close(2); older kernels get one extra pass
//!    through user mode). Releases caused by `dup2`, close-on-exec or exit
//!    are found at the next stop, always before any later intercepted
//!    call, or when the process exits.
//! 5. **Synthesized files**: [`OpenReply::File`] gives the program a sealed
//!    memfd with the contents (how `/proc/self/status` shows the emulated
//!    `VmLck`).
//! 6. **System call injection** ([`tracee`]): handlers run system calls
//!    *inside* the stopped thread (`mlock`, `madvise(MADV_POPULATE_*)`,
//!    `memfd_create`, ...), any number of times per intercepted call;
//!    engine code reaches this through a [`SyscallInjector`] that fails
//!    cleanly off the supervisor thread or outside handler calls. Signals
//!    that arrive meanwhile are delivered afterwards with their `siginfo`.
//! 7. **Memory**: `process_vm_readv`/`writev` ([`Tracee::read_mem`],
//!    [`mem`]); a fault is `EFAULT` for the program, never a crash.
//!
//! ## Seccomp user notification (opt-in: [`Command::user_notification`])
//! A ptrace stop costs two context switches and register traffic per call.
//! For the calls that never need code run *in* the program, the filter can
//! return `SECCOMP_RET_USER_NOTIF` instead ([`filter::Spec::notify`]): the
//! opens, the `pread`/`pwrite` family and the ioctl requests the embedder
//! names (`softvfio run`: the VFIO queries and region/interrupt set-up of
//! [`filter::VFIO_NOTIFIABLE_IOCTLS`]). The thread waits in the kernel; a
//! notification thread of the supervisor answers it:
//!
//! - The child installs the filter with `SECCOMP_FILTER_FLAG_NEW_LISTENER`
//!   (and `WAIT_KILLABLE_RECV`, Linux 5.19: once received, only a fatal
//!   signal interrupts the call, so a served call never runs twice; on an
//!   older kernel a signal after receipt restarts the call, which is then
//!   served again) before
//!   `execve`, and passes the listener to the supervisor over a socket
//!   (`SCM_RIGHTS`); the listener is close-on-exec, the program never sees
//!   it. Children inherit the filter: their calls come to the same
//!   listener. `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (6.6) is asked for.
//! - The notification thread and the ptrace loop share the run's state
//!   and the handler under one lock (the ptrace thread does not hold it
//!   while it waits), so a handler sees one call at a time, as before.
//! - After each lookup through `/proc/<tid>` and before touching memory,
//!   `SECCOMP_IOCTL_NOTIF_ID_VALID` checks that the tid still names the
//!   waiting thread (not killed and reaped, its tid reused). A call whose
//!   thread left meanwhile (a signal before we received it, a kill) gets
//!   no answer: `NOTIF_SEND` fails with ENOENT and is ignored.
//! - Descriptors go in with `SECCOMP_IOCTL_NOTIF_ADDFD`: the socket pair
//!   behind an object is made in the supervisor, the program's end added
//!   (so an open needs one free slot, as on Linux), a synthesized file is
//!   a sealed memfd made here.
//! - Calls that are not ours continue (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`).
//!   What a `dup2`/`close_range` dropped is released before a notified call
//!   is served, as at a stop.
//! - ptrace stays for what must run in the program: the ioctls that pin
//!   (`MAP_DMA`, ...: `mlock`/`madvise` are injected), `close` (the release
//!   is delivered at the close's exit), the memory calls (BAR mappings),
//!   the `mlock` family, the SIGSEGV of trapped MMIO, fork/exec tracking.
//!   A call the supervisor injects is never notified
//!   ([`filter::INJECTED_SYSCALLS`]): an injected call runs the filter
//!   again, and would wait for the notification thread while that waits
//!   for the lock (a deadlock).
//! - A handler cannot inject while serving a notified call
//!   ([`InjectError::WrongThread`]/`NotStopped`), nor read the caller's
//!   registers.
//! - When the kernel refuses a listener (EBUSY: the program already runs
//!   under one, e.g. in a container runtime), the child installs the
//!   ptrace-only filter and the run is as without notification. A program
//!   that later installs its own listener gets EBUSY (one listener per
//!   filter tree); its own filters returning `ERRNO`/`KILL` still take
//!   precedence over ours, as before.

//! # Requirements and limits
//! x86-64; Linux ≥ 5.6 (`PTRACE_GET_SYSCALL_INFO`, `pidfd_getfd`); uses
//! `close_range` (5.9), thread pidfds (6.9) and the synchronous close of
//! 6.7 when available. Permission to ptrace the program (root, or same user
//! with a permissive Yama). `read`/`write`/`poll` on handler fds are
//! not intercepted: they act on the socket (`read` returns end of file,
//! `fstat` shows a socket), but in a process the handler gave
//! [`Tracee::serve_reads_and_writes`] (a second filter, for objects such as
//! an iommufd fault queue), whose `read`/`write` of its objects go to
//! [`handler::Handler::stream_rw`]; `mmap` of one is offered to
//! [`handler::Handler::memory_call`] and, when the handler declines,
//! reaches the socket (ENODEV); see [`mmio`]. A claimed `open`
//! needs two free descriptors for a moment. A program that installs its
//! own seccomp filter forbidding `socketpair`, `memfd_create` or `mlock`
//! breaks injection.

mod calls;
pub mod errno;
mod fdcache;
pub mod filter;
pub mod handler;
pub mod mmio;
pub mod objects;
mod paths;
pub mod spawn;
mod stat;
mod supervisor;
mod sys;
pub mod tracee;

/// Access to another process's memory from any thread of the supervisor
/// (`process_vm_readv`/`writev`; no stop needed), e.g. for device DMA into
/// a traced program. A partly unmapped range is `EFAULT`.
pub mod mem {
    use crate::errno::Errno;

    /// Reads `buf.len()` bytes at `addr` of process (or thread) `pid`.
    pub fn read(pid: i32, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        crate::sys::process_vm_read(pid, addr, buf)
    }

    /// Writes `data` at `addr` of process (or thread) `pid`.
    pub fn write(pid: i32, addr: u64, data: &[u8]) -> Result<(), Errno> {
        crate::sys::process_vm_write(pid, addr, data)
    }
}

pub use errno::Errno;
pub use handler::{Handler, ObjectId, OpenReply, OpenRequest, PassThrough};
pub use spawn::{Command, SpawnStage};
pub use supervisor::{exit_code, run, RunStats, Supervisor, TraceError};
pub use tracee::{InjectError, SyscallInjector, Tracee};
