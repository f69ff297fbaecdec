//! Walking a V8 page object by object: an object starts with its map, and the map gives its
//! type and, for fixed-size types, its size. Variable-sized objects get their size from their
//! length field (strings, arrays, descriptor arrays, ...); for types the metadata does not
//! describe, the usual shapes are tried and kept only when the next object starts with a map.
//! When nothing fits, the walk looks ahead for the next run of objects and counts the bytes in
//! between as unparsed. Objects are labelled as a heap snapshot names them.

use std::collections::HashMap;

use super::{
    census::{Kind, SAMPLES},
    layout::HeapLayout,
    pages::{Page, PAGE},
};
use crate::v8::{
    memory::{Bad, Memory},
    reader::Reader,
};

/// Most maps followed back to find a constructor.
pub(super) const MAX_BACK_POINTERS: u32 = 64;
/// Most property names kept in a plain object's shape.
pub(super) const MAX_SHAPE_NAMES: u64 = 12;
/// Most descriptors a map may claim (V8's limit is 1020).
pub const MAX_DESCRIPTORS: u64 = 1020;
/// The bits of a `PropertyArray`'s length-and-hash field that are its length (V8 6 to 13).
pub(super) const PROPERTY_ARRAY_LENGTH: u64 = (1 << 10) - 1;
/// Objects that must parse after a candidate position for the walk to resume there.
pub(super) const RESYNC_CHAIN: u32 = 3;
/// Largest part of a large-object page read (only its object's header is needed).
pub const LARGE_HEAD: u64 = 4096;
/// Most distinct labels kept; objects of further labels are counted under `(other)`.
pub(super) const MAX_LABELS: usize = 100_000;

/// What the census knows about one map.
#[derive(Clone, Copy, Debug)]
pub struct MapInfo {
    pub(super) ty: u64,
    /// Fixed instance size in bytes, 0 for variable-sized types.
    pub(super) size: u64,
    /// The label its objects are counted under; `None` for closures (labelled by function).
    pub(super) label: Option<usize>,
}

/// Objects of one label in one heap: counts and a uniform sample of their addresses.
#[derive(Clone, Debug, Default)]
pub(super) struct Tally {
    pub(super) count: u64,
    pub(super) bytes: u64,
    pub(super) external: u64,
    /// Up to [`SAMPLES`] tagged addresses, each with the map word it had (reservoir sampling).
    pub(super) samples: Vec<(u64, u64)>,
}

/// The walk's state: caches by address and the counts so far.
pub struct Walker<'r, M: Memory> {
    pub(super) reader: &'r mut Reader<M>,
    pub(super) hl: &'r HeapLayout,
    pub(super) maps: HashMap<u64, Option<MapInfo>>,
    pub(super) functions: HashMap<u64, usize>,
    pub(super) labels: Vec<(Kind, String, String)>,
    pub(super) by_label: HashMap<(Kind, String), usize>,
    /// (heap, label) → what was counted, with a sample of addresses.
    pub(super) counts: HashMap<(u64, usize), Tally>,
    /// State of the sampling's pseudo-random choice.
    pub(super) rng: u64,
    pub(super) unparsed: u64,
    pub(super) resyncs: u64,
    pub(super) free: HashMap<u64, u64>,
    /// Look-aheads by the instance type where the walk stopped (`None`: not a map).
    pub(super) stuck: HashMap<Option<u64>, u64>,
    /// Objects whose size was found by looking ahead.
    pub(super) sized_by_lookahead: u64,
    /// The pages' addresses (maps are looked for only there).
    pub(super) chunks: std::collections::HashSet<u64>,
    /// Per heap, the names of the user's scripts it compiled (not node's own `node:` ones), at
    /// most [`MAX_SCRIPTS`]: what a worker's isolate runs.
    pub(super) scripts: HashMap<u64, std::collections::BTreeSet<String>>,
}

/// Script names kept per heap.
pub(super) const MAX_SCRIPTS: usize = 16;

/// The word at byte offset `at` of `buf`, if inside.
pub fn word_at(buf: &[u8], at: u64) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    let raw = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(raw.try_into().ok()?))
}

/// `n` rounded up to the 8-byte object alignment.
pub fn align8(n: u64) -> u64 {
    n.saturating_add(7) & !7
}

