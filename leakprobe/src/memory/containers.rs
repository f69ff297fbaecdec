//! Growing containers: what the large arrays allocated since attach hold, by the stack that
//! allocated them.
//!
//! A JavaScript leak of many small objects is mostly invisible to first touches: the objects
//! are allocated in the nursery and copied to the old generation by the GC, whose stacks name
//! no site. What keeps them is usually one container that keeps growing — a module-level array
//! or Map, a listener list — and past about 16,000 array elements (4,096 Map or Set entries)
//! each new store of such a container is a large object, allocated by the code that grows it
//! (the heap probes keep its stack).
//! Each interval this reads the large objects allocated since attach that are still alive
//! ([`crate::v8::heap::contents::contents`]): how many elements each holds, and what an element keeps.
//! The estimate (elements × bytes each) becomes a series per allocating stack, judged by
//! [`crate::verdict`] with the V8 heap's other sites: the function that pushes to the array is
//! credited with what the array's elements keep.
//!
//! Limits: arrays' `FixedArray` stores and Maps' and Sets' ordered hash tables are read (a
//! plain object used as a dictionary is not); a container whose store is not yet a large
//! object is not seen; an element's bytes are estimated three levels down, from 32 elements.

use std::collections::{HashMap, HashSet, VecDeque};

use aya::maps::{HashMap as BpfHashMap, MapData};
use leakprobe_ebpf::alloc::LiveAlloc;
use serde::Serialize;

use crate::{
    books::{
        series::Forget,
        suspect::{Category, Held},
        tracker::Tracker,
    },
    v8::heap::reader::HeapReader,
};

/// Large objects read per interval at most (the largest).
const MAX_READ: usize = 16;
/// Estimates of an element's bytes kept per container for their median.
const ESTIMATES: usize = 31;
/// Sample times kept for the zeros a new series starts with.
const MAX_TIMES: usize = 4096;

/// `report.heap.containers`: what reading containers cost, and why it did not run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ContainersReport {
    /// `reading`, or why not.
    pub status: String,
    /// Readings of large stores that were arrays with elements.
    pub reads: u64,
    /// Bytes read from the target for them.
    pub bytes_read: u64,
}

/// The books of one process's growing containers.
pub struct Containers {
    live: BpfHashMap<MapData, u64, LiveAlloc>,
    /// What reads the target's heap, or why it cannot be read.
    probe: Result<HeapReader, String>,
    /// Estimated bytes held through the containers each stack allocated, over time.
    pub tracker: Tracker,
    /// Per stack, the largest reading of its containers so far (a growing container's latest).
    latest: HashMap<i64, Held>,
    /// Each container (by its first element) and the stack its series is kept under.
    canonical: HashMap<u64, i64>,
    /// The latest reading of each store read: by its page, its container's first element and
    /// the bytes its elements keep.
    last_read: HashMap<u64, (u64, f64)>,
    /// Each container's latest estimates of the bytes an element keeps (at most
    /// [`ESTIMATES`]): the series uses their median. Its element count is exact, but one
    /// estimate, from 32 sampled elements, scatters by some 10% (and the first readings of a
    /// bounded cache's Map read twice the others): on a slow leak's Map of 28,000 entries, as
    /// much as a minute of its growth, which would read as dips in the floor of its series.
    estimates: HashMap<u64, VecDeque<f64>>,
    /// The times of the samples so far.
    times: Vec<f64>,
    report: ContainersReport,
}

impl Forget for Containers {
    /// Each stack's series of what its containers hold starts at `t`.
    fn forget_before(&mut self, t: f64) {
        self.tracker.forget_before(t);
        self.times.retain(|&s| s >= t);
    }
}

impl Containers {
    /// Books reading, with `probe`, the large objects of `live` (the heap probes' live large
    /// objects: page → size and allocating stack).
    pub fn new(probe: Result<HeapReader, String>, live: BpfHashMap<MapData, u64, LiveAlloc>) -> Self {
        Self {
            live,
            probe,
            tracker: Tracker::default(),
            latest: HashMap::new(),
            canonical: HashMap::new(),
            last_read: HashMap::new(),
            estimates: HashMap::new(),
            times: Vec::new(),
            report: ContainersReport {
                status: "no large array allocated since attach".into(),
                ..Default::default()
            },
        }
    }

