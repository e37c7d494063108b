//! Pin counts of the externally pinned pages of one mapping (seed 004: "a
//! page table rooted in the vgpu_dma and indexed by the offset").
//!
//! The kernel keeps one `struct vfio_pfn` rb-tree node per pinned page
//! (48 bytes in Linux 6.1; 40 in the review thread of seed 000). A mediated device pins what its guest points it at: every
//! page of a mapping, or one page in 64 scattered at random, or a handful
//! in a terabyte. The memory here follows the pins at every density:
//!
//! - The pages of a mapping are cut into *blocks*, kept in one vector
//!   sorted by base page and searched by bisection (a block is 32 bytes).
//! - A *sparse* block is a sorted vector of 8-byte entries, each the page's
//!   offset from the block's base (32 bits) and its pin count (32 bits): the
//!   count costs nothing extra. A sparse block spans any distance below
//!   2^32 pages, so scattered pins share blocks however far apart they are
//!   (a radix tree with fixed-size nodes would pay one node per lone pin).
//! - A *bitmap* block covers one aligned window of 4096 pages with a
//!   presence bit each (512 bytes). Counts above 1 are in a sorted list of
//!   (bit, count) entries, or, once more than half the window is pinned more
//!   than once, in an array of 4096 counts.
//! - A sparse block turns into a bitmap for a window when 96 of its pins
//!   fall in it (96 entries cost more than the bitmap); a bitmap turns back
//!   into sparse entries below 32 pins, so the two never flip back and forth.
//! - The block the last call touched is tried before bisecting: devices pin
//!   and unpin in runs.
//!
//! Invariants (checked by [`PinTracker::check_invariants`]):
//! 1. `blocks` is sorted by strictly increasing `base`, and every page a
//!    block holds lies in `[base, next block's base)`: a page can only be
//!    in the last block whose base is at or below it.
//! 2. A block holds at least one pinned page (count >= 1), and no entry of
//!    count 0 but those invariant 3 allows: a block that loses its last pin
//!    is removed, so the tracker is empty exactly when `blocks` is. Offsets
//!    are unique within a block.
//! 3. Sparse block: entries sorted by strictly increasing offset, offsets
//!    below 2^32, at most [`SPARSE_MAX`] entries. Entries with count 0
//!    (pages no longer pinned) may only form a prefix, of at most
//!    [`DEAD_MAX`] entries and fewer than the live ones: unpinning the
//!    first live entry only zeroes its count, so an unmap dropping a
//!    mapping's pins in order moves no memory; a pin into the block, or the
//!    prefix growing past its bound, removes them.
//! 4. Bitmap block: base aligned to [`WINDOW_PAGES`], at least
//!    [`BITMAP_MIN`] pages, `pages` = bits set, `multi` = pages with count
//!    above 1; `Few` lists exactly those, sorted, with counts >= 2, at most
//!    [`FEW_MAX`] of them; `All` has the count of every bit (0 = absent) and
//!    `multi` >= [`ALL_MIN`].
//! 5. No two neighbouring sparse blocks could be merged: together they hold
//!    more than [`MERGE_MAX`] live entries, or the later one's last page is 2^32
//!    pages or more above the earlier one's base.
//! 6. `pinned_pages` and `pin_refs` are the number of pinned pages and the
//!    sum of their counts.
//! 7. Every vector's capacity is at most 1.5 times its length (so 0 when
//!    empty): growth is by a quarter, and removals give memory back.
//!
//! Memory bound, from 2-7: at most 56 bytes per pinned page plus 16 per
//! page pinned more than once, whatever the density and placement (a lone
//! pin in a mapping: 40 bytes); dense, 0.14 bytes a page; scattered pins
//! over 128 MiB mappings, 9-13 bytes a page. `heap_bytes` reports the exact
//! allocation sizes.

/// Pages per bitmap window (a power of two).
const WINDOW_PAGES: u64 = 4096;
const WINDOW_WORDS: usize = (WINDOW_PAGES / 64) as usize;
/// Sparse offsets are 32 bits.
const OFFSET_LIMIT: u64 = 1 << 32;
/// Entries of a sparse block before it splits (1 KiB: an insertion moves
/// at most that much). Above [`TO_BITMAP`].
const SPARSE_MAX: usize = 128;
/// Neighbouring sparse blocks holding this many entries or fewer merge.
const MERGE_MAX: usize = SPARSE_MAX / 2;
/// Pins of a sparse block in one window that make it a bitmap: 96 entries
/// take 768 bytes, a bitmap block about 580.
const TO_BITMAP: usize = 96;
/// A bitmap with fewer pins goes back to sparse entries (256 bytes).
const BITMAP_MIN: u32 = 32;
/// Entries of a bitmap's count list before it becomes a count array (the
/// list then takes as much as the array, 16 KiB).
const FEW_MAX: usize = (WINDOW_PAGES / 2) as usize;
/// A count array with fewer multiply pinned pages goes back to a list.
const ALL_MIN: u32 = (WINDOW_PAGES / 4) as u32;

/// Entries with count 0 allowed at the front of a sparse block.
const DEAD_MAX: usize = 16;

/// How many entries at the front of a sparse block are dead (count 0).
fn dead_prefix(v: &[u64]) -> usize {
    v.iter()
        .take(DEAD_MAX + 1)
        .take_while(|e| count_of(**e) == 0)
        .count()
}

/// A sparse entry (or a bitmap's count-list entry): offset and count.
fn entry(off: u64, count: u32) -> u64 {
    (off << 32) | u64::from(count)
}

fn off_of(e: u64) -> u64 {
    e >> 32
}

fn count_of(e: u64) -> u32 {
    (e & 0xffff_ffff) as u32
}

/// The index of offset `off` in a sorted entry list, or where it goes.
fn search(v: &[u64], off: u64) -> Result<usize, usize> {
    // Entries order as their offsets: one comparison of whole words.
    let i = v.partition_point(|&e| e < off << 32);
    match v.get(i) {
        Some(&e) if off_of(e) == off => Ok(i),
        _ => Err(i),
    }
}

/// Room for one more element, growing by a quarter (invariant 7).
fn reserve_one<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.len() / 4).max(1));
    }
}

/// Room for `extra` more elements, growing by at least a quarter.
fn reserve_more<T>(v: &mut Vec<T>, extra: usize) {
    if v.capacity() - v.len() < extra {
        v.reserve_exact(extra.max(v.len() / 4));
    }
}

