//! One pass of a retainer search over the heap: every tagged word of the old generation's
//! pages compared with the objects looked for, a hit kept where the page's walk finds an object
//! around it whose type holds pointers there, and only while the object it refers to is still
//! the one found (the part of [`Search`] that reads pages).

use std::collections::HashMap;

use super::{
    pages::{Page, PAGE},
    retainers::{Frontier, Hit, Search, MAX_LARGE, PIECE},
    walk::MapInfo,
};
use crate::v8::memory::Memory;

impl<M: Memory> Search<'_, M> {
    /// Whether objects of `info` hold tagged pointers after their map that a program's
    /// references are made of (not V8's code and feedback: [`crate::v8::heap::layout::UNSEEN_HOLDERS`]).
    pub(super) fn holds_pointers(&self, info: MapInfo) -> bool {
        let hl = self.w.hl;
        let l = &self.w.reader.layout;
        let ty = info.ty;
        !(ty < l.strings.first_nonstring
            || hl.unseen_holders.contains(&ty)
            || ty == hl.byte_array_type
            || ty == hl.fixed_double_array_type
            || hl.gap_types.contains(&ty)
            || hl.bytecode.is_some_and(|(b, _)| b == ty))
    }

    /// Whether an object of `info` holds a pointer of the program's at byte `offset`: any slot
    /// of a type that [`Search::holds_pointers`], and of strings only the parts a string is
    /// made of (a concatenation's first and second, a slice's parent, a thin string's actual
    /// one), since the other strings' words are characters.
    pub(super) fn holds_pointer_at(&self, info: MapInfo, offset: u64) -> bool {
        let s = &self.w.reader.layout.strings;
        if info.ty >= s.first_nonstring {
            return self.holds_pointers(info);
        }
        match info.ty & s.representation_mask {
            r if r == s.cons => offset == s.cons_first || offset == s.cons_second,
            r if r == s.sliced => offset == s.sliced_parent,
            r if r == s.thin => offset == s.thin_actual,
            _ => false,
        }
    }

    /// The hits whose referent still starts with the map it had when found, read after the
    /// pass. The target runs while a pass reads its pages: an object that died meanwhile
    /// (a sample the sweeper had not freed yet, a holder a mark-compact moved) may have its
    /// address reused by a new object, and a reference to that new object is no reference to
    /// the one found. Those hits are counted ([`RetainerSearch::moved_hits`]), not followed.
    pub(super) fn still_there(&mut self, hits: Vec<Hit>) -> Vec<Hit> {
        let tag = self.w.reader.layout.heap_tag;
        let mut checked: HashMap<usize, bool> = HashMap::new();
        let mut kept = Vec::with_capacity(hits.len());
        for hit in hits {
            let n = &self.nodes[hit.node];
            let same = *checked.entry(hit.node).or_insert_with(|| {
                self.bytes_read += 8;
                self.w.reader.word(n.addr.wrapping_sub(tag)).ok() == Some(n.map)
            });
            match same {
                true => kept.push(hit),
                false => self.moved_hits += 1,
            }
        }
        kept
    }

    /// One pass: every reference from an old-generation object to a node of `frontier`.
    pub(super) fn scan(&mut self, pages: &[Page], frontier: &Frontier, max_bytes: u64) -> Vec<Hit> {
        let l = &self.w.reader.layout;
        let (tag_mask, heap_tag) = (l.tag_mask, l.heap_tag);
        let mut hits = Vec::new();
        for page in pages {
            if self.bytes_read >= max_bytes {
                break;
            }
            let area = page.area_end - page.area_start;
            if area > PAGE {
                self.scan_large(page, area, frontier, &mut hits);
                continue;
            }
            let mut buf = vec![0u8; area as usize];
            self.bytes_read += area;
            if !self.w.reader.mem.read(page.area_start, &mut buf) {
                continue;
            }
            let found: Vec<(u64, usize)> = buf
                .chunks_exact(8)
                .enumerate()
                .filter_map(|(k, raw)| {
                    let w = u64::from_le_bytes(raw.try_into().ok()?);
                    (w & tag_mask == heap_tag).then(|| frontier.get(&w).map(|n| (k as u64 * 8, *n)))?
                })
                .collect();
            if found.is_empty() {
                continue;
            }
            if !self.objects.contains_key(&page.chunk) {
                let objects = self.w.objects(&buf, false);
                self.objects.insert(page.chunk, objects);
            }
            let Some(objects) = self.objects.get(&page.chunk) else { continue };
            for (at, node) in found {
                let k = objects.partition_point(|(start, _, _)| *start <= at);
                let holder = k
                    .checked_sub(1)
                    .and_then(|k| objects.get(k))
                    .filter(|(start, _, size)| at < start + size);
                match holder {
                    Some(&(start, info, _)) if at > start && self.holds_pointer_at(info, at - start) => hits
                        .push(Hit {
                            node,
                            holder: (page.area_start + start) | heap_tag,
                            map: u64::from_le_bytes(
                                buf[start as usize..start as usize + 8].try_into().unwrap_or_default(),
                            ),
                            info,
                            offset: at - start,
                        }),
                    // The object's map word: how V8 types it, no reference of the program's.
                    Some(&(start, _, _)) if at == start => {}
                    _ => {
                        let near = |k: usize| objects.get(k).map(|(s, i, n)| (page.area_start + s, i.ty, *n));
                        log::trace!(
                            "rejected: {:#x} refers to node {node} ({:#x}), no holder parsed around it (objects before and after: {:x?} {:x?})",
                            page.area_start + at,
                            self.nodes[node].addr,
                            k.checked_sub(1).and_then(near),
                            near(k),
                        );
                        self.rejected.insert(page.area_start + at);
                    }
                }
            }
        }
        hits
    }

    /// Scans the one object of a large-object page, in pieces.
    pub(super) fn scan_large(&mut self, page: &Page, area: u64, frontier: &Frontier, hits: &mut Vec<Hit>) {
        let l = &self.w.reader.layout;
        let (tag_mask, heap_tag) = (l.tag_mask, l.heap_tag);
        let mut head = [0u8; 8];
        self.bytes_read += 8;
        if !self.w.reader.mem.read(page.area_start, &mut head) {
            return;
        }
        let Some(info) = self.w.map_info(u64::from_le_bytes(head)) else { return };
        if !self.holds_pointers(info) {
            return;
        }
        let end = area.min(MAX_LARGE);
        let mut at = 8;
        while at < end {
            let len = PIECE.min(end - at) & !7;
            if len == 0 {
                break;
            }
            let mut buf = vec![0u8; len as usize];
            self.bytes_read += len;
            if !self.w.reader.mem.read(page.area_start + at, &mut buf) {
                return;
            }
            for (k, raw) in buf.chunks_exact(8).enumerate() {
                let w = u64::from_le_bytes(raw.try_into().unwrap_or_default());
                if w & tag_mask != heap_tag {
                    continue;
                }
                if let Some(&node) = frontier.get(&w) {
                    hits.push(Hit {
                        node,
                        holder: page.area_start | heap_tag,
                        map: u64::from_le_bytes(head),
                        info,
                        offset: at + k as u64 * 8,
                    });
                }
            }
            at += len;
        }
    }
}
