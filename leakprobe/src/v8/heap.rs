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
//!   are recognised here by their self-pointers (see [`Page::read`]).
//!
//! Nothing here stops the target: reads race with the mutator, and a torn read shows as an
//! object that does not parse (counted as unparsed bytes), never as a crash.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{Bad, Memory, Metadata, MetadataError, Reader};

mod contents;
mod retainers;
pub use contents::{contents, Contents};
pub use retainers::{chain_text, retainers, thousands, Chain, Link, LinkKind, RetainerSearch, Retainers};

/// V8's page alignment (and regular page size) in node 18–24.
pub const PAGE: u64 = 256 * 1024;
/// Page flags: the young generation's from- and to-space (`FROM_PAGE`, `TO_PAGE`, the same
/// bits in V8 10.2 through 13.6; not in the metadata).
const YOUNG_FLAGS: u64 = (1 << 3) | (1 << 4);
/// Largest page size believed (large-object pages hold one object each).
const MAX_CHUNK: u64 = 1 << 36;
/// Largest header before a page's first object.
const MAX_HEADER: u64 = 64 * 1024;
/// Most maps followed back to find a constructor.
const MAX_BACK_POINTERS: u32 = 64;
/// Most property names kept in a plain object's shape.
const MAX_SHAPE_NAMES: u64 = 12;
/// Most descriptors a map may claim (V8's limit is 1020).
const MAX_DESCRIPTORS: u64 = 1020;
/// Objects that must parse after a candidate position for the walk to resume there.
const RESYNC_CHAIN: u32 = 3;
/// Largest part of a large-object page read (only its object's header is needed).
const LARGE_HEAD: u64 = 4096;
/// Most distinct labels kept; objects of further labels are counted under `(other)`.
const MAX_LABELS: usize = 100_000;

/// V8's code, feedback and weak bookkeeping: a reference from one of these is optimized
/// code's embedded constant, an inline cache's feedback or a weak list's entry, not what keeps
/// an object for the program (DevTools hides these retainers too). A retainer search does not
/// follow them: an object referred to by a dozen such would crowd out the variable that keeps it.
const UNSEEN_HOLDERS: &[&str] = &[
    "AllocationSite",
    "ClosureFeedbackCellArray",
    "Code",
    "CodeDataContainer",
    "CodeWrapper",
    "DependentCode",
    "DeoptimizationData",
    "DeoptimizationLiteralArray",
    "FeedbackCell",
    "FeedbackMetadata",
    "FeedbackVector",
    "InstructionStream",
    "ProtectedFixedArray",
    "ProtectedWeakFixedArray",
    "PrototypeInfo",
    "TransitionArray",
    "TrustedByteArray",
    "TrustedFixedArray",
    "TrustedForeign",
    "TrustedWeakFixedArray",
    "WeakArrayList",
    "WeakCell",
    "WeakFixedArray",
];

/// The offsets and types the census needs beyond [`super::Layout`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapLayout {
    map_type: u64,
    instance_size_words: u64,
    bit_field3: u64,
    own_descriptors_mask: u64,
    own_descriptors_shift: u32,
    constructor_or_back_pointer: u64,
    instance_descriptors: u64,
    descriptor_header: u64,
    descriptor_entry: u64,
    descriptor_key: u64,
    descriptor_types: [u64; 2],
    array_buffer_type: u64,
    array_buffer_byte_length: u64,
    js_array_type: u64,
    first_js_type: u64,
    first_context_type: u64,
    last_context_type: u64,
    fixed_double_array_type: u64,
    byte_array_type: u64,
    weak_array_list_type: Option<u64>,
    bytecode: Option<(u64, u64)>,
    free_space_type: Option<u64>,
    /// Class names of the instance types the metadata lists.
    type_names: HashMap<u64, String>,
    /// Instance types of [`UNSEEN_HOLDERS`].
    unseen_holders: Vec<u64>,
    /// What [`retainers`] needs to name a reference.
    refs: RefLayout,
}

/// The layouts that name a reference: object properties, dictionaries, contexts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RefLayout {
    js_map_type: u64,
    js_set_type: u64,
    property_array_type: u64,
    /// `Map::inobject_properties_start_or_constructor_function_index` (a byte, in words).
    inobject_start: u64,
    /// `PropertyDetails` in a descriptor entry (bytes from the entry's start).
    descriptor_details: u64,
    field_index: (u64, u32),
    location: (u64, u32),
    location_field: u64,
    /// `bit_field3` bit of dictionary-mode maps.
    dictionary_map: u64,
    /// A `NameDictionary`'s first entry (slots after the array header) and entry size.
    name_dictionary: (u64, u64),
    /// `JSFunction::context`.
    function_context: u64,
    /// The context slot of its `ScopeInfo`.
    context_scope_info: u64,
    /// `Symbol`'s type and its description field.
    symbol: (u64, u64),
}

impl RefLayout {
    fn new(m: &Metadata) -> Result<Self, MetadataError> {
        let u = |v: i64| v as u64;
        let shift = |v: i64| v.clamp(0, 63) as u32;
        Ok(Self {
            js_map_type: u(m.get("type_JSMap__JS_MAP_TYPE")?),
            js_set_type: u(m.get("type_JSSet__JS_SET_TYPE")?),
            property_array_type: u(m.get("type_PropertyArray__PROPERTY_ARRAY_TYPE")?),
            inobject_start: u(
                m.field("class_Map__inobject_properties_start_or_constructor_function_index__")?
            ),
            descriptor_details: u(m.get("prop_desc_details")?.saturating_mul(8)),
            field_index: (u(m.get("prop_index_mask")?), shift(m.get("prop_index_shift")?)),
            location: (u(m.get("prop_location_mask")?), shift(m.get("prop_location_shift")?)),
            location_field: u(m.get("prop_location_Field")?),
            dictionary_map: 1u64 << shift(m.get("bit_field3_is_dictionary_map_shift")?).min(31),
            name_dictionary: (
                u(m.get("namedictionary_prefix_start_index")?
                    .saturating_add(m.get("namedictionaryshape_prefix_size")?)),
                u(m.get("namedictionaryshape_entry_size")?),
            ),
            function_context: u(m.field("class_JSFunction__context__")?),
            context_scope_info: u(m.get("context_idx_scope_info")?),
            symbol: (u(m.get("type_Symbol__SYMBOL_TYPE")?), u(m.field("class_Symbol__name__")?)),
        })
    }
}

