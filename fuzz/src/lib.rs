//! Shared pieces of the fuzz targets: a byte reader that turns the fuzzer's
//! input into steered values, and an allocator that refuses any single
//! allocation larger than [`ALLOC_LIMIT`] (so a size taken from user input
//! and allocated shows up as a crash, not as a slow run).

use std::alloc::{GlobalAlloc, Layout, System};

/// The largest single allocation any target may make. The engine's
/// legitimate allocations in these targets are far smaller (bitmaps of at
/// most a few MiB, 1 MiB pread/pwrite buffers).
pub const ALLOC_LIMIT: usize = 64 << 20;

/// `System`, but aborting on an allocation larger than [`ALLOC_LIMIT`].
pub struct BoundedAlloc;

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the size check only adds an abort.
unsafe impl GlobalAlloc for BoundedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: same layout, same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn check(size: usize) {
    if size > ALLOC_LIMIT {
        // No allocation may happen here: write the message by hand.
        let msg = b"fuzz: allocation larger than ALLOC_LIMIT (a size from user input?)\n";
        // SAFETY: writing a static buffer to stderr.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
        }
        std::process::abort();
    }
}

/// Reads values from the fuzzer's input; past the end everything is zero.
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }

    /// One of `hints` most of the time; otherwise an edge value or raw
    /// input.
    pub fn pick(&mut self, hints: &[u64]) -> u64 {
        let sel = self.u8();
        match sel {
            0..=199 if !hints.is_empty() => hints[sel as usize % hints.len()],
            200..=219 => EDGES[sel as usize % EDGES.len()],
            _ => self.u64(),
        }
    }
}

/// Values at the edges of what the ABI checks.
pub const EDGES: [u64; 12] = [
    0,
    1,
    0xfff,
    0x1000,
    0x1001,
    u32::MAX as u64,
    1 << 32,
    1 << 39,
    (1 << 47) - 0x1000,
    1 << 63,
    u64::MAX - 0xfff,
    u64::MAX,
];
