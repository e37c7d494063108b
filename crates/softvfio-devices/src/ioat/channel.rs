//! One I/OAT DMA channel: its registers and the descriptor engine.
//!
//! The program appends descriptors by raising DMACOUNT; the channel fetches
//! the descriptor at its next address, performs it, follows its `next`
//! pointer, and stops when the number of descriptors it has processed
//! since CHAINADDR was written equals DMACOUNT (both 16-bit, wrapping).
//! Descriptors run synchronously inside the DMACOUNT write, so the status a
//! program reads next is final.
//!
//! Invariants:
//! - `status` is one of ACTIVE (only while descriptors run), DONE,
//!   SUSPENDED, HALTED; the channel is HALTED after power-on and reset, and
//!   after any error (`chanerr != 0`); nothing runs while `chanerr != 0`;
//! - `processed` counts descriptors since the last CHAINADDR write and
//!   never passes `dmacount` (mod 2^16);
//! - `completed` is the address of the last descriptor that completed (0
//!   before any), what CHANSTS shows above its status bits;
//! - every descriptor is 64-byte aligned and no larger than `1 << xfercap`
//!   bytes of copy, or the channel halts with the CHANERR bit that says why.
//!
//! Where the hardware documentation and the reference driver are silent,
//! the choice is written next to the code (see also docs/IOAT.md).

use super::regs::*;
use crate::dma::{DmaError, DmaTarget};

/// Channel status values (CHANSTS bits 0..3).
pub mod status {
    /// Descriptors are being processed.
    pub const ACTIVE: u64 = 0x0;
    /// Every appended descriptor completed.
    pub const DONE: u64 = 0x1;
    /// Suspended by CHANCMD.
    pub const SUSPENDED: u64 = 0x2;
    /// Halted: after reset, an abort or an error.
    pub const HALTED: u64 = 0x3;
}

/// Bytes moved per device read/write when copying: bounds the model's
/// buffer, not the transfer.
const COPY_CHUNK: usize = 64 * 1024;

/// What a register write asks of the device after the channel changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChannelEvents {
    /// The channel wants to interrupt (completion with INT_EN while armed,
    /// or an error with ERR_INT_EN).
    pub interrupt: bool,
}

/// How many halting errors [`IoatChannel::fault_log`] keeps.
pub const FAULT_LOG: usize = 16;

/// A DMA fault the channel ran into, for the device's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelFault {
    /// The CHANERR bits it set.
    pub chanerr: u32,
    /// The descriptor it was working on.
    pub descriptor: u64,
    /// What failed.
    pub reason: String,
}

/// Counters.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChannelStats {
    /// Descriptors completed.
    pub descriptors: u64,
    /// Bytes copied.
    pub bytes_copied: u64,
    /// Errors that halted the channel.
    pub errors: u64,
    /// Interrupts requested.
    pub interrupts: u64,
    /// Channel resets.
    pub resets: u64,
}

/// One 64-byte descriptor, as the engine reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Descriptor {
    size: u32,
    ctl: u32,
    src: u64,
    dst: u64,
    next: u64,
}

impl Descriptor {
    fn parse(b: &[u8; DESC_SIZE as usize]) -> Self {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        Descriptor {
            size: u32_at(0),
            ctl: u32_at(4),
            src: u64_at(8),
            dst: u64_at(16),
            next: u64_at(24),
        }
    }
}

/// A channel's registers and engine state.
#[derive(Debug, Clone)]
pub struct IoatChannel {
    xfercap: u8,
    chanctrl: u16,
    dmacount: u16,
    processed: u16,
    status: u64,
    completed: u64,
    chainaddr: u64,
    /// Address of the next descriptor to fetch.
    next: u64,
    chancmp: u64,
    cdar: u64,
    chanerr: u32,
    chanerr_mask: u32,
    /// CHAINADDR was written since the channel last stopped: DMACOUNT may
    /// start it.
    ready: bool,
    stats: ChannelStats,
    last_fault: Option<ChannelFault>,
    /// The last [`FAULT_LOG`] errors that halted the channel, oldest first;
    /// kept across resets, like the counters (the sanitizer's device notes).
    fault_log: std::collections::VecDeque<ChannelFault>,
}