    /// Reads the live large objects allocated since attach and adds each stack's estimate at
    /// `t`.
    pub fn sample(&mut self, t: f64) {
        let mut pages: Vec<(u64, LiveAlloc)> = self.live.iter().filter_map(Result::ok).collect();
        if pages.is_empty() {
            self.push_time(t);
            self.tracker.sample(Category::V8Heap, t, self.latest.keys().map(|id| (*id, 0)));
            return;
        }
        let probe = match &mut self.probe {
            Ok(p) => p,
            Err(why) => {
                self.report.status = format!("not available: {why}");
                return;
            }
        };
        self.report.status = "reading".into();
        let live: HashSet<u64> = pages.iter().map(|(page, _)| *page).collect();
        let mut read = HashSet::new();
        pages.sort_by_key(|(_, a)| std::cmp::Reverse(a.size));
        pages.truncate(MAX_READ);
        // Versions of one container (a grown store and the old one the GC has not freed yet)
        // share their first element: each container counts once, as its largest version.
        let mut containers: HashMap<u64, (u64, i64, crate::v8::heap::contents::Contents, Option<u64>)> =
            HashMap::new();
        for (page, alloc) in pages {
            let Some(c) = probe.contents(page) else { continue };
            read.insert(page);
            let heap = probe.heap_of(page);
            log::debug!("large array at {page:#x} (stack {}): {c:?}", alloc.stack_id);
            self.report.reads += 1;
            self.report.bytes_read += c.bytes_read;
            match containers.get(&c.first) {
                Some((_, _, kept, _)) if kept.used >= c.used => {}
                _ => {
                    containers.insert(c.first, (page, alloc.stack_id, c, heap));
                }
            }
        }
        // A container not read this time whose store is still live (not among the largest, or
        // caught mid-copy by a read that failed) holds what it held at its last reading: one
        // missed reading must not read as a drop to nothing, which would hide a leak's rise in
        // the floor of its series. One whose store was freed holds nothing now. A store read
        // this time (under whatever first element: a Map whose oldest entry went has another)
        // says what it holds now, and a container read this time is not carried from an older
        // store of its own.
        let mut by_stack: HashMap<i64, f64> = self.latest.keys().map(|id| (*id, 0.0)).collect();
        self.last_read.retain(|page, _| live.contains(page) && !read.contains(page));
        let mut carried: HashMap<u64, f64> = HashMap::new();
        for (first, bytes) in self.last_read.values() {
            if !containers.contains_key(first) {
                let most = carried.entry(*first).or_default();
                *most = most.max(*bytes);
            }
        }
        for (first, bytes) in &carried {
            if let Some(stack) = self.canonical.get(first) {
                *by_stack.entry(*stack).or_default() += bytes;
            }
        }
        let kept: HashSet<u64> = self.last_read.values().map(|(first, _)| *first).collect();
        self.estimates.retain(|first, _| kept.contains(first) || containers.contains_key(first));
        for (first, (page, stack, c, heap)) in containers {
            // One series per container, under the stack of its first store seen: a grown store
            // allocated by another stack (other JIT addresses) continues the same series.
            let stack = *self.canonical.entry(first).or_insert(stack);
            let estimates = self.estimates.entry(first).or_default();
            if estimates.len() == ESTIMATES {
                estimates.pop_front();
            }
            estimates.push_back(c.bytes_per_element);
            let bytes_per_element = median(estimates);
            let bytes = c.used as f64 * bytes_per_element;
            self.last_read.insert(page, (first, bytes));
            *by_stack.entry(stack).or_default() += bytes;
            let held = Held {
                container: c.container,
                elements: c.used,
                bytes_per_element,
                heap: heap.map(|h| format!("{h:#x}")),
            };
            match self.latest.get(&stack) {
                Some(h) if h.elements > held.elements => {}
                _ => {
                    self.latest.insert(stack, held);
                }
            }
        }
        log::debug!("containers at {t:.1} s: {by_stack:?}");
        for stack in by_stack.keys() {
            self.tracker.backfill(Category::V8Heap, *stack, &self.times);
        }
        self.push_time(t);
        self.tracker.sample(Category::V8Heap, t, by_stack.into_iter().map(|(id, b)| (id, b as i64)));
    }

    /// Remembers a sample's time (every other one is dropped when [`MAX_TIMES`] are kept, as
    /// the series thin themselves).
    fn push_time(&mut self, t: f64) {
        if self.times.len() >= MAX_TIMES {
            self.times = self.times.iter().copied().step_by(2).collect();
        }
        self.times.push(t);
    }

    /// The largest reading among `stacks`' containers (for a growing one, its latest).
    pub fn held(&self, stacks: impl IntoIterator<Item = i64>) -> Option<Held> {
        stacks.into_iter().filter_map(|id| self.latest.get(&id)).max_by_key(|h| h.elements).cloned()
    }

    /// `report.heap.containers`.
    pub fn report(&self) -> ContainersReport {
        self.report.clone()
    }
}

/// The median of `values` (not empty).
fn median(values: &VecDeque<f64>) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().collect();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() % 2 {
        0 => (sorted[mid - 1] + sorted[mid]) / 2.0,
        _ => sorted[mid],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outlying_estimate_moves_the_median_not() {
        let estimates: VecDeque<f64> = [319.0, 140.0, 138.0, 145.0, 141.0].into();
        assert_eq!(median(&estimates), 141.0);
        let even: VecDeque<f64> = [100.0, 300.0].into();
        assert_eq!(median(&even), 200.0);
    }
}
