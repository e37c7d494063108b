//! Concurrency stress through the engine: device DMA threads on two devices
//! (soft-iommu DMA ports), map/unmap threads through the Container, and a
//! thread attaching and detaching the second device's group, for a bounded
//! time. Checked:
//! - no DMA lands in a page after the UNMAP_DMA that covered it returned
//!   (pages are poisoned when unmap returns; each slot alternates between
//!   two banks of memory so that a stale translation hits a poisoned bank);
//! - no DMA of the second device lands after its group's detach returned;
//! - no pin and no accounted page survives, and the pin counts and the
//!   accounting always match the mappings;
//! - concurrent containers on one address space never exceed the locked
//!   memory limit together.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use soft_iommu::{Iommu, IommuConfig};
use softvfio::account::MmAccount;
use softvfio::container::{Container, ContainerConfig, TYPE1V2_IOMMU};
use softvfio::iommu::Prot;
use softvfio::memory::sim::SimMemory;
use softvfio::memory::{LockPolicy, MemError, PinStats, PinnedRun, UserMemory};
use softvfio::testing::vtd_group;

const PG: u64 = 4096;
const BASE: u64 = 0x7000_0000_0000;
const MAPPERS: u64 = 2;
const SLOTS_PER_MAPPER: u64 = 8;
const SLOT_PAGES: u64 = 4;
const BANKS: u64 = 2;
const TOTAL_PAGES: u64 = MAPPERS * SLOTS_PER_MAPPER * SLOT_PAGES * BANKS;
const IOVA_BASE: u64 = 0x100_0000;
const RUN_FOR: Duration = Duration::from_millis(2500);

/// The tests run one at a time: each wants both cores.
static SERIAL: Mutex<()> = Mutex::new(());

const FREE: u8 = 0;
const MAPPED: u8 = 1;
const POISONED: u8 = 2;

thread_local! {
    /// Set in the threads that drive the second device.
    static IS_DEVICE_B: Cell<bool> = const { Cell::new(false) };
}

/// Simulated memory that checks every device access against page states.
struct PoisonMemory {
    inner: SimMemory,
    pages: Vec<AtomicU8>,
    /// The second device's group is detached (set after detach returned).
    b_detached: AtomicBool,
    accesses: AtomicU64,
    violations: AtomicU64,
    first: Mutex<Option<String>>,
}

impl PoisonMemory {
    fn new() -> Self {
        let inner = SimMemory::new();
        inner
            .add_region(BASE, TOTAL_PAGES * PG, PG, Prot::RW)
            .unwrap();
        PoisonMemory {
            inner,
            pages: (0..TOTAL_PAGES).map(|_| AtomicU8::new(FREE)).collect(),
            b_detached: AtomicBool::new(true),
            accesses: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            first: Mutex::new(None),
        }
    }

    fn set(&self, vaddr: u64, pages: u64, state: u8) {
        let first = (vaddr - BASE) / PG;
        for p in first..first + pages {
            self.pages[p as usize].store(state, Ordering::SeqCst);
        }
    }

    fn violation(&self, what: String) {
        self.violations.fetch_add(1, Ordering::SeqCst);
        let mut f = self.first.lock().unwrap();
        if f.is_none() {
            *f = Some(what);
        }
    }

    fn check_now(&self, addr: u64, len: usize, what: &str) {
        if IS_DEVICE_B.with(|b| b.get()) && self.b_detached.load(Ordering::SeqCst) {
            self.violation(format!("{what} by device B at {addr:#x} after its detach"));
        }
        let first = (addr - BASE) / PG;
        let last = (addr + len.max(1) as u64 - 1 - BASE) / PG;
        for p in first..=last {
            let s = self.pages[p as usize].load(Ordering::SeqCst);
            if s != MAPPED {
                self.violation(format!(
                    "{what} of {addr:#x}+{len} hit page {p} in state {s}"
                ));
            }
        }
    }

    /// Device accesses come in through read/write (the VT-d model's
    /// physical memory is this address space): check when the access starts
    /// and when it ends.
    fn check(&self, addr: u64, len: usize, what: &str) {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        self.check_now(addr, len, what);
        for _ in 0..len / 16 {
            std::hint::spin_loop();
        }
        self.check_now(addr, len, what);
    }
}

impl UserMemory for PoisonMemory {
    fn pin(
        &self,
        vaddr: u64,
        len: u64,
        write: bool,
        on_run: &mut dyn FnMut(PinnedRun) -> Result<(), MemError>,
    ) -> Result<(), MemError> {
        self.inner.pin(vaddr, len, write, on_run)
    }
    fn unpin(&self, vaddr: u64, len: u64) {
        self.inner.unpin(vaddr, len)
    }
    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.check(vaddr, buf.len(), "read");
        self.inner.read(vaddr, buf)
    }
    fn write(&self, vaddr: u64, data: &[u8]) -> Result<(), MemError> {
        self.check(vaddr, data.len(), "write");
        self.inner.write(vaddr, data)
    }
    fn lock_policy(&self) -> LockPolicy {
        self.inner.lock_policy()
    }
    fn account(&self) -> &Arc<MmAccount> {
        self.inner.account()
    }
    fn stats(&self) -> PinStats {
        self.inner.stats()
    }
    fn describe(&self) -> String {
        "poison-checking sim memory".into()
    }
}

