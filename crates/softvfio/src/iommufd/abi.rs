//! The byte-level ABI of `/dev/iommu` (`include/uapi/linux/iommufd.h`,
//! Linux 6.12): request numbers, the generic size rules, and each command's
//! field checks in the kernel's order, decoded into [`Iommufd`] calls.
//!
//! Generic rules (`iommufd_fops_ioctl`): the first `u32` of the argument is
//! the caller's struct size; below the command's minimum it is EINVAL;
//! bytes the kernel does not know (past its struct) must be zero (E2BIG);
//! the reply copies back at most the caller's size. Requests outside the
//! table go to the type1 compatibility ioctls, then ENOTTY.

use super::compat;
use super::hwpt::HWPT_DATA_NONE;
use super::{FaultFile, Iommufd};
use crate::error::{Result, VfioError};
use crate::iommu::Prot;
use crate::memory::UserMemory;
use crate::uapi::Wire;
use std::sync::Arc;

/// The ioctl type of iommufd (and VFIO): `';'`.
pub const IOMMUFD_TYPE: u64 = b';' as u64;

/// `_IO(';', 0x80 + n)`.
pub const fn iommufd_io(n: u64) -> u64 {
    (IOMMUFD_TYPE << 8) | (0x80 + n)
}

/// `IOMMU_DESTROY`.
pub const IOMMU_DESTROY: u64 = iommufd_io(0);
/// `IOMMU_IOAS_ALLOC`.
pub const IOMMU_IOAS_ALLOC: u64 = iommufd_io(1);
/// `IOMMU_IOAS_ALLOW_IOVAS`.
pub const IOMMU_IOAS_ALLOW_IOVAS: u64 = iommufd_io(2);
/// `IOMMU_IOAS_COPY`.
pub const IOMMU_IOAS_COPY: u64 = iommufd_io(3);
/// `IOMMU_IOAS_IOVA_RANGES`.
pub const IOMMU_IOAS_IOVA_RANGES: u64 = iommufd_io(4);
/// `IOMMU_IOAS_MAP`.
pub const IOMMU_IOAS_MAP: u64 = iommufd_io(5);
/// `IOMMU_IOAS_UNMAP`.
pub const IOMMU_IOAS_UNMAP: u64 = iommufd_io(6);
/// `IOMMU_OPTION`.
pub const IOMMU_OPTION: u64 = iommufd_io(7);
/// `IOMMU_VFIO_IOAS`.
pub const IOMMU_VFIO_IOAS: u64 = iommufd_io(8);
/// `IOMMU_HWPT_ALLOC`.
pub const IOMMU_HWPT_ALLOC: u64 = iommufd_io(9);
/// `IOMMU_GET_HW_INFO`.
pub const IOMMU_GET_HW_INFO: u64 = iommufd_io(10);
/// `IOMMU_HWPT_SET_DIRTY_TRACKING`.
pub const IOMMU_HWPT_SET_DIRTY_TRACKING: u64 = iommufd_io(11);
/// `IOMMU_HWPT_GET_DIRTY_BITMAP`.
pub const IOMMU_HWPT_GET_DIRTY_BITMAP: u64 = iommufd_io(12);
/// `IOMMU_HWPT_INVALIDATE`.
pub const IOMMU_HWPT_INVALIDATE: u64 = iommufd_io(13);
/// `IOMMU_FAULT_QUEUE_ALLOC` (the last command of 6.12; `IOAS_MAP_FILE`
/// came in 6.13 and is ENOTTY here, as on the reference).
pub const IOMMU_FAULT_QUEUE_ALLOC: u64 = iommufd_io(14);

/// `IOMMU_IOAS_MAP_FIXED_IOVA`.
pub const IOAS_MAP_FIXED_IOVA: u32 = 1 << 0;
/// `IOMMU_IOAS_MAP_WRITEABLE`.
pub const IOAS_MAP_WRITEABLE: u32 = 1 << 1;
/// `IOMMU_IOAS_MAP_READABLE`.
pub const IOAS_MAP_READABLE: u32 = 1 << 2;
const IOAS_MAP_FLAGS: u32 = IOAS_MAP_FIXED_IOVA | IOAS_MAP_WRITEABLE | IOAS_MAP_READABLE;

