//! The transport of a forwarded call (docs/DESIGN.md §5, "The transport"):
//! after a connection's hello, its records go through a shared-memory area
//! (a sealed memfd the program sends over the socket, mapped by both
//! sides) instead of the socket, and each side waits for the other by
//! spinning briefly, then in `FUTEX_WAIT` on the area's turn word.
//!
//! Why: every socket round trip is two ordinary wake-ups, and on an idle
//! machine each one wakes a halted vCPU (57-63 µs per forwarded BAR read).
//! A peer that is still spinning when the record arrives needs no wake-up
//! at all; one that went to sleep costs one futex wake.
//!
//! What the socket still does: the hello and the area's set-up, the
//! descriptors a record carries (SCM_RIGHTS: the record says one follows
//! on the socket), liveness (each side's death hangs the socket up; the
//! keeper also watches the caller's pidfd) and the doorbell: a one-byte
//! record that wakes the keeper when it sleeps in `poll`.
//!
//! Invariants:
//! - records strictly alternate: the caller writes one (a request, or the
//!   answer to a question) and hands the turn to the keeper; the keeper
//!   writes one (a question or the answer) and hands it back; the side
//!   without the turn never touches the record bytes, so one buffer
//!   suffices; one call at a time per connection (the client lock);
//! - a turn is handed over with a release store after the bytes are
//!   written, and taken with an acquire load before they are read; each
//!   side copies a record out before looking at it (the peer is another
//!   process: its bytes are checked as a socket's would be);
//! - a side that sleeps says so (its waiting word) before re-checking the
//!   turn, and the other side wakes it after handing the turn over
//!   (sequentially consistent: one of the two always sees the other); the
//!   same for the keeper's `poll` (its asleep word, the doorbell);
//! - no wait is unbounded: a sleeping side wakes every [`LIVENESS`] to
//!   check that its peer lives (the socket hung up, the caller's pidfd
//!   readable) and gives EIO when it does not; when the peer lives but
//!   the record this side handed over still waits for it, the side wakes
//!   it again (futex wake, doorbell): a lost wake-up costs a LIVENESS,
//!   never a hang (the keeper, for its part, looks at every area after
//!   each `poll`, which has a timeout); a signal (EINTR) only resumes the
//!   wait;
//! - spinning lasts at most [`ANSWER_SPIN_NS`] for the answer to a record
//!   just sent, [`IDLE_SPIN_NS`] for the keeper's next request, and not
//!   at all while the machine has no idle CPU (the keeper decides,
//!   [`Area::set_spin`]).
//!
//! This module holds the area's `unsafe`: the mapping, the futex calls and
//! the copies in and out of shared memory.

use std::ffi::c_int;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::real;

/// How long a side that waits for the answer to what it just sent (the
/// caller for its call's records, the keeper for the answer to its
/// question) spins before it sleeps. A 4 KiB MAP_DMA keeps the keeper busy
/// longer than 5 µs before its first question: with 5 µs the caller slept
/// and each MAP+UNMAP paid the wake-ups (167-180 µs against 29-30 µs with
/// 20 µs, docs/PERFORMANCE-HISTORY.md, "Stop 6").
pub(crate) const ANSWER_SPIN_NS: u32 = 20_000;
/// How long the keeper spins after an answer for the next request (a
/// program's calls come back to back) before it sleeps in `poll`.
pub(crate) const IDLE_SPIN_NS: u32 = 5_000;
/// How often a sleeping side checks that its peer lives.
pub(crate) const LIVENESS: Duration = Duration::from_millis(20);
/// The area: a page of header, then the record (as large as a socket
/// record may be, `forward::MAX_RECORD`).
const HEADER_BYTES: usize = 4096;
const RECORD_BYTES: usize = crate::forward::MAX_RECORD;
const AREA_BYTES: usize = HEADER_BYTES + RECORD_BYTES;

/// Whose turn it is (the turn word).
const TURN_NONE: u32 = 0;
const TURN_KEEPER: u32 = 1;
const TURN_CALLER: u32 = 2;

