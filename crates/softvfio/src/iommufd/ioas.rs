//! An I/O address space (iommufd's `struct io_pagetable`): areas of user
//! memory at IOVAs, the reserved and allowed IOVA lists, and the domains
//! (HWPTs) every area is mapped into.
//!
//! # Invariants
//!
//! - areas are `[iova, last]` with `last >= iova`, disjoint, keyed by `iova`;
//! - no area intersects a reserved range;
//! - an area is `pinned` exactly when the IOAS has at least one domain: its
//!   pages are then pinned once and mapped into every domain of `domains`
//!   (the pinning and unmap-flush-unpin order are type1's, through the shared
//!   helpers in [`crate::type1`]);
//! - an area's memory is a range of a [`Pages`] object (iommufd's
//!   `iopt_pages`), shared with the areas `IOAS_COPY` made from it and the
//!   pieces a type1 unmap cut from it. A page of it is charged to its
//!   account exactly while it has a user: a pinned area covering it, or an
//!   access (mediated device) pinning it through an area. So a copy is never
//!   charged twice, and a second `IOAS_MAP` of the same memory is (as Linux);
//! - `access_pins` of an area counts the pins accesses hold per page; such an
//!   area is removed only after every access dropped them (unmap asks them
//!   through their unmap callback first, and `prevent_access` refuses new
//!   pins and reads meanwhile);
//! - while a domain or an access is present, every area's IOVA, length and
//!   user address are page aligned (`alignment` is then `PAGE_SIZE`, else 1);
//! - `allowed` is sorted and disjoint.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::account::{LockPolicy, MmAccount};
use crate::error::{Result, VfioError};
use crate::iommu::{DomainOps, Prot};
use crate::memory::{UserMemory, PAGE_SIZE};
use crate::sanitizer::HistorySlot;
use crate::type1::state::over_limit;
use crate::type1::{map_run, pin_and_map_pages, unmap_unpin_pages, PinRequest};

/// The user memory of one `IOAS_MAP` (iommufd's `struct iopt_pages`): which
/// of its pages have users, and the account they are charged to.
#[derive(Debug, Default)]
pub(crate) struct Pages {
    /// Users per page, by page-aligned user address: pinned areas covering
    /// the page, plus areas whose accesses pin it (one per area).
    users: BTreeMap<u64, u32>,
    /// Where its pages are charged; `None` when the mapping process had
    /// CAP_IPC_LOCK (Linux's `IOPT_PAGES_ACCOUNT_NONE`: no limit, no charge).
    account: Option<Arc<MmAccount>>,
}

/// A [`Pages`] object shared by areas.
pub(crate) type SharedPages = Arc<Mutex<Pages>>;

fn lock_pages(p: &SharedPages) -> MutexGuard<'_, Pages> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pages {
    pub(crate) fn new_shared(account: Option<Arc<MmAccount>>) -> SharedPages {
        Arc::new(Mutex::new(Pages {
            users: BTreeMap::new(),
            account,
        }))
    }

    /// Pages of `[vaddr, +npages)` with no user yet.
    fn unused(&self, vaddr: u64, npages: u64) -> u64 {
        (0..npages)
            .filter(|i| !self.users.contains_key(&(vaddr + i * PAGE_SIZE)))
            .count() as u64
    }

    /// Charges `pages` pages (one accounting update), as `iopt_pages_update_pinned`.
    fn charge(&self, pages: u64, policy: LockPolicy) -> Result<()> {
        match &self.account {
            Some(a) => a
                .charge(
                    pages,
                    LockPolicy {
                        cap_ipc_lock: false,
                        ..policy
                    },
                )
                .map_err(over_limit),
            None => Ok(()),
        }
    }

    fn uncharge(&self, pages: u64) {
        if let Some(a) = &self.account {
            a.uncharge(pages);
        }
    }

    /// One more user of every page of `[vaddr, +npages)`.
    fn add_users(&mut self, vaddr: u64, npages: u64) {
        for i in 0..npages {
            *self.users.entry(vaddr + i * PAGE_SIZE).or_insert(0) += 1;
        }
    }

    /// One user less of every page of `[vaddr, +npages)`: the pages left
    /// without one (to uncharge).
    fn remove_users(&mut self, vaddr: u64, npages: u64) -> u64 {
        let mut freed = 0;
        for i in 0..npages {
            let page = vaddr + i * PAGE_SIZE;
            if let Some(n) = self.users.get_mut(&page) {
                *n -= 1;
                if *n == 0 {
                    self.users.remove(&page);
                    freed += 1;
                }
            }
        }
        freed
    }

    /// Users of one page.
    pub(crate) fn users_of(&self, page: u64) -> u32 {
        self.users.get(&page).copied().unwrap_or(0)
    }
}

