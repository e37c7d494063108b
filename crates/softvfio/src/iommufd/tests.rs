//! Unit tests of iommufd: through [`Iommufd`]'s API and the byte-level
//! ABI, with the answers Linux 6.12 gave (tests-oracle/kernel-6.12-iommufd.txt),
//! pins and accounting counted after each step, and the invariants checked.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::abi::{self, *};
use super::Iommufd;
use crate::account::{LockPolicy, MmAccount};
use crate::error::Result;
use crate::iommu::Prot;
use crate::memory::{UserMemory, PAGE_SIZE};
use crate::platform::Group;
use crate::testing::{iommu_group, vtd_group, FakeUnit, VecMemory};

const BASE: u64 = 0x7000_0000_0000;
const PG: u64 = PAGE_SIZE;

/// A context charging the address space (`RLIMIT_MODE` 1) of a process
/// without CAP_IPC_LOCK and no limit: `locked(&mem)` shows the charge.
fn setup() -> (Arc<Iommufd>, Arc<VecMemory>, Arc<FakeUnit>, Arc<Group>) {
    let mem = VecMemory::new(BASE, 64 * PG as usize);
    no_cap_ipc_lock(&mem, u64::MAX);
    let unit = FakeUnit::new(39);
    let group = Arc::new(iommu_group(3, 0x18, unit.clone(), Vec::new()));
    let ctx = Iommufd::with_user_account(mem.clone(), Arc::new(MmAccount::new()));
    ctx.set_rlimit_mode(1).unwrap();
    (ctx, mem, unit, group)
}

fn no_cap_ipc_lock(mem: &VecMemory, limit_pages: u64) {
    *mem.policy.lock().unwrap() = LockPolicy {
        cap_ipc_lock: false,
        limit_pages,
    };
}

fn check(ctx: &Iommufd) {
    if let Err(broken) = ctx.check_invariants() {
        panic!("broken iommufd invariant: {broken}");
    }
}

fn errno<T: std::fmt::Debug>(r: Result<T>) -> i32 {
    r.map(|_| 0).unwrap_or_else(|e| e.errno())
}

fn locked(mem: &VecMemory) -> u64 {
    mem.account().locked_pages()
}

#[test]
fn areas_follow_linuxs_map_and_unmap_rules() {
    let (ctx, mem, ..) = setup();
    let ioas = ctx.ioas_alloc();
    assert_eq!(ctx.iova_ranges(ioas).unwrap(), (vec![(0, u64::MAX)], 1));
    let fixed = |iova| ctx.map(ioas, BASE, 4 * PG, Some(iova), Prot::RW);
    assert_eq!(fixed(0x10_0000), Ok(0x10_0000));
    assert_eq!(
        errno(ctx.map(ioas, BASE, PG, Some(0x10_2000), Prot::RW)),
        libc::EEXIST
    );
    assert_eq!(
        ctx.map(ioas, BASE + 4 * PG, 2 * PG, Some(0x10_4000), Prot::READ),
        Ok(0x10_4000)
    );
    // No domain: byte alignment, nothing pinned, any address accepted.
    assert_eq!(
        ctx.map(ioas, BASE + 0x800, PG, Some(0x20_0800), Prot::RW),
        Ok(0x20_0800)
    );
    assert_eq!(
        ctx.map(ioas, 0x1000, PG, Some(0x60_0000), Prot::RW),
        Ok(0x60_0000)
    );
    assert_eq!(mem.total_pins(), 0);
    assert_eq!(
        errno(ctx.map(ioas, BASE, 2 * PG, Some(u64::MAX - PG + 1), Prot::RW)),
        libc::EOVERFLOW
    );
    assert_eq!(
        errno(ctx.map(ioas, u64::MAX - PG + 1, 2 * PG, Some(0x50_0000), Prot::RW)),
        libc::EOVERFLOW
    );
    assert_eq!(
        errno(ctx.map(ioas, BASE, 0, Some(0x50_0000), Prot::RW)),
        libc::EINVAL
    );
    assert_eq!(
        errno(ctx.map(99, BASE, PG, Some(0x50_0000), Prot::RW)),
        libc::ENOENT
    );
    check(&ctx);
    // Unmap: only whole areas, ENOENT otherwise or for nothing.
    assert_eq!(errno(ctx.unmap(ioas, 0x10_1000, PG)), libc::ENOENT);
    assert_eq!(errno(ctx.unmap(ioas, 0x70_0000, PG)), libc::ENOENT);
    assert_eq!(errno(ctx.unmap(ioas, 0x10_0000, 0)), libc::EINVAL);
    assert_eq!(
        errno(ctx.unmap(ioas, u64::MAX - PG + 1, 2 * PG)),
        libc::EOVERFLOW
    );
    assert_eq!(ctx.unmap(ioas, 0x10_0000, 6 * PG), Ok(6 * PG));
    assert_eq!(ctx.unmap_all(ioas), Ok(PG + PG));
    assert_eq!(ctx.unmap_all(ioas), Ok(0));
    check(&ctx);
}

#[test]
fn allocated_iovas_are_lowest_and_aligned_as_the_user_address() {
    let (ctx, ..) = setup();
    let ioas = ctx.ioas_alloc();
    // The probe's buffer: one page past a 2 MiB boundary.
    let buf = BASE + (2 << 20) + PG;
    assert_eq!(ctx.map(ioas, buf, 2 * PG, None, Prot::RW), Ok(0x1000));
    assert_eq!(ctx.map(ioas, buf + 0x800, PG, None, Prot::RW), Ok(0x3800));
    assert_eq!(ctx.map(ioas, buf, 2 * PG, None, Prot::RW), Ok(0x5000));
    // Allowed ranges steer allocation only.
    ctx.allow_iovas(ioas, &[(0x10_0000, 0x1f_ffff)]).unwrap();
    assert_eq!(ctx.map(ioas, buf, 2 * PG, None, Prot::RW), Ok(0x10_0000));
    assert_eq!(
        ctx.map(ioas, buf, PG, Some(0x30_0000), Prot::RW),
        Ok(0x30_0000)
    );
    assert_eq!(
        errno(ctx.allow_iovas(ioas, &[(0x10_0000, 0x1f_ffff), (0x18_0000, 0x2f_ffff)])),
        libc::EINVAL
    );
    assert_eq!(
        errno(ctx.allow_iovas(ioas, &[(0x20_0000, 0x10_0000)])),
        libc::EINVAL
    );
    check(&ctx);
}

