//! `posix_spawn`, `posix_spawnp`, `system`, `popen`/`pclose` and `vfork`:
//! the ways a program starts a child other than `fork` and the exec
//! family ([`crate::exec`]). On Linux a child that inherits a container,
//! group or device descriptor without close-on-exec uses it (same
//! container, same mappings); glibc's children of these calls exec through
//! libc-internal calls this library cannot see, so with VFIO files open
//! they are run here instead:
//!
//! - `posix_spawn`/`posix_spawnp`: when the child would inherit a VFIO
//!   file (one without close-on-exec after the file actions), the engine
//!   leaves for the keeper and the child is a `fork` whose half runs
//!   glibc's child steps in glibc's order (signal dispositions, scheduling,
//!   `POSIX_SPAWN_SETSID`, process group, ids, the file actions, the signal
//!   mask) through this library's hooks, so the keeper follows every
//!   descriptor change, then execs through [`crate::exec`] (the keeper's
//!   variables in its environment). The parent waits, as glibc's does,
//!   until the child exec'd or failed; a failure is the call's error
//!   number and the child is reaped. Otherwise the call is libc's.
//! - `system` and `popen`/`pclose` reach glibc's internal `posix_spawn`,
//!   so with VFIO files open they are glibc 2.36's, written here over the
//!   interposed `posix_spawn` (same shell arguments, signal handling,
//!   status encoding and stream bookkeeping).
//! - `vfork`: POSIX lets it be `fork`; with VFIO files open it is this
//!   library's `fork`, else libc's `vfork` entered by a jump (a wrapper's
//!   frame would not survive the child).
//!
//! Not followed: file actions or attribute flags glibc may add later (an
//! unknown kind leaves the call to libc: the child gets no share). The
//! child is libc's `fork`, so the program's `pthread_atfork` handlers run
//! for such a spawn (glibc's own clone runs none): the library's child
//! allocates, which only a fork that resets malloc's locks allows.
//!
//! A program with no VFIO file open pays one atomic load per call
//! (`popen`/`pclose` also note their streams, which the children of a
//! later `popen` must not inherit).
//!
//! All `unsafe` of these hooks is here, each with its `SAFETY:` comment.