/// xorshift, enough for picking slots.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn slot_iova(slot: u64) -> u64 {
    IOVA_BASE + slot * SLOT_PAGES * PG
}

fn slot_vaddr(slot: u64, bank: u64) -> u64 {
    BASE + (slot * BANKS + bank) * SLOT_PAGES * PG
}

#[test]
fn no_dma_after_unmap_or_detach_and_no_pin_survives() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mem = Arc::new(PoisonMemory::new());
    let iommu_a = Iommu::new(IommuConfig::default());
    // Snoop control differs: device B gets a domain of its own, so every
    // attach replays the mappings into it.
    let iommu_b = Iommu::new(IommuConfig {
        snoop_control: true,
        ..IommuConfig::default()
    });
    let group_a = vtd_group(3, 0x18, &iommu_a);
    let group_b = vtd_group(4, 0x20, &iommu_b);
    let c = Container::new(ContainerConfig::default(), mem.clone());
    c.attach_group(&group_a).unwrap();
    c.set_iommu(TYPE1V2_IOMMU).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let maps = Arc::new(AtomicU64::new(0));
    let attaches = Arc::new(AtomicU64::new(0));
    let dma_ok = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let dma_fault = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();

    for t in 0..MAPPERS {
        let (c, mem, stop, maps) = (c.clone(), mem.clone(), stop.clone(), maps.clone());
        threads.push(std::thread::spawn(move || {
            let mut rng = 0x9e37_79b9_7f4a_7c15 ^ (t + 1);
            let mut bank = vec![0u64; SLOTS_PER_MAPPER as usize];
            let mut mapped = vec![false; SLOTS_PER_MAPPER as usize];
            while !stop.load(Ordering::Relaxed) {
                let s = next(&mut rng) % SLOTS_PER_MAPPER;
                let slot = t * SLOTS_PER_MAPPER + s;
                let i = s as usize;
                let size = SLOT_PAGES * PG;
                if mapped[i] {
                    let n = c.unmap(slot_iova(slot), size).unwrap();
                    assert_eq!(n, size);
                    // Unmap returned: nothing may reach these pages now.
                    mem.set(slot_vaddr(slot, bank[i]), SLOT_PAGES, POISONED);
                    mapped[i] = false;
                    bank[i] = (bank[i] + 1) % BANKS;
                } else {
                    let v = slot_vaddr(slot, bank[i]);
                    mem.set(v, SLOT_PAGES, MAPPED);
                    c.map(slot_iova(slot), v, size, Prot::RW).unwrap();
                    mapped[i] = true;
                    maps.fetch_add(1, Ordering::Relaxed);
                }
                // The container lock is not fair: let the attach thread in.
                std::thread::sleep(Duration::from_micros(20));
            }
            for (i, m) in mapped.iter().enumerate() {
                if *m {
                    let slot = t * SLOTS_PER_MAPPER + i as u64;
                    c.unmap(slot_iova(slot), SLOT_PAGES * PG).unwrap();
                    mem.set(slot_vaddr(slot, bank[i]), SLOT_PAGES, POISONED);
                }
            }
        }));
    }

    // DMA: one thread per device. More busy threads than cores would make
    // every flush wait for a preempted in-flight DMA (a scheduler timeslice).
    for (n, (iommu, rid, is_b)) in [
        (iommu_a.clone(), 0x18u16, false),
        (iommu_b.clone(), 0x20, true),
    ]
    .into_iter()
    .enumerate()
    {
        let (stop, ok, fault) = (stop.clone(), dma_ok.clone(), dma_fault.clone());
        threads.push(std::thread::spawn(move || {
            IS_DEVICE_B.with(|b| b.set(is_b));
            let port = iommu.dma_port(rid);
            let mut rng = 0x2545_f491_4f6c_dd1d ^ (n as u64 + 7);
            let mut buf = vec![0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                let slot = next(&mut rng) % (MAPPERS * SLOTS_PER_MAPPER);
                let off = next(&mut rng) % (SLOT_PAGES * PG - 256);
                let iova = slot_iova(slot) + off;
                let r = if next(&mut rng).is_multiple_of(2) {
                    port.write(iova, &buf)
                } else {
                    port.read(iova, &mut buf)
                };
                match r {
                    Ok(()) => ok[usize::from(is_b)].fetch_add(1, Ordering::Relaxed),
                    Err(_) => fault.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    // Attach and detach device B's group (a second domain: replay on attach).
    {
        let (c, mem, stop, attaches, group_b) = (
            c.clone(),
            mem.clone(),
            stop.clone(),
            attaches.clone(),
            group_b.clone(),
        );
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                mem.b_detached.store(false, Ordering::SeqCst);
                c.attach_group(&group_b).unwrap();
                attaches.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(300));
                c.detach_group(group_b.id);
                // Detach returned: device B must not reach memory any more.
                mem.b_detached.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(100));
            }
        }));
    }

    // Meanwhile, the accounting always matches the mappings.
    let start = Instant::now();
    while start.elapsed() < RUN_FOR {
        let snap = c.snapshot();
        let pages: u64 = snap.mappings.iter().map(|m| m.size / PG).sum();
        assert_eq!(snap.locked_pages, pages, "accounting vs mappings");
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }

    let first = mem.first.lock().unwrap().clone();
    assert_eq!(
        mem.violations.load(Ordering::SeqCst),
        0,
        "first violation: {first:?}"
    );
    let a_ok = dma_ok[0].load(Ordering::Relaxed);
    let b_ok = dma_ok[1].load(Ordering::Relaxed);
    eprintln!(
        "stress: {} maps, {} attaches of B, DMA ok A {a_ok} B {b_ok}, faults {}, checked accesses {}",
        maps.load(Ordering::Relaxed),
        attaches.load(Ordering::Relaxed),
        dma_fault.load(Ordering::Relaxed),
        mem.accesses.load(Ordering::Relaxed),
    );
    assert!(
        maps.load(Ordering::Relaxed) > 50,
        "too few maps to mean much"
    );
    assert!(a_ok > 100 && b_ok > 0, "too little DMA landed");
    assert!(attaches.load(Ordering::Relaxed) > 5);

    assert!(c.snapshot().mappings.is_empty());
    assert_eq!(mem.stats().pin_refs, 0, "pins survived");
    assert_eq!(mem.account().locked_pages(), 0, "accounting survived");
    c.detach_group(group_a.id);
    assert!(!c.iommu_set());
    assert!(iommu_a.devices().is_empty() && iommu_b.devices().is_empty());
}

