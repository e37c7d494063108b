//! The memory-mapped device regions of one program address space, and the
//! resolution of a fault on them.
//!
//! A front end maps a device region inaccessible in the program
//! (`PROT_NONE` anonymous memory) and records it here; every load and store
//! on it faults, and [`resolve_fault`] performs the faulting instruction on
//! the device model (`softvfio_mmio::emulate`). The table follows the
//! program's address space: `munmap`, `mremap` and `mmap(MAP_FIXED)` over a
//! recorded range are applied to it with [`BarMappings::unmap`] and
//! [`BarMappings::remap`]; a forked child gets a copy (trace mode; in
//! preload mode the copy is the child's memory).
//!
//! Invariants:
//! - Recorded ranges never overlap, are page aligned and non-empty; a
//!   range's region offset plus its length stays within the region as
//!   `Vfio::device_mmap` checked it (splitting keeps that).
//! - Lookups and [`resolve_fault`] do not allocate on success: the preload
//!   library calls them in a signal handler (after
//!   `softvfio_mmio::warm_up`).

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use softvfio_mmio::{BarId, EmulationError, MmioSpace, ProgramMemory, Registers};

use crate::device::MappedAccessError;
use crate::memory::host::DeviceRange;
use crate::p2p::PeerTarget;
use crate::uapi::MappedRegion;

/// One recorded mapping: `[start, start + len)` reaches `target`.
#[derive(Debug, Clone)]
pub struct BarMapping {
    /// First address.
    pub start: u64,
    /// Bytes.
    pub len: u64,
    /// The device region and the region offset at `start`.
    pub target: MappedRegion,
    /// The program's protection (`PROT_READ | PROT_WRITE`...).
    pub prot: i32,
}

/// The device mappings of one address space.
#[derive(Debug, Clone, Default)]
pub struct BarMappings {
    by_start: BTreeMap<u64, BarMapping>,
}

impl BarMappings {
    /// An empty table (usable in a `static`).
    pub const fn new() -> Self {
        Self {
            by_start: BTreeMap::new(),
        }
    }

