//! `report.json`: the machine-readable result of a session (schema in docs/report.md).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    books::suspect::{StackProfile, Suspect},
    kernel::status::ProbeStatus,
    memory::external::ExternalReport,
    memory::faults::FaultReport,
    memory::gc::{GcStats, PauseEvent, PauseSummary},
    memory::heap::HeapReport,
    memory::native::NativeReport,
    memory::rss::MemoryReport,
    memory::syscalls::MappingsReport,
    process::target::Target,
    stacks::frame::Frame,
    verdict::CategoryVerdict,
};

/// Version of the report layout; bumped when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// Why the session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `--duration` elapsed.
    Duration,
    /// Ctrl-C or SIGTERM.
    Signal,
    /// The target process exited.
    TargetExited,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// leakprobe's own version.
    pub leakprobe_version: &'static str,
    /// The profiled process.
    pub target: TargetInfo,
    /// The observation window.
    pub window: Window,
    /// One entry per probe in the probe table.
    pub probes: Vec<ProbeStatus>,
    /// GC pauses.
    pub gc: GcReport,
    /// The RSS split and its history.
    pub memory: MemoryReport,
    /// The V8 heap's books.
    pub heap: HeapReport,
    /// Native allocations (null without `--native`).
    pub native: Option<NativeReport>,
    /// Anonymous mappings and the program break (RSS growth attribution).
    pub mappings: MappingsReport,
    /// Buffer/ArrayBuffer backing stores.
    pub external: ExternalReport,
    /// Sampled page faults (null when the faults family is not attached).
    pub faults: Option<FaultReport>,
    /// Each memory category's growth at GC troughs, and how much of it the suspects explain.
    pub verdict: Vec<CategoryVerdict>,
    /// Logical sites whose category grows and which still grew at the end of the window, by
    /// the share of the growth they explain (largest first).
    pub suspects: Vec<Suspect>,
    /// Every allocation stack's bytes (allocated, held now, held at mid-window): the data of
    /// the flamegraphs.
    pub stacks: Vec<StackProfile>,
    /// Events lost, by reason (every reason present, zero when none).
    pub drops: BTreeMap<&'static str, u64>,
}

/// `report.target`.
#[derive(Debug, Serialize)]
pub struct TargetInfo {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Executable path as the process sees it.
    pub exe: String,
    /// Module holding V8 (the executable or libnode.so).
    pub module: String,
    /// `v20.20.2`, or null when the binary does not say.
    pub node_version: Option<String>,
    /// How JavaScript frames are named: `"v8 metadata"`, `"perf map only (--no-v8-names)"`,
    /// or why they cannot be (`"unavailable: …"`). Either way the target's perf map names JIT
    /// frames V8's objects do not, when the target writes one (`--perf-basic-prof`); the rest
    /// are labelled `[JIT 0x…]` or by their builtin.
    pub js_frames: String,
}

/// `report.window`.
#[derive(Debug, Serialize)]
pub struct Window {
    /// Wall-clock start, seconds since the Unix epoch.
    pub start_unix_s: f64,
    /// Length of the window in seconds.
    pub duration_s: f64,
    /// Where the verdict's data starts, in seconds into the window: 0, or the start of the
    /// agent's rolling window (`--window`), before which its books forgot what they saw (GC
    /// pauses and totals since attach stay whole).
    pub judged_from_s: f64,
    /// Why it ended.
    pub stop_reason: StopReason,
}

/// `report.gc`.
#[derive(Debug, Serialize)]
pub struct GcReport {
    /// By kind: `scavenge`, `minor_ms`, `mark_compact`, always all three.
    pub pauses: BTreeMap<&'static str, PauseSummary>,
    /// By thread, main thread first, then by tid.
    pub threads: Vec<ThreadReport>,
    /// Pause counts by kind, then by V8's GC reason.
    pub reasons: BTreeMap<&'static str, BTreeMap<String, u64>>,
    /// Pauses whose collector value this leakprobe does not know.
    pub unknown_collector: u64,
    /// The pauses in order (at most `gc::MAX_EVENTS`).
    pub events: Vec<PauseEvent>,
    /// Pauses left out of `events` (they still count in every statistic).
    pub events_omitted: u64,
    /// The stacks that entered the most pauses (what allocation triggered the GCs).
    pub trigger_stacks: Vec<TriggerStack>,
}

/// `report.gc.trigger_stacks[]`.
#[derive(Debug, Serialize)]
pub struct TriggerStack {
    /// Pauses entered from this stack.
    pub pauses: u64,
    /// The stack, innermost frame first.
    pub frames: Vec<Frame>,
}

