//! Page faults, userspace half: the target's sampled first touches by stack and by the kind
//! of memory touched, over time.
//!
//! The kernel half (`probes/faults.rs` in leakprobe-ebpf) sends each sampled fault with its
//! stack and address. The address tells what was touched: a page of V8's young generation
//! (churn: the nursery refills the same pages), a page of V8's old generation or large objects
//! (what survives, or was allocated to survive), or memory V8 does not manage (malloc'd
//! Buffers, zlib, C++). Each interval the counts become one series per (stack, kind) of the
//! bytes first touched since attach (faults × [`PAGE_BYTES`]); the verdict
//! ([`crate::verdict`]) judges them by logical site.

use std::collections::HashMap;

use leakprobe_ebpf::faults::{FaultEvent, PAGE_BYTES};
use serde::Serialize;

use crate::{
    books::series::Series,
    v8::{
        heap::{Page, PAGE},
        ProcMem,
    },
};

/// What a faulting address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Touched {
    /// A page of V8's young generation.
    Young,
    /// A page of V8's old generation, or a large-object page.
    OldOrLarge,
    /// Memory V8 does not manage (or whose page header could not be read).
    Other,
}

/// Where V8's pages are: large-object pages allocated since attach (the heap probes' books),
/// and the headers of 256 KiB chunks, read once per GC cycle (V8 may give a page another role
/// when it frees and reuses it).
pub struct PageKinds {
    mem: Option<ProcMem>,
    chunks: HashMap<u64, Touched>,
}

impl PageKinds {
    /// Reads page headers through `mem` (`None`: every address is [`Touched::Other`] unless in
    /// a known large page).
    pub fn new(mem: Option<ProcMem>) -> Self {
        Self { mem, chunks: HashMap::new() }
    }

    /// Forgets what chunks were (after a GC).
    pub fn forget(&mut self) {
        self.chunks.clear();
    }

    /// What `addr` is, given the large pages allocated since attach (start → size).
    pub fn kind(&mut self, addr: u64, large_pages: &HashMap<u64, u64>) -> Touched {
        let chunk = addr & !(PAGE - 1);
        let Some(mem) = &self.mem else { return Touched::Other };
        *self.chunks.entry(chunk).or_insert_with(|| match Page::read(mem, chunk) {
            Some(page) if page.young() => Touched::Young,
            Some(_) => Touched::OldOrLarge,
            // Inside a large page, past its first chunk.
            None if large_pages.iter().any(|(&start, &size)| (start..start + size).contains(&addr)) => {
                Touched::OldOrLarge
            }
            None => Touched::Other,
        })
    }
}

/// The books of one process's sampled page faults.
pub struct FaultBooks {
    /// Faults per sample.
    pub period: u64,
    /// Faults since attach by (stack id, what they touched).
    counts: HashMap<(i64, Touched), u64>,
    /// Bytes first touched since attach, by (stack id, what they touched).
    pub series: HashMap<(i64, Touched), Series>,
    /// Faults counted so far (the sum of the samples' periods).
    pub faults: u64,
}

/// `report.faults`: what the page-fault sampling saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultReport {
    /// One sampled fault stands for this many (the perf event's sample period).
    pub period: u64,
    /// The target's faults counted from the samples (samples × period).
    pub faults: u64,
    /// Estimated bytes first touched: faults × 4 KiB.
    pub touched_bytes: u64,
    /// Of those, in V8's young generation (the nursery's pages: churn).
    pub young_touched_bytes: u64,
    /// Of those, touched by V8 itself elsewhere: its garbage collector copying survivors to
    /// older pages. Heap growth whose stack does not say what keeps it.
    pub v8_own_touched_bytes: u64,
    /// Stacks seen.
    pub stacks: usize,
}

impl FaultBooks {
    /// Books for samples of `period` faults each.
    pub fn new(period: u64) -> Self {
        Self { period, counts: HashMap::new(), series: HashMap::new(), faults: 0 }
    }

    /// Counts one sampled fault, which touched `touched`.
    pub fn record(&mut self, event: &FaultEvent, touched: Touched) {
        *self.counts.entry((event.stack_id, touched)).or_default() += event.period;
        self.faults += event.period;
    }

    /// Adds a point at `t` to each (stack, kind)'s series.
    pub fn sample(&mut self, t: f64) {
        for (key, faults) in &self.counts {
            self.series.entry(*key).or_default().push(t, (faults * PAGE_BYTES) as f64);
        }
    }

    /// Bytes first touched in V8's young generation.
    fn young_bytes(&self) -> u64 {
        self.counts.iter().filter(|((_, k), _)| *k == Touched::Young).map(|(_, n)| n * PAGE_BYTES).sum()
    }

    /// The report, given the bytes V8's own code touched outside the nursery (from the
    /// verdict's classification).
    pub fn report(&self, v8_own_touched_bytes: u64) -> FaultReport {
        FaultReport {
            period: self.period,
            faults: self.faults,
            touched_bytes: self.faults * PAGE_BYTES,
            young_touched_bytes: self.young_bytes(),
            v8_own_touched_bytes,
            stacks: self.counts.keys().map(|(id, _)| id).collect::<std::collections::HashSet<_>>().len(),
        }
    }
}
