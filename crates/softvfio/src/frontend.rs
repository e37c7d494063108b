//! What every VFIO front end does between a file descriptor and the uAPI:
//! claim `/dev/vfio/*` opens, keep the open files, route ioctls and
//! `pread`/`pwrite` to the container, group or device behind a descriptor,
//! and release them on last close.
//!
//! Front ends (the ptrace supervisor of `softvfio run`, the LD_PRELOAD
//! library) own the descriptors; a [`Session`] owns what they refer to,
//! named by an [`ObjectKey`].

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::error::{Result, VfioError};
use crate::eventfd::{Eventfd, EventfdArg};
use crate::iommufd::cdev::{CdevFile, IommufdLookup};
use crate::iommufd::{FaultFile, Iommufd};
use crate::memory::UserMemory;
use crate::uapi::{ContainerFile, DeviceFile, FdLookup, GroupFile, IoctlOutcome, Vfio};
use crate::Container;

/// The name of an open VFIO file within a session.
pub type ObjectKey = u64;

/// An open VFIO file.
pub enum FileObject {
    /// `/dev/vfio/vfio`.
    Container(ContainerFile),
    /// `/dev/vfio/<group>`.
    Group(GroupFile),
    /// A device fd from `VFIO_GROUP_GET_DEVICE_FD`.
    Device(DeviceFile),
    /// `/dev/iommu`.
    Iommufd(Arc<Iommufd>),
    /// `/dev/vfio/devices/vfioN`.
    Cdev(Arc<CdevFile>),
    /// A fault queue's descriptor (`IOMMU_FAULT_QUEUE_ALLOC`): its `read`
    /// and `write` are served ([`Session::stream_rw`]).
    Fault(FaultFile),
}

/// What a descriptor passed as an ioctl argument refers to.
pub enum FdTarget {
    /// Not an open descriptor.
    NotOpen,
    /// An open descriptor that is not one of this session's files.
    Foreign,
    /// One of this session's files.
    Object(ObjectKey),
}

/// The program's descriptor table, as a front end sees it.
pub trait ProgramFds {
    /// What descriptor `fd` refers to.
    fn target(&mut self, fd: i32) -> FdTarget;
    /// A descriptor owned by the engine for the same open file as program
    /// descriptor `fd` (an eventfd handed over by `VFIO_DEVICE_SET_IRQS`):
    /// the kernel keeps a reference to the file, so must we. An errno when
    /// `fd` is not open (EBADF) or cannot be duplicated.
    fn duplicate(&mut self, fd: i32) -> std::result::Result<OwnedFd, i32>;
}

/// The result of an ioctl routed by a session.
pub enum Routed {
    /// The system call's return value.
    Value(i64),
    /// A new file (a device fd) the front end must give a descriptor; if it
    /// cannot, it calls [`Session::release`] on the key.
    NewObject(ObjectKey),
    /// A new file whose descriptor the reply carries: the front end gives
    /// it a close-on-exec descriptor, writes the number (`u32`) at program
    /// address `fd_at`, and the call returns 0. If it cannot, it calls
    /// [`Session::abort`] on the key.
    NewFileAt {
        /// The new file.
        key: ObjectKey,
        /// Where its descriptor's number goes.
        fd_at: u64,
    },
}

/// The open VFIO files of one front end.
pub struct Session {
    vfio: Arc<Vfio>,
    objects: HashMap<ObjectKey, FileObject>,
    next: ObjectKey,
}

impl Session {
    /// A session over the platform behind `vfio`, with no file open.
    pub fn new(vfio: Arc<Vfio>) -> Self {
        Self {
            vfio,
            objects: HashMap::new(),
            next: 1,
        }
    }

    /// The VFIO subsystem this session serves.
    pub fn vfio(&self) -> &Arc<Vfio> {
        &self.vfio
    }

    fn insert(&mut self, obj: FileObject) -> ObjectKey {
        let key = self.next;
        self.next += 1;
        self.objects.insert(key, obj);
        key
    }

