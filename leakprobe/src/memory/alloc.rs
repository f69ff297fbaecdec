//! Allocation tracking, userspace half: reading the kernel's per-stack totals and following
//! each stack's outstanding bytes over time, for every family that tracks allocations.

use std::collections::HashMap;

use aya::maps::{MapData, PerCpuHashMap};
use leakprobe_ebpf::alloc::StackTotals;

use crate::books::{suspect::Category, tracker::Tracker};

/// Totals summed over CPUs, by stack id.
pub fn read_totals(map: &PerCpuHashMap<MapData, i64, StackTotals>) -> HashMap<i64, StackTotals> {
    map.iter().flatten().map(|(stack_id, per_cpu)| (stack_id, sum(per_cpu.iter()))).collect()
}

/// The sum of several totals.
pub fn sum<'a>(totals: impl IntoIterator<Item = &'a StackTotals>) -> StackTotals {
    totals.into_iter().fold(StackTotals::default(), |mut acc, t| {
        acc.alloc_bytes += t.alloc_bytes;
        acc.allocs += t.allocs;
        acc.free_bytes += t.free_bytes;
        acc.frees += t.frees;
        acc
    })
}

/// One family's per-stack totals map, sampled into the suspects tracker.
pub struct Tracked {
    category: Category,
    map: PerCpuHashMap<MapData, i64, StackTotals>,
    /// Latest totals since attach, summed over stacks.
    pub since_attach: StackTotals,
}

impl Tracked {
    /// Follows `map` as memory of `category`.
    pub fn new(category: Category, map: PerCpuHashMap<MapData, i64, StackTotals>) -> Self {
        Self { category, map, since_attach: StackTotals::default() }
    }

    /// Reads the map, updates [`Self::since_attach`] and adds each stack's outstanding bytes to
    /// `suspects` at time `t`.
    pub fn sample(&mut self, t: f64, suspects: &mut Tracker) {
        let totals = read_totals(&self.map);
        self.since_attach = sum(totals.values());
        suspects.sample(self.category, t, totals.iter().map(|(id, t)| (*id, outstanding(t))));
        suspects.allocated(self.category, totals.iter().map(|(id, t)| (*id, t.alloc_bytes)));
    }
}

/// Outstanding bytes (allocated minus freed since attach) of a stack's totals.
pub fn outstanding(t: &StackTotals) -> i64 {
    t.alloc_bytes as i64 - t.free_bytes as i64
}
