//! The keeper: the process the engine moves to at the first `fork` or
//! `execve` that happens with VFIO files open (docs/DESIGN.md §5), so that
//! processes share containers, groups, devices and mappings as Linux's
//! open files do.
//!
//! It is forked from the program with the state lock held, so it inherits
//! the engine, the device models and a copy of the program's memory at that
//! instant (after an exec, that copy is Linux's old pinned pages: the
//! mappings made before reach it). It is forked twice (the middle process
//! exits at once), so it is never the program's child; under
//! `softvfio run` it is reparented to `softvfio run` (a child subreaper),
//! dies with it (`PR_SET_PDEATHSIG`), and `softvfio run` waits for it.
//!
//! Invariants:
//! - one thread serves every process, one record at a time; a process's
//!   call runs to its answer before the next record is read, so the
//!   engine sees calls in an order each process observes;
//! - a record comes on a connection's socket or, after its set-up, from
//!   its shared area (`channel`); a call's questions and answer go back
//!   the way it came; the keeper sleeps in `poll` only after marking
//!   every area asleep and finding none with a request (a caller then
//!   rings the doorbell), and spins for the next request (policy
//!   permitting) after serving one;
//! - each process is known by pid, with a pidfd (its exit is noticed before
//!   any later call is served, every pidfd looked at again just before each
//!   call: a process that waited for another's exit finds its descriptors
//!   released), its memory (a backend that reaches
//!   exactly its address space) and the references its descriptors hold;
//! - the program's own memory backend is moved to the program's pid at a
//!   hand-off by fork (or an exec that failed) before any call is served;
//! - the engine's eventfd watchers run in the keeper only, from its start
//!   (the program stops them before the fork, the keeper restarts them);
//! - what a process's exit closes for the last time is counted as left
//!   open by the program before any of it is released;
//! - the keeper ends, with the end report, when no process is left and no
//!   fork is pending.

use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use softvfio::eventfd::EventfdWatcher;
use softvfio::frontend::{FdTarget, ObjectKey, ProgramFds, Routed};
use softvfio::memory::host::{HostMemory, MmSyscalls};
use softvfio::memory::UserMemory;
use softvfio::sanitizer::with_call_site;

use crate::channel::{self, Area, Link};
use crate::forward::{decode, encode, kind, op, Reason, MAX_RECORD};
use crate::progmem::ProgramMemory;
use crate::real;
use crate::state::{self, State};

/// Set in the keeper: every interposed call passes straight through.
pub static IN_KEEPER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set while the library forks the keeper: its own fork must not run the
/// state lock's fork handlers (it holds that lock).
pub static FORKING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// In the program: forks the keeper with the engine. Returns this
/// process's connection, the keeper's address and the descriptor table.
/// `attach` runs with the state lock still held, so that a thread that was
/// waiting for it finds the process attached, never an empty state.
pub(crate) fn handoff(
    reason: Reason,
    attach: impl FnOnce(c_int, String, HashMap<c_int, ObjectKey>),
) -> Result<(), c_int> {
    let mut guard = state::lock_for_handoff();
    let Some(st) = guard.as_mut() else {
        return Err(libc::ENODEV);
    };
    let table = st.program_fds();
    let (mine, theirs) = real::seqpacket_pair()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!("softvfio-keeper-{}-{nanos}", std::process::id());
    let listener = match real::listen_abstract(&name) {
        Ok(l) => l,
        Err(e) => {
            real::close_own(mine);
            real::close_own(theirs);
            return Err(e);
        }
    };
    let program = std::process::id() as i32;
    // The device threads stop here and start again in the keeper: a fork
    // copies no thread, and one still running here would consume the
    // program's signals for the engine copy left behind.
    EventfdWatcher::pause_all();
    FORKING.store(true, Ordering::SeqCst);
    let middle = real::fork();
    if middle == 0 {
        if real::fork() != 0 {
            real::exit_now(0);
        }
        real::close_own(mine);
        let st = state::take_locked(&mut guard);
        drop(guard);
        FORKING.store(false, Ordering::SeqCst);
        if let Some(st) = st {
            serve(st, theirs, listener, program, reason);
        }
        real::exit_now(0);
    }
    FORKING.store(false, Ordering::SeqCst);
    real::close_own(theirs);
    real::close_own(listener);
    if middle < 0 {
        let e = real::errno();
        real::close_own(mine);
        EventfdWatcher::resume_all();
        return Err(e);
    }
    EventfdWatcher::forget_all();
    real::wait_child(middle);
    // The engine's copy here is stale from now on: never used again, and
    // never dropped (its drop would release pins the keeper now owns).
    if let Some(mut st) = state::take_locked(&mut guard) {
        st.close_claims();
        std::mem::forget(st);
    }
    attach(mine, name, table);
    drop(guard);
    Ok(())
}

/// The caller being served, for the memory calls of its pins.
static CURRENT: Mutex<Option<(i32, Link)>> = Mutex::new(None);

/// munlocks of a process's pages that another process's unmap left idle
/// (process, address, length), run by that process at its next call, before
/// the call itself; dropped at its exit or exec (its locks go with its
/// address space).
static DEFERRED_MUNLOCKS: Mutex<Vec<(i32, u64, u64)>> = Mutex::new(Vec::new());

