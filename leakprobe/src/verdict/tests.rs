//! The verdict's rules, each on the samples or candidates that show it.

use super::*;
use crate::{books::suspect::Held, memory::rss::Rss, v8::heap::contents::Container};

fn sample(t: f64, trough: Option<u32>, heap: u64, external: u64) -> Sample {
    Sample {
        trough,
        t_s: t,
        rss: Rss { rss_anon_bytes: heap + external + (50 << 20), ..Rss::default() },
        v8_heap_bytes: Some(heap),
        v8_old_generation_bytes: None,
        v8_worker_heaps_bytes: None,
        external_bytes: Some(external),
        native_bytes: None,
    }
}

/// Samples over 20 s whose external troughs (every 2 s) rise 2 MiB/s.
fn external_growing_2_mib_per_s() -> Vec<Sample> {
    let mib = 1u64 << 20;
    (0..=40)
        .map(|i| {
            let t = i as f64 * 0.5;
            sample(t, (i % 4 == 0).then_some(i as u32), 100 * mib, 100 * mib + (t * 2.0) as u64 * mib)
        })
        .collect()
}

/// An external site from `source` growing `mib_per_s`.
fn external_site(name: &str, source: Source, mib_per_s: f64) -> Suspect {
    Suspect {
        growth_bytes_per_s: mib_per_s * (1u64 << 20) as f64,
        ..Suspect::site(Category::External, source, name.into())
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
    // The same climb (from its dip on) from a lower first third is a new high, well above it:
    // growth.
    let climb: Vec<f64> = swing
        .iter()
        .enumerate()
        .map(|(i, v)| match i {
            0..4 => 12.0,
            4 => 17.0,
            _ => *v,
        })
        .collect();
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
    // (Its 17 MiB step is read, though a step is no trend: t far below what growth needs.)
    let committed_read = heap(&committed_only);
    assert!(committed_read.growth_bytes_per_s > 0.0, "{committed_read:?}");
    assert_eq!(committed_read.bytes, Some((39.8 * mib as f64) as u64));
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
fn a_trough_is_the_lowest_sample_after_its_gc_and_too_few_troughs_are_not_judged() {
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
    // One trough (three samples after one GC) is not a trend: not judged, and the summary
    // says to watch about two more GCs' worth (one in the later 13 s here).
    assert_eq!((external.troughs, external.method, external.growing), (1, NOT_JUDGED, false));
    assert_eq!(external.watch_s, Some(27.0));
    // Without a full GC, the V8 heap and external memory are not judged either.
    let no_gc: Vec<Sample> = samples.iter().map(|s| Sample { trough: None, ..*s }).collect();
    let (_, verdicts) = judge(Vec::new(), categories(&no_gc), &HashSet::new(), false, false);
    for v in verdicts.iter().filter(|v| v.category != Category::Native) {
        assert_eq!((v.method, v.growing), (NOT_JUDGED, false), "{v:?}");
        let next = v.next_step.as_deref().unwrap();
        assert!(next.contains("(0 of 3 in the later two thirds): watch 40 s more"), "{next}");
    }
}

#[test]
fn a_rebuilt_table_is_a_saw_tooth_not_growth() {
    let mib = 1u64 << 20;
    // A lookup table rebuilt every 6 s and swapped in (the old one freed at the next full
    // GC): the troughs rise for a few GCs and fall back at each swap.
    let table = |t: f64| (t % 6.0) * 8.0;
    let at = |gc_every: f64| -> Vec<Sample> {
        (0..=80)
            .map(|i| {
                let t = i as f64 * 0.25;
                let gc = (t % gc_every == 0.0).then_some((t / gc_every) as u32);
                sample(t, gc, ((60.0 + table(t)) * mib as f64) as u64, 10 * mib)
            })
            .collect()
    };
    let heap = |samples: &[Sample]| {
        categories(samples).into_iter().find(|v| v.category == Category::V8Heap).unwrap()
    };
    // Two late troughs, both high in the tooth: the old reading called it growth.
    let two = heap(&at(7.0));
    assert_eq!((two.troughs, two.method, two.growing), (2, NOT_JUDGED, false), "{two:?}");
    // Many troughs: their trend is flat.
    let many = heap(&at(1.25));
    assert_eq!(many.method, "troughs");
    assert!(!many.growing, "{many:?}");
}

#[test]
fn a_saw_tooth_caught_at_random_phases_is_no_evidence_until_its_trend_stands_out() {
    let mib = 1u64 << 20;
    // A healthy service that empties a 100,000-entry array when full, under a CPU load (the
    // agent test's healthy fleet member, as leakprobe read it): its old generation after each
    // mark-compact (MB), alternating low and high in the tooth.
    let read = [
        (2.31, 12.5),
        (3.94, 11.5),
        (5.54, 10.6),
        (7.24, 7.5),
        (8.54, 7.4),
        (9.84, 7.4),
        (11.04, 5.7),
        (11.85, 12.7),
        (13.66, 7.3),
        (14.46, 13.7),
        (16.26, 7.8),
        (17.07, 14.5),
    ];
    let old = |t: f64, trough: Option<u32>, mb: f64| Sample {
        v8_old_generation_bytes: Some((mb * 1e6) as u64),
        ..sample(t, trough, 40 * mib, 0)
    };
    let at = |points: &[(f64, f64)]| -> Vec<Sample> {
        let mut samples = vec![old(0.0, None, 12.5)];
        samples.extend(points.iter().enumerate().map(|(i, &(t, mb))| old(t, Some(i as u32), mb)));
        samples.push(old(18.4, None, points.last().map_or(0.0, |p| p.1)));
        samples
    };
    let heap = |samples: &[Sample]| {
        categories(samples).into_iter().find(|v| v.category == Category::V8Heap).unwrap()
    };
    let tooth = heap(&at(&read));
    // Its trend would be growth by every other rule (+4.5 MiB over the later two thirds, a new
    // high), but its troughs swing about it by more: not growing, and the summary says why and
    // how long to watch.
    assert_eq!(tooth.method, "troughs");
    assert!(tooth.growth_bytes_per_s * 12.3 > MIN_GROWTH_BYTES, "{tooth:?}");
    assert!(tooth.trend_t.is_some_and(|t| t < 2.0), "{tooth:?}");
    assert!(!tooth.growing, "{tooth:?}");
    let next = tooth.next_step.as_deref().unwrap_or_default();
    assert!(next.starts_with("its troughs swing about their trend by more than it grows (t = 1."), "{next}");
    assert!(tooth.watch_s.is_some_and(|s| s > 5.0), "{tooth:?}");
    // A leak read by as few GCs over the same times, its troughs climbing 1 MB/s about as far
    // off their line as GCs leave them (±0.3 MB): growing.
    let climb: Vec<(f64, f64)> =
        read.iter().enumerate().map(|(i, &(t, _))| (t, 10.0 + t + [0.3, -0.3, 0.0][i % 3])).collect();
    let leak = heap(&at(&climb));
    assert!(leak.growing, "{leak:?}");
    assert!(leak.trend_t.is_some_and(|t| t > 10.0), "{leak:?}");
    assert_eq!(leak.next_step, None);
}

#[test]
fn native_memory_is_tested_on_every_sample_so_three_full_gcs_can_show_its_leak() {
    let mib = 1u64 << 20;
    // Unclosed zlib streams (native, 4 MiB/s) read every 0.5 s over 20 s, with only three
    // mark-compacts in the later two thirds (as node 20 ran them); and the same samples of a
    // buffer pool that malloc fills to 37.5 MiB and frees every 4 s, which those three
    // mark-compacts happen to catch ever fuller (0, 10, 25 MiB).
    let at = |native_mib: &dyn Fn(f64) -> f64| -> Vec<Sample> {
        (0..=40)
            .map(|i| {
                let t = i as f64 * 0.5;
                let trough = [4.0, 8.0, 13.0, 18.5].iter().position(|g| *g == t).map(|p| p as u32);
                let mut s = sample(t, trough, 40 * mib, 10 * mib);
                s.rss.rss_anon_bytes = ((50.0 + 40.0 + 10.0 + native_mib(t)) * mib as f64) as u64;
                s
            })
            .collect()
    };
    let native = |samples: &[Sample]| {
        categories(samples).into_iter().find(|v| v.category == Category::Native).unwrap()
    };
    let leak = native(&at(&|t| 4.0 * t + [0.0, 1.5, -1.0][(t * 2.0) as usize % 3]));
    assert_eq!((leak.method, leak.troughs), ("troughs", 3), "{leak:?}");
    assert!(leak.growing, "{leak:?}");
    let pool = native(&at(&|t| 10.0 * (t % 4.0)));
    // Its troughs trend up by 25 MiB in 10.5 s, but its samples swing far more.
    assert!(pool.growth_bytes_per_s > 2.0 * mib as f64, "{pool:?}");
    assert!(!pool.growing, "{pool:?}");
    assert!(pool.next_step.as_deref().is_some_and(|s| s.starts_with("its samples swing")), "{pool:?}");
}

#[test]
fn a_growing_category_that_no_site_explains_says_what_to_run() {
    let mib = 1u64 << 20;
    let samples: Vec<Sample> = (0..=40)
        .map(|i| sample(i as f64 * 0.5, (i % 4 == 0).then_some(i as u32), 200 * mib, 100 * mib + i * 4 * mib))
        .collect();
    let (suspects, verdicts) = judge(Vec::new(), categories(&samples), &HashSet::new(), false, false);
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
    let heap = |c: &[CategoryVerdict]| c.iter().find(|v| v.category == Category::V8Heap).cloned().unwrap();
    assert_eq!(heap(&categories(&samples)).method, NOT_JUDGED);
    let site = |source, rate: f64| Suspect {
        growth_bytes_per_s: rate,
        ..Suspect::site(Category::V8Heap, source, "push ← app.js:3".into())
    };
    let other = Suspect { site: "render ← app.js:9".into(), ..site(Source::PageFaults, 4e6) };
    let candidates = vec![site(Source::PageFaults, 1e5), site(Source::Holds, 3e6), other];
    let (suspects, verdicts) = judge(candidates, categories(&samples), &HashSet::new(), false, false);
    assert_eq!(suspects.len(), 1, "{suspects:?}");
    assert_eq!(suspects[0].source, Source::Holds);
    assert_eq!(suspects[0].evidence.as_ref().unwrap().method, NOT_JUDGED);
    assert!(heap(&verdicts).next_step.unwrap().contains("watch "));

    // With troughs that show the growth, both sources are judged, and the site is listed
    // once, by the source that explains more.
    let samples: Vec<Sample> = (0..=40)
        .map(|i| sample(i as f64 * 0.5, (i % 4 == 0).then_some(i as u32), 100 * mib + i * 2 * mib, 10 * mib))
        .collect();
    let candidates = vec![site(Source::PageFaults, 1e5), site(Source::Holds, 3e6)];
    let (suspects, _) = judge(candidates, categories(&samples), &HashSet::new(), false, false);
    assert_eq!(suspects.len(), 1, "{suspects:?}");
    assert_eq!(suspects[0].source, Source::Holds);
    assert!(suspects[0].evidence.as_ref().unwrap().explained_share > 0.5, "{suspects:?}");
}

#[test]
fn shares_within_a_category_add_up_to_at_most_the_whole() {
    let samples = external_growing_2_mib_per_s();
    let site = |name: &str, rate: f64| external_site(name, Source::Allocations, rate);
    // Read over spans of their own, three sites claim 3 MiB/s of 2.
    let candidates = vec![site("a", 1.5), site("b", 1.0), site("c", 0.5)];
    let (suspects, verdicts) = judge(candidates, categories(&samples), &HashSet::new(), true, false);
    let shares: Vec<f64> = suspects.iter().map(|s| s.evidence.as_ref().unwrap().explained_share).collect();
    assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{shares:?}");
    assert!(shares.windows(2).all(|w| w[0] > w[1]), "still ranked by what each explains: {shares:?}");
    let external = verdicts.iter().find(|v| v.category == Category::External).unwrap();
    assert!((external.explained_share - 1.0).abs() < 1e-9, "{external:?}");
    // Sites that explain less than all keep their shares; one that explains 1% is noise.
    let candidates = vec![site("a", 0.5), site("b", 0.5), site("d", 0.02)];
    let (suspects, _) = judge(candidates, categories(&samples), &HashSet::new(), true, false);
    assert_eq!(suspects.len(), 2, "{suspects:?}");
    for s in &suspects {
        assert!((s.evidence.as_ref().unwrap().explained_share - 0.25).abs() < 0.05, "{s:?}");
    }
}

#[test]
fn a_cache_that_filled_and_levelled_off_is_not_growing() {
    let mib = 1u64 << 20;
    // Heap troughs every 2 s over 60 s: a cache fills at 1 MiB/s until 40 s, then stays.
    let at = |level_at: f64| -> Vec<Sample> {
        (0..=120)
            .map(|i| {
                let t = i as f64 * 0.5;
                let heap = 50.0 + t.min(level_at);
                sample(t, (i % 4 == 0).then_some(i as u32), (heap * mib as f64) as u64, 10 * mib)
            })
            .collect()
    };
    let heap = |samples: &[Sample]| {
        categories(samples).into_iter().find(|v| v.category == Category::V8Heap).unwrap()
    };
    let filled = heap(&at(40.0));
    assert!(filled.growth_bytes_per_s > 0.0 && filled.levelled_off && !filled.growing, "{filled:?}");
    // A leak is still growing at the end.
    let leak = heap(&at(f64::INFINITY));
    assert!(leak.growing && !leak.levelled_off, "{leak:?}");
}

#[test]
fn the_pages_a_churning_site_first_touched_are_no_lead() {
    let samples = external_growing_2_mib_per_s();
    let touched = |name: &str| external_site(name, Source::PageFaults, 1.5);
    let candidates = vec![touched("scratch ← serve"), touched("cacheFragment ← serve")];
    let churning = HashSet::from(["scratch ← serve".to_string()]);
    let (suspects, _) = judge(candidates, categories(&samples), &churning, false, false);
    let sites: Vec<&str> = suspects.iter().map(|s| s.site.as_str()).collect();
    assert_eq!(sites, ["cacheFragment ← serve"]);
}

/// Where what a site holds explains most of its category's growth, the pages another site
/// first touched are no lead (a growing heap's fresh pages are first touched by whatever
/// allocates there); where it explains less, a site that touched a fair share is still one.
#[test]
fn first_touches_are_no_lead_where_what_is_held_explains_the_growth() {
    let samples = external_growing_2_mib_per_s();
    let judged = |held_mib_per_s: f64| {
        let candidates = vec![
            external_site("cacheThumbnail ← serve", Source::Allocations, held_mib_per_s),
            external_site("openSession ← serve", Source::PageFaults, 0.4),
        ];
        let (suspects, _) = judge(candidates, categories(&samples), &HashSet::new(), false, false);
        suspects.into_iter().map(|s| s.site).collect::<Vec<String>>()
    };
    assert_eq!(judged(1.6), ["cacheThumbnail ← serve"]);
    assert_eq!(judged(0.6), ["cacheThumbnail ← serve", "openSession ← serve"]);
}

/// A worker's heap is judged at its own mark-compacts: one that keeps growing 2 MiB/s is
/// growing, one whose troughs stay flat (it churns) is not, and one with a single full GC in
/// the window is not judged yet, with how long to watch.
#[test]
fn each_workers_heap_is_judged_at_its_own_full_gcs() {
    let mib = (1u64 << 20) as f64;
    let worker = |tid: u32| WorkerIsolate {
        tid,
        name: "node".into(),
        heap: Some(format!("{tid:#x}")),
        scripts: vec!["/srv/app/jobs.js".into()],
    };
    let leaking: Vec<(f64, f64)> =
        (0..8).map(|i| (1.0 + 2.5 * i as f64, 20.0 * mib + 2.0 * mib * 2.5 * i as f64)).collect();
    let churning: Vec<(f64, f64)> =
        (0..8).map(|i| (1.0 + 2.5 * i as f64, 20.0 * mib + (i % 2) as f64 * 0.5 * mib)).collect();
    let one_gc = [(12.0, 30.0 * mib)];
    let verdicts = worker_verdicts(
        (0.0, 20.0),
        [(worker(7), &leaking[..]), (worker(8), &churning[..]), (worker(9), &one_gc[..])],
    );
    let by_tid =
        |tid: u32| verdicts.iter().find(|v| v.worker.as_ref().is_some_and(|w| w.tid == tid)).unwrap();
    let leak = by_tid(7);
    assert!(leak.growing && leak.method == "troughs", "{leak:?}");
    assert!((leak.growth_bytes_per_s / mib - 2.0).abs() < 0.01, "{leak:?}");
    assert_eq!(leak.category, Category::V8Heap);
    assert!(!by_tid(8).growing, "{:?}", by_tid(8));
    let unjudged = by_tid(9);
    assert!(!unjudged.growing && unjudged.method == NOT_JUDGED, "{unjudged:?}");
    assert!(unjudged.next_step.as_deref().is_some_and(|s| s.contains("watch")), "{unjudged:?}");
}

/// An array a worker grows is that worker's suspect: judged with the worker's heap (its share
/// of the worker's growth), not with the main isolate's flat heap; an array of the main
/// isolate is not credited with a worker's growth.
#[test]
fn a_workers_array_is_judged_with_the_workers_heap() {
    let mib = (1u64 << 20) as f64;
    // The main heap is flat at its troughs; the worker's grows 2 MiB/s.
    let samples: Vec<Sample> = (0..=40)
        .map(|i| sample(i as f64 * 0.5, (i % 4 == 0).then_some(i as u32 / 4), 50 << 20, 10 << 20))
        .collect();
    let baseline: Vec<(f64, f64)> =
        (0..8).map(|i| (1.0 + 2.5 * i as f64, 20.0 * mib + 5.0 * mib * i as f64)).collect();
    let worker =
        WorkerIsolate { tid: 7, name: "node".into(), heap: Some("0x7f00".into()), scripts: Vec::new() };
    let mut verdicts = categories(&samples);
    verdicts.extend(worker_verdicts((0.0, 20.0), [(worker, &baseline[..])]));
    let array = |heap: &str, site: &str| Suspect {
        growth_bytes_per_s: 1.8 * mib,
        holds: Some(Held {
            container: Container::Array,
            elements: 100_000,
            bytes_per_element: 56.0,
            heap: Some(heap.into()),
        }),
        ..Suspect::site(Category::V8Heap, Source::Holds, site.into())
    };
    let candidates = vec![array("0x7f00", "(anonymous) ← worker.js:24"), array("0x3500", "push ← app.js:3")];
    let (suspects, verdicts) = judge(candidates, verdicts, &HashSet::new(), false, false);
    assert_eq!(suspects.len(), 1, "{suspects:?}");
    assert_eq!(suspects[0].site, "(anonymous) ← worker.js:24");
    let evidence = suspects[0].evidence.as_ref().unwrap();
    assert_eq!(evidence.worker, Some(7));
    assert!((evidence.explained_share - 0.9).abs() < 0.01, "{evidence:?}");
    let main = verdicts.iter().find(|v| v.category == Category::V8Heap && v.worker.is_none()).unwrap();
    assert!(!main.growing && main.explained_share == 0.0, "{main:?}");
    let of_worker = verdicts.iter().find(|v| v.worker.is_some()).unwrap();
    assert!(of_worker.growing && (of_worker.explained_share - 0.9).abs() < 0.01, "{of_worker:?}");
}

/// A bounded LRU's external troughs swinging (MiB at each full GC, shaped as read on node 20
/// in CI): their trend over the later two thirds reads +0.56 MiB/s, but the last third tops
/// the first by 0.1 MiB only: not growing. Troughs rising 0.5 MiB/s throughout are growing.
#[test]
fn a_swing_that_barely_tops_the_first_third_is_not_growth() {
    let mib = (1u64 << 20) as f64;
    let swing =
        [(0.8, 20.0), (3.1, 21.4), (5.9, 20.0), (8.7, 16.0), (11.6, 19.0), (14.1, 18.0), (17.0, 21.5)];
    let samples = |troughs: &[(f64, f64)]| -> Vec<Sample> {
        let mut all: Vec<Sample> = troughs
            .iter()
            .enumerate()
            .map(|(i, &(t, v))| sample(t, Some(i as u32), 10 << 20, (v * mib) as u64))
            .collect();
        all.insert(0, sample(0.0, None, 10 << 20, (25.0 * mib) as u64));
        all.push(sample(20.0, None, 10 << 20, (27.0 * mib) as u64));
        all
    };
    let external =
        |s: &[Sample]| categories(s).into_iter().find(|v| v.category == Category::External).unwrap();
    let lru = external(&samples(&swing));
    assert!(lru.growth_bytes_per_s > 0.5 * mib && !lru.growing, "{lru:?}");
    let rising: Vec<(f64, f64)> = swing.iter().map(|&(t, _)| (t, 16.0 + 0.5 * t)).collect();
    let leak = external(&samples(&rising));
    assert!(leak.growing, "{leak:?}");
}

#[test]
fn a_heap_whose_objects_did_not_grow_by_the_census_is_not_growing() {
    use crate::memory::census::{CensusReport, IsolateHeap};
    let kib = 1024.0;
    let growing = |rate: f64| CategoryVerdict {
        category: Category::V8Heap,
        bytes: Some(30 << 20),
        growth_bytes_per_s: rate,
        troughs: 18,
        method: "troughs",
        watch_s: None,
        trend_t: Some(2.9),
        growing: true,
        levelled_off: false,
        explained_share: 0.0,
        next_step: None,
        worker: None,
    };
    let census = |first: f64, last: f64, objects: f64| CensusReport {
        first_t_s: Some(first),
        last_t_s: Some(last),
        isolates: vec![IsolateHeap {
            heap: "0x1000".into(),
            main: true,
            object_bytes_per_s: Some(objects),
            ..Default::default()
        }],
        ..Default::default()
    };
    let weighed = |rate: f64, c: &CensusReport| {
        let mut v = [growing(rate)];
        weigh_census(&mut v, c, 28.0);
        v[0].clone()
    };
    // A young healthy service, as read on a loaded machine: its old generation committed
    // +229 KiB/s at troughs over 42 s, while the census's objects gained 12 KiB/s over 35 s.
    let young = weighed(229.0 * kib, &census(4.0, 39.0, 12.0 * kib));
    assert!(!young.growing, "{young:?}");
    let next = young.next_step.unwrap_or_default();
    assert_eq!(
        next,
        "its troughs rose +229 KiB/s, but the heap census's objects +12 KiB/s over 35 s: V8 committed more \
         pages, not more objects"
    );
    // A leak's objects grow with its troughs.
    assert!(weighed(229.0 * kib, &census(4.0, 39.0, 190.0 * kib)).growing);
    // Censuses 5 s apart span too little of the later 28 s to overrule the troughs.
    assert!(weighed(229.0 * kib, &census(30.0, 35.0, 0.0)).growing);
}