/// After removals: gives back capacity above 1.5 times the length.
fn trim<T>(v: &mut Vec<T>) {
    if v.capacity() > v.len() + v.len() / 2 {
        v.shrink_to(v.len() + v.len() / 4);
    }
}

/// Why a pin could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("pin count of page {page} would overflow")]
pub struct PinCountOverflow {
    /// The page whose count would overflow.
    pub page: u64,
}

/// Pin counts of the pages of one bitmap window.
#[derive(Debug, Clone)]
struct Bitmap {
    present: [u64; WINDOW_WORDS],
    /// Bits set.
    pages: u32,
    /// Pages with a count above 1.
    multi: u32,
    counts: Counts,
}

/// Where a bitmap keeps counts above 1.
#[derive(Debug, Clone)]
enum Counts {
    /// `entry(bit, count)` for each page pinned more than once, sorted.
    Few(Vec<u64>),
    /// The count of every page of the window.
    All(Box<[u32; WINDOW_PAGES as usize]>),
}

/// Word index and bit mask of window bit `bit` (masked: never out of range).
fn word_bit(bit: u64) -> (usize, u64) {
    let bit = bit & (WINDOW_PAGES - 1);
    ((bit / 64) as usize, 1u64 << (bit % 64))
}

fn window_index(bit: u64) -> usize {
    (bit & (WINDOW_PAGES - 1)) as usize
}

impl Bitmap {
    fn new() -> Box<Self> {
        Box::new(Bitmap {
            present: [0; WINDOW_WORDS],
            pages: 0,
            multi: 0,
            counts: Counts::Few(Vec::new()),
        })
    }

    fn has(&self, bit: u64) -> bool {
        let (w, m) = word_bit(bit);
        self.present[w] & m != 0
    }

    fn count(&self, bit: u64) -> u32 {
        if !self.has(bit) {
            return 0;
        }
        match &self.counts {
            _ if self.multi == 0 => 1,
            Counts::Few(v) => search(v, bit)
                .ok()
                .and_then(|i| v.get(i))
                .map_or(1, |e| count_of(*e)),
            Counts::All(a) => a[window_index(bit)],
        }
    }

    /// Adds a pin to `bit` (page `page`, for the error); true if new.
    fn pin(&mut self, bit: u64, page: u64) -> Result<bool, PinCountOverflow> {
        let overflow = PinCountOverflow { page };
        let (w, m) = word_bit(bit);
        if self.present[w] & m == 0 {
            self.present[w] |= m;
            self.pages += 1;
            if let Counts::All(a) = &mut self.counts {
                a[window_index(bit)] = 1;
            }
            return Ok(true);
        }
        match &mut self.counts {
            Counts::Few(v) => match search(v, bit) {
                Ok(i) => {
                    if let Some(e) = v.get_mut(i) {
                        let c = count_of(*e).checked_add(1).ok_or(overflow)?;
                        *e = entry(bit, c);
                    }
                }
                Err(i) => {
                    reserve_one(v);
                    v.insert(i, entry(bit, 2));
                    self.multi += 1;
                    if v.len() > FEW_MAX {
                        self.counts_to_all();
                    }
                }
            },
            Counts::All(a) => {
                let c = &mut a[window_index(bit)];
                *c = c.checked_add(1).ok_or(overflow)?;
                if *c == 2 {
                    self.multi += 1;
                }
            }
        }
        Ok(false)
    }

    /// Records `bit`, not present yet and above the bits present, with
    /// `count` pins (the count list may grow past [`FEW_MAX`]: the caller
    /// converts once done).
    fn add_new(&mut self, bit: u64, count: u32) {
        let (w, m) = word_bit(bit);
        self.present[w] |= m;
        self.pages += 1;
        if count > 1 {
            self.multi += 1;
        }
        match &mut self.counts {
            Counts::Few(v) if count > 1 => {
                reserve_one(v);
                v.push(entry(bit, count));
            }
            Counts::Few(_) => {}
            Counts::All(a) => a[window_index(bit)] = count,
        }
    }

    /// Drops a pin of `bit`: None if it is not pinned, Some(true) if that
    /// was its last pin.
    fn unpin(&mut self, bit: u64) -> Option<bool> {
        if !self.has(bit) {
            return None;
        }
        match &mut self.counts {
            // Every page pinned once: nothing to look up.
            _ if self.multi == 0 => {}
            Counts::Few(v) => {
                if let Ok(i) = search(v, bit) {
                    let c = v.get(i).map_or(0, |e| count_of(*e));
                    if c > 2 {
                        if let Some(e) = v.get_mut(i) {
                            *e = entry(bit, c - 1);
                        }
                    } else {
                        v.remove(i);
                        trim(v);
                        self.multi -= 1;
                    }
                    return Some(false);
                }
            }
            Counts::All(a) => {
                let c = &mut a[window_index(bit)];
                if *c > 1 {
                    *c -= 1;
                    if *c == 1 {
                        self.multi -= 1;
                        if self.multi < ALL_MIN {
                            self.counts_to_few();
                        }
                    }
                    return Some(false);
                }
                *c = 0;
            }
        }
        let (w, m) = word_bit(bit);
        self.present[w] &= !m;
        self.pages -= 1;
        Some(true)
    }

    fn counts_to_all(&mut self) {
        let mut a = Box::new([0u32; WINDOW_PAGES as usize]);
        for bit in self.bits() {
            a[window_index(bit)] = 1;
        }
        if let Counts::Few(v) = &self.counts {
            for &e in v {
                a[window_index(off_of(e))] = count_of(e);
            }
        }
        self.counts = Counts::All(a);
    }

    fn counts_to_few(&mut self) {
        if let Counts::All(a) = &self.counts {
            let mut v = Vec::with_capacity(self.multi as usize);
            for (bit, &c) in a.iter().enumerate() {
                if c > 1 {
                    v.push(entry(bit as u64, c));
                }
            }
            self.counts = Counts::Few(v);
        }
    }

    /// The bits set, in order.
    fn bits(&self) -> WindowBits<'_> {
        WindowBits {
            words: &self.present,
            word: 0,
            bits: self.present[0],
        }
    }

    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Bitmap>()
            + match &self.counts {
                Counts::Few(v) => v.capacity() * std::mem::size_of::<u64>(),
                Counts::All(_) => std::mem::size_of::<[u32; WINDOW_PAGES as usize]>(),
            }
    }
}

/// The set bits of a window's presence words.
#[derive(Clone)]
struct WindowBits<'a> {
    words: &'a [u64; WINDOW_WORDS],
    word: usize,
    bits: u64,
}