#[test]
fn copy_takes_whole_or_partial_areas_without_holes() {
    let (ctx, ..) = setup();
    let (src, dst) = (ctx.ioas_alloc(), ctx.ioas_alloc());
    ctx.map(src, BASE, 8 * PG, Some(0x10_0000), Prot::RW)
        .unwrap();
    assert_eq!(
        ctx.copy(dst, src, 8 * PG, Some(0x20_0000), 0x10_0000, Prot::RW),
        Ok(0x20_0000)
    );
    assert_eq!(
        ctx.copy(dst, src, 2 * PG, Some(0x30_0000), 0x10_2000, Prot::RW),
        Ok(0x30_0000)
    );
    assert_eq!(
        errno(ctx.copy(dst, src, 8 * PG, Some(0x20_4000), 0x10_0000, Prot::RW)),
        libc::EEXIST
    );
    assert_eq!(
        errno(ctx.copy(dst, src, PG, Some(0x40_0000), 0x90_0000, Prot::RW)),
        libc::ENOENT
    );
    assert_eq!(
        errno(ctx.copy(dst, src, 9 * PG, Some(0x40_0000), 0x10_0000, Prot::RW)),
        libc::ENOENT
    );
    assert_eq!(
        errno(ctx.copy(dst, src, 0, Some(0x40_0000), 0x10_0000, Prot::RW)),
        libc::EINVAL
    );
    assert_eq!(
        errno(ctx.copy(99, src, PG, Some(0x40_0000), 0x10_0000, Prot::RW)),
        libc::ENOENT
    );
    assert_eq!(ctx.unmap(src, 0x10_0000, 8 * PG), Ok(8 * PG));
    assert_eq!(errno(ctx.unmap(dst, 0x20_0000, 2 * PG)), libc::ENOENT);
    assert_eq!(ctx.unmap_all(dst), Ok(10 * PG));
    check(&ctx);
}

#[test]
fn areas_pin_and_account_while_a_device_is_attached() {
    let (ctx, mem, unit, group) = setup();
    let ioas = ctx.ioas_alloc();
    ctx.map(ioas, BASE, 4 * PG, Some(0x10_0000), Prot::RW)
        .unwrap();
    assert_eq!((mem.total_pins(), locked(&mem)), (0, 0));
    let dev = ctx.bind(&group, &group.devices[0]);
    let hwpt = ctx.attach(dev, ioas).unwrap();
    check(&ctx);
    assert_ne!(hwpt, ioas);
    assert!(unit.domain_of(0x18).is_some());
    assert_eq!((mem.total_pins(), locked(&mem)), (4, 4));
    // Ranges lose the MSI window and everything past the 39-bit aperture.
    assert_eq!(
        ctx.iova_ranges(ioas).unwrap(),
        (vec![(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)], PG)
    );
    assert_eq!(
        errno(ctx.map(ioas, BASE, PG, Some(0xfee0_0000), Prot::RW)),
        libc::EINVAL
    );
    assert_eq!(
        errno(ctx.map(ioas, BASE, PG, Some(1 << 40), Prot::RW)),
        libc::EINVAL
    );
    ctx.map(ioas, BASE + 4 * PG, 2 * PG, Some(0x20_0000), Prot::RW)
        .unwrap();
    assert_eq!(locked(&mem), 6);
    // In use: EBUSY for the IOAS, the automatic HWPT and the device.
    for id in [ioas, hwpt, dev] {
        assert_eq!(errno(ctx.destroy(id)), libc::EBUSY, "object {id}");
    }
    // A second HWPT, then a move onto it: the automatic one goes.
    let explicit = ctx.hwpt_alloc(dev, ioas, 0, 0).unwrap();
    assert_eq!(ctx.attach(dev, explicit), Ok(explicit));
    assert_eq!(errno(ctx.destroy(hwpt)), libc::ENOENT);
    assert_eq!(errno(ctx.destroy(explicit)), libc::EBUSY);
    check(&ctx);
    ctx.detach(dev);
    ctx.detach(dev);
    assert_eq!(unit.domain_of(0x18), None);
    check(&ctx);
    // The HWPT keeps the pages pinned until it goes.
    assert_eq!(locked(&mem), 6);
    ctx.destroy(explicit).unwrap();
    assert_eq!((mem.total_pins(), locked(&mem)), (0, 0));
    assert_eq!(ctx.unmap_all(ioas), Ok(6 * PG));
    ctx.destroy(ioas).unwrap();
    check(&ctx);
}

#[test]
fn a_map_that_fails_halfway_leaves_no_area_pin_or_charge() {
    let (ctx, mem, _unit, group) = setup();
    let (src, dst) = (ctx.ioas_alloc(), ctx.ioas_alloc());
    ctx.map(src, BASE, 2 * PG, Some(0x10_0000), Prot::RW)
        .unwrap();
    ctx.map(src, BASE + 4 * PG, 2 * PG, Some(0x10_2000), Prot::RW)
        .unwrap();
    let dev = ctx.bind(&group, &group.devices[0]);
    ctx.attach(dev, dst).unwrap();
    // The copy is two pieces; the second one's pin fails.
    mem.fail_pin_after.store(1, Ordering::SeqCst);
    let r = ctx.copy(dst, src, 4 * PG, Some(0x20_0000), 0x10_0000, Prot::RW);
    assert_eq!(errno(r), libc::EFAULT);
    mem.fail_pin_after.store(u64::MAX, Ordering::SeqCst);
    assert_eq!((mem.total_pins(), locked(&mem)), (0, 0));
    assert_eq!(errno(ctx.unmap_all(dst)), 0);
    assert!(ctx
        .snapshot()
        .ioas
        .iter()
        .all(|i| i.id != dst || i.areas.is_empty()));
    check(&ctx);
}

#[test]
fn closing_releases_every_object_pin_and_page() {
    let (ctx, mem, unit, group) = setup();
    let ioas = ctx.ioas_alloc();
    let dev = ctx.bind(&group, &group.devices[0]);
    ctx.attach(dev, ioas).unwrap();
    ctx.hwpt_alloc(dev, ioas, 0, 0).unwrap();
    ctx.map(ioas, BASE, 8 * PG, None, Prot::RW).unwrap();
    assert_eq!(locked(&mem), 8);
    ctx.close();
    assert_eq!((mem.total_pins(), locked(&mem)), (0, 0));
    assert_eq!(unit.domain_of(0x18), None);
    assert!(ctx.snapshot().ioas.is_empty() && ctx.snapshot().hwpts.is_empty());
}

