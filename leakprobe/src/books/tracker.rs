//! Leak suspects: allocation sites whose outstanding bytes keep growing.
//!
//! Every interval each tracked stack's outstanding bytes (allocated minus freed since attach)
//! is added to its series. Stacks that name the same logical site ([`crate::books::site::site_key`]:
//! the same functions, scripts and lines, whatever JIT address or tier) are judged as one. A
//! site is a candidate when the floor of its series (what survives the GC's sawtooth) still
//! rises at the end of the window, by at least [`MIN_FLOOR_GROWTH`] and [`MIN_FLOOR_FRACTION`]
//! of what it holds: a bounded cache levels off and steady churn stays flat, so neither
//! qualifies. [`crate::verdict`] then keeps the candidates whose memory category grows at GC
//! troughs.
//!
//! Where the GC frees a category's garbage (the V8 heap, external memory), a site's growth is
//! read where that garbage is gone: at the samples taken as each full GC's trough ends
//! ([`Tracker::trough`]). Between full GCs, a churning site holds as much as a leaking one.

use std::collections::{HashMap, HashSet};

use leakprobe_ebpf::alloc::NO_STACK;

use crate::{
    books::{
        series::{median_slope, Forget, Series},
        site::site_key,
        suspect::{Category, Source, StackProfile, Suspect, Variant, MAX_SUSPECTS},
    },
    stacks::{frame::RawFrame, symbolize::Symbolizer},
};

/// Smallest floor growth (bytes, last third of the window over the middle third) of a suspect.
pub const MIN_FLOOR_GROWTH: f64 = 256.0 * 1024.0;
/// Smallest floor growth as a fraction of the stack's outstanding bytes.
pub const MIN_FLOOR_FRACTION: f64 = 0.05;

/// Stacks listed in `report.stacks` at most (the largest by allocated or held bytes).
pub const MAX_PROFILE_STACKS: usize = 2000;

/// Outstanding-bytes series per (category, stack id).
#[derive(Default)]
pub struct Tracker {
    series: HashMap<(Category, i64), Series>,
    /// Bytes allocated since attach, per (category, stack id), where the family counts them.
    allocated: HashMap<(Category, i64), u64>,
    /// First and latest sample time.
    window: Option<(f64, f64)>,
    /// Times of the samples taken as a full GC's trough ended, oldest first (at most
    /// [`MAX_TROUGHS`]).
    troughs: Vec<f64>,
}

/// Share of what a site of a collected category allocated since attach that it must still hold
/// to be a suspect (a leak keeps what it allocates).
pub const MIN_RETAINED_SHARE: f64 = 0.5;
/// GC troughs remembered at most (the oldest are dropped).
const MAX_TROUGHS: usize = 4096;
/// Troughs within a site's series that make a trend of its growth.
pub const MIN_SITE_TROUGHS: usize = 3;
/// Bytes a site must have allocated since attach to be told churn by what it freed.
pub const MIN_CHURN_BYTES: u64 = 1 << 20;

impl Forget for Tracker {
    /// Each stack's series starts at `t` (what it held then), and the troughs before `t` are
    /// forgotten. The bytes allocated since attach stay whole: a stack that freed most of what
    /// it allocated is still churn.
    fn forget_before(&mut self, t: f64) {
        let Some((first, last)) = self.window else { return };
        if first >= t {
            return;
        }
        for series in self.series.values_mut() {
            series.start_at(t);
        }
        self.troughs.retain(|&trough| trough >= t);
        self.window = Some((t.min(last), last));
    }
}

impl Tracker {
    /// Adds one sample of a category's outstanding bytes by stack.
    pub fn sample(&mut self, category: Category, t: f64, outstanding: impl IntoIterator<Item = (i64, i64)>) {
        for (stack_id, bytes) in outstanding {
            self.series.entry((category, stack_id)).or_default().push(t, bytes as f64);
        }
        self.window = Some(self.window.map_or((t, t), |(first, _)| (first, t)));
    }

    /// Marks the samples taken at `t` as a full GC's trough: what the GC left.
    pub fn trough(&mut self, t: f64) {
        if self.troughs.len() == MAX_TROUGHS {
            self.troughs.remove(0);
        }
        self.troughs.push(t);
    }

