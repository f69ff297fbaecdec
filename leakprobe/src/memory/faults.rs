//! Page faults, userspace half: the target's sampled first touches by stack and by the kind
//! of memory touched, over time.
//!
//! The kernel half (`probes/faults.rs` in leakprobe-ebpf) sends each sampled fault with its
//! stack and address. The address tells what was touched: a page of V8's young generation
//! (churn: the nursery refills the same pages), a page of V8's old generation or large objects
//! (what survives, or was allocated to survive), or memory V8 does not manage (malloc'd
//! Buffers, zlib, C++). Each interval the counts become one series per (stack, kind) of the
//! bytes first touched since attach (faults × [`PAGE_BYTES`]). What each stack touched is
//! classified by the code that touched it ([`classify`]), and the sites that go on touching
//! memory become candidate suspects ([`FaultBooks::sites`]), which the verdict
//! ([`crate::verdict`]) keeps where their category grows.

use std::collections::HashMap;

use leakprobe_ebpf::faults::{FaultEvent, PAGE_BYTES};
use serde::Serialize;

use crate::{
    books::{
        series::{Forget, Series},
        site::site_key,
        suspect::{Category, Source, Suspect, Variant},
    },
    memory::rss::{thirds, Sample},
    stacks::frame::{Frame, FrameKind},
    v8::{
        heap::pages::{Page, PAGE},
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

/// The books of one process's sampled page faults: what each touched, by stack, over time.
pub struct FaultBooks {
    /// Whether the page-fault sampling is attached (no report without it).
    attached: bool,
    /// What each faulting address is.
    kinds: PageKinds,
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

impl Forget for FaultBooks {
    /// Each (stack, kind)'s series of bytes first touched starts at `t`.
    fn forget_before(&mut self, t: f64) {
        for series in self.series.values_mut() {
            series.start_at(t);
        }
    }
}

impl FaultBooks {
    /// Books for samples of `period` faults each, telling what each address is through
    /// `kinds`; `attached`: whether the sampling is attached.
    pub fn new(period: u64, kinds: PageKinds, attached: bool) -> Self {
        Self { attached, kinds, period, counts: HashMap::new(), series: HashMap::new(), faults: 0 }
    }

    /// Counts one sampled fault, given the large pages allocated since attach (start → size).
    pub fn record(&mut self, event: &FaultEvent, large_pages: &HashMap<u64, u64>) {
        let touched = self.kinds.kind(event.addr, large_pages);
        *self.counts.entry((event.stack_id, touched)).or_default() += event.period;
        self.faults += event.period;
    }

    /// After a GC: pages may change roles across one (freed, reused, promoted whole).
    pub fn on_gc(&mut self) {
        self.kinds.forget();
    }

    /// Adds a point at `t` to each (stack, kind)'s series whose count changed since its last
    /// point. A series is read as steps (its value at a time is its last point's before it),
    /// so an unchanged count needs no point: most stacks fault once and never again, and a
    /// point for each of them at every sample was 7% of the session's main thread.
    pub fn sample(&mut self, t: f64) {
        for (key, faults) in &self.counts {
            let bytes = (faults * PAGE_BYTES) as f64;
            let series = self.series.entry(*key).or_default();
            if series.last() != Some(bytes) {
                series.push(t, bytes);
            }
        }
    }

    /// Bytes first touched in V8's young generation.
    fn young_bytes(&self) -> u64 {
        self.counts.iter().filter(|((_, k), _)| *k == Touched::Young).map(|(_, n)| n * PAGE_BYTES).sum()
    }

    /// The report (none where the sampling is not attached), given the bytes V8's own code
    /// touched outside the nursery (from [`FaultBooks::sites`]).
    pub fn report(&self, v8_own_touched_bytes: u64) -> Option<FaultReport> {
        self.attached.then(|| FaultReport {
            period: self.period,
            faults: self.faults,
            touched_bytes: self.faults * PAGE_BYTES,
            young_touched_bytes: self.young_bytes(),
            v8_own_touched_bytes,
            stacks: self.counts.keys().map(|(id, _)| id).collect::<std::collections::HashSet<_>>().len(),
        })
    }

    /// Sites whose sampled page faults go on through the window, as candidate suspects, and the
    /// bytes the GC touched. `frames` names a stack id.
    pub fn sites(
        &self,
        samples: &[Sample],
        mut frames: impl FnMut(i64) -> Vec<Frame>,
    ) -> (Vec<Suspect>, u64) {
        let Some((_, one, two, last)) = thirds(samples) else { return (Vec::new(), 0) };
        let mut gc_bytes = 0.0;
        let mut groups: HashMap<(Category, String), (Suspect, f64)> = HashMap::new();
        for (&(stack_id, touched), series) in &self.series {
            let total = series.last().unwrap_or(0.0);
            let (middle, end) = (at(series, two) - at(series, one), total - at(series, two));
            if end <= 0.0 && middle <= 0.0 {
                continue;
            }
            if touched == Touched::Young {
                continue;
            }
            let stack = frames(stack_id);
            let category = match classify(&stack, touched) {
                Class::V8Own => {
                    gc_bytes += total;
                    continue;
                }
                Class::TableRehash => continue,
                Class::Memory(category) => category,
            };
            let site = site_key(&stack);
            let (group, group_middle) = groups
                .entry((category, site.clone()))
                .or_insert_with(|| (Suspect::site(category, Source::PageFaults, site), 0.0));
            group.growth_bytes_per_s += match category {
                Category::V8Heap => (middle + end) / (last - one),
                _ => end / (last - two),
            };
            *group_middle += middle;
            group.add_variant(stack, Variant { stack_id, bytes: total as i64, floor_growth_bytes: end });
        }
        let found = groups
            .into_values()
            .filter(|(s, middle)| match s.category {
                // The runtime grows a JS array's backing store geometrically (by half again each
                // time): its faults come in ever rarer steps, so the later two thirds are judged
                // together.
                Category::V8Heap => s.floor_growth_bytes + middle >= MIN_SITE_BYTES,
                _ => {
                    s.floor_growth_bytes >= MIN_SITE_BYTES
                        && *middle > 0.0
                        && s.floor_growth_bytes >= MIN_STILL_FAULTING * middle
                }
            })
            .map(|(mut s, _)| {
                s.variants.sort_by_key(|v| std::cmp::Reverse(v.bytes));
                s
            })
            .collect();
        (found, gc_bytes as u64)
    }
}

/// Smallest first-touched bytes in the last third of the window for a page-fault site.
pub const MIN_SITE_BYTES: f64 = 256.0 * 1024.0;
/// A page-fault site still faulting at the end: its last third touched at least this share
/// of what its middle third did.
pub const MIN_STILL_FAULTING: f64 = 0.25;

/// Names of V8's garbage collector: a fault under one is the GC copying survivors.
const GC_MARKERS: &[&str] = &[
    "Scavenge",
    "Evacuat",
    "MarkCompactCollector",
    "MinorMarkSweep",
    "MinorMarkCompact",
    "Heap::CollectGarbage",
    "Heap::PerformGarbageCollection",
    "ConcurrentMarking",
    "Sweeper",
];

/// Names of Buffer/ArrayBuffer code: a fault under one fills a backing store.
const EXTERNAL_MARKERS: &[&str] =
    &["ArrayBuffer", "BackingStore", "TypedArray", "StringBytes", "node::Buffer", "DataView", "StringWrite"];

/// Functions of V8's runtime that reallocate a Map's or Set's hash table (`Runtime_MapGrow`,
/// `OrderedHashTable::Rehash`, `Shrink`): the new table replaces the old one, which becomes
/// garbage. A service's Map of short-lived sessions rehashes all the time, in the old
/// generation once the Map is old, and first touches whatever fresh pages a growing old
/// generation has (the suite's Map leak had the service's `openSession` explain 18% of the
/// heap's growth that way). What grows in a Map is its entries: a large table is read as a
/// container ([`crate::memory::containers`]).
const TABLE_REHASH_MARKERS: &[&str] =
    &["OrderedHashTable<", "Runtime_MapGrow", "Runtime_SetGrow", "Runtime_MapShrink", "Runtime_SetShrink"];

/// What a sampled fault's memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A Map's or Set's hash table that V8 reallocated to replace the old one
    /// ([`TABLE_REHASH_MARKERS`]): no lead.
    TableRehash,
    /// Touched by V8 itself: its garbage collector copying survivors, or the young generation's
    /// pages, which the nursery refills (churn). Heap growth whose JavaScript on the stack is
    /// not what keeps it.
    V8Own,
    /// Touched by the program, in this category.
    Memory(Category),
}

/// The category of a sampled fault's memory, from what the address is (a V8 page of the young
/// or the old generation, or memory V8 does not manage) and the code that touched it: the GC's
/// copying, Buffer code filling a backing store, V8's runtime or generated code, or anything
/// else native (malloc'd memory, zlib, an addon).
pub fn classify(frames: &[Frame], touched: Touched) -> Class {
    let named =
        |markers: &[&str], f: &Frame| f.kind != FrameKind::Js && markers.iter().any(|m| f.name.contains(m));
    // Up to the first JavaScript frame, or the pool thread's end: the code that touched it.
    let own = frames
        .iter()
        .position(|f| f.kind == FrameKind::Js || f.kind == FrameKind::Queued)
        .unwrap_or(frames.len());
    let touching = &frames[..own];
    if touching.iter().any(|f| named(GC_MARKERS, f)) {
        return Class::V8Own;
    }
    if touching.iter().any(|f| named(TABLE_REHASH_MARKERS, f)) {
        return Class::TableRehash;
    }
    match touched {
        Touched::Young => return Class::V8Own,
        Touched::OldOrLarge => return Class::Memory(Category::V8Heap),
        Touched::Other => {}
    }
    if touching.iter().any(|f| named(EXTERNAL_MARKERS, f)) {
        return Class::Memory(Category::External);
    }
    let generated = |f: &Frame| matches!(f.kind, FrameKind::Jit | FrameKind::Builtin);
    match touching.first() {
        // Generated code writing memory V8 does not manage: a typed array's backing store.
        Some(_) if touching.iter().all(generated) => Class::Memory(Category::External),
        // V8's runtime, outside any page whose header was read (a large object older than the
        // session).
        Some(first) if first.name.starts_with("v8::internal::") => Class::Memory(Category::V8Heap),
        _ => Class::Memory(Category::Native),
    }
}

/// The bytes a cumulative series held at `t` (0 before its first point).
fn at(series: &Series, t: f64) -> f64 {
    series.points().iter().take_while(|p| p.0 <= t).last().map_or(0.0, |p| p.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::frame::{
        test_frames::{frame, js, native},
        QUEUED_NAME,
    };

    #[test]
    fn a_stacks_series_gets_a_point_where_its_count_changed_and_reads_the_same() {
        let mut books = FaultBooks::new(1, PageKinds::new(None), true);
        let fault = |stack_id| FaultEvent { kind: 5, tid: 1, stack_id, addr: 0x1000, period: 1 };
        books.record(&fault(7), &HashMap::new());
        for t in [1.0, 2.0, 3.0] {
            books.sample(t);
        }
        books.record(&fault(7), &HashMap::new());
        books.sample(4.0);
        books.sample(5.0);
        let series = &books.series[&(7, Touched::Other)];
        let page = PAGE_BYTES as f64;
        assert_eq!(series.points(), &[(1.0, page), (4.0, 2.0 * page)]);
        assert_eq!([at(series, 0.5), at(series, 3.0), at(series, 4.5)], [0.0, page, 2.0 * page]);
    }

    #[test]
    fn faults_are_classified_by_the_code_that_touched_the_memory() {
        let user = js("handle", "/app/a.js", 3);
        let fill =
            vec![native("memset"), native("v8::internal::Builtin_TypedArrayPrototypeFill"), user.clone()];
        assert_eq!(classify(&fill, Touched::Other), Class::Memory(Category::External));
        let gc = vec![
            native("memcpy"),
            native("v8::internal::Scavenger::ScavengeObject"),
            native("v8::internal::Heap::CollectGarbage"),
            user.clone(),
        ];
        assert_eq!(classify(&gc, Touched::OldOrLarge), Class::V8Own);
        let jit = vec![frame("[JIT 0x1]", FrameKind::Jit, None, None), user.clone()];
        assert_eq!(classify(&jit, Touched::Young), Class::V8Own, "the nursery's pages: churn");
        assert_eq!(
            classify(&jit, Touched::OldOrLarge),
            Class::Memory(Category::V8Heap),
            "allocated in the old generation (pretenured: V8 saw its objects survive)"
        );
        assert_eq!(
            classify(&jit, Touched::Other),
            Class::Memory(Category::External),
            "a typed array's store"
        );
        let runtime =
            vec![native("v8::internal::FactoryBase<v8::internal::Factory>::NewFixedArray"), user.clone()];
        assert_eq!(classify(&runtime, Touched::Young), Class::V8Own);
        assert_eq!(classify(&runtime, Touched::OldOrLarge), Class::Memory(Category::V8Heap));
        let rehash = vec![
            native("v8::internal::FactoryBase<v8::internal::Factory>::NewFixedArrayWithFiller(v8::internal::Handle<v8::internal::Map>, int)"),
            native("v8::internal::OrderedHashTable<v8::internal::OrderedHashMap, 2>::Allocate(v8::internal::Isolate*, int, v8::internal::AllocationType)"),
            native("v8::internal::OrderedHashTable<v8::internal::OrderedHashMap, 2>::Rehash(v8::internal::Isolate*, v8::internal::Handle<v8::internal::OrderedHashMap>, int)"),
            native("v8::internal::Runtime_MapGrow(int, unsigned long*, v8::internal::Isolate*)"),
            frame("Builtins_MapPrototypeSet", FrameKind::Builtin, None, None),
            user.clone(),
        ];
        assert_eq!(classify(&rehash, Touched::OldOrLarge), Class::TableRehash, "a Map's table replaced");
        let zlib = vec![
            native("deflateInit2_"),
            native("node::ThreadPoolWork::ScheduleWork"),
            frame(QUEUED_NAME, FrameKind::Queued, None, None),
            native("uv_queue_work"),
            user,
        ];
        assert_eq!(classify(&zlib, Touched::Other), Class::Memory(Category::Native));
    }
}