impl HeapLayout {
    /// The census layout `m` describes.
    pub fn new(m: &Metadata) -> Result<Self, MetadataError> {
        let u = |v: i64| v as u64;
        let mut type_names = HashMap::new();
        let mut first_js = None::<u64>;
        for (name, value) in &m.0 {
            let Some(rest) = name.strip_prefix("type_") else { continue };
            let class = rest.split("__").next().unwrap_or(rest);
            type_names.entry(u(*value)).or_insert_with(|| class.to_string());
            // Every `JS*` class is a JSReceiver; V8 numbers receivers last.
            if class.starts_with("JS") {
                first_js = Some(first_js.map_or(u(*value), |f| f.min(u(*value))));
            }
        }
        let entry = m.get("prop_desc_size")?;
        let unseen_holders = type_names
            .iter()
            .filter(|(_, name)| UNSEEN_HOLDERS.contains(&name.as_str()))
            .map(|(ty, _)| *ty)
            .collect();
        Ok(Self {
            map_type: u(m.get("type_Map__MAP_TYPE")?),
            instance_size_words: u(m.field("class_Map__instance_size_in_words__")?),
            bit_field3: u(m.field("class_Map__bit_field3__")?),
            own_descriptors_mask: u(m.get("bit_field3_number_of_own_descriptors_mask")?),
            own_descriptors_shift: m.get("bit_field3_number_of_own_descriptors_shift")?.clamp(0, 31) as u32,
            constructor_or_back_pointer: u(m.field("class_Map__constructor_or_back_pointer__")?),
            instance_descriptors: u(m.field("class_Map__instance_descriptors__")?),
            descriptor_header: u(m.field("class_DescriptorArray__header_size__")?),
            descriptor_entry: u(entry.saturating_mul(8)),
            descriptor_key: u(m.get("prop_desc_key")?.saturating_mul(8)),
            descriptor_types: [
                u(m.get("type_DescriptorArray__DESCRIPTOR_ARRAY_TYPE")?),
                u(m.get("type_StrongDescriptorArray__STRONG_DESCRIPTOR_ARRAY_TYPE").unwrap_or(-1)),
            ],
            array_buffer_type: u(m.get("type_JSArrayBuffer__JS_ARRAY_BUFFER_TYPE")?),
            array_buffer_byte_length: u(m.field("class_JSArrayBuffer__byte_length__")?),
            js_array_type: u(m.get("type_JSArray__JS_ARRAY_TYPE")?),
            first_js_type: first_js.ok_or(MetadataError::Missing("type_JS*"))?,
            first_context_type: u(m.get("FirstContextType")?),
            last_context_type: u(m.get("LastContextType")?),
            fixed_double_array_type: u(m.get("type_FixedDoubleArray__FIXED_DOUBLE_ARRAY_TYPE")?),
            byte_array_type: u(m.get("type_ByteArray__BYTE_ARRAY_TYPE")?),
            weak_array_list_type: m.get("type_WeakArrayList__WEAK_ARRAY_LIST_TYPE").ok().map(u),
            bytecode: match (
                m.get("type_BytecodeArray__BYTECODE_ARRAY_TYPE"),
                m.field("class_BytecodeArray__data__"),
            ) {
                (Ok(ty), Ok(data)) => Some((u(ty), u(data))),
                _ => None,
            },
            free_space_type: m.get("type_FreeSpace__FREE_SPACE_TYPE").ok().map(u),
            type_names,
            unseen_holders,
            refs: RefLayout::new(m)?,
        })
    }
}

/// One V8 page, from its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// Where the page starts.
    pub chunk: u64,
    /// The `Heap` it belongs to: one per isolate.
    pub heap: u64,
    /// `MemoryChunk` flags.
    pub flags: u64,
    /// First object.
    pub area_start: u64,
    /// End of the object area.
    pub area_end: u64,
    /// Size of the whole chunk.
    pub size: u64,
}

impl Page {
    /// The page at `chunk`, if a V8 page header is there. Three header shapes are known, each
    /// recognised by a field that holds the chunk's own address (none is in the metadata):
    /// - V8 10–11 (node 18, 20): size, flags, heap, area start, area end, …, and the
    ///   reservation's address (the chunk) in word 10;
    /// - V8 12.4 (node 22): flags, the chunk, size, heap, area start, area end;
    /// - V8 13 (node 24): flags and a pointer to the chunk's metadata, kept outside the page:
    ///   vtable, the chunk, size, …, area end (word 7), heap, area start.
    pub fn read<M: Memory>(mem: &M, chunk: u64) -> Option<Page> {
        let mut raw = [0u8; 96];
        if !mem.read(chunk, &mut raw) {
            return None;
        }
        let w: Vec<u64> = super::words(&raw).collect();
        let candidates = [
            // node 22
            (w[1] == chunk).then(|| (w[0], w[2], w[3], w[4], w[5])),
            // node 18, 20
            (w[10] == chunk).then(|| (w[1], w[0], w[2], w[3], w[4])),
            // node 24
            (w[1] != chunk && w[1] & 7 == 0)
                .then(|| {
                    let mut meta = [0u8; 96];
                    mem.read(w[1], &mut meta).then_some(())?;
                    let m: Vec<u64> = super::words(&meta).collect();
                    (m[1] == chunk).then(|| (w[0], m[2], m[8], m[9], m[7]))
                })
                .flatten(),
        ];
        candidates.into_iter().flatten().find_map(|(flags, size, heap, area_start, area_end)| {
            let end = chunk.checked_add(size)?;
            let plausible = (PAGE / 64..=MAX_CHUNK).contains(&size)
                && heap != 0
                && heap & 7 == 0
                && area_start & 7 == 0
                && area_start > chunk
                && area_start < chunk.saturating_add(MAX_HEADER)
                && area_start <= area_end
                && area_end <= end;
            plausible.then_some(Page { chunk, heap, flags, area_start, area_end, size })
        })
    }

    /// A young-generation page (from- or to-space).
    pub fn young(&self) -> bool {
        self.flags & YOUNG_FLAGS != 0
    }
}

/// Every 256 KiB-aligned address in `ranges` (start, end) where a page header could be.
pub fn page_candidates(ranges: &[(u64, u64)]) -> impl Iterator<Item = u64> + '_ {
    ranges.iter().flat_map(|&(start, end)| {
        let first = start.div_ceil(PAGE).saturating_mul(PAGE);
        (0..).map(move |k| first.saturating_add(k * PAGE)).take_while(move |a| *a < end && *a >= first)
    })
}

/// The anonymous readable mappings of a `/proc/PID/maps` text, where V8 keeps its heap.
pub fn anonymous_ranges(maps: &str) -> Vec<(u64, u64)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            let path = fields.nth(3);
            if !perms.starts_with('r') || path.is_some_and(|p| !p.is_empty()) {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
        })
        .filter(|(a, b)| a < b)
        .collect()
}

/// What kind of thing a census line counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A JavaScript object, named by its constructor.
    Object,
    /// A JavaScript array.
    Array,
    /// A function (closure), named by its function.
    Closure,
    /// A string.
    String,
    /// An ArrayBuffer (its backing store is outside the heap: `external_bytes`).
    ArrayBuffer,
    /// A scope's context (closure variables).
    Context,
    /// One of V8's internal objects (code, arrays, maps, ...), named by its type.
    System,
}