impl IoatChannel {
    /// A channel at power-on whose descriptors may copy up to
    /// `1 << xfercap` bytes.
    pub fn new(xfercap: u8) -> Self {
        IoatChannel {
            xfercap,
            chanctrl: 0,
            dmacount: 0,
            processed: 0,
            status: status::HALTED,
            completed: 0,
            chainaddr: 0,
            next: 0,
            chancmp: 0,
            cdar: 0,
            chanerr: 0,
            chanerr_mask: 0,
            ready: false,
            stats: ChannelStats::default(),
            last_fault: None,
            fault_log: std::collections::VecDeque::new(),
        }
    }

    /// The largest copy one descriptor may ask for.
    pub fn max_transfer(&self) -> u64 {
        1u64 << self.xfercap
    }

    /// CHANSTS.
    pub fn chansts(&self) -> u64 {
        (self.completed & CHANSTS_COMPLETED_DESCRIPTOR_ADDR) | self.status
    }

    /// The status field of CHANSTS.
    pub fn status(&self) -> u64 {
        self.status
    }

    /// CHANERR.
    pub fn chanerr(&self) -> u32 {
        self.chanerr
    }

    /// Counters.
    pub fn stats(&self) -> &ChannelStats {
        &self.stats
    }

    /// The last error, if any.
    pub fn last_fault(&self) -> Option<&ChannelFault> {
        self.last_fault.as_ref()
    }

    /// The errors that halted the channel lately (at most [`FAULT_LOG`],
    /// oldest first), whatever resets came since.
    pub fn fault_log(&self) -> impl Iterator<Item = &ChannelFault> {
        self.fault_log.iter()
    }

    /// Reads the register at channel offset `off` (whole registers; the
    /// device composes partial accesses).
    pub fn read_register(&self, off: u64) -> u64 {
        match off {
            CHANCTRL => u64::from(self.chanctrl),
            DMA_COMP => u64::from(DMA_COMP_V2),
            // The reset bit clears itself: the reset is done at once.
            CHANCMD => 0,
            DMACOUNT => u64::from(self.dmacount),
            CHANSTS => self.chansts(),
            CHAINADDR => self.chainaddr,
            CHANCMP => self.chancmp,
            CDAR => self.cdar,
            CHANERR => u64::from(self.chanerr),
            CHANERR_MASK => u64::from(self.chanerr_mask),
            _ => 0,
        }
    }

    /// Width in bytes of the register at channel offset `off`, or `None`
    /// for a reserved offset.
    pub fn register_width(off: u64) -> Option<usize> {
        match off {
            CHANCTRL | DMA_COMP | DMACOUNT => Some(2),
            CHANCMD => Some(1),
            CHANSTS | CHAINADDR | CHANCMP | CDAR => Some(8),
            CHANERR | CHANERR_MASK => Some(4),
            _ => None,
        }
    }

    /// Writes the register at channel offset `off` with its full new value
    /// (read-only registers ignore it). DMACOUNT and CHANCMD act at once,
    /// through `dma`.
    pub fn write_register(
        &mut self,
        off: u64,
        value: u64,
        dma: Option<&dyn DmaTarget>,
    ) -> ChannelEvents {
        match off {
            CHANCTRL => {
                self.chanctrl = value as u16;
                ChannelEvents::default()
            }
            CHANCMD => self.command(value as u8, dma),
            DMACOUNT => {
                self.dmacount = value as u16;
                self.run(dma)
            }
            CHAINADDR => {
                self.chainaddr = value;
                // A new chain: the count of processed descriptors starts
                // again (the selftests' driver writes CHAINADDR, then the
                // number of descriptors to run, each time).
                if self.status != status::ACTIVE && self.chanerr == 0 {
                    self.next = value;
                    self.processed = 0;
                    self.ready = true;
                }
                ChannelEvents::default()
            }
            CHANCMP => {
                self.chancmp = value;
                ChannelEvents::default()
            }
            CHANERR => {
                self.chanerr &= !(value as u32);
                ChannelEvents::default()
            }
            CHANERR_MASK => {
                self.chanerr_mask = value as u32;
                ChannelEvents::default()
            }
            _ => ChannelEvents::default(),
        }
    }

