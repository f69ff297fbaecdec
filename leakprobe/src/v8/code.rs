//! Inlined frames: which JavaScript functions an optimized frame was running at a return
//! address. Maglev and TurboFan inline small functions into their callers, so one physical
//! frame can hold several functions. V8 records, per offset in the code, a source position
//! whose inlining id indexes the code's deoptimization data: there, each inlining position
//! names the inlined function (a `SharedFunctionInfo` in the literal array) and the position
//! in its caller it was inlined at, whose own inlining id leads one caller further out.
//!
//! The code object is found from the frame's return address alone: JIT code lives in
//! `InstructionStream` objects whose instructions start right after a header, and whose
//! header points back to their `Code` (V8 11 on, node 20+); before, in the `Code` object
//! itself, after its header (node 18). The return address lies in exactly one of them, and a
//! candidate counts only when its `Code` says its instructions start there and reach the
//! address. So nothing extra is captured in the kernel.
//!
//! The metadata gives the types, the deoptimization-data indices, the code-kind field and most
//! offsets; where it is silent the fallbacks are commented.

use super::{
    layout::CodeLayout,
    memory::{words, Bad, Memory},
    reader::Reader,
};

/// How far below a return address the start of its code is searched for: larger than any
/// function V8 compiles (its optimizing tiers give up on huge functions long before).
const MAX_CODE: u64 = 1 << 20;

/// V8 aligns instruction starts to `kCodeAlignment` (64 on x64 since V8 11, 32 before); a
/// search in steps of 32 finds either.
const CODE_ALIGN: u64 = 32;

/// Most inlining levels followed for one frame (V8's own limit is far lower).
const MAX_INLINING_DEPTH: usize = 64;

/// Most elements read from a deoptimization data or literal array.
const MAX_ARRAY: u64 = 1 << 16;

/// Longest source position table read.
const MAX_POSITION_TABLE: u64 = 4 << 20;

/// Size of one `InliningPosition` in the deoptimization data: a `SourcePosition` (8 bytes)
/// and the inlined function's index (`int`), padded to 16. Not in the metadata; unchanged
/// since inlining positions were introduced.
const INLINING_POSITION_SIZE: u64 = 16;

/// What a compiled frame's code says about the functions it ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compiled {
    /// Baseline (Sparkplug) code: one function, never inlined calls.
    Baseline,
    /// Optimized code (Maglev, TurboFan) and the tagged `SharedFunctionInfo`s of the functions
    /// inlined at the return address, innermost first (empty when it was in the frame's own
    /// function).
    Optimized(Vec<u64>),
}

/// V8's `SourcePosition` bit fields: bit 0 says "external", bits 1..31 the script offset,
/// bits 31..47 the inlining id plus one (0: not inlined).
fn inlining_id(position: u64) -> Option<u64> {
    ((position >> 31) & 0xffff).checked_sub(1)
}

