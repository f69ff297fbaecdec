//! V8 heap, userspace half: committed heap bytes from V8's own readings plus the pages
//! allocated and freed since the latest one, and the post-GC baseline.
//!
//! Readings come from `Heap::CommittedMemory()`, which V8 calls at every GC; until the first
//! GC after attach the committed heap is unknown (null). The estimate is the main thread's:
//! with worker_threads, the main isolate's heap plus pages other isolates allocated or freed
//! since its last GC. Each worker thread's own readings are kept apart ([`WorkerHeap`]): its
//! isolate's old generation after each of its mark-compacts, which the verdict judges as it
//! judges the main heap's troughs.

use std::collections::{BTreeMap, HashMap};

use aya::maps::{MapData, PerCpuHashMap};
use leakprobe_ebpf::{
    alloc::StackTotals,
    heap::{op, HeapEvent},
};
use serde::Serialize;

use crate::{
    books::series::{Forget, Series},
    books::suspect::Category,
    books::tracker::Tracker,
    memory::alloc::Tracked,
    memory::gc::GcKind,
    stacks::frame::Frame,
};

/// V8's regular page size in node 18–24 (large pages carry their own size).
pub const REGULAR_PAGE: u64 = 256 * 1024;

/// One worker thread's isolate, from the readings V8 takes on that thread.
#[derive(Debug, Default)]
pub struct WorkerHeap {
    awaiting_baseline: bool,
    /// Its old generation (committed; all of it where the reading was not split) at the first
    /// reading after each of its mark-compacts.
    pub baseline: Series,
    /// Its latest reading (committed, young generation included).
    pub latest: Option<u64>,
    /// The latest page it allocated: its header names the isolate's heap.
    pub page: Option<u64>,
}

/// The books of one process's V8 heap.
pub struct HeapBooks {
    pid: u32,
    /// Size of each page allocated since attach, by pointer.
    pages: HashMap<u64, u64>,
    /// Latest `AllocateAlignedMemory` size per thread (the size of a large page in the making).
    aligned: HashMap<u32, u64>,
    reading: Option<u64>,
    /// The young generation's part of the latest reading, where its old generation was read too.
    young: Option<u64>,
    delta: i64,
    readings: u64,
    unknown_frees: u64,
    awaiting_baseline: bool,
    /// Committed heap right after each main-thread mark-compact.
    pub baseline: Series,
    /// Each thread other than the main one that ran a mark-compact (a worker's isolate), by
    /// thread id.
    pub workers: BTreeMap<u32, WorkerHeap>,
    /// The latest page each thread other than the main one allocated.
    pages_by_thread: HashMap<u32, u64>,
    /// Large objects by allocation stack (absent in unit tests).
    large_objects: Option<Tracked>,
    /// Slow-path allocation samples by stack (absent in unit tests).
    samples: Option<PerCpuHashMap<MapData, i64, u64>>,
}

/// Stacks listed in `allocation_samples`.
pub const TOP_SAMPLE_STACKS: usize = 10;

/// One stack of `report.heap.allocation_samples`.
#[derive(Debug, Serialize)]
pub struct SampledStack {
    /// Slow-path allocations seen from this stack.
    pub samples: u64,
    /// Its share of all samples.
    pub share: f64,
    /// The stack, innermost first.
    pub frames: Vec<Frame>,
}