/// One mapping of an IOAS (iommufd's `struct iopt_area`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Area {
    /// First IOVA.
    pub iova: u64,
    /// Last IOVA (inclusive).
    pub last: u64,
    /// User address of the byte at `iova`.
    pub uptr: u64,
    /// Device access.
    #[serde(skip)]
    pub prot: Prot,
    /// Pinned and mapped into the IOAS's domains.
    pub pinned: bool,
    /// Pages of it charged to RLIMIT_MEMLOCK that no area before it (in a
    /// snapshot's order) shares: summed over areas, what the context charged.
    pub charged: u64,
    /// Pages pinned by accesses (mediated devices), by page IOVA: pins.
    pub access_pins: BTreeMap<u64, u32>,
    /// An unmap waits for accesses to drop their pins: new pins and reads
    /// are refused (EINVAL).
    #[serde(skip)]
    pub(crate) prevent_access: bool,
    /// Its memory, shared with copies of it.
    #[serde(skip)]
    pub(crate) pages: SharedPages,
    /// Where the DMA sanitizer keeps its history (its unmap writes there
    /// without a lookup; [`HistorySlot::NONE`] without a sanitizer).
    #[serde(skip)]
    pub(crate) history: HistorySlot,
}

impl PartialEq for Area {
    fn eq(&self, o: &Self) -> bool {
        (
            self.iova,
            self.last,
            self.uptr,
            self.prot,
            self.pinned,
            &self.access_pins,
        ) == (o.iova, o.last, o.uptr, o.prot, o.pinned, &o.access_pins)
    }
}

impl Area {
    /// Page-aligned user address of the page at page IOVA `page`.
    pub(crate) fn vaddr_of(&self, page: u64) -> u64 {
        self.uptr + (page - self.iova)
    }

    /// Pages covered (the area is page aligned when pinned).
    fn npages(&self) -> u64 {
        self.len() / PAGE_SIZE
    }

    /// Bytes covered (`last - iova + 1`; an area never covers all 2^64).
    pub fn len(&self) -> u64 {
        self.last - self.iova + 1
    }