/// Objects of one type in one isolate's heap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TypeCount {
    /// What it counts.
    pub kind: Kind,
    /// The name a heap snapshot gives it: constructor, function or type name.
    pub name: String,
    /// The name shown: for plain objects with their property names (`Object {id, ts}`), for
    /// closures with where the function is (`handler (app.js:12)`).
    pub label: String,
    /// Objects counted.
    pub count: u64,
    /// Their bytes in the heap (shallow size).
    pub bytes: u64,
    /// Bytes outside the heap they hold (ArrayBuffer backing stores).
    pub external_bytes: u64,
}

/// One isolate's heap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IsolateCensus {
    /// Address of its `v8::internal::Heap` (tells isolates apart).
    pub heap: String,
    /// Bytes of all its pages (old, young and large-object spaces): what its heap commits.
    pub committed_bytes: u64,
    /// Old-generation pages walked.
    pub pages: u64,
    /// Young-generation pages (not walked).
    pub young_pages: u64,
    /// Bytes of the young-generation pages.
    pub young_bytes: u64,
    /// Bytes of objects counted.
    pub object_bytes: u64,
    /// Objects counted.
    pub objects: u64,
    /// Free space (V8's free-list entries) seen on walked pages, where the type is known.
    pub free_bytes: u64,
    /// By type, most bytes first.
    pub types: Vec<TypeCount>,
}

/// Bounds of one census.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most bytes read from the target.
    pub max_bytes: u64,
    /// Longest time spent.
    pub max_time: Duration,
}

/// Why a census stopped before the end of the heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stopped {
    /// It read `max_bytes`.
    SizeCap,
    /// It ran `max_time`.
    TimeCap,
}

/// A census of every isolate's heap in one process.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Census {
    /// One per isolate, most bytes first.
    pub isolates: Vec<IsolateCensus>,
    /// A sample of each type's objects, by (isolate heap, kind, label): tagged addresses with
    /// the map word each had, for [`retainers`] (not written out).
    #[serde(skip)]
    pub samples: HashMap<(String, Kind, String), Vec<(u64, u64)>>,
    /// Page headers found.
    pub pages_found: u64,
    /// Pages whose object area could not be read (freed while the census ran).
    pub unreadable_pages: u64,
    /// Bytes of walked pages that did not parse as objects (torn reads, types whose size this
    /// reader does not know): skipped, not counted under any type.
    pub unparsed_bytes: u64,
    /// Times the walk had to look ahead for the next object.
    pub resyncs: u64,
    /// Objects of types whose size this reader does not know, sized by where the next run of
    /// objects starts (counted under their type).
    pub sized_by_lookahead: u64,
    /// Where the walk had to look ahead, by the type of the object it could not size (`(no
    /// map)` when the word there was not a map), most first (at most 10).
    pub unparsed_at: Vec<(String, u64)>,
    /// Bytes read from the target.
    pub bytes_read: u64,
    /// Wall time spent.
    pub elapsed_ms: f64,
    /// Set when a cap stopped it before every page was walked.
    pub stopped_early: Option<Stopped>,
    /// Pages left unwalked because of the cap.
    pub pages_not_walked: u64,
}

impl Census {
    /// Counts of `name` (a constructor, function or type name) summed over kinds and isolates.
    pub fn count_named(&self, name: &str) -> u64 {
        self.isolates.iter().flat_map(|i| &i.types).filter(|t| t.name == name).map(|t| t.count).sum()
    }
}

/// How one type changed between two censuses of the same process.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Growth {
    /// The isolate (its `Heap` address).
    pub heap: String,
    /// What it counts.
    pub kind: Kind,
    /// As in [`TypeCount`].
    pub name: String,
    /// As in [`TypeCount`].
    pub label: String,
    /// Objects in the later census.
    pub count: u64,
    /// Objects gained (negative: lost).
    pub count_delta: i64,
    /// Bytes gained.
    pub bytes_delta: i64,
    /// Objects gained per second.
    pub count_per_s: f64,
}

/// The types whose count changed from `before` to `after`, `seconds` apart, most objects
/// gained first (types present in only one of them count from zero).
pub fn growth(before: &Census, after: &Census, seconds: f64) -> Vec<Growth> {
    type Key<'a> = (&'a str, Kind, &'a str);
    let mut old: HashMap<Key, (&TypeCount, &str)> = HashMap::new();
    for iso in &before.isolates {
        for t in &iso.types {
            old.insert((iso.heap.as_str(), t.kind, t.label.as_str()), (t, t.name.as_str()));
        }
    }
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for iso in &after.isolates {
        for t in &iso.types {
            let key = (iso.heap.as_str(), t.kind, t.label.as_str());
            seen.insert(key);
            let (count, bytes) = old.get(&key).map_or((0, 0), |(o, _)| (o.count, o.bytes));
            out.push(Growth {
                heap: iso.heap.clone(),
                kind: t.kind,
                name: t.name.clone(),
                label: t.label.clone(),
                count: t.count,
                count_delta: t.count as i64 - count as i64,
                bytes_delta: t.bytes as i64 - bytes as i64,
                count_per_s: 0.0,
            });
        }
    }
    for (key, (t, name)) in &old {
        if !seen.contains(key) {
            out.push(Growth {
                heap: key.0.to_string(),
                kind: t.kind,
                name: name.to_string(),
                label: t.label.clone(),
                count: 0,
                count_delta: -(t.count as i64),
                bytes_delta: -(t.bytes as i64),
                count_per_s: 0.0,
            });
        }
    }
    out.retain(|g| g.count_delta != 0);
    for g in &mut out {
        g.count_per_s = match seconds > 0.0 {
            true => g.count_delta as f64 / seconds,
            false => 0.0,
        };
    }
    out.sort_by(|a, b| {
        b.count_delta.cmp(&a.count_delta).then(a.label.cmp(&b.label)).then(a.heap.cmp(&b.heap))
    });
    out
}

/// What the census knows about one map.
#[derive(Clone, Copy, Debug)]
struct MapInfo {
    ty: u64,
    /// Fixed instance size in bytes, 0 for variable-sized types.
    size: u64,
    /// The label its objects are counted under; `None` for closures (labelled by function).
    label: Option<usize>,
}

/// Objects of one label in one heap: counts and a uniform sample of their addresses.
#[derive(Clone, Debug, Default)]
struct Tally {
    count: u64,
    bytes: u64,
    external: u64,
    /// Up to [`SAMPLES`] tagged addresses, each with the map word it had (reservoir sampling).
    samples: Vec<(u64, u64)>,
}

/// Objects of each type whose address a census keeps, for [`retainers`].
pub const SAMPLES: usize = 24;