    /// An `open` of `path`: `None` when the path is not VFIO's. A new
    /// container pins the memory `mem` returns (the opener's).
    pub fn open(
        &mut self,
        path: &str,
        mem: impl FnOnce() -> Arc<dyn UserMemory>,
    ) -> Option<Result<ObjectKey>> {
        if path == "/dev/iommu" {
            let ctx = Iommufd::new(mem());
            if let Some(s) = self.vfio.sanitizer() {
                ctx.set_sanitizer(s.clone());
            }
            let key = self.insert(FileObject::Iommufd(ctx));
            if let Some(s) = self.vfio.sanitizer() {
                s.note_object(key, "iommufd".into());
            }
            return Some(Ok(key));
        }
        if let Some(n) = path.strip_prefix("/dev/vfio/devices/vfio") {
            let Ok(index) = n.parse::<u32>() else {
                return Some(Err(VfioError::NoEntry));
            };
            return Some(self.vfio.open_cdev(index).map(|c| {
                let name = format!("device {} ({path})", c.device.name);
                let key = self.insert(FileObject::Cdev(Arc::new(c)));
                if let Some(s) = self.vfio.sanitizer() {
                    s.note_object(key, name);
                }
                key
            }));
        }
        if path == "/dev/vfio/vfio" {
            let file = self.vfio.open_container(mem());
            let key = self.insert(FileObject::Container(file));
            if let Some(s) = self.vfio.sanitizer() {
                s.note_object(key, "container".into());
            }
            return Some(Ok(key));
        }
        let name = path.strip_prefix("/dev/vfio/")?;
        let Ok(id) = name.parse::<u32>() else {
            return Some(Err(VfioError::NoEntry));
        };
        Some(self.vfio.open_group(id).map(|g| {
            let key = self.insert(FileObject::Group(g));
            if let Some(s) = self.vfio.sanitizer() {
                s.note_object(key, format!("group {id} ({path})"));
            }
            key
        }))
    }

    /// The container behind a key, if it is one.
    pub fn container(&self, key: ObjectKey) -> Option<&Arc<Container>> {
        match self.objects.get(&key) {
            Some(FileObject::Container(c)) => Some(&c.container),
            _ => None,
        }
    }

    /// Is `key` an open file of this session?
    pub fn contains(&self, key: ObjectKey) -> bool {
        self.objects.contains_key(&key)
    }

