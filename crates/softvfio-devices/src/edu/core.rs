//! The edu register file (BAR0) and its DMA engine, independent of how the
//! device is attached: the vfio-pci wrapper ([`super::EduDevice`]) and a
//! future mediated edu both drive this same model, each with its own
//! [`DmaTarget`].
//!
//! Behaviour follows QEMU's `docs/specs/edu.rst` and `hw/misc/edu.c` as
//! observed through vfio-pci on the reference machine (QEMU 7.2 edu, Linux
//! 6.1), except where QEMU would crash: see [`EduCore::mmio_write`].

use std::collections::VecDeque;

use super::regs::*;
use crate::dma::{DmaAccess, DmaError, DmaTarget};

/// How many log lines [`EduCore`] keeps for introspection.
const LOG_LINES: usize = 64;

/// What the device's bus connection allows for one DMA.
#[derive(Clone, Copy)]
pub struct DmaBus<'a> {
    /// Where DMA goes; `None` means nothing answers (every access faults).
    pub target: Option<&'a dyn DmaTarget>,
    /// PCI command register Bus Master Enable. When clear, QEMU's PCI bus
    /// drops the device's writes and answers its reads with zeros.
    pub bus_master: bool,
}

/// A change of the device's interrupt request caused by a register access.
/// How it is delivered (INTx level, MSI message) is up to the bus wrapper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqRequest {
    /// `edu_raise_irq` left a non-zero interrupt status: assert INTx or send
    /// an MSI (QEMU sends one MSI per raise, even if status was already set).
    Raise,
    /// The interrupt status became (or stayed) zero after an acknowledge:
    /// deassert INTx (MSI has nothing to undo).
    Lower,
}

/// Counters for introspection; never reset except by [`EduCore::clear_stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EduStats {
    /// DMA commands started (start bit written).
    pub dma_commands: u64,
    /// Commands whose whole transfer happened.
    pub dma_completed: u64,
    /// Bytes moved memory → device buffer.
    pub dma_bytes_to_device: u64,
    /// Bytes moved device buffer → memory.
    pub dma_bytes_to_memory: u64,
    /// Failed commands: range errors + faults + no target.
    pub dma_errors: u64,
    /// Transfers the DMA target refused (IOMMU faults).
    pub dma_faults: u64,
    /// Commands rejected because the buffer range was out of bounds (QEMU
    /// would abort or overrun its buffer).
    pub dma_range_errors: u64,
    /// Transfers with no DMA target attached.
    pub dma_no_target: u64,
    /// Memory addresses clamped to the DMA mask.
    pub dma_clamps: u64,
    /// Transfers that went nowhere because Bus Master Enable was clear.
    pub dma_blocked_no_bus_master: u64,
    /// PASID-tagged transfers attempted.
    pub dma_pasid: u64,
    /// Factorials computed.
    pub factorials: u64,
    /// Interrupt raise requests (register 0x60, factorial, DMA).
    pub irq_raises: u64,
    /// MSI messages delivered to the notifier.
    pub msi_sent: u64,
    /// MSI messages lost because Bus Master Enable was clear.
    pub msi_dropped: u64,
    /// INTx rising edges.
    pub intx_asserts: u64,
    /// Register/buffer resets.
    pub resets: u64,
}

/// The BAR0 registers as a driver sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EduRegisters {
    /// 0x00: identification (0x010000ed).
    pub identification: u32,
    /// Stored value of 0x04 (the inverted last write).
    pub liveness: u32,
    /// 0x08: factorial input, then result.
    pub factorial: u32,
    /// 0x20: status (bit 0 computing, bit 7 raise interrupt on completion).
    pub status: u32,
    /// 0x24: interrupt status.
    pub irq_status: u32,
    /// 0x80: DMA source address.
    pub dma_src: u64,
    /// 0x88: DMA destination address.
    pub dma_dst: u64,
    /// 0x90: DMA count.
    pub dma_cnt: u64,
    /// 0x98: DMA command.
    pub dma_cmd: u64,
    /// The PASID register (0xa0, a softvfio extension).
    pub pasid: u32,
    /// The DMA mask ordinary DMA addresses are clamped to.
    pub dma_mask: u64,
}

/// The edu register model: registers, DMA buffer, DMA engine, counters.
#[derive(Debug, Clone)]
pub struct EduCore {
    addr4: u32,
    fact: u32,
    status: u32,
    irq_status: u32,
    dma_src: u64,
    dma_dst: u64,
    dma_cnt: u64,
    dma_cmd: u64,
    pasid: u32,
    dma_mask: u64,
    /// A faulting DMA read zero-fills the rest of its window.
    zero_fill_faulted_reads: bool,
    buf: Box<[u8; DMA_BUF_SIZE]>,
    stats: EduStats,
    last_error: Option<String>,
    log: VecDeque<String>,
}

