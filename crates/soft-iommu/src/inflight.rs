//! In-flight DMA tracking: a small quiescent-state scheme (an RCU of one
//! counter per port) that lets an invalidation wait for every DMA that may
//! have translated through a removed entry.
//!
//! - The unit has an epoch counter `E` (starts at 1, only grows).
//! - Each port has a slot written only by the thread that owns the port:
//!   `0` when idle, else the epoch read when its current DMA began.
//! - A DMA begins with `slot = E` (SeqCst store) followed by a SeqCst load of
//!   `E`, and ends with `slot = 0` (Release).
//! - `synchronize` (after the invalidation is done) bumps `E` to `new` and
//!   waits for every slot to be `0` or `>= new`.
//!
//! Why it is enough: the store to the slot and the bump of `E` are both
//! SeqCst, followed each by a SeqCst load of the other location, so at least
//! one side sees the other (Dekker). Either `synchronize` sees the DMA's slot
//! (and waits for it when it began before the bump), or the DMA's load of `E`
//! sees the bump, which is a release of everything done before it (entries
//! cleared, IOTLB invalidated): that DMA cannot use the removed translation.
//! A DMA that starts after the bump is never waited for, so a flush cannot be
//! starved by a device that keeps doing DMA.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Per-port state, on its own cache lines so that ports on different threads
/// do not share a line on the DMA path.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct PortSlot {
    /// 0 = no DMA in flight, else the epoch at which the current DMA began.
    active: AtomicU64,
    /// Counters, written only by the owning thread (plain load + store).
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) faults: AtomicU64,
}

/// Adds one to a counter that only one thread writes.
#[inline]
pub(crate) fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

pub(crate) struct InFlight {
    epoch: AtomicU64,
    /// Copy-on-write list: ports come and go rarely, flushes read it often.
    slots: Mutex<Arc<[Arc<PortSlot>]>>,
}

impl InFlight {
    pub(crate) fn new() -> Self {
        InFlight {
            epoch: AtomicU64::new(1),
            slots: Mutex::new(Arc::from(Vec::new())),
        }
    }

    pub(crate) fn register(&self) -> Arc<PortSlot> {
        let slot = Arc::new(PortSlot::default());
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut list = slots.to_vec();
        list.push(slot.clone());
        *slots = Arc::from(list);
        slot
    }

    pub(crate) fn unregister(&self, slot: &Arc<PortSlot>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let list: Vec<Arc<PortSlot>> = slots
            .iter()
            .filter(|s| !Arc::ptr_eq(s, slot))
            .cloned()
            .collect();
        *slots = Arc::from(list);
    }

    /// Marks the start of a DMA on `slot`.
    #[inline]
    pub(crate) fn enter(&self, slot: &PortSlot) {
        let epoch = self.epoch.load(Ordering::SeqCst);
        slot.active.store(epoch, Ordering::SeqCst);
        // The load that pairs with synchronize's bump (see the module doc).
        let _ = self.epoch.load(Ordering::SeqCst);
    }

    /// Marks the end of the DMA.
    #[inline]
    pub(crate) fn exit(&self, slot: &PortSlot) {
        slot.active.store(0, Ordering::Release);
    }

    /// Waits until no DMA that began before this call is in flight.
    /// Must not be called from inside a DMA of this unit on the same thread.
    pub(crate) fn synchronize(&self) {
        let new = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let slots: Arc<[Arc<PortSlot>]> =
            self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for slot in slots.iter() {
            let mut spins = 0u32;
            loop {
                let active = slot.active.load(Ordering::SeqCst);
                if active == 0 || active >= new {
                    break;
                }
                spins += 1;
                if spins < 128 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }

    pub(crate) fn ports(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[test]
    fn synchronize_waits_for_dma_begun_before() {
        let inflight = Arc::new(InFlight::new());
        let slot = inflight.register();
        inflight.enter(&slot);
        let done = Arc::new(AtomicBool::new(false));
        let waiter = {
            let inflight = inflight.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                inflight.synchronize();
                done.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!done.load(Ordering::SeqCst));
        inflight.exit(&slot);
        waiter.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
        // A DMA that begins after a bump is not waited for.
        inflight.enter(&slot);
        let epoch_before = inflight.epoch.load(Ordering::SeqCst);
        assert_eq!(slot.active.load(Ordering::SeqCst), epoch_before);
        inflight.exit(&slot);
        inflight.unregister(&slot);
        assert_eq!(inflight.ports(), 0);
    }
}