/// madvise/mlock/munlock run by process `pid` at the keeper's request,
/// while that process waits in its call. While it does not, a munlock is
/// deferred to its next call ([`DEFERRED_MUNLOCKS`]) and the others are
/// refused (EAGAIN).
struct ClientSyscalls {
    pid: i32,
}

/// `real::mm_call`'s number of munlock.
const MM_MUNLOCK: u64 = 3;

impl ClientSyscalls {
    fn run(&self, call: u64, addr: u64, len: u64, arg: u64) -> Result<(), i32> {
        let cur = CURRENT.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some((_, link)) = cur.filter(|(p, _)| *p == self.pid) else {
            if call == MM_MUNLOCK {
                DEFERRED_MUNLOCKS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((self.pid, addr, len));
                return Ok(());
            }
            return Err(libc::EAGAIN);
        };
        link.send(&encode(&[kind::MM, call, addr, len, arg], &[]), None)?;
        let mut buf = [0u8; 64];
        let n = link.recv(&mut buf)?;
        match decode(&buf[..n]) {
            Some((w, _)) if w[0] == op::MM_DONE => match w[1] {
                0 => Ok(()),
                e => Err(e as i32),
            },
            _ => Err(libc::EIO),
        }
    }
}

/// The munlocks deferred for `pid`, taken out of the list.
fn take_deferred(pid: i32) -> Vec<(u64, u64)> {
    let mut all = DEFERRED_MUNLOCKS.lock().unwrap_or_else(|e| e.into_inner());
    let mine = all
        .iter()
        .filter(|d| d.0 == pid)
        .map(|d| (d.1, d.2))
        .collect();
    all.retain(|d| d.0 != pid);
    mine
}

/// Runs the munlocks deferred for `pid`, which is waiting in its call.
fn run_deferred(pid: i32) {
    for (addr, len) in take_deferred(pid) {
        // An error: the process unmapped part of the range since (munlock
        // stops at the hole); what is left stays locked until it exits.
        let _ = ClientSyscalls { pid }.run(MM_MUNLOCK, addr, len, 0);
    }
}

impl MmSyscalls for ClientSyscalls {
    fn madvise(&self, addr: u64, len: u64, advice: i32) -> Result<(), i32> {
        self.run(1, addr, len, advice as u64)
    }
    fn mlock(&self, addr: u64, len: u64) -> Result<(), i32> {
        self.run(2, addr, len, 0)
    }
    fn munlock(&self, addr: u64, len: u64) -> Result<(), i32> {
        self.run(3, addr, len, 0)
    }
    fn calls_are_costly(&self) -> bool {
        // Each call is a round trip to the caller: a small pin skips the
        // populate when pagemap shows it would do nothing.
        true
    }
}

/// The descriptors of the caller: asked to the caller; eventfds taken with
/// `pidfd_getfd`.
struct ClientFds {
    link: Link,
}

impl ProgramFds for ClientFds {
    fn target(&mut self, fd: c_int) -> FdTarget {
        let ask = || -> Result<FdTarget, c_int> {
            self.link
                .send(&encode(&[kind::FDQ, fd as u64], &[]), None)?;
            let mut buf = [0u8; 64];
            let n = self.link.recv(&mut buf)?;
            match decode(&buf[..n]) {
                Some((w, _)) if w[0] == op::FD_ANSWER => Ok(match w[1] {
                    2 => FdTarget::Object(w[2]),
                    1 => FdTarget::Foreign,
                    _ => FdTarget::NotOpen,
                }),
                _ => Err(libc::EIO),
            }
        };
        ask().unwrap_or(FdTarget::NotOpen)
    }

    fn duplicate(&mut self, fd: c_int) -> Result<std::os::fd::OwnedFd, c_int> {
        real::pidfd_getfd(self.link.pidfd, fd)
    }
}

/// Which memory a process's calls use.
enum Memory {
    /// The program's own backend (the hand-off process): the keeper's copy
    /// until moved.
    Program(Arc<ProgramMemory>),
    /// A process that joined later (a forked child, a new image).
    Host(Arc<HostMemory>),
}

impl Memory {
    fn user(&self) -> Arc<dyn UserMemory> {
        match self {
            Memory::Program(p) => p.clone(),
            Memory::Host(h) => h.clone(),
        }
    }

    /// The backend of the live address space, if it is one.
    fn host(&self) -> Option<&HostMemory> {
        match self {
            Memory::Program(p) if p.is_moved() => Some(p.host()),
            Memory::Program(_) => None,
            Memory::Host(h) => Some(h),
        }
    }

    fn of_pid(pid: i32) -> Self {
        let m = HostMemory::for_pid(pid, Arc::new(ClientSyscalls { pid })).with_pin_threads(1);
        Memory::Host(m.into_shared())
    }
}

struct Proc {
    conn: Option<c_int>,
    pidfd: c_int,
    mem: Memory,
    /// References held by this process's descriptors, per object.
    keys: HashMap<ObjectKey, usize>,
    /// An exec is under way: the objects of the descriptors it closes.
    exec_closing: Option<Vec<ObjectKey>>,
    /// Sanitized: this image's index in the sanitizer's process list
    /// (noted at its first call; a new one after an exec).
    image: Option<u32>,
    /// It said it exits (`exit`/`_exit`): its end was an exit, not a
    /// signal (the keeper, not its parent, never learns the status).
    exiting: bool,
}