/// The header at the start of the area. Every field is an atomic: any
/// bit pattern is valid, and the peer may change it at any time.
#[repr(C)]
struct Header {
    turn: AtomicU32,
    /// The record's length.
    len: AtomicU32,
    /// The record's descriptor comes on the socket.
    fd_follows: AtomicU32,
    /// The caller sleeps (or is about to) in FUTEX_WAIT on `turn`.
    caller_waiting: AtomicU32,
    /// The keeper sleeps (or is about to) in FUTEX_WAIT on `turn`.
    keeper_waiting: AtomicU32,
    /// The keeper sleeps (or is about to) in `poll`: ring the doorbell.
    keeper_asleep: AtomicU32,
    /// How long to spin, in ns (set by the keeper).
    spin_ns: AtomicU32,
}

/// Which side of a connection this process is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Side {
    Caller,
    Keeper,
}

/// One connection's shared area, mapped in this process.
pub(crate) struct Area {
    base: NonNull<u8>,
    /// The process that mapped it: a forked child's inherited copy of its
    /// parent's area is not its own.
    pid: u32,
    /// One thread of this process at a time in the record bytes (callers
    /// already hold the client lock, the keeper has one thread: this
    /// makes it a property of the type).
    local: std::sync::Mutex<()>,
}

// SAFETY: the area is shared memory reached only through atomics (the
// header) and copies made while this side holds the turn; the pointer is
// valid from any thread for the mapping's life.
unsafe impl Send for Area {}
// SAFETY: as for Send: no method hands out a reference to the record
// bytes, the header's fields are atomics, and the copies run under
// `local`.
unsafe impl Sync for Area {}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `map` with AREA_BYTES and is
        // referred to by nothing else (the header reference of a method
        // does not outlive the call).
        unsafe {
            crate::real::raw_syscall(
                libc::SYS_munmap,
                [
                    self.base.as_ptr() as libc::c_long,
                    AREA_BYTES as libc::c_long,
                    0,
                    0,
                    0,
                    0,
                ],
            )
        };
    }
}

