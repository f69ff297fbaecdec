//! The verdict: which memory category grows, read at GC troughs, and which logical sites
//! explain that growth. It reads the books ([`crate::books`]: series over the window, each
//! stack's tracker, logical sites, the suspect records) that the memory families keep
//! ([`crate::memory`], with the page-fault sites and the arrays a site grows); the outputs
//! read the result.
//!
//! - **What grows.** Each category (V8 heap, external, native) is read at the samples taken
//!   right after a main-thread mark-compact, once the ArrayBuffer sweeper has freed what the GC
//!   released ([`crate::memory::rss::Sample::trough`]). Garbage awaiting collection, and Buffers the
//!   GC frees lazily, are gone there: a bounded cache or steady churn leaves the troughs flat.
//!   Growth is their trend, and only from [`MIN_TROUGHS`] or more spanning at least
//!   [`MIN_TROUGH_SPAN`] of the later two thirds: two troughs of a saw-tooth (a table rebuilt
//!   and swapped in every few seconds) are not a trend. With fewer, the category is not judged
//!   yet and the summary says how long to watch ([`CategoryVerdict::watch_s`]). Nor is a trend
//!   that does not stand out of the troughs' own scatter ([`TREND_CONFIDENCE`]): a saw-tooth
//!   that a few GCs catch at random phases can trend as steeply as a leak.
//! - **Which line made it.** Stacks are grouped by logical site ([`crate::books::site::site_key`]): the same
//!   functions, scripts and lines, whatever JIT addresses or tiers. A site is a suspect only
//!   when its category grows; sampled page faults ([`crate::memory::faults`]) are judged by what each
//!   site kept touching in the later thirds of the window, allocation trackers by the floor of
//!   what each site holds.
//! - **What is not explained** is said, with the next step ([`CategoryVerdict::next_step`]).

use std::collections::HashSet;

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::{
    books::{
        series::{median_slope, slope_t},
        suspect::{Category, Evidence, Source, Suspect, MAX_SUSPECTS},
    },
    memory::census::CensusReport,
    memory::rss::{thirds, Sample},
    outputs::units::rate,
};

