//! The external (mediated device) API of a container against the real
//! simulated memory backend and the real VT-d model: errno of every bad
//! input, pin refcounts, accounting across the hot-plug sequences of seed
//! 000, the unmap notifier (compliant and not), invalidated vaddrs, and the
//! dirty "pinned page scope".

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use soft_iommu::{Iommu, IommuConfig};
use softvfio::container::{UserBitmap, TYPE1V2_IOMMU, TYPE1_IOMMU, UPDATE_VADDR};
use softvfio::external::{ExternalDevice, PIN_PAGES_MAX_ENTRIES};
use softvfio::iommu::Prot;
use softvfio::memory::sim::SimMemory;
use softvfio::memory::{LockPolicy, UserMemory, PAGE_SIZE};
use softvfio::platform::{Device, Group, GroupKind};
use softvfio::testing::{vtd_group, NullDevice};
use softvfio::uapi::unmap_dma;
use softvfio::{Container, ContainerConfig, Result};

const BASE: u64 = 0x7000_0000_0000;
const PG: u64 = PAGE_SIZE;
/// Simulated memory: 4096 pages at BASE.
const MEM_PAGES: u64 = 4096;
/// A user page outside every mapping, for dirty bitmaps.
const BITMAP_VADDR: u64 = BASE + (MEM_PAGES - 1) * PG;

fn errno<T: std::fmt::Debug>(r: Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.errno(),
    }
}

fn sim() -> Arc<SimMemory> {
    let m = SimMemory::new();
    m.add_region(BASE, MEM_PAGES * PG, PG, Prot::RW).unwrap();
    Arc::new(m)
}

fn emulated_group(id: u32, devices: usize) -> Arc<Group> {
    Arc::new(Group {
        id,
        kind: GroupKind::Emulated,
        devices: (0..devices)
            .map(|i| {
                let name = format!(
                    "c0ffee00-0000-4000-8000-{:012x}",
                    u64::from(id) * 16 + i as u64
                );
                Arc::new(Device {
                    name: name.clone(),
                    rid: None,
                    model: Arc::new(NullDevice(name)),
                })
            })
            .collect(),
        extra_reserved: Vec::new(),
    })
}

fn pt_group(id: u32, rid: u16) -> Arc<Group> {
    vtd_group(id, rid, &Iommu::new(IommuConfig::default()))
}

/// A container over `mem` with `groups` attached and type1 `v2` set.
fn container(mem: &Arc<SimMemory>, groups: &[&Arc<Group>], v2: bool) -> Arc<Container> {
    let dyn_mem: Arc<dyn UserMemory> = mem.clone();
    let c = Container::new(ContainerConfig::default(), dyn_mem);
    for g in groups {
        c.attach_group(g).unwrap();
    }
    c.set_iommu(if v2 { TYPE1V2_IOMMU } else { TYPE1_IOMMU })
        .unwrap();
    c
}

/// A test "mediated device": it remembers what it pinned and, when told
/// a mapping goes away, unpins it (unless told not to comply).
struct TestDevice {
    dev: Arc<ExternalDevice>,
    pinned: Arc<Mutex<Vec<u64>>>,
    comply: Arc<AtomicBool>,
    notified: Arc<AtomicU32>,
}

impl TestDevice {
    fn register(c: &Arc<Container>, group: u32) -> Self {
        let pinned: Arc<Mutex<Vec<u64>>> = Arc::default();
        let comply = Arc::new(AtomicBool::new(true));
        let notified = Arc::new(AtomicU32::new(0));
        let slot: Arc<OnceLock<(Weak<Container>, Arc<ExternalDevice>)>> = Arc::default();
        let (s, p, k, n) = (
            slot.clone(),
            pinned.clone(),
            comply.clone(),
            notified.clone(),
        );
        let dev = c
            .register_external_device(
                group,
                "test-mdev",
                Some(Arc::new(move |iova, size| {
                    n.fetch_add(1, Ordering::SeqCst);
                    if !k.load(Ordering::SeqCst) {
                        return;
                    }
                    let Some((c, dev)) = s.get() else { return };
                    let Some(c) = c.upgrade() else { return };
                    let mut held = p.lock().unwrap();
                    let (gone, keep): (Vec<u64>, Vec<u64>) =
                        held.iter().partition(|&&i| i >= iova && i - iova < size);
                    *held = keep;
                    drop(held);
                    // Called with the container lock released: this would
                    // deadlock otherwise.
                    c.unpin_batch(dev, &gone).unwrap();
                })),
            )
            .unwrap();
        let _ = slot.set((Arc::downgrade(c), dev.clone()));
        TestDevice {
            dev,
            pinned,
            comply,
            notified,
        }
    }

    fn pin(&self, c: &Container, iova: u64, npage: usize, prot: Prot) -> Result<Vec<u64>> {
        let r = c.pin_pages(&self.dev, iova, npage, prot)?;
        let mut held = self.pinned.lock().unwrap();
        held.extend((0..npage as u64).map(|i| iova + i * PG));
        Ok(r)
    }

