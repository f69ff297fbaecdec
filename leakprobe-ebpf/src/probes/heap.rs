//! V8 heap pages: `v8::internal::MemoryAllocator` and `Heap::CommittedMemory`.
//!
//! x86-64 arguments: `AllocatePage(this, mode, space, exec)` → page;
//! `AllocateLargePage(this, space, object_size, exec)` → page;
//! `AllocateAlignedMemory(this, chunk_size, ...)`; `Free(this, mode, chunk)`;
//! `PartialFreeMemory(this, chunk, start_free, bytes_to_free, new_area_end)`;
//! `Heap::CommittedMemory(this)` → bytes, the young generation's plus what it calls
//! `Heap::CommittedOldGenerationMemory(this)` for; `Isolate::GetHeapStatistics(this, stats)`.

use aya_ebpf::{
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, PerCpuHashMap},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext as _,
};
use leakprobe_ebpf::{
    alloc::{LiveAlloc, Pending, StackTotals, MAX_LIVE, MAX_PENDING, MAX_STACK_TOTALS},
    drops::DropReason,
    heap::{op, HeapEvent, MAX_SUMMED, PT_REGS_RAX, PT_REGS_WORDS},
    EventKind,
};

use super::track::Tracker;
use crate::{
    maps::{count_drop, emit, GROW_AS_USED},
    stacks::sampled_user_stack,
};

/// Large-object pages by allocation stack (one JS object per page: a big array or string).
#[map]
static HEAP_LO_PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(MAX_PENDING, GROW_AS_USED);
#[map]
static HEAP_LO_LIVE: HashMap<u64, LiveAlloc> = HashMap::with_max_entries(MAX_LIVE, GROW_AS_USED);
#[map]
static HEAP_LO_BY_STACK: PerCpuHashMap<i64, StackTotals> =
    PerCpuHashMap::with_max_entries(MAX_STACK_TOTALS, GROW_AS_USED);

/// Slow-path JS allocations (one per exhausted linear allocation buffer), by stack.
#[map]
static HEAP_SAMPLES: PerCpuHashMap<i64, u64> =
    PerCpuHashMap::with_max_entries(MAX_STACK_TOTALS, GROW_AS_USED);

static LARGE_OBJECTS: Tracker =
    Tracker { pending: &HEAP_LO_PENDING, live: &HEAP_LO_LIVE, by_stack: &HEAP_LO_BY_STACK };

/// Threads inside `Isolate::GetHeapStatistics`: readings there are the embedder asking (as
/// `process.memoryUsage()` does), not V8's own GC bookkeeping, and are skipped.
#[map]
static HEAP_IN_STATS: HashMap<u32, u8> = HashMap::with_max_entries(1024, GROW_AS_USED);

#[inline(always)]
fn send(op: u32, ptr: u64, size: u64) {
    emit(HeapEvent {
        kind: EventKind::Heap as u32,
        op,
        tid: bpf_get_current_pid_tgid() as u32,
        _pad: 0,
        ptr,
        size,
    });
}

/// Return of `MemoryAllocator::AllocatePage`.
#[uretprobe]
pub fn heap_page_ret(ctx: RetProbeContext) -> u32 {
    let page: u64 = ctx.ret();
    if page != 0 {
        send(op::PAGE_ALLOC, page, 0);
    }
    0
}

/// Entry of `MemoryAllocator::AllocateAlignedMemory`: the chunk size of a large page.
#[uprobe]
pub fn heap_aligned(ctx: ProbeContext) -> u32 {
    send(op::ALIGNED_SIZE, 0, ctx.arg(1).unwrap_or(0));
    0
}

/// Entry of `MemoryAllocator::AllocateLargePage`: the object's size and allocation stack.
#[uprobe]
pub fn heap_large(ctx: ProbeContext) -> u32 {
    LARGE_OBJECTS.enter(&ctx, ctx.arg(2).unwrap_or(0));
    0
}

/// Return of `MemoryAllocator::AllocateLargePage`.
#[uretprobe]
pub fn heap_large_ret(ctx: RetProbeContext) -> u32 {
    let page: u64 = ctx.ret();
    if page != 0 {
        send(op::LARGE_ALLOC, page, 0);
    }
    LARGE_OBJECTS.exit(page);
    0
}

/// Entry of `MemoryAllocator::Free`.
#[uprobe]
pub fn heap_free(ctx: ProbeContext) -> u32 {
    let page = ctx.arg(2).unwrap_or(0);
    send(op::FREE, page, 0);
    let _ = LARGE_OBJECTS.free(page);
    0
}

/// Entry of `MemoryAllocator::PartialFreeMemory`.
#[uprobe]
pub fn heap_partial_free(ctx: ProbeContext) -> u32 {
    send(op::PARTIAL_FREE, ctx.arg(1).unwrap_or(0), ctx.arg(3).unwrap_or(0));
    0
}

/// The instruction after `Heap::CommittedMemory`'s call to `CommittedOldGenerationMemory`: rax
/// holds the old generation's committed bytes, and the registers the attach cookie names
/// (`heap::summed_registers_cookie`) the young generation's parts, which the code adds to it.
/// V8's whole reading, split, in one trap (the return probe below is the fallback where this
/// site was not found).
#[uprobe]
pub fn heap_committed_split(ctx: ProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    if unsafe { HEAP_IN_STATS.get(&tid) }.is_some() {
        return 0;
    }
    // The registers as saved at the trap, as words in `pt_regs` order.
    // SAFETY: a uprobe's context points at the trapped thread's saved registers.
    let Ok(words) = (unsafe { bpf_probe_read_kernel(ctx.regs as *const [u64; PT_REGS_WORDS]) }) else {
        return 0;
    };
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let Some(&old) = words.get(PT_REGS_RAX) else { return 0 };
    let mut young = 0u64;
    for i in 0..MAX_SUMMED {
        let word = ((cookie >> (8 * i)) & 0xff) as usize;
        if word == 0 {
            break;
        }
        let Some(&value) = words.get(word - 1) else { return 0 };
        young = young.saturating_add(value);
    }
    send(op::READING, old, old.saturating_add(young));
    0
}

/// Return of `Heap::CommittedMemory`: an exact reading of the committed heap, not split.
#[uretprobe]
pub fn heap_committed_ret(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    if unsafe { HEAP_IN_STATS.get(&tid) }.is_none() {
        send(op::READING, 0, ctx.ret());
    }
    0
}

/// Entry of `Isolate::GetHeapStatistics`.
#[uprobe]
pub fn heap_stats_enter(_ctx: ProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    if HEAP_IN_STATS.insert(&tid, &1, 0).is_err() {
        count_drop(DropReason::PendingFull);
    }
    0
}

/// Return of `Isolate::GetHeapStatistics`.
#[uretprobe]
pub fn heap_stats_exit(_ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = HEAP_IN_STATS.remove(&tid);
    0
}

/// Entry of `Runtime_AllocateInYoungGeneration` / `Runtime_AllocateInOldGeneration`: JIT code
/// ran out of its linear allocation buffer, about once per buffer's worth of bytes, so counting
/// these by stack samples where the JS heap churn comes from.
#[uprobe]
pub fn heap_sample(ctx: ProbeContext) -> u32 {
    let stack_id = sampled_user_stack(&ctx);
    match HEAP_SAMPLES.get_ptr_mut(&stack_id) {
        // SAFETY: this CPU's slot of the value, valid while the program runs.
        Some(count) => unsafe { *count += 1 },
        None => {
            if HEAP_SAMPLES.insert(&stack_id, &1, 0).is_err() {
                count_drop(DropReason::StackTotalsFull);
            }
        }
    }
    0
}
