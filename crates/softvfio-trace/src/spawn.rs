//! Starting the traced program: fork, wait to be seized, install the
//! seccomp filter, exec.
//!
//! Everything the child needs (paths, argv, envp, the BPF program) is built
//! in the parent *before* `fork`, because the supervisor may be one thread of
//! a multi-threaded process (a test harness, the CLI with device threads):
//! between `fork` and `execve` the child only makes async-signal-safe calls.
//!
//! Order of events:
//! 1. parent: `fork`; child blocks reading a sync pipe;
//! 2. parent: `PTRACE_SEIZE` with our options, then writes the sync byte
//!    (the filter's `SECCOMP_RET_TRACE` needs a tracer already attached,
//!    otherwise the kernel fails those syscalls with ENOSYS);
//! 3. child: stdio redirection, cwd, default signal mask and SIGPIPE (Rust
//!    ignores SIGPIPE and the ignore disposition would survive exec), the
//!    [`Command::before_exec`] hook (e.g. the host view's mount namespace:
//!    its system calls are not the program's, so it runs before the
//!    filter), then `seccomp(SECCOMP_SET_MODE_FILTER, SPEC_ALLOW)`; `PR_SET_NO_NEW_PRIVS`
//!    only if the kernel requires it (no CAP_SYS_ADMIN), so that a root
//!    supervisor does not change the program's exec semantics;
//! 4. child: `execve`; on failure it writes (stage, errno) to an error pipe
//!    and exits 127, which `run` turns into [`TraceError::Spawn`].
//!
//! [`TraceError::Spawn`]: crate::TraceError::Spawn

use crate::errno::Errno;
use crate::filter;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Work the child does between fork and exec: async-signal-safe only.
pub type BeforeExec = Arc<dyn Fn() + Send + Sync>;

/// What program to run under the supervisor, and how.
///
/// Like `std::process::Command`: the program is looked up in `PATH` (of the
/// environment the program will get) when it has no `/`; the environment is
/// inherited unless changed; stdio is inherited unless redirected.
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    env_clear: bool,
    env: Vec<(OsString, Option<OsString>)>,
    cwd: Option<PathBuf>,
    stdio: [Option<OwnedFd>; 3],
    before_exec: Option<BeforeExec>,
    /// Also stop at `munmap`/`mremap`/`mmap` ([`Handler::memory_call`]).
    memory_calls: bool,
    /// Serve opens, region accesses and these ioctls through seccomp user
    /// notification (see [`filter::Spec::notify`]).
    user_notification: Option<Vec<u32>>,
    /// See [`Command::stop_opens`].
    stop_opens: bool,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("cwd", &self.cwd)
            .field("before_exec", &self.before_exec.is_some())
            .finish_non_exhaustive()
    }
}

