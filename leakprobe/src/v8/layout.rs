//! The object layouts the reader needs, from one binary's metadata ([`Layout`]), and the part
//! of it the kernel's stack walk needs ([`Layout::kernel`]).

use leakprobe_ebpf::stack::JsLayout;

use super::metadata::{Metadata, MetadataError};

/// Where `ScopeInfo` keeps a function's source positions: the metadata does not say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeInfoPositions {
    /// V8 ≥ 12.8 (node ≥ 23): fixed slots 3 and 4 after the map.
    Fixed,
    /// Older V8: after the function name among the variable-length slots, found by shape.
    AfterName,
}

impl ScopeInfoPositions {
    /// For a node major version (V8 12.8 arrived in node 23).
    pub fn for_node(major: Option<u32>) -> Self {
        match major {
            Some(m) if m >= 23 => Self::Fixed,
            _ => Self::AfterName,
        }
    }
}

/// The object layouts the reader needs, from one binary's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub(super) heap_tag: u64,
    pub(super) tag_mask: u64,
    pub(super) smi_shift: u32,
    pub(super) map: u64,
    pub(super) instance_type: u64,
    pub(super) fp_function: i64,
    pub(super) fp_context_or_type: i64,
    pub(super) function_shared: u64,
    pub(super) first_function_type: u64,
    pub(super) last_function_type: u64,
    pub(super) sfi_type: u64,
    pub(super) script_type: u64,
    pub(super) scope_info_type: u64,
    pub(super) fixed_array_type: u64,
    pub(super) sfi_name_or_scope_info: u64,
    pub(super) sfi_script: u64,
    pub(super) script_name: u64,
    pub(super) script_source: u64,
    pub(super) script_line_ends: u64,
    pub(super) array_length: u64,
    pub(super) array_data: u64,
    pub(super) scope_first_vars: u64,
    pub(super) scope_context_locals: u64,
    pub(super) positions: ScopeInfoPositions,
    pub(super) strings: StringLayout,
    /// Code objects, to expand inlined frames; `None` where this reader does not know them.
    pub(super) code: Option<CodeLayout>,
}

/// How strings are laid out and told apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct StringLayout {
    pub(super) first_nonstring: u64,
    pub(super) representation_mask: u64,
    pub(super) encoding_mask: u64,
    pub(super) seq: u64,
    pub(super) cons: u64,
    pub(super) sliced: u64,
    pub(super) thin: u64,
    pub(super) external: u64,
    /// The instance-type bit of external strings that do not cache their data pointer.
    pub(super) uncached_external: u64,
    /// `ExternalString::resource`; the cached data pointer follows it.
    pub(super) external_resource: u64,
    pub(super) one_byte: u64,
    pub(super) length: u64,
    pub(super) one_byte_chars: u64,
    pub(super) two_byte_chars: u64,
    pub(super) cons_first: u64,
    pub(super) cons_second: u64,
    pub(super) sliced_parent: u64,
    pub(super) sliced_offset: u64,
    pub(super) thin_actual: u64,
}

/// JSFunction's instance types after JS_FUNCTION_TYPE before V8 12 (node 18 and 20), whose
/// metadata has no `LastJSFunctionType`: JS_CLASS_CONSTRUCTOR, JS_PROMISE_CONSTRUCTOR,
/// JS_REG_EXP_CONSTRUCTOR, JS_ARRAY_CONSTRUCTOR and the 11 typed-array constructors (node 22's
/// and 24's metadata give 16: V8 12 added Float16Array's).
const PRE_V8_12_FUNCTION_SUBTYPES: i64 = 15;

