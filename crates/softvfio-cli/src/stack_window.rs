//! The stack words a trace-mode call-site walk reads, fetched from the
//! stopped program in as few and as small reads as the walk allows.
//!
//! A walk reads a few words per frame, upwards from the stack pointer of the
//! stop. Each read of another process's memory is a system call (here ~2.5
//! us whatever its size up to two pages, a little more per page): the window
//! starts with as many bytes above the stack pointer as the last walk from
//! the same instruction used (its hint, kept by the caller), at most to the
//! end of that page when there is no hint, and grows upwards (to the end of
//! the page after the one a missing word is on) only when the walk runs past
//! it. Words elsewhere (an alternate signal stack, a gap wider than
//! [`MAX_GAP`]) are read page by page, apart from the window.
//!
//! Invariants: `bytes` holds the program's memory at `base..base +
//! bytes.len()` as read during this walk; `ended` is set once a read came
//! short (the top of the stack), and the window does not grow after it;
//! `highest` is the end of the highest window word the walk read.

use std::sync::atomic::{AtomicBool, Ordering};

use softvfio::memory::{MemError, UserMemory};

/// Bytes a window grows by at most in one read, past the word asked for.
const PAGE: u64 = 4096;
/// A word further than this above the window is read on its own page
/// instead of growing the window up to it.
const MAX_GAP: u64 = 64 * 1024;
/// First reads are rounded up to this many bytes, so that a walk a few
/// words deeper than the last one stays within the first read.
const ROUND: u64 = 256;

/// The stack of one walk (reused from walk to walk: no allocation once its
/// buffer has grown).
#[derive(Default)]
pub(crate) struct StackWindow {
    base: u64,
    bytes: Vec<u8>,
    ended: bool,
    highest: u64,
    /// Pages read apart from the window: (address, contents).
    far: Vec<(u64, Box<[u8; 4096]>)>,
    /// Reads of the program's memory made for this walk.
    reads: u32,
}

impl StackWindow {
    /// Starts the walk of a stack whose pointer is `sp`, reading the first
    /// `hint` bytes above it (rounded up, see [`ROUND`]), or with no hint
    /// up to the end of its page. `fill(addr, buf)` reads the program's
    /// memory at `addr` into `buf` and returns the bytes read (a prefix:
    /// fewer when the rest is unreadable).
    pub(crate) fn start(
        &mut self,
        sp: u64,
        hint: Option<u64>,
        fill: &mut impl FnMut(u64, &mut [u8]) -> usize,
    ) {
        self.base = sp;
        self.bytes.clear();
        self.ended = false;
        self.highest = sp;
        self.far.clear();
        self.reads = 0;
        let len = match hint {
            Some(h) => h.max(8).div_ceil(ROUND) * ROUND,
            None => PAGE - (sp % PAGE),
        };
        self.grow(len, fill);
    }

    /// Grows the window by `len` bytes (fewer at the top of the stack).
    fn grow(&mut self, len: u64, fill: &mut impl FnMut(u64, &mut [u8]) -> usize) {
        let old = self.bytes.len();
        let Ok(len) = usize::try_from(len) else {
            return;
        };
        self.bytes.resize(old + len, 0);
        let got = fill(self.base + old as u64, &mut self.bytes[old..]).min(len);
        self.reads += 1;
        self.bytes.truncate(old + got);
        if got < len {
            self.ended = true;
        }
    }

