//! Page faults: growth attributed at the cost of the growth, not of the allocation rate.
//!
//! Memory a process keeps growing into is memory it touches for the first time, and each first
//! touch of a page is a page fault. A perf software event (`PERF_COUNT_SW_PAGE_FAULTS`, one per
//! CPU, sampled one fault in [`DEFAULT_PERIOD`]) runs the kernel half (`probes/faults.rs`), which
//! keeps the target's faults by user stack: Buffers filled by JavaScript, native memory written
//! by C++ or zlib (on pool threads, joined to the JavaScript that queued the work), V8 pages.
//! Steady churn reuses memory it already touched and stops faulting; a leak keeps faulting.

/// Faults per sample by default: each sample stands for this many faults.
pub const DEFAULT_PERIOD: u64 = 8;

/// Bytes one fault first touches: a base page (the estimate of growth per fault).
pub const PAGE_BYTES: u64 = 4096;
