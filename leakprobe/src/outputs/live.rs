//! The human view: the live terminal summary and `summary.txt`.

use std::fmt::Write as _;

use crate::{
    books::suspect::{Category, Source, Suspect},
    memory::census::{CensusReport, GrowingType, RetainedBy, Searched},
    memory::gc::{ByKind, GcKind},
    memory::rss::Sample,
    outputs::census::retained_by,
    outputs::report::Report,
    outputs::units::{mib, rate_mib},
    stacks::frame::{Frame, FrameKind},
    v8::heap::contents::Container,
    v8::heap::{census::Kind, chain::thousands, walk::short_file},
    verdict::{CategoryVerdict, WorkerIsolate},
};

/// ANSI: cursor home, clear screen.
pub const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// The multi-line summary shown live on a terminal and written as `summary.txt`.
pub fn summary(report: &Report) -> String {
    let mut out = String::new();
    let t = &report.target;
    let _ = writeln!(
        out,
        "leakprobe  pid {} ({})  node {}  {:.1}s",
        t.pid,
        t.comm,
        t.node_version.as_deref().unwrap_or("unknown"),
        report.window.duration_s
    );
    let _ = writeln!(out, "\nGC pauses        count    total ms     p50 ms     p99 ms     max ms");
    for kind in GcKind::ALL {
        let s = &report.gc.pauses[kind.name()];
        let _ = writeln!(
            out,
            "  {:<13}{:>8}{:>12.2}{:>11.3}{:>11.3}{:>11.3}",
            kind.name(),
            s.count,
            s.total_ms,
            s.p50_ms,
            s.p99_ms,
            s.max_ms
        );
    }
    if !report.gc.threads.is_empty() {
        let _ = writeln!(out, "\nBy thread        scavenge  minor_ms  mark_compact   total ms");
        for th in &report.gc.threads {
            let label =
                if th.main { format!("{} (main)", th.tid) } else { format!("{} {}", th.tid, th.name) };
            let count = |k: GcKind| th.pauses[k.name()].count;
            let total: f64 = th.pauses.values().map(|p| p.total_ms).sum();
            let _ = writeln!(
                out,
                "  {:<15}{:>9}{:>10}{:>14}{:>11.2}",
                truncate(&label, 15),
                count(GcKind::Scavenge),
                count(GcKind::MinorMs),
                count(GcKind::MarkCompact),
                total
            );
        }
    }
    memory_split(&mut out, report);
    suspects(&mut out, report);
    let lost: u64 = report.drops.values().sum();
    let _ = writeln!(out, "\nEvents lost: {lost}");
    for (reason, n) in report.drops.iter().filter(|(_, n)| **n > 0) {
        let _ = writeln!(out, "  {reason}: {n}");
    }
    for p in report.probes.iter().filter(|p| !p.attached) {
        let _ = writeln!(
            out,
            "Probe not attached: {} ({}): {}",
            p.name,
            p.function,
            p.error.as_deref().unwrap_or("")
        );
    }
    out
}

/// What the one-line view shows, read from the session's books without building a report
/// (building one each interval was 6% of the session thread's CPU time in a profile).
pub struct Line<'a> {
    /// Seconds since attach.
    pub t_s: f64,
    /// GC pauses since attach.
    pub pauses: &'a ByKind,
    /// The latest memory sample.
    pub memory: Option<&'a Sample>,
    /// Events lost (every drop counter).
    pub lost: u64,
}

/// One line per interval, for logs and pipes.
pub fn line(l: &Line) -> String {
    let mut out = format!("t={:.0}s", l.t_s);
    for kind in GcKind::ALL {
        let s = l.pauses.get(kind);
        let _ = write!(out, " {}={} ({:.1}ms)", kind.name(), s.count(), s.total_ms());
    }
    let _ = write!(out, " rss={}MiB", mib(l.memory.map_or(0, |m| m.rss.rss_bytes)));
    if let Some(m) = l.memory {
        // Every isolate's V8 heap: the main one's and the workers', as V8 last reported them.
        if let Some(h) = m.v8_heap_bytes {
            let _ = write!(out, " v8_heap={}MiB", mib(h + m.v8_worker_heaps_bytes.unwrap_or(0)));
        }
        if let Some(e) = m.external_bytes {
            let _ = write!(out, " external={}MiB", mib(e));
        }
    }
    let _ = write!(out, " lost={}", l.lost);
    out
}

