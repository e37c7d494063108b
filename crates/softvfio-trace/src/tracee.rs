//! The stopped program thread a handler works on, and system call injection.
//!
//! # Injection
//! A handler runs while a program thread is stopped in a system call. Two
//! states are possible, and the supervisor tracks which one the thread is in:
//!
//! * **entry** (the seccomp stop, the system call has not run): we write the
//!   injected call's number into `orig_rax` and its arguments into the
//!   argument registers and resume with `PTRACE_SYSCALL`; the kernel
//!   re-reads the number after the seccomp stop, runs *our* call instead,
//!   and stops at its exit. One round trip. The program's own call is now
//!   consumed: the supervisor will either return a handler result or, for a
//!   pass-through, re-issue the original call by injection.
//! * **exit** (a system call has completed): we point `rip` back at the
//!   two-byte `syscall` instruction that brought the thread into the kernel
//!   (`rip - 2`), load `rax` and the arguments, set `orig_rax = -1` (so no
//!   restart logic applies) and resume with `PTRACE_SYSCALL`: the thread
//!   re-executes `syscall`, stops at its entry and then at its exit. Two
//!   round trips.
//!
//! * **an i386 call's entry** (`int $0x80` of a 64-bit process): the
//!   kernel would run a call injected here as an i386 one (its numbers,
//!   `ebx`, `ecx`, ... as arguments). The first injection skips the
//!   program's call (`orig_rax = -1`, to its exit stop) and the injected
//!   calls run as in the exit case, from a `syscall` instruction of the
//!   vDSO; a call the kernel is to run after all then runs its `int $0x80`
//!   again (`rip - 2`, its number back in `rax`).
//!
//! The saved registers are restored (with the final return value in `rax`)
//! before the thread continues, so injection is invisible to the program
//! except for the effects of the injected calls. Returning to user mode in
//! the exit case can dequeue a signal for the thread: such a signal-delivery
//! stop is taken out of the way (resumed without the signal), remembered
//! with its full `siginfo`, and queued again when the thread resumes; the
//! supervisor then restores the original `siginfo` at its delivery stop.
//!
//! Injection needs the ptrace tracer thread (ptrace requests from any other
//! thread fail) and a stopped thread; [`SyscallInjector`] checks both and
//! fails with [`InjectError`] otherwise, so engine code that may also run on
//! device threads can hold one safely.

use crate::errno::Errno;
use crate::handler::ObjectId;
use crate::supervisor::Core;
use crate::sys::{self, Regs, SigInfo};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;

/// Bytes below the stack pointer the x86-64 ABI lets leaf code use.
const RED_ZONE: u64 = 128;
/// How much stack below the red zone scratch data may use.
const STACK_SCRATCH_MAX: u64 = 8192;
/// Size of the private mapping used when the stack cannot take scratch data.
pub(crate) const SCRATCH_MAP_LEN: u64 = 64 * 1024;

/// Why a system call could not be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// No program thread is stopped under a handler call right now.
    #[error("no traced thread is stopped under a handler call")]
    NotStopped,
    /// Called from a thread other than the supervisor (ptrace tracer) thread.
    #[error("system calls can only be injected from the supervisor thread")]
    WrongThread,
    /// The stopped thread belongs to another process than the one asked for.
    #[error("the stopped thread belongs to pid {current}, not pid {wanted}")]
    OtherProcess {
        /// The process asked for.
        wanted: i32,
        /// The process the thread belongs to.
        current: i32,
    },
    /// The thread died (e.g. SIGKILL) during the injection.
    #[error("the traced thread is gone")]
    Gone,
    /// A ptrace request failed.
    #[error("ptrace failed: {0}")]
    Ptrace(Errno),
    /// The thread stopped in an unexpected way.
    #[error("unexpected ptrace stop during system call injection")]
    Protocol,
}