    /// Device close: drop every pin.
    fn close(&self, c: &Container) {
        let held: Vec<u64> = std::mem::take(&mut *self.pinned.lock().unwrap());
        c.unpin_batch(&self.dev, &held).unwrap();
        c.unregister_external_device(&self.dev);
    }
}

// ---- errno of every bad input ------------------------------------------------

#[test]
fn pin_pages_errno_of_every_bad_input() {
    let mem = sim();
    let g = emulated_group(5, 1);
    let c = container(&mem, &[&g], true);
    c.map(0x100_0000, BASE, 600 * PG, Prot::RW).unwrap();
    c.map(0x200_0000, BASE + 600 * PG, 4 * PG, Prot::READ)
        .unwrap();
    // Mapped in IOVA space but with no user memory behind it.
    c.map(0x300_0000, BASE + MEM_PAGES * PG, 2 * PG, Prot::RW)
        .unwrap();
    let d = TestDevice::register(&c, 5);
    let quiet = c.register_external_device(5, "no-callback", None).unwrap();

    assert_eq!(
        errno(c.pin_pages(&d.dev, 0x100_0000, 0, Prot::RW)),
        libc::EINVAL
    );
    assert_eq!(
        errno(c.pin_pages(&d.dev, 0x100_0000, PIN_PAGES_MAX_ENTRIES + 1, Prot::RW)),
        libc::E2BIG
    );
    assert_eq!(
        c.pin_pages(&d.dev, 0x100_0000, PIN_PAGES_MAX_ENTRIES, Prot::RW)
            .unwrap()
            .len(),
        512
    );
    c.unpin_pages(&d.dev, 0x100_0000, 512).unwrap();
    // Unmapped IOVA, and a run that leaves its mapping: nothing stays pinned.
    assert_eq!(
        errno(c.pin_pages(&d.dev, 0x50_0000, 1, Prot::READ)),
        libc::EINVAL
    );
    assert_eq!(
        errno(c.pin_pages(&d.dev, 0x100_0000 + 598 * PG, 4, Prot::READ)),
        libc::EINVAL
    );
    // A write pin of a read-only mapping; a read-only pin of it is fine.
    assert_eq!(
        errno(c.pin_pages(&d.dev, 0x200_0000, 1, Prot::WRITE)),
        libc::EPERM
    );
    assert_eq!(
        errno(c.pin_pages(&d.dev, 0x200_0000, 1, Prot::RW)),
        libc::EPERM
    );
    // EPERM at the third page after two good ones: those are undone.
    c.map(0x500_0000, BASE + 800 * PG, 2 * PG, Prot::RW)
        .unwrap();
    c.map(0x500_2000, BASE + 802 * PG, 2 * PG, Prot::READ)
        .unwrap();
    assert_eq!(
        errno(c.pin_pages(&d.dev, 0x500_0000, 4, Prot::WRITE)),
        libc::EPERM
    );
    assert_eq!(mem.stats().pin_refs, 0);
    assert_eq!(
        c.pin_pages(&d.dev, 0x500_0000, 4, Prot::READ)
            .unwrap()
            .len(),
        4
    );
    c.unpin_pages(&d.dev, 0x500_0000, 4).unwrap();
    // Memory missing behind the mapping.
    assert_eq!(
        errno(c.pin_pages(&d.dev, 0x300_0000, 1, Prot::READ)),
        libc::EFAULT
    );
    // A device with no dma_unmap callback may not pin.
    assert_eq!(
        errno(c.pin_pages(&quiet, 0x100_0000, 1, Prot::READ)),
        libc::EINVAL
    );
    // A device that is not (or no longer) registered.
    c.unregister_external_device(&quiet);
    assert_eq!(
        errno(c.pin_pages(&quiet, 0x100_0000, 1, Prot::READ)),
        libc::EINVAL
    );
    assert_eq!(
        errno(c.dma_read(&quiet, 0x100_0000, &mut [0u8; 4])),
        libc::EINVAL
    );
    // Nothing of all that left a pin or an accounted page behind.
    assert_eq!(mem.stats().pin_refs, 0);
    assert_eq!(mem.account().locked_pages(), 0);
    assert_eq!(c.external_pins(), (0, 0));

    // RLIMIT_MEMLOCK: sampled with CAP_IPC_LOCK off at map time.
    mem.set_lock_policy(LockPolicy {
        cap_ipc_lock: false,
        limit_pages: 4,
    });
    c.map(0x400_0000, BASE + 700 * PG, 8 * PG, Prot::RW)
        .unwrap();
    assert_eq!(
        errno(c.pin_pages(&d.dev, 0x400_0000, 5, Prot::RW)),
        libc::ENOMEM
    );
    assert_eq!(mem.stats().pin_refs, 0);
    assert_eq!(
        c.pin_pages(&d.dev, 0x400_0000, 4, Prot::RW).unwrap().len(),
        4
    );
    // Pinned again: no new page, nothing to account, no ENOMEM.
    assert_eq!(
        c.pin_pages(&d.dev, 0x400_0000, 4, Prot::RW).unwrap().len(),
        4
    );
    assert_eq!(mem.account().locked_pages(), 4);
    assert_eq!(
        errno(c.pin_pages(&d.dev, 0x400_0000 + 4 * PG, 1, Prot::RW)),
        libc::ENOMEM
    );

    // unpin_pages: the kernel warns and returns; we report.
    assert_eq!(errno(c.unpin_pages(&d.dev, 0x400_0000, 0)), libc::EINVAL);
    assert_eq!(
        errno(c.unpin_pages(&d.dev, 0x400_0000, PIN_PAGES_MAX_ENTRIES + 1)),
        libc::E2BIG
    );
    // Pages before the hole are unpinned, as the kernel does.
    assert_eq!(
        errno(c.unpin_pages(&d.dev, 0x400_0000 + 6 * PG, 4)),
        libc::EINVAL
    );
    assert_eq!(errno(c.unpin_pages(&d.dev, 0x400_0000, 4)), 0);
    assert_eq!(errno(c.unpin_pages(&d.dev, 0x400_0000, 4)), 0);
    assert_eq!(mem.account().locked_pages(), 0);
}

