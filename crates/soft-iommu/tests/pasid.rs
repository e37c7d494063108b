//! Requests with PASID: process bonds, guest PASID tables with nested
//! translation, IOTLB caching of nested translations and invalidation.

use std::sync::Arc;

use soft_iommu::pasid::{
    FIRST_PASID, GPTE_PAGE_SIZE, GPTE_PRESENT, GPTE_WRITE, MAX_BONDS_PER_DEVICE,
};
use soft_iommu::{
    Access, DmaRequest, FaultReason, Granularity, Iommu, IommuConfig, MemFault, NestedInvalidation,
    PasidError, PasidRelease, PhysMemory, Prot, VecMemory,
};

/// Memory with a read-only window, as a process with a PROT_READ mapping.
struct ProcessMemory {
    inner: VecMemory,
    ro: std::ops::Range<u64>,
}

impl PhysMemory for ProcessMemory {
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        self.inner.read(phys, buf)
    }
    fn write(&self, phys: u64, data: &[u8]) -> Result<(), MemFault> {
        let end = phys + data.len() as u64;
        if phys < self.ro.end && end > self.ro.start {
            return Err(MemFault { phys });
        }
        self.inner.write(phys, data)
    }
}

fn process(base: u64, len: usize) -> Arc<ProcessMemory> {
    Arc::new(ProcessMemory {
        inner: VecMemory::new(base, len),
        ro: base + 0x2000..base + 0x3000,
    })
}

#[test]
fn process_bond_dma_and_faults_with_pasid() {
    let unit = Iommu::new(IommuConfig::default());
    let mem = process(0x7f00_0000_0000, 0x4000);
    let pasid = unit.bind_pasid(0x18, mem.clone()).unwrap();
    assert_eq!(pasid, FIRST_PASID);
    let port = unit.dma_port(0x18);
    // Crosses a page; lands at the process virtual address itself.
    port.write_pasid(pasid, 0x7f00_0000_0ffe, b"hello").unwrap();
    let mut out = [0u8; 5];
    mem.read(0x7f00_0000_0ffe, &mut out).unwrap();
    assert_eq!(&out, b"hello");
    let mut back = [0u8; 5];
    port.read_pasid(pasid, 0x7f00_0000_0ffe, &mut back).unwrap();
    assert_eq!(&back, b"hello");
    let t = port
        .translate_request(DmaRequest {
            iova: 0x7f00_0000_0123,
            access: Access::Read,
            pasid: Some(pasid),
        })
        .unwrap();
    assert_eq!(t.phys, 0x7f00_0000_0123);
    assert!(unit.faults().is_empty());

    // Write to read-only memory: NoWrite; unmapped: NotPresent; both with the PASID.
    let f = port.write_pasid(pasid, 0x7f00_0000_2800, &[1]).unwrap_err();
    assert_eq!(
        (f.reason, f.pasid, f.iova),
        (FaultReason::NoWrite, Some(1), 0x7f00_0000_2800)
    );
    let f = port
        .read_pasid(pasid, 0x7f00_0000_4000, &mut [0; 4])
        .unwrap_err();
    assert_eq!((f.reason, f.pasid), (FaultReason::NotPresent, Some(1)));
    // A run off the end: the bytes before the fault were written.
    let f = port
        .write_pasid(pasid, 0x7f00_0000_3ffe, &[9, 9, 9, 9])
        .unwrap_err();
    assert_eq!(f.iova, 0x7f00_0000_4000);
    let mut two = [0u8; 2];
    mem.read(0x7f00_0000_3ffe, &mut two).unwrap();
    assert_eq!(two, [9, 9]);
    // A PASID nothing is bound to.
    let f = port
        .read_pasid(7, 0x7f00_0000_0000, &mut [0; 4])
        .unwrap_err();
    assert_eq!((f.reason, f.pasid), (FaultReason::PasidNotPresent, Some(7)));
    let logged: Vec<(FaultReason, Option<u32>)> = unit
        .take_faults()
        .iter()
        .map(|f| (f.reason, f.pasid))
        .collect();
    assert_eq!(
        logged,
        vec![
            (FaultReason::NoWrite, Some(1)),
            (FaultReason::NotPresent, Some(1)),
            (FaultReason::NotPresent, Some(1)),
            (FaultReason::PasidNotPresent, Some(7)),
        ]
    );

    // After unbind the PASID faults.
    unit.unbind_pasid(0x18, pasid, PasidRelease::Clean).unwrap();
    let f = port
        .read_pasid(pasid, 0x7f00_0000_0000, &mut [0; 4])
        .unwrap_err();
    assert_eq!(f.reason, FaultReason::PasidNotPresent);
}