impl From<InjectError> for Errno {
    fn from(e: InjectError) -> Errno {
        match e {
            InjectError::NotStopped | InjectError::Gone | InjectError::OtherProcess { .. } => {
                Errno::ESRCH
            }
            InjectError::WrongThread => Errno::EPERM,
            InjectError::Ptrace(e) => e,
            InjectError::Protocol => Errno::EIO,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// At the seccomp stop: the program's system call has not run.
    Entry,
    /// At a syscall-exit stop: the program's call was consumed by injection.
    Exit,
}

/// Something seen during an injection that the main loop must handle.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Deferred {
    /// A wait status (of any traced thread) to process as if `waitpid`
    /// had returned it after the injection.
    Event { tid: i32, status: i32 },
    /// A new traced task was created (fork/vfork/clone event).
    Child { parent: i32, child: i32, event: i32 },
}

/// The state of the one program thread currently stopped under a handler.
#[derive(Debug)]
pub(crate) struct Stop {
    pub(crate) tid: i32,
    pub(crate) tgid: i32,
    /// Registers at the seccomp stop (restored before the thread resumes).
    pub(crate) regs: Regs,
    pub(crate) phase: Phase,
    /// The thread died during an injection: nothing to restore.
    pub(crate) gone: bool,
    /// Scratch bytes used below the red zone.
    pub(crate) stack_used: u64,
    /// Scratch bytes used in the process's scratch mapping.
    pub(crate) map_used: u64,
    /// Signals dequeued during injection, to deliver again.
    pub(crate) stashed: Vec<SigInfo>,
    pub(crate) deferred: Vec<Deferred>,
    /// Number of injected system calls (statistics).
    pub(crate) injected: u64,
    /// An injected call closed or replaced a descriptor (the supervisor's
    /// descriptor cache must forget what it knew).
    pub(crate) fds_changed: bool,
    /// A group-stop was resumed during the injection: the thread must be
    /// interrupted afterwards so that it joins the stop again.
    pub(crate) group_stop: bool,
    /// A stop taken with `PTRACE_INTERRUPT` ([`Stop::at_interrupt`]): the
    /// address of a `syscall` instruction injected calls run from (the
    /// thread may be anywhere in its code); `regs` are restored as they
    /// are when it resumes.
    pub(crate) insn: Option<u64>,
    /// A stop of an i386 call (`int $0x80`) of a 64-bit process: the x86-64
    /// call it stands for (`crate::calls::native_of_i386`). The kernel
    /// would run a call injected at its entry as an i386 one (its number
    /// and argument registers), so the first injection skips the program's
    /// call and runs from a `syscall` instruction, as at an interrupt stop.
    pub(crate) i386: Option<(i64, [u64; 6])>,
}

impl Stop {
    pub(crate) fn new(tid: i32, tgid: i32, regs: Regs) -> Stop {
        Stop {
            tid,
            tgid,
            regs,
            phase: Phase::Entry,
            gone: false,
            stack_used: 0,
            map_used: 0,
            stashed: Vec::new(),
            deferred: Vec::new(),
            injected: 0,
            fds_changed: false,
            group_stop: false,
            insn: None,
            i386: None,
        }
    }

    /// The stop of thread `tid` of `tgid`, which reported the interrupt
    /// stop (`PTRACE_EVENT_STOP`) of a `PTRACE_INTERRUPT`, made ready for
    /// injection; `None` when no `syscall` instruction is found or the
    /// thread is gone.
    ///
    /// The thread may have been blocking in a system call (interrupted: its
    /// `rax` a restart code, which the kernel would turn into a restart on
    /// resuming) or running its own code. The saved registers get the
    /// restart the kernel would have made (`rip` back on the `syscall`,
    /// `rax` the call again, or `restart_syscall`), and `orig_rax = -1` so
    /// that the kernel does not make it a second time; injected calls run
    /// from the `syscall` instruction the thread entered the kernel by, or
    /// else one of the vDSO's.
    pub(crate) fn at_interrupt(tid: i32, tgid: i32, group_stop: bool) -> Option<Stop> {
        let mut regs = sys::ptrace_getregs(tid).ok()?;
        let in_call = (regs.orig_rax as i64) >= 0;
        let at_syscall = |addr: u64| {
            let mut b = [0u8; 2];
            sys::process_vm_read(tgid, addr, &mut b).is_ok() && b == SYSCALL_INSN
        };
        let entered_by = regs.rip.wrapping_sub(2);
        let insn = if in_call && at_syscall(entered_by) {
            entered_by
        } else {
            vdso_syscall(tgid)?
        };
        if in_call {
            match regs.rax as i64 {
                ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                    regs.rax = regs.orig_rax;
                    regs.rip = entered_by;
                }
                ERESTART_RESTARTBLOCK => {
                    regs.rax = libc::SYS_restart_syscall as u64;
                    regs.rip = entered_by;
                }
                // A call that answers EINTR to any wake-up (no restart
                // code), woken by our interrupt alone (no signal for it to
                // deliver): Linux would not have woken it, so it runs
                // again (a relative timeout starts over).
                r if r == -i64::from(libc::EINTR)
                    && eintr_without_restart(regs.orig_rax as i64)
                    && !signal_deliverable(tgid, tid) =>
                {
                    regs.rax = regs.orig_rax;
                    regs.rip = entered_by;
                }
                _ => {}
            }
            regs.orig_rax = u64::MAX;
        }
        let mut stop = Stop::new(tid, tgid, regs);
        stop.phase = Phase::Exit;
        stop.insn = Some(insn);
        stop.group_stop = group_stop;
        Some(stop)
    }

    /// Runs a ptrace request on the stopped thread; ESRCH means the thread
    /// is being killed: collect its exit and report `Gone`.
    fn ptrace<T>(&mut self, r: Result<T, Errno>) -> Result<T, InjectError> {
        match r {
            Ok(v) => Ok(v),
            Err(Errno::ESRCH) => {
                self.reap();
                Err(InjectError::Gone)
            }
            Err(e) => Err(InjectError::Ptrace(e)),
        }
    }

    /// Waits for the next event of any traced thread. Events of other
    /// threads are deferred to the main loop: waiting for one thread only
    /// could deadlock (a dying thread-group leader is reported only after
    /// its other threads have been reaped).
    fn wait_own(&mut self) -> Result<i32, InjectError> {
        loop {
            match sys::waitpid(-1, libc::__WALL | libc::__WNOTHREAD) {
                Ok((pid, status)) if pid == self.tid => return Ok(status),
                // Another thread about to exit (exit_group while this one
                // is in a handler): let it die now, traced, or a dying
                // leader is never reported; its exit comes as an event.
                Ok((pid, status))
                    if status >> 8 == libc::SIGTRAP | libc::PTRACE_EVENT_EXIT << 8 =>
                {
                    let _ = sys::ptrace_cont(pid, 0);
                }
                Ok((pid, status)) => self.deferred.push(Deferred::Event { tid: pid, status }),
                Err(e) => {
                    self.gone = true;
                    return Err(InjectError::Ptrace(e));
                }
            }
        }
    }