    /// Power-on state of the channel's registers (counters kept).
    pub fn reset(&mut self) {
        let stats = std::mem::take(&mut self.stats);
        let log = std::mem::take(&mut self.fault_log);
        *self = IoatChannel::new(self.xfercap);
        self.stats = stats;
        self.fault_log = log;
        self.stats.resets += 1;
    }

    fn command(&mut self, cmd: u8, dma: Option<&dyn DmaTarget>) -> ChannelEvents {
        if cmd & CHANCMD_RESET != 0 {
            self.reset();
            return ChannelEvents::default();
        }
        if cmd & CHANCMD_ABORT != 0 {
            self.status = status::HALTED;
            self.ready = false;
            return ChannelEvents::default();
        }
        if cmd & CHANCMD_SUSPEND != 0 {
            if self.status != status::HALTED {
                self.status = status::SUSPENDED;
            }
            return ChannelEvents::default();
        }
        if cmd & (CHANCMD_RESUME | CHANCMD_START | CHANCMD_APPEND) != 0 {
            if self.status == status::SUSPENDED || self.status == status::DONE {
                self.ready = true;
                return self.run(dma);
            }
            return ChannelEvents::default();
        }
        ChannelEvents::default()
    }

    /// Processes descriptors until `processed == dmacount` or an error.
    fn run(&mut self, dma: Option<&dyn DmaTarget>) -> ChannelEvents {
        let mut ev = ChannelEvents::default();
        if !self.ready || self.chanerr != 0 || self.processed == self.dmacount {
            return ev;
        }
        self.status = status::ACTIVE;
        while self.processed != self.dmacount {
            let at = self.next;
            self.cdar = at;
            match self.perform(at, dma) {
                Ok(desc) => {
                    self.processed = self.processed.wrapping_add(1);
                    self.completed = at;
                    self.next = desc.next;
                    self.stats.descriptors += 1;
                    if desc.ctl & DESC_CTL_COMPL_WRITE != 0 {
                        if let Err(e) = self.write_completion(dma, status::ACTIVE) {
                            self.halt(CHANERR_COMPLETION_ADDR_ERR, at, e, dma, &mut ev);
                            return ev;
                        }
                    }
                    if desc.ctl & DESC_CTL_INT_EN != 0 && self.chanctrl & CHANCTRL_INT_REARM != 0 {
                        // Fired once; the driver re-arms through CHANCTRL.
                        self.chanctrl &= !CHANCTRL_INT_REARM;
                        ev.interrupt = true;
                    }
                }
                Err((bits, reason)) => {
                    self.halt(bits, at, reason, dma, &mut ev);
                    return ev;
                }
            }
        }
        self.status = status::DONE;
        if ev.interrupt {
            self.stats.interrupts += 1;
        }
        ev
    }

