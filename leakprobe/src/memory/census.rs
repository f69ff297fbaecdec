//! The heap census inside a profiling session (`report.heap.census`): a census of every
//! isolate's heap right after the first main-thread mark-compact of the window, and again after
//! later ones (a worker's when the main thread has none), on a thread of its own. Between the first and the latest, the types that grew
//! and, for the fastest-growing, who holds them ([`crate::v8::heap::retainers::retainers`]).
//!
//! The census reads `/proc/PID/mem` while the target runs: nothing stops it, and the session's
//! sampling never waits for it (a mark-compact that comes while a census runs is skipped and
//! counted). Each census is capped in bytes and time and says when a cap stopped it. Censuses
//! are taken within a CPU budget: a share of the CPU time the target used since attach
//! ([`DEFAULT_BUDGET`]).

use std::{
    sync::{mpsc, Arc, Mutex, MutexGuard},
    time::Duration,
};

use serde::Serialize;

use crate::v8::heap::{
    census::{growing_types, growth, Census, Growth, Kind, Limits, Stopped},
    chain::RetainerSearch,
    reader::HeapReader,
};

/// Longest wait at the end of a session for a census under way.
pub const SETTLE: Duration = Duration::from_secs(20);
/// Caps of one census (and of one retainer search).
pub const LIMITS: Limits = Limits { max_bytes: 2 << 30, max_time: Duration::from_secs(10) };
/// Shortest time between two censuses.
const MIN_SPACING_S: f64 = 5.0;
/// The censuses' CPU budget by default: this share of the CPU time the target used since
/// attach (`--census-budget`), [`FIRST_MINUTE_FACTOR`] times as much of what it used in the
/// first minute. A census is due at a mark-compact only when what the censuses took so far,
/// plus what the next is expected to take, fits in it: from the first second, whatever the
/// window's length, and in proportion to the work the target does.
pub const DEFAULT_BUDGET: f64 = 0.01;
/// How much larger the budget's share of the target's first minute is: growth needs two
/// censuses, and an incident is often a 60 s window.
pub const FIRST_MINUTE_FACTOR: f64 = 3.0;
/// The first minute, in seconds.
const FIRST_MINUTE_S: f64 = 60.0;
/// What the first census is expected to take, per byte of the V8 heap (a release build read a
/// 106 MiB heap in 0.18 s of CPU: about 1.7 s per GiB).
const FIRST_CPU_S_PER_BYTE: f64 = 1.7 / (1u64 << 30) as f64;
/// Wait after a mark-compact before reading, so that the concurrent sweeper is done.
const AFTER_GC: Duration = Duration::from_millis(150);
/// Growing types listed (and searched for retainers: the first [`RETAINED`]).
const LISTED: usize = 10;
const RETAINED: usize = 3;

/// `report.heap.census`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CensusReport {
    /// `waiting for a main-thread mark-compact`, `one census (growth needs two)`, `done`,
    /// or why it could not run.
    pub status: String,
    /// Censuses taken.
    pub censuses: u32,
    /// Mark-compacts that came while a census ran, or too soon after one (skipped).
    pub skipped_gcs: u32,
    /// When the first and the latest census were read (seconds since the window opened).
    pub first_t_s: Option<f64>,
    pub last_t_s: Option<f64>,
    /// Each isolate's heap in the latest census.
    pub isolates: Vec<IsolateHeap>,
    /// Types that gained most objects between the first and the latest census, per isolate.
    pub growing: Vec<GrowingType>,
    /// The latest retainer search's passes over the heap.
    pub retainer_passes: u32,
    /// Set when a cap stopped the latest census or retainer search early.
    pub stopped_early: Option<Stopped>,
    /// What the censuses cost the collector.
    pub cost: CensusCost,
}

/// One isolate's heap, from a census.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IsolateHeap {
    /// Address of its `Heap` (tells isolates apart; the main isolate's heap is usually the
    /// largest).
    pub heap: String,
    /// Taken for the main thread's isolate: the one whose `Heap` has the lowest address (node
    /// creates it first, from the main thread's allocator arena; workers' come from their
    /// threads' arenas, mapped higher). A heuristic, not read from V8.
    pub main: bool,
    /// Bytes of every page of its heap (old, young and large-object spaces).
    pub committed_bytes: u64,
    /// Live objects counted in the old generation, and their bytes.
    pub objects: u64,
    pub object_bytes: u64,
    /// Bytes of its objects gained per second from the first census to this one (absent
    /// before two, or for an isolate the first did not see).
    pub object_bytes_per_s: Option<f64>,
    /// The user's scripts it compiled (not node's own), by name: what a worker's isolate runs.
    pub scripts: Vec<String>,
}

