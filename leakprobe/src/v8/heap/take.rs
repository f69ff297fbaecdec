//! A census of a live V8 heap, read from outside: which objects it holds, by type.
//!
//! V8 keeps its heap in chunks aligned to 256 KiB ("pages"), each starting with a header that
//! says where its objects start and end and which isolate's heap it belongs to. The census looks
//! at every 256 KiB-aligned address of the target's anonymous mappings, keeps those whose header
//! is consistent (it names its own address), and walks each old-generation page object by
//! object: an object starts with its map, and the map gives its type and, for fixed-size types,
//! its size. Variable-sized objects get their size from their length field (strings, arrays,
//! descriptor arrays, ...); for types the metadata does not describe, the usual shapes are tried
//! and kept only when the next object starts with a map. When nothing fits, the walk looks
//! ahead for the next run of objects and counts the bytes in between as unparsed.
//!
//! Objects are counted by what a heap snapshot names them: JavaScript objects by constructor
//! (plain objects also by their property names), closures by function, strings, contexts,
//! ArrayBuffers with the external bytes each holds, and V8's internal objects by their type.
//!
//! What this does not do (yet):
//! - Young-generation pages are not walked (their objects past the allocation top are stale,
//!   and the top is not in the page header). A census read after a mark-compact finds almost
//!   everything in the old generation, since V8 promotes the young survivors of a full GC.
//! - A linear walk also counts dead objects on pages the sweeper has not reached yet; read
//!   after sweeping (a few milliseconds after a mark-compact) it counts what the collector kept.
//! - The page header layout is not in the `v8dbg_*` metadata: the three shapes of node 18–24
//!   are recognised here by their self-pointers (see [`crate::v8::heap::pages::Page::read`]).
//!
//! Nothing here stops the target: reads race with the mutator, and a torn read shows as an
//! object that does not parse (counted as unparsed bytes), never as a crash.

use std::{collections::HashMap, time::Instant};

use super::{
    census::{Census, IsolateCensus, Limits, Stopped, TypeCount},
    layout::HeapLayout,
    pages::{find_pages, PAGE},
    walk::{Walker, LARGE_HEAD},
};
use crate::v8::{memory::Memory, reader::Reader};

/// Reads a census of the heaps in `ranges` (the target's anonymous mappings).
pub fn census<M: Memory>(
    reader: &mut Reader<M>,
    hl: &HeapLayout,
    ranges: &[(u64, u64)],
    limits: Limits,
) -> Census {
    let started = Instant::now();
    let pages = find_pages(&reader.mem, ranges);
    let mut walker = Walker::new(reader, hl, &pages);
    let mut isolates: HashMap<u64, IsolateCensus> = HashMap::new();
    let mut bytes_read = pages.len() as u64 * 96;
    let mut unreadable = 0;
    let mut stopped = None;
    let mut not_walked = 0;
    for page in &pages {
        let iso = isolates.entry(page.heap).or_insert_with(|| IsolateCensus {
            heap: format!("{:#x}", page.heap),
            committed_bytes: 0,
            pages: 0,
            young_pages: 0,
            young_bytes: 0,
            object_bytes: 0,
            objects: 0,
            free_bytes: 0,
            types: Vec::new(),
            scripts: Vec::new(),
        });
        iso.committed_bytes += page.size;
        if page.young() {
            iso.young_pages += 1;
            iso.young_bytes += page.size;
            continue;
        }
        if stopped.is_none() {
            if bytes_read >= limits.max_bytes {
                stopped = Some(Stopped::SizeCap);
            } else if started.elapsed() >= limits.max_time {
                stopped = Some(Stopped::TimeCap);
            }
        }
        if stopped.is_some() {
            not_walked += 1;
            continue;
        }
        let area = page.area_end - page.area_start;
        let large = area > PAGE;
        let len = if large { area.min(LARGE_HEAD) } else { area };
        let mut buf = vec![0u8; len as usize];
        bytes_read += len;
        if !walker.reader.mem.read(page.area_start, &mut buf) {
            unreadable += 1;
            continue;
        }
        iso.pages += 1;
        match large {
            true => walker.large(page, &buf, area),
            false => walker.walk(page, &buf),
        }
    }
    let mut isolates: Vec<IsolateCensus> = isolates
        .into_iter()
        .map(|(heap, mut iso)| {
            let mut types: Vec<TypeCount> = walker
                .counts
                .iter()
                .filter(|((h, _), _)| *h == heap)
                .map(|((_, label), t)| {
                    let (kind, name, label) = walker.labels[*label].clone();
                    TypeCount {
                        kind,
                        name,
                        label,
                        count: t.count,
                        bytes: t.bytes,
                        external_bytes: t.external,
                    }
                })
                .collect();
            types.sort_by(|a, b| {
                b.bytes.cmp(&a.bytes).then(b.count.cmp(&a.count)).then(a.label.cmp(&b.label))
            });
            iso.objects = types.iter().map(|t| t.count).sum();
            iso.object_bytes = types.iter().map(|t| t.bytes).sum();
            iso.free_bytes = walker.free.get(&heap).copied().unwrap_or(0);
            iso.types = types;
            iso.scripts = walker.scripts.get(&heap).map(|s| s.iter().cloned().collect()).unwrap_or_default();
            iso
        })
        .collect();
    isolates.sort_by(|a, b| b.object_bytes.cmp(&a.object_bytes).then(a.heap.cmp(&b.heap)));
    let mut unparsed_at: Vec<(String, u64)> = walker
        .stuck
        .iter()
        .map(|(ty, n)| {
            let name = match ty {
                None => "(no map)".to_string(),
                Some(ty) => match hl.type_names.get(ty) {
                    Some(class) => format!("{class} ({ty})"),
                    None => format!("type {ty}"),
                },
            };
            (name, *n)
        })
        .collect();
    unparsed_at.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    unparsed_at.truncate(10);
    let samples = walker
        .counts
        .iter()
        .filter(|(_, t)| !t.samples.is_empty())
        .map(|((heap, label), t)| {
            let (kind, _, label) = walker.labels[*label].clone();
            ((format!("{heap:#x}"), kind, label), t.samples.clone())
        })
        .collect();
    Census {
        isolates,
        samples,
        pages_found: pages.len() as u64,
        unreadable_pages: unreadable,
        unparsed_bytes: walker.unparsed,
        resyncs: walker.resyncs,
        unparsed_at,
        sized_by_lookahead: walker.sized_by_lookahead,
        bytes_read,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
        stopped_early: stopped,
        pages_not_walked: not_walked,
    }
}