#[test]
fn release_modes_and_reuse() {
    let unit = Iommu::new(IommuConfig::default());
    let mem: Arc<dyn PhysMemory> = Arc::new(VecMemory::new(0, 0x1000));
    let rid = 0x18;
    let p: Vec<u32> = (0..4)
        .map(|_| unit.bind_pasid(rid, mem.clone()).unwrap())
        .collect();
    assert_eq!(p, vec![1, 2, 3, 4]);
    // CLEAN: reusable at once (lowest free first).
    unit.unbind_pasid(rid, 2, PasidRelease::Clean).unwrap();
    assert_eq!(unit.bind_pasid(rid, mem.clone()).unwrap(), 2);
    // FLUSHED: reusable too.
    unit.unbind_pasid(rid, 3, PasidRelease::Flushed).unwrap();
    assert_eq!(unit.bind_pasid(rid, mem.clone()).unwrap(), 3);
    // Neither: never reused.
    unit.unbind_pasid(rid, 1, PasidRelease::Retire).unwrap();
    assert_eq!(unit.retired_pasids(rid), vec![1]);
    assert_eq!(unit.bind_pasid(rid, mem.clone()).unwrap(), 5);
    assert_eq!(unit.pasid_bonds(rid), vec![2, 3, 4, 5]);
    // Unbinding what is not bound (again, or retired) fails, changes nothing.
    assert_eq!(
        unit.unbind_pasid(rid, 1, PasidRelease::Clean),
        Err(PasidError::NotBound(1))
    );
    assert_eq!(
        unit.unbind_pasid(rid, 99, PasidRelease::Clean),
        Err(PasidError::NotBound(99))
    );
    assert_eq!(unit.pasid_bonds(rid), vec![2, 3, 4, 5]);
    // Closing the device ends every bond; retired PASIDs stay retired.
    unit.release_pasids(rid);
    assert!(unit.pasid_bonds(rid).is_empty());
    assert_eq!(unit.bind_pasid(rid, mem.clone()).unwrap(), 2);
    unit.release_pasids(rid);

    // The bond count is bounded.
    for i in 0..MAX_BONDS_PER_DEVICE {
        assert_eq!(unit.bind_pasid(rid, mem.clone()).unwrap(), i as u32 + 2);
    }
    assert_eq!(unit.bind_pasid(rid, mem.clone()), Err(PasidError::NoSpace));
    unit.release_pasids(rid);
}

#[test]
fn two_devices_have_independent_pasids() {
    let unit = Iommu::new(IommuConfig::default());
    let a = Arc::new(VecMemory::new(0x1000, 0x1000));
    let b = Arc::new(VecMemory::new(0x1000, 0x1000));
    assert_eq!(unit.bind_pasid(0x18, a.clone()).unwrap(), 1);
    assert_eq!(unit.bind_pasid(0x20, b.clone()).unwrap(), 1);
    unit.dma_port(0x18).write_pasid(1, 0x1010, b"A").unwrap();
    unit.dma_port(0x20).write_pasid(1, 0x1010, b"B").unwrap();
    let mut x = [0u8; 1];
    a.read(0x1010, &mut x).unwrap();
    assert_eq!(&x, b"A");
    b.read(0x1010, &mut x).unwrap();
    assert_eq!(&x, b"B");
    unit.unbind_pasid(0x18, 1, PasidRelease::Retire).unwrap();
    // Retiring on one device does not touch the other's.
    assert_eq!(unit.bind_pasid(0x18, a.clone()).unwrap(), 2);
    assert_eq!(unit.bind_pasid(0x20, b.clone()).unwrap(), 2);
    assert!(unit.dma_port(0x20).write_pasid(1, 0x1010, b"C").is_ok());
}

// ---- guest PASID tables (virtual SVM) ---------------------------------------------

