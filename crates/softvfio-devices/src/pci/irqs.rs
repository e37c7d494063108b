//! vfio-pci's interrupt state machine (`vfio_pci_intrs.c` of Linux 6.1),
//! shared by every PCI device model: `VFIO_DEVICE_SET_IRQS` for INTx, MSI,
//! MSI-X, ERR and REQ, and the device-side entry points a model calls when
//! its INTx line changes or it sends an MSI.
//!
//! Invariants (all under the one state lock):
//! - at most one of INTx, MSI and MSI-X is enabled (`Mode`); ERR and REQ
//!   triggers are independent of it;
//! - INTx `masked` is the kernel's `ctx[0].masked`: set when the handler
//!   fires (automasking, `pci_check_and_mask_intx`), by MASK, or while the
//!   command register's INTx disable bit is set (`virq_disabled`); cleared
//!   by UNMASK only when the line is no longer asserted, otherwise the
//!   event is sent again and the line stays masked;
//! - an event is signalled only on an eventfd the program gave and has not
//!   taken back; MSI vectors without an eventfd drop their interrupts.
//!
//! Lock order: the device model's own lock, then this state lock. Eventfd
//! watchers (the INTx unmask eventfd) take the state lock from their own
//! thread, so a watcher is never dropped (joined) with the lock held.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use softvfio::device::{IrqAction, IrqData, IrqSet};
use softvfio::eventfd::{Eventfd, EventfdArg, EventfdWatcher};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX,
};

/// What the device's interrupt hardware offers (`vfio_pci_get_irq_count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqCapabilities {
    /// The interrupt pin register is non-zero.
    pub intx: bool,
    /// MSI vectors (a power of two), 0 without an MSI capability.
    pub msi_vectors: u32,
    /// MSI-X table size, 0 without an MSI-X capability.
    pub msix_vectors: u32,
    /// A PCI Express device (has the ERR interrupt).
    pub pcie: bool,
}

/// Which interrupt type delivers the device's interrupts now
/// (`vdev->irq_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum IrqMode {
    /// No interrupt type enabled.
    None,
    /// INTx enabled.
    Intx,
    /// MSI enabled with `vectors` vectors allocated.
    Msi {
        /// Vectors allocated.
        vectors: u32,
    },
    /// MSI-X enabled with `vectors` vectors allocated.
    Msix {
        /// Vectors allocated.
        vectors: u32,
    },
}

/// Counters for tools and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IrqStats {
    /// INTx events signalled to the program.
    pub intx_signalled: u64,
    /// MSI/MSI-X events signalled.
    pub msi_signalled: u64,
    /// MSI/MSI-X interrupts dropped (vector without an eventfd, or
    /// MSI not enabled).
    pub msi_dropped: u64,
}

enum ModeState {
    None,
    Intx {
        trigger: Option<Eventfd>,
        masked: bool,
        unmask: Option<EventfdWatcher>,
    },
    Msi {
        msix: bool,
        vectors: Vec<Option<Eventfd>>,
    },
}

struct State {
    mode: ModeState,
    /// The command register's INTx disable bit, as the program wrote it.
    virq_disabled: bool,
    /// The device's INTx line (its interrupt status is pending).
    line: bool,
    err: Option<Eventfd>,
    req: Option<Eventfd>,
    stats: IrqStats,
}

/// Watchers taken out of the state, dropped (joined) after the lock is
/// released.
#[derive(Default)]
struct Retired(Vec<EventfdWatcher>);

/// The interrupt side of one vfio-pci device.
pub struct VfioPciIrqs {
    caps: IrqCapabilities,
    state: Mutex<State>,
    this: Weak<VfioPciIrqs>,
}

impl std::fmt::Debug for VfioPciIrqs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioPciIrqs")
            .field("caps", &self.caps)
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

fn einval<T>() -> Result<T, i32> {
    Err(libc::EINVAL)
}

impl VfioPciIrqs {
    /// The interrupt side of a device with `caps`.
    pub fn new(caps: IrqCapabilities) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            caps,
            state: Mutex::new(State {
                mode: ModeState::None,
                virq_disabled: false,
                line: false,
                err: None,
                req: None,
                stats: IrqStats::default(),
            }),
            this: this.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the device offers.
    pub fn capabilities(&self) -> IrqCapabilities {
        self.caps
    }

