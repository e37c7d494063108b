//! Eventfds handed to the engine by a program: interrupt triggers
//! (`VFIO_DEVICE_SET_IRQS`), the INTx unmask eventfd, ioeventfds
//! (`VFIO_DEVICE_IOEVENTFD`) and the low-power wakeup eventfd.
//!
//! The kernel takes a reference on the eventfd context (`eventfd_ctx_fdget`)
//! and keeps it after the program closes its descriptor. The engine does
//! the same with a descriptor of its own for the same eventfd: the front
//! end duplicates the program's descriptor (`pidfd_getfd` for a traced
//! program, `fcntl(F_DUPFD_CLOEXEC)` in the preload library) and the
//! duplicate is checked to be an eventfd here.
//!
//! Descriptors are closed with the raw system call, never through libc's
//! `close`: inside a program served by the preload library, libc's `close`
//! is the library's hook, which takes the session lock, and an eventfd may
//! be dropped on a watcher thread while another thread holds that lock.
//!
//! Invariants:
//! - an [`Eventfd`] always refers to an eventfd (checked at construction)
//!   and owns its descriptor;
//! - an [`EventfdWatcher`]'s thread has ended when `drop` returns, so a
//!   handler never runs after its watcher is gone;
//! - a watcher has at most one thread in a process, and a dropped watcher
//!   is never started again (`pause_all`/`resume_all` move the threads of
//!   an engine that a `fork` hands to another process).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use rustix::event::{poll, EventfdFlags, PollFd, PollFlags};

/// A program's eventfd, held by the engine.
#[derive(Debug)]
pub struct Eventfd {
    /// `ManuallyDrop`: closed by [`Drop`] with the raw system call.
    file: std::mem::ManuallyDrop<std::fs::File>,
}

impl Drop for Eventfd {
    fn drop(&mut self) {
        // The `File` is never used again after this, and `ManuallyDrop`
        // keeps it from closing the descriptor a second time.
        sys::close_owned(&self.file);
    }
}

/// The module's only unsafe operation.
#[allow(unsafe_code)]
mod sys {
    use std::os::fd::AsRawFd;

    /// Closes `file`'s descriptor with the raw system call; the caller
    /// never uses `file` again and does not drop it.
    pub(super) fn close_owned(file: &std::mem::ManuallyDrop<std::fs::File>) {
        // SAFETY: the descriptor is owned by the `Eventfd` being dropped
        // (from an `OwnedFd` or a fresh eventfd), which alone holds it and
        // never touches the `ManuallyDrop<File>` again.
        unsafe { rustix::io::close(file.as_raw_fd()) };
    }
}

impl Eventfd {
    /// Takes a descriptor the front end duplicated from the program. EINVAL
    /// when it is not an eventfd, as `eventfd_ctx_fdget` answers.
    pub fn from_owned(fd: OwnedFd) -> Result<Self, i32> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|_| libc::EINVAL)?;
        if link.as_os_str() != "anon_inode:[eventfd]" {
            return Err(libc::EINVAL);
        }
        Ok(Self {
            file: std::mem::ManuallyDrop::new(std::fs::File::from(fd)),
        })
    }

    /// A new eventfd of the engine's own (tests, tools).
    pub fn new() -> Result<Self, i32> {
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| e.raw_os_error())?;
        Ok(Self {
            file: std::mem::ManuallyDrop::new(std::fs::File::from(fd)),
        })
    }

    /// `eventfd_signal(ctx, 1)`: adds one to the counter. A counter at its
    /// maximum stays there (the kernel's eventfd_signal saturates too).
    pub fn signal(&self) {
        let _ = (&*self.file).write(&1u64.to_ne_bytes());
    }

    /// Reads and clears the counter: `Some(n)` when it was non-zero, `None`
    /// when it was zero (non-blocking descriptors) or on error.
    pub fn consume(&self) -> Option<u64> {
        let mut b = [0u8; 8];
        match (&*self.file).read(&mut b) {
            Ok(8) => Some(u64::from_ne_bytes(b)),
            _ => None,
        }
    }

    /// The kernel's identity of the eventfd (`eventfd-id` in fdinfo, Linux
    /// 6.2 and later): equal for every descriptor of one eventfd, in any
    /// process. `None` on kernels that do not show it.
    pub fn id(&self) -> Option<u64> {
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.file.as_raw_fd())).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("eventfd-id:"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// A second descriptor for the same eventfd.
    pub fn try_clone(&self) -> Result<Self, i32> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EMFILE))?;
        Ok(Self {
            file: std::mem::ManuallyDrop::new(file),
        })
    }
}

