//! Locked-memory accounting, as type1 does it against `mm->locked_vm`.
//!
//! Pages are counted per mapping (a page mapped twice counts twice), checked
//! against RLIMIT_MEMLOCK unless the caller had CAP_IPC_LOCK at map time, and
//! updated once per operation rather than once per page (seed 000).

use std::sync::atomic::{AtomicU64, Ordering};

/// The locked-page count of one address space.
#[derive(Debug, Default)]
pub struct MmAccount {
    locked_pages: AtomicU64,
    updates: AtomicU64,
}

/// The limit that applies to accounting at the time of a map (type1 reads
/// both when MAP_DMA runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockPolicy {
    /// The caller has CAP_IPC_LOCK in its effective set: no limit applies.
    pub cap_ipc_lock: bool,
    /// RLIMIT_MEMLOCK soft limit, in pages (u64::MAX for unlimited).
    pub limit_pages: u64,
}

/// Accounting refused: the limit would be exceeded (ENOMEM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("RLIMIT_MEMLOCK exceeded: {locked} locked + {asked} asked > {limit} pages")]
pub struct OverLimit {
    /// Pages already accounted.
    pub locked: u64,
    /// Pages the refused request asked for.
    pub asked: u64,
    /// The limit (RLIMIT_MEMLOCK in pages).
    pub limit: u64,
}

impl MmAccount {
    /// An address space with nothing accounted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pages currently accounted.
    pub fn locked_pages(&self) -> u64 {
        self.locked_pages.load(Ordering::Acquire)
    }

    /// Number of accounting updates made so far (for the one-update-per-call
    /// property and benchmarks).
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }

    /// Would adding `pages` stay within the policy? (type1 checks
    /// `locked_vm + pages > limit` unless the caller holds CAP_IPC_LOCK.)
    pub fn check(&self, pages: u64, policy: LockPolicy) -> Result<(), OverLimit> {
        if policy.cap_ipc_lock || pages == 0 {
            return Ok(());
        }
        let locked = self.locked_pages();
        if locked.saturating_add(pages) > policy.limit_pages {
            return Err(OverLimit {
                locked,
                asked: pages,
                limit: policy.limit_pages,
            });
        }
        Ok(())
    }

    /// Adds `pages` after checking the policy: one update.
    pub fn charge(&self, pages: u64, policy: LockPolicy) -> Result<(), OverLimit> {
        if pages == 0 {
            return Ok(());
        }
        if policy.cap_ipc_lock {
            self.locked_pages.fetch_add(pages, Ordering::AcqRel);
            self.updates.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let mut cur = self.locked_pages();
        loop {
            if cur.saturating_add(pages) > policy.limit_pages {
                return Err(OverLimit {
                    locked: cur,
                    asked: pages,
                    limit: policy.limit_pages,
                });
            }
            match self.locked_pages.compare_exchange_weak(
                cur,
                cur + pages,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.updates.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Adds `pages` with no limit check (re-accounting pages that are already
    /// pinned, as type1 does when the last IOMMU-backed domain goes away).
    pub fn charge_unchecked(&self, pages: u64) {
        if pages == 0 {
            return;
        }
        self.locked_pages.fetch_add(pages, Ordering::AcqRel);
        self.updates.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes `pages`: one update. Never goes below zero.
    pub fn uncharge(&self, pages: u64) {
        if pages == 0 {
            return;
        }
        let mut cur = self.locked_pages();
        loop {
            let new = cur.saturating_sub(pages);
            match self.locked_pages.compare_exchange_weak(
                cur,
                new,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.updates.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(limit_pages: u64) -> LockPolicy {
        LockPolicy {
            cap_ipc_lock: false,
            limit_pages,
        }
    }

    #[test]
    fn limit_is_inclusive_like_type1() {
        let a = MmAccount::new();
        assert_eq!(a.charge(16, limited(32)), Ok(()));
        assert_eq!(a.charge(16, limited(32)), Ok(()));
        assert_eq!(
            a.charge(1, limited(32)),
            Err(OverLimit {
                locked: 32,
                asked: 1,
                limit: 32
            })
        );
        assert_eq!(a.locked_pages(), 32);
        assert_eq!(a.updates(), 2);
    }

    #[test]
    fn cap_ipc_lock_ignores_limit() {
        let a = MmAccount::new();
        let p = LockPolicy {
            cap_ipc_lock: true,
            limit_pages: 0,
        };
        assert_eq!(a.charge(100, p), Ok(()));
        a.uncharge(40);
        assert_eq!(a.locked_pages(), 60);
        a.uncharge(100);
        assert_eq!(a.locked_pages(), 0);
        assert_eq!(a.updates(), 3);
    }
}
