//! The DMA sanitizer (issue 19): a bounded history of what the program did
//! to each IOVA region (`MAP_DMA`, `UNMAP_DMA`, vaddr invalidation and
//! update, the memory behind a live mapping going away), each event with the
//! program's call site, so that a DMA fault, a stale mapping or a leak can be
//! explained the way AddressSanitizer explains a bad CPU access.
//!
//! Invariants:
//! - Recording is off unless a front end installs a [`Sanitizer`] on the
//!   [`Vfio`](crate::uapi::Vfio); with none installed, the engine's only cost
//!   is one `OnceLock` read per map/unmap.
//! - Memory is bounded: each mapping (one `MAP_DMA` or IOAS area, and
//!   what happened to it until it was unmapped) has a history of at most
//!   `depth` events (oldest dropped first); at most `max_regions` histories
//!   of unmapped mappings are remembered (those unmapped longest ago are
//!   forgotten first); live mappings are always remembered (their number is
//!   bounded by `dma_entry_limit`). A region (all the mappings made at one
//!   container and IOVA) shows the last `depth` events of its histories.
//! - A type1 container records into its own [`Recorder`], kept in its
//!   type1 state under the container's lock (which every map and unmap
//!   holds already), and an iommufd context into its own, kept in its
//!   state under its lock: recording takes no second lock. Questions take
//!   each registered container's lock in turn, then each registered
//!   context's, then the shared tables' (which hold direct calls and the
//!   histories of containers whose type1 state went and of contexts that
//!   went, moved there when they go); recording takes at most one
//!   container's or context's lock and then the shared one, and no engine
//!   path holds a context's lock and a container's together, so no cycle.
//!   A question holds a context's state (its `Arc<Mutex<State>>`), never
//!   the context: the context's drop (which releases its devices and pins
//!   and records that) runs where its owner drops it, not on a question's
//!   thread (`a_question_never_drops_a_context`).
//!   The bounds below hold per recorder (per container or context) and for
//!   the shared tables.
//! - Rings hold `depth` rounded up to a power of two (a mask, not a
//!   division, per event); a question shows the last `depth`.
//! - Recording costs no table lookup and no allocation once the tables
//!   have grown: a map continues the history of its region when the
//!   region's slot is the latest made at its entry of a small direct-mapped
//!   array (a ring of buffers mapped over and over: warm slots), else takes
//!   a free slot with a preallocated ring of `depth` events (overwritten in
//!   place); the engine's mapping (a type1 `Dma`, an iommufd `Area`)
//!   carries its [`HistorySlot`] so that its unmap writes there directly (checked
//!   against the slot's key); unmapped slots wait in the idle list (linked
//!   through a compact per-slot array, oldest first; a slot mapped again
//!   leaves it) and the oldest is freed when more than `max_regions` wait.
//!   `idle_count` is the list's length, and a slot is in the list exactly
//!   when it holds a history (`used`) that is not mapped; a slot not `used`
//!   is in `free` (`recorder_tables_keep_their_invariants` checks these
//!   after every step of random walks). Only owners that do not carry the
//!   slot (direct calls into the shared tables) keep their live mappings
//!   in a hash index. Questions (a region's history,
//!   nearest mappings) group and sort the slots at report time.
//! - Event times are clock ticks (the TSC where it is invariant, see
//!   `clock`), converted to `Instant` when a question is asked: ~10 ns per
//!   event instead of `Instant::now()`'s ~30.
//! - A type1 recorder's map and unmap are specialised at compile time
//!   (`Inner::push` is inlined into each), read a copy of the clock and the
//!   ring geometry kept in the recorder, and tell the last call site again
//!   by its address (or, for a new `CallSite` with the same frames, by
//!   comparing them) without hashing it. An event reads thread-local
//!   storage once: the call's site address and process, kept by
//!   [`with_call_site`] and [`set_current_process`] in a thread-local with
//!   nothing to drop (no state check; module `current`, which also keeps
//!   the front ends' few sites cached, so that handing one over changes no
//!   reference count). A map hashes its key once (for
//!   the `recent` lookup and a new slot's entry) and has that lookup and
//!   the taking of a free slot inlined; the rare paths (an event other than
//!   a map without a valid carried slot, the tables growing) are out of
//!   line, so that they do not grow the engine's own unmap.
//! - Call sites are captured raw (return addresses with the object file and
//!   file offset they fall in) and symbolized only when a report is
//!   written, by the front end (`softvfio_platform::symbolize`).
//! - Nothing here fails a VFIO call: recording is best effort and never
//!   changes an answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::iommu::Prot;

mod clock;
mod current;
use clock::{Calibration, EventClock};
pub use current::{current_process, current_site, set_current_process, with_call_site};

/// One frame of a call site: an instruction address in the program, and the
/// file it lies in with its offset in that file (so that it can be
/// symbolized after the program has gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The return (or instruction) address in the program.
    pub addr: u64,
    /// The mapped file the address lies in, if any.
    pub object: Option<Arc<str>>,
    /// Offset of `addr` in `object`.
    pub offset: u64,
}

/// Where in the program a VFIO call came from: its frames, innermost first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallSite {
    /// The frames, innermost first.
    pub frames: Vec<Frame>,
}

impl std::hash::Hash for CallSite {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The addresses tell call sites apart; equal sites have equal
        // addresses, so this agrees with `Eq`.
        for f in &self.frames {
            state.write_u64(f.addr);
        }
    }
}

/// A process of the run, as the front end named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Its pid.
    pub pid: i32,
    /// Its program (after an exec, the new image's).
    pub program: String,
    /// How it ended, once the front end saw it end (an image replaced by
    /// an exec has none: the process goes on).
    pub end: Option<ProcessEnd>,
}

/// How a process of the run ended. It matters to a fault: pinned pages
/// outlive their process on Linux, and user space keeps them only when it
/// hears of the end while the memory is still there (an exit, not a
/// `SIGKILL`: docs/RELIABILITY.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessEnd {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Killed(i32),
    /// It ended without exiting (no `exit`/`_exit` was seen): a signal
    /// killed it, which one is not known to the front end.
    KilledBySomeSignal,
}

impl ProcessEnd {
    /// From a `waitpid` status.
    pub fn from_wait_status(status: i32) -> Self {
        if libc::WIFSIGNALED(status) {
            ProcessEnd::Killed(libc::WTERMSIG(status))
        } else {
            ProcessEnd::Exited(libc::WEXITSTATUS(status))
        }
    }

    /// Whether its memory went before anything could keep it.
    pub fn was_killed(self) -> bool {
        !matches!(self, ProcessEnd::Exited(_))
    }
}

impl std::fmt::Display for ProcessEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessEnd::Exited(code) => write!(f, "exited with status {code}"),
            ProcessEnd::Killed(sig) => {
                let name = match *sig {
                    libc::SIGKILL => "SIGKILL".to_string(),
                    libc::SIGSEGV => "SIGSEGV".to_string(),
                    libc::SIGTERM => "SIGTERM".to_string(),
                    libc::SIGABRT => "SIGABRT".to_string(),
                    libc::SIGBUS => "SIGBUS".to_string(),
                    libc::SIGINT => "SIGINT".to_string(),
                    n => format!("signal {n}"),
                };
                write!(f, "killed by {name}")
            }
            ProcessEnd::KilledBySomeSignal => f.write_str("killed by a signal"),
        }
    }
}

/// How the program made memory behind a live DMA mapping go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StaleCause {
    /// `munmap` of the range.
    Munmap,
    /// `mremap` moved or shrank it.
    Mremap,
    /// `mmap(MAP_FIXED)` replaced it.
    MmapFixed,
    /// `madvise(MADV_DONTNEED)` (or `MADV_DONTNEED_LOCKED`): on Linux the
    /// call answers 0 and the program reads new zero-filled pages while
    /// the device keeps the old ones.
    MadvDontneed,
    /// `madvise(MADV_REMOVE)` of shared writable memory: on Linux the call
    /// answers 0 and punches the pages out of the shared object; the
    /// program reads new zero-filled pages while the device keeps the old
    /// ones.
    MadvRemove,
}

impl StaleCause {
    /// The system call's name.
    pub fn syscall(self) -> &'static str {
        match self {
            StaleCause::Munmap => "munmap",
            StaleCause::Mremap => "mremap",
            StaleCause::MmapFixed => "mmap(MAP_FIXED)",
            StaleCause::MadvDontneed => "madvise(MADV_DONTNEED)",
            StaleCause::MadvRemove => "madvise(MADV_REMOVE)",
        }
    }

    /// What Linux does where softvfio answers otherwise: the `madvise`
    /// advice fails with EINVAL under softvfio (its pins mlock the pages,
    /// and Linux refuses them on locked memory), while on a real host it
    /// answers 0 and the program goes on with other pages than the
    /// device's. `None` for the calls that behave alike.
    pub fn linux_note(self) -> Option<&'static str> {
        match self {
            StaleCause::Munmap | StaleCause::Mremap | StaleCause::MmapFixed => None,
            StaleCause::MadvDontneed => Some(
                "on Linux the call answers 0 and the program reads new zero-filled pages while the device keeps the old ones; under softvfio the pin's mlock makes MADV_DONTNEED fail with EINVAL",
            ),
            StaleCause::MadvRemove => Some(
                "on Linux the call answers 0 and punches the pages out of the shared memory: the program reads new zero-filled pages while the device keeps the old ones; under softvfio the pin's mlock makes it fail with EINVAL",
            ),
        }
    }

    /// The cause's code in a recorded event (3 bits) and across the
    /// keeper's transport.
    pub fn code(self) -> u32 {
        match self {
            StaleCause::Munmap => 0,
            StaleCause::Mremap => 1,
            StaleCause::MmapFixed => 2,
            StaleCause::MadvDontneed => 3,
            StaleCause::MadvRemove => 4,
        }
    }

    /// The cause of a [`StaleCause::code`].
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => StaleCause::Munmap,
            1 => StaleCause::Mremap,
            2 => StaleCause::MmapFixed,
            3 => StaleCause::MadvDontneed,
            4 => StaleCause::MadvRemove,
            _ => return None,
        })
    }
}

/// What happened to a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `VFIO_IOMMU_MAP_DMA` created the mapping.
    Map {
        /// User address.
        vaddr: u64,
        /// Bytes.
        size: u64,
        /// Device access rights.
        prot: Prot,
    },
    /// `VFIO_IOMMU_UNMAP_DMA` removed it.
    Unmap,
    /// `VFIO_IOMMU_UNMAP_DMA` with `VFIO_DMA_UNMAP_FLAG_VADDR`.
    InvalidateVaddr,
    /// `VFIO_IOMMU_MAP_DMA` with `VFIO_DMA_MAP_FLAG_VADDR`.
    UpdateVaddr {
        /// The new user address.
        vaddr: u64,
    },
    /// The container was closed with the mapping in place.
    Released,
    /// The program unmapped or replaced memory this live mapping covers:
    /// devices keep reaching the old pages, the program no longer sees them.
    Stale {
        /// How.
        cause: StaleCause,
        /// First user address affected.
        vaddr: u64,
        /// Bytes affected.
        len: u64,
    },
}

impl EventKind {
    /// The VFIO call (or system call) behind the event.
    pub fn call(&self) -> &'static str {
        match self {
            EventKind::Map { .. } => "MAP_DMA",
            EventKind::Unmap => "UNMAP_DMA",
            EventKind::InvalidateVaddr => "UNMAP_DMA(FLAG_VADDR)",
            EventKind::UpdateVaddr { .. } => "MAP_DMA(FLAG_VADDR)",
            EventKind::Released => "close of the container",
            EventKind::Stale { cause, .. } => cause.syscall(),
        }
    }
}

/// The interface an event came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A type1 container (`/dev/vfio/vfio`, or type1 compatibility).
    Type1,
    /// An iommufd IOAS: `IOMMU_IOAS_MAP` / `IOMMU_IOAS_UNMAP`.
    Iommufd,
    /// An iommufd IOAS: `IOMMU_IOAS_COPY` made the area.
    IommufdCopy,
}