/// IOVA base of the guest's memory (mapped to physical 0).
const BASE: u64 = 0x4000_0000;
const PASID_TABLE: u64 = BASE;
const PML4: u64 = BASE + 0x1000;
const PDPT: u64 = BASE + 0x2000;
const PD: u64 = BASE + 0x3000;
const PT: u64 = BASE + 0x4000;
/// 4K data pages and a 2M data page (IOVA).
const DATA_A: u64 = BASE + 0x10_0000;
const DATA_B: u64 = BASE + 0x10_1000;
const DATA_RO: u64 = BASE + 0x10_2000;
const DATA_2M: u64 = BASE + 0x20_0000;
/// Guest virtual addresses: 4K pages at VA_4K (PT index 0, 1, 2) and a 2M
/// page at VA_2M, all under one PDPT/PD.
const VA_4K: u64 = 0x7f12_0000_0000;
const VA_2M: u64 = VA_4K + 0x20_0000;

struct Guest {
    unit: Arc<Iommu>,
    domain: Arc<soft_iommu::Domain>,
    mem: Arc<VecMemory>,
    rid: u16,
}

impl Guest {
    fn new() -> Guest {
        let unit = Iommu::new(IommuConfig::default());
        let mem = Arc::new(VecMemory::new(0, 0x80_0000));
        let domain = unit.create_domain(mem.clone()).unwrap();
        domain.map(BASE, 0, 0x80_0000, Prot::RW).unwrap();
        let rid = 0x18;
        unit.attach_device(rid, &domain).unwrap();
        let g = Guest {
            unit,
            domain,
            mem,
            rid,
        };
        let idx = |va: u64, level: u32| (va >> (12 + 9 * (level - 1))) & 0x1ff;
        g.put(PML4 + idx(VA_4K, 4) * 8, PDPT | GPTE_PRESENT | GPTE_WRITE);
        g.put(PDPT + idx(VA_4K, 3) * 8, PD | GPTE_PRESENT | GPTE_WRITE);
        g.put(PD + idx(VA_4K, 2) * 8, PT | GPTE_PRESENT | GPTE_WRITE);
        g.put(PT, DATA_A | GPTE_PRESENT | GPTE_WRITE);
        g.put(PT + 8, DATA_B | GPTE_PRESENT | GPTE_WRITE);
        g.put(PT + 16, DATA_RO | GPTE_PRESENT);
        g.put(
            PD + idx(VA_2M, 2) * 8,
            DATA_2M | GPTE_PRESENT | GPTE_WRITE | GPTE_PAGE_SIZE,
        );
        // PASID 1 and 3 use the table; 2 is not present.
        g.put(PASID_TABLE + 8, PML4 | 1);
        g.put(PASID_TABLE + 24, PML4 | 1);
        g.unit.bind_guest_pasid_table(rid, PASID_TABLE, 8).unwrap();
        g
    }

    /// Writes a guest u64 at IOVA `iova`.
    fn put(&self, iova: u64, v: u64) {
        self.mem.write(iova - BASE, &v.to_le_bytes()).unwrap();
    }

    fn fill(&self, iova: u64, byte: u8, len: usize) {
        self.mem.write(iova - BASE, &vec![byte; len]).unwrap();
    }

    fn get(&self, iova: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read(iova - BASE, &mut v).unwrap();
        v
    }

    fn read(&self, pasid: u32, va: u64, len: usize) -> Result<Vec<u8>, soft_iommu::Fault> {
        let mut v = vec![0; len];
        self.unit.dma_port(self.rid).read_pasid(pasid, va, &mut v)?;
        Ok(v)
    }

    fn inv(&self, iotlb: bool, pasid_cache: bool, granularity: Granularity) {
        self.unit
            .invalidate_nested(
                self.rid,
                NestedInvalidation {
                    iotlb,
                    pasid_cache,
                    granularity,
                },
            )
            .unwrap();
    }
}

