//! The emulated access path (mediated devices on iommufd) and iommufd's
//! locked-memory accounting, through [`Iommufd`]'s API, asserting what Linux
//! 6.12 answered (tests-oracle/kernel-6.12-iommufd-access.txt: an mtty mdev
//! through its cdev, the selftest access, and VmPin/VmLck of each mode).

use std::sync::{Arc, Mutex};

use super::{AccessBuf, Iommufd};
use crate::account::{LockPolicy, MmAccount};
use crate::error::Result;
use crate::iommu::Prot;
use crate::memory::{UserMemory, PAGE_SIZE};
use crate::platform::{Device, Group, GroupKind};
use crate::testing::{iommu_group, FakeUnit, NullDevice, VecMemory};

const BASE: u64 = 0x7000_0000_0000;
const PG: u64 = PAGE_SIZE;

fn errno<T: std::fmt::Debug>(r: Result<T>) -> i32 {
    r.map(|_| 0).unwrap_or_else(|e| e.errno())
}

fn check(ctx: &Iommufd) {
    if let Err(broken) = ctx.check_invariants() {
        panic!("broken iommufd invariant: {broken}");
    }
}

fn mdev_group() -> Arc<Group> {
    let uuid = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".to_string();
    Arc::new(Group {
        id: 20,
        kind: GroupKind::Emulated,
        devices: vec![Arc::new(Device {
            name: uuid.clone(),
            rid: None,
            model: Arc::new(NullDevice(uuid)),
        })],
        extra_reserved: Vec::new(),
    })
}

fn memory(pages: usize, cap_ipc_lock: bool, limit_pages: u64) -> Arc<VecMemory> {
    let mem = VecMemory::new(BASE, pages * PG as usize);
    *mem.policy.lock().unwrap() = LockPolicy {
        cap_ipc_lock,
        limit_pages,
    };
    mem
}

/// The mtty answers of the reference (`mdev_*` lines).
#[test]
fn an_emulated_device_binds_as_an_access_and_attaches_to_ioases_only() {
    let mem = memory(64, false, u64::MAX);
    let ctx = Iommufd::with_user_account(mem.clone(), Arc::new(MmAccount::new()));
    let mdev = mdev_group();
    let (ioas, ioas2) = (ctx.ioas_alloc(), ctx.ioas_alloc());
    let dev = ctx.bind(&mdev, &mdev.devices[0]);
    assert_eq!((ioas, ioas2, dev), (1, 2, 3));
    assert!(ctx.is_access(dev));
    assert_eq!(errno(ctx.hw_info(dev)), libc::ENOENT);
    assert_eq!(errno(ctx.hwpt_alloc(dev, ioas, 0, 0)), libc::ENOENT);
    assert_eq!(errno(ctx.destroy(dev)), libc::EBUSY);
    assert_eq!(errno(ctx.attach(dev, 999)), libc::ENOENT);
    assert_eq!(errno(ctx.attach(dev, dev)), libc::ENOENT);
    // A byte-aligned area is fine until the access needs page alignment.
    assert_eq!(
        ctx.map(ioas, BASE + 1, 100, Some(0x1001), Prot::RW),
        Ok(0x1001)
    );
    assert_eq!(ctx.iova_ranges(ioas).unwrap(), (vec![(0, u64::MAX)], 1));
    assert_eq!(errno(ctx.attach(dev, ioas)), libc::EADDRINUSE);
    check(&ctx);
    assert_eq!(ctx.unmap(ioas, 0x1001, 100), Ok(100));
    // Attached: pt_id is the IOAS itself (no HWPT), alignment a page.
    assert_eq!(ctx.attach(dev, ioas), Ok(ioas));
    assert_eq!(ctx.iova_ranges(ioas).unwrap(), (vec![(0, u64::MAX)], PG));
    assert_eq!(
        errno(ctx.map(ioas, BASE + 1, 100, Some(0x1001), Prot::RW)),
        libc::EINVAL
    );
    assert_eq!(
        ctx.map(ioas, BASE, 4 * PG, Some(0x10_0000), Prot::RW),
        Ok(0x10_0000)
    );
    // Nothing is pinned by an attach (no domain).
    assert_eq!((mem.total_pins(), ctx.charged_pages()), (0, 0));
    assert_eq!(errno(ctx.destroy(ioas)), libc::EBUSY);
    assert_eq!(ctx.attach(dev, ioas), Ok(ioas));
    assert_eq!(ctx.attach(dev, ioas2), Ok(ioas2));
    check(&ctx);
    assert_eq!(errno(ctx.destroy(ioas2 + 100)), libc::ENOENT);
    assert_eq!(ctx.destroy(ioas), Ok(()));
    // A HWPT (of a device behind an IOMMU) is no place for an access.
    let unit = FakeUnit::new(39);
    let group = Arc::new(iommu_group(3, 0x18, unit, Vec::new()));
    let edu = ctx.bind(&group, &group.devices[0]);
    let hwpt = ctx.hwpt_alloc(edu, ioas2, 0, 0).unwrap();
    assert_eq!(errno(ctx.attach(dev, hwpt)), libc::ENOENT);
    assert_eq!(
        ctx.iova_ranges(ioas2).unwrap(),
        (vec![(0, (1 << 39) - 1)], PG)
    );
    assert_eq!(ctx.destroy(hwpt), Ok(()));
    ctx.detach(dev);
    ctx.detach(dev);
    assert_eq!(ctx.destroy(ioas2), Ok(()));
    let ioas = ctx.ioas_alloc();
    assert_eq!(ctx.iova_ranges(ioas).unwrap(), (vec![(0, u64::MAX)], 1));
    assert_eq!(ctx.attach(dev, ioas), Ok(ioas));
    check(&ctx);
    // The last close: the access goes, the IOAS is free again.
    ctx.unbind(dev);
    assert_eq!(ctx.destroy(ioas), Ok(()));
    check(&ctx);
}