/// Troughs needed to read a category's growth from them.
pub const MIN_TROUGHS: usize = 3;
/// Share of the later two thirds of the window the troughs must span to make a trend.
pub const MIN_TROUGH_SPAN: f64 = 0.5;
/// What a category whose troughs are too few to judge is said to be.
pub const NOT_JUDGED: &str = "not enough GCs";
/// Share of a category's growth its troughs must still show over the window's last third (when
/// that third has [`MIN_TROUGHS`] of them): a cache that filled and levelled off has stopped.
pub const STILL_GROWING_SHARE: f64 = 0.25;
/// Share of a collected category's growth over the later two thirds by which its last third's
/// troughs must top its first third's: a bounded LRU's external troughs swung 18.5-21.5 MiB
/// and their trend read +4.2 MiB, with the last third's peak 0.09 MiB above the first's.
pub const NEW_HIGH_SHARE: f64 = 0.25;
/// One-sided confidence with which a category's trough trend must stand out of the troughs'
/// scatter about it (a t test of the Theil–Sen slope, [`slope_t`]) for the category to grow. A
/// healthy service that empties a 100,000-entry array when full, read by nine mark-compacts
/// under a CPU load, had troughs alternating 7 and 14 MiB: a trend of +4.5 MiB over 12 s, but
/// t = 1.2 where 1.9 is needed. The suite's leaks read t = 7 to 16 with three to five troughs
/// (6.3 needed for three: at 99%, 31.8, which a Buffer leak over three troughs missed). It is
/// one more test on top of the others (4 MiB and 10%, a new high, still rising at the end),
/// not the only one. Native memory is tested on every sample of the later two thirds (malloc
/// frees at once): unclosed zlib streams read t = 2.7 over 14 samples.
pub const TREND_CONFIDENCE: f64 = 0.95;
/// Share of a V8 heap's growth at troughs that the heap census's objects must show too, where
/// the censuses span at least [`MIN_TROUGH_SPAN`] of the later two thirds of the window. The
/// troughs read what V8 commits for its old generation; a young service's V8 grows that for a
/// minute and more while its objects do not (a healthy one, on a loaded machine, committed
/// 5 to 14 MiB over its first 40 s: its troughs' trend passed every test above).
pub const CENSUS_AGREES_SHARE: f64 = 0.25;
/// Smallest growth over the later two thirds of the window that makes a category grow.
pub const MIN_GROWTH_BYTES: f64 = 4.0 * 1024.0 * 1024.0;
/// Smallest growth, as a fraction of the category's size, that makes a category grow.
pub const MIN_GROWTH_FRACTION: f64 = 0.10;
/// Least share of its category's growth a suspect must explain to be listed: below it, a site
/// that touched a few pages while the category grew (node's own connection setup beside a
/// leak, 0-1%; a service's session churn beside a slow leak, 5%) is noise, not a lead, and the
/// category's next step says what to run instead.
pub const MIN_EXPLAINED_SHARE: f64 = 0.1;
/// Share of a category's growth its suspects must explain before no advice is given; and the
/// share that sites holding memory (allocations followed, containers read) must explain of a
/// collected category's growth for its first-touch sites to be no lead.
pub const EXPLAINED_ENOUGH: f64 = 0.5;
/// `report.verdict[]`: one memory category's growth and how much of it the suspects explain.
#[derive(Clone, Debug, Serialize)]
pub struct CategoryVerdict {
    /// The category.
    pub category: Category,
    /// Its size at the end of the window (native: anonymous RSS not in the other two).
    pub bytes: Option<u64>,
    /// Its growth over the later two thirds of the window.
    pub growth_bytes_per_s: f64,
    /// GC troughs (the lowest sample after each main-thread mark-compact) in the later two
    /// thirds of the window.
    pub troughs: usize,
    /// How the growth was read: `troughs` (their trend, from [`MIN_TROUGHS`] or more spanning
    /// [`MIN_TROUGH_SPAN`] of the later two thirds), `not enough GCs` (the V8 heap and external
    /// memory, whose garbage waits for a full GC, are not judged from fewer: [`NOT_JUDGED`]) or
    /// `floors` (native memory: the floor of the last third over the middle third's).
    pub method: &'static str,
    /// When not judged: about how many more seconds of watching would give enough troughs, at
    /// the pace full GCs ran in this window; when the trend did not stand out of the troughs'
    /// scatter, how many more would make that trend stand out, were it a leak's.
    pub watch_s: Option<f64>,
    /// Read from troughs: how far the trend stands out of the readings' scatter (the slope's t
    /// statistic, [`slope_t`], of the troughs; of native memory, of every sample of the later
    /// two thirds; absent with fewer than three readings).
    pub trend_t: Option<f64>,
    /// Whether it grows: by at least [`MIN_GROWTH_BYTES`] and [`MIN_GROWTH_FRACTION`] of its
    /// size over the later two thirds of the window, with a trough trend that stands out of the
    /// troughs' scatter ([`TREND_CONFIDENCE`]), and (the V8 heap, external) to a trough higher
    /// than any of the window's first third, still rising over the last third.
    pub growing: bool,
    /// Read from troughs, it grew over the later two thirds but its troughs of the last third
    /// trend at less than [`STILL_GROWING_SHARE`] of that: it filled and levelled off.
    pub levelled_off: bool,
    /// Share of the growth its suspects explain (0 to 1).
    pub explained_share: f64,
    /// When it grows and suspects explain less than half: what to run next.
    pub next_step: Option<String>,
    /// The worker thread's isolate whose V8 heap this is (absent: the main isolate's, or a
    /// category of the whole process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerIsolate>,
}

impl CategoryVerdict {
    /// Whether what lives in isolate heap `heap` (a container, a census's growing type; `None`:
    /// not known) is judged under this verdict: a worker's verdict takes what lives in its own
    /// heap (nothing, where its heap is not known), the others take the rest, told apart by
    /// `worker_heap`.
    pub fn takes(&self, heap: Option<&str>, worker_heap: impl Fn(&str) -> bool) -> bool {
        match &self.worker {
            Some(w) => heap.is_some() && w.heap.as_deref() == heap,
            None => heap.is_none_or(|h| !worker_heap(h)),
        }
    }
}