/// The walk's state: caches by address and the counts so far.
struct Walker<'r, M: Memory> {
    reader: &'r mut Reader<M>,
    hl: &'r HeapLayout,
    maps: HashMap<u64, Option<MapInfo>>,
    functions: HashMap<u64, usize>,
    labels: Vec<(Kind, String, String)>,
    by_label: HashMap<(Kind, String), usize>,
    /// (heap, label) → what was counted, with a sample of addresses.
    counts: HashMap<(u64, usize), Tally>,
    /// State of the sampling's pseudo-random choice.
    rng: u64,
    unparsed: u64,
    resyncs: u64,
    free: HashMap<u64, u64>,
    /// Look-aheads by the instance type where the walk stopped (`None`: not a map).
    stuck: HashMap<Option<u64>, u64>,
    /// Objects whose size was found by looking ahead.
    sized_by_lookahead: u64,
    /// The pages' addresses (maps are looked for only there).
    chunks: std::collections::HashSet<u64>,
}

/// The V8 pages in `ranges`, by address.
fn find_pages<M: Memory>(mem: &M, ranges: &[(u64, u64)]) -> Vec<Page> {
    let mut pages: Vec<Page> = page_candidates(ranges).filter_map(|a| Page::read(mem, a)).collect();
    pages.sort_by_key(|p| p.chunk);
    pages
}

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

/// The word at byte offset `at` of `buf`, if inside.
fn word_at(buf: &[u8], at: u64) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    let raw = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(raw.try_into().ok()?))
}

/// `n` rounded up to the 8-byte object alignment.
fn align8(n: u64) -> u64 {
    n.saturating_add(7) & !7
}

impl<'r, M: Memory> Walker<'r, M> {
    /// A walker of `pages` with empty caches.
    fn new(reader: &'r mut Reader<M>, hl: &'r HeapLayout, pages: &[Page]) -> Self {
        Walker {
            reader,
            hl,
            maps: HashMap::new(),
            functions: HashMap::new(),
            labels: Vec::new(),
            by_label: HashMap::new(),
            counts: HashMap::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
            unparsed: 0,
            resyncs: 0,
            free: HashMap::new(),
            stuck: HashMap::new(),
            sized_by_lookahead: 0,
            chunks: pages.iter().map(|p| p.chunk).collect(),
        }
    }

    /// Walks the objects of a regular page, whose object area is `buf`, and counts them.
    fn walk(&mut self, page: &Page, buf: &[u8]) {
        for (at, info, size) in self.objects(buf) {
            self.count(page, buf, at, info, size);
        }
    }

    /// The objects of a regular page's object area `buf`: offset, map and size, in order.
    /// Bytes that do not parse are added to the unparsed count.
    fn objects(&mut self, buf: &[u8]) -> Vec<(u64, MapInfo, u64)> {
        let mut out = Vec::new();
        let len = buf.len() as u64;
        let mut at = 0u64;
        while at < len {
            if let Some((info, size)) = self.parse(buf, at) {
                out.push((at, info, size));
                at += size;
                continue;
            }
            // A map whose objects this reader cannot size (ScopeInfo, feedback vectors, ...):
            // the object ends where the next run of objects starts. Anything else is skipped.
            let info = word_at(buf, at).and_then(|w| self.map_info(w));
            *self.stuck.entry(info.map(|i| i.ty)).or_default() += 1;
            let next = self.resync(buf, at + 8);
            match (info, next) {
                (Some(info), Some(next)) => {
                    self.sized_by_lookahead += 1;
                    out.push((at, info, next - at));
                }
                (None, Some(next)) => self.unparsed += next - at,
                (_, None) => self.unparsed += len - at,
            }
            self.resyncs += 1;
            at = next.unwrap_or(len);
        }
        out
    }

    /// Counts the one object of a large-object page (`buf` is its start).
    fn large(&mut self, page: &Page, buf: &[u8], area: u64) {
        let Some(info) = word_at(buf, 0).and_then(|w| self.map_info(w)) else {
            self.unparsed += area;
            return;
        };
        // The object fills its page's area, give or take alignment.
        let size = self.size_of(info, buf, 0).filter(|s| *s <= area).unwrap_or(area);
        self.count(page, buf, 0, info, size);
    }

    /// The map and size of the object at `at`, when it parses: its first word is a map, and
    /// its size stays inside the page (and, where the size is a guess, the next object starts
    /// with a map).
    fn parse(&mut self, buf: &[u8], at: u64) -> Option<(MapInfo, u64)> {
        let len = buf.len() as u64;
        let info = self.map_info(word_at(buf, at)?)?;
        if let Some(size) = self.size_of(info, buf, at) {
            return (size >= 8 && at.checked_add(size)? <= len).then_some((info, size));
        }
        // Unknown variable-sized type: the usual shapes, kept when the next object parses.
        let n = word_at(buf, at + 8)?;
        let smi = (n & self.reader.layout.tag_mask != self.reader.layout.heap_tag)
            .then(|| (n as i64) >> self.reader.layout.smi_shift)
            .filter(|v| (1..1 << 30).contains(v))? as u64;
        // FixedArray-like (a length, then tagged slots), byte arrays, WeakArrayList-like
        // (capacity, length, slots) and, where the metadata does not name FreeSpace (node 24),
        // FreeSpace-like (its size in words or bytes).
        let free_space = match self.hl.free_space_type {
            None => [8 * smi, smi],
            Some(_) => [0, 0],
        };
        let shapes = [16 + 8 * smi, align8(16 + smi), 24 + 8 * smi, free_space[0], free_space[1]];
        shapes.into_iter().find_map(|size| {
            let end = at.checked_add(size)?;
            let fits = size >= 16
                && size % 8 == 0
                && (end == len || (end < len && word_at(buf, end).and_then(|w| self.map_info(w)).is_some()));
            fits.then_some((info, size))
        })
    }

    /// The size of the object at `at` when its type's size is known: fixed, or from its
    /// length field. `None` for other variable-sized types.
    fn size_of(&self, info: MapInfo, buf: &[u8], at: u64) -> Option<u64> {
        if info.size != 0 {
            return Some(info.size);
        }
        let hl = self.hl;
        let l = &self.reader.layout;
        let smi = |off: u64| {
            let w = word_at(buf, at + off)?;
            let v = (w & l.tag_mask != l.heap_tag).then(|| (w as i64) >> l.smi_shift)?;
            u64::try_from(v).ok().filter(|v| *v < 1 << 36)
        };
        let s = &l.strings;
        let ty = info.ty;
        if ty < s.first_nonstring {
            if ty & s.representation_mask != s.seq {
                return None;
            }
            let raw = word_at(buf, at + (s.length & !7))?;
            let length = (raw >> ((s.length & 7) * 8)) as u32 as u64;
            let (chars, width) = match ty & s.encoding_mask == s.one_byte {
                true => (s.one_byte_chars, 1),
                false => (s.two_byte_chars, 2),
            };
            return Some(align8(chars + length * width));
        }
        if Some(ty) == hl.free_space_type {
            return smi(8);
        }
        if ty == hl.fixed_double_array_type || ty == l.fixed_array_type {
            return Some(l.array_data + 8 * smi(l.array_length)?);
        }
        if ty == hl.byte_array_type {
            return Some(align8(l.array_data + smi(l.array_length)?));
        }
        if Some(ty) == hl.weak_array_list_type {
            return Some(24 + 8 * smi(8)?);
        }
        if hl.descriptor_types.contains(&ty) {
            let all = word_at(buf, at + 8)? as u16 as u64;
            return Some(hl.descriptor_header + all * hl.descriptor_entry);
        }
        if let Some((bytecode, data)) = hl.bytecode {
            if ty == bytecode {
                return Some(align8(data + smi(8)?));
            }
        }
        if (hl.first_context_type..=hl.last_context_type).contains(&ty) {
            return Some(16 + 8 * smi(8)?);
        }
        None
    }

