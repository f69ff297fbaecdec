//! External memory: `node::NodeArrayBufferAllocator::{Allocate, AllocateUninitialized, Free}`.
//!
//! x86-64 arguments: `Allocate(this, size)`, `AllocateUninitialized(this, size)`,
//! `Free(this, data, length)`. One entry/return program pair serves both allocate functions.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, PerCpuHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use leakprobe_ebpf::{
    alloc::{LiveAlloc, Pending, StackTotals, MAX_LIVE, MAX_PENDING, MAX_STACK_TOTALS},
    external::{sampled, CONFIG_EVERY, CONFIG_RATE, CONFIG_SLOTS, MAX_ALLOCATORS},
};

use super::track::Tracker;
use crate::maps::{count_drop, GROW_AS_USED};
use leakprobe_ebpf::drops::DropReason;

/// Which allocations are followed (`leakprobe_ebpf::external`): set by userspace.
#[map]
static EXT_CONFIG: Array<u64> = Array::with_max_entries(CONFIG_SLOTS, 0);
/// Threads inside an allocate call (the native family skips the mallocs made there).
#[map]
pub(crate) static EXT_PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(MAX_PENDING, GROW_AS_USED);
#[map]
static EXT_LIVE: HashMap<u64, LiveAlloc> = HashMap::with_max_entries(MAX_LIVE, GROW_AS_USED);
#[map]
static EXT_BY_STACK: PerCpuHashMap<i64, StackTotals> =
    PerCpuHashMap::with_max_entries(MAX_STACK_TOTALS, GROW_AS_USED);
/// Allocator objects seen (`this`), with the last time each was used.
#[map]
static EXT_ALLOCATORS: HashMap<u64, u64> = HashMap::with_max_entries(MAX_ALLOCATORS, GROW_AS_USED);

static TRACKER: Tracker = Tracker { pending: &EXT_PENDING, live: &EXT_LIVE, by_stack: &EXT_BY_STACK };

/// Entry of `Allocate` / `AllocateUninitialized`.
#[uprobe]
pub fn ext_alloc(ctx: ProbeContext) -> u32 {
    let this: u64 = ctx.arg(0).unwrap_or(0);
    if this != 0 {
        if EXT_ALLOCATORS.insert(&this, &unsafe { bpf_ktime_get_ns() }, 0).is_err() {
            count_drop(DropReason::AllocatorsFull);
        }
    }
    let size: u64 = ctx.arg(1).unwrap_or(0);
    let every = EXT_CONFIG.get(CONFIG_EVERY).copied().unwrap_or(0);
    let rate = EXT_CONFIG.get(CONFIG_RATE).copied().unwrap_or(0);
    match sampled(size, every, rate, unsafe { bpf_get_prandom_u32() }) {
        Some(weight) => TRACKER.enter(&ctx, weight),
        // Still marked as inside the call: the native family skips the mallocs made there.
        None => TRACKER.enter_unfollowed(),
    }
    0
}

/// Return of `Allocate` / `AllocateUninitialized`: the backing store's address.
#[uretprobe]
pub fn ext_alloc_ret(ctx: RetProbeContext) -> u32 {
    TRACKER.exit(ctx.ret::<u64>());
    0
}

/// Entry of `Free(data, length)`.
#[uprobe]
pub fn ext_free(ctx: ProbeContext) -> u32 {
    if let Some(data) = ctx.arg::<u64>(1) {
        let _ = TRACKER.free(data);
    }
    0
}