use std::ffi::{c_char, c_int, c_short, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use libc::{pid_t, posix_spawn_file_actions_t, posix_spawnattr_t, sigset_t, FILE};

use crate::forward::{self, Reason};
use crate::state::{with_existing, TRACKED};
use crate::{hook, real, Passing};

/// glibc's `struct __spawn_action` tags (posix/spawn_int.h; the order has
/// been stable since each was added).
mod tag {
    pub const CLOSE: u32 = 0;
    pub const DUP2: u32 = 1;
    pub const OPEN: u32 = 2;
    pub const CHDIR: u32 = 3;
    pub const FCHDIR: u32 = 4;
    pub const CLOSEFROM: u32 = 5;
    pub const TCSETPGRP: u32 = 6;
}

/// glibc's `struct __spawn_action`: a tag, then a union of each kind's
/// arguments (32 bytes on LP64, as glibc 2.36's `sizeof`).
#[repr(C)]
struct RawAction {
    tag: u32,
    data: RawData,
}

const _: () = assert!(std::mem::size_of::<RawAction>() == 32);

/// The union of `struct __spawn_action`.
#[repr(C)]
union RawData {
    /// close, fchdir, closefrom, tcsetpgrp: one descriptor.
    fd: c_int,
    /// dup2: from, to.
    dup2: [c_int; 2],
    open: RawOpen,
    /// chdir: glibc's copy of the path.
    path: *const c_char,
}

/// The open action's arguments (glibc's copy of the path).
#[repr(C)]
#[derive(Clone, Copy)]
struct RawOpen {
    fd: c_int,
    path: *const c_char,
    oflag: c_int,
    mode: libc::mode_t,
}

/// glibc's `posix_spawn_file_actions_t`.
#[repr(C)]
struct RawActions {
    allocated: c_int,
    used: c_int,
    actions: *const RawAction,
}

/// One file action, as the child runs it.
#[derive(Clone, Debug)]
enum Action {
    Close(c_int),
    Dup2(c_int, c_int),
    Open(c_int, std::ffi::CString, c_int, libc::mode_t),
    Chdir(std::ffi::CString),
    Fchdir(c_int),
    Closefrom(c_int),
    Tcsetpgrp(c_int),
}

impl Action {
    /// The descriptor numbers the action names.
    fn fds(&self) -> [c_int; 2] {
        match self {
            Action::Close(f) | Action::Fchdir(f) | Action::Tcsetpgrp(f) => [*f, *f],
            Action::Dup2(a, b) => [*a, *b],
            Action::Open(f, ..) => [*f, *f],
            Action::Chdir(_) | Action::Closefrom(_) => [-1, -1],
        }
    }
}

/// The file actions of `fa`, or `None` when one is of a kind this library
/// does not know.
///
/// # Safety
/// `fa` null or an initialized `posix_spawn_file_actions_t`.
unsafe fn actions_of(fa: *const posix_spawn_file_actions_t) -> Option<Vec<Action>> {
    if fa.is_null() {
        return Some(Vec::new());
    }
    // SAFETY: glibc's layout of the initialized object (contract).
    let raw = unsafe { &*fa.cast::<RawActions>() };
    let n = usize::try_from(raw.used).ok()?;
    let mut out = Vec::with_capacity(n);
    let owned = |p: *const c_char| {
        // SAFETY: glibc's NUL-terminated copy of an action's path.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_owned())
    };
    for i in 0..n {
        // SAFETY: `used` entries of the array glibc allocated.
        let a = unsafe { &*raw.actions.add(i) };
        // SAFETY: each arm reads the union member glibc wrote for the tag.
        out.push(unsafe {
            match a.tag {
                tag::CLOSE => Action::Close(a.data.fd),
                tag::DUP2 => Action::Dup2(a.data.dup2[0], a.data.dup2[1]),
                tag::OPEN => {
                    let o = a.data.open;
                    Action::Open(o.fd, owned(o.path)?, o.oflag, o.mode)
                }
                tag::CHDIR => Action::Chdir(owned(a.data.path)?),
                tag::FCHDIR => Action::Fchdir(a.data.fd),
                tag::CLOSEFROM => Action::Closefrom(a.data.fd),
                tag::TCSETPGRP => Action::Tcsetpgrp(a.data.fd),
                _ => return None,
            }
        });
    }
    Some(out)
}

/// The attributes the child applies.
#[derive(Clone, Copy)]
struct Attr {
    flags: c_int,
    pgroup: pid_t,
    sigdefault: sigset_t,
    sigmask: sigset_t,
    policy: c_int,
    param: libc::sched_param,
}

/// The flags glibc 2.36 defines; another leaves the call to libc.
const KNOWN_FLAGS: c_int = libc::POSIX_SPAWN_RESETIDS
    | libc::POSIX_SPAWN_SETPGROUP
    | libc::POSIX_SPAWN_SETSIGDEF
    | libc::POSIX_SPAWN_SETSIGMASK
    | libc::POSIX_SPAWN_SETSCHEDPARAM
    | libc::POSIX_SPAWN_SETSCHEDULER
    | libc::POSIX_SPAWN_USEVFORK as c_int
    | SETSID;

/// `POSIX_SPAWN_SETSID` (the libc crate types it `c_short`).
const SETSID: c_int = libc::POSIX_SPAWN_SETSID as c_int;

/// # Safety
/// `attr` null or an initialized `posix_spawnattr_t`.
unsafe fn attr_of(attr: *const posix_spawnattr_t) -> Option<Attr> {
    // SAFETY: plain data; all zeros is a valid value of each.
    let mut a: Attr = unsafe { std::mem::zeroed() };
    if attr.is_null() {
        return Some(a);
    }
    let mut flags: c_short = 0;
    // SAFETY: the getters read the initialized object and write the
    // out-parameters, live locals.
    unsafe {
        libc::posix_spawnattr_getflags(attr, &mut flags);
        libc::posix_spawnattr_getpgroup(attr, &mut a.pgroup);
        libc::posix_spawnattr_getsigdefault(attr, &mut a.sigdefault);
        libc::posix_spawnattr_getsigmask(attr, &mut a.sigmask);
        libc::posix_spawnattr_getschedpolicy(attr, &mut a.policy);
        libc::posix_spawnattr_getschedparam(attr, &mut a.param);
    }
    a.flags = c_int::from(flags);
    (a.flags & !KNOWN_FLAGS == 0).then_some(a)
}

/// This process's VFIO descriptors.
fn vfio_fds() -> Vec<c_int> {
    if forward::attached() {
        forward::fds()
    } else {
        with_existing(|st| st.program_fds().into_keys().collect()).unwrap_or_default()
    }
}

/// Would the child hold a VFIO file after `actions` and its exec?
fn child_inherits(actions: &[Action]) -> bool {
    let fds = vfio_fds();
    if fds.is_empty() {
        return false;
    }
    // Each VFIO descriptor: does it survive the exec?
    let mut table: std::collections::HashMap<c_int, bool> = fds
        .iter()
        .map(|fd| {
            let cloexec = real::fd_flags(*fd).map_or(true, |f| f & libc::FD_CLOEXEC != 0);
            (*fd, !cloexec)
        })
        .collect();
    for a in actions {
        match a {
            Action::Close(f) => {
                table.remove(f);
            }
            Action::Dup2(from, to) if from == to => {
                if let Some(kept) = table.get_mut(from) {
                    *kept = true;
                }
            }
            Action::Dup2(from, to) => {
                let src = table.contains_key(from);
                table.remove(to);
                if src {
                    table.insert(*to, true);
                }
            }
            Action::Open(f, path, ..) => {
                table.remove(f);
                let p = path.to_bytes();
                if p.starts_with(b"/dev/vfio/") || p == b"/dev/iommu" {
                    return true;
                }
            }
            Action::Closefrom(low) => table.retain(|f, _| f < low),
            Action::Chdir(_) | Action::Fchdir(_) | Action::Tcsetpgrp(_) => {}
        }
    }
    table.values().any(|kept| *kept)
}

/// What the child runs.
struct Spawn<'a> {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    search: bool,
    actions: &'a [Action],
    attr: Attr,
}

