//! External memory: ArrayBuffer and Buffer backing stores, allocated and freed through
//! `node::NodeArrayBufferAllocator`. The kernel half (`probes/external.rs`) tracks backing
//! stores from `Allocate`/`AllocateUninitialized` to `Free`, by allocation stack, and records
//! the allocator objects it sees so userspace can read their byte counters.
//!
//! Which allocations are followed is set by userspace in the `EXT_CONFIG` array: every one
//! (the opening burst, `--alloc-stacks`), or a sample after the burst. A sampled allocation of
//! `s` bytes is followed with probability `p = min(1, max(1 / every, s / rate))` and counts as
//! `s / p` bytes, an unbiased estimate of the bytes allocated and outstanding: one in `every`
//! Buffers whatever their size (a slow leak of small Buffers beside churn of large ones still
//! gets samples), and large ones in proportion to their bytes.

/// Allocator objects remembered (one per isolate: the main thread and each worker).
pub const MAX_ALLOCATORS: u32 = 256;

/// Index in `EXT_CONFIG` of `every` (0 or 1: every allocation is followed).
pub const CONFIG_EVERY: u32 = 0;
/// Index in `EXT_CONFIG` of `rate` (bytes; 0: sampled by count alone).
pub const CONFIG_RATE: u32 = 1;
/// Slots in `EXT_CONFIG`.
pub const CONFIG_SLOTS: u32 = 2;
/// Largest `every` and `rate` accepted (keeps the sampling arithmetic within 64 bits).
pub const MAX_SAMPLING: u64 = 1 << 31;

/// The weight (bytes it counts for) of an allocation of `size` bytes given a uniform 32-bit
/// `draw`, or `None` when it is not followed: see the module's sampling rule.
#[inline(always)]
pub fn sampled(size: u64, every: u64, rate: u64, draw: u32) -> Option<u64> {
    let every = if every > MAX_SAMPLING { MAX_SAMPLING } else { every };
    let rate = if rate > MAX_SAMPLING { MAX_SAMPLING } else { rate };
    if every <= 1 || (rate != 0 && size >= rate) {
        return Some(size);
    }
    let draw = draw as u64;
    // By count: probability 1 / every, a weight of size * every.
    let by_count = draw * every < 1 << 32;
    // By bytes: probability size / rate, a weight of rate; the larger probability wins.
    let by_bytes = rate != 0 && size * every > rate;
    match by_bytes {
        true => (draw * rate < size << 32).then_some(rate),
        // (No 128-bit arithmetic in BPF: a size past 4 GiB saturates.)
        false => by_count.then_some(if size >> 32 != 0 { u64::MAX } else { size * every }),
    }
}
