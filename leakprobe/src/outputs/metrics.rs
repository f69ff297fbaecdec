//! The agent's Prometheus metrics: one registry, series labelled by process, removed when the
//! process goes away.
//!
//! Names follow Prometheus conventions: base units in the name (`_seconds`, `_bytes`),
//! `_total` for counters. Label cardinality is bounded by the number of processes watched
//! (the agent's `--max-targets`) times the fixed sets of `kind`, `area` and `reason` values;
//! the verdict's series add, per process, one per category and worker isolate judged, and at
//! most [`TOP_VERDICT`] suspects and [`TOP_VERDICT`] growing types (each verdict replaces the
//! previous one's).

use std::collections::BTreeMap;

use anyhow::Context as _;
use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::{
    books::{
        site::site_frame,
        suspect::{Category, Suspect},
    },
    memory::{
        census::{CensusReport, GrowingType, RetainedBy},
        gc::GcKind,
        rss::MemoryReport,
    },
    outputs::report::Report,
    v8::heap::census::Kind,
    verdict::{CategoryVerdict, NOT_JUDGED},
};

/// The verdict's metric families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VerdictFamily {
    Category,
    Suspect,
    Growing,
}

/// A category as the metrics' `category` label says it.
fn category_label(c: Category) -> &'static str {
    match c {
        Category::V8Heap => "v8_heap",
        Category::External => "external",
        Category::Native => "native",
        Category::Mapping => "mappings",
    }
}
use leakprobe_ebpf::drops::DropReason;

/// Labels that identify a watched process.
pub const TARGET_LABELS: [&str; 6] = ["pid", "comm", "node_version", "pod_uid", "container_id", "node"];

/// The areas of `leakprobe_memory_bytes` and `leakprobe_growth_bytes_per_second`.
pub const AREAS: [&str; 5] = ["rss", "v8_heap", "external", "native", "other"];

/// The values of `leakprobe_probes_up`'s `family` label.
pub const FAMILIES: [&str; 5] = ["gc", "heap", "external", "syscalls", "native"];

/// Suspects and growing types exported per process.
pub const TOP_VERDICT: usize = 3;

/// One watched process's label values, in [`TARGET_LABELS`] order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetLabels(pub [String; 6]);

impl TargetLabels {
    /// The pod's uid (empty outside a pod).
    pub fn pod_uid(&self) -> &str {
        &self.0[3]
    }

    /// The container's id (empty outside a container).
    pub fn container_id(&self) -> &str {
        &self.0[4]
    }

    fn with<'a>(&'a self, extra: &'a str) -> Vec<&'a str> {
        self.0.iter().map(String::as_str).chain([extra]).collect()
    }

    fn plain(&self) -> Vec<&str> {
        self.0.iter().map(String::as_str).collect()
    }
}