/// `IOMMU_OPTION_RLIMIT_MODE`.
pub const OPTION_RLIMIT_MODE: u32 = 0;
/// `IOMMU_OPTION_HUGE_PAGES`.
pub const OPTION_HUGE_PAGES: u32 = 1;
/// `IOMMU_OPTION_OP_SET`.
pub const OPTION_OP_SET: u16 = 0;
/// `IOMMU_OPTION_OP_GET`.
pub const OPTION_OP_GET: u16 = 1;

/// `IOMMU_HW_INFO_TYPE_INTEL_VTD`.
pub const HW_INFO_TYPE_INTEL_VTD: u32 = 1;
/// Bytes of `struct iommu_hw_info_vtd`.
const HW_INFO_VTD_LEN: u32 = 24;

/// (minimum size, the kernel's struct size) of each command, by number
/// from 0x80.
const SIZES: [(usize, usize); 15] = [
    (8, 8),   // destroy: size, id
    (12, 12), // ioas_alloc: size, flags, out_ioas_id
    (24, 24), // allow_iovas
    (40, 40), // copy
    (32, 32), // iova_ranges
    (40, 40), // map
    (24, 24), // unmap
    (24, 24), // option
    (12, 12), // vfio_ioas
    (24, 48), // hwpt_alloc: the data fields, then fault_id (6.11), came later
    (32, 40), // get_hw_info: out_capabilities came later
    (16, 16), // set_dirty_tracking
    (48, 48), // get_dirty_bitmap
    (32, 32), // hwpt_invalidate
    (16, 16), // fault_queue_alloc: size, flags, out_fault_id, out_fault_fd
];

/// The argument of one command, copied in under the generic rules.
struct Cmd {
    w: Wire,
    /// The caller's size (what the reply may fill).
    user_size: usize,
}

impl Cmd {
    fn read(user: &dyn UserMemory, arg: u64, min: usize, size: usize) -> Result<Cmd> {
        let head = Wire::read(user, arg, 4)?;
        let user_size = head.u32_at(0) as usize;
        if user_size < min {
            return Err(VfioError::Invalid("struct size below the minimum"));
        }
        let mut w = Wire::read(user, arg, user_size.min(size))?;
        w.0.resize(size, 0);
        // copy_struct_from_user: what the kernel does not know must be 0.
        let mut at = size;
        let mut chunk = vec![0u8; 4096];
        while at < user_size {
            let n = (user_size - at).min(chunk.len());
            user.read(arg + at as u64, &mut chunk[..n])
                .map_err(|_| VfioError::Fault)?;
            if chunk[..n].iter().any(|b| *b != 0) {
                return Err(VfioError::TooBig("unknown trailing bytes are not zero"));
            }
            at += n;
        }
        Ok(Cmd { w, user_size })
    }

    fn respond(&self, user: &dyn UserMemory, arg: u64) -> Result<()> {
        self.w.write_back(user, arg, self.user_size)
    }

    fn u16_at(&self, off: usize) -> u16 {
        (self.w.u32_at(off) & 0xffff) as u16
    }
}

fn map_prot(flags: u32) -> Prot {
    Prot {
        read: flags & IOAS_MAP_READABLE != 0,
        write: flags & IOAS_MAP_WRITEABLE != 0,
    }
}

fn eopnotsupp() -> VfioError {
    VfioError::Errno(libc::EOPNOTSUPP)
}

fn eoverflow() -> VfioError {
    VfioError::Errno(libc::EOVERFLOW)
}