#[test]
fn v1_containers_and_multi_device_groups_refuse_pins() {
    let mem = sim();
    let g = emulated_group(5, 1);
    let c = container(&mem, &[&g], false);
    c.map(0x10_0000, BASE, 4 * PG, Prot::RW).unwrap();
    let d = TestDevice::register(&c, 5);
    assert_eq!(
        errno(c.pin_pages(&d.dev, 0x10_0000, 1, Prot::READ)),
        libc::EACCES
    );
    assert_eq!(errno(c.unpin_pages(&d.dev, 0x10_0000, 1)), libc::EACCES);
    // dma_rw has no v2 check in the kernel.
    let mut buf = [0u8; 8];
    assert_eq!(errno(c.dma_read(&d.dev, 0x10_0000, &mut buf)), 0);

    let g2 = emulated_group(6, 2);
    let c2 = container(&mem, &[&g2], true);
    c2.map(0x10_0000, BASE, 4 * PG, Prot::RW).unwrap();
    let d2 = TestDevice::register(&c2, 6);
    assert_eq!(
        errno(c2.pin_pages(&d2.dev, 0x10_0000, 1, Prot::READ)),
        libc::EINVAL
    );
    // A group that is not in the container cannot register.
    assert_eq!(
        errno(c2.register_external_device(5, "stranger", None)),
        libc::EINVAL
    );
}

