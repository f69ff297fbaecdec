//! Sampled page faults of the target (see `leakprobe_ebpf::faults`), by user stack.
//!
//! The event is opened per CPU for every process (a per-thread event would miss threads the
//! target starts later); the program keeps the target's faults only.

use aya_ebpf::{
    macros::{map, perf_event},
    maps::PerCpuHashMap,
    programs::PerfEventContext,
};
use aya_log_ebpf::warn;
use leakprobe_ebpf::{alloc::MAX_STACK_TOTALS, drops::DropReason};

use crate::{
    maps::{count_drop, target_thread},
    stacks::user_stack,
};

/// Faults (the sum of the samples' periods) by stack id.
#[map]
static FAULTS_BY_STACK: PerCpuHashMap<i64, u64> = PerCpuHashMap::with_max_entries(MAX_STACK_TOTALS, 0);

/// One sampled page fault on this CPU.
#[perf_event]
pub fn page_faults(ctx: PerfEventContext) -> u32 {
    if target_thread().is_none() {
        return 0;
    }
    // SAFETY: the context the kernel passed to the program.
    let period = unsafe { (*ctx.ctx).sample_period };
    let stack_id = user_stack(&ctx);
    match FAULTS_BY_STACK.get_ptr_mut(&stack_id) {
        // SAFETY: this CPU's slot of the value, valid while the program runs.
        Some(faults) => unsafe { *faults += period },
        None => {
            if FAULTS_BY_STACK.insert(&stack_id, &period, 0).is_err() {
                warn!(&ctx, "page_faults: per-stack map full: {} faults not attributed", period);
                count_drop(DropReason::StackTotalsFull);
            }
        }
    }
    0
}