/// A program descriptor argument that should name an eventfd, resolved by
/// the front end before the request runs. Resolution errors are kept and
/// reported only where the kernel would look at the descriptor, so errno
/// order follows the kernel's.
#[derive(Debug)]
pub enum EventfdArg {
    /// A negative number (`-1` detaches in most requests).
    Negative(i32),
    /// An open eventfd.
    Fd(Eventfd),
    /// What `eventfd_ctx_fdget` would answer: EBADF (not open) or EINVAL
    /// (open, but not an eventfd).
    Error(i32),
}

impl EventfdArg {
    /// The eventfd, or the errno `eventfd_ctx_fdget` gives for this
    /// argument (EBADF for a negative number).
    pub fn take(self) -> Result<Eventfd, i32> {
        match self {
            EventfdArg::Fd(e) => Ok(e),
            EventfdArg::Negative(_) => Err(libc::EBADF),
            EventfdArg::Error(e) => Err(e),
        }
    }

    /// Is this a negative descriptor number?
    pub fn is_negative(&self) -> bool {
        matches!(self, EventfdArg::Negative(_))
    }
}

/// Runs a handler each time a program signals an eventfd (the kernel's
/// `virqfd`: INTx unmask eventfds and ioeventfds), on a thread of its own.
/// The counter is consumed before each call, so one call may stand for
/// several signals, as with the kernel's wait-queue callback.
///
/// A watcher outlives a `fork` of its process: the preload library's keeper
/// inherits the engine (and each watcher's eventfd, same descriptor number)
/// by `fork`, which copies no thread. [`EventfdWatcher::pause_all`] stops
/// every thread of this process before such a fork (so none holds a lock
/// the copy inherits, and none consumes a signal meant for the copy), and
/// [`EventfdWatcher::resume_all`] starts them again in whichever process
/// goes on with the engine.
pub struct EventfdWatcher {
    inner: Arc<WatcherInner>,
}

struct WatcherInner {
    name: String,
    fd: Eventfd,
    /// Called from one thread at a time (the one running thread); the
    /// mutex makes the handler shareable without requiring it be `Sync`.
    handler: std::sync::Mutex<Box<dyn Fn() + Send>>,
    /// The running thread, if any. Taken briefly, never across a join.
    running: std::sync::Mutex<Option<Running>>,
    /// Set once the watcher is dropped: never started again.
    dropped: AtomicBool,
}

struct Running {
    stop: Arc<AtomicBool>,
    wake: Eventfd,
    thread: JoinHandle<()>,
    /// The process the thread runs in: a process forked from it has a copy
    /// of this record but not the thread, which it must not join.
    pid: u32,
}

/// Every watcher made in this process (and inherited by a fork), for
/// [`EventfdWatcher::pause_all`] and [`EventfdWatcher::resume_all`]. Taken
/// only in `spawn` and those two, never by `drop` (a watcher may be dropped
/// on any thread at any time, and a fork must not copy this lock held).
static LIVE: std::sync::Mutex<Vec<std::sync::Weak<WatcherInner>>> =
    std::sync::Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<std::sync::Weak<WatcherInner>>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

impl WatcherInner {
    /// Starts the thread in this process unless one already runs here.
    fn start(self: &Arc<Self>) -> Result<bool, i32> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let me = std::process::id();
        if self.dropped.load(Ordering::Acquire) {
            return Ok(false);
        }
        if let Some(r) = running.as_ref() {
            if r.pid == me {
                return Ok(false);
            }
            // Inherited by fork: the thread is the parent's.
            if let Some(old) = running.take() {
                std::mem::forget(old.thread);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Eventfd::new()?;
        let wake_thread = wake.try_clone()?;
        let stop_thread = stop.clone();
        let this = self.clone();
        let thread = std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || watch(&this, &wake_thread, &stop_thread))
            .map_err(|_| libc::ENOMEM)?;
        *running = Some(Running {
            stop,
            wake,
            thread,
            pid: me,
        });
        Ok(true)
    }

    /// Stops the thread (joins it when it is this process's and not the
    /// caller).
    fn stop(&self) -> bool {
        let taken = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(r) = taken else {
            return false;
        };
        r.stop.store(true, Ordering::Release);
        r.wake.signal();
        // A handler that drops its own watcher must not join itself;
        // after a fork the thread is not in this process (joining would
        // wait for ever).
        if std::process::id() != r.pid {
            std::mem::forget(r.thread);
            return false;
        }
        if r.thread.thread().id() != std::thread::current().id() {
            let _ = r.thread.join();
        }
        true
    }
}

