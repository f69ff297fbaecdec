//! V8's postmortem metadata: the `v8dbg_*` constants every node binary carries, which describe
//! its object layouts.

use std::collections::HashMap;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// Why the metadata cannot be used.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetadataError {
    /// The binary has no `v8dbg_*` symbols (stripped, or V8 built without postmortem support).
    #[error("no V8 postmortem metadata (v8dbg_* symbols)")]
    Absent,
    /// A constant the reader needs is not among them.
    #[error("V8 postmortem metadata lacks {0}")]
    Missing(&'static str),
    /// A layout this reader does not handle.
    #[error("unsupported V8 layout: {0}")]
    Unsupported(&'static str),
}

/// The `v8dbg_*` constants of one binary, by name without the prefix.
#[derive(Debug, Default, Clone)]
pub struct Metadata(pub(super) HashMap<String, i64>);

impl Metadata {
    /// Reads every `v8dbg_*` symbol of an ELF image (each a 4-byte `int` in its data).
    pub fn from_elf(bytes: &[u8]) -> Result<Self, MetadataError> {
        let file = object::File::parse(bytes).map_err(|_| MetadataError::Absent)?;
        let mut values = HashMap::new();
        for symbol in file.symbols().chain(file.dynamic_symbols()) {
            let Some(name) = symbol.name().ok().and_then(|n| n.strip_prefix("v8dbg_")) else {
                continue;
            };
            let Some(section) = symbol.section_index().and_then(|i| file.section_by_index(i).ok()) else {
                continue;
            };
            let value = match section.kind() {
                // Constants that are 0 land in .bss.
                object::SectionKind::UninitializedData | object::SectionKind::UninitializedTls => 0,
                _ => match section.data_range(symbol.address(), 4) {
                    Ok(Some(raw)) => i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as i64,
                    _ => continue,
                },
            };
            values.insert(name.to_string(), value);
        }
        Self::from_pairs(values)
    }

    /// From `(name without "v8dbg_", value)` pairs.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, i64)>) -> Result<Self, MetadataError> {
        let values: HashMap<String, i64> = pairs.into_iter().collect();
        match values.is_empty() {
            true => Err(MetadataError::Absent),
            false => Ok(Self(values)),
        }
    }

    /// The constant `name`.
    pub fn get(&self, name: &'static str) -> Result<i64, MetadataError> {
        self.0.get(name).copied().ok_or(MetadataError::Missing(name))
    }

    /// The constant whose name starts with `prefix` (field names end in a type that changes
    /// between versions: `__Object`, `__Tagged_Object_`, …).
    pub fn field(&self, prefix: &'static str) -> Result<i64, MetadataError> {
        let mut hits = self.0.iter().filter(|(k, _)| k.starts_with(prefix));
        hits.next().map(|(_, v)| *v).ok_or(MetadataError::Missing(prefix))
    }

    /// The first of `names` present.
    pub(super) fn any(&self, names: &[&'static str]) -> Result<i64, MetadataError> {
        names.iter().find_map(|n| self.0.get(*n).copied()).ok_or(MetadataError::Missing(names[0]))
    }
}
