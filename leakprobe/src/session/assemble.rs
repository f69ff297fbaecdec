//! The session's report: what each family's books say, judged ([`crate::verdict`]) and named,
//! as `report.json`'s [`Report`].

use std::time::UNIX_EPOCH;

use leakprobe_ebpf::drops::DropReason;

use super::{Session, Stacks, TRIGGER_STACKS};
use crate::{
    books::{series::Forget, suspect::Source},
    memory::{
        census::{CensusReport, CensusWatch},
        containers::Containers,
        native::NativeState,
        rss,
    },
    outputs::report::{GcReport, Report, StopReason, TargetInfo, TriggerStack, Window, SCHEMA_VERSION},
    v8::{heap::pages::Page, ProcMem},
    verdict::{self, WorkerIsolate},
};

impl Session {
    /// Ends the window: waits for a census under way, reads what is left and samples once
    /// more; the final report, with every stack named.
    pub fn close(&mut self, stop: StopReason) -> Report {
        if let Some(census) = &self.census {
            census.settle(crate::memory::census::SETTLE);
        }
        self.drain();
        self.sample();
        self.report(stop, Stacks::All)
    }

    /// The verdict so far, with its suspects named: what the agent judges every few minutes
    /// while the session goes on. With a rolling window, the books first forget what came
    /// before it.
    pub fn judge(&mut self) -> Report {
        if let Some(window) = self.window {
            let start = self.started.elapsed().as_secs_f64() - window;
            if start > self.judged_from {
                self.forget_before(start);
            }
        }
        self.report(StopReason::Duration, Stacks::Suspects)
    }

    /// Forgets what the verdict's books saw before `t` (seconds since attach): memory samples
    /// and their GC troughs, what each stack held, the readings after mark-compacts. What is
    /// counted since attach (GC pauses, bytes allocated, events) stays whole; the heap census
    /// rolls its own window.
    fn forget_before(&mut self, t: f64) {
        self.memory.retain(|s| s.t_s >= t);
        for books in [
            &mut self.suspects as &mut dyn Forget,
            &mut self.mapping_growth,
            &mut self.faults,
            &mut self.heap,
        ] {
            books.forget_before(t);
        }
        if let Some(containers) = &mut self.containers {
            containers.forget_before(t);
        }
        self.judged_from = t;
    }

    /// Everything collected so far, every stack named, as the final report would say it (the
    /// agent's incidents); the session goes on.
    pub fn incident(&mut self) -> Report {
        self.drain();
        self.sample();
        self.report(StopReason::Duration, Stacks::All)
    }