impl Default for EduCore {
    fn default() -> Self {
        Self::new(DEFAULT_DMA_MASK)
    }
}

impl EduCore {
    /// Power-on state with the given DMA mask (QEMU's `dma_mask` property,
    /// 28 bits by default).
    pub fn new(dma_mask: u64) -> Self {
        EduCore {
            addr4: 0,
            fact: 0,
            status: 0,
            irq_status: 0,
            dma_src: 0,
            dma_dst: 0,
            dma_cnt: 0,
            dma_cmd: 0,
            pasid: 0,
            dma_mask,
            zero_fill_faulted_reads: true,
            buf: Box::new([0; DMA_BUF_SIZE]),
            stats: EduStats::default(),
            last_error: None,
            log: VecDeque::new(),
        }
    }

    /// Whether a DMA read that faults zero-fills what it could not read
    /// (QEMU's edu behind an IOMMU) or leaves the old bytes (a mediated
    /// device copying page by page).
    pub fn set_zero_fill_faulted_reads(&mut self, on: bool) {
        self.zero_fill_faulted_reads = on;
    }

    /// Registers and DMA buffer back to power-on state. Counters and the log
    /// survive: they describe the device's history, not its state.
    pub fn reset(&mut self) {
        let mask = self.dma_mask;
        let stats = std::mem::take(&mut self.stats);
        let log = std::mem::take(&mut self.log);
        let last_error = self.last_error.take();
        *self = EduCore::new(mask);
        self.stats = stats;
        self.stats.resets += 1;
        self.log = log;
        self.last_error = last_error;
    }

    /// What an mdev vendor driver's `VFIO_DEVICE_RESET` clears in Linux's
    /// sample mediated edu (medu): the DMA registers, the interrupt status
    /// and the status register. Liveness, factorial, PASID and the DMA
    /// buffer keep their values.
    pub fn reset_dma_and_interrupts(&mut self) {
        self.dma_src = 0;
        self.dma_dst = 0;
        self.dma_cnt = 0;
        self.dma_cmd = 0;
        self.irq_status = 0;
        self.status = 0;
        self.stats.resets += 1;
    }

    /// The registers' current values.
    pub fn registers(&self) -> EduRegisters {
        EduRegisters {
            identification: EDU_ID,
            liveness: self.addr4,
            factorial: self.fact,
            status: self.status,
            irq_status: self.irq_status,
            dma_src: self.dma_src,
            dma_dst: self.dma_dst,
            dma_cnt: self.dma_cnt,
            dma_cmd: self.dma_cmd,
            pasid: self.pasid,
            dma_mask: self.dma_mask,
        }
    }

    /// Counters since creation (or the last clear).
    pub fn stats(&self) -> &EduStats {
        &self.stats
    }

    /// For bus wrappers that count their own events (MSI, INTx).
    pub(crate) fn stats_mut(&mut self) -> &mut EduStats {
        &mut self.stats
    }

    /// Zeroes the counters.
    pub fn clear_stats(&mut self) {
        self.stats = EduStats::default();
    }

    /// The 4 KiB DMA buffer (device address 0x40000).
    pub fn dma_buffer(&self) -> &[u8; DMA_BUF_SIZE] {
        &self.buf
    }

    /// The interrupt status register (0x24).
    pub fn irq_status(&self) -> u32 {
        self.irq_status
    }

    /// The most recent DMA error, for introspection.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Recent device log lines (clamps, rejected commands, faults), oldest
    /// first.
    pub fn log_lines(&self) -> impl Iterator<Item = &str> {
        self.log.iter().map(String::as_str)
    }

    fn log(&mut self, line: String) {
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }

    fn error(&mut self, line: String) {
        tracing::warn!(target: "softvfio::edu", "{line}");
        self.last_error = Some(line.clone());
        self.log(line);
    }

    /// QEMU's memory core refuses accesses narrower than 4 bytes (the edu
    /// region's `valid.min_access_size`): reads return 0, writes are
    /// dropped. edu itself then wants size 4 below 0x80 and 4 or 8 above.
    fn access_ok(addr: u64, size: usize) -> bool {
        if size != 4 && size != 8 {
            return false;
        }
        addr >= 0x80 || size == 4
    }

    /// Accesses the memory core rejects outright (narrower than 4 bytes or
    /// unaligned): read as 0, writes dropped.
    fn rejected_by_bus(addr: u64, size: usize) -> bool {
        !(size == 4 || size == 8) || !addr.is_multiple_of(size as u64)
    }