#[test]
fn hwpt_alloc_answers_as_linux_on_qemus_vtd() {
    let (ctx, _mem, _unit, group) = setup();
    let ioas = ctx.ioas_alloc();
    let dev = ctx.bind(&group, &group.devices[0]);
    assert_eq!(
        errno(ctx.hwpt_alloc(dev, ioas, HWPT_DIRTY, 0)),
        libc::EOPNOTSUPP
    );
    assert_eq!(errno(ctx.hwpt_alloc(dev, ioas, 1, 0)), libc::EOPNOTSUPP);
    assert_eq!(errno(ctx.hwpt_alloc(99, ioas, 0, 0)), libc::ENOENT);
    assert_eq!(errno(ctx.hwpt_alloc(dev, 99, 0, 0)), libc::EINVAL);
    assert_eq!(errno(ctx.hwpt_alloc(dev, ioas, 0, 1)), libc::EINVAL);
    let hwpt = ctx.hwpt_alloc(dev, ioas, 0, 0).unwrap();
    assert_eq!(errno(ctx.hwpt_dirty(hwpt)), libc::EOPNOTSUPP);
    assert_eq!(errno(ctx.hwpt_dirty(ioas)), libc::ENOENT);
    check(&ctx);
}

const HWPT_DIRTY: u32 = super::hwpt::HWPT_ALLOC_DIRTY_TRACKING;

#[test]
fn device_dma_goes_through_the_ioas_on_the_vtd_model() {
    let iommu = soft_iommu::Iommu::new(soft_iommu::IommuConfig::default());
    let group = vtd_group(3, 0x18, &iommu);
    let mem = VecMemory::new(BASE, 16 * PG as usize);
    let ctx = Iommufd::new(mem.clone());
    let ioas = ctx.ioas_alloc();
    let dev = ctx.bind(&group, &group.devices[0]);
    ctx.attach(dev, ioas).unwrap();
    mem.write(BASE + PG, b"iommufd").unwrap();
    ctx.map(ioas, BASE, 4 * PG, Some(0x40_0000), Prot::RW)
        .unwrap();
    let port = iommu.dma_port(0x18);
    let mut buf = [0u8; 7];
    port.read(0x40_1000, &mut buf).unwrap();
    assert_eq!(&buf, b"iommufd");
    port.write(0x40_2000, b"device").unwrap();
    let mut back = [0u8; 6];
    mem.read(BASE + 2 * PG, &mut back).unwrap();
    assert_eq!(&back, b"device");
    // After unmap the device faults.
    ctx.unmap(ioas, 0x40_0000, 4 * PG).unwrap();
    assert!(port.read(0x40_1000, &mut buf).is_err());
    // GET_HW_INFO shows the model's registers (QEMU's values by default).
    let info = ctx.hw_info(dev).unwrap().unwrap();
    assert_eq!((info.cap_reg, info.ecap_reg), (0xd2008c22260286, 0xf00f4a));
    ctx.close();
    assert_eq!(mem.total_pins(), 0);
}