impl Layout {
    /// The layout described by `m`, for a binary of node major version `node_major`.
    pub fn new(m: &Metadata, node_major: Option<u32>) -> Result<Self, MetadataError> {
        if m.get("TaggedSize").unwrap_or(8) != 8 {
            return Err(MetadataError::Unsupported("pointer compression"));
        }
        let u = |v: i64| v as u64;
        if m.get("off_fp_context_or_frame_type")? != m.get("off_fp_function")? + 8 {
            return Err(MetadataError::Unsupported("frame slots: the context does not follow the function"));
        }
        Ok(Self {
            heap_tag: u(m.get("HeapObjectTag")?),
            tag_mask: u(m.get("HeapObjectTagMask")?),
            smi_shift: m.get("SmiShiftSize")?.saturating_add(1).clamp(1, 63) as u32,
            map: u(m.field("class_HeapObject__map__")?),
            instance_type: u(m.field("class_Map__instance_type__")?),
            fp_function: m.get("off_fp_function")?,
            fp_context_or_type: m.get("off_fp_context_or_frame_type")?,
            function_shared: u(m.field("class_JSFunction__shared__")?),
            // Before V8 12 the range is not in the metadata: JSFunction's instance types are
            // JS_FUNCTION_TYPE and the 15 after it (the class, Promise, RegExp and Array
            // constructors and the 11 typed arrays'). Arrays, Maps, Sets, Dates, Errors follow:
            // they are no functions.
            first_function_type: u(m.any(&["FirstJSFunctionType", "type_JSFunction__JS_FUNCTION_TYPE"])?),
            last_function_type: match m.get("LastJSFunctionType") {
                Ok(last) => u(last),
                Err(_) => u(m.get("type_JSFunction__JS_FUNCTION_TYPE")? + PRE_V8_12_FUNCTION_SUBTYPES),
            },
            sfi_type: u(m.get("type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE")?),
            script_type: u(m.get("type_Script__SCRIPT_TYPE")?),
            scope_info_type: u(m.get("type_ScopeInfo__SCOPE_INFO_TYPE")?),
            fixed_array_type: u(m.get("type_FixedArray__FIXED_ARRAY_TYPE")?),
            sfi_name_or_scope_info: u(m.field("class_SharedFunctionInfo__name_or_scope_info__")?),
            sfi_script: u(m
                .any(&[
                    "class_SharedFunctionInfo__script__Tagged_HeapObject_",
                    "class_SharedFunctionInfo__script_or_debug_info__HeapObject",
                ])
                .or_else(|_| m.field("class_SharedFunctionInfo__script"))?),
            script_name: u(m.field("class_Script__name__")?),
            script_source: u(m.field("class_Script__source__")?),
            script_line_ends: u(m.field("class_Script__line_ends__")?),
            array_length: u(m.field("class_FixedArrayBase__length__")?),
            array_data: u(m.field("class_FixedArray__data__")?),
            scope_first_vars: u(m.get("scopeinfo_idx_first_vars")?),
            scope_context_locals: u(m.get("scopeinfo_idx_ncontextlocals")?),
            positions: ScopeInfoPositions::for_node(node_major),
            strings: StringLayout {
                first_nonstring: u(m.get("FirstNonstringType")?),
                representation_mask: u(m.get("StringRepresentationMask")?),
                encoding_mask: u(m.get("StringEncodingMask")?),
                seq: u(m.get("SeqStringTag")?),
                cons: u(m.get("ConsStringTag")?),
                sliced: u(m.get("SlicedStringTag")?),
                thin: u(m.get("ThinStringTag")?),
                external: u(m.get("ExternalStringTag")?),
                // Not in the metadata before V8 12; V8's kUncachedExternalStringMask (1 << 4)
                // has not changed since it was introduced.
                uncached_external: match (
                    m.get("type_UncachedExternalString__UNCACHED_EXTERNAL_ONE_BYTE_STRING_TYPE"),
                    m.get("type_ExternalOneByteString__EXTERNAL_ONE_BYTE_STRING_TYPE"),
                ) {
                    (Ok(uncached), Ok(cached)) => u(uncached ^ cached),
                    _ => 1 << 4,
                },
                external_resource: u(m.field("class_ExternalString__resource__")?),
                one_byte: u(m.get("OneByteStringTag")?),
                length: u(m.field("class_String__length__")?),
                one_byte_chars: u(m.field("class_SeqOneByteString__chars__")?),
                two_byte_chars: u(m.field("class_SeqTwoByteString__chars__")?),
                cons_first: u(m.field("class_ConsString__first__")?),
                cons_second: u(m.field("class_ConsString__second__")?),
                sliced_parent: u(m.field("class_SlicedString__parent__")?),
                sliced_offset: u(m.field("class_SlicedString__offset__")?),
                thin_actual: u(m.field("class_ThinString__actual__")?),
            },
            code: CodeLayout::new(m).ok(),
        })
    }

