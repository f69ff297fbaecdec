//! Who holds the objects a census counted: retainer chains, found from outside.
//!
//! A census keeps a sample of each type's objects (their addresses). For a type that grows,
//! this looks for what refers to those samples: it scans the words of every old-generation
//! page for a pointer to one of them (a conservative scan), and keeps a hit only where the
//! page's walk finds an object around it whose type holds pointers there (not a string, byte
//! array, or free space) — the layout validates the reference. It then does the same for the
//! holders found, one pass per level, until each chain reaches a named holder:
//! - a variable of a module or function scope (a context slot, named by its `ScopeInfo`);
//! - an object property (named by the holder's descriptors, or its dictionary's key);
//! - through containers, which are said: `Map (N entries)`, `Set (N entries)`,
//!   `Array (N elements)`;
//! - a timer (`Timeout`: node keeps timers in linked lists, which are not followed);
//! - a reaction of a pending Promise (`PromiseReaction`: a Promise keeps the reactions
//!   awaiting it in a linked list, which is not followed either).
//!
//! A container that grows while the search runs replaces its store (a Set's table rehashed):
//! a chain then stops at the old store, which nothing holds any more; a mark-compact that
//! moves a holder stops it the same way. When every open chain has stopped so, those chains
//! are searched once more from their samples up, in the pages as they are then.
//!
//! References from V8's own code and feedback (optimized code's embedded constants, inline
//! caches, weak lists: [`crate::v8::heap::layout::UNSEEN_HOLDERS`]) are not followed, as DevTools does not show
//! them: a module-level Set that hot functions use is referred to by their optimized code too,
//! and those holders crowded out the scope's variable.
//!
//! Chains are shown the way DevTools shows retainers, nearest first:
//! `requestLog (Array, 412,000 elements) ← module scope of access-log.js`.
//!
//! Limits: young-generation pages are neither searched nor walked, except its large objects (a
//! holder allocated since the last scavenge is not found, unless it is a large object); the samples come from a linear walk, so a dead object the
//! sweeper has not freed yet can be sampled (it then has no chain, or one through other dead
//! objects: chains are grouped and the one most samples share is listed first); a
//! mark-compact during the search moves objects (samples whose map changed are counted as
//! stale). Nothing here stops the target.

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use super::{
    census::{Census, Kind, Limits, Stopped},
    chain::{chain_text, Chain, Link, LinkKind, RetainerSearch, Retainers},
    layout::HeapLayout,
    pages::{find_pages, Page, PAGE},
    walk::{MapInfo, Walker},
};
use crate::v8::{memory::Memory, reader::Reader};

/// Levels searched above the samples (one pass over the heap each).
pub(super) const MAX_DEPTH: usize = 10;
/// Most holders kept for one object (scopes beyond it).
pub(super) const MAX_HOLDERS: usize = 4;
/// Most objects in the search's graph.
pub(super) const MAX_NODES: usize = 20_000;
/// Chains listed per type.
pub(super) const MAX_CHAINS: usize = 3;
/// Most bytes of a large object scanned, read in pieces of [`PIECE`].
pub(super) const MAX_LARGE: u64 = 256 << 20;
pub(super) const PIECE: u64 = 1 << 20;
/// Constructors of node's timer objects: a chain ends there (their lists are linked).
pub(super) const TIMERS: [&str; 3] = ["Timeout", "Immediate", "TimersList"];

/// The objects a pass looks for, by tagged address: looked up once per tagged word of the
/// heap, so with a cheap hash (addresses are distinct and 8-aligned).
pub(super) type Frontier = HashMap<u64, usize, std::hash::BuildHasherDefault<AddressHasher>>;

/// A multiplicative hash of one address.
#[derive(Default)]
pub(super) struct AddressHasher(u64);