/// A device's pins, as the selftest's access keeps them: whole items,
/// dropped when an unmap intersects them.
#[derive(Default)]
struct Items(Mutex<Vec<(u64, u64)>>);

/// The selftest access answers of the reference (`t_*` lines).
#[test]
fn access_pins_and_reads_follow_linux() {
    let mem = memory(64, false, u64::MAX);
    let ctx = Iommufd::with_user_account(mem.clone(), Arc::new(MmAccount::new()));
    ctx.set_rlimit_mode(1).unwrap();
    let mdev = mdev_group();
    let ioas = ctx.ioas_alloc();
    let map = |iova, off: u64, len, prot| ctx.map(ioas, BASE + off, len, Some(iova), prot);
    map(0x10_0000, 0, 4 * PG, Prot::RW).unwrap();
    map(0x10_4000, 4 * PG, 2 * PG, Prot::RW).unwrap();
    map(0x20_0000, 8 * PG, 2 * PG, Prot::READ).unwrap();
    map(0x30_0000, 10 * PG, PG, Prot::WRITE).unwrap();
    map(0x40_0008, 12 * PG + 8, 64, Prot::RW).unwrap();
    let dev = ctx.bind(&mdev, &mdev.devices[0]);
    assert_eq!(errno(ctx.attach(dev, ioas)), libc::EADDRINUSE);
    assert_eq!(ctx.unmap(ioas, 0x40_0008, 64), Ok(64));
    assert_eq!(ctx.attach(dev, ioas), Ok(ioas));
    // The device drops every item its unmap callback's range touches.
    let items = Arc::new(Items::default());
    {
        let (items, ctx2) = (items.clone(), Arc::downgrade(&ctx));
        ctx.access_set_unmap(
            dev,
            Some(Arc::new(move |iova: u64, len: u64| {
                let last = iova.saturating_add(len - 1);
                let mut held = items.0.lock().unwrap();
                let Some(ctx) = ctx2.upgrade() else { return };
                held.retain(|&(i, l)| {
                    let hit = i <= last && iova < i + l;
                    if hit {
                        ctx.access_unpin(dev, i, l);
                    }
                    !hit
                });
            })),
        );
    }
    assert_eq!(ctx.iova_ranges(ioas).unwrap(), (vec![(0, u64::MAX)], PG));
    assert_eq!(
        errno(ctx.map(ioas, BASE + 12 * PG + 8, 64, Some(0x40_0008), Prot::RW)),
        libc::EINVAL
    );
    assert_eq!(errno(ctx.destroy(ioas)), libc::EBUSY);
    let pin = |iova, len, write| {
        let r = ctx.access_pin(dev, iova, len, write);
        if r.is_ok() {
            items.0.lock().unwrap().push((iova, len));
        }
        check(&ctx);
        errno(r)
    };
    let charged = || (ctx.charged_pages(), mem.account().locked_pages());
    assert_eq!(charged(), (0, 0));
    assert_eq!(pin(0x10_0000, PG, false), 0);
    assert_eq!(
        ctx.access_pin(dev, 0x10_1000, PG, true),
        Ok(vec![BASE + PG])
    );
    items.0.lock().unwrap().push((0x10_1000, PG));
    assert_eq!(charged(), (2, 2));
    assert_eq!(pin(0x10_0000, PG, true), 0);
    assert_eq!(charged(), (2, 2));
    assert_eq!(pin(0x50_0000, PG, false), libc::ENOENT);
    assert_eq!(pin(0x10_5000, 2 * PG, false), libc::ENOENT);
    assert_eq!(pin(0x20_0000, PG, true), libc::EPERM);
    assert_eq!(pin(0x20_0000, PG, false), 0);
    assert_eq!(pin(0x30_0000, PG, false), libc::EPERM);
    assert_eq!(pin(0x30_0000, PG, true), 0);
    assert_eq!(pin(0x10_3000, 2 * PG, true), 0);
    assert_eq!(pin(0x10_0000, 0, false), libc::EINVAL);
    assert_eq!(pin(0xffff_ffff_ffff_f000, 2 * PG, false), libc::EOVERFLOW);
    assert_eq!(pin(0x10_0800, 0x100, false), libc::EINVAL);
    // VmPin 24 kB in the reference: six pages, each charged once.
    assert_eq!(charged(), (6, 6));
    assert_eq!(mem.pin_count(BASE), 1);
    let data: Vec<u8> = (0x40..0x60).collect();
    let mut back = vec![0u8; 16];
    let rw = |iova, buf: AccessBuf<'_>| errno(ctx.access_rw(dev, iova, buf));
    assert_eq!(rw(0x10_0010, AccessBuf::Write(&data[..16])), 0);
    let mut landed = vec![0u8; 16];
    mem.read(BASE + 0x10, &mut landed).unwrap();
    assert_eq!(landed, &data[..16]);
    assert_eq!(rw(0x10_0010, AccessBuf::Read(&mut back)), 0);
    assert_eq!(back, &data[..16]);
    assert_eq!(rw(0x10_3ff8, AccessBuf::Write(&data[..16])), 0);
    mem.read(BASE + 4 * PG - 8, &mut landed).unwrap();
    assert_eq!(landed, &data[..16]);
    assert_eq!(rw(0x50_0000, AccessBuf::Read(&mut back)), libc::ENOENT);
    assert_eq!(rw(0x10_5ff8, AccessBuf::Read(&mut back)), libc::ENOENT);
    assert_eq!(rw(0x20_0000, AccessBuf::Write(&data[..16])), libc::EPERM);
    assert_eq!(rw(0x20_0000, AccessBuf::Read(&mut back)), 0);
    assert_eq!(rw(0x30_0000, AccessBuf::Read(&mut back)), libc::EPERM);
    assert_eq!(rw(0x30_0000, AccessBuf::Write(&data[..16])), 0);
    assert_eq!(rw(0x10_0000, AccessBuf::Read(&mut [])), libc::EINVAL);
    let mut wrap = [0u8; 32];
    assert_eq!(
        rw(0xffff_ffff_ffff_fff0, AccessBuf::Read(&mut wrap)),
        libc::EOVERFLOW
    );
    // Unmapping pinned areas asks the device first; its items touching the
    // range go (0x103000 + 2 pages reaches into the next area too).
    assert_eq!(ctx.unmap(ioas, 0x10_0000, 4 * PG), Ok(4 * PG));
    check(&ctx);
    assert_eq!(charged(), (2, 2));
    assert_eq!(pin(0x10_0000, PG, false), libc::ENOENT);
    assert_eq!(errno(ctx.unmap(ioas, 0x10_4000, PG)), libc::ENOENT);
    ctx.access_unpin(dev, 0x20_0000, PG);
    ctx.access_unpin(dev, 0x30_0000, PG);
    items.0.lock().unwrap().clear();
    assert_eq!(charged(), (0, 0));
    assert_eq!(mem.total_pins(), 0);
    // Replace: the access moves; the old IOAS is free, the new one busy.
    let ioas2 = ctx.ioas_alloc();
    assert_eq!(ctx.attach(dev, ioas2), Ok(ioas2));
    assert_eq!(pin(0x20_0000, PG, false), libc::ENOENT);
    assert_eq!(ctx.destroy(ioas), Ok(()));
    assert_eq!(errno(ctx.destroy(ioas2)), libc::EBUSY);
    ctx.unbind(dev);
    assert_eq!(ctx.destroy(ioas2), Ok(()));
    check(&ctx);
}

