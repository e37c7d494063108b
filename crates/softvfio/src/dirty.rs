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

/// A zeroed bitmap of `nbits` bits.
pub fn new_bitmap(nbits: u64) -> Vec<u64> {
    vec![0; nbits.div_ceil(64) as usize]
}

pub fn set_bit(bits: &mut [u64], n: u64) {
    if let Some(w) = bits.get_mut((n / 64) as usize) {
        *w |= 1 << (n % 64);
    }
}

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
    let copy_offset = bit_offset / 64;
    let shift = bit_offset % 64;
    let total_bits = nbits + shift;
    let words = total_bits.div_ceil(64) as usize;
    let mut out = vec![0u64; words];
    for n in 0..nbits {
        if test_bit(bits, n) {
            set_bit(&mut out, n + shift);
        }
    }
    let addr = user_data
        .checked_add(copy_offset * 8)
        .ok_or(VfioError::Fault)?;
    if shift != 0 {
        let mut leftover = [0u8; 8];
        mem.read(addr, &mut leftover)
            .map_err(|_| VfioError::Fault)?;
        if let Some(w) = out.first_mut() {
            *w |= u64::from_ne_bytes(leftover);
        }
    }
    let bytes: Vec<u8> = out.iter().flat_map(|w| w.to_ne_bytes()).collect();
    mem.write(addr, &bytes).map_err(|_| VfioError::Fault)
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
    fn set_all_sets_exactly_nbits() {
        let mut b = new_bitmap(70);
        set_all(&mut b, 70);
        assert_eq!(b, vec![u64::MAX, 0x3f]);
        assert_eq!(count(&b, 70), 70);
    }
}