/// `posix_spawn` and `posix_spawnp`.
///
/// # Safety
/// As `posix_spawn`.
unsafe fn spawn_hook(
    search: bool,
    pid: *mut pid_t,
    path: *const c_char,
    fa: *const posix_spawn_file_actions_t,
    attr: *const posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    let next = if search {
        &real::POSIX_SPAWNP
    } else {
        &real::POSIX_SPAWN
    };
    // SAFETY: the program's arguments, unchanged (this function's contract).
    let pass = || unsafe { real::posix_spawn(next, pid, path, fa, attr, argv, envp) };
    if TRACKED.load(Ordering::Relaxed) == 0 {
        return pass();
    }
    // The reading of the program's objects may have cancellation points
    // too (the thread's first hash map asks `getrandom` for its keys).
    real::without_cancel(|| {
        hook(libc::EIO, pass, |pass| {
            // SAFETY: the program's objects (this function's contract).
            let (Some(actions), Some(attr)) = (unsafe { actions_of(fa) }, unsafe { attr_of(attr) })
            else {
                return pass.call();
            };
            if !child_inherits(&actions) {
                return pass.call();
            }
            let s = Spawn {
                path,
                argv: argv.cast(),
                envp: envp.cast(),
                search,
                actions: &actions,
                attr,
            };
            match spawn_forked(&s) {
                Some(Ok(child)) => {
                    if !pid.is_null() {
                        // SAFETY: the program's out-parameter.
                        unsafe { pid.write(child) };
                    }
                    0
                }
                Some(Err(e)) => e,
                // The keeper could not start: as before, no share.
                None => pass.call(),
            }
        })
    })
}

/// # Safety
/// As libc's `posix_spawn`.
#[no_mangle]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut pid_t,
    path: *const c_char,
    fa: *const posix_spawn_file_actions_t,
    attr: *const posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { spawn_hook(false, pid, path, fa, attr, argv, envp) }
}

/// # Safety
/// As libc's `posix_spawnp`.
#[no_mangle]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut pid_t,
    file: *const c_char,
    fa: *const posix_spawn_file_actions_t,
    attr: *const posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { spawn_hook(true, pid, file, fa, attr, argv, envp) }
}

/// The engine leaves for the keeper, the child forks and runs `s`; the
/// child's pid once it exec'd, or the error number of the step that
/// failed. `None` when the keeper cannot start.
///
/// With the thread's cancellation disabled: `posix_spawn` and `popen` are
/// no cancellation points; this work's `poll`, `close` and `waitpid` are.
fn spawn_forked(s: &Spawn) -> Option<Result<pid_t, c_int>> {
    real::without_cancel(|| spawn_forked_now(s))
}

/// [`spawn_forked`]'s work.
fn spawn_forked_now(s: &Spawn) -> Option<Result<pid_t, c_int>> {
    // Before any signal is blocked: the keeper inherits the mask of the
    // thread that forks it.
    if !forward::ensure_attached(Reason::Fork) {
        return None;
    }
    let mut p = [0 as c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `p`.
    if unsafe { libc::syscall(libc::SYS_pipe2, p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Some(Err(real::errno()));
    }
    // As glibc: no handler of the program runs in the child before its
    // dispositions are reset.
    // SAFETY: sigset_t is plain data; the calls fill and read live locals.
    let (mut all, mut old): (sigset_t, sigset_t) = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
    }
    let child = forward::fork(real::fork);
    if child == 0 {
        // Where the pipe is now (a file action may have moved it), also
        // after a panic.
        let mut err_fd = p[1];
        let e = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: the program's arguments, live in this copy of its
            // memory.
            unsafe { child_steps(s, &old, &mut err_fd) }
        }))
        .unwrap_or(libc::EIO);
        let b = e.to_ne_bytes();
        // SAFETY: writes 4 bytes of a live local to our pipe.
        unsafe { libc::syscall(libc::SYS_write, err_fd, b.as_ptr(), b.len()) };
        // glibc's child ends so too (`_exit(127)`, no atexit handler).
        real::exit_now(127);
    }
    let fork_err = real::errno();
    // SAFETY: restores the mask read above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    real::close_own(p[1]);
    if child < 0 {
        real::close_own(p[0]);
        return Some(Err(fork_err));
    }
    let mut b = [0u8; 4];
    // The pipe's end of file says the child exec'd (or died), unless a
    // process another thread forked meanwhile inherited the write end too:
    // then the child's own descriptors say it (none is the pipe any more).
    let pipe_ino = pipe_inode(p[0]);
    let n = loop {
        let mut pfd = [libc::pollfd {
            fd: p[0],
            events: libc::POLLIN,
            revents: 0,
        }];
        if matches!(real::poll(&mut pfd, 50), Ok(0))
            && !holds_pipe(child, pipe_ino)
            && matches!(real::poll(&mut pfd, 0), Ok(0))
        {
            break 0;
        }
        // SAFETY: reads into a live local.
        let n = unsafe { libc::syscall(libc::SYS_read, p[0], b.as_mut_ptr(), b.len()) };
        if n >= 0 || real::errno() != libc::EINTR {
            break n;
        }
    };
    real::close_own(p[0]);
    if n == 4 {
        let _ = wait_for(child);
        return Some(Err(c_int::from_ne_bytes(b)));
    }
    Some(Ok(child))
}

