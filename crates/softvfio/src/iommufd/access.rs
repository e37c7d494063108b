//! iommufd's emulated access path (`struct iommufd_access`): how a device
//! without an IOMMU (a mediated device) bound through iommufd reaches the
//! user's memory — it pins pages of an IOAS's areas
//! (`iommufd_access_pin_pages`) or copies through them
//! (`iommufd_access_rw`), and is told through its unmap callback to drop
//! its pins before an area it pins is unmapped.
//!
//! Linux 6.12: `drivers/iommu/iommufd/device.c` (`iommufd_access_*`) and
//! `drivers/vfio/iommufd.c` (`vfio_iommufd_emulated_*`). The answers are
//! the reference's (tests-oracle/kernel-6.12-iommufd-access.txt, printed by
//! tests-oracle/iommufd_access_probe.c: an mtty mdev through its cdev, and
//! the selftest access of `CONFIG_IOMMUFD_TEST`, which uses the same
//! functions).
//!
//! # Invariants
//!
//! - binding an emulated device makes an access object; its id is the
//!   device id the bind returns, and `IOMMU_DESTROY` of it is EBUSY;
//! - an access is attached to at most one IOAS (`ioas`), which lists it in
//!   `accesses` (the IOAS is then page aligned and cannot be destroyed);
//! - every pin an access holds (`pins`) is counted in the `access_pins` of
//!   the area of `ioas_unpin` that holds the page, and nowhere else;
//! - while it moves or detaches, `ioas` is `None` (no new pins) and
//!   `ioas_unpin` still names the old IOAS, so that the unmap callback,
//!   which runs with no lock held, can unpin.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use super::ioas::{access_pin_page, access_unpin_page, drop_access_pins};
use super::{Iommufd, Object, State};
use crate::error::{Result, VfioError};
use crate::external::DmaUnmapFn;
use crate::memory::{UserMemory, PAGE_SIZE};

/// `UNMAP_NOTIFY_TRIES` of `iopt_unmap_iova_range`: an unmap gives up
/// (EDEADLK) when the accesses still pin an area after this many calls of
/// their unmap callbacks.
pub const UNMAP_NOTIFY_TRIES: u32 = 100;

/// An access object.
pub(crate) struct Access {
    /// The device's name (mdev UUID), for reports.
    pub(crate) name: String,
    /// The IOAS it pins and reads through (`access->ioas`).
    pub(crate) ioas: Option<u32>,
    /// The IOAS its pins are in (`access->ioas_unpin`).
    pub(crate) ioas_unpin: Option<u32>,
    /// The device's `dma_unmap` (`vfio_emulated_unmap`).
    pub(crate) unmap: Option<DmaUnmapFn>,
    /// Its pins, by page IOVA.
    pub(crate) pins: BTreeMap<u64, u32>,
}

impl Access {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ioas: None,
            ioas_unpin: None,
            unmap: None,
            pins: BTreeMap::new(),
        }
    }
}

fn access(st: &State, id: u32) -> Result<&Access> {
    match st.objects.get(&id) {
        Some(Object::Access(a)) => Ok(a),
        _ => Err(VfioError::NoEntry),
    }
}

fn access_mut(st: &mut State, id: u32) -> Result<&mut Access> {
    match st.objects.get_mut(&id) {
        Some(Object::Access(a)) => Ok(a),
        _ => Err(VfioError::NoEntry),
    }
}

/// Drops what `id` still pins in its `ioas_unpin` (after its unmap callback
/// ran: a device that ignores it must not leak pins).
fn drop_leftover_pins(st: &mut State, mem: &dyn UserMemory, id: u32) {
    let Ok(a) = access_mut(st, id) else { return };
    let (pins, ioas) = (std::mem::take(&mut a.pins), a.ioas_unpin);
    let Some(ioas) = ioas else { return };
    let Ok(i) = st.ioas_mut(ioas) else { return };
    for (page, n) in pins {
        if let Some((_, area)) = i.areas.range_mut(..=page).next_back() {
            for _ in 0..n {
                access_unpin_page(mem, area, page);
            }
        }
    }
}

/// Runs `f` with the access's unmap callback, if any (no lock held).
fn notify(cb: Option<DmaUnmapFn>, iova: u64, len: u64) {
    if let Some(cb) = cb {
        cb(iova, len);
    }
}

