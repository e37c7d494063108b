//! The register file the emulator reads and writes.
//!
//! Invariants: `gpr` is indexed in the x86 encoding order (RAX=0 … R15=15);
//! a vector register `n` (0..32) is `xmm[n]` (bits 0..128), `ymm_high[n]`
//! (bits 128..256) and `zmm_high[n]` (bits 256..384, 384..512), all
//! little-endian `u128`. Writes follow the x86 rules:
//! 8- and 16-bit GPR writes merge into the old value, 32-bit writes zero
//! bits 32..64, 64-bit writes replace.

use iced_x86::Register;

/// GPR indices in `Registers::gpr` (x86 encoding order).
pub mod gpr {
    /// `rax`.
    pub const RAX: usize = 0;
    /// `rcx`.
    pub const RCX: usize = 1;
    /// `rdx`.
    pub const RDX: usize = 2;
    /// `rbx`.
    pub const RBX: usize = 3;
    /// `rsp`.
    pub const RSP: usize = 4;
    /// `rbp`.
    pub const RBP: usize = 5;
    /// `rsi`.
    pub const RSI: usize = 6;
    /// `rdi`.
    pub const RDI: usize = 7;
    /// `r8`.
    pub const R8: usize = 8;
    /// `r9`.
    pub const R9: usize = 9;
    /// `r10`.
    pub const R10: usize = 10;
    /// `r11`.
    pub const R11: usize = 11;
    /// `r12`.
    pub const R12: usize = 12;
    /// `r13`.
    pub const R13: usize = 13;
    /// `r14`.
    pub const R14: usize = 14;
    /// `r15`.
    pub const R15: usize = 15;
}

/// RFLAGS bits the emulator reads or writes.
pub mod flags {
    /// The CF flag.
    pub const CF: u64 = 1 << 0;
    /// The PF flag.
    pub const PF: u64 = 1 << 2;
    /// The AF flag.
    pub const AF: u64 = 1 << 4;
    /// The ZF flag.
    pub const ZF: u64 = 1 << 6;
    /// The SF flag.
    pub const SF: u64 = 1 << 7;
    /// The DF flag.
    pub const DF: u64 = 1 << 10;
    /// The OF flag.
    pub const OF: u64 = 1 << 11;
    /// The six arithmetic status flags.
    pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;
}

/// The part of a thread's state an MMIO instruction can use or change.
///
/// Trace mode fills it from `user_regs_struct` (GPRs, rip, eflags,
/// fs_base, gs_base) and the XSAVE area (legacy part: XMM0-15; AVX: YMM
/// upper halves; AVX-512 ZMM_Hi256 and Hi16_ZMM: the rest, where the CPU
/// has them, else zero); preload mode from the `ucontext_t` of the SIGSEGV
/// handler.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    /// General-purpose registers, in encoding order (see [`gpr`]).
    pub gpr: [u64; 16],
    /// The instruction pointer.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// FS segment base.
    pub fs_base: u64,
    /// GS segment base.
    pub gs_base: u64,
    /// Bits 0-127 of vector registers 0-31.
    pub xmm: [u128; 32],
    /// Bits 128-255 of vector registers 0-31.
    pub ymm_high: [u128; 32],
    /// Bits 256-511 of vector registers 0-31.
    pub zmm_high: [[u128; 2]; 32],
}

/// AH, CH, DH and BH name bits 8..16 of RAX..RBX.
fn is_high_byte(reg: Register) -> bool {
    matches!(
        reg,
        Register::AH | Register::CH | Register::DH | Register::BH
    )
}

/// The `gpr` index of any-width GPR `reg` (None for other registers).
fn gpr_index(reg: Register) -> Option<usize> {
    if !reg.is_gpr() {
        return None;
    }
    let index = reg.full_register().number() - Register::RAX.number();
    (index < 16).then_some(index)
}

/// The vector register number (0..32) of an XMM, YMM or ZMM register.
pub(crate) fn vector_index(reg: Register) -> Option<usize> {
    let index = if reg.is_xmm() {
        reg.number() - Register::XMM0.number()
    } else if reg.is_ymm() {
        reg.number() - Register::YMM0.number()
    } else if reg.is_zmm() {
        reg.number() - Register::ZMM0.number()
    } else {
        return None;
    };
    (index < 32).then_some(index)
}

