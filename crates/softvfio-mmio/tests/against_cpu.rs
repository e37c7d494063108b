//! The emulator against the machine's own CPU. Read-modify-write: the same
//! operation run natively on registers must give the value the emulator
//! writes to the device and the same six status flags. Loads: the same
//! instruction run natively on a buffer holding the device's bytes must
//! leave the destination register as the emulator leaves it.
//!
//! The only unsafe code of the crate's tests is here: inline assembly of
//! single instructions on registers and a local buffer (x86-64 hosts only).
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
    Neg,
    Adc,
    Sbb,
    Xadd,
    Bts,
    Btr,
    Btc,
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

/// The bit-test instructions have no 8-bit form.
macro_rules! bit_by_width {
    ($width:expr, $ins2:literal, $a:expr, $b:expr, $c:expr) => {
        match $width {
            2 => native2!($ins2, "x", $a, $b, $c),
            4 => native2!($ins2, "e", $a, $b, $c),
            _ => native2!($ins2, "r", $a, $b, $c),
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
        Op::Neg => by_width!(width, "neg", a, carry),
        Op::Adc => by_width!(width, "adc", a, b, carry),
        Op::Sbb => by_width!(width, "sbb", a, b, carry),
        // The sum xadd leaves in memory and its flags are those of add.
        Op::Xadd => by_width!(width, "add", a, b, carry),
        // The register forms take the bit offset modulo the width, as the
        // memory forms do for an offset inside the operand.
        Op::Bts => bit_by_width!(width, "bts", a, b, carry),
        Op::Btr => bit_by_width!(width, "btr", a, b, carry),
        Op::Btc => bit_by_width!(width, "btc", a, b, carry),
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
    macro_rules! bits {
        ($f:ident) => {
            match width {
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
        Op::Neg => one!(neg),
        Op::Adc => two!(adc),
        Op::Sbb => two!(sbb),
        Op::Xadd => two!(xadd),
        Op::Bts => bits!(bts),
        Op::Btr => bits!(btr),
        Op::Btc => bits!(btc),
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
        Just(Op::Neg),
        Just(Op::Adc),
        Just(Op::Sbb),
        Just(Op::Xadd),
        Just(Op::Bts),
        Just(Op::Btr),
        Just(Op::Btc),
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
        let bit_op = matches!(op, Op::Bts | Op::Btr | Op::Btc);
        // Bit tests: 16 bits and up, and an offset inside the operand (the
        // memory forms address other words beyond it; see the unit tests).
        let width = if bit_op { 2usize << (width_log % 3) } else { 1usize << width_log };
        let b = if bit_op { b % (8 * width as u64) } else { b };
        let mask = if width == 8 { u64::MAX } else { (1u64 << (8 * width)) - 1 };
        let (expected, cpu_flags) = native(op, width, a, b, carry);
        // Only CF is defined after a bit test.
        let compared = if bit_op { flags::CF } else { flags::STATUS };

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
        prop_assert_eq!(regs.rflags & compared, cpu_flags & compared, "{:?} width {}", op, width);
        prop_assert_eq!(regs.rflags & !flags::STATUS, 0x202);
    }
}

/// A load into RAX from `[rdi]`, run natively and emulated.
macro_rules! gpr_load {
    ($text:literal, $build:expr) => {
        (
            $text,
            (|a: &mut CodeAssembler| $build(a)) as fn(&mut CodeAssembler) -> Result<(), IcedError>,
            (|old: u64, source: &[u8; 8]| {
                let mut value = old;
                // SAFETY: the instruction reads at most 8 bytes at `source`
                // (through RDI, or RSI for lods), a live local array, and
                // writes only RAX, RSI and flags, all declared.
                unsafe {
                    std::arch::asm!(
                        $text,
                        inout("rax") value,
                        in("rdi") source.as_ptr(),
                        inout("rsi") source.as_ptr() => _,
                        options(nostack, readonly),
                    );
                }
                value
            }) as fn(u64, &[u8; 8]) -> u64,
        )
    };
}

type GprCase = (
    &'static str,
    fn(&mut CodeAssembler) -> Result<(), IcedError>,
    fn(u64, &[u8; 8]) -> u64,
);

fn gpr_cases() -> Vec<GprCase> {
    let mut cases = vec![
        gpr_load!("mov al, byte ptr [rdi]", |a: &mut CodeAssembler| a
            .mov(al, byte_ptr(rdi))),
        gpr_load!("mov ah, byte ptr [rdi]", |a: &mut CodeAssembler| a
            .mov(ah, byte_ptr(rdi))),
        gpr_load!("mov ax, word ptr [rdi]", |a: &mut CodeAssembler| a
            .mov(ax, word_ptr(rdi))),
        gpr_load!("mov eax, dword ptr [rdi]", |a: &mut CodeAssembler| a
            .mov(eax, dword_ptr(rdi))),
        gpr_load!("mov rax, qword ptr [rdi]", |a: &mut CodeAssembler| a
            .mov(rax, qword_ptr(rdi))),
        gpr_load!("movzx ax, byte ptr [rdi]", |a: &mut CodeAssembler| a
            .movzx(ax, byte_ptr(rdi))),
        gpr_load!("movzx eax, byte ptr [rdi]", |a: &mut CodeAssembler| a
            .movzx(eax, byte_ptr(rdi))),
        gpr_load!("movzx rax, word ptr [rdi]", |a: &mut CodeAssembler| a
            .movzx(rax, word_ptr(rdi))),
        gpr_load!("movsx ax, byte ptr [rdi]", |a: &mut CodeAssembler| a
            .movsx(ax, byte_ptr(rdi))),
        gpr_load!("movsx eax, byte ptr [rdi]", |a: &mut CodeAssembler| a
            .movsx(eax, byte_ptr(rdi))),
        gpr_load!("movsx rax, byte ptr [rdi]", |a: &mut CodeAssembler| a
            .movsx(rax, byte_ptr(rdi))),
        gpr_load!("movsx eax, word ptr [rdi]", |a: &mut CodeAssembler| a
            .movsx(eax, word_ptr(rdi))),
        gpr_load!("movsx rax, word ptr [rdi]", |a: &mut CodeAssembler| a
            .movsx(rax, word_ptr(rdi))),
        gpr_load!("movsxd rax, dword ptr [rdi]", |a: &mut CodeAssembler| a
            .movsxd(rax, dword_ptr(rdi))),
        gpr_load!("or al, byte ptr [rdi]", |a: &mut CodeAssembler| a
            .or(al, byte_ptr(rdi))),
        gpr_load!("add eax, dword ptr [rdi]", |a: &mut CodeAssembler| a
            .add(eax, dword_ptr(rdi))),
        gpr_load!("sub rax, qword ptr [rdi]", |a: &mut CodeAssembler| a
            .sub(rax, qword_ptr(rdi))),
        gpr_load!("lodsw", |a: &mut CodeAssembler| a.lodsw()),
    ];
    if std::arch::is_x86_feature_detected!("movbe") {
        cases.extend([
            gpr_load!("movbe ax, word ptr [rdi]", |a: &mut CodeAssembler| a
                .movbe(ax, word_ptr(rdi))),
            gpr_load!("movbe eax, dword ptr [rdi]", |a: &mut CodeAssembler| a
                .movbe(eax, dword_ptr(rdi))),
            gpr_load!("movbe rax, qword ptr [rdi]", |a: &mut CodeAssembler| a
                .movbe(rax, qword_ptr(rdi))),
        ]);
    }
    cases
}

/// A load into XMM1 from `[rdi]`, run natively and emulated (the low 128
/// bits; what happens above them is checked in the unit tests).
macro_rules! xmm_load {
    ($text:literal, $build:expr) => {
        (
            $text,
            (|a: &mut CodeAssembler| $build(a)) as fn(&mut CodeAssembler) -> Result<(), IcedError>,
            (|old: u128, source: &[u8; 16]| {
                // SAFETY: u128 and __m128i have the same size; any bit
                // pattern is valid for both.
                let mut xmm: std::arch::x86_64::__m128i = unsafe { std::mem::transmute(old) };
                // SAFETY: the instruction reads at most 16 bytes at
                // `source`, a live local array, and writes only XMM1 (and
                // for VEX forms the rest of YMM1, which nothing here keeps).
                unsafe {
                    std::arch::asm!($text, inout("xmm1") xmm, in("rdi") source.as_ptr(), options(nostack, readonly));
                }
                // SAFETY: as above.
                unsafe { std::mem::transmute::<std::arch::x86_64::__m128i, u128>(xmm) }
            }) as fn(u128, &[u8; 16]) -> u128,
        )
    };
}

type XmmCase = (
    &'static str,
    fn(&mut CodeAssembler) -> Result<(), IcedError>,
    fn(u128, &[u8; 16]) -> u128,
);

fn xmm_cases() -> Vec<XmmCase> {
    let mut cases = vec![
        xmm_load!("movd xmm1, dword ptr [rdi]", |a: &mut CodeAssembler| a
            .movd(xmm1, dword_ptr(rdi))),
        xmm_load!("movq xmm1, qword ptr [rdi]", |a: &mut CodeAssembler| a
            .movq(xmm1, qword_ptr(rdi))),
        xmm_load!("movss xmm1, dword ptr [rdi]", |a: &mut CodeAssembler| a
            .movss(xmm1, dword_ptr(rdi))),
        xmm_load!("movsd xmm1, qword ptr [rdi]", |a: &mut CodeAssembler| a
            .movsd_2(xmm1, qword_ptr(rdi))),
        xmm_load!("movdqu xmm1, xmmword ptr [rdi]", |a: &mut CodeAssembler| a
            .movdqu(xmm1, xmmword_ptr(rdi))),
        xmm_load!("movups xmm1, xmmword ptr [rdi]", |a: &mut CodeAssembler| a
            .movups(xmm1, xmmword_ptr(rdi))),
    ];
    if std::arch::is_x86_feature_detected!("avx") {
        cases.extend([
            xmm_load!("vmovd xmm1, dword ptr [rdi]", |a: &mut CodeAssembler| a
                .vmovd(xmm1, dword_ptr(rdi))),
            xmm_load!("vmovsd xmm1, qword ptr [rdi]", |a: &mut CodeAssembler| a
                .vmovsd(xmm1, qword_ptr(rdi))),
            xmm_load!("vmovq xmm1, qword ptr [rdi]", |a: &mut CodeAssembler| a
                .vmovq(xmm1, qword_ptr(rdi))),
            xmm_load!(
                "vmovdqu xmm1, xmmword ptr [rdi]",
                |a: &mut CodeAssembler| { a.vmovdqu(xmm1, xmmword_ptr(rdi)) }
            ),
        ]);
    }
    cases
}

/// A 16-byte device window holding `bytes`.
struct Window {
    bytes: [u8; 16],
}

impl MmioSpace for Window {
    fn bar_at(&self, addr: u64) -> Option<(BarId, u64)> {
        (BAR..BAR + 16).contains(&addr).then(|| (0, addr - BAR))
    }
    fn read(&mut self, _: BarId, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let o = offset as usize;
        data.copy_from_slice(&self.bytes[o..o + data.len()]);
        Ok(())
    }
    fn write(&mut self, _: BarId, _: u64, _: &[u8]) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(30))
    }
}

fn assemble(build: fn(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    build(&mut a).unwrap();
    a.assemble(RIP).unwrap()
}

proptest! {
    #[test]
    fn gpr_loads_match_the_cpu(old in any::<u64>(), source in any::<[u8; 8]>()) {
        for (text, build, run_native) in gpr_cases() {
            let expected = run_native(old, &source);
            let mut window = Window { bytes: [0; 16] };
            window.bytes[..8].copy_from_slice(&source);
            let mut regs = Registers { rip: RIP, rflags: 0x202, ..Default::default() };
            regs.gpr[gpr::RAX] = old;
            regs.gpr[gpr::RDI] = BAR;
            regs.gpr[gpr::RSI] = BAR;
            let out = emulate(&assemble(build), BAR, &mut regs, &mut window, &mut NoMemory).unwrap();
            prop_assert!(out.completed);
            prop_assert_eq!(regs.gpr[gpr::RAX], expected, "{}", text);
        }
    }

    #[test]
    fn xmm_loads_match_the_cpu(old in any::<u128>(), source in any::<[u8; 16]>()) {
        for (text, build, run_native) in xmm_cases() {
            let expected = run_native(old, &source);
            let mut window = Window { bytes: source };
            let mut regs = Registers { rip: RIP, rflags: 0x202, ..Default::default() };
            regs.xmm[1] = old;
            regs.gpr[gpr::RDI] = BAR;
            let out = emulate(&assemble(build), BAR, &mut regs, &mut window, &mut NoMemory).unwrap();
            prop_assert!(out.completed && out.vector_written);
            prop_assert_eq!(regs.xmm[1], expected, "{}", text);
        }
    }
}

/// `cmpxchg dest, src` natively with RAX as the accumulator: returns the
/// destination, RAX and RFLAGS after it.
macro_rules! native_cmpxchg {
    ($m:literal, $dest:expr, $src:expr, $rax:expr) => {{
        let mut dest: u64 = $dest;
        let mut accumulator: u64 = $rax;
        let f: u64;
        // SAFETY: only registers are read and written; pushfq/pop leave the
        // stack as it was.
        unsafe {
            std::arch::asm!(
                concat!("cmpxchg {d:", $m, "}, {s:", $m, "}"),
                "pushfq",
                "pop {f}",
                d = inout(reg) dest,
                s = in(reg) $src,
                f = out(reg) f,
                inout("rax") accumulator,
            );
        }
        (dest, accumulator, f)
    }};
}

proptest! {
    #[test]
    fn cmpxchg_matches_the_cpu(
        width_log in 0usize..4,
        memory in operand(),
        source in any::<u64>(),
        initial in any::<u64>(),
        equal in any::<bool>(),
    ) {
        let width = 1usize << width_log;
        let mask = if width == 8 { u64::MAX } else { (1u64 << (8 * width)) - 1 };
        // Half the cases have the accumulator equal to memory.
        let initial = if equal { (initial & !mask) | (memory & mask) } else { initial };
        let (dest, cpu_rax, cpu_flags) = match width {
            1 => native_cmpxchg!("l", memory, source, initial),
            2 => native_cmpxchg!("x", memory, source, initial),
            4 => native_cmpxchg!("e", memory, source, initial),
            _ => native_cmpxchg!("r", memory, source, initial),
        };
        let mut a = CodeAssembler::new(64).unwrap();
        match width {
            1 => a.cmpxchg(byte_ptr(rdi), cl),
            2 => a.cmpxchg(word_ptr(rdi), cx),
            4 => a.cmpxchg(dword_ptr(rdi), ecx),
            _ => a.cmpxchg(qword_ptr(rdi), rcx),
        }
        .unwrap();
        let code = a.assemble(RIP).unwrap();
        let mut device = Register8 { value: memory.to_le_bytes() };
        let mut regs = Registers { rip: RIP, rflags: 0x202, ..Default::default() };
        regs.gpr[gpr::RDI] = BAR;
        regs.gpr[gpr::RCX] = source;
        regs.gpr[gpr::RAX] = initial;
        emulate(&code, BAR, &mut regs, &mut device, &mut NoMemory).unwrap();
        prop_assert_eq!(u64::from_le_bytes(device.value) & mask, dest & mask);
        prop_assert_eq!(regs.gpr[gpr::RAX], cpu_rax);
        prop_assert_eq!(regs.rflags & flags::STATUS, cpu_flags & flags::STATUS);
    }
}