impl Iommufd {
    /// `iommufd_access_change_ioas`: attaches the access to `new` (an IOAS:
    /// ENOENT for anything else), moves it, or detaches it (`None`). The
    /// old IOAS's pins are dropped through the device's unmap callback.
    pub(crate) fn access_set_ioas(&self, id: u32, new: Option<u32>) -> Result<()> {
        let cb = {
            let mut st = self.lock();
            let a = access(&st, id)?;
            let cur = a.ioas;
            if cur != a.ioas_unpin {
                return Err(VfioError::Busy("the access is moving"));
            }
            if cur == new {
                return Ok(());
            }
            if let Some(n) = new {
                let i = st.ioas_mut(n)?;
                // iopt_add_access: the access needs page-aligned areas.
                i.check_page_alignment()?;
                i.accesses.push(id);
            }
            let a = access_mut(&mut st, id)?;
            a.ioas = None;
            if cur.is_none() {
                a.ioas = new;
                a.ioas_unpin = new;
                return Ok(());
            }
            a.unmap.clone()
        };
        // The old IOAS: every pin goes (vfio's dma_unmap of everything).
        notify(cb, 0, u64::MAX);
        let mut st = self.lock();
        drop_leftover_pins(&mut st, self.mem.as_ref(), id);
        if let Ok(a) = access(&st, id) {
            if let Some(old) = a.ioas_unpin {
                if let Ok(i) = st.ioas_mut(old) {
                    i.accesses.retain(|x| *x != id);
                }
            }
        }
        if let Ok(a) = access_mut(&mut st, id) {
            a.ioas = new;
            a.ioas_unpin = new;
        }
        Ok(())
    }

    /// Sets the device's unmap callback (`ops->unmap`).
    pub(crate) fn access_set_unmap(&self, id: u32, cb: Option<DmaUnmapFn>) {
        if let Ok(a) = access_mut(&mut self.lock(), id) {
            a.unmap = cb;
        }
    }

    /// `iommufd_access_pin_pages` of `[iova, iova + length)` (`write`:
    /// `IOMMUFD_ACCESS_RW_WRITE`): the user address of every page, in
    /// order. EINVAL zero length, an IOVA not at a page start or an area
    /// being unmapped; EOVERFLOW wrap; ENOENT not attached or a hole;
    /// EPERM an area without the right (write for a write pin, else read);
    /// EFAULT missing memory; ENOMEM over RLIMIT_MEMLOCK. All or nothing.
    pub fn access_pin(&self, id: u32, iova: u64, length: u64, write: bool) -> Result<Vec<u64>> {
        if length == 0 {
            return Err(VfioError::Invalid("zero length"));
        }
        let last = iova
            .checked_add(length - 1)
            .ok_or(VfioError::Errno(libc::EOVERFLOW))?;
        let mem = self.mem.clone();
        let policy = mem.lock_policy();
        let mut st = self.lock();
        let ioas = access(&st, id)?.ioas.ok_or(VfioError::NoEntry)?;
        let i = st.ioas_mut(ioas)?;
        let mut done: Vec<u64> = Vec::new();
        let mut out = Vec::new();
        let mut at = iova;
        let result = loop {
            let Some(key) = i.first_area(at, at).map(|a| a.iova) else {
                break Err(VfioError::NoEntry);
            };
            let Some(a) = i.areas.get_mut(&key) else {
                break Err(VfioError::NoEntry);
            };
            let end = a.last.min(last);
            if a.prevent_access || !(a.uptr + (at - a.iova)).is_multiple_of(PAGE_SIZE) {
                break Err(VfioError::Invalid("area being unmapped or unaligned"));
            }
            let allowed = if write { a.prot.write } else { a.prot.read };
            if !allowed {
                break Err(VfioError::NotPermitted("area lacks the access right"));
            }
            let mut page = at;
            let mut failed = None;
            while page <= end {
                if let Err(e) = access_pin_page(mem.as_ref(), a, page, policy) {
                    failed = Some(e);
                    break;
                }
                done.push(page);
                out.push(a.vaddr_of(page));
                match page.checked_add(PAGE_SIZE) {
                    Some(n) => page = n,
                    None => break,
                }
            }
            if let Some(e) = failed {
                break Err(e);
            }
            if end == last {
                break Ok(());
            }
            at = end + 1;
        };
        if let Err(e) = result {
            for page in done {
                if let Some((_, a)) = i.areas.range_mut(..=page).next_back() {
                    access_unpin_page(mem.as_ref(), a, page);
                }
            }
            return Err(e);
        }
        if let Ok(a) = access_mut(&mut st, id) {
            for page in done {
                *a.pins.entry(page).or_insert(0) += 1;
            }
        }
        Ok(out)
    }

