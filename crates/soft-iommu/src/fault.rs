//! DMA requests, translation faults and the fault log (VT-d's fault
//! recording registers: a bounded set of records plus an overflow flag).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use thiserror::Error;

/// Direction of a DMA request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// The device reads memory (needs R).
    Read,
    /// The device writes memory (needs W; sets D).
    Write,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
        })
    }
}

/// One translation request as it arrives from a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaRequest {
    /// The address.
    pub iova: u64,
    /// The access.
    pub access: Access,
    /// PASID prefix of the request: translated through the device's PASID
    /// state (process bond or guest PASID table; see `pasid.rs`).
    pub pasid: Option<u32>,
}

/// Why a request faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultReason {
    /// No leaf translates the IOVA.
    NotPresent,
    /// Read request through an entry without R.
    NoRead,
    /// Write request through an entry without W.
    NoWrite,
    /// The device is not attached to any domain (blocking).
    Blocked,
    /// The translated access was refused by the memory behind the IOMMU.
    MemoryError,
    /// The IOVA is beyond the domain's address width (VT-d fault reason 4h).
    BeyondAddressWidth,
    /// A request with PASID that this unit cannot translate. (No longer
    /// produced: PASID requests are translated; kept for compatibility.)
    PasidNotSupported,
    /// A request with a PASID the device has no bond or present guest
    /// PASID table entry for (VT-d: PASID entry not present).
    PasidNotPresent,
    /// Nested translation: a guest PASID table or guest page table lies at
    /// an IOVA the second level does not translate (readably).
    GuestTableNotReachable,
    /// Nested translation: a guest entry with reserved bits set (PS in a
    /// PML4 entry, a misaligned large page, bits 63:52 of a PASID entry).
    InvalidEntry,
}

impl fmt::Display for FaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultReason::NotPresent => "not present",
            FaultReason::NoRead => "no read permission",
            FaultReason::NoWrite => "no write permission",
            FaultReason::Blocked => "device blocked (no domain)",
            FaultReason::MemoryError => "memory error",
            FaultReason::BeyondAddressWidth => "address beyond the address width",
            FaultReason::PasidNotSupported => "PASID requests not supported",
            FaultReason::PasidNotPresent => "PASID not bound (PASID entry not present)",
            FaultReason::GuestTableNotReachable => {
                "guest PASID/page table not mapped by the second level"
            }
            FaultReason::InvalidEntry => "reserved bits set in a guest entry",
        })
    }
}

/// What started a DMA, as the device model knows it: the register write
/// that started the transfer and the transfer it programmed (edu's DMA
/// command register). Set by the model around its DMA with
/// [`with_dma_origin`]; faults recorded meanwhile carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaOrigin {
    /// The model ("edu").
    pub model: &'static str,
    /// Register offset written (BAR0).
    pub register: u64,
    /// Value written.
    pub value: u64,
    /// Memory address the program asked for (before any device clamp).
    pub requested: u64,
    /// Memory address the device used.
    pub used: u64,
    /// Bytes of the transfer.
    pub len: u64,
    /// Bits of address the device drives (its DMA mask), when it clamps.
    pub mask: Option<u64>,
}

thread_local! {
    static DMA_ORIGIN: std::cell::Cell<Option<DmaOrigin>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` (a device's DMA) with `origin` attached to every fault it
/// records on this thread.
pub fn with_dma_origin<R>(origin: DmaOrigin, f: impl FnOnce() -> R) -> R {
    // try_with: thread-local storage may be gone in a thread's last moments.
    let old = DMA_ORIGIN
        .try_with(|c| c.replace(Some(origin)))
        .ok()
        .flatten();
    let r = f();
    let _ = DMA_ORIGIN.try_with(|c| c.set(old));
    r
}

/// One recorded fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("DMA fault #{seq}: {reason} on {access} of IOVA {iova:#x} by device {rid:#06x}{}", pasid.map(|p| format!(" PASID {p:#x}")).unwrap_or_default())]
pub struct Fault {
    /// Sequence number, counting every fault of the unit (also those lost to overflow).
    pub seq: u64,
    /// Requester id (bus << 8 | devfn).
    pub rid: u16,
    /// PASID of the request, if tagged.
    pub pasid: Option<u32>,
    /// Faulting address.
    pub iova: u64,
    /// Read or write.
    pub access: Access,
    /// Why.
    pub reason: FaultReason,
    /// Domain the device was attached to, if any.
    pub domain: Option<u32>,
    /// Translated address, for `MemoryError`.
    pub phys: Option<u64>,
    /// Time since the unit was created.
    pub at: Duration,
    /// When, on the process's monotonic clock (to compare with the DMA
    /// sanitizer's history).
    pub time: Instant,
    /// The device operation that made the request, where the model says
    /// (boxed: faults travel in `Result`s of the translation path).
    pub origin: Option<Box<DmaOrigin>>,
}

pub(crate) struct FaultLog {
    records: Mutex<VecDeque<Fault>>,
    capacity: usize,
    next_seq: AtomicU64,
    overflow: AtomicU64,
    created: Instant,
}

impl FaultLog {
    pub(crate) fn new(capacity: usize) -> Self {
        FaultLog {
            records: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            next_seq: AtomicU64::new(0),
            overflow: AtomicU64::new(0),
            created: Instant::now(),
        }
    }

    /// Records a fault; like the hardware, a full log keeps its records and
    /// counts the new one as overflow.
    pub(crate) fn record(
        &self,
        rid: u16,
        req: DmaRequest,
        reason: FaultReason,
        domain: Option<u32>,
        phys: Option<u64>,
    ) -> Fault {
        let fault = Fault {
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            rid,
            pasid: req.pasid,
            iova: req.iova,
            access: req.access,
            reason,
            domain,
            phys,
            at: self.created.elapsed(),
            time: Instant::now(),
            origin: DMA_ORIGIN
                .try_with(|c| c.get())
                .ok()
                .flatten()
                .map(Box::new),
        };
        tracing::debug!(%fault, "DMA fault");
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() < self.capacity {
            records.push_back(fault.clone());
        } else {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        }
        fault
    }

    pub(crate) fn snapshot(&self) -> Vec<Fault> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.iter().cloned().collect()
    }

    pub(crate) fn take(&self) -> Vec<Fault> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.drain(..).collect()
    }

    pub(crate) fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }

    pub(crate) fn total(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_bounded_and_counts_overflow() {
        let log = FaultLog::new(2);
        let req = DmaRequest {
            iova: 0x1000,
            access: Access::Read,
            pasid: None,
        };
        for _ in 0..5 {
            log.record(1, req, FaultReason::NotPresent, None, None);
        }
        assert_eq!(log.snapshot().len(), 2);
        assert_eq!(log.overflow(), 3);
        assert_eq!(log.total(), 5);
        let taken = log.take();
        assert_eq!(taken.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![0, 1]);
        assert!(log.snapshot().is_empty());
        let f = log.record(2, req, FaultReason::NoWrite, Some(7), None);
        assert_eq!(f.seq, 5);
        assert_eq!(log.snapshot(), vec![f]);
    }
}