/// Reaps `pid` (EINTR retried); its status.
fn wait_for(pid: pid_t) -> Result<c_int, c_int> {
    let mut st = 0;
    loop {
        // SAFETY: writes the status into a live local.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r == pid {
            return Ok(st);
        }
        let e = real::errno();
        if r >= 0 || e != libc::EINTR {
            return Err(e);
        }
    }
}

/// The child's steps, in glibc's order (sysdeps/unix/sysv/linux/spawni.c);
/// returns only on failure, with the error number. `err_fd` is the pipe
/// the parent waits on: moved out of the way of every action that names
/// its number (the program cannot know it is there).
///
/// # Safety
/// `s` holds the program's arguments; this is the child of a fork.
unsafe fn child_steps(s: &Spawn, old: &sigset_t, err_fd: &mut c_int) -> c_int {
    let a = &s.attr;
    let fail = || real::errno();
    // Handlers go back to the default (glibc: every signal, now all
    // blocked, with a handler; those in the SETSIGDEF set in any case).
    for sig in 1..libc::SIGRTMAX() + 1 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        if (32..=33).contains(&sig) {
            // glibc's internal signals (cancellation, set*id broadcast):
            // its child sets them to ignored, and the ignoring outlives the
            // exec (libc's sigaction refuses them: the system call).
            let act: [u64; 4] = [libc::SIG_IGN as u64, 0, 0, 0];
            // SAFETY: the kernel's `struct sigaction` (handler, flags,
            // restorer, an 8-byte mask), read only; no old action.
            unsafe {
                libc::syscall(libc::SYS_rt_sigaction, sig, act.as_ptr(), 0usize, 8usize);
            }
            continue;
        }
        // SAFETY: sigaction reads and writes live locals; sigismember reads
        // the attribute's set.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            let def = a.flags & libc::POSIX_SPAWN_SETSIGDEF != 0
                && libc::sigismember(&a.sigdefault, sig) == 1;
            if !def {
                if libc::sigaction(sig, std::ptr::null(), &mut sa) != 0 {
                    continue;
                }
                if sa.sa_sigaction == libc::SIG_IGN || sa.sa_sigaction == libc::SIG_DFL {
                    continue;
                }
                sa = std::mem::zeroed();
            }
            sa.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    // SAFETY: plain system calls on this process with the attribute's
    // values.
    unsafe {
        let sched = a.flags & (libc::POSIX_SPAWN_SETSCHEDPARAM | libc::POSIX_SPAWN_SETSCHEDULER);
        if sched == libc::POSIX_SPAWN_SETSCHEDPARAM {
            if libc::sched_setparam(0, &a.param) == -1 {
                return fail();
            }
        } else if a.flags & libc::POSIX_SPAWN_SETSCHEDULER != 0
            && libc::sched_setscheduler(0, a.policy, &a.param) == -1
        {
            return fail();
        }
        if a.flags & SETSID != 0 && libc::setsid() < 0 {
            return fail();
        }
        if a.flags & libc::POSIX_SPAWN_SETPGROUP != 0 && libc::setpgid(0, a.pgroup) != 0 {
            return fail();
        }
        if a.flags & libc::POSIX_SPAWN_RESETIDS != 0
            && (libc::seteuid(libc::getuid()) != 0 || libc::setegid(libc::getgid()) != 0)
        {
            return fail();
        }
    }
    // From here on the calls are the program's: the hooks follow them.
    let _program = Passing::new();
    for act in s.actions {
        if act.fds().contains(err_fd) {
            move_away(err_fd);
        }
        // SAFETY: the interposed functions with the action's values.
        let ok = unsafe {
            match act {
                Action::Close(f) => {
                    crate::close(*f) == 0 || (*f >= 0 && *f < libc::getdtablesize())
                }
                Action::Open(f, path, oflag, mode) => {
                    crate::close(*f);
                    let r = crate::open(path.as_ptr(), *oflag | libc::O_LARGEFILE, *mode);
                    r >= 0 && (r == *f || (crate::dup2(r, *f) == *f && crate::close(r) == 0))
                }
                Action::Dup2(from, to) if from == to => {
                    let fl = libc::fcntl(*to, libc::F_GETFD);
                    fl != -1 && libc::fcntl(*to, libc::F_SETFD, fl & !libc::FD_CLOEXEC) != -1
                }
                Action::Dup2(from, to) => crate::dup2(*from, *to) == *to,
                Action::Chdir(path) => libc::chdir(path.as_ptr()) == 0,
                Action::Fchdir(f) => libc::fchdir(*f) == 0,
                Action::Closefrom(low) => closefrom_around(*low, *err_fd) == 0,
                Action::Tcsetpgrp(f) => {
                    let pg = if a.flags & libc::POSIX_SPAWN_SETPGROUP != 0 && a.pgroup != 0 {
                        a.pgroup
                    } else {
                        libc::getpgrp()
                    };
                    libc::tcsetpgrp(*f, pg) == 0
                }
            }
        };
        if !ok {
            return fail();
        }
    }
    let mask = if a.flags & libc::POSIX_SPAWN_SETSIGMASK != 0 {
        &a.sigmask
    } else {
        old
    };
    // SAFETY: sets this thread's mask from a live set.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut()) };
    if s.search {
        // SAFETY: the program's arguments.
        unsafe { exec_search(s) }
    } else {
        // SAFETY: the program's arguments.
        unsafe { crate::exec::execve(s.path, s.argv, s.envp) };
        real::errno()
    }
}

