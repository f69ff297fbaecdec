//! Naming the holders a retainer search finds, as DevTools names them: an object by its type
//! (`Array (N elements)`, `Map (N entries)`, a constructor or shape, a closure's function), a
//! context by its scope (`module scope of app.js`), and what a holder holds an object as (a
//! variable, a property, a dictionary key). The part of [`Search`] that reads names.

use super::{
    chain::{thousands, Link, LinkKind},
    retainers::Search,
    walk::{short_file, string_label, MapInfo, Walker, MAX_DESCRIPTORS},
};

use crate::v8::memory::Memory;

/// V8 keeps a scope's variable names inline up to this many (in a hash table beyond).
const MAX_INLINE_LOCALS: i64 = 75;

/// Longest name kept for a property or variable.
pub(super) const MAX_NAME: usize = 80;

/// A value read from the heap: a number (a Smi or a HeapNumber), an oddball (null, undefined,
/// a boolean) or something else.
enum Value {
    Number(f64),
    Oddball,
    Other,
}

/// The fields a map describes: where its in-object fields start (in words), how many there are
/// (the rest are in the property array), and each field's key (tagged) and index.
struct Fields {
    start: u64,
    inobject: u64,
    keys: Vec<(u64, u64)>,
}

impl<M: Memory> Search<'_, M> {
    /// The links of a path, backing stores folded into the object they belong to.
    pub(super) fn links(&mut self, path: &[(usize, u64)]) -> Vec<Link> {
        let mut links = Vec::new();
        let mut i = 0;
        while i < path.len() {
            let (h, off) = path[i];
            let Some(info) = self.nodes[h].info else { break };
            let obj = self.nodes[h].addr.wrapping_sub(self.w.reader.layout.heap_tag);
            let strings = &self.w.reader.layout.strings;
            if info.ty < strings.first_nonstring {
                // A string holds only strings (a concatenation its parts, a slice the string it
                // is cut from): what holds the outermost one holds the text the sample is part
                // of. A slice is said, as it keeps all of a string that may be much longer.
                let label = string_label(strings, info.ty);
                let slice = info.ty & strings.representation_mask == strings.sliced;
                if slice && links.last().is_none_or(|l: &Link| l.holder != label) {
                    links.push(Link { kind: LinkKind::Internal, name: None, holder: label.into() });
                }
                i += 1;
                continue;
            }
            if self.is_context(info) {
                let holder = self.scope(h);
                // An inner scope keeps its enclosing one; a scope's variable names what it holds.
                let link = match off == 16 + 8 * self.w.hl.refs.context_previous {
                    true => Link { kind: LinkKind::Scope, name: None, holder },
                    false => Link { kind: LinkKind::Variable, name: self.variable(obj, off), holder },
                };
                links.push(link);
                // A top scope ends the chain; a function's scope is a waypoint.
                if self.nodes[h].top_scope {
                    break;
                }
                i += 1;
                continue;
            }
            if self.is_function(info) && off == self.w.hl.refs.function_context {
                let holder = self.describe(h);
                links.push(Link { kind: LinkKind::Scope, name: None, holder });
                i += 1;
                continue;
            }
            if info.ty >= self.w.hl.first_js_type {
                let (kind, name) = match self.property(obj, off, false) {
                    Some(name) => (LinkKind::Property, Some(name)),
                    None => (LinkKind::Internal, None),
                };
                let holder = self.describe(h);
                let holder = match self.timer(info) {
                    true => self.timer_holder(obj, &holder),
                    false => holder,
                };
                links.push(Link { kind, name, holder });
                i += 1;
                continue;
            }
            // A backing store: the object above says what it is.
            let above = path.get(i + 1).and_then(|&(h2, off2)| Some((h2, off2, self.nodes[h2].info?)));
            let r = self.w.hl.refs.clone();
            match above {
                Some((h2, off2, info2)) if info2.ty >= self.w.hl.first_js_type => {
                    let obj2 = self.nodes[h2].addr.wrapping_sub(self.w.reader.layout.heap_tag);
                    let (kind, name) = if off2 == 8 {
                        let name = match info.ty == r.property_array_type {
                            true => self.property(obj2, off, true),
                            false => self.dictionary_key(obj, off),
                        };
                        (if name.is_some() { LinkKind::Property } else { LinkKind::Internal }, name)
                    } else if off2 == 16 {
                        (LinkKind::Element, None)
                    } else if off2 == 24 && (info2.ty == r.js_map_type || info2.ty == r.js_set_type) {
                        (LinkKind::Entry, None)
                    } else {
                        (LinkKind::Internal, None)
                    };
                    let holder = self.describe(h2);
                    links.push(Link { kind, name, holder });
                    i += 2;
                }
                _ => {
                    let mut holder = self.describe(h);
                    if self.promise_reaction(info) {
                        holder += " (awaiting a pending Promise)";
                    }
                    links.push(Link { kind: LinkKind::Internal, name: None, holder });
                    i += 1;
                }
            }
        }
        for k in 1..links.len() {
            // An EventEmitter keeps its listeners by event name in `_events`.
            if links[k].kind == LinkKind::Property && links[k].name.as_deref() == Some("_events") {
                links[k - 1].holder = "listeners by event name".into();
            }
            // A Writable queues the writes its sink has not taken yet in an array of its state.
            if links[k].holder == "WritableState" && links[k - 1].kind == LinkKind::Element {
                links[k - 1].holder += ": a stream's buffered writes";
            }
        }
        links
    }

    /// An object as DevTools names it: `Array (N elements)`, `Map (N entries)`, its
    /// constructor or shape, a closure's function, or V8's type.
    pub(super) fn describe(&mut self, n: usize) -> String {
        let Some(info) = self.nodes[n].info else { return "(unknown)".into() };
        let l = self.w.reader.layout.clone();
        let obj = self.nodes[n].addr.wrapping_sub(l.heap_tag);
        let smi_at = |w: &Walker<M>, addr: u64| w.reader.word(addr).ok().and_then(|v| w.reader.smi(v));
        let r = &self.w.hl.refs;
        let label = |w: &Walker<M>, info: MapInfo| info.label.map(|k| w.labels[k].2.clone());
        if info.ty == self.w.hl.js_array_type {
            let len = smi_at(&self.w, obj + 24).filter(|n| *n >= 0);
            let name = label(&self.w, info).unwrap_or_else(|| "Array".into());
            return match len {
                Some(len) => format!("{name}, {} elements", thousands(len as u64)),
                None => name,
            };
        }
        if info.ty == r.js_map_type || info.ty == r.js_set_type {
            let what = if info.ty == r.js_map_type { "Map" } else { "Set" };
            let entries = self
                .w
                .reader
                .word(obj + 24)
                .ok()
                .and_then(|t| smi_at(&self.w, t.wrapping_sub(l.heap_tag).wrapping_add(l.array_data)))
                .filter(|n| *n >= 0);
            return match entries {
                Some(n) => format!("{what}, {} entries", thousands(n as u64)),
                None => what.into(),
            };
        }
        if self.is_function(info) {
            let sfi = self.w.reader.word(obj + l.function_shared).unwrap_or(0);
            let k = self.w.closure_label(sfi);
            return format!("closure {}", self.w.labels[k].2);
        }
        label(&self.w, info).unwrap_or_else(|| "(object)".into())
    }

    /// The name of the variable in context slot at byte offset `off` of the context at `obj`.
    pub(super) fn variable(&self, obj: u64, off: u64) -> Option<String> {
        let r = &self.w.reader;
        let l = &r.layout;
        if off < 16 || !off.is_multiple_of(8) {
            return None;
        }
        let slot = (off - 16) / 8;
        let length = r.smi(r.word(obj + 8).ok()?)?;
        let (data, locals) = self.scope_locals(obj)?;
        if !(1..=MAX_INLINE_LOCALS).contains(&locals) {
            return None;
        }
        let index = slot as i64 - (length - locals);
        if !(0..locals).contains(&index) {
            return None;
        }
        let name = r.word(data + 8 * (l.scope_first_vars + index as u64)).ok()?;
        let (_, ty) = r.type_of(name).ok()?;
        (ty < l.strings.first_nonstring).then(|| r.string(name).ok()).flatten().map(|s| clip(&s))
    }

    /// The data of the `ScopeInfo` of the context at `obj`, and its count of context locals.
    fn scope_locals(&self, obj: u64) -> Option<(u64, i64)> {
        let r = &self.w.reader;
        let scope = r.word(obj + 16 + 8 * self.w.hl.refs.context_scope_info).ok()?;
        let (scope, ty) = r.type_of(scope).ok()?;
        if ty != r.layout.scope_info_type {
            return None;
        }
        let data = scope.wrapping_add(8);
        Some((data, r.smi(r.word(data + 8 * r.layout.scope_context_locals).ok()?)?))
    }

    /// The scope of the context node `n`: `module scope of FILE` for a script's top level,
    /// `scope of NAME (FILE)` for a function's.
    pub(super) fn scope(&mut self, n: usize) -> String {
        let l = self.w.reader.layout.clone();
        let obj = self.nodes[n].addr.wrapping_sub(l.heap_tag);
        let owner = self
            .w
            .reader
            .word(obj + 16 + 8 * self.w.hl.refs.context_scope_info)
            .ok()
            .and_then(|s| self.w.reader.type_of(s).ok())
            .filter(|(_, ty)| *ty == l.scope_info_type)
            .and_then(|(s, _)| self.w.reader.scope_info(s).ok())
            .and_then(|(name, _)| name)
            .filter(|n| !n.is_empty())
            // Past the inline names, the function's name is not where it is read from.
            .filter(|_| self.scope_locals(obj).is_some_and(|(_, n)| n <= MAX_INLINE_LOCALS));
        // The file, from a closure of this scope.
        let file = self.nodes[n].holders.clone().into_iter().find_map(|(h, _)| {
            let f = self.nodes[h].addr.wrapping_sub(l.heap_tag);
            let sfi = self.w.reader.word(f + l.function_shared).ok()?;
            self.w.reader.function(sfi).ok()?.file
        });
        let file = file.as_deref().map(short_file);
        match (owner, file) {
            (None, Some(file)) => format!("module scope of {file}"),
            (None, None) => "a scope".into(),
            (Some(name), Some(file)) => format!("scope of {name} ({file})"),
            (Some(name), None) => format!("scope of {name}"),
        }
    }

    /// The name of the property whose value is at byte offset `off` of the object at `obj` (an
    /// address): an in-object field, or with `out_of_object`, a slot of its property array.
    pub(super) fn property(&self, obj: u64, off: u64, out_of_object: bool) -> Option<String> {
        let fields = self.fields(obj)?;
        if !off.is_multiple_of(8) {
            return None;
        }
        let field = match out_of_object {
            true => fields.inobject + off.checked_sub(16)? / 8,
            false => (off / 8).checked_sub(fields.start).filter(|f| *f < fields.inobject)?,
        };
        let key = fields.keys.iter().find(|(_, index)| *index == field)?.0;
        self.name(key)
    }

    /// The value (a tagged word) of the property `name` of the object at `obj` (an address),
    /// where its map keeps it in a field: in the object, or in its property array.
    pub(super) fn property_value(&self, obj: u64, name: &str) -> Option<u64> {
        let fields = self.fields(obj)?;
        let r = &self.w.reader;
        let &(_, index) = fields.keys.iter().find(|(key, _)| self.name(*key).as_deref() == Some(name))?;
        let at = match index < fields.inobject {
            true => obj.checked_add(8 * (fields.start + index))?,
            false => {
                let properties = r.word(obj + 8).ok()?.wrapping_sub(r.layout.heap_tag);
                properties.checked_add(16 + 8 * (index - fields.inobject))?
            }
        };
        r.word(at).ok()
    }

    /// A timer as the program set it, from its `_idleTimeout` and `_repeat`:
    /// `Timeout (setInterval, every 1,000 ms, in a timer list)`, `Timeout (setTimeout, 30,000
    /// ms, in a timer list)`, or only `(in a timer list)` where they do not read as node sets them.
    pub(super) fn timer_holder(&self, obj: u64, holder: &str) -> String {
        let value = |name: &str| self.property_value(obj, name).map(|v| self.value(v));
        let ms = |v: f64| match v.fract() == 0.0 {
            true => thousands(v as u64),
            false => format!("{v:.1}"),
        };
        let how = match (value("_idleTimeout"), value("_repeat")) {
            (_, Some(Value::Number(every))) if every >= 0.0 => {
                format!("setInterval, every {} ms, ", ms(every))
            }
            (Some(Value::Number(after)), Some(Value::Oddball)) if after >= 0.0 => {
                format!("setTimeout, {} ms, ", ms(after))
            }
            _ => String::new(),
        };
        format!("{holder} ({how}in a timer list)")
    }

    /// What the tagged word `v` is, as far as a timer's fields go.
    fn value(&self, v: u64) -> Value {
        let r = &self.w.reader;
        if let Some(n) = r.smi(v) {
            return Value::Number(n as f64);
        }
        let Ok((obj, ty)) = r.type_of(v) else { return Value::Other };
        if Some(ty) == self.w.hl.oddball_type {
            return Value::Oddball;
        }
        match (Some(ty) == self.w.hl.heap_number_type).then(|| r.word(obj + 8).ok()).flatten() {
            Some(bits) => Value::Number(f64::from_bits(bits)),
            None => Value::Other,
        }
    }

    /// The fields the map of the object at `obj` (an address) describes, unless it is a
    /// dictionary-mode map.
    fn fields(&self, obj: u64) -> Option<Fields> {
        let r = &self.w.reader;
        let hl = self.w.hl;
        let refs = &hl.refs;
        let map = r.word(obj).ok()?.wrapping_sub(r.layout.heap_tag);
        let mut b = [0u8; 1];
        // A map word read from a moving heap may be anything: no arithmetic on it may overflow.
        r.bytes(map.checked_add(hl.instance_size_words)?, &mut b).ok()?;
        let size_words = b[0] as u64;
        r.bytes(map.checked_add(refs.inobject_start)?, &mut b).ok()?;
        let start = b[0] as u64;
        let inobject = size_words.checked_sub(start)?;
        let mut raw = [0u8; 4];
        r.bytes(map.wrapping_add(hl.bit_field3), &mut raw).ok()?;
        let bits = u32::from_le_bytes(raw) as u64;
        if bits & refs.dictionary_map != 0 {
            return None;
        }
        let own = (bits & hl.own_descriptors_mask) >> hl.own_descriptors_shift;
        let (descriptors, ty) = r.type_of(r.word(map.wrapping_add(hl.instance_descriptors)).ok()?).ok()?;
        if !hl.descriptor_types.contains(&ty) {
            return None;
        }
        let mut keys = Vec::new();
        for i in 0..own.min(MAX_DESCRIPTORS) {
            let entry = descriptors + hl.descriptor_header + i * hl.descriptor_entry;
            let Some(details) = r.word(entry + refs.descriptor_details).ok().and_then(|d| r.smi(d)) else {
                continue;
            };
            let details = details as u64;
            let location = (details & refs.location.0) >> refs.location.1;
            if location == refs.location_field {
                let Ok(key) = r.word(entry + hl.descriptor_key) else { continue };
                keys.push((key, (details & refs.field_index.0) >> refs.field_index.1));
            }
        }
        Some(Fields { start, inobject, keys })
    }

    /// The key of the `NameDictionary` at `obj` whose value is at byte offset `off`.
    pub(super) fn dictionary_key(&self, obj: u64, off: u64) -> Option<String> {
        let l = &self.w.reader.layout;
        let (first, size) = self.w.hl.refs.name_dictionary;
        let index = off.checked_sub(l.array_data)? / 8;
        if !off.is_multiple_of(8) || size < 2 || index < first || (index - first) % size != 1 {
            return None;
        }
        self.name(self.w.reader.word(obj + l.array_data + 8 * (index - 1)).ok()?)
    }

    /// A property key: a string's text, `Symbol(description)` for a symbol.
    pub(super) fn name(&self, key: u64) -> Option<String> {
        let r = &self.w.reader;
        let (obj, ty) = r.type_of(key).ok()?;
        if ty < r.layout.strings.first_nonstring {
            return r.string(key).ok().map(|s| clip(&s));
        }
        let refs = &self.w.hl.refs;
        let description = (ty == refs.symbol.0)
            .then(|| r.word(obj + refs.symbol.1).ok())
            .flatten()
            .and_then(|d| r.type_of(d).ok().filter(|(_, t)| *t < r.layout.strings.first_nonstring).map(|_| d))
            .and_then(|d| r.string(d).ok());
        Some(format!("Symbol({})", clip(&description.unwrap_or_default())))
    }
}

/// A name cut to [`MAX_NAME`] characters.
pub(super) fn clip(s: &str) -> String {
    s.chars().take(MAX_NAME).collect()
}