#[test]
fn dma_rw_errno_and_data() {
    let mem = sim();
    let g = emulated_group(5, 1);
    let c = container(&mem, &[&g], true);
    c.map(0x10_0000, BASE, 2 * PG, Prot::RW).unwrap();
    c.map(0x10_2000, BASE + 8 * PG, 2 * PG, Prot::RW).unwrap();
    c.map(0x20_0000, BASE + 16 * PG, PG, Prot::READ).unwrap();
    c.map(0x30_0000, BASE + 17 * PG, PG, Prot::WRITE).unwrap();
    let d = TestDevice::register(&c, 5);
    // Across two mappings backed by different memory.
    let data: Vec<u8> = (0..3 * PG as usize).map(|i| (i % 251) as u8).collect();
    c.dma_write(&d.dev, 0x10_0800, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    c.dma_read(&d.dev, 0x10_0800, &mut back).unwrap();
    assert_eq!(back, data);
    let mut direct = vec![0u8; 0x800];
    mem.read(BASE + 8 * PG, &mut direct).unwrap();
    assert_eq!(direct[..], data[0x1800..0x2000]);
    // Nothing pinned by dma_rw.
    assert_eq!(mem.stats().pin_refs, 0);

    assert_eq!(errno(c.dma_write(&d.dev, 0x10_0000, &[])), libc::EINVAL);
    assert_eq!(
        errno(c.dma_read(&d.dev, 0x90_0000, &mut [0u8; 1])),
        libc::EINVAL
    );
    assert_eq!(errno(c.dma_write(&d.dev, 0x20_0000, &[1])), libc::EPERM);
    // The kernel requires read permission for writes too.
    assert_eq!(errno(c.dma_write(&d.dev, 0x30_0000, &[1])), libc::EPERM);
    assert_eq!(
        errno(c.dma_read(&d.dev, 0x30_0000, &mut [0u8; 1])),
        libc::EPERM
    );
    // Running off the end of the mappings: the first chunk was written.
    assert_eq!(
        errno(c.dma_write(&d.dev, 0x10_3000, &vec![0xaa; 2 * PG as usize])),
        libc::EINVAL
    );
    let mut b = [0u8; 1];
    mem.read(BASE + 9 * PG, &mut b).unwrap();
    assert_eq!(b[0], 0xaa);
}

/// A `dma_rw` read that faults in user memory leaves the destination as
/// the kernel's `copy_from_user` does: the pages before the fault copied,
/// the rest of the chunk zeroed, EFAULT. (Linux 6.1 with medu in `dma_rw`
/// mode: tests-oracle/MEDU-DIFFS.md, cause R.) Refusals before any copy
/// (no mapping, no permission) leave the buffer untouched.
#[test]
fn dma_rw_read_fault_zero_fills_the_uncopied_tail_like_copy_from_user() {
    let mem = sim();
    let g = emulated_group(5, 1);
    let c = container(&mem, &[&g], true);
    c.map(0x10_0000, BASE, 4 * PG, Prot::RW).unwrap();
    let d = TestDevice::register(&c, 5);
    let data: Vec<u8> = (0..4 * PG as usize).map(|i| (i % 249) as u8 + 1).collect();
    c.dma_write(&d.dev, 0x10_0000, &data).unwrap();
    // The program unmaps the third page; the mapping stays.
    mem.remove_region(BASE + 2 * PG, PG).unwrap();

    // The chunk is what lies in one mapping: [0x100, 4 pages); 0x100 bytes
    // past the mapping's end belong to a chunk that is never reached.
    let mut buf = vec![0x5au8; 4 * PG as usize];
    assert_eq!(errno(c.dma_read(&d.dev, 0x10_0100, &mut buf)), libc::EFAULT);
    let copied = 2 * PG as usize - 0x100;
    let chunk = 4 * PG as usize - 0x100;
    assert_eq!(buf[..copied], data[0x100..2 * PG as usize]);
    assert!(buf[copied..chunk].iter().all(|&b| b == 0));
    assert!(buf[chunk..].iter().all(|&b| b == 0x5a));

    // A fault on the first byte zeroes the whole chunk.
    let mut page = vec![0x5au8; 0x80];
    assert_eq!(
        errno(c.dma_read(&d.dev, 0x10_2040, &mut page)),
        libc::EFAULT
    );
    assert!(page.iter().all(|&b| b == 0));

    // No mapping, or no permission: nothing is copied or cleared.
    c.map(0x30_0000, BASE + 17 * PG, PG, Prot::WRITE).unwrap();
    let mut untouched = vec![0x5au8; 16];
    assert_eq!(
        errno(c.dma_read(&d.dev, 0x90_0000, &mut untouched)),
        libc::EINVAL
    );
    assert_eq!(
        errno(c.dma_read(&d.dev, 0x30_0000, &mut untouched)),
        libc::EPERM
    );
    assert!(untouched.iter().all(|&b| b == 0x5a));
}

// ---- refcounts -----------------------------------------------------------------

#[test]
fn pins_are_refcounted_and_accounted_once_with_one_update_per_call() {
    let mem = sim();
    let g = emulated_group(5, 1);
    let c = container(&mem, &[&g], true);
    c.map(0x10_0000, BASE, 64 * PG, Prot::RW).unwrap();
    let d = TestDevice::register(&c, 5);
    let acct = mem.account().clone();

    let u = acct.updates();
    let v = d.pin(&c, 0x10_0000, 8, Prot::READ).unwrap();
    assert_eq!(v, (0..8).map(|i| BASE + i * PG).collect::<Vec<_>>());
    assert_eq!(acct.updates() - u, 1, "one accounting update per call");
    assert_eq!(acct.locked_pages(), 8);
    // Overlapping: 4 pages again, 4 new.
    let u = acct.updates();
    d.pin(&c, 0x10_4000, 8, Prot::RW).unwrap();
    assert_eq!(acct.updates() - u, 1);
    assert_eq!(acct.locked_pages(), 12);
    // Only pages already pinned: no accounting at all.
    let u = acct.updates();
    d.pin(&c, 0x10_0000, 2, Prot::READ).unwrap();
    assert_eq!(acct.updates(), u);
    assert_eq!(c.external_pin_count(0x10_0000), 2);
    assert_eq!(c.external_pin_count(0x10_4000), 2);
    assert_eq!(c.external_pin_count(0x10_8000), 1);
    assert_eq!(c.external_pin_count(0x10_c000), 0);
    assert_eq!(c.external_pins(), (12, 18));
    // The memory holds one pin per distinct page.
    assert_eq!(mem.stats().pin_refs, 12);
    assert_eq!(c.snapshot().mappings[0].external_pinned_pages, 12);

    // Dropping a ref that is not the last changes nothing accounted.
    let u = acct.updates();
    c.unpin_pages(&d.dev, 0x10_0000, 2).unwrap();
    assert_eq!(acct.updates(), u);
    assert_eq!(acct.locked_pages(), 12);
    let u = acct.updates();
    c.unpin_pages(&d.dev, 0x10_0000, 12).unwrap();
    assert_eq!(acct.updates() - u, 1);
    assert_eq!(acct.locked_pages(), 4);
    c.unpin_pages(&d.dev, 0x10_4000, 4).unwrap();
    assert_eq!(acct.locked_pages(), 0);
    assert_eq!(mem.stats().pin_refs, 0);
    assert_eq!(c.external_pins(), (0, 0));
}

// ---- accounting across hot plug (seed 000) ------------------------------------

const MAP_PAGES: u64 = 64;
const MAP_IOVA: u64 = 0x100_0000;

#[derive(Debug, Clone, Copy)]
enum Op {
    PlugPt,
    UnplugPt,
    PlugMdev,
    UnplugMdev,
    /// Pin pages `first..first + n` through the mediated device.
    Pin(u64, u64),
    Unpin(u64, u64),
}

/// Runs `ops` against a container holding an anchor emulated group (so the
/// mapping survives every unplug) and checks after every step that the
/// accounted pages and memory pins are exactly what seed 000 says.
fn run_sequence(ops: &[Op]) {
    let mem = sim();
    let anchor = emulated_group(9, 0);
    let c = container(&mem, &[&anchor], true);
    c.map(MAP_IOVA, BASE, MAP_PAGES * PG, Prot::RW).unwrap();
    let pt = pt_group(3, 0x18);
    let mdev = emulated_group(5, 1);
    let (mut pt_on, mut dev): (bool, Option<TestDevice>) = (false, None);
    // Pin counts per page held by the device (the model).
    let mut held = vec![0u32; MAP_PAGES as usize];
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::PlugPt if !pt_on => {
                c.attach_group(&pt).unwrap();
                pt_on = true;
            }
            Op::UnplugPt if pt_on => {
                c.detach_group(3);
                pt_on = false;
            }
            Op::PlugMdev if dev.is_none() => {
                c.attach_group(&mdev).unwrap();
                dev = Some(TestDevice::register(&c, 5));
            }
            Op::UnplugMdev => {
                if let Some(d) = dev.take() {
                    d.close(&c);
                    c.detach_group(5);
                    held.iter_mut().for_each(|h| *h = 0);
                }
            }
            Op::Pin(first, n) => {
                if let Some(d) = &dev {
                    d.pin(&c, MAP_IOVA + first * PG, n as usize, Prot::RW)
                        .unwrap();
                    for h in &mut held[first as usize..(first + n) as usize] {
                        *h += 1;
                    }
                }
            }
            Op::Unpin(first, n) => {
                if let Some(d) = &dev {
                    c.unpin_pages(&d.dev, MAP_IOVA + first * PG, n as usize)
                        .unwrap();
                    let mut p = d.pinned.lock().unwrap();
                    for i in first..first + n {
                        if let Some(pos) = p.iter().position(|&x| x == MAP_IOVA + i * PG) {
                            p.remove(pos);
                        }
                    }
                    for h in &mut held[first as usize..(first + n) as usize] {
                        *h = h.saturating_sub(1);
                    }
                }
            }
            _ => {}
        }
        let distinct = held.iter().filter(|&&h| h > 0).count() as u64;
        let refs: u64 = held.iter().map(|&h| u64::from(h)).sum();
        let expect_locked = if pt_on { MAP_PAGES } else { distinct };
        let expect_mem_refs = if pt_on { MAP_PAGES } else { 0 } + distinct;
        let ctx = format!("{ops:?} after step {step}");
        assert_eq!(mem.account().locked_pages(), expect_locked, "locked: {ctx}");
        assert_eq!(mem.stats().pin_refs, expect_mem_refs, "memory pins: {ctx}");
        assert_eq!(c.external_pins(), (distinct, refs), "tracked pins: {ctx}");
        let m = &c.snapshot().mappings[0];
        assert_eq!(m.locked_pages, expect_locked, "{ctx}");
        assert_eq!(m.iommu_mapped, pt_on, "{ctx}");
    }
    // Tear down in whatever state the sequence left: nothing may leak.
    if let Some(d) = dev.take() {
        d.close(&c);
        c.detach_group(5);
    }
    if pt_on {
        c.detach_group(3);
    }
    c.detach_group(9);
    assert_eq!(mem.account().locked_pages(), 0);
    assert_eq!(mem.stats().pin_refs, 0);
}