    /// Waits for a thread that left its stop (killed) to exit. Its exit
    /// stop is let go; any other stop under its tid is a live thread that
    /// took the tid over (another thread's execve hands the leader's tid to
    /// the new image, whose exec event comes here): that one is left to
    /// the main loop, never resumed here.
    fn reap(&mut self) {
        while let Ok(status) = self.wait_own() {
            let dead = libc::WIFEXITED(status) || libc::WIFSIGNALED(status);
            let exit_stop = (status >> 16) & 0xff == libc::PTRACE_EVENT_EXIT;
            if dead || !exit_stop {
                self.gone = true;
                self.deferred.push(Deferred::Event {
                    tid: self.tid,
                    status,
                });
                return;
            }
            let _ = sys::ptrace_cont(self.tid, 0);
        }
    }

    /// Resumes with PTRACE_SYSCALL until the thread reaches a system call
    /// stop of kind `want` (entry or exit); returns the syscall info's
    /// first word (the return value for an exit stop).
    fn wait_syscall(&mut self, want: u8) -> Result<i64, InjectError> {
        let tid = self.tid;
        loop {
            let status = self.wait_own()?;
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                self.gone = true;
                self.deferred.push(Deferred::Event { tid, status });
                return Err(InjectError::Gone);
            }
            if !libc::WIFSTOPPED(status) {
                continue;
            }
            let sig = libc::WSTOPSIG(status);
            let event = (status >> 16) & 0xff;
            if sig == (libc::SIGTRAP | 0x80) {
                if want == sys::SYSCALL_INFO_ENTRY {
                    // Resumed at a `syscall` instruction with signals taken
                    // out of the way: the first syscall stop is its entry.
                    return Ok(0);
                }
                let info = self.ptrace(sys::ptrace_get_syscall_info(tid))?;
                if info.op == want {
                    return Ok(info.data[0] as i64);
                }
                return Err(InjectError::Protocol);
            }
            let resume_sig = match event {
                libc::PTRACE_EVENT_EXEC => {
                    // Another thread of the process called execve: this one
                    // was killed and the exec'ing thread took over its tid
                    // (a non-leader exec). The stop is the new image's:
                    // nothing of ours is left to restore there, and the
                    // main loop handles the exec.
                    self.gone = true;
                    self.deferred.push(Deferred::Event { tid, status });
                    return Err(InjectError::Gone);
                }
                libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK | libc::PTRACE_EVENT_CLONE => {
                    if let Ok(child) = sys::ptrace_geteventmsg(tid) {
                        self.deferred.push(Deferred::Child {
                            parent: tid,
                            child: child as i32,
                            event,
                        });
                    }
                    0
                }
                0 => {
                    // A signal-delivery stop: take the signal out of the way
                    // and deliver it again after the injection.
                    if let Ok(si) = sys::ptrace_getsiginfo(tid) {
                        self.stashed.push(si);
                    }
                    0
                }
                libc::PTRACE_EVENT_STOP => {
                    if matches!(
                        sig,
                        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                    ) {
                        self.group_stop = true;
                    }
                    0
                }
                // Seccomp stop of an injected traced call, anything else:
                // keep going.
                _ => 0,
            };
            self.ptrace(sys::ptrace_syscall(tid, resume_sig))?;
        }
    }

    /// Injects one system call; returns its raw result (`-errno` on error).
    pub(crate) fn inject(&mut self, nr: i64, args: [u64; 6]) -> Result<i64, InjectError> {
        if self.gone {
            return Err(InjectError::Gone);
        }
        let tid = self.tid;
        // Another thread's execve may have killed this one and handed its
        // tid to the new image, stopped at its exec event: never load our
        // registers into that (the event stays queued for the main loop).
        let want = match self.phase {
            Phase::Entry => sys::SYSCALL_INFO_SECCOMP,
            Phase::Exit => sys::SYSCALL_INFO_EXIT,
        };
        let info = self.ptrace(sys::ptrace_get_syscall_info(tid))?;
        // An interrupt stop is no system call stop (its op is none); after
        // a first injection the thread is at that call's exit.
        let interrupted = self.insn.is_some() && info.op == sys::SYSCALL_INFO_NONE;
        if info.op != want && !interrupted {
            self.gone = true;
            return Err(InjectError::Gone);
        }
        if self.i386.is_some() && self.phase == Phase::Entry {
            self.leave_i386_entry()?;
        }
        let mut r = self.regs;
        r.set_args(args);
        self.fds_changed |= crate::fdcache::changes_descriptors(nr);
        let res = match self.phase {
            Phase::Entry => {
                r.orig_rax = nr as u64;
                self.ptrace(sys::ptrace_setregs(tid, &r))?;
                self.ptrace(sys::ptrace_syscall(tid, 0))?;
                self.phase = Phase::Exit;
                self.wait_syscall(sys::SYSCALL_INFO_EXIT)
            }
            Phase::Exit => {
                r.rip = self.insn.unwrap_or(self.regs.rip.wrapping_sub(2));
                r.rax = nr as u64;
                r.orig_rax = u64::MAX;
                self.ptrace(sys::ptrace_setregs(tid, &r))?;
                self.ptrace(sys::ptrace_syscall(tid, 0))?;
                self.wait_syscall(sys::SYSCALL_INFO_ENTRY)?;
                self.ptrace(sys::ptrace_syscall(tid, 0))?;
                self.wait_syscall(sys::SYSCALL_INFO_EXIT)
            }
        };
        self.injected += 1;
        res
    }
}