struct Keeper {
    st: State,
    listener: c_int,
    procs: HashMap<i32, Proc>,
    /// Connections by descriptor: the process, once it said hello.
    conns: HashMap<c_int, Option<i32>>,
    /// Forks between FORK_PREPARE and the child's hello or the parent's
    /// FORK_DONE: the references the child holds.
    forks: HashMap<u64, (HashMap<ObjectKey, usize>, Option<i32>)>,
    /// The shared areas of connections that set one up (`channel`).
    areas: HashMap<c_int, Arc<Area>>,
    /// How long each side spins (`channel::spin_policy`), and when that
    /// was last decided.
    spin_ns: u32,
    spin_decided: std::time::Instant,
    /// The check before each call of which processes exited, with its
    /// buffers kept from call to call.
    exit_check: ExitCheck,
}

/// The keeper's life: never returns.
fn serve(mut st: State, conn: c_int, listener: c_int, program: i32, reason: Reason) -> ! {
    IN_KEEPER.store(true, Ordering::SeqCst);
    let table = st.program_fds();
    st.drop_program_fds();
    close_program_files(&[conn, listener], &st.claim_fds());
    // The engine's eventfds came with the fork (same numbers, and
    // `close_program_files` leaves eventfds open): their watchers run here
    // from now on.
    EventfdWatcher::resume_all();
    real::prctl(libc::PR_SET_NAME, c"softvfio-keeper".as_ptr() as u64);
    die_with_run();
    let mut keys = HashMap::new();
    for key in table.values() {
        *keys.entry(*key).or_insert(0) += 1;
    }
    let own = st.own_memory().clone();
    if reason == Reason::Fork {
        own.move_to(program, Arc::new(ClientSyscalls { pid: program }));
    }
    let pidfd = real::pidfd_open(program).unwrap_or(-1);
    // The program's entry, if its calls before the hand-off noted one.
    let image = st
        .own_image()
        .filter(|(p, _)| *p == program)
        .map(|(_, i)| i);
    let mut k = Keeper {
        st,
        listener,
        procs: HashMap::new(),
        conns: HashMap::from([(conn, Some(program))]),
        forks: HashMap::new(),
        areas: HashMap::new(),
        spin_ns: channel::spin_policy(),
        spin_decided: std::time::Instant::now(),
        exit_check: ExitCheck::default(),
    };
    k.procs.insert(
        program,
        Proc {
            conn: Some(conn),
            pidfd,
            mem: Memory::Program(own),
            keys,
            exec_closing: None,
            image,
            exiting: false,
        },
    );
    k.run();
    // What the end releases is no process's call.
    softvfio::sanitizer::set_current_process(None);
    state::report_and_finish(&mut k.st);
    real::exit_now(0)
}

/// Under `softvfio run` (the keeper's parent once the middle process is
/// gone): die with it.
fn die_with_run() {
    let Some(top) = std::env::var("SOFTVFIO_PRELOAD_TOP")
        .ok()
        .and_then(|t| t.parse::<u32>().ok())
    else {
        return;
    };
    for _ in 0..200 {
        if std::os::unix::process::parent_id() == top {
            real::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64);
            if std::os::unix::process::parent_id() != top {
                real::exit_now(0);
            }
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The program's descriptors the keeper inherited: pipes and sockets would
/// keep the program's readers waiting for an end of file, so they go
/// (stdin and stdout become /dev/null; stderr stays for the report).
/// Files of the engine (eventfds it holds, /proc files, memfds) stay.
fn close_program_files(keep: &[c_int], claims: &[c_int]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<c_int> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd == 2 || keep.contains(&fd) || claims.contains(&fd) {
            continue;
        }
        let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
            continue;
        };
        let t = target.to_string_lossy();
        if fd <= 1 {
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                use std::os::fd::AsRawFd;
                real::dup2_own(null.as_raw_fd(), fd);
            }
        } else if t.starts_with("pipe:") || t.starts_with("socket:") || t.starts_with("/dev/pts") {
            real::close_own(fd);
        }
    }
}

