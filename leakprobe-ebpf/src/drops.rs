//! Counters of events the kernel side could not record.
//!
//! Nothing is lost silently: each place a kernel program gives up on an event (a full ring buffer,
//! a full map, a stack it could not capture) adds one to the per-CPU slot of its reason in the
//! `DROPS` array, which userspace sums and shows in the live view, `report.json` and the metrics.

/// Why an event was lost. The discriminant is the index in the `DROPS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// `bpf_ringbuf_reserve` failed: userspace did not drain the event ring buffer in time.
    RingbufFull = 0,
    /// The map of GC pauses in flight (one entry per thread inside a GC) was full.
    GcInflightFull = 1,
    /// An allocation's stack could not be kept (the stack map was full, or the registers
    /// could not be read); the allocation is still counted, under the stack `[stack lost]`.
    StackLost = 2,
    /// A per-thread map (a call between entry and return) was full: that call is not tracked.
    PendingFull = 3,
    /// The map of live allocations was full: allocation counted nowhere, its free unmatched.
    LiveFull = 4,
    /// The per-stack totals map was full: allocation tracked but not attributed to a stack.
    StackTotalsFull = 5,
    /// More ArrayBuffer allocator objects (isolates) than the map holds: external bytes of the
    /// extra isolates are missing from `external.bytes`.
    AllocatorsFull = 6,
    /// The map of thread-pool work queued but not started was full: stacks taken while that
    /// work runs lack the stack that queued it.
    QueuedFull = 7,
}

impl DropReason {
    /// Every reason, in index order.
    pub const ALL: [DropReason; 8] = [
        DropReason::RingbufFull,
        DropReason::GcInflightFull,
        DropReason::StackLost,
        DropReason::PendingFull,
        DropReason::LiveFull,
        DropReason::StackTotalsFull,
        DropReason::AllocatorsFull,
        DropReason::QueuedFull,
    ];
    /// Number of slots in the `DROPS` array.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// The name used in `report.json` (`drops.<name>`) and in metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::RingbufFull => "ringbuf_full",
            DropReason::GcInflightFull => "gc_inflight_full",
            DropReason::StackLost => "stack_lost",
            DropReason::PendingFull => "pending_full",
            DropReason::LiveFull => "live_full",
            DropReason::StackTotalsFull => "stack_totals_full",
            DropReason::AllocatorsFull => "allocators_full",
            DropReason::QueuedFull => "queued_full",
        }
    }
}