impl Area {
    /// A new area (the caller's): the area and its memfd, sealed against
    /// resizing, to send to the keeper (then closed).
    pub(crate) fn create() -> Result<(Area, c_int), c_int> {
        // SAFETY: the name is NUL-terminated.
        let fd = unsafe {
            libc::memfd_create(
                c"softvfio-channel".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(real::errno());
        }
        let seal = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: ftruncate and fcntl(F_ADD_SEALS) on our own memfd take
        // integers.
        let ok = unsafe {
            libc::syscall(libc::SYS_ftruncate, fd as libc::c_long, AREA_BYTES) == 0
                && libc::syscall(
                    libc::SYS_fcntl,
                    fd as libc::c_long,
                    libc::F_ADD_SEALS as libc::c_long,
                    seal as libc::c_long,
                ) == 0
        };
        if !ok {
            let e = real::errno();
            real::close_own(fd);
            return Err(e);
        }
        match Area::map(fd) {
            Ok(a) => Ok((a, fd)),
            Err(e) => {
                real::close_own(fd);
                Err(e)
            }
        }
    }

    /// The keeper's mapping of the area a caller sent: refused unless it
    /// is a memfd of exactly the area's size that can no longer shrink
    /// (an access past a shrunk end would be SIGBUS in the keeper).
    pub(crate) fn accept(fd: c_int) -> Result<Area, c_int> {
        // SAFETY: fcntl(F_GET_SEALS) takes integers.
        let seals = unsafe {
            libc::syscall(
                libc::SYS_fcntl,
                fd as libc::c_long,
                libc::F_GET_SEALS as libc::c_long,
            )
        };
        if seals < 0 || seals as c_int & libc::F_SEAL_SHRINK == 0 {
            return Err(libc::EINVAL);
        }
        // SAFETY: stat is plain data; all-zero is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a live stat the call fills.
        if unsafe { libc::syscall(libc::SYS_fstat, fd as libc::c_long, &mut st) } != 0 {
            return Err(real::errno());
        }
        if st.st_size != AREA_BYTES as i64 {
            return Err(libc::EINVAL);
        }
        Area::map(fd)
    }

    fn map(fd: c_int) -> Result<Area, c_int> {
        // SAFETY: a new shared mapping of the memfd (raw system call: the
        // library's own `mmap` interposer is not for it); the kernel picks
        // the address.
        let p = unsafe {
            crate::real::raw_syscall(
                libc::SYS_mmap,
                [
                    0,
                    AREA_BYTES as libc::c_long,
                    (libc::PROT_READ | libc::PROT_WRITE) as libc::c_long,
                    libc::MAP_SHARED as libc::c_long,
                    fd as libc::c_long,
                    0,
                ],
            )
        };
        if p == -1 {
            return Err(real::errno());
        }
        let base = NonNull::new(p as *mut u8).ok_or(libc::ENOMEM)?;
        Ok(Area {
            base,
            pid: std::process::id(),
            local: std::sync::Mutex::new(()),
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is page-aligned, at least a page long and
        // lives as long as `self`; Header is atomics only (valid for any
        // bytes, interior mutability shared with the peer).
        unsafe { &*self.base.as_ptr().cast::<Header>() }
    }

    /// Whether this process mapped the area (not a forked child's copy).
    pub(crate) fn is_mine(&self) -> bool {
        self.pid == std::process::id()
    }

    /// The keeper's spinning policy, for both sides.
    pub(crate) fn set_spin(&self, ns: u32) {
        self.header().spin_ns.store(ns, Ordering::Relaxed);
    }

    /// Whether a record waits for the keeper.
    pub(crate) fn for_keeper(&self) -> bool {
        self.header().turn.load(Ordering::Acquire) == TURN_KEEPER
    }

    /// The keeper is about to sleep in `poll` (true) or is awake again:
    /// with it asleep, a caller rings the doorbell. After arming, the
    /// keeper checks [`Area::for_keeper`] again before sleeping.
    pub(crate) fn set_keeper_asleep(&self, asleep: bool) {
        self.header()
            .keeper_asleep
            .store(u32::from(asleep), Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Writes a record and hands the turn to the other side of `side`.
    /// The doorbell is for the caller to ring on `sock`.
    fn put(&self, side: Side, sock: c_int, rec: &[u8], fd_follows: bool) -> Result<(), c_int> {
        if rec.len() > RECORD_BYTES {
            return Err(libc::EMSGSIZE);
        }
        let _one = self.local.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the record bytes lie inside the mapping (checked length),
        // no other thread of this process is in them (`local`) and this
        // side holds the turn (the invariants): the peer does not touch
        // them until the release store below.
        unsafe {
            std::ptr::copy_nonoverlapping(
                rec.as_ptr(),
                self.base.as_ptr().add(HEADER_BYTES),
                rec.len(),
            );
        }
        let h = self.header();
        h.len.store(rec.len() as u32, Ordering::Relaxed);
        h.fd_follows.store(u32::from(fd_follows), Ordering::Relaxed);
        h.turn.store(peer_turn(side), Ordering::SeqCst);
        self.wake_peer(side, sock);
        Ok(())
    }

    /// Wakes the peer of `side`, which may sleep waiting for the record
    /// just handed over: in FUTEX_WAIT (its waiting word) or, the keeper,
    /// in `poll` (its asleep word: one byte on the socket wakes it; a full
    /// socket means doorbells already wait there).
    fn wake_peer(&self, side: Side, sock: c_int) {
        let h = self.header();
        let peer_waiting = match side {
            Side::Caller => &h.keeper_waiting,
            Side::Keeper => &h.caller_waiting,
        };
        if peer_waiting.load(Ordering::SeqCst) != 0 {
            futex_wake(&h.turn);
        }
        if side == Side::Caller && h.keeper_asleep.load(Ordering::SeqCst) != 0 {
            send_doorbell(sock);
        }
    }

    /// Waits for the turn of `side` (spinning, then sleeping; `alive`
    /// says whether the peer still lives) and copies the record into
    /// `buf`: its length, and whether a descriptor follows on the socket.
    fn take(
        &self,
        side: Side,
        sock: c_int,
        buf: &mut [u8],
        alive: &mut dyn FnMut() -> bool,
    ) -> Result<(usize, bool), c_int> {
        let _one = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let h = self.header();
        let (mine, waiting) = match side {
            Side::Caller => (TURN_CALLER, &h.caller_waiting),
            Side::Keeper => (TURN_KEEPER, &h.keeper_waiting),
        };
        let spin = h.spin_ns.load(Ordering::Relaxed).min(ANSWER_SPIN_NS);
        let spin = Duration::from_nanos(u64::from(spin));
        let arrived = || h.turn.load(Ordering::Acquire) == mine;
        let mut got = arrived();
        if !got && !spin.is_zero() {
            let t0 = Instant::now();
            'spin: loop {
                for _ in 0..64 {
                    if arrived() {
                        got = true;
                        break 'spin;
                    }
                    std::hint::spin_loop();
                }
                if t0.elapsed() >= spin {
                    break;
                }
            }
        }
        while !got {
            let cur = h.turn.load(Ordering::SeqCst);
            waiting.store(1, Ordering::SeqCst);
            if h.turn.load(Ordering::SeqCst) != mine {
                // EINTR (a signal) or a spurious wake-up: wait again; a
                // timeout: check the peer, and when the record this side
                // handed over still waits for it, wake it again (a wake-up
                // lost for any reason costs one LIVENESS, never a hang).
                if futex_wait(&h.turn, cur, LIVENESS) == Err(libc::ETIMEDOUT) {
                    if !alive() {
                        waiting.store(0, Ordering::SeqCst);
                        return Err(libc::EIO);
                    }
                    if h.turn.load(Ordering::SeqCst) == peer_turn(side) {
                        self.wake_peer(side, sock);
                    }
                }
            }
            waiting.store(0, Ordering::Relaxed);
            got = arrived();
        }
        let n = (h.len.load(Ordering::Relaxed) as usize).min(RECORD_BYTES);
        let m = n.min(buf.len());
        // SAFETY: the record bytes lie inside the mapping, no other thread
        // of this process is in them (`local`) and this side holds the
        // turn (acquired above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(HEADER_BYTES),
                buf.as_mut_ptr(),
                m,
            );
        }
        let fd_follows = h.fd_follows.load(Ordering::Relaxed) != 0;
        h.turn.store(TURN_NONE, Ordering::Release);
        Ok((m, fd_follows))
    }
}

/// The turn that `side` hands over: its peer's.
fn peer_turn(side: Side) -> u32 {
    match side {
        Side::Caller => TURN_KEEPER,
        Side::Keeper => TURN_CALLER,
    }
}

/// A one-byte record (shorter than any request, so the keeper reads it as
/// nothing but a wake-up), without waiting for room.
fn send_doorbell(sock: c_int) {
    let b = [0u8; 1];
    // SAFETY: sendto of a live one-byte buffer, no address.
    unsafe {
        libc::syscall(
            libc::SYS_sendto,
            sock as libc::c_long,
            b.as_ptr(),
            1usize,
            (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as libc::c_long,
            0usize,
            0usize,
        )
    };
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a live word of a shared mapping (not
    // FUTEX_PRIVATE: the waiter is another process).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE as libc::c_long,
            1 as libc::c_long,
            0usize,
            0usize,
            0 as libc::c_long,
        )
    };
}

/// FUTEX_WAIT while `word` is `cur`, at most `timeout`.
fn futex_wait(word: &AtomicU32, cur: u32, timeout: Duration) -> Result<(), c_int> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT on a live word of a shared mapping, with a live
    // relative timeout.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT as libc::c_long,
            cur as libc::c_long,
            &ts as *const libc::timespec,
            0usize,
            0 as libc::c_long,
        )
    };
    if r < 0 {
        Err(real::errno())
    } else {
        Ok(())
    }
}