/// Moves our pipe `fd` to another number (close-on-exec, as it was).
fn move_away(fd: &mut c_int) {
    // SAFETY: F_DUPFD_CLOEXEC on our own descriptor; no memory is passed.
    let n = unsafe { libc::syscall(libc::SYS_fcntl, *fd, libc::F_DUPFD_CLOEXEC, *fd + 1) };
    if n >= 0 {
        real::close_own(*fd);
        *fd = n as c_int;
    }
}

/// glibc's closefrom action (`close_range(low, ~0U, 0)`) through the hook,
/// around our pipe `keep`.
fn closefrom_around(low: c_int, keep: c_int) -> c_int {
    let low = low.max(0) as u32;
    let keep = keep as u32;
    // SAFETY: the interposed close_range with plain integers.
    unsafe {
        if keep < low {
            return crate::close_range(low, u32::MAX, 0);
        }
        let below = if keep > low {
            crate::close_range(low, keep - 1, 0)
        } else {
            0
        };
        if below != 0 {
            return below;
        }
        crate::close_range(keep + 1, u32::MAX, 0)
    }
}

/// glibc's `__execvpex` (posix_spawnp's PATH search, with no shell for a
/// file without `#!`): the error number of the last attempt that counts.
///
/// # Safety
/// `s` holds the program's arguments.
unsafe fn exec_search(s: &Spawn) -> c_int {
    // SAFETY: the program's NUL-terminated file name.
    let file = unsafe { CStr::from_ptr(s.path) }.to_bytes();
    if file.is_empty() {
        return libc::ENOENT;
    }
    if file.contains(&b'/') {
        // SAFETY: the program's arguments.
        unsafe { crate::exec::execve(s.path, s.argv, s.envp) };
        return real::errno();
    }
    if file.len() > 255 {
        return libc::ENAMETOOLONG;
    }
    let path = std::env::var_os("PATH")
        .map(std::os::unix::ffi::OsStringExt::into_vec)
        .unwrap_or_else(|| b"/bin:/usr/bin".to_vec());
    let mut eacces = false;
    for dir in path.split(|c| *c == b':') {
        let mut full = dir.to_vec();
        if !full.is_empty() {
            full.push(b'/');
        }
        full.extend_from_slice(file);
        if full.len() >= libc::PATH_MAX as usize {
            continue;
        }
        let Ok(c) = std::ffi::CString::new(full) else {
            continue;
        };
        // SAFETY: a NUL-terminated path and the program's arrays.
        unsafe { crate::exec::execve(c.as_ptr(), s.argv, s.envp) };
        match real::errno() {
            libc::EACCES => eacces = true,
            libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT => {}
            e => return e,
        }
    }
    if eacces {
        libc::EACCES
    } else {
        libc::ENOENT
    }
}

// ---- system ---------------------------------------------------------------

/// glibc's `system` bookkeeping: SIGINT and SIGQUIT are ignored while any
/// `system` of the process runs; the first saves their actions, the last
/// restores them.
struct SystemRefs {
    count: usize,
    intr: libc::sigaction,
    quit: libc::sigaction,
}

