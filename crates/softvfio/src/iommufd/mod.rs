//! iommufd (`/dev/iommu`) over the same engine as type1: I/O address
//! spaces ([`ioas`]), hardware page tables ([`hwpt`]: VT-d domains),
//! devices bound through their VFIO cdev ([`device`]), the byte-level ioctl
//! ABI ([`abi`]) and the type1 compatibility ioctls ([`compat`]).
//!
//! Semantics follow Linux 6.12's `drivers/iommu/iommufd` down to the errno
//! and the order of checks, as measured by `tests-oracle/iommufd_probe.c`
//! (`tests-oracle/kernel-6.12-iommufd.txt`); `docs/IOMMUFD.md` lists every
//! ioctl with its answer.
//!
//! # Objects
//!
//! One open `/dev/iommu` is an [`Iommufd`] context holding objects by id
//! (lowest free id from 1, as the kernel's xarray allocates): IOASes,
//! HWPTs, bound devices and fault queues ([`fault`]). Every object refers
//! to others only by id.
//!
//! # Invariants
//!
//! Checked by [`Iommufd::check_invariants`] (tests call it after each step):
//!
//! - every HWPT names an IOAS that exists, and its domain is in that IOAS's
//!   `domains` exactly once; every IOAS domain belongs to such a HWPT;
//! - a bound device's `hwpt`, when set, exists and lists the device; a
//!   HWPT's device list names bound devices whose `hwpt` is that HWPT;
//! - an automatic HWPT always has a device (it goes with its last one);
//! - the IOAS of each attached device holds the device's reserved regions
//!   (owner = device id), and the aperture's complement (owner = HWPT id)
//!   for each of its domains; no other reserved range is there;
//! - each IOAS satisfies [`ioas`]'s invariants; the pages charged by all
//!   areas are what this context added to the address space's account.
//!
//! # Locks
//!
//! One mutex per context (`state`) guards every object. It is taken before
//! the memory backend's pin counts and the VT-d domain's locks (the type1
//! order of `crate::type1`), and never while a device does DMA.

pub mod abi;
pub mod access;
pub mod cdev;
pub mod compat;
pub mod device;
pub mod fault;
pub mod hwpt;
pub mod ioas;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::account::MmAccount;
use crate::error::{Result, VfioError};
use crate::iommu::Prot;
use crate::memory::UserMemory;

pub use access::{AccessBuf, IommufdAccess};
pub use fault::FaultFile;
pub use ioas::Area;

use crate::sanitizer::HistorySlot;
use access::Access;
use device::BoundDevice;
use hwpt::Hwpt;
use ioas::{Ioas, Piece, UnmapStep};

static NEXT_CTX_ID: AtomicU64 = AtomicU64::new(1);

/// An object of an iommufd context.
pub(crate) enum Object {
    Ioas(Ioas),
    Hwpt(Hwpt),
    Device(BoundDevice),
    /// A device without an IOMMU (mediated), bound: its emulated access.
    Access(Access),
    /// A fault queue (`IOMMU_FAULT_QUEUE_ALLOC`).
    Fault(fault::Fault),
}

/// The type1 compatibility state (`VFIO_SET_IOMMU` on `/dev/iommu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CompatType {
    Type1,
    Type1v2,
}

pub(crate) struct State {
    pub(crate) objects: BTreeMap<u32, Object>,
    /// `IOMMU_VFIO_IOAS`: the IOAS the compatibility ioctls use.
    pub(crate) vfio_ioas: Option<u32>,
    pub(crate) compat: Option<CompatType>,
    /// `IOMMU_OPTION_RLIMIT_MODE`: 1 = per process (`mm`), 0 = per user.
    pub(crate) rlimit_per_process: bool,
    /// The DMA sanitizer's history of this context's areas, recorded under
    /// its lock (see [`crate::sanitizer::Recorder`]); each area carries its
    /// slot.
    pub(crate) history: Option<crate::sanitizer::Recorder>,
}

