//! What a container holds, read from outside: the elements of a large `FixedArray` (a JS
//! array's backing store, an EventEmitter's listener list once it is large) or the entries of a
//! large ordered hash table (a `Map`'s or `Set`'s store), and an estimate of the bytes each
//! element keeps.
//!
//! The runtime grows an array's backing store by half again each time, and a Map's or Set's
//! table to twice its capacity; past about 16,000 array elements, or 4,096 Map or Set entries,
//! each new store is a large object of its own: the heap probes know which stack allocated it.
//! Reading the store then tells how many elements the container holds now, so the site that
//! keeps growing it can be credited with what its elements keep, not just with the store's own
//! bytes — a module-level array of records, or a Map of sessions, is named by the function
//! that adds to it, with most of the heap's growth.
//!
//! An element's bytes: the element (a Map entry: its key and its value), plus the objects it
//! points to (two levels down) that no other sampled element points to. What elements share —
//! an interned string, a common prototype, the empty array — is left out, so what each element
//! alone keeps is estimated.

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

/// What kind of container a large store belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Container {
    /// A `FixedArray`: a JS array's elements, a listener list.
    Array,
    /// An `OrderedHashMap`: a `Map`'s entries.
    Map,
    /// An `OrderedHashSet`: a `Set`'s entries.
    Set,
}

impl Container {
    /// Its name and what it holds, as a user says them: `array`/`elements`, `Map`/`entries`.
    pub fn words(self) -> (&'static str, &'static str) {
        match self {
            Container::Array => ("array", "elements"),
            Container::Map => ("Map", "entries"),
            Container::Set => ("Set", "entries"),
        }
    }
}

/// The contents of one large container, at one moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Contents {
    /// What the store belongs to.
    pub container: Container,
    /// The store's slots.
    pub slots: u64,
    /// Elements: an array's slots before the first hole (the runtime fills spare capacity
    /// with the hole, after the elements); a hash table's live entries.
    pub used: u64,
    /// The first element (tagged; a hash table's first entry's key): two stores with the same
    /// first element are two versions of one growing container (the old one lives until the
    /// GC frees it).
    pub first: u64,
    /// Estimated bytes each element keeps on its own (its object and what only it points to).
    pub bytes_per_element: f64,
    /// Bytes read from the target.
    pub bytes_read: u64,
}

/// The contents of the large object on the page at `chunk`, when it is a `FixedArray` with
/// elements or an ordered hash table with entries; `None` for any other object (a string, a
/// code object), or when it cannot be read.
pub fn contents<M: Memory>(reader: &mut Reader<M>, hl: &HeapLayout, chunk: u64) -> Option<Contents> {
    let page = large_page(&reader.mem, chunk)?;
    let l = reader.layout.clone();
    let obj = page.area_start;
    let mut head = [0u8; 64];
    reader.mem.read(obj, &mut head).then_some(())?;
    let mut walker = Walker::new(reader, hl, &[page]);
    let info = walker.map_info(word_at(&head, 0)?)?;
    // Both kinds of store start as a FixedArray does: map, length, slots.
    let slots =
        walker.reader.smi(word_at(&head, l.array_length)?).filter(|n| *n > 0 && *n as u64 <= MAX_SLOTS)?
            as u64;
    let data = obj + l.array_data;
    let contents = match info.ty == l.fixed_array_type {
        true => array(&mut walker, data, slots),
        false => hash_table(&mut walker, info.ty, data, slots, &head[l.array_data as usize..]),
    }?;
    Some(Contents { bytes_read: contents.bytes_read + 64, ..contents })
}

/// The slot at `at` of the target.
fn slot<M: Memory>(walker: &mut Walker<'_, M>, at: u64) -> Option<u64> {
    let mut raw = [0u8; 8];
    walker.reader.mem.read(at, &mut raw).then(|| u64::from_le_bytes(raw))
}