#[test]
fn nested_translation_with_4k_and_2m_guest_pages() {
    let g = Guest::new();
    let port = g.unit.dma_port(g.rid);
    // 4K page: crosses from VA page 0 (DATA_A) into VA page 1 (DATA_B).
    port.write_pasid(1, VA_4K + 0xffe, b"nest").unwrap();
    assert_eq!(g.get(DATA_A + 0xffe, 2), b"ne");
    assert_eq!(g.get(DATA_B, 2), b"st");
    // 2M page, far into it.
    port.write_pasid(3, VA_2M + 0x1_2345, b"big").unwrap();
    assert_eq!(g.get(DATA_2M + 0x1_2345, 3), b"big");
    let t = port
        .translate_request(DmaRequest {
            iova: VA_2M + 0x1_2345,
            access: Access::Read,
            pasid: Some(3),
        })
        .unwrap();
    // Guest 2M page over a 2M second-level page: one 2M nested entry,
    // served from the IOTLB after the write filled it.
    assert_eq!(
        (t.page_size, t.phys, t.cached),
        (0x20_0000, 0x20_0000 + 0x1_2345, true)
    );
    let nested: Vec<_> = g
        .unit
        .iotlb_entries()
        .into_iter()
        .filter(|e| e.pasid.is_some())
        .collect();
    assert!(nested
        .iter()
        .any(|e| e.pasid == Some(3) && e.iova == VA_2M && e.page_size == 0x20_0000));
    assert!(nested.iter().any(|e| e.pasid == Some(1)
        && e.iova == VA_4K
        && e.page_size == 0x1000
        && e.phys == 0x10_0000));
    assert_eq!(g.read(1, VA_4K + 0xffe, 4).unwrap(), b"nest");
    assert!(g.unit.faults().is_empty());
}

#[test]
fn nested_faults_are_recorded_with_the_pasid() {
    let g = Guest::new();
    let port = g.unit.dma_port(g.rid);
    let idx4 = (VA_4K >> 39) & 0x1ff;
    // Not-present guest PTE (PT index 3).
    let f = g.read(1, VA_4K + 0x3000, 4).unwrap_err();
    assert_eq!(
        (f.reason, f.pasid, f.iova),
        (FaultReason::NotPresent, Some(1), VA_4K + 0x3000)
    );
    // Read-only guest page: reads work, writes fault.
    assert!(g.read(1, VA_4K + 0x2000, 4).is_ok());
    let f = port.write_pasid(1, VA_4K + 0x2000, &[1]).unwrap_err();
    assert_eq!(f.reason, FaultReason::NoWrite);
    // PASID entry not present / beyond the table.
    assert_eq!(
        g.read(2, VA_4K, 4).unwrap_err().reason,
        FaultReason::PasidNotPresent
    );
    assert_eq!(
        g.read(8, VA_4K, 4).unwrap_err().reason,
        FaultReason::PasidNotPresent
    );
    // Malformed: PS in a PML4 entry (PASID 4 → its own PML4 at DATA_B).
    g.put(PASID_TABLE + 32, DATA_B | 1);
    g.put(DATA_B + idx4 * 8, PDPT | GPTE_PRESENT | GPTE_PAGE_SIZE);
    assert_eq!(
        g.read(4, VA_4K, 4).unwrap_err().reason,
        FaultReason::InvalidEntry
    );
    // Malformed: a 2M entry with reserved address bits (PASID 5).
    g.put(PASID_TABLE + 40, PML4 | 1);
    g.put(PD + ((VA_2M >> 21) & 0x1ff) * 8, (DATA_2M + 0x2000) | 0x83);
    assert_eq!(
        g.read(5, VA_2M, 4).unwrap_err().reason,
        FaultReason::InvalidEntry
    );
    // A guest table at an IOVA the second level does not map (PASID 6).
    g.put(PASID_TABLE + 48, 0x7000_0000 | 1);
    assert_eq!(
        g.read(6, VA_4K, 4).unwrap_err().reason,
        FaultReason::GuestTableNotReachable
    );
    // A guest page at an IOVA the second level does not map (PASID 7).
    g.put(PASID_TABLE + 56, DATA_A | 1); // its own PML4 page...
    g.fill(DATA_A, 0, 0x1000);
    g.put(DATA_A + idx4 * 8, PDPT | GPTE_PRESENT | GPTE_WRITE);
    g.put(PT + 8 * 4, 0x7000_0000 | GPTE_PRESENT); // VA page 4 → unmapped IOVA
    let f = g.read(7, VA_4K + 0x4000, 4).unwrap_err();
    assert_eq!((f.reason, f.pasid), (FaultReason::NotPresent, Some(7)));
    let reasons: Vec<(FaultReason, Option<u32>)> = g
        .unit
        .take_faults()
        .iter()
        .map(|f| (f.reason, f.pasid))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (FaultReason::NotPresent, Some(1)),
            (FaultReason::NoWrite, Some(1)),
            (FaultReason::PasidNotPresent, Some(2)),
            (FaultReason::PasidNotPresent, Some(8)),
            (FaultReason::InvalidEntry, Some(4)),
            (FaultReason::InvalidEntry, Some(5)),
            (FaultReason::GuestTableNotReachable, Some(6)),
            (FaultReason::NotPresent, Some(7)),
        ]
    );
}