#[test]
fn accounting_seed_000_named_sequences() {
    use Op::*;
    // mdev only
    run_sequence(&[
        PlugMdev,
        Pin(0, 8),
        Pin(0, 8),
        Pin(4, 8),
        Unpin(0, 8),
        Unpin(0, 12),
        UnplugMdev,
    ]);
    // passthrough only
    run_sequence(&[PlugPt, UnplugPt, PlugPt]);
    // both: mdev first, then passthrough plugged (replay must not double
    // count), pins while the domain exists, passthrough unplugged
    // (re-accounting), mdev unplugged.
    run_sequence(&[
        PlugMdev,
        Pin(0, 8),
        PlugPt,
        Pin(4, 8),
        Unpin(0, 8),
        UnplugPt,
        Unpin(4, 8),
        UnplugMdev,
    ]);
    // passthrough first, mdev hot plugged and unplugged while it remains
    run_sequence(&[
        PlugPt,
        PlugMdev,
        Pin(10, 20),
        Pin(10, 1),
        UnplugMdev,
        PlugMdev,
        Pin(0, 1),
        UnplugPt,
        UnplugMdev,
    ]);
    // passthrough hot plugged and unplugged while the mdev keeps pins
    run_sequence(&[
        PlugMdev,
        Pin(0, 16),
        PlugPt,
        UnplugPt,
        PlugPt,
        Unpin(0, 16),
        UnplugPt,
        Pin(60, 4),
        UnplugMdev,
    ]);
}

