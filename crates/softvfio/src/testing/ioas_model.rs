//! A reference model of iommufd's IOAS areas, written from Linux 6.12's
//! rules (`tests-oracle/kernel-6.12-iommufd.txt`), not from the engine: the
//! property test (`tests/iommufd_model.rs`) and the differential fuzz target
//! (`fuzz/fuzz_targets/iommufd.rs`) run the same operations on both and
//! compare results, errno, areas, pins and accounting.
//!
//! The modelled context has two IOASes and one device that may be attached
//! to the first, behind an IOMMU with a 39-bit aperture and the MSI window
//! reserved. Fixed IOVAs only (allocation is unit-tested against the
//! reference's answers).

use std::collections::BTreeMap;

/// The MSI window every x86 device reserves.
pub const MSI: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);
/// Last IOVA of the 39-bit aperture.
pub const APERTURE_LAST: u64 = (1 << 39) - 1;
const PG: u64 = 4096;

/// One area: `(last, user address)` by first IOVA.
pub type Areas = BTreeMap<u64, (u64, u64)>;

/// The model.
#[derive(Debug, Default, Clone)]
pub struct IoasModel {
    /// Areas of IOAS 0 and 1.
    pub ioas: [Areas; 2],
    /// The device is attached to IOAS 0.
    pub attached: bool,
    /// The user memory that can be pinned, `[start, end)`; `None`: any.
    /// Areas are pinned only while attached (iommufd pins lazily), so an
    /// area over memory that is not there fails (EFAULT) when it is placed
    /// into, or attached with, IOAS 0.
    pub memory: Option<(u64, u64)>,
    /// The pages object of each area (by IOAS, by first IOVA): a map makes
    /// a new one, a copy shares its source's (Linux's `iopt_pages`).
    pub pages: [BTreeMap<u64, u64>; 2],
    /// The next pages object's number.
    pub next_pages: u64,
}

impl IoasModel {
    fn reserved(&self, start: u64, last: u64) -> bool {
        self.attached && ((start <= MSI.1 && MSI.0 <= last) || last > APERTURE_LAST)
    }

    fn overlaps(areas: &Areas, start: u64, last: u64) -> bool {
        areas.iter().any(|(s, (l, _))| *s <= last && start <= *l)
    }

    /// `IOMMU_IOAS_MAP` with a fixed IOVA: the errno (0 on success).
    pub fn map(&mut self, i: usize, iova: u64, uptr: u64, len: u64) -> i32 {
        if len == 0 {
            return libc::EINVAL;
        }
        if uptr.checked_add(len).is_none() {
            return libc::EOVERFLOW;
        }
        self.next_pages += 1;
        let id = self.next_pages;
        self.place(i, &[(uptr, len, id)], iova)
    }

    fn place(&mut self, i: usize, pieces: &[(u64, u64, u64)], iova: u64) -> i32 {
        let len: u64 = pieces.iter().map(|p| p.1).sum();
        let strict = i == 0 && self.attached;
        if strict && !iova.is_multiple_of(PG) {
            return libc::EINVAL;
        }
        let Some(last) = iova.checked_add(len - 1) else {
            return libc::EOVERFLOW;
        };
        if i == 0 && self.reserved(iova, last) {
            return libc::EINVAL;
        }
        if Self::overlaps(&self.ioas[i], iova, last) {
            return libc::EEXIST;
        }
        if strict && pieces.iter().any(|(u, l, _)| (u | l) % PG != 0) {
            return libc::EINVAL;
        }
        if strict && pieces.iter().any(|&(u, l, _)| !self.pinnable(u, l)) {
            return libc::EFAULT;
        }
        let mut at = iova;
        for (u, l, id) in pieces {
            // `at + (l - 1)`: the last piece may end at 2^64 - 1.
            self.ioas[i].insert(at, (at + (l - 1), *u));
            self.pages[i].insert(at, *id);
            at = at.wrapping_add(*l);
        }
        0
    }

