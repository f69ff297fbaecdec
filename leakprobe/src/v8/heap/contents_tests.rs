//! What a large container holds ([`super::contents`]), on planted stores: a Map's and a Set's
//! hash table, known by their shape.

use super::{
    contents::{contents, Container},
    layout::HeapLayout,
    tests::{layouts, page, planted_map, CHUNK, HEADER, OBJECT_MAP},
};
use crate::v8::{reader::tests::Garbage, Layout, Reader};

/// A type the metadata does not name: the instance type of the planted hash tables (node 20's
/// metadata does not name `OrderedHashMap`'s).
fn unnamed_type(hl: &HeapLayout) -> u64 {
    (0x100..0x400).find(|t| !hl.type_names.contains_key(t)).expect("an unnamed instance type")
}

/// A large store at the start of a test page: a Map's table (entries of key, value and chain)
/// or a Set's (key and chain) with two buckets and four entries, of which the second is
/// deleted (its key the hole); `extra` slots past the table's true length. Keys and values are
/// 3-word JavaScript objects with no fields.
fn planted_table(l: &Layout, hl: &HeapLayout, entry: u64, extra: u64) -> (Garbage, u64) {
    let smi = |v: u64| v << 32;
    let (buckets, occupied) = (2u64, 4u64);
    let length = 3 + buckets + 2 * buckets * entry + extra;
    let area = CHUNK + HEADER;
    let js_map = area + 8 * (2 + length);
    let oddball_map = js_map + 8 * 10;
    let mut next_object = oddball_map + 8 * 10;
    let hole = next_object + 1;
    next_object += 8 * 6;
    let mut objects = vec![OBJECT_MAP + 1, smi(length), smi(3), smi(1), smi(buckets), smi(0), smi(2)];
    let mut planted = Vec::new();
    for i in 0..occupied {
        let fields = (0..entry - 1).map(|k| match (i, k) {
            (1, 0) => hole,
            _ => {
                planted.extend_from_slice(&[js_map + 1, 0, 0]);
                next_object += 24;
                next_object - 24 + 1
            }
        });
        objects.extend(fields.collect::<Vec<_>>());
        objects.push(smi(0));
    }
    objects.resize(2 + length as usize, smi(0));
    objects.extend(planted_map(l, hl, hl.first_js_type, 3));
    objects.extend(planted_map(l, hl, hl.oddball_type.unwrap_or(hl.first_js_type), 6));
    objects.extend_from_slice(&[oddball_map + 1, 0, 0, 0, 0, 0]);
    objects.extend(planted);
    // Room for the reader's 256-byte reads at the last object.
    objects.extend([0; 32]);
    page(l, hl, 0, unnamed_type(hl), 0, &objects)
}

/// A Map's and a Set's large table are read as containers: their live entries, the first
/// live key, and what an entry keeps (a Map's: its key and value; a Set's: its key). A store
/// whose length is not a table's, or of a type the metadata names as something else, is none.
#[test]
fn a_maps_and_a_sets_large_table_are_containers() {
    let Some((l, hl)) = layouts() else { return };
    if hl.oddball_type.is_none() {
        return;
    }
    for (entry, container, bytes) in [(3, Container::Map, 48.0), (2, Container::Set, 24.0)] {
        let (mem, _) = planted_table(&l, &hl, entry, 0);
        let first_key = u64::from_le_bytes(mem.0[(HEADER + 8 * (2 + 5)) as usize..][..8].try_into().unwrap());
        let mut reader = Reader::new(l.clone(), mem);
        let c = contents(&mut reader, &hl, CHUNK).unwrap_or_else(|| panic!("{container:?}: not read"));
        assert_eq!(
            (c.container, c.used, c.first, c.bytes_per_element),
            (container, 3, first_key, bytes),
            "{c:?}"
        );
        let (mem, _) = planted_table(&l, &hl, entry, 1);
        assert_eq!(
            contents(&mut Reader::new(l.clone(), mem), &hl, CHUNK),
            None,
            "{container:?} one slot long"
        );
    }
    let named = hl.type_names.iter().find(|(_, n)| n.as_str() == "DescriptorArray").map(|(t, _)| *t);
    if let Some(named) = named {
        let (mut mem, _) = planted_table(&l, &hl, 3, 0);
        let at = (OBJECT_MAP - CHUNK + l.instance_type) as usize;
        mem.0[at..at + 2].copy_from_slice(&(named as u16).to_le_bytes());
        assert_eq!(contents(&mut Reader::new(l.clone(), mem), &hl, CHUNK), None, "a DescriptorArray");
    }
}
