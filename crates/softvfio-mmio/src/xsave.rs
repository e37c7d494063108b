//! The vector registers in an XSAVE area (standard, uncompacted format):
//! the layout of ptrace's `NT_X86_XSTATE` regset and of the FP state in a
//! signal frame (`uc_mcontext.fpregs` when `FP_XSTATE_MAGIC1` is present).
//!
//! Invariants: XMM0-15 are in the legacy (FXSAVE) part at byte 160; the
//! AVX upper halves (component 2), ZMM_Hi256 (6) and Hi16_ZMM (7) are where
//! CPUID leaf 0xD says, read once; a component whose `XSTATE_BV` bit is
//! clear is in its initial state (zeros). Writing marks the components
//! written present so that the kernel loads them.

use std::sync::OnceLock;

use crate::Registers;

/// Offsets of the XSAVE components in the (standard format) XSTATE regset,
/// from CPUID leaf 0xD: (AVX upper halves, ZMM_Hi256, Hi16_ZMM); `None`
/// where the CPU lacks the component.
pub fn offsets() -> (Option<usize>, Option<usize>, Option<usize>) {
    static OFFSETS: OnceLock<(Option<usize>, Option<usize>, Option<usize>)> = OnceLock::new();
    *OFFSETS.get_or_init(cpuid_offsets)
}

fn cpuid_offsets() -> (Option<usize>, Option<usize>, Option<usize>) {
    let xcr0_low = std::arch::x86_64::__cpuid_count(0xd, 0).eax;
    let at = |comp: u32| {
        (xcr0_low & (1 << comp) != 0)
            .then(|| std::arch::x86_64::__cpuid_count(0xd, comp).ebx as usize)
    };
    (at(2), at(6), at(7))
}

const LEGACY_XMM: usize = 160;
const XSTATE_BV: usize = 512;

fn u128_at(buf: &[u8], at: usize) -> u128 {
    let mut b = [0u8; 16];
    if let Some(s) = buf.get(at..at + 16) {
        b.copy_from_slice(s);
    }
    u128::from_le_bytes(b)
}

fn put_u128(buf: &mut [u8], at: usize, v: u128) {
    if let Some(s) = buf.get_mut(at..at + 16) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// Copies the vector registers out of an XSAVE area. A component whose
/// `XSTATE_BV` bit is clear is in its initial state (zero).
pub fn load(buf: &[u8], regs: &mut Registers) {
    let bv = u64::from_le_bytes(
        buf.get(XSTATE_BV..XSTATE_BV + 8)
            .and_then(|s| s.try_into().ok())
            .unwrap_or([0; 8]),
    );
    let (avx, zmm_hi256, hi16) = offsets();
    for i in 0..16 {
        regs.xmm[i] = u128_at(buf, LEGACY_XMM + 16 * i);
        if let (Some(o), true) = (avx, bv & (1 << 2) != 0) {
            regs.ymm_high[i] = u128_at(buf, o + 16 * i);
        }
        if let (Some(o), true) = (zmm_hi256, bv & (1 << 6) != 0) {
            regs.zmm_high[i] = [u128_at(buf, o + 32 * i), u128_at(buf, o + 32 * i + 16)];
        }
    }
    if let (Some(o), true) = (hi16, bv & (1 << 7) != 0) {
        for i in 0..16 {
            let base = o + 64 * i;
            regs.xmm[16 + i] = u128_at(buf, base);
            regs.ymm_high[16 + i] = u128_at(buf, base + 16);
            regs.zmm_high[16 + i] = [u128_at(buf, base + 32), u128_at(buf, base + 48)];
        }
    }
}

/// Writes the vector registers into an XSAVE area (and marks their
/// components present in `XSTATE_BV`, so the kernel loads them).
pub fn store(regs: &Registers, buf: &mut [u8]) {
    let (avx, zmm_hi256, hi16) = offsets();
    let mut bv = u64::from_le_bytes(
        buf.get(XSTATE_BV..XSTATE_BV + 8)
            .and_then(|s| s.try_into().ok())
            .unwrap_or([0; 8]),
    );
    bv |= 1 << 1;
    for i in 0..16 {
        put_u128(buf, LEGACY_XMM + 16 * i, regs.xmm[i]);
        if let Some(o) = avx {
            put_u128(buf, o + 16 * i, regs.ymm_high[i]);
        }
        if let Some(o) = zmm_hi256 {
            put_u128(buf, o + 32 * i, regs.zmm_high[i][0]);
            put_u128(buf, o + 32 * i + 16, regs.zmm_high[i][1]);
        }
    }
    if let Some(o) = hi16 {
        for i in 0..16 {
            let base = o + 64 * i;
            put_u128(buf, base, regs.xmm[16 + i]);
            put_u128(buf, base + 16, regs.ymm_high[16 + i]);
            put_u128(buf, base + 32, regs.zmm_high[16 + i][0]);
            put_u128(buf, base + 48, regs.zmm_high[16 + i][1]);
        }
    }
    // Only components that fit the area the caller has (its size is what
    // the kernel gave).
    let fits = |o: Option<usize>, size: usize| u64::from(o.is_some_and(|o| o + size <= buf.len()));
    bv |= fits(avx, 256) << 2;
    bv |= (fits(zmm_hi256, 512) << 6) | (fits(hi16, 1024) << 7);
    if let Some(s) = buf.get_mut(XSTATE_BV..XSTATE_BV + 8) {
        s.copy_from_slice(&bv.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xsave_roundtrip() {
        let mut regs = Registers::default();
        for i in 0..32 {
            regs.xmm[i] = (i as u128 + 1) * 0x0101;
            regs.ymm_high[i] = (i as u128 + 1) << 64;
            regs.zmm_high[i] = [i as u128 + 7, i as u128 + 9];
        }
        let mut buf = vec![0u8; 4096];
        store(&regs, &mut buf);
        let mut back = Registers::default();
        load(&buf, &mut back);
        let (avx, zmm, hi16) = offsets();
        for i in 0..16 {
            assert_eq!(back.xmm[i], regs.xmm[i]);
            if avx.is_some() {
                assert_eq!(back.ymm_high[i], regs.ymm_high[i]);
            }
            if zmm.is_some() {
                assert_eq!(back.zmm_high[i], regs.zmm_high[i]);
            }
        }
        if hi16.is_some() {
            assert_eq!(back.xmm[16..], regs.xmm[16..]);
        }
    }
}