/// One recorded event.
#[derive(Debug, Clone)]
pub struct Event {
    /// When.
    pub at: Instant,
    /// What.
    pub kind: EventKind,
    /// From where in the program.
    pub site: Option<Arc<CallSite>>,
    /// Through which interface.
    pub via: Via,
    /// The process that made the call (see [`set_current_process`]).
    pub process: Option<u32>,
}

impl Event {
    /// The call behind the event, named for its interface (`MAP_DMA`,
    /// `IOAS_MAP`, `IOAS_COPY`, ...).
    pub fn call(&self) -> &'static str {
        match (self.via, self.kind) {
            (Via::Type1, k) => k.call(),
            (Via::Iommufd, EventKind::Map { .. }) => "IOAS_MAP",
            (Via::IommufdCopy, EventKind::Map { .. }) => "IOAS_COPY",
            (_, EventKind::Unmap) => "IOAS_UNMAP",
            (_, EventKind::Released) => "close of the iommufd",
            (_, k) => k.call(),
        }
    }
}

/// The history key of IOAS `ioas` of the iommufd context `ctx` (the
/// `container` argument of the recording and query calls): apart from every
/// type1 container id (those count up from 1; these have the top bit set).
pub fn iommufd_history_key(ctx: u64, ioas: u32) -> u64 {
    (1 << 63) | ((ctx & 0x7fff_ffff) << 32) | u64::from(ioas)
}

/// The history of one IOVA region (a mapping's first IOVA in a container).
#[derive(Debug, Clone)]
pub struct RegionView {
    /// The container.
    pub container: u64,
    /// First IOVA.
    pub iova: u64,
    /// Size of the latest mapping at this IOVA.
    pub size: u64,
    /// Mapped at the time asked about.
    pub mapped: bool,
    /// Events up to the time asked about, oldest first (at most `depth`).
    pub events: Vec<Event>,
    /// Events dropped from the ring before these.
    pub dropped: u64,
}

impl RegionView {
    /// The most recent `MAP_DMA` event shown.
    pub fn last_map(&self) -> Option<&Event> {
        self.events
            .iter()
            .rev()
            .find(|e| matches!(e.kind, EventKind::Map { .. }))
    }

    /// The most recent event of a given kind after the last map.
    pub fn after_map(&self, pred: impl Fn(&EventKind) -> bool) -> Option<&Event> {
        let start = self
            .events
            .iter()
            .rposition(|e| matches!(e.kind, EventKind::Map { .. }))
            .unwrap_or(0);
        self.events[start..].iter().rev().find(|e| pred(&e.kind))
    }
}

/// What the history says about one IOVA at one time.
#[derive(Debug, Clone)]
pub enum IovaHistory {
    /// Regions covering the IOVA (mapped then, or mapped before).
    Known(Vec<RegionView>),
    /// No recorded mapping ever covered it; the nearest ones below and
    /// above, per container.
    NeverMapped {
        /// Nearest regions (at most one below and one above per container).
        nearest: Vec<RegionView>,
    },
}

/// Something the program opened through VFIO and has not closed yet.
#[derive(Debug, Clone)]
pub struct ObjectRecord {
    /// What it is ("device 0000:00:03.0", "container").
    pub what: String,
    /// Where it was opened.
    pub site: Option<Arc<CallSite>>,
    /// Interrupt eventfds installed on it (device files): the last
    /// `VFIO_DEVICE_SET_IRQS` that installed some, with its call site.
    pub irqs: Option<(String, Option<Arc<CallSite>>)>,
    /// The process that opened it.
    pub process: Option<u32>,
}

/// A stale mapping found when the program changed its address space.
#[derive(Debug, Clone)]
pub struct StaleReport {
    /// When.
    pub at: Instant,
    /// The system call.
    pub cause: StaleCause,
    /// User range affected (the intersection with the mapping).
    pub vaddr: u64,
    /// Bytes.
    pub len: u64,
    /// Where the program made the call.
    pub site: Option<Arc<CallSite>>,
    /// The mapping: its container, IOVA, size, vaddr, and map event.
    pub region: RegionView,
}

/// Settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SanitizerConfig {
    /// Events kept per IOVA region.
    pub depth: usize,
    /// Unmapped regions remembered (the oldest are forgotten first).
    pub max_regions: usize,
}

impl Default for SanitizerConfig {
    fn default() -> Self {
        Self {
            depth: 8,
            max_regions: 4096,
        }
    }
}

/// No call site (a [`RawEvent::site`] value).
const NO_SITE: u32 = u32::MAX;

/// Distinct call sites remembered (a program has few; a call from a site
/// beyond these is recorded without one, so that memory stays bounded).
const MAX_SITES: usize = 1 << 16;

/// Call sites [`Inner`] finds by their `CallSite`'s address before
/// comparing or hashing frames.
const RECENT_SITES: usize = 4;

/// No process (the process field of [`RawEvent::meta`]).
const NO_PROCESS: u32 = 0x00ff_ffff;

/// The process field of [`RawEvent::meta`] for `process`: [`NO_PROCESS`]
/// for none, and for indices past it (recorded as none).
#[cfg(test)]
fn process_bits(process: Option<u32>) -> u32 {
    process.map_or(NO_PROCESS, |p| p.min(NO_PROCESS))
}

/// An event as recorded, in 32 bytes (two per cache line, a ring of them
/// written in place): its time in the clock's ticks (converted to an
/// `Instant` when a report asks), its call site as an index into the
/// interned table `Inner::sites` (no reference count taken or dropped per
/// event), and its kind packed:
/// - `meta` bits 0-2: the kind (0 map, 1 unmap, 2 vaddr invalidated,
///   3 vaddr updated, 4 released, 5 stale); bits 3-4: [`Via`]; bits 5-6:
///   the map's [`Prot`] (read, write); bits 5-7 the stale [`StaleCause`]
///   ([`StaleCause::code`]); bits
///   8-31: the process ([`NO_PROCESS`]: none; indices past it are recorded
///   as none);
/// - `a`, `b`: the map's vaddr and size, the updated vaddr, the stale
///   range's vaddr and length.
///
/// Aligned to its size, so that no event straddles two cache lines.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
struct RawEvent {
    at: u64,
    a: u64,
    b: u64,
    site: u32,
    meta: u32,
}

const _: () = assert!(std::mem::size_of::<RawEvent>() == 32);
const _: () = assert!(std::mem::size_of::<Slot>() == 64);

impl RawEvent {
    #[cfg(test)]
    fn new(at: u64, kind: EventKind, via: Via, site: u32, process: Option<u32>) -> Self {
        Self::with_process_bits(at, kind, via, site, process_bits(process))
    }

    /// [`RawEvent::new`] with the process already as its `meta` bits
    /// (see [`process_bits`]).
    #[inline(always)]
    fn with_process_bits(at: u64, kind: EventKind, via: Via, site: u32, process: u32) -> Self {
        let (tag, extra, a, b) = match kind {
            EventKind::Map { vaddr, size, prot } => (
                0,
                u32::from(prot.read) | u32::from(prot.write) << 1,
                vaddr,
                size,
            ),
            EventKind::Unmap => (1, 0, 0, 0),
            EventKind::InvalidateVaddr => (2, 0, 0, 0),
            EventKind::UpdateVaddr { vaddr } => (3, 0, vaddr, 0),
            EventKind::Released => (4, 0, 0, 0),
            EventKind::Stale { cause, vaddr, len } => (5, cause.code(), vaddr, len),
        };
        let via = match via {
            Via::Type1 => 0,
            Via::Iommufd => 1,
            Via::IommufdCopy => 2,
        };
        RawEvent {
            at,
            a,
            b,
            site,
            meta: tag | via << 3 | extra << 5 | process << 8,
        }
    }

    fn kind(&self) -> EventKind {
        let extra = (self.meta >> 5) & 3;
        match self.meta & 7 {
            0 => EventKind::Map {
                vaddr: self.a,
                size: self.b,
                prot: Prot {
                    read: extra & 1 != 0,
                    write: extra & 2 != 0,
                },
            },
            1 => EventKind::Unmap,
            2 => EventKind::InvalidateVaddr,
            3 => EventKind::UpdateVaddr { vaddr: self.a },
            4 => EventKind::Released,
            _ => EventKind::Stale {
                cause: StaleCause::from_code((self.meta >> 5) & 7).unwrap_or(StaleCause::Munmap),
                vaddr: self.a,
                len: self.b,
            },
        }
    }

    fn via(&self) -> Via {
        match (self.meta >> 3) & 3 {
            0 => Via::Type1,
            1 => Via::Iommufd,
            _ => Via::IommufdCopy,
        }
    }

    fn event(&self, cal: &Calibration, sites: &[Arc<CallSite>]) -> Event {
        let process = self.meta >> 8;
        Event {
            at: cal.instant(self.at),
            kind: self.kind(),
            site: sites.get(self.site as usize).cloned(),
            via: self.via(),
            process: (process != NO_PROCESS).then_some(process),
        }
    }
}

/// Where a region's history is kept: the engine's mapping carries it, so
/// that its unmap and vaddr updates reach the history without a table
/// lookup (checked against the region's key; a stale one falls back to
/// the lookup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistorySlot(u32);

impl HistorySlot {
    /// No slot (no sanitizer, or recording failed).
    pub const NONE: HistorySlot = HistorySlot(u32::MAX);
}

impl Default for HistorySlot {
    fn default() -> Self {
        Self::NONE
    }
}

/// One mapping's history (an instance of its IOVA region: each map makes
/// a new one); its events are in `Inner::events` at `slot * depth ..`, a
/// ring of `len` events starting at `head`. One cache line each (a new
/// IOVA takes the slot forgotten longest ago: a cold line).
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
struct Slot {
    container: u64,
    iova: u64,
    size: u64,
    vaddr: u64,
    /// Order of creation (a region's instances are read in this order).
    seq: u64,
    /// Holds a history (false: free, for the next mapping).
    used: bool,
    mapped: bool,
    head: u16,
    len: u16,
    /// The process whose address space `vaddr` is in: the maker of the
    /// latest map or vaddr update ([`NO_PROCESS`]: none said).
    owner: u32,
    dropped: u64,
}