impl std::hash::Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (n >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A link without its counts, to group chains by.
pub(super) type LinkKey = (LinkKind, Option<String>, String);

/// An object of the search's graph.
#[derive(Clone, Debug)]
pub(super) struct Node {
    /// Tagged address.
    pub(super) addr: u64,
    pub(super) info: Option<MapInfo>,
    /// The map word it started with when found: a reference to it found later counts only if
    /// it still starts with it (an address the target freed and reused is another object).
    pub(super) map: u64,
    /// Who refers to it: (node, byte offset of the reference in that node).
    pub(super) holders: Vec<(usize, u64)>,
    pub(super) depth: usize,
    pub(super) searched: bool,
    /// Its holders are looked for only to name it (a top scope's closures), not followed.
    pub(super) leaf: bool,
    /// A context whose enclosing context is the native context: a module's or a script's
    /// top-level scope, where a chain ends. A function's scope is a waypoint: the chain goes on
    /// through the closures (and inner scopes) that keep it.
    pub(super) top_scope: bool,
}

/// One reference found: the object at `holder` (tagged) refers to `node` at `offset`.
pub(super) struct Hit {
    pub(super) node: usize,
    pub(super) holder: u64,
    /// The holder's map word.
    pub(super) map: u64,
    pub(super) info: MapInfo,
    pub(super) offset: u64,
}

/// Finds what holds the sampled objects of each of `wanted` (isolate heap, kind, label) in
/// `census`, by searching the heaps in `ranges` again now.
pub fn retainers<M: Memory>(
    reader: &mut Reader<M>,
    hl: &HeapLayout,
    ranges: &dyn Fn() -> Vec<(u64, u64)>,
    census: &Census,
    wanted: &[(String, Kind, String)],
    limits: Limits,
) -> RetainerSearch {
    let started = Instant::now();
    // Old-generation pages, and the young generation's large objects (one object a page, with
    // no stale objects after it: a growing array's new backing store is often one).
    let searched_pages = |mem: &M| -> Vec<Page> {
        find_pages(mem, &ranges()).into_iter().filter(|p| !p.young() || p.size != PAGE).collect()
    };
    let mut pages = searched_pages(&reader.mem);
    let mut search = Search {
        w: Walker::new(reader, hl, &pages),
        nodes: Vec::new(),
        index: HashMap::new(),
        objects: HashMap::new(),
        bytes_read: pages.len() as u64 * 96,
        rejected: HashSet::new(),
        moved_hits: 0,
    };
    // The samples, checked: the object still starts with the map it had.
    let mut roots: Vec<(usize, Vec<usize>, u32)> = Vec::new();
    for (i, key) in wanted.iter().enumerate() {
        let Some(samples) = census.samples.get(key) else { continue };
        let mut alive = Vec::new();
        let mut stale = 0;
        for &(addr, map) in samples {
            let now = search.w.reader.word(addr.wrapping_sub(search.w.reader.layout.heap_tag)).ok();
            let info = search.w.map_info(map);
            match (now == Some(map), info) {
                (true, Some(info)) => alive.push(search.node(addr, map, Some(info), 0)),
                _ => stale += 1,
            }
        }
        roots.push((i, alive, stale));
    }
    let mut passes = 0;
    let mut stopped = None;
    let mut looked_again = false;
    // Levels up, twice: once more when the chains are looked for again.
    for _ in 0..2 * (MAX_DEPTH + 2) {
        // Only what holds a sample whose chain is not complete yet is searched further.
        let open: Vec<usize> = roots
            .iter()
            .flat_map(|(_, alive, _)| alive.iter().copied())
            .filter(|&r| !search.best_path(r).is_some_and(|(_, complete)| complete))
            .collect();
        let mut frontier = search.frontier(&open);
        // Every chain still open ends at a holder nothing was found to hold. The target ran
        // meanwhile: a container that grew was replaced (a Set's table rehashed, an array's
        // store grown: the new store is a new object, maybe on a new page), a mark-compact
        // moved a holder (nothing refers to its old address) or its holder (to a page not in
        // the list read at the start), a page was read while the target allocated into it.
        // Once, the open chains are searched again from their samples up, in the pages as
        // they are now.
        if frontier.is_empty() && !open.is_empty() && !looked_again {
            looked_again = true;
            pages = searched_pages(&search.w.reader.mem);
            search.w.chunks = pages.iter().map(|p| p.chunk).collect();
            search.objects.clear();
            for i in search.above(&open) {
                search.nodes[i].searched = false;
                search.nodes[i].holders.clear();
            }
            frontier = search.frontier(&open);
        }
        if frontier.is_empty() {
            break;
        }
        if search.bytes_read >= limits.max_bytes {
            stopped = Some(Stopped::SizeCap);
            break;
        }
        if started.elapsed() >= limits.max_time {
            stopped = Some(Stopped::TimeCap);
            break;
        }
        passes += 1;
        // Small reads (maps, checks that a holder is still there) from pages read this pass.
        search.w.reader.cache_small_reads(true);
        let hits = search.scan(&pages, &frontier, limits.max_bytes);
        for &i in frontier.values() {
            search.nodes[i].searched = true;
        }
        for hit in search.still_there(hits) {
            search.add(hit);
        }
    }
    search.w.reader.cache_small_reads(false);
    let mut types = Vec::new();
    for (i, alive, stale) in roots {
        let (heap, kind, label) = wanted[i].clone();
        // Chains are grouped by their links without counts (a container grows while the
        // search reads it); each group shows its first chain.
        let mut chains: HashMap<Vec<LinkKey>, (Vec<Link>, u32, bool)> = HashMap::new();
        let mut unexplained = 0;
        for &root in &alive {
            match search.best_path(root) {
                Some((path, complete)) => {
                    if log::log_enabled!(log::Level::Trace) {
                        let steps: Vec<String> = path
                            .iter()
                            .map(|&(n, off)| {
                                let node = &search.nodes[n];
                                format!("{:#x} type {:?} +{off}", node.addr, node.info.map(|i| i.ty))
                            })
                            .collect();
                        log::trace!("path of {:#x}: {}", search.nodes[root].addr, steps.join(" <- "));
                    }
                    let links = search.links(&path);
                    if links.is_empty() {
                        unexplained += 1;
                        continue;
                    }
                    let key = links
                        .iter()
                        .map(|l| {
                            (
                                l.kind,
                                l.name.clone(),
                                l.holder.replace(|c: char| c.is_ascii_digit() || c == ',', ""),
                            )
                        })
                        .collect();
                    let entry = chains.entry(key).or_insert_with(|| (links, 0, false));
                    entry.1 += 1;
                    entry.2 |= complete;
                }
                None => unexplained += 1,
            }
        }
        let mut chains: Vec<Chain> = chains
            .into_values()
            .map(|(links, samples, complete)| {
                let holder = links
                    .iter()
                    .find(|l| matches!(l.kind, LinkKind::Variable | LinkKind::Property))
                    .and_then(|l| l.name.clone());
                // A chain whose holder has no name (a variable past a scope's inline names)
                // proves nothing: it is not complete.
                let complete = complete && holder.is_some();
                Chain { samples, holder, text: chain_text(&links), links, complete }
            })
            .collect();
        chains.sort_by(|a, b| {
            b.samples.cmp(&a.samples).then(b.complete.cmp(&a.complete)).then(a.text.cmp(&b.text))
        });
        chains.truncate(MAX_CHAINS);
        types.push(Retainers { heap, kind, label, sampled: alive.len() as u32, stale, unexplained, chains });
    }
    RetainerSearch {
        types,
        passes,
        rejected_hits: search.rejected.len() as u64,
        moved_hits: search.moved_hits,
        bytes_read: search.bytes_read,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
        stopped_early: stopped,
    }
}

/// The search's graph and the walker that parses pages for it.
pub struct Search<'r, M: Memory> {
    pub(super) w: Walker<'r, M>,
    pub(super) nodes: Vec<Node>,
    pub(super) index: HashMap<u64, usize>,
    /// Parsed pages, by chunk: objects (offset, map, size).
    pub(super) objects: HashMap<u64, Vec<(u64, MapInfo, u64)>>,
    pub(super) bytes_read: u64,
    /// Where the rejected hits were (once each, however many passes saw them).
    pub(super) rejected: HashSet<u64>,
    /// Hits left out because their referent's address held another object by the pass's end.
    pub(super) moved_hits: u64,
}