// SAFETY: `sigaction` holds a handler address and plain data.
unsafe impl Send for SystemRefs {}

static SYSTEM_REFS: Mutex<Option<SystemRefs>> = Mutex::new(None);

/// # Safety
/// As libc's `system`.
#[no_mangle]
pub unsafe extern "C" fn system(line: *const c_char) -> c_int {
    // SAFETY: the program's argument.
    let pass = || unsafe { real::system(line) };
    if TRACKED.load(Ordering::Relaxed) == 0 {
        return pass();
    }
    hook(-1, pass, |pass| {
        if !child_inherits(&[]) {
            return pass.call();
        }
        if line.is_null() {
            // SAFETY: a NUL-terminated command.
            return c_int::from(unsafe { do_system(c"exit 0".as_ptr()) } == 0);
        }
        // SAFETY: the program's NUL-terminated command.
        unsafe { do_system(line) }
    })
}

/// glibc 2.36's `do_system` (stdlib/system.c) over the interposed
/// `posix_spawn`.
///
/// # Safety
/// `line` a NUL-terminated string.
unsafe fn do_system(line: *const c_char) -> c_int {
    // SAFETY: plain data; the calls below fill live locals.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = libc::SIG_IGN;
    // SAFETY: as above.
    let (mut omask, mut reset): (sigset_t, sigset_t) = unsafe { std::mem::zeroed() };
    let (intr, quit) = {
        let mut g = SYSTEM_REFS.lock().unwrap_or_else(|e| e.into_inner());
        let refs = g.get_or_insert_with(|| SystemRefs {
            count: 0,
            // SAFETY: plain data.
            intr: unsafe { std::mem::zeroed() },
            // SAFETY: plain data.
            quit: unsafe { std::mem::zeroed() },
        });
        if refs.count == 0 {
            // SAFETY: live sigactions.
            unsafe {
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(libc::SIGINT, &sa, &mut refs.intr);
                libc::sigaction(libc::SIGQUIT, &sa, &mut refs.quit);
            }
        }
        refs.count += 1;
        (refs.intr.sa_sigaction, refs.quit.sa_sigaction)
    };
    // SAFETY: sets and masks of live locals.
    unsafe {
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaddset(&mut sa.sa_mask, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &sa.sa_mask, &mut omask);
        libc::sigemptyset(&mut reset);
        if intr != libc::SIG_IGN {
            libc::sigaddset(&mut reset, libc::SIGINT);
        }
        if quit != libc::SIG_IGN {
            libc::sigaddset(&mut reset, libc::SIGQUIT);
        }
    }
    // SAFETY: plain data, initialized by posix_spawnattr_init.
    let mut attr: posix_spawnattr_t = unsafe { std::mem::zeroed() };
    let argv = [c"sh".as_ptr(), c"-c".as_ptr(), line, std::ptr::null()];
    let mut pid: pid_t = 0;
    // SAFETY: a live attribute object and the arrays above; the spawn is
    // the interposed one, run as the program's call.
    let ret = unsafe {
        libc::posix_spawnattr_init(&mut attr);
        libc::posix_spawnattr_setsigmask(&mut attr, &omask);
        libc::posix_spawnattr_setsigdefault(&mut attr, &reset);
        libc::posix_spawnattr_setflags(
            &mut attr,
            (libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETSIGMASK) as c_short,
        );
        let _program = Passing::new();
        let r = posix_spawn(
            &mut pid,
            c"/bin/sh".as_ptr(),
            std::ptr::null(),
            &attr,
            argv.as_ptr().cast(),
            real::environ().cast(),
        );
        libc::posix_spawnattr_destroy(&mut attr);
        r
    };
    let status = if ret == 0 {
        wait_for(pid).unwrap_or(-1)
    } else {
        // POSIX: as if the shell had exited with 127.
        127 << 8
    };
    let saved = real::errno();
    {
        let mut g = SYSTEM_REFS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(refs) = g.as_mut() {
            refs.count -= 1;
            if refs.count == 0 {
                // SAFETY: the saved actions.
                unsafe {
                    libc::sigaction(libc::SIGINT, &refs.intr, std::ptr::null_mut());
                    libc::sigaction(libc::SIGQUIT, &refs.quit, std::ptr::null_mut());
                }
            }
        }
    }
    // SAFETY: restores the mask read above.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &omask, std::ptr::null_mut()) };
    real::set_errno(if ret != 0 { ret } else { saved });
    status
}

// ---- popen / pclose ---------------------------------------------------------

/// A stream `popen` returned: its child when this library spawned it (for
/// `pclose`), `None` when libc's `popen` did.
struct Stream {
    file: usize,
    /// Its descriptor, read when it was made (the program may `fclose` a
    /// libc `popen` stream, which frees it: never read through `file`).
    fd: c_int,
    child: Option<pid_t>,
}