impl Iterator for WindowBits<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        loop {
            if self.bits != 0 {
                let b = u64::from(self.bits.trailing_zeros());
                self.bits &= self.bits - 1;
                return Some(self.word as u64 * 64 + b);
            }
            self.word += 1;
            self.bits = *self.words.get(self.word)?;
        }
    }
}

/// How a block holds its pins.
#[derive(Debug, Clone)]
enum Pins {
    /// `entry(page - base, count)`, sorted.
    Sparse(Vec<u64>),
    /// Pages `base..base + WINDOW_PAGES`.
    Bitmap(Box<Bitmap>),
}

#[derive(Debug, Clone)]
struct Block {
    base: u64,
    pins: Pins,
}

impl Block {
    fn sparse_one(page: u64) -> Self {
        Block {
            base: page,
            pins: Pins::Sparse(vec![entry(0, 1)]),
        }
    }

    /// Whether `page` (at or above `base`) can be recorded in this block.
    fn can_hold(&self, page: u64) -> bool {
        let limit = match self.pins {
            Pins::Sparse(_) => OFFSET_LIMIT,
            Pins::Bitmap(_) => WINDOW_PAGES,
        };
        page.checked_sub(self.base).is_some_and(|off| off < limit)
    }

    /// Entries held (pages for a bitmap).
    fn len(&self) -> usize {
        match &self.pins {
            Pins::Sparse(v) => v.len() - dead_prefix(v),
            Pins::Bitmap(b) => b.pages as usize,
        }
    }

    fn last_page(&self) -> Option<u64> {
        match &self.pins {
            Pins::Sparse(v) => v.last().map(|e| self.base + off_of(*e)),
            Pins::Bitmap(b) => b.bits().last().map(|bit| self.base + bit),
        }
    }

    fn count(&self, page: u64) -> u32 {
        let Some(off) = page.checked_sub(self.base) else {
            return 0;
        };
        match &self.pins {
            Pins::Sparse(v) if off < OFFSET_LIMIT => search(v, off)
                .ok()
                .and_then(|i| v.get(i))
                .map_or(0, |e| count_of(*e)),
            Pins::Bitmap(b) if off < WINDOW_PAGES => b.count(off),
            _ => 0,
        }
    }

    /// Adds a pin to `page`, which [`Block::can_hold`]; true if new.
    fn pin(&mut self, page: u64) -> Result<bool, PinCountOverflow> {
        let off = page - self.base;
        if let Pins::Sparse(v) = &mut self.pins {
            // New pins never go among dead entries: drop them first.
            let dead = dead_prefix(v);
            if dead > 0 {
                v.drain(..dead);
                trim(v);
            }
        }
        match &mut self.pins {
            Pins::Sparse(v) => match search(v, off) {
                Ok(i) => {
                    if let Some(e) = v.get_mut(i) {
                        let c = count_of(*e)
                            .checked_add(1)
                            .ok_or(PinCountOverflow { page })?;
                        *e = entry(off, c);
                    }
                    Ok(false)
                }
                Err(i) => {
                    reserve_one(v);
                    v.insert(i, entry(off, 1));
                    Ok(true)
                }
            },
            Pins::Bitmap(b) => b.pin(off, page),
        }
    }

    /// Drops a pin of `page`: None if not pinned here, Some(true) if that
    /// was its last pin.
    fn unpin(&mut self, page: u64) -> Option<bool> {
        let off = page.checked_sub(self.base)?;
        match &mut self.pins {
            Pins::Sparse(v) if off < OFFSET_LIMIT => {
                let i = search(v, off).ok()?;
                let c = count_of(*v.get(i)?);
                if c == 0 {
                    return None;
                }
                if c > 1 {
                    if let Some(e) = v.get_mut(i) {
                        *e = entry(off, c - 1);
                    }
                    return Some(false);
                }
                let dead = dead_prefix(v);
                let live_after = v.len() - dead - 1;
                if i != dead {
                    v.remove(i);
                    // Fewer live entries than dead ones: the dead go too.
                    if dead >= live_after {
                        v.drain(..dead);
                    }
                } else if dead < DEAD_MAX && dead + 1 < live_after {
                    // The first live entry: it joins the dead prefix, and
                    // nothing moves (an unmap drops a mapping's pins in order).
                    if let Some(e) = v.get_mut(i) {
                        *e = entry(off, 0);
                    }
                    return Some(true);
                } else {
                    v.drain(..=i);
                }
                trim(v);
                Some(true)
            }
            Pins::Bitmap(b) if off < WINDOW_PAGES => b.unpin(off),
            _ => None,
        }
    }

    /// Lowers the base of a sparse block to `page` if its offsets still fit.
    fn rebase_down(&mut self, page: u64) -> bool {
        let Pins::Sparse(v) = &mut self.pins else {
            return false;
        };
        let Some(delta) = self.base.checked_sub(page) else {
            return false;
        };
        let last = v.last().map_or(0, |e| off_of(*e));
        if last + delta >= OFFSET_LIMIT {
            return false;
        }
        for e in v.iter_mut() {
            *e += delta << 32;
        }
        self.base = page;
        true
    }

    /// `(page, count)` of every pinned page, in order.
    fn entries(&self) -> Vec<(u64, u32)> {
        match &self.pins {
            Pins::Sparse(v) => v
                .iter()
                .filter(|e| count_of(**e) > 0)
                .map(|e| (self.base + off_of(*e), count_of(*e)))
                .collect(),
            Pins::Bitmap(b) => b
                .bits()
                .map(|bit| (self.base + bit, b.count(bit)))
                .collect(),
        }
    }

    fn pages(&self) -> BlockPages<'_> {
        match &self.pins {
            Pins::Sparse(v) => BlockPages::Sparse {
                base: self.base,
                entries: v.iter().skip(dead_prefix(v)),
            },
            Pins::Bitmap(b) => BlockPages::Bitmap {
                base: self.base,
                bits: b.bits(),
            },
        }
    }

    fn heap_bytes(&self) -> usize {
        match &self.pins {
            Pins::Sparse(v) => v.capacity() * std::mem::size_of::<u64>(),
            Pins::Bitmap(b) => b.heap_bytes(),
        }
    }
}

/// The pinned pages of one block, in order.
enum BlockPages<'a> {
    Sparse {
        base: u64,
        entries: std::iter::Skip<std::slice::Iter<'a, u64>>,
    },
    Bitmap {
        base: u64,
        bits: WindowBits<'a>,
    },
}