/// One unsigned VLQ number (7 bits a byte, low groups first) from `table` at `*at`.
fn vlq(table: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *table.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// A zigzag-encoded signed VLQ number.
fn signed_vlq(table: &[u8], at: &mut usize) -> Option<i64> {
    let v = vlq(table, at)?;
    Some((v >> 1) as i64 ^ -((v & 1) as i64))
}

/// The source position of the call at return offset `ret` in a source position table: the
/// last entry at or before the call instruction (`ret - 1`). Entries are pairs of deltas: the
/// code offset's (negative for non-statement positions, as `-delta - 1`) and the position's.
pub fn position_at(table: &[u8], ret: u64) -> Option<u64> {
    let (mut at, mut offset, mut position, mut found) = (0usize, 0i64, 0i64, None);
    let call = ret.checked_sub(1)? as i64;
    while at < table.len() {
        let delta = signed_vlq(table, &mut at)?;
        offset = offset.checked_add(if delta < 0 { -(delta + 1) } else { delta })?;
        position = position.checked_add(signed_vlq(table, &mut at)?)?;
        if offset > call {
            break;
        }
        found = Some(position as u64);
    }
    found
}

impl<M: Memory> Reader<M> {
    /// The functions a compiled frame of function `sfi` (tagged `SharedFunctionInfo`) ran at
    /// return address `pc`: its code found from the address, and the inlining chain of the
    /// call there. Optimized code must name `sfi` as its function: the code that ran may have
    /// been freed since, and other code put at the address.
    pub fn compiled(&mut self, pc: u64, sfi: u64) -> Result<Compiled, Bad> {
        self.compiled_at(pc, Some(sfi), false).map(|(_, compiled)| compiled)
    }

    /// The function of the optimized code that holds `pc` (tagged `SharedFunctionInfo`, as its
    /// deoptimization data names it) and the functions inlined there, for a JIT frame whose
    /// function the stack did not give: the innermost frame of a sample taken inside JIT code,
    /// whose `pc` is the instruction that ran (`at_ip`), not a return address. Baseline code
    /// names no function.
    pub fn code_function(&mut self, pc: u64, at_ip: bool) -> Result<(u64, Compiled), Bad> {
        self.compiled_at(pc, None, at_ip)
    }

    /// [`Reader::compiled`] and [`Reader::code_function`]: the code's own function (checked
    /// against `sfi` when given) and what it ran at `pc`.
    fn compiled_at(&mut self, pc: u64, sfi: Option<u64>, at_ip: bool) -> Result<(u64, Compiled), Bad> {
        let c = self.layout.code.clone().ok_or(Bad::Implausible("code layout for this V8"))?;
        let (code, start) = self.code_at(&c, pc)?;
        let mut flags = [0u8; 4];
        self.bytes(code.wrapping_add(c.code_flags), &mut flags)?;
        let kind = (u64::from(u32::from_le_bytes(flags)) & c.kind_mask) >> c.kind_shift;
        match (kind.checked_sub(c.baseline), sfi) {
            (Some(0), Some(sfi)) => return Ok((sfi, Compiled::Baseline)),
            (Some(0), None) => return Err(Bad::Implausible("baseline code names no function")),
            (Some(1 | 2), _) => {}
            _ => return Err(Bad::Implausible("kind of code for a JavaScript frame")),
        }
        let deopt = self.array(self.word(code.wrapping_add(c.code_deopt))?)?;
        let element = |i: u64| deopt.get(i as usize).copied().ok_or(Bad::Implausible("deoptimization data"));
        let mut own = element(c.deopt_function)?;
        if c.deopt_function_wrapped {
            own = self.word(self.type_of(own)?.0.wrapping_add(8))?;
        }
        if sfi.is_some_and(|sfi| own != sfi) {
            return Err(Bad::WrongType { addr: code, found: own, wanted: "code of the frame's function" });
        }
        let table = self.byte_array(self.word(code.wrapping_add(c.code_positions))?)?;
        if table.is_empty() {
            return Err(Bad::Implausible("empty source position table"));
        }
        // The instruction at `pc` is where a call ending there would return to plus one.
        let ret = pc - start + u64::from(at_ip);
        let position = position_at(&table, ret).ok_or(Bad::Implausible("source position table"))?;
        let Some(mut id) = inlining_id(position) else { return Ok((own, Compiled::Optimized(Vec::new()))) };
        let inlined = self.smi(element(c.deopt_inlined_count)?).ok_or(Bad::NotObject(0))?;
        let literals = self.array(element(c.deopt_literals)?)?;
        let positions = self.byte_array(element(c.deopt_inlining_positions)?)?;
        let mut functions = Vec::new();
        while functions.len() < MAX_INLINING_DEPTH {
            let at = (id * INLINING_POSITION_SIZE) as usize;
            let entry = positions.get(at..at + 12).ok_or(Bad::Implausible("inlining id"))?;
            let position = u64::from_le_bytes(entry[..8].try_into().unwrap_or_default());
            let function = i32::from_le_bytes(entry[8..12].try_into().unwrap_or_default());
            let sfi = match usize::try_from(function) {
                Ok(f) if (f as i64) < inlined => literals.get(f).copied(),
                _ => None,
            };
            // A weak reference (low bits 11) to the function is still the function.
            let sfi = sfi.ok_or(Bad::Implausible("inlined function index"))?;
            functions.push(if sfi & 3 == 3 { sfi & !2 } else { sfi });
            match inlining_id(position) {
                Some(next) => id = next,
                None => return Ok((own, Compiled::Optimized(functions))),
            }
        }
        Err(Bad::Implausible("inlining depth"))
    }

    /// The `Code` object (untagged) whose instructions hold `pc`, and where they start.
    fn code_at(&mut self, c: &CodeLayout, pc: u64) -> Result<(u64, u64), Bad> {
        let lowest = pc.saturating_sub(MAX_CODE).max(c.header_size);
        let mut start = pc.wrapping_sub(1) & !(CODE_ALIGN - 1);
        let mut page = Vec::new();
        while start >= lowest && start != 0 {
            // The headers of candidates below `start` within one page, read at once.
            let header = start - c.header_size;
            let base = header & !0xfff;
            page.resize((header + 8 - base) as usize, 0);
            self.bytes(base, &mut page)?;
            while start >= lowest && start - c.header_size >= base {
                let at = (start - c.header_size - base) as usize;
                let map = u64::from_le_bytes(page[at..at + 8].try_into().unwrap_or_default());
                if self.is_header_map(c, map) {
                    if let Ok(code) = self.code_of(c, start - c.header_size, start, pc) {
                        self.header_map = Some(map);
                        return Ok((code, start));
                    }
                }
                start = start.wrapping_sub(CODE_ALIGN);
            }
        }
        Err(Bad::Implausible("code object for a return address"))
    }

    /// Whether `map` is the map of the objects whose headers instructions follow (known once
    /// one was found).
    fn is_header_map(&self, c: &CodeLayout, map: u64) -> bool {
        let l = &self.layout;
        if let Some(known) = self.header_map {
            return map == known;
        }
        let mut raw = [0u8; 2];
        map & l.tag_mask == l.heap_tag
            && self.bytes(map.wrapping_sub(l.heap_tag).wrapping_add(l.instance_type), &mut raw).is_ok()
            && u64::from(u16::from_le_bytes(raw)) == c.header_type
    }

    /// The `Code` whose instructions follow the header at `header` if it says they start at
    /// `start` and reach `pc`: the `InstructionStream`'s `Code`, or the header's own object
    /// (before V8 11, where the start is the header's end by construction).
    fn code_of(&self, c: &CodeLayout, header: u64, start: u64, pc: u64) -> Result<u64, Bad> {
        let code = match c.istream_code {
            Some(back) => {
                let (code, ty) = self.type_of(self.word(header.wrapping_add(back))?)?;
                if ty != c.code_type || self.word(code.wrapping_add(c.code_start))? != start {
                    return Err(Bad::WrongType {
                        addr: code,
                        found: ty,
                        wanted: "Code of this instruction stream",
                    });
                }
                code
            }
            None => header,
        };
        let mut size = [0u8; 4];
        self.bytes(code.wrapping_add(c.code_size), &mut size)?;
        match pc - start <= u64::from(u32::from_le_bytes(size)) {
            true => Ok(code),
            false => Err(Bad::Implausible("code size")),
        }
    }

    /// The elements of a tagged fixed array (of any of V8's fixed-array types), bounded.
    fn array(&self, tagged: u64) -> Result<Vec<u64>, Bad> {
        let raw = self.array_bytes(self.type_of(tagged)?.0, 8, MAX_ARRAY, "array length")?;
        Ok(words(&raw).collect())
    }

    /// The bytes of a tagged byte array (`ByteArray` or `TrustedByteArray`), bounded.
    fn byte_array(&self, tagged: u64) -> Result<Vec<u8>, Bad> {
        self.array_bytes(self.type_of(tagged)?.0, 1, MAX_POSITION_TABLE, "byte array length")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v8::{
        reader::tests::{any_layout, garbage_word_for, node18_layout, Garbage, BASE},
        Layout,
    };
    use proptest::prelude::*;

    /// A position table as V8 writes one: (code offset, is statement, position) entries.
    fn table(entries: &[(i64, bool, i64)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |v: i64| {
            let mut z = ((v << 1) ^ (v >> 63)) as u64;
            loop {
                let byte = (z & 0x7f) as u8;
                z >>= 7;
                out.push(if z == 0 { byte } else { byte | 0x80 });
                if z == 0 {
                    break;
                }
            }
        };
        let (mut offset, mut position) = (0, 0);
        for &(o, statement, p) in entries {
            let delta = o - offset;
            put(if statement { delta } else { -delta - 1 });
            put(p - position);
            (offset, position) = (o, p);
        }
        out
    }

    fn inlined(script_offset: u64, id: Option<u64>) -> i64 {
        ((script_offset << 1) | (id.map_or(0, |i| i + 1) << 31)) as i64
    }

    #[test]
    fn the_position_of_a_call_is_the_last_entry_before_its_return_address() {
        let t = table(&[
            (1, false, inlined(77, None)),
            (48, true, inlined(26, Some(0))),
            (142, false, inlined(4779, Some(4))),
        ]);
        // A call instruction ending at 48 (return address 48) began before entry 48.
        assert_eq!(position_at(&t, 48).and_then(inlining_id), None);
        assert_eq!(position_at(&t, 49).and_then(inlining_id), Some(0));
        assert_eq!(position_at(&t, 500).and_then(inlining_id), Some(4));
        assert_eq!(position_at(&t, 1), None, "nothing before the first entry");
        assert_eq!(position_at(&t, 0), None);
    }

    /// Garbage (`words`, cycled over 8 KiB) with a code object planted in it for layout `l`: a
    /// header the search finds, a `Code` of optimized kind whose deoptimization data names
    /// function `SFI`; its position table, inlining data and literals are garbage. Returns the
    /// memory and the address the instructions start at.
    fn planted(l: &Layout, words: &[u64]) -> (Garbage, u64) {
        let c = l.code.as_ref().expect("a code layout");
        let mut bytes: Vec<u8> = words.iter().cycle().take(1024).flat_map(|w| w.to_le_bytes()).collect();
        let mut put = |addr: u64, value: &[u8]| {
            let at = (addr - BASE) as usize;
            bytes[at..at + value.len()].copy_from_slice(value);
        };
        let tagged = |addr: u64| (addr + l.heap_tag).to_le_bytes();
        let (header_map, code_map, header) = (BASE, BASE + 0x40, BASE + 0x400);
        put(header_map + l.instance_type, &(c.header_type as u16).to_le_bytes());
        put(code_map + l.instance_type, &(c.code_type as u16).to_le_bytes());
        put(header, &tagged(header_map));
        let start = header + c.header_size;
        let code = match c.istream_code {
            Some(back) => {
                let code = BASE + 0x100;
                put(header + back, &tagged(code));
                put(code, &tagged(code_map));
                put(code + c.code_start, &start.to_le_bytes());
                code
            }
            None => header,
        };
        put(code + c.code_size, &0x400u32.to_le_bytes());
        let flags = ((c.baseline + 2) << c.kind_shift) & c.kind_mask;
        put(code + c.code_flags, &(flags as u32).to_le_bytes());
        let (deopt, sfi) = (BASE + 0x1000, BASE + 0x1100);
        put(code + c.code_deopt, &tagged(deopt));
        put(deopt + 8, &(16u64 << 32).to_le_bytes());
        put(deopt + 16 + 8 * c.deopt_function, &tagged(sfi));
        // The function object, and the wrapper that names it from V8 13 on.
        put(sfi, &tagged(header_map));
        put(sfi + 8, &tagged(sfi));
        (Garbage(bytes, BASE), start)
    }

    /// The planted function.
    const SFI: u64 = BASE + 0x1100 + 1;

    fn garbage_behind_found_code(l: Option<Layout>, words: &[u64], pc: u64) {
        let Some(l) = l else { return };
        let (memory, start) = planted(&l, words);
        let mut reader = Reader::new(l, memory);
        let _ = reader.compiled(start + pc, SFI);
    }

    #[test]
    fn a_planted_code_object_is_found_on_both_layouts() {
        for l in [node18_layout(), any_layout()].into_iter().flatten() {
            let (memory, start) = planted(&l, &[0]);
            let mut reader = Reader::new(l, memory);
            // Found, then stopped by the deoptimization data's map (zero).
            assert_eq!(reader.compiled(start + 0x20, SFI), Err(Bad::NotObject(0)));
            assert!(reader.compiled(start + 0x20, SFI + 8).is_err());
        }
    }

    /// A JIT frame whose function the stack did not give is named by its optimized code's own
    /// function; baseline code names none, and other code at the address names nothing.
    #[test]
    fn optimized_code_found_from_an_address_alone_names_its_function() {
        for l in [node18_layout(), any_layout()].into_iter().flatten() {
            let c = l.code.clone().expect("a code layout");
            let (mut memory, start) = planted(&l, &[0]);
            // A position table with one entry (offset 0, no inlining), in a byte array.
            let positions = table(&[(0, true, inlined(10, None))]);
            let array = BASE + 0x1200;
            let mut put = |addr: u64, value: &[u8]| {
                let at = (addr - BASE) as usize;
                memory.0[at..at + value.len()].copy_from_slice(value);
            };
            put(array, &(BASE + l.heap_tag).to_le_bytes());
            put(array + l.array_length, &((positions.len() as u64) << l.smi_shift).to_le_bytes());
            put(array + l.array_data, &positions);
            let code = match c.istream_code {
                Some(_) => BASE + 0x100,
                None => start - c.header_size,
            };
            put(code + c.code_positions, &(array + l.heap_tag).to_le_bytes());
            // The deoptimization data's map (`planted` leaves it zero).
            put(BASE + 0x1000, &(BASE + l.heap_tag).to_le_bytes());
            let mut reader = Reader::new(l.clone(), memory.clone());
            assert_eq!(reader.code_function(start + 0x20, true), Ok((SFI, Compiled::Optimized(Vec::new()))));
            assert_eq!(reader.compiled(start + 0x20, SFI), Ok(Compiled::Optimized(Vec::new())));
            assert!(reader.compiled(start + 0x20, SFI + 8).is_err(), "another function's code");
            let mut baseline = memory;
            let flags = ((c.baseline << c.kind_shift) & c.kind_mask) as u32;
            let at = (code + c.code_flags - BASE) as usize;
            baseline.0[at..at + 4].copy_from_slice(&flags.to_le_bytes());
            let mut reader = Reader::new(l, baseline);
            assert_eq!(reader.compiled(start + 0x20, SFI), Ok(Compiled::Baseline));
            assert!(reader.code_function(start + 0x20, true).is_err(), "baseline code names no function");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Past the search, garbage in a found code object's data gives an error or frames,
        /// never a panic or a hang (node 18's layout, then the newest cached one).
        #[test]
        fn garbage_in_node18_code_never_panics(words in proptest::collection::vec(garbage_word_for(node18_layout()), 1..256),
                                               pc in 1u64..0x400) {
            garbage_behind_found_code(node18_layout(), &words, pc);
        }

        #[test]
        fn garbage_in_newer_code_never_panics(words in proptest::collection::vec(garbage_word_for(any_layout()), 1..256),
                                              pc in 1u64..0x400) {
            garbage_behind_found_code(any_layout(), &words, pc);
        }

        #[test]
        fn garbage_position_tables_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256),
                                               ret in any::<u64>()) {
            let _ = position_at(&bytes, ret).map(inlining_id);
        }
    }
}