    /// The interrupt count of `index` as GET_IRQ_INFO reports it.
    pub fn count(&self, index: u32) -> u32 {
        match index {
            VFIO_PCI_INTX_IRQ_INDEX => u32::from(self.caps.intx),
            VFIO_PCI_MSI_IRQ_INDEX => self.caps.msi_vectors,
            VFIO_PCI_MSIX_IRQ_INDEX => self.caps.msix_vectors,
            VFIO_PCI_ERR_IRQ_INDEX => u32::from(self.caps.pcie),
            VFIO_PCI_REQ_IRQ_INDEX => 1,
            _ => 0,
        }
    }

    /// `VFIO_DEVICE_GET_IRQ_INFO` for `index`, as vfio-pci answers it:
    /// INTx maskable and automasked, the others NORESIZE, with the counts
    /// of [`Self::count`]; no ERR index without PCI Express (EINVAL).
    pub fn irq_info(&self, index: u32) -> Option<softvfio::device::IrqInfo> {
        use vfio_bindings::bindings::vfio::{
            VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
            VFIO_IRQ_INFO_NORESIZE,
        };
        let flags = match index {
            VFIO_PCI_INTX_IRQ_INDEX => {
                VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED
            }
            VFIO_PCI_ERR_IRQ_INDEX if !self.caps.pcie => return None,
            VFIO_PCI_MSI_IRQ_INDEX
            | VFIO_PCI_MSIX_IRQ_INDEX
            | VFIO_PCI_ERR_IRQ_INDEX
            | VFIO_PCI_REQ_IRQ_INDEX => VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
            _ => return None,
        };
        Some(softvfio::device::IrqInfo {
            flags,
            count: self.count(index),
        })
    }

    /// The interrupt type enabled now.
    pub fn mode(&self) -> IrqMode {
        match &self.lock().mode {
            ModeState::None => IrqMode::None,
            ModeState::Intx { .. } => IrqMode::Intx,
            ModeState::Msi {
                msix: false,
                vectors,
            } => IrqMode::Msi {
                vectors: vectors.len() as u32,
            },
            ModeState::Msi {
                msix: true,
                vectors,
            } => IrqMode::Msix {
                vectors: vectors.len() as u32,
            },
        }
    }

    /// Is INTx enabled and currently masked?
    pub fn intx_masked(&self) -> bool {
        matches!(self.lock().mode, ModeState::Intx { masked: true, .. })
    }

    /// Counters since creation.
    pub fn stats(&self) -> IrqStats {
        self.lock().stats
    }

    // ---- the device side ----------------------------------------------------

    /// The device drives its INTx line to `level`. A rising edge runs the
    /// host handler: with INTx enabled and unmasked, mask and signal.
    pub fn set_intx_line(&self, level: bool) {
        let mut g = self.lock();
        let rising = level && !g.line;
        g.line = level;
        if rising {
            Self::intx_handler(&mut g);
        }
    }