    /// No mapping recorded?
    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }

    /// The recorded mappings, by address.
    pub fn iter(&self) -> impl Iterator<Item = &BarMapping> {
        self.by_start.values()
    }

    /// Records a new mapping; whatever was recorded in its range is gone
    /// (`MAP_FIXED` replaces).
    pub fn insert(&mut self, start: u64, len: u64, target: MappedRegion, prot: i32) {
        self.unmap(start, len);
        if len > 0 {
            self.by_start.insert(
                start,
                BarMapping {
                    start,
                    len,
                    target,
                    prot,
                },
            );
        }
    }

    /// Does `[start, start + len)` meet a recorded mapping?
    pub fn overlaps(&self, start: u64, len: u64) -> bool {
        let end = start.saturating_add(len);
        self.by_start
            .range(..end)
            .next_back()
            .is_some_and(|(_, m)| m.start + m.len > start)
    }

    /// Is every byte of `[start, start + len)` in a recorded mapping?
    pub fn covers(&self, start: u64, len: u64) -> bool {
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        let mut at = start;
        while at < end {
            match self.lookup(at) {
                Some((m, _)) => at = m.start + m.len,
                None => return false,
            }
        }
        len > 0
    }

    /// The recorded pieces of `[start, start + len)`, clipped to it, in
    /// address order, with the device region each reaches: what `MAP_DMA`
    /// of that range maps peer to peer ([`crate::p2p`]).
    pub fn device_ranges(&self, start: u64, len: u64) -> Vec<DeviceRange> {
        let end = start.saturating_add(len);
        let first = self
            .by_start
            .range(..=start)
            .next_back()
            .map_or(start, |(s, _)| *s);
        self.by_start
            .range(first..end)
            .filter_map(|(_, m)| {
                let (s, e) = (m.start.max(start), (m.start + m.len).min(end));
                (s < e).then(|| DeviceRange {
                    start: s,
                    len: e - s,
                    prot: m.prot,
                    target: PeerTarget {
                        model: Arc::downgrade(&m.target.model),
                        region: m.target.region,
                        offset: m.target.offset + (s - m.start),
                    },
                })
            })
            .collect()
    }

    /// The mapping containing `addr` and `addr`'s offset in its region.
    pub fn lookup(&self, addr: u64) -> Option<(&BarMapping, u64)> {
        let (_, m) = self.by_start.range(..=addr).next_back()?;
        (addr < m.start + m.len).then(|| (m, m.target.offset + (addr - m.start)))
    }

    /// Forgets `[start, start + len)` (munmap, or a new mapping over it):
    /// mappings that straddle an end are cut. Returns whether anything
    /// was recorded there.
    pub fn unmap(&mut self, start: u64, len: u64) -> bool {
        let end = start.saturating_add(len);
        let hit: Vec<u64> = self
            .by_start
            .range(..end)
            .rev()
            .take_while(|(_, m)| m.start + m.len > start)
            .map(|(s, _)| *s)
            .collect();
        for s in &hit {
            let Some(m) = self.by_start.remove(s) else {
                continue;
            };
            let m_end = m.start + m.len;
            if m.start < start {
                let mut left = m.clone();
                left.len = start - m.start;
                self.by_start.insert(left.start, left);
            }
            if m_end > end {
                let mut right = m;
                right.target.offset += end - right.start;
                right.len = m_end - end;
                right.start = end;
                self.by_start.insert(right.start, right);
            }
        }
        !hit.is_empty()
    }

    /// Changes the protection recorded for `[start, start + len)`.
    pub fn protect(&mut self, start: u64, len: u64, prot: i32) {
        let pieces = self.take(start, len);
        for mut p in pieces {
            p.prot = prot;
            self.by_start.insert(p.start, p);
        }
    }

    /// A successful `mremap(old, old_len, new_len, ..) = new`: what was
    /// recorded in the first `min(old_len, new_len)` bytes at `old` now
    /// lives at `new`; the rest of the old range is gone.
    pub fn remap(&mut self, old: u64, old_len: u64, new: u64, new_len: u64) {
        let kept = old_len.min(new_len);
        let moved = self.take(old, kept);
        self.unmap(old, old_len);
        self.unmap(new, new_len);
        for mut p in moved {
            p.start = p.start - old + new;
            self.by_start.insert(p.start, p);
        }
    }

    /// Does any recorded mapping hold the device file `file` open?
    pub fn holds(&self, file: u64) -> bool {
        self.by_start.values().any(|m| m.target.file == file)
    }

    /// Removes and returns the recorded pieces of `[start, start + len)`.
    fn take(&mut self, start: u64, len: u64) -> Vec<BarMapping> {
        let end = start.saturating_add(len);
        let mut pieces = Vec::new();
        for m in self.by_start.values() {
            let (s, e) = (m.start.max(start), (m.start + m.len).min(end));
            if s < e {
                let mut p = m.clone();
                p.target.offset += s - m.start;
                p.start = s;
                p.len = e - s;
                pieces.push(p);
            }
        }
        self.unmap(start, len);
        pieces
    }
}

/// How a fault was resolved.
#[derive(Debug)]
pub enum FaultOutcome {
    /// Not a device mapping: the program's own fault, deliver it as it is.
    NotOurs,
    /// Performed: write the registers back (the vector registers too when
    /// `vector_written`) and resume.
    Done {
        /// A vector register changed.
        vector_written: bool,
    },
    /// The access is refused the way the kernel refuses it: deliver
    /// `signo` (`SIGSEGV` for an access the protection forbids or an
    /// inaccessible memory operand, `SIGBUS` for a page vfio-pci does not
    /// serve) for `address`.
    Signal {
        /// The signal.
        signo: i32,
        /// `si_code` (`SEGV_ACCERR`, `SEGV_MAPERR`, `BUS_ADRERR`).
        code: i32,
        /// `si_addr`.
        address: u64,
    },
    /// The instruction cannot be performed: stop the program with this
    /// report (never continue with a wrong value).
    Fatal(EmulationError),
}

