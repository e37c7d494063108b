//! Peer-to-peer DMA: a device's DMA into an IOVA that type1 mapped from a
//! memory-mapped BAR reaches the peer device's registers, as a PCIe
//! memory request routed through the IOMMU to the peer's BAR does.
//!
//! `MAP_DMA` of a BAR mapping records, per page run, the device region
//! the mapping reached at that moment ([`PeerTarget`]): type1 resolves a
//! `VM_PFNMAP` range to the BAR's physical address once, at `MAP_DMA`, so
//! on Linux a `munmap` of the BAR mapping afterwards leaves the IOMMU
//! pointing at the BAR, and DMA still reaches it. Device DMA that lands in
//! such a run ([`crate::memory::host::HostMemory`]'s `dma_read` and
//! `dma_write`) becomes register accesses on the peer ([`peer_read`],
//! [`peer_write`]), split as [`split`] says.
//!
//! # Width rule
//!
//! A DMA of `n` bytes at BAR offset `o` reaches the peer as consecutive
//! accesses, lowest address first, each the largest of 8, 4, 2 and 1 bytes
//! that is naturally aligned at its offset and fits in what remains. This
//! is how QEMU's memory core hands a DMA to a device's MMIO region
//! (`memory_access_size`: the largest aligned size up to the region's
//! maximum, 8 for edu and I/OAT), and how a root port would break a TLP
//! into the byte-enabled DWORD/QWORD accesses an MMIO completer takes.
//! The device model decides what each width does (edu ignores 1- and
//! 2-byte accesses, and 8-byte reads below 0x80 give all ones).
//!
//! # Locks, and why p2p cannot deadlock
//!
//! Device models run their DMA inside the register access that starts it,
//! holding their own state lock (a [`DeviceLock`]). A p2p access therefore
//! may arrive at a device whose lock is held by the very thread (a device
//! DMA-ing into its own BAR, directly or through a chain of peers), or by
//! a thread that is itself waiting for a lock this thread holds (A DMA-ing
//! into B while B DMA-es into A). The rules:
//!
//! 1. A thread blocks on a [`DeviceLock`] ([`DeviceLock::lock`]) only from
//!    a program's access, never from p2p: the p2p path only tries
//!    ([`DeviceLock::try_lock_for_peer`]), so a p2p access never waits for
//!    a lock while the device lock of its requester is held.
//! 2. A write is posted (as in PCIe): when the peer's lock is held by this
//!    thread or by another one, the write is queued on this thread and
//!    delivered, in order, when the thread releases its last device lock
//!    (the drop of its outermost [`DeviceGuard`]); then it holds no device
//!    lock, so blocking there on the peer's lock waits only for a thread
//!    that holds no lock of ours.
//! 3. A read is not posted: it needs the value now. A read of a device
//!    whose lock this thread holds is a completer abort at once (it could
//!    never complete); a read of a device held by another thread is
//!    retried until [`COMPLETION_TIMEOUT`] passes, then fails as a PCIe
//!    completion timeout (two devices reading each other's registers at
//!    the same time end that way, instead of waiting for each other).
//! 4. Nothing else is held across a peer access: the backend's pin table
//!    lock is released before the peer is called.
//!
//! A failed access (completer abort, completion timeout, a peer that
//! does not decode: memory decoding off, low power, a BAR gone or a model
//! that takes no p2p) fails the DMA as a memory error at that address:
//! the IOMMU model records a fault for the requester, and the requester's
//! model takes its DMA error path (edu: a faulted DMA; I/OAT: CHANERR).
//! Posted writes that fail later are dropped, as an Unsupported Request
//! write is, and logged.
//!
//! Invariants:
//! - `owner` of a [`DeviceLock`] is the token of the thread holding its
//!   mutex, or 0; it is written only by that thread, right after locking
//!   and right before unlocking.
//! - `held` counts the device locks the current thread holds; posted
//!   writes are delivered only when it drops to 0, never while a device
//!   lock of this thread is held, and never re-entrantly.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::device::VfioDeviceModel;