impl Stop {
    /// At the entry stop of an i386 call: skips the program's call (the
    /// kernel runs no call numbered -1; the thread stops at its exit) and
    /// makes injected calls run from a `syscall` instruction of the vDSO
    /// (the x86-64 ABI), as at an interrupt stop.
    fn leave_i386_entry(&mut self) -> Result<(), InjectError> {
        let tid = self.tid;
        let insn = vdso_syscall(self.tgid).ok_or(InjectError::Protocol)?;
        let mut r = self.regs;
        r.orig_rax = u64::MAX;
        self.ptrace(sys::ptrace_setregs(tid, &r))?;
        self.ptrace(sys::ptrace_syscall(tid, 0))?;
        self.phase = Phase::Exit;
        self.wait_syscall(sys::SYSCALL_INFO_EXIT)?;
        self.insn = Some(insn);
        Ok(())
    }
}

/// x86-64's `syscall` instruction.
const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];
/// The kernel's restart codes (`include/linux/errno.h`), as `rax` holds
/// them when a blocking call was interrupted.
const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;

/// The address of a `syscall` instruction in the vDSO of process `pid`
/// (its fallback paths make real system calls).
fn vdso_syscall(pid: i32) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let line = maps.lines().find(|l| l.ends_with("[vdso]"))?;
    let (start, end) = line.split_whitespace().next()?.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let mut image = vec![
        0u8;
        usize::try_from(end.checked_sub(start)?)
            .ok()?
            .min(64 * 1024)
    ];
    sys::process_vm_read(pid, start, &mut image).ok()?;
    let at = image.windows(2).position(|w| w == SYSCALL_INSN)?;
    Some(start + at as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared between the supervisor, [`Tracee`]s and [`SyscallInjector`]s.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    tracer: Mutex<Option<ThreadId>>,
    slot: Mutex<Option<Stop>>,
    /// munlocks of a process's pages asked for while no thread of it was
    /// stopped (another process's unmap unpinned them): (pid, addr, len),
    /// run by the supervisor in that process before anything can look
    /// ([`SyscallInjector::munlock_in_owner`]).
    munlocks: Mutex<Vec<(i32, u64, u64)>>,
}

impl Shared {
    pub(crate) fn set_tracer(&self, t: Option<ThreadId>) {
        *lock(&self.tracer) = t;
    }

    pub(crate) fn put(&self, stop: Stop) {
        *lock(&self.slot) = Some(stop);
    }

    pub(crate) fn take(&self) -> Option<Stop> {
        lock(&self.slot).take()
    }

    /// The processes with munlocks waiting.
    pub(crate) fn munlock_pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = lock(&self.munlocks).iter().map(|m| m.0).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Takes the munlocks waiting for process `pid` out of the list (at its
    /// exec or exit they are dropped so: its locks go with its memory).
    pub(crate) fn take_munlocks(&self, pid: i32) -> Vec<(u64, u64)> {
        let mut all = lock(&self.munlocks);
        let mine = all
            .iter()
            .filter(|m| m.0 == pid)
            .map(|m| (m.1, m.2))
            .collect();
        all.retain(|m| m.0 != pid);
        mine
    }

    /// Runs `f` on the current stop, from the tracer thread only.
    pub(crate) fn with_stop<R>(&self, f: impl FnOnce(&mut Stop) -> R) -> Result<R, InjectError> {
        let tracer = *lock(&self.tracer);
        match tracer {
            None => return Err(InjectError::NotStopped),
            Some(t) if t != std::thread::current().id() => return Err(InjectError::WrongThread),
            Some(_) => {}
        }
        let mut g = lock(&self.slot);
        let stop = g.as_mut().ok_or(InjectError::NotStopped)?;
        Ok(f(stop))
    }
}

/// A handle that injects system calls into "the program thread stopped
/// under the current handler call", usable from deep inside engine code
/// (e.g. behind the memory backend's `MmSyscalls`).
///
/// `Clone + Send + Sync`. Every call fails with [`InjectError`] instead of
/// doing anything when it is not made on the supervisor thread during a
/// handler call (e.g. from a device thread, or after `run` returned), and,
/// for a handle made with [`for_pid`](Self::for_pid), when the stopped
/// thread belongs to another process.
///
/// ```
/// use softvfio_trace::{Supervisor, SyscallInjector};
/// // The memory backend's trait (in the engine crate), implemented over the
/// // injector:
/// trait MmSyscalls: Send + Sync {
///     fn madvise(&self, addr: u64, len: u64, advice: i32) -> Result<(), i32>;
///     fn mlock(&self, addr: u64, len: u64) -> Result<(), i32>;
///     fn munlock(&self, addr: u64, len: u64) -> Result<(), i32>;
/// }
/// struct TracedMm(SyscallInjector);
/// impl MmSyscalls for TracedMm {
///     fn madvise(&self, addr: u64, len: u64, advice: i32) -> Result<(), i32> {
///         self.0.madvise(addr, len, advice).map_err(|e| e.0)
///     }
///     fn mlock(&self, addr: u64, len: u64) -> Result<(), i32> {
///         self.0.mlock(addr, len).map_err(|e| e.0)
///     }
///     fn munlock(&self, addr: u64, len: u64) -> Result<(), i32> {
///         self.0.munlock(addr, len).map_err(|e| e.0)
///     }
/// }
/// let sup = Supervisor::new();
/// let mm = TracedMm(sup.injector());
/// // Outside a handler call nothing is stopped: a clean error.
/// assert_eq!(mm.mlock(0x1000, 4096), Err(libc::ESRCH));
/// ```
#[derive(Clone, Debug)]
pub struct SyscallInjector {
    pub(crate) shared: Arc<Shared>,
    pub(crate) pid: Option<i32>,
}

impl SyscallInjector {
    /// The same handle, restricted to threads of process `pid`.
    pub fn for_pid(&self, pid: i32) -> SyscallInjector {
        SyscallInjector {
            shared: self.shared.clone(),
            pid: Some(pid),
        }
    }