    /// The first position from `from` (8-aligned) where [`RESYNC_CHAIN`] objects parse in a
    /// row. Only words that point into a page of the heap are tried as maps.
    fn resync(&mut self, buf: &[u8], from: u64) -> Option<u64> {
        let len = buf.len() as u64;
        let l = &self.reader.layout;
        let (tag_mask, heap_tag) = (l.tag_mask, l.heap_tag);
        let mut at = from;
        while at < len {
            let candidate = word_at(buf, at).is_some_and(|w| {
                w & tag_mask == heap_tag
                    && (matches!(self.maps.get(&w), Some(Some(_)))
                        || self.chunks.contains(&(w & !(PAGE - 1))))
            });
            if candidate && self.chain(buf, at) {
                return Some(at);
            }
            at += 8;
        }
        None
    }

    /// Whether [`RESYNC_CHAIN`] objects parse from `at` (or the page ends first).
    fn chain(&mut self, buf: &[u8], mut at: u64) -> bool {
        for _ in 0..RESYNC_CHAIN {
            if at == buf.len() as u64 {
                return true;
            }
            match self.parse(buf, at) {
                Some((_, size)) => at += size,
                None => return false,
            }
        }
        true
    }

    /// Counts the object at `at` of `page`.
    fn count(&mut self, page: &Page, buf: &[u8], at: u64, info: MapInfo, size: u64) {
        let hl = self.hl;
        if Some(info.ty) == hl.free_space_type {
            *self.free.entry(page.heap).or_default() += size;
            return;
        }
        let l = &self.reader.layout;
        let label = match info.label {
            Some(label) => label,
            None => {
                let sfi = word_at(buf, at + l.function_shared).unwrap_or(0);
                self.closure_label(sfi)
            }
        };
        let external = match info.ty == hl.array_buffer_type {
            true => word_at(buf, at + hl.array_buffer_byte_length).filter(|b| *b < 1 << 40).unwrap_or(0),
            false => 0,
        };
        let map = word_at(buf, at).unwrap_or(0);
        let tagged = (page.area_start + at) | self.reader.layout.heap_tag;
        // xorshift: a reproducible choice of which objects to keep.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let draw = self.rng;
        let entry = self.counts.entry((page.heap, label)).or_default();
        entry.count += 1;
        entry.bytes += size;
        entry.external += external;
        if entry.samples.len() < SAMPLES {
            entry.samples.push((tagged, map));
        } else if let Some(slot) = usize::try_from(draw % entry.count).ok().filter(|k| *k < SAMPLES) {
            entry.samples[slot] = (tagged, map);
        }
    }

    /// The label index of `(kind, name, label)`, new or not.
    fn intern(&mut self, kind: Kind, name: String, label: String) -> usize {
        if let Some(i) = self.by_label.get(&(kind, label.clone())) {
            return *i;
        }
        if self.labels.len() >= MAX_LABELS {
            return self.intern_other();
        }
        self.labels.push((kind, name, label.clone()));
        self.by_label.insert((kind, label), self.labels.len() - 1);
        self.labels.len() - 1
    }

    fn intern_other(&mut self) -> usize {
        let key = (Kind::System, "(other)".to_string());
        if let Some(i) = self.by_label.get(&key) {
            return *i;
        }
        self.labels.push((Kind::System, "(other)".into(), "(other)".into()));
        self.by_label.insert(key, self.labels.len() - 1);
        self.labels.len() - 1
    }

    /// A closure's label, by its `SharedFunctionInfo`.
    fn closure_label(&mut self, sfi: u64) -> usize {
        if let Some(i) = self.functions.get(&sfi) {
            return *i;
        }
        let (name, label) = match self.reader.function(sfi) {
            Ok(f) => {
                let place = match (&f.file, f.line) {
                    (Some(file), Some(line)) => format!(" ({}:{line})", short_file(file)),
                    (Some(file), None) => format!(" ({})", short_file(file)),
                    _ => String::new(),
                };
                (f.name.clone(), format!("{}{place}", f.name))
            }
            Err(_) => ("(closure)".to_string(), "(closure)".to_string()),
        };
        let i = self.intern(Kind::Closure, name, label);
        self.functions.insert(sfi, i);
        i
    }

    /// What the census knows about the map `tagged`, or `None` when it is not a map.
    fn map_info(&mut self, tagged: u64) -> Option<MapInfo> {
        if let Some(hit) = self.maps.get(&tagged) {
            return *hit;
        }
        let info = self.read_map(tagged).ok();
        self.maps.insert(tagged, info);
        info
    }

    fn read_map(&mut self, tagged: u64) -> Result<MapInfo, Bad> {
        let hl = self.hl;
        let (obj, ty_of_map) = self.reader.type_of(tagged)?;
        if ty_of_map != hl.map_type {
            return Err(Bad::WrongType { addr: obj, found: ty_of_map, wanted: "Map" });
        }
        let mut raw = [0u8; 2];
        self.reader.bytes(obj.wrapping_add(self.reader.layout.instance_type), &mut raw)?;
        let ty = u16::from_le_bytes(raw) as u64;
        let mut words = [0u8; 1];
        self.reader.bytes(obj.wrapping_add(hl.instance_size_words), &mut words)?;
        let size = words[0] as u64 * 8;
        let l = &self.reader.layout;
        let closure = (l.first_function_type..=l.last_function_type).contains(&ty);
        let label = match closure {
            true => None,
            false => {
                let (kind, name, label) = self.map_label(obj, ty);
                Some(self.intern(kind, name, label))
            }
        };
        Ok(MapInfo { ty, size, label })
    }

    /// The label of the objects of the map at `map` (an object address), of type `ty`.
    fn map_label(&mut self, map: u64, ty: u64) -> (Kind, String, String) {
        let hl = self.hl;
        let l = &self.reader.layout;
        let system = |kind: Kind, name: String| (kind, name.clone(), name);
        if ty < l.strings.first_nonstring {
            return system(Kind::String, "(string)".into());
        }
        if (hl.first_context_type..=hl.last_context_type).contains(&ty) {
            return system(Kind::Context, "(context)".into());
        }
        if ty < hl.first_js_type {
            let name = match hl.type_names.get(&ty) {
                Some(class) => format!("({class})"),
                None => format!("(internal type {ty})"),
            };
            return system(Kind::System, name);
        }
        let kind = match ty {
            t if t == hl.array_buffer_type => Kind::ArrayBuffer,
            t if t == hl.js_array_type => Kind::Array,
            _ => Kind::Object,
        };
        let name = self.constructor_name(map).unwrap_or_else(|| match hl.type_names.get(&ty) {
            Some(class) => class.clone(),
            None => "(object)".into(),
        });
        let label = match name.as_str() {
            "Object" => match self.shape(map) {
                Some(names) => format!("Object {{{names}}}"),
                None => name.clone(),
            },
            _ => name.clone(),
        };
        (kind, name, label)
    }