/// An array store of `slots` slots at `data`.
fn array<M: Memory>(walker: &mut Walker<'_, M>, data: u64, slots: u64) -> Option<Contents> {
    let first = slot(walker, data)?;
    let last = slot(walker, data + 8 * (slots - 1))?;
    let mut bytes_read = 16;
    // Spare capacity holds the hole after the elements: the last slot is the hole when the
    // two last slots are the same object and the store has room to spare.
    let hole = (slots >= 2 && slot(walker, data + 8 * (slots - 2))? == last && last != first).then_some(last);
    let used = match hole {
        None => slots,
        Some(hole) => {
            // The first hole, by bisection (elements are a prefix).
            let (mut lo, mut hi) = (0u64, slots - 1);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                bytes_read += 8;
                match slot(walker, data + 8 * mid)? == hole {
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
    let mut elements = Vec::new();
    for i in spread(used) {
        bytes_read += 8;
        elements.extend(slot(walker, data + 8 * i).map(|e| vec![e]));
    }
    let (bytes_per_element, read) = element_bytes(walker, &elements);
    Some(Contents {
        container: Container::Array,
        slots,
        used,
        first,
        bytes_per_element,
        bytes_read: bytes_read + read,
    })
}

/// An ordered hash table's header: its live entries, its deleted ones and its buckets (V8's
/// `OrderedHashTable`: no prefix for a Map's or Set's table).
const TABLE_HEADER: u64 = 3;

/// A large object of type `ty` with `slots` slots at `data` (`first_words`: its first slots),
/// when it is an ordered hash table: a `Map`'s (entries of key, value and chain) or a `Set`'s
/// (key and chain). The metadata of some node versions does not name the table's instance
/// types, so the store is known by its shape: the three header counts, a power-of-two bucket
/// count, and a length that is exactly the header, the buckets and two entries per bucket —
/// which no other store's length is by chance. A type the metadata names as something else
/// is never taken for one.
fn hash_table<M: Memory>(
    walker: &mut Walker<'_, M>,
    ty: u64,
    data: u64,
    slots: u64,
    first_words: &[u8],
) -> Option<Contents> {
    if walker.hl.type_names.get(&ty).is_some_and(|name| !name.starts_with("OrderedHash")) {
        return None;
    }
    let reader = &walker.reader;
    let count = |i: u64| {
        word_at(first_words, 8 * i).and_then(|w| reader.smi(w)).filter(|n| *n >= 0).map(|n| n as u64)
    };
    let (live, deleted, buckets) = (count(0)?, count(1)?, count(2)?);
    if !buckets.is_power_of_two() {
        return None;
    }
    let (container, entry) = [(Container::Map, 3), (Container::Set, 2)]
        .into_iter()
        .find(|(_, entry)| TABLE_HEADER + buckets + 2 * buckets * entry == slots)?;
    let occupied = live + deleted;
    if live == 0 || occupied > 2 * buckets {
        return None;
    }
    let entries = data + 8 * (TABLE_HEADER + buckets);
    // A deleted entry's key is the hole, an oddball; a live one's (keys are what users put in)
    // is rarely one. The key of the first live entry stays first when the table grows.
    let values = (container == Container::Map) as u64 + 1;
    let mut bytes_read = 0;
    let mut first = None;
    let mut elements = Vec::new();
    for i in spread(occupied) {
        let at = entries + 8 * entry * i;
        bytes_read += 8 * values;
        let Some(entry) = (0..values).map(|k| slot(walker, at + 8 * k)).collect::<Option<Vec<u64>>>() else {
            continue;
        };
        if is_oddball(walker, entry[0]) {
            continue;
        }
        first.get_or_insert(entry[0]);
        elements.push(entry);
    }
    let first = first?;
    let (bytes_per_element, read) = element_bytes(walker, &elements);
    Some(Contents { container, slots, used: live, first, bytes_per_element, bytes_read: bytes_read + read })
}

/// Whether `tagged` is an oddball (the hole, undefined, null, a boolean).
fn is_oddball<M: Memory>(walker: &mut Walker<'_, M>, tagged: u64) -> bool {
    let l = walker.reader.layout.clone();
    let Some(oddball) = walker.hl.oddball_type else { return false };
    if tagged & l.tag_mask != l.heap_tag {
        return false;
    }
    let Some(map) = slot(walker, tagged - l.heap_tag) else { return false };
    walker.map_info(map).is_some_and(|info| info.ty == oddball)
}

/// Up to [`SAMPLES`] indices spread evenly over `0..used`.
fn spread(used: u64) -> impl Iterator<Item = u64> {
    let step = (used / SAMPLES).max(1);
    (0..used).step_by(step as usize).take(SAMPLES as usize)
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

/// The mean bytes a sampled element keeps on its own (each element: the tagged values it is
/// made of — an array's element, a Map entry's key and value); and the bytes read.
pub(super) fn element_bytes<M: Memory>(walker: &mut Walker<'_, M>, elements: &[Vec<u64>]) -> (f64, u64) {
    // Each object below a sampled element: its size, and which samples reach it.
    let mut sizes: HashMap<u64, u64> = HashMap::new();
    let mut reached: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    let mut bytes_read = 0u64;
    for (element, values) in elements.iter().enumerate() {
        let mut level = values.clone();
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
        roots.extend(values.iter().copied());
    }
    if elements.is_empty() {
        return (0.0, bytes_read);
    }
    let own: u64 = reached
        .iter()
        .filter(|(object, owners)| owners.len() == 1 || roots.contains(object))
        .map(|(object, _)| sizes[object])
        .sum();
    (own as f64 / elements.len() as f64, bytes_read)
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
