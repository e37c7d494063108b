//! The program's side of the keeper (docs/DESIGN.md §5): after the engine
//! left the process ([`handoff`]), every VFIO call is sent to the keeper
//! over this process's connection and waits for its answer (through the
//! connection's shared area once its hello set one up: `channel`).
//!
//! Invariants:
//! - a process is *attached* ([`attached`]) from its hand-off (or, for a
//!   forked child or a new image, from its first instruction after the
//!   fork or exec) until it exits; an attached process never starts an
//!   engine of its own again (`state::with_state` refuses);
//! - the descriptor table (fd to object) is this process's own: a fork
//!   copies it with the memory, an exec passes the descriptors that
//!   survive in `SOFTVFIO_KEEPER_FDS`; the keeper counts, per process, the
//!   references each descriptor holds, and is told of every change before
//!   the program's call returns (so another process's next call already
//!   sees it);
//! - one call at a time per process (the client lock), answered in order;
//!   while a call waits, the keeper may ask this process to run the
//!   `madvise`/`mlock`/`munlock` of a pin or to say what a descriptor
//!   number is, and the call goes on waiting;
//! - the connection is close-on-exec and belongs to one pid: a forked
//!   child makes its own before it returns from `fork`.

use std::collections::HashMap;
use std::ffi::{c_int, CString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use softvfio::device::{IrqInfo, MappedAccessError, RegionInfo, VfioDeviceModel};
use softvfio::sanitizer::StaleCause;
use softvfio::uapi::MappedRegion;

use crate::channel;
use crate::real;
use crate::state::TRACKED;
use crate::streams;

/// Requests, program to keeper (word 0 of a record).
pub(crate) mod op {
    pub const HELLO_ROOT: u64 = 1;
    pub const HELLO_FORK: u64 = 2;
    pub const HELLO_EXEC: u64 = 3;
    pub const OPEN: u64 = 4;
    pub const IOCTL: u64 = 5;
    pub const PREAD: u64 = 6;
    pub const PWRITE: u64 = 7;
    pub const UNREF: u64 = 8;
    pub const REF: u64 = 9;
    pub const FORK_PREPARE: u64 = 10;
    pub const FORK_DONE: u64 = 11;
    pub const EXEC_PREPARE: u64 = 12;
    pub const EXEC_FAILED: u64 = 13;
    pub const EXITING: u64 = 14;
    /// A load or store on a mapped BAR: word 1 the file, 2 the region, 3
    /// the offset, 4 the length, 5 nonzero for a store (its bytes follow).
    pub const MMIO: u64 = 15;
    /// `mmap` of a device file: word 1 the file, 2 the file offset, 3 the
    /// length, 4 nonzero for MAP_SHARED.
    pub const MMAP: u64 = 16;
    /// Which `/dev` node is asked: word 2 [`NODE_OBJECT`] the node of
    /// object word 1, [`NODE_GROUP`] the node of group number word 1, 0
    /// none. Answer: value the node's `major << 32 | minor`, plus 1 (0: no
    /// node), key word the number of cdevs.
    pub const CDEV: u64 = 40;
    /// `VmLck`'s parts for the caller's address space: value the kB the
    /// engine's pins lock there, key word the kB type1 accounts to it.
    pub const VMLCK: u64 = 41;
    /// [`CDEV`]'s word 2: the node of an object.
    pub const NODE_OBJECT: u64 = 1;
    /// [`CDEV`]'s word 2: the node of a group number.
    pub const NODE_GROUP: u64 = 2;
    /// The connection's shared-memory area (`channel`): its memfd comes
    /// with the record; answered on the socket.
    pub const CHANNEL: u64 = 42;
    /// Sanitized: the caller lost `[word 1, word 1 + word 2)` of its
    /// address space (word 3 the call: [`stale_cause`]); its call site's
    /// addresses follow. The keeper runs the stale-mapping check.
    pub const STALE: u64 = 43;
    /// `read(2)` (`WRITE`: `write(2)`) of object word 1, buffer word 2,
    /// length word 3. Answer: key word 1 when the object's reads are not
    /// served (the caller's call goes to its descriptor), else the value.
    pub const READ: u64 = 44;
    /// See [`READ`].
    pub const WRITE: u64 = 45;
    /// Answers to the keeper's questions.
    pub const MM_DONE: u64 = 20;
    pub const FD_ANSWER: u64 = 21;
}

/// Records, keeper to program (word 0).
pub(crate) mod kind {
    /// The answer: word 1 the value, word 2 the errno (0: none), word 3 a
    /// new object's key (with its descriptor attached); a load's bytes
    /// follow.
    pub const REPLY: u64 = 1;
    /// Run a memory call: word 1 the call (`real::mm_call`), 2 address,
    /// 3 length, 4 argument.
    pub const MM: u64 = 2;
    /// What is descriptor word 1? Answer `FD_ANSWER` with word 1: 0 not
    /// open, 1 another file, 2 object word 2.
    pub const FDQ: u64 = 3;
}

/// Words of a record's fixed part.
pub(crate) const WORDS: usize = 8;
/// Largest record (fixed part and a path or key list).
pub(crate) const MAX_RECORD: usize = 64 * 1024;

/// A record: the fixed words, then bytes.
pub(crate) fn encode(words: &[u64], tail: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(WORDS * 8 + tail.len());
    for i in 0..WORDS {
        out.extend_from_slice(&words.get(i).copied().unwrap_or(0).to_ne_bytes());
    }
    out.extend_from_slice(tail);
    out
}

/// The fixed words and the tail of a received record (`None`: too short).
pub(crate) fn decode(rec: &[u8]) -> Option<([u64; WORDS], &[u8])> {
    if rec.len() < WORDS * 8 {
        return None;
    }
    let mut w = [0u64; WORDS];
    for (i, x) in w.iter_mut().enumerate() {
        *x = u64::from_ne_bytes(rec[i * 8..i * 8 + 8].try_into().ok()?);
    }
    Some((w, &rec[WORDS * 8..]))
}

/// The environment variable naming the keeper's address.
pub(crate) const ENV_NAME: &std::ffi::CStr = c"SOFTVFIO_KEEPER";
/// The environment variable with the descriptors an exec kept
/// (`fd:key,...`).
pub(crate) const ENV_FDS: &std::ffi::CStr = c"SOFTVFIO_KEEPER_FDS";

static ATTACHED: AtomicBool = AtomicBool::new(false);
static CLIENT: Mutex<Option<Client>> = Mutex::new(None);

/// Is the engine out of this process (the keeper serves it)?
pub fn attached() -> bool {
    ATTACHED.load(Ordering::Relaxed)
}

struct Client {
    sock: c_int,
    /// The process this connection belongs to.
    pid: u32,
    fds: HashMap<c_int, u64>,
    /// The keeper's listening address.
    name: String,
    /// The shared-memory transport, once set up (after the hello).
    area: Option<channel::Area>,
}

/// The answer to a call.
struct Reply {
    val: i64,
    key: u64,
    fd: Option<c_int>,
}

fn lock() -> MutexGuard<'static, Option<Client>> {
    CLIENT.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// Sends a request and waits for its answer, serving the keeper's
    /// questions meanwhile.
    fn call(&mut self, words: &[u64], tail: &[u8], cloexec: bool) -> Result<Reply, c_int> {
        self.call_into(words, tail, cloexec, &mut [])
    }

    /// As [`Client::call`], with the answer's bytes copied into `out`.
    fn call_into(
        &mut self,
        words: &[u64],
        tail: &[u8],
        cloexec: bool,
        out: &mut [u8],
    ) -> Result<Reply, c_int> {
        let area = self.area.as_ref().filter(|a| a.is_mine());
        channel::send(self.sock, area, &encode(words, tail)).map_err(|_| libc::EIO)?;
        let mut buf = [0u8; WORDS * 8 + 64];
        loop {
            let (n, fd) =
                channel::recv(self.sock, area, &mut buf, cloexec).map_err(|_| libc::EIO)?;
            let Some((w, data)) = decode(&buf[..n]) else {
                if let Some(fd) = fd {
                    real::close_own(fd);
                }
                return Err(libc::EIO);
            };
            match w[0] {
                kind::REPLY => {
                    if w[2] != 0 {
                        if let Some(fd) = fd {
                            real::close_own(fd);
                        }
                        return Err(w[2] as c_int);
                    }
                    let m = data.len().min(out.len());
                    out[..m].copy_from_slice(&data[..m]);
                    let hello =
                        matches!(words[0], op::HELLO_ROOT | op::HELLO_FORK | op::HELLO_EXEC);
                    if hello && w[1] != 0 && area.is_none() {
                        self.set_up_area();
                    }
                    return Ok(Reply {
                        val: w[1] as i64,
                        key: w[3],
                        fd,
                    });
                }
                kind::MM => {
                    let e = real::mm_call(w[1], w[2], w[3], w[4]).err().unwrap_or(0);
                    channel::send(self.sock, area, &encode(&[op::MM_DONE, e as u64], &[]))
                        .map_err(|_| libc::EIO)?;
                }
                kind::FDQ => {
                    let fd = w[1] as c_int;
                    let (k, key) = match self.fds.get(&fd) {
                        Some(k) => (2, *k),
                        None if fd >= 0 && real::fd_is_open(fd) => (1, 0),
                        None => (0, 0),
                    };
                    channel::send(self.sock, area, &encode(&[op::FD_ANSWER, k, key], &[]))
                        .map_err(|_| libc::EIO)?;
                }
                _ => return Err(libc::EIO),
            }
        }
    }

    /// After the hello: moves the connection's records to a shared area
    /// (`channel`). On any failure the socket carries them, as before.
    fn set_up_area(&mut self) {
        // The socket alone, for same-run comparisons.
        if std::env::var_os("SOFTVFIO_KEEPER_SOCKET_ONLY").is_some() {
            return;
        }
        let Ok((area, memfd)) = channel::Area::create() else {
            return;
        };
        let sent = real::send_record(self.sock, &encode(&[op::CHANNEL], &[]), Some(memfd));
        real::close_own(memfd);
        if sent.is_err() {
            return;
        }
        let mut buf = [0u8; WORDS * 8];
        if let Ok((n, None)) = real::recv_record(self.sock, &mut buf, true) {
            if let Some((w, _)) = decode(&buf[..n]) {
                if w[0] == kind::REPLY && w[2] == 0 {
                    self.area = Some(area);
                }
            }
        }
    }

    /// `fd` now stands for object `key`; `stream`: a fault queue, whose
    /// reads and writes are served (the lock-free set follows the table:
    /// crate::streams).
    fn track(&mut self, fd: c_int, key: u64, stream: bool) {
        streams::set(fd, stream);
        if self.fds.insert(fd, key).is_none() {
            TRACKED.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn untrack(&mut self, fd: c_int) -> Option<u64> {
        let k = self.fds.remove(&fd)?;
        streams::unmark(fd);
        TRACKED.fetch_sub(1, Ordering::Relaxed);
        Some(k)
    }
}

/// Runs `f` on this process's connection. A process forked behind the
/// library's back (a raw `clone`) has none: EIO.
///
/// The exchange runs with the thread's cancellation disabled: its
/// `sendmsg`/`recvmsg`/`poll` are cancellation points that the program's
/// call (an `ioctl`, `munmap`, `free`...) is not, and a cancel acting
/// between a request and its answer would leave the connection out of
/// step with the client lock held.
fn with_client<R>(f: impl FnOnce(&mut Client) -> Result<R, c_int>) -> Result<R, c_int> {
    real::without_cancel(|| {
        let mut g = lock();
        let c = g.as_mut().ok_or(libc::EIO)?;
        if c.pid != std::process::id() {
            return Err(libc::EIO);
        }
        f(c)
    })
}

/// This process's connection to the keeper, once attached.
pub fn connection_fd() -> Option<c_int> {
    if !attached() {
        return None;
    }
    // Lock-free (the client's lock is held across a fork, and `close`/
    // `dup2` of any descriptor ask this, signal handlers included).
    let v = CONNECTION.load(Ordering::Acquire);
    let (pid, sock) = ((v >> 32) as u32, v as u32 as c_int);
    (v != 0 && pid == std::process::id()).then_some(sock)
}

/// The client's process id (high half) and connection number (low half),
/// mirrored for [`connection_fd`]; stored under the client's lock with
/// every change of either. 0: no client.
static CONNECTION: AtomicU64 = AtomicU64::new(0);

/// Mirrors `c`'s process and connection into [`CONNECTION`].
fn publish(c: &Client) {
    let v = (u64::from(c.pid) << 32) | u64::from(c.sock as u32);
    CONNECTION.store(v, Ordering::Release);
}

/// Whether `fd` is this process's connection to the keeper: a number the
/// program never opened, so its `close` of it is EBADF, as for any
/// number not open in the program's view.
pub fn is_connection(fd: c_int) -> bool {
    connection_fd() == Some(fd)
}

/// The program names `fd` as the target of a `dup2`/`dup3`, and this
/// process's keeper connection sits there: the connection moves to
/// another number first (close-on-exec, as it was), so that the program
/// gets the number as on Linux and its VFIO calls still reach the keeper.
pub fn vacate(fd: c_int) -> Result<(), c_int> {
    use std::os::fd::IntoRawFd;
    // Lock-free for any other number (a `dup2` in a fork window).
    if connection_fd() != Some(fd) {
        return Ok(());
    }
    let mut g = lock();
    let Some(c) = g
        .as_mut()
        .filter(|c| c.pid == std::process::id() && c.sock == fd)
    else {
        return Ok(());
    };
    let moved = real::dup_own(fd)?.into_raw_fd();
    c.sock = moved;
    publish(c);
    real::close_own(fd);
    Ok(())
}

/// The object behind `fd`, if it is one of ours.
pub fn key_of(fd: c_int) -> Option<u64> {
    lock().as_ref()?.fds.get(&fd).copied()
}

/// An `open` of a VFIO path: the new descriptor, or `Ok(None)` when the
/// path is not VFIO's.
pub fn open(path: &str, cloexec: bool) -> Result<Option<c_int>, c_int> {
    with_client(|c| {
        // The path, then (sanitized) a NUL and the call site's addresses.
        let mut tail = path.as_bytes().to_vec();
        let site = crate::sanitize::capture_raw();
        if !site.is_empty() {
            tail.push(0);
            tail.extend_from_slice(&site);
        }
        let r = c.call(&[op::OPEN, u64::from(cloexec)], &tail, cloexec)?;
        match r.fd {
            Some(fd) => {
                c.track(fd, r.key, false);
                Ok(Some(fd))
            }
            None if r.val == 0 => Ok(None),
            // The descriptor could not be installed (no free slot).
            None => {
                c.call(&[op::UNREF, r.key], &[], false)?;
                Err(libc::EMFILE)
            }
        }
    })
}

/// An ioctl on object `key`.
pub fn ioctl(key: u64, request: u64, arg: u64) -> Result<i64, c_int> {
    with_client(|c| {
        // Sanitized: the call site's addresses.
        let site = if crate::state::records_call_site(request) {
            // A map (or vaddr update) makes mappings of this memory.
            MAY_OWN.store(true, Ordering::Relaxed);
            crate::sanitize::capture_raw()
        } else {
            Vec::new()
        };
        // vfio hands out device fds with O_CLOEXEC.
        let r = c.call(&[op::IOCTL, key, request, arg], &site, true)?;
        match r.fd {
            // A fault queue: the descriptor's number goes into the reply
            // (at the address the keeper answered), the call returns 0.
            // Marked (track) before the number is in the reply.
            Some(fd) if request == softvfio::iommufd::abi::IOMMU_FAULT_QUEUE_ALLOC => {
                c.track(fd, r.key, true);
                match crate::mmio::write_own(r.val as u64, &(fd as u32).to_ne_bytes()) {
                    Ok(()) => Ok(0),
                    Err(_) => Err(libc::EFAULT),
                }
            }
            Some(fd) => {
                c.track(fd, r.key, false);
                Ok(i64::from(fd))
            }
            // A new object whose descriptor could not be installed.
            None if r.key != 0 => {
                c.call(&[op::UNREF, r.key], &[], false)?;
                Err(libc::EMFILE)
            }
            None => Ok(r.val),
        }
    })
}

/// `pread`/`pwrite` on object `key`.
pub fn rw(key: u64, buf: u64, len: u64, off: u64, write: bool) -> Result<i64, c_int> {
    let o = if write { op::PWRITE } else { op::PREAD };
    with_client(|c| Ok(c.call(&[o, key, buf, len, off], &[], false)?.val))
}

/// `read(2)`/`write(2)` on object `key`: `None` when the keeper does not
/// serve them for it.
pub fn stream_rw(key: u64, buf: u64, len: u64, write: bool) -> Option<Result<i64, c_int>> {
    let o = if write { op::WRITE } else { op::READ };
    match with_client(|c| c.call(&[o, key, buf, len], &[], false)) {
        Ok(r) if r.key != 0 => None,
        Ok(r) => Some(Ok(r.val)),
        Err(e) => Some(Err(e)),
    }
}

/// `fd` no longer refers to what it did (closed, or replaced by dup2).
pub fn forget(fd: c_int) {
    let _ = with_client(|c| {
        if let Some(key) = c.untrack(fd) {
            c.call(&[op::UNREF, key], &[], false)?;
        }
        Ok(())
    });
}

/// Descriptors `first..=last` were closed together.
pub fn forget_range(first: c_int, last: c_int) {
    let fds: Vec<c_int> = match lock().as_ref() {
        Some(c) => c
            .fds
            .keys()
            .copied()
            .filter(|fd| (first..=last).contains(fd))
            .collect(),
        None => return,
    };
    for fd in fds {
        forget(fd);
    }
}

/// `new` now refers to the same object as `old`.
///
/// `new`'s entry is replaced in one step under the client's lock, its bits
/// never cleared between (as `State::dup_of`); what it named before is
/// unreferenced after.
pub fn dup_of(old: c_int, new: c_int) {
    let _ = with_client(|c| {
        let replaced = match c.fds.get(&old).copied() {
            Some(key) => {
                c.call(&[op::REF, key], &[], false)?;
                let replaced = c.fds.get(&new).copied();
                // A copy of a queue is a queue: `old`'s bit is the table's
                // answer (crate::streams).
                c.track(new, key, streams::is_marked(old));
                replaced
            }
            None => c.untrack(new),
        };
        if let Some(prev) = replaced {
            c.call(&[op::UNREF, prev], &[], false)?;
        }
        Ok(())
    });
}

/// Why the engine leaves the program.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Fork = 1,
    Exec = 2,
}

/// Forks the keeper with the engine, if this process has one with VFIO
/// files open, and attaches this process to it. True when attached.
pub(crate) fn ensure_attached(reason: Reason) -> bool {
    if attached() {
        return true;
    }
    if TRACKED.load(Ordering::Relaxed) == 0 {
        return false;
    }
    // fork and exec are no cancellation points; the hand-off's socket,
    // waits and file reads are.
    real::without_cancel(|| attach(reason))
}

/// The hand-off of [`ensure_attached`], cancellation disabled.
fn attach(reason: Reason) -> bool {
    let mut keeper_name = String::new();
    let attach = |sock, name: String, fds| {
        keeper_name = name.clone();
        let c = Client {
            sock,
            pid: std::process::id(),
            fds,
            name,
            area: None,
        };
        publish(&c);
        *lock() = Some(c);
        ATTACHED.store(true, Ordering::SeqCst);
    };
    match crate::keeper::handoff(reason, attach) {
        Ok(()) => {
            let name = keeper_name;
            crate::mmio::to_keeper();
            real::at_exit(crate::exec::at_exit);
            let keeper = with_client(|c| c.call(&[op::HELLO_ROOT, reason as u64], &[], false));
            if let Ok(r) = keeper {
                // Under Yama's ptrace_scope 1 the keeper (not an ancestor)
                // needs leave to reach this memory.
                real::prctl(libc::PR_SET_PTRACER, r.val as u64);
            }
            if let Ok(n) = CString::new(name) {
                real::set_env(ENV_NAME, Some(&n));
            }
            true
        }
        Err(e) => {
            eprintln!("softvfio: cannot start the keeper (errno {e}); VFIO files stay private to each process");
            false
        }
    }
}

/// The program's `fork`: with VFIO files open, the engine first leaves the
/// process (the keeper); the child then makes its own connection and
/// shares every file with the parent, as on Linux.
///
/// With the thread's cancellation disabled (fork is no cancellation
/// point; the keeper's messages and the child's new connection have some).
pub fn fork(pass: impl FnOnce() -> libc::pid_t) -> libc::pid_t {
    if !ensure_attached(Reason::Fork) {
        return pass();
    }
    real::without_cancel(|| fork_attached(pass))
}

/// [`fork`] of an attached process.
fn fork_attached(pass: impl FnOnce() -> libc::pid_t) -> libc::pid_t {
    let mut g = lock();
    let Some(c) = g.as_mut().filter(|c| c.pid == std::process::id()) else {
        drop(g);
        return pass();
    };
    let token = match c.call(&[op::FORK_PREPARE], &[], false) {
        Ok(r) => r.val as u64,
        Err(e) => {
            real::set_errno(e);
            return -1;
        }
    };
    let pid = pass();
    if pid == 0 {
        // The child: its own connection, before anything else.
        real::close_own(c.sock);
        // The parent's area (shared with it): never this process's.
        c.area = None;
        c.pid = std::process::id();
        match real::connect_abstract(&c.name) {
            Ok(s) => {
                c.sock = s;
                let _ = c.call(&[op::HELLO_FORK, token], &[], false);
            }
            Err(_) => c.sock = -1,
        }
        publish(c);
        return 0;
    }
    let e = real::errno();
    let _ = c.call(&[op::FORK_DONE, token, pid as i64 as u64], &[], false);
    real::set_errno(e);
    pid
}

/// What an exec needs from the keeper, prepared before the real exec.
pub(crate) struct ExecPlan {
    /// `SOFTVFIO_KEEPER=...` and `SOFTVFIO_KEEPER_FDS=...` for the new image.
    pub env: Vec<CString>,
}

/// Before an exec: with VFIO files open, the engine leaves the process
/// (if it has not yet) and the keeper learns which descriptors the exec
/// closes; `None` when the process has no VFIO files.
pub(crate) fn exec_prepare() -> Option<ExecPlan> {
    if !ensure_attached(Reason::Exec) {
        return None;
    }
    with_client(|c| {
        let mut closing = Vec::new();
        let mut kept = String::new();
        for (fd, key) in &c.fds {
            let cloexec = real::fd_flags(*fd).map_or(true, |f| f & libc::FD_CLOEXEC != 0);
            if cloexec {
                closing.extend_from_slice(&key.to_ne_bytes());
            } else {
                if !kept.is_empty() {
                    kept.push(',');
                }
                kept.push_str(&format!("{fd}:{key}"));
                // A fault queue: the new image serves its reads too.
                if streams::is_marked(*fd) {
                    kept.push_str(":q");
                }
            }
        }
        c.call(&[op::EXEC_PREPARE], &closing, false)?;
        let env = [
            format!("{}={}", ENV_NAME.to_str().unwrap_or(""), c.name),
            format!("{}={kept}", ENV_FDS.to_str().unwrap_or("")),
        ]
        .into_iter()
        .filter_map(|s| CString::new(s).ok())
        .collect();
        Ok(ExecPlan { env })
    })
    .ok()
}

/// The exec failed: the process goes on as it was.
pub(crate) fn exec_failed() {
    let e = real::errno();
    let _ = with_client(|c| c.call(&[op::EXEC_FAILED], &[], false));
    real::set_errno(e);
}

/// The process is about to exit (`exit`, `_exit`): the keeper keeps what
/// its pinned pages hold, as Linux keeps pinned pages past their mm.
pub(crate) fn exiting() {
    if !attached() {
        return;
    }
    let _ = with_client(|c| c.call(&[op::EXITING], &[], false).map(|_| ()));
}

/// At load: a new image whose old one was attached connects to the keeper
/// and takes over the descriptors the exec kept.
pub(crate) fn attach_after_exec() {
    let Some(name) = std::env::var_os("SOFTVFIO_KEEPER") else {
        return;
    };
    let fds_text = std::env::var("SOFTVFIO_KEEPER_FDS").unwrap_or_default();
    // Not for this image's children (an exec of an attached process sets
    // them again).
    real::set_env(ENV_FDS, None);
    crate::sanitize::on_from_env();
    let Some(name) = name.to_str().map(str::to_owned) else {
        return;
    };
    // `fd:key`, `fd:key:q` for a fault queue.
    let mut fds = HashMap::new();
    for entry in fds_text.split(',').filter(|p| !p.is_empty()) {
        let mut parts = entry.split(':');
        let (Some(f), Some(k)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let (Ok(f), Ok(k)) = (f.parse::<c_int>(), k.parse::<u64>()) {
            fds.insert(f, (k, parts.next() == Some("q")));
        }
    }
    let Ok(sock) = real::connect_abstract(&name) else {
        real::set_env(ENV_NAME, None);
        return;
    };
    let mut c = Client {
        sock,
        pid: std::process::id(),
        fds: HashMap::new(),
        name,
        area: None,
    };
    match c.call(&[op::HELLO_EXEC], &[], false) {
        // The keeper does not know this process: it had no VFIO files.
        Ok(r) if r.val == 0 => {
            real::close_own(c.sock);
            real::set_env(ENV_NAME, None);
        }
        Ok(r) => {
            // Before the program's first instruction: the queues the exec
            // kept are marked before it can name them.
            for (fd, (key, stream)) in fds {
                c.track(fd, key, stream);
            }
            real::prctl(libc::PR_SET_PTRACER, r.val as u64);
            publish(&c);
            *lock() = Some(c);
            ATTACHED.store(true, Ordering::Relaxed);
            real::at_exit(crate::exec::at_exit);
        }
        Err(_) => {
            real::close_own(c.sock);
            real::set_env(ENV_NAME, None);
        }
    }
}

/// A device model of the keeper's, reached through the connection: what a
/// BAR mapping of this process reaches after the hand-off (the program's
/// copy of the models is stale from then on). Only the mapped accesses
/// are used (`softvfio::barmap`); the rest answers as a device with
/// nothing.
pub(crate) struct KeeperModel {
    /// The device file (the keeper's object) the mapping was made through.
    pub file: u64,
    pub name: String,
}

impl KeeperModel {
    fn access(
        &self,
        region: u32,
        offset: u64,
        data: &mut [u8],
        store: Option<&[u8]>,
    ) -> Result<(), MappedAccessError> {
        let len = data.len().max(store.map_or(0, <[u8]>::len));
        let words = [
            op::MMIO,
            self.file,
            u64::from(region),
            offset,
            len as u64,
            u64::from(store.is_some()),
        ];
        let r = with_client(|c| c.call_into(&words, store.unwrap_or(&[]), false, data));
        match r {
            Ok(r) if r.val == 0 => Ok(()),
            Ok(_) => Err(MappedAccessError::Bus),
            Err(e) => Err(MappedAccessError::Errno(e)),
        }
    }
}

impl VfioDeviceModel for KeeperModel {
    fn name(&self) -> &str {
        &self.name
    }
    fn flags(&self) -> u32 {
        0
    }
    fn num_regions(&self) -> u32 {
        0
    }
    fn num_irqs(&self) -> u32 {
        0
    }
    fn region_info(&self, _index: u32) -> Option<RegionInfo> {
        None
    }
    fn irq_info(&self, _index: u32) -> Option<IrqInfo> {
        None
    }
    fn region_read(&self, _index: u32, _offset: u64, _buf: &mut [u8]) -> Result<usize, i32> {
        Err(libc::EINVAL)
    }
    fn region_write(&self, _index: u32, _offset: u64, _data: &[u8]) -> Result<usize, i32> {
        Err(libc::EINVAL)
    }
    fn mapped_read(
        &self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), MappedAccessError> {
        self.access(index, offset, data, None)
    }
    fn mapped_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), MappedAccessError> {
        self.access(index, offset, &mut [], Some(data))
    }
    fn reset(&self) -> Result<(), i32> {
        Err(libc::EINVAL)
    }
}

/// `mmap` of device file `key` after the hand-off: the keeper checks it
/// as the driver would; the mapping reaches the keeper's model.
pub(crate) fn mmap(key: u64, off: u64, len: u64, shared: bool) -> Result<MappedRegion, c_int> {
    let r = with_client(|c| c.call(&[op::MMAP, key, off, len, u64::from(shared)], &[], false))?;
    Ok(MappedRegion {
        model: std::sync::Arc::new(KeeperModel {
            file: key,
            name: format!("keeper file {key}"),
        }),
        region: r.val as u32,
        offset: r.key,
        file: key,
    })
}

/// The code of a stale-mapping cause in an [`op::STALE`] request (the
/// engine's code plus one: 0 is no cause).
pub(crate) fn stale_code(cause: StaleCause) -> u64 {
    u64::from(cause.code()) + 1
}

/// The cause of an [`op::STALE`] request's code (`None`: not one).
pub(crate) fn stale_cause(code: u64) -> Option<StaleCause> {
    let c = u32::try_from(code.checked_sub(1)?).ok()?;
    StaleCause::from_code(c)
}

/// After the hand-off, sanitized: may this process's memory be mapped for
/// DMA (in any container, whoever holds it)? Its memory calls are then
/// checked even with no VFIO file open (a fork child that mapped its copy
/// of a buffer and closed its files). Set by each call that may map (and at
/// start: a fork copies it, a new image asks once), cleared by the keeper's
/// answer to a check.
static MAY_OWN: AtomicBool = AtomicBool::new(true);

/// Are this process's memory calls to be checked by the keeper although it
/// holds no VFIO file?
pub(crate) fn may_own_mappings() -> bool {
    attached() && MAY_OWN.load(Ordering::Relaxed)
}

/// After the hand-off, sanitized: the program lost `[addr, addr + len)`
/// (by `cause`); the keeper reports each live DMA mapping of it, and
/// answers whether this process still owns one.
pub(crate) fn going_away(addr: u64, len: u64, cause: StaleCause) {
    // The capture may read /proc/self/maps (open, read: cancellation
    // points); the callers disable cancellation (`sanitize::going_away`).
    let site = crate::sanitize::capture_raw();
    let words = [op::STALE, addr, len, stale_code(cause)];
    if let Ok(r) = with_client(|c| c.call(&words, &site, false)) {
        MAY_OWN.store(r.val != 0, Ordering::Relaxed);
    }
}

/// A mapping of `key` holds it open (one reference, as a descriptor).
pub(crate) fn hold(key: u64) {
    let _ = with_client(|c| c.call(&[op::REF, key], &[], false).map(|_| ()));
}

/// The last mapping of `key` is gone.
pub(crate) fn unhold(key: u64) {
    let _ = with_client(|c| c.call(&[op::UNREF, key], &[], false).map(|_| ()));
}

/// This process's VFIO descriptors after the hand-off (what a spawned
/// child may inherit).
pub(crate) fn fds() -> Vec<c_int> {
    lock()
        .as_ref()
        .map(|c| c.fds.keys().copied().collect())
        .unwrap_or_default()
}

/// After the hand-off: the `/dev` node `(major, minor)` of object `key`
/// (`op::NODE_OBJECT`) or of group number `key` (`op::NODE_GROUP`), and the
/// number of cdevs; `None` when the keeper cannot be asked.
pub(crate) fn node(what: u64, key: u64) -> Option<(Option<(u32, u32)>, usize)> {
    let words = [op::CDEV, key, what];
    let r = with_client(|c| c.call(&words, &[], false)).ok()?;
    let node = u64::try_from(r.val).ok().and_then(|n| n.checked_sub(1));
    let node = node.map(|n| ((n >> 32) as u32, n as u32));
    Some((node, r.key as usize))
}

/// After the hand-off: this process's `/proc/self/status` with `VmLck`
/// showing type1's accounting of its address space (the keeper's).
pub(crate) fn status_text() -> Option<String> {
    let r = with_client(|c| c.call(&[op::VMLCK], &[], false)).ok()?;
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    Some(softvfio_platform::report::status_with_vmlck(
        &text,
        r.val as u64,
        r.key,
    ))
}