/// The user's locked-memory account (`user_struct->locked_vm`): iommufd's
/// `RLIMIT_MODE` 0 charges it, for every context of this process (softvfio
/// serves one user). Linux shows it nowhere in `/proc`.
pub fn user_account() -> Arc<MmAccount> {
    static USER: std::sync::OnceLock<Arc<MmAccount>> = std::sync::OnceLock::new();
    USER.get_or_init(|| Arc::new(MmAccount::new())).clone()
}

impl State {
    /// The lowest free object id (the kernel's `xa_alloc` from 1).
    pub(crate) fn next_id(&self) -> u32 {
        let mut id = 1u32;
        for k in self.objects.keys() {
            if *k != id {
                break;
            }
            id += 1;
        }
        id
    }

    pub(crate) fn ioas(&self, id: u32) -> Result<&Ioas> {
        match self.objects.get(&id) {
            Some(Object::Ioas(i)) => Ok(i),
            _ => Err(VfioError::NoEntry),
        }
    }

    pub(crate) fn ioas_mut(&mut self, id: u32) -> Result<&mut Ioas> {
        match self.objects.get_mut(&id) {
            Some(Object::Ioas(i)) => Ok(i),
            _ => Err(VfioError::NoEntry),
        }
    }

    /// IOAS `id` and the sanitizer's recorder (if one runs), borrowed
    /// apart, so that the IOAS's map and unmap can record as they go.
    pub(crate) fn ioas_and_history(
        &mut self,
        id: u32,
    ) -> Result<(&mut Ioas, Option<&mut crate::sanitizer::Recorder>)> {
        let State {
            objects, history, ..
        } = self;
        match objects.get_mut(&id) {
            Some(Object::Ioas(i)) => Ok((i, history.as_mut())),
            _ => Err(VfioError::NoEntry),
        }
    }
}

/// The sanitizer's record of new area `a` of the IOAS whose history key is
/// `key` (made by a copy: `copy`): the slot the area carries.
#[inline]
fn record_area(
    history: &mut Option<&mut crate::sanitizer::Recorder>,
    key: u64,
    a: &Area,
    copy: bool,
) -> HistorySlot {
    match history {
        Some(h) => h.record_area_map(key, a.iova, a.uptr, a.len(), a.prot, copy),
        None => HistorySlot::NONE,
    }
}

/// The sanitizer's record of area `a` of the IOAS whose history key is
/// `key` going (`released`: with its IOAS or context, not by an unmap).
#[inline]
fn record_area_gone(
    history: Option<&mut crate::sanitizer::Recorder>,
    key: u64,
    a: &Area,
    released: bool,
) {
    if let Some(h) = history {
        h.record_area_unmap_at(a.history, key, a.iova, released);
    }
}

/// One open `/dev/iommu`.
pub struct Iommufd {
    id: u64,
    pub(crate) mem: Arc<dyn UserMemory>,
    /// Its state; shared (by `Arc`) only with the DMA sanitizer, whose
    /// questions read its recorder: a question that outlives the context
    /// then drops the state alone, never the context (whose drop releases
    /// the devices, domains and pins, and records their release).
    pub(crate) state: Arc<Mutex<State>>,
    /// What `RLIMIT_MODE` 0 charges ([`user_account`] unless a test gives
    /// its own).
    user_account: Arc<MmAccount>,
    /// The DMA sanitizer recording the IOASes' areas, if one runs.
    sanitizer: std::sync::OnceLock<Arc<crate::sanitizer::Sanitizer>>,
}

/// A serialisable view of a context, for `inspect` and end reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IommufdSnapshot {
    /// The context's id, unique in this process.
    pub id: u64,
    /// IOASes.
    pub ioas: Vec<IoasView>,
    /// HWPTs.
    pub hwpts: Vec<HwptView>,
    /// Bound devices: (object id, name, attached HWPT).
    pub devices: Vec<(u32, String, Option<u32>)>,
    /// Bound devices without an IOMMU (emulated accesses).
    pub accesses: Vec<AccessView>,
}