/// A hasher for (container, IOVA) keys: they come from the program but only
/// index a bounded table under our own lock, so a multiplicative mix is
/// enough (SipHash's flooding resistance is not needed here).
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        // The multiply mixes upwards; fold the high half into the low bits
        // the table indexes with.
        self.0 ^ (self.0 >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type KeyHash = std::hash::BuildHasherDefault<KeyHasher>;

/// Entries of `Inner::recent`.
const RECENT: usize = 1024;

/// The `Inner::recent` entry of (`container`, `iova`), and the tag that
/// tells the keys sharing it apart (most of the time: a match is still
/// checked against the slot).
fn recent_index(container: u64, iova: u64) -> (usize, u32) {
    let h = (container.rotate_left(32) ^ (iova >> 12)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((h >> (64 - RECENT.trailing_zeros())) as usize, h as u32)
}

/// The recorder's tables. Recording allocates nothing and looks nothing up
/// in a table once they have grown to the run's number of mappings: a
/// mapping continues its region's slot (found through `recent`) or gets a
/// free one with a preallocated ring of `depth` events in `events` (the
/// slot of the mapping forgotten last), keeps it (the engine's mapping
/// carries its [`HistorySlot`]) and goes to the idle list when it is
/// unmapped. A region (all the mappings made at one container and IOVA)
/// may span several slots; they are put together when a question is asked.
struct Inner {
    slots: Vec<Slot>,
    /// `depth` events per slot (those past a slot's `len` are unused).
    events: Vec<RawEvent>,
    /// Call sites seen, each once, in the order seen (a [`RawEvent`]
    /// refers to one by index; at most [`MAX_SITES`]).
    sites: Vec<Arc<CallSite>>,
    /// Indices into `sites` by content (the front ends capture a new
    /// `CallSite` per call).
    site_ids: HashMap<Arc<CallSite>, u32, KeyHash>,
    /// The call sites interned last, as (address of the `CallSite` that
    /// `sites` holds, index; `(0, NO_SITE)`: none): a call site passed
    /// again (the same `Arc`; a driver's calls alternate between a few
    /// sites) is found without hashing its frames. Addresses are only
    /// compared, never dereferenced; `sites` holds each allocation, so no
    /// other call site can have one of these addresses.
    recent_sites: [(usize, u32); RECENT_SITES],
    /// The entry of `recent_sites` the next site found goes into.
    recent_next: usize,
    /// The index of the call site interned last.
    last_site: u32,
    /// Free slots.
    free: Vec<u32>,
    /// Live slots of mappings whose owner does not carry the slot
    /// (direct calls into the shared tables), by (container, first IOVA).
    live: HashMap<(u64, u64), u32, KeyHash>,
    /// The idle list: slots of unmapped mappings, in the order they were
    /// unmapped (`idle_head` the oldest), linked through `links`; a slot
    /// mapped again leaves it, a forgotten one too. [`NIL`]: empty.
    idle_head: u32,
    idle_tail: u32,
    /// Slots in the idle list.
    idle_count: usize,
    /// Per slot, its links in the idle list (see [`IdleLink`]). Kept apart
    /// from the slots (8 bytes each, not a cache line), so that the list's
    /// updates touch no slot.
    links: Vec<IdleLink>,
    /// The latest slot made per (container, IOVA) hash: a map at an IOVA
    /// unmapped not long ago continues that region's history in its slot
    /// (a driver's ring of buffers keeps its slots warm), without a table
    /// lookup; a collision only means a new slot. With each slot, its key's
    /// tag: a new IOVA is told from the entry's without reading the slot
    /// (a cold line).
    recent: Vec<(u32, u32)>,
    seq: u64,
    stale: Vec<StaleReport>,
    objects: HashMap<u64, ObjectRecord>,
    processes: Vec<ProcessInfo>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            events: Vec::new(),
            sites: Vec::new(),
            site_ids: HashMap::default(),
            recent_sites: [(0, NO_SITE); RECENT_SITES],
            recent_next: 0,
            last_site: NO_SITE,
            free: Vec::new(),
            live: HashMap::default(),
            idle_head: NIL,
            idle_tail: NIL,
            idle_count: 0,
            links: Vec::new(),
            recent: Vec::new(),
            seq: 0,
            stale: Vec::new(),
            objects: HashMap::new(),
            processes: Vec::new(),
        }
    }
}

/// No slot (an end of the idle list).
const NIL: u32 = u32::MAX;

/// A slot's place in the idle list: the slots unmapped just before and
/// just after it ([`NIL`] at the ends); `prev` is [`NOT_IDLE`] while the
/// slot is not in the list (mapped, or free).
#[derive(Debug, Clone, Copy)]
struct IdleLink {
    prev: u32,
    next: u32,
}

/// `IdleLink::prev` of a slot not in the idle list.
const NOT_IDLE: u32 = u32::MAX - 1;

impl IdleLink {
    const OUT: IdleLink = IdleLink {
        prev: NOT_IDLE,
        next: NIL,
    };
}

/// The sanitizer of one front end (one program run, or one process in
/// preload mode).
pub struct Sanitizer {
    cfg: SanitizerConfig,
    /// Events stored per slot: `depth` rounded up to a power of two, so
    /// that ring positions are a mask, not a division.
    ring: usize,
    clock: EventClock,
    /// Histories recorded without a container's or context's lock (direct
    /// calls) and those of retired recorders (see [`Recorder`]).
    inner: Mutex<Inner>,
    /// Containers whose [`Recorder`] lives under their own lock: questions
    /// take each one's lock in turn (in this order), then `inner`'s.
    containers: Mutex<Vec<std::sync::Weak<crate::container::Container>>>,
    /// iommufd contexts whose [`Recorder`] lives under their own lock:
    /// questions take each one's lock in turn (in this order), after the
    /// containers' and before `inner`'s.
    iommufds: Mutex<Vec<std::sync::Weak<Mutex<crate::iommufd::State>>>>,
}

/// The storage of a slot's events (`Sanitizer::ring`, `depth`, `max_regions`).
#[derive(Debug, Clone, Copy)]
struct Geometry {
    depth: usize,
    ring: usize,
    max_regions: usize,
}

/// The history of one type1 container or iommufd context, kept in its own
/// state (under the lock every map and unmap takes already), so that
/// recording takes no lock of its own. When that state goes (a container's
/// IOMMU state: all groups gone, the file closed; a context's state: the
/// context dropped, and no question reading it), its histories move into
/// the sanitizer's shared tables, where reports still find them.
pub struct Recorder {
    sanitizer: Arc<Sanitizer>,
    /// Copies of the sanitizer's clock and geometry (read per event: no
    /// pointer chase to the shared `Sanitizer`).
    clock: EventClock,
    geo: Geometry,
    inner: Inner,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("slots", &self.inner.slots.len())
            .finish()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let retired = std::mem::take(&mut self.inner);
        self.sanitizer.retire(retired);
    }
}

impl Recorder {
    /// Inlined into each `record_*` below, so that each is specialised for
    /// its kind of event (the hot two: map and unmap).
    #[inline(always)]
    fn push(
        &mut self,
        container: u64,
        iova: u64,
        kind: EventKind,
        hint: HistorySlot,
        carried: bool,
    ) -> HistorySlot {
        self.push_via(container, iova, kind, Via::Type1, hint, carried)
    }

    #[inline(always)]
    fn push_via(
        &mut self,
        container: u64,
        iova: u64,
        kind: EventKind,
        via: Via,
        hint: HistorySlot,
        carried: bool,
    ) -> HistorySlot {
        let at = self.clock.now();
        self.inner
            .push(&self.geo, at, container, iova, kind, via, hint, carried)
    }

    /// `IOMMU_IOAS_MAP` (or `IOMMU_IOAS_COPY`, `copy`) made the area at
    /// `iova` of the IOAS whose [`iommufd_history_key`] is `key`; the area
    /// carries the slot returned (see [`Sanitizer::record_ioas_map`]).
    #[inline]
    pub fn record_area_map(
        &mut self,
        key: u64,
        iova: u64,
        uptr: u64,
        size: u64,
        prot: Prot,
        copy: bool,
    ) -> HistorySlot {
        let (kind, via) = area_map(uptr, size, prot, copy);
        self.push_via(key, iova, kind, via, HistorySlot::NONE, true)
    }

    /// `IOMMU_IOAS_UNMAP` removed the area at `iova` whose slot is `slot`
    /// (`released`: the context was closed with it in place).
    #[inline]
    pub fn record_area_unmap_at(&mut self, slot: HistorySlot, key: u64, iova: u64, released: bool) {
        self.push_via(key, iova, area_gone(released), Via::Iommufd, slot, false);
    }

    /// The area at `head_iova` (slot `head`) of the IOAS whose key is
    /// `key` was cut in two at `tail_iova` (the type1 compatibility ioctls
    /// split an area for a partial unmap): the head's history goes on with
    /// the head's size, and the tail gets a history of its own that starts
    /// with the map that made its memory (the head's latest map event, its
    /// time and call site, for the tail's range); the slot the tail
    /// carries. Without the head's history (an area made before the
    /// sanitizer was installed), the tail's map is recorded as of now.
    #[allow(clippy::too_many_arguments)]
    pub fn record_area_split(
        &mut self,
        head: HistorySlot,
        key: u64,
        head_iova: u64,
        tail_iova: u64,
        tail_uptr: u64,
        tail_len: u64,
        prot: Prot,
    ) -> HistorySlot {
        let ring = self.geo.ring;
        let inner = &mut self.inner;
        let mut made_by = None;
        if let Some(r) = inner.slots.get_mut(head.0 as usize) {
            if r.used && r.container == key && r.iova == head_iova {
                r.size = tail_iova.wrapping_sub(head_iova);
                let base = head.0 as usize * ring;
                made_by = (0..r.len as usize)
                    .map(|k| (r.head as usize + r.len as usize - 1 - k) & (ring - 1))
                    .filter_map(|pos| inner.events.get(base + pos))
                    .find(|e| e.meta & 7 == 0)
                    .copied();
            }
        }
        let Some(map) = made_by else {
            return self.record_area_map(key, tail_iova, tail_uptr, tail_len, prot, false);
        };
        let (index, tag) = recent_index(key, tail_iova);
        let Some(slot) = inner.new_slot(index, tag, key, tail_iova, ring) else {
            return HistorySlot::NONE;
        };
        let i = slot as usize;
        let Some(r) = inner.slots.get_mut(i) else {
            return HistorySlot::NONE;
        };
        (r.size, r.vaddr, r.owner, r.mapped, r.len) = (tail_len, tail_uptr, map.meta >> 8, true, 1);
        if let Some(e) = inner.events.get_mut(i * ring) {
            *e = RawEvent {
                a: tail_uptr,
                b: tail_len,
                ..map
            };
        }
        HistorySlot(slot)
    }

    /// `MAP_DMA` made a mapping (see [`Sanitizer::record_map`]).
    #[inline]
    pub fn record_map(
        &mut self,
        container: u64,
        iova: u64,
        vaddr: u64,
        size: u64,
        prot: Prot,
    ) -> HistorySlot {
        let kind = EventKind::Map { vaddr, size, prot };
        self.push(container, iova, kind, HistorySlot::NONE, true)
    }

    /// `UNMAP_DMA` removed the mapping at `iova` (see
    /// [`Sanitizer::record_unmap_at`]).
    #[inline]
    pub fn record_unmap_at(&mut self, slot: HistorySlot, container: u64, iova: u64) {
        self.push(container, iova, EventKind::Unmap, slot, false);
    }

    /// The container was released with the mapping in place.
    pub fn record_released_at(&mut self, slot: HistorySlot, container: u64, iova: u64) {
        self.push(container, iova, EventKind::Released, slot, false);
    }

    /// The vaddr of the mapping was invalidated.
    pub fn record_invalidate_vaddr_at(&mut self, slot: HistorySlot, container: u64, iova: u64) {
        self.push(container, iova, EventKind::InvalidateVaddr, slot, false);
    }

    /// The vaddr of the mapping was updated.
    pub fn record_update_vaddr_at(
        &mut self,
        slot: HistorySlot,
        container: u64,
        iova: u64,
        vaddr: u64,
    ) {
        let kind = EventKind::UpdateVaddr { vaddr };
        self.push(container, iova, kind, slot, false);
    }
}

/// The event and its path of an iommufd area's map (`copy`: made by
/// `IOMMU_IOAS_COPY`).
#[inline(always)]
fn area_map(uptr: u64, size: u64, prot: Prot, copy: bool) -> (EventKind, Via) {
    let via = if copy { Via::IommufdCopy } else { Via::Iommufd };
    let kind = EventKind::Map {
        vaddr: uptr,
        size,
        prot,
    };
    (kind, via)
}

/// The event of an iommufd area's end: an unmap, or its release with its
/// IOAS or context (`released`).
#[inline(always)]
fn area_gone(released: bool) -> EventKind {
    if released {
        EventKind::Released
    } else {
        EventKind::Unmap
    }
}

/// The tables a question reads: each registered container's (under its
/// lock) and the shared ones, the guards held until the answer is made.
struct Histories<'a> {
    containers: Vec<std::sync::MutexGuard<'a, crate::type1::state::State>>,
    iommufds: Vec<std::sync::MutexGuard<'a, crate::iommufd::State>>,
    shared: MutexGuard<'a, Inner>,
}

impl Histories<'_> {
    fn parts(&self) -> Vec<&Inner> {
        let mut parts: Vec<&Inner> = self
            .containers
            .iter()
            .filter_map(|st| st.history().map(|r| &r.inner))
            .collect();
        parts.extend(
            self.iommufds
                .iter()
                .filter_map(|st| st.history.as_ref().map(|r| &r.inner)),
        );
        parts.push(&self.shared);
        parts
    }

    fn parts_mut(&mut self) -> Vec<&mut Inner> {
        let mut parts: Vec<&mut Inner> = self
            .containers
            .iter_mut()
            .filter_map(|st| st.history_mut().map(|r| &mut r.inner))
            .collect();
        parts.extend(
            self.iommufds
                .iter_mut()
                .filter_map(|st| st.history.as_mut().map(|r| &mut r.inner)),
        );
        parts.push(&mut self.shared);
        parts
    }
}

