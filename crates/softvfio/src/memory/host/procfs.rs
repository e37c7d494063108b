//! What the host backend reads from `/proc/<pid>`: the VMAs of a range
//! (`PROCMAP_QUERY` on `maps`, or `smaps` on older kernels), page-table
//! entries and PFNs (`pagemap`, `PAGEMAP_SCAN`), and the effective
//! capabilities (`status`). Parsing only: the system calls are in `ffi`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU8, Ordering};

use super::ffi;
use super::{MemError, PAGE_SIZE};

/// A tri-state for what the kernel turned out to support.
pub(super) const UNKNOWN: u8 = 0;
pub(super) const YES: u8 = 1;
pub(super) const NO: u8 = 2;

/// The per-process files the backend reads, opened once and kept.
pub(super) struct ProcFiles {
    pub(super) pid: i32,
    pub(super) maps: File,
    pub(super) pagemap: Option<File>,
    /// PROCMAP_QUERY ioctl works on `maps`.
    pub(super) query: AtomicU8,
    /// PAGEMAP_SCAN ioctl works on `pagemap`.
    pub(super) scan: AtomicU8,
    /// `pagemap` shows real PFNs (opened with CAP_SYS_ADMIN).
    pub(super) pfns: AtomicU8,
}

/// One VMA, as far as pinning cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Vma {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) read: bool,
    pub(super) write: bool,
    /// Size of the pages the kernel maps it with (2M/1G for hugetlb).
    pub(super) page_size: u64,
}

/// CapEff of a process: what `/proc/<pid>/status` shows, read with one
/// `capget` (the target's credentials, as the status file prints them)
/// instead of opening and parsing the status file (ten system calls, read
/// at every MAP_DMA for the accounting policy).
pub(super) fn cap_eff_of(pid: i32) -> Result<u64, String> {
    ffi::capget_effective(pid)
}

/// Every byte of `[start, end)` is covered by `vmas` (sorted, overlapping the
/// range) with the access asked for. The kernel's GUP asks VM_WRITE for a
/// write pin and VM_READ otherwise.
pub(super) fn check_access(
    vmas: &[Vma],
    start: u64,
    end: u64,
    write: bool,
) -> Result<(), MemError> {
    let mut cur = start;
    for v in vmas {
        if v.start > cur || !(if write { v.write } else { v.read }) {
            return Err(MemError::Fault);
        }
        cur = v.end;
        if cur >= end {
            return Ok(());
        }
    }
    Err(MemError::Fault)
}

