//! Decoding and performing one faulting instruction.
//!
//! Invariants: a failing instruction leaves the caller's registers as they
//! were: `emulate` snapshots the scalar state (GPRs, RIP, RFLAGS) and puts
//! it back on error, and a vector register is written only after every
//! fallible step of its instruction (so it needs no snapshot: copying all
//! 32 vector registers per fault would double the cost). Rep strings
//! commit a whole number of elements. Every memory operand is resolved to
//! a BAR range that lies entirely in one BAR before any device access.

use iced_x86::{
    Code, Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter, Mnemonic, OpKind,
    Register,
};

use crate::alu::{self, AluOp};
use crate::regs::{flags, gpr, vector_index, Registers};
use crate::{BarId, EmulationError, Location, MmioSpace, ProgramMemory};

/// Elements of a rep string instruction done per fault. When the bound is
/// hit RIP stays on the instruction with RSI/RDI/RCX updated, exactly as
/// after an interrupt in the middle of a rep: the CPU resumes it.
pub const MAX_STRING_ITERATIONS: u64 = 4096;

/// The widest single device access; wider moves are split into accesses
/// of this size in ascending address order.
const MAX_DEVICE_ACCESS: usize = 8;

/// What one call of [`emulate`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Emulated {
    /// Device accesses performed (after splitting wide moves).
    pub device_accesses: u32,
    /// RIP was moved past the instruction. False only for a rep string
    /// instruction stopped between elements (iteration bound, an element
    /// outside every BAR, or an element that cannot be done): RIP stays on
    /// it and the CPU continues it with the updated RSI/RDI/RCX.
    pub completed: bool,
    /// A vector register was written: the front end must write back the
    /// FP/vector state, not only the GPRs.
    pub vector_written: bool,
}

/// Performs the instruction at `regs.rip` whose bytes start `code` (at most
/// 15 are used), which faulted at `fault_address` in 64-bit mode.
///
/// On success `regs` holds the state after the instruction. On error
/// `regs` is unchanged; [`EmulationError::NotMmio`] means the fault is not
/// a BAR access and belongs to the program.
pub fn emulate<S, M>(
    code: &[u8],
    fault_address: u64,
    regs: &mut Registers,
    space: &mut S,
    memory: &mut M,
) -> Result<Emulated, EmulationError>
where
    S: MmioSpace + ?Sized,
    M: ProgramMemory + ?Sized,
{
    let fault_bar = space.bar_at(fault_address).ok_or(EmulationError::NotMmio {
        address: fault_address,
    })?;
    let fault = Location {
        address: fault_address,
        bar: Some(fault_bar),
    };
    if let Some(bar) = space.bar_at(regs.rip) {
        return Err(EmulationError::Execute {
            at: Location {
                address: regs.rip,
                bar: Some(bar),
            },
        });
    }
    let code = &code[..code.len().min(15)];
    let decode_error = || EmulationError::Decode {
        rip: regs.rip,
        bytes: code.to_vec(),
        at: fault,
    };
    let mut decoder = Decoder::try_with_ip(64, code, regs.rip, DecoderOptions::NONE)
        .map_err(|_| decode_error())?;
    let instr = decoder.decode();
    if instr.is_invalid() {
        return Err(decode_error());
    }
    let scalar = (regs.gpr, regs.rip, regs.rflags);
    let mut exec = Exec {
        instr: &instr,
        regs,
        space,
        memory,
        out: Emulated::default(),
        fault,
    };
    match exec.run() {
        Ok(()) => Ok(exec.out),
        Err(error) => {
            (exec.regs.gpr, exec.regs.rip, exec.regs.rflags) = scalar;
            Err(error)
        }
    }
}

/// Builds iced-x86's decoder tables, which it allocates on first use.
/// Preload mode calls this when the library loads, so that `emulate` in
/// the SIGSEGV handler never allocates on success (the handler may have
/// interrupted malloc). Calling it again is cheap and harmless.
pub fn warm_up() {
    crate::xsave::offsets();
    let mut decoder = Decoder::new(64, &[0x90], DecoderOptions::NONE);
    std::hint::black_box(decoder.decode());
}