/// A device that ignores its unmap callback: Linux gives up after 100
/// notifications (EDEADLK); the area stays, refusing new pins (EINVAL).
/// Closing drops the pins it left.
#[test]
fn an_unmap_gives_up_on_a_device_that_keeps_its_pins() {
    let mem = memory(16, false, u64::MAX);
    let ctx = Iommufd::with_user_account(mem.clone(), Arc::new(MmAccount::new()));
    let mdev = mdev_group();
    let ioas = ctx.ioas_alloc();
    ctx.map(ioas, BASE, 2 * PG, Some(0x10_0000), Prot::RW)
        .unwrap();
    let dev = ctx.bind(&mdev, &mdev.devices[0]);
    ctx.attach(dev, ioas).unwrap();
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c2 = calls.clone();
    ctx.access_set_unmap(
        dev,
        Some(Arc::new(move |_, _| {
            c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })),
    );
    ctx.access_pin(dev, 0x10_0000, PG, true).unwrap();
    assert_eq!(errno(ctx.unmap(ioas, 0x10_0000, 2 * PG)), libc::EDEADLK);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 100);
    assert_eq!(
        errno(ctx.access_pin(dev, 0x10_1000, PG, false)),
        libc::EINVAL
    );
    check(&ctx);
    assert_eq!(mem.total_pins(), 1);
    ctx.close();
    assert_eq!((mem.total_pins(), mem.account().locked_pages()), (0, 0));
}