    /// `IOMMU_IOAS_UNMAP`: bytes unmapped, or the errno.
    pub fn unmap(&mut self, i: usize, iova: u64, len: u64) -> Result<u64, i32> {
        if len == 0 {
            return Err(libc::EINVAL);
        }
        let last = iova.checked_add(len - 1).ok_or(libc::EOVERFLOW)?;
        let mut done = 0u64;
        let hits: Vec<(u64, u64)> = self.ioas[i]
            .iter()
            .filter(|(s, (l, _))| **s <= last && iova <= *l)
            .map(|(s, (l, _))| (*s, *l))
            .collect();
        for (s, l) in hits {
            if s < iova || l > last {
                return Err(libc::ENOENT);
            }
            self.ioas[i].remove(&s);
            self.pages[i].remove(&s);
            done += l - s + 1;
        }
        if done == 0 {
            Err(libc::ENOENT)
        } else {
            Ok(done)
        }
    }

    /// Unmap-all: the bytes removed.
    pub fn unmap_all(&mut self, i: usize) -> u64 {
        let n = self.ioas[i].iter().map(|(s, (l, _))| l - s + 1).sum();
        self.ioas[i].clear();
        self.pages[i].clear();
        n
    }

    /// `IOMMU_IOAS_COPY` from IOAS `src` to `1 - src`, fixed IOVA.
    pub fn copy(&mut self, src: usize, src_iova: u64, len: u64, dst_iova: u64) -> i32 {
        if len == 0 {
            return libc::EINVAL;
        }
        let Some(last) = src_iova.checked_add(len - 1) else {
            return libc::EOVERFLOW;
        };
        let mut pieces = Vec::new();
        let mut at = src_iova;
        loop {
            let Some((s, (l, u))) = self.ioas[src]
                .iter()
                .find(|(s, (l, _))| **s <= at && at <= *l)
                .map(|(s, v)| (*s, *v))
            else {
                return libc::ENOENT;
            };
            let end = l.min(last);
            let id = self.pages[src].get(&s).copied().unwrap_or(0);
            pieces.push((u + (at - s), end - at + 1, id));
            if end == last {
                break;
            }
            at = end + 1;
        }
        self.place(1 - src, &pieces, dst_iova)
    }

    /// Can `[uptr, uptr + len)` be pinned?
    fn pinnable(&self, uptr: u64, len: u64) -> bool {
        self.memory.is_none_or(|(start, end)| {
            uptr >= start && uptr.checked_add(len).is_some_and(|e| e <= end)
        })
    }

    /// Attaching the device to IOAS 0: EADDRINUSE when an area is in a
    /// reserved range, EINVAL-free otherwise; unaligned areas refuse it.
    pub fn attach(&mut self) -> i32 {
        if self.attached {
            return 0;
        }
        if self.ioas[0]
            .iter()
            .any(|(s, (l, u))| (s | (l - s + 1) | u) % PG != 0)
        {
            return libc::EADDRINUSE;
        }
        self.attached = true;
        if self.ioas[0].iter().any(|(s, (l, _))| self.reserved(*s, *l)) {
            self.attached = false;
            return libc::EADDRINUSE;
        }
        if self.ioas[0]
            .iter()
            .any(|(s, (l, u))| !self.pinnable(*u, l - s + 1))
        {
            self.attached = false;
            return libc::EFAULT;
        }
        0
    }

    /// Detaching: the automatic HWPT goes, nothing stays pinned.
    pub fn detach(&mut self) {
        self.attached = false;
    }

    /// Pages the engine must have charged: the distinct pages of IOAS 0's
    /// areas while attached, a page shared by copies of one map counting
    /// once.
    pub fn charged_pages(&self) -> u64 {
        if !self.attached {
            return 0;
        }
        let mut used = std::collections::BTreeSet::new();
        for (s, (l, u)) in &self.ioas[0] {
            let id = self.pages[0].get(s).copied().unwrap_or(0);
            for p in 0..(l - s + 1) / PG {
                used.insert((id, u + p * PG));
            }
        }
        used.len() as u64
    }

    /// Pages the engine must have pinned: IOAS 0's while attached.
    pub fn pinned_pages(&self) -> u64 {
        if !self.attached {
            return 0;
        }
        self.ioas[0]
            .iter()
            .map(|(s, (l, _))| (l - s + 1) / PG)
            .sum()
    }
}