/// A type that grew between two censuses, with who holds it.
#[derive(Clone, Debug, Serialize)]
pub struct GrowingType {
    /// The isolate's heap.
    pub heap: String,
    /// As in the census.
    pub kind: Kind,
    pub label: String,
    /// Objects in the latest census.
    pub count: u64,
    /// Objects and bytes gained.
    pub count_delta: i64,
    pub bytes_delta: i64,
    /// Per second over the censuses' interval.
    pub count_per_s: f64,
    pub bytes_per_s: f64,
    /// Its retainer chains, most samples first (searched for the first few types only).
    pub retained_by: Vec<RetainedBy>,
    /// How its samples fared, where it was searched.
    pub searched: Option<Searched>,
}

/// The samples of a growing type a retainer search looked for.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Searched {
    /// Samples searched.
    pub sampled: u32,
    /// Samples that had moved or died since the census (not searched).
    pub stale: u32,
    /// Samples for which no holder was found.
    pub unexplained: u32,
}

/// One retainer chain of a growing type.
#[derive(Clone, Debug, Serialize)]
pub struct RetainedBy {
    /// `requestLog (Array, 412,000 elements) ← module scope of access-log.js`.
    pub text: String,
    /// The nearest named holder (variable or property).
    pub holder: Option<String>,
    /// Samples held through it, of `sampled`.
    pub samples: u32,
    pub sampled: u32,
    /// It reaches a scope's variable or a timer list.
    pub complete: bool,
    /// It holds enough of the samples to hold the type's growth ([`holds_growth`]): only then
    /// is its holder named as the growth's (the summary, the metrics); otherwise it is a true
    /// chain of a few of the type's older objects (a table of 256 strings among thousands),
    /// listed in census.txt only.
    pub holds_growth: bool,
}

/// Whether a chain that holds `samples` of the `sampled` objects of a type can hold that type's
/// growth of `gained` objects to `count`: the samples are drawn evenly from all `count`, and a
/// holder of the growth holds every gained object still alive, so at least `gained / count`
/// of them are expected; half that share (sampling's luck) is asked for, and two samples.
pub fn holds_growth(samples: u32, sampled: u32, gained: i64, count: u64) -> bool {
    let share = (gained.max(0) as f64 / count.max(1) as f64).min(1.0);
    let needed = (0.5 * share * sampled as f64).ceil().max(2.0_f64.min(sampled as f64));
    samples as f64 >= needed
}

/// The collector's cost.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CensusCost {
    /// CPU time of the census thread (all censuses and retainer searches).
    pub cpu_s: f64,
    /// Bytes read from the target.
    pub bytes_read: u64,
    /// The latest census's wall time and bytes read.
    pub last_census_ms: f64,
    pub last_census_bytes: u64,
    /// The latest retainer search's wall time.
    pub last_retainers_ms: f64,
    /// CPU time of the latest request (its census and retainer search).
    pub last_cpu_s: f64,
    /// The budget: this share of the target's CPU time since attach, [`FIRST_MINUTE_FACTOR`]
    /// times as much of its first minute's.
    pub budget_share: f64,
    /// The target's CPU time since attach, at the latest mark-compact.
    pub target_cpu_s: f64,
    /// Main-thread mark-compacts at which no census was taken because it did not fit the budget.
    pub over_budget_gcs: u32,
}

/// What the census thread shares with the session.
#[derive(Default)]
struct Shared {
    report: CensusReport,
    /// The census growth is read from, and when.
    first: Option<(f64, Census)>,
    /// With a window (the agent's), the census that becomes `first` once `first` is older
    /// than the window: one taken at least half a window after it.
    next_first: Option<(f64, Census)>,
    /// The rolling window (seconds), if any: growth is read over at least half of it and at
    /// most one and a half.
    window: Option<f64>,
    busy: bool,
}

/// Censuses taken on their own thread when the session sees a main-thread mark-compact.
pub struct CensusWatch {
    requests: mpsc::Sender<f64>,
    shared: Arc<Mutex<Shared>>,
    last_request: Option<f64>,
    /// The target, and its CPU time when the census was started (and when).
    pid: u32,
    target_cpu_at_start: f64,
    started: std::time::Instant,
}