/// Whether the socket's peer is gone (hung up or in error).
fn hung_up(sock: c_int) -> bool {
    let mut p = [libc::pollfd {
        fd: sock,
        events: libc::POLLRDHUP,
        revents: 0,
    }];
    match real::poll(&mut p, 0) {
        Ok(_) => {
            p[0].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLRDHUP | libc::POLLNVAL) != 0
        }
        Err(_) => true,
    }
}

/// Whether the process behind `pidfd` exited.
fn exited(pidfd: c_int) -> bool {
    if pidfd < 0 {
        return false;
    }
    let mut p = [libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    }];
    matches!(real::poll(&mut p, 0), Ok(n) if n > 0)
}

/// The caller's side: sends a record (through the area when there is
/// one, else on the socket).
pub(crate) fn send(sock: c_int, area: Option<&Area>, rec: &[u8]) -> Result<(), c_int> {
    match area {
        Some(a) => a.put(Side::Caller, sock, rec, false),
        None => real::send_record(sock, rec, None),
    }
}

/// The caller's side: receives the keeper's next record into `buf` (its
/// length, and the descriptor it carries); EIO when the keeper is gone.
pub(crate) fn recv(
    sock: c_int,
    area: Option<&Area>,
    buf: &mut [u8],
    cloexec: bool,
) -> Result<(usize, Option<c_int>), c_int> {
    let Some(a) = area else {
        return real::recv_record(sock, buf, cloexec);
    };
    let (n, fd_follows) = a.take(Side::Caller, sock, buf, &mut || !hung_up(sock))?;
    if !fd_follows {
        return Ok((n, None));
    }
    // The keeper sent the descriptor before handing the turn over.
    let mut one = [0u8; 8];
    match real::recv_record(sock, &mut one, cloexec)? {
        (_, Some(fd)) => Ok((n, Some(fd))),
        (_, None) => Err(libc::EIO),
    }
}