/// Why a device access failed, kept by [`BarSpace`] for the outcome.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Protection(u64),
    Bus(u64),
}

/// The device regions of a [`BarMappings`] as the emulator sees them. BAR
/// ids are `region index + 8 × device number`, the device numbered in
/// order of first appearance, so a program with one device sees its
/// region indexes.
///
/// Two mappings of the same region may cover the same offsets (a BAR
/// mapped twice); the emulator names accesses by (BAR, offset) only, so
/// the mapping last found by address ([`MmioSpace::bar_at`], which the
/// emulator asks for every access it then makes) is the one an access is
/// made through (its protection, its address in reports).
struct BarSpace<'a> {
    maps: &'a BarMappings,
    refused: Option<Refusal>,
    last: std::cell::Cell<Option<u64>>,
}

impl BarSpace<'_> {
    fn bar_id(&self, m: &BarMapping) -> BarId {
        let mut devices: u32 = 0;
        let mut seen: [*const (); 8] = [std::ptr::null(); 8];
        for other in self.maps.iter() {
            let p = std::sync::Arc::as_ptr(&other.target.model) as *const ();
            let known = seen[..devices.min(8) as usize].iter().position(|q| *q == p);
            let n = match known {
                Some(n) => n as u32,
                None => {
                    if let Some(slot) = seen.get_mut(devices as usize) {
                        *slot = p;
                    }
                    devices += 1;
                    devices - 1
                }
            };
            if std::ptr::eq(p, std::sync::Arc::as_ptr(&m.target.model) as *const ()) {
                return m.target.region + 8 * n;
            }
        }
        m.target.region
    }

    /// The mapping of `bar` that holds region offset `offset` (the one last
    /// found by address first) and the address of `offset` in it.
    fn find(&self, bar: BarId, offset: u64) -> Option<(&BarMapping, u64)> {
        let holds = |m: &BarMapping| {
            self.bar_id(m) == bar && offset >= m.target.offset && offset < m.target.offset + m.len
        };
        if let Some(m) = self
            .last
            .get()
            .and_then(|start| self.maps.by_start.get(&start))
            .filter(|m| holds(m))
        {
            return Some((m, m.start + (offset - m.target.offset)));
        }
        self.maps.iter().find_map(|m| {
            (self.bar_id(m) == bar && offset >= m.target.offset && offset < m.target.offset + m.len)
                .then(|| (m, m.start + (offset - m.target.offset)))
        })
    }

    fn refuse(&mut self, r: Refusal) -> io::Error {
        self.refused = Some(r);
        io::Error::from_raw_os_error(libc::EFAULT)
    }
}

impl MmioSpace for BarSpace<'_> {
    fn bar_at(&self, addr: u64) -> Option<(BarId, u64)> {
        let (m, off) = self.maps.lookup(addr)?;
        self.last.set(Some(m.start));
        Some((self.bar_id(m), off))
    }

    fn read(&mut self, bar: BarId, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let Some((m, addr)) = self.find(bar, offset) else {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        };
        if m.prot == libc::PROT_NONE {
            return Err(self.refuse(Refusal::Protection(addr)));
        }
        let (model, region) = (m.target.model.clone(), m.target.region);
        match model.mapped_read(region, offset, data) {
            Ok(()) => Ok(()),
            Err(MappedAccessError::Bus) | Err(MappedAccessError::Errno(_)) => {
                Err(self.refuse(Refusal::Bus(addr)))
            }
        }
    }

    fn write(&mut self, bar: BarId, offset: u64, data: &[u8]) -> io::Result<()> {
        let Some((m, addr)) = self.find(bar, offset) else {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        };
        if m.prot & libc::PROT_WRITE == 0 {
            return Err(self.refuse(Refusal::Protection(addr)));
        }
        let (model, region) = (m.target.model.clone(), m.target.region);
        match model.mapped_write(region, offset, data) {
            Ok(()) => Ok(()),
            Err(MappedAccessError::Bus) | Err(MappedAccessError::Errno(_)) => {
                Err(self.refuse(Refusal::Bus(addr)))
            }
        }
    }
}