    /// The 8-byte word at `a`, little-endian; `None` when unreadable.
    pub(crate) fn word(
        &mut self,
        a: u64,
        fill: &mut impl FnMut(u64, &mut [u8]) -> usize,
    ) -> Option<u64> {
        let end = self.base + self.bytes.len() as u64;
        let a_end = a.checked_add(8)?;
        if a >= self.base && a_end <= end + MAX_GAP {
            if a_end > end && !self.ended {
                // To the end of the page after the word's: what the next
                // frames read is most likely there.
                let to = a_end.div_ceil(PAGE) * PAGE + PAGE;
                self.grow(to - end, fill);
            }
            let end = self.base + self.bytes.len() as u64;
            if a_end <= end {
                self.highest = self.highest.max(a_end);
                let off = (a - self.base) as usize;
                let w = self.bytes.get(off..off + 8)?;
                return Some(u64::from_le_bytes(w.try_into().ok()?));
            }
            if self.ended {
                return None;
            }
        }
        self.far_word(a, fill)
    }

    /// A word away from the window: its page, read once per walk.
    fn far_word(&mut self, a: u64, fill: &mut impl FnMut(u64, &mut [u8]) -> usize) -> Option<u64> {
        let page = a & !(PAGE - 1);
        let off = (a - page) as usize;
        if off + 8 > PAGE as usize {
            let mut b = [0u8; 8];
            self.reads += 1;
            return (fill(a, &mut b) == 8).then(|| u64::from_le_bytes(b));
        }
        let i = match self.far.iter().position(|(p, _)| *p == page) {
            Some(i) => i,
            None => {
                let mut data = Box::new([0u8; 4096]);
                self.reads += 1;
                if fill(page, &mut data[..]) < PAGE as usize {
                    return None;
                }
                self.far.push((page, data));
                self.far.len() - 1
            }
        };
        let w = self.far[i].1.get(off..off + 8)?;
        Some(u64::from_le_bytes(w.try_into().ok()?))
    }

    /// The bytes above the stack pointer this walk read: the hint of the
    /// next walk from the same place.
    pub(crate) fn used(&self) -> u64 {
        self.highest - self.base
    }

    /// Reads of the program's memory this walk made.
    pub(crate) fn reads(&self) -> u32 {
        self.reads
    }

    /// The window's bytes and where they were read from.
    pub(crate) fn snapshot(&self) -> (u64, &[u8]) {
        (self.base, &self.bytes)
    }
}

/// The program's memory during the call whose call site a walk has just
/// read: its reads within the window (an ioctl's argument structure is
/// most often a local of a frame the walk read) are served from the
/// window's bytes, read at the same stop, instead of with another system
/// call; any write to the program's memory ends that (what it wrote is
/// read from the program again). Everything else is the address space's.
pub(crate) struct WindowedMemory<'a> {
    inner: &'a dyn UserMemory,
    base: u64,
    bytes: &'a [u8],
    /// No write made through this memory yet.
    fresh: AtomicBool,
}

impl<'a> WindowedMemory<'a> {
    /// `inner` with the window `(base, bytes)` of
    /// [`StackWindow::snapshot`], read at the current stop.
    pub(crate) fn new(inner: &'a dyn UserMemory, (base, bytes): (u64, &'a [u8])) -> Self {
        Self {
            inner,
            base,
            bytes,
            fresh: AtomicBool::new(true),
        }
    }

    /// The memory the window is over.
    fn inner(&self) -> &dyn UserMemory {
        self.inner
    }

    /// The window's bytes of `[vaddr, vaddr + len)`, when it holds them all.
    fn held(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        if !self.fresh.load(Ordering::Relaxed) {
            return None;
        }
        let off = usize::try_from(vaddr.checked_sub(self.base)?).ok()?;
        self.bytes.get(off..off.checked_add(len)?)
    }
}