impl Keeper {
    fn run(&mut self) {
        let mut buf = vec![0u8; MAX_RECORD];
        // Rounds with no process left but a fork whose child was never
        // heard of (its parent died between the fork and saying so).
        let mut idle = 0;
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        let mut pids: Vec<i32> = Vec::new();
        // A request was served from an area last round: spin for the next
        // one before anything else (a program's calls come back to back).
        let mut busy = false;
        loop {
            if self.procs.is_empty() {
                if self.forks.is_empty() || idle >= 2 {
                    return;
                }
                idle += 1;
            }
            self.refresh_spin();
            // Sleep in poll only with nothing waiting in an area, and
            // with every area saying so (the callers ring the doorbell).
            let mut timeout = 0;
            let mut asleep = false;
            let waiting = self.any_pending() || (busy && self.spin_for_request());
            if !waiting {
                self.set_asleep(true);
                asleep = true;
                if !self.any_pending() {
                    timeout = 1000;
                }
            }
            // One poll: processes' pidfds first, then the connections.
            pfds.clear();
            pids.clear();
            for (pid, p) in &self.procs {
                pfds.push(pollin(p.pidfd));
                pids.push(*pid);
            }
            pfds.push(pollin(self.listener));
            for c in self.conns.keys() {
                pfds.push(pollin(*c));
            }
            let polled = real::poll(&mut pfds, timeout);
            if asleep {
                self.set_asleep(false);
            }
            if polled.is_err() {
                return;
            }
            // Exits first (see the invariants).
            for (i, pid) in pids.iter().enumerate() {
                if pfds[i].fd < 0 || pfds[i].revents != 0 {
                    self.process_gone(*pid);
                }
            }
            for p in &pfds[pids.len()..] {
                if p.revents == 0 {
                    continue;
                }
                if p.fd == self.listener {
                    if let Ok(c) = real::accept(self.listener) {
                        if real::peer_is_same_user(c) {
                            self.conns.insert(c, None);
                        } else {
                            real::close_own(c);
                        }
                    }
                } else if self.conns.contains_key(&p.fd) {
                    self.serve_conn(p.fd, &mut buf);
                }
            }
            // Then the requests waiting in areas (exits were seen above).
            busy = false;
            let ready: Vec<c_int> = self
                .areas
                .iter()
                .filter(|(_, a)| a.for_keeper())
                .map(|(c, _)| *c)
                .collect();
            for conn in ready {
                if self.areas.contains_key(&conn) {
                    self.serve_area(conn, &mut buf);
                    busy = true;
                }
            }
        }
    }

    /// Whether a request waits in any area.
    fn any_pending(&self) -> bool {
        self.areas.values().any(|a| a.for_keeper())
    }

    /// Spins up to the spinning policy's time for a request in an area.
    fn spin_for_request(&self) -> bool {
        if self.spin_ns == 0 {
            return false;
        }
        let ns = self.spin_ns.min(channel::IDLE_SPIN_NS);
        let spin = std::time::Duration::from_nanos(u64::from(ns));
        let t0 = std::time::Instant::now();
        loop {
            for _ in 0..16 {
                if self.any_pending() {
                    return true;
                }
                std::hint::spin_loop();
            }
            if t0.elapsed() >= spin {
                return false;
            }
        }
    }

    fn set_asleep(&self, asleep: bool) {
        for a in self.areas.values() {
            a.set_keeper_asleep(asleep);
        }
    }

    /// Decides again, at most every 250 ms, whether the sides spin.
    fn refresh_spin(&mut self) {
        if self.spin_decided.elapsed() < std::time::Duration::from_millis(250) {
            return;
        }
        self.spin_decided = std::time::Instant::now();
        self.spin_ns = channel::spin_policy();
        for a in self.areas.values() {
            a.set_spin(self.spin_ns);
        }
    }

    /// The keeper's end of connection `conn`.
    fn link(&self, conn: c_int) -> Link {
        let pidfd = self
            .conns
            .get(&conn)
            .copied()
            .flatten()
            .and_then(|pid| self.procs.get(&pid))
            .map_or(-1, |p| p.pidfd);
        Link {
            sock: conn,
            area: self.areas.get(&conn).cloned(),
            pidfd,
        }
    }

    /// Forgets and closes connection `conn` (and unmaps its area).
    fn close_conn(&mut self, conn: c_int) {
        self.conns.remove(&conn);
        self.areas.remove(&conn);
        real::close_own(conn);
    }

    /// Sanitized: the calls served from now on (and what they release)
    /// are process `pid`'s image's, for its section of the report.
    fn enter_image(&mut self, pid: i32) {
        let Some(s) = self.st.sanitizer().cloned() else {
            return;
        };
        let image = self.procs.get_mut(&pid).map(|p| {
            *p.image
                .get_or_insert_with(|| s.note_process(pid, crate::sanitize::program_of(pid)))
        });
        softvfio::sanitizer::set_current_process(image);
    }

    fn process_gone(&mut self, pid: i32) {
        // What its death releases is no call of it (as in trace mode).
        softvfio::sanitizer::set_current_process(None);
        let Some(p) = self.procs.remove(&pid) else {
            return;
        };
        if let Some(s) = self.st.sanitizer() {
            s.note_process_end(
                pid,
                if p.exiting {
                    // The status is its parent's to read; 0 stands for
                    // "an exit" (the report shows only kills).
                    softvfio::sanitizer::ProcessEnd::Exited(0)
                } else {
                    softvfio::sanitizer::ProcessEnd::KilledBySomeSignal
                },
            );
        }
        crate::sanitize::forget_caller(pid);
        take_deferred(pid);
        if let Some(h) = p.mem.host() {
            h.retire();
        }
        // Its files are closed by its death: what they held last is what
        // the program left open (the end report lists it, as trace mode's).
        let none_left = self.procs.is_empty() && self.forks.is_empty();
        self.st.unhold_at_death(&p.keys, none_left);
        if let Some(c) = p.conn {
            self.close_conn(c);
        }
        if p.pidfd >= 0 {
            real::close_own(p.pidfd);
        }
        // A fork whose child never said hello: its references go with it.
        let orphan: Vec<u64> = self
            .forks
            .iter()
            .filter(|(_, (_, child))| *child == Some(pid))
            .map(|(t, _)| *t)
            .collect();
        for t in orphan {
            if let Some((keys, _)) = self.forks.remove(&t) {
                let none_left = self.procs.is_empty() && self.forks.is_empty();
                self.st.unhold_at_death(&keys, none_left);
            }
        }
    }