/// `SEGV_MAPERR`, `SEGV_ACCERR`, `BUS_ADRERR` (`siginfo.h`).
pub const SEGV_MAPERR: i32 = 1;
/// See [`SEGV_MAPERR`].
pub const SEGV_ACCERR: i32 = 2;
/// See [`SEGV_MAPERR`].
pub const BUS_ADRERR: i32 = 2;

/// Resolves a SIGSEGV at `fault_address` whose instruction bytes (up to 15,
/// read at `regs.rip`) are `code`: performs the instruction on the device
/// models of `maps` and updates `regs`, or says which signal the program
/// gets instead, or why it must stop.
pub fn resolve_fault<M: ProgramMemory + ?Sized>(
    maps: &BarMappings,
    code: &[u8],
    fault_address: u64,
    regs: &mut Registers,
    memory: &mut M,
) -> FaultOutcome {
    if maps.lookup(fault_address).is_none() {
        return FaultOutcome::NotOurs;
    }
    let mut space = BarSpace {
        maps,
        refused: None,
        last: std::cell::Cell::new(None),
    };
    match softvfio_mmio::emulate(code, fault_address, regs, &mut space, memory) {
        Ok(done) => FaultOutcome::Done {
            vector_written: done.vector_written,
        },
        Err(EmulationError::NotMmio { .. }) => FaultOutcome::NotOurs,
        Err(e) => match (space.refused, &e) {
            (Some(Refusal::Protection(address)), _) => FaultOutcome::Signal {
                signo: libc::SIGSEGV,
                code: SEGV_ACCERR,
                address,
            },
            (Some(Refusal::Bus(address)), _) => FaultOutcome::Signal {
                signo: libc::SIGBUS,
                code: BUS_ADRERR,
                address,
            },
            (None, EmulationError::Memory { address, .. }) => FaultOutcome::Signal {
                signo: libc::SIGSEGV,
                code: SEGV_MAPERR,
                address: *address,
            },
            _ => FaultOutcome::Fatal(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{IrqInfo, RegionInfo, VfioDeviceModel};
    use std::sync::{Arc, Mutex};

    /// A device whose region 0 is 64 KiB of registers, logging each mapped
    /// access as (write, offset, width, value); offset 0x100 refuses
    /// (SIGBUS).
    #[derive(Default)]
    struct Regs {
        log: Mutex<Vec<(bool, u64, usize, u64)>>,
    }

    impl VfioDeviceModel for Regs {
        fn name(&self) -> &str {
            "regs"
        }
        fn flags(&self) -> u32 {
            2
        }
        fn num_regions(&self) -> u32 {
            9
        }
        fn num_irqs(&self) -> u32 {
            0
        }
        fn region_info(&self, _index: u32) -> Option<RegionInfo> {
            None
        }
        fn irq_info(&self, _index: u32) -> Option<IrqInfo> {
            None
        }
        fn region_read(&self, _i: u32, _o: u64, _b: &mut [u8]) -> Result<usize, i32> {
            Err(libc::EINVAL)
        }
        fn region_write(&self, _i: u32, _o: u64, _d: &[u8]) -> Result<usize, i32> {
            Err(libc::EINVAL)
        }
        fn reset(&self) -> Result<(), i32> {
            Err(libc::EINVAL)
        }
        fn mapped_read(
            &self,
            _index: u32,
            offset: u64,
            data: &mut [u8],
        ) -> Result<(), MappedAccessError> {
            if offset == 0x100 {
                return Err(MappedAccessError::Bus);
            }
            let v = 0x1122_3344_5566_7788u64.wrapping_add(offset);
            data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
            self.log
                .lock()
                .unwrap()
                .push((false, offset, data.len(), v));
            Ok(())
        }
        fn mapped_write(
            &self,
            _index: u32,
            offset: u64,
            data: &[u8],
        ) -> Result<(), MappedAccessError> {
            let mut b = [0u8; 8];
            b[..data.len()].copy_from_slice(data);
            self.log
                .lock()
                .unwrap()
                .push((true, offset, data.len(), u64::from_le_bytes(b)));
            Ok(())
        }
    }

    fn target(model: &Arc<Regs>, offset: u64) -> MappedRegion {
        MappedRegion {
            model: model.clone(),
            region: 0,
            offset,
            file: 1,
        }
    }

    fn ranges(m: &BarMappings) -> Vec<(u64, u64, u64)> {
        m.iter()
            .map(|b| (b.start, b.len, b.target.offset))
            .collect()
    }

    struct NoMemory;
    impl ProgramMemory for NoMemory {
        fn read(&mut self, _a: u64, _d: &mut [u8]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EFAULT))
        }
        fn write(&mut self, _a: u64, _d: &[u8]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EFAULT))
        }
    }

    const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;

    #[test]
    fn unmap_cuts_and_splits() {
        let dev = Arc::new(Regs::default());
        let mut m = BarMappings::new();
        m.insert(0x10000, 0x4000, target(&dev, 0x1000), RW);
        assert!(m.overlaps(0xf000, 0x1001));
        assert!(!m.overlaps(0xf000, 0x1000));
        assert!(m.unmap(0x11000, 0x1000));
        assert_eq!(
            ranges(&m),
            vec![(0x10000, 0x1000, 0x1000), (0x12000, 0x2000, 0x3000)]
        );
        assert!(!m.unmap(0x11000, 0x1000));
        assert!(m.covers(0x12000, 0x2000));
        assert!(m.covers(0x10000, 0x1000));
        assert!(!m.covers(0x10000, 0x3000));
        assert!(!m.covers(0x12000, 0));
        assert_eq!(m.lookup(0x12010).map(|(_, o)| o), Some(0x3010));
        assert!(m.lookup(0x11000).is_none());
        // A new mapping over part of it replaces that part.
        m.insert(0x13000, 0x2000, target(&dev, 0), RW);
        assert_eq!(
            ranges(&m),
            vec![
                (0x10000, 0x1000, 0x1000),
                (0x12000, 0x1000, 0x3000),
                (0x13000, 0x2000, 0)
            ]
        );
    }

    #[test]
    fn remap_moves_and_shrinks() {
        let dev = Arc::new(Regs::default());
        let mut m = BarMappings::new();
        m.insert(0x10000, 0x3000, target(&dev, 0), RW);
        m.remap(0x10000, 0x3000, 0x40000, 0x2000);
        assert_eq!(ranges(&m), vec![(0x40000, 0x2000, 0)]);
        m.remap(0x41000, 0x1000, 0x50000, 0x1000);
        assert_eq!(
            ranges(&m),
            vec![(0x40000, 0x1000, 0), (0x50000, 0x1000, 0x1000)]
        );
        m.protect(0x40000, 0x1000, libc::PROT_READ);
        assert_eq!(
            m.lookup(0x40000).map(|(b, _)| b.prot),
            Some(libc::PROT_READ)
        );
        assert_eq!(m.lookup(0x50000).map(|(b, _)| b.prot), Some(RW));
    }

    #[test]
    fn resolve_performs_refuses_and_declines() {
        let dev = Arc::new(Regs::default());
        let mut m = BarMappings::new();
        m.insert(0x10000, 0x1000, target(&dev, 0x2000), RW);
        m.insert(0x20000, 0x1000, target(&dev, 0), libc::PROT_READ);
        let mut regs = Registers::default();
        // mov [rdi+8], eax
        let store = [0x89, 0x47, 0x08];
        regs.gpr[softvfio_mmio::gpr::RDI] = 0x10000;
        regs.gpr[softvfio_mmio::gpr::RAX] = 0xdead_beef;
        regs.rip = 0x400000;
        let out = resolve_fault(&m, &store, 0x10008, &mut regs, &mut NoMemory);
        assert!(matches!(
            out,
            FaultOutcome::Done {
                vector_written: false
            }
        ));
        assert_eq!(regs.rip, 0x400003);
        assert_eq!(
            dev.log.lock().unwrap().as_slice(),
            &[(true, 0x2008, 4, 0xdead_beef)]
        );
        // mov rax, [rdi]: 8-byte load.
        let load = [0x48, 0x8b, 0x07];
        regs.rip = 0x400000;
        let out = resolve_fault(&m, &load, 0x10000, &mut regs, &mut NoMemory);
        assert!(matches!(out, FaultOutcome::Done { .. }));
        assert_eq!(regs.gpr[softvfio_mmio::gpr::RAX], 0x1122_3344_5566_9788);
        // A store on the read-only mapping: SIGSEGV (SEGV_ACCERR).
        regs.gpr[softvfio_mmio::gpr::RDI] = 0x20000;
        regs.rip = 0x400000;
        let out = resolve_fault(&m, &store, 0x20008, &mut regs, &mut NoMemory);
        assert!(
            matches!(
                out,
                FaultOutcome::Signal {
                    signo: libc::SIGSEGV,
                    code: SEGV_ACCERR,
                    address: 0x20008
                }
            ),
            "{out:?}"
        );
        assert_eq!(regs.rip, 0x400000);
        // The same registers mapped twice: each access goes through the
        // mapping it was made on (its protection, its address).
        m.insert(0x30000, 0x1000, target(&dev, 0x2000), libc::PROT_READ);
        regs.gpr[softvfio_mmio::gpr::RDI] = 0x30000;
        let out = resolve_fault(&m, &store, 0x30008, &mut regs, &mut NoMemory);
        assert!(
            matches!(
                out,
                FaultOutcome::Signal {
                    signo: libc::SIGSEGV,
                    code: SEGV_ACCERR,
                    address: 0x30008
                }
            ),
            "{out:?}"
        );
        regs.gpr[softvfio_mmio::gpr::RDI] = 0x10000;
        let out = resolve_fault(&m, &store, 0x10008, &mut regs, &mut NoMemory);
        assert!(matches!(out, FaultOutcome::Done { .. }), "{out:?}");
        regs.rip = 0x400000;
        // A refused page: SIGBUS (BUS_ADRERR).
        regs.gpr[softvfio_mmio::gpr::RDI] = 0x20100;
        let out = resolve_fault(&m, &load, 0x20100, &mut regs, &mut NoMemory);
        assert!(
            matches!(
                out,
                FaultOutcome::Signal {
                    signo: libc::SIGBUS,
                    code: BUS_ADRERR,
                    address: 0x20100
                }
            ),
            "{out:?}"
        );
        // Not a device mapping.
        let out = resolve_fault(&m, &load, 0x50000, &mut regs, &mut NoMemory);
        assert!(matches!(out, FaultOutcome::NotOurs));
        // An instruction the emulator refuses: a report naming it.
        let setne = [0x0f, 0x95, 0x07];
        regs.gpr[softvfio_mmio::gpr::RDI] = 0x10000;
        let out = resolve_fault(&m, &setne, 0x10000, &mut regs, &mut NoMemory);
        match out {
            FaultOutcome::Fatal(e) => {
                let text = e.to_string();
                assert!(text.contains("setne"), "{text}");
                assert!(text.contains("offset 0x2000"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }
}