fn memory_split(out: &mut String, report: &Report) {
    let m = &report.memory;
    let part =
        |v: Option<u64>, why: &str| v.map_or_else(|| format!("{:>10}", why), |b| format!("{:>10}", mib(b)));
    let _ = writeln!(out, "\nMemory (MiB)      now     growth/s");
    let _ =
        writeln!(out, "  rss        {:>10} {:>12}", mib(m.rss.rss_bytes), rate_mib(m.rss_growth_bytes_per_s));
    let _ = writeln!(
        out,
        "  v8 heap    {} {:>12}{}",
        part(m.v8_heap_bytes, "awaiting GC"),
        rate_mib(m.v8_heap_growth_bytes_per_s),
        match m.v8_heap_isolates.len() {
            0 | 1 => String::new(),
            n => format!("  ({n} isolates; growth: main isolate)"),
        }
    );
    if m.v8_heap_isolates.len() > 1 {
        for i in &m.v8_heap_isolates {
            let _ = writeln!(
                out,
                "    {:<8}{:>10}   isolate heap {}",
                if i.main { "main" } else { "worker" },
                mib(i.committed_bytes),
                i.heap
            );
        }
    }
    let _ = writeln!(
        out,
        "  external   {} {:>12}",
        part(m.external_bytes, "n/a"),
        rate_mib(m.external_growth_bytes_per_s)
    );
    let _ = writeln!(out, "  native     {}", part(m.native_bytes, "n/a"));
    let _ = writeln!(out, "  code       {:>10}", mib(m.code_bytes));
    let _ = writeln!(out, "  other      {:>10}", mib(m.other_bytes));
}