/// How long a p2p read waits for a peer that another thread holds busy:
/// the upper end of PCIe's default completion timeout range A (50 µs to
/// 10 ms).
pub const COMPLETION_TIMEOUT: Duration = Duration::from_millis(10);

/// Why a peer did not take a p2p access now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAccessError {
    /// The peer's lock is held (by this thread: `by_this_thread`).
    Busy {
        /// This thread holds it: the access can never be performed now.
        by_this_thread: bool,
    },
    /// The peer does not decode the access (memory decoding off, low
    /// power, outside the BAR, a region that takes no p2p): an
    /// Unsupported Request.
    Refused,
}

/// Why a p2p DMA failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFault {
    /// The peer refused the access (Unsupported Request), or the device is
    /// gone.
    Unsupported,
    /// A read of a device whose lock this thread holds (the requester
    /// itself, or a device up its chain of p2p accesses).
    CompleterAbort,
    /// The peer stayed busy longer than [`COMPLETION_TIMEOUT`].
    CompletionTimeout,
}

impl std::fmt::Display for PeerFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerFault::Unsupported => "unsupported request (the peer does not decode it)",
            PeerFault::CompleterAbort => "completer abort (the peer is the requester's own chain)",
            PeerFault::CompletionTimeout => "completion timeout (the peer stayed busy)",
        })
    }
}

/// A device region that a range mapped for DMA reaches (the BAR a BAR
/// mapping reached at `MAP_DMA`).
#[derive(Clone)]
pub struct PeerTarget {
    /// The device; a model that is gone refuses every access.
    pub model: Weak<dyn VfioDeviceModel>,
    /// Its region index.
    pub region: u32,
    /// The region offset the target starts at.
    pub offset: u64,
}

impl std::fmt::Debug for PeerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.model.upgrade().map(|m| m.name().to_owned());
        f.debug_struct("PeerTarget")
            .field("device", &name)
            .field("region", &self.region)
            .field("offset", &self.offset)
            .finish()
    }
}

struct Posted {
    model: Weak<dyn VfioDeviceModel>,
    region: u32,
    offset: u64,
    data: [u8; 8],
    len: u8,
}

struct ThreadState {
    token: Cell<u64>,
    held: Cell<u32>,
    draining: Cell<bool>,
    posted: RefCell<VecDeque<Posted>>,
}

thread_local! {
    static THREAD: ThreadState = const {
        ThreadState {
            token: Cell::new(0),
            held: Cell::new(0),
            draining: Cell::new(false),
            posted: RefCell::new(VecDeque::new()),
        }
    };
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// This thread's token (never 0).
fn token() -> u64 {
    THREAD
        .try_with(|t| {
            if t.token.get() == 0 {
                t.token.set(NEXT_TOKEN.fetch_add(1, Ordering::Relaxed));
            }
            t.token.get()
        })
        // Thread-local storage torn down (the thread's last moments): a
        // token no lock ever records.
        .unwrap_or(u64::MAX)
}

/// The state lock of a device model that DMA-es inside its register
/// accesses: a mutex that knows which thread holds it (module
/// documentation).
#[derive(Debug, Default)]
pub struct DeviceLock<T> {
    mutex: Mutex<T>,
    owner: AtomicU64,
}

/// A held [`DeviceLock`].
pub struct DeviceGuard<'a, T> {
    guard: Option<MutexGuard<'a, T>>,
    owner: &'a AtomicU64,
}

impl<T> DeviceLock<T> {
    /// A lock around `value`.
    pub const fn new(value: T) -> Self {
        DeviceLock {
            mutex: Mutex::new(value),
            owner: AtomicU64::new(0),
        }
    }