/// The instruction as Intel-syntax text, for reports.
fn text(instr: &Instruction) -> String {
    let mut out = String::new();
    IntelFormatter::new().format(instr, &mut out);
    out
}

fn sign_extend(value: u64, width: usize) -> u64 {
    let shift = 64 - 8 * width as u32;
    (((value << shift) as i64) >> shift) as u64
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(buf)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StringOp {
    Movs,
    Stos,
    Lods,
}

/// What bts/btr/btc do to the selected bit (bt only reads it).
#[derive(Clone, Copy, PartialEq, Eq)]
enum BitOp {
    Set,
    Reset,
    Complement,
}

/// Where one operand of a string element is.
#[derive(Clone, Copy)]
enum Place {
    /// BAR, offset in it, program address.
    Bar(BarId, u64, u64),
    Memory(u64),
}

struct Exec<'a, S: ?Sized, M: ?Sized> {
    instr: &'a Instruction,
    regs: &'a mut Registers,
    space: &'a mut S,
    memory: &'a mut M,
    out: Emulated,
    fault: Location,
}

impl<S: MmioSpace + ?Sized, M: ProgramMemory + ?Sized> Exec<'_, S, M> {
    fn run(&mut self) -> Result<(), EmulationError> {
        let instr = self.instr;
        let string = match instr.code() {
            Code::Movsb_m8_m8 | Code::Movsw_m16_m16 | Code::Movsd_m32_m32 | Code::Movsq_m64_m64 => {
                Some(StringOp::Movs)
            }
            Code::Stosb_m8_AL | Code::Stosw_m16_AX | Code::Stosd_m32_EAX | Code::Stosq_m64_RAX => {
                Some(StringOp::Stos)
            }
            Code::Lodsb_AL_m8 | Code::Lodsw_AX_m16 | Code::Lodsd_EAX_m32 | Code::Lodsq_RAX_m64 => {
                Some(StringOp::Lods)
            }
            _ => None,
        };
        if let Some(op) = string {
            return self.string(op);
        }
        if instr.op_count() == 1 {
            return match instr.mnemonic() {
                Mnemonic::Inc => self.inc_dec(AluOp::Add),
                Mnemonic::Dec => self.inc_dec(AluOp::Sub),
                Mnemonic::Not | Mnemonic::Neg => self.not_neg(),
                _ => Err(self.unsupported(self.fault)),
            };
        }
        if instr.op_count() != 2 || instr.op_mask() != Register::None {
            return Err(self.unsupported(self.fault));
        }
        match instr.mnemonic() {
            Mnemonic::Mov | Mnemonic::Movnti => self.mov(false),
            Mnemonic::Movbe => self.mov(true),
            Mnemonic::Movzx => self.load_extend(false),
            Mnemonic::Movsx | Mnemonic::Movsxd => self.load_extend(true),
            Mnemonic::Xchg => self.xchg(),
            Mnemonic::Xadd => self.xadd(),
            Mnemonic::Bt => self.bit_test(None),
            Mnemonic::Bts => self.bit_test(Some(BitOp::Set)),
            Mnemonic::Btr => self.bit_test(Some(BitOp::Reset)),
            Mnemonic::Btc => self.bit_test(Some(BitOp::Complement)),
            Mnemonic::Cmpxchg => self.cmpxchg(),
            Mnemonic::Add => self.alu(AluOp::Add, true),
            Mnemonic::Sub => self.alu(AluOp::Sub, true),
            Mnemonic::Adc => self.alu(AluOp::Adc(self.regs.rflags & flags::CF != 0), true),
            Mnemonic::Sbb => self.alu(AluOp::Sbb(self.regs.rflags & flags::CF != 0), true),
            Mnemonic::And => self.alu(AluOp::And, true),
            Mnemonic::Or => self.alu(AluOp::Or, true),
            Mnemonic::Xor => self.alu(AluOp::Xor, true),
            Mnemonic::Cmp => self.alu(AluOp::Sub, false),
            Mnemonic::Test => self.alu(AluOp::And, false),
            // Legacy SSE: loads leave bits 128..512 alone. (The string
            // movsd was dispatched above by its Code; this is the SSE one.)
            Mnemonic::Movd
            | Mnemonic::Movq
            | Mnemonic::Movss
            | Mnemonic::Movsd
            | Mnemonic::Movdqu
            | Mnemonic::Movups
            | Mnemonic::Movupd => self.vector(false, false),
            Mnemonic::Movdqa
            | Mnemonic::Movaps
            | Mnemonic::Movapd
            | Mnemonic::Movntdq
            | Mnemonic::Movntdqa
            | Mnemonic::Movntps
            | Mnemonic::Movntpd => self.vector(false, true),
            // VEX and unmasked EVEX: loads zero the bits above what they write.
            Mnemonic::Vmovd
            | Mnemonic::Vmovq
            | Mnemonic::Vmovss
            | Mnemonic::Vmovsd
            | Mnemonic::Vmovdqu
            | Mnemonic::Vmovdqu8
            | Mnemonic::Vmovdqu16
            | Mnemonic::Vmovdqu32
            | Mnemonic::Vmovdqu64
            | Mnemonic::Vmovups
            | Mnemonic::Vmovupd => self.vector(true, false),
            Mnemonic::Vmovdqa
            | Mnemonic::Vmovdqa32
            | Mnemonic::Vmovdqa64
            | Mnemonic::Vmovaps
            | Mnemonic::Vmovapd
            | Mnemonic::Vmovntdq
            | Mnemonic::Vmovntdqa
            | Mnemonic::Vmovntps
            | Mnemonic::Vmovntpd => self.vector(true, true),
            _ => Err(self.unsupported(self.fault)),
        }
    }

    // ---- errors ----

    fn unsupported(&self, at: Location) -> EmulationError {
        EmulationError::Unsupported {
            instruction: text(self.instr),
            rip: self.regs.rip,
            at,
        }
    }

    fn location(&self, address: u64) -> Location {
        Location {
            address,
            bar: self.space.bar_at(address),
        }
    }

    // ---- operands ----

    /// Where `len` bytes at `address` are: wholly in one BAR, wholly
    /// outside every BAR, or (an error) across a BAR boundary.
    fn place(&self, address: u64, len: usize) -> Result<Place, EmulationError> {
        let first = self.space.bar_at(address);
        let last = address
            .checked_add(len as u64 - 1)
            .and_then(|end| self.space.bar_at(end));
        match (first, last) {
            (Some((bar, offset)), Some((last_bar, last_offset)))
                if bar == last_bar && offset.checked_add(len as u64 - 1) == Some(last_offset) =>
            {
                Ok(Place::Bar(bar, offset, address))
            }
            (None, None) if address.checked_add(len as u64 - 1).is_some() => {
                Ok(Place::Memory(address))
            }
            _ => Err(EmulationError::Straddle {
                instruction: text(self.instr),
                rip: self.regs.rip,
                at: Location {
                    address,
                    bar: first,
                },
                len,
            }),
        }
    }

    /// The index of the (single) explicit memory operand.
    fn memory_operand(&self) -> Option<u32> {
        (0..self.instr.op_count()).find(|&op| self.instr.op_kind(op) == OpKind::Memory)
    }

    /// Resolves the memory operand: its address and BAR range of `len` bytes.
    fn bar_operand(&self, op: u32, len: usize) -> Result<(u64, BarId, u64), EmulationError> {
        let regs = &self.regs;
        let address = self
            .instr
            .virtual_address(op, 0, |reg, _, _| regs.address_register(reg))
            .ok_or_else(|| self.unsupported(self.fault))?;
        match self.place(address, len)? {
            Place::Bar(bar, offset, _) => Ok((address, bar, offset)),
            Place::Memory(_) => Err(self.unsupported(self.location(address))),
        }
    }

    /// The value of a GPR or immediate operand.
    fn register_or_immediate(&self, op: u32) -> Result<u64, EmulationError> {
        match self.instr.op_kind(op) {
            OpKind::Register => self
                .regs
                .read_gpr(self.instr.op_register(op))
                .ok_or_else(|| self.unsupported(self.fault)),
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => Ok(self.instr.immediate(op)),
            _ => Err(self.unsupported(self.fault)),
        }
    }

    /// The memory operand and its width, if the width is a GPR width.
    fn scalar_memory(&self) -> Result<(u32, usize), EmulationError> {
        let op = self
            .memory_operand()
            .ok_or_else(|| self.unsupported(self.fault))?;
        let width = self.instr.memory_size().size();
        if !matches!(width, 1 | 2 | 4 | 8) {
            return Err(self.unsupported(self.fault));
        }
        Ok((op, width))
    }

    // ---- accesses ----

    /// Performs a device access of `len` bytes as accesses of at most
    /// [`MAX_DEVICE_ACCESS`] bytes in address order; `access` gets the
    /// space, the BAR offset and the range of the caller's buffer.
    fn device_access(
        &mut self,
        address: u64,
        bar: BarId,
        offset: u64,
        len: usize,
        mut access: impl FnMut(&mut S, u64, std::ops::Range<usize>) -> std::io::Result<()>,
    ) -> Result<(), EmulationError> {
        let mut at = 0;
        while at < len {
            let n = (len - at).min(MAX_DEVICE_ACCESS);
            let off = offset + at as u64;
            access(self.space, off, at..at + n).map_err(|source| EmulationError::Device {
                instruction: text(self.instr),
                rip: self.regs.rip,
                at: Location {
                    address: address + at as u64,
                    bar: Some((bar, off)),
                },
                source,
            })?;
            self.out.device_accesses += 1;
            at += n;
        }
        Ok(())
    }

    fn device_read(
        &mut self,
        address: u64,
        bar: BarId,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), EmulationError> {
        self.device_access(address, bar, offset, data.len(), |space, off, r| {
            space.read(bar, off, &mut data[r])
        })
    }

    fn device_write(
        &mut self,
        address: u64,
        bar: BarId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), EmulationError> {
        self.device_access(address, bar, offset, data.len(), |space, off, r| {
            space.write(bar, off, &data[r])
        })
    }

    fn read_place(&mut self, place: Place, data: &mut [u8]) -> Result<(), EmulationError> {
        match place {
            Place::Bar(bar, offset, address) => self.device_read(address, bar, offset, data),
            Place::Memory(address) => {
                self.memory
                    .read(address, data)
                    .map_err(|source| EmulationError::Memory {
                        instruction: text(self.instr),
                        rip: self.regs.rip,
                        address,
                        source,
                    })
            }
        }
    }

    fn write_place(&mut self, place: Place, data: &[u8]) -> Result<(), EmulationError> {
        match place {
            Place::Bar(bar, offset, address) => self.device_write(address, bar, offset, data),
            Place::Memory(address) => {
                self.memory
                    .write(address, data)
                    .map_err(|source| EmulationError::Memory {
                        instruction: text(self.instr),
                        rip: self.regs.rip,
                        address,
                        source,
                    })
            }
        }
    }

    fn finish(&mut self) -> Result<(), EmulationError> {
        self.regs.rip = self.instr.next_ip();
        self.out.completed = true;
        Ok(())
    }

    fn write_register(&mut self, reg: Register, value: u64) -> Result<(), EmulationError> {
        if self.regs.write_gpr(reg, value) {
            Ok(())
        } else {
            Err(self.unsupported(self.fault))
        }
    }

    // ---- instruction families ----

    /// mov/movnti: a store of a GPR or immediate, or a load into a GPR;
    /// movbe (`swap`) the same with the bytes in reverse order.
    fn mov(&mut self, swap: bool) -> Result<(), EmulationError> {
        let (op, width) = self.scalar_memory()?;
        if op == 0 {
            // The source is checked before the device sees anything.
            let value = self.register_or_immediate(1)?;
            let (address, bar, offset) = self.bar_operand(op, width)?;
            let mut data = value.to_le_bytes();
            if swap {
                data[..width].reverse();
            }
            self.device_write(address, bar, offset, &data[..width])?;
        } else {
            let dst = self.instr.op0_register();
            if self.regs.read_gpr(dst).is_none() {
                return Err(self.unsupported(self.fault));
            }
            let (address, bar, offset) = self.bar_operand(op, width)?;
            let mut data = [0u8; 8];
            self.device_read(address, bar, offset, &mut data[..width])?;
            if swap {
                data[..width].reverse();
            }
            self.write_register(dst, u64::from_le_bytes(data))?;
        }
        self.finish()
    }

    /// movzx/movsx/movsxd: a load extended to the destination's width
    /// (then written with the usual rule: a 32-bit destination zeroes 32..64).
    fn load_extend(&mut self, signed: bool) -> Result<(), EmulationError> {
        let (op, width) = self.scalar_memory()?;
        let dst = self.instr.op0_register();
        if op != 1 || self.regs.read_gpr(dst).is_none() {
            return Err(self.unsupported(self.fault));
        }
        let (address, bar, offset) = self.bar_operand(op, width)?;
        let mut data = [0u8; 8];
        self.device_read(address, bar, offset, &mut data[..width])?;
        let value = u64::from_le_bytes(data);
        let value = if signed {
            sign_extend(value, width)
        } else {
            value
        };
        self.write_register(dst, value)?;
        self.finish()
    }

    /// xchg with memory: one read, then one write (the lock is implied;
    /// the device sees them back to back, nothing can come between).
    fn xchg(&mut self) -> Result<(), EmulationError> {
        let (op, width) = self.scalar_memory()?;
        let reg = self.instr.op_register(1 - op);
        let new = self
            .regs
            .read_gpr(reg)
            .ok_or_else(|| self.unsupported(self.fault))?;
        let (address, bar, offset) = self.bar_operand(op, width)?;
        let mut old = [0u8; 8];
        self.device_read(address, bar, offset, &mut old[..width])?;
        self.device_write(address, bar, offset, &new.to_le_bytes()[..width])?;
        self.write_register(reg, u64::from_le_bytes(old))?;
        self.finish()
    }

    /// bt/bts/btr/btc [m], imm8 or r: CF gets the selected bit, which the
    /// last three then set, clear or flip (read, then write). With a
    /// register, the signed bit offset also selects the operand-sized word:
    /// the access is at `ea + width * (offset div bits)`, as on the CPU.
    /// OF, SF, AF and PF are undefined and left unchanged; ZF is unchanged.
    fn bit_test(&mut self, op: Option<BitOp>) -> Result<(), EmulationError> {
        let (mem_op, width) = self.scalar_memory()?;
        if mem_op != 0 || width == 1 {
            return Err(self.unsupported(self.fault));
        }
        let bits = (width * 8) as u64;
        let regs = &*self.regs;
        let base = self
            .instr
            .virtual_address(0, 0, |reg, _, _| regs.address_register(reg))
            .ok_or_else(|| self.unsupported(self.fault))?;
        let (address, bit) = if self.instr.op1_kind() == OpKind::Register {
            let offset = self.register_or_immediate(1)?;
            let offset = sign_extend(offset, width) as i64;
            let word = offset >> bits.trailing_zeros();
            let displacement = word.wrapping_mul(width as i64) as u64;
            (base.wrapping_add(displacement), offset as u64 & (bits - 1))
        } else {
            (base, self.register_or_immediate(1)? & (bits - 1))
        };
        let (bar, offset) = match self.place(address, width)? {
            Place::Bar(bar, offset, _) => (bar, offset),
            Place::Memory(_) => return Err(self.unsupported(self.location(address))),
        };
        let mut data = [0u8; 8];
        self.device_read(address, bar, offset, &mut data[..width])?;
        let value = u64::from_le_bytes(data);
        let mask = 1u64 << bit;
        let new = match op {
            None => None,
            Some(BitOp::Set) => Some(value | mask),
            Some(BitOp::Reset) => Some(value & !mask),
            Some(BitOp::Complement) => Some(value ^ mask),
        };
        if let Some(new) = new {
            self.device_write(address, bar, offset, &new.to_le_bytes()[..width])?;
        }
        if value & mask != 0 {
            self.regs.rflags |= flags::CF;
        } else {
            self.regs.rflags &= !flags::CF;
        }
        self.finish()
    }

    /// xadd [m], r: the sum goes to memory, the old value to the register.
    fn xadd(&mut self) -> Result<(), EmulationError> {
        let (op, width) = self.scalar_memory()?;
        let reg = self.instr.op1_register();
        let addend = self
            .regs
            .read_gpr(reg)
            .ok_or_else(|| self.unsupported(self.fault))?;
        if op != 0 {
            return Err(self.unsupported(self.fault));
        }
        let (address, bar, offset) = self.bar_operand(op, width)?;
        let mut old = [0u8; 8];
        self.device_read(address, bar, offset, &mut old[..width])?;
        let old = u64::from_le_bytes(old);
        let (sum, status) = alu::compute(AluOp::Add, old, addend, width);
        self.device_write(address, bar, offset, &sum.to_le_bytes()[..width])?;
        self.write_register(reg, old)?;
        self.regs.rflags = (self.regs.rflags & !flags::STATUS) | status;
        self.finish()
    }

    /// cmpxchg [m], r: compares the accumulator with memory (flags of
    /// `cmp acc, [m]`); equal: r goes to memory; different: memory goes to
    /// the accumulator. The memory is written either way (the old value
    /// when they differ), as the CPU does, so the device sees read+write.
    fn cmpxchg(&mut self) -> Result<(), EmulationError> {
        let (op, width) = self.scalar_memory()?;
        let source = self.register_or_immediate(1)?;
        let accumulator = match width {
            1 => Register::AL,
            2 => Register::AX,
            4 => Register::EAX,
            _ => Register::RAX,
        };
        let expected = self.regs.read_gpr(accumulator).unwrap_or(0);
        if op != 0 {
            return Err(self.unsupported(self.fault));
        }
        let (address, bar, offset) = self.bar_operand(op, width)?;
        let mut old = [0u8; 8];
        self.device_read(address, bar, offset, &mut old[..width])?;
        let old = u64::from_le_bytes(old);
        let (_, status) = alu::compute(AluOp::Sub, expected, old, width);
        let equal = status & flags::ZF != 0;
        let stored = if equal { source } else { old };
        self.device_write(address, bar, offset, &stored.to_le_bytes()[..width])?;
        if !equal {
            self.write_register(accumulator, old)?;
        }
        self.regs.rflags = (self.regs.rflags & !flags::STATUS) | status;
        self.finish()
    }

    /// add/sub/and/or/xor (and cmp/test, which do not store) with a memory
    /// operand on either side: read once, compute with flags, write once.
    fn alu(&mut self, op: AluOp, store: bool) -> Result<(), EmulationError> {
        let (mem_op, width) = self.scalar_memory()?;
        let other = self.register_or_immediate(1 - mem_op)?;
        let (address, bar, offset) = self.bar_operand(mem_op, width)?;
        let mut data = [0u8; 8];
        self.device_read(address, bar, offset, &mut data[..width])?;
        let memory_value = u64::from_le_bytes(data);
        let (a, b) = if mem_op == 0 {
            (memory_value, other)
        } else {
            (other, memory_value)
        };
        let (result, status) = alu::compute(op, a, b, width);
        if store {
            if mem_op == 0 {
                self.device_write(address, bar, offset, &result.to_le_bytes()[..width])?;
            } else {
                self.write_register(self.instr.op0_register(), result)?;
            }
        }
        self.regs.rflags = (self.regs.rflags & !flags::STATUS) | status;
        self.finish()
    }

    /// inc/dec of memory: add/sub 1 that leaves CF as it was.
    fn inc_dec(&mut self, op: AluOp) -> Result<(), EmulationError> {
        let (mem_op, width) = self.scalar_memory()?;
        let (address, bar, offset) = self.bar_operand(mem_op, width)?;
        let mut data = [0u8; 8];
        self.device_read(address, bar, offset, &mut data[..width])?;
        let (result, status) = alu::compute(op, u64::from_le_bytes(data), 1, width);
        self.device_write(address, bar, offset, &result.to_le_bytes()[..width])?;
        let changed = flags::STATUS & !flags::CF;
        self.regs.rflags = (self.regs.rflags & !changed) | (status & changed);
        self.finish()
    }

    /// not (no flags) and neg (flags of 0 - value) of memory.
    fn not_neg(&mut self) -> Result<(), EmulationError> {
        let (mem_op, width) = self.scalar_memory()?;
        let (address, bar, offset) = self.bar_operand(mem_op, width)?;
        let mut data = [0u8; 8];
        self.device_read(address, bar, offset, &mut data[..width])?;
        let value = u64::from_le_bytes(data);
        let result = if self.instr.mnemonic() == Mnemonic::Neg {
            let (result, status) = alu::compute(AluOp::Sub, 0, value, width);
            self.regs.rflags = (self.regs.rflags & !flags::STATUS) | status;
            result
        } else {
            !value
        };
        self.device_write(address, bar, offset, &result.to_le_bytes()[..width])?;
        self.finish()
    }

    /// Moves between memory and an XMM/YMM/ZMM register (4 to 64 bytes).
    /// A load of 4 or 8 bytes into an xmm zeroes the rest of the xmm.
    /// Legacy SSE loads (`vex` false) leave bits 128..512 alone; VEX and
    /// EVEX loads zero everything above what they write. Masked EVEX
    /// forms were refused by the caller.
    fn vector(&mut self, vex: bool, aligned: bool) -> Result<(), EmulationError> {
        let op = self
            .memory_operand()
            .ok_or_else(|| self.unsupported(self.fault))?;
        let width = self.instr.memory_size().size();
        let reg = self.instr.op_register(1 - op);
        let index = match vector_index(reg) {
            Some(index) if matches!(width, 4 | 8 | 16 | 32 | 64) && width <= reg.size() => index,
            _ => return Err(self.unsupported(self.fault)),
        };
        let (address, bar, offset) = self.bar_operand(op, width)?;
        if aligned && address % width as u64 != 0 {
            return Err(EmulationError::Misaligned {
                instruction: text(self.instr),
                rip: self.regs.rip,
                at: self.location(address),
                len: width,
            });
        }
        let mut data = [0u8; 64];
        let lanes = [
            self.regs.xmm[index],
            self.regs.ymm_high[index],
            self.regs.zmm_high[index][0],
            self.regs.zmm_high[index][1],
        ];
        if op == 0 {
            for (chunk, lane) in data.chunks_exact_mut(16).zip(lanes) {
                chunk.copy_from_slice(&lane.to_le_bytes());
            }
            self.device_write(address, bar, offset, &data[..width])?;
        } else {
            self.device_read(address, bar, offset, &mut data[..width])?;
            let mut lanes = [0u128; 4];
            for (lane, chunk) in lanes.iter_mut().zip(data.chunks_exact(16)) {
                let mut bytes = [0u8; 16];
                bytes.copy_from_slice(chunk);
                *lane = u128::from_le_bytes(bytes);
            }
            self.regs.xmm[index] = lanes[0];
            if vex {
                self.regs.ymm_high[index] = lanes[1];
                self.regs.zmm_high[index] = [lanes[2], lanes[3]];
            }
            self.out.vector_written = true;
        }
        self.finish()
    }

    /// movs/stos/lods, with or without rep, in the direction of DF. Only
    /// 64-bit addressing (RSI/RDI); the source segment may be overridden.
    ///
    /// Elements are done one at a time with their own width. Elements in
    /// ordinary memory before the first BAR element are done through
    /// `ProgramMemory`; one after it ends the run (the CPU does the rest).
    /// An element that fails after others were done also ends the run:
    /// the re-executed instruction faults on it again and reports it
    /// without repeating the device accesses already made.
    fn string(&mut self, op: StringOp) -> Result<(), EmulationError> {
        let instr = self.instr;
        let width = instr.memory_size().size();
        let addressing_ok = match op {
            StringOp::Movs => {
                instr.op0_kind() == OpKind::MemoryESRDI && instr.op1_kind() == OpKind::MemorySegRSI
            }
            StringOp::Stos => instr.op0_kind() == OpKind::MemoryESRDI,
            StringOp::Lods => instr.op1_kind() == OpKind::MemorySegRSI,
        };
        if !addressing_ok || !matches!(width, 1 | 2 | 4 | 8) {
            return Err(self.unsupported(self.fault));
        }
        let source_base = self
            .regs
            .address_register(instr.memory_segment())
            .ok_or_else(|| self.unsupported(self.fault))?;
        let rep = instr.has_rep_prefix() || instr.has_repne_prefix();
        let step = if self.regs.rflags & flags::DF != 0 {
            (width as u64).wrapping_neg()
        } else {
            width as u64
        };
        let mut done = 0u64;
        let mut bar_elements = 0u64;
        loop {
            if rep && self.regs.gpr[gpr::RCX] == 0 {
                return self.finish();
            }
            if done == MAX_STRING_ITERATIONS {
                return Ok(());
            }
            match self.string_element(op, width, source_base) {
                Ok(true) => bar_elements += 1,
                Ok(false) if bar_elements > 0 => return Ok(()),
                Ok(false) => {}
                Err(_) if done > 0 => return Ok(()),
                Err(error) => return Err(error),
            }
            match op {
                StringOp::Movs => {
                    self.regs.gpr[gpr::RSI] = self.regs.gpr[gpr::RSI].wrapping_add(step);
                    self.regs.gpr[gpr::RDI] = self.regs.gpr[gpr::RDI].wrapping_add(step);
                }
                StringOp::Stos => {
                    self.regs.gpr[gpr::RDI] = self.regs.gpr[gpr::RDI].wrapping_add(step)
                }
                StringOp::Lods => {
                    self.regs.gpr[gpr::RSI] = self.regs.gpr[gpr::RSI].wrapping_add(step)
                }
            }
            done += 1;
            if !rep {
                return self.finish();
            }
            self.regs.gpr[gpr::RCX] -= 1;
        }
    }

    /// One string element. Ok(true): it touched a BAR. Ok(false): it is
    /// wholly in ordinary memory and was not done if a BAR element preceded
    /// (the caller decides); see `string`.
    fn string_element(
        &mut self,
        op: StringOp,
        width: usize,
        source_base: u64,
    ) -> Result<bool, EmulationError> {
        let source = match op {
            StringOp::Movs | StringOp::Lods => {
                Some(self.place(source_base.wrapping_add(self.regs.gpr[gpr::RSI]), width)?)
            }
            StringOp::Stos => None,
        };
        let destination = match op {
            StringOp::Movs | StringOp::Stos => Some(self.place(self.regs.gpr[gpr::RDI], width)?),
            StringOp::Lods => None,
        };
        let touches_bar =
            matches!(source, Some(Place::Bar(..))) || matches!(destination, Some(Place::Bar(..)));
        if !touches_bar && self.out.device_accesses > 0 {
            return Ok(false);
        }
        let mut data = [0u8; 8];
        match source {
            Some(place) => self.read_place(place, &mut data[..width])?,
            None => data = self.regs.gpr[gpr::RAX].to_le_bytes(),
        }
        match destination {
            Some(place) => self.write_place(place, &data[..width])?,
            None => {
                let reg = self.instr.op0_register();
                self.write_register(reg, le_u64(&data[..width]))?;
            }
        }
        Ok(touches_bar)
    }
}

#[cfg(test)]
mod tests;