fn suspects(out: &mut String, report: &Report) {
    let census = report.heap.census.as_ref();
    let growing: Vec<&CategoryVerdict> = report.verdict.iter().filter(|v| v.growing).collect();
    // Each growing type and each holder is said once, under the first category it explains.
    let mut said = Said::default();
    let _ = writeln!(out, "\nWhat grows (at GC troughs)");
    let unjudged = report.verdict.iter().any(|v| !v.growing && v.next_step.is_some());
    let levelled: Vec<&CategoryVerdict> = report.verdict.iter().filter(|v| v.levelled_off).collect();
    if growing.is_empty() && !unjudged && levelled.is_empty() {
        let _ = writeln!(out, "  nothing: the V8 heap, external and native memory are flat at GC troughs");
    }
    for v in levelled {
        let _ = writeln!(
            out,
            "  {:<9} grew {}/s, then levelled off over the last third (a cache that filled): not a leak",
            verdict_name(v),
            rate_mib(v.growth_bytes_per_s).trim()
        );
    }
    for v in report.verdict.iter().filter(|v| !v.growing && v.next_step.is_some()) {
        let _ = writeln!(
            out,
            "  {:<9} not judged: {}",
            verdict_name(v),
            v.next_step.as_deref().unwrap_or_default()
        );
        // The census counts objects, live or not yet collected, between two full GCs' aftermaths:
        // what it saw grow is said even where the heap's size could not be judged.
        if v.category == Category::V8Heap {
            census_lines(out, census, &mut said, |g| in_heap(g) && of_isolate(v, census, g));
        }
    }
    for v in &growing {
        let how = match v.method {
            "troughs" => format!("the trend of {} GC troughs", v.troughs),
            _ => "the floors of the last two thirds".into(),
        };
        // A worker's suspects are not told from the main thread's: its heap census says what
        // grows in it and who holds it.
        let explained = match v.worker {
            Some(_) => String::new(),
            None => format!(", {:.0}% explained by the suspects below", 100.0 * v.explained_share.max(0.0)),
        };
        let _ = writeln!(
            out,
            "  {:<9} {}/s ({how}{}){explained}",
            verdict_name(v),
            rate_mib(v.growth_bytes_per_s).trim(),
            if v.worker.is_some() { ", at its own full GCs" } else { "" },
        );
        if let Some(next) = &v.next_step {
            let _ = writeln!(out, "            not explained: {next}");
        }
        // The census says who keeps what grows: JavaScript objects in the heap, the
        // ArrayBuffers whose backing stores are external memory and the handles of native
        // objects (said under external and native when they grow: their few bytes in the heap
        // are not what grows).
        let grows = |c: Category| growing.iter().any(|g| g.category == c);
        let outside = (grows(Category::External), grows(Category::Native));
        census_lines(out, census, &mut said, |g| {
            said_under(v.category, outside, g) && (v.category != Category::V8Heap || of_isolate(v, census, g))
        });
    }
    if report.suspects.is_empty() {
        if !growing.is_empty() {
            let _ =
                writeln!(out, "\nLeak suspects: no named site explains the growth above (see its next step)");
        }
        return;
    }
    let _ = writeln!(out, "\nLeak suspects (sites that keep growing, by share of their category's growth)");
    for (i, s) in report.suspects.iter().take(5).enumerate() {
        let what = match (s.source, &s.holds) {
            (Source::PageFaults, _) => "first touched".to_string(),
            (Source::Allocations | Source::Mappings, _) => "held".to_string(),
            (Source::Holds, held) => format!(
                "held by the {} it grows",
                held.as_ref().map_or(Container::Array, |h| h.container).words().0
            ),
        };
        let explained = s.evidence.as_ref().map_or(String::new(), |e| match e.method {
            crate::verdict::NOT_JUDGED => {
                format!(" ({} not judged yet: not enough full GCs)", suspect_category(s))
            }
            _ => format!(", {:.0}% of {}'s growth", 100.0 * e.explained_share.min(1.0), suspect_category(s)),
        });
        let _ = writeln!(
            out,
            "  #{} {}: {} MiB {what}, {}/s{explained}{}",
            i + 1,
            suspect_category(s),
            mib(s.outstanding_bytes.max(0) as u64),
            rate_mib(s.growth_bytes_per_s).trim(),
            match s.variants.len() {
                0 | 1 => String::new(),
                n => format!(" ({n} stacks)"),
            }
        );
        if let Some(h) = &s.holds {
            let (container, elements) = h.container.words();
            let _ = writeln!(
                out,
                "       its {container} holds {} {elements}, each keeping about {} bytes",
                thousands(h.elements),
                thousands(h.bytes_per_element.round() as u64)
            );
        }
        for line in suspect_lines(&s.frames) {
            let _ = writeln!(out, "       {}", truncate(&line, 100));
        }
    }
}

/// The heap census's growing types that live in the V8 heap as the program's values.
fn in_heap(g: &GrowingType) -> bool {
    matches!(
        g.kind,
        Kind::Object | Kind::Array | Kind::Closure | Kind::String | Kind::ArrayBuffer | Kind::Handle
    )
}

/// Whether the census's growing type `g` is said under `category`'s verdict, where external
/// and native memory grow as `(external, native)` say: JavaScript objects under the V8 heap;
/// ArrayBuffers (whose backing stores are external memory) under external when it grows, and
/// native handles under native when it grows (their few bytes in the heap are not what
/// grows), else under the V8 heap.
fn said_under(category: Category, (external, native): (bool, bool), g: &GrowingType) -> bool {
    match category {
        Category::V8Heap => {
            in_heap(g) && !(external && g.kind == Kind::ArrayBuffer) && !(native && g.kind == Kind::Handle)
        }
        Category::External => g.kind == Kind::ArrayBuffer,
        Category::Native => g.kind == Kind::Handle,
        Category::Mapping => false,
    }
}

