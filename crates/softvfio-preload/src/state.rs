//! The softvfio session of this process: the platform, the open VFIO files,
//! and which descriptors stand for them.
//!
//! Every descriptor handed to the program is a real one (an eventfd per
//! object, see [`crate::real::new_object_fd`]); a table maps descriptor
//! numbers to session objects, with a count of descriptors per object, so
//! that `dup` shares an object and the last `close` releases it.

use std::collections::HashMap;
use std::ffi::c_int;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use softvfio::frontend::{FdTarget, FileObject, ObjectKey, ProgramFds, Routed, Session};
use softvfio::memory::host::HostMemory;
use softvfio::memory::{UserMemory, PAGE_SIZE};

use crate::progmem::ProgramMemory;
use softvfio::sanitizer::{with_call_site, CallSite, Sanitizer, StaleCause};
use softvfio::uapi::{self, Vfio};
use softvfio_platform::report::{self, FinalState, Leftovers};
use softvfio_platform::sanitize::ProcessMaps;
use softvfio_platform::{build, BuiltPlatform, Config};

use crate::claim::{self, Claim};
use crate::real;
use crate::streams;

/// Descriptors in the table, read without the lock: calls on other
/// descriptors skip the table while it is empty.
pub static TRACKED: AtomicUsize = AtomicUsize::new(0);

static STATE: Mutex<Option<State>> = Mutex::new(None);
/// The platform could not be built (bad configuration): said once.
static BROKEN: AtomicBool = AtomicBool::new(false);
/// The process whose atexit runs the end report (0: none yet). A forked
/// child inherits the registration but not the duty: it registers its own
/// when it opens VFIO files.
static REPORT_PID: AtomicU32 = AtomicU32::new(0);

/// This process's descriptor table as the session sees it.
struct OwnFds<'a>(&'a HashMap<c_int, ObjectKey>);

impl ProgramFds for OwnFds<'_> {
    fn target(&mut self, fd: c_int) -> FdTarget {
        match self.0.get(&fd) {
            Some(k) => FdTarget::Object(*k),
            None if fd >= 0 && real::fd_is_open(fd) => FdTarget::Foreign,
            None => FdTarget::NotOpen,
        }
    }

    fn duplicate(&mut self, fd: c_int) -> Result<std::os::fd::OwnedFd, c_int> {
        real::dup_own(fd)
    }
}

pub struct State {
    built: Arc<BuiltPlatform>,
    session: Session,
    mem: Arc<ProgramMemory>,
    fds: HashMap<c_int, ObjectKey>,
    refs: HashMap<ObjectKey, usize>,
    /// Groups this process owns among the run's processes: group id to the
    /// claim's descriptor (see [`crate::claim`]).
    claims: HashMap<u32, c_int>,
    /// The DMA sanitizer (`SOFTVFIO_SANITIZE`), and this process's file
    /// mappings for its call sites.
    sanitizer: Option<Arc<Sanitizer>>,
    maps: Option<ProcessMaps>,
    /// With the sanitizer: this process's entry in its process list
    /// (pid, index), noted at its first call, so that its history and
    /// leaks get a section of their own (as each of a fork's processes
    /// does once the keeper serves them).
    image: Option<(i32, u32)>,
    /// In the keeper: what processes left open when they died (their last
    /// references went with them), for the end report, and those objects.
    left_open: Leftovers,
    noted: std::collections::HashSet<ObjectKey>,
}

