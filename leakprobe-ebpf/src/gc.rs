//! GC pause events: what the `gc` kernel programs send to userspace.
//!
//! The kernel half (`probes/gc.rs`) puts a uprobe and a uretprobe on V8's
//! `v8::internal::Heap::PerformGarbageCollection(GarbageCollector, GarbageCollectionReason, ...)`,
//! which runs once per stop-the-world pause of every collector, on the thread that owns the
//! isolate. The pause is the time between entry and return, measured in the kernel.

use crate::user_pod;

/// One finished stop-the-world GC pause.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcEvent {
    /// [`crate::EventKind::Gc`].
    pub kind: u32,
    /// Padding (zero).
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` at entry (CLOCK_MONOTONIC).
    pub start_ns: u64,
    /// Pause length in nanoseconds.
    pub duration_ns: u64,
    /// Process id (tgid) of the target.
    pub pid: u32,
    /// Thread that ran the pause: the main thread or a worker_threads isolate's thread.
    pub tid: u32,
    /// V8's `GarbageCollector` enum value: see [`collector`].
    pub collector: u32,
    /// V8's `GarbageCollectionReason` enum value (values are stable across versions; V8 persists
    /// them to UMA histograms).
    pub reason: u32,
    /// The user stack that entered the GC (in the shared stack map), or `NO_STACK`.
    pub stack_id: i64,
}

/// A pause that has started and not yet returned, keyed by thread id in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcInflight {
    /// `bpf_ktime_get_ns()` at entry.
    pub start_ns: u64,
    /// V8's `GarbageCollector` enum value.
    pub collector: u32,
    /// V8's `GarbageCollectionReason` enum value.
    pub reason: u32,
    /// The user stack that entered the GC.
    pub stack_id: i64,
}

user_pod!(GcEvent, GcInflight);

/// Values of V8's `enum class GarbageCollector` (the same in node 18 to 24).
pub mod collector {
    /// Young generation, copying (`Scavenge` in `--trace-gc`).
    pub const SCAVENGER: u32 = 0;
    /// Full GC (`Mark-Compact` in `--trace-gc`).
    pub const MARK_COMPACTOR: u32 = 1;
    /// Young generation, mark-sweep (`Minor Mark-Sweep`; `MINOR_MARK_COMPACTOR` in older V8).
    pub const MINOR_MARK_SWEEPER: u32 = 2;
}

/// Most threads that can be inside a GC pause at once before `GcInflightFull` drops start.
pub const MAX_INFLIGHT: u32 = 4096;
