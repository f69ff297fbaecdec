//! GC pauses, userspace half: decoding [`GcEvent`]s and aggregating them per kind and thread.

use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;
use leakprobe_ebpf::gc::{collector, GcEvent};
use serde::Serialize;

/// The kind of a stop-the-world pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GcKind {
    /// Young-generation copying collection.
    Scavenge,
    /// Young-generation mark-sweep (V8's minor MS, `--minor-ms`).
    MinorMs,
    /// Full collection of the whole heap.
    MarkCompact,
}

impl GcKind {
    /// Every kind, in report order.
    pub const ALL: [GcKind; 3] = [GcKind::Scavenge, GcKind::MinorMs, GcKind::MarkCompact];

    /// From V8's `GarbageCollector` value.
    pub fn from_collector(value: u32) -> Option<GcKind> {
        match value {
            collector::SCAVENGER => Some(GcKind::Scavenge),
            collector::MINOR_MARK_SWEEPER => Some(GcKind::MinorMs),
            collector::MARK_COMPACTOR => Some(GcKind::MarkCompact),
            _ => None,
        }
    }

    /// The name in `report.json` and the summary.
    pub fn name(self) -> &'static str {
        match self {
            GcKind::Scavenge => "scavenge",
            GcKind::MinorMs => "minor_ms",
            GcKind::MarkCompact => "mark_compact",
        }
    }
}

/// V8's `GarbageCollectionReason` names, by value (V8 never renumbers them).
const REASONS: [&str; 28] = [
    "unknown",
    "allocation_failure",
    "allocation_limit",
    "context_disposal",
    "counters_extension",
    "debugger",
    "deserializer",
    "external_memory_pressure",
    "finalize_marking_via_stack_guard",
    "finalize_marking_via_task",
    "full_hashtable",
    "heap_profiler",
    "task",
    "last_resort",
    "low_memory_notification",
    "make_heap_iterable",
    "memory_pressure",
    "memory_reducer",
    "runtime",
    "sampling_profiler",
    "snapshot_creator",
    "testing",
    "external_finalize",
    "global_allocation_limit",
    "measure_memory",
    "background_allocation_failure",
    "finalize_concurrent_minor_ms",
    "cpp_heap_allocation_failure",
];

/// The name of a `GarbageCollectionReason` value; values newer than this table read `reason_N`.
pub fn reason_name(value: u32) -> String {
    REASONS.get(value as usize).map_or_else(|| format!("reason_{value}"), |s| s.to_string())
}

/// Upper bounds (milliseconds) of the pause histogram buckets; the last bucket is unbounded.
pub const BUCKETS_MS: [f64; 13] =
    [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// Longest pause the histograms tell apart.
const MAX_PAUSE_NS: u64 = 3_600_000_000_000;

/// Pause statistics for one kind (or one kind on one thread).
#[derive(Clone, Debug)]
pub struct PauseStats {
    hist: Histogram<u64>,
    total_ns: u64,
    buckets: [u64; BUCKETS_MS.len() + 1],
}

impl Default for PauseStats {
    fn default() -> Self {
        Self {
            // Nanoseconds from 1 ns to 1 hour at three significant digits (fixed size, ~200 KiB
            // at most); longer pauses saturate at one hour.
            hist: Histogram::new_with_bounds(1, MAX_PAUSE_NS, 3).expect("valid histogram bounds"),
            total_ns: 0,
            buckets: [0; BUCKETS_MS.len() + 1],
        }
    }
}

/// The summary of a [`PauseStats`], as `report.json` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PauseSummary {
    /// Number of pauses.
    pub count: u64,
    /// Sum of pause lengths.
    pub total_ms: f64,
    /// Median pause.
    pub p50_ms: f64,
    /// 99th percentile pause.
    pub p99_ms: f64,
    /// Longest pause.
    pub max_ms: f64,
    /// Pause counts per bucket: `le_ms` is the bucket's upper bound (`null` for the last).
    pub histogram: Vec<Bucket>,
}