    fn drop_keys(&mut self, keys: HashMap<ObjectKey, usize>) {
        for (key, n) in keys {
            for _ in 0..n {
                self.st.unhold(key);
            }
        }
    }

    /// The exec of `pid` happened: the old image's memory is kept as
    /// Linux keeps its pinned pages, the close-on-exec descriptors go, and
    /// the new image's memory is a new address space.
    fn exec_done(&mut self, pid: i32) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        let Some(closing) = p.exec_closing.take() else {
            return;
        };
        crate::sanitize::forget_caller(pid);
        take_deferred(pid);
        // The descriptors the exec closes are the old image's.
        let old_image = p.image.take();
        if self.st.sanitizer().is_some() {
            softvfio::sanitizer::set_current_process(old_image);
        }
        if let Some(h) = p.mem.host() {
            h.commit_kept_pages();
            h.retire();
        }
        p.mem = Memory::of_pid(pid);
        for key in closing {
            if let Some(n) = p.keys.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    p.keys.remove(&key);
                }
                self.st.unhold(key);
            }
        }
    }

    fn serve_conn(&mut self, conn: c_int, buf: &mut [u8]) {
        let got = real::recv_record(conn, buf, true);
        let (n, passed) = match got {
            Ok((n, fd)) if n > 0 => (n, fd),
            _ => {
                // End of stream: the process exec'd (its connection was
                // close-on-exec) or exited.
                let pid = self.conns.get(&conn).copied().flatten();
                self.close_conn(conn);
                if let Some(pid) = pid {
                    if let Some(p) = self.procs.get_mut(&pid) {
                        if p.conn == Some(conn) {
                            p.conn = None;
                        }
                    }
                    self.exec_done(pid);
                }
                return;
            }
        };
        self.serve_record(conn, &buf[..n], passed, false);
    }

    /// A request waiting in the area of `conn`.
    fn serve_area(&mut self, conn: c_int, buf: &mut [u8]) {
        // Waiting there already: taken at once.
        if let Ok(n) = self.link(conn).recv(buf) {
            self.serve_record(conn, &buf[..n], None, true);
        }
    }

    /// Connection `conn` sets up its shared area (`passed`, a memfd).
    fn set_up_area(&mut self, conn: c_int, passed: Option<c_int>) {
        let area = match passed {
            Some(fd) => {
                let a = Area::accept(fd);
                real::close_own(fd);
                a
            }
            None => Err(libc::EINVAL),
        };
        match area {
            Ok(a) => {
                a.set_spin(self.spin_ns);
                self.areas.insert(conn, Arc::new(a));
                let _ = reply(conn, 0, 0, 0, None);
            }
            Err(e) => {
                let _ = reply(conn, 0, e, 0, None);
            }
        }
    }

    /// One record of connection `conn` (received on its socket with
    /// descriptor `passed`, or taken from its area: `from_area`). The
    /// call's questions and its answer go back the way it came.
    fn serve_record(&mut self, conn: c_int, rec: &[u8], passed: Option<c_int>, from_area: bool) {
        let known = self.conns.get(&conn).copied().flatten().is_some();
        if known && matches!(decode(rec), Some((w, _)) if w[0] == op::CHANNEL) {
            return self.set_up_area(conn, passed);
        }
        if let Some(fd) = passed {
            real::close_own(fd);
        }
        // A doorbell (one byte) or garbage: nothing to serve.
        let Some((w, tail)) = decode(rec) else {
            return;
        };
        let tail = tail.to_vec();

        let pid = match self.conns.get(&conn).copied().flatten() {
            Some(p) => p,
            None => match self.hello(conn, &w) {
                Some(v) => {
                    let _ = reply(conn, v, 0, 0, None);
                    return;
                }
                None => {
                    self.close_conn(conn);
                    return;
                }
            },
        };
        // Every process that exited since the round's poll is gone before
        // this call is served, not only the caller: a caller that waited
        // for another process's exit (waitpid) must find that process's
        // files released, as Linux closed them before the exit could be
        // waited for; served first, its close would find them still held
        // by the dead process, whose later release would count them as
        // left open (a leak the program never made). The caller itself
        // killed since then: its call never happened (as a store that a
        // SIGKILL beat), and it must not start a device's DMA from memory
        // that is going away.
        // Taken out while the processes found are released (their release
        // needs the keeper); put back with its buffers for the next call.
        let mut check = std::mem::take(&mut self.exit_check);
        let exited = check.run(self.procs.iter().map(|(pid, p)| (*pid, p.pidfd)));
        for gone in exited {
            self.process_gone(*gone);
        }
        let caller_gone = exited.contains(&pid);
        self.exit_check = check;
        if caller_gone {
            return;
        }
        let mut link = self.link(conn);
        if !from_area {
            link.area = None;
        }
        *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some((pid, link.clone()));
        let _inside = crate::Inside::enter();
        let mut out = Vec::new();
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.request(pid, conn, &w, &tail, &mut out)
        }));
        *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let (val, err, key, fd) = match res {
            Ok(Ok((v, k, fd))) => (v, 0, k, fd),
            Ok(Err(e)) => (0, e, 0, None),
            Err(_) => (0, libc::EIO, 0, None),
        };
        let _ = link.send(
            &encode(&[kind::REPLY, val as u64, err as u64, key], &out),
            fd,
        );
        if let Some(fd) = fd {
            real::close_own(fd);
        }
    }

    /// A new connection's first record: which process it is. The value
    /// answered (the keeper's pid, 0: unknown process), or `None` to drop
    /// the connection.
    fn hello(&mut self, conn: c_int, w: &[u64; 8]) -> Option<i64> {
        let pid = real::peer_pid(conn)?;
        let me = i64::from(std::process::id());
        match w[0] {
            op::HELLO_FORK => {
                if let Some((keys, _)) = self.forks.remove(&w[1]) {
                    self.procs.insert(
                        pid,
                        Proc {
                            conn: Some(conn),
                            pidfd: real::pidfd_open(pid).unwrap_or(-1),
                            mem: Memory::of_pid(pid),
                            keys,
                            exec_closing: None,
                            image: None,
                            exiting: false,
                        },
                    );
                } else {
                    // The parent's FORK_DONE came first.
                    let p = self.procs.get_mut(&pid)?;
                    if let Some(old) = p.conn.replace(conn) {
                        self.close_conn(old);
                    }
                }
                self.conns.insert(conn, Some(pid));
                Some(me)
            }
            op::HELLO_EXEC => {
                if !self.procs.contains_key(&pid) {
                    return Some(0);
                }
                self.exec_done(pid);
                let p = self.procs.get_mut(&pid)?;
                if let Some(old) = p.conn.replace(conn) {
                    self.close_conn(old);
                }
                self.conns.insert(conn, Some(pid));
                Some(me)
            }
            _ => None,
        }
    }

    /// One call of process `pid`: (value, new object key, its descriptor).
    fn request(
        &mut self,
        pid: i32,
        conn: c_int,
        w: &[u64; 8],
        tail: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(i64, u64, Option<c_int>), c_int> {
        let me = i64::from(std::process::id());
        // Before the call: the munlocks another process's unmap left for
        // this one (so that its VmLck, and a pin of the same pages by this
        // call, see them done).
        run_deferred(pid);
        self.enter_image(pid);
        match w[0] {
            op::HELLO_ROOT => Ok((me, 0, None)),
            op::OPEN => {
                // The path, then (sanitized) a NUL and the call site.
                let (path, site) = match tail.iter().position(|b| *b == 0) {
                    Some(i) => (&tail[..i], crate::sanitize::site_of(pid, &tail[i + 1..])),
                    None => (tail, None),
                };
                let path = std::str::from_utf8(path).map_err(|_| libc::EINVAL)?;
                let user = self.procs.get(&pid).ok_or(libc::EIO)?.mem.user();
                let st = &mut self.st;
                match with_call_site(site.as_ref(), || st.open_for(path, user))? {
                    None => Ok((0, 0, None)),
                    Some(key) => self.new_object(pid, key, w[1] != 0),
                }
            }
            op::IOCTL => {
                let p = self.procs.get(&pid).ok_or(libc::EIO)?;
                let user = p.mem.user();
                // The link of the call being served (CURRENT's).
                let link = CURRENT
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .map_or_else(|| self.link(conn), |(_, l)| l);
                let mut fds = ClientFds { link };
                // The caller's call site (sanitized), resolved against its
                // own image.
                let site = crate::sanitize::site_of(pid, tail);
                let st = &mut self.st;
                match with_call_site(site.as_ref(), || {
                    st.ioctl_for(w[1], w[2], w[3], user.as_ref(), &mut fds)
                })? {
                    Routed::Value(v) => Ok((v, 0, None)),
                    Routed::NewObject(key) => self.new_object(pid, key, true),
                    // The caller writes the descriptor's number at `fd_at`.
                    Routed::NewFileAt { key, fd_at } => {
                        let (_, key, fd) = self.new_object(pid, key, true)?;
                        Ok((fd_at as i64, key, fd))
                    }
                }
            }
            op::READ | op::WRITE => {
                let user = self.procs.get(&pid).ok_or(libc::EIO)?.mem.user();
                match self
                    .st
                    .stream_rw_for(w[1], user.as_ref(), w[2], w[3], w[0] == op::WRITE)
                {
                    Some(r) => Ok((r?, 0, None)),
                    None => Ok((0, 1, None)),
                }
            }
            op::PREAD | op::PWRITE => {
                let user = self.procs.get(&pid).ok_or(libc::EIO)?.mem.user();
                let v =
                    self.st
                        .rw_for(w[1], user.as_ref(), w[2], w[3], w[4], w[0] == op::PWRITE)?;
                Ok((v, 0, None))
            }
            op::UNREF => {
                let p = self.procs.get_mut(&pid).ok_or(libc::EIO)?;
                if let Some(n) = p.keys.get_mut(&w[1]) {
                    *n -= 1;
                    if *n == 0 {
                        p.keys.remove(&w[1]);
                    }
                    self.st.unhold(w[1]);
                }
                Ok((0, 0, None))
            }
            op::REF => {
                if !self.st.has_object(w[1]) {
                    return Err(libc::EBADF);
                }
                let p = self.procs.get_mut(&pid).ok_or(libc::EIO)?;
                *p.keys.entry(w[1]).or_insert(0) += 1;
                self.st.hold(w[1]);
                Ok((0, 0, None))
            }
            op::FORK_PREPARE => {
                let keys = self.procs.get(&pid).ok_or(libc::EIO)?.keys.clone();
                // The child proves it is the fork's child by this token:
                // random, so another process cannot take its place.
                let token = loop {
                    let t = real::random_u64().ok_or(libc::EIO)?;
                    if t != 0 && !self.forks.contains_key(&t) {
                        break t;
                    }
                };
                for (key, n) in &keys {
                    for _ in 0..*n {
                        self.st.hold(*key);
                    }
                }
                self.forks.insert(token, (keys, None));
                Ok((token as i64, 0, None))
            }
            op::FORK_DONE => {
                let child = w[2] as i64;
                if child <= 0 {
                    if let Some((keys, _)) = self.forks.remove(&w[1]) {
                        self.drop_keys(keys);
                    }
                } else if let Some((keys, _)) = self.forks.remove(&w[1]) {
                    // The child has not said hello yet: known from now on
                    // (its exit releases its references even if it never
                    // does), its hello finds it.
                    let child = child as i32;
                    self.procs.insert(
                        child,
                        Proc {
                            conn: None,
                            pidfd: real::pidfd_open(child).unwrap_or(-1),
                            mem: Memory::of_pid(child),
                            keys,
                            exec_closing: None,
                            image: None,
                            exiting: false,
                        },
                    );
                }
                Ok((0, 0, None))
            }
            op::EXEC_PREPARE => {
                let closing: Vec<u64> = tail
                    .chunks_exact(8)
                    .filter_map(|c| c.try_into().ok().map(u64::from_ne_bytes))
                    .collect();
                let p = self.procs.get_mut(&pid).ok_or(libc::EIO)?;
                if let Some(h) = p.mem.host() {
                    h.prepare_kept_pages();
                }
                p.exec_closing = Some(closing);
                Ok((0, 0, None))
            }
            op::EXEC_FAILED => {
                let p = self.procs.get_mut(&pid).ok_or(libc::EIO)?;
                p.exec_closing = None;
                if let Memory::Program(own) = &p.mem {
                    own.move_to(pid, Arc::new(ClientSyscalls { pid }));
                }
                Ok((0, 0, None))
            }
            op::MMIO => {
                let model = self.st.model_of(w[1]).ok_or(libc::EBADF)?;
                let len = (w[4] as usize).min(64);
                let r = if w[5] != 0 {
                    let data = tail.get(..len).ok_or(libc::EINVAL)?;
                    model.mapped_write(w[2] as u32, w[3], data)
                } else {
                    let mut data = [0u8; 64];
                    let r = model.mapped_read(w[2] as u32, w[3], &mut data[..len]);
                    if r.is_ok() {
                        *out = data[..len].to_vec();
                    }
                    r
                };
                Ok((i64::from(r.is_err()), 0, None))
            }
            op::MMAP => {
                let m = self.st.mmap(w[1], w[2], w[3], w[4] != 0)?;
                Ok((i64::from(m.region), m.offset, None))
            }
            op::CDEV => {
                let node = match w[2] {
                    op::NODE_OBJECT => self.st.node_of_object(w[1]),
                    op::NODE_GROUP => u32::try_from(w[1])
                        .ok()
                        .and_then(|id| self.st.node_of_group(id)),
                    _ => None,
                };
                let count = self.st.cdev_count() as u64;
                let val = node.map_or(0, |(major, minor)| {
                    ((i64::from(major) << 32) | i64::from(minor)) + 1
                });
                Ok((val, count, None))
            }
            op::VMLCK => {
                let user = self.procs.get(&pid).ok_or(libc::EIO)?.mem.user();
                let (ours_kb, accounted_kb) = state::vmlck_of(user.as_ref());
                Ok((ours_kb as i64, accounted_kb, None))
            }
            op::STALE => {
                let cause = crate::forward::stale_cause(w[3]).ok_or(libc::EINVAL)?;
                let site = crate::sanitize::site_of(pid, tail);
                let owns = self.st.memory_going_away_of(site, w[1], w[2], cause);
                Ok((i64::from(owns), 0, None))
            }
            op::EXITING => {
                let others = self.procs.len() > 1;
                let p = self.procs.get_mut(&pid).ok_or(libc::EIO)?;
                p.exiting = true;
                if let Some(h) = p.mem.host().filter(|_| others) {
                    h.keep_pinned_pages();
                }
                Ok((0, 0, None))
            }
            _ => Err(libc::EINVAL),
        }
    }

    /// A new object for process `pid`: a descriptor to pass (an eventfd
    /// standing for it), counted as that process's.
    fn new_object(
        &mut self,
        pid: i32,
        key: ObjectKey,
        cloexec: bool,
    ) -> Result<(i64, u64, Option<c_int>), c_int> {
        match real::new_object_fd(cloexec) {
            Ok(fd) => {
                if let Some(p) = self.procs.get_mut(&pid) {
                    *p.keys.entry(key).or_insert(0) += 1;
                }
                Ok((1, key, Some(fd)))
            }
            Err(e) => {
                self.st.unhold(key);
                Err(e)
            }
        }
    }
}