/// What the summary has said of the census: growing types (by heap and label) and holders
/// (by chain text).
#[derive(Default)]
struct Said {
    types: std::collections::HashSet<(String, String)>,
    holders: std::collections::HashSet<String>,
    /// Why the census has no growth to show yet, said once.
    census_status: bool,
}

/// Growing types of the heap census that `wanted` picks and that were not said yet (at most
/// three), each with its retainer chains not said yet ("Retained by" lines); when the census
/// has no growth yet (fewer than two censuses), its status, once.
fn census_lines(
    out: &mut String,
    census: Option<&CensusReport>,
    said: &mut Said,
    wanted: impl Fn(&GrowingType) -> bool,
) {
    let Some(census) = census else { return };
    if census.censuses < 2 && !std::mem::replace(&mut said.census_status, true) {
        let _ = writeln!(out, "            heap census: {}", census.status);
    }
    let growing: Vec<&GrowingType> = census
        .growing
        .iter()
        .filter(|g| wanted(g) && said.types.insert((g.heap.clone(), g.label.clone())))
        .take(3)
        .collect();
    if growing.is_empty() {
        return;
    }
    let span = match (census.first_t_s, census.last_t_s) {
        (Some(a), Some(b)) => format!("{:.0} s apart", b - a),
        _ => String::new(),
    };
    let _ = writeln!(out, "            heap census, {} censuses {span}:", census.censuses);
    for g in growing {
        let _ = writeln!(
            out,
            "              {:+.0}/s {} ({:+} objects, {}/s)",
            g.count_per_s,
            truncate(&g.label, 70),
            g.count_delta,
            rate_mib(g.bytes_per_s).trim()
        );
        // A chain too few samples follow to hold the growth is not said here (census.txt
        // lists it): one sample alone may have been read while the target ran, a few may be
        // older objects beside the growth. A holder is said once, whatever its counts.
        let shown: Vec<&RetainedBy> =
            g.retained_by.iter().filter(|r| r.holder.is_some() && r.holds_growth).collect();
        for r in shown
            .iter()
            .filter(|r| said.holders.insert(r.text.replace(|c: char| c.is_ascii_digit() || c == ',', "")))
            .take(2)
        {
            let note = if r.complete { "" } else { ", chain cut short" };
            let _ = writeln!(
                out,
                "                {}",
                retained_by(&truncate(&r.text, 110), r.samples, r.sampled, note)
            );
        }
        // A chain that holds the growth but reaches no name is said as it is; a type searched
        // with nothing to show says so, with its counts: never a guess.
        let unnamed = g.retained_by.iter().find(|r| r.holder.is_none() && r.holds_growth);
        match (shown.is_empty(), unnamed, g.searched) {
            (true, Some(r), _) => {
                let text = truncate(&r.text, 110);
                let _ = writeln!(
                    out,
                    "                {}",
                    retained_by(&text, r.samples, r.sampled, ", no named holder")
                );
            }
            (true, None, Some(s)) => {
                let _ = writeln!(out, "                {}", no_holder(s));
            }
            _ => {}
        }
    }
}

/// What the summary says of a searched type no chain holds enough samples of ([`RetainedBy::holds_growth`]).
fn no_holder(s: Searched) -> String {
    match (s.sampled, s.unexplained) {
        (0, _) => format!("Retained by: not searched ({} samples moved or died since the census)", s.stale),
        (n, u) if u == n => format!(
            "Retained by: no holder found for any of {n} samples (dead objects not collected yet, or holders in the young generation)"
        ),
        (n, u) => format!(
            "Retained by: no chain holds enough samples to hold the growth ({u} of {n} samples had none; \
             census.txt lists each chain)"
        ),
    }
}