/// One histogram bucket.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bucket {
    /// Upper bound in ms, inclusive; `None` is +Inf.
    pub le_ms: Option<f64>,
    /// Pauses in this bucket (not cumulative).
    pub count: u64,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl PauseStats {
    /// Records one pause.
    pub fn record(&mut self, duration_ns: u64) {
        self.hist.saturating_record(duration_ns.max(1));
        self.total_ns = self.total_ns.saturating_add(duration_ns);
        let bucket = BUCKETS_MS.iter().position(|&le| ms(duration_ns) <= le).unwrap_or(BUCKETS_MS.len());
        self.buckets[bucket] += 1;
    }

    /// Number of pauses recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Their total length, in milliseconds.
    pub fn total_ms(&self) -> f64 {
        ms(self.total_ns)
    }

    /// Summary statistics.
    pub fn summary(&self) -> PauseSummary {
        let quantile = |q| {
            if self.count() == 0 {
                0.0
            } else {
                ms(self.hist.value_at_quantile(q))
            }
        };
        PauseSummary {
            count: self.count(),
            total_ms: self.total_ms(),
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
            max_ms: if self.count() == 0 { 0.0 } else { ms(self.hist.max()) },
            histogram: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, &count)| Bucket { le_ms: BUCKETS_MS.get(i).copied(), count })
                .collect(),
        }
    }
}

/// Pause statistics by kind.
#[derive(Clone, Debug, Default)]
pub struct ByKind {
    kinds: [PauseStats; 3],
}

impl ByKind {
    fn record(&mut self, kind: GcKind, duration_ns: u64) {
        self.kinds[kind as usize].record(duration_ns);
    }

    /// Statistics of one kind.
    pub fn get(&self, kind: GcKind) -> &PauseStats {
        &self.kinds[kind as usize]
    }

    /// Pauses of every kind.
    pub fn count(&self) -> u64 {
        self.kinds.iter().map(PauseStats::count).sum()
    }

    /// Summaries keyed by kind name, every kind present.
    pub fn summaries(&self) -> BTreeMap<&'static str, PauseSummary> {
        GcKind::ALL.iter().map(|k| (k.name(), self.get(*k).summary())).collect()
    }
}

/// Per-thread pauses.
#[derive(Clone, Debug)]
pub struct ThreadStats {
    /// Thread name when first seen (`node` for the main thread; worker threads' own names).
    pub name: String,
    /// Pauses of this thread by kind.
    pub pauses: ByKind,
}

/// One pause in the timeline of `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PauseEvent {
    /// Start, in ms since the session started.
    pub at_ms: f64,
    /// Pause length.
    pub duration_ms: f64,
    /// Kind of pause.
    pub kind: GcKind,
    /// V8's reason.
    pub reason: String,
    /// Thread that paused.
    pub tid: u32,
}

/// Most pauses kept in the timeline; later ones are counted in [`GcStats::events_omitted`].
pub const MAX_EVENTS: usize = 100_000;

/// Every GC pause seen in a session.
#[derive(Clone, Debug, Default)]
pub struct GcStats {
    /// The first [`MAX_EVENTS`] pauses, in arrival order.
    pub events: Vec<PauseEvent>,
    /// Pauses left out of `events` because it was full (they are in every statistic).
    pub events_omitted: u64,
    /// All threads together.
    pub pauses: ByKind,
    /// By thread id.
    pub threads: HashMap<u32, ThreadStats>,
    /// Pause counts by kind, then reason name.
    pub reasons: BTreeMap<&'static str, BTreeMap<String, u64>>,
    /// Events whose collector value is not one we know (a V8 newer than this table).
    pub unknown_collector: u64,
    /// Keep no timeline (`events` stays empty; the host-wide agent runs for days).
    pub skip_timeline: bool,
    /// Pauses by the stack that entered the GC (the allocation that triggered it, mostly).
    pub by_stack: HashMap<i64, u64>,
}

impl GcStats {
    /// Adds one event. `origin_ns` is the session start on the kernel's monotonic clock;
    /// `thread_name` is asked only for a thread seen the first time.
    pub fn record(&mut self, event: &GcEvent, origin_ns: u64, thread_name: impl FnOnce(u32) -> String) {
        let Some(kind) = GcKind::from_collector(event.collector) else {
            self.unknown_collector += 1;
            return;
        };
        if self.skip_timeline {
            self.events_omitted += 1;
        } else if self.events.len() < MAX_EVENTS {
            self.events.push(PauseEvent {
                at_ms: (event.start_ns as f64 - origin_ns as f64) / 1e6,
                duration_ms: ms(event.duration_ns),
                kind,
                reason: reason_name(event.reason),
                tid: event.tid,
            });
        } else {
            self.events_omitted += 1;
        }
        self.pauses.record(kind, event.duration_ns);
        self.threads
            .entry(event.tid)
            .or_insert_with(|| ThreadStats { name: thread_name(event.tid), pauses: ByKind::default() })
            .pauses
            .record(kind, event.duration_ns);
        *self.reasons.entry(kind.name()).or_default().entry(reason_name(event.reason)).or_default() += 1;
        *self.by_stack.entry(event.stack_id).or_default() += 1;
    }