/// A bound device without an IOMMU (its emulated access) in a snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccessView {
    /// Object id (the device id).
    pub id: u32,
    /// The device's name.
    pub name: String,
    /// The IOAS it is attached to.
    pub ioas: Option<u32>,
    /// Pages it pins (distinct page IOVAs).
    pub pinned_pages: u64,
}

/// One IOAS in a snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IoasView {
    /// Object id.
    pub id: u32,
    /// Its areas, in IOVA order.
    pub areas: Vec<Area>,
    /// The valid IOVA ranges (inclusive).
    pub iova_ranges: Vec<(u64, u64)>,
    /// HWPTs whose domain mirrors it.
    pub hwpts: Vec<u32>,
}

/// One HWPT in a snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HwptView {
    /// Object id.
    pub id: u32,
    /// Its IOAS.
    pub ioas: u32,
    /// Allocated by an attach to an IOAS (goes with its last device).
    pub auto: bool,
    /// The VT-d domain id.
    pub domain: u32,
    /// Attached devices (object ids).
    pub devices: Vec<u32>,
}

impl Iommufd {
    /// A new context whose areas pin `mem`.
    pub fn new(mem: Arc<dyn UserMemory>) -> Arc<Self> {
        Self::with_user_account(mem, user_account())
    }