#[test]
fn abi_checks_size_trailing_bytes_and_flags() {
    let (ctx, mem, ..) = setup();
    let user: &dyn UserMemory = mem.as_ref();
    let arg = BASE + 32 * PG;
    let put = |words: &[u32]| {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        mem.write(arg, &bytes).unwrap();
    };
    let call = |req| errno(abi::ioctl(&ctx, req, arg, user));
    put(&[12, 0, 0]);
    assert_eq!(call(IOMMU_IOAS_ALLOC), 0);
    let mut id = [0u8; 4];
    mem.read(arg + 8, &mut id).unwrap();
    assert_eq!(u32::from_ne_bytes(id), 1);
    put(&[8, 0, 0]);
    assert_eq!(call(IOMMU_IOAS_ALLOC), libc::EINVAL);
    put(&[12, 1, 0]);
    assert_eq!(call(IOMMU_IOAS_ALLOC), libc::EOPNOTSUPP);
    put(&[24, 0, 0, 0, 0, 0]);
    assert_eq!(call(IOMMU_IOAS_ALLOC), 0);
    put(&[24, 0, 0, 0, 1, 0]);
    assert_eq!(call(IOMMU_IOAS_ALLOC), libc::E2BIG);
    assert_eq!(
        errno(abi::ioctl(&ctx, IOMMU_IOAS_ALLOC, 0, user)),
        libc::EFAULT
    );
    assert_eq!(call(iommufd_io(40)), libc::ENOTTY);
    // IOVA_RANGES with no room: EMSGSIZE, and the count written back.
    put(&[32, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(call(IOMMU_IOAS_IOVA_RANGES), libc::EMSGSIZE);
    let mut n = [0u8; 4];
    mem.read(arg + 8, &mut n).unwrap();
    assert_eq!(u32::from_ne_bytes(n), 1);
    assert_eq!(ctx.snapshot().ioas.len(), 2);
    check(&ctx);
}

/// A descriptor table where number 100 + k is session key k, and lower
/// numbers are open files of other kinds.
struct KeyFds;

impl crate::frontend::ProgramFds for KeyFds {
    fn target(&mut self, fd: i32) -> crate::frontend::FdTarget {
        match fd {
            i32::MIN..=-1 => crate::frontend::FdTarget::NotOpen,
            0..=99 => crate::frontend::FdTarget::Foreign,
            k => crate::frontend::FdTarget::Object(k as u64 - 100),
        }
    }
    fn duplicate(&mut self, _fd: i32) -> std::result::Result<std::os::fd::OwnedFd, i32> {
        Err(libc::EBADF)
    }
}

/// Through the Session, as both front ends drive it: open both files,
/// bind, attach, map; closing `/dev/iommu` first leaves the device
/// attached (its cdev holds the context, as in Linux); the cdev's close
/// then releases everything. The group cannot be opened meanwhile.
#[test]
fn a_bound_cdev_keeps_its_iommufd_alive() {
    use crate::frontend::{Routed, Session};
    let mem = VecMemory::new(BASE, 64 * PG as usize);
    no_cap_ipc_lock(&mem, u64::MAX);
    let unit = FakeUnit::new(39);
    let platform = crate::testing::reference_platform(unit.clone());
    let vfio = Arc::new(crate::uapi::Vfio::new(Arc::new(platform)));
    let mut s = Session::new(vfio);
    let user: Arc<dyn UserMemory> = mem.clone();
    let ifd = s.open("/dev/iommu", || user.clone()).unwrap().unwrap();
    s.iommufds()[0].set_rlimit_mode(1).unwrap();
    let cdev = s
        .open("/dev/vfio/devices/vfio0", || user.clone())
        .unwrap()
        .unwrap();
    assert_eq!(
        errno(s.open("/dev/vfio/devices/vfio1", || user.clone()).unwrap()),
        libc::ENOENT
    );
    let arg = BASE + 40 * PG;
    let put = |words: &[u32]| {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        mem.write(arg, &bytes).unwrap();
    };
    let get = |off: u64| {
        let mut b = [0u8; 4];
        mem.read(arg + off, &mut b).unwrap();
        u32::from_ne_bytes(b)
    };
    let ioctl = |s: &mut Session, key, req| match s.ioctl(key, req, arg, mem.as_ref(), &mut KeyFds)
    {
        Ok(Routed::Value(v)) => v as i32,
        Ok(Routed::NewObject(_)) | Ok(Routed::NewFileAt { .. }) => -1,
        Err(e) => -e.errno(),
    };
    let bind = super::cdev::VFIO_DEVICE_BIND_IOMMUFD;
    let attach = super::cdev::VFIO_DEVICE_ATTACH_IOMMUFD_PT;
    // Before the bind: EINVAL; a bind to a non-iommufd: EBADFD.
    put(&[12, 0, 1]);
    assert_eq!(ioctl(&mut s, cdev, attach), -libc::EINVAL);
    put(&[16, 0, 1, 0]);
    assert_eq!(ioctl(&mut s, cdev, bind), -libc::EBADFD);
    put(&[16, 0, ifd as u32 + 100, 0]);
    assert_eq!(ioctl(&mut s, cdev, bind), 0);
    let dev_id = get(12);
    assert_eq!(
        errno(s.open("/dev/vfio/3", || user.clone()).unwrap()),
        libc::EBUSY
    );
    put(&[12, 0, 0]);
    assert_eq!(ioctl(&mut s, ifd, IOMMU_IOAS_ALLOC), 0);
    let ioas = get(8);
    put(&[12, 0, ioas]);
    assert_eq!(ioctl(&mut s, cdev, attach), 0);
    let ctx = s.iommufds().pop().unwrap();
    ctx.map(ioas, BASE, 4 * PG, Some(0x10_0000), Prot::RW)
        .unwrap();
    assert_eq!((mem.total_pins(), locked(&mem)), (4, 4));
    drop(ctx);
    s.release(ifd);
    assert!(unit.domain_of(0x18).is_some());
    assert_eq!((mem.total_pins(), locked(&mem)), (4, 4));
    s.release(cdev);
    assert_eq!(unit.domain_of(0x18), None);
    assert_eq!((mem.total_pins(), locked(&mem)), (0, 0));
    // The group opens again.
    let g = s.open("/dev/vfio/3", || user.clone()).unwrap().unwrap();
    s.release(g);
    let _ = dev_id;
}

/// The type1 compatibility mode turns huge pages off, so that an unmap
/// may cut an area: the domain then holds 4 KiB leaves only, and the half
/// left mapped keeps translating (a 2 MiB leaf would have gone whole).
#[test]
fn compat_type1_cuts_areas_without_splitting_a_leaf() {
    let iommu = soft_iommu::Iommu::new(soft_iommu::IommuConfig::default());
    let group = vtd_group(3, 0x18, &iommu);
    let mem = VecMemory::new(BASE, 4 << 20);
    let ctx = Iommufd::new(mem.clone());
    let ioas = ctx.ioas_alloc();
    ctx.set_vfio_ioas(Some(ioas)).unwrap();
    let dev = ctx.bind(&group, &group.devices[0]);
    ctx.attach(dev, ioas).unwrap();
    ctx.compat_set_iommu(1).unwrap();
    assert_eq!(ctx.huge_pages(ioas, None), Ok(0));
    let user: &dyn UserMemory = mem.as_ref();
    let arg = BASE + (3 << 20);
    let words = |w: &[u64]| -> Vec<u8> { w.iter().flat_map(|x| x.to_ne_bytes()).collect() };
    // MAP_DMA: argsz 32, flags READ|WRITE, vaddr, iova, size.
    let mut map = words(&[0, BASE, 0x20_0000, 2 << 20]);
    map[..8].copy_from_slice(&[32, 0, 0, 0, 3, 0, 0, 0]);
    mem.write(arg, &map).unwrap();
    assert_eq!(
        abi::ioctl(&ctx, crate::uapi::VFIO_IOMMU_MAP_DMA, arg, user),
        Ok(0)
    );
    let domain = iommu.device_domain(0x18).unwrap();
    assert_eq!(domain.leaf_counts(), (512, 0, 0));
    // UNMAP_DMA of the first MiB: argsz 24, flags 0, iova, size.
    let mut unmap = words(&[0, 0x20_0000, 1 << 20]);
    unmap[..8].copy_from_slice(&[24, 0, 0, 0, 0, 0, 0, 0]);
    mem.write(arg, &unmap).unwrap();
    assert_eq!(
        abi::ioctl(&ctx, crate::uapi::VFIO_IOMMU_UNMAP_DMA, arg, user),
        Ok(0)
    );
    let port = iommu.dma_port(0x18);
    let mut b = [0u8; 4];
    assert!(port.read(0x20_0000, &mut b).is_err());
    assert!(port.read(0x30_0000, &mut b).is_ok());
    assert_eq!(mem.total_pins(), 256);
    // With domains holding pages, huge pages cannot be turned off again.
    ctx.huge_pages(ioas, Some(1)).unwrap();
    assert_eq!(errno(ctx.huge_pages(ioas, Some(0))), libc::EINVAL);
    check(&ctx);
    ctx.close();
    assert_eq!(mem.total_pins(), 0);
}

/// With a sanitizer, IOAS_MAP, IOAS_COPY, IOAS_UNMAP (ranges and all) and
/// the close of the context feed each IOAS's history, with the call site
/// of each call; failed calls record nothing; the IOASes of one context
/// and the containers' ids never share a key.
#[test]
fn the_sanitizer_records_ioas_map_copy_and_unmap() {
    use crate::sanitizer::{
        iommufd_history_key, with_call_site, CallSite, EventKind, IovaHistory, Sanitizer,
        SanitizerConfig, Via,
    };
    let (ctx, ..) = setup();
    let s = Sanitizer::new(SanitizerConfig::default());
    ctx.set_sanitizer(s.clone());
    let (src, dst) = (ctx.ioas_alloc(), ctx.ioas_alloc());
    let (ksrc, kdst) = (ctx.history_key(src), ctx.history_key(dst));
    assert_eq!(ksrc, iommufd_history_key(ctx.id(), src));
    assert_ne!(ksrc, kdst);
    assert!(ksrc >> 63 == 1, "apart from type1 container ids");
    let site = Arc::new(CallSite::default());
    let at = with_call_site(Some(&site), || ctx.map(src, BASE, 4 * PG, None, Prot::READ)).unwrap();
    // A refused map (overlap) records nothing.
    assert!(ctx.map(src, BASE, PG, Some(at), Prot::RW).is_err());
    ctx.copy(dst, src, 2 * PG, Some(0x20_0000), at + 2 * PG, Prot::READ)
        .unwrap();
    let r = s.region(ksrc, at).unwrap();
    assert_eq!(r.events.len(), 1);
    let e = &r.events[0];
    assert_eq!(
        e.kind,
        EventKind::Map {
            vaddr: BASE,
            size: 4 * PG,
            prot: Prot::READ
        }
    );
    assert_eq!((e.via, e.call()), (Via::Iommufd, "IOAS_MAP"));
    assert_eq!(e.site.as_deref(), Some(&*site));
    let c = s.region(kdst, 0x20_0000).unwrap();
    assert_eq!(c.events[0].call(), "IOAS_COPY");
    assert_eq!(
        c.events[0].kind,
        EventKind::Map {
            vaddr: BASE + 2 * PG,
            size: 2 * PG,
            prot: Prot::READ
        }
    );
    // An unmap that sticks out fails with nothing removed: nothing recorded.
    assert!(ctx.unmap(src, at, 2 * PG).is_err());
    assert_eq!(s.region(ksrc, at).unwrap().events.len(), 1);
    assert_eq!(ctx.unmap(src, at, 4 * PG), Ok(4 * PG));
    let r = s.region(ksrc, at).unwrap();
    assert!(!r.mapped);
    assert_eq!(r.events[1].call(), "IOAS_UNMAP");
    // DMA at the unmapped IOVA is explained from its history.
    let IovaHistory::Known(v) = s.explain(at + PG, std::time::Instant::now()) else {
        panic!("not known")
    };
    assert_eq!((v[0].container, v[0].iova, v[0].mapped), (ksrc, at, false));
    // unmap_all, then a new area left at close: released.
    assert_eq!(ctx.unmap_all(dst), Ok(2 * PG));
    assert!(!s.region(kdst, 0x20_0000).unwrap().mapped);
    ctx.map(dst, BASE, PG, Some(0x50_0000), Prot::RW).unwrap();
    ctx.close();
    let r = s.region(kdst, 0x50_0000).unwrap();
    assert_eq!(r.events.last().map(|e| e.kind), Some(EventKind::Released));
    assert_eq!(r.events[1].call(), "close of the iommufd");
}

/// A context's areas are recorded under its own lock (its recorder), where
/// questions find them while they are live (a stale check names a live
/// area); an IOAS destroyed with its areas releases them; when the context
/// goes, its histories move to the sanitizer's shared tables and are still
/// answered.
#[test]
fn iommufd_histories_are_asked_in_the_context_and_outlive_it() {
    use crate::sanitizer::{EventKind, Sanitizer, SanitizerConfig, StaleCause};
    let (ctx, ..) = setup();
    let s = Sanitizer::new(SanitizerConfig::default());
    ctx.set_sanitizer(s.clone());
    let (live, doomed) = (ctx.ioas_alloc(), ctx.ioas_alloc());
    let (klive, kdoomed) = (ctx.history_key(live), ctx.history_key(doomed));
    ctx.map(live, BASE, 2 * PG, Some(0x10_0000), Prot::RW)
        .unwrap();
    ctx.map(doomed, BASE + 4 * PG, PG, Some(0x30_0000), Prot::READ)
        .unwrap();
    // The recorder is the context's: nothing in the shared tables yet, and
    // the live area is found by a stale check of its memory.
    assert!(ctx.lock().history.is_some());
    assert_eq!(s.shared_history_count(), 0);
    let stale = s.memory_going_away(None, BASE + PG, PG, StaleCause::Munmap);
    assert_eq!(stale.len(), 1);
    assert_eq!(
        (
            stale[0].region.container,
            stale[0].region.iova,
            stale[0].vaddr,
            stale[0].len
        ),
        (klive, 0x10_0000, BASE + PG, PG)
    );
    // IOAS_DESTROY with an area in place: released.
    ctx.destroy(doomed).unwrap();
    let r = s.region(kdoomed, 0x30_0000).unwrap();
    assert!(!r.mapped);
    assert_eq!(r.events.last().map(|e| e.kind), Some(EventKind::Released));
    assert_eq!(s.region_count(), 2);
    // The context goes (its areas released by close first): the histories
    // move to the shared tables.
    ctx.close();
    let gone = Arc::downgrade(&ctx);
    drop(ctx);
    assert_eq!(gone.strong_count(), 0);
    assert_eq!(s.shared_history_count(), 2);
    let r = s.region(klive, 0x10_0000).unwrap();
    assert!(!r.mapped);
    let kinds: Vec<_> = r.events.iter().map(|e| e.kind).collect();
    assert!(matches!(kinds[0], EventKind::Map { size, .. } if size == 2 * PG));
    assert!(matches!(
        kinds[1],
        EventKind::Stale {
            cause: StaleCause::Munmap,
            ..
        }
    ));
    assert_eq!(kinds[2], EventKind::Released);
    assert_eq!(s.region_count(), 2);
}

/// A question holds a context's state while it reads it, never the
/// context: when the owner lets go meanwhile, the context's drop (its
/// close, which records the release) runs on the owner's thread, under the
/// owner's call site, and at once (found by review: questions held the
/// context, so the last reference could go on the question's thread).
#[test]
fn a_question_never_drops_a_context() {
    use crate::container::{Container, ContainerConfig};
    use crate::sanitizer::{
        with_call_site, CallSite, EventKind, Frame, Sanitizer, SanitizerConfig,
    };
    let site = |addr| {
        Arc::new(CallSite {
            frames: vec![Frame {
                addr,
                object: None,
                offset: 0,
            }],
        })
    };
    let (ctx, mem, ..) = setup();
    let s = Sanitizer::new(SanitizerConfig::default());
    ctx.set_sanitizer(s.clone());
    let ioas = ctx.ioas_alloc();
    let key = ctx.history_key(ioas);
    ctx.map(ioas, BASE, PG, Some(0x10_0000), Prot::RW).unwrap();
    // A registered container whose lock this thread holds keeps the
    // question (on another thread) inside `with_histories`, after it took
    // its references and before it can lock anything.
    let c = Container::new(ContainerConfig::default(), mem.clone());
    c.set_sanitizer(s.clone());
    let guard = c.lock();
    let weak = Arc::downgrade(&ctx);
    let state = Arc::downgrade(&ctx.state);
    let asker = s.clone();
    let t =
        std::thread::spawn(move || with_call_site(Some(&site(0xdead)), || asker.region_count()));
    while state.strong_count() < 2 {
        std::thread::yield_now();
    }
    assert_eq!(weak.strong_count(), 1, "the question holds no context");
    with_call_site(Some(&site(0xc105e)), || drop(ctx));
    assert_eq!(weak.strong_count(), 0, "dropped here, at once");
    assert_eq!(mem.total_pins(), 0, "its pins released here");
    drop(guard);
    assert_eq!(t.join().unwrap(), 1);
    assert_eq!(state.strong_count(), 0, "the question dropped the state");
    let r = s.region(key, 0x10_0000).unwrap();
    let last = r.events.last().unwrap();
    assert_eq!(last.kind, EventKind::Released);
    assert_eq!(last.site.as_deref(), Some(&*site(0xc105e)));
}

/// A partial unmap through the type1 compatibility ioctls cuts an area in
/// two: the piece left mapped keeps a history that starts with the map
/// that made its memory (time, call site), a munmap of its memory is a
/// stale mapping, and its own unmap ends that history (found by review:
/// the piece had no history, so its memory going away was not reported).
#[test]
fn a_compat_cut_leaves_the_remaining_piece_its_history() {
    use crate::sanitizer::{
        with_call_site, CallSite, EventKind, Frame, Sanitizer, SanitizerConfig, StaleCause,
    };
    let iommu = soft_iommu::Iommu::new(soft_iommu::IommuConfig::default());
    let group = vtd_group(3, 0x18, &iommu);
    let mem = VecMemory::new(BASE, 4 << 20);
    let ctx = Iommufd::new(mem.clone());
    let s = Sanitizer::new(SanitizerConfig::default());
    ctx.set_sanitizer(s.clone());
    let ioas = ctx.ioas_alloc();
    let key = ctx.history_key(ioas);
    ctx.set_vfio_ioas(Some(ioas)).unwrap();
    let dev = ctx.bind(&group, &group.devices[0]);
    ctx.attach(dev, ioas).unwrap();
    ctx.compat_set_iommu(1).unwrap();
    let user: &dyn UserMemory = mem.as_ref();
    let arg = BASE + (3 << 20);
    let words = |w: &[u64]| -> Vec<u8> { w.iter().flat_map(|x| x.to_ne_bytes()).collect() };
    let site = |addr| {
        Arc::new(CallSite {
            frames: vec![Frame {
                addr,
                object: None,
                offset: 0,
            }],
        })
    };
    // MAP_DMA of 2 MiB at 0x20_0000 (argsz 32, READ|WRITE), then
    // UNMAP_DMA of its first MiB.
    let mut map = words(&[0, BASE, 0x20_0000, 2 << 20]);
    map[..8].copy_from_slice(&[32, 0, 0, 0, 3, 0, 0, 0]);
    mem.write(arg, &map).unwrap();
    let rc = with_call_site(Some(&site(0x111)), || {
        abi::ioctl(&ctx, crate::uapi::VFIO_IOMMU_MAP_DMA, arg, user)
    });
    assert_eq!(rc, Ok(0));
    let mut unmap = words(&[0, 0x20_0000, 1 << 20]);
    unmap[..8].copy_from_slice(&[24, 0, 0, 0, 0, 0, 0, 0]);
    mem.write(arg, &unmap).unwrap();
    let rc = with_call_site(Some(&site(0x222)), || {
        abi::ioctl(&ctx, crate::uapi::VFIO_IOMMU_UNMAP_DMA, arg, user)
    });
    assert_eq!(rc, Ok(0));
    let port = iommu.dma_port(0x18);
    let mut b = [0u8; 4];
    assert!(port.read(0x30_0000, &mut b).is_ok(), "the tail is mapped");
    // The head: mapped (2 MiB, as the map said), then unmapped.
    let head = s.region(key, 0x20_0000).unwrap();
    assert!(!head.mapped);
    assert_eq!(head.events.len(), 2);
    // The tail: live, its history the map that made its memory.
    let tail = s.region(key, 0x30_0000).unwrap();
    assert!(tail.mapped);
    assert_eq!(tail.size, 1 << 20);
    assert_eq!(tail.events.len(), 1);
    assert_eq!(
        tail.events[0].kind,
        EventKind::Map {
            vaddr: BASE + (1 << 20),
            size: 1 << 20,
            prot: Prot::RW
        }
    );
    // The same tick (each question converts ticks anew: within 1 µs).
    let (a, b) = (tail.events[0].at, head.events[0].at);
    assert!(a.max(b).duration_since(a.min(b)) < std::time::Duration::from_micros(1));
    assert_eq!(tail.events[0].site.as_deref(), Some(&*site(0x111)));
    // Its memory going away is a stale mapping of the tail alone; the
    // head's (unmapped) memory is none.
    let stale = s.memory_going_away(None, BASE + (1 << 20), PG, StaleCause::Munmap);
    assert_eq!(stale.len(), 1);
    assert_eq!(
        (stale[0].region.iova, stale[0].vaddr),
        (0x30_0000, BASE + (1 << 20))
    );
    assert!(s
        .memory_going_away(None, BASE, PG, StaleCause::Munmap)
        .is_empty());
    // Its unmap ends its history.
    let mut unmap = words(&[0, 0x30_0000, 1 << 20]);
    unmap[..8].copy_from_slice(&[24, 0, 0, 0, 0, 0, 0, 0]);
    mem.write(arg, &unmap).unwrap();
    assert_eq!(
        abi::ioctl(&ctx, crate::uapi::VFIO_IOMMU_UNMAP_DMA, arg, user),
        Ok(0)
    );
    let tail = s.region(key, 0x30_0000).unwrap();
    assert!(!tail.mapped);
    let kinds: Vec<_> = tail.events.iter().map(|e| e.kind).collect();
    assert!(matches!(
        kinds[..],
        [
            EventKind::Map { .. },
            EventKind::Stale { .. },
            EventKind::Unmap
        ]
    ));
    // A cut whose head stays mapped: the head's history goes on with the
    // head's range (its memory past the cut is no longer its).
    let mut map = words(&[0, BASE + (2 << 20), 0x60_0000, 2 << 20]);
    map[..8].copy_from_slice(&[32, 0, 0, 0, 3, 0, 0, 0]);
    mem.write(arg, &map).unwrap();
    assert_eq!(
        abi::ioctl(&ctx, crate::uapi::VFIO_IOMMU_MAP_DMA, arg, user),
        Ok(0)
    );
    let mut unmap = words(&[0, 0x70_0000, 1 << 20]);
    unmap[..8].copy_from_slice(&[24, 0, 0, 0, 0, 0, 0, 0]);
    mem.write(arg, &unmap).unwrap();
    assert_eq!(
        abi::ioctl(&ctx, crate::uapi::VFIO_IOMMU_UNMAP_DMA, arg, user),
        Ok(0)
    );
    assert!(s.region(key, 0x60_0000).unwrap().mapped);
    assert!(s
        .memory_going_away(None, BASE + (3 << 20), PG, StaleCause::Munmap)
        .is_empty());
    let stale = s.memory_going_away(None, BASE + (2 << 20), PG, StaleCause::Munmap);
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].region.iova, 0x60_0000);
}