impl std::fmt::Debug for Sanitizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sanitizer").field("cfg", &self.cfg).finish()
    }
}

impl Sanitizer {
    /// A sanitizer with nothing recorded; times are reported from now.
    pub fn new(cfg: SanitizerConfig) -> Arc<Self> {
        // (A ring's head and length are 16 bits.)
        let depth = cfg.depth.clamp(1, 1 << 15);
        Arc::new(Self {
            cfg: SanitizerConfig {
                depth,
                max_regions: cfg.max_regions.max(1),
            },
            ring: depth.next_power_of_two(),
            clock: EventClock::new(),
            inner: Mutex::new(Inner::default()),
            containers: Mutex::new(Vec::new()),
            iommufds: Mutex::new(Vec::new()),
        })
    }

    fn geometry(&self) -> Geometry {
        Geometry {
            depth: self.cfg.depth,
            ring: self.ring,
            max_regions: self.cfg.max_regions,
        }
    }

    /// Questions read `container`'s recorder (under its lock) from now on.
    pub(crate) fn register(&self, container: &Arc<crate::container::Container>) {
        let mut list = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|c| c.strong_count() > 0);
        list.push(Arc::downgrade(container));
    }

    /// Questions read the recorder in an iommufd context's `state` (under
    /// its lock) from now on. The state, not the context: a question holds
    /// what it reads, and must never be the one that drops a context (its
    /// drop releases the devices and pins, on the thread that drops it).
    pub(crate) fn register_iommufd(&self, state: &Arc<Mutex<crate::iommufd::State>>) {
        let mut list = self.iommufds.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|c| c.strong_count() > 0);
        list.push(Arc::downgrade(state));
    }

    /// A recorder for the type1 state of a registered container, or the
    /// state of a registered iommufd context, which keeps it under its own
    /// lock.
    pub(crate) fn recorder(self: &Arc<Self>) -> Recorder {
        Recorder {
            sanitizer: self.clone(),
            clock: self.clock,
            geo: self.geometry(),
            inner: Inner::default(),
        }
    }

    /// A container's recorder went (its type1 state was released): its
    /// histories join the shared tables, after those already there.
    fn retire(&self, mut from: Inner) {
        let geo = self.geometry();
        let mut to = self.lock();
        let mut order: Vec<(u64, u32)> = (0u32..)
            .zip(&from.slots)
            .filter(|(_, r)| r.used)
            .map(|(slot, r)| (r.seq, slot))
            .collect();
        order.sort_unstable();
        for (_, slot) in order {
            let Some(r) = from.slots.get(slot as usize).copied() else {
                continue;
            };
            let Some(new) = to.take_slot(r.container, r.iova, geo.ring) else {
                break;
            };
            let base = slot as usize * geo.ring;
            let new_base = new as usize * geo.ring;
            for k in 0..geo.ring {
                let Some(mut e) = from.events.get(base + k).copied() else {
                    break;
                };
                if let Some(site) = from.sites.get(e.site as usize) {
                    e.site = to.intern_site(site);
                }
                if let Some(dst) = to.events.get_mut(new_base + k) {
                    *dst = e;
                }
            }
            {
                let Some(t) = to.slots.get_mut(new as usize) else {
                    continue;
                };
                (t.size, t.vaddr, t.mapped) = (r.size, r.vaddr, r.mapped);
                (t.head, t.len, t.dropped) = (r.head, r.len, r.dropped);
                t.owner = r.owner;
            }
            if r.mapped {
                to.live.insert((r.container, r.iova), new);
            } else {
                to.enqueue_idle(new);
            }
        }
        from.stale.clear();
        to.forget_idle(geo.max_regions);
    }

    /// Runs `f` on every table a question reads (see [`Histories`]): the
    /// registered containers' locks are taken in registration order, then
    /// the registered iommufd contexts', then the shared one (recording takes at most one container's lock, then
    /// maybe the shared one: no cycle).
    fn with_histories<R>(&self, f: impl FnOnce(&mut Histories<'_>, &Calibration) -> R) -> R {
        let list: Vec<Arc<crate::container::Container>> = self
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        let ctxs: Vec<Arc<Mutex<crate::iommufd::State>>> = self
            .iommufds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        let cal = self.clock.calibrate();
        let r = {
            let mut h = Histories {
                containers: list.iter().map(|c| c.lock()).collect(),
                iommufds: ctxs
                    .iter()
                    .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()))
                    .collect(),
                shared: self.lock(),
            };
            f(&mut h, &cal)
        };
        // The guards are gone: a container dropped with `list` retires its
        // recorder into the shared tables, and so does the state of a
        // context that went meanwhile (its release, and the events of it,
        // ran where the context was dropped).
        drop(list);
        drop(ctxs);
        r
    }

    /// Histories in the shared tables (for tests: recorders keep theirs
    /// until they retire).
    #[cfg(test)]
    pub(crate) fn shared_history_count(&self) -> usize {
        self.lock().slots.iter().filter(|r| r.used).count()
    }

    /// Settings.
    pub fn config(&self) -> SanitizerConfig {
        self.cfg
    }

    /// When recording started (times in reports count from here).
    pub fn start(&self) -> Instant {
        self.clock.calibrate().instant(0)
    }

    /// Events are timed with the TSC (else with `Instant`).
    pub fn uses_tsc(&self) -> bool {
        self.clock.uses_tsc()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is a single step; a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, container: u64, iova: u64, kind: EventKind) -> HistorySlot {
        self.push_via(container, iova, kind, Via::Type1, HistorySlot::NONE, false)
    }

    /// Records `kind` on the mapping at (`container`, `iova`): in `hint`
    /// when that is its slot, else the live one found by key (or a new one;
    /// a map always makes a new one). `carried`: the caller keeps the slot a
    /// map returns (so the mapping needs no index). Returns the slot.
    fn push_via(
        &self,
        container: u64,
        iova: u64,
        kind: EventKind,
        via: Via,
        hint: HistorySlot,
        carried: bool,
    ) -> HistorySlot {
        let at = self.clock.now();
        let geo = self.geometry();
        self.lock()
            .push(&geo, at, container, iova, kind, via, hint, carried)
    }

    /// `MAP_DMA` made a mapping; returns where its history is, for the
    /// mapping to keep (see [`Sanitizer::record_unmap_at`]).
    pub fn record_map(
        &self,
        container: u64,
        iova: u64,
        vaddr: u64,
        size: u64,
        prot: Prot,
    ) -> HistorySlot {
        let kind = EventKind::Map { vaddr, size, prot };
        self.push_via(container, iova, kind, Via::Type1, HistorySlot::NONE, true)
    }

    /// `UNMAP_DMA` removed the mapping at `iova`, whose history is at
    /// `slot` (what [`Sanitizer::record_map`] returned for it).
    pub fn record_unmap_at(&self, slot: HistorySlot, container: u64, iova: u64) {
        self.push_via(container, iova, EventKind::Unmap, Via::Type1, slot, false);
    }

    /// The container was released with the mapping at `iova` (history at
    /// `slot`) in place.
    pub fn record_released_at(&self, slot: HistorySlot, container: u64, iova: u64) {
        self.push_via(
            container,
            iova,
            EventKind::Released,
            Via::Type1,
            slot,
            false,
        );
    }

    /// The vaddr of the mapping at `iova` (history at `slot`) was
    /// invalidated.
    pub fn record_invalidate_vaddr_at(&self, slot: HistorySlot, container: u64, iova: u64) {
        self.push_via(
            container,
            iova,
            EventKind::InvalidateVaddr,
            Via::Type1,
            slot,
            false,
        );
    }

    /// The vaddr of the mapping at `iova` (history at `slot`) was updated.
    pub fn record_update_vaddr_at(&self, slot: HistorySlot, container: u64, iova: u64, vaddr: u64) {
        let kind = EventKind::UpdateVaddr { vaddr };
        self.push_via(container, iova, kind, Via::Type1, slot, false);
    }

    /// `IOMMU_IOAS_MAP` (or `IOMMU_IOAS_COPY`, `copy`) made the area at
    /// `iova` of the IOAS whose [`iommufd_history_key`] is `key`.
    pub fn record_ioas_map(
        &self,
        key: u64,
        iova: u64,
        uptr: u64,
        size: u64,
        prot: Prot,
        copy: bool,
    ) {
        let (kind, via) = area_map(uptr, size, prot, copy);
        self.push_via(key, iova, kind, via, HistorySlot::NONE, false);
    }

    /// `IOMMU_IOAS_UNMAP` removed the area at `iova` (`released`: the
    /// context was closed with it in place).
    pub fn record_ioas_unmap(&self, key: u64, iova: u64, released: bool) {
        self.push_via(
            key,
            iova,
            area_gone(released),
            Via::Iommufd,
            HistorySlot::NONE,
            false,
        );
    }

    /// `UNMAP_DMA` removed the mapping at `iova`.
    pub fn record_unmap(&self, container: u64, iova: u64) {
        self.push(container, iova, EventKind::Unmap);
    }

    /// The vaddr of the mapping at `iova` was invalidated.
    pub fn record_invalidate_vaddr(&self, container: u64, iova: u64) {
        self.push(container, iova, EventKind::InvalidateVaddr);
    }

    /// The vaddr of the mapping at `iova` was updated.
    pub fn record_update_vaddr(&self, container: u64, iova: u64, vaddr: u64) {
        self.push(container, iova, EventKind::UpdateVaddr { vaddr });
    }

    /// The container was released with the mapping at `iova` in place.
    pub fn record_released(&self, container: u64, iova: u64) {
        self.push(container, iova, EventKind::Released);
    }

    /// A process (`owner`, a [`Sanitizer::note_process`] index; `None`:
    /// the only one) is about to unmap or replace `[vaddr, vaddr + len)`
    /// of its address space. Records a stale event on each live mapping
    /// whose user range it overlaps and whose memory is that process's (it
    /// made the mapping, or its latest vaddr update, whatever container
    /// holds it and whoever holds that container), and returns them (to be
    /// reported now).
    pub fn memory_going_away(
        &self,
        owner: Option<u32>,
        vaddr: u64,
        len: u64,
        cause: StaleCause,
    ) -> Vec<StaleReport> {
        let end = vaddr.saturating_add(len);
        let geo = self.geometry();
        let site = current_site();
        let now = Instant::now();
        self.with_histories(|h, cal| {
            let mut hits: Vec<(u64, u64, u64, u64, usize, u32)> = Vec::new();
            let mut parts = h.parts_mut();
            for (p, inner) in parts.iter().enumerate() {
                for (slot, r) in (0u32..).zip(&inner.slots) {
                    let c = r.container;
                    if !r.used || !r.mapped || owner.is_some_and(|p| p != r.owner) {
                        continue;
                    }
                    let r_end = r.vaddr.saturating_add(r.size);
                    if r.vaddr < end && vaddr < r_end {
                        let lo = r.vaddr.max(vaddr);
                        hits.push((c, r.iova, lo, r_end.min(end) - lo, p, slot));
                    }
                }
            }
            hits.sort_unstable();
            let at = self.clock.now();
            for &(c, iova, lo, n, p, slot) in &hits {
                let kind = EventKind::Stale {
                    cause,
                    vaddr: lo,
                    len: n,
                };
                if let Some(inner) = parts.get_mut(p) {
                    inner.push(
                        &geo,
                        at,
                        c,
                        iova,
                        kind,
                        Via::Type1,
                        HistorySlot(slot),
                        false,
                    );
                }
            }
            drop(parts);
            let parts = h.parts();
            let mut out = Vec::new();
            for (c, iova, lo, n, _, _) in hits {
                let places = instances_of(&parts, c, iova, geo.ring);
                if places.is_empty() {
                    continue;
                }
                out.push(StaleReport {
                    at: now,
                    cause,
                    vaddr: lo,
                    len: n,
                    site: site.clone(),
                    region: view_of(&parts, &places, u64::MAX, &geo, cal),
                });
            }
            h.shared.stale.extend(out.iter().cloned());
            out
        })
    }

    /// Does process `owner` own a live mapping (see
    /// [`Sanitizer::memory_going_away`])? A cheap question first, so that
    /// a front end captures a call site only when it may be reported.
    pub fn owns_live_mappings(&self, owner: u32) -> bool {
        self.with_histories(|h, _| {
            h.parts().iter().any(|inner| {
                inner
                    .slots
                    .iter()
                    .any(|r| r.used && r.mapped && r.owner == owner)
            })
        })
    }

    /// Every stale mapping found so far, oldest first.
    pub fn stale_reports(&self) -> Vec<StaleReport> {
        self.lock().stale.clone()
    }

    /// The region at (`container`, `iova`) as it is now.
    fn region_view(&self, container: u64, iova: u64) -> Option<RegionView> {
        let geo = self.geometry();
        self.with_histories(|h, cal| {
            let parts = h.parts();
            let places = instances_of(&parts, container, iova, geo.ring);
            (!places.is_empty()).then(|| view_of(&parts, &places, u64::MAX, &geo, cal))
        })
    }

    /// The region whose mapping starts at `iova` in `container`, as it is
    /// now.
    pub fn region(&self, container: u64, iova: u64) -> Option<RegionView> {
        self.region_view(container, iova)
    }

    /// What the history says about `iova` at time `at` (a fault's time):
    /// the regions that covered it, or the nearest ones.
    pub fn explain(&self, iova: u64, at: Instant) -> IovaHistory {
        let geo = self.geometry();
        self.with_histories(|h, cal| {
            let at = cal.ticks(at);
            let parts = h.parts();
            // Per container, its regions in IOVA order (report time: sorting
            // here keeps recording O(1)).
            let by_container = regions_of(&parts, geo.ring);
            let view = |places: &Vec<Place>| view_of(&parts, places, at, &geo, cal);
            let mut known = Vec::new();
            let mut nearest = Vec::new();
            for regions in by_container.values() {
                let before = known.len();
                for (start, r) in regions.range(..=iova).rev() {
                    let v = view(r);
                    if !v.events.is_empty() && iova - start < v.size.max(1) {
                        known.push(v);
                    }
                }
                if known.len() > before {
                    continue;
                }
                let below = regions
                    .range(..=iova)
                    .rev()
                    .map(|(_, r)| view(r))
                    .find(|v| !v.events.is_empty());
                let above = regions
                    .range(iova.saturating_add(1)..)
                    .map(|(_, r)| view(r))
                    .find(|v| !v.events.is_empty());
                nearest.extend(below);
                nearest.extend(above);
            }
            if known.is_empty() {
                IovaHistory::NeverMapped { nearest }
            } else {
                // Most recently active first.
                known.sort_by_key(|v| std::cmp::Reverse(v.events.last().map(|e| e.at)));
                IovaHistory::Known(known)
            }
        })
    }

    /// A VFIO file was opened (`key`: the front end's object key).
    pub fn note_object(&self, key: u64, what: String) {
        self.lock().objects.insert(
            key,
            ObjectRecord {
                what,
                site: current_site(),
                irqs: None,
                process: current_process(),
            },
        );
    }

    /// `VFIO_DEVICE_SET_IRQS` on `key` installed eventfds (`what` says
    /// which interrupts), or removed them all (`what` = `None`).
    pub fn note_irqs(&self, key: u64, what: Option<String>) {
        if let Some(o) = self.lock().objects.get_mut(&key) {
            o.irqs = what.map(|w| (w, current_site()));
        }
    }

    /// After a successful ioctl on the device file `key`: notes what
    /// `VFIO_DEVICE_SET_IRQS` installed (eventfd triggers) or removed.
    pub fn note_device_ioctl(
        &self,
        key: u64,
        request: u64,
        arg: u64,
        user: &dyn crate::memory::UserMemory,
    ) {
        use vfio_bindings::bindings::vfio::{
            VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
        };
        if request != crate::uapi::VFIO_DEVICE_SET_IRQS {
            return;
        }
        // struct vfio_irq_set: argsz, flags, index, start, count, data[].
        let mut hdr = [0u8; 20];
        if user.read(arg, &mut hdr).is_err() {
            return;
        }
        let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let (flags, index, start, count) = (word(4), word(8), word(12), word(16));
        if flags & VFIO_IRQ_SET_ACTION_TRIGGER == 0 {
            return;
        }
        if flags & VFIO_IRQ_SET_DATA_NONE != 0 && count == 0 {
            self.note_irqs(key, None);
        } else if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 && count > 0 {
            // Descriptors of -1 remove triggers: all of them, nothing left.
            let n = count.min(1024) as usize;
            let mut fds = vec![0u8; n * 4];
            if user.read(arg + 20, &mut fds).is_err() {
                return;
            }
            let any = fds
                .chunks_exact(4)
                .any(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) >= 0);
            if !any {
                self.note_irqs(key, None);
                return;
            }
            self.note_irqs(
                key,
                Some(format!(
                    "eventfds for IRQ index {index}, vectors {start}..{}",
                    u64::from(start) + u64::from(count)
                )),
            );
        }
    }

    /// The file `key` was closed.
    pub fn forget_object(&self, key: u64) {
        self.lock().objects.remove(&key);
    }

    /// What was recorded of an open file.
    pub fn object(&self, key: u64) -> Option<ObjectRecord> {
        self.lock().objects.get(&key).cloned()
    }

    /// A process of the run (a new one at each exec); returns its index
    /// for [`set_current_process`].
    pub fn note_process(&self, pid: i32, program: String) -> u32 {
        let mut inner = self.lock();
        inner.processes.push(ProcessInfo {
            pid,
            program,
            end: None,
        });
        u32::try_from(inner.processes.len() - 1).unwrap_or(u32::MAX)
    }

    /// Process `pid` ended as `end`: noted on its latest image (the
    /// earlier ones ended by exec; a later process may reuse the pid and
    /// is noted anew).
    pub fn note_process_end(&self, pid: i32, end: ProcessEnd) {
        let mut inner = self.lock();
        if let Some(p) = inner
            .processes
            .iter_mut()
            .rev()
            .find(|p| p.pid == pid && p.end.is_none())
        {
            p.end = Some(end);
        }
    }

    /// The processes noted, by index.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        self.lock().processes.clone()
    }

    /// Every region recorded now (live and remembered), by container and
    /// IOVA, with all its events kept.
    pub fn regions(&self) -> Vec<RegionView> {
        let geo = self.geometry();
        self.with_histories(|h, cal| {
            let parts = h.parts();
            regions_of(&parts, geo.ring)
                .values()
                .flat_map(|m| m.values())
                .map(|places| view_of(&parts, places, u64::MAX, &geo, cal))
                .collect()
        })
    }

    /// Regions recorded now (live and remembered), for tests and reports.
    pub fn region_count(&self) -> usize {
        let ring = self.ring;
        self.with_histories(|h, _| {
            regions_of(&h.parts(), ring)
                .values()
                .map(BTreeMap::len)
                .sum()
        })
    }
}