    /// The name of the constructor of the map at `map`: its constructor field, through back
    /// pointers to the map it transitioned from.
    fn constructor_name(&mut self, map: u64) -> Option<String> {
        let hl = self.hl;
        let mut value = self.reader.word(map.wrapping_add(hl.constructor_or_back_pointer)).ok()?;
        for _ in 0..MAX_BACK_POINTERS {
            let (obj, ty) = self.reader.type_of(value).ok()?;
            let l = &self.reader.layout;
            if ty == hl.map_type {
                value = self.reader.word(obj.wrapping_add(hl.constructor_or_back_pointer)).ok()?;
                continue;
            }
            if !(l.first_function_type..=l.last_function_type).contains(&ty) {
                return None;
            }
            let sfi = self.reader.word(obj.wrapping_add(l.function_shared)).ok()?;
            return self.reader.function(sfi).ok().map(|f| f.name);
        }
        None
    }

    /// The own property names of the map at `map`, comma-separated (at most
    /// [`MAX_SHAPE_NAMES`]); `None` for dictionary-mode objects or unreadable descriptors.
    fn shape(&self, map: u64) -> Option<String> {
        let hl = self.hl;
        let r = &self.reader;
        let mut raw = [0u8; 4];
        r.bytes(map.wrapping_add(hl.bit_field3), &mut raw).ok()?;
        let own = ((u32::from_le_bytes(raw) as u64) & hl.own_descriptors_mask) >> hl.own_descriptors_shift;
        if own > MAX_DESCRIPTORS {
            return None;
        }
        if own == 0 {
            return Some(String::new());
        }
        let (descriptors, ty) = r.type_of(r.word(map.wrapping_add(hl.instance_descriptors)).ok()?).ok()?;
        if !hl.descriptor_types.contains(&ty) {
            return None;
        }
        let mut names = Vec::new();
        for i in 0..own.min(MAX_SHAPE_NAMES) {
            let at =
                descriptors.wrapping_add(hl.descriptor_header + i * hl.descriptor_entry + hl.descriptor_key);
            let key = r.word(at).ok()?;
            let name = match r.type_of(key) {
                Ok((_, t)) if t < r.layout.strings.first_nonstring => r.string(key).ok()?,
                _ => "<symbol>".to_string(),
            };
            names.push(name.chars().take(64).collect::<String>());
        }
        if own > MAX_SHAPE_NAMES {
            names.push("…".into());
        }
        Some(names.join(", "))
    }
}

