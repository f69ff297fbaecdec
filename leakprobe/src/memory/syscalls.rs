//! Memory syscalls, userspace half: the target's anonymous mappings made since attach, by
//! the stack that mapped them, and the growth of its program break.
//!
//! `munmap` may cut any part of a mapping (V8 maps more than it needs, then trims the ends to
//! align), so the books are intervals: an unmap removes exactly the bytes it covers.
//! `mremap` is not followed (the mapping keeps its old extent in the books).

use std::collections::{BTreeMap, HashMap};

use leakprobe_ebpf::syscalls::{op, MapEvent, MAP_ANONYMOUS};
use serde::Serialize;

use crate::books::{
    suspect::{Category, Suspect},
    tracker::Tracker,
};

/// `MAP_SHARED`: shared anonymous memory is shmem, not private growth.
const MAP_SHARED: u32 = 0x01;

/// The books.
#[derive(Debug, Default)]
pub struct Mappings {
    /// Live anonymous mappings made since attach: start → (end, stack id).
    intervals: BTreeMap<u64, (u64, i64)>,
    mmaps: u64,
    munmaps: u64,
    first_brk: Option<u64>,
    brk: Option<u64>,
}

/// `report.mappings`.
#[derive(Debug, Serialize)]
pub struct MappingsReport {
    /// Bytes of private anonymous mappings made since attach and still mapped.
    pub anon_mapped_bytes: u64,
    /// Anonymous `mmap` calls since attach.
    pub mmaps: u64,
    /// `munmap` calls since attach.
    pub munmaps: u64,
    /// Growth of the program break (the main malloc arena) since attach.
    pub brk_growth_bytes: i64,
    /// Stacks whose mappings keep growing (RSS growth attribution), as suspects are judged.
    pub growing_stacks: Vec<Suspect>,
}

impl Mappings {
    /// Applies one syscall.
    pub fn apply(&mut self, e: &MapEvent) {
        match e.op {
            op::MMAP if e.flags & MAP_ANONYMOUS != 0 && e.flags & MAP_SHARED == 0 && e.len > 0 => {
                // MAP_FIXED may map over existing mappings: those bytes are replaced.
                self.unmap(e.addr, e.len);
                self.intervals.insert(e.addr, (e.addr.saturating_add(e.len), e.stack_id));
                self.mmaps += 1;
            }
            op::MUNMAP => {
                self.unmap(e.addr, e.len);
                self.munmaps += 1;
            }
            op::BRK => {
                self.first_brk.get_or_insert(e.addr);
                self.brk = Some(e.addr);
            }
            _ => {}
        }
    }

    /// Removes `[addr, addr + len)` from the books, splitting mappings it cuts.
    fn unmap(&mut self, addr: u64, len: u64) {
        let end = addr.saturating_add(len);
        // Mappings never overlap, so only the last one starting before `addr` can reach into it.
        let before = self.intervals.range(..addr).next_back().filter(|(_, (iv_end, _))| *iv_end > addr);
        let overlapping: Vec<u64> =
            before.into_iter().chain(self.intervals.range(addr..end)).map(|(start, _)| *start).collect();
        for start in overlapping {
            let Some((iv_end, stack)) = self.intervals.remove(&start) else {
                continue;
            };
            if start < addr {
                self.intervals.insert(start, (addr, stack));
            }
            if iv_end > end {
                self.intervals.insert(end, (iv_end, stack));
            }
        }
    }

    /// Bytes mapped, by stack.
    pub fn by_stack(&self) -> HashMap<i64, i64> {
        let mut out = HashMap::new();
        for (start, (end, stack)) in &self.intervals {
            *out.entry(*stack).or_insert(0) += (end - start) as i64;
        }
        out
    }

    /// Adds the per-stack bytes to `tracker` at time `t`.
    pub fn sample(&self, t: f64, tracker: &mut Tracker) {
        tracker.sample(Category::Mapping, t, self.by_stack());
    }

    /// The report section, with `growing_stacks` already judged.
    pub fn report(&self, growing_stacks: Vec<Suspect>) -> MappingsReport {
        MappingsReport {
            anon_mapped_bytes: self.intervals.iter().map(|(s, (e, _))| e - s).sum(),
            mmaps: self.mmaps,
            munmaps: self.munmaps,
            brk_growth_bytes: match (self.first_brk, self.brk) {
                (Some(first), Some(now)) => now as i64 - first as i64,
                _ => 0,
            },
            growing_stacks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: u32, addr: u64, len: u64, stack_id: i64) -> MapEvent {
        MapEvent { kind: 3, op, tid: 1, flags: MAP_ANONYMOUS, stack_id, addr, len }
    }

    #[test]
    fn unmaps_cut_mappings_exactly() {
        let mut m = Mappings::default();
        // V8's aligned reservation: map 3 pages, trim the head and the tail.
        m.apply(&ev(op::MMAP, 0x10000, 0x3000, 7));
        m.apply(&ev(op::MUNMAP, 0x10000, 0x800, -1));
        m.apply(&ev(op::MUNMAP, 0x12800, 0x800, -1));
        assert_eq!(m.by_stack()[&7], 0x2000);
        // A hole in the middle splits it.
        m.apply(&ev(op::MUNMAP, 0x11000, 0x1000, -1));
        assert_eq!(m.by_stack()[&7], 0x1000);
        assert_eq!(m.intervals.len(), 2);
        // Unmapping what we never saw changes nothing.
        m.apply(&ev(op::MUNMAP, 0x90000, 0x1000, -1));
        // One unmap across several mappings.
        m.apply(&ev(op::MMAP, 0x20000, 0x1000, 8));
        m.apply(&ev(op::MUNMAP, 0x0, 0x100000, -1));
        assert!(m.by_stack().is_empty());
        assert_eq!(m.report(vec![]).munmaps, 5);
    }

    #[test]
    fn shared_and_file_mappings_are_not_counted_and_brk_is() {
        let mut m = Mappings::default();
        let mut shared = ev(op::MMAP, 0x1000, 0x1000, 1);
        shared.flags |= MAP_SHARED;
        m.apply(&shared);
        let mut file = ev(op::MMAP, 0x5000, 0x1000, 1);
        file.flags = 0;
        m.apply(&file);
        assert_eq!(m.report(vec![]).anon_mapped_bytes, 0);
        m.apply(&ev(op::BRK, 0x100000, 0, 2));
        m.apply(&ev(op::BRK, 0x180000, 0, 2));
        assert_eq!(m.report(vec![]).brk_growth_bytes, 0x80000);
    }

    #[test]
    fn map_fixed_replaces_what_it_covers() {
        let mut m = Mappings::default();
        m.apply(&ev(op::MMAP, 0x10000, 0x4000, 1));
        m.apply(&ev(op::MMAP, 0x11000, 0x1000, 2));
        let by = m.by_stack();
        assert_eq!((by[&1], by[&2]), (0x3000, 0x1000));
    }
}
