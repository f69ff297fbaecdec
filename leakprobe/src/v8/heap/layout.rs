//! The offsets and instance types the heap census needs beyond [`crate::v8::Layout`], from the
//! binary's metadata; and the holders a retainer search does not follow ([`UNSEEN_HOLDERS`]).

use std::collections::HashMap;

use super::super::metadata::{Metadata, MetadataError};

/// V8's code, feedback, function metadata and weak bookkeeping: a reference from one of these
/// is optimized code's embedded constant, an inline cache's feedback, a scope's or a
/// function's description or a weak list's entry, not what keeps an object for the program
/// (DevTools hides these retainers too). A retainer search does not
/// follow them: an object referred to by a dozen such would crowd out the variable that keeps it.
pub const UNSEEN_HOLDERS: &[&str] = &[
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
    "ScopeInfo",
    "Script",
    "SharedFunctionInfo",
    "TransitionArray",
    "TrustedByteArray",
    "TrustedFixedArray",
    "TrustedForeign",
    "TrustedWeakFixedArray",
    "WeakArrayList",
    "WeakCell",
    "WeakFixedArray",
];

/// Types whose size this reader does not compute and whose second word is no length (a
/// `ScopeInfo`'s flags, a `FeedbackVector`'s two 32-bit counts): the shapes a walk tries for
/// other unknown types would take that word for one, and could swallow the objects after it
/// (a module's scope was lost so). They end where the next run of objects starts.
pub const UNSIZED: &[&str] = &["ScopeInfo", "FeedbackVector"];

/// The offsets and types the census needs beyond [`crate::v8::Layout`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapLayout {
    pub(super) map_type: u64,
    pub(super) instance_size_words: u64,
    pub(super) bit_field3: u64,
    pub(super) own_descriptors_mask: u64,
    pub(super) own_descriptors_shift: u32,
    pub(super) constructor_or_back_pointer: u64,
    pub(super) instance_descriptors: u64,
    pub(super) descriptor_header: u64,
    pub(super) descriptor_entry: u64,
    pub(super) descriptor_key: u64,
    pub(super) descriptor_types: [u64; 2],
    pub(super) array_buffer_type: u64,
    pub(super) array_buffer_byte_length: u64,
    pub(super) js_array_type: u64,
    /// The instance types V8 leaves to its embedder for objects made from API templates (node's
    /// handles: zlib streams, ciphers, sockets, ...): after `JS_OBJECT_TYPE`, up to the next
    /// type V8 itself uses (`0x422..=0x80A` in V8 10 to 13, as `v8-internal.h` says).
    pub(super) handle_types: std::ops::RangeInclusive<u64>,
    pub(super) first_js_type: u64,
    pub(super) first_context_type: u64,
    pub(super) last_context_type: u64,
    pub(super) fixed_double_array_type: u64,
    pub(super) byte_array_type: u64,
    pub(super) weak_array_list_type: Option<u64>,
    pub(super) bytecode: Option<(u64, u64)>,
    /// `FreeSpace`'s type where the metadata names it: the walk reads its size field.
    pub(super) free_space_type: Option<u64>,
    /// The heap's gaps: `FreeSpace` and the fillers, named or told by [`gap_types`]. Their
    /// words are what the gap held before: stale pointers, never a reference.
    pub(super) gap_types: Vec<u64>,
    /// Class names of the instance types the metadata lists.
    pub(super) type_names: HashMap<u64, String>,
    /// Instance types of [`UNSEEN_HOLDERS`].
    pub(super) unseen_holders: Vec<u64>,
    /// Instance types of [`UNSIZED`].
    pub(super) unsized_types: Vec<u64>,
    /// `HeapNumber`'s and `Oddball`'s (null, undefined, booleans) types, where named.
    pub(super) heap_number_type: Option<u64>,
    pub(super) oddball_type: Option<u64>,
    /// `PromiseReaction`'s type where the metadata names it: a reaction a pending Promise keeps
    /// (in a linked list, not followed by the retainer search).
    pub(super) promise_reaction_type: Option<u64>,
    /// What [`crate::v8::heap::retainers`] needs to name a reference.
    pub(super) refs: RefLayout,
}