/// `report.heap`.
#[derive(Debug, Serialize)]
pub struct HeapReport {
    /// Committed V8 heap now (what `heapTotal` reports); null before the first GC after attach.
    pub committed_bytes: Option<u64>,
    /// Of it, the young generation's at the latest reading (null where the reading could not be
    /// split: the `heap_committed_split` probe did not attach). The verdict reads the heap
    /// without it.
    pub young_generation_bytes: Option<u64>,
    /// V8's own readings taken so far (one or more per GC).
    pub readings: u64,
    /// Pages allocated since attach and not yet freed.
    pub pages_tracked: usize,
    /// Frees of pages allocated before attach (counted as one regular page each).
    pub unknown_frees: u64,
    /// Large objects allocated since attach: bytes, and of those the bytes freed again.
    pub large_object_bytes: u64,
    /// Of `large_object_bytes`, freed again.
    pub large_object_freed_bytes: u64,
    /// Where the JS heap churn comes from: slow-path allocations (one per exhausted linear
    /// allocation buffer, so roughly proportional to bytes allocated) by stack, top first.
    pub allocation_samples: Vec<SampledStack>,
    /// All slow-path allocation samples.
    pub allocation_samples_total: u64,
    /// Committed heap after each mark-compact: `[t_s, bytes]` pairs.
    pub post_gc_baseline: Vec<(f64, f64)>,
    /// Growth of that baseline (least squares), the V8 heap's leak signal.
    pub baseline_growth_bytes_per_s: f64,
    /// The heap census: every isolate's heap by type, what grew and who holds it (profiling
    /// sessions only; absent in agent mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub census: Option<crate::memory::census::CensusReport>,
    /// Reading the large arrays allocated since attach ([`crate::memory::containers`]; profiling
    /// sessions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containers: Option<crate::memory::containers::ContainersReport>,
}

impl Forget for HeapBooks {
    /// Forgets the readings after mark-compacts (the main isolate's and each worker's) before
    /// `t`.
    fn forget_before(&mut self, t: f64) {
        self.baseline.drop_before(t);
        for w in self.workers.values_mut() {
            w.baseline.drop_before(t);
        }
    }
}

impl HeapBooks {
    /// Empty books for process `pid`, following large objects by stack in `large_objects` and
    /// allocation samples in `samples`.
    pub fn new(
        pid: u32,
        large_objects: Option<PerCpuHashMap<MapData, i64, StackTotals>>,
        samples: Option<PerCpuHashMap<MapData, i64, u64>>,
    ) -> Self {
        Self {
            samples,
            large_objects: large_objects.map(|m| Tracked::new(Category::V8Heap, m)),
            pid,
            pages: HashMap::new(),
            aligned: HashMap::new(),
            reading: None,
            young: None,
            delta: 0,
            readings: 0,
            unknown_frees: 0,
            awaiting_baseline: false,
            baseline: Series::default(),
            workers: BTreeMap::new(),
            pages_by_thread: HashMap::new(),
        }
    }

    /// Applies one event, seen `t` seconds into the session.
    pub fn apply(&mut self, e: &HeapEvent, t: f64) {
        if matches!(e.op, op::PAGE_ALLOC | op::LARGE_ALLOC) && e.tid != self.pid {
            match self.workers.get_mut(&e.tid) {
                Some(w) => w.page = Some(e.ptr),
                None => {
                    self.pages_by_thread.insert(e.tid, e.ptr);
                }
            }
        }
        match e.op {
            op::PAGE_ALLOC => self.allocated(e.ptr, REGULAR_PAGE),
            op::ALIGNED_SIZE => {
                self.aligned.insert(e.tid, e.size);
            }
            op::LARGE_ALLOC => {
                let size = self.aligned.remove(&e.tid).unwrap_or(REGULAR_PAGE);
                self.allocated(e.ptr, size);
            }
            op::FREE => {
                let size = self.pages.remove(&e.ptr).unwrap_or_else(|| {
                    self.unknown_frees += 1;
                    REGULAR_PAGE
                });
                self.delta -= size as i64;
            }
            op::PARTIAL_FREE => {
                if let Some(size) = self.pages.get_mut(&e.ptr) {
                    *size = size.saturating_sub(e.size);
                }
                self.delta -= e.size as i64;
            }
            op::READING if e.tid == self.pid => {
                self.reading = Some(e.size);
                self.young = (e.ptr > 0).then(|| e.size.checked_sub(e.ptr)).flatten();
                self.delta = 0;
                self.readings += 1;
                if std::mem::take(&mut self.awaiting_baseline) {
                    self.baseline.push(t, e.size as f64);
                }
            }
            op::READING => {
                if let Some(w) = self.workers.get_mut(&e.tid) {
                    w.latest = Some(e.size);
                    if std::mem::take(&mut w.awaiting_baseline) {
                        let old = if e.ptr > 0 && e.ptr <= e.size { e.ptr } else { e.size };
                        w.baseline.push(t, old as f64);
                    }
                }
            }
            _ => {}
        }
    }