impl Registers {
    /// The value of a GPR of any width, zero-extended (None if `reg` is not a GPR).
    pub fn read_gpr(&self, reg: Register) -> Option<u64> {
        let full = self.gpr[gpr_index(reg)?];
        Some(match reg.size() {
            1 if is_high_byte(reg) => (full >> 8) & 0xff,
            1 => full & 0xff,
            2 => full & 0xffff,
            4 => full & 0xffff_ffff,
            _ => full,
        })
    }

    /// Writes `value` (its low `reg.size()` bytes) to a GPR with the x86
    /// merge/zero-extend rule. Returns false if `reg` is not a GPR.
    pub fn write_gpr(&mut self, reg: Register, value: u64) -> bool {
        let Some(index) = gpr_index(reg) else {
            return false;
        };
        let old = self.gpr[index];
        self.gpr[index] = match reg.size() {
            1 if is_high_byte(reg) => (old & !0xff00) | ((value & 0xff) << 8),
            1 => (old & !0xff) | (value & 0xff),
            2 => (old & !0xffff) | (value & 0xffff),
            4 => value & 0xffff_ffff,
            _ => value,
        };
        true
    }

    /// The value iced-x86 asks for when it computes an address: a GPR of
    /// any width or a segment base (64-bit mode: only FS and GS have one).
    pub(crate) fn address_register(&self, reg: Register) -> Option<u64> {
        match reg {
            Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
            Register::FS => Some(self.fs_base),
            Register::GS => Some(self.gs_base),
            _ => self.read_gpr(reg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_and_sixteen_bit_writes_merge() {
        let mut regs = Registers::default();
        regs.gpr[gpr::RAX] = 0x1122_3344_5566_7788;
        assert!(regs.write_gpr(Register::AL, 0xaa));
        assert_eq!(regs.gpr[gpr::RAX], 0x1122_3344_5566_77aa);
        assert!(regs.write_gpr(Register::AH, 0x1bb));
        assert_eq!(regs.gpr[gpr::RAX], 0x1122_3344_5566_bbaa);
        assert!(regs.write_gpr(Register::AX, 0xcccc));
        assert_eq!(regs.gpr[gpr::RAX], 0x1122_3344_5566_cccc);
    }

    #[test]
    fn thirty_two_bit_write_zeroes_upper_half() {
        let mut regs = Registers::default();
        regs.gpr[gpr::R9] = u64::MAX;
        assert!(regs.write_gpr(Register::R9D, 0xffff_ffff_1234_5678));
        assert_eq!(regs.gpr[gpr::R9], 0x1234_5678);
        assert!(regs.write_gpr(Register::R9, 0x8000_0000_0000_0001));
        assert_eq!(regs.gpr[gpr::R9], 0x8000_0000_0000_0001);
    }

    #[test]
    fn reads_by_width_and_high_bytes() {
        let mut regs = Registers::default();
        regs.gpr[gpr::RBX] = 0x1122_3344_5566_7788;
        regs.gpr[gpr::R12] = 0xfedc_ba98_7654_3210;
        assert_eq!(regs.read_gpr(Register::BH), Some(0x77));
        assert_eq!(regs.read_gpr(Register::BL), Some(0x88));
        assert_eq!(regs.read_gpr(Register::BX), Some(0x7788));
        assert_eq!(regs.read_gpr(Register::EBX), Some(0x5566_7788));
        assert_eq!(regs.read_gpr(Register::R12L), Some(0x10));
        assert_eq!(regs.read_gpr(Register::R12W), Some(0x3210));
        assert_eq!(regs.read_gpr(Register::R12), Some(0xfedc_ba98_7654_3210));
        assert_eq!(regs.read_gpr(Register::XMM0), None);
        assert!(!regs.write_gpr(Register::ES, 0));
    }

    #[test]
    fn segment_bases_for_addresses() {
        let regs = Registers {
            fs_base: 0x7000,
            gs_base: 0x9000,
            ..Default::default()
        };
        assert_eq!(regs.address_register(Register::DS), Some(0));
        assert_eq!(regs.address_register(Register::FS), Some(0x7000));
        assert_eq!(regs.address_register(Register::GS), Some(0x9000));
    }
}
