//! The supervisor: spawns the program, follows its threads and children,
//! and dispatches the intercepted system calls to the [`Handler`].

use crate::calls::Call;
use crate::errno::Errno;
use crate::fdcache::{self, FdCache};
use crate::handler::{Handler, ObjectId, OpenReply, OpenRequest};
use crate::objects::{socket_inode, Objects};
use crate::paths::normalize;
use crate::spawn::{self, ChildFds, Command, Prepared, SpawnStage};
use crate::sys::{self, SigInfo};
use crate::tracee::{Deferred, NotifCall, Phase, Shared, Stop, SyscallInjector, Tracee};
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Why [`Supervisor::run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The program could not be started.
    #[error("cannot run {program:?}: {stage}: {errno}")]
    Spawn {
        /// The program.
        program: OsString,
        /// Where the start failed.
        stage: SpawnStage,
        /// Its errno.
        errno: Errno,
    },
    /// A system call of the supervisor itself failed.
    #[error("{what}: {errno}")]
    Sys {
        /// What failed.
        what: &'static str,
        /// Its errno.
        errno: Errno,
    },
}

fn sys_err(what: &'static str) -> impl FnOnce(Errno) -> TraceError {
    move |errno| TraceError::Sys { what, errno }
}

/// Counters of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Seccomp stops (intercepted system call entries).
    pub stops: u64,
    /// System calls answered by the handler (not run by the kernel).
    pub served: u64,
    /// System calls injected into the program.
    pub injected: u64,
    /// Program descriptors created for handler objects.
    pub installed: u64,
    /// `Handler::release` calls.
    pub released: u64,
    /// Signals that arrived during an injection and were delivered again.
    pub requeued: u64,
    /// Seccomp user notifications (calls seen without a ptrace stop).
    pub notified: u64,
    /// Notified calls whose descriptor was found in the descriptor cache
    /// instead of `/proc/<tid>/fd` (`fdcache.rs`).
    pub fd_cache_hits: u64,
}

const PTRACE_OPTIONS: i32 = libc::PTRACE_O_TRACESYSGOOD
    | libc::PTRACE_O_TRACESECCOMP
    | libc::PTRACE_O_TRACECLONE
    | libc::PTRACE_O_TRACEFORK
    | libc::PTRACE_O_TRACEVFORK
    | libc::PTRACE_O_TRACEEXEC
    | libc::PTRACE_O_TRACEEXIT
    | libc::PTRACE_O_EXITKILL;

/// How long the supervisor waits for a process it let go at its exit stop
/// to finish dying (closing its files) before it moves on; the objects it
/// held are then released at the next sweep instead.
const EXIT_WAIT_MS: i32 = 1000;

/// How long a munlock's owner is given to stop for it after a
/// `PTRACE_INTERRUPT` before the calling process goes on ([`Core::run_munlocks`]).
const INTERRUPT_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

const SI_TKILL: i32 = -6;
const PATH_MAX: usize = 4096;
/// Linux's UIO_MAXIOV.
const IOV_MAX: u64 = 1024;

/// Runs programs under ptrace + seccomp with a [`Handler`] serving their
/// intercepted system calls.
#[derive(Debug)]
pub struct Supervisor {
    shared: Arc<Shared>,
    close_flush: bool,
    stats: RunStats,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor::new()
    }
}

/// close(2) drops the last file reference synchronously since Linux 6.7
/// (`__fput_sync`); before, the release ran on the way back to user mode.
fn kernel_defers_close_fput() -> bool {
    let Some(rel) = sys::kernel_release() else {
        return true;
    };
    let mut it = rel
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse::<u32>().ok());
    let major = it.next().unwrap_or(0);
    let minor = it.next().unwrap_or(0);
    (major, minor) < (6, 7)
}

impl Supervisor {
    /// A supervisor with no program yet.
    pub fn new() -> Supervisor {
        Supervisor {
            shared: Arc::new(Shared::default()),
            close_flush: kernel_defers_close_fput(),
            stats: RunStats::default(),
        }
    }

    /// A handle for injecting system calls into the program thread that is
    /// stopped under the current handler call. Can be made before `run`
    /// and kept by engine code; see [`SyscallInjector`].
    pub fn injector(&self) -> SyscallInjector {
        SyscallInjector {
            shared: self.shared.clone(),
            pid: None,
        }
    }

    /// After closing one of several descriptors of an object, let the thread
    /// pass through the return to user mode once before checking whether
    /// the object lost its last reference. Needed on kernels before 6.7
    /// (where close(2) finishes the final release there); on by default
    /// exactly on those.
    pub fn set_close_flush(&mut self, on: bool) {
        self.close_flush = on;
    }

    /// Counters of the last (or current) run.
    pub fn stats(&self) -> RunStats {
        self.stats
    }

    /// Runs `cmd` to completion under `handler`: returns when the program
    /// and every process it forked have exited, with the exit status of the
    /// program itself (see [`exit_code`] for the shell convention).
    ///
    /// The calling thread is the ptrace tracer for the whole run (`run`
    /// blocks) and reaps the program's processes with
    /// `waitpid(-1, __WALL | __WNOTHREAD)`. Other threads of this process
    /// must not wait for "any child" without `__WNOTHREAD` meanwhile (that
    /// would steal the program's stops and exit). Several supervisors may
    /// run at once on different threads. A command-line front end should
    /// ignore SIGINT/SIGQUIT while it runs (as a shell does for a
    /// foreground job) and exit with [`exit_code`] of the result.
    pub fn run(
        &mut self,
        cmd: Command,
        handler: &mut dyn Handler,
    ) -> Result<ExitStatus, TraceError> {
        let program = cmd.get_program().to_owned();
        let prep = Prepared::new(&cmd).map_err(|errno| TraceError::Spawn {
            program: program.clone(),
            stage: SpawnStage::Lookup,
            errno,
        })?;
        let (sync_r, sync_w) = sys::pipe_cloexec().map_err(sys_err("pipe"))?;
        let (err_r, err_w) = sys::pipe_cloexec().map_err(sys_err("pipe"))?;
        sys::set_nonblocking(err_r.as_fd()).map_err(sys_err("fcntl"))?;
        let listener_pair = if cmd.wants_listener() {
            Some(sys::seqpacket_pair().map_err(sys_err("socketpair"))?)
        } else {
            None
        };
        let objects = Objects::new().map_err(sys_err("epoll_create"))?;
        let fds = ChildFds {
            sync_read: sync_r.as_raw_fd(),
            sync_write: sync_w.as_raw_fd(),
            err_write: err_w.as_raw_fd(),
            listener_send: listener_pair.as_ref().map(|(_, child)| child.as_raw_fd()),
        };
        let pid = spawn::fork_exec(&prep, &fds).map_err(sys_err("fork"))?;
        // Our copy of the child's end goes, so that a child that dies or
        // execs without sending shows as end of file.
        let listener_recv = listener_pair.map(|(ours, _child)| ours);
        drop((sync_r, err_w, cmd, prep));
        if let Err(e) = sys::ptrace_seize(pid, PTRACE_OPTIONS) {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::waitpid(pid, 0);
            return Err(TraceError::Sys {
                what: "PTRACE_SEIZE",
                errno: e,
            });
        }
        self.shared.set_tracer(Some(std::thread::current().id()));
        let core = Core::new(self.shared.clone(), pid, self.close_flush, err_r, objects);
        tracing::debug!(pid, program = ?program, "spawned under ptrace");
        handler.spawned(pid);
        let served = Mutex::new(Served { core, h: handler });
        // The notification server waits in NOTIF_RECV (see StopServer).
        let blocking = AtomicBool::new(false);
        let res = std::thread::scope(|scope| -> Result<(), TraceError> {
            let (stop_r, stop_w) = sys::pipe_cloexec().map_err(sys_err("pipe"))?;
            // Ends the notification server however this closure is left
            // (a handler panic included), before the scope joins it.
            let _stop = StopServer {
                pipe: stop_w,
                served: &served,
                blocking: &blocking,
            };
            let server = match listener_recv {
                Some(sock) => {
                    let (served, blocking) = (&served, &blocking);
                    let spawned = std::thread::Builder::new()
                        .name("softvfio-notif".into())
                        .spawn_scoped(scope, move || {
                            serve_notifications(served, sock, stop_r, blocking)
                        });
                    match spawned {
                        Ok(j) => Some(j),
                        Err(_) => {
                            // Nobody would answer the notified calls.
                            return Err(TraceError::Sys {
                                what: "spawn notification thread",
                                errno: Errno::EAGAIN,
                            });
                        }
                    }
                }
                None => None,
            };
            sys::write_byte(sync_w.as_fd()).map_err(sys_err("write"))?;
            drop(sync_w);
            let r = run_loop(&served);
            drop(_stop);
            if let Some(j) = server {
                if let Ok(Some(payload)) = j.join() {
                    // A handler panicked on the notification thread: the
                    // program was killed there; report the panic here.
                    std::panic::resume_unwind(payload);
                }
            }
            r
        });
        let Served { mut core, h } = served.into_inner().unwrap_or_else(PoisonError::into_inner);
        let out = res.and_then(|()| core.conclude(h, program));
        core.stats.fd_cache_hits = core.fd_cache.hits;
        self.stats = core.stats;
        drop(core);
        self.shared.set_tracer(None);
        out
    }
}

/// What the ptrace loop and the notification server share: the run's
/// state and the handler, used by one of them at a time.
struct Served<'h> {
    core: Core,
    h: &'h mut dyn Handler,
}

fn lock<'a, 'h>(m: &'a Mutex<Served<'h>>) -> MutexGuard<'a, Served<'h>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ends the notification server when dropped: writes to its stop pipe,
/// which it polls between notifications. A server that waits in
/// `NOTIF_RECV` itself (`blocking`) wakes only when no process uses the
/// filter any more: if the run ends with processes left (an error, a
/// handler panic), they are killed and reaped first, as the end of the
/// tracer would kill them anyway (`PTRACE_O_EXITKILL`).
struct StopServer<'a, 'h> {
    pipe: OwnedFd,
    served: &'a Mutex<Served<'h>>,
    blocking: &'a AtomicBool,
}

impl Drop for StopServer<'_, '_> {
    fn drop(&mut self) {
        let _ = sys::write_byte(self.pipe.as_fd());
        if !self.blocking.load(Ordering::Acquire) {
            return;
        }
        let left: Vec<i32> = lock(self.served).core.procs.keys().copied().collect();
        if left.is_empty() {
            return;
        }
        for tgid in &left {
            let _ = sys::kill(*tgid, libc::SIGKILL);
        }
        // The filter's users go when their tasks are reaped; a killed
        // thread may still report its exit stop first.
        while let Ok((tid, status)) = sys::waitpid(-1, libc::__WALL | libc::__WNOTHREAD) {
            if libc::WIFSTOPPED(status) {
                let _ = sys::ptrace_cont(tid, 0);
            }
        }
    }
}

/// The ptrace event loop: waits (without the lock, so that notifications
/// are served meanwhile) and handles each event under the lock.
fn run_loop(served: &Mutex<Served<'_>>) -> Result<(), TraceError> {
    loop {
        let queued = {
            let mut g = lock(served);
            if g.core.threads.is_empty() {
                return Ok(());
            }
            g.core.queue.pop_front()
        };
        let (tid, status) = match queued {
            Some(e) => e,
            None => match sys::waitpid(-1, libc::__WALL | libc::__WNOTHREAD) {
                Ok(e) => e,
                Err(Errno::ECHILD) => return Ok(()),
                Err(e) => {
                    return Err(TraceError::Sys {
                        what: "waitpid",
                        errno: e,
                    })
                }
            },
        };
        let mut g = lock(served);
        let Served { core, h } = &mut *g;
        core.on_event(*h, tid, status);
        core.run_munlocks(*h, None);
    }
}

/// The seccomp user-notification server (its own thread): receives the
/// listener from the child, then answers each notification under the
/// lock, until the program's last process is gone (the listener hangs up)
/// or `stop` turns readable. A handler panic kills the program and is
/// returned, to be raised on the supervisor thread.
fn serve_notifications(
    served: &Mutex<Served<'_>>,
    sock: OwnedFd,
    stop: OwnedFd,
    blocking: &AtomicBool,
) -> Option<Box<dyn std::any::Any + Send>> {
    let ready = sys::poll_fds([sock.as_fd(), stop.as_fd()], libc::POLLIN).ok()?;
    if ready[1] != 0 || ready[0] & libc::POLLIN == 0 {
        return None;
    }
    // None: the child installed the ptrace-only filter (no listener).
    let listener = sys::recv_fd(sock.as_fd()).ok()??;
    drop(sock);
    // The filter with a listener also stops what replaces descriptors.
    lock(served).core.fd_cache.enable();
    // Linux 6.6 and later: the calling thread and this one hand the CPU to
    // each other (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP), and NOTIF_RECV
    // returns once no process uses the filter. The hand-over only works for
    // a thread waiting in NOTIF_RECV itself (a poll waiter is woken the
    // ordinary way, on any CPU), so with it this thread waits there, and
    // polls only to tell an end from a withdrawn notification. The quiet
    // machine's round trip: docs/PERFORMANCE.md, "The cost of a trapped
    // call".
    let sync = sys::notif_sync_wakeup(listener.as_fd());
    blocking.store(sync, Ordering::Release);
    tracing::debug!(sync_wakeup = sync, "serving seccomp user notifications");
    let ended = |wait: bool| -> bool {
        let fds = [listener.as_fd(), stop.as_fd()];
        let ready = if wait {
            sys::poll_fds(fds, libc::POLLIN)
        } else {
            sys::poll_fds_now(fds, libc::POLLIN)
        };
        // POLLHUP on the listener: no process uses the filter any more.
        ready.map_or(true, |r| {
            r[1] != 0 || r[0] & (libc::POLLHUP | libc::POLLERR) != 0
        })
    };
    loop {
        if !sync && ended(true) {
            return None;
        }
        let n = match sys::notif_recv(listener.as_fd()) {
            Ok(n) => n,
            // Withdrawn meanwhile (the thread was killed), interrupted, or
            // (waiting in NOTIF_RECV) the filter has no user any more.
            Err(Errno::ENOENT) | Err(Errno::EINTR) => {
                if sync && ended(false) {
                    return None;
                }
                continue;
            }
            Err(_) => return None,
        };
        let outcome = {
            let mut g = lock(served);
            let Served { core, h } = &mut *g;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                core.on_notification(*h, listener.as_fd(), &n)
            }));
            match r {
                Ok(o) => o,
                Err(payload) => {
                    for tgid in core.procs.keys() {
                        let _ = sys::kill(*tgid, libc::SIGKILL);
                    }
                    return Some(payload);
                }
            }
        };
        let (ret, cont) = match outcome {
            Outcome::Pass => (0, true),
            Outcome::Return(v) => (v, false),
        };
        // ENOENT: the thread left the call meanwhile (killed, or a signal
        // before we received it); nothing to answer.
        let _ = sys::notif_send(listener.as_fd(), n.id, ret, cont);
    }
}

/// What a seccomp stop's call is, as to the i386 ABI.
enum I386 {
    /// An x86-64 call.
    No,
    /// An i386 call of a 64-bit process standing for this x86-64 call
    /// ([`crate::calls::native_of_i386`]).
    Call(i64, [u64; 6]),
    /// An i386 call the supervisor leaves to the kernel.
    Other,
}

/// `cs` of 64-bit user code (`__USER_CS`); an i386 process runs with
/// `__USER32_CS` (0x23).
const USER_CS_64: u64 = 0x33;

/// Which ABI the call of thread `tid` stopped at its seccomp stop with
/// `regs` is of. Only the numbers the filter stops for the i386 ABI can
/// be one, so only those ask the kernel (`PTRACE_GET_SYSCALL_INFO`: the
/// registers do not say how the thread entered).
fn i386_call(tid: i32, regs: &sys::Regs) -> I386 {
    use crate::filter::{i386, AUDIT_ARCH_I386, I386_FD_TABLE_SYSCALLS, I386_TRACED_SYSCALLS};
    let nr = regs.orig_rax as i64;
    let maybe = nr == i386::IOCTL
        || I386_TRACED_SYSCALLS.contains(&nr)
        || I386_FD_TABLE_SYSCALLS.contains(&nr);
    if !maybe {
        return I386::No;
    }
    match sys::ptrace_get_syscall_info(tid) {
        Ok(info) if info.arch == AUDIT_ARCH_I386 => {
            if regs.cs != USER_CS_64 {
                return I386::Other;
            }
            match crate::calls::native_of_i386(nr, regs.args_i386()) {
                Some((nr, args)) => I386::Call(nr, args),
                None => I386::Other,
            }
        }
        _ => I386::No,
    }
}

/// Runs `argv` (program and arguments) under `handler`, inheriting stdio
/// and environment. See [`Supervisor::run`].
pub fn run<S: AsRef<OsStr>>(
    argv: &[S],
    handler: &mut dyn Handler,
) -> Result<ExitStatus, TraceError> {
    let cmd = Command::from_argv(argv).ok_or(TraceError::Spawn {
        program: OsString::new(),
        stage: SpawnStage::Lookup,
        errno: Errno::ENOENT,
    })?;
    Supervisor::new().run(cmd, handler)
}

/// Whether descriptor `fd` (a name in `/proc/<pid>/fd`) of process `pid`
/// is close-on-exec (`flags` in its fdinfo, octal; `O_CLOEXEC`); unknown
/// counts as not.
fn close_on_exec(pid: i32, fd: &OsStr) -> bool {
    let path = format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy());
    std::fs::read_to_string(path).is_ok_and(|info| {
        info.lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            .is_some_and(|flags| flags & libc::O_CLOEXEC as u32 != 0)
    })
}

/// The shell's view of an exit status: the exit code, or 128 + the signal
/// that killed the program.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 255,
    }
}

#[derive(Debug)]
pub(crate) struct Thread {
    tgid: i32,
    pidfd: Option<OwnedFd>,
    /// Signals re-sent with tgkill whose original siginfo must be restored
    /// at their delivery stop.
    resend: Vec<SigInfo>,
}

#[derive(Debug, Default)]
pub(crate) struct Process {
    tids: HashSet<i32>,
    /// Threads seen at their exit stop (`PTRACE_EVENT_EXIT`).
    exit_stopped: HashSet<i32>,
    scratch_map: Option<u64>,
    announced: bool,
    /// The filter of [`crate::filter::build_reads_and_writes`] was added.
    reads_served: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Not ours: the kernel runs the system call.
    Pass,
    /// Served: the program sees this raw return value.
    Return(i64),
}

fn ret(r: Result<i64, Errno>) -> Outcome {
    Outcome::Return(r.unwrap_or_else(Errno::to_ret))
}

/// Supervisor state of one run (everything except the handler).
pub(crate) struct Core {
    pub(crate) shared: Arc<Shared>,
    threads: HashMap<i32, Thread>,
    procs: HashMap<i32, Process>,
    pub(crate) objects: Objects,
    my_pid: i32,
    main_pid: i32,
    main_status: Option<i32>,
    exec_seen: bool,
    err_pipe: OwnedFd,
    queue: VecDeque<(i32, i32)>,
    /// Threads sent a `PTRACE_INTERRUPT` for waiting munlocks whose
    /// interrupt stop has not been seen yet.
    interrupting: HashSet<i32>,
    reaped_unknown: HashSet<i32>,
    close_flush: bool,
    finished: bool,
    /// Which descriptors name objects, between ptrace events (`fdcache.rs`).
    fd_cache: FdCache,
    pub(crate) stats: RunStats,
}

fn read_tgid(tid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn read_link(path: &str) -> Option<Vec<u8>> {
    std::fs::read_link(path)
        .ok()
        .map(|p| p.into_os_string().into_vec())
}

impl Core {
    fn new(
        shared: Arc<Shared>,
        pid: i32,
        close_flush: bool,
        err_pipe: OwnedFd,
        objects: Objects,
    ) -> Core {
        let mut core = Core {
            shared,
            threads: HashMap::new(),
            procs: HashMap::new(),
            objects,
            my_pid: sys::getpid(),
            main_pid: pid,
            main_status: None,
            exec_seen: false,
            err_pipe,
            queue: VecDeque::new(),
            interrupting: HashSet::new(),
            reaped_unknown: HashSet::new(),
            close_flush,
            finished: false,
            fd_cache: FdCache::default(),
            stats: RunStats::default(),
        };
        core.insert_thread(pid, pid);
        if let Some(p) = core.procs.get_mut(&pid) {
            p.announced = true;
        }
        core
    }

    // ---- bookkeeping -------------------------------------------------

    fn insert_thread(&mut self, tid: i32, tgid: i32) {
        self.threads.insert(
            tid,
            Thread {
                tgid,
                pidfd: None,
                resend: Vec::new(),
            },
        );
        self.procs.entry(tgid).or_default().tids.insert(tid);
    }

    fn ensure_thread(&mut self, tid: i32) {
        if !self.threads.contains_key(&tid) {
            let tgid = read_tgid(tid).unwrap_or(tid);
            self.insert_thread(tid, tgid);
        }
    }

    pub(crate) fn tgid_of(&self, tid: i32) -> i32 {
        self.threads.get(&tid).map(|t| t.tgid).unwrap_or(tid)
    }

    fn add_child(&mut self, h: &mut dyn Handler, parent: i32, child: i32, event: i32) {
        if self.reaped_unknown.remove(&child) {
            return;
        }
        if !self.threads.contains_key(&child) {
            let tgid = if event == libc::PTRACE_EVENT_CLONE {
                read_tgid(child).unwrap_or(child)
            } else {
                child
            };
            self.insert_thread(child, tgid);
        }
        let tgid = self.tgid_of(child);
        let ptgid = self.tgid_of(parent);
        if tgid != ptgid {
            if let Some(p) = self.procs.get_mut(&tgid) {
                if !p.announced {
                    p.announced = true;
                    tracing::debug!(parent = ptgid, child = tgid, "new traced process");
                    h.forked(ptgid, tgid);
                }
            }
        }
    }

    pub(crate) fn scratch_map(&self, pid: i32) -> Option<u64> {
        self.procs.get(&pid).and_then(|p| p.scratch_map)
    }

    pub(crate) fn reads_served(&self, pid: i32) -> bool {
        self.procs.get(&pid).is_some_and(|p| p.reads_served)
    }

    pub(crate) fn set_reads_served(&mut self, pid: i32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.reads_served = true;
        }
    }

    pub(crate) fn set_scratch_map(&mut self, pid: i32, addr: u64) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.scratch_map = Some(addr);
        }
    }

    /// Duplicates program descriptor `fd` of thread `tid` into the supervisor.
    pub(crate) fn getfd(&mut self, pid: i32, tid: i32, fd: i32) -> Result<OwnedFd, Errno> {
        let th = self.threads.get_mut(&tid).ok_or(Errno::ESRCH)?;
        if th.pidfd.is_none() {
            // A thread pidfd reaches this thread's own descriptor table even
            // if the thread-group leader is already gone; older kernels
            // only have process pidfds.
            let fd =
                sys::pidfd_open(tid, sys::PIDFD_THREAD).or_else(|_| sys::pidfd_open(pid, 0))?;
            th.pidfd = Some(fd);
        }
        let pidfd = th.pidfd.as_ref().ok_or(Errno::ESRCH)?;
        sys::pidfd_getfd(pidfd.as_fd(), fd)
    }

    /// The socket inode behind program descriptor `fd`, if it is a socket.
    pub(crate) fn fd_inode(&self, tid: i32, fd: i32) -> Option<u64> {
        if fd < 0 {
            return None;
        }
        socket_inode(&read_link(&format!("/proc/{tid}/fd/{fd}"))?)
    }

    /// (object, socket inode) behind program descriptor `fd`, if ours.
    fn fd_lookup(&self, tid: i32, fd: i32) -> Option<(ObjectId, u64)> {
        if self.objects.is_empty() {
            return None;
        }
        let ino = self.fd_inode(tid, fd)?;
        Some((self.objects.lookup(ino)?, ino))
    }

    pub(crate) fn fd_object(&self, tid: i32, fd: i32) -> Option<ObjectId> {
        self.fd_lookup(tid, fd).map(|(o, _)| o)
    }

    /// [`Core::fd_object`] through the descriptor cache (fdcache.rs), for
    /// a call of `tid` at a ptrace stop or (`notif`) a notified one.
    pub(crate) fn fd_object_cached(
        &mut self,
        tid: i32,
        fd: i32,
        notif: Option<NotifCall<'_>>,
    ) -> Option<ObjectId> {
        if let Some((obj, _)) = self.fd_cache.get(tid, fd) {
            return Some(obj);
        }
        if self.objects.is_empty() || fd < 0 || self.fd_cache.is_not_ours(tid, fd) {
            return None;
        }
        let link = read_link(&format!("/proc/{tid}/fd/{fd}"))?;
        let ours = socket_inode(&link).and_then(|ino| Some((self.objects.lookup(ino)?, ino)));
        // Read from /proc/<tid>/fd: for a notified call, valid only if
        // `tid` is still the thread that made it (a stopped thread is).
        let valid = || notif.is_none_or(|c| c.valid());
        match ours {
            Some((obj, ino)) => {
                if !valid() {
                    return None;
                }
                self.fd_cache.insert(tid, fd, obj, ino);
                Some(obj)
            }
            None => {
                if valid() {
                    self.fd_cache.insert_not_ours(tid, fd);
                }
                None
            }
        }
    }

    /// Releases every object whose last program descriptor is gone.
    fn release_dead(&mut self, h: &mut dyn Handler, at: Option<(i32, i32)>) {
        if self.objects.is_empty() {
            return;
        }
        let dead = self.objects.sweep();
        if at.is_none() && dead.len() > 1 {
            h.releasing_together(&dead);
        }
        for obj in dead {
            self.stats.released += 1;
            tracing::debug!(?obj, stopped = ?at, "release");
            match at {
                Some((pid, tid)) => {
                    let mut t = Tracee {
                        core: self,
                        pid,
                        tid,
                        notif: None,
                    };
                    h.release(Some(&mut t), obj);
                }
                None => h.release(None, obj),
            }
        }
    }

    // ---- the event loop ----------------------------------------------

    fn conclude(
        &mut self,
        h: &mut dyn Handler,
        program: OsString,
    ) -> Result<ExitStatus, TraceError> {
        self.finished = true;
        h.program_ended();
        for obj in self.objects.drain() {
            self.stats.released += 1;
            h.release(None, obj);
        }
        if !self.exec_seen {
            let mut buf = [0u8; 8];
            if let Ok(8) = sys::read_some(self.err_pipe.as_fd(), &mut buf) {
                if let Some((stage, errno)) = spawn::decode_failure(&buf) {
                    return Err(TraceError::Spawn {
                        program,
                        stage,
                        errno,
                    });
                }
            }
        }
        let status = self.main_status.ok_or(TraceError::Sys {
            what: "waitpid",
            errno: Errno::ECHILD,
        })?;
        Ok(ExitStatus::from_raw(status))
    }

    fn on_event(&mut self, h: &mut dyn Handler, tid: i32, status: i32) {
        // Anything but a seccomp stop (a thread gone, an exec, a signal
        // stop whose handling may inject) ends the cached answers here; a
        // seccomp stop ends them when its call can (fdcache.rs).
        if !libc::WIFSTOPPED(status) || (status >> 16) & 0xff != libc::PTRACE_EVENT_SECCOMP {
            self.fd_cache.clear();
        }
        // Whatever `close` the thread was let go for has run (or never will).
        self.fd_cache.seen(tid);
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            self.on_gone(h, tid, status);
            return;
        }
        if !libc::WIFSTOPPED(status) {
            return;
        }
        self.ensure_thread(tid);
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        if event == libc::PTRACE_EVENT_STOP {
            self.interrupting.remove(&tid);
            if self.shared.munlock_pids().contains(&self.tgid_of(tid)) {
                self.munlock_at_interrupt(h, tid, sig);
                return;
            }
        }
        match event {
            libc::PTRACE_EVENT_SECCOMP => self.on_seccomp(h, tid),
            libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK | libc::PTRACE_EVENT_CLONE => {
                if let Ok(child) = sys::ptrace_geteventmsg(tid) {
                    self.add_child(h, tid, child as i32, event);
                }
                let _ = sys::ptrace_cont(tid, 0);
            }
            libc::PTRACE_EVENT_EXEC => {
                self.on_exec(h, tid);
                let _ = sys::ptrace_cont(tid, 0);
            }
            libc::PTRACE_EVENT_EXIT => self.on_exit_stop(h, tid),
            libc::PTRACE_EVENT_STOP => {
                if matches!(
                    sig,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                ) {
                    // Group-stop: stay stopped (the real parent sees it) but
                    // let us hear about SIGCONT.
                    let _ = sys::ptrace_listen(tid);
                } else {
                    let _ = sys::ptrace_cont(tid, 0);
                }
            }
            0 if sig == (libc::SIGTRAP | 0x80) => {
                let _ = sys::ptrace_cont(tid, 0);
            }
            0 if sig == libc::SIGSEGV && crate::mmio::on_sigsegv(self, h, tid) => {}
            0 => {
                self.restore_siginfo(tid, sig);
                let _ = sys::ptrace_cont(tid, sig);
            }
            _ => {
                let _ = sys::ptrace_cont(tid, 0);
            }
        }
    }

    /// At a signal-delivery stop of a signal we re-sent with tgkill, put
    /// back the siginfo it originally had.
    fn restore_siginfo(&mut self, tid: i32, sig: i32) {
        let my_pid = self.my_pid;
        let Some(th) = self.threads.get_mut(&tid) else {
            return;
        };
        let Some(pos) = th.resend.iter().position(|s| s.signo() == sig) else {
            return;
        };
        if let Ok(cur) = sys::ptrace_getsiginfo(tid) {
            if cur.code() == SI_TKILL && cur.pid() == my_pid {
                let orig = th.resend.remove(pos);
                let _ = sys::ptrace_setsiginfo(tid, &orig);
            }
        }
    }

    fn on_exec(&mut self, h: &mut dyn Handler, tid: i32) {
        let former = sys::ptrace_geteventmsg(tid)
            .map(|v| v as i32)
            .unwrap_or(tid);
        if former != tid {
            // The thread that made the exec now has the leader's tid.
            self.fd_cache.seen(former);
            if let Some(th) = self.threads.remove(&former) {
                if let Some(p) = self.procs.get_mut(&th.tgid) {
                    p.tids.remove(&former);
                }
            }
            self.ensure_thread(tid);
        }
        let tgid = self.tgid_of(tid);
        if let Some(th) = self.threads.get_mut(&tid) {
            th.pidfd = None;
        }
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.scratch_map = None;
        }
        // The old image's locks went with its memory.
        self.shared.take_munlocks(tgid);
        if tgid == self.main_pid {
            self.exec_seen = true;
        }
        tracing::debug!(pid = tgid, former_tid = former, "exec");
        h.exec(tgid);
    }

    /// Thread `tid` of `tgid` stopped at its exit. When it is the last one
    /// (the process is going, its memory still intact) and another traced
    /// process holds one of the handler's objects (so the mappings of this
    /// process can outlive it: a forked child keeps the container), the
    /// handler hears of it before the memory goes ([`Handler::exiting`]).
    /// A process that exits with everything closed costs nothing here.
    fn note_exit_stop(&mut self, h: &mut dyn Handler, tgid: i32, tid: i32) {
        let Some(p) = self.procs.get_mut(&tgid) else {
            return;
        };
        p.exit_stopped.insert(tid);
        if !p.tids.iter().all(|t| p.exit_stopped.contains(t)) {
            return;
        }
        if self.others_hold_objects(tgid) {
            h.exiting(tgid);
        }
    }

    /// Can what process `pid` mapped outlive its exec: it holds a
    /// descriptor of one of the handler's objects without close-on-exec,
    /// or another traced process holds one?
    fn vfio_outlives_exec(&self, pid: i32) -> bool {
        if self.objects.is_empty() {
            return false;
        }
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        let kept = dir.flatten().any(|e| {
            let ours = std::fs::read_link(e.path()).is_ok_and(|link| {
                socket_inode(link.as_os_str().as_encoded_bytes())
                    .is_some_and(|ino| self.objects.contains(ino))
            });
            ours && !close_on_exec(pid, &e.file_name())
        });
        kept || self.others_hold_objects(pid)
    }

    /// Does a traced process other than `tgid` hold a descriptor of one of
    /// the handler's objects?
    fn others_hold_objects(&self, tgid: i32) -> bool {
        if self.objects.is_empty() {
            return false;
        }
        self.procs.keys().filter(|&&pid| pid != tgid).any(|&pid| {
            let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                return false;
            };
            dir.flatten().any(|e| {
                std::fs::read_link(e.path()).is_ok_and(|link| {
                    socket_inode(link.as_os_str().as_encoded_bytes())
                        .is_some_and(|ino| self.objects.contains(ino))
                })
            })
        })
    }

    /// A thread is about to exit (`PTRACE_EVENT_EXIT`, before its files are
    /// closed). A traced zombie is reported to its tracer first: its pidfd
    /// turns readable (and SIGCHLD reaches its parent) while its parent's
    /// `waitpid(WNOHANG)` still finds nothing until the tracer has reaped
    /// it. Programs that poll a pidfd and then wait with WNOHANG (Linux's
    /// kselftest harness does, for every test) would see a child that is
    /// gone but not waitable. So threads of every process but the one we
    /// started (whose parent is this supervisor) are detached here and die
    /// untraced, exactly as without softvfio. When a process's last thread
    /// is let go, wait for it to be dead, then release what its exit closed,
    /// as `on_gone` does for a traced exit.
    fn on_exit_stop(&mut self, h: &mut dyn Handler, tid: i32) {
        let tgid = self.tgid_of(tid);
        self.note_exit_stop(h, tgid, tid);
        if tgid == self.main_pid {
            let _ = sys::ptrace_cont(tid, 0);
            return;
        }
        let last = match self.procs.get_mut(&tgid) {
            Some(p) => {
                p.tids.remove(&tid);
                p.tids.is_empty()
            }
            None => false,
        };
        self.threads.remove(&tid);
        // Opened before the last detach, while the pid cannot be reused.
        let pidfd = last.then(|| sys::pidfd_open(tgid, 0).ok()).flatten();
        // The exit stop's message is the process's wait status (an exit
        // code, or the signal that killed it: a SIGKILL also stops here).
        let status = last
            .then(|| sys::ptrace_geteventmsg(tid).ok())
            .flatten()
            .and_then(|m| i32::try_from(m).ok());
        if sys::ptrace_detach(tid).is_err() {
            // Gone already (SIGKILL): its exit status comes through waitpid;
            // keep the thread known so that `on_gone` accounts for it.
            self.insert_thread(tid, tgid);
            return;
        }
        if !last {
            return;
        }
        if let Some(fd) = &pidfd {
            if !sys::pidfd_wait_exit(fd.as_fd(), EXIT_WAIT_MS) {
                tracing::warn!(pid = tgid, "process let go at exit is still alive");
            }
        }
        self.procs.remove(&tgid);
        if self.procs.is_empty() {
            h.program_ended();
        }
        self.release_dead(h, None);
        tracing::debug!(pid = tgid, "process gone (detached at exit)");
        if let Some(status) = status {
            h.ended(tgid, status);
        }
        h.exited(tgid);
    }

    fn on_gone(&mut self, h: &mut dyn Handler, tid: i32, status: i32) {
        self.interrupting.remove(&tid);
        let Some(th) = self.threads.remove(&tid) else {
            self.reaped_unknown.insert(tid);
            return;
        };
        if th.tgid == self.main_pid {
            // The status of the main process's last thread is its status.
            self.main_status = Some(status);
        }
        let tgid = th.tgid;
        let empty = match self.procs.get_mut(&tgid) {
            Some(p) => {
                p.tids.remove(&tid);
                p.tids.is_empty()
            }
            None => false,
        };
        if empty {
            self.procs.remove(&tgid);
            if self.procs.is_empty() {
                h.program_ended();
            }
            self.release_dead(h, None);
            tracing::debug!(pid = tgid, status, "process gone");
            h.ended(tgid, status);
            h.exited(tgid);
        }
    }

    fn on_seccomp(&mut self, h: &mut dyn Handler, tid: i32) {
        let Ok(regs) = sys::ptrace_getregs(tid) else {
            return;
        };
        let pid = self.tgid_of(tid);
        self.stats.stops += 1;
        let mut stop = Stop::new(tid, pid, regs);
        let (nr, args) = match i386_call(tid, &regs) {
            I386::No => (regs.orig_rax as i64, regs.args()),
            I386::Call(nr, args) => {
                stop.i386 = Some((nr, args));
                (nr, args)
            }
            I386::Other => {
                // An i386 process (its own descriptor table, none of its
                // calls served) or a call that stands for nothing served:
                // the kernel runs it.
                self.finish(h, stop, Outcome::Pass);
                return;
            }
        };
        if fdcache::hides_later_descriptor_changes(nr, args) {
            self.fd_cache.switch_off();
        }
        if fdcache::changes_descriptors(nr) {
            self.fd_cache.clear();
        }
        self.shared.put(stop);
        // A read or write (the second filter's stops) of a descriptor that
        // is no object goes to the kernel as it is, nothing injected before
        // it: it may block (a pipe, a terminal), and a call re-issued by
        // injection would block with the supervisor waiting on it.
        if let Call::Stream { fd } = Call::decode(nr, args) {
            if self.fd_object_cached(tid, fd, None).is_none() {
                if let Some(stop) = self.shared.take() {
                    self.finish(h, stop, Outcome::Pass);
                }
                return;
            }
        }
        // munlocks left for this process (its interrupt stop did not come
        // first): before its call, which may read VmLck or pin those pages.
        for (addr, len) in self.shared.take_munlocks(pid) {
            let _ = self
                .shared
                .with_stop(|s| s.inject(libc::SYS_munlock, [addr, len, 0, 0, 0, 0]));
        }
        self.release_dead(h, Some((pid, tid)));
        let mut outcome = self.dispatch(h, pid, tid, nr, args);
        tracing::trace!(pid, tid, nr, ?outcome, "intercepted");
        if outcome == Outcome::Pass {
            // The handler injected something (consuming the program's call)
            // and then declined: run the original call by injection (an
            // i386 call runs its `int $0x80` again instead: `finish`).
            let reissue = self.shared.with_stop(|s| {
                (s.phase == Phase::Exit && !s.gone && s.i386.is_none()).then(|| s.inject(nr, args))
            });
            if let Ok(Some(r)) = reissue {
                outcome = Outcome::Return(r.unwrap_or(-i64::from(libc::EIO)));
            }
        } else {
            self.stats.served += 1;
        }
        // The call unpinned another process's pages: their munlocks run in
        // that process before this call returns (nothing could look yet).
        self.run_munlocks(h, Some(pid));
        let stop = self.shared.take();
        if let Some(stop) = stop {
            self.finish(h, stop, outcome);
        }
    }

    /// Runs the waiting munlocks ([`SyscallInjector::munlock_in_owner`]) of
    /// every process but `except` (the one stopped under the current call):
    /// a thread of each is interrupted and, if it stops within
    /// [`INTERRUPT_WAIT`] (it was running, or blocking in an interruptible
    /// call), they run there; else at its interrupt stop or next trapped
    /// call, whichever the main loop sees first (e.g. a vfork parent, which
    /// waits for its child unkillably). Events of other threads seen
    /// meanwhile are queued for the main loop.
    pub(crate) fn run_munlocks(&mut self, h: &mut dyn Handler, except: Option<i32>) {
        for pid in self.shared.munlock_pids() {
            if Some(pid) == except {
                continue;
            }
            let Some(p) = self.procs.get(&pid) else {
                self.shared.take_munlocks(pid);
                continue;
            };
            // Stopped already, its event waiting: served at that event.
            let queued = self.queue.iter().any(|(t, _)| self.tgid_of(*t) == pid);
            let mut tids: Vec<i32> = p
                .tids
                .iter()
                .copied()
                .filter(|t| !p.exit_stopped.contains(t))
                .collect();
            // The leader first: the thread that most often waits in a call.
            tids.sort_unstable_by_key(|t| (*t != pid, *t));
            let Some(&tid) = tids.first() else {
                // Exiting: its locks go with its memory.
                self.shared.take_munlocks(pid);
                continue;
            };
            if queued || self.interrupting.contains(&tid) {
                continue;
            }
            if sys::ptrace_interrupt(tid).is_err() {
                continue;
            }
            self.interrupting.insert(tid);
            let deadline = std::time::Instant::now() + INTERRUPT_WAIT;
            loop {
                match sys::waitpid(-1, libc::__WALL | libc::__WNOTHREAD | libc::WNOHANG) {
                    Ok((0, _)) => {
                        if std::time::Instant::now() >= deadline {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_micros(100));
                    }
                    Ok((t, status))
                        if t == tid
                            && libc::WIFSTOPPED(status)
                            && (status >> 16) & 0xff == libc::PTRACE_EVENT_STOP =>
                    {
                        self.interrupting.remove(&tid);
                        self.munlock_at_interrupt(h, tid, libc::WSTOPSIG(status));
                        break;
                    }
                    Ok((t, status)) => {
                        self.queue.push_back((t, status));
                        if t == tid {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    }

    /// Thread `tid` reported an interrupt stop (`sig`: a stop signal when
    /// it is in a group-stop) while its process has munlocks waiting: runs
    /// them there and resumes it as it was.
    fn munlock_at_interrupt(&mut self, h: &mut dyn Handler, tid: i32, sig: i32) {
        let pid = self.tgid_of(tid);
        let group_stop = matches!(
            sig,
            libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
        );
        let munlocks = self.shared.take_munlocks(pid);
        let Some(mut stop) = Stop::at_interrupt(tid, pid, group_stop) else {
            tracing::warn!(
                pid,
                "no syscall instruction to munlock from: pages stay locked"
            );
            let _ = if group_stop {
                sys::ptrace_listen(tid)
            } else {
                sys::ptrace_cont(tid, 0)
            };
            return;
        };
        for (addr, len) in munlocks {
            // An error: the process unmapped part of the range since
            // (munlock stops at the hole); what is left stays locked.
            if let Err(e) = stop.inject(libc::SYS_munlock, [addr, len, 0, 0, 0, 0]) {
                tracing::debug!(pid, ?e, "munlock at interrupt");
                if stop.gone {
                    break;
                }
            }
        }
        self.finish(h, stop, Outcome::Pass);
    }

    /// Resumes the thread after a handled stop.
    fn finish(&mut self, h: &mut dyn Handler, stop: Stop, outcome: Outcome) {
        self.stats.injected += stop.injected;
        if stop.fds_changed {
            self.fd_cache.clear();
        }
        // Another thread's execve cannot hand this tid to the new image
        // while we hold the stop: the killed thread waits at its exit stop
        // (PTRACE_O_TRACEEXIT) until we let it go; where an injection lets
        // it go, the exec event that follows ends the stop as gone.
        if !stop.gone {
            let tid = stop.tid;
            for si in &stop.stashed {
                self.requeue(stop.tgid, tid, si);
            }
            let res = match (stop.phase, outcome) {
                (Phase::Entry, Outcome::Pass) => sys::ptrace_cont(tid, 0),
                // An i386 call whose entry was left for an injection and
                // that the kernel is to run after all: the thread runs its
                // `int $0x80` again (a stop comes again, with nothing left
                // to inject before it).
                (Phase::Exit, Outcome::Pass) if stop.i386.is_some() => {
                    let mut r = stop.regs;
                    r.rip = r.rip.wrapping_sub(2);
                    r.rax = r.orig_rax;
                    r.orig_rax = u64::MAX;
                    sys::ptrace_setregs(tid, &r).and_then(|()| sys::ptrace_cont(tid, 0))
                }
                (_, Outcome::Return(v)) if stop.i386.is_some() => {
                    let mut r = stop.regs;
                    r.orig_rax = u64::MAX;
                    r.rax = v as u64;
                    sys::ptrace_setregs(tid, &r).and_then(|()| sys::ptrace_cont(tid, 0))
                }
                // An interrupt stop: back to what it was doing.
                _ if stop.insn.is_some() => {
                    sys::ptrace_setregs(tid, &stop.regs).and_then(|()| sys::ptrace_cont(tid, 0))
                }
                (phase, out) => {
                    let v = match out {
                        Outcome::Return(v) => v,
                        Outcome::Pass => -i64::from(libc::EIO),
                    };
                    let mut r = stop.regs;
                    if phase == Phase::Entry {
                        // Skip the system call; the program sees `rax`.
                        r.orig_rax = u64::MAX;
                    }
                    r.rax = v as u64;
                    sys::ptrace_setregs(tid, &r).and_then(|()| sys::ptrace_cont(tid, 0))
                }
            };
            // ESRCH: killed meanwhile; waitpid reports the exit.
            if res.is_ok() && stop.group_stop {
                // It was taken out of a group-stop to finish the injection:
                // trap it again; if the group is still stopped, the trap
                // reports the stop signal and it is LISTENed like the others.
                let _ = sys::ptrace_interrupt(tid);
            }
        }
        for d in stop.deferred {
            match d {
                Deferred::Event { tid, status } => self.queue.push_back((tid, status)),
                Deferred::Child {
                    parent,
                    child,
                    event,
                } => self.add_child(h, parent, child, event),
            }
        }
    }

    /// Delivers again a signal that was dequeued during an injection.
    fn requeue(&mut self, tgid: i32, tid: i32, si: &SigInfo) {
        self.stats.requeued += 1;
        if si.code() < 0 && si.code() != SI_TKILL && sys::rt_tgsigqueueinfo(tgid, tid, si).is_ok() {
            return;
        }
        if sys::tgkill(tgid, tid, si.signo()).is_ok() {
            if let Some(th) = self.threads.get_mut(&tid) {
                th.resend.push(*si);
            }
        }
    }

    // ---- system calls --------------------------------------------------

    /// A call at a ptrace stop. Its arguments are decoded as for a
    /// notified call ([`Core::on_notification`]): one [`Call::decode`].
    fn dispatch(
        &mut self,
        h: &mut dyn Handler,
        pid: i32,
        tid: i32,
        nr: i64,
        a: [u64; 6],
    ) -> Outcome {
        match Call::decode(nr, a) {
            Call::Open {
                dirfd,
                path,
                flags,
                mode,
            } => self.sys_open(h, pid, tid, None, dirfd, path, flags, mode),
            Call::OpenAt2 {
                dirfd,
                path,
                how,
                size,
            } => self.sys_openat2(h, pid, tid, None, dirfd, path, how, size),
            Call::Close { fd } => self.sys_close(h, pid, tid, fd),
            Call::ReplaceFds => self.sys_replace_fds(h, pid, tid, nr, a),
            Call::Stat(call) => {
                let mut t = Tracee {
                    core: self,
                    pid,
                    tid,
                    notif: None,
                };
                crate::stat::sys_stat(h, &mut t, call).map_or(Outcome::Pass, ret)
            }
            Call::LocksMemory => {
                h.locks_memory(pid);
                Outcome::Pass
            }
            Call::Exec => {
                if self.vfio_outlives_exec(pid) {
                    h.exec_starting(pid);
                }
                Outcome::Pass
            }
            // Only processes given the second filter stop here.
            Call::Stream { fd } => match self.fd_object_cached(tid, fd, None) {
                Some(obj) => self.serve_fd_call(h, pid, tid, None, obj, nr, a),
                None => Outcome::Pass,
            },
            Call::OnFd { fd } => match self.fd_object_cached(tid, fd, None) {
                // An i386 ioctl on a file without compat_ioctl (iommufd's).
                Some(obj)
                    if nr == libc::SYS_ioctl
                        && self.shared.with_stop(|s| s.i386.is_some()) == Ok(true)
                        && !h.compat_ioctl(obj) =>
                {
                    ret(Err(Errno::ENOTTY))
                }
                Some(obj) => self.serve_fd_call(h, pid, tid, None, obj, nr, a),
                None => Outcome::Pass,
            },
            Call::Memory => {
                let mut t = Tracee {
                    core: self,
                    pid,
                    tid,
                    notif: None,
                };
                h.memory_call(&mut t, nr, a).map_or(Outcome::Pass, ret)
            }
            Call::Other => Outcome::Pass,
        }
    }

    /// An ioctl or region access on a descriptor of `obj`, at a ptrace stop
    /// or (`notif`) for a notified call.
    #[allow(clippy::too_many_arguments)]
    fn serve_fd_call(
        &mut self,
        h: &mut dyn Handler,
        pid: i32,
        tid: i32,
        notif: Option<NotifCall<'_>>,
        obj: ObjectId,
        nr: i64,
        a: [u64; 6],
    ) -> Outcome {
        let mut t = Tracee {
            core: self,
            pid,
            tid,
            notif,
        };
        match nr {
            libc::SYS_ioctl => ret(h.ioctl(&mut t, obj, a[1] & 0xffff_ffff, a[2])),
            libc::SYS_read | libc::SYS_write => {
                match h.stream_rw(&mut t, obj, a[1], a[2], nr == libc::SYS_write) {
                    Some(r) => ret(r),
                    None => Outcome::Pass,
                }
            }
            libc::SYS_readv | libc::SYS_writev => {
                let write = nr == libc::SYS_writev;
                match stream_vectored(h, &mut t, obj, write, a[1], a[2]) {
                    Some(r) => ret(r),
                    None => Outcome::Pass,
                }
            }
            libc::SYS_pread64 | libc::SYS_pwrite64 => {
                if (a[3] as i64) < 0 {
                    return ret(Err(Errno::EINVAL));
                }
                if nr == libc::SYS_pread64 {
                    ret(h.pread(&mut t, obj, a[1], a[2], a[3]))
                } else {
                    ret(h.pwrite(&mut t, obj, a[1], a[2], a[3]))
                }
            }
            _ => {
                let write = nr == libc::SYS_pwritev || nr == libc::SYS_pwritev2;
                let v2 = nr == libc::SYS_preadv2 || nr == libc::SYS_pwritev2;
                let off = a[3] as i64;
                if v2 && off == -1 {
                    // "Current file position": our descriptors have none.
                    return ret(Err(Errno::ESPIPE));
                }
                if off < 0 {
                    return ret(Err(Errno::EINVAL));
                }
                ret(vectored(h, &mut t, obj, write, a[1], a[2], off as u64))
            }
        }
    }

    /// A seccomp user notification (see [`crate::filter::NOTIFIED_SYSCALLS`]):
    /// served like the same call at a ptrace stop, except that nothing can
    /// be injected (also not in the releases made first). `Pass` lets the
    /// kernel run the call.
    fn on_notification(
        &mut self,
        h: &mut dyn Handler,
        listener: std::os::fd::BorrowedFd<'_>,
        n: &sys::Notif,
    ) -> Outcome {
        self.stats.notified += 1;
        let tid = n.tid;
        // A thread that makes a call has finished the one before.
        self.fd_cache.seen(tid);
        // A thread whose creation the ptrace loop has not seen yet.
        let pid = match self.threads.get(&tid) {
            Some(t) => t.tgid,
            None => read_tgid(tid).unwrap_or(tid),
        };
        let call = NotifCall { listener, id: n.id };
        // What a dup2, close_range, close-on-exec or another process's exit
        // dropped since the last call: released before this call is served,
        // as at a ptrace stop (the handler cannot inject here). A release
        // can drop the handler's own references (a group's on its
        // container): sweep again until nothing more goes, bounded.
        for _ in 0..8 {
            let dead = self.objects.sweep();
            if dead.is_empty() {
                break;
            }
            self.fd_cache.clear();
            for obj in dead {
                self.stats.released += 1;
                tracing::debug!(?obj, tid, "release (notified call)");
                let mut t = Tracee {
                    core: self,
                    pid,
                    tid,
                    notif: Some(call),
                };
                h.release(Some(&mut t), obj);
            }
        }
        let a = n.args;
        // Only the calls the filter notifies come here
        // (crate::filter::NOTIFIED_SYSCALLS and the ioctls it names).
        let out = match Call::decode(n.nr, a) {
            Call::Open {
                dirfd,
                path,
                flags,
                mode,
            } => self.sys_open(h, pid, tid, Some(call), dirfd, path, flags, mode),
            Call::OpenAt2 {
                dirfd,
                path,
                how,
                size,
            } => self.sys_openat2(h, pid, tid, Some(call), dirfd, path, how, size),
            Call::Stat(stat) => {
                let mut t = Tracee {
                    core: self,
                    pid,
                    tid,
                    notif: Some(call),
                };
                crate::stat::sys_stat(h, &mut t, stat).map_or(Outcome::Pass, ret)
            }
            Call::OnFd { fd } => match self.fd_object_cached(tid, fd, Some(call)) {
                Some(obj) => self.serve_fd_call(h, pid, tid, Some(call), obj, n.nr, a),
                None => Outcome::Pass,
            },
            _ => Outcome::Pass,
        };
        if out != Outcome::Pass {
            self.stats.served += 1;
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn sys_openat2(
        &mut self,
        h: &mut dyn Handler,
        pid: i32,
        tid: i32,
        notif: Option<NotifCall<'_>>,
        dirfd: i32,
        path: u64,
        how_at: u64,
        size: u64,
    ) -> Outcome {
        // struct open_how { u64 flags; u64 mode; u64 resolve; }
        let mut how = [0u8; 24];
        if size < 24 || sys::process_vm_read(tid, how_at, &mut how).is_err() {
            return Outcome::Pass;
        }
        let flags = u64::from_ne_bytes(how[0..8].try_into().unwrap_or([0; 8]));
        let mode = u64::from_ne_bytes(how[8..16].try_into().unwrap_or([0; 8]));
        let (Ok(flags), Ok(mode)) = (i32::try_from(flags), u32::try_from(mode)) else {
            return Outcome::Pass;
        };
        self.sys_open(h, pid, tid, notif, dirfd, path, flags, mode)
    }

    #[allow(clippy::too_many_arguments)]
    fn sys_open(
        &mut self,
        h: &mut dyn Handler,
        pid: i32,
        tid: i32,
        notif: Option<NotifCall<'_>>,
        dirfd: i32,
        path: u64,
        flags: i32,
        mode: u32,
    ) -> Outcome {
        let mut t = Tracee {
            core: self,
            pid,
            tid,
            notif,
        };
        // Unreadable or too long: the kernel produces the right error.
        let Ok(raw) = t.read_cstr_bytes(path, PATH_MAX) else {
            return Outcome::Pass;
        };
        let base = if raw.starts_with(b"/") {
            None
        } else {
            let dir = if dirfd == libc::AT_FDCWD {
                read_link(&format!("/proc/{tid}/cwd"))
            } else {
                read_link(&format!("/proc/{tid}/fd/{dirfd}"))
            };
            // No such descriptor: the kernel's EBADF (not a path from the root).
            let Some(dir) = dir else {
                return Outcome::Pass;
            };
            Some(dir)
        };
        // The cwd and dirfd were read through /proc/<tid>: still the caller's?
        if notif.is_some_and(|c| !c.valid()) {
            return Outcome::Pass;
        }
        let req = OpenRequest {
            path: normalize(base.as_deref(), &raw, pid, tid),
            raw: OsString::from_vec(raw),
            dirfd,
            flags,
            mode,
        };
        let reply = match h.open(&mut t, &req) {
            None => return Outcome::Pass,
            Some(Err(e)) => Err(e),
            Some(Ok(OpenReply::Object(obj))) => {
                // No descriptor (EMFILE, ENFILE): no object either, or the
                // group would stay busy for good.
                t.install_object(obj, req.cloexec()).inspect_err(|_| {
                    h.release(Some(&mut t), obj);
                })
            }
            Some(Ok(OpenReply::File(bytes))) => t.install_file(&bytes, req.cloexec()),
        };
        ret(reply.map(i64::from))
    }

    fn sys_close(&mut self, h: &mut dyn Handler, pid: i32, tid: i32, fd: i32) -> Outcome {
        let Some((_, ino)) = self.fd_lookup(tid, fd) else {
            // The thread runs its close after this stop: until it is seen
            // again, the cache must not remember the number (fdcache.rs).
            self.fd_cache.close_let_go(tid);
            return Outcome::Pass;
        };
        let r = {
            let mut t = Tracee {
                core: self,
                pid,
                tid,
                notif: None,
            };
            t.inject_syscall(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0])
        };
        let Ok(r) = r else {
            return Outcome::Return(-i64::from(libc::EIO));
        };
        // The thread is now at the exit of its close: release what that
        // close (or anything since the last stop) dropped, before it runs on.
        self.release_dead(h, Some((pid, tid)));
        if self.close_flush && r == 0 && self.objects.contains(ino) {
            let mut t = Tracee {
                core: self,
                pid,
                tid,
                notif: None,
            };
            let _ = t.inject_syscall(libc::SYS_getpid, [0; 6]);
            self.release_dead(h, Some((pid, tid)));
        }
        Outcome::Return(r)
    }
}

impl Core {
    /// `dup2`, `dup3`, `close_range` (stopped only with a listener, for the
    /// descriptor cache): run here by injection, so that the descriptors
    /// change while notifications wait for the lock; left to run after the
    /// stop, a notified call of another thread could cache what the call
    /// is about to replace (fdcache.rs). Then what they dropped is released.
    fn sys_replace_fds(
        &mut self,
        h: &mut dyn Handler,
        pid: i32,
        tid: i32,
        nr: i64,
        a: [u64; 6],
    ) -> Outcome {
        let r = {
            let mut t = Tracee {
                core: self,
                pid,
                tid,
                notif: None,
            };
            t.inject_syscall(nr, a)
        };
        self.fd_cache.clear();
        let Ok(r) = r else {
            return Outcome::Return(-i64::from(libc::EIO));
        };
        self.release_dead(h, Some((pid, tid)));
        Outcome::Return(r)
    }
}

/// `readv`/`writev` on a descriptor of `obj` whose reads and writes the
/// handler serves: segment by segment, as the kernel's loop for a file with
/// only `read`/`write` methods (empty segments skipped, a short or failed
/// segment ends the call, an error only when nothing was done). `None`
/// when the handler does not serve the object (a zero-length call, which
/// changes nothing, asks).
fn stream_vectored(
    h: &mut dyn Handler,
    t: &mut Tracee<'_>,
    obj: ObjectId,
    write: bool,
    iov: u64,
    cnt: u64,
) -> Option<Result<i64, Errno>> {
    // Only whether it is served matters, not the zero-length answer.
    let _ = h.stream_rw(t, obj, 0, 0, write)?;
    if cnt > IOV_MAX {
        return Some(Err(Errno::EINVAL));
    }
    let raw = match t.read_bytes(iov, cnt as usize * 16) {
        Ok(r) => r,
        Err(e) => return Some(Err(e)),
    };
    let mut done: i64 = 0;
    for seg in raw.chunks_exact(16) {
        let base = u64::from_ne_bytes(seg[0..8].try_into().unwrap_or([0; 8]));
        let len = u64::from_ne_bytes(seg[8..16].try_into().unwrap_or([0; 8]));
        if len == 0 {
            continue;
        }
        match h.stream_rw(t, obj, base, len, write)? {
            Ok(n) => {
                done += n;
                if (n as u64) < len {
                    break;
                }
            }
            Err(e) if done == 0 => return Some(Err(e)),
            Err(_) => break,
        }
    }
    Some(Ok(done))
}

/// `preadv`/`pwritev`: one handler call per segment, stopping at the first
/// short transfer; an error after some progress returns the progress.
fn vectored(
    h: &mut dyn Handler,
    t: &mut Tracee<'_>,
    obj: ObjectId,
    write: bool,
    iov: u64,
    cnt: u64,
    mut off: u64,
) -> Result<i64, Errno> {
    if cnt > IOV_MAX {
        return Err(Errno::EINVAL);
    }
    let raw = t.read_bytes(iov, cnt as usize * 16)?;
    let mut done: i64 = 0;
    for seg in raw.chunks_exact(16) {
        let base = u64::from_ne_bytes(seg[0..8].try_into().unwrap_or([0; 8]));
        let len = u64::from_ne_bytes(seg[8..16].try_into().unwrap_or([0; 8]));
        if len == 0 {
            continue;
        }
        let r = if write {
            h.pwrite(t, obj, base, len, off)
        } else {
            h.pread(t, obj, base, len, off)
        };
        match r {
            Ok(n) => {
                done += n;
                off += n as u64;
                if (n as u64) < len {
                    break;
                }
            }
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

impl Drop for Core {
    /// A run that did not finish (handler panic, supervisor error): kill
    /// every traced process and reap it, so nothing stays stopped forever.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let _ = self.shared.take();
        for tgid in self.procs.keys() {
            let _ = sys::kill(*tgid, libc::SIGKILL);
        }
        while !self.threads.is_empty() {
            match sys::waitpid(-1, libc::__WALL | libc::__WNOTHREAD) {
                Ok((tid, status)) => {
                    if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                        self.threads.remove(&tid);
                    } else {
                        let _ = sys::ptrace_cont(tid, 0);
                    }
                }
                Err(_) => break,
            }
        }
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("main_pid", &self.main_pid)
            .field("threads", &self.threads.len())
            .field("objects", &self.objects.endpoints())
            .finish()
    }
}
