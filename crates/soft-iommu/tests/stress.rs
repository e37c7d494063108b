//! Device DMA from several threads while another thread maps, unmaps and
//! flushes the same domain. After each unmap + flush returns, the old target
//! pages are poisoned; any access that lands in a poisoned page afterwards is
//! a violation of the flush contract.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use soft_iommu::{Iommu, IommuConfig, MemFault, PhysMemory, Prot, SIZE_2M, SIZE_4K};
use vm_memory::{GuestAddress, Iommu as _, Permissions};

const PHYS_PAGES: u64 = 1 << 23;
const UNUSED: u8 = 0;
const MAPPED: u8 = 1;
const POISONED: u8 = 2;

/// Memory that only checks: every page touched must be mapped (not yet
/// unmapped-and-flushed).
struct PoisonCheckingMemory {
    state: Vec<AtomicU8>,
    accesses: AtomicU64,
    violations: AtomicU64,
    first_violation: Mutex<Option<String>>,
}

impl PoisonCheckingMemory {
    fn new() -> Self {
        PoisonCheckingMemory {
            state: (0..PHYS_PAGES).map(|_| AtomicU8::new(UNUSED)).collect(),
            accesses: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            first_violation: Mutex::new(None),
        }
    }

    fn set(&self, first_page: u64, pages: u64, state: u8) {
        for p in first_page..first_page + pages {
            self.state[p as usize].store(state, Ordering::SeqCst);
        }
    }

    /// Checks the pages when the access starts and again when it ends: a
    /// page poisoned in between was unmapped and flushed while the access
    /// was still in flight.
    fn check(&self, phys: u64, len: usize, what: &str) -> Result<(), MemFault> {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        self.check_now(phys, len, what)?;
        // The time the copy takes.
        for _ in 0..len / 16 {
            std::hint::spin_loop();
        }
        self.check_now(phys, len, what)
    }

    fn check_now(&self, phys: u64, len: usize, what: &str) -> Result<(), MemFault> {
        let first = phys / SIZE_4K;
        let last = (phys + len.max(1) as u64 - 1) / SIZE_4K;
        for p in first..=last {
            let s = self
                .state
                .get(p as usize)
                .map(|s| s.load(Ordering::SeqCst))
                .unwrap_or(UNUSED);
            if s != MAPPED {
                self.violations.fetch_add(1, Ordering::SeqCst);
                let mut first = self.first_violation.lock().unwrap();
                if first.is_none() {
                    *first = Some(format!(
                        "{what} of {phys:#x}+{len} hit page {p:#x} in state {s}"
                    ));
                }
                return Err(MemFault { phys });
            }
        }
        Ok(())
    }
}