impl Iterator for BlockPages<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        match self {
            BlockPages::Sparse { base, entries } => entries.next().map(|e| *base + off_of(*e)),
            BlockPages::Bitmap { base, bits } => bits.next().map(|b| *base + b),
        }
    }
}

/// Sparse blocks holding `entries` (sorted `(page, count)`): full blocks
/// of [`SPARSE_MAX`], a new one also where offsets would not fit.
fn sparse_blocks(entries: &[(u64, u32)]) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    let mut rest = entries;
    while let Some(&(base, _)) = rest.first() {
        let n = rest
            .iter()
            .take(SPARSE_MAX)
            .take_while(|e| e.0 - base < OFFSET_LIMIT)
            .count();
        let (chunk, tail) = rest.split_at(n);
        let v: Vec<u64> = chunk.iter().map(|&(p, c)| entry(p - base, c)).collect();
        out.push(Block {
            base,
            pins: Pins::Sparse(v),
        });
        rest = tail;
    }
    out
}

/// Pin counts of a mapping's pages, indexed by page offset in the mapping.
#[derive(Debug, Clone, Default)]
pub struct PinTracker {
    blocks: Vec<Block>,
    /// Pages with a count above zero.
    pinned_pages: u64,
    /// Sum of all counts.
    pin_refs: u64,
    /// The block the last pin or unpin touched: devices pin and unpin in
    /// runs, so the next page is usually there (checked before use).
    hint: usize,
}

impl PinTracker {
    /// No pins.
    pub fn new() -> Self {
        Self::default()
    }

    /// Does the tracker hold no pin?
    pub fn is_empty(&self) -> bool {
        self.pinned_pages == 0
    }

    /// Pages pinned at least once.
    pub fn pinned_pages(&self) -> u64 {
        self.pinned_pages
    }

    /// Sum of the pin counts.
    pub fn pin_refs(&self) -> u64 {
        self.pin_refs
    }

    /// Index of the only block that can hold `page` (invariant 1).
    fn block_of(&self, page: u64) -> Option<usize> {
        self.blocks_at_or_below(page).checked_sub(1)
    }

    /// How many blocks have a base at or below `page`: the hint's block
    /// answers when `page` lies between its base and the next one's.
    fn blocks_at_or_below(&self, page: u64) -> usize {
        let h = self.hint;
        if let Some(b) = self.blocks.get(h) {
            if b.base <= page && self.blocks.get(h + 1).is_none_or(|n| page < n.base) {
                return h + 1;
            }
        }
        self.blocks.partition_point(|b| b.base <= page)
    }

    /// The pin count of page `page`.
    pub fn count(&self, page: u64) -> u32 {
        self.block_of(page)
            .and_then(|i| self.blocks.get(i))
            .map_or(0, |b| b.count(page))
    }

    /// Adds one pin to `page`; returns true if the page was not pinned before.
    pub fn pin(&mut self, page: u64) -> Result<bool, PinCountOverflow> {
        let i = self.blocks_at_or_below(page);
        let (at, new) = match i.checked_sub(1) {
            Some(j) if self.blocks.get(j).is_some_and(|b| b.can_hold(page)) => {
                (j, self.blocks[j].pin(page)?)
            }
            // The block below cannot take it: the one above, lowered to
            // `page`, or a new one between them.
            _ => {
                if self.blocks.get_mut(i).is_some_and(|b| b.rebase_down(page)) {
                    (i, self.blocks[i].pin(page)?)
                } else {
                    reserve_one(&mut self.blocks);
                    self.blocks.insert(i, Block::sparse_one(page));
                    (i, true)
                }
            }
        };
        self.pin_refs += 1;
        self.hint = at;
        if new {
            self.pinned_pages += 1;
            self.settle_after_pin(at, page);
        }
        Ok(new)
    }

    /// After a new page in block `i`: a window of a sparse block that got
    /// dense becomes a bitmap; a full sparse block splits.
    fn settle_after_pin(&mut self, i: usize, page: u64) {
        let Some(Block {
            base,
            pins: Pins::Sparse(v),
        }) = self.blocks.get(i)
        else {
            return;
        };
        if v.len() < TO_BITMAP {
            return; // nor is it full: SPARSE_MAX > TO_BITMAP
        }
        let window = page & !(WINDOW_PAGES - 1);
        let (lo, hi) = (
            window.saturating_sub(*base),
            (window | (WINDOW_PAGES - 1)) - base,
        );
        let in_window = |j: usize| v.get(j).is_some_and(|e| (lo..=hi).contains(&off_of(*e)));
        // The window's entries are consecutive; with TO_BITMAP of them
        // around entry k, entry k - TO_BITMAP/2 or k + TO_BITMAP/2 is one:
        // checking those two spares the bisections most of the time.
        let k = search(v, page - base).unwrap_or_default();
        let dense_window = (k.checked_sub(TO_BITMAP / 2).is_some_and(in_window)
            || in_window(k + TO_BITMAP / 2))
            && v.partition_point(|e| off_of(*e) <= hi) - v.partition_point(|e| off_of(*e) < lo)
                >= TO_BITMAP;
        if dense_window {
            self.carve(window);
        } else if v.len() > SPARSE_MAX {
            // Appending (or prepending) fills blocks instead of halving them.
            let at = match k {
                k if k + 1 == v.len() => k,
                0 => 1,
                _ => v.len() / 2,
            };
            self.split(i, at);
        }
    }

    /// Splits sparse block `i` before its entry `at`.
    fn split(&mut self, i: usize, at: usize) {
        let Some(Block {
            base,
            pins: Pins::Sparse(v),
        }) = self.blocks.get_mut(i)
        else {
            return;
        };
        let mut right = v.split_off(at);
        // The left part of an append split stays full: no room kept.
        if right.len() == 1 {
            v.shrink_to_fit();
        } else {
            trim(v);
        }
        let Some(first) = right.first().map(|e| off_of(*e)) else {
            return;
        };
        for e in right.iter_mut() {
            *e -= first << 32;
        }
        let right = Block {
            base: *base + first,
            pins: Pins::Sparse(right),
        };
        reserve_one(&mut self.blocks);
        self.blocks.insert(i + 1, right);
        self.merge_around(i, i + 1);
    }

