//! Page faults, userspace half: the target's sampled first touches by stack, over time.
//!
//! The kernel half (`probes/faults.rs` in leakprobe-ebpf) adds each sampled fault's period to
//! its stack's count. Each interval this reads the counts into one series per stack of the
//! bytes first touched since attach (faults × [`PAGE_BYTES`]); the verdict
//! ([`crate::verdict`]) judges them by logical site.

use std::collections::HashMap;

use aya::maps::{MapData, PerCpuHashMap};
use leakprobe_ebpf::faults::PAGE_BYTES;
use serde::Serialize;

use crate::alloc::Series;

/// The books of one process's sampled page faults.
pub struct FaultBooks {
    map: PerCpuHashMap<MapData, i64, u64>,
    /// Faults per sample.
    pub period: u64,
    /// Bytes first touched since attach, by stack id.
    pub series: HashMap<i64, Series>,
    /// Faults counted so far (the sum of the samples' periods).
    pub faults: u64,
}

/// `report.faults`: what the page-fault sampling saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultReport {
    /// One sampled fault stands for this many (the perf event's sample period).
    pub period: u64,
    /// The target's faults counted from the samples (samples × period).
    pub faults: u64,
    /// Estimated bytes first touched: faults × 4 KiB.
    pub touched_bytes: u64,
    /// Of those, touched by V8 itself: the garbage collector copying survivors to older pages,
    /// and generated code bump-allocating in young-generation pages. Heap growth whose stack
    /// does not say what keeps it.
    pub v8_own_touched_bytes: u64,
    /// Stacks seen.
    pub stacks: usize,
}

impl FaultBooks {
    /// Follows the kernel's `FAULTS_BY_STACK` map, sampled every `period` faults.
    pub fn new(map: PerCpuHashMap<MapData, i64, u64>, period: u64) -> Self {
        Self { map, period, series: HashMap::new(), faults: 0 }
    }

    /// Reads the counts and adds a point at `t` to each stack's series.
    pub fn sample(&mut self, t: f64) {
        let mut total = 0;
        for (stack_id, per_cpu) in self.map.iter().flatten() {
            let faults: u64 = per_cpu.iter().sum();
            total += faults;
            self.series.entry(stack_id).or_default().push(t, (faults * PAGE_BYTES) as f64);
        }
        self.faults = total;
    }

    /// The report, given the bytes the GC touched (from the verdict's classification).
    pub fn report(&self, v8_own_touched_bytes: u64) -> FaultReport {
        FaultReport {
            period: self.period,
            faults: self.faults,
            touched_bytes: self.faults * PAGE_BYTES,
            v8_own_touched_bytes,
            stacks: self.series.len(),
        }
    }
}