/// The layouts that name a reference: object properties, dictionaries, contexts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RefLayout {
    pub(super) js_map_type: u64,
    pub(super) js_set_type: u64,
    pub(super) property_array_type: u64,
    /// `Map::inobject_properties_start_or_constructor_function_index` (a byte, in words).
    pub(super) inobject_start: u64,
    /// `PropertyDetails` in a descriptor entry (bytes from the entry's start).
    pub(super) descriptor_details: u64,
    pub(super) field_index: (u64, u32),
    pub(super) location: (u64, u32),
    pub(super) location_field: u64,
    /// `bit_field3` bit of dictionary-mode maps.
    pub(super) dictionary_map: u64,
    /// A `NameDictionary`'s first entry (slots after the array header) and entry size.
    pub(super) name_dictionary: (u64, u64),
    /// `JSFunction::context`.
    pub(super) function_context: u64,
    /// The context slot of its `ScopeInfo`.
    pub(super) context_scope_info: u64,
    /// A context's header slots (its `ScopeInfo`, the enclosing context): what a context holds
    /// there is V8's bookkeeping, never a variable.
    pub(super) context_header_slots: u64,
    /// The context slot of the enclosing context (`previous`).
    pub(super) context_previous: u64,
    /// `Symbol`'s type and its description field.
    pub(super) symbol: (u64, u64),
}

impl RefLayout {
    pub(super) fn new(m: &Metadata) -> Result<Self, MetadataError> {
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
            context_header_slots: u(m.get("context_min_slots")?),
            context_previous: u(m.get("context_idx_prev")?),
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
        let gaps = gap_types(m);
        for (ty, name) in &gaps {
            type_names.entry(*ty).or_insert_with(|| name.to_string());
        }
        let gap_types = gaps.into_iter().map(|(ty, _)| ty).collect();
        let entry = m.get("prop_desc_size")?;
        let unseen_holders = type_names
            .iter()
            .filter(|(_, name)| UNSEEN_HOLDERS.contains(&name.as_str()))
            .map(|(ty, _)| *ty)
            .collect();
        let unsized_types = type_names
            .iter()
            .filter(|(_, name)| UNSIZED.contains(&name.as_str()))
            .map(|(ty, _)| *ty)
            .collect();
        let named =
            |wanted: &str| type_names.iter().find(|(_, name)| name.as_str() == wanted).map(|(ty, _)| *ty);
        let (heap_number_type, oddball_type) = (named("HeapNumber"), named("Oddball"));
        let promise_reaction_type =
            type_names.iter().find(|(_, name)| name.as_str() == "PromiseReaction").map(|(ty, _)| *ty);
        let js_object_type = u(m.get("type_JSObject__JS_OBJECT_TYPE")?);
        let next_type = type_names.keys().filter(|&&t| t > js_object_type).min().copied();
        let handle_types = match next_type {
            Some(next) => js_object_type + 1..=next - 1,
            None => return Err(MetadataError::Missing("a type after JS_OBJECT_TYPE")),
        };
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
            handle_types,
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
            gap_types,
            type_names,
            unseen_holders,
            unsized_types,
            heap_number_type,
            oddball_type,
            promise_reaction_type,
            refs: RefLayout::new(m)?,
        })
    }
}

/// The types of the heap's gaps, with their class names: `FreeSpace` and the one- and
/// two-word fillers. V8 numbers `FeedbackVector`, `Filler`, `FreeSpace` and `Hole` in a row
/// (node 18 to 24), and node 24's metadata names neither gap type, so they are told from their
/// neighbours: `FreeSpace` is `FeedbackVector` + 2 where the metadata names it so, or where
/// `Hole` is `FeedbackVector` + 3. Where the numbering says neither, only a named `FreeSpace`.
pub(super) fn gap_types(m: &Metadata) -> Vec<(u64, &'static str)> {
    let named = |name: &'static str| m.get(name).ok().map(|v| v as u64);
    let free_space = named("type_FreeSpace__FREE_SPACE_TYPE");
    let hole = named("type_Hole__HOLE_TYPE");
    let Some(feedback) = named("type_FeedbackVector__FEEDBACK_VECTOR_TYPE") else {
        return free_space.map(|free| (free, "FreeSpace")).into_iter().collect();
    };
    match free_space {
        Some(free) if free == feedback + 2 => vec![(feedback + 1, "Filler"), (free, "FreeSpace")],
        Some(free) => vec![(free, "FreeSpace")],
        None if hole == Some(feedback + 3) => vec![(feedback + 1, "Filler"), (feedback + 2, "FreeSpace")],
        None => Vec::new(),
    }
}