/// `IOMMU_FAULT_QUEUE_ALLOC` on `ctx` (`iommufd_fault_alloc`): the
/// generic size rules, EOPNOTSUPP for any flag, then a new fault object and
/// its open file, with the reply (`out_fault_id`) written. The front end
/// gives the file a descriptor and writes its number at the returned
/// address (`out_fault_fd`); if it cannot, it calls [`FaultFile::abort`].
/// A reply that cannot be written is EFAULT, and no object stays.
pub fn fault_queue_alloc(
    ctx: &Arc<Iommufd>,
    arg: u64,
    user: &dyn UserMemory,
) -> Result<(FaultFile, u64)> {
    let (min, size) = SIZES[(IOMMU_FAULT_QUEUE_ALLOC & 0xff) as usize - 0x80];
    let mut c = Cmd::read(user, arg, min, size)?;
    if c.w.u32_at(4) != 0 {
        return Err(eopnotsupp());
    }
    let file = ctx.fault_alloc();
    c.w.put_u32(8, file.id());
    // Until the front end writes the descriptor's number.
    c.w.put_u32(12, u32::MAX);
    if let Err(e) = c.respond(user, arg) {
        file.abort();
        return Err(e);
    }
    Ok((file, arg + 12))
}

/// An ioctl on an open `/dev/iommu`; the system call's return value.
/// `IOMMU_FAULT_QUEUE_ALLOC` makes a file: see [`fault_queue_alloc`].
pub fn ioctl(ctx: &Iommufd, request: u64, arg: u64, user: &dyn UserMemory) -> Result<i64> {
    let nr = request & 0xff;
    let in_table =
        request == (IOMMUFD_TYPE << 8) | nr && (0x80..0x80 + SIZES.len() as u64).contains(&nr);
    if !in_table {
        return compat::ioctl(ctx, request, arg, user);
    }
    let (min, size) = SIZES[(nr - 0x80) as usize];
    let mut c = Cmd::read(user, arg, min, size)?;
    match request {
        IOMMU_DESTROY => ctx.destroy(c.w.u32_at(4)).map(|()| 0),
        IOMMU_IOAS_ALLOC => {
            if c.w.u32_at(4) != 0 {
                return Err(eopnotsupp());
            }
            let id = ctx.ioas_alloc();
            c.w.put_u32(8, id);
            if let Err(e) = c.respond(user, arg) {
                let _ = ctx.destroy(id);
                return Err(e);
            }
            Ok(0)
        }
        IOMMU_IOAS_IOVA_RANGES => {
            if c.w.u32_at(12) != 0 {
                return Err(eopnotsupp());
            }
            let max = c.w.u32_at(8) as usize;
            let (ranges, align) = ctx.iova_ranges(c.w.u32_at(4))?;
            let buf = c.w.u64_at(16);
            for (i, (s, l)) in ranges.iter().take(max).enumerate() {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&s.to_ne_bytes());
                b[8..].copy_from_slice(&l.to_ne_bytes());
                user.write(buf + 16 * i as u64, &b)
                    .map_err(|_| VfioError::Fault)?;
            }
            c.w.put_u32(8, ranges.len() as u32);
            c.w.put_u64(24, align);
            c.respond(user, arg)?;
            if ranges.len() > max {
                return Err(VfioError::Errno(libc::EMSGSIZE));
            }
            Ok(0)
        }
        IOMMU_IOAS_ALLOW_IOVAS => {
            if c.w.u32_at(12) != 0 {
                return Err(eopnotsupp());
            }
            let ioas = c.w.u32_at(4);
            ctx.iova_ranges(ioas)?;
            let n = c.w.u32_at(8) as usize;
            let buf = c.w.u64_at(16);
            let mut ranges = Vec::new();
            for i in 0..n {
                let r = Wire::read(user, buf + 16 * i as u64, 16)?;
                ranges.push((r.u64_at(0), r.u64_at(8)));
            }
            ctx.allow_iovas(ioas, &ranges).map(|()| 0)
        }
        IOMMU_IOAS_MAP => {
            let flags = c.w.u32_at(4);
            if flags & !IOAS_MAP_FLAGS != 0 || c.w.u32_at(12) != 0 {
                return Err(eopnotsupp());
            }
            let (uptr, length, iova) = (c.w.u64_at(16), c.w.u64_at(24), c.w.u64_at(32));
            if iova == u64::MAX || length == u64::MAX {
                return Err(eoverflow());
            }
            if flags & (IOAS_MAP_READABLE | IOAS_MAP_WRITEABLE) == 0 {
                return Err(VfioError::Invalid("map neither readable nor writeable"));
            }
            let fixed = (flags & IOAS_MAP_FIXED_IOVA != 0).then_some(iova);
            let at = ctx.map(c.w.u32_at(8), uptr, length, fixed, map_prot(flags))?;
            c.w.put_u64(32, at);
            c.respond(user, arg)?;
            Ok(0)
        }
        IOMMU_IOAS_COPY => {
            let flags = c.w.u32_at(4);
            if flags & !IOAS_MAP_FLAGS != 0 {
                return Err(eopnotsupp());
            }
            let (length, dst_iova, src_iova) = (c.w.u64_at(16), c.w.u64_at(24), c.w.u64_at(32));
            if length == u64::MAX || src_iova == u64::MAX || dst_iova == u64::MAX {
                return Err(eoverflow());
            }
            if flags & (IOAS_MAP_READABLE | IOAS_MAP_WRITEABLE) == 0 {
                return Err(VfioError::Invalid("copy neither readable nor writeable"));
            }
            let fixed = (flags & IOAS_MAP_FIXED_IOVA != 0).then_some(dst_iova);
            let at = ctx.copy(
                c.w.u32_at(8),
                c.w.u32_at(12),
                length,
                fixed,
                src_iova,
                map_prot(flags),
            )?;
            c.w.put_u64(24, at);
            c.respond(user, arg)?;
            Ok(0)
        }
        IOMMU_IOAS_UNMAP => {
            let ioas = c.w.u32_at(4);
            let (iova, length) = (c.w.u64_at(8), c.w.u64_at(16));
            ctx.iova_ranges(ioas)?;
            let n = if iova == 0 && length == u64::MAX {
                ctx.unmap_all(ioas)?
            } else {
                if iova == u64::MAX || length == u64::MAX {
                    return Err(eoverflow());
                }
                ctx.unmap(ioas, iova, length)?
            };
            c.w.put_u64(16, n);
            c.respond(user, arg)?;
            Ok(0)
        }
        IOMMU_OPTION => {
            if c.u16_at(10) != 0 {
                return Err(eopnotsupp());
            }
            let (option, op, object, val) =
                (c.w.u32_at(4), c.u16_at(8), c.w.u32_at(12), c.w.u64_at(16));
            let out = match option {
                OPTION_RLIMIT_MODE => {
                    if object != 0 {
                        return Err(eopnotsupp());
                    }
                    match op {
                        OPTION_OP_GET => ctx.rlimit_mode(),
                        OPTION_OP_SET => {
                            ctx.set_rlimit_mode(val)?;
                            val
                        }
                        _ => return Err(eopnotsupp()),
                    }
                }
                OPTION_HUGE_PAGES => match op {
                    OPTION_OP_GET => ctx.huge_pages(object, None)?,
                    OPTION_OP_SET => ctx.huge_pages(object, Some(val))?,
                    _ => return Err(eopnotsupp()),
                },
                _ => return Err(eopnotsupp()),
            };
            // Only val64 goes back.
            c.w.put_u64(16, out);
            let b = out.to_ne_bytes();
            if c.user_size >= 24 {
                user.write(arg + 16, &b).map_err(|_| VfioError::Fault)?;
            }
            Ok(0)
        }
        IOMMU_VFIO_IOAS => {
            if c.u16_at(10) != 0 {
                return Err(eopnotsupp());
            }
            match c.u16_at(8) {
                0 => {
                    let id = ctx.vfio_ioas()?;
                    c.w.put_u32(4, id);
                    c.respond(user, arg)?;
                    Ok(0)
                }
                1 => ctx.set_vfio_ioas(Some(c.w.u32_at(4))).map(|()| 0),
                2 => ctx.set_vfio_ioas(None).map(|()| 0),
                _ => Err(eopnotsupp()),
            }
        }
        IOMMU_HWPT_ALLOC => {
            let flags = c.w.u32_at(4);
            // NEST_PARENT, DIRTY_TRACKING and FAULT_ID_VALID are known;
            // which a HWPT takes is decided with its parent (below).
            if flags & !7 != 0 || c.w.u32_at(20) != 0 {
                return Err(eopnotsupp());
            }
            let (data_type, data_len) = (c.w.u32_at(24), c.w.u32_at(28));
            if data_type == HWPT_DATA_NONE && data_len != 0 {
                return Err(VfioError::Invalid("data for a paging HWPT"));
            }
            let id = ctx.hwpt_alloc(c.w.u32_at(8), c.w.u32_at(12), flags, data_type)?;
            c.w.put_u32(16, id);
            if let Err(e) = c.respond(user, arg) {
                let _ = ctx.destroy(id);
                return Err(e);
            }
            Ok(0)
        }
        IOMMU_GET_HW_INFO => {
            if c.w.u32_at(4) != 0 {
                return Err(eopnotsupp());
            }
            let info = ctx.hw_info(c.w.u32_at(8))?;
            let (kind, data) = match info {
                Some(i) => {
                    let mut d = Vec::with_capacity(HW_INFO_VTD_LEN as usize);
                    d.extend_from_slice(&i.flags.to_ne_bytes());
                    d.extend_from_slice(&0u32.to_ne_bytes());
                    d.extend_from_slice(&i.cap_reg.to_ne_bytes());
                    d.extend_from_slice(&i.ecap_reg.to_ne_bytes());
                    (HW_INFO_TYPE_INTEL_VTD, d)
                }
                None => (0, Vec::new()),
            };
            let user_len = c.w.u32_at(12) as usize;
            let uptr = c.w.u64_at(16);
            if user_len > 0 {
                let n = user_len.min(data.len());
                user.write(uptr, &data[..n]).map_err(|_| VfioError::Fault)?;
                if user_len > n {
                    // Trailing bytes of a larger buffer are zeroed.
                    user.write(uptr + n as u64, &vec![0u8; user_len - n])
                        .map_err(|_| VfioError::Fault)?;
                }
            }
            c.w.put_u32(12, data.len() as u32);
            c.w.put_u32(24, kind);
            // No HW dirty tracking (see hwpt).
            c.w.put_u64(32, 0);
            c.respond(user, arg)?;
            Ok(0)
        }
        IOMMU_HWPT_SET_DIRTY_TRACKING => {
            if c.w.u32_at(4) & !1 != 0 || c.w.u32_at(12) != 0 {
                return Err(eopnotsupp());
            }
            ctx.hwpt_dirty(c.w.u32_at(8)).map(|()| 0)
        }
        IOMMU_HWPT_GET_DIRTY_BITMAP => {
            if c.w.u32_at(8) & !1 != 0 || c.w.u32_at(12) != 0 {
                return Err(eopnotsupp());
            }
            ctx.hwpt_dirty(c.w.u32_at(4)).map(|()| 0)
        }
        IOMMU_HWPT_INVALIDATE => {
            // size, hwpt_id, data_uptr, data_type, entry_len, entry_num, rsvd
            if c.w.u32_at(28) != 0 {
                return Err(eopnotsupp());
            }
            let (uptr, entry_len, entry_num) = (c.w.u64_at(8), c.w.u32_at(20), c.w.u32_at(24));
            if entry_num != 0 && (uptr == 0 || entry_len == 0) {
                return Err(VfioError::Invalid("entries without data"));
            }
            // Only nested HWPTs take invalidations, and none is ever made.
            Err(VfioError::NoEntry)
        }
        // A file comes back: front ends call [`fault_queue_alloc`]. Without
        // a descriptor table to put it in, the kernel's answer is that of
        // `get_unused_fd_flags` failing: EMFILE, no object left behind.
        IOMMU_FAULT_QUEUE_ALLOC => {
            if c.w.u32_at(4) != 0 {
                return Err(eopnotsupp());
            }
            Err(VfioError::Errno(libc::EMFILE))
        }
        _ => Err(VfioError::NoTty),
    }
}