impl Command {
    /// A command running `program` (looked up in PATH as execvp does).
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        Command {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env_clear: false,
            env: Vec::new(),
            cwd: None,
            stdio: [None, None, None],
            before_exec: None,
            memory_calls: false,
            user_notification: None,
            stop_opens: false,
        }
    }

    /// Serve the opens, the `pread`/`pwrite` family
    /// ([`filter::NOTIFIED_SYSCALLS`]) and the ioctl requests `ioctls`
    /// through seccomp user notification instead of a ptrace stop (`None`,
    /// the default: everything at a ptrace stop). The handler must not
    /// inject system calls while serving those (no thread is stopped:
    /// [`crate::InjectError`]), nor rely on [`crate::Tracee::syscall_args`]
    /// or [`crate::Tracee::stack_registers`] there (see
    /// [`stop_opens`](Self::stop_opens)). When the kernel refuses a
    /// listener (the program already runs under one: EBUSY), the run falls
    /// back to ptrace.
    pub fn user_notification(&mut self, ioctls: Option<&[u32]>) -> &mut Command {
        self.user_notification = ioctls.map(<[u32]>::to_vec);
        self
    }

    /// With [`user_notification`](Self::user_notification): keep the opens
    /// at a ptrace stop (for a handler that reads the registers of the
    /// opening thread: the DMA sanitizer's call sites).
    pub fn stop_opens(&mut self, on: bool) -> &mut Command {
        self.stop_opens = on;
        self
    }

    /// Whether the filter will ask for a user-notification listener.
    pub(crate) fn wants_listener(&self) -> bool {
        self.user_notification.is_some()
    }

    /// Also intercept the program's `munmap`, `mremap` and `mmap` (for the
    /// DMA sanitizer's stale-mapping checks; see
    /// [`Handler::memory_call`](crate::Handler::memory_call)).
    pub fn trace_memory_calls(&mut self, on: bool) -> &mut Command {
        self.memory_calls = on;
        self
    }

    /// Builds a command from `argv` (`argv[0]` is the program).
    pub fn from_argv<S: AsRef<OsStr>>(argv: &[S]) -> Option<Command> {
        let (first, rest) = argv.split_first()?;
        let mut c = Command::new(first);
        c.args(rest);
        Some(c)
    }

    /// Adds an argument.
    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Command {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable.
    pub fn env(&mut self, key: impl AsRef<OsStr>, val: impl AsRef<OsStr>) -> &mut Command {
        self.env
            .push((key.as_ref().to_owned(), Some(val.as_ref().to_owned())));
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Command {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Starts from an empty environment.
    pub fn env_clear(&mut self) -> &mut Command {
        self.env_clear = true;
        self.env.clear();
        self
    }

    /// The program's working directory.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Command {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Redirects the program's stdin to `fd`.
    pub fn stdin(&mut self, fd: OwnedFd) -> &mut Command {
        self.stdio[0] = Some(fd);
        self
    }

    /// Redirects the program's stdout to `fd`.
    pub fn stdout(&mut self, fd: OwnedFd) -> &mut Command {
        self.stdio[1] = Some(fd);
        self
    }

    /// Redirects the program's stderr to `fd`.
    pub fn stderr(&mut self, fd: OwnedFd) -> &mut Command {
        self.stdio[2] = Some(fd);
        self
    }

    /// Runs `f` in the child after stdio, cwd and signals are set up and
    /// before the seccomp filter and `execve`.
    ///
    /// # Safety
    /// `f` runs in a child forked from a possibly multi-threaded process:
    /// it must only make async-signal-safe calls (no allocation, no locks).
    pub unsafe fn before_exec(&mut self, f: BeforeExec) -> &mut Command {
        self.before_exec = Some(f);
        self
    }

    /// The program to run.
    pub fn get_program(&self) -> &OsStr {
        &self.program
    }

    fn final_env(&self) -> Vec<(OsString, OsString)> {
        let mut vars: Vec<(OsString, OsString)> = if self.env_clear {
            Vec::new()
        } else {
            std::env::vars_os().collect()
        };
        for (k, v) in &self.env {
            vars.retain(|(k2, _)| k2 != k);
            if let Some(v) = v {
                vars.push((k.clone(), v.clone()));
            }
        }
        vars
    }
}

/// Where in the child a spawn failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnStage {
    /// Looking the program up in PATH (in the supervisor).
    Lookup,
    /// Redirecting stdio.
    Stdio,
    /// Changing directory.
    Chdir,
    /// Installing the seccomp filter.
    Seccomp,
    /// `execve` itself.
    Exec,
    /// Waiting for the supervisor.
    Sync,
}

impl SpawnStage {
    fn code(self) -> u32 {
        match self {
            SpawnStage::Lookup => 0,
            SpawnStage::Stdio => 1,
            SpawnStage::Chdir => 2,
            SpawnStage::Seccomp => 3,
            SpawnStage::Exec => 4,
            SpawnStage::Sync => 5,
        }
    }

    pub(crate) fn from_code(c: u32) -> SpawnStage {
        match c {
            1 => SpawnStage::Stdio,
            2 => SpawnStage::Chdir,
            3 => SpawnStage::Seccomp,
            4 => SpawnStage::Exec,
            5 => SpawnStage::Sync,
            _ => SpawnStage::Lookup,
        }
    }
}

impl std::fmt::Display for SpawnStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            SpawnStage::Lookup => "program lookup",
            SpawnStage::Stdio => "stdio redirection",
            SpawnStage::Chdir => "chdir",
            SpawnStage::Seccomp => "seccomp filter",
            SpawnStage::Exec => "execve",
            SpawnStage::Sync => "supervisor handshake",
        };
        f.write_str(s)
    }
}

/// Everything the child touches between fork and exec, built beforehand.
pub(crate) struct Prepared {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    cwd: Option<CString>,
    stdio: [Option<RawFd>; 3],
    filter: Vec<libc::sock_filter>,
    /// The filter with user notification, tried first when set; the child
    /// falls back to `filter` when the kernel refuses a listener.
    notify_filter: Option<Vec<libc::sock_filter>>,
    before_exec: Option<BeforeExec>,
}