    /// (pid, tid) of the thread stopped under the current handler call.
    pub fn current(&self) -> Option<(i32, i32)> {
        self.shared.with_stop(|s| (s.tgid, s.tid)).ok()
    }

    /// Injects system call `nr`; returns its raw result (`-errno` on error).
    pub fn inject_syscall(&self, nr: i64, args: [u64; 6]) -> Result<i64, InjectError> {
        let want = self.pid;
        self.shared.with_stop(|s| match want {
            Some(pid) if pid != s.tgid => Err(InjectError::OtherProcess {
                wanted: pid,
                current: s.tgid,
            }),
            _ => s.inject(nr, args),
        })?
    }

    /// Injects `nr` and decodes the result: `Ok(value)` or `Err(errno)`;
    /// injection failures become ESRCH/EPERM/EIO (see [`InjectError`]).
    pub fn syscall(&self, nr: i64, args: [u64; 6]) -> Result<u64, Errno> {
        Errno::result(self.inject_syscall(nr, args)?)
    }

    /// `mlock(addr, len)` in the stopped program.
    pub fn mlock(&self, addr: u64, len: u64) -> Result<(), Errno> {
        self.syscall(libc::SYS_mlock, [addr, len, 0, 0, 0, 0])
            .map(drop)
    }

    /// `munlock(addr, len)` in the stopped program.
    pub fn munlock(&self, addr: u64, len: u64) -> Result<(), Errno> {
        self.syscall(libc::SYS_munlock, [addr, len, 0, 0, 0, 0])
            .map(drop)
    }

    /// `munlock(addr, len)` in process `pid` of a handle made with
    /// [`for_pid`](Self::for_pid): now when a thread of it is the stopped
    /// one; else (another process's call unpinned its pages) the supervisor
    /// runs it in that process before the current call returns, stopping a
    /// thread of it with `PTRACE_INTERRUPT` (or at its next stop, if it
    /// does not stop at once), and `Ok` is returned. Linux's unpin needs no
    /// help from the owner; our pins are the owner's mlocks, so that a
    /// `VmLck` or smaps `Locked` read of the owner must find them undone.
    pub fn munlock_in_owner(&self, addr: u64, len: u64) -> Result<(), Errno> {
        let r = self.inject_syscall(libc::SYS_munlock, [addr, len, 0, 0, 0, 0]);
        match (r, self.pid) {
            (Ok(r), _) => Errno::result(r).map(drop),
            (
                Err(
                    InjectError::OtherProcess { .. }
                    | InjectError::NotStopped
                    | InjectError::WrongThread,
                ),
                Some(pid),
            ) => {
                lock(&self.shared.munlocks).push((pid, addr, len));
                Ok(())
            }
            (Err(e), _) => Err(e.into()),
        }
    }

    /// `madvise(addr, len, advice)` in the stopped program (e.g.
    /// `MADV_POPULATE_WRITE` to fault pages in with write access).
    pub fn madvise(&self, addr: u64, len: u64, advice: i32) -> Result<(), Errno> {
        self.syscall(libc::SYS_madvise, [addr, len, advice as u64, 0, 0, 0])
            .map(drop)
    }
}

/// A call served through seccomp user notification: the thread waits in
/// the kernel (no ptrace stop), answered through `listener` under `id`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NotifCall<'a> {
    pub(crate) listener: BorrowedFd<'a>,
    pub(crate) id: u64,
}

impl NotifCall<'_> {
    /// The thread still waits in this call: its tid still names it (not
    /// killed, not interrupted, so not reaped and reused).
    pub(crate) fn valid(&self) -> bool {
        sys::notif_id_valid(self.listener, self.id)
    }
}