    /// Fetches and performs the descriptor at `at`.
    fn perform(
        &mut self,
        at: u64,
        dma: Option<&dyn DmaTarget>,
    ) -> Result<Descriptor, (u32, String)> {
        if !at.is_multiple_of(DESC_SIZE) {
            return Err((
                CHANERR_NEXT_DESC_ALIGN_ERR,
                format!("descriptor address {at:#x} is not 64-byte aligned"),
            ));
        }
        let Some(dma) = dma else {
            return Err((CHANERR_NEXT_ADDR_ERR, "no DMA target attached".into()));
        };
        let mut raw = [0u8; DESC_SIZE as usize];
        dma.dma_read(at, &mut raw)
            .map_err(|e| (CHANERR_NEXT_ADDR_ERR, format!("descriptor fetch: {e}")))?;
        let desc = Descriptor::parse(&raw);
        if desc.ctl & DESC_CTL_NULL != 0 {
            return Ok(desc);
        }
        let op = desc.ctl >> DESC_CTL_OP_SHIFT;
        if op != OP_COPY {
            return Err((
                CHANERR_CONTROL_ERR,
                format!("operation {op:#x} is not implemented by this model"),
            ));
        }
        let size = u64::from(desc.size);
        if size == 0 || size > self.max_transfer() {
            return Err((
                CHANERR_LENGTH_ERR,
                format!(
                    "copy of {size:#x} bytes (XFERCAP allows 1 to {:#x})",
                    self.max_transfer()
                ),
            ));
        }
        self.copy(dma, desc.src, desc.dst, size)?;
        Ok(desc)
    }

    /// Copies `size` bytes from `src` to `dst` in chunks, in address order.
    fn copy(
        &mut self,
        dma: &dyn DmaTarget,
        src: u64,
        dst: u64,
        size: u64,
    ) -> Result<(), (u32, String)> {
        let mut buf = vec![0u8; (size as usize).min(COPY_CHUNK)];
        let mut done = 0u64;
        while done < size {
            let n = (size - done).min(buf.len() as u64) as usize;
            let Some(chunk) = buf.get_mut(..n) else {
                break;
            };
            let (Some(s), Some(d)) = (src.checked_add(done), dst.checked_add(done)) else {
                return Err((CHANERR_SRC_ADDR_ERR, "address wraps".into()));
            };
            dma.dma_read(s, chunk)
                .map_err(|e| (CHANERR_READ_DATA_ERR, format!("source read: {e}")))?;
            dma.dma_write(d, chunk)
                .map_err(|e| (CHANERR_WRITE_DATA_ERR, format!("destination write: {e}")))?;
            done += n as u64;
            self.stats.bytes_copied += n as u64;
        }
        Ok(())
    }

    fn write_completion(&self, dma: Option<&dyn DmaTarget>, st: u64) -> Result<(), String> {
        if self.chancmp == 0 {
            return Ok(());
        }
        let Some(dma) = dma else {
            return Err("no DMA target attached".into());
        };
        let value = (self.completed & CHANSTS_COMPLETED_DESCRIPTOR_ADDR) | st;
        dma.dma_write(self.chancmp, &value.to_le_bytes())
            .map_err(|e: DmaError| format!("completion write: {e}"))
    }

    fn halt(
        &mut self,
        bits: u32,
        descriptor: u64,
        reason: String,
        dma: Option<&dyn DmaTarget>,
        ev: &mut ChannelEvents,
    ) {
        self.chanerr |= bits;
        self.status = status::HALTED;
        self.ready = false;
        self.stats.errors += 1;
        let fault = ChannelFault {
            chanerr: bits,
            descriptor,
            reason,
        };
        if self.fault_log.len() == FAULT_LOG {
            self.fault_log.pop_front();
        }
        self.fault_log.push_back(fault.clone());
        self.last_fault = Some(fault);
        if self.chanctrl & CHANCTRL_ERR_COMPLETION_EN != 0 {
            // Best effort: a completion address that faults too is already
            // reported by the IOMMU.
            let _ = self.write_completion(dma, status::HALTED);
        }
        if self.chanctrl & CHANCTRL_ERR_INT_EN != 0 {
            ev.interrupt = true;
            self.stats.interrupts += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::VecDmaTarget;

    const MEM: u64 = 0x10_0000;

    fn desc(size: u32, ctl: u32, src: u64, dst: u64, next: u64) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&size.to_le_bytes());
        b[4..8].copy_from_slice(&ctl.to_le_bytes());
        b[8..16].copy_from_slice(&src.to_le_bytes());
        b[16..24].copy_from_slice(&dst.to_le_bytes());
        b[24..32].copy_from_slice(&next.to_le_bytes());
        b
    }