/// The keeper's end of one connection: its socket, its area once set up,
/// and the caller's pidfd (its death ends any wait).
#[derive(Clone)]
pub(crate) struct Link {
    pub sock: c_int,
    pub area: Option<std::sync::Arc<Area>>,
    pub pidfd: c_int,
}

impl Link {
    /// Sends a record to the caller, with descriptor `pass` (on the socket).
    pub(crate) fn send(&self, rec: &[u8], pass: Option<c_int>) -> Result<(), c_int> {
        let Some(a) = &self.area else {
            return real::send_record(self.sock, rec, pass);
        };
        if let Some(fd) = pass {
            real::send_record(self.sock, &[0u8], Some(fd))?;
        }
        a.put(Side::Keeper, self.sock, rec, pass.is_some())
    }

    /// Receives the caller's next record (an answer to a question) into
    /// `buf`; EIO when the caller is gone.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> Result<usize, c_int> {
        let Some(a) = &self.area else {
            let (n, fd) = real::recv_record(self.sock, buf, true)?;
            if let Some(fd) = fd {
                real::close_own(fd);
            }
            return Ok(n);
        };
        let (sock, pidfd) = (self.sock, self.pidfd);
        let (n, _) = a.take(Side::Keeper, sock, buf, &mut || {
            !hung_up(sock) && !exited(pidfd)
        })?;
        Ok(n)
    }
}

