//! GC pauses: entry and return of `v8::internal::Heap::PerformGarbageCollection`.
//!
//! On x86-64 the arguments are (this, collector, reason, ...): `collector` is the second
//! argument and `reason` the third in every node from 18 to 24, including GCC's `.constprop`
//! clones of the function, which drop only trailing arguments.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, uprobe, uretprobe},
    maps::HashMap,
    programs::{ProbeContext, RetProbeContext},
};
use leakprobe_ebpf::{
    drops::DropReason,
    gc::{GcEvent, GcInflight, MAX_INFLIGHT},
    EventKind,
};

use aya_log_ebpf::{debug, warn};

use crate::maps::{count_drop, emit, GROW_AS_USED};
use crate::stacks::user_stack;

/// Pauses in flight, by thread id.
#[map]
static GC_INFLIGHT: HashMap<u32, GcInflight> = HashMap::with_max_entries(MAX_INFLIGHT, GROW_AS_USED);

/// Entry of `Heap::PerformGarbageCollection`: remember when and which collector.
#[uprobe]
pub fn gc_start(ctx: ProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let inflight = GcInflight {
        start_ns: unsafe { bpf_ktime_get_ns() },
        collector: ctx.arg::<u64>(1).unwrap_or(u64::MAX) as u32,
        reason: ctx.arg::<u64>(2).unwrap_or(u64::MAX) as u32,
        stack_id: user_stack(&ctx),
    };
    if GC_INFLIGHT.insert(&tid, &inflight, 0).is_err() {
        warn!(&ctx, "gc_start: in-flight map full (thread {}): pause lost", tid);
        count_drop(DropReason::GcInflightFull);
    }
    0
}

/// Return of `Heap::PerformGarbageCollection`: the pause is over; send it to userspace.
#[uretprobe]
pub fn gc_end(ctx: RetProbeContext) -> u32 {
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // A return without an entry is a pause that began before we attached: skip it.
    let Some(inflight) = (unsafe { GC_INFLIGHT.get(&tid) }).copied() else {
        return 0;
    };
    let _ = GC_INFLIGHT.remove(&tid);
    let duration_ns = now.saturating_sub(inflight.start_ns);
    debug!(
        &ctx,
        "gc_end: thread {} collector {} reason {}: {} ns",
        tid,
        inflight.collector,
        inflight.reason,
        duration_ns
    );
    emit(GcEvent {
        kind: EventKind::Gc as u32,
        _pad: 0,
        start_ns: inflight.start_ns,
        duration_ns,
        pid: (pid_tgid >> 32) as u32,
        tid,
        collector: inflight.collector,
        reason: inflight.reason,
        stack_id: inflight.stack_id,
    });
    0
}