    /// Moves every pin of window `window` into a bitmap block; the sparse
    /// pins on either side stay in sparse blocks.
    fn carve(&mut self, window: u64) {
        let last = window | (WINDOW_PAGES - 1);
        let mut lo = self
            .blocks
            .partition_point(|b| b.base <= window)
            .saturating_sub(1);
        // A bitmap there covers an earlier window.
        if self
            .blocks
            .get(lo)
            .is_some_and(|b| matches!(b.pins, Pins::Bitmap(_)))
        {
            lo += 1;
        }
        let hi = self.blocks.partition_point(|b| b.base <= last);
        if lo >= hi {
            return;
        }
        let (mut before, mut after) = (Vec::new(), Vec::new());
        let mut bitmap = Bitmap::new();
        for b in self.blocks.drain(lo..hi) {
            for (page, count) in b.entries() {
                if page < window {
                    before.push((page, count));
                } else if page > last {
                    after.push((page, count));
                } else {
                    bitmap.add_new(page - window, count);
                }
            }
        }
        if bitmap.multi as usize > FEW_MAX {
            bitmap.counts_to_all();
        }
        let mut rebuilt = sparse_blocks(&before);
        rebuilt.push(Block {
            base: window,
            pins: Pins::Bitmap(bitmap),
        });
        rebuilt.extend(sparse_blocks(&after));
        let n = rebuilt.len();
        reserve_more(&mut self.blocks, n);
        self.blocks.splice(lo..lo, rebuilt);
        // The window may have taken more blocks than it left.
        trim(&mut self.blocks);
        self.merge_around(lo, lo + n - 1);
    }

    /// Merges neighbouring sparse blocks from `first - 1` to `last + 1`
    /// while invariant 5 does not hold for them.
    fn merge_around(&mut self, first: usize, last: usize) {
        let mut j = first.saturating_sub(1);
        let mut end = last + 1;
        while j < end && j + 1 < self.blocks.len() {
            if self.try_merge(j) {
                end = end.saturating_sub(1);
            } else {
                j += 1;
            }
        }
    }

    /// Merges block `j + 1` into block `j` if both are sparse and small
    /// enough together; true if it did.
    fn try_merge(&mut self, j: usize) -> bool {
        let (Some(a), Some(b)) = (self.blocks.get(j), self.blocks.get(j + 1)) else {
            return false;
        };
        let (Pins::Sparse(va), Pins::Sparse(vb)) = (&a.pins, &b.pins) else {
            return false;
        };
        // Raw lengths first: counting dead entries only when it matters.
        if va.len() + vb.len() > MERGE_MAX + 2 * DEAD_MAX || a.len() + b.len() > MERGE_MAX {
            return false;
        }
        let Some(b_last) = b.last_page() else {
            return false;
        };
        if b_last - a.base >= OFFSET_LIMIT {
            return false;
        }
        let delta = b.base - a.base;
        let moved: Vec<u64> = vb
            .iter()
            .filter(|e| count_of(**e) > 0)
            .map(|e| e + (delta << 32))
            .collect();
        if let Some(Pins::Sparse(va)) = self.blocks.get_mut(j).map(|a| &mut a.pins) {
            reserve_more(va, moved.len());
            va.extend_from_slice(&moved);
        }
        self.blocks.remove(j + 1);
        trim(&mut self.blocks);
        true
    }

    /// Drops one pin of `page`; returns true if that was its last pin. A
    /// page that is not pinned is left alone (the kernel ignores it too).
    pub fn unpin(&mut self, page: u64) -> bool {
        let Some(i) = self.block_of(page) else {
            return false;
        };
        self.hint = i;
        let Some(last) = self.blocks.get_mut(i).and_then(|b| b.unpin(page)) else {
            return false;
        };
        self.pin_refs = self.pin_refs.saturating_sub(1);
        if last {
            self.pinned_pages = self.pinned_pages.saturating_sub(1);
            self.settle_after_unpin(i);
        }
        last
    }

    /// After block `i` lost a page: an empty block goes, a thin bitmap
    /// becomes sparse, small sparse neighbours merge.
    fn settle_after_unpin(&mut self, i: usize) {
        let Some(b) = self.blocks.get(i) else { return };
        match &b.pins {
            // (A sparse block is never all dead entries: invariant 3.)
            Pins::Sparse(v) if v.is_empty() => {
                self.blocks.remove(i);
                trim(&mut self.blocks);
                if i > 0 {
                    self.merge_around(i, i - 1);
                }
            }
            Pins::Bitmap(bm) if bm.pages == 0 => {
                self.blocks.remove(i);
                trim(&mut self.blocks);
                if i > 0 {
                    self.merge_around(i, i - 1);
                }
            }
            Pins::Bitmap(bm) if bm.pages < BITMAP_MIN => {
                let mut sparse = sparse_blocks(&b.entries());
                if let (Some(one), true) = (sparse.pop(), sparse.is_empty()) {
                    self.blocks[i] = one;
                }
                self.merge_around(i, i);
            }
            // Too many live entries to merge with anything (at most
            // DEAD_MAX of them are dead).
            Pins::Sparse(v) if v.len() > MERGE_MAX + DEAD_MAX => {}
            Pins::Sparse(_) => self.merge_around(i, i),
            Pins::Bitmap(_) => {}
        }
    }

    /// Pinned pages in `[first, first + npages)`, in order.
    pub fn pages_in(&self, first: u64, npages: u64) -> Vec<u64> {
        let end = first.saturating_add(npages);
        let start = self.block_of(first).unwrap_or(0);
        self.blocks
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take_while(|b| b.base < end)
            .flat_map(Block::pages)
            .filter(|&p| p >= first && p < end)
            .collect()
    }

