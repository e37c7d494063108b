//! The container's valid IOVA list (seed 003): the intersection of every
//! domain's aperture minus the reserved regions of every group.
//!
//! Attach builds the new list on a copy and installs it only when every step
//! succeeded; detach recomputes on a copy and keeps the old list if that
//! fails. The edge rules of the kernel's list surgery are kept exactly (they
//! decide which ranges `VFIO_IOMMU_GET_INFO` reports).

use crate::error::{Result, VfioError};
use crate::iommu::{ResvKind, ResvRegion};

/// An inclusive IOVA range `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IovaRange {
    /// First IOVA.
    pub start: u64,
    /// Last IOVA (inclusive).
    pub end: u64,
}

/// Sorted, disjoint valid IOVA ranges. Empty means "no restriction known":
/// a container with only emulated (mdev) groups has an empty list and type1
/// then accepts any IOVA.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct IovaList {
    ranges: Vec<IovaRange>,
}

impl IovaList {
    /// An empty list (no restriction yet: every IOVA is valid).
    pub fn new() -> Self {
        Self::default()
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[IovaRange] {
        &self.ranges
    }

    /// No range at all?
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// May a mapping cover `start..=end`? (One range must hold all of it; an
    /// empty list allows anything.)
    pub fn allows(&self, start: u64, end: u64) -> bool {
        self.ranges.is_empty() || self.ranges.iter().any(|r| start >= r.start && end <= r.end)
    }

    /// First IOVA of the first range.
    pub fn first_start(&self) -> Option<u64> {
        self.ranges.first().map(|r| r.start)
    }

    /// Last IOVA of the last range.
    pub fn last_end(&self) -> Option<u64> {
        self.ranges.last().map(|r| r.end)
    }

    /// Restricts the list to the aperture `start..=end` (or creates it when
    /// empty), with the kernel's boundary rules: a range that merely touches
    /// the new start at its end, or the new end at its start, is dropped.
    pub fn resize_to_aperture(&mut self, start: u64, end: u64) {
        if self.ranges.is_empty() {
            self.ranges.push(IovaRange { start, end });
            return;
        }
        // Trim the front: drop ranges wholly below the new start.
        let mut keep_from = self.ranges.len();
        for (i, r) in self.ranges.iter_mut().enumerate() {
            if start < r.start {
                keep_from = i;
                break;
            }
            if start < r.end {
                r.start = start;
                keep_from = i;
                break;
            }
        }
        self.ranges.drain(..keep_from);
        // Trim the back: drop ranges wholly above the new end.
        self.ranges.retain_mut(|r| {
            if end > r.end {
                true
            } else if end > r.start {
                r.end = end;
                true
            } else {
                false
            }
        });
    }

    /// Widens the first and last range to a new (same or larger) aperture,
    /// as detach does when a domain goes away. No-op on an empty list.
    pub fn expand_to_aperture(&mut self, start: u64, end: u64) {
        if let Some(first) = self.ranges.first_mut() {
            first.start = start;
        }
        if let Some(last) = self.ranges.last_mut() {
            last.end = end;
        }
    }

    /// Removes the reserved regions (all but direct-relaxable ones). Fails
    /// with EINVAL when nothing valid is left.
    pub fn exclude_reserved(&mut self, resv: &[ResvRegion]) -> Result<()> {
        for region in resv {
            if region.kind == ResvKind::DirectRelaxable {
                continue;
            }
            let (start, end) = (region.start, region.end);
            let mut out = Vec::with_capacity(self.ranges.len() + 1);
            for r in self.ranges.drain(..) {
                if start > r.end || end < r.start {
                    out.push(r);
                    continue;
                }
                if start > r.start {
                    out.push(IovaRange {
                        start: r.start,
                        end: start - 1,
                    });
                }
                if end < r.end {
                    out.push(IovaRange {
                        start: end + 1,
                        end: r.end,
                    });
                }
            }
            self.ranges = out;
        }
        if self.ranges.is_empty() {
            return Err(VfioError::Invalid("reserved regions leave no valid IOVA"));
        }
        Ok(())
    }

    /// Rebuilds the list from the current outer bounds, the new aperture
    /// already applied, and the reserved regions of the remaining groups
    /// (detach). Works on `self` as a copy: the caller installs it on Ok.
    pub fn refresh(&mut self, resv: &[ResvRegion]) -> Result<()> {
        let (Some(start), Some(end)) = (self.first_start(), self.last_end()) else {
            return Err(VfioError::Invalid("empty IOVA list"));
        };
        self.ranges.clear();
        self.resize_to_aperture(start, end);
        self.exclude_reserved(resv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msi() -> ResvRegion {
        ResvRegion {
            start: 0xfee0_0000,
            end: 0xfeef_ffff,
            kind: ResvKind::Msi,
        }
    }

    fn r(start: u64, end: u64) -> IovaRange {
        IovaRange { start, end }
    }

    #[test]
    fn reference_platform_list() {
        let mut l = IovaList::new();
        l.resize_to_aperture(0, (1 << 39) - 1);
        l.exclude_reserved(&[msi()]).unwrap();
        assert_eq!(
            l.ranges(),
            &[r(0, 0xfedf_ffff), r(0xfef0_0000, 0x7f_ffff_ffff)]
        );
        assert!(l.allows(0xfedf_f000, 0xfedf_ffff));
        assert!(!l.allows(0xfedf_f000, 0xfee0_0fff));
        assert!(!l.allows(1 << 39, (1 << 39) + 0xfff));
    }

    #[test]
    fn resize_trims_and_keeps_kernel_edge_rules() {
        let mut l = IovaList::new();
        l.resize_to_aperture(0, 0xffff);
        l.exclude_reserved(&[ResvRegion {
            start: 0x1000,
            end: 0x1fff,
            kind: ResvKind::Reserved,
        }])
        .unwrap();
        assert_eq!(l.ranges(), &[r(0, 0xfff), r(0x2000, 0xffff)]);
        // A new start equal to a range's end drops that range (kernel rule).
        let mut a = l.clone();
        a.resize_to_aperture(0xfff, 0x8000);
        assert_eq!(a.ranges(), &[r(0x2000, 0x8000)]);
        // A new end equal to a range's start drops it too.
        let mut b = l.clone();
        b.resize_to_aperture(0, 0x2000);
        assert_eq!(b.ranges(), &[r(0, 0xfff)]);
        let mut c = l.clone();
        c.resize_to_aperture(0x800, 0x3000);
        assert_eq!(c.ranges(), &[r(0x800, 0xfff), r(0x2000, 0x3000)]);
    }

    #[test]
    fn excluding_everything_is_einval() {
        let mut l = IovaList::new();
        l.resize_to_aperture(0x1000, 0x1fff);
        let e = l
            .exclude_reserved(&[ResvRegion {
                start: 0,
                end: 0xffff,
                kind: ResvKind::Reserved,
            }])
            .unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
    }

    #[test]
    fn relaxable_regions_are_not_excluded() {
        let mut l = IovaList::new();
        l.resize_to_aperture(0, 0xffff);
        l.exclude_reserved(&[ResvRegion {
            start: 0x1000,
            end: 0x1fff,
            kind: ResvKind::DirectRelaxable,
        }])
        .unwrap();
        assert_eq!(l.ranges(), &[r(0, 0xffff)]);
    }

    #[test]
    fn refresh_restores_after_detach() {
        let mut l = IovaList::new();
        l.resize_to_aperture(0, 0xffff);
        l.exclude_reserved(&[
            ResvRegion {
                start: 0x1000,
                end: 0x1fff,
                kind: ResvKind::Reserved,
            },
            ResvRegion {
                start: 0x8000,
                end: 0x8fff,
                kind: ResvKind::Msi,
            },
        ])
        .unwrap();
        assert_eq!(l.ranges().len(), 3);
        let mut copy = l.clone();
        copy.refresh(&[ResvRegion {
            start: 0x8000,
            end: 0x8fff,
            kind: ResvKind::Msi,
        }])
        .unwrap();
        assert_eq!(copy.ranges(), &[r(0, 0x7fff), r(0x9000, 0xffff)]);
    }
}