    /// A site's growth (bytes per second): for a category whose garbage waits for the GC, the
    /// trend of what its allocations held at the GC troughs within its series, or its slope
    /// where fewer than [`MIN_SITE_TROUGHS`] came (an opening burst between full GCs); for
    /// others (and for what arrays hold, live whatever the GC has run), its slope.
    fn growth(&self, category: Category, source: Source, site: &Series) -> f64 {
        let (Some(first), Some(last)) = (site.points().first(), site.points().last()) else { return 0.0 };
        if !at_troughs(category, source) {
            return site.slope();
        }
        let held: Vec<(f64, f64)> = self
            .troughs
            .iter()
            .filter(|t| (first.0..=last.0).contains(*t))
            .filter_map(|&t| Some((t, site.at(t)?)))
            .collect();
        match held.len() >= MIN_SITE_TROUGHS {
            true => median_slope(&held),
            false => site.slope(),
        }
    }

    /// Whether stack `stack_id` of `category` still holds at least [`MIN_RETAINED_SHARE`] of what
    /// it allocated since attach (true where allocations are not counted): a leaking path keeps
    /// what it allocates, a churning one frees most of it (while between full GCs its garbage
    /// piles up as a leak's Buffers do).
    fn keeps(&self, category: Category, stack_id: i64, series: &Series) -> bool {
        match self.allocated.get(&(category, stack_id)) {
            Some(&allocated) if allocated > 0 => {
                series.last().unwrap_or(0.0) >= MIN_RETAINED_SHARE * allocated as f64
            }
            _ => true,
        }
    }

    /// The logical sites (by [`site_key`]) whose allocations of a collected category were
    /// followed to their frees and that churn: at least [`MIN_CHURN_BYTES`] allocated since
    /// attach, and none of their stacks still holding [`MIN_RETAINED_SHARE`] of what it
    /// allocated. The memory such a site first touches is garbage the GC frees, not a leak.
    pub fn churning(
        &self,
        mut stack: impl FnMut(i64) -> Vec<RawFrame>,
        symbolizer: &mut Symbolizer,
    ) -> HashSet<String> {
        let mut sites: HashMap<String, (u64, bool)> = HashMap::new();
        for (&(category, stack_id), series) in &self.series {
            let Some(&allocated) = self.allocated.get(&(category, stack_id)) else { continue };
            if !category.collected() || allocated == 0 {
                continue;
            }
            let site = site_key(&symbolizer.stack_frames(stack_id, &mut stack));
            let entry = sites.entry(site).or_default();
            entry.0 += allocated;
            entry.1 |= series.last().unwrap_or(0.0) > 0.0 && self.keeps(category, stack_id, series);
        }
        sites
            .into_iter()
            .filter(|(_, (allocated, keeping))| *allocated >= MIN_CHURN_BYTES && !keeping)
            .map(|(site, _)| site)
            .collect()
    }

    /// Gives a stack seen for the first time a zero at each of `times` (the samples before it),
    /// so that its series spans the window as its site's other stacks do and their slopes add up.
    pub fn backfill(&mut self, category: Category, stack_id: i64, times: &[f64]) {
        let series = self.series.entry((category, stack_id)).or_default();
        if series.points().is_empty() {
            for &t in times {
                series.push(t, 0.0);
            }
        }
    }

    /// Records the bytes allocated since attach by stack (cumulative totals).
    pub fn allocated(&mut self, category: Category, totals: impl IntoIterator<Item = (i64, u64)>) {
        for (stack_id, bytes) in totals {
            self.allocated.insert((category, stack_id), bytes);
        }
    }

    /// Every stack's bytes, with frames (at most [`MAX_PROFILE_STACKS`], largest first).
    pub fn profiles(
        &self,
        mut stack: impl FnMut(i64) -> Vec<RawFrame>,
        symbolizer: &mut Symbolizer,
    ) -> Vec<StackProfile> {
        let Some((first, last)) = self.window else {
            return Vec::new();
        };
        let mid = (first + last) / 2.0;
        let mut rows: Vec<(&(Category, i64), &Series, Option<u64>)> =
            self.series.iter().map(|(key, series)| (key, series, self.allocated.get(key).copied())).collect();
        let size = |(_, s, a): &(&(Category, i64), &Series, Option<u64>)| {
            a.unwrap_or(0).max(s.last().unwrap_or(0.0).max(0.0) as u64)
        };
        rows.retain(|r| size(r) > 0);
        rows.sort_by_key(|r| std::cmp::Reverse(size(r)));
        rows.truncate(MAX_PROFILE_STACKS);
        rows.into_iter()
            .map(|(&(category, stack_id), series, allocated_bytes)| StackProfile {
                category,
                frames: symbolizer.stack_frames(stack_id, &mut stack),
                allocated_bytes,
                outstanding_bytes: series.last().unwrap_or(0.0) as i64,
                outstanding_mid_bytes: series.at(mid).unwrap_or(0.0) as i64,
            })
            .collect()
    }