    /// Never true: an area covers at least one byte (clippy's pair for `len`).
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A reserved IOVA range and who reserved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reserved {
    pub(crate) start: u64,
    pub(crate) last: u64,
    /// The bound device whose IOMMU reserves it.
    pub(crate) owner: u32,
}

/// The state of an IOAS object.
pub(crate) struct Ioas {
    pub(crate) areas: BTreeMap<u64, Area>,
    pub(crate) reserved: Vec<Reserved>,
    pub(crate) allowed: Vec<(u64, u64)>,
    /// HWPT ids whose domain mirrors this IOAS, with the domain.
    pub(crate) domains: Vec<(u32, Arc<dyn DomainOps>)>,
    /// Access ids (mediated devices) attached to it.
    pub(crate) accesses: Vec<u32>,
    /// `IOMMU_OPTION_HUGE_PAGES`: when false, domains get 4 KiB leaves
    /// only, so cutting an area (type1 compat) never splits a leaf.
    pub(crate) huge_pages: bool,
    /// Where new mappings are charged (`RLIMIT_MODE`: the user's or the
    /// address space's account).
    pub(crate) account: Arc<MmAccount>,
}

/// A piece of user memory to place in an IOAS: a map (new pages), or a
/// slice of an existing area for a copy (its pages, shared).
#[derive(Debug, Clone)]
pub(crate) struct Piece {
    pub(crate) uptr: u64,
    pub(crate) len: u64,
    pub(crate) pages: Option<SharedPages>,
}

/// What one step of an unmap found.
pub(crate) enum UnmapStep {
    /// Finished: the bytes removed, and whether it stopped at an area that
    /// sticks out of the range (ENOENT whatever was removed before).
    Done { unmapped: u64, sticks_out: bool },
    /// The bytes removed so far; then the area at `iova` (`len` bytes) has
    /// access pins: its accesses must be told to drop them, then the unmap
    /// goes on from `iova`.
    Notify { unmapped: u64, iova: u64, len: u64 },
}

impl Ioas {
    pub(crate) fn new(account: Arc<MmAccount>) -> Self {
        Self {
            areas: BTreeMap::new(),
            reserved: Vec::new(),
            allowed: Vec::new(),
            domains: Vec::new(),
            accesses: Vec::new(),
            huge_pages: true,
            account,
        }
    }

    /// `iopt->iova_alignment`: the smallest page of any domain, and
    /// `PAGE_SIZE` for an access that pins pages; 1 without either.
    pub(crate) fn alignment(&self) -> u64 {
        if self.domains.is_empty() && self.accesses.is_empty() {
            1
        } else {
            PAGE_SIZE
        }
    }

    /// `iopt_check_iova_alignment`: EADDRINUSE when an area is not page
    /// aligned (before a domain or an access raises the alignment).
    pub(crate) fn check_page_alignment(&self) -> Result<()> {
        if self
            .areas
            .values()
            .any(|a| (a.iova | a.len() | (a.uptr % PAGE_SIZE)) & (PAGE_SIZE - 1) != 0)
        {
            return Err(VfioError::Errno(libc::EADDRINUSE));
        }
        Ok(())
    }

    fn domain_ops(&self) -> Vec<Arc<dyn DomainOps>> {
        self.domains.iter().map(|(_, d)| d.clone()).collect()
    }

    /// The first area intersecting `[start, last]`.
    pub(crate) fn first_area(&self, start: u64, last: u64) -> Option<&Area> {
        // The area starting at or before `start` may reach into the range.
        if let Some((_, a)) = self.areas.range(..=start).next_back() {
            if a.last >= start {
                return Some(a);
            }
        }
        self.areas
            .range(start..)
            .next()
            .map(|(_, a)| a)
            .filter(|a| a.iova <= last)
    }

    fn reserved_hit(&self, start: u64, last: u64) -> bool {
        self.reserved
            .iter()
            .any(|r| r.start <= last && start <= r.last)
    }

    /// `IOMMU_IOAS_IOVA_RANGES`: the holes of the reserved list in [0, 2^64).
    pub(crate) fn iova_ranges(&self) -> Vec<(u64, u64)> {
        let mut resv: Vec<(u64, u64)> = self.reserved.iter().map(|r| (r.start, r.last)).collect();
        resv.sort_unstable();
        let mut out = Vec::new();
        let mut next: Option<u64> = Some(0);
        for (s, l) in resv {
            let Some(n) = next else { break };
            if s > n {
                out.push((n, s - 1));
            }
            if l >= n {
                next = l.checked_add(1);
            }
        }
        if let Some(n) = next {
            out.push((n, u64::MAX));
        }
        out
    }