fn cstring(s: &OsStr) -> Result<CString, Errno> {
    CString::new(s.as_bytes()).map_err(|_| Errno::EINVAL)
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn lookup(program: &OsStr, env: &[(OsString, OsString)]) -> Result<PathBuf, Errno> {
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    if program.is_empty() {
        return Err(Errno::ENOENT);
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(&path) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let cand = dir.join(program);
        if is_executable(&cand) {
            return Ok(cand);
        }
    }
    Err(Errno::ENOENT)
}

impl Prepared {
    pub(crate) fn new(cmd: &Command) -> Result<Prepared, Errno> {
        let env = cmd.final_env();
        let path = lookup(&cmd.program, &env)?;
        let path = cstring(path.as_os_str())?;
        let mut argv = vec![cstring(&cmd.program)?];
        for a in &cmd.args {
            argv.push(cstring(a)?);
        }
        let mut envp = Vec::with_capacity(env.len());
        for (k, v) in env {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp.push(CString::new(kv).map_err(|_| Errno::EINVAL)?);
        }
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        let cwd = match &cmd.cwd {
            Some(d) => Some(cstring(d.as_os_str())?),
            None => None,
        };
        let stdio = [
            cmd.stdio[0].as_ref().map(|f| f.as_raw_fd()),
            cmd.stdio[1].as_ref().map(|f| f.as_raw_fd()),
            cmd.stdio[2].as_ref().map(|f| f.as_raw_fd()),
        ];
        Ok(Prepared {
            path,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
            cwd,
            stdio,
            filter: filter::build_spec(filter::Spec {
                memory_calls: cmd.memory_calls,
                notify: None,
                stop_opens: false,
            }),
            notify_filter: match &cmd.user_notification {
                Some(ioctls) if cmd.wants_listener() => Some(filter::build_spec(filter::Spec {
                    memory_calls: cmd.memory_calls,
                    notify: Some(ioctls),
                    stop_opens: cmd.stop_opens,
                })),
                _ => None,
            },
            before_exec: cmd.before_exec.clone(),
        })
    }
}

/// The file descriptors the child uses to talk to the parent.
pub(crate) struct ChildFds {
    pub sync_read: RawFd,
    pub sync_write: RawFd,
    pub err_write: RawFd,
    /// The child's end of the socket the listener is passed over
    /// (`SCM_RIGHTS`), when a notify filter is prepared.
    pub listener_send: Option<RawFd>,
}

/// Reports a failure to the parent and exits; async-signal-safe.
fn child_fail(fds: &ChildFds, stage: SpawnStage) -> ! {
    // SAFETY: __errno_location returns this thread's errno slot; reading it
    // is async-signal-safe.
    let e = unsafe { *libc::__errno_location() } as u32;
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&stage.code().to_ne_bytes());
    msg[4..].copy_from_slice(&e.to_ne_bytes());
    // SAFETY: write and _exit are async-signal-safe; `msg` is a live local.
    unsafe {
        libc::write(fds.err_write, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

fn last_errno_is(e: i32) -> bool {
    // SAFETY: reading this thread's errno is async-signal-safe.
    unsafe { *libc::__errno_location() == e }
}

/// The child side between `fork` and `execve`. Never returns.
///
/// # Safety
/// Must only be called in the child right after `fork`. It makes only
/// async-signal-safe calls and reads `prep`, which was fully built before
/// the fork and is not modified by anyone in the child.
pub(crate) unsafe fn child_main(prep: &Prepared, fds: &ChildFds) -> ! {
    // SAFETY: (whole function) only async-signal-safe libc calls on
    // descriptors and memory that belong to this (child) process; every
    // pointer passed refers to data in `prep` or to locals.
    unsafe {
        libc::close(fds.sync_write);
        // 1. Wait until the supervisor has seized us.
        let mut b = 0u8;
        loop {
            let r = libc::read(fds.sync_read, (&mut b as *mut u8).cast(), 1);
            if r == 1 {
                break;
            }
            if r < 0 && last_errno_is(libc::EINTR) {
                continue;
            }
            child_fail(fds, SpawnStage::Sync);
        }
        libc::close(fds.sync_read);
        // 2. stdio.
        for (target, src) in prep.stdio.iter().enumerate() {
            if let Some(src) = *src {
                let target = target as RawFd;
                let r = if src == target {
                    libc::fcntl(target, libc::F_SETFD, 0)
                } else {
                    libc::dup2(src, target)
                };
                if r < 0 {
                    child_fail(fds, SpawnStage::Stdio);
                }
            }
        }
        // 3. cwd.
        if let Some(cwd) = &prep.cwd {
            if libc::chdir(cwd.as_ptr()) < 0 {
                child_fail(fds, SpawnStage::Chdir);
            }
        }
        // 4. Signals: empty mask, SIGPIPE back to default.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // The caller's hook (async-signal-safe by `Command::before_exec`'s
        // contract).
        if let Some(f) = &prep.before_exec {
            f();
        }
        // 5. The seccomp filter: with a user-notification listener when
        // prepared (its descriptor is close-on-exec, so the program never
        // sees it; the supervisor gets its own copy over `listener_send`),
        // else, or when the kernel refuses one (EBUSY: the program already
        // runs under a listener), the ptrace-only filter.
        let install = |filter: &[libc::sock_filter], flags: libc::c_ulong| -> libc::c_long {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
                flags,
                &prog as *const libc::sock_fprog,
            )
        };
        // Tries `flags`, then without each optional flag the kernel may not
        // know (EINVAL), then with no_new_privs (EACCES: no CAP_SYS_ADMIN).
        let install_any = |filter: &[libc::sock_filter], base: libc::c_ulong| -> libc::c_long {
            let optional = [
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
                libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
                0,
            ];
            let mut r = -1;
            for extra in optional {
                if base == 0 && extra & libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV != 0 {
                    // Only meaningful with a listener.
                    continue;
                }
                r = install(filter, base | extra);
                if r < 0 && last_errno_is(libc::EACCES) {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    r = install(filter, base | extra);
                }
                if r >= 0 || !last_errno_is(libc::EINVAL) {
                    break;
                }
            }
            r
        };
        let mut listener: libc::c_long = -1;
        if let Some(nf) = &prep.notify_filter {
            listener = install_any(nf, libc::SECCOMP_FILTER_FLAG_NEW_LISTENER);
        }
        if listener < 0 && install_any(&prep.filter, 0) < 0 {
            child_fail(fds, SpawnStage::Seccomp);
        }
        if let Some(sock) = fds.listener_send {
            // One message: the listener as SCM_RIGHTS, or none (ptrace only).
            let mut byte = [0u8];
            let mut iov = libc::iovec {
                iov_base: byte.as_mut_ptr().cast(),
                iov_len: 1,
            };
            let mut cbuf = [0u64; 4];
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            if listener >= 0 {
                let fd = listener as libc::c_int;
                msg.msg_control = cbuf.as_mut_ptr().cast();
                msg.msg_controllen =
                    libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as _;
                let cm = libc::CMSG_FIRSTHDR(&msg);
                (*cm).cmsg_level = libc::SOL_SOCKET;
                (*cm).cmsg_type = libc::SCM_RIGHTS;
                (*cm).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
                std::ptr::copy_nonoverlapping(
                    (&fd as *const libc::c_int).cast::<u8>(),
                    libc::CMSG_DATA(cm),
                    std::mem::size_of::<libc::c_int>(),
                );
            }
            // A failure leaves the supervisor without a listener: the calls
            // then wait for an answer that never comes, so fail the start.
            if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) != 1 {
                child_fail(fds, SpawnStage::Seccomp);
            }
            // `sock` is close-on-exec (closing it here would stop in `close`).
        }
        // 6. exec.
        libc::execve(
            prep.path.as_ptr(),
            prep.argv_ptrs.as_ptr(),
            prep.envp_ptrs.as_ptr(),
        );
        child_fail(fds, SpawnStage::Exec)
    }
}

/// Decodes the 8-byte failure report of a child.
pub(crate) fn decode_failure(buf: &[u8]) -> Option<(SpawnStage, Errno)> {
    if buf.len() < 8 {
        return None;
    }
    let stage = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let e = u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    Some((SpawnStage::from_code(stage), Errno(e as i32)))
}

/// Forks; the child runs [`child_main`] (and never returns here).
pub(crate) fn fork_exec(prep: &Prepared, fds: &ChildFds) -> Result<i32, Errno> {
    // SAFETY: in the child only `child_main` runs, which makes nothing but
    // async-signal-safe calls on data prepared before the fork, and never
    // returns (it execs or `_exit`s).
    match unsafe { crate::sys::fork() }? {
        // SAFETY: we are the freshly forked child, as `child_main` requires.
        crate::sys::Forked::Child => unsafe { child_main(prep, fds) },
        crate::sys::Forked::Parent(pid) => Ok(pid),
    }
}
