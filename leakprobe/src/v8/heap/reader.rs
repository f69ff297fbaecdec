//! A target's V8 heap opened once for censuses, retainer searches and container reads: its
//! binary's layouts (read once) and its memory.

use anyhow::Context as _;

use super::{
    census::{Census, Kind, Limits},
    contents::{contents, Contents},
    layout::HeapLayout,
    pages,
    retainers::retainers,
    take::census,
};
use crate::{
    error::Error,
    process::target::Target,
    v8::{layout::Layout, memory::ProcMem, metadata::Metadata, reader::Reader},
};

/// What a census of one process reads with: its V8 layouts and its memory.
pub struct HeapReader {
    /// The process.
    pid: u32,
    reader: Reader<ProcMem>,
    layout: HeapLayout,
}

impl HeapReader {
    /// Opens `target` for censuses, with `metadata`, its binary's V8 layouts (already read
    /// from `target.elf`: nothing here scans the binary again).
    pub fn new(target: &Target, metadata: &Metadata) -> anyhow::Result<Self> {
        let layout = Layout::new(metadata, target.node_major())
            .with_context(|| format!("reading V8's layouts from {}", target.module_display))?;
        let heap_layout = HeapLayout::new(metadata)
            .with_context(|| format!("reading V8's heap layouts from {}", target.module_display))?;
        let pid = target.pid;
        let mem = ProcMem::open(pid).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                anyhow::Error::from(Error::Inaccessible { pid, what: format!("/proc/{pid}/mem") })
            }
            _ => anyhow::Error::from(e).context(format!("opening /proc/{pid}/mem")),
        })?;
        Ok(Self { pid, reader: Reader::new(layout, mem), layout: heap_layout })
    }

    /// Opens `target` for censuses, reading its binary's V8 layouts.
    pub fn open(target: &Target) -> anyhow::Result<Self> {
        let metadata = Metadata::from_elf(target.elf.bytes())
            .with_context(|| format!("reading V8's layouts from {}", target.module_display))?;
        Self::new(target, &metadata)
    }

    /// The target's anonymous mappings now.
    fn ranges(&self) -> anyhow::Result<Vec<(u64, u64)>> {
        anonymous_ranges(self.pid)
    }

    /// One census of the process's heaps.
    pub fn census(&mut self, limits: Limits) -> anyhow::Result<Census> {
        let ranges = self.ranges()?;
        self.reader.forget();
        self.reader.cache_small_reads(true);
        let census = census(&mut self.reader, &self.layout, &ranges, limits);
        self.reader.cache_small_reads(false);
        Ok(census)
    }

    /// The address of the `Heap` (the isolate) the page at `chunk` belongs to, from its header.
    pub fn heap_of(&self, chunk: u64) -> Option<u64> {
        super::pages::Page::read(&self.reader.mem, chunk).map(|p| p.heap)
    }

    /// What the large container on the page at `chunk` holds ([`contents()`]).
    pub fn contents(&mut self, chunk: u64) -> Option<Contents> {
        contents(&mut self.reader, &self.layout, chunk)
    }

    /// Who holds the sampled objects of `wanted` (isolate heap, kind, label) of `census`.
    pub fn retainers(
        &mut self,
        census: &Census,
        wanted: &[(String, Kind, String)],
        limits: Limits,
    ) -> anyhow::Result<super::chain::RetainerSearch> {
        let first = self.ranges()?;
        let pid = self.pid;
        let once = std::cell::Cell::new(Some(first));
        // The mappings as they are at the search's start, then read again when it looks again.
        let ranges = || once.take().unwrap_or_else(|| anonymous_ranges(pid).unwrap_or_default());
        Ok(retainers(&mut self.reader, &self.layout, &ranges, census, wanted, limits))
    }
}

/// The anonymous mappings of process `pid` (where V8's heap pages are).
fn anonymous_ranges(pid: u32) -> anyhow::Result<Vec<(u64, u64)>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    Ok(pages::anonymous_ranges(&maps))
}
