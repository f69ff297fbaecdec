//! Reading V8 objects of one process: from a `SharedFunctionInfo`, the function's name, its
//! script's name and the line it starts on ([`Reader::function`]).

use std::{cell::RefCell, collections::HashMap};

use super::{
    layout::{Layout, ScopeInfoPositions},
    memory::{words, Bad, Memory, PageCache},
};

/// A JavaScript function, as named from its `SharedFunctionInfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsFunction {
    /// Its name; `(anonymous)` when it has none.
    pub name: String,
    /// Its script's name (a path or URL), when it has a script with a name.
    pub file: Option<String>,
    /// The 1-based line it starts on, when known.
    pub line: Option<u32>,
}

/// Longest string read (function and script names, or a source to count lines in).
pub(super) const MAX_STRING: u64 = 16 << 20;
/// Deepest chain of cons/sliced/thin strings followed.
pub(super) const MAX_STRING_DEPTH: u32 = 64;
/// Most string objects visited for one string (cons strings branch).
pub(super) const MAX_STRING_PARTS: u32 = 4096;
/// Most lines a `line_ends` array may claim.
pub(super) const MAX_LINES: u64 = 4 << 20;
/// `ScopeInfo` slots searched for a name and positions in the older layout.
pub(super) const SCOPE_SLOTS: u64 = 16;

/// Reads V8 objects of one process.
#[derive(Clone)]
pub struct Reader<M: Memory> {
    pub(super) layout: Layout,
    pub(super) mem: M,
    /// Scripts by address: (name, line ends). Cleared with [`Reader::forget`].
    pub(super) scripts: HashMap<u64, (Option<String>, Option<Vec<u32>>)>,
    /// The map of the objects whose headers JIT instructions follow, once one was found
    /// ([`Reader::compiled`]).
    pub(super) header_map: Option<u64>,
    /// Pages read for small reads, while [`Reader::cache_small_reads`] is on.
    small_reads: Option<RefCell<PageCache>>,
}

impl<M: Memory> Reader<M> {
    /// A reader of `mem` with `layout`.
    pub fn new(layout: Layout, mem: M) -> Self {
        Self { layout, mem, scripts: HashMap::new(), header_map: None, small_reads: None }
    }

    /// Drops what was cached by address (after a mark-compact, objects may have moved).
    pub fn forget(&mut self) {
        self.scripts.clear();
    }

    /// Serves small reads from copies of the pages they fall in (one read a page), from now
    /// until it is turned off; turning it on again starts over. For one pass over the heap,
    /// where thousands of maps and functions are named: what it serves is as old as the first
    /// read of its page.
    pub fn cache_small_reads(&mut self, on: bool) {
        self.small_reads = on.then(Default::default);
    }

    /// Names the function of the tagged `SharedFunctionInfo` pointer `sfi`.
    pub fn function(&mut self, sfi: u64) -> Result<JsFunction, Bad> {
        let l = self.layout.clone();
        let sfi = self.typed(sfi, l.sfi_type, "SharedFunctionInfo")?;
        let name_or_scope = self.word(sfi.wrapping_add(l.sfi_name_or_scope_info))?;
        let (name, position) = match self.type_of(name_or_scope) {
            Ok((obj, ty)) if ty == l.scope_info_type => self.scope_info(obj)?,
            Ok((_, ty)) if ty < l.strings.first_nonstring => (Some(self.string(name_or_scope)?), None),
            _ => (None, None),
        };
        let (file, line_ends) = match self.type_of(self.word(sfi.wrapping_add(l.sfi_script))?) {
            Ok((script, ty)) if ty == l.script_type => self.script(script),
            _ => (None, None),
        };
        let line = match (position, line_ends) {
            (Some(pos), Some(ends)) => Some(line_of(&ends, pos)),
            _ => None,
        };
        let name = name.filter(|n| !n.is_empty()).unwrap_or_else(|| "(anonymous)".into());
        Ok(JsFunction { name, file, line })
    }