    /// `iommufd_access_unpin_pages`: drops one pin of each page of
    /// `[iova, iova + length)` the access holds (others are ignored, where
    /// Linux warns).
    pub fn access_unpin(&self, id: u32, iova: u64, length: u64) {
        let mem = self.mem.clone();
        let mut st = self.lock();
        let Ok(a) = access(&st, id) else { return };
        let Some(ioas) = a.ioas_unpin else { return };
        let first = iova & !(PAGE_SIZE - 1);
        let last = iova.saturating_add(length.max(1) - 1);
        let held: Vec<u64> = a.pins.range(first..=last).map(|(p, _)| *p).collect();
        let mut dropped = Vec::new();
        if let Ok(i) = st.ioas_mut(ioas) {
            for page in held {
                if let Some((_, area)) = i.areas.range_mut(..=page).next_back() {
                    if access_unpin_page(mem.as_ref(), area, page) {
                        dropped.push(page);
                    }
                }
            }
        }
        if let Ok(a) = access_mut(&mut st, id) {
            for page in dropped {
                if let Some(n) = a.pins.get_mut(&page) {
                    *n -= 1;
                    if *n == 0 {
                        a.pins.remove(&page);
                    }
                }
            }
        }
    }

    /// `iommufd_access_rw`: reads into `buf` (or writes `data`) at `iova`
    /// through contiguous areas, nothing pinned, with `copy_from_user` /
    /// `copy_to_user` semantics (the program's current protections).
    /// EINVAL zero length or an area being unmapped; EOVERFLOW wrap; ENOENT
    /// not attached, unmapped or a hole; EPERM an area without the right;
    /// EFAULT missing memory. Areas before a failure stay transferred.
    pub fn access_rw(&self, id: u32, iova: u64, mut buf: AccessBuf<'_>) -> Result<()> {
        let len = buf.len() as u64;
        if len == 0 {
            return Err(VfioError::Invalid("zero length"));
        }
        let last = iova
            .checked_add(len - 1)
            .ok_or(VfioError::Errno(libc::EOVERFLOW))?;
        let st = self.lock();
        let ioas = access(&st, id)?.ioas.ok_or(VfioError::NoEntry)?;
        let i = st.ioas(ioas)?;
        let write = matches!(buf, AccessBuf::Write(_));
        let mut at = iova;
        loop {
            let Some(a) = i.first_area(at, at) else {
                return Err(VfioError::NoEntry);
            };
            if a.prevent_access {
                return Err(VfioError::Invalid("area being unmapped"));
            }
            let allowed = if write { a.prot.write } else { a.prot.read };
            if !allowed {
                return Err(VfioError::NotPermitted("area lacks the access right"));
            }
            let end = a.last.min(last);
            let (from, to) = ((at - iova) as usize, (end - iova) as usize + 1);
            let vaddr = a.uptr + (at - a.iova);
            let r = match &mut buf {
                AccessBuf::Read(b) => b.get_mut(from..to).map(|s| {
                    crate::external::read_like_copy_from_user(self.mem.as_ref(), vaddr, s)
                }),
                AccessBuf::Write(d) => d.get(from..to).map(|s| self.mem.write(vaddr, s)),
            };
            if !matches!(r, Some(Ok(()))) {
                return Err(VfioError::Fault);
            }
            if end == last {
                return Ok(());
            }
            at = end + 1;
        }
    }

    /// Calls the unmap callback of every access of `ioas` for the area at
    /// `[iova, +len)` (`iommufd_access_notify_unmap`), with no lock held.
    pub(crate) fn notify_accesses(&self, ioas: u32, iova: u64, len: u64) {
        let cbs: Vec<Option<DmaUnmapFn>> = {
            let st = self.lock();
            let Ok(i) = st.ioas(ioas) else { return };
            i.accesses
                .iter()
                .filter_map(|id| access(&st, *id).ok())
                .map(|a| a.unmap.clone())
                .collect()
        };
        for cb in cbs {
            notify(cb, iova, len);
        }
    }