    fn mem() -> VecDmaTarget {
        VecDmaTarget::new(MEM, 0x10_0000)
    }

    fn start(ch: &mut IoatChannel, dma: &VecDmaTarget, chain: u64, count: u16) -> ChannelEvents {
        ch.write_register(
            CHANCTRL,
            u64::from(CHANCTRL_INT_REARM | CHANCTRL_ANY_ERR_ABORT_EN),
            Some(dma),
        );
        ch.write_register(CHAINADDR, chain, Some(dma));
        ch.write_register(DMACOUNT, u64::from(count), Some(dma))
    }

    #[test]
    fn a_self_linked_descriptor_runs_count_times_and_interrupts_once_armed() {
        let dma = mem();
        let mut ch = IoatChannel::new(16);
        assert_eq!(ch.status(), status::HALTED);
        let (src, dst, d) = (MEM + 0x1000, MEM + 0x8000, MEM + 0x40);
        dma.dma_write(src, &[0x5a; 0x1000]).unwrap();
        dma.dma_write(d, &desc(0x1000, DESC_CTL_INT_EN, src, dst, d))
            .unwrap();
        let ev = start(&mut ch, &dma, d, 3);
        assert!(ev.interrupt);
        assert_eq!(ch.chansts(), d | status::DONE);
        assert_eq!(ch.stats().descriptors, 3);
        assert_eq!(ch.stats().bytes_copied, 0x3000);
        let mut got = [0u8; 0x1000];
        dma.dma_read(dst, &mut got).unwrap();
        assert_eq!(got, [0x5a; 0x1000]);
        // Fired once: INT_REARM was consumed.
        assert_eq!(ch.read_register(CHANCTRL) as u16 & CHANCTRL_INT_REARM, 0);
        // Suspend, then a new chain restarts the count.
        ch.write_register(CHANCMD, u64::from(CHANCMD_SUSPEND), Some(&dma));
        assert_eq!(ch.status(), status::SUSPENDED);
        let ev = start(&mut ch, &dma, d, 1);
        assert!(ev.interrupt);
        assert_eq!(ch.stats().descriptors, 4);
        assert_eq!(ch.status(), status::DONE);
    }

    #[test]
    fn faults_halt_with_the_bit_that_says_why_and_reset_clears_them() {
        let dma = mem();
        let d = MEM + 0x40;
        for (descriptor, chain, bit) in [
            // Source outside memory: a read error.
            (
                desc(64, 0, 0x9000_0000, MEM + 0x2000, d),
                d,
                CHANERR_READ_DATA_ERR,
            ),
            // Destination outside memory: a write error.
            (
                desc(64, 0, MEM + 0x2000, 0x9000_0000, d),
                d,
                CHANERR_WRITE_DATA_ERR,
            ),
            // Larger than XFERCAP allows.
            (
                desc(0x1_0001, 0, MEM, MEM + 0x2000, d),
                d,
                CHANERR_LENGTH_ERR,
            ),
            (desc(0, 0, MEM, MEM + 0x2000, d), d, CHANERR_LENGTH_ERR),
            // An operation the model does not implement (XOR).
            (
                desc(64, 0x87 << 24, MEM, MEM + 0x2000, d),
                d,
                CHANERR_CONTROL_ERR,
            ),
            // A chain outside memory, a misaligned chain.
            (
                desc(64, 0, MEM, MEM + 0x2000, d),
                0x9000_0000,
                CHANERR_NEXT_ADDR_ERR,
            ),
            (
                desc(64, 0, MEM, MEM + 0x2000, d),
                d + 8,
                CHANERR_NEXT_DESC_ALIGN_ERR,
            ),
        ] {
            let mut ch = IoatChannel::new(16);
            dma.dma_write(d, &descriptor).unwrap();
            let ev = start(&mut ch, &dma, chain, 1);
            assert!(!ev.interrupt, "no ERR_INT_EN: no interrupt");
            assert_eq!(ch.status(), status::HALTED);
            assert_eq!(ch.chanerr(), bit);
            assert_eq!(ch.last_fault().map(|f| f.chanerr), Some(bit));
            // Nothing runs while an error is latched.
            ch.write_register(CHAINADDR, d, Some(&dma));
            ch.write_register(DMACOUNT, 2, Some(&dma));
            assert_eq!(ch.status(), status::HALTED);
            // CHANERR is write-1-to-clear; reset returns to HALTED, clean.
            ch.write_register(CHANERR, u64::from(bit), Some(&dma));
            assert_eq!(ch.chanerr(), 0);
            ch.write_register(CHANCMD, u64::from(CHANCMD_RESET), Some(&dma));
            assert_eq!(ch.read_register(CHANCMD), 0);
            assert_eq!(ch.chansts(), status::HALTED);
            assert_eq!(ch.stats().resets, 1);
            // The reset cleared the latched error, not the device's log.
            assert!(ch.last_fault().is_none());
            let log: Vec<u32> = ch.fault_log().map(|f| f.chanerr).collect();
            assert_eq!(log, vec![bit]);
        }
    }

