//! An I/O address space (iommufd's `struct io_pagetable`): areas of user
//! memory at IOVAs, the reserved and allowed IOVA lists, and the domains
//! (HWPTs) every area is mapped into.
//!
//! # Invariants
//!
//! - areas are `[iova, last]` with `last >= iova`, disjoint, keyed by `iova`;
//! - no area intersects a reserved range;
//! - an area is `pinned` exactly when the IOAS has at least one domain: its
//!   pages are then pinned once, charged `charged` pages, and mapped into
//!   every domain of `domains` (the pinning, accounting and unmap-flush-unpin
//!   order are type1's, through the shared helpers in [`crate::type1`]);
//! - while a domain is present, every area's IOVA, length and user address
//!   are page aligned (`alignment` is then `PAGE_SIZE`, else 1);
//! - `allowed` is sorted and disjoint.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Result, VfioError};
use crate::iommu::{DomainOps, Prot};
use crate::memory::{UserMemory, PAGE_SIZE};
use crate::type1::{map_run, pin_and_map_pages, unmap_unpin_pages, PinRequest};

/// One mapping of an IOAS (iommufd's `struct iopt_area`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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
    /// Pages charged to RLIMIT_MEMLOCK for it.
    pub charged: u64,
}

impl Area {
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
    /// `IOMMU_OPTION_HUGE_PAGES`: when false, domains get 4 KiB leaves
    /// only, so cutting an area (type1 compat) never splits a leaf.
    pub(crate) huge_pages: bool,
}

/// A piece of user memory to place in an IOAS: a map, or a slice of an
/// existing area for a copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece {
    pub(crate) uptr: u64,
    pub(crate) len: u64,
}

impl Ioas {
    pub(crate) fn new() -> Self {
        Self {
            areas: BTreeMap::new(),
            reserved: Vec::new(),
            allowed: Vec::new(),
            domains: Vec::new(),
            huge_pages: true,
        }
    }