impl CensusWatch {
    /// Starts the census thread for process `pid`, reading with `probe` (or, when the process
    /// could not be opened for censuses, saying why at the first census), within `budget_share`
    /// of the target's CPU time from now; with a `window` (seconds), growth is read over about
    /// the last window instead of since the first census.
    pub fn start(
        probe: Result<HeapReader, String>,
        pid: u32,
        budget_share: f64,
        window: Option<f64>,
    ) -> anyhow::Result<Self> {
        let (requests, rx) = mpsc::channel::<f64>();
        let shared = Arc::new(Mutex::new(Shared {
            report: CensusReport {
                status: "waiting for a main-thread mark-compact".into(),
                cost: CensusCost { budget_share, ..Default::default() },
                ..Default::default()
            },
            window,
            ..Default::default()
        }));
        let state = shared.clone();
        std::thread::Builder::new()
            .name("leakprobe-census".into())
            .spawn(move || run(probe, rx, state))
            .map_err(|e| anyhow::anyhow!("starting the census thread: {e}"))?;
        let target_cpu_at_start = process_cpu_s(pid).unwrap_or(0.0);
        let started = std::time::Instant::now();
        Ok(Self { requests, shared, last_request: None, pid, target_cpu_at_start, started })
    }

    /// Called when a thread of the target ended a mark-compact, `t` seconds into the window,
    /// with the V8 heap's size (`heap_bytes`, if known): asks for a census unless one runs, the
    /// last was too recent, or the next would not fit the budget. The main thread's are the
    /// troughs the census is read at; a worker's counts only when the main thread has had none
    /// for twice the spacing (a worker's leak beside a quiet main thread).
    pub fn on_mark_compact(&mut self, t: f64, main_thread: bool, heap_bytes: Option<u64>) {
        let mut shared = lock(&self.shared);
        let since = t - self.last_request.unwrap_or(0.0);
        let due = match main_thread {
            true => self.last_request.is_none() || since >= MIN_SPACING_S,
            false => since >= 2.0 * MIN_SPACING_S,
        };
        if shared.busy || !due {
            if self.last_request.is_some() {
                shared.report.skipped_gcs += 1;
            }
            return;
        }
        let report = &mut shared.report;
        let cost = &mut report.cost;
        if let Some(now) = process_cpu_s(self.pid) {
            cost.target_cpu_s = (now - self.target_cpu_at_start).max(0.0);
        }
        let next = match report.censuses {
            0 => heap_bytes.unwrap_or(0) as f64 * FIRST_CPU_S_PER_BYTE,
            _ => cost.last_cpu_s,
        };
        let budget = budget_s(cost.budget_share, cost.target_cpu_s, self.started.elapsed().as_secs_f64());
        if cost.cpu_s + next > budget {
            cost.over_budget_gcs += u32::from(main_thread);
            if report.censuses == 0 {
                report.status = format!(
                    "waiting for its CPU budget ({:.0}% of the target's CPU time since attach, {:.0}% of its first minute's)",
                    100.0 * cost.budget_share,
                    100.0 * (FIRST_MINUTE_FACTOR * cost.budget_share).min(1.0)
                );
            }
            return;
        }
        shared.busy = true;
        self.last_request = Some(t);
        drop(shared);
        let _ = self.requests.send(t);
    }

    /// `report.heap.census` now.
    pub fn report(&self) -> CensusReport {
        lock(&self.shared).report.clone()
    }

    /// Waits (at most `timeout`) for a census under way to finish, for the final report; when
    /// it does not, its status says so.
    pub fn settle(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while lock(&self.shared).busy && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut shared = lock(&self.shared);
        if shared.busy {
            shared.report.status =
                format!("{} (a census was still under way when the session ended)", shared.report.status);
        }
    }
}

/// The shared state, even if the census thread panicked while holding it.
fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the one we pass.
    match unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } {
        0 => ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9,
        _ => 0.0,
    }
}

