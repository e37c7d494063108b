//! Each instruction form against a recording fake device and a fake memory.

use std::io;

use iced_x86::code_asm::*;
use proptest::prelude::*;

use super::*;

const RIP: u64 = 0x40_1000;
/// BAR 0: 4 KiB; BAR 2 follows it directly (a boundary between two BARs).
const BAR0: u64 = 0x1000_0000;
const BAR0_LEN: u64 = 0x1000;
const BAR2: u64 = BAR0 + BAR0_LEN;
const BAR2_LEN: u64 = 0x100;
/// Ordinary program memory, right below BAR 0.
const MEM: u64 = BAR0 - MEM_LEN;
const MEM_LEN: u64 = 0x1000;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Access {
    Read(BarId, u64, usize, u64),
    Write(BarId, u64, usize, u64),
}
use Access::{Read, Write};

/// A device whose registers are plain bytes; records every access.
struct FakeSpace {
    bar0: Vec<u8>,
    bar2: Vec<u8>,
    log: Vec<Access>,
    /// (bar, offset) whose access fails with EIO.
    failing: Option<(BarId, u64)>,
}

impl FakeSpace {
    fn new() -> Self {
        // Distinct, recognizable bytes: offset k holds 0x80 + k (mod 256).
        let pattern = |len: u64| (0..len).map(|k| (0x80 + k) as u8).collect();
        FakeSpace {
            bar0: pattern(BAR0_LEN),
            bar2: pattern(BAR2_LEN),
            log: Vec::new(),
            failing: None,
        }
    }

    fn bar(&mut self, bar: BarId) -> &mut Vec<u8> {
        if bar == 0 {
            &mut self.bar0
        } else {
            &mut self.bar2
        }
    }

    fn set(&mut self, bar: BarId, offset: u64, bytes: &[u8]) {
        let o = offset as usize;
        self.bar(bar)[o..o + bytes.len()].copy_from_slice(bytes);
    }
}

impl MmioSpace for FakeSpace {
    fn bar_at(&self, addr: u64) -> Option<(BarId, u64)> {
        if (BAR0..BAR0 + BAR0_LEN).contains(&addr) {
            Some((0, addr - BAR0))
        } else if (BAR2..BAR2 + BAR2_LEN).contains(&addr) {
            Some((2, addr - BAR2))
        } else {
            None
        }
    }

    fn read(&mut self, bar: BarId, offset: u64, data: &mut [u8]) -> io::Result<()> {
        assert!(
            matches!(data.len(), 1 | 2 | 4 | 8),
            "device access of {} bytes",
            data.len()
        );
        if self.failing == Some((bar, offset)) {
            return Err(io::Error::from_raw_os_error(libc_eio()));
        }
        let o = offset as usize;
        data.copy_from_slice(&self.bar(bar)[o..o + data.len()]);
        self.log.push(Read(bar, offset, data.len(), le_u64(data)));
        Ok(())
    }

    fn write(&mut self, bar: BarId, offset: u64, data: &[u8]) -> io::Result<()> {
        assert!(
            matches!(data.len(), 1 | 2 | 4 | 8),
            "device access of {} bytes",
            data.len()
        );
        if self.failing == Some((bar, offset)) {
            return Err(io::Error::from_raw_os_error(libc_eio()));
        }
        let o = offset as usize;
        self.bar(bar)[o..o + data.len()].copy_from_slice(data);
        self.log.push(Write(bar, offset, data.len(), le_u64(data)));
        Ok(())
    }
}

fn libc_eio() -> i32 {
    5
}

struct FakeMemory {
    bytes: Vec<u8>,
}

impl FakeMemory {
    fn new() -> Self {
        FakeMemory {
            bytes: (0..MEM_LEN).map(|k| k as u8).collect(),
        }
    }

    fn range(&self, addr: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        if addr >= MEM && addr + len as u64 <= MEM + MEM_LEN {
            let start = (addr - MEM) as usize;
            Ok(start..start + len)
        } else {
            Err(io::Error::from_raw_os_error(14))
        }
    }
}