    /// The function name and start position a `ScopeInfo` holds.
    pub(super) fn scope_info(&self, obj: u64) -> Result<(Option<String>, Option<u32>), Bad> {
        let l = &self.layout;
        let data = obj.wrapping_add(l.map).wrapping_add(8);
        let slot = |i: u64| self.word(data.wrapping_add(i.wrapping_mul(8)));
        let fixed = match l.positions {
            ScopeInfoPositions::Fixed => self.smi(slot(3)?).filter(|p| *p >= 0).map(|p| p as u32),
            ScopeInfoPositions::AfterName => None,
        };
        let locals =
            self.smi(slot(l.scope_context_locals)?).filter(|n| (0..=1 << 16).contains(n)).unwrap_or(0);
        let mut name = None;
        let mut prev: Option<i64> = None;
        let start = l.scope_first_vars.wrapping_add(2 * locals as u64);
        for i in (0..SCOPE_SLOTS).map(|k| start.wrapping_add(k)) {
            let Ok(word) = slot(i) else { break };
            if name.is_none() {
                if let Ok((_, ty)) = self.type_of(word) {
                    if ty < l.strings.first_nonstring {
                        name = self.string(word).ok();
                        if fixed.is_some() {
                            break;
                        }
                    }
                }
            }
            let value = self.smi(word);
            if let (Some(start), Some(end), ScopeInfoPositions::AfterName) = (prev, value, l.positions) {
                if 0 <= start && start < end {
                    return Ok((name, Some(start as u32)));
                }
            }
            prev = value;
        }
        Ok((name, fixed))
    }

    /// A script's name and line ends, cached by address.
    pub(super) fn script(&mut self, script: u64) -> (Option<String>, Option<Vec<u32>>) {
        if let Some(hit) = self.scripts.get(&script) {
            return hit.clone();
        }
        let l = &self.layout;
        let name = self.word(script.wrapping_add(l.script_name)).and_then(|w| self.string(w)).ok();
        let ends = self.line_ends(script).ok();
        self.scripts.insert(script, (name.clone(), ends.clone()));
        (name, ends)
    }

    /// Where each line of a script ends: V8's own table when it has built one, else counted
    /// in the source.
    pub(super) fn line_ends(&self, script: u64) -> Result<Vec<u32>, Bad> {
        let l = &self.layout;
        if let Ok((array, ty)) = self.type_of(self.word(script.wrapping_add(l.script_line_ends))?) {
            if ty == l.fixed_array_type {
                let raw = self.array_bytes(array, 8, MAX_LINES, "line_ends length")?;
                return Ok(words(&raw).filter_map(|w| self.smi(w)).map(|v| v.max(0) as u32).collect());
            }
        }
        let source = self.string(self.word(script.wrapping_add(l.script_source))?)?;
        Ok(count_line_ends(&source))
    }

    /// The text of the tagged string pointer `tagged`.
    pub fn string(&self, tagged: u64) -> Result<String, Bad> {
        let mut units = Vec::new();
        let mut budget = MAX_STRING_PARTS;
        self.string_units(tagged, 0, u64::MAX, &mut units, &mut budget, 0)?;
        Ok(String::from_utf16_lossy(&units))
    }