    /// What the kernel's stack walk needs to find each JavaScript frame's function.
    pub fn kernel(&self) -> JsLayout {
        JsLayout {
            enabled: 1,
            fp_function: self.fp_function,
            fp_context_or_type: self.fp_context_or_type,
            tag_mask: self.tag_mask,
            heap_tag: self.heap_tag,
            map: self.map,
            instance_type: self.instance_type,
            shared: self.function_shared,
            first_function_type: self.first_function_type,
            last_function_type: self.last_function_type,
        }
    }
}
/// The layouts of V8's code objects, from one binary's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeLayout {
    /// The type of the object whose header the instructions follow: `InstructionStream`, or
    /// `Code` before V8 11.
    pub(super) header_type: u64,
    /// Where that object's instructions start (its header size).
    pub(super) header_size: u64,
    /// `InstructionStream::code`, the pointer back to its `Code`; `None` when the instructions
    /// are in the `Code` itself.
    pub(super) istream_code: Option<u64>,
    pub(super) code_type: u64,
    pub(super) code_deopt: u64,
    pub(super) code_positions: u64,
    pub(super) code_start: u64,
    pub(super) code_flags: u64,
    pub(super) code_size: u64,
    pub(super) kind_mask: u64,
    pub(super) kind_shift: u64,
    /// `CodeKind::BASELINE`; MAGLEV and TURBOFAN follow it in V8's enum.
    pub(super) baseline: u64,
    pub(super) deopt_inlined_count: u64,
    /// Where the deoptimization data keeps the code's own function; behind a
    /// `SharedFunctionInfoWrapper` (whose first field is the function) from V8 13.
    pub(super) deopt_function: u64,
    pub(super) deopt_function_wrapped: bool,
    pub(super) deopt_literals: u64,
    pub(super) deopt_inlining_positions: u64,
}

impl CodeLayout {
    /// The layout `m` describes, with fallbacks where it is silent.
    pub fn new(m: &Metadata) -> Result<Self, MetadataError> {
        let u = |v: i64| v as u64;
        let code_type = u(m.get("type_Code__CODE_TYPE")?);
        let stream = m.get("type_InstructionStream__INSTRUCTION_STREAM_TYPE");
        // Before V8 11 (node 18, V8 10.2) the instructions follow `Code`'s own header, whose
        // size the metadata gives as the instruction start. Its metadata is silent on the
        // pointer fields after the map: relocation info, then the deoptimization data and
        // the position table; and on the deoptimization data's indices (checked against
        // %DebugPrint and memory reads on node 18).
        let v8_10 = stream.is_err();
        let (header_type, header_size, istream_code) = match stream {
            Ok(ty) => {
                // Not in the metadata: the first field after the map (V8 11 through 13).
                (u(ty), u(m.field("class_InstructionStream__instruction_start__")?), Some(8))
            }
            Err(_) => (code_type, u(m.field("class_Code__instruction_start__")?), None),
        };
        // From V8 11, the first two fields after the map: the metadata lists them on node 20
        // (V8 11.3) and has lost them since; they have stayed first through node 24 (V8 13.6).
        let code_deopt =
            u(m.field("class_Code__deoptimization_data__").unwrap_or(if v8_10 { 16 } else { 8 }));
        let code_positions =
            u(m.field("class_Code__source_position_table__").unwrap_or(code_deopt as i64 + 8));
        // V8 11.3's metadata lacks the rest of `Code`: the instruction start follows the
        // position table after one more pointer (the `InstructionStream`), then the flags,
        // then two 16-bit fields (builtin id, kind-specific flags), then the size.
        let code_start = u(m.field("class_Code__instruction_start__").unwrap_or(code_positions as i64 + 16));
        let code_flags = u(m.field("class_Code__flags__").unwrap_or(code_start as i64 + 8));
        let code_size = u(m.field("class_Code__instruction_size__").unwrap_or(code_flags as i64 + 8));
        let index = |name: &'static str, v8_10_index: i64| match v8_10 {
            true => m.get(name).or(Ok(v8_10_index)),
            false => m.get(name),
        };
        Ok(Self {
            header_type,
            header_size,
            istream_code,
            code_type,
            code_deopt,
            code_positions,
            code_start,
            code_flags,
            code_size,
            kind_mask: u(m.get("CodeKindFieldMask")?),
            kind_shift: u(m.get("CodeKindFieldShift")?),
            baseline: u(m.get("CodeKindBaseline")?),
            deopt_inlined_count: u(index("DeoptimizationDataInlinedFunctionCountIndex", 1)?),
            deopt_function: u(m
                .any(&[
                    "DeoptimizationDataSharedFunctionInfoIndex",
                    "DeoptimizationDataWrappedSharedFunctionInfoIndex",
                ])
                .or(index("DeoptimizationDataSharedFunctionInfoIndex", 6))?),
            deopt_function_wrapped: m.get("DeoptimizationDataWrappedSharedFunctionInfoIndex").is_ok(),
            deopt_literals: u(index("DeoptimizationDataLiteralArrayIndex", 2)?),
            deopt_inlining_positions: u(index("DeoptimizationDataInliningPositionsIndex", 7)?),
        })
    }
}

#[cfg(test)]
impl CodeLayout {
    /// The instance types the code reader checks for (for garbage that passes its checks).
    pub(crate) fn types(&self) -> [u64; 2] {
        [self.header_type, self.code_type]
    }
}