/// The keeper's check, before each call it serves, of which known
/// processes have exited: their pidfd is readable. Linux makes it so
/// before a `waitpid` of the process can return, and closes the process's
/// files before that. A process without a pidfd (-1) is left to the
/// round's poll.
///
/// It runs before every call, so its buffers stay from one run to the
/// next: once they have grown to the number of processes, a run
/// allocates nothing.
#[derive(Default)]
struct ExitCheck {
    /// The processes polled, in the order of `polled`.
    pids: Vec<i32>,
    polled: Vec<libc::pollfd>,
    exited: Vec<i32>,
}

impl ExitCheck {
    /// Which of the processes `(pid, pidfd)` have exited.
    fn run(&mut self, procs: impl IntoIterator<Item = (i32, c_int)>) -> &[i32] {
        self.pids.clear();
        self.polled.clear();
        self.exited.clear();
        for (pid, fd) in procs.into_iter().filter(|(_, fd)| *fd >= 0) {
            self.pids.push(pid);
            self.polled.push(pollin(fd));
        }
        if matches!(real::poll(&mut self.polled, 0), Ok(n) if n > 0) {
            let exited = self.pids.iter().zip(&self.polled);
            self.exited.extend(
                exited
                    .filter(|(_, pf)| pf.revents != 0)
                    .map(|(pid, _)| *pid),
            );
        }
        &self.exited
    }
}