    /// `iopt_check_iova`: may `[iova, iova + length)` hold a new area?
    fn check_iova(&self, iova: u64, length: u64) -> Result<u64> {
        if iova & (self.alignment() - 1) != 0 {
            return Err(VfioError::Invalid("IOVA not aligned to the IOAS"));
        }
        let last = iova
            .checked_add(length - 1)
            .ok_or(VfioError::Errno(libc::EOVERFLOW))?;
        if self.reserved_hit(iova, last) {
            return Err(VfioError::Invalid("IOVA range is reserved"));
        }
        if self.first_area(iova, last).is_some() {
            return Err(VfioError::Exists);
        }
        Ok(last)
    }

    /// `iopt_alloc_iova`: the lowest free IOVA for `length` bytes whose
    /// alignment follows `uptr`'s (so huge pages can be used), within the
    /// allowed ranges when there are any. ENOSPC when none fits.
    fn alloc_iova(&self, uptr: u64, length: u64) -> Result<u64> {
        if length == 0 || length >= u64::MAX / 2 {
            return Err(VfioError::Errno(libc::EOVERFLOW));
        }
        let page_offset = uptr % PAGE_SIZE;
        let pow = length.next_power_of_two();
        let mut align = if uptr == 0 {
            pow
        } else {
            pow.min(1u64 << uptr.trailing_zeros())
        };
        // The largest alignment kept is a transparent huge page (2 MiB).
        align = align.min(2 << 20);
        if align < self.alignment() {
            return Err(VfioError::Invalid("user address below the IOAS alignment"));
        }
        let spans: Vec<(u64, u64)> = if self.allowed.is_empty() {
            vec![(PAGE_SIZE, u64::MAX - PAGE_SIZE)]
        } else {
            self.allowed
                .iter()
                .filter_map(|&(s, l)| {
                    let s = s.max(PAGE_SIZE);
                    let l = l.min(u64::MAX - PAGE_SIZE);
                    (s <= l).then_some((s, l))
                })
                .collect()
        };
        // Used: reserved ranges and areas, merged in order.
        let mut used: Vec<(u64, u64)> = self.reserved.iter().map(|r| (r.start, r.last)).collect();
        used.extend(self.areas.values().map(|a| (a.iova, a.last)));
        used.sort_unstable();
        for (span_start, span_last) in spans {
            // The start of the hole being looked at; None past 2^64.
            let mut cursor = Some(span_start);
            for &(used_start, used_last) in &used {
                let Some(c) = cursor else { break };
                if used_last < c {
                    continue;
                }
                if used_start > span_last {
                    break;
                }
                if used_start > c {
                    if let Some(at) = fit(c, used_start - 1, length, align, page_offset) {
                        return Ok(at);
                    }
                }
                cursor = used_last.checked_add(1).filter(|n| *n <= span_last);
            }
            if let Some(c) = cursor {
                if let Some(at) = fit(c, span_last, length, align, page_offset) {
                    return Ok(at);
                }
            }
        }
        Err(VfioError::NoSpace)
    }

