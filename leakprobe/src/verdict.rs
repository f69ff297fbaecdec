//! The verdict: which memory category grows, read at GC troughs, and which logical sites
//! explain that growth. Its parts: [`series`] (values over the window), [`suspects`] (each
//! stack's books, logical sites, the suspect rule), [`containers`] (the arrays a site grows,
//! read in the target's heap); the probe families feed them, the outputs read the result.
//!
//! - **What grows.** Each category (V8 heap, external, native) is read at the samples taken
//!   right after a main-thread mark-compact, once the ArrayBuffer sweeper has freed what the GC
//!   released ([`crate::memory::rss::Sample::trough`]). Garbage awaiting collection, and Buffers the
//!   GC frees lazily, are gone there: a bounded cache or steady churn leaves the troughs flat.
//!   With fewer than [`MIN_TROUGHS`] troughs, see [`CategoryVerdict::method`].
//! - **Which line made it.** Stacks are grouped by logical site ([`site_key`]): the same
//!   functions, scripts and lines, whatever JIT addresses or tiers. A site is a suspect only
//!   when its category grows; sampled page faults ([`crate::memory::faults`]) are judged by what each
//!   site kept touching in the later thirds of the window, allocation trackers by the floor of
//!   what each site holds.
//! - **What is not explained** is said, with the next step ([`CategoryVerdict::next_step`]).

use std::collections::HashMap;

use serde::Serialize;

use crate::{
    books::series::Series,
    books::suspects::{Category, Evidence, Source, Suspect, Variant, MAX_SUSPECTS},
    memory::faults::{FaultBooks, Touched},
    memory::rss::Sample,
    stacks::symbolize::{Frame, FrameKind, QUEUED_NAME},
};

/// Troughs needed to read a category's growth from them.
pub const MIN_TROUGHS: usize = 3;
/// Smallest growth over the later two thirds of the window that makes a category grow.
pub const MIN_GROWTH_BYTES: f64 = 4.0 * 1024.0 * 1024.0;
/// Smallest growth, as a fraction of the category's size, that makes a category grow.
pub const MIN_GROWTH_FRACTION: f64 = 0.10;
/// Smallest first-touched bytes in the last third of the window for a page-fault site.
pub const MIN_SITE_BYTES: f64 = 256.0 * 1024.0;
/// A page-fault site still faulting at the end: its last third touched at least this share
/// of what its middle third did.
pub const MIN_STILL_FAULTING: f64 = 0.25;
/// Share of a category's growth its suspects must explain before no advice is given.
pub const EXPLAINED_ENOUGH: f64 = 0.5;
/// User JavaScript frames (not node's own) a site key reads up to.
pub const SITE_USER_FRAMES: usize = 4;
/// Native frames a site key reads when the stack has no JavaScript.
const SITE_NATIVE_FRAMES: usize = 6;

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
    /// How the growth was read: `troughs` (their trend, from three or more), `trough over
    /// floor` (the latest trough over the lowest sample before it: never more than what stayed
    /// live), `no full GC` (the V8 heap and external memory, whose garbage waits for one, are
    /// not judged without one) or `floors` (native memory: the floor of the last third over the
    /// middle third's).
    pub method: &'static str,
    /// Whether it grows: by at least [`MIN_GROWTH_BYTES`] and [`MIN_GROWTH_FRACTION`] of its
    /// size over the later two thirds of the window, and (the V8 heap, external) to a trough
    /// higher than any of the window's first third.
    pub growing: bool,
    /// Share of the growth its suspects explain (0 to 1).
    pub explained_share: f64,
    /// When it grows and suspects explain less than half: what to run next.
    pub next_step: Option<String>,
}

/// What a sampled fault's memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
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