impl UserMemory for WindowedMemory<'_> {
    softvfio::forward_user_memory!(inner: pin, is_device_range, device_bytes, unpin, dma_read,
        lock_policy, cap_sys_resource, account, stats, describe, svm_view, shared);

    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        match self.held(vaddr, buf.len()) {
            Some(b) => {
                buf.copy_from_slice(b);
                Ok(())
            }
            None => self.inner.read(vaddr, buf),
        }
    }

    fn write(&self, vaddr: u64, data: &[u8]) -> Result<(), MemError> {
        self.fresh.store(false, Ordering::Relaxed);
        self.inner.write(vaddr, data)
    }

    fn dma_write(&self, vaddr: u64, data: &[u8]) -> Result<(), MemError> {
        self.fresh.store(false, Ordering::Relaxed);
        self.inner.dma_write(vaddr, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outside its window (and for everything but reads) the windowed
    /// memory is its inner memory: each method reaches it with the same
    /// arguments and answers its answer.
    #[test]
    fn windowed_memory_passes_on_what_its_window_does_not_hold() {
        use softvfio::testing::probe::{check_forwarded, Probe, METHODS};
        let probe = Probe::new();
        let bytes = [0xaau8; 16];
        let windowed = WindowedMemory::new(&probe, (0x10_0000, &bytes));
        assert_eq!(check_forwarded(&windowed, &probe, &METHODS), Ok(()));
        // A read the window holds does not reach the inner memory.
        let mut buf = [0u8; 4];
        let fresh = WindowedMemory::new(&probe, (0x10_0000, &bytes));
        assert_eq!(fresh.read(0x10_0004, &mut buf), Ok(()));
        assert_eq!(buf, [0xaa; 4]);
        assert_eq!(probe.take_log(), Vec::<String>::new());
    }

    /// A stack mapped at `lo..hi` whose word at `a` is `a ^ 0x5a5a`, and
    /// the reads made of it.
    struct Fake {
        lo: u64,
        hi: u64,
        reads: Vec<(u64, usize)>,
    }

    impl Fake {
        fn fill(&mut self, addr: u64, buf: &mut [u8]) -> usize {
            self.reads.push((addr, buf.len()));
            if addr < self.lo || addr >= self.hi {
                return 0;
            }
            let n = buf.len().min((self.hi - addr) as usize);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                let at = addr + i as u64;
                let word = (at & !7) ^ 0x5a5a;
                *b = word.to_le_bytes()[(at & 7) as usize];
            }
            n
        }
    }

    #[test]
    fn a_walk_within_its_hint_reads_once_and_only_the_hint() {
        let mut f = Fake {
            lo: 0x7000_0000,
            hi: 0x7001_0000,
            reads: vec![],
        };
        let mut fill = |a: u64, b: &mut [u8]| f.fill(a, b);
        let mut w = StackWindow::default();
        let sp = 0x7000_4f00;
        w.start(sp, Some(0x130), &mut fill);
        for a in [sp, sp + 0x40, sp + 0x128] {
            assert_eq!(w.word(a, &mut fill), Some(a ^ 0x5a5a));
        }
        assert_eq!(w.used(), 0x130);
        assert_eq!(w.reads(), 1);
        assert_eq!(f.reads, vec![(sp, 0x200)]);
    }

    #[test]
    fn no_hint_reads_to_the_end_of_the_page_then_grows_past_the_next() {
        let mut f = Fake {
            lo: 0x7000_0000,
            hi: 0x7001_0000,
            reads: vec![],
        };
        let mut fill = |a: u64, b: &mut [u8]| f.fill(a, b);
        let mut w = StackWindow::default();
        let sp = 0x7000_4f00;
        w.start(sp, None, &mut fill);
        assert_eq!(w.word(sp + 0xf8, &mut fill), Some((sp + 0xf8) ^ 0x5a5a));
        // Past the first page: grown to the end of the page after the word's.
        assert_eq!(w.word(0x7000_5010, &mut fill), Some(0x7000_5010 ^ 0x5a5a));
        assert_eq!(w.word(0x7000_6ff8, &mut fill), Some(0x7000_6ff8 ^ 0x5a5a));
        assert_eq!(w.used(), 0x7000_7000 - sp);
        assert_eq!(f.reads, vec![(sp, 0x100), (0x7000_5000, 0x2000)]);
    }

    #[test]
    fn the_top_of_the_stack_ends_the_window_and_far_words_have_their_page() {
        let mut f = Fake {
            lo: 0x7000_0000,
            hi: 0x7000_5080,
            reads: vec![],
        };
        let mut fill = |a: u64, b: &mut [u8]| f.fill(a, b);
        let mut w = StackWindow::default();
        let sp = 0x7000_4f00;
        w.start(sp, Some(0x800), &mut fill);
        assert_eq!(w.word(0x7000_5078, &mut fill), Some(0x7000_5078 ^ 0x5a5a));
        assert_eq!(w.word(0x7000_5080, &mut fill), None);
        // Below the stack pointer (another stack): its own page.
        assert_eq!(w.word(0x7000_1008, &mut fill), Some(0x7000_1008 ^ 0x5a5a));
        assert_eq!(w.word(0x7000_1010, &mut fill), Some(0x7000_1010 ^ 0x5a5a));
        // A word across a page boundary away from the window: by itself.
        let (below, above) = (0x7000_0ff8_u64 ^ 0x5a5a, 0x7000_1000_u64 ^ 0x5a5a);
        let straddling = (below >> 32) | (above << 32);
        assert_eq!(w.word(0x7000_0ffc, &mut fill), Some(straddling));
        assert_eq!(w.used(), 0x7000_5080 - sp);
        assert_eq!(
            f.reads,
            vec![(sp, 0x800), (0x7000_1000, 0x1000), (0x7000_0ffc, 8)]
        );
    }

    #[test]
    fn a_word_beyond_the_gap_is_read_apart_and_a_later_walk_starts_afresh() {
        let mut f = Fake {
            lo: 0x7000_0000,
            hi: 0x7010_0000,
            reads: vec![],
        };
        let mut fill = |a: u64, b: &mut [u8]| f.fill(a, b);
        let mut w = StackWindow::default();
        let sp = 0x7000_4f00;
        w.start(sp, Some(8), &mut fill);
        let far = sp + 0x100 + MAX_GAP;
        assert_eq!(w.word(far, &mut fill), Some(far ^ 0x5a5a));
        assert_eq!(w.used(), 0);
        w.start(sp + 8, Some(0x10), &mut fill);
        assert_eq!(w.word(sp + 8, &mut fill), Some((sp + 8) ^ 0x5a5a));
        assert_eq!(w.reads(), 1);
        assert_eq!(
            f.reads,
            vec![(sp, 0x100), (far & !0xfff, 0x1000), (sp + 8, 0x100)]
        );
    }

    #[test]
    fn windowed_memory_serves_reads_within_the_window_until_a_write() {
        use softvfio::iommu::Prot;
        use softvfio::memory::sim::{SimMemory, SIZE_4K};
        let sim = SimMemory::new();
        sim.add_region(0x7000_0000, 0x2000, SIZE_4K, Prot::RW)
            .unwrap();
        sim.write(0x7000_0100, &[1, 2, 3, 4]).unwrap();
        sim.write(0x7000_0200, &[9, 9]).unwrap();
        // The window as read at the stop: the program's bytes then.
        let window = [0xaa_u8; 0x100];
        let w = WindowedMemory::new(&sim, (0x7000_0100, &window));
        let mut b = [0u8; 4];
        w.read(0x7000_0100, &mut b).unwrap();
        assert_eq!(b, [0xaa; 4]);
        // Partly outside: all from the program.
        let mut b = [0u8; 4];
        w.read(0x7000_01fe, &mut b).unwrap();
        assert_eq!(b, [0, 0, 9, 9]);
        let mut b = [0u8; 2];
        w.read(0x7000_00ff, &mut b).unwrap();
        assert_eq!(b, [0, 1]);
        // After a write, every read is the program's.
        w.write(0x7000_0180, &[7]).unwrap();
        let mut b = [0u8; 4];
        w.read(0x7000_0100, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert_eq!(w.describe(), sim.describe());
    }
}