/// Every open `popen` stream of the process: a child spawned by a later
/// `popen` must not hold their descriptors (glibc closes its own list's).
static STREAMS: Mutex<Vec<Stream>> = Mutex::new(Vec::new());
/// How many of [`STREAMS`] this library spawned: while any is open, every
/// `popen` is this library's (libc's would not close them in its child).
static OURS: AtomicUsize = AtomicUsize::new(0);

fn streams() -> std::sync::MutexGuard<'static, Vec<Stream>> {
    STREAMS.lock().unwrap_or_else(|e| e.into_inner())
}

/// # Safety
/// As libc's `popen`.
#[no_mangle]
pub unsafe extern "C" fn popen(command: *const c_char, mode: *const c_char) -> *mut FILE {
    // SAFETY: the program's arguments.
    let pass = || unsafe { real::popen(command, mode) };
    let note = |f: *mut FILE| {
        if !f.is_null() {
            // SAFETY: the stream libc's popen just returned.
            let fd = unsafe { libc::fileno(f) };
            let mut s = streams();
            s.retain(|x| x.file != f as usize);
            s.push(Stream {
                file: f as usize,
                fd,
                child: None,
            });
        }
        f
    };
    if TRACKED.load(Ordering::Relaxed) == 0 && OURS.load(Ordering::Relaxed) == 0 {
        return note(pass());
    }
    hook(std::ptr::null_mut(), pass, |pass| {
        if OURS.load(Ordering::Relaxed) == 0 && !child_inherits(&[]) {
            return note(pass.call());
        }
        // SAFETY: the program's NUL-terminated arguments.
        unsafe { do_popen(command, mode) }
    })
}