    /// Appends UTF-16 units `from..from+len` (clamped) of the string `tagged` to `out`,
    /// visiting at most `budget` more string objects.
    pub(super) fn string_units(
        &self,
        tagged: u64,
        from: u64,
        len: u64,
        out: &mut Vec<u16>,
        budget: &mut u32,
        depth: u32,
    ) -> Result<(), Bad> {
        if depth > MAX_STRING_DEPTH || *budget == 0 || out.len() as u64 > MAX_STRING {
            return Err(Bad::Implausible("string shape"));
        }
        *budget -= 1;
        let s = &self.layout.strings;
        let (obj, ty) = self.type_of(tagged)?;
        if ty >= s.first_nonstring {
            return Err(Bad::WrongType { addr: obj, found: ty, wanted: "String" });
        }
        let length = self.string_length(obj)?;
        if length > MAX_STRING {
            return Err(Bad::Implausible("string length"));
        }
        let from = from.min(length);
        let len = len.min(length - from);
        match ty & s.representation_mask {
            r if r == s.seq => {
                let one_byte = ty & s.encoding_mask == s.one_byte;
                let (chars, width) = if one_byte { (s.one_byte_chars, 1) } else { (s.two_byte_chars, 2) };
                self.chars(obj.wrapping_add(chars).wrapping_add(from * width), len, width, out)
            }
            r if r == s.cons => {
                let first = self.word(obj.wrapping_add(s.cons_first))?;
                let (first_obj, first_ty) = self.type_of(first)?;
                let first_len = match first_ty < s.first_nonstring {
                    true => self.string_length(first_obj)?,
                    false => return Err(Bad::WrongType { addr: first, found: first_ty, wanted: "String" }),
                };
                if from < first_len {
                    self.string_units(first, from, len.min(first_len - from), out, budget, depth + 1)?;
                }
                let end = from + len;
                if end > first_len {
                    let second = self.word(obj.wrapping_add(s.cons_second))?;
                    let start = from.saturating_sub(first_len);
                    self.string_units(second, start, end - first_len - start, out, budget, depth + 1)?;
                }
                Ok(())
            }
            r if r == s.sliced => {
                let parent = self.word(obj.wrapping_add(s.sliced_parent))?;
                let offset = self
                    .smi(self.word(obj.wrapping_add(s.sliced_offset))?)
                    .ok_or(Bad::Implausible("slice offset"))?;
                let offset = u64::try_from(offset).map_err(|_| Bad::Implausible("slice offset"))?;
                self.string_units(parent, offset.saturating_add(from), len, out, budget, depth + 1)
            }
            r if r == s.thin => self.string_units(
                self.word(obj.wrapping_add(s.thin_actual))?,
                from,
                len,
                out,
                budget,
                depth + 1,
            ),
            // The embedder's characters (node's own library sources are such), through the
            // data pointer V8 caches after the resource.
            r if r == s.external && ty & s.uncached_external == 0 => {
                let data = self.word(obj.wrapping_add(s.external_resource).wrapping_add(8))?;
                let width = if ty & s.encoding_mask == s.one_byte { 1 } else { 2 };
                self.chars(data.wrapping_add(from * width), len, width, out)
            }
            _ => Err(Bad::Implausible("uncached external string")),
        }
    }

    /// The length field of the string object at `obj`.
    pub(super) fn string_length(&self, obj: u64) -> Result<u64, Bad> {
        let mut raw = [0u8; 4];
        self.bytes(obj.wrapping_add(self.layout.strings.length), &mut raw)?;
        Ok(u32::from_le_bytes(raw) as u64)
    }