    /// Every stack id followed (each in [`Tracker::profiles`] and maybe a suspect).
    pub fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.series.keys().map(|&(_, id)| id).filter(|&id| id != NO_STACK)
    }

    /// The candidate suspects, largest late growth first, with frames from `stack` (the
    /// addresses of a stack id) and `symbolizer`. Stacks of one logical site (they differ only
    /// in JIT code addresses or tiers, e.g. the same JS path compiled twice) are one suspect,
    /// their bytes summed and each kept as a variant.
    pub fn suspects(
        &self,
        mut stack: impl FnMut(i64) -> Vec<RawFrame>,
        symbolizer: &mut Symbolizer,
        source: Source,
    ) -> Vec<Suspect> {
        let mut groups: HashMap<(Category, String), (Suspect, Vec<&Series>)> = HashMap::new();
        for (&(category, stack_id), series) in &self.series {
            // A stack that never held anything adds nothing to its site, nor does one that
            // churns where garbage waits for the GC (a function that caches one Buffer and
            // writes others is one site: its leaking path, not its writes).
            if series.points().iter().all(|p| p.1 <= 0.0)
                || (at_troughs(category, source) && !self.keeps(category, stack_id, series))
            {
                continue;
            }
            let frames = symbolizer.stack_frames(stack_id, &mut stack);
            let site = site_key(&frames);
            let (group, parts) = groups
                .entry((category, site.clone()))
                .or_insert_with(|| (Suspect::site(category, source, site), Vec::new()));
            parts.push(series);
            // A stack that holds nothing now is no variant to show (its past still counts in
            // the site's series).
            if series.last().unwrap_or(0.0) > 0.0 || series.floor_growth() > 0.0 {
                let variant = Variant {
                    stack_id,
                    bytes: series.last().unwrap_or(0.0) as i64,
                    floor_growth_bytes: series.floor_growth(),
                };
                group.add_variant(frames, variant);
            }
        }
        // The site is judged on its stacks' sum, point by point: each stack's own slope and
        // floor are over its own span, and a stack that took over from another would read as
        // one drop and one start.
        let mut found: Vec<Suspect> = groups
            .into_values()
            .filter(|(group, _)| !group.variants.is_empty())
            .map(|(mut group, parts)| {
                let site = Series::sum(parts);
                group.growth_bytes_per_s = self.growth(group.category, source, &site);
                group.floor_growth_bytes = site.floor_growth();
                group
            })
            .filter(|s| {
                let ok = qualifies(s.floor_growth_bytes, s.outstanding_bytes as f64);
                if !ok && s.floor_growth_bytes > 0.0 {
                    log::debug!(
                        "no candidate: {:?} {} ({source:?}): floor +{:.0} B of {} B held",
                        s.category,
                        s.site,
                        s.floor_growth_bytes,
                        s.outstanding_bytes
                    );
                }
                ok
            })
            // What the GC left of it must grow.
            .filter(|s| !at_troughs(s.category, source) || s.growth_bytes_per_s > 0.0)
            .collect();
        for s in &mut found {
            s.variants.sort_by_key(|v| std::cmp::Reverse(v.bytes));
        }
        found.sort_by(|a, b| b.floor_growth_bytes.total_cmp(&a.floor_growth_bytes));
        found.truncate(MAX_SUSPECTS);
        found
    }
}

/// Whether a site's growth is read at GC troughs: its allocations' bytes in a category whose
/// garbage waits for the GC.
fn at_troughs(category: Category, source: Source) -> bool {
    category.collected() && source == Source::Allocations
}

/// Whether a stack's series is still growing at the end of the window.
pub fn is_suspect(s: &Series) -> bool {
    qualifies(s.floor_growth(), s.last().unwrap_or(0.0))
}