/// `report.gc.threads[]`.
#[derive(Debug, Serialize)]
pub struct ThreadReport {
    /// Thread id.
    pub tid: u32,
    /// Thread name when first seen.
    pub name: String,
    /// Whether this is the process's main thread (tid == pid).
    pub main: bool,
    /// Pauses of this thread by kind.
    pub pauses: BTreeMap<&'static str, PauseSummary>,
}

impl GcReport {
    /// Builds the GC section of the report for process `pid`.
    pub fn new(stats: &GcStats, pid: u32) -> Self {
        let mut threads: Vec<ThreadReport> = stats
            .threads
            .iter()
            .map(|(&tid, t)| ThreadReport {
                tid,
                name: t.name.clone(),
                main: tid == pid,
                pauses: t.pauses.summaries(),
            })
            .collect();
        threads.sort_by_key(|t| (!t.main, t.tid));
        GcReport {
            pauses: stats.pauses.summaries(),
            threads,
            reasons: stats.reasons.clone(),
            unknown_collector: stats.unknown_collector,
            events: stats.events.clone(),
            events_omitted: stats.events_omitted,
            trigger_stacks: Vec::new(),
        }
    }
}

impl TargetInfo {
    /// From a resolved target.
    pub fn new(target: &Target, js_frames: &str) -> Self {
        TargetInfo {
            js_frames: js_frames.to_string(),
            pid: target.pid,
            comm: target.comm.clone(),
            exe: target.exe.clone(),
            module: target.module_display.clone(),
            node_version: target.node_version.clone(),
        }
    }
}

impl Report {
    /// Writes `report.json` and `summary.txt` into `dir`, creating it, then the flamegraphs and
    /// pprof profiles ([`write_outputs`]). When those fail, the report is already written and the
    /// error says so.
    /// Returns the flamegraphs and profiles written beside `report.json` and `summary.txt`.
    pub fn write_to(&self, dir: &Path, summary: &str) -> anyhow::Result<Vec<PathBuf>> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self).context("serializing the report")?;
        let path = dir.join("report.json");
        fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        let path = dir.join("summary.txt");
        fs::write(&path, summary).with_context(|| format!("writing {}", path.display()))?;
        let value = serde_json::to_value(self).context("serializing the report")?;
        write_outputs(&value, dir).with_context(|| {
            format!(
                "{} was written, but not all of its flamegraphs and profiles",
                dir.join("report.json").display()
            )
        })
    }
}

/// Writes the flamegraph SVGs ([`crate::outputs::flamegraph`]) and pprof profiles ([`crate::outputs::pprof`]) of
/// a report into `dir` (which must exist), and `census.txt`; returns the files written. Both
/// are attempted; the first error is returned.
pub fn write_outputs(report: &serde_json::Value, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let svgs = crate::outputs::flamegraph::render_all(report, dir).context("rendering flamegraphs");
    let profiles = crate::outputs::pprof::write_all(report, dir).context("writing pprof profiles");
    let mut written = svgs?;
    written.extend(profiles?);
    if let Some(table) = crate::outputs::census::table(report) {
        let path = dir.join("census.txt");
        fs::write(&path, table).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The incident folder of `report` in memory, file by file as [`Report::write_to`] writes it:
/// report.json, summary.txt (`summary`), the flamegraphs, the pprof profiles, census.txt (the
/// agent's incidents, built where no file may be written).
pub fn incident_files(report: &Report, summary: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let json = serde_json::to_string_pretty(report).context("serializing the report")? + "\n";
    let value = serde_json::to_value(report).context("serializing the report")?;
    let mut files =
        vec![("report.json".to_string(), json.into_bytes()), ("summary.txt".into(), summary.into())];
    let svgs = crate::outputs::flamegraph::svgs(&value).context("rendering flamegraphs")?;
    let profiles = crate::outputs::pprof::profiles_gz(&value).context("writing pprof profiles")?;
    files.extend(svgs.into_iter().chain(profiles).filter_map(|(name, bytes)| Some((name, bytes?))));
    if let Some(table) = crate::outputs::census::table(&value) {
        files.push(("census.txt".into(), table.into_bytes()));
    }
    Ok(files)
}

/// `leakprobe render DIR`: reads `DIR/report.json` and (re)writes its flamegraphs and pprof
/// profiles next to it. Returns the files written.
pub fn render_dir(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    let path = dir.join("report.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let report: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    if !report.is_object() {
        anyhow::bail!("{} is not a leakprobe report (not a JSON object)", path.display());
    }
    write_outputs(&report, dir)
}