/// A worker thread's isolate, as its verdict names it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkerIsolate {
    /// The thread's id.
    pub tid: u32,
    /// The thread's name.
    pub name: String,
    /// Its `Heap`'s address, as the heap census names isolates (read from the header of a page
    /// the thread allocated); absent where that page could not be read.
    pub heap: Option<String>,
    /// The user's scripts its isolate compiled, as the heap census found them (empty before a
    /// census, or where its heap is not known).
    pub scripts: Vec<String>,
}

/// Each worker isolate's V8 heap, judged as the main isolate's is, over the same window:
/// its troughs are its old generation at the first reading after each of its own
/// mark-compacts (`baseline`). A worker's heap grows and is collected on its own thread: the
/// main thread's GCs say nothing of it.
pub fn worker_verdicts<'a>(
    window: (f64, f64),
    workers: impl IntoIterator<Item = (WorkerIsolate, &'a [(f64, f64)])>,
) -> Vec<CategoryVerdict> {
    let sample = |t_s: f64, trough: Option<u32>, bytes: Option<u64>| Sample {
        trough,
        t_s,
        rss: Default::default(),
        v8_heap_bytes: bytes,
        v8_old_generation_bytes: bytes,
        v8_worker_heaps_bytes: None,
        external_bytes: None,
        native_bytes: None,
    };
    workers
        .into_iter()
        .map(|(worker, baseline)| {
            let inside = baseline.iter().filter(|(t, _)| (window.0..=window.1).contains(t));
            let mut samples = vec![sample(window.0, None, None)];
            samples.extend(inside.enumerate().map(|(i, &(t, v))| sample(t, Some(i as u32), Some(v as u64))));
            let last = samples.last().and_then(|s| s.v8_old_generation_bytes);
            samples.push(sample(window.1, None, last));
            let mut verdict =
                category_verdict(Category::V8Heap, true, &samples, &|s| s.v8_old_generation_bytes);
            if verdict.method == NOT_JUDGED {
                verdict.next_step = Some(not_judged_step(&verdict));
            }
            verdict.worker = Some(worker);
            verdict
        })
        .collect()
}

/// Reads one category's bytes from a sample.
type Reading<'a> = dyn Fn(&Sample) -> Option<u64> + 'a;