    /// A naturally aligned MMIO read of `size` (1, 2, 4 or 8) bytes at BAR0
    /// offset `addr`; the value is in the low `size` bytes.
    pub fn mmio_read(&self, addr: u64, size: usize) -> u64 {
        if Self::rejected_by_bus(addr, size) {
            // Rejected by the memory core before edu sees it: reads as 0
            // (measured on the reference machine).
            return 0;
        }
        if !Self::access_ok(addr, size) {
            return !0;
        }
        let v = match addr {
            REG_ID => u64::from(EDU_ID),
            REG_LIVENESS => u64::from(self.addr4),
            REG_FACTORIAL => u64::from(self.fact),
            REG_STATUS => u64::from(self.status),
            REG_IRQ_STATUS => u64::from(self.irq_status),
            REG_DMA_SRC => self.dma_src,
            REG_DMA_DST => self.dma_dst,
            REG_DMA_CNT => self.dma_cnt,
            REG_DMA_CMD => self.dma_cmd,
            REG_PASID => u64::from(self.pasid),
            _ => !0,
        };
        if size == 4 {
            v & 0xffff_ffff
        } else {
            v
        }
    }

    /// A naturally aligned MMIO write. DMA commands run to completion before
    /// this returns (the start bit is clear again when the driver polls).
    ///
    /// Where QEMU misbehaves we do not: an out-of-bounds buffer range makes
    /// QEMU 7.2 abort (`hw_error`) and newer QEMU copy past its buffer; here
    /// the command is rejected, logged and counted, memory is untouched, and
    /// the command completes (start bit cleared, completion interrupt raised
    /// if asked for, so a driver waiting for it does not hang).
    pub fn mmio_write(
        &mut self,
        addr: u64,
        size: usize,
        val: u64,
        bus: DmaBus<'_>,
    ) -> Option<IrqRequest> {
        if Self::rejected_by_bus(addr, size) || !Self::access_ok(addr, size) {
            return None;
        }
        let val = if size == 4 { val & 0xffff_ffff } else { val };
        let dma_running = self.dma_cmd & DMA_CMD_START != 0;
        match addr {
            REG_LIVENESS => {
                self.addr4 = !(val as u32);
                None
            }
            REG_FACTORIAL => {
                if self.status & STATUS_COMPUTING != 0 {
                    return None;
                }
                self.fact = val as u32;
                self.compute_factorial()
            }
            REG_STATUS => {
                if val & u64::from(STATUS_IRQFACT) != 0 {
                    self.status |= STATUS_IRQFACT;
                } else {
                    self.status &= !STATUS_IRQFACT;
                }
                None
            }
            REG_IRQ_RAISE => self.raise(val as u32),
            REG_IRQ_ACK => self.lower(val as u32),
            // Writes while a transfer runs are ignored, as in QEMU.
            REG_DMA_SRC if !dma_running => {
                self.dma_src = val;
                None
            }
            REG_DMA_DST if !dma_running => {
                self.dma_dst = val;
                None
            }
            REG_DMA_CNT if !dma_running => {
                self.dma_cnt = val;
                None
            }
            REG_DMA_CMD if !dma_running && val & DMA_CMD_START != 0 => {
                self.dma_cmd = val;
                self.run_dma(bus)
            }
            REG_PASID if !dma_running => {
                self.pasid = (val as u32) & (PASID_ENABLE | PASID_MASK);
                None
            }
            _ => None,
        }
    }

    /// `edu_raise_irq`: OR into the status; request delivery if the status
    /// is non-zero (raising 0 onto a zero status does nothing).
    pub fn raise(&mut self, val: u32) -> Option<IrqRequest> {
        self.irq_status |= val;
        self.stats.irq_raises += 1;
        (self.irq_status != 0).then_some(IrqRequest::Raise)
    }

    /// `edu_lower_irq`: clear bits; request deassert once status is zero.
    /// While bits remain nothing changes on the line.
    pub fn lower(&mut self, val: u32) -> Option<IrqRequest> {
        self.irq_status &= !val;
        (self.irq_status == 0).then_some(IrqRequest::Lower)
    }

    /// The factorial runs synchronously: the "computing" bit is never seen
    /// set. u32 arithmetic wraps exactly like QEMU's C code.
    fn compute_factorial(&mut self) -> Option<IrqRequest> {
        let mut n = self.fact;
        let mut ret: u32 = 1;
        // Once 32 factors of two are in, the product stays 0: stop there
        // instead of looping up to 2^32 times inside a register write.
        while n > 0 && ret != 0 {
            ret = ret.wrapping_mul(n);
            n -= 1;
        }
        self.fact = ret;
        self.stats.factorials += 1;
        if self.status & STATUS_IRQFACT != 0 {
            self.raise(FACT_IRQ)
        } else {
            None
        }
    }

    fn clamp(&mut self, addr: u64) -> u64 {
        let res = addr & self.dma_mask;
        if res != addr {
            self.stats.dma_clamps += 1;
            let line = format!("EDU: clamping DMA {addr:#018x} to {res:#018x}!");
            tracing::warn!(target: "softvfio::edu", "{line}");
            self.log(line);
        }
        res
    }