    /// A new context whose `RLIMIT_MODE` 0 charges `user`.
    pub fn with_user_account(mem: Arc<dyn UserMemory>, user: Arc<MmAccount>) -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_CTX_ID.fetch_add(1, Ordering::Relaxed),
            mem,
            state: Arc::new(Mutex::new(State {
                objects: BTreeMap::new(),
                vfio_ioas: None,
                compat: None,
                rlimit_per_process: false,
                history: None,
            })),
            user_account: user,
            sanitizer: std::sync::OnceLock::new(),
        })
    }

    /// The account new mappings are charged to (by `RLIMIT_MODE`).
    fn account(&self, st: &State) -> Arc<MmAccount> {
        if st.rlimit_per_process {
            self.mem.account().clone()
        } else {
            self.user_account.clone()
        }
    }

    /// Records the IOASes' map, copy and unmap history into `s` (the DMA
    /// sanitizer; a second one is ignored), under this context's lock.
    pub fn set_sanitizer(&self, s: Arc<crate::sanitizer::Sanitizer>) {
        if self.sanitizer.set(s.clone()).is_ok() {
            self.lock().history = Some(s.recorder());
            s.register_iommufd(&self.state);
        }
    }

    /// The sanitizer's history key of IOAS `ioas` of this context.
    pub fn history_key(&self, ioas: u32) -> u64 {
        crate::sanitizer::iommufd_history_key(self.id, ioas)
    }

    /// The context's id, unique in this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Every operation leaves the state consistent before it can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `IOMMU_IOAS_ALLOC`: a new, empty IOAS; its id.
    pub fn ioas_alloc(&self) -> u32 {
        let mut st = self.lock();
        let id = st.next_id();
        let account = self.account(&st);
        st.objects.insert(id, Object::Ioas(Ioas::new(account)));
        id
    }

    /// `IOMMU_DESTROY`: ENOENT for no such object, EBUSY while in use (an
    /// IOAS with HWPTs, a HWPT with devices, any bound device, a fault
    /// queue whose descriptor is open).
    pub fn destroy(&self, id: u32) -> Result<()> {
        let mut st = self.lock();
        match st.objects.get(&id) {
            None => return Err(VfioError::NoEntry),
            Some(Object::Device(_)) | Some(Object::Access(_)) => {
                return Err(VfioError::Busy("devices go with their cdev"))
            }
            Some(Object::Hwpt(h)) => {
                if !h.devices.is_empty() {
                    return Err(VfioError::Busy("HWPT has devices attached"));
                }
            }
            Some(Object::Ioas(i)) => {
                if !i.domains.is_empty() || !i.accesses.is_empty() {
                    return Err(VfioError::Busy("IOAS has HWPTs or accesses"));
                }
            }
            Some(Object::Fault(f)) => {
                if f.files != 0 {
                    return Err(VfioError::Busy("fault queue's descriptor is open"));
                }
            }
        }
        match st.objects.remove(&id) {
            Some(Object::Ioas(mut i)) => {
                let key = self.history_key(id);
                let history = &mut st.history;
                i.clear(self.mem.as_ref(), |a| {
                    record_area_gone(history.as_mut(), key, a, true)
                });
                if st.vfio_ioas == Some(id) {
                    st.vfio_ioas = None;
                }
            }
            Some(Object::Hwpt(h)) => hwpt::release(&mut st, self.mem.as_ref(), id, &h),
            _ => {}
        }
        Ok(())
    }

    /// `IOMMU_IOAS_IOVA_RANGES`: the valid ranges and the IOVA alignment.
    pub fn iova_ranges(&self, ioas: u32) -> Result<(Vec<(u64, u64)>, u64)> {
        let st = self.lock();
        let i = st.ioas(ioas)?;
        Ok((i.iova_ranges(), i.alignment()))
    }

    /// `IOMMU_IOAS_ALLOW_IOVAS`: replaces the allowed list. EINVAL for a
    /// backwards or overlapping range, EADDRINUSE when a reserved range
    /// intersects one.
    pub fn allow_iovas(&self, ioas: u32, ranges: &[(u64, u64)]) -> Result<()> {
        let mut st = self.lock();
        let i = st.ioas_mut(ioas)?;
        let mut sorted = ranges.to_vec();
        if sorted.iter().any(|(s, l)| s > l) {
            return Err(VfioError::Invalid("range ends before it starts"));
        }
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[1].0 <= w[0].1) {
            return Err(VfioError::Invalid("allowed ranges overlap"));
        }
        if sorted
            .iter()
            .any(|&(s, l)| i.reserved.iter().any(|r| r.start <= l && s <= r.last))
        {
            return Err(VfioError::Errno(libc::EADDRINUSE));
        }
        i.allowed = sorted;
        Ok(())
    }

    /// `IOMMU_IOAS_MAP`: maps `length` bytes of user memory at `uptr` at
    /// `iova` (or an IOVA chosen here); the IOVA used.
    pub fn map(
        &self,
        ioas: u32,
        uptr: u64,
        length: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64> {
        if length == 0 {
            return Err(VfioError::Invalid("zero length"));
        }
        if uptr.checked_add(length).is_none() {
            return Err(VfioError::Errno(libc::EOVERFLOW));
        }
        let key = self.history_key(ioas);
        let mut st = self.lock();
        let (i, mut history) = st.ioas_and_history(ioas)?;
        let pieces = [Piece {
            uptr,
            len: length,
            pages: None,
        }];
        i.map_pieces(self.mem.as_ref(), &pieces, iova, prot, |a| {
            record_area(&mut history, key, a, false)
        })
    }

    /// `IOMMU_IOAS_COPY`: maps in `dst` the memory behind
    /// `[src_iova, +length)` of `src`; the IOVA used.
    pub fn copy(
        &self,
        dst: u32,
        src: u32,
        length: u64,
        dst_iova: Option<u64>,
        src_iova: u64,
        prot: Prot,
    ) -> Result<u64> {
        let mut st = self.lock();
        let pieces: Vec<Piece> = st
            .ioas(src)?
            .pieces(src_iova, length)?
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let key = self.history_key(dst);
        let (i, mut history) = st.ioas_and_history(dst)?;
        i.map_pieces(self.mem.as_ref(), &pieces, dst_iova, prot, |a| {
            record_area(&mut history, key, a, true)
        })
    }

    /// `IOMMU_IOAS_UNMAP` of `[iova, +length)`: the bytes unmapped. Areas
    /// must lie wholly inside (ENOENT otherwise, or when there is none).
    pub fn unmap(&self, ioas: u32, iova: u64, length: u64) -> Result<u64> {
        self.ioas(ioas)?;
        if length == 0 {
            return Err(VfioError::Invalid("zero length"));
        }
        let last = iova
            .checked_add(length - 1)
            .ok_or(VfioError::Errno(libc::EOVERFLOW))?;
        let (n, rc) = self.unmap_range(ioas, iova, last);
        rc.map(|()| n)
    }

    /// `IOMMU_IOAS_UNMAP` of everything: the bytes unmapped (0 for none).
    pub fn unmap_all(&self, ioas: u32) -> Result<u64> {
        self.ioas(ioas)?;
        let (n, rc) = self.unmap_range(ioas, 0, u64::MAX);
        match rc {
            Err(VfioError::NoEntry) | Ok(()) => Ok(n),
            Err(e) => Err(e),
        }
    }

    /// ENOENT for no such IOAS.
    fn ioas(&self, ioas: u32) -> Result<()> {
        self.lock().ioas(ioas).map(|_| ())
    }

    /// `iopt_unmap_iova_range`: removes the areas in `[start, last]`; an area
    /// that accesses pin is first announced to them through their unmap
    /// callbacks (with no lock held), up to [`access::UNMAP_NOTIFY_TRIES`]
    /// times (then EDEADLK, where Linux warns).
    pub(crate) fn unmap_range(&self, ioas: u32, mut start: u64, last: u64) -> (u64, Result<()>) {
        let mut total = 0u64;
        let mut tries = 0u32;
        loop {
            let step = {
                let key = self.history_key(ioas);
                let mut st = self.lock();
                let Ok((i, mut history)) = st.ioas_and_history(ioas) else {
                    return (total, Err(VfioError::NoEntry));
                };
                i.unmap_step(self.mem.as_ref(), start, last, |a| {
                    record_area_gone(history.as_deref_mut(), key, a, false)
                })
            };
            match step {
                UnmapStep::Done {
                    unmapped,
                    sticks_out,
                } => {
                    total = total.wrapping_add(unmapped);
                    // ENOENT at an area that sticks out, or when nothing
                    // was inside.
                    let rc = if sticks_out || total == 0 {
                        Err(VfioError::NoEntry)
                    } else {
                        Ok(())
                    };
                    return (total, rc);
                }
                UnmapStep::Notify {
                    unmapped,
                    iova,
                    len,
                } => {
                    total = total.wrapping_add(unmapped);
                    if iova != start {
                        tries = 0;
                    }
                    start = iova;
                    tries += 1;
                    if tries > access::UNMAP_NOTIFY_TRIES {
                        return (total, Err(VfioError::Errno(libc::EDEADLK)));
                    }
                    self.notify_accesses(ioas, iova, len);
                }
            }
        }
    }

    /// `IOMMU_OPTION` `RLIMIT_MODE` get.
    pub fn rlimit_mode(&self) -> u64 {
        u64::from(self.lock().rlimit_per_process)
    }

    /// `IOMMU_OPTION` `RLIMIT_MODE` set: EBUSY once any object exists,
    /// EINVAL for a value other than 0 or 1.
    pub fn set_rlimit_mode(&self, val: u64) -> Result<()> {
        // Only CAP_SYS_RESOURCE may choose, whatever the value (6.12).
        if !self.mem.cap_sys_resource() {
            return Err(VfioError::NotPermitted(
                "RLIMIT_MODE needs CAP_SYS_RESOURCE",
            ));
        }
        let mut st = self.lock();
        if !st.objects.is_empty() {
            return Err(VfioError::Busy("objects exist"));
        }
        st.rlimit_per_process = match val {
            0 => false,
            1 => true,
            _ => return Err(VfioError::Invalid("RLIMIT_MODE is 0 or 1")),
        };
        Ok(())
    }

    /// `IOMMU_OPTION` `HUGE_PAGES` of an IOAS: get (`None`) or set.
    pub fn huge_pages(&self, ioas: u32, set: Option<u64>) -> Result<u64> {
        let mut st = self.lock();
        let i = st.ioas_mut(ioas)?;
        match set {
            None => Ok(u64::from(i.huge_pages)),
            Some(0) => {
                // iopt_disable_large_pages: not once domains hold pages.
                if i.huge_pages && !i.domains.is_empty() && !i.areas.is_empty() {
                    return Err(VfioError::Invalid("domains already map pages"));
                }
                i.huge_pages = false;
                Ok(0)
            }
            Some(1) => {
                i.huge_pages = true;
                Ok(1)
            }
            Some(_) => Err(VfioError::Invalid("HUGE_PAGES is 0 or 1")),
        }
    }

    /// `IOMMU_VFIO_IOAS` get: ENODEV when none is set.
    pub fn vfio_ioas(&self) -> Result<u32> {
        self.lock().vfio_ioas.ok_or(VfioError::NoDevice)
    }

    /// `IOMMU_VFIO_IOAS` set (`Some`) or clear.
    pub fn set_vfio_ioas(&self, ioas: Option<u32>) -> Result<()> {
        let mut st = self.lock();
        if let Some(id) = ioas {
            st.ioas(id)?;
        }
        st.vfio_ioas = ioas;
        Ok(())
    }

    /// The compatibility IOAS, made (and selected) when there is none
    /// (`iommufd_vfio_compat_ioas_create`, when a group joins through
    /// `VFIO_GROUP_SET_CONTAINER`).
    pub fn compat_ioas_get_or_create(&self) -> Result<u32> {
        let mut st = self.lock();
        if let Some(id) = st.vfio_ioas {
            return Ok(id);
        }
        let id = st.next_id();
        let account = self.account(&st);
        st.objects.insert(id, Object::Ioas(Ioas::new(account)));
        st.vfio_ioas = Some(id);
        Ok(id)
    }

    /// Releases every object: devices are detached, domains freed, areas
    /// unpinned and uncharged. Runs when the last reference goes (the
    /// `/dev/iommu` file and every device bound to it); callers that own
    /// the context may run it earlier.
    pub fn close(&self) {
        self.release_accesses();
        let mut st = self.lock();
        let ids: Vec<u32> = st.objects.keys().copied().collect();
        for id in ids.iter().copied() {
            if matches!(st.objects.get(&id), Some(Object::Device(_))) {
                device::detach_locked(&mut st, self.mem.as_ref(), id);
            }
        }
        for id in ids {
            match st.objects.remove(&id) {
                Some(Object::Hwpt(h)) => hwpt::release(&mut st, self.mem.as_ref(), id, &h),
                Some(obj) => {
                    st.objects.insert(id, obj);
                }
                None => {}
            }
        }
        for (id, obj) in std::mem::take(&mut st.objects) {
            if let Object::Ioas(mut i) = obj {
                let key = self.history_key(id);
                let history = &mut st.history;
                i.clear(self.mem.as_ref(), |a| {
                    record_area_gone(history.as_mut(), key, a, true)
                });
            }
        }
        st.vfio_ioas = None;
    }

    /// Pages this context has charged (to the user's or the address
    /// space's account) for pinned areas and access pins; a page shared by
    /// copies counts once.
    pub fn charged_pages(&self) -> u64 {
        let mut st = self.lock();
        let mut seen = Vec::new();
        st.objects
            .values_mut()
            .map(|o| match o {
                Object::Ioas(i) => i.fill_charged(&mut seen),
                _ => 0,
            })
            .sum()
    }

    /// A serialisable view of every object.
    pub fn snapshot(&self) -> IommufdSnapshot {
        let mut st = self.lock();
        let mut seen = Vec::new();
        for o in st.objects.values_mut() {
            if let Object::Ioas(i) = o {
                i.fill_charged(&mut seen);
            }
        }
        let mut snap = IommufdSnapshot {
            id: self.id,
            ioas: Vec::new(),
            hwpts: Vec::new(),
            devices: Vec::new(),
            accesses: Vec::new(),
        };
        for (id, o) in &st.objects {
            match o {
                Object::Ioas(i) => snap.ioas.push(IoasView {
                    id: *id,
                    areas: i.areas.values().cloned().collect(),
                    iova_ranges: i.iova_ranges(),
                    hwpts: i.domains.iter().map(|(h, _)| *h).collect(),
                }),
                Object::Hwpt(h) => snap.hwpts.push(HwptView {
                    id: *id,
                    ioas: h.ioas,
                    auto: h.auto,
                    domain: h.domain.id(),
                    devices: h.devices.clone(),
                }),
                Object::Device(d) => snap.devices.push((*id, d.device.name.clone(), d.hwpt)),
                Object::Access(a) => snap.accesses.push(AccessView {
                    id: *id,
                    name: a.name.clone(),
                    ioas: a.ioas,
                    pinned_pages: a.pins.len() as u64,
                }),
                // A queue has nothing to show: it is always empty.
                Object::Fault(_) => {}
            }
        }
        snap
    }

    /// Checks the module's invariants; the first broken one, described.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let st = self.lock();
        for (id, o) in &st.objects {
            match o {
                Object::Ioas(i) => {
                    i.check().map_err(|e| format!("IOAS {id}: {e}"))?;
                    for (h, _) in &i.domains {
                        match st.objects.get(h) {
                            Some(Object::Hwpt(hw)) if hw.ioas == *id => {}
                            _ => return Err(format!("IOAS {id} has a domain of no HWPT {h}")),
                        }
                    }
                    for r in &i.reserved {
                        let ok = match st.objects.get(&r.owner) {
                            Some(Object::Hwpt(h)) => h.ioas == *id,
                            Some(Object::Device(d)) => d
                                .hwpt
                                .and_then(|h| match st.objects.get(&h) {
                                    Some(Object::Hwpt(h)) => Some(h.ioas == *id),
                                    _ => None,
                                })
                                .unwrap_or(false),
                            _ => false,
                        };
                        if !ok {
                            return Err(format!("IOAS {id} keeps a reserved range of {}", r.owner));
                        }
                    }
                }
                Object::Hwpt(h) => {
                    let Ok(i) = st.ioas(h.ioas) else {
                        return Err(format!("HWPT {id} names no IOAS {}", h.ioas));
                    };
                    if i.domains.iter().filter(|(x, _)| x == id).count() != 1 {
                        return Err(format!("HWPT {id}'s domain not in IOAS {} once", h.ioas));
                    }
                    if h.auto && h.devices.is_empty() {
                        return Err(format!("automatic HWPT {id} without a device"));
                    }
                    for d in &h.devices {
                        match st.objects.get(d) {
                            Some(Object::Device(b)) if b.hwpt == Some(*id) => {}
                            _ => {
                                return Err(format!(
                                    "HWPT {id} lists device {d} not attached to it"
                                ))
                            }
                        }
                    }
                }
                Object::Access(a) => {
                    if let Some(i) = a.ioas {
                        match st.objects.get(&i) {
                            Some(Object::Ioas(io)) if io.accesses.contains(id) => {}
                            _ => return Err(format!("access {id} on IOAS {i} that lacks it")),
                        }
                    }
                    let Some(i) = a.ioas_unpin.and_then(|i| st.ioas(i).ok()) else {
                        if !a.pins.is_empty() {
                            return Err(format!("access {id} pins without an IOAS"));
                        }
                        continue;
                    };
                    for (page, n) in &a.pins {
                        let held = i
                            .first_area(*page, *page)
                            .and_then(|ar| ar.access_pins.get(page));
                        if held.is_none_or(|h| h < n) {
                            return Err(format!("access {id} pin at {page:#x} not in its area"));
                        }
                    }
                }
                Object::Device(b) => {
                    if let Some(h) = b.hwpt {
                        match st.objects.get(&h) {
                            Some(Object::Hwpt(hw)) if hw.devices.contains(id) => {}
                            _ => {
                                return Err(format!(
                                    "device {id} attached to HWPT {h} that does not list it"
                                ))
                            }
                        }
                    }
                }
                // One file per queue, from its allocation (fault.rs).
                Object::Fault(f) => {
                    if f.files > 1 {
                        return Err(format!("fault queue {id} has {} files", f.files));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Iommufd {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod access_tests;