/// The program thread stopped in an intercepted system call: at a ptrace
/// stop, or waiting for the answer to a seccomp user notification (then
/// nothing can be injected: [`InjectError::NotStopped`] or
/// [`InjectError::WrongThread`]).
pub struct Tracee<'a> {
    pub(crate) core: &'a mut Core,
    pub(crate) pid: i32,
    pub(crate) tid: i32,
    pub(crate) notif: Option<NotifCall<'a>>,
}

impl std::fmt::Debug for Tracee<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracee")
            .field("pid", &self.pid)
            .field("tid", &self.tid)
            .finish()
    }
}

impl<'a> Tracee<'a> {
    /// Process id (thread group id) of the stopped thread.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Thread id of the stopped thread.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The intercepted system call's number and arguments as the program
    /// made it (an i386 call's as the x86-64 call it stands for).
    pub fn syscall_args(&self) -> (i64, [u64; 6]) {
        self.core
            .shared
            .with_stop(|s| s.i386.unwrap_or((s.regs.orig_rax as i64, s.regs.args())))
            .unwrap_or((-1, [0; 6]))
    }

    /// The stopped thread's instruction, stack and frame pointers (`rip`,
    /// `rsp`, `rbp`), for call-site walks (the DMA sanitizer).
    pub fn stack_registers(&self) -> Option<(u64, u64, u64)> {
        self.core
            .shared
            .with_stop(|s| (s.regs.rip, s.regs.rsp, s.regs.rbp))
            .ok()
    }

    /// A notified thread that no longer waits (killed): its tid may be
    /// reaped and reused, so its memory is never touched through it.
    fn check_alive(&self) -> Result<(), Errno> {
        match self.notif {
            Some(c) if !c.valid() => Err(Errno::ESRCH),
            _ => Ok(()),
        }
    }

    /// The thread still waits in the intercepted call: always at a ptrace
    /// stop; for a notified call, while its notification is pending.
    pub(crate) fn still_waiting(&self) -> bool {
        self.check_alive().is_ok()
    }

    /// Reads program memory; a partly unmapped range is EFAULT.
    pub fn read_mem(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.check_alive()?;
        sys::process_vm_read(self.tid, addr, buf)
    }

    /// Reads program memory at `addr` into `buf` (at most 16 KiB) in one
    /// system call: how many bytes were read, a prefix of `buf` (the first
    /// unreadable page ends it; none readable: EFAULT).
    pub fn read_prefix(&self, addr: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        self.check_alive()?;
        match sys::process_vm_read_prefix(self.tid, addr, buf)? {
            0 if !buf.is_empty() => Err(Errno::EFAULT),
            n => Ok(n),
        }
    }

    /// Writes program memory; a partly unmapped or read-only range is EFAULT
    /// (possibly after writing a prefix, as `copy_to_user` would).
    pub fn write_mem(&self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        self.check_alive()?;
        sys::process_vm_write(self.tid, addr, data)
    }

    /// Reads `len` bytes of program memory.
    pub fn read_bytes(&self, addr: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let mut v = vec![0u8; len];
        self.read_mem(addr, &mut v)?;
        Ok(v)
    }

    /// Reads a NUL-terminated string of at most `max` bytes (without the
    /// NUL); longer is ENAMETOOLONG, unreadable memory EFAULT.
    pub fn read_cstr_bytes(&self, addr: u64, max: usize) -> Result<Vec<u8>, Errno> {
        self.check_alive()?;
        self.read_cstr_bytes_unchecked(addr, max)
    }

    /// [`read_cstr_bytes`](Self::read_cstr_bytes) without checking that a
    /// notified call still waits: what it reads may come from another
    /// process if the thread died and its tid was reused, so the caller
    /// checks ([`Self::still_waiting`]) before it acts on it. For the
    /// notified calls that are nearly never ours (the stat family), where
    /// the check would cost every call an ioctl.
    pub(crate) fn read_cstr_bytes_unchecked(
        &self,
        addr: u64,
        max: usize,
    ) -> Result<Vec<u8>, Errno> {
        let mut out = Vec::new();
        let mut a = addr;
        let mut chunk = [0u8; 4096];
        while out.len() < max {
            let n = ((4096 - (a % 4096)) as usize).min(max - out.len());
            let buf = &mut chunk[..n];
            sys::process_vm_read(self.tid, a, buf)?;
            if let Some(p) = buf.iter().position(|b| *b == 0) {
                out.extend_from_slice(&buf[..p]);
                return Ok(out);
            }
            out.extend_from_slice(buf);
            a = a.wrapping_add(n as u64);
        }
        Err(Errno::ENAMETOOLONG)
    }

    /// [`read_cstr_bytes`](Self::read_cstr_bytes) as a (lossy UTF-8) String.
    pub fn read_cstr(&self, addr: u64, max: usize) -> Result<String, Errno> {
        Ok(String::from_utf8_lossy(&self.read_cstr_bytes(addr, max)?).into_owned())
    }

    /// Injects system call `nr` into the stopped thread and returns its raw
    /// result (`-errno` on failure). Any number of injections can be made
    /// during one handler call.
    pub fn inject_syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64, InjectError> {
        self.core.shared.with_stop(|s| s.inject(nr, args))?
    }

    /// Injects `nr` and decodes the result into `Ok(value)`/`Err(errno)`.
    pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<u64, Errno> {
        Errno::result(self.inject_syscall(nr, args)?)
    }