/// Each category's growth over the later two thirds of the window, at GC troughs.
pub fn categories(samples: &[Sample]) -> Vec<CategoryVerdict> {
    let native = |s: &Sample| {
        let other = s.v8_heap_bytes.unwrap_or(0)
            + s.v8_worker_heaps_bytes.unwrap_or(0)
            + s.external_bytes.unwrap_or(0);
        Some(s.rss.rss_anon_bytes.saturating_sub(other))
    };
    // The GC's categories wait for it to free their garbage; native memory (malloc) does not.
    // The V8 heap is read without its young generation where V8 said how big that is: under
    // churn V8 doubles its semi-spaces a few times (+8 to +32 MiB steps), which is not a leak.
    // Native memory is what V8 does not hold, young generation included.
    let readers: [(Category, bool, &Reading<'_>); 3] = [
        (Category::V8Heap, true, &|s| s.v8_old_generation_bytes.or(s.v8_heap_bytes)),
        (Category::External, true, &|s| s.external_bytes),
        (Category::Native, false, &native),
    ];
    readers
        .iter()
        .map(|(category, collected, read)| category_verdict(*category, *collected, samples, read))
        .collect()
}

/// Each GC trough in `samples` at or after `from`: (its first sample's time, the lowest value
/// of its samples).
fn troughs(samples: &[Sample], from: f64, read: &Reading<'_>) -> Vec<(f64, f64)> {
    let mut found: Vec<(u32, f64, f64)> = Vec::new();
    for s in samples.iter().filter(|s| s.t_s >= from) {
        let (Some(seq), Some(v)) = (s.trough, read(s)) else { continue };
        match found.last_mut() {
            Some((last, _, low)) if *last == seq => *low = low.min(v as f64),
            _ => found.push((seq, s.t_s, v as f64)),
        }
    }
    found.into_iter().map(|(_, t, v)| (t, v)).collect()
}

/// One category's verdict. `collected`: its garbage waits for a full GC (the V8 heap,
/// external), so between GCs its samples hold garbage too, and growth is read from troughs
/// only: from [`MIN_TROUGHS`] or more spanning enough of the window, their trend; from fewer,
/// it is not judged yet.
fn category_verdict(
    category: Category,
    collected: bool,
    samples: &[Sample],
    read: &Reading<'_>,
) -> CategoryVerdict {
    let bytes = samples.last().and_then(read);
    let mut verdict = CategoryVerdict {
        category,
        bytes,
        growth_bytes_per_s: 0.0,
        troughs: 0,
        method: "floors",
        watch_s: None,
        trend_t: None,
        growing: false,
        levelled_off: false,
        explained_share: 0.0,
        next_step: None,
        worker: None,
    };
    let Some((_, one, two, last)) = thirds(samples) else { return verdict };
    let late: Vec<(f64, f64)> =
        samples.iter().filter(|s| s.t_s >= one).filter_map(|s| Some((s.t_s, read(s)? as f64))).collect();
    let troughs = troughs(samples, one, read);
    verdict.troughs = troughs.len();
    let span = match (troughs.first(), troughs.last()) {
        (Some(a), Some(b)) => b.0 - a.0,
        _ => 0.0,
    };
    verdict.growth_bytes_per_s = match troughs.len() {
        n if n >= MIN_TROUGHS && span >= MIN_TROUGH_SPAN * (last - one) => {
            verdict.method = "troughs";
            median_slope(&troughs)
        }
        // Garbage waits for a full GC (Buffers to be freed, objects promoted to the old
        // generation), and V8's young generation doubles a few times in a service's first
        // minutes: between a few full GCs, growth cannot be told from garbage or from a
        // saw-tooth. Not judged yet.
        n if collected => {
            verdict.method = NOT_JUDGED;
            // Full GCs came every `pace` seconds (or not at all in the later two thirds);
            // enough more of them, spanning enough of a window that ends later.
            let pace = (last - one) / n.max(1) as f64;
            let more = (MIN_TROUGHS.saturating_sub(n)).max(1) as f64 * pace;
            verdict.watch_s = Some(more.max(MIN_TROUGH_SPAN * (last - one)).ceil());
            0.0
        }
        _ => {
            // The floor of the last third over the floor of the middle third.
            let floor = |from: f64, to: f64| {
                late.iter()
                    .filter(|(t, _)| (from..=to).contains(t))
                    .map(|p| p.1)
                    .fold(f64::INFINITY, f64::min)
            };
            let (middle, end) = (floor(one, two), floor(two, last));
            match middle.is_finite() && end.is_finite() && two > one {
                true => (end - middle) / (two - one),
                false => 0.0,
            }
        }
    };
    let grown = verdict.growth_bytes_per_s * (last - one);
    verdict.growing = grown >= MIN_GROWTH_BYTES
        && grown >= MIN_GROWTH_FRACTION * bytes.unwrap_or(0) as f64
        && (!collected || new_high(samples, one, two, read, NEW_HIGH_SHARE * grown));
    if verdict.method == "troughs" {
        // The GC's categories are read at their troughs only; native memory, which malloc frees
        // when the program frees it, at every sample of the later two thirds: more readings.
        let (points, slope, what) = match collected {
            true => (troughs.clone(), verdict.growth_bytes_per_s, "troughs"),
            false => {
                let points = thinned(&late, MAX_TREND_POINTS);
                let slope = median_slope(&points);
                (points, slope, "samples")
            }
        };
        verdict.trend_t = slope_t(&points, slope);
        // A trend within the readings' scatter is no evidence yet: more of them over a longer
        // span narrow the scatter's error (as span^1.5 at the same pace).
        let t = verdict.trend_t.unwrap_or(0.0);
        let needed = needed_t(points.len());
        if verdict.growing && t < needed {
            verdict.growing = false;
            let span = points.last().map_or(0.0, |p| p.0) - points.first().map_or(0.0, |p| p.0);
            let more_span = span * ((needed / t.max(f64::MIN_POSITIVE)).powf(2.0 / 3.0) - 1.0);
            // The later two thirds of a longer window: 1.5 s of watching per second of span.
            verdict.watch_s = Some((1.5 * more_span).clamp(1.0, 1e6).ceil());
            verdict.next_step = Some(format!(
                "its {what} swing about their trend by more than it grows (t = {t:.1} of {needed:.1} \
                 needed over {} {what}): watch {:.0} s more",
                points.len(),
                verdict.watch_s.unwrap_or_default()
            ));
        }
    }
    // Still growing at the end: where the last third has troughs enough for a trend of its own.
    let ending: Vec<(f64, f64)> = troughs.iter().copied().filter(|p| p.0 >= two).collect();
    if verdict.growing && verdict.method == "troughs" && ending.len() >= MIN_TROUGHS {
        verdict.levelled_off = median_slope(&ending) < STILL_GROWING_SHARE * verdict.growth_bytes_per_s;
        verdict.growing = !verdict.levelled_off;
    }
    verdict
}

/// Most readings a trend test takes (its slope compares every two: evenly thinned beyond).
const MAX_TREND_POINTS: usize = 120;

/// At most `most` of `points`, evenly spaced, the last one kept.
fn thinned(points: &[(f64, f64)], most: usize) -> Vec<(f64, f64)> {
    let step = points.len().div_ceil(most.max(1)).max(1);
    let mut kept: Vec<(f64, f64)> = points.iter().rev().step_by(step).copied().collect();
    kept.reverse();
    kept
}

/// The t statistic a trend over `n` troughs must reach: Student's t quantile at
/// [`TREND_CONFIDENCE`] with `n - 2` degrees of freedom.
fn needed_t(n: usize) -> f64 {
    let freedom = n.saturating_sub(2).max(1) as f64;
    StudentsT::new(0.0, 1.0, freedom).map_or(f64::INFINITY, |d| d.inverse_cdf(TREND_CONFIDENCE))
}

/// Whether the troughs of the window's last third (or its latest trough) rise above every
/// trough of its first third by `margin` bytes. A leak makes new highs, about as far above the
/// first third as it grew; a bounded cache whose troughs swing (evictions freed lazily, a
/// sweeper that lags) can climb for the later two thirds, back to where the first third
/// already was, or a hair above it, and has not grown. True when the first third has no trough
/// (nothing to compare with).
fn new_high(samples: &[Sample], one: f64, two: f64, read: &Reading<'_>, margin: f64) -> bool {
    let all = troughs(samples, f64::NEG_INFINITY, read);
    let peak = |points: &mut dyn Iterator<Item = &(f64, f64)>| points.map(|p| p.1).reduce(f64::max);
    let Some(early) = peak(&mut all.iter().filter(|p| p.0 < one)) else { return true };
    let late = peak(&mut all.iter().filter(|p| p.0 >= two)).or(all.last().map(|p| p.1));
    late.is_some_and(|late| late > early + margin)
}

/// Weighs each growing V8 heap against the heap census of its isolate: where the censuses span
/// at least [`MIN_TROUGH_SPAN`] of `later_s` (the later two thirds of the window) and its
/// objects gained less than [`CENSUS_AGREES_SHARE`] of the heap's growth, V8 committed more
/// pages, not more objects, and the heap is not growing (the summary says so).
pub fn weigh_census(categories: &mut [CategoryVerdict], census: &CensusReport, later_s: f64) {
    let span = match (census.first_t_s, census.last_t_s) {
        (Some(a), Some(b)) => b - a,
        _ => return,
    };
    if span < MIN_TROUGH_SPAN * later_s {
        return;
    }
    for v in categories.iter_mut().filter(|v| v.growing && v.category == Category::V8Heap) {
        let isolate = census.isolates.iter().find(|i| match &v.worker {
            Some(w) => w.heap.as_deref() == Some(i.heap.as_str()),
            None => i.main,
        });
        let Some(objects) = isolate.and_then(|i| i.object_bytes_per_s) else { continue };
        if objects < CENSUS_AGREES_SHARE * v.growth_bytes_per_s {
            v.growing = false;
            v.next_step = Some(format!(
                "its troughs rose {}/s, but the heap census's objects {}/s over {span:.0} s: V8 committed \
                 more pages, not more objects",
                rate(v.growth_bytes_per_s),
                rate(objects),
            ));
        }
    }
}

/// The suspects: the candidates whose category grows, each with its evidence, by growth rate
/// (largest first); and each category's share explained, with the next step where little is.
/// A site that churns is not a suspect by the pages it first touched.
/// `churning`: the sites whose Buffers were followed to their frees and that freed most of
/// them ([`crate::books::tracker::Tracker::churning`]): the memory they first touch is no lead.
pub fn judge(
    candidates: Vec<Suspect>,
    mut categories: Vec<CategoryVerdict>,
    churning: &HashSet<String>,
    alloc_stacks: bool,
    native_exact: bool,
) -> (Vec<Suspect>, Vec<CategoryVerdict>) {
    let workers: HashSet<String> =
        categories.iter().filter_map(|c| c.worker.as_ref()?.heap.clone()).collect();
    for s in &candidates {
        log::debug!(
            "candidate: {:?} {} ({:?}) +{:.0} B/s, floor +{:.0} B",
            s.category,
            s.site,
            s.source,
            s.growth_bytes_per_s,
            s.floor_growth_bytes
        );
    }
    let mut found: Vec<Suspect> = candidates
        .into_iter()
        .filter(|s| !(s.source == Source::PageFaults && churning.contains(&s.site)))
        .filter_map(|mut s| {
            // An array's elements are live whatever the GC has run: a site that keeps growing
            // one is a suspect even where the heap could not be judged (too few full GCs), with no
            // share of a growth that was not read.
            let not_judged = |c: &&CategoryVerdict| c.method == NOT_JUDGED && s.source == Source::Holds;
            let heap = s.holds.as_ref().and_then(|h| h.heap.as_deref());
            let verdict = categories.iter().find(|c| {
                c.category == s.category
                    && c.takes(heap, |h| workers.contains(h))
                    && (c.growing || not_judged(c))
            })?;
            let rate = s.growth_bytes_per_s;
            s.evidence = Some(Evidence {
                troughs: verdict.troughs,
                method: verdict.method,
                category_growth_bytes_per_s: verdict.growth_bytes_per_s,
                explained_share: match verdict.growing {
                    true => rate / verdict.growth_bytes_per_s,
                    false => 0.0,
                },
                worker: verdict.worker.as_ref().map(|w| w.tid),
            });
            Some(s)
        })
        .collect();
    let share = |s: &Suspect| s.evidence.as_ref().map_or(0.0, |e| e.explained_share);
    // Where a category's allocations were followed to their frees, what its sites hold
    // outranks what other sites first touched: in a shared malloc heap, the churn that frees
    // and allocates again touches fresh pages while the leak fills the holes it left.
    let traced: Vec<Category> =
        found.iter().filter(|s| s.source == Source::Allocations).map(|s| s.category).collect();
    let touched_only = |s: &Suspect| s.source == Source::PageFaults && traced.contains(&s.category);
    // Across categories, by the growth each explains (its share of its category's, at most all).
    let explains = |s: &Suspect| {
        s.evidence.as_ref().map_or(0.0, |e| e.explained_share.clamp(0.0, 1.0) * e.category_growth_bytes_per_s)
    };
    let rank = |a: &Suspect, b: &Suspect| {
        touched_only(a).cmp(&touched_only(b)).then(explains(b).total_cmp(&explains(a)))
    };
    found.sort_by(rank);
    // A site seen by several sources (the pages it touched, the array it grows) is listed once,
    // by the source that explains most.
    let mut seen = HashSet::new();
    found.retain(|s| seen.insert((s.category, s.site.clone())));
    // Where what holds memory (allocations followed to their frees, containers read) already
    // explains most of a collected category's growth, what other sites first touched is no
    // lead: a growing heap's fresh pages are first touched by whatever allocates there, churn
    // included (the service's short sessions, pretenured, beside a leaking Map).
    let held_enough: Vec<&CategoryVerdict> = categories
        .iter()
        .filter(|c| c.growing && c.category.collected())
        .filter(|c| {
            let held = found.iter().filter(|s| judged_under(s, c) && s.source != Source::PageFaults);
            held.map(|s| share(s).clamp(0.0, 1.0)).sum::<f64>() >= EXPLAINED_ENOUGH
        })
        .collect();
    found.retain(|s| {
        let outranked = s.source == Source::PageFaults && held_enough.iter().any(|c| judged_under(s, c));
        if outranked {
            log::debug!(
                "not a suspect: {:?} {}: first touches, where what is held explains enough",
                s.category,
                s.site
            );
        }
        !outranked
    });
    // Sites read over different spans (an opening burst, the whole window) can each claim
    // most of their category's growth: their shares are scaled to add up to at most all of it.
    for c in categories.iter().filter(|c| c.growing) {
        let claimed: f64 = found.iter().filter(|s| judged_under(s, c)).map(|s| share(s).max(0.0)).sum();
        if claimed > 1.0 {
            for e in found.iter_mut().filter(|s| judged_under(s, c)).filter_map(|s| s.evidence.as_mut()) {
                e.explained_share /= claimed;
            }
        }
    }
    found.retain(|s| match s.evidence.as_ref() {
        Some(e) if e.method != NOT_JUDGED && e.explained_share < MIN_EXPLAINED_SHARE => {
            log::debug!(
                "not a suspect: {:?} {} ({:?}) explains {:.1}% of its category's growth",
                s.category,
                s.site,
                s.source,
                100.0 * e.explained_share
            );
            false
        }
        _ => true,
    });
    found.sort_by(rank);
    found.truncate(MAX_SUSPECTS);
    for c in categories.iter_mut().filter(|c| c.method == NOT_JUDGED) {
        c.next_step = Some(not_judged_step(c));
    }
    for c in categories.iter_mut().filter(|c| c.growing) {
        let explained: f64 = found.iter().filter(|s| judged_under(s, c)).map(share).sum();
        c.explained_share = explained.clamp(0.0, 1.0);
        if c.explained_share < EXPLAINED_ENOUGH {
            c.next_step = next_step(c.category, alloc_stacks, native_exact);
        }
    }
    (found, categories)
}

/// Whether suspect `s` was judged under verdict `c` (its category, and the same isolate).
fn judged_under(s: &Suspect, c: &CategoryVerdict) -> bool {
    s.category == c.category && s.evidence.as_ref().and_then(|e| e.worker) == c.worker.as_ref().map(|w| w.tid)
}

/// What is said of a category not judged yet: how long to watch for enough full GCs.
fn not_judged_step(c: &CategoryVerdict) -> String {
    format!(
        "not enough full GCs to judge yet ({} of {MIN_TROUGHS} in the later two thirds): watch {:.0} s more",
        c.troughs,
        c.watch_s.unwrap_or_default()
    )
}

/// What to run when a growing category is not explained.
fn next_step(category: Category, alloc_stacks: bool, native_exact: bool) -> Option<String> {
    Some(
        match (category, alloc_stacks, native_exact) {
            (Category::External, false, _) => "run with --alloc-stacks for 30 s (every Buffer allocation by stack)",
            (Category::V8Heap, false, _) => {
                "run with --alloc-stacks for 30 s (JS heap allocations sampled by stack), or compare two heap snapshots"
            }
            (Category::V8Heap, true, _) => "compare two heap snapshots: the heap census is not done yet",
            (Category::Native, _, false) => "run with --native-exact for 30 s (every malloc by stack)",
            _ => return None,
        }
        .into(),
    )
}

#[cfg(test)]
mod tests;
