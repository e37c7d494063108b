//! The address spaces one container's mappings pin.
//!
//! Linux's type1 records, per mapping, the mm of the process that made it
//! (`dma->mm`): a container shared across fork holds mappings of the
//! parent's and of the child's memory at once, and a program that exec'd
//! keeps the old image's mappings while mapping its new memory. Here the
//! container's own memory (the opener's) backs every mapping made through
//! it; a mapping made by another address space (a forked child, the new
//! image after exec) records that space as a [`Space`].
//!
//! The IOMMU model maps an IOVA to a "physical" address, which is the user
//! virtual address of the pinned page; the space is encoded in the bits
//! above the user address range: physical address = `tag << TAG_SHIFT |
//! vaddr`, tag 0 being the container's own memory (so a program that maps
//! only its own memory sees exactly the addresses it always did). Device
//! DMA through a domain reaches [`RoutedMemory`], which sends each access
//! to the space its tag names.
//!
//! Invariants:
//! - a tag names at most one live space at a time; a slot is reused only
//!   when no mapping holds its [`Space`] any more (its last mapping was
//!   unmapped and flushed from every domain before the `Space` dropped, so
//!   no translation can still carry the old tag);
//! - a space's mappings have `vaddr + size <= 1 << TAG_SHIFT` (x86-64 user
//!   addresses with 4-level paging), so tag and address never overlap.

use std::sync::{Arc, RwLock, Weak};

use super::{MemError, UserMemory};

/// First bit of the tag in a physical address: above every 4-level user
/// address (`0x0000_7fff_ffff_ffff`).
pub(crate) const TAG_SHIFT: u32 = 47;
/// Tags that fit below the IOMMU model's 52-bit physical addresses; tag 0
/// is the container's own memory.
const TAGS: usize = 1 << (52 - TAG_SHIFT);

/// Another address space a mapping pins (module documentation).
pub(crate) struct Space {
    pub(crate) tag: u64,
    pub(crate) mem: Arc<dyn UserMemory>,
}

impl Space {
    /// The physical address the IOMMU maps for `vaddr` of this space.
    pub(crate) fn phys(&self, vaddr: u64) -> u64 {
        (self.tag << TAG_SHIFT) | vaddr
    }
}

impl std::fmt::Debug for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Space")
            .field("tag", &self.tag)
            .field("mem", &self.mem.describe())
            .finish()
    }
}

/// The spaces of one container, by tag.
#[derive(Default)]
pub(crate) struct SpaceTable {
    slots: RwLock<Vec<Weak<Space>>>,
}

fn same(a: &Arc<dyn UserMemory>, b: &Arc<dyn UserMemory>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

impl SpaceTable {
    /// The space of `mem` (shared with the mappings that already pin it),
    /// or a new one; `None` when every tag is taken.
    pub(crate) fn attach(&self, mem: &Arc<dyn UserMemory>) -> Option<Arc<Space>> {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        if slots.is_empty() {
            slots.resize(TAGS, Weak::new());
        }
        let mut free = None;
        for (tag, slot) in slots.iter().enumerate().skip(1) {
            match slot.upgrade() {
                Some(s) if same(&s.mem, mem) => return Some(s),
                Some(_) => {}
                None if free.is_none() => free = Some(tag),
                None => {}
            }
        }
        let tag = free?;
        let space = Arc::new(Space {
            tag: tag as u64,
            mem: mem.clone(),
        });
        slots[tag] = Arc::downgrade(&space);
        Some(space)
    }

    fn get(&self, tag: usize) -> Option<Arc<Space>> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots.get(tag)?.upgrade()
    }
}

/// Is `mem` another handle on `own` (the same backend)?
pub(crate) fn is_same(mem: &Arc<dyn UserMemory>, own: &Arc<dyn UserMemory>) -> bool {
    same(mem, own)
}

/// What the IOMMU domains of a container reach: the container's own memory
/// for tag 0, the table's spaces for the others. Only device accesses
/// (`dma_read`, `dma_write`) look at tags; everything else is the own
/// memory's.
pub(crate) struct RoutedMemory {
    pub(crate) own: Arc<dyn UserMemory>,
    pub(crate) spaces: Arc<SpaceTable>,
}

impl RoutedMemory {
    /// The container's own memory, where everything but device accesses
    /// goes.
    fn own_memory(&self) -> &dyn UserMemory {
        &*self.own
    }

    fn route(&self, phys: u64) -> Result<(Option<Arc<Space>>, u64), MemError> {
        let tag = (phys >> TAG_SHIFT) as usize;
        if tag == 0 {
            return Ok((None, phys));
        }
        let space = self.spaces.get(tag).ok_or(MemError::Unreachable)?;
        Ok((Some(space), phys & ((1 << TAG_SHIFT) - 1)))
    }
}

/// An access must stay inside one space: one that crosses into the next
/// tag is outside every space (a fault).
fn check_within_tag(phys: u64, len: usize) -> Result<(), MemError> {
    let last = phys
        .checked_add((len as u64).saturating_sub(1))
        .ok_or(MemError::Fault)?;
    if last >> TAG_SHIFT != phys >> TAG_SHIFT {
        return Err(MemError::Fault);
    }
    Ok(())
}

impl UserMemory for RoutedMemory {
    crate::forward_user_memory!(own_memory: pin, is_device_range, device_bytes, unpin, read, write,
        lock_policy, cap_sys_resource, account, stats, describe, svm_view, shared);

    fn dma_read(&self, phys: u64, buf: &mut [u8]) -> Result<(), MemError> {
        check_within_tag(phys, buf.len())?;
        match self.route(phys)? {
            (None, v) => self.own.dma_read(v, buf),
            (Some(s), v) => s.mem.dma_read(v, buf),
        }
    }

    fn dma_write(&self, phys: u64, data: &[u8]) -> Result<(), MemError> {
        check_within_tag(phys, data.len())?;
        match self.route(phys)? {
            (None, v) => self.own.dma_write(v, data),
            (Some(s), v) => s.mem.dma_write(v, data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::probe::{check_forwarded, Probe, METHODS};

    /// Everything but a tagged device access is the own memory's: each
    /// method reaches it with the same arguments and answers its answer
    /// (tag 0 device accesses too). `device_bytes`, `is_device_range` and
    /// `cap_sys_resource` once kept the trait's defaults here.
    #[test]
    fn routed_memory_passes_everything_on_to_its_own_memory() {
        let probe = Arc::new(Probe::new());
        let routed = RoutedMemory {
            own: probe.clone(),
            spaces: Arc::new(SpaceTable::default()),
        };
        assert_eq!(check_forwarded(&routed, &probe, &METHODS), Ok(()));
    }

    /// A tagged device access goes to the space of its tag (not the own
    /// memory), at the address within the space.
    #[test]
    fn routed_memory_sends_a_tagged_device_access_to_its_space() {
        let own = Arc::new(Probe::new());
        let other = Arc::new(Probe::new());
        let spaces = Arc::new(SpaceTable::default());
        let other_mem: Arc<dyn UserMemory> = other.clone();
        let space = spaces.attach(&other_mem).expect("a free tag");
        let routed = RoutedMemory {
            own: own.clone(),
            spaces,
        };
        let phys = space.phys(0x8000);
        let mut buf = [0u8; 3];
        assert_eq!(routed.dma_read(phys, &mut buf), Ok(()));
        assert_eq!(buf, [2; 3]);
        assert_eq!(own.take_log(), Vec::<String>::new());
        assert_eq!(other.take_log(), ["dma_read 0x8000 3"]);
    }
}