/// Points VA page 0 of PASID 1 at DATA_B instead of DATA_A.
fn retarget(g: &Guest) {
    g.fill(DATA_A, 0xaa, 16);
    g.fill(DATA_B, 0xbb, 16);
    assert_eq!(g.read(1, VA_4K, 4).unwrap(), vec![0xaa; 4]);
    assert_eq!(g.read(3, VA_4K, 4).unwrap(), vec![0xaa; 4]);
    g.put(PT, DATA_B | GPTE_PRESENT | GPTE_WRITE);
    // Stale: the IOTLB still has the nested translation.
    assert_eq!(g.read(1, VA_4K, 4).unwrap(), vec![0xaa; 4]);
    assert_eq!(g.read(3, VA_4K, 4).unwrap(), vec![0xaa; 4]);
}

#[test]
fn stale_until_global_invalidation() {
    let g = Guest::new();
    retarget(&g);
    // PASID-cache-only invalidation does not touch the IOTLB.
    g.inv(false, true, Granularity::Global);
    assert_eq!(g.read(1, VA_4K, 4).unwrap(), vec![0xaa; 4]);
    g.inv(true, false, Granularity::Global);
    assert_eq!(g.read(1, VA_4K, 4).unwrap(), vec![0xbb; 4]);
    assert_eq!(g.read(3, VA_4K, 4).unwrap(), vec![0xbb; 4]);
}

#[test]
fn stale_until_pasid_selective_invalidation() {
    let g = Guest::new();
    retarget(&g);
    g.inv(true, false, Granularity::Pasid(3));
    assert_eq!(g.read(3, VA_4K, 4).unwrap(), vec![0xbb; 4]);
    // PASID 1 still has its stale entry.
    assert_eq!(g.read(1, VA_4K, 4).unwrap(), vec![0xaa; 4]);
    g.inv(true, false, Granularity::Pasid(1));
    assert_eq!(g.read(1, VA_4K, 4).unwrap(), vec![0xbb; 4]);
}

#[test]
fn stale_until_page_selective_invalidation() {
    let g = Guest::new();
    retarget(&g);
    // Another page of the same PASID: no effect.
    g.inv(
        true,
        false,
        Granularity::Page {
            pasid: 1,
            addr: VA_4K + 0x1000,
            size: 0x1000,
        },
    );
    assert_eq!(g.read(1, VA_4K, 4).unwrap(), vec![0xaa; 4]);
    g.inv(
        true,
        false,
        Granularity::Page {
            pasid: 1,
            addr: VA_4K,
            size: 0x1000,
        },
    );
    assert_eq!(g.read(1, VA_4K, 4).unwrap(), vec![0xbb; 4]);
    // PASID 3's entry for the same page is still stale.
    assert_eq!(g.read(3, VA_4K, 4).unwrap(), vec![0xaa; 4]);
    assert_eq!(
        g.unit.invalidate_nested(
            g.rid,
            NestedInvalidation {
                iotlb: true,
                pasid_cache: false,
                granularity: Granularity::Page {
                    pasid: 3,
                    addr: VA_4K,
                    size: 0
                }
            }
        ),
        Err(PasidError::Invalid("page-selective invalidation of size 0"))
    );
}

#[test]
fn pasid_entry_change_needs_a_pasid_cache_invalidation() {
    let g = Guest::new();
    g.fill(DATA_A, 0xaa, 16);
    assert_eq!(g.read(1, VA_4K, 4).unwrap(), vec![0xaa; 4]);
    assert_eq!(g.unit.pasid_cache_entries(g.rid), 1);
    // PASID 1 now names an empty PML4: stale until PASID cache + IOTLB.
    g.fill(DATA_RO, 0, 0x1000);
    g.put(PASID_TABLE + 8, DATA_RO | 1);
    g.inv(true, false, Granularity::Pasid(1));
    assert_eq!(g.read(1, VA_4K, 4).unwrap(), vec![0xaa; 4]);
    g.inv(true, true, Granularity::Pasid(1));
    assert_eq!(g.unit.pasid_cache_entries(g.rid), 0);
    assert_eq!(
        g.read(1, VA_4K, 4).unwrap_err().reason,
        FaultReason::NotPresent
    );
}