    /// Places `pieces` (contiguous in IOVA) at `iova` (or an allocated
    /// IOVA), pinning and mapping them when the IOAS has domains. All or
    /// nothing. Returns the IOVA used.
    /// `history` gives each new area its sanitizer slot (records its map)
    /// once the map can no longer fail.
    pub(crate) fn map_pieces(
        &mut self,
        mem: &dyn UserMemory,
        pieces: &[Piece],
        fixed_iova: Option<u64>,
        prot: Prot,
        mut history: impl FnMut(&Area) -> HistorySlot,
    ) -> Result<u64> {
        let length = pieces
            .iter()
            .try_fold(0u64, |acc, p| acc.checked_add(p.len))
            .ok_or(VfioError::Errno(libc::EOVERFLOW))?;
        if length == 0 || pieces.is_empty() {
            return Err(VfioError::Invalid("zero length"));
        }
        let iova = match fixed_iova {
            Some(iova) => {
                self.check_iova(iova, length)?;
                iova
            }
            None => self.alloc_iova(pieces[0].uptr, length)?,
        };
        let align = self.alignment();
        let policy = mem.lock_policy();
        let mut new_areas = Vec::with_capacity(pieces.len());
        let mut at = iova;
        for p in pieces {
            if (p.uptr % PAGE_SIZE) & (align - 1) != 0 || p.len & (align - 1) != 0 {
                return Err(VfioError::Invalid("user address or length not aligned"));
            }
            let last = at
                .checked_add(p.len - 1)
                .ok_or(VfioError::Errno(libc::EOVERFLOW))?;
            // A new map makes new pages, charged to this IOAS's account
            // unless the caller may lock memory without limit (Linux decides
            // this once, when the pages are made).
            let pages = p.pages.clone().unwrap_or_else(|| {
                Pages::new_shared((!policy.cap_ipc_lock).then(|| self.account.clone()))
            });
            new_areas.push(Area {
                iova: at,
                last,
                uptr: p.uptr,
                prot,
                pinned: false,
                charged: 0,
                access_pins: BTreeMap::new(),
                prevent_access: false,
                pages,
                history: HistorySlot::NONE,
            });
            at = last.wrapping_add(1);
        }
        if !self.domains.is_empty() {
            let domains = self.domain_ops();
            for i in 0..new_areas.len() {
                let pinned = pin_area(mem, &new_areas[i], &domains, !self.huge_pages, policy);
                if let Err(e) = pinned {
                    // A map that fails halfway leaves no area behind.
                    for done in &mut new_areas[..i] {
                        unpin_area(mem, &domains, done);
                    }
                    return Err(e);
                }
                new_areas[i].pinned = true;
            }
        }
        for mut a in new_areas {
            a.history = history(&a);
            self.areas.insert(a.iova, a);
        }
        Ok(iova)
    }

    /// `iopt_unmap_iova_range`, one step: removes the areas inside
    /// `[start, last]`, in IOVA order, stopping at one that sticks out of
    /// the range (areas before it stay removed, as in Linux), and at one
    /// that accesses pin (marked `prevent_access`: the caller notifies the
    /// accesses and calls again).
    /// `gone` is told of each area removed (the sanitizer records it).
    pub(crate) fn unmap_step(
        &mut self,
        mem: &dyn UserMemory,
        start: u64,
        last: u64,
        mut gone: impl FnMut(&Area),
    ) -> UnmapStep {
        let domains = self.domain_ops();
        let mut unmapped = 0u64;
        while let Some(a) = self.first_area(start, last) {
            if a.iova < start || a.last > last {
                return UnmapStep::Done {
                    unmapped,
                    sticks_out: true,
                };
            }
            let key = a.iova;
            if !a.access_pins.is_empty() {
                let len = a.len();
                if let Some(a) = self.areas.get_mut(&key) {
                    a.prevent_access = true;
                }
                return UnmapStep::Notify {
                    unmapped,
                    iova: key,
                    len,
                };
            }
            if let Some(mut a) = self.areas.remove(&key) {
                unpin_area(mem, &domains, &mut a);
                unmapped = unmapped.wrapping_add(a.len());
                gone(&a);
            }
        }
        UnmapStep::Done {
            unmapped,
            sticks_out: false,
        }
    }

    /// The pieces of user memory behind `[iova, iova + length)`: the range
    /// must be covered by areas without a hole (`iopt_get_pages`). Each
    /// piece shares its area's pages.
    pub(crate) fn pieces(&self, iova: u64, length: u64) -> Result<Vec<(Piece, Prot)>> {
        if length == 0 {
            return Err(VfioError::Invalid("zero length"));
        }
        let last = iova
            .checked_add(length - 1)
            .ok_or(VfioError::Errno(libc::EOVERFLOW))?;
        let mut out = Vec::new();
        let mut at = iova;
        loop {
            let Some(a) = self.first_area(at, at) else {
                return Err(VfioError::NoEntry);
            };
            let end = a.last.min(last);
            out.push((
                Piece {
                    uptr: a.uptr + (at - a.iova),
                    len: end - at + 1,
                    pages: Some(a.pages.clone()),
                },
                a.prot,
            ));
            if end == last {
                return Ok(out);
            }
            at = end + 1;
        }
    }

