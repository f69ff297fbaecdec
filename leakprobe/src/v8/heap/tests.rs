use std::{collections::HashMap, time::Duration};

use super::{
    census::{growing_types, growth, Census, IsolateCensus, Kind, Limits, Stopped, TypeCount},
    chain::LinkKind,
    layout::{gap_types, HeapLayout},
    pages::{anonymous_ranges, page_candidates, Page, PAGE},
    retainers::retainers,
    take::census,
};
use crate::v8::{metadata::Metadata, reader::tests::Garbage, Layout, Reader};
use proptest::prelude::*;

/// The layouts of one real node binary (read once).
pub(super) fn layouts() -> Option<(Layout, HeapLayout)> {
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
pub(super) const CHUNK: u64 = 0x40_0000_0000;
/// Its header, a meta map at 0xc0 and a map of the test's choosing at 0xe0 fit here.
pub(super) const HEADER: u64 = 0x100;
const META_MAP: u64 = CHUNK + 0xc0;
pub(super) const OBJECT_MAP: u64 = CHUNK + 0xe0;
const HEAP: u64 = 0x7700_0000;

/// A page at [`CHUNK`] whose object area is `objects`, with a header of `shape` (0: node
/// 18/20, 1: node 22, 2: node 24, whose metadata is put after the objects), a meta map
/// (10 words), and a map of type `ty` and `words` words at [`OBJECT_MAP`].
pub(super) fn page(
    l: &Layout,
    hl: &HeapLayout,
    shape: u8,
    ty: u64,
    words: u8,
    objects: &[u64],
) -> (Garbage, u64) {
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

/// A map planted among a test page's objects: 10 words whose map is the meta map, for objects
/// of type `ty` and `words` words (0: sized by their type).
pub(super) fn planted_map(l: &Layout, hl: &HeapLayout, ty: u64, words: u8) -> Vec<u64> {
    let mut raw = [0u8; 80];
    raw[..8].copy_from_slice(&(META_MAP + 1).to_le_bytes());
    raw[l.instance_type as usize..][..2].copy_from_slice(&(ty as u16).to_le_bytes());
    raw[hl.instance_size_words as usize] = words;
    raw.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect()
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
        objects.extend(planted_map(&l, &hl, ty, 0));
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
        objects.extend(planted_map(&l, &hl, ty, 0));
    }
    let (mem, _) = page(&l, &hl, 1, hl.first_js_type, 3, &objects);
    let mut reader = Reader::new(l.clone(), mem);
    let ranges = [(CHUNK, CHUNK + PAGE)];
    let got = census(&mut reader, &hl, &ranges, limits());
    assert_eq!(got.unparsed_bytes, 0, "{got:#?}");
    let js_name = hl.type_names[&hl.first_js_type].clone();
    let key = ("0x77000000".to_string(), Kind::Object, js_name);
    assert_eq!(got.samples.get(&key).map(|s| s.len()), Some(1), "{:?}", got.samples.keys());
    let found = retainers(&mut reader, &hl, &|| ranges.to_vec(), &got, std::slice::from_ref(&key), limits());
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

/// A string that is the first and second part of a concatenation an array holds, and whose
/// address another string's characters happen to spell: the census counts the concatenation
/// as a type of its own (as DevTools does), and the search finds the array through the
/// concatenation's parts (the other string's characters are no reference); the concatenation
/// is not a link of the chain, as the sample is part of the text the array holds.
#[test]
fn a_string_is_held_through_the_concatenation_it_is_part_of() {
    let Some((l, hl)) = layouts() else { return };
    let s = &l.strings;
    let smi = |v: u64| v << 32;
    let hello = CHUNK + HEADER + 1;
    let cons = hello + 8 * 3;
    let fixed_map = CHUNK + HEADER + 8 * 13;
    let (string_map, cons_map) = (fixed_map + 8 * 10, fixed_map + 8 * 20);
    let mut objects = vec![string_map + 1, 5 << 32, u64::from_le_bytes(*b"hello\0\0\0")];
    let mut concatenation = vec![cons_map + 1, 10 << 32, 0, 0];
    concatenation[(s.cons_first / 8) as usize] = hello;
    concatenation[(s.cons_second / 8) as usize] = hello;
    objects.extend_from_slice(&concatenation);
    objects.extend_from_slice(&[fixed_map + 1, smi(1), cons]);
    objects.extend_from_slice(&[string_map + 1, 8 << 32, hello]);
    // The not-internalized bit: a concatenation is never internalized.
    let cons_ty = s.cons | s.one_byte | 0x20;
    for (ty, words) in [(l.fixed_array_type, 0), (s.one_byte | s.seq, 0), (cons_ty, 4)] {
        objects.extend(planted_map(&l, &hl, ty, words));
    }
    let (mem, _) = page(&l, &hl, 1, hl.first_js_type, 3, &objects);
    let mut reader = Reader::new(l.clone(), mem);
    let ranges = [(CHUNK, CHUNK + PAGE)];
    let got = census(&mut reader, &hl, &ranges, limits());
    assert_eq!(got.unparsed_bytes, 0, "{got:#?}");
    let count = |label: &str| got.isolates[0].types.iter().find(|t| t.label == label).map(|t| t.count);
    assert_eq!((count("(string)"), count("(concatenated string)")), (Some(2), Some(1)), "{got:#?}");
    let key = ("0x77000000".to_string(), Kind::String, "(string)".to_string());
    let found = retainers(&mut reader, &hl, &|| ranges.to_vec(), &got, std::slice::from_ref(&key), limits());
    let t = &found.types[0];
    // Both strings are sampled: "hello" is held, the other (nothing refers to it) is not.
    assert_eq!((t.sampled, t.unexplained), (2, 1), "{found:#?}");
    assert_eq!(found.rejected_hits, 1, "{found:#?}");
    let links = &t.chains[0].links;
    assert_eq!(links.len(), 1, "{found:#?}");
    assert_eq!((links[0].kind, links[0].holder.as_str()), (LinkKind::Internal, "(FixedArray)"));
}

/// Memory whose word at `at` reads as `word` once the test page's object area was read
/// `after` times: an object that died while a retainer search read the heap, its address
/// reused by another.
struct Reused {
    mem: Garbage,
    at: u64,
    word: u64,
    after: u32,
    page_reads: std::cell::Cell<u32>,
}

impl crate::v8::memory::Memory for Reused {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        if addr == CHUNK + HEADER && buf.len() > 64 {
            self.page_reads.set(self.page_reads.get() + 1);
        }
        let ok = self.mem.read(addr, buf);
        if ok && addr == self.at && buf.len() == 8 && self.page_reads.get() >= self.after {
            buf.copy_from_slice(&self.word.to_le_bytes());
        }
        ok
    }
}

/// A sampled object that dies while the search reads the heap, its address reused by an
/// object of another type that an array holds: the array holds the new object, not the
/// sample, so no chain is said (the sample is unexplained) and the hit is counted as moved.
#[test]
fn a_reference_to_a_reused_address_is_no_holder() {
    let Some((l, hl)) = layouts() else { return };
    let smi = |v: u64| v << 32;
    let object = CHUNK + HEADER + 1;
    let fixed_map = CHUNK + HEADER + 8 * 6;
    let mut objects = vec![OBJECT_MAP + 1, 0, 0];
    objects.extend_from_slice(&[fixed_map + 1, smi(1), object]);
    objects.extend(planted_map(&l, &hl, l.fixed_array_type, 0));
    let (mem, _) = page(&l, &hl, 1, hl.first_js_type, 3, &objects);
    let ranges = [(CHUNK, CHUNK + PAGE)];
    let js_name = hl.type_names[&hl.first_js_type].clone();
    let key = ("0x77000000".to_string(), Kind::Object, js_name);
    // Read as it is throughout, the array holds the sample.
    let mut reader = Reader::new(l.clone(), mem.clone());
    let got = census(&mut reader, &hl, &ranges, limits());
    let found = retainers(&mut reader, &hl, &|| ranges.to_vec(), &got, std::slice::from_ref(&key), limits());
    assert_eq!(found.types[0].chains.len(), 1, "{found:#?}");
    assert_eq!(found.moved_hits, 0, "{found:#?}");
    // The census reads the objects once, the search's first pass once more: from then on
    // the sample's address starts with the array's map.
    let reused = Reused { mem, at: object - 1, word: fixed_map + 1, after: 2, page_reads: 0.into() };
    let mut reader = Reader::new(l.clone(), reused);
    let got = census(&mut reader, &hl, &ranges, limits());
    let found = retainers(&mut reader, &hl, &|| ranges.to_vec(), &got, std::slice::from_ref(&key), limits());
    let t = &found.types[0];
    assert_eq!((t.sampled, t.unexplained), (1, 1), "{found:#?}");
    assert!(t.chains.is_empty(), "{found:#?}");
    assert!(found.moved_hits >= 1, "{found:#?}");
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
            scripts: Vec::new(),
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

/// The types searched for holders: most objects gained and most bytes gained, in turn, and
/// never V8's own types or what shrank.
#[test]
fn growing_types_by_count_and_by_bytes() {
    let before = census_of(&[("Session", 100, 4000), ("Blob", 10, 100), ("Tiny", 0, 0), ("Gone", 5, 50)]);
    let after = census_of(&[("Session", 300, 12000), ("Blob", 20, 900_000), ("Tiny", 400, 6400)]);
    let g = growth(&before, &after, 2.0);
    let labels = |top| -> Vec<String> { growing_types(&g, top).into_iter().map(|(_, _, l)| l).collect() };
    assert_eq!(labels(2), ["Tiny", "Blob"]);
    assert_eq!(labels(5), ["Tiny", "Blob", "Session"]);
    let mut system = g.clone();
    system.iter_mut().for_each(|g| g.kind = Kind::System);
    assert!(growing_types(&system, 5).is_empty());
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

/// Node 24's metadata names neither FreeSpace nor the fillers; their types are told from their
/// neighbours, by the same rule that gives the named FreeSpace of node 18 to 22.
#[test]
fn the_heaps_gaps_are_known_on_every_node() {
    let mut seen = 0;
    for major in [18, 20, 22, 24] {
        let Ok(bytes) = std::fs::read(format!("/var/cache/leakprobe/node/{major}/node")) else { continue };
        let m = Metadata::from_elf(&bytes).unwrap();
        let gaps = gap_types(&m);
        let names: Vec<&str> = gaps.iter().map(|(_, n)| *n).collect();
        assert_eq!(names, ["Filler", "FreeSpace"], "node {major}");
        if let Ok(named) = m.get("type_FreeSpace__FREE_SPACE_TYPE") {
            assert_eq!(gaps[1].0, named as u64, "node {major}");
        }
        let hl = HeapLayout::new(&m).unwrap();
        assert_eq!(hl.gap_types, [gaps[0].0, gaps[1].0], "node {major}");
        assert_eq!(hl.type_names[&gaps[1].0], "FreeSpace", "node {major}");
        seen += 1;
    }
    assert!(seen > 0 || !std::path::Path::new("/var/cache/leakprobe/node").exists());
}

/// What never holds for the program, on every node: a function's and a scope's descriptions
/// and scripts are in [`super::layout::UNSEEN_HOLDERS`] by their types, and a context's header (its
/// `ScopeInfo` and the enclosing context) lies before its first variable slot.
#[test]
fn descriptions_and_context_headers_are_never_holders() {
    let mut seen = 0;
    for major in [18, 20, 22, 24] {
        let Ok(bytes) = std::fs::read(format!("/var/cache/leakprobe/node/{major}/node")) else { continue };
        let m = Metadata::from_elf(&bytes).unwrap();
        let hl = HeapLayout::new(&m).unwrap();
        for name in [
            "type_ScopeInfo__SCOPE_INFO_TYPE",
            "type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE",
            "type_Script__SCRIPT_TYPE",
        ] {
            let ty = m.get(name).unwrap() as u64;
            assert!(hl.unseen_holders.contains(&ty), "node {major}: {name}");
        }
        let prev = m.get("context_idx_prev").unwrap() as u64;
        assert!(hl.refs.context_scope_info < hl.refs.context_header_slots, "node {major}");
        assert!(prev < hl.refs.context_header_slots, "node {major}");
        assert!((2..=4).contains(&hl.refs.context_header_slots), "node {major}");
        seen += 1;
    }
    assert!(seen > 0 || !std::path::Path::new("/var/cache/leakprobe/node").exists());
}

/// The embedder's object types (node's handles) are the range `v8-internal.h` gives on every
/// node (`kFirstJSApiObjectType` 0x422 to `kLastJSApiObjectType` 0x80A), found from the metadata
/// alone: what V8 leaves between `JS_OBJECT_TYPE` and its next own type. Arrays, typed arrays
/// and ArrayBuffers are outside it.
#[test]
fn node_handles_are_the_embedders_object_types() {
    let mut seen = 0;
    for major in [18, 20, 22, 24] {
        let Ok(bytes) = std::fs::read(format!("/var/cache/leakprobe/node/{major}/node")) else { continue };
        let m = Metadata::from_elf(&bytes).unwrap();
        let hl = HeapLayout::new(&m).unwrap();
        assert_eq!(hl.handle_types, 0x422..=0x80a, "node {major}");
        for t in [
            "type_JSObject__JS_OBJECT_TYPE",
            "type_JSArray__JS_ARRAY_TYPE",
            "type_JSArrayBuffer__JS_ARRAY_BUFFER_TYPE",
            "type_JSTypedArray__JS_TYPED_ARRAY_TYPE",
        ] {
            assert!(!hl.handle_types.contains(&(m.get(t).unwrap() as u64)), "node {major}: {t}");
        }
        seen += 1;
    }
    assert!(seen > 0 || !std::path::Path::new("/var/cache/leakprobe/node").exists());
}
