//! Native memory: libc `malloc`, `calloc`, `realloc`, `posix_memalign`, `aligned_alloc`
//! (and its alias `memalign`), `free`; sampled by bytes (see `leakprobe_ebpf::native`).
//!
//! Mallocs made inside `NodeArrayBufferAllocator::Allocate` are Buffer backing stores, which
//! the external family already counts: they are skipped here, so the RSS split counts them once.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, PerCpuHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use leakprobe_ebpf::{
    alloc::{LiveAlloc, Pending, StackTotals, MAX_LIVE, MAX_PENDING, MAX_STACK_TOTALS},
    native::{CONFIG_SAMPLE_RATE, CONFIG_SLOTS, MAX_SAMPLE_RATE},
};

use super::{external::EXT_PENDING, track::Tracker};
use crate::maps::{count_drop, GROW_AS_USED};
use leakprobe_ebpf::drops::DropReason;

#[map]
static NATIVE_CONFIG: Array<u64> = Array::with_max_entries(CONFIG_SLOTS, 0);
#[map]
static NATIVE_PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(MAX_PENDING, GROW_AS_USED);
#[map]
static NATIVE_LIVE: HashMap<u64, LiveAlloc> = HashMap::with_max_entries(MAX_LIVE, GROW_AS_USED);
#[map]
static NATIVE_BY_STACK: PerCpuHashMap<i64, StackTotals> =
    PerCpuHashMap::with_max_entries(MAX_STACK_TOTALS, GROW_AS_USED);
/// `posix_memalign`'s out-pointer, by thread, from entry to return.
#[map]
static NATIVE_MEMPTR: HashMap<u32, u64> = HashMap::with_max_entries(MAX_PENDING, GROW_AS_USED);

static NATIVE: Tracker = Tracker { pending: &NATIVE_PENDING, live: &NATIVE_LIVE, by_stack: &NATIVE_BY_STACK };

/// The bytes an allocation of `size` counts for if it is sampled, or `None` if it is not.
#[inline(always)]
fn sampled(size: u64) -> Option<u64> {
    let rate = NATIVE_CONFIG.get(CONFIG_SAMPLE_RATE).copied().unwrap_or(1).clamp(1, MAX_SAMPLE_RATE);
    if size >= rate {
        return Some(size);
    }
    // Probability size / rate: a uniform 32-bit draw below size * 2^32 / rate.
    let draw = unsafe { bpf_get_prandom_u32() } as u64;
    (draw * rate < size << 32).then_some(rate)
}

#[inline(always)]
fn enter(ctx: &ProbeContext, size: u64) {
    let tid = bpf_get_current_pid_tgid() as u32;
    if unsafe { EXT_PENDING.get(&tid) }.is_some() {
        return;
    }
    if let Some(weight) = sampled(size) {
        NATIVE.enter(ctx, weight);
    }
}

/// Entry of `malloc(size)`.
#[uprobe]
pub fn native_malloc(ctx: ProbeContext) -> u32 {
    enter(&ctx, ctx.arg(0).unwrap_or(0));
    0
}

/// Entry of `calloc(nmemb, size)`.
#[uprobe]
pub fn native_calloc(ctx: ProbeContext) -> u32 {
    let n: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(1).unwrap_or(0);
    // Overflow-safe without 128-bit arithmetic (which BPF lacks): calloc fails on overflow anyway.
    let bytes = if n > u32::MAX as u64 || size > u32::MAX as u64 { u64::MAX } else { n * size };
    enter(&ctx, bytes);
    0
}

/// Entry of `realloc(ptr, size)`: the old block goes, a new one comes.
#[uprobe]
pub fn native_realloc(ctx: ProbeContext) -> u32 {
    let old: u64 = ctx.arg(0).unwrap_or(0);
    if old != 0 {
        let _ = NATIVE.free(old);
    }
    enter(&ctx, ctx.arg(1).unwrap_or(0));
    0
}

/// Entry of `aligned_alloc(alignment, size)` / `memalign(alignment, size)`.
#[uprobe]
pub fn native_aligned_alloc(ctx: ProbeContext) -> u32 {
    enter(&ctx, ctx.arg(1).unwrap_or(0));
    0
}

/// Entry of `posix_memalign(memptr, alignment, size)`.
#[uprobe]
pub fn native_posix_memalign(ctx: ProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    if NATIVE_MEMPTR.insert(&tid, &ctx.arg::<u64>(0).unwrap_or(0), 0).is_err() {
        count_drop(DropReason::PendingFull);
    }
    enter(&ctx, ctx.arg(2).unwrap_or(0));
    0
}

/// Return of `malloc`, `calloc`, `realloc`, `aligned_alloc`: the block's address.
#[uretprobe]
pub fn native_alloc_ret(ctx: RetProbeContext) -> u32 {
    NATIVE.exit(ctx.ret());
    0
}

/// Return of `posix_memalign`: 0 on success, the block's address in `*memptr`.
#[uretprobe]
pub fn native_posix_memalign_ret(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let memptr = unsafe { NATIVE_MEMPTR.get(&tid) }.copied().unwrap_or(0);
    let _ = NATIVE_MEMPTR.remove(&tid);
    let ok = ctx.ret::<u64>() as u32 == 0 && memptr != 0;
    let block = if ok { unsafe { bpf_probe_read_user(memptr as *const u64) }.unwrap_or(0) } else { 0 };
    NATIVE.exit(block);
    0
}

/// Entry of `free(ptr)`.
#[uprobe]
pub fn native_free(ctx: ProbeContext) -> u32 {
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    if ptr != 0 {
        let _ = NATIVE.free(ptr);
    }
    0
}