    /// Appends `len` characters of `width` bytes (1: Latin-1, 2: UTF-16) read at `addr`.
    pub(super) fn chars(&self, addr: u64, len: u64, width: u64, out: &mut Vec<u16>) -> Result<(), Bad> {
        let mut raw = vec![0u8; (len * width) as usize];
        self.bytes(addr, &mut raw)?;
        match width {
            1 => out.extend(raw.iter().map(|b| *b as u16)),
            _ => out.extend(raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]))),
        }
        Ok(())
    }

    /// The data of the array object `obj` (any of V8's fixed or byte arrays: a Smi length, then
    /// the elements), `width` bytes an element, at most `max` elements.
    pub(super) fn array_bytes(
        &self,
        obj: u64,
        width: u64,
        max: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, Bad> {
        let l = &self.layout;
        let len = self.smi(self.word(obj.wrapping_add(l.array_length))?).ok_or(Bad::Implausible(what))?;
        if !(0..=max as i64).contains(&len) {
            return Err(Bad::Implausible(what));
        }
        let mut raw = vec![0u8; (len as u64 * width) as usize];
        self.bytes(obj.wrapping_add(l.array_data), &mut raw)?;
        Ok(raw)
    }

    /// The object address of `tagged` if it has type `ty`.
    pub(super) fn typed(&self, tagged: u64, ty: u64, wanted: &'static str) -> Result<u64, Bad> {
        let (obj, found) = self.type_of(tagged)?;
        match found == ty {
            true => Ok(obj),
            false => Err(Bad::WrongType { addr: obj, found, wanted }),
        }
    }

    /// The object address and instance type of the tagged pointer `tagged`.
    pub(super) fn type_of(&self, tagged: u64) -> Result<(u64, u64), Bad> {
        let l = &self.layout;
        if tagged & l.tag_mask != l.heap_tag {
            return Err(Bad::NotObject(tagged));
        }
        let obj = tagged.wrapping_sub(l.heap_tag);
        let map = self.word(obj.wrapping_add(l.map))?;
        if map & l.tag_mask != l.heap_tag {
            return Err(Bad::NotObject(map));
        }
        let mut raw = [0u8; 2];
        self.bytes(map.wrapping_sub(l.heap_tag).wrapping_add(l.instance_type), &mut raw)?;
        Ok((obj, u16::from_le_bytes(raw) as u64))
    }

    /// The value of a Smi word, or `None` for a heap object pointer.
    pub(super) fn smi(&self, word: u64) -> Option<i64> {
        (word & self.layout.tag_mask != self.layout.heap_tag).then(|| (word as i64) >> self.layout.smi_shift)
    }

    pub(super) fn word(&self, addr: u64) -> Result<u64, Bad> {
        let mut raw = [0u8; 8];
        self.bytes(addr, &mut raw)?;
        Ok(u64::from_le_bytes(raw))
    }

    pub(super) fn bytes(&self, addr: u64, buf: &mut [u8]) -> Result<(), Bad> {
        let cached = self.small_reads.as_ref().is_some_and(|c| c.borrow_mut().read(&self.mem, addr, buf));
        match cached || self.mem.read(addr, buf) {
            true => Ok(()),
            false => Err(Bad::Unreadable(addr)),
        }
    }
}

/// The offsets where each line of `source` ends (V8's convention: the newline's index).
pub fn count_line_ends(source: &str) -> Vec<u32> {
    let mut ends: Vec<u32> = source
        .encode_utf16()
        .enumerate()
        .filter(|(_, c)| *c == b'\n' as u16)
        .map(|(i, _)| i as u32)
        .collect();
    ends.push(source.encode_utf16().count() as u32);
    ends
}

