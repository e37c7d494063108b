//! After `warm_up`, the success path allocates nothing: preload mode calls
//! `emulate` from a SIGSEGV handler, where malloc may be interrupted
//! mid-operation and must not be re-entered. (Errors format a report and
//! may allocate: the program is being stopped then.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io;

use softvfio_mmio::{emulate, gpr, warm_up, BarId, MmioSpace, ProgramMemory, Registers};

/// Counts allocations made by this thread (the test harness's own threads
/// allocate concurrently).
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every method forwards to the system allocator unchanged; the
// counter is a thread-local Cell that does not allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const BAR: u64 = 0x1000_0000;
const MEMORY: u64 = 0x7000_0000;

struct Device([u8; 256]);

impl MmioSpace for Device {
    fn bar_at(&self, addr: u64) -> Option<(BarId, u64)> {
        (BAR..BAR + 256).contains(&addr).then(|| (0, addr - BAR))
    }
    fn read(&mut self, _: BarId, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let o = offset as usize;
        data.copy_from_slice(&self.0[o..o + data.len()]);
        Ok(())
    }
    fn write(&mut self, _: BarId, offset: u64, data: &[u8]) -> io::Result<()> {
        let o = offset as usize;
        self.0[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
}

struct Memory([u8; 256]);

impl ProgramMemory for Memory {
    fn read(&mut self, addr: u64, data: &mut [u8]) -> io::Result<()> {
        let o = (addr - MEMORY) as usize;
        data.copy_from_slice(&self.0[o..o + data.len()]);
        Ok(())
    }
    fn write(&mut self, addr: u64, data: &[u8]) -> io::Result<()> {
        let o = (addr - MEMORY) as usize;
        self.0[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
}

#[test]
fn successful_emulation_does_not_allocate() {
    let cases: [&[u8]; 7] = [
        &[0x89, 0x47, 0x10],                   // mov [rdi+10h],eax
        &[0x48, 0x8b, 0x44, 0xcf, 0x08],       // mov rax,[rdi+rcx*8+8]
        &[0xf3, 0x0f, 0x7f, 0x07],             // movdqu [rdi],xmm0
        &[0x62, 0xe1, 0xfe, 0x48, 0x7f, 0x07], // vmovdqu64 [rdi],zmm16
        &[0xf0, 0x83, 0x0f, 0x04],             // lock or dword [rdi],4
        &[0xf0, 0x0f, 0xb1, 0x0f],             // lock cmpxchg [rdi],ecx
        &[0xf3, 0xa4],                         // rep movsb
    ];
    let before = ALLOCATIONS.with(Cell::get);
    warm_up();
    // The decoder's tables are built once, on first use.
    assert!(ALLOCATIONS.with(Cell::get) > before);
    let mut device = Device([0; 256]);
    let mut memory = Memory([0x5a; 256]);
    for code in cases {
        let mut regs = Registers {
            rip: 0x40_1000,
            rflags: 0x202,
            ..Default::default()
        };
        regs.gpr[gpr::RDI] = BAR;
        regs.gpr[gpr::RSI] = MEMORY;
        regs.gpr[gpr::RCX] = 2;
        let before = ALLOCATIONS.with(Cell::get);
        let out = emulate(code, BAR, &mut regs, &mut device, &mut memory);
        let allocations = ALLOCATIONS.with(Cell::get) - before;
        assert!(matches!(out, Ok(o) if o.completed), "{code:02x?}: {out:?}");
        assert_eq!(allocations, 0, "{code:02x?}");
    }
}