    /// The stacks that entered the most pauses, with their pause counts (at most `n`).
    pub fn top_trigger_stacks(&self, n: usize) -> Vec<(i64, u64)> {
        let mut top: Vec<(i64, u64)> = self.by_stack.iter().map(|(id, c)| (*id, *c)).collect();
        top.sort_by_key(|(id, c)| (std::cmp::Reverse(*c), *id));
        top.truncate(n);
        top
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(tid: u32, collector: u32, reason: u32, duration_ns: u64) -> GcEvent {
        GcEvent {
            kind: leakprobe_ebpf::EventKind::Gc as u32,
            _pad: 0,
            start_ns: 0,
            duration_ns,
            pid: 1,
            tid,
            collector,
            reason,
            stack_id: 7,
        }
    }

    #[test]
    fn aggregates_by_kind_thread_and_reason() {
        let mut stats = GcStats::default();
        for d in 1..=100u64 {
            stats.record(&event(1, collector::SCAVENGER, 1, d * 10_000), 0, |_| "node".into());
        }
        stats.record(&event(7, collector::MARK_COMPACTOR, 21, 30_000_000), 0, |_| "worker".into());
        stats.record(&event(7, 99, 21, 1), 0, |_| unreachable!("unknown collectors are not recorded"));

        let s = stats.pauses.get(GcKind::Scavenge).summary();
        assert_eq!(s.count, 100);
        assert!((s.total_ms - 50.5).abs() < 1e-9, "{}", s.total_ms);
        assert!((s.p50_ms - 0.5).abs() < 0.001, "{}", s.p50_ms);
        assert!((s.p99_ms - 0.99).abs() < 0.001, "{}", s.p99_ms);
        assert!((s.max_ms - 1.0).abs() < 0.001, "{}", s.max_ms);
        // 0.01..=0.1 ms → first bucket (10), ..=0.25 (15), ..=0.5 (25), ..=1.0 (50).
        let counts: Vec<u64> = s.histogram.iter().map(|b| b.count).collect();
        assert_eq!(&counts[..5], &[10, 15, 25, 50, 0]);
        assert_eq!(s.histogram.last().unwrap().le_ms, None);

        assert_eq!(
            stats.pauses.get(GcKind::MinorMs).summary(),
            PauseSummary {
                histogram: stats.pauses.get(GcKind::MinorMs).summary().histogram,
                ..Default::default()
            }
        );
        assert_eq!(stats.threads[&7].name, "worker");
        assert_eq!(stats.threads[&7].pauses.get(GcKind::MarkCompact).count(), 1);
        assert_eq!(stats.threads[&1].pauses.count(), 100);
        assert_eq!(stats.reasons["mark_compact"]["testing"], 1);
        assert_eq!(stats.reasons["scavenge"]["allocation_failure"], 100);
        assert_eq!(stats.unknown_collector, 1);
        assert_eq!(stats.pauses.summaries().len(), 3);
        assert_eq!(stats.events.len(), 101);
        assert_eq!(stats.events[100].kind, GcKind::MarkCompact);
        assert_eq!(stats.events[100].duration_ms, 30.0);
        assert_eq!(stats.events[100].reason, "testing");
    }

    #[test]
    fn timeline_is_relative_to_the_session_and_bounded() {
        let mut stats = GcStats::default();
        let origin = 5_000_000_000;
        let mut e = event(1, collector::SCAVENGER, 1, 1_000_000);
        e.start_ns = origin + 2_500_000;
        stats.record(&e, origin, |_| "node".into());
        assert_eq!(stats.events[0].at_ms, 2.5);
        // A pause that began just before the session shows a negative offset, not garbage.
        e.start_ns = origin - 1_000_000;
        stats.record(&e, origin, |_| "node".into());
        assert_eq!(stats.events[1].at_ms, -1.0);
        for _ in 0..MAX_EVENTS {
            stats.record(&e, origin, |_| "node".into());
        }
        assert_eq!(stats.events.len(), MAX_EVENTS);
        assert_eq!(stats.events_omitted, 2);
        assert_eq!(stats.pauses.count(), MAX_EVENTS as u64 + 2);
    }

    #[test]
    fn reason_names_follow_v8_values() {
        assert_eq!(reason_name(1), "allocation_failure");
        assert_eq!(reason_name(17), "memory_reducer");
        assert_eq!(reason_name(21), "testing");
        assert_eq!(reason_name(400), "reason_400");
    }
}
