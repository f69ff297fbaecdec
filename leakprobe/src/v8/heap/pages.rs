//! V8's pages, found from outside: every 256 KiB-aligned address of the target's anonymous
//! mappings whose header is consistent (it names its own address), and what the header says
//! (where objects start and end, which isolate's heap, young or old generation).

use super::super::memory::{words, Memory};

/// V8's page alignment (and regular page size) in node 18–24.
pub const PAGE: u64 = 256 * 1024;
/// Page flags: the young generation's from- and to-space (`FROM_PAGE`, `TO_PAGE`, the same
/// bits in V8 10.2 through 13.6; not in the metadata).
pub(super) const YOUNG_FLAGS: u64 = (1 << 3) | (1 << 4);
/// Largest page size believed (large-object pages hold one object each).
pub(super) const MAX_CHUNK: u64 = 1 << 36;
/// Largest header before a page's first object.
pub(super) const MAX_HEADER: u64 = 64 * 1024;

/// One V8 page, from its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// Where the page starts.
    pub chunk: u64,
    /// The `Heap` it belongs to: one per isolate.
    pub heap: u64,
    /// `MemoryChunk` flags.
    pub flags: u64,
    /// First object.
    pub area_start: u64,
    /// End of the object area.
    pub area_end: u64,
    /// Size of the whole chunk.
    pub size: u64,
}

impl Page {
    /// The page at `chunk`, if a V8 page header is there. Three header shapes are known, each
    /// recognised by a field that holds the chunk's own address (none is in the metadata):
    /// - V8 10–11 (node 18, 20): size, flags, heap, area start, area end, …, and the
    ///   reservation's address (the chunk) in word 10;
    /// - V8 12.4 (node 22): flags, the chunk, size, heap, area start, area end;
    /// - V8 13 (node 24): flags and a pointer to the chunk's metadata, kept outside the page:
    ///   vtable, the chunk, size, …, area end (word 7), heap, area start.
    pub fn read<M: Memory>(mem: &M, chunk: u64) -> Option<Page> {
        let mut raw = [0u8; 96];
        if !mem.read(chunk, &mut raw) {
            return None;
        }
        let w: Vec<u64> = words(&raw).collect();
        let candidates = [
            // node 22
            (w[1] == chunk).then(|| (w[0], w[2], w[3], w[4], w[5])),
            // node 18, 20
            (w[10] == chunk).then(|| (w[1], w[0], w[2], w[3], w[4])),
            // node 24
            (w[1] != chunk && w[1] & 7 == 0)
                .then(|| {
                    let mut meta = [0u8; 96];
                    mem.read(w[1], &mut meta).then_some(())?;
                    let m: Vec<u64> = words(&meta).collect();
                    (m[1] == chunk).then(|| (w[0], m[2], m[8], m[9], m[7]))
                })
                .flatten(),
        ];
        candidates.into_iter().flatten().find_map(|(flags, size, heap, area_start, area_end)| {
            let end = chunk.checked_add(size)?;
            let plausible = (PAGE / 64..=MAX_CHUNK).contains(&size)
                && heap != 0
                && heap & 7 == 0
                && area_start & 7 == 0
                && area_start > chunk
                && area_start < chunk.saturating_add(MAX_HEADER)
                && area_start <= area_end
                && area_end <= end;
            plausible.then_some(Page { chunk, heap, flags, area_start, area_end, size })
        })
    }

    /// A young-generation page (from- or to-space).
    pub fn young(&self) -> bool {
        self.flags & YOUNG_FLAGS != 0
    }
}

/// Every 256 KiB-aligned address in `ranges` (start, end) where a page header could be.
pub fn page_candidates(ranges: &[(u64, u64)]) -> impl Iterator<Item = u64> + '_ {
    ranges.iter().flat_map(|&(start, end)| {
        let first = start.div_ceil(PAGE).saturating_mul(PAGE);
        (0..).map(move |k| first.saturating_add(k * PAGE)).take_while(move |a| *a < end && *a >= first)
    })
}

/// The anonymous readable mappings of a `/proc/PID/maps` text, where V8 keeps its heap.
pub fn anonymous_ranges(maps: &str) -> Vec<(u64, u64)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            let path = fields.nth(3);
            if !perms.starts_with('r') || path.is_some_and(|p| !p.is_empty()) {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
        })
        .filter(|(a, b)| a < b)
        .collect()
}

/// The V8 pages in `ranges`, by address.
pub fn find_pages<M: Memory>(mem: &M, ranges: &[(u64, u64)]) -> Vec<Page> {
    let mut pages: Vec<Page> = page_candidates(ranges).filter_map(|a| Page::read(mem, a)).collect();
    pages.sort_by_key(|p| p.chunk);
    pages
}