impl<'r, M: Memory> Walker<'r, M> {
    /// A walker of `pages` with empty caches.
    pub(super) fn new(reader: &'r mut Reader<M>, hl: &'r HeapLayout, pages: &[Page]) -> Self {
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
            scripts: HashMap::new(),
        }
    }

    /// Walks the objects of a regular page, whose object area is `buf`, and counts them.
    pub(super) fn walk(&mut self, page: &Page, buf: &[u8]) {
        for (at, info, size) in self.objects(buf, true) {
            self.count(page, buf, at, info, size);
        }
    }

    /// The objects of a regular page's object area `buf`: offset, map and size, in order.
    /// Bytes that do not parse are added to the unparsed count. An object this reader cannot
    /// size is listed, sized up to where the next run of objects starts, only when `guessed`:
    /// a retainer search leaves it out, as a word in it may be one of the objects it covers.
    pub(super) fn objects(&mut self, buf: &[u8], guessed: bool) -> Vec<(u64, MapInfo, u64)> {
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
                    if guessed {
                        out.push((at, info, next - at));
                    }
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
    pub(super) fn large(&mut self, page: &Page, buf: &[u8], area: u64) {
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
    pub(super) fn parse(&mut self, buf: &[u8], at: u64) -> Option<(MapInfo, u64)> {
        let len = buf.len() as u64;
        let info = self.map_info(word_at(buf, at)?)?;
        if let Some(size) = self.size_of(info, buf, at) {
            return (size >= 8 && at.checked_add(size)? <= len).then_some((info, size));
        }
        // Unknown variable-sized type: the usual shapes, kept when the next object parses
        // (not for types known to have another shape: they are sized by lookahead).
        if self.hl.unsized_types.contains(&info.ty) {
            return None;
        }
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
            let fits = size >= 16 && size % 8 == 0 && end <= len && self.followed(buf, end);
            fits.then_some((info, size))
        })
    }

    /// Whether objects follow from `at`: [`RESYNC_CHAIN`] of them start with a map, each
    /// where the one before ends (or the page ends first), up to the first whose size is not
    /// known. One map word alone is no proof: about one word in five of a heap is one.
    fn followed(&mut self, buf: &[u8], mut at: u64) -> bool {
        let len = buf.len() as u64;
        for _ in 0..RESYNC_CHAIN {
            if at == len {
                return true;
            }
            let Some(info) = word_at(buf, at).and_then(|w| self.map_info(w)) else { return false };
            match self.size_of(info, buf, at) {
                Some(size) if size >= 8 => at = at.saturating_add(size),
                Some(_) => return false,
                None => return true,
            }
            if at > len {
                return false;
            }
        }
        true
    }

    /// The size of the object at `at` when its type's size is known: fixed, or from its
    /// length field. `None` for other variable-sized types.
    pub(super) fn size_of(&self, info: MapInfo, buf: &[u8], at: u64) -> Option<u64> {
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
        if ty == hl.refs.property_array_type {
            // Its length shares the field with the owner's identity hash (V8's
            // `PropertyArray::LengthField`, the low bits).
            return Some(16 + 8 * (smi(8)? & PROPERTY_ARRAY_LENGTH));
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
    pub(super) fn resync(&mut self, buf: &[u8], from: u64) -> Option<u64> {
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
    pub(super) fn chain(&mut self, buf: &[u8], mut at: u64) -> bool {
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
    pub(super) fn count(&mut self, page: &Page, buf: &[u8], at: u64, info: MapInfo, size: u64) {
        let hl = self.hl;
        if hl.gap_types.contains(&info.ty) {
            *self.free.entry(page.heap).or_default() += size;
            return;
        }
        if info.ty == self.reader.layout.script_type {
            let name = word_at(buf, at + self.reader.layout.script_name);
            self.script(page.heap, name);
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

    /// Keeps the name of a script of `heap` (the tagged string `name`), if it is the user's.
    fn script(&mut self, heap: u64, name: Option<u64>) {
        let scripts = self.scripts.entry(heap).or_default();
        if scripts.len() >= MAX_SCRIPTS {
            return;
        }
        let Some(name) = name.and_then(|n| self.reader.string(n).ok()) else { return };
        // V8's own extensions (`v8/gc` with --expose-gc) are not the user's either.
        if !name.is_empty() && !name.starts_with("node:") && !name.starts_with("v8/") && !name.contains('\0')
        {
            scripts.insert(name);
        }
    }

    /// The label index of `(kind, name, label)`, new or not.
    pub(super) fn intern(&mut self, kind: Kind, name: String, label: String) -> usize {
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

    pub(super) fn intern_other(&mut self) -> usize {
        let key = (Kind::System, "(other)".to_string());
        if let Some(i) = self.by_label.get(&key) {
            return *i;
        }
        self.labels.push((Kind::System, "(other)".into(), "(other)".into()));
        self.by_label.insert(key, self.labels.len() - 1);
        self.labels.len() - 1
    }

    /// A closure's label, by its `SharedFunctionInfo`.
    pub(super) fn closure_label(&mut self, sfi: u64) -> usize {
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
    pub(super) fn map_info(&mut self, tagged: u64) -> Option<MapInfo> {
        if let Some(hit) = self.maps.get(&tagged) {
            return *hit;
        }
        let info = self.read_map(tagged).ok();
        self.maps.insert(tagged, info);
        info
    }

    pub(super) fn read_map(&mut self, tagged: u64) -> Result<MapInfo, Bad> {
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
    pub(super) fn map_label(&mut self, map: u64, ty: u64) -> (Kind, String, String) {
        let hl = self.hl;
        let l = &self.reader.layout;
        let system = |kind: Kind, name: String| (kind, name.clone(), name);
        if ty < l.strings.first_nonstring {
            return system(Kind::String, string_label(&l.strings, ty).into());
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
            t if hl.handle_types.contains(&t) => Kind::Handle,
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
    pub(super) fn constructor_name(&mut self, map: u64) -> Option<String> {
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
    pub(super) fn shape(&self, map: u64) -> Option<String> {
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
pub fn short_file(file: &str) -> &str {
    file.rsplit('/').next().unwrap_or(file)
}

/// How DevTools names a string of instance type `ty`: a concatenation (a `ConsString`, which
/// holds its two parts) and a slice (a `SlicedString`, which holds the string it is cut from)
/// are types of their own; every other string (sequential, external, thin) is `(string)`.
pub(super) fn string_label(s: &crate::v8::layout::StringLayout, ty: u64) -> &'static str {
    match ty & s.representation_mask {
        r if r == s.cons => "(concatenated string)",
        r if r == s.sliced => "(sliced string)",
        _ => "(string)",
    }
}