/// One round of the reference's accounting probe (`acct_*` lines): the
/// pages charged to `account` after each step.
fn account_round(mode: u64, cap_ipc_lock: bool) -> (Vec<u64>, Vec<i32>) {
    let mem = memory(64, cap_ipc_lock, u64::MAX);
    let user = Arc::new(MmAccount::new());
    let ctx = Iommufd::with_user_account(mem.clone(), user.clone());
    ctx.set_rlimit_mode(mode).unwrap();
    let shown = || {
        if mode == 1 {
            mem.account().locked_pages()
        } else {
            user.locked_pages()
        }
    };
    let unit = FakeUnit::new(39);
    let group = Arc::new(iommu_group(3, 0x18, unit, Vec::new()));
    let dev = ctx.bind(&group, &group.devices[0]);
    assert_eq!(errno(ctx.set_rlimit_mode(mode)), libc::EBUSY);
    let (ioas, ioas2) = (ctx.ioas_alloc(), ctx.ioas_alloc());
    let mut seen = vec![shown()];
    let mut answers = Vec::new();
    answers.push(errno(ctx.map(
        ioas,
        BASE,
        8 * PG,
        Some(0x10_0000),
        Prot::RW,
    )));
    seen.push(shown());
    answers.push(errno(ctx.attach(dev, ioas)));
    seen.push(shown());
    answers.push(errno(ctx.copy(
        ioas,
        ioas,
        4 * PG,
        Some(0x20_0000),
        0x10_0000,
        Prot::RW,
    )));
    seen.push(shown());
    answers.push(errno(ctx.copy(
        ioas2,
        ioas,
        4 * PG,
        Some(0x20_0000),
        0x10_0000,
        Prot::RW,
    )));
    seen.push(shown());
    answers.push(errno(ctx.map(
        ioas,
        BASE,
        8 * PG,
        Some(0x30_0000),
        Prot::RW,
    )));
    seen.push(shown());
    answers.push(errno(ctx.unmap(ioas, 0x10_0000, 8 * PG)));
    seen.push(shown());
    answers.push(errno(ctx.unmap(ioas, 0x20_0000, 4 * PG)));
    seen.push(shown());
    check(&ctx);
    mem.policy.lock().unwrap().limit_pages = 40;
    answers.push(errno(ctx.map(
        ioas,
        BASE + 8 * PG,
        30 * PG,
        Some(0x80_0000),
        Prot::RW,
    )));
    seen.push(shown());
    answers.push(errno(ctx.map(
        ioas,
        BASE + 8 * PG,
        28 * PG,
        Some(0x90_0000),
        Prot::RW,
    )));
    seen.push(shown());
    answers.push(errno(ctx.map(
        ioas,
        BASE + 40 * PG,
        PG,
        Some(0xa0_0000),
        Prot::RW,
    )));
    check(&ctx);
    ctx.unbind(dev);
    ctx.close();
    seen.push(shown());
    assert_eq!(mem.total_pins(), 0);
    (seen, answers)
}

