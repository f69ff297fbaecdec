//! ELF symbol lookup for uprobe attach points.
//!
//! Looks in both `.symtab` and `.dynsym`: node 24 keeps V8 internals as local symbols, and a
//! stripped node 18–22 still exports them in `.dynsym`. GCC may split a function into clones
//! (`name.constprop.N`) that callers use instead of the original; a `.constprop` clone keeps its
//! leading arguments, so it is an entry point of the same function and gets the same probe.
//! (`.isra`, `.part` and `.cold` clones change the arguments or are not entries: skipped, unless
//! a probe names one outright, for a caller known to call it.)

use std::{collections::HashMap, fs::File, path::Path};

use anyhow::Context as _;
use memmap2::Mmap;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// A memory-mapped ELF file.
pub struct Elf {
    map: Mmap,
}

/// Where a function starts, as a uprobe needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolLocation {
    /// The symbol's name (mangled), including any clone suffix.
    pub name: String,
    /// Virtual address (`st_value`).
    pub address: u64,
    /// Offset in the file, which is what the kernel attaches uprobes by.
    pub file_offset: u64,
    /// The function's size in bytes (`st_size`).
    pub size: u64,
}

/// The result of one pass over an ELF's symbols.
#[derive(Debug, Default)]
pub struct Lookup {
    /// Entry points of each wanted function that was found.
    pub found: HashMap<String, Vec<SymbolLocation>>,
    /// How many symbols are V8 internals (`v8::internal::...`): zero means "no V8 symbols".
    pub v8_symbols: usize,
}

impl Elf {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: read-only private mapping; a binary being replaced on disk while mapped gives
        // garbage symbols at worst, which the lookups tolerate.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        Ok(Self { map })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Finds the entry points of the functions named in `wanted` (mangled names), and counts V8
    /// symbols, in one pass over `.symtab` and `.dynsym`.
    pub fn lookup(&self, wanted: &[&str]) -> anyhow::Result<Lookup> {
        let file = object::File::parse(self.bytes()).context("parsing ELF")?;
        let mut lookup = Lookup::default();
        let mut seen = std::collections::HashSet::new();
        for symbol in file.symbols().chain(file.dynamic_symbols()) {
            let Ok(name) = symbol.name() else { continue };
            if name.starts_with("_ZN2v88internal") {
                lookup.v8_symbols += 1;
            }
            let Some(base) = wanted.iter().find(|w| is_entry_of(name, w)) else {
                continue;
            };
            // The same symbol can be in both tables; aliases (one address, two names) are kept.
            if symbol.kind() != object::SymbolKind::Text || !seen.insert((*base, symbol.address())) {
                continue;
            }
            let Some(file_offset) = file_offset(&file, &symbol) else {
                continue;
            };
            lookup.found.entry(base.to_string()).or_default().push(SymbolLocation {
                name: name.to_string(),
                address: symbol.address(),
                file_offset,
                size: symbol.size(),
            });
        }
        Ok(lookup)
    }
}

/// Whether symbol `name` is the function `base` or one of its `.constprop` clones.
pub fn is_entry_of(name: &str, base: &str) -> bool {
    match name.strip_prefix(base) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix(".constprop.")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

fn file_offset(file: &object::File<'_>, symbol: &object::Symbol<'_, '_>) -> Option<u64> {
    let section = file.section_by_index(symbol.section_index()?).ok()?;
    let (section_offset, _) = section.file_range()?;
    symbol.address().checked_sub(section.address())?.checked_add(section_offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constprop_clones_are_entries_other_clones_are_not() {
        let base = "_ZN2v88internal4Heap24PerformGarbageCollectionE";
        assert!(is_entry_of(base, base));
        assert!(is_entry_of(&format!("{base}.constprop.1331"), base));
        assert!(!is_entry_of(&format!("{base}.constprop."), base));
        assert!(!is_entry_of(&format!("{base}.isra.0"), base));
        assert!(!is_entry_of(&format!("{base}.cold"), base));
        assert!(!is_entry_of(&format!("{base}.part.3"), base));
        assert!(!is_entry_of(&format!("{base}Ev"), base));
        assert!(!is_entry_of("_ZN2v88internal4Heap", base));
    }

    #[test]
    fn finds_a_function_in_our_own_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let elf = Elf::open(&exe).unwrap();
        // `main` is in every Rust test binary's symbol table.
        let lookup = elf.lookup(&["main"]).unwrap();
        let main = &lookup.found["main"];
        assert_eq!(main.len(), 1);
        assert!(main[0].file_offset > 0);
        assert_eq!(lookup.v8_symbols, 0);
    }
}