/// Whether the census's growing type `g` lives in the isolate verdict `v` is about
/// ([`CategoryVerdict::takes`]): every isolate but the main one is a worker's (all are the main
/// one's where the census does not say which is main).
fn of_isolate(v: &CategoryVerdict, census: Option<&CensusReport>, g: &GrowingType) -> bool {
    let main = census.and_then(|c| c.isolates.iter().find(|i| i.main)).map(|i| i.heap.as_str());
    v.takes(Some(&g.heap), |h| main.is_some_and(|m| h != m))
}

/// A verdict as the summary names it: its category, and the worker thread it is about.
fn verdict_name(v: &CategoryVerdict) -> String {
    match &v.worker {
        Some(w) => worker_heap_name(w),
        None => category_name(v.category).into(),
    }
}

/// A worker's heap as the summary names it: its thread (id and name) and the scripts its
/// isolate compiled (file names, the first two).
fn worker_heap_name(w: &WorkerIsolate) -> String {
    let mut name = format!("v8 heap of worker thread {}", w.tid);
    if !w.name.is_empty() {
        let _ = write!(name, " ({})", w.name);
    }
    let files: Vec<&str> = w.scripts.iter().map(|s| short_file(s)).collect();
    match files.len() {
        0 => {}
        1 | 2 => {
            let _ = write!(name, " running {}", files.join(", "));
        }
        n => {
            let _ = write!(name, " running {}, {} and {} more", files[0], files[1], n - 2);
        }
    }
    name
}

/// A suspect's category as the summary names it, with the worker whose heap it was judged with.
fn suspect_category(s: &Suspect) -> String {
    match s.evidence.as_ref().and_then(|e| e.worker) {
        Some(tid) => format!("v8 heap of worker thread {tid}"),
        None => category_name(s.category).into(),
    }
}

/// A category as the summary names it.
fn category_name(c: Category) -> &'static str {
    match c {
        Category::External => "external",
        Category::V8Heap => "v8 heap",
        Category::Native => "native",
        Category::Mapping => "mappings",
    }
}

/// How a suspect's stack reads in the summary: the allocating entry point (the innermost
/// named frame: unnamed ones inside it, such as a libc `memset` without symbols where a page
/// faulted, are counted), then the JavaScript frames that led there, from the first of the
/// user's own (what the user can change; node's own `node:` frames before it and native
/// frames are counted, not listed); with no JavaScript frame, the innermost native frames.
/// Where the stack crossed to libuv's thread pool is kept.
fn suspect_lines(frames: &[Frame]) -> Vec<String> {
    let js = |f: &Frame| f.kind == FrameKind::Js;
    let node_js = |f: &Frame| js(f) && f.file.as_deref().is_some_and(|p| p.starts_with("node:"));
    let Some(start) = frames.iter().position(|f| js(f) && !node_js(f)).or_else(|| frames.iter().position(js))
    else {
        return frames.iter().take(6).map(|f| f.name.clone()).collect();
    };
    let entry = frames[..start].iter().position(|f| f.kind != FrameKind::Unknown).unwrap_or(0);
    // Hidden frames are counted by runs of what they are; the thread-pool crossing is listed.
    let what = |f: &Frame| match f.kind {
        FrameKind::Queued => None,
        FrameKind::Js => Some("frames of node's own JavaScript"),
        FrameKind::Unknown => Some("unnamed frames"),
        _ => Some("native frames"),
    };
    let hidden = |run: &[Frame]| match what(&run[0]) {
        Some(what) if run.len() == 1 => vec![format!("… 1 {}", what.replacen("frames", "frame", 1))],
        Some(what) => vec![format!("… {} {what}", run.len())],
        None => run.iter().map(|f| f.name.clone()).collect(),
    };
    // The unnamed frames inside the entry point are one run (they are all unnamed).
    let mut lines = if entry > 0 { hidden(&frames[..entry]) } else { Vec::new() };
    lines.push(frames[entry].name.clone());
    for run in frames.get(entry + 1..start).unwrap_or_default().chunk_by(|a, b| what(a) == what(b)) {
        lines.extend(hidden(run));
    }
    lines.extend(frames[start..].iter().filter(|f| js(f)).take(6).map(Frame::label));
    lines
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests;