    /// Adds a domain: pins what is not pinned yet and maps every area into
    /// it. All or nothing.
    pub(crate) fn add_domain(
        &mut self,
        mem: &dyn UserMemory,
        hwpt: u32,
        domain: Arc<dyn DomainOps>,
    ) -> Result<()> {
        // iopt_check_iova_alignment.
        self.check_page_alignment()?;
        let policy = mem.lock_policy();
        let small = !self.huge_pages;
        let one = std::slice::from_ref(&domain);
        // (area key, newly pinned) of every area done so far.
        let mut done: Vec<(u64, bool)> = Vec::new();
        let mut failure = None;
        for a in self.areas.values() {
            let r = if a.pinned {
                map_run(domain.as_ref(), a.iova, a.uptr, a.len(), a.prot, small)
            } else {
                pin_area(mem, a, one, small, policy)
            };
            match r {
                Ok(()) => done.push((a.iova, !a.pinned)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            for (iova, newly) in done.into_iter().rev() {
                if let Some(a) = self.areas.get_mut(&iova) {
                    if newly {
                        a.pinned = true;
                        unpin_area(mem, one, a);
                    } else {
                        crate::type1::state::unmap_all_of(domain.as_ref(), a.iova, a.len());
                        domain.flush(a.iova, a.len());
                    }
                }
            }
            return Err(e);
        }
        for (iova, newly) in done {
            if let Some(a) = self.areas.get_mut(&iova) {
                a.pinned |= newly;
            }
        }
        self.domains.push((hwpt, domain));
        Ok(())
    }

    /// Removes a domain: unmaps every area from it; with the last domain
    /// gone the areas are unpinned and their pages uncharged (but for the
    /// pages accesses still pin).
    pub(crate) fn remove_domain(&mut self, mem: &dyn UserMemory, hwpt: u32) {
        let Some(pos) = self.domains.iter().position(|(h, _)| *h == hwpt) else {
            return;
        };
        let (_, domain) = self.domains.remove(pos);
        let last_domain = self.domains.is_empty();
        for a in self.areas.values_mut() {
            if last_domain && a.pinned {
                unpin_area(mem, std::slice::from_ref(&domain), a);
            } else {
                crate::type1::state::unmap_all_of(domain.as_ref(), a.iova, a.len());
            }
        }
        if !last_domain {
            domain.flush(0, u64::MAX);
        }
    }

    /// Removes every area (destroy, close), with any access pins left;
    /// `gone` is told of each.
    pub(crate) fn clear(&mut self, mem: &dyn UserMemory, mut gone: impl FnMut(&Area)) {
        let domains = self.domain_ops();
        for (_, mut a) in std::mem::take(&mut self.areas) {
            drop_access_pins(mem, &mut a);
            unpin_area(mem, &domains, &mut a);
            gone(&a);
        }
    }

    /// Fills each area's `charged` for a snapshot: the pages it uses that
    /// no area before it (in `seen` order) shares. Returns the sum.
    pub(crate) fn fill_charged(&mut self, seen: &mut Vec<(SharedPages, Vec<u64>)>) -> u64 {
        let mut total = 0;
        for a in self.areas.values_mut() {
            let pages = lock_pages(&a.pages);
            let mut mine: Vec<u64> = if a.pinned {
                (0..a.npages()).map(|i| a.uptr + i * PAGE_SIZE).collect()
            } else {
                a.access_pins
                    .keys()
                    .map(|p| a.uptr + (p - a.iova))
                    .collect()
            };
            if pages.account.is_none() {
                mine.clear();
            }
            drop(pages);
            let entry = match seen.iter_mut().position(|(p, _)| Arc::ptr_eq(p, &a.pages)) {
                Some(i) => &mut seen[i].1,
                None => {
                    seen.push((a.pages.clone(), Vec::new()));
                    &mut seen.last_mut().expect("just pushed").1
                }
            };
            let new: Vec<u64> = mine.into_iter().filter(|v| !entry.contains(v)).collect();
            a.charged = new.len() as u64;
            total += a.charged;
            entry.extend(new);
        }
        total
    }

    /// Checks this module's invariants; the first broken one, described.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        let mut prev: Option<u64> = None;
        for (k, a) in &self.areas {
            if *k != a.iova || a.last < a.iova {
                return Err(format!("area {:#x} malformed", a.iova));
            }
            if prev.is_some_and(|p| p >= a.iova) {
                return Err(format!("area {:#x} overlaps the one before", a.iova));
            }
            prev = Some(a.last);
            if self.reserved_hit(a.iova, a.last) {
                return Err(format!("area {:#x} in a reserved range", a.iova));
            }
            if a.pinned == self.domains.is_empty() {
                return Err(format!(
                    "area {:#x} pinned={} with {} domains",
                    a.iova,
                    a.pinned,
                    self.domains.len()
                ));
            }
            if self.alignment() == PAGE_SIZE && self.check_page_alignment().is_err() {
                return Err(format!("area {:#x} not page aligned", a.iova));
            }
            let pages = lock_pages(&a.pages);
            for (p, n) in &a.access_pins {
                if *n == 0 || *p < a.iova || *p > a.last {
                    return Err(format!("area {:#x} has a bad access pin at {p:#x}", a.iova));
                }
            }
            let needed = if a.pinned { a.npages() } else { 0 };
            let used = (0..needed)
                .map(|i| a.uptr + i * PAGE_SIZE)
                .chain(a.access_pins.keys().map(|p| a.vaddr_of(*p)))
                .find(|v| pages.users_of(*v) == 0);
            if let Some(v) = used {
                return Err(format!(
                    "area {:#x} uses page {v:#x} without a user count",
                    a.iova
                ));
            }
        }
        Ok(())
    }
}

/// Charges the pages of `a` that have no user yet, pins its memory and maps
/// it into `domains`; then counts the area as a user of its pages. All or
/// nothing.
fn pin_area(
    mem: &dyn UserMemory,
    a: &Area,
    domains: &[Arc<dyn DomainOps>],
    small_pages: bool,
    policy: LockPolicy,
) -> Result<()> {
    // iommufd pins with pin_user_pages, which refuses the VM_PFNMAP pages
    // of a BAR mapping (type1 maps them).
    if mem.is_device_range(a.uptr, a.len()) {
        return Err(VfioError::Fault);
    }
    let mut pages = lock_pages(&a.pages);
    let new = pages.unused(a.uptr, a.npages());
    pages.charge(new, policy)?;
    let req = PinRequest {
        iova: a.iova,
        vaddr: a.uptr,
        size: a.len(),
        prot: a.prot,
        charge: 0,
        small_pages,
    };
    if let Err(e) = pin_and_map_pages(mem, req, &|v| v, domains, policy) {
        pages.uncharge(new);
        return Err(e);
    }
    pages.add_users(a.uptr, a.npages());
    Ok(())
}

/// The reverse of [`pin_area`] (nothing to do for an area not pinned):
/// unmaps, flushes, unpins, and uncharges the pages left without a user.
fn unpin_area(mem: &dyn UserMemory, domains: &[Arc<dyn DomainOps>], a: &mut Area) {
    if !a.pinned {
        return;
    }
    unmap_unpin_pages(mem, domains, a.iova, a.uptr, a.len(), 0);
    let mut pages = lock_pages(&a.pages);
    let freed = pages.remove_users(a.uptr, a.npages());
    pages.uncharge(freed);
    a.pinned = false;
}

/// Drops every access pin of `a` (an area going away while a device still
/// pins it: close of everything).
pub(crate) fn drop_access_pins(mem: &dyn UserMemory, a: &mut Area) {
    let pins = std::mem::take(&mut a.access_pins);
    let mut pages = lock_pages(&a.pages);
    let mut freed = 0;
    for page in pins.keys() {
        let v = a.uptr + (page - a.iova);
        mem.unpin(v, PAGE_SIZE);
        freed += pages.remove_users(v, 1);
    }
    pages.uncharge(freed);
}

/// One more access pin of page `page` (page IOVA) of `a`. The first pin of
/// a page pins its memory and makes the area a user of it, charging it when
/// it had no user. ENOMEM over the limit, EFAULT for missing memory.
pub(crate) fn access_pin_page(
    mem: &dyn UserMemory,
    a: &mut Area,
    page: u64,
    policy: LockPolicy,
) -> Result<()> {
    if let Some(n) = a.access_pins.get_mut(&page) {
        *n = n
            .checked_add(1)
            .ok_or(VfioError::Invalid("pin count overflow"))?;
        return Ok(());
    }
    let v = a.vaddr_of(page);
    let mut pages = lock_pages(&a.pages);
    let new = pages.unused(v, 1);
    pages.charge(new, policy)?;
    if let Err(e) = mem.pin(v, PAGE_SIZE, a.prot.write, &mut |_| Ok(())) {
        pages.uncharge(new);
        return Err(VfioError::Memory(e));
    }
    pages.add_users(v, 1);
    a.access_pins.insert(page, 1);
    Ok(())
}

/// One access pin less of page `page` of `a` (false when it had none).
pub(crate) fn access_unpin_page(mem: &dyn UserMemory, a: &mut Area, page: u64) -> bool {
    let Some(n) = a.access_pins.get_mut(&page) else {
        return false;
    };
    *n -= 1;
    if *n == 0 {
        a.access_pins.remove(&page);
        let v = a.vaddr_of(page);
        mem.unpin(v, PAGE_SIZE);
        let mut pages = lock_pages(&a.pages);
        let freed = pages.remove_users(v, 1);
        pages.uncharge(freed);
    }
    true
}

/// `__alloc_iova_check_range`: the first IOVA in `[start, last]` aligned to
/// `align` (with `page_offset` kept) that leaves room for `length` bytes.
fn fit(start: u64, last: u64, length: u64, align: u64, page_offset: u64) -> Option<u64> {
    let aligned = start.checked_add(align - 1)? & !(align - 1);
    let aligned = aligned | page_offset;
    if aligned >= last || last - aligned < length - 1 {
        return None;
    }
    Some(aligned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_the_holes_of_the_reserved_list() {
        let mut ioas = Ioas::new(Arc::new(MmAccount::new()));
        assert_eq!(ioas.iova_ranges(), vec![(0, u64::MAX)]);
        ioas.reserved.push(Reserved {
            start: 0xfee0_0000,
            last: 0xfeef_ffff,
            owner: 1,
        });
        ioas.reserved.push(Reserved {
            start: 1 << 39,
            last: u64::MAX,
            owner: 1,
        });
        assert_eq!(
            ioas.iova_ranges(),
            vec![(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)]
        );
    }

    #[test]
    fn allocation_follows_linux() {
        let ioas = Ioas::new(Arc::new(MmAccount::new()));
        // Page-aligned user address at an odd page: 4 KiB alignment.
        assert_eq!(ioas.alloc_iova(0x7f00_0000_1000, 0x2000), Ok(0x1000));
        // Half-page user address: the page offset is kept.
        let mut ioas = Ioas::new(Arc::new(MmAccount::new()));
        ioas.areas.insert(
            0x1000,
            Area {
                iova: 0x1000,
                last: 0x2fff,
                uptr: 0,
                prot: Prot::RW,
                pinned: false,
                charged: 0,
                access_pins: BTreeMap::new(),
                prevent_access: false,
                pages: Pages::new_shared(None),
                history: HistorySlot::NONE,
            },
        );
        assert_eq!(ioas.alloc_iova(0x7f00_0000_1800, 0x1000), Ok(0x3800));
    }
}