/// A script's path without its directories (for labels).
fn short_file(file: &str) -> &str {
    file.rsplit('/').next().unwrap_or(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v8::{tests::Garbage, Layout};
    use proptest::prelude::*;

    /// The layouts of one real node binary (read once).
    fn layouts() -> Option<(Layout, HeapLayout)> {
        static BOTH: std::sync::OnceLock<Option<(Layout, HeapLayout)>> = std::sync::OnceLock::new();
        BOTH.get_or_init(|| {
            let (path, major) = [("/var/cache/leakprobe/node/24/node", 24), ("/usr/bin/node", 20)]
                .into_iter()
                .find(|(p, _)| std::path::Path::new(p).is_file())?;
            let m = Metadata::from_elf(&std::fs::read(path).ok()?).ok()?;
            Some((Layout::new(&m, Some(major)).ok()?, HeapLayout::new(&m).ok()?))
        })
        .clone()
    }

    /// Where the test page starts (256 KiB-aligned).
    const CHUNK: u64 = 0x40_0000_0000;
    /// Its header, a meta map at 0xc0 and a map of the test's choosing at 0xe0 fit here.
    const HEADER: u64 = 0x100;
    const META_MAP: u64 = CHUNK + 0xc0;
    const OBJECT_MAP: u64 = CHUNK + 0xe0;
    const HEAP: u64 = 0x7700_0000;

    /// A page at [`CHUNK`] whose object area is `objects`, with a header of `shape` (0: node
    /// 18/20, 1: node 22, 2: node 24, whose metadata is put after the objects), a meta map
    /// (10 words), and a map of type `ty` and `words` words at [`OBJECT_MAP`].
    fn page(l: &Layout, hl: &HeapLayout, shape: u8, ty: u64, words: u8, objects: &[u64]) -> (Garbage, u64) {
        let area_start = CHUNK + HEADER;
        let area_end = area_start + 8 * objects.len() as u64;
        let mut w = vec![0u64; (HEADER / 8) as usize];
        match shape {
            0 => w[..5].copy_from_slice(&[PAGE, 0x4, HEAP, area_start, area_end]),
            1 => w[..6].copy_from_slice(&[0x4, CHUNK, PAGE, HEAP, area_start, area_end]),
            _ => w[..2].copy_from_slice(&[0x4, area_end]),
        }
        if shape == 0 {
            w[10] = CHUNK;
        }
        w.extend_from_slice(objects);
        if shape == 2 {
            w.extend_from_slice(&[0, CHUNK, PAGE, 0, 0, 0, 0, area_end, HEAP, area_start, 0, 0]);
        }
        let mut bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut put = |at: u64, raw: &[u8]| {
            let at = (at - CHUNK) as usize;
            bytes[at..at + raw.len()].copy_from_slice(raw);
        };
        for map in [META_MAP, OBJECT_MAP] {
            put(map, &(META_MAP + 1).to_le_bytes());
        }
        put(META_MAP + l.instance_type, &(hl.map_type as u16).to_le_bytes());
        put(META_MAP + hl.instance_size_words, &[10]);
        put(OBJECT_MAP + l.instance_type, &(ty as u16).to_le_bytes());
        put(OBJECT_MAP + hl.instance_size_words, &[words]);
        (Garbage(bytes, CHUNK), area_end - area_start)
    }

    fn limits() -> Limits {
        Limits { max_bytes: 1 << 30, max_time: Duration::from_secs(5) }
    }

    #[test]
    fn a_page_of_each_header_shape_is_found() {
        let Some((l, hl)) = layouts() else { return };
        for shape in 0..3 {
            let (mem, area) = page(&l, &hl, shape, hl.first_js_type, 3, &[0; 6]);
            let found = Page::read(&mem, CHUNK).unwrap_or_else(|| panic!("shape {shape}"));
            assert_eq!(
                (found.heap, found.area_start, found.area_end - found.area_start),
                (HEAP, CHUNK + HEADER, area)
            );
            assert!(!found.young());
            assert_eq!(Page::read(&mem, CHUNK + 8), None);
        }
    }

    /// Three 3-word objects of a JavaScript type, a two-element FixedArray, a string and the
    /// two maps those need: each counted once with its size; nothing unparsed.
    #[test]
    fn walks_a_page_object_by_object() {
        let Some((l, hl)) = layouts() else { return };
        let js = OBJECT_MAP + 1;
        let smi = |v: u64| v << 32;
        let mut objects = vec![js, 0, 0, js, 0, 0, js, 0, 0];
        // Maps for the FixedArray and the one-byte string "hello", planted after them as
        // 10-word objects whose map is the meta map.
        let fixed_map = CHUNK + HEADER + 8 * 16;
        let string_map = fixed_map + 8 * 10;
        objects.extend_from_slice(&[fixed_map + 1, smi(2), 0, 0]);
        let hello = u64::from_le_bytes(*b"hello\0\0\0");
        objects.extend_from_slice(&[string_map + 1, 5 << 32, hello]);
        for ty in [l.fixed_array_type, l.strings.one_byte | l.strings.seq] {
            let mut raw = [0u8; 80];
            raw[..8].copy_from_slice(&(META_MAP + 1).to_le_bytes());
            raw[l.instance_type as usize..][..2].copy_from_slice(&(ty as u16).to_le_bytes());
            objects.extend(raw.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())));
        }
        let (mem, area) = page(&l, &hl, 1, hl.first_js_type, 3, &objects);
        let mut reader = Reader::new(l.clone(), mem);
        let got = census(&mut reader, &hl, &[(CHUNK, CHUNK + PAGE)], limits());
        assert_eq!(got.unparsed_bytes, 0, "{got:#?}");
        assert_eq!(got.isolates.len(), 1);
        let iso = &got.isolates[0];
        assert_eq!(iso.object_bytes, area);
        let find = |label: &str| iso.types.iter().find(|t| t.label == label).map(|t| (t.count, t.bytes));
        let js_name = hl.type_names[&hl.first_js_type].clone();
        assert_eq!(find(&js_name), Some((3, 72)), "{:#?}", iso.types);
        assert_eq!(find("(FixedArray)"), Some((1, 32)));
        assert_eq!(find("(string)"), Some((1, 24)));
        assert_eq!(find("(Map)"), Some((2, 160)));
    }

    /// A JavaScript object referred to by a FixedArray's element, by a weak list (V8's own
    /// bookkeeping) and, by chance, by a string's characters: the census samples it, the
    /// retainer search finds the array as its holder and rejects the other two.
    #[test]
    fn retainers_keep_references_the_layout_allows() {
        let Some((l, hl)) = layouts() else { return };
        let Some(weak_list) = hl.weak_array_list_type else { return };
        let smi = |v: u64| v << 32;
        let object = CHUNK + HEADER + 1;
        let fixed_map = CHUNK + HEADER + 8 * 13;
        let string_map = fixed_map + 8 * 10;
        let weak_list_map = string_map + 8 * 10;
        let mut objects = vec![OBJECT_MAP + 1, 0, 0];
        objects.extend_from_slice(&[fixed_map + 1, smi(1), object]);
        objects.extend_from_slice(&[string_map + 1, 8 << 32, object]);
        objects.extend_from_slice(&[weak_list_map + 1, smi(1), smi(1), object]);
        for ty in [l.fixed_array_type, l.strings.one_byte | l.strings.seq, weak_list] {
            let mut raw = [0u8; 80];
            raw[..8].copy_from_slice(&(META_MAP + 1).to_le_bytes());
            raw[l.instance_type as usize..][..2].copy_from_slice(&(ty as u16).to_le_bytes());
            objects.extend(raw.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())));
        }
        let (mem, _) = page(&l, &hl, 1, hl.first_js_type, 3, &objects);
        let mut reader = Reader::new(l.clone(), mem);
        let ranges = [(CHUNK, CHUNK + PAGE)];
        let got = census(&mut reader, &hl, &ranges, limits());
        assert_eq!(got.unparsed_bytes, 0, "{got:#?}");
        let js_name = hl.type_names[&hl.first_js_type].clone();
        let key = ("0x77000000".to_string(), Kind::Object, js_name);
        assert_eq!(got.samples.get(&key).map(|s| s.len()), Some(1), "{:?}", got.samples.keys());
        let found =
            retainers(&mut reader, &hl, &|| ranges.to_vec(), &got, std::slice::from_ref(&key), limits());
        let t = &found.types[0];
        assert_eq!((t.sampled, t.stale, t.unexplained), (1, 0, 0), "{found:#?}");
        assert_eq!(found.rejected_hits, 2, "{found:#?}");
        // The sample, then the array (nothing holds it), then both once more from the sample
        // up: the chain stayed open, as when a container's store is replaced or a holder moved
        // during the search.
        assert_eq!(found.passes, 4, "{found:#?}");
        let links = &t.chains[0].links;
        assert_eq!(links.len(), 1, "{found:#?}");
        assert_eq!((links[0].kind, links[0].holder.as_str()), (LinkKind::Internal, "(FixedArray)"));
        assert!(!t.chains[0].complete);
    }

    /// Young pages are not walked; a cap stops the walk and says so.
    #[test]
    fn young_pages_and_caps() {
        let Some((l, hl)) = layouts() else { return };
        let (mut mem, _) = page(&l, &hl, 0, hl.first_js_type, 3, &[OBJECT_MAP + 1, 0, 0]);
        mem.0[8..16].copy_from_slice(&0x12u64.to_le_bytes());
        let got = census(&mut Reader::new(l.clone(), mem), &hl, &[(CHUNK, CHUNK + PAGE)], limits());
        assert_eq!((got.isolates[0].pages, got.isolates[0].young_pages), (0, 1));
        let (mem, _) = page(&l, &hl, 0, hl.first_js_type, 3, &[OBJECT_MAP + 1, 0, 0]);
        let capped = Limits { max_bytes: 1, max_time: Duration::from_secs(5) };
        let got = census(&mut Reader::new(l.clone(), mem), &hl, &[(CHUNK, CHUNK + PAGE)], capped);
        assert_eq!((got.stopped_early, got.pages_not_walked), (Some(Stopped::SizeCap), 1));
    }

    fn census_of(types: &[(&str, u64, u64)]) -> Census {
        Census {
            isolates: vec![IsolateCensus {
                heap: "0x1".into(),
                committed_bytes: 0,
                pages: 1,
                young_pages: 0,
                young_bytes: 0,
                object_bytes: 0,
                objects: 0,
                free_bytes: 0,
                types: types
                    .iter()
                    .map(|(label, count, bytes)| TypeCount {
                        kind: Kind::Object,
                        name: label.to_string(),
                        label: label.to_string(),
                        count: *count,
                        bytes: *bytes,
                        external_bytes: 0,
                    })
                    .collect(),
            }],
            samples: HashMap::new(),
            pages_found: 1,
            unreadable_pages: 0,
            unparsed_bytes: 0,
            resyncs: 0,
            sized_by_lookahead: 0,
            unparsed_at: Vec::new(),
            bytes_read: 0,
            elapsed_ms: 0.0,
            stopped_early: None,
            pages_not_walked: 0,
        }
    }

    /// Growth is per type and isolate, most objects gained first; types that appear or vanish
    /// count from zero; unchanged types are left out.
    #[test]
    fn growth_between_two_censuses() {
        let before = census_of(&[("Session", 100, 4000), ("Gone", 5, 50), ("Same", 7, 70)]);
        let after = census_of(&[("Session", 300, 12000), ("New", 10, 100), ("Same", 7, 70)]);
        let g = growth(&before, &after, 2.0);
        let rows: Vec<(&str, i64, i64, f64)> =
            g.iter().map(|g| (g.label.as_str(), g.count_delta, g.bytes_delta, g.count_per_s)).collect();
        assert_eq!(rows, vec![("Session", 200, 8000, 100.0), ("New", 10, 100, 5.0), ("Gone", -5, -50, -2.5)]);
        assert!(growth(&before, &before, 0.0).is_empty());
    }

    #[test]
    fn anonymous_mappings_and_page_candidates() {
        let maps = "00400000-00500000 r-xp 00000000 08:01 12 /usr/bin/node\n\
                    7f0000040000-7f00000c0000 rw-p 00000000 00:00 0 \n\
                    7f0000100000-7f0000101000 ---p 00000000 00:00 0\n\
                    7f0000200000-7f0000240000 rw-p 00000000 00:00 0 [heap]\n\
                    garbage line\n";
        let ranges = anonymous_ranges(maps);
        assert_eq!(ranges, vec![(0x7f0000040000, 0x7f00000c0000)]);
        let pages: Vec<u64> = page_candidates(&ranges).collect();
        assert_eq!(pages, vec![0x7f0000040000, 0x7f0000080000]);
        assert_eq!(page_candidates(&[(1, 2), (u64::MAX - 5, u64::MAX)]).count(), 0);
    }

    /// Garbage words for the census: often the test page's maps, pointers into it, Smis and
    /// the type numbers the walk tells apart.
    fn garbage_word(l: &Layout, hl: &HeapLayout) -> impl Strategy<Value = u64> {
        let types: Vec<u64> = [
            hl.map_type,
            hl.first_js_type,
            hl.array_buffer_type,
            hl.js_array_type,
            hl.first_context_type,
            l.fixed_array_type,
            l.first_function_type,
            l.sfi_type,
            hl.descriptor_types[0],
        ]
        .into_iter()
        .chain(hl.free_space_type)
        .chain(0..l.strings.first_nonstring)
        .collect();
        let lanes = |t: u64| t | t << 16 | t << 32 | t << 48;
        prop_oneof![
            1 => any::<u64>(),
            3 => proptest::sample::select(vec![META_MAP + 1, OBJECT_MAP + 1]),
            3 => (0u64..600).prop_map(|k| CHUNK + HEADER + k * 8 + 1),
            2 => (0u64..64).prop_map(|v| v << 32),
            2 => proptest::sample::select(types).prop_map(lanes),
        ]
    }

    /// A header shape, the planted map's type and size, and the page's words.
    fn garbage_page() -> impl Strategy<Value = (u8, u64, u8, Vec<u64>)> {
        let Some((l, hl)) = layouts() else { return Just((0, 0, 0, Vec::new())).boxed() };
        // Also the holders the retainer search names things by: contexts (scope variables),
        // arrays, Maps and property arrays.
        let types = vec![
            hl.first_js_type,
            l.fixed_array_type,
            l.first_function_type,
            hl.map_type,
            3,
            0x21,
            hl.first_context_type,
            hl.js_array_type,
            hl.refs.js_map_type,
            hl.refs.property_array_type,
        ];
        (
            0u8..3,
            proptest::sample::select(types),
            any::<u8>(),
            proptest::collection::vec(garbage_word(&l, &hl), 1..600),
        )
            .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// A page of garbage is walked without a panic or a hang, and every byte of its area is
        /// accounted for exactly once: counted under a type, as free space, or as unparsed.
        #[test]
        fn garbage_pages_are_walked_and_accounted((shape, ty, words, objects) in garbage_page()) {
            let Some((l, hl)) = layouts() else { return Ok(()) };
            let (mem, area) = page(&l, &hl, shape, ty, words, &objects);
            let mut reader = Reader::new(l, mem);
            let got = census(&mut reader, &hl, &[(CHUNK, CHUNK + 2 * PAGE)], limits());
            let iso = &got.isolates[0];
            prop_assert_eq!(iso.pages, 1);
            prop_assert_eq!(iso.object_bytes + iso.free_bytes + got.unparsed_bytes, area);
            prop_assert_eq!(iso.objects, iso.types.iter().map(|t| t.count).sum::<u64>());
        }

        /// The retainer search over a page of garbage: no panic or hang, every sample either
        /// searched or stale, no chain holding more samples than were searched.
        #[test]
        fn retainers_of_garbage_pages((shape, ty, words, objects) in garbage_page()) {
            let Some((l, hl)) = layouts() else { return Ok(()) };
            let (mem, _) = page(&l, &hl, shape, ty, words, &objects);
            let mut reader = Reader::new(l, mem);
            let ranges = [(CHUNK, CHUNK + 2 * PAGE)];
            let got = census(&mut reader, &hl, &ranges, limits());
            // One type (so that its holders are not samples themselves and the search climbs).
            let mut wanted: Vec<(String, Kind, String)> = got.samples.keys().cloned().collect();
            wanted.sort();
            wanted.truncate(1);
            let found = retainers(&mut reader, &hl, &|| ranges.to_vec(), &got, &wanted, limits());
            prop_assert_eq!(found.types.len(), wanted.len());
            for t in &found.types {
                let key = (t.heap.clone(), t.kind, t.label.clone());
                prop_assert_eq!((t.sampled + t.stale) as usize, got.samples[&key].len());
                let chained: u32 = t.chains.iter().map(|c| c.samples).sum();
                prop_assert!(chained + t.unexplained <= t.sampled);
                prop_assert!(t.chains.iter().all(|c| !c.links.is_empty() && !c.text.is_empty()));
            }
            prop_assert!(found.passes as usize <= 12);
        }

        /// Garbage page headers are a page or not, never a panic.
        #[test]
        fn garbage_headers_never_panic(words in proptest::collection::vec(any::<u64>(), 64),
                                       pointer in 0u64..64) {
            let mut words = words;
            words[1] = if pointer % 2 == 0 { CHUNK } else { CHUNK + pointer * 8 };
            words[10] = CHUNK;
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            if let Some(page) = Page::read(&Garbage(bytes, CHUNK), CHUNK) {
                prop_assert!(page.area_start > CHUNK && page.area_start <= page.area_end);
                prop_assert!(page.area_end <= CHUNK + page.size);
            }
        }
    }
}
