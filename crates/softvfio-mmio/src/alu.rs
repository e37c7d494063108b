//! The ALU operations of the read-modify-write forms, with x86's status flags.
//!
//! Invariants: operands and results are confined to the operand width
//! (1/2/4/8 bytes); only the six status flags are produced. AF is
//! architecturally undefined after the logical operations; this ALU clears
//! it, as the AMD EPYC the tests ran on does (`tests/against_cpu.rs`).

use crate::regs::flags;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AluOp {
    Add,
    Sub,
    /// Add with the carry flag's value.
    Adc(bool),
    /// Subtract with borrow (the carry flag's value).
    Sbb(bool),
    And,
    Or,
    Xor,
}

fn width_mask(width: usize) -> u64 {
    if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (width * 8)) - 1
    }
}

/// Computes `a op b` at `width` bytes. Returns the result and the new
/// values of the status flags (other RFLAGS bits are the caller's).
pub(crate) fn compute(op: AluOp, a: u64, b: u64, width: usize) -> (u64, u64) {
    let mask = width_mask(width);
    let sign = 1u64 << (width * 8 - 1);
    let (a, b) = (a & mask, b & mask);
    let (result, carry, overflow, adjust) = match op {
        AluOp::Add => {
            let r = a.wrapping_add(b) & mask;
            let carry = (a as u128 + b as u128) > mask as u128;
            (
                r,
                carry,
                (a ^ r) & (b ^ r) & sign != 0,
                (a ^ b ^ r) & 0x10 != 0,
            )
        }
        AluOp::Adc(carry_in) => {
            let sum = a as u128 + b as u128 + carry_in as u128;
            let r = sum as u64 & mask;
            let carry = sum > mask as u128;
            (
                r,
                carry,
                (a ^ r) & (b ^ r) & sign != 0,
                (a ^ b ^ r) & 0x10 != 0,
            )
        }
        AluOp::Sbb(borrow_in) => {
            let r = a.wrapping_sub(b).wrapping_sub(borrow_in as u64) & mask;
            let borrow = (a as u128) < b as u128 + borrow_in as u128;
            (
                r,
                borrow,
                (a ^ b) & (a ^ r) & sign != 0,
                (a ^ b ^ r) & 0x10 != 0,
            )
        }
        AluOp::Sub => {
            let r = a.wrapping_sub(b) & mask;
            (
                r,
                a < b,
                (a ^ b) & (a ^ r) & sign != 0,
                (a ^ b ^ r) & 0x10 != 0,
            )
        }
        AluOp::And => (a & b, false, false, false),
        AluOp::Or => (a | b, false, false, false),
        AluOp::Xor => (a ^ b, false, false, false),
    };
    let mut f = 0;
    if carry {
        f |= flags::CF;
    }
    if (result as u8).count_ones().is_multiple_of(2) {
        f |= flags::PF;
    }
    if adjust {
        f |= flags::AF;
    }
    if result == 0 {
        f |= flags::ZF;
    }
    if result & sign != 0 {
        f |= flags::SF;
    }
    if overflow {
        f |= flags::OF;
    }
    (result, f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::flags::*;

    #[test]
    fn add_carry_overflow_adjust() {
        // 0x7f + 1 at 8 bits: signed overflow, nibble carry, no carry out.
        assert_eq!(compute(AluOp::Add, 0x7f, 1, 1), (0x80, SF | OF | AF));
        // 0xff + 1: carry out, zero result, even parity of 0.
        assert_eq!(compute(AluOp::Add, 0xff, 1, 1), (0, CF | ZF | PF | AF));
        // 64-bit carry.
        assert_eq!(compute(AluOp::Add, u64::MAX, 2, 8), (1, CF | AF));
    }

    #[test]
    fn sub_borrow_and_overflow() {
        assert_eq!(
            compute(AluOp::Sub, 0, 1, 4),
            (0xffff_ffff, CF | SF | PF | AF)
        );
        assert_eq!(compute(AluOp::Sub, 0x8000, 1, 2), (0x7fff, OF | PF | AF));
        assert_eq!(compute(AluOp::Sub, 5, 5, 8), (0, ZF | PF));
    }

    #[test]
    fn adc_sbb_use_the_carry() {
        assert_eq!(
            compute(AluOp::Adc(true), 0xfe, 1, 1),
            (0, CF | ZF | PF | AF)
        );
        assert_eq!(compute(AluOp::Adc(false), 0xfe, 1, 1), (0xff, SF | PF));
        assert_eq!(
            compute(AluOp::Sbb(true), 1, 1, 2),
            (0xffff, CF | SF | PF | AF)
        );
        assert_eq!(
            compute(AluOp::Sbb(true), 0, u64::MAX, 8),
            (0, CF | ZF | PF | AF)
        );
    }

    #[test]
    fn logical_clear_cf_of_af() {
        assert_eq!(compute(AluOp::Or, 0x10, 0x03, 1), (0x13, 0));
        assert_eq!(compute(AluOp::And, 0xf0, 0x0f, 1), (0, ZF | PF));
        assert_eq!(compute(AluOp::Xor, 0x8000_0000, 0x1, 4), (0x8000_0001, SF));
        // Operands wider than the width are cut to it.
        assert_eq!(compute(AluOp::Or, 0x1_0000, 0x1, 2), (0x1, 0));
    }
}