impl Inner {
    /// Records `kind` at (`container`, `iova`) (see
    /// [`Sanitizer::push_via`]). Inlined into each caller: a type1
    /// recorder's `record_*`, where `kind` is known and the match on it
    /// folds away, and the shared tables' one `push_via`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn push(
        &mut self,
        geo: &Geometry,
        at: u64,
        container: u64,
        iova: u64,
        kind: EventKind,
        via: Via,
        hint: HistorySlot,
        carried: bool,
    ) -> HistorySlot {
        let (site, process) = self.current_call();
        let event = RawEvent::with_process_bits(at, kind, via, site, process);
        let is_map = matches!(kind, EventKind::Map { .. });
        // (A type1 map passes no hint: with `hint` a constant this folds.)
        let hinted = hint != HistorySlot::NONE
            && self
                .slots
                .get(hint.0 as usize)
                .is_some_and(|r| r.used && r.container == container && r.iova == iova);
        // Whether the slot is new (no event yet: the event goes first in
        // its ring, no ring arithmetic).
        let mut fresh = false;
        let slot = if hinted {
            hint.0
        } else {
            let found = if is_map {
                // A map: the key hashed once, for the lookup and for a new
                // slot's entry; both inlined here (every map of a new IOVA
                // takes a slot).
                let (index, tag) = recent_index(container, iova);
                match self.continue_region(index, tag, container, iova) {
                    Some(slot) => Some(slot),
                    None => {
                        fresh = true;
                        self.new_slot(index, tag, container, iova, geo.ring)
                    }
                }
            } else {
                // Out of line: the engine's calls other than a map carry
                // their slot, so this is rare, and inlined it would only
                // grow the engine's unmap.
                self.lost_slot(container, iova, geo.ring)
            };
            match found {
                Some(slot) => slot,
                None => return HistorySlot::NONE,
            }
        };
        let i = slot as usize;
        let Some(r) = self.slots.get_mut(i) else {
            return HistorySlot::NONE;
        };
        match kind {
            EventKind::Map { vaddr, size, .. } => {
                r.size = size;
                r.vaddr = vaddr;
                r.owner = event.meta >> 8;
                r.mapped = true;
                if !carried {
                    self.live.insert((container, iova), slot);
                }
            }
            EventKind::UpdateVaddr { vaddr } => {
                r.vaddr = vaddr;
                r.owner = event.meta >> 8;
            }
            EventKind::Unmap | EventKind::Released => {
                if std::mem::take(&mut r.mapped) && !self.live.is_empty() {
                    self.live.remove(&(container, iova));
                }
            }
            EventKind::InvalidateVaddr | EventKind::Stale { .. } => {}
        }
        // The ring: overwrite the oldest when full.
        let ring = geo.ring;
        let mask = ring - 1;
        let pos = if fresh {
            // `take_slot` made it empty, its head at 0.
            r.len = 1;
            0
        } else if r.len as usize == ring {
            let p = r.head as usize;
            r.head = ((p + 1) & mask) as u16;
            r.dropped += 1;
            p
        } else {
            r.len += 1;
            (r.head as usize + r.len as usize - 1) & mask
        };
        // An unmapped slot waits in the idle list (one that got no map
        // event, an unmap of something never seen mapped, from the start).
        let idle = !r.mapped;
        if let Some(e) = self.events.get_mut(i * ring + pos) {
            // Field by field, as in `take_slot` (no stack copy read back
            // in wider loads than the stores that made it).
            e.at = event.at;
            e.a = event.a;
            e.b = event.b;
            e.site = event.site;
            e.meta = event.meta;
        }
        if idle {
            self.enqueue_idle(slot);
            self.forget_idle(geo.max_regions);
        }
        HistorySlot(slot)
    }

    /// The call this thread is serving: the index in `sites` of its call
    /// site ([`NO_SITE`] if none) and its process (see
    /// [`set_current_process`]). One read of thread-local storage, that
    /// checks no state: the site is told by its address when it is one of
    /// the sites interned last (`recent_sites`), else read in place (no
    /// reference count changes) and interned out of line.
    #[inline(always)]
    fn current_call(&mut self) -> (u32, u32) {
        let (addr, process) = current::call();
        // `u32::MAX` (none said) and indices past the field: none.
        let process = process.min(NO_PROCESS);
        if addr == 0 {
            return (NO_SITE, process);
        }
        // One of the sites interned last (`recent_sites`; never 0 here).
        if let Some(&(_, id)) = self.recent_sites.iter().find(|(a, _)| *a == addr) {
            self.last_site = id;
            return (id, process);
        }
        (self.current_site_slow(), process)
    }

    /// The index of the visible call site (interned on first sight),
    /// [`NO_SITE`] if none.
    #[inline(never)]
    fn current_site_slow(&mut self) -> u32 {
        current::with_visible_site(|s| self.intern_site(s)).unwrap_or(NO_SITE)
    }

    /// The index of `site` in `sites`, added if new ([`NO_SITE`] when the
    /// table is full).
    #[inline]
    fn intern_site(&mut self, site: &Arc<CallSite>) -> u32 {
        let addr = Arc::as_ptr(site) as usize;
        if let Some(&(_, id)) = self.recent_sites.iter().find(|(a, _)| *a == addr) {
            self.last_site = id;
            return id;
        }
        self.intern_new_site(site)
    }

    #[inline(never)]
    fn intern_new_site(&mut self, site: &Arc<CallSite>) -> u32 {
        // The front ends capture a new `CallSite` per call: the same frames
        // as the last call's are told by comparing them, not hashing.
        if self
            .sites
            .get(self.last_site as usize)
            .is_some_and(|s| **s == **site)
        {
            return self.last_site;
        }
        let id = match self.site_ids.get(&**site) {
            Some(&id) => id,
            None if self.sites.len() < MAX_SITES => {
                let id = self.sites.len() as u32;
                self.sites.push(Arc::clone(site));
                self.site_ids.insert(Arc::clone(site), id);
                id
            }
            None => return NO_SITE,
        };
        self.last_site = id;
        // The address of the `CallSite` the table holds for `id` (the
        // caller's may be another with the same frames).
        let addr = self
            .sites
            .get(id as usize)
            .map_or(0, |s| Arc::as_ptr(s) as usize);
        self.recent_sites[self.recent_next] = (addr, id);
        self.recent_next = (self.recent_next + 1) % RECENT_SITES;
        id
    }

    /// The live slot of the mapping at (`container`, `iova`): from the
    /// index of mappings whose owner does not carry their slot, else by a
    /// scan (only for a caller that lost its slot: not on the engine's
    /// paths).
    fn live_slot(&self, container: u64, iova: u64) -> Option<u32> {
        if let Some(&slot) = self.live.get(&(container, iova)) {
            return Some(slot);
        }
        (0u32..).zip(&self.slots).find_map(|(slot, r)| {
            (r.used && r.mapped && r.container == container && r.iova == iova).then_some(slot)
        })
    }

    /// The slot of an event other than a map whose caller did not carry
    /// a valid one: the live mapping's (see [`Inner::live_slot`]), else a
    /// new history (an event at a mapping never seen mapped).
    #[inline(never)]
    fn lost_slot(&mut self, container: u64, iova: u64, ring: usize) -> Option<u32> {
        if let Some(slot) = self.live_slot(container, iova) {
            return Some(slot);
        }
        let (index, tag) = recent_index(container, iova);
        self.new_slot(index, tag, container, iova, ring)
    }

    /// A slot for a new history at (`container`, `iova`), whose `recent`
    /// entry is `index` with `tag` (see [`recent_index`]): a free one (its
    /// old events stay until overwritten: `len` says none is there), or a
    /// new one.
    #[inline(always)]
    fn new_slot(
        &mut self,
        index: usize,
        tag: u32,
        container: u64,
        iova: u64,
        ring: usize,
    ) -> Option<u32> {
        let slot = self.take_slot(container, iova, ring)?;
        if self.recent.is_empty() {
            self.recent = vec![(u32::MAX, 0); RECENT];
        }
        if let Some(r) = self.recent.get_mut(index) {
            *r = (slot, tag);
        }
        Some(slot)
    }

    /// The slot of the region at (`container`, `iova`), whose `recent`
    /// entry is `index` with `tag`, if it was made lately and is not mapped
    /// now (a map there continues its history); taken off the idle list.
    #[inline(always)]
    fn continue_region(
        &mut self,
        index: usize,
        tag: u32,
        container: u64,
        iova: u64,
    ) -> Option<u32> {
        let &(slot, seen) = self.recent.get(index)?;
        if seen != tag {
            return None;
        }
        let r = self.slots.get_mut(slot as usize)?;
        if !r.used || r.mapped || r.container != container || r.iova != iova {
            return None;
        }
        self.unlink_idle(slot);
        Some(slot)
    }

    /// Puts unmapped `slot` at the end of the idle list (if it is not in
    /// it).
    #[inline]
    fn enqueue_idle(&mut self, slot: u32) {
        let tail = self.idle_tail;
        match self.links.get_mut(slot as usize) {
            Some(l) if l.prev == NOT_IDLE => {
                *l = IdleLink {
                    prev: tail,
                    next: NIL,
                }
            }
            _ => return,
        }
        match self.links.get_mut(tail as usize) {
            Some(t) => t.next = slot,
            None => self.idle_head = slot,
        }
        self.idle_tail = slot;
        self.idle_count += 1;
    }

    /// Takes `slot` out of the idle list; false if it was not in it.
    #[inline]
    fn unlink_idle(&mut self, slot: u32) -> bool {
        let l = match self.links.get_mut(slot as usize) {
            Some(l) if l.prev != NOT_IDLE => std::mem::replace(l, IdleLink::OUT),
            _ => return false,
        };
        match self.links.get_mut(l.prev as usize) {
            Some(p) => p.next = l.next,
            None => self.idle_head = l.next,
        }
        match self.links.get_mut(l.next as usize) {
            Some(n) => n.prev = l.prev,
            None => self.idle_tail = l.prev,
        }
        self.idle_count -= 1;
        true
    }

    /// The idle list's slots, oldest first (for checks).
    #[cfg(test)]
    fn idle_slots(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = self.idle_head;
        while let Some(l) = self.links.get(at as usize) {
            out.push(at);
            at = l.next;
        }
        out
    }

    /// A slot for a new history at (`container`, `iova`): the free slot
    /// freed last (the tables grown by one when none is free).
    #[inline(always)]
    fn take_slot(&mut self, container: u64, iova: u64, ring: usize) -> Option<u32> {
        self.seq += 1;
        let fresh = Slot {
            container,
            iova,
            size: 0,
            vaddr: 0,
            seq: self.seq,
            used: true,
            mapped: false,
            head: 0,
            len: 0,
            owner: NO_PROCESS,
            dropped: 0,
        };
        match self.free.pop() {
            Some(slot) => {
                // Field by field, not `*r = fresh`: LLVM builds `fresh` on
                // the stack and copies it in 16-byte loads, which cannot be
                // forwarded from the narrower stores that built it (a
                // store-forwarding stall on every new region, the
                // hottest line of the recording in a `perf` profile).
                let r = self.slots.get_mut(slot as usize)?;
                r.container = fresh.container;
                r.iova = fresh.iova;
                r.size = 0;
                r.vaddr = 0;
                r.seq = fresh.seq;
                r.used = true;
                r.mapped = false;
                r.head = 0;
                r.len = 0;
                r.owner = NO_PROCESS;
                r.dropped = 0;
                Some(slot)
            }
            None => self.grow(fresh, ring),
        }
    }

    /// Adds slot `fresh` to the tables (with its links and a ring of
    /// events): until they have grown to the run's number of mappings.
    #[cold]
    #[inline(never)]
    fn grow(&mut self, fresh: Slot, ring: usize) -> Option<u32> {
        let slot = u32::try_from(self.slots.len()).ok()?;
        self.slots.push(fresh);
        self.links.push(IdleLink::OUT);
        self.events
            .resize_with(self.slots.len() * ring, RawEvent::default);
        Some(slot)
    }

    /// Forgets the mappings unmapped longest ago beyond `max`.
    #[inline]
    fn forget_idle(&mut self, max: usize) {
        while self.idle_count > max {
            let slot = self.idle_head;
            if !self.unlink_idle(slot) {
                break;
            }
            if let Some(r) = self.slots.get_mut(slot as usize) {
                r.used = false;
            }
            self.free.push(slot);
        }
    }

    /// The time (ticks) of the oldest event kept in `slot`: a region's
    /// histories follow each other, so this orders them across tables.
    fn first_at(&self, slot: u32, ring: usize) -> u64 {
        self.slots
            .get(slot as usize)
            .and_then(|r| self.events.get(slot as usize * ring + r.head as usize))
            .map_or(u64::MAX, |e| e.at)
    }
}

