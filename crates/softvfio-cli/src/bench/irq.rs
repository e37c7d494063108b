//! irq-intx, irq-msi: one interrupt from edu to the program's eventfd
//! through the vfio-pci core, the way a driver's interrupt loop does it
//! (raise, wait for the eventfd, acknowledge; INTx also unmasks), against
//! the floor of the same system calls on a bare eventfd (signal, read).
//!
//! The register writes go to the device model directly, as the front ends
//! deliver them after a `pwrite`; the cost of reaching the model from a
//! program (a trapped `pwrite` in trace mode) is the front end's, measured
//! separately.

use softvfio::device::{IrqAction, IrqData, IrqSet, VfioDeviceModel};
use softvfio::eventfd::{Eventfd, EventfdArg};
use softvfio_devices::EduDevice;
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX,
};

use super::stats::{interleave, median, ns_per_op, spread};
use super::{Better, Ctx, Outcome, PlotData, Row};

const RAISE: u64 = 0x60;
const ACK: u64 = 0x64;

fn enable(dev: &EduDevice, index: u32, efd: &Eventfd) -> Result<(), String> {
    let arg = EventfdArg::Fd(efd.try_clone().map_err(|e| format!("dup: errno {e}"))?);
    dev.set_irqs(IrqSet {
        index,
        start: 0,
        count: 1,
        action: IrqAction::Trigger,
        data: IrqData::Eventfds(vec![arg]),
    })
    .map_err(|e| format!("SET_IRQS: errno {e}"))
}

fn write32(dev: &EduDevice, off: u64, v: u32) {
    let _ = dev.region_write(VFIO_PCI_BAR0_REGION_INDEX, off, &v.to_le_bytes());
}

fn bench(ctx: &Ctx, msi: bool) -> Result<Row, String> {
    let dev = EduDevice::new("0000:00:03.0");
    dev.open_device();
    // Memory decoding and bus master on (MSI is a DMA write).
    let _ = dev.region_write(VFIO_PCI_CONFIG_REGION_INDEX, 4, &0x7u16.to_le_bytes());
    let efd = Eventfd::new().map_err(|e| format!("eventfd: errno {e}"))?;
    let index = if msi {
        VFIO_PCI_MSI_IRQ_INDEX
    } else {
        VFIO_PCI_INTX_IRQ_INDEX
    };
    enable(&dev, index, &efd)?;
    let floor = Eventfd::new().map_err(|e| format!("eventfd: errno {e}"))?;
    let mut lost = 0u64;
    let (base, subj) = interleave(
        ctx.reps.max(3),
        || {
            Ok(ns_per_op(ctx.budget, || {
                floor.signal();
                let _ = floor.consume();
            }))
        },
        || {
            Ok(ns_per_op(ctx.budget, || {
                write32(&dev, RAISE, 1);
                if efd.consume().is_none() {
                    lost += 1;
                }
                write32(&dev, ACK, 1);
                if !msi {
                    let _ = dev.set_irqs(IrqSet {
                        index,
                        start: 0,
                        count: 1,
                        action: IrqAction::Unmask,
                        data: IrqData::None,
                    });
                }
            }))
        },
    )?;
    dev.close_device();
    if lost > 0 {
        return Err(format!("{lost} interrupts were not delivered"));
    }
    let name = if msi { "irq-msi" } else { "irq-intx" };
    let steps = if msi {
        "raise, eventfd read, ack"
    } else {
        "raise, eventfd read, ack, unmask"
    };
    Ok(Row {
        bench: name.to_string(),
        value: median(&subj),
        unit: "ns",
        baseline: "eventfd write + read (the same system calls)".to_string(),
        baseline_value: median(&base),
        better: Better::Lower,
        note: format!(
            "{steps}; subject {}; baseline {}",
            spread(&subj, 1.0, "ns"),
            spread(&base, 1.0, "ns")
        ),
    })
}

pub fn intx(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    Ok(Outcome::Rows(vec![bench(ctx, false)?]))
}

pub fn msi(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    Ok(Outcome::Rows(vec![bench(ctx, true)?]))
}