impl ProcFiles {
    /// The VMAs overlapping `[start, end)`, in address order (holes are not
    /// an error here).
    pub(super) fn vmas(&self, start: u64, end: u64) -> Result<Vec<Vma>, MemError> {
        if self.query.load(Ordering::Relaxed) != NO {
            match self.vmas_by_query(start, end) {
                Ok(v) => {
                    self.query.store(YES, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(errno @ (libc::ENOTTY | libc::EINVAL))
                    if self.query.load(Ordering::Relaxed) == UNKNOWN =>
                {
                    tracing::debug!("PROCMAP_QUERY unsupported (errno {errno}); reading smaps");
                    self.query.store(NO, Ordering::Relaxed);
                }
                Err(errno) => {
                    tracing::debug!("PROCMAP_QUERY at {start:#x}: errno {errno}");
                    return Err(MemError::Unreachable);
                }
            }
        }
        self.vmas_by_smaps(start, end)
    }

    pub(super) fn vmas_by_query(&self, start: u64, end: u64) -> Result<Vec<Vma>, i32> {
        let mut out = Vec::new();
        let mut cur = start;
        while cur < end {
            match ffi::procmap_query(self.maps.as_raw_fd(), cur) {
                Ok(v) if v.start < end => {
                    cur = v.end;
                    out.push(v);
                }
                Ok(_) | Err(libc::ENOENT) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Fallback for kernels before 6.11: one read of smaps, whose
    /// `KernelPageSize` gives the hugetlb page size.
    pub(super) fn vmas_by_smaps(&self, start: u64, end: u64) -> Result<Vec<Vma>, MemError> {
        let text = std::fs::read_to_string(format!("/proc/{}/smaps", self.pid)).map_err(|e| {
            tracing::warn!("smaps of pid {}: {e}", self.pid);
            MemError::Unreachable
        })?;
        Ok(parse_smaps(&text)
            .into_iter()
            .filter(|v| v.end > start && v.start < end)
            .collect())
    }

    /// The sub-ranges of `[start, end)` mapped by PMD-sized transparent huge
    /// pages, or `None` when the kernel cannot tell (no PAGEMAP_SCAN).
    pub(super) fn thp_ranges(&self, start: u64, end: u64) -> Option<Vec<(u64, u64)>> {
        let pagemap = self.pagemap.as_ref()?;
        if self.scan.load(Ordering::Relaxed) == NO {
            return None;
        }
        match ffi::pagemap_scan_huge(pagemap.as_raw_fd(), start, end) {
            Ok(v) => {
                self.scan.store(YES, Ordering::Relaxed);
                Some(v)
            }
            Err(errno) => {
                tracing::debug!("PAGEMAP_SCAN: errno {errno}; no THP detection");
                self.scan.store(NO, Ordering::Relaxed);
                None
            }
        }
    }

    /// PFNs of the `n` pages from `addr` (0 where not present), or `None`
    /// when PFNs are hidden (not root) or unreadable.
    pub(super) fn pfns(&self, addr: u64, n: usize) -> Option<Vec<u64>> {
        let pagemap = self.pagemap.as_ref()?;
        if self.pfns.load(Ordering::Relaxed) == NO {
            return None;
        }
        let entries = read_pagemap(pagemap, addr, n)
            .inspect_err(|e| tracing::debug!("pagemap read at {addr:#x}: {e}"))
            .ok()?;
        let mut present = false;
        let mut any_pfn = false;
        let pfns: Vec<u64> = entries
            .iter()
            .map(|&e| {
                let p = e >> 63 != 0;
                let pfn = if p { e & ((1 << 55) - 1) } else { 0 };
                present |= p;
                any_pfn |= pfn != 0;
                pfn
            })
            .collect();
        if present && !any_pfn {
            // Present pages with PFN 0: the kernel hides PFNs from us.
            self.pfns.store(NO, Ordering::Relaxed);
            return None;
        }
        if any_pfn {
            self.pfns.store(YES, Ordering::Relaxed);
        }
        Some(pfns)
    }
}

/// Ranges up to this many pages are checked in pagemap before their
/// populate ([`ProcFiles::populated`]); a larger pin pays the populate,
/// small beside its own cost.
pub(super) const POPULATED_CHECK_PAGES: u64 = 64;

/// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;

/// Whether a populate of a page with this pagemap `entry` would change
/// nothing: the page is present, and for a write pin mapped by this
/// process alone (an anonymous page shared copy-on-write after a fork, or
/// the shared zero page, is not exclusive: the populate must break COW).
pub(super) fn populate_is_noop(entry: u64, write: bool) -> bool {
    entry & PM_PRESENT != 0 && (!write || entry & PM_MMAP_EXCLUSIVE != 0)
}

impl ProcFiles {
    /// Every page of the small range `[start, end)` is already faulted in
    /// as a pin with this access needs it ([`populate_is_noop`]); false
    /// when it is larger than [`POPULATED_CHECK_PAGES`] or pagemap cannot
    /// be read. Costs one pagemap read.
    pub(super) fn populated(&self, start: u64, end: u64, write: bool) -> bool {
        let n = (end - start) / PAGE_SIZE;
        if n == 0 || n > POPULATED_CHECK_PAGES {
            return false;
        }
        let Some(pagemap) = self.pagemap.as_ref() else {
            return false;
        };
        read_pagemap(pagemap, start, n as usize)
            .is_ok_and(|e| e.iter().all(|&e| populate_is_noop(e, write)))
    }

    /// The parts of `[start, end)` in VMAs with VM_LOCKED (smaps `VmFlags`
    /// has `lo`), or `None` when smaps cannot be read.
    pub(super) fn locked_ranges(&self, start: u64, end: u64) -> Option<Vec<(u64, u64)>> {
        let text = std::fs::read_to_string(format!("/proc/{}/smaps", self.pid))
            .inspect_err(|e| tracing::debug!("smaps of pid {}: {e}", self.pid))
            .ok()?;
        Some(
            parse_locked(&text)
                .into_iter()
                .filter(|&(a, b)| b > start && a < end)
                .map(|(a, b)| (a.max(start), b.min(end)))
                .collect(),
        )
    }
}

/// `VmLck` of process `pid`, in bytes.
pub(super) fn vmlck_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmLck:"))?;
    let kb: u64 = line["VmLck:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The VMAs with VM_LOCKED (`lo` in `VmFlags`) in the text of smaps.
pub(super) fn parse_locked(text: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut cur: Option<(u64, u64)> = None;
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(r) = cur.take() {
                if flags.split_ascii_whitespace().any(|f| f == "lo") {
                    out.push(r);
                }
            }
            continue;
        }
        let Some(first) = line.split_ascii_whitespace().next() else {
            continue;
        };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                cur = Some((a, b));
            }
        }
    }
    out
}

/// Raw pagemap entries of `n` pages from `addr`, in bulk.
pub(super) fn read_pagemap(f: &File, addr: u64, n: usize) -> io::Result<Vec<u64>> {
    const CHUNK: usize = 8192;
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; CHUNK.min(n) * 8];
    let mut off = addr / PAGE_SIZE * 8;
    while out.len() < n {
        let want = (n - out.len()).min(CHUNK) * 8;
        f.read_exact_at(&mut buf[..want], off)?;
        out.extend(
            buf[..want]
                .chunks_exact(8)
                .map(|c| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
        );
        off += want as u64;
    }
    Ok(out)
}

/// VMAs from the text of `/proc/<pid>/smaps`.
pub(super) fn parse_smaps(text: &str) -> Vec<Vma> {
    let mut out: Vec<Vma> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_ascii_whitespace();
        let Some(first) = words.next() else { continue };
        if first == "KernelPageSize:" {
            if let (Some(v), Some(n)) = (
                out.last_mut(),
                words.next().and_then(|n| n.parse::<u64>().ok()),
            ) {
                v.page_size = n * 1024;
            }
            continue;
        }
        // A header line: "start-end perms offset dev inode [path]".
        let Some((a, b)) = first.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        let perms = words.next().unwrap_or("");
        out.push(Vma {
            start,
            end,
            read: perms.starts_with('r'),
            write: perms.get(1..2) == Some("w"),
            page_size: PAGE_SIZE,
        });
    }
    out
}