    /// Waits for the lock (a program's access, or a posted write being
    /// delivered by a thread that holds no device lock). A poisoned lock
    /// is taken as it is: the state holds no invariant a panic could
    /// break halfway that a later access would trip on more than the
    /// panic itself did.
    pub fn lock(&self) -> DeviceGuard<'_, T> {
        let guard = self.mutex.lock().unwrap_or_else(|e| e.into_inner());
        self.held(guard)
    }

    /// The lock if it is free now, for a p2p access (which never waits
    /// while its requester's lock is held).
    pub fn try_lock_for_peer(&self) -> Result<DeviceGuard<'_, T>, PeerAccessError> {
        match self.mutex.try_lock() {
            Ok(guard) => Ok(self.held(guard)),
            Err(std::sync::TryLockError::Poisoned(e)) => Ok(self.held(e.into_inner())),
            Err(std::sync::TryLockError::WouldBlock) => Err(PeerAccessError::Busy {
                by_this_thread: self.owner.load(Ordering::Acquire) == token(),
            }),
        }
    }

    fn held<'a>(&'a self, guard: MutexGuard<'a, T>) -> DeviceGuard<'a, T> {
        self.owner.store(token(), Ordering::Release);
        let _ = THREAD.try_with(|t| t.held.set(t.held.get() + 1));
        DeviceGuard {
            guard: Some(guard),
            owner: &self.owner,
        }
    }
}

impl<T> Deref for DeviceGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // Present until drop.
        self.guard.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl<T> DerefMut for DeviceGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_deref_mut().unwrap_or_else(|| unreachable!())
    }
}

impl<T> Drop for DeviceGuard<'_, T> {
    fn drop(&mut self) {
        self.owner.store(0, Ordering::Release);
        drop(self.guard.take());
        let last = THREAD
            .try_with(|t| {
                let n = t.held.get().saturating_sub(1);
                t.held.set(n);
                n == 0
            })
            .unwrap_or(false);
        if last {
            deliver_posted();
        }
    }
}

/// Delivers this thread's posted writes (it holds no device lock now).
fn deliver_posted() {
    let start = THREAD.try_with(|t| {
        let empty = t.posted.try_borrow().map_or(true, |q| q.is_empty());
        !empty && !t.draining.replace(true)
    });
    if start != Ok(true) {
        return;
    }
    loop {
        let next = THREAD
            .try_with(|t| {
                t.posted
                    .try_borrow_mut()
                    .ok()
                    .and_then(|mut q| q.pop_front())
            })
            .ok()
            .flatten();
        let Some(p) = next else {
            break;
        };
        let Some(model) = p.model.upgrade() else {
            continue;
        };
        let data = &p.data[..usize::from(p.len)];
        // Holding no device lock, a wait here is safe (rule 2); a peer
        // busy with another thread's access frees itself.
        let r = loop {
            match model.peer_write(p.region, p.offset, data) {
                Err(PeerAccessError::Busy {
                    by_this_thread: false,
                }) => std::thread::yield_now(),
                r => break r,
            }
        };
        if let Err(e) = r {
            tracing::debug!(
                "p2p posted write to {} region {} offset {:#x} dropped: {e:?}",
                model.name(),
                p.region,
                p.offset
            );
        }
    }
    let _ = THREAD.try_with(|t| t.draining.set(false));
}

/// The accesses a p2p DMA of `len` bytes at region offset `offset` makes:
/// (offset, width) pairs as the module documentation's width rule says.
pub fn split(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize)> {
    let mut at = offset;
    let end = offset.saturating_add(len as u64);
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let left = end - at;
        let width = [8u64, 4, 2, 1]
            .into_iter()
            .find(|&w| w <= left && at.is_multiple_of(w))
            .unwrap_or(1);
        let this = (at, width as usize);
        at += width;
        Some(this)
    })
}