impl EventfdWatcher {
    /// Watches `fd` until dropped.
    pub fn spawn(
        name: &str,
        fd: Eventfd,
        handler: impl Fn() + Send + 'static,
    ) -> Result<Self, i32> {
        let inner = Arc::new(WatcherInner {
            name: name.to_owned(),
            fd,
            handler: std::sync::Mutex::new(Box::new(handler)),
            running: std::sync::Mutex::new(None),
            dropped: AtomicBool::new(false),
        });
        inner.start()?;
        let mut all = live();
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    /// Stops (and joins) the thread of every watcher running in this
    /// process, before a `fork` that hands the engine to another process.
    /// Signals arriving meanwhile stay in their eventfds. Returns how many
    /// were stopped.
    pub fn pause_all() -> usize {
        let all: Vec<Arc<WatcherInner>> = live().iter().filter_map(|w| w.upgrade()).collect();
        all.iter().filter(|w| w.stop()).count()
    }

    /// Starts a thread in this process for every live watcher that has
    /// none here (paused, or inherited by `fork`). Returns how many were
    /// started.
    pub fn resume_all() -> usize {
        let all: Vec<Arc<WatcherInner>> = live().iter().filter_map(|w| w.upgrade()).collect();
        all.iter().filter(|w| matches!(w.start(), Ok(true))).count()
    }

    /// Forgets every watcher of this process: the engine they belong to
    /// moved to another process and is never used here again.
    pub fn forget_all() {
        live().clear();
    }
}

fn watch(inner: &WatcherInner, wake: &Eventfd, stop: &AtomicBool) {
    let fd = &inner.fd;
    loop {
        let mut fds = [
            PollFd::new(&*fd.file, PollFlags::IN),
            PollFd::new(&*wake.file, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        let ready = fds[0].revents();
        if stop.load(Ordering::Acquire) {
            return;
        }
        if ready.intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL) {
            return;
        }
        if ready.contains(PollFlags::IN) {
            // The program's eventfd may be blocking: read only when poll
            // said it is readable (another reader may race us: then the
            // read blocks until the next signal, which is still correct).
            let mut b = [0u8; 8];
            if (&*fd.file).read(&mut b).is_ok() {
                let handler = inner.handler.lock().unwrap_or_else(|e| e.into_inner());
                handler();
            }
        }
    }
}

impl Drop for EventfdWatcher {
    fn drop(&mut self) {
        self.inner.dropped.store(true, Ordering::Release);
        self.inner.stop();
    }
}

impl std::fmt::Debug for EventfdWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventfdWatcher").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::{Duration, Instant};

    #[test]
    fn signal_adds_and_consume_clears() {
        let e = Eventfd::new().unwrap();
        assert_eq!(e.consume(), None);
        e.signal();
        e.signal();
        assert_eq!(e.consume(), Some(2));
        assert_eq!(e.consume(), None);
    }

    #[test]
    fn non_eventfd_is_einval() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(
            Eventfd::from_owned(OwnedFd::from(f)).unwrap_err(),
            libc::EINVAL
        );
    }

    #[test]
    fn id_is_shared_by_duplicates_only() {
        let a = Eventfd::new().unwrap();
        let b = Eventfd::new().unwrap();
        if a.id().is_none() {
            eprintln!("kernel shows no eventfd-id; nothing to check");
            return;
        }
        assert_eq!(a.id(), a.try_clone().unwrap().id());
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn duplicate_of_eventfd_accepted() {
        let e = Eventfd::new().unwrap();
        let dup = e.try_clone().unwrap();
        let back = Eventfd::from_owned(OwnedFd::from(dup.file.try_clone().unwrap())).unwrap();
        back.signal();
        assert_eq!(e.consume(), Some(1));
    }

    #[test]
    fn watcher_runs_handler_and_stops_on_drop() {
        let e = Eventfd::new().unwrap();
        let n = Arc::new(AtomicU32::new(0));
        let n2 = n.clone();
        let w = EventfdWatcher::spawn("test-watch", e.try_clone().unwrap(), move || {
            n2.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        e.signal();
        let t = Instant::now();
        while n.load(Ordering::SeqCst) == 0 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(n.load(Ordering::SeqCst), 1);
        drop(w);
        e.signal();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(n.load(Ordering::SeqCst), 1);
        // Nobody consumed the last signal.
        assert_eq!(e.consume(), Some(1));
    }

    /// A paused watcher leaves signals in its eventfd; resumed, it handles
    /// them (the keeper's restart after the hand-off's fork); a dropped one
    /// is never started again.
    #[test]
    fn pause_leaves_signals_and_resume_handles_them() {
        let e = Eventfd::new().unwrap();
        let n = Arc::new(AtomicU32::new(0));
        let n2 = n.clone();
        let w = EventfdWatcher::spawn("test-pause", e.try_clone().unwrap(), move || {
            n2.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        assert!(EventfdWatcher::pause_all() >= 1);
        e.signal();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(n.load(Ordering::SeqCst), 0);
        assert!(EventfdWatcher::resume_all() >= 1);
        let t = Instant::now();
        while n.load(Ordering::SeqCst) == 0 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(n.load(Ordering::SeqCst), 1);
        drop(w);
        EventfdWatcher::resume_all();
        e.signal();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert_eq!(e.consume(), Some(1));
    }
}