impl<M: Memory> Search<'_, M> {
    /// The node of `addr`, new or not.
    pub(super) fn node(&mut self, addr: u64, map: u64, info: Option<MapInfo>, depth: usize) -> usize {
        if let Some(i) = self.index.get(&addr) {
            return *i;
        }
        let top_scope = info.is_some_and(|i| self.is_context(i)) && self.is_top_scope(addr);
        self.nodes.push(Node {
            addr,
            info,
            map,
            holders: Vec::new(),
            depth,
            searched: false,
            leaf: false,
            top_scope,
        });
        self.index.insert(addr, self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    /// What the next pass looks for: the nodes at and above `open` (the samples whose chain is
    /// not complete) not searched yet, and the scopes (searched once more, for a closure that
    /// names their file).
    pub(super) fn frontier(&self, open: &[usize]) -> Frontier {
        let mut wanted = self.above(open);
        wanted.extend(
            (0..self.nodes.len()).filter(|&i| self.nodes[i].info.is_some_and(|n| self.is_context(n))),
        );
        wanted
            .into_iter()
            .map(|i| &self.nodes[i])
            .filter(|n| !n.searched && n.depth <= MAX_DEPTH && !self.terminal(n))
            .map(|n| (n.addr, self.index[&n.addr]))
            .collect()
    }

    /// A node whose holders are not followed: a scope (its variable names the chain), a
    /// linked list's entry (a timer, a pending Promise's reaction), or a node found only to
    /// name a scope.
    pub(super) fn terminal(&self, n: &Node) -> bool {
        if n.leaf {
            return true;
        }
        n.info.is_none_or(|info| self.in_linked_list(info))
    }

    /// Whether `info` is an entry of a linked list a chain ends at: one of node's timer objects,
    /// or a pending Promise's reaction.
    pub(super) fn in_linked_list(&self, info: MapInfo) -> bool {
        self.timer(info) || self.promise_reaction(info)
    }

    /// Whether `info` is a `PromiseReaction`: what a pending Promise keeps of each `then`.
    pub(super) fn promise_reaction(&self, info: MapInfo) -> bool {
        self.w.hl.promise_reaction_type == Some(info.ty)
    }

    /// Whether the context at `addr` (tagged) is a top-level scope: its enclosing context is
    /// the native context, which has no enclosing context itself.
    pub(super) fn is_top_scope(&self, addr: u64) -> bool {
        let r = &self.w.reader;
        let previous = |ctx: u64| -> Option<u64> {
            let word = r
                .word(ctx.wrapping_sub(r.layout.heap_tag) + 16 + 8 * self.w.hl.refs.context_previous)
                .ok()?;
            let (_, ty) = r.type_of(word).ok()?;
            (self.w.hl.first_context_type..=self.w.hl.last_context_type).contains(&ty).then_some(word)
        };
        previous(addr).is_none_or(|outer| previous(outer).is_none())
    }

    pub(super) fn is_context(&self, info: MapInfo) -> bool {
        (self.w.hl.first_context_type..=self.w.hl.last_context_type).contains(&info.ty)
    }

    pub(super) fn is_function(&self, info: MapInfo) -> bool {
        let l = &self.w.reader.layout;
        (l.first_function_type..=l.last_function_type).contains(&info.ty)
    }

    /// Whether `info` is one of node's timer objects.
    pub(super) fn timer(&self, info: MapInfo) -> bool {
        info.ty >= self.w.hl.first_js_type
            && info.label.is_some_and(|l| TIMERS.contains(&self.w.labels[l].1.as_str()))
    }

    /// Records a hit: a new holder of its node (at most [`MAX_HOLDERS`]).
    pub(super) fn add(&mut self, hit: Hit) {
        let child = &self.nodes[hit.node];
        let depth = child.depth + 1;
        let child_is_context = child.info.is_some_and(|i| self.is_context(i));
        let refs = &self.w.hl.refs;
        let encloses = self.is_context(hit.info) && hit.offset == 16 + 8 * refs.context_previous;
        let closure = self.is_function(hit.info) && hit.offset == refs.function_context;
        // A scope is kept by its closures, and a function's scope also by the scopes inside
        // it (their enclosing context); a top scope is only named by a closure (its file).
        if child_is_context && !(closure || (encloses && !child.top_scope)) {
            return;
        }
        // Otherwise a context's header slots hold its scope's description and the enclosing
        // context, never a variable of the program.
        if !child_is_context && self.is_context(hit.info) && hit.offset < 16 + 8 * refs.context_header_slots {
            return;
        }
        let leaf = child_is_context && child.top_scope;
        // A scope's variable is the answer a chain looks for: it is kept beyond the cap.
        if (child.holders.len() >= MAX_HOLDERS && !self.is_context(hit.info))
            || child.holders.iter().any(|(h, _)| self.nodes[*h].addr == hit.holder)
        {
            return;
        }
        if self.nodes.len() >= MAX_NODES && !self.index.contains_key(&hit.holder) {
            return;
        }
        let holder = self.node(hit.holder, hit.map, Some(hit.info), depth);
        if leaf {
            self.nodes[holder].leaf = true;
        }
        self.nodes[hit.node].holders.push((holder, hit.offset));
    }

    /// `from` and every node above them (their holders, transitively).
    pub(super) fn above(&self, from: &[usize]) -> HashSet<usize> {
        let mut seen: HashSet<usize> = from.iter().copied().collect();
        let mut stack: Vec<usize> = from.to_vec();
        while let Some(n) = stack.pop() {
            for &(h, _) in &self.nodes[n].holders {
                if seen.insert(h) {
                    stack.push(h);
                }
            }
        }
        seen
    }

    /// The shortest path from `root` up to a terminal holder (a top scope, a timer or a pending
    /// Promise's reaction), as
    /// (holder node, offset) steps; when none ends at one, the longest path found (not
    /// complete). `None` when nothing holds `root`.
    pub(super) fn best_path(&self, root: usize) -> Option<(Vec<(usize, u64)>, bool)> {
        let mut seen = HashSet::from([root]);
        let mut queue = std::collections::VecDeque::from([root]);
        let mut parent: HashMap<usize, (usize, u64)> = HashMap::new();
        let mut deepest = None;
        while let Some(n) = queue.pop_front() {
            let node = &self.nodes[n];
            if n != root {
                deepest = Some(n);
                if node.top_scope || node.info.is_some_and(|i| self.in_linked_list(i)) {
                    return Some((self.path_to(&parent, n), true));
                }
            }
            for &(h, off) in &node.holders {
                if self.nodes[h].leaf || !seen.insert(h) {
                    continue;
                }
                parent.insert(h, (n, off));
                queue.push_back(h);
            }
        }
        deepest.map(|n| (self.path_to(&parent, n), false))
    }

    /// The steps from the root to `end`: each (holder, the offset it refers to the one below).
    pub(super) fn path_to(&self, parent: &HashMap<usize, (usize, u64)>, end: usize) -> Vec<(usize, u64)> {
        let mut steps = Vec::new();
        let mut at = end;
        while let Some(&(below, off)) = parent.get(&at) {
            steps.push((at, off));
            at = below;
        }
        steps.reverse();
        steps
    }
}
