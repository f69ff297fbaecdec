//! Native memory, userspace half: libc allocations by stack, estimated from byte sampling.
//!
//! The kernel tracks an allocation of `s` bytes with probability `min(1, s / rate)` and counts
//! it as `max(s, rate)` bytes, so totals here are unbiased estimates. Allocations made before
//! attach are not known: `outstanding_bytes` is what was allocated since attach and not freed.

use aya::maps::{Array, MapData, PerCpuHashMap};
use leakprobe_ebpf::{
    alloc::StackTotals,
    native::{CONFIG_SAMPLE_RATE, MAX_SAMPLE_RATE},
};
use serde::Serialize;

use crate::{books::suspect::Category, books::tracker::Tracker, memory::alloc::Tracked};

/// Sampling rate used when the user does not choose one (bytes).
pub const DEFAULT_SAMPLE_RATE: u64 = 512 * 1024;

/// Native memory as sampled during a session.
pub struct NativeState {
    tracked: Tracked,
    rate: u64,
    // The programs reference the config map: it must stay open for the whole session.
    _config: Array<MapData, u64>,
}

/// `report.native` (null without `--native`).
#[derive(Debug, Serialize)]
pub struct NativeReport {
    /// Sampling rate in bytes.
    pub sample_rate_bytes: u64,
    /// Estimated bytes allocated since attach.
    pub allocated_bytes: u64,
    /// Estimated bytes of those freed again.
    pub freed_bytes: u64,
    /// Estimated bytes allocated since attach and still held.
    pub outstanding_bytes: u64,
    /// Sampled allocations (the estimate's sample size).
    pub sampled_allocations: u64,
}

impl NativeState {
    /// Writes the sampling rate into the kernel's config and follows the per-stack totals.
    pub fn new(
        mut config: Array<MapData, u64>,
        by_stack: PerCpuHashMap<MapData, i64, StackTotals>,
        rate: u64,
    ) -> anyhow::Result<Self> {
        let rate = rate.clamp(1, MAX_SAMPLE_RATE);
        config.set(CONFIG_SAMPLE_RATE, rate, 0)?;
        Ok(Self { tracked: Tracked::new(Category::Native, by_stack), rate, _config: config })
    }

    /// Takes one sample into `suspects`.
    pub fn sample(&mut self, t: f64, suspects: &mut Tracker) {
        self.tracked.sample(t, suspects);
    }

    /// Estimated bytes allocated since attach and still held.
    pub fn bytes(&self) -> u64 {
        let t = &self.tracked.since_attach;
        t.alloc_bytes.saturating_sub(t.free_bytes)
    }

    /// The report section.
    pub fn report(&self) -> NativeReport {
        let t = &self.tracked.since_attach;
        NativeReport {
            sample_rate_bytes: self.rate,
            allocated_bytes: t.alloc_bytes,
            freed_bytes: t.free_bytes,
            outstanding_bytes: self.bytes(),
            sampled_allocations: t.allocs,
        }
    }
}