    fn allocated(&mut self, ptr: u64, size: u64) {
        self.pages.insert(ptr, size);
        self.delta += size as i64;
    }

    /// Notes a GC pause: after a main-thread mark-compact, the next reading is the baseline.
    pub fn on_gc(&mut self, kind: GcKind, tid: u32) {
        if kind != GcKind::MarkCompact {
            return;
        }
        match tid == self.pid {
            true => self.awaiting_baseline = true,
            false => {
                let page = self.pages_by_thread.remove(&tid);
                let w = self.workers.entry(tid).or_default();
                w.awaiting_baseline = true;
                w.page = w.page.or(page);
            }
        }
    }

    /// The worker threads' isolates, committed at each one's latest reading (absent without
    /// workers). The main isolate's reading plus the pages allocated since
    /// ([`Self::bytes`]) counts a worker's pages only until the main thread's next reading.
    pub fn worker_bytes(&self) -> Option<u64> {
        let readings: Vec<u64> = self.workers.values().filter_map(|w| w.latest).collect();
        (!readings.is_empty()).then(|| readings.iter().sum())
    }

    /// The pages allocated since attach and not freed: start → size.
    pub fn pages(&self) -> &HashMap<u64, u64> {
        &self.pages
    }

    /// Committed heap bytes now, once a reading exists.
    pub fn bytes(&self) -> Option<u64> {
        self.reading.map(|r| r.saturating_add_signed(self.delta))
    }

    /// Committed heap bytes now without the young generation (the old generation, code and large
    /// objects), once a reading gave both parts. V8 resizes its young generation under churn
    /// (its semi-spaces double up to `--max-semi-space-size`, tens of MiB): a step, not a leak.
    pub fn old_generation_bytes(&self) -> Option<u64> {
        Some(self.bytes()?.saturating_sub(self.young?))
    }

    /// Samples large objects by stack into `suspects`.
    pub fn sample(&mut self, t: f64, suspects: &mut Tracker) {
        if let Some(lo) = &mut self.large_objects {
            lo.sample(t, suspects);
        }
    }

    /// The most sampled stacks (at most [`TOP_SAMPLE_STACKS`]) with their sample counts, and
    /// the total of all samples.
    pub fn top_samples(&self) -> (Vec<(i64, u64)>, u64) {
        let mut by_stack: Vec<(i64, u64)> = self
            .samples
            .iter()
            .flat_map(|m| m.iter().flatten())
            .map(|(id, per_cpu)| (id, per_cpu.iter().sum()))
            .collect();
        let total: u64 = by_stack.iter().map(|(_, n)| n).sum();
        by_stack.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        by_stack.truncate(TOP_SAMPLE_STACKS);
        (by_stack, total)
    }