    /// Every pinned page, in order.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.blocks.iter().flat_map(Block::pages)
    }

    /// Runs of consecutive pinned pages as `(first page, pages)`, in order.
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for page in self.pages() {
            match out.last_mut() {
                Some((start, n)) if *start + *n == page => *n += 1,
                _ => out.push((page, 1)),
            }
        }
        out
    }

    /// Forgets every pin in one pass; returns the pages that were pinned.
    pub fn clear(&mut self) -> u64 {
        let n = self.pinned_pages;
        self.blocks = Vec::new();
        self.pinned_pages = 0;
        self.pin_refs = 0;
        n
    }

    /// Heap bytes the tracker uses: the sizes of its allocations, exactly
    /// (checked against a counting allocator in
    /// `tests/external_tracking.rs`); allocator overhead not included.
    pub fn heap_bytes(&self) -> usize {
        self.blocks.capacity() * std::mem::size_of::<Block>()
            + self.blocks.iter().map(Block::heap_bytes).sum::<usize>()
    }

    /// Checks the invariants of the module documentation; the first one
    /// broken, described.
    pub fn check_invariants(&self) -> Result<(), String> {
        let cap_ok = |len: usize, cap: usize| cap <= len + len / 2;
        if !cap_ok(self.blocks.len(), self.blocks.capacity()) {
            return Err(format!(
                "7: {} blocks, capacity {}",
                self.blocks.len(),
                self.blocks.capacity()
            ));
        }
        let (mut pages, mut refs, mut multi) = (0u64, 0u64, 0u64);
        for (i, b) in self.blocks.iter().enumerate() {
            let entries = b.entries();
            let Some(&(first, _)) = entries.first() else {
                return Err(format!("2: block {i} is empty"));
            };
            if first < b.base {
                return Err(format!("1: block {i} holds {first} below its base"));
            }
            if let Some(next) = self.blocks.get(i + 1) {
                if next.base <= b.base || b.last_page().is_some_and(|l| l >= next.base) {
                    return Err(format!("1: block {i} overlaps block {}", i + 1));
                }
            }
            if entries.windows(2).any(|w| w[0].0 >= w[1].0) {
                return Err(format!("2: block {i} pages not strictly increasing"));
            }
            for &(_, c) in &entries {
                if c == 0 {
                    return Err(format!("2: block {i} holds a page with count 0"));
                }
                pages += 1;
                refs += u64::from(c);
                multi += u64::from(c > 1);
            }
            match &b.pins {
                Pins::Sparse(v) => {
                    let dead = dead_prefix(v);
                    if dead > DEAD_MAX
                        || dead >= entries.len()
                        || v.iter().skip(dead).any(|e| count_of(*e) == 0)
                        || v.windows(2).any(|w| off_of(w[0]) >= off_of(w[1]))
                    {
                        return Err(format!("3: sparse block {i}: dead prefix {dead}"));
                    }
                    if v.len() > SPARSE_MAX || !cap_ok(v.len(), v.capacity()) {
                        return Err(format!(
                            "3/7: sparse block {i}: {} entries, capacity {}",
                            v.len(),
                            v.capacity()
                        ));
                    }
                    if entries.last().is_some_and(|l| l.0 - b.base >= OFFSET_LIMIT) {
                        return Err(format!("3: block {i} offset above 32 bits"));
                    }
                    if let Some(
                        next @ Block {
                            base: nb,
                            pins: Pins::Sparse(nv),
                        },
                    ) = self.blocks.get(i + 1)
                    {
                        let next_last = nb + nv.last().map_or(0, |e| off_of(*e));
                        if b.len() + next.len() <= MERGE_MAX && next_last - b.base < OFFSET_LIMIT {
                            return Err(format!("5: blocks {i} and {} can merge", i + 1));
                        }
                    }
                }
                Pins::Bitmap(bm) => {
                    if b.base % WINDOW_PAGES != 0 || bm.pages < BITMAP_MIN {
                        return Err(format!(
                            "4: bitmap {i} at {} with {} pages",
                            b.base, bm.pages
                        ));
                    }
                    let set: u32 = bm.present.iter().map(|w| w.count_ones()).sum();
                    let many = entries.iter().filter(|e| e.1 > 1).count() as u32;
                    if set != bm.pages || many != bm.multi {
                        return Err(format!("4: bitmap {i} counters"));
                    }
                    match &bm.counts {
                        Counts::Few(v) => {
                            if v.len() != many as usize
                                || v.len() > FEW_MAX
                                || !cap_ok(v.len(), v.capacity())
                                || v.windows(2).any(|w| off_of(w[0]) >= off_of(w[1]))
                                || v.iter().any(|e| count_of(*e) < 2 || !bm.has(off_of(*e)))
                            {
                                return Err(format!("4: bitmap {i} count list"));
                            }
                        }
                        Counts::All(a) => {
                            let absent_ok = a
                                .iter()
                                .enumerate()
                                .all(|(bit, &c)| (c == 0) != bm.has(bit as u64));
                            if !absent_ok || bm.multi < ALL_MIN {
                                return Err(format!("4: bitmap {i} count array"));
                            }
                        }
                    }
                }
            }
        }
        if (pages, refs) != (self.pinned_pages, self.pin_refs) {
            return Err(format!(
                "6: counted {pages} pages {refs} refs, recorded {} {}",
                self.pinned_pages, self.pin_refs
            ));
        }
        let bound = 56 * pages + 16 * multi;
        if self.heap_bytes() as u64 > bound {
            return Err(format!(
                "memory: {} bytes for {pages} pages ({multi} multiply pinned)",
                self.heap_bytes()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn checked(t: &PinTracker) {
        if let Err(e) = t.check_invariants() {
            panic!("invariant {e}");
        }
    }

    fn kinds(t: &PinTracker) -> Vec<(u64, char, usize)> {
        t.blocks
            .iter()
            .map(|b| {
                let k = match b.pins {
                    Pins::Sparse(_) => 's',
                    Pins::Bitmap(_) => 'b',
                };
                (b.base, k, b.len())
            })
            .collect()
    }

    #[test]
    fn a_block_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Block>(), 32);
    }

    #[test]
    fn counts_refcounts_and_removal() {
        let mut t = PinTracker::new();
        assert_eq!(t.pin(5), Ok(true));
        assert_eq!(t.pin(5), Ok(false));
        assert_eq!(t.pin(3), Ok(true));
        assert_eq!(t.pin(700), Ok(true));
        checked(&t);
        assert_eq!(t.count(5), 2);
        assert_eq!(t.count(3), 1);
        assert_eq!(t.count(4), 0);
        assert_eq!((t.pinned_pages(), t.pin_refs()), (3, 4));
        assert!(!t.unpin(5));
        assert!(t.unpin(5));
        assert!(!t.unpin(5));
        assert!(!t.unpin(1 << 40));
        assert_eq!(t.count(3), 1);
        assert_eq!(t.pages().collect::<Vec<_>>(), vec![3, 700]);
        assert_eq!(t.pages_in(0, 700), vec![3]);
        assert_eq!(t.pages_in(4, 697), vec![700]);
        assert!(t.unpin(700));
        checked(&t);
        assert_eq!(t.pin_refs(), 1);
        assert_eq!(t.clear(), 1);
        assert!(t.is_empty());
        assert_eq!(t.heap_bytes(), 0);
        checked(&t);
    }

    #[test]
    fn a_lone_pin_costs_40_bytes() {
        let mut t = PinTracker::new();
        t.pin(123_456_789).unwrap();
        assert_eq!(t.heap_bytes(), 40);
        assert!(t.unpin(123_456_789));
        assert_eq!(t.heap_bytes(), 0);
    }

    #[test]
    fn runs_coalesce_across_blocks() {
        let mut t = PinTracker::new();
        for p in (4000..4200).chain([5000]) {
            t.pin(p).unwrap();
        }
        checked(&t);
        assert_eq!(t.runs(), vec![(4000, 200), (5000, 1)]);
        // Pages 4000..4095 went into window 0's bitmap, the rest after it.
        assert_eq!(kinds(&t)[0], (0, 'b', 96));
    }

    #[test]
    fn dense_window_becomes_a_bitmap_and_back() {
        let mut t = PinTracker::new();
        for p in 0..(TO_BITMAP as u64 - 1) {
            t.pin(p * 2).unwrap();
        }
        assert_eq!(kinds(&t), vec![(0, 's', TO_BITMAP - 1)]);
        t.pin(1).unwrap();
        assert_eq!(kinds(&t), vec![(0, 'b', TO_BITMAP)]);
        checked(&t);
        // Hysteresis: down to BITMAP_MIN pins it stays a bitmap.
        for p in 0..(TO_BITMAP as u64 - BITMAP_MIN as u64) {
            assert!(t.unpin(p * 2));
            checked(&t);
        }
        assert_eq!(kinds(&t), vec![(0, 'b', BITMAP_MIN as usize)]);
        assert!(t.unpin(1));
        assert_eq!(kinds(&t)[0].1, 's');
        assert_eq!(t.pinned_pages(), u64::from(BITMAP_MIN) - 1);
        checked(&t);
    }

    #[test]
    fn sparse_pins_on_both_sides_of_a_dense_window_stay_sparse() {
        let mut t = PinTracker::new();
        let pages: Vec<u64> = [10u64, 4000]
            .into_iter()
            .chain(8192..8192 + TO_BITMAP as u64)
            .chain([20_000, 1 << 33])
            .collect();
        for &p in pages.iter().rev() {
            t.pin(p).unwrap();
            checked(&t);
        }
        assert_eq!(
            kinds(&t),
            vec![
                (10, 's', 2),
                (8192, 'b', TO_BITMAP),
                (20_000, 's', 1),
                (1 << 33, 's', 1)
            ]
        );
        assert_eq!(t.pages().collect::<Vec<_>>(), pages);
    }

    #[test]
    fn unpinning_in_order_leaves_a_dead_prefix_that_a_pin_drops() {
        let mut t = PinTracker::new();
        for p in 0..100u64 {
            t.pin(p * 100).unwrap();
        }
        assert_eq!(kinds(&t), vec![(0, 's', 100)]);
        let bytes = t.heap_bytes();
        for p in 0..10u64 {
            assert!(t.unpin(p * 100));
            checked(&t);
        }
        let Pins::Sparse(v) = &t.blocks[0].pins else {
            panic!("not sparse");
        };
        // Nothing moved or shrank: the ten entries are only zeroed.
        assert_eq!((dead_prefix(v), v.len(), t.heap_bytes()), (10, 100, bytes));
        assert_eq!((t.count(0), t.count(900), t.count(1000)), (0, 0, 1));
        assert!(!t.unpin(900));
        assert_eq!(t.pages().next(), Some(1000));
        assert_eq!(t.pages_in(0, 1001), vec![1000]);
        assert_eq!(kinds(&t), vec![(0, 's', 90)]);
        // A pin into the block drops the dead entries first.
        assert_eq!(t.pin(900), Ok(true));
        checked(&t);
        let Pins::Sparse(v) = &t.blocks[0].pins else {
            panic!("not sparse");
        };
        assert_eq!((dead_prefix(v), v.len()), (0, 91));
        assert_eq!(t.pages().take(2).collect::<Vec<_>>(), vec![900, 1000]);
        // The prefix stays under DEAD_MAX: the 17th in-order unpin compacts.
        for p in 9..9 + DEAD_MAX as u64 + 1 {
            assert!(t.unpin(p * 100));
            checked(&t);
        }
        let Pins::Sparse(v) = &t.blocks[0].pins else {
            panic!("not sparse");
        };
        assert_eq!((dead_prefix(v), v.len()), (0, 91 - DEAD_MAX - 1));
    }

    #[test]
    fn offsets_beyond_32_bits_get_their_own_block() {
        let mut t = PinTracker::new();
        let far = [
            0u64,
            (1 << 32) - 1,
            1 << 32,
            3 << 40,
            u64::MAX - 1,
            u64::MAX,
        ];
        for &p in &far {
            t.pin(p).unwrap();
            checked(&t);
        }
        for &p in &far {
            assert_eq!(t.count(p), 1, "{p}");
        }
        assert_eq!(t.pages().collect::<Vec<_>>(), far);
        assert_eq!(t.count(u64::MAX - 2), 0);
        for &p in &far {
            assert!(t.unpin(p));
            checked(&t);
        }
        assert!(t.blocks.is_empty());
    }

    #[test]
    fn counts_in_a_bitmap_go_from_list_to_array_and_back() {
        let mut t = PinTracker::new();
        let n = WINDOW_PAGES;
        for p in 0..n {
            t.pin(p).unwrap();
        }
        for p in 0..=FEW_MAX as u64 {
            t.pin(p).unwrap();
        }
        checked(&t);
        let Pins::Bitmap(b) = &t.blocks[0].pins else {
            panic!("not a bitmap: {:?}", kinds(&t));
        };
        assert!(matches!(b.counts, Counts::All(_)));
        assert_eq!(t.count(0), 2);
        assert_eq!(t.count(n - 1), 1);
        for p in 0..(FEW_MAX as u64 + 1 - u64::from(ALL_MIN) + 1) {
            assert!(!t.unpin(p));
        }
        checked(&t);
        let Pins::Bitmap(b) = &t.blocks[0].pins else {
            panic!("not a bitmap");
        };
        assert!(matches!(b.counts, Counts::Few(_)));
        assert_eq!(t.pin_refs(), n + u64::from(ALL_MIN) - 1);
    }

    #[test]
    fn count_overflow_is_refused_and_changes_nothing() {
        let mut t = PinTracker::new();
        t.pin(7).unwrap();
        if let Pins::Sparse(v) = &mut t.blocks[0].pins {
            v[0] = entry(0, u32::MAX);
        }
        t.pin_refs = u64::from(u32::MAX);
        assert_eq!(t.pin(7), Err(PinCountOverflow { page: 7 }));
        assert_eq!(t.count(7), u32::MAX);
        checked(&t);
    }

    #[test]
    fn dense_tracking_stays_under_1_byte_a_page() {
        let mut t = PinTracker::new();
        let pages = 1u64 << 18;
        for p in 0..pages {
            t.pin(p).unwrap();
        }
        checked(&t);
        let once = t.heap_bytes() as f64 / pages as f64;
        assert!(once <= 0.15, "{once} bytes per page");
        for p in 0..pages {
            t.pin(p).unwrap();
        }
        checked(&t);
        let twice = t.heap_bytes() as f64 / pages as f64;
        assert!(twice <= 4.2, "{twice} bytes per page");
    }

    #[test]
    fn pin_order_does_not_matter_for_dense_windows() {
        // Pages of 1 MiB pinned in a scrambled order end up in bitmaps.
        let mut t = PinTracker::new();
        let pages = 1u64 << 16;
        for i in 0..pages {
            t.pin((i * 40_503) % pages).unwrap();
        }
        checked(&t);
        assert!(kinds(&t).iter().all(|k| k.1 == 'b'), "{:?}", kinds(&t));
        assert!(t.heap_bytes() as f64 / pages as f64 <= 0.15);
    }

    /// One operation of the model test.
    #[derive(Debug, Clone)]
    enum Op {
        Pin(u64),
        Unpin(u64),
        PinRun(u64, u64),
        /// `n` pages from `p`, one in `stride`.
        PinStride(u64, u64, u64),
        UnpinRun(u64, u64),
        /// What a device's dma_unmap callback does: drop all its pins of
        /// the range.
        Drop(u64, u64),
        Clear,
    }

    fn apply(t: &mut PinTracker, m: &mut BTreeMap<u64, u32>, op: &Op) {
        let pin = |t: &mut PinTracker, m: &mut BTreeMap<u64, u32>, p: u64| {
            let c = m.entry(p).or_insert(0);
            assert_eq!(t.pin(p), Ok(*c == 0), "pin {p}");
            *c += 1;
        };
        let unpin = |t: &mut PinTracker, m: &mut BTreeMap<u64, u32>, p: u64| {
            let want = match m.get_mut(&p) {
                None => false,
                Some(c) if *c > 1 => {
                    *c -= 1;
                    false
                }
                Some(_) => {
                    m.remove(&p);
                    true
                }
            };
            assert_eq!(t.unpin(p), want, "unpin {p}");
        };
        match *op {
            Op::Pin(p) => pin(t, m, p),
            Op::Unpin(p) => unpin(t, m, p),
            Op::PinRun(p, n) => (p..p.saturating_add(n)).for_each(|q| pin(t, m, q)),
            Op::PinStride(p, stride, n) => (0..n)
                .map_while(|k| p.checked_add(k * stride))
                .for_each(|q| pin(t, m, q)),
            Op::UnpinRun(p, n) => (p..p.saturating_add(n)).for_each(|q| unpin(t, m, q)),
            Op::Drop(p, n) => {
                let pinned = t.pages_in(p, n);
                let want: Vec<u64> = m.range(p..p.saturating_add(n)).map(|(k, _)| *k).collect();
                assert_eq!(pinned, want);
                for q in pinned {
                    while !t.unpin(q) {}
                    m.remove(&q);
                }
            }
            Op::Clear => {
                assert_eq!(t.clear(), m.len() as u64);
                m.clear();
            }
        }
    }

    fn same(t: &PinTracker, m: &BTreeMap<u64, u32>, probes: &[u64]) {
        checked(t);
        assert_eq!(t.pinned_pages(), m.len() as u64);
        assert_eq!(t.pin_refs(), m.values().map(|&c| u64::from(c)).sum::<u64>());
        assert!(t.pages().eq(m.keys().copied()));
        for &p in probes {
            assert_eq!(t.count(p), m.get(&p).copied().unwrap_or(0), "count {p}");
        }
    }

    #[test]
    fn matches_a_btreemap_model() {
        use proptest::prelude::*;
        // Pages near the start of a mapping, near a window edge, and
        // anywhere in a mapping of 2^52 pages (16 EiB of 4K pages).
        let page = prop_oneof![
            4 => 0u64..20_000,
            1 => (0u64..4).prop_map(|k| k * WINDOW_PAGES + WINDOW_PAGES - 1),
            1 => 0u64..(1 << 52),
            1 => ((1u64 << 52) - 8)..(1 << 52),
        ];
        let op = prop_oneof![
            8 => page.clone().prop_map(Op::Pin),
            4 => page.clone().prop_map(Op::Unpin),
            3 => (page.clone(), 1u64..600).prop_map(|(p, n)| Op::PinRun(p, n)),
            2 => (page.clone(), 2u64..80, 1u64..300).prop_map(|(p, s, n)| Op::PinStride(p, s, n)),
            2 => (page.clone(), 1u64..600).prop_map(|(p, n)| Op::UnpinRun(p, n)),
            1 => (page, 1u64..9000).prop_map(|(p, n)| Op::Drop(p, n)),
            1 => Just(Op::Clear),
        ];
        let cfg = ProptestConfig {
            cases: 200,
            ..ProptestConfig::default()
        };
        proptest!(cfg, |(ops in proptest::collection::vec(op, 1..60))| {
            let mut t = PinTracker::new();
            let mut m = BTreeMap::new();
            for op in &ops {
                apply(&mut t, &mut m, op);
                let probes: Vec<u64> = m.keys().take(50).copied().chain([0, 1, 4095, 4096, 1 << 32]).collect();
                same(&t, &m, &probes);
            }
            // Unpinning everything (in reverse order) leaves nothing.
            let all: Vec<(u64, u32)> = m.iter().rev().map(|(k, v)| (*k, *v)).collect();
            for (p, c) in all {
                for _ in 0..c {
                    t.unpin(p);
                }
                checked(&t);
            }
            prop_assert!(t.is_empty());
            prop_assert_eq!(t.heap_bytes(), 0);
        });
    }

    #[test]
    fn random_density_scan() {
        // Every density from dense to 1/4096, random placement and order:
        // the model agrees and the memory bound holds throughout.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for every in [1u64, 2, 4, 16, 64, 512, 4096] {
            let span = 1u64 << 20;
            let mut t = PinTracker::new();
            let mut m = BTreeMap::new();
            for _ in 0..span / every {
                let p = next() % span;
                apply(&mut t, &mut m, &Op::Pin(p));
            }
            same(&t, &m, &[]);
            for _ in 0..span / every / 2 {
                let p = next() % span;
                apply(&mut t, &mut m, &Op::Unpin(p));
                if let Some((&k, _)) = m.range(p..).next() {
                    apply(&mut t, &mut m, &Op::Unpin(k));
                }
            }
            same(&t, &m, &[]);
        }
    }
}
