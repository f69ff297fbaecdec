//! Leak suspects: allocation sites whose outstanding bytes keep growing.
//!
//! Every interval each tracked stack's outstanding bytes (allocated minus freed since attach)
//! is added to its series. Stacks that name the same logical site ([`crate::verdict::site_key`]:
//! the same functions, scripts and lines, whatever JIT address or tier) are judged as one. A
//! site is a candidate when the floor of its series (what survives the GC's sawtooth) still
//! rises at the end of the window, by at least [`MIN_FLOOR_GROWTH`] and [`MIN_FLOOR_FRACTION`]
//! of what it holds: a bounded cache levels off and steady churn stays flat, so neither
//! qualifies. [`crate::verdict`] then keeps the candidates whose memory category grows at GC
//! troughs.

use std::collections::HashMap;

use serde::Serialize;

use leakprobe_ebpf::alloc::NO_STACK;

use crate::{
    books::series::Series,
    stacks::symbolize::{Frame, RawFrame, Symbolizer},
};

/// Smallest floor growth (bytes, last third of the window over the middle third) of a suspect.
pub const MIN_FLOOR_GROWTH: f64 = 256.0 * 1024.0;
/// Smallest floor growth as a fraction of the stack's outstanding bytes.
pub const MIN_FLOOR_FRACTION: f64 = 0.05;
/// Suspects listed at most.
pub const MAX_SUSPECTS: usize = 20;

/// Memory category of an allocation stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// ArrayBuffer/Buffer backing stores.
    External,
    /// V8 heap: large objects (one per page), by the stack that allocated them.
    V8Heap,
    /// libc malloc family (`--native`).
    Native,
    /// Anonymous memory mappings (`mmap`), for RSS growth attribution.
    Mapping,
}

/// What a suspect's bytes were measured from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Allocations followed to their frees (`--alloc-stacks`, `--native`, V8's large objects):
    /// bytes outstanding.
    Allocations,
    /// Sampled page faults: bytes first touched.
    PageFaults,
    /// Anonymous mappings: bytes mapped.
    Mappings,
    /// Large arrays the site allocated, read in the target's heap: their elements times the
    /// bytes each keeps ([`crate::memory::containers`]).
    Holds,
}

/// One raw stack of a suspect's site.
#[derive(Clone, Debug, Serialize)]
pub struct Variant {
    /// The kernel's stack id.
    pub stack_id: i64,
    /// Its bytes (outstanding, or first touched, as the suspect's).
    pub bytes: i64,
    /// Its floor growth (as the suspect's).
    pub floor_growth_bytes: f64,
}

/// Why a suspect is one: its category's growth at GC troughs, and its share of it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Evidence {
    /// GC troughs (samples right after a main-thread mark-compact) the category's growth was
    /// read at, in the later two thirds of the window; with fewer than three, the growth is
    /// read from the floors of every sample instead (`method`).
    pub troughs: usize,
    /// `troughs` or `floors`.
    pub method: &'static str,
    /// The category's growth over the later two thirds of the window.
    pub category_growth_bytes_per_s: f64,
    /// The site's growth rate over the last third, as a share of the category's growth
    /// (can pass 1 for first touches: memory touched and freed again counts too).
    pub explained_share: f64,
}

/// One suspect in `report.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Suspect {
    /// Memory category.
    pub category: Category,
    /// What the bytes were measured from.
    pub source: Source,
    /// The logical site: its frames' functions, scripts and lines.
    pub site: String,
    /// Bytes from this stack still held at the end of the window (allocated since attach).
    pub outstanding_bytes: i64,
    /// Least-squares growth rate over the window.
    pub growth_bytes_per_s: f64,
    /// Growth of the floor (lowest outstanding value) from the middle to the last third of the
    /// window: what survived the GC grew by this much.
    pub floor_growth_bytes: f64,
    /// Allocation stack, innermost frame first (the site's largest variant).
    pub frames: Vec<Frame>,
    /// Why it is a suspect (null for growing mappings, which are judged on their own).
    pub evidence: Option<Evidence>,
    /// The raw stacks of the site, largest first.
    pub variants: Vec<Variant>,
    /// For a [`Source::Holds`] site: its largest container's elements and what each keeps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holds: Option<crate::memory::containers::Held>,
}

impl Suspect {
    /// A site with no variant yet.
    pub fn site(category: Category, source: Source, site: String) -> Self {
        Suspect {
            category,
            source,
            site,
            outstanding_bytes: 0,
            growth_bytes_per_s: 0.0,
            floor_growth_bytes: 0.0,
            frames: Vec::new(),
            evidence: None,
            variants: Vec::new(),
            holds: None,
        }
    }

    /// Adds one raw stack of the site (its frames, and its bytes and floor growth to the
    /// site's): the site reads as its largest variant.
    pub fn add_variant(&mut self, frames: Vec<Frame>, variant: Variant) {
        if self.variants.iter().all(|v| v.bytes < variant.bytes) {
            self.frames = frames;
        }
        self.outstanding_bytes += variant.bytes;
        self.floor_growth_bytes += variant.floor_growth_bytes;
        self.variants.push(variant);
    }
}

/// One allocation stack's bytes, in `report.stacks[]` (what the flamegraphs are drawn from).
#[derive(Clone, Debug, Serialize)]
pub struct StackProfile {
    /// Memory category.
    pub category: Category,
    /// Allocation stack, innermost frame first.
    pub frames: Vec<Frame>,
    /// Bytes allocated from this stack since attach (null for mappings, which are books of
    /// what is mapped now).
    pub allocated_bytes: Option<u64>,
    /// Bytes from this stack still held at the end of the window.
    pub outstanding_bytes: i64,
    /// Bytes from this stack held at the middle of the window.
    pub outstanding_mid_bytes: i64,
}

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
}

impl Tracker {
    /// Adds one sample of a category's outstanding bytes by stack.
    pub fn sample(&mut self, category: Category, t: f64, outstanding: impl IntoIterator<Item = (i64, i64)>) {
        for (stack_id, bytes) in outstanding {
            self.series.entry((category, stack_id)).or_default().push(t, bytes as f64);
        }
        self.window = Some(self.window.map_or((t, t), |(first, _)| (first, t)));
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
            // A stack that never held anything adds nothing to its site.
            if series.points().iter().all(|p| p.1 <= 0.0) {
                continue;
            }
            let frames = symbolizer.stack_frames(stack_id, &mut stack);
            let site = crate::verdict::site_key(&frames);
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
                group.growth_bytes_per_s = site.slope();
                group.floor_growth_bytes = site.floor_growth();
                group
            })
            .filter(|s| qualifies(s.floor_growth_bytes, s.outstanding_bytes as f64))
            .collect();
        for s in &mut found {
            s.variants.sort_by_key(|v| std::cmp::Reverse(v.bytes));
        }
        found.sort_by(|a, b| b.floor_growth_bytes.total_cmp(&a.floor_growth_bytes));
        found.truncate(MAX_SUSPECTS);
        found
    }
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
}