#[test]
fn accounting_follows_rlimit_mode_and_charges_shared_pages_once() {
    // Without CAP_IPC_LOCK, in either mode: VmPin (and VmLck in mode 1) of
    // the reference, in pages: 8 on attach, a copy adds nothing, the same
    // memory mapped again is charged again, unmapping the source keeps
    // the copy's 4 pages, the 40-page limit refuses 28 more (ENOMEM).
    let want = vec![0, 0, 8, 8, 8, 16, 12, 8, 38, 38, 0];
    let answers = vec![0, 0, 0, 0, 0, 0, 0, 0, libc::ENOMEM, 0];
    assert_eq!(account_round(0, false), (want.clone(), answers.clone()));
    assert_eq!(account_round(1, false), (want, answers));
    // With CAP_IPC_LOCK nothing is charged (VmLck stays 0 in mode 1) and
    // no limit applies.
    let zero = vec![0; 11];
    let all_ok = vec![0; 10];
    assert_eq!(account_round(0, true), (zero.clone(), all_ok.clone()));
    assert_eq!(account_round(1, true), (zero, all_ok));
}

#[test]
fn rlimit_mode_is_chosen_before_any_object_and_only_with_cap_sys_resource() {
    let mem = memory(4, false, u64::MAX);
    let ctx = Iommufd::with_user_account(mem.clone(), Arc::new(MmAccount::new()));
    assert_eq!(ctx.rlimit_mode(), 0);
    assert_eq!(errno(ctx.set_rlimit_mode(2)), libc::EINVAL);
    assert_eq!(ctx.set_rlimit_mode(1), Ok(()));
    assert_eq!(ctx.rlimit_mode(), 1);
    assert_eq!(ctx.set_rlimit_mode(0), Ok(()));
    mem.cap_sys_resource
        .store(false, std::sync::atomic::Ordering::SeqCst);
    for v in [1, 0, 2] {
        assert_eq!(errno(ctx.set_rlimit_mode(v)), libc::EPERM, "value {v}");
    }
    assert_eq!(ctx.rlimit_mode(), 0);
    mem.cap_sys_resource
        .store(true, std::sync::atomic::Ordering::SeqCst);
    ctx.ioas_alloc();
    assert_eq!(errno(ctx.set_rlimit_mode(1)), libc::EBUSY);
}

/// Pins an access holds are charged once with the domain's pin of the same
/// pages, and survive the domain.
#[test]
fn access_pins_and_a_domain_share_the_charge() {
    let mem = memory(16, false, u64::MAX);
    let ctx = Iommufd::with_user_account(mem.clone(), Arc::new(MmAccount::new()));
    ctx.set_rlimit_mode(1).unwrap();
    let mdev = mdev_group();
    let unit = FakeUnit::new(39);
    let group = Arc::new(iommu_group(3, 0x18, unit, Vec::new()));
    let ioas = ctx.ioas_alloc();
    ctx.map(ioas, BASE, 4 * PG, Some(0x10_0000), Prot::RW)
        .unwrap();
    let acc = ctx.bind(&mdev, &mdev.devices[0]);
    ctx.attach(acc, ioas).unwrap();
    ctx.access_pin(acc, 0x10_1000, 2 * PG, true).unwrap();
    let locked = || mem.account().locked_pages();
    assert_eq!(locked(), 2);
    let dev = ctx.bind(&group, &group.devices[0]);
    ctx.attach(dev, ioas).unwrap();
    check(&ctx);
    assert_eq!((locked(), ctx.charged_pages()), (4, 4));
    ctx.detach(dev);
    check(&ctx);
    assert_eq!((locked(), mem.total_pins()), (2, 2));
    ctx.access_unpin(acc, 0x10_1000, 2 * PG);
    assert_eq!((locked(), mem.total_pins()), (0, 0));
    check(&ctx);
}
