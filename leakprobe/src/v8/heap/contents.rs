//! What a container holds, read from outside: the elements of a large `FixedArray` (a JS
//! array's backing store, an EventEmitter's listener list once it is large) and an estimate of
//! the bytes each element keeps.
//!
//! The runtime grows an array's backing store by half again each time, and past about 16,000
//! elements each new store is a large object of its own: the heap probes know which stack
//! allocated it. Reading the store then tells how many elements the container holds now, so the
//! site that keeps growing it can be credited with what its elements keep, not just with the
//! store's own bytes — a module-level array of records is named by the function that pushes
//! to it, with most of the heap's growth.
//!
//! An element's bytes: the element, plus the objects it points to (two levels down) that no
//! other sampled element points to. What elements share — an interned string, a common
//! prototype, the empty array — is left out, so what each element alone keeps is estimated.

use std::collections::HashMap;

use serde::Serialize;

use super::{
    layout::HeapLayout,
    pages::{Page, PAGE},
    walk::{word_at, MapInfo, Walker},
};
use crate::v8::{
    memory::{words, Memory},
    reader::Reader,
};

/// Elements sampled to estimate an element's bytes.
pub(super) const SAMPLES: u64 = 32;
/// Levels below an element that are counted.
pub(super) const DEPTH: usize = 3;
/// Most pointers followed out of one object.
pub(super) const MAX_FIELDS: u64 = 32;
/// Bytes read at an object to size it (its header is enough for a string's or array's size).
pub(super) const HEAD: usize = 256;
/// Largest store believed (slots).
pub(super) const MAX_SLOTS: u64 = 1 << 28;

/// The contents of one large container, at one moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Contents {
    /// The store's slots.
    pub slots: u64,
    /// Slots in use: those before the first hole (the runtime fills spare capacity with the
    /// hole, after the elements).
    pub used: u64,
    /// The first element (tagged): two stores with the same first element are two versions of
    /// one growing container (the old one lives until the GC frees it).
    pub first: u64,
    /// Estimated bytes each element keeps on its own (its object and what only it points to).
    pub bytes_per_element: f64,
    /// Bytes read from the target.
    pub bytes_read: u64,
}

/// The contents of the large object on the page at `chunk`, when it is a `FixedArray` with
/// elements; `None` for any other object (a string, a code object), or when it cannot be read.
pub fn contents<M: Memory>(reader: &mut Reader<M>, hl: &HeapLayout, chunk: u64) -> Option<Contents> {
    let page = large_page(&reader.mem, chunk)?;
    let l = reader.layout.clone();
    let obj = page.area_start;
    let mut head = [0u8; 64];
    reader.mem.read(obj, &mut head).then_some(())?;
    let mut walker = Walker::new(reader, hl, &[page]);
    let info = walker.map_info(word_at(&head, 0)?)?;
    if info.ty != l.fixed_array_type {
        return None;
    }
    let smi = |w: u64| (w & l.tag_mask != l.heap_tag).then(|| ((w as i64) >> l.smi_shift) as u64);
    let slots = smi(word_at(&head, l.array_length)?).filter(|n| *n > 0 && *n <= MAX_SLOTS)?;
    let data = obj + l.array_data;
    let slot = |i: u64| -> Option<u64> {
        let mut raw = [0u8; 8];
        walker.reader.mem.read(data + 8 * i, &mut raw).then(|| u64::from_le_bytes(raw))
    };
    let first = slot(0)?;
    let last = slot(slots - 1)?;
    let mut bytes_read = 64 + 16;
    // Spare capacity holds the hole after the elements: the last slot is the hole when the
    // two last slots are the same object and the store has room to spare.
    let hole = (slots >= 2 && slot(slots - 2)? == last && last != first).then_some(last);
    let used = match hole {
        None => slots,
        Some(hole) => {
            // The first hole, by bisection (elements are a prefix).
            let (mut lo, mut hi) = (0u64, slots - 1);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                bytes_read += 8;
                match slot(mid)? == hole {
                    true => hi = mid,
                    false => lo = mid + 1,
                }
            }
            lo
        }
    };
    if used == 0 {
        return None;
    }
    let (bytes_per_element, read) = element_bytes(&mut walker, data, used);
    Some(Contents { slots, used, first, bytes_per_element, bytes_read: bytes_read + read })
}