/// The keeper's spinning policy, from the machine's CPU pressure: spin
/// while tasks seldom wait for a CPU (`/proc/pressure/cpu`, "some" over
/// the last 10 s below 10 %), else not at all (a spinner would hold the
/// CPU that its peer or another program waits for). Without pressure
/// information, from the load average (a CPU left idle).
/// `SOFTVFIO_KEEPER_SPIN_NS` overrides it (0: never spin), for
/// measurements.
pub(crate) fn spin_policy() -> u32 {
    if let Some(ns) = std::env::var("SOFTVFIO_KEEPER_SPIN_NS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        return ns.min(ANSWER_SPIN_NS);
    }
    let idle = match std::fs::read_to_string("/proc/pressure/cpu") {
        Ok(t) => t
            .lines()
            .find(|l| l.starts_with("some "))
            .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("avg10=")))
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|pct| pct < 10.0),
        Err(_) => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
                .is_some_and(|load| load + 1.0 <= cpus)
        }
    };
    if idle {
        ANSWER_SPIN_NS
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;
    use std::sync::Arc;

    /// Both sides of one connection in this process: the caller's area,
    /// the keeper's mapping of the same memfd, and a socket pair (caller's
    /// end, keeper's end).
    fn pair() -> (Area, Arc<Area>, UnixDatagram, UnixDatagram) {
        let (caller, memfd) = Area::create().expect("create");
        let keeper = Area::accept(memfd).expect("accept");
        real::close_own(memfd);
        let (cs, ks) = UnixDatagram::pair().expect("socketpair");
        (caller, Arc::new(keeper), cs, ks)
    }

    /// Issue 13's hang: a caller waited for its answer forever while the
    /// keeper, asleep in `poll`, never learnt of the request (its doorbell
    /// gone). Here the first doorbell is taken away: the waiting caller
    /// rings again after a LIVENESS, the keeper wakes, serves, answers.
    /// Before, nothing came and the caller waited for ever.
    #[test]
    fn a_lost_doorbell_is_rung_again_while_the_request_waits() {
        let (caller, keeper, cs, ks) = pair();
        keeper.set_spin(0);
        keeper.set_keeper_asleep(true);
        let csock = cs.as_raw_fd();
        let t = std::thread::spawn(move || {
            send(csock, Some(&caller), b"request").expect("send");
            let mut buf = [0u8; 64];
            let got = recv(csock, Some(&caller), &mut buf, true);
            got.map(|(n, fd)| (buf[..n].to_vec(), fd))
        });
        // The doorbell of the request, lost.
        let mut one = [0u8; 8];
        assert_eq!(ks.recv(&mut one).expect("first doorbell"), 1);
        // The caller rings again: well within a second.
        let mut p = [libc::pollfd {
            fd: ks.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let t0 = Instant::now();
        assert_eq!(real::poll(&mut p, 2000), Ok(1));
        assert!(t0.elapsed() < Duration::from_millis(1000));
        assert_eq!(ks.recv(&mut one).expect("second doorbell"), 1);
        keeper.set_keeper_asleep(false);
        assert!(keeper.for_keeper());
        let link = Link {
            sock: ks.as_raw_fd(),
            area: Some(keeper.clone()),
            pidfd: -1,
        };
        let mut buf = [0u8; 64];
        assert_eq!(link.recv(&mut buf), Ok(7));
        assert_eq!(&buf[..7], b"request");
        link.send(b"answer", None).expect("answer");
        assert_eq!(t.join().unwrap(), Ok((b"answer".to_vec(), None)));
        drop(cs);
    }

    /// A caller that sleeps while the keeper has taken its request and
    /// works on it is not rung: the turn is no longer the keeper's.
    #[test]
    fn no_doorbell_once_the_keeper_has_the_request() {
        let (caller, keeper, cs, ks) = pair();
        keeper.set_spin(0);
        let csock = cs.as_raw_fd();
        let t = std::thread::spawn(move || {
            send(csock, Some(&caller), b"request").expect("send");
            let mut buf = [0u8; 64];
            let got = recv(csock, Some(&caller), &mut buf, true);
            got.map(|(n, _)| buf[..n].to_vec())
        });
        while !keeper.for_keeper() {
            std::thread::yield_now();
        }
        let link = Link {
            sock: ks.as_raw_fd(),
            area: Some(keeper.clone()),
            pidfd: -1,
        };
        let mut buf = [0u8; 64];
        assert_eq!(link.recv(&mut buf), Ok(7));
        // The keeper asleep meanwhile, as in a long call: five LIVENESS.
        keeper.set_keeper_asleep(true);
        std::thread::sleep(LIVENESS * 5);
        keeper.set_keeper_asleep(false);
        let mut p = [libc::pollfd {
            fd: ks.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        assert_eq!(real::poll(&mut p, 0), Ok(0));
        link.send(b"answer", None).expect("answer");
        assert_eq!(t.join().unwrap(), Ok(b"answer".to_vec()));
    }
}
