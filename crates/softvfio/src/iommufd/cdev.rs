//! The VFIO device cdev (`/dev/vfio/devices/vfioN`): a device file that is
//! useless until bound to an iommufd (`VFIO_DEVICE_BIND_IOMMUFD`), then
//! attached to an IOAS or HWPT; the device uAPI behind it is the one a
//! group's device fd serves.
//!
//! # Invariants
//!
//! - a cdev is bound at most once, for its lifetime; while bound the device
//!   is an object of that iommufd and its group cannot be opened (and a
//!   device whose group is open cannot be bound: EBUSY both ways, Linux's
//!   `vfio_device_block_group`);
//! - before the bind every ioctl but the bind answers EINVAL;
//! - the last close detaches the device and unbinds it.

use std::sync::{Arc, Mutex};

use super::Iommufd;
use crate::error::{Result, VfioError};
use crate::memory::UserMemory;
use crate::platform::{Device, Group, Platform};
use crate::uapi::{vfio_io, DeviceFile, Vfio, Wire};

/// `VFIO_DEVICE_BIND_IOMMUFD`.
pub const VFIO_DEVICE_BIND_IOMMUFD: u64 = vfio_io(18);
/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`.
pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: u64 = vfio_io(19);
/// `VFIO_DEVICE_DETACH_IOMMUFD_PT`.
pub const VFIO_DEVICE_DETACH_IOMMUFD_PT: u64 = vfio_io(20);

/// An open `/dev/vfio/devices/vfioN`.
pub struct CdevFile {
    /// The device's group.
    pub group: Arc<Group>,
    /// The device.
    pub device: Arc<Device>,
    bound: Mutex<Option<(Arc<Iommufd>, u32)>>,
}

/// What the descriptor passed to `VFIO_DEVICE_BIND_IOMMUFD` refers to.
pub enum IommufdLookup {
    /// Not an open descriptor.
    NotOpen,
    /// Open, but not `/dev/iommu`.
    NotIommufd,
    /// An open `/dev/iommu`.
    Iommufd(Arc<Iommufd>),
}

impl CdevFile {
    /// The iommufd and device id it is bound to.
    pub fn bound(&self) -> Option<(Arc<Iommufd>, u32)> {
        self.bound.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn device_file(&self) -> DeviceFile {
        DeviceFile {
            group: self.group.clone(),
            device: self.device.clone(),
        }
    }
}

/// The devices in cdev order (`vfioN` is the N-th): the platform's
/// `cdev_order` when it gives one, else by group, then within the group.
pub fn cdev_devices(platform: &Platform) -> Vec<(Arc<Group>, Arc<Device>)> {
    if !platform.cdev_order.is_empty() {
        return platform
            .cdev_order
            .iter()
            .filter_map(|(g, name)| {
                let group = platform.group(*g)?;
                Some((group.clone(), group.device(name)?.clone()))
            })
            .collect();
    }
    platform
        .groups
        .values()
        .flat_map(|g| g.devices.iter().map(move |d| (g.clone(), d.clone())))
        .collect()
}

impl Vfio {
    /// `open("/dev/vfio/devices/vfioN")`: ENOENT for no such device.
    pub fn open_cdev(&self, index: u32) -> Result<CdevFile> {
        let (group, device) = cdev_devices(self.platform())
            .into_iter()
            .nth(index as usize)
            .ok_or(VfioError::NoEntry)?;
        Ok(CdevFile {
            group,
            device,
            bound: Mutex::new(None),
        })
    }

    /// Last close of a cdev.
    pub fn release_cdev(&self, file: &CdevFile) {
        let bound = file.bound.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((ctx, id)) = bound {
            // Linux: close_device (the device drops its pins), then unbind.
            self.cdev_close_device(&file.group, &file.device);
            file.device.model.attach_iommufd_access(None);
            ctx.unbind(id);
        }
    }

    /// An ioctl on a cdev. `iommufd` resolves the descriptor of a bind;
    /// `eventfds` as for [`Vfio::device_ioctl`].
    pub fn cdev_ioctl(
        &self,
        file: &CdevFile,
        request: u64,
        arg: u64,
        user: &dyn UserMemory,
        iommufd: &mut dyn FnMut(i32) -> IommufdLookup,
        eventfds: &mut dyn FnMut(i32) -> crate::eventfd::EventfdArg,
    ) -> Result<i64> {
        if request == VFIO_DEVICE_BIND_IOMMUFD {
            return self.cdev_bind(file, arg, user, iommufd);
        }
        let Some((ctx, dev_id)) = file.bound() else {
            return Err(VfioError::Invalid("device not bound to an iommufd"));
        };
        match request {
            VFIO_DEVICE_ATTACH_IOMMUFD_PT => {
                let mut w = Wire::read(user, arg, 12)?;
                if w.u32_at(0) < 12 || w.u32_at(4) != 0 {
                    return Err(VfioError::Invalid("bad argsz or flags"));
                }
                let pt = ctx.attach(dev_id, w.u32_at(8))?;
                w.put_u32(8, pt);
                if let Err(e) = w.write_back(user, arg, 12) {
                    ctx.detach(dev_id);
                    return Err(e);
                }
                Ok(0)
            }
            VFIO_DEVICE_DETACH_IOMMUFD_PT => {
                let w = Wire::read(user, arg, 8)?;
                if w.u32_at(0) < 8 || w.u32_at(4) != 0 {
                    return Err(VfioError::Invalid("bad argsz or flags"));
                }
                ctx.detach(dev_id);
                Ok(0)
            }
            _ => self.device_ioctl(&file.device_file(), request, arg, user, eventfds),
        }
    }

    fn cdev_bind(
        &self,
        file: &CdevFile,
        arg: u64,
        user: &dyn UserMemory,
        iommufd: &mut dyn FnMut(i32) -> IommufdLookup,
    ) -> Result<i64> {
        let w = Wire::read(user, arg, 16)?;
        let fd = w.u32_at(8) as i32;
        if w.u32_at(0) < 16 || w.u32_at(4) != 0 || fd < 0 {
            return Err(VfioError::Invalid("bad argsz, flags or fd"));
        }
        let mut bound = file.bound.lock().unwrap_or_else(|p| p.into_inner());
        self.cdev_open_device(&file.group, &file.device)?;
        let ctx = if bound.is_some() {
            Err(VfioError::Invalid("already bound"))
        } else {
            match iommufd(fd) {
                IommufdLookup::NotOpen => Err(VfioError::BadFd),
                IommufdLookup::NotIommufd => Err(VfioError::Errno(libc::EBADFD)),
                IommufdLookup::Iommufd(c) => Ok(c),
            }
        };
        let ctx = match ctx {
            Ok(c) => c,
            Err(e) => {
                self.cdev_close_device(&file.group, &file.device);
                return Err(e);
            }
        };
        let id = ctx.bind(&file.group, &file.device);
        if let Err(e) = user.write(arg + 12, &id.to_ne_bytes()) {
            ctx.unbind(id);
            self.cdev_close_device(&file.group, &file.device);
            let _ = e;
            return Err(VfioError::Fault);
        }
        if ctx.is_access(id) {
            file.device
                .model
                .attach_iommufd_access(Some(super::IommufdAccess::new(&ctx, id)));
        }
        *bound = Some((ctx, id));
        Ok(0)
    }
}
