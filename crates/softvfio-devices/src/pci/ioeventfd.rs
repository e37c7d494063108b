//! `VFIO_DEVICE_IOEVENTFD` (`vfio_pci_ioeventfd` of Linux 6.1): when the
//! program signals an eventfd, a fixed value is written to a BAR offset
//! with a fixed width, without a system call on the device file.
//!
//! Invariants: at most [`IOEVENTFD_MAX`] registrations; no two with the
//! same (region, offset, data, size); registrations on one eventfd share
//! one watcher (a signal runs all of them, as the kernel's wait queue wakes
//! every virqfd on the eventfd), which exists exactly while it has at least
//! one registration. Dropping a watcher joins its thread, always outside
//! the registry lock, since the writes it performs reach the device model.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use softvfio::device::{IoeventfdRequest, VfioDeviceModel};
use softvfio::eventfd::EventfdWatcher;

/// `VFIO_PCI_IOEVENTFD_MAX`.
pub const IOEVENTFD_MAX: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Write {
    region: u32,
    offset: u64,
    data: u64,
    size: u32,
}

impl Write {
    fn perform(&self, device: &dyn VfioDeviceModel) {
        let bytes = self.data.to_le_bytes();
        let n = (self.size as usize).min(8);
        // vfio-pci's handler ignores the outcome (memory decoding off:
        // nothing is written).
        let _ = device.region_write(self.region, self.offset, &bytes[..n]);
    }
}

/// One watched eventfd and the writes its signal performs.
struct Watch {
    /// The eventfd's kernel identity; `None` (kernels before 6.2) makes
    /// every registration its own watch.
    id: Option<u64>,
    writes: Arc<Mutex<Vec<Write>>>,
    _watcher: EventfdWatcher,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A device's ioeventfds.
#[derive(Default)]
pub struct Ioeventfds {
    watches: Mutex<Vec<Watch>>,
}

impl std::fmt::Debug for Ioeventfds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ioeventfds")
            .field("count", &self.len())
            .finish()
    }
}

impl Ioeventfds {
    /// Registrations in force.
    pub fn len(&self) -> usize {
        lock(&self.watches)
            .iter()
            .map(|w| lock(&w.writes).len())
            .sum()
    }

    /// No registration?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or (fd -1) removes a registration. `bar_len` is the size of the
    /// BAR the request names (0 for a BAR the device lacks); `msix` the
    /// MSI-X table's (region, offset, length), which no ioeventfd may
    /// overlap. The request's `device` receives the writes.
    pub fn request(
        &self,
        req: IoeventfdRequest,
        bar_len: u64,
        msix: Option<(u32, u64, u64)>,
    ) -> Result<(), i32> {
        let IoeventfdRequest {
            region,
            offset,
            data,
            size,
            fd,
            device,
        } = req;
        let end = offset.checked_add(u64::from(size)).ok_or(libc::EINVAL)?;
        if end > bar_len {
            return Err(libc::EINVAL);
        }
        if let Some((bar, start, len)) = msix {
            if bar == region && !(end <= start || offset >= start.saturating_add(len)) {
                return Err(libc::EINVAL);
            }
        }
        let write = Write {
            region,
            offset,
            data,
            size,
        };
        let mut retired = None;
        {
            let mut watches = lock(&self.watches);
            let found = watches
                .iter()
                .position(|w| lock(&w.writes).contains(&write));
            match found {
                Some(i) if fd.is_negative() => {
                    let empty = {
                        let mut writes = lock(&watches[i].writes);
                        writes.retain(|w| *w != write);
                        writes.is_empty()
                    };
                    if empty {
                        retired = Some(watches.swap_remove(i));
                    }
                }
                Some(_) => return Err(libc::EEXIST),
                None if fd.is_negative() => return Err(libc::ENODEV),
                None => {
                    let total: usize = watches.iter().map(|w| lock(&w.writes).len()).sum();
                    if total >= IOEVENTFD_MAX {
                        return Err(libc::ENOSPC);
                    }
                    let efd = fd.take()?;
                    let id = efd.id();
                    if let Some(w) = watches.iter().find(|w| id.is_some() && w.id == id) {
                        lock(&w.writes).push(write);
                        return Ok(());
                    }
                    let writes = Arc::new(Mutex::new(vec![write]));
                    let shared = writes.clone();
                    let device: Weak<dyn VfioDeviceModel> = device;
                    let watcher = EventfdWatcher::spawn("vfio-ioeventfd", efd, move || {
                        let Some(dev) = device.upgrade() else { return };
                        let list = lock(&shared).clone();
                        for w in &list {
                            w.perform(dev.as_ref());
                        }
                    })?;
                    watches.push(Watch {
                        id,
                        writes,
                        _watcher: watcher,
                    });
                }
            }
        }
        drop(retired);
        Ok(())
    }

    /// Drops every registration (the device's last close).
    pub fn clear(&self) {
        let all = std::mem::take(&mut *lock(&self.watches));
        drop(all);
    }
}