    /// `iopt->iova_alignment`: the smallest page of any domain, 1 without.
    pub(crate) fn alignment(&self) -> u64 {
        if self.domains.is_empty() {
            1
        } else {
            PAGE_SIZE
        }
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
    pub(crate) fn map_pieces(
        &mut self,
        mem: &dyn UserMemory,
        pieces: &[Piece],
        fixed_iova: Option<u64>,
        prot: Prot,
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
        let mut new_areas = Vec::with_capacity(pieces.len());
        let mut at = iova;
        for p in pieces {
            if (p.uptr % PAGE_SIZE) & (align - 1) != 0 || p.len & (align - 1) != 0 {
                return Err(VfioError::Invalid("user address or length not aligned"));
            }
            let last = at
                .checked_add(p.len - 1)
                .ok_or(VfioError::Errno(libc::EOVERFLOW))?;
            new_areas.push(Area {
                iova: at,
                last,
                uptr: p.uptr,
                prot,
                pinned: false,
                charged: 0,
            });
            at = last.wrapping_add(1);
        }
        if !self.domains.is_empty() {
            let domains = self.domain_ops();
            let policy = mem.lock_policy();
            for i in 0..new_areas.len() {
                let a = &new_areas[i];
                let req = PinRequest {
                    iova: a.iova,
                    vaddr: a.uptr,
                    size: a.len(),
                    prot,
                    charge: a.len() / PAGE_SIZE,
                    small_pages: !self.huge_pages,
                };
                // iommufd pins with pin_user_pages, which refuses the
                // VM_PFNMAP pages of a BAR mapping (type1 maps them).
                if mem.is_device_range(req.vaddr, req.size) {
                    for done in &new_areas[..i] {
                        release_area(mem, &domains, done);
                    }
                    return Err(VfioError::Fault);
                }
                match pin_and_map_pages(mem, req, &|v| v, &domains, policy) {
                    Ok(charged) => {
                        new_areas[i].pinned = true;
                        new_areas[i].charged = charged;
                    }
                    Err(e) => {
                        // A map that fails halfway leaves no area behind.
                        for done in &new_areas[..i] {
                            release_area(mem, &domains, done);
                        }
                        return Err(e);
                    }
                }
            }
        }
        for a in new_areas {
            self.areas.insert(a.iova, a);
        }
        Ok(iova)
    }

    /// `iopt_unmap_iova_range`: removes the areas inside `[start, last]`, in
    /// IOVA order, stopping with ENOENT at one that sticks out of the range
    /// (areas before it stay removed, as in Linux). ENOENT when nothing was
    /// inside; the bytes removed otherwise.
    pub(crate) fn unmap_range(
        &mut self,
        mem: &dyn UserMemory,
        start: u64,
        last: u64,
    ) -> (u64, Result<()>) {
        let domains = self.domain_ops();
        let mut unmapped = 0u64;
        let mut rc = Err(VfioError::NoEntry);
        while let Some(a) = self.first_area(start, last) {
            if a.iova < start || a.last > last {
                return (unmapped, Err(VfioError::NoEntry));
            }
            let key = a.iova;
            if let Some(a) = self.areas.remove(&key) {
                release_area(mem, &domains, &a);
                unmapped = unmapped.wrapping_add(a.len());
                rc = Ok(());
            }
        }
        (unmapped, rc)
    }

    /// The pieces of user memory behind `[iova, iova + length)`: the range
    /// must be covered by areas without a hole (`iopt_get_pages`).
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
        if self
            .areas
            .values()
            .any(|a| (a.iova | a.len() | (a.uptr % PAGE_SIZE)) & (PAGE_SIZE - 1) != 0)
        {
            // iopt_check_iova_alignment.
            return Err(VfioError::Errno(libc::EADDRINUSE));
        }
        let policy = mem.lock_policy();
        let mut done: Vec<(u64, bool, u64)> = Vec::new();
        let mut failure = None;
        for a in self.areas.values() {
            if a.pinned {
                let small = !self.huge_pages;
                if let Err(e) = map_run(domain.as_ref(), a.iova, a.uptr, a.len(), a.prot, small) {
                    failure = Some(e);
                    break;
                }
                done.push((a.iova, false, 0));
            } else {
                let req = PinRequest {
                    iova: a.iova,
                    vaddr: a.uptr,
                    size: a.len(),
                    prot: a.prot,
                    charge: a.len() / PAGE_SIZE,
                    small_pages: !self.huge_pages,
                };
                let pinned = if mem.is_device_range(req.vaddr, req.size) {
                    Err(VfioError::Fault)
                } else {
                    pin_and_map_pages(mem, req, &|v| v, std::slice::from_ref(&domain), policy)
                };
                match pinned {
                    Ok(charged) => done.push((a.iova, true, charged)),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        if let Some(e) = failure {
            for (iova, pinned, charged) in done.into_iter().rev() {
                if let Some(a) = self.areas.get(&iova) {
                    if pinned {
                        unmap_unpin_pages(
                            mem,
                            std::slice::from_ref(&domain),
                            a.iova,
                            a.uptr,
                            a.len(),
                            charged,
                        );
                    } else {
                        crate::type1::state::unmap_all_of(domain.as_ref(), a.iova, a.len());
                        domain.flush(a.iova, a.len());
                    }
                }
            }
            return Err(e);
        }
        for (iova, pinned, charged) in done {
            if let Some(a) = self.areas.get_mut(&iova) {
                if pinned {
                    a.pinned = true;
                    a.charged = charged;
                }
            }
        }
        self.domains.push((hwpt, domain));
        Ok(())
    }

    /// Removes a domain: unmaps every area from it; with the last domain
    /// gone the areas are unpinned and uncharged.
    pub(crate) fn remove_domain(&mut self, mem: &dyn UserMemory, hwpt: u32) {
        let Some(pos) = self.domains.iter().position(|(h, _)| *h == hwpt) else {
            return;
        };
        let (_, domain) = self.domains.remove(pos);
        let last_domain = self.domains.is_empty();
        for a in self.areas.values_mut() {
            if last_domain && a.pinned {
                unmap_unpin_pages(
                    mem,
                    std::slice::from_ref(&domain),
                    a.iova,
                    a.uptr,
                    a.len(),
                    a.charged,
                );
                a.pinned = false;
                a.charged = 0;
            } else {
                crate::type1::state::unmap_all_of(domain.as_ref(), a.iova, a.len());
            }
        }
        if !last_domain {
            domain.flush(0, u64::MAX);
        }
    }

    /// Removes every area (destroy, close).
    pub(crate) fn clear(&mut self, mem: &dyn UserMemory) {
        let domains = self.domain_ops();
        for (_, a) in std::mem::take(&mut self.areas) {
            release_area(mem, &domains, &a);
        }
    }

    /// Pages pinned for its areas.
    pub(crate) fn charged(&self) -> u64 {
        self.areas.values().map(|a| a.charged).sum()
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
            let want = if a.pinned { a.len() / PAGE_SIZE } else { 0 };
            if a.charged != want {
                return Err(format!(
                    "area {:#x} charges {} pages, not {want}",
                    a.iova, a.charged
                ));
            }
        }
        Ok(())
    }
}

/// Unmaps, flushes, unpins and uncharges one area (nothing to do for an
/// area that was never pinned).
fn release_area(mem: &dyn UserMemory, domains: &[Arc<dyn DomainOps>], a: &Area) {
    if a.pinned {
        unmap_unpin_pages(mem, domains, a.iova, a.uptr, a.len(), a.charged);
    }
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
        let mut ioas = Ioas::new();
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
        let ioas = Ioas::new();
        // Page-aligned user address at an odd page: 4 KiB alignment.
        assert_eq!(ioas.alloc_iova(0x7f00_0000_1000, 0x2000), Ok(0x1000));
        // Half-page user address: the page offset is kept.
        let mut ioas = Ioas::new();
        ioas.areas.insert(
            0x1000,
            Area {
                iova: 0x1000,
                last: 0x2fff,
                uptr: 0,
                prot: Prot::RW,
                pinned: false,
                charged: 0,
            },
        );
        assert_eq!(ioas.alloc_iova(0x7f00_0000_1800, 0x1000), Ok(0x3800));
    }
}