/// A history's place: which of the tables (an index into the parts of
/// [`Histories`]) and which slot there.
type Place = (usize, u32);

/// Every region of `parts`: per container, per first IOVA, its histories,
/// oldest first (report time: recording keeps no order).
fn regions_of(parts: &[&Inner], ring: usize) -> BTreeMap<u64, BTreeMap<u64, Vec<Place>>> {
    let mut order: Vec<(u64, u64, Place)> = Vec::new();
    for (p, inner) in parts.iter().enumerate() {
        for (slot, r) in (0u32..).zip(&inner.slots) {
            if r.used {
                order.push((inner.first_at(slot, ring), r.seq, (p, slot)));
            }
        }
    }
    order.sort_unstable();
    let mut out: BTreeMap<u64, BTreeMap<u64, Vec<Place>>> = BTreeMap::new();
    for (_, _, (p, slot)) in order {
        if let Some(r) = parts.get(p).and_then(|i| i.slots.get(slot as usize)) {
            out.entry(r.container)
                .or_default()
                .entry(r.iova)
                .or_default()
                .push((p, slot));
        }
    }
    out
}

/// The histories at (`container`, `iova`) in `parts`, oldest first.
fn instances_of(parts: &[&Inner], container: u64, iova: u64, ring: usize) -> Vec<Place> {
    let mut order: Vec<(u64, u64, Place)> = Vec::new();
    for (p, inner) in parts.iter().enumerate() {
        for (slot, r) in (0u32..).zip(&inner.slots) {
            if r.used && r.container == container && r.iova == iova {
                order.push((inner.first_at(slot, ring), r.seq, (p, slot)));
            }
        }
    }
    order.sort_unstable();
    order.into_iter().map(|(_, _, place)| place).collect()
}