/// glibc 2.36's `popen` (libio/iopopen.c) over the interposed
/// `posix_spawn`.
///
/// # Safety
/// NUL-terminated `command` and `mode`.
unsafe fn do_popen(command: *const c_char, mode: *const c_char) -> *mut FILE {
    let (mut read, mut write, mut cloexec) = (false, false, false);
    // SAFETY: the program's NUL-terminated mode.
    for c in unsafe { CStr::from_ptr(mode) }.to_bytes() {
        match c {
            b'r' => read = true,
            b'w' => write = true,
            b'e' => cloexec = true,
            _ => {
                real::set_errno(libc::EINVAL);
                return std::ptr::null_mut();
            }
        }
    }
    if read == write {
        real::set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    let mut p = [0 as c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `p`.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return std::ptr::null_mut();
    }
    let (parent_end, child_end, child_fd) = if read { (0, 1, 1) } else { (1, 0, 0) };
    let fail = |p: &[c_int; 2]| {
        real::close_own(p[0]);
        real::close_own(p[1]);
        real::set_errno(libc::ENOMEM);
        std::ptr::null_mut()
    };
    if p[child_end] == child_fd {
        // SAFETY: F_DUPFD_CLOEXEC of our pipe end; no memory is passed.
        let tmp = unsafe { libc::fcntl(child_fd, libc::F_DUPFD_CLOEXEC, 0) };
        if tmp < 0 {
            return fail(&p);
        }
        real::close_own(p[child_end]);
        p[child_end] = tmp;
    }
    let mut actions = vec![Action::Dup2(p[child_end], child_fd)];
    let mut list = streams();
    for s in list.iter() {
        if s.fd >= 0 && s.fd != child_fd {
            actions.push(Action::Close(s.fd));
        }
    }
    let argv = [c"sh".as_ptr(), c"-c".as_ptr(), command, std::ptr::null()];
    let s = Spawn {
        path: c"/bin/sh".as_ptr(),
        argv: argv.as_ptr(),
        envp: real::environ(),
        search: false,
        actions: &actions,
        // SAFETY: no attributes (all zeros: no flag).
        attr: unsafe { std::mem::zeroed() },
    };
    let child = if child_inherits(&actions) {
        spawn_forked(&s)
    } else {
        None
    };
    let child = match child {
        Some(Ok(pid)) => pid,
        Some(Err(_)) => {
            drop(list);
            return fail(&p);
        }
        None => match spawn_plain(&s) {
            Ok(pid) => pid,
            Err(_) => {
                drop(list);
                return fail(&p);
            }
        },
    };
    real::close_own(p[child_end]);
    if !cloexec {
        // SAFETY: clears FD_CLOEXEC of our pipe end; no memory is passed.
        unsafe { libc::fcntl(p[parent_end], libc::F_SETFD, 0) };
    }
    let fmode = if read { c"r" } else { c"w" };
    // SAFETY: our pipe end and a NUL-terminated mode.
    let f = unsafe { real::fdopen(p[parent_end], fmode.as_ptr()) };
    if f.is_null() {
        let e = real::errno();
        real::close_own(p[parent_end]);
        let _ = wait_for(child);
        real::set_errno(e);
        return f;
    }
    list.push(Stream {
        file: f as usize,
        fd: p[parent_end],
        child: Some(child),
    });
    OURS.fetch_add(1, Ordering::Relaxed);
    f
}

/// `s` through libc's `posix_spawn`, its file actions rebuilt (a `popen`
/// whose child holds no VFIO file).
fn spawn_plain(s: &Spawn) -> Result<pid_t, c_int> {
    // SAFETY: plain data, initialized by posix_spawn_file_actions_init.
    let mut fa: posix_spawn_file_actions_t = unsafe { std::mem::zeroed() };
    let mut pid: pid_t = 0;
    // SAFETY: a live file-actions object; the spawn's arrays are live.
    let r = unsafe {
        libc::posix_spawn_file_actions_init(&mut fa);
        for a in s.actions {
            match a {
                Action::Dup2(from, to) => {
                    libc::posix_spawn_file_actions_adddup2(&mut fa, *from, *to)
                }
                Action::Close(f) => libc::posix_spawn_file_actions_addclose(&mut fa, *f),
                _ => 0,
            };
        }
        let r = real::posix_spawn(
            &real::POSIX_SPAWN,
            &mut pid,
            s.path,
            &fa,
            std::ptr::null(),
            s.argv.cast(),
            s.envp.cast(),
        );
        libc::posix_spawn_file_actions_destroy(&mut fa);
        r
    };
    if r == 0 {
        Ok(pid)
    } else {
        Err(r)
    }
}

/// # Safety
/// As libc's `pclose`.
#[no_mangle]
pub unsafe extern "C" fn pclose(f: *mut FILE) -> c_int {
    let ours = {
        let mut list = streams();
        let i = list.iter().position(|s| s.file == f as usize);
        i.map(|i| list.swap_remove(i)).and_then(|s| s.child)
    };
    let Some(child) = ours else {
        // SAFETY: the program's stream.
        return unsafe { real::pclose(f) };
    };
    OURS.fetch_sub(1, Ordering::Relaxed);
    // glibc's: the stream is flushed and closed, then the child reaped.
    // SAFETY: the stream this library's popen made.
    if unsafe { libc::fclose(f) } != 0 {
        return -1;
    }
    wait_for(child).unwrap_or(-1)
}

// ---- vfork -------------------------------------------------------------------

/// The inode of pipe end `fd` (0: unknown).
fn pipe_inode(fd: c_int) -> u64 {
    // SAFETY: stat is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a live stat the call fills.
    if unsafe { libc::syscall(libc::SYS_fstat, fd as libc::c_long, &mut st) } != 0 {
        return 0;
    }
    st.st_ino
}

/// Whether process `pid` still has a descriptor of pipe `ino` (its
/// spawn's error pipe: close-on-exec, so gone once it exec'd). Unknown
/// (no inode, `/proc` unreadable while it lives): assumed held, so the
/// caller keeps waiting for the pipe as glibc does.
fn holds_pipe(pid: pid_t, ino: u64) -> bool {
    if ino == 0 {
        return true;
    }
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        // Gone: it died; the pipe's end of file follows.
        return std::path::Path::new(&format!("/proc/{pid}")).exists();
    };
    let want = format!("pipe:[{ino}]");
    dir.flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))
}

/// The next `vfork`, resolved at load ([`resolve`]): the jump in [`vfork`]
/// cannot call into the resolver.
static VFORK_NEXT: AtomicUsize = AtomicUsize::new(0);

/// At load: finds libc's `vfork`.
pub(crate) fn resolve() {
    VFORK_NEXT.store(real::VFORK.get() as usize, Ordering::Relaxed);
}

/// libc's `vfork` when no VFIO file is open (a jump: the child returns
/// into the caller's frame, as it must), else this library's `fork` (POSIX
/// lets `vfork` be `fork`; the child then shares the VFIO files).
// SAFETY (of the naked function): it touches no stack and no register a
// caller may rely on but rax (scratch in the C ABI, vfork's result), reads
// two statics by RIP-relative loads and tail-jumps, so libc's `vfork` (or
// this library's `fork`) sees the caller's return address and stack as if
// called directly: the vfork child returns into the caller's frame.
#[cfg(target_arch = "x86_64")]
#[no_mangle]
#[unsafe(naked)]
pub extern "C" fn vfork() {
    core::arch::naked_asm!(
        "mov rax, qword ptr [rip + {tracked}]",
        "test rax, rax",
        "jnz 2f",
        "mov rax, qword ptr [rip + {next}]",
        "test rax, rax",
        "jz 2f",
        "jmp rax",
        "2:",
        "jmp {fork}",
        tracked = sym TRACKED,
        next = sym VFORK_NEXT,
        fork = sym crate::exec::fork,
    )
}