thread_local! {
    /// The state lock, held by the forking thread across `fork`.
    static FORK_GUARD: std::cell::RefCell<Option<MutexGuard<'static, Option<State>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Before `fork`: take the state lock, so that no other thread is inside
/// the engine when the address space is copied. The child has only the
/// forking thread; a lock another thread held at the fork would stay
/// locked in the child for ever (a multithreaded program that forks while
/// a thread is in a VFIO call would hang at its child's first VFIO call).
extern "C" fn before_fork() {
    if crate::keeper::FORKING.load(Ordering::SeqCst) {
        return;
    }
    let _ = std::panic::catch_unwind(|| {
        let guard = lock();
        FORK_GUARD.with(|g| *g.borrow_mut() = Some(guard));
    });
}

/// This process's id as [`own_pid`] last read it (0: to be read). A
/// sanitized call asks it on every call, and `getpid` is a system call
/// (~170-200 ns on the machines we run on).
static OWN_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// This process's id, read once per process: the fork handlers forget it
/// on both sides, so a child reads its own. (A child made without them,
/// by a raw `clone` system call, gets EIO from the library anyway.)
pub fn own_pid() -> i32 {
    match OWN_PID.load(Ordering::Relaxed) {
        0 => {
            let pid = std::process::id() as i32;
            OWN_PID.store(pid, Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
}

/// After `fork`, in the parent and in the child: release the lock.
extern "C" fn after_fork() {
    OWN_PID.store(0, Ordering::Relaxed);
    softvfio::memory::host::forget_call_pid();
    if crate::keeper::FORKING.load(Ordering::SeqCst) {
        return;
    }
    let _ = std::panic::catch_unwind(|| {
        FORK_GUARD.with(|g| drop(g.borrow_mut().take()));
    });
}

/// Makes `fork` safe for the state lock (see [`before_fork`]); once, at load.
pub fn install_fork_handlers() {
    real::at_fork(before_fork, after_fork, after_fork);
}

fn lock() -> MutexGuard<'static, Option<State>> {
    // The state stays consistent across a panic in the engine (each
    // operation updates it in single steps); keep serving after one.
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The platform named by `SOFTVFIO_CONFIG`, or the reference platform.
fn load_platform() -> Result<BuiltPlatform, String> {
    let cfg = match std::env::var("SOFTVFIO_CONFIG") {
        Ok(path) if !path.is_empty() => {
            Config::from_file(&path).map_err(|e| format!("bad configuration {path}: {e}"))?
        }
        _ => Config::reference(),
    };
    build(&cfg).map_err(|e| format!("bad configuration: {e}"))
}

/// [`with_state`]'s answer when the engine left the process for the keeper
/// while the caller waited (never an errno: negative).
pub const HANDED_OFF: c_int = c_int::MIN;

/// Runs `f` on the state, creating it on first use. `Err(errno)` when the
/// platform cannot be built.
pub fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> Result<R, c_int> {
    // After the hand-off the engine is the keeper's: none starts here.
    if crate::forward::attached() {
        return Err(libc::ENODEV);
    }
    let mut guard = lock();
    // The engine left while this thread waited for the lock: the caller
    // forwards the call instead.
    if crate::forward::attached() {
        return Err(HANDED_OFF);
    }
    if guard.is_none() {
        if BROKEN.load(Ordering::Relaxed) {
            return Err(libc::ENODEV);
        }
        match load_platform() {
            Ok(built) => {
                let built = Arc::new(built);
                let vfio = Arc::new(Vfio::new(built.platform.clone()));
                let sanitizer = crate::sanitize::from_env();
                if let Some(s) = &sanitizer {
                    vfio.set_sanitizer(s.clone());
                }
                // Large pins run on the engine's pin pool (`[engine]
                // pin_threads`). Its workers are ours: their ioctl/pread
                // calls must pass our interposed functions straight
                // through, which would otherwise wait for the session lock
                // the pinning caller holds (memory/host/parallel.rs).
                softvfio::memory::host::parallel::set_pin_worker_start(crate::Inside::mark_thread);
                *guard = Some(State {
                    built,
                    session: Session::new(vfio),
                    // SAFETY: the engine writes this process's memory only at the user
                    // addresses the program passes in its VFIO ioctls (argument structs, DMA
                    // buffers), as the kernel would; no Rust reference of this library covers
                    // them.
                    mem: Arc::new(ProgramMemory::new(crate::mmio::with_device_ranges(
                        unsafe { HostMemory::current() },
                    ))),
                    fds: HashMap::new(),
                    refs: HashMap::new(),
                    claims: HashMap::new(),
                    sanitizer,
                    maps: None,
                    image: None,
                    left_open: Leftovers::default(),
                    noted: Default::default(),
                });
                register_report();
            }
            Err(e) => {
                BROKEN.store(true, Ordering::Relaxed);
                eprintln!("softvfio: {e}");
                return Err(libc::ENODEV);
            }
        }
    }
    match guard.as_mut() {
        // One call: this process's id read once for all of it.
        Some(st) => Ok(softvfio::memory::host::with_call_pid(|| f(st))),
        None => Err(libc::ENODEV),
    }
}

/// Runs `f` on the state if it exists (nothing VFIO was opened yet: `None`).
pub fn with_existing<R>(f: impl FnOnce(&mut State) -> R) -> Option<R> {
    lock().as_mut().map(f)
}

/// Registers the end report with atexit (once per process image).
pub fn register_report() {
    let pid = std::process::id();
    if REPORT_PID.swap(pid, Ordering::AcqRel) != pid {
        real::at_exit(end_report);
    }
}

/// What `open` of a path does here.
pub enum OpenOutcome {
    /// Not a VFIO path: pass it on.
    NotOurs,
    /// A descriptor for a new object.
    Fd(c_int),
    /// The open fails with this errno.
    Error(c_int),
}

impl State {
    fn track(&mut self, fd: c_int, key: ObjectKey) {
        // The lock-free set of served streams follows the table (its
        // invariants: crate::streams).
        let stream = matches!(self.session.object(key), Some(FileObject::Fault(_)));
        streams::set(fd, stream);
        if let Some(old) = self.fds.insert(fd, key) {
            // A stale entry (the descriptor was closed behind our back).
            self.unref(old);
        } else {
            TRACKED.fetch_add(1, Ordering::Relaxed);
        }
        *self.refs.entry(key).or_insert(0) += 1;
    }

    fn unref(&mut self, key: ObjectKey) {
        let last = match self.refs.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => true,
        };
        if last {
            self.refs.remove(&key);
            self.session.release(key);
            self.drop_unused_claims();
        }
    }

    /// The group a group or device object belongs to.
    fn group_of(&self, key: ObjectKey) -> Option<u32> {
        match self.session.object(key)? {
            FileObject::Group(g) => Some(g.group.id),
            FileObject::Device(d) => Some(d.group.id),
            FileObject::Container(_)
            | FileObject::Iommufd(_)
            | FileObject::Cdev(_)
            | FileObject::Fault(_) => None,
        }
    }

    /// Gives up the claims of groups this process no longer has objects of.
    fn drop_unused_claims(&mut self) {
        if self.claims.is_empty() {
            return;
        }
        let in_use: Vec<u32> = self.refs.keys().filter_map(|k| self.group_of(*k)).collect();
        self.claims.retain(|id, fd| {
            let keep = in_use.contains(id);
            if !keep {
                claim::release(*fd);
            }
            keep
        });
    }

    /// The `/dev` node `(major, minor)` `fd` was opened from, when it is
    /// one of ours (its `fstat` answers that node).
    pub fn node_of(&self, fd: c_int) -> Option<(u32, u32)> {
        self.node_of_object(self.key_of(fd)?)
    }

    /// The `/dev` node `(major, minor)` object `key` was opened from: the
    /// container, `/dev/iommu`, a group or a device cdev
    /// (`hostview::dev_node`); `None` for the other objects (anonymous
    /// inodes).
    pub(crate) fn node_of_object(&self, key: ObjectKey) -> Option<(u32, u32)> {
        use softvfio_platform::hostview::{
            IOMMUFD_MINOR, MISC_MAJOR, VFIO_CDEV_MAJOR, VFIO_CONTAINER_MINOR,
        };
        match self.session.object(key)? {
            FileObject::Container(_) => Some((MISC_MAJOR, VFIO_CONTAINER_MINOR)),
            FileObject::Iommufd(_) => Some((MISC_MAJOR, IOMMUFD_MINOR)),
            FileObject::Group(g) => self.node_of_group(g.group.id),
            FileObject::Cdev(_) => Some((VFIO_CDEV_MAJOR, self.cdev_of_object(key)?)),
            _ => None,
        }
    }

    /// The `/dev` node `(major, minor, permission bits)` of `path`
    /// (`hostview::dev_node`).
    pub(crate) fn node_of_path(&self, path: &str) -> Option<(u32, u32, u32)> {
        softvfio_platform::hostview::dev_node(self.session.vfio().platform(), path)
    }

    /// The device number of group `id`'s node `/dev/vfio/<id>`.
    pub(crate) fn node_of_group(&self, id: u32) -> Option<(u32, u32)> {
        softvfio_platform::hostview::group_node(self.session.vfio().platform(), id)
    }

    /// The cdev number N of object `key` when it is an opened
    /// `/dev/vfio/devices/vfioN`.
    pub(crate) fn cdev_of_object(&self, key: ObjectKey) -> Option<u32> {
        let Some(FileObject::Cdev(c)) = self.session.object(key) else {
            return None;
        };
        let n = softvfio::iommufd::cdev::cdev_devices(self.session.vfio().platform())
            .iter()
            .position(|(_, d)| Arc::ptr_eq(d, &c.device))?;
        u32::try_from(n).ok()
    }

    /// The object behind `fd`, if it is one of ours.
    pub fn key_of(&self, fd: c_int) -> Option<ObjectKey> {
        self.fds.get(&fd).copied()
    }

    /// `fd` no longer refers to what it did (closed, or replaced by dup2).
    pub fn forget(&mut self, fd: c_int) {
        if let Some(key) = self.fds.remove(&fd) {
            streams::unmark(fd);
            TRACKED.fetch_sub(1, Ordering::Relaxed);
            self.unref(key);
        }
    }

    /// Descriptors `first..=last` were closed together (`close_range`).
    pub fn forget_range(&mut self, first: c_int, last: c_int) {
        let closed: Vec<c_int> = self
            .fds
            .keys()
            .copied()
            .filter(|fd| (first..=last).contains(fd))
            .collect();
        for fd in closed {
            self.forget(fd);
        }
    }

    /// `new` now refers to the same object as `old` (a dup of it). When
    /// `old` is ours, `new`'s entry is replaced in one step (`track` sets
    /// its bits for the new object, unreferencing what it named): its bits
    /// are never cleared between, so a `read` of `new` on another thread
    /// sees the old object or the new one, as the kernel's atomic
    /// replacement does (crate::streams).
    pub fn dup_of(&mut self, old: c_int, new: c_int) {
        match self.key_of(old) {
            Some(key) => self.track(new, key),
            None => self.forget(new),
        }
    }

    /// With the sanitizer, the program's call site of the current call.
    /// Also says which process the call is from (see `image`).
    fn call_site(&mut self) -> Option<Arc<CallSite>> {
        let s = self.sanitizer.as_ref()?;
        let pid = own_pid();
        let image = match self.image {
            Some((p, i)) if p == pid => i,
            _ => {
                let i = s.note_process(pid, crate::sanitize::program_of(pid));
                self.image = Some((pid, i));
                i
            }
        };
        softvfio::sanitizer::set_current_process(Some(image));
        Some(crate::sanitize::capture(&mut self.maps))
    }

    /// The sanitizer, when the run is sanitized.
    pub(crate) fn sanitizer(&self) -> Option<&Arc<Sanitizer>> {
        self.sanitizer.as_ref()
    }

    /// This process's entry in the sanitizer's process list, if it made a
    /// call yet (for the keeper: the program it took over).
    pub(crate) fn own_image(&self) -> Option<(i32, u32)> {
        self.image
    }

    /// The program is about to lose (or lost) `[addr, addr + len)`: stale
    /// mappings are reported now.
    pub fn memory_going_away(&mut self, addr: u64, len: u64, cause: StaleCause) {
        let Some(s) = self.sanitizer.clone() else {
            return;
        };
        let site = self.call_site();
        // In process, every mapping's memory is this process's (after a
        // fork or exec with VFIO files open the engine is the keeper's).
        let found = with_call_site(site.as_ref(), || {
            s.memory_going_away(None, addr, len, cause)
        });
        crate::sanitize::write_stale(&s, &found);
    }

    /// In the keeper: the calling process (call site `site`) lost
    /// `[addr, addr + len)`; stale mappings of its memory are reported now.
    /// The caller is the sanitizer's current process where the keeper set
    /// one (`None`: every mapping's memory counts). Returns whether the
    /// caller may still own a live mapping (so that it goes on asking).
    pub(crate) fn memory_going_away_of(
        &self,
        site: Option<Arc<CallSite>>,
        addr: u64,
        len: u64,
        cause: StaleCause,
    ) -> bool {
        let Some(s) = self.sanitizer.clone() else {
            return false;
        };
        let owner = softvfio::sanitizer::current_process();
        let found = with_call_site(site.as_ref(), || {
            s.memory_going_away(owner, addr, len, cause)
        });
        crate::sanitize::write_stale(&s, &found);
        owner.is_none_or(|o| s.owns_live_mappings(o))
    }

    /// An `open` of `path`.
    /// Devices with a cdev (`/dev/vfio/devices/vfioN`, N below this).
    pub fn cdev_count(&self) -> usize {
        softvfio::iommufd::cdev::cdev_devices(self.session.vfio().platform()).len()
    }

    pub fn open(&mut self, path: &str, cloexec: bool) -> OpenOutcome {
        let mem = self.mem.clone();
        let site = if path.starts_with("/dev/vfio/") || path == "/dev/iommu" {
            self.call_site()
        } else {
            None
        };
        let session = &mut self.session;
        let key = match with_call_site(site.as_ref(), || {
            session.open(path, || mem as Arc<dyn UserMemory>)
        }) {
            None => return OpenOutcome::NotOurs,
            Some(Err(e)) => return OpenOutcome::Error(e.errno()),
            Some(Ok(key)) => key,
        };
        // The engine checked this process; the claim checks the run's others.
        if let Err(e) = self.claim_group_of(key) {
            return OpenOutcome::Error(e);
        }
        match real::new_object_fd(cloexec) {
            Ok(fd) => {
                self.track(fd, key);
                OpenOutcome::Fd(fd)
            }
            Err(e) => {
                self.session.release(key);
                self.drop_unused_claims();
                OpenOutcome::Error(e)
            }
        }
    }

    /// An ioctl on our object `key`: the return value, or an errno.
    pub fn ioctl(&mut self, key: ObjectKey, request: u64, arg: u64) -> Result<i64, c_int> {
        let user = self.mem.clone();
        let site = if records_call_site(request) {
            self.call_site()
        } else {
            None
        };
        let mut fds = OwnFds(&self.fds);
        let session = &mut self.session;
        let routed = with_call_site(site.as_ref(), || {
            session.ioctl(key, request, arg, user.as_ref(), &mut fds)
        })
        .map_err(|e| e.errno())?;
        match routed {
            Routed::Value(v) => Ok(v),
            // vfio hands out device fds with O_CLOEXEC.
            Routed::NewObject(key) => match real::new_object_fd(true) {
                Ok(fd) => {
                    self.track(fd, key);
                    Ok(i64::from(fd))
                }
                Err(e) => {
                    self.session.release(key);
                    Err(e)
                }
            },
            // A fault queue: an eventfd as every object (its `poll` is the
            // queue's: POLLOUT, never POLLIN), its number in the reply,
            // its reads and writes served ([`State::stream_rw`]).
            Routed::NewFileAt { key, fd_at } => {
                let fd = real::new_object_fd(true).inspect_err(|_| self.session.abort(key))?;
                // Marked before the program can read the number (another
                // thread may, as soon as it is in the reply).
                streams::mark(fd);
                if self.mem.write(fd_at, &(fd as u32).to_ne_bytes()).is_err() {
                    streams::unmark(fd);
                    real::close(fd);
                    self.session.abort(key);
                    return Err(libc::EFAULT);
                }
                self.track(fd, key);
                Ok(0)
            }
        }
    }

    /// `read(2)`/`write(2)` (no offset) on our object `key` when the
    /// engine serves them (a fault queue); `None` for other objects.
    pub fn stream_rw(
        &self,
        key: ObjectKey,
        buf: u64,
        len: u64,
        write: bool,
    ) -> Option<Result<i64, c_int>> {
        self.stream_rw_for(key, self.mem.as_ref(), buf, len, write)
    }

    /// In the keeper (and in process): [`State::stream_rw`] into the
    /// memory `user` of the caller.
    pub(crate) fn stream_rw_for(
        &self,
        key: ObjectKey,
        user: &dyn UserMemory,
        buf: u64,
        len: u64,
        write: bool,
    ) -> Option<Result<i64, c_int>> {
        self.session
            .stream_rw(key, user, buf, len, write)
            .map(|r| r.map_err(|e| e.errno()))
    }

    /// `mmap` of our object `key` (the driver's checks): what it maps.
    pub fn mmap(
        &self,
        key: ObjectKey,
        off: u64,
        len: u64,
        shared: bool,
    ) -> Result<softvfio::uapi::MappedRegion, c_int> {
        self.session
            .mmap(key, off, len, shared)
            .map_err(|e| e.errno())
    }

    /// A mapping of `key` holds it open (the kernel's `vm_file`), like a
    /// descriptor.
    pub fn hold(&mut self, key: ObjectKey) {
        *self.refs.entry(key).or_insert(0) += 1;
    }

    /// The last mapping of `key` is gone.
    pub fn unhold(&mut self, key: ObjectKey) {
        self.unref(key);
    }

    /// Does the program lock memory itself (`HostMemory::program_locks`)?
    pub fn program_locks(&self) -> bool {
        self.mem.host().program_locks()
    }

    /// The program locks memory itself (see `HostMemory::note_program_locks`).
    pub fn note_program_locks(&self) {
        self.mem.host().note_program_locks();
    }

    pub fn pread(&self, key: ObjectKey, buf: u64, len: u64, off: u64) -> Result<i64, c_int> {
        self.session
            .pread(key, self.mem.as_ref(), buf, len, off)
            .map_err(|e| e.errno())
    }

    pub fn pwrite(&self, key: ObjectKey, buf: u64, len: u64, off: u64) -> Result<i64, c_int> {
        self.session
            .pwrite(key, self.mem.as_ref(), buf, len, off)
            .map_err(|e| e.errno())
    }

    /// The session's platform (its device models serve sysfs `config`).
    pub fn platform(&self) -> &Arc<BuiltPlatform> {
        &self.built
    }

    /// `/proc/self/status` with `VmLck` showing type1's accounting.
    pub fn status_text(&self) -> Option<String> {
        let text = std::fs::read_to_string("/proc/self/status").ok()?;
        let (ours_kb, accounted_kb) = vmlck_of(self.mem.as_ref());
        Some(report::status_with_vmlck(&text, ours_kb, accounted_kb))
    }

    /// Releases everything the program left open, and returns what that
    /// was and what stayed pinned or accounted after.
    fn finish(&mut self) -> (Leftovers, FinalState) {
        let keys: Vec<ObjectKey> = self.refs.keys().copied().collect();
        // Everything is noted before anything is released: releasing a
        // group detaches it from its container, which unmaps everything,
        // and releasing a bound cdev changes what its iommufd holds.
        for key in &keys {
            self.note_left_open(*key);
        }
        let left = std::mem::take(&mut self.left_open);
        for key in keys {
            self.session.release(key);
        }
        self.refs.clear();
        for fd in std::mem::take(&mut self.fds).into_keys() {
            TRACKED.fetch_sub(1, Ordering::Relaxed);
            streams::unmark(fd);
            real::close_own(fd);
        }
        let s = self.mem.stats();
        let fin = FinalState {
            pinned_pages: s.pinned_pages,
            pin_refs: s.pin_refs,
            locked_pages: self.mem.account().locked_pages(),
            open_objects: self.session.len() as u64,
        };
        (left, fin)
    }
}

/// The ioctls whose call site the sanitizer keeps (they make or end a
/// mapping, a device file or an interrupt).
pub(crate) fn records_call_site(request: u64) -> bool {
    matches!(
        request,
        uapi::VFIO_IOMMU_MAP_DMA
            | uapi::VFIO_IOMMU_UNMAP_DMA
            | uapi::VFIO_GROUP_GET_DEVICE_FD
            | uapi::VFIO_DEVICE_SET_IRQS
            | softvfio::iommufd::abi::IOMMU_IOAS_MAP
            | softvfio::iommufd::abi::IOMMU_IOAS_UNMAP
            | softvfio::iommufd::abi::IOMMU_IOAS_COPY
    )
}

/// What `VmLck` is made of for address space `mem`: the kB the engine's
/// pins lock there (mlocks Linux's pins do not make) and the kB type1
/// accounts to it (`mm->locked_vm`).
pub(crate) fn vmlck_of(mem: &dyn UserMemory) -> (u64, u64) {
    (
        mem.stats().locked_bytes / 1024,
        mem.account().locked_pages() * PAGE_SIZE / 1024,
    )
}

// ---- the keeper's side (crate::keeper) -------------------------------------

/// The engine leaves this process (the keeper's hand-off): the state, taken
/// while `guard` (the state lock) is held, so no other thread is inside.
pub(crate) fn take_locked(guard: &mut MutexGuard<'static, Option<State>>) -> Option<State> {
    guard.take()
}

/// The state lock, for the hand-off (held across the keeper's fork).
pub(crate) fn lock_for_handoff() -> MutexGuard<'static, Option<State>> {
    lock()
}

impl State {
    /// This process's memory as the engine pins it.
    pub(crate) fn own_memory(&self) -> &Arc<ProgramMemory> {
        &self.mem
    }

    /// The program's descriptor table (fd to object), for the forwarding
    /// front end that replaces this state in the program.
    pub(crate) fn program_fds(&self) -> HashMap<c_int, ObjectKey> {
        self.fds.clone()
    }

    /// In the keeper: the program's descriptors are not the keeper's: the
    /// table is emptied (the objects keep their reference counts, which the
    /// keeper now counts per process) and the keeper's inherited copies of
    /// the descriptors are closed.
    pub(crate) fn drop_program_fds(&mut self) {
        for fd in std::mem::take(&mut self.fds).into_keys() {
            TRACKED.fetch_sub(1, Ordering::Relaxed);
            streams::unmark(fd);
            real::close_own(fd);
        }
    }

    /// In the program after the hand-off: its copies of the claim sockets
    /// go (the keeper holds its own until the group is free).
    pub(crate) fn close_claims(&mut self) {
        for (_, fd) in self.claims.drain() {
            claim::release(fd);
        }
    }

    /// Descriptors the engine itself holds (claims), which the keeper
    /// must keep open.
    pub(crate) fn claim_fds(&self) -> Vec<c_int> {
        self.claims.values().copied().collect()
    }

    /// A group just opened (`key`) is claimed for this run, unless it is
    /// already: another process of the same run holding it makes the open
    /// EBUSY (and the new object is released), as Linux's one-opener rule.
    fn claim_group_of(&mut self, key: ObjectKey) -> Result<(), c_int> {
        if let Some(id) = self
            .group_of(key)
            .filter(|id| !self.claims.contains_key(id))
        {
            match claim::claim(id) {
                Claim::Held(fd) => {
                    self.claims.insert(id, fd);
                }
                Claim::Busy => {
                    self.session.release(key);
                    return Err(libc::EBUSY);
                }
                Claim::Unchecked => {}
            }
        }
        Ok(())
    }

    /// In the keeper: an `open` of `path` by a process whose memory is
    /// `mem`: the new object, counted once (the caller's descriptor);
    /// `Ok(None)` when the path is not VFIO's.
    pub(crate) fn open_for(
        &mut self,
        path: &str,
        mem: Arc<dyn UserMemory>,
    ) -> Result<Option<ObjectKey>, c_int> {
        let key = match self.session.open(path, || mem) {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.errno()),
            Some(Ok(key)) => key,
        };
        self.claim_group_of(key)?;
        self.hold(key);
        Ok(Some(key))
    }

    /// In the keeper: an ioctl by a process whose memory is `user` and
    /// descriptors `fds`. A new object is counted once (its descriptor).
    pub(crate) fn ioctl_for(
        &mut self,
        key: ObjectKey,
        request: u64,
        arg: u64,
        user: &dyn UserMemory,
        fds: &mut dyn ProgramFds,
    ) -> Result<Routed, c_int> {
        let routed = self
            .session
            .ioctl(key, request, arg, user, fds)
            .map_err(|e| e.errno())?;
        match routed {
            Routed::NewObject(k) => self.hold(k),
            // The program's side marks the queue's number (crate::streams);
            // the keeper's own reads and writes pass on (`IN_KEEPER`).
            Routed::NewFileAt { key, .. } => {
                self.hold(key);
            }
            Routed::Value(_) => {}
        }
        Ok(routed)
    }

    /// In the keeper: `pread`/`pwrite` into the memory of the caller.
    pub(crate) fn rw_for(
        &self,
        key: ObjectKey,
        user: &dyn UserMemory,
        buf: u64,
        len: u64,
        off: u64,
        write: bool,
    ) -> Result<i64, c_int> {
        let r = if write {
            self.session.pwrite(key, user, buf, len, off)
        } else {
            self.session.pread(key, user, buf, len, off)
        };
        r.map_err(|e| e.errno())
    }

    /// The device model behind device file (or bound cdev) `key`.
    pub(crate) fn model_of(
        &self,
        key: ObjectKey,
    ) -> Option<Arc<dyn softvfio::device::VfioDeviceModel>> {
        match self.session.object(key)? {
            FileObject::Device(d) => Some(d.device.model.clone()),
            FileObject::Cdev(c) => Some(c.device.model.clone()),
            _ => None,
        }
    }

    /// Is `key` an open object?
    pub(crate) fn has_object(&self, key: ObjectKey) -> bool {
        self.session.contains(key)
    }

    /// Counts `key` (once) as left open by the program, with what it holds.
    fn note_left_open(&mut self, key: ObjectKey) {
        if !self.noted.insert(key) {
            return;
        }
        if let Some(obj) = self.session.object(key) {
            self.left_open.note(obj);
            if let Some(s) = &self.sanitizer {
                self.left_open.note_sanitized(s, key, obj);
            }
        }
    }

    /// In the keeper: a process died holding `held` references of each
    /// object (its files, closed by its death). The objects whose last
    /// references those were are counted as left open, all of them before
    /// any is released (releasing a group unmaps its container), and then
    /// the references go. `all`: no process is left, so everything still
    /// open was left open.
    pub(crate) fn unhold_at_death(&mut self, held: &HashMap<ObjectKey, usize>, all: bool) {
        let last: Vec<ObjectKey> = if all {
            self.refs.keys().copied().collect()
        } else {
            held.iter()
                .filter(|(k, n)| self.refs.get(k).is_some_and(|r| *r <= **n))
                .map(|(k, _)| *k)
                .collect()
        };
        for key in last {
            self.note_left_open(key);
        }
        for (key, n) in held {
            for _ in 0..*n {
                self.unref(*key);
            }
        }
    }
}

/// Prints the end report of `st` (what the program left, what stayed
/// pinned) and releases everything: the in-process report at exit, and the
/// keeper's when its last process is gone.
pub(crate) fn report_and_finish(st: &mut State) {
    let quiet = std::env::var_os("SOFTVFIO_QUIET").is_some_and(|v| !v.is_empty());
    let (left, fin) = st.finish();
    if !quiet {
        let mut err = std::io::stderr().lock();
        let _ = report::write_end_report(&mut err, &st.built, &left, &fin);
        let _ = err.flush();
    }
    if let Some(s) = st.sanitizer.clone() {
        crate::sanitize::finish(&st.built, &s, &left.leaks, quiet);
    }
}

/// The end report at exit: the same as `softvfio run`'s, on stderr, unless
/// `SOFTVFIO_QUIET` is set.
extern "C" fn end_report() {
    let _ = std::panic::catch_unwind(|| {
        let Some(_inside) = crate::Inside::enter() else {
            return;
        };
        if REPORT_PID.load(Ordering::Acquire) != std::process::id() {
            return;
        }
        // After the hand-off the keeper reports, when its last process is
        // gone.
        if crate::forward::attached() {
            return;
        }
        let quiet = std::env::var_os("SOFTVFIO_QUIET").is_some_and(|v| !v.is_empty());
        if std::env::var_os("SOFTVFIO_MMIO_STATS").is_some_and(|v| v == "1") {
            let (n, ns) = crate::mmio::trap_stats();
            eprintln!(
                "softvfio: {n} trapped device accesses, {} ns each in the handler (mean)",
                ns.checked_div(n).unwrap_or(0)
            );
        }
        let done = with_state(|st| {
            let (left, fin) = st.finish();
            (st.built.clone(), left, fin, st.sanitizer.clone())
        });
        if let Ok((built, left, fin, sanitizer)) = done {
            if !quiet {
                let mut err = std::io::stderr().lock();
                let _ = report::write_end_report(&mut err, &built, &left, &fin);
                let _ = err.flush();
            }
            if let Some(s) = sanitizer {
                crate::sanitize::finish(&built, &s, &left.leaks, quiet);
            }
        }
    });
}