/// The census thread: one census per request, then growth and retainers since the first.
fn run(probe: Result<HeapReader, String>, requests: mpsc::Receiver<f64>, shared: Arc<Mutex<Shared>>) {
    let mut p = match probe {
        Ok(p) => p,
        Err(why) => {
            // Nothing will work: say why at the first request, and leave the thread (later
            // requests are dropped).
            if requests.recv().is_ok() {
                let mut s = lock(&shared);
                s.report.status = format!("not available: {why}");
                s.busy = false;
            }
            return;
        }
    };
    while let Ok(t) = requests.recv() {
        std::thread::sleep(AFTER_GC);
        let cpu = thread_cpu_s();
        let census = p.census(LIMITS);
        let census = match census {
            Ok(c) if c.pages_found > 0 => c,
            Ok(_) => {
                finish(&shared, cpu, |r| {
                    r.status = "no V8 heap page found (not node 18–24's page headers)".into()
                });
                continue;
            }
            Err(e) => {
                finish(&shared, cpu, |r| r.status = format!("census failed: {e:#}"));
                continue;
            }
        };
        let first = {
            let mut guard = lock(&shared);
            let s = &mut *guard;
            let r = &mut s.report;
            r.censuses += 1;
            r.cost.bytes_read += census.bytes_read;
            r.cost.last_census_ms = census.elapsed_ms;
            r.cost.last_census_bytes = census.bytes_read;
            r.stopped_early = census.stopped_early;
            r.isolates = isolates(&census);
            if s.first.is_some() {
                r.status = format!("census {} read; growth and retainers under way", r.censuses);
            }
            // The window rolls: growth is read from a later census once the first is too old.
            if let (Some(window), Some((t0, _))) = (s.window, &s.first) {
                if t - t0 > window && s.next_first.is_some() {
                    s.first = s.next_first.take();
                    r.first_t_s = s.first.as_ref().map(|f| f.0);
                }
            }
            let first = s.first.as_ref().map(|(t0, first)| (*t0, growth(first, &census, t - *t0)));
            if let Some((t0, before)) = &s.first {
                for i in &mut r.isolates {
                    let then = before.isolates.iter().find(|b| b.heap == i.heap);
                    i.object_bytes_per_s = then
                        .filter(|_| t > *t0)
                        .map(|b| (i.object_bytes as f64 - b.object_bytes as f64) / (t - *t0));
                }
            }
            first
        };
        let Some((t0, growth)) = first else {
            finish(&shared, cpu, |r| {
                r.status = "one census (growth needs two)".into();
                r.first_t_s = Some(t);
            });
            lock(&shared).first = Some((t, counts_only(census)));
            continue;
        };
        // The fastest-growing types; and the ArrayBuffers and the native handles that grew
        // most (what keeps external and native memory), searched for retainers.
        let mut wanted = growing_types(&growth, RETAINED);
        for kind in [Kind::ArrayBuffer, Kind::Handle] {
            if let Some(g) = growth.iter().find(|g| g.kind == kind && g.count_delta > 0) {
                let key = (g.heap.clone(), g.kind, g.label.clone());
                if !wanted.contains(&key) {
                    wanted.push(key);
                }
            }
        }
        let found = p.retainers(&census, &wanted, LIMITS).ok();
        {
            let mut s = lock(&shared);
            if s.window.is_some_and(|w| t - t0 >= w / 2.0) && s.next_first.is_none() {
                s.next_first = Some((t, counts_only(census)));
            }
        }
        finish(&shared, cpu, |r| {
            r.status = "done".into();
            r.last_t_s = Some(t);
            r.growing = growing(&growth, found.as_ref(), t - t0);
            if let Some(found) = &found {
                r.retainer_passes = found.passes;
                r.cost.bytes_read += found.bytes_read;
                r.cost.last_retainers_ms = found.elapsed_ms;
                r.stopped_early = r.stopped_early.or(found.stopped_early);
            }
        });
    }
}

/// A census kept to read growth from: its counts, without the samples of each type's
/// addresses (a retainer search reads the latest census's).
fn counts_only(census: Census) -> Census {
    Census { samples: Default::default(), ..census }
}

/// The censuses' budget (CPU seconds) when the target used `target_cpu_s` in the `elapsed_s`
/// since attach: `share` of it, and [`FIRST_MINUTE_FACTOR`] times as much of the part used in
/// the first minute (taken as used evenly).
fn budget_s(share: f64, target_cpu_s: f64, elapsed_s: f64) -> f64 {
    let first = target_cpu_s * (FIRST_MINUTE_S / elapsed_s.max(FIRST_MINUTE_S));
    (FIRST_MINUTE_FACTOR * share).min(1.0) * first + share * (target_cpu_s - first)
}

