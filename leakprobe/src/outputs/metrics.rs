//! The agent's Prometheus metrics: one registry, series labelled by process, removed when the
//! process goes away.
//!
//! Names follow Prometheus conventions: base units in the name (`_seconds`, `_bytes`),
//! `_total` for counters. Label cardinality is bounded by the number of processes watched
//! (the agent's `--max-targets`) times the fixed sets of `kind`, `area` and `reason` values.

use std::collections::BTreeMap;

use anyhow::Context as _;
use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::{memory::gc::GcKind, memory::rss::MemoryReport};
use leakprobe_ebpf::drops::DropReason;

/// Labels that identify a watched process.
pub const TARGET_LABELS: [&str; 6] = ["pid", "comm", "node_version", "pod_uid", "container_id", "node"];

/// The areas of `leakprobe_memory_bytes` and `leakprobe_growth_bytes_per_second`.
pub const AREAS: [&str; 5] = ["rss", "v8_heap", "external", "native", "other"];

/// The values of `leakprobe_probes_up`'s `family` label.
pub const FAMILIES: [&str; 5] = ["gc", "heap", "external", "syscalls", "native"];

/// One watched process's label values, in [`TARGET_LABELS`] order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetLabels(pub [String; 6]);

impl TargetLabels {
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
        for c in [
            Box::new(gc_pause.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(memory.clone()),
            Box::new(growth.clone()),
            Box::new(events.clone()),
            Box::new(drops.clone()),
            Box::new(probes_up.clone()),
            Box::new(attach_errors.clone()),
            Box::new(targets.clone()),
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
        let key = labels.0.to_vec();
        self.last_events.remove(&key);
        self.last_drops.retain(|(k, _), _| *k != key);
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
}