impl ProgramMemory for FakeMemory {
    fn read(&mut self, addr: u64, data: &mut [u8]) -> io::Result<()> {
        let range = self.range(addr, data.len())?;
        data.copy_from_slice(&self.bytes[range]);
        Ok(())
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> io::Result<()> {
        let range = self.range(addr, data.len())?;
        self.bytes[range].copy_from_slice(data);
        Ok(())
    }
}

fn asm(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    build(&mut a).unwrap();
    a.assemble(RIP).unwrap()
}

fn regs() -> Registers {
    Registers {
        rip: RIP,
        rflags: 0x202,
        ..Default::default()
    }
}

/// Runs `code` faulting at `fault`; returns the outcome and the device log.
fn run(
    code: &[u8],
    regs: &mut Registers,
    fault: u64,
    space: &mut FakeSpace,
) -> Result<Emulated, EmulationError> {
    emulate(code, fault, regs, space, &mut FakeMemory::new())
}

/// Runs a non-string instruction that must complete, checks RIP moved by
/// its length, and returns the device log.
fn run_ok(code: &[u8], regs: &mut Registers, fault: u64) -> Vec<Access> {
    let mut space = FakeSpace::new();
    let out = run(code, regs, fault, &mut space).unwrap();
    assert!(out.completed);
    assert_eq!(regs.rip, RIP + code.len() as u64);
    assert_eq!(out.device_accesses as usize, space.log.len());
    space.log
}

fn text_of(code: &[u8]) -> String {
    let mut decoder = Decoder::with_ip(64, code, RIP, DecoderOptions::NONE);
    text(&decoder.decode())
}

// ---- mov ----

#[test]
fn mov_stores_of_each_width() {
    let cases: [(Vec<u8>, usize, u64); 4] = [
        (asm(|a| a.mov(byte_ptr(rdi), al)), 1, 0x88),
        (asm(|a| a.mov(word_ptr(rdi), ax)), 2, 0x7788),
        (asm(|a| a.mov(dword_ptr(rdi), eax)), 4, 0x5566_7788),
        (
            asm(|a| a.mov(qword_ptr(rdi), rax)),
            8,
            0x1122_3344_5566_7788,
        ),
    ];
    for (code, width, value) in cases {
        let mut r = regs();
        r.gpr[gpr::RAX] = 0x1122_3344_5566_7788;
        r.gpr[gpr::RDI] = BAR0 + 0x40;
        let log = run_ok(&code, &mut r, BAR0 + 0x40);
        assert_eq!(
            log,
            vec![Write(0, 0x40, width, value)],
            "{}",
            text_of(&code)
        );
    }
}

#[test]
fn mov_store_high_byte_register() {
    let code = asm(|a| a.mov(byte_ptr(rdi + 3), ah));
    let mut r = regs();
    r.gpr[gpr::RAX] = 0xabcd;
    r.gpr[gpr::RDI] = BAR0;
    assert_eq!(run_ok(&code, &mut r, BAR0 + 3), vec![Write(0, 3, 1, 0xab)]);
}

#[test]
fn mov_stores_of_immediates() {
    let cases: [(Vec<u8>, usize, u64); 4] = [
        (asm(|a| a.mov(byte_ptr(rdi), 0x12)), 1, 0x12),
        (asm(|a| a.mov(word_ptr(rdi), 0x1234)), 2, 0x1234),
        (
            asm(|a| a.mov(dword_ptr(rdi), 0x8765_4321u32 as i32)),
            4,
            0x8765_4321,
        ),
        // The 64-bit form sign-extends its 32-bit immediate.
        (asm(|a| a.mov(qword_ptr(rdi), -2)), 8, 0xffff_ffff_ffff_fffe),
    ];
    for (code, width, value) in cases {
        let mut r = regs();
        r.gpr[gpr::RDI] = BAR0 + 0x10;
        assert_eq!(
            run_ok(&code, &mut r, BAR0 + 0x10),
            vec![Write(0, 0x10, width, value)]
        );
    }
}

#[test]
fn mov_loads_merge_or_zero_the_destination() {
    // Device bytes at offset 0x20: a0 a1 a2 a3 a4 a5 a6 a7.
    let old = 0x1111_2222_3333_4444u64;
    let cases: [(Vec<u8>, usize, u64, u64); 5] = [
        (
            asm(|a| a.mov(al, byte_ptr(rsi))),
            1,
            0xa0,
            0x1111_2222_3333_44a0,
        ),
        (
            asm(|a| a.mov(ah, byte_ptr(rsi))),
            1,
            0xa0,
            0x1111_2222_3333_a044,
        ),
        (
            asm(|a| a.mov(ax, word_ptr(rsi))),
            2,
            0xa1a0,
            0x1111_2222_3333_a1a0,
        ),
        (
            asm(|a| a.mov(eax, dword_ptr(rsi))),
            4,
            0xa3a2_a1a0,
            0xa3a2_a1a0,
        ),
        (
            asm(|a| a.mov(rax, qword_ptr(rsi))),
            8,
            0xa7a6_a5a4_a3a2_a1a0,
            0xa7a6_a5a4_a3a2_a1a0,
        ),
    ];
    for (code, width, read, result) in cases {
        let mut r = regs();
        r.gpr[gpr::RAX] = old;
        r.gpr[gpr::RSI] = BAR0 + 0x20;
        let log = run_ok(&code, &mut r, BAR0 + 0x20);
        assert_eq!(log, vec![Read(0, 0x20, width, read)], "{}", text_of(&code));
        assert_eq!(r.gpr[gpr::RAX], result, "{}", text_of(&code));
    }
}

#[test]
fn mov_extended_registers() {
    let code = asm(|a| a.mov(r11d, dword_ptr(r9 + 4)));
    let mut r = regs();
    r.gpr[gpr::R11] = u64::MAX;
    r.gpr[gpr::R9] = BAR2;
    let log = run_ok(&code, &mut r, BAR2 + 4);
    assert_eq!(log, vec![Read(2, 4, 4, 0x8786_8584)]);
    assert_eq!(r.gpr[gpr::R11], 0x8786_8584);
    let code = asm(|a| a.mov(byte_ptr(r9 + 1), r15b));
    r.gpr[gpr::R15] = 0x1ee;
    let mut r2 = r.clone();
    r2.rip = RIP;
    assert_eq!(run_ok(&code, &mut r2, BAR2 + 1), vec![Write(2, 1, 1, 0xee)]);
}

// ---- addressing forms ----

#[test]
fn base_index_scale_displacement() {
    for scale in [1u32, 2, 4, 8] {
        let code = asm(|a| a.mov(dword_ptr(rbx + rcx * scale - 0x10), edx));
        let mut r = regs();
        r.gpr[gpr::RBX] = BAR0 + 0x100;
        r.gpr[gpr::RCX] = 3;
        r.gpr[gpr::RDX] = 0xfeed_f00d;
        let offset = 0x100 + 3 * scale as u64 - 0x10;
        let log = run_ok(&code, &mut r, BAR0 + offset);
        assert_eq!(
            log,
            vec![Write(0, offset, 4, 0xfeed_f00d)],
            "{}",
            text_of(&code)
        );
    }
}

#[test]
fn special_base_encodings_rsp_rbp_r12_r13() {
    // rsp/r12 need a SIB byte; rbp/r13 need a displacement even when 0.
    let codes = [
        asm(|a| a.mov(eax, dword_ptr(rsp))),
        asm(|a| a.mov(eax, dword_ptr(r12))),
        asm(|a| a.mov(eax, dword_ptr(rbp))),
        asm(|a| a.mov(eax, dword_ptr(r13))),
    ];
    for (code, base) in codes.iter().zip([gpr::RSP, gpr::R12, gpr::RBP, gpr::R13]) {
        let mut r = regs();
        r.gpr[base] = BAR0 + 0x30;
        let log = run_ok(code, &mut r, BAR0 + 0x30);
        assert_eq!(
            log,
            vec![Read(0, 0x30, 4, 0xb3b2_b1b0)],
            "{}",
            text_of(code)
        );
        assert_eq!(r.gpr[gpr::RAX], 0xb3b2_b1b0);
    }
}

#[test]
fn index_without_base_and_absolute_address() {
    let code = asm(|a| a.mov(qword_ptr(rcx * 8 + (BAR0 as i32)), rdx));
    let mut r = regs();
    r.gpr[gpr::RCX] = 2;
    r.gpr[gpr::RDX] = 7;
    assert_eq!(run_ok(&code, &mut r, BAR0 + 16), vec![Write(0, 16, 8, 7)]);

    // mov eax, [abs64] (moffs form, A1 + 8-byte address).
    let mut code = vec![0xa1];
    code.extend_from_slice(&(BAR2 + 8).to_le_bytes());
    assert_eq!(text_of(&code), "mov eax,[10001008h]");
    let mut r = regs();
    assert_eq!(
        run_ok(&code, &mut r, BAR2 + 8),
        vec![Read(2, 8, 4, 0x8b8a_8988)]
    );
    assert_eq!(r.gpr[gpr::RAX], 0x8b8a_8988);
}

#[test]
fn rip_relative() {
    // mov eax,[rip+disp32] is 6 bytes; the address is relative to the next RIP.
    let target = BAR0 + 0x44;
    let disp = (target - (RIP + 6)) as u32;
    let mut code = vec![0x8b, 0x05];
    code.extend_from_slice(&disp.to_le_bytes());
    assert_eq!(text_of(&code), "mov eax,[10000044h]");
    let mut r = regs();
    assert_eq!(
        run_ok(&code, &mut r, target),
        vec![Read(0, 0x44, 4, 0xc7c6_c5c4)]
    );
}

#[test]
fn fs_and_gs_overrides_add_the_segment_base() {
    let code = asm(|a| a.mov(dword_ptr(rax + 8).fs(), ecx));
    let mut r = regs();
    r.fs_base = BAR0;
    r.gpr[gpr::RAX] = 0x100;
    r.gpr[gpr::RCX] = 5;
    assert_eq!(
        run_ok(&code, &mut r, BAR0 + 0x108),
        vec![Write(0, 0x108, 4, 5)]
    );

    let code = asm(|a| a.mov(cx, word_ptr(rax).gs()));
    let mut r = regs();
    r.gs_base = BAR2;
    r.gpr[gpr::RAX] = 0x10;
    assert_eq!(
        run_ok(&code, &mut r, BAR2 + 0x10),
        vec![Read(2, 0x10, 2, 0x9190)]
    );
    assert_eq!(r.gpr[gpr::RCX], 0x9190);
}

#[test]
fn address_size_override_truncates_to_32_bits() {
    // 67 8b 07: mov eax,[edi]. High bits of RDI are ignored.
    let code = [0x67, 0x8b, 0x07];
    assert_eq!(text_of(&code), "mov eax,[edi]");
    let mut r = regs();
    r.gpr[gpr::RDI] = 0xdead_0000_0000_0000 | (BAR0 + 4);
    assert_eq!(
        run_ok(&code, &mut r, BAR0 + 4),
        vec![Read(0, 4, 4, 0x8786_8584)]
    );
}

// ---- extensions ----

#[test]
fn movzx_movsx_movsxd() {
    let mut space = FakeSpace::new();
    space.set(0, 0, &[0xfe, 0xff, 0xff, 0x80]);
    let cases: [(Vec<u8>, usize, u64, u64); 6] = [
        (asm(|a| a.movzx(eax, byte_ptr(rdi))), 1, 0xfe, 0xfe),
        (asm(|a| a.movzx(rax, word_ptr(rdi))), 2, 0xfffe, 0xfffe),
        (asm(|a| a.movsx(eax, byte_ptr(rdi))), 1, 0xfe, 0xffff_fffe),
        (
            asm(|a| a.movsx(rax, word_ptr(rdi))),
            2,
            0xfffe,
            0xffff_ffff_ffff_fffe,
        ),
        // 16-bit destination: merges into the old value.
        (
            asm(|a| a.movsx(ax, byte_ptr(rdi))),
            1,
            0xfe,
            0x5555_5555_5555_fffe,
        ),
        (
            asm(|a| a.movsxd(rax, dword_ptr(rdi))),
            4,
            0x80ff_fffe,
            0xffff_ffff_80ff_fffe,
        ),
    ];
    for (code, width, read, result) in cases {
        let mut r = regs();
        r.gpr[gpr::RAX] = 0x5555_5555_5555_5555;
        r.gpr[gpr::RDI] = BAR0;
        space.log.clear();
        let out = run(&code, &mut r, BAR0, &mut space).unwrap();
        assert!(out.completed);
        assert_eq!(
            space.log,
            vec![Read(0, 0, width, read)],
            "{}",
            text_of(&code)
        );
        assert_eq!(r.gpr[gpr::RAX], result, "{}", text_of(&code));
    }
}

#[test]
fn movnti_store() {
    let code = asm(|a| a.movnti(qword_ptr(rdi + 8), r8));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0;
    r.gpr[gpr::R8] = 0x0123_4567_89ab_cdef;
    assert_eq!(
        run_ok(&code, &mut r, BAR0 + 8),
        vec![Write(0, 8, 8, 0x0123_4567_89ab_cdef)]
    );
}

// ---- vector moves ----

const XMM_OLD: u128 = 0xffff_ffff_ffff_ffff_ffff_ffff_ffff_ffff;

#[test]
fn movd_movq_loads_zero_the_rest_of_the_xmm() {
    let cases: [(Vec<u8>, usize, u64, u128, u128); 4] = [
        (
            asm(|a| a.movd(xmm1, dword_ptr(rdi))),
            4,
            0x8382_8180,
            0x8382_8180,
            XMM_OLD,
        ),
        (
            asm(|a| a.movq(xmm1, qword_ptr(rdi))),
            8,
            0x8786_8584_8382_8180,
            0x8786_8584_8382_8180,
            XMM_OLD,
        ),
        // VEX forms also clear bits 128..256.
        (
            asm(|a| a.vmovd(xmm1, dword_ptr(rdi))),
            4,
            0x8382_8180,
            0x8382_8180,
            0,
        ),
        (
            asm(|a| a.vmovq(xmm1, qword_ptr(rdi))),
            8,
            0x8786_8584_8382_8180,
            0x8786_8584_8382_8180,
            0,
        ),
    ];
    for (code, width, read, xmm, high) in cases {
        let mut r = regs();
        r.gpr[gpr::RDI] = BAR0;
        r.xmm[1] = XMM_OLD;
        r.ymm_high[1] = XMM_OLD;
        let mut space = FakeSpace::new();
        let out = run(&code, &mut r, BAR0, &mut space).unwrap();
        assert!(out.vector_written);
        assert_eq!(
            space.log,
            vec![Read(0, 0, width, read)],
            "{}",
            text_of(&code)
        );
        assert_eq!((r.xmm[1], r.ymm_high[1]), (xmm, high), "{}", text_of(&code));
        assert_eq!(r.rip, RIP + code.len() as u64);
    }
}

#[test]
fn scalar_sse_moves_are_four_and_eight_byte_accesses() {
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0 + 0x10;
    r.xmm[2] = 0x1111_2222_3333_4444_5555_6666_7777_8888;
    let code = asm(|a| a.movss(dword_ptr(rdi), xmm2));
    assert_eq!(
        run_ok(&code, &mut r.clone(), BAR0 + 0x10),
        vec![Write(0, 0x10, 4, 0x7777_8888)]
    );
    let code = asm(|a| a.movsd_2(qword_ptr(rdi), xmm2));
    assert_eq!(
        run_ok(&code, &mut r.clone(), BAR0 + 0x10),
        vec![Write(0, 0x10, 8, 0x5555_6666_7777_8888)]
    );
    // A load zeroes the rest of the xmm.
    let code = asm(|a| a.movsd_2(xmm2, qword_ptr(rdi)));
    let mut loaded = r.clone();
    run_ok(&code, &mut loaded, BAR0 + 0x10);
    assert_eq!(loaded.xmm[2], 0x9796_9594_9392_9190);
}

#[test]
fn movd_movq_stores_the_low_bytes() {
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0 + 0x10;
    r.xmm[9] = 0x1111_2222_3333_4444_5555_6666_7777_8888;
    let code = asm(|a| a.movd(dword_ptr(rdi), xmm9));
    assert_eq!(
        run_ok(&code, &mut r.clone(), BAR0 + 0x10),
        vec![Write(0, 0x10, 4, 0x7777_8888)]
    );
    let code = asm(|a| a.movq(qword_ptr(rdi), xmm9));
    assert_eq!(
        run_ok(&code, &mut r.clone(), BAR0 + 0x10),
        vec![Write(0, 0x10, 8, 0x5555_6666_7777_8888)]
    );
}

#[test]
fn sixteen_byte_store_is_two_eight_byte_writes_in_address_order() {
    let value = 0x1111_2222_3333_4444_5555_6666_7777_8888u128;
    let codes = [
        asm(|a| a.movdqu(xmmword_ptr(rdi), xmm2)),
        asm(|a| a.movdqa(xmmword_ptr(rdi), xmm2)),
        asm(|a| a.movups(xmmword_ptr(rdi), xmm2)),
        asm(|a| a.movaps(xmmword_ptr(rdi), xmm2)),
        asm(|a| a.movntdq(xmmword_ptr(rdi), xmm2)),
        asm(|a| a.vmovdqu(xmmword_ptr(rdi), xmm2)),
        asm(|a| a.vmovdqa(xmmword_ptr(rdi), xmm2)),
    ];
    for code in codes {
        let mut r = regs();
        r.gpr[gpr::RDI] = BAR0 + 0x100;
        r.xmm[2] = value;
        let log = run_ok(&code, &mut r, BAR0 + 0x100);
        assert_eq!(
            log,
            vec![
                Write(0, 0x100, 8, 0x5555_6666_7777_8888),
                Write(0, 0x108, 8, 0x1111_2222_3333_4444)
            ],
            "{}",
            text_of(&code)
        );
    }
}

#[test]
fn sixteen_byte_loads_legacy_keeps_and_vex_clears_the_upper_half() {
    for (code, high) in [
        (asm(|a| a.movdqu(xmm3, xmmword_ptr(rdi))), XMM_OLD),
        (asm(|a| a.movaps(xmm3, xmmword_ptr(rdi))), XMM_OLD),
        (asm(|a| a.vmovdqu(xmm3, xmmword_ptr(rdi))), 0),
        (asm(|a| a.vmovaps(xmm3, xmmword_ptr(rdi))), 0),
    ] {
        let mut r = regs();
        r.gpr[gpr::RDI] = BAR0 + 0x10;
        r.ymm_high[3] = XMM_OLD;
        let log = run_ok(&code, &mut r, BAR0 + 0x10);
        assert_eq!(
            log,
            vec![
                Read(0, 0x10, 8, 0x9796_9594_9392_9190),
                Read(0, 0x18, 8, 0x9f9e_9d9c_9b9a_9998)
            ],
            "{}",
            text_of(&code)
        );
        assert_eq!(r.xmm[3], 0x9f9e_9d9c_9b9a_9998_9796_9594_9392_9190);
        assert_eq!(r.ymm_high[3], high, "{}", text_of(&code));
    }
}

#[test]
fn ymm_moves_are_four_eight_byte_accesses() {
    let code = asm(|a| a.vmovdqu(ymm4, ymmword_ptr(rsi)));
    let mut r = regs();
    r.gpr[gpr::RSI] = BAR0;
    let log = run_ok(&code, &mut r, BAR0);
    let offsets: Vec<u64> = log
        .iter()
        .map(|a| {
            if let Read(0, o, 8, _) = a {
                *o
            } else {
                u64::MAX
            }
        })
        .collect();
    assert_eq!(offsets, vec![0, 8, 16, 24]);
    assert_eq!(r.xmm[4], 0x8f8e_8d8c_8b8a_8988_8786_8584_8382_8180);
    assert_eq!(r.ymm_high[4], 0x9f9e_9d9c_9b9a_9998_9796_9594_9392_9190);

    let code = asm(|a| a.vmovdqa(ymmword_ptr(rdi), ymm4));
    r.rip = RIP;
    r.gpr[gpr::RDI] = BAR2 + 0x20;
    let log = run_ok(&code, &mut r, BAR2 + 0x20);
    assert_eq!(
        log,
        vec![
            Write(2, 0x20, 8, 0x8786_8584_8382_8180),
            Write(2, 0x28, 8, 0x8f8e_8d8c_8b8a_8988),
            Write(2, 0x30, 8, 0x9796_9594_9392_9190),
            Write(2, 0x38, 8, 0x9f9e_9d9c_9b9a_9998),
        ]
    );
}

#[test]
fn vex_loads_clear_up_to_512_bits_and_legacy_loads_keep_them() {
    for (code, kept) in [
        (asm(|a| a.movups(xmm5, xmmword_ptr(rdi))), true),
        (asm(|a| a.vmovups(xmm5, xmmword_ptr(rdi))), false),
        (asm(|a| a.vmovq(xmm5, qword_ptr(rdi))), false),
        (asm(|a| a.vmovdqu(ymm5, ymmword_ptr(rdi))), false),
    ] {
        let mut r = regs();
        r.gpr[gpr::RDI] = BAR0;
        r.zmm_high[5] = [XMM_OLD, XMM_OLD];
        run_ok(&code, &mut r, BAR0);
        let expected = if kept { [XMM_OLD, XMM_OLD] } else { [0, 0] };
        assert_eq!(r.zmm_high[5], expected, "{}", text_of(&code));
    }
}

#[test]
fn evex_zmm_and_high_register_moves() {
    // What glibc's AVX-512 memcpy uses: unmasked EVEX moves on registers 16-31.
    let code = asm(|a| a.vmovdqu64(zmm16, zmmword_ptr(rsi)));
    let mut r = regs();
    r.gpr[gpr::RSI] = BAR0 + 0x40;
    let log = run_ok(&code, &mut r, BAR0 + 0x40);
    let offsets: Vec<u64> = log
        .iter()
        .map(|a| {
            if let Read(0, o, 8, _) = a {
                *o
            } else {
                u64::MAX
            }
        })
        .collect();
    assert_eq!(offsets, (0..8).map(|k| 0x40 + 8 * k).collect::<Vec<_>>());
    assert_eq!(r.xmm[16], 0xcfce_cdcc_cbca_c9c8_c7c6_c5c4_c3c2_c1c0);
    assert_eq!(r.ymm_high[16], 0xdfde_dddc_dbda_d9d8_d7d6_d5d4_d3d2_d1d0);
    assert_eq!(
        r.zmm_high[16],
        [
            0xefee_edec_ebea_e9e8_e7e6_e5e4_e3e2_e1e0,
            0xfffe_fdfc_fbfa_f9f8_f7f6_f5f4_f3f2_f1f0
        ]
    );

    let code = asm(|a| a.vmovdqu8(ymmword_ptr(rdi), ymm20));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR2;
    r.xmm[20] = 0x2222_2222_2222_2222_1111_1111_1111_1111;
    r.ymm_high[20] = 0x4444_4444_4444_4444_3333_3333_3333_3333;
    r.zmm_high[20] = [XMM_OLD, XMM_OLD];
    let log = run_ok(&code, &mut r, BAR2);
    assert_eq!(
        log,
        vec![
            Write(2, 0, 8, 0x1111_1111_1111_1111),
            Write(2, 8, 8, 0x2222_2222_2222_2222),
            Write(2, 16, 8, 0x3333_3333_3333_3333),
            Write(2, 24, 8, 0x4444_4444_4444_4444),
        ]
    );

    // The aligned EVEX form checks 64-byte alignment for a zmm.
    let code = asm(|a| a.vmovdqa64(zmm1, zmmword_ptr(rdi)));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0 + 0x20;
    let err = run(&code, &mut r, BAR0 + 0x20, &mut FakeSpace::new()).unwrap_err();
    assert!(
        matches!(err, EmulationError::Misaligned { len: 64, .. }),
        "{err}"
    );
}

/// The stores of glibc 2.3x's `__memmove_avx512_unaligned_erms` (as
/// disassembled on the development machine), with RDI = BAR 0 + 0x100 and
/// RDX = 0x100 (the copy length): each is performed with the right
/// offset and number of 8-byte pieces.
#[test]
fn glibc_avx512_memcpy_store_forms() {
    type Build = fn(&mut CodeAssembler) -> Result<(), IcedError>;
    let cases: [(Build, u64, usize); 8] = [
        (
            |a| a.vmovdqu64(zmmword_ptr(rdi + rdx - 0x40), zmm17),
            0x1c0,
            8,
        ),
        (|a| a.vmovdqa64(zmmword_ptr(rdi + 0xc0), zmm20), 0x1c0, 8),
        (|a| a.vmovntdq(zmmword_ptr(rdi), zmm16), 0x100, 8),
        (
            |a| a.vmovdqu64(ymmword_ptr(rdi + rdx - 0x20), ymm17),
            0x1e0,
            4,
        ),
        (|a| a.vmovdqu(xmmword_ptr(rdi + rdx - 0x10), xmm1), 0x1f0, 2),
        (|a| a.mov(qword_ptr(rdi + rdx - 8), rcx), 0x1f8, 1),
        (|a| a.mov(word_ptr(rdi + rdx + 2), si), 0x202, 1),
        (|a| a.mov(byte_ptr(rdi), cl), 0x100, 1),
    ];
    for (build, offset, pieces) in cases {
        let code = asm(build);
        let mut r = regs();
        r.gpr[gpr::RDI] = BAR0 + 0x100;
        r.gpr[gpr::RDX] = 0x100;
        let log = run_ok(&code, &mut r, BAR0 + offset);
        assert_eq!(log.len(), pieces, "{}", text_of(&code));
        assert!(
            matches!(log[0], Write(0, o, _, _) if o == offset),
            "{}",
            text_of(&code)
        );
    }
}

#[test]
fn misaligned_aligned_move_is_refused_without_access() {
    let code = asm(|a| a.movdqa(xmm0, xmmword_ptr(rdi)));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0 + 8;
    let before = r.clone();
    let mut space = FakeSpace::new();
    let err = run(&code, &mut r, BAR0 + 8, &mut space).unwrap_err();
    assert!(
        matches!(err, EmulationError::Misaligned { len: 16, .. }),
        "{err}"
    );
    assert!(space.log.is_empty());
    assert_eq!(r, before);
    // The unaligned form is fine there.
    let code = asm(|a| a.movdqu(xmm0, xmmword_ptr(rdi)));
    assert_eq!(run_ok(&code, &mut r, BAR0 + 8).len(), 2);
}

#[test]
fn mmx_and_masked_evex_forms_are_refused() {
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0;
    let code = asm(|a| a.movq(mm0, qword_ptr(rdi)));
    let err = run(&code, &mut r, BAR0, &mut FakeSpace::new()).unwrap_err();
    assert!(matches!(err, EmulationError::Unsupported { .. }), "{err}");
    let code = asm(|a| a.vmovdqu32(xmm1.k1(), xmmword_ptr(rdi)));
    let err = run(&code, &mut r, BAR0, &mut FakeSpace::new()).unwrap_err();
    assert!(matches!(err, EmulationError::Unsupported { .. }), "{err}");
}

// ---- string instructions ----

#[test]
fn rep_movsb_into_a_bar_forward() {
    let code = asm(|a| a.rep().movsb());
    let mut r = regs();
    r.gpr[gpr::RSI] = MEM + 0x10;
    r.gpr[gpr::RDI] = BAR0 + 0x200;
    r.gpr[gpr::RCX] = 5;
    let log = run_ok(&code, &mut r, BAR0 + 0x200);
    let expected: Vec<Access> = (0..5).map(|k| Write(0, 0x200 + k, 1, 0x10 + k)).collect();
    assert_eq!(log, expected);
    assert_eq!(
        (r.gpr[gpr::RSI], r.gpr[gpr::RDI], r.gpr[gpr::RCX]),
        (MEM + 0x15, BAR0 + 0x205, 0)
    );
}

#[test]
fn rep_movsq_backward_with_direction_flag() {
    let code = asm(|a| a.rep().movsq());
    let mut r = regs();
    r.rflags |= flags::DF;
    r.gpr[gpr::RSI] = MEM + 0x18;
    r.gpr[gpr::RDI] = BAR0 + 0x18;
    r.gpr[gpr::RCX] = 3;
    let log = run_ok(&code, &mut r, BAR0 + 0x18);
    assert_eq!(
        log,
        vec![
            Write(0, 0x18, 8, 0x1f1e_1d1c_1b1a_1918),
            Write(0, 0x10, 8, 0x1716_1514_1312_1110),
            Write(0, 0x08, 8, 0x0f0e_0d0c_0b0a_0908),
        ]
    );
    assert_eq!(
        (r.gpr[gpr::RSI], r.gpr[gpr::RDI], r.gpr[gpr::RCX]),
        (MEM, BAR0, 0)
    );
}

#[test]
fn movsd_from_a_bar_into_memory() {
    let code = asm(|a| a.rep().movsd());
    let mut r = regs();
    r.gpr[gpr::RSI] = BAR2;
    r.gpr[gpr::RDI] = MEM;
    r.gpr[gpr::RCX] = 2;
    let mut space = FakeSpace::new();
    let mut memory = FakeMemory::new();
    let out = emulate(&code, BAR2, &mut r, &mut space, &mut memory).unwrap();
    assert!(out.completed);
    assert_eq!(
        space.log,
        vec![Read(2, 0, 4, 0x8382_8180), Read(2, 4, 4, 0x8786_8584)]
    );
    assert_eq!(
        &memory.bytes[..8],
        &[0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87]
    );
    assert_eq!(
        (r.gpr[gpr::RSI], r.gpr[gpr::RDI], r.gpr[gpr::RCX]),
        (BAR2 + 8, MEM + 8, 0)
    );
}

#[test]
fn movs_between_two_bars_reads_then_writes_each_element() {
    let code = asm(|a| a.rep().movsw());
    let mut r = regs();
    r.gpr[gpr::RSI] = BAR2 + 0x10;
    r.gpr[gpr::RDI] = BAR0 + 0x10;
    r.gpr[gpr::RCX] = 2;
    let log = run_ok(&code, &mut r, BAR0 + 0x10);
    assert_eq!(
        log,
        vec![
            Read(2, 0x10, 2, 0x9190),
            Write(0, 0x10, 2, 0x9190),
            Read(2, 0x12, 2, 0x9392),
            Write(0, 0x12, 2, 0x9392),
        ]
    );
    assert_eq!(
        (r.gpr[gpr::RSI], r.gpr[gpr::RDI], r.gpr[gpr::RCX]),
        (BAR2 + 0x14, BAR0 + 0x14, 0)
    );
}

#[test]
fn movs_source_segment_override() {
    // 64 a4: movsb with an FS source; the destination is always ES (base 0).
    let code = [0x64, 0xa4];
    assert_eq!(text_of(&code), "movsb es:[rdi],fs:[rsi]");
    let mut r = regs();
    r.fs_base = BAR2;
    r.gpr[gpr::RSI] = 5;
    r.gpr[gpr::RDI] = BAR0;
    let log = run_ok(&code, &mut r, BAR0);
    assert_eq!(log, vec![Read(2, 5, 1, 0x85), Write(0, 0, 1, 0x85)]);
    assert_eq!((r.gpr[gpr::RSI], r.gpr[gpr::RDI]), (6, BAR0 + 1));
}

#[test]
fn stos_with_and_without_rep() {
    let code = asm(|a| a.rep().stosd());
    let mut r = regs();
    r.gpr[gpr::RAX] = 0xaaaa_bbbb_cccc_dddd;
    r.gpr[gpr::RDI] = BAR0 + 0x80;
    r.gpr[gpr::RCX] = 2;
    let log = run_ok(&code, &mut r, BAR0 + 0x80);
    assert_eq!(
        log,
        vec![
            Write(0, 0x80, 4, 0xcccc_dddd),
            Write(0, 0x84, 4, 0xcccc_dddd)
        ]
    );
    assert_eq!((r.gpr[gpr::RDI], r.gpr[gpr::RCX]), (BAR0 + 0x88, 0));

    let code = asm(|a| a.stosb());
    let mut r = regs();
    r.rflags |= flags::DF;
    r.gpr[gpr::RAX] = 0x42;
    r.gpr[gpr::RDI] = BAR0 + 0x80;
    r.gpr[gpr::RCX] = 7;
    let log = run_ok(&code, &mut r, BAR0 + 0x80);
    assert_eq!(log, vec![Write(0, 0x80, 1, 0x42)]);
    // Without rep RCX is untouched; DF=1 moves RDI down.
    assert_eq!((r.gpr[gpr::RDI], r.gpr[gpr::RCX]), (BAR0 + 0x7f, 7));
}

#[test]
fn lods_loads_into_the_accumulator() {
    let code = asm(|a| a.lodsw());
    let mut r = regs();
    r.gpr[gpr::RAX] = 0xffff_ffff_ffff_ffff;
    r.gpr[gpr::RSI] = BAR0 + 2;
    let log = run_ok(&code, &mut r, BAR0 + 2);
    assert_eq!(log, vec![Read(0, 2, 2, 0x8382)]);
    assert_eq!(
        (r.gpr[gpr::RAX], r.gpr[gpr::RSI]),
        (0xffff_ffff_ffff_8382, BAR0 + 4)
    );
}

#[test]
fn rep_with_zero_count_only_steps_past() {
    let code = asm(|a| a.rep().stosb());
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0;
    assert_eq!(run_ok(&code, &mut r, BAR0), vec![]);
    assert_eq!(r.gpr[gpr::RDI], BAR0);
}

#[test]
fn rep_stops_at_the_iteration_bound_and_resumes() {
    let code = asm(|a| a.rep().stosb());
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0;
    r.gpr[gpr::RCX] = MAX_STRING_ITERATIONS + 3;
    let mut space = FakeSpace::new();
    // BAR 0 is 4096 bytes = the bound: the first call fills it exactly.
    let out = run(&code, &mut r, BAR0, &mut space).unwrap();
    assert!(!out.completed);
    assert_eq!(out.device_accesses as u64, MAX_STRING_ITERATIONS);
    assert_eq!(
        (r.rip, r.gpr[gpr::RDI], r.gpr[gpr::RCX]),
        (RIP, BAR0 + MAX_STRING_ITERATIONS, 3)
    );
    // The CPU re-executes it; the next element is BAR 2's first byte.
    let out = run(&code, &mut r, BAR0 + MAX_STRING_ITERATIONS, &mut space).unwrap();
    assert!(out.completed);
    assert_eq!(out.device_accesses, 3);
    assert_eq!(
        &space.log[space.log.len() - 3..],
        &[Write(2, 0, 1, 0), Write(2, 1, 1, 0), Write(2, 2, 1, 0)]
    );
    assert_eq!((r.rip, r.gpr[gpr::RCX]), (RIP + code.len() as u64, 0));
}

#[test]
fn rep_leaves_the_bar_and_hands_back_to_the_cpu() {
    // Backward from BAR 0's first qword: the second element is below the BAR.
    let code = asm(|a| a.rep().stosq());
    let mut r = regs();
    r.rflags |= flags::DF;
    r.gpr[gpr::RDI] = BAR0;
    r.gpr[gpr::RCX] = 4;
    let mut space = FakeSpace::new();
    let out = run(&code, &mut r, BAR0, &mut space).unwrap();
    assert!(!out.completed);
    assert_eq!(space.log, vec![Write(0, 0, 8, 0)]);
    assert_eq!(
        (r.rip, r.gpr[gpr::RDI], r.gpr[gpr::RCX]),
        (RIP, BAR0 - 8, 3)
    );
}

#[test]
fn rep_does_leading_memory_elements_itself() {
    // The fault was reported for a BAR element but RDI still points below
    // the BAR: the ordinary elements before it go through ProgramMemory.
    let code = asm(|a| a.rep().stosb());
    let mut r = regs();
    r.gpr[gpr::RAX] = 0x5a;
    r.gpr[gpr::RDI] = BAR0 - 2;
    r.gpr[gpr::RCX] = 4;
    let mut space = FakeSpace::new();
    let mut memory = FakeMemory::new();
    let out = emulate(&code, BAR0, &mut r, &mut space, &mut memory).unwrap();
    assert!(out.completed);
    assert_eq!(&memory.bytes[MEM_LEN as usize - 2..], &[0x5a, 0x5a]);
    assert_eq!(space.log, vec![Write(0, 0, 1, 0x5a), Write(0, 1, 1, 0x5a)]);
    assert_eq!(
        (r.gpr[gpr::RDI], r.gpr[gpr::RCX], r.rip),
        (BAR0 + 2, 0, RIP + code.len() as u64)
    );
}

#[test]
fn failing_element_after_progress_ends_the_run_there() {
    let code = asm(|a| a.rep().movsb());
    let mut r = regs();
    r.gpr[gpr::RSI] = BAR0;
    r.gpr[gpr::RDI] = MEM;
    r.gpr[gpr::RCX] = 3;
    let mut space = FakeSpace::new();
    space.failing = Some((0, 1));
    let mut memory = FakeMemory::new();
    let out = emulate(&code, BAR0, &mut r, &mut space, &mut memory).unwrap();
    // Element 0 done and committed; element 1 is left for the re-executed
    // instruction, which reports it with no access repeated.
    assert!(!out.completed);
    assert_eq!(space.log, vec![Read(0, 0, 1, 0x80)]);
    assert_eq!(memory.bytes[0], 0x80);
    assert_eq!(
        (r.gpr[gpr::RSI], r.gpr[gpr::RDI], r.gpr[gpr::RCX], r.rip),
        (BAR0 + 1, MEM + 1, 2, RIP)
    );
    let err = emulate(&code, BAR0 + 1, &mut r, &mut space, &mut memory).unwrap_err();
    assert!(matches!(err, EmulationError::Device { .. }), "{err}");
    assert_eq!(space.log.len(), 1);
}

#[test]
fn string_with_32_bit_addressing_is_refused() {
    // 67 a4: movsb with ESI/EDI.
    let code = [0x67, 0xa4];
    let mut r = regs();
    r.gpr[gpr::RSI] = BAR0;
    r.gpr[gpr::RDI] = BAR0 + 8;
    let err = run(&code, &mut r, BAR0, &mut FakeSpace::new()).unwrap_err();
    assert!(matches!(err, EmulationError::Unsupported { .. }), "{err}");
}

// ---- xchg and read-modify-write ----

#[test]
fn xchg_reads_then_writes() {
    let code = asm(|a| a.xchg(dword_ptr(rdi), ecx));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0 + 0x10;
    r.gpr[gpr::RCX] = 0xffff_ffff_0000_0001;
    let log = run_ok(&code, &mut r, BAR0 + 0x10);
    assert_eq!(
        log,
        vec![Read(0, 0x10, 4, 0x9392_9190), Write(0, 0x10, 4, 1)]
    );
    assert_eq!(r.gpr[gpr::RCX], 0x9392_9190);
}

#[test]
fn or_and_add_sub_xor_on_memory() {
    use flags::*;
    // Device dword at 0: 0x83828180.
    let cases: [(Vec<u8>, u64, u64); 6] = [
        (asm(|a| a.or(dword_ptr(rdi), 4)), 0x8382_8184, SF | PF),
        (
            asm(|a| a.lock().or(dword_ptr(rdi), 4)),
            0x8382_8184,
            SF | PF,
        ),
        (asm(|a| a.and(dword_ptr(rdi), 0x7f)), 0, ZF | PF),
        (asm(|a| a.add(dword_ptr(rdi), 0x7c7d_7e80)), 0, CF | ZF | PF),
        (
            asm(|a| a.sub(dword_ptr(rdi), 0x8382_8181u32 as i32)),
            0xffff_ffff,
            CF | SF | PF | AF,
        ),
        (asm(|a| a.xor(dword_ptr(rdi), ecx)), 0x8382_817f, SF),
    ];
    for (code, result, status) in cases {
        let mut r = regs();
        r.rflags |= STATUS;
        r.gpr[gpr::RDI] = BAR0;
        r.gpr[gpr::RCX] = 0xff;
        let log = run_ok(&code, &mut r, BAR0);
        assert_eq!(
            log,
            vec![Read(0, 0, 4, 0x8382_8180), Write(0, 0, 4, result)],
            "{}",
            text_of(&code)
        );
        assert_eq!(r.rflags, 0x202 | status, "{}", text_of(&code));
    }
}

#[test]
fn sixty_four_bit_alu_sign_extends_its_immediate() {
    let code = asm(|a| a.and(qword_ptr(rdi), -16));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0;
    let log = run_ok(&code, &mut r, BAR0);
    assert_eq!(
        log,
        vec![
            Read(0, 0, 8, 0x8786_8584_8382_8180),
            Write(0, 0, 8, 0x8786_8584_8382_8180)
        ]
    );
    let code = asm(|a| a.or(byte_ptr(rdi + 1), 0x7f));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0;
    assert_eq!(
        run_ok(&code, &mut r, BAR0 + 1),
        vec![Read(0, 1, 1, 0x81), Write(0, 1, 1, 0xff)]
    );
}

#[test]
fn inc_dec_keep_the_carry_flag() {
    use flags::*;
    let mut space = FakeSpace::new();
    space.set(0, 0, &[0xff]);
    let code = asm(|a| a.inc(byte_ptr(rdi)));
    let mut r = regs();
    r.rflags |= CF;
    r.gpr[gpr::RDI] = BAR0;
    run(&code, &mut r, BAR0, &mut space).unwrap();
    assert_eq!(space.log, vec![Read(0, 0, 1, 0xff), Write(0, 0, 1, 0)]);
    // 0xff + 1 carries out, but inc does not touch CF (it was set).
    assert_eq!(r.rflags, 0x202 | CF | ZF | PF | AF);
    assert_eq!(r.rip, RIP + code.len() as u64);

    let code = asm(|a| a.dec(dword_ptr(rdi)));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0;
    space.log.clear();
    run(&code, &mut r, BAR0, &mut space).unwrap();
    // The dword is now 00 81 82 83: 0x83828100 - 1.
    assert_eq!(
        space.log,
        vec![Read(0, 0, 4, 0x8382_8100), Write(0, 0, 4, 0x8382_80ff)]
    );
    assert_eq!(r.rflags, 0x202 | SF | PF | AF);
}

#[test]
fn not_and_neg_of_memory() {
    let code = asm(|a| a.not(word_ptr(rdi)));
    let mut r = regs();
    r.rflags |= flags::STATUS;
    r.gpr[gpr::RDI] = BAR0;
    assert_eq!(
        run_ok(&code, &mut r, BAR0),
        vec![Read(0, 0, 2, 0x8180), Write(0, 0, 2, 0x7e7f)]
    );
    // not leaves every flag alone.
    assert_eq!(r.rflags, 0x202 | flags::STATUS);

    let code = asm(|a| a.neg(byte_ptr(rdi)));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0;
    // neg 0x80 = 0x80: carry (source not 0), overflow, sign.
    assert_eq!(
        run_ok(&code, &mut r, BAR0),
        vec![Read(0, 0, 1, 0x80), Write(0, 0, 1, 0x80)]
    );
    assert_eq!(r.rflags, 0x202 | flags::CF | flags::OF | flags::SF);
}

#[test]
fn movbe_reverses_bytes_both_ways() {
    let code = asm(|a| a.movbe(eax, dword_ptr(rdi)));
    let mut r = regs();
    r.gpr[gpr::RAX] = u64::MAX;
    r.gpr[gpr::RDI] = BAR0;
    assert_eq!(
        run_ok(&code, &mut r, BAR0),
        vec![Read(0, 0, 4, 0x8382_8180)]
    );
    assert_eq!(r.gpr[gpr::RAX], 0x8081_8283);

    let code = asm(|a| a.movbe(word_ptr(rdi), cx));
    let mut r = regs();
    r.gpr[gpr::RCX] = 0x1234;
    r.gpr[gpr::RDI] = BAR0;
    assert_eq!(run_ok(&code, &mut r, BAR0), vec![Write(0, 0, 2, 0x3412)]);
}

#[test]
fn bit_test_forms() {
    use flags::*;
    // Device dword at 0: 0x83828180 (bit 7 set, bit 0 clear).
    let cases: [(Vec<u8>, u64, Option<u64>, bool); 4] = [
        (asm(|a| a.bt(dword_ptr(rdi), 7)), 0x8382_8180, None, true),
        (
            asm(|a| a.bts(dword_ptr(rdi), 0)),
            0x8382_8180,
            Some(0x8382_8181),
            false,
        ),
        (
            asm(|a| a.lock().btr(dword_ptr(rdi), 39)),
            0x8382_8180,
            Some(0x8382_8100),
            true,
        ),
        (
            asm(|a| a.btc(dword_ptr(rdi), 31)),
            0x8382_8180,
            Some(0x0382_8180),
            true,
        ),
    ];
    for (code, read, written, carry) in cases {
        let mut r = regs();
        r.rflags |= ZF | SF;
        r.gpr[gpr::RDI] = BAR0;
        let log = run_ok(&code, &mut r, BAR0);
        let mut expected = vec![Read(0, 0, 4, read)];
        expected.extend(written.map(|w| Write(0, 0, 4, w)));
        assert_eq!(log, expected, "{}", text_of(&code));
        assert_eq!(
            r.rflags,
            0x202 | ZF | SF | if carry { CF } else { 0 },
            "{}",
            text_of(&code)
        );
    }
}

#[test]
fn bit_test_register_offset_addresses_other_words() {
    // Bit 70 of the bit string at BAR0+0x10 is bit 6 of the qword at +0x18.
    let code = asm(|a| a.bts(qword_ptr(rdi), rcx));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0 + 0x10;
    r.gpr[gpr::RCX] = 70;
    let log = run_ok(&code, &mut r, BAR0 + 0x18);
    assert_eq!(
        log,
        vec![
            Read(0, 0x18, 8, 0x9f9e_9d9c_9b9a_9998),
            Write(0, 0x18, 8, 0x9f9e_9d9c_9b9a_99d8)
        ]
    );
    // A negative offset reaches below: bit -1 is bit 15 of the word at -2.
    let code = asm(|a| a.btr(word_ptr(rdi), cx));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0 + 0x10;
    r.gpr[gpr::RCX] = 0xffff;
    let log = run_ok(&code, &mut r, BAR0 + 0x0e);
    assert_eq!(
        log,
        vec![Read(0, 0x0e, 2, 0x8f8e), Write(0, 0x0e, 2, 0x0f8e)]
    );
    assert_eq!(r.rflags & flags::CF, flags::CF);
}

#[test]
fn xadd_returns_the_old_value() {
    let code = asm(|a| a.lock().xadd(dword_ptr(rdi), ecx));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0;
    r.gpr[gpr::RCX] = 0xffff_ffff_0000_0001;
    let log = run_ok(&code, &mut r, BAR0);
    assert_eq!(
        log,
        vec![Read(0, 0, 4, 0x8382_8180), Write(0, 0, 4, 0x8382_8181)]
    );
    assert_eq!(r.gpr[gpr::RCX], 0x8382_8180);
    assert_eq!(r.rflags, 0x202 | flags::SF | flags::PF);
}

#[test]
fn cmpxchg_writes_either_way() {
    // Equal: the source is stored, RAX keeps its upper half.
    let code = asm(|a| a.lock().cmpxchg(dword_ptr(rdi), ecx));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0;
    r.gpr[gpr::RAX] = 0xaaaa_aaaa_8382_8180;
    r.gpr[gpr::RCX] = 7;
    let log = run_ok(&code, &mut r, BAR0);
    assert_eq!(log, vec![Read(0, 0, 4, 0x8382_8180), Write(0, 0, 4, 7)]);
    assert_eq!(r.gpr[gpr::RAX], 0xaaaa_aaaa_8382_8180);
    assert_eq!(r.rflags, 0x202 | flags::ZF | flags::PF);
    // Different: the old value is written back and loaded into EAX.
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0;
    r.gpr[gpr::RAX] = 0xaaaa_aaaa_0000_0000;
    r.gpr[gpr::RCX] = 7;
    let log = run_ok(&code, &mut r, BAR0);
    assert_eq!(
        log,
        vec![Read(0, 0, 4, 0x8382_8180), Write(0, 0, 4, 0x8382_8180)]
    );
    assert_eq!(r.gpr[gpr::RAX], 0x8382_8180);
    assert_eq!(r.rflags & flags::ZF, 0);
}

#[test]
fn adc_and_sbb_take_the_carry_flag() {
    let code = asm(|a| a.adc(byte_ptr(rdi), 1));
    let mut r = regs();
    r.rflags |= flags::CF;
    r.gpr[gpr::RDI] = BAR0;
    assert_eq!(
        run_ok(&code, &mut r, BAR0),
        vec![Read(0, 0, 1, 0x80), Write(0, 0, 1, 0x82)]
    );
    let code = asm(|a| a.sbb(byte_ptr(rdi), 1));
    let mut r = regs();
    r.rflags |= flags::CF;
    r.gpr[gpr::RDI] = BAR0;
    assert_eq!(
        run_ok(&code, &mut r, BAR0),
        vec![Read(0, 0, 1, 0x80), Write(0, 0, 1, 0x7e)]
    );
    // 0x80 - 1 - 1 = 0x7e: signed overflow, borrow from bit 4, even parity.
    assert_eq!(r.rflags, 0x202 | flags::OF | flags::AF | flags::PF);
}

#[test]
fn cmp_and_test_only_read() {
    let code = asm(|a| a.cmp(dword_ptr(rdi), 0x8382_8180u32 as i32));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0;
    assert_eq!(
        run_ok(&code, &mut r, BAR0),
        vec![Read(0, 0, 4, 0x8382_8180)]
    );
    assert_eq!(r.rflags, 0x202 | flags::ZF | flags::PF);
    let code = asm(|a| a.test(byte_ptr(rdi), 1));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0;
    assert_eq!(run_ok(&code, &mut r, BAR0), vec![Read(0, 0, 1, 0x80)]);
    assert_eq!(r.rflags, 0x202 | flags::ZF | flags::PF);
}

#[test]
fn alu_with_memory_source_writes_the_register() {
    let code = asm(|a| a.or(eax, dword_ptr(rdi)));
    let mut r = regs();
    r.gpr[gpr::RAX] = 0xffff_ffff_0000_0001;
    r.gpr[gpr::RDI] = BAR0;
    assert_eq!(
        run_ok(&code, &mut r, BAR0),
        vec![Read(0, 0, 4, 0x8382_8180)]
    );
    assert_eq!(r.gpr[gpr::RAX], 0x8382_8181);
}

// ---- refusals ----

#[test]
fn fault_outside_every_bar_is_not_ours() {
    let code = asm(|a| a.mov(eax, dword_ptr(rdi)));
    let mut r = regs();
    r.gpr[gpr::RDI] = MEM;
    let err = run(&code, &mut r, MEM, &mut FakeSpace::new()).unwrap_err();
    assert!(
        matches!(err, EmulationError::NotMmio { address: MEM }),
        "{err}"
    );
}

#[test]
fn unsupported_instruction_report_names_instruction_address_and_offset() {
    let code = asm(|a| a.setne(byte_ptr(rdi + 0x10)));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0;
    let before = r.clone();
    let mut space = FakeSpace::new();
    let err = run(&code, &mut r, BAR0 + 0x10, &mut space).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot emulate `setne [rdi+10h]` at rip 0x401000 on address 0x10000010 (BAR 0 offset 0x10)"
    );
    assert!(space.log.is_empty());
    assert_eq!(r, before);
}