    /// Close of everything: every access's pins are dropped (their devices
    /// are told first), and the accesses leave their IOAS.
    pub(crate) fn release_accesses(&self) {
        let ids: Vec<u32> = self
            .lock()
            .objects
            .iter()
            .filter_map(|(id, o)| matches!(o, Object::Access(_)).then_some(*id))
            .collect();
        for id in ids {
            let _ = self.access_set_ioas(id, None);
        }
        // Anything still pinned in an area goes with it.
        let mut st = self.lock();
        let mem = self.mem.clone();
        for o in st.objects.values_mut() {
            if let Object::Ioas(i) = o {
                for a in i.areas.values_mut() {
                    drop_access_pins(mem.as_ref(), a);
                }
            }
        }
    }
}

/// The buffer of an [`Iommufd::access_rw`].
pub enum AccessBuf<'a> {
    /// Read from the IOAS into it.
    Read(&'a mut [u8]),
    /// Write it into the IOAS.
    Write(&'a [u8]),
}

impl AccessBuf<'_> {
    fn len(&self) -> usize {
        match self {
            AccessBuf::Read(b) => b.len(),
            AccessBuf::Write(d) => d.len(),
        }
    }
}

/// A device's handle on its access (what `vfio_pin_pages`, `vfio_unpin_pages`
/// and `vfio_dma_rw` reach for a device bound through iommufd). It does not
/// keep the context alive: once the context is gone every call fails (ENOENT).
pub struct IommufdAccess {
    ctx: Weak<Iommufd>,
    id: u32,
}

impl std::fmt::Debug for IommufdAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IommufdAccess")
            .field("id", &self.id)
            .finish()
    }
}

impl IommufdAccess {
    pub(crate) fn new(ctx: &Arc<Iommufd>, id: u32) -> Arc<Self> {
        Arc::new(Self {
            ctx: Arc::downgrade(ctx),
            id,
        })
    }

    fn ctx(&self) -> Result<Arc<Iommufd>> {
        self.ctx.upgrade().ok_or(VfioError::NoEntry)
    }

    /// The access's object id (the device id of the bind).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sets the device's unmap callback: called with `(iova, length)` of an
    /// area about to be unmapped, or `(0, u64::MAX)` when the access leaves
    /// its IOAS; it must unpin what it pinned there. Runs with no lock held.
    pub fn set_unmap_callback(&self, cb: Option<DmaUnmapFn>) {
        if let Ok(c) = self.ctx() {
            c.access_set_unmap(self.id, cb);
        }
    }

    /// `vfio_pin_pages` through iommufd: pins `npage` pages from the page
    /// of `iova` (the sub-page offset is ignored, as vfio does); their user
    /// addresses. EINVAL for no page.
    pub fn pin_pages(&self, iova: u64, npage: usize, write: bool) -> Result<Vec<u64>> {
        if npage == 0 {
            return Err(VfioError::Invalid("no page"));
        }
        let len = (npage as u64)
            .checked_mul(PAGE_SIZE)
            .ok_or(VfioError::Errno(libc::EOVERFLOW))?;
        self.ctx()?
            .access_pin(self.id, iova & !(PAGE_SIZE - 1), len, write)
    }

    /// `vfio_unpin_pages` through iommufd.
    pub fn unpin_pages(&self, iova: u64, npage: usize) {
        if let Ok(c) = self.ctx() {
            let len = (npage as u64).saturating_mul(PAGE_SIZE);
            c.access_unpin(self.id, iova & !(PAGE_SIZE - 1), len);
        }
    }

    /// `vfio_dma_rw` reading into `buf`.
    pub fn dma_read(&self, iova: u64, buf: &mut [u8]) -> Result<()> {
        self.ctx()?.access_rw(self.id, iova, AccessBuf::Read(buf))
    }

    /// `vfio_dma_rw` writing `data`.
    pub fn dma_write(&self, iova: u64, data: &[u8]) -> Result<()> {
        self.ctx()?.access_rw(self.id, iova, AccessBuf::Write(data))
    }

    /// The user memory its pins reach (the context's).
    pub fn memory(&self) -> Option<Arc<dyn UserMemory>> {
        self.ctx().ok().map(|c| c.mem.clone())
    }
}