/// The suspect rule on its numbers: the floor grew by at least [`MIN_FLOOR_GROWTH`] and
/// [`MIN_FLOOR_FRACTION`] of what is held.
pub fn qualifies(floor_growth: f64, held: f64) -> bool {
    floor_growth >= MIN_FLOOR_GROWTH && floor_growth >= MIN_FLOOR_FRACTION * held
}
#[cfg(test)]
mod tests {
    use super::*;

    fn series(f: impl Fn(f64) -> f64) -> Series {
        let mut s = Series::default();
        for i in 0..=30 {
            s.push(i as f64, f(i as f64));
        }
        s
    }

    #[test]
    fn growth_is_suspect_plateau_and_churn_are_not() {
        let mb = 1024.0 * 1024.0;
        assert!(is_suspect(&series(|t| t * mb)), "steady growth");
        assert!(!is_suspect(&series(|t| t.min(10.0) * mb)), "bounded cache levels off");
        assert!(
            !is_suspect(&series(|t| if (t as u64).is_multiple_of(2) { 4.0 * mb } else { 5.0 * mb })),
            "churn"
        );
        assert!(!is_suspect(&series(|t| t * 1024.0)), "1 KiB/s is below the threshold");
        assert!(!is_suspect(&series(|t| 500.0 * mb + t * 2048.0)), "tiny relative to what it holds");
    }

    #[test]
    fn a_window_forgets_growth_that_ended_before_it() {
        let mib = 1024.0 * 1024.0;
        let mut tracker = Tracker::default();
        // Grows 1 MiB/s for 30 s, then holds what it has; a full GC every 2 s.
        for i in 0..=120 {
            let t = i as f64 * 0.5;
            tracker.sample(Category::External, t, [(7, (t.min(30.0) * mib) as i64)]);
            if i % 4 == 0 {
                tracker.trough(t);
            }
        }
        let growth = |tracker: &Tracker| {
            let site = &tracker.series[&(Category::External, 7)];
            tracker.growth(Category::External, Source::Allocations, site)
        };
        assert!(growth(&tracker) > 0.1 * mib, "since attach: {}", growth(&tracker) / mib);
        tracker.forget_before(35.25);
        assert_eq!(growth(&tracker), 0.0);
        let site = &tracker.series[&(Category::External, 7)];
        assert_eq!(site.points()[0], (35.25, 30.0 * mib), "what it held at the window's start");
        assert!(tracker.troughs.iter().all(|&t| t >= 35.25), "{:?}", tracker.troughs);
        assert_eq!(tracker.window, Some((35.25, 60.0)));
    }

    #[test]
    fn a_collected_site_grows_by_what_the_gc_left_of_it() {
        let mib = 1024.0 * 1024.0;
        let mut tracker = Tracker::default();
        // A full GC every 2 s; between them, churn piles up garbage that the GC frees.
        for i in 0..=40 {
            tracker.window = Some((0.0, i as f64 * 0.5));
            if i % 4 == 0 {
                tracker.trough(i as f64 * 0.5);
            }
        }
        let churn = series(|t| mib + (t % 2.0) * 4.0 * mib);
        let leak = series(|t| t * mib);
        let at_troughs = |s: &Series| tracker.growth(Category::External, Source::Allocations, s);
        assert!(at_troughs(&churn).abs() < 1e-6, "{}", at_troughs(&churn));
        assert!((at_troughs(&leak) / mib - 1.0).abs() < 1e-6);
        // What an array holds is live whatever the GC ran: its slope.
        assert_eq!(tracker.growth(Category::External, Source::Holds, &churn), churn.slope());
        // A site read over one GC only (an opening burst) has no trend of troughs: its slope.
        let burst: Series = {
            let mut s = Series::default();
            (0..=6).for_each(|i| s.push(8.5 + i as f64 * 0.5, i as f64 * mib));
            s
        };
        assert_eq!(tracker.growth(Category::External, Source::Allocations, &burst), burst.slope());
        // A stack that freed most of what it allocated churns; one that kept it leaks.
        tracker.allocated(Category::External, [(1, 60 << 20), (2, 6 << 20)]);
        assert!(!tracker.keeps(Category::External, 1, &burst));
        assert!(tracker.keeps(Category::External, 2, &burst));
        assert!(tracker.keeps(Category::External, 3, &burst), "allocations not counted");
    }
}