fn pollin(fd: c_int) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn reply(conn: c_int, val: i64, err: c_int, key: u64, fd: Option<c_int>) -> Result<(), c_int> {
    real::send_record(
        conn,
        &encode(&[kind::REPLY, val as u64, err as u64, key], &[]),
        fd,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child process killed and waited for when dropped: a failed
    /// assertion leaves no `sleep` behind.
    struct Reaped(std::process::Child);

    impl Reaped {
        fn id(&self) -> u32 {
            self.0.id()
        }

        /// Ends the process now (it is waited for: its pid is gone).
        fn end(&mut self) {
            self.0.kill().expect("kill sleep");
            self.0.wait().expect("wait sleep");
        }
    }

    impl Drop for Reaped {
        fn drop(&mut self) {
            // Already ended, or ends here (errors: it had exited).
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A live process (`sleep`) and its pidfd, and the pid and pidfd of
    /// one that exited and was waited for (`true`; its pidfd opened
    /// before the wait, while its pid was still there to open).
    fn live_and_waited_for() -> (Reaped, c_int, i32, c_int) {
        let live = Reaped(
            std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .expect("spawn sleep"),
        );
        let mut done = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let live_fd = real::pidfd_open(live.id() as i32).expect("pidfd of sleep");
        let done_fd = real::pidfd_open(done.id() as i32).expect("pidfd of true");
        assert!(done.wait().expect("wait true").success());
        (live, live_fd, done.id() as i32, done_fd)
    }

    /// The check the keeper makes before each call: a process that was
    /// waited for (its files closed, as a parent's `waitpid` guarantees)
    /// is seen as exited at once, without waiting for the keeper's next
    /// poll; a live one is not. The parent's next call then finds the
    /// child's references released (the flaky "device still open" leak
    /// of `group_reopened_after_handoff_has_its_call_site`).
    #[test]
    fn a_process_waited_for_is_seen_exited_before_the_next_call() {
        let (mut live, live_fd, done_pid, done_fd) = live_and_waited_for();
        let live_pid = live.id() as i32;
        let procs = [(live_pid, live_fd), (done_pid, done_fd), (1, -1)];
        let mut check = ExitCheck::default();
        assert_eq!(check.run(procs), [done_pid]);
        assert_eq!(check.run(procs[..1].iter().copied()), [] as [i32; 0]);
        live.end();
        assert_eq!(check.run(procs[..1].iter().copied()), [live_pid]);
        real::close_own(live_fd);
        real::close_own(done_fd);
    }

    /// The check runs before every call the keeper serves: once its
    /// buffers have grown to the number of processes, a run allocates
    /// nothing (counted by the library's allocator on this thread),
    /// whether processes exited or not.
    #[test]
    fn the_exit_check_allocates_nothing_per_call() {
        let (mut live, live_fd, done_pid, done_fd) = live_and_waited_for();
        let procs = [(live.id() as i32, live_fd), (done_pid, done_fd)];
        let mut check = ExitCheck::default();
        assert_eq!(check.run(procs), [done_pid]);
        let before = real::allocations_on_this_thread();
        for _ in 0..100 {
            assert_eq!(check.run(procs).len(), 1);
            assert_eq!(check.run(procs[..1].iter().copied()).len(), 0);
        }
        assert_eq!(real::allocations_on_this_thread(), before);
        live.end();
        real::close_own(live_fd);
        real::close_own(done_fd);
    }
}
