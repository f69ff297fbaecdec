//! Sampled page faults of the target (see `leakprobe_ebpf::faults`), with their stacks.
//!
//! The event is opened per CPU for every process (a per-thread event would miss threads the
//! target starts later); the program keeps the target's faults only, and sends each sample
//! (its stack and address) to userspace, which tells V8's pages apart by their headers.

use aya_ebpf::{macros::perf_event, programs::PerfEventContext};
use aya_log_ebpf::trace;
use leakprobe_ebpf::{faults::FaultEvent, EventKind};

use crate::{
    maps::{emit, target_thread},
    stacks::user_stack,
};

/// One sampled page fault on this CPU.
#[perf_event]
pub fn page_faults(ctx: PerfEventContext) -> u32 {
    let Some(tid) = target_thread() else { return 0 };
    // SAFETY: the context the kernel passed to the program.
    let (period, addr) = unsafe { ((*ctx.ctx).sample_period, (*ctx.ctx).addr) };
    let stack_id = user_stack(&ctx);
    trace!(&ctx, "page_faults: thread {} at {:x}, stack {}", tid, addr, stack_id);
    emit(FaultEvent { kind: EventKind::Fault as u32, tid, stack_id, addr, period });
    0
}