/// Every metric the agent exports.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    gc_pause: HistogramVec,
    memory: prometheus::GaugeVec,
    growth: prometheus::GaugeVec,
    events: IntCounterVec,
    drops: IntCounterVec,
    probes_up: IntGaugeVec,
    attach_errors: IntCounter,
    targets: IntGauge,
    verdict_growth: prometheus::GaugeVec,
    suspect_growth: prometheus::GaugeVec,
    growing_objects: prometheus::GaugeVec,
    /// The verdict series set per target (by its label values), removed when the next verdict
    /// or the target's exit replaces them.
    verdict_series: BTreeMap<Vec<String>, Vec<(VerdictFamily, Vec<String>)>>,
    /// Last cumulative values seen per target (counters only go up by the difference).
    last_events: BTreeMap<Vec<String>, u64>,
    last_drops: BTreeMap<(Vec<String>, &'static str), u64>,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let with = |extra: &'static str| {
            let mut labels = TARGET_LABELS.to_vec();
            labels.push(extra);
            labels
        };
        let gc_pause = HistogramVec::new(
            HistogramOpts::new(
                "leakprobe_gc_pause_seconds",
                "Stop-the-world GC pauses of V8, by collector kind, measured in the kernel.",
            )
            // 50 µs .. ~1.6 s.
            .buckets(exponential_buckets(50e-6, 2.0, 16)?),
            &with("kind"),
        )?;
        let memory = prometheus::GaugeVec::new(
            Opts::new(
                "leakprobe_memory_bytes",
                "RSS and its split: V8 heap (committed), external (Buffer/ArrayBuffer), native \
                 (malloc since attach, with --native), other (the rest of RSS).",
            ),
            &with("area"),
        )?;
        let growth = prometheus::GaugeVec::new(
            Opts::new(
                "leakprobe_growth_bytes_per_second",
                "Growth rate of each memory area over the samples kept (least squares).",
            ),
            &with("area"),
        )?;
        let events = IntCounterVec::new(
            Opts::new("leakprobe_events_total", "Events read from the kernel for a process."),
            &TARGET_LABELS,
        )?;
        let drops = IntCounterVec::new(
            Opts::new("leakprobe_drops_total", "Events lost (full map or ring buffer), by reason."),
            &with("reason"),
        )?;
        let probes_up = IntGaugeVec::new(
            Opts::new(
                "leakprobe_probes_up",
                "1 when every probe of the family is attached to the process (for external, also \
                 node's counter readable through /proc/PID/mem), 0 when not: the agent's log says why.",
            ),
            &with("family"),
        )?;
        let attach_errors = IntCounter::new(
            "leakprobe_attach_errors_total",
            "Node processes the agent found but could not attach to (see its log).",
        )?;
        let targets = IntGauge::new("leakprobe_targets", "Node processes currently watched.")?;
        let with_all = |extra: &[&'static str]| {
            let mut labels = TARGET_LABELS.to_vec();
            labels.extend_from_slice(extra);
            labels
        };
        let verdict_growth = prometheus::GaugeVec::new(
            Opts::new(
                "leakprobe_verdict_growth_bytes_per_second",
                "The verdict on a memory category (v8_heap, external, native) of a process, or a \
                 worker isolate's V8 heap: its growth at GC troughs when it grows, 0 when judged \
                 flat or levelled off; absent until enough full GCs were seen to judge it.",
            ),
            &with_all(&["category", "isolate"]),
        )?;
        let suspect_growth = prometheus::GaugeVec::new(
            Opts::new(
                "leakprobe_suspect_growth_bytes_per_second",
                "A leak suspect: the line of code whose allocations keep growing in a growing \
                 category (rank 1 explains most), named by the innermost frame of the program's \
                 own JavaScript.",
            ),
            &with_all(&["rank", "category", "function", "file", "line"]),
        )?;
        let growing_objects = prometheus::GaugeVec::new(
            Opts::new(
                "leakprobe_growing_objects_per_second",
                "A type the heap census found growing (objects gained per second) in a growing \
                 category (or, with a proven holder, in a V8 heap not judged yet for too few full \
                 GCs), and its nearest named holder (the variable or property of the chain most \
                 samples share, where it holds enough samples to hold the growth; empty when none \
                 was proven).",
            ),
            &with_all(&["rank", "type", "holder"]),
        )?;
        for c in [
            Box::new(gc_pause.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(memory.clone()),
            Box::new(growth.clone()),
            Box::new(events.clone()),
            Box::new(drops.clone()),
            Box::new(probes_up.clone()),
            Box::new(attach_errors.clone()),
            Box::new(targets.clone()),
            Box::new(verdict_growth.clone()),
            Box::new(suspect_growth.clone()),
            Box::new(growing_objects.clone()),
        ] {
            registry.register(c).context("registering a metric")?;
        }
        Ok(Self {
            registry,
            gc_pause,
            memory,
            growth,
            events,
            drops,
            probes_up,
            attach_errors,
            targets,
            verdict_growth,
            suspect_growth,
            growing_objects,
            verdict_series: BTreeMap::new(),
            last_events: BTreeMap::new(),
            last_drops: BTreeMap::new(),
        })
    }

    /// Records GC pauses of one process.
    pub fn observe_pauses(&self, labels: &TargetLabels, pauses: &[(GcKind, f64)]) {
        for (kind, seconds) in pauses {
            self.gc_pause.with_label_values(&labels.with(kind.name())).observe(*seconds);
        }
    }

    /// Sets one process's probe status, family by family (`family` is one of [`FAMILIES`]).
    pub fn set_probes_up(&self, labels: &TargetLabels, families: &[(&str, bool)]) {
        for (family, up) in families {
            self.probes_up.with_label_values(&labels.with(family)).set(i64::from(*up));
        }
    }

    /// Sets one process's memory gauges and advances its event and drop counters.
    pub fn update(
        &mut self,
        labels: &TargetLabels,
        memory: &MemoryReport,
        events: u64,
        drops: &BTreeMap<&'static str, u64>,
    ) {
        let bytes = [
            Some(memory.rss.rss_bytes),
            memory.v8_heap_bytes,
            memory.external_bytes,
            memory.native_bytes,
            Some(memory.other_bytes),
        ];
        for (area, value) in AREAS.iter().zip(bytes) {
            // An area not measured (native without --native, heap before V8's first GC)
            // has no series rather than a misleading 0.
            if let Some(v) = value {
                self.memory.with_label_values(&labels.with(area)).set(v as f64);
            }
        }
        let growth = [
            Some(memory.rss_growth_bytes_per_s),
            memory.v8_heap_bytes.map(|_| memory.v8_heap_growth_bytes_per_s),
            memory.external_bytes.map(|_| memory.external_growth_bytes_per_s),
        ];
        for (area, value) in AREAS.iter().zip(growth) {
            if let Some(v) = value {
                self.growth.with_label_values(&labels.with(area)).set(v);
            }
        }
        let key = labels.0.to_vec();
        let last = self.last_events.entry(key.clone()).or_default();
        self.events.with_label_values(&labels.plain()).inc_by(events.saturating_sub(*last));
        *last = events.max(*last);
        for (reason, n) in drops {
            let last = self.last_drops.entry((key.clone(), reason)).or_default();
            self.drops.with_label_values(&labels.with(reason)).inc_by(n.saturating_sub(*last));
            *last = (*n).max(*last);
        }
    }

    /// Removes every series of a process that went away.
    pub fn remove(&mut self, labels: &TargetLabels) {
        for kind in GcKind::ALL {
            let _ = self.gc_pause.remove_label_values(&labels.with(kind.name()));
        }
        for area in AREAS {
            let _ = self.memory.remove_label_values(&labels.with(area));
            let _ = self.growth.remove_label_values(&labels.with(area));
        }
        let _ = self.events.remove_label_values(&labels.plain());
        for family in FAMILIES {
            let _ = self.probes_up.remove_label_values(&labels.with(family));
        }
        for reason in DropReason::ALL {
            let _ = self.drops.remove_label_values(&labels.with(reason.name()));
        }
        self.clear_verdict(labels);
        let key = labels.0.to_vec();
        self.last_events.remove(&key);
        self.last_drops.retain(|(k, _), _| *k != key);
    }

    /// Replaces one process's verdict series with what `report` judges: each judged
    /// category's growth, its top suspects, and the census's top growing types (in a growing
    /// category) with their holders.
    pub fn set_verdict(&mut self, labels: &TargetLabels, report: &Report) {
        self.set_judged(labels, &report.verdict, &report.suspects, report.heap.census.as_ref());
    }

    /// [`Self::set_verdict`] from the report's parts.
    fn set_judged(
        &mut self,
        labels: &TargetLabels,
        verdict: &[CategoryVerdict],
        suspects: &[Suspect],
        census: Option<&CensusReport>,
    ) {
        self.clear_verdict(labels);
        let mut set: Vec<(VerdictFamily, Vec<String>, f64)> = Vec::new();
        let target = || labels.0.to_vec();
        for v in verdict.iter().filter(|v| v.method != NOT_JUDGED) {
            let isolate = v.worker.as_ref().map_or("main".to_string(), |w| format!("worker-{}", w.tid));
            let mut l = target();
            l.extend([category_label(v.category).to_string(), isolate]);
            set.push((VerdictFamily::Category, l, if v.growing { v.growth_bytes_per_s } else { 0.0 }));
        }
        for (rank, s) in suspects.iter().take(TOP_VERDICT).enumerate() {
            let frame = site_frame(&s.frames);
            let mut l = target();
            l.extend([
                (rank + 1).to_string(),
                category_label(s.category).to_string(),
                frame.map_or_else(String::new, |f| f.name.clone()),
                frame.and_then(|f| f.file.clone()).unwrap_or_default(),
                frame.and_then(|f| f.line).map_or_else(String::new, |l| l.to_string()),
            ]);
            set.push((VerdictFamily::Suspect, l, s.growth_bytes_per_s));
        }
        let grows = |c: Category| verdict.iter().any(|v| v.growing && v.category == c);
        // Where the V8 heap could not be judged yet (too few full GCs), a type the census saw
        // grow is shown only with a proven holder, as the summary says it and as an array's
        // site is a suspect then: its chain proves it is held, whatever the heap's size did.
        let heap_unjudged = verdict
            .iter()
            .any(|v| v.category == Category::V8Heap && v.worker.is_none() && v.method == NOT_JUDGED);
        if let Some(census) = census {
            let shown = census.growing.iter().filter(|g| {
                let heap = grows(Category::V8Heap) || (heap_unjudged && proven(g).is_some());
                match g.kind {
                    Kind::ArrayBuffer => grows(Category::External) || heap,
                    Kind::Handle => grows(Category::Native) || heap,
                    Kind::System => false,
                    _ => heap,
                }
            });
            for (rank, g) in shown.take(TOP_VERDICT).enumerate() {
                let holder = proven(g).and_then(|r| r.holder.clone());
                let mut l = target();
                l.extend([(rank + 1).to_string(), g.label.clone(), holder.unwrap_or_default()]);
                set.push((VerdictFamily::Growing, l, g.count_per_s));
            }
        }
        let mut kept = Vec::new();
        for (family, l, value) in set {
            let values: Vec<&str> = l.iter().map(String::as_str).collect();
            self.verdict_family(family).with_label_values(&values).set(value);
            kept.push((family, l));
        }
        self.verdict_series.insert(labels.0.to_vec(), kept);
    }

    /// Removes one process's verdict series.
    fn clear_verdict(&mut self, labels: &TargetLabels) {
        for (family, l) in self.verdict_series.remove(labels.0.as_slice()).unwrap_or_default() {
            let values: Vec<&str> = l.iter().map(String::as_str).collect();
            let _ = self.verdict_family(family).remove_label_values(&values);
        }
    }

    fn verdict_family(&self, family: VerdictFamily) -> &prometheus::GaugeVec {
        match family {
            VerdictFamily::Category => &self.verdict_growth,
            VerdictFamily::Suspect => &self.suspect_growth,
            VerdictFamily::Growing => &self.growing_objects,
        }
    }

    /// Counts a process the agent could not attach to.
    pub fn attach_error(&self) {
        self.attach_errors.inc();
    }

    /// Sets how many processes are watched.
    pub fn set_targets(&self, n: usize) {
        self.targets.set(n as i64);
    }

    /// The exposition in Prometheus text format.
    pub fn encode(&self) -> String {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}

/// The chain that proves who holds a growing type: complete, and holding enough samples to hold
/// its growth.
fn proven(g: &GrowingType) -> Option<&RetainedBy> {
    g.retained_by.iter().find(|r| r.complete && r.holds_growth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::rss::Rss;

    fn labels(pid: &str) -> TargetLabels {
        TargetLabels([pid.into(), "node".into(), "v20.1.0".into(), String::new(), String::new(), "n1".into()])
    }

    fn memory(rss: u64) -> MemoryReport {
        let sample = crate::memory::rss::Sample {
            trough: None,
            t_s: 0.0,
            rss: Rss { rss_bytes: rss, rss_anon_bytes: rss, rss_file_bytes: 0, rss_shmem_bytes: 0 },
            v8_heap_bytes: Some(rss / 2),
            v8_old_generation_bytes: None,
            v8_worker_heaps_bytes: None,
            external_bytes: None,
            native_bytes: None,
        };
        MemoryReport::new(&[sample])
    }

    #[test]
    fn series_appear_advance_and_go() {
        let mut m = Metrics::new().unwrap();
        let a = labels("1");
        m.observe_pauses(&a, &[(GcKind::Scavenge, 0.002), (GcKind::MarkCompact, 0.02)]);
        m.set_probes_up(&a, &[("gc", false), ("syscalls", true)]);
        m.update(&a, &memory(1000), 5, &BTreeMap::from([("ringbuf_full", 2)]));
        m.update(&a, &memory(2000), 7, &BTreeMap::from([("ringbuf_full", 3)]));
        let text = m.encode();
        assert!(text.contains(r#"leakprobe_gc_pause_seconds_count{comm="node",container_id="",kind="scavenge",node="n1",node_version="v20.1.0",pid="1",pod_uid=""} 1"#), "{text}");
        assert!(text.contains(r#"area="rss",comm="node",container_id="",node="n1",node_version="v20.1.0",pid="1",pod_uid=""} 2000"#), "{text}");
        assert!(text.contains(r#"area="v8_heap""#), "{text}");
        assert!(!text.contains(r#"area="external""#), "an area not measured has no series: {text}");
        assert!(text.contains(r#"leakprobe_events_total{comm="node",container_id="",node="n1",node_version="v20.1.0",pid="1",pod_uid=""} 7"#), "{text}");
        assert!(text.contains(r#"pod_uid="",reason="ringbuf_full"} 3"#), "{text}");
        assert!(text.contains(r#"leakprobe_probes_up{comm="node",container_id="",family="gc",node="n1",node_version="v20.1.0",pid="1",pod_uid=""} 0"#), "{text}");
        assert!(
            text.contains(r#"family="syscalls",node="n1",node_version="v20.1.0",pid="1",pod_uid=""} 1"#),
            "{text}"
        );
        m.remove(&a);
        let text = m.encode();
        assert!(!text.contains(r#"pid="1""#), "{text}");
    }

    fn verdict(category: Category, growing: bool, method: &'static str) -> CategoryVerdict {
        CategoryVerdict {
            category,
            bytes: Some(100 << 20),
            growth_bytes_per_s: 2e6,
            troughs: 5,
            method,
            watch_s: None,
            trend_t: None,
            growing,
            levelled_off: false,
            explained_share: 0.9,
            next_step: None,
            worker: None,
        }
    }

    fn suspect(function: &str, line: u32) -> Suspect {
        use crate::stacks::frame::{Frame, FrameKind};
        let frame = |name: &str, kind, file: Option<&str>, line| Frame {
            name: name.into(),
            kind,
            addr: 0,
            file: file.map(Into::into),
            line,
            note: None,
        };
        Suspect {
            growth_bytes_per_s: 1.8e6,
            frames: vec![
                frame("v8::internal::Factory::NewFixedArray", FrameKind::Native, None, None),
                frame("push", FrameKind::Js, Some("node:internal/fixed_queue"), Some(3)),
                frame(function, FrameKind::Js, Some("/app/log.js"), Some(line)),
            ],
            ..Suspect::site(Category::V8Heap, crate::books::suspect::Source::Holds, function.into())
        }
    }

    fn census(holder: &str) -> CensusReport {
        let growing = |kind, label: &str| GrowingType {
            heap: "0x1".into(),
            kind,
            label: label.into(),
            count: 10_000,
            count_delta: 5_000,
            bytes_delta: 1 << 20,
            count_per_s: 500.0,
            bytes_per_s: 1e5,
            retained_by: vec![RetainedBy {
                text: format!("{holder} (Array, 10,000 elements) ← module scope of log.js"),
                holder: Some(holder.into()),
                samples: 20,
                sampled: 24,
                complete: true,
                holds_growth: true,
            }],
            searched: None,
        };
        CensusReport {
            censuses: 3,
            growing: vec![growing(Kind::Object, "LogEntry"), growing(Kind::ArrayBuffer, "ArrayBuffer")],
            ..Default::default()
        }
    }

    /// A verdict's series name the suspect by its innermost frame of the program's own
    /// JavaScript, and the growing types of a growing category with their holders; the next
    /// verdict replaces them, and a process that goes away loses them.
    #[test]
    fn verdict_series_are_replaced_by_the_next_verdict() {
        let mut m = Metrics::new().unwrap();
        let a = labels("1");
        let judged =
            [verdict(Category::V8Heap, true, "troughs"), verdict(Category::External, false, "troughs")];
        m.set_judged(&a, &judged, &[suspect("record", 12)], Some(&census("requestLog")));
        let text = m.encode();
        let suspect_line = r#"leakprobe_suspect_growth_bytes_per_second{category="v8_heap",comm="node",container_id="",file="/app/log.js",function="record",line="12",node="n1",node_version="v20.1.0",pid="1",pod_uid="",rank="1"} 1800000"#;
        assert!(text.contains(suspect_line), "{text}");
        assert!(text.contains(r#"holder="requestLog",node="n1",node_version="v20.1.0",pid="1",pod_uid="",rank="1",type="LogEntry"} 500"#), "{text}");
        assert!(text.contains(r#"leakprobe_verdict_growth_bytes_per_second{category="external""#), "{text}");
        assert!(
            text.contains(r#"isolate="main",node="n1",node_version="v20.1.0",pid="1",pod_uid=""} 0"#),
            "{text}"
        );
        // The next verdict replaces the last: the heap judged flat, external not judged yet (no
        // series at all), the native memory growing; the growing objects of a flat heap are
        // not said.
        let judged = [
            verdict(Category::V8Heap, false, "troughs"),
            verdict(Category::External, false, NOT_JUDGED),
            verdict(Category::Native, true, "floors"),
        ];
        let native = Suspect { category: Category::Native, ..suspect("append", 30) };
        m.set_judged(&a, &judged, &[native], Some(&census("auditLog")));
        let text = m.encode();
        assert!(!text.contains(r#"function="record""#), "{text}");
        assert!(
            text.contains(
                r#"{category="native",comm="node",container_id="",file="/app/log.js",function="append""#
            ),
            "{text}"
        );
        assert!(!text.contains("leakprobe_growing_objects_per_second{"), "{text}");
        assert!(!text.contains(r#"leakprobe_verdict_growth_bytes_per_second{category="external""#), "{text}");
        m.remove(&a);
        assert!(!m.encode().contains(r#"pid="1""#), "{}", m.encode());
    }

    /// A heap not judged yet (too few full GCs) shows the census's growing types whose holder
    /// is proven, as the summary says them; a type with no proven holder is not shown.
    #[test]
    fn a_heap_not_judged_yet_shows_growing_types_with_a_proven_holder_only() {
        let mut m = Metrics::new().unwrap();
        let a = labels("1");
        let judged = [verdict(Category::V8Heap, false, NOT_JUDGED)];
        let mut found = census("requestLog");
        found.growing[1].retained_by[0].holds_growth = false;
        m.set_judged(&a, &judged, &[suspect("record", 12)], Some(&found));
        let text = m.encode();
        assert!(text.contains(r#"holder="requestLog",node="n1",node_version="v20.1.0",pid="1",pod_uid="",rank="1",type="LogEntry"} 500"#), "{text}");
        assert!(!text.contains(r#"type="ArrayBuffer""#), "{text}");
        assert!(!text.contains("leakprobe_verdict_growth_bytes_per_second{"), "not judged: {text}");
    }
}