/// CPU time (user + system, all threads) process `pid` used, from `/proc/PID/stat`.
fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // After the name: utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: plain libc call.
    Some(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

/// Ends one request: adds its CPU time, applies `update`, frees the thread for the next.
fn finish(shared: &Mutex<Shared>, cpu_before: f64, update: impl FnOnce(&mut CensusReport)) {
    let mut s = lock(shared);
    let spent = (thread_cpu_s() - cpu_before).max(0.0);
    s.report.cost.cpu_s += spent;
    s.report.cost.last_cpu_s = spent;
    update(&mut s.report);
    s.busy = false;
}

/// Each isolate's heap in `census`.
fn isolates(census: &Census) -> Vec<IsolateHeap> {
    let address = |heap: &str| u64::from_str_radix(heap.trim_start_matches("0x"), 16).unwrap_or(u64::MAX);
    let main = census.isolates.iter().map(|i| address(&i.heap)).min();
    census
        .isolates
        .iter()
        .map(|i| IsolateHeap {
            heap: i.heap.clone(),
            main: Some(address(&i.heap)) == main,
            committed_bytes: i.committed_bytes,
            objects: i.objects,
            object_bytes: i.object_bytes,
            object_bytes_per_s: None,
            scripts: i.scripts.clone(),
        })
        .collect()
}

/// The growing JavaScript types (not V8's internal ones): the first [`LISTED`], and any other
/// that was searched (the ArrayBuffers and handles that grew most), with their chains where
/// searched.
fn growing(growth: &[Growth], found: Option<&RetainerSearch>, seconds: f64) -> Vec<GrowingType> {
    let searched = |g: &Growth| {
        found
            .and_then(|f| f.types.iter().find(|t| t.heap == g.heap && t.kind == g.kind && t.label == g.label))
    };
    growth
        .iter()
        .filter(|g| g.count_delta > 0 && g.kind != Kind::System)
        .enumerate()
        .filter(|(i, g)| *i < LISTED || searched(g).is_some())
        .map(|(_, g)| {
            let retained_by = searched(g)
                .map(|t| {
                    t.chains
                        .iter()
                        .map(|c| RetainedBy {
                            text: c.text.clone(),
                            holder: c.holder.clone(),
                            samples: c.samples,
                            sampled: t.sampled,
                            complete: c.complete,
                            holds_growth: holds_growth(c.samples, t.sampled, g.count_delta, g.count),
                        })
                        .collect()
                })
                .unwrap_or_default();
            GrowingType {
                heap: g.heap.clone(),
                kind: g.kind,
                label: g.label.clone(),
                count: g.count,
                count_delta: g.count_delta,
                bytes_delta: g.bytes_delta,
                count_per_s: g.count_per_s,
                bytes_per_s: if seconds > 0.0 { g.bytes_delta as f64 / seconds } else { 0.0 },
                retained_by,
                searched: searched(g).map(|t| Searched {
                    sampled: t.sampled,
                    stale: t.stale,
                    unexplained: t.unexplained,
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A holder of a type's growth holds the gained objects: the chain the most samples share
    /// is not its holder when it holds fewer than the growth's share of them would give.
    #[test]
    fn a_chain_holds_a_growth_only_with_its_share_of_the_samples() {
        // A healthy service's strings: 16,000 gained to 50,000, and node's querystring table
        // of 256 strings led the chains with 3 of 24 samples.
        assert!(!holds_growth(3, 24, 16_000, 50_000));
        assert!(holds_growth(4, 24, 16_000, 50_000));
        // A module-level array of records, nearly all of them gained since the first census.
        assert!(holds_growth(22, 24, 110_000, 130_000));
        assert!(!holds_growth(9, 24, 110_000, 130_000));
        // However small the growth's share, one sample alone names no holder...
        assert!(!holds_growth(1, 24, 10, 1_000_000));
        assert!(holds_growth(2, 24, 10, 1_000_000));
        // ...unless one was all there was to search.
        assert!(holds_growth(1, 1, 10, 1_000_000));
    }

    /// The censuses' budget is a share of what the target used since attach, three times as
    /// large in the first minute: on a target busy on one core, 1.8 s in its first minute at
    /// the default 1% (a census and retainer search of a 100 MiB heap take about 0.6 s), then
    /// 0.6 s a minute; on a target that is mostly idle, little.
    #[test]
    fn a_census_takes_a_bounded_share_of_the_targets_cpu_since_attach() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(budget_s(DEFAULT_BUDGET, 30.0, 30.0), 0.9));
        assert!(close(budget_s(DEFAULT_BUDGET, 60.0, 60.0), 1.8));
        assert!(close(budget_s(DEFAULT_BUDGET, 120.0, 120.0), 2.4));
        assert!(close(budget_s(DEFAULT_BUDGET, 6.0, 60.0), 0.18), "a target 10% busy");
        // A budget of half the target's CPU is at most all of it in the first minute.
        assert!(close(budget_s(0.5, 60.0, 60.0), 60.0));
        // The first census of a 100 MiB heap is expected to take about 0.17 s.
        let first = 100.0 * (1u64 << 20) as f64 * FIRST_CPU_S_PER_BYTE;
        assert!((0.16..0.17).contains(&first), "{first}");
        assert!(process_cpu_s(std::process::id()).is_some_and(|s| s >= 0.0));
        assert_eq!(process_cpu_s(u32::MAX), None);
    }
}