/// A device reads `buf.len()` bytes at `skip` bytes into `target`.
pub fn peer_read(target: &PeerTarget, skip: u64, buf: &mut [u8]) -> Result<(), PeerFault> {
    let model = target.model.upgrade().ok_or(PeerFault::Unsupported)?;
    let base = target
        .offset
        .checked_add(skip)
        .ok_or(PeerFault::Unsupported)?;
    base.checked_add(buf.len() as u64)
        .ok_or(PeerFault::Unsupported)?;
    let mut done = 0usize;
    for (offset, width) in split(base, buf.len()) {
        let out = buf
            .get_mut(done..done + width)
            .ok_or(PeerFault::Unsupported)?;
        let mut deadline = None;
        loop {
            match model.peer_read(target.region, offset, out) {
                Ok(()) => break,
                Err(PeerAccessError::Refused) => return Err(PeerFault::Unsupported),
                Err(PeerAccessError::Busy {
                    by_this_thread: true,
                }) => return Err(PeerFault::CompleterAbort),
                Err(PeerAccessError::Busy {
                    by_this_thread: false,
                }) => {
                    let d = *deadline.get_or_insert_with(|| Instant::now() + COMPLETION_TIMEOUT);
                    if Instant::now() >= d {
                        return Err(PeerFault::CompletionTimeout);
                    }
                    std::thread::yield_now();
                }
            }
        }
        done += width;
    }
    Ok(())
}

/// A device writes `data` at `skip` bytes into `target` (posted when the
/// peer is busy: module documentation, rule 2).
pub fn peer_write(target: &PeerTarget, skip: u64, data: &[u8]) -> Result<(), PeerFault> {
    let model = target.model.upgrade().ok_or(PeerFault::Unsupported)?;
    let base = target
        .offset
        .checked_add(skip)
        .ok_or(PeerFault::Unsupported)?;
    let mut done = 0usize;
    let mut posting = false;
    for (offset, width) in split(base, data.len()) {
        let src = data.get(done..done + width).ok_or(PeerFault::Unsupported)?;
        done += width;
        // Once one write of this DMA is posted, the rest follow it, in
        // order.
        if !posting {
            match model.peer_write(target.region, offset, src) {
                Ok(()) => continue,
                Err(PeerAccessError::Refused) => return Err(PeerFault::Unsupported),
                Err(PeerAccessError::Busy { .. }) => posting = true,
            }
        }
        let mut bytes = [0u8; 8];
        bytes[..width].copy_from_slice(src);
        let queued = THREAD
            .try_with(|t| {
                t.posted.try_borrow_mut().map(|mut q| {
                    q.push_back(Posted {
                        model: target.model.clone(),
                        region: target.region,
                        offset,
                        data: bytes,
                        len: width as u8,
                    })
                })
            })
            .is_ok_and(|r| r.is_ok());
        if !queued {
            return Err(PeerFault::CompleterAbort);
        }
    }
    // A write made by a thread that holds no device lock (a test's direct
    // call) has no guard drop to deliver it.
    if posting && THREAD.try_with(|t| t.held.get() == 0).unwrap_or(false) {
        deliver_posted();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_takes_the_largest_aligned_width() {
        let v: Vec<_> = split(0x04, 16).collect();
        assert_eq!(v, vec![(0x04, 4), (0x08, 8), (0x10, 4)]);
        let v: Vec<_> = split(0x01, 8).collect();
        assert_eq!(v, vec![(0x01, 1), (0x02, 2), (0x04, 4), (0x08, 1)]);
        assert_eq!(split(0x80, 8).collect::<Vec<_>>(), vec![(0x80, 8)]);
        assert_eq!(split(0x80, 0).count(), 0);
        assert_eq!(
            split(u64::MAX - 1, 1).collect::<Vec<_>>(),
            vec![(u64::MAX - 1, 1)]
        );
    }

    #[test]
    fn device_lock_knows_its_owner() {
        let l = DeviceLock::new(5u32);
        {
            let mut g = l.lock();
            *g += 1;
            assert_eq!(
                l.try_lock_for_peer().err(),
                Some(PeerAccessError::Busy {
                    by_this_thread: true
                })
            );
            std::thread::scope(|s| {
                s.spawn(|| {
                    assert_eq!(
                        l.try_lock_for_peer().err(),
                        Some(PeerAccessError::Busy {
                            by_this_thread: false
                        })
                    );
                });
            });
        }
        assert_eq!(*l.try_lock_for_peer().unwrap(), 6);
        assert_eq!(THREAD.with(|t| t.held.get()), 0);
    }
}