/// The logical site of a stack: its entry (the first native function) and its JavaScript
/// frames by function, script and line, up to the [`SITE_USER_FRAMES`]th of the user's own;
/// with no JavaScript, its first native frames. JIT addresses, tiers, builtins and how deep
/// the stack was cut do not change it.
pub fn site_key(frames: &[Frame]) -> String {
    if frames.is_empty() {
        return "[stack lost]".into();
    }
    let mut parts: Vec<String> = Vec::new();
    if let Some(entry) =
        frames.iter().take_while(|f| f.kind != FrameKind::Js).find(|f| f.kind == FrameKind::Native)
    {
        parts.push(entry.name.clone());
    }
    let mut user = 0;
    for f in frames {
        match f.kind {
            FrameKind::Js => {
                parts.push(f.kind_key());
                if !f.file.as_deref().is_some_and(|p| p.starts_with("node:")) {
                    user += 1;
                    if user == SITE_USER_FRAMES {
                        break;
                    }
                }
            }
            FrameKind::Queued => parts.push(QUEUED_NAME.into()),
            // JavaScript that could not be named: only its address tells it apart, so stacks
            // through different unnamed code stay different sites.
            FrameKind::Jit => parts.push(f.name.clone()),
            _ => {}
        }
    }
    if !frames.iter().any(|f| matches!(f.kind, FrameKind::Js | FrameKind::Jit)) {
        parts = frames.iter().take(SITE_NATIVE_FRAMES).map(Frame::kind_key).collect();
    }
    parts.join(" ← ")
}

/// The window's thirds: (first, one third, two thirds, last) sample times.
fn thirds(samples: &[Sample]) -> Option<(f64, f64, f64, f64)> {
    let (first, last) = (samples.first()?.t_s, samples.last()?.t_s);
    let third = (last - first) / 3.0;
    (third > 0.0).then_some((first, first + third, first + 2.0 * third, last))
}

/// Reads one category's bytes from a sample.
type Reading<'a> = dyn Fn(&Sample) -> Option<u64> + 'a;