    #[test]
    fn fault_log_keeps_the_last_errors_in_order() {
        let dma = mem();
        let d = MEM + 0x40;
        let mut ch = IoatChannel::new(16);
        for i in 0..FAULT_LOG as u32 + 3 {
            // Oversized counts: 0x10001 + i bytes, each refused.
            dma.dma_write(d, &desc(0x1_0001 + i, 0, MEM, MEM + 0x2000, d))
                .unwrap();
            start(&mut ch, &dma, d, 1);
            ch.write_register(CHANCMD, u64::from(CHANCMD_RESET), Some(&dma));
        }
        let log: Vec<String> = ch.fault_log().map(|f| f.reason.clone()).collect();
        assert_eq!(log.len(), FAULT_LOG);
        assert_eq!(
            log[0],
            "copy of 0x10004 bytes (XFERCAP allows 1 to 0x10000)"
        );
        assert_eq!(
            log[FAULT_LOG - 1],
            "copy of 0x10013 bytes (XFERCAP allows 1 to 0x10000)"
        );
        assert_eq!(ch.stats().errors, FAULT_LOG as u64 + 3);
    }

    #[test]
    fn error_interrupt_and_completion_writeback() {
        let dma = mem();
        let mut ch = IoatChannel::new(12);
        let (d, cmp) = (MEM + 0x40, MEM + 0x800);
        dma.dma_write(
            d,
            &desc(64, DESC_CTL_COMPL_WRITE, MEM + 0x1000, MEM + 0x2000, d),
        )
        .unwrap();
        ch.write_register(CHANCMP, cmp, Some(&dma));
        start(&mut ch, &dma, d, 1);
        let mut b = [0u8; 8];
        dma.dma_read(cmp, &mut b).unwrap();
        // Written while the channel was still active: address | ACTIVE.
        assert_eq!(u64::from_le_bytes(b), d);
        // An error with ERR_INT_EN interrupts.
        dma.dma_write(d, &desc(0x2000, 0, MEM, MEM + 0x2000, d))
            .unwrap();
        ch.write_register(CHANCTRL, u64::from(CHANCTRL_ERR_INT_EN), Some(&dma));
        ch.write_register(CHAINADDR, d, Some(&dma));
        let ev = ch.write_register(DMACOUNT, 2, Some(&dma));
        assert!(ev.interrupt);
        assert_eq!(ch.chanerr(), CHANERR_LENGTH_ERR);
    }

    #[test]
    fn null_descriptors_complete_without_moving_data() {
        let dma = mem();
        let mut ch = IoatChannel::new(12);
        let d = MEM + 0x40;
        dma.dma_write(d, &desc(0, DESC_CTL_NULL, 0, 0, d)).unwrap();
        start(&mut ch, &dma, d, 5);
        assert_eq!(ch.chansts(), d | status::DONE);
        assert_eq!(ch.stats().bytes_copied, 0);
        assert_eq!(ch.stats().descriptors, 5);
    }
}