/// `IOMMU_FAULT_QUEUE_ALLOC` through the Session, as both front ends drive
/// it, with Linux 6.12's answers (tests-oracle/kernel-6.12-iommufd-fault.txt):
/// the object takes the next id and the reply the descriptor's address;
/// the size and flag checks; the file's read/write/poll, ESPIPE for
/// positioned I/O, ENOTTY for an ioctl, ENODEV for mmap; DESTROY is EBUSY
/// until the file's last close, then 0, then ENOENT; the file outlives the
/// `/dev/iommu` it came from; an aborted file leaves no object.
#[test]
fn fault_queue_through_the_session() {
    use crate::frontend::{Routed, Session};
    let mem = VecMemory::new(BASE, 64 * PG as usize);
    let unit = FakeUnit::new(39);
    let platform = crate::testing::reference_platform(unit);
    let vfio = Arc::new(crate::uapi::Vfio::new(Arc::new(platform)));
    let mut s = Session::new(vfio);
    let user: Arc<dyn UserMemory> = mem.clone();
    let ifd = s.open("/dev/iommu", || user.clone()).unwrap().unwrap();
    let arg = BASE + 40 * PG;
    let put = |words: &[u32]| {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        mem.write(arg, &bytes).unwrap();
    };
    let get = |off: u64| {
        let mut b = [0u8; 4];
        mem.read(arg + off, &mut b).unwrap();
        u32::from_ne_bytes(b)
    };
    let call = |s: &mut Session, key, req| s.ioctl(key, req, arg, mem.as_ref(), &mut KeyFds);
    put(&[12, 0, 0]);
    assert!(matches!(
        call(&mut s, ifd, IOMMU_IOAS_ALLOC),
        Ok(Routed::Value(0))
    ));
    // oracle: fault_alloc 0 id=2 ioas=1
    put(&[16, 0, 0, 0]);
    let (fault, fd_at) = match call(&mut s, ifd, IOMMU_FAULT_QUEUE_ALLOC) {
        Ok(Routed::NewFileAt { key, fd_at }) => (key, fd_at),
        _ => panic!("no fault file"),
    };
    assert_eq!((get(8), fd_at), (2, arg + 12));
    // oracle: fault_alloc_size20 0, _size20_tail E2BIG, _size15 EINVAL,
    // _flag31 EOPNOTSUPP, _null EFAULT
    put(&[20, 0, 0, 0, 0]);
    match call(&mut s, ifd, IOMMU_FAULT_QUEUE_ALLOC) {
        Ok(Routed::NewFileAt { key, .. }) => {
            assert_eq!(get(8), 3);
            s.release(key);
            assert!(s.object(ifd).is_some());
        }
        _ => panic!("no fault file"),
    }
    put(&[8, 3]);
    assert!(matches!(
        call(&mut s, ifd, IOMMU_DESTROY),
        Ok(Routed::Value(0))
    ));
    let errno_of = |r: Result<Routed>| match r {
        Ok(_) => 0,
        Err(e) => e.errno(),
    };
    put(&[20, 0, 0, 0, 1]);
    assert_eq!(
        errno_of(call(&mut s, ifd, IOMMU_FAULT_QUEUE_ALLOC)),
        libc::E2BIG
    );
    put(&[15, 0, 0, 0]);
    assert_eq!(
        errno_of(call(&mut s, ifd, IOMMU_FAULT_QUEUE_ALLOC)),
        libc::EINVAL
    );
    put(&[16, 0x8000_0000, 0, 0]);
    assert_eq!(
        errno_of(call(&mut s, ifd, IOMMU_FAULT_QUEUE_ALLOC)),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        errno_of(s.ioctl(ifd, IOMMU_FAULT_QUEUE_ALLOC, 0, mem.as_ref(), &mut KeyFds)),
        libc::EFAULT
    );
    // The file's calls.
    let buf = BASE + 41 * PG;
    let rd = |s: &Session, len| {
        s.stream_rw(fault, mem.as_ref(), buf, len, false)
            .map(|r| r.map_err(|e| e.errno()))
    };
    assert_eq!(rd(&s, 40), Some(Ok(0)));
    assert_eq!(rd(&s, 80), Some(Ok(0)));
    assert_eq!(rd(&s, 32), Some(Err(libc::ESPIPE)));
    assert_eq!(rd(&s, 0), Some(Ok(0)));
    mem.write(buf, &[1, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    let wr = |s: &Session, len| {
        s.stream_rw(fault, mem.as_ref(), buf, len, true)
            .map(|r| r.map_err(|e| e.errno()))
    };
    assert_eq!(wr(&s, 8), Some(Err(libc::EINVAL)));
    assert_eq!(wr(&s, 7), Some(Err(libc::ESPIPE)));
    assert_eq!(wr(&s, 0), Some(Ok(0)));
    assert_eq!(s.poll(fault), Some(libc::POLLOUT));
    assert_eq!(s.poll(ifd), None);
    assert!(s.stream_rw(ifd, mem.as_ref(), buf, 40, false).is_none());
    assert_eq!(
        errno(s.pread(fault, mem.as_ref(), buf, 40, 0)),
        libc::ESPIPE
    );
    assert_eq!(
        errno(s.pwrite(fault, mem.as_ref(), buf, 8, 0)),
        libc::ESPIPE
    );
    assert_eq!(errno_of(call(&mut s, fault, IOMMU_DESTROY)), libc::ENOTTY);
    assert_eq!(errno(s.mmap(fault, 0, PG, true)), libc::ENODEV);
    // oracle: fault_iova_ranges_on_fault ENOENT
    put(&[32, 2, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        errno_of(call(&mut s, ifd, IOMMU_IOAS_IOVA_RANGES)),
        libc::ENOENT
    );
    // oracle: fault_destroy_open EBUSY, _closed 0, _again ENOENT
    put(&[8, 2]);
    assert_eq!(errno_of(call(&mut s, ifd, IOMMU_DESTROY)), libc::EBUSY);
    s.release(fault);
    assert_eq!(errno_of(call(&mut s, ifd, IOMMU_DESTROY)), 0);
    assert_eq!(errno_of(call(&mut s, ifd, IOMMU_DESTROY)), libc::ENOENT);
    // A file the front end could not give a descriptor leaves no object.
    put(&[16, 0, 0, 0]);
    match call(&mut s, ifd, IOMMU_FAULT_QUEUE_ALLOC) {
        Ok(Routed::NewFileAt { key, .. }) => s.abort(key),
        _ => panic!("no fault file"),
    }
    put(&[8, 2]);
    assert_eq!(errno_of(call(&mut s, ifd, IOMMU_DESTROY)), libc::ENOENT);
    // oracle: fault_after_iommufd_read_40 0, _poll revents=0x4; DESTROY of
    // the queue with its descriptor open: fault_destroy2_open EBUSY.
    put(&[16, 0, 0, 0]);
    let f2 = match call(&mut s, ifd, IOMMU_FAULT_QUEUE_ALLOC) {
        Ok(Routed::NewFileAt { key, .. }) => key,
        _ => panic!("no fault file"),
    };
    put(&[8, 2]);
    assert_eq!(errno_of(call(&mut s, ifd, IOMMU_DESTROY)), libc::EBUSY);
    let ctx = Arc::downgrade(&s.iommufds()[0]);
    s.release(ifd);
    assert!(ctx.upgrade().is_some());
    assert_eq!(
        s.stream_rw(f2, mem.as_ref(), buf, 40, false)
            .map(|r| r.ok()),
        Some(Some(0))
    );
    assert_eq!(s.poll(f2), Some(libc::POLLOUT));
    s.release(f2);
    assert!(ctx.upgrade().is_none());
    // A fresh /dev/iommu starts at id 1: fault_alloc_fresh_iommufd 0 id=1.
    let ifd = s.open("/dev/iommu", || user.clone()).unwrap().unwrap();
    put(&[16, 0, 0, 0]);
    match call(&mut s, ifd, IOMMU_FAULT_QUEUE_ALLOC) {
        Ok(Routed::NewFileAt { key, .. }) => {
            assert_eq!(get(8), 1);
            s.release(key);
        }
        _ => panic!("no fault file"),
    }
    s.release(ifd);
}

/// `abi::ioctl` has no descriptor table: `IOMMU_FAULT_QUEUE_ALLOC` through
/// it is checked as the kernel checks it and then EMFILE (what 6.12
/// answers when no descriptor is free), with no object left behind.
#[test]
fn fault_queue_alloc_without_a_descriptor_table_is_emfile() {
    let (ctx, mem, ..) = setup();
    let user: &dyn UserMemory = mem.as_ref();
    let arg = BASE + 32 * PG;
    let put = |words: &[u32]| {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        mem.write(arg, &bytes).unwrap();
    };
    put(&[16, 1, 0, 0]);
    assert_eq!(
        errno(abi::ioctl(&ctx, IOMMU_FAULT_QUEUE_ALLOC, arg, user)),
        libc::EOPNOTSUPP
    );
    put(&[12, 0, 0, 0]);
    assert_eq!(
        errno(abi::ioctl(&ctx, IOMMU_FAULT_QUEUE_ALLOC, arg, user)),
        libc::EINVAL
    );
    put(&[16, 0, 0, 0]);
    assert_eq!(
        errno(abi::ioctl(&ctx, IOMMU_FAULT_QUEUE_ALLOC, arg, user)),
        libc::EMFILE
    );
    assert_eq!(errno(ctx.destroy(1)), libc::ENOENT);
    assert_eq!(ctx.ioas_alloc(), 1);
    check(&ctx);
}

/// `IOMMU_HWPT_ALLOC` naming a fault queue: 6.12 refuses the flag on a
/// paging HWPT before it looks at the id (EOPNOTSUPP for a queue, an IOAS,
/// id 0), and a nested HWPT on a HWPT that is no nesting parent is EINVAL
/// with or without a queue (kernel-6.12-iommufd-fault.txt).
#[test]
fn hwpt_alloc_with_a_fault_id() {
    let iommu = soft_iommu::Iommu::new(soft_iommu::IommuConfig::default());
    let group = vtd_group(3, 0x18, &iommu);
    let mem = VecMemory::new(BASE, 4 << 20);
    let ctx = Iommufd::new(mem.clone());
    let ioas = ctx.ioas_alloc();
    let dev = ctx.bind(&group, &group.devices[0]);
    let fault = ctx.fault_alloc();
    let valid = super::hwpt::HWPT_FAULT_ID_VALID;
    assert_eq!(errno(ctx.hwpt_alloc(dev, ioas, valid, 0)), libc::EOPNOTSUPP);
    let hwpt = ctx.hwpt_alloc(dev, ioas, 0, 0).unwrap();
    assert_eq!(errno(ctx.hwpt_alloc(dev, hwpt, valid, 1)), libc::EINVAL);
    assert_eq!(errno(ctx.hwpt_alloc(dev, hwpt, 0, 1)), libc::EINVAL);
    // A queue is no page table, nor a place to attach a device.
    assert_eq!(errno(ctx.hwpt_alloc(dev, fault.id(), 0, 0)), libc::EINVAL);
    assert_eq!(errno(ctx.attach(dev, fault.id())), libc::EINVAL);
    check(&ctx);
}
