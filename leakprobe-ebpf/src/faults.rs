//! Page faults: growth attributed at the cost of the growth, not of the allocation rate.
//!
//! Memory a process keeps growing into is memory it touches for the first time, and each first
//! touch of a page is a page fault. A perf software event (`PERF_COUNT_SW_PAGE_FAULTS`, one per
//! CPU, sampled one fault in [`DEFAULT_PERIOD`]) runs the kernel half (`probes/faults.rs`), which
//! sends each of the target's sampled faults with its user stack and the faulting address:
//! Buffers filled by JavaScript, native memory written by C++ or zlib (on pool threads, joined
//! to the JavaScript that queued the work), V8 pages (userspace tells the young generation's
//! pages, churn, from the old generation's by their headers). Steady churn reuses memory it
//! already touched and stops faulting; a leak keeps faulting.

use crate::user_pod;

/// Faults per sample by default: each sample stands for this many faults.
pub const DEFAULT_PERIOD: u64 = 8;

/// Bytes one fault first touches: a base page (the estimate of growth per fault).
pub const PAGE_BYTES: u64 = 4096;

/// One sampled page fault of the target.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultEvent {
    /// [`crate::EventKind::Fault`].
    pub kind: u32,
    /// Faulting thread.
    pub tid: u32,
    /// User stack id, or `alloc::NO_STACK`.
    pub stack_id: i64,
    /// The faulting address.
    pub addr: u64,
    /// Faults this sample stands for (the event's sample period).
    pub period: u64,
}

user_pod!(FaultEvent);