#[test]
fn accounting_seed_000_every_order() {
    use Op::*;
    let ops = [
        PlugPt,
        UnplugPt,
        PlugMdev,
        UnplugMdev,
        Pin(0, 8),
        Pin(4, 8),
        Unpin(0, 8),
    ];
    let len = 4;
    let mut idx = vec![0usize; len];
    let mut count = 0;
    loop {
        // Start with the mdev plugged and a pin, so every sequence begins
        // from the interesting state.
        let mut seq = vec![PlugMdev, Pin(2, 4)];
        seq.extend(idx.iter().map(|&i| ops[i]));
        run_sequence(&seq);
        count += 1;
        let mut k = 0;
        while k < len {
            idx[k] += 1;
            if idx[k] < ops.len() {
                break;
            }
            idx[k] = 0;
            k += 1;
        }
        if k == len {
            break;
        }
    }
    assert_eq!(count, 7usize.pow(4));
}

#[test]
fn last_emulated_group_leaving_drops_leftover_pins_in_one_update() {
    let mem = sim();
    let g = emulated_group(5, 1);
    let c = container(&mem, &[&g], true);
    c.map(0x10_0000, BASE, 64 * PG, Prot::RW).unwrap();
    let d = TestDevice::register(&c, 5);
    for i in 0..8 {
        d.pin(&c, 0x10_0000 + i * 8 * PG, 4, Prot::RW).unwrap();
    }
    assert_eq!(mem.account().locked_pages(), 32);
    let u = mem.account().updates();
    // The device "forgets" to unpin; release must not leak.
    c.detach_group(5);
    assert_eq!(mem.account().updates() - u, 1);
    assert_eq!(mem.account().locked_pages(), 0);
    assert_eq!(mem.stats().pin_refs, 0);
    assert_eq!(c.external_device_count(), 0);
}

// ---- the unmap notifier -------------------------------------------------------------

#[test]
fn unmap_notifies_devices_which_unpin() {
    let mem = sim();
    let g = emulated_group(5, 1);
    let c = container(&mem, &[&g], true);
    c.map(0x10_0000, BASE, 16 * PG, Prot::RW).unwrap();
    c.map(0x20_0000, BASE + 16 * PG, 16 * PG, Prot::RW).unwrap();
    let d = TestDevice::register(&c, 5);
    d.pin(&c, 0x10_0000, 4, Prot::RW).unwrap();
    d.pin(&c, 0x20_3000, 2, Prot::RW).unwrap();
    assert_eq!(c.unmap(0x10_0000, 16 * PG).unwrap(), 16 * PG);
    assert_eq!(d.notified.load(Ordering::SeqCst), 1);
    assert_eq!(mem.account().locked_pages(), 2);
    assert_eq!(c.snapshot().mappings.len(), 1);
    assert_eq!(c.unmap_all().unwrap(), 16 * PG);
    assert_eq!(d.notified.load(Ordering::SeqCst), 2);
    assert_eq!(mem.account().locked_pages(), 0);
    assert_eq!(mem.stats().pin_refs, 0);
    // Unpinned mappings are removed without asking anyone.
    c.map(0x10_0000, BASE, 16 * PG, Prot::RW).unwrap();
    c.unmap(0x10_0000, 16 * PG).unwrap();
    assert_eq!(d.notified.load(Ordering::SeqCst), 2);
}

#[test]
fn a_device_that_keeps_its_pins_makes_unmap_fail_with_nothing_done() {
    let mem = sim();
    let g = emulated_group(5, 1);
    let c = container(&mem, &[&g], true);
    c.map(0x10_0000, BASE, 16 * PG, Prot::RW).unwrap();
    c.map(0x20_0000, BASE + 16 * PG, 16 * PG, Prot::RW).unwrap();
    let d = TestDevice::register(&c, 5);
    d.pin(&c, 0x20_0000, 3, Prot::RW).unwrap();
    d.comply.store(false, Ordering::SeqCst);
    let before = c.snapshot();
    let info = c.info().unwrap();
    // Both mappings in the range; the second is pinned.
    assert_eq!(errno(c.unmap(0x10_0000, 0x20_0000)), libc::EBUSY);
    // One notification plus 10 retries, as the kernel counts them.
    assert_eq!(d.notified.load(Ordering::SeqCst), 11);
    let after = c.snapshot();
    assert_eq!(
        after.mappings, before.mappings,
        "the first mapping stays too"
    );
    assert_eq!(c.info().unwrap(), info);
    assert_eq!(mem.account().locked_pages(), 3);
    assert_eq!(c.external_pins(), (3, 3));
    assert_eq!(errno(c.unmap_all()), libc::EBUSY);
    // It complies now: the same request succeeds.
    d.comply.store(true, Ordering::SeqCst);
    assert_eq!(c.unmap(0x10_0000, 0x20_0000).unwrap(), 32 * PG);
    assert_eq!(mem.account().locked_pages(), 0);
    assert_eq!(mem.stats().pin_refs, 0);
}