    fn run_dma(&mut self, bus: DmaBus<'_>) -> Option<IrqRequest> {
        self.stats.dma_commands += 1;
        let to_memory = self.dma_cmd & DMA_CMD_TO_RAM != 0;
        let (dev_addr, mem_addr, access) = if to_memory {
            (self.dma_src, self.dma_dst, DmaAccess::Write)
        } else {
            (self.dma_dst, self.dma_src, DmaAccess::Read)
        };
        let cnt = self.dma_cnt;
        let buf_end = DMA_BUF_ADDR + DMA_BUF_SIZE as u64;
        let in_bounds =
            dev_addr >= DMA_BUF_ADDR && dev_addr.checked_add(cnt).is_some_and(|end| end <= buf_end);
        if !in_bounds {
            self.stats.dma_range_errors += 1;
            self.stats.dma_errors += 1;
            self.error(format!(
                "EDU: DMA range {dev_addr:#018x}-{:#018x} out of bounds ({DMA_BUF_ADDR:#018x}-{:#018x})! command rejected",
                dev_addr.wrapping_add(cnt).wrapping_sub(1),
                buf_end - 1
            ));
            return self.finish_dma();
        }
        // In bounds: both fit in the 4 KiB buffer.
        let off = (dev_addr - DMA_BUF_ADDR) as usize;
        let len = cnt as usize;
        let pasid = (self.pasid & PASID_ENABLE != 0).then_some(self.pasid & PASID_MASK);
        // PASID-tagged addresses are process virtual addresses: the legacy
        // DMA mask does not apply to them.
        let requested = mem_addr;
        let mem_addr = match pasid {
            Some(_) => mem_addr,
            None => self.clamp(mem_addr),
        };
        // Faults this transfer causes name the command that started it.
        let origin = soft_iommu::DmaOrigin {
            model: "edu",
            register: REG_DMA_CMD,
            value: self.dma_cmd,
            requested,
            used: mem_addr,
            len: cnt,
            mask: pasid.is_none().then_some(self.dma_mask),
        };
        if pasid.is_some() {
            self.stats.dma_pasid += 1;
        }
        let Some(window) = self.buf.get_mut(off..off + len) else {
            return self.finish_dma();
        };

        if !bus.bus_master {
            // QEMU's PCI bus with Bus Master Enable clear: writes vanish,
            // reads return zeros (measured on the reference machine).
            if access == DmaAccess::Read {
                window.fill(0);
            }
            self.stats.dma_blocked_no_bus_master += 1;
            tracing::debug!(target: "softvfio::edu", "EDU: DMA {access} at {mem_addr:#x} blocked: bus master disabled");
            return self.finish_dma();
        }

        let result = soft_iommu::with_dma_origin(origin, || match (bus.target, access, pasid) {
            (None, _, _) => Err(DmaError::fault(
                mem_addr,
                access,
                0,
                "no DMA target attached",
            )),
            (Some(t), DmaAccess::Read, None) => t.dma_read(mem_addr, window),
            (Some(t), DmaAccess::Read, Some(p)) => t.dma_read_pasid(p, mem_addr, window),
            (Some(t), DmaAccess::Write, None) => t.dma_write(mem_addr, window),
            (Some(t), DmaAccess::Write, Some(p)) => t.dma_write_pasid(p, mem_addr, window),
        });
        let moved = match &result {
            Ok(()) => len,
            Err(e) => e.transferred().min(len),
        };
        if access == DmaAccess::Read {
            // What could not be read arrives as zeros, as QEMU's unassigned
            // memory answers a faulting read (measured: a read crossing the
            // end of a mapping yields the mapped prefix, then zeros).
            if self.zero_fill_faulted_reads {
                if let Some(rest) = window.get_mut(moved..) {
                    rest.fill(0);
                }
            }
            self.stats.dma_bytes_to_device += moved as u64;
        } else {
            self.stats.dma_bytes_to_memory += moved as u64;
        }
        match result {
            Ok(()) => self.stats.dma_completed += 1,
            Err(e) => {
                self.stats.dma_errors += 1;
                if bus.target.is_none() {
                    self.stats.dma_no_target += 1;
                } else {
                    self.stats.dma_faults += 1;
                }
                let tag = pasid.map(|p| format!(" PASID {p:#x}")).unwrap_or_default();
                self.error(format!("EDU: DMA {access}{tag} failed: {e}"));
            }
        }
        self.finish_dma()
    }

    fn finish_dma(&mut self) -> Option<IrqRequest> {
        self.dma_cmd &= !DMA_CMD_START;
        if self.dma_cmd & DMA_CMD_IRQ != 0 {
            self.raise(DMA_IRQ)
        } else {
            None
        }
    }
}
