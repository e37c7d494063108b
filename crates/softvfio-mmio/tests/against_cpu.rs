//! The read-modify-write forms against the machine's own CPU: the same
//! operation run natively on registers must give the value the emulator
//! writes to the device and the same six status flags.
//!
//! The only unsafe code of the crate's tests is here: register-only
//! arithmetic in inline assembly (x86-64 hosts only).
#![cfg(target_arch = "x86_64")]

use std::io;

use iced_x86::code_asm::*;
use proptest::prelude::*;
use softvfio_mmio::{emulate, flags, gpr, BarId, MmioSpace, ProgramMemory, Registers};

const BAR: u64 = 0x1000_0000;
const RIP: u64 = 0x40_1000;

/// An 8-byte device register that records the last write.
struct Register8 {
    value: [u8; 8],
}

impl MmioSpace for Register8 {
    fn bar_at(&self, addr: u64) -> Option<(BarId, u64)> {
        (BAR..BAR + 8).contains(&addr).then(|| (0, addr - BAR))
    }
    fn read(&mut self, _: BarId, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let o = offset as usize;
        data.copy_from_slice(&self.value[o..o + data.len()]);
        Ok(())
    }
    fn write(&mut self, _: BarId, offset: u64, data: &[u8]) -> io::Result<()> {
        let o = offset as usize;
        self.value[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
}

struct NoMemory;

impl ProgramMemory for NoMemory {
    fn read(&mut self, _: u64, _: &mut [u8]) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(14))
    }
    fn write(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(14))
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Add,
    Sub,
    And,
    Or,
    Xor,
    Inc,
    Dec,
}

/// Runs `op a, b` (or `op a`) natively at `width` bytes with CF preset to
/// `carry_in`; returns the result and RFLAGS.
macro_rules! native2 {
    ($ins:literal, $m:literal, $a:expr, $b:expr, $carry:expr) => {{
        let mut a: u64 = $a;
        let f: u64;
        // SAFETY: only registers are read and written; pushfq/pop leave the
        // stack as it was and the block does not assume `nostack`.
        unsafe {
            std::arch::asm!(
                "bt {c}, 0",
                concat!($ins, " {a:", $m, "}, {b:", $m, "}"),
                "pushfq",
                "pop {f}",
                c = in(reg) $carry as u64,
                a = inout(reg) a,
                b = in(reg) $b,
                f = out(reg) f,
            );
        }
        (a, f)
    }};
}

macro_rules! native1 {
    ($ins:literal, $m:literal, $a:expr, $carry:expr) => {{
        let mut a: u64 = $a;
        let f: u64;
        // SAFETY: as in native2.
        unsafe {
            std::arch::asm!(
                "bt {c}, 0",
                concat!($ins, " {a:", $m, "}"),
                "pushfq",
                "pop {f}",
                c = in(reg) $carry as u64,
                a = inout(reg) a,
                f = out(reg) f,
            );
        }
        (a, f)
    }};
}

macro_rules! by_width {
    ($width:expr, $ins2:literal, $a:expr, $b:expr, $c:expr) => {
        match $width {
            1 => native2!($ins2, "l", $a, $b, $c),
            2 => native2!($ins2, "x", $a, $b, $c),
            4 => native2!($ins2, "e", $a, $b, $c),
            _ => native2!($ins2, "r", $a, $b, $c),
        }
    };
    ($width:expr, $ins1:literal, $a:expr, $c:expr) => {
        match $width {
            1 => native1!($ins1, "l", $a, $c),
            2 => native1!($ins1, "x", $a, $c),
            4 => native1!($ins1, "e", $a, $c),
            _ => native1!($ins1, "r", $a, $c),
        }
    };
}

fn native(op: Op, width: usize, a: u64, b: u64, carry: bool) -> (u64, u64) {
    match op {
        Op::Add => by_width!(width, "add", a, b, carry),
        Op::Sub => by_width!(width, "sub", a, b, carry),
        Op::And => by_width!(width, "and", a, b, carry),
        Op::Or => by_width!(width, "or", a, b, carry),
        Op::Xor => by_width!(width, "xor", a, b, carry),
        Op::Inc => by_width!(width, "inc", a, carry),
        Op::Dec => by_width!(width, "dec", a, carry),
    }
}

/// `op <width> ptr [rdi], <rcx of width>` (or `op <width> ptr [rdi]`).
fn code(op: Op, width: usize) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    macro_rules! two {
        ($f:ident) => {
            match width {
                1 => a.$f(byte_ptr(rdi), cl),
                2 => a.$f(word_ptr(rdi), cx),
                4 => a.$f(dword_ptr(rdi), ecx),
                _ => a.$f(qword_ptr(rdi), rcx),
            }
        };
    }
    macro_rules! one {
        ($f:ident) => {
            match width {
                1 => a.$f(byte_ptr(rdi)),
                2 => a.$f(word_ptr(rdi)),
                4 => a.$f(dword_ptr(rdi)),
                _ => a.$f(qword_ptr(rdi)),
            }
        };
    }
    match op {
        Op::Add => two!(add),
        Op::Sub => two!(sub),
        Op::And => two!(and),
        Op::Or => two!(or),
        Op::Xor => two!(xor),
        Op::Inc => one!(inc),
        Op::Dec => one!(dec),
    }
    .unwrap();
    a.assemble(RIP).unwrap()
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Add),
        Just(Op::Sub),
        Just(Op::And),
        Just(Op::Or),
        Just(Op::Xor),
        Just(Op::Inc),
        Just(Op::Dec),
    ]
}

/// Values that reach the interesting edges (0, sign bits, all ones) often.
fn operand() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        Just(0u64),
        Just(u64::MAX),
        Just(0x7f),
        Just(0x80),
        Just(0x7fff),
        Just(0x8000),
        Just(0x7fff_ffff),
        Just(0x8000_0000),
        Just(0x7fff_ffff_ffff_ffff),
        Just(0x8000_0000_0000_0000),
        0u64..32,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn read_modify_write_matches_the_cpu(
        op in op_strategy(),
        width_log in 0usize..4,
        a in operand(),
        b in operand(),
        carry in any::<bool>(),
    ) {
        let width = 1usize << width_log;
        let mask = if width == 8 { u64::MAX } else { (1u64 << (8 * width)) - 1 };
        let (expected, cpu_flags) = native(op, width, a, b, carry);

        let mut device = Register8 { value: a.to_le_bytes() };
        let mut regs = Registers { rip: RIP, rflags: 0x202 | if carry { flags::CF } else { 0 }, ..Default::default() };
        regs.gpr[gpr::RDI] = BAR;
        regs.gpr[gpr::RCX] = b;
        let code = code(op, width);
        let out = emulate(&code, BAR, &mut regs, &mut device, &mut NoMemory).unwrap();
        prop_assert!(out.completed);
        prop_assert_eq!(u64::from_le_bytes(device.value) & mask, expected & mask);
        // Bytes beyond the operand are untouched.
        prop_assert_eq!(u64::from_le_bytes(device.value) & !mask, a & !mask);
        prop_assert_eq!(regs.rflags & flags::STATUS, cpu_flags & flags::STATUS, "{:?} width {}", op, width);
        prop_assert_eq!(regs.rflags & !flags::STATUS, 0x202);
    }
}