#[test]
fn second_level_unmap_drops_nested_entries() {
    let g = Guest::new();
    g.fill(DATA_2M, 0x22, 16);
    assert_eq!(g.read(3, VA_2M, 4).unwrap(), vec![0x22; 4]);
    assert_eq!(g.domain.unmap(DATA_2M, 0x20_0000), 0x20_0000);
    g.domain.flush_range(DATA_2M, 0x20_0000);
    let f = g.read(3, VA_2M, 4).unwrap_err();
    assert_eq!((f.reason, f.pasid), (FaultReason::NotPresent, Some(3)));
}

#[test]
fn guest_table_bind_rules() {
    let g = Guest::new();
    let unit = &g.unit;
    // Already bound; process binds refused while it is.
    assert!(matches!(
        unit.bind_guest_pasid_table(g.rid, PASID_TABLE, 8),
        Err(PasidError::Busy(_))
    ));
    assert!(matches!(
        unit.bind_pasid(g.rid, g.mem.clone()),
        Err(PasidError::Busy(_))
    ));
    unit.unbind_guest_pasid_table(g.rid).unwrap();
    assert_eq!(
        unit.unbind_guest_pasid_table(g.rid),
        Err(PasidError::NotBound(0))
    );
    assert_eq!(
        g.read(1, VA_4K, 4).unwrap_err().reason,
        FaultReason::PasidNotPresent
    );
    assert!(matches!(
        unit.bind_guest_pasid_table(g.rid, PASID_TABLE, 0),
        Err(PasidError::Invalid(_))
    ));
    assert!(matches!(
        unit.bind_guest_pasid_table(g.rid, PASID_TABLE + 8, 8),
        Err(PasidError::Invalid(_))
    ));
    assert!(matches!(
        unit.bind_guest_pasid_table(g.rid, PASID_TABLE, (1 << 20) + 1),
        Err(PasidError::Invalid(_))
    ));
    // The table runs past the mapped 8 MiB.
    assert_eq!(
        unit.bind_guest_pasid_table(g.rid, BASE + 0x7f_f000, 1024),
        Err(PasidError::TableNotMapped {
            iova: BASE + 0x80_0000
        })
    );
    assert_eq!(
        unit.bind_guest_pasid_table(0x99, PASID_TABLE, 8),
        Err(PasidError::NoDevice(0x99))
    );
    assert_eq!(unit.guest_pasid_table(g.rid), None);
    unit.bind_guest_pasid_table(g.rid, PASID_TABLE, 8).unwrap();
    assert_eq!(unit.guest_pasid_table(g.rid), Some((PASID_TABLE, 8)));
    assert!(g.read(1, VA_4K, 4).is_ok());
    // Closing the device drops it.
    unit.release_pasids(g.rid);
    assert_eq!(unit.guest_pasid_table(g.rid), None);
    assert!(unit.iotlb_entries().iter().all(|e| e.pasid.is_none()));
}

#[test]
fn concurrent_nested_dma_and_invalidation() {
    // A device thread keeps reading through PASID 1 while the guest flips
    // the PTE between two pages and invalidates: after each invalidation
    // returns, the next read sees the new page.
    let g = Arc::new(Guest::new());
    g.fill(DATA_A, 0xaa, 16);
    g.fill(DATA_B, 0xbb, 16);
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let dev = {
        let g = g.clone();
        let stop = stop.clone();
        let reads = reads.clone();
        std::thread::spawn(move || {
            let port = g.unit.dma_port(g.rid);
            while !stop.load(Ordering::Relaxed) {
                let mut b = [0u8; 4];
                port.read_pasid(1, VA_4K, &mut b).unwrap();
                assert!(b == [0xaa; 4] || b == [0xbb; 4]);
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // On a loaded machine the device thread may start late: flip until it
    // has really run alongside (bounded in time).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut i = 0u64;
    while i < 200 || (reads.load(Ordering::Relaxed) < 1000 && std::time::Instant::now() < deadline)
    {
        let (page, byte) = if i.is_multiple_of(2) {
            (DATA_B, 0xbb)
        } else {
            (DATA_A, 0xaa)
        };
        g.put(PT, page | GPTE_PRESENT | GPTE_WRITE);
        g.inv(true, false, Granularity::Pasid(1));
        assert_eq!(g.read(1, VA_4K, 4).unwrap(), vec![byte; 4]);
        i += 1;
        if i.is_multiple_of(64) {
            std::thread::yield_now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    dev.join().unwrap();
    assert!(
        reads.load(Ordering::Relaxed) > 0,
        "the device thread never ran"
    );
}