impl PhysMemory for PoisonCheckingMemory {
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        self.check(phys, buf.len(), "read")
    }
    fn write(&self, phys: u64, data: &[u8]) -> Result<(), MemFault> {
        self.check(phys, data.len(), "write")
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const RID: u16 = 0x18;
const SMALL_BASE: u64 = 0x1000_0000;
const SMALL_SLOTS: u64 = 64;
const BIG_BASE: u64 = 0x4000_0000;
const BIG_REGIONS: u64 = 6;

fn random_iova(rng: &mut Rng) -> u64 {
    if rng.below(2) == 0 {
        SMALL_BASE + rng.below(SMALL_SLOTS * SIZE_4K)
    } else {
        BIG_BASE + rng.below(BIG_REGIONS * SIZE_2M)
    }
}

#[test]
fn no_dma_lands_in_a_page_after_its_unmap_and_flush() {
    let unit = Iommu::new(IommuConfig {
        iotlb_capacity: 256,
        ..IommuConfig::default()
    });
    let mem = Arc::new(PoisonCheckingMemory::new());
    let domain = unit.create_domain(mem.clone()).unwrap();
    unit.attach_device(RID, &domain).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let dma_ok = Arc::new(AtomicU64::new(0));
    let dma_faults = Arc::new(AtomicU64::new(0));

    let mut workers = Vec::new();
    for t in 0..3u64 {
        let unit = unit.clone();
        let stop = stop.clone();
        let ok = dma_ok.clone();
        let faults = dma_faults.clone();
        workers.push(std::thread::spawn(move || {
            let port = unit.dma_port(RID);
            let mut rng = Rng(0x1234_5678_9abc_def1 ^ (t << 32));
            let mut buf = vec![0u8; 6000];
            while !stop.load(Ordering::Relaxed) {
                let iova = random_iova(&mut rng);
                let len = 1 + rng.below(6000) as usize;
                let r = if rng.below(2) == 0 {
                    port.read(iova, &mut buf[..len])
                } else {
                    port.write(iova, &buf[..len])
                };
                let n = match r {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => faults.fetch_add(1, Ordering::Relaxed),
                };
                // Devices work in bursts; with more threads than cores, a
                // thread preempted inside a DMA makes flushes wait for it.
                if n % 64 == 0 {
                    std::thread::yield_now();
                }
            }
        }));
    }
    // One device model behind vm-memory's trait, touching memory while it
    // holds the translation (as IommuMemory does).
    {
        let unit = unit.clone();
        let stop = stop.clone();
        let ok = dma_ok.clone();
        let mem = mem.clone();
        workers.push(std::thread::spawn(move || {
            let view = unit.vm_iommu(RID);
            let mut rng = Rng(0xfeed_f00d_dead_beef);
            while !stop.load(Ordering::Relaxed) {
                let iova = random_iova(&mut rng);
                let len = 1 + rng.below(8192) as usize;
                let access = if rng.below(2) == 0 {
                    Permissions::Read
                } else {
                    Permissions::Write
                };
                if let Ok(ranges) = view.translate(GuestAddress(iova), len, access) {
                    for r in ranges {
                        let _ = mem.check(r.base.0, r.length, "vm-memory access");
                    }
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::yield_now();
            }
        }));
    }

    // The mapper.
    let mut rng = Rng(0x0bad_cafe_1234_4321);
    let mut next_page = 0u64;
    let mut alloc = |pages: u64, align: u64| -> Option<u64> {
        let first = next_page.div_ceil(align) * align;
        if first + pages > PHYS_PAGES {
            return None;
        }
        next_page = first + pages;
        Some(first)
    };
    let mut small: Vec<Option<u64>> = vec![None; SMALL_SLOTS as usize];
    // (first phys page, pages used)
    let mut big: Vec<Option<(u64, u64)>> = vec![None; BIG_REGIONS as usize];
    let started = Instant::now();
    let deadline = started + Duration::from_millis(1500);
    let mut ops = 0u64;
    let mut super_maps = 0u64;
    'outer: while Instant::now() < deadline {
        ops += 1;
        // Leave the devices some CPU on a small machine.
        std::thread::yield_now();
        match rng.below(10) {
            0..=5 => {
                let i = rng.below(SMALL_SLOTS) as usize;
                let iova = SMALL_BASE + i as u64 * SIZE_4K;
                match small[i].take() {
                    Some(page) => {
                        assert_eq!(domain.unmap(iova, SIZE_4K), SIZE_4K);
                        domain.flush_range(iova, SIZE_4K);
                        mem.set(page, 1, POISONED);
                    }
                    None => {
                        let Some(page) = alloc(1, 1) else {
                            break 'outer;
                        };
                        mem.set(page, 1, MAPPED);
                        domain.map(iova, page * SIZE_4K, SIZE_4K, Prot::RW).unwrap();
                        small[i] = Some(page);
                    }
                }
            }
            6..=8 => {
                let j = rng.below(BIG_REGIONS) as usize;
                let iova = BIG_BASE + j as u64 * SIZE_2M;
                match big[j].take() {
                    Some((first, pages)) => {
                        assert_eq!(domain.unmap(iova, SIZE_2M), SIZE_2M);
                        if rng.below(4) == 0 {
                            domain.flush_all();
                        } else {
                            domain.flush_range(iova, SIZE_2M);
                        }
                        mem.set(first, pages, POISONED);
                    }
                    None => {
                        // A 2M leaf, or 512 4K leaves (phys off by one page).
                        let as_super = rng.below(2) == 0;
                        let Some(aligned) = alloc(513, 512) else {
                            break 'outer;
                        };
                        let first = if as_super { aligned } else { aligned + 1 };
                        mem.set(first, 512, MAPPED);
                        domain
                            .map(iova, first * SIZE_4K, SIZE_2M, Prot::RW)
                            .unwrap();
                        super_maps += u64::from(as_super);
                        big[j] = Some((first, 512));
                    }
                }
            }
            _ => {
                domain.read_and_clear_dirty(SMALL_BASE, SMALL_SLOTS * SIZE_4K, &mut |_| {});
                domain.read_and_clear_dirty(BIG_BASE, BIG_REGIONS * SIZE_2M, &mut |_| {});
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }

    let violations = mem.violations.load(Ordering::SeqCst);
    assert_eq!(
        violations,
        0,
        "{violations} accesses after flush; first: {:?}",
        mem.first_violation.lock().unwrap()
    );
    let ok = dma_ok.load(Ordering::Relaxed);
    let faults = dma_faults.load(Ordering::Relaxed);
    eprintln!(
        "{:?}: mapper ops {ops} ({super_maps} super-page maps), DMA ok {ok}, faulted {faults}, memory accesses {}, tables {:?}",
        started.elapsed(),
        mem.accesses.load(Ordering::Relaxed),
        domain.table_stats()
    );
    assert!(ops > 100, "mapper made too little progress: {ops}");
    assert!(ok > 100 && faults > 100, "ok {ok} faults {faults}");
    // The tables still describe exactly what the mapper believes is mapped.
    for (i, page) in small.iter().enumerate() {
        let iova = SMALL_BASE + i as u64 * SIZE_4K;
        assert_eq!(domain.iova_to_phys(iova), page.map(|p| p * SIZE_4K));
    }
    for (j, region) in big.iter().enumerate() {
        let iova = BIG_BASE + j as u64 * SIZE_2M + 0x1234;
        assert_eq!(
            domain.iova_to_phys(iova),
            region.map(|(first, _)| first * SIZE_4K + 0x1234)
        );
    }
    // Super pages replaced emptied tables, which were recycled after flushes.
    let tables = domain.table_stats();
    assert!(tables.allocated < 64, "{tables:?}");
}