/// The page of a large object from what `MemoryAllocator::AllocateLargePage` returned: the
/// chunk itself (node 18–22), or the page's metadata, kept outside it, whose words hold the
/// chunk's address (node 24).
pub(super) fn large_page<M: Memory>(mem: &M, returned: u64) -> Option<Page> {
    if let Some(page) = Page::read(mem, returned) {
        return Some(page);
    }
    let mut raw = [0u8; 96];
    mem.read(returned, &mut raw).then_some(())?;
    let chunks: Vec<u64> = words(&raw).filter(|w| *w != 0 && w % PAGE == 0).collect();
    chunks.into_iter().find_map(|chunk| Page::read(mem, chunk))
}

/// The mean bytes an element of the store at `data` keeps on its own, from up to [`SAMPLES`]
/// elements spread over its `used` slots; and the bytes read.
pub(super) fn element_bytes<M: Memory>(walker: &mut Walker<'_, M>, data: u64, used: u64) -> (f64, u64) {
    let step = (used / SAMPLES).max(1);
    // Each object below a sampled element: its size, and which samples reach it.
    let mut sizes: HashMap<u64, u64> = HashMap::new();
    let mut reached: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut roots = Vec::new();
    let mut bytes_read = 0u64;
    for i in (0..used).step_by(step as usize).take(SAMPLES as usize) {
        let mut raw = [0u8; 8];
        bytes_read += 8;
        if !walker.reader.mem.read(data + 8 * i, &mut raw) {
            continue;
        }
        let element = u64::from_le_bytes(raw);
        let mut level = vec![element];
        for depth in 0..=DEPTH {
            let mut next = Vec::new();
            for object in level {
                let Some((size, fields)) = object_at(walker, object, depth < DEPTH, &mut bytes_read) else {
                    continue;
                };
                sizes.insert(object, size);
                let owners = reached.entry(object).or_default();
                if !owners.contains(&element) {
                    owners.push(element);
                }
                next.extend(fields);
            }
            level = next;
        }
        roots.push(element);
    }
    if roots.is_empty() {
        return (0.0, bytes_read);
    }
    let own: u64 = reached
        .iter()
        .filter(|(object, owners)| owners.len() == 1 || roots.contains(object))
        .map(|(object, _)| sizes[object])
        .sum();
    (own as f64 / roots.len() as f64, bytes_read)
}

/// The size of the heap object `tagged`, and with `fields` the heap objects it points to (its
/// first [`MAX_FIELDS`] pointer fields; none for a flat string or a byte array).
pub(super) fn object_at<M: Memory>(
    walker: &mut Walker<'_, M>,
    tagged: u64,
    fields: bool,
    bytes_read: &mut u64,
) -> Option<(u64, Vec<u64>)> {
    let l = walker.reader.layout.clone();
    if tagged & l.tag_mask != l.heap_tag {
        return None;
    }
    let obj = tagged - l.heap_tag;
    let mut buf = [0u8; HEAD];
    *bytes_read += HEAD as u64;
    walker.reader.mem.read(obj, &mut buf).then_some(())?;
    let info: MapInfo = walker.map_info(word_at(&buf, 0)?)?;
    let size = walker.size_of(info, &buf, 0)?;
    // Sequential strings and byte arrays hold no pointers; everything else is followed (JS
    // objects, arrays, a cons string's halves, a sliced string's parent).
    let s = &l.strings;
    let flat_string = info.ty < s.first_nonstring && info.ty & s.representation_mask == s.seq;
    let followed = fields && !flat_string && info.ty != walker.hl.byte_array_type;
    let pointers = match followed {
        false => Vec::new(),
        true => (1..(size / 8).min(MAX_FIELDS + 1))
            .filter_map(|i| word_at(&buf, i * 8))
            .filter(|w| w & l.tag_mask == l.heap_tag && *w != tagged)
            .collect(),
    };
    Some((size, pointers))
}
