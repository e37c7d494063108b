//! Dirty page tracking: per-mapping bitmaps and their copy into the user's
//! bitmap with type1's layout (bit n = page n from the request's base IOVA,
//! packed in 64-bit words, each mapping's bits ORed into the word it shares
//! with the previous one).

use crate::error::{Result, VfioError};
use crate::memory::UserMemory;

/// Largest number of pages one bitmap may describe (`INT_MAX`).
pub const DIRTY_BITMAP_PAGES_MAX: u64 = i32::MAX as u64;
/// Bytes of a bitmap for `npages` pages, rounded up to whole u64 words.
pub const fn bitmap_bytes(npages: u64) -> u64 {
    npages.div_ceil(64) * 8
}
/// The largest bitmap accepted (reported in the MIGRATION capability).
pub const DIRTY_BITMAP_SIZE_MAX: u64 = bitmap_bytes(DIRTY_BITMAP_PAGES_MAX);

/// type1's `verify_bitmap_size`: the user bitmap must be non-empty, within
/// the maximum and large enough for `npages` pages.
pub fn verify_bitmap_size(npages: u64, bitmap_size: u64) -> Result<()> {
    if npages == 0 || bitmap_size == 0 || bitmap_size > DIRTY_BITMAP_SIZE_MAX {
        return Err(VfioError::Invalid("bad dirty bitmap size"));
    }
    if bitmap_size < bitmap_bytes(npages) {
        return Err(VfioError::Invalid("dirty bitmap too small"));
    }
    Ok(())
}

/// The largest per-mapping bitmap: the kernel allocates each with
/// `kvzalloc`, which refuses more than `INT_MAX` bytes (ENOMEM).
pub const MAPPING_BITMAP_BYTES_MAX: u64 = i32::MAX as u64;

