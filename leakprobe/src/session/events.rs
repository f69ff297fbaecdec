//! The kernel's events, read from the ring buffer and dispatched by kind to the families'
//! books; stacks named as soon as they are new, while their code and objects are still there.

use std::collections::HashSet;

use leakprobe_ebpf::{
    alloc::NO_STACK, faults::FaultEvent, gc::GcEvent, heap::HeapEvent, stack::NewStack, syscalls::MapEvent,
    EventKind,
};

use super::{Session, TRIGGER_STACKS};
use crate::{
    kernel::{load::read_record, stacks::StackMaps},
    memory::gc::GcKind,
    stacks::symbolize::Symbolizer,
};

impl Session {
    /// Reads every event waiting in the ring buffer, dispatching on its kind.
    pub(super) fn drain(&mut self) {
        let Session {
            events,
            gc,
            heap,
            mappings,
            target,
            started,
            started_ns,
            trough_due,
            mark_compacts,
            census,
            pending_pauses,
            events_read,
            symbolizer,
            named,
            stack_maps,
            faults,
            ..
        } = self;
        let t = started.elapsed().as_secs_f64();
        let ring = events.get_mut();
        while let Some(item) = ring.next() {
            *events_read += 1;
            let kind = item.get(..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            if kind == Some(EventKind::Gc as u32) {
                if let Some(event) = read_record::<GcEvent>(&item) {
                    gc.record(&event, *started_ns, |tid| {
                        target.thread_name(tid).unwrap_or_else(|| "?".into())
                    });
                    if let Some(kind) = GcKind::from_collector(event.collector) {
                        if let Some(pauses) = pending_pauses {
                            pauses.push((kind, event.duration_ns as f64 / 1e9));
                        }
                        if kind == GcKind::MarkCompact && event.tid == target.pid {
                            *mark_compacts += 1;
                            *trough_due = Some(*mark_compacts);
                        }
                        if let Some(census) = census.as_mut().filter(|_| kind == GcKind::MarkCompact) {
                            census.on_mark_compact(t, event.tid == target.pid, heap.bytes());
                        }
                        if kind == GcKind::MarkCompact {
                            symbolizer.moved();
                        }
                        faults.on_gc();
                        heap.on_gc(kind, event.tid);
                    }
                }
            } else if kind == Some(EventKind::Heap as u32) {
                if let Some(event) = read_record::<HeapEvent>(&item) {
                    heap.apply(&event, t);
                }
            } else if kind == Some(EventKind::Map as u32) {
                if let Some(event) = read_record::<MapEvent>(&item) {
                    mappings.apply(&event);
                }
            } else if kind == Some(EventKind::Fault as u32) {
                if let Some(event) = read_record::<FaultEvent>(&item) {
                    faults.record(&event, heap.pages());
                }
            } else if kind == Some(EventKind::NewStack as u32) {
                // Named at once, while its frames' code and objects are where they were
                // (agent mode reports no stacks).
                if let Some(new) = read_record::<NewStack>(&item).filter(|_| pending_pauses.is_none()) {
                    Self::name_once(named, symbolizer, stack_maps, new.sampled != 0, new.id);
                }
            }
        }
    }

    /// Symbolizes the stacks a report names that were not named yet, while the target
    /// is alive to read its mappings (after it exits, only these cached names remain). Stack
    /// ids never change their stack, so each is named once.
    pub(super) fn name_new_stacks(&mut self) {
        if self.pending_pauses.is_some() {
            // Fleet mode reports no stacks.
            return;
        }
        let Session { stack_maps, suspects, mapping_growth, heap, symbolizer, named, containers, .. } = self;
        let triggers = self.gc.top_trigger_stacks(TRIGGER_STACKS).into_iter().map(|(id, _)| id);
        let grown = containers.iter().flat_map(|c| c.tracker.ids());
        let held = suspects
            .ids()
            .chain(mapping_growth.ids())
            .chain(triggers)
            .chain(grown)
            .filter(|id| *id != NO_STACK);
        let held = held.map(|id| (false, id));
        let sampled =
            heap.top_samples().0.into_iter().map(|(id, _)| (true, id)).filter(|(_, id)| *id != NO_STACK);
        for (in_samples, id) in held.chain(sampled) {
            Self::name_once(named, symbolizer, stack_maps, in_samples, id);
        }
    }

    /// Starts naming stack `id` unless it was started before.
    pub(super) fn name_once(
        named: &mut HashSet<i64>,
        symbolizer: &mut Symbolizer,
        maps: &StackMaps,
        sampled: bool,
        id: i64,
    ) {
        if named.insert(id) {
            symbolizer.prefetch(id, maps.frames(sampled, id));
        }
    }
}