/// Each category's growth over the later two thirds of the window, at GC troughs.
pub fn categories(samples: &[Sample]) -> Vec<CategoryVerdict> {
    let native = |s: &Sample| {
        let other = s.v8_heap_bytes.unwrap_or(0) + s.external_bytes.unwrap_or(0);
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
/// only: from three or more, their trend; from one or two, the latest over the lowest sample
/// before it (each sample holds at least what was live then, so this never overstates); from
/// none, it is not judged.
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
        growing: false,
        explained_share: 0.0,
        next_step: None,
    };
    let Some((_, one, two, last)) = thirds(samples) else { return verdict };
    let late: Vec<(f64, f64)> =
        samples.iter().filter(|s| s.t_s >= one).filter_map(|s| Some((s.t_s, read(s)? as f64))).collect();
    let troughs = troughs(samples, one, read);
    verdict.troughs = troughs.len();
    verdict.growth_bytes_per_s = match (troughs.len(), troughs.last()) {
        (n, _) if n >= MIN_TROUGHS => {
            verdict.method = "troughs";
            median_slope(&troughs)
        }
        (_, Some(_)) if collected => {
            verdict.method = "trough over floor";
            // Every sample holds at least what was live when it was taken: a trough over the
            // lowest sample before it (anywhere in the window) is growth that stayed live.
            let all: Vec<(f64, f64)> =
                samples.iter().filter_map(|s| Some((s.t_s, read(s)? as f64))).collect();
            let rate = |&(at, value): &(f64, f64)| {
                let before = all.iter().filter(|(t, _)| *t < at);
                match before.min_by(|a, b| a.1.total_cmp(&b.1)) {
                    Some(&(from, low)) if at > from => (value - low).max(0.0) / (at - from),
                    _ => 0.0,
                }
            };
            troughs.iter().map(rate).fold(0.0, f64::max)
        }
        // Garbage waits for a full GC (Buffers to be freed, objects promoted to the old
        // generation), and V8's young generation doubles a few times in a service's first
        // minutes: between two full GCs, growth cannot be told from garbage. Not judged.
        (_, None) if collected => {
            verdict.method = "no full GC";
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
        && (!collected || new_high(samples, one, two, read));
    verdict
}

/// Whether the troughs of the window's last third (or its latest trough) rise above every
/// trough of its first third. A leak makes new highs; a bounded cache whose troughs swing
/// (evictions freed lazily, a sweeper that lags) can climb for the later two thirds, back to
/// where the first third already was, and has not grown. True when the first third has no
/// trough (nothing to compare with).
fn new_high(samples: &[Sample], one: f64, two: f64, read: &Reading<'_>) -> bool {
    let all = troughs(samples, f64::NEG_INFINITY, read);
    let peak = |points: &mut dyn Iterator<Item = &(f64, f64)>| points.map(|p| p.1).reduce(f64::max);
    let Some(early) = peak(&mut all.iter().filter(|p| p.0 < one)) else { return true };
    let late = peak(&mut all.iter().filter(|p| p.0 >= two)).or(all.last().map(|p| p.1));
    late.is_some_and(|late| late > early)
}

/// The median of the slopes between every two points (Theil–Sen): one trough read while the
/// sweeper lagged (on a loaded machine) does not turn a flat trend into growth, as it would a
/// least-squares line.
fn median_slope(points: &[(f64, f64)]) -> f64 {
    let mut slopes: Vec<f64> = points
        .iter()
        .enumerate()
        .flat_map(|(i, a)| {
            points[i + 1..].iter().filter(|b| b.0 > a.0).map(move |b| (b.1 - a.1) / (b.0 - a.0))
        })
        .collect();
    slopes.sort_by(f64::total_cmp);
    match slopes.len() {
        0 => 0.0,
        n if n % 2 == 1 => slopes[n / 2],
        n => (slopes[n / 2 - 1] + slopes[n / 2]) / 2.0,
    }
}

/// The bytes a cumulative series held at `t` (0 before its first point).
fn at(series: &Series, t: f64) -> f64 {
    series.points().iter().take_while(|p| p.0 <= t).last().map_or(0.0, |p| p.1)
}

/// Sites whose sampled page faults go on through the window, as candidate suspects, and the
/// bytes the GC touched. `frames` names a stack id.
pub fn fault_sites(
    books: &FaultBooks,
    samples: &[Sample],
    mut frames: impl FnMut(i64) -> Vec<Frame>,
) -> (Vec<Suspect>, u64) {
    let Some((_, one, two, last)) = thirds(samples) else { return (Vec::new(), 0) };
    let mut gc_bytes = 0.0;
    let mut groups: HashMap<(Category, String), (Suspect, f64)> = HashMap::new();
    for (&(stack_id, touched), series) in &books.series {
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

/// The suspects: the candidates whose category grows, each with its evidence, by growth rate
/// (largest first); and each category's share explained, with the next step where little is.
pub fn judge(
    candidates: Vec<Suspect>,
    mut categories: Vec<CategoryVerdict>,
    alloc_stacks: bool,
    native_exact: bool,
) -> (Vec<Suspect>, Vec<CategoryVerdict>) {
    let mut found: Vec<Suspect> = candidates
        .into_iter()
        .filter_map(|mut s| {
            // An array's elements are live whatever the GC has run: a site that keeps growing
            // one is a suspect even where the heap could not be judged (no full GC), with no
            // share of a growth that was not read.
            let not_judged = |c: &&CategoryVerdict| c.method == "no full GC" && s.source == Source::Holds;
            let verdict =
                categories.iter().find(|c| c.category == s.category && (c.growing || not_judged(c)))?;
            let rate = s.growth_bytes_per_s;
            s.evidence = Some(Evidence {
                troughs: verdict.troughs,
                method: verdict.method,
                category_growth_bytes_per_s: verdict.growth_bytes_per_s,
                explained_share: match verdict.growing {
                    true => rate / verdict.growth_bytes_per_s,
                    false => 0.0,
                },
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
    found.sort_by(|a, b| touched_only(a).cmp(&touched_only(b)).then(explains(b).total_cmp(&explains(a))));
    // A site seen by several sources (the pages it touched, the array it grows) is listed once,
    // by the source that explains most.
    let mut seen = std::collections::HashSet::new();
    found.retain(|s| seen.insert((s.category, s.site.clone())));
    found.truncate(MAX_SUSPECTS);
    for c in categories.iter_mut().filter(|c| c.method == "no full GC") {
        c.next_step = Some("no full GC in the later two thirds of the window: watch longer to judge".into());
    }
    for c in categories.iter_mut().filter(|c| c.growing) {
        let explained: f64 = found.iter().filter(|s| s.category == c.category).map(share).sum();
        c.explained_share = explained.clamp(0.0, 1.0);
        if c.explained_share < EXPLAINED_ENOUGH {
            c.next_step = next_step(c.category, alloc_stacks, native_exact);
        }
    }
    (found, categories)
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
mod tests {
    use super::*;
    use crate::memory::rss::Rss;

    fn frame(name: &str, kind: FrameKind, file: Option<&str>, line: Option<u32>) -> Frame {
        Frame { name: name.into(), kind, addr: 0, file: file.map(Into::into), line, note: None }
    }

    fn js(name: &str, file: &str, line: u32) -> Frame {
        frame(name, FrameKind::Js, Some(file), Some(line))
    }

    fn native(name: &str) -> Frame {
        frame(name, FrameKind::Native, None, None)
    }

    #[test]
    fn stacks_of_one_site_share_a_key_whatever_the_tier() {
        let interpreted = vec![
            native("__memset_avx2_unaligned_erms"),
            native("v8::internal::Builtin_TypedArrayPrototypeFill"),
            frame("Builtins_InterpreterEntryTrampoline", FrameKind::Builtin, None, None),
            js("fill", "node:buffer", 1010),
            js("cacheReport", "/app/cache.js", 7),
            frame("Builtins_InterpreterEntryTrampoline", FrameKind::Builtin, None, None),
            js("onTimeout", "/app/cache.js", 20),
        ];
        // The same functions compiled: no interpreter frames, other addresses, no notes.
        let mut compiled = interpreted.clone();
        compiled.retain(|f| f.kind != FrameKind::Builtin);
        for (i, f) in compiled.iter_mut().enumerate().filter(|(_, f)| f.kind == FrameKind::Js) {
            f.addr = 0x7f00_0000 + i as u64;
            f.note = None;
        }
        assert_eq!(site_key(&interpreted), site_key(&compiled));
        assert!(site_key(&compiled).contains("cacheReport /app/cache.js:7"), "{}", site_key(&compiled));
        let mut other_line = compiled.clone();
        other_line[3] = js("cacheReport", "/app/cache.js", 9);
        assert_ne!(site_key(&compiled), site_key(&other_line));
        assert_eq!(site_key(&[]), "[stack lost]");
        let unnamed = |addr: &str| vec![native("malloc"), frame(addr, FrameKind::Jit, None, None)];
        assert_ne!(
            site_key(&unnamed("[JIT 0x1]")),
            site_key(&unnamed("[JIT 0x2]")),
            "unnamed code is not merged"
        );
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
        let zlib = vec![
            native("deflateInit2_"),
            native("node::ThreadPoolWork::ScheduleWork"),
            frame(QUEUED_NAME, FrameKind::Queued, None, None),
            native("uv_queue_work"),
            user,
        ];
        assert_eq!(classify(&zlib, Touched::Other), Class::Memory(Category::Native));
    }

    fn sample(t: f64, trough: Option<u32>, heap: u64, external: u64) -> Sample {
        Sample {
            trough,
            t_s: t,
            rss: Rss { rss_anon_bytes: heap + external + (50 << 20), ..Rss::default() },
            v8_heap_bytes: Some(heap),
            v8_old_generation_bytes: None,
            external_bytes: Some(external),
            native_bytes: None,
        }
    }

    #[test]
    fn growth_is_read_at_troughs_so_lazily_freed_churn_is_not_growth() {
        let mib = 1u64 << 20;
        // External: a sawtooth whose peaks rise (garbage freed lazily) but whose troughs are
        // flat; the heap's troughs rise 2 MiB/s.
        let samples: Vec<Sample> = (0..=40)
            .map(|i| {
                let t = i as f64 * 0.5;
                let trough = (i % 4 == 0).then_some(i as u32 / 4);
                let external = if trough.is_some() { 100 * mib } else { 100 * mib + i as u64 * mib };
                sample(t, trough, 50 * mib + (t * 2.0) as u64 * mib, external)
            })
            .collect();
        let verdicts = categories(&samples);
        let of = |c| verdicts.iter().find(|v| v.category == c).unwrap();
        assert_eq!(of(Category::External).method, "troughs");
        assert!(!of(Category::External).growing, "{:?}", of(Category::External));
        assert!(of(Category::V8Heap).growing, "{:?}", of(Category::V8Heap));
        let rate = of(Category::V8Heap).growth_bytes_per_s / mib as f64;
        assert!((1.5..2.5).contains(&rate), "{rate}");
    }

    #[test]
    fn troughs_that_climb_back_to_the_first_thirds_are_not_growth() {
        let mib = 1u64 << 20;
        // A bounded cache's external troughs (MiB, as read on node 24): they dip in the middle
        // and climb for the later two thirds, back to below where they started.
        let swing = [22.9, 22.4, 17.7, 21.4, 22.0, 17.4, 18.0, 19.3, 19.5, 21.0, 21.3, 21.7];
        let at = |values: &[f64]| -> Vec<Sample> {
            values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let t = 0.6 + 1.6 * i as f64;
                    sample(t, Some(i as u32), 40 * mib, (v * mib as f64) as u64)
                })
                .collect()
        };
        let verdicts = categories(&at(&swing));
        let external = verdicts.iter().find(|v| v.category == Category::External).unwrap();
        assert!(external.growth_bytes_per_s > 0.0, "{external:?}");
        assert!(!external.growing, "{external:?}");
        // The same climb from a lower start is a new high: growth.
        let climb: Vec<f64> = swing.iter().enumerate().map(|(i, v)| if i < 3 { 12.0 } else { *v }).collect();
        let verdicts = categories(&at(&climb));
        let external = verdicts.iter().find(|v| v.category == Category::External).unwrap();
        assert!(external.growing, "{external:?}");
    }

    #[test]
    fn the_young_generation_growing_is_not_heap_growth() {
        let mib = 1u64 << 20;
        // Committed heap troughs as read on node 20 under a bounded cache's churn (MiB): a 17 MiB
        // step when V8 grew its semi-spaces, then flat. The old generation stayed at 15 MiB.
        let committed = [22.8, 22.8, 23.3, 40.3, 40.1, 39.8];
        let at = |old: &dyn Fn(usize) -> f64| -> Vec<Sample> {
            committed
                .iter()
                .enumerate()
                .map(|(i, v)| Sample {
                    v8_old_generation_bytes: Some((old(i) * mib as f64) as u64),
                    ..sample(1.7 + 3.1 * i as f64, Some(i as u32), (v * mib as f64) as u64, 20 * mib)
                })
                .collect()
        };
        let heap = |samples: &[Sample]| {
            categories(samples).into_iter().find(|v| v.category == Category::V8Heap).unwrap()
        };
        let flat = heap(&at(&|_| 15.0));
        assert!(!flat.growing && flat.growth_bytes_per_s == 0.0, "{flat:?}");
        assert_eq!(flat.bytes, Some(15 * mib));
        // Without the old generation's reading (its probe missing), the committed heap is read.
        let committed_only: Vec<Sample> =
            at(&|_| 15.0).into_iter().map(|s| Sample { v8_old_generation_bytes: None, ..s }).collect();
        assert!(heap(&committed_only).growing);
        // The old generation growing is growth, whatever the young generation does.
        let leak = heap(&at(&|i| 15.0 + 3.0 * i as f64));
        assert!(leak.growing, "{leak:?}");
    }

    #[test]
    fn one_late_trough_does_not_make_a_flat_trend_grow() {
        let mib = (1u64 << 20) as f64;
        let flat =
            [(1.3, 23.8), (5.8, 20.1), (10.2, 19.0), (14.4, 18.5), (18.5, 44.3)].map(|(t, v)| (t, v * mib));
        assert!(median_slope(&flat) <= 0.0, "{}", median_slope(&flat) / mib);
        let leak: Vec<(f64, f64)> = (0..6).map(|i| (i as f64 * 3.0, (40.0 + 9.0 * i as f64) * mib)).collect();
        assert!((median_slope(&leak) / mib - 3.0).abs() < 1e-9);
        assert_eq!(median_slope(&[]), 0.0);
    }

    #[test]
    fn a_trough_is_the_lowest_sample_after_its_gc_and_one_trough_reads_over_the_floor() {
        let mib = 1u64 << 20;
        // Garbage piles up between two GCs; after each, the sweeper frees over a few samples.
        let mut samples = Vec::new();
        for i in 0..=40u64 {
            let t = i as f64 * 0.5;
            let (trough, external) = match i {
                30 => (Some(1), 150 * mib),
                31 => (Some(1), 120 * mib),
                32 => (Some(1), 125 * mib),
                _ => (None, 100 * mib + (i % 10) * 5 * mib),
            };
            samples.push(sample(t, trough, 200 * mib, external));
        }
        let verdicts = categories(&samples);
        let external = verdicts.iter().find(|v| v.category == Category::External).unwrap();
        assert_eq!((external.troughs, external.method), (1, "trough over floor"));
        // 120 MiB at the trough over the floor of 100 MiB before it, from t=0 to t=15.
        assert!((external.growth_bytes_per_s / mib as f64 - 20.0 / 15.0).abs() < 1e-6, "{external:?}");
        // Without a full GC, the V8 heap and external memory are not judged.
        let no_gc: Vec<Sample> = samples.iter().map(|s| Sample { trough: None, ..*s }).collect();
        let verdicts = categories(&no_gc);
        let external = verdicts.iter().find(|v| v.category == Category::External).unwrap();
        assert_eq!((external.method, external.growing), ("no full GC", false));
        let heap = verdicts.iter().find(|v| v.category == Category::V8Heap).unwrap();
        assert_eq!((heap.method, heap.growing), ("no full GC", false));
    }

    #[test]
    fn a_growing_category_that_no_site_explains_says_what_to_run() {
        let mib = 1u64 << 20;
        let samples: Vec<Sample> = (0..=40)
            .map(|i| {
                sample(i as f64 * 0.5, (i % 4 == 0).then_some(i as u32), 200 * mib, 100 * mib + i * 4 * mib)
            })
            .collect();
        let (suspects, verdicts) = judge(Vec::new(), categories(&samples), false, false);
        assert!(suspects.is_empty());
        let external = verdicts.iter().find(|v| v.category == Category::External).unwrap();
        assert!(external.growing && external.explained_share == 0.0, "{external:?}");
        assert!(external.next_step.as_deref().unwrap().contains("--alloc-stacks"), "{external:?}");
    }

    #[test]
    fn without_a_full_gc_only_a_growing_array_is_a_heap_suspect_and_a_site_is_listed_once() {
        let mib = 1u64 << 20;
        // The heap grows, but no mark-compact ran: not judged.
        let samples: Vec<Sample> =
            (0..=40).map(|i| sample(i as f64 * 0.5, None, 100 * mib + i * 2 * mib, 10 * mib)).collect();
        let heap =
            |c: &[CategoryVerdict]| c.iter().find(|v| v.category == Category::V8Heap).cloned().unwrap();
        assert_eq!(heap(&categories(&samples)).method, "no full GC");
        let site = |source, rate: f64| Suspect {
            growth_bytes_per_s: rate,
            ..Suspect::site(Category::V8Heap, source, "push ← app.js:3".into())
        };
        let other = Suspect { site: "render ← app.js:9".into(), ..site(Source::PageFaults, 4e6) };
        let candidates = vec![site(Source::PageFaults, 1e5), site(Source::Holds, 3e6), other];
        let (suspects, verdicts) = judge(candidates, categories(&samples), false, false);
        assert_eq!(suspects.len(), 1, "{suspects:?}");
        assert_eq!(suspects[0].source, Source::Holds);
        assert_eq!(suspects[0].evidence.as_ref().unwrap().method, "no full GC");
        assert!(heap(&verdicts).next_step.unwrap().contains("watch longer"));

        // With troughs that show the growth, both sources are judged, and the site is listed
        // once, by the source that explains more.
        let samples: Vec<Sample> = (0..=40)
            .map(|i| {
                sample(i as f64 * 0.5, (i % 4 == 0).then_some(i as u32), 100 * mib + i * 2 * mib, 10 * mib)
            })
            .collect();
        let candidates = vec![site(Source::PageFaults, 1e5), site(Source::Holds, 3e6)];
        let (suspects, _) = judge(candidates, categories(&samples), false, false);
        assert_eq!(suspects.len(), 1, "{suspects:?}");
        assert_eq!(suspects[0].source, Source::Holds);
        assert!(suspects[0].evidence.as_ref().unwrap().explained_share > 0.5, "{suspects:?}");
    }
}