    /// A handle for injecting from code that has no access to this `Tracee`.
    pub fn injector(&self) -> SyscallInjector {
        SyscallInjector {
            shared: self.core.shared.clone(),
            pid: None,
        }
    }

    /// Copies `data` into scratch memory of the program and returns its
    /// address, for buffers of injected system calls. Valid until the
    /// handler call returns. Uses the stack below the red zone (free for
    /// signal frames at any time, so the program keeps nothing there), or
    /// a private mapping made once per process when the stack is too short.
    pub fn scratch(&mut self, data: &[u8]) -> Result<u64, Errno> {
        let len = (data.len() as u64 + 15) & !15;
        let at = self.core.shared.with_stop(|s| {
            let top = s.regs.rsp.checked_sub(RED_ZONE + s.stack_used)?;
            let addr = top.checked_sub(len)? & !15;
            let used = s.regs.rsp - RED_ZONE - addr;
            (used <= STACK_SCRATCH_MAX).then_some((addr, used))
        })?;
        if let Some((addr, used)) = at {
            if self.write_mem(addr, data).is_ok() {
                self.core.shared.with_stop(|s| s.stack_used = used)?;
                return Ok(addr);
            }
        }
        let base = self.scratch_map()?;
        let off = self.core.shared.with_stop(|s| {
            let off = s.map_used;
            (off + len <= SCRATCH_MAP_LEN).then(|| {
                s.map_used += len;
                off
            })
        })?;
        let addr = base + off.ok_or(Errno::ENOMEM)?;
        self.write_mem(addr, data)?;
        Ok(addr)
    }

    fn scratch_map(&mut self) -> Result<u64, Errno> {
        if let Some(a) = self.core.scratch_map(self.pid) {
            return Ok(a);
        }
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let a = self.syscall(
            libc::SYS_mmap,
            [0, SCRATCH_MAP_LEN, prot, flags, u64::MAX, 0],
        )?;
        self.core.set_scratch_map(self.pid, a);
        Ok(a)
    }

    /// The handler object a program descriptor refers to, if any (e.g. the
    /// container fd passed to `VFIO_GROUP_SET_CONTAINER`).
    pub fn object_of_fd(&self, fd: i32) -> Option<ObjectId> {
        self.core.fd_object(self.tid, fd)
    }

    /// A duplicate, owned by the supervisor, of program descriptor `fd`
    /// (`pidfd_getfd`), e.g. an eventfd handed over by `VFIO_DEVICE_SET_IRQS`.
    pub fn dup_fd(&mut self, fd: i32) -> Result<OwnedFd, Errno> {
        self.core.getfd(self.pid, self.tid, fd)
    }

    /// Creates a new program descriptor for `obj` and returns its number
    /// (the lowest free one, as `open` would pick), e.g. for
    /// `VFIO_GROUP_GET_DEVICE_FD`. The same object may be installed any
    /// number of times; it is released when all of them are closed.
    pub fn install_object(&mut self, obj: ObjectId, cloexec: bool) -> Result<i32, Errno> {
        self.install_object_with(obj, cloexec, true)
    }

    /// [`Tracee::install_object`] for an object whose `read`/`write` the
    /// handler serves ([`crate::handler::Handler::stream_rw`], after
    /// [`Tracee::serve_reads_and_writes`]): its socket never polls readable
    /// (no end-of-file), only writable.
    pub fn install_served_object(&mut self, obj: ObjectId, cloexec: bool) -> Result<i32, Errno> {
        self.install_object_with(obj, cloexec, false)
    }

    /// Makes every later `read`/`write` of this process stop (a second
    /// seccomp filter, [`crate::filter::build_reads_and_writes`], added by
    /// injection once per process; its children inherit it), so that
    /// [`crate::handler::Handler::stream_rw`] serves those on its objects. Each read and
    /// write of the process then costs a stop: only for programs holding
    /// such an object.
    pub fn serve_reads_and_writes(&mut self) -> Result<(), Errno> {
        if self.core.reads_served(self.pid) {
            return Ok(());
        }
        let prog = crate::filter::build_reads_and_writes();
        let mut bytes = Vec::with_capacity(prog.len() * 8);
        for i in &prog {
            bytes.extend_from_slice(&i.code.to_ne_bytes());
            bytes.push(i.jt);
            bytes.push(i.jf);
            bytes.extend_from_slice(&i.k.to_ne_bytes());
        }
        let filter = self.scratch(&bytes)?;
        // struct sock_fprog: unsigned short len, (padding), filter pointer.
        let mut fprog = [0u8; 16];
        fprog[..2].copy_from_slice(&(prog.len() as u16).to_ne_bytes());
        fprog[8..].copy_from_slice(&filter.to_ne_bytes());
        let at = self.scratch(&fprog)?;
        // TSYNC: on every thread of the process, not only the one that
        // made the queue (any may read it; and their children inherit it).
        // It fails (the id of a thread that cannot take it: one with other
        // filters of its own) without installing anything: then on this
        // thread alone. SPEC_ALLOW: no speculative-store-bypass mitigation
        // forced on the program by our filter (as for the first one);
        // older kernels lack the flag (EINVAL).
        let mode = libc::SECCOMP_SET_MODE_FILTER as u64;
        let tsync = libc::SECCOMP_FILTER_FLAG_TSYNC;
        let spec_allow = libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW;
        let install = |t: &mut Self, flags: u64| match t
            .syscall(libc::SYS_seccomp, [mode, flags | spec_allow, at, 0, 0, 0])
        {
            Err(Errno::EINVAL) => t.syscall(libc::SYS_seccomp, [mode, flags, at, 0, 0, 0]),
            r => r,
        };
        match install(self, tsync)? {
            0 => {}
            diverged => {
                tracing::debug!(
                    pid = self.pid,
                    diverged,
                    "no TSYNC: the second filter on one thread"
                );
                install(self, 0)?;
            }
        }
        self.core.set_reads_served(self.pid);
        Ok(())
    }