/// The 1-based line holding source offset `pos`, given the line ends.
pub fn line_of(line_ends: &[u32], pos: u32) -> u32 {
    line_ends.partition_point(|end| *end < pos) as u32 + 1
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::v8::{
        layout::CodeLayout,
        metadata::{Metadata, MetadataError},
    };
    use proptest::prelude::*;

    /// Memory made of arbitrary bytes at arbitrary addresses.
    /// Memory made of `.0`, starting at address `.1`.
    #[derive(Clone)]
    pub(crate) struct Garbage(pub(crate) Vec<u8>, pub(crate) u64);

    impl Memory for Garbage {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            let Some(start) = addr.checked_sub(self.1) else { return false };
            let Some(end) = start.checked_add(buf.len() as u64) else { return false };
            match self.0.get(start as usize..end as usize) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        }
    }

    pub(crate) fn node_layout(major: u32) -> Option<Layout> {
        let path = format!("/var/cache/leakprobe/node/{major}/node");
        let bytes = std::fs::read(path).ok()?;
        Some(Layout::new(&Metadata::from_elf(&bytes).unwrap(), Some(major)).unwrap())
    }

    /// A real layout (read once: parsing a node binary takes a while).
    pub(crate) fn any_layout() -> Option<Layout> {
        static LAYOUT: std::sync::OnceLock<Option<Layout>> = std::sync::OnceLock::new();
        LAYOUT.get_or_init(|| node_layout(24).or_else(|| node_layout(20))).clone()
    }

    /// Node 18's layout (read once).
    pub(crate) fn node18_layout() -> Option<Layout> {
        static LAYOUT: std::sync::OnceLock<Option<Layout>> = std::sync::OnceLock::new();
        LAYOUT.get_or_init(|| node_layout(18)).clone()
    }

    /// The metadata of /usr/bin/node (read once).
    fn system_metadata() -> Option<Metadata> {
        static META: std::sync::OnceLock<Option<Metadata>> = std::sync::OnceLock::new();
        META.get_or_init(|| Metadata::from_elf(&std::fs::read("/usr/bin/node").ok()?).ok()).clone()
    }

    /// A JSFunction's instance types and no other: node 18's and 20's metadata has no end to
    /// the range (it was taken as every type from JS_FUNCTION_TYPE on, and the census counted
    /// Arrays, Maps and Sets as closures). Every type the metadata names inside it is
    /// JSFunction's (its subtypes, the constructors, have no class of their own).
    #[test]
    fn the_function_types_are_only_functions() {
        let mut seen = 0;
        for major in [18, 20, 22, 24] {
            let Ok(bytes) = std::fs::read(format!("/var/cache/leakprobe/node/{major}/node")) else {
                continue;
            };
            seen += 1;
            let m = Metadata::from_elf(&bytes).unwrap();
            let l = Layout::new(&m, Some(major)).unwrap();
            let functions = l.first_function_type..=l.last_function_type;
            assert!(
                (15..=16).contains(&(l.last_function_type - l.first_function_type)),
                "node {major}: {functions:?}"
            );
            let inside: Vec<&String> =
                m.0.iter()
                    .filter(|(k, v)| k.starts_with("type_") && functions.contains(&(**v as u64)))
                    .map(|(k, _)| k)
                    .collect();
            assert_eq!(inside, ["type_JSFunction__JS_FUNCTION_TYPE"], "node {major}");
            for t in ["type_JSArray__JS_ARRAY_TYPE", "type_JSMap__JS_MAP_TYPE", "type_JSSet__JS_SET_TYPE"] {
                assert!(!functions.contains(&(m.get(t).unwrap() as u64)), "node {major}: {t}");
            }
        }
        assert!(seen > 0 || std::env::var_os("CI").is_none(), "no cached node binary");
    }

    #[test]
    fn every_cached_node_binary_has_the_metadata_we_need() {
        let mut seen = 0;
        for major in [18, 20, 22, 24] {
            if let Some(layout) = node_layout(major) {
                seen += 1;
                let k = layout.kernel();
                assert_eq!(
                    (k.heap_tag, k.tag_mask, k.fp_function, k.fp_context_or_type),
                    (1, 3, -16, -8),
                    "node {major}"
                );
                assert!(k.first_function_type <= k.last_function_type);
                // Every version's code can be searched (node 18's V8 keeps instructions in `Code`).
                assert!(layout.code.is_some(), "node {major}: code layout");
            }
        }
        let usr = Metadata::from_elf(&std::fs::read("/usr/bin/node").unwrap_or_default());
        if let Ok(m) = usr {
            Layout::new(&m, Some(20)).unwrap();
            seen += 1;
        }
        assert!(seen > 0, "no node binary to read metadata from");
    }

    #[test]
    fn lines_of_offsets() {
        let ends = count_line_ends("a\nbc\n\nd");
        assert_eq!(ends, vec![1, 4, 5, 7]);
        assert_eq!(line_of(&ends, 0), 1);
        assert_eq!(line_of(&ends, 1), 1);
        assert_eq!(line_of(&ends, 2), 2);
        assert_eq!(line_of(&ends, 6), 4);
        assert_eq!(line_of(&ends, 99), 5);
        assert_eq!(line_of(&[], 3), 1);
    }

    #[test]
    fn metadata_errors_are_named() {
        assert_eq!(Metadata::from_elf(b"not an elf").unwrap_err(), MetadataError::Absent);
        let m = Metadata::from_pairs([("HeapObjectTag".to_string(), 1)]).unwrap();
        assert_eq!(
            Layout::new(&m, None).unwrap_err(),
            MetadataError::Missing("off_fp_context_or_frame_type")
        );
        let slots = [("off_fp_function", -16), ("off_fp_context_or_frame_type", -24)]
            .map(|(k, v)| (k.to_string(), v));
        assert!(matches!(
            Layout::new(&Metadata::from_pairs(slots).unwrap(), None),
            Err(MetadataError::Unsupported(_))
        ));
        let m = Metadata::from_pairs([("TaggedSize".to_string(), 4)]).unwrap();
        assert_eq!(Layout::new(&m, None).unwrap_err(), MetadataError::Unsupported("pointer compression"));
    }

    /// Where [`Garbage`] memory starts in the property tests.
    pub(crate) const BASE: u64 = 0x10_0000;

    fn garbage_word() -> impl Strategy<Value = u64> {
        garbage_word_for(any_layout())
    }

    /// Garbage words for layout `l`: often tagged pointers back into the garbage, Smis or the
    /// type numbers its reader checks for.
    pub(crate) fn garbage_word_for(l: Option<Layout>) -> impl Strategy<Value = u64> {
        let (objects, strings): (Vec<u64>, Vec<u64>) = match &l {
            Some(l) => (
                [l.sfi_type, l.scope_info_type, l.script_type, l.fixed_array_type]
                    .into_iter()
                    .chain(l.code.iter().flat_map(CodeLayout::types))
                    .collect(),
                (0..l.strings.first_nonstring).collect(),
            ),
            None => (vec![0], vec![0]),
        };
        let lanes = |t: u64| t | t << 16 | t << 32 | t << 48;
        prop_oneof![
            1 => any::<u64>(),
            3 => (0u64..512).prop_map(|k| BASE + k * 8 + 1),
            1 => (0i64..64).prop_map(|v| (v as u64) << 32),
            3 => proptest::sample::select(objects).prop_map(lanes),
            1 => proptest::sample::select(strings).prop_map(lanes),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Garbage read from the target gives an error or a name, never a panic or a hang.
        /// The garbage is words that are often tagged pointers back into it, Smis or small
        /// type numbers, so that the reader's checks pass often enough to reach deep.
        #[test]
        fn garbage_memory_never_panics(words in proptest::collection::vec(garbage_word(), 1..512),
                                       ptr in any::<u64>(), slot in 0u64..512) {
            let Some(layout) = any_layout() else { return Ok(()) };
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let mut reader = Reader::new(layout, Garbage(bytes, BASE));
            let _ = reader.function(ptr);
            let _ = reader.function(BASE + slot * 8 + 1);
            let _ = reader.string(BASE + slot * 8 + 1);
            let _ = reader.compiled(BASE + slot * 8, ptr);
            let _ = reader.compiled(BASE + slot * 8, BASE + (slot / 2) * 8 + 1);
        }


        /// Arbitrary metadata values give a layout or an error, never a panic.
        #[test]
        fn garbage_metadata_never_panics(values in proptest::collection::vec(any::<i64>(), 64)) {
            let Some(real) = system_metadata() else { return Ok(()) };
            let pairs = real.0.keys().cloned().zip(values.into_iter().cycle());
            if let Ok(layout) = Layout::new(&Metadata::from_pairs(pairs).unwrap(), Some(20)) {
                let mut reader = Reader::new(layout, Garbage(vec![0x11; 256], 0x1000));
                let _ = reader.function(0x1001);
            }
        }
    }
}