/// Refuses (ENOMEM) a per-mapping bitmap of `nbits` bits larger than
/// [`MAPPING_BITMAP_BYTES_MAX`], before anything is allocated. A mapping
/// of an emulated-only container pins nothing at map time, so its size is
/// not bounded by memory: without this check its bitmap could be sized
/// from the user's request.
pub fn check_bitmap_alloc(nbits: u64) -> Result<()> {
    if bitmap_bytes(nbits) > MAPPING_BITMAP_BYTES_MAX {
        return Err(VfioError::NoMem(format!(
            "a dirty bitmap of {nbits} pages is larger than {MAPPING_BITMAP_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// A zeroed bitmap of `nbits` bits.
pub fn new_bitmap(nbits: u64) -> Vec<u64> {
    vec![0; nbits.div_ceil(64) as usize]
}

/// Sets bit `n` (a bit past the end is ignored).
pub fn set_bit(bits: &mut [u64], n: u64) {
    if let Some(w) = bits.get_mut((n / 64) as usize) {
        *w |= 1 << (n % 64);
    }
}

/// Is bit `n` set? (false past the end)
pub fn test_bit(bits: &[u64], n: u64) -> bool {
    bits.get((n / 64) as usize)
        .is_some_and(|w| w & (1 << (n % 64)) != 0)
}

/// Sets bits `0..nbits`.
pub fn set_all(bits: &mut [u64], nbits: u64) {
    let full = (nbits / 64) as usize;
    for w in bits.iter_mut().take(full) {
        *w = u64::MAX;
    }
    let rest = nbits % 64;
    if rest != 0 {
        if let Some(w) = bits.get_mut(full) {
            *w |= (1u64 << rest) - 1;
        }
    }
}

/// Number of set bits among the first `nbits`.
pub fn count(bits: &[u64], nbits: u64) -> u64 {
    (0..nbits).filter(|&n| test_bit(bits, n)).count() as u64
}

/// The first `nbits` bits of `bits`, moved up by `shift` (< 64) bits, in
/// `words` words (a word at a time, not a bit at a time: bitmaps of large
/// mappings have millions of bits).
#[cfg(test)]
fn shift_words(bits: &[u64], nbits: u64, shift: u32, words: usize) -> Vec<u64> {
    (0..words)
        .map(|i| shifted_word(&|j| bits.get(j).copied().unwrap_or(0), nbits, shift, i))
        .collect()
}

/// Word `i` of the bitmap `word` gives, keeping only its first `nbits`
/// bits, moved up by `shift` (< 64) bits.
#[inline(always)]
fn shifted_word<W: Fn(usize) -> u64 + ?Sized>(word: &W, nbits: u64, shift: u32, i: usize) -> u64 {
    let full = (nbits / 64) as usize;
    let rest = nbits % 64;
    let masked = |i: usize| -> u64 {
        if i < full {
            word(i)
        } else if i == full && rest != 0 {
            word(i) & ((1u64 << rest) - 1)
        } else {
            0
        }
    };
    let carry = if shift != 0 && i > 0 {
        masked(i - 1) >> (64 - shift)
    } else {
        0
    };
    (masked(i) << shift) | carry
}

/// Writes a mapping's `nbits` dirty bits into the user bitmap at `user_data`
/// starting at bit `bit_offset` (type1's `update_user_bitmap`): when the
/// mapping does not start on a word boundary the word already in user memory
/// is read and ORed in, so neighbouring mappings share it correctly.
pub fn copy_to_user(
    mem: &dyn UserMemory,
    user_data: u64,
    bits: &[u64],
    nbits: u64,
    bit_offset: u64,
) -> Result<()> {
    write_bits(
        mem,
        user_data,
        |i| bits.get(i).copied().unwrap_or(0),
        nbits,
        bit_offset,
        false,
    )
}

/// [`copy_to_user`] of `nbits` set bits (every page of a mapping dirty,
/// what type1 reports while a device can write memory directly), without
/// a bitmap to read them from.
pub fn copy_ones_to_user(
    mem: &dyn UserMemory,
    user_data: u64,
    nbits: u64,
    bit_offset: u64,
) -> Result<()> {
    write_bits(mem, user_data, |_| u64::MAX, nbits, bit_offset, true)
}

/// Bytes of user bitmap written per `write` (bounds the staging buffer).
const STAGE_BYTES: usize = 64 << 10;

/// All-ones bitmap words, the source of a mapping whose pages are all dirty.
static ONES: [u8; STAGE_BYTES] = [0xff; STAGE_BYTES];

/// The bits `word` gives (see [`shifted_word`]) into the user bitmap: one
/// pass producing the user's bytes, staged in pieces of [`STAGE_BYTES`].
/// `ones`: `word` gives all ones, so every word but the first and the last
/// is all ones too, whatever the shift.
fn write_bits<W: Fn(usize) -> u64>(
    mem: &dyn UserMemory,
    user_data: u64,
    word: W,
    nbits: u64,
    bit_offset: u64,
    ones: bool,
) -> Result<()> {
    let copy_offset = bit_offset / 64;
    let shift = (bit_offset % 64) as u32;
    let total_bits = nbits + u64::from(shift);
    let words = total_bits.div_ceil(64) as usize;
    let addr = user_data
        .checked_add(copy_offset * 8)
        .ok_or(VfioError::Fault)?;
    let mut leftover = 0u64;
    if shift != 0 {
        let mut b = [0u8; 8];
        mem.read(addr, &mut b).map_err(|_| VfioError::Fault)?;
        leftover = u64::from_ne_bytes(b);
    }
    let put = |i: usize, w: u64| {
        mem.write(addr + i as u64 * 8, &w.to_ne_bytes())
            .map_err(|_| VfioError::Fault)
    };
    if ones {
        // Only the first and the last word differ from all ones: the words
        // between are written straight from a constant, with no pass to
        // produce them.
        put(0, shifted_word(&word, nbits, shift, 0) | leftover)?;
        if words > 1 {
            let mut i = 1;
            while i < words - 1 {
                let n = (words - 1 - i).min(ONES.len() / 8);
                mem.write(addr + i as u64 * 8, &ONES[..n * 8])
                    .map_err(|_| VfioError::Fault)?;
                i += n;
            }
            put(words - 1, shifted_word(&word, nbits, shift, words - 1))?;
        }
        return Ok(());
    }
    let mut stage = vec![0u8; STAGE_BYTES.min(words * 8)];
    let mut first = 0usize;
    while first < words {
        let n = (words - first).min(stage.len() / 8);
        for (k, dst) in stage[..n * 8].chunks_exact_mut(8).enumerate() {
            let w = shifted_word(&word, nbits, shift, first + k);
            dst.copy_from_slice(&w.to_ne_bytes());
        }
        if first == 0 {
            let w = u64::from_ne_bytes(stage[..8].try_into().unwrap_or_default()) | leftover;
            stage[..8].copy_from_slice(&w.to_ne_bytes());
        }
        let at = addr + first as u64 * 8;
        mem.write(at, &stage[..n * 8])
            .map_err(|_| VfioError::Fault)?;
        first += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_kernel() {
        assert_eq!(DIRTY_BITMAP_SIZE_MAX, 0x1000_0000);
        assert_eq!(bitmap_bytes(1), 8);
        assert_eq!(bitmap_bytes(64), 8);
        assert_eq!(bitmap_bytes(65), 16);
        assert!(verify_bitmap_size(8, 8).is_ok());
        assert_eq!(verify_bitmap_size(8, 0).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(verify_bitmap_size(0, 8).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(verify_bitmap_size(65, 8).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(
            verify_bitmap_size(8, DIRTY_BITMAP_SIZE_MAX + 1)
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
    }

    #[test]
    fn shift_words_matches_bit_by_bit() {
        let bits = vec![0xdead_beef_0123_4567u64, 0xffff_0000_ffff_0000, 0x5];
        for nbits in [1u64, 63, 64, 65, 130, 131] {
            for shift in [0u32, 1, 17, 63] {
                let words = (nbits + u64::from(shift)).div_ceil(64) as usize;
                let mut want = vec![0u64; words];
                for n in 0..nbits {
                    if test_bit(&bits, n) {
                        set_bit(&mut want, n + u64::from(shift));
                    }
                }
                assert_eq!(
                    shift_words(&bits, nbits, shift, words),
                    want,
                    "nbits {nbits} shift {shift}"
                );
            }
        }
    }

    /// Ones written straight into user memory equal a bitmap of ones
    /// copied, at every shift, ORed into the word before; the bitmap copy
    /// equals the bit-by-bit reference across staging pieces.
    #[test]
    fn ones_and_bitmaps_reach_user_memory_as_bit_by_bit() {
        use crate::memory::sim::{SimMemory, SIZE_4K};
        let mem = SimMemory::new();
        let base = 0x10_0000u64;
        mem.add_region(base, 64 * SIZE_4K, SIZE_4K, crate::iommu::Prot::RW)
            .unwrap();
        let read = |len: usize| {
            let mut b = vec![0u8; len];
            mem.read(base, &mut b).unwrap();
            b.chunks(8)
                .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
                .collect::<Vec<u64>>()
        };
        for nbits in [1u64, 63, 64, 65, 131, 9000 * 64 + 5] {
            for offset in [0u64, 1, 17, 64, 127] {
                let words = (nbits + offset).div_ceil(64) as usize + 1;
                // A neighbour's bit below the offset, already in the word.
                mem.write(base, &vec![0u8; words * 8]).unwrap();
                if offset > 0 {
                    mem.write(base, &1u64.to_ne_bytes()).unwrap();
                }
                let mut want = vec![0u64; words];
                if offset > 0 {
                    want[0] = 1;
                }
                for n in 0..nbits {
                    set_bit(&mut want, n + offset);
                }
                copy_ones_to_user(&mem, base, nbits, offset).unwrap();
                assert_eq!(read(words * 8), want, "ones: nbits {nbits} offset {offset}");
                mem.write(base, &vec![0u8; words * 8]).unwrap();
                if offset > 0 {
                    mem.write(base, &1u64.to_ne_bytes()).unwrap();
                }
                let mut ones = new_bitmap(nbits);
                set_all(&mut ones, nbits);
                // A stray bit past nbits must not be copied.
                ones.push(u64::MAX);
                copy_to_user(&mem, base, &ones, nbits, offset).unwrap();
                assert_eq!(
                    read(words * 8),
                    want,
                    "bitmap: nbits {nbits} offset {offset}"
                );
            }
        }
    }

    #[test]
    fn set_all_sets_exactly_nbits() {
        let mut b = new_bitmap(70);
        set_all(&mut b, 70);
        assert_eq!(b, vec![u64::MAX, 0x3f]);
        assert_eq!(count(&b, 70), 70);
    }
}