    fn install_object_with(
        &mut self,
        obj: ObjectId,
        cloexec: bool,
        eof: bool,
    ) -> Result<i32, Errno> {
        if let Some(c) = self.notif {
            // The pair is made here; the program's end goes in with ADDFD.
            let (program_end, peer) = sys::stream_pair()?;
            let ino = sys::inode_of(program_end.as_fd())?;
            self.core.objects.add(ino, obj, peer, eof)?;
            return match sys::notif_addfd(c.listener, c.id, program_end.as_fd(), cloexec) {
                Ok(fd) => {
                    self.core.stats.installed += 1;
                    Ok(fd)
                }
                Err(e) => {
                    self.core.objects.withdraw(ino);
                    Err(e)
                }
            };
        }
        let sv = self.scratch(&[0xffu8; 8])?;
        let ty = libc::SOCK_STREAM | if cloexec { libc::SOCK_CLOEXEC } else { 0 };
        self.syscall(
            libc::SYS_socketpair,
            [libc::AF_UNIX as u64, ty as u64, 0, sv, 0, 0],
        )?;
        let mut b = [0u8; 8];
        self.read_mem(sv, &mut b)?;
        let ours = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        let other = i32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
        let adopted = self.adopt(obj, ours, other, eof);
        let _ = self.close_fd(other);
        match adopted {
            Ok(()) => Ok(ours),
            Err(e) => {
                let _ = self.close_fd(ours);
                Err(e)
            }
        }
    }

    /// Closes a program descriptor by injection. `close_range(fd, fd, 0)`
    /// is `close(fd)` without a seccomp stop (our filter traps `close`).
    pub fn close_fd(&mut self, fd: i32) -> Result<(), Errno> {
        let a = fd as u32 as u64;
        match self.syscall(libc::SYS_close_range, [a, a, 0, 0, 0, 0]) {
            Err(Errno::ENOSYS) => self.syscall(libc::SYS_close, [a, 0, 0, 0, 0, 0]).map(drop),
            r => r.map(drop),
        }
    }

    fn adopt(&mut self, obj: ObjectId, ours: i32, other: i32, eof: bool) -> Result<(), Errno> {
        let peer = self.core.getfd(self.pid, self.tid, other)?;
        let ino = self.core.fd_inode(self.tid, ours).ok_or(Errno::EBADF)?;
        self.core.objects.add(ino, obj, peer, eof)?;
        self.core.stats.installed += 1;
        Ok(())
    }

    /// Creates a new program descriptor for a read-only regular file with
    /// `contents` at offset 0 (a sealed memfd) and returns its number.
    pub fn install_file(&mut self, contents: &[u8], cloexec: bool) -> Result<i32, Errno> {
        if let Some(c) = self.notif {
            let f = sys::memfd_sealable()?;
            sys::pwrite_all(f.as_fd(), contents, 0)?;
            sys::add_seals(
                f.as_fd(),
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL,
            )?;
            return sys::notif_addfd(c.listener, c.id, f.as_fd(), cloexec);
        }
        let name = self.scratch(b"softvfio\0")?;
        let flags = libc::MFD_ALLOW_SEALING | if cloexec { libc::MFD_CLOEXEC } else { 0 };
        let fd = self.syscall(libc::SYS_memfd_create, [name, flags as u64, 0, 0, 0, 0])? as i32;
        let filled = self.core.getfd(self.pid, self.tid, fd).and_then(|f| {
            sys::pwrite_all(f.as_fd(), contents, 0)?;
            sys::add_seals(
                f.as_fd(),
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL,
            )
        });
        match filled {
            Ok(()) => Ok(fd),
            Err(e) => {
                let _ = self.close_fd(fd);
                Err(e)
            }
        }
    }
}

/// System calls that return EINTR, not a restart code, when anything
/// wakes them with a signal pending (signal(7), "Interruption of system
/// calls ... never restarted"), among those a thread may block in.
fn eintr_without_restart(nr: i64) -> bool {
    [
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_semop,
        libc::SYS_semtimedop,
        libc::SYS_rt_sigtimedwait,
        libc::SYS_io_getevents,
    ]
    .contains(&nr)
}

/// Whether thread `tid` of `tgid` has a signal pending that it does not
/// block (so a wake-up was, or will be, a signal's). Unknown: yes.
fn signal_deliverable(tgid: i32, tid: i32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{tgid}/task/{tid}/status")) else {
        return true;
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    match (field("SigPnd:"), field("ShdPnd:"), field("SigBlk:")) {
        (Some(own), Some(shared), Some(blocked)) => (own | shared) & !blocked != 0,
        _ => true,
    }
}