#[test]
fn executing_from_a_bar_is_reported() {
    let mut r = regs();
    r.rip = BAR0 + 0x20;
    let err = run(&[0x90], &mut r, BAR0 + 0x20, &mut FakeSpace::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "instruction fetch from address 0x10000020 (BAR 0 offset 0x20)"
    );
}

#[test]
fn undecodable_bytes_are_reported() {
    // 06 (push es) does not exist in 64-bit mode.
    let mut r = regs();
    let err = run(&[0x06], &mut r, BAR0, &mut FakeSpace::new()).unwrap_err();
    assert!(
        matches!(err, EmulationError::Decode { rip: RIP, .. }),
        "{err}"
    );
    // A truncated instruction is no instruction either.
    let code = asm(|a| a.mov(qword_ptr(rdi + 0x1000), 1));
    let err = run(&code[..code.len() - 1], &mut r, BAR0, &mut FakeSpace::new()).unwrap_err();
    assert!(matches!(err, EmulationError::Decode { .. }), "{err}");
}

#[test]
fn access_across_the_end_of_a_bar_is_refused() {
    // A dword at BAR 0's last two bytes runs into BAR 2.
    let code = asm(|a| a.mov(dword_ptr(rdi), eax));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR2 - 2;
    let mut space = FakeSpace::new();
    let err = run(&code, &mut r, BAR2 - 2, &mut space).unwrap_err();
    assert_eq!(
        err.to_string(),
        "`mov [rdi],eax` at rip 0x401000: 4-byte access at address 0x10000ffe (BAR 0 offset 0xffe) crosses a BAR boundary"
    );
    // Past the end of BAR 2 into unmapped space.
    r.gpr[gpr::RDI] = BAR2 + BAR2_LEN - 1;
    let err = run(&code, &mut r, BAR2 + BAR2_LEN - 1, &mut space).unwrap_err();
    assert!(
        matches!(err, EmulationError::Straddle { len: 4, .. }),
        "{err}"
    );
    // From ordinary memory into a BAR: the fault is reported at the BAR's first byte.
    r.gpr[gpr::RDI] = BAR0 - 1;
    let err = run(&code, &mut r, BAR0, &mut space).unwrap_err();
    assert!(
        matches!(
            err,
            EmulationError::Straddle {
                at: Location { bar: None, .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(space.log.is_empty());
}

#[test]
fn device_error_leaves_registers_unchanged() {
    let code = asm(|a| a.movdqu(xmm0, xmmword_ptr(rdi)));
    let mut r = regs();
    r.gpr[gpr::RDI] = BAR0;
    let before = r.clone();
    let mut space = FakeSpace::new();
    space.failing = Some((0, 8));
    let err = run(&code, &mut r, BAR0, &mut space).unwrap_err();
    match &err {
        EmulationError::Device { at, source, .. } => {
            assert_eq!(
                *at,
                Location {
                    address: BAR0 + 8,
                    bar: Some((0, 8))
                }
            );
            assert_eq!(source.raw_os_error(), Some(5));
        }
        other => panic!("{other}"),
    }
    assert_eq!(space.log, vec![Read(0, 0, 8, 0x8786_8584_8382_8180)]);
    assert_eq!(r, before);
}

#[test]
fn inaccessible_program_memory_is_reported() {
    let code = asm(|a| a.movsb());
    let mut r = regs();
    r.gpr[gpr::RSI] = 0x10;
    r.gpr[gpr::RDI] = BAR0;
    let before = r.clone();
    let err = run(&code, &mut r, BAR0, &mut FakeSpace::new()).unwrap_err();
    assert!(
        matches!(err, EmulationError::Memory { address: 0x10, .. }),
        "{err}"
    );
    assert_eq!(r, before);
}

// ---- property: mov against a reference ----

const GPRS64: [AsmRegister64; 16] = [
    rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15,
];

proptest! {
    /// A mov load or store of random width through a random base, index,
    /// scale and displacement touches exactly the reference address with
    /// the reference value, and writes the destination by the x86 rule.
    #[test]
    fn mov_matches_reference(
        width_log in 0usize..4,
        store in any::<bool>(),
        base in 0usize..16,
        index in proptest::option::of(0usize..16),
        scale_log in 0u32..4,
        index_value in 0u64..64,
        disp in -64i32..64,
        data_reg in 0usize..16,
        old in any::<u64>(),
    ) {
        let width = 1usize << width_log;
        let scale = 1u64 << scale_log;
        // rsp cannot be an index; the data register must not be an address register.
        let index = index.filter(|&i| i != gpr::RSP && i != base);
        prop_assume!(data_reg != base && Some(data_reg) != index);
        let mut r = regs();
        r.gpr[data_reg] = old;
        r.gpr[base] = BAR0 + 0x800;
        let mut mem = GPRS64[base] + disp;
        let mut address = (BAR0 + 0x800).wrapping_add(disp as i64 as u64);
        if let Some(i) = index {
            r.gpr[i] = index_value;
            mem = mem + GPRS64[i] * scale as u32;
            address += index_value * scale;
        }
        let offset = address - BAR0;
        let data = GPRS64[data_reg];
        let code = asm(|a| match (width, store) {
            (1, true) => a.mov(byte_ptr(mem), gpr8_of(data)),
            (2, true) => a.mov(word_ptr(mem), gpr16_of(data)),
            (4, true) => a.mov(dword_ptr(mem), gpr32_of(data)),
            (8, true) => a.mov(qword_ptr(mem), data),
            (1, false) => a.mov(gpr8_of(data), byte_ptr(mem)),
            (2, false) => a.mov(gpr16_of(data), word_ptr(mem)),
            (4, false) => a.mov(gpr32_of(data), dword_ptr(mem)),
            _ => a.mov(data, qword_ptr(mem)),
        });
        let mask = if width == 8 { u64::MAX } else { (1u64 << (8 * width)) - 1 };
        let log = run_ok(&code, &mut r, address);
        if store {
            prop_assert_eq!(log, vec![Write(0, offset, width, old & mask)]);
            prop_assert_eq!(r.gpr[data_reg], old);
        } else {
            let device = (0..width as u64).fold(0u64, |v, k| v | (((0x80 + offset + k) & 0xff) << (8 * k)));
            prop_assert_eq!(log, vec![Read(0, offset, width, device)]);
            let expected = match width {
                4 => device,
                8 => device,
                _ => (old & !mask) | device,
            };
            prop_assert_eq!(r.gpr[data_reg], expected);
        }
    }
}

fn gpr_number(reg: AsmRegister64) -> usize {
    GPRS64.iter().position(|&r| r == reg).unwrap_or(0)
}

fn gpr8_of(reg: AsmRegister64) -> AsmRegister8 {
    [
        al, cl, dl, bl, spl, bpl, sil, dil, r8b, r9b, r10b, r11b, r12b, r13b, r14b, r15b,
    ][gpr_number(reg)]
}

fn gpr16_of(reg: AsmRegister64) -> AsmRegister16 {
    [
        ax, cx, dx, bx, sp, bp, si, di, r8w, r9w, r10w, r11w, r12w, r13w, r14w, r15w,
    ][gpr_number(reg)]
}

fn gpr32_of(reg: AsmRegister64) -> AsmRegister32 {
    [
        eax, ecx, edx, ebx, esp, ebp, esi, edi, r8d, r9d, r10d, r11d, r12d, r13d, r14d, r15d,
    ][gpr_number(reg)]
}

// ---- property: arbitrary bytes never panic or make a malformed access ----

/// First bytes that lead into the forms this crate handles (prefixes, mov,
/// ALU groups, strings, 0F/VEX escapes), so random tails reach deep paths.
const LEADS: [u8; 32] = [
    0x88, 0x89, 0x8a, 0x8b, 0xc6, 0xc7, 0x0f, 0x66, 0xf3, 0xf2, 0x48, 0x4c, 0xa4, 0xa5, 0xaa, 0xab,
    0xac, 0xad, 0x80, 0x81, 0x83, 0x86, 0x87, 0xfe, 0xff, 0xc5, 0xc4, 0x64, 0x65, 0x67, 0xf0, 0x62,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Whatever the bytes and registers: no panic, every device access is
    /// 1/2/4/8 bytes inside a BAR (the fake asserts both), and an error
    /// leaves the registers as they were.
    #[test]
    fn arbitrary_instructions_are_performed_or_refused(
        lead in proptest::sample::select(&LEADS[..]),
        tail in proptest::collection::vec(any::<u8>(), 0..15),
        offsets in proptest::array::uniform16(0u64..0x1100),
        count in 0u64..40,
        down in any::<bool>(),
        fault_offset in 0u64..0x1100,
    ) {
        let mut code = vec![lead];
        code.extend_from_slice(&tail);
        let mut r = regs();
        for (reg, offset) in r.gpr.iter_mut().zip(offsets) {
            *reg = BAR0 + offset;
        }
        r.gpr[gpr::RCX] = count;
        if down {
            r.rflags |= flags::DF;
        }
        r.xmm[0] = 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10;
        let before = r.clone();
        let mut space = FakeSpace::new();
        match run(&code, &mut r, BAR0 + fault_offset, &mut space) {
            Ok(out) => {
                prop_assert_eq!(out.device_accesses as usize, space.log.len());
                if out.completed {
                    prop_assert!(r.rip > RIP && r.rip <= RIP + 15);
                } else {
                    prop_assert_eq!(r.rip, RIP);
                }
            }
            Err(error) => {
                prop_assert_eq!(&r, &before);
                prop_assert!(!error.to_string().is_empty());
            }
        }
    }
}