    /// The device sends MSI (or MSI-X) vector `vector`.
    pub fn send_msi(&self, vector: u32) {
        let mut g = self.lock();
        let st = &mut *g;
        let delivered = match &st.mode {
            ModeState::Msi { vectors, .. } => match vectors.get(vector as usize) {
                Some(Some(e)) => {
                    e.signal();
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if delivered {
            st.stats.msi_signalled += 1;
        } else {
            st.stats.msi_dropped += 1;
        }
    }

    /// The program wrote the command register's INTx disable bit
    /// (`vfio_basic_config_write`): masking follows it.
    pub fn set_intx_disable(&self, disabled: bool) {
        let mut g = self.lock();
        if disabled && !g.virq_disabled {
            g.virq_disabled = true;
            Self::intx_mask(&mut g);
        } else if !disabled && g.virq_disabled {
            g.virq_disabled = false;
            Self::intx_unmask(&mut g);
        }
    }

    /// The last close of the device (`vfio_pci_core_disable`): interrupts
    /// off, every eventfd released.
    pub fn release(&self) {
        let mut retired = Retired::default();
        {
            let mut g = self.lock();
            Self::disable_mode(&mut g, &mut retired);
            g.err = None;
            g.req = None;
            g.virq_disabled = false;
        }
        drop(retired);
    }

    // ---- SET_IRQS -----------------------------------------------------------

    /// `vfio_pci_set_irqs_ioctl` after the generic checks.
    pub fn set_irqs(&self, set: IrqSet) -> Result<(), i32> {
        let mut retired = Retired::default();
        let r = {
            let mut g = self.lock();
            match (set.index, set.action) {
                (VFIO_PCI_INTX_IRQ_INDEX, IrqAction::Mask) => Self::set_intx_mask(&mut g, &set),
                (VFIO_PCI_INTX_IRQ_INDEX, IrqAction::Unmask) => {
                    self.set_intx_unmask(&mut g, set, &mut retired)
                }
                (VFIO_PCI_INTX_IRQ_INDEX, IrqAction::Trigger) => {
                    Self::set_intx_trigger(&mut g, set, &mut retired)
                }
                (VFIO_PCI_MSI_IRQ_INDEX | VFIO_PCI_MSIX_IRQ_INDEX, IrqAction::Trigger) => {
                    Self::set_msi_trigger(&mut g, set, &mut retired)
                }
                (VFIO_PCI_ERR_IRQ_INDEX, IrqAction::Trigger) if self.caps.pcie => {
                    Self::set_single_trigger(&mut g.err, set)
                }
                (VFIO_PCI_REQ_IRQ_INDEX, IrqAction::Trigger) => {
                    Self::set_single_trigger(&mut g.req, set)
                }
                // MSI masking is not exported by vfio-pci; ERR without PCIe
                // and unknown actions have no handler.
                _ => Err(libc::ENOTTY),
            }
        };
        drop(retired);
        r
    }

    fn is_intx(g: &State) -> bool {
        matches!(g.mode, ModeState::Intx { .. })
    }

    fn is_none(g: &State) -> bool {
        matches!(g.mode, ModeState::None)
    }

    /// `vfio_send_intx_eventfd`.
    fn send_intx(g: &mut State) {
        if g.virq_disabled {
            return;
        }
        if let ModeState::Intx {
            trigger: Some(e), ..
        } = &g.mode
        {
            e.signal();
            g.stats.intx_signalled += 1;
        }
    }

    /// `vfio_intx_handler` with INTx masking at the device (PCI 2.3).
    fn intx_handler(g: &mut State) {
        let line = g.line;
        if let ModeState::Intx { masked, .. } = &mut g.mode {
            if !*masked && line {
                *masked = true;
                Self::send_intx(g);
            }
        }
    }

    /// `vfio_pci_intx_mask`.
    fn intx_mask(g: &mut State) {
        if let ModeState::Intx { masked, .. } = &mut g.mode {
            *masked = true;
        }
    }

    /// `vfio_pci_intx_unmask`: unmask, or re-send when the line is still
    /// asserted (`pci_check_and_unmask_intx` refuses then).
    fn intx_unmask(g: &mut State) {
        let (line, virq_disabled) = (g.line, g.virq_disabled);
        let resend = match &mut g.mode {
            ModeState::Intx { masked, .. } if *masked && !virq_disabled => {
                if line {
                    true
                } else {
                    *masked = false;
                    false
                }
            }
            _ => false,
        };
        if resend {
            Self::send_intx(g);
        }
    }

    /// `vfio_pci_set_intx_mask`.
    fn set_intx_mask(g: &mut State, set: &IrqSet) -> Result<(), i32> {
        if !Self::is_intx(g) || set.start != 0 || set.count != 1 {
            return einval();
        }
        match &set.data {
            IrqData::None => Self::intx_mask(g),
            IrqData::Bool(b) => {
                if b.first() == Some(&true) {
                    Self::intx_mask(g);
                }
            }
            // Not implemented by vfio-pci either.
            IrqData::Eventfds(_) => return Err(libc::ENOTTY),
        }
        Ok(())
    }

    /// `vfio_pci_set_intx_unmask`.
    fn set_intx_unmask(
        &self,
        g: &mut State,
        set: IrqSet,
        retired: &mut Retired,
    ) -> Result<(), i32> {
        if !Self::is_intx(g) || set.start != 0 || set.count != 1 {
            return einval();
        }
        match set.data {
            IrqData::None => Self::intx_unmask(g),
            IrqData::Bool(b) => {
                if b.first() == Some(&true) {
                    Self::intx_unmask(g);
                }
            }
            IrqData::Eventfds(fds) => {
                let Some(arg) = fds.into_iter().next() else {
                    return einval();
                };
                if arg.is_negative() {
                    if let ModeState::Intx { unmask, .. } = &mut g.mode {
                        retired.0.extend(unmask.take());
                    }
                    return Ok(());
                }
                // vfio_virqfd_enable: the descriptor first, then EBUSY.
                let fd = arg.take()?;
                let ModeState::Intx { unmask, .. } = &mut g.mode else {
                    return einval();
                };
                if unmask.is_some() {
                    return Err(libc::EBUSY);
                }
                let weak = self.this.clone();
                let w = EventfdWatcher::spawn("vfio-intx-unmask", fd, move || {
                    if let Some(irqs) = weak.upgrade() {
                        let mut g = irqs.lock();
                        Self::intx_unmask(&mut g);
                    }
                })?;
                *unmask = Some(w);
            }
        }
        Ok(())
    }

    /// `vfio_pci_set_intx_trigger`.
    fn set_intx_trigger(g: &mut State, set: IrqSet, retired: &mut Retired) -> Result<(), i32> {
        if Self::is_intx(g) && set.count == 0 && matches!(set.data, IrqData::None) {
            Self::disable_mode(g, retired);
            return Ok(());
        }
        if !(Self::is_intx(g) || Self::is_none(g)) || set.start != 0 || set.count != 1 {
            return einval();
        }
        match set.data {
            IrqData::Eventfds(fds) => {
                let Some(arg) = fds.into_iter().next() else {
                    return einval();
                };
                if Self::is_intx(g) {
                    return Self::intx_set_signal(g, arg);
                }
                // vfio_intx_enable: masked starts as the INTx disable bit.
                g.mode = ModeState::Intx {
                    trigger: None,
                    masked: g.virq_disabled,
                    unmask: None,
                };
                let r = Self::intx_set_signal(g, arg);
                if r.is_err() {
                    Self::disable_mode(g, retired);
                }
                r
            }
            _ if !Self::is_intx(g) => einval(),
            IrqData::None => {
                Self::send_intx(g);
                Ok(())
            }
            IrqData::Bool(b) => {
                if b.first() == Some(&true) {
                    Self::send_intx(g);
                }
                Ok(())
            }
        }
    }

    /// `vfio_intx_set_signal`: replaces the trigger; a negative number only
    /// removes it. A line already asserted when the trigger is installed
    /// does not fire until its next rising edge (measured on Linux 6.1:
    /// `intx_enable_while_asserted_events` is 0, also after a reopen).
    fn intx_set_signal(g: &mut State, arg: EventfdArg) -> Result<(), i32> {
        if let ModeState::Intx { trigger, .. } = &mut g.mode {
            *trigger = None;
        }
        if arg.is_negative() {
            return Ok(());
        }
        let fd = arg.take()?;
        if let ModeState::Intx { trigger, .. } = &mut g.mode {
            *trigger = Some(fd);
        }
        Ok(())
    }

    /// `vfio_pci_set_msi_trigger`.
    fn set_msi_trigger(g: &mut State, set: IrqSet, retired: &mut Retired) -> Result<(), i32> {
        let msix = set.index == VFIO_PCI_MSIX_IRQ_INDEX;
        let is_this = matches!(&g.mode, ModeState::Msi { msix: m, .. } if *m == msix);
        if is_this && set.count == 0 && matches!(set.data, IrqData::None) {
            Self::disable_mode(g, retired);
            return Ok(());
        }
        if !(is_this || Self::is_none(g)) {
            return einval();
        }
        let (start, count) = (set.start as usize, set.count as usize);
        match set.data {
            IrqData::Eventfds(fds) => {
                if is_this {
                    return Self::msi_set_block(g, start, fds);
                }
                // vfio_msi_enable with start + count vectors: asking the
                // PCI core for at least 1 and at most 0 is ERANGE.
                if start + count == 0 {
                    return Err(libc::ERANGE);
                }
                g.mode = ModeState::Msi {
                    msix,
                    vectors: (0..start + count).map(|_| None).collect(),
                };
                let r = Self::msi_set_block(g, start, fds);
                if r.is_err() {
                    Self::disable_mode(g, retired);
                }
                r
            }
            data => {
                let ModeState::Msi { vectors, .. } = &g.mode else {
                    return einval();
                };
                if !is_this || start + count > vectors.len() {
                    return einval();
                }
                let mut n = 0;
                for (i, v) in vectors.iter().enumerate().skip(start).take(count) {
                    let Some(e) = v else { continue };
                    let fire = match &data {
                        IrqData::Bool(b) => b.get(i - start) == Some(&true),
                        _ => true,
                    };
                    if fire {
                        e.signal();
                        n += 1;
                    }
                }
                g.stats.msi_signalled += n;
                Ok(())
            }
        }
    }

    /// `vfio_msi_set_block`: all or nothing.
    fn msi_set_block(g: &mut State, start: usize, fds: Vec<EventfdArg>) -> Result<(), i32> {
        let ModeState::Msi { vectors, .. } = &mut g.mode else {
            return einval();
        };
        if start >= vectors.len() || start + fds.len() > vectors.len() {
            return einval();
        }
        for (i, arg) in fds.into_iter().enumerate() {
            let j = start + i;
            vectors[j] = None;
            if arg.is_negative() {
                continue;
            }
            match arg.take() {
                Ok(e) => vectors[j] = Some(e),
                Err(e) => {
                    for v in &mut vectors[start..j] {
                        *v = None;
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// `vfio_pci_set_ctx_trigger_single` (ERR and REQ).
    fn set_single_trigger(slot: &mut Option<Eventfd>, set: IrqSet) -> Result<(), i32> {
        if set.start != 0 || set.count > 1 {
            return einval();
        }
        match set.data {
            IrqData::None => match slot {
                Some(e) => {
                    if set.count > 0 {
                        e.signal();
                    } else {
                        *slot = None;
                    }
                    Ok(())
                }
                None => einval(),
            },
            IrqData::Bool(b) => {
                if set.count == 0 {
                    return einval();
                }
                if let (Some(true), Some(e)) = (b.first(), slot.as_ref()) {
                    e.signal();
                }
                Ok(())
            }
            IrqData::Eventfds(fds) => {
                let Some(arg) = fds.into_iter().next() else {
                    return einval();
                };
                match arg {
                    EventfdArg::Negative(-1) => *slot = None,
                    EventfdArg::Negative(_) => {}
                    other => *slot = Some(other.take()?),
                }
                Ok(())
            }
        }
    }

    /// `vfio_intx_disable` / `vfio_msi_disable`.
    fn disable_mode(g: &mut State, retired: &mut Retired) {
        if let ModeState::Intx { unmask, .. } = &mut g.mode {
            retired.0.extend(unmask.take());
        }
        g.mode = ModeState::None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> IrqCapabilities {
        IrqCapabilities {
            intx: true,
            msi_vectors: 1,
            msix_vectors: 0,
            pcie: false,
        }
    }

    fn efd() -> (Eventfd, EventfdArg) {
        let e = Eventfd::new().unwrap();
        let dup = EventfdArg::Fd(e.try_clone().unwrap());
        (e, dup)
    }

    fn set(index: u32, action: IrqAction, start: u32, count: u32, data: IrqData) -> IrqSet {
        IrqSet {
            index,
            start,
            count,
            action,
            data,
        }
    }

    fn intx_on(irqs: &VfioPciIrqs) -> Eventfd {
        let (e, a) = efd();
        irqs.set_irqs(set(
            VFIO_PCI_INTX_IRQ_INDEX,
            IrqAction::Trigger,
            0,
            1,
            IrqData::Eventfds(vec![a]),
        ))
        .unwrap();
        e
    }

    #[test]
    fn intx_automasks_and_resends_on_unmask_while_asserted() {
        let irqs = VfioPciIrqs::new(caps());
        let e = intx_on(&irqs);
        irqs.set_intx_line(true);
        assert_eq!(e.consume(), Some(1));
        assert!(irqs.intx_masked());
        // Still asserted: unmask re-sends and stays masked.
        let unmask = || {
            irqs.set_irqs(set(
                VFIO_PCI_INTX_IRQ_INDEX,
                IrqAction::Unmask,
                0,
                1,
                IrqData::None,
            ))
        };
        unmask().unwrap();
        assert_eq!(e.consume(), Some(1));
        assert!(irqs.intx_masked());
        // Acknowledged: unmask unmasks, nothing sent.
        irqs.set_intx_line(false);
        unmask().unwrap();
        assert_eq!(e.consume(), None);
        assert!(!irqs.intx_masked());
        // A new edge fires again.
        irqs.set_intx_line(true);
        assert_eq!(e.consume(), Some(1));
    }

    #[test]
    fn intx_disable_bit_masks_and_unmask_follows() {
        let irqs = VfioPciIrqs::new(caps());
        let e = intx_on(&irqs);
        irqs.set_intx_disable(true);
        irqs.set_intx_line(true);
        assert_eq!(e.consume(), None);
        irqs.set_intx_disable(false);
        assert_eq!(e.consume(), Some(1));
    }

    #[test]
    fn msi_and_intx_exclusive_and_disable() {
        let irqs = VfioPciIrqs::new(caps());
        let _e = intx_on(&irqs);
        let (_m, a) = efd();
        let r = irqs.set_irqs(set(
            VFIO_PCI_MSI_IRQ_INDEX,
            IrqAction::Trigger,
            0,
            1,
            IrqData::Eventfds(vec![a]),
        ));
        assert_eq!(r, Err(libc::EINVAL));
        irqs.set_irqs(set(
            VFIO_PCI_INTX_IRQ_INDEX,
            IrqAction::Trigger,
            0,
            0,
            IrqData::None,
        ))
        .unwrap();
        assert_eq!(irqs.mode(), IrqMode::None);
        let (m, a) = efd();
        irqs.set_irqs(set(
            VFIO_PCI_MSI_IRQ_INDEX,
            IrqAction::Trigger,
            0,
            1,
            IrqData::Eventfds(vec![a]),
        ))
        .unwrap();
        assert_eq!(irqs.mode(), IrqMode::Msi { vectors: 1 });
        irqs.send_msi(0);
        assert_eq!(m.consume(), Some(1));
        // Loopback trigger.
        irqs.set_irqs(set(
            VFIO_PCI_MSI_IRQ_INDEX,
            IrqAction::Trigger,
            0,
            1,
            IrqData::Bool(vec![true]),
        ))
        .unwrap();
        assert_eq!(m.consume(), Some(1));
        // MSI mask has no handler.
        let r = irqs.set_irqs(set(
            VFIO_PCI_MSI_IRQ_INDEX,
            IrqAction::Mask,
            0,
            1,
            IrqData::None,
        ));
        assert_eq!(r, Err(libc::ENOTTY));
    }

    #[test]
    fn bad_eventfd_leaves_nothing_enabled() {
        let irqs = VfioPciIrqs::new(caps());
        let r = irqs.set_irqs(set(
            VFIO_PCI_MSI_IRQ_INDEX,
            IrqAction::Trigger,
            0,
            1,
            IrqData::Eventfds(vec![EventfdArg::Error(libc::EBADF)]),
        ));
        assert_eq!(r, Err(libc::EBADF));
        assert_eq!(irqs.mode(), IrqMode::None);
        // INTx with -1 enables without a trigger, as vfio-pci does.
        irqs.set_irqs(set(
            VFIO_PCI_INTX_IRQ_INDEX,
            IrqAction::Trigger,
            0,
            1,
            IrqData::Eventfds(vec![EventfdArg::Negative(-1)]),
        ))
        .unwrap();
        assert_eq!(irqs.mode(), IrqMode::Intx);
    }

    #[test]
    fn unmask_eventfd_unmasks_from_its_thread() {
        let irqs = VfioPciIrqs::new(caps());
        let e = intx_on(&irqs);
        let (u, a) = efd();
        irqs.set_irqs(set(
            VFIO_PCI_INTX_IRQ_INDEX,
            IrqAction::Unmask,
            0,
            1,
            IrqData::Eventfds(vec![a]),
        ))
        .unwrap();
        irqs.set_intx_line(true);
        assert_eq!(e.consume(), Some(1));
        irqs.set_intx_line(false);
        u.signal();
        let t = std::time::Instant::now();
        while irqs.intx_masked() && t.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!irqs.intx_masked());
        irqs.release();
        assert_eq!(irqs.mode(), IrqMode::None);
    }

    #[test]
    fn req_trigger_single() {
        let irqs = VfioPciIrqs::new(caps());
        let none = |count| {
            set(
                VFIO_PCI_REQ_IRQ_INDEX,
                IrqAction::Trigger,
                0,
                count,
                IrqData::None,
            )
        };
        assert_eq!(irqs.set_irqs(none(1)), Err(libc::EINVAL));
        let (r, a) = efd();
        irqs.set_irqs(set(
            VFIO_PCI_REQ_IRQ_INDEX,
            IrqAction::Trigger,
            0,
            1,
            IrqData::Eventfds(vec![a]),
        ))
        .unwrap();
        irqs.set_irqs(none(1)).unwrap();
        assert_eq!(r.consume(), Some(1));
        irqs.set_irqs(none(0)).unwrap();
        assert_eq!(irqs.set_irqs(none(1)), Err(libc::EINVAL));
    }
}