    /// The report section; `frames` names a stack id.
    pub fn report(&self, mut frames: impl FnMut(i64) -> Vec<Frame>) -> HeapReport {
        let (top, total) = self.top_samples();
        let allocation_samples = top
            .into_iter()
            .map(|(id, n)| SampledStack { samples: n, share: n as f64 / total as f64, frames: frames(id) })
            .collect();
        let lo = self.large_objects.as_ref().map(|l| l.since_attach).unwrap_or_default();
        HeapReport {
            allocation_samples,
            allocation_samples_total: total,
            large_object_bytes: lo.alloc_bytes,
            large_object_freed_bytes: lo.free_bytes,
            committed_bytes: self.bytes(),
            young_generation_bytes: self.young,
            readings: self.readings,
            pages_tracked: self.pages.len(),
            unknown_frees: self.unknown_frees,
            post_gc_baseline: self.baseline.points().to_vec(),
            baseline_growth_bytes_per_s: self.baseline.slope(),
            census: None,
            containers: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: u32, tid: u32, ptr: u64, size: u64) -> HeapEvent {
        HeapEvent { kind: 2, op, tid, _pad: 0, ptr, size }
    }

    #[test]
    fn readings_anchor_page_deltas() {
        let mut h = HeapBooks::new(100, None, None);
        h.apply(&ev(op::PAGE_ALLOC, 100, 0x1000, 0), 0.0);
        assert_eq!(h.bytes(), None, "unknown until V8's first reading");
        h.apply(&ev(op::READING, 100, 0, 10 << 20), 0.1);
        assert_eq!(h.bytes(), Some(10 << 20));
        h.apply(&ev(op::PAGE_ALLOC, 7, 0x2000, 0), 0.2);
        h.apply(&ev(op::ALIGNED_SIZE, 7, 0, 3 << 20), 0.3);
        h.apply(&ev(op::LARGE_ALLOC, 7, 0x3000, 0), 0.3);
        assert_eq!(h.bytes(), Some((10 << 20) + REGULAR_PAGE + (3 << 20)));
        h.apply(&ev(op::FREE, 9, 0x3000, 0), 0.4);
        h.apply(&ev(op::FREE, 9, 0xdead, 0), 0.4);
        assert_eq!(h.bytes(), Some(10 << 20), "known large page and an unknown regular page freed");
        assert_eq!(h.report(|_| vec![]).unknown_frees, 1);
        h.apply(&ev(op::PARTIAL_FREE, 9, 0x2000, 4096), 0.5);
        assert_eq!(h.bytes(), Some((10 << 20) - 4096));
        h.apply(&ev(op::READING, 55, 0, 1), 0.6);
        assert_eq!(h.bytes(), Some((10 << 20) - 4096), "other threads' readings are not used");
    }

    #[test]
    fn baseline_is_the_reading_after_a_main_thread_mark_compact() {
        let mut h = HeapBooks::new(100, None, None);
        h.on_gc(GcKind::Scavenge, 100);
        h.apply(&ev(op::READING, 100, 0, 5 << 20), 1.0);
        h.on_gc(GcKind::MarkCompact, 101);
        h.apply(&ev(op::READING, 100, 0, 6 << 20), 2.0);
        assert!(h.baseline.points().is_empty(), "scavenges and workers' full GCs are not baselines");
        h.on_gc(GcKind::MarkCompact, 100);
        h.apply(&ev(op::READING, 100, 0, 7 << 20), 3.0);
        h.apply(&ev(op::READING, 100, 0, 9 << 20), 3.5);
        assert_eq!(h.baseline.points(), &[(3.0, (7u64 << 20) as f64)]);
    }

    /// A worker thread's isolate has its own baseline: the old generation at its first reading
    /// after each of its mark-compacts; the page it allocated names its heap.
    #[test]
    fn a_workers_isolate_has_its_own_baseline() {
        let mut h = HeapBooks::new(100, None, None);
        h.apply(&ev(op::PAGE_ALLOC, 101, 0x40_0000, 0), 0.5);
        h.apply(&ev(op::READING, 101, 3 << 20, 4 << 20), 0.6);
        assert!(h.workers.is_empty(), "a thread is a worker's isolate once it runs a mark-compact");
        h.on_gc(GcKind::MarkCompact, 101);
        h.apply(&ev(op::READING, 101, 3 << 20, 4 << 20), 1.0);
        h.apply(&ev(op::READING, 101, 3 << 20, 5 << 20), 1.5);
        h.on_gc(GcKind::Scavenge, 101);
        h.apply(&ev(op::READING, 101, 0, 6 << 20), 2.0);
        h.on_gc(GcKind::MarkCompact, 101);
        h.apply(&ev(op::READING, 101, 0, 6 << 20), 3.0);
        let w = &h.workers[&101];
        assert_eq!(w.baseline.points(), &[(1.0, (3u64 << 20) as f64), (3.0, (6u64 << 20) as f64)]);
        assert_eq!((w.latest, w.page), (Some(6 << 20), Some(0x40_0000)));
        assert!(h.baseline.points().is_empty() && h.bytes().is_none(), "the main heap is apart");
    }
}