    pub(super) fn drop_counts(&self) -> std::collections::BTreeMap<&'static str, u64> {
        DropReason::ALL
            .iter()
            .map(|r| {
                let n = self.drops.get(&(*r as u32), 0).map(|v| v.iter().sum()).unwrap_or(0);
                (r.name(), n)
            })
            .collect()
    }

    /// The worker threads' isolates the heap books saw run a mark-compact, each with its
    /// thread's name and its heap (from the header of a page it allocated, unless that page
    /// now belongs to the main isolate), and its baseline.
    fn worker_isolates(&self, census: Option<&CensusReport>) -> Vec<(WorkerIsolate, &[(f64, f64)])> {
        if self.heap.workers.is_empty() {
            return Vec::new();
        }
        let mem = ProcMem::open(self.target.pid).ok();
        let main = census.and_then(|c| c.isolates.iter().find(|i| i.main)).map(|i| i.heap.clone());
        self.heap
            .workers
            .iter()
            .map(|(&tid, w)| {
                let heap = w
                    .page
                    .zip(mem.as_ref())
                    .and_then(|(page, mem)| Page::read(mem, page))
                    .map(|p| format!("{:#x}", p.heap))
                    .filter(|h| Some(h) != main.as_ref());
                let name = self.gc.threads.get(&tid).map_or_else(String::new, |t| t.name.clone());
                let scripts = census
                    .and_then(|c| c.isolates.iter().find(|i| Some(&i.heap) == heap.as_ref()))
                    .map(|i| i.scripts.clone())
                    .unwrap_or_default();
                (WorkerIsolate { tid, name, heap, scripts }, w.baseline.points())
            })
            .collect()
    }

    pub(super) fn report(&mut self, stop_reason: StopReason, stacks_wanted: Stacks) -> Report {
        let all = stacks_wanted == Stacks::All;
        let maps = &self.stack_maps;
        let samples = self.memory.items();
        // The census's latest state, read once (a copy, taken under its lock).
        let census = self.census.as_ref().map(CensusWatch::report);
        let mut categories = verdict::categories(samples);
        // Each worker's heap, judged at its own full GCs: its containers' sites are its suspects.
        if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
            categories.extend(verdict::worker_verdicts(
                (first.t_s, last.t_s),
                self.worker_isolates(census.as_ref()),
            ));
        }
        // A V8 heap whose troughs grew while its objects did not, by the heap census.
        if let (Some(census), Some(first), Some(last)) = (&census, samples.first(), samples.last()) {
            verdict::weigh_census(&mut categories, census, 2.0 / 3.0 * (last.t_s - first.t_s));
        }
        let (suspects, verdict, gc_touched) = {
            let symbolizer = &mut self.symbolizer;
            let mut candidates =
                self.suspects.suspects(|id| maps.frames(false, id), symbolizer, Source::Allocations);
            let (faulting, gc_touched) =
                self.faults.sites(samples, |id| symbolizer.stack_frames(id, |id| maps.frames(false, id)));
            candidates.extend(faulting);
            if let Some(containers) = &self.containers {
                let mut holding =
                    containers.tracker.suspects(|id| maps.frames(false, id), symbolizer, Source::Holds);
                for s in &mut holding {
                    s.holds = containers.held(s.variants.iter().map(|v| v.stack_id));
                }
                candidates.extend(holding);
            }
            let native_exact = self.native.is_some();
            let churning = self.suspects.churning(|id| maps.frames(false, id), &mut self.symbolizer);
            let (suspects, verdict) =
                verdict::judge(candidates, categories, &churning, self.alloc_stacks, native_exact);
            (suspects, verdict, gc_touched)
        };
        let growing_mappings = match all {
            true => self.mapping_growth.suspects(
                |id| maps.frames(false, id),
                &mut self.symbolizer,
                Source::Mappings,
            ),
            false => Vec::new(),
        };
        let mut stack_profiles = Vec::new();
        if all {
            stack_profiles = self.suspects.profiles(|id| maps.frames(false, id), &mut self.symbolizer);
            stack_profiles
                .extend(self.mapping_growth.profiles(|id| maps.frames(false, id), &mut self.symbolizer));
        }
        Report {
            schema_version: SCHEMA_VERSION,
            leakprobe_version: env!("CARGO_PKG_VERSION"),
            target: TargetInfo::new(&self.target, &self.js_frames),
            window: Window {
                start_unix_s: self.started_wall.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
                duration_s: self.started.elapsed().as_secs_f64(),
                judged_from_s: self.judged_from,
                stop_reason,
            },
            probes: self.probes.clone(),
            gc: {
                let mut gc = GcReport::new(&self.gc, self.target.pid);
                if all {
                    gc.trigger_stacks = self
                        .gc
                        .top_trigger_stacks(TRIGGER_STACKS)
                        .into_iter()
                        .map(|(id, pauses)| TriggerStack {
                            pauses,
                            frames: self.symbolizer.stack_frames(id, |id| maps.frames(false, id)),
                        })
                        .collect();
                }
                gc
            },
            memory: {
                let mut memory = rss::MemoryReport::new(self.memory.items());
                if let Some(census) = &census {
                    memory.split_isolates(census);
                }
                memory
            },
            heap: {
                let mut heap = self.heap.report(|id| match all {
                    true => self.symbolizer.stack_frames(id, |id| maps.frames(true, id)),
                    false => Vec::new(),
                });
                heap.census = census;
                heap.containers = self.containers.as_ref().map(Containers::report);
                heap
            },
            native: self.native.as_ref().map(NativeState::report),
            mappings: self.mappings.report(growing_mappings),
            external: self.external.report(),
            faults: self.faults.report(gc_touched),
            verdict,
            suspects,
            stacks: stack_profiles,
            drops: self.drop_counts(),
        }
    }
}