/// Several containers on one address space (one `mm`) map and unmap in
/// parallel under a locked-memory limit: together they never exceed it,
/// ENOMEM is the only refusal, and everything is released at the end.
#[test]
fn concurrent_containers_respect_the_shared_lock_limit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const LIMIT: u64 = 64;
    const THREADS: u64 = 4;
    let sim = SimMemory::new();
    sim.add_region(BASE, 512 * PG, PG, Prot::RW).unwrap();
    sim.set_lock_policy(LockPolicy {
        cap_ipc_lock: false,
        limit_pages: LIMIT,
    });
    let mem: Arc<SimMemory> = Arc::new(sim);
    let over = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut containers = Vec::new();
    for t in 0..THREADS {
        let iommu = Iommu::new(IommuConfig::default());
        let group = vtd_group(10 + t as u32, 0x18, &iommu);
        let c = Container::new(ContainerConfig::default(), mem.clone());
        c.attach_group(&group).unwrap();
        c.set_iommu(TYPE1V2_IOMMU).unwrap();
        containers.push((c.clone(), group));
        let (mem, stop) = (mem.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut rng = 77 + t;
            let mut refused = 0u64;
            let mut mapped = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if mapped.len() < 8 && !next(&mut rng).is_multiple_of(3) {
                    let pages = 1 + next(&mut rng) % 16;
                    let iova = 0x100_0000 + mapped.len() as u64 * 0x10_0000;
                    let vaddr = BASE + (t * 128 + (next(&mut rng) % 100)) * PG;
                    match c.map(iova, vaddr, pages * PG, Prot::RW) {
                        Ok(()) => mapped.push((iova, pages)),
                        Err(e) => {
                            assert_eq!(e.errno(), libc::ENOMEM, "{e}");
                            refused += 1;
                        }
                    }
                } else if let Some((iova, pages)) = mapped.pop() {
                    assert_eq!(c.unmap(iova, pages * PG).unwrap(), pages * PG);
                }
                assert!(mem.account().locked_pages() <= LIMIT);
            }
            c.unmap_all().unwrap();
            refused
        }));
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1000) {
        if mem.account().locked_pages() > LIMIT {
            over.store(true, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    stop.store(true, Ordering::SeqCst);
    let refused: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(
        !over.load(Ordering::SeqCst),
        "the shared limit was exceeded"
    );
    assert!(
        refused > 0,
        "the limit was never reached: the test is too weak"
    );
    for (c, g) in containers {
        c.detach_group(g.id);
    }
    assert_eq!(mem.stats().pin_refs, 0);
    assert_eq!(mem.account().locked_pages(), 0);
}