#[test]
fn vaddr_invalidation_is_busy_with_mediated_devices_or_external_pins() {
    let mem = sim();
    let g = emulated_group(5, 1);
    let c = container(&mem, &[&g], true);
    c.map(0x10_0000, BASE, 4 * PG, Prot::RW).unwrap();
    assert!(!c.check_extension(UPDATE_VADDR));
    assert_eq!(errno(c.invalidate_vaddr(0x10_0000, 4 * PG)), libc::EBUSY);

    // Only passthrough groups, but one of its devices pins a page.
    let mem = sim();
    let pt = pt_group(3, 0x18);
    let c = container(&mem, &[&pt], true);
    c.map(0x10_0000, BASE, 4 * PG, Prot::RW).unwrap();
    c.map(0x20_0000, BASE + 4 * PG, 4 * PG, Prot::RW).unwrap();
    assert!(c.check_extension(UPDATE_VADDR));
    let d = TestDevice::register(&c, 3);
    d.pin(&c, 0x20_0000, 1, Prot::READ).unwrap();
    // Nothing of the range is invalidated (the first one is rolled back).
    assert_eq!(errno(c.invalidate_vaddr(0x10_0000, 0x20_0000)), libc::EBUSY);
    assert!(c.snapshot().mappings.iter().all(|m| !m.vaddr_invalid));
    assert_eq!(c.invalidate_vaddr(0x10_0000, 4 * PG).unwrap(), 4 * PG);
}

#[test]
fn pins_wait_for_an_invalidated_vaddr_and_give_up_cleanly() {
    let mem = sim();
    let pt = pt_group(3, 0x18);
    let c = container(&mem, &[&pt], true);
    c.map(0x10_0000, BASE, 4 * PG, Prot::RW).unwrap();
    c.invalidate_vaddr(0x10_0000, 4 * PG).unwrap();
    // A mediated device arrives while the vaddr is invalid (Linux 6.1
    // allows that), then pins.
    let g = emulated_group(5, 1);
    c.attach_group(&g).unwrap();
    let d = Arc::new(TestDevice::register(&c, 5));

    // Updated by another thread while the pin waits.
    let (c2, d2) = (c.clone(), d.clone());
    let t0 = Instant::now();
    let waiter = std::thread::spawn(move || d2.pin(&c2, 0x10_1000, 1, Prot::READ));
    std::thread::sleep(Duration::from_millis(100));
    c.update_vaddr(0x10_0000, BASE + 64 * PG, 4 * PG).unwrap();
    let got = waiter.join().unwrap().unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(100));
    assert_eq!(got, vec![BASE + 65 * PG], "pinned at the new address");
    assert_eq!(c.external_pin_count(0x10_1000), 1);
    c.unpin_pages(&d.dev, 0x10_1000, 1).unwrap();
    d.pinned.lock().unwrap().clear();

    // Nobody updates it: EFAULT after the timeout, nothing pinned. The
    // vaddr must be invalidated with the emulated group gone.
    c.detach_group(5);
    c.invalidate_vaddr(0x10_0000, 4 * PG).unwrap();
    c.attach_group(&g).unwrap();
    let d = Arc::new(TestDevice::register(&c, 5));
    c.set_vaddr_wait_timeout(Duration::from_millis(150));
    let t0 = Instant::now();
    assert_eq!(errno(d.pin(&c, 0x10_0000, 1, Prot::READ)), libc::EFAULT);
    assert!(t0.elapsed() >= Duration::from_millis(150));
    assert_eq!(
        errno(c.dma_read(&d.dev, 0x10_0000, &mut [0u8; 4])),
        libc::EFAULT
    );
    // An unmapped IOVA is EINVAL even while waiting would be needed.
    assert_eq!(errno(d.pin(&c, 0x90_0000, 1, Prot::READ)), libc::EINVAL);

    // The container closes while a pin waits: EFAULT.
    c.set_vaddr_wait_timeout(Duration::from_secs(30));
    let (c2, d2) = (c.clone(), d.clone());
    let waiter = std::thread::spawn(move || d2.pin(&c2, 0x10_0000, 1, Prot::READ));
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    c.close();
    assert_eq!(errno(waiter.join().unwrap()), libc::EFAULT);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(mem.stats().pin_refs, 0);
}

// ---- dirty tracking: the pinned page scope ---------------------------------------------

fn bitmap(c: &Container, mem: &SimMemory, iova: u64, pages: u64) -> u64 {
    mem.write(BITMAP_VADDR, &[0u8; 8]).unwrap();
    c.dirty_get_bitmap(
        iova,
        pages * PG,
        UserBitmap {
            pgsize: PG,
            size: 8,
            data: BITMAP_VADDR,
        },
    )
    .unwrap();
    let mut b = [0u8; 8];
    mem.read(BITMAP_VADDR, &mut b).unwrap();
    u64::from_ne_bytes(b)
}

