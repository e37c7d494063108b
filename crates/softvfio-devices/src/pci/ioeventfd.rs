//! `VFIO_DEVICE_IOEVENTFD` (`vfio_pci_ioeventfd` of Linux 6.1): when the
//! program signals an eventfd, a fixed value is written to a BAR offset
//! with a fixed width, without a system call on the device file.
//!
//! Invariants: at most [`IOEVENTFD_MAX`] registrations; no two with the
//! same (region, offset, data, size); each owns the watcher thread that
//! performs its write, and removing it joins that thread (outside the
//! registry lock, since the write may reach the device model, which may
//! take its own locks).

use std::sync::Mutex;

use softvfio::device::IoeventfdRequest;
use softvfio::eventfd::EventfdWatcher;

/// `VFIO_PCI_IOEVENTFD_MAX`.
pub const IOEVENTFD_MAX: usize = 1000;

struct Registration {
    region: u32,
    offset: u64,
    data: u64,
    size: u32,
    _watcher: EventfdWatcher,
}

/// A device's ioeventfds.
#[derive(Default)]
pub struct Ioeventfds {
    list: Mutex<Vec<Registration>>,
}

impl std::fmt::Debug for Ioeventfds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ioeventfds")
            .field("count", &self.len())
            .finish()
    }
}

impl Ioeventfds {
    pub fn len(&self) -> usize {
        self.list.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

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
            if bar == region && !(end <= start || offset >= start + len) {
                return Err(libc::EINVAL);
            }
        }
        let removed;
        {
            let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
            let same = list.iter().position(|r| {
                r.region == region && r.offset == offset && r.data == data && r.size == size
            });
            match same {
                Some(i) if fd.is_negative() => removed = list.swap_remove(i),
                Some(_) => return Err(libc::EEXIST),
                None if fd.is_negative() => return Err(libc::ENODEV),
                None if list.len() >= IOEVENTFD_MAX => return Err(libc::ENOSPC),
                None => {
                    let efd = fd.take()?;
                    let bytes = data.to_le_bytes();
                    let n = size as usize;
                    let watcher = EventfdWatcher::spawn("vfio-ioeventfd", efd, move || {
                        if let Some(dev) = device.upgrade() {
                            // vfio-pci's handler writes and ignores the
                            // outcome (memory decoding off: no write).
                            let _ = dev.region_write(region, offset, &bytes[..n]);
                        }
                    })?;
                    list.push(Registration {
                        region,
                        offset,
                        data,
                        size,
                        _watcher: watcher,
                    });
                    return Ok(());
                }
            }
        }
        drop(removed);
        Ok(())
    }

    /// Drops every registration (the device's last close).
    pub fn clear(&self) {
        let all = std::mem::take(&mut *self.list.lock().unwrap_or_else(|e| e.into_inner()));
        drop(all);
    }
}