    /// Open files.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// No open file?
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// iommufd contexts (`/dev/iommu` files) of this session.
    pub fn iommufds(&self) -> Vec<Arc<Iommufd>> {
        self.objects
            .values()
            .filter_map(|o| match o {
                FileObject::Iommufd(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    /// Containers of this session.
    pub fn containers(&self) -> Vec<Arc<Container>> {
        self.objects
            .values()
            .filter_map(|o| match o {
                FileObject::Container(c) => Some(c.container.clone()),
                _ => None,
            })
            .collect()
    }

    /// An ioctl on the file `key`. `fds` says what a descriptor number in
    /// the argument refers to (`VFIO_GROUP_SET_CONTAINER`, eventfds).
    pub fn ioctl(
        &mut self,
        key: ObjectKey,
        request: u64,
        arg: u64,
        user: &dyn UserMemory,
        fds: &mut dyn ProgramFds,
    ) -> Result<Routed> {
        let vfio = self.vfio.clone();
        match self.objects.get(&key) {
            Some(FileObject::Container(c)) => vfio
                .container_ioctl(c, request, arg, user)
                .map(Routed::Value),
            Some(FileObject::Device(d)) => {
                let mut eventfds = |fd: i32| resolve_eventfd(fds, fd);
                let v = vfio.device_ioctl(d, request, arg, user, &mut eventfds)?;
                if let Some(s) = vfio.sanitizer() {
                    s.note_device_ioctl(key, request, arg, user);
                }
                Ok(Routed::Value(v))
            }
            Some(FileObject::Iommufd(ctx))
                if request == crate::iommufd::abi::IOMMU_FAULT_QUEUE_ALLOC =>
            {
                let (file, fd_at) = crate::iommufd::abi::fault_queue_alloc(ctx, arg, user)?;
                let key = self.insert(FileObject::Fault(file));
                Ok(Routed::NewFileAt { key, fd_at })
            }
            Some(FileObject::Iommufd(ctx)) => {
                crate::iommufd::abi::ioctl(ctx, request, arg, user).map(Routed::Value)
            }
            // The fault file has no ioctl method.
            Some(FileObject::Fault(_)) => Err(VfioError::NoTty),
            Some(FileObject::Cdev(c)) => {
                let c = c.clone();
                let objects = &self.objects;
                // The iommufd argument of a bind: resolved first, as the
                // kernel's fdget; eventfds are resolved by device ioctls.
                let mut lookup_target = |fd: i32| match fds.target(fd) {
                    FdTarget::NotOpen => IommufdLookup::NotOpen,
                    FdTarget::Foreign => IommufdLookup::NotIommufd,
                    FdTarget::Object(k) => match objects.get(&k) {
                        Some(FileObject::Iommufd(ctx)) => IommufdLookup::Iommufd(ctx.clone()),
                        _ => IommufdLookup::NotIommufd,
                    },
                };
                if request == crate::iommufd::cdev::VFIO_DEVICE_BIND_IOMMUFD {
                    let mut none = |_fd: i32| EventfdArg::Error(libc::EINVAL);
                    return vfio
                        .cdev_ioctl(&c, request, arg, user, &mut lookup_target, &mut none)
                        .map(Routed::Value);
                }
                let mut no_lookup = |_fd: i32| IommufdLookup::NotOpen;
                let mut eventfds = |fd: i32| resolve_eventfd(fds, fd);
                let v = vfio.cdev_ioctl(&c, request, arg, user, &mut no_lookup, &mut eventfds)?;
                if let Some(s) = vfio.sanitizer() {
                    s.note_device_ioctl(key, request, arg, user);
                }
                Ok(Routed::Value(v))
            }
            Some(FileObject::Group(g)) => {
                let objects = &self.objects;
                let mut lookup = |fd: i32| match fds.target(fd) {
                    FdTarget::NotOpen => FdLookup::NotOpen,
                    FdTarget::Foreign => FdLookup::NotContainer,
                    FdTarget::Object(k) => match objects.get(&k) {
                        Some(FileObject::Container(c)) => FdLookup::Container(c.clone()),
                        Some(FileObject::Iommufd(ctx)) => FdLookup::Iommufd(ctx.clone()),
                        _ => FdLookup::NotContainer,
                    },
                };
                match vfio.group_ioctl(g, request, arg, user, &mut lookup)? {
                    IoctlOutcome::Value(v) => Ok(Routed::Value(v)),
                    IoctlOutcome::Device(dev) => {
                        let name = format!("device {}", dev.device.name);
                        let key = self.insert(FileObject::Device(dev));
                        if let Some(s) = vfio.sanitizer() {
                            s.note_object(key, name);
                        }
                        Ok(Routed::NewObject(key))
                    }
                }
            }
            None => Err(VfioError::BadFd),
        }
    }

    /// `pread` on the file `key`: device regions; EINVAL on other files.
    pub fn pread(
        &self,
        key: ObjectKey,
        user: &dyn UserMemory,
        buf: u64,
        len: u64,
        offset: u64,
    ) -> Result<i64> {
        match self.objects.get(&key) {
            Some(FileObject::Device(d)) => self.vfio.device_pread(d, user, buf, len, offset),
            Some(FileObject::Cdev(c)) => match c.bound() {
                Some(_) => self
                    .vfio
                    .device_pread(&cdev_device(c), user, buf, len, offset),
                None => Err(VfioError::Invalid("device not bound")),
            },
            Some(FileObject::Fault(f)) => f.positioned_io(),
            Some(_) => Err(VfioError::Invalid("no read on this file")),
            None => Err(VfioError::BadFd),
        }
    }

    /// `pwrite` on the file `key`.
    pub fn pwrite(
        &self,
        key: ObjectKey,
        user: &dyn UserMemory,
        buf: u64,
        len: u64,
        offset: u64,
    ) -> Result<i64> {
        match self.objects.get(&key) {
            Some(FileObject::Device(d)) => self.vfio.device_pwrite(d, user, buf, len, offset),
            Some(FileObject::Cdev(c)) => match c.bound() {
                Some(_) => self
                    .vfio
                    .device_pwrite(&cdev_device(c), user, buf, len, offset),
                None => Err(VfioError::Invalid("device not bound")),
            },
            Some(FileObject::Fault(f)) => f.positioned_io(),
            Some(_) => Err(VfioError::Invalid("no write on this file")),
            None => Err(VfioError::BadFd),
        }
    }

    /// `read(2)` (`write`: `write(2)`), no offset, of `len` bytes at `buf`
    /// on the file `key`, for the files whose reads and writes are served
    /// (a fault queue); `None` for the others (their calls reach the front
    /// end's kernel object).
    pub fn stream_rw(
        &self,
        key: ObjectKey,
        user: &dyn UserMemory,
        buf: u64,
        len: u64,
        write: bool,
    ) -> Option<Result<i64>> {
        match self.objects.get(&key) {
            Some(FileObject::Fault(f)) if write => Some(f.write(user, buf, len)),
            Some(FileObject::Fault(f)) => Some(f.read(user, buf, len)),
            _ => None,
        }
    }

    /// The `poll(2)` events of the file `key` by the kernel's rule for its
    /// kind, for a fault queue (`POLLOUT`); `None` for the others. Front
    /// ends give a fault queue a kernel object that polls the same
    /// (docs/IOMMUFD.md "Fault queues"), so they need not serve `poll`.
    pub fn poll(&self, key: ObjectKey) -> Option<i16> {
        match self.objects.get(&key) {
            Some(FileObject::Fault(f)) => Some(f.poll()),
            _ => None,
        }
    }

    /// Undoes a [`Routed::NewFileAt`] whose descriptor could not be made:
    /// the file goes, and the object it made with it (as the kernel's
    /// allocation does when no descriptor is free).
    pub fn abort(&mut self, key: ObjectKey) {
        match self.objects.remove(&key) {
            Some(FileObject::Fault(f)) => f.abort(),
            Some(other) => {
                self.objects.insert(key, other);
                self.release(key);
            }
            None => {}
        }
    }

    /// `mmap` of the file `key` (see [`Vfio::device_mmap`]): what the
    /// mapping reaches. ENODEV on a container or group file, as the kernel
    /// answers for a file without an mmap method.
    pub fn mmap(
        &self,
        key: ObjectKey,
        offset: u64,
        len: u64,
        shared: bool,
    ) -> Result<crate::uapi::MappedRegion> {
        match self.objects.get(&key) {
            Some(FileObject::Device(d)) => self
                .vfio
                .device_mmap(d, offset, len, shared)
                .map(|m| crate::uapi::MappedRegion { file: key, ..m }),
            // A cdev maps as its device once bound to an iommufd (before:
            // EINVAL, `vfio_device_fops_mmap` without access granted).
            Some(FileObject::Cdev(c)) => {
                if c.bound().is_none() {
                    return Err(VfioError::Invalid("cdev not bound to an iommufd"));
                }
                let d = crate::uapi::DeviceFile {
                    group: c.group.clone(),
                    device: c.device.clone(),
                };
                self.vfio
                    .device_mmap(&d, offset, len, shared)
                    .map(|m| crate::uapi::MappedRegion { file: key, ..m })
            }
            Some(_) => Err(VfioError::Errno(libc::ENODEV)),
            None => Err(VfioError::BadFd),
        }
    }

    /// Last close of the file `key`. Returns the released object (so a front
    /// end can report what a program left open).
    pub fn release(&mut self, key: ObjectKey) -> Option<FileObject> {
        let obj = self.objects.remove(&key)?;
        if let Some(s) = self.vfio.sanitizer() {
            s.forget_object(key);
        }
        match &obj {
            FileObject::Container(c) => self.vfio.release_container(c.clone()),
            FileObject::Group(g) => self.vfio.release_group(g.clone()),
            FileObject::Device(d) => self.vfio.release_device(d.clone()),
            // The context goes with its last reference: devices bound to it
            // (their cdevs, or groups set to it) keep it, as in Linux.
            FileObject::Iommufd(_) => {}
            FileObject::Cdev(c) => self.vfio.release_cdev(c),
            // Its object stays until IOMMU_DESTROY (dropping the file lets
            // that succeed).
            FileObject::Fault(_) => {}
        }
        Some(obj)
    }

    /// The keys of the open files.
    pub fn keys(&self) -> Vec<ObjectKey> {
        self.objects.keys().copied().collect()
    }

    /// Peek at a file before releasing it.
    pub fn object(&self, key: ObjectKey) -> Option<&FileObject> {
        self.objects.get(&key)
    }
}

/// The device behind a cdev, as a group's device fd names it.
fn cdev_device(c: &CdevFile) -> DeviceFile {
    DeviceFile {
        group: c.group.clone(),
        device: c.device.clone(),
    }
}

/// `eventfd_ctx_fdget` on a program descriptor: EBADF when it is not open,
/// EINVAL when it is not an eventfd (one of our own VFIO files never is).
fn resolve_eventfd(fds: &mut dyn ProgramFds, fd: i32) -> EventfdArg {
    if fd < 0 {
        return EventfdArg::Negative(fd);
    }
    match fds.target(fd) {
        FdTarget::NotOpen => EventfdArg::Error(libc::EBADF),
        FdTarget::Object(_) => EventfdArg::Error(libc::EINVAL),
        FdTarget::Foreign => match fds.duplicate(fd).and_then(Eventfd::from_owned) {
            Ok(e) => EventfdArg::Fd(e),
            Err(e) => EventfdArg::Error(e),
        },
    }
}