#[test]
fn dirty_bitmaps_report_exactly_the_pinned_pages() {
    let mem = sim();
    let g = emulated_group(5, 1);
    let c = container(&mem, &[&g], true);
    c.map(0x10_0000, BASE, 16 * PG, Prot::RW).unwrap();
    let d = TestDevice::register(&c, 5);
    // Pinned before tracking starts: dirty from the start.
    d.pin(&c, 0x10_0000 + PG, 1, Prot::READ).unwrap();
    c.dirty_start().unwrap();
    assert_eq!(bitmap(&c, &mem, 0x10_0000, 16), 0b10);
    d.pin(&c, 0x10_0000 + 4 * PG, 2, Prot::RW).unwrap();
    c.dma_write(&d.dev, 0x10_0000 + 9 * PG + 100, &[7; 8])
        .unwrap();
    // Reading does not dirty.
    c.dma_read(&d.dev, 0x10_0000 + 12 * PG, &mut [0u8; 8])
        .unwrap();
    assert_eq!(bitmap(&c, &mem, 0x10_0000, 16), 0b10_0011_0010);
    // Pages written by dma_rw are reported once; pinned pages stay dirty.
    assert_eq!(bitmap(&c, &mem, 0x10_0000, 16), 0b11_0010);
    // Unpinned pages are reported one last time.
    c.unpin_pages(&d.dev, 0x10_0000 + 4 * PG, 2).unwrap();
    assert_eq!(bitmap(&c, &mem, 0x10_0000, 16), 0b11_0010);
    assert_eq!(bitmap(&c, &mem, 0x10_0000, 16), 0b10);

    // A passthrough group that never pinned: every page counts.
    let pt = pt_group(3, 0x18);
    c.attach_group(&pt).unwrap();
    assert_eq!(bitmap(&c, &mem, 0x10_0000, 16), 0xffff);
    // Its device uses the pinning interface: the group joins the pinned
    // page scope and the bitmap is exact again.
    let pd = TestDevice::register(&c, 3);
    pd.pin(&c, 0x10_0000 + 15 * PG, 1, Prot::READ).unwrap();
    assert_eq!(bitmap(&c, &mem, 0x10_0000, 16), 0b1000_0000_0000_0010);

    // Unmap with the dirty bitmap: after the devices let go, the pages
    // they had pinned are reported.
    mem.write(BITMAP_VADDR, &[0u8; 8]).unwrap();
    let n = unmap_dma(
        &c,
        0x10_0000,
        16 * PG,
        softvfio::container::UNMAP_FLAG_GET_DIRTY_BITMAP,
        Some(UserBitmap {
            pgsize: PG,
            size: 8,
            data: BITMAP_VADDR,
        }),
    )
    .unwrap();
    assert_eq!(n, 16 * PG);
    let mut b = [0u8; 8];
    mem.read(BITMAP_VADDR, &mut b).unwrap();
    assert_eq!(u64::from_ne_bytes(b), 0b1000_0000_0000_0010);
    assert_eq!(
        d.notified.load(Ordering::SeqCst) + pd.notified.load(Ordering::SeqCst),
        2
    );
}

// ---- real memory -----------------------------------------------------------------

#[test]
fn host_memory_pins_and_reads_real_pages() {
    use softvfio::memory::host::HostMemory;
    let len = 8 * PG as usize;
    // SAFETY: a fresh private anonymous mapping, unmapped at the end.
    let buf = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(buf, libc::MAP_FAILED);
    let vaddr = buf as u64;
    // SAFETY: the engine writes only the buffers this test maps for DMA,
    // areas no Rust reference covers while the engine runs.
    let mem: Arc<dyn UserMemory> = Arc::new(unsafe { HostMemory::current() });
    let c = Container::new(ContainerConfig::default(), mem.clone());
    let g = emulated_group(5, 1);
    c.attach_group(&g).unwrap();
    c.set_iommu(TYPE1V2_IOMMU).unwrap();
    c.map(0x10_0000, vaddr, 8 * PG, Prot::RW).unwrap();
    let d = TestDevice::register(&c, 5);
    let pages = d.pin(&c, 0x10_2000, 2, Prot::RW).unwrap();
    assert_eq!(pages, vec![vaddr + 2 * PG, vaddr + 3 * PG]);
    // The device writes through the page it pinned; the process sees it.
    mem.write(pages[1] + 8, b"mdev").unwrap();
    // SAFETY: inside the live mapping made above.
    let seen = unsafe { std::slice::from_raw_parts((vaddr + 3 * PG + 8) as *const u8, 4) };
    assert_eq!(seen, b"mdev");
    let mut back = [0u8; 4];
    c.dma_read(&d.dev, 0x10_3008, &mut back).unwrap();
    assert_eq!(&back, b"mdev");
    assert_eq!(mem.stats().pinned_pages, 2);
    c.unmap_all().unwrap();
    assert_eq!(d.notified.load(Ordering::SeqCst), 1);
    assert_eq!(mem.stats().pinned_pages, 0);
    c.detach_group(5);
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(buf, len) };
}