/// The region whose histories are at `places` (oldest first) as it was at
/// `at` (ticks): their events in order, the last `depth` of them.
fn view_of(
    parts: &[&Inner],
    places: &[Place],
    at: u64,
    geo: &Geometry,
    cal: &Calibration,
) -> RegionView {
    let mut view = RegionView {
        container: 0,
        iova: 0,
        size: 0,
        mapped: false,
        events: Vec::new(),
        dropped: 0,
    };
    let ring = geo.ring;
    let mut raw: Vec<(&RawEvent, &[Arc<CallSite>])> = Vec::new();
    for &(p, slot) in places {
        let Some(inner) = parts.get(p) else {
            continue;
        };
        let Some(r) = inner.slots.get(slot as usize) else {
            continue;
        };
        (view.container, view.iova, view.size) = (r.container, r.iova, r.size);
        view.dropped += r.dropped;
        let base = slot as usize * ring;
        raw.extend((0..r.len as usize).filter_map(|k| {
            inner
                .events
                .get(base + ((r.head as usize + k) & (ring - 1)))
                .map(|e| (e, inner.sites.as_slice()))
        }));
    }
    // Histories follow each other: their events are in time order.
    raw.retain(|(e, _)| e.at <= at);
    let excess = raw.len().saturating_sub(geo.depth);
    view.dropped += excess as u64;
    view.events = raw[excess..]
        .iter()
        .map(|(e, sites)| e.event(cal, sites))
        .collect();
    view.mapped = view.events.iter().fold(false, |m, e| match e.kind {
        EventKind::Map { .. } => true,
        EventKind::Unmap | EventKind::Released => false,
        _ => m,
    });
    if let Some(size) = view.events.iter().rev().find_map(|e| match e.kind {
        EventKind::Map { size, .. } => Some(size),
        _ => None,
    }) {
        view.size = size;
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw() -> Prot {
        Prot {
            read: true,
            write: true,
        }
    }

    #[test]
    fn history_explains_use_after_unmap_and_never_mapped() {
        let s = Sanitizer::new(SanitizerConfig::default());
        let site = Arc::new(CallSite {
            frames: vec![Frame {
                addr: 0x401234,
                object: Some("/bin/prog".into()),
                offset: 0x1234,
            }],
        });
        with_call_site(Some(&site), || {
            s.record_map(1, 0x10000, 0x7000_0000, 0x2000, rw())
        });
        // Event times convert to `Instant` within tens of ns: questions
        // about a time between two events keep clear of both.
        let pause = || std::thread::sleep(std::time::Duration::from_millis(1));
        pause();
        let mapped_at = Instant::now();
        pause();
        s.record_unmap(1, 0x10000);
        pause();
        let after = Instant::now();
        // At the time between map and unmap: mapped.
        let IovaHistory::Known(v) = s.explain(0x11fff, mapped_at) else {
            panic!("not known")
        };
        assert_eq!(v.len(), 1);
        assert!(v[0].mapped);
        assert_eq!(v[0].events.len(), 1);
        assert_eq!(v[0].events[0].site.as_deref(), Some(&*site));
        // After the unmap: unmapped, both events, the unmap without a site.
        let IovaHistory::Known(v) = s.explain(0x10000, after) else {
            panic!("not known")
        };
        assert!(!v[0].mapped);
        assert_eq!(v[0].events.len(), 2);
        assert_eq!(v[0].events[1].kind, EventKind::Unmap);
        assert!(v[0].events[1].site.is_none());
        // Past the end: never mapped, the region is the nearest below.
        let IovaHistory::NeverMapped { nearest } = s.explain(0x12000, after) else {
            panic!("known")
        };
        assert_eq!(nearest.len(), 1);
        assert_eq!((nearest[0].iova, nearest[0].size), (0x10000, 0x2000));
    }

    #[test]
    fn rings_and_region_count_are_bounded() {
        let s = Sanitizer::new(SanitizerConfig {
            depth: 3,
            max_regions: 8,
        });
        for _ in 0..5 {
            s.record_map(1, 0, 0x1000, 0x1000, rw());
            s.record_unmap(1, 0);
        }
        let r = s.region(1, 0).unwrap();
        assert_eq!(r.events.len(), 3);
        assert_eq!(r.dropped, 7);
        // A live mapping is never evicted; idle ones are.
        s.record_map(1, 0x100_0000, 0x1000, 0x1000, rw());
        for i in 1..100u64 {
            s.record_map(1, i * 0x1000, 0x1000, 0x1000, rw());
            s.record_unmap(1, i * 0x1000);
        }
        // Two live mappings and at most 8 unmapped regions.
        assert!(s.region_count() <= 10, "{}", s.region_count());
        assert!(s.region(1, 0x100_0000).unwrap().mapped);
        assert!(s.region(1, 99 * 0x1000).is_some());
        assert!(s.region(1, 0x1000).is_none());
    }

    /// A forgotten region's slot and ring go to the next new region, which
    /// starts with no events (the old ones are not shown), and the table
    /// stops growing once it holds the live and remembered regions.
    #[test]
    fn forgotten_slots_are_reused_without_their_events() {
        let s = Sanitizer::new(SanitizerConfig {
            depth: 2,
            max_regions: 2,
        });
        for i in 0..50u64 {
            s.record_map(1, i * 0x1000, 0x1000 + i, 0x1000, rw());
            s.record_unmap(1, i * 0x1000);
        }
        assert_eq!(s.region_count(), 2);
        assert_eq!(s.lock().slots.len(), 3, "slots reused");
        s.record_map(1, 0x100_0000, 0x5000, 0x2000, rw());
        let r = s.region(1, 0x100_0000).unwrap();
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.dropped, 0);
        assert_eq!(r.size, 0x2000);
        assert!(r.mapped);
        // Three events in a ring of two: the oldest is dropped.
        s.record_invalidate_vaddr(1, 0x100_0000);
        s.record_update_vaddr(1, 0x100_0000, 0x9000);
        let r = s.region(1, 0x100_0000).unwrap();
        assert_eq!(
            r.events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            vec![
                EventKind::InvalidateVaddr,
                EventKind::UpdateVaddr { vaddr: 0x9000 }
            ]
        );
        assert_eq!(r.dropped, 1);
        let last = s.region(1, 49 * 0x1000).unwrap();
        assert_eq!(last.events.len(), 2);
        assert!(!last.mapped);
    }

    /// A slot that is not the mapping's (lost, or another mapping's) is
    /// not written: the event goes to the mapping found by its key.
    #[test]
    fn a_wrong_slot_falls_back_to_the_key() {
        let s = Sanitizer::new(SanitizerConfig::default());
        let a = s.record_map(1, 0x1000, 0x7000, 0x1000, rw());
        let b = s.record_map(1, 0x2000, 0x8000, 0x1000, rw());
        s.record_unmap_at(a, 1, 0x2000);
        s.record_unmap_at(HistorySlot::NONE, 1, 0x1000);
        let ra = s.region(1, 0x1000).unwrap();
        let rb = s.region(1, 0x2000).unwrap();
        assert!(!ra.mapped && !rb.mapped);
        assert_eq!(ra.events.len(), 2);
        assert_eq!(rb.events.len(), 2);
        assert_eq!(rb.events[1].kind, EventKind::Unmap);
        // The slot of a forgotten mapping is another mapping's later.
        let s = Sanitizer::new(SanitizerConfig {
            depth: 4,
            max_regions: 1,
        });
        let old = s.record_map(1, 0x1000, 0x7000, 0x1000, rw());
        s.record_unmap_at(old, 1, 0x1000);
        s.record_map(1, 0x2000, 0x8000, 0x1000, rw());
        s.record_unmap(1, 0x2000);
        let new = s.record_map(1, 0x3000, 0x9000, 0x1000, rw());
        assert_eq!(new, old, "the forgotten slot is reused");
        s.record_unmap_at(old, 1, 0x1000);
        assert!(s.region(1, 0x3000).unwrap().mapped);
        assert_eq!(s.region(1, 0x3000).unwrap().events.len(), 1);
        let _ = b;
    }

    /// A ring of buffers mapped and unmapped over and over keeps one slot
    /// per IOVA (each map continues its region's history there), and a slot
    /// mapped again leaves the idle list (unmapped, it goes to its end).
    #[test]
    fn a_ring_of_buffers_keeps_its_slots() {
        let s = Sanitizer::new(SanitizerConfig {
            depth: 4,
            max_regions: 8,
        });
        for n in 0..1000u64 {
            let iova = (n % 4) * 0x1000;
            let slot = s.record_map(1, iova, 0x7000 + iova, 0x1000, rw());
            s.record_unmap_at(slot, 1, iova);
        }
        {
            let inner = s.lock();
            assert_eq!(inner.slots.len(), 4);
            assert_eq!(inner.idle_count, 4);
            assert_eq!(inner.idle_slots(), [0, 1, 2, 3]);
        }
        let r = s.region(1, 0x3000).unwrap();
        assert_eq!(r.events.len(), 4);
        assert_eq!(r.dropped, 2 * 250 - 4);
        assert!(!r.mapped);
        // New regions push the ring's out, oldest first.
        for n in 0..6u64 {
            let iova = 0x10_0000 + n * 0x1000;
            let slot = s.record_map(1, iova, 0x7000, 0x1000, rw());
            s.record_unmap_at(slot, 1, iova);
        }
        assert_eq!(s.region_count(), 8);
        assert!(s.region(1, 0).is_none() && s.region(1, 0x1000).is_none());
        assert!(s.region(1, 0x2000).is_some() && s.region(1, 0x3000).is_some());
    }

    impl Inner {
        /// The module's invariants on the slot tables, checked.
        fn check(&self, max_regions: usize, depth: usize) {
            let idle = self.idle_slots();
            assert_eq!(idle.len(), self.idle_count);
            assert!(self.idle_count <= max_regions, "{}", self.idle_count);
            let mut seen = vec![false; self.slots.len()];
            let mut prev = NIL;
            for &slot in &idle {
                let r = &self.slots[slot as usize];
                assert!(r.used && !r.mapped, "slot {slot} idle but {r:?}");
                assert!(!std::mem::replace(&mut seen[slot as usize], true));
                assert_eq!(self.links[slot as usize].prev, prev);
                prev = slot;
            }
            assert_eq!(self.idle_tail, prev);
            for (slot, r) in (0u32..).zip(&self.slots) {
                let queued = self.links[slot as usize].prev != NOT_IDLE;
                assert_eq!(queued, seen[slot as usize]);
                // Every unmapped history in use waits in the list; free
                // slots are in `free`.
                assert_eq!(r.used && !r.mapped, queued, "slot {slot}: {r:?}");
                assert_eq!(!r.used, self.free.contains(&slot), "slot {slot}");
                assert!(r.len as usize <= depth.next_power_of_two());
            }
        }
    }

    /// Random map/unmap walks through a type1 recorder: the tables keep
    /// their invariants after every step, a live mapping is always known
    /// and mapped, and the region unmapped last is remembered.
    #[test]
    fn recorder_tables_keep_their_invariants() {
        use proptest::prelude::*;
        let cfg = ProptestConfig::with_cases(64);
        proptest!(cfg, |(ops in proptest::collection::vec((0u64..24, any::<bool>(), any::<bool>()), 1..400),
                         max_regions in 1usize..12, depth in 1usize..6)| {
            let s = Sanitizer::new(SanitizerConfig { depth, max_regions });
            let mut rec = s.recorder();
            let mut live: HashMap<u64, HistorySlot> = HashMap::new();
            let mut last_unmapped = None;
            for (n, keep_slot, _) in ops {
                let iova = n * 0x1000;
                match live.remove(&iova) {
                    Some(slot) => {
                        // The engine passes the slot it kept; a caller that
                        // lost it passes none.
                        let slot = if keep_slot { slot } else { HistorySlot::NONE };
                        rec.record_unmap_at(slot, 1, iova);
                        last_unmapped = Some(iova);
                    }
                    None => {
                        let slot = rec.record_map(1, iova, 0x7000 + iova, 0x1000, rw());
                        prop_assert_ne!(slot, HistorySlot::NONE);
                        live.insert(iova, slot);
                        if last_unmapped == Some(iova) {
                            last_unmapped = None;
                        }
                    }
                }
                rec.inner.check(max_regions, depth);
                let ring = rec.geo.ring;
                for (&iova, &slot) in &live {
                    let r = &rec.inner.slots[slot.0 as usize];
                    prop_assert!(r.used && r.mapped && r.iova == iova);
                    // Its ring, oldest first: maps and unmaps alternate,
                    // in time order, the newest the map that made it.
                    let events: Vec<RawEvent> = (0..r.len as usize)
                        .map(|k| {
                            let pos = (r.head as usize + k) & (ring - 1);
                            rec.inner.events[slot.0 as usize * ring + pos]
                        })
                        .collect();
                    prop_assert!(!events.is_empty() && events.len() <= ring);
                    prop_assert!(events.windows(2).all(|w| w[0].at <= w[1].at
                        && (w[0].meta & 7 == 0) != (w[1].meta & 7 == 0)));
                    let newest = events[events.len() - 1];
                    prop_assert_eq!((newest.meta & 7, newest.a), (0, 0x7000 + iova));
                }
            }
            drop(rec);
            for &iova in live.keys() {
                prop_assert!(s.region(1, iova).is_some_and(|r| r.mapped));
            }
            if let Some(iova) = last_unmapped {
                prop_assert!(s.region(1, iova).is_some_and(|r| !r.mapped));
            }
        });
    }

    /// What recording costs per map+unmap pair, in isolation (no engine):
    /// `cargo test -p softvfio --release -- --ignored --nocapture
    /// recording_cost`. Every pair a new IOVA (each forgets the oldest
    /// region), and a ring of 256 IOVAs; with a call site set, as the front
    /// ends do.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn recording_cost() {
        let site = Some(Arc::new(CallSite {
            frames: vec![Frame {
                addr: 0x401234,
                object: Some("/bin/prog".into()),
                offset: 0x1234,
            }],
        }));
        // ns per pair: 8192 pairs to warm up, then the best of 7 runs of
        // 300,000 (a shared machine only ever adds time).
        fn best_of_7(mut pair: impl FnMut(u64)) -> f64 {
            let n = 300_000u64;
            (0..8192).for_each(&mut pair);
            (0..7)
                .map(|_| {
                    let t = Instant::now();
                    (0..n).for_each(&mut pair);
                    t.elapsed().as_nanos() as f64 / n as f64
                })
                .fold(f64::INFINITY, f64::min)
        }
        for (what, ring) in [("new IOVA each pair", u64::MAX), ("ring of 256", 256)] {
            // As type1 records: into a container's recorder, no lock.
            let s = Sanitizer::new(SanitizerConfig::default());
            let mut rec = s.recorder();
            for i in 0..4096u64 {
                rec.record_map(1, (1 << 40) + i * 0x2000, 0x7000, 0x1000, rw());
            }
            let mut k = 0u64;
            let ns = best_of_7(|_| {
                let iova = (k % ring) * 0x1000;
                k += 1;
                let slot = with_call_site(site.as_ref(), || {
                    rec.record_map(1, iova, 0x7000, 0x1000, rw())
                });
                with_call_site(site.as_ref(), || rec.record_unmap_at(slot, 1, iova));
            });
            println!("recorder, {what}: {ns:.1} ns per map+unmap pair (best of 7)");

            // Through the shared tables (direct calls), with
            // their lock; 4096 live mappings, as in `softvfio bench
            // sanitize-churn`.
            let s = Sanitizer::new(SanitizerConfig::default());
            for i in 0..4096u64 {
                s.record_map(1, (1 << 40) + i * 0x2000, 0x7000, 0x1000, rw());
            }
            let mut k = 0u64;
            let ns = best_of_7(|_| {
                let iova = (k % ring) * 0x1000;
                k += 1;
                let slot = with_call_site(site.as_ref(), || {
                    s.record_map(1, iova, 0x7000, 0x1000, rw())
                });
                with_call_site(site.as_ref(), || s.record_unmap_at(slot, 1, iova));
            });
            println!("recording, {what}: {ns:.1} ns per map+unmap pair (best of 7)");
        }
        let t = Instant::now();
        let mut x = 0u128;
        for _ in 0..1_000_000 {
            x += t.elapsed().as_nanos();
        }
        let ns = t.elapsed().as_nanos() as f64 / 1e6;
        println!("Instant::now: {ns:.1} ns ({})", x & 1);
    }

    /// Every kind of event reads back as recorded from its 32 bytes, and a
    /// call site captured again (a new `CallSite` with the same frames, as
    /// the front ends make per call) is stored once.
    #[test]
    fn events_pack_losslessly_and_call_sites_are_interned() {
        let kinds = [
            EventKind::Map {
                vaddr: u64::MAX - 0xfff,
                size: 1 << 47,
                prot: Prot {
                    read: true,
                    write: false,
                },
            },
            EventKind::Map {
                vaddr: 0x1000,
                size: 0x2000,
                prot: Prot {
                    read: false,
                    write: true,
                },
            },
            EventKind::Unmap,
            EventKind::InvalidateVaddr,
            EventKind::UpdateVaddr { vaddr: 0xdead_b000 },
            EventKind::Released,
            EventKind::Stale {
                cause: StaleCause::Munmap,
                vaddr: 0x7f00_0000_1000,
                len: 0x3000,
            },
            EventKind::Stale {
                cause: StaleCause::Mremap,
                vaddr: 1,
                len: 2,
            },
            EventKind::Stale {
                cause: StaleCause::MmapFixed,
                vaddr: 3,
                len: 4,
            },
            EventKind::Stale {
                cause: StaleCause::MadvDontneed,
                vaddr: 5,
                len: 6,
            },
            EventKind::Stale {
                cause: StaleCause::MadvRemove,
                vaddr: 7,
                len: 8,
            },
        ];
        let vias = [Via::Type1, Via::Iommufd, Via::IommufdCopy];
        let cal = EventClock::new().calibrate();
        for kind in kinds {
            for via in vias {
                for process in [None, Some(0), Some(7), Some(NO_PROCESS - 1)] {
                    let e = RawEvent::new(5, kind, via, NO_SITE, process).event(&cal, &[]);
                    assert_eq!((e.kind, e.via, e.process), (kind, via, process));
                    assert!(e.site.is_none());
                }
            }
        }
        // A process index past the 24 bits is recorded as none.
        let e = RawEvent::new(5, EventKind::Unmap, Via::Type1, NO_SITE, Some(NO_PROCESS))
            .event(&cal, &[]);
        assert_eq!(e.process, None);

        let s = Sanitizer::new(SanitizerConfig::default());
        let capture = |addr: u64| {
            Arc::new(CallSite {
                frames: vec![Frame {
                    addr,
                    object: Some("/bin/prog".into()),
                    offset: addr - 0x400000,
                }],
            })
        };
        for (i, addr) in [0x401000, 0x402000, 0x401000, 0x401000]
            .into_iter()
            .enumerate()
        {
            let iova = 0x10000 * i as u64;
            with_call_site(Some(&capture(addr)), || {
                s.record_map(1, iova, 0x7000_0000, 0x1000, rw())
            });
            let r = s.region(1, iova).unwrap();
            assert_eq!(r.events[0].site.as_deref(), Some(&*capture(addr)));
        }
        assert_eq!(s.lock().sites.len(), 2);
    }

    /// IOAS areas (whose owner keeps no slot) are found by key.
    #[test]
    fn areas_are_found_by_key() {
        let s = Sanitizer::new(SanitizerConfig::default());
        let key = iommufd_history_key(1, 2);
        s.record_ioas_map(key, 0x1000, 0x7000, 0x1000, rw(), false);
        s.record_ioas_map(key, 0x2000, 0x8000, 0x1000, rw(), true);
        s.record_ioas_unmap(key, 0x1000, false);
        s.record_ioas_unmap(key, 0x2000, true);
        let r1 = s.region(key, 0x1000).unwrap();
        let r2 = s.region(key, 0x2000).unwrap();
        assert_eq!(
            r1.events.iter().map(|e| e.call()).collect::<Vec<_>>(),
            vec!["IOAS_MAP", "IOAS_UNMAP"]
        );
        assert_eq!(
            r2.events.iter().map(|e| e.call()).collect::<Vec<_>>(),
            vec!["IOAS_COPY", "close of the iommufd"]
        );
        assert!(s.lock().live.is_empty());
    }

    #[test]
    fn memory_going_away_marks_live_mappings_only() {
        let s = Sanitizer::new(SanitizerConfig::default());
        s.record_map(1, 0x10000, 0x7000_0000, 0x4000, rw());
        s.record_map(1, 0x20000, 0x7100_0000, 0x1000, rw());
        s.record_unmap(1, 0x20000);
        let hits = s.memory_going_away(None, 0x7000_1000, 0x10_0000, StaleCause::Munmap);
        assert_eq!(hits.len(), 1);
        assert_eq!((hits[0].vaddr, hits[0].len), (0x7000_1000, 0x3000));
        assert_eq!(hits[0].region.iova, 0x10000);
        assert!(s
            .memory_going_away(None, 0x7100_0000, 0x1000, StaleCause::Mremap)
            .is_empty());
        assert!(s
            .memory_going_away(Some(2), 0x7000_0000, 0x1000, StaleCause::Munmap)
            .is_empty());
        assert_eq!(s.stale_reports().len(), 1);
    }

    /// A call that panics inside `with_call_site` (a front end catches it
    /// and goes on) leaves the outer site in place, not its own.
    #[test]
    fn a_panicking_call_puts_the_outer_site_back() {
        let outer = Arc::new(CallSite {
            frames: vec![Frame {
                addr: 0x1000,
                object: None,
                offset: 0x1000,
            }],
        });
        let inner = Arc::new(CallSite {
            frames: vec![Frame {
                addr: 0x2000,
                object: None,
                offset: 0x2000,
            }],
        });
        let seen = with_call_site(Some(&outer), || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                with_call_site(Some(&inner), || panic!("the call panics"))
            }));
            assert!(r.is_err());
            current_site()
        });
        assert_eq!(seen.as_deref(), Some(&*outer));
        assert_eq!(
            current::call().0,
            0,
            "no site address after the outermost call"
        );
        assert!(current_site().is_none());
    }

    /// An event records the call site and process of the call being
    /// served: nested `with_call_site` calls put the outer site back (its
    /// address in the drop-free thread-local too), none after the outermost
    /// returns, and the process as last set.
    #[test]
    fn events_take_the_current_call_site_and_process() {
        let site = |addr: u64| {
            Arc::new(CallSite {
                frames: vec![Frame {
                    addr,
                    object: None,
                    offset: addr,
                }],
            })
        };
        let (outer, inner) = (site(0x1000), site(0x2000));
        let s = Sanitizer::new(SanitizerConfig::default());
        let p = s.note_process(42, "p".into());
        set_current_process(Some(p));
        with_call_site(Some(&outer), || {
            s.record_map(1, 0x10000, 0x7000_0000, 0x1000, rw());
            with_call_site(Some(&inner), || {
                s.record_map(1, 0x20000, 0x7000_1000, 0x1000, rw());
            });
            s.record_map(1, 0x30000, 0x7000_2000, 0x1000, rw());
        });
        set_current_process(None);
        s.record_map(1, 0x40000, 0x7000_3000, 0x1000, rw());
        assert!(current_site().is_none());
        let first = |iova: u64| {
            let r = s.region(1, iova).expect("recorded");
            assert_eq!(r.events.len(), 1);
            let e = r.events[0].clone();
            (e.site.map(|c| c.frames[0].addr), e.process)
        };
        assert_eq!(first(0x10000), (Some(0x1000), Some(p)));
        assert_eq!(first(0x20000), (Some(0x2000), Some(p)));
        assert_eq!(first(0x30000), (Some(0x1000), Some(p)));
        assert_eq!(first(0x40000), (None, None));
    }

    /// A stale check looks at the mappings whose memory is the calling
    /// process's: those it made or last updated the vaddr of, in any
    /// container, and not another process's at the same address.
    #[test]
    fn memory_going_away_checks_the_callers_mappings_in_every_container() {
        let s = Sanitizer::new(SanitizerConfig::default());
        let (parent, child) = (
            s.note_process(100, "p".into()),
            s.note_process(101, "p".into()),
        );
        set_current_process(Some(parent));
        s.record_map(1, 0x10000, 0x7000_0000, 0x1000, rw());
        // The child maps the same address of its own memory, through the
        // other container, and a second buffer through the parent's.
        set_current_process(Some(child));
        let moved = s.record_map(2, 0x20000, 0x7000_0000, 0x1000, rw());
        s.record_map(1, 0x30000, 0x7100_0000, 0x1000, rw());
        s.record_update_vaddr_at(moved, 2, 0x20000, 0x7200_0000);
        set_current_process(None);
        assert!(s.owns_live_mappings(parent) && s.owns_live_mappings(child));
        assert!(!s.owns_live_mappings(child + 1));
        let hits = s.memory_going_away(Some(parent), 0x7000_0000, 0x10_0000, StaleCause::Munmap);
        assert_eq!(
            hits.iter()
                .map(|h| (h.region.container, h.region.iova))
                .collect::<Vec<_>>(),
            vec![(1, 0x10000)]
        );
        // The child's: its mapping in the parent's container, and the one
        // whose vaddr it moved (the old address is no longer its memory).
        let hits = s.memory_going_away(Some(child), 0x7000_0000, 0x300_0000, StaleCause::Mremap);
        assert_eq!(
            hits.iter()
                .map(|h| (h.region.container, h.region.iova))
                .collect::<Vec<_>>(),
            vec![(1, 0x30000), (2, 0x20000)]
        );
        assert_eq!(hits[1].vaddr, 0x7200_0000);
        let r = s.region(1, 0x30000).unwrap();
        assert_eq!(r.events.last().unwrap().process, None);
        assert!(matches!(
            r.events.last().unwrap().kind,
            EventKind::Stale { .. }
        ));
        assert_eq!(s.stale_reports().len(), 3);
    }
}
